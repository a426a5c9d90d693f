/* SPDX-License-Identifier: MIT */
/* Unit tests for authentication: SCRAM-SHA-256 against the RFC 7677 vector and against
 * itself, rejection of malformed messages on both sides, and the MD5 response. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "auth.h"

/* RFC 7677, section 3. */
#define RFC_PASSWORD     "pencil"
#define RFC_CLIENT_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_NONCE        RFC_CLIENT_NONCE RFC_SERVER_NONCE
#define RFC_CLIENT_FIRST "n,,n=user,r=" RFC_CLIENT_NONCE
#define RFC_SERVER_FIRST "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_CLIENT_FINAL "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

/* base64 "W22ZaJ0SNY7soEsUEjb6gQ==" */
static const uint8_t rfc_salt[16] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
                                     0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};

static int server_first_str(struct scram_server *s, const char *msg, char *out, size_t cap)
{
    return scram_server_first(s, msg, strlen(msg), out, cap);
}

static int server_final_str(struct scram_server *s, const char *msg, char *out, size_t cap)
{
    return scram_server_final(s, msg, strlen(msg), out, cap);
}

/* A server with the RFC salt and nonce, ready for `client_first`. */
static void rfc_server(struct scram_server *s)
{
    assert_int_equal(
        scram_server_init_with(s, RFC_PASSWORD, rfc_salt, sizeof(rfc_salt), RFC_SERVER_NONCE), 0);
}

/* A server that has answered the RFC client-first and waits for the client-final. */
static void rfc_server_at_final(struct scram_server *s)
{
    char out[SCRAM_MAX_MSG];
    rfc_server(s);
    assert_int_equal(server_first_str(s, RFC_CLIENT_FIRST, out, sizeof(out)),
                     (int)strlen(RFC_SERVER_FIRST));
}

static void assert_server_first_rejects(const char *msg)
{
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server(&s);
    if (scram_server_first(&s, msg, strlen(msg), out, sizeof(out)) != -1)
        fail_msg("client-first accepted: \"%s\"", msg);
    /* A failed step ends the exchange. */
    assert_int_equal(server_first_str(&s, RFC_CLIENT_FIRST, out, sizeof(out)), -1);
}

static void assert_server_final_rejects(const char *msg)
{
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server_at_final(&s);
    if (scram_server_final(&s, msg, strlen(msg), out, sizeof(out)) != -1)
        fail_msg("client-final accepted: \"%s\"", msg);
}

/* A client with the RFC nonce that has sent its client-first. */
static void rfc_client_after_first(struct scram_client *c)
{
    char out[SCRAM_MAX_MSG];
    assert_int_equal(scram_client_init_with(c, RFC_PASSWORD, RFC_CLIENT_NONCE), 0);
    assert_true(scram_client_first(c, out, sizeof(out)) > 0);
}

static void assert_client_final_rejects(const char *msg)
{
    struct scram_client c;
    char out[SCRAM_MAX_MSG];
    rfc_client_after_first(&c);
    if (scram_client_final(&c, msg, strlen(msg), out, sizeof(out)) != -1)
        fail_msg("server-first accepted: \"%s\"", msg);
}

/* ---- server ---------------------------------------------------------------------------------- */

static void test_scram_server_rfc7677_vector(void **state)
{
    (void)state;
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server(&s);
    int n = server_first_str(&s, RFC_CLIENT_FIRST, out, sizeof(out));
    assert_int_equal(n, strlen(RFC_SERVER_FIRST));
    assert_string_equal(out, RFC_SERVER_FIRST);
    n = server_final_str(&s, RFC_CLIENT_FINAL, out, sizeof(out));
    assert_int_equal(n, strlen(RFC_SERVER_FINAL));
    assert_string_equal(out, RFC_SERVER_FINAL);
    /* The exchange is over. */
    assert_int_equal(server_final_str(&s, RFC_CLIENT_FINAL, out, sizeof(out)), -1);
}

static void test_scram_server_final_wrong_proof_returns_minus2(void **state)
{
    (void)state;
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server_at_final(&s);
    /* The RFC proof with its first character changed: well formed, but wrong. */
    assert_int_equal(
        server_final_str(
            &s, "c=biws,r=" RFC_NONCE ",p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", out,
            sizeof(out)),
        -2);
}

static void test_scram_server_first_ignores_user_name(void **state)
{
    (void)state;
    static const char *const firsts[] = {
        "n,,n=,r=" RFC_CLIENT_NONCE,
        "n,,n=someone=2Celse,r=" RFC_CLIENT_NONCE,
        "n,,n=user,r=" RFC_CLIENT_NONCE ",x=extension",
    };
    for (size_t i = 0; i < sizeof(firsts) / sizeof(firsts[0]); i++) {
        struct scram_server s;
        char out[SCRAM_MAX_MSG];
        rfc_server(&s);
        assert_int_equal(server_first_str(&s, firsts[i], out, sizeof(out)),
                         (int)strlen(RFC_SERVER_FIRST));
        assert_string_equal(out, RFC_SERVER_FIRST);
    }
}

static void test_scram_server_first_accepts_y_flag(void **state)
{
    (void)state;
    /* "y,,": the client supports channel binding but thinks the server does not. Its c= then
     * repeats "y,," (base64 "eSws"). Proof and signature for the RFC salt and nonces computed
     * with Python's hashlib and hmac. */
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server(&s);
    assert_int_equal(server_first_str(&s, "y,,n=user,r=" RFC_CLIENT_NONCE, out, sizeof(out)),
                     (int)strlen(RFC_SERVER_FIRST));
    assert_string_equal(out, RFC_SERVER_FIRST);
    assert_int_equal(
        server_final_str(
            &s, "c=eSws,r=" RFC_NONCE ",p=FoqiHTtQEDE8lz1CdaEe3tK4mS+iMDTl77SPyDS53DY=", out,
            sizeof(out)),
        46);
    assert_string_equal(out, "v=dI4KpiQJwBr1+V+K6U1dA6l6I4I9DUNXWND4pcpRU3U=");
}

static void test_scram_server_final_rejects_mismatched_cbind(void **state)
{
    (void)state;
    /* client-first said "n,,", so "y,," in c= is a mismatch, and the other way round. */
    assert_server_final_rejects("c=eSws,r=" RFC_NONCE
                                ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server(&s);
    assert_true(server_first_str(&s, "y,,n=user,r=" RFC_CLIENT_NONCE, out, sizeof(out)) > 0);
    assert_int_equal(server_final_str(&s, RFC_CLIENT_FINAL, out, sizeof(out)), -1);
}

static void test_scram_server_first_rejects_channel_binding(void **state)
{
    (void)state;
    assert_server_first_rejects("p=tls-server-end-point,,n=,r=" RFC_CLIENT_NONCE);
    assert_server_first_rejects("p,,n=,r=" RFC_CLIENT_NONCE);
}

static void test_scram_server_first_rejects_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "n",
        "n,",
        "n,,",
        "x,,n=,r=abc",
        "n,a=bob,n=,r=abc",  /* authorization identity */
        "n,,r=abc",          /* no user name */
        "n,,n=",             /* no nonce */
        "n,,n=,",            /* no nonce after a comma */
        "n,,n=,r=",          /* empty nonce */
        "n,,n=,r=abc,",      /* trailing comma */
        "n,,n=,r=ab\001c",   /* unprintable nonce */
        "n,,n=,r=ab\x7f",    /* DEL in nonce */
        "n,,m=ext,n=,r=abc", /* mandatory extension */
        "n,,n=,q=abc",       /* wrong attribute */
        "n,,n=,r=abc,=x",    /* nameless attribute */
        "n,,n=,r=abc,1=x",   /* attribute name not a letter */
        "n,,n=,r=abc,xx",    /* not an attribute */
        "n,,n=user r=abc",   /* no separator */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_server_first_rejects(bad[i]);
}

static void test_scram_server_first_rejects_embedded_nul(void **state)
{
    (void)state;
    static const char msg[] = "n,,n=\0,r=" RFC_CLIENT_NONCE;
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server(&s);
    assert_int_equal(scram_server_first(&s, msg, sizeof(msg) - 1, out, sizeof(out)), -1);
}

static void test_scram_server_first_rejects_huge_input(void **state)
{
    (void)state;
    static char msg[4 * SCRAM_MAX_MSG];
    struct scram_server s;
    char out[SCRAM_MAX_MSG];

    /* Whole message over the limit. */
    memset(msg, 'a', sizeof(msg) - 1);
    memcpy(msg, "n,,n=,r=", 8);
    assert_server_first_rejects(msg);

    /* Exactly at the limit. */
    memset(msg, 0, sizeof(msg));
    memset(msg, 'a', SCRAM_MAX_MSG);
    memcpy(msg, "n,,n=,r=", 8);
    assert_server_first_rejects(msg);

    /* Fits the message limit, but the combined nonce would not fit. */
    memset(msg, 0, sizeof(msg));
    memset(msg, 'a', 300);
    memcpy(msg, "n,,n=,r=", 8);
    assert_server_first_rejects(msg);

    /* Too small an output buffer. */
    rfc_server(&s);
    assert_int_equal(server_first_str(&s, RFC_CLIENT_FIRST, out, 10), -1);
}

static void test_scram_server_final_rejects_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "c=biws",
        "c=biws,r=" RFC_NONCE,                                            /* no proof */
        "c=biws,r=" RFC_NONCE ",",                                        /* nothing after comma */
        "r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", /* no c= */
        "c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",          /* no r= */
        "c=biws,r=" RFC_CLIENT_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws,r=" RFC_NONCE "x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biw,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",  /* bad base64 */
        "c=bi*s,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", /* bad base64 */
        "c=,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",     /* empty c= */
        "c=biwsbiws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        /* p= channel binding data: the gs2 header "p=x,," */
        "c=cD14LCw=,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ", /* padding */
        "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ==",
        "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVR=", /* spare bits */
        "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgs",             /* too short */
        "c=biws,r=" RFC_NONCE ",p=",
        "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=,x=1", /* p= last */
        "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=,",
        "c=biws,r=" RFC_NONCE ",9=x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_server_final_rejects(bad[i]);
}

static void test_scram_server_final_accepts_extension_before_proof(void **state)
{
    (void)state;
    /* An extension changes AuthMessage, so the RFC proof no longer verifies: -2, not -1,
     * shows that the message was parsed. */
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server_at_final(&s);
    assert_int_equal(
        server_final_str(
            &s, "c=biws,r=" RFC_NONCE ",x=ext,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", out,
            sizeof(out)),
        -2);
}

static void test_scram_server_final_rejects_huge_and_small_output(void **state)
{
    (void)state;
    static char msg[2 * SCRAM_MAX_MSG];
    memset(msg, 'x', sizeof(msg) - 1);
    memcpy(msg, "c=biws,r=", 9);
    assert_server_final_rejects(msg);

    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server_at_final(&s);
    assert_int_equal(server_final_str(&s, RFC_CLIENT_FINAL, out, 46), -1);
}

static void test_scram_server_steps_out_of_order_fail(void **state)
{
    (void)state;
    struct scram_server s;
    char out[SCRAM_MAX_MSG];
    rfc_server(&s);
    assert_int_equal(server_final_str(&s, RFC_CLIENT_FINAL, out, sizeof(out)), -1);
    rfc_server_at_final(&s);
    assert_int_equal(server_first_str(&s, RFC_CLIENT_FIRST, out, sizeof(out)), -1);
}

static void test_scram_server_init_with_rejects_bad_arguments(void **state)
{
    (void)state;
    struct scram_server s;
    assert_int_equal(scram_server_init_with(&s, "pw", rfc_salt, 0, "abc"), -1);
    assert_int_equal(scram_server_init_with(&s, "pw", rfc_salt, sizeof(rfc_salt), ""), -1);
    assert_int_equal(scram_server_init_with(&s, "pw", rfc_salt, sizeof(rfc_salt), "a,b"), -1);
    assert_int_equal(scram_server_init_with(&s, NULL, rfc_salt, sizeof(rfc_salt), "abc"), -1);
    char out[SCRAM_MAX_MSG];
    assert_int_equal(server_first_str(&s, RFC_CLIENT_FIRST, out, sizeof(out)), -1);
}

/* ---- client ---------------------------------------------------------------------------------- */

/* Expected values for the RFC salt and nonces with an empty user name (n=), which changes
 * AuthMessage; computed independently with Python's hashlib and hmac. */
#define EMPTY_USER_CLIENT_FINAL                                                                    \
    "c=biws,r=" RFC_NONCE ",p=qvT2SWdEH5Q06albL+hjSYuUhCG7VndFyzIb7CK4n9k="
#define EMPTY_USER_SERVER_FINAL "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg="

static void test_scram_client_known_vector(void **state)
{
    (void)state;
    struct scram_client c;
    char out[SCRAM_MAX_MSG];
    assert_int_equal(scram_client_init_with(&c, RFC_PASSWORD, RFC_CLIENT_NONCE), 0);
    int n = scram_client_first(&c, out, sizeof(out));
    assert_int_equal(n, strlen("n,,n=,r=" RFC_CLIENT_NONCE));
    assert_string_equal(out, "n,,n=,r=" RFC_CLIENT_NONCE);
    n = scram_client_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, sizeof(out));
    assert_int_equal(n, strlen(EMPTY_USER_CLIENT_FINAL));
    assert_string_equal(out, EMPTY_USER_CLIENT_FINAL);
    assert_int_equal(
        scram_client_verify(&c, EMPTY_USER_SERVER_FINAL, strlen(EMPTY_USER_SERVER_FINAL)), 0);
}

static void test_scram_client_verify_rejects_wrong_signature(void **state)
{
    (void)state;
    static const char *const bad[] = {
        RFC_SERVER_FINAL, /* signature for another AuthMessage */
        "e=invalid-proof",
        "v=",
        "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg",
        "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg=,",
        "x=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg=",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct scram_client c;
        char out[SCRAM_MAX_MSG];
        rfc_client_after_first(&c);
        assert_true(scram_client_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                       sizeof(out)) > 0);
        if (scram_client_verify(&c, bad[i], strlen(bad[i])) != -1)
            fail_msg("server-final accepted: \"%s\"", bad[i]);
        /* Only one verification per exchange, even of the right signature. */
        assert_int_equal(
            scram_client_verify(&c, EMPTY_USER_SERVER_FINAL, strlen(EMPTY_USER_SERVER_FINAL)), -1);
    }
}

static void test_scram_client_verify_accepts_extension(void **state)
{
    (void)state;
    struct scram_client c;
    char out[SCRAM_MAX_MSG];
    rfc_client_after_first(&c);
    assert_true(
        scram_client_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, sizeof(out)) > 0);
    static const char fin[] = EMPTY_USER_SERVER_FINAL ",x=y";
    assert_int_equal(scram_client_verify(&c, fin, strlen(fin)), 0);
}

static void test_scram_client_final_rejects_bad_server_first(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "r=" RFC_CLIENT_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /* adds no nonce */
        "r=xOprNGfwEbeRWgbNEkqO" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=rOprNGfwEbeRW,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /* shorter than ours */
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001",
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999",
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096x",
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=",
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==",       /* no i= */
        "r=" RFC_NONCE ",i=4096",                           /* no s= */
        "r=" RFC_NONCE ",s=,i=4096",                        /* empty salt */
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096", /* bad base64 */
        "r=" RFC_NONCE ",s=W22ZaJ0S!Y7soEsUEjb6gQ==,i=4096",
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,", /* trailing comma */
        "m=ext,r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "s=W22ZaJ0SNY7soEsUEjb6gQ==,r=" RFC_NONCE ",i=4096", /* order */
        "e=other-error",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_client_final_rejects(bad[i]);
}

static void test_scram_client_final_rejects_huge_and_small_output(void **state)
{
    (void)state;
    static char msg[2 * SCRAM_MAX_MSG];
    memset(msg, 'A', sizeof(msg) - 1);
    memcpy(msg, "r=" RFC_NONCE ",s=", strlen("r=" RFC_NONCE ",s="));
    assert_client_final_rejects(msg);

    struct scram_client c;
    char out[SCRAM_MAX_MSG];
    rfc_client_after_first(&c);
    assert_int_equal(scram_client_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, 20),
                     -1);
}

static void test_scram_client_steps_out_of_order_fail(void **state)
{
    (void)state;
    struct scram_client c;
    char out[SCRAM_MAX_MSG];
    assert_int_equal(scram_client_init_with(&c, RFC_PASSWORD, RFC_CLIENT_NONCE), 0);
    assert_int_equal(
        scram_client_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, sizeof(out)), -1);
    assert_int_equal(scram_client_init_with(&c, RFC_PASSWORD, RFC_CLIENT_NONCE), 0);
    assert_int_equal(
        scram_client_verify(&c, EMPTY_USER_SERVER_FINAL, strlen(EMPTY_USER_SERVER_FINAL)), -1);
    rfc_client_after_first(&c);
    assert_int_equal(scram_client_first(&c, out, sizeof(out)), -1);
}

static void test_scram_client_init_rejects_long_password(void **state)
{
    (void)state;
    char pw[300];
    memset(pw, 'p', sizeof(pw) - 1);
    pw[sizeof(pw) - 1] = '\0';
    struct scram_client c;
    assert_int_equal(scram_client_init(&c, pw), -1);
    char out[SCRAM_MAX_MSG];
    assert_int_equal(scram_client_first(&c, out, sizeof(out)), -1);
    assert_int_equal(scram_client_init_with(&c, "pw", "bad,nonce"), -1);
}

static void test_scram_client_first_small_output_fails(void **state)
{
    (void)state;
    struct scram_client c;
    char out[8];
    assert_int_equal(scram_client_init_with(&c, RFC_PASSWORD, RFC_CLIENT_NONCE), 0);
    assert_int_equal(scram_client_first(&c, out, sizeof(out)), -1);
}

/* ---- client against server ------------------------------------------------------------------ */

/* Runs a whole exchange; returns scram_server_final's result (or -100 if an earlier step
 * failed) and sets *client_ok when the client accepted the server's signature. */
static int exchange(const char *client_pw, const char *server_pw, bool *client_ok)
{
    struct scram_client c;
    struct scram_server s;
    char a[SCRAM_MAX_MSG], b[SCRAM_MAX_MSG];
    *client_ok = false;
    if (scram_client_init(&c, client_pw) < 0 || scram_server_init(&s, server_pw) < 0)
        return -100;
    int n = scram_client_first(&c, a, sizeof(a));
    if (n < 0)
        return -100;
    n = scram_server_first(&s, a, (size_t)n, b, sizeof(b));
    if (n < 0)
        return -100;
    n = scram_client_final(&c, b, (size_t)n, a, sizeof(a));
    if (n < 0)
        return -100;
    int rc = scram_server_final(&s, a, (size_t)n, b, sizeof(b));
    if (rc > 0)
        *client_ok = scram_client_verify(&c, b, (size_t)rc) == 0;
    return rc;
}

static void test_scram_exchange_right_password_succeeds(void **state)
{
    (void)state;
    bool ok;
    int rc = exchange("correct horse battery staple", "correct horse battery staple", &ok);
    assert_int_equal(rc, 2 + 44);
    assert_true(ok);
    rc = exchange("", "", &ok);
    assert_int_equal(rc, 2 + 44);
    assert_true(ok);
}

static void test_scram_exchange_wrong_password_returns_minus2(void **state)
{
    (void)state;
    bool ok;
    assert_int_equal(exchange("secret", "Secret", &ok), -2);
    assert_false(ok);
}

/* The secret PostgreSQL would store for the RFC 7677 password and salt, and its ClientKey. */
#define RFC_SECRET                                                                                 \
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"    \
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
static const uint8_t rfc_client_key[SCRAM_KEY_LEN] = {
    0xa6, 0x0f, 0xc9, 0x23, 0xd6, 0x7e, 0x86, 0x44, 0xa9, 0x2d, 0x16, 0xb9, 0x6e, 0xda, 0x5e, 0xf4,
    0x65, 0x6b, 0x0c, 0x72, 0x5c, 0x48, 0x43, 0x74, 0xbe, 0x25, 0x53, 0x55, 0x76, 0x99, 0x6e, 0x8b};

/* An exchange of client c (initialised) with a server for `configured` (password or secret);
 * the server's return, the ClientKey it proved into key, and whether c accepted the server. */
static int exchange_with(struct scram_client *c, const char *configured, uint8_t key[SCRAM_KEY_LEN],
                         bool *client_ok)
{
    struct scram_server s;
    char a[SCRAM_MAX_MSG], b[SCRAM_MAX_MSG];
    *client_ok = false;
    if (scram_server_start(&s, configured) < 0)
        return -100;
    int n = scram_client_first(c, a, sizeof(a));
    if (n < 0 || (n = scram_server_first(&s, a, (size_t)n, b, sizeof(b))) < 0)
        return -100;
    n = scram_client_final(c, b, (size_t)n, a, sizeof(a));
    if (n < 0)
        return -100;
    int rc = scram_server_final_key(&s, a, (size_t)n, b, sizeof(b), key);
    if (rc > 0)
        *client_ok = scram_client_verify(c, b, (size_t)rc) == 0;
    return rc;
}

static void test_scram_secret_parse(void **state)
{
    (void)state;
    struct scram_secret sec;
    assert_true(scram_is_secret(RFC_SECRET));
    assert_false(scram_is_secret("pencil"));
    assert_false(scram_is_secret("md5abc"));
    assert_int_equal(scram_secret_parse(RFC_SECRET, &sec), 0);
    assert_int_equal(sec.iterations, 4096);
    assert_int_equal(sec.saltlen, sizeof(rfc_salt));
    assert_memory_equal(sec.salt, rfc_salt, sizeof(rfc_salt));
    static const char *const bad[] = {
        "pencil",
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
        "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$4096:$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        /* a key one byte short, and one not base64 */
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4g==:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2d!=",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(scram_secret_parse(bad[i], &sec), -1);
}

static void test_scram_server_checks_a_client_against_a_secret(void **state)
{
    (void)state;
    struct scram_client c;
    uint8_t key[SCRAM_KEY_LEN];
    bool ok;
    /* the right password: accepted, and the ClientKey it proves is the secret's */
    assert_int_equal(scram_client_init(&c, RFC_PASSWORD), 0);
    assert_int_equal(exchange_with(&c, RFC_SECRET, key, &ok), 2 + 44);
    assert_true(ok);
    assert_memory_equal(key, rfc_client_key, SCRAM_KEY_LEN);
    /* a wrong one: refused, no key */
    assert_int_equal(scram_client_init(&c, "Pencil"), 0);
    assert_int_equal(exchange_with(&c, RFC_SECRET, key, &ok), -2);
    assert_false(ok);
    static const uint8_t zero[SCRAM_KEY_LEN];
    assert_memory_equal(key, zero, SCRAM_KEY_LEN);
    /* a malformed secret starts no exchange */
    struct scram_server s;
    assert_int_equal(scram_server_start(&s, "SCRAM-SHA-256$4096:x"), -1);
}

static void test_scram_client_logs_in_with_the_proved_key(void **state)
{
    (void)state;
    struct scram_client c;
    uint8_t key[SCRAM_KEY_LEN];
    bool ok;
    /* a node that stores the same secret: the key logs in, and the node proves itself */
    assert_int_equal(scram_client_start(&c, RFC_SECRET, rfc_client_key), 0);
    assert_int_equal(exchange_with(&c, RFC_SECRET, key, &ok), 2 + 44);
    assert_true(ok);
    /* a node that stores another secret of the same password (another salt): refused */
    assert_int_equal(scram_client_start(&c, RFC_SECRET, rfc_client_key), 0);
    assert_int_equal(exchange_with(&c, RFC_PASSWORD, key, &ok), -2);
    /* without a proved key there is nothing to log in with */
    assert_int_equal(scram_client_start(&c, RFC_SECRET, NULL), -1);
    /* a password still logs in as before */
    assert_int_equal(scram_client_start(&c, "pw", NULL), 0);
    assert_int_equal(exchange_with(&c, "pw", key, &ok), 2 + 44);
    assert_true(ok);
}

static void test_scram_init_uses_fresh_nonces(void **state)
{
    (void)state;
    struct scram_client c1, c2;
    char a[SCRAM_MAX_MSG], b[SCRAM_MAX_MSG];
    assert_int_equal(scram_client_init(&c1, "x"), 0);
    assert_int_equal(scram_client_init(&c2, "x"), 0);
    int n1 = scram_client_first(&c1, a, sizeof(a));
    int n2 = scram_client_first(&c2, b, sizeof(b));
    /* "n,,n=,r=" and 24 base64 characters of 18 random bytes. */
    assert_int_equal(n1, 8 + 24);
    assert_int_equal(n2, 8 + 24);
    assert_string_not_equal(a, b);

    struct scram_server s1, s2;
    assert_int_equal(scram_server_init(&s1, "x"), 0);
    assert_int_equal(scram_server_init(&s2, "x"), 0);
    char sa[SCRAM_MAX_MSG], sb[SCRAM_MAX_MSG];
    n1 = scram_server_first(&s1, a, (size_t)n1, sa, sizeof(sa));
    n2 = scram_server_first(&s2, b, (size_t)n2, sb, sizeof(sb));
    /* r=<24><24>,s=<24>,i=4096: a fresh server nonce; the salt stays the same for one
     * password (so derived keys are cached) and differs between passwords. */
    assert_int_equal(n1, 2 + 48 + 3 + 24 + 7);
    assert_int_equal(n2, 2 + 48 + 3 + 24 + 7);
    assert_memory_not_equal(sa + 26, sb + 26, 24);
    assert_memory_equal(sa + 53, sb + 53, 24);

    struct scram_server s3;
    char sc[SCRAM_MAX_MSG];
    assert_int_equal(scram_server_init(&s3, "y"), 0);
    assert_int_equal(scram_server_first(&s3, a, (size_t)(8 + 24), sc, sizeof(sc)), n1);
    assert_memory_not_equal(sa + 53, sc + 53, 24);
}

/* The cached key derivation gives the same answers as a fresh one: a full exchange twice with
 * the same password (second from the cache) and a wrong password after a right one. */
static void test_scram_cache_consistent(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++) {
        const char *pw = round == 2 ? "wrong" : "pencil";
        struct scram_server s;
        struct scram_client c;
        char m1[SCRAM_MAX_MSG], m2[SCRAM_MAX_MSG], m3[SCRAM_MAX_MSG], m4[SCRAM_MAX_MSG];
        assert_int_equal(scram_server_init(&s, "pencil"), 0);
        assert_int_equal(scram_client_init(&c, pw), 0);
        int n = scram_client_first(&c, m1, sizeof(m1));
        n = scram_server_first(&s, m1, (size_t)n, m2, sizeof(m2));
        assert_true(n > 0);
        n = scram_client_final(&c, m2, (size_t)n, m3, sizeof(m3));
        assert_true(n > 0);
        n = scram_server_final(&s, m3, (size_t)n, m4, sizeof(m4));
        if (round == 2) {
            assert_int_equal(n, -2);
        } else {
            assert_true(n > 0);
            assert_int_equal(scram_client_verify(&c, m4, (size_t)n), 0);
        }
    }
}

/* ---- MD5 and helpers ------------------------------------------------------------------------- */

static void test_auth_md5_response_known_vector(void **state)
{
    (void)state;
    /* Computed with Python: "md5" + md5(md5(password + user).hexdigest() + salt).hexdigest() */
    char out[36];
    static const uint8_t salt1[4] = {1, 2, 3, 4};
    auth_md5_response("postgres", "secret", salt1, out);
    assert_string_equal(out, "md5bb41a296aab6baccb36ff243a562abff");
    static const uint8_t salt2[4] = {0xde, 0xad, 0xbe, 0xef};
    auth_md5_response("user", "pencil", salt2, out);
    assert_string_equal(out, "md50f5b636d891e9860623ac8ca91fc9dfc");
}

static void test_auth_equal_compares(void **state)
{
    (void)state;
    assert_true(auth_equal("abcd", "abcd", 4));
    assert_false(auth_equal("abcd", "abce", 4));
    assert_true(auth_equal("abcd", "abce", 3));
    assert_true(auth_equal("", "", 0));
}

static void test_auth_random_fills(void **state)
{
    (void)state;
    uint8_t a[32] = {0}, b[32] = {0}, zero[32] = {0};
    assert_int_equal(auth_random(a, sizeof(a)), 0);
    assert_int_equal(auth_random(b, sizeof(b)), 0);
    assert_memory_not_equal(a, zero, sizeof(a));
    assert_memory_not_equal(a, b, sizeof(a));
    assert_int_equal(auth_random(a, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scram_server_rfc7677_vector),
        cmocka_unit_test(test_scram_server_final_wrong_proof_returns_minus2),
        cmocka_unit_test(test_scram_server_first_ignores_user_name),
        cmocka_unit_test(test_scram_server_first_accepts_y_flag),
        cmocka_unit_test(test_scram_server_final_rejects_mismatched_cbind),
        cmocka_unit_test(test_scram_server_first_rejects_channel_binding),
        cmocka_unit_test(test_scram_server_first_rejects_malformed),
        cmocka_unit_test(test_scram_server_first_rejects_embedded_nul),
        cmocka_unit_test(test_scram_server_first_rejects_huge_input),
        cmocka_unit_test(test_scram_server_final_rejects_malformed),
        cmocka_unit_test(test_scram_server_final_accepts_extension_before_proof),
        cmocka_unit_test(test_scram_server_final_rejects_huge_and_small_output),
        cmocka_unit_test(test_scram_server_steps_out_of_order_fail),
        cmocka_unit_test(test_scram_server_init_with_rejects_bad_arguments),
        cmocka_unit_test(test_scram_client_known_vector),
        cmocka_unit_test(test_scram_client_verify_rejects_wrong_signature),
        cmocka_unit_test(test_scram_client_verify_accepts_extension),
        cmocka_unit_test(test_scram_client_final_rejects_bad_server_first),
        cmocka_unit_test(test_scram_client_final_rejects_huge_and_small_output),
        cmocka_unit_test(test_scram_client_steps_out_of_order_fail),
        cmocka_unit_test(test_scram_client_init_rejects_long_password),
        cmocka_unit_test(test_scram_client_first_small_output_fails),
        cmocka_unit_test(test_scram_exchange_right_password_succeeds),
        cmocka_unit_test(test_scram_exchange_wrong_password_returns_minus2),
        cmocka_unit_test(test_scram_init_uses_fresh_nonces),
        cmocka_unit_test(test_scram_cache_consistent),
        cmocka_unit_test(test_auth_md5_response_known_vector),
        cmocka_unit_test(test_auth_equal_compares),
        cmocka_unit_test(test_auth_random_fills),
        cmocka_unit_test(test_scram_secret_parse),
        cmocka_unit_test(test_scram_server_checks_a_client_against_a_secret),
        cmocka_unit_test(test_scram_client_logs_in_with_the_proved_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
