/* SPDX-License-Identifier: MIT */
/* Unit tests for lag.c: LSN text form, lag arithmetic, the primary's LSN history and the
 * eviction state machine, all with exact numbers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lag.h"

static int parse(const char *s, lsn_t *out)
{
    return lsn_parse(s, strlen(s), out);
}

static void test_lsn_parse_valid(void **state)
{
    (void)state;
    lsn_t v = 1;
    assert_int_equal(parse("16/B374D848", &v), 0);
    assert_true(v == (((lsn_t)0x16 << 32) | 0xB374D848u));
    assert_int_equal(parse("0/0", &v), 0);
    assert_true(v == 0);
    assert_int_equal(parse("0/1", &v), 0);
    assert_true(v == 1);
    assert_int_equal(parse("FFFFFFFF/FFFFFFFF", &v), 0);
    assert_true(v == UINT64_MAX);
    /* lower case and mixed case are accepted */
    assert_int_equal(parse("16/b374d848", &v), 0);
    assert_true(v == (((lsn_t)0x16 << 32) | 0xB374D848u));
    assert_int_equal(parse("aB/Cd", &v), 0);
    assert_true(v == (((lsn_t)0xAB << 32) | 0xCD));
    /* leading zeros within 8 digits */
    assert_int_equal(parse("00000001/00000002", &v), 0);
    assert_true(v == (((lsn_t)1 << 32) | 2));
}

static void test_lsn_parse_uses_len_only(void **state)
{
    (void)state;
    lsn_t v = 0;
    /* not NUL-terminated: only `len` bytes count */
    const char buf[] = {'1', '/', '2', '3', 'x', 'y'};
    assert_int_equal(lsn_parse(buf, 4, &v), 0);
    assert_true(v == (((lsn_t)1 << 32) | 0x23));
    assert_int_equal(lsn_parse(buf, 5, &v), -1);
}

static void test_lsn_parse_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",            /* empty */
        "16B374D848",  /* no slash */
        "/1",          /* empty high part */
        "1/",          /* empty low part */
        "/",           /* both empty */
        "123456789/0", /* > 8 hex digits high */
        "0/123456789", /* > 8 hex digits low */
        "1/2/3",       /* two slashes */
        "g/1",         /* junk */
        "1/1g",        /* trailing junk */
        " 1/1",        /* leading space */
        "1/1 ",        /* trailing space */
        "-1/1",        /* sign */
        "0x1/1",       /* prefix */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        lsn_t v = 42;
        if (parse(bad[i], &v) != -1)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_true(v == 42); /* untouched on error */
    }
    lsn_t v = 42;
    assert_int_equal(lsn_parse(NULL, 0, &v), -1);
}

static void test_lsn_format_round_trip(void **state)
{
    (void)state;
    char buf[32];
    assert_int_equal(lsn_format(((lsn_t)0x16 << 32) | 0xB374D848u, buf, sizeof(buf)), 11);
    assert_string_equal(buf, "16/B374D848");
    assert_int_equal(lsn_format(0, buf, sizeof(buf)), 3);
    assert_string_equal(buf, "0/0");
    assert_int_equal(lsn_format(UINT64_MAX, buf, 18), 17);
    assert_string_equal(buf, "FFFFFFFF/FFFFFFFF");
    static const lsn_t values[] = {
        0, 1, 0xFFFFFFFFu, (lsn_t)1 << 32, 0x123456789ABCDEF0u, UINT64_MAX - 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        int n = lsn_format(values[i], buf, sizeof(buf));
        lsn_t back = 0;
        assert_int_equal(lsn_parse(buf, (size_t)n, &back), 0);
        assert_true(back == values[i]);
    }
}

static void test_lsn_diff_never_negative(void **state)
{
    (void)state;
    assert_true(lsn_diff(10, 3) == 7);
    assert_true(lsn_diff(3, 3) == 0);
    assert_true(lsn_diff(3, 10) == 0); /* a < b: not behind, and no wrap to 2^64 - 7 */
    assert_true(lsn_diff(UINT64_MAX, 0) == UINT64_MAX);
    assert_true(lsn_diff(UINT64_MAX, UINT64_MAX - 1) == 1);
    assert_true(lsn_diff(UINT64_MAX - 1, UINT64_MAX) == 0);
    assert_true(lsn_diff(((lsn_t)0xFFFFFFFF << 32) | 5, ((lsn_t)0xFFFFFFFE << 32) | 7) ==
                0xFFFFFFFEu);
}

static void test_lag_history_idle_primary_caught_up_replica(void **state)
{
    (void)state;
    struct lag_history h;
    lag_history_init(&h);
    assert_int_equal(lag_history_time_lag(&h, 0, 1000), 0); /* empty history: no basis */
    lag_history_add(&h, 100, 1000);
    lag_history_add(&h, 200, 1100);
    /* The primary then stays at 200 for an hour: a replica at 200 is not behind, whatever
     * its last replay timestamp says. */
    for (int64_t t = 1200; t < 1000 + 3600 * 1000; t += 100)
        lag_history_add(&h, 200, t);
    assert_int_equal(h.count, 2);
    assert_int_equal(lag_history_time_lag(&h, 200, 1000 + 3600 * 1000), 0);
    assert_int_equal(lag_history_time_lag(&h, 250, 1000 + 3600 * 1000), 0); /* ahead */
    /* A replica still at 150 has been behind since the primary was first seen past it. */
    assert_int_equal(lag_history_time_lag(&h, 150, 1000 + 3600 * 1000), 3600 * 1000 - 100);
}

static void test_lag_history_paused_replica_grows(void **state)
{
    (void)state;
    struct lag_history h;
    lag_history_init(&h);
    /* The primary writes steadily: 1000 bytes every 100 ms, from t=0 at LSN 1000. */
    for (int i = 0; i <= 50; i++)
        lag_history_add(&h, 1000 + (lsn_t)i * 1000, (int64_t)i * 100);
    /* A replica paused at LSN 3500 (between the samples at t=200 and t=300): the primary
     * was first seen ahead of it at t=300. */
    assert_int_equal(lag_history_time_lag(&h, 3500, 5000), 4700);
    assert_int_equal(lag_history_time_lag(&h, 3500, 6000), 5700);
    assert_int_equal(lag_history_time_lag(&h, 3500, 60000), 59700);
    /* exactly at a sample: ahead from the next one */
    assert_int_equal(lag_history_time_lag(&h, 3000, 5000), 4700);
    assert_int_equal(lag_history_time_lag(&h, 2999, 5000), 4800);
    /* behind every sample: lower bound from the oldest */
    assert_int_equal(lag_history_time_lag(&h, 10, 5000), 5000);
    /* now before the sample (clock skew between callers) never gives a negative lag */
    assert_int_equal(lag_history_time_lag(&h, 50999, 4000), 0);
    /* caught up */
    assert_int_equal(lag_history_time_lag(&h, 51000, 99999), 0);
}

static void test_lag_history_ring_wraps(void **state)
{
    (void)state;
    struct lag_history *h = malloc(sizeof(*h));
    assert_non_null(h);
    lag_history_init(h);
    const int n = LAG_HISTORY + 300;
    for (int i = 1; i <= n; i++)
        lag_history_add(h, (lsn_t)i * 10, (int64_t)i * 1000);
    assert_int_equal(h->count, LAG_HISTORY);
    /* The oldest retained sample is number n - LAG_HISTORY + 1. */
    int oldest = n - LAG_HISTORY + 1;
    assert_true(h->lsn[h->head] == (lsn_t)oldest * 10);
    /* Samples across the ring's physical end are still found in time order. */
    for (int i = oldest; i < n; i += 37) {
        lsn_t replay = (lsn_t)i * 10 + 5; /* between sample i and i+1 */
        assert_int_equal(lag_history_time_lag(h, replay, (int64_t)n * 1000 + 7),
                         (int64_t)(n - i - 1) * 1000 + 7);
    }
    /* Older than everything retained: a lower bound measured from the oldest sample. */
    assert_int_equal(lag_history_time_lag(h, 5, (int64_t)n * 1000), (int64_t)(n - oldest) * 1000);
    assert_int_equal(lag_history_time_lag(h, (lsn_t)n * 10, (int64_t)n * 1000 + 5), 0);
    free(h);
}

static void test_lag_history_duplicate_not_added(void **state)
{
    (void)state;
    struct lag_history h;
    lag_history_init(&h);
    lag_history_add(&h, 500, 10);
    lag_history_add(&h, 500, 20);
    lag_history_add(&h, 500, 30);
    assert_int_equal(h.count, 1);
    assert_int_equal(h.at_ms[h.head], 10); /* the first time the primary was there counts */
    lag_history_add(&h, 600, 40);
    lag_history_add(&h, 600, 50);
    assert_int_equal(h.count, 2);
    assert_int_equal(lag_history_time_lag(&h, 500, 100), 60);
}

static void test_lag_history_backwards_restarts(void **state)
{
    (void)state;
    struct lag_history h;
    lag_history_init(&h);
    lag_history_add(&h, 500, 10);
    lag_history_add(&h, 600, 20);
    lag_history_add(&h, 300, 30); /* another server answers as the primary */
    assert_int_equal(h.count, 1);
    assert_int_equal(lag_history_time_lag(&h, 200, 100), 70);
    assert_int_equal(lag_history_time_lag(&h, 300, 100), 0);
}

static void test_lag_format_bytes_units(void **state)
{
    (void)state;
    static const struct {
        int64_t bytes;
        const char *text;
    } cases[] = {
        {0, "0 B"},
        {1, "1 B"},
        {1023, "1023 B"},
        {1024, "1 kB"},
        {1536, "1.5 kB"},
        {512 * 1024, "512 kB"},
        {1024 * 1024 - 1, "1023.9 kB"},
        {16LL * 1024 * 1024, "16 MB"},
        {16LL * 1024 * 1024 + 1, "16.0 MB"}, /* truncated: never reads as the limit */
        {48LL * 1024 * 1024, "48 MB"},
        {48LL * 1024 * 1024 + 900 * 1024, "48.8 MB"},
        {1536LL * 1024 * 1024, "1.5 GB"},
        {3LL * 1024 * 1024 * 1024, "3 GB"},
        {5000LL * 1024 * 1024 * 1024, "5000 GB"},
        {INT64_MAX, "8589934591.9 GB"},
        {-2048, "-2 kB"},
        {INT64_MIN, "-8589934592 GB"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[64];
        int n = lag_format_bytes(cases[i].bytes, buf, sizeof(buf));
        assert_string_equal(buf, cases[i].text);
        assert_int_equal(n, (int)strlen(cases[i].text));
    }
}

static const struct lag_limits limits = {
    .max_lag_bytes = 16LL * 1024 * 1024,
    .max_lag_ms = 1000,
    .recover_checks = 3,
};

static void test_lag_fsm_step_evicts_at_once(void **state)
{
    (void)state;
    struct lag_fsm f = {LAG_UP, 0};
    char reason[128];
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_UP);
    assert_string_equal(reason, "lag 0 B");
    /* exactly at the limits is healthy */
    assert_false(
        lag_fsm_step(&f, &limits, true, limits.max_lag_bytes, 1000, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_UP);
    assert_true(lag_fsm_step(&f, &limits, true, 48LL * 1024 * 1024, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_LAGGING);
    assert_string_equal(reason, "lag 48 MB > 16 MB");
    /* staying over the limit is no change */
    assert_false(lag_fsm_step(&f, &limits, true, 50LL * 1024 * 1024, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_LAGGING);
    assert_string_equal(reason, "lag 50 MB > 16 MB");
}

static void test_lag_fsm_step_time_limit(void **state)
{
    (void)state;
    struct lag_fsm f = {LAG_UP, 0};
    char reason[128];
    assert_true(lag_fsm_step(&f, &limits, true, 100, 1200, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_LAGGING);
    assert_string_equal(reason, "lag 1200 ms > 1000 ms");
    /* both over: the byte limit is named */
    f = (struct lag_fsm){LAG_UP, 0};
    assert_true(lag_fsm_step(&f, &limits, true, 17LL * 1024 * 1024, 5000, reason, sizeof(reason)));
    assert_string_equal(reason, "lag 17 MB > 16 MB");
}

static void test_lag_fsm_step_needs_recover_checks(void **state)
{
    (void)state;
    struct lag_fsm f = {LAG_UP, 0};
    char reason[128];
    assert_true(lag_fsm_step(&f, &limits, true, 48LL * 1024 * 1024, 0, reason, sizeof(reason)));
    for (int i = 1; i < limits.recover_checks; i++) {
        assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
        assert_int_equal(f.state, LAG_LAGGING);
        assert_int_equal(f.good_rounds, i);
    }
    assert_true(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_UP);
    assert_string_equal(reason, "lag 0 B");
    assert_int_equal(f.good_rounds, 0);
}

static void test_lag_fsm_step_breach_resets_count(void **state)
{
    (void)state;
    struct lag_fsm f = {LAG_UP, 0};
    char reason[128];
    assert_true(lag_fsm_step(&f, &limits, true, 48LL * 1024 * 1024, 0, reason, sizeof(reason)));
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_false(lag_fsm_step(&f, &limits, true, 0, 2000, reason, sizeof(reason)));
    assert_int_equal(f.good_rounds, 0);
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_LAGGING);
    assert_true(lag_fsm_step(&f, &limits, true, 1536, 3, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_UP);
    assert_string_equal(reason, "lag 1.5 kB");
    /* a missed answer in the middle resets it too */
    assert_true(lag_fsm_step(&f, &limits, false, 0, 0, reason, sizeof(reason)));
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_false(lag_fsm_step(&f, &limits, false, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.good_rounds, 0);
    assert_int_equal(f.state, LAG_DOWN);
}

static void test_lag_fsm_step_not_answering(void **state)
{
    (void)state;
    struct lag_fsm f = {LAG_UP, 0};
    char reason[128];
    assert_true(lag_fsm_step(&f, &limits, false, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_DOWN);
    assert_string_equal(reason, "not answering");
    assert_false(lag_fsm_step(&f, &limits, false, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_DOWN);
    /* answers but lags: LAGGING at once */
    assert_true(lag_fsm_step(&f, &limits, true, 20LL * 1024 * 1024, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_LAGGING);
    assert_string_equal(reason, "lag 20 MB > 16 MB");
    /* from LAGGING, not answering is DOWN at once */
    assert_true(lag_fsm_step(&f, &limits, false, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_DOWN);
    /* DOWN answering healthy: UP after recover_checks rounds */
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_false(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_DOWN);
    assert_true(lag_fsm_step(&f, &limits, true, 0, 0, reason, sizeof(reason)));
    assert_int_equal(f.state, LAG_UP);
}

static void test_lag_fsm_step_recover_checks_minimum(void **state)
{
    (void)state;
    struct lag_limits lim = limits;
    char reason[128];
    for (int checks = -1; checks <= 1; checks++) {
        lim.recover_checks = checks;
        struct lag_fsm f = {LAG_UP, 0};
        assert_true(lag_fsm_step(&f, &lim, false, 0, 0, reason, sizeof(reason)));
        assert_true(lag_fsm_step(&f, &lim, true, 0, 0, reason, sizeof(reason)));
        assert_int_equal(f.state, LAG_UP);
    }
}

static void test_lag_fsm_step_reason_truncated_safely(void **state)
{
    (void)state;
    struct lag_fsm f = {LAG_UP, 0};
    char reason[8];
    memset(reason, 'x', sizeof(reason));
    assert_true(lag_fsm_step(&f, &limits, true, 48LL * 1024 * 1024, 0, reason, sizeof(reason)));
    assert_string_equal(reason, "lag 48 ");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lsn_parse_valid),
        cmocka_unit_test(test_lsn_parse_uses_len_only),
        cmocka_unit_test(test_lsn_parse_invalid),
        cmocka_unit_test(test_lsn_format_round_trip),
        cmocka_unit_test(test_lsn_diff_never_negative),
        cmocka_unit_test(test_lag_history_idle_primary_caught_up_replica),
        cmocka_unit_test(test_lag_history_paused_replica_grows),
        cmocka_unit_test(test_lag_history_ring_wraps),
        cmocka_unit_test(test_lag_history_duplicate_not_added),
        cmocka_unit_test(test_lag_history_backwards_restarts),
        cmocka_unit_test(test_lag_format_bytes_units),
        cmocka_unit_test(test_lag_fsm_step_evicts_at_once),
        cmocka_unit_test(test_lag_fsm_step_time_limit),
        cmocka_unit_test(test_lag_fsm_step_needs_recover_checks),
        cmocka_unit_test(test_lag_fsm_step_breach_resets_count),
        cmocka_unit_test(test_lag_fsm_step_not_answering),
        cmocka_unit_test(test_lag_fsm_step_recover_checks_minimum),
        cmocka_unit_test(test_lag_fsm_step_reason_truncated_safely),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
