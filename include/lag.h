/* SPDX-License-Identifier: MIT */
/* Replica lag arithmetic and the eviction state machine. Pure: no I/O, no clock reads
 * (callers pass times in), so every rule is unit tested with exact numbers. */
#ifndef PGSTEER_LAG_H
#define PGSTEER_LAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t lsn_t; /* a WAL position, "X/Y" on the wire: (X << 32) | Y */
#define LSN_INVALID ((lsn_t)0)

/* Parse "16/B374D848" (hex, case-insensitive, each part 1..8 hex digits). Returns 0 and sets
 * *out, or -1 when malformed. `len` bytes of s are read; s need not be NUL-terminated. */
int lsn_parse(const char *s, size_t len, lsn_t *out);
/* Format as "X/Y" upper-case hex into out (at least 18 bytes); returns the length. */
int lsn_format(lsn_t lsn, char *out, size_t cap);
/* a - b when a >= b, else 0: lag never goes negative (a replica briefly ahead of a stale
 * primary sample is not behind). */
uint64_t lsn_diff(lsn_t a, lsn_t b);

/* History of (primary LSN, time sampled) pairs, newest last, fixed capacity (no allocation).
 * Used to answer "when was the primary at LSN x?" for time lag on an idle primary. */
#define LAG_HISTORY 1024
struct lag_history {
    lsn_t lsn[LAG_HISTORY];
    int64_t at_ms[LAG_HISTORY];
    size_t head; /* index of the oldest entry */
    size_t count;
};
void lag_history_init(struct lag_history *h);
/* Record the primary at `lsn` at time `at_ms`. A sample with the same LSN as the newest entry
 * is not added (an idle primary does not fill the history). */
void lag_history_add(struct lag_history *h, lsn_t lsn, int64_t at_ms);
/* Time lag in ms of a replica that has replayed `replay` when the primary's newest sample is
 * the history's newest entry: 0 when replay >= newest LSN; otherwise now_ms minus the time of
 * the oldest sample whose LSN is greater than `replay` (the first moment the primary was ahead
 * of the replica); when even the oldest retained sample is ahead, now_ms minus that sample's
 * time (a lower bound). Never negative. */
int64_t lag_history_time_lag(const struct lag_history *h, lsn_t replay, int64_t now_ms);

/* Eviction state of one replica, with hysteresis. */
enum lag_state { LAG_UP = 0, LAG_LAGGING = 1, LAG_DOWN = 2 };
struct lag_fsm {
    enum lag_state state;
    int good_rounds; /* consecutive healthy rounds while not UP */
};
struct lag_limits {
    int64_t max_lag_bytes;
    int64_t max_lag_ms;
    int recover_checks;
};
/* Feed one monitor round: `answered` false when the node did not answer (-> DOWN at once);
 * otherwise over either limit -> LAGGING at once; back to UP only after recover_checks
 * consecutive healthy rounds. Returns true when the state changed; writes a one-line reason
 * ("lag 48 MB > 16 MB", "lag 1200 ms > 1000 ms", "not answering", "lag 0 B") into reason. */
bool lag_fsm_step(struct lag_fsm *f, const struct lag_limits *lim, bool answered, int64_t lag_bytes,
                  int64_t lag_ms, char *reason, size_t cap);

/* Human-readable byte count: "0 B", "512 kB", "48 MB", "1.5 GB". Returns length. */
int lag_format_bytes(int64_t bytes, char *out, size_t cap);

#endif
