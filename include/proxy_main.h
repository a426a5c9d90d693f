/* SPDX-License-Identifier: MIT */
/* Entry point of the proxy proper, called by main once the configuration is loaded. */
#ifndef PGSTEER_PROXY_MAIN_H
#define PGSTEER_PROXY_MAIN_H

#include "config.h"

/* Run the event loop until shutdown. `cfg` is borrowed for the whole run. Returns the process
 * exit status. Main thread only. */
int proxy_run(struct config *cfg);

struct proxy;
/* Re-read the configuration file (px->cfg->path): nodes (matched by name, so that indices in
 * use stay stable), weights, thresholds, users. Existing sessions keep working. Returns 0 when
 * the new configuration took effect; -1 when it was rejected and the old one kept, with
 * *errors set to a malloc'd description, one problem per line (the caller frees it). Loop
 * thread. */
int proxy_reload(struct proxy *px, char **errors);

#endif
