/* SPDX-License-Identifier: MIT */
/* Unit tests for the growable buffer: growth policy, consumption and compaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"

static void test_buf_init_allocates_nothing(void **state)
{
    (void)state;
    struct buf b;
    memset(&b, 0x5a, sizeof(b));
    buf_init(&b);
    assert_null(b.data);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    assert_int_equal(buf_avail(&b), 0);
    buf_destroy(&b);
}

static void test_buf_reserve_starts_at_1k(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_reserve(&b, 1), 0);
    assert_non_null(b.data);
    assert_int_equal(b.cap, 1024);
    /* Already enough room: no change. */
    assert_int_equal(buf_reserve(&b, 1024), 0);
    assert_int_equal(b.cap, 1024);
    buf_destroy(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
}

static void test_buf_reserve_zero_allocates_initial(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_reserve(&b, 0), 0);
    assert_non_null(b.data);
    assert_int_equal(b.cap, 1024);
    buf_destroy(&b);
}

static void test_buf_reserve_doubles(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_reserve(&b, 16385), 0);
    assert_int_equal(b.cap, 32768);
    char x[100] = {0};
    assert_int_equal(buf_append(&b, x, sizeof(x)), 0);
    /* len 100 + 32669 = 32769 > 32768: one doubling. */
    assert_int_equal(buf_reserve(&b, 32669), 0);
    assert_int_equal(b.cap, 65536);
    assert_int_equal(buf_reserve(&b, 200000), 0);
    assert_int_equal(b.cap, 262144);
    assert_true(b.cap - b.len >= 200000);
    buf_destroy(&b);
}

static void test_buf_reserve_overflow_fails(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    char *before = b.data;
    assert_int_equal(buf_reserve(&b, SIZE_MAX), -1);
    assert_int_equal(buf_reserve(&b, SIZE_MAX - 2), -1);
    assert_ptr_equal(b.data, before);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "abc", 3);
    buf_destroy(&b);
}

static void test_buf_append_keeps_content_across_growth(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    char chunk[1000];
    for (int i = 0; i < 100; i++) {
        memset(chunk, 'a' + i % 26, sizeof(chunk));
        assert_int_equal(buf_append(&b, chunk, sizeof(chunk)), 0);
    }
    assert_int_equal(b.len, 100000);
    assert_int_equal(b.cap, 131072);
    for (int i = 0; i < 100; i++)
        assert_int_equal(b.data[i * 1000 + 999], 'a' + i % 26);
    buf_destroy(&b);
}

static void test_buf_append_empty_is_noop(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, NULL, 0), 0);
    assert_int_equal(b.len, 0);
    buf_destroy(&b);
}

static void test_buf_consume_partial_and_full(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "hello world", 11), 0);
    buf_consume(&b, 6);
    assert_int_equal(buf_avail(&b), 5);
    assert_memory_equal(buf_head(&b), "world", 5);
    assert_int_equal(b.off, 6);
    buf_consume(&b, 5);
    /* Fully consumed: rewound so the next append starts at 0. */
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_append(&b, "x", 1), 0);
    assert_ptr_equal(buf_head(&b), b.data);
    buf_destroy(&b);
}

static void test_buf_consume_more_than_available_clamps(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    buf_consume(&b, 10);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    buf_destroy(&b);
}

static void test_buf_compact_moves_unread_to_start(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "0123456789", 10), 0);
    buf_consume(&b, 7);
    buf_compact(&b);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "789", 3);
    /* Compacting a compact buffer changes nothing. */
    buf_compact(&b);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "789", 3);
    buf_destroy(&b);
}

static void test_buf_compact_empty(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    buf_compact(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_append(&b, "ab", 2), 0);
    /* Simulate a reader that advanced off without the auto-rewind. */
    b.off = 2;
    buf_compact(&b);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    buf_destroy(&b);
}

static void test_buf_reset_keeps_memory(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    char *p = b.data;
    buf_reset(&b);
    assert_int_equal(buf_avail(&b), 0);
    assert_ptr_equal(b.data, p);
    assert_int_equal(b.cap, 1024);
    buf_destroy(&b);
}

static void test_buf_printf_appends_formatted(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_printf(&b, "%s=%d", "n", 42), 0);
    assert_int_equal(buf_printf(&b, ",%05.1f", 2.25), 0);
    assert_int_equal(buf_avail(&b), 10);
    assert_memory_equal(buf_head(&b), "n=42,002.2", 10);
    /* longer than the initial capacity: grows */
    char big[3000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    assert_int_equal(buf_printf(&b, "%s", big), 0);
    assert_int_equal(buf_avail(&b), 10 + sizeof(big) - 1);
    buf_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_init_allocates_nothing),
        cmocka_unit_test(test_buf_reserve_starts_at_1k),
        cmocka_unit_test(test_buf_reserve_zero_allocates_initial),
        cmocka_unit_test(test_buf_reserve_doubles),
        cmocka_unit_test(test_buf_printf_appends_formatted),
        cmocka_unit_test(test_buf_reserve_overflow_fails),
        cmocka_unit_test(test_buf_append_keeps_content_across_growth),
        cmocka_unit_test(test_buf_append_empty_is_noop),
        cmocka_unit_test(test_buf_consume_partial_and_full),
        cmocka_unit_test(test_buf_consume_more_than_available_clamps),
        cmocka_unit_test(test_buf_compact_moves_unread_to_start),
        cmocka_unit_test(test_buf_compact_empty),
        cmocka_unit_test(test_buf_reset_keeps_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
