/* SPDX-License-Identifier: MIT */
/* The routing decision: statement class + session state + node view -> target node, and why.
 * Pure: no I/O, no clock; the caller passes everything in. */
#ifndef PGSTEER_ROUTER_H
#define PGSTEER_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "lag.h"

/* Why a statement went where it went. Stable names (router_reason_name) appear in logs,
 * EXPLAIN ROUTE and the admin stats. */
enum route_reason {
    ROUTE_READ = 0,         /* a read on an eligible replica */
    ROUTE_WRITE,            /* a write */
    ROUTE_TRANSACTION,      /* inside a transaction: stays on the transaction's node */
    ROUTE_BEGIN,            /* BEGIN (read-write) opens a transaction on the primary */
    ROUTE_FORCED,           /* the pgsteer:primary comment */
    ROUTE_WRITE_FUNCTION,   /* calls a function with side effects */
    ROUTE_PINNED,           /* session pinned by temp table, LISTEN, advisory lock, WITH HOLD */
    ROUTE_READ_YOUR_WRITES, /* no replica has replayed the session's last write yet */
    ROUTE_FALLBACK,         /* no replica is eligible */
    ROUTE_STRONG,           /* consistency strong */
    ROUTE_NO_NODE,          /* fallback: error and no replica eligible: the caller fails it */
    ROUTE_REASON_COUNT
};

/* What the router knows of one node now (built by the caller from config + monitor). */
struct router_node {
    bool is_primary;
    bool eligible;    /* replica that reads may go to (monitor says UP; not locally failed) */
    int weight;       /* >= 0 */
    lsn_t replay_lsn; /* replica: replayed up to here (monitor); LSN_INVALID when unknown */
};

/* Per event loop: the weighted round robin's memory. */
struct router {
    int current[CONFIG_MAX_NODES]; /* smooth weighted round robin counters */
};

/* What the router needs to know of a session. */
struct router_session {
    int tx_node; /* node index of the open transaction, or -1 */
    bool pinned; /* pinned to the primary */
    enum consistency consistency;
    lsn_t min_lsn;        /* reads need replay_lsn >= min_lsn (LSN_INVALID: no need) */
    int preferred;        /* replica to keep reading from while it qualifies, or -1 */
    bool write_unbounded; /* a write finished but no monitor round has bounded its LSN yet:
                             reads must go to the primary (read-your-writes) */
};

struct router_input {
    unsigned flags; /* classify flags of the routing unit */
    const struct router_node *nodes;
    size_t nnodes;
    int primary; /* index of the primary */
    enum fallback fallback;
};

struct route {
    int node; /* index into nodes; -1 with ROUTE_NO_NODE */
    enum route_reason reason;
};

void router_init(struct router *r);
/* Give `node` a head start in the round robin: while it qualifies it wins the next pick, and
 * the rotation goes on from there. Several routers (one per worker) each given a different
 * replica start their rotations apart, so that a few sessions on different workers do not all
 * begin on the same replica. */
void router_head_start(struct router *r, int node);
/* Decide where a routing unit goes. Advances the round robin only when it picks a replica. */
struct route router_route(struct router *r, const struct router_session *s,
                          const struct router_input *in);
const char *router_reason_name(enum route_reason reason);

#endif
