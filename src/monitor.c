/* SPDX-License-Identifier: MIT */
/* The monitor thread: one libpq connection per node, polled in parallel with the non-blocking
 * API every interval; it turns the answers into lag, runs the eviction state machines and
 * publishes each round as an immutable snapshot through a one-slot atomic mailbox. */
#include "monitor.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "affinity.h"
#include "log.h"

/* One statement answers everything for either role. pg_is_in_recovery() is evaluated once
 * (in FROM) so that a promotion during the statement cannot make the pg_current_wal_*()
 * functions fail on what still looked like a replica. For the primary, three positions:
 * written (pg_current_wal_lsn, shown as the node's LSN), flushed (what replicas can have
 * received: lag is measured against it) and inserted (covers every commit that has returned,
 * asynchronous ones included: the read-your-writes bound), in that order so that the insert
 * position is the newest. PostgreSQL 10 or later. */
#define MONITOR_QUERY                                                                              \
    "SELECT r, CASE WHEN r THEN NULL ELSE pg_current_wal_lsn() END, "                              \
    "pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), "                                        \
    "(extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000)::int8, "                         \
    "CASE WHEN r THEN NULL ELSE pg_current_wal_flush_lsn() END, "                                  \
    "CASE WHEN r THEN NULL ELSE pg_current_wal_insert_lsn() END, "                                 \
    "current_setting('wal_block_size')::int8 "                                                     \
    "FROM pg_is_in_recovery() AS r"
#define MONITOR_COLUMNS 8

#define MONITOR_APPNAME      "pgsteer-monitor"
#define MONITOR_MIN_INTERVAL 10
#define NS_PER_MS            ((uint64_t)1000000)

/* Where a node's connection is. Only CONNECTING may last from one round into the next. */
enum mon_phase {
    MON_CLOSED = 0, /* no connection: the next round starts one */
    MON_CONNECTING, /* PQconnectPoll in progress */
    MON_IDLE,       /* connected, no query in flight */
    MON_SENDING,    /* query sent; libpq still has output to flush */
    MON_WAITING,    /* query flushed; waiting for the answer */
};

/* One libpq connection of the monitor thread. */
struct mon_conn {
    PGconn *conn;
    enum mon_phase phase;
    short events;         /* what libpq waits for: POLLIN and/or POLLOUT */
    uint64_t deadline_ns; /* end of the connect or query in progress */
};

/* What one node said in one round. */
struct mon_answer {
    bool in_recovery;
    lsn_t current;      /* primary only: written */
    lsn_t flush;        /* primary only: flushed */
    lsn_t insert;       /* primary only: inserted */
    int64_t block_size; /* wal_block_size */
    lsn_t receive;      /* replica only */
    lsn_t replay;       /* replica only */
    int64_t replay_ts_ms;
};

struct mon_node {
    /* From the config, copied so that a reload cannot pull strings from under the thread. */
    char *name;
    char *host;
    char port[16];
    bool is_primary;
    int weight;

    struct mon_conn mc;

    /* This round. */
    bool blocking; /* the round waits for this node (see round_begin) */
    bool queried;  /* its query was sent */
    bool done;     /* answered or failed */
    bool answered;
    bool got_row;         /* a well-formed row arrived (more results may still follow) */
    uint64_t sent_ns;     /* uv_hrtime() just before the query was sent */
    char result_err[256]; /* error carried by the result, reported once the results are drained */
    struct mon_answer ans;

    /* Across rounds. */
    char err[256]; /* the last failure, one line */
    struct lag_fsm fsm;
    bool promoted; /* replica seen out of recovery; logged once */
    struct node_status status;
};

struct monitor {
    struct mon_node nodes[CONFIG_MAX_NODES];
    size_t nnodes;
    int primary;
    char *user;
    char *password;
    char *dbname;
    const char *sslmode; /* server_tls: libpq's word for its mode (a static string) */
    char *sslrootcert, *sslcert, *sslkey, *sslcrl;
    bool tls13_only; /* server_tls.min_protocol TLSv1.3 */
    uint64_t interval_ns;
    uint64_t timeout_ns;
    int timeout_ms;
    struct lag_limits limits;

    uv_async_t *wakeup;
    int stop_fd; /* eventfd: wakes the thread's poll() when stopping */
    atomic_bool stop;
    pthread_t thread;
    bool started;
    _Atomic(struct monitor_snapshot *) mailbox;

    /* auth_query (monitor_lookup): its settings, copied; lookups asked and not yet taken, in
     * order, under aq_lock */
    bool aq_enabled;
    char *aq_query, *aq_user, *aq_password, *aq_dbname;
    pthread_mutex_t aq_lock;
    struct auth_lookup *aq_head, *aq_tail;

    /* Monitor thread only. */
    struct lag_history history;
    uint64_t round;
    bool gate;                  /* this round: replicas may be queried (the primary went first) */
    bool primary_up;            /* the primary's state as last published */
    lsn_t primary_lsn;          /* the newest primary flush LSN known (lag is measured against
                                   it), kept while the primary is down */
    lsn_t primary_bound;        /* commit_bound() of the same sample: published as the
                                   snapshot's primary_lsn */
    int64_t primary_sampled_ns; /* when both were sampled */
    /* auth_query: the lookup being answered, over a connection to the primary of its own (the
     * rounds' connection stays free for the rounds) */
    struct auth_lookup *aq_cur;
    bool aq_answered; /* aq_cur's answer is filled in; the connection is being drained */
    struct mon_conn aq;
};

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* Copy, cutting what does not fit (the snapshot's reason is a fixed array; the log line
 * carries the whole text). */
static void copy_text(char *dst, size_t cap, const char *src)
{
    size_t len = strlen(src);
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* libpq messages span lines ("...failed: Connection refused\n\tIs the server running...");
 * a log line must not, so whitespace runs become one space. */
static void one_line(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    bool space = false;
    for (const char *p = src != NULL ? src : ""; *p != '\0' && n + 1 < cap; p++) {
        if (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < cap)
            dst[n++] = ' ';
        space = false;
        dst[n++] = *p;
    }
    dst[n] = '\0';
}

/* Notices would otherwise go to stderr unformatted (e.g. the FATAL a terminated backend
 * sends while the connection is idle). */
static void notice_cb(void *arg, const char *message)
{
    const char *node_name = arg;
    char line[512];
    one_line(line, sizeof(line), message);
    log_debug("monitor: %s: %s", node_name, line);
}

/* ---- a libpq connection of the monitor thread, without blocking ---- */

static void conn_drop(struct mon_conn *c)
{
    if (c->conn != NULL)
        PQfinish(c->conn);
    c->conn = NULL;
    c->phase = MON_CLOSED;
    c->events = 0;
}

static bool conn_active(const struct mon_conn *c)
{
    return c->phase == MON_CONNECTING || c->phase == MON_SENDING || c->phase == MON_WAITING;
}

/* Start a non-blocking connection to node n with the monitor's TLS settings. Returns 0, or -1
 * with the reason in err[cap] (the connection dropped). */
static int conn_start(const struct monitor *m, struct mon_conn *c, const struct mon_node *n,
                      const char *user, const char *password, const char *dbname, const char *app,
                      uint64_t now, char *err, size_t cap)
{
    const char *keys[16], *vals[16];
    int k = 0;
    keys[k] = "host", vals[k++] = n->host;
    keys[k] = "port", vals[k++] = n->port;
    keys[k] = "dbname", vals[k++] = dbname != NULL ? dbname : "postgres";
    keys[k] = "application_name", vals[k++] = app;
    keys[k] = "fallback_application_name", vals[k++] = app;
    if (user != NULL)
        keys[k] = "user", vals[k++] = user;
    if (password != NULL)
        keys[k] = "password", vals[k++] = password;
    keys[k] = "sslmode", vals[k++] = m->sslmode; /* as pgsteer's own connections */
    if (m->sslrootcert != NULL)
        keys[k] = "sslrootcert", vals[k++] = m->sslrootcert;
    if (m->sslcert != NULL)
        keys[k] = "sslcert", vals[k++] = m->sslcert;
    if (m->sslkey != NULL)
        keys[k] = "sslkey", vals[k++] = m->sslkey;
    if (m->sslcrl != NULL)
        keys[k] = "sslcrl", vals[k++] = m->sslcrl;
    if (m->tls13_only)
        keys[k] = "ssl_min_protocol_version", vals[k++] = "TLSv1.3";
    keys[k] = NULL, vals[k] = NULL;
    /* Caution: a host name (not an address) is resolved synchronously inside libpq, which can
     * hold up the whole round; configure monitor hosts as addresses where that matters. The
     * connect timeout is enforced here (libpq's connect_timeout applies to blocking connects
     * only). */
    c->conn = PQconnectStartParams(keys, vals, 0);
    if (c->conn == NULL) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    PQsetNoticeProcessor(c->conn, notice_cb, (void *)n->name);
    if (PQstatus(c->conn) == CONNECTION_BAD) {
        one_line(err, cap, PQerrorMessage(c->conn));
        conn_drop(c);
        return -1;
    }
    c->phase = MON_CONNECTING;
    c->events = POLLOUT; /* as if PQconnectPoll had returned PGRES_POLLING_WRITING */
    c->deadline_ns = now + m->timeout_ns;
    return 0;
}

/* An idle connection the server closed meanwhile (restart, terminated backend, idle timeout)
 * shows up as a readable socket with EOF. Finding that out before a query goes out lets it
 * reconnect at once instead of failing that query. Returns true when c was dropped so, with
 * the reason in err[cap]. */
static bool conn_check_idle(struct mon_conn *c, char *err, size_t cap)
{
    for (int i = 0; i < 4; i++) {
        struct pollfd p = {.fd = PQsocket(c->conn), .events = POLLIN};
        if (p.fd < 0 || poll(&p, 1, 0) <= 0)
            break;
        if (!PQconsumeInput(c->conn))
            break;
    }
    if (PQsocket(c->conn) >= 0 && PQstatus(c->conn) != CONNECTION_BAD)
        return false;
    one_line(err, cap, PQerrorMessage(c->conn));
    conn_drop(c);
    return true;
}

/* After a query was sent, or when the socket is writable: push libpq's output. Returns 0, or
 * -1 with the reason in err[cap]. */
static int conn_flush(struct mon_conn *c, char *err, size_t cap)
{
    int r = PQflush(c->conn);
    if (r < 0) {
        one_line(err, cap, PQerrorMessage(c->conn));
        return -1;
    }
    if (r == 0) {
        c->phase = MON_WAITING;
        c->events = POLLIN;
    } else {
        /* libpq could not write everything: the server may be waiting for us to read. */
        c->phase = MON_SENDING;
        c->events = POLLIN | POLLOUT;
    }
    return 0;
}

/* What conn_advance came to. */
enum conn_step {
    CONN_BUSY,      /* still connecting, sending or waiting */
    CONN_CONNECTED, /* the connection is up and idle */
    CONN_DRAINED,   /* every result of the query was handed to take(); idle again */
    CONN_FAILED,    /* err says why; the connection should be dropped */
};

/* Read what came for the query in flight: each result to take(arg, res); CONN_DRAINED once
 * they are all taken. */
static enum conn_step conn_read(struct mon_conn *c, void (*take)(void *arg, const PGresult *res),
                                void *arg, char *err, size_t cap)
{
    if (!PQconsumeInput(c->conn)) {
        one_line(err, cap, PQerrorMessage(c->conn));
        return CONN_FAILED;
    }
    while (!PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL) {
            c->phase = MON_IDLE;
            c->events = 0;
            return CONN_DRAINED;
        }
        take(arg, res);
        PQclear(res);
    }
    return CONN_BUSY;
}

/* Move c on after poll() reported `revents` (not 0) on its socket; each result of the query in
 * flight goes to take(arg, res). */
static enum conn_step conn_advance(struct mon_conn *c, short revents,
                                   void (*take)(void *arg, const PGresult *res), void *arg,
                                   char *err, size_t cap)
{
    switch (c->phase) {
    case MON_CONNECTING:
        switch (PQconnectPoll(c->conn)) {
        case PGRES_POLLING_OK:
            if (PQsetnonblocking(c->conn, 1) != 0)
                break;
            c->phase = MON_IDLE;
            c->events = 0;
            return CONN_CONNECTED;
        case PGRES_POLLING_FAILED:
            break;
        case PGRES_POLLING_READING:
            c->events = POLLIN;
            return CONN_BUSY;
        default:
            c->events = POLLOUT;
            return CONN_BUSY;
        }
        one_line(err, cap, PQerrorMessage(c->conn));
        return CONN_FAILED;
    case MON_SENDING:
        if ((revents & POLLIN) && !PQconsumeInput(c->conn)) {
            one_line(err, cap, PQerrorMessage(c->conn));
            return CONN_FAILED;
        }
        if (conn_flush(c, err, cap) < 0)
            return CONN_FAILED;
        if (c->phase != MON_WAITING)
            return CONN_BUSY;
        return conn_read(c, take, arg, err, cap); /* (the answer may be here already) */
    case MON_WAITING:
        return conn_read(c, take, arg, err, cap);
    default:
        return CONN_BUSY;
    }
}

/* ---- the nodes' connections ---- */

static void node_drop(struct mon_node *n)
{
    conn_drop(&n->mc);
}

/* The node failed this round. `drop` closes the connection (it is unusable, or a query is
 * still in flight on it); the message is copied before the connection is freed. */
static void node_fail(struct mon_node *n, const char *msg, bool drop)
{
    one_line(n->err, sizeof(n->err), msg);
    if (n->err[0] == '\0')
        snprintf(n->err, sizeof(n->err), "unknown error");
    n->answered = false;
    n->done = true;
    if (drop || (n->mc.conn != NULL && PQstatus(n->mc.conn) == CONNECTION_BAD))
        node_drop(n);
}

static void node_connect(struct monitor *m, struct mon_node *n, uint64_t now)
{
    char err[256];
    if (conn_start(m, &n->mc, n, m->user, m->password, m->dbname, MONITOR_APPNAME, now, err,
                   sizeof(err)) < 0)
        node_fail(n, err, true);
}

static void node_check_idle(struct mon_node *n)
{
    char err[256];
    if (conn_check_idle(&n->mc, err, sizeof(err)))
        log_debug("monitor: %s: reconnecting: %s", n->name, err);
}

static void node_send(struct monitor *m, struct mon_node *n)
{
    n->queried = true;
    n->sent_ns = uv_hrtime();
    n->mc.deadline_ns = n->sent_ns + m->timeout_ns;
    char err[256];
    if (!PQsendQuery(n->mc.conn, MONITOR_QUERY)) {
        node_fail(n, PQerrorMessage(n->mc.conn), true);
        return;
    }
    if (conn_flush(&n->mc, err, sizeof(err)) < 0)
        node_fail(n, err, true);
}

static int parse_lsn_field(const PGresult *res, int col, lsn_t *out)

{
    *out = LSN_INVALID;
    if (PQgetisnull(res, 0, col))
        return 0;
    return lsn_parse(PQgetvalue(res, 0, col), (size_t)PQgetlength(res, 0, col), out);
}

static void node_take_result(void *arg, const PGresult *res)
{
    struct mon_node *n = arg;
    if (n->got_row || n->result_err[0] != '\0')
        return; /* only the first result counts */
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        one_line(n->result_err, sizeof(n->result_err), PQresultErrorMessage(res));
        if (n->result_err[0] == '\0')
            snprintf(n->result_err, sizeof(n->result_err), "%s", PQresStatus(PQresultStatus(res)));
        return;
    }
    struct mon_answer *a = &n->ans;
    if (PQntuples(res) != 1 || PQnfields(res) != MONITOR_COLUMNS || PQgetisnull(res, 0, 0) ||
        parse_lsn_field(res, 1, &a->current) < 0 || parse_lsn_field(res, 2, &a->receive) < 0 ||
        parse_lsn_field(res, 3, &a->replay) < 0 || parse_lsn_field(res, 5, &a->flush) < 0 ||
        parse_lsn_field(res, 6, &a->insert) < 0) {
        snprintf(n->result_err, sizeof(n->result_err), "unexpected answer to the monitor query");
        return;
    }
    a->in_recovery = PQgetvalue(res, 0, 0)[0] == 't';
    a->replay_ts_ms = PQgetisnull(res, 0, 4) ? 0 : strtoll(PQgetvalue(res, 0, 4), NULL, 10);
    a->block_size = PQgetisnull(res, 0, 7) ? 0 : strtoll(PQgetvalue(res, 0, 7), NULL, 10);
    n->got_row = true;
}

/* Move one node on after poll(): `revents` from its socket, or 0 when only time passed. */
static void node_service(struct monitor *m, struct mon_node *n, short revents, uint64_t now)
{
    if (revents != 0) {
        char err[256];
        switch (conn_advance(&n->mc, revents, node_take_result, n, err, sizeof(err))) {
        case CONN_CONNECTED:
            return;
        case CONN_DRAINED:
            /* All results drained: the connection is idle again and stays open. */
            if (n->got_row) {
                n->answered = true;
                n->done = true;
                n->err[0] = '\0';
            } else {
                node_fail(n, n->result_err[0] != '\0' ? n->result_err : "no answer", false);
            }
            return;
        case CONN_FAILED:
            node_fail(n, err, true);
            return;
        case CONN_BUSY:
            break;
        }
    }
    if (now < n->mc.deadline_ns)
        return;
    char msg[128];
    if (n->mc.phase == MON_CONNECTING) {
        snprintf(msg, sizeof(msg), "timeout: not connected after %d ms", m->timeout_ms);
        node_fail(n, msg, true);
    } else if (n->mc.phase == MON_SENDING || n->mc.phase == MON_WAITING) {
        /* The query is still in flight: the connection cannot be reused for the next one. */
        snprintf(msg, sizeof(msg), "timeout: no answer after %d ms", m->timeout_ms);
        node_fail(n, msg, true);
    }
}

/* ---- auth_query ---- */

#define AUTH_APPNAME "pgsteer-auth"

static void aq_answer(struct auth_lookup *l, enum auth_lookup_status st, const char *error)
{
    l->status = st;
    if (error != NULL)
        one_line(l->error, sizeof(l->error), error);
    if (st == AUTH_LOOKUP_ERROR && l->error[0] == '\0')
        snprintf(l->error, sizeof(l->error), "unknown error");
    l->done(l);
}

/* The lookup at hand is over: answered as aq_take_result filled it in, or, when `set`, with
 * st and error. */
static void aq_finish(struct monitor *m, bool set, enum auth_lookup_status st, const char *error)
{
    struct auth_lookup *l = m->aq_cur;
    m->aq_cur = NULL;
    m->aq_answered = false;
    if (set)
        aq_answer(l, st, error);
    else
        l->done(l);
}

/* The lookup at hand failed with `why` and its connection is dropped. */
static void aq_fail(struct monitor *m, const char *why)
{
    conn_drop(&m->aq);
    aq_finish(m, true, AUTH_LOOKUP_ERROR, why);
}

/* The primary cannot be reached: the lookup at hand and every one queued fail with `why` (each
 * would only wait for the same timeout in turn). */
static void aq_fail_all(struct monitor *m, const char *why)
{
    char msg[256];
    one_line(msg, sizeof(msg), why);
    conn_drop(&m->aq);
    if (m->aq_cur != NULL)
        aq_finish(m, true, AUTH_LOOKUP_ERROR, msg);
    pthread_mutex_lock(&m->aq_lock);
    struct auth_lookup *l = m->aq_head;
    m->aq_head = m->aq_tail = NULL;
    pthread_mutex_unlock(&m->aq_lock);
    while (l != NULL) {
        struct auth_lookup *next = l->next;
        aq_answer(l, AUTH_LOOKUP_ERROR, msg);
        l = next;
    }
}

/* The first result of the query is the answer; the rest are drained. */
static void aq_take_result(void *arg, const PGresult *res)
{
    struct monitor *m = arg;
    struct auth_lookup *l = m->aq_cur;
    if (m->aq_answered)
        return;
    m->aq_answered = true;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        l->status = AUTH_LOOKUP_ERROR;
        one_line(l->error, sizeof(l->error), PQresultErrorMessage(res));
        if (l->error[0] == '\0')
            snprintf(l->error, sizeof(l->error), "%s", PQresStatus(PQresultStatus(res)));
        return;
    }
    if (PQnfields(res) < 2) {
        l->status = AUTH_LOOKUP_ERROR;
        snprintf(l->error, sizeof(l->error),
                 "auth_query answered %d column(s); it must answer the name and the secret",
                 PQnfields(res));
        return;
    }
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 1)) {
        l->status = AUTH_LOOKUP_NONE;
        return;
    }
    int len = PQgetlength(res, 0, 1);
    if (len >= (int)sizeof(l->secret)) {
        l->status = AUTH_LOOKUP_ERROR;
        snprintf(l->error, sizeof(l->error), "auth_query answered a secret of %d bytes", len);
        return;
    }
    memcpy(l->secret, PQgetvalue(res, 0, 1), (size_t)len);
    l->secret[len] = '\0';
    l->status = AUTH_LOOKUP_FOUND;
}

/* Start what the lookups need: take the next one, connect, send its query. Monitor thread, at
 * every turn of pump. */
static void aq_step(struct monitor *m, uint64_t now)
{
    if (m->aq_cur == NULL) {
        pthread_mutex_lock(&m->aq_lock);
        m->aq_cur = m->aq_head;
        if (m->aq_head != NULL) {
            m->aq_head = m->aq_head->next;
            if (m->aq_head == NULL)
                m->aq_tail = NULL;
        }
        pthread_mutex_unlock(&m->aq_lock);
        if (m->aq_cur == NULL)
            return;
        m->aq_cur->next = NULL;
        m->aq_answered = false;
    }
    char err[256];
    if (m->aq.phase == MON_IDLE && conn_check_idle(&m->aq, err, sizeof(err)))
        log_debug("monitor: auth_query: reconnecting: %s", err);
    if (m->aq.phase == MON_CLOSED) {
        if (conn_start(m, &m->aq, &m->nodes[m->primary], m->aq_user, m->aq_password, m->aq_dbname,
                       AUTH_APPNAME, now, err, sizeof(err)) < 0)
            aq_fail_all(m, err);
        return;
    }
    if (m->aq.phase != MON_IDLE)
        return;
    const char *param = m->aq_cur->user;
    if (!PQsendQueryParams(m->aq.conn, m->aq_query, 1, NULL, &param, NULL, NULL, 0)) {
        one_line(err, sizeof(err), PQerrorMessage(m->aq.conn));
        aq_fail(m, err);
        return;
    }
    m->aq.deadline_ns = now + m->timeout_ns;
    if (conn_flush(&m->aq, err, sizeof(err)) < 0)
        aq_fail(m, err);
}

/* Move the lookup connection on after poll(): `revents` from its socket, or 0. */
static void aq_service(struct monitor *m, short revents, uint64_t now)
{
    if (revents != 0) {
        char err[256];
        switch (conn_advance(&m->aq, revents, aq_take_result, m, err, sizeof(err))) {
        case CONN_CONNECTED:
            aq_step(m, now);
            return;
        case CONN_DRAINED:
            if (m->aq_answered)
                aq_finish(m, false, AUTH_LOOKUP_ERROR, NULL);
            else
                aq_finish(m, true, AUTH_LOOKUP_ERROR, "no answer to auth_query");
            return;
        case CONN_FAILED:
            if (m->aq.phase == MON_CONNECTING)
                aq_fail_all(m, err);
            else
                aq_fail(m, err);
            return;
        case CONN_BUSY:
            break;
        }
    }
    if (!conn_active(&m->aq) || now < m->aq.deadline_ns)
        return;
    char msg[128];
    if (m->aq.phase == MON_CONNECTING) {
        snprintf(msg, sizeof(msg), "timeout: not connected to the primary after %d ms",
                 m->timeout_ms);
        aq_fail_all(m, msg);
    } else {
        snprintf(msg, sizeof(msg), "timeout: no answer to auth_query after %d ms", m->timeout_ms);
        aq_fail(m, msg);
    }
}

void monitor_lookup(struct monitor *m, struct auth_lookup *l)
{
    l->next = NULL;
    l->error[0] = '\0';
    l->secret[0] = '\0';
    if (!m->aq_enabled) {
        aq_answer(l, AUTH_LOOKUP_ERROR, "auth_query is not configured");
        return;
    }
    pthread_mutex_lock(&m->aq_lock);
    if (m->aq_tail != NULL)
        m->aq_tail->next = l;
    else
        m->aq_head = l;
    m->aq_tail = l;
    pthread_mutex_unlock(&m->aq_lock);
    uint64_t one = 1;
    ssize_t w = write(m->stop_fd, &one, sizeof(one));
    (void)w;
}

static bool node_active(const struct mon_node *n)
{
    return conn_active(&n->mc);
}

static bool node_down(const struct monitor *m, const struct mon_node *n)
{
    return n->is_primary ? !m->primary_up : n->fsm.state == LAG_DOWN;
}

static void round_begin(struct monitor *m, uint64_t now)
{
    m->gate = false;
    for (size_t i = 0; i < m->nnodes; i++) {
        struct mon_node *n = &m->nodes[i];
        n->queried = n->done = n->answered = n->got_row = false;
        n->result_err[0] = '\0';
        memset(&n->ans, 0, sizeof(n->ans));
        if (n->mc.phase == MON_IDLE)
            node_check_idle(n);
        /* A node already known down whose connect attempt is still pending (a host that
         * drops packets) does not hold up everyone's round: its attempt goes on across
         * rounds until its own timeout. A node believed up is always waited for. */
        if (n->mc.phase == MON_CLOSED)
            node_connect(m, n, now);
        n->blocking = !(node_down(m, n) && n->mc.phase == MON_CONNECTING);
    }
}

/* Send the queries that may go now. The primary goes first: a replica's replay position is
 * compared with the primary's LSN, and a replica sampled before the primary would look more
 * lagged than it is (a false eviction under write load). The replicas' queries follow at
 * once, so a replica is sampled up to a few milliseconds after the primary and can only look
 * less lagged than it is, by at most what it replays in that time (bounded by one round). */
static void round_dispatch(struct monitor *m)
{
    struct mon_node *p = &m->nodes[m->primary];
    if (!m->gate) {
        if (p->mc.phase == MON_IDLE && !p->done && !p->queried)
            node_send(m, p);
        /* Once the primary's query is out, or it failed, or it is a down node still
         * connecting, the replicas need not wait. A primary that connects after that is
         * not queried this round: it would be sampled after the replicas. */
        if (p->queried || p->done || !p->blocking)
            m->gate = true;
    }
    if (!m->gate)
        return;
    for (size_t i = 0; i < m->nnodes; i++) {
        struct mon_node *n = &m->nodes[i];
        if (!n->is_primary && n->mc.phase == MON_IDLE && !n->done && !n->queried) {
            n->blocking = true; /* connected: its answer is worth the wait */
            node_send(m, n);
        }
    }
}

static bool round_complete(const struct monitor *m)
{
    for (size_t i = 0; i < m->nnodes; i++) {
        const struct mon_node *n = &m->nodes[i];
        if (n->done)
            continue;
        if (n->mc.phase == MON_SENDING || n->mc.phase == MON_WAITING || n->blocking)
            return false;
    }
    return true;
}

/* Serve the nodes' sockets. In a round, send queries as they may go and return 0 when the
 * round is complete; between rounds, carry pending connects on and return 0 at `until_ns`.
 * Returns -1 when the monitor is stopping. */
static int pump(struct monitor *m, bool in_round, uint64_t until_ns)
{
    for (;;) {
        if (atomic_load(&m->stop))
            return -1;
        uint64_t now = uv_hrtime();
        aq_step(m, now);
        if (in_round) {
            round_dispatch(m);
            if (round_complete(m))
                return 0;
        }
        now = uv_hrtime();
        if (!in_round && now >= until_ns)
            return 0;

        struct pollfd fds[CONFIG_MAX_NODES + 2];
        struct mon_node *owner[CONFIG_MAX_NODES + 2];
        nfds_t nfds = 0;
        fds[nfds] = (struct pollfd){.fd = m->stop_fd, .events = POLLIN};
        owner[nfds++] = NULL;
        uint64_t wake = in_round ? UINT64_MAX : until_ns;
        for (size_t i = 0; i < m->nnodes; i++) {
            struct mon_node *n = &m->nodes[i];
            if (!node_active(n))
                continue;
            if (PQsocket(n->mc.conn) < 0) {
                node_fail(n, PQerrorMessage(n->mc.conn), true);
                continue;
            }
            fds[nfds] = (struct pollfd){.fd = PQsocket(n->mc.conn), .events = n->mc.events};
            owner[nfds++] = n;
            if (n->mc.deadline_ns < wake)
                wake = n->mc.deadline_ns;
        }
        if (in_round && nfds == 1) {
            /* A node that failed just above completes the round; anything else would be a
             * node the round waits for with nothing to wait on. */
            if (round_complete(m))
                return 0;
            log_error("monitor: round %" PRIu64 " cannot complete", m->round + 1);
            abort();
        }
        nfds_t nnode = nfds; /* then the auth_query connection, when it waits for something */
        if (conn_active(&m->aq) && PQsocket(m->aq.conn) >= 0) {
            fds[nfds] = (struct pollfd){.fd = PQsocket(m->aq.conn), .events = m->aq.events};
            owner[nfds++] = NULL;
            if (m->aq.deadline_ns < wake)
                wake = m->aq.deadline_ns;
        } else if (conn_active(&m->aq)) {
            aq_fail_all(m, PQerrorMessage(m->aq.conn));
            continue;
        }
        int timeout = -1;
        if (wake != UINT64_MAX) {
            uint64_t ms = wake <= now ? 0 : (wake - now + NS_PER_MS - 1) / NS_PER_MS;
            timeout = ms > 60000 ? 60000 : (int)ms; /* a later wake-up only loops again */
        }
        int r = poll(fds, nfds, timeout);
        if (r < 0 && errno != EINTR) {
            log_error("monitor: poll: %s", strerror(errno));
            return -1;
        }
        now = uv_hrtime();
        if (r > 0 && fds[0].revents != 0) {
            uint64_t v;
            ssize_t rd = read(m->stop_fd, &v, sizeof(v));
            (void)rd;
        }
        for (nfds_t i = 1; i < nnode; i++)
            node_service(m, owner[i], r > 0 ? fds[i].revents : 0, now);
        if (conn_active(&m->aq))
            aq_service(m, nfds > nnode && r > 0 ? fds[nnode].revents : 0, now);
    }
}

/* One log line for a replica's state change. */
static void log_replica_change(const struct mon_node *n, enum lag_state from, const char *reason)
{
    if (n->fsm.state == LAG_UP)
        log_info("%s back: %s", n->name, reason);
    else if (from == LAG_UP)
        log_warn("%s evicted: %s", n->name, reason);
    else
        log_warn("%s still evicted: %s", n->name, reason);
}

/* The read-your-writes bound from a primary insert position sampled after a session's write
 * returned: a replica that has replayed up to it has replayed that write's commit record.
 * Replay positions are record ends, so the bound need only lie past the commit record's
 * start. The insert position qualifies (the commit ended at or before it; a synchronous
 * commit's end is also covered by the flush position, an asynchronous one's is not), except
 * on an idle primary whose last record ended exactly at a page boundary P: the insert
 * position is then P plus the page header (24 bytes, or 40 at a segment start, e.g. after a
 * WAL switch), while a replica's replay position stops at P, and reads would wait for the
 * primary's next record. So the bound is rounded down to P whenever the insert position is
 * at most 40 bytes into its page: nothing but a page header and the tail of a record begun
 * before P fits there (a record starting after the header is at least 24 bytes long), so the
 * commit began before P and a replica at P or beyond has replayed it. */
static lsn_t commit_bound(lsn_t insert, int64_t block_size)
{
    if (block_size <= 0)
        return insert;
    uint64_t off = insert % (uint64_t)block_size;
    return off <= 40 ? insert - off : insert;
}

static void finish_primary(struct monitor *m, int64_t now_ms)
{
    struct mon_node *p = &m->nodes[m->primary];
    struct node_status *st = &p->status;
    st->answered = p->answered;
    const char *why = NULL;
    if (!p->answered)
        why = p->err[0] != '\0' ? p->err : "connecting";
    else if (p->ans.in_recovery)
        why = "in recovery";
    else if (p->ans.current == LSN_INVALID || p->ans.flush == LSN_INVALID ||
             p->ans.insert == LSN_INVALID)
        why = "no WAL position";
    if (p->answered) {
        st->in_recovery = p->ans.in_recovery;
        st->current_lsn = p->ans.current;
    }
    st->lag_bytes = 0;
    st->lag_ms = 0;
    st->eligible = false;
    if (why == NULL) {
        m->primary_lsn = p->ans.flush;
        m->primary_bound = commit_bound(p->ans.insert, p->ans.block_size);
        m->primary_sampled_ns = (int64_t)p->sent_ns;
        lag_history_add(&m->history, p->ans.flush, (int64_t)(p->sent_ns / NS_PER_MS));
        if (!m->primary_up) {
            m->primary_up = true;
            st->state = LAG_UP;
            st->changed_at_ms = now_ms;
            st->reason[0] = '\0';
            log_info("primary back");
        }
    } else if (m->primary_up) {
        /* The last LSN stays in use for the replicas' arithmetic: it is a lower bound of
         * the primary's position, so lag can only be understated while the primary is out. */
        m->primary_up = false;
        st->state = LAG_DOWN;
        st->changed_at_ms = now_ms;
        copy_text(st->reason, sizeof(st->reason), why);
        log_warn("primary down: %s", why);
    }
}

static void finish_replica(struct monitor *m, struct mon_node *n, int64_t now_ms)
{
    struct node_status *st = &n->status;
    enum lag_state from = n->fsm.state;
    char reason[128], line[512];
    bool changed = false;
    st->answered = n->answered;
    if (n->answered) {
        st->in_recovery = n->ans.in_recovery;
        st->receive_lsn = n->ans.receive;
        st->replay_lsn = n->ans.replay;
        st->last_replay_ts_ms = n->ans.replay_ts_ms;
    }
    lsn_t pos = n->ans.replay != LSN_INVALID ? n->ans.replay : n->ans.receive;
    if (n->answered && n->ans.in_recovery && pos == LSN_INVALID) {
        st->answered = false;
        snprintf(n->err, sizeof(n->err), "no WAL position");
    }

    if (!st->answered) {
        changed = lag_fsm_step(&n->fsm, &m->limits, false, 0, 0, reason, sizeof(reason));
        snprintf(line, sizeof(line), "%s (%s)", reason, n->err[0] != '\0' ? n->err : "connecting");
    } else if (!n->ans.in_recovery) {
        /* Promoted (by a failover we did not drive): it takes writes now, so reads must not
         * go there as to a replica. Its lag against our primary means nothing; the state
         * machine waits until it is a replica again. */
        if (!n->promoted) {
            n->promoted = true;
            st->changed_at_ms = now_ms;
            snprintf(st->reason, sizeof(st->reason), "promoted: no longer in recovery");
            log_warn("%s promoted: no longer in recovery", n->name);
        }
    } else {
        if (n->promoted) {
            n->promoted = false;
            st->changed_at_ms = now_ms;
            snprintf(st->reason, sizeof(st->reason), "in recovery again");
            log_info("%s in recovery again", n->name);
        }
        int64_t lag_bytes = 0, lag_ms = 0;
        if (m->primary_lsn != LSN_INVALID) {
            uint64_t d = lsn_diff(m->primary_lsn, pos);
            lag_bytes = d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
            lag_ms = lag_history_time_lag(&m->history, pos, (int64_t)(n->sent_ns / NS_PER_MS));
        }
        st->lag_bytes = lag_bytes;
        st->lag_ms = lag_ms;
        changed =
            lag_fsm_step(&n->fsm, &m->limits, true, lag_bytes, lag_ms, reason, sizeof(reason));
        snprintf(line, sizeof(line), "%s", reason);
    }
    if (changed) {
        st->changed_at_ms = now_ms;
        copy_text(st->reason, sizeof(st->reason), line);
        log_replica_change(n, from, line);
    }
    st->state = n->fsm.state;
    st->eligible =
        st->state == LAG_UP && st->answered && n->ans.in_recovery && !n->promoted && n->weight > 0;
}

static void round_finish(struct monitor *m)
{
    int64_t now_ms = unix_ms();
    finish_primary(m, now_ms);
    for (size_t i = 0; i < m->nnodes; i++) {
        if (!m->nodes[i].is_primary)
            finish_replica(m, &m->nodes[i], now_ms);
    }
    m->round++;

    struct monitor_snapshot *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        log_error("monitor: out of memory for round %" PRIu64, m->round);
        return;
    }
    s->round = m->round;
    s->primary_sampled_ns = m->primary_sampled_ns;
    s->primary_lsn = m->primary_bound;
    s->primary_up = m->primary_up;
    s->nnodes = m->nnodes;
    for (size_t i = 0; i < m->nnodes; i++)
        s->nodes[i] = m->nodes[i].status;
    /* The loop may not have taken the previous round: this one supersedes it. */
    free(atomic_exchange(&m->mailbox, s));
    uv_async_send(m->wakeup);
}

static void *monitor_main(void *arg)
{
    struct monitor *m = arg;
    thread_name_self("pgsteer-monitor");
    affinity_unpin_self();
    log_debug("monitor: polling %zu nodes every %" PRIu64 " ms", m->nnodes,
              m->interval_ns / NS_PER_MS);
    /* The first round starts at once. Later rounds start one interval after the previous
     * round's scheduled start, so the period does not drift with the rounds' own duration;
     * a round that overran its interval is followed at once, not by a burst of catch-up. */
    uint64_t next = uv_hrtime();
    while (!atomic_load(&m->stop)) {
        round_begin(m, uv_hrtime());
        if (pump(m, true, 0) < 0)
            break;
        round_finish(m);
        next += m->interval_ns;
        uint64_t now = uv_hrtime();
        if (next < now)
            next = now;
        if (pump(m, false, next) < 0)
            break;
    }
    return NULL;
}

struct monitor *monitor_new(const struct config *cfg, uv_async_t *wakeup)
{
    if (cfg == NULL || wakeup == NULL || cfg->nnodes == 0 || cfg->nnodes > CONFIG_MAX_NODES ||
        cfg->primary < 0 || (size_t)cfg->primary >= cfg->nnodes)
        return NULL;
    struct monitor *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->stop_fd = -1;
    pthread_mutex_init(&m->aq_lock, NULL);
    atomic_init(&m->stop, false);
    atomic_init(&m->mailbox, NULL);
    m->wakeup = wakeup;
    m->nnodes = cfg->nnodes;
    m->primary = cfg->primary;
    const struct config_monitor *mc = &cfg->monitor;
    int interval = mc->interval_ms >= MONITOR_MIN_INTERVAL ? mc->interval_ms : MONITOR_MIN_INTERVAL;
    m->interval_ns = (uint64_t)interval * NS_PER_MS;
    m->timeout_ms = mc->connect_timeout_ms > 0 ? mc->connect_timeout_ms : 1000;
    m->timeout_ns = (uint64_t)m->timeout_ms * NS_PER_MS;
    m->limits.max_lag_bytes = mc->max_lag_bytes;
    m->limits.max_lag_ms = mc->max_lag_ms;
    m->limits.recover_checks = mc->recover_checks;
    m->user = dup_or_null(mc->user);
    m->password = dup_or_null(mc->password);
    m->dbname = dup_or_null(mc->dbname);
    const struct config_tls *tc = &cfg->server_tls;
    m->sslmode = config_tls_mode_name(tc->mode);
    bool verify = tc->mode == TLS_MODE_VERIFY_CA || tc->mode == TLS_MODE_VERIFY_FULL;
    m->sslrootcert = verify ? dup_or_null(tc->ca_file) : NULL; /* (libpq verifies with one) */
    m->sslcert = dup_or_null(tc->cert_file);
    m->sslkey = dup_or_null(tc->key_file);
    m->sslcrl = verify ? dup_or_null(tc->crl_file) : NULL;
    m->tls13_only = tc->min_protocol == 13;
    const struct config_auth_query *aq = &cfg->auth_query;
    m->aq_enabled = aq->enabled;
    if (aq->enabled) {
        m->aq_query = dup_or_null(aq->query);
        m->aq_user = dup_or_null(aq->user);
        m->aq_password = dup_or_null(aq->password);
        m->aq_dbname = dup_or_null(aq->dbname);
    }
    bool oom = (mc->user != NULL && m->user == NULL) ||
               (mc->password != NULL && m->password == NULL) ||
               (mc->dbname != NULL && m->dbname == NULL) ||
               (verify && tc->ca_file != NULL && m->sslrootcert == NULL) ||
               (tc->cert_file != NULL && m->sslcert == NULL) ||
               (tc->key_file != NULL && m->sslkey == NULL) ||
               (verify && tc->crl_file != NULL && m->sslcrl == NULL) ||
               (aq->enabled && (m->aq_query == NULL || m->aq_dbname == NULL ||
                                (aq->user != NULL && m->aq_user == NULL) ||
                                (aq->password != NULL && m->aq_password == NULL)));
    /* Every node starts UP: the first round's answers decide, and a node that fails it is
     * evicted (and logged) right away. */
    m->primary_up = true;
    int64_t now_ms = unix_ms();
    for (size_t i = 0; i < m->nnodes; i++) {
        const struct config_node *cn = &cfg->nodes[i];
        struct mon_node *n = &m->nodes[i];
        n->name = dup_or_null(cn->name != NULL ? cn->name : "?");
        n->host = dup_or_null(cn->monitor_host != NULL ? cn->monitor_host : cn->host);
        snprintf(n->port, sizeof(n->port), "%d",
                 cn->monitor_port > 0 ? cn->monitor_port : cn->port);
        n->is_primary = (int)i == cfg->primary;
        n->weight = cn->weight;
        n->fsm = (struct lag_fsm){LAG_UP, 0};
        n->status.state = LAG_UP;
        n->status.changed_at_ms = now_ms;
        if (n->name == NULL || n->host == NULL)
            oom = true;
    }
    lag_history_init(&m->history);
    m->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (oom || m->stop_fd < 0) {
        monitor_free(m);
        return NULL;
    }
    return m;
}

int monitor_start(struct monitor *m)
{
    if (m->started)
        return -EALREADY;
    /* Signals belong to the loop thread: the monitor thread starts with all of them blocked
     * (set here, inherited at creation, so there is no window). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&m->thread, NULL, monitor_main, m);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0)
        return -err;
    m->started = true;
    return 0;
}

struct monitor_snapshot *monitor_take(struct monitor *m)
{
    return atomic_exchange(&m->mailbox, NULL);
}

void monitor_free(struct monitor *m)
{
    if (m == NULL)
        return;
    if (m->started) {
        atomic_store(&m->stop, true);
        uint64_t one = 1;
        ssize_t w = write(m->stop_fd, &one, sizeof(one));
        (void)w;
        pthread_join(m->thread, NULL);
    }
    /* Lookups not answered: the caller asks the monitor that replaces this one. */
    if (m->aq_cur != NULL)
        aq_finish(m, true, AUTH_LOOKUP_STOPPED, "stopped");
    for (struct auth_lookup *l = m->aq_head, *next; l != NULL; l = next) {
        next = l->next;
        aq_answer(l, AUTH_LOOKUP_STOPPED, "stopped");
    }
    conn_drop(&m->aq);
    pthread_mutex_destroy(&m->aq_lock);
    free(m->aq_query);
    free(m->aq_user);
    free(m->aq_password);
    free(m->aq_dbname);
    for (size_t i = 0; i < m->nnodes; i++) {
        node_drop(&m->nodes[i]);
        free(m->nodes[i].name);
        free(m->nodes[i].host);
    }
    free(atomic_exchange(&m->mailbox, NULL));
    if (m->stop_fd >= 0)
        close(m->stop_fd);
    free(m->user);
    free(m->password);
    free(m->dbname);
    free(m->sslrootcert);
    free(m->sslcert);
    free(m->sslkey);
    free(m->sslcrl);
    free(m);
}
