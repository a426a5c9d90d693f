/* SPDX-License-Identifier: MIT */
/* Session state that must follow a client to every node it uses: protocol-level prepared
 * statements (struct stmt, with a bit per node where each exists) and the list of session
 * changes (SET, RESET, DISCARD, SQL PREPARE, set_config) replayed on each backend before its
 * next unit. Loop thread only; no I/O of its own: it queues messages on backends. */
#ifndef PGSTEER_SESSION_H
#define PGSTEER_SESSION_H

#include <stdbool.h>
#include <stddef.h>

#include "classify.h"
#include "protocol.h"
#include "proxy.h"

/* Statements. Names are compared as given (len bytes); "" is the unnamed statement. */
struct stmt *session_stmt_find(struct client *c, const char *name, size_t len);
void session_stmt_remove(struct client *c, const char *name, size_t len);
void session_stmt_clear(struct client *c);
/* Whether what the client sends b now runs in a failed transaction, where everything but its
 * end fails (25P02) and changes nothing: b's last ReadyForQuery said so and no end of that
 * transaction has been sent since (c->tx_node, predicted). */
bool session_in_failed_tx(const struct client *c, const struct backend *b);
/* Drop the statement whose id is `id`, if the client still has it (its Parse failed). */
void session_stmt_forget(struct client *c, uint32_t id);
/* The statement whose id is `id` is not on `node` (its re-prepare there failed). */
void session_stmt_unplace(struct client *c, uint32_t id, int node);
void session_stmt_free(struct stmt *s);
/* Record a Parse: replaces a statement of the same name; the parameter type OIDs are read from
 * `types` (ntypes of them). Returns the statement (owned by the client) or NULL when out of
 * memory. */
struct stmt *session_stmt_put(struct client *c, const char *name, size_t nlen, const char *query,
                              size_t qlen, struct proto_reader *types, uint16_t ntypes,
                              unsigned flags);
/* Make statement `name` exist on backend b (re-prepare, answer swallowed). Returns 0 or -1. */
int session_ensure_prepared(struct client *c, struct backend *b, const char *name, size_t nlen);
/* Close statement s on every backend but b that has it, answers swallowed. */
void session_close_elsewhere(struct client *c, struct backend *b, const struct stmt *s);
/* Before a SQL `EXECUTE name`, `DEALLOCATE name` or `PREPARE name` (classified as cr) is queued
 * to b: when `name` is a statement the client made with Parse and b does not have it, prepare
 * it there (a Parse, and a Sync when `sync`, as before a simple Query; answers swallowed), so
 * that the statement finds it wherever it runs, as on one server: EXECUTE runs it, DEALLOCATE
 * drops it (and session_track closes it on the other nodes and forgets it), PREPARE is refused
 * (42P05). Nothing on a `pooler: transaction` node, which holds no named statements. Returns 0
 * or -1 (out of memory). */
int session_before_named_sql(struct client *c, struct backend *b, const char *sql,
                             const struct classify_result *cr, bool sync);
/* Behind a transaction pooler: put statement `name` in b's unnamed slot unless it holds it in
 * this batch already; and rewrite message m with its statement name (at name_off, nlen bytes)
 * made "" into c->scratch. Both return 0 or -1. */
int session_pooled_fill_slot(struct client *c, struct backend *b, const char *name, size_t nlen);
int session_pooled_rewrite(struct client *c, const struct proto_msg *m, size_t name_off,
                           size_t nlen);

/* Session changes. */
void session_changes_free(struct session_change *ch);
struct session_change *session_change_find(struct client *c, const char *key);
/* Append a change replayed as the Query `sql`, replacing an older one with the same key.
 * Returns 0 or -1 (out of memory). */
int session_change_add(struct client *c, const char *key, const char *sql, size_t sqllen,
                       unsigned flags);
/* The statement that recorded change `gen` failed, so it changed nothing: drop the change and
 * put back the older change of the same key it replaced, if any; when a newer change of the key
 * replaced it meanwhile, just drop it from that change's chain. Nothing when `gen` is gone. */
void session_change_undo(struct client *c, uint64_t gen);
/* The statement that recorded change `gen` succeeded: the older changes it replaced are no
 * longer needed for an undo. */
void session_change_confirm(struct client *c, uint64_t gen);
/* The transaction that saved the session's settings (session_track, at its first change of
 * one) ended: rolled back, its changes to them (those up to generation `gen_at`, when its end
 * was sent; a pipelining client may have made more since) are undone; either way the copy
 * goes. */
void session_tx_end(struct client *c, bool rolled_back, uint64_t gen_at);
/* Before a bound statement that changes a setting runs on b: outside a transaction block it
 * runs in the implicit transaction of its batch, which an error before the batch's Sync rolls
 * back; keep a copy of the settings for that (ended by session_tx_end at the Sync's answer). */
void session_batch_save(struct client *c, const struct backend *b);
/* The transaction ended: forget its savepoints. */
void session_savepoints_clear(struct client *c);
/* The client is gone: free its savepoints and the spare ones. */
void session_savepoints_free(struct client *c);
/* Record a set_config() call sent with Parse/Bind: `bind` is the client's Bind body. */
int session_add_set_config_bind(struct client *c, const struct stmt *s, const char *bind,
                                size_t bindlen);
/* Record what a Query (or a bound statement's text) about to run on b changes in the session:
 * pins, SET/RESET/DISCARD, PREPARE/DEALLOCATE, set_config, savepoints. */
void session_track(struct client *c, const char *sql, size_t len, const struct classify_result *cr,
                   struct backend *b);
/* The client dropped SQL-prepared statement `name` (lower-cased as session_copy_name does) on
 * b: drop it on every other backend that replayed its PREPARE, and stop replaying it. Returns
 * false when no SQL PREPARE of that name is recorded. */
bool session_forget_sql_prepare(struct client *c, struct backend *b, const char *name);
/* Replay on b every change it has not had yet. Returns 0 or -1 (out of memory). */
int session_sync_backend(struct client *c, struct backend *b);

/* Copy a SQL name into dst (cap bytes, NUL-terminated), lower-cased unless quoted. */
void session_copy_name(char *dst, size_t cap, const char *src, size_t len, bool quoted);

#endif
