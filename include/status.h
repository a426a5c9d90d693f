/* SPDX-License-Identifier: MIT */
/* `pgsteer status`: fetches /status from a running pgsteer's admin port and prints it as a
 * table for a person, or as the raw JSON for scripts. The JSON reader and the table renderer
 * are pure and declared here for the unit tests. */
#ifndef PGSTEER_STATUS_H
#define PGSTEER_STATUS_H

#include <stddef.h>

#include "buf.h"

/* A parsed JSON value (a small DOM, enough for the /status document). */
enum json_type { JSON_NULL = 0, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };
struct json {
    enum json_type type;
    double number; /* JSON_NUMBER; JSON_BOOL: 0 or 1 */
    char *string;  /* JSON_STRING (UTF-8, NUL-terminated) */
    size_t n;      /* JSON_ARRAY / JSON_OBJECT: number of items */
    struct json *items;
    char **keys; /* JSON_OBJECT: keys[i] names items[i] */
};

/* Parse a whole JSON text. Returns a tree to free with json_free, or NULL when the text is
 * not valid JSON (or nests deeper than 64, or memory runs out). */
struct json *json_parse(const char *text, size_t len);
void json_free(struct json *j);
/* Member `key` of an object, or NULL (also when j is NULL or not an object). */
const struct json *json_get(const struct json *j, const char *key);

/* Render a /status document as the table `pgsteer status` prints. Returns 0, or -1 when the
 * document is not a /status object (or out of memory). */
int status_render_table(const struct json *status, struct buf *out);

/* The `pgsteer status` command; argv[0] is "status". Returns the exit status: 0 when the
 * status was printed, 1 when pgsteer could not be reached or answered an error, 2 on usage
 * errors. */
int status_main(int argc, char **argv);

#endif
