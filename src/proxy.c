/* SPDX-License-Identifier: MIT */
/* The event loop's process-wide parts: the client listener, the monitor's wake-ups, signals,
 * configuration reload and shutdown. */
#include "proxy.h"

#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "admin.h"
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

void proxy_node_failed(struct proxy *px, int node)
{
    /* Until the monitor's next rounds say otherwise, keep reads off a node we just failed to
     * use, so one dead replica costs one error, not one per statement. */
    px->nodes[node].failed_until_ms = proxy_now_ms() + NODE_FAIL_HOLD_MS;
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

static void on_monitor_wakeup(uv_async_t *a)
{
    struct proxy *px = a->data;
    struct monitor_snapshot *s = monitor_take(px->monitor);
    if (s == NULL)
        return;
    count_evictions(px, px->snap, s);
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
    drain_sweep(px);
    for (struct client *c = px->clients, *next; c; c = next) {
        next = c->next;
        if (c->wait_snapshot || c->write_done_ns != 0)
            client_on_snapshot(c);
    }
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
static struct drain_entry *drains;
static size_t ndrains, drains_cap;

static void drain_add(struct proxy *px, int node)
{
    for (struct client *c = px->clients; c; c = c->next) {
        struct backend *b = c->backends[node];
        if (b == NULL || c->state == CLIENT_CLOSING)
            continue;
        if (ndrains == drains_cap) {
            size_t cap = drains_cap ? 2 * drains_cap : 16;
            struct drain_entry *d = realloc(drains, cap * sizeof(*d));
            if (d == NULL) {
                log_warn("reload: out of memory; a backend to node %d is kept", node);
                return;
            }
            drains = d;
            drains_cap = cap;
        }
        drains[ndrains++] = (struct drain_entry){c->id, node, b};
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
    for (size_t i = 0; i < ndrains; i++) {
        struct drain_entry d = drains[i];
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
        drains[j++] = d;
    }
    ndrains = j;
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
            if (!taken[i] && px->nodes[i].backends == 0) {
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
    while (nslots > 0 && occupant[nslots - 1] < 0 && px->nodes[nslots - 1].backends == 0)
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

    struct monitor *nm = monitor_new(nc, &px->monitor_wakeup);
    if (nm == NULL) {
        config_free(nc);
        return reload_reject(px, strdup("cannot create the monitor for the new nodes\n"), errors);
    }

    /* Commit. No other thread runs between monitor_free and monitor_start. */
    if (strcmp(old->listen.host, nc->listen.host) != 0 || old->listen.port != nc->listen.port ||
        strcmp(old->admin_listen.host, nc->admin_listen.host) != 0 ||
        old->admin_listen.port != nc->admin_listen.port || old->workers != nc->workers)
        log_warn("reload: listen, admin_listen and workers keep their old values until a restart");
    monitor_free(px->monitor);
    px->monitor = nm;
    int level = log_parse_level(nc->log_level ? nc->log_level : "info");
    log_set_level(level < 0 ? LOG_INFO : (enum log_level)level);
    if (monitor_start(nm) < 0)
        log_error("reload: cannot start the monitor thread; node states will not be updated");

    for (size_t s = 0; s < nslots; s++) {
        struct node_rt *rt = &px->nodes[s];
        if (occupant[s] < 0) {
            if (!rt->removed) {
                log_info("reload: node %s dropped; its backends close when idle", arr[s].name);
                drain_add(px, (int)s);
            }
            rt->removed = true;
            continue;
        }
        if (fresh[s]) {
            memset(rt, 0, sizeof(*rt));
            rt->addr = addrs[s];
            log_info("reload: node %s added", arr[s].name);
        } else if (moved[s]) {
            rt->addr = addrs[s];
            rt->failed_until_ms = 0;
            log_info("reload: node %s moved to %s:%d; its backends close when idle", arr[s].name,
                     arr[s].host, arr[s].port);
            drain_add(px, (int)s);
        }
        rt->removed = false;
    }
    for (size_t s = nslots; s < old->nnodes; s++)
        memset(&px->nodes[s], 0, sizeof(px->nodes[s]));
    /* Until the new monitor's first round, the last snapshot stands for the nodes it knew;
     * new, reused and dropped slots are not read from. */
    if (px->snap) {
        for (size_t s = 0; s < nslots; s++) {
            if (s < px->snap->nnodes && occupant[s] >= 0 && !fresh[s] && !moved[s])
                continue;
            struct node_status *ns = &px->snap->nodes[s];
            memset(ns, 0, sizeof(*ns));
            ns->state = LAG_DOWN;
            snprintf(ns->reason, sizeof(ns->reason), "not checked yet");
        }
        px->snap->nnodes = nslots;
    }
    router_init(&px->router);
    px->cfg = nc;
    px->wfuncs.names = (const char *const *)nc->write_functions;
    px->wfuncs.count = nc->nwrite_functions;
    /* Nothing points into the old configuration now: clients copied what they keep, the
     * monitor copies its part, and every other use goes through px->cfg. */
    if (old != boot_cfg)
        config_free(old);
    px->reloads++;
    log_info("configuration reloaded from %s: %zu nodes, %zu users", nc->path, nc->nnodes,
             nc->nusers);
    drain_sweep(px);
    return 0;
}

static uv_timer_t shutdown_timer;
static int64_t shutdown_deadline;

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

static void proxy_stop(struct proxy *px)
{
    close_all_clients(px, "terminating connection due to administrator command");
    admin_stop(px);
    if (px->monitor) {
        monitor_free(px->monitor);
        px->monitor = NULL;
    }
    uv_walk(px->loop, close_walk_cb, NULL);
}

static void shutdown_tick(uv_timer_t *t)
{
    struct proxy *px = t->data;
    /* Close each client once it is idle outside a transaction; the rest when time is up. */
    for (struct client *c = px->clients, *next; c; c = next) {
        next = c->next;
        bool busy = c->tx_status != 'I' || c->tx_node >= 0 || c->batch_node >= 0;
        for (int i = 0; i < CONFIG_MAX_NODES && !busy; i++)
            busy = c->backends[i] && c->backends[i]->fwd_outstanding > 0;
        if (!busy || c->state != CLIENT_READY)
            client_close(c, "57P01", "terminating connection due to administrator command");
    }
    if (px->clients == NULL || proxy_now_ms() >= shutdown_deadline) {
        log_info("shutdown: %s", px->clients ? "timeout, closing remaining clients" : "done");
        proxy_stop(px);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct proxy *px = s->data;
    if (signum == SIGINT || (signum == SIGTERM && px->shutting_down)) {
        log_info("signal %d: closing all connections", signum);
        px->shutting_down = true;
        proxy_stop(px);
        return;
    }
    if (signum == SIGTERM) {
        log_info("SIGTERM: no new connections; waiting up to %d ms for transactions to finish",
                 px->cfg->shutdown_timeout_ms);
        px->shutting_down = true;
        uv_close((uv_handle_t *)&px->listener, NULL);
        shutdown_deadline = proxy_now_ms() + px->cfg->shutdown_timeout_ms;
        uv_timer_init(px->loop, &shutdown_timer);
        shutdown_timer.data = px;
        uv_timer_start(&shutdown_timer, shutdown_tick, 0, 50);
        return;
    }
    if (signum == SIGHUP) {
        log_info("SIGHUP: reloading %s", px->cfg->path);
        char *errors = NULL;
        (void)proxy_reload(px, &errors); /* the outcome is logged either way */
        free(errors);
    }
}

static int resolve(const char *host, int port, struct sockaddr_storage *out)
{
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

int proxy_run(struct config *cfg)
{
    static struct proxy px;
    memset(&px, 0, sizeof(px));
    px.loop = uv_default_loop();
    px.cfg = cfg;
    boot_cfg = cfg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    px.start_unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    px.start_ns = uv_hrtime();
    px.wfuncs.names = (const char *const *)cfg->write_functions;
    px.wfuncs.count = cfg->nwrite_functions;
    router_init(&px.router);
    /* Before the first monitor round every replica counts as eligible: start from that set,
     * so that the first round moves no session that keeps a replica. */
    for (size_t i = 0; i < cfg->nnodes && i < 32; i++) {
        if (cfg->nodes[i].role == NODE_REPLICA && cfg->nodes[i].weight > 0)
            px.eligible_mask |= 1u << i;
    }
    for (size_t i = 0; i < cfg->nnodes; i++) {
        if (resolve(cfg->nodes[i].host, cfg->nodes[i].port, &px.nodes[i].addr) < 0) {
            log_error("node %s: cannot resolve host %s", cfg->nodes[i].name, cfg->nodes[i].host);
            return 1;
        }
    }
    struct sockaddr_storage la;
    if (resolve(cfg->listen.host, cfg->listen.port, &la) < 0) {
        log_error("cannot resolve listen address %s", cfg->listen.host);
        return 1;
    }
    uv_tcp_init(px.loop, &px.listener);
    px.listener.data = &px;
    int rc = uv_tcp_bind(&px.listener, (const struct sockaddr *)&la, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&px.listener, 1024, on_connection);
    if (rc < 0) {
        log_error("cannot listen on %s:%d: %s", cfg->listen.host, cfg->listen.port,
                  uv_strerror(rc));
        return 1;
    }
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
    log_info("pgsteer listening on %s:%d with %zu nodes", cfg->listen.host, cfg->listen.port,
             cfg->nnodes);
    uv_run(px.loop, UV_RUN_DEFAULT);
    /* Everything is closed; run once more so close callbacks free their memory. */
    uv_run(px.loop, UV_RUN_DEFAULT);
    free(px.snap);
    free(drains);
    drains = NULL;
    ndrains = drains_cap = 0;
    if (px.cfg != boot_cfg)
        config_free(px.cfg);
    while (px.params) {
        struct param_cache *n = px.params->next;
        free(px.params->key);
        free(px.params->msgs);
        free(px.params);
        px.params = n;
    }
    uv_loop_close(px.loop);
    log_info("pgsteer stopped");
    return 0;
}
