/* SPDX-License-Identifier: MIT */
/* The admin interface: one listener on admin_listen that speaks HTTP/1.1 (status, metrics,
 * probes, reload) and the PostgreSQL protocol (an admin console), told apart by the first byte
 * a connection sends. Also the pure parts: the HTTP request parser, the console command parser
 * and the /status and /metrics builders. */
#include "admin.h"

#include <ctype.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "auth.h"
#include "classify.h"
#include "log.h"
#include "protocol.h"
#include "proxy.h"
#include "proxy_main.h"
#include "tls.h"
#include "version.h"

#define ADMIN_MAX_CONNS           64
#define ADMIN_READ_CHUNK          4096
#define ADMIN_MAX_OUT             (8u << 20) /* a peer that does not read is dropped */
#define ADMIN_HTTP_TIMEOUT_MS     10000      /* whole request, from accept */
#define ADMIN_LINGER_MS           2000       /* after the response: drain the peer's input */
#define ADMIN_PG_LOGIN_TIMEOUT_MS 10000
#define ADMIN_PG_IDLE_TIMEOUT_MS  600000
#define ADMIN_PG_MAX_QUERY        (1u << 20)

/* ---- small text helpers ---- */

static int bputs(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

/* "2026-01-02T03:04:05.678Z", or "" for 0. */
static void format_time(int64_t unix_ms, char *out, size_t cap)
{
    if (unix_ms <= 0) {
        snprintf(out, cap, "%s", "");
        return;
    }
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(unix_ms % 1000));
}

/* ---- HTTP request parsing ---- */

static bool is_tchar(unsigned char ch)
{
    return isalnum(ch) || (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Find the end of the head: "\r\n\r\n" or "\n\n" (or mixed). Returns the head length or 0. */
static size_t head_end(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n')
            continue;
        size_t j = i + 1;
        if (j < n && p[j] == '\r')
            j++;
        if (j < n && p[j] == '\n')
            return j + 1;
    }
    return 0;
}

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t' || (*s)[*n - 1] == '\r'))
        (*n)--;
}

int http_parse_request(const char *p, size_t n, struct http_request *req)
{
    memset(req, 0, sizeof(*req));
    size_t scan = n < HTTP_MAX_REQUEST ? n : HTTP_MAX_REQUEST;
    size_t end = head_end(p, scan);
    if (end == 0) {
        /* Tolerate empty lines before the request line (RFC 9112 2.2) by not counting them
         * specially: they simply make the head look complete early and fail below. */
        return n >= HTTP_MAX_REQUEST ? -2 : 0;
    }
    size_t pos = 0;
    bool first = true, seen_cl = false;
    while (pos < end) {
        const char *line = p + pos;
        const char *nl = memchr(line, '\n', end - pos);
        size_t len = (size_t)(nl - line);
        pos += len + 1;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)line[i];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return -1;
        }
        if (first) {
            first = false;
            /* METHOD SP target SP HTTP/1.x */
            const char *sp1 = memchr(line, ' ', len);
            if (sp1 == NULL || sp1 == line)
                return -1;
            size_t mlen = (size_t)(sp1 - line);
            if (mlen >= sizeof(req->method))
                return -2;
            for (size_t i = 0; i < mlen; i++) {
                if (!is_tchar((unsigned char)line[i]))
                    return -1;
            }
            memcpy(req->method, line, mlen);
            const char *target = sp1 + 1;
            size_t rest = len - mlen - 1;
            const char *sp2 = memchr(target, ' ', rest);
            if (sp2 == NULL || sp2 == target)
                return -1;
            size_t tlen = (size_t)(sp2 - target);
            const char *ver = sp2 + 1;
            size_t vlen = rest - tlen - 1;
            if (vlen != 8 || memcmp(ver, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)ver[7]))
                return -1;
            req->minor_version = ver[7] - '0';
            if (target[0] != '/')
                return -1;
            const char *q = memchr(target, '?', tlen);
            size_t plen = q ? (size_t)(q - target) : tlen;
            if (plen >= sizeof(req->path))
                return -2;
            memcpy(req->path, target, plen);
            continue;
        }
        if (len == 0)
            break; /* the empty line ending the head */
        if (line[0] == ' ' || line[0] == '\t')
            return -1; /* obsolete line folding */
        const char *colon = memchr(line, ':', len);
        if (colon == NULL || colon == line)
            return -1;
        size_t nlen = (size_t)(colon - line);
        for (size_t i = 0; i < nlen; i++) {
            if (!is_tchar((unsigned char)line[i]))
                return -1;
        }
        const char *v = colon + 1;
        size_t vl = len - nlen - 1;
        trim(&v, &vl);
        if (nlen == 13 && strncasecmp(line, "authorization", 13) == 0) {
            if (vl >= sizeof(req->auth))
                return -2;
            memcpy(req->auth, v, vl);
            req->auth[vl] = 0;
            req->has_auth = true;
        } else if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
            if (vl == 0 || vl > 18)
                return -1;
            size_t cl = 0;
            for (size_t i = 0; i < vl; i++) {
                if (!isdigit((unsigned char)v[i]))
                    return -1;
                cl = cl * 10 + (size_t)(v[i] - '0');
            }
            if (seen_cl && cl != req->content_length)
                return -1;
            seen_cl = true;
            req->content_length = cl;
        } else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
            req->chunked = true;
        }
    }
    if (first)
        return -1;
    return (int)end;
}

/* ---- console commands ---- */

/* Matches keyword `kw` at *s (case-insensitive) followed by white space or the end; advances
 * past it and following white space. */
static bool eat_word(const char **s, size_t *n, const char *kw)
{
    size_t k = strlen(kw);
    if (*n < k || strncasecmp(*s, kw, k) != 0)
        return false;
    if (*n > k && !isspace((unsigned char)(*s)[k]))
        return false;
    *s += k;
    *n -= k;
    while (*n > 0 && isspace((unsigned char)**s)) {
        (*s)++;
        (*n)--;
    }
    return true;
}

enum admin_cmd admin_parse_command(const char *sql, size_t len, const char **arg, size_t *arglen)
{
    *arg = NULL;
    *arglen = 0;
    while (len > 0 && isspace((unsigned char)*sql)) {
        sql++;
        len--;
    }
    while (len > 0 && (isspace((unsigned char)sql[len - 1]) || sql[len - 1] == ';'))
        len--;
    if (len == 0)
        return ADMIN_CMD_EMPTY;
    const char *s = sql;
    size_t n = len;
    if (eat_word(&s, &n, "show")) {
        static const struct {
            const char *kw;
            enum admin_cmd cmd;
        } shows[] = {
            {"nodes", ADMIN_CMD_SHOW_NODES},     {"stats", ADMIN_CMD_SHOW_STATS},
            {"clients", ADMIN_CMD_SHOW_CLIENTS}, {"servers", ADMIN_CMD_SHOW_SERVERS},
            {"config", ADMIN_CMD_SHOW_CONFIG},   {"help", ADMIN_CMD_SHOW_HELP},
            {"version", ADMIN_CMD_SHOW_VERSION},
        };
        for (size_t i = 0; i < sizeof(shows) / sizeof(shows[0]); i++) {
            const char *t = s;
            size_t tn = n;
            if (eat_word(&t, &tn, shows[i].kw) && tn == 0)
                return shows[i].cmd;
        }
        return ADMIN_CMD_UNKNOWN;
    }
    if (eat_word(&s, &n, "explain")) {
        if (!eat_word(&s, &n, "route") || n == 0)
            return ADMIN_CMD_UNKNOWN;
        *arg = s;
        *arglen = n;
        return ADMIN_CMD_EXPLAIN_ROUTE;
    }
    const char *t = s;
    size_t tn = n;
    if (eat_word(&t, &tn, "reload") && tn == 0)
        return ADMIN_CMD_RELOAD;
    t = s;
    tn = n;
    if (eat_word(&t, &tn, "pause") && tn == 0)
        return ADMIN_CMD_PAUSE;
    t = s;
    tn = n;
    if (eat_word(&t, &tn, "resume") && tn == 0)
        return ADMIN_CMD_RESUME;
    return ADMIN_CMD_UNKNOWN;
}

/* ---- /status JSON ---- */

static int json_str(struct buf *b, const char *s)
{
    if (buf_append(b, "\"", 1) < 0)
        return -1;
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        int rc;
        switch (*p) {
        case '"':
            rc = bputs(b, "\\\"");
            break;
        case '\\':
            rc = bputs(b, "\\\\");
            break;
        case '\n':
            rc = bputs(b, "\\n");
            break;
        case '\r':
            rc = bputs(b, "\\r");
            break;
        case '\t':
            rc = bputs(b, "\\t");
            break;
        default:
            if (*p < 0x20)
                rc = buf_printf(b, "\\u%04x", *p);
            else
                rc = buf_append(b, p, 1);
        }
        if (rc < 0)
            return -1;
    }
    return buf_append(b, "\"", 1);
}

/* Reasons that send a statement to the primary although it could be a read elsewhere, or
 * that explain why a statement went to the primary: reported together under "primary_reasons". */
static bool reason_is_primary(enum route_reason r)
{
    return r != ROUTE_READ && r != ROUTE_NO_NODE;
}

int admin_write_status_json(struct buf *out, const struct admin_stats *st)
{
    char t1[80], t2[80];
    format_time(st->start_unix_ms, t1, sizeof(t1));
    format_time(st->now_unix_ms, t2, sizeof(t2));
    uint64_t reads = 0, writes = 0, total = 0;
    for (size_t i = 0; i < st->nnodes; i++) {
        reads += st->nodes[i].reads;
        writes += st->nodes[i].writes;
    }
    for (int r = 0; r < ROUTE_REASON_COUNT; r++)
        total += st->route_reasons[r];
    int rc = 0;
    rc |= bputs(out, "{\n  \"version\": ");
    rc |= json_str(out, st->version);
    rc |= buf_printf(out, ",\n  \"started_at\": \"%s\",\n  \"now\": \"%s\",\n", t1, t2);
    rc |= buf_printf(out, "  \"uptime_seconds\": %.3f,\n", st->uptime_seconds);
    rc |= buf_printf(out, "  \"paused\": %s,\n  \"shutting_down\": %s,\n",
                     st->paused ? "true" : "false", st->shutting_down ? "true" : "false");
    rc |= buf_printf(out, "  \"primary_up\": %s,\n  \"monitor_round\": %" PRIu64 ",\n",
                     st->primary_up ? "true" : "false", st->monitor_round);
    rc |= buf_printf(out, "  \"client_connections\": %" PRIu64 ",\n", st->clients);
    rc |= buf_printf(out, "  \"workers\": %d,\n", st->workers);
    rc |= buf_printf(out,
                     "  \"queries\": {\"total\": %" PRIu64 ", \"reads\": %" PRIu64
                     ", \"writes\": %" PRIu64 "},\n",
                     total, reads, writes);
    rc |= bputs(out, "  \"queries_by_reason\": {");
    for (int r = 0; r < ROUTE_REASON_COUNT; r++) {
        rc |= buf_printf(out, "%s\"%s\": %" PRIu64, r ? ", " : "",
                         router_reason_name((enum route_reason)r), st->route_reasons[r]);
    }
    rc |= bputs(out, "},\n  \"primary_reasons\": {");
    bool first = true;
    for (int r = 0; r < ROUTE_REASON_COUNT; r++) {
        if (!reason_is_primary((enum route_reason)r))
            continue;
        rc |= buf_printf(out, "%s\"%s\": %" PRIu64, first ? "" : ", ",
                         router_reason_name((enum route_reason)r), st->route_reasons[r]);
        first = false;
    }
    rc |= buf_printf(out, "},\n  \"read_retries_on_primary\": %" PRIu64 ",\n", st->read_retries);
    rc |= buf_printf(out, "  \"reloads\": {\"success\": %" PRIu64 ", \"failure\": %" PRIu64 "},\n",
                     st->reloads, st->reload_failures);
    rc |= bputs(out, "  \"nodes\": [");
    for (size_t i = 0; i < st->nnodes; i++) {
        const struct admin_node_stats *n = &st->nodes[i];
        char tc[80];
        format_time(n->changed_at_ms, tc, sizeof(tc));
        rc |= bputs(out, i ? ",\n    {\"name\": " : "\n    {\"name\": ");
        rc |= json_str(out, n->name);
        rc |= bputs(out, ", \"role\": ");
        rc |= json_str(out, n->role);
        rc |= bputs(out, ", \"state\": ");
        rc |= json_str(out, n->state);
        rc |= buf_printf(out, ", \"up\": %s, \"eligible\": %s", n->up ? "true" : "false",
                         n->eligible ? "true" : "false");
        if (n->lag_bytes >= 0)
            rc |= buf_printf(out, ", \"lag_bytes\": %" PRId64, n->lag_bytes);
        else
            rc |= bputs(out, ", \"lag_bytes\": null");
        if (n->lag_ms >= 0)
            rc |= buf_printf(out, ", \"lag_ms\": %" PRId64, n->lag_ms);
        else
            rc |= bputs(out, ", \"lag_ms\": null");
        if (n->changed_at_ms > 0)
            rc |= buf_printf(out, ", \"state_changed_at\": \"%s\"", tc);
        else
            rc |= bputs(out, ", \"state_changed_at\": null");
        rc |= bputs(out, ", \"state_reason\": ");
        rc |= json_str(out, n->reason);
        rc |= buf_printf(out,
                         ", \"reads\": %" PRIu64 ", \"writes\": %" PRIu64 ", \"backends\": %" PRIu64
                         ", \"idle_backends\": %" PRIu64 ", \"backends_opened\": %" PRIu64
                         ", \"backends_reused\": %" PRIu64 ", \"evictions\": %" PRIu64 "}",
                         n->reads, n->writes, n->backends, n->idle_backends, n->backends_opened,
                         n->backends_reused, n->evictions);
    }
    rc |= bputs(out, st->nnodes ? "\n  ]\n}\n" : "]\n}\n");
    return rc ? -1 : 0;
}

/* ---- /metrics ---- */

/* A label value in the exposition format: backslash, double quote and newline escaped. */
static int prom_label(struct buf *b, const char *s)
{
    for (const char *p = s ? s : ""; *p; p++) {
        int rc;
        if (*p == '\\')
            rc = bputs(b, "\\\\");
        else if (*p == '"')
            rc = bputs(b, "\\\"");
        else if (*p == '\n')
            rc = bputs(b, "\\n");
        else
            rc = buf_append(b, p, 1);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static int prom_family(struct buf *b, const char *name, const char *type, const char *help)
{
    return buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A metric family of one sample without labels: name value */
static int prom_u64(struct buf *b, const char *name, const char *type, const char *help,
                    uint64_t value)
{
    return prom_family(b, name, type, help) | buf_printf(b, "%s %" PRIu64 "\n", name, value);
}

/* One per-node sample: name{node="..."[,extra]} value */
static int prom_node(struct buf *b, const char *name, const struct admin_node_stats *n,
                     const char *extra, const char *value)
{
    int rc = buf_printf(b, "%s{node=\"", name);
    rc |= prom_label(b, n->name);
    rc |= buf_printf(b, "\"%s} %s\n", extra ? extra : "", value);
    return rc;
}

static const char *u64s(char *tmp, uint64_t v)
{
    snprintf(tmp, 24, "%" PRIu64, v);
    return tmp;
}

/* The per-node counts exported as they are: a uint64_t field of struct admin_node_stats each. */
struct node_count {
    const char *name, *type, *help;
    size_t field; /* offsetof(struct admin_node_stats, ...) */
};
static const struct node_count node_counts[] = {
    {"pgsteer_node_reads_total", "counter", "Routing units sent to the node as reads.",
     offsetof(struct admin_node_stats, reads)},
    {"pgsteer_node_writes_total", "counter",
     "Routing units sent to the node for any reason other than a read.",
     offsetof(struct admin_node_stats, writes)},
    {"pgsteer_node_backend_connections", "gauge",
     "Connections from pgsteer to the node open now for clients.",
     offsetof(struct admin_node_stats, backends)},
    {"pgsteer_node_idle_backend_connections", "gauge",
     "Connections from pgsteer to the node kept for reuse, without a client.",
     offsetof(struct admin_node_stats, idle_backends)},
    {"pgsteer_node_backends_opened_total", "counter",
     "Connections pgsteer opened to the node (each a login).",
     offsetof(struct admin_node_stats, backends_opened)},
    {"pgsteer_node_backends_reused_total", "counter",
     "Kept connections to the node handed to a new client instead of a login.",
     offsetof(struct admin_node_stats, backends_reused)},
    {"pgsteer_node_evictions_total", "counter",
     "Times the monitor took the node out of service (up to lagging or down).",
     offsetof(struct admin_node_stats, evictions)},
};

int admin_write_metrics(struct buf *out, const struct admin_stats *st)
{
    char v[64];
    int rc = 0;
    rc |= prom_family(out, "pgsteer_info", "gauge", "pgsteer build information (always 1).");
    rc |= bputs(out, "pgsteer_info{version=\"");
    rc |= prom_label(out, st->version);
    rc |= bputs(out, "\"} 1\n");
    rc |= prom_family(out, "pgsteer_start_time_seconds", "gauge",
                      "Start time of the process since the Unix epoch, in seconds.");
    rc |= buf_printf(out, "pgsteer_start_time_seconds %.3f\n", (double)st->start_unix_ms / 1000.0);
    rc |= prom_family(out, "pgsteer_uptime_seconds", "gauge", "Seconds since pgsteer started.");
    rc |= buf_printf(out, "pgsteer_uptime_seconds %.3f\n", st->uptime_seconds);
    rc |= prom_u64(out, "pgsteer_client_connections", "gauge", "Client connections open now.",
                   st->clients);
    rc |= prom_family(out, "pgsteer_workers", "gauge", "Event-loop worker threads.");
    rc |= buf_printf(out, "pgsteer_workers %d\n", st->workers);
    rc |= prom_family(out, "pgsteer_paused", "gauge",
                      "1 while new statements are held by PAUSE, else 0.");
    rc |= buf_printf(out, "pgsteer_paused %d\n", st->paused ? 1 : 0);
    rc |= prom_family(out, "pgsteer_primary_up", "gauge",
                      "1 when the monitor reaches the primary, else 0.");
    rc |= buf_printf(out, "pgsteer_primary_up %d\n", st->primary_up ? 1 : 0);
    rc |= prom_family(out, "pgsteer_queries_total", "counter",
                      "Routing units (a Query or an extended batch) by the reason for the node "
                      "chosen.");
    for (int r = 0; r < ROUTE_REASON_COUNT; r++) {
        rc |= buf_printf(out, "pgsteer_queries_total{reason=\"%s\"} %" PRIu64 "\n",
                         router_reason_name((enum route_reason)r), st->route_reasons[r]);
    }
    rc |= prom_family(out, "pgsteer_proxy_seconds", "histogram",
                      "Time pgsteer itself spends: per unit from a client (classify, route, "
                      "queue) and per read of answers from a node (match, forward).");
    const struct latency_hist *hists[2] = {&st->lat_request, &st->lat_response};
    static const char *const dirs[2] = {"request", "response"};
    for (int d = 0; d < 2; d++) {
        uint64_t cum = 0;
        for (int i = 0; i < LATENCY_BUCKETS; i++) {
            cum += hists[d]->buckets[i];
            if (latency_bounds_ns[i] == UINT64_MAX)
                rc |= buf_printf(out,
                                 "pgsteer_proxy_seconds_bucket{direction=\"%s\",le=\"+Inf\"} "
                                 "%" PRIu64 "\n",
                                 dirs[d], cum);
            else
                rc |= buf_printf(out,
                                 "pgsteer_proxy_seconds_bucket{direction=\"%s\",le=\"%g\"} "
                                 "%" PRIu64 "\n",
                                 dirs[d], (double)latency_bounds_ns[i] / 1e9, cum);
        }
        rc |= buf_printf(out, "pgsteer_proxy_seconds_sum{direction=\"%s\"} %.9f\n", dirs[d],
                         (double)hists[d]->sum_ns / 1e9);
        rc |= buf_printf(out, "pgsteer_proxy_seconds_count{direction=\"%s\"} %" PRIu64 "\n",
                         dirs[d], hists[d]->count);
    }
    /* The counters and gauges of one sample each: uint64_t fields of struct admin_stats. */
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } scalars[] = {
        {"pgsteer_read_retries_total", "counter",
         "Reads run again: on the primary when a replica refused them (25006, 40001), "
         "elsewhere when their replica could not be reached.",
         offsetof(struct admin_stats, read_retries)},
        {"pgsteer_client_tls_connections", "gauge", "Client connections over TLS (client_tls).",
         offsetof(struct admin_stats, tls_clients)},
        {"pgsteer_client_tls_handshake_failures_total", "counter",
         "Clients' TLS handshakes that failed (a certificate refused, bytes that "
         "are not TLS, direct TLS without ALPN postgresql).",
         offsetof(struct admin_stats, tls_failures)},
        {"pgsteer_client_login_timeouts_total", "counter",
         "Clients closed for not logging in within client_login_timeout_ms.",
         offsetof(struct admin_stats, login_timeouts)},
        {"pgsteer_auth_query_lookups_total", "counter",
         "Logins whose secret auth_query looked up on the primary (not found in its cache).",
         offsetof(struct admin_stats, auth_lookups)},
        {"pgsteer_auth_query_errors_total", "counter",
         "Lookups of auth_query that failed (the query failed, the primary could not be "
         "reached): their clients could not log in.",
         offsetof(struct admin_stats, auth_lookup_errors)},
        {"pgsteer_multiplexed_reads_total", "counter",
         "Reads sent over a backend shared by several clients (multiplex_reads).",
         offsetof(struct admin_stats, multiplexed)},
        {"pgsteer_multiplex_stalls_total", "counter",
         "Reads that could have shared a backend but used the session's own, since "
         "the shared one had answered nothing for multiplex_stall_ms.",
         offsetof(struct admin_stats, multiplex_stalls)},
        {"pgsteer_unnamed_statements_prepared_total", "counter",
         "Texts of clients' unnamed statements a backend prepared under a name of "
         "its own to keep (cache_unnamed_statements).",
         offsetof(struct admin_stats, unnamed_prepared)},
        {"pgsteer_unnamed_statements_reused_total", "counter",
         "Parses of a client's unnamed statement that a backend answered with a "
         "statement it kept prepared: the node did not parse or plan the text "
         "again.",
         offsetof(struct admin_stats, unnamed_reused)},
        {"pgsteer_simple_queries_prepared_total", "counter",
         "Texts of simple-protocol queries, their integer literals made parameters, "
         "that a backend prepared to keep (prepare_simple_queries).",
         offsetof(struct admin_stats, simple_prepared)},
        {"pgsteer_simple_queries_reused_total", "counter",
         "Simple-protocol queries run as a statement their backend kept prepared: "
         "the node did not parse or plan the text again.",
         offsetof(struct admin_stats, simple_reused)},
        {"pgsteer_begins_deferred_total", "counter",
         "BEGINs answered by pgsteer at once and sent to the primary ahead of the "
         "transaction's first statement (defer_begin).",
         offsetof(struct admin_stats, begins_deferred)},
        {"pgsteer_busy_poll_reads_total", "counter",
         "Reads that arrived while a worker polled instead of sleeping "
         "(busy_poll_us).",
         offsetof(struct admin_stats, busy_poll_reads)},
        {"pgsteer_busy_poll_sleeps_total", "counter",
         "Times a worker polled for busy_poll_us without input and went to sleep.",
         offsetof(struct admin_stats, busy_poll_sleeps)},
    };
    for (size_t i = 0; i < sizeof(scalars) / sizeof(scalars[0]); i++) {
        uint64_t v;
        memcpy(&v, (const char *)st + scalars[i].off, sizeof(v));
        rc |= prom_u64(out, scalars[i].name, scalars[i].type, scalars[i].help, v);
    }
    rc |= prom_family(out, "pgsteer_config_reloads_total", "counter",
                      "Configuration reloads by result.");
    rc |= buf_printf(out, "pgsteer_config_reloads_total{result=\"success\"} %" PRIu64 "\n",
                     st->reloads);
    rc |= buf_printf(out, "pgsteer_config_reloads_total{result=\"failure\"} %" PRIu64 "\n",
                     st->reload_failures);

    rc |= prom_family(out, "pgsteer_node_info", "gauge", "Configured nodes and their role (1).");
    for (size_t i = 0; i < st->nnodes; i++) {
        char extra[64];
        snprintf(extra, sizeof(extra), ",role=\"%s\"", st->nodes[i].role);
        rc |= prom_node(out, "pgsteer_node_info", &st->nodes[i], extra, "1");
    }
    rc |= prom_family(out, "pgsteer_node_up", "gauge",
                      "1 when the node answered the monitor's last check, else 0.");
    for (size_t i = 0; i < st->nnodes; i++)
        rc |= prom_node(out, "pgsteer_node_up", &st->nodes[i], NULL, st->nodes[i].up ? "1" : "0");
    rc |= prom_family(out, "pgsteer_node_eligible", "gauge",
                      "1 when reads may go to the node now (a replica that is up, within the lag "
                      "limits and weighted above 0), else 0.");
    for (size_t i = 0; i < st->nnodes; i++) {
        rc |= prom_node(out, "pgsteer_node_eligible", &st->nodes[i], NULL,
                        st->nodes[i].eligible ? "1" : "0");
    }
    rc |= prom_family(out, "pgsteer_node_state", "gauge",
                      "The monitor's state of the node: 1 for the current state, else 0.");
    static const char *const states[] = {"up", "lagging", "down"};
    for (size_t i = 0; i < st->nnodes; i++) {
        for (size_t k = 0; k < 3; k++) {
            char extra[40];
            snprintf(extra, sizeof(extra), ",state=\"%s\"", states[k]);
            rc |= prom_node(out, "pgsteer_node_state", &st->nodes[i], extra,
                            strcmp(st->nodes[i].state, states[k]) == 0 ? "1" : "0");
        }
    }
    rc |= prom_family(out, "pgsteer_node_lag_bytes", "gauge",
                      "Replay lag behind the primary in bytes of WAL (0 for the primary).");
    for (size_t i = 0; i < st->nnodes; i++) {
        if (st->nodes[i].lag_bytes < 0)
            continue;
        snprintf(v, sizeof(v), "%" PRId64, st->nodes[i].lag_bytes);
        rc |= prom_node(out, "pgsteer_node_lag_bytes", &st->nodes[i], NULL, v);
    }
    rc |= prom_family(out, "pgsteer_node_lag_seconds", "gauge",
                      "Replay lag behind the primary in seconds (0 for the primary).");
    for (size_t i = 0; i < st->nnodes; i++) {
        if (st->nodes[i].lag_ms < 0)
            continue;
        snprintf(v, sizeof(v), "%.3f", (double)st->nodes[i].lag_ms / 1000.0);
        rc |= prom_node(out, "pgsteer_node_lag_seconds", &st->nodes[i], NULL, v);
    }
    rc |= prom_family(out, "pgsteer_node_state_changed_timestamp_seconds", "gauge",
                      "When the node last changed state, since the Unix epoch, in seconds.");
    for (size_t i = 0; i < st->nnodes; i++) {
        if (st->nodes[i].changed_at_ms <= 0)
            continue;
        snprintf(v, sizeof(v), "%.3f", (double)st->nodes[i].changed_at_ms / 1000.0);
        rc |=
            prom_node(out, "pgsteer_node_state_changed_timestamp_seconds", &st->nodes[i], NULL, v);
    }
    for (size_t k = 0; k < sizeof(node_counts) / sizeof(node_counts[0]); k++) {
        const struct node_count *f = &node_counts[k];
        rc |= prom_family(out, f->name, f->type, f->help);
        for (size_t i = 0; i < st->nnodes; i++) {
            uint64_t x;
            memcpy(&x, (const char *)&st->nodes[i] + f->field, sizeof(x));
            rc |= prom_node(out, f->name, &st->nodes[i], NULL, u64s(v, x));
        }
    }
    return rc ? -1 : 0;
}

bool admin_ready(const struct admin_stats *st, char *reason, size_t cap)
{
    if (st->shutting_down) {
        snprintf(reason, cap, "shutting down");
        return false;
    }
    if (!st->have_snapshot) {
        snprintf(reason, cap, "the monitor has not completed a round yet");
        return false;
    }
    if (!st->primary_up) {
        snprintf(reason, cap, "primary %s is not reachable%s%s", st->primary_name,
                 st->primary_reason && st->primary_reason[0] ? ": " : "",
                 st->primary_reason ? st->primary_reason : "");
        return false;
    }
    snprintf(reason, cap, "primary %s is up", st->primary_name);
    return true;
}

/* ---- collecting ---- */

static const char *state_name(enum lag_state s)
{
    switch (s) {
    case LAG_UP:
        return "up";
    case LAG_LAGGING:
        return "lagging";
    case LAG_DOWN:
        return "down";
    }
    return "unknown";
}

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pause_worker(struct proxy *px, void *arg)
{
    (void)arg;
    px->paused = true;
}

/* Add one worker's counters to the admin_stats in arg (a proxy_fn, run on that worker). */
static void collect_worker(struct proxy *px, void *arg)
{
    struct admin_stats *st = arg;
    st->clients += px->nclients;
    for (int i = 0; i < ROUTE_REASON_COUNT; i++)
        st->route_reasons[i] += px->route_reasons[i];
    st->read_retries += px->read_retries;
    st->tls_clients += px->tls_clients;
    st->tls_failures += px->tls_failures;
    st->login_timeouts += px->login_timeouts;
    st->auth_lookups += px->auth_lookups;
    st->auth_lookup_errors += px->auth_lookup_errors;
    st->multiplexed += px->multiplexed;
    st->multiplex_stalls += px->multiplex_stalls;
    st->unnamed_prepared += px->unnamed_prepared;
    st->unnamed_reused += px->unnamed_reused;
    st->simple_prepared += px->simple_prepared;
    st->simple_reused += px->simple_reused;
    st->begins_deferred += px->begins_deferred;
    st->busy_poll_reads += px->busy_poll_reads;
    st->busy_poll_sleeps += px->busy_poll_sleeps;
    for (int i = 0; i < LATENCY_BUCKETS; i++) {
        st->lat_request.buckets[i] += px->lat_request.buckets[i];
        st->lat_response.buckets[i] += px->lat_response.buckets[i];
    }
    st->lat_request.count += px->lat_request.count;
    st->lat_request.sum_ns += px->lat_request.sum_ns;
    st->lat_response.count += px->lat_response.count;
    st->lat_response.sum_ns += px->lat_response.sum_ns;
    for (size_t i = 0; i < CONFIG_MAX_NODES; i++) {
        st->node_reads[i] += px->nodes[i].reads;
        st->node_writes[i] += px->nodes[i].writes;
        st->node_backends[i] += px->nodes[i].backends;
        st->node_idle[i] += px->nodes[i].idle;
        st->node_opened[i] += px->nodes[i].opened;
        st->node_reused[i] += px->nodes[i].reused;
    }
}

void admin_collect(struct proxy *px, struct admin_stats *st)
{
    const struct config *cfg = px->cfg;
    const struct monitor_snapshot *snap = px->snap;
    memset(st, 0, sizeof(*st));
    st->version = PGSTEER_VERSION;
    st->now_unix_ms = unix_ms();
    st->start_unix_ms = px->start_unix_ms;
    st->uptime_seconds = (double)(uv_hrtime() - px->start_ns) / 1e9;
    st->workers = px->shared->nworkers;
    proxy_each(px, collect_worker, st);
    st->paused = px->paused;
    st->shutting_down = px->shutting_down;
    st->have_snapshot = snap != NULL;
    st->primary_up = snap != NULL && snap->primary_up;
    st->monitor_round = snap ? snap->round : 0;
    st->primary_name = cfg->nodes[cfg->primary].name;
    st->primary_reason =
        snap && (size_t)cfg->primary < snap->nnodes ? snap->nodes[cfg->primary].reason : "";
    st->reloads = px->reloads;
    st->reload_failures = px->reload_failures;
    for (size_t i = 0; i < cfg->nnodes; i++) {
        if (px->nodes[i].removed)
            continue;
        struct admin_node_stats *n = &st->nodes[st->nnodes++];
        n->name = cfg->nodes[i].name;
        n->role = (int)i == cfg->primary ? "primary" : "replica";
        n->reads = st->node_reads[i];
        n->writes = st->node_writes[i];
        n->backends = st->node_backends[i];
        n->idle_backends = st->node_idle[i];
        n->backends_opened = st->node_opened[i];
        n->backends_reused = st->node_reused[i];
        n->evictions = px->nodes[i].evictions; /* counted by worker 0 only */
        if (snap == NULL || i >= snap->nnodes) {
            n->state = "unknown";
            n->lag_bytes = n->lag_ms = -1;
            n->reason = "";
            continue;
        }
        const struct node_status *ns = &snap->nodes[i];
        n->state = state_name(ns->state);
        if ((int)i == cfg->primary) {
            n->up = snap->primary_up;
            n->state = snap->primary_up ? "up" : "down";
        } else {
            n->up = ns->answered;
        }
        n->eligible = ns->eligible && cfg->nodes[i].role == NODE_REPLICA &&
                      cfg->nodes[i].weight > 0 &&
                      px->nodes[i].failed_until_ms <= (int64_t)(uv_hrtime() / 1000000);
        n->lag_bytes = ns->lag_bytes;
        n->lag_ms = ns->lag_ms;
        n->changed_at_ms = ns->changed_at_ms;
        n->reason = ns->reason;
    }
}

/* ---- connections ---- */

enum conn_kind { CONN_NEW = 0, CONN_HTTP, CONN_PG };
enum pg_state { PG_STARTUP = 0, PG_AUTH, PG_READY };
enum admin_tls_phase { ATLS_NONE = 0, ATLS_HANDSHAKE, ATLS_UP, ATLS_CLOSED };

struct admin_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    struct admin *a;
    struct admin_conn *prev, *next;
    enum conn_kind kind;
    enum pg_state pg;
    struct buf in, out, writing;
    /* admin_tls: the connection's TLS once asked for (an SSLRequest answered 'S', or a TLS
     * handshake as the first bytes); tls_in holds the ciphertext read, tls_out the ciphertext
     * to send, and in and out above the plaintext. ATLS_CLOSED: close_notify queued. */
    struct tls_conn *tls;
    struct buf tls_in, tls_out;
    enum admin_tls_phase tls_phase;
    bool write_pending;
    bool closing;
    bool lingering; /* response sent, write side shut down: input is read and dropped */
    bool ext_skip;  /* extended-protocol message refused: drop messages until Sync */
    int handles;
    char *user;
    char *password; /* the configured password, during login only */
    struct scram_server *scram;
    uint8_t salt[4];
    uint32_t id;
};

struct admin {
    struct proxy *px;
    uv_tcp_t listener;
    bool listening;
    struct admin_conn *conns;
    size_t nconns;
    uint32_t next_id;
};

static void conn_free_cb(uv_handle_t *h)
{
    struct admin_conn *c = h->data;
    if (--c->handles > 0)
        return;
    buf_destroy(&c->in);
    buf_destroy(&c->out);
    buf_destroy(&c->writing);
    buf_destroy(&c->tls_in);
    buf_destroy(&c->tls_out);
    tls_conn_free(c->tls);
    free(c->user);
    free(c->password);
    free(c->scram);
    free(c);
}

static void conn_close(struct admin_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    struct admin *a = c->a;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns--;
    uv_close((uv_handle_t *)&c->timer, conn_free_cb);
    uv_close((uv_handle_t *)&c->tcp, conn_free_cb);
}

static void conn_timeout_cb(uv_timer_t *t)
{
    struct admin_conn *c = t->data;
    if (!c->lingering)
        log_info("admin connection %u: timed out", c->id);
    conn_close(c);
}

static void conn_flush(struct admin_conn *c);

static void conn_shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
    /* Nothing to do: the linger timer or the peer's EOF closes the connection. */
}

static void conn_write_cb(uv_write_t *req, int status)
{
    struct admin_conn *c = req->data;
    c->write_pending = false;
    buf_reset(&c->writing);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    conn_flush(c);
}

/* admin_tls: encrypt what waits in out into tls_out, and once the answer is complete
 * (lingering) add TLS's close_notify, so that the peer sees a clean end. Returns 0, or -1 with
 * c closed. */
static int conn_tls_seal(struct admin_conn *c)
{
    if (c->tls_phase == ATLS_UP && buf_avail(&c->out) > 0) {
        if (tls_write(c->tls, buf_head(&c->out), buf_avail(&c->out)) < 0)
            goto fail;
        buf_reset(&c->out);
    }
    if (c->tls_phase == ATLS_UP && c->lingering) {
        tls_close_notify(c->tls);
        c->tls_phase = ATLS_CLOSED;
    }
    if (tls_take_output(c->tls, &c->tls_out) < 0)
        goto fail;
    return 0;
fail:
    log_info("admin connection %u: %s", c->id,
             tls_error(c->tls)[0] ? tls_error(c->tls) : "out of memory");
    conn_close(c);
    return -1;
}

static void conn_flush(struct admin_conn *c)
{
    if (c->closing || c->write_pending)
        return;
    struct buf *src = &c->out;
    if (c->tls_phase != ATLS_NONE) {
        if (conn_tls_seal(c) < 0)
            return;
        src = &c->tls_out;
    }
    if (buf_avail(src) == 0) {
        if (c->lingering &&
            uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, conn_shutdown_cb) < 0)
            conn_close(c);
        return;
    }
    struct buf tmp = c->writing;
    c->writing = *src;
    *src = tmp;
    uv_buf_t ub = uv_buf_init((char *)buf_head(&c->writing), (unsigned)buf_avail(&c->writing));
    c->write_req.data = c;
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &ub, 1, conn_write_cb) < 0) {
        conn_close(c);
        return;
    }
    c->write_pending = true;
}

/* Send what is queued, then shut down the write side and drop further input; the connection
 * closes at the peer's EOF or after ADMIN_LINGER_MS. Closing at once could turn unread input
 * into a reset that destroys the response before the peer reads it. */
static void conn_finish(struct admin_conn *c)
{
    if (c->closing || c->lingering)
        return;
    c->lingering = true;
    buf_reset(&c->in);
    uv_timer_start(&c->timer, conn_timeout_cb, ADMIN_LINGER_MS, 0);
    conn_flush(c);
}

/* ---- HTTP ---- */

static const char *status_text(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    }
    return "Unknown";
}

static void http_respond(struct admin_conn *c, int code, const char *ctype, const char *extra,
                         const char *body, size_t len, bool head_only)
{
    int rc = buf_printf(&c->out,
                        "HTTP/1.1 %d %s\r\nServer: pgsteer/%s\r\nContent-Type: %s\r\n"
                        "Content-Length: %zu\r\nCache-Control: no-store\r\nConnection: close\r\n"
                        "%s\r\n",
                        code, status_text(code), PGSTEER_VERSION, ctype, len, extra ? extra : "");
    if (rc == 0 && !head_only)
        rc = buf_append(&c->out, body, len);
    if (rc < 0) {
        conn_close(c);
        return;
    }
    conn_finish(c);
}

static void http_text(struct admin_conn *c, int code, const char *extra, const char *text,
                      bool head_only)
{
    http_respond(c, code, "text/plain; charset=utf-8", extra, text, strlen(text), head_only);
}

static bool token_ok(const struct config *cfg, const struct http_request *req)
{
    if (cfg->admin_token == NULL)
        return true;
    if (!req->has_auth || strncasecmp(req->auth, "bearer ", 7) != 0)
        return false;
    const char *t = req->auth + 7;
    while (*t == ' ')
        t++;
    size_t want = strlen(cfg->admin_token);
    return strlen(t) == want && auth_equal(t, cfg->admin_token, want);
}

static void http_handle(struct admin_conn *c, const struct http_request *req)
{
    struct proxy *px = c->a->px;
    bool get = strcmp(req->method, "GET") == 0;
    bool head = strcmp(req->method, "HEAD") == 0;
    const char *p = req->path;
    bool probe = strcmp(p, "/healthz") == 0 || strcmp(p, "/readyz") == 0;
    bool known = probe || strcmp(p, "/status") == 0 || strcmp(p, "/metrics") == 0 ||
                 strcmp(p, "/reload") == 0;
    if (!known) {
        http_text(c, 404, NULL, "not found\n", head);
        return;
    }
    /* The probes say nothing secret and Kubernetes probes cannot easily carry a token. */
    if (!probe && !token_ok(px->cfg, req)) {
        http_text(c, 401, "WWW-Authenticate: Bearer realm=\"pgsteer\"\r\n",
                  "a valid admin token is required\n", head);
        return;
    }
    if (strcmp(p, "/reload") == 0) {
        if (strcmp(req->method, "POST") != 0) {
            http_text(c, 405, "Allow: POST\r\n", "use POST /reload\n", head);
            return;
        }
        char *errors = NULL;
        if (proxy_reload(px, &errors) == 0) {
            http_text(c, 200, NULL, "configuration reloaded\n", false);
        } else {
            struct buf b;
            buf_init(&b);
            buf_printf(&b, "configuration not reloaded; the old one is kept:\n%s",
                       errors ? errors : "unknown error\n");
            http_respond(c, 500, "text/plain; charset=utf-8", NULL, buf_head(&b), buf_avail(&b),
                         false);
            buf_destroy(&b);
        }
        free(errors);
        return;
    }
    if (!get && !head) {
        http_text(c, 405, "Allow: GET, HEAD\r\n", "method not allowed\n", false);
        return;
    }
    if (strcmp(p, "/healthz") == 0) {
        http_text(c, 200, NULL, "ok\n", head);
        return;
    }
    struct admin_stats *st = malloc(sizeof(*st));
    if (st == NULL) {
        conn_close(c);
        return;
    }
    admin_collect(px, st);
    if (strcmp(p, "/readyz") == 0) {
        char reason[300], body[320];
        bool ok = admin_ready(st, reason, sizeof(reason));
        snprintf(body, sizeof(body), "%s: %s\n", ok ? "ready" : "not ready", reason);
        http_text(c, ok ? 200 : 503, NULL, body, head);
        free(st);
        return;
    }
    struct buf b;
    buf_init(&b);
    int rc;
    const char *ctype;
    if (strcmp(p, "/status") == 0) {
        rc = admin_write_status_json(&b, st);
        ctype = "application/json";
    } else {
        rc = admin_write_metrics(&b, st);
        ctype = "text/plain; version=0.0.4; charset=utf-8";
    }
    free(st);
    if (rc < 0)
        http_text(c, 500, NULL, "out of memory\n", head);
    else
        http_respond(c, 200, ctype, NULL, buf_head(&b), buf_avail(&b), head);
    buf_destroy(&b);
}

static void http_input(struct admin_conn *c)
{
    struct http_request req;
    int n = http_parse_request(buf_head(&c->in), buf_avail(&c->in), &req);
    if (n == 0)
        return;
    if (n < 0) {
        http_text(c, 400, NULL, n == -2 ? "request too large\n" : "malformed request\n", false);
        return;
    }
    if (req.chunked || req.content_length > HTTP_MAX_BODY) {
        http_text(c, 400, NULL, "request body not accepted\n", false);
        return;
    }
    if (buf_avail(&c->in) < (size_t)n + req.content_length)
        return; /* wait for the body, which is ignored */
    http_handle(c, &req);
}

/* ---- PostgreSQL console ---- */

static void pg_error(struct admin_conn *c, const char *severity, const char *sqlstate,
                     const char *msg)
{
    proto_write_ErrorResponse(&c->out, severity, sqlstate, msg);
}

static void pg_fatal(struct admin_conn *c, const char *sqlstate, const char *msg)
{
    pg_error(c, "FATAL", sqlstate, msg);
    conn_finish(c);
}

/* A result set: column names, then rows of text values (NULL allowed). */
static int pg_rowdesc(struct buf *out, const char *const *cols, size_t ncols)
{
    size_t s = proto_begin(out, BE_ROW_DESCRIPTION);
    int rc = proto_put_i16(out, (int16_t)ncols);
    for (size_t i = 0; i < ncols && rc == 0; i++) {
        rc |= proto_put_str(out, cols[i]);
        rc |= proto_put_i32(out, 0);
        rc |= proto_put_i16(out, 0);
        rc |= proto_put_i32(out, 25); /* text */
        rc |= proto_put_i16(out, -1);
        rc |= proto_put_i32(out, -1);
        rc |= proto_put_i16(out, 0);
    }
    if (rc < 0)
        return -1;
    return proto_end(out, s);
}

static int pg_row(struct buf *out, const char *const *vals, size_t n)
{
    size_t s = proto_begin(out, BE_DATA_ROW);
    int rc = proto_put_i16(out, (int16_t)n);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (vals[i] == NULL) {
            rc |= proto_put_i32(out, -1);
            continue;
        }
        size_t len = strlen(vals[i]);
        rc |= proto_put_i32(out, (int32_t)len);
        rc |= proto_put_bytes(out, vals[i], len);
    }
    if (rc < 0)
        return -1;
    return proto_end(out, s);
}

static void pg_complete_rows(struct admin_conn *c, size_t rows)
{
    /* "SELECT n": drivers report the row count from it. */
    char tag[40];
    snprintf(tag, sizeof(tag), "SELECT %zu", rows);
    proto_write_CommandComplete(&c->out, tag);
}

#define NCOLS(a) (sizeof(a) / sizeof((a)[0]))

static void show_nodes(struct admin_conn *c)
{
    static const char *const cols[] = {
        "node",
        "role",
        "state",
        "eligible",
        "lag_bytes",
        "lag_ms",
        "reads",
        "writes",
        "backends",
        "idle_backends",
        "backends_opened",
        "backends_reused",
        "evictions",
        "state_changed_at",
        "state_reason",
    };
    struct admin_stats *st = malloc(sizeof(*st));
    if (st == NULL)
        return;
    admin_collect(c->a->px, st);
    pg_rowdesc(&c->out, cols, NCOLS(cols));
    for (size_t i = 0; i < st->nnodes; i++) {
        const struct admin_node_stats *n = &st->nodes[i];
        char lb[24], lm[24], r[24], w[24], b[24], ib[24], bo[24], br[24], e[24], t[80];
        snprintf(lb, sizeof(lb), "%" PRId64, n->lag_bytes);
        snprintf(lm, sizeof(lm), "%" PRId64, n->lag_ms);
        format_time(n->changed_at_ms, t, sizeof(t));
        const char *vals[] = {n->name,
                              n->role,
                              n->state,
                              n->eligible ? "yes" : "no",
                              n->lag_bytes >= 0 ? lb : NULL,
                              n->lag_ms >= 0 ? lm : NULL,
                              u64s(r, n->reads),
                              u64s(w, n->writes),
                              u64s(b, n->backends),
                              u64s(ib, n->idle_backends),
                              u64s(bo, n->backends_opened),
                              u64s(br, n->backends_reused),
                              u64s(e, n->evictions),
                              n->changed_at_ms > 0 ? t : NULL,
                              n->reason};
        pg_row(&c->out, vals, NCOLS(vals));
    }
    pg_complete_rows(c, st->nnodes);
    free(st);
}

static void kv_row(struct admin_conn *c, const char *k, const char *v)
{
    const char *vals[] = {k, v};
    pg_row(&c->out, vals, 2);
}

static void kv_int(struct admin_conn *c, const char *k, int v)
{
    char text[16];
    snprintf(text, sizeof(text), "%d", v);
    kv_row(c, k, text);
}

static void show_stats(struct admin_conn *c)
{
    static const char *const cols[] = {"stat", "value"};
    struct admin_stats *st = malloc(sizeof(*st));
    if (st == NULL)
        return;
    admin_collect(c->a->px, st);
    pg_rowdesc(&c->out, cols, 2);
    char v[64];
    size_t rows = 0;
    uint64_t total = 0;
    for (int r = 0; r < ROUTE_REASON_COUNT; r++)
        total += st->route_reasons[r];
    snprintf(v, sizeof(v), "%.3f", st->uptime_seconds);
    kv_row(c, "uptime_seconds", v), rows++;
    kv_row(c, "version", st->version), rows++;
    kv_row(c, "client_connections", u64s(v, st->clients)), rows++;
    kv_row(c, "workers", u64s(v, (uint64_t)st->workers)), rows++;
    kv_row(c, "queries_total", u64s(v, total)), rows++;
    for (int r = 0; r < ROUTE_REASON_COUNT; r++) {
        char k[64];
        snprintf(k, sizeof(k), "queries_%s", router_reason_name((enum route_reason)r));
        kv_row(c, k, u64s(v, st->route_reasons[r])), rows++;
    }
    kv_row(c, "read_retries_on_primary", u64s(v, st->read_retries)), rows++;
    kv_row(c, "client_tls_connections", u64s(v, st->tls_clients)), rows++;
    kv_row(c, "client_tls_handshake_failures", u64s(v, st->tls_failures)), rows++;
    kv_row(c, "client_login_timeouts", u64s(v, st->login_timeouts)), rows++;
    kv_row(c, "auth_query_lookups", u64s(v, st->auth_lookups)), rows++;
    kv_row(c, "auth_query_errors", u64s(v, st->auth_lookup_errors)), rows++;
    kv_row(c, "multiplexed_reads", u64s(v, st->multiplexed)), rows++;
    kv_row(c, "multiplex_stalls", u64s(v, st->multiplex_stalls)), rows++;
    kv_row(c, "unnamed_statements_prepared", u64s(v, st->unnamed_prepared)), rows++;
    kv_row(c, "unnamed_statements_reused", u64s(v, st->unnamed_reused)), rows++;
    kv_row(c, "simple_queries_prepared", u64s(v, st->simple_prepared)), rows++;
    kv_row(c, "simple_queries_reused", u64s(v, st->simple_reused)), rows++;
    kv_row(c, "begins_deferred", u64s(v, st->begins_deferred)), rows++;
    kv_row(c, "busy_poll_reads", u64s(v, st->busy_poll_reads)), rows++;
    kv_row(c, "busy_poll_sleeps", u64s(v, st->busy_poll_sleeps)), rows++;
    kv_row(c, "reloads", u64s(v, st->reloads)), rows++;
    kv_row(c, "reload_failures", u64s(v, st->reload_failures)), rows++;
    kv_row(c, "paused", st->paused ? "yes" : "no"), rows++;
    kv_row(c, "monitor_round", u64s(v, st->monitor_round)), rows++;
    pg_complete_rows(c, rows);
    free(st);
}

static const char *tx_name(char s)
{
    return s == 'T' ? "in transaction" : s == 'E' ? "failed transaction" : "idle";
}

struct rows_arg {
    struct admin_conn *c;
    size_t rows;
};

/* The client's address: "unix" over a Unix-domain socket (whose peer has no name), else the
 * peer's IP address and port; NULL where the socket is already gone. */
static void client_peer(struct client *cl, char *addr, size_t acap, char *port, size_t pcap,
                        const char **a, const char **p)
{
    *a = *p = NULL;
    if (cl->tcp.type == UV_NAMED_PIPE) {
        *a = "unix";
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&cl->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    int rc = -1, pn = 0;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        rc = uv_ip4_name(in, addr, acap);
        pn = ntohs(in->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
        rc = uv_ip6_name(in6, addr, acap);
        pn = ntohs(in6->sin6_port);
    }
    if (rc == 0) {
        snprintf(port, pcap, "%d", pn);
        *a = addr;
        *p = port;
    }
}

static void client_rows(struct proxy *px, void *arg)
{
    struct rows_arg *ra = arg;
    for (struct client *cl = px->clients; cl; cl = cl->next) {
        char id[16], nodes[512], addr[64], port[8];
        const char *a, *p;
        client_peer(cl, addr, sizeof(addr), port, sizeof(port), &a, &p);
        snprintf(id, sizeof(id), "%u", cl->id);
        size_t off = 0;
        nodes[0] = 0;
        for (size_t i = 0; i < px->cfg->nnodes && i < CONFIG_MAX_NODES; i++) {
            if (cl->backends[i] && off < sizeof(nodes))
                off += (size_t)snprintf(nodes + off, sizeof(nodes) - off, "%s%s", off ? "," : "",
                                        px->cfg->nodes[i].name);
        }
        const char *state = cl->state == CLIENT_READY        ? tx_name(cl->tx_status)
                            : cl->state == CLIENT_CLOSING    ? "closing"
                            : cl->state == CLIENT_CANCELLING ? "cancel request"
                                                             : "login";
        const char *vals[] = {
            id,
            cl->user,
            cl->database,
            state,
            cl->tx_node >= 0 && (size_t)cl->tx_node < px->cfg->nnodes
                ? px->cfg->nodes[cl->tx_node].name
                : NULL,
            cl->pinned ? "yes" : "no",
            cl->pinned ? cl->pin_reason : NULL,
            nodes,
            a,
            p,
            cl->tls_phase == CTLS_UP ? tls_describe(cl->tls) : NULL,
        };
        pg_row(&ra->c->out, vals, NCOLS(vals));
        ra->rows++;
    }
}

static void show_clients(struct admin_conn *c)
{
    static const char *const cols[] = {"id",      "user",   "database",   "state",
                                       "tx_node", "pinned", "pin_reason", "backends",
                                       "addr",    "port",   "tls"};
    pg_rowdesc(&c->out, cols, NCOLS(cols));
    struct rows_arg ra = {c, 0};
    proxy_each(c->a->px, client_rows, &ra);
    pg_complete_rows(c, ra.rows);
}

static void server_rows(struct proxy *px, void *arg)
{
    static const char *const states[] = {"connecting", "login", "startup", "ready", "closing"};
    struct rows_arg *ra = arg;
    /* The pool's backends first: no client, state "pooled" (or "resetting" until the node
     * answered the reset). */
    for (size_t i = 0; i < px->cfg->nnodes && i < CONFIG_MAX_NODES; i++) {
        for (struct backend *b = px->pool[i]; b; b = b->pool_next) {
            char pid[16];
            snprintf(pid, sizeof(pid), "%u", b->pid);
            const char *vals[] = {NULL,
                                  px->cfg->nodes[i].name,
                                  b->resetting ? "resetting" : "pooled",
                                  pid,
                                  "0",
                                  b->tls_phase == BTLS_UP ? tls_describe(b->tls) : NULL};
            pg_row(&ra->c->out, vals, NCOLS(vals));
            ra->rows++;
        }
    }
    /* Shared backends (multiplex_reads): no client of their own; owed counts every client's. */
    for (size_t i = 0; i < px->cfg->nnodes && i < CONFIG_MAX_NODES; i++) {
        struct backend *b = px->shared_be[i];
        if (b == NULL)
            continue;
        char pid[16], owed[24];
        snprintf(pid, sizeof(pid), "%u", b->pid);
        snprintf(owed, sizeof(owed), "%zu", b->exp_count);
        const char *vals[] = {NULL,     px->cfg->nodes[i].name,
                              "shared", pid,
                              owed,     b->tls_phase == BTLS_UP ? tls_describe(b->tls) : NULL};
        pg_row(&ra->c->out, vals, NCOLS(vals));
        ra->rows++;
    }
    for (struct client *cl = px->clients; cl; cl = cl->next) {
        for (size_t i = 0; i < px->cfg->nnodes && i < CONFIG_MAX_NODES; i++) {
            struct backend *b = cl->backends[i];
            if (b == NULL)
                continue;
            char id[16], pid[16], owed[24];
            snprintf(id, sizeof(id), "%u", cl->id);
            snprintf(pid, sizeof(pid), "%u", b->pid);
            snprintf(owed, sizeof(owed), "%zu", b->exp_count);
            const char *vals[] = {id,
                                  px->cfg->nodes[i].name,
                                  (unsigned)b->state < 5 ? states[b->state] : "?",
                                  b->pid ? pid : NULL,
                                  owed,
                                  b->tls_phase == BTLS_UP ? tls_describe(b->tls) : NULL};
            pg_row(&ra->c->out, vals, NCOLS(vals));
            ra->rows++;
        }
    }
}

static void show_servers(struct admin_conn *c)
{
    static const char *const cols[] = {"client_id", "node", "state", "node_pid", "owed", "tls"};
    pg_rowdesc(&c->out, cols, NCOLS(cols));
    struct rows_arg ra = {c, 0};
    proxy_each(c->a->px, server_rows, &ra);
    pg_complete_rows(c, ra.rows);
}

static void show_config(struct admin_conn *c)
{
    static const char *const cols[] = {"key", "value"};
    static const char *const auths[] = {"scram-sha-256", "md5", "trust"};
    static const char *const cons[] = {"session", "eventual", "strong"};
    const struct config *cfg = c->a->px->cfg;
    pg_rowdesc(&c->out, cols, 2);
    size_t rows = 0;
    char v[512];
    kv_row(c, "config_file", cfg->path), rows++;
    snprintf(v, sizeof(v), "%s:%d", cfg->listen.host, cfg->listen.port);
    kv_row(c, "listen", v), rows++;
    kv_row(c, "unix_socket_dir", cfg->unix_socket_dir ? cfg->unix_socket_dir : "(none)"), rows++;
    snprintf(v, sizeof(v), "%s:%d", cfg->admin_listen.host, cfg->admin_listen.port);
    kv_row(c, "admin_listen", v), rows++;
    kv_row(c, "admin_token", cfg->admin_token ? "(set)" : "(unset)"), rows++;
    kv_row(c, "auth_method", auths[cfg->auth_method]), rows++;
    snprintf(v, sizeof(v), "%zu", cfg->nusers);
    kv_row(c, "users", v), rows++;
    snprintf(v, sizeof(v), "%zu", cfg->nadmin_users);
    kv_row(c, "admin_users", v), rows++;
    for (size_t i = 0; i < cfg->nnodes; i++) {
        if (c->a->px->nodes[i].removed)
            continue;
        const struct config_node *n = &cfg->nodes[i];
        char k[96];
        snprintf(k, sizeof(k), "node.%s", n->name);
        snprintf(v, sizeof(v), "%s:%d role=%s weight=%d", n->host, n->port,
                 (int)i == cfg->primary ? "primary" : "replica", n->weight);
        kv_row(c, k, v), rows++;
    }
    size_t off = 0;
    v[0] = 0;
    for (size_t i = 0; i < cfg->nwrite_functions && off < sizeof(v); i++)
        off += (size_t)snprintf(v + off, sizeof(v) - off, "%s%s", i ? "," : "",
                                cfg->write_functions[i]);
    kv_row(c, "write_functions", v), rows++;
    kv_int(c, "monitor.interval_ms", cfg->monitor.interval_ms), rows++;
    snprintf(v, sizeof(v), "%" PRId64, cfg->monitor.max_lag_bytes);
    kv_row(c, "monitor.max_lag_bytes", v), rows++;
    kv_int(c, "monitor.max_lag_ms", cfg->monitor.max_lag_ms), rows++;
    kv_int(c, "monitor.recover_checks", cfg->monitor.recover_checks), rows++;
    kv_row(c, "consistency", cons[cfg->consistency]), rows++;
    kv_row(c, "fallback", cfg->fallback == FALLBACK_ERROR ? "error" : "primary"), rows++;
    kv_row(c, "multiplex_reads", cfg->multiplex_reads ? "on" : "off"), rows++;
    kv_row(c, "cache_unnamed_statements", cfg->cache_unnamed_statements ? "on" : "off"), rows++;
    kv_row(c, "prepare_simple_queries", cfg->prepare_simple_queries ? "on" : "off"), rows++;
    kv_row(c, "defer_begin", cfg->defer_begin ? "on" : "off"), rows++;
    kv_int(c, "multiplex_stall_ms", cfg->multiplex_stall_ms), rows++;
    kv_int(c, "max_client_conn", cfg->max_client_conn), rows++;
    kv_int(c, "shutdown_timeout_ms", cfg->shutdown_timeout_ms), rows++;
    kv_int(c, "client_login_timeout_ms", cfg->client_login_timeout_ms), rows++;
    kv_int(c, "connect_timeout_ms", cfg->connect_timeout_ms), rows++;
    kv_int(c, "backend_idle_max", cfg->backend_idle_max), rows++;
    kv_int(c, "backend_idle_timeout_ms", cfg->backend_idle_timeout_ms), rows++;
    kv_int(c, "backend_lifetime_ms", cfg->backend_lifetime_ms), rows++;
    kv_row(c, "tcp_keepalive", cfg->tcp_keepalive ? "on" : "off"), rows++;
    kv_int(c, "tcp_keepalive_idle_s", cfg->tcp_keepalive_idle_s), rows++;
    kv_int(c, "tcp_keepalive_interval_s", cfg->tcp_keepalive_interval_s), rows++;
    kv_int(c, "tcp_keepalive_count", cfg->tcp_keepalive_count), rows++;
    kv_row(c, "server_tls.mode", config_tls_mode_name(cfg->server_tls.mode)), rows++;
    kv_row(c, "client_tls.mode", config_client_tls_mode_name(cfg->client_tls.mode)), rows++;
    kv_row(c, "admin_tls.mode", config_client_tls_mode_name(cfg->admin_tls.mode)), rows++;
    if (cfg->workers > 0)
        snprintf(v, sizeof(v), "%d", c->a->px->shared->nworkers);
    else
        snprintf(v, sizeof(v), "%d (default)", c->a->px->shared->nworkers);
    kv_row(c, "workers", v), rows++;
    kv_row(c, "cpu_affinity", c->a->px->shared->cpu_affinity == CPU_AFFINITY_AUTO ? "auto" : "off"),
        rows++;
    kv_int(c, "busy_poll_us", cfg->busy_poll_us), rows++;
    kv_row(c, "log_level", cfg->log_level ? cfg->log_level : "info"), rows++;
    kv_row(c, "log_format", cfg->log_json ? "json" : "text"), rows++;
    kv_row(c, "auth_file", cfg->auth_file ? cfg->auth_file : ""), rows++;
    const struct config_auth_query *aq = &cfg->auth_query;
    kv_row(c, "auth_query.query", aq->enabled ? aq->query : ""), rows++;
    kv_row(c, "auth_query.user", aq->enabled && aq->user ? aq->user : ""), rows++;
    kv_row(c, "auth_query.dbname", aq->enabled && aq->dbname ? aq->dbname : ""), rows++;
    kv_int(c, "auth_query.cache_ms", aq->enabled ? aq->cache_ms : 0), rows++;
    pg_complete_rows(c, rows);
}

static void show_help(struct admin_conn *c)
{
    static const char *const cols[] = {"command", "description"};
    static const char *const help[][2] = {
        {"SHOW NODES", "each node: role, state, lag, reads and writes routed to it"},
        {"SHOW STATS", "proxy-wide counters"},
        {"SHOW CLIENTS", "client connections"},
        {"SHOW SERVERS", "pgsteer's connections to the nodes"},
        {"SHOW CONFIG", "the configuration in effect (no secrets)"},
        {"SHOW VERSION", "pgsteer's version"},
        {"RELOAD", "re-read the configuration file"},
        {"PAUSE", "hold new statements (for a switchover)"},
        {"RESUME", "let held statements go"},
        {"EXPLAIN ROUTE <sql>", "where <sql> would go from a fresh session, and why"},
    };
    pg_rowdesc(&c->out, cols, 2);
    for (size_t i = 0; i < NCOLS(help); i++)
        pg_row(&c->out, help[i], 2);
    pg_complete_rows(c, NCOLS(help));
}

static void explain_route(struct admin_conn *c, const char *sql, size_t len)
{
    static const char *const cols[] = {"node", "reason", "statement"};
    struct proxy *px = c->a->px;
    const struct config *cfg = px->cfg;
    const struct monitor_snapshot *snap = px->snap;
    struct classify_result cr;
    classify_sql(sql, len, &px->wfuncs, &cr);
    struct router_node nodes[CONFIG_MAX_NODES];
    int64_t now = (int64_t)(uv_hrtime() / 1000000);
    for (size_t i = 0; i < cfg->nnodes; i++) {
        nodes[i].is_primary = (int)i == cfg->primary;
        nodes[i].weight = cfg->nodes[i].weight;
        nodes[i].eligible = cfg->nodes[i].role == NODE_REPLICA && !px->nodes[i].removed &&
                            px->nodes[i].failed_until_ms <= now &&
                            (snap == NULL || (i < snap->nnodes && snap->nodes[i].eligible));
        nodes[i].replay_lsn = snap && i < snap->nnodes ? snap->nodes[i].replay_lsn : LSN_INVALID;
    }
    struct router_session s = {
        .tx_node = -1,
        .pinned = false,
        .consistency = cfg->consistency,
        .min_lsn = LSN_INVALID,
        .write_unbounded = false,
        .preferred = -1,
    };
    struct router_input in = {
        .flags = cr.flags,
        .nodes = nodes,
        .nnodes = cfg->nnodes,
        .primary = cfg->primary,
        .fallback = cfg->fallback,
    };
    struct router copy = px->router; /* the real round robin must not advance */
    struct route rt = router_route(&copy, &s, &in);
    const char *vals[] = {rt.node >= 0 ? cfg->nodes[rt.node].name : NULL,
                          router_reason_name(rt.reason), classify_describe(cr.flags)};
    pg_rowdesc(&c->out, cols, 3);
    pg_row(&c->out, vals, 3);
    pg_complete_rows(c, 1);
}

static void pg_query(struct admin_conn *c, const char *sql, size_t len)
{
    struct proxy *px = c->a->px;
    const char *arg;
    size_t arglen;
    enum admin_cmd cmd = admin_parse_command(sql, len, &arg, &arglen);
    switch (cmd) {
    case ADMIN_CMD_EMPTY:
        proto_write_EmptyQueryResponse(&c->out);
        break;
    case ADMIN_CMD_UNKNOWN: {
        char msg[200];
        snprintf(msg, sizeof(msg), "unknown admin command \"%.*s\"; SHOW HELP lists them",
                 (int)(len > 80 ? 80 : len), sql);
        pg_error(c, "ERROR", "42601", msg);
        break;
    }
    case ADMIN_CMD_SHOW_NODES:
        show_nodes(c);
        break;
    case ADMIN_CMD_SHOW_STATS:
        show_stats(c);
        break;
    case ADMIN_CMD_SHOW_CLIENTS:
        show_clients(c);
        break;
    case ADMIN_CMD_SHOW_SERVERS:
        show_servers(c);
        break;
    case ADMIN_CMD_SHOW_CONFIG:
        show_config(c);
        break;
    case ADMIN_CMD_SHOW_HELP:
        show_help(c);
        break;
    case ADMIN_CMD_SHOW_VERSION: {
        static const char *const cols[] = {"version"};
        const char *vals[] = {"pgsteer " PGSTEER_VERSION};
        pg_rowdesc(&c->out, cols, 1);
        pg_row(&c->out, vals, 1);
        pg_complete_rows(c, 1);
        break;
    }
    case ADMIN_CMD_RELOAD: {
        char *errors = NULL;
        if (proxy_reload(px, &errors) == 0) {
            proto_write_CommandComplete(&c->out, "RELOAD");
        } else {
            char msg[1024];
            snprintf(msg, sizeof(msg), "configuration not reloaded; the old one is kept:\n%s",
                     errors ? errors : "unknown error");
            size_t ml = strlen(msg);
            if (ml > 0 && msg[ml - 1] == '\n')
                msg[ml - 1] = 0;
            pg_error(c, "ERROR", "F0000", msg);
        }
        free(errors);
        break;
    }
    case ADMIN_CMD_PAUSE:
        if (!px->paused)
            log_info("admin console: %s: PAUSE: new statements are held", c->user);
        proxy_each(px, pause_worker, NULL);
        proto_write_CommandComplete(&c->out, "PAUSE");
        break;
    case ADMIN_CMD_RESUME:
        if (px->paused)
            log_info("admin console: %s: RESUME", c->user);
        admin_resume(px);
        proto_write_CommandComplete(&c->out, "RESUME");
        break;
    case ADMIN_CMD_EXPLAIN_ROUTE:
        explain_route(c, arg, arglen);
        break;
    }
}

static void pg_ready(struct admin_conn *c)
{
    proto_write_ReadyForQuery(&c->out, 'I');
}

static void pg_login_ok(struct admin_conn *c)
{
    free(c->scram);
    c->scram = NULL;
    free(c->password);
    c->password = NULL;
    proto_write_AuthenticationOk(&c->out);
    proto_write_ParameterStatus(&c->out, "server_version", "15.0 (pgsteer " PGSTEER_VERSION ")");
    proto_write_ParameterStatus(&c->out, "server_encoding", "UTF8");
    proto_write_ParameterStatus(&c->out, "client_encoding", "UTF8");
    proto_write_ParameterStatus(&c->out, "DateStyle", "ISO, MDY");
    proto_write_ParameterStatus(&c->out, "integer_datetimes", "on");
    proto_write_ParameterStatus(&c->out, "standard_conforming_strings", "on");
    proto_write_ParameterStatus(&c->out, "application_name", "");
    proto_write_BackendKeyData(&c->out, c->id, 0);
    pg_ready(c);
    c->pg = PG_READY;
    uv_timer_start(&c->timer, conn_timeout_cb, ADMIN_PG_IDLE_TIMEOUT_MS, 0);
    log_info("admin console: %s logged in", c->user);
}

static void pg_auth_failed(struct admin_conn *c)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"", c->user);
    log_warn("admin console: %s", msg);
    pg_fatal(c, "28P01", msg);
}

/* Returns 0 to go on, -1 when the connection is finishing. */
static int pg_startup(struct admin_conn *c, const char *body, size_t n)
{
    const struct config *cfg = c->a->px->cfg;
    struct proto_reader r;
    proto_reader_init(&r, body, n);
    const char *db = NULL;
    for (;;) {
        size_t nl, vl;
        const char *name = proto_read_str(&r, &nl);
        if (r.err || nl == 0)
            break;
        const char *value = proto_read_str(&r, &vl);
        if (r.err)
            break;
        if (strcmp(name, "user") == 0 && c->user == NULL)
            c->user = strdup(value);
        else if (strcmp(name, "database") == 0)
            db = value;
    }
    if (r.err || c->user == NULL || c->user[0] == 0) {
        pg_fatal(c, "08P01", "invalid startup packet");
        return -1;
    }
    if (db && db[0] && strcmp(db, "pgsteer") != 0) {
        pg_fatal(c, "3D000", "the admin console's database is \"pgsteer\"");
        return -1;
    }
    const struct config_user *u = config_find_admin_user(cfg, c->user);
    if (u == NULL) {
        char msg[200];
        snprintf(msg, sizeof(msg), "user \"%s\" is not in admin_users", c->user);
        log_warn("admin console: %s", msg);
        pg_fatal(c, "28000", msg);
        return -1;
    }
    c->password = strdup(u->password ? u->password : "");
    if (c->password == NULL) {
        pg_fatal(c, "53200", "out of memory");
        return -1;
    }
    c->pg = PG_AUTH;
    switch (cfg->auth_method) {
    case AUTH_METHOD_TRUST:
        pg_login_ok(c);
        return 0;
    case AUTH_METHOD_MD5:
        auth_random(c->salt, sizeof(c->salt));
        proto_write_AuthenticationMD5Password(&c->out, c->salt);
        return 0;
    case AUTH_METHOD_SCRAM:
        c->scram = calloc(1, sizeof(*c->scram));
        if (c->scram == NULL || scram_server_start(c->scram, c->password) < 0) {
            pg_fatal(c, "53200", "out of memory");
            return -1;
        }
        proto_write_AuthenticationSASL(&c->out);
        return 0;
    }
    return 0;
}

static int pg_password(struct admin_conn *c, const struct proto_msg *m)
{
    if (m->type != FE_PASSWORD) {
        pg_fatal(c, "08P01", "expected password response");
        return -1;
    }
    if (c->a->px->cfg->auth_method == AUTH_METHOD_MD5 || c->scram == NULL) {
        char expect[36];
        auth_md5_response(c->user, c->password, c->salt, expect);
        if (m->len != 36 || m->body[35] != 0 || !auth_equal(m->body, expect, 35)) {
            pg_auth_failed(c);
            return -1;
        }
        pg_login_ok(c);
        return 0;
    }
    char out[SCRAM_MAX_MSG];
    if (c->scram->state == 0) {
        struct proto_reader r;
        proto_reader_init(&r, m->body, m->len);
        const char *mech = proto_read_str(&r, NULL);
        int32_t dlen = proto_read_i32(&r);
        const char *data = dlen >= 0 ? proto_read_bytes(&r, (size_t)dlen) : NULL;
        if (r.err || data == NULL || strcmp(mech, "SCRAM-SHA-256") != 0) {
            pg_fatal(c, "08P01", "malformed SASLInitialResponse or unsupported mechanism");
            return -1;
        }
        int n = scram_server_first(c->scram, data, (size_t)dlen, out, sizeof(out));
        if (n < 0) {
            pg_fatal(c, "08P01", "malformed SCRAM message");
            return -1;
        }
        proto_write_AuthenticationSASLContinue(&c->out, out, (size_t)n);
        return 0;
    }
    int n = scram_server_final(c->scram, m->body, m->len, out, sizeof(out));
    if (n == -2) {
        pg_auth_failed(c);
        return -1;
    }
    if (n < 0) {
        pg_fatal(c, "08P01", "malformed SCRAM message");
        return -1;
    }
    proto_write_AuthenticationSASLFinal(&c->out, out, (size_t)n);
    pg_login_ok(c);
    return 0;
}

static bool tls_required(const struct admin_conn *c);
static void conn_tls_start(struct admin_conn *c, bool direct);

static void pg_input(struct admin_conn *c)
{
    while (!c->closing && !c->lingering) {
        if (c->pg == PG_STARTUP) {
            uint32_t code;
            int n = proto_frame_startup(buf_head(&c->in), buf_avail(&c->in), &code);
            if (n == 0)
                return;
            if (n < 0) {
                pg_fatal(c, "08P01", "invalid length of startup packet");
                return;
            }
            const char *p = buf_head(&c->in);
            if (code == PROTO_SSL_CODE && c->tls_phase == ATLS_NONE && c->a->px->admin_tls) {
                buf_consume(&c->in, (size_t)n);
                conn_tls_start(c, false);
                return;
            }
            if (code == PROTO_SSL_CODE || code == PROTO_GSSENC_CODE) {
                buf_consume(&c->in, (size_t)n);
                buf_append(&c->out, "N", 1);
                continue;
            }
            if ((code >> 16) != 3) {
                /* CancelRequest (nothing to cancel here) or an unknown protocol. */
                conn_close(c);
                return;
            }
            if (c->tls_phase == ATLS_NONE && tls_required(c)) {
                char msg[120];
                snprintf(msg, sizeof(msg),
                         "the admin port accepts connections with TLS only (admin_tls mode %s)",
                         config_client_tls_mode_name(c->a->px->cfg->admin_tls.mode));
                pg_fatal(c, "28000", msg);
                return;
            }
            int rc = pg_startup(c, p + 8, (size_t)n - 8);
            buf_consume(&c->in, (size_t)n);
            if (rc < 0)
                return;
            continue;
        }
        struct proto_msg m;
        uint32_t max = c->pg == PG_AUTH ? PROTO_MAX_PREAUTH_MSG : ADMIN_PG_MAX_QUERY;
        int rc = proto_frame(buf_head(&c->in), buf_avail(&c->in), max, &m);
        if (rc == 0)
            return;
        if (rc < 0) {
            pg_fatal(c, "08P01", "invalid message length");
            return;
        }
        if (c->pg == PG_AUTH) {
            int r = pg_password(c, &m);
            buf_consume(&c->in, m.total);
            if (r < 0)
                return;
            continue;
        }
        uv_timer_start(&c->timer, conn_timeout_cb, ADMIN_PG_IDLE_TIMEOUT_MS, 0);
        switch (m.type) {
        case FE_QUERY: {
            size_t len = m.len > 0 && m.body[m.len - 1] == 0 ? m.len - 1 : m.len;
            pg_query(c, m.body, strnlen(m.body, len));
            pg_ready(c);
            break;
        }
        case FE_TERMINATE:
            buf_consume(&c->in, m.total);
            conn_close(c);
            return;
        case FE_SYNC:
            c->ext_skip = false;
            pg_ready(c);
            break;
        case FE_FLUSH:
            break;
        default:
            if (!c->ext_skip)
                pg_error(c, "ERROR", "0A000",
                         "the admin console takes simple queries only (psql -c or \\c)");
            c->ext_skip = true;
            break;
        }
        buf_consume(&c->in, m.total);
    }
}

/* ---- reading and accepting ---- */

/* Room for ADMIN_READ_CHUNK more bytes at the end of b, what was consumed dropped first.
 * Returns 0, or -1 when out of memory. */
static int conn_room(struct buf *b)
{
    if (b->off > 0 && b->off == b->len)
        buf_reset(b);
    else if (b->off > 0)
        buf_compact(b);
    return buf_reserve(b, ADMIN_READ_CHUNK);
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *ub)
{
    (void)suggested;
    struct admin_conn *c = h->data;
    struct buf *b = c->tls_phase != ATLS_NONE ? &c->tls_in : &c->in;
    if (conn_room(b) < 0) {
        *ub = uv_buf_init(NULL, 0);
        return;
    }
    *ub = uv_buf_init(b->data + b->len, (unsigned)(b->cap - b->len));
}

/* Whether admin_tls refuses plain connections (modes require and verify-ca), for one not over
 * TLS. */
static bool tls_required(const struct admin_conn *c)
{
    return c->a->px->admin_tls != NULL && c->a->px->cfg->admin_tls.mode >= CLIENT_TLS_REQUIRE;
}

/* admin_tls: take the ciphertext just read (tls_in) through c's TLS: the handshake's next
 * step, then the plaintext into in. Returns 0, or -1 when c is closing (a failed handshake
 * sends its alert first). */
static int conn_tls_input(struct admin_conn *c)
{
    if (tls_feed(c->tls, buf_head(&c->tls_in), buf_avail(&c->tls_in)) < 0) {
        conn_close(c);
        return -1;
    }
    buf_reset(&c->tls_in);
    if (c->tls_phase == ATLS_HANDSHAKE) {
        int r = tls_handshake(c->tls);
        if (tls_take_output(c->tls, &c->tls_out) < 0) {
            conn_close(c);
            return -1;
        }
        if (r < 0) {
            log_info("admin connection %u: %s", c->id, tls_error(c->tls));
            conn_finish(c);
            return -1;
        }
        if (r == 0)
            return 0;
        c->tls_phase = ATLS_UP;
        log_debug("admin connection %u: TLS %s", c->id, tls_describe(c->tls));
    }
    for (;;) {
        if (conn_room(&c->in) < 0) {
            conn_close(c);
            return -1;
        }
        ssize_t n = tls_read(c->tls, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n < 0) {
            conn_close(c);
            return -1;
        }
        if (n == 0)
            return 0;
        c->in.len += (size_t)n;
    }
}

/* admin_tls: start TLS on c, which asked for it with an SSLRequest (answered 'S' here) or sent
 * a TLS handshake as its first bytes (`direct`: those bytes, in in, are the handshake's). A
 * client that sent more after its SSLRequest, before the answer, is refused: those bytes were
 * not encrypted. */
static void conn_tls_start(struct admin_conn *c, bool direct)
{
    if (!direct && buf_avail(&c->in) > 0) {
        pg_fatal(c, "08P01", "received unencrypted data after SSL request");
        return;
    }
    c->tls = tls_conn_accept(c->a->px->admin_tls);
    if (c->tls == NULL || (!direct && buf_append(&c->tls_out, "S", 1) < 0) ||
        (direct && buf_append(&c->tls_in, buf_head(&c->in), buf_avail(&c->in)) < 0)) {
        conn_close(c);
        return;
    }
    buf_reset(&c->in);
    c->tls_phase = ATLS_HANDSHAKE;
    c->kind = CONN_NEW; /* the first byte inside TLS tells HTTP from the console */
    if (direct)
        (void)conn_tls_input(c);
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    (void)ub;
    struct admin_conn *c = s->data;
    if (c->closing)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    if (c->lingering)
        return; /* dropped: the response is out */
    if (c->tls_phase != ATLS_NONE) {
        c->tls_in.len += (size_t)nread;
        if (conn_tls_input(c) < 0)
            return;
    } else {
        c->in.len += (size_t)nread;
        /* A TLS record of type handshake (22) as the first byte: TLS without an SSLRequest. */
        if (c->kind == CONN_NEW && (uint8_t)buf_head(&c->in)[0] == 22 && c->a->px->admin_tls) {
            conn_tls_start(c, true);
            if (c->closing)
                return;
        }
    }
    if (c->kind == CONN_NEW && buf_avail(&c->in) > 0)
        c->kind = buf_head(&c->in)[0] == 0 ? CONN_PG : CONN_HTTP;
    if (c->kind == CONN_HTTP && c->tls_phase == ATLS_NONE && tls_required(c)) {
        char msg[120];
        snprintf(msg, sizeof(msg), "the admin port takes HTTPS only (admin_tls mode %s)\n",
                 config_client_tls_mode_name(c->a->px->cfg->admin_tls.mode));
        http_text(c, 400, NULL, msg, false);
        return;
    }
    if (c->kind == CONN_NEW) {
        /* (nothing decrypted yet: the handshake goes on) */
    } else if (c->kind == CONN_HTTP) {
        if (buf_avail(&c->in) > HTTP_MAX_REQUEST + HTTP_MAX_BODY) {
            http_text(c, 400, NULL, "request too large\n", false);
            return;
        }
        http_input(c);
    } else {
        pg_input(c);
    }
    if (c->closing)
        return;
    if (buf_avail(&c->out) + buf_avail(&c->writing) + buf_avail(&c->tls_out) > ADMIN_MAX_OUT) {
        log_warn("admin connection %u: peer does not read its answers; closing", c->id);
        conn_close(c);
        return;
    }
    conn_flush(c);
}

static void on_admin_connection(uv_stream_t *server, int status)
{
    struct admin *a = server->data;
    if (status < 0) {
        log_warn("admin accept failed: %s", uv_strerror(status));
        return;
    }
    struct admin_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->a = a;
    c->id = ++a->next_id;
    buf_init(&c->in);
    buf_init(&c->out);
    buf_init(&c->writing);
    buf_init(&c->tls_in);
    buf_init(&c->tls_out);
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    c->next = a->conns;
    if (a->conns)
        a->conns->prev = c;
    a->conns = c;
    a->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    if (a->nconns > ADMIN_MAX_CONNS) {
        log_warn("admin: more than %d connections; refusing one", ADMIN_MAX_CONNS);
        conn_close(c);
        return;
    }
    proxy_tcp_tune(&c->tcp, a->px->cfg);
    uv_timer_start(&c->timer, conn_timeout_cb, ADMIN_HTTP_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb) < 0)
        conn_close(c);
}

static void listener_free_cb(uv_handle_t *h)
{
    free(h->data);
}

int admin_start(struct proxy *px)
{
    const struct config *cfg = px->cfg;
    struct admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return -1;
    a->px = px;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->admin_listen.port);
    if (getaddrinfo(cfg->admin_listen.host, port, &hints, &res) != 0 || res == NULL) {
        log_error("cannot resolve admin_listen address %s", cfg->admin_listen.host);
        free(a);
        return -1;
    }
    uv_tcp_init(px->loop, &a->listener);
    a->listener.data = a;
    int rc = uv_tcp_bind(&a->listener, res->ai_addr, 0);
    freeaddrinfo(res);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->listener, 128, on_admin_connection);
    if (rc < 0) {
        log_error("cannot listen on admin address %s:%d: %s", cfg->admin_listen.host,
                  cfg->admin_listen.port, uv_strerror(rc));
        /* The handle was initialised: it must be closed before the struct goes. */
        uv_close((uv_handle_t *)&a->listener, listener_free_cb);
        return -1;
    }
    a->listening = true;
    px->admin = a;
    log_info("admin interface on %s:%d (HTTP and PostgreSQL protocol)", cfg->admin_listen.host,
             cfg->admin_listen.port);
    return 0;
}

void admin_stop(struct proxy *px)
{
    struct admin *a = px->admin;
    if (a == NULL)
        return;
    while (a->conns)
        conn_close(a->conns);
    px->admin = NULL;
    uv_close((uv_handle_t *)&a->listener, listener_free_cb);
}

static void resume_worker(struct proxy *px, void *arg)
{
    (void)arg;
    px->paused = false;
    if (px->loop_done)
        return;
    for (struct client *c = px->clients, *next; c; c = next) {
        next = c->next;
        if (c->state != CLIENT_READY)
            continue;
        client_process(c);
        if (c->state == CLIENT_READY)
            client_flush(c);
    }
}

void admin_resume(struct proxy *px)
{
    proxy_each(px, resume_worker, NULL);
}
