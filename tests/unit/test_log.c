/* SPDX-License-Identifier: MIT */
/* Unit tests for log lines: the text form, and the JSON form with its escaping (quotes,
 * backslashes, control characters, and bytes that are not UTF-8), cut to fit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "log.h"

/* 2026-11-25 10:00:00 UTC */
#define T 1795600800LL

static void test_log_json_line(void **state)
{
    (void)state;
    char out[256];
    int n = log_format_line(out, sizeof(out), 1, T, 7, LOG_WARNING, "node pg1 is down");
    assert_int_equal(out[n - 1], '\n');
    out[n] = 0;
    assert_string_equal(out, "{\"time\":\"2026-11-25T10:00:00.007Z\",\"level\":\"warning\","
                             "\"message\":\"node pg1 is down\"}\n");
}

static void test_log_json_escapes(void **state)
{
    (void)state;
    char out[256];
    /* a quote, a backslash, a tab and a newline, an accented letter (UTF-8 kept), a lone
     * continuation byte and a cut sequence (not UTF-8: U+FFFD), DEL */
    const char *msg = "user \"a\\b\"\t\nh\xc3\xa9 \x80 \xe2\x82 \x7f";
    int n = log_format_line(out, sizeof(out), 1, T, 0, LOG_INFO, msg);
    out[n] = 0;
    assert_string_equal(out, "{\"time\":\"2026-11-25T10:00:00.000Z\",\"level\":\"info\","
                             "\"message\":\"user \\\"a\\\\b\\\"\\u0009\\u000ah\xc3\xa9 \\ufffd "
                             "\\ufffd\\ufffd \\u007f\"}\n");
}

static void test_log_json_cut_to_fit(void **state)
{
    (void)state;
    char big[600], out[128];
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    int n = log_format_line(out, sizeof(out), 1, T, 0, LOG_ERROR, big);
    assert_true(n <= (int)sizeof(out));
    assert_int_equal(out[n - 1], '\n');
    assert_int_equal(out[n - 2], '}');
    assert_int_equal(out[n - 3], '"');
    /* never half an escape: the message ends with whole \" pairs */
    const char *m = strstr(out, "\"message\":\"") + 11;
    size_t mlen = (size_t)(out + n - 3 - m);
    assert_int_equal(mlen % 2, 0);
    for (size_t i = 0; i < mlen; i += 2)
        assert_memory_equal(m + i, "\\\"", 2);
}

static void test_log_text_line(void **state)
{
    (void)state;
    char out[64];
    setenv("TZ", "UTC", 1);
    int n = log_format_line(out, sizeof(out), 0, T, 123, LOG_INFO, "listening");
    out[n] = 0;
    assert_string_equal(out, "2026-11-25 10:00:00.123 INFO listening\n");
    /* cut to fit, newline kept */
    n = log_format_line(out, sizeof(out), 0, T, 0, LOG_DEBUG,
                        "a message far longer than the sixty-four bytes given to it here");
    assert_int_equal(n, (int)sizeof(out));
    assert_int_equal(out[n - 1], '\n');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_json_line),
        cmocka_unit_test(test_log_json_escapes),
        cmocka_unit_test(test_log_json_cut_to_fit),
        cmocka_unit_test(test_log_text_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
