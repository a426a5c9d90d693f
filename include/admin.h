/* SPDX-License-Identifier: MIT */
/* The admin interface on `admin_listen`: HTTP/1.1 (/status, /metrics, /healthz, /readyz,
 * POST /reload) and a PostgreSQL-protocol console (SHOW NODES, RELOAD, PAUSE, EXPLAIN ROUTE...),
 * told apart by the first byte. The request parser, the console command parser and the text
 * builders are pure and declared here so that they are unit tested on their own. */
#ifndef PGSTEER_ADMIN_H
#define PGSTEER_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "lag.h"
#include "latency.h"
#include "router.h"

#define HTTP_MAX_REQUEST 8192  /* request line + headers; more is a 400 */
#define HTTP_MAX_BODY    65536 /* a request body (POST /reload needs none) */

/* ---- HTTP request parsing (pure) ---- */

struct http_request {
    char method[16];
    char path[1024]; /* the target without its query string */
    int minor_version;
    bool has_auth;
    char auth[512];        /* Authorization header value, trimmed */
    size_t content_length; /* 0 when absent */
    bool chunked;          /* Transfer-Encoding present (not supported: the caller answers 400) */
};

/* Parse the request head at p[0..n). Returns the length of the head (through the empty line)
 * when it is complete and well formed, 0 when more bytes are needed, -1 when it is malformed
 * (bad request line, header without a colon, control characters, bad Content-Length, HTTP
 * version other than 1.x, target not starting with '/'), -2 when no complete head fits in
 * HTTP_MAX_REQUEST bytes or a field does not fit in its struct member. Accepts CRLF or bare LF
 * line ends. */
int http_parse_request(const char *p, size_t n, struct http_request *req);

/* ---- statistics (collected from the proxy; the builders are pure) ---- */

struct admin_node_stats {
    const char *name;
    const char *role;      /* "primary" | "replica" */
    const char *state;     /* "up" | "lagging" | "down" | "unknown" (before the first round) */
    bool up;               /* answers the monitor */
    bool eligible;         /* reads may go here now */
    int64_t lag_bytes;     /* -1 when unknown */
    int64_t lag_ms;        /* -1 when unknown */
    int64_t changed_at_ms; /* unix ms of the last state change; 0 when unknown */
    const char *reason;    /* why it is in its state; "" when unknown */
    uint64_t reads, writes, backends, evictions;
    uint64_t idle_backends;   /* in the pool now */
    uint64_t backends_opened; /* logins to the node since start */
    uint64_t backends_reused; /* backends a client took from the pool since start */
};

struct admin_stats {
    const char *version;
    int64_t now_unix_ms;
    int64_t start_unix_ms;
    double uptime_seconds;
    uint64_t clients;
    int workers;
    bool paused;
    bool shutting_down;
    bool have_snapshot; /* a monitor round has completed */
    bool primary_up;
    uint64_t monitor_round;
    const char *primary_name;
    const char *primary_reason; /* the primary node's state reason; "" when unknown */
    uint64_t route_reasons[ROUTE_REASON_COUNT];
    uint64_t read_retries;
    uint64_t tls_clients, tls_failures; /* client_tls: clients over TLS now, failed handshakes */
    uint64_t login_timeouts;            /* clients closed by client_login_timeout_ms */
    uint64_t auth_lookups;              /* auth_query: secrets looked up on the primary */
    uint64_t auth_lookup_errors;        /* ... that could not be */
    uint64_t multiplexed;               /* reads sent over shared backends (multiplex_reads) */
    uint64_t multiplex_stalls; /* reads kept off a stalled shared backend (multiplex_stall_ms) */
    uint64_t unnamed_prepared; /* unnamed statements' texts kept prepared (cache_unnamed_...) */
    uint64_t unnamed_reused;   /* Parses of such a text answered by a kept statement */
    uint64_t simple_prepared;  /* simple queries' texts prepared with parameters (prepare_...) */
    uint64_t simple_reused;    /* simple queries run as such a kept statement */
    uint64_t begins_deferred;  /* BEGINs answered at once, sent with what followed (defer_begin) */
    uint64_t busy_poll_reads, busy_poll_sleeps; /* busy_poll_us at work (see struct proxy) */
    uint64_t reloads, reload_failures;
    struct latency_hist lat_request, lat_response; /* time pgsteer itself spends */
    size_t nnodes;
    struct admin_node_stats nodes[CONFIG_MAX_NODES];
    /* per node slot, summed over the workers (admin_collect's scratch) */
    uint64_t node_reads[CONFIG_MAX_NODES], node_writes[CONFIG_MAX_NODES];
    uint64_t node_backends[CONFIG_MAX_NODES], node_idle[CONFIG_MAX_NODES];
    uint64_t node_opened[CONFIG_MAX_NODES], node_reused[CONFIG_MAX_NODES];
};

/* The Prometheus text exposition (format 0.0.4) of st. Returns 0 or -1 (out of memory). */
int admin_write_metrics(struct buf *out, const struct admin_stats *st);
/* The /status JSON document of st, with a trailing newline. Returns 0 or -1. */
int admin_write_status_json(struct buf *out, const struct admin_stats *st);
/* Readiness: true when the primary is reachable and the proxy is not shutting down; otherwise
 * false with a one-line reason in reason[cap]. */
bool admin_ready(const struct admin_stats *st, char *reason, size_t cap);

/* ---- console commands (pure parser) ---- */

enum admin_cmd {
    ADMIN_CMD_EMPTY = 0,
    ADMIN_CMD_UNKNOWN,
    ADMIN_CMD_SHOW_NODES,
    ADMIN_CMD_SHOW_STATS,
    ADMIN_CMD_SHOW_CLIENTS,
    ADMIN_CMD_SHOW_SERVERS,
    ADMIN_CMD_SHOW_CONFIG,
    ADMIN_CMD_SHOW_HELP,
    ADMIN_CMD_SHOW_VERSION,
    ADMIN_CMD_RELOAD,
    ADMIN_CMD_PAUSE,
    ADMIN_CMD_RESUME,
    ADMIN_CMD_EXPLAIN_ROUTE,
};

/* Parse one console statement (keywords case-insensitive, surrounding white space and
 * trailing semicolons ignored). For ADMIN_CMD_EXPLAIN_ROUTE, *arg and *arglen get the statement
 * after EXPLAIN ROUTE (ADMIN_CMD_UNKNOWN when it is empty). */
enum admin_cmd admin_parse_command(const char *sql, size_t len, const char **arg, size_t *arglen);

/* ---- the server (loop thread) ---- */

struct proxy;

/* Bind cfg->admin_listen and serve on px->loop; sets px->admin. Returns 0 or -1 (logged). */
int admin_start(struct proxy *px);
/* Close the listener and every admin connection (memory freed in close callbacks); the loop
 * must run once more. Safe when not started. */
void admin_stop(struct proxy *px);
/* Fill st from every worker's counters (proxy_each), worker 0's newest monitor snapshot and
 * the config. The strings point into px->cfg and px->snap: use st before either changes.
 * Worker 0's thread. */
void admin_collect(struct proxy *px, struct admin_stats *st);
/* RESUME: clear every worker's paused flag and let held clients go on. Worker 0's thread. */
void admin_resume(struct proxy *px);

#endif
