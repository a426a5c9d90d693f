/* SPDX-License-Identifier: MIT */
/* TLS over memory BIOs for pgsteer's connections to the nodes and from clients: see tls.h. */
#include "tls.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct tls_ctx {
    SSL_CTX *ssl;
    enum tls_mode mode; /* a context for the nodes */
    bool server;        /* a context for clients (tls_server_ctx_new) */
    atomic_int refs;
};

struct tls_conn {
    SSL *ssl;
    BIO *rbio;        /* ciphertext from the peer (owned by ssl) */
    BIO *wbio;        /* ciphertext for the peer (owned by ssl) */
    const char *peer; /* "node" or "client", for messages */
    char err[256];
    char desc[96];
};

/* OpenSSL's first queued error (or `fallback`) after `what`, into dst; the queue is cleared,
 * since it is per thread and the next operation must not see this one's errors. */
static void openssl_error(char *dst, size_t cap, const char *what, const char *fallback)
{
    unsigned long e = ERR_get_error();
    char text[200];
    if (e != 0)
        ERR_error_string_n(e, text, sizeof(text));
    else
        snprintf(text, sizeof(text), "%s", fallback);
    ERR_clear_error();
    snprintf(dst, cap, "%s: %s", what, text);
}

/* Load the certificate chain and key named by `key` ("server_tls", "client_tls") into s. Returns 0,
 * or -1 with why in err. */
static int load_cert(SSL_CTX *s, const char *key, const char *cert, const char *pkey, char *err,
                     size_t errcap)
{
    char what[300];
    if (SSL_CTX_use_certificate_chain_file(s, cert) != 1) {
        snprintf(what, sizeof(what), "%s.cert_file %s", key, cert);
        openssl_error(err, errcap, what, "cannot be loaded");
        return -1;
    }
    if (pkey == NULL || SSL_CTX_use_PrivateKey_file(s, pkey, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(s) != 1) {
        snprintf(what, sizeof(what), "%s.key_file %s", key, pkey ? pkey : "(none)");
        openssl_error(err, errcap, what, "cannot be loaded or does not match cert_file");
        return -1;
    }
    return 0;
}

/* Load the CRLs of PEM file `file` (named by `key`, "server_tls.crl_file" say) into s's store,
 * and check every certificate of a peer's chain against them when the chain is verified, as
 * PostgreSQL does with ssl_crl_file and libpq with sslcrl: a revoked certificate, a CRL past
 * its next update, or a CA of the chain without a CRL in the file fails the handshake. Returns
 * 0, or -1 with why in err. */
static int load_crl(SSL_CTX *s, const char *key, const char *file, char *err, size_t errcap)
{
    X509_STORE *store = SSL_CTX_get_cert_store(s);
    X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
    if (lookup == NULL || X509_load_crl_file(lookup, file, X509_FILETYPE_PEM) <= 0) {
        char what[300];
        snprintf(what, sizeof(what), "%s %s: no CRL in PEM form could be read", key, file);
        openssl_error(err, errcap, what, "none found");
        return -1;
    }
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    return 0;
}

/* A new OpenSSL context for `method`, TLS 1.2 or later (PostgreSQL's default
 * ssl_min_protocol_version) or, with min_protocol 13, 1.3 only, with the TLS 1.2 cipher list
 * `ciphers` (NULL: OpenSSL's default) of section `key`, without compression or renegotiation,
 * releasing idle buffers; NULL with why in err. */
static SSL_CTX *ssl_ctx_new(const SSL_METHOD *method, const char *key, int min_protocol,
                            const char *ciphers, char *err, size_t errcap)
{
    ERR_clear_error();
    SSL_CTX *s = SSL_CTX_new(method);
    if (s == NULL) {
        openssl_error(err, errcap, "cannot make a TLS context", "out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(s, min_protocol == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(s, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* A connection with nothing in flight gives its record buffers back (as nginx and HAProxy
     * do): an idle TLS client then holds about 30 kB instead of 39 (measured with 2,000). */
    SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
    if (ciphers != NULL && SSL_CTX_set_cipher_list(s, ciphers) != 1) {
        char what[300];
        snprintf(what, sizeof(what), "%s.ciphers %s", key, ciphers);
        openssl_error(err, errcap, what, "selects no cipher");
        SSL_CTX_free(s);
        return NULL;
    }
    return s;
}

/* s (taken) in a new tls_ctx with one reference; NULL, s freed, when out of memory. */
static struct tls_ctx *ctx_wrap(SSL_CTX *s, enum tls_mode mode, bool server, char *err,
                                size_t errcap)
{
    struct tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        snprintf(err, errcap, "out of memory");
        SSL_CTX_free(s);
        return NULL;
    }
    ctx->ssl = s;
    ctx->mode = mode;
    ctx->server = server;
    atomic_init(&ctx->refs, 1);
    return ctx;
}

struct tls_ctx *tls_ctx_new(const struct config_tls *cfg, char *err, size_t errcap)
{
    if (errcap > 0)
        err[0] = 0;
    if (cfg->mode == TLS_MODE_DISABLE)
        return NULL;
    SSL_CTX *s = ssl_ctx_new(TLS_client_method(), "server_tls", cfg->min_protocol, cfg->ciphers,
                             err, errcap);
    if (s == NULL)
        return NULL;
    if (cfg->ca_file != NULL && SSL_CTX_load_verify_locations(s, cfg->ca_file, NULL) != 1) {
        char what[300];
        snprintf(what, sizeof(what), "server_tls.ca_file %s", cfg->ca_file);
        openssl_error(err, errcap, what, "cannot be loaded");
        SSL_CTX_free(s);
        return NULL;
    }
    if ((cfg->cert_file != NULL &&
         load_cert(s, "server_tls", cfg->cert_file, cfg->key_file, err, errcap) < 0) ||
        (cfg->crl_file != NULL &&
         load_crl(s, "server_tls.crl_file", cfg->crl_file, err, errcap) < 0)) {
        SSL_CTX_free(s);
        return NULL;
    }
    bool verify = cfg->mode == TLS_MODE_VERIFY_CA || cfg->mode == TLS_MODE_VERIFY_FULL;
    SSL_CTX_set_verify(s, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return ctx_wrap(s, cfg->mode, false, err, errcap);
}

/* The ALPN protocols a served context agrees on (wire format), and what happens when the
 * client offers none of them: a fatal alert, or no ALPN. */
struct alpn_policy {
    const unsigned char *protos;
    unsigned int len;
    int otherwise; /* SSL_TLSEXT_ERR_ALERT_FATAL or SSL_TLSEXT_ERR_NOACK */
};

/* ALPN protocol lists, in the wire format (a length byte before each name). */
static const unsigned char alpn_pg[] = "\012postgresql";
static const unsigned char alpn_pg_http[] = "\012postgresql\010http/1.1";
/* client_tls: "postgresql", the only protocol spoken, when the client offers it; a client
 * that offers others only is refused (no_application_protocol), as PostgreSQL refuses it. */
static const struct alpn_policy alpn_clients = {alpn_pg, sizeof(alpn_pg) - 1,
                                                SSL_TLSEXT_ERR_ALERT_FATAL};
/* admin_tls: "postgresql" (the console) or "http/1.1", whichever the client offers first of
 * those in that order; none when it offers neither (an HTTP client offering h2 alone then
 * speaks HTTP/1.1 all the same, as it must without ALPN). */
static const struct alpn_policy alpn_admin = {alpn_pg_http, sizeof(alpn_pg_http) - 1,
                                              SSL_TLSEXT_ERR_NOACK};

/* OpenSSL's ALPN callback, `arg` the context's alpn_policy. A client that offers no ALPN at all
 * gets none (OpenSSL does not call this then). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    const struct alpn_policy *p = arg;
    unsigned char *sel = NULL;
    (void)ssl;
    if (SSL_select_next_proto(&sel, outlen, p->protos, p->len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return p->otherwise;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* A context that serves TLS with the settings of section `key` ("client_tls", "admin_tls"),
 * ALPN as `alpn` says. */
static struct tls_ctx *served_ctx_new(const struct config_client_tls *cfg, const char *key,
                                      const struct alpn_policy *alpn, char *err, size_t errcap)
{
    if (errcap > 0)
        err[0] = 0;
    if (cfg->mode == CLIENT_TLS_DISABLE)
        return NULL;
    SSL_CTX *s =
        ssl_ctx_new(TLS_server_method(), key, cfg->min_protocol, cfg->ciphers, err, errcap);
    if (s == NULL)
        return NULL;
    /* As a PostgreSQL server by default, and no session resumption (each connection is one
     * session, and tickets would only be bytes more on each handshake). */
    SSL_CTX_set_options(s, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_alpn_select_cb(s, alpn_select, (void *)alpn);
    SSL_CTX_set_num_tickets(s, 0);
    char what[300];
    if (cfg->cert_file == NULL) {
        snprintf(err, errcap, "%s.cert_file is required", key);
        SSL_CTX_free(s);
        return NULL;
    }
    snprintf(what, sizeof(what), "%s.crl_file", key);
    if (load_cert(s, key, cfg->cert_file, cfg->key_file, err, errcap) < 0 ||
        (cfg->crl_file != NULL && load_crl(s, what, cfg->crl_file, err, errcap) < 0)) {
        SSL_CTX_free(s);
        return NULL;
    }
    if (cfg->mode >= CLIENT_TLS_VERIFY_CA) {
        snprintf(what, sizeof(what), "%s.ca_file %s", key, cfg->ca_file ? cfg->ca_file : "");
        STACK_OF(X509_NAME) *names = cfg->ca_file ? SSL_load_client_CA_file(cfg->ca_file) : NULL;
        if (names == NULL || SSL_CTX_load_verify_locations(s, cfg->ca_file, NULL) != 1) {
            openssl_error(err, errcap, what, "cannot be loaded");
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            SSL_CTX_free(s);
            return NULL;
        }
        SSL_CTX_set_client_CA_list(s, names); /* (takes names) */
        SSL_CTX_set_verify(s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    } else {
        SSL_CTX_set_verify(s, SSL_VERIFY_NONE, NULL);
    }
    return ctx_wrap(s, TLS_MODE_DISABLE, true, err, errcap);
}

struct tls_ctx *tls_server_ctx_new(const struct config_client_tls *cfg, char *err, size_t errcap)
{
    return served_ctx_new(cfg, "client_tls", &alpn_clients, err, errcap);
}

struct tls_ctx *tls_admin_ctx_new(const struct config_client_tls *cfg, char *err, size_t errcap)
{
    return served_ctx_new(cfg, "admin_tls", &alpn_admin, err, errcap);
}

struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx)
{
    if (ctx != NULL)
        atomic_fetch_add(&ctx->refs, 1);
    return ctx;
}

void tls_ctx_unref(struct tls_ctx *ctx)
{
    if (ctx == NULL || atomic_fetch_sub(&ctx->refs, 1) != 1)
        return;
    SSL_CTX_free(ctx->ssl); /* (its connections hold their own references to it) */
    free(ctx);
}

enum tls_mode tls_ctx_mode(const struct tls_ctx *ctx)
{
    return ctx ? ctx->mode : TLS_MODE_DISABLE;
}

/* Whether host is a numeric IPv4 or IPv6 address. */
static bool is_ip(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

/* A connection of ctx, its side not set yet; NULL when out of memory. */
static struct tls_conn *conn_make(struct tls_ctx *ctx)
{
    struct tls_conn *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->ssl = SSL_new(ctx->ssl);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty memory BIO reads as "try again", not as the end of the input. */
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    t->peer = ctx->server ? "client" : "node";
    return t;
}

struct tls_conn *tls_conn_accept(struct tls_ctx *ctx)
{
    struct tls_conn *t = conn_make(ctx);
    if (t != NULL)
        SSL_set_accept_state(t->ssl);
    return t;
}

struct tls_conn *tls_conn_new(struct tls_ctx *ctx, const char *host)
{
    struct tls_conn *t = conn_make(ctx);
    if (t == NULL)
        return NULL;
    SSL_set_connect_state(t->ssl);
    bool ok = true;
    if (host != NULL && !is_ip(host))
        ok = SSL_set_tlsext_host_name(t->ssl, host) == 1;
    if (ok && host != NULL && ctx->mode == TLS_MODE_VERIFY_FULL) {
        /* The certificate must name the host: a DNS name in subjectAltName (or the CN when
         * there is none), or an IP address entry for a numeric host. */
        if (is_ip(host))
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host) == 1;
        else
            ok = SSL_set1_host(t->ssl, host) == 1;
    }
    if (!ok) {
        tls_conn_free(t);
        ERR_clear_error();
        return NULL;
    }
    return t;
}

void tls_conn_free(struct tls_conn *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    free(t);
}

int tls_feed(struct tls_conn *t, const char *p, size_t n)
{
    while (n > 0) {
        int part = n > INT_MAX ? INT_MAX : (int)n;
        int w = BIO_write(t->rbio, p, part);
        if (w <= 0) {
            snprintf(t->err, sizeof(t->err), "out of memory");
            ERR_clear_error();
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Why the last call on t's SSL with result r failed, into t->err. */
static void conn_error(struct tls_conn *t, int r, const char *what)
{
    int e = SSL_get_error(t->ssl, r);
    long v = SSL_get_verify_result(t->ssl);
    if (v != X509_V_OK) {
        snprintf(t->err, sizeof(t->err), "%s: the %s's certificate: %s", what, t->peer,
                 X509_verify_cert_error_string(v));
        ERR_clear_error();
    } else if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(t->err, sizeof(t->err), "%s: the %s closed the TLS connection", what, t->peer);
        ERR_clear_error();
    } else {
        openssl_error(t->err, sizeof(t->err), what,
                      e == SSL_ERROR_SYSCALL ? "unexpected end of the TLS stream" : "TLS error");
    }
}

int tls_handshake(struct tls_conn *t)
{
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        snprintf(t->desc, sizeof(t->desc), "%s/%s", SSL_get_version(t->ssl),
                 SSL_get_cipher_name(t->ssl));
        return 1;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    char what[64];
    snprintf(what, sizeof(what), "TLS handshake with the %s failed", t->peer);
    conn_error(t, r, what);
    return -1;
}

void tls_close_notify(struct tls_conn *t)
{
    ERR_clear_error();
    (void)SSL_shutdown(t->ssl); /* (queues it; the peer's own close_notify is not waited for) */
    ERR_clear_error();
}

ssize_t tls_read(struct tls_conn *t, char *dst, size_t cap)
{
    if (cap == 0)
        return 0;
    ERR_clear_error();
    int r = SSL_read(t->ssl, dst, cap > INT_MAX ? INT_MAX : (int)cap);
    if (r > 0)
        return r;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    conn_error(t, r, "TLS");
    return -1;
}

int tls_write(struct tls_conn *t, const char *p, size_t n)
{
    ERR_clear_error();
    while (n > 0) {
        int part = n > INT_MAX ? INT_MAX : (int)n;
        int w = SSL_write(t->ssl, p, part);
        if (w <= 0) {
            conn_error(t, w, "TLS");
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int tls_take_output(struct tls_conn *t, struct buf *out)
{
    size_t n = BIO_ctrl_pending(t->wbio);
    if (n == 0)
        return 0;
    if (buf_reserve(out, n) < 0)
        return -1;
    int r = BIO_read(t->wbio, out->data + out->len, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        out->len += (size_t)r;
    return 0;
}

const char *tls_error(const struct tls_conn *t)
{
    return t ? t->err : "";
}

const char *tls_describe(const struct tls_conn *t)
{
    return t ? t->desc : "";
}

int tls_peer_cn(const struct tls_conn *t, char *dst, size_t cap)
{
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    if (x == NULL || cap == 0)
        return -1;
    X509_NAME *name = X509_get_subject_name(x);
    int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (i < 0)
        return -1;
    const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
    int n = ASN1_STRING_length(s);
    const unsigned char *p = ASN1_STRING_get0_data(s);
    /* A NUL inside would let "app\0.evil" pass as "app". */
    if (n < 0 || (size_t)n >= cap || memchr(p, 0, (size_t)n) != NULL)
        return -1;
    memcpy(dst, p, (size_t)n);
    dst[n] = 0;
    return n;
}

bool tls_alpn_postgresql(const struct tls_conn *t)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    return n == alpn_pg[0] && memcmp(p, alpn_pg + 1, n) == 0;
}
