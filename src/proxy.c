/* SPDX-License-Identifier: MIT */
/* The event loops' process-wide parts: the workers and the calls between them, the client
 * listeners, the monitor's wake-ups, signals, configuration reload and shutdown. */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <time.h>

#include "admin.h"
#include "affinity.h"
#include "log.h"
#include "proxy_main.h"

#define NODE_FAIL_HOLD_MS 1000

static int resolve(const char *host, int port, struct sockaddr_storage *out);

/* The configuration proxy_run was given: main owns and frees it; configurations loaded by a
 * reload are owned here. */
static struct config *boot_cfg;

int64_t proxy_now_ms(void)
{
    return (int64_t)(uv_hrtime() / 1000000);
}

static bool same_text(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

void proxy_node_failed(struct proxy *px, int node)
{
    /* Until the monitor's next rounds say otherwise, keep reads off a node we just failed to
     * use, so one dead replica costs one error, not one per statement. */
    px->nodes[node].failed_until_ms = proxy_now_ms() + NODE_FAIL_HOLD_MS;
    /* The pooled backends there are likely broken too: the next client opens a fresh one. */
    backend_pool_flush(px, node);
}

void proxy_names_committed(struct proxy *px, int node)
{
    if (node < 0 || node >= CONFIG_MAX_NODES)
        return;
    atomic_fetch_add_explicit(&px->shared->names_gen[node], 1, memory_order_relaxed);
    /* The others wait for the monitor: a later commit's position covers an earlier one. */
    uint32_t all = px->cfg->nnodes >= 32 ? UINT32_MAX : (1u << px->cfg->nnodes) - 1u;
    px->names_wait |= all & ~(1u << node);
    px->names_at_ns = uv_hrtime();
    px->names_lsn = LSN_INVALID;
}

/* The replicas that px's sessions' CL_NAMES statements wait for, given snapshot s. */
static void names_on_snapshot(struct proxy *px, const struct monitor_snapshot *s)
{
    if (px->names_lsn == LSN_INVALID) {
        if (s->primary_lsn == LSN_INVALID || (uint64_t)s->primary_sampled_ns <= px->names_at_ns)
            return;
        px->names_lsn = s->primary_lsn; /* sampled after the commit: it covers it */
    }
    for (size_t i = 0; i < 32; i++) {
        if (!(px->names_wait & (1u << i)))
            continue;
        if (i >= s->nnodes) {
            px->names_wait &= ~(1u << i); /* (gone from the configuration) */
        } else if (s->nodes[i].replay_lsn >= px->names_lsn) {
            atomic_fetch_add_explicit(&px->shared->names_gen[i], 1, memory_order_relaxed);
            px->names_wait &= ~(1u << i);
        }
    }
}

/* ---- calls between workers ---- */

struct proxy_call {
    struct proxy_call *next;
    proxy_fn fn;
    void *arg;
    bool sync; /* a caller waits on calls_cond until done; the call is on its stack */
    bool done;
};

/* Append to the queue (FIFO, so that a snapshot and a later reload apply in order). Called with
 * calls_lock held; wakes the worker's loop unless its wake-up handle is closing. */
static void calls_push(struct proxy *w, struct proxy_call *call)
{
    struct proxy_call **tail = &w->calls;
    while (*tail)
        tail = &(*tail)->next;
    *tail = call;
    /* Under the lock: the worker sets calls_closed under it before closing the handle. */
    if (!w->calls_closed)
        uv_async_send(&w->calls_async);
}

static void calls_run(struct proxy *px)
{
    pthread_mutex_lock(&px->calls_lock);
    struct proxy_call *list = px->calls;
    px->calls = NULL;
    pthread_mutex_unlock(&px->calls_lock);
    while (list) {
        struct proxy_call *call = list;
        list = call->next; /* a sync call is gone once done is set */
        call->fn(px, call->arg);
        if (call->sync) {
            pthread_mutex_lock(&px->calls_lock);
            call->done = true;
            pthread_cond_broadcast(&px->calls_cond);
            pthread_mutex_unlock(&px->calls_lock);
        } else {
            free(call);
        }
    }
}

static void on_calls(uv_async_t *a)
{
    calls_run(a->data);
}

void proxy_each(struct proxy *px0, proxy_fn fn, void *arg)
{
    struct proxy_shared *sh = px0->shared;
    for (int i = 0; i < sh->nworkers; i++) {
        struct proxy *w = sh->workers[i];
        if (w == px0) {
            fn(w, arg);
            continue;
        }
        struct proxy_call call = {.fn = fn, .arg = arg, .sync = true};
        pthread_mutex_lock(&w->calls_lock);
        if (w->loop_done) {
            pthread_mutex_unlock(&w->calls_lock);
            fn(w, arg);
            continue;
        }
        calls_push(w, &call);
        while (!call.done)
            pthread_cond_wait(&w->calls_cond, &w->calls_lock);
        pthread_mutex_unlock(&w->calls_lock);
    }
}

struct proxy_call *proxy_call_new(proxy_fn fn, void *arg)
{
    struct proxy_call *call = calloc(1, sizeof(*call));
    if (call == NULL)
        return NULL;
    call->fn = fn;
    call->arg = arg;
    return call;
}

void proxy_post_call(struct proxy *w, struct proxy_call *call)
{
    pthread_mutex_lock(&w->calls_lock);
    if (w->loop_done) {
        pthread_mutex_unlock(&w->calls_lock);
        proxy_fn fn = call->fn;
        void *arg = call->arg;
        free(call);
        fn(w, arg);
        return;
    }
    calls_push(w, call);
    pthread_mutex_unlock(&w->calls_lock);
}

int proxy_post(struct proxy *w, proxy_fn fn, void *arg)
{
    struct proxy_call *call = proxy_call_new(fn, arg);
    if (call == NULL)
        return -1;
    proxy_post_call(w, call);
    return 0;
}

/* Whether every worker but px0 has ended its loop. */
static bool others_done(struct proxy *px0)
{
    bool done = true;
    for (int i = 0; i < px0->shared->nworkers && done; i++) {
        struct proxy *w = px0->shared->workers[i];
        if (w == px0)
            continue;
        pthread_mutex_lock(&w->calls_lock);
        done = w->loop_done;
        pthread_mutex_unlock(&w->calls_lock);
    }
    return done;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct proxy *px = server->data;
    if (status < 0) {
        log_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    client_accept(px, server);
}

static void drain_sweep(struct proxy *px);

/* A replica that was up and is not any more was evicted from reads: count it for alerts. */
static void count_evictions(struct proxy *px, const struct monitor_snapshot *old,
                            const struct monitor_snapshot *s)
{
    if (old == NULL)
        return;
    for (size_t i = 0; i < s->nnodes && i < old->nnodes; i++) {
        if ((int)i != px->cfg->primary && old->nodes[i].state == LAG_UP &&
            s->nodes[i].state != LAG_UP)
            px->nodes[i].evictions++;
    }
}

/* Take snapshot s (owned from now on) as the worker's newest. */
static void apply_snapshot(struct proxy *px, struct monitor_snapshot *s)
{
    if (px->worker == 0)
        count_evictions(px, px->snap, s); /* once for the process */
    free(px->snap);
    px->snap = s;
    /* A replica that joins the eligible set (back from eviction, or added by a reload) starts a
     * new epoch: sessions that keep a replica (read_balance: session) pick again, so the load
     * spreads back over it. Leaving the set needs nothing: those sessions move on their own. */
    uint32_t mask = 0;
    for (size_t i = 0; i < s->nnodes && i < 32; i++)
        mask |= s->nodes[i].eligible ? 1u << i : 0u;
    if (mask & ~px->eligible_mask) {
        px->eligible_epoch++;
        /* The monitor's word that a replica is back outweighs the loop's short hold after a
         * failed backend, which could otherwise make every session pick around it. */
        for (size_t i = 0; i < s->nnodes && i < 32; i++) {
            if (mask & ~px->eligible_mask & (1u << i))
                px->nodes[i].failed_until_ms = 0;
        }
    }
    px->eligible_mask = mask;
    if (px->names_wait)
        names_on_snapshot(px, s);
    /* A node the monitor cannot reach keeps no pooled backends: they would fail their client's
     * first statement, where a new connection after the node's return would not. */
    for (size_t i = 0; i < s->nnodes && i < CONFIG_MAX_NODES; i++) {
        bool down = (int)i == px->cfg->primary ? !s->primary_up : s->nodes[i].state == LAG_DOWN;
        if (down && px->pool[i])
            backend_pool_flush(px, (int)i);
        if (down && px->shared_be[i] && px->shared_be[i]->exp_count == 0)
            backend_close(px->shared_be[i]);
    }
    drain_sweep(px);
    for (struct client *c = px->clients, *next; c; c = next) {
        next = c->next;
        if (c->wait_snapshot || c->write_done_ns != 0)
            client_on_snapshot(c);
    }
}

static void snapshot_call(struct proxy *px, void *arg)
{
    if (px->loop_done) {
        free(arg);
        return;
    }
    apply_snapshot(px, arg);
}

/* The monitor published a round: worker 0 takes it and gives every other worker a copy. */
static void on_monitor_wakeup(uv_async_t *a)
{
    struct proxy *px = a->data;
    struct monitor_snapshot *s = monitor_take(px->monitor);
    if (s == NULL)
        return;
    for (int i = 0; i < px->shared->nworkers; i++) {
        struct proxy *w = px->shared->workers[i];
        if (w == px)
            continue;
        struct monitor_snapshot *copy = malloc(sizeof(*copy));
        if (copy == NULL) {
            log_warn("out of memory: worker %d misses monitor round %llu", i,
                     (unsigned long long)s->round);
            continue;
        }
        memcpy(copy, s, sizeof(*copy));
        if (proxy_post(w, snapshot_call, copy) < 0)
            free(copy);
    }
    apply_snapshot(px, s);
}

/* ---- configuration reload ---- */

/* A backend opened before a reload to a node whose address changed, or that the new
 * configuration dropped: closed as soon as it is idle, so that the session's next statement
 * opens a fresh one (to the new address) and its open transaction, if any, ends undisturbed. */
struct drain_entry {
    uint32_t client_id;
    int node;
    struct backend *b;
};

static void drain_add(struct proxy *px, int node)
{
    for (struct client *c = px->clients; c; c = c->next) {
        struct backend *b = c->backends[node];
        if (b == NULL || c->state == CLIENT_CLOSING)
            continue;
        if (px->ndrains == px->drains_cap) {
            size_t cap = px->drains_cap ? 2 * px->drains_cap : 16;
            struct drain_entry *d = realloc(px->drains, cap * sizeof(*d));
            if (d == NULL) {
                log_warn("reload: out of memory; a backend to node %d is kept", node);
                return;
            }
            px->drains = d;
            px->drains_cap = cap;
        }
        px->drains[px->ndrains++] = (struct drain_entry){c->id, node, b};
    }
}

static bool backend_idle(const struct client *c, const struct backend *b, int node)
{
    return c->state == CLIENT_READY && b->state == BACKEND_READY && c->tx_node != node &&
           c->batch_node != node && b->exp_count == 0 && buf_avail(&b->out) == 0 &&
           !b->write_pending;
}

static void drain_sweep(struct proxy *px)
{
    size_t j = 0;
    for (size_t i = 0; i < px->ndrains; i++) {
        struct drain_entry d = px->drains[i];
        struct client *c = px->clients;
        while (c && c->id != d.client_id)
            c = c->next;
        /* Gone, or the backend was closed meanwhile (a new one may sit in the slot). */
        if (c == NULL || c->state == CLIENT_CLOSING || c->backends[d.node] != d.b)
            continue;
        if (backend_idle(c, d.b, d.node)) {
            log_debug("client %u: closing its backend to node %s after the reload", c->id,
                      px->cfg->nodes[d.node].name);
            backend_close(d.b);
            continue;
        }
        px->drains[j++] = d;
    }
    px->ndrains = j;
}

static void worker_router_init(struct proxy *px);

/* The TLS contexts a configuration asks for, each NULL when its mode is disable. */
struct tls_set {
    struct tls_ctx *nodes;   /* server_tls */
    struct tls_ctx *clients; /* client_tls */
    struct tls_ctx *admin;   /* admin_tls */
};

static void tls_set_unref(struct tls_set *t)
{
    tls_ctx_unref(t->nodes);
    tls_ctx_unref(t->clients);
    tls_ctx_unref(t->admin);
    *t = (struct tls_set){NULL, NULL, NULL};
}

/* Make cfg's TLS contexts into *t (reading its files: start-up or a reload). Returns 0, or -1
 * with none made and why in err. */
static int tls_set_new(const struct config *cfg, struct tls_set *t, char *err, size_t cap)
{
    *t = (struct tls_set){NULL, NULL, NULL};
    t->nodes = tls_ctx_new(&cfg->server_tls, err, cap);
    if (t->nodes == NULL && err[0])
        return -1;
    t->clients = tls_server_ctx_new(&cfg->client_tls, err, cap);
    if (t->clients == NULL && err[0]) {
        tls_set_unref(t);
        return -1;
    }
    t->admin = tls_admin_ctx_new(&cfg->admin_tls, err, cap);
    if (t->admin == NULL && err[0]) {
        tls_set_unref(t);
        return -1;
    }
    return 0;
}

/* What a reload changes in every worker, decided by worker 0. */
struct reload_plan {
    struct config *nc;
    size_t nslots, old_nnodes;
    int occupant[CONFIG_MAX_NODES * 2]; /* index in nc->nodes of the node in each slot, or -1 */
    bool fresh[CONFIG_MAX_NODES], moved[CONFIG_MAX_NODES];
    struct sockaddr_storage addrs[CONFIG_MAX_NODES]; /* for fresh and moved slots */
    struct tls_ctx *tls;                             /* server_tls; NULL when off */
    struct tls_ctx *client_tls;                      /* client_tls; NULL when off */
};

/* Take a reload's new configuration in worker px, on its own thread. */
static void reload_apply(struct proxy *px, void *arg)
{
    const struct reload_plan *plan = arg;
    /* Pooled backends logged in under the old configuration (addresses, passwords) go. */
    if (!px->loop_done)
        backend_pool_flush(px, -1);
    for (size_t s = 0; s < plan->nslots; s++) {
        struct node_rt *rt = &px->nodes[s];
        if (plan->occupant[s] < 0) {
            if (!rt->removed && !px->loop_done)
                drain_add(px, (int)s);
            rt->removed = true;
            continue;
        }
        if (plan->fresh[s]) {
            memset(rt, 0, sizeof(*rt));
            rt->addr = plan->addrs[s];
        } else if (plan->moved[s]) {
            rt->addr = plan->addrs[s];
            rt->failed_until_ms = 0;
            if (!px->loop_done)
                drain_add(px, (int)s);
        }
        rt->removed = false;
    }
    for (size_t s = plan->nslots; s < plan->old_nnodes; s++)
        memset(&px->nodes[s], 0, sizeof(px->nodes[s]));
    /* Until the new monitor's first round, the last snapshot stands for the nodes it knew;
     * new, reused and dropped slots are not read from. */
    if (px->snap) {
        for (size_t s = 0; s < plan->nslots; s++) {
            if (s < px->snap->nnodes && plan->occupant[s] >= 0 && !plan->fresh[s] &&
                !plan->moved[s])
                continue;
            struct node_status *ns = &px->snap->nodes[s];
            memset(ns, 0, sizeof(*ns));
            ns->state = LAG_DOWN;
            snprintf(ns->reason, sizeof(ns->reason), "not checked yet");
        }
        px->snap->nnodes = plan->nslots;
    }
    px->cfg = plan->nc;
    /* New connections to the nodes use the new TLS settings; open ones keep theirs. */
    if (!px->loop_done) {
        tls_ctx_unref(px->tls);
        px->tls = tls_ctx_ref(plan->tls);
        /* New clients get the new certificate and mode; connected ones keep theirs. */
        tls_ctx_unref(px->client_tls);
        px->client_tls = tls_ctx_ref(plan->client_tls);
    }
    px->poll_ns = (uint64_t)plan->nc->busy_poll_us * 1000; /* a running poll ends by itself */
    px->cfg_gen++; /* write_functions may have changed: classify again */
    px->wfuncs.names = (const char *const *)plan->nc->write_functions;
    px->wfuncs.count = plan->nc->nwrite_functions;
    worker_router_init(px);
    if (!px->loop_done) {
        drain_sweep(px);
        backend_shared_trim(px, false); /* made under the old configuration: idle ones go */
    }
}

/* A fresh round robin for worker px, starting on its own replica (see router_head_start). */
static void worker_router_init(struct proxy *px)
{
    router_init(&px->router);
    int replicas[CONFIG_MAX_NODES], n = 0;
    for (size_t i = 0; i < px->cfg->nnodes && i < CONFIG_MAX_NODES; i++) {
        if ((int)i != px->cfg->primary && px->cfg->nodes[i].role == NODE_REPLICA &&
            px->cfg->nodes[i].weight > 0)
            replicas[n++] = (int)i;
    }
    if (n > 1)
        router_head_start(&px->router, replicas[px->worker % n]);
}

/* Backends open to each node slot, summed over the workers. */
static void count_backends(struct proxy *px, void *arg)
{
    uint64_t *counts = arg;
    for (int i = 0; i < CONFIG_MAX_NODES; i++)
        counts[i] += px->nodes[i].backends;
}

static int reload_reject(struct proxy *px, char *errors, char **out)
{
    px->reload_failures++;
    log_error("configuration reload failed; keeping the current configuration");
    for (char *line = errors, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        log_error("reload: %.*s", nl ? (int)(nl - line) : (int)strlen(line), line);
    }
    *out = errors;
    return -1;
}

static char *xstrdup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int proxy_reload(struct proxy *px, char **errors)
{
    *errors = NULL;
    struct config *old = px->cfg;
    if (px->shutting_down)
        return reload_reject(px, strdup("pgsteer is shutting down\n"), errors);
    char *err = NULL;
    struct config *nc = config_load(old->path, &err);
    if (nc == NULL)
        return reload_reject(px, err ? err : strdup("cannot load the configuration\n"), errors);
    free(err);

    /* Place each new node: the slot of the node with its name, else a slot nobody uses any
     * more, else a new slot at the end. A dropped node that a session still uses keeps its
     * slot as a weight-0 replica (no new work goes there) until a later reload. */
    int slot_of[CONFIG_MAX_NODES];
    int occupant[CONFIG_MAX_NODES * 2];
    uint64_t backends[CONFIG_MAX_NODES] = {0};
    proxy_each(px, count_backends, backends);
    bool taken[CONFIG_MAX_NODES] = {false};
    for (size_t j = 0; j < nc->nnodes; j++) {
        slot_of[j] = -1;
        for (size_t i = 0; i < old->nnodes; i++) {
            if (strcmp(old->nodes[i].name, nc->nodes[j].name) == 0) {
                slot_of[j] = (int)i;
                taken[i] = true;
            }
        }
    }
    size_t nslots = old->nnodes;
    for (size_t j = 0; j < nc->nnodes; j++) {
        if (slot_of[j] >= 0)
            continue;
        for (size_t i = 0; i < old->nnodes && slot_of[j] < 0; i++) {
            if (!taken[i] && backends[i] == 0) {
                slot_of[j] = (int)i;
                taken[i] = true;
            }
        }
        if (slot_of[j] < 0)
            slot_of[j] = (int)nslots++;
    }
    for (size_t s = 0; s < nslots; s++)
        occupant[s] = -1;
    for (size_t j = 0; j < nc->nnodes; j++)
        occupant[slot_of[j]] = (int)j;
    while (nslots > 0 && occupant[nslots - 1] < 0 && backends[nslots - 1] == 0)
        nslots--;
    if (nslots > CONFIG_MAX_NODES) {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "%s: %zu nodes plus dropped nodes still in use exceed %d; retry when their "
                 "sessions have ended\n",
                 old->path, nc->nnodes, CONFIG_MAX_NODES);
        config_free(nc);
        return reload_reject(px, strdup(msg), errors);
    }

    /* Resolve the addresses of new and moved nodes before changing anything. */
    struct sockaddr_storage addrs[CONFIG_MAX_NODES];
    bool fresh[CONFIG_MAX_NODES] = {false}, moved[CONFIG_MAX_NODES] = {false};
    for (size_t s = 0; s < nslots; s++) {
        if (occupant[s] < 0)
            continue;
        const struct config_node *n = &nc->nodes[occupant[s]];
        fresh[s] = s >= old->nnodes || strcmp(old->nodes[s].name, n->name) != 0;
        moved[s] = !fresh[s] &&
                   (strcmp(old->nodes[s].host, n->host) != 0 || old->nodes[s].port != n->port);
        if ((fresh[s] || moved[s]) && resolve(n->host, n->port, &addrs[s]) < 0) {
            char msg[400];
            snprintf(msg, sizeof(msg), "%s: node %s: cannot resolve host %s\n", old->path, n->name,
                     n->host);
            config_free(nc);
            return reload_reject(px, strdup(msg), errors);
        }
    }

    /* The new node array, in slot order. */
    struct config_node *arr = calloc(nslots ? nslots : 1, sizeof(*arr));
    bool oom = arr == NULL;
    for (size_t s = 0; s < nslots && !oom; s++) {
        if (occupant[s] >= 0)
            continue;
        const struct config_node *o = &old->nodes[s];
        arr[s] = *o;
        arr[s].role = NODE_REPLICA;
        arr[s].weight = 0;
        arr[s].name = strdup(o->name);
        arr[s].host = strdup(o->host);
        arr[s].monitor_host = xstrdup_or_null(o->monitor_host);
        oom = !arr[s].name || !arr[s].host || (o->monitor_host && !arr[s].monitor_host);
    }
    if (oom) {
        for (size_t s = 0; arr && s < nslots; s++) {
            if (occupant[s] < 0) {
                free(arr[s].name);
                free(arr[s].host);
                free(arr[s].monitor_host);
            }
        }
        free(arr);
        config_free(nc);
        return reload_reject(px, strdup("out of memory\n"), errors);
    }
    for (size_t s = 0; s < nslots; s++) {
        if (occupant[s] >= 0)
            arr[s] = nc->nodes[occupant[s]];
    }
    nc->primary = slot_of[nc->primary];
    free(nc->nodes);
    nc->nodes = arr;
    nc->nnodes = nslots;

    char tls_err[400];
    struct tls_set tls;
    if (tls_set_new(nc, &tls, tls_err, sizeof(tls_err)) < 0) {
        char msg[500];
        snprintf(msg, sizeof(msg), "%s: %s\n", old->path, tls_err);
        config_free(nc);
        return reload_reject(px, strdup(msg), errors);
    }
    struct monitor *nm = monitor_new(nc, &px->monitor_wakeup);
    if (nm == NULL) {
        tls_set_unref(&tls);
        config_free(nc);
        return reload_reject(px, strdup("cannot create the monitor for the new nodes\n"), errors);
    }

    /* Commit. No other thread runs between monitor_free and monitor_start. */
    if (strcmp(old->listen.host, nc->listen.host) != 0 || old->listen.port != nc->listen.port ||
        strcmp(old->admin_listen.host, nc->admin_listen.host) != 0 ||
        old->admin_listen.port != nc->admin_listen.port || old->workers != nc->workers ||
        px->shared->cpu_affinity != nc->cpu_affinity ||
        !same_text(old->unix_socket_dir, nc->unix_socket_dir)) {
        log_warn("reload: listen, unix_socket_dir, admin_listen, workers and cpu_affinity keep "
                 "their old values until a restart");
        /* The new configuration states what is in use (SHOW CONFIG, the next reload's check). */
        char *dir = old->unix_socket_dir ? strdup(old->unix_socket_dir) : NULL;
        if (dir != NULL || old->unix_socket_dir == NULL) {
            free(nc->unix_socket_dir);
            nc->unix_socket_dir = dir;
        }
        nc->listen = old->listen;
        nc->admin_listen = old->admin_listen;
        nc->workers = old->workers;
        nc->cpu_affinity = px->shared->cpu_affinity;
    }
    monitor_free(px->monitor);
    px->monitor = nm;
    int level = log_parse_level(nc->log_level ? nc->log_level : "info");
    log_set_level(level < 0 ? LOG_INFO : (enum log_level)level);
    log_set_json(nc->log_json);
    if (monitor_start(nm) < 0)
        log_error("reload: cannot start the monitor thread; node states will not be updated");

    struct reload_plan plan = {.nc = nc,
                               .nslots = nslots,
                               .old_nnodes = old->nnodes,
                               .tls = tls.nodes,
                               .client_tls = tls.clients};
    memcpy(plan.occupant, occupant, sizeof(plan.occupant));
    memcpy(plan.fresh, fresh, sizeof(plan.fresh));
    memcpy(plan.moved, moved, sizeof(plan.moved));
    memcpy(plan.addrs, addrs, sizeof(plan.addrs));
    for (size_t s = 0; s < nslots; s++) {
        if (occupant[s] < 0 && !px->nodes[s].removed)
            log_info("reload: node %s dropped; its backends close when idle", arr[s].name);
        else if (occupant[s] >= 0 && fresh[s])
            log_info("reload: node %s added", arr[s].name);
        else if (occupant[s] >= 0 && moved[s])
            log_info("reload: node %s moved to %s:%d; its backends close when idle", arr[s].name,
                     arr[s].host, arr[s].port);
    }
    proxy_each(px, reload_apply, &plan);
    /* (each worker holds its own references; px serves the admin port, whose connections
     * accepted from now on get the new context) */
    tls_ctx_unref(px->admin_tls);
    px->admin_tls = tls_ctx_ref(tls.admin);
    tls_set_unref(&tls);
    pthread_mutex_lock(&px->shared->pick_lock);
    router_init(&px->shared->pick_router);
    pthread_mutex_unlock(&px->shared->pick_lock);
    /* (auth_query and its user may have changed) */
    client_auth_cache_clear(px->shared);
    /* Nothing points into the old configuration now: clients copied what they keep, the
     * monitor copies its part, and every other use goes through px->cfg. */
    if (old != boot_cfg)
        config_free(old);
    px->reloads++;
    log_info("configuration reloaded from %s: %zu nodes, %zu users", nc->path, nc->nnodes,
             nc->nusers);
    return 0;
}

static void close_all_clients(struct proxy *px, const char *reason)
{
    for (struct client *c = px->clients, *next; c; c = next) {
        next = c->next;
        client_close(c, "57P01", reason);
    }
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* One turn of the loop while polling: the idle handle keeps uv_run from sleeping. sched_yield
 * lets a runnable process on this CPU (PostgreSQL, the application) go first, so that polling
 * takes only time nobody else wants; with the CPU to itself the call returns at once. */
static void on_poll_idle(uv_idle_t *h)
{
    struct proxy *px = h->data;
    uint64_t now = uv_hrtime();
    px->poll_fresh = false;
    if (px->poll_input) {
        px->poll_input = false;
        px->poll_last = now;
    } else if (now - px->poll_last >= px->poll_ns) {
        uv_idle_stop(h);
        px->busy_poll_sleeps++;
    } else {
        sched_yield();
    }
}

void proxy_poll_start(struct proxy *px)
{
    if (px->stopping)
        return;
    px->poll_input = false;
    px->poll_fresh = true;
    px->poll_last = uv_hrtime();
    uv_idle_start(&px->poll_idle, on_poll_idle);
}

/* Close the worker's clients and every handle of its loop, so that the loop ends. Worker 0
 * also stops the admin interface and the monitor. A proxy_fn; idempotent. */
static void stop_worker(struct proxy *px, void *arg)
{
    (void)arg;
    if (px->stopping || px->loop_done)
        return;
    px->stopping = true;
    px->shutting_down = true;
    close_all_clients(px, "terminating connection due to administrator command");
    backend_pool_flush(px, -1);
    backend_shared_trim(px, true);
    if (px->worker == 0) {
        admin_stop(px);
        if (px->monitor) {
            monitor_free(px->monitor);
            px->monitor = NULL;
        }
    }
    pthread_mutex_lock(&px->calls_lock);
    px->calls_closed = true;
    pthread_mutex_unlock(&px->calls_lock);
    uv_walk(px->loop, close_walk_cb, NULL);
}

static void proxy_stop(struct proxy *px0)
{
    px0->shutting_down = true;
    proxy_each(px0, stop_worker, NULL);
}

static void shutdown_tick(uv_timer_t *t)
{
    struct proxy *px = t->data;
    /* Close each client once it is idle outside a transaction; the rest when time is up. */
    for (struct client *c = px->clients, *next; c; c = next) {
        next = c->next;
        bool busy =
            c->tx_status != 'I' || c->tx_node >= 0 || c->batch_node >= 0 || c->shared_owed > 0;
        for (int i = 0; i < CONFIG_MAX_NODES && !busy; i++)
            busy = c->backends[i] && c->backends[i]->fwd_outstanding > 0;
        if (!busy || c->state != CLIENT_READY)
            client_close(c, "57P01", "terminating connection due to administrator command");
    }
    backend_shared_trim(px, false); /* idle shared backends go (shutting_down makes them unfit) */
    bool timeout = proxy_now_ms() >= px->shutdown_deadline;
    if (px->worker != 0) {
        if (px->clients == NULL || timeout)
            stop_worker(px, NULL);
        return;
    }
    /* Worker 0 keeps the monitor and the admin interface until every worker is done. */
    if ((px->clients == NULL && others_done(px)) || timeout) {
        log_info("shutdown: %s",
                 px->clients || !others_done(px) ? "timeout, closing remaining clients" : "done");
        proxy_stop(px);
    }
}

/* How often login_tick looks: about four times per timeout, at most once a second (also when
 * off, so that a reload can turn it on). */
static uint64_t login_tick_ms(int timeout_ms)
{
    if (timeout_ms <= 0 || timeout_ms >= 4000)
        return 1000;
    return timeout_ms / 4 < 10 ? 10 : (uint64_t)timeout_ms / 4;
}

/* client_login_timeout_ms: close the clients still logging in (startup, TLS handshake,
 * authentication) that long after they were accepted. */
static void login_tick(uv_timer_t *t)
{
    struct proxy *px = t->data;
    int timeout = px->cfg->client_login_timeout_ms;
    uint64_t period = login_tick_ms(timeout);
    if (uv_timer_get_repeat(t) != period)
        uv_timer_set_repeat(t, period);
    if (timeout <= 0)
        return;
    int64_t now = proxy_now_ms();
    for (struct client *c = px->clients, *next; c; c = next) {
        next = c->next;
        if ((c->state != CLIENT_STARTUP && c->state != CLIENT_AUTH) ||
            now - c->accepted_ms < timeout)
            continue;
        px->login_timeouts++;
        if (c->tls_phase == CTLS_HANDSHAKE) {
            /* (nothing it could read: the handshake is not done) */
            log_info("client %u closed: TLS handshake not finished within "
                     "client_login_timeout_ms",
                     c->id);
            client_close(c, NULL, "TLS handshake timeout");
        } else {
            client_close(c, "57014", "canceling authentication due to timeout");
        }
    }
}

/* SIGTERM: stop accepting, let clients finish their transactions. A proxy_fn. */
static void drain_begin(struct proxy *px, void *arg)
{
    (void)arg;
    if (px->stopping || px->loop_done || px->shutdown_deadline != 0)
        return;
    px->shutting_down = true;
    backend_pool_flush(px, -1);
    uv_close((uv_handle_t *)&px->listener, NULL);
    if (px->has_unix_listener)
        uv_close((uv_handle_t *)&px->unix_listener, NULL);
    px->shutdown_deadline = proxy_now_ms() + px->cfg->shutdown_timeout_ms;
    uv_timer_init(px->loop, &px->shutdown_timer);
    px->shutdown_timer.data = px;
    uv_timer_start(&px->shutdown_timer, shutdown_tick, 0, 50);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct proxy *px = s->data;
    if (signum == SIGINT || (signum == SIGTERM && px->shutting_down)) {
        log_info("signal %d: closing all connections", signum);
        proxy_stop(px);
        return;
    }
    if (signum == SIGTERM) {
        log_info("SIGTERM: no new connections; waiting up to %d ms for transactions to finish",
                 px->cfg->shutdown_timeout_ms);
        proxy_each(px, drain_begin, NULL);
        return;
    }
    if (signum == SIGHUP) {
        log_info("SIGHUP: reloading %s", px->cfg->path);
        char *errors = NULL;
        (void)proxy_reload(px, &errors); /* the outcome is logged either way */
        free(errors);
    }
}

/* A host that is a directory (it starts with '/') names the node's Unix-domain socket in it,
 * as in libpq; anything else goes to getaddrinfo (blocking: startup and reload only). */
static int resolve(const char *host, int port, struct sockaddr_storage *out)
{
    if (host[0] == '/') {
        struct sockaddr_un *un = (struct sockaddr_un *)out;
        memset(out, 0, sizeof(*out));
        un->sun_family = AF_UNIX;
        return config_socket_path(host, port, un->sun_path, sizeof(un->sun_path));
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char ports[16];
    snprintf(ports, sizeof(ports), "%d", port);
    int rc = getaddrinfo(host, ports, &hints, &res);
    if (rc != 0 || res == NULL)
        return -1;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

void proxy_stream_init(uv_loop_t *loop, void *h, const struct sockaddr_storage *addr)
{
    if (addr->ss_family == AF_UNIX)
        uv_pipe_init(loop, h, 0);
    else
        uv_tcp_init(loop, h);
}

int proxy_stream_connect(uv_connect_t *req, void *h, const struct sockaddr_storage *addr,
                         uv_connect_cb cb)
{
    if (addr->ss_family == AF_UNIX) {
        /* Reports every failure, even an immediate one, through cb. */
        uv_pipe_connect(req, h, ((const struct sockaddr_un *)addr)->sun_path, cb);
        return 0;
    }
    return uv_tcp_connect(req, h, (const struct sockaddr *)addr, cb);
}

static void set_tcp_option(int fd, int level, int name, int value, const char *what)
{
    if (setsockopt(fd, level, name, &value, sizeof(value)) < 0)
        log_debug("setsockopt %s: %s", what, strerror(errno));
}

void proxy_tcp_tune(uv_tcp_t *h, const struct config *cfg)
{
    uv_tcp_nodelay(h, 1);
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)h, &fd) < 0)
        return;
    set_tcp_option(fd, SOL_SOCKET, SO_KEEPALIVE, cfg->tcp_keepalive, "SO_KEEPALIVE");
    if (!cfg->tcp_keepalive)
        return;
    set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPIDLE, cfg->tcp_keepalive_idle_s, "TCP_KEEPIDLE");
    set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPINTVL, cfg->tcp_keepalive_interval_s, "TCP_KEEPINTVL");
    set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPCNT, cfg->tcp_keepalive_count, "TCP_KEEPCNT");
}

/* SO_REUSEPORT lets any process of the same user bind the address too, so a second pgsteer
 * started by mistake would silently take half of the new connections. Before the workers
 * bind, try the address without it: that fails with UV_EADDRINUSE while anyone listens there
 * (SO_REUSEADDR, as libuv sets it, only lets it past connections in TIME_WAIT). A listener
 * that appears between this check and the workers' binds is not caught. */
static int port_taken(const struct sockaddr_storage *la)
{
    int fd = socket(la->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return uv_translate_sys_error(errno);
    int one = 1, rc = 0;
    socklen_t len =
        la->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)la, len) < 0 || listen(fd, 1) < 0)
        rc = uv_translate_sys_error(errno);
    close(fd);
    return rc;
}

/* Whether the socket file at `path` is stale: nobody answers on it (ECONNREFUSED), which is
 * what a process that did not exit cleanly leaves behind. Returns 1 when stale, 0 when a
 * server listens there (a connection, or EAGAIN: a full backlog), or a libuv error code when
 * it cannot tell, in which case the file must be left alone. */
static int unix_socket_stale(const char *path)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof(un.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return uv_translate_sys_error(errno);
    int rc = 0;
    if (connect(fd, (struct sockaddr *)&un, sizeof(un)) < 0 && errno != EAGAIN)
        rc = errno == ECONNREFUSED ? 1 : uv_translate_sys_error(errno);
    close(fd);
    return rc;
}

/* unix_socket_dir: worker 0 creates DIR/.s.PGSQL.<listen port>, open to every local user as
 * PostgreSQL's own socket is by default (clients still authenticate); libuv removes the file
 * when that handle closes. Unix-domain sockets have no SO_REUSEPORT, so every other worker
 * polls a duplicate of the same listening socket and whichever loop accepts first owns the
 * client. Returns 0, or -1 after logging why. */
static int unix_listen(struct proxy *px, const struct config *cfg)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (config_socket_path(cfg->unix_socket_dir, cfg->listen.port, path, sizeof(path)) < 0) {
        log_error("unix_socket_dir %s is too long for a socket path", cfg->unix_socket_dir);
        return -1;
    }
    int rc;
    uv_pipe_init(px->loop, &px->unix_listener, 0);
    px->unix_listener.data = px;
    px->has_unix_listener = true;
    if (px->worker == 0) {
        struct stat st;
        if (lstat(path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) {
                log_error("cannot listen on %s: the file exists and is not a socket", path);
                return -1;
            }
            int stale = unix_socket_stale(path);
            if (stale == 0) {
                log_error("cannot listen on %s: another server is listening there", path);
                return -1;
            }
            if (stale < 0) {
                log_error("cannot listen on %s: cannot tell whether a server listens there (%s)",
                          path, uv_strerror(stale));
                return -1;
            }
            log_info("removing %s, a stale socket file", path);
            unlink(path);
        }
        rc = uv_pipe_bind(&px->unix_listener, path);
        if (rc == 0 && chmod(path, 0777) < 0)
            rc = uv_translate_sys_error(errno);
    } else {
        uv_os_fd_t fd0;
        rc = uv_fileno((uv_handle_t *)&px->shared->workers[0]->unix_listener, &fd0);
        int fd = rc == 0 ? fcntl(fd0, F_DUPFD_CLOEXEC, 0) : -1;
        if (rc == 0 && fd < 0)
            rc = uv_translate_sys_error(errno);
        if (rc == 0 && (rc = uv_pipe_open(&px->unix_listener, fd)) < 0)
            close(fd);
    }
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&px->unix_listener, 1024, on_connection);
    if (rc < 0) {
        log_error("cannot listen on %s: %s", path, uv_strerror(rc));
        return -1;
    }
    return 0;
}

/* Set up worker px (memory zeroed by the caller) on `loop`, listening on `la`. Returns 0, or
 * -1 after logging why. */
static int worker_init(struct proxy *px, int index, struct proxy_shared *sh, uv_loop_t *loop,
                       struct config *cfg, const struct sockaddr_storage *la,
                       const struct sockaddr_storage *addrs)
{
    px->loop = loop;
    px->worker = index;
    px->shared = sh;
    px->cfg = cfg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    px->start_unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    px->start_ns = uv_hrtime();
    px->wfuncs.names = (const char *const *)cfg->write_functions;
    px->wfuncs.count = cfg->nwrite_functions;
    worker_router_init(px);
    /* Before the first monitor round every replica counts as eligible: start from that set,
     * so that the first round moves no session that keeps a replica. */
    for (size_t i = 0; i < cfg->nnodes && i < 32; i++) {
        if (cfg->nodes[i].role == NODE_REPLICA && cfg->nodes[i].weight > 0)
            px->eligible_mask |= 1u << i;
    }
    for (size_t i = 0; i < cfg->nnodes; i++)
        px->nodes[i].addr = addrs[i];
    pthread_mutex_init(&px->calls_lock, NULL);
    pthread_cond_init(&px->calls_cond, NULL);
    uv_async_init(loop, &px->calls_async, on_calls);
    px->calls_async.data = px;
    uv_idle_init(loop, &px->poll_idle);
    px->poll_idle.data = px;
    uv_prepare_init(loop, &px->shared_prepare);
    px->shared_prepare.data = px;
    uv_timer_init(loop, &px->login_timer);
    px->login_timer.data = px;
    uint64_t tick = login_tick_ms(cfg->client_login_timeout_ms);
    uv_timer_start(&px->login_timer, login_tick, tick, tick);
    uv_unref((uv_handle_t *)&px->login_timer); /* (housekeeping: keeps no loop alive) */
    px->poll_ns = (uint64_t)cfg->busy_poll_us * 1000;
    /* Several workers each listen on the same address with SO_REUSEPORT, and the kernel
     * spreads new connections over them. */
    uv_tcp_init_ex(loop, &px->listener, la->ss_family);
    px->listener.data = px;
    int rc = 0;
    if (sh->nworkers > 1 && index == 0)
        rc = port_taken(la);
    if (rc == 0 && sh->nworkers > 1) {
        uv_os_fd_t fd;
        int one = 1;
        rc = uv_fileno((uv_handle_t *)&px->listener, &fd);
        if (rc == 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
            rc = uv_translate_sys_error(errno);
    }
    if (rc == 0)
        rc = uv_tcp_bind(&px->listener, (const struct sockaddr *)la, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&px->listener, 1024, on_connection);
    if (rc < 0) {
        log_error("cannot listen on %s:%d: %s", cfg->listen.host, cfg->listen.port,
                  uv_strerror(rc));
        return -1;
    }
    if (cfg->unix_socket_dir != NULL)
        return unix_listen(px, cfg);
    return 0;
}

/* Free what a worker holds once its loop has ended. */
static void worker_free(struct proxy *px)
{
    free(px->snap);
    px->snap = NULL;
    tls_ctx_unref(px->tls);
    px->tls = NULL;
    tls_ctx_unref(px->client_tls);
    px->client_tls = NULL;
    tls_ctx_unref(px->admin_tls);
    px->admin_tls = NULL;
    free(px->drains);
    px->drains = NULL;
    px->ndrains = px->drains_cap = 0;
    buf_destroy(&px->simple_text);
    buf_destroy(&px->simple_error);
    while (px->params) {
        struct param_cache *n = px->params->next;
        free(px->params->key);
        free(px->params->msgs);
        free(px->params);
        px->params = n;
    }
}

/* The loop has ended: calls still queued run now, with loop_done set. */
static void worker_finish(struct proxy *px)
{
    pthread_mutex_lock(&px->calls_lock);
    px->loop_done = true;
    pthread_mutex_unlock(&px->calls_lock);
    calls_run(px);
}

/* Name the calling worker's thread and, with cpu_affinity: auto, pin it to its CPU. Worker 0
 * is the main thread, whose name is the process's (pgrep, killall): it keeps it. */
static void worker_thread_setup(int id, enum cpu_affinity affinity)
{
    if (id > 0) {
        char name[24]; /* ids are below CONFIG_MAX_WORKERS; thread_name_self keeps 15 bytes */
        snprintf(name, sizeof(name), "pgsteer-w%d", id);
        thread_name_self(name);
    }
    if (affinity != CPU_AFFINITY_AUTO)
        return;
    int cpu = affinity_pin_self(id);
    if (cpu < 0)
        log_warn("cpu_affinity: worker %d could not be pinned; it runs on any CPU", id);
    else
        log_info("cpu_affinity: worker %d runs on CPU %d", id, cpu);
}

static void *worker_main(void *arg)
{
    struct proxy *px = arg;
    worker_thread_setup(px->worker, px->shared->cpu_affinity);
    uv_run(px->loop, UV_RUN_DEFAULT);
    /* Everything is closed; run once more so close callbacks free their memory. */
    uv_run(px->loop, UV_RUN_DEFAULT);
    worker_finish(px);
    return NULL;
}

int proxy_run(struct config *cfg)
{
    static struct proxy px;
    static struct proxy_shared shared;
    memset(&px, 0, sizeof(px));
    memset(&shared, 0, sizeof(shared));
    boot_cfg = cfg;
    int n = cfg->workers;
    if (n <= 0) {
        /* One per CPU, but no more than a cgroup CPU limit allows (a container's CPU limit
         * leaves every CPU in the affinity mask). */
        n = (int)uv_available_parallelism();
        double quota = affinity_cpu_quota();
        if (quota > 0 && quota < n) {
            int q = (int)quota;
            n = q < quota ? q + 1 : q;
            log_info("workers: %d, for a cgroup CPU limit of %.2f CPUs", n, quota);
        }
    }
    if (cfg->cpu_affinity == CPU_AFFINITY_AUTO)
        affinity_init();
    if (n < 1)
        n = 1;
    if (n > CONFIG_MAX_WORKERS)
        n = CONFIG_MAX_WORKERS;
    /* (static: a start that fails half-way returns with the workers made so far unfreed, the
     * process about to exit, and they stay reachable rather than leaked) */
    static struct proxy *workers[CONFIG_MAX_WORKERS];
    workers[0] = &px;
    shared.workers = workers;
    shared.nworkers = n;
    shared.cpu_affinity = cfg->cpu_affinity;
    atomic_init(&shared.clients, 0);
    pthread_mutex_init(&shared.pick_lock, NULL);
    pthread_mutex_init(&shared.auth_lock, NULL);
    router_init(&shared.pick_router);

    struct sockaddr_storage addrs[CONFIG_MAX_NODES];
    for (size_t i = 0; i < cfg->nnodes; i++) {
        if (resolve(cfg->nodes[i].host, cfg->nodes[i].port, &addrs[i]) < 0) {
            log_error("node %s: cannot resolve host %s", cfg->nodes[i].name, cfg->nodes[i].host);
            return 1;
        }
    }
    struct sockaddr_storage la;
    if (resolve(cfg->listen.host, cfg->listen.port, &la) < 0) {
        log_error("cannot resolve listen address %s", cfg->listen.host);
        return 1;
    }
    char tls_err[400];
    static struct tls_set tls; /* (static: still reachable when a start fails below) */
    if (tls_set_new(cfg, &tls, tls_err, sizeof(tls_err)) < 0) {
        log_error("%s", tls_err);
        return 1;
    }
    px.admin_tls = tls_ctx_ref(tls.admin);
    for (int i = 1; i < n; i++) {
        workers[i] = calloc(1, sizeof(struct proxy));
        if (workers[i] == NULL || uv_loop_init(&workers[i]->own_loop) < 0) {
            log_error("out of memory starting worker %d", i);
            return 1;
        }
    }
    for (int i = 0; i < n; i++) {
        uv_loop_t *loop = i == 0 ? uv_default_loop() : &workers[i]->own_loop;
        workers[i]->tls = tls_ctx_ref(tls.nodes);
        workers[i]->client_tls = tls_ctx_ref(tls.clients);
        if (worker_init(workers[i], i, &shared, loop, cfg, &la, addrs) < 0)
            return 1;
    }
    tls_set_unref(&tls); /* (each worker holds its own references) */
    if (cfg->has_admin_listen && admin_start(&px) < 0)
        return 1;
    uv_async_init(px.loop, &px.monitor_wakeup, on_monitor_wakeup);
    px.monitor_wakeup.data = &px;
    px.monitor = monitor_new(cfg, &px.monitor_wakeup);
    if (px.monitor == NULL || monitor_start(px.monitor) < 0) {
        log_error("cannot start the monitor thread");
        return 1;
    }
    uv_signal_init(px.loop, &px.sigint);
    uv_signal_init(px.loop, &px.sigterm);
    uv_signal_init(px.loop, &px.sighup);
    px.sigint.data = px.sigterm.data = px.sighup.data = &px;
    uv_signal_start(&px.sigint, on_signal, SIGINT);
    uv_signal_start(&px.sigterm, on_signal, SIGTERM);
    uv_signal_start(&px.sighup, on_signal, SIGHUP);
    for (int i = 1; i < n; i++) {
        int rc = pthread_create(&workers[i]->thread, NULL, worker_main, workers[i]);
        if (rc != 0) {
            log_error("cannot start worker thread %d: %s", i, strerror(rc));
            return 1;
        }
    }
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)] = "";
    if (cfg->unix_socket_dir != NULL)
        config_socket_path(cfg->unix_socket_dir, cfg->listen.port, sock, sizeof(sock));
    log_info("pgsteer listening on %s:%d%s%s with %zu nodes and %d worker%s", cfg->listen.host,
             cfg->listen.port, sock[0] ? " and " : "", sock, cfg->nnodes, n, n == 1 ? "" : "s");
    worker_thread_setup(0, shared.cpu_affinity);
    uv_run(px.loop, UV_RUN_DEFAULT);
    uv_run(px.loop, UV_RUN_DEFAULT);
    worker_finish(&px);
    for (int i = 1; i < n; i++) {
        pthread_join(workers[i]->thread, NULL);
        uv_loop_close(&workers[i]->own_loop);
        worker_free(workers[i]);
    }
    struct config *last = px.cfg;
    worker_free(&px);
    for (int i = 0; i < n; i++) {
        pthread_mutex_destroy(&workers[i]->calls_lock);
        pthread_cond_destroy(&workers[i]->calls_cond);
        if (i > 0)
            free(workers[i]);
    }
    pthread_mutex_destroy(&shared.pick_lock);
    client_auth_cache_clear(&shared);
    pthread_mutex_destroy(&shared.auth_lock);
    free(shared.auth_cache);
    if (last != boot_cfg)
        config_free(last);
    uv_loop_close(px.loop);
    log_info("pgsteer stopped");
    return 0;
}
