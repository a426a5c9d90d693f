/* SPDX-License-Identifier: MIT */
/* The one place the version is written. */
#ifndef PGSTEER_VERSION_H
#define PGSTEER_VERSION_H
#define PGSTEER_VERSION "0.1.0"
#endif
