/* SPDX-License-Identifier: MIT */
/* Unit tests for the admin interface's pure parts: the HTTP request parser, the console
 * command parser, the /status JSON and /metrics builders, and readiness. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "admin.h"
#include "status.h"

static int parse(const char *s, struct http_request *r)
{
    return http_parse_request(s, strlen(s), r);
}

static void test_http_parse_simple_get(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
    assert_int_equal(parse(s, &r), (int)strlen(s));
    assert_string_equal(r.method, "GET");
    assert_string_equal(r.path, "/metrics");
    assert_int_equal(r.minor_version, 1);
    assert_false(r.has_auth);
    assert_int_equal(r.content_length, 0);
}

static void test_http_parse_query_string_and_headers(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "POST /reload?now=1 HTTP/1.0\nauthorization:   Bearer abc \nContent-Length: "
                    "12\n\nbody follows";
    int n = parse(s, &r);
    assert_true(n > 0);
    assert_string_equal(s + n, "body follows");
    assert_string_equal(r.method, "POST");
    assert_string_equal(r.path, "/reload");
    assert_int_equal(r.minor_version, 0);
    assert_true(r.has_auth);
    assert_string_equal(r.auth, "Bearer abc");
    assert_int_equal(r.content_length, 12);
}

static void test_http_parse_needs_more(void **state)
{
    (void)state;
    struct http_request r;
    assert_int_equal(parse("", &r), 0);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: x\r\n", &r), 0);
    assert_int_equal(parse("GET / HTTP/1.1\r\n", &r), 0);
    /* Every prefix of a valid request asks for more, never fails. */
    const char *s = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for (size_t i = 0; i < strlen(s); i++)
        assert_int_equal(http_parse_request(s, i, &r), 0);
    assert_int_equal(http_parse_request(s, strlen(s), &r), (int)strlen(s));
}

static void test_http_parse_malformed(void **state)
{
    (void)state;
    struct http_request r;
    static const char *const bad[] = {
        "GET\r\n\r\n",
        "GET /status\r\n\r\n",
        "GET /status HTTP/2.0\r\n\r\n",
        "GET status HTTP/1.1\r\n\r\n",
        "GET /status HTTP/1.1 extra\r\n\r\n",
        " GET /status HTTP/1.1\r\n\r\n",
        "G(T /status HTTP/1.1\r\n\r\n",
        "GET /status HTTP/1.1\r\nNoColon\r\n\r\n",
        "GET /status HTTP/1.1\r\n: empty name\r\n\r\n",
        "GET /status HTTP/1.1\r\nBad Name: x\r\n\r\n",
        "GET /status HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "GET /status HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "GET /status HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        "GET /status HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET /sta\x01tus HTTP/1.1\r\n\r\n",
        "\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (parse(bad[i], &r) != -1)
            fail_msg("accepted: %s", bad[i]);
    }
}

static void test_http_parse_too_large(void **state)
{
    (void)state;
    struct http_request r;
    size_t n = HTTP_MAX_REQUEST + 10;
    char *big = malloc(n + 1);
    memset(big, 'a', n);
    memcpy(big, "GET /", 5);
    big[n] = 0;
    assert_int_equal(http_parse_request(big, n, &r), -2);
    /* A complete head that is too long is too large as well, not malformed. */
    memcpy(big + n - 4, "\r\n\r\n", 4);
    assert_int_equal(http_parse_request(big, n, &r), -2);
    free(big);
    char path[1200];
    snprintf(path, sizeof(path), "GET /%01100d HTTP/1.1\r\n\r\n", 0);
    assert_int_equal(parse(path, &r), -2);
    char method[64];
    snprintf(method, sizeof(method), "ABCDEFGHIJKLMNOPQRST / HTTP/1.1\r\n\r\n");
    assert_int_equal(parse(method, &r), -2);
}

static void test_admin_parse_command(void **state)
{
    (void)state;
    const char *arg;
    size_t n;
#define CMD(s) admin_parse_command(s, strlen(s), &arg, &n)
    assert_int_equal(CMD("SHOW NODES"), ADMIN_CMD_SHOW_NODES);
    assert_int_equal(CMD("  show   nodes ; "), ADMIN_CMD_SHOW_NODES);
    assert_int_equal(CMD("Show Stats;"), ADMIN_CMD_SHOW_STATS);
    assert_int_equal(CMD("SHOW CLIENTS"), ADMIN_CMD_SHOW_CLIENTS);
    assert_int_equal(CMD("SHOW SERVERS"), ADMIN_CMD_SHOW_SERVERS);
    assert_int_equal(CMD("SHOW CONFIG"), ADMIN_CMD_SHOW_CONFIG);
    assert_int_equal(CMD("SHOW HELP"), ADMIN_CMD_SHOW_HELP);
    assert_int_equal(CMD("show version"), ADMIN_CMD_SHOW_VERSION);
    assert_int_equal(CMD("RELOAD"), ADMIN_CMD_RELOAD);
    assert_int_equal(CMD("pause;"), ADMIN_CMD_PAUSE);
    assert_int_equal(CMD("resume"), ADMIN_CMD_RESUME);
    assert_int_equal(CMD(""), ADMIN_CMD_EMPTY);
    assert_int_equal(CMD(" ; "), ADMIN_CMD_EMPTY);
    assert_int_equal(CMD("SHOW NODESX"), ADMIN_CMD_UNKNOWN);
    assert_int_equal(CMD("SHOW NODES extra"), ADMIN_CMD_UNKNOWN);
    assert_int_equal(CMD("SHOW"), ADMIN_CMD_UNKNOWN);
    assert_int_equal(CMD("RELOADX"), ADMIN_CMD_UNKNOWN);
    assert_int_equal(CMD("select 1"), ADMIN_CMD_UNKNOWN);
    assert_int_equal(CMD("EXPLAIN ROUTE"), ADMIN_CMD_UNKNOWN);
    assert_int_equal(CMD("EXPLAIN select 1"), ADMIN_CMD_UNKNOWN);
    assert_int_equal(CMD("explain  route  insert into t values (1);"), ADMIN_CMD_EXPLAIN_ROUTE);
    assert_int_equal(n, strlen("insert into t values (1)"));
    assert_memory_equal(arg, "insert into t values (1)", n);
#undef CMD
}

static void fill_stats(struct admin_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->version = "9.9.9";
    st->now_unix_ms = 1700000000123;
    st->start_unix_ms = 1700000000000;
    st->uptime_seconds = 0.123;
    st->clients = 4;
    st->have_snapshot = true;
    st->primary_up = true;
    st->monitor_round = 7;
    st->primary_name = "pg1";
    st->primary_reason = "";
    st->route_reasons[ROUTE_READ] = 10;
    st->route_reasons[ROUTE_WRITE] = 3;
    st->route_reasons[ROUTE_TRANSACTION] = 2;
    st->route_reasons[ROUTE_PINNED] = 1;
    st->read_retries = 5;
    st->tls_clients = 2;
    st->tls_failures = 3;
    st->reloads = 1;
    st->nnodes = 2;
    st->nodes[0] = (struct admin_node_stats){
        .name = "pg1",
        .role = "primary",
        .state = "up",
        .up = true,
        .lag_bytes = 0,
        .lag_ms = 0,
        .changed_at_ms = 1700000000000,
        .reason = "",
        .writes = 6,
        .backends = 2,
    };
    st->nodes[1] = (struct admin_node_stats){
        .name = "pg\"2",
        .role = "replica",
        .state = "lagging",
        .up = true,
        .eligible = false,
        .lag_bytes = 50331648,
        .lag_ms = 1500,
        .changed_at_ms = 1700000000500,
        .reason = "lag 48 MB > 16 MB",
        .reads = 10,
        .backends = 1,
        .idle_backends = 4,
        .backends_opened = 5,
        .backends_reused = 17,
        .evictions = 3,
    };
}

static char *metrics_text(const struct admin_stats *st)
{
    struct buf b;
    buf_init(&b);
    assert_int_equal(admin_write_metrics(&b, st), 0);
    assert_int_equal(buf_append(&b, "", 1), 0);
    return b.data;
}

/* The exposition format's rules that promtool checks: every sample belongs to a family
 * announced once by HELP and TYPE before it, counters end in _total, names are valid. */
static void check_exposition(const char *text)
{
    char families[64][96];
    char types[64][16];
    size_t nf = 0;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        size_t len = (size_t)(nl - p);
        char line[512];
        assert_true(len < sizeof(line));
        memcpy(line, p, len);
        line[len] = 0;
        p = nl + 1;
        char name[96], type[16];
        if (strncmp(line, "# HELP ", 7) == 0) {
            assert_int_equal(sscanf(line + 7, "%95s", name), 1);
            for (size_t i = 0; i < nf; i++)
                assert_string_not_equal(families[i], name);
            assert_true(nf < 64);
            snprintf(families[nf], sizeof(families[nf]), "%s", name);
            types[nf][0] = 0;
            nf++;
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            assert_int_equal(sscanf(line + 7, "%95s %15s", name, type), 2);
            assert_true(nf > 0);
            assert_string_equal(families[nf - 1], name);
            snprintf(types[nf - 1], sizeof(types[nf - 1]), "%s", type);
            if (strcmp(type, "counter") == 0)
                assert_non_null(strstr(name, "_total"));
            continue;
        }
        assert_true(line[0] != '#');
        size_t k = strcspn(line, "{ ");
        assert_true(k > 0 && k < sizeof(name));
        memcpy(name, line, k);
        name[k] = 0;
        assert_true(strncmp(name, "pgsteer_", 8) == 0);
        for (size_t i = 0; i < k; i++)
            assert_true(name[i] == '_' || (name[i] >= 'a' && name[i] <= 'z') ||
                        (name[i] >= '0' && name[i] <= '9'));
        assert_true(nf > 0);
        if (strcmp(types[nf - 1], "histogram") == 0) {
            /* A histogram's samples are <family>_bucket, _sum and _count. */
            size_t fl = strlen(families[nf - 1]);
            assert_memory_equal(name, families[nf - 1], fl);
            assert_true(strcmp(name + fl, "_bucket") == 0 || strcmp(name + fl, "_sum") == 0 ||
                        strcmp(name + fl, "_count") == 0);
        } else {
            assert_string_equal(families[nf - 1], name);
        }
        assert_true(types[nf - 1][0] != 0);
        const char *v = strrchr(line, ' ');
        assert_non_null(v);
        char *end;
        strtod(v + 1, &end);
        assert_true(*end == 0 && end != v + 1);
    }
}

static void test_admin_metrics_format(void **state)
{
    (void)state;
    struct admin_stats st;
    fill_stats(&st);
    char *t = metrics_text(&st);
    check_exposition(t);
    assert_non_null(strstr(t, "pgsteer_info{version=\"9.9.9\"} 1\n"));
    assert_non_null(strstr(t, "pgsteer_client_connections 4\n"));
    assert_non_null(strstr(t, "pgsteer_queries_total{reason=\"read\"} 10\n"));
    assert_non_null(strstr(t, "pgsteer_queries_total{reason=\"pinned\"} 1\n"));
    assert_non_null(strstr(t, "pgsteer_queries_total{reason=\"read-your-writes\"} 0\n"));
    assert_non_null(strstr(t, "pgsteer_read_retries_total 5\n"));
    assert_non_null(strstr(t, "pgsteer_client_tls_connections 2\n"));
    assert_non_null(strstr(t, "pgsteer_client_tls_handshake_failures_total 3\n"));
    assert_non_null(strstr(t, "pgsteer_node_up{node=\"pg1\"} 1\n"));
    /* Label values are escaped. */
    assert_non_null(strstr(t, "pgsteer_node_lag_bytes{node=\"pg\\\"2\"} 50331648\n"));
    assert_non_null(strstr(t, "pgsteer_node_lag_seconds{node=\"pg\\\"2\"} 1.500\n"));
    assert_non_null(strstr(t, "pgsteer_node_eligible{node=\"pg\\\"2\"} 0\n"));
    assert_non_null(strstr(t, "pgsteer_node_state{node=\"pg\\\"2\",state=\"lagging\"} 1\n"));
    assert_non_null(strstr(t, "pgsteer_node_state{node=\"pg\\\"2\",state=\"up\"} 0\n"));
    assert_non_null(strstr(t, "pgsteer_node_reads_total{node=\"pg\\\"2\"} 10\n"));
    assert_non_null(strstr(t, "pgsteer_node_writes_total{node=\"pg1\"} 6\n"));
    assert_non_null(strstr(t, "pgsteer_node_backend_connections{node=\"pg1\"} 2\n"));
    assert_non_null(strstr(t, "pgsteer_node_evictions_total{node=\"pg\\\"2\"} 3\n"));
    assert_non_null(strstr(t, "pgsteer_node_idle_backend_connections{node=\"pg\\\"2\"} 4\n"));
    assert_non_null(strstr(t, "pgsteer_node_backends_opened_total{node=\"pg\\\"2\"} 5\n"));
    assert_non_null(strstr(t, "pgsteer_node_backends_reused_total{node=\"pg\\\"2\"} 17\n"));
    assert_non_null(strstr(t, "pgsteer_node_info{node=\"pg1\",role=\"primary\"} 1\n"));
    free(t);
}

static void test_admin_metrics_before_first_round(void **state)
{
    (void)state;
    struct admin_stats st;
    fill_stats(&st);
    st.have_snapshot = st.primary_up = false;
    for (size_t i = 0; i < st.nnodes; i++) {
        st.nodes[i].state = "unknown";
        st.nodes[i].up = st.nodes[i].eligible = false;
        st.nodes[i].lag_bytes = st.nodes[i].lag_ms = -1;
        st.nodes[i].changed_at_ms = 0;
    }
    st.nnodes = 0; /* and with no node at all */
    char *t = metrics_text(&st);
    check_exposition(t);
    assert_null(strstr(t, "pgsteer_node_lag_bytes{"));
    free(t);
    st.nnodes = 2;
    t = metrics_text(&st);
    check_exposition(t);
    assert_null(strstr(t, "pgsteer_node_lag_bytes{"));
    assert_non_null(strstr(t, "pgsteer_node_state{node=\"pg1\",state=\"up\"} 0\n"));
    free(t);
}

static void test_admin_status_json(void **state)
{
    (void)state;
    struct admin_stats st;
    fill_stats(&st);
    struct buf b;
    buf_init(&b);
    assert_int_equal(admin_write_status_json(&b, &st), 0);
    /* It is valid JSON with the documented members. */
    struct json *j = json_parse(buf_head(&b), buf_avail(&b));
    assert_non_null(j);
    assert_string_equal(json_get(j, "version")->string, "9.9.9");
    assert_string_equal(json_get(j, "started_at")->string, "2023-11-14T22:13:20.000Z");
    assert_int_equal((int)json_get(j, "client_connections")->number, 4);
    const struct json *q = json_get(j, "queries");
    assert_int_equal((int)json_get(q, "total")->number, 16);
    assert_int_equal((int)json_get(q, "reads")->number, 10);
    assert_int_equal((int)json_get(q, "writes")->number, 6);
    const struct json *pr = json_get(j, "primary_reasons");
    assert_int_equal((int)json_get(pr, "transaction")->number, 2);
    assert_int_equal((int)json_get(pr, "pinned")->number, 1);
    assert_null(json_get(pr, "read"));
    const struct json *nodes = json_get(j, "nodes");
    assert_int_equal(nodes->type, JSON_ARRAY);
    assert_int_equal(nodes->n, 2);
    const struct json *n1 = &nodes->items[1];
    assert_string_equal(json_get(n1, "name")->string, "pg\"2");
    assert_string_equal(json_get(n1, "state")->string, "lagging");
    assert_string_equal(json_get(n1, "state_reason")->string, "lag 48 MB > 16 MB");
    assert_string_equal(json_get(n1, "state_changed_at")->string, "2023-11-14T22:13:20.500Z");
    assert_int_equal((int64_t)json_get(n1, "lag_bytes")->number, 50331648);
    assert_int_equal((int)json_get(n1, "lag_ms")->number, 1500);
    assert_int_equal(json_get(n1, "eligible")->type, JSON_BOOL);
    assert_int_equal((int)json_get(n1, "reads")->number, 10);
    json_free(j);

    /* Unknown lag is null. */
    st.nodes[1].lag_bytes = st.nodes[1].lag_ms = -1;
    st.nodes[1].changed_at_ms = 0;
    buf_reset(&b);
    assert_int_equal(admin_write_status_json(&b, &st), 0);
    j = json_parse(buf_head(&b), buf_avail(&b));
    assert_non_null(j);
    n1 = &json_get(j, "nodes")->items[1];
    assert_int_equal(json_get(n1, "lag_bytes")->type, JSON_NULL);
    assert_int_equal(json_get(n1, "state_changed_at")->type, JSON_NULL);
    json_free(j);
    buf_destroy(&b);
}

static void test_admin_ready(void **state)
{
    (void)state;
    struct admin_stats st;
    fill_stats(&st);
    char reason[200];
    assert_true(admin_ready(&st, reason, sizeof(reason)));
    st.primary_up = false;
    st.primary_reason = "not answering";
    assert_false(admin_ready(&st, reason, sizeof(reason)));
    assert_string_equal(reason, "primary pg1 is not reachable: not answering");
    st.have_snapshot = false;
    assert_false(admin_ready(&st, reason, sizeof(reason)));
    st.have_snapshot = st.primary_up = true;
    st.shutting_down = true;
    assert_false(admin_ready(&st, reason, sizeof(reason)));
    assert_string_equal(reason, "shutting down");
}

static void test_status_json_parser(void **state)
{
    (void)state;
    static const char *const good[] = {
        "{}", "[]",   " {\"a\": [1, -2.5e3, true, false, null, \"x\\n\\u00e9\\ud83d\\ude00\"]} ",
        "0",  "\"\"",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct json *j = json_parse(good[i], strlen(good[i]));
        if (j == NULL)
            fail_msg("rejected: %s", good[i]);
        json_free(j);
    }
    struct json *j = json_parse(good[2], strlen(good[2]));
    const struct json *a = json_get(j, "a");
    assert_int_equal(a->n, 6);
    assert_true(a->items[1].number == -2500.0);
    assert_string_equal(a->items[5].string, "x\n\xc3\xa9\xf0\x9f\x98\x80");
    json_free(j);
    static const char *const bad[] = {
        "",  "{",   "[1,]",  "{\"a\" 1}", "01",         "1.",
        "-", "tru", "\"abc", "{} x",      "[\"\x01\"]", "{1: 2}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct json *x = json_parse(bad[i], strlen(bad[i]));
        if (x != NULL)
            fail_msg("accepted: %s", bad[i]);
    }
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    assert_null(json_parse(deep, sizeof(deep)));
}

static void test_status_render_table(void **state)
{
    (void)state;
    struct admin_stats st;
    fill_stats(&st);
    struct buf b, out;
    buf_init(&b);
    buf_init(&out);
    assert_int_equal(admin_write_status_json(&b, &st), 0);
    struct json *j = json_parse(buf_head(&b), buf_avail(&b));
    assert_non_null(j);
    assert_int_equal(status_render_table(j, &out), 0);
    assert_int_equal(buf_append(&out, "", 1), 0);
    const char *t = buf_head(&out);
    assert_non_null(strstr(t, "pgsteer 9.9.9"));
    assert_non_null(strstr(t, "NODE"));
    assert_non_null(strstr(t, "ELIGIBLE"));
    assert_non_null(strstr(t, "BACKENDS  IDLE"));
    assert_non_null(strstr(t, "pg1"));
    assert_non_null(strstr(t, "lagging"));
    assert_non_null(strstr(t, "48 MB, 1500 ms"));
    assert_non_null(strstr(t, "lag 48 MB > 16 MB"));
    assert_non_null(strstr(t, "queries: 16 (10 reads, 6 writes)"));
    json_free(j);
    /* Not a status document. */
    j = json_parse("[1]", 3);
    assert_int_equal(status_render_table(j, &out), -1);
    json_free(j);
    buf_destroy(&b);
    buf_destroy(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_parse_simple_get),
        cmocka_unit_test(test_http_parse_query_string_and_headers),
        cmocka_unit_test(test_http_parse_needs_more),
        cmocka_unit_test(test_http_parse_malformed),
        cmocka_unit_test(test_http_parse_too_large),
        cmocka_unit_test(test_admin_parse_command),
        cmocka_unit_test(test_admin_metrics_format),
        cmocka_unit_test(test_admin_metrics_before_first_round),
        cmocka_unit_test(test_admin_status_json),
        cmocka_unit_test(test_admin_ready),
        cmocka_unit_test(test_status_json_parser),
        cmocka_unit_test(test_status_render_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
