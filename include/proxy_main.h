/* SPDX-License-Identifier: MIT */
/* Entry point of the proxy proper, called by main once the configuration is loaded. */
#ifndef PGSTEER_PROXY_MAIN_H
#define PGSTEER_PROXY_MAIN_H

#include "config.h"

/* Run the event loop until shutdown. `cfg` is borrowed for the whole run. Returns the process
 * exit status. Main thread only. */
int proxy_run(struct config *cfg);

#endif
