/* SPDX-License-Identifier: MIT */
/* `pgsteer status`: a small blocking HTTP client for the admin port's /status, a JSON reader
 * for its answer, and the table printed for a person at a terminal. */
#include "status.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "lag.h"

#define STATUS_TIMEOUT_MS 5000
#define STATUS_MAX_REPLY  (16u << 20)
#define JSON_MAX_DEPTH    64

/* ---- JSON ---- */

struct jparser {
    const char *p;
    size_t n, pos;
    int depth;
};

static void ws(struct jparser *jp)
{
    while (jp->pos < jp->n && (jp->p[jp->pos] == ' ' || jp->p[jp->pos] == '\t' ||
                               jp->p[jp->pos] == '\n' || jp->p[jp->pos] == '\r'))
        jp->pos++;
}

static void json_clear(struct json *j)
{
    free(j->string);
    for (size_t i = 0; i < j->n; i++) {
        json_clear(&j->items[i]);
        if (j->keys)
            free(j->keys[i]);
    }
    free(j->items);
    free(j->keys);
    memset(j, 0, sizeof(*j));
}

void json_free(struct json *j)
{
    if (j == NULL)
        return;
    json_clear(j);
    free(j);
}

static int put_utf8(struct buf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return buf_append(b, u, n);
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = s[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9')
            v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            v |= (unsigned)(ch - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* A string at jp->pos (the opening quote); returns a malloc'd copy or NULL. */
static char *jstring(struct jparser *jp)
{
    if (jp->pos >= jp->n || jp->p[jp->pos] != '"')
        return NULL;
    jp->pos++;
    struct buf b;
    buf_init(&b);
    while (jp->pos < jp->n) {
        unsigned char ch = (unsigned char)jp->p[jp->pos++];
        if (ch == '"') {
            if (buf_append(&b, "", 1) < 0)
                break;
            return b.data;
        }
        if (ch < 0x20)
            break;
        if (ch != '\\') {
            if (buf_append(&b, &ch, 1) < 0)
                break;
            continue;
        }
        if (jp->pos >= jp->n)
            break;
        char e = jp->p[jp->pos++];
        const char *map = strchr("\"\\/bfnrt", e);
        if (map && e) {
            static const char repl[] = "\"\\/\b\f\n\r\t";
            if (buf_append(&b, &repl[map - "\"\\/bfnrt"], 1) < 0)
                break;
            continue;
        }
        if (e != 'u' || jp->pos + 4 > jp->n)
            break;
        unsigned cp;
        if (hex4(jp->p + jp->pos, &cp) < 0)
            break;
        jp->pos += 4;
        if (cp >= 0xd800 && cp < 0xdc00 && jp->pos + 6 <= jp->n && jp->p[jp->pos] == '\\' &&
            jp->p[jp->pos + 1] == 'u') {
            unsigned lo;
            if (hex4(jp->p + jp->pos + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                jp->pos += 6;
            }
        }
        if (put_utf8(&b, cp) < 0)
            break;
    }
    buf_destroy(&b);
    return NULL;
}

static int jvalue(struct jparser *jp, struct json *out);

static int jappend(struct json *j, char *key, struct json *item)
{
    struct json *items = realloc(j->items, (j->n + 1) * sizeof(*items));
    if (items == NULL)
        return -1;
    j->items = items;
    if (j->type == JSON_OBJECT) {
        char **keys = realloc(j->keys, (j->n + 1) * sizeof(*keys));
        if (keys == NULL)
            return -1;
        j->keys = keys;
        keys[j->n] = key;
    }
    items[j->n++] = *item;
    return 0;
}

static int jcontainer(struct jparser *jp, struct json *out, bool object)
{
    if (++jp->depth > JSON_MAX_DEPTH)
        return -1;
    out->type = object ? JSON_OBJECT : JSON_ARRAY;
    jp->pos++; /* [ or { */
    ws(jp);
    char close = object ? '}' : ']';
    if (jp->pos < jp->n && jp->p[jp->pos] == close) {
        jp->pos++;
        jp->depth--;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        ws(jp);
        if (object) {
            key = jstring(jp);
            if (key == NULL)
                return -1;
            ws(jp);
            if (jp->pos >= jp->n || jp->p[jp->pos] != ':') {
                free(key);
                return -1;
            }
            jp->pos++;
        }
        struct json item;
        memset(&item, 0, sizeof(item));
        if (jvalue(jp, &item) < 0 || jappend(out, key, &item) < 0) {
            json_clear(&item);
            free(key);
            return -1;
        }
        ws(jp);
        if (jp->pos >= jp->n)
            return -1;
        char ch = jp->p[jp->pos++];
        if (ch == close)
            break;
        if (ch != ',')
            return -1;
    }
    jp->depth--;
    return 0;
}

static int jvalue(struct jparser *jp, struct json *out)
{
    ws(jp);
    if (jp->pos >= jp->n)
        return -1;
    char ch = jp->p[jp->pos];
    if (ch == '{' || ch == '[')
        return jcontainer(jp, out, ch == '{');
    if (ch == '"') {
        out->type = JSON_STRING;
        out->string = jstring(jp);
        return out->string ? 0 : -1;
    }
    static const struct {
        const char *word;
        enum json_type type;
        double v;
    } words[] = {{"true", JSON_BOOL, 1}, {"false", JSON_BOOL, 0}, {"null", JSON_NULL, 0}};
    for (size_t i = 0; i < 3; i++) {
        size_t l = strlen(words[i].word);
        if (jp->n - jp->pos >= l && memcmp(jp->p + jp->pos, words[i].word, l) == 0) {
            out->type = words[i].type;
            out->number = words[i].v;
            jp->pos += l;
            return 0;
        }
    }
    /* A number: validate the JSON grammar, then let strtod read it. */
    size_t s = jp->pos, i = s;
    if (i < jp->n && jp->p[i] == '-')
        i++;
    size_t d = i;
    while (i < jp->n && jp->p[i] >= '0' && jp->p[i] <= '9')
        i++;
    if (i == d || (jp->p[d] == '0' && i - d > 1))
        return -1;
    if (i < jp->n && jp->p[i] == '.') {
        size_t f = ++i;
        while (i < jp->n && jp->p[i] >= '0' && jp->p[i] <= '9')
            i++;
        if (i == f)
            return -1;
    }
    if (i < jp->n && (jp->p[i] == 'e' || jp->p[i] == 'E')) {
        i++;
        if (i < jp->n && (jp->p[i] == '+' || jp->p[i] == '-'))
            i++;
        size_t e = i;
        while (i < jp->n && jp->p[i] >= '0' && jp->p[i] <= '9')
            i++;
        if (i == e)
            return -1;
    }
    char tmp[64];
    if (i - s >= sizeof(tmp))
        return -1;
    memcpy(tmp, jp->p + s, i - s);
    tmp[i - s] = 0;
    out->type = JSON_NUMBER;
    out->number = strtod(tmp, NULL);
    jp->pos = i;
    return 0;
}

struct json *json_parse(const char *text, size_t len)
{
    struct jparser jp = {text, len, 0, 0};
    struct json *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    if (jvalue(&jp, j) < 0) {
        json_free(j);
        return NULL;
    }
    ws(&jp);
    if (jp.pos != jp.n) {
        json_free(j);
        return NULL;
    }
    return j;
}

const struct json *json_get(const struct json *j, const char *key)
{
    if (j == NULL || j->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < j->n; i++) {
        if (strcmp(j->keys[i], key) == 0)
            return &j->items[i];
    }
    return NULL;
}

/* ---- the table ---- */

static const char *jstr(const struct json *o, const char *key, const char *dflt)
{
    const struct json *v = json_get(o, key);
    return v && v->type == JSON_STRING ? v->string : dflt;
}

static double jnum(const struct json *o, const char *key, double dflt)
{
    const struct json *v = json_get(o, key);
    return v && (v->type == JSON_NUMBER || v->type == JSON_BOOL) ? v->number : dflt;
}

static bool jbool(const struct json *o, const char *key)
{
    const struct json *v = json_get(o, key);
    return v && v->type == JSON_BOOL && v->number != 0;
}

static void format_duration(double s, char *out, size_t cap)
{
    uint64_t t = s > 0 ? (uint64_t)s : 0;
    uint64_t d = t / 86400, h = t / 3600 % 24, m = t / 60 % 60, sec = t % 60;
    if (d)
        snprintf(out, cap, "%" PRIu64 "d %" PRIu64 "h %" PRIu64 "m", d, h, m);
    else if (h)
        snprintf(out, cap, "%" PRIu64 "h %" PRIu64 "m %" PRIu64 "s", h, m, sec);
    else if (m)
        snprintf(out, cap, "%" PRIu64 "m %" PRIu64 "s", m, sec);
    else
        snprintf(out, cap, "%" PRIu64 "s", sec);
}

#define NCOL 10

int status_render_table(const struct json *st, struct buf *out)
{
    const struct json *nodes = json_get(st, "nodes");
    if (st == NULL || st->type != JSON_OBJECT || nodes == NULL || nodes->type != JSON_ARRAY)
        return -1;
    char up[64];
    format_duration(jnum(st, "uptime_seconds", 0), up, sizeof(up));
    const struct json *q = json_get(st, "queries");
    int rc = 0;
    rc |=
        buf_printf(out,
                   "pgsteer %s, up %s, %.0f client connections, %.0f workers, primary %s%s\n"
                   "queries: %.0f (%.0f reads, %.0f writes), %.0f reads retried on the "
                   "primary\n\n",
                   jstr(st, "version", "?"), up, jnum(st, "client_connections", 0),
                   jnum(st, "workers", 1), jbool(st, "primary_up") ? "up" : "DOWN",
                   jbool(st, "paused") ? ", PAUSED" : "", jnum(q, "total", 0), jnum(q, "reads", 0),
                   jnum(q, "writes", 0), jnum(st, "read_retries_on_primary", 0));
    static const char *const head[NCOL] = {"NODE",  "ROLE",   "STATE",    "ELIGIBLE", "LAG",
                                           "READS", "WRITES", "BACKENDS", "IDLE",     "REASON"};
    /* Cells first, then widths, then the lines. */
    size_t rows = nodes->n + 1;
    char(*cells)[NCOL][160] = calloc(rows, sizeof(*cells));
    if (cells == NULL)
        return -1;
    for (int c = 0; c < NCOL; c++)
        snprintf(cells[0][c], sizeof(cells[0][c]), "%s", head[c]);
    for (size_t i = 0; i < nodes->n; i++) {
        const struct json *n = &nodes->items[i];
        char(*row)[160] = cells[i + 1];
        snprintf(row[0], 160, "%s", jstr(n, "name", "?"));
        snprintf(row[1], 160, "%s", jstr(n, "role", "?"));
        snprintf(row[2], 160, "%s", jstr(n, "state", "?"));
        bool primary = strcmp(row[1], "primary") == 0;
        snprintf(row[3], 160, "%s", primary ? "-" : jbool(n, "eligible") ? "yes" : "no");
        const struct json *lb = json_get(n, "lag_bytes");
        const struct json *lm = json_get(n, "lag_ms");
        if (primary || lb == NULL || lb->type != JSON_NUMBER) {
            snprintf(row[4], 160, "-");
        } else {
            char bytes[32];
            lag_format_bytes((int64_t)lb->number, bytes, sizeof(bytes));
            if (lm && lm->type == JSON_NUMBER)
                snprintf(row[4], 160, "%s, %.0f ms", bytes, lm->number);
            else
                snprintf(row[4], 160, "%s", bytes);
        }
        snprintf(row[5], 160, "%.0f", jnum(n, "reads", 0));
        snprintf(row[6], 160, "%.0f", jnum(n, "writes", 0));
        snprintf(row[7], 160, "%.0f", jnum(n, "backends", 0));
        snprintf(row[8], 160, "%.0f", jnum(n, "idle_backends", 0));
        const char *since = jstr(n, "state_changed_at", "");
        snprintf(row[9], 160, "%s%s%s%s", jstr(n, "state_reason", ""), since[0] ? " (since " : "",
                 since, since[0] ? ")" : "");
    }
    size_t w[NCOL] = {0};
    for (size_t r = 0; r < rows; r++) {
        for (int c = 0; c < NCOL; c++) {
            size_t l = strlen(cells[r][c]);
            if (l > w[c])
                w[c] = l;
        }
    }
    for (size_t r = 0; r < rows; r++) {
        for (int c = 0; c < NCOL; c++) {
            bool num = c >= 5 && c <= 8;
            if (c == NCOL - 1)
                rc |= buf_printf(out, "%s", cells[r][c]);
            else if (num)
                rc |= buf_printf(out, "%*s  ", (int)w[c], cells[r][c]);
            else
                rc |= buf_printf(out, "%-*s  ", (int)w[c], cells[r][c]);
        }
        /* No trailing blanks when the last column is empty. */
        while (out->len > 0 && out->data[out->len - 1] == ' ')
            out->len--;
        rc |= buf_printf(out, "\n");
    }
    free(cells);
    const struct json *pr = json_get(st, "primary_reasons");
    if (pr && pr->type == JSON_OBJECT) {
        rc |= buf_printf(out, "\nsent to the primary, by reason:");
        for (size_t i = 0; i < pr->n; i++) {
            if (pr->items[i].type == JSON_NUMBER)
                rc |= buf_printf(out, "%s %s %.0f", i ? "," : "", pr->keys[i], pr->items[i].number);
        }
        rc |= buf_printf(out, "\n");
    }
    return rc ? -1 : 0;
}

/* ---- HTTP client ---- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {fd, events, 0};
        int rc = poll(&p, 1, (int)left);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

/* Connect to host:port within the deadline; returns a blocking-free fd or -1 (message set). */
static int dial(const char *host, int port, int64_t deadline, char *err, size_t cap)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    int gai = getaddrinfo(host, ps, &hints, &res);
    if (gai != 0) {
        snprintf(err, cap, "cannot resolve %s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    int last = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 0) {
            int so = 0;
            socklen_t sl = sizeof(so);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl);
            if (so == 0)
                break;
            last = so;
        } else {
            last = errno == EINPROGRESS ? ETIMEDOUT : errno;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, cap, "cannot connect to %s:%d: %s", host, port, strerror(last));
    return fd;
}

/* How to reach the admin port over TLS (admin_tls): tls off means plain HTTP; cafile NULL
 * means encrypted without checking the certificate (as libpq's sslmode=require), else the
 * certificate must chain to cafile and name the host dialled. */
struct status_tls {
    bool on;
    const char *cafile;
    const char *certfile, *keyfile; /* a client certificate to show (admin_tls verify-ca) */
};

/* OpenSSL's first queued error after `what`, into err (the queue cleared). */
static void ssl_err(char *err, size_t cap, const char *what)
{
    unsigned long e = ERR_get_error();
    char text[256] = "connection closed";
    if (e != 0)
        ERR_error_string_n(e, text, sizeof(text));
    ERR_clear_error();
    snprintf(err, cap, "%s: %s", what, text);
}

/* A TLS session over connected fd, made blocking with the time left until deadline as its
 * timeouts; NULL with a message in err. *ctxp takes the context, for the caller to free. */
static SSL *tls_dial(int fd, const char *host, const struct status_tls *tls, int64_t deadline,
                     SSL_CTX **ctxp, char *err, size_t cap)
{
    int64_t left = deadline - mono_ms();
    struct timeval tv = {left > 0 ? left / 1000 : 0, left > 0 ? (left % 1000) * 1000 : 1000};
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
        snprintf(err, cap, "cannot set up the socket: %s", strerror(errno));
        return NULL;
    }
    SSL_CTX *ctx = *ctxp = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        ssl_err(err, cap, "cannot make a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (tls->cafile) {
        if (SSL_CTX_load_verify_locations(ctx, tls->cafile, NULL) != 1) {
            char what[300];
            snprintf(what, sizeof(what), "cannot load %s", tls->cafile);
            ssl_err(err, cap, what);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    if (tls->certfile &&
        (SSL_CTX_use_certificate_chain_file(ctx, tls->certfile) != 1 ||
         SSL_CTX_use_PrivateKey_file(ctx, tls->keyfile ? tls->keyfile : tls->certfile,
                                     SSL_FILETYPE_PEM) != 1 ||
         SSL_CTX_check_private_key(ctx) != 1)) {
        char what[300];
        snprintf(what, sizeof(what), "cannot load the client certificate %s", tls->certfile);
        ssl_err(err, cap, what);
        return NULL;
    }
    static const unsigned char alpn[] = "\010http/1.1";
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1 ||
        SSL_set_alpn_protos(ssl, alpn, sizeof(alpn) - 1) != 0) {
        SSL_free(ssl);
        ssl_err(err, cap, "cannot set up TLS");
        return NULL;
    }
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(ssl, host);
    if (tls->cafile) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        if ((is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host)
                   : X509_VERIFY_PARAM_set1_host(vp, host, 0)) != 1) {
            SSL_free(ssl);
            ssl_err(err, cap, "cannot set the name to check");
            return NULL;
        }
    }
    if (SSL_connect(ssl) != 1) {
        long v = SSL_get_verify_result(ssl);
        if (tls->cafile && v != X509_V_OK) {
            ERR_clear_error();
            snprintf(err, cap, "TLS handshake failed: the admin port's certificate: %s",
                     X509_verify_cert_error_string(v));
        } else {
            ssl_err(err, cap, "TLS handshake failed");
        }
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* GET path (over TLS as `tls` says); returns the HTTP status and the body in *body, or -1
 * with a message in err. */
static int http_get(const char *host, int port, const struct status_tls *tls, const char *path,
                    const char *token, struct buf *body, char *err, size_t cap)
{
    int64_t deadline = mono_ms() + STATUS_TIMEOUT_MS;
    int fd = dial(host, port, deadline, err, cap);
    if (fd < 0)
        return -1;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    if (tls->on && (ssl = tls_dial(fd, host, tls, deadline, &ctx, err, cap)) == NULL) {
        SSL_CTX_free(ctx);
        close(fd);
        return -1;
    }
    struct buf req;
    buf_init(&req);
    bool v6 = strchr(host, ':') != NULL;
    buf_printf(&req, "GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: pgsteer-status\r\n", path,
               v6 ? "[" : "", host, v6 ? "]" : "", port);
    if (token)
        buf_printf(&req, "Authorization: Bearer %s\r\n", token);
    buf_printf(&req, "Connection: close\r\n\r\n");
    int status = -1;
    while (buf_avail(&req) > 0) {
        if (ssl) {
            int w = SSL_write(ssl, buf_head(&req), (int)buf_avail(&req));
            if (w > 0) {
                buf_consume(&req, (size_t)w);
                continue;
            }
            ssl_err(err, cap, "cannot send the request");
            goto out;
        }
        ssize_t w = send(fd, buf_head(&req), buf_avail(&req), MSG_NOSIGNAL);
        if (w > 0) {
            buf_consume(&req, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EAGAIN && wait_fd(fd, POLLOUT, deadline) == 0)
            continue;
        snprintf(err, cap, "cannot send the request: %s", strerror(errno));
        goto out;
    }
    struct buf resp;
    buf_init(&resp);
    for (;;) {
        if (buf_reserve(&resp, 16384) < 0) {
            snprintf(err, cap, "out of memory");
            buf_destroy(&resp);
            goto out;
        }
        ssize_t r;
        if (ssl) {
            errno = 0;
            int n = SSL_read(ssl, resp.data + resp.len, (int)(resp.cap - resp.len));
            int e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, n);
            if (e == SSL_ERROR_SSL || (e == SSL_ERROR_SYSCALL && errno != 0)) {
                snprintf(err, cap, "no complete answer within %d ms", STATUS_TIMEOUT_MS);
                if (e == SSL_ERROR_SSL)
                    ssl_err(err, cap, "cannot read the answer");
                buf_destroy(&resp);
                goto out;
            }
            r = n > 0 ? n : 0; /* (close_notify, or the end of the connection) */
        } else {
            r = recv(fd, resp.data + resp.len, resp.cap - resp.len, 0);
        }
        if (r > 0) {
            resp.len += (size_t)r;
            if (resp.len > STATUS_MAX_REPLY) {
                snprintf(err, cap, "answer too large");
                buf_destroy(&resp);
                goto out;
            }
            continue;
        }
        if (r == 0)
            break;
        if ((errno == EAGAIN || errno == EINTR) && wait_fd(fd, POLLIN, deadline) == 0)
            continue;
        snprintf(err, cap, "no complete answer within %d ms", STATUS_TIMEOUT_MS);
        buf_destroy(&resp);
        goto out;
    }
    /* "HTTP/1.1 200 OK\r\n...\r\n\r\nbody" (the server closes after one answer). */
    const char *p = resp.data;
    size_t n = resp.len;
    const char *sep = NULL;
    for (size_t i = 0; i + 3 < n; i++) {
        if (memcmp(p + i, "\r\n\r\n", 4) == 0) {
            sep = p + i + 4;
            break;
        }
    }
    int code = 0;
    if (sep == NULL || n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || sscanf(p + 9, "%3d", &code) != 1) {
        snprintf(err, cap, "not an HTTP answer from %s:%d", host, port);
        buf_destroy(&resp);
        goto out;
    }
    buf_append(body, sep, n - (size_t)(sep - p));
    buf_destroy(&resp);
    status = code;
out:
    buf_destroy(&req);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return status;
}

static void status_usage(FILE *f)
{
    fprintf(f, "Usage: pgsteer status [-c FILE | --admin HOST:PORT] [--token TOKEN] [--tls]\n"
               "                      [--cacert FILE] [--cert FILE [--key FILE]] [--json]\n"
               "  -c, --config FILE     read admin_listen, admin_token and admin_tls from FILE\n"
               "  -a, --admin HOST:PORT the admin address (default 127.0.0.1:9930)\n"
               "  -t, --token TOKEN     bearer token (default: $PGSTEER_ADMIN_TOKEN)\n"
               "  -s, --tls             HTTPS (with -c: whenever admin_tls is not disable)\n"
               "  -C, --cacert FILE     HTTPS, the certificate checked against FILE's CAs\n"
               "  -e, --cert FILE       HTTPS, showing this client certificate (verify-ca)\n"
               "  -k, --key FILE        its private key (default: in --cert's file)\n"
               "  -j, --json            print the /status JSON document as it is\n");
}

int status_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"admin", required_argument, NULL, 'a'},
        {"token", required_argument, NULL, 't'},  {"json", no_argument, NULL, 'j'},
        {"tls", no_argument, NULL, 's'},          {"cacert", required_argument, NULL, 'C'},
        {"cert", required_argument, NULL, 'e'},   {"key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *admin = NULL, *token = getenv("PGSTEER_ADMIN_TOKEN");
    bool json = false;
    struct status_tls tls = {false, NULL, NULL, NULL};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:a:t:jsC:e:k:h", opts, NULL)) != -1) {
        switch (ch) {
        case 's':
            tls.on = true;
            break;
        case 'C':
            tls.on = true;
            tls.cafile = optarg;
            break;
        case 'e':
            tls.on = true;
            tls.certfile = optarg;
            break;
        case 'k':
            tls.keyfile = optarg;
            break;
        case 'c':
            path = optarg;
            break;
        case 'a':
            admin = optarg;
            break;
        case 't':
            token = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            status_usage(stdout);
            return 0;
        default:
            status_usage(stderr);
            return 2;
        }
    }
    if (optind < argc || (path && admin) || (tls.keyfile && !tls.certfile)) {
        status_usage(stderr);
        return 2;
    }
    struct config_addr addr = {"127.0.0.1", 9930};
    char *tok = token ? strdup(token) : NULL;
    if (path) {
        char *errors = NULL;
        struct config *cfg = config_load(path, &errors);
        if (cfg == NULL) {
            fputs(errors ? errors : "invalid configuration\n", stderr);
            free(errors);
            free(tok);
            return 1;
        }
        addr = cfg->admin_listen;
        if (cfg->admin_tls.mode != CLIENT_TLS_DISABLE)
            tls.on = true;
        if (cfg->admin_token && !token) {
            free(tok);
            tok = strdup(cfg->admin_token);
        }
        config_free(cfg);
    } else if (admin && config_parse_addr(admin, &addr) < 0) {
        fprintf(stderr, "pgsteer status: --admin wants HOST:PORT, got '%s'\n", admin);
        free(tok);
        return 2;
    }
    /* A wildcard listen address is reached on loopback. */
    if (strcmp(addr.host, "0.0.0.0") == 0)
        snprintf(addr.host, sizeof(addr.host), "127.0.0.1");
    else if (strcmp(addr.host, "::") == 0)
        snprintf(addr.host, sizeof(addr.host), "::1");
    struct buf body;
    buf_init(&body);
    char err[512];
    int code = http_get(addr.host, addr.port, &tls, "/status", tok, &body, err, sizeof(err));
    free(tok);
    int rc = 1;
    if (code < 0) {
        fprintf(stderr, "pgsteer status: %s\n", err);
    } else if (code != 200) {
        fprintf(stderr, "pgsteer status: %s:%d answered %d: %.*s", addr.host, addr.port, code,
                (int)buf_avail(&body), buf_head(&body));
    } else if (json) {
        fwrite(buf_head(&body), 1, buf_avail(&body), stdout);
        rc = 0;
    } else {
        struct json *j = json_parse(buf_head(&body), buf_avail(&body));
        struct buf out;
        buf_init(&out);
        if (j == NULL || status_render_table(j, &out) < 0) {
            fprintf(stderr, "pgsteer status: unexpected answer from %s:%d\n", addr.host, addr.port);
        } else {
            fwrite(buf_head(&out), 1, buf_avail(&out), stdout);
            rc = 0;
        }
        buf_destroy(&out);
        json_free(j);
    }
    buf_destroy(&body);
    return rc;
}
