/* SPDX-License-Identifier: MIT */
/* Logging to stderr, one write(2) per line so lines from the loop and the monitor thread
 * never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Set by a reload on the main thread, read by every thread. */
static atomic_int min_level = LOG_INFO;
static atomic_int as_json = 0;
static const char *const level_names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
static const char *const level_words[] = {"debug", "info", "warning", "error"};

void log_set_json(int json)
{
    atomic_store_explicit(&as_json, json ? 1 : 0, memory_order_relaxed);
}

void log_set_level(enum log_level level)
{
    atomic_store_explicit(&min_level, (int)level, memory_order_relaxed);
}

int log_enabled(enum log_level level)
{
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

int log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    }
    return -1;
}

/* The length of the UTF-8 sequence at p (n bytes left), or 0 when it is not one (overlong,
 * a surrogate, beyond U+10FFFF, cut short). */
static int utf8_len(const unsigned char *p, size_t n)
{
    int len;
    unsigned cp;
    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF)
        len = 2, cp = p[0] & 0x1Fu;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF)
        len = 3, cp = p[0] & 0x0Fu;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4)
        len = 4, cp = p[0] & 0x07u;
    else
        return 0;
    if ((size_t)len > n)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3Fu);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

/* Append msg JSON-escaped to out[*n..limit), stopping before a piece that would not fit. */
static void json_escape(char *out, int *n, int limit, const char *msg)
{
    const unsigned char *p = (const unsigned char *)msg;
    size_t left = strlen(msg);
    while (left > 0) {
        char esc[8];
        const char *piece = esc;
        int plen;
        int u = utf8_len(p, left);
        if (u == 0) {
            piece = "\\ufffd", plen = 6, u = 1;
        } else if (p[0] == '"' || p[0] == '\\') {
            esc[0] = '\\', esc[1] = (char)p[0], plen = 2;
        } else if (p[0] < 0x20 || p[0] == 0x7F) {
            plen = snprintf(esc, sizeof(esc), "\\u%04x", p[0]);
        } else {
            piece = (const char *)p, plen = u;
        }
        if (*n + plen > limit)
            return;
        memcpy(out + *n, piece, (size_t)plen);
        *n += plen;
        p += u;
        left -= (size_t)u;
    }
}

int log_format_line(char *out, int cap, int json, long long sec, int msec, enum log_level level,
                    const char *msg)
{
    time_t t = (time_t)sec;
    struct tm tm;
    int n;
    if (json) {
        gmtime_r(&t, &tm);
        n = (int)strftime(out, (size_t)cap, "{\"time\":\"%Y-%m-%dT%H:%M:%S", &tm);
        n += snprintf(out + n, (size_t)(cap - n), ".%03dZ\",\"level\":\"%s\",\"message\":\"", msec,
                      level_words[level]);
        json_escape(out, &n, cap - 3, msg);
        out[n++] = '"';
        out[n++] = '}';
    } else {
        localtime_r(&t, &tm);
        n = (int)strftime(out, (size_t)cap, "%Y-%m-%d %H:%M:%S", &tm);
        n += snprintf(out + n, (size_t)(cap - n), ".%03d %s ", msec, level_names[level]);
        int m = snprintf(out + n, (size_t)(cap - n), "%s", msg);
        n += m < 0 ? 0 : m;
        if (n > cap - 1)
            n = cap - 1;
    }
    out[n++] = '\n';
    return n;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char msg[1024], line[1200];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (m < 0)
        msg[0] = 0;
    int n = log_format_line(line, (int)sizeof(line),
                            atomic_load_explicit(&as_json, memory_order_relaxed),
                            (long long)tv.tv_sec, (int)(tv.tv_usec / 1000), level, msg);
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
