/* SPDX-License-Identifier: MIT */
/* Client connections: the frontend state machine (startup, authentication, statements) and
 * the routing of each unit (a Query message, or an extended batch up to Sync) to a node. The
 * session state that follows the client to every node lives in session.c. */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "log.h"
#include "protocol.h"
#include "session.h"

#define CLIENT_READ_CHUNK (64 * 1024)
#define CLIENT_READ_MIN   2048
#define CLIENT_OUT_HIGH   (4 * 1024 * 1024)
#define CLIENT_IN_HIGH    (8 * 1024 * 1024)
/* An extended batch is routed when its Sync or Flush arrives; a batch that grows past this
 * without either is sent to the primary, which can run anything, so memory stays bounded. */
#define BATCH_SCAN_LIMIT (1024 * 1024)

static void client_on_input(struct client *c);
static struct backend *client_backend(struct client *c, int node);
static void client_count_route(struct client *c, struct route rt, unsigned flags);

static void param_cache_abandon(struct client *c);
static void param_cache_unwait(struct client *c);

/* ---- classification of recent texts ---- */

/* Drivers send the same statement texts over and over (the unnamed Parse of pgJDBC, psycopg,
 * node-postgres and pgbench's extended mode carries the whole text every time), and the SQL
 * lexer is most of pgsteer's own instructions per statement. So each client keeps the last
 * few texts of its Parse messages with their classify_result; a result holds offsets only, so it is
 * valid for the same text at any address. Longer texts are classified every time. Made on first use
 * (an idle client costs nothing), freed with the client; the texts' memory is reused. */
#define CLASSIFY_CACHE_SLOTS 8
#define CLASSIFY_CACHE_MAX   2048
struct classify_cache {
    struct {
        char *text;
        size_t len, cap;
        struct classify_result r;
    } slot[CLASSIFY_CACHE_SLOTS];
    uint64_t gen;  /* the worker's cfg_gen the results were made under (write_functions) */
    unsigned next; /* the slot to replace next */
};

static void client_classify_cache_free(struct client *c)
{
    struct classify_cache *cc = c->cls_cache;
    if (cc == NULL)
        return;
    for (int i = 0; i < CLASSIFY_CACHE_SLOTS; i++)
        free(cc->slot[i].text);
    free(cc);
    c->cls_cache = NULL;
}

/* classify_sql(q, len) with the worker's write functions, from the cache when the same text
 * was classified lately. */
static void client_classify(struct client *c, const char *q, size_t len,
                            struct classify_result *out)
{
    struct proxy *px = c->px;
    struct classify_cache *cc = c->cls_cache;
    if (cc && cc->gen == px->cfg_gen) {
        for (int i = 0; i < CLASSIFY_CACHE_SLOTS; i++) {
            if (cc->slot[i].text && cc->slot[i].len == len &&
                memcmp(cc->slot[i].text, q, len) == 0) {
                *out = cc->slot[i].r;
                return;
            }
        }
    }
    classify_sql(q, len, &px->wfuncs, out);
    if (len > CLASSIFY_CACHE_MAX)
        return;
    if (cc == NULL) {
        cc = c->cls_cache = calloc(1, sizeof(*cc));
        if (cc == NULL)
            return;
        cc->gen = px->cfg_gen;
    }
    if (cc->gen != px->cfg_gen) { /* a reload: forget every result made before it */
        for (int i = 0; i < CLASSIFY_CACHE_SLOTS; i++) {
            free(cc->slot[i].text);
            cc->slot[i].text = NULL;
            cc->slot[i].cap = cc->slot[i].len = 0;
        }
        cc->gen = px->cfg_gen;
    }
    unsigned i = cc->next++ % CLASSIFY_CACHE_SLOTS;
    if (cc->slot[i].cap < len || cc->slot[i].text == NULL) {
        size_t cap = len < 64 ? 64 : len;
        char *t = realloc(cc->slot[i].text, cap);
        if (t == NULL) {
            free(cc->slot[i].text);
            cc->slot[i].text = NULL;
            cc->slot[i].cap = 0;
            return;
        }
        cc->slot[i].text = t;
        cc->slot[i].cap = cap;
    }
    memcpy(cc->slot[i].text, q, len);
    cc->slot[i].len = len;
    cc->slot[i].r = *out;
}

/* auth_query (below) */
struct auth_cached {
    char user[64];
    char secret[AUTH_LOOKUP_MAX_SECRET];
    uint64_t at_ns;
};

#define AUTH_CACHE_MAX 1024

struct auth_req {
    struct auth_lookup l;     /* first: the monitor's view */
    struct proxy *home;       /* the client's worker */
    struct client *client;    /* NULL once the client is freed (home's thread only) */
    struct proxy_call *ask;   /* runs auth_req_submit on worker 0 */
    struct proxy_call *reply; /* runs auth_req_answer on home */
};

static void client_free(struct client *c)
{
    if (c->lookup != NULL) /* answered later, to no one (auth_req_answer) */
        c->lookup->client = NULL;
    tls_conn_free(c->tls);
    buf_destroy(&c->tls_in);
    buf_destroy(&c->tls_out);
    buf_destroy(&c->in);
    buf_destroy(&c->out);
    buf_destroy(&c->writing);
    buf_destroy(&c->retry_sql);
    buf_destroy(&c->kept_batch);
    buf_destroy(&c->held_begin);
    buf_destroy(&c->retry_hold);
    buf_destroy(&c->login_batch);
    buf_destroy(&c->scratch);
    client_classify_cache_free(c);
    free(c->user);
    free(c->database);
    free(c->password);
    OPENSSL_cleanse(c->scram_client_key, sizeof(c->scram_client_key));
    for (size_t i = 0; i < 2 * c->nparams; i++)
        free(c->params[i]);
    free(c->params);
    free(c->param_key);
    free(c->scram);
    while (c->stmts) {
        struct stmt *n = c->stmts->next;
        session_stmt_free(c->stmts);
        c->stmts = n;
    }
    session_changes_free(c->changes);
    session_changes_free(c->tx_saved);
    session_savepoints_free(c);
    free(c);
}

/* See proxy.h. */
struct cancel_wait {
    struct proxy *home;      /* the worker of the cancel connection */
    struct client *client;   /* that connection, on home's thread only; NULL once closed */
    struct proxy_call *done; /* cancel_wait_done on home, made beforehand: it cannot fail */
    atomic_uint holds;       /* see cancel_wait_hold */
};

static void client_close_cb(uv_handle_t *h)
{
    client_free(h->data);
}

void client_close(struct client *c, const char *sqlstate, const char *reason)
{
    if (c->state == CLIENT_CLOSING)
        return;
    struct proxy *px = c->px;
    if (sqlstate) {
        struct buf e;
        buf_init(&e);
        if (proto_write_ErrorResponse(&e, "FATAL", sqlstate, reason) == 0)
            client_queue(c, buf_head(&e), buf_avail(&e));
        buf_destroy(&e);
        client_flush(c);
        if (c->state == CLIENT_CLOSING)
            return; /* the connection was broken: the flush (or the queue) closed c */
    }
    if (sqlstate)
        log_info("client %u closed: %s", c->id, reason);
    else
        log_debug("client %u closed: %s", c->id, reason);
    c->state = CLIENT_CLOSING;
    if (c->cancel_wait) {
        c->cancel_wait->client = NULL; /* the request goes on; its end finds c gone */
        c->cancel_wait = NULL;
    }
    if (c->shared_owed)
        backend_shared_forget(c);
    if (c->param_filler)
        param_cache_abandon(c);
    if (c->param_wait)
        param_cache_unwait(c);
    if (buf_avail(&c->held_begin))
        c->tx_node = -1; /* the BEGIN was never sent: the node is outside a transaction */
    if (c->names_node >= 0)
        proxy_names_committed(px, c->names_node); /* (its answer will not come to c) */
    for (int i = 0; i < CONFIG_MAX_NODES; i++) {
        if (c->backends[i])
            backend_release(c->backends[i]);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        px->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    px->nclients--;
    if (c->tls_phase == CTLS_UP)
        px->tls_clients--;
    atomic_fetch_sub_explicit(&px->load, 1, memory_order_relaxed);
    atomic_fetch_sub(&px->shared->clients, 1);
    uv_close((uv_handle_t *)&c->tcp, client_close_cb);
}

/* ---- output ---- */

int client_queue(struct client *c, const void *p, size_t n)
{
    if (c->state == CLIENT_CLOSING)
        return -1;
    if (buf_append(&c->out, p, n) < 0) {
        client_close(c, NULL, "out of memory");
        return -1;
    }
    return 0;
}

static void client_set_backends_paused(struct client *c, bool pause)
{
    c->paused_out = pause;
    for (int i = 0; i < CONFIG_MAX_NODES && c->state != CLIENT_CLOSING; i++) {
        struct backend *b = c->backends[i];
        if (b == NULL || b->state != BACKEND_READY)
            continue;
        if (pause)
            backend_pause(b);
        else
            backend_resume(b);
    }
    if (!pause && c->shared_owed && c->state != CLIENT_CLOSING)
        backend_shared_resume(c);
}

static void client_write_cb(uv_write_t *req, int status)
{
    struct client *c = req->data;
    c->write_pending = false;
    buf_reset(&c->writing);
    if (c->state == CLIENT_CLOSING)
        return;
    if (status < 0) {
        client_close(c, NULL, uv_strerror(status));
        return;
    }
    client_flush(c);
    if (c->paused_out && buf_avail(&c->out) < CLIENT_OUT_HIGH / 2) {
        client_set_backends_paused(c, false);
        /* Responses left in the backends' buffers while paused are handled on their next
         * read; a read is pending because we just resumed them. */
    }
}

/* client_tls: encrypt what waits in c->out into c->tls_out (nothing before the handshake is
 * done: the handshake's own bytes are there already). Returns 0, or -1 when c was closed. */
static int client_tls_seal(struct client *c)
{
    if (c->tls_phase != CTLS_UP || buf_avail(&c->out) == 0)
        return 0;
    if (tls_write(c->tls, buf_head(&c->out), buf_avail(&c->out)) < 0 ||
        tls_take_output(c->tls, &c->tls_out) < 0) {
        client_close(c, NULL, tls_error(c->tls)[0] ? tls_error(c->tls) : "out of memory");
        return -1;
    }
    buf_reset(&c->out);
    return 0;
}

void client_flush(struct client *c)
{
    if (c->state == CLIENT_CLOSING)
        return;
    if (c->write_pending) {
        /* The client is not reading as fast as its nodes answer: what waits for the write in
         * flight grows with every read from a node, so stop reading them once the two
         * together pass the mark (client_write_cb resumes them). */
        if (!c->paused_out && buf_avail(&c->out) + buf_avail(&c->writing) > CLIENT_OUT_HIGH)
            client_set_backends_paused(c, true);
        return;
    }
    /* With TLS the bytes to write are the ciphertext of what is queued. */
    struct buf *src = &c->out;
    if (c->tls_phase != CTLS_NONE) {
        if (client_tls_seal(c) < 0)
            return;
        src = &c->tls_out;
    }
    if (buf_avail(src) == 0)
        return;
    /* Most answers fit the socket buffer: write them at once, without a write request, and
     * keep only what the kernel did not take for uv_write. */
    uv_buf_t now = uv_buf_init((char *)buf_head(src), (unsigned)buf_avail(src));
    int n = uv_try_write((uv_stream_t *)&c->tcp, &now, 1);
    if (n > 0)
        buf_consume(src, (size_t)n);
    else if (n < 0 && n != UV_EAGAIN) {
        client_close(c, NULL, uv_strerror(n));
        return;
    }
    if (buf_avail(src) == 0)
        return;
    struct buf tmp = c->writing;
    c->writing = *src;
    *src = tmp;
    uv_buf_t ub = uv_buf_init((char *)buf_head(&c->writing), (unsigned)buf_avail(&c->writing));
    c->write_req.data = c;
    int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &ub, 1, client_write_cb);
    if (rc < 0) {
        client_close(c, NULL, uv_strerror(rc));
        return;
    }
    c->write_pending = true;
    if (!c->paused_out && buf_avail(&c->writing) > CLIENT_OUT_HIGH)
        client_set_backends_paused(c, true);
}

static void client_send_error(struct client *c, const char *sqlstate, const char *message)
{
    struct buf e;
    buf_init(&e);
    if (proto_write_ErrorResponse(&e, "ERROR", sqlstate, message) == 0)
        client_queue(c, buf_head(&e), buf_avail(&e));
    buf_destroy(&e);
}

static void client_send_ready(struct client *c)
{
    char z[6] = {BE_READY_FOR_QUERY, 0, 0, 0, 5, c->tx_status ? c->tx_status : 'I'};
    client_queue(c, z, sizeof(z));
}

/* ---- input ---- */

/* Drop what was read from `in` before more is added: all of it, or by compaction once it is
 * past half the buffer. */
static void client_in_tidy(struct buf *in)
{
    if (in->off > 0 && in->off == in->len)
        buf_reset(in);
    else if (in->off > in->cap / 2)
        buf_compact(in);
}

/* Make room at the end of `in` for the next read of c (read_size bytes). */
static void client_in_room(struct client *c, struct buf *in, uv_buf_t *ub)
{
    client_in_tidy(in);
    /* Read as much as the client sent last time, and more when it filled the space: an idle
     * client holds a small buffer, a busy one reads in large chunks. */
    if (c->read_size == 0)
        c->read_size = CLIENT_READ_MIN;
    if (buf_reserve(in, c->read_size) < 0) {
        *ub = uv_buf_init(NULL, 0);
        return;
    }
    *ub = uv_buf_init(in->data + in->len, (unsigned)(in->cap - in->len));
}

static void client_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *ub)
{
    (void)suggested;
    struct client *c = h->data;
    /* With TLS the socket's bytes are ciphertext, turned into c->in's plaintext after. */
    client_in_room(c, c->tls_phase != CTLS_NONE ? &c->tls_in : &c->in, ub);
}

/* client_tls: take the ciphertext just read (tls_in) through c's TLS: the handshake's next
 * step, then whatever plaintext it holds into c->in. Returns 0, or -1 when c was closed (a
 * failed handshake or a broken stream gets no error message: the client could not read one). */
static int client_tls_input(struct client *c)
{
    if (tls_feed(c->tls, buf_head(&c->tls_in), buf_avail(&c->tls_in)) < 0) {
        client_close(c, NULL, "out of memory");
        return -1;
    }
    buf_reset(&c->tls_in);
    if (c->tls_phase == CTLS_HANDSHAKE) {
        int r = tls_handshake(c->tls);
        if (tls_take_output(c->tls, &c->tls_out) < 0) {
            client_close(c, NULL, "out of memory");
            return -1;
        }
        if (r < 0) {
            c->px->tls_failures++;
            log_info("client %u: %s", c->id, tls_error(c->tls));
            client_flush(c); /* the alert that says why, if any */
            client_close(c, NULL, tls_error(c->tls));
            return -1;
        }
        if (r == 0)
            return 0;
        c->tls_phase = CTLS_UP;
        c->px->tls_clients++;
        log_debug("client %u: TLS %s%s", c->id, tls_describe(c->tls),
                  c->tls_direct ? " (direct)" : "");
        if (c->tls_direct && !tls_alpn_postgresql(c->tls)) {
            c->px->tls_failures++;
            /* Without ALPN a TLS connection straight to a port could be meant for another
             * protocol (PostgreSQL refuses it so); the error goes out over the TLS now up. */
            client_close(c, "08P01",
                         "direct TLS connection without the ALPN protocol "
                         "\"postgresql\"");
            return -1;
        }
    }
    client_in_tidy(&c->in);
    for (;;) {
        if (buf_reserve(&c->in, CLIENT_READ_MIN) < 0) {
            client_close(c, NULL, "out of memory");
            return -1;
        }
        ssize_t n = tls_read(c->tls, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n < 0) {
            client_close(c, NULL, tls_error(c->tls));
            return -1;
        }
        if (n == 0)
            return 0;
        c->in.len += (size_t)n;
    }
}

static void client_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    (void)ub;
    struct client *c = s->data;
    if (c->state == CLIENT_CLOSING)
        return;
    if (nread < 0) {
        /* A reset or a keepalive timeout: the client's host or network failed, worth a line. */
        if (nread != UV_EOF)
            log_info("client %u: connection lost: %s", c->id, uv_strerror((int)nread));
        client_close(c, NULL, nread == UV_EOF ? "client disconnected" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    proxy_note_input(c->px);
    if ((size_t)nread >= c->read_size && c->read_size < CLIENT_READ_CHUNK)
        c->read_size *= 2;
    if (c->tls_phase != CTLS_NONE) {
        c->tls_in.len += (size_t)nread;
        if (client_tls_input(c) < 0)
            return;
    } else {
        c->in.len += (size_t)nread;
    }
    client_on_input(c);
    if (c->state != CLIENT_CLOSING)
        client_flush(c);
}

static void client_read_stop(struct client *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void client_read_start(struct client *c)
{
    if (!c->reading && c->state != CLIENT_CLOSING) {
        uv_read_start((uv_stream_t *)&c->tcp, client_alloc_cb, client_read_cb);
        c->reading = true;
    }
}

/* Set up client c of worker px, its handle (a TCP one when `tcp`) open on its connection. */
static void client_start(struct proxy *px, struct client *c, bool tcp)
{
    atomic_fetch_add_explicit(&px->load, 1, memory_order_relaxed);
    if (tcp)
        proxy_tcp_tune(&c->tcp, px->cfg);
    /* Unique in the process, and the worker that owns the client is id % nworkers (a cancel
     * request may arrive on another worker). */
    c->id = ++px->next_client_id * (uint32_t)px->shared->nworkers + (uint32_t)px->worker;
    if (auth_random(&c->key, sizeof(c->key)) < 0)
        c->key = (uint32_t)uv_hrtime();
    c->tx_status = 'I';
    c->tx_node = -1;
    c->batch_node = -1;
    c->names_node = -1;
    c->cur_node = -1;
    c->copy_node = -1;
    c->read_node = -1;
    c->consistency = px->cfg->consistency;
    c->over_tcp = tcp;
    c->accepted_ms = proxy_now_ms();
    buf_init(&c->in);
    buf_init(&c->out);
    buf_init(&c->writing);
    buf_init(&c->tls_in);
    buf_init(&c->tls_out);
    buf_init(&c->retry_sql);
    buf_init(&c->kept_batch);
    buf_init(&c->held_begin);
    buf_init(&c->retry_hold);
    buf_init(&c->login_batch);
    c->login_node = -1;
    buf_init(&c->scratch);
    c->next = px->clients;
    if (px->clients)
        px->clients->prev = c;
    px->clients = c;
    px->nclients++;
    uint64_t total = atomic_fetch_add(&px->shared->clients, 1) + 1;
    if (px->shutting_down) {
        client_close(c, "57P01", "pgsteer is shutting down");
        return;
    }
    if (total > (uint64_t)px->cfg->max_client_conn) {
        client_close(c, "53300", "too many client connections");
        return;
    }
    client_read_start(c);
}

/* A new client's connection, accepted by one worker for another (client_accept). */
struct handoff {
    uv_os_fd_t fd;
    bool tcp;
};

/* Runs on worker w's thread: take the connection handed to it (arg, a struct handoff). */
static void client_adopt(struct proxy *w, void *arg)
{
    struct handoff ho = *(struct handoff *)arg;
    free(arg);
    atomic_fetch_sub_explicit(&w->load, 1, memory_order_relaxed); /* client_start counts it */
    struct client *c = w->loop_done ? NULL : calloc(1, sizeof(*c));
    if (c == NULL) {
        close(ho.fd);
        return;
    }
    c->px = w;
    if (ho.tcp)
        uv_tcp_init(w->loop, &c->tcp);
    else
        uv_pipe_init(w->loop, &c->pipe, 0);
    c->tcp.data = c;
    int rc = ho.tcp ? uv_tcp_open(&c->tcp, ho.fd) : uv_pipe_open(&c->pipe, ho.fd);
    if (rc < 0) {
        log_warn("cannot take a connection handed over by another worker: %s", uv_strerror(rc));
        close(ho.fd);
        uv_close((uv_handle_t *)&c->tcp, client_close_cb);
        return;
    }
    client_start(w, c, ho.tcp);
}

static void handoff_close_cb(uv_handle_t *h)
{
    free(h);
}

/* Accept the connection waiting on `server` and hand it to worker `to`. Returns 0 when done
 * (or when the connection was lost on the way, which is logged), -1 when nothing was accepted
 * (out of memory: the caller takes it itself). */
static int client_hand_off(struct proxy *px, uv_stream_t *server, struct proxy *to)
{
    bool tcp = server->type == UV_TCP;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } *h = malloc(sizeof(*h));
    struct handoff *ho = malloc(sizeof(*ho));
    if (h == NULL || ho == NULL) {
        free(h);
        free(ho);
        return -1;
    }
    if (tcp)
        uv_tcp_init(px->loop, &h->tcp);
    else
        uv_pipe_init(px->loop, &h->pipe, 0);
    uv_os_fd_t fd = -1;
    int rc = uv_accept(server, (uv_stream_t *)h);
    if (rc == 0)
        rc = uv_fileno((uv_handle_t *)h, &fd);
    /* The handle closes its descriptor: the other worker opens a duplicate of it. */
    if (rc == 0 && (fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
        rc = uv_translate_sys_error(errno);
    uv_close((uv_handle_t *)h, handoff_close_cb);
    if (rc == 0) {
        ho->fd = fd;
        ho->tcp = tcp;
        atomic_fetch_add_explicit(&to->load, 1, memory_order_relaxed);
        if (proxy_post(to, client_adopt, ho) == 0)
            return 0;
        atomic_fetch_sub_explicit(&to->load, 1, memory_order_relaxed);
        close(fd);
        rc = UV_ENOMEM;
    }
    free(ho);
    log_warn("a new connection was lost handing it to worker %d: %s", to->worker, uv_strerror(rc));
    return 0;
}

void client_accept(struct proxy *px, uv_stream_t *server)
{
    /* The least loaded worker, this one unless another has fewer clients. */
    struct proxy *to = px;
    unsigned least = atomic_load_explicit(&px->load, memory_order_relaxed);
    for (int i = 0; i < px->shared->nworkers && !px->shutting_down; i++) {
        struct proxy *w = px->shared->workers[i];
        unsigned l = atomic_load_explicit(&w->load, memory_order_relaxed);
        if (l < least) {
            least = l;
            to = w;
        }
    }
    if (to != px && client_hand_off(px, server, to) == 0)
        return;
    struct client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->px = px;
    bool tcp = server->type == UV_TCP;
    if (tcp)
        uv_tcp_init(px->loop, &c->tcp);
    else
        uv_pipe_init(px->loop, &c->pipe, 0);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, client_close_cb);
        return;
    }
    client_start(px, c, tcp);
}

/* ---- startup ---- */

static bool client_busy(const struct client *c);

/* A cancel for a client that no node owes anything: a unit that PAUSE holds is dropped with
 * the error of a cancelled statement (57014) and a ReadyForQuery, as a server answers a
 * statement cancelled while it waits, instead of running after RESUME. An extended batch is
 * dropped when its Sync is in; until then it stays held. Returns true when one was dropped. */
static bool client_cancel_held(struct client *c)
{
    if (c->state != CLIENT_READY || !c->stalled || !c->px->paused || c->batch_node >= 0 ||
        c->tx_node >= 0 || client_busy(c))
        return false;
    const char *p = buf_head(&c->in);
    size_t n = buf_avail(&c->in), off = 0;
    struct proto_msg m;
    if (proto_frame(p, n, PROTO_MAX_MESSAGE, &m) <= 0)
        return false;
    if (m.type == FE_QUERY || m.type == FE_FUNCTION) {
        off = m.total;
    } else if (m.type == FE_PARSE || m.type == FE_BIND || m.type == FE_DESCRIBE ||
               m.type == FE_EXECUTE || m.type == FE_CLOSE || m.type == FE_SYNC ||
               m.type == FE_FLUSH) {
        for (;;) {
            if (proto_frame(p + off, n - off, PROTO_MAX_MESSAGE, &m) <= 0)
                return false; /* its Sync has not come yet */
            off += m.total;
            if (m.type == FE_SYNC)
                break;
        }
    } else {
        return false;
    }
    buf_consume(&c->in, off);
    client_send_error(c, "57014", "canceling statement due to user request");
    client_send_ready(c);
    client_flush(c);
    return true;
}

/* On w's home: the nodes have acted on the request (or it went nowhere): close the client
 * connection, as PostgreSQL closes a cancel connection, and free w. */
static void cancel_wait_done(struct proxy *px, void *arg)
{
    (void)px;
    struct cancel_wait *w = arg;
    if (w->client != NULL)
        client_close(w->client, NULL, "cancel request done"); /* clears w->client */
    free(w);
}

void cancel_wait_hold(struct cancel_wait *w)
{
    if (w != NULL)
        atomic_fetch_add(&w->holds, 1);
}

void cancel_wait_release(struct cancel_wait *w)
{
    if (w != NULL && atomic_fetch_sub(&w->holds, 1) == 1)
        proxy_post_call(w->home, w->done);
}

/* CancelRequest: find the client by the key pgsteer gave it and cancel on every node that owes
 * it answers, with that backend's own key (backend_cancel; a backend still logging in sends it
 * once its queued statements are out), or the unit PAUSE holds (client_cancel_held); `w` (may
 * be NULL) is held until each node has acted on it. On the worker that owns the client. */
static void cancel_on_owner(struct proxy *px, uint32_t pid, uint32_t key, struct cancel_wait *w)
{
    struct client *target = NULL;
    for (struct client *c = px->clients; c; c = c->next) {
        if (c->id == pid && auth_equal(&c->key, &key, sizeof(key))) {
            target = c;
            break;
        }
    }
    if (target == NULL)
        return;
    for (int i = 0; i < CONFIG_MAX_NODES; i++) {
        struct backend *b = target->backends[i];
        if (b == NULL || b->state == BACKEND_CLOSING || b->fwd_outstanding == 0)
            continue;
        backend_cancel(b, w);
        log_info("client %u: cancel request %s node %s", target->id,
                 b->state == BACKEND_READY ? "sent to" : "held until the login to",
                 px->cfg->nodes[i].name);
    }
    for (int i = 0; i < CONFIG_MAX_NODES && target->shared_owed; i++) {
        struct backend *b = px->shared_be[i];
        int rc = b ? backend_shared_cancel(b, target, w) : 0;
        if (rc != 0)
            log_info("client %u: cancel request %s node %s", target->id,
                     rc > 0 ? "sent over the shared backend to"
                            : "not sent: another client's statement shares the backend to",
                     px->cfg->nodes[i].name);
    }
    if (client_cancel_held(target))
        log_info("client %u: cancel request dropped a statement held by PAUSE", target->id);
}

struct cancel_args {
    uint32_t pid, key;
    struct cancel_wait *wait;
};

static void cancel_call(struct proxy *px, void *arg)
{
    struct cancel_args *a = arg;
    if (!px->loop_done)
        cancel_on_owner(px, a->pid, a->key, a->wait);
    cancel_wait_release(a->wait); /* the hand-over's hold */
    free(a);
}

/* Client c sent a CancelRequest: pass it to the worker that owns the session it names, and keep
 * c open until the nodes have acted on it (struct cancel_wait); without the memory for that, c
 * closes at once. Returns 0, or -1 when c was closed. */
static int client_handle_cancel(struct client *c, uint32_t pid, uint32_t key)
{
    struct proxy *px = c->px;
    struct proxy *owner = px->shared->workers[pid % (uint32_t)px->shared->nworkers];
    struct cancel_wait *w = calloc(1, sizeof(*w));
    struct cancel_args *a = malloc(sizeof(*a));
    if (w != NULL && (w->done = proxy_call_new(cancel_wait_done, w)) == NULL) {
        free(w);
        w = NULL;
    }
    if (w != NULL) {
        w->home = px;
        w->client = c;
        atomic_init(&w->holds, 1); /* the hand-over's */
        c->cancel_wait = w;
        c->state = CLIENT_CANCELLING;
    }
    if (a == NULL) {
        cancel_wait_release(w); /* nothing handed over */
    } else {
        a->pid = pid;
        a->key = key;
        a->wait = w;
        if (owner == px) {
            cancel_call(px, a);
        } else if (proxy_post(owner, cancel_call, a) < 0) {
            free(a);
            cancel_wait_release(w);
        }
    }
    if (w == NULL) {
        client_close(c, NULL, "cancel request");
        return -1;
    }
    return 0;
}

static int client_start_auth(struct client *c);

/* Parse the StartupMessage body (after the version word). Returns 0 or -1 (closed). */
static int client_handle_startup(struct client *c, const char *p, size_t n)
{
    struct proto_reader r;
    proto_reader_init(&r, p, n);
    char **params = calloc(2 * CLIENT_MAX_PARAMS, sizeof(char *));
    struct buf key;
    buf_init(&key);
    if (params == NULL) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    c->params = params;
    for (;;) {
        size_t nlen, vlen;
        const char *name = proto_read_str(&r, &nlen);
        if (r.err) {
            client_close(c, "08P01", "invalid startup packet layout");
            buf_destroy(&key);
            return -1;
        }
        if (nlen == 0)
            break;
        const char *value = proto_read_str(&r, &vlen);
        if (r.err) {
            client_close(c, "08P01", "invalid startup packet layout");
            buf_destroy(&key);
            return -1;
        }
        if (strcmp(name, "user") == 0) {
            free(c->user);
            c->user = strndup(value, vlen);
        } else if (strcmp(name, "database") == 0) {
            free(c->database);
            c->database = strndup(value, vlen);
        } else if (strcmp(name, "replication") == 0) {
            if (strcmp(value, "false") != 0 && strcmp(value, "0") != 0 &&
                strcmp(value, "off") != 0 && strcmp(value, "no") != 0) {
                client_close(c, "08P01", "replication connections are not supported");
                buf_destroy(&key);
                return -1;
            }
        } else if (strncmp(name, "_pq_.", 5) == 0) {
            /* Protocol extensions: none supported; the client is told below. */
        } else {
            if (c->nparams == CLIENT_MAX_PARAMS) {
                client_close(c, "08P01", "too many startup parameters");
                buf_destroy(&key);
                return -1;
            }
            c->params[2 * c->nparams] = strndup(name, nlen);
            c->params[2 * c->nparams + 1] = strndup(value, vlen);
            c->nparams++;
        }
    }
    if (c->user == NULL || c->user[0] == 0) {
        client_close(c, "28000", "no PostgreSQL user name specified in startup packet");
        buf_destroy(&key);
        return -1;
    }
    if (c->database == NULL)
        c->database = strdup(c->user);
    buf_append(&key, c->user, strlen(c->user) + 1);
    buf_append(&key, c->database, strlen(c->database) + 1);
    for (size_t i = 0; i < 2 * c->nparams; i++)
        buf_append(&key, c->params[i], strlen(c->params[i]) + 1);
    c->param_key = key.data; /* ownership moves to the client */
    c->param_keylen = key.len;
    return client_start_auth(c);
}

/* client_tls: whether c may start TLS now: it is on, c came over TCP and has none yet. */
static bool client_may_start_tls(const struct client *c)
{
    return c->px->client_tls != NULL && c->over_tcp && c->tls == NULL;
}

/* client_tls: c asked for TLS (SSLRequest, nothing after it): say 'S', in plain text, and
 * take the handshake that follows. Returns 0, or -1 when c was closed. */
static int client_tls_start(struct client *c)
{
    struct tls_conn *t = tls_conn_accept(c->px->client_tls);
    if (t == NULL) {
        client_close(c, NULL, "out of memory");
        return -1;
    }
    if (client_queue(c, "S", 1) < 0) {
        tls_conn_free(t);
        return -1;
    }
    client_flush(c); /* (before c->tls_phase says that what is queued is to be encrypted) */
    if (c->state == CLIENT_CLOSING) {
        tls_conn_free(t);
        return -1;
    }
    c->tls = t;
    /* What the flush left goes out first: tls_out comes after the writing buffer. */
    if (buf_avail(&c->out)) {
        if (buf_append(&c->tls_out, buf_head(&c->out), buf_avail(&c->out)) < 0) {
            client_close(c, NULL, "out of memory");
            return -1;
        }
        buf_reset(&c->out);
    }
    c->tls_phase = CTLS_HANDSHAKE;
    return 0;
}

/* client_tls: c's first bytes (in c->in) are a TLS handshake, not a startup packet
 * (sslnegotiation=direct: no SSLRequest first, ALPN "postgresql"): take them as its start.
 * Returns 0, or -1 when c was closed. */
static int client_tls_direct(struct client *c)
{
    struct tls_conn *t = tls_conn_accept(c->px->client_tls);
    if (t == NULL || buf_append(&c->tls_in, buf_head(&c->in), buf_avail(&c->in)) < 0) {
        tls_conn_free(t);
        client_close(c, NULL, "out of memory");
        return -1;
    }
    buf_reset(&c->in);
    c->tls = t;
    c->tls_direct = true;
    c->tls_phase = CTLS_HANDSHAKE;
    return client_tls_input(c);
}

static int client_handle_startup_packet(struct client *c)
{
    /* A startup packet's first byte is the top of its length, always 0; a TLS handshake
     * record starts with 22. */
    if (client_may_start_tls(c) && buf_avail(&c->in) > 0 && (uint8_t)buf_head(&c->in)[0] == 0x16)
        return client_tls_direct(c);
    uint32_t code;
    int n = proto_frame_startup(buf_head(&c->in), buf_avail(&c->in), &code);
    if (n == 0)
        return 1; /* need more */
    if (n < 0) {
        client_close(c, "08P01", "invalid length of startup packet");
        return -1;
    }
    const char *p = buf_head(&c->in);
    if (code == PROTO_SSL_CODE || code == PROTO_GSSENC_CODE) {
        buf_consume(&c->in, (size_t)n);
        if (buf_avail(&c->in) > 0) {
            /* Bytes after an SSLRequest before our answer: a man-in-the-middle tell. */
            client_close(c, "08P01", "unexpected data after encryption request");
            return -1;
        }
        if (code == PROTO_SSL_CODE && client_may_start_tls(c))
            return client_tls_start(c);
        client_queue(c, "N", 1); /* (a second SSLRequest, inside TLS, too: as a server does) */
        return 0;
    }
    if (code == PROTO_CANCEL_CODE) {
        if (n != 16) {
            client_close(c, NULL, "cancel request of a wrong length");
            return -1;
        }
        uint32_t pid = proto_get_u32(p + 8), key = proto_get_u32(p + 12);
        buf_consume(&c->in, (size_t)n);
        if (client_handle_cancel(c, pid, key) < 0)
            return -1;
        return c->state == CLIENT_CANCELLING ? 1 : -1; /* nothing more is read from it */
    }
    if ((code >> 16) != 3) {
        client_close(c, "08P01", "unsupported frontend protocol");
        return -1;
    }
    if (c->tls == NULL && c->over_tcp && c->px->cfg->client_tls.mode >= CLIENT_TLS_REQUIRE) {
        char why[128];
        snprintf(why, sizeof(why),
                 "pgsteer accepts connections over TCP with TLS only (client_tls "
                 "mode %s)",
                 config_client_tls_mode_name(c->px->cfg->client_tls.mode));
        client_close(c, "28000", why);
        return -1;
    }
    int rc = client_handle_startup(c, p + 8, (size_t)n - 8);
    if (rc == 0)
        buf_consume(&c->in, (size_t)n);
    if (rc == 0 && (code & 0xffff) != 0) {
        /* NegotiateProtocolVersion: we speak 3.0 and no protocol options. */
        struct buf v;
        buf_init(&v);
        size_t st = proto_begin(&v, BE_NEGOTIATE_VERSION);
        proto_put_i32(&v, 0);
        proto_put_i32(&v, 0);
        if (proto_end(&v, st) == 0)
            client_queue(c, buf_head(&v), buf_avail(&v));
        buf_destroy(&v);
    }
    return rc;
}

/* ---- authentication ---- */

static void auth_cache_forget(struct proxy_shared *sh, const char *user);

static void client_auth_failed(struct client *c)
{
    if (c->secret_looked_up) /* (the password may have changed on the primary) */
        auth_cache_forget(c->px->shared, c->user);
    char msg[300];
    snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"", c->user);
    log_warn("client %u: %s", c->id, msg);
    client_close(c, "28P01", msg);
}

static int client_auth_ok(struct client *c);
static int client_auth_begin(struct client *c, const char *password);
static int client_lookup_begin(struct client *c);

/* ---- auth_query: secrets looked up on the primary ----
 *
 * A user named in neither `users` nor auth_file logs in with the secret the monitor thread
 * finds on the primary (monitor_lookup). The client's worker hands the lookup to worker 0,
 * which owns the monitor; the monitor thread answers it and hands it back to the client's
 * worker (two proxy calls made beforehand, so that neither hand-over can fail). Secrets found
 * are kept for auth_query.cache_ms in a table all workers share; one that fails a login is
 * dropped, so that a password changed on the primary is looked up again at the next one. */

/* The cached secret of `user` into out[cap]; false when none younger than max_age_ms. */
static bool auth_cache_get(struct proxy_shared *sh, const char *user, int max_age_ms, char *out,
                           size_t cap)
{
    bool hit = false;
    uint64_t now = uv_hrtime();
    pthread_mutex_lock(&sh->auth_lock);
    for (size_t i = 0; i < sh->nauth_cache; i++) {
        struct auth_cached *e = &sh->auth_cache[i];
        if (strcmp(e->user, user) != 0)
            continue;
        if (now - e->at_ns < (uint64_t)max_age_ms * 1000000u && strlen(e->secret) < cap) {
            strcpy(out, e->secret);
            hit = true;
        }
        break;
    }
    pthread_mutex_unlock(&sh->auth_lock);
    return hit;
}

static void auth_cache_put(struct proxy_shared *sh, const char *user, const char *secret)
{
    pthread_mutex_lock(&sh->auth_lock);
    struct auth_cached *e = NULL;
    for (size_t i = 0; i < sh->nauth_cache && e == NULL; i++) {
        if (strcmp(sh->auth_cache[i].user, user) == 0)
            e = &sh->auth_cache[i];
    }
    if (e == NULL && sh->auth_cache == NULL)
        sh->auth_cache = calloc(AUTH_CACHE_MAX, sizeof(*sh->auth_cache));
    if (e == NULL && sh->auth_cache != NULL) {
        if (sh->nauth_cache < AUTH_CACHE_MAX) {
            e = &sh->auth_cache[sh->nauth_cache++];
        } else { /* full: the oldest goes */
            e = &sh->auth_cache[0];
            for (size_t i = 1; i < sh->nauth_cache; i++) {
                if (sh->auth_cache[i].at_ns < e->at_ns)
                    e = &sh->auth_cache[i];
            }
        }
    }
    if (e != NULL) {
        snprintf(e->user, sizeof(e->user), "%s", user);
        snprintf(e->secret, sizeof(e->secret), "%s", secret);
        e->at_ns = uv_hrtime();
    }
    pthread_mutex_unlock(&sh->auth_lock);
}

static void auth_cache_forget(struct proxy_shared *sh, const char *user)
{
    pthread_mutex_lock(&sh->auth_lock);
    for (size_t i = 0; i < sh->nauth_cache; i++) {
        if (strcmp(sh->auth_cache[i].user, user) == 0) {
            sh->auth_cache[i] = sh->auth_cache[--sh->nauth_cache];
            OPENSSL_cleanse(&sh->auth_cache[sh->nauth_cache], sizeof(struct auth_cached));
            break;
        }
    }
    pthread_mutex_unlock(&sh->auth_lock);
}

void client_auth_cache_clear(struct proxy_shared *sh)
{
    pthread_mutex_lock(&sh->auth_lock);
    if (sh->auth_cache != NULL)
        OPENSSL_cleanse(sh->auth_cache, sh->nauth_cache * sizeof(struct auth_cached));
    sh->nauth_cache = 0;
    pthread_mutex_unlock(&sh->auth_lock);
}

static void auth_req_free(struct auth_req *req)
{
    free(req->ask);
    free(req->reply);
    OPENSSL_cleanse(req->l.secret, sizeof(req->l.secret));
    free(req);
}

/* The monitor answered (its thread, or worker 0 in monitor_free): back to the client's worker.
 * The call was made beforehand: this cannot fail. */
static void auth_req_done(struct auth_lookup *l)
{
    struct auth_req *req = (struct auth_req *)l;
    struct proxy_call *reply = req->reply;
    req->reply = NULL;
    proxy_post_call(req->home, reply);
}

/* On worker 0, which owns the monitor. */
static void auth_req_submit(struct proxy *px, void *arg)
{
    struct auth_req *req = arg;
    req->ask = NULL; /* (freed by the call that ran it) */
    if (px->loop_done || px->stopping || px->monitor == NULL) {
        req->l.status = AUTH_LOOKUP_ERROR;
        snprintf(req->l.error, sizeof(req->l.error), "pgsteer is shutting down");
        auth_req_done(&req->l);
        return;
    }
    monitor_lookup(px->monitor, &req->l);
}

/* On the client's worker: the answer. */
static void auth_req_answer(struct proxy *px, void *arg)
{
    struct auth_req *req = arg;
    struct client *c = req->client;
    if (px->loop_done || c == NULL || c->state != CLIENT_AUTH) {
        if (c != NULL)
            c->lookup = NULL;
        auth_req_free(req);
        return;
    }
    c->lookup = NULL;
    char msg[600];
    switch (req->l.status) {
    case AUTH_LOOKUP_FOUND:
        if (!scram_is_secret(req->l.secret)) {
            snprintf(msg, sizeof(msg),
                     "auth_query answered something other than a SCRAM-SHA-256 secret for user "
                     "\"%s\" (%s): pgsteer can check only SCRAM logins against it",
                     c->user, strncmp(req->l.secret, "md5", 3) == 0 ? "an MD5 hash" : "text");
            log_warn("client %u: %s", c->id, msg);
            client_close(c, "28000", msg);
            break;
        }
        auth_cache_put(px->shared, c->user, req->l.secret);
        c->secret_looked_up = true;
        if (client_auth_begin(c, req->l.secret) == 0)
            client_flush(c);
        break;
    case AUTH_LOOKUP_NONE:
        log_info("client %u: auth_query found no secret for user \"%s\"", c->id, c->user);
        client_auth_failed(c);
        break;
    case AUTH_LOOKUP_STOPPED: /* a reload replaced the monitor: ask the new one */
        req->l.status = AUTH_LOOKUP_ERROR;
        c->lookup = req;
        req->ask = proxy_call_new(auth_req_submit, req);
        req->reply = proxy_call_new(auth_req_answer, req);
        if (req->ask == NULL || req->reply == NULL) {
            c->lookup = NULL;
            client_close(c, "53200", "out of memory");
            break;
        }
        proxy_post_call(px->shared->workers[0], req->ask);
        return;
    case AUTH_LOOKUP_ERROR:
        px->auth_lookup_errors++;
        snprintf(msg, sizeof(msg), "pgsteer could not look up user \"%s\" (auth_query): %s",
                 c->user, req->l.error);
        log_warn("client %u: %s", c->id, msg);
        client_close(c, "08001", msg);
        break;
    }
    auth_req_free(req);
}

/* Look the client's secret up; the login goes on in auth_req_answer. Returns 0, or -1 when c
 * was closed. */
static int client_lookup_begin(struct client *c)
{
    struct proxy *px = c->px;
    size_t len = strlen(c->user);
    if (len == 0 || len >= sizeof(((struct auth_lookup *)0)->user)) {
        client_auth_failed(c);
        return -1;
    }
    struct auth_req *req = calloc(1, sizeof(*req));
    if (req != NULL) {
        req->ask = proxy_call_new(auth_req_submit, req);
        req->reply = proxy_call_new(auth_req_answer, req);
    }
    if (req == NULL || req->ask == NULL || req->reply == NULL) {
        if (req != NULL)
            auth_req_free(req);
        client_close(c, "53200", "out of memory");
        return -1;
    }
    memcpy(req->l.user, c->user, len + 1);
    req->l.done = auth_req_done;
    req->home = px;
    req->client = c;
    c->lookup = req;
    c->state = CLIENT_AUTH;
    px->auth_lookups++;
    proxy_post_call(px->shared->workers[0], req->ask);
    return 0;
}

static int client_start_auth(struct client *c)
{
    /* client_tls verify-full: the certificate must name the user (as PostgreSQL's
     * clientcert=verify-full), whatever the login method that follows. */
    if (c->tls != NULL && c->px->cfg->client_tls.mode == CLIENT_TLS_VERIFY_FULL) {
        char cn[256], msg[400];
        if (tls_peer_cn(c->tls, cn, sizeof(cn)) < 0 || strcmp(cn, c->user) != 0) {
            snprintf(msg, sizeof(msg),
                     "certificate validation (client_tls verify-full) failed for user \"%s\": "
                     "CN mismatch",
                     c->user);
            client_close(c, "28000", msg);
            return -1;
        }
    }
    const struct config_user *u = config_find_user(c->px->cfg, c->user);
    const struct config_auth_query *aq = &c->px->cfg->auth_query;
    if (u == NULL && aq->enabled && c->px->cfg->auth_method == AUTH_METHOD_SCRAM) {
        char secret[AUTH_LOOKUP_MAX_SECRET];
        if (aq->cache_ms > 0 &&
            auth_cache_get(c->px->shared, c->user, aq->cache_ms, secret, sizeof(secret))) {
            c->secret_looked_up = true;
            int rc = client_auth_begin(c, secret);
            OPENSSL_cleanse(secret, sizeof(secret));
            return rc;
        }
        return client_lookup_begin(c);
    }
    if (u == NULL && c->px->cfg->auth_method != AUTH_METHOD_TRUST) {
        client_auth_failed(c);
        return -1;
    }
    if (u == NULL) {
        char msg[300];
        snprintf(msg, sizeof(msg), "role \"%s\" is not configured in pgsteer", c->user);
        client_close(c, "28000", msg);
        return -1;
    }
    return client_auth_begin(c, u->password ? u->password : "");
}

/* Ask the client for its password, to be checked against `password` (a password or a SCRAM
 * secret, copied). Returns 0, or -1 when c was closed. */
static int client_auth_begin(struct client *c, const char *password)
{
    c->password = strdup(password);
    c->state = CLIENT_AUTH;
    if (c->password == NULL) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    struct buf m;
    buf_init(&m);
    int rc = 0;
    switch (c->px->cfg->auth_method) {
    case AUTH_METHOD_TRUST:
        buf_destroy(&m);
        return client_auth_ok(c);
    case AUTH_METHOD_MD5:
        auth_random(c->md5_salt, sizeof(c->md5_salt));
        rc = proto_write_AuthenticationMD5Password(&m, c->md5_salt);
        break;
    case AUTH_METHOD_SCRAM:
        c->scram = calloc(1, sizeof(*c->scram));
        if (c->scram == NULL || scram_server_start(c->scram, c->password) < 0)
            rc = -1;
        else
            rc = proto_write_AuthenticationSASL(&m);
        break;
    }
    if (rc == 0)
        rc = client_queue(c, buf_head(&m), buf_avail(&m));
    buf_destroy(&m);
    if (rc < 0) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    return 0;
}

static int client_handle_password(struct client *c, const struct proto_msg *m)
{
    if (m->type != FE_PASSWORD) {
        client_close(c, "08P01", "expected password response");
        return -1;
    }
    if (c->px->cfg->auth_method == AUTH_METHOD_MD5) {
        char expect[36];
        auth_md5_response(c->user, c->password, c->md5_salt, expect);
        if (m->len != 36 || m->body[35] != 0 || !auth_equal(m->body, expect, 35)) {
            client_auth_failed(c);
            return -1;
        }
        return client_auth_ok(c);
    }
    struct scram_server *s = c->scram;
    char out[SCRAM_MAX_MSG];
    struct buf reply;
    buf_init(&reply);
    int rc;
    if (s->state == 0) {
        struct proto_reader r;
        proto_reader_init(&r, m->body, m->len);
        size_t mlen;
        const char *mech = proto_read_str(&r, &mlen);
        int32_t dlen = proto_read_i32(&r);
        const char *data = dlen >= 0 ? proto_read_bytes(&r, (size_t)dlen) : NULL;
        if (r.err || data == NULL || strcmp(mech, "SCRAM-SHA-256") != 0) {
            client_close(c, "08P01", "malformed SASLInitialResponse or unsupported mechanism");
            return -1;
        }
        int n = scram_server_first(s, data, (size_t)dlen, out, sizeof(out));
        if (n < 0) {
            client_close(c, "08P01", "malformed SCRAM message");
            return -1;
        }
        rc = proto_write_AuthenticationSASLContinue(&reply, out, (size_t)n);
    } else {
        int n = scram_server_final_key(s, m->body, m->len, out, sizeof(out), c->scram_client_key);
        if (n == -2) {
            client_auth_failed(c);
            return -1;
        }
        c->has_client_key = n >= 0 && scram_is_secret(c->password);
        if (n < 0) {
            client_close(c, "08P01", "malformed SCRAM message");
            return -1;
        }
        rc = proto_write_AuthenticationSASLFinal(&reply, out, (size_t)n);
        if (rc == 0) {
            client_queue(c, buf_head(&reply), buf_avail(&reply));
            buf_destroy(&reply);
            return client_auth_ok(c);
        }
    }
    if (rc == 0)
        client_queue(c, buf_head(&reply), buf_avail(&reply));
    buf_destroy(&reply);
    return rc;
}

static struct param_cache *param_cache_find(struct proxy *px, const struct client *c)
{
    for (struct param_cache *pc = px->params; pc; pc = pc->next) {
        if (pc->keylen == c->param_keylen && memcmp(pc->key, c->param_key, pc->keylen) == 0)
            return pc;
    }
    return NULL;
}

static void client_send_welcome(struct client *c, const char *params, size_t len)
{
    struct buf m;
    buf_init(&m);
    proto_write_AuthenticationOk(&m);
    buf_append(&m, params, len);
    proto_write_BackendKeyData(&m, c->id, c->key);
    proto_write_ReadyForQuery(&m, 'I');
    client_queue(c, buf_head(&m), buf_avail(&m));
    buf_destroy(&m);
    c->state = CLIENT_READY;
    log_debug("client %u: user %s database %s ready", c->id, c->user, c->database);
}

static void param_cache_remove(struct proxy *px, struct param_cache *pc)
{
    for (struct param_cache **pp = &px->params; *pp; pp = &(*pp)->next) {
        if (*pp == pc) {
            *pp = pc->next;
            break;
        }
    }
    free(pc->key);
    free(pc->msgs);
    free(pc);
}

/* The client filling a pending cache entry went away before its backend was ready: hand the
 * job to the first waiting client, or drop the entry when nobody waits. */
static void param_cache_abandon(struct client *c)
{
    struct param_cache *pc = c->param_filler;
    c->param_filler = NULL;
    struct client *w = pc->waiters;
    if (w == NULL) {
        param_cache_remove(c->px, pc);
        return;
    }
    pc->waiters = w->param_next;
    w->param_next = NULL;
    w->param_wait = NULL;
    w->param_filler = pc;
    if (backend_open(w, w->px->cfg->primary) == NULL)
        client_close(w, "53200", "out of memory");
}

static void param_cache_unwait(struct client *c)
{
    struct param_cache *pc = c->param_wait;
    c->param_wait = NULL;
    for (struct client **pp = &pc->waiters; *pp; pp = &(*pp)->param_next) {
        if (*pp == c) {
            *pp = c->param_next;
            break;
        }
    }
    c->param_next = NULL;
}

static int client_auth_ok(struct client *c)
{
    free(c->scram);
    c->scram = NULL;
    struct proxy *px = c->px;
    struct param_cache *pc = param_cache_find(px, c);
    if (pc && !pc->pending) {
        client_send_welcome(c, pc->msgs, pc->msgslen);
        return 0;
    }
    c->state = CLIENT_CONNECTING;
    if (pc) {
        /* Another client is fetching these parameters from the primary: wait for it, rather
         * than open one more primary connection per client in a burst of first logins. */
        c->param_wait = pc;
        c->param_next = pc->waiters;
        pc->waiters = c;
        return 0;
    }
    /* First client with these parameters: log in to the primary now, so that the parameters
     * the client sees are the node's, and errors such as a missing database surface at once.
     * The entry is pending until then. */
    pc = calloc(1, sizeof(*pc));
    if (pc == NULL || (pc->key = malloc(c->param_keylen)) == NULL) {
        free(pc);
        client_close(c, "53200", "out of memory");
        return -1;
    }
    memcpy(pc->key, c->param_key, c->param_keylen);
    pc->keylen = c->param_keylen;
    pc->pending = true;
    pc->next = px->params;
    px->params = pc;
    c->param_filler = pc;
    if (backend_open(c, px->cfg->primary) == NULL) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    return 0;
}

void client_backend_ready(struct client *c, struct backend *b)
{
    if (c->login_node == b->node) {
        /* In: the kept batches are the node's now. */
        c->login_node = -1;
        c->login_units = 0;
        buf_reset(&c->login_batch);
    }
    if (c->state != CLIENT_CONNECTING)
        return;
    struct param_cache *pc = c->param_filler;
    c->param_filler = NULL;
    b->set_gen = c->change_gen;
    const char *msgs = buf_head(&b->startup_params);
    size_t len = buf_avail(&b->startup_params);
    if (pc && (pc->msgs = malloc(len + 1)) != NULL) {
        memcpy(pc->msgs, msgs, len);
        pc->msgslen = len;
        pc->pending = false;
    } else if (pc) {
        param_cache_remove(c->px, pc); /* out of memory: the next client tries again */
        pc = NULL;
    }
    client_send_welcome(c, msgs, len);
    client_process(c);
    /* Those who waited for the same parameters get them now. */
    while (pc && pc->waiters) {
        struct client *w = pc->waiters;
        pc->waiters = w->param_next;
        w->param_next = NULL;
        w->param_wait = NULL;
        client_send_welcome(w, pc->msgs, pc->msgslen);
        client_process(w);
        client_flush(w);
    }
}

/* set_config(name, value, false) changes the session like SET, but its name and value may be
 * parameters. It is replayed as it was sent, keyed by its text (the common case calls one text
 * with changing values); at most SET_CONFIG_MAX distinct texts are kept, the oldest dropped. */

/* ---- routing ---- */

static int64_t hr_ms(void)
{
    return (int64_t)(uv_hrtime() / 1000000);
}

static bool client_busy_elsewhere(const struct client *c, int node)
{
    if (c->shared_owed)
        return true; /* a shared backend owes it an answer (multiplex_reads) */
    uint32_t other = node >= 0 ? ~(1u << node) : ~0u; /* node -1: any backend counts */
    for (uint32_t m = c->backend_mask & other; m; m &= m - 1) {
        if (c->backends[__builtin_ctz(m)]->fwd_outstanding > 0)
            return true;
    }
    return false;
}

static bool client_busy(const struct client *c)
{
    return client_busy_elsewhere(c, -1);
}

void client_retry_settled(struct client *c)
{
    if (buf_avail(&c->retry_hold))
        client_queue(c, buf_head(&c->retry_hold), buf_avail(&c->retry_hold));
    buf_reset(&c->retry_hold);
    buf_reset(&c->retry_sql);
    c->retry_inflight = false;
}

void client_retry_on_primary(struct client *c, const char *why)
{
    struct proxy *px = c->px;
    int p = px->cfg->primary;
    c->retry_inflight = false;
    buf_reset(&c->retry_hold);
    px->read_retries++;
    log_info("client %u: %s; retrying it on the primary", c->id, why);
    struct backend *b = client_backend(c, p);
    if (b == NULL)
        return;
    struct route rt = {p, ROUTE_WRITE};
    client_count_route(c, rt, CL_WRITE);
    if (session_sync_backend(c, b) < 0 ||
        backend_queue(b, buf_head(&c->retry_sql), buf_avail(&c->retry_sql)) < 0 ||
        backend_expect(b, EXP_QUERY, false, true) < 0) {
        client_close(c, "53200", "out of memory");
        return;
    }
    buf_reset(&c->retry_sql);
    c->cur_node = p;
    backend_flush(b);
}

void client_retry_batch(struct client *c, int node, const char *why)
{
    struct buf *in = &c->in;
    size_t n = buf_avail(&c->login_batch);
    c->login_node = -1;
    c->login_units = 0;
    c->px->read_retries++;
    log_info("client %u: %s; routing it again", c->id, why);
    if (c->batch_node == node) {
        c->batch_node = -1;
        c->batch_failed = false;
    }
    if (c->cur_node == node)
        c->cur_node = -1;
    /* The batch goes back in front of what the client sent after it. */
    if (in->off >= n) {
        in->off -= n;
    } else if (buf_reserve(in, n) == 0) {
        memmove(in->data + in->off + n, in->data + in->off, in->len - in->off);
        in->len += n;
    } else {
        client_close(c, "53200", "out of memory");
        return;
    }
    memcpy(in->data + in->off, buf_head(&c->login_batch), n);
    buf_reset(&c->login_batch);
    c->stalled = false;
    client_process(c);
    client_flush(c);
}

/* Read-your-writes: once a monitor round sampled the primary after the session's last write
 * finished, that round's primary LSN bounds the write's commit LSN. */
static void client_bound_write(struct client *c)
{
    const struct monitor_snapshot *snap = c->px->snap;
    if (c->write_done_ns == 0 || snap == NULL || snap->primary_lsn == LSN_INVALID)
        return;
    if ((uint64_t)snap->primary_sampled_ns > c->write_done_ns) {
        if (snap->primary_lsn > c->rw_lsn)
            c->rw_lsn = snap->primary_lsn;
        c->write_done_ns = 0;
    }
}

static struct route client_route(struct client *c, unsigned flags)
{
    struct proxy *px = c->px;
    const struct config *cfg = px->cfg;
    struct router_node nodes[CONFIG_MAX_NODES];
    int64_t now = hr_ms();
    for (size_t i = 0; i < cfg->nnodes; i++) {
        const struct monitor_snapshot *snap = px->snap;
        nodes[i].is_primary = (int)i == cfg->primary;
        nodes[i].weight = cfg->nodes[i].weight;
        nodes[i].eligible = cfg->nodes[i].role == NODE_REPLICA &&
                            px->nodes[i].failed_until_ms <= now &&
                            (snap == NULL || snap->nodes[i].eligible);
        nodes[i].replay_lsn = snap ? snap->nodes[i].replay_lsn : LSN_INVALID;
    }
    client_bound_write(c);
    if (c->read_epoch != px->eligible_epoch) {
        c->read_epoch = px->eligible_epoch;
        c->read_node = -1; /* a replica joined: pick again, so load spreads back over it */
    }
    struct router_session s = {
        .tx_node = c->tx_node,
        .pinned = c->pinned,
        .consistency = c->consistency,
        .min_lsn = c->min_lsn > c->rw_lsn ? c->min_lsn : c->rw_lsn,
        .write_unbounded = c->write_done_ns != 0,
        .preferred = cfg->read_balance == READ_BALANCE_SESSION ? c->read_node : -1,
    };
    if (c->consistency == CONSISTENCY_EVENTUAL) {
        s.min_lsn = c->min_lsn;
        s.write_unbounded = false;
    }
    struct router_input in = {
        .flags = flags,
        .nodes = nodes,
        .nnodes = cfg->nnodes,
        .primary = cfg->primary,
        .fallback = cfg->fallback,
    };
    struct route rt = router_route(&px->router, &s, &in);
    if (rt.reason == ROUTE_READ && rt.node != s.preferred &&
        cfg->read_balance == READ_BALANCE_SESSION && px->shared->nworkers > 1) {
        /* A session picks its replica: from the process-wide rotation, not this worker's. */
        pthread_mutex_lock(&px->shared->pick_lock);
        rt = router_route(&px->shared->pick_router, &s, &in);
        pthread_mutex_unlock(&px->shared->pick_lock);
    }
    if (rt.reason == ROUTE_READ)
        c->read_node = rt.node;
    return rt;
}

static void client_count_route(struct client *c, struct route rt, unsigned flags)
{
    struct proxy *px = c->px;
    log_debug("client %u: %s to %s (%s)", c->id, classify_describe(flags),
              px->cfg->nodes[rt.node].name, router_reason_name(rt.reason));
    px->route_reasons[rt.reason]++;
    if (rt.reason == ROUTE_READ)
        px->nodes[rt.node].reads++;
    else
        px->nodes[rt.node].writes++;
    c->last_route = rt;
}

/* The backend for `node`, opened on first use. NULL when out of memory (client closed). */
static struct backend *client_backend(struct client *c, int node)
{
    struct backend *b = c->backends[node];
    if (b && b->diverged && !c->pinned && b->exp_count == 0 && b->tx_status == 'I' &&
        c->tx_node != node && c->batch_node != node && c->copy_node != node) {
        /* A replay of the session's changes failed there: its session is not the client's.
         * Idle now, it gives way to a backend brought to the session's state from the start. */
        log_info("client %u: closing its backend to node %s, whose session state is not the "
                 "client's",
                 c->id, c->px->cfg->nodes[node].name);
        backend_close(b);
        b = NULL;
    }
    if (b)
        return b;
    b = backend_pool_take(c, node);
    if (b)
        return b;
    b = backend_open(c, node);
    if (b == NULL) {
        client_close(c, "53200", "out of memory");
        return NULL;
    }
    /* A new backend starts from the startup parameters; bring it to the session's state. */
    b->set_gen = 0;
    return b;
}

/* Whether a unit's completion makes the session's next reads wait for replicas to catch up
 * (read-your-writes). Outside a transaction: a unit classified as writing. A transaction on the
 * primary counts as a write when it commits, unless it was opened read only: a function with
 * hidden side effects inside it cannot be told from a read. A rollback commits nothing. */
static bool unit_writes(struct client *c, struct route rt, unsigned flags)
{
    if (rt.node != c->px->cfg->primary)
        return false;
    bool writes = (flags & (CL_WRITE | CL_WRITE_FUNCTION | CL_PIN)) != 0;
    if (flags & CL_BEGIN_READ_ONLY)
        c->tx_read_only = true;
    else if (flags & CL_BEGIN)
        c->tx_read_only = false;
    bool in_tx = rt.reason == ROUTE_TRANSACTION || (flags & (CL_BEGIN | CL_BEGIN_READ_ONLY));
    if (!in_tx || !(flags & CL_END_TX))
        return writes;
    if (flags & (CL_BEGIN | CL_BEGIN_READ_ONLY)) {
        /* The whole transaction is in this unit: its statements are known, as for a single
         * statement outside a transaction. */
        c->tx_read_only = false;
        return writes && !(flags & CL_ROLLBACK);
    }
    writes = !(flags & CL_ROLLBACK) && !c->tx_read_only;
    c->tx_read_only = false;
    return writes;
}

static void client_predict_tx(struct client *c, unsigned flags, int node)
{
    if (flags & (CL_BEGIN | CL_BEGIN_READ_ONLY))
        c->tx_node = node;
    if (flags & CL_END_TX)
        c->tx_node = -1;
}

/* A BEGIN that opens a read-only transaction (the session's default_transaction_read_only is
 * on, or SET TRANSACTION READ ONLY follows in the same unit) is a BEGIN READ ONLY: it may run on
 * a replica. An explicit READ WRITE keeps it a BEGIN. */
static unsigned client_unit_flags(const struct client *c, unsigned flags)
{
    if ((flags & CL_BEGIN) && !(flags & CL_TX_READ_WRITE) &&
        (c->default_read_only || (flags & CL_TX_READ_ONLY)))
        flags = (flags & ~CL_BEGIN) | CL_BEGIN_READ_ONLY;
    return flags;
}

/* ---- answers pgsteer gives itself ---- */

static void client_answer_row(struct client *c, const char *column, const char *value)
{
    struct buf m;
    buf_init(&m);
    proto_write_RowDescription1(&m, column);
    proto_write_DataRow1(&m, value);
    proto_write_CommandComplete(&m, "SHOW");
    client_queue(c, buf_head(&m), buf_avail(&m));
    buf_destroy(&m);
    client_send_ready(c);
}

static void client_answer_tag(struct client *c, const char *tag)
{
    struct buf m;
    buf_init(&m);
    proto_write_CommandComplete(&m, tag);
    client_queue(c, buf_head(&m), buf_avail(&m));
    buf_destroy(&m);
    client_send_ready(c);
}

/* The outcome of a SET, RESET or SHOW of a pgsteer.<name> setting (pgsteer_setting_eval). */
struct pgsteer_answer {
    const char *tag;      /* SET, RESET or SHOW */
    char column[64];      /* SHOW: the setting's name */
    char value[64];       /* SHOW: its value */
    const char *sqlstate; /* an error: its code, and the message */
    char message[160];
};

/* Carry out SET/RESET/SHOW pgsteer.<name> (`sql`, classified as cr): pgsteer's own session
 * settings. Returns 0 with the answer in *a (a->sqlstate set for an error the client made), or
 * 1 when SHOW pgsteer.last_write_lsn must wait for the next monitor round. */
static int pgsteer_setting_eval(struct client *c, const char *sql, const struct classify_result *cr,
                                struct pgsteer_answer *a)
{
    char name[64], value[128];
    memset(a, 0, sizeof(*a));
    session_copy_name(name, sizeof(name), sql + cr->setting.off, cr->setting.len, false);
    session_copy_name(value, sizeof(value), sql + cr->value.off, cr->value.len, false);
    snprintf(a->column, sizeof(a->column), "%s", name);
    if (cr->flags & CL_PGSTEER_SHOW) {
        a->tag = "SHOW";
        if (strcmp(name, "pgsteer.consistency") == 0) {
            static const char *const modes[] = {"session", "eventual", "strong"};
            snprintf(a->value, sizeof(a->value), "%s", modes[c->consistency]);
        } else if (strcmp(name, "pgsteer.last_write_lsn") == 0) {
            client_bound_write(c);
            if (c->write_done_ns != 0 && c->px->snap && !c->px->snap->primary_up) {
                a->sqlstate = "08006";
                snprintf(a->message, sizeof(a->message),
                         "cannot bound the last write's LSN: the primary is not answering the "
                         "monitor");
            } else if (c->write_done_ns != 0) {
                return 1; /* the write's LSN is bounded by the next monitor round */
            } else {
                lsn_format(c->rw_lsn, a->value, sizeof(a->value));
            }
        } else if (strcmp(name, "pgsteer.min_lsn") == 0) {
            lsn_format(c->min_lsn, a->value, sizeof(a->value));
        } else if (strcmp(name, "pgsteer.node") == 0) {
            snprintf(a->value, sizeof(a->value), "%s",
                     c->last_route.node >= 0 && c->cur_node >= 0
                         ? c->px->cfg->nodes[c->cur_node].name
                         : "");
        } else {
            a->sqlstate = "42704";
            snprintf(a->message, sizeof(a->message), "unrecognized configuration parameter \"%s\"",
                     name);
        }
        return 0;
    }
    /* SET / RESET */
    bool reset = cr->value.len == 0 || strcmp(value, "default") == 0;
    a->tag = reset && cr->value.len == 0 ? "RESET" : "SET";
    if (strcmp(name, "pgsteer.consistency") == 0) {
        if (reset)
            c->consistency = c->px->cfg->consistency;
        else if (strcmp(value, "session") == 0)
            c->consistency = CONSISTENCY_SESSION;
        else if (strcmp(value, "eventual") == 0)
            c->consistency = CONSISTENCY_EVENTUAL;
        else if (strcmp(value, "strong") == 0)
            c->consistency = CONSISTENCY_STRONG;
        else {
            a->sqlstate = "22023";
            snprintf(a->message, sizeof(a->message),
                     "invalid value for pgsteer.consistency: use session, eventual or strong");
        }
    } else if (strcmp(name, "pgsteer.min_lsn") == 0) {
        lsn_t l = LSN_INVALID;
        if (!reset && lsn_parse(sql + cr->value.off, cr->value.len, &l) < 0) {
            a->sqlstate = "22P02";
            snprintf(a->message, sizeof(a->message),
                     "invalid LSN for pgsteer.min_lsn (expected X/Y)");
        } else {
            c->min_lsn = l;
        }
    } else {
        a->sqlstate = "42704";
        snprintf(a->message, sizeof(a->message), "unrecognized configuration parameter \"%s\"",
                 name);
    }
    return 0;
}

/* SET/SHOW pgsteer.<name> sent as a Query. Returns 1 when the answer must wait (stalled), 0
 * when answered. */
static int client_pgsteer_setting(struct client *c, const char *sql,
                                  const struct classify_result *cr)
{
    struct pgsteer_answer a;
    if (pgsteer_setting_eval(c, sql, cr, &a) == 1) {
        c->wait_snapshot = true;
        c->stalled = true;
        return 1;
    }
    if (a.sqlstate) {
        client_send_error(c, a.sqlstate, a.message);
        client_send_ready(c);
    } else if (strcmp(a.tag, "SHOW") == 0) {
        client_answer_row(c, a.column, a.value);
    } else {
        client_answer_tag(c, a.tag);
    }
    return 0;
}

void client_on_snapshot(struct client *c)
{
    /* Bound a pending write with the first round after it, not a later one: the tightest
     * bound lets reads return to replicas soonest. */
    client_bound_write(c);
    if (c->wait_snapshot && c->state == CLIENT_READY) {
        if (c->write_done_ns == 0 || (c->px->snap && !c->px->snap->primary_up)) {
            c->wait_snapshot = false;
            c->stalled = false;
            client_process(c);
            client_flush(c);
        }
    }
}

/* ---- simple Query ---- */

/* Route and send one Query message. Returns 1 when it must wait (not consumed), 0 when
 * consumed, -1 when the client closed. */
/* multiplex_reads: whether c's next read may run on a shared backend: c has nothing of its
 * own on a node that a read could see (no session change such as SET or SQL PREPARE, no pin:
 * temporary table, LISTEN, advisory lock, holdable cursor; no transaction, unfinished batch or
 * COPY), and no answer owed on its own backends, which would otherwise race the shared one. */
static bool client_may_share(const struct client *c)
{
    return c->changes == NULL && !c->pinned && c->tx_node < 0 && c->tx_status == 'I' &&
           c->batch_node < 0 && c->copy_node < 0 && !c->retry_inflight && !client_busy(c);
}

/* prepare_simple_queries: c's Query m runs as a statement its backend keeps prepared; keep the
 * Query as it came, to run it so should the node refuse the kept one (backend.c). */
static void client_keep_query(struct client *c, const struct proto_msg *m)
{
    buf_reset(&c->kept_batch);
    c->kept_state = buf_append(&c->kept_batch, m->body - 5, m->total) == 0 ? 3 : 0;
}

/* c's read (Query m), just queued on b with nothing else owed there, may yet be retried on the
 * primary (client_retry_on_primary): keep it, and mark its answers: the Query's, or the
 * Describe, Execute and Sync of a Query run as a kept statement (`kept`). */
static void client_retryable_query(struct client *c, struct backend *b, const struct proto_msg *m,
                                   int kept)
{
    if (buf_append(&c->retry_sql, m->body - 5, m->total) < 0)
        return;
    for (int k = 0; k <= 2 * kept; k++)
        b->exp[(b->exp_head + b->exp_count - 1 - k) % b->exp_cap].retryable = true;
    c->retry_inflight = true;
}

/* Send a single-statement read (Query m) to shared backend b, routed as rt. Its answer comes
 * back through backend.c's shared_response. Returns 0, or -1 when c was closed. */
static int client_share_query(struct client *c, struct backend *b, const struct proto_msg *m,
                              struct route rt, const struct classify_literals *lits)
{
    client_count_route(c, rt, 0);
    int kept = 0; /* 1: run as a statement b keeps prepared (prepare_simple_queries) */
    if (c->px->cfg->prepare_simple_queries && lits->usable && !c->px->cfg->nodes[rt.node].pooled)
        kept = backend_simple_query(b, c, m->body, m->len - 1, lits, false);
    if (kept < 0 || (kept == 0 && (backend_queue(b, m->body - 5, m->total) < 0 ||
                                   backend_shared_expect(b, c, EXP_QUERY) < 0))) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    if (kept)
        client_keep_query(c, m);
    /* The safety net of a misclassified read (client_retry_on_primary) as on c's own backend:
     * c has nothing else owed, so nothing is held but this Query's RowDescription. */
    client_retryable_query(c, b, m, kept);
    c->cur_node = rt.node;
    backend_shared_defer_flush(b);
    return 0;
}

/* defer_begin: whether a BEGIN (classified `flags`), routed as rt, may be answered at once
 * and sent later: to the primary, with the session outside a transaction block and nothing in
 * flight, so that no answer is owed ahead of pgsteer's. The text is the caller's to check
 * (classify_plain_begin). */
static bool client_may_defer_begin(const struct client *c, unsigned flags, struct route rt)
{
    const struct config *cfg = c->px->cfg;
    const unsigned modes = CL_BEGIN | CL_BEGIN_READ_ONLY | CL_TX_READ_ONLY | CL_TX_READ_WRITE;
    return cfg->defer_begin && (flags & (CL_BEGIN | CL_BEGIN_READ_ONLY)) && !(flags & ~modes) &&
           rt.node == cfg->primary && c->tx_status == 'I' && c->tx_node < 0 && c->batch_node < 0 &&
           c->copy_node < 0 && !c->retry_inflight && !client_busy(c);
}

/* defer_begin: answer a BEGIN of text `sql` (`len` bytes; `plain` is classify_plain_begin's
 * word on it, CL_PLAIN_START for START TRANSACTION), routed as rt, at once as the node would, the
 * `pre` bytes first (the extended protocol's ParseComplete, BindComplete and NoData), and keep what
 * is to reach the node for client_release_begin, by `kind`: HELD_QUERY the Query; HELD_PARSED the
 * text parsed as the unnamed statement, bound and run; HELD_NAMED a Bind of the named statement
 * `name` (nlen bytes, no NUL) and its run. Returns 0, or -1 when c was closed. */
static int client_defer_begin(struct client *c, const char *sql, size_t len, int plain,
                              const char *name, size_t nlen, const char *pre, size_t prelen,
                              uint8_t kind, struct route rt, unsigned flags)
{
    static const char begin[] = "C\0\0\0\012BEGIN\0Z\0\0\0\005T";
    static const char start[] = "C\0\0\0\026START TRANSACTION\0Z\0\0\0\005T";
    /* an unnamed portal bound to the statement without parameters, run, and a Sync */
    static const char run[] = {0,          0, 0, 0, 0, 0, 0,          /* Bind's end */
                               FE_EXECUTE, 0, 0, 0, 9, 0, 0, 0, 0, 0, /* Execute "" */
                               FE_SYNC,    0, 0, 0, 4};
    struct buf *h = &c->held_begin;
    buf_reset(h);
    int rc = 0;
    if (kind == HELD_QUERY) {
        size_t st = proto_begin(h, FE_QUERY);
        rc |= proto_put_bytes(h, sql, len);
        rc |= proto_put_u8(h, 0);
        rc |= proto_end(h, st);
    } else {
        if (kind == HELD_PARSED)
            rc |= proto_write_Parse(h, "", sql, len, NULL, 0);
        size_t st = proto_begin(h, FE_BIND);
        rc |= proto_put_u8(h, 0); /* the unnamed portal */
        rc |= proto_put_bytes(h, name, nlen);
        rc |= proto_put_bytes(h, run, 7); /* the name's NUL, no formats, parameters, results */
        rc |= proto_end(h, st);
        rc |= proto_put_bytes(h, run + 7, sizeof(run) - 7);
    }
    if (rc < 0) {
        buf_reset(h);
        client_close(c, "53200", "out of memory");
        return -1;
    }
    c->held_begin_kind = kind;
    client_count_route(c, rt, flags);
    (void)unit_writes(c, rt, flags); /* notes whether the transaction is read only */
    client_predict_tx(c, flags, rt.node);
    c->tx_status = 'T';
    c->px->begins_deferred++;
    if (prelen && client_queue(c, pre, prelen) < 0)
        return -1;
    return (plain == CL_PLAIN_START ? client_queue(c, start, sizeof(start) - 1)
                                    : client_queue(c, begin, sizeof(begin) - 1)) < 0
               ? -1
               : 0;
}

/* defer_begin: the transaction's first unit is about to go to b (its node): the BEGIN held for
 * it goes first, its answers swallowed, in the shape the client sent it, so that b's statements
 * are what the client believes them to be. Returns 0, or -1 when out of memory. */
static int client_release_begin(struct client *c, struct backend *b)
{
    static const uint8_t query[] = {EXP_QUERY};
    static const uint8_t parsed[] = {EXP_PARSE, EXP_BIND, EXP_EXECUTE, EXP_SYNC};
    static const uint8_t named[] = {EXP_BIND, EXP_EXECUTE, EXP_SYNC};
    struct buf *h = &c->held_begin;
    if (buf_avail(h) == 0)
        return 0;
    uint8_t kind = c->held_begin_kind;
    const uint8_t *kinds = kind == HELD_QUERY ? query : kind == HELD_PARSED ? parsed : named;
    size_t nkinds = kind == HELD_QUERY    ? sizeof(query)
                    : kind == HELD_PARSED ? sizeof(parsed)
                                          : sizeof(named);
    int rc = 0;
    if (kind == HELD_NAMED) {
        /* the Bind's statement name, after its type, length and unnamed portal */
        const char *name = buf_head(h) + 6;
        rc = session_ensure_prepared(c, b, name, strlen(name));
    }
    if (rc == 0)
        rc = backend_queue(b, buf_head(h), buf_avail(h));
    for (size_t i = 0; i < nkinds && rc == 0; i++)
        rc = backend_expect(b, kinds[i], true, false);
    buf_reset(h);
    struct stmt *un = session_stmt_find(c, "", 0);
    if (kind == HELD_PARSED) {
        /* b's unnamed statement is the client's now, the BEGIN */
        b->unnamed_alias = 0;
        if (un)
            un->nodes |= 1u << b->node;
    } else if (kind == HELD_QUERY) {
        /* a Query drops the unnamed statement, the client's (c->unnamed_dropped) and b's */
        b->unnamed_alias = 0;
        if (un)
            un->nodes &= ~(1u << b->node);
    }
    return rc;
}

/* Whether a CL_NAMES statement of these flags may change a name's meaning for other sessions
 * too: not a temporary object alone (CL_PIN), which only its own session sees, so that a
 * session that makes temporary tables often does not make every backend plan anew. */
static bool names_for_all(unsigned flags)
{
    return !(flags & CL_PIN) || (flags & CL_MULTI);
}

static int client_handle_query(struct client *c, const struct proto_msg *m)
{
    struct proxy *px = c->px;
    const char *sql = m->body;
    size_t len = m->len ? m->len - 1 : 0;
    if (m->len == 0 || m->body[m->len - 1] != 0) {
        client_close(c, "08P01", "invalid Query message");
        return -1;
    }
    c->unnamed_dropped = true; /* a Query drops the unnamed statement */
    /* Not through the cache: simple-protocol texts carry their values as literals and rarely
     * repeat, so a lookup would mostly cost a miss. */
    struct classify_result cr;
    struct classify_literals lits;
    lits.usable = false;
    classify_sql_literals(sql, len, &px->wfuncs, &cr,
                          px->cfg->prepare_simple_queries ? &lits : NULL);
    unsigned flags = client_unit_flags(c, cr.flags);

    if ((flags & (CL_PGSTEER_SET | CL_PGSTEER_SHOW)) && !(flags & CL_MULTI)) {
        if (client_busy(c)) {
            c->stalled = true;
            return 1;
        }
        return client_pgsteer_setting(c, sql, &cr);
    }
    if (flags & CL_EXECUTE) {
        /* EXECUTE runs where its prepared statement's own class allows. */
        char name[128], key[160];
        session_copy_name(name, sizeof(name), sql + cr.name.off, cr.name.len, cr.name_quoted);
        snprintf(key, sizeof(key), "prepare:%s", name);
        struct session_change *ch = session_change_find(c, key);
        /* Or one made with Parse (session_before_named_sql prepares it where it runs). */
        struct stmt *s = ch ? NULL : session_stmt_find(c, name, strlen(name));
        flags |= ch ? ch->flags : s ? s->flags : CL_WRITE;
    }
    struct route rt = client_route(c, flags);
    if (rt.node < 0) {
        if (client_busy(c)) {
            c->stalled = true;
            return 1;
        }
        px->route_reasons[rt.reason]++;
        client_send_error(c, "57P03", "no replica is eligible for reads and fallback is error");
        client_send_ready(c);
        return 0;
    }
    int plain = 0; /* classify_plain_begin's, when it may be deferred */
    if ((flags & (CL_BEGIN | CL_BEGIN_READ_ONLY)) && client_may_defer_begin(c, flags, rt) &&
        len <= 256 && (plain = classify_plain_begin(sql, len)) != 0)
        return client_defer_begin(c, sql, len, plain, NULL, 0, NULL, 0, HELD_QUERY, rt, flags);
    if (client_busy_elsewhere(c, rt.node) || c->retry_inflight) {
        /* Answers must reach the client in order: wait for the other node to finish (or for
         * a read that may yet move to the primary). */
        c->stalled = true;
        return 1;
    }
    if (flags == 0 && rt.reason == ROUTE_READ && px->cfg->multiplex_reads && client_may_share(c)) {
        struct backend *sb = backend_shared_get(c, rt.node);
        if (sb)
            return client_share_query(c, sb, m, rt, &lits);
    }
    struct backend *b = client_backend(c, rt.node);
    if (b == NULL)
        return -1;
    b->unnamed_alias = 0; /* a Query drops the unnamed statement: so here too */
    if (flags & CL_NAMES) {
        c->names_gen++; /* what backends keep is planned anew after it (backend.c) */
        if (names_for_all(flags))
            c->names_node = b->node;
    }
    client_count_route(c, rt, flags);
    bool writes = unit_writes(c, rt, flags);
    if (session_sync_backend(c, b) < 0 || client_release_begin(c, b) < 0 ||
        session_before_named_sql(c, b, sql, &cr, true) < 0) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    int kept = 0; /* 1: run as a statement b keeps prepared, its answers 3 expects */
    if (px->cfg->prepare_simple_queries && lits.usable && backend_unnamed_cacheable(flags) &&
        !px->cfg->nodes[rt.node].pooled)
        kept = backend_simple_query(b, c, sql, len, &lits, writes);
    if (kept < 0 || (kept == 0 && (backend_queue(b, m->body - 5, m->total) < 0 ||
                                   backend_expect(b, EXP_QUERY, false, writes) < 0))) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    if (kept)
        client_keep_query(c, m);
    if (rt.reason == ROUTE_READ && !(flags & CL_MULTI) && b->fwd_outstanding == 1u + 2u * kept)
        client_retryable_query(c, b, m, kept);
    uint64_t gen = c->change_gen;
    session_track(c, sql, len, &cr, b);
    if (c->change_gen != gen) { /* session_track queues nothing on b: the Query's is last */
        backend_expect_last(b)->change = c->change_gen; /* undone if the Query fails */
        backend_expect_last(b)->gen_at = c->change_gen;
    }
    client_predict_tx(c, flags, rt.node);
    c->cur_node = rt.node;
    return 0;
}

/* ---- extended protocol ---- */

/* Scan the buffered extended messages up to the next Sync or Flush. Returns 1 when the unit is
 * complete (flags set; *synced the bytes up to and with its Sync when a Sync ends it, else 0),
 * 0 when more input is needed, -1 on a malformed message (closed). */
static int client_scan_batch(struct client *c, unsigned *flags, size_t *synced)
{
    *synced = 0;
    const char *p = buf_head(&c->in);
    size_t n = buf_avail(&c->in), off = 0;
    unsigned f = 0;
    /* Statements parsed in this window: a Bind of one of them runs the new text, not the
     * recorded statement of the same name (the unnamed one is replaced all the time). */
    const char *parsed[16];
    size_t parsed_len[16], nparsed = 0;
    while (off < n) {
        struct proto_msg m;
        int rc = proto_frame(p + off, n - off, PROTO_MAX_MESSAGE, &m);
        if (rc < 0) {
            client_close(c, "08P01", "invalid message length");
            return -1;
        }
        if (rc == 0)
            break;
        off += m.total;
        struct proto_reader r;
        proto_reader_init(&r, m.body, m.len);
        switch (m.type) {
        case FE_PARSE: {
            size_t nlen, qlen;
            const char *name = proto_read_str(&r, &nlen);
            const char *q = proto_read_str(&r, &qlen);
            struct classify_result cr;
            client_classify(c, q, qlen, &cr);
            f |= cr.flags;
            if (nparsed < 16) {
                parsed[nparsed] = name;
                parsed_len[nparsed++] = nlen;
            }
            break;
        }
        case FE_BIND: {
            proto_read_str(&r, NULL);
            size_t slen;
            const char *s = proto_read_str(&r, &slen);
            bool fresh = false;
            for (size_t i = 0; i < nparsed && !fresh; i++)
                fresh = parsed_len[i] == slen && memcmp(parsed[i], s, slen) == 0;
            struct stmt *st = r.err || fresh ? NULL : session_stmt_find(c, s, slen);
            if (st)
                f |= st->flags;
            break;
        }
        case FE_FUNCTION:
            f |= CL_WRITE;
            break;
        case FE_SYNC:
            *synced = off;
            *flags = f;
            return 1;
        case FE_FLUSH:
            *flags = f;
            return 1;
        case FE_DESCRIBE:
        case FE_EXECUTE:
        case FE_CLOSE:
            break;
        default:
            /* Something that is not part of a batch ends it (it is handled on its own). */
            *flags = f;
            return 1;
        }
    }
    if (off >= BATCH_SCAN_LIMIT) {
        *flags = f | CL_WRITE;
        return 1;
    }
    return 0;
}

/* Before a Bind or Describe of the client's unnamed statement goes to b: when the client has
 * none (never made, refused, dropped by a Query or closed), drop whatever b holds under that
 * name (its answer swallowed), so that b refuses it (26000) as one server does, rather than
 * run one made for another node's sake or the stand-in of cache_unnamed_statements (`un`:
 * the client's record of its unnamed statement, or NULL). Returns 1 when so (the message goes as it
 * is), 0 when the client has one, -1 when out of memory. */
static int client_unnamed_gone(struct client *c, struct backend *b, const struct stmt *un)
{
    if (!c->unnamed_dropped && un != NULL)
        return 0;
    static const char close_unnamed[] = {FE_CLOSE, 0, 0, 0, 6, 'S', 0};
    b->unnamed_alias = 0;
    if (backend_queue(b, close_unnamed, sizeof(close_unnamed)) < 0 ||
        backend_expect(b, EXP_CLOSE, true, false) < 0)
        return -1;
    backend_expect_last(b)->quiet = true;
    return 1;
}

/* The client's Parse m (at the head of its input) of its unnamed statement s made b run the
 * statement b keeps for the text: keep a copy of the rest of its batch, Binds, Describes and
 * Executes up to the Sync, to run it anew from the text should the node refuse the kept
 * statement (backend.c, unnamed_refused). Nothing is kept for a batch of anything else, or
 * one not all here yet. */
static void client_keep_batch(struct client *c, const struct proto_msg *m, const struct stmt *s)
{
    const char *p = buf_head(&c->in) + m->total;
    size_t n = buf_avail(&c->in) - m->total, off = 0;
    c->kept_state = 0;
    for (;;) {
        struct proto_msg x;
        if (proto_frame(p + off, n - off, PROTO_MAX_MESSAGE, &x) <= 0)
            return;
        off += x.total;
        if (x.type == FE_SYNC)
            break;
        if (x.type != FE_BIND && x.type != FE_DESCRIBE && x.type != FE_EXECUTE)
            return;
    }
    buf_reset(&c->kept_batch);
    if (buf_append(&c->kept_batch, p, off) < 0)
        return;
    c->kept_stmt = s->id;
    c->kept_state = 2;
}

/* Send one message of the bound batch. Returns 0 or -1 (closed). */
static int client_forward_batch_msg(struct client *c, const struct proto_msg *m)
{
    if (c->batch_failed) {
        /* The batch's node failed and the client was told; answer its Sync only. */
        if (m->type == FE_SYNC) {
            c->batch_failed = false;
            c->batch_node = -1;
            client_send_ready(c);
        }
        return 0;
    }
    struct backend *b = c->backends[c->batch_node];
    bool pooled = c->px->cfg->nodes[b->node].pooled, rewritten = false;
    bool queued = false;     /* queued on b, and expected when it needs to be, already */
    uint16_t bound_kept = 0; /* a Bind of b's kept statement bound_kept - 1 */
    uint32_t parsed = 0;     /* the statement this Parse records */
    uint64_t change = 0;     /* the session change this Execute's statement recorded */
    struct proto_reader r;
    proto_reader_init(&r, m->body, m->len);
    enum expect_kind kind = EXP_EXECUTE;
    bool expect = true;
    int rc = 0;
    switch (m->type) {
    case FE_PARSE: {
        size_t nlen, qlen;
        const char *name = proto_read_str(&r, &nlen);
        const char *q = proto_read_str(&r, &qlen);
        uint16_t ntypes = (uint16_t)proto_read_i16(&r);
        if (r.err || (size_t)ntypes * 4 > r.n - r.pos) {
            client_close(c, "08P01", "invalid Parse message");
            return -1;
        }
        kind = EXP_PARSE;
        struct classify_result cr;
        client_classify(c, q, qlen, &cr);
        if (session_in_failed_tx(c, b) && !pooled && !(cr.flags & (CL_END_TX | CL_EMPTY)) &&
            cr.savepoint != CL_SP_ROLLBACK_TO)
            break; /* in a failed transaction it fails (25P02), but for what ends the
                      failure (COMMIT, ROLLBACK, ROLLBACK TO): nothing to record */
        if (nlen > 0 && !pooled) {
            /* A name in use: PostgreSQL refuses the Parse (42P05) and keeps the statement.
             * It is made to exist here, so that this node refuses it too; the record stays.
             * A SQL-prepared one is there already (session_sync_backend). */
            if (session_stmt_find(c, name, nlen) != NULL) {
                rc = session_ensure_prepared(c, b, name, nlen);
                break;
            }
            char key[160];
            snprintf(key, sizeof(key), "prepare:%.*s", (int)(nlen < 128 ? nlen : 128), name);
            if (nlen < 128 && session_change_find(c, key) != NULL)
                break;
        }
        struct stmt *s = session_stmt_put(c, name, nlen, q, qlen, &r, ntypes, cr.flags);
        if (s == NULL) {
            client_close(c, "53200", "out of memory");
            return -1;
        }
        s->nodes = 1u << b->node;
        parsed = s->id;
        if (cr.flags & CL_PIN) {
            c->pinned = true;
            c->pin_reason = "temp table, LISTEN, advisory lock or WITH HOLD cursor";
        }
        if (cr.flags & CL_NAMES)
            c->names_gen++; /* (and at its Binds: what runs after it plans anew) */
        kind = EXP_PARSE;
        if (pooled) {
            s->nodes = 0;
            c->pooled_unnamed = s->id;
            if (nlen > 0) {
                rc = session_pooled_rewrite(c, m, 0, nlen);
                rewritten = true;
            }
        } else if (nlen == 0 && c->px->cfg->cache_unnamed_statements &&
                   backend_unnamed_cacheable(cr.flags)) {
            rc = backend_unnamed_parse(b, c, s);
            if (rc > 0) {
                /* b runs it under a name of its own: its unnamed statement is not s */
                s->nodes = 0;
                queued = true;
                if (rc == 2) /* the kept one: what follows is kept to run s anew */
                    client_keep_batch(c, m, s);
                rc = 0;
            }
        }
        break;
    }
    case FE_BIND: {
        proto_read_str(&r, NULL);
        size_t name_off = r.pos, slen;
        const char *sname = proto_read_str(&r, &slen);
        if (r.err) {
            client_close(c, "08P01", "invalid Bind message");
            return -1;
        }
        struct stmt *st = session_stmt_find(c, sname, slen); /* (found once: not changed below) */
        if (pooled) {
            rc = session_pooled_fill_slot(c, b, sname, slen);
            if (rc == 0 && slen > 0) {
                rc = session_pooled_rewrite(c, m, name_off, slen);
                rewritten = true;
            }
        } else if (slen == 0 && (rc = client_unnamed_gone(c, b, st)) != 0) {
            rc = rc < 0 ? -1 : 0; /* (sent as it is: b refuses it) */
        } else if (slen == 0 && b->unnamed_alias &&
                   (rc = backend_unnamed_rewrite(b, st, m, name_off)) != 0) {
            queued = rc == 1;
            rc = rc == 1 ? 0 : -1;
            bound_kept = b->unnamed_alias;
        } else {
            rc = session_ensure_prepared(c, b, sname, slen);
        }
        kind = EXP_BIND;
        c->batch_executed = true;
        uint64_t gen = c->change_gen;
        if (rc != 0)
            st = NULL;
        if (st && (st->flags & CL_NAMES)) {
            c->names_gen++;
            if (names_for_all(st->flags))
                c->names_node = b->node;
        }
        if (st && (st->flags & (CL_SET_SESSION | CL_SET_CONFIG | CL_SESSION_RESET)))
            session_batch_save(c, b);
        if (st && (st->flags & CL_SET_CONFIG) && !(st->flags & CL_MULTI)) {
            if (session_add_set_config_bind(c, st, m->body, m->len) < 0) {
                client_close(c, "53200", "out of memory");
                return -1;
            }
            b->set_gen = c->change_gen;
        }
        if (st && (st->flags &
                   (CL_SET_SESSION | CL_PREPARE | CL_EXECUTE | CL_DEALLOCATE | CL_SAVEPOINT))) {
            /* A SET (or SQL PREPARE) sent as Parse/Bind/Execute is a session change like
             * any other: recorded when bound, on the node it runs on. SET takes no
             * parameters, so the text alone replays it. */
            struct classify_result cr;
            classify_sql(st->query, st->query_len, &c->px->wfuncs, &cr);
            if (session_before_named_sql(c, b, st->query, &cr, false) < 0) {
                client_close(c, "53200", "out of memory");
                return -1;
            }
            session_track(c, st->query, st->query_len, &cr, b);
        }
        /* A change recorded here is undone if the statement fails: the portal's Execute
         * carries it (and an error before it, which skips the Execute, undoes it too). */
        c->bound_change = c->change_gen != gen ? c->change_gen : 0;
        break;
    }
    case FE_DESCRIBE: {
        uint8_t what = proto_read_u8(&r);
        size_t slen;
        const char *sname = proto_read_str(&r, &slen);
        if (r.err || (what != 'S' && what != 'P')) {
            client_close(c, "08P01", "invalid Describe message");
            return -1;
        }
        if (what == 'S' && pooled) {
            rc = session_pooled_fill_slot(c, b, sname, slen);
            if (rc == 0 && slen > 0) {
                rc = session_pooled_rewrite(c, m, 1, slen);
                rewritten = true;
            }
        } else if (what == 'S' && slen == 0 &&
                   (rc = client_unnamed_gone(c, b, session_stmt_find(c, "", 0))) != 0) {
            rc = rc < 0 ? -1 : 0; /* (sent as it is: b refuses it) */
        } else if (what == 'S' && slen == 0 && b->unnamed_alias &&
                   (rc = backend_unnamed_rewrite(b, session_stmt_find(c, "", 0), m, 1)) != 0) {
            queued = rc == 1;
            rc = rc == 1 ? 0 : -1;
        } else if (what == 'S') {
            rc = session_ensure_prepared(c, b, sname, slen);
        }
        kind = EXP_DESCRIBE;
        break;
    }
    case FE_CLOSE: {
        uint8_t what = proto_read_u8(&r);
        size_t slen;
        const char *sname = proto_read_str(&r, &slen);
        if (r.err || (what != 'S' && what != 'P')) {
            client_close(c, "08P01", "invalid Close message");
            return -1;
        }
        if (what == 'S' && slen > 0) {
            struct stmt *s = session_stmt_find(c, sname, slen);
            if (s) {
                session_close_elsewhere(c, b, s);
                session_stmt_remove(c, sname, slen);
            } else if (slen < 128) {
                /* The protocol closes SQL-prepared statements too. */
                char name[128];
                memcpy(name, sname, slen);
                name[slen] = 0;
                session_forget_sql_prepare(c, b, name);
            }
            if (pooled) {
                /* Nothing named exists there: closing the unnamed slot answers the same. */
                rc = session_pooled_rewrite(c, m, 1, slen);
                rewritten = true;
                c->pooled_unnamed = 0;
            }
        } else if (what == 'S') {
            /* The client's unnamed statement is gone, wherever it was made */
            c->unnamed_dropped = true;
            for (int i = 0; i < CONFIG_MAX_NODES; i++) {
                if (c->backends[i])
                    c->backends[i]->unnamed_alias = 0;
            }
        }
        kind = EXP_CLOSE;
        break;
    }
    case FE_EXECUTE:
        kind = EXP_EXECUTE;
        c->batch_executed = true;
        change = c->bound_change;
        c->bound_change = 0;
        break;
    case FE_FLUSH:
        expect = false;
        c->batch_flushed = true;
        break;
    case FE_SYNC:
        kind = EXP_SYNC;
        c->bound_change = 0;
        break;
    case FE_FUNCTION:
        kind = EXP_QUERY;
        break;
    default:
        client_close(c, "08P01", "unexpected message in extended query batch");
        return -1;
    }
    if (rc == 0 && rewritten)
        rc = backend_queue(b, buf_head(&c->scratch), buf_avail(&c->scratch));
    else if (rc == 0 && !queued)
        rc = backend_queue(b, m->body - 5, m->total);
    if (rc == 0 && expect && !(queued && kind == EXP_PARSE))
        rc = backend_expect(b, kind, false, kind == EXP_SYNC && c->batch_write);
    if (rc == 0 && parsed != 0)
        backend_expect_last(b)->stmt = parsed; /* forgotten if the Parse fails */
    if (rc == 0 && bound_kept) {
        /* refused when its result type changed: then run from the text (backend.c) */
        backend_expect_last(b)->sstmt = bound_kept;
        backend_expect_last(b)->stmt = (uint32_t)c->kept_stmt;
    }
    if (rc == 0 && change != 0)
        backend_expect_last(b)->change = change; /* undone if the Execute fails */
    if (rc < 0) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    if (m->type == FE_SYNC)
        c->batch_node = -1;
    return 0;
}

/* A batch that so far only parsed and described (then flushed, waiting for the answers) may
 * go on with a statement that needs the primary while it is bound to a replica. Parse and
 * Describe changed nothing there, so the batch moves: the replica gets a Sync of ours (its
 * answer swallowed) and the rest is routed anew; statements follow by re-prepare. Returns 0
 * (possibly moved: batch_node < 0), 1 when more input is needed, -1 when closed. */
static int client_maybe_rebind(struct client *c)
{
    unsigned flags;
    size_t synced;
    int rc = client_scan_batch(c, &flags, &synced);
    if (rc <= 0)
        return rc < 0 ? -1 : 1;
    c->batch_flushed = false;
    int primary = c->px->cfg->primary;
    unsigned needs_primary =
        CL_WRITE | CL_WRITE_FUNCTION | CL_BEGIN | CL_PIN | CL_SET_SESSION | CL_FORCE_PRIMARY;
    if (c->batch_executed || c->batch_failed || c->batch_node == primary || c->tx_node >= 0 ||
        !(flags & needs_primary))
        return 0;
    struct backend *b = c->backends[c->batch_node];
    char sync[5] = {FE_SYNC, 0, 0, 0, 4};
    if (backend_queue(b, sync, sizeof(sync)) < 0 || backend_expect(b, EXP_SYNC, true, false) < 0) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    backend_flush(b);
    c->batch_node = -1;
    return 0;
}

/* ---- pgsteer's own settings through the extended protocol ---- */

#define LOCAL_WINDOW 8 /* statements and portals a local batch may name */

/* A statement of pgsteer's own settings: SET, RESET or SHOW of pgsteer.<name>, alone. */
static bool local_text(struct client *c, const char *q, size_t qlen)
{
    struct classify_result cr;
    client_classify(c, q, qlen, &cr);
    return (cr.flags & (CL_PGSTEER_SET | CL_PGSTEER_SHOW)) && !(cr.flags & CL_MULTI);
}

/* Whether a local statement is SHOW pgsteer.last_write_lsn, whose answer may wait. */
static bool local_shows_lsn(struct client *c, const char *q, size_t qlen)
{
    struct classify_result cr;
    client_classify(c, q, qlen, &cr);
    char name[64];
    session_copy_name(name, sizeof(name), q + cr.setting.off, cr.setting.len, false);
    return (cr.flags & CL_PGSTEER_SHOW) && strcmp(name, "pgsteer.last_write_lsn") == 0;
}

struct local_name {
    const char *name;
    size_t len;
};

static bool local_name_in(const struct local_name *v, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].len == len && memcmp(v[i].name, name, len) == 0)
            return true;
    }
    return false;
}

/* Whether the extended messages buffered from the client, up to the next Sync or Flush (which
 * client_scan_batch saw arrive), all concern statements of pgsteer's own settings (prepared in
 * this batch or before, and the portals bound to them here): such a batch is answered by
 * pgsteer, as the same statements sent as a Query are, and no node sees it. Returns 1 when it
 * is (*len: its bytes, *shows_lsn: it executes SHOW pgsteer.last_write_lsn), 0 when it is not.
 * A batch naming more than LOCAL_WINDOW statements or portals is not. */
static int local_batch_scan(struct client *c, size_t *len, bool *shows_lsn)
{
    const char *p = buf_head(&c->in);
    size_t n = buf_avail(&c->in), off = 0;
    struct local_name stmts[LOCAL_WINDOW], portals[LOCAL_WINDOW];
    size_t nstmts = 0, nportals = 0;
    bool any = false;
    *shows_lsn = false;
    for (;;) {
        struct proto_msg m;
        int rc = proto_frame(p + off, n - off, PROTO_MAX_MESSAGE, &m);
        if (rc <= 0)
            return 0; /* not in the batch client_scan_batch saw; a bad frame is its to refuse */
        off += m.total;
        struct proto_reader r;
        proto_reader_init(&r, m.body, m.len);
        size_t alen, blen;
        const char *a, *b;
        switch (m.type) {
        case FE_PARSE:
            a = proto_read_str(&r, &alen);
            b = proto_read_str(&r, &blen);
            if (r.err || !local_text(c, b, blen) || nstmts == LOCAL_WINDOW)
                return 0;
            stmts[nstmts++] = (struct local_name){a, alen};
            if (local_shows_lsn(c, b, blen))
                *shows_lsn = true;
            break;
        case FE_BIND: {
            a = proto_read_str(&r, &alen);
            b = proto_read_str(&r, &blen);
            if (r.err || nportals == LOCAL_WINDOW)
                return 0;
            if (!local_name_in(stmts, nstmts, b, blen)) {
                const struct stmt *st = session_stmt_find(c, b, blen);
                if (st == NULL || !(st->flags & (CL_PGSTEER_SET | CL_PGSTEER_SHOW)) ||
                    (st->flags & CL_MULTI))
                    return 0;
                if (local_shows_lsn(c, st->query, st->query_len))
                    *shows_lsn = true;
            }
            portals[nportals++] = (struct local_name){a, alen};
            break;
        }
        case FE_DESCRIBE:
        case FE_CLOSE: {
            uint8_t what = proto_read_u8(&r);
            a = proto_read_str(&r, &alen);
            if (r.err)
                return 0;
            if (what == 'P' && !local_name_in(portals, nportals, a, alen))
                return 0;
            if (what == 'S' && !local_name_in(stmts, nstmts, a, alen)) {
                const struct stmt *st = session_stmt_find(c, a, alen);
                if (st == NULL || !(st->flags & (CL_PGSTEER_SET | CL_PGSTEER_SHOW)))
                    return 0;
            }
            if (what != 'P' && what != 'S')
                return 0;
            break;
        }
        case FE_EXECUTE:
            a = proto_read_str(&r, &alen);
            if (r.err || !local_name_in(portals, nportals, a, alen))
                return 0;
            break;
        case FE_SYNC:
        case FE_FLUSH:
            if (!any)
                return 0;
            *len = off;
            return 1;
        default:
            return 0;
        }
        any = true;
    }
}

static void local_put(struct client *c, char type, const void *body, uint32_t blen)
{
    char h[5] = {type};
    proto_put_u32(h + 1, blen + 4);
    client_queue(c, h, 5);
    if (blen)
        client_queue(c, body, blen);
}

/* Answer the local batch of `len` bytes (local_batch_scan): as a server would, message by
 * message; after an error the rest up to the Sync is skipped. Returns 0, or -1 (closed). */
static int local_batch_run(struct client *c, size_t len)
{
    const char *p = buf_head(&c->in);
    size_t off = 0;
    bool failed = false;
    /* The unnamed portal, or the last one named, and its statement's id. */
    char portal[64] = "";
    uint64_t portal_stmt = 0;
    bool portal_bound = false;
    while (off < len && c->state == CLIENT_READY) {
        struct proto_msg m;
        proto_frame(p + off, len - off, PROTO_MAX_MESSAGE, &m);
        off += m.total;
        struct proto_reader r;
        proto_reader_init(&r, m.body, m.len);
        if (failed && m.type != FE_SYNC)
            continue;
        char msg[200];
        size_t alen, blen;
        const char *a, *b;
        switch (m.type) {
        case FE_PARSE: {
            a = proto_read_str(&r, &alen);
            b = proto_read_str(&r, &blen);
            uint16_t ntypes = (uint16_t)proto_read_i16(&r);
            if (r.err || (size_t)ntypes * 4 > r.n - r.pos) {
                client_close(c, "08P01", "invalid Parse message");
                return -1;
            }
            if (alen > 0 && session_stmt_find(c, a, alen) != NULL) {
                snprintf(msg, sizeof(msg), "prepared statement \"%.*s\" already exists",
                         (int)(alen < 63 ? alen : 63), a);
                client_send_error(c, "42P05", msg);
                failed = true;
                break;
            }
            struct classify_result cr;
            client_classify(c, b, blen, &cr);
            struct stmt *st = session_stmt_put(c, a, alen, b, blen, &r, ntypes, cr.flags);
            if (st == NULL) {
                client_close(c, "53200", "out of memory");
                return -1;
            }
            st->nodes = 0; /* on no node: pgsteer answers it */
            local_put(c, BE_PARSE_COMPLETE, NULL, 0);
            break;
        }
        case FE_BIND: {
            a = proto_read_str(&r, &alen);
            b = proto_read_str(&r, &blen);
            uint16_t nformats = (uint16_t)proto_read_i16(&r);
            r.pos += (size_t)nformats * 2;
            uint16_t nparams = r.pos + 2 <= r.n ? (uint16_t)proto_read_i16(&r) : 0;
            const struct stmt *st = session_stmt_find(c, b, blen);
            if (r.err || r.pos > r.n) {
                client_close(c, "08P01", "invalid Bind message");
                return -1;
            }
            if (st == NULL) {
                snprintf(msg, sizeof(msg), "prepared statement \"%.*s\" does not exist",
                         (int)(blen < 63 ? blen : 63), b);
                client_send_error(c, "26000", msg);
                failed = true;
                break;
            }
            if (nparams != 0) {
                client_send_error(c, "42601",
                                  "SET and SHOW of pgsteer.* settings take no parameters: write "
                                  "the value into the statement");
                failed = true;
                break;
            }
            snprintf(portal, sizeof(portal), "%.*s", (int)(alen < 63 ? alen : 63), a);
            portal_stmt = st->id;
            portal_bound = true;
            local_put(c, BE_BIND_COMPLETE, NULL, 0);
            break;
        }
        case FE_DESCRIBE:
        case FE_EXECUTE: {
            uint8_t what = m.type == FE_DESCRIBE ? proto_read_u8(&r) : 'P';
            a = proto_read_str(&r, &alen);
            const struct stmt *st = NULL;
            if (what == 'S') {
                st = session_stmt_find(c, a, alen);
            } else if (portal_bound && strlen(portal) == alen && memcmp(portal, a, alen) == 0) {
                for (st = c->stmts; st && st->id != portal_stmt; st = st->next)
                    ;
            }
            if (st == NULL) {
                snprintf(msg, sizeof(msg), "%s \"%.*s\" does not exist",
                         what == 'S' ? "prepared statement" : "portal",
                         (int)(alen < 63 ? alen : 63), a);
                client_send_error(c, what == 'S' ? "26000" : "34000", msg);
                failed = true;
                break;
            }
            struct classify_result cr;
            client_classify(c, st->query, st->query_len, &cr);
            struct pgsteer_answer ans;
            struct buf out;
            buf_init(&out);
            if (m.type == FE_DESCRIBE) {
                if (what == 'S')
                    local_put(c, BE_PARAM_DESCRIPTION, "\0\0", 2);
                if (cr.flags & CL_PGSTEER_SHOW) {
                    char column[64];
                    session_copy_name(column, sizeof(column), st->query + cr.setting.off,
                                      cr.setting.len, false);
                    proto_write_RowDescription1(&out, column);
                } else {
                    local_put(c, BE_NO_DATA, NULL, 0);
                }
            } else if (pgsteer_setting_eval(c, st->query, &cr, &ans) == 0 && ans.sqlstate) {
                /* (It does not wait here: client_local_batch waited for the monitor round.) */
                client_send_error(c, ans.sqlstate, ans.message);
                failed = true;
            } else if (strcmp(ans.tag, "SHOW") == 0) {
                proto_write_DataRow1(&out, ans.value);
                proto_write_CommandComplete(&out, "SHOW");
            } else {
                proto_write_CommandComplete(&out, ans.tag);
            }
            if (buf_avail(&out))
                client_queue(c, buf_head(&out), buf_avail(&out));
            buf_destroy(&out);
            break;
        }
        case FE_CLOSE: {
            uint8_t what = proto_read_u8(&r);
            a = proto_read_str(&r, &alen);
            if (what == 'S')
                session_stmt_remove(c, a, alen);
            else if (strlen(portal) == alen && memcmp(portal, a, alen) == 0)
                portal_bound = false;
            local_put(c, BE_CLOSE_COMPLETE, NULL, 0);
            break;
        }
        case FE_SYNC:
            client_send_ready(c);
            break;
        default: /* FE_FLUSH */
            break;
        }
    }
    buf_consume(&c->in, len);
    client_flush(c);
    return c->state == CLIENT_READY ? 0 : -1;
}

/* Before an extended batch that names pgsteer's own settings (client_scan_batch's flags say
 * so, at no cost to other batches) is routed: answer it here when it concerns nothing else
 * (local_batch_scan). Returns 0 when answered, 1 when waiting (for the answers other nodes owe
 * first, or for the monitor round that bounds the last write), 2 when it is not such a batch,
 * -1 when closed. */
static int client_local_batch(struct client *c)
{
    size_t len;
    bool shows_lsn;
    if (local_batch_scan(c, &len, &shows_lsn) == 0)
        return 2;
    if (client_busy(c)) {
        c->stalled = true;
        return 1;
    }
    if (shows_lsn) {
        client_bound_write(c);
        if (c->write_done_ns != 0 && !(c->px->snap && !c->px->snap->primary_up)) {
            c->wait_snapshot = true; /* client_on_snapshot goes on with it */
            c->stalled = true;
            return 1;
        }
    }
    return local_batch_run(c, len);
}

/* Start an extended batch: route it and bind it to a node. Returns 1 to wait, 0 when bound,
 * -1 when closed. */
/* multiplex_reads: the length of the extended batch at the head of c's input when it may run
 * on a shared backend as a whole, else 0. It must be self-contained: it makes the unnamed
 * statement (Parse "" first) and runs it through the unnamed portal, with nothing but Bind,
 * Describe and Execute of those before its Sync, at most 8 messages (what drivers send for a
 * statement they do not keep prepared); or it starts with a Bind of one of c's named
 * statements to the unnamed portal (*named gets the statement), then only Describe and
 * Execute of that portal and its Sync (what drivers send for one they keep prepared). */
static size_t client_shareable_batch(struct client *c, struct stmt **named)
{
    const char *p = buf_head(&c->in);
    size_t avail = buf_avail(&c->in), off = 0;
    *named = NULL;
    for (int i = 0; i < 8; i++) {
        struct proto_msg m;
        if (proto_frame(p + off, avail - off, PROTO_MAX_MESSAGE, &m) <= 0)
            return 0;
        struct proto_reader r;
        proto_reader_init(&r, m.body, m.len);
        size_t n1 = 1, n2 = 0;
        switch (m.type) {
        case FE_PARSE:
            if (i == 0)
                proto_read_str(&r, &n1);
            break;
        case FE_BIND:
            if (i == 0 || *named == NULL) {
                proto_read_str(&r, &n1);
                const char *name = proto_read_str(&r, &n2);
                if (i == 0) {
                    /* The unnamed statement without its Parse lives on c's own backends;
                     * a name that is not c's gets the node's error there. */
                    if (n2 == 0 || r.err || (*named = session_stmt_find(c, name, n2)) == NULL)
                        return 0;
                    n2 = 0;
                }
            }
            break;
        case FE_DESCRIBE: {
            if (i == 0)
                return 0; /* what it describes was made before, on c's own backends */
            uint8_t kind = proto_read_u8(&r);
            if ((kind == 'S' && *named == NULL) || kind == 'P')
                proto_read_str(&r, &n1);
            break;
        }
        case FE_EXECUTE:
            if (i == 0)
                return 0;
            proto_read_str(&r, &n1);
            break;
        case FE_SYNC:
            return i > 0 ? off + m.total : 0;
        default:
            return 0;
        }
        if (r.err || n1 != 0 || n2 != 0)
            return 0; /* a name: a statement or portal that lives on c's own backends */
        off += m.total;
    }
    return 0;
}

/* Read Parse message m: its text (q, qlen) and parameter type count, r left at the types.
 * Returns 0, or -1 when malformed. */
static int parse_fields(const struct proto_msg *m, struct proto_reader *r, const char **q,
                        size_t *qlen, uint16_t *ntypes)
{
    proto_reader_init(r, m->body, m->len);
    proto_read_str(r, NULL);
    *q = proto_read_str(r, qlen);
    *ntypes = (uint16_t)proto_read_i16(r);
    return r->err || (size_t)*ntypes * 4 > r->n - r->pos ? -1 : 0;
}

/* cache_unnamed_statements on shared backend b: the batch of `len` bytes at the head of c's
 * input, which makes and runs the unnamed statement (client_shareable_batch), runs the
 * statement b keeps prepared for its text instead (backend_shared_bind), when it is one Parse,
 * one Bind, Describes of the portal, Executes and the Sync, and its text may be kept. Its
 * Parse is recorded as c's unnamed statement, on none of c's own backends. Returns 0 when
 * sent, 2 when not (nothing was sent), -1 when c was closed. */
static int client_share_unnamed(struct client *c, struct backend *b, size_t len, struct route rt)
{
    const char *p = buf_head(&c->in);
    struct proto_msg parse, bind;
    (void)proto_frame(p, len, PROTO_MAX_MESSAGE, &parse); /* framed before */
    if (parse.type != FE_PARSE || parse.total >= len)
        return 2;
    (void)proto_frame(p + parse.total, len - parse.total, PROTO_MAX_MESSAGE, &bind);
    if (bind.type != FE_BIND)
        return 2;
    size_t rest = parse.total + bind.total;
    for (size_t off = rest; off < len;) {
        struct proto_msg m;
        (void)proto_frame(p + off, len - off, PROTO_MAX_MESSAGE, &m);
        off += m.total;
        if (m.type == FE_PARSE || m.type == FE_BIND || (m.type == FE_DESCRIBE && m.body[0] != 'P'))
            return 2;
    }
    struct proto_reader r;
    const char *q;
    size_t qlen;
    uint16_t ntypes;
    if (parse_fields(&parse, &r, &q, &qlen, &ntypes) < 0)
        return 2; /* refused by the usual path */
    struct classify_result cr;
    client_classify(c, q, qlen, &cr);
    if (!backend_unnamed_cacheable(cr.flags))
        return 2;
    struct stmt *s = session_stmt_put(c, "", 0, q, qlen, &r, ntypes, cr.flags);
    if (s == NULL) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    s->nodes = 0;
    int rc = backend_shared_bind(b, c, s, &bind, p + rest, len - rest, true);
    if (rc == 0)
        return 2;
    if (rc < 0) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    client_count_route(c, rt, 0);
    for (size_t off = rest; off < len;) {
        struct proto_msg m;
        (void)proto_frame(p + off, len - off, PROTO_MAX_MESSAGE, &m);
        off += m.total;
        enum expect_kind kind = backend_expect_kind((char)m.type);
        if (backend_shared_expect(b, c, kind) < 0) {
            client_close(c, "53200", "out of memory");
            return -1;
        }
    }
    buf_consume(&c->in, len);
    c->unnamed_stale = c->backend_mask;
    c->cur_node = rt.node;
    backend_shared_defer_flush(b);
    return 0;
}

/* Send the batch of `len` bytes at the head of c's input (client_shareable_batch) to shared
 * backend b, routed as rt, and consume it. Its Parse is recorded as c's unnamed statement, on
 * none of c's own backends (a later Bind of it without a Parse prepares it there); a batch
 * that binds c's statement `named` has its Bind sent for b's statement of the same text
 * (backend_shared_bind). Returns 0, 2 when b cannot take it now (nothing was sent: c's own
 * backend takes it), or -1 when c was closed. */
static int client_share_batch(struct client *c, struct backend *b, size_t len, struct route rt,
                              struct stmt *named)
{
    const char *p = buf_head(&c->in);
    if (named) {
        struct proto_msg bind;
        (void)proto_frame(p, len, PROTO_MAX_MESSAGE, &bind); /* framed before */
        int rc = backend_shared_bind(b, c, named, &bind, p + bind.total, len - bind.total, false);
        if (rc == 0)
            return 2;
        if (rc < 0) {
            client_close(c, "53200", "out of memory");
            return -1;
        }
    } else {
        int rc = c->px->cfg->cache_unnamed_statements ? client_share_unnamed(c, b, len, rt) : 2;
        if (rc != 2)
            return rc;
        if (backend_queue(b, p, len) < 0) {
            client_close(c, "53200", "out of memory");
            return -1;
        }
    }
    client_count_route(c, rt, 0);
    for (size_t off = 0; off < len;) {
        struct proto_msg m;
        (void)proto_frame(p + off, len - off, PROTO_MAX_MESSAGE, &m); /* framed before */
        off += m.total;
        enum expect_kind kind = backend_expect_kind((char)m.type);
        struct stmt *s = NULL;
        if (m.type == FE_PARSE) {
            struct proto_reader r;
            const char *q;
            size_t qlen;
            uint16_t ntypes;
            if (parse_fields(&m, &r, &q, &qlen, &ntypes) < 0) {
                client_close(c, "08P01", "invalid Parse message");
                return -1;
            }
            struct classify_result cr;
            client_classify(c, q, qlen, &cr);
            s = session_stmt_put(c, "", 0, q, qlen, &r, ntypes, cr.flags);
            if (s == NULL) {
                client_close(c, "53200", "out of memory");
                return -1;
            }
            s->nodes = 0;
        }
        if (backend_shared_expect(b, c, kind) < 0) {
            client_close(c, "53200", "out of memory");
            return -1;
        }
        if (s) /* forgotten again if the node refuses the Parse */
            backend_expect_last(b)->stmt = (uint32_t)s->id;
    }
    buf_consume(&c->in, len);
    /* The unnamed statement is now the one made on b: c's own backends must not run what
     * they still hold under that name (client_start_batch drops it there first). */
    if (named == NULL)
        c->unnamed_stale = c->backend_mask;
    c->cur_node = rt.node;
    backend_shared_defer_flush(b);
    return 0;
}

/* client_defer_begin_batch: message *m at *off of `in` is accepted; its answer is `answer` (a
 * message without a body, appended to pre at *prelen) and *m the next message. False when that
 * one is not all there yet. */
static bool begin_batch_next(const struct buf *in, size_t *off, struct proto_msg *m, char *pre,
                             size_t *prelen, char answer)
{
    memcpy(pre + *prelen, (const char[]){answer, 0, 0, 0, 4}, 5);
    *prelen += 5;
    *off += m->total;
    return proto_frame(buf_head(in) + *off, buf_avail(in) - *off, PROTO_MAX_MESSAGE, m) == 1;
}

/* defer_begin for the extended protocol: when the batch at the head of c->in is exactly a
 * plain BEGIN run on its own, answer it at once and consume it (client_defer_begin; the node
 * gets the same statements, run without a Describe). That is: a Parse of it as the unnamed
 * statement, without parameter types, and a Bind of that (pgbench -M extended, drivers that parse
 * every query), or a Bind of a named statement of the session that is one (pgbench -M prepared);
 * the Bind to the unnamed portal, without parameters; a Describe of that portal or none; its
 * Execute; a Sync. Returns 0 so, 2 for any other batch (nothing done), -1 when c was closed. */
static int client_defer_begin_batch(struct client *c, struct route rt, unsigned flags)
{
    if (c->px->cfg->nodes[rt.node].pooled)
        return 2; /* (its statements are rewritten per transaction there: not worth the care) */
    const char *p = buf_head(&c->in);
    size_t n = buf_avail(&c->in), off = 0;
    char pre[15]; /* the answers before CommandComplete: ParseComplete, BindComplete, NoData */
    size_t prelen = 0;
    const char *text = NULL; /* the BEGIN's text, its length, classify_plain_begin's word */
    size_t tlen = 0;
    int plain = 0;
    struct proto_msg m;
    struct proto_reader r;
    if (proto_frame(p, n, PROTO_MAX_MESSAGE, &m) != 1)
        return 2;
    if (m.type == FE_PARSE) {
        proto_reader_init(&r, m.body, m.len);
        size_t nlen;
        proto_read_str(&r, &nlen);
        text = proto_read_str(&r, &tlen);
        int16_t ntypes = proto_read_i16(&r);
        if (r.err || r.pos != r.n || nlen != 0 || ntypes != 0 || tlen > 256 ||
            (plain = classify_plain_begin(text, tlen)) == 0)
            return 2;
        if (!begin_batch_next(&c->in, &off, &m, pre, &prelen, BE_PARSE_COMPLETE))
            return 2;
    }
    if (m.type != FE_BIND)
        return 2;
    proto_reader_init(&r, m.body, m.len);
    size_t plen, slen;
    proto_read_str(&r, &plen);
    const char *name = proto_read_str(&r, &slen);
    int16_t nformats = proto_read_i16(&r), nparams = proto_read_i16(&r);
    int16_t nresults = proto_read_i16(&r), result = nresults == 1 ? proto_read_i16(&r) : 0;
    /* (A statement without columns takes one result format code, or none.) */
    if (r.err || r.pos != r.n || plen != 0 || (slen == 0) != (text != NULL) || nformats != 0 ||
        nparams != 0 || nresults < 0 || nresults > 1 || (result != 0 && result != 1))
        return 2;
    if (text == NULL) {
        const struct stmt *st = session_stmt_find(c, name, slen);
        if (st == NULL || st->ntypes != 0 || st->query_len > 256 ||
            (plain = classify_plain_begin(st->query, st->query_len)) == 0)
            return 2;
        text = st->query;
        tlen = st->query_len;
    }
    if (!begin_batch_next(&c->in, &off, &m, pre, &prelen, BE_BIND_COMPLETE))
        return 2;
    if (m.type == FE_DESCRIBE) {
        if (m.len != 2 || m.body[0] != 'P' || m.body[1] != 0 ||
            !begin_batch_next(&c->in, &off, &m, pre, &prelen, BE_NO_DATA))
            return 2;
    }
    if (m.type != FE_EXECUTE || m.len != 5 || m.body[0] != 0)
        return 2;
    off += m.total;
    if (proto_frame(p + off, n - off, PROTO_MAX_MESSAGE, &m) != 1 || m.type != FE_SYNC ||
        m.len != 0)
        return 2;
    off += m.total;
    if (pre[0] == BE_PARSE_COMPLETE) {
        /* The session's unnamed statement is the BEGIN now, made on the node as it is sent
         * (client_release_begin). */
        struct classify_result cr;
        struct proto_reader none;
        client_classify(c, text, tlen, &cr);
        proto_reader_init(&none, "", 0);
        if (session_stmt_put(c, "", 0, text, tlen, &none, 0, cr.flags) == NULL) {
            client_close(c, "53200", "out of memory");
            return -1;
        }
    }
    uint8_t kind = pre[0] == BE_PARSE_COMPLETE ? HELD_PARSED : HELD_NAMED;
    if (client_defer_begin(c, text, tlen, plain, name, slen, pre, prelen, kind, rt, flags) < 0)
        return -1;
    buf_consume(&c->in, off);
    return 0;
}

static int client_start_batch(struct client *c)
{
    unsigned flags;
    size_t synced;
    int rc = client_scan_batch(c, &flags, &synced);
    if (rc <= 0)
        return rc < 0 ? -1 : 1;
    if (flags & (CL_PGSTEER_SET | CL_PGSTEER_SHOW)) {
        rc = client_local_batch(c);
        if (rc != 2)
            return rc;
    }
    flags = client_unit_flags(c, flags);
    struct route rt = client_route(c, flags);
    if (rt.node < 0) {
        if (client_busy(c)) {
            c->stalled = true;
            return 1;
        }
        /* fallback: error. The batch is refused as a whole: one error now, its messages
         * dropped up to the Sync, which gets its ReadyForQuery. */
        c->px->route_reasons[rt.reason]++;
        client_send_error(c, "57P03", "no replica is eligible for reads and fallback is error");
        c->batch_node = c->px->cfg->primary;
        c->batch_failed = true;
        return 0;
    }
    if ((flags & (CL_BEGIN | CL_BEGIN_READ_ONLY)) && client_may_defer_begin(c, flags, rt)) {
        rc = client_defer_begin_batch(c, rt, flags);
        if (rc != 2)
            return rc;
    }
    if (client_busy_elsewhere(c, rt.node) || c->retry_inflight) {
        c->stalled = true;
        return 1;
    }
    if (flags == 0 && rt.reason == ROUTE_READ && c->px->cfg->multiplex_reads &&
        client_may_share(c)) {
        struct stmt *named;
        size_t len = client_shareable_batch(c, &named);
        struct backend *sb = len ? backend_shared_get(c, rt.node) : NULL;
        if (sb) {
            rc = client_share_batch(c, sb, len, rt, named);
            if (rc != 2)
                return rc;
        }
    }
    struct backend *b = client_backend(c, rt.node);
    if (b == NULL)
        return -1;
    client_count_route(c, rt, flags);
    /* A read on a replica the backend is still logging in to, as its first unit or behind
     * others so kept: kept too, to be routed again should that login fail
     * (client_retry_batch). Anything else queued there ends the keeping. */
    bool keep = synced && rt.reason == ROUTE_READ && rt.node != c->px->cfg->primary &&
                b->state != BACKEND_READY;
    if (c->login_node >= 0 && !(keep && c->login_node == rt.node)) {
        buf_reset(&c->login_batch);
        c->login_node = -1;
        c->login_units = 0;
    }
    /* (a first one only when nothing is owed yet: nothing of this batch is queued so far) */
    if (keep && (c->login_node >= 0 || !client_busy(c))) {
        if (buf_append(&c->login_batch, buf_head(&c->in), synced) == 0) {
            c->login_node = rt.node;
            c->login_units++;
        } else { /* (out of memory: they get the error, should it come) */
            buf_reset(&c->login_batch);
            c->login_node = -1;
            c->login_units = 0;
        }
    }
    if (session_sync_backend(c, b) < 0) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    if (c->unnamed_stale & (1u << rt.node)) {
        /* Drop the unnamed statement b kept from before a shared batch made another: a Bind
         * of it then gets the recorded one re-prepared, or fails as on one server when that
         * batch's Parse failed. */
        static const char close_unnamed[] = {FE_CLOSE, 0, 0, 0, 6, 'S', 0};
        c->unnamed_stale &= ~(1u << rt.node);
        if (backend_queue(b, close_unnamed, sizeof(close_unnamed)) < 0 ||
            backend_expect(b, EXP_CLOSE, true, false) < 0) {
            client_close(c, "53200", "out of memory");
            return -1;
        }
    }
    /* (After that Close: a BEGIN held as the unnamed statement makes b's anew.) */
    if (client_release_begin(c, b) < 0) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    c->batch_node = rt.node;
    c->batch_write = unit_writes(c, rt, flags);
    c->batch_failed = false;
    c->batch_executed = false;
    c->batch_flushed = false;
    c->pooled_unnamed = 0; /* a new transaction: the pooler may pick another server */
    client_predict_tx(c, flags, rt.node);
    c->cur_node = rt.node;
    return 0;
}

/* ---- COPY FROM STDIN ---- */

/* CopyData, CopyDone and CopyFail go to the node whose CopyInResponse the client answers. A
 * server ignores Sync while in copy-in (clients such as pg8000 send Execute, Sync, then the
 * data), so after an extended-protocol COPY the batch is bound to the copy's node again: the
 * Sync that follows CopyDone must reach it, or the COPY would never commit. Data with no
 * COPY in progress is dropped, as a server drops it. Returns 0 or -1 (closed). */
static int client_forward_copy(struct client *c, const struct proto_msg *m)
{
    int node = c->copy_node;
    if (node < 0)
        node = c->cur_node; /* a client that sends data before our CopyInResponse */
    struct backend *b = node >= 0 ? c->backends[node] : NULL;
    if (b == NULL)
        return 0;
    if (backend_queue(b, m->body - 5, m->total) < 0) {
        client_close(c, "53200", "out of memory");
        return -1;
    }
    if (m->type != FE_COPY_DATA && c->copy_node >= 0) {
        if (c->copy_extended && c->batch_node != node) {
            c->batch_node = node;
            c->batch_failed = false;
            c->batch_flushed = false;
            c->batch_executed = true;
        }
        c->copy_node = -1;
    }
    return 0;
}

/* ---- the input loop ---- */

static void client_flush_backends(struct client *c)
{
    for (uint32_t m = c->backend_mask; m; m &= m - 1) {
        struct backend *b = c->backends[__builtin_ctz(m)];
        if (b)
            backend_flush(b);
    }
}

void client_process(struct client *c)
{
    if (c->processing || c->state != CLIENT_READY)
        return;
    c->processing = true;
    c->stalled = c->wait_snapshot;
    while (c->state == CLIENT_READY && !c->stalled) {
        struct proto_msg m;
        int rc = proto_frame(buf_head(&c->in), buf_avail(&c->in), PROTO_MAX_MESSAGE, &m);
        if (rc == 0)
            break;
        if (rc < 0) {
            client_close(c, "08P01", "invalid message length");
            break;
        }
        if (m.type == FE_COPY_DATA || m.type == FE_COPY_DONE || m.type == FE_COPY_FAIL) {
            if (client_forward_copy(c, &m) < 0)
                break;
            buf_consume(&c->in, m.total);
            continue;
        }
        if (c->px->paused && c->batch_node < 0 && c->tx_node < 0 && m.type != FE_TERMINATE) {
            /* PAUSE (admin): hold new statements; transactions and batches in flight finish.
             * RESUME processes the input left here. */
            c->stalled = true;
            break;
        }
        if (c->batch_node >= 0) {
            if (m.type == FE_QUERY || m.type == FE_TERMINATE) {
                /* A Query ends an unsynced batch, as it does in the server. */
                c->batch_node = -1;
                c->batch_failed = false;
                continue;
            }
            if (c->batch_flushed) {
                int rb = client_maybe_rebind(c);
                if (rb < 0)
                    break;
                if (rb == 1)
                    break; /* need more input */
                if (c->batch_node < 0)
                    continue; /* moved: route the rest as a new batch */
            }
            if (client_forward_batch_msg(c, &m) < 0)
                break;
            buf_consume(&c->in, m.total);
            continue;
        }
        uint64_t t0 = uv_hrtime();
        switch (m.type) {
        case FE_QUERY:
            rc = client_handle_query(c, &m);
            if (rc == 0) {
                buf_consume(&c->in, m.total);
                latency_observe(&c->px->lat_request, uv_hrtime() - t0);
            }
            break;
        case FE_PARSE:
        case FE_BIND:
        case FE_DESCRIBE:
        case FE_EXECUTE:
        case FE_CLOSE:
        case FE_SYNC:
        case FE_FLUSH:
        case FE_FUNCTION:
            rc = client_start_batch(c);
            if (rc == 0)
                latency_observe(&c->px->lat_request, uv_hrtime() - t0);
            break;
        case FE_TERMINATE:
            client_close(c, NULL, "client terminated");
            rc = -1;
            break;
        default: {
            char msg[80];
            snprintf(msg, sizeof(msg), "invalid frontend message type %d", (unsigned char)m.type);
            client_close(c, "08P01", msg);
            rc = -1;
            break;
        }
        }
        if (rc != 0)
            break;
    }
    if (c->state == CLIENT_READY) {
        client_flush_backends(c);
        /* Hold reading while a backend's queue is long: the client outpaces the node. */
        bool backlog = false;
        for (uint32_t m = c->backend_mask; m; m &= m - 1) {
            if (buf_avail(&c->backends[__builtin_ctz(m)]->out) > 4 * 1024 * 1024)
                backlog = true;
        }
        /* Also while stalled with a long unprocessed input: a pipelining client waits. A
         * client held by PAUSE is still read, so that its cancel request finds the statement
         * held (client_cancel_held) and its going away is seen. */
        if (backlog || buf_avail(&c->in) > CLIENT_IN_HIGH)
            client_read_stop(c);
        else
            client_read_start(c);
    }
    c->processing = false;
}

static void client_on_input(struct client *c)
{
    if (c->state == CLIENT_CANCELLING) {
        buf_reset(&c->in); /* a client says nothing after a CancelRequest: ignored */
        return;
    }
    while (c->state == CLIENT_STARTUP) {
        int rc = client_handle_startup_packet(c);
        if (rc != 0)
            return;
    }
    if (c->state == CLIENT_AUTH && c->lookup != NULL) {
        /* its secret is being looked up: the client was asked for nothing yet */
        if (buf_avail(&c->in) > 0)
            client_close(c, "08P01", "unexpected message during authentication");
        return;
    }
    if (c->state == CLIENT_AUTH) {
        struct proto_msg m;
        int rc = proto_frame(buf_head(&c->in), buf_avail(&c->in), PROTO_MAX_PREAUTH_MSG, &m);
        if (rc < 0) {
            client_close(c, "08P01", "invalid message length during authentication");
            return;
        }
        if (rc == 0)
            return;
        buf_consume(&c->in, m.total);
        if (client_handle_password(c, &m) < 0)
            return;
    }
    if (c->state == CLIENT_READY)
        client_process(c);
}

/* ---- callbacks from backends ---- */

void client_on_ready_for_query(struct client *c, struct backend *b, char status,
                               const struct expect *e)
{
    if (e->swallow)
        return;
    if (e->retryable) {
        /* Answered without a single row description or error: nothing was held. */
        client_retry_settled(c);
    }
    if (b->fwd_outstanding == 0 && c->batch_node < 0) {
        /* The newest answer: the node's word on the transaction is authoritative. */
        c->tx_status = status;
        c->tx_node = status == 'I' ? -1 : b->node;
    }
    if (c->names_node == b->node && b->fwd_outstanding == 0 && status == 'I') {
        /* What may give a name another meaning is in (committed or not): the other sessions'
         * kept statements follow it. */
        c->names_node = -1;
        proxy_names_committed(c->px, b->node);
    }
    if (e->write && status == 'I')
        c->write_done_ns = uv_hrtime();
    if (c->stalled && !c->wait_snapshot && !c->retry_inflight && !client_busy(c)) {
        c->stalled = false;
        client_process(c);
    }
}

void client_on_copy_in(struct client *c, struct backend *b, bool extended)
{
    c->cur_node = b->node;
    c->copy_node = b->node;
    c->copy_extended = extended;
}

void client_backend_failed(struct client *c, int node, const char *sqlstate, const char *message,
                           bool owed_any, size_t owed_ready, bool answered)
{
    if (c->state == CLIENT_CONNECTING) {
        /* The login to the primary failed: those waiting for the same parameters would fail
         * the same way (a missing database, a refused role), so they hear it too. */
        struct param_cache *pc = c->param_filler;
        while (pc && pc->waiters) {
            struct client *w = pc->waiters;
            pc->waiters = w->param_next;
            w->param_next = NULL;
            w->param_wait = NULL;
            client_close(w, sqlstate, message);
        }
        client_close(c, sqlstate, message);
        return;
    }
    if (c->state != CLIENT_READY)
        return;
    if (c->tx_node == node && !owed_any && buf_avail(&c->held_begin) == 0) {
        /* The client's open transaction was there, idle, and is gone with what it did. Its
         * next statements must not run outside it, as they would on a new backend: the session
         * ends, as it would on one server. */
        char text[256];
        snprintf(text, sizeof(text), "the transaction's connection to node %s was lost: %s",
                 c->px->cfg->nodes[node].name, message);
        client_close(c, sqlstate, text);
        return;
    }
    bool batch_here = c->batch_node == node;
    if (c->tx_node == node && buf_avail(&c->held_begin) == 0) {
        /* (A BEGIN still held was not sent: the transaction begins on the next backend.) */
        c->tx_node = -1;
        c->tx_status = 'I';
    }
    /* Each unit owed hears of the loss, as each would get its own answer: an error, then its
     * ReadyForQuery. A batch still coming (its Sync not sent yet) hears it now, and its
     * ReadyForQuery comes with its Sync (batch_failed). */
    if (owed_ready == 0 && (owed_any || batch_here) && !answered)
        client_send_error(c, sqlstate, message);
    for (size_t i = 0; i < owed_ready; i++) {
        if (i > 0 || !answered)
            client_send_error(c, sqlstate, message);
        client_send_ready(c);
    }
    if (batch_here)
        c->batch_failed = true;
    if (c->cur_node == node)
        c->cur_node = -1;
    if (c->stalled && !c->wait_snapshot) {
        c->stalled = false;
        client_process(c);
    }
    client_flush(c);
}
