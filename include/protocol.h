/* SPDX-License-Identifier: MIT */
/* PostgreSQL v3 protocol: framing, field readers and message builders. Pure: no I/O.
 * Frontend = messages a client sends; backend = messages a server sends. */
#ifndef PGSTEER_PROTOCOL_H
#define PGSTEER_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define PROTO_VERSION_3       196608   /* 3.0 */
#define PROTO_CANCEL_CODE     80877102 /* CancelRequest */
#define PROTO_SSL_CODE        80877103 /* SSLRequest */
#define PROTO_GSSENC_CODE     80877104 /* GSSENCRequest */
#define PROTO_MAX_STARTUP     10000    /* startup packet limit, as PostgreSQL */
#define PROTO_MAX_MESSAGE     (1u << 30)
#define PROTO_MAX_PREAUTH_MSG 8192 /* limit on messages before authentication */

/* Frontend message types. */
#define FE_BIND      'B'
#define FE_CLOSE     'C'
#define FE_COPY_DATA 'd'
#define FE_COPY_DONE 'c'
#define FE_COPY_FAIL 'f'
#define FE_DESCRIBE  'D'
#define FE_EXECUTE   'E'
#define FE_FLUSH     'H'
#define FE_FUNCTION  'F'
#define FE_PARSE     'P'
#define FE_PASSWORD  'p' /* also SASLInitialResponse, SASLResponse */
#define FE_QUERY     'Q'
#define FE_SYNC      'S'
#define FE_TERMINATE 'X'

/* Backend message types. */
#define BE_AUTH              'R'
#define BE_KEY_DATA          'K'
#define BE_BIND_COMPLETE     '2'
#define BE_CLOSE_COMPLETE    '3'
#define BE_COMMAND_COMPLETE  'C'
#define BE_COPY_DATA         'd'
#define BE_COPY_DONE         'c'
#define BE_COPY_IN           'G'
#define BE_COPY_OUT          'H'
#define BE_COPY_BOTH         'W'
#define BE_DATA_ROW          'D'
#define BE_EMPTY_QUERY       'I'
#define BE_ERROR             'E'
#define BE_FUNCTION_RESULT   'V'
#define BE_NEGOTIATE_VERSION 'v'
#define BE_NO_DATA           'n'
#define BE_NOTICE            'N'
#define BE_NOTIFICATION      'A'
#define BE_PARAM_DESCRIPTION 't'
#define BE_PARAM_STATUS      'S'
#define BE_PARSE_COMPLETE    '1'
#define BE_PORTAL_SUSPENDED  's'
#define BE_READY_FOR_QUERY   'Z'
#define BE_ROW_DESCRIPTION   'T'

/* Authentication request codes (Authentication* messages). */
#define AUTH_OK            0
#define AUTH_CLEARTEXT     3
#define AUTH_MD5           5
#define AUTH_SASL          10
#define AUTH_SASL_CONTINUE 11
#define AUTH_SASL_FINAL    12

/* A typed message seen in a buffer. `body` points into the caller's buffer (not copied). */
struct proto_msg {
    char type;
    uint32_t len;     /* body length, excluding type byte and length word */
    const char *body; /* len bytes */
    size_t total;     /* bytes the whole message occupies: 1 + 4 + len */
};

/* Frame one typed message at p[0..n).
 * Returns 1 and fills *m when a whole message is present; 0 when more bytes are needed;
 * -1 when the length word is invalid (< 4 or > max_len). Safe with n of any size. */
int proto_frame(const char *p, size_t n, uint32_t max_len, struct proto_msg *m);

/* Frame an untyped startup-phase packet (StartupMessage, SSLRequest, CancelRequest...).
 * Returns the packet's total length when whole, 0 when more bytes are needed, -1 when the
 * length is below 8 or above PROTO_MAX_STARTUP. *code gets the 32-bit request code. */
int proto_frame_startup(const char *p, size_t n, uint32_t *code);

/* Sequential reader over a message body. Reads past the end set `err` and return zeros,
 * so a caller checks `err` once after a series of reads. */
struct proto_reader {
    const char *p;
    size_t n;
    size_t pos;
    bool err;
};
void proto_reader_init(struct proto_reader *r, const char *p, size_t n);
uint8_t proto_read_u8(struct proto_reader *r);
int16_t proto_read_i16(struct proto_reader *r);
int32_t proto_read_i32(struct proto_reader *r);
/* A NUL-terminated string; returns a pointer into the body (never NULL; "" on error). *len gets
 * its length without the NUL when len is not NULL. */
const char *proto_read_str(struct proto_reader *r, size_t *len);
/* n raw bytes; returns a pointer into the body or NULL on error. */
const char *proto_read_bytes(struct proto_reader *r, size_t n);

/* Big-endian helpers. */
static inline uint32_t proto_get_u32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}
static inline void proto_put_u32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

/* Message builders: each appends one whole message to `out` and returns 0, or -1 when out
 * of memory. For building messages of any shape: proto_begin, proto_put_*, proto_end. */
size_t proto_begin(struct buf *out, char type); /* returns start offset for proto_end */
int proto_put_u8(struct buf *out, uint8_t v);
int proto_put_i16(struct buf *out, int16_t v);
int proto_put_i32(struct buf *out, int32_t v);
int proto_put_str(struct buf *out, const char *s); /* with its NUL */
int proto_put_bytes(struct buf *out, const void *p, size_t n);
/* Patches the length word. Returns -1 when proto_begin failed (it then returned SIZE_MAX) or
 * the message is too long; a put's failure is its own -1, which the caller must check (the
 * buffer keeps no error flag). Every proto_write_* checks its puts and, on failure, leaves
 * `out` as it was. */
int proto_end(struct buf *out, size_t start);

int proto_write_ReadyForQuery(struct buf *out, char tx_status);
int proto_write_AuthenticationOk(struct buf *out);
int proto_write_AuthenticationCleartextPassword(struct buf *out);
int proto_write_AuthenticationMD5Password(struct buf *out, const uint8_t salt[4]);
/* AuthenticationSASL listing the one mechanism SCRAM-SHA-256. */
int proto_write_AuthenticationSASL(struct buf *out);
int proto_write_AuthenticationSASLContinue(struct buf *out, const char *data, size_t n);
int proto_write_AuthenticationSASLFinal(struct buf *out, const char *data, size_t n);
int proto_write_ParameterStatus(struct buf *out, const char *name, const char *value);
int proto_write_BackendKeyData(struct buf *out, uint32_t pid, uint32_t key);
/* ErrorResponse (or NoticeResponse with type BE_NOTICE) with severity S and V, SQLSTATE C, message
 * M. */
int proto_write_ErrorResponse(struct buf *out, const char *severity, const char *sqlstate,
                              const char *message);
int proto_write_notice(struct buf *out, char type, const char *severity, const char *sqlstate,
                       const char *message);
int proto_write_CommandComplete(struct buf *out, const char *tag);
int proto_write_RowDescription1(struct buf *out, const char *column); /* one text column */
int proto_write_DataRow1(struct buf *out, const char *value);         /* one text column */
int proto_write_EmptyQueryResponse(struct buf *out);

/* Frontend builders (pgsteer acting as a client of a node). `params` is a list of
 * name/value pairs: params[2*i], params[2*i+1], nparams pairs. */
int proto_write_StartupMessage(struct buf *out, const char *const *params, size_t nparams);
int proto_write_PasswordMessage(struct buf *out, const char *password);
int proto_write_SASLInitialResponse(struct buf *out, const char *mechanism, const char *data,
                                    size_t n);
int proto_write_SASLResponse(struct buf *out, const char *data, size_t n);
int proto_write_Query(struct buf *out, const char *sql);
int proto_write_Sync(struct buf *out);
int proto_write_Terminate(struct buf *out);
int proto_write_CancelRequest(struct buf *out, uint32_t pid, uint32_t key);
/* Close of a statement ('S') or portal ('P') by name. */
int proto_write_Close(struct buf *out, char what, const char *name);
/* Parse with a statement name, query text and parameter type OIDs. */
int proto_write_Parse(struct buf *out, const char *name, const char *query, size_t query_len,
                      const uint32_t *types, uint16_t ntypes);

/* ErrorResponse / NoticeResponse field lookup: returns the value of field `code` (e.g. 'C'
 * for SQLSTATE) as a pointer into the body, or NULL when absent or malformed. */
const char *proto_error_field(const char *body, size_t len, char code);
/* Append to `out` a message of type `type` (ErrorResponse or NoticeResponse) with the fields of
 * the body of `len` bytes at `body`, but for its position (field P), which becomes `position`;
 * one without that field is copied as it is. Returns 0, or -1 on a malformed body or out of
 * memory (nothing appended). */
int proto_write_error_position(struct buf *out, char type, const char *body, size_t len,
                               unsigned long position);

#endif
