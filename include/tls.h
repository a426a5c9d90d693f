/* SPDX-License-Identifier: MIT */
/* TLS on pgsteer's connections to the nodes (server_tls) and from clients (client_tls), over
 * memory: the caller moves the bytes (libuv), this module only turns ciphertext into plaintext
 * and back (OpenSSL with memory BIOs). No I/O, no loop objects. A context is shared by the
 * workers (reference counted); a connection belongs to one backend or client and is used on
 * its worker's thread only. */
#ifndef PGSTEER_TLS_H
#define PGSTEER_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "buf.h"
#include "config.h"

struct tls_ctx;  /* opaque: settings and certificates for connections of one side */
struct tls_conn; /* opaque: one connection's TLS state */

/* A context for connections to the nodes as `cfg` says (mode, CA file, client certificate),
 * or NULL when cfg->mode is TLS_MODE_DISABLE (no error then). On failure returns NULL and
 * writes why into err[errcap] (a file that cannot be loaded, a key that does not match). The
 * caller holds one reference. Any thread; it reads files: call it where a blocking read is
 * acceptable (start-up, a reload). */
struct tls_ctx *tls_ctx_new(const struct config_tls *cfg, char *err, size_t errcap);
/* A context for clients' connections as `cfg` says (pgsteer's certificate and key; with
 * verify-ca, the CAs a client's certificate must chain to, which clients are then asked for),
 * or NULL when cfg->mode is CLIENT_TLS_DISABLE (no error then). TLS 1.2 or later, no
 * compression, renegotiation or session resumption. On failure returns NULL with why in
 * err[errcap]. The caller holds one reference. Any thread; it reads files. */
struct tls_ctx *tls_server_ctx_new(const struct config_client_tls *cfg, char *err, size_t errcap);
/* The same for the admin port (admin_tls; errors name that section), whose ALPN is
 * "postgresql" or "http/1.1" as the client offers, or none. */
struct tls_ctx *tls_admin_ctx_new(const struct config_client_tls *cfg, char *err, size_t errcap);
/* Take one more reference to ctx (NULL allowed) and return it. Any thread. */
struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx);
/* Drop one reference (NULL allowed); the last frees it. Connections made from it keep what
 * they need. Any thread. */
void tls_ctx_unref(struct tls_ctx *ctx);
/* The mode a context for the nodes was made for (TLS_MODE_DISABLE for a client context). */
enum tls_mode tls_ctx_mode(const struct tls_ctx *ctx);

/* A client-side connection to `host` (the node's configured host name or address: checked
 * against its certificate with verify-full, and sent as SNI when it is a name). NULL when out
 * of memory. Owned by the caller: free with tls_conn_free. */
struct tls_conn *tls_conn_new(struct tls_ctx *ctx, const char *host);
/* A server-side connection for a client that asked for TLS (ctx from tls_server_ctx_new or
 * tls_admin_ctx_new).
 * NULL when out of memory. Owned by the caller: free with tls_conn_free. */
struct tls_conn *tls_conn_accept(struct tls_ctx *ctx);
/* Free t (NULL allowed); nothing is sent (a close_notify is the caller's to skip). */
void tls_conn_free(struct tls_conn *t);

/* Ciphertext read from the socket. Returns 0, or -1 when out of memory. */
int tls_feed(struct tls_conn *t, const char *p, size_t n);
/* Go on with the handshake with what was fed (either side). Returns 1 when it is complete, 0
 * when it needs more input (send tls_take_output's bytes first), -1 when it failed (tls_error
 * says why, naming the peer: "TLS handshake with the client failed: ..."). */
int tls_handshake(struct tls_conn *t);
/* Plaintext from what was fed, up to cap bytes into dst. Returns the bytes written, 0 when
 * more input is needed, -1 when the connection failed or the peer closed it (tls_error). */
ssize_t tls_read(struct tls_conn *t, char *dst, size_t cap);
/* Encrypt n bytes of plaintext; the ciphertext waits for tls_take_output. Returns 0, or -1
 * (tls_error). */
int tls_write(struct tls_conn *t, const char *p, size_t n);
/* Queue TLS's close_notify alert (after what was written), for tls_take_output: the end of
 * what this side sends. Nothing may be written after it. */
void tls_close_notify(struct tls_conn *t);
/* Append the ciphertext waiting to be sent to out. Returns 0, or -1 when out of memory. */
int tls_take_output(struct tls_conn *t, struct buf *out);
/* What went wrong last, for a log line or an error message ("" when nothing did). */
const char *tls_error(const struct tls_conn *t);
/* The protocol version and cipher agreed, for SHOW SERVERS ("TLSv1.3/TLS_AES_256_GCM_SHA384");
 * "" before the handshake is complete. */
const char *tls_describe(const struct tls_conn *t);
/* The Common Name of the peer's certificate (a server-side t whose client showed one), as a
 * string into dst. Returns its length, or -1 when there is no certificate or CN, when the CN
 * holds a NUL byte, or when it does not fit cap. */
int tls_peer_cn(const struct tls_conn *t, char *dst, size_t cap);
/* Whether the handshake agreed on the ALPN protocol "postgresql" (a server-side t, once the
 * handshake is complete): what a client must ask for to start TLS without an SSLRequest. */
bool tls_alpn_postgresql(const struct tls_conn *t);

#endif
