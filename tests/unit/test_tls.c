/* SPDX-License-Identifier: MIT */
/* The tls module against an OpenSSL server in memory: certificates made here (a CA with a
 * node certificate for 127.0.0.1 and node.test, and a second CA), the bytes moved by hand,
 * also one at a time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"

static EVP_PKEY *ca_key, *other_key, *node_key;
static X509 *ca_cert, *other_cert, *node_cert;
static char ca_path[64], other_path[64];

static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       const char *san)
{
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), cn[0] + (long)strlen(cn));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints,
                                              issuer ? "critical,CA:FALSE" : "critical,CA:TRUE");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (san) {
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256());
    return x;
}

static void write_pem(char *path, size_t cap, const char *tag, X509 *x)
{
    snprintf(path, cap, "/tmp/pgsteer-test-%s-%ld.pem", tag, (long)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    ca_key = EVP_EC_gen("P-256");
    other_key = EVP_EC_gen("P-256");
    node_key = EVP_EC_gen("P-256");
    ca_cert = make_cert(ca_key, "test ca", NULL, NULL, NULL);
    other_cert = make_cert(other_key, "other ca", NULL, NULL, NULL);
    node_cert = make_cert(node_key, "test node", ca_cert, ca_key, "IP:127.0.0.1,DNS:node.test");
    write_pem(ca_path, sizeof(ca_path), "ca", ca_cert);
    write_pem(other_path, sizeof(other_path), "other", other_cert);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(ca_path);
    unlink(other_path);
    X509_free(ca_cert);
    X509_free(other_cert);
    X509_free(node_cert);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(other_key);
    EVP_PKEY_free(node_key);
    return 0;
}

/* The node's end: an OpenSSL server over memory BIOs. */
struct server {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *rbio, *wbio;
};

static void server_init(struct server *s)
{
    s->ctx = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate(s->ctx, node_cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(s->ctx, node_key), 1);
    s->ssl = SSL_new(s->ctx);
    s->rbio = BIO_new(BIO_s_mem());
    s->wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(s->rbio, -1);
    SSL_set_bio(s->ssl, s->rbio, s->wbio);
    SSL_set_accept_state(s->ssl);
}

static void server_free(struct server *s)
{
    SSL_free(s->ssl);
    SSL_CTX_free(s->ctx);
}

/* Move what each end has to say to the other: the client's output to the server in `step`
 * bytes at a time (0: at once), the server's to the client likewise. */
static void pump(struct tls_conn *c, struct server *s, size_t step)
{
    struct buf out;
    buf_init(&out);
    assert_int_equal(tls_take_output(c, &out), 0);
    if (buf_avail(&out) > 0)
        BIO_write(s->rbio, buf_head(&out), (int)buf_avail(&out));
    buf_destroy(&out);
    char tmp[65536];
    int n;
    while ((n = BIO_read(s->wbio, tmp, sizeof(tmp))) > 0) {
        size_t k = step ? step : (size_t)n;
        for (int i = 0; i < n; i += (int)k)
            assert_int_equal(tls_feed(c, tmp + i, (size_t)n - i < k ? (size_t)n - i : k), 0);
    }
}

/* Run the handshake to its end; returns tls_handshake's last result. */
static int handshake(struct tls_conn *c, struct server *s, size_t step)
{
    for (int round = 0; round < 50; round++) {
        int r = tls_handshake(c);
        pump(c, s, step);
        SSL_do_handshake(s->ssl);
        pump(c, s, step);
        if (r != 0)
            return r;
    }
    return 0;
}

static struct tls_ctx *ctx_for(enum tls_mode mode, const char *ca)
{
    struct config_tls cfg = {.mode = mode, .ca_file = (char *)ca};
    char err[400];
    struct tls_ctx *ctx = tls_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(ctx);
    assert_string_equal(err, "");
    assert_int_equal(tls_ctx_mode(ctx), mode);
    return ctx;
}

static void exchange(size_t step)
{
    struct tls_ctx *ctx = ctx_for(TLS_MODE_VERIFY_FULL, ca_path);
    struct tls_conn *c = tls_conn_new(ctx, "127.0.0.1");
    tls_ctx_unref(ctx); /* the connection keeps what it needs */
    assert_non_null(c);
    struct server s;
    server_init(&s);
    assert_int_equal(handshake(c, &s, step), 1);
    assert_non_null(strstr(tls_describe(c), "TLSv1."));

    /* 200 kB each way: many records, some split over feeds */
    size_t n = 200 * 1024;
    char *data = malloc(n), *got = malloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (char)(i * 7 + i / 251);
    assert_int_equal(tls_write(c, data, n), 0);
    pump(c, &s, step);
    size_t have = 0;
    while (have < n) {
        int r = SSL_read(s.ssl, got + have, (int)(n - have));
        assert_true(r > 0);
        have += (size_t)r;
    }
    assert_memory_equal(got, data, n);

    assert_int_equal(SSL_write(s.ssl, data, (int)n), (int)n);
    pump(c, &s, step);
    memset(got, 0, n);
    have = 0;
    for (;;) {
        ssize_t r = tls_read(c, got + have, n - have < 5000 ? n - have : 5000);
        assert_true(r >= 0);
        if (r == 0)
            break;
        have += (size_t)r;
    }
    assert_int_equal(have, n);
    assert_memory_equal(got, data, n);
    assert_int_equal(tls_read(c, got, n), 0); /* nothing more: wants input */

    /* the node closes: the end of the stream, said */
    SSL_shutdown(s.ssl);
    pump(c, &s, step);
    assert_int_equal(tls_read(c, got, n), -1);
    assert_non_null(strstr(tls_error(c), "closed"));
    free(data);
    free(got);
    tls_conn_free(c);
    server_free(&s);
}

static void test_tls_data_crosses_both_ways(void **state)
{
    (void)state;
    exchange(0);
}

static void test_tls_data_fed_one_byte_at_a_time(void **state)
{
    (void)state;
    exchange(1);
}

static void expect_handshake(enum tls_mode mode, const char *ca, const char *host, int want,
                             const char *error_part)
{
    struct tls_ctx *ctx = ctx_for(mode, ca);
    struct tls_conn *c = tls_conn_new(ctx, host);
    assert_non_null(c);
    struct server s;
    server_init(&s);
    assert_int_equal(handshake(c, &s, 0), want);
    if (error_part)
        assert_non_null(strstr(tls_error(c), error_part));
    tls_conn_free(c);
    server_free(&s);
    tls_ctx_unref(ctx);
}

static void test_tls_verify_ca_refuses_another_ca(void **state)
{
    (void)state;
    expect_handshake(TLS_MODE_VERIFY_CA, other_path, "127.0.0.1", -1, "certificate");
    expect_handshake(TLS_MODE_VERIFY_CA, ca_path, "127.0.0.1", 1, NULL);
    /* verify-ca does not look at the name */
    expect_handshake(TLS_MODE_VERIFY_CA, ca_path, "elsewhere.test", 1, NULL);
}

static void test_tls_verify_full_checks_the_name(void **state)
{
    (void)state;
    expect_handshake(TLS_MODE_VERIFY_FULL, ca_path, "node.test", 1, NULL);
    expect_handshake(TLS_MODE_VERIFY_FULL, ca_path, "127.0.0.1", 1, NULL);
    expect_handshake(TLS_MODE_VERIFY_FULL, ca_path, "elsewhere.test", -1, "certificate");
    expect_handshake(TLS_MODE_VERIFY_FULL, ca_path, "127.0.0.2", -1, "certificate");
}

static void test_tls_require_and_prefer_check_no_certificate(void **state)
{
    (void)state;
    expect_handshake(TLS_MODE_REQUIRE, other_path, "elsewhere.test", 1, NULL);
    expect_handshake(TLS_MODE_PREFER, NULL, "127.0.0.1", 1, NULL);
}

static void test_tls_context_errors(void **state)
{
    (void)state;
    char err[400];
    struct config_tls off = {.mode = TLS_MODE_DISABLE};
    assert_null(tls_ctx_new(&off, err, sizeof(err)));
    assert_string_equal(err, "");

    struct config_tls missing = {.mode = TLS_MODE_VERIFY_CA, .ca_file = "/nonexistent/ca.pem"};
    assert_null(tls_ctx_new(&missing, err, sizeof(err)));
    assert_non_null(strstr(err, "server_tls.ca_file /nonexistent/ca.pem"));

    /* a certificate file whose key is another's */
    char key_path[64];
    snprintf(key_path, sizeof(key_path), "/tmp/pgsteer-test-key-%ld.pem", (long)getpid());
    FILE *f = fopen(key_path, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, other_key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    struct config_tls mismatch = {
        .mode = TLS_MODE_REQUIRE, .cert_file = ca_path, .key_file = key_path};
    assert_null(tls_ctx_new(&mismatch, err, sizeof(err)));
    assert_non_null(strstr(err, "server_tls.key_file"));
    unlink(key_path);

    assert_null(tls_ctx_ref(NULL));
    tls_ctx_unref(NULL);
    assert_int_equal(tls_ctx_mode(NULL), TLS_MODE_DISABLE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_data_crosses_both_ways),
        cmocka_unit_test(test_tls_data_fed_one_byte_at_a_time),
        cmocka_unit_test(test_tls_verify_ca_refuses_another_ca),
        cmocka_unit_test(test_tls_verify_full_checks_the_name),
        cmocka_unit_test(test_tls_require_and_prefer_check_no_certificate),
        cmocka_unit_test(test_tls_context_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
