/* SPDX-License-Identifier: MIT */
/* The tls module against an OpenSSL server in memory, and its server side (client_tls) against
 * its client side: certificates made here (a CA with a node certificate for 127.0.0.1 and
 * node.test and a client certificate, and a second CA with a client certificate), the bytes
 * moved by hand, also one at a time. */
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

static EVP_PKEY *ca_key, *other_key, *node_key, *app_key;
static X509 *ca_cert, *other_cert, *node_cert, *app_cert, *stranger_cert, *nul_cert;
static char ca_path[64], other_path[64], node_cert_path[64], node_key_path[64];
static char app_cert_path[64], app_key_path[64], stranger_cert_path[64], nul_cert_path[64];

/* A certificate of key for the CN's cnlen bytes (-1: up to its NUL), signed by issuer (NULL:
 * by itself, a CA), with subjectAltName san if given. */
static X509 *make_cert_n(EVP_PKEY *key, const char *cn, int cnlen, X509 *issuer,
                         EVP_PKEY *issuer_key, const char *san)
{
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), cn[0] + (long)strlen(cn) + cnlen);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, cnlen, -1, 0);
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

static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       const char *san)
{
    return make_cert_n(key, cn, -1, issuer, issuer_key, san);
}

static void write_pem(char *path, size_t cap, const char *tag, X509 *x)
{
    snprintf(path, cap, "/tmp/pgsteer-test-%s-%ld.pem", tag, (long)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
}

static void write_key(char *path, size_t cap, const char *tag, EVP_PKEY *k)
{
    snprintf(path, cap, "/tmp/pgsteer-test-%s-%ld.pem", tag, (long)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
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
    /* pgsteer's own certificate for clients is the node's here; an application's signed by
     * the CA, and one signed by the other CA */
    write_pem(node_cert_path, sizeof(node_cert_path), "node", node_cert);
    write_key(node_key_path, sizeof(node_key_path), "nodekey", node_key);
    app_key = EVP_EC_gen("P-256");
    app_cert = make_cert(app_key, "app", ca_cert, ca_key, NULL);
    stranger_cert = make_cert(app_key, "stranger", other_cert, other_key, NULL);
    write_pem(app_cert_path, sizeof(app_cert_path), "app", app_cert);
    write_key(app_key_path, sizeof(app_key_path), "appkey", app_key);
    write_pem(stranger_cert_path, sizeof(stranger_cert_path), "stranger", stranger_cert);
    /* the CA's, for a CN with a NUL inside: "app" to whoever stops reading there */
    nul_cert = make_cert_n(app_key, "app\0.evil", 9, ca_cert, ca_key, NULL);
    write_pem(nul_cert_path, sizeof(nul_cert_path), "nul", nul_cert);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(ca_path);
    unlink(other_path);
    unlink(node_cert_path);
    unlink(node_key_path);
    unlink(app_cert_path);
    unlink(app_key_path);
    unlink(stranger_cert_path);
    unlink(nul_cert_path);
    X509_free(nul_cert);
    X509_free(app_cert);
    X509_free(stranger_cert);
    EVP_PKEY_free(app_key);
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

    /* crl_file: a file of CRLs, not of certificates */
    struct config_tls nocrl = {.mode = TLS_MODE_VERIFY_CA, .ca_file = ca_path, .crl_file = ca_path};
    assert_null(tls_ctx_new(&nocrl, err, sizeof(err)));
    char want[200];
    snprintf(want, sizeof(want), "server_tls.crl_file %s: no CRL in PEM form could be read",
             ca_path);
    assert_non_null(strstr(err, want));
    struct config_tls crl = {.mode = TLS_MODE_VERIFY_CA,
                             .ca_file = ca_path,
                             .crl_file = "tests/data/config/tls/crl.pem"};
    struct tls_ctx *ctx = tls_ctx_new(&crl, err, sizeof(err));
    assert_non_null(ctx);
    tls_ctx_unref(ctx);

    assert_null(tls_ctx_ref(NULL));
    tls_ctx_unref(NULL);
    assert_int_equal(tls_ctx_mode(NULL), TLS_MODE_DISABLE);
}

/* ---- the server side: pgsteer's end of a client's connection ---- */

static struct tls_ctx *server_ctx(enum client_tls_mode mode, const char *ca)
{
    struct config_client_tls cfg = {.mode = mode,
                                    .cert_file = node_cert_path,
                                    .key_file = node_key_path,
                                    .ca_file = (char *)ca};
    char err[400];
    struct tls_ctx *ctx = tls_server_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(ctx);
    assert_string_equal(err, "");
    assert_int_equal(tls_ctx_mode(ctx), TLS_MODE_DISABLE);
    return ctx;
}

/* Move each end's output to the other, `step` bytes at a time (0: at once). */
static void pump2(struct tls_conn *a, struct tls_conn *b, size_t step)
{
    struct tls_conn *ends[2][2] = {{a, b}, {b, a}};
    for (int e = 0; e < 2; e++) {
        struct buf out;
        buf_init(&out);
        assert_int_equal(tls_take_output(ends[e][0], &out), 0);
        size_t n = buf_avail(&out), k = step ? step : n;
        for (size_t i = 0; i < n; i += k)
            assert_int_equal(tls_feed(ends[e][1], buf_head(&out) + i, n - i < k ? n - i : k), 0);
        buf_destroy(&out);
    }
}

/* Both handshakes to their end; the server side's last result (the client's in *cr). */
static int handshake2(struct tls_conn *client, struct tls_conn *server, size_t step, int *cr)
{
    int c = 0, s = 0;
    for (int round = 0; round < 50 && (c == 0 || s == 0); round++) {
        if (c == 0)
            c = tls_handshake(client);
        pump2(client, server, step);
        if (s == 0)
            s = tls_handshake(server);
        pump2(client, server, step);
        if (c < 0 || s < 0)
            break;
    }
    *cr = c;
    return s;
}

static void test_tls_server_side_carries_a_clients_session(void **state)
{
    (void)state;
    struct tls_ctx *sctx = server_ctx(CLIENT_TLS_ALLOW, NULL);
    struct tls_ctx *cctx = ctx_for(TLS_MODE_VERIFY_FULL, ca_path); /* checks pgsteer's name */
    for (size_t step = 0; step <= 1; step++) {
        struct tls_conn *srv = tls_conn_accept(sctx), *cli = tls_conn_new(cctx, "node.test");
        assert_non_null(srv);
        assert_non_null(cli);
        int cr;
        assert_int_equal(handshake2(cli, srv, step, &cr), 1);
        assert_int_equal(cr, 1);
        assert_non_null(strstr(tls_describe(srv), "TLSv1."));
        assert_string_equal(tls_describe(srv), tls_describe(cli));
        /* a startup packet one way, 100 kB of answers the other */
        static const char startup[] = "\0\0\0\x08\x04\xd2\x16\x2f";
        assert_int_equal(tls_write(cli, startup, 8), 0);
        pump2(cli, srv, step);
        char got[8];
        assert_int_equal(tls_read(srv, got, sizeof(got)), 8);
        assert_memory_equal(got, startup, 8);
        size_t n = 100 * 1024;
        char *data = malloc(n), *back = malloc(n);
        for (size_t i = 0; i < n; i++)
            data[i] = (char)(i * 13 + i / 97);
        assert_int_equal(tls_write(srv, data, n), 0);
        pump2(cli, srv, step);
        size_t have = 0;
        ssize_t r;
        while ((r = tls_read(cli, back + have, n - have)) > 0)
            have += (size_t)r;
        assert_int_equal(r, 0);
        assert_int_equal(have, n);
        assert_memory_equal(back, data, n);
        free(data);
        free(back);
        tls_conn_free(srv);
        tls_conn_free(cli);
    }
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

/* A client of `cert` (NULL: none) against a verify-ca server: the server side's result; the
 * CN of the client's certificate as the server sees it goes to cn (tls_peer_cn's result in
 * *cnlen). */
static int verify_ca_handshake(const char *cert, char *err, size_t errcap, char *cn, int *cnlen)
{
    struct tls_ctx *sctx = server_ctx(CLIENT_TLS_VERIFY_CA, ca_path);
    struct config_tls ccfg = {.mode = TLS_MODE_REQUIRE,
                              .cert_file = (char *)cert,
                              .key_file = cert ? app_key_path : NULL};
    char cerr[400];
    struct tls_ctx *cctx = tls_ctx_new(&ccfg, cerr, sizeof(cerr));
    assert_non_null(cctx);
    struct tls_conn *srv = tls_conn_accept(sctx), *cli = tls_conn_new(cctx, "127.0.0.1");
    int cr, s = handshake2(cli, srv, 0, &cr);
    snprintf(err, errcap, "%s", tls_error(srv));
    *cnlen = tls_peer_cn(srv, cn, 64);
    tls_conn_free(srv);
    tls_conn_free(cli);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
    return s;
}

static void test_tls_verify_ca_asks_clients_for_a_certificate_of_its_ca(void **state)
{
    (void)state;
    char err[256], cn[64];
    int cnlen;
    assert_int_equal(verify_ca_handshake(app_cert_path, err, sizeof(err), cn, &cnlen), 1);
    assert_int_equal(cnlen, 3); /* the name verify-full compares with the user's */
    assert_string_equal(cn, "app");
    assert_int_equal(verify_ca_handshake(NULL, err, sizeof(err), cn, &cnlen), -1);
    assert_non_null(strstr(err, "TLS handshake with the client failed"));
    assert_int_equal(cnlen, -1);
    assert_int_equal(verify_ca_handshake(stranger_cert_path, err, sizeof(err), cn, &cnlen), -1);
    assert_non_null(strstr(err, "the client's certificate"));
    /* a chain that checks out, but a CN no user name can equal */
    assert_int_equal(verify_ca_handshake(nul_cert_path, err, sizeof(err), cn, &cnlen), 1);
    assert_int_equal(cnlen, -1);
}

static void test_tls_server_context_errors(void **state)
{
    (void)state;
    char err[400];
    struct config_client_tls off = {.mode = CLIENT_TLS_DISABLE};
    assert_null(tls_server_ctx_new(&off, err, sizeof(err)));
    assert_string_equal(err, "");

    struct config_client_tls nocert = {
        .mode = CLIENT_TLS_REQUIRE, .cert_file = "/nonexistent/c.pem", .key_file = node_key_path};
    assert_null(tls_server_ctx_new(&nocert, err, sizeof(err)));
    assert_non_null(strstr(err, "client_tls.cert_file /nonexistent/c.pem"));

    struct config_client_tls mismatch = {
        .mode = CLIENT_TLS_ALLOW, .cert_file = node_cert_path, .key_file = app_key_path};
    assert_null(tls_server_ctx_new(&mismatch, err, sizeof(err)));
    assert_non_null(strstr(err, "client_tls.key_file"));

    struct config_client_tls noca = {.mode = CLIENT_TLS_VERIFY_CA,
                                     .cert_file = node_cert_path,
                                     .key_file = node_key_path,
                                     .ca_file = "/nonexistent/ca.pem"};
    assert_null(tls_server_ctx_new(&noca, err, sizeof(err)));
    assert_non_null(strstr(err, "client_tls.ca_file /nonexistent/ca.pem"));

    /* crl_file is loaded whatever the mode, so a wrong one shows at once */
    struct config_client_tls nocrl = {.mode = CLIENT_TLS_ALLOW,
                                      .cert_file = node_cert_path,
                                      .key_file = node_key_path,
                                      .crl_file = node_key_path};
    assert_null(tls_server_ctx_new(&nocrl, err, sizeof(err)));
    assert_non_null(strstr(err, "client_tls.crl_file"));
    assert_non_null(strstr(err, "no CRL in PEM form could be read"));

    /* the admin port's context names its own section */
    assert_null(tls_admin_ctx_new(&off, err, sizeof(err)));
    assert_string_equal(err, "");
    assert_null(tls_admin_ctx_new(&mismatch, err, sizeof(err)));
    assert_non_null(strstr(err, "admin_tls.key_file"));
    struct config_client_tls admin = {
        .mode = CLIENT_TLS_REQUIRE, .cert_file = node_cert_path, .key_file = node_key_path};
    struct tls_ctx *ctx = tls_admin_ctx_new(&admin, err, sizeof(err));
    assert_non_null(ctx);
    tls_ctx_unref(ctx);
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
        cmocka_unit_test(test_tls_server_side_carries_a_clients_session),
        cmocka_unit_test(test_tls_verify_ca_asks_clients_for_a_certificate_of_its_ca),
        cmocka_unit_test(test_tls_server_context_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
