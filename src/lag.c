/* SPDX-License-Identifier: MIT */
/* Replica lag arithmetic (WAL positions, the primary's LSN history for time lag) and the
 * eviction state machine with hysteresis. Pure: the monitor thread passes every time in. */
#include "lag.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One half of "X/Y": 1..8 hex digits, nothing else. */
static int parse_half(const char *s, size_t len, uint32_t *out)
{
    if (len < 1 || len > 8)
        return -1;
    uint32_t v = 0;
    for (size_t i = 0; i < len; i++) {
        int d = hex_value(s[i]);
        if (d < 0)
            return -1;
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return 0;
}

int lsn_parse(const char *s, size_t len, lsn_t *out)
{
    if (s == NULL)
        return -1;
    const char *slash = memchr(s, '/', len);
    if (slash == NULL)
        return -1;
    size_t hi_len = (size_t)(slash - s);
    uint32_t hi, lo;
    if (parse_half(s, hi_len, &hi) < 0 || parse_half(slash + 1, len - hi_len - 1, &lo) < 0)
        return -1;
    *out = ((lsn_t)hi << 32) | lo;
    return 0;
}

int lsn_format(lsn_t lsn, char *out, size_t cap)
{
    return snprintf(out, cap, "%" PRIX32 "/%" PRIX32, (uint32_t)(lsn >> 32), (uint32_t)lsn);
}

uint64_t lsn_diff(lsn_t a, lsn_t b)
{
    return a >= b ? a - b : 0;
}

void lag_history_init(struct lag_history *h)
{
    memset(h, 0, sizeof(*h));
}

static size_t slot(const struct lag_history *h, size_t i)
{
    return (h->head + i) % LAG_HISTORY;
}

void lag_history_add(struct lag_history *h, lsn_t lsn, int64_t at_ms)
{
    if (h->count > 0) {
        lsn_t newest = h->lsn[slot(h, h->count - 1)];
        if (lsn == newest)
            return;
        /* A primary never moves backwards; a smaller LSN means a different server now
         * answers as the primary, and the old samples say nothing about its WAL. */
        if (lsn < newest)
            lag_history_init(h);
    }
    if (h->count == LAG_HISTORY) {
        /* Full: the oldest sample makes room. Time lag for a replica behind every retained
         * sample becomes a lower bound (see lag_history_time_lag). */
        h->head = slot(h, 1);
        h->count--;
    }
    size_t i = slot(h, h->count);
    h->lsn[i] = lsn;
    h->at_ms[i] = at_ms;
    h->count++;
}

int64_t lag_history_time_lag(const struct lag_history *h, lsn_t replay, int64_t now_ms)
{
    if (h->count == 0 || replay >= h->lsn[slot(h, h->count - 1)])
        return 0;
    /* LSNs in the ring are strictly increasing from oldest to newest, so the first sample
     * ahead of the replica is found by binary search. The newest is ahead (checked above). */
    size_t lo = 0, hi = h->count - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (h->lsn[slot(h, mid)] > replay)
            hi = mid;
        else
            lo = mid + 1;
    }
    int64_t lag = now_ms - h->at_ms[slot(h, lo)];
    return lag > 0 ? lag : 0;
}

int lag_format_bytes(int64_t bytes, char *out, size_t cap)
{
    /* Binary units with the customary short names. An exact multiple of the unit is shown
     * as an integer ("48 MB"); anything else gets one decimal, truncated rather than rounded,
     * so that a value just over a limit never prints as the limit itself ("16.0 MB > 16 MB"
     * rather than "16 MB > 16 MB"). Values beyond the GB range stay in GB. */
    static const char *const units[] = {"B", "kB", "MB", "GB"};
    const char *sign = "";
    uint64_t v = (uint64_t)bytes;
    if (bytes < 0) {
        sign = "-";
        v = 0 - v;
    }
    int u = 0;
    uint64_t unit = 1;
    while (u < 3 && v >= unit * 1024) {
        unit *= 1024;
        u++;
    }
    uint64_t whole = v / unit, rest = v % unit;
    if (rest == 0)
        return snprintf(out, cap, "%s%" PRIu64 " %s", sign, whole, units[u]);
    return snprintf(out, cap, "%s%" PRIu64 ".%" PRIu64 " %s", sign, whole, rest * 10 / unit,
                    units[u]);
}

/* The first limit a healthy-looking answer breaks, as a reason text; false when none. */
static bool over_limit(const struct lag_limits *lim, int64_t lag_bytes, int64_t lag_ms,
                       char *reason, size_t cap)
{
    if (lag_bytes > lim->max_lag_bytes) {
        char have[32], max[32];
        lag_format_bytes(lag_bytes, have, sizeof(have));
        lag_format_bytes(lim->max_lag_bytes, max, sizeof(max));
        snprintf(reason, cap, "lag %s > %s", have, max);
        return true;
    }
    if (lag_ms > lim->max_lag_ms) {
        snprintf(reason, cap, "lag %" PRId64 " ms > %" PRId64 " ms", lag_ms, lim->max_lag_ms);
        return true;
    }
    return false;
}

bool lag_fsm_step(struct lag_fsm *f, const struct lag_limits *lim, bool answered, int64_t lag_bytes,
                  int64_t lag_ms, char *reason, size_t cap)
{
    if (!answered) {
        snprintf(reason, cap, "not answering");
        f->good_rounds = 0;
        if (f->state == LAG_DOWN)
            return false;
        f->state = LAG_DOWN;
        return true;
    }
    if (over_limit(lim, lag_bytes, lag_ms, reason, cap)) {
        /* Leaving UP is immediate: serving stale reads costs more than a missed replica.
         * A DOWN node that answers again but lags is LAGGING: the better description. */
        f->good_rounds = 0;
        if (f->state == LAG_LAGGING)
            return false;
        f->state = LAG_LAGGING;
        return true;
    }
    char have[32];
    lag_format_bytes(lag_bytes, have, sizeof(have));
    snprintf(reason, cap, "lag %s", have);
    if (f->state == LAG_UP)
        return false;
    /* Coming back needs recover_checks consecutive healthy rounds so that a replica hovering
     * around a limit does not flap in and out of the read set every round. A round needs at
     * least itself to count, hence the minimum of one. */
    f->good_rounds++;
    int need = lim->recover_checks > 1 ? lim->recover_checks : 1;
    if (f->good_rounds < need)
        return false;
    f->state = LAG_UP;
    f->good_rounds = 0;
    return true;
}
