/* SPDX-License-Identifier: MIT */
/* Password authentication: SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, on the
 * server side (a client logging in to pgsteer) and the client side (pgsteer logging in to a
 * node), and the MD5 response. Messages are parsed with every length checked; anything
 * malformed is an error, never a crash. */
#include "auth.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

/* Passwords are used as given, without SASLprep (RFC 4013). For printable ASCII, which is what
 * pgsteer supports, SASLprep is the identity, so the keys match PostgreSQL's. A non-ASCII
 * password that SASLprep would normalise differently would not match a node's verifier. */

#define SALT_LEN       16
#define MAX_SALT       64       /* salt bytes accepted from the testing hook */
#define MAX_ITERATIONS 10000000 /* a node asking for more is broken or hostile */
#define PROOF_B64_LEN  44       /* base64 of SCRAM_KEY_LEN bytes */

enum scram_server_state {
    SERVER_WANT_FIRST = 0, /* expecting client-first-message */
    SERVER_WANT_FINAL = 1, /* expecting client-final-message */
    SERVER_DONE = 2,       /* finished, successfully or not: no message is accepted */
};

enum scram_client_state {
    CLIENT_INIT = 0,       /* nothing sent yet */
    CLIENT_SENT_FIRST = 1, /* client-first sent, expecting server-first */
    CLIENT_SENT_FINAL = 2, /* client-final sent, expecting server-final */
    CLIENT_DONE = 3,       /* finished, successfully or not */
};

/* ---- base64 (RFC 4648, with padding) ------------------------------------------------------ */

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Writes 4 * ceil(n / 3) characters and a NUL to out; returns the characters written. */
static size_t b64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = b64_chars[(v >> 18) & 63];
        out[o++] = b64_chars[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64_chars[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? b64_chars[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict decoding: whole 4-character groups, '=' only as final padding, unused bits zero.
 * Returns the decoded length, or -1 when malformed or longer than outcap. */
static int b64_decode(const char *in, size_t n, uint8_t *out, size_t outcap)
{
    if (n % 4 != 0 || n / 4 * 3 > (size_t)INT_MAX)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int pad = 0;
        if (last && in[i + 3] == '=')
            pad = in[i + 2] == '=' ? 2 : 1;
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            int d = 0;
            if (k < 4 - pad) {
                d = b64_value(in[i + (size_t)k]);
                if (d < 0)
                    return -1;
            }
            v = (v << 6) | (uint32_t)d;
        }
        /* Bits that no output byte uses must be zero, so one value has one encoding. */
        if ((pad == 1 && (v & 0xff) != 0) || (pad == 2 && (v & 0xffff) != 0))
            return -1;
        size_t bytes = 3 - (size_t)pad;
        if (o + bytes > outcap)
            return -1;
        out[o++] = (uint8_t)(v >> 16);
        if (bytes > 1)
            out[o++] = (uint8_t)(v >> 8);
        if (bytes > 2)
            out[o++] = (uint8_t)v;
    }
    return (int)o;
}

/* ---- attribute lists ("a=value,b=value") --------------------------------------------------- */

struct attrs {
    const char *p;
    size_t n;
    size_t pos;
    bool comma; /* the last value ended with ',', so another attribute must follow */
};

static void attrs_init(struct attrs *a, const char *p, size_t n)
{
    a->p = p;
    a->n = n;
    a->pos = 0;
    a->comma = false;
}

static bool attrs_at_end(const struct attrs *a)
{
    return a->pos == a->n && !a->comma;
}

/* The attribute name at the cursor, or 0 when none is there. */
static char attrs_peek(const struct attrs *a)
{
    if (a->n - a->pos < 2 || a->p[a->pos + 1] != '=')
        return 0;
    char c = a->p[a->pos];
    return ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) ? c : 0;
}

/* Reads attribute `want` (any attribute when want is 0) into *val / *vlen.
 * Returns 0, or -1 when the next attribute is missing, different or malformed. */
static int attrs_next(struct attrs *a, char want, const char **val, size_t *vlen)
{
    char c = attrs_peek(a);
    if (c == 0 || (want != 0 && c != want))
        return -1;
    size_t start = a->pos + 2;
    const char *comma = memchr(a->p + start, ',', a->n - start);
    size_t end = comma ? (size_t)(comma - a->p) : a->n;
    *val = a->p + start;
    *vlen = end - start;
    a->comma = comma != NULL;
    a->pos = comma ? end + 1 : end;
    return 0;
}

/* A message of the exchange: non-empty, bounded, and text (the protocol carries it as bytes,
 * so an embedded NUL would make it mean different things to different parsers). */
static bool msg_ok(const char *msg, size_t n)
{
    return msg != NULL && n > 0 && n < SCRAM_MAX_MSG && memchr(msg, '\0', n) == NULL;
}

/* RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ','. */
static bool nonce_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e || c == ',')
            return false;
    }
    return true;
}

/* ---- key derivation ------------------------------------------------------------------------ */

static int hmac256(const uint8_t *key, size_t keylen, const void *data, size_t n,
                   uint8_t out[SCRAM_KEY_LEN])
{
    unsigned int outlen = 0;
    if (HMAC(EVP_sha256(), key, (int)keylen, data, n, out, &outlen) == NULL ||
        outlen != SCRAM_KEY_LEN)
        return -1;
    return 0;
}

/* PBKDF2 with 4096 rounds costs a millisecond or two of CPU, on the event loop, for every
 * login in either direction. Its result depends only on (password, salt, iterations), which
 * repeat: a node keeps one salt per role, and pgsteer uses one salt per password for the life
 * of the process. So results are cached, keyed by a SHA-256 of the inputs. The cache holds
 * password equivalents, as the configuration in memory already does. Shared by the workers'
 * threads under pbkdf2_lock (held for a lookup or an insert, not for the computation). */
#define PBKDF2_CACHE 64
static pthread_mutex_t pbkdf2_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    uint8_t key[SCRAM_KEY_LEN];
    uint8_t salted[SCRAM_KEY_LEN];
    bool used;
} pbkdf2_cache[PBKDF2_CACHE];
static unsigned pbkdf2_next;

static int salted_password(const char *password, const uint8_t *salt, size_t saltlen,
                           int iterations, uint8_t out[SCRAM_KEY_LEN])
{
    uint8_t key[SCRAM_KEY_LEN];
    uint8_t head[8] = {(uint8_t)(iterations >> 24), (uint8_t)(iterations >> 16),
                       (uint8_t)(iterations >> 8),  (uint8_t)iterations,
                       (uint8_t)(saltlen >> 24),    (uint8_t)(saltlen >> 16),
                       (uint8_t)(saltlen >> 8),     (uint8_t)saltlen};
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int klen = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, head, sizeof(head)) == 1 &&
             EVP_DigestUpdate(ctx, salt, saltlen) == 1 &&
             EVP_DigestUpdate(ctx, password, strlen(password)) == 1 &&
             EVP_DigestFinal_ex(ctx, key, &klen) == 1 && klen == SCRAM_KEY_LEN;
    EVP_MD_CTX_free(ctx);
    if (ok) {
        bool hit = false;
        pthread_mutex_lock(&pbkdf2_lock);
        for (size_t i = 0; i < PBKDF2_CACHE && !hit; i++) {
            if (pbkdf2_cache[i].used && CRYPTO_memcmp(pbkdf2_cache[i].key, key, sizeof(key)) == 0) {
                memcpy(out, pbkdf2_cache[i].salted, SCRAM_KEY_LEN);
                hit = true;
            }
        }
        pthread_mutex_unlock(&pbkdf2_lock);
        if (hit)
            return 0;
    }
    if (PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)saltlen, iterations,
                          EVP_sha256(), SCRAM_KEY_LEN, out) != 1)
        return -1;
    if (ok) {
        pthread_mutex_lock(&pbkdf2_lock);
        unsigned slot = pbkdf2_next++ % PBKDF2_CACHE;
        memcpy(pbkdf2_cache[slot].key, key, sizeof(key));
        memcpy(pbkdf2_cache[slot].salted, out, SCRAM_KEY_LEN);
        pbkdf2_cache[slot].used = true;
        pthread_mutex_unlock(&pbkdf2_lock);
    }
    return 0;
}

/* SaltedPassword, then ClientKey, StoredKey and ServerKey from it. client_key may be NULL. */
static int derive_keys(const char *password, const uint8_t *salt, size_t saltlen, int iterations,
                       uint8_t client_key[SCRAM_KEY_LEN], uint8_t stored_key[SCRAM_KEY_LEN],
                       uint8_t server_key[SCRAM_KEY_LEN])
{
    uint8_t salted[SCRAM_KEY_LEN], ck[SCRAM_KEY_LEN];
    int rc = -1;
    if (salted_password(password, salt, saltlen, iterations, salted) < 0)
        goto out;
    if (hmac256(salted, sizeof(salted), "Client Key", 10, ck) < 0 ||
        hmac256(salted, sizeof(salted), "Server Key", 10, server_key) < 0)
        goto out;
    if (SHA256(ck, sizeof(ck), stored_key) == NULL)
        goto out;
    if (client_key != NULL)
        memcpy(client_key, ck, sizeof(ck));
    rc = 0;
out:
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(ck, sizeof(ck));
    return rc;
}

/* AuthMessage = client-first-bare "," server-first "," client-final-without-proof. */
static int auth_message_hmac(const uint8_t key[SCRAM_KEY_LEN], const char *bare,
                             const char *server_first, const char *final, size_t final_len,
                             uint8_t out[SCRAM_KEY_LEN])
{
    char msg[3 * SCRAM_MAX_MSG];
    int len = snprintf(msg, sizeof(msg), "%s,%s,%.*s", bare, server_first, (int)final_len, final);
    if (len < 0 || (size_t)len >= sizeof(msg))
        return -1;
    return hmac256(key, SCRAM_KEY_LEN, msg, (size_t)len, out);
}

static int parse_iterations(const char *s, size_t n);

/* ---- stored secrets ------------------------------------------------------------------------ */

#define SECRET_PREFIX "SCRAM-SHA-256$"

bool scram_is_secret(const char *text)
{
    return text != NULL && strncmp(text, SECRET_PREFIX, sizeof(SECRET_PREFIX) - 1) == 0;
}

int scram_secret_parse(const char *text, struct scram_secret *out)
{
    memset(out, 0, sizeof(*out));
    if (!scram_is_secret(text))
        return -1;
    const char *p = text + sizeof(SECRET_PREFIX) - 1;
    const char *colon = strchr(p, ':');
    const char *dollar = colon ? strchr(colon, '$') : NULL;
    const char *colon2 = dollar ? strchr(dollar, ':') : NULL;
    if (colon2 == NULL)
        return -1;
    const char *end = colon2 + strlen(colon2);
    int iterations = parse_iterations(p, (size_t)(colon - p));
    int saltlen = b64_decode(colon + 1, (size_t)(dollar - colon - 1), out->salt, sizeof(out->salt));
    if (iterations < 0 || saltlen < 1 ||
        b64_decode(dollar + 1, (size_t)(colon2 - dollar - 1), out->stored_key,
                   sizeof(out->stored_key)) != SCRAM_KEY_LEN ||
        b64_decode(colon2 + 1, (size_t)(end - colon2 - 1), out->server_key,
                   sizeof(out->server_key)) != SCRAM_KEY_LEN) {
        OPENSSL_cleanse(out, sizeof(*out));
        return -1;
    }
    out->iterations = iterations;
    out->saltlen = (size_t)saltlen;
    return 0;
}

/* ---- server side --------------------------------------------------------------------------- */

int scram_server_init_with(struct scram_server *s, const char *password, const uint8_t *salt,
                           size_t saltlen, const char *server_nonce)
{
    memset(s, 0, sizeof(*s));
    s->state = SERVER_DONE; /* unusable unless initialisation completes */
    size_t nlen = server_nonce ? strlen(server_nonce) : 0;
    if (password == NULL || salt == NULL || saltlen == 0 || saltlen > MAX_SALT ||
        !nonce_ok(server_nonce, nlen) || nlen >= sizeof(s->nonce) / 2)
        return -1;
    if (derive_keys(password, salt, saltlen, SCRAM_ITERATIONS, NULL, s->stored_key, s->server_key) <
        0)
        return -1;
    /* Until the client's nonce arrives, `nonce` holds the server's part and server_first the
     * part of server-first-message that follows the nonce. */
    memcpy(s->nonce, server_nonce, nlen + 1);
    char salt64[4 * ((MAX_SALT + 2) / 3) + 1];
    b64_encode(salt, saltlen, salt64);
    snprintf(s->server_first, sizeof(s->server_first), ",s=%s,i=%d", salt64, SCRAM_ITERATIONS);
    s->state = SERVER_WANT_FIRST;
    return 0;
}

int scram_server_init_secret(struct scram_server *s, const struct scram_secret *secret)
{
    memset(s, 0, sizeof(*s));
    s->state = SERVER_DONE;
    uint8_t raw[SCRAM_NONCE_RAW];
    char salt64[4 * ((sizeof(secret->salt) + 2) / 3) + 1];
    if (secret->saltlen < 1 || secret->saltlen > sizeof(secret->salt) ||
        auth_random(raw, sizeof(raw)) < 0)
        return -1;
    b64_encode(raw, sizeof(raw), s->nonce);
    memcpy(s->stored_key, secret->stored_key, SCRAM_KEY_LEN);
    memcpy(s->server_key, secret->server_key, SCRAM_KEY_LEN);
    b64_encode(secret->salt, secret->saltlen, salt64);
    snprintf(s->server_first, sizeof(s->server_first), ",s=%s,i=%d", salt64, secret->iterations);
    s->state = SERVER_WANT_FIRST;
    return 0;
}

int scram_server_init(struct scram_server *s, const char *password)
{
    /* One salt per password for the life of the process (as a server keeps one per role), so
     * that the derived keys come from the cache after the first login: the salt is a keyed
     * hash of the password under a secret drawn once. */
    static uint8_t secret[32];
    static bool have_secret;
    static pthread_mutex_t secret_lock = PTHREAD_MUTEX_INITIALIZER;
    uint8_t raw[SCRAM_NONCE_RAW], salt[SALT_LEN], mac[SCRAM_KEY_LEN];
    char nonce[4 * ((SCRAM_NONCE_RAW + 2) / 3) + 1];
    pthread_mutex_lock(&secret_lock);
    if (!have_secret && auth_random(secret, sizeof(secret)) == 0)
        have_secret = true;
    bool secret_ok = have_secret;
    pthread_mutex_unlock(&secret_lock);
    if (!secret_ok || auth_random(raw, sizeof(raw)) < 0 ||
        hmac256(secret, sizeof(secret), password ? password : "", password ? strlen(password) : 0,
                mac) < 0) {
        memset(s, 0, sizeof(*s));
        s->state = SERVER_DONE;
        return -1;
    }
    memcpy(salt, mac, sizeof(salt));
    b64_encode(raw, sizeof(raw), nonce);
    return scram_server_init_with(s, password, salt, sizeof(salt), nonce);
}

int scram_server_first(struct scram_server *s, const char *msg, size_t n, char *out, size_t outcap)
{
    if (s->state != SERVER_WANT_FIRST)
        return -1;
    s->state = SERVER_DONE; /* any failure ends the exchange */
    if (!msg_ok(msg, n) || n < 3)
        return -1;
    /* gs2-header: "n,," (no channel binding) or "y,," (client could bind but believes we
     * cannot). "p=..." asks for channel binding, which pgsteer does not offer; an
     * authorization identity ("n,a=...,") is not supported, as in PostgreSQL. */
    char flag = msg[0];
    if ((flag != 'n' && flag != 'y') || msg[1] != ',' || msg[2] != ',')
        return -1;
    const char *bare = msg + 3;
    size_t bare_len = n - 3;

    struct attrs a;
    const char *user, *cnonce, *v;
    size_t user_len, cnonce_len, vlen;
    attrs_init(&a, bare, bare_len);
    /* A mandatory extension (m=) must make the exchange fail (RFC 5802, 5.1). */
    if (attrs_peek(&a) == 'm')
        return -1;
    /* The user name is ignored, as PostgreSQL does: the startup packet named the user, and
     * clients commonly send an empty n=. */
    if (attrs_next(&a, 'n', &user, &user_len) < 0 || attrs_next(&a, 'r', &cnonce, &cnonce_len) < 0)
        return -1;
    (void)user;
    (void)user_len;
    if (!nonce_ok(cnonce, cnonce_len))
        return -1;
    while (!attrs_at_end(&a))
        if (attrs_next(&a, 0, &v, &vlen) < 0)
            return -1;

    size_t snonce_len = strlen(s->nonce);
    if (cnonce_len + snonce_len >= sizeof(s->nonce))
        return -1;
    char full_nonce[sizeof(s->nonce)];
    memcpy(full_nonce, cnonce, cnonce_len);
    memcpy(full_nonce + cnonce_len, s->nonce, snonce_len + 1);

    char first[SCRAM_MAX_MSG];
    int len = snprintf(first, sizeof(first), "r=%s%s", full_nonce, s->server_first);
    if (len < 0 || (size_t)len >= sizeof(first) || (size_t)len >= outcap)
        return -1;

    memcpy(s->nonce, full_nonce, sizeof(full_nonce));
    memcpy(s->server_first, first, (size_t)len + 1);
    memcpy(s->client_first_bare, bare, bare_len);
    s->client_first_bare[bare_len] = '\0';
    s->cbind_flag = flag;
    memcpy(out, first, (size_t)len + 1);
    s->state = SERVER_WANT_FINAL;
    return len;
}

/* Checks a client-final-message and writes the server-final-message; see scram_server_final. */
static int server_final(struct scram_server *s, const char *msg, size_t n, char *out, size_t outcap,
                        uint8_t sig[SCRAM_KEY_LEN], uint8_t client_key[SCRAM_KEY_LEN])
{
    struct attrs a;
    const char *cb, *nonce, *proof64, *v;
    size_t cb_len, nonce_len, proof64_len, vlen;
    uint8_t cbind[SCRAM_MAX_MSG];
    attrs_init(&a, msg, n);

    /* c= repeats the gs2 header; it must be the one client-first carried, so that a
     * man in the middle cannot turn a "y" into an "n" (downgrade protection). */
    if (attrs_next(&a, 'c', &cb, &cb_len) < 0)
        return -1;
    int cbn = b64_decode(cb, cb_len, cbind, sizeof(cbind));
    if (cbn != 3 || cbind[0] != (uint8_t)s->cbind_flag || cbind[1] != ',' || cbind[2] != ',')
        return -1;
    if (attrs_next(&a, 'r', &nonce, &nonce_len) < 0 || nonce_len != strlen(s->nonce) ||
        memcmp(nonce, s->nonce, nonce_len) != 0)
        return -1;
    /* Extensions may come before the proof, which is always last. */
    while (attrs_peek(&a) != 'p')
        if (attrs_next(&a, 0, &v, &vlen) < 0)
            return -1;
    size_t without_proof_len = a.pos - 1; /* up to the ',' before "p=" */
    if (attrs_next(&a, 'p', &proof64, &proof64_len) < 0 || !attrs_at_end(&a))
        return -1;
    uint8_t proof[SCRAM_KEY_LEN], check[SCRAM_KEY_LEN];
    if (proof64_len != PROOF_B64_LEN ||
        b64_decode(proof64, proof64_len, proof, sizeof(proof)) != SCRAM_KEY_LEN)
        return -1;
    if (outcap < 2 + PROOF_B64_LEN + 1)
        return -1;

    /* ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the password was right when
     * SHA256(ClientKey) == StoredKey. */
    if (auth_message_hmac(s->stored_key, s->client_first_bare, s->server_first, msg,
                          without_proof_len, sig) < 0)
        return -1;
    for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
        client_key[i] = proof[i] ^ sig[i];
    if (SHA256(client_key, SCRAM_KEY_LEN, check) == NULL)
        return -1;
    if (!auth_equal(check, s->stored_key, SCRAM_KEY_LEN))
        return -2;
    if (auth_message_hmac(s->server_key, s->client_first_bare, s->server_first, msg,
                          without_proof_len, sig) < 0)
        return -1;
    memcpy(out, "v=", 2);
    return 2 + (int)b64_encode(sig, SCRAM_KEY_LEN, out + 2);
}

int scram_server_final_key(struct scram_server *s, const char *msg, size_t n, char *out,
                           size_t outcap, uint8_t client_key[SCRAM_KEY_LEN])
{
    int rc = -1;
    uint8_t sig[SCRAM_KEY_LEN];
    if (s->state == SERVER_WANT_FINAL && msg_ok(msg, n))
        rc = server_final(s, msg, n, out, outcap, sig, client_key);
    s->state = SERVER_DONE;
    if (rc < 0)
        OPENSSL_cleanse(client_key, SCRAM_KEY_LEN);
    /* One attempt per exchange: the keys are not needed any more. */
    OPENSSL_cleanse(sig, sizeof(sig));
    OPENSSL_cleanse(s->stored_key, sizeof(s->stored_key));
    OPENSSL_cleanse(s->server_key, sizeof(s->server_key));
    return rc;
}

int scram_server_final(struct scram_server *s, const char *msg, size_t n, char *out, size_t outcap)
{
    uint8_t client_key[SCRAM_KEY_LEN];
    int rc = scram_server_final_key(s, msg, n, out, outcap, client_key);
    OPENSSL_cleanse(client_key, sizeof(client_key));
    return rc;
}

/* ---- client side --------------------------------------------------------------------------- */

int scram_client_init_with(struct scram_client *c, const char *password, const char *client_nonce)
{
    memset(c, 0, sizeof(*c));
    c->state = CLIENT_DONE;
    size_t plen = password ? strlen(password) : 0;
    size_t nlen = client_nonce ? strlen(client_nonce) : 0;
    if (password == NULL || plen >= sizeof(c->password) || !nonce_ok(client_nonce, nlen) ||
        nlen >= sizeof(c->client_nonce))
        return -1;
    memcpy(c->password, password, plen + 1);
    memcpy(c->client_nonce, client_nonce, nlen + 1);
    c->state = CLIENT_INIT;
    return 0;
}

int scram_client_init_key(struct scram_client *c, const uint8_t client_key[SCRAM_KEY_LEN],
                          const uint8_t server_key[SCRAM_KEY_LEN])
{
    if (scram_client_init(c, "") < 0)
        return -1;
    c->with_key = true;
    memcpy(c->client_key, client_key, SCRAM_KEY_LEN);
    memcpy(c->server_key, server_key, SCRAM_KEY_LEN);
    return 0;
}

int scram_client_init(struct scram_client *c, const char *password)
{
    uint8_t raw[SCRAM_NONCE_RAW];
    char nonce[4 * ((SCRAM_NONCE_RAW + 2) / 3) + 1];
    if (auth_random(raw, sizeof(raw)) < 0) {
        memset(c, 0, sizeof(*c));
        c->state = CLIENT_DONE;
        return -1;
    }
    b64_encode(raw, sizeof(raw), nonce);
    return scram_client_init_with(c, password, nonce);
}

int scram_client_first(struct scram_client *c, char *out, size_t outcap)
{
    if (c->state != CLIENT_INIT)
        return -1;
    /* The user name is left empty: a node takes it from the startup packet. */
    int blen =
        snprintf(c->client_first_bare, sizeof(c->client_first_bare), "n=,r=%s", c->client_nonce);
    int len = snprintf(out, outcap, "n,,%s", c->client_first_bare);
    if (blen < 0 || len < 0 || (size_t)len >= outcap) {
        c->state = CLIENT_DONE;
        return -1;
    }
    c->state = CLIENT_SENT_FIRST;
    return len;
}

/* Parses a decimal iteration count in [1, MAX_ITERATIONS]; -1 otherwise. */
static int parse_iterations(const char *s, size_t n)
{
    if (n == 0 || n > 8)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= MAX_ITERATIONS ? (int)v : -1;
}

/* Derives the proof from the server-first-message; see scram_client_final. Keys are
 * computed into the caller's arrays so that it can wipe them. */
static int client_final(struct scram_client *c, const char *server_first, size_t n, char *out,
                        size_t outcap, uint8_t keys[4][SCRAM_KEY_LEN])
{
    struct attrs a;
    const char *nonce, *salt64, *iter, *v;
    size_t nonce_len, salt64_len, iter_len, vlen;
    uint8_t salt[SCRAM_MAX_MSG];
    attrs_init(&a, server_first, n);
    if (attrs_peek(&a) == 'm')
        return -1;
    if (attrs_next(&a, 'r', &nonce, &nonce_len) < 0 ||
        attrs_next(&a, 's', &salt64, &salt64_len) < 0 || attrs_next(&a, 'i', &iter, &iter_len) < 0)
        return -1;
    while (!attrs_at_end(&a))
        if (attrs_next(&a, 0, &v, &vlen) < 0)
            return -1;
    /* The server's nonce must extend ours: otherwise the reply belongs to another exchange,
     * or the server added no freshness of its own. */
    size_t cn_len = strlen(c->client_nonce);
    if (nonce_len <= cn_len || memcmp(nonce, c->client_nonce, cn_len) != 0 ||
        !nonce_ok(nonce, nonce_len))
        return -1;
    int saltlen = b64_decode(salt64, salt64_len, salt, sizeof(salt));
    int iterations = parse_iterations(iter, iter_len);
    if (saltlen < 1 || iterations < 0)
        return -1;

    char without_proof[SCRAM_MAX_MSG];
    int wlen =
        snprintf(without_proof, sizeof(without_proof), "c=biws,r=%.*s", (int)nonce_len, nonce);
    if (wlen < 0 || (size_t)wlen >= sizeof(without_proof) ||
        (size_t)wlen + 3 + PROOF_B64_LEN >= outcap)
        return -1;
    char first[SCRAM_MAX_MSG];
    memcpy(first, server_first, n);
    first[n] = '\0';

    uint8_t *client_key = keys[0], *stored_key = keys[1], *server_key = keys[2], *sig = keys[3];
    if (c->with_key) { /* the keys of the secret the node stores: its salt is that secret's */
        memcpy(client_key, c->client_key, SCRAM_KEY_LEN);
        memcpy(server_key, c->server_key, SCRAM_KEY_LEN);
        if (SHA256(client_key, SCRAM_KEY_LEN, stored_key) == NULL)
            return -1;
    } else if (derive_keys(c->password, salt, (size_t)saltlen, iterations, client_key, stored_key,
                           server_key) < 0) {
        return -1;
    }
    if (auth_message_hmac(stored_key, c->client_first_bare, first, without_proof, (size_t)wlen,
                          sig) < 0 ||
        auth_message_hmac(server_key, c->client_first_bare, first, without_proof, (size_t)wlen,
                          c->server_signature) < 0)
        return -1;
    /* ClientProof = ClientKey XOR ClientSignature; reuse sig's storage for it. */
    for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
        sig[i] ^= client_key[i];
    memcpy(out, without_proof, (size_t)wlen);
    memcpy(out + wlen, ",p=", 3);
    return wlen + 3 + (int)b64_encode(sig, SCRAM_KEY_LEN, out + wlen + 3);
}

int scram_client_final(struct scram_client *c, const char *server_first, size_t n, char *out,
                       size_t outcap)
{
    if (c->state != CLIENT_SENT_FIRST)
        return -1;
    c->state = CLIENT_DONE;
    uint8_t keys[4][SCRAM_KEY_LEN];
    int rc = -1;
    if (msg_ok(server_first, n))
        rc = client_final(c, server_first, n, out, outcap, keys);
    if (rc >= 0)
        c->state = CLIENT_SENT_FINAL;
    OPENSSL_cleanse(keys, sizeof(keys));
    /* The password (or keys) are not needed any more. */
    OPENSSL_cleanse(c->password, sizeof(c->password));
    OPENSSL_cleanse(c->client_key, sizeof(c->client_key));
    OPENSSL_cleanse(c->server_key, sizeof(c->server_key));
    return rc;
}

int scram_client_verify(struct scram_client *c, const char *server_final, size_t n)
{
    if (c->state != CLIENT_SENT_FINAL)
        return -1;
    c->state = CLIENT_DONE;
    if (!msg_ok(server_final, n))
        return -1;
    struct attrs a;
    const char *sig64, *v;
    size_t sig64_len, vlen;
    uint8_t sig[SCRAM_KEY_LEN];
    attrs_init(&a, server_final, n);
    /* "e=..." reports a server-side error: the exchange failed. */
    if (attrs_next(&a, 'v', &sig64, &sig64_len) < 0)
        return -1;
    while (!attrs_at_end(&a))
        if (attrs_next(&a, 0, &v, &vlen) < 0)
            return -1;
    if (sig64_len != PROOF_B64_LEN ||
        b64_decode(sig64, sig64_len, sig, sizeof(sig)) != SCRAM_KEY_LEN)
        return -1;
    return auth_equal(sig, c->server_signature, SCRAM_KEY_LEN) ? 0 : -1;
}

int scram_server_start(struct scram_server *s, const char *configured)
{
    if (!scram_is_secret(configured))
        return scram_server_init(s, configured);
    struct scram_secret sec;
    int rc = scram_secret_parse(configured, &sec) == 0 ? scram_server_init_secret(s, &sec) : -1;
    OPENSSL_cleanse(&sec, sizeof(sec));
    if (rc < 0)
        s->state = SERVER_DONE;
    return rc;
}

int scram_client_start(struct scram_client *c, const char *configured, const uint8_t *client_key)
{
    if (!scram_is_secret(configured))
        return scram_client_init(c, configured);
    struct scram_secret sec;
    int rc = client_key != NULL && scram_secret_parse(configured, &sec) == 0
                 ? scram_client_init_key(c, client_key, sec.server_key)
                 : -1;
    OPENSSL_cleanse(&sec, sizeof(sec));
    if (rc < 0) {
        memset(c, 0, sizeof(*c));
        c->state = CLIENT_DONE;
    }
    return rc;
}

/* ---- MD5 and helpers ----------------------------------------------------------------------- */

static int md5_hex(const void *data, size_t n, char hex[33])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, n, md, &mdlen, EVP_md5(), NULL) != 1 || mdlen != 16)
        return -1;
    for (unsigned int i = 0; i < 16; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[32] = '\0';
    return 0;
}

void auth_md5_response(const char *user, const char *password, const uint8_t salt[4], char out[36])
{
    size_t ulen = strlen(user), plen = strlen(password);
    char inner[33];
    char tmp[512];
    char *buf = tmp;
    out[0] = '\0';
    /* Long credentials are rare; only they pay for an allocation. */
    if (plen + ulen > sizeof(tmp)) {
        buf = OPENSSL_malloc(plen + ulen);
        if (buf == NULL)
            return;
    }
    memcpy(buf, password, plen);
    memcpy(buf + plen, user, ulen);
    int rc = md5_hex(buf, plen + ulen, inner);
    OPENSSL_cleanse(buf, plen + ulen);
    if (buf != tmp)
        OPENSSL_free(buf);
    if (rc < 0)
        return; /* MD5 unavailable (FIPS mode): an empty response, which a node rejects */

    uint8_t salted[32 + 4];
    memcpy(salted, inner, 32);
    memcpy(salted + 32, salt, 4);
    char outer[33];
    if (md5_hex(salted, sizeof(salted), outer) < 0)
        return;
    memcpy(out, "md5", 3);
    memcpy(out + 3, outer, 33);
}

bool auth_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

int auth_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        int chunk = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(p, chunk) != 1)
            return -1;
        p += chunk;
        n -= (size_t)chunk;
    }
    return 0;
}
