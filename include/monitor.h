/* SPDX-License-Identifier: MIT */
/* The monitor thread: polls every node with libpq for role and WAL positions, computes lag,
 * runs the eviction state machine, and publishes an immutable snapshot to the event loop.
 * The thread never touches loop objects except uv_async_send, which is thread-safe. */
#ifndef PGSTEER_MONITOR_H
#define PGSTEER_MONITOR_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "lag.h"

struct node_status {
    enum lag_state state;      /* UP, LAGGING, DOWN */
    bool answered;             /* answered in the last round */
    bool in_recovery;          /* pg_is_in_recovery() */
    bool eligible;             /* a replica reads may go to now (UP, in recovery, weight > 0) */
    lsn_t current_lsn;         /* primary: pg_current_wal_lsn() */
    lsn_t receive_lsn;         /* replica: pg_last_wal_receive_lsn() */
    lsn_t replay_lsn;          /* replica: pg_last_wal_replay_lsn() */
    int64_t lag_bytes;         /* primary flush LSN - replay LSN, >= 0; 0 for the primary */
    int64_t lag_ms;            /* time lag, see lag_history_time_lag; 0 for the primary */
    int64_t last_replay_ts_ms; /* pg_last_xact_replay_timestamp() in unix ms, 0 if null */
    int64_t changed_at_ms;     /* unix ms of the last state change */
    char reason[128];          /* why it is in its state */
};

/* One round's results. Immutable once published; owned by the loop after it takes it. */
struct monitor_snapshot {
    uint64_t round;             /* 1, 2, ... */
    int64_t primary_sampled_ns; /* uv_hrtime() just before the primary LSN query was sent */
    lsn_t primary_lsn;          /* read-your-writes bound: a replica that has replayed up to here
                                   has replayed every commit that returned before
                                   primary_sampled_ns, asynchronous ones included (from the
                                   insert LSN, see monitor.c); LSN_INVALID if unknown */
    bool primary_up;
    size_t nnodes; /* same order as config->nodes */
    struct node_status nodes[CONFIG_MAX_NODES];
};

struct monitor; /* opaque */

/* auth_query: a user's secret looked up on the primary. The caller fills `user` and `done`;
 * the monitor thread runs the configuration's query over a connection of its own to the
 * primary (one lookup at a time, in the order asked), fills the answer and calls done(l). */
enum auth_lookup_status {
    AUTH_LOOKUP_FOUND,   /* secret holds the user's secret, as the query returned it */
    AUTH_LOOKUP_NONE,    /* no such user, or one without a password */
    AUTH_LOOKUP_ERROR,   /* the query could not be run: error says why */
    AUTH_LOOKUP_STOPPED, /* not run: the monitor was freed first (a reload); ask the next one */
};

#define AUTH_LOOKUP_MAX_SECRET 512

struct auth_lookup {
    char user[64];                       /* set by the caller: 1 to 63 bytes */
    void (*done)(struct auth_lookup *l); /* set by the caller; called once, on the monitor
                                            thread, or in monitor_free on the caller of that:
                                            it must only hand l on (proxy_post) */
    enum auth_lookup_status status;
    char secret[AUTH_LOOKUP_MAX_SECRET];
    char error[256];
    struct auth_lookup *next; /* the monitor's queue */
};

/* Queue a lookup. l is lent to the monitor until done(l). A monitor made for a configuration
 * without auth_query answers AUTH_LOOKUP_ERROR at once. Loop thread (the one that owns m). */
void monitor_lookup(struct monitor *m, struct auth_lookup *l);

/* Create a monitor for `cfg` (borrowed: it must outlive the monitor or be replaced with
 * monitor_set_config) that wakes `wakeup` (initialised by the caller on its loop) after each
 * published round. Returns NULL on failure. Loop thread. */
struct monitor *monitor_new(const struct config *cfg, uv_async_t *wakeup);
/* Start the thread. Returns 0 or a negative error. */
int monitor_start(struct monitor *m);
/* Take the newest snapshot published since the last call, or NULL when none. The caller owns
 * it and frees it with free(). Loop thread; lock-free (an atomic exchange). */
struct monitor_snapshot *monitor_take(struct monitor *m);
/* Stop and join the thread, answer every lookup not answered yet AUTH_LOOKUP_STOPPED, free
 * everything. Loop thread. */
void monitor_free(struct monitor *m);

#endif
