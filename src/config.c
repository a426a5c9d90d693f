/* SPDX-License-Identifier: MIT */
/* Configuration loading: libyaml's event stream is read into a small tree that keeps each
 * node's position, and the tree is then checked against the schema. Every problem found is
 * collected as FILE:LINE:COL: message; a config is only returned when there are none. */

#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <yaml.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "auth.h"

/* A config file is a few kilobytes; the limits keep a hostile or corrupt file from costing
 * much memory or time, and keep the report readable. */
#define CONFIG_MAX_FILE_SIZE (16 * 1024 * 1024)
#define CONFIG_MAX_DEPTH     64
#define CONFIG_MAX_PROBLEMS  100
#define CONFIG_NAME_MAX      63 /* PostgreSQL's NAMEDATALEN - 1 */
#define CONFIG_MAX_WEIGHT    1000000

/* ---- YAML tree ---------------------------------------------------------------------------- */

enum ynode_type {
    YNODE_SCALAR = 0,
    YNODE_SEQ = 1,
    YNODE_MAP = 2,
    YNODE_BAD = 3, /* an alias or tagged value: already reported, skipped by every check */
};

struct ynode {
    enum ynode_type type;
    int line;   /* 1-based */
    int col;    /* 1-based */
    bool plain; /* plain (unquoted, untagged) scalar: may be null or an integer */
    char *str;  /* scalar text, NUL-terminated; may also contain NUL bytes (see len) */
    size_t len;
    struct ynode **items; /* sequence items, or a mapping's keys and values alternately */
    size_t n;
    size_t cap;
};

struct problem {
    int line;
    int col;
    size_t seq; /* discovery order, to keep the sort stable */
    char *msg;
    const char *file; /* another file than the configuration's (auth_file); NULL: that one */
};

struct ctx {
    const char *name;
    const char *file; /* while reading another file (auth_file): its name, for its problems */
    struct problem *probs;
    size_t nprobs;
    size_t cap;
    bool oom;
    bool truncated; /* more than CONFIG_MAX_PROBLEMS; see problems_join */
    int trunc_line; /* position of the first problem left out */
    int trunc_col;
};

static void add_problem(struct ctx *c, int line, int col, const char *msg)
{
    if (c->nprobs == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        struct problem *p = realloc(c->probs, cap * sizeof *p);
        if (!p) {
            c->oom = true;
            return;
        }
        c->probs = p;
        c->cap = cap;
    }
    char *m = strdup(msg);
    if (!m) {
        c->oom = true;
        return;
    }
    c->probs[c->nprobs] = (struct problem){line, col, c->nprobs, m, c->file};
    c->nprobs++;
}

static void report(struct ctx *c, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(struct ctx *c, int line, int col, const char *fmt, ...)
{
    if (c->nprobs >= CONFIG_MAX_PROBLEMS) {
        if (!c->truncated) {
            c->truncated = true;
            c->trunc_line = line;
            c->trunc_col = col;
        }
        return;
    }
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    add_problem(c, line, col, buf);
}

static void report_at(struct ctx *c, const struct ynode *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report_at(struct ctx *c, const struct ynode *n, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    report(c, n->line, n->col, "%s", buf);
}

static int cmp_problem(const void *a, const void *b)
{
    const struct problem *x = a, *y = b;
    if ((x->file != NULL) != (y->file != NULL)) /* the configuration's first */
        return x->file != NULL ? 1 : -1;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->col != y->col)
        return x->col < y->col ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Joins the problems, sorted by position, into one malloc'd string; NULL only when out of
 * memory. Frees the problems. */
static char *problems_join(struct ctx *c)
{
    if (c->nprobs > 1)
        qsort(c->probs, c->nprobs, sizeof *c->probs, cmp_problem);
    /* These two go last, whatever their position: they are about the report itself. */
    if (c->truncated) {
        char buf[96];
        snprintf(buf, sizeof buf, "too many problems; only %d are reported", CONFIG_MAX_PROBLEMS);
        add_problem(c, c->trunc_line, c->trunc_col, buf);
    }
    if (c->oom)
        add_problem(c, 1, 1, "out of memory");
    size_t total = 1;
    for (size_t i = 0; i < c->nprobs; i++)
        total +=
            strlen(c->probs[i].file ? c->probs[i].file : c->name) + strlen(c->probs[i].msg) + 32;
    char *out = malloc(total);
    size_t off = 0;
    for (size_t i = 0; i < c->nprobs; i++) {
        if (out)
            off += (size_t)snprintf(out + off, total - off, "%s:%d:%d: %s\n",
                                    c->probs[i].file ? c->probs[i].file : c->name, c->probs[i].line,
                                    c->probs[i].col, c->probs[i].msg);
        free(c->probs[i].msg);
    }
    if (out)
        out[off] = '\0';
    free(c->probs);
    c->probs = NULL;
    c->nprobs = c->cap = 0;
    return out;
}

static int to_pos(size_t v)
{
    return v >= (size_t)INT_MAX ? INT_MAX : (int)v + 1;
}

static struct ynode *ynode_new(struct ctx *c, enum ynode_type type, yaml_mark_t mark)
{
    struct ynode *n = calloc(1, sizeof *n);
    if (!n) {
        c->oom = true;
        return NULL;
    }
    n->type = type;
    n->line = to_pos(mark.line);
    n->col = to_pos(mark.column);
    return n;
}

static void ynode_free(struct ynode *n)
{
    if (!n)
        return;
    /* Recursion is bounded by CONFIG_MAX_DEPTH. */
    for (size_t i = 0; i < n->n; i++)
        ynode_free(n->items[i]);
    free(n->items);
    free(n->str);
    free(n);
}

static bool ynode_add(struct ctx *c, struct ynode *parent, struct ynode *child)
{
    if (parent->n == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 8;
        struct ynode **items = realloc(parent->items, cap * sizeof *items);
        if (!items) {
            c->oom = true;
            return false;
        }
        parent->items = items;
        parent->cap = cap;
    }
    parent->items[parent->n++] = child;
    return true;
}

/* Reader errors carry a byte offset rather than a mark. */
static void offset_to_pos(const char *text, size_t len, size_t off, int *line, int *col)
{
    size_t l = 1, cpos = 1;
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n') {
            l++;
            cpos = 1;
        } else {
            cpos++;
        }
    }
    *line = l > INT_MAX ? INT_MAX : (int)l;
    *col = cpos > INT_MAX ? INT_MAX : (int)cpos;
}

static void report_syntax(struct ctx *c, const yaml_parser_t *p, const char *text, size_t len)
{
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_MEMORY_ERROR) {
        c->oom = true;
    } else if (p->error == YAML_READER_ERROR) {
        int line, col;
        offset_to_pos(text, len, p->problem_offset, &line, &col);
        if (p->problem_value >= 0)
            report(c, line, col, "invalid input: %s (byte 0x%02x)", problem,
                   (unsigned)p->problem_value & 0xffu);
        else
            report(c, line, col, "invalid input: %s", problem);
    } else if (p->context) {
        report(c, to_pos(p->problem_mark.line), to_pos(p->problem_mark.column),
               "YAML syntax error: %s (%s at line %d, column %d)", problem, p->context,
               to_pos(p->context_mark.line), to_pos(p->context_mark.column));
    } else {
        report(c, to_pos(p->problem_mark.line), to_pos(p->problem_mark.column),
               "YAML syntax error: %s", problem);
    }
}

/* Tags other than !!str would change a value's meaning in ways the schema does not model. */
static bool check_tag(struct ctx *c, const yaml_char_t *tag, yaml_mark_t mark, bool is_scalar)
{
    if (!tag)
        return true;
    if (is_scalar && strcmp((const char *)tag, YAML_STR_TAG) == 0)
        return true;
    report(c, to_pos(mark.line), to_pos(mark.column), "YAML tags are not supported ('%.40s')",
           (const char *)tag);
    return false;
}

static void check_anchor(struct ctx *c, const yaml_char_t *anchor, yaml_mark_t mark)
{
    if (anchor)
        report(c, to_pos(mark.line), to_pos(mark.column),
               "YAML anchors are not supported ('&%.40s'); write the value out", anchor);
}

/* Reads the whole event stream into a tree. Returns the document's root node, or NULL when the
 * input is empty or could not be parsed (the problem is then reported). */
static struct ynode *parse_tree(struct ctx *c, const char *text, size_t len)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        c->oom = true;
        return NULL;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);

    struct ynode *stack[CONFIG_MAX_DEPTH];
    int depth = 0;
    struct ynode *root = NULL;
    int ndocs = 0;
    bool done = false, failed = false;

    while (!done && !failed && !c->oom) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            report_syntax(c, &p, text, len);
            failed = true;
            break;
        }
        struct ynode *n = NULL;
        bool push = false;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++ndocs > 1) {
                report(c, to_pos(ev.start_mark.line), to_pos(ev.start_mark.column),
                       "only one YAML document is allowed");
                failed = true;
            }
            break;
        case YAML_ALIAS_EVENT:
            report(c, to_pos(ev.start_mark.line), to_pos(ev.start_mark.column),
                   "YAML aliases are not supported ('*%.40s'); write the value out",
                   (const char *)ev.data.alias.anchor);
            n = ynode_new(c, YNODE_BAD, ev.start_mark);
            break;
        case YAML_SCALAR_EVENT:
            check_anchor(c, ev.data.scalar.anchor, ev.start_mark);
            n = ynode_new(c, YNODE_SCALAR, ev.start_mark);
            if (!n)
                break;
            if (!check_tag(c, ev.data.scalar.tag, ev.start_mark, true)) {
                n->type = YNODE_BAD;
                break;
            }
            n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !ev.data.scalar.tag;
            n->len = ev.data.scalar.length;
            n->str = malloc(n->len + 1);
            if (!n->str) {
                c->oom = true;
                break;
            }
            memcpy(n->str, ev.data.scalar.value, n->len);
            n->str[n->len] = '\0';
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            bool seq = ev.type == YAML_SEQUENCE_START_EVENT;
            const yaml_char_t *anchor =
                seq ? ev.data.sequence_start.anchor : ev.data.mapping_start.anchor;
            const yaml_char_t *tag = seq ? ev.data.sequence_start.tag : ev.data.mapping_start.tag;
            check_anchor(c, anchor, ev.start_mark);
            bool tag_ok = check_tag(c, tag, ev.start_mark, false);
            n = ynode_new(c, seq ? YNODE_SEQ : YNODE_MAP, ev.start_mark);
            if (n && !tag_ok)
                n->type = YNODE_BAD; /* children are still collected, then ignored */
            push = true;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0)
                depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        if (!n)
            continue;
        if (depth == 0) {
            if (root) /* cannot happen with one document; keep the first root */
                ynode_free(n);
            else
                root = n;
        } else if (!ynode_add(c, stack[depth - 1], n)) {
            ynode_free(n);
            break;
        }
        if (push) {
            if (depth == CONFIG_MAX_DEPTH) {
                report_at(c, n, "nesting is too deep (more than %d levels)", CONFIG_MAX_DEPTH);
                failed = true;
            } else {
                stack[depth++] = n;
            }
        }
    }
    yaml_parser_delete(&p);
    if (failed || c->oom) {
        ynode_free(root);
        return NULL;
    }
    return root;
}

/* ---- value checks ------------------------------------------------------------------------- */

static bool ynode_is_null(const struct ynode *n)
{
    if (n->type != YNODE_SCALAR || !n->plain)
        return false;
    return n->len == 0 || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0 ||
           strcmp(n->str, "Null") == 0 || strcmp(n->str, "NULL") == 0;
}

/* A short, printable rendering of a scalar for messages: control bytes become '?', long text
 * is cut at a character boundary. */
static const char *show(const struct ynode *n, char *buf, size_t size)
{
    size_t max = size - 4, len = n->len;
    bool cut = false;
    if (len > max) {
        len = max;
        while (len > 0 && ((unsigned char)n->str[len] & 0xc0) == 0x80)
            len--;
        cut = true;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)n->str[i];
        buf[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    memcpy(buf + len, cut ? "..." : "", cut ? 4 : 1);
    return buf;
}

/* Describes what was found where something else was expected. */
static const char *describe(const struct ynode *n, char *buf, size_t size)
{
    char tmp[48];
    switch (n->type) {
    case YNODE_SEQ:
        return "a list";
    case YNODE_MAP:
        return "a mapping";
    case YNODE_BAD:
        return "an unsupported value";
    case YNODE_SCALAR:
        break;
    }
    if (n->plain && n->len == 0)
        return "an empty value";
    if (ynode_is_null(n))
        return "null";
    if (n->plain)
        snprintf(buf, size, "'%s'", show(n, tmp, sizeof tmp));
    else
        snprintf(buf, size, "the string \"%s\"", show(n, tmp, sizeof tmp));
    return buf;
}

static void report_type(struct ctx *c, const struct ynode *v, const char *expected, const char *key)
{
    char d[80];
    report_at(c, v, "expected %s for '%s', got %s", expected, key, describe(v, d, sizeof d));
}

/* Returns 0 and *out; -1 when not a decimal integer; -2 on leading zeros (YAML 1.1 would read
 * them as octal, so they are refused rather than guessed); -3 when beyond int64_t. */
static int parse_decimal(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (len > 0 && s[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i == len)
        return -1;
    for (size_t j = i; j < len; j++)
        if (s[j] < '0' || s[j] > '9')
            return -1;
    if (s[i] == '0' && len - i > 1)
        return -2;
    int64_t v = 0;
    for (; i < len; i++) {
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return -3;
        v = v * 10 + d;
    }
    *out = neg ? -v : v;
    return 0;
}

static void report_range(struct ctx *c, const struct ynode *v, const char *key, int64_t min,
                         int64_t max)
{
    char tmp[48];
    if (max == INT_MAX || max == INT64_MAX)
        report_at(c, v, "'%s' must be at least %lld, got %s", key, (long long)min,
                  show(v, tmp, sizeof tmp));
    else
        report_at(c, v, "'%s' must be between %lld and %lld, got %s", key, (long long)min,
                  (long long)max, show(v, tmp, sizeof tmp));
}

static bool get_int(struct ctx *c, const struct ynode *v, const char *key, int64_t min, int64_t max,
                    int64_t *out)
{
    if (v->type == YNODE_BAD)
        return false;
    if (v->type != YNODE_SCALAR || !v->plain || ynode_is_null(v)) {
        report_type(c, v, "an integer", key);
        return false;
    }
    int64_t x = 0;
    int rc = parse_decimal(v->str, v->len, &x);
    char tmp[48];
    if (rc == -1) {
        report_type(c, v, "an integer", key);
        return false;
    }
    if (rc == -2) {
        report_at(c, v, "expected a decimal integer for '%s', got '%s' (no leading zeros)", key,
                  show(v, tmp, sizeof tmp));
        return false;
    }
    if (rc == -3 || x < min || x > max) {
        report_range(c, v, key, min, max);
        return false;
    }
    *out = x;
    return true;
}

static bool get_int32(struct ctx *c, const struct ynode *v, const char *key, int min, int max,
                      int *out)
{
    int64_t x;
    if (!get_int(c, v, key, min, max, &x))
        return false;
    *out = (int)x;
    return true;
}

/* An integer of bytes, or a string with a PostgreSQL-style unit (B, kB, MB, GB, TB; powers of
 * 1024; case-insensitive; a space may separate number and unit). */
static bool get_size(struct ctx *c, const struct ynode *v, const char *key, int64_t *out)
{
    static const struct {
        const char *unit;
        int shift;
    } units[] = {{"", 0}, {"b", 0}, {"kb", 10}, {"mb", 20}, {"gb", 30}, {"tb", 40}};
    if (v->type == YNODE_BAD)
        return false;
    if (v->type != YNODE_SCALAR || ynode_is_null(v)) {
        report_type(c, v, "an integer or a size such as '16MB'", key);
        return false;
    }
    size_t num = v->len && v->str[0] == '-' ? 1 : 0;
    while (num < v->len && v->str[num] >= '0' && v->str[num] <= '9')
        num++;
    size_t u = num;
    while (u < v->len && v->str[u] == ' ')
        u++;
    int shift = -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strlen(units[i].unit) == v->len - u &&
            strncasecmp(v->str + u, units[i].unit, v->len - u) == 0)
            shift = units[i].shift;
    }
    if (shift == 0 && u > num && u == v->len)
        shift = -1; /* trailing spaces without a unit */
    int64_t x = 0;
    int rc = shift < 0 ? -1 : parse_decimal(v->str, num, &x);
    char tmp[48];
    if (rc == -1) {
        report_at(c, v,
                  "invalid size for '%s': '%s' (expected an integer number of bytes or a "
                  "number with a unit: B, kB, MB, GB, TB)",
                  key, show(v, tmp, sizeof tmp));
        return false;
    }
    if (rc == -2) {
        report_at(c, v, "invalid size for '%s': '%s' (no leading zeros)", key,
                  show(v, tmp, sizeof tmp));
        return false;
    }
    if (rc == -3 || x < 0 || x > (INT64_MAX >> shift)) {
        report_range(c, v, key, 0, INT64_MAX);
        return false;
    }
    *out = x << shift;
    return true;
}

/* Any scalar is accepted as text (so `password: 1234` works), except null. */
static bool get_text(struct ctx *c, const struct ynode *v, const char *key, bool allow_empty,
                     char **out)
{
    if (v->type == YNODE_BAD)
        return false;
    if (v->type != YNODE_SCALAR || ynode_is_null(v)) {
        report_type(c, v, "a string", key);
        return false;
    }
    if (memchr(v->str, '\0', v->len)) {
        report_at(c, v, "'%s' must not contain a NUL character", key);
        return false;
    }
    if (v->len == 0 && !allow_empty) {
        report_at(c, v, "'%s' must not be empty", key);
        return false;
    }
    char *s = strdup(v->str);
    if (!s) {
        c->oom = true;
        return false;
    }
    free(*out);
    *out = s;
    return true;
}

static bool get_enum(struct ctx *c, const struct ynode *v, const char *key,
                     const char *const *names, size_t n, int *out)
{
    if (v->type == YNODE_BAD)
        return false;
    if (v->type == YNODE_SCALAR && !ynode_is_null(v)) {
        for (size_t i = 0; i < n; i++) {
            if (strlen(names[i]) == v->len && strcmp(names[i], v->str) == 0) {
                *out = (int)i;
                return true;
            }
        }
    }
    char list[160] = "", d[80];
    for (size_t i = 0; i < n; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", sep, names[i]);
    }
    report_at(c, v, "invalid value for '%s': %s (expected %s)", key, describe(v, d, sizeof d),
              list);
    return false;
}

static bool host_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '-' || ch == '_';
}

/* Parses "host:port" or "[v6]:port" into *a. Returns NULL, or why `s` is not an address. */
static const char *addr_parse(const char *s, struct config_addr *a)
{
    const char *host, *port;
    size_t hlen;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end)
            return "missing ']' after the IPv6 address";
        host = s + 1;
        hlen = (size_t)(end - host);
        if (end[1] != ':')
            return "expected ':' and a port after ']'";
        port = end + 2;
        if (hlen == 0)
            return "the host is empty";
        if (hlen >= sizeof a->host)
            return "the host is too long";
        char tmp[sizeof a->host];
        unsigned char bin[16];
        memcpy(tmp, host, hlen);
        tmp[hlen] = '\0';
        if (inet_pton(AF_INET6, tmp, bin) != 1)
            return "only an IPv6 address may be written in brackets";
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon)
            return "expected host:port";
        host = s;
        hlen = (size_t)(colon - s);
        port = colon + 1;
        if (memchr(s, ':', hlen))
            return "write an IPv6 address in brackets, as [::1]:6432";
        if (hlen == 0)
            return "the host is empty";
        if (hlen >= sizeof a->host)
            return "the host is too long";
        for (size_t i = 0; i < hlen; i++)
            if (!host_char_ok(host[i]))
                return "the host contains an invalid character";
    }
    size_t plen = strlen(port);
    long pv = 0;
    for (size_t i = 0; i < plen; i++)
        if (port[i] < '0' || port[i] > '9')
            plen = 0;
    if (plen > 0 && plen <= 5 && port[0] != '0')
        pv = strtol(port, NULL, 10);
    if (pv < 1 || pv > 65535)
        return "the port must be a number between 1 and 65535";
    memcpy(a->host, host, hlen);
    a->host[hlen] = '\0';
    a->port = (int)pv;
    return NULL;
}

int config_parse_addr(const char *s, struct config_addr *a)
{
    struct config_addr tmp;
    if (!s || !a || addr_parse(s, &tmp))
        return -1;
    *a = tmp;
    return 0;
}

/* listen and admin_listen are bound, so their host must be a numeric address. */
static bool get_listen_addr(struct ctx *c, const struct ynode *v, const char *key,
                            struct config_addr *a)
{
    char *s = NULL;
    if (!get_text(c, v, key, false, &s))
        return false;
    struct config_addr tmp;
    const char *why = addr_parse(s, &tmp);
    char t[48];
    if (why) {
        report_at(c, v, "invalid address for '%s': '%s' (%s)", key, show(v, t, sizeof t), why);
    } else {
        unsigned char bin[16];
        if (inet_pton(AF_INET, tmp.host, bin) != 1 && inet_pton(AF_INET6, tmp.host, bin) != 1) {
            report_at(c, v, "'%s' must be a numeric IP address and port, got '%s'", key,
                      show(v, t, sizeof t));
            why = "";
        } else {
            *a = tmp;
        }
    }
    free(s);
    return why == NULL;
}

int config_socket_path(const char *dir, int port, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/.s.PGSQL.%d", dir, port);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* A directory that holds (or will hold) PostgreSQL-style sockets named .s.PGSQL.PORT: absolute,
 * and short enough for the socket's path with any port to fit a sockaddr_un. */
static void check_socket_dir(struct ctx *c, const struct ynode *v, const char *key, const char *dir)
{
    char t[48];
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (dir[0] != '/')
        report_at(c, v, "'%s' must be an absolute directory path, got '%s'", key,
                  show(v, t, sizeof t));
    else if (config_socket_path(dir, 65535, path, sizeof path) < 0)
        report_at(c, v, "'%s' is too long for a socket path (at most %zu bytes)", key,
                  sizeof path - sizeof "/.s.PGSQL.65535");
}

/* Damerau-style edit distance (optimal string alignment) for "did you mean" hints: a swapped
 * pair of letters is one typo. Inputs are at most 64 bytes. */
static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb)
{
    unsigned short d[65][65];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (unsigned short)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (unsigned short)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            unsigned short best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

/* Keys of a nested mapping, to point out a key written one level too high. */
struct key_section {
    const char *name;
    const char *const *keys;
    size_t nkeys;
};

/* Splits mapping `map` into the values of the `nkeys` known keys (vals[i] NULL when absent;
 * keys[i] is the key node). Reports keys that are not scalars, unknown or repeated; `nested`
 * (`nnested` of them, may be NULL) name sections whose keys get a hint when found here. */
static void walk_map(struct ctx *c, const struct ynode *map, const char *const *names, size_t nkeys,
                     const struct key_section *nested, size_t nnested, const struct ynode **keys,
                     const struct ynode **vals)
{
    for (size_t i = 0; i < nkeys; i++)
        keys[i] = vals[i] = NULL;
    for (size_t p = 0; p + 1 < map->n; p += 2) {
        const struct ynode *k = map->items[p], *v = map->items[p + 1];
        char tmp[48];
        if (k->type == YNODE_BAD)
            continue;
        if (k->type != YNODE_SCALAR || ynode_is_null(k)) {
            char d[80];
            report_at(c, k, "expected a key name, got %s", describe(k, d, sizeof d));
            continue;
        }
        size_t idx = nkeys;
        for (size_t i = 0; i < nkeys; i++)
            if (strlen(names[i]) == k->len && strcmp(names[i], k->str) == 0)
                idx = i;
        if (idx < nkeys) {
            if (keys[idx])
                report_at(c, k, "duplicate key '%s' (first at line %d)", names[idx],
                          keys[idx]->line);
            else {
                keys[idx] = k;
                vals[idx] = v;
            }
            continue;
        }
        const char *hint = NULL;
        size_t best = SIZE_MAX;
        if (k->len <= 64) {
            for (size_t i = 0; i < nkeys; i++) {
                size_t dist = edit_distance(k->str, k->len, names[i], strlen(names[i]));
                size_t limit = strlen(names[i]) <= 4 ? 1 : 2;
                if (dist <= limit && dist < best) {
                    best = dist;
                    hint = names[i];
                }
            }
        }
        const char *section = NULL;
        for (size_t s = 0; s < nnested && !section; s++)
            for (size_t i = 0; i < nested[s].nkeys; i++)
                if (strlen(nested[s].keys[i]) == k->len && strcmp(nested[s].keys[i], k->str) == 0)
                    section = nested[s].name;
        if (hint)
            report_at(c, k, "unknown key '%s' (did you mean '%s'?)", show(k, tmp, sizeof tmp),
                      hint);
        else if (section)
            report_at(c, k, "unknown key '%s' (it belongs under '%s')", show(k, tmp, sizeof tmp),
                      section);
        else
            report_at(c, k, "unknown key '%s'", show(k, tmp, sizeof tmp));
    }
}

static void report_missing(struct ctx *c, const struct ynode *map, const char *key)
{
    report_at(c, map, "missing required key '%s'", key);
}

/* ---- sections ----------------------------------------------------------------------------- */

static bool name_ok(const char *s, size_t len)
{
    if (len < 1 || len > CONFIG_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!host_char_ok(s[i]))
            return false;
    return true;
}

/* users and admin_users. Entries that fail keep NULL fields; the config is discarded then. */
/* What is wrong with a user's password that is a SCRAM secret (SCRAM-SHA-256$...), or NULL:
 * it must be well formed and usable with auth_method `method`: MD5 cannot check it; for
 * `users` (`key`), trust leaves no key to log in to the nodes with (pgsteer logs in with the
 * ClientKey a client's SCRAM login proves). */
static const char *secret_problem(const char *key, const char *text, enum auth_method method)
{
    struct scram_secret sec;
    const char *why = NULL;
    if (!scram_is_secret(text))
        return NULL;
    if (scram_secret_parse(text, &sec) < 0)
        why = "'password' is not a valid SCRAM secret (expected "
              "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in "
              "pg_authid.rolpassword)";
    else if (method == AUTH_METHOD_MD5)
        why = "a SCRAM secret as 'password' needs auth_method scram-sha-256 (MD5 cannot be "
              "checked against it)";
    else if (method == AUTH_METHOD_TRUST && strcmp(key, "users") == 0)
        why = "a SCRAM secret as 'password' needs auth_method scram-sha-256 (pgsteer logs in "
              "to the nodes with the key a client's SCRAM login proves)";
    OPENSSL_cleanse(&sec, sizeof(sec));
    return why;
}

static void parse_users(struct ctx *c, const struct ynode *map, const struct ynode *v,
                        const char *key, bool required, enum auth_method method,
                        struct config_user **out, size_t *nout)
{
    bool allow_empty_password = method == AUTH_METHOD_TRUST;
    static const char *const names[] = {"name", "password"};
    if (!v) {
        if (required)
            report_missing(c, map, key);
        return;
    }
    /* An optional list with every entry commented out reads as null: that is an empty list. */
    if (!required && ynode_is_null(v))
        return;
    if (v->type != YNODE_SEQ) {
        if (v->type != YNODE_BAD)
            report_type(c, v, "a list", key);
        return;
    }
    if (v->n == 0) {
        if (required)
            report_at(c, v, "'%s' must have at least one entry", key);
        return;
    }
    *out = calloc(v->n, sizeof **out);
    int *lines = calloc(v->n, sizeof *lines);
    if (!*out || !lines) {
        free(lines);
        c->oom = true;
        return;
    }
    *nout = v->n;
    for (size_t i = 0; i < v->n; i++) {
        const struct ynode *e = v->items[i], *k[2], *val[2];
        struct config_user *u = &(*out)[i];
        if (e->type != YNODE_MAP) {
            if (e->type != YNODE_BAD) {
                char d[80];
                report_at(c, e,
                          "expected a mapping with name and password for each entry of "
                          "'%s', got %s",
                          key, describe(e, d, sizeof d));
            }
            continue;
        }
        walk_map(c, e, names, 2, NULL, 0, k, val);
        if (!val[0])
            report_missing(c, e, "name");
        else if (get_text(c, val[0], "name", false, &u->name)) {
            if (strlen(u->name) > CONFIG_NAME_MAX) {
                report_at(c, val[0], "'name' is longer than %d bytes", CONFIG_NAME_MAX);
            } else {
                for (size_t j = 0; j < i; j++) {
                    if ((*out)[j].name && strcmp((*out)[j].name, u->name) == 0) {
                        char t[48];
                        report_at(c, val[0], "duplicate user name '%s' in '%s' (first at line %d)",
                                  show(val[0], t, sizeof t), key, lines[j]);
                        break;
                    }
                }
            }
            lines[i] = val[0]->line;
        }
        const char *why = NULL;
        if (!val[1])
            report_missing(c, e, "password");
        else if (get_text(c, val[1], "password", true, &u->password) && !*u->password &&
                 !allow_empty_password)
            report_at(c, val[1], "'password' must not be empty unless auth_method is trust");
        else if (u->password && (why = secret_problem(key, u->password, method)))
            report_at(c, val[1], "%s", why);
    }
    free(lines);
}

/* Read the whole file `path` into *out (NUL-terminated, *len bytes). Returns 0, or an errno
 * value: the open's, or, with *in_read set, a read's; EFBIG past CONFIG_MAX_FILE_SIZE bytes,
 * ENOMEM. */
static int read_whole(const char *path, char **out, size_t *len, bool *in_read)
{
    *out = NULL;
    *len = 0;
    *in_read = false;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    int err = buf ? 0 : ENOMEM;
    *in_read = true;
    while (!err) {
        if (n == cap) {
            char probe;
            if (cap >= CONFIG_MAX_FILE_SIZE) { /* full: anything more is too much */
                err = fread(&probe, 1, 1, f) == 1 ? EFBIG : ferror(f) ? errno : 0;
                break;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                err = ENOMEM;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            err = ferror(f) ? (errno ? errno : EIO) : 0;
            break;
        }
    }
    fclose(f);
    if (err) {
        free(buf);
        return err;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

/* One quoted field of an auth_file line at *p (which is at its opening quote): the text up to
 * the closing quote, a doubled quote standing for one, into a new string; *p moves past it.
 * NULL when the line ends first (or out of memory, c->oom set). */
static char *auth_file_field(struct ctx *c, const char **p, const char *eol)
{
    const char *q = *p + 1;
    size_t n = 0;
    char *out = malloc((size_t)(eol - q) + 1);
    if (!out) {
        c->oom = true;
        return NULL;
    }
    for (; q < eol; q++) {
        if (*q == '"') {
            if (q + 1 < eol && q[1] == '"') {
                out[n++] = '"';
                q++;
                continue;
            }
            out[n] = 0;
            *p = q + 1;
            return out;
        }
        out[n++] = *q;
    }
    free(out);
    return NULL;
}

static bool is_md5_hash(const char *s)
{
    if (strncmp(s, "md5", 3) != 0 || strlen(s) != 35)
        return false;
    for (int i = 3; i < 35; i++)
        if (!strchr("0123456789abcdef", s[i]))
            return false;
    return true;
}

/* One line of an auth_file (line number ln, text [p, eol)) into a new user of cfg. */
static void auth_file_line(struct ctx *c, int ln, const char *line, const char *eol,
                           struct config *cfg, enum auth_method method)
{
    const char *p = line;
    while (p < eol && (*p == ' ' || *p == '\t'))
        p++;
    if (p == eol || *p == ';' || *p == '#' || (*p == '\r' && p + 1 == eol))
        return;
    char *field[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        if (k == 1) {
            const char *gap = p;
            while (p < eol && (*p == ' ' || *p == '\t'))
                p++;
            if (p == gap && p < eol) {
                report(c, ln, (int)(p - line) + 1, "expected a space before the password");
                goto out;
            }
        }
        if (p == eol || *p != '"') {
            report(c, ln, (int)(p - line) + 1,
                   "expected the %s in double quotes (lines are \"name\" \"password\")",
                   k == 0 ? "user name" : "password");
            goto out;
        }
        int col = (int)(p - line) + 1;
        if (!(field[k] = auth_file_field(c, &p, eol))) {
            if (!c->oom)
                report(c, ln, col, "the quoted %s does not end on its line",
                       k == 0 ? "user name" : "password");
            goto out;
        }
    }
    while (p < eol && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    if (p < eol) {
        report(c, ln, (int)(p - line) + 1, "unexpected text after the password");
        goto out;
    }
    const char *why = NULL;
    if (field[0][0] == 0 || strlen(field[0]) > CONFIG_NAME_MAX)
        why = "the user name must be 1 to 63 bytes";
    else if (config_find_user(cfg, field[0]))
        why = "duplicate user name (already in 'users' or earlier in the file)";
    else if (field[1][0] == 0 && method != AUTH_METHOD_TRUST)
        why = "the password must not be empty unless auth_method is trust";
    else if (is_md5_hash(field[1]))
        why = "an MD5 hash is not taken: give the password or its SCRAM secret";
    else
        why = secret_problem("users", field[1], method);
    if (why) {
        report(c, ln, 1, "%s", why);
        goto out;
    }
    struct config_user *u = realloc(cfg->users, (cfg->nusers + 1) * sizeof *u);
    if (!u) {
        c->oom = true;
        goto out;
    }
    cfg->users = u;
    cfg->users[cfg->nusers++] = (struct config_user){field[0], field[1]};
    return;
out:
    free(field[0]);
    free(field[1]);
}

/* auth_file (the value v): users from a file of `"name" "password"` lines, the format of
 * PgBouncer's userlist.txt (a quote inside a field doubled; lines that are empty or begin with
 * ';' or '#' skipped), each password plain or a SCRAM secret, after those of `users`. Its
 * problems are reported as AUTH_FILE:LINE:COL. */
static void parse_auth_file(struct ctx *c, const struct ynode *v, struct config *cfg,
                            enum auth_method method)
{
    if (!get_text(c, v, "auth_file", false, &cfg->auth_file))
        return;
    char *text;
    size_t len;
    bool in_read;
    int err = read_whole(cfg->auth_file, &text, &len, &in_read);
    if (err) {
        char t[256];
        report_at(c, v, "auth_file: cannot read '%s': %s", show(v, t, sizeof t),
                  err == EFBIG ? "larger than 16 MiB" : strerror(err));
        return;
    }
    c->file = cfg->auth_file;
    int ln = 1;
    for (const char *p = text; p < text + len; ln++) {
        const char *eol = memchr(p, '\n', (size_t)(text + len - p));
        if (!eol)
            eol = text + len;
        if (memchr(p, 0, (size_t)(eol - p)))
            report(c, ln, 1, "a NUL byte in the line");
        else
            auth_file_line(c, ln, p, eol, cfg, method);
        p = eol + 1;
    }
    c->file = NULL;
    OPENSSL_cleanse(text, len);
    free(text);
}

static const char *const role_names[] = {"primary", "replica"};

/* Parses one entry of nodes; *name_at and *role_at are the name and role value nodes (NULL
 * when absent), *role_ok whether the role was read. */
static void parse_node(struct ctx *c, const struct ynode *e, struct config_node *nd,
                       const struct ynode **name_at, const struct ynode **role_at, bool *role_ok)
{
    static const char *const names[] = {"name",   "host",         "port",         "role",
                                        "weight", "monitor_host", "monitor_port", "pooler"};
    enum { N_NAME, N_HOST, N_PORT, N_ROLE, N_WEIGHT, N_MHOST, N_MPORT, N_POOLER, N_COUNT };
    static const char *const pooler_names[] = {"none", "transaction"};
    const struct ynode *k[N_COUNT], *v[N_COUNT];
    walk_map(c, e, names, N_COUNT, NULL, 0, k, v);
    nd->weight = 1;
    *role_ok = false;
    *name_at = v[N_NAME];
    *role_at = v[N_ROLE];
    for (int i = N_NAME; i <= N_ROLE; i++)
        if (!v[i])
            report_missing(c, e, names[i]);
    if (v[N_NAME] && get_text(c, v[N_NAME], "name", false, &nd->name) &&
        !name_ok(nd->name, strlen(nd->name))) {
        char t[48];
        report_at(c, v[N_NAME],
                  "invalid node name '%s' (use 1 to %d letters, digits, '_', '.' or '-')",
                  show(v[N_NAME], t, sizeof t), CONFIG_NAME_MAX);
        free(nd->name);
        nd->name = NULL;
    }
    if (v[N_HOST] && get_text(c, v[N_HOST], "host", false, &nd->host) && nd->host[0] == '/')
        check_socket_dir(c, v[N_HOST], "host", nd->host);
    if (v[N_PORT])
        get_int32(c, v[N_PORT], "port", 1, 65535, &nd->port);
    int role = 0;
    if (v[N_ROLE] && get_enum(c, v[N_ROLE], "role", role_names, 2, &role)) {
        nd->role = (enum node_role)role;
        *role_ok = true;
    }
    if (v[N_WEIGHT])
        get_int32(c, v[N_WEIGHT], "weight", 0, CONFIG_MAX_WEIGHT, &nd->weight);
    if (v[N_MHOST])
        get_text(c, v[N_MHOST], "monitor_host", false, &nd->monitor_host);
    else if (nd->host && !(nd->monitor_host = strdup(nd->host)))
        c->oom = true;
    nd->monitor_port = nd->port;
    if (v[N_MPORT])
        get_int32(c, v[N_MPORT], "monitor_port", 1, 65535, &nd->monitor_port);
    int pooler = 0;
    if (v[N_POOLER] && get_enum(c, v[N_POOLER], "pooler", pooler_names, 2, &pooler))
        nd->pooled = pooler == 1;
}

static void parse_nodes(struct ctx *c, const struct ynode *map, const struct ynode *v,
                        struct config *cfg)
{
    if (!v) {
        report_missing(c, map, "nodes");
        return;
    }
    if (v->type != YNODE_SEQ) {
        if (v->type != YNODE_BAD)
            report_type(c, v, "a list", "nodes");
        return;
    }
    if (v->n == 0) {
        report_at(c, v, "'nodes' must have at least one entry");
        return;
    }
    if (v->n > CONFIG_MAX_NODES)
        report_at(c, v, "too many nodes (%zu; at most %d)", v->n, CONFIG_MAX_NODES);
    cfg->nodes = calloc(v->n, sizeof *cfg->nodes);
    int *lines = calloc(v->n, sizeof *lines);
    if (!cfg->nodes || !lines) {
        free(lines);
        c->oom = true;
        return;
    }
    cfg->nnodes = v->n;
    cfg->primary = -1;
    bool roles_known = true;
    for (size_t i = 0; i < v->n; i++) {
        const struct ynode *e = v->items[i], *name_at = NULL, *role_at = NULL;
        struct config_node *nd = &cfg->nodes[i];
        if (e->type != YNODE_MAP) {
            if (e->type != YNODE_BAD) {
                char d[80];
                report_at(c, e, "expected a mapping for each entry of 'nodes', got %s",
                          describe(e, d, sizeof d));
            }
            roles_known = false;
            continue;
        }
        bool role_ok;
        parse_node(c, e, nd, &name_at, &role_at, &role_ok);
        roles_known = roles_known && role_ok;
        lines[i] = name_at ? name_at->line : e->line;
        if (nd->name) {
            for (size_t j = 0; j < i; j++) {
                if (cfg->nodes[j].name && strcmp(cfg->nodes[j].name, nd->name) == 0) {
                    report_at(c, name_at, "duplicate node name '%s' (first at line %d)", nd->name,
                              lines[j]);
                    break;
                }
            }
        }
        if (role_ok && nd->role == NODE_PRIMARY) {
            if (cfg->primary < 0) {
                cfg->primary = (int)i;
            } else {
                const char *first = cfg->nodes[cfg->primary].name;
                report_at(c, role_at,
                          "more than one node has role primary (the first is '%s', line %d)",
                          first ? first : "?", lines[cfg->primary]);
            }
        }
    }
    /* A node whose role could not be read might be the primary: do not guess. */
    if (cfg->primary < 0 && roles_known)
        report_at(c, v, "no node has role primary; exactly one is required");
    free(lines);
}

static bool function_name_ok(const char *s)
{
    size_t len = strlen(s);
    if (len < 1 || len > CONFIG_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
        bool digit = (ch >= '0' && ch <= '9') || ch == '$';
        if (!alpha && !(digit && i > 0))
            return false;
    }
    return true;
}

static void parse_write_functions(struct ctx *c, const struct ynode *v, struct config *cfg)
{
    if (ynode_is_null(v))
        return; /* every entry commented out */
    if (v->type != YNODE_SEQ) {
        if (v->type != YNODE_BAD)
            report_type(c, v, "a list", "write_functions");
        return;
    }
    if (v->n == 0)
        return;
    cfg->write_functions = calloc(v->n, sizeof *cfg->write_functions);
    if (!cfg->write_functions) {
        c->oom = true;
        return;
    }
    cfg->nwrite_functions = v->n;
    for (size_t i = 0; i < v->n; i++) {
        const struct ynode *e = v->items[i];
        char **fn = &cfg->write_functions[i];
        char t[48];
        if (!get_text(c, e, "write_functions", false, fn))
            continue;
        if (!function_name_ok(*fn)) {
            report_at(c, e,
                      "invalid function name '%s' in 'write_functions' (letters, digits, '_' "
                      "and '$', not starting with a digit, at most %d; no schema)",
                      show(e, t, sizeof t), CONFIG_NAME_MAX);
            continue;
        }
        for (char *p = *fn; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        for (size_t j = 0; j < i; j++) {
            if (cfg->write_functions[j] && strcmp(cfg->write_functions[j], *fn) == 0) {
                report_at(c, e, "duplicate function '%s' in 'write_functions' (first at line %d)",
                          *fn, v->items[j]->line);
                break;
            }
        }
    }
}

static const char *const monitor_keys[] = {"interval_ms",        "max_lag_bytes",  "max_lag_ms",
                                           "connect_timeout_ms", "recover_checks", "user",
                                           "password",           "dbname"};

static void parse_monitor(struct ctx *c, const struct ynode *root, const struct ynode *v,
                          struct config *cfg)
{
    enum { M_INTERVAL, M_LAG_BYTES, M_LAG_MS, M_CONNECT, M_RECOVER, M_USER, M_PASS, M_DB, M_N };
    struct config_monitor *m = &cfg->monitor;
    const struct ynode *k[M_N], *val[M_N];
    for (int i = 0; i < M_N; i++)
        k[i] = val[i] = NULL;
    if (v && !ynode_is_null(v)) { /* null: every setting commented out */
        if (v->type != YNODE_MAP) {
            if (v->type != YNODE_BAD)
                report_type(c, v, "a mapping", "monitor");
            return;
        }
        walk_map(c, v, monitor_keys, M_N, NULL, 0, k, val);
    }
    if (val[M_INTERVAL])
        get_int32(c, val[M_INTERVAL], "interval_ms", 10, 60000, &m->interval_ms);
    if (val[M_LAG_BYTES])
        get_size(c, val[M_LAG_BYTES], "max_lag_bytes", &m->max_lag_bytes);
    if (val[M_LAG_MS])
        get_int32(c, val[M_LAG_MS], "max_lag_ms", 0, INT_MAX, &m->max_lag_ms);
    if (val[M_CONNECT])
        get_int32(c, val[M_CONNECT], "connect_timeout_ms", 1, INT_MAX, &m->connect_timeout_ms);
    if (val[M_RECOVER])
        get_int32(c, val[M_RECOVER], "recover_checks", 1, INT_MAX, &m->recover_checks);
    if (val[M_DB])
        get_text(c, val[M_DB], "dbname", false, &m->dbname);
    bool user_ok = true;
    if (val[M_USER])
        user_ok = get_text(c, val[M_USER], "user", false, &m->user);
    if (val[M_PASS])
        get_text(c, val[M_PASS], "password", true, &m->password);

    /* Defaults: the first user, and the password of whichever user the monitor logs in as. */
    if (!val[M_USER] && cfg->nusers > 0 && cfg->users[0].name &&
        !(m->user = strdup(cfg->users[0].name)))
        c->oom = true;
    if (!val[M_PASS] && m->user) {
        const struct config_user *u = config_find_user(cfg, m->user);
        if (u && scram_is_secret(u->password)) {
            report_at(c, v && !ynode_is_null(v) ? v : root,
                      "missing required key 'monitor.password' (monitor user '%s' has a SCRAM "
                      "secret in 'users', with which the monitor cannot log in)",
                      m->user);
        } else if (u && u->password) {
            if (!(m->password = strdup(u->password)))
                c->oom = true;
        } else if (val[M_USER] && user_ok) {
            report_at(c, v, "missing required key 'password' (monitor user '%s' is not in 'users')",
                      m->user);
        }
    }
}

static const char *const auth_query_keys[] = {"query", "user", "password", "dbname", "cache_ms"};

#define AUTH_QUERY_DEFAULT "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"

/* auth_query: after users, auth_file and monitor, whose values its defaults take. */
static void parse_auth_query(struct ctx *c, const struct ynode *v, struct config *cfg)
{
    enum { Q_QUERY, Q_USER, Q_PASS, Q_DB, Q_CACHE, Q_N };
    struct config_auth_query *q = &cfg->auth_query;
    const struct ynode *k[Q_N], *val[Q_N];
    for (int i = 0; i < Q_N; i++)
        k[i] = val[i] = NULL;
    if (!ynode_is_null(v)) { /* null: every setting commented out, the defaults apply */
        if (v->type != YNODE_MAP) {
            if (v->type != YNODE_BAD)
                report_type(c, v, "a mapping", "auth_query");
            return;
        }
        walk_map(c, v, auth_query_keys, Q_N, NULL, 0, k, val);
    }
    q->enabled = true;
    q->cache_ms = 60000;
    if (cfg->monitor.user == NULL)
        report_at(c, v,
                  "auth_query: no user to default monitor.user to: set monitor.user and "
                  "monitor.password");
    if (cfg->auth_method != AUTH_METHOD_SCRAM)
        report_at(c, v,
                  "auth_query needs auth_method: scram-sha-256 (the secrets it finds can only "
                  "check a SCRAM login)");
    if (val[Q_QUERY]) {
        if (get_text(c, val[Q_QUERY], "query", false, &q->query) && !strstr(q->query, "$1"))
            report_at(c, val[Q_QUERY], "auth_query.query must use the user's name as $1");
    } else if (!(q->query = strdup(AUTH_QUERY_DEFAULT))) {
        c->oom = true;
    }
    if (val[Q_CACHE])
        get_int32(c, val[Q_CACHE], "cache_ms", 0, INT_MAX, &q->cache_ms);
    const char *db = cfg->monitor.dbname ? cfg->monitor.dbname : "postgres";
    if (val[Q_DB])
        get_text(c, val[Q_DB], "dbname", false, &q->dbname);
    else if (!(q->dbname = strdup(db)))
        c->oom = true;
    bool user_ok = true;
    if (val[Q_USER])
        user_ok = get_text(c, val[Q_USER], "user", false, &q->user);
    else if (cfg->monitor.user && !(q->user = strdup(cfg->monitor.user)))
        c->oom = true;
    else if (!cfg->monitor.user)
        return; /* (reported above) */
    if (val[Q_PASS]) {
        get_text(c, val[Q_PASS], "password", true, &q->password);
        return;
    }
    if (!user_ok)
        return;
    const char *pw = NULL;
    if (cfg->monitor.user && strcmp(q->user, cfg->monitor.user) == 0) {
        pw = cfg->monitor.password;
    } else {
        const struct config_user *u = config_find_user(cfg, q->user);
        if (u && scram_is_secret(u->password)) {
            report_at(c, v,
                      "missing required key 'password' (auth_query user '%s' has a SCRAM secret "
                      "in 'users', with which it cannot log in)",
                      q->user);
            return;
        }
        pw = u ? u->password : NULL;
    }
    if (pw == NULL) {
        report_at(c, v, "missing required key 'password' (auth_query user '%s' is not in 'users')",
                  q->user);
        return;
    }
    if (!(q->password = strdup(pw)))
        c->oom = true;
}

static const char *const tls_mode_names[] = {"disable", "prefer", "require", "verify-ca",
                                             "verify-full"};
static const char *const server_tls_keys[] = {"mode",     "ca_file",      "cert_file", "key_file",
                                              "crl_file", "min_protocol", "ciphers"};
static const char *const tls_protocol_names[] = {"TLSv1.2", "TLSv1.3"};

const char *config_tls_mode_name(enum tls_mode m)
{
    size_t i = (size_t)m;
    return i < sizeof tls_mode_names / sizeof tls_mode_names[0] ? tls_mode_names[i] : "?";
}

/* A file read to set up TLS to the nodes: it must be readable now, so that a wrong path or
 * permission shows at load (or reload) rather than as failing connections later. */
static void get_tls_file(struct ctx *c, const struct ynode *v, const char *key, char **out)
{
    if (!get_text(c, v, key, false, out))
        return;
    int err = 0;
    struct stat st;
    if (access(*out, R_OK) != 0)
        err = errno;
    else if (stat(*out, &st) == 0 && S_ISDIR(st.st_mode))
        err = EISDIR;
    char t[256];
    if (err)
        report_at(c, v, "%s: cannot read '%s': %s", key, show(v, t, sizeof t), strerror(err));
}

/* The lowest TLS version (`key`: "server_tls.min_protocol", ...) into *out (12 or 13), and an
 * OpenSSL cipher list into *ciphers, which OpenSSL must take (a list that selects no cipher, or
 * names none it knows, is refused here rather than at start). Either value may be NULL. */
static void get_tls_protocol(struct ctx *c, const struct ynode *minp, const char *minp_key,
                             const struct ynode *ciph, const char *ciph_key, int *out,
                             char **ciphers)
{
    int e = 0;
    *out = 12;
    if (minp && get_enum(c, minp, minp_key, tls_protocol_names, 2, &e))
        *out = 12 + e;
    if (!ciph || !get_text(c, ciph, ciph_key, false, ciphers))
        return;
    SSL_CTX *s = SSL_CTX_new(TLS_method());
    if (s == NULL) {
        c->oom = true;
        return;
    }
    if (SSL_CTX_set_cipher_list(s, *ciphers) != 1) {
        char t[80];
        report_at(c, ciph, "%s: OpenSSL knows no cipher in '%s' (see `openssl ciphers`)", ciph_key,
                  show(ciph, t, sizeof t));
    }
    ERR_clear_error();
    SSL_CTX_free(s);
}

static void parse_server_tls(struct ctx *c, const struct ynode *v, struct config *cfg)
{
    enum { T_MODE, T_CA, T_CERT, T_KEY, T_CRL, T_MINP, T_CIPH, T_N };
    struct config_tls *t = &cfg->server_tls;
    const struct ynode *k[T_N], *val[T_N];
    if (!v || ynode_is_null(v)) /* null: every setting commented out */
        return;
    if (v->type != YNODE_MAP) {
        if (v->type != YNODE_BAD)
            report_type(c, v, "a mapping", "server_tls");
        return;
    }
    walk_map(c, v, server_tls_keys, T_N, NULL, 0, k, val);
    int e = 0;
    bool mode_ok = false;
    if (val[T_MODE] &&
        (mode_ok = get_enum(c, val[T_MODE], "server_tls.mode", tls_mode_names, 5, &e)))
        t->mode = (enum tls_mode)e;
    if (val[T_CA])
        get_tls_file(c, val[T_CA], "server_tls.ca_file", &t->ca_file);
    if (val[T_CERT])
        get_tls_file(c, val[T_CERT], "server_tls.cert_file", &t->cert_file);
    if (val[T_KEY])
        get_tls_file(c, val[T_KEY], "server_tls.key_file", &t->key_file);
    if (val[T_CRL])
        get_tls_file(c, val[T_CRL], "server_tls.crl_file", &t->crl_file);
    get_tls_protocol(c, val[T_MINP], "server_tls.min_protocol", val[T_CIPH], "server_tls.ciphers",
                     &t->min_protocol, &t->ciphers);

    /* Verifying the node's certificate needs the CAs to verify it against. */
    if (mode_ok && (t->mode == TLS_MODE_VERIFY_CA || t->mode == TLS_MODE_VERIFY_FULL) && !val[T_CA])
        report_at(c, val[T_MODE],
                  "'server_tls.ca_file' is required when 'server_tls.mode' is %s (the CA "
                  "certificates to check the node's certificate against)",
                  tls_mode_names[t->mode]);
    /* A client certificate is useless without its key, and the reverse. */
    if (val[T_CERT] && !val[T_KEY])
        report_at(c, val[T_CERT],
                  "'server_tls.cert_file' needs 'server_tls.key_file' (give both or neither)");
    if (val[T_KEY] && !val[T_CERT])
        report_at(c, val[T_KEY],
                  "'server_tls.key_file' needs 'server_tls.cert_file' (give both or neither)");
}

static const char *const client_tls_mode_names[] = {"disable", "allow", "require", "verify-ca",
                                                    "verify-full"};
static const char *const client_tls_keys[] = {"mode",    "cert_file", "key_file", "min_protocol",
                                              "ciphers", "ca_file",   "crl_file"};

const char *config_client_tls_mode_name(enum client_tls_mode m)
{
    size_t i = (size_t)m;
    return i < sizeof client_tls_mode_names / sizeof client_tls_mode_names[0]
               ? client_tls_mode_names[i]
               : "?";
}

/* client_tls, or admin_tls (named by `key`) into t: the TLS pgsteer serves, with the first
 * nmodes of client_tls_mode_names (admin_tls: all but verify-full, which names a user the
 * admin port's HTTP side does not have). */
static void parse_served_tls(struct ctx *c, const struct ynode *v, const char *key, size_t nmodes,
                             struct config_client_tls *t)
{
    enum { T_MODE, T_CERT, T_KEY, T_MINP, T_CIPH, T_CA, T_CRL, T_N };
    const struct ynode *k[T_N] = {NULL}, *val[T_N] = {NULL};
    if (!v || ynode_is_null(v)) /* null: every setting commented out */
        return;
    if (v->type != YNODE_MAP) {
        if (v->type != YNODE_BAD)
            report_type(c, v, "a mapping", key);
        return;
    }
    walk_map(c, v, client_tls_keys, T_N, NULL, 0, k, val);
    char name[T_N][32];
    for (int i = 0; i < T_N; i++)
        snprintf(name[i], sizeof name[i], "%s.%s", key, client_tls_keys[i]);
    int e = 0;
    bool mode_ok = false;
    if (val[T_MODE] &&
        (mode_ok = get_enum(c, val[T_MODE], name[T_MODE], client_tls_mode_names, nmodes, &e)))
        t->mode = (enum client_tls_mode)e;
    if (val[T_CERT])
        get_tls_file(c, val[T_CERT], name[T_CERT], &t->cert_file);
    if (val[T_KEY])
        get_tls_file(c, val[T_KEY], name[T_KEY], &t->key_file);
    if (val[T_CA])
        get_tls_file(c, val[T_CA], name[T_CA], &t->ca_file);
    if (val[T_CRL])
        get_tls_file(c, val[T_CRL], name[T_CRL], &t->crl_file);
    get_tls_protocol(c, val[T_MINP], name[T_MINP], val[T_CIPH], name[T_CIPH], &t->min_protocol,
                     &t->ciphers);

    /* Serving TLS needs pgsteer's own certificate and key. */
    bool serving = mode_ok && t->mode != CLIENT_TLS_DISABLE;
    if (serving) {
        if (!val[T_CERT])
            report_at(c, val[T_MODE],
                      "'%s' is required when '%s' is %s (the certificate pgsteer shows its "
                      "clients)",
                      name[T_CERT], name[T_MODE], client_tls_mode_names[t->mode]);
        if (!val[T_KEY])
            report_at(c, val[T_MODE], "'%s' is required when '%s' is %s (the private key of %s)",
                      name[T_KEY], name[T_MODE], client_tls_mode_names[t->mode], name[T_CERT]);
    }
    if (mode_ok && t->mode >= CLIENT_TLS_VERIFY_CA && !val[T_CA])
        report_at(c, val[T_MODE],
                  "'%s' is required when '%s' is %s (the CA certificates to check the clients' "
                  "certificates against)",
                  name[T_CA], name[T_MODE], client_tls_mode_names[t->mode]);
    if (val[T_CERT] && !val[T_KEY] && !serving)
        report_at(c, val[T_CERT], "'%s' needs '%s' (give both or neither)", name[T_CERT],
                  name[T_KEY]);
    if (val[T_KEY] && !val[T_CERT] && !serving)
        report_at(c, val[T_KEY], "'%s' needs '%s' (give both or neither)", name[T_KEY],
                  name[T_CERT]);
}

static const char *const auth_names[] = {"scram-sha-256", "md5", "trust"};
static const char *const consistency_names[] = {"session", "eventual", "strong"};
static const char *const fallback_names[] = {"primary", "error"};
static const char *const read_balance_names[] = {"session", "statement"};
static const char *const cpu_affinity_names[] = {"off", "auto"};
static const char *const on_off_names[] = {"off", "on"};
static const char *const log_level_names[] = {"debug", "info", "warning", "error"};

static void parse_root(struct ctx *c, const struct ynode *root, struct config *cfg)
{
    static const char *const names[] = {"listen",
                                        "unix_socket_dir",
                                        "admin_listen",
                                        "auth_method",
                                        "users",
                                        "admin_users",
                                        "admin_token",
                                        "auth_file",
                                        "auth_query",
                                        "nodes",
                                        "write_functions",
                                        "monitor",
                                        "server_tls",
                                        "client_tls",
                                        "admin_tls",
                                        "consistency",
                                        "fallback",
                                        "read_balance",
                                        "multiplex_reads",
                                        "multiplex_stall_ms",
                                        "cache_unnamed_statements",
                                        "prepare_simple_queries",
                                        "defer_begin",
                                        "max_client_conn",
                                        "workers",
                                        "cpu_affinity",
                                        "busy_poll_us",
                                        "shutdown_timeout_ms",
                                        "client_login_timeout_ms",
                                        "connect_timeout_ms",
                                        "backend_idle_max",
                                        "backend_idle_timeout_ms",
                                        "backend_lifetime_ms",
                                        "tcp_keepalive",
                                        "tcp_keepalive_idle_s",
                                        "tcp_keepalive_interval_s",
                                        "tcp_keepalive_count",
                                        "log_level",
                                        "log_format"};
    enum {
        K_LISTEN,
        K_UNIX_DIR,
        K_ADMIN_LISTEN,
        K_AUTH,
        K_USERS,
        K_ADMIN_USERS,
        K_ADMIN_TOKEN,
        K_AUTH_FILE,
        K_AUTH_QUERY,
        K_NODES,
        K_WRITE_FUNCTIONS,
        K_MONITOR,
        K_SERVER_TLS,
        K_CLIENT_TLS,
        K_ADMIN_TLS,
        K_CONSISTENCY,
        K_FALLBACK,
        K_READ_BALANCE,
        K_MULTIPLEX,
        K_MULTIPLEX_STALL,
        K_CACHE_UNNAMED,
        K_PREPARE_SIMPLE,
        K_DEFER_BEGIN,
        K_MAX_CLIENT_CONN,
        K_WORKERS,
        K_CPU_AFFINITY,
        K_BUSY_POLL,
        K_SHUTDOWN,
        K_LOGIN_TIMEOUT,
        K_CONNECT,
        K_IDLE_MAX,
        K_IDLE_TIMEOUT,
        K_LIFETIME,
        K_KEEPALIVE,
        K_KEEPALIVE_IDLE,
        K_KEEPALIVE_INTERVAL,
        K_KEEPALIVE_COUNT,
        K_LOG_LEVEL,
        K_LOG_FORMAT,
        K_COUNT
    };
    _Static_assert(K_COUNT == sizeof names / sizeof names[0], "key table");
    const struct ynode *k[K_COUNT], *v[K_COUNT];
    static const struct key_section nested[] = {
        {"monitor", monitor_keys, sizeof monitor_keys / sizeof monitor_keys[0]},
        {"auth_query", auth_query_keys, sizeof auth_query_keys / sizeof auth_query_keys[0]},
        {"server_tls", server_tls_keys, sizeof server_tls_keys / sizeof server_tls_keys[0]},
        {"client_tls", client_tls_keys, sizeof client_tls_keys / sizeof client_tls_keys[0]},
        {"admin_tls", client_tls_keys, sizeof client_tls_keys / sizeof client_tls_keys[0]},
    };
    walk_map(c, root, names, K_COUNT, nested, sizeof nested / sizeof nested[0], k, v);

    /* Sections are read in this order, not the file's: whether an empty password is allowed
     * depends on auth_method, and the monitor's defaults on users. */
    int e = 0;
    if (v[K_LISTEN])
        get_listen_addr(c, v[K_LISTEN], "listen", &cfg->listen);
    if (v[K_UNIX_DIR] &&
        get_text(c, v[K_UNIX_DIR], "unix_socket_dir", true, &cfg->unix_socket_dir)) {
        if (cfg->unix_socket_dir[0] == '\0') { /* empty: no socket, as when absent */
            free(cfg->unix_socket_dir);
            cfg->unix_socket_dir = NULL;
        } else {
            check_socket_dir(c, v[K_UNIX_DIR], "unix_socket_dir", cfg->unix_socket_dir);
        }
    }
    if (v[K_ADMIN_LISTEN])
        get_listen_addr(c, v[K_ADMIN_LISTEN], "admin_listen", &cfg->admin_listen);
    if (v[K_AUTH] && get_enum(c, v[K_AUTH], "auth_method", auth_names, 3, &e))
        cfg->auth_method = (enum auth_method)e;
    parse_users(c, root, v[K_USERS], "users", !v[K_AUTH_FILE] && !v[K_AUTH_QUERY], cfg->auth_method,
                &cfg->users, &cfg->nusers);
    if (v[K_AUTH_FILE]) {
        parse_auth_file(c, v[K_AUTH_FILE], cfg, cfg->auth_method);
        if (cfg->nusers == 0 && cfg->auth_file && c->nprobs == 0 && !v[K_AUTH_QUERY])
            report_at(c, v[K_AUTH_FILE], "no user: neither 'users' nor auth_file '%s' names one",
                      cfg->auth_file);
    }
    parse_users(c, root, v[K_ADMIN_USERS], "admin_users", false, cfg->auth_method,
                &cfg->admin_users, &cfg->nadmin_users);
    if (v[K_ADMIN_TOKEN])
        get_text(c, v[K_ADMIN_TOKEN], "admin_token", false, &cfg->admin_token);
    parse_nodes(c, root, v[K_NODES], cfg);
    if (v[K_WRITE_FUNCTIONS])
        parse_write_functions(c, v[K_WRITE_FUNCTIONS], cfg);
    parse_monitor(c, root, v[K_MONITOR], cfg);
    if (v[K_AUTH_QUERY])
        parse_auth_query(c, v[K_AUTH_QUERY], cfg);
    parse_server_tls(c, v[K_SERVER_TLS], cfg);
    parse_served_tls(c, v[K_CLIENT_TLS], "client_tls", 5, &cfg->client_tls);
    parse_served_tls(c, v[K_ADMIN_TLS], "admin_tls", 4, &cfg->admin_tls);
    if (v[K_CONSISTENCY] && get_enum(c, v[K_CONSISTENCY], "consistency", consistency_names, 3, &e))
        cfg->consistency = (enum consistency)e;
    if (v[K_FALLBACK] && get_enum(c, v[K_FALLBACK], "fallback", fallback_names, 2, &e))
        cfg->fallback = (enum fallback)e;
    if (v[K_READ_BALANCE] &&
        get_enum(c, v[K_READ_BALANCE], "read_balance", read_balance_names, 2, &e))
        cfg->read_balance = (enum read_balance)e;
    if (v[K_MAX_CLIENT_CONN])
        get_int32(c, v[K_MAX_CLIENT_CONN], "max_client_conn", 1, 1000000, &cfg->max_client_conn);
    if (v[K_WORKERS])
        get_int32(c, v[K_WORKERS], "workers", 1, CONFIG_MAX_WORKERS, &cfg->workers);
    if (v[K_CPU_AFFINITY] &&
        get_enum(c, v[K_CPU_AFFINITY], "cpu_affinity", cpu_affinity_names, 2, &e))
        cfg->cpu_affinity = (enum cpu_affinity)e;
    if (v[K_BUSY_POLL])
        get_int32(c, v[K_BUSY_POLL], "busy_poll_us", 0, CONFIG_MAX_BUSY_POLL_US,
                  &cfg->busy_poll_us);
    if (v[K_SHUTDOWN])
        get_int32(c, v[K_SHUTDOWN], "shutdown_timeout_ms", 0, INT_MAX, &cfg->shutdown_timeout_ms);
    if (v[K_LOGIN_TIMEOUT])
        get_int32(c, v[K_LOGIN_TIMEOUT], "client_login_timeout_ms", 0, INT_MAX,
                  &cfg->client_login_timeout_ms);
    if (v[K_CONNECT])
        get_int32(c, v[K_CONNECT], "connect_timeout_ms", 1, INT_MAX, &cfg->connect_timeout_ms);
    if (v[K_IDLE_MAX])
        get_int32(c, v[K_IDLE_MAX], "backend_idle_max", 0, 100000, &cfg->backend_idle_max);
    if (v[K_IDLE_TIMEOUT])
        get_int32(c, v[K_IDLE_TIMEOUT], "backend_idle_timeout_ms", 1, INT_MAX,
                  &cfg->backend_idle_timeout_ms);
    if (v[K_LIFETIME])
        get_int32(c, v[K_LIFETIME], "backend_lifetime_ms", 0, INT_MAX, &cfg->backend_lifetime_ms);
    if (v[K_KEEPALIVE] && get_enum(c, v[K_KEEPALIVE], "tcp_keepalive", on_off_names, 2, &e))
        cfg->tcp_keepalive = e == 1;
    if (v[K_MULTIPLEX] && get_enum(c, v[K_MULTIPLEX], "multiplex_reads", on_off_names, 2, &e))
        cfg->multiplex_reads = e == 1;
    if (v[K_CACHE_UNNAMED] &&
        get_enum(c, v[K_CACHE_UNNAMED], "cache_unnamed_statements", on_off_names, 2, &e))
        cfg->cache_unnamed_statements = e == 1;
    if (v[K_PREPARE_SIMPLE] &&
        get_enum(c, v[K_PREPARE_SIMPLE], "prepare_simple_queries", on_off_names, 2, &e))
        cfg->prepare_simple_queries = e == 1;
    if (v[K_DEFER_BEGIN] && get_enum(c, v[K_DEFER_BEGIN], "defer_begin", on_off_names, 2, &e))
        cfg->defer_begin = e == 1;
    if (v[K_MULTIPLEX_STALL])
        get_int32(c, v[K_MULTIPLEX_STALL], "multiplex_stall_ms", 0, INT_MAX,
                  &cfg->multiplex_stall_ms);
    if (v[K_KEEPALIVE_IDLE])
        get_int32(c, v[K_KEEPALIVE_IDLE], "tcp_keepalive_idle_s", 1, CONFIG_MAX_KEEPALIVE_S,
                  &cfg->tcp_keepalive_idle_s);
    if (v[K_KEEPALIVE_INTERVAL])
        get_int32(c, v[K_KEEPALIVE_INTERVAL], "tcp_keepalive_interval_s", 1, CONFIG_MAX_KEEPALIVE_S,
                  &cfg->tcp_keepalive_interval_s);
    if (v[K_KEEPALIVE_COUNT])
        get_int32(c, v[K_KEEPALIVE_COUNT], "tcp_keepalive_count", 1, CONFIG_MAX_KEEPALIVE_COUNT,
                  &cfg->tcp_keepalive_count);
    if (v[K_LOG_LEVEL] && get_enum(c, v[K_LOG_LEVEL], "log_level", log_level_names, 4, &e)) {
        free(cfg->log_level);
        if (!(cfg->log_level = strdup(log_level_names[e])))
            c->oom = true;
    }
    static const char *const log_format_names[] = {"text", "json"};
    if (v[K_LOG_FORMAT] && get_enum(c, v[K_LOG_FORMAT], "log_format", log_format_names, 2, &e))
        cfg->log_json = e == 1;
}

static void set_defaults(struct ctx *c, struct config *cfg)
{
    config_parse_addr("127.0.0.1:6432", &cfg->listen);
    config_parse_addr("127.0.0.1:9930", &cfg->admin_listen);
    /* There is always an admin listener: admin_listen has a default. */
    cfg->has_admin_listen = true;
    cfg->auth_method = AUTH_METHOD_SCRAM;
    cfg->primary = -1;
    cfg->monitor.interval_ms = 100;
    cfg->monitor.max_lag_bytes = 16 * 1024 * 1024;
    cfg->monitor.max_lag_ms = 1000;
    cfg->monitor.connect_timeout_ms = 1000;
    cfg->monitor.recover_checks = 3;
    cfg->server_tls.mode = TLS_MODE_DISABLE;
    cfg->client_tls.mode = CLIENT_TLS_DISABLE;
    cfg->consistency = CONSISTENCY_SESSION;
    cfg->fallback = FALLBACK_PRIMARY;
    cfg->read_balance = READ_BALANCE_SESSION;
    cfg->max_client_conn = 10000;
    cfg->workers = 0;
    cfg->cpu_affinity = CPU_AFFINITY_OFF;
    cfg->shutdown_timeout_ms = 30000;
    cfg->client_login_timeout_ms = 60000;
    cfg->connect_timeout_ms = 5000;
    cfg->backend_idle_max = 20;
    cfg->multiplex_stall_ms = 10;
    cfg->cache_unnamed_statements = true;
    cfg->prepare_simple_queries = true;
    cfg->defer_begin = true;
    cfg->backend_idle_timeout_ms = 60000;
    cfg->backend_lifetime_ms = 3600000;
    cfg->tcp_keepalive = true;
    cfg->tcp_keepalive_idle_s = 60;
    cfg->tcp_keepalive_interval_s = 10;
    cfg->tcp_keepalive_count = 6;
    cfg->monitor.dbname = strdup("postgres");
    cfg->log_level = strdup("info");
    if (!cfg->monitor.dbname || !cfg->log_level)
        c->oom = true;
}

/* ---- public ------------------------------------------------------------------------------- */

static struct config *finish(struct ctx *c, struct config *cfg, char **errors)
{
    if (c->nprobs == 0 && !c->oom && cfg)
        return cfg;
    char *joined = problems_join(c);
    if (errors)
        *errors = joined;
    else
        free(joined);
    config_free(cfg);
    return NULL;
}

struct config *config_parse(const char *name, const char *text, size_t len, char **errors)
{
    struct ctx c = {.name = name ? name : "<config>"};
    if (errors)
        *errors = NULL;
    if (!text)
        len = 0;
    struct config *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        c.oom = true;
    else if (!(cfg->path = strdup(c.name)))
        c.oom = true;
    else
        set_defaults(&c, cfg);
    if (c.oom)
        return finish(&c, cfg, errors);

    struct ynode *root = parse_tree(&c, text ? text : "", len);
    if (!root) {
        if (c.nprobs == 0 && !c.oom)
            report(&c, 1, 1, "the configuration is empty");
    } else if (root->type == YNODE_BAD) {
        /* already reported */
    } else if (ynode_is_null(root)) {
        report(&c, 1, 1, "the configuration is empty");
    } else if (root->type != YNODE_MAP) {
        char d[80];
        report_at(&c, root, "expected a mapping of settings at the top level, got %s",
                  describe(root, d, sizeof d));
    } else {
        parse_root(&c, root, cfg);
    }
    ynode_free(root);
    return finish(&c, cfg, errors);
}

struct config *config_load(const char *path, char **errors)
{
    struct ctx c = {.name = path ? path : "<config>"};
    if (errors)
        *errors = NULL;
    char *buf = NULL;
    size_t len = 0;
    bool in_read = false;
    int err = path ? read_whole(path, &buf, &len, &in_read) : ENOENT;
    if (err == ENOMEM)
        c.oom = true;
    else if (err == EFBIG)
        report(&c, 1, 1, "the file is larger than %d bytes", CONFIG_MAX_FILE_SIZE);
    else if (err && in_read)
        report(&c, 1, 1, "cannot read the file: %s", strerror(err));
    else if (err)
        report(&c, 1, 1, "cannot open the file: %s", path ? strerror(err) : "no path");
    if (err)
        return finish(&c, NULL, errors);
    struct config *cfg = config_parse(path, buf, len, errors);
    free(buf);
    return cfg;
}

static void free_users(struct config_user *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(u[i].name);
        free(u[i].password);
    }
    free(u);
}

void config_free(struct config *c)
{
    if (!c)
        return;
    free(c->path);
    free_users(c->users, c->nusers);
    free_users(c->admin_users, c->nadmin_users);
    free(c->admin_token);
    for (size_t i = 0; i < c->nnodes; i++) {
        free(c->nodes[i].name);
        free(c->nodes[i].host);
        free(c->nodes[i].monitor_host);
    }
    free(c->unix_socket_dir);
    free(c->nodes);
    for (size_t i = 0; i < c->nwrite_functions; i++)
        free(c->write_functions[i]);
    free(c->write_functions);
    free(c->monitor.user);
    free(c->monitor.password);
    free(c->monitor.dbname);
    free(c->auth_query.query);
    free(c->auth_query.user);
    free(c->auth_query.password);
    free(c->auth_query.dbname);
    free(c->server_tls.ca_file);
    free(c->server_tls.cert_file);
    free(c->server_tls.key_file);
    free(c->server_tls.crl_file);
    free(c->server_tls.ciphers);
    free(c->client_tls.cert_file);
    free(c->client_tls.key_file);
    free(c->client_tls.ca_file);
    free(c->client_tls.crl_file);
    free(c->client_tls.ciphers);
    free(c->admin_tls.ciphers);
    free(c->admin_tls.cert_file);
    free(c->admin_tls.key_file);
    free(c->admin_tls.ca_file);
    free(c->admin_tls.crl_file);
    free(c->log_level);
    free(c->auth_file);
    free(c);
}

static const struct config_user *find_user(const struct config_user *u, size_t n, const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (u[i].name && strcmp(u[i].name, name) == 0)
            return &u[i];
    return NULL;
}

const struct config_user *config_find_user(const struct config *c, const char *name)
{
    return c ? find_user(c->users, c->nusers, name) : NULL;
}

const struct config_user *config_find_admin_user(const struct config *c, const char *name)
{
    return c ? find_user(c->admin_users, c->nadmin_users, name) : NULL;
}
