/* SPDX-License-Identifier: MIT */
/* Growable byte buffer with a read offset. Capacity doubles from 1 KiB, so a connection's
 * buffers reach their working size after a few messages and then stop allocating. */
#include "buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Small, so that ten thousand idle connections stay cheap; a busy buffer reaches its working
 * size after a few doublings and then stops allocating. */
#define BUF_INITIAL_CAP 1024u

void buf_init(struct buf *b)
{
    b->data = NULL;
    b->off = 0;
    b->len = 0;
    b->cap = 0;
}

void buf_destroy(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

int buf_reserve(struct buf *b, size_t need)
{
    if (b->cap - b->len >= need && b->data != NULL)
        return 0;
    if (need > SIZE_MAX - b->len)
        return -1;
    size_t want = b->len + need;
    size_t cap = b->cap ? b->cap : BUF_INITIAL_CAP;
    while (cap < want) {
        /* Doubling keeps appends amortised O(1); saturate rather than wrap. */
        if (cap > SIZE_MAX / 2) {
            cap = want;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    size_t avail = buf_avail(b);
    /* Consuming more than is stored is a caller bug; clamping keeps off <= len. */
    if (n > avail)
        n = avail;
    b->off += n;
    /* Rewinding an empty buffer lets the next read land at offset 0 without a memmove. */
    if (b->off == b->len)
        b->off = b->len = 0;
}

void buf_compact(struct buf *b)
{
    if (b->off == 0)
        return;
    size_t avail = buf_avail(b);
    if (avail > 0)
        memmove(b->data, b->data + b->off, avail);
    b->off = 0;
    b->len = avail;
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n + 1) < 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}
