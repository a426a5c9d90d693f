/* SPDX-License-Identifier: MIT */
/* Logging: one line per event to stderr, with a timestamp and level. Thread-safe (each line is
 * written with one write(2) call). */
#ifndef PGSTEER_LOG_H
#define PGSTEER_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARNING = 2, LOG_ERROR = 3 };

/* Set the minimum level written; default LOG_INFO. Any thread (a reload sets it). */
void log_set_level(enum log_level level);
/* Write lines as JSON objects (true) or as text (false, the default). Any thread. */
void log_set_json(int json);
/* Format one line into out[cap] (at least 64 bytes): text, "2026-11-25 11:00:00.123 LEVEL
 * message" with the local time, or JSON, {"time":"2026-11-25T10:00:00.123Z","level":"info",
 * "message":"..."} with UTC, the message escaped (control characters, quotes, backslashes, and
 * bytes that are not UTF-8 as U+FFFD). Cut to fit, always ending with a newline. Returns the
 * length. Pure: the time is given (seconds, milliseconds). */
int log_format_line(char *out, int cap, int json, long long sec, int msec, enum log_level level,
                    const char *msg);
/* Parse "debug"/"info"/"warning"/"error"; returns the level or -1. */
int log_parse_level(const char *s);
/* Write one line (log_format_line). Lines longer than 1 KiB are cut. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* True when lines of `level` are written: log_debug costs one load when debug is off, and its
 * arguments are not evaluated. */
int log_enabled(enum log_level level);
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG))                                                                \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
