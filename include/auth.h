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

/* Server side: pgsteer authenticates a client that knows `password`. Only plaintext passwords
 * are configured, so the verifier is derived from it with a fresh salt per exchange. */
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

/* Client side: pgsteer logs in to a node. */
struct scram_client {
    int state;
    char password[256];
    char client_nonce[64];
    char client_first_bare[SCRAM_MAX_MSG];
    uint8_t server_signature[SCRAM_KEY_LEN];
};

/* Returns 0 or -1. */
int scram_client_init(struct scram_client *c, const char *password);
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

/* MD5: "md5" + md5hex(md5hex(password + user) + salt), 35 chars + NUL into out[36]. */
void auth_md5_response(const char *user, const char *password, const uint8_t salt[4], char out[36]);

/* Constant-time comparison of n bytes. */
bool auth_equal(const void *a, const void *b, size_t n);

/* Fill buf with n cryptographically random bytes; returns 0 or -1. */
int auth_random(void *buf, size_t n);

#endif
