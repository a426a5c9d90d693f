/* SPDX-License-Identifier: MIT */
/* The proxy's runtime objects: the process-wide state of one event loop (struct proxy), a
 * client connection (struct client) and a backend connection to a node (struct backend).
 * client.c owns clients, backend.c owns backends, proxy.c owns the loop and the listener. */
#ifndef PGSTEER_PROXY_H
#define PGSTEER_PROXY_H

#define CLIENT_MAX_PARAMS 64

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "buf.h"
#include "classify.h"
#include "config.h"
#include "lag.h"
#include "latency.h"
#include "monitor.h"
#include "router.h"
#include "tls.h"

/* Per-node runtime state kept by the loop (the monitor's view arrives in snapshots). */
struct node_rt {
    struct sockaddr_storage addr; /* resolved at start */
    int64_t failed_until_ms;      /* a backend connect/read failed: no reads until then */
    uint64_t reads;               /* routing units sent here as reads */
    uint64_t writes;              /* routing units sent here for any other reason */
    uint64_t backends;            /* backends open now for clients */
    uint64_t idle;                /* backends in the pool now (reset or being reset) */
    uint64_t opened;              /* backends opened (each a login to the node) */
    uint64_t reused;              /* backends a client took from the pool */
    uint64_t evictions;           /* times the monitor took it out of reads (UP -> LAGGING/DOWN) */
    bool removed;                 /* dropped by a reload but still used by a session: kept as a
                                     weight-0 replica so indices stay stable; not reported */
};

/* Startup replies cached per (user, database, startup parameters), so that a client needs no
 * backend until its first statement. `key` is the concatenated startup parameters. */
struct param_cache {
    struct param_cache *next;
    char *key;
    size_t keylen;
    char *msgs; /* raw ParameterStatus messages, as the primary sent them */
    size_t msgslen;
    bool pending;           /* a client is logging in to the primary to fill it */
    struct client *waiters; /* clients waiting for it (linked by param_next) */
};

struct client;
struct admin;
struct proxy;
struct classify_cache; /* client.c */
struct proxy_call;

/* A function run on a worker's own loop thread (see proxy_each, proxy_post). */
typedef void (*proxy_fn)(struct proxy *px, void *arg);

/* What every worker shares: set up before any worker thread starts, fixed until they end. */
struct proxy_shared {
    struct proxy **workers; /* workers[0] is the main thread's (signals, admin, monitor) */
    int nworkers;
    enum cpu_affinity cpu_affinity; /* as started: a reload does not change it */
    atomic_uint_fast64_t clients;   /* client connections open in all workers */
    /* backends in the pools of all workers, per node: bounded by backend_idle_max */
    atomic_int idle[CONFIG_MAX_NODES];
    /* read_balance: session: the replica a session starts on comes from one rotation for the
     * whole process (a pick is once per session, so the lock is cold), so that sessions spread
     * evenly however the kernel spreads connections over the workers */
    pthread_mutex_t pick_lock;
    struct router pick_router;
    /* per node: bumped when a statement that may make a name stand for another object
     * (CL_NAMES) has committed and that node has it (the primary at once, a replica once it
     * has replayed it): backends close what they keep at their next use (backend.c) */
    atomic_uint names_gen[CONFIG_MAX_NODES];
    /* auth_query: the secrets it found lately, for auth_query.cache_ms, under auth_lock
     * (client.c); emptied by a reload */
    pthread_mutex_t auth_lock;
    struct auth_cached *auth_cache;
    size_t nauth_cache;
};

/* One worker: an event loop on its own thread that owns its listener (SO_REUSEPORT when there
 * are several), its clients and their backends, and its copy of the monitor's snapshot.
 * Worker 0 runs on the main thread and also owns the admin interface, the monitor, signals
 * and reloads; it reaches the other workers only through proxy_each and proxy_post. */
struct proxy {
    uv_loop_t *loop;
    int worker;                  /* index in shared->workers */
    struct proxy_shared *shared; /* the same for every worker */
    struct config *cfg;
    uv_tcp_t listener;
    uv_pipe_t unix_listener; /* unix_socket_dir: every worker polls one listening socket */
    bool has_unix_listener;
    uv_signal_t sigint, sigterm, sighup;
    uv_async_t monitor_wakeup;
    struct monitor *monitor;
    struct monitor_snapshot *snap; /* newest snapshot; owned by the loop; NULL before the first */
    struct router router;
    struct node_rt nodes[CONFIG_MAX_NODES];
    struct client *clients; /* doubly linked list of live clients */
    /* the pool: backends whose clients left, per node, newest first (backend.c) */
    struct backend *pool[CONFIG_MAX_NODES];
    uint64_t nclients;
    /* Clients this worker owns, and those handed to it not yet taken: other workers read it to
     * give a new connection to the least loaded (client_accept). */
    atomic_uint load;
    uint32_t next_client_id;
    struct param_cache *params;
    struct classify_functions wfuncs;
    uint32_t eligible_mask;     /* replicas eligible in the newest snapshot */
    uint64_t eligible_epoch;    /* bumped when a replica joins the eligible set */
    uint64_t cfg_gen;           /* bumped when a reload takes effect in this worker */
    struct tls_ctx *tls;        /* server_tls: a reference, NULL when TLS to the nodes is off */
    struct tls_ctx *client_tls; /* client_tls: a reference, NULL when clients get no TLS */
    struct tls_ctx *admin_tls;  /* admin_tls (worker 0, which serves the admin port): a
                                 * reference, NULL when off */
    /* A CL_NAMES statement of one of this worker's sessions committed at names_at_ns: the
     * replicas in names_wait bump their shared->names_gen once they have replayed up to
     * names_lsn, the primary's position in the first snapshot sampled after that (LSN_INVALID
     * until then) (proxy_names_committed, apply_snapshot) */
    uint64_t names_at_ns;
    lsn_t names_lsn;
    uint32_t names_wait;
    bool shutting_down;
    uint64_t read_retries; /* reads retried on the primary: refused by a replica, or its login */
    uint64_t tls_clients;  /* client connections of this worker over TLS now (client_tls) */
    uint64_t tls_failures; /* clients' TLS handshakes that failed, and direct ones without ALPN */
    uint64_t route_reasons[ROUTE_REASON_COUNT];
    struct latency_hist lat_request, lat_response;
    /* admin interface (admin.c) and operations (proxy.c) */
    struct admin *admin;      /* the admin listener and its connections; NULL when off */
    bool paused;              /* PAUSE: new statements are held until RESUME */
    int64_t start_unix_ms;    /* wall clock at start, for uptime and /status */
    uint64_t start_ns;        /* uv_hrtime() at start */
    uint64_t reloads;         /* configuration reloads that took effect (worker 0) */
    uint64_t reload_failures; /* reloads rejected (the old configuration was kept) (worker 0) */
    /* shutdown (SIGTERM): clients get until shutdown_deadline to finish */
    uv_timer_t shutdown_timer;
    int64_t shutdown_deadline;
    bool stopping; /* stop_worker ran: every handle of the loop is closing */
    /* backends to close once idle after a reload (proxy.c) */
    struct drain_entry *drains;
    size_t ndrains, drains_cap;
    /* calls from other threads (proxy_each, proxy_post): a queue under calls_lock, run by
     * calls_async's callback on this worker's thread */
    uv_loop_t own_loop; /* the loop of workers other than 0 */
    pthread_t thread;
    uv_async_t calls_async;
    pthread_mutex_t calls_lock;
    pthread_cond_t calls_cond;
    struct proxy_call *calls;
    bool calls_closed; /* calls_async is closing: calls run when the loop has ended */
    bool loop_done;    /* the loop has ended: nothing runs on this thread any more */
    /* busy_poll_us: after input, the loop polls without sleeping (an idle handle makes
     * uv_run's poll timeout 0) until poll_ns pass with no input; see proxy_note_input */
    uv_idle_t poll_idle;
    uint64_t poll_ns;          /* busy_poll_us in ns; 0: off */
    uint64_t poll_last;        /* uv_hrtime() when the polling last saw input */
    bool poll_input;           /* input arrived since the last polling round */
    bool poll_fresh;           /* polling began in this loop turn: its reads were not polled */
    uint64_t busy_poll_reads;  /* reads that arrived while the worker polled */
    uint64_t busy_poll_sleeps; /* polling ended with no input: the worker slept */
    /* multiplex_reads: this worker's shared backend per node (backend.c), or NULL */
    struct backend *shared_be[CONFIG_MAX_NODES];
    /* Units queued on shared backends during one turn of the loop go out in one write per
     * backend, before the loop next polls (backend_shared_defer_flush) */
    uv_prepare_t shared_prepare;
    uint32_t shared_dirty; /* bit i: shared_be[i] has queued bytes to send */
    /* client_login_timeout_ms: closes the clients that have not logged in in time */
    uv_timer_t login_timer;
    uint64_t login_timeouts;     /* clients closed so */
    uint64_t auth_lookups;       /* auth_query: logins whose secret was looked up on the primary */
    uint64_t auth_lookup_errors; /* ... that could not be (the query failed, no primary) */
    uint64_t multiplexed;        /* statements sent over a shared backend */
    uint64_t multiplex_stalls;   /* reads that used an own backend: the shared one was stalled */
    /* cache_unnamed_statements: unnamed statements prepared under a backend's own name, and
     * Parses of one that a backend kept prepared, which the node did not parse again */
    uint64_t unnamed_prepared;
    uint64_t unnamed_reused;
    /* prepare_simple_queries: texts of simple queries prepared with parameters, and queries run
     * as a statement so kept */
    uint64_t simple_prepared;
    uint64_t simple_reused;
    uint64_t begins_deferred; /* defer_begin: BEGINs answered at once, sent with what follows */
    struct buf simple_text;   /* the text of the query at hand, rewritten (backend_simple_query) */
    struct buf simple_error;  /* an error about such a text, its position the client's */
};

/* ---- backend.c ---- */

struct proto_msg;
struct stmt;

enum backend_state {
    BACKEND_CONNECTING = 0, /* TCP connect in progress */
    BACKEND_AUTH,           /* StartupMessage sent, authenticating */
    BACKEND_STARTUP,        /* authenticated, collecting ParameterStatus until ReadyForQuery */
    BACKEND_READY,          /* usable: queued messages flow */
    BACKEND_CLOSING,        /* uv_close called; freed in the close callback */
};

/* Where a backend's TLS (server_tls) stands: not used; SSLRequest sent, waiting for the node's
 * 'S' or 'N'; handshake under way; established (every byte goes through b->tls). */
enum backend_tls { BTLS_NONE = 0, BTLS_ASKED, BTLS_HANDSHAKE, BTLS_UP };

/* One response the backend owes us, in the order the messages were sent. */
enum expect_kind {
    EXP_PARSE = 0,
    EXP_BIND,
    EXP_DESCRIBE,
    EXP_EXECUTE,
    EXP_CLOSE,
    EXP_SYNC,  /* ends with ReadyForQuery */
    EXP_QUERY, /* simple Query or FunctionCall: ends with ReadyForQuery */
};
struct expect {
    uint8_t kind;         /* enum expect_kind */
    bool swallow;         /* injected by pgsteer: the client must not see the answer */
    bool retryable;       /* a read on a replica that may be retried on the primary on 25006 */
    bool write;           /* the unit needed the primary for a write: completes read-your-writes */
    bool quiet;           /* swallowed even when an error: the client's own statement follows */
    bool simple;          /* part of a client's Query run as a kept statement (prepare_simple_
                             queries): errors and notices reach the client, NoData does not */
    uint16_t sstmt;       /* on a shared backend: a Parse of its statement sstmt - 1 (struct
                             shared_stmt), which its answer makes usable or drops; 0 = none */
    uint32_t stmt;        /* a Parse of statement `stmt` (its id): if the client's own fails, the
                             statement is forgotten; if a re-prepare fails, its node is unmarked */
    uint64_t change;      /* the client's Query recorded session change `change` (its gen): undone
                             if the Query fails, since then it changed nothing */
    uint64_t gen_at;      /* the client's change generation once the unit was queued: a transaction
                             this answer ends holds no change recorded after it (pipelined) */
    struct client *owner; /* on a shared backend: the client the answer is for; NULL once that
                             client left (its answer is then dropped) */
};

/* A statement a shared backend prepared for clients' named statements of the same text and
 * parameter types: each client's Bind of its own name is sent with this one's. */
#define SHARED_STMTS_MAX 128
struct shared_stmt {
    uint64_t hash; /* of the text and types (stmt_hash) */
    char *query;   /* owned */
    size_t query_len;
    uint32_t *types; /* owned, ntypes of them */
    uint16_t ntypes;
    uint32_t name;  /* prepared on the node as "pgsteer_s<name>" */
    char label[20]; /* that name, written out once */
    uint8_t label_len;
    uint32_t used; /* the backend's sstmt_clock when last used: the least recent goes first */
    bool ready;    /* the node answered its Parse: clients may send Binds of it */
    /* prepare_simple_queries: while the Parse of a query's text is in flight, where its
     * placeholders stand and how long the literals they replace were (owned; NULL else) */
    struct simple_map *map;
};

struct backend {
    /* A node is reached over TCP, or over a Unix-domain socket when its host is a directory.
     * Both handles start with uv_stream_t's fields, so code that only reads and writes uses
     * `tcp` for either; what differs (set-up, TCP_NODELAY) looks at tcp.type. */
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    };
    uv_connect_t connect_req;
    uv_write_t write_req;
    uv_write_t login_req;
    struct buf login;      /* the login message in flight */
    uv_timer_t timer;      /* connect/login timeout */
    struct client *client; /* NULL once the client is gone */
    struct proxy *px;      /* the worker whose loop owns it */
    int node;
    enum backend_state state;
    struct buf in;
    struct buf out;     /* queued for the node */
    struct buf writing; /* handed to uv_write, not touched until its callback */
    /* TLS to the node: the context the connection was opened under (a reference), the TLS
     * state once the node agreed, how far it is (enum backend_tls), the ciphertext read and
     * not yet decrypted, and the ciphertext of `out` not yet written */
    struct tls_ctx *tls_ctx;
    struct tls_conn *tls;
    uint8_t tls_phase;
    struct buf tls_in, tls_out;
    bool write_pending;
    uint32_t pid, key; /* the node's BackendKeyData */
    struct scram_client *scram;
    struct expect *exp; /* ring of owed responses */
    size_t exp_head, exp_count, exp_cap;
    size_t fwd_outstanding;   /* owed responses the client will see */
    const char *fail_message; /* why b fails on the next loop turn (backend_flush) */
    bool diverged;            /* a replay of the session's changes failed: replaced once idle */
    bool cancel_pending;      /* a cancel came during the login: send it once logged in */
    struct cancel_wait *cancel_pending_wait; /* that cancel's client connection (a hold on
                                                it, cancel_wait_hold), or NULL */
    uint64_t set_gen;           /* session changes replayed here up to this generation */
    struct buf startup_params;  /* ParameterStatus messages from login */
    struct buf reprepare_error; /* a failed re-prepare's ErrorResponse, given to the client in
                                   place of its EXECUTE's (backend_on_message) */
    bool reading;
    char tx_status;   /* from the node's last ReadyForQuery: 'I', 'T', 'E' */
    bool rolled_back; /* the last end of a transaction since the last ReadyForQuery said
                         ROLLBACK (only looked for while the client has tx_saved) */
    bool batch_error; /* an ErrorResponse since the last ReadyForQuery: an extended batch
                         outside a transaction block was rolled back as a whole */
    /* the pool: a backend whose client left idle is reset and kept for the next client with
     * the same user, database and startup parameters (as the client's param_key) */
    char *pool_key;
    size_t pool_keylen;
    uint64_t opened_ns; /* uv_hrtime() at open: backend_lifetime_ms counts from it */
    uint64_t cfg_gen;   /* px->cfg_gen at open: a reload since makes it unfit for reuse */
    bool parked;        /* in px->pool[node], without a client */
    bool resetting;     /* parked, and the reset (DISCARD ALL) not answered yet */
    struct backend *pool_prev, *pool_next;
    int handles_open; /* tcp + timer; freed when both closed */
    /* multiplex_reads: a shared backend belongs to no client; each owed answer names its own
     * (struct expect.owner), and `client` points at the head's owner only while its answer is
     * being handled */
    bool shared;
    /* and the clients' named prepared statements it has prepared under names of its own
     * (backend_shared_bind); NULL until the first */
    struct shared_stmt *sstmts;
    /* a cancel is on its way to the node: a shared backend takes no new unit, and no backend
     * goes to the pool or is shared, until the node has acted on it (cancel_send) */
    bool cancel_fence;
    uint64_t progress_ms; /* loop time when it last sent anything, or was given a unit while
                             it owed nothing: a stall counts from there (multiplex_stall_ms) */
    uint16_t nsstmts;     /* entries in use, 0..SHARED_STMTS_MAX */
    uint32_t sstmt_names; /* names given so far: the next is "pgsteer_s<sstmt_names + 1>" */
    /* cache_unnamed_statements: on a client's own backend, the same table holds the texts of
     * the client's unnamed statements that b keeps prepared under names of its own, and
     * unnamed_alias (1 + index, or 0) says which of them stands for the client's unnamed
     * statement of id unnamed_alias_stmt: its Binds and Describes name that one instead */
    uint16_t unnamed_alias;
    uint64_t unnamed_alias_stmt;
    uint32_t sstmt_clock;    /* uses of its statements so far (struct shared_stmt.used) */
    uint32_t names_gen;      /* on a client's own backend: the client's names_gen when what it
                                keeps was last known planned after the client's last CL_NAMES */
    uint32_t node_names_gen; /* shared->names_gen[node] when that was last so */
    /* hashes of texts seen once and not kept (a text is kept the second time it comes, so that
     * texts that never repeat take no place: sstmt_seen_once); NULL until the first */
    uint64_t *seen;
};

/* Open a backend for client c to node `node`: starts a non-blocking connect on the loop.
 * Returns the backend (owned by the client until backend_close) or NULL on allocation failure.
 * Messages may be queued with backend_queue at once; they are sent after login. */
struct backend *backend_open(struct client *c, int node);
/* A backend to `node` from the worker's pool, logged in as c's user with c's database and
 * startup parameters and reset, now attached to c as backend_open's would be (ready at once,
 * set_gen 0); NULL when the pool holds none (the caller opens one). */
struct backend *backend_pool_take(struct client *c, int node);
/* b's client is leaving: b goes to the pool when it is idle and may be reused (logged in,
 * nothing owed, outside a transaction, opened under the current configuration, not too old,
 * backend_idle_max not reached by the other workers' pools: the oldest of this worker's makes
 * room), where it is reset with DISCARD ALL; otherwise it is closed.
 * Either way b no longer belongs to the client. */
void backend_release(struct backend *b);
/* Close the backends in px's pool to `node`, or to every node when node < 0. */
void backend_pool_flush(struct proxy *px, int node);
/* Queue raw protocol bytes for the node. Returns 0 or -1 (out of memory). */
int backend_queue(struct backend *b, const void *p, size_t n);
/* The response a node owes for an extended-protocol message of type `type` (Parse, Bind,
 * Describe, Execute; anything else: a Sync's). */
enum expect_kind backend_expect_kind(char type);
/* Record that the node owes a response of `kind`. Returns 0 or -1 (out of memory). */
int backend_expect(struct backend *b, enum expect_kind kind, bool swallow, bool write);
/* The response last expected (after a successful backend_expect), to mark it: `quiet`, `stmt`
 * or `change` (see struct expect). Owned by b; valid until the next backend_expect. */
struct expect *backend_expect_last(struct backend *b);
/* Send queued bytes now (when logged in). A broken connection is failed (backend_fail: the
 * client hears of it) on the next turn of the loop, never within this call, so the caller may
 * go on using the session's statements and changes. */
void backend_flush(struct backend *b);
/* multiplex_reads: the worker's shared backend to `node` for c's user, database and startup
 * parameters, logged in and ready; made from a pooled backend when there is none yet, else
 * from c's own backend to the node when that is idle and could be pooled (c then no longer
 * has it). NULL when there is no such backend, or when it owes answers and has read nothing
 * from its node for multiplex_stall_ms (c then uses its own). Owned by the worker
 * (px->shared_be). */
struct backend *backend_shared_get(struct client *c, int node);
/* After queueing c's messages on shared backend b (backend_queue), expect the answer to one of
 * them (kind) for c; a Query or Sync counts in c->shared_owed until answered. Returns 0 or -1
 * (out of memory). */
int backend_shared_expect(struct backend *b, struct client *c, enum expect_kind kind);
/* c is closing: the answers shared backends still owe it are dropped when they come. */
void backend_shared_forget(struct client *c);
/* c's output drained: resume the shared backend paused while its answer to c was long. */
void backend_shared_resume(struct client *c);
/* Queue on shared backend b, for client c, the Bind `bind` of c's named statement st (its
 * portal unnamed) and the `rest_len` bytes after it up to its batch's Sync, with the Bind
 * naming b's own statement of the same text and parameter types instead, and a Parse of that
 * one first when b has none yet (expected here, its answer swallowed unless it is an error,
 * which c then gets as its batch's; the caller expects the Bind and the rest). With `unnamed`,
 * st is c's unnamed statement, whose Parse the batch began with (cache_unnamed_statements):
 * a stand-in Parse of the unnamed statement goes before the Bind (backend.c), expected here as
 * c's, and the Bind is expected here too (the caller expects the rest). Returns 1 when queued, 0
 * when st cannot run on b now (b's Parse of it is still unanswered, or b holds SHARED_STMTS_MAX
 * statements) and -1 when out of memory; with 0 or -1 nothing is queued. */
int backend_shared_bind(struct backend *b, struct client *c, struct stmt *st,
                        const struct proto_msg *bind, const char *rest, size_t rest_len,
                        bool unnamed);
/* cache_unnamed_statements: the client's Parse of its unnamed statement s (just recorded) is
 * to go to its own backend b. When b keeps s's text and parameter types prepared under a name
 * of its own, queue a stand-in Parse of the unnamed statement in its place (`SELECT`, which
 * the node parses at almost no cost; its ParseComplete is the client's); otherwise, when s's text
 * is one statement, queue a Parse of s under a new name of b's (when b is full, after a Close of
 * the statement it used least recently). Either way the client's Binds and Describes of its unnamed
 * statement on b then name b's statement (backend_unnamed_rewrite), and the Parse is expected,
 * answered to the client, marked as statement s (forgotten if the node refuses it). Returns 2 when
 * queued so with the kept statement, 1 when queued with a new one, 0 when s is to be sent as the
 * client sent it (b's Parse of the text is unanswered, or b is full), -1 when out of memory
 * (nothing queued). */
int backend_unnamed_parse(struct backend *b, struct client *c, struct stmt *s);
/* prepare_simple_queries: queue client c's Query of text q (qlen bytes, its NUL not counted),
 * one statement whose literals `lits` names (usable), on c's own backend b as Bind, Describe,
 * Execute and Sync of a statement b keeps prepared with those literals as parameters (and its
 * Parse first when b has none yet), expected so that the client gets what the Query gives,
 * the Sync's answer marked `write`. The caller keeps the Query in c->kept_batch (kept_state 3)
 * to run it as it came should the node refuse the kept statement. Returns 1 when queued so, 0
 * when the Query must go as it came (no literal long enough for its placeholder, the text's
 * Parse in flight, no room), -1 when out of memory (nothing queued). */
int backend_simple_query(struct backend *b, struct client *c, const char *q, size_t qlen,
                         const struct classify_literals *lits, bool write);
/* Queue on b the client's Bind or Describe m, which names its unnamed statement st (the empty
 * name at body offset name_off), with b's name for st instead when b runs st under a name of
 * its own. Returns 1 when queued, 0 when not (the caller sends m as it is), -1 when out of
 * memory. */
int backend_unnamed_rewrite(struct backend *b, const struct stmt *st, const struct proto_msg *m,
                            size_t name_off);
/* Whether the client's unnamed statement of these classify flags may be kept prepared: a
 * statement that changes nothing of the session pgsteer follows. */
bool backend_unnamed_cacheable(unsigned flags);
/* b's prepared statements are gone or going (DISCARD ALL or DEALLOCATE ALL sent there): forget
 * the ones it kept under names of its own. */
void backend_stmts_clear(struct backend *b);
/* A cancel request from client c for its statement on shared backend b: sent to the node only
 * when everything b owes is c's (nothing of another client was sent there behind it, which
 * the node might be running by the time it acts on the request), and b then takes no new
 * unit until the node has acted on it (`w` is held until then, as by backend_cancel). Returns
 * 1 when sent, 0 when b owes nothing or a cancel is already on its way (or out of memory), -1
 * when another client's statement is there. */
int backend_shared_cancel(struct backend *b, struct client *c, struct cancel_wait *w);
/* Send what was queued on shared backend b before the loop next polls, together with what
 * other clients queue there meanwhile: several clients' reads reach the node in one write. */
void backend_shared_defer_flush(struct backend *b);
/* Close px's shared backends that are idle and may no longer serve (a reload turned
 * multiplex_reads off or changed the configuration they were opened under), or every one when
 * `all` (the worker stops). */
void backend_shared_trim(struct proxy *px, bool all);
/* Close the connection: sends Terminate when logged in, detaches from the client, frees the
 * memory in the close callback. Safe to call more than once. */
void backend_close(struct backend *b);
/* Cancel what b runs for its client: a CancelRequest with the node's key for b, on a new
 * connection to the node. Before b's login completes the node does not know that key, so the
 * request is held and sent right after the statements queued meanwhile. Best effort, as in
 * PostgreSQL: a cancel that reaches the node between statements does nothing. Until the node
 * has acted on it (closed that connection), b goes to no pool and no other session; `w` (may
 * be NULL) is held until then (cancel_wait_hold). */
void backend_cancel(struct backend *b, struct cancel_wait *w);
/* Stop/start reading the node (flow control for a slow client). */
void backend_pause(struct backend *b);
void backend_resume(struct backend *b);

/* ---- client.c ---- */

enum client_state {
    CLIENT_STARTUP = 0, /* waiting for StartupMessage (or SSLRequest, CancelRequest) */
    CLIENT_AUTH,        /* authenticating the client */
    CLIENT_CONNECTING,  /* authenticated; waiting for the first backend's parameters */
    CLIENT_READY,       /* serving statements */
    CLIENT_CANCELLING,  /* sent a CancelRequest: open until the nodes have acted on it */
    CLIENT_CLOSING,     /* uv_close called; freed in the close callback */
};

/* A CancelRequest's client connection, kept open until every node the request was passed to
 * has acted on it (closed its cancel connection, which PostgreSQL does once it has signalled
 * the server process), then closed, as PostgreSQL closes it: a client that waits for that
 * close before its next statement (libpq's PQcancel does) cannot have the cancel land on that
 * statement instead. Counted: one hold for the hand-over to the worker that owns the session,
 * one per cancel connection to a node. Made and freed on the worker of the cancel connection
 * (its home); held and released on any worker. */
struct cancel_wait;
/* One more hold on w (may be NULL). Any thread. */
void cancel_wait_hold(struct cancel_wait *w);
/* Drop a hold on w (may be NULL); the last one has w's home close the client connection and
 * free w. Any thread. */
void cancel_wait_release(struct cancel_wait *w);

/* A named prepared statement of the client (protocol level, "" = unnamed). */
struct stmt {
    struct stmt *next;
    char *name;
    char *query;
    size_t query_len;
    uint32_t *types;
    uint16_t ntypes;
    size_t query_cap;   /* bytes allocated for query */
    uint16_t types_cap; /* entries allocated for types */
    unsigned flags;     /* classify flags of query */
    uint32_t nodes;     /* bit i: prepared on the backend to node i */
    uint64_t id;        /* unique in the client: which statement a pooled slot holds */
    uint64_t hash;      /* of query and types for shared backends' lookups; 0 = not yet */
};

/* A session change to replay on every backend (SET, RESET, DISCARD, SQL PREPARE). */
struct session_change {
    struct session_change *next;
    uint64_t gen;
    char *key; /* "set:<name>", "prepare:<name>", ...: a newer change of a key replaces the
                  older one, so the list stays as long as the session's distinct settings */
    char *sql; /* replayed as a Query; NULL when raw is set */
    char *raw; /* or these extended-protocol messages (Parse, Bind, Execute, Sync) */
    size_t rawlen;
    unsigned flags; /* for "prepare:": the classify flags of the prepared statement's body */
    struct session_change *replaced; /* the older change of the same key this one replaced,
                                        put back should this one turn out to have failed; a
                                        chain (through `replaced`) until confirmed */
};

/* A savepoint of the open transaction: the session's transactional changes as they were when
 * it was set (session_track), put back by a ROLLBACK TO it. */
struct savepoint {
    struct savepoint *next; /* the one set before it */
    struct session_change *saved;
    bool valid;    /* false when the copy could not be made: a ROLLBACK TO it changes nothing */
    char name[64]; /* as the server compares it: lower-cased unless quoted, at most 63 bytes */
};

struct client {
    union { /* as in struct backend: TCP, or a Unix-domain socket (unix_socket_dir) */
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    };
    uv_write_t write_req;
    struct proxy *px;
    struct client *prev, *next;
    uint32_t id, key;
    enum client_state state;
    struct buf in;
    struct buf out;
    struct buf writing;
    bool write_pending;
    bool reading;
    bool over_tcp;       /* not a Unix-domain socket: TLS may be asked for (client_tls) */
    uint32_t read_size;  /* bytes to read next: grows while reads fill it */
    int64_t accepted_ms; /* proxy_now_ms() when accepted (client_login_timeout_ms) */
    /* client_tls: the connection's TLS once the client asked for it and got 'S', or started it
     * at once (tls_direct: its first bytes were a TLS handshake) (owned), how far it is (enum
     * client_tls_phase), and the ciphertext read and to be written; in and out above then hold
     * plaintext, and writing ciphertext */
    struct tls_conn *tls;
    uint8_t tls_phase;
    bool tls_direct;
    struct buf tls_in, tls_out;
    char *user;
    char *database;
    char *password; /* configured password or SCRAM secret: also logs pgsteer in to nodes */
    struct auth_req *lookup; /* auth_query: the lookup of this client's secret in progress */
    bool secret_looked_up;   /* password is a secret found by auth_query (or its cache) */
    /* With a SCRAM secret configured: the ClientKey the client's login proved, which logs
     * pgsteer in to nodes that store the same secret (scram_client_init_key) */
    uint8_t scram_client_key[32];
    bool has_client_key;
    char **params; /* startup parameters for backends: name, value, ... */
    size_t nparams;
    char *param_key; /* cache key, see struct param_cache */
    size_t param_keylen;
    struct param_cache *param_filler; /* the pending cache entry this client fills */
    struct param_cache *param_wait;   /* the pending cache entry this client waits for */
    struct client *param_next;        /* next waiter of param_wait */
    struct scram_server *scram;
    uint8_t md5_salt[4];
    struct backend *backends[CONFIG_MAX_NODES];
    uint32_t backend_mask; /* bit i: backends[i] is set (to walk only the open ones) */
    /* session */
    char tx_status; /* from the last ReadyForQuery: 'I', 'T', 'E' */
    int tx_node;    /* node of the open transaction (predicted while in flight), or -1 */
    bool pinned;
    bool default_read_only; /* default_transaction_read_only is on for the session */
    bool tx_read_only;      /* the open transaction began READ ONLY */
    const char *pin_reason;
    enum consistency consistency;
    lsn_t min_lsn;          /* SET pgsteer.min_lsn */
    lsn_t rw_lsn;           /* bounds the session's last write (read-your-writes) */
    uint64_t write_done_ns; /* uv_hrtime() when the last write finished; 0 when bounded */
    struct stmt *stmts;     /* protocol-level prepared statements */
    struct session_change *changes;
    uint64_t change_gen;
    /* The session's settings as they were when the open transaction first changed one (a copy
     * of the transactional changes, session_tx_save): put back if it rolls back. */
    struct session_change *tx_saved;
    bool tx_saved_valid;
    bool tx_saved_implicit;       /* taken for the implicit transaction of an extended batch outside
                                     a transaction block: it ends at the batch's Sync */
    struct savepoint *savepoints; /* of the open transaction, the newest first */
    struct savepoint *spare_savepoints; /* freed ones kept for reuse (session.c) */
    unsigned nspare_savepoints;
    uint64_t bound_change; /* the change a bound SET recorded: its Execute carries it */
    /* the routing unit in progress */
    int batch_node;    /* extended batch bound to this node until Sync, or -1 */
    bool batch_failed; /* the batch's backend failed: drop messages until Sync */
    bool batch_write;
    bool batch_executed;     /* the bound batch sent a Bind or Execute (it changed something) */
    bool batch_flushed;      /* the bound batch's last message was a Flush */
    uint64_t pooled_unnamed; /* statement id in a pooled node's unnamed slot, this batch */
    uint64_t stmt_seq;
    struct buf scratch;  /* rewritten messages for pooled nodes, reused */
    int read_node;       /* the replica this session reads from (read_balance: session) */
    uint64_t read_epoch; /* px->eligible_epoch when read_node was picked */
    int copy_node;       /* node in copy-in mode for the client, or -1 */
    bool copy_extended;  /* that COPY came from an Execute (a Sync follows CopyDone) */
    int cur_node;        /* node of the last unit sent (COPY data follows it) */
    bool stalled;        /* waiting for another node's responses before sending more */
    bool processing;     /* inside client_process (no re-entry) */
    bool paused_out;     /* backends paused because out is large */
    bool wait_snapshot;  /* SHOW pgsteer.last_write_lsn waits for the next monitor round */
    /* The safety net for a misclassified read: the Query in flight on a replica, and a
     * RowDescription held back until we know the replica did not refuse it (25006). */
    bool retry_inflight;
    struct buf retry_sql;
    struct buf retry_hold;
    /* Extended read batches (each up to its Sync) sent to a replica backend still logging in,
     * the backend's only units, kept so that they can be routed again should that login fail
     * (nothing of them reached the node); login_node is that node, -1 when nothing is kept,
     * login_units how many batches */
    struct buf login_batch;
    int login_node;
    unsigned login_units;
    struct route last_route;
    struct classify_cache *cls_cache; /* recent statement texts and their class; lazily made */
    unsigned shared_owed;             /* answers shared backends owe the client (multiplex_reads) */
    /* cache_unnamed_statements: the messages after the Parse of the last batch that ran a
     * statement its backend kept prepared, up to its Sync (kept_state 2 when they are all
     * here), to run it again from its text should the node refuse the kept one because its
     * result type changed (0A000); kept_stmt is the unnamed statement's id */
    struct buf kept_batch;
    uint64_t kept_stmt;
    uint8_t kept_state;
    /* the client's unnamed statement is gone, as on one server: a Query dropped it, or a Close
     * (until its next Parse); a Bind or Describe of it then fails there as on one server */
    bool unnamed_dropped;
    /* defer_begin: a BEGIN answered at once and not sent yet (its Query message, empty when
     * none): it goes to the transaction's node ahead of its first statement */
    struct buf held_begin;
    uint8_t held_begin_kind; /* HELD_QUERY, HELD_PARSED, HELD_NAMED (client_defer_begin) */
    uint32_t unnamed_stale;  /* bit i: backends[i] holds an unnamed statement older than the
                                client's, made on a shared backend since */
    /* statements of the session that may make a name stand for another object (CL_NAMES)
     * so far: a backend that kept statements before the last one closes them at their next
     * use (struct backend.names_gen) */
    uint32_t names_gen;
    int names_node; /* -1, or the node a CL_NAMES statement was sent to: once that backend's
                       answers are in and it is outside a transaction, the other sessions'
                       backends plan what they keep anew (proxy_names_committed) */
    struct cancel_wait *cancel_wait; /* CLIENT_CANCELLING: the request's, which points back */
};

/* Where a client's TLS stands: none; handshake under way (handshake bytes only, each way);
 * established (every byte goes through c->tls). */
enum client_tls_phase { CTLS_NONE = 0, CTLS_HANDSHAKE, CTLS_UP };

/* How a deferred BEGIN came, and goes to the node: a Query; parsed as the unnamed statement and
 * run; a named statement of the session, run. */
enum { HELD_QUERY, HELD_PARSED, HELD_NAMED };

/* Accept callback helper: set up a client on the connection waiting on `server`, on this
 * worker, or on the worker that has the fewest clients when that one has fewer than this
 * (the kernel spreads connections over the SO_REUSEPORT listeners by a hash, unevenly when
 * there are few: 8 clients over 2 workers were often 6 and 2). */
void client_accept(struct proxy *px, uv_stream_t *server);
/* Close a client: sends ErrorResponse(sqlstate, message) first when sqlstate is not NULL,
 * logs `reason`, closes its backends, frees memory in the close callback. Idempotent. */
void client_close(struct client *c, const char *sqlstate, const char *reason);
/* Forget every secret auth_query found (a reload; the end). Any thread. */
void client_auth_cache_clear(struct proxy_shared *sh);
/* Queue bytes for the client / send them. */
int client_queue(struct client *c, const void *p, size_t n);
void client_flush(struct client *c);
/* Continue processing buffered input (after a stall ends or a backend became ready). */
void client_process(struct client *c);

/* Called by backend.c. */
void client_backend_ready(struct client *c, struct backend *b);
/* Backend to `node` failed and is closed already; it owed the client `owed_ready`
 * ReadyForQuery messages (and other responses when owed_any): each such unit gets an
 * ErrorResponse(sqlstate, message) and its ReadyForQuery, but the first when `answered` (an
 * error of the node's came for it already). */
void client_backend_failed(struct client *c, int node, const char *sqlstate, const char *message,
                           bool owed_any, size_t owed_ready, bool answered);
/* A response message from backend b for the client; returns 0 or -1 when the client closed. */
void client_on_ready_for_query(struct client *c, struct backend *b, char status,
                               const struct expect *e);
/* The node entered copy-in for the client (CopyInResponse), from an Execute when extended. */
void client_on_copy_in(struct client *c, struct backend *b, bool extended);
/* A retryable read was refused by a replica and its answers swallowed, or its backend there
 * could not log in: run it on the primary. `why` (static text) goes to the log. */
void client_retry_on_primary(struct client *c, const char *why);
/* The retryable read got an answer the client may see: send what was held back. */
void client_retry_settled(struct client *c);
/* The replica backend for which c kept its extended read batch (login_batch) could not log
 * in, and nothing else was owed there: route the batch again, as if it came now (the failed
 * node is off reads for a while). Called from backend.c after the backend is closed. */
void client_retry_batch(struct client *c, int node, const char *why);

/* The monitor published a new snapshot: clients waiting for one may go on. */
void client_on_snapshot(struct client *c);

/* ---- proxy.c ---- */
int64_t proxy_now_ms(void);
/* Run fn(w, arg) for every worker w, one after the other, on w's own thread, waiting for each
 * to return: worker 0 (the caller) runs it directly. Once a worker's loop has ended, fn runs
 * on the caller's thread (the worker's data no longer changes); fns check px->loop_done
 * before touching handles. Worker 0's thread only: it is the only thread that ever waits for
 * another worker, so waits cannot form a cycle. */
void proxy_each(struct proxy *px0, proxy_fn fn, void *arg);
/* Queue fn(w, arg) to run on worker w's thread soon, and return at once. Any thread. fn owns
 * arg. Returns 0, or -1 when the call cannot be queued (out of memory), in which case fn is
 * not run and arg stays the caller's. If w's loop ends first, fn runs with w->loop_done set. */
int proxy_post(struct proxy *w, proxy_fn fn, void *arg);
/* proxy_post in two steps, for a call that must not fail when it is time to make it: the call
 * made beforehand (NULL when out of memory; free it with free() if never posted), then posted,
 * which cannot fail and hands the call to w. */
struct proxy_call *proxy_call_new(proxy_fn fn, void *arg);
void proxy_post_call(struct proxy *w, struct proxy_call *call);
/* A statement of one of px's sessions that may make a name stand for another object
 * (CL_NAMES) has committed (or ended) on `node`: every worker's backends there plan what they
 * keep anew at its next use, and those on the other nodes once the newest monitor round shows
 * that node has replayed it. Loop thread of px. */
void proxy_names_committed(struct proxy *px, int node);
/* Mark a node as failed by the loop for a short time (no reads go there). */
void proxy_node_failed(struct proxy *px, int node);
/* Initialise the handle at h, the union of a uv_tcp_t and a uv_pipe_t in struct backend and
 * struct client, as the kind that reaches `addr`: a uv_pipe_t for AF_UNIX, a uv_tcp_t
 * otherwise. The caller closes it with uv_close as usual. */
void proxy_stream_init(uv_loop_t *loop, void *h, const struct sockaddr_storage *addr);
/* Start connecting h (initialised by proxy_stream_init with the same addr) to addr. Returns 0,
 * and cb runs once with the outcome, or a libuv error code, and cb does not run. */
int proxy_stream_connect(uv_connect_t *req, void *h, const struct sockaddr_storage *addr,
                         uv_connect_cb cb);
/* Set up a connected TCP handle (a client's, a backend's, an admin connection's): no Nagle
 * delay, and TCP keepalive as cfg says (tcp_keepalive and its timings), so that a peer that
 * vanished without closing is noticed. Best effort: an option the kernel refuses stays at its
 * default (logged at debug). Options apply to this socket only; a reload changes them for
 * connections made after it. */
void proxy_tcp_tune(uv_tcp_t *h, const struct config *cfg);

/* Called by the read callbacks with every input: with busy_poll_us set, keep the loop polling
 * instead of sleeping for that long after it. Hot path: a load and a branch when off. */
void proxy_poll_start(struct proxy *px);
static inline void proxy_note_input(struct proxy *px)
{
    if (px->poll_ns) {
        if (uv_is_active((uv_handle_t *)&px->poll_idle)) {
            px->poll_input = true;
            px->busy_poll_reads += !px->poll_fresh;
        } else {
            proxy_poll_start(px);
        }
    }
}

#endif
