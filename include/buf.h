/* SPDX-License-Identifier: MIT */
/* Growable byte buffer with a read offset. Owned by whoever embeds it; memory is
 * reused across messages, so the hot path does not allocate once a buffer is warm. */
#ifndef PGSTEER_BUF_H
#define PGSTEER_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    char *data;
    size_t off; /* first unread byte */
    size_t len; /* bytes stored, off <= len <= cap */
    size_t cap;
};

/* Zero the struct; no allocation until first use. */
void buf_init(struct buf *b);
/* Release memory; the buffer may be reused after buf_init. */
void buf_destroy(struct buf *b);
/* Ensure at least `need` free bytes after len. Returns 0, or -1 when out of memory. */
int buf_reserve(struct buf *b, size_t need);
/* Append bytes. Returns 0 or -1 (out of memory; buffer unchanged). */
int buf_append(struct buf *b, const void *p, size_t n);
/* Bytes not yet consumed. */
static inline size_t buf_avail(const struct buf *b)
{
    return b->len - b->off;
}
static inline const char *buf_head(const struct buf *b)
{
    return b->data + b->off;
}
/* Append printf-style formatted text (no NUL is kept). Returns 0 or -1 (out of memory or a
 * formatting error; the buffer is unchanged). */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Mark n bytes consumed; resets to empty when everything is consumed. */
void buf_consume(struct buf *b, size_t n);
/* Move unread bytes to the start, so that reads can append after them. */
void buf_compact(struct buf *b);
/* Drop all content, keep memory. */
static inline void buf_reset(struct buf *b)
{
    b->off = b->len = 0;
}

#endif
