/* SPDX-License-Identifier: MIT */
/* PostgreSQL v3 protocol: message framing, bounds-checked field readers and message builders
 * (see the PostgreSQL documentation, "Message Formats"). No I/O: callers hand in bytes and
 * take bytes out of a struct buf. */
#include "protocol.h"

#include <stdio.h>
#include <string.h>

/* Type byte plus length word. */
#define HDR_LEN 5
/* The length word counts itself, so a message body may hold at most this much. */
#define MAX_BODY ((size_t)INT32_MAX - 4)

int proto_frame(const char *p, size_t n, uint32_t max_len, struct proto_msg *m)
{
    if (n < HDR_LEN)
        return 0;
    /* The length word counts itself but not the type byte. Checking it before the body has
     * arrived lets a caller drop a peer that announces a huge message right away. */
    uint32_t len = proto_get_u32(p + 1);
    if (len < 4 || len > max_len)
        return -1;
    if (n - 1 < (size_t)len)
        return 0;
    m->type = p[0];
    m->len = len - 4;
    m->body = p + HDR_LEN;
    m->total = (size_t)len + 1;
    return 1;
}

int proto_frame_startup(const char *p, size_t n, uint32_t *code)
{
    if (n < 4)
        return 0;
    uint32_t len = proto_get_u32(p);
    if (len < 8 || len > PROTO_MAX_STARTUP)
        return -1;
    if (n < len)
        return 0;
    *code = proto_get_u32(p + 4);
    return (int)len;
}

void proto_reader_init(struct proto_reader *r, const char *p, size_t n)
{
    r->p = p;
    r->n = n;
    r->pos = 0;
    r->err = false;
}

/* Claims n bytes, or marks the reader failed. Failure is sticky so that a series of reads
 * after an overrun cannot resynchronise on garbage. */
static const char *reader_take(struct proto_reader *r, size_t n)
{
    if (r->err || n > r->n - r->pos) {
        r->err = true;
        return NULL;
    }
    const char *q = r->p + r->pos;
    r->pos += n;
    return q;
}

uint8_t proto_read_u8(struct proto_reader *r)
{
    const char *q = reader_take(r, 1);
    return q ? (uint8_t)q[0] : 0;
}

int16_t proto_read_i16(struct proto_reader *r)
{
    const char *q = reader_take(r, 2);
    if (q == NULL)
        return 0;
    const unsigned char *u = (const unsigned char *)q;
    return (int16_t)(uint16_t)(((unsigned)u[0] << 8) | u[1]);
}

int32_t proto_read_i32(struct proto_reader *r)
{
    const char *q = reader_take(r, 4);
    return q ? (int32_t)proto_get_u32(q) : 0;
}

const char *proto_read_str(struct proto_reader *r, size_t *len)
{
    if (len != NULL)
        *len = 0;
    if (r->err || r->pos >= r->n) {
        r->err = true;
        return "";
    }
    const char *s = r->p + r->pos;
    const char *nul = memchr(s, '\0', r->n - r->pos);
    if (nul == NULL) {
        r->err = true;
        return "";
    }
    size_t l = (size_t)(nul - s);
    r->pos += l + 1;
    if (len != NULL)
        *len = l;
    return s;
}

const char *proto_read_bytes(struct proto_reader *r, size_t n)
{
    if (n == 0 && !r->err && r->p == NULL)
        return ""; /* no arithmetic on a null pointer */
    return reader_take(r, n);
}

/* ---- builders ---------------------------------------------------------------------------
 * Every builder reserves its whole message first, so its puts cannot fail half way, and on
 * any failure truncates `out` back to where it started: a caller never sees half a message.
 * Callers of the generic proto_begin, proto_put_* and proto_end API check each put (the buffer
 * carries no error flag); proto_end rejects a failed proto_begin and a message too long for
 * its length word. */

size_t proto_begin(struct buf *out, char type)
{
    size_t start = out->len;
    char hdr[HDR_LEN] = {type, 0, 0, 0, 0};
    if (buf_append(out, hdr, sizeof(hdr)) < 0)
        return SIZE_MAX;
    return start;
}

int proto_put_u8(struct buf *out, uint8_t v)
{
    char c = (char)v;
    return buf_append(out, &c, 1);
}

int proto_put_i16(struct buf *out, int16_t v)
{
    uint16_t u = (uint16_t)v;
    char b[2] = {(char)(u >> 8), (char)u};
    return buf_append(out, b, 2);
}

int proto_put_i32(struct buf *out, int32_t v)
{
    char b[4];
    proto_put_u32(b, (uint32_t)v);
    return buf_append(out, b, 4);
}

int proto_put_str(struct buf *out, const char *s)
{
    return buf_append(out, s, strlen(s) + 1);
}

int proto_put_bytes(struct buf *out, const void *p, size_t n)
{
    return buf_append(out, p, n);
}

int proto_end(struct buf *out, size_t start)
{
    if (start == SIZE_MAX || start > out->len || out->len - start < HDR_LEN)
        return -1;
    size_t len = out->len - start - 1;
    if (len > (size_t)INT32_MAX) {
        out->len = start;
        return -1;
    }
    proto_put_u32(out->data + start + 1, (uint32_t)len);
    return 0;
}

/* Undo a partly written message. */
static int fail(struct buf *out, size_t start)
{
    if (start != SIZE_MAX && start <= out->len)
        out->len = start;
    return -1;
}

/* Starts a typed message whose body will be `body` bytes: reserves room for all of it. */
static size_t begin_sized(struct buf *out, char type, size_t body)
{
    if (body > MAX_BODY || buf_reserve(out, HDR_LEN + body) < 0)
        return SIZE_MAX;
    return proto_begin(out, type);
}

/* Adds string lengths (with their NULs) to *total; false on overflow or an absurd size. */
static bool add_len(size_t *total, size_t n)
{
    if (n > MAX_BODY || *total > MAX_BODY - n)
        return false;
    *total += n;
    return true;
}

int proto_write_ReadyForQuery(struct buf *out, char tx_status)
{
    size_t s = begin_sized(out, BE_READY_FOR_QUERY, 1);
    if (s == SIZE_MAX || proto_put_u8(out, (uint8_t)tx_status) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

/* Authentication* with a request code and optional payload. */
static int write_auth(struct buf *out, int32_t code, const void *data, size_t n)
{
    size_t s = begin_sized(out, BE_AUTH, 4 + n);
    if (s == SIZE_MAX || proto_put_i32(out, code) < 0 || proto_put_bytes(out, data, n) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

int proto_write_AuthenticationOk(struct buf *out)
{
    return write_auth(out, AUTH_OK, NULL, 0);
}

int proto_write_AuthenticationCleartextPassword(struct buf *out)
{
    return write_auth(out, AUTH_CLEARTEXT, NULL, 0);
}

int proto_write_AuthenticationMD5Password(struct buf *out, const uint8_t salt[4])
{
    return write_auth(out, AUTH_MD5, salt, 4);
}

int proto_write_AuthenticationSASL(struct buf *out)
{
    /* The mechanism list: each name NUL-terminated, then an empty name ends the list. */
    static const char mechs[] = "SCRAM-SHA-256\0";
    return write_auth(out, AUTH_SASL, mechs, sizeof(mechs));
}

int proto_write_AuthenticationSASLContinue(struct buf *out, const char *data, size_t n)
{
    if (n > MAX_BODY - 4)
        return -1;
    return write_auth(out, AUTH_SASL_CONTINUE, data, n);
}

int proto_write_AuthenticationSASLFinal(struct buf *out, const char *data, size_t n)
{
    if (n > MAX_BODY - 4)
        return -1;
    return write_auth(out, AUTH_SASL_FINAL, data, n);
}

/* A message whose body is the given NUL-terminated strings, in order. */
static int write_strs(struct buf *out, char type, const char *const *strs, size_t nstrs,
                      bool terminator)
{
    size_t body = terminator ? 1 : 0;
    for (size_t i = 0; i < nstrs; i++)
        if (!add_len(&body, strlen(strs[i]) + 1))
            return -1;
    size_t s = begin_sized(out, type, body);
    if (s == SIZE_MAX)
        return fail(out, s);
    for (size_t i = 0; i < nstrs; i++)
        if (proto_put_str(out, strs[i]) < 0)
            return fail(out, s);
    if (terminator && proto_put_u8(out, 0) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

int proto_write_ParameterStatus(struct buf *out, const char *name, const char *value)
{
    const char *strs[] = {name, value};
    return write_strs(out, BE_PARAM_STATUS, strs, 2, false);
}

int proto_write_BackendKeyData(struct buf *out, uint32_t pid, uint32_t key)
{
    size_t s = begin_sized(out, BE_KEY_DATA, 8);
    if (s == SIZE_MAX || proto_put_i32(out, (int32_t)pid) < 0 ||
        proto_put_i32(out, (int32_t)key) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

int proto_write_notice(struct buf *out, char type, const char *severity, const char *sqlstate,
                       const char *message)
{
    /* Each field is a code byte and a string; 'V' (never localised) lets clients match the
     * severity without parsing a translated word. */
    static const char codes[] = {'S', 'V', 'C', 'M'};
    const char *vals[] = {severity, severity, sqlstate, message};
    size_t body = 1;
    for (size_t i = 0; i < 4; i++)
        if (!add_len(&body, 1 + strlen(vals[i]) + 1))
            return -1;
    size_t s = begin_sized(out, type, body);
    if (s == SIZE_MAX)
        return fail(out, s);
    for (size_t i = 0; i < 4; i++)
        if (proto_put_u8(out, (uint8_t)codes[i]) < 0 || proto_put_str(out, vals[i]) < 0)
            return fail(out, s);
    if (proto_put_u8(out, 0) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

int proto_write_ErrorResponse(struct buf *out, const char *severity, const char *sqlstate,
                              const char *message)
{
    return proto_write_notice(out, BE_ERROR, severity, sqlstate, message);
}

int proto_write_CommandComplete(struct buf *out, const char *tag)
{
    return write_strs(out, BE_COMMAND_COMPLETE, &tag, 1, false);
}

int proto_write_RowDescription1(struct buf *out, const char *column)
{
    size_t body = 2 + 18;
    if (!add_len(&body, strlen(column) + 1))
        return -1;
    size_t s = begin_sized(out, BE_ROW_DESCRIPTION, body);
    if (s == SIZE_MAX || proto_put_i16(out, 1) < 0 || proto_put_str(out, column) < 0 ||
        proto_put_i32(out, 0) < 0 ||  /* table OID: not a table column */
        proto_put_i16(out, 0) < 0 ||  /* column attribute number */
        proto_put_i32(out, 25) < 0 || /* type OID: text */
        proto_put_i16(out, -1) < 0 || /* type size: variable */
        proto_put_i32(out, -1) < 0 || /* type modifier: none */
        proto_put_i16(out, 0) < 0)    /* format: text */
        return fail(out, s);
    return proto_end(out, s);
}

int proto_write_DataRow1(struct buf *out, const char *value)
{
    /* A NULL value is sent as SQL NULL (length -1), which the row format allows. */
    size_t vlen = value ? strlen(value) : 0;
    size_t body = 2 + 4;
    if (!add_len(&body, vlen))
        return -1;
    size_t s = begin_sized(out, BE_DATA_ROW, body);
    if (s == SIZE_MAX || proto_put_i16(out, 1) < 0 ||
        proto_put_i32(out, value ? (int32_t)vlen : -1) < 0 || proto_put_bytes(out, value, vlen) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

/* A typed message with an empty body. */
static int write_empty(struct buf *out, char type)
{
    size_t s = begin_sized(out, type, 0);
    if (s == SIZE_MAX)
        return -1;
    return proto_end(out, s);
}

int proto_write_EmptyQueryResponse(struct buf *out)
{
    return write_empty(out, BE_EMPTY_QUERY);
}

/* Untyped startup-phase packets: the length word comes first and counts itself. */
int proto_write_StartupMessage(struct buf *out, const char *const *params, size_t nparams)
{
    size_t total = 4 + 4 + 1;
    if (nparams > PROTO_MAX_STARTUP)
        return -1;
    for (size_t i = 0; i < 2 * nparams; i++)
        if (!add_len(&total, strlen(params[i]) + 1))
            return -1;
    /* A node refuses a longer packet, so refuse to build it. */
    if (total > PROTO_MAX_STARTUP || buf_reserve(out, total) < 0)
        return -1;
    size_t start = out->len;
    if (proto_put_i32(out, (int32_t)total) < 0 || proto_put_i32(out, PROTO_VERSION_3) < 0)
        return fail(out, start);
    for (size_t i = 0; i < 2 * nparams; i++)
        if (proto_put_str(out, params[i]) < 0)
            return fail(out, start);
    if (proto_put_u8(out, 0) < 0)
        return fail(out, start);
    return 0;
}

int proto_write_CancelRequest(struct buf *out, uint32_t pid, uint32_t key)
{
    char pkt[16];
    proto_put_u32(pkt, 16);
    proto_put_u32(pkt + 4, PROTO_CANCEL_CODE);
    proto_put_u32(pkt + 8, pid);
    proto_put_u32(pkt + 12, key);
    return buf_append(out, pkt, sizeof(pkt));
}

int proto_write_PasswordMessage(struct buf *out, const char *password)
{
    return write_strs(out, FE_PASSWORD, &password, 1, false);
}

int proto_write_SASLInitialResponse(struct buf *out, const char *mechanism, const char *data,
                                    size_t n)
{
    /* data == NULL means "no initial response", sent as length -1. */
    size_t dlen = data ? n : 0;
    size_t body = 4;
    if (!add_len(&body, strlen(mechanism) + 1) || !add_len(&body, dlen))
        return -1;
    size_t s = begin_sized(out, FE_PASSWORD, body);
    if (s == SIZE_MAX || proto_put_str(out, mechanism) < 0 ||
        proto_put_i32(out, data ? (int32_t)dlen : -1) < 0 || proto_put_bytes(out, data, dlen) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

int proto_write_SASLResponse(struct buf *out, const char *data, size_t n)
{
    if (n > MAX_BODY)
        return -1;
    size_t s = begin_sized(out, FE_PASSWORD, n);
    if (s == SIZE_MAX || proto_put_bytes(out, data, n) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

int proto_write_Query(struct buf *out, const char *sql)
{
    return write_strs(out, FE_QUERY, &sql, 1, false);
}

int proto_write_Sync(struct buf *out)
{
    return write_empty(out, FE_SYNC);
}

int proto_write_Terminate(struct buf *out)
{
    return write_empty(out, FE_TERMINATE);
}

int proto_write_Close(struct buf *out, char what, const char *name)
{
    size_t s = proto_begin(out, FE_CLOSE);
    if (s == SIZE_MAX || proto_put_u8(out, (uint8_t)what) < 0 || proto_put_str(out, name) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

int proto_write_Parse(struct buf *out, const char *name, const char *query, size_t query_len,
                      const uint32_t *types, uint16_t ntypes)
{
    /* The query travels as a C string; an embedded NUL would silently truncate it. */
    if (query_len > 0 && memchr(query, '\0', query_len) != NULL)
        return -1;
    if (ntypes > INT16_MAX) /* the count is a signed int16 on the wire */
        return -1;
    size_t body = 2 + 4 * (size_t)ntypes;
    if (!add_len(&body, strlen(name) + 1) || !add_len(&body, query_len) || !add_len(&body, 1))
        return -1;
    size_t s = begin_sized(out, FE_PARSE, body);
    if (s == SIZE_MAX || proto_put_str(out, name) < 0 ||
        proto_put_bytes(out, query, query_len) < 0 || proto_put_u8(out, 0) < 0 ||
        proto_put_i16(out, (int16_t)ntypes) < 0)
        return fail(out, s);
    for (uint16_t i = 0; i < ntypes; i++)
        if (proto_put_i32(out, (int32_t)types[i]) < 0)
            return fail(out, s);
    return proto_end(out, s);
}

/* The field of an ErrorResponse / NoticeResponse body (len bytes) at *pos: a code byte then a
 * NUL-terminated value; a zero code byte ends the list. Returns 1 with the field (and *pos past
 * it), 0 at the list's end, -1 when the body ends before that (malformed). */
static int error_field_next(const char *body, size_t len, size_t *pos, char *code, const char **val,
                            size_t *vlen)
{
    if (*pos >= len)
        return -1;
    if (body[*pos] == '\0')
        return 0;
    *code = body[(*pos)++];
    *val = body + *pos;
    const char *nul = *pos < len ? memchr(*val, '\0', len - *pos) : NULL;
    if (nul == NULL)
        return -1;
    *vlen = (size_t)(nul - *val);
    *pos += *vlen + 1;
    return 1;
}

int proto_write_error_position(struct buf *out, char type, const char *body, size_t len,
                               unsigned long position)
{
    char num[24];
    int nlen = snprintf(num, sizeof(num), "%lu", position);
    size_t s = proto_begin(out, type);
    if (s == SIZE_MAX)
        return -1;
    size_t pos = 0, vlen;
    const char *val;
    char c;
    int rc;
    while ((rc = error_field_next(body, len, &pos, &c, &val, &vlen)) == 1) {
        if (c == 'P') {
            val = num;
            vlen = (size_t)nlen;
        }
        if (proto_put_u8(out, (uint8_t)c) < 0 || proto_put_bytes(out, val, vlen) < 0 ||
            proto_put_u8(out, 0) < 0)
            return fail(out, s);
    }
    if (rc < 0 || proto_put_u8(out, 0) < 0)
        return fail(out, s);
    return proto_end(out, s);
}

const char *proto_error_field(const char *body, size_t len, char code)
{
    if (code == '\0' || body == NULL)
        return NULL;
    size_t pos = 0, vlen;
    const char *val;
    char c;
    while (error_field_next(body, len, &pos, &c, &val, &vlen) == 1) {
        if (c == code)
            return val;
    }
    return NULL;
}
