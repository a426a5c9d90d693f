/* SPDX-License-Identifier: MIT */
/* Unit tests for the v3 protocol module: byte-exact builder output, framing of partial,
 * complete and invalid messages (including input arriving one byte at a time) and readers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "protocol.h"

/* Builds with `call` into a fresh buffer and compares the whole output with `expected`. */
#define ASSERT_BUILDS(call, expected)                                                              \
    do {                                                                                           \
        struct buf out_;                                                                           \
        buf_init(&out_);                                                                           \
        struct buf *out = &out_;                                                                   \
        assert_int_equal((call), 0);                                                               \
        assert_int_equal(out_.len, sizeof(expected));                                              \
        assert_memory_equal(out_.data, (expected), sizeof(expected));                              \
        buf_destroy(&out_);                                                                        \
    } while (0)

/* ---- builders -------------------------------------------------------------------------------- */

static void test_proto_write_ReadyForQuery_bytes(void **state)
{
    (void)state;
    static const char e[] = {'Z', 0, 0, 0, 5, 'I'};
    ASSERT_BUILDS(proto_write_ReadyForQuery(out, 'I'), e);
    static const char t[] = {'Z', 0, 0, 0, 5, 'T'};
    ASSERT_BUILDS(proto_write_ReadyForQuery(out, 'T'), t);
}

static void test_proto_write_AuthenticationOk_bytes(void **state)
{
    (void)state;
    static const char e[] = {'R', 0, 0, 0, 8, 0, 0, 0, 0};
    ASSERT_BUILDS(proto_write_AuthenticationOk(out), e);
}

static void test_proto_write_AuthenticationCleartextPassword_bytes(void **state)
{
    (void)state;
    static const char e[] = {'R', 0, 0, 0, 8, 0, 0, 0, 3};
    ASSERT_BUILDS(proto_write_AuthenticationCleartextPassword(out), e);
}

static void test_proto_write_AuthenticationMD5Password_bytes(void **state)
{
    (void)state;
    static const uint8_t salt[4] = {0x01, 0x02, 0xfe, 0xff};
    static const char e[] = {'R', 0, 0, 0, 12, 0, 0, 0, 5, 0x01, 0x02, (char)0xfe, (char)0xff};
    ASSERT_BUILDS(proto_write_AuthenticationMD5Password(out, salt), e);
}

static void test_proto_write_AuthenticationSASL_bytes(void **state)
{
    (void)state;
    static const char e[] = {'R', 0,   0,   0,   23,  0,   0,   0,   10,  'S', 'C', 'R',
                             'A', 'M', '-', 'S', 'H', 'A', '-', '2', '5', '6', 0,   0};
    ASSERT_BUILDS(proto_write_AuthenticationSASL(out), e);
}

static void test_proto_write_AuthenticationSASLContinue_bytes(void **state)
{
    (void)state;
    static const char e[] = {'R', 0, 0, 0, 13, 0, 0, 0, 11, 'r', '=', 'a', 'b', 'c'};
    ASSERT_BUILDS(proto_write_AuthenticationSASLContinue(out, "r=abc", 5), e);
}

static void test_proto_write_AuthenticationSASLFinal_bytes(void **state)
{
    (void)state;
    static const char e[] = {'R', 0, 0, 0, 12, 0, 0, 0, 12, 'v', '=', 'x', 'y'};
    ASSERT_BUILDS(proto_write_AuthenticationSASLFinal(out, "v=xy", 4), e);
}

static void test_proto_write_ParameterStatus_bytes(void **state)
{
    (void)state;
    static const char e[] = {'S', 0, 0, 0, 9, 'a', 0, 'b', 'c', 0};
    ASSERT_BUILDS(proto_write_ParameterStatus(out, "a", "bc"), e);
    static const char empty[] = {'S', 0, 0, 0, 7, 'k', 0, 0};
    ASSERT_BUILDS(proto_write_ParameterStatus(out, "k", ""), empty);
}

static void test_proto_write_BackendKeyData_bytes(void **state)
{
    (void)state;
    static const char e[] = {'K', 0, 0,          0,          12,         1,         2,
                             3,   4, (char)0xa0, (char)0xb0, (char)0xc0, (char)0xd0};
    ASSERT_BUILDS(proto_write_BackendKeyData(out, 0x01020304u, 0xa0b0c0d0u), e);
}

static void test_proto_write_ErrorResponse_bytes(void **state)
{
    (void)state;
    static const char e[] = {'E', 0,   0,   0,   31,  'S', 'F', 'A', 'T', 'A', 'L',
                             0,   'V', 'F', 'A', 'T', 'A', 'L', 0,   'C', '2', '8',
                             'P', '0', '1', 0,   'M', 'b', 'a', 'd', 0,   0};
    ASSERT_BUILDS(proto_write_ErrorResponse(out, "FATAL", "28P01", "bad"), e);
}

static void test_proto_write_notice_bytes(void **state)
{
    (void)state;
    static const char e[] = {'N', 0,   0,   0,   33,  'S', 'W', 'A', 'R', 'N', 'I', 'N',
                             'G', 0,   'V', 'W', 'A', 'R', 'N', 'I', 'N', 'G', 0,   'C',
                             '0', '1', '0', '0', '0', 0,   'M', 'x', 0,   0};
    ASSERT_BUILDS(proto_write_notice(out, BE_NOTICE, "WARNING", "01000", "x"), e);
}

static void test_proto_write_CommandComplete_bytes(void **state)
{
    (void)state;
    static const char e[] = {'C', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0};
    ASSERT_BUILDS(proto_write_CommandComplete(out, "SELECT 1"), e);
}

static void test_proto_write_RowDescription1_bytes(void **state)
{
    (void)state;
    static const char e[] = {'T',        0,          0,          0,          26, 0, 1,
                             'x',        0,          0,          0,          0,  0, /* table OID */
                             0,          0,                                  /* attribute number */
                             0,          0,          0,          25,         /* text */
                             (char)0xff, (char)0xff,                         /* typlen -1 */
                             (char)0xff, (char)0xff, (char)0xff, (char)0xff, /* typmod -1 */
                             0,          0};
    ASSERT_BUILDS(proto_write_RowDescription1(out, "x"), e);
}

static void test_proto_write_DataRow1_bytes(void **state)
{
    (void)state;
    static const char e[] = {'D', 0, 0, 0, 12, 0, 1, 0, 0, 0, 2, 'a', 'b'};
    ASSERT_BUILDS(proto_write_DataRow1(out, "ab"), e);
    static const char null[] = {'D', 0,          0,          0,          10,        0,
                                1,   (char)0xff, (char)0xff, (char)0xff, (char)0xff};
    ASSERT_BUILDS(proto_write_DataRow1(out, NULL), null);
}

static void test_proto_write_EmptyQueryResponse_bytes(void **state)
{
    (void)state;
    static const char e[] = {'I', 0, 0, 0, 4};
    ASSERT_BUILDS(proto_write_EmptyQueryResponse(out), e);
}

static void test_proto_write_StartupMessage_bytes(void **state)
{
    (void)state;
    static const char *const params[] = {"user", "u", "database", "d"};
    static const char e[] = {0, 0,   0,   27,  0,   3,   0,   0,   'u', 's', 'e', 'r', 0, 'u',
                             0, 'd', 'a', 't', 'a', 'b', 'a', 's', 'e', 0,   'd', 0,   0};
    ASSERT_BUILDS(proto_write_StartupMessage(out, params, 2), e);
    static const char none[] = {0, 0, 0, 9, 0, 3, 0, 0, 0};
    ASSERT_BUILDS(proto_write_StartupMessage(out, NULL, 0), none);
}

static void test_proto_write_StartupMessage_too_long_fails(void **state)
{
    (void)state;
    static char big[PROTO_MAX_STARTUP];
    memset(big, 'v', sizeof(big) - 1);
    const char *params[] = {"options", big};
    struct buf out;
    buf_init(&out);
    assert_int_equal(proto_write_StartupMessage(&out, params, 1), -1);
    assert_int_equal(out.len, 0);
    buf_destroy(&out);
}

static void test_proto_write_PasswordMessage_bytes(void **state)
{
    (void)state;
    static const char e[] = {'p', 0, 0, 0, 7, 'p', 'w', 0};
    ASSERT_BUILDS(proto_write_PasswordMessage(out, "pw"), e);
}

static void test_proto_write_SASLInitialResponse_bytes(void **state)
{
    (void)state;
    static const char e[] = {'p', 0,   0,   0,   25,  'S', 'C', 'R', 'A', 'M', '-', 'S', 'H',
                             'A', '-', '2', '5', '6', 0,   0,   0,   0,   3,   'n', ',', ','};
    ASSERT_BUILDS(proto_write_SASLInitialResponse(out, "SCRAM-SHA-256", "n,,", 3), e);
    static const char nodata[] = {'p', 0,   0,   0,          22,         'S',        'C',       'R',
                                  'A', 'M', '-', 'S',        'H',        'A',        '-',       '2',
                                  '5', '6', 0,   (char)0xff, (char)0xff, (char)0xff, (char)0xff};
    ASSERT_BUILDS(proto_write_SASLInitialResponse(out, "SCRAM-SHA-256", NULL, 0), nodata);
}

static void test_proto_write_SASLResponse_bytes(void **state)
{
    (void)state;
    static const char e[] = {'p', 0, 0, 0, 7, 'c', '=', 'x'};
    ASSERT_BUILDS(proto_write_SASLResponse(out, "c=x", 3), e);
}

static void test_proto_write_Query_bytes(void **state)
{
    (void)state;
    static const char e[] = {'Q', 0, 0, 0, 13, 's', 'e', 'l', 'e', 'c', 't', ' ', '1', 0};
    ASSERT_BUILDS(proto_write_Query(out, "select 1"), e);
}

static void test_proto_write_Sync_bytes(void **state)
{
    (void)state;
    static const char e[] = {'S', 0, 0, 0, 4};
    ASSERT_BUILDS(proto_write_Sync(out), e);
}

static void test_proto_write_Terminate_bytes(void **state)
{
    (void)state;
    static const char e[] = {'X', 0, 0, 0, 4};
    ASSERT_BUILDS(proto_write_Terminate(out), e);
}

static void test_proto_write_CancelRequest_bytes(void **state)
{
    (void)state;
    /* 80877102 = 0x04d2162e */
    static const char e[] = {0, 0, 0, 16, 0x04, (char)0xd2, 0x16, 0x2e, 1, 2, 3, 4, 5, 6, 7, 8};
    ASSERT_BUILDS(proto_write_CancelRequest(out, 0x01020304u, 0x05060708u), e);
}

static void test_proto_write_Parse_bytes(void **state)
{
    (void)state;
    static const uint32_t types[] = {23, 25};
    static const char e[] = {'P', 0,   0,   0, 27, 's', '1', 0, 's', 'e', 'l', 'e', 'c', 't',
                             ' ', '$', '1', 0, 0,  2,   0,   0, 0,   23,  0,   0,   0,   25};
    ASSERT_BUILDS(proto_write_Parse(out, "s1", "select $1", 9, types, 2), e);
    /* query_len bounds the text: the rest of the string is not sent. */
    static const char e2[] = {'P', 0, 0, 0, 16, 0, 's', 'e', 'l', 'e', 'c', 't', ' ', '1', 0, 0, 0};
    ASSERT_BUILDS(proto_write_Parse(out, "", "select 1;junk", 8, NULL, 0), e2);
}

static void test_proto_write_Close_bytes(void **state)
{
    (void)state;
    static const char e[] = {'C', 0,   0,   0,   16,  'S', 'p', 'g', 's',
                             't', 'e', 'e', 'r', '_', 's', '7', 0};
    ASSERT_BUILDS(proto_write_Close(out, 'S', "pgsteer_s7"), e);
    static const char e2[] = {'C', 0, 0, 0, 6, 'P', 0};
    ASSERT_BUILDS(proto_write_Close(out, 'P', ""), e2);
}

static void test_proto_write_Parse_embedded_nul_fails(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out);
    assert_int_equal(proto_write_Parse(&out, "", "a\0b", 3, NULL, 0), -1);
    assert_int_equal(out.len, 0);
    buf_destroy(&out);
}

static void test_proto_write_appends_after_existing_content(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out);
    assert_int_equal(proto_write_Sync(&out), 0);
    assert_int_equal(proto_write_ReadyForQuery(&out, 'E'), 0);
    static const char e[] = {'S', 0, 0, 0, 4, 'Z', 0, 0, 0, 5, 'E'};
    assert_int_equal(out.len, sizeof(e));
    assert_memory_equal(out.data, e, sizeof(e));
    buf_destroy(&out);
}

static void test_proto_begin_put_end_bytes(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out);
    assert_int_equal(buf_append(&out, "xx", 2), 0);
    size_t start = proto_begin(&out, 'F');
    assert_int_equal(start, 2);
    assert_int_equal(proto_put_u8(&out, 0xab), 0);
    assert_int_equal(proto_put_i16(&out, -2), 0);
    assert_int_equal(proto_put_i32(&out, -3), 0);
    assert_int_equal(proto_put_str(&out, "hi"), 0);
    assert_int_equal(proto_put_bytes(&out, "\x01\x02", 2), 0);
    assert_int_equal(proto_end(&out, start), 0);
    static const char e[] = {'x',        'x',        'F',        0,          0,
                             0,          16,         (char)0xab, (char)0xff, (char)0xfe,
                             (char)0xff, (char)0xff, (char)0xff, (char)0xfd, 'h',
                             'i',        0,          1,          2};
    assert_int_equal(out.len, sizeof(e));
    assert_memory_equal(out.data, e, sizeof(e));
    buf_destroy(&out);
}

static void test_proto_end_rejects_failed_begin(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out);
    assert_int_equal(proto_end(&out, SIZE_MAX), -1);
    /* A start that leaves no room for the header is not a message either. */
    assert_int_equal(buf_append(&out, "abc", 3), 0);
    assert_int_equal(proto_end(&out, 0), -1);
    assert_int_equal(proto_end(&out, 4), -1);
    buf_destroy(&out);
}

/* ---- framing --------------------------------------------------------------------------------- */

static void test_proto_frame_complete(void **state)
{
    (void)state;
    static const char m[] = {'C', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0, 'Z'};
    struct proto_msg msg;
    assert_int_equal(proto_frame(m, sizeof(m), PROTO_MAX_MESSAGE, &msg), 1);
    assert_int_equal(msg.type, 'C');
    assert_int_equal(msg.len, 9);
    assert_ptr_equal(msg.body, m + 5);
    assert_int_equal(msg.total, 14);
    assert_string_equal(msg.body, "SELECT 1");
}

static void test_proto_frame_every_prefix_needs_more(void **state)
{
    (void)state;
    static const char m[] = {'C', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0};
    struct proto_msg msg;
    for (size_t n = 0; n < sizeof(m); n++)
        assert_int_equal(proto_frame(m, n, PROTO_MAX_MESSAGE, &msg), 0);
    assert_int_equal(proto_frame(m, sizeof(m), PROTO_MAX_MESSAGE, &msg), 1);
    assert_int_equal(msg.total, sizeof(m));
}

static void test_proto_frame_empty_body(void **state)
{
    (void)state;
    static const char m[] = {'S', 0, 0, 0, 4};
    struct proto_msg msg;
    assert_int_equal(proto_frame(m, sizeof(m), PROTO_MAX_MESSAGE, &msg), 1);
    assert_int_equal(msg.type, 'S');
    assert_int_equal(msg.len, 0);
    assert_int_equal(msg.total, 5);
}

static void test_proto_frame_undersized_length_fails(void **state)
{
    (void)state;
    struct proto_msg msg;
    for (uint32_t len = 0; len < 4; len++) {
        char m[5] = {'Q'};
        proto_put_u32(m + 1, len);
        assert_int_equal(proto_frame(m, sizeof(m), PROTO_MAX_MESSAGE, &msg), -1);
    }
}

static void test_proto_frame_oversized_length_fails_early(void **state)
{
    (void)state;
    struct proto_msg msg;
    char m[5] = {'Q'};
    /* Only the header has arrived: the announced length is judged already. */
    proto_put_u32(m + 1, PROTO_MAX_PREAUTH_MSG + 1);
    assert_int_equal(proto_frame(m, sizeof(m), PROTO_MAX_PREAUTH_MSG, &msg), -1);
    proto_put_u32(m + 1, PROTO_MAX_PREAUTH_MSG);
    assert_int_equal(proto_frame(m, sizeof(m), PROTO_MAX_PREAUTH_MSG, &msg), 0);
    proto_put_u32(m + 1, 0xffffffffu);
    assert_int_equal(proto_frame(m, sizeof(m), PROTO_MAX_MESSAGE, &msg), -1);
    assert_int_equal(proto_frame(m, sizeof(m), UINT32_MAX, &msg), 0);
}

static void test_proto_frame_at_max_len_succeeds(void **state)
{
    (void)state;
    char m[1 + 16] = {'d'};
    proto_put_u32(m + 1, 16);
    struct proto_msg msg;
    assert_int_equal(proto_frame(m, sizeof(m), 16, &msg), 1);
    assert_int_equal(msg.len, 12);
    assert_int_equal(proto_frame(m, sizeof(m), 15, &msg), -1);
}

/* A stream of several messages delivered one byte at a time through a struct buf, as the
 * event loop does, must yield exactly the original messages in order. */
static void test_proto_frame_byte_at_a_time_stream(void **state)
{
    (void)state;
    struct buf src;
    buf_init(&src);
    assert_int_equal(proto_write_ParameterStatus(&src, "server_version", "15.0"), 0);
    assert_int_equal(proto_write_BackendKeyData(&src, 7, 9), 0);
    assert_int_equal(proto_write_ErrorResponse(&src, "ERROR", "42601", "syntax"), 0);
    assert_int_equal(proto_write_ReadyForQuery(&src, 'I'), 0);
    static const char types[] = {'S', 'K', 'E', 'Z'};

    struct buf in;
    buf_init(&in);
    size_t seen = 0, consumed_total = 0;
    for (size_t i = 0; i < src.len; i++) {
        assert_int_equal(buf_append(&in, src.data + i, 1), 0);
        for (;;) {
            struct proto_msg msg;
            int rc = proto_frame(buf_head(&in), buf_avail(&in), PROTO_MAX_MESSAGE, &msg);
            assert_true(rc >= 0);
            if (rc == 0)
                break;
            assert_true(seen < sizeof(types));
            assert_int_equal(msg.type, types[seen]);
            assert_memory_equal(buf_head(&in), src.data + consumed_total, msg.total);
            consumed_total += msg.total;
            seen++;
            buf_consume(&in, msg.total);
        }
    }
    assert_int_equal(seen, 4);
    assert_int_equal(consumed_total, src.len);
    assert_int_equal(buf_avail(&in), 0);
    buf_destroy(&in);
    buf_destroy(&src);
}

static void test_proto_frame_startup_ssl_request(void **state)
{
    (void)state;
    /* 80877103 = 0x04d2162f */
    static const char p[] = {0, 0, 0, 8, 0x04, (char)0xd2, 0x16, 0x2f};
    uint32_t code = 0;
    for (size_t n = 0; n < sizeof(p); n++)
        assert_int_equal(proto_frame_startup(p, n, &code), 0);
    assert_int_equal(proto_frame_startup(p, sizeof(p), &code), 8);
    assert_int_equal(code, PROTO_SSL_CODE);
}

static void test_proto_frame_startup_cancel_request(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(proto_write_CancelRequest(&b, 42, 4242), 0);
    uint32_t code = 0;
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(proto_frame_startup(b.data, n, &code), 0);
    assert_int_equal(proto_frame_startup(b.data, b.len, &code), 16);
    assert_int_equal(code, PROTO_CANCEL_CODE);
    assert_int_equal(proto_get_u32(b.data + 8), 42);
    assert_int_equal(proto_get_u32(b.data + 12), 4242);
    buf_destroy(&b);
}

static void test_proto_frame_startup_gssenc_and_startup(void **state)
{
    (void)state;
    static const char g[] = {0, 0, 0, 8, 0x04, (char)0xd2, 0x16, 0x30};
    uint32_t code = 0;
    assert_int_equal(proto_frame_startup(g, sizeof(g), &code), 8);
    assert_int_equal(code, PROTO_GSSENC_CODE);

    struct buf b;
    buf_init(&b);
    static const char *const params[] = {"user", "alice"};
    assert_int_equal(proto_write_StartupMessage(&b, params, 1), 0);
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(proto_frame_startup(b.data, n, &code), 0);
    assert_int_equal(proto_frame_startup(b.data, b.len, &code), (int)b.len);
    assert_int_equal(code, PROTO_VERSION_3);
    buf_destroy(&b);
}

static void test_proto_frame_startup_bad_length_fails(void **state)
{
    (void)state;
    uint32_t code = 0;
    char p[8] = {0};
    proto_put_u32(p, 7);
    assert_int_equal(proto_frame_startup(p, 4, &code), -1);
    proto_put_u32(p, 0);
    assert_int_equal(proto_frame_startup(p, 8, &code), -1);
    proto_put_u32(p, PROTO_MAX_STARTUP + 1);
    assert_int_equal(proto_frame_startup(p, 4, &code), -1);
    proto_put_u32(p, PROTO_MAX_STARTUP);
    assert_int_equal(proto_frame_startup(p, 8, &code), 0);
    /* An HTTP request on the port: "GET " is a huge length. */
    assert_int_equal(proto_frame_startup("GET / HTTP/1.1\r\n", 16, &code), -1);
}

/* ---- readers --------------------------------------------------------------------------------- */

static void test_proto_reader_reads_fields(void **state)
{
    (void)state;
    static const char body[] = {(char)0xfe, (char)0xff, (char)0xfe, 0x7f, (char)0xff, (char)0xff,
                                (char)0xff, 'a',        'b',        0,    'x',        'y'};
    struct proto_reader r;
    proto_reader_init(&r, body, sizeof(body));
    assert_int_equal(proto_read_u8(&r), 0xfe);
    assert_int_equal(proto_read_i16(&r), -2);
    assert_int_equal(proto_read_i32(&r), 0x7fffffff);
    size_t len = 99;
    const char *s = proto_read_str(&r, &len);
    assert_string_equal(s, "ab");
    assert_int_equal(len, 2);
    const char *b = proto_read_bytes(&r, 2);
    assert_ptr_equal(b, body + 10);
    assert_non_null(proto_read_bytes(&r, 0));
    assert_false(r.err);
    assert_int_equal(r.pos, sizeof(body));
}

static void test_proto_reader_overrun_sets_err(void **state)
{
    (void)state;
    static const char body[] = {0, 1, 2};
    struct proto_reader r;
    proto_reader_init(&r, body, sizeof(body));
    assert_int_equal(proto_read_i32(&r), 0);
    assert_true(r.err);
    /* Sticky: later reads that would fit still report nothing. */
    assert_int_equal(proto_read_u8(&r), 0);
    assert_int_equal(proto_read_i16(&r), 0);
    assert_null(proto_read_bytes(&r, 1));
    assert_string_equal(proto_read_str(&r, NULL), "");
    assert_true(r.err);

    proto_reader_init(&r, body, sizeof(body));
    assert_int_equal(proto_read_i16(&r), 1);
    assert_int_equal(proto_read_i16(&r), 0);
    assert_true(r.err);

    proto_reader_init(&r, body, sizeof(body));
    assert_null(proto_read_bytes(&r, 4));
    assert_true(r.err);

    proto_reader_init(&r, body, 0);
    assert_int_equal(proto_read_u8(&r), 0);
    assert_true(r.err);
}

static void test_proto_read_str_unterminated_sets_err(void **state)
{
    (void)state;
    static const char body[] = {'a', 'b', 'c'};
    struct proto_reader r;
    proto_reader_init(&r, body, sizeof(body));
    size_t len = 7;
    const char *s = proto_read_str(&r, &len);
    assert_non_null(s);
    assert_string_equal(s, "");
    assert_int_equal(len, 0);
    assert_true(r.err);

    /* At the very end of the body. */
    static const char one[] = {'a', 0};
    proto_reader_init(&r, one, sizeof(one));
    assert_string_equal(proto_read_str(&r, NULL), "a");
    assert_false(r.err);
    assert_string_equal(proto_read_str(&r, &len), "");
    assert_true(r.err);
}

static void test_proto_reader_empty_string(void **state)
{
    (void)state;
    static const char body[] = {0, 'z', 0};
    struct proto_reader r;
    proto_reader_init(&r, body, sizeof(body));
    size_t len = 5;
    assert_string_equal(proto_read_str(&r, &len), "");
    assert_int_equal(len, 0);
    assert_string_equal(proto_read_str(&r, &len), "z");
    assert_int_equal(len, 1);
    assert_false(r.err);
}

/* ---- error fields ---------------------------------------------------------------------------- */

static void test_proto_error_field_finds_fields(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(proto_write_ErrorResponse(&b, "FATAL", "57P01", "terminating connection"), 0);
    struct proto_msg m;
    assert_int_equal(proto_frame(b.data, b.len, PROTO_MAX_MESSAGE, &m), 1);
    assert_string_equal(proto_error_field(m.body, m.len, 'C'), "57P01");
    assert_string_equal(proto_error_field(m.body, m.len, 'S'), "FATAL");
    assert_string_equal(proto_error_field(m.body, m.len, 'V'), "FATAL");
    assert_string_equal(proto_error_field(m.body, m.len, 'M'), "terminating connection");
    assert_null(proto_error_field(m.body, m.len, 'D'));
    assert_null(proto_error_field(m.body, m.len, '\0'));
    buf_destroy(&b);
}

static void test_proto_error_field_malformed_returns_null(void **state)
{
    (void)state;
    /* The value of 'C' runs off the end. */
    static const char cut[] = {'S', 'E', 0, 'C', '4', '2'};
    assert_string_equal(proto_error_field(cut, sizeof(cut), 'S'), "E");
    assert_null(proto_error_field(cut, sizeof(cut), 'C'));
    assert_null(proto_error_field(cut, sizeof(cut), 'M'));
    /* A code byte as the last byte, without a value. */
    static const char code_only[] = {'C'};
    assert_null(proto_error_field(code_only, sizeof(code_only), 'C'));
    /* An empty body, and fields after the terminator, which are not fields. */
    assert_null(proto_error_field("", 0, 'C'));
    assert_null(proto_error_field("\0C42\0", 5, 'C'));
    assert_null(proto_error_field(NULL, 0, 'C'));
}

static void test_proto_write_error_position_bytes(void **state)
{
    (void)state;
    /* S, C, P, M: P's value replaced, the rest byte for byte. */
    static const char body[] = {'S', 'E', 0, 'C', '4', '2', 0, 'P', '3', '9', 0, 'M', 'x', 0, 0};
    static const char e[] = {'E', 0, 0,   0,   18, 'S', 'E', 0, 'C', '4',
                             '2', 0, 'P', '7', 0,  'M', 'x', 0, 0};
    ASSERT_BUILDS(proto_write_error_position(out, 'E', body, sizeof(body), 7), e);
    static const char e2[] = {'N', 0,   0,   0,   21,  'S', 'E', 0,   'C', '4', '2',
                              0,   'P', '1', '2', '3', '4', 0,   'M', 'x', 0,   0};
    ASSERT_BUILDS(proto_write_error_position(out, 'N', body, sizeof(body), 1234), e2);
    /* without a position: as it is */
    static const char nop[] = {'C', '4', '2', 0, 0};
    static const char e3[] = {'E', 0, 0, 0, 9, 'C', '4', '2', 0, 0};
    ASSERT_BUILDS(proto_write_error_position(out, 'E', nop, sizeof(nop), 5), e3);
    /* malformed: a value that runs off the end, a list without its end; nothing appended */
    struct buf b;
    buf_init(&b);
    static const char cut[] = {'S', 'E', 0, 'P', '4'};
    assert_int_equal(proto_write_error_position(&b, 'E', cut, sizeof(cut), 5), -1);
    static const char open_end[] = {'S', 'E', 0};
    assert_int_equal(proto_write_error_position(&b, 'E', open_end, sizeof(open_end), 5), -1);
    assert_int_equal(b.len, 0);
    buf_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proto_write_ReadyForQuery_bytes),
        cmocka_unit_test(test_proto_write_AuthenticationOk_bytes),
        cmocka_unit_test(test_proto_write_AuthenticationCleartextPassword_bytes),
        cmocka_unit_test(test_proto_write_AuthenticationMD5Password_bytes),
        cmocka_unit_test(test_proto_write_AuthenticationSASL_bytes),
        cmocka_unit_test(test_proto_write_AuthenticationSASLContinue_bytes),
        cmocka_unit_test(test_proto_write_AuthenticationSASLFinal_bytes),
        cmocka_unit_test(test_proto_write_ParameterStatus_bytes),
        cmocka_unit_test(test_proto_write_BackendKeyData_bytes),
        cmocka_unit_test(test_proto_write_ErrorResponse_bytes),
        cmocka_unit_test(test_proto_write_notice_bytes),
        cmocka_unit_test(test_proto_write_CommandComplete_bytes),
        cmocka_unit_test(test_proto_write_RowDescription1_bytes),
        cmocka_unit_test(test_proto_write_DataRow1_bytes),
        cmocka_unit_test(test_proto_write_EmptyQueryResponse_bytes),
        cmocka_unit_test(test_proto_write_StartupMessage_bytes),
        cmocka_unit_test(test_proto_write_StartupMessage_too_long_fails),
        cmocka_unit_test(test_proto_write_PasswordMessage_bytes),
        cmocka_unit_test(test_proto_write_SASLInitialResponse_bytes),
        cmocka_unit_test(test_proto_write_SASLResponse_bytes),
        cmocka_unit_test(test_proto_write_Query_bytes),
        cmocka_unit_test(test_proto_write_Sync_bytes),
        cmocka_unit_test(test_proto_write_Terminate_bytes),
        cmocka_unit_test(test_proto_write_CancelRequest_bytes),
        cmocka_unit_test(test_proto_write_Parse_bytes),
        cmocka_unit_test(test_proto_write_Close_bytes),
        cmocka_unit_test(test_proto_write_error_position_bytes),
        cmocka_unit_test(test_proto_write_Parse_embedded_nul_fails),
        cmocka_unit_test(test_proto_write_appends_after_existing_content),
        cmocka_unit_test(test_proto_begin_put_end_bytes),
        cmocka_unit_test(test_proto_end_rejects_failed_begin),
        cmocka_unit_test(test_proto_frame_complete),
        cmocka_unit_test(test_proto_frame_every_prefix_needs_more),
        cmocka_unit_test(test_proto_frame_empty_body),
        cmocka_unit_test(test_proto_frame_undersized_length_fails),
        cmocka_unit_test(test_proto_frame_oversized_length_fails_early),
        cmocka_unit_test(test_proto_frame_at_max_len_succeeds),
        cmocka_unit_test(test_proto_frame_byte_at_a_time_stream),
        cmocka_unit_test(test_proto_frame_startup_ssl_request),
        cmocka_unit_test(test_proto_frame_startup_cancel_request),
        cmocka_unit_test(test_proto_frame_startup_gssenc_and_startup),
        cmocka_unit_test(test_proto_frame_startup_bad_length_fails),
        cmocka_unit_test(test_proto_reader_reads_fields),
        cmocka_unit_test(test_proto_reader_overrun_sets_err),
        cmocka_unit_test(test_proto_read_str_unterminated_sets_err),
        cmocka_unit_test(test_proto_reader_empty_string),
        cmocka_unit_test(test_proto_error_field_finds_fields),
        cmocka_unit_test(test_proto_error_field_malformed_returns_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
