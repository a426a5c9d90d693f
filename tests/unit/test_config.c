/* SPDX-License-Identifier: MIT */
/* Unit tests for the config loader: values and defaults, the exact text of every kind of
 * problem, and robustness against truncated and corrupted input. Run from the repository root
 * (fixtures are read from tests/data/config/ and conf/). */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

/* Users and nodes that make a config valid; appended after the lines under test so those
 * start at line 1. */
#define BASE                                                                                       \
    "users:\n"                                                                                     \
    "  - {name: app, password: secret}\n"                                                          \
    "nodes:\n"                                                                                     \
    "  - {name: p, host: 127.0.0.1, port: 5432, role: primary}\n"                                  \
    "  - {name: r, host: 127.0.0.1, port: 5433, role: replica}\n"

static struct config *parse(const char *text)
{
    char *err = NULL;
    struct config *c = config_parse("t.yaml", text, strlen(text), &err);
    if (!c)
        fail_msg("unexpected problems:\n%s", err ? err : "(no report)");
    assert_null(err);
    return c;
}

static void expect_errors(const char *text, const char *expected)
{
    char *err = NULL;
    struct config *c = config_parse("t.yaml", text, strlen(text), &err);
    if (c) {
        config_free(c);
        fail_msg("no problem reported for:\n%s", text);
    }
    assert_non_null(err);
    bool same = strcmp(err, expected) == 0;
    if (!same) /* printed in full: fail_msg's buffer would cut long reports short */
        fprintf(stderr, "for:\n%s\nexpected:\n%sgot:\n%s", text, expected, err);
    free(err);
    assert_true(same);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s (run from the repository root)", path);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* ---- values and defaults ------------------------------------------------------------------ */

static void test_config_load_sets_every_key(void **state)
{
    (void)state;
    char *err = NULL;
    struct config *c = config_load("tests/data/config/full.yaml", &err);
    if (!c)
        fail_msg("%s", err ? err : "(no report)");
    assert_null(err);
    assert_string_equal(c->path, "tests/data/config/full.yaml");
    assert_string_equal(c->listen.host, "::1");
    assert_int_equal(c->listen.port, 7432);
    assert_string_equal(c->admin_listen.host, "0.0.0.0");
    assert_int_equal(c->admin_listen.port, 7930);
    assert_true(c->has_admin_listen);
    assert_int_equal(c->auth_method, AUTH_METHOD_MD5);

    assert_int_equal(c->nusers, 2);
    assert_string_equal(c->users[0].name, "app");
    assert_string_equal(c->users[0].password, "secret");
    assert_string_equal(c->users[1].name, "report");
    assert_string_equal(c->users[1].password, "s3cret: with colon");
    assert_int_equal(c->nadmin_users, 1);
    assert_string_equal(c->admin_users[0].name, "admin");
    assert_string_equal(c->admin_users[0].password, "adminpw");
    assert_string_equal(c->admin_token, "tok-123");

    assert_int_equal(c->nnodes, 3);
    assert_int_equal(c->primary, 0);
    const struct config_node *n = &c->nodes[0];
    assert_string_equal(n->name, "pg-primary");
    assert_string_equal(n->host, "db1.example.com");
    assert_int_equal(n->port, 5432);
    assert_int_equal(n->role, NODE_PRIMARY);
    assert_int_equal(n->weight, 1);
    assert_string_equal(n->monitor_host, "10.0.0.1");
    assert_int_equal(n->monitor_port, 6543);
    n = &c->nodes[1];
    assert_string_equal(n->name, "pg_replica.1");
    assert_string_equal(n->host, "10.0.0.2");
    assert_int_equal(n->port, 5433);
    assert_int_equal(n->role, NODE_REPLICA);
    assert_int_equal(n->weight, 3);
    assert_string_equal(n->monitor_host, "10.0.0.2");
    assert_int_equal(n->monitor_port, 5433);
    assert_int_equal(c->nodes[2].weight, 0);
    assert_int_equal(c->nodes[2].role, NODE_REPLICA);

    assert_int_equal(c->nwrite_functions, 2);
    assert_string_equal(c->write_functions[0], "my_audit_fn");
    assert_string_equal(c->write_functions[1], "bump$counter");

    assert_int_equal(c->monitor.interval_ms, 250);
    assert_int_equal(c->monitor.max_lag_bytes, 1024LL * 1024 * 1024);
    assert_int_equal(c->monitor.max_lag_ms, 0);
    assert_int_equal(c->monitor.connect_timeout_ms, 2000);
    assert_int_equal(c->monitor.recover_checks, 5);
    /* No monitor.password: the password of the users entry the monitor logs in as. */
    assert_string_equal(c->monitor.user, "report");
    assert_string_equal(c->monitor.password, "s3cret: with colon");
    assert_string_equal(c->monitor.dbname, "health");

    assert_int_equal(c->server_tls.mode, TLS_MODE_VERIFY_FULL);
    assert_string_equal(c->server_tls.ca_file, "tests/data/config/tls/ca.pem");
    assert_string_equal(c->server_tls.cert_file, "tests/data/config/tls/client.crt");
    assert_string_equal(c->server_tls.key_file, "tests/data/config/tls/client.key");
    assert_string_equal(c->server_tls.crl_file, "tests/data/config/tls/crl.pem");
    assert_int_equal(c->client_tls.mode, CLIENT_TLS_VERIFY_CA);
    assert_string_equal(c->client_tls.cert_file, "tests/data/config/tls/client.crt");
    assert_string_equal(c->client_tls.key_file, "tests/data/config/tls/client.key");
    assert_string_equal(c->client_tls.ca_file, "tests/data/config/tls/ca.pem");
    assert_string_equal(c->client_tls.crl_file, "tests/data/config/tls/crl.pem");

    assert_int_equal(c->consistency, CONSISTENCY_STRONG);
    assert_int_equal(c->fallback, FALLBACK_ERROR);
    assert_int_equal(c->max_client_conn, 500);
    assert_int_equal(c->workers, 4);
    assert_int_equal(c->cpu_affinity, CPU_AFFINITY_AUTO);
    assert_int_equal(c->busy_poll_us, 150);
    assert_int_equal(c->shutdown_timeout_ms, 0);
    assert_int_equal(c->client_login_timeout_ms, 15000);
    assert_int_equal(c->connect_timeout_ms, 7000);
    assert_int_equal(c->backend_idle_max, 5);
    assert_int_equal(c->backend_idle_timeout_ms, 30000);
    assert_int_equal(c->backend_lifetime_ms, 0); /* no limit */
    assert_false(c->tcp_keepalive);
    assert_int_equal(c->tcp_keepalive_idle_s, 300);
    assert_int_equal(c->tcp_keepalive_interval_s, 30);
    assert_int_equal(c->tcp_keepalive_count, 3);
    assert_string_equal(c->log_level, "debug");
    config_free(c);
}

static void test_config_parse_applies_defaults(void **state)
{
    (void)state;
    struct config *c = parse(BASE);
    assert_string_equal(c->path, "t.yaml");
    assert_string_equal(c->listen.host, "127.0.0.1");
    assert_int_equal(c->listen.port, 6432);
    assert_string_equal(c->admin_listen.host, "127.0.0.1");
    assert_int_equal(c->admin_listen.port, 9930);
    assert_int_equal(c->auth_method, AUTH_METHOD_SCRAM);
    assert_int_equal(c->nadmin_users, 0);
    assert_null(c->admin_users);
    assert_null(c->admin_token);
    assert_int_equal(c->nnodes, 2);
    assert_int_equal(c->primary, 0);
    assert_int_equal(c->nodes[1].weight, 1);
    assert_string_equal(c->nodes[1].monitor_host, "127.0.0.1");
    assert_int_equal(c->nodes[1].monitor_port, 5433);
    assert_int_equal(c->nwrite_functions, 0);
    assert_int_equal(c->monitor.interval_ms, 100);
    assert_int_equal(c->monitor.max_lag_bytes, 16777216);
    assert_int_equal(c->monitor.max_lag_ms, 1000);
    assert_int_equal(c->monitor.connect_timeout_ms, 1000);
    assert_int_equal(c->monitor.recover_checks, 3);
    assert_string_equal(c->monitor.user, "app");
    assert_string_equal(c->monitor.password, "secret");
    assert_string_equal(c->monitor.dbname, "postgres");
    assert_int_equal(c->consistency, CONSISTENCY_SESSION);
    assert_int_equal(c->fallback, FALLBACK_PRIMARY);
    assert_int_equal(c->max_client_conn, 10000);
    assert_int_equal(c->workers, 0); /* one per CPU */
    assert_int_equal(c->cpu_affinity, CPU_AFFINITY_OFF);
    assert_int_equal(c->busy_poll_us, 0); /* sleep when idle */
    assert_null(c->unix_socket_dir);
    assert_int_equal(c->shutdown_timeout_ms, 30000);
    assert_int_equal(c->client_login_timeout_ms, 60000);
    assert_int_equal(c->connect_timeout_ms, 5000);
    assert_int_equal(c->backend_idle_max, 20);
    assert_int_equal(c->backend_idle_timeout_ms, 60000);
    assert_int_equal(c->backend_lifetime_ms, 3600000);
    assert_true(c->tcp_keepalive);
    assert_int_equal(c->tcp_keepalive_idle_s, 60);
    assert_int_equal(c->tcp_keepalive_interval_s, 10);
    assert_int_equal(c->tcp_keepalive_count, 6);
    assert_false(c->multiplex_reads);
    assert_int_equal(c->multiplex_stall_ms, 10);
    assert_true(c->cache_unnamed_statements);
    assert_true(c->prepare_simple_queries);
    assert_true(c->defer_begin);
    assert_string_equal(c->log_level, "info");
    config_free(c);
}

static void test_config_load_accepts_example(void **state)
{
    (void)state;
    char *err = NULL;
    struct config *c = config_load("conf/pgsteer.yaml", &err);
    if (!c)
        fail_msg("%s", err ? err : "(no report)");
    assert_string_equal(c->listen.host, "127.0.0.1");
    assert_int_equal(c->listen.port, 6432);
    assert_int_equal(c->admin_listen.port, 9930);
    assert_int_equal(c->nusers, 1);
    assert_string_equal(c->users[0].name, "app");
    assert_string_equal(c->users[0].password, "secret");
    assert_int_equal(c->nnodes, 3);
    assert_string_equal(c->nodes[0].name, "primary");
    assert_int_equal(c->nodes[0].port, 5432);
    assert_int_equal(c->nodes[c->primary].port, 5432);
    assert_string_equal(c->nodes[1].name, "replica1");
    assert_int_equal(c->nodes[1].port, 5433);
    assert_int_equal(c->nodes[1].weight, 1);
    assert_string_equal(c->nodes[2].name, "replica2");
    assert_int_equal(c->nodes[2].port, 5434);
    assert_int_equal(c->nodes[2].role, NODE_REPLICA);
    config_free(c);
}

static void test_config_parse_accepts_empty_password_with_trust(void **state)
{
    (void)state;
    struct config *c = parse("auth_method: trust\n"
                             "users: [{name: app, password: ''}]\n"
                             "nodes: [{name: p, host: h, port: 1, role: primary}]\n");
    assert_int_equal(c->auth_method, AUTH_METHOD_TRUST);
    assert_string_equal(c->users[0].password, "");
    config_free(c);
}

static void test_config_parse_reads_node_pooler(void **state)
{
    (void)state;
    struct config *c =
        parse("users: [{name: app, password: a}]\n"
              "nodes: [{name: p, host: h, port: 1, role: primary, pooler: transaction},"
              " {name: r, host: h, port: 2, role: replica, pooler: none},"
              " {name: s, host: h, port: 3, role: replica}]\n");
    assert_true(c->nodes[0].pooled);
    assert_false(c->nodes[1].pooled);
    assert_false(c->nodes[2].pooled);
    config_free(c);
    char *errors = NULL;
    const char *bad = "users: [{name: app, password: a}]\n"
                      "nodes: [{name: p, host: h, port: 1, role: primary, pooler: session}]\n";
    assert_null(config_parse("t.yaml", bad, strlen(bad), &errors));
    assert_non_null(errors);
    assert_non_null(strstr(errors, "t.yaml:2:"));
    assert_non_null(strstr(errors, "pooler"));
    free(errors);
}

static void test_config_parse_reads_scalars_as_text(void **state)
{
    (void)state;
    /* A password or name that YAML would read as a number or boolean is kept as written. */
    struct config *c = parse("users: [{name: 007, password: 1234}, {name: 'yes', password: on}]\n"
                             "nodes: [{name: p, host: h, port: 1, role: primary}]\n"
                             "admin_token: 0x1F\n");
    assert_string_equal(c->users[0].name, "007");
    assert_string_equal(c->users[0].password, "1234");
    assert_string_equal(c->users[1].password, "on");
    assert_string_equal(c->admin_token, "0x1F");
    config_free(c);
}

static void test_config_parse_treats_null_sections_as_empty(void **state)
{
    (void)state;
    /* Optional sections whose entries are all commented out. */
    struct config *c = parse("admin_users:\n"
                             "#  - {name: a, password: b}\n"
                             "write_functions:\n"
                             "monitor:\n"
                             "#  interval_ms: 5\n" BASE);
    assert_int_equal(c->nadmin_users, 0);
    assert_int_equal(c->nwrite_functions, 0);
    assert_int_equal(c->monitor.interval_ms, 100);
    config_free(c);
}

static void test_config_parse_takes_monitor_password_from_its_user(void **state)
{
    (void)state;
    struct config *c = parse("users: [{name: app, password: a}, {name: mon, password: m}]\n"
                             "nodes: [{name: p, host: h, port: 1, role: primary}]\n"
                             "monitor: {user: mon}\n");
    assert_string_equal(c->monitor.user, "mon");
    assert_string_equal(c->monitor.password, "m");
    config_free(c);

    c = parse("users: [{name: app, password: a}]\n"
              "nodes: [{name: p, host: h, port: 1, role: primary}]\n"
              "monitor: {user: watcher, password: w}\n");
    assert_string_equal(c->monitor.user, "watcher");
    assert_string_equal(c->monitor.password, "w");
    config_free(c);

    c = parse("users: [{name: app, password: a}]\n"
              "nodes: [{name: p, host: h, port: 1, role: primary}]\n"
              "monitor: {password: other}\n");
    assert_string_equal(c->monitor.user, "app");
    assert_string_equal(c->monitor.password, "other");
    config_free(c);
}

static void test_config_parse_finds_primary_anywhere(void **state)
{
    (void)state;
    struct config *c = parse("users: [{name: app, password: a}]\n"
                             "nodes:\n"
                             "  - {name: r1, host: h, port: 2, role: replica}\n"
                             "  - {name: p, host: h, port: 1, role: primary}\n");
    assert_int_equal(c->primary, 1);
    config_free(c);
}

static void test_config_parse_accepts_null_errors_pointer(void **state)
{
    (void)state;
    struct config *c = config_parse("t.yaml", "x: 1\n", 5, NULL);
    assert_null(c);
    c = config_parse("t.yaml", BASE, strlen(BASE), NULL);
    assert_non_null(c);
    config_free(c);
    config_free(NULL);
}

/* ---- server_tls --------------------------------------------------------------------------- */

/* A new empty file in /tmp, readable by its owner only, to name in server_tls; path[] must hold
 * 32 bytes. The caller unlinks it. */
static void make_temp_file(char *path)
{
    strcpy(path, "/tmp/pgsteer-test-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        fail_msg("mkstemp: %s", strerror(errno));
    close(fd);
}

static void test_config_server_tls_defaults(void **state)
{
    (void)state;
    struct config *c = parse(BASE);
    assert_int_equal(c->server_tls.mode, TLS_MODE_DISABLE);
    assert_null(c->server_tls.ca_file);
    assert_null(c->server_tls.cert_file);
    assert_null(c->server_tls.key_file);
    config_free(c);
    /* Every key commented out: the defaults too. */
    c = parse("server_tls:\n#  mode: require\n" BASE);
    assert_int_equal(c->server_tls.mode, TLS_MODE_DISABLE);
    assert_null(c->server_tls.ca_file);
    config_free(c);
    c = parse("server_tls: {}\n" BASE);
    assert_int_equal(c->server_tls.mode, TLS_MODE_DISABLE);
    config_free(c);
}

static void test_config_server_tls_parses_each_mode(void **state)
{
    (void)state;
    static const struct {
        const char *word;
        enum tls_mode mode;
    } cases[] = {
        {"disable", TLS_MODE_DISABLE},         {"prefer", TLS_MODE_PREFER},
        {"require", TLS_MODE_REQUIRE},         {"verify-ca", TLS_MODE_VERIFY_CA},
        {"verify-full", TLS_MODE_VERIFY_FULL},
    };
    char ca[32];
    make_temp_file(ca);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        /* With ca_file, which the verify modes need and the others accept. */
        snprintf(text, sizeof text, "server_tls: {mode: %s, ca_file: %s}\n" BASE, cases[i].word,
                 ca);
        struct config *c = parse(text);
        assert_int_equal(c->server_tls.mode, cases[i].mode);
        assert_string_equal(c->server_tls.ca_file, ca);
        assert_string_equal(config_tls_mode_name(c->server_tls.mode), cases[i].word);
        config_free(c);
        if (cases[i].mode == TLS_MODE_VERIFY_CA || cases[i].mode == TLS_MODE_VERIFY_FULL)
            continue;
        snprintf(text, sizeof text, "server_tls:\n  mode: %s\n" BASE, cases[i].word);
        c = parse(text);
        assert_int_equal(c->server_tls.mode, cases[i].mode);
        assert_null(c->server_tls.ca_file);
        config_free(c);
    }
    assert_string_equal(config_tls_mode_name((enum tls_mode)5), "?");
    unlink(ca);
}

static void test_config_server_tls_rejects_bad_modes(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        const char *error;
    } cases[] = {
        {"allow", "t.yaml:2:9: invalid value for 'server_tls.mode': 'allow' (expected disable, "
                  "prefer, require, verify-ca or verify-full)\n"},
        {"sometimes", "t.yaml:2:9: invalid value for 'server_tls.mode': 'sometimes' (expected "
                      "disable, prefer, require, verify-ca or verify-full)\n"},
        {"Require", "t.yaml:2:9: invalid value for 'server_tls.mode': 'Require' (expected "
                    "disable, prefer, require, verify-ca or verify-full)\n"},
        {"on", "t.yaml:2:9: invalid value for 'server_tls.mode': 'on' (expected disable, "
               "prefer, require, verify-ca or verify-full)\n"},
        {"~", "t.yaml:2:9: invalid value for 'server_tls.mode': null (expected disable, "
              "prefer, require, verify-ca or verify-full)\n"},
        {"[require]", "t.yaml:2:9: invalid value for 'server_tls.mode': a list (expected "
                      "disable, prefer, require, verify-ca or verify-full)\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "server_tls:\n  mode: %s\n" BASE, cases[i].value);
        expect_errors(text, cases[i].error);
    }
    expect_errors("server_tls: require\n" BASE,
                  "t.yaml:1:13: expected a mapping for 'server_tls', got 'require'\n");
    expect_errors("server_tls: [{mode: require}]\n" BASE,
                  "t.yaml:1:13: expected a mapping for 'server_tls', got a list\n");
}

static void test_config_server_tls_verify_needs_ca_file(void **state)
{
    (void)state;
    expect_errors("server_tls:\n  mode: verify-full\n" BASE,
                  "t.yaml:2:9: 'server_tls.ca_file' is required when 'server_tls.mode' is "
                  "verify-full (the CA certificates to check the node's certificate against)\n");
    expect_errors("server_tls: {mode: verify-ca}\n" BASE,
                  "t.yaml:1:20: 'server_tls.ca_file' is required when 'server_tls.mode' is "
                  "verify-ca (the CA certificates to check the node's certificate against)\n");
    /* An unusable ca_file is reported for itself, not as missing as well. */
    expect_errors("server_tls:\n  mode: verify-full\n  ca_file: ~\n" BASE,
                  "t.yaml:3:12: expected a string for 'server_tls.ca_file', got null\n");
}

static void test_config_server_tls_needs_cert_and_key(void **state)
{
    (void)state;
    char f[32];
    make_temp_file(f);
    char text[512], expected[512];
    snprintf(text, sizeof text, "server_tls:\n  mode: require\n  cert_file: %s\n" BASE, f);
    expect_errors(text, "t.yaml:3:14: 'server_tls.cert_file' needs 'server_tls.key_file' (give "
                        "both or neither)\n");
    snprintf(text, sizeof text, "server_tls: {key_file: %s}\n" BASE, f);
    expect_errors(text, "t.yaml:1:24: 'server_tls.key_file' needs 'server_tls.cert_file' (give "
                        "both or neither)\n");
    /* Both checked for readability, whatever the pairing. */
    snprintf(text, sizeof text, "server_tls:\n  key_file: /nonexistent/client.key\n" BASE);
    snprintf(expected, sizeof expected,
             "t.yaml:2:13: server_tls.key_file: cannot read '/nonexistent/client.key': No such "
             "file or directory\n"
             "t.yaml:2:13: 'server_tls.key_file' needs 'server_tls.cert_file' (give both or "
             "neither)\n");
    expect_errors(text, expected);
    unlink(f);
}

static void test_config_server_tls_rejects_unreadable_files(void **state)
{
    (void)state;
    expect_errors("server_tls:\n"
                  "  mode: verify-full\n"
                  "  ca_file: /nonexistent/ca.pem\n" BASE,
                  "t.yaml:3:12: server_tls.ca_file: cannot read '/nonexistent/ca.pem': No such "
                  "file or directory\n");
    /* Checked even where the mode does not use it. */
    expect_errors("server_tls: {ca_file: /nonexistent/ca.pem}\n" BASE,
                  "t.yaml:1:23: server_tls.ca_file: cannot read '/nonexistent/ca.pem': No such "
                  "file or directory\n");
    expect_errors("server_tls: {mode: verify-ca, ca_file: /tmp}\n" BASE,
                  "t.yaml:1:40: server_tls.ca_file: cannot read '/tmp': Is a directory\n");
    expect_errors("server_tls: {mode: verify-ca, ca_file: ''}\n" BASE,
                  "t.yaml:1:40: 'server_tls.ca_file' must not be empty\n");
    expect_errors("server_tls:\n"
                  "  cert_file: /nonexistent/client.crt\n"
                  "  key_file: [a]\n" BASE,
                  "t.yaml:2:14: server_tls.cert_file: cannot read '/nonexistent/client.crt': No "
                  "such file or directory\n"
                  "t.yaml:3:13: expected a string for 'server_tls.key_file', got a list\n");
    /* A file its owner may not read; root reads anything, so only checked as another user. */
    if (geteuid() != 0) {
        char f[32], text[512], expected[512];
        make_temp_file(f);
        assert_int_equal(chmod(f, 0), 0);
        snprintf(text, sizeof text, "server_tls: {mode: verify-ca, ca_file: %s}\n" BASE, f);
        snprintf(expected, sizeof expected,
                 "t.yaml:1:40: server_tls.ca_file: cannot read '%s': Permission denied\n", f);
        expect_errors(text, expected);
        unlink(f);
    }
}

static void test_config_server_tls_reports_unknown_keys(void **state)
{
    (void)state;
    expect_errors("server_tls:\n  mode: require\n  sslmode: require\n  ca_fle: x\n" BASE,
                  "t.yaml:3:3: unknown key 'sslmode'\n"
                  "t.yaml:4:3: unknown key 'ca_fle' (did you mean 'ca_file'?)\n");
    expect_errors("ca_file: /etc/ssl/ca.pem\n" BASE,
                  "t.yaml:1:1: unknown key 'ca_file' (it belongs under 'server_tls')\n");
    expect_errors("server_tsl: {mode: require}\n" BASE,
                  "t.yaml:1:1: unknown key 'server_tsl' (did you mean 'server_tls'?)\n");
    expect_errors("server_tls: {mode: require, mode: prefer}\n" BASE,
                  "t.yaml:1:29: duplicate key 'mode' (first at line 1)\n");
}

static void test_config_server_tls_reports_all_problems(void **state)
{
    (void)state;
    expect_errors("server_tls:\n"
                  "  mode: allow\n"
                  "  ca_file: /nonexistent/ca.pem\n"
                  "  cert_file: /nonexistent/client.crt\n"
                  "  colour: blue\n"
                  "workers: 0\n" BASE,
                  "t.yaml:2:9: invalid value for 'server_tls.mode': 'allow' (expected disable, "
                  "prefer, require, verify-ca or verify-full)\n"
                  "t.yaml:3:12: server_tls.ca_file: cannot read '/nonexistent/ca.pem': No such "
                  "file or directory\n"
                  "t.yaml:4:14: server_tls.cert_file: cannot read '/nonexistent/client.crt': No "
                  "such file or directory\n"
                  "t.yaml:4:14: 'server_tls.cert_file' needs 'server_tls.key_file' (give both or "
                  "neither)\n"
                  "t.yaml:5:3: unknown key 'colour'\n"
                  "t.yaml:6:10: 'workers' must be between 1 and 64, got 0\n");
}

static void test_config_server_tls_accepts_full_mapping(void **state)
{
    (void)state;
    char ca[32], cert[32], key[32], text[1024];
    make_temp_file(ca);
    make_temp_file(cert);
    make_temp_file(key);
    snprintf(text, sizeof text,
             "server_tls:\n"
             "  mode: verify-full\n"
             "  ca_file: %s\n"
             "  cert_file: '%s'\n"
             "  key_file: \"%s\"\n" BASE,
             ca, cert, key);
    struct config *c = parse(text);
    assert_int_equal(c->server_tls.mode, TLS_MODE_VERIFY_FULL);
    assert_string_equal(config_tls_mode_name(c->server_tls.mode), "verify-full");
    assert_string_equal(c->server_tls.ca_file, ca);
    assert_string_equal(c->server_tls.cert_file, cert);
    assert_string_equal(c->server_tls.key_file, key);
    config_free(c);
    /* A client certificate with a mode that verifies nothing. */
    snprintf(text, sizeof text, "server_tls: {mode: prefer, cert_file: %s, key_file: %s}\n" BASE,
             cert, key);
    c = parse(text);
    assert_int_equal(c->server_tls.mode, TLS_MODE_PREFER);
    assert_null(c->server_tls.ca_file);
    assert_string_equal(c->server_tls.cert_file, cert);
    assert_string_equal(c->server_tls.key_file, key);
    config_free(c);
    unlink(ca);
    unlink(cert);
    unlink(key);
}

/* ---- client_tls --------------------------------------------------------------------------- */

static void test_config_client_tls_defaults(void **state)
{
    (void)state;
    struct config *c = parse(BASE);
    assert_int_equal(c->client_tls.mode, CLIENT_TLS_DISABLE);
    assert_null(c->client_tls.cert_file);
    assert_null(c->client_tls.key_file);
    assert_null(c->client_tls.ca_file);
    config_free(c);
    c = parse("client_tls:\n#  mode: require\n" BASE);
    assert_int_equal(c->client_tls.mode, CLIENT_TLS_DISABLE);
    config_free(c);
    c = parse("client_tls: {mode: disable}\n" BASE);
    assert_int_equal(c->client_tls.mode, CLIENT_TLS_DISABLE);
    assert_string_equal(config_client_tls_mode_name(c->client_tls.mode), "disable");
    config_free(c);
}

static void test_config_client_tls_parses_each_mode(void **state)
{
    (void)state;
    static const struct {
        const char *word;
        enum client_tls_mode mode;
    } cases[] = {
        {"allow", CLIENT_TLS_ALLOW},
        {"require", CLIENT_TLS_REQUIRE},
        {"verify-ca", CLIENT_TLS_VERIFY_CA},
        {"verify-full", CLIENT_TLS_VERIFY_FULL},
    };
    char cert[32], key[32], ca[32];
    make_temp_file(cert);
    make_temp_file(key);
    make_temp_file(ca);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        snprintf(text, sizeof text,
                 "client_tls:\n  mode: %s\n  cert_file: %s\n  key_file: %s\n  ca_file: %s\n" BASE,
                 cases[i].word, cert, key, ca);
        struct config *c = parse(text);
        assert_int_equal(c->client_tls.mode, cases[i].mode);
        assert_string_equal(c->client_tls.cert_file, cert);
        assert_string_equal(c->client_tls.key_file, key);
        assert_string_equal(c->client_tls.ca_file, ca);
        assert_string_equal(config_client_tls_mode_name(c->client_tls.mode), cases[i].word);
        config_free(c);
        if (cases[i].mode >= CLIENT_TLS_VERIFY_CA)
            continue;
        /* Without ca_file, which only verify-ca needs. */
        snprintf(text, sizeof text, "client_tls: {mode: %s, cert_file: %s, key_file: %s}\n" BASE,
                 cases[i].word, cert, key);
        c = parse(text);
        assert_int_equal(c->client_tls.mode, cases[i].mode);
        assert_null(c->client_tls.ca_file);
        config_free(c);
    }
    assert_string_equal(config_client_tls_mode_name((enum client_tls_mode)5), "?");
    unlink(cert);
    unlink(key);
    unlink(ca);
}

static void test_config_client_tls_rejects_bad_modes(void **state)
{
    (void)state;
    static const char *const values[] = {"prefer", "verify", "on", "Require"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char text[512], expected[512];
        snprintf(text, sizeof text, "client_tls:\n  mode: %s\n" BASE, values[i]);
        snprintf(expected, sizeof expected,
                 "t.yaml:2:9: invalid value for 'client_tls.mode': '%s' (expected disable, "
                 "allow, require, verify-ca or verify-full)\n",
                 values[i]);
        expect_errors(text, expected);
    }
    expect_errors("client_tls: require\n" BASE,
                  "t.yaml:1:13: expected a mapping for 'client_tls', got 'require'\n");
}

#define SECRET                                                                                     \
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"    \
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
#define NODES                                                                                      \
    "nodes:\n"                                                                                     \
    "  - {name: p, host: 127.0.0.1, port: 5432, role: primary}\n"

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_config_auth_file(void **state)
{
    (void)state;
    char f[32], text[512], expected[2048];
    make_temp_file(f);
    /* PgBouncer's userlist.txt: comments, blank lines, a doubled quote, a SCRAM secret */
    write_file(f, "; users of the application\n"
                  "\n"
                  "\"app\" \"secret\"\n"
                  "# reporting\n"
                  "  \"rep\"\"orter\"\t\"" SECRET "\"  \r\n");
    snprintf(text, sizeof text, "auth_file: %s\n" NODES, f);
    struct config *c = parse(text);
    assert_int_equal(c->nusers, 2);
    assert_string_equal(c->users[0].name, "app");
    assert_string_equal(c->users[0].password, "secret");
    assert_string_equal(c->users[1].name, "rep\"orter");
    assert_string_equal(c->users[1].password, SECRET);
    assert_string_equal(c->auth_file, f);
    assert_string_equal(c->monitor.user, "app"); /* (the first user, with its password) */
    config_free(c);
    /* after the users of `users`: a name in both is refused, at the file's line */
    snprintf(text, sizeof text, "auth_file: %s\n" BASE, f);
    snprintf(expected, sizeof expected,
             "%s:3:1: duplicate user name (already in 'users' or earlier in the file)\n", f);
    expect_errors(text, expected);
    /* every problem of the file, as FILE:LINE:COL, after the configuration's own */
    write_file(f, "\"a\" secret\n"
                  "\"b\" \"x\" extra\n"
                  "\"c\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n"
                  "\"d\" \"no end\n"
                  "\"e\"\"f\"\n" /* (one field, e"f: no password) */
                  "\"\" \"x\"\n"
                  "\"g\" \"SCRAM-SHA-256$4096:abc\"\n"
                  "\"h\" \"\"\n");
    snprintf(text, sizeof text, "auth_file: %s\nlog_level: loud\n" NODES, f);
    snprintf(expected, sizeof expected,
             "t.yaml:2:12: invalid value for 'log_level': 'loud' (expected debug, info, warning "
             "or error)\n"
             "%s:1:5: expected the password in double quotes (lines are \"name\" \"password\")\n"
             "%s:2:9: unexpected text after the password\n"
             "%s:3:1: an MD5 hash is not taken: give the password or its SCRAM secret\n"
             "%s:4:5: the quoted password does not end on its line\n"
             "%s:5:7: expected the password in double quotes (lines are \"name\" "
             "\"password\")\n"
             "%s:6:1: the user name must be 1 to 63 bytes\n"
             "%s:7:1: 'password' is not a valid SCRAM secret (expected "
             "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in "
             "pg_authid.rolpassword)\n"
             "%s:8:1: the password must not be empty unless auth_method is trust\n",
             f, f, f, f, f, f, f, f);
    expect_errors(text, expected);
    unlink(f);
    snprintf(text, sizeof text, "auth_file: %s\n" BASE, f);
    snprintf(expected, sizeof expected,
             "t.yaml:1:12: auth_file: cannot read '%s': No such file or directory\n", f);
    expect_errors(text, expected);
    expect_errors(NODES, "t.yaml:1:1: missing required key 'users'\n");
}

static void test_config_auth_query(void **state)
{
    (void)state;
    /* defaults: the monitor's user, password and database; users may be left out */
    struct config *c = parse("auth_query: {}\n"
                             "monitor: {user: watcher, password: w}\n" NODES);
    assert_int_equal(c->nusers, 0);
    assert_true(c->auth_query.enabled);
    assert_string_equal(c->auth_query.query,
                        "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1");
    assert_string_equal(c->auth_query.user, "watcher");
    assert_string_equal(c->auth_query.password, "w");
    assert_string_equal(c->auth_query.dbname, "postgres");
    assert_int_equal(c->auth_query.cache_ms, 60000);
    config_free(c);
    /* absent: off */
    c = parse(BASE);
    assert_false(c->auth_query.enabled);
    assert_null(c->auth_query.query);
    config_free(c);
    /* a user of `users` runs it with its password; every key set */
    c = parse("auth_query:\n"
              "  query: SELECT u, s FROM auth.lookup($1)\n"
              "  user: app\n"
              "  dbname: auth\n"
              "  cache_ms: 0\n" BASE);
    assert_string_equal(c->auth_query.query, "SELECT u, s FROM auth.lookup($1)");
    assert_string_equal(c->auth_query.user, "app");
    assert_string_equal(c->auth_query.password, "secret");
    assert_string_equal(c->auth_query.dbname, "auth");
    assert_int_equal(c->auth_query.cache_ms, 0);
    config_free(c);
    expect_errors("auth_query: {query: select 1, user: nobody, cache_ms: -1, extra: 1}\n"
                  "auth_method: md5\n" BASE,
                  "t.yaml:1:13: auth_query needs auth_method: scram-sha-256 (the secrets it "
                  "finds can only check a SCRAM login)\n"
                  "t.yaml:1:13: missing required key 'password' (auth_query user 'nobody' is not "
                  "in 'users')\n"
                  "t.yaml:1:21: auth_query.query must use the user's name as $1\n"
                  "t.yaml:1:55: 'cache_ms' must be at least 0, got -1\n"
                  "t.yaml:1:59: unknown key 'extra'\n");
    expect_errors("auth_query: {}\n" NODES,
                  "t.yaml:1:13: auth_query: no user to default monitor.user to: set monitor.user "
                  "and monitor.password\n");
    expect_errors("auth_query: [1]\n" BASE,
                  "t.yaml:1:13: expected a mapping for 'auth_query', got a list\n");
}

static void test_config_tls_protocol_and_ciphers(void **state)
{
    (void)state;
    char f[32], text[1024], expected[1024];
    make_temp_file(f);
    struct config *c = parse(BASE);
    assert_int_equal(c->server_tls.min_protocol, 0); /* (section absent: TLS 1.2 and later) */
    assert_null(c->client_tls.ciphers);
    config_free(c);
    snprintf(
        text, sizeof text,
        "server_tls: {mode: require, min_protocol: TLSv1.3}\n"
        "client_tls: {mode: allow, cert_file: %s, key_file: %s, min_protocol: TLSv1.2,\n"
        "             ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:HIGH'}\n"
        "admin_tls: {mode: require, cert_file: %s, key_file: %s, min_protocol: TLSv1.3}\n" BASE,
        f, f, f, f);
    c = parse(text);
    assert_int_equal(c->server_tls.min_protocol, 13);
    assert_null(c->server_tls.ciphers);
    assert_int_equal(c->client_tls.min_protocol, 12);
    assert_string_equal(c->client_tls.ciphers, "ECDHE-RSA-AES128-GCM-SHA256:HIGH");
    assert_int_equal(c->admin_tls.min_protocol, 13);
    config_free(c);
    snprintf(
        text, sizeof text,
        "server_tls: {mode: require, min_protocol: TLSv1.1, ciphers: NOSUCHCIPHER}\n"
        "admin_tls: {mode: allow, cert_file: %s, key_file: %s, ciphers: 'aNULL:!aNULL'}\n" BASE,
        f, f);
    snprintf(expected, sizeof expected,
             "t.yaml:1:43: invalid value for 'server_tls.min_protocol': 'TLSv1.1' (expected "
             "TLSv1.2 or TLSv1.3)\n"
             "t.yaml:1:61: server_tls.ciphers: OpenSSL knows no cipher in 'NOSUCHCIPHER' (see "
             "`openssl ciphers`)\n"
             "t.yaml:2:%d: admin_tls.ciphers: OpenSSL knows no cipher in 'aNULL:!aNULL' (see "
             "`openssl ciphers`)\n",
             (int)(strlen("admin_tls: {mode: allow, cert_file: , key_file: , ciphers: ") +
                   2 * strlen(f) + 1));
    expect_errors(text, expected);
    unlink(f);
}

static void test_config_scram_secrets(void **state)
{
    (void)state;
    /* a secret as a user's password, kept as written; the monitor then needs its own */
    struct config *c = parse("users:\n  - {name: app, password: \"" SECRET "\"}\n"
                             "monitor: {password: plain}\n" NODES);
    assert_string_equal(c->users[0].password, SECRET);
    assert_string_equal(c->monitor.user, "app");
    assert_string_equal(c->monitor.password, "plain");
    config_free(c);
    c = parse("auth_method: trust\nadmin_users:\n  - {name: adm, password: \"" SECRET "\"}\n" BASE);
    assert_string_equal(c->admin_users[0].password, SECRET);
    config_free(c);
    expect_errors("users:\n  - {name: app, password: \"" SECRET "\"}\n" NODES,
                  "t.yaml:1:1: missing required key 'monitor.password' (monitor user 'app' has a "
                  "SCRAM secret in 'users', with which the monitor cannot log in)\n");
    expect_errors("users:\n  - {name: app, password: \"SCRAM-SHA-256$4096:abc\"}\n"
                  "monitor: {password: x}\n" NODES,
                  "t.yaml:2:27: 'password' is not a valid SCRAM secret (expected "
                  "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in "
                  "pg_authid.rolpassword)\n");
    expect_errors("auth_method: md5\nusers:\n  - {name: app, password: \"" SECRET "\"}\n"
                  "monitor: {password: x}\n" NODES,
                  "t.yaml:3:27: a SCRAM secret as 'password' needs auth_method scram-sha-256 (MD5 "
                  "cannot be checked against it)\n");
    expect_errors("auth_method: trust\nusers:\n  - {name: app, password: \"" SECRET "\"}\n"
                  "monitor: {password: x}\n" NODES,
                  "t.yaml:3:27: a SCRAM secret as 'password' needs auth_method scram-sha-256 "
                  "(pgsteer logs in to the nodes with the key a client's SCRAM login proves)\n");
    expect_errors("auth_method: md5\nadmin_users:\n  - {name: adm, password: \"" SECRET
                  "\"}\n" BASE,
                  "t.yaml:3:27: a SCRAM secret as 'password' needs auth_method scram-sha-256 (MD5 "
                  "cannot be checked against it)\n");
}

static void test_config_admin_tls(void **state)
{
    (void)state;
    char f[32], text[512], expected[1024];
    make_temp_file(f);
    struct config *c = parse(BASE);
    assert_int_equal(c->admin_tls.mode, CLIENT_TLS_DISABLE);
    assert_null(c->admin_tls.cert_file);
    config_free(c);
    static const struct {
        const char *word;
        enum client_tls_mode mode;
    } modes[] = {{"disable", CLIENT_TLS_DISABLE},
                 {"allow", CLIENT_TLS_ALLOW},
                 {"require", CLIENT_TLS_REQUIRE}};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        snprintf(text, sizeof text, "admin_tls: {mode: %s, cert_file: %s, key_file: %s}\n" BASE,
                 modes[i].word, f, f);
        c = parse(text);
        assert_int_equal(c->admin_tls.mode, modes[i].mode);
        assert_string_equal(c->admin_tls.cert_file, f);
        assert_string_equal(c->admin_tls.key_file, f);
        assert_int_equal(c->client_tls.mode, CLIENT_TLS_DISABLE); /* (apart from client_tls) */
        config_free(c);
    }
    /* verify-ca asks every admin connection for a certificate of ca_file; verify-full, which
     * names a user, is the application port's only. */
    snprintf(text, sizeof text,
             "admin_tls:\n  mode: verify-ca\n  cert_file: %s\n  key_file: %s\n  ca_file: %s\n"
             "  crl_file: %s\n" BASE,
             f, f, f, f);
    c = parse(text);
    assert_int_equal(c->admin_tls.mode, CLIENT_TLS_VERIFY_CA);
    assert_string_equal(c->admin_tls.ca_file, f);
    assert_string_equal(c->admin_tls.crl_file, f);
    config_free(c);
    snprintf(text, sizeof text,
             "admin_tls:\n  mode: verify-ca\n  cert_file: %s\n  key_file: %s\n" BASE, f, f);
    expect_errors(text, "t.yaml:2:9: 'admin_tls.ca_file' is required when 'admin_tls.mode' is "
                        "verify-ca (the CA certificates to check the clients' certificates "
                        "against)\n");
    snprintf(
        text, sizeof text,
        "admin_tls:\n  mode: verify-full\n  cert_file: %s\n  key_file: %s\n  ca_file: %s\n" BASE, f,
        f, f);
    expect_errors(text, "t.yaml:2:9: invalid value for 'admin_tls.mode': 'verify-full' (expected "
                        "disable, allow, require or verify-ca)\n");
    expect_errors("admin_tls:\n  mode: require\n" BASE,
                  "t.yaml:2:9: 'admin_tls.cert_file' is required when 'admin_tls.mode' is "
                  "require (the certificate pgsteer shows its clients)\n"
                  "t.yaml:2:9: 'admin_tls.key_file' is required when 'admin_tls.mode' is "
                  "require (the private key of admin_tls.cert_file)\n");
    snprintf(text, sizeof text,
             "admin_tls: {mode: allow, cert_file: /nonexistent/a.crt, key_file: %s}\n" BASE, f);
    snprintf(expected, sizeof expected,
             "t.yaml:1:37: admin_tls.cert_file: cannot read '/nonexistent/a.crt': No such file or "
             "directory\n");
    expect_errors(text, expected);
    expect_errors("admin_tls: on\n" BASE,
                  "t.yaml:1:12: expected a mapping for 'admin_tls', got 'on'\n");
    unlink(f);
}

static void test_config_client_tls_needs_its_files(void **state)
{
    (void)state;
    char f[32], text[512], expected[1024];
    make_temp_file(f);
    /* Serving TLS needs a certificate and its key. */
    expect_errors("client_tls:\n  mode: require\n" BASE,
                  "t.yaml:2:9: 'client_tls.cert_file' is required when 'client_tls.mode' is "
                  "require (the certificate pgsteer shows its clients)\n"
                  "t.yaml:2:9: 'client_tls.key_file' is required when 'client_tls.mode' is "
                  "require (the private key of client_tls.cert_file)\n");
    snprintf(text, sizeof text, "client_tls: {mode: allow, cert_file: %s}\n" BASE, f);
    expect_errors(text, "t.yaml:1:20: 'client_tls.key_file' is required when 'client_tls.mode' "
                        "is allow (the private key of client_tls.cert_file)\n");
    /* verify-ca also needs the CAs that sign the clients' certificates. */
    snprintf(text, sizeof text,
             "client_tls:\n  mode: verify-ca\n  cert_file: %s\n  key_file: %s\n" BASE, f, f);
    expect_errors(text, "t.yaml:2:9: 'client_tls.ca_file' is required when 'client_tls.mode' is "
                        "verify-ca (the CA certificates to check the clients' certificates "
                        "against)\n");
    snprintf(text, sizeof text,
             "client_tls: {mode: verify-full, cert_file: %s, key_file: %s}\n" BASE, f, f);
    expect_errors(text, "t.yaml:1:20: 'client_tls.ca_file' is required when 'client_tls.mode' is "
                        "verify-full (the CA certificates to check the clients' certificates "
                        "against)\n");
    /* Files named with the mode off are still checked, and go in pairs. */
    snprintf(text, sizeof text, "client_tls:\n  key_file: %s\n" BASE, f);
    expect_errors(text, "t.yaml:2:13: 'client_tls.key_file' needs 'client_tls.cert_file' (give "
                        "both or neither)\n");
    snprintf(text, sizeof text,
             "client_tls:\n  mode: allow\n  cert_file: /nonexistent/server.crt\n"
             "  key_file: %s\n  ca_file: /tmp\n  cipher: x\n  crl_file: /nonexistent/c.crl\n" BASE,
             f);
    snprintf(expected, sizeof expected,
             "t.yaml:3:14: client_tls.cert_file: cannot read '/nonexistent/server.crt': No such "
             "file or directory\n"
             "t.yaml:5:12: client_tls.ca_file: cannot read '/tmp': Is a directory\n"
             "t.yaml:6:3: unknown key 'cipher' (did you mean 'ciphers'?)\n"
             "t.yaml:7:13: client_tls.crl_file: cannot read '/nonexistent/c.crl': No such file or "
             "directory\n");
    expect_errors(text, expected);
    expect_errors("clent_tls: {mode: allow}\n" BASE,
                  "t.yaml:1:1: unknown key 'clent_tls' (did you mean 'client_tls'?)\n");
    unlink(f);
}

/* ---- max_lag_bytes ------------------------------------------------------------------------ */

static void test_config_parse_max_lag_bytes_units(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        int64_t bytes;
    } cases[] = {
        {"0", 0},
        {"1048576", 1048576},
        {"'4096'", 4096},
        {"512kB", 512 * 1024},
        {"512KB", 512 * 1024},
        {"16MB", 16 * 1024 * 1024},
        {"16mb", 16 * 1024 * 1024},
        {"\"16 MB\"", 16 * 1024 * 1024},
        {"1GB", 1024LL * 1024 * 1024},
        {"2TB", 2LL * 1024 * 1024 * 1024 * 1024},
        {"100B", 100},
        {"8388607TB", 8388607LL << 40},
        {"9223372036854775807", INT64_MAX},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "monitor: {max_lag_bytes: %s}\n" BASE, cases[i].value);
        struct config *c = parse(text);
        if (c->monitor.max_lag_bytes != cases[i].bytes)
            fail_msg("%s: got %lld", cases[i].value, (long long)c->monitor.max_lag_bytes);
        config_free(c);
    }
}

static void test_config_parse_max_lag_bytes_rejects_bad_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        const char *error;
    } cases[] = {
        {"16XB", "t.yaml:1:26: invalid size for 'max_lag_bytes': '16XB' (expected an integer "
                 "number of bytes or a number with a unit: B, kB, MB, GB, TB)\n"},
        {"1.5GB", "t.yaml:1:26: invalid size for 'max_lag_bytes': '1.5GB' (expected an integer "
                  "number of bytes or a number with a unit: B, kB, MB, GB, TB)\n"},
        {"MB", "t.yaml:1:26: invalid size for 'max_lag_bytes': 'MB' (expected an integer "
               "number of bytes or a number with a unit: B, kB, MB, GB, TB)\n"},
        {"'16 '", "t.yaml:1:26: invalid size for 'max_lag_bytes': '16 ' (expected an integer "
                  "number of bytes or a number with a unit: B, kB, MB, GB, TB)\n"},
        {"-1MB", "t.yaml:1:26: 'max_lag_bytes' must be at least 0, got -1MB\n"},
        {"8388608TB", "t.yaml:1:26: 'max_lag_bytes' must be at least 0, got 8388608TB\n"},
        {"9223372036854775808",
         "t.yaml:1:26: 'max_lag_bytes' must be at least 0, got 9223372036854775808\n"},
        {"016MB", "t.yaml:1:26: invalid size for 'max_lag_bytes': '016MB' (no leading zeros)\n"},
        {"[1]", "t.yaml:1:26: expected an integer or a size such as '16MB' for "
                "'max_lag_bytes', got a list\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "monitor: {max_lag_bytes: %s}\n" BASE, cases[i].value);
        expect_errors(text, cases[i].error);
    }
}

/* ---- addresses ---------------------------------------------------------------------------- */

static void test_config_parse_addr_accepts_host_port(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *host;
        int port;
    } cases[] = {
        {"127.0.0.1:6432", "127.0.0.1", 6432},
        {"0.0.0.0:1", "0.0.0.0", 1},
        {"db-1.example.com:65535", "db-1.example.com", 65535},
        {"localhost:5432", "localhost", 5432},
        {"[::1]:6432", "::1", 6432},
        {"[::]:80", "::", 80},
        {"[2001:db8::1]:5432", "2001:db8::1", 5432},
        {"[::ffff:127.0.0.1]:5432", "::ffff:127.0.0.1", 5432},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct config_addr a;
        memset(&a, 0, sizeof a);
        if (config_parse_addr(cases[i].in, &a) != 0)
            fail_msg("rejected %s", cases[i].in);
        assert_string_equal(a.host, cases[i].host);
        assert_int_equal(a.port, cases[i].port);
    }
}

static void test_config_parse_addr_rejects_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "127.0.0.1",
        ":6432",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:99999999999",
        "127.0.0.1:06432",
        "127.0.0.1:+80",
        "127.0.0.1:-1",
        "127.0.0.1:64x",
        "127.0.0.1: 80",
        "::1:6432",
        "[::1]",
        "[::1]6432",
        "[::1:6432",
        "[]:6432",
        "[localhost]:6432",
        "[::1]:",
        "host name:5432",
        "a/b:5432",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct config_addr a = {"unchanged", 7};
        if (config_parse_addr(bad[i], &a) == 0)
            fail_msg("accepted '%s'", bad[i]);
        assert_string_equal(a.host, "unchanged");
        assert_int_equal(a.port, 7);
    }
    char longhost[300];
    memset(longhost, 'a', 256);
    strcpy(longhost + 256, ":1");
    struct config_addr a;
    assert_int_equal(config_parse_addr(longhost, &a), -1);
    longhost[255] = ':';
    longhost[256] = '1';
    longhost[257] = '\0';
    assert_int_equal(config_parse_addr(longhost, &a), 0); /* 255 bytes of host just fit */
    assert_int_equal(config_parse_addr(NULL, &a), -1);
    assert_int_equal(config_parse_addr("1.2.3.4:5", NULL), -1);
}

static void test_config_parse_listen_accepts_ipv6(void **state)
{
    (void)state;
    struct config *c = parse("listen: \"[::1]:7000\"\nadmin_listen: '[::]:7001'\n" BASE);
    assert_string_equal(c->listen.host, "::1");
    assert_int_equal(c->listen.port, 7000);
    assert_string_equal(c->admin_listen.host, "::");
    assert_int_equal(c->admin_listen.port, 7001);
    config_free(c);
}

static void test_config_parse_reports_bad_addresses(void **state)
{
    (void)state;
    expect_errors("listen: localhost:6432\n" BASE,
                  "t.yaml:1:9: 'listen' must be a numeric IP address and port, got "
                  "'localhost:6432'\n");
    expect_errors("listen: 127.0.0.1\n" BASE,
                  "t.yaml:1:9: invalid address for 'listen': '127.0.0.1' (expected host:port)\n");
    expect_errors("admin_listen: 127.0.0.1:0\n" BASE,
                  "t.yaml:1:15: invalid address for 'admin_listen': '127.0.0.1:0' (the port "
                  "must be a number between 1 and 65535)\n");
    expect_errors("listen: '::1:6432'\n" BASE,
                  "t.yaml:1:9: invalid address for 'listen': '::1:6432' (write an IPv6 address "
                  "in brackets, as [::1]:6432)\n");
    expect_errors("listen: ':6432'\n" BASE,
                  "t.yaml:1:9: invalid address for 'listen': ':6432' (the host is empty)\n");
    expect_errors("listen: 6432\n" BASE,
                  "t.yaml:1:9: invalid address for 'listen': '6432' (expected host:port)\n");
    expect_errors("listen: [1, 2]\n" BASE,
                  "t.yaml:1:9: expected a string for 'listen', got a list\n");
    /* Unquoted, YAML reads [::1] as a flow sequence. */
    expect_errors("listen: [::1]:6432\n" BASE,
                  "t.yaml:1:10: YAML syntax error: did not find expected node content (while "
                  "parsing a flow node at line 1, column 10)\n");
}

/* ---- problems, one kind at a time --------------------------------------------------------- */

static void test_config_parse_reports_unknown_keys(void **state)
{
    (void)state;
    expect_errors("listne: 127.0.0.1:6432\n" BASE,
                  "t.yaml:1:1: unknown key 'listne' (did you mean 'listen'?)\n");
    expect_errors("wokers: 2\n" BASE,
                  "t.yaml:1:1: unknown key 'wokers' (did you mean 'workers'?)\n");
    expect_errors("colour: blue\n" BASE, "t.yaml:1:1: unknown key 'colour'\n");
    expect_errors("interval_ms: 100\n" BASE,
                  "t.yaml:1:1: unknown key 'interval_ms' (it belongs under 'monitor')\n");
    expect_errors("monitor:\n  intervall_ms: 100\n  dbnam: x\n" BASE,
                  "t.yaml:2:3: unknown key 'intervall_ms' (did you mean 'interval_ms'?)\n"
                  "t.yaml:3:3: unknown key 'dbnam' (did you mean 'dbname'?)\n");
    expect_errors("users: [{name: a, password: b, pass: c}]\n"
                  "nodes: [{name: p, hots: h, host: h, port: 1, role: primary}]\n",
                  "t.yaml:1:32: unknown key 'pass'\n"
                  "t.yaml:2:19: unknown key 'hots' (did you mean 'host'?)\n");
    expect_errors("? [a]\n: 1\n" BASE, "t.yaml:1:3: expected a key name, got a list\n");
    expect_errors("'': 1\n" BASE, "t.yaml:1:1: unknown key ''\n");
    expect_errors("~: 1\n" BASE, "t.yaml:1:1: expected a key name, got null\n");
}

static void test_config_parse_reports_missing_keys(void **state)
{
    (void)state;
    expect_errors("# comment\nworkers: 2\n", "t.yaml:2:1: missing required key 'users'\n"
                                             "t.yaml:2:1: missing required key 'nodes'\n");
    expect_errors("users: [{name: a}, {password: b}]\n"
                  "nodes:\n"
                  "  - name: p\n"
                  "    role: primary\n",
                  "t.yaml:1:9: missing required key 'password'\n"
                  "t.yaml:1:20: missing required key 'name'\n"
                  "t.yaml:3:5: missing required key 'host'\n"
                  "t.yaml:3:5: missing required key 'port'\n");
    expect_errors("users: [{name: a, password: b}]\n"
                  "nodes: [{host: h, port: 1}]\n",
                  "t.yaml:2:9: missing required key 'name'\n"
                  "t.yaml:2:9: missing required key 'role'\n");
    expect_errors("users: []\nnodes: []\n", "t.yaml:1:8: 'users' must have at least one entry\n"
                                            "t.yaml:2:8: 'nodes' must have at least one entry\n");
    expect_errors("monitor:\n  user: bob\n" BASE,
                  "t.yaml:2:3: missing required key 'password' (monitor user 'bob' is not in "
                  "'users')\n");
}

static void test_config_unix_sockets(void **state)
{
    (void)state;
    struct config *c = parse("unix_socket_dir: /run/pgsteer\n"
                             "users:\n"
                             "  - {name: app, password: secret}\n"
                             "nodes:\n"
                             "  - {name: p, host: /var/run/postgresql, port: 5432, role: primary}\n"
                             "  - {name: r, host: 127.0.0.1, port: 5433, role: replica}\n");
    assert_string_equal(c->unix_socket_dir, "/run/pgsteer");
    assert_string_equal(c->nodes[0].host, "/var/run/postgresql");
    assert_string_equal(c->nodes[0].monitor_host, "/var/run/postgresql");
    config_free(c);
    /* Empty: no socket, as when the key is absent. */
    c = parse("unix_socket_dir: ''\n" BASE);
    assert_null(c->unix_socket_dir);
    config_free(c);

    char path[32];
    assert_int_equal(config_socket_path("/tmp", 6432, path, sizeof path), 0);
    assert_string_equal(path, "/tmp/.s.PGSQL.6432");
    assert_int_equal(config_socket_path("/tmp", 6432, path, 18), -1); /* no room for the NUL */
    assert_int_equal(config_socket_path("/tmp", 6432, path, 19), 0);

    /* 92 bytes of directory leave room for "/.s.PGSQL.65535" in a 108-byte sun_path; 93 not. */
    char dir[200], text[600];
    memset(dir, 'd', sizeof dir);
    dir[0] = '/';
    dir[92] = '\0';
    snprintf(text, sizeof text, "unix_socket_dir: %s\n" BASE, dir);
    c = parse(text);
    assert_non_null(c);
    config_free(c);
    dir[92] = 'd';
    dir[93] = '\0';
    snprintf(text, sizeof text,
             "unix_socket_dir: %s\n"
             "users:\n"
             "  - {name: app, password: secret}\n"
             "nodes:\n"
             "  - {name: p, host: %s, port: 5432, role: primary}\n"
             "  - {name: r, host: 127.0.0.1, port: 5433, role: replica}\n",
             dir, dir);
    expect_errors(text, "t.yaml:1:18: 'unix_socket_dir' is too long for a socket path (at most "
                        "92 bytes)\n"
                        "t.yaml:5:21: 'host' is too long for a socket path (at most 92 bytes)\n");
    expect_errors("unix_socket_dir: run/pgsteer\n" BASE,
                  "t.yaml:1:18: 'unix_socket_dir' must be an absolute directory path, got "
                  "'run/pgsteer'\n");
}

static void test_config_parse_reports_wrong_types(void **state)
{
    (void)state;
    expect_errors("users: app\n"
                  "nodes: {name: p}\n"
                  "monitor: [1]\n"
                  "write_functions: f\n"
                  "admin_users: {}\n",
                  "t.yaml:1:8: expected a list for 'users', got 'app'\n"
                  "t.yaml:2:8: expected a list for 'nodes', got a mapping\n"
                  "t.yaml:3:10: expected a mapping for 'monitor', got a list\n"
                  "t.yaml:4:18: expected a list for 'write_functions', got 'f'\n"
                  "t.yaml:5:14: expected a list for 'admin_users', got a mapping\n");
    expect_errors("users: [app]\nnodes: [p]\n",
                  "t.yaml:1:9: expected a mapping with name and password for each entry of "
                  "'users', got 'app'\n"
                  "t.yaml:2:9: expected a mapping for each entry of 'nodes', got 'p'\n");
    expect_errors("cpu_affinity: on\n" BASE,
                  "t.yaml:1:15: invalid value for 'cpu_affinity': 'on' (expected off or auto)\n");
    expect_errors("workers:\nadmin_token: ~\nlog_level: [info]\nauth_method: {}\n" BASE,
                  "t.yaml:1:9: expected an integer for 'workers', got an empty value\n"
                  "t.yaml:2:14: expected a string for 'admin_token', got null\n"
                  "t.yaml:3:12: invalid value for 'log_level': a list (expected debug, info, "
                  "warning or error)\n"
                  "t.yaml:4:14: invalid value for 'auth_method': a mapping (expected "
                  "scram-sha-256, md5 or trust)\n");
    expect_errors("users: [{name: [a], password: {b: c}}]\n"
                  "nodes: [{name: p, host: h, port: 1, role: primary}]\n",
                  "t.yaml:1:16: expected a string for 'name', got a list\n"
                  "t.yaml:1:31: expected a string for 'password', got a mapping\n");
}

static void test_config_parse_reports_bad_integers(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        const char *error;
    } cases[] = {
        {"12abc", "t.yaml:1:10: expected an integer for 'workers', got '12abc'\n"},
        {"1.5", "t.yaml:1:10: expected an integer for 'workers', got '1.5'\n"},
        {"1e1", "t.yaml:1:10: expected an integer for 'workers', got '1e1'\n"},
        {"0x10", "t.yaml:1:10: expected an integer for 'workers', got '0x10'\n"},
        {"+4", "t.yaml:1:10: expected an integer for 'workers', got '+4'\n"},
        {"1_0", "t.yaml:1:10: expected an integer for 'workers', got '1_0'\n"},
        {"true", "t.yaml:1:10: expected an integer for 'workers', got 'true'\n"},
        {"'4'", "t.yaml:1:10: expected an integer for 'workers', got the string \"4\"\n"},
        {"\"4\"", "t.yaml:1:10: expected an integer for 'workers', got the string \"4\"\n"},
        {"!!str 4", "t.yaml:1:10: expected an integer for 'workers', got the string \"4\"\n"},
        {"04",
         "t.yaml:1:10: expected a decimal integer for 'workers', got '04' (no leading zeros)\n"},
        {"0", "t.yaml:1:10: 'workers' must be between 1 and 64, got 0\n"},
        {"65", "t.yaml:1:10: 'workers' must be between 1 and 64, got 65\n"},
        {"-1", "t.yaml:1:10: 'workers' must be between 1 and 64, got -1\n"},
        {"4294967297", "t.yaml:1:10: 'workers' must be between 1 and 64, got 4294967297\n"},
        {"99999999999999999999",
         "t.yaml:1:10: 'workers' must be between 1 and 64, got 99999999999999999999\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "workers: %s\n" BASE, cases[i].value);
        expect_errors(text, cases[i].error);
    }
}

static void test_config_parse_reports_out_of_range(void **state)
{
    (void)state;
    expect_errors("max_client_conn: 1000001\n"
                  "shutdown_timeout_ms: -1\n"
                  "connect_timeout_ms: 0\n"
                  "client_login_timeout_ms: -1\n"
                  "monitor:\n"
                  "  interval_ms: 60001\n"
                  "  max_lag_ms: -5\n"
                  "  connect_timeout_ms: 0\n"
                  "  recover_checks: 0\n"
                  "users: [{name: a, password: b}]\n"
                  "nodes:\n"
                  "  - {name: p, host: h, port: 65536, role: primary, monitor_port: 0}\n"
                  "  - {name: r, host: h, port: 1, role: replica, weight: 1000001}\n",
                  "t.yaml:1:18: 'max_client_conn' must be between 1 and 1000000, got 1000001\n"
                  "t.yaml:2:22: 'shutdown_timeout_ms' must be at least 0, got -1\n"
                  "t.yaml:3:21: 'connect_timeout_ms' must be at least 1, got 0\n"
                  "t.yaml:4:26: 'client_login_timeout_ms' must be at least 0, got -1\n"
                  "t.yaml:6:16: 'interval_ms' must be between 10 and 60000, got 60001\n"
                  "t.yaml:7:15: 'max_lag_ms' must be at least 0, got -5\n"
                  "t.yaml:8:23: 'connect_timeout_ms' must be at least 1, got 0\n"
                  "t.yaml:9:19: 'recover_checks' must be at least 1, got 0\n"
                  "t.yaml:12:30: 'port' must be between 1 and 65535, got 65536\n"
                  "t.yaml:12:66: 'monitor_port' must be between 1 and 65535, got 0\n"
                  "t.yaml:13:56: 'weight' must be between 0 and 1000000, got 1000001\n");
    expect_errors("busy_poll_us: 10001\n" BASE,
                  "t.yaml:1:15: 'busy_poll_us' must be between 0 and 10000, got 10001\n");
    expect_errors("busy_poll_us: -1\n" BASE,
                  "t.yaml:1:15: 'busy_poll_us' must be between 0 and 10000, got -1\n");
    struct config *c = parse("busy_poll_us: 10000\n" BASE);
    assert_int_equal(c->busy_poll_us, 10000);
    config_free(c);
    expect_errors("multiplex_stall_ms: -1\n" BASE,
                  "t.yaml:1:21: 'multiplex_stall_ms' must be at least 0, got -1\n");
    c = parse("multiplex_stall_ms: 0\nmultiplex_reads: on\n" BASE);
    assert_int_equal(c->multiplex_stall_ms, 0);
    assert_true(c->multiplex_reads);
    config_free(c);
    expect_errors("backend_idle_max: -1\n"
                  "backend_idle_timeout_ms: 0\n"
                  "backend_lifetime_ms: -1\n" BASE,
                  "t.yaml:1:19: 'backend_idle_max' must be between 0 and 100000, got -1\n"
                  "t.yaml:2:26: 'backend_idle_timeout_ms' must be at least 1, got 0\n"
                  "t.yaml:3:22: 'backend_lifetime_ms' must be at least 0, got -1\n");
    c = parse("backend_idle_max: 0\n" BASE);
    assert_int_equal(c->backend_idle_max, 0); /* no reuse */
    config_free(c);
    expect_errors("tcp_keepalive_idle_s: 0\n"
                  "tcp_keepalive_interval_s: 32768\n"
                  "tcp_keepalive_count: 128\n"
                  "tcp_keepalive: yes\n" BASE,
                  "t.yaml:1:23: 'tcp_keepalive_idle_s' must be between 1 and 32767, got 0\n"
                  "t.yaml:2:27: 'tcp_keepalive_interval_s' must be between 1 and 32767, got "
                  "32768\n"
                  "t.yaml:3:22: 'tcp_keepalive_count' must be between 1 and 127, got 128\n"
                  "t.yaml:4:16: invalid value for 'tcp_keepalive': 'yes' (expected off or on)\n");
    expect_errors(
        "multiplex_reads: true\n" BASE,
        "t.yaml:1:18: invalid value for 'multiplex_reads': 'true' (expected off or on)\n");
    c = parse("multiplex_reads: on\n" BASE);
    assert_true(c->multiplex_reads);
    config_free(c);
    expect_errors("cache_unnamed_statements: 1\n" BASE,
                  "t.yaml:1:27: invalid value for 'cache_unnamed_statements': '1' (expected off "
                  "or on)\n");
    c = parse("cache_unnamed_statements: off\n" BASE);
    assert_false(c->cache_unnamed_statements);
    config_free(c);
    expect_errors("prepare_simple_queries: yes\n" BASE,
                  "t.yaml:1:25: invalid value for 'prepare_simple_queries': 'yes' (expected off "
                  "or on)\n");
    c = parse("prepare_simple_queries: off\n" BASE);
    assert_false(c->prepare_simple_queries);
    config_free(c);
    expect_errors("defer_begin: 0\n" BASE,
                  "t.yaml:1:14: invalid value for 'defer_begin': '0' (expected off or on)\n");
    c = parse("defer_begin: off\n" BASE);
    assert_false(c->defer_begin);
    config_free(c);
    c = parse("tcp_keepalive_idle_s: 32767\ntcp_keepalive_interval_s: 1\n"
              "tcp_keepalive_count: 1\ntcp_keepalive: on\n" BASE);
    assert_true(c->tcp_keepalive);
    assert_int_equal(c->tcp_keepalive_idle_s, 32767);
    assert_int_equal(c->tcp_keepalive_interval_s, 1);
    assert_int_equal(c->tcp_keepalive_count, 1);
    config_free(c);
}

static void test_config_parse_reports_bad_enums(void **state)
{
    (void)state;
    expect_errors("auth_method: SCRAM\n"
                  "consistency: always\n"
                  "fallback: replica\n"
                  "log_level: verbose\n"
                  "users: [{name: a, password: b}]\n"
                  "nodes: [{name: p, host: h, port: 1, role: master}]\n",
                  "t.yaml:1:14: invalid value for 'auth_method': 'SCRAM' (expected "
                  "scram-sha-256, md5 or trust)\n"
                  "t.yaml:2:14: invalid value for 'consistency': 'always' (expected session, "
                  "eventual or strong)\n"
                  "t.yaml:3:11: invalid value for 'fallback': 'replica' (expected primary or "
                  "error)\n"
                  "t.yaml:4:12: invalid value for 'log_level': 'verbose' (expected debug, info, "
                  "warning or error)\n"
                  "t.yaml:6:43: invalid value for 'role': 'master' (expected primary or "
                  "replica)\n");
}

static void test_config_parse_reports_duplicate_keys(void **state)
{
    (void)state;
    expect_errors("workers: 2\n" BASE "workers: 3\n",
                  "t.yaml:7:1: duplicate key 'workers' (first at line 1)\n");
    expect_errors("monitor:\n  user: app\n  user: app\n" BASE,
                  "t.yaml:3:3: duplicate key 'user' (first at line 2)\n");
    expect_errors("users: [{name: a, password: b, name: c}]\n"
                  "nodes: [{name: p, host: h, port: 1, role: primary, port: 2}]\n",
                  "t.yaml:1:32: duplicate key 'name' (first at line 1)\n"
                  "t.yaml:2:52: duplicate key 'port' (first at line 2)\n");
}

static void test_config_parse_reports_duplicate_names(void **state)
{
    (void)state;
    expect_errors("users:\n"
                  "  - {name: app, password: a}\n"
                  "  - {name: app, password: b}\n"
                  "admin_users:\n"
                  "  - {name: root, password: a}\n"
                  "  - {name: root, password: b}\n"
                  "nodes:\n"
                  "  - name: p\n"
                  "    host: h\n"
                  "    port: 1\n"
                  "    role: primary\n"
                  "  - {name: p, host: h, port: 2, role: replica}\n"
                  "write_functions: [f, F]\n",
                  "t.yaml:3:12: duplicate user name 'app' in 'users' (first at line 2)\n"
                  "t.yaml:6:12: duplicate user name 'root' in 'admin_users' (first at line 5)\n"
                  "t.yaml:12:12: duplicate node name 'p' (first at line 8)\n"
                  "t.yaml:13:22: duplicate function 'f' in 'write_functions' (first at line "
                  "13)\n");
}

static void test_config_parse_reports_bad_names(void **state)
{
    (void)state;
    expect_errors("users: [{name: '', password: a}]\n"
                  "nodes:\n"
                  "  - {name: 'a b', host: h, port: 1, role: primary}\n"
                  "  - {name: 'x/y', host: h, port: 2, role: replica}\n"
                  "  - {name: "
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa, host: h, "
                  "port: 3, role: replica}\n"
                  "write_functions: [1fn, my.fn, 'a-b']\n",
                  "t.yaml:1:16: 'name' must not be empty\n"
                  "t.yaml:3:12: invalid node name 'a b' (use 1 to 63 letters, digits, '_', '.' "
                  "or '-')\n"
                  "t.yaml:4:12: invalid node name 'x/y' (use 1 to 63 letters, digits, '_', '.' "
                  "or '-')\n"
                  "t.yaml:5:12: invalid node name "
                  "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' (use 1 to 63 letters, "
                  "digits, '_', '.' or '-')\n"
                  "t.yaml:6:19: invalid function name '1fn' in 'write_functions' (letters, "
                  "digits, '_' and '$', not starting with a digit, at most 63; no schema)\n"
                  "t.yaml:6:24: invalid function name 'my.fn' in 'write_functions' (letters, "
                  "digits, '_' and '$', not starting with a digit, at most 63; no schema)\n"
                  "t.yaml:6:31: invalid function name 'a-b' in 'write_functions' (letters, "
                  "digits, '_' and '$', not starting with a digit, at most 63; no schema)\n");
}

static void test_config_parse_reports_primary_count(void **state)
{
    (void)state;
    expect_errors("users: [{name: a, password: b}]\n"
                  "nodes:\n"
                  "  - {name: r1, host: h, port: 1, role: replica}\n"
                  "  - {name: r2, host: h, port: 2, role: replica}\n",
                  "t.yaml:3:3: no node has role primary; exactly one is required\n");
    expect_errors("users: [{name: a, password: b}]\n"
                  "nodes:\n"
                  "  - {name: p1, host: h, port: 1, role: primary}\n"
                  "  - {name: p2, host: h, port: 2, role: primary}\n"
                  "  - {name: p3, host: h, port: 3, role: primary}\n",
                  "t.yaml:4:40: more than one node has role primary (the first is 'p1', line "
                  "3)\n"
                  "t.yaml:5:40: more than one node has role primary (the first is 'p1', line "
                  "3)\n");
    /* A node whose role is unreadable might be the primary: only the role is reported. */
    expect_errors("users: [{name: a, password: b}]\n"
                  "nodes: [{name: p, host: h, port: 1, role: prim}]\n",
                  "t.yaml:2:43: invalid value for 'role': 'prim' (expected primary or replica)\n");
}

static void test_config_parse_reports_too_many_nodes(void **state)
{
    (void)state;
    char text[8192] = "users: [{name: a, password: b}]\nnodes:\n";
    for (int i = 0; i <= CONFIG_MAX_NODES; i++) {
        size_t used = strlen(text);
        snprintf(text + used, sizeof text - used, "  - {name: n%d, host: h, port: %d, role: %s}\n",
                 i, i + 1, i == 0 ? "primary" : "replica");
    }
    expect_errors(text, "t.yaml:3:3: too many nodes (33; at most 32)\n");
}

static void test_config_parse_reports_empty_passwords(void **state)
{
    (void)state;
    expect_errors("users: [{name: a, password: ''}]\n"
                  "admin_users: [{name: r, password: \"\"}]\n"
                  "nodes: [{name: p, host: h, port: 1, role: primary}]\n"
                  "auth_method: md5\n",
                  "t.yaml:1:29: 'password' must not be empty unless auth_method is trust\n"
                  "t.yaml:2:35: 'password' must not be empty unless auth_method is trust\n");
    expect_errors("users: [{name: a, password: }]\n"
                  "nodes: [{name: p, host: h, port: 1, role: primary}]\n",
                  "t.yaml:1:29: expected a string for 'password', got an empty value\n");
    expect_errors("admin_token: ''\nmonitor: {dbname: ''}\n" BASE,
                  "t.yaml:1:14: 'admin_token' must not be empty\n"
                  "t.yaml:2:19: 'dbname' must not be empty\n");
}

static void test_config_parse_reports_nul_characters(void **state)
{
    (void)state;
    expect_errors("admin_token: \"ab\\0cd\"\n" BASE,
                  "t.yaml:1:14: 'admin_token' must not contain a NUL character\n");
    /* A raw NUL byte in the input is not YAML at all. */
    static const char raw[] = "admin_token: ab\0cd\n";
    char *err = NULL;
    assert_null(config_parse("t.yaml", raw, sizeof raw - 1, &err));
    assert_string_equal(err, "t.yaml:1:16: invalid input: control characters are not allowed "
                             "(byte 0x00)\n");
    free(err);
}

static void test_config_parse_reports_syntax_errors(void **state)
{
    (void)state;
    expect_errors("listen: 127.0.0.1:6432\n  workers: 2\n" BASE,
                  "t.yaml:2:10: YAML syntax error: mapping values are not allowed in this "
                  "context\n");
    expect_errors("users: [{name: a\n",
                  "t.yaml:2:1: YAML syntax error: did not find expected ',' or '}' (while "
                  "parsing a flow mapping at line 1, column 9)\n");
    expect_errors("listen: \"127.0.0.1\n",
                  "t.yaml:2:1: YAML syntax error: found unexpected end of stream (while "
                  "scanning a quoted scalar at line 1, column 9)\n");
    expect_errors("a: b\n\tc: d\n",
                  "t.yaml:2:1: YAML syntax error: found a tab character that violates "
                  "indentation (while scanning a plain scalar at line 1, column 4)\n");
    expect_errors("users: x\n---\nusers: y\n", "t.yaml:2:1: only one YAML document is allowed\n");
    expect_errors("workers: \xff\n" BASE,
                  "t.yaml:1:10: invalid input: invalid leading UTF-8 octet (byte 0xff)\n");
}

static void test_config_parse_reports_empty_input(void **state)
{
    (void)state;
    expect_errors("", "t.yaml:1:1: the configuration is empty\n");
    expect_errors("# nothing but comments\n\n", "t.yaml:1:1: the configuration is empty\n");
    expect_errors("---\n", "t.yaml:1:1: the configuration is empty\n");
    expect_errors("~\n", "t.yaml:1:1: the configuration is empty\n");
    expect_errors("- a\n",
                  "t.yaml:1:1: expected a mapping of settings at the top level, got a list\n");
    expect_errors("listen\n",
                  "t.yaml:1:1: expected a mapping of settings at the top level, got 'listen'\n");
    char *err = NULL;
    assert_null(config_parse("t.yaml", NULL, 10, &err));
    assert_string_equal(err, "t.yaml:1:1: the configuration is empty\n");
    free(err);
}

static void test_config_parse_rejects_anchors_and_tags(void **state)
{
    (void)state;
    expect_errors("users:\n"
                  "  - &u {name: a, password: b}\n"
                  "  - *u\n"
                  "nodes: [{name: p, host: h, port: 1, role: primary}]\n",
                  "t.yaml:2:5: YAML anchors are not supported ('&u'); write the value out\n"
                  "t.yaml:3:5: YAML aliases are not supported ('*u'); write the value out\n");
    expect_errors("workers: !!int 2\n" BASE,
                  "t.yaml:1:10: YAML tags are not supported ('tag:yaml.org,2002:int')\n");
    expect_errors("monitor: !custom {}\n" BASE,
                  "t.yaml:1:10: YAML tags are not supported ('!custom')\n");
    expect_errors("<<: {workers: 2}\n" BASE, "t.yaml:1:1: unknown key '<<'\n");
}

static void test_config_parse_reports_deep_nesting(void **state)
{
    (void)state;
    char text[1024] = "workers: ";
    for (int i = 0; i < 100; i++)
        strcat(text, "[");
    strcat(text, "\n");
    expect_errors(text, "t.yaml:1:73: nesting is too deep (more than 64 levels)\n");
}

static void test_config_parse_reports_all_problems(void **state)
{
    (void)state;
    char *err = NULL;
    assert_null(config_load("tests/data/config/errors.yaml", &err));
    assert_non_null(err);
    assert_string_equal(err, read_file("tests/data/config/errors.txt"));
    free(err);
}

static void test_config_parse_caps_problem_count(void **state)
{
    (void)state;
    char text[8192] = "";
    for (int i = 0; i < 150; i++) {
        size_t used = strlen(text);
        snprintf(text + used, sizeof text - used, "k%d: 1\n", i);
    }
    strcat(text, BASE);
    char *err = NULL;
    assert_null(config_parse("t.yaml", text, strlen(text), &err));
    size_t lines = 0;
    for (const char *p = err; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 101);
    assert_non_null(strstr(err, "t.yaml:100:1: unknown key 'k99'\n"
                                "t.yaml:101:1: too many problems; only 100 are reported\n"));
    free(err);
}

static void test_config_load_reports_unreadable_file(void **state)
{
    (void)state;
    char *err = NULL;
    assert_null(config_load("tests/data/config/no-such-file.yaml", &err));
    assert_string_equal(err, "tests/data/config/no-such-file.yaml:1:1: cannot open the file: No "
                             "such file or directory\n");
    free(err);
    assert_null(config_load("tests/data/config", &err));
    assert_string_equal(err, "tests/data/config:1:1: cannot read the file: Is a directory\n");
    free(err);
}

/* ---- lookups ------------------------------------------------------------------------------ */

static void test_config_find_user_matches_exact_name(void **state)
{
    (void)state;
    struct config *c = parse("users: [{name: app, password: a}, {name: App2, password: b}]\n"
                             "admin_users: [{name: root, password: r}]\n"
                             "nodes: [{name: p, host: h, port: 1, role: primary}]\n");
    const struct config_user *u = config_find_user(c, "App2");
    assert_non_null(u);
    assert_string_equal(u->password, "b");
    assert_ptr_equal(config_find_user(c, "app"), &c->users[0]);
    assert_null(config_find_user(c, "APP"));
    assert_null(config_find_user(c, "ap"));
    assert_null(config_find_user(c, "root"));
    assert_null(config_find_user(c, NULL));
    assert_ptr_equal(config_find_admin_user(c, "root"), &c->admin_users[0]);
    assert_null(config_find_admin_user(c, "app"));
    config_free(c);
}

/* ---- robustness --------------------------------------------------------------------------- */

/* Whatever the input, the result is either a config or a report whose every line has the
 * form NAME:LINE:COL: message. */
static bool check_outcome(const char *text, size_t len)
{
    char *err = NULL;
    struct config *c = config_parse("t.yaml", text, len, &err);
    if (c) {
        assert_null(err);
        assert_true(c->nnodes >= 1 && c->primary >= 0 && (size_t)c->primary < c->nnodes);
        assert_true(c->nusers >= 1);
        config_free(c);
        return true;
    }
    assert_non_null(err);
    assert_true(err[0] != '\0');
    for (const char *line = err; *line;) {
        const char *end = strchr(line, '\n');
        assert_non_null(end);
        unsigned l, col;
        int used = 0;
        if (sscanf(line, "t.yaml:%u:%u: %n", &l, &col, &used) != 2 || used == 0 || l == 0 ||
            col == 0 || line + used >= end)
            fail_msg("malformed report line: %.*s", (int)(end - line), line);
        line = end + 1;
    }
    free(err);
    return false;
}

static void test_config_parse_survives_truncation(void **state)
{
    (void)state;
    const char *full = read_file("tests/data/config/full.yaml");
    size_t len = strlen(full);
    /* Each prefix in its own exact-size buffer, so ASan catches a read past the end. */
    for (size_t n = 0; n <= len; n++) {
        char *p = malloc(n ? n : 1);
        assert_non_null(p);
        memcpy(p, full, n);
        check_outcome(p, n);
        free(p);
    }
}

static void test_config_parse_survives_mutation(void **state)
{
    (void)state;
    const char *full = read_file("tests/data/config/full.yaml");
    size_t len = strlen(full);
    static const char interesting[] = ":-[]{},'\"&*!|>#%@`\n\t \\?0~\x80\xff";
    uint32_t seed = 12345;
    int accepted = 0, rejected = 0;
    for (int iter = 0; iter < 3000; iter++) {
        char *p = malloc(len);
        assert_non_null(p);
        memcpy(p, full, len);
        int edits = 1 + iter % 4;
        for (int e = 0; e < edits; e++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % len;
            seed = seed * 1103515245u + 12345u;
            p[at] = (seed >> 16) % 2 ? interesting[(seed >> 8) % (sizeof interesting - 1)]
                                     : (char)(seed >> 8);
        }
        if (check_outcome(p, len))
            accepted++;
        else
            rejected++;
        free(p);
    }
    /* Both paths must have been exercised, or the mutations prove little. */
    printf("mutations: %d accepted, %d rejected\n", accepted, rejected);
    assert_true(accepted > 0);
    assert_true(rejected > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_load_sets_every_key),
        cmocka_unit_test(test_config_parse_applies_defaults),
        cmocka_unit_test(test_config_load_accepts_example),
        cmocka_unit_test(test_config_parse_accepts_empty_password_with_trust),
        cmocka_unit_test(test_config_parse_reads_node_pooler),
        cmocka_unit_test(test_config_parse_reads_scalars_as_text),
        cmocka_unit_test(test_config_parse_treats_null_sections_as_empty),
        cmocka_unit_test(test_config_parse_takes_monitor_password_from_its_user),
        cmocka_unit_test(test_config_parse_finds_primary_anywhere),
        cmocka_unit_test(test_config_parse_accepts_null_errors_pointer),
        cmocka_unit_test(test_config_server_tls_defaults),
        cmocka_unit_test(test_config_server_tls_parses_each_mode),
        cmocka_unit_test(test_config_server_tls_rejects_bad_modes),
        cmocka_unit_test(test_config_server_tls_verify_needs_ca_file),
        cmocka_unit_test(test_config_server_tls_needs_cert_and_key),
        cmocka_unit_test(test_config_server_tls_rejects_unreadable_files),
        cmocka_unit_test(test_config_server_tls_reports_unknown_keys),
        cmocka_unit_test(test_config_server_tls_reports_all_problems),
        cmocka_unit_test(test_config_server_tls_accepts_full_mapping),
        cmocka_unit_test(test_config_client_tls_defaults),
        cmocka_unit_test(test_config_client_tls_parses_each_mode),
        cmocka_unit_test(test_config_client_tls_rejects_bad_modes),
        cmocka_unit_test(test_config_client_tls_needs_its_files),
        cmocka_unit_test(test_config_admin_tls),
        cmocka_unit_test(test_config_scram_secrets),
        cmocka_unit_test(test_config_tls_protocol_and_ciphers),
        cmocka_unit_test(test_config_auth_file),
        cmocka_unit_test(test_config_auth_query),
        cmocka_unit_test(test_config_parse_max_lag_bytes_units),
        cmocka_unit_test(test_config_parse_max_lag_bytes_rejects_bad_sizes),
        cmocka_unit_test(test_config_parse_addr_accepts_host_port),
        cmocka_unit_test(test_config_parse_addr_rejects_malformed),
        cmocka_unit_test(test_config_parse_listen_accepts_ipv6),
        cmocka_unit_test(test_config_parse_reports_bad_addresses),
        cmocka_unit_test(test_config_parse_reports_unknown_keys),
        cmocka_unit_test(test_config_parse_reports_missing_keys),
        cmocka_unit_test(test_config_parse_reports_wrong_types),
        cmocka_unit_test(test_config_unix_sockets),
        cmocka_unit_test(test_config_parse_reports_bad_integers),
        cmocka_unit_test(test_config_parse_reports_out_of_range),
        cmocka_unit_test(test_config_parse_reports_bad_enums),
        cmocka_unit_test(test_config_parse_reports_duplicate_keys),
        cmocka_unit_test(test_config_parse_reports_duplicate_names),
        cmocka_unit_test(test_config_parse_reports_bad_names),
        cmocka_unit_test(test_config_parse_reports_primary_count),
        cmocka_unit_test(test_config_parse_reports_too_many_nodes),
        cmocka_unit_test(test_config_parse_reports_empty_passwords),
        cmocka_unit_test(test_config_parse_reports_nul_characters),
        cmocka_unit_test(test_config_parse_reports_syntax_errors),
        cmocka_unit_test(test_config_parse_reports_empty_input),
        cmocka_unit_test(test_config_parse_rejects_anchors_and_tags),
        cmocka_unit_test(test_config_parse_reports_deep_nesting),
        cmocka_unit_test(test_config_parse_reports_all_problems),
        cmocka_unit_test(test_config_parse_caps_problem_count),
        cmocka_unit_test(test_config_load_reports_unreadable_file),
        cmocka_unit_test(test_config_find_user_matches_exact_name),
        cmocka_unit_test(test_config_parse_survives_truncation),
        cmocka_unit_test(test_config_parse_survives_mutation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
