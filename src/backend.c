/* SPDX-License-Identifier: MIT */
/* Backend connections: pgsteer's own connections to nodes, opened lazily for a client, logged
 * in with the client's credentials, and the response side of the routing: each response is
 * matched to the message that caused it, forwarded to the client or swallowed. */
#include "proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "protocol.h"
#include "tls.h"
#include "session.h"

#define BACKEND_READ_CHUNK (64 * 1024)
#define BACKEND_OUT_HIGH   (4 * 1024 * 1024)

static void backend_fail(struct backend *b, const char *sqlstate, const char *message);
static void backend_handle_input(struct backend *b);
static void shared_fail(struct backend *b, const char *sqlstate, const char *message);
static void shared_closed(struct backend *b);
static void backend_pool_input(struct backend *b);
static void shared_stmts_free(struct backend *b);
static void shared_stmt_answered(struct backend *b, uint16_t i, bool ok);
static void sstmt_drop(struct backend *b, uint16_t i);
static int kept_names_check(struct backend *b, const struct client *c);
static int sstmt_name(char *dst, size_t cap, uint32_t name);
static bool unnamed_refused(struct backend *b, struct client *c, uint16_t i, uint32_t stmt);
static bool simple_refused(struct backend *b, struct client *c, uint16_t i);
static void simple_error_position(struct backend *b, struct proto_msg *m);
static struct expect *backend_head(struct backend *b);

static void backend_free_if_closed(struct backend *b)
{
    if (--b->handles_open > 0)
        return;
    buf_destroy(&b->in);
    buf_destroy(&b->out);
    buf_destroy(&b->writing);
    buf_destroy(&b->startup_params);
    buf_destroy(&b->reprepare_error);
    buf_destroy(&b->login);
    buf_destroy(&b->tls_in);
    buf_destroy(&b->tls_out);
    tls_conn_free(b->tls);
    tls_ctx_unref(b->tls_ctx);
    free(b->pool_key);
    free(b->scram);
    free(b->exp);
    shared_stmts_free(b);
    free(b);
}

static void backend_close_cb(uv_handle_t *h)
{
    backend_free_if_closed(h->data);
}

static void pool_unlink(struct backend *b)
{
    struct proxy *px = b->px;
    if (b->pool_prev)
        b->pool_prev->pool_next = b->pool_next;
    else
        px->pool[b->node] = b->pool_next;
    if (b->pool_next)
        b->pool_next->pool_prev = b->pool_prev;
    b->pool_prev = b->pool_next = NULL;
    b->parked = false;
    px->nodes[b->node].idle--;
    atomic_fetch_sub(&px->shared->idle[b->node], 1);
}

static void backend_detach(struct backend *b)
{
    struct client *c = b->client;
    if (c == NULL)
        return;
    if (c->backends[b->node] == b) {
        c->backends[b->node] = NULL;
        c->backend_mask &= ~(1u << b->node);
    }
    /* Statements prepared there are gone with the connection. */
    for (struct stmt *s = c->stmts; s; s = s->next)
        s->nodes &= ~(1u << b->node);
    c->px->nodes[b->node].backends--;
    b->client = NULL;
}

void backend_close(struct backend *b)
{
    if (b->state == BACKEND_CLOSING)
        return;
    if (b->state == BACKEND_READY && !b->write_pending) {
        /* Best effort Terminate; uv_try_write does not need the buffer afterwards. */
        char t[5] = {FE_TERMINATE, 0, 0, 0, 4};
        uv_buf_t ub = uv_buf_init(t, sizeof(t));
        if (b->tls == NULL) {
            (void)uv_try_write((uv_stream_t *)&b->tcp, &ub, 1);
        } else if (tls_write(b->tls, t, sizeof(t)) == 0 &&
                   tls_take_output(b->tls, &b->tls_out) == 0) {
            ub = uv_buf_init((char *)buf_head(&b->tls_out), (unsigned)buf_avail(&b->tls_out));
            (void)uv_try_write((uv_stream_t *)&b->tcp, &ub, 1);
        }
    }
    b->state = BACKEND_CLOSING;
    cancel_wait_release(b->cancel_pending_wait); /* the cancel goes nowhere now */
    b->cancel_pending_wait = NULL;
    if (b->parked)
        pool_unlink(b);
    if (b->shared)
        shared_closed(b);
    backend_detach(b);
    uv_close((uv_handle_t *)&b->timer, backend_close_cb);
    uv_close((uv_handle_t *)&b->tcp, backend_close_cb);
}

/* ---- cancel requests ---- */

struct cancel_req {
    union { /* as the node is reached */
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    };
    uv_timer_t timer; /* gives up on a node that neither answers nor closes */
    int handles_open; /* tcp + timer; freed when both closed */
    uv_connect_t connect;
    uv_write_t write;
    char packet[16];
    /* The backend that goes to no pool or other client (and, shared, takes no new unit) until
     * the node has acted on this request; its memory is kept until then (a hold of its own) */
    struct backend *fence;
    struct cancel_wait *wait; /* the client connection that asked, held until then, or NULL */
    char sink[64];            /* what the node might send before it closes */
};

static void cancel_close_cb(uv_handle_t *h)
{
    struct cancel_req *r = h->data;
    if (--r->handles_open > 0)
        return;
    r->fence->cancel_fence = false;
    backend_free_if_closed(r->fence);
    cancel_wait_release(r->wait);
    free(r);
}

/* Done with the node's cancel connection, acted on or not: close both handles. */
static void cancel_done(struct cancel_req *r)
{
    if (!uv_is_closing((uv_handle_t *)&r->tcp)) {
        uv_close((uv_handle_t *)&r->tcp, cancel_close_cb);
        uv_close((uv_handle_t *)&r->timer, cancel_close_cb);
    }
}

static void cancel_timeout_cb(uv_timer_t *t)
{
    cancel_done(t->data);
}

static void cancel_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *ub)
{
    (void)suggested;
    struct cancel_req *r = h->data;
    *ub = uv_buf_init(r->sink, sizeof(r->sink));
}

/* The node closes a cancel connection once it has signalled the server process. */
static void cancel_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    (void)ub;
    if (nread < 0)
        cancel_done(s->data);
}

static void cancel_write_cb(uv_write_t *w, int status)
{
    struct cancel_req *r = w->data;
    if (status < 0 || uv_read_start((uv_stream_t *)&r->tcp, cancel_alloc_cb, cancel_read_cb) != 0)
        cancel_done(r);
}

static void cancel_connect_cb(uv_connect_t *req, int status)
{
    struct cancel_req *r = req->data;
    if (status < 0) {
        cancel_done(r);
        return;
    }
    uv_buf_t ub = uv_buf_init(r->packet, sizeof(r->packet));
    r->write.data = r;
    if (uv_write(&r->write, (uv_stream_t *)&r->tcp, &ub, 1, cancel_write_cb) < 0)
        cancel_done(r);
}

/* A CancelRequest with b's key on a new connection to b's node; the request frees itself once
 * the node has closed that connection, which it does once it has signalled b's server process
 * (or after connect_timeout_ms, or when it cannot be reached). Until then b is fenced
 * (b->cancel_fence: no pool, no other client, and a shared b takes no new unit, since the
 * signal could reach what they send) and w is held. Returns 0, or -1 when nothing was sent
 * (out of memory). */
static int cancel_send(struct backend *b, struct cancel_wait *w)
{
    struct proxy *px = b->px;
    const struct sockaddr_storage *addr = &px->nodes[b->node].addr;
    struct cancel_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    r->fence = b;
    b->handles_open++;
    b->cancel_fence = true;
    r->wait = w;
    cancel_wait_hold(w);
    proxy_stream_init(px->loop, &r->tcp, addr);
    uv_timer_init(px->loop, &r->timer);
    r->handles_open = 2;
    r->tcp.data = r;
    r->timer.data = r;
    r->connect.data = r;
    proto_put_u32(r->packet, 16);
    proto_put_u32(r->packet + 4, PROTO_CANCEL_CODE);
    proto_put_u32(r->packet + 8, b->pid);
    proto_put_u32(r->packet + 12, b->key);
    uv_timer_start(&r->timer, cancel_timeout_cb, (uint64_t)px->cfg->connect_timeout_ms, 0);
    if (proxy_stream_connect(&r->connect, &r->tcp, addr, cancel_connect_cb) < 0)
        cancel_done(r);
    return 0;
}

/* Whether b's next answer is to a Query of pgsteer's own: a replay of the session's changes,
 * which the client's statement waits behind. */
static bool replay_ahead(struct backend *b)
{
    const struct expect *head = b->exp_count ? backend_head(b) : NULL;
    return head && head->swallow && head->kind == EXP_QUERY;
}

/* Send the cancel b held (cancel_pending) while it logged in or replayed the session's changes:
 * it now reaches the client's statement, if that still runs. */
static void cancel_send_held(struct backend *b)
{
    b->cancel_pending = false;
    if (b->client != NULL && b->fwd_outstanding > 0)
        (void)cancel_send(b, b->cancel_pending_wait);
    cancel_wait_release(b->cancel_pending_wait);
    b->cancel_pending_wait = NULL;
}

void backend_cancel(struct backend *b, struct cancel_wait *w)
{
    if (b->client == NULL || b->state == BACKEND_CLOSING)
        return;
    if (b->state == BACKEND_READY && !replay_ahead(b)) {
        (void)cancel_send(b, w);
        return;
    }
    /* The node does not know this backend's key yet: sent once the login is done. Or the node
     * is replaying the session's changes ahead of the client's statement: a cancel now would
     * stop the replay, not the statement, which would then run without the change; sent once
     * the replay is answered. */
    b->cancel_pending = true;
    cancel_wait_hold(w);
    cancel_wait_release(b->cancel_pending_wait); /* an earlier request's: this one stands */
    b->cancel_pending_wait = w;
}

int backend_shared_cancel(struct backend *b, struct client *c, struct cancel_wait *w)
{
    if (b->state != BACKEND_READY || b->cancel_fence || b->exp_count == 0)
        return 0;
    for (size_t k = 0; k < b->exp_count; k++) {
        if (b->exp[(b->exp_head + k) % b->exp_cap].owner != c)
            return -1;
    }
    return cancel_send(b, w) == 0 ? 1 : 0;
}

int backend_queue(struct backend *b, const void *p, size_t n)
{
    return buf_append(&b->out, p, n);
}

enum expect_kind backend_expect_kind(char type)
{
    switch (type) {
    case FE_PARSE:
        return EXP_PARSE;
    case FE_BIND:
        return EXP_BIND;
    case FE_DESCRIBE:
        return EXP_DESCRIBE;
    case FE_EXECUTE:
        return EXP_EXECUTE;
    default:
        return EXP_SYNC;
    }
}

int backend_expect(struct backend *b, enum expect_kind kind, bool swallow, bool write)
{
    if (b->exp_count == b->exp_cap) {
        size_t ncap = b->exp_cap ? b->exp_cap * 2 : 64;
        struct expect *ne = malloc(ncap * sizeof(*ne));
        if (ne == NULL)
            return -1;
        for (size_t i = 0; i < b->exp_count; i++)
            ne[i] = b->exp[(b->exp_head + i) % b->exp_cap];
        free(b->exp);
        b->exp = ne;
        b->exp_cap = ncap;
        b->exp_head = 0;
    }
    struct expect *e = &b->exp[(b->exp_head + b->exp_count) % b->exp_cap];
    e->kind = (uint8_t)kind;
    e->swallow = swallow;
    e->retryable = false;
    e->write = write;
    e->quiet = false;
    e->simple = false;
    e->stmt = 0;
    e->sstmt = 0;
    e->change = 0;
    e->gen_at = b->client ? b->client->change_gen : 0;
    e->owner = NULL;
    b->exp_count++;
    if (!swallow)
        b->fwd_outstanding++;
    return 0;
}

struct expect *backend_expect_last(struct backend *b)
{
    return &b->exp[(b->exp_head + b->exp_count - 1) % b->exp_cap];
}

static struct expect *backend_head(struct backend *b)
{
    return b->exp_count ? &b->exp[b->exp_head] : NULL;
}

static struct expect backend_pop(struct backend *b)
{
    struct expect e = b->exp[b->exp_head];
    b->exp_head = (b->exp_head + 1) % b->exp_cap;
    b->exp_count--;
    if (!e.swallow)
        b->fwd_outstanding--;
    return e;
}

static void backend_write_cb(uv_write_t *req, int status)
{
    struct backend *b = req->data;
    b->write_pending = false;
    buf_reset(&b->writing);
    if (b->state == BACKEND_CLOSING)
        return;
    if (status < 0) {
        backend_fail(b, "08006", uv_strerror(status));
        return;
    }
    backend_flush(b);
    /* The client may have been held back while our queue was long. */
    if (b->client && buf_avail(&b->out) < BACKEND_OUT_HIGH && !b->client->reading &&
        b->client->state == CLIENT_READY)
        client_process(b->client);
}

static void backend_fail_later_cb(uv_timer_t *t)
{
    struct backend *b = t->data;
    backend_fail(b, "08006", b->fail_message);
}

/* backend_flush found b's connection broken: fail b on the next turn of the loop, not now,
 * since the caller (a client's statement on its way, a replay, a deallocation on every node)
 * still holds on to the session's statements and changes, which backend_fail may drop. */
static void backend_fail_soon(struct backend *b, int err)
{
    b->fail_message = uv_strerror(err);
    uv_timer_start(&b->timer, backend_fail_later_cb, 0, 0);
}

void backend_flush(struct backend *b)
{
    if (b->write_pending || b->state != BACKEND_READY)
        return;
    /* What goes on the wire: `out`, or over TLS its ciphertext (encrypted only when no write is
     * in flight, so that `out` fills up and holds the client back while the node is slow). */
    struct buf *src = &b->out;
    if (b->tls != NULL) {
        if (buf_avail(&b->out) > 0) {
            if (tls_write(b->tls, buf_head(&b->out), buf_avail(&b->out)) < 0) {
                b->fail_message = tls_error(b->tls);
                uv_timer_start(&b->timer, backend_fail_later_cb, 0, 0);
                return;
            }
            buf_reset(&b->out);
            if (tls_take_output(b->tls, &b->tls_out) < 0) {
                backend_fail_soon(b, UV_ENOMEM);
                return;
            }
        }
        src = &b->tls_out;
    }
    if (buf_avail(src) == 0)
        return;
    uv_buf_t now = uv_buf_init((char *)buf_head(src), (unsigned)buf_avail(src));
    int n = uv_try_write((uv_stream_t *)&b->tcp, &now, 1);
    if (n > 0)
        buf_consume(src, (size_t)n);
    else if (n < 0 && n != UV_EAGAIN) {
        backend_fail_soon(b, n);
        return;
    }
    if (buf_avail(src) == 0)
        return;
    /* Swap buffers: `out` (or `tls_out`) keeps accepting while `writing` is in flight. */
    struct buf tmp = b->writing;
    b->writing = *src;
    *src = tmp;
    uv_buf_t ub = uv_buf_init((char *)buf_head(&b->writing), (unsigned)buf_avail(&b->writing));
    b->write_req.data = b;
    int rc = uv_write(&b->write_req, (uv_stream_t *)&b->tcp, &ub, 1, backend_write_cb);
    if (rc < 0) {
        backend_fail_soon(b, rc);
        return;
    }
    b->write_pending = true;
}

/* A write of its own during a TLS login (the SSLRequest, the handshake, login messages): the
 * handshake may have more than one write in flight, so each owns its bytes. */
struct tls_write {
    uv_write_t req;
    struct backend *b;
    struct buf bytes;
};

static void backend_tls_write_cb(uv_write_t *req, int status)
{
    struct tls_write *w = req->data;
    struct backend *b = w->b;
    buf_destroy(&w->bytes);
    free(w);
    if (b->state != BACKEND_CLOSING && status < 0)
        backend_fail(b, "08006", uv_strerror(status));
}

/* Write bytes (emptied: their memory moves to the write) as they are. Returns 0, or -1 when
 * the write cannot start (out of memory, a broken connection). */
static int backend_write_owned(struct backend *b, struct buf *bytes)
{
    if (buf_avail(bytes) == 0)
        return 0;
    struct tls_write *w = malloc(sizeof(*w));
    if (w == NULL)
        return -1;
    w->b = b;
    w->bytes = *bytes;
    buf_init(bytes);
    w->req.data = w;
    uv_buf_t ub = uv_buf_init((char *)buf_head(&w->bytes), (unsigned)buf_avail(&w->bytes));
    if (uv_write(&w->req, (uv_stream_t *)&b->tcp, &ub, 1, backend_tls_write_cb) < 0) {
        buf_destroy(&w->bytes);
        free(w);
        return -1;
    }
    return 0;
}

/* Send what TLS has to say to the node (handshake records, alerts). Returns 0 or -1. */
static int backend_tls_output(struct backend *b)
{
    struct buf out;
    buf_init(&out);
    if (tls_take_output(b->tls, &out) < 0) {
        buf_destroy(&out);
        return -1;
    }
    int rc = backend_write_owned(b, &out);
    buf_destroy(&out);
    return rc;
}

/* A login message during a TLS login: the SSLRequest in plain text, anything after it
 * encrypted. msg is emptied. Returns 0 or -1. */
static int backend_send_tls(struct backend *b, struct buf *msg)
{
    if (b->tls == NULL)
        return backend_write_owned(b, msg);
    int rc = tls_write(b->tls, buf_head(msg), buf_avail(msg));
    buf_destroy(msg);
    buf_init(msg);
    return rc < 0 ? -1 : backend_tls_output(b);
}

static void backend_login_write_cb(uv_write_t *req, int status)
{
    struct backend *b = req->data;
    buf_reset(&b->login);
    if (b->state != BACKEND_CLOSING && status < 0)
        backend_fail(b, "08006", uv_strerror(status));
}

/* Login messages go out on their own, ahead of the client's queued traffic, which waits in
 * `out` until the node is ready. Login is request/response, so one write is in flight at most;
 * `msg` is emptied (its memory moves to the backend). */
static int backend_send_login(struct backend *b, struct buf *msg)
{
    if (b->tls_phase != BTLS_NONE)
        return backend_send_tls(b, msg);
    buf_destroy(&b->login);
    b->login = *msg;
    buf_init(msg);
    uv_buf_t ub = uv_buf_init((char *)buf_head(&b->login), (unsigned)buf_avail(&b->login));
    b->login_req.data = b;
    return uv_write(&b->login_req, (uv_stream_t *)&b->tcp, &ub, 1, backend_login_write_cb) < 0 ? -1
                                                                                               : 0;
}

static void shared_flush_head(struct backend *b);

/* Room for a read at the end of b's input: at least BACKEND_READ_CHUNK bytes. Returns 0, or
 * -1 when out of memory. */
static int backend_in_room(struct backend *b)
{
    if (b->in.off > 0 && b->in.off == b->in.len)
        buf_reset(&b->in);
    else if (b->in.off > b->in.cap / 2)
        buf_compact(&b->in);
    return buf_reserve(&b->in, BACKEND_READ_CHUNK);
}

static void backend_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *ub)
{
    (void)suggested;
    struct backend *b = h->data;
    struct buf *in = &b->in;
    if (b->tls != NULL) {
        in = &b->tls_in; /* ciphertext: decrypted into `in` by the read callback */
        buf_reset(in);
        if (buf_reserve(in, BACKEND_READ_CHUNK) < 0) {
            *ub = uv_buf_init(NULL, 0);
            return;
        }
    } else if (backend_in_room(b) < 0) {
        *ub = uv_buf_init(NULL, 0);
        return;
    }
    *ub = uv_buf_init(in->data + in->len, (unsigned)(in->cap - in->len));
}

static void backend_input(struct backend *b);
static void backend_tls_input(struct backend *b, size_t n);

static void backend_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    (void)ub;
    struct backend *b = s->data;
    if (b->state == BACKEND_CLOSING)
        return;
    if (nread < 0) {
        backend_fail(b, "08006",
                     nread == UV_EOF ? "the node closed the connection" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    if (b->tls_phase != BTLS_NONE) {
        backend_tls_input(b, (size_t)nread);
        return;
    }
    b->in.len += (size_t)nread;
    backend_input(b);
}

/* Input was added to b->in: handle it. */
static void backend_input(struct backend *b)
{
    if (b->parked) {
        backend_pool_input(b);
        return;
    }
    if (b->shared) {
        proxy_note_input(b->px);
        b->progress_ms = uv_now(b->px->loop);
        backend_handle_input(b);
        shared_flush_head(b);
        return;
    }
    struct client *c = b->client;
    if (c)
        proxy_note_input(c->px);
    uint64_t t0 = uv_hrtime();
    bool ready = b->state == BACKEND_READY;
    backend_handle_input(b);
    if (c && c->state != CLIENT_CLOSING) {
        client_flush(c);
        if (ready)
            latency_observe(&c->px->lat_response, uv_hrtime() - t0);
    }
}

void backend_pause(struct backend *b)
{
    if (b->reading && b->state != BACKEND_CLOSING) {
        uv_read_stop((uv_stream_t *)&b->tcp);
        b->reading = false;
    }
}

void backend_resume(struct backend *b)
{
    if (!b->reading && b->state != BACKEND_CLOSING && b->state != BACKEND_CONNECTING) {
        uv_read_start((uv_stream_t *)&b->tcp, backend_alloc_cb, backend_read_cb);
        b->reading = true;
        /* Answers read before the pause may all be here already: the node will not send
         * more until asked, so handle them now rather than wait for a read. */
        struct client *c = b->client;
        if (b->shared && b->state == BACKEND_READY && buf_avail(&b->in) > 0) {
            backend_handle_input(b);
            shared_flush_head(b);
            return;
        }
        if (b->state == BACKEND_READY && buf_avail(&b->in) > 0 && c && !c->paused_out) {
            backend_handle_input(b);
            if (c->state != CLIENT_CLOSING)
                client_flush(c);
        }
    }
}

static void backend_send_startup(struct backend *b);

/* The TLS handshake has new input: go on, and once it is complete, log in over it. */
static void backend_tls_step(struct backend *b)
{
    int r = tls_handshake(b->tls);
    if (backend_tls_output(b) < 0) {
        backend_fail(b, "08006", "cannot write to the node");
        return;
    }
    if (r < 0) {
        backend_fail(b, "08001", tls_error(b->tls));
        return;
    }
    if (r == 1) {
        b->tls_phase = BTLS_UP;
        log_debug("node %s: TLS %s", b->px->cfg->nodes[b->node].name, tls_describe(b->tls));
        backend_send_startup(b);
    }
}

/* n bytes arrived on a connection that asked for TLS: the node's answer to the SSLRequest
 * (in b->in), or ciphertext (in b->tls_in), decrypted into b->in and handled. */
static void backend_tls_input(struct backend *b, size_t n)
{
    if (b->tls_phase == BTLS_ASKED) {
        b->in.len += n;
        char answer = b->in.data[b->in.off];
        buf_consume(&b->in, 1);
        enum tls_mode mode = tls_ctx_mode(b->tls_ctx);
        if (answer == 'S' && buf_avail(&b->in) == 0) {
            b->tls = tls_conn_new(b->tls_ctx, b->px->cfg->nodes[b->node].host);
            if (b->tls == NULL) {
                backend_fail(b, "53200", "out of memory");
                return;
            }
            b->tls_phase = BTLS_HANDSHAKE;
            backend_tls_step(b);
        } else if (answer == 'N' && mode == TLS_MODE_PREFER) {
            b->tls_phase = BTLS_NONE; /* plain text, as the node wants */
            backend_send_startup(b);
        } else if (answer == 'N') {
            char msg[160];
            snprintf(msg, sizeof(msg), "the node does not accept TLS (server_tls mode %s)",
                     config_tls_mode_name(mode));
            backend_fail(b, "08001", msg);
        } else {
            /* Bytes after the 'S' came before any handshake: someone else's, not the node's. */
            backend_fail(b, "08P01", "the node answered the TLS request wrongly");
        }
        return;
    }
    b->tls_in.len += n;
    if (tls_feed(b->tls, buf_head(&b->tls_in), buf_avail(&b->tls_in)) < 0) {
        backend_fail(b, "53200", "out of memory");
        return;
    }
    buf_reset(&b->tls_in);
    if (b->tls_phase == BTLS_HANDSHAKE) {
        backend_tls_step(b);
        if (b->state == BACKEND_CLOSING || b->tls_phase != BTLS_UP)
            return;
    }
    bool got = false;
    for (;;) {
        if (backend_in_room(b) < 0) {
            backend_fail(b, "53200", "out of memory");
            return;
        }
        ssize_t r = tls_read(b->tls, b->in.data + b->in.len, b->in.cap - b->in.len);
        if (r < 0) {
            backend_fail(b, "08006", tls_error(b->tls));
            return;
        }
        if (r == 0)
            break;
        b->in.len += (size_t)r;
        got = true;
    }
    /* (Reading may have something to send back: a key update's answer.) */
    if (backend_tls_output(b) < 0) {
        backend_fail(b, "08006", "cannot write to the node");
        return;
    }
    if (got)
        backend_input(b);
}

static void backend_timeout_cb(uv_timer_t *t)
{
    struct backend *b = t->data;
    backend_fail(b, "08001", "timeout while connecting to the node");
}

static void backend_connect_cb(uv_connect_t *req, int status)
{
    struct backend *b = req->data;
    if (b->state == BACKEND_CLOSING)
        return;
    if (status < 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "could not connect to node: %s", uv_strerror(status));
        backend_fail(b, "08001", msg);
        return;
    }
    if (b->tcp.type == UV_TCP)
        proxy_tcp_tune(&b->tcp, b->px->cfg);
    b->state = BACKEND_AUTH;
    if (b->tls_ctx != NULL && b->tcp.type == UV_TCP) {
        /* server_tls: ask first; the login goes once the node has answered (and the
         * handshake is done). PostgreSQL offers no TLS on Unix-domain sockets. */
        static const char ssl_request[8] = {0, 0, 0, 8, 0x04, (char)0xd2, 0x16, 0x2f};
        struct buf req;
        buf_init(&req);
        b->tls_phase = BTLS_ASKED;
        if (buf_append(&req, ssl_request, sizeof(ssl_request)) < 0 ||
            backend_send_tls(b, &req) < 0) {
            buf_destroy(&req);
            backend_fail(b, "53200", "out of memory");
            return;
        }
        buf_destroy(&req);
        backend_resume(b);
        return;
    }
    backend_send_startup(b);
    backend_resume(b);
}

/* Log in: the StartupMessage, with the client's own parameters, so each node's session starts
 * the same. */
static void backend_send_startup(struct backend *b)
{
    struct client *c = b->client;
    const char *kv[2 * (CLIENT_MAX_PARAMS + 2)];
    size_t n = 0;
    kv[n++] = "user";
    kv[n++] = c->user;
    kv[n++] = "database";
    kv[n++] = c->database;
    for (size_t i = 0; i < c->nparams; i++) {
        kv[n++] = c->params[2 * i];
        kv[n++] = c->params[2 * i + 1];
    }
    struct buf msg;
    buf_init(&msg);
    if (proto_write_StartupMessage(&msg, kv, n / 2) < 0) {
        buf_destroy(&msg);
        backend_fail(b, "53200", "out of memory");
        return;
    }
    if (backend_send_login(b, &msg) < 0) {
        buf_destroy(&msg);
        backend_fail(b, "53200", "out of memory");
        return;
    }
}

struct backend *backend_open(struct client *c, int node)
{
    struct proxy *px = c->px;
    struct backend *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->client = c;
    b->px = px;
    b->node = node;
    b->state = BACKEND_CONNECTING;
    b->tx_status = 'I';
    b->opened_ns = uv_hrtime();
    b->cfg_gen = px->cfg_gen;
    b->pool_key = malloc(c->param_keylen);
    if (b->pool_key == NULL) {
        free(b);
        return NULL;
    }
    b->tls_ctx = tls_ctx_ref(px->tls);
    memcpy(b->pool_key, c->param_key, c->param_keylen);
    b->pool_keylen = c->param_keylen;
    buf_init(&b->in);
    buf_init(&b->out);
    buf_init(&b->writing);
    buf_init(&b->startup_params);
    buf_init(&b->reprepare_error);
    buf_init(&b->login);
    buf_init(&b->tls_in);
    buf_init(&b->tls_out);
    proxy_stream_init(px->loop, &b->tcp, &px->nodes[node].addr);
    uv_timer_init(px->loop, &b->timer);
    b->handles_open = 2;
    b->tcp.data = b;
    b->timer.data = b;
    b->connect_req.data = b;
    c->backends[node] = b;
    c->backend_mask |= 1u << node;
    px->nodes[node].backends++;
    px->nodes[node].opened++;
    uv_timer_start(&b->timer, backend_timeout_cb, (uint64_t)px->cfg->connect_timeout_ms, 0);
    int rc =
        proxy_stream_connect(&b->connect_req, &b->tcp, &px->nodes[node].addr, backend_connect_cb);
    if (rc < 0) {
        /* The connect callback will not run: fail on the next loop turn via the timer. */
        uv_timer_start(&b->timer, backend_timeout_cb, 0, 0);
    }
    return b;
}

/* ---- login ---- */

static int backend_handle_auth(struct backend *b, const struct proto_msg *m)
{
    struct client *c = b->client;
    struct proto_reader r;
    proto_reader_init(&r, m->body, m->len);
    int32_t code = proto_read_i32(&r);
    struct buf msg;
    buf_init(&msg);
    int rc = 0;
    switch (code) {
    case AUTH_OK:
        b->state = BACKEND_STARTUP;
        return 0;
    case AUTH_CLEARTEXT:
        if (scram_is_secret(c->password))
            return -2;
        rc = proto_write_PasswordMessage(&msg, c->password);
        break;
    case AUTH_MD5: {
        const char *salt = proto_read_bytes(&r, 4);
        if (salt == NULL)
            return -1;
        if (scram_is_secret(c->password))
            return -2;
        char resp[36];
        auth_md5_response(c->user, c->password, (const uint8_t *)salt, resp);
        rc = proto_write_PasswordMessage(&msg, resp);
        break;
    }
    case AUTH_SASL: {
        /* The list of mechanisms must hold SCRAM-SHA-256. */
        bool found = false;
        while (!r.err) {
            size_t len;
            const char *mech = proto_read_str(&r, &len);
            if (r.err || len == 0)
                break;
            if (strcmp(mech, "SCRAM-SHA-256") == 0)
                found = true;
        }
        if (!found)
            return -1;
        b->scram = calloc(1, sizeof(*b->scram));
        if (b->scram == NULL)
            return -1;
        if (scram_client_start(b->scram, c->password,
                               c->has_client_key ? c->scram_client_key : NULL) < 0)
            return scram_is_secret(c->password) ? -2 : -1;
        char first[SCRAM_MAX_MSG];
        int n = scram_client_first(b->scram, first, sizeof(first));
        if (n < 0)
            return -1;
        rc = proto_write_SASLInitialResponse(&msg, "SCRAM-SHA-256", first, (size_t)n);
        break;
    }
    case AUTH_SASL_CONTINUE: {
        if (b->scram == NULL)
            return -1;
        char final[SCRAM_MAX_MSG];
        int n = scram_client_final(b->scram, m->body + 4, m->len - 4, final, sizeof(final));
        if (n < 0)
            return -1;
        rc = proto_write_SASLResponse(&msg, final, (size_t)n);
        break;
    }
    case AUTH_SASL_FINAL:
        if (b->scram == NULL || scram_client_verify(b->scram, m->body + 4, m->len - 4) < 0)
            return -1;
        return 0;
    default:
        return -1;
    }
    if (rc < 0 || backend_send_login(b, &msg) < 0) {
        buf_destroy(&msg);
        return -1;
    }
    return 0;
}

/* Forward a node's ErrorResponse as an ERROR the session survives: a FATAL from a node ends
 * only pgsteer's backend, not the client's session. */
static void backend_fail_with_error(struct backend *b, const struct proto_msg *m)
{
    const char *code = proto_error_field(m->body, m->len, 'C');
    const char *text = proto_error_field(m->body, m->len, 'M');
    char msg[512];
    snprintf(msg, sizeof(msg), "node %s: %s", b->px->cfg->nodes[b->node].name,
             text ? text : "error");
    backend_fail(b, code ? code : "08006", msg);
}

/* ---- responses ---- */

/* The node entered copy-in: Syncs the client sent after the COPY's Execute reach the node
 * while it copies, and it ignores them, so no ReadyForQuery will answer them. Drop their
 * entries (all behind the head; the one after CopyDone is sent later). */
static void backend_drop_syncs(struct backend *b)
{
    size_t keep = 1;
    for (size_t i = 1; i < b->exp_count; i++) {
        struct expect e = b->exp[(b->exp_head + i) % b->exp_cap];
        if (e.kind == EXP_SYNC) {
            if (!e.swallow)
                b->fwd_outstanding--;
            continue;
        }
        b->exp[(b->exp_head + keep++) % b->exp_cap] = e;
    }
    b->exp_count = keep;
}

static bool is_extended(uint8_t kind)
{
    return kind != EXP_SYNC && kind != EXP_QUERY;
}

/* Whether a message of type `type` is the last of the answer to an extended-protocol message of
 * expect_kind `kind` (ReadyForQuery and errors are handled apart). */
static bool expect_done(uint8_t kind, char type)
{
    switch (type) {
    case BE_PARSE_COMPLETE:
        return kind == EXP_PARSE;
    case BE_BIND_COMPLETE:
        return kind == EXP_BIND;
    case BE_CLOSE_COMPLETE:
        return kind == EXP_CLOSE;
    case BE_NO_DATA:
        return kind == EXP_DESCRIBE || kind == EXP_EXECUTE;
    case BE_ROW_DESCRIPTION:
        return kind == EXP_DESCRIBE;
    case BE_COMMAND_COMPLETE:
    case BE_EMPTY_QUERY:
    case BE_PORTAL_SUSPENDED:
        return kind == EXP_EXECUTE;
    default:
        return false;
    }
}

/* ParameterStatus values a replica reports differently from the primary: the client sees the
 * primary's view, or drivers that look for a read-write server would refuse pgsteer. */
static bool replica_param_hidden(const struct proto_msg *m)
{
    static const char *const hidden[] = {"in_hot_standby", "default_transaction_read_only",
                                         "transaction_read_only"};
    for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++) {
        size_t n = strlen(hidden[i]);
        if (m->len > n && memcmp(m->body, hidden[i], n + 1) == 0)
            return true;
    }
    return false;
}

/* Handles one response while logged in. Returns -1 when the backend or client was closed. */
static int backend_handle_response(struct backend *b, const struct proto_msg *m)
{
    struct client *c = b->client;
    struct expect *head = backend_head(b);
    bool forward = head == NULL || !head->swallow;

    switch (m->type) {
    case BE_NOTIFICATION:
        /* Always for the client, whatever it is waiting for. */
        return client_queue(c, m->body - 5, m->total);
    case BE_NOTICE:
        return forward || (head && head->simple) ? client_queue(c, m->body - 5, m->total) : 0;
    case BE_PARAM_STATUS:
        if (!forward ||
            (c->px->cfg->nodes[b->node].role == NODE_REPLICA && replica_param_hidden(m)))
            return 0;
        return client_queue(c, m->body - 5, m->total);
    default:
        break;
    }

    if (head == NULL) {
        /* A response nobody asked for: a FATAL before the node closes (admin shutdown), or a
         * broken node. Tell the client and drop this backend. */
        if (m->type == BE_ERROR) {
            backend_fail_with_error(b, m);
            return -1;
        }
        log_warn("client %u: node %s sent unexpected message '%c'", c->id,
                 c->px->cfg->nodes[b->node].name, m->type);
        backend_fail(b, "08P01", "unexpected message from node");
        return -1;
    }

    if (head->simple && m->type == BE_NO_DATA) {
        backend_pop(b); /* a Query's answer has no NoData (nor does it settle a retry) */
        return 0;
    }
    if (head->retryable && !head->swallow) {
        /* A read on a replica that may still be retried on the primary: nothing reaches the
         * client until the replica has shown it accepted the statement. */
        const char *code = m->type == BE_ERROR ? proto_error_field(m->body, m->len, 'C') : NULL;
        if (code && (strcmp(code, "25006") == 0 || strcmp(code, "40001") == 0)) {
            /* A Query run as a kept statement: the node skips to its Sync, whose answer
             * then starts the retry. */
            if (is_extended(head->kind))
                b->batch_error = true;
            while (is_extended(head->kind)) {
                backend_pop(b);
                head = backend_head(b);
            }
            head->swallow = true;
            b->fwd_outstanding--;
            buf_reset(&c->retry_hold);
            return 0;
        }
        if (m->type == BE_ROW_DESCRIPTION && buf_avail(&c->retry_hold) == 0) {
            if (head->kind == EXP_DESCRIBE)
                backend_pop(b); /* its answer, held */
            return buf_append(&c->retry_hold, m->body - 5, m->total) < 0 ? -1 : 0;
        }
        head->retryable = false;
        client_retry_settled(c);
        for (size_t k = 1; head->simple && head->kind != EXP_SYNC && k < b->exp_count; k++) {
            /* the rest of a Query run as a kept statement, up to its Sync */
            struct expect *x = &b->exp[(b->exp_head + k) % b->exp_cap];
            x->retryable = false;
            if (x->kind == EXP_SYNC)
                break;
        }
    }

    if (head->sstmt && head->kind == EXP_PARSE && !b->shared &&
        (m->type == BE_PARSE_COMPLETE || m->type == BE_ERROR))
        shared_stmt_answered(b, (uint16_t)(head->sstmt - 1), m->type == BE_PARSE_COMPLETE);
    bool done = expect_done(head->kind, m->type);
    switch (m->type) {
    case BE_COMMAND_COMPLETE:
        if (c->tx_saved_valid) {
            /* How the transaction ended, if it did: the tag of its end. ROLLBACK TO SAVEPOINT
             * also says ROLLBACK, but a transaction it stays in ends later, by a COMMIT (the
             * tag of a failed transaction's COMMIT is ROLLBACK) or a ROLLBACK. */
            if (m->len >= 9 && memcmp(m->body, "ROLLBACK", 9) == 0)
                b->rolled_back = true;
            else if (m->len >= 7 && memcmp(m->body, "COMMIT", 7) == 0)
                b->rolled_back = false;
        }
        break;
    case BE_COPY_IN:
    case BE_COPY_BOTH:
        if (forward) {
            backend_drop_syncs(b);
            client_on_copy_in(c, b, head->kind == EXP_EXECUTE);
        }
        break;
    case BE_READY_FOR_QUERY: {
        if (head->kind != EXP_SYNC && head->kind != EXP_QUERY) {
            backend_fail(b, "08P01", "protocol out of step with the node");
            return -1;
        }
        struct expect e = backend_pop(b);
        if (e.owner) /* a shared backend's answer, complete */
            e.owner->shared_owed--;
        char status = m->len >= 1 ? m->body[0] : 'I';
        if (status == 'I' && b->tx_status != 'I') { /* the transaction on b ended */
            if (c->tx_saved_valid)
                session_tx_end(c, b->rolled_back, e.gen_at);
            session_savepoints_clear(c);
        } else if (c->tx_saved_implicit && e.kind == EXP_SYNC) {
            if (status == 'I') /* the batch's implicit transaction ended */
                session_tx_end(c, b->batch_error, e.gen_at);
            else /* it began a transaction block, which the settings' copy now belongs to */
                c->tx_saved_implicit = false;
        }
        if (e.change != 0 && !b->batch_error)
            session_change_confirm(c, e.change); /* the Query that recorded it succeeded */
        b->tx_status = status;
        b->rolled_back = false;
        b->batch_error = false;
        if (e.swallow && e.retryable) {
            client_retry_on_primary(c, "a replica refused a read as a write");
            return c->state == CLIENT_CLOSING || b->state == BACKEND_CLOSING ? -1 : 0;
        }
        if (!e.swallow)
            buf_reset(&b->reprepare_error); /* held for the client's statement, now done */
        if (b->cancel_pending && !replay_ahead(b))
            cancel_send_held(b); /* the replays ahead of the client's statement are done */
        if (!e.swallow && client_queue(c, m->body - 5, m->total) < 0)
            return -1;
        client_on_ready_for_query(c, b, status, &e);
        return c->state == CLIENT_CLOSING || b->state == BACKEND_CLOSING ? -1 : 0;
    }
    case BE_ERROR: {
        if (head->kind == EXP_BIND && head->sstmt && (head->simple || !b->shared)) {
            /* A Bind of a statement b kept for the client's Query (simple) or for its unnamed
             * statement (whose id `stmt` holds: the unnamed statement stays when only its
             * Bind fails). */
            const char *code = proto_error_field(m->body, m->len, 'C');
            uint16_t i = (uint16_t)(head->sstmt - 1);
            uint32_t stmt = head->stmt;
            bool simple = head->simple;
            head->sstmt = 0;
            head->stmt = 0;
            if (code && (strcmp(code, "0A000") == 0 || strcmp(code, "26000") == 0) &&
                (simple ? simple_refused(b, c, i) : unnamed_refused(b, c, i, stmt))) {
                if (b->state == BACKEND_CLOSING)
                    return -1;
                /* The node skips the rest of the refused batch up to its Sync. */
                while (b->exp_count && is_extended(backend_head(b)->kind))
                    backend_pop(b);
                b->batch_error = true;
                return 0;
            }
            head = backend_head(b); /* the ring may have moved */
        } else if (b->shared && head->kind == EXP_BIND && head->sstmt) {
            /* A kept statement that stood for a client's unnamed one, refused: dropped (and
             * closed), so that the next Parse of the text prepares it anew; this client gets
             * the error. */
            const char *code = proto_error_field(m->body, m->len, 'C');
            uint16_t i = (uint16_t)(head->sstmt - 1);
            head->sstmt = 0;
            if (code && (strcmp(code, "0A000") == 0 || strcmp(code, "26000") == 0) &&
                i < b->nsstmts) {
                char name[24];
                sstmt_name(name, sizeof(name), b->sstmts[i].name);
                sstmt_drop(b, i);
                if (proto_write_Close(&b->out, 'S', name) == 0 &&
                    backend_expect(b, EXP_CLOSE, true, false) == 0)
                    backend_expect_last(b)->quiet = true;
                backend_shared_defer_flush(b);
                head = backend_head(b);
            }
        }
        if (head->swallow && head->kind == EXP_QUERY) {
            /* A replayed session change failed here: the node's session differs from the
             * client's from now on, which the client must know. */
            const char *text = proto_error_field(m->body, m->len, 'M');
            log_warn("client %u: replaying session state on node %s failed: %s", c->id,
                     c->px->cfg->nodes[b->node].name, text ? text : "?");
            forward = true;
            b->diverged = true; /* replaced before the session's next unit (client_backend) */
        }
        if (head->swallow && head->kind == EXP_PARSE && !head->quiet)
            forward = true; /* a re-prepare failed: the client's Bind will not work here */
        if (head->simple)
            forward = true; /* the client's Query failed */
        if (head->swallow && head->kind == EXP_PARSE && head->quiet && head->stmt != 0) {
            /* A re-prepare before a SQL EXECUTE failed (its text does not parse under the
             * settings of now): the EXECUTE will fail for want of the statement (26000),
             * where one server, re-parsing the statement to run it, gives this error. */
            buf_reset(&b->reprepare_error);
            if (buf_append(&b->reprepare_error, m->body - 5, m->total) < 0)
                buf_reset(&b->reprepare_error);
        }
        if (!head->swallow && head->kind == EXP_QUERY && buf_avail(&b->reprepare_error)) {
            forward = false;
            if (client_queue(c, buf_head(&b->reprepare_error), buf_avail(&b->reprepare_error)) < 0)
                return -1;
            buf_reset(&b->reprepare_error);
        }
        if (head->stmt != 0 && head->swallow) /* a re-prepare: b does not have it after all */
            session_stmt_unplace(c, head->stmt, b->node);
        else if (head->stmt != 0)
            session_stmt_forget(c, head->stmt); /* the client's Parse: it was not made */
        if (head->change != 0)
            session_change_undo(c, head->change); /* nor the session change */
        b->batch_error = true;
        if (is_extended(head->kind)) {
            /* The node skips everything up to the next Sync: so do the owed responses. */
            while (b->exp_count && is_extended(backend_head(b)->kind)) {
                struct expect e = backend_pop(b);
                if (e.change != 0) /* an Execute skipped: its statement changed nothing */
                    session_change_undo(c, e.change);
                if (e.sstmt && e.kind == EXP_PARSE) /* b's own Parse skipped: not made */
                    shared_stmt_answered(b, (uint16_t)(e.sstmt - 1), false);
                if (e.stmt != 0 && e.kind == EXP_PARSE && !e.swallow)
                    session_stmt_forget(c, e.stmt); /* the client's Parse skipped: not made */
            }
        }
        return forward ? client_queue(c, m->body - 5, m->total) : 0;
    }
    default:
        break;
    }
    if (done) {
        struct expect e = backend_pop(b);
        if (e.change != 0) /* the Execute that recorded it completed */
            session_change_confirm(c, e.change);
    }
    return forward ? client_queue(c, m->body - 5, m->total) : 0;
}

static int shared_response(struct backend *b, const struct proto_msg *m);

static void backend_handle_input(struct backend *b)
{
    while (b->state != BACKEND_CLOSING && (b->client || b->shared)) {
        struct proto_msg m;
        int rc = proto_frame(buf_head(&b->in), buf_avail(&b->in), PROTO_MAX_MESSAGE, &m);
        if (rc == 0)
            break;
        if (rc < 0) {
            backend_fail(b, "08P01", "invalid message length from node");
            return;
        }
        buf_consume(&b->in, m.total);
        switch (b->state) {
        case BACKEND_AUTH:
            if (m.type == BE_AUTH) {
                int arc = backend_handle_auth(b, &m);
                if (arc == -2) {
                    /* (a SCRAM secret answers SCRAM with the key the client proved, only) */
                    backend_fail(b, "28000",
                                 "could not authenticate to the node: pgsteer holds a SCRAM "
                                 "secret for this user, and the node asks for a password (MD5 or "
                                 "cleartext): store the same SCRAM secret on the node");
                    return;
                }
                if (arc < 0) {
                    backend_fail(b, "28000", "could not authenticate to the node");
                    return;
                }
            } else if (m.type == BE_ERROR) {
                backend_fail_with_error(b, &m);
                return;
            } else if (m.type != BE_NOTICE && m.type != BE_NEGOTIATE_VERSION) {
                backend_fail(b, "08P01", "unexpected message from node during login");
                return;
            }
            break;
        case BACKEND_STARTUP:
            if (m.type == BE_PARAM_STATUS) {
                if (buf_append(&b->startup_params, m.body - 5, m.total) < 0) {
                    backend_fail(b, "53200", "out of memory");
                    return;
                }
            } else if (m.type == BE_KEY_DATA && m.len >= 8) {
                b->pid = proto_get_u32(m.body);
                b->key = proto_get_u32(m.body + 4);
            } else if (m.type == BE_READY_FOR_QUERY) {
                b->state = BACKEND_READY;
                uv_timer_stop(&b->timer);
                client_backend_ready(b->client, b);
                if (b->state == BACKEND_CLOSING)
                    return;
                backend_flush(b);
                /* A cancel that came during the login: the statements are on their way now
                 * (behind a replay of the session's changes, it waits for its answer). */
                if (b->cancel_pending && !replay_ahead(b))
                    cancel_send_held(b);
            } else if (m.type == BE_ERROR) {
                backend_fail_with_error(b, &m);
                return;
            }
            break;
        case BACKEND_READY:
            if (m.type == BE_ERROR)
                simple_error_position(b, &m);
            if (b->shared) {
                if (shared_response(b, &m) != 0)
                    return; /* closed, or the head's client is slow: the rest waits */
                break;
            }
            if (backend_handle_response(b, &m) < 0)
                return;
            if (b->client && b->client->paused_out)
                return; /* the client is slow: leave the rest in the buffer */
            break;
        default:
            return;
        }
    }
}

/* Everything the node owed the client is answered with an error: one ErrorResponse, then a
 * ReadyForQuery for each Sync or Query the client is waiting on, so the client never hangs. */
static void backend_fail(struct backend *b, const char *sqlstate, const char *message)
{
    if (b->state == BACKEND_CLOSING)
        return;
    if (b->shared) {
        shared_fail(b, sqlstate, message);
        return;
    }
    struct client *c = b->client;
    if (c == NULL) {
        backend_close(b);
        return;
    }
    struct proxy *px = c->px;
    const char *name = px->cfg->nodes[b->node].name;
    log_warn("client %u: backend to node %s failed: %s", c->id, name, message);
    proxy_node_failed(px, b->node);
    size_t owed_ready = 0, owed_syncs = 0;
    bool owed_any = false, retry = false, owed_other = false;
    /* An error forwarded since the last ReadyForQuery (the node's own FATAL, say) answered the
     * first unit owed already; the others get one each from client_backend_failed. */
    bool answered = b->batch_error;
    /* Nothing of the client's reached a node that never let the backend in. */
    bool login = b->state != BACKEND_READY;
    while (b->exp_count) {
        struct expect e = backend_pop(b);
        retry |= e.retryable;
        owed_other |= !e.swallow && !e.retryable;
        /* What the node never answered did not happen, for the client, which gets an error
         * for it: a Parse of its own made no statement, and a statement that recorded a
         * session change made none. */
        if (e.stmt != 0 && e.kind == EXP_PARSE && !e.swallow)
            session_stmt_forget(c, e.stmt);
        if (e.change != 0)
            session_change_undo(c, e.change);
        if (e.swallow)
            continue;
        owed_any = true;
        if (e.kind == EXP_SYNC || e.kind == EXP_QUERY)
            owed_ready++;
        if (e.kind == EXP_SYNC)
            owed_syncs++;
    }
    /* A transaction open there, a block or a batch's implicit one, is gone: rolled back, with
     * the changes to settings made in it. */
    if (c->tx_saved_valid && (c->tx_node == b->node || b->tx_status != 'I' ||
                              (c->tx_saved_implicit && c->batch_node == b->node))) {
        session_tx_end(c, true, c->change_gen);
        session_savepoints_clear(c);
    }
    /* Drop the backend before calling back into the client, which may route again. */
    int node = b->node;
    backend_close(b);
    if (retry && login && !owed_other && !answered && c->state == CLIENT_READY &&
        node != px->cfg->primary) {
        /* A read that would have been the replica's first statement on a backend that could
         * not log in (the node down, refusing, or failing TLS): the primary runs it instead,
         * as it does a read a replica refuses. */
        client_retry_on_primary(c, "a replica could not be reached for a read");
        return;
    }
    if (login && c->login_node == node && owed_ready == c->login_units &&
        owed_syncs == c->login_units && !answered && !retry && c->state == CLIENT_READY &&
        !c->processing) {
        /* Extended read batches, the replica backend's only units, that never reached the
         * node: routed again, to another replica or the primary. */
        client_retry_batch(c, node, "a replica could not be reached for a read");
        return;
    }
    if (c->login_node == node) { /* (what it kept is owed an error now) */
        c->login_node = -1;
        c->login_units = 0;
        buf_reset(&c->login_batch);
    }
    if (retry) /* the read that might have moved to the primary ends here, with the error */
        client_retry_settled(c);
    client_backend_failed(c, node, sqlstate, message, owed_any, owed_ready, answered);
}

/* ---- the pool ----
 * A client's backend outlives the client when it is idle as the client leaves: it is reset
 * with DISCARD ALL (prepared statements, portals, temporary tables, LISTEN, advisory locks,
 * settings back to the login's) and parked in its worker's pool, to be handed to the next
 * client of that worker that needs the node and would log in the same way (`pool_key`: user,
 * database and startup parameters). So a client that connects anew does not cost the node a
 * new server process each time. A parked backend is read as usual: the answer to the reset
 * makes it available, and anything unexpected (an error, the node closing it) closes it. */

#define POOL_RESET_QUERY "DISCARD ALL"

static void pool_idle_timeout_cb(uv_timer_t *t)
{
    struct backend *b = t->data;
    log_debug("node %s: closing a backend unused for %d ms", b->px->cfg->nodes[b->node].name,
              b->px->cfg->backend_idle_timeout_ms);
    backend_close(b);
}

static bool pool_too_old(const struct backend *b)
{
    int lifetime = b->px->cfg->backend_lifetime_ms;
    return lifetime > 0 && uv_hrtime() - b->opened_ns >= (uint64_t)lifetime * 1000000u;
}

/* Whether idle backend b may serve another client after a reset (pool_park closes it
 * instead when the pools are full, as with backend_idle_max 0). */
static bool pool_fit_idle(const struct backend *b)
{
    const struct proxy *px = b->px;
    const struct config *cfg = px->cfg;
    int node = b->node;
    return !px->shutting_down && !px->stopping && b->state == BACKEND_READY &&
           b->tx_status == 'I' && b->exp_count == 0 && !b->write_pending && !b->cancel_pending &&
           !b->cancel_fence && buf_avail(&b->out) == 0 && buf_avail(&b->in) == 0 &&
           b->cfg_gen == px->cfg_gen && (size_t)node < cfg->nnodes && !cfg->nodes[node].pooled &&
           !px->nodes[node].removed && px->nodes[node].failed_until_ms <= proxy_now_ms() &&
           !pool_too_old(b);
}

/* The same for b, whose client c is leaving (or, for a shared backend, lends it). */
static bool pool_fit(const struct backend *b, const struct client *c)
{
    int node = b->node;
    return pool_fit_idle(b) && c->tx_node != node && c->batch_node != node && c->copy_node != node;
}

static void pool_park(struct backend *b);

void backend_release(struct backend *b)
{
    struct client *c = b->client;
    if (c == NULL || !pool_fit(b, c)) {
        backend_close(b);
        return;
    }
    backend_detach(b);
    pool_park(b);
}

/* Put b, idle, logged in and no client's, in its worker's pool, reset with DISCARD ALL, or
 * close it when the pools are full. */
static void pool_park(struct backend *b)
{
    struct proxy *px = b->px;
    int node = b->node;
    if (atomic_fetch_add(&px->shared->idle[node], 1) >= px->cfg->backend_idle_max) {
        /* Full: the least recently parked backend of this worker gives b its place (its
         * unlink takes back one count, so the one just added stands for b). Without one here
         * (the others' pools hold them all), b is closed. */
        struct backend *oldest = px->pool[node];
        while (oldest && oldest->pool_next)
            oldest = oldest->pool_next;
        if (oldest == NULL) {
            atomic_fetch_sub(&px->shared->idle[node], 1);
            backend_close(b);
            return;
        }
        backend_close(oldest);
    }
    int rc = proto_write_Query(&b->out, POOL_RESET_QUERY); /* out is empty (pool_fit) */
    backend_stmts_clear(b);
    b->parked = true;
    b->resetting = true;
    b->pool_prev = NULL;
    b->pool_next = px->pool[node];
    if (b->pool_next)
        b->pool_next->pool_prev = b;
    px->pool[node] = b;
    px->nodes[node].idle++;
    if (rc < 0) {
        backend_close(b);
        return;
    }
    uv_timer_start(&b->timer, pool_idle_timeout_cb, (uint64_t)px->cfg->backend_idle_timeout_ms, 0);
    if (!b->reading) {
        uv_read_start((uv_stream_t *)&b->tcp, backend_alloc_cb, backend_read_cb);
        b->reading = true;
    }
    backend_flush(b); /* a broken connection closes b on the next loop turn */
}

struct backend *backend_pool_take(struct client *c, int node)
{
    struct proxy *px = c->px;
    for (struct backend *b = px->pool[node], *next; b; b = next) {
        next = b->pool_next;
        if (b->resetting || b->pool_keylen != c->param_keylen ||
            memcmp(b->pool_key, c->param_key, b->pool_keylen) != 0)
            continue;
        if (b->cfg_gen != px->cfg_gen || pool_too_old(b)) {
            backend_close(b);
            continue;
        }
        pool_unlink(b);
        uv_timer_stop(&b->timer);
        b->client = c;
        b->set_gen = 0;
        c->backends[node] = b;
        c->backend_mask |= 1u << node;
        px->nodes[node].backends++;
        px->nodes[node].reused++;
        return b;
    }
    return NULL;
}

void backend_pool_flush(struct proxy *px, int node)
{
    for (int i = node < 0 ? 0 : node; i < (node < 0 ? CONFIG_MAX_NODES : node + 1); i++) {
        while (px->pool[i])
            backend_close(px->pool[i]);
    }
}

/* Input on a parked backend: the answer to the reset, or a node telling it is going. */
static void backend_pool_input(struct backend *b)
{
    const char *name = b->px->cfg->nodes[b->node].name;
    while (b->state != BACKEND_CLOSING) {
        struct proto_msg m;
        int rc = proto_frame(buf_head(&b->in), buf_avail(&b->in), PROTO_MAX_MESSAGE, &m);
        if (rc == 0)
            return;
        if (rc < 0) {
            log_warn("node %s: invalid message length on a pooled backend", name);
            backend_close(b);
            return;
        }
        buf_consume(&b->in, m.total);
        switch (m.type) {
        case BE_PARAM_STATUS: /* settings going back to the login's */
        case BE_NOTICE:
        case BE_NOTIFICATION: /* sent before the reset's UNLISTEN took effect */
            break;
        case BE_COMMAND_COMPLETE:
            if (!b->resetting)
                goto unexpected;
            break;
        case BE_READY_FOR_QUERY:
            if (!b->resetting || m.len < 1 || m.body[0] != 'I')
                goto unexpected;
            b->resetting = false;
            b->tx_status = 'I';
            break;
        case BE_ERROR: {
            const char *text = proto_error_field(m.body, m.len, 'M');
            log_info("node %s: closing a pooled backend: %s", name, text ? text : "error");
            backend_close(b);
            return;
        }
        default:
            goto unexpected;
        }
    }
    return;
unexpected:
    log_warn("node %s: unexpected message on a pooled backend", name);
    backend_close(b);
}

/* ---- shared backends (multiplex_reads) ----
 * A read outside a transaction, from a session with nothing of its own on the node (no
 * setting, no prepared statement made with SQL, not pinned), gives the same answer on any
 * connection to a replica logged in the same way. With multiplex_reads, such a Query goes to
 * the worker's shared backend to the node the router chose, behind those of other clients
 * still running there: the node reads the next one from its socket without sleeping in
 * between, and one server process serves many clients. Each owed answer names its client
 * (struct expect.owner); the answer at the head of the ring is handled by the usual response
 * code with `client` set to that owner, so a read the replica refuses (25006) is retried on
 * the owner's primary backend as on its own backend. The shared backend is taken from the
 * worker's pool, so it is logged in and reset; there is one per node and worker, for the
 * user, database and startup parameters of the client that first needed it. */

/* Flush what the head's owner has been sent so far (an answer may span several reads). */
static void shared_flush_head(struct backend *b)
{
    struct expect *head = backend_head(b);
    if (b->state != BACKEND_CLOSING && head && head->owner && head->owner->state != CLIENT_CLOSING)
        client_flush(head->owner);
}

static bool shared_fit(const struct backend *b)
{
    const struct proxy *px = b->px;
    return px->cfg->multiplex_reads && !px->shutting_down && !px->stopping &&
           b->cfg_gen == px->cfg_gen && (size_t)b->node < px->cfg->nnodes &&
           !px->nodes[b->node].removed && !pool_too_old(b);
}

/* b, when it may take one more unit now: NULL when it owes answers and has sent nothing for
 * multiplex_stall_ms, stuck behind a long read (or a client reading slowly), so that reads
 * go to their sessions' own backends meanwhile instead of queueing behind it. */
static struct backend *shared_unstalled(struct backend *b)
{
    struct proxy *px = b->px;
    if (b->cancel_fence)
        return NULL; /* a cancel on its way must not reach another client's statement */
    uint64_t now = uv_now(px->loop);
    if (b->exp_count == 0) {
        b->progress_ms = now; /* the unit about to be queued starts the clock */
        return b;
    }
    int stall = px->cfg->multiplex_stall_ms;
    if (stall > 0 && now - b->progress_ms >= (uint64_t)stall) {
        px->multiplex_stalls++;
        return NULL;
    }
    return b;
}

struct backend *backend_shared_get(struct client *c, int node)
{
    struct proxy *px = c->px;
    struct backend *b = px->shared_be[node];
    if (b) {
        bool same = b->pool_keylen == c->param_keylen &&
                    memcmp(b->pool_key, c->param_key, b->pool_keylen) == 0;
        if (b->state == BACKEND_READY && same && shared_fit(b))
            return shared_unstalled(b);
        if (b->exp_count != 0 || b->cancel_fence)
            return NULL; /* busy, or a cancel could still reach what the next owner sends */
        if (!shared_fit(b) || !pool_fit_idle(b)) {
            backend_close(b); /* clears px->shared_be[node]; the next read takes a fresh one */
            return NULL;
        }
        /* Idle, and another login's: it goes to the pool, and c's login takes the place. */
        px->shared_be[node] = NULL;
        px->nodes[node].backends--;
        b->shared = false;
        shared_stmts_free(b);
        pool_park(b);
    }
    for (b = px->pool[node]; b; b = b->pool_next) {
        if (b->resetting || b->pool_keylen != c->param_keylen ||
            memcmp(b->pool_key, c->param_key, b->pool_keylen) != 0)
            continue;
        if (!shared_fit(b))
            return NULL; /* backend_pool_take closes unfit ones as it meets them */
        pool_unlink(b);
        uv_timer_stop(&b->timer);
        b->shared = true;
        b->client = NULL;
        px->shared_be[node] = b;
        px->nodes[node].backends++;
        px->nodes[node].reused++;
        log_debug("node %s: a pooled backend is now shared by this worker's reads",
                  px->cfg->nodes[node].name);
        return shared_unstalled(b);
    }
    /* None pooled, as when clients keep their connections: c's own backend to the node
     * becomes the shared one, if it could go to the pool now. The pool's reset goes first,
     * its answer nobody's, and drops what c left there (prepared statements, whose names
     * could be the ones shared statements get). c takes or opens another when it needs one. */
    b = c->backends[node];
    if (b == NULL || !pool_fit(b, c) || !shared_fit(b) ||
        proto_write_Query(&b->out, POOL_RESET_QUERY) < 0) /* out is empty (pool_fit) */
        return NULL;
    backend_detach(b);
    backend_stmts_clear(b); /* the reset drops them */
    c->unnamed_stale &= ~(1u << node);
    b->shared = true;
    px->shared_be[node] = b;
    px->nodes[node].backends++;
    if (backend_expect(b, EXP_QUERY, true, false) < 0) {
        backend_close(b);
        return NULL;
    }
    if (!b->reading) {
        uv_read_start((uv_stream_t *)&b->tcp, backend_alloc_cb, backend_read_cb);
        b->reading = true;
    }
    log_debug("node %s: a client's idle backend is now shared by this worker's reads",
              px->cfg->nodes[node].name);
    b->progress_ms = uv_now(px->loop);
    return b;
}

int backend_shared_expect(struct backend *b, struct client *c, enum expect_kind kind)
{
    if (backend_expect(b, kind, false, false) < 0)
        return -1;
    struct expect *e = backend_expect_last(b);
    e->owner = c;
    e->gen_at = c->change_gen;
    if (!is_extended((uint8_t)kind)) {
        c->shared_owed++;
        b->px->multiplexed++;
    }
    return 0;
}

void backend_shared_forget(struct client *c)
{
    for (int i = 0; i < CONFIG_MAX_NODES && c->shared_owed; i++) {
        struct backend *b = c->px->shared_be[i];
        bool found = false;
        for (size_t k = 0; b && k < b->exp_count; k++) {
            struct expect *e = &b->exp[(b->exp_head + k) % b->exp_cap];
            if (e->owner == c) {
                e->owner = NULL;
                c->shared_owed--;
                found = true;
            }
        }
        /* Paused for c's slow reading: the clients behind it go on (its answer is dropped). */
        if (found && !b->reading)
            backend_resume(b);
    }
    c->shared_owed = 0;
}

/* A hash of a statement's text and parameter types, eight bytes at a time: which of a
 * backend's kept statements a client's is (never 0, which means "not computed"). */
static uint64_t stmt_hash(const struct stmt *st)
{
    uint64_t h = 14695981039346656037ull ^ st->query_len;
    size_t i = 0;
    for (; i + 8 <= st->query_len; i += 8) {
        uint64_t w;
        memcpy(&w, st->query + i, 8);
        h = (h ^ w) * 1099511628211ull;
        h ^= h >> 29;
    }
    for (; i < st->query_len; i++)
        h = (h ^ (unsigned char)st->query[i]) * 1099511628211ull;
    for (uint16_t k = 0; k < st->ntypes; k++)
        h = (h ^ st->types[k]) * 1099511628211ull;
    return h ? h : 1;
}

static void shared_stmts_free(struct backend *b)
{
    for (uint16_t i = 0; i < b->nsstmts; i++) {
        free(b->sstmts[i].query);
        free(b->sstmts[i].types);
        free(b->sstmts[i].map);
    }
    free(b->sstmts);
    b->sstmts = NULL;
    b->nsstmts = 0;
    free(b->seen);
    b->seen = NULL;
}

/* The node answered the Parse of b's statement `i`: usable from now on, or, when it failed,
 * dropped (the last entry takes its place) so that the next client's Bind prepares it anew. */
static void shared_stmt_answered(struct backend *b, uint16_t i, bool ok)
{
    if (i >= b->nsstmts)
        return;
    struct shared_stmt *e = &b->sstmts[i];
    free(e->map); /* (only for errors about its Parse) */
    e->map = NULL;
    if (ok) {
        e->ready = true;
        return;
    }
    free(e->query);
    free(e->types);
    *e = b->sstmts[--b->nsstmts];
    if (b->unnamed_alias == i + 1)
        b->unnamed_alias = 0; /* its Parse failed: the client's unnamed statement is not here */
    else if (b->unnamed_alias == b->nsstmts + 1)
        b->unnamed_alias = (uint16_t)(i + 1);
    /* An entry moved from the end may have its Parse in flight: renumber its expect. */
    for (size_t k = 0; k < b->exp_count; k++) {
        struct expect *x = &b->exp[(b->exp_head + k) % b->exp_cap];
        if (x->sstmt == b->nsstmts + 1)
            x->sstmt = (uint16_t)(i + 1);
    }
}

/* What goes to the node in place of a client's Parse of a text it keeps prepared: a Parse of
 * the unnamed statement `SELECT`, which the node parses without a look at the catalogs, and
 * which it refuses as it would the client's in a failed transaction (25P02); its
 * ParseComplete is the client's. */
static const char stand_in_parse[] = {FE_PARSE, 0,   0,   0,   14, 0, 'S', 'E',
                                      'L',      'E', 'C', 'T', 0,  0, 0};

/* The index in b's table of the statement with st's text and parameter types, or
 * b->nsstmts when b has none. */
static uint16_t sstmt_find(const struct backend *b, struct stmt *st)
{
    if (st->hash == 0)
        st->hash = stmt_hash(st);
    uint16_t i = 0;
    for (; i < b->nsstmts; i++) {
        const struct shared_stmt *e = &b->sstmts[i];
        if (e->hash == st->hash && e->query_len == st->query_len && e->ntypes == st->ntypes &&
            memcmp(e->query, st->query, st->query_len) == 0 &&
            (st->ntypes == 0 || memcmp(e->types, st->types, st->ntypes * sizeof(uint32_t)) == 0))
            break;
    }
    return i;
}

/* Add st's text and types to b's table (which has room) under the next name, not ready yet.
 * Returns its index, or -1 when out of memory. */
static int sstmt_add(struct backend *b, const struct stmt *st)
{
    if (b->sstmts == NULL && (b->sstmts = calloc(SHARED_STMTS_MAX, sizeof(*b->sstmts))) == NULL)
        return -1;
    uint16_t i = b->nsstmts;
    struct shared_stmt *e = &b->sstmts[i];
    *e = (struct shared_stmt){.hash = st->hash,
                              .query_len = st->query_len,
                              .ntypes = st->ntypes,
                              .name = b->sstmt_names + 1};
    e->label_len = (uint8_t)sstmt_name(e->label, sizeof(e->label), e->name);
    e->query = malloc(st->query_len + 1);
    e->types = malloc(st->ntypes ? st->ntypes * sizeof(uint32_t) : 1);
    if (e->query == NULL || e->types == NULL) {
        free(e->query);
        free(e->types);
        return -1;
    }
    memcpy(e->query, st->query, st->query_len + 1);
    if (st->ntypes)
        memcpy(e->types, st->types, st->ntypes * sizeof(uint32_t));
    b->nsstmts++;
    b->sstmt_names++;
    return i;
}

/* Undo sstmt_add of entry i, the last one, whose Parse was not queued after all. */
static void sstmt_unadd(struct backend *b, uint16_t i)
{
    b->nsstmts--;
    free(b->sstmts[i].query);
    free(b->sstmts[i].types);
    free(b->sstmts[i].map);
}

static int sstmt_name(char *dst, size_t cap, uint32_t name)
{
    return snprintf(dst, cap, "pgsteer_s%u", (unsigned)name);
}

/* Take back what was queued on b since its output held `len` bytes and its ring `nexp`
 * expectations (only added at the end since), and the table entry i, when `added` for it. */
static void unqueue(struct backend *b, size_t len, size_t nexp, bool added, uint16_t i)
{
    b->out.len = len;
    while (b->exp_count > nexp) {
        if (!b->exp[(b->exp_head + b->exp_count - 1) % b->exp_cap].swallow)
            b->fwd_outstanding--;
        b->exp_count--;
    }
    if (added)
        sstmt_unadd(b, i);
}

int backend_shared_bind(struct backend *b, struct client *c, struct stmt *st,
                        const struct proto_msg *bind, const char *rest, size_t rest_len,
                        bool unnamed)
{
    if (kept_names_check(b, c) < 0)
        return -1;
    uint16_t i = sstmt_find(b, st);
    bool parse = i == b->nsstmts;
    if (!parse && !b->sstmts[i].ready)
        return 0; /* another client's Parse of it is in flight: it might fail */
    if (parse) {
        if (b->nsstmts == SHARED_STMTS_MAX)
            return 0;
        if (sstmt_add(b, st) < 0)
            return -1;
    }
    const char *name = b->sstmts[i].label;
    size_t before = b->out.len, nexp = b->exp_count;
    if (parse &&
        proto_write_Parse(&b->out, name, st->query, st->query_len, st->types, st->ntypes) < 0)
        goto oom;
    if (unnamed && backend_queue(b, stand_in_parse, sizeof(stand_in_parse)) < 0)
        goto oom;
    /* The Bind as the client sent it, but for its statement name: portal "" (the caller
     * checked), then the name, then the rest unchanged. */
    struct proto_reader r;
    proto_reader_init(&r, bind->body, bind->len);
    proto_read_str(&r, NULL);
    proto_read_str(&r, NULL);
    size_t nlen = b->sstmts[i].label_len;
    size_t len = 4 + 1 + nlen + 1 + (bind->len - r.pos);
    if (r.err || len > PROTO_MAX_MESSAGE || buf_reserve(&b->out, 1 + len + rest_len) < 0)
        goto oom;
    char *p = b->out.data + b->out.len;
    p[0] = FE_BIND;
    proto_put_u32(p + 1, (uint32_t)len);
    p[5] = 0;
    memcpy(p + 6, name, nlen + 1);
    memcpy(p + 7 + nlen, bind->body + r.pos, bind->len - r.pos);
    memcpy(p + 1 + len, rest, rest_len);
    b->out.len += 1 + len + rest_len;
    if (parse) {
        if (backend_expect(b, EXP_PARSE, true, false) < 0)
            goto oom;
        struct expect *e = backend_expect_last(b);
        e->owner = c;
        e->gen_at = c->change_gen;
        e->sstmt = (uint16_t)(i + 1);
    }
    if (unnamed) {
        /* The client's Parse, answered by the stand-in's ParseComplete */
        if (backend_shared_expect(b, c, EXP_PARSE) < 0)
            goto oom;
        backend_expect_last(b)->stmt = (uint32_t)st->id;
        /* and the Bind: should the node refuse the kept statement, it is dropped */
        if (backend_shared_expect(b, c, EXP_BIND) < 0)
            goto oom;
        backend_expect_last(b)->sstmt = (uint16_t)(i + 1);
        if (parse)
            b->px->unnamed_prepared++;
        else
            b->px->unnamed_reused++;
    }
    return 1;
oom:
    unqueue(b, before, nexp, parse, i);
    return -1;
}

/* ---- unnamed statements kept prepared (cache_unnamed_statements) ----
 * Drivers that do not keep statements prepared (pgbench -M extended, node-postgres, pgJDBC
 * before prepareThreshold, psycopg's first executions) send the same text in an unnamed Parse
 * for every query, and the node parses and plans it every time. A client's own backend keeps
 * each such text prepared under a name of its own (the table of struct shared_stmt, as a
 * shared backend does for clients' named statements) and answers the next Parse of it with a
 * stand-in (stand_in_parse); the Binds of the unnamed statement then name the kept one. */

/* Drop b's entry i (closed, or refused by the node): the last entry takes its place. Answers
 * still owed for Binds of it no longer name it, so that one refused later drops nothing more
 * (it would be another entry by then). */
static void sstmt_drop(struct backend *b, uint16_t i)
{
    for (size_t k = 0; k < b->exp_count; k++) {
        struct expect *x = &b->exp[(b->exp_head + k) % b->exp_cap];
        if (x->sstmt == i + 1)
            x->sstmt = 0;
    }
    shared_stmt_answered(b, i, false);
}

/* b's table is full: close the statement it used least recently (its Parse answered), so that
 * a new text takes its place. Returns 0, or -1 when none can go (all in flight) or out of
 * memory. */
static int sstmt_evict(struct backend *b)
{
    int v = -1;
    for (uint16_t i = 0; i < b->nsstmts; i++) {
        if (b->sstmts[i].ready && (v < 0 || b->sstmts[i].used < b->sstmts[v].used))
            v = i;
    }
    if (v < 0)
        return -1;
    char name[24];
    sstmt_name(name, sizeof(name), b->sstmts[v].name);
    size_t before = b->out.len;
    if (proto_write_Close(&b->out, 'S', name) < 0 ||
        backend_expect(b, EXP_CLOSE, true, false) < 0) {
        b->out.len = before;
        return -1;
    }
    backend_expect_last(b)->quiet = true;
    sstmt_drop(b, (uint16_t)v);
    return 0;
}

/* Backend b is about to look for a text it keeps for client c: when something that may make a
 * name stand for another object (CL_NAMES: a temporary table of the name of a table they read,
 * a table created in a schema earlier in search_path) has run since b's statements were
 * planned, in c's session or committed by any session on b's node, close them all, so that
 * the text is planned anew as one server plans every Query and every unnamed Parse.
 * (PostgreSQL plans a prepared statement anew when something it uses changes or search_path
 * does, not when a new object would take a name's place.) Returns 0, or -1 when out of
 * memory. */
static int kept_names_check(struct backend *b, const struct client *c)
{
    uint32_t node_gen =
        atomic_load_explicit(&b->px->shared->names_gen[b->node], memory_order_relaxed);
    if (b->node_names_gen == node_gen && (b->shared || b->names_gen == c->names_gen))
        return 0; /* (a shared backend serves no session with a temporary object: pinned;
                     a session's other DDL is as another session's to it) */
    while (b->nsstmts > 0) {
        uint16_t i = (uint16_t)(b->nsstmts - 1);
        if (proto_write_Close(&b->out, 'S', b->sstmts[i].label) < 0 ||
            backend_expect(b, EXP_CLOSE, true, false) < 0)
            return -1;
        backend_expect_last(b)->quiet = true;
        sstmt_drop(b, i);
    }
    b->unnamed_alias = 0;
    b->names_gen = c->names_gen;
    b->node_names_gen = node_gen;
    return 0;
}

/* Texts a backend remembers having seen once (a direct-mapped table of their hashes). */
#define SEEN_SLOTS 256

/* A text of this hash is not in b's table: whether this is the first time b sees it (then it
 * is remembered, and goes as it came: a text that never repeats, because a literal in it
 * differs every time, say, takes no place from those that do) or the second (it is kept).
 * Returns 1 the first time, 0 the second, -1 when out of memory. */
static int sstmt_seen_once(struct backend *b, uint64_t hash)
{
    if (b->seen == NULL && (b->seen = calloc(SEEN_SLOTS, sizeof(*b->seen))) == NULL)
        return -1;
    uint64_t *slot = &b->seen[hash % SEEN_SLOTS];
    if (*slot != hash) {
        *slot = hash;
        return 1;
    }
    *slot = 0;
    return 0;
}

/* Add st to the table of client c's own backend b, under a name that c's own statements do
 * not use (they live on b too), making room by closing the one used least recently. Returns
 * its index, -1 when there is no room (every entry's Parse is in flight), or -2 when out of
 * memory. */
static int sstmt_take(struct backend *b, struct client *c, const struct stmt *st)
{
    if (b->nsstmts == SHARED_STMTS_MAX && sstmt_evict(b) < 0)
        return -1;
    for (;;) {
        char name[24], key[40];
        int nlen = sstmt_name(name, sizeof(name), b->sstmt_names + 1);
        snprintf(key, sizeof(key), "prepare:%s", name);
        if (session_stmt_find(c, name, (size_t)nlen) == NULL && session_change_find(c, key) == NULL)
            break;
        b->sstmt_names++;
    }
    return sstmt_add(b, st) < 0 ? -2 : b->nsstmts - 1;
}

int backend_unnamed_parse(struct backend *b, struct client *c, struct stmt *s)
{
    if (kept_names_check(b, c) < 0)
        return -1;
    uint16_t i = sstmt_find(b, s);
    bool parse = i == b->nsstmts;
    b->unnamed_alias = 0;
    if (!parse && !b->sstmts[i].ready)
        return 0; /* its Parse is in flight and might fail: this one goes as it came */
    if (parse) {
        int once = sstmt_seen_once(b, s->hash);
        if (once != 0)
            return once < 0 ? -1 : 0;
        int k = sstmt_take(b, c, s);
        if (k < 0)
            return k == -1 ? 0 : -1;
        i = (uint16_t)k;
    }
    size_t before = b->out.len;
    int rc;
    if (parse) {
        rc = proto_write_Parse(&b->out, b->sstmts[i].label, s->query, s->query_len, s->types,
                               s->ntypes);
    } else {
        rc = backend_queue(b, stand_in_parse, sizeof(stand_in_parse));
    }
    if (rc < 0 || backend_expect(b, EXP_PARSE, false, false) < 0) {
        b->out.len = before;
        if (parse)
            sstmt_unadd(b, i);
        return -1;
    }
    struct expect *e = backend_expect_last(b);
    e->stmt = (uint32_t)s->id; /* the client's Parse: forgotten if refused */
    b->sstmts[i].used = ++b->sstmt_clock;
    if (parse) {
        e->sstmt = (uint16_t)(i + 1);
        b->px->unnamed_prepared++;
    } else {
        b->px->unnamed_reused++;
    }
    b->unnamed_alias = (uint16_t)(i + 1);
    b->unnamed_alias_stmt = s->id;
    return parse ? 1 : 2;
}

/* ---- simple queries kept prepared (prepare_simple_queries) ----
 * A simple-protocol Query is parsed, analysed and planned by the node every time, and its
 * text differs from the last one's only in its literals. Its integer literals after an
 * operator (classify_sql_literals) become parameters: "WHERE aid = 12345" is kept as
 * "WHERE aid = $1", with the parameter typed as the literal would be (int4, int8, numeric);
 * and the Query runs as Bind, Describe (portal), Execute and Sync of that statement, which the
 * node prepared once. The client sees what the Query gives: ParseComplete, BindComplete and
 * NoData are dropped, the rest is the same messages in the same order; an error about the
 * text (its Parse's) gets the position the client's text has (struct simple_map). A text
 * with bytes beyond ASCII, whose positions count characters, keeps each placeholder padded
 * to its literal's length instead ("$1   "), so that positions are the same in both texts. */

struct simple_map {
    uint16_t n;
    struct {
        uint32_t at, len; /* the placeholder: offset (0-based) and length in the kept text */
        uint32_t lit;     /* the length of the literal in the client's text */
    } p[CLASSIFY_MAX_LITERALS];
};

/* The client's position of 1-based position `pos` in a kept text whose placeholders `map`
 * lists (a position inside a placeholder is its literal's first character). */
static unsigned long simple_map_position(const struct simple_map *map, unsigned long pos)
{
    long shift = 0;
    unsigned long q = pos - 1;
    for (uint16_t k = 0; k < map->n; k++) {
        if (q < map->p[k].at)
            break;
        if (q < map->p[k].at + map->p[k].len) {
            q = map->p[k].at;
            break;
        }
        shift += (long)map->p[k].len - (long)map->p[k].lit;
    }
    return (unsigned long)((long)q - shift) + 1;
}

/* m is an ErrorResponse of b's node: when it answers the Parse of a kept simple query's text
 * and gives a position, point m at the same error with the position in the client's text
 * (in px->simple_error, valid until the next such error). */
static void simple_error_position(struct backend *b, struct proto_msg *m)
{
    const struct expect *head = backend_head(b);
    if (head == NULL || !head->simple || head->kind != EXP_PARSE || head->sstmt == 0 ||
        head->sstmt > b->nsstmts || b->sstmts[head->sstmt - 1].map == NULL)
        return;
    const char *p = proto_error_field(m->body, m->len, 'P');
    if (p == NULL)
        return;
    char *end;
    unsigned long pos = strtoul(p, &end, 10);
    if (end == p || *end != 0 || pos == 0)
        return;
    struct buf *out = &b->px->simple_error;
    buf_reset(out);
    pos = simple_map_position(b->sstmts[head->sstmt - 1].map, pos);
    if (proto_write_error_position(out, BE_ERROR, m->body, m->len, pos) < 0)
        return; /* (as it came) */
    m->body = out->data + 5;
    m->len = (uint32_t)(out->len - 5);
    m->total = out->len;
}

/* The type PostgreSQL gives an integer literal of these digits: int4 when it fits, else int8,
 * else numeric. */
static uint32_t literal_type(const char *d, size_t n)
{
    while (n > 1 && *d == '0')
        d++, n--;
    if (n < 10 || (n == 10 && memcmp(d, "2147483647", 10) <= 0))
        return 23; /* int4 */
    if (n < 19 || (n == 19 && memcmp(d, "9223372036854775807", 19) <= 0))
        return 20; /* int8 */
    return 1700;   /* numeric */
}

/* Whether the n bytes at p are all ASCII, eight at a time. */
static bool all_ascii(const char *p, size_t n)
{
    uint64_t high = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        high |= w;
    }
    for (; i < n; i++)
        high |= (unsigned char)p[i];
    return (high & 0x8080808080808080ull) == 0;
}

/* Longer texts go as they came: rarely run again, and copied and hashed for nothing. */
#define SIMPLE_TEXT_MAX 65536

/* Describe of the unnamed portal, Execute of it with no row limit, Sync. */
static const char simple_tail[] = {FE_DESCRIBE, 0, 0, 0, 6, 'P', 0,       FE_EXECUTE, 0, 0, 0,
                                   9,           0, 0, 0, 0, 0,   FE_SYNC, 0,          0, 0, 4};

int backend_simple_query(struct backend *b, struct client *c, const char *q, size_t qlen,
                         const struct classify_literals *lits, bool write)
{
    struct buf *t = &b->px->simple_text;
    uint32_t types[CLASSIFY_MAX_LITERALS];
    struct classify_span vals[CLASSIFY_MAX_LITERALS];
    struct simple_map map;
    uint16_t np = 0;
    size_t at = 0, vlen = 0;
    if (qlen > SIMPLE_TEXT_MAX)
        return 0;
    bool pad = !all_ascii(q, qlen); /* padded placeholders (see above) */
    buf_reset(t);
    /* (a placeholder is at most 3 bytes, its literal at least 1) */
    if (buf_reserve(t, qlen + 2 * CLASSIFY_MAX_LITERALS + 1) < 0)
        return -1;
    for (unsigned k = 0; k < lits->n; k++) {
        struct classify_span sp = lits->at[k];
        char ph[4] = {'$', (char)('0' + (np + 1) % 10)}; /* $1 .. $16 */
        int phlen = 2;
        if (np + 1 >= 10) {
            ph[1] = (char)('0' + (np + 1) / 10);
            ph[2] = (char)('0' + (np + 1) % 10);
            phlen = 3;
        }
        if (sp.off < at || sp.off + sp.len > qlen || (pad && (size_t)phlen > sp.len))
            continue; /* too short for its padded placeholder: it stays as written */
        memcpy(t->data + t->len, q + at, sp.off - at);
        t->len += sp.off - at;
        map.p[np].at = (uint32_t)t->len;
        map.p[np].len = (uint32_t)phlen;
        map.p[np].lit = (uint32_t)sp.len;
        memcpy(t->data + t->len, ph, (size_t)phlen);
        t->len += (size_t)phlen;
        if (pad) {
            memset(t->data + t->len, ' ', sp.len - (size_t)phlen);
            t->len += sp.len - (size_t)phlen;
        }
        at = sp.off + sp.len;
        types[np] = literal_type(q + sp.off, sp.len);
        vals[np++] = sp;
        vlen += 4 + sp.len;
    }
    map.n = np;
    if (np == 0)
        return 0;
    memcpy(t->data + t->len, q + at, qlen - at);
    t->len += qlen - at;
    t->data[t->len] = 0;

    struct stmt st = {.query = t->data, .query_len = t->len, .types = types, .ntypes = np};
    if (kept_names_check(b, c) < 0)
        return -1;
    uint16_t i = sstmt_find(b, &st);
    bool parse = i == b->nsstmts;
    if (!parse && !b->sstmts[i].ready)
        return 0; /* its Parse is in flight and might fail: this one goes as it came */
    if (parse) {
        int once = sstmt_seen_once(b, st.hash);
        if (once != 0)
            return once < 0 ? -1 : 0;
        int k = sstmt_take(b, c, &st);
        if (k < 0)
            return k == -1 ? 0 : -1;
        i = (uint16_t)k;
    }
    struct shared_stmt *e = &b->sstmts[i];
    if (parse && !pad) { /* (without it, an error's position is the kept text's) */
        e->map = malloc(sizeof(map));
        if (e->map)
            memcpy(e->map, &map, sizeof(map));
    }
    size_t before = b->out.len, nexp = b->exp_count;
    if (parse && proto_write_Parse(&b->out, e->label, st.query, st.query_len, types, np) < 0)
        goto oom;
    /* Bind: the unnamed portal, the kept statement, no format codes (all text), the values,
     * no result format codes (all text, as a Query's) */
    size_t len = 4 + 1 + e->label_len + 1 + 2 + 2 + vlen + 2;
    if (buf_reserve(&b->out, 1 + len + sizeof(simple_tail)) < 0)
        goto oom;
    char *p = b->out.data + b->out.len;
    *p++ = FE_BIND;
    proto_put_u32(p, (uint32_t)len);
    p += 4;
    *p++ = 0;
    memcpy(p, e->label, e->label_len + 1u);
    p += e->label_len + 1;
    *p++ = 0;
    *p++ = 0;
    *p++ = (char)(np >> 8);
    *p++ = (char)np;
    for (uint16_t k = 0; k < np; k++) {
        proto_put_u32(p, (uint32_t)vals[k].len);
        memcpy(p + 4, q + vals[k].off, vals[k].len);
        p += 4 + vals[k].len;
    }
    *p++ = 0;
    *p++ = 0;
    memcpy(p, simple_tail, sizeof(simple_tail));
    b->out.len += 1 + len + sizeof(simple_tail);
    /* The Parse's and the Bind's answers are swallowed (but not their errors), and name the
     * entry: a Parse's makes it ready or drops it, a refused Bind drops it */
    if ((parse && backend_expect(b, EXP_PARSE, true, false) < 0) ||
        backend_expect(b, EXP_BIND, true, false) < 0 ||
        backend_expect(b, EXP_DESCRIBE, false, false) < 0 ||
        backend_expect(b, EXP_EXECUTE, false, false) < 0 ||
        backend_expect(b, EXP_SYNC, false, write) < 0)
        goto oom;
    for (size_t k = nexp; k < b->exp_count; k++) {
        struct expect *x = &b->exp[(b->exp_head + k) % b->exp_cap];
        x->simple = true;
        if (x->kind == EXP_PARSE || x->kind == EXP_BIND)
            x->sstmt = (uint16_t)(i + 1);
        if (b->shared) { /* every answer is c's */
            x->owner = c;
            x->gen_at = c->change_gen;
        }
    }
    if (b->shared) { /* the Sync's counts as the Query's would */
        c->shared_owed++;
        b->px->multiplexed++;
    }
    b->sstmts[i].used = ++b->sstmt_clock;
    if (parse)
        b->px->simple_prepared++;
    else
        b->px->simple_reused++;
    return 1;
oom:
    unqueue(b, before, nexp, parse, i);
    return -1;
}

/* The node refused the Bind of b's kept statement i that ran client c's Query (0A000: a change
 * of its tables changed its result type; 26000: it is gone). The statement is closed and
 * forgotten; when the refused Query is the last thing b owes and ran outside a transaction
 * block, the Query itself (c->kept_batch, kept_state 3) goes to the node, its answers the
 * client's, and the error and the ReadyForQuery that end the refused run are swallowed.
 * Returns true when it runs again so. */
static bool simple_refused(struct backend *b, struct client *c, uint16_t i)
{
    if (i >= b->nsstmts)
        return false;
    char name[24];
    sstmt_name(name, sizeof(name), b->sstmts[i].name);
    sstmt_drop(b, i);
    /* The refused Bind is the head; behind it its Describe, Execute and Sync. */
    bool retry = c->kept_state == 3 && b->tx_status == 'I' && b->exp_count == 4 &&
                 b->exp[(b->exp_head + 3) % b->exp_cap].kind == EXP_SYNC && buf_avail(&b->out) == 0;
    size_t before = b->out.len;
    int rc = proto_write_Close(&b->out, 'S', name);
    if (rc == 0 && retry)
        rc = buf_append(&b->out, buf_head(&c->kept_batch), buf_avail(&c->kept_batch));
    if (rc < 0) {
        b->out.len = before;
        return false;
    }
    struct expect sync = b->exp[(b->exp_head + 3) % b->exp_cap];
    if (backend_expect(b, EXP_CLOSE, true, false) < 0)
        return false; /* (the Close goes unexpected: b fails when it is answered) */
    backend_expect_last(b)->quiet = true;
    if (!retry)
        return false;
    struct expect *last = &b->exp[(b->exp_head + 3) % b->exp_cap];
    last->swallow = true; /* the refused run's Sync: the Query's answers are the client's */
    last->write = false;
    last->retryable = false; /* (a read that may yet go to the primary: the Query now) */
    b->fwd_outstanding--;
    c->kept_state = 0;
    if (backend_expect(b, EXP_QUERY, false, sync.write) < 0) {
        backend_fail(b, "53200", "out of memory");
        return true;
    }
    backend_expect_last(b)->gen_at = sync.gen_at;
    backend_expect_last(b)->retryable = sync.retryable;
    if (b->shared) {
        backend_expect_last(b)->owner = c;
        c->shared_owed++;
    }
    log_info("client %u: node %s refused the statement kept for its query (its result type "
             "changed): ran the query as it came",
             c->id, b->px->cfg->nodes[b->node].name);
    backend_flush(b);
    return true;
}

bool backend_unnamed_cacheable(unsigned flags)
{
    /* Nor what begins or ends a transaction: the stand-in Parse is refused in a failed
     * transaction, where COMMIT and ROLLBACK are not; parsing those costs little anyway. */
    return !(flags & (CL_MULTI | CL_EMPTY | CL_BEGIN | CL_BEGIN_READ_ONLY | CL_END_TX |
                      CL_SET_SESSION | CL_SET_LOCAL | CL_SET_CONFIG | CL_SESSION_RESET |
                      CL_PREPARE | CL_EXECUTE | CL_DEALLOCATE | CL_SAVEPOINT | CL_PIN |
                      CL_UNLISTEN | CL_COPY | CL_PGSTEER_SET | CL_PGSTEER_SHOW));
}

/* The node refused the Bind of b's kept statement i that stood for client c's unnamed one of
 * id `stmt`: 26000 (it is gone) or 0A000 (a change of its tables changed its result type,
 * which a kept statement may not do; the unnamed statement, parsed anew for every query, never
 * meets it). The statement is closed and forgotten, so that the next Parse of the text prepares it
 * anew. When the refused batch is the last thing b owes, ran outside a transaction block
 * (the error ended its implicit transaction, nothing else) and c kept its messages
 * (c->kept_batch), it runs again from the text: the error and the ReadyForQuery that ends
 * the refused batch are swallowed, and the client gets the answers of the new run, as one
 * server gives them. Returns true when it runs again so. */
static bool unnamed_refused(struct backend *b, struct client *c, uint16_t i, uint32_t stmt)
{
    if (i >= b->nsstmts)
        return false;
    char name[24];
    sstmt_name(name, sizeof(name), b->sstmts[i].name);
    struct stmt *s = session_stmt_find(c, "", 0);
    sstmt_drop(b, i); /* the next Parse of the text prepares it anew */
    b->unnamed_alias = 0;
    /* The refused Bind is the head; behind it only its batch, up to its Sync, the last. */
    size_t k = 1;
    while (k < b->exp_count && is_extended(b->exp[(b->exp_head + k) % b->exp_cap].kind))
        k++;
    bool retry = s && (uint32_t)s->id == stmt && c->kept_stmt == s->id && c->kept_state == 2 &&
                 b->tx_status == 'I' && k + 1 == b->exp_count &&
                 b->exp[(b->exp_head + k) % b->exp_cap].kind == EXP_SYNC && buf_avail(&b->out) == 0;
    struct buf *out = &b->out;
    size_t before = out->len;
    int rc = proto_write_Close(out, 'S', name);
    if (rc == 0 && retry)
        rc = proto_write_Parse(out, "", s->query, s->query_len, s->types, s->ntypes);
    if (rc == 0 && retry)
        rc = buf_append(out, buf_head(&c->kept_batch), buf_avail(&c->kept_batch));
    if (rc < 0) {
        out->len = before;
        return false;
    }
    /* The expectations go behind the refused batch's Sync, which stays where it is. */
    struct expect sync = b->exp[(b->exp_head + b->exp_count - 1) % b->exp_cap];
    if (backend_expect(b, EXP_CLOSE, true, false) < 0)
        return false; /* (the Close goes unexpected: b fails when it is answered) */
    backend_expect_last(b)->quiet = true;
    if (!retry)
        return false;
    struct expect *last = &b->exp[(b->exp_head + b->exp_count - 2) % b->exp_cap];
    last->swallow = true; /* the refused batch's Sync: the new run's answers the client */
    last->write = false;
    b->fwd_outstanding--;
    rc = backend_expect(b, EXP_PARSE, true, false);
    for (size_t off = 0; rc == 0 && off < buf_avail(&c->kept_batch);) {
        struct proto_msg m;
        (void)proto_frame(buf_head(&c->kept_batch) + off, buf_avail(&c->kept_batch) - off,
                          PROTO_MAX_MESSAGE, &m); /* framed when it came */
        off += m.total;
        enum expect_kind kind = backend_expect_kind((char)m.type);
        rc = backend_expect(b, kind, false, kind == EXP_SYNC && sync.write);
        if (rc == 0 && kind == EXP_SYNC) {
            backend_expect_last(b)->gen_at = sync.gen_at;
            backend_expect_last(b)->change = sync.change;
        }
    }
    c->kept_state = 0;
    if (rc < 0) {
        backend_fail(b, "53200", "out of memory");
        return true;
    }
    s->nodes |= 1u << b->node; /* the unnamed statement is made there now */
    log_info("client %u: node %s refused the statement kept for its unnamed one (its result "
             "type changed): ran again from its text",
             c->id, b->px->cfg->nodes[b->node].name);
    backend_flush(b);
    return true;
}

int backend_unnamed_rewrite(struct backend *b, const struct stmt *st, const struct proto_msg *m,
                            size_t name_off)
{
    if (b->unnamed_alias == 0 || st == NULL || st->id != b->unnamed_alias_stmt ||
        b->unnamed_alias > b->nsstmts || name_off >= m->len || m->body[name_off] != 0)
        return 0;
    const char *name = b->sstmts[b->unnamed_alias - 1].label;
    size_t nlen = b->sstmts[b->unnamed_alias - 1].label_len;
    size_t len = 4 + m->len + nlen;
    if (len > PROTO_MAX_MESSAGE)
        return 0;
    if (buf_reserve(&b->out, 1 + len) < 0)
        return -1;
    char *p = b->out.data + b->out.len;
    p[0] = (char)m->type;
    proto_put_u32(p + 1, (uint32_t)len);
    memcpy(p + 5, m->body, name_off);
    memcpy(p + 5 + name_off, name, nlen);
    memcpy(p + 5 + name_off + nlen, m->body + name_off, m->len - name_off);
    b->out.len += 1 + len;
    return 1;
}

void backend_stmts_clear(struct backend *b)
{
    shared_stmts_free(b);
    b->unnamed_alias = 0;
    for (size_t k = 0; k < b->exp_count; k++)
        b->exp[(b->exp_head + k) % b->exp_cap].sstmt = 0;
}

static void shared_prepare_cb(uv_prepare_t *h)
{
    struct proxy *px = h->data;
    uint32_t dirty = px->shared_dirty;
    px->shared_dirty = 0;
    uv_prepare_stop(h);
    for (; dirty; dirty &= dirty - 1) {
        struct backend *b = px->shared_be[__builtin_ctz(dirty)];
        if (b)
            backend_flush(b); /* a broken connection fails b on the next loop turn */
    }
}

void backend_shared_defer_flush(struct backend *b)
{
    struct proxy *px = b->px;
    px->shared_dirty |= 1u << b->node;
    if (!uv_is_active((uv_handle_t *)&px->shared_prepare)) {
        px->shared_prepare.data = px;
        uv_prepare_start(&px->shared_prepare, shared_prepare_cb);
    }
}

void backend_shared_resume(struct client *c)
{
    for (int i = 0; i < CONFIG_MAX_NODES; i++) {
        struct backend *b = c->px->shared_be[i];
        struct expect *head = b ? backend_head(b) : NULL;
        if (head && head->owner == c && !b->reading)
            backend_resume(b);
    }
}

void backend_shared_trim(struct proxy *px, bool all)
{
    for (int i = 0; i < CONFIG_MAX_NODES; i++) {
        struct backend *b = px->shared_be[i];
        if (b && (all || (b->exp_count == 0 && !shared_fit(b))))
            backend_close(b);
    }
}

/* One message on shared backend b. Returns 0 to go on, 1 when the head's client reads slowly
 * (b is paused; the rest stays in its buffer), -1 when b closed. */
static int shared_response(struct backend *b, const struct proto_msg *m)
{
    struct expect *head = backend_head(b);
    if (head == NULL) {
        /* Between answers: a FATAL (the node shutting down, the session terminated) or a
         * notice; anything else means the node is out of step. */
        if (m->type == BE_NOTICE || m->type == BE_PARAM_STATUS)
            return 0;
        if (m->type == BE_ERROR)
            backend_fail_with_error(b, m);
        else
            backend_fail(b, "08P01", "unexpected message from node");
        return -1;
    }
    if (head->sstmt && head->kind == EXP_PARSE &&
        (m->type == BE_PARSE_COMPLETE || m->type == BE_ERROR))
        shared_stmt_answered(b, (uint16_t)(head->sstmt - 1), m->type == BE_PARSE_COMPLETE);
    struct client *o = head->owner;
    if (o == NULL || o->state != CLIENT_READY) {
        /* Its client left: the answer goes nowhere, but the ring keeps in step with it. */
        if (m->type == BE_READY_FOR_QUERY) {
            if (is_extended(head->kind)) {
                backend_fail(b, "08P01", "protocol out of step with the node");
                return -1;
            }
            backend_pop(b);
            if (b->exp_count == 0 && !shared_fit(b)) {
                backend_close(b);
                return -1;
            }
        } else if (m->type == BE_ERROR) {
            /* The node skips the rest of the batch up to its Sync. */
            while (b->exp_count && is_extended(backend_head(b)->kind))
                backend_pop(b);
        } else if (is_extended(head->kind) && expect_done(head->kind, m->type)) {
            backend_pop(b);
        }
        return 0;
    }
    bool ready = m->type == BE_READY_FOR_QUERY;
    b->client = o;
    int rc = backend_handle_response(b, m);
    if (b->state == BACKEND_CLOSING)
        return -1;
    b->client = NULL;
    if (o->state == CLIENT_READY && (ready || buf_avail(&o->out) >= BACKEND_READ_CHUNK))
        client_flush(o);
    if (ready && b->exp_count == 0 && !shared_fit(b)) {
        backend_close(b);
        return -1;
    }
    if (rc < 0)
        return 0; /* the owner closed (its answers are dropped from now on); b goes on */
    if (!ready && o->state == CLIENT_READY && o->paused_out) {
        /* The owner's output is long: stop reading the node until it drained (every client
         * behind it on b waits too). client_write_cb resumes b. */
        backend_pause(b);
        return 1;
    }
    return 0;
}

/* b is closing: clear the worker's slot; answers still owed are lost (the caller told their
 * clients, or they are closing). */
static void shared_closed(struct backend *b)
{
    struct proxy *px = b->px;
    if (px->shared_be[b->node] == b)
        px->shared_be[b->node] = NULL;
    px->nodes[b->node].backends--;
    while (b->exp_count) {
        struct expect e = backend_pop(b);
        if (e.owner && !is_extended(e.kind))
            e.owner->shared_owed--;
    }
    b->client = NULL;
}

/* Shared backend b failed: every client with an answer owed there gets the error and a
 * ReadyForQuery, as on its own backend, and goes on (its next read goes elsewhere). */
static void shared_fail(struct backend *b, const char *sqlstate, const char *message)
{
    struct proxy *px = b->px;
    int node = b->node;
    log_warn("shared backend to node %s failed: %s", px->cfg->nodes[node].name, message);
    proxy_node_failed(px, node);
    /* Out of the worker's slot first: a client told below may route its next read at once. */
    if (px->shared_be[node] == b)
        px->shared_be[node] = NULL;
    b->client = NULL;
    bool answered = b->batch_error;         /* the head's unit had the node's error already */
    bool login = b->state != BACKEND_READY; /* (the node saw none of what is queued) */
    while (b->exp_count) {
        struct expect e = backend_pop(b);
        if (e.owner == NULL || is_extended(e.kind))
            continue; /* the client hears it once, for the Sync or Query */
        e.owner->shared_owed--;
        if (e.owner->state != CLIENT_READY) {
            answered = false;
            continue;
        }
        if (e.retryable && login && node != px->cfg->primary) {
            /* as backend_fail does for a client's own backend */
            client_retry_on_primary(e.owner, "a replica could not be reached for a read");
            continue;
        }
        if (e.retryable)
            client_retry_settled(e.owner);
        client_backend_failed(e.owner, node, sqlstate, message, true, 1, answered);
        answered = false;
    }
    backend_close(b);
}
