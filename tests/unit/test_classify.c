/* SPDX-License-Identifier: MIT */
/* Unit tests for the SQL classifier: the table of cases in tests/data/classify.txt, plus spans,
 * extra write functions, text bounds and NUL handling. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"

/* Relative to the repository root, where `make unit` runs the test binaries. */
#ifndef CLASSIFY_DATA
#define CLASSIFY_DATA "tests/data/classify.txt"
#endif

#define MIN_CASES    220
#define LINE_MAX_LEN 8192

static const char *data_path = CLASSIFY_DATA;

/* Extra write functions every table case runs with. */
static const char *const extra_names[] = {"app_enqueue", "audit_touch"};
static const struct classify_functions extra = {extra_names, 2};

static const struct {
    const char *name;
    unsigned flag;
} flag_names[] = {
    {"WRITE", CL_WRITE},
    {"BEGIN", CL_BEGIN},
    {"BEGIN_READ_ONLY", CL_BEGIN_READ_ONLY},
    {"END_TX", CL_END_TX},
    {"SET_SESSION", CL_SET_SESSION},
    {"SET_LOCAL", CL_SET_LOCAL},
    {"TX_READ_ONLY", CL_TX_READ_ONLY},
    {"PIN", CL_PIN},
    {"FORCE_PRIMARY", CL_FORCE_PRIMARY},
    {"PREPARE", CL_PREPARE},
    {"EXECUTE", CL_EXECUTE},
    {"DEALLOCATE", CL_DEALLOCATE},
    {"MULTI", CL_MULTI},
    {"EMPTY", CL_EMPTY},
    {"WRITE_FUNCTION", CL_WRITE_FUNCTION},
    {"PGSTEER_SHOW", CL_PGSTEER_SHOW},
    {"PGSTEER_SET", CL_PGSTEER_SET},
    {"UNLISTEN", CL_UNLISTEN},
    {"SESSION_RESET", CL_SESSION_RESET},
    {"COPY", CL_COPY},
    {"SET_CONFIG", CL_SET_CONFIG},
    {"ROLLBACK", CL_ROLLBACK},
    {"TX_READ_WRITE", CL_TX_READ_WRITE},
    {"SAVEPOINT", CL_SAVEPOINT},
    {"NAMES", CL_NAMES},
};

static const char *const describe_words[] = {
    "empty",       "begin",          "begin-read-only", "end-tx",  "set",        "set-local",
    "pgsteer-set", "pgsteer-show",   "prepare",         "execute", "deallocate", "savepoint",
    "pin",         "write-function", "write",           "read",
};

static void format_flags(unsigned flags, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof flag_names / sizeof flag_names[0]; i++) {
        if (flags & flag_names[i].flag) {
            int w = snprintf(buf + used, size - used, "%s%s", used ? "," : "", flag_names[i].name);
            if (w < 0 || (size_t)w >= size - used)
                return;
            used += (size_t)w;
        }
    }
    if (used == 0)
        snprintf(buf, size, "NONE");
}

/* Decodes \n \t \r \0 \\ (and \, when `comma`) in place; other backslashes stay. Returns the
 * decoded length (the text may hold NUL bytes). */
static size_t unescape(char *s, size_t n, bool comma)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            char d = s[i + 1];
            char r = d == 'n' ? '\n' : d == 't' ? '\t' : d == 'r' ? '\r' : d == '0' ? '\0' : d;
            if (d == 'n' || d == 't' || d == 'r' || d == '0' || d == '\\' || (comma && d == ',')) {
                s[o++] = r;
                i++;
                continue;
            }
        }
        s[o++] = c;
    }
    return o;
}

static bool span_equals(const char *sql, size_t len, struct classify_span sp, const char *want,
                        size_t wlen)
{
    if (sp.off > len || sp.len > len - sp.off)
        return false;
    return sp.len == wlen && memcmp(sql + sp.off, want, wlen) == 0;
}

/* Checks one expectation item; returns NULL when it holds, else what failed. */
static const char *check_item(const char *item, size_t ilen, const char *sql, size_t len,
                              const struct classify_result *r, unsigned *want_flags,
                              bool *exact_flags)
{
    static char why[1024];
    for (size_t i = 0; i < sizeof flag_names / sizeof flag_names[0]; i++) {
        if (strlen(flag_names[i].name) == ilen && memcmp(item, flag_names[i].name, ilen) == 0) {
            *want_flags |= flag_names[i].flag;
            *exact_flags = true;
            return NULL;
        }
    }
    if (ilen == 4 && memcmp(item, "NONE", 4) == 0) {
        *exact_flags = true;
        return NULL;
    }
    for (size_t i = 0; i < sizeof describe_words / sizeof describe_words[0]; i++) {
        if (strlen(describe_words[i]) == ilen && memcmp(item, describe_words[i], ilen) == 0) {
            const char *got = classify_describe(r->flags);
            if (strcmp(got, describe_words[i]) != 0) {
                snprintf(why, sizeof why, "describe is %s", got);
                return why;
            }
            return NULL;
        }
    }
    if (ilen == 6 && memcmp(item, "quoted", 6) == 0)
        return r->name_quoted ? NULL : "name not quoted";
    if (ilen == 8 && memcmp(item, "unquoted", 8) == 0)
        return r->name_quoted ? "name quoted" : NULL;
    if (ilen == 3 && memcmp(item, "all", 3) == 0)
        return r->name_all ? NULL : "name_all not set";

    const char *eq = memchr(item, '=', ilen);
    if (eq == NULL) {
        snprintf(why, sizeof why, "unknown item %.*s", (int)(ilen < 200 ? ilen : 200), item);
        return why;
    }
    size_t klen = (size_t)(eq - item);
    char val[LINE_MAX_LEN];
    size_t vlen = ilen - klen - 1;
    memcpy(val, eq + 1, vlen);
    vlen = unescape(val, vlen, true);
    val[vlen] = '\0';

    if (klen == 1 && item[0] == 'n') {
        if (r->nstatements != (unsigned)strtoul(val, NULL, 10)) {
            snprintf(why, sizeof why, "nstatements is %u", r->nstatements);
            return why;
        }
        return NULL;
    }
    if (klen == 2 && memcmp(item, "sp", 2) == 0) {
        static const char *const ops[] = {"none", "define", "rollback-to", "release"};
        const char *got = (unsigned)r->savepoint < 4 ? ops[r->savepoint] : "?";
        if (strcmp(got, val) != 0) {
            snprintf(why, sizeof why, "savepoint is %s", got);
            return why;
        }
        return NULL;
    }
    if (klen == 5 && memcmp(item, "canon", 5) == 0) {
        bool want_null = strcmp(val, "-") == 0;
        if (want_null ? r->setting_name != NULL
                      : (r->setting_name == NULL || strcmp(r->setting_name, val) != 0)) {
            snprintf(why, sizeof why, "setting_name is %s",
                     r->setting_name ? r->setting_name : "(null)");
            return why;
        }
        return NULL;
    }
    const struct classify_span *sp = NULL;
    if (klen == 4 && memcmp(item, "name", 4) == 0)
        sp = &r->name;
    else if (klen == 4 && memcmp(item, "body", 4) == 0)
        sp = &r->prepare_body;
    else if (klen == 7 && memcmp(item, "setting", 7) == 0)
        sp = &r->setting;
    else if (klen == 5 && memcmp(item, "value", 5) == 0)
        sp = &r->value;
    if (sp == NULL) {
        snprintf(why, sizeof why, "unknown key %.*s", (int)(klen < 200 ? klen : 200), item);
        return why;
    }
    if (!span_equals(sql, len, *sp, val, vlen)) {
        size_t show = sp->off <= len && sp->len <= len - sp->off ? sp->len : 0;
        snprintf(why, sizeof why, "%.*s is [%.*s] (off %zu len %zu), want [%.200s]",
                 (int)(klen < 16 ? klen : 16), item, (int)(show < 200 ? show : 200),
                 sql + (show ? sp->off : 0), sp->off, sp->len, val);
        return why;
    }
    return NULL;
}

/* Runs one case line; returns true when it passes, printing the line when it does not. */
static bool run_case(char *line, unsigned lineno)
{
    char *tab = strchr(line, '\t');
    if (tab == NULL) {
        print_error("%s:%u: no tab in case line\n", data_path, lineno);
        return false;
    }
    *tab = '\0';
    const char *expect = line;
    char *sql = tab + 1;
    size_t len = unescape(sql, strlen(sql), false);

    struct classify_result r;
    classify_sql(sql, len, &extra, &r);

    unsigned want_flags = 0;
    bool exact = false;
    const char *p = expect;
    while (*p != '\0') {
        const char *e = p;
        while (*e != '\0' && !(*e == ',' && (e == p || e[-1] != '\\')))
            e++;
        const char *why = check_item(p, (size_t)(e - p), sql, len, &r, &want_flags, &exact);
        if (why != NULL) {
            char got[512];
            format_flags(r.flags, got, sizeof got);
            print_error("%s:%u: %s\n  case: %s\n  got flags: %s\n", data_path, lineno, why, expect,
                        got);
            return false;
        }
        p = *e != '\0' ? e + 1 : e;
    }
    if (exact && r.flags != want_flags) {
        char got[512], want[512];
        format_flags(r.flags, got, sizeof got);
        format_flags(want_flags, want, sizeof want);
        print_error("%s:%u: flags %s, want %s\n  sql: %.*s\n", data_path, lineno, got, want,
                    (int)len, sql);
        return false;
    }
    return true;
}

/* Calls fn(sql, len, lineno) for every case of the data file; returns the number of cases. */
static unsigned for_each_case(bool (*fn)(char *line, unsigned lineno), unsigned *failures)
{
    FILE *f = fopen(data_path, "r");
    if (f == NULL) {
        print_error("cannot open %s (run from the repository root or pass the path)\n", data_path);
        fail();
    }
    char line[LINE_MAX_LEN];
    unsigned lineno = 0, cases = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        lineno++;
        size_t n = strlen(line);
        assert_true(n < sizeof line - 1 || line[n - 1] == '\n');
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0 || line[0] == '#')
            continue;
        cases++;
        if (!fn(line, lineno))
            (*failures)++;
    }
    fclose(f);
    return cases;
}

static void test_classify_sql_data_file(void **state)
{
    (void)state;
    unsigned failures = 0;
    unsigned cases = for_each_case(run_case, &failures);
    print_message("%u cases, %u failed\n", cases, failures);
    assert_int_equal(failures, 0);
    assert_true(cases >= MIN_CASES);
}

/* Classifies every prefix of a case from an exactly sized heap copy, so that the sanitizer
 * build catches any read past the given length, and checks the result's invariants. */
static bool run_prefixes(char *line, unsigned lineno)
{
    char *tab = strchr(line, '\t');
    if (tab == NULL)
        return false;
    char *sql = tab + 1;
    size_t len = unescape(sql, strlen(sql), false);
    for (size_t k = 0; k <= len; k++) {
        char *copy = malloc(k ? k : 1);
        assert_non_null(copy);
        memcpy(copy, sql, k);
        struct classify_result r;
        classify_sql(copy, k, &extra, &r);
        bool ok = ((r.flags & CL_EMPTY) != 0) == (r.nstatements == 0) &&
                  ((r.flags & CL_MULTI) != 0) == (r.nstatements > 1) && r.name.off <= k &&
                  r.name.len <= k - r.name.off && r.prepare_body.off <= k &&
                  r.prepare_body.len <= k - r.prepare_body.off && r.setting.off <= k &&
                  r.setting.len <= k - r.setting.off && r.value.off <= k &&
                  r.value.len <= k - r.value.off;
        free(copy);
        if (!ok) {
            print_error("%s:%u: bad result for the first %zu bytes\n", data_path, lineno, k);
            return false;
        }
    }
    return true;
}

static void test_classify_sql_every_prefix_stays_in_bounds(void **state)
{
    (void)state;
    unsigned failures = 0;
    unsigned cases = for_each_case(run_prefixes, &failures);
    assert_true(cases > 0);
    assert_int_equal(failures, 0);
}

static struct classify_result classify(const char *sql)
{
    struct classify_result r;
    classify_sql(sql, strlen(sql), NULL, &r);
    return r;
}

static void assert_span(const char *sql, struct classify_span sp, const char *want)
{
    size_t len = strlen(sql);
    if (!span_equals(sql, len, sp, want, strlen(want))) {
        print_error("span off %zu len %zu in [%s], want [%s]\n", sp.off, sp.len, sql, want);
        fail();
    }
}

static void test_classify_sql_prepare_spans(void **state)
{
    (void)state;
    const char *sql = "PREPARE ins_user (int, text) AS\n  INSERT INTO users VALUES ($1, $2) ; ";
    struct classify_result r = classify(sql);
    assert_int_equal(r.flags, CL_PREPARE);
    assert_span(sql, r.name, "ins_user");
    assert_false(r.name_quoted);
    assert_span(sql, r.prepare_body, "INSERT INTO users VALUES ($1, $2)");

    /* The body's own class is left to the caller, which classifies the span. */
    struct classify_result body;
    classify_sql(sql + r.prepare_body.off, r.prepare_body.len, NULL, &body);
    assert_int_equal(body.flags, CL_WRITE);

    sql = "prepare \"Get\"\"It\" as select 1 -- trailing\n";
    r = classify(sql);
    assert_int_equal(r.flags, CL_PREPARE);
    assert_span(sql, r.name, "Get\"\"It");
    assert_true(r.name_quoted);
    assert_span(sql, r.prepare_body, "select 1");
}

static void test_classify_sql_prepare_name_of_first_statement(void **state)
{
    (void)state;
    const char *sql = "EXECUTE first_one(1); DEALLOCATE second_one";
    struct classify_result r = classify(sql);
    assert_int_equal(r.flags, CL_EXECUTE | CL_DEALLOCATE | CL_MULTI);
    assert_span(sql, r.name, "first_one");
    assert_int_equal(r.nstatements, 2);
}

static void test_classify_sql_execute_and_deallocate_names(void **state)
{
    (void)state;
    const char *sql = "EXECUTE \"Q1\" (42, 'x')";
    struct classify_result r = classify(sql);
    assert_int_equal(r.flags, CL_EXECUTE);
    assert_span(sql, r.name, "Q1");
    assert_true(r.name_quoted);

    sql = "DEALLOCATE PREPARE q1";
    r = classify(sql);
    assert_int_equal(r.flags, CL_DEALLOCATE);
    assert_span(sql, r.name, "q1");
    assert_false(r.name_all);

    sql = "deallocate all";
    r = classify(sql);
    assert_int_equal(r.flags, CL_DEALLOCATE);
    assert_true(r.name_all);
    assert_int_equal(r.name.len, 0);

    /* "prepare" may itself be the name. */
    sql = "DEALLOCATE prepare";
    r = classify(sql);
    assert_int_equal(r.flags, CL_DEALLOCATE);
    assert_span(sql, r.name, "prepare");
}

static void test_classify_sql_set_spans(void **state)
{
    (void)state;
    const char *sql = "SET search_path TO \"$user\", public";
    struct classify_result r = classify(sql);
    assert_int_equal(r.flags, CL_SET_SESSION);
    assert_span(sql, r.setting, "search_path");
    assert_span(sql, r.value, "\"$user\", public");
    assert_null(r.setting_name);

    sql = "set SESSION application_name = 'my app' ;";
    r = classify(sql);
    assert_int_equal(r.flags, CL_SET_SESSION);
    assert_span(sql, r.setting, "application_name");
    assert_span(sql, r.value, "my app");

    sql = "SET TIME ZONE 'Europe/Rome'";
    r = classify(sql);
    assert_int_equal(r.flags, CL_SET_SESSION);
    assert_span(sql, r.setting, "TIME ZONE");
    assert_string_equal(r.setting_name, "timezone");
    assert_span(sql, r.value, "Europe/Rome");

    sql = "SET statement_timeout=-1";
    r = classify(sql);
    assert_span(sql, r.value, "-1");

    sql = "SET pgsteer.consistency = 'primary'";
    r = classify(sql);
    assert_int_equal(r.flags, CL_PGSTEER_SET);
    assert_span(sql, r.setting, "pgsteer.consistency");
    assert_span(sql, r.value, "primary");

    sql = "RESET pgsteer.consistency";
    r = classify(sql);
    assert_int_equal(r.flags, CL_PGSTEER_SET);
    assert_span(sql, r.setting, "pgsteer.consistency");
    assert_int_equal(r.value.len, 0);

    sql = "SHOW PGSTEER.Node";
    r = classify(sql);
    assert_int_equal(r.flags, CL_PGSTEER_SHOW);
    assert_span(sql, r.setting, "PGSTEER.Node");
}

static void test_classify_sql_setting_cleared_for_several_statements(void **state)
{
    (void)state;
    struct classify_result r = classify("SET a.b = 1; SET c.d = 2");
    assert_int_equal(r.flags, CL_SET_SESSION | CL_MULTI);
    assert_int_equal(r.setting.len, 0);
    assert_int_equal(r.value.len, 0);
    assert_null(r.setting_name);
}

static void test_classify_sql_extra_write_functions(void **state)
{
    (void)state;
    static const char *const names[] = {"bump_counter", NULL, "app.ignored"};
    const struct classify_functions fns = {names, 3};
    struct classify_result r;
    const char *sql = "SELECT Bump_Counter(1)";

    classify_sql(sql, strlen(sql), NULL, &r);
    assert_int_equal(r.flags, 0);
    classify_sql(sql, strlen(sql), &fns, &r);
    assert_int_equal(r.flags, CL_WRITE | CL_WRITE_FUNCTION);

    sql = "SELECT myschema.bump_counter ('x')";
    classify_sql(sql, strlen(sql), &fns, &r);
    assert_int_equal(r.flags, CL_WRITE | CL_WRITE_FUNCTION);

    /* A quoted name keeps its case, so "Bump_Counter" is another function. */
    sql = "SELECT \"Bump_Counter\"(1), \"bump_counter\"";
    classify_sql(sql, strlen(sql), &fns, &r);
    assert_int_equal(r.flags, 0);

    /* A bare name that is not called is a column. */
    sql = "SELECT bump_counter FROM t";
    classify_sql(sql, strlen(sql), &fns, &r);
    assert_int_equal(r.flags, 0);

    const struct classify_functions empty = {NULL, 5};
    classify_sql("SELECT f(1)", 11, &empty, &r);
    assert_int_equal(r.flags, 0);
}

static void test_classify_is_write_function_builtins(void **state)
{
    (void)state;
    static const char *const yes[] = {
        "nextval",
        "setval",
        "currval",
        "lastval",
        "set_config",
        "pg_notify",
        "pg_advisory_lock",
        "pg_try_advisory_xact_lock_shared",
        "lo_import",
        "lo_unlink",
        "lo_",
        "txid_current",
        "dblink",
        "dblink_exec",
        "pg_current_wal_lsn",
        "pg_create_restore_point",
    };
    static const char *const no[] = {
        "now", "count",    "pg_sequence_last_value", "lo", "nextval2", "nextva",
        "",    "pg_sleep", "txid_current_snapshot",
    };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (!classify_is_write_function(yes[i], strlen(yes[i]), NULL)) {
            print_error("%s should be a write function\n", yes[i]);
            fail();
        }
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        if (classify_is_write_function(no[i], strlen(no[i]), NULL)) {
            print_error("%s should not be a write function\n", no[i]);
            fail();
        }
    }
    /* Only `len` bytes count. */
    assert_true(classify_is_write_function("nextvalXYZ", 7, NULL));
    assert_false(classify_is_write_function("nextval", 4, NULL));
    assert_false(classify_is_write_function(NULL, 0, NULL));
}

static void test_classify_is_write_function_extra(void **state)
{
    (void)state;
    static const char *const names[] = {"app_enqueue"};
    const struct classify_functions fns = {names, 1};
    assert_true(classify_is_write_function("app_enqueue", 11, &fns));
    assert_false(classify_is_write_function("app_enqueue", 11, NULL));
    assert_false(classify_is_write_function("app_enqueu", 10, &fns));
    assert_false(classify_is_write_function("app_enqueue_all", 15, &fns));
}

static void test_classify_sql_nul_ends_text(void **state)
{
    (void)state;
    static const char sql[] = "SELECT 1\0; DELETE FROM t";
    struct classify_result r;
    classify_sql(sql, sizeof sql - 1, NULL, &r);
    assert_int_equal(r.flags, 0);
    assert_int_equal(r.nstatements, 1);

    /* A NUL inside a string leaves it unterminated: a write. */
    static const char str[] = "SELECT 'ab\0c'";
    classify_sql(str, sizeof str - 1, NULL, &r);
    assert_int_equal(r.flags, CL_WRITE);

    static const char lead[] = "\0INSERT INTO t VALUES (1)";
    classify_sql(lead, sizeof lead - 1, NULL, &r);
    assert_int_equal(r.flags, CL_EMPTY);
    assert_int_equal(r.nstatements, 0);
}

static void test_classify_sql_reads_only_len_bytes(void **state)
{
    (void)state;
    const char *sql = "SELECT 1; INSERT INTO t VALUES (1)";
    struct classify_result r;
    classify_sql(sql, 9, NULL, &r);
    assert_int_equal(r.flags, 0);
    assert_int_equal(r.nstatements, 1);

    /* Cut inside a string: unterminated, so a write. */
    classify_sql("SELECT 'abc'", 10, NULL, &r);
    assert_int_equal(r.flags, CL_WRITE);

    classify_sql(NULL, 0, NULL, &r);
    assert_int_equal(r.flags, CL_EMPTY);
}

/* Builds `reps` copies of `unit` followed by `tail` in a heap buffer. */
static char *repeat(const char *unit, size_t reps, const char *tail, size_t *len)
{
    size_t ul = strlen(unit), tl = strlen(tail);
    char *s = malloc(ul * reps + tl + 1);
    assert_non_null(s);
    for (size_t i = 0; i < reps; i++)
        memcpy(s + i * ul, unit, ul);
    memcpy(s + ul * reps, tail, tl + 1);
    *len = ul * reps + tl;
    return s;
}

static void test_classify_sql_deep_nesting_is_bounded(void **state)
{
    (void)state;
    struct classify_result r;
    size_t len;

    /* Wrapped statements recurse; far too many is malformed, so a write. */
    char *sql = repeat("EXPLAIN ", 100000, "SELECT 1", &len);
    classify_sql(sql, len, NULL, &r);
    assert_int_equal(r.flags, CL_WRITE);
    free(sql);

    sql = repeat("DECLARE c CURSOR FOR ", 100000, "SELECT 1; SELECT 2", &len);
    classify_sql(sql, len, NULL, &r);
    assert_int_equal(r.flags, CL_WRITE | CL_MULTI);
    free(sql);

    /* Parentheses and comments only count; a ';' inside parentheses does not split. */
    sql = repeat("(", 100000, "SELECT 1; DELETE FROM t", &len);
    classify_sql(sql, len, NULL, &r);
    assert_int_equal(r.flags, CL_WRITE);
    assert_int_equal(r.nstatements, 1);
    free(sql);

    sql = repeat("/*", 100000, "", &len);
    classify_sql(sql, len, NULL, &r);
    assert_int_equal(r.flags, CL_WRITE);
    free(sql);

    /* Within the bound, wrapping keeps the inner class. */
    classify_sql("EXPLAIN EXPLAIN SELECT 1", 24, NULL, &r);
    assert_int_equal(r.flags, 0);
}

/* The literals classify_sql_literals finds, as "off:len,off:len", or "-" when unusable. */
static const char *lits_of(const char *sql)
{
    static char out[256];
    struct classify_result r, plain;
    struct classify_literals l;
    memset(&l, 0xAB, sizeof(l));
    classify_sql_literals(sql, strlen(sql), NULL, &r, &l);
    classify_sql(sql, strlen(sql), NULL, &plain);
    assert_int_equal(r.flags, plain.flags); /* the literals change nothing else */
    if (!l.usable) {
        assert_int_equal(l.n, 0);
        return "-";
    }
    size_t k = 0;
    out[0] = 0;
    for (unsigned i = 0; i < l.n; i++)
        k += (size_t)snprintf(out + k, sizeof(out) - k, "%s%zu:%zu", i ? "," : "", l.at[i].off,
                              l.at[i].len);
    return out;
}

static void test_classify_plain_begin(void **state)
{
    (void)state;
    static const char *const yes[] = {
        "BEGIN",
        "begin;",
        "  BEGIN ;  \n",
        "BEGIN WORK",
        "begin transaction;",
        "START TRANSACTION",
        "start transaction isolation level serializable",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY, NOT DEFERRABLE;",
        "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE",
        "BEGIN TRANSACTION ISOLATION LEVEL READ UNCOMMITTED,DEFERRABLE",
        "BEGIN\tREAD\rONLY\f",
        "BEGIN READ WRITE READ ONLY", /* both set, the last wins: no error */
    };
    static const char *const no[] = {
        "",
        ";",
        "BEGINNING",
        "BEGIN; SELECT 1",
        "BEGIN;;",
        "BEGIN -- comment",
        "/* c */ BEGIN",
        "BEGIN, READ ONLY",
        "BEGIN READ ONLY,",
        "BEGIN READ ONLY,, DEFERRABLE",
        "BEGIN WORK TRANSACTION",
        "START WORK",
        "START TRANSACTION WORK",
        "START",
        "BEGIN ISOLATION LEVEL",
        "BEGIN ISOLATION LEVEL SNAPSHOT",
        "BEGIN ISOLATION LEVEL REPEATABLE",
        "BEGIN ISOLATION LEVEL READ",
        "BEGIN READ",
        "BEGIN NOT",
        "BEGIN NOT READ ONLY",
        "BEGIN ISOLATION",
        "BEGIN ATOMIC",
        "BEGIN 1",
        "COMMIT",
        "SELECT 1",
        "BEGIN \"READ\" ONLY",
        "BEGIN READ_ONLY",
    };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (!classify_plain_begin(yes[i], strlen(yes[i])))
            fail_msg("not taken as a plain BEGIN: %s", yes[i]);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        if (classify_plain_begin(no[i], strlen(no[i])))
            fail_msg("taken as a plain BEGIN: %s", no[i]);
    }
    /* Which tag the node answers with. */
    assert_int_equal(classify_plain_begin("begin work", 10), CL_PLAIN_BEGIN);
    assert_int_equal(classify_plain_begin(" Start Transaction;", 19), CL_PLAIN_START);
    /* The length bounds the text, and a NUL ends it. */
    assert_true(classify_plain_begin("BEGIN; SELECT 1", 6));
    assert_false(classify_plain_begin("BEGIN READ ONLY", 10));
    assert_true(classify_plain_begin("BEGIN\0 garbage", 15));
    assert_false(classify_plain_begin("BEGIN", 0));
}

static void test_classify_literals(void **state)
{
    (void)state;
    /* pgbench's statements */
    assert_string_equal(lits_of("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"),
                        "50:5");
    assert_string_equal(
        lits_of("UPDATE pgbench_accounts SET abalance = abalance + -3214 WHERE aid = 77;"),
        "51:4,68:2");
    assert_string_equal(lits_of("UPDATE t SET n = 5"), "17:1");
    /* every comparison and arithmetic operator, and none other */
    assert_string_equal(lits_of("select 1 where a<>10 and b!=11 and c<=12 and d>=13"),
                        "18:2,28:2,38:2,48:2");
    assert_string_equal(lits_of("select a from t where a<10 or a>20 or a/2=a*3"),
                        "24:2,32:2,40:1,44:1");
    assert_string_equal(lits_of("select a from t where a @> 10"), "-");
    assert_string_equal(lits_of("select a from t where a = -7"), "27:1");
    /* the two integers whose negation is of a narrower type stay as written */
    assert_string_equal(lits_of("select abs(-2147483648) from t where a = 5"), "41:1");
    assert_string_equal(lits_of("select -2147483648, a - 00002147483648 from t where a = 5"),
                        "56:1");
    assert_string_equal(lits_of("select -9223372036854775808 from t where a = 5"), "45:1");
    assert_string_equal(lits_of("select a from t where a = -2147483647 or a = 9223372036854775807"),
                        "27:10,45:19");
    /* after ORDER BY, a minus and its literal stay (ORDER BY -1 names a position) */
    assert_string_equal(lits_of("select a from t where a = -5 order by -1, (-2), a - 3 + 4"),
                        "27:1,56:1");
    /* ORDER BY / GROUP BY positions, LIMIT and type modifiers stay; lists make it unusable */
    assert_string_equal(lits_of("select a from t where a = 10 order by 1 limit 5"), "26:2");
    assert_string_equal(lits_of("select a::varchar(10) from t where a = 10"), "-");
    assert_string_equal(lits_of("select a from t where a in (1, 2) and b = 10"), "-");
    assert_string_equal(lits_of("insert into t values (1, 2)"), "-");
    /* only digits: decimals, exponents, hex stay as written */
    assert_string_equal(lits_of("select a from t where a = 1.5"), "-");
    assert_string_equal(lits_of("select a from t where a = 1e5"), "-");
    assert_string_equal(lits_of("select a from t where a = 0x1F"), "-");
    assert_string_equal(lits_of("select a from t where a = 'x' and b = 10"), "38:2");
    /* statements that cannot be prepared, or whose columns a table change changes */
    assert_string_equal(lits_of("explain select a from t where a = 10"), "-");
    assert_string_equal(lits_of("select a into t2 from t where a = 10"), "-");
    assert_string_equal(lits_of("insert into t select a from u where a = 10"), "40:2");
    assert_string_equal(lits_of("select * from t where a = 10"), "-");
    assert_string_equal(lits_of("select t.* from t where a = 10"), "-");
    assert_string_equal(lits_of("select distinct * from t where a = 10"), "-");
    assert_string_equal(lits_of("select (a + 1) * 2 from t where a = 10"), "12:1,17:1,36:2");
    /* clauses whose expressions must match others: GROUP BY, DISTINCT (ON), ON CONFLICT */
    assert_string_equal(lits_of("select a + 1, count(*) from t group by a + 1"), "-");
    assert_string_equal(lits_of("select b from t where a = 10 GROUP BY b"), "-");
    assert_string_equal(lits_of("select distinct on (a + 1) b from t order by a + 1"), "-");
    assert_string_equal(lits_of("select distinct a - 1 from t order by a - 1"), "-");
    assert_string_equal(
        lits_of(
            "insert into t select a from u where a = 10 on conflict (a) where b = 1 do nothing"),
        "-");
    assert_string_equal(lits_of("select \"group\" from t where a = 10"), "32:2");
    assert_string_equal(lits_of("delete from t where a = 10 returning *"), "-");
    /* a change that returns rows: its error comes without a RowDescription */
    assert_string_equal(lits_of("delete from t where a = 10 returning a"), "-");
    assert_string_equal(lits_of("update t set a = a + 1 where b = 2 RETURNING a - 1"), "-");
    assert_string_equal(
        lits_of("with d as (delete from u where x = 5) select a from t where a = 1"), "-");
    assert_string_equal(lits_of("with x as (select 1) select a from t where a = 10 for update"),
                        "-");
    assert_string_equal(lits_of("select count(*) from t where a = 10"), "33:2");
    assert_string_equal(lits_of("select a from t where a = $1 and b = 10"), "-");
    assert_string_equal(lits_of("select a from t where a = 10; select 1"), "-");
    assert_string_equal(lits_of("set x = 10"), "-");
    assert_string_equal(lits_of("select a from t where a = 'unterminated"), "-");
    assert_string_equal(lits_of("with x as (select 1) select a from t where a = 10"), "47:2");
    assert_string_equal(lits_of("values (1)"), "-");
    /* inside strings, comments and quoted names: not literals */
    assert_string_equal(lits_of("select 'a = 10' from t where b = 12 -- c = 13"), "33:2");
    /* at most CLASSIFY_MAX_LITERALS */
    char many[512];
    size_t k = (size_t)snprintf(many, sizeof(many), "select a from t where a = 10");
    for (int i = 1; i < CLASSIFY_MAX_LITERALS; i++)
        k += (size_t)snprintf(many + k, sizeof(many) - k, " or a = %d", 10 + i);
    assert_string_not_equal(lits_of(many), "-");
    snprintf(many + k, sizeof(many) - k, " or a = 99");
    assert_string_equal(lits_of(many), "-");
}

static void test_classify_describe_precedence(void **state)
{
    (void)state;
    assert_string_equal(classify_describe(0), "read");
    assert_string_equal(classify_describe(CL_COPY), "read");
    assert_string_equal(classify_describe(CL_WRITE), "write");
    assert_string_equal(classify_describe(CL_WRITE | CL_WRITE_FUNCTION), "write-function");
    assert_string_equal(classify_describe(CL_WRITE | CL_WRITE_FUNCTION | CL_PIN), "pin");
    assert_string_equal(classify_describe(CL_EMPTY | CL_FORCE_PRIMARY), "empty");
    assert_string_equal(classify_describe(CL_BEGIN | CL_WRITE | CL_END_TX | CL_MULTI), "begin");
    assert_string_equal(classify_describe(CL_BEGIN_READ_ONLY), "begin-read-only");
    assert_string_equal(classify_describe(CL_END_TX | CL_WRITE), "end-tx");
    assert_string_equal(classify_describe(CL_SET_SESSION | CL_TX_READ_ONLY), "set");
    assert_string_equal(classify_describe(CL_SET_LOCAL), "set-local");
    assert_string_equal(classify_describe(CL_PGSTEER_SET | CL_SET_LOCAL), "pgsteer-set");
    assert_string_equal(classify_describe(CL_PGSTEER_SHOW), "pgsteer-show");
    assert_string_equal(classify_describe(CL_PREPARE), "prepare");
    assert_string_equal(classify_describe(CL_EXECUTE), "execute");
    assert_string_equal(classify_describe(CL_DEALLOCATE), "deallocate");
    assert_string_equal(classify_describe(CL_UNLISTEN | CL_WRITE), "write");
}

int main(int argc, char **argv)
{
    if (argc > 1)
        data_path = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify_sql_data_file),
        cmocka_unit_test(test_classify_sql_every_prefix_stays_in_bounds),
        cmocka_unit_test(test_classify_sql_prepare_spans),
        cmocka_unit_test(test_classify_sql_prepare_name_of_first_statement),
        cmocka_unit_test(test_classify_sql_execute_and_deallocate_names),
        cmocka_unit_test(test_classify_sql_set_spans),
        cmocka_unit_test(test_classify_sql_setting_cleared_for_several_statements),
        cmocka_unit_test(test_classify_sql_extra_write_functions),
        cmocka_unit_test(test_classify_is_write_function_builtins),
        cmocka_unit_test(test_classify_is_write_function_extra),
        cmocka_unit_test(test_classify_sql_nul_ends_text),
        cmocka_unit_test(test_classify_sql_reads_only_len_bytes),
        cmocka_unit_test(test_classify_sql_deep_nesting_is_bounded),
        cmocka_unit_test(test_classify_describe_precedence),
        cmocka_unit_test(test_classify_literals),
        cmocka_unit_test(test_classify_plain_begin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
