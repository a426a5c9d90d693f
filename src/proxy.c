/* SPDX-License-Identifier: MIT */
/* The event loop's process-wide parts: the client listener, the monitor's wake-ups, signals
 * and shutdown. */
#include "proxy.h"

#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "proxy_main.h"

#define NODE_FAIL_HOLD_MS 1000

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

static void on_monitor_wakeup(uv_async_t *a)
{
    struct proxy *px = a->data;
    struct monitor_snapshot *s = monitor_take(px->monitor);
    if (s == NULL)
        return;
    free(px->snap);
    px->snap = s;
    for (struct client *c = px->clients, *next; c; c = next) {
        next = c->next;
        if (c->wait_snapshot)
            client_on_snapshot(c);
    }
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
    if (signum == SIGHUP)
        log_info("SIGHUP: configuration reload is not supported yet; keeping the current one");
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
    px.wfuncs.names = (const char *const *)cfg->write_functions;
    px.wfuncs.count = cfg->nwrite_functions;
    router_init(&px.router);
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
