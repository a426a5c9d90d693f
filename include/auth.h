/* SPDX-License-Identifier: MIT */
/* Password authentication: SCRAM-SHA-256 (RFC 5802, RFC 7677, as PostgreSQL uses it) on both
 * sides, and MD5. Pure: no I/O; OpenSSL's libcrypto for the hashes. */
#ifndef PGSTEER_AUTH_H
#define PGSTEER_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCRAM_NONCE_RAW  18 /* random bytes in a nonce, base64 encoded on the wire */
#define SCRAM_ITERATIONS 4096
#define SCRAM_KEY_LEN    32
#define SCRAM_MAX_MSG    1024

/* A SCRAM secret as PostgreSQL stores it in pg_authid.rolpassword:
 * "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (salt and keys base64). It lets
 * pgsteer check a client's proof without the password, and, with the ClientKey that proof
 * reveals, log in to a node that stores the same secret. */
struct scram_secret {
    int iterations;
    uint8_t salt[64];
    size_t saltlen;
    uint8_t stored_key[SCRAM_KEY_LEN];
    uint8_t server_key[SCRAM_KEY_LEN];
};

/* Whether text has the form of a SCRAM secret (begins with "SCRAM-SHA-256$"), whether or not
 * the rest is well formed. */
bool scram_is_secret(const char *text);
/* Parse a SCRAM secret into out. Returns 0, or -1 when malformed (then out is wiped). */
int scram_secret_parse(const char *text, struct scram_secret *out);

/* Server side: pgsteer authenticates a client that knows `password` (scram_server_init: the
 * verifier derived from it with a fresh salt per exchange) or whose secret is `secret`. */
struct scram_server {
    int state; /* 0 = expecting client-first, 1 = expecting client-final, 2 = done */
    char client_first_bare[SCRAM_MAX_MSG];
    char server_first[SCRAM_MAX_MSG];
    char nonce[128]; /* client nonce + server nonce */
    uint8_t stored_key[SCRAM_KEY_LEN];
    uint8_t server_key[SCRAM_KEY_LEN];
    char cbind_flag; /* gs2 flag of client-first ('n' or 'y'); client-final's c= must echo it */
};

/* Start an exchange for the plaintext `password`. Returns 0 or -1 (randomness unavailable). */
int scram_server_init(struct scram_server *s, const char *password);
/* Handle the client-first-message (the SASLInitialResponse data). On success writes the
 * server-first-message to out (NUL-terminated, at most outcap bytes) and returns its length;
 * returns -1 for a malformed message (channel binding requested, bad syntax). */
int scram_server_first(struct scram_server *s, const char *msg, size_t n, char *out, size_t outcap);
/* Handle the client-final-message. Returns the server-final-message length written to out
 * when the proof is right, -1 when malformed, -2 when the password is wrong. */
int scram_server_final(struct scram_server *s, const char *msg, size_t n, char *out, size_t outcap);
/* Start an exchange for a stored secret: its salt and iteration count go to the client, no
 * password is derived. Returns 0 or -1 (randomness unavailable). */
int scram_server_init_secret(struct scram_server *s, const struct scram_secret *secret);
/* scram_server_final that also gives, when the proof is right, the ClientKey it proved into
 * client_key (for scram_client_init_key); wiped otherwise. Same returns. */
int scram_server_final_key(struct scram_server *s, const char *msg, size_t n, char *out,
                           size_t outcap, uint8_t client_key[SCRAM_KEY_LEN]);

/* Client side: pgsteer logs in to a node. */
struct scram_client {
    int state;
    bool with_key;                     /* client_key and server_key given, no password */
    uint8_t client_key[SCRAM_KEY_LEN]; /* with_key */
    uint8_t server_key[SCRAM_KEY_LEN]; /* with_key */
    char password[256];
    char client_nonce[64];
    char client_first_bare[SCRAM_MAX_MSG];
    uint8_t server_signature[SCRAM_KEY_LEN];
};

/* Returns 0 or -1. */
int scram_client_init(struct scram_client *c, const char *password);
/* Log in without the password: with the ClientKey a client proved (scram_server_final_key)
 * and the ServerKey of the same secret. The node must store that secret: the salt and
 * iteration count it sends are not used (keys derived from them would be the same). Returns 0
 * or -1. */
int scram_client_init_key(struct scram_client *c, const uint8_t client_key[SCRAM_KEY_LEN],
                          const uint8_t server_key[SCRAM_KEY_LEN]);
/* Writes the client-first-message ("n,,n=,r=<nonce>") to out; returns its length or -1. */
int scram_client_first(struct scram_client *c, char *out, size_t outcap);
/* Given the server-first-message, writes the client-final-message; returns length or -1. */
int scram_client_final(struct scram_client *c, const char *server_first, size_t n, char *out,
                       size_t outcap);
/* Verifies the server-final-message ("v=..."). Returns 0 when the server proved it knows the
 * password, -1 otherwise. */
int scram_client_verify(struct scram_client *c, const char *server_final, size_t n);

/* Testing hooks: the same as scram_server_init / scram_client_init but with a fixed salt and
 * nonce, so that known vectors (RFC 7677) can be checked. Production code never calls them.
 * salt: 1..64 bytes; nonces: 1..63 printable characters other than ','. Return 0 or -1. */
int scram_server_init_with(struct scram_server *s, const char *password, const uint8_t *salt,
                           size_t saltlen, const char *server_nonce);
int scram_client_init_with(struct scram_client *c, const char *password, const char *client_nonce);

/* The configured credential of a user (users, admin_users): a password or a SCRAM secret.
 * scram_server_start starts a server exchange for it (scram_server_init or
 * scram_server_init_secret); scram_client_start a client one, for a secret with client_key,
 * the ClientKey the user's client proved (NULL when there is none: then -1). Return 0 or -1. */
int scram_server_start(struct scram_server *s, const char *configured);
int scram_client_start(struct scram_client *c, const char *configured, const uint8_t *client_key);

/* MD5: "md5" + md5hex(md5hex(password + user) + salt), 35 chars + NUL into out[36]. */
void auth_md5_response(const char *user, const char *password, const uint8_t salt[4], char out[36]);

/* Constant-time comparison of n bytes. */
bool auth_equal(const void *a, const void *b, size_t n);

/* Fill buf with n cryptographically random bytes; returns 0 or -1. */
int auth_random(void *buf, size_t n);

#endif
