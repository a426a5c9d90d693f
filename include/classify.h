/* SPDX-License-Identifier: MIT */
/* SQL statement classifier: decides from the text alone whether a statement may run on a
 * replica, and what session state it touches. Pure: no I/O, no allocation, one lexer pass. */
#ifndef PGSTEER_CLASSIFY_H
#define PGSTEER_CLASSIFY_H

#include <stdbool.h>
#include <stddef.h>

/* Flags describing a Query message (one or more statements) or one extended statement. */
enum classify_flag {
    CL_WRITE = 1u << 0,           /* must run on the primary */
    CL_BEGIN = 1u << 1,           /* BEGIN / START TRANSACTION (read-write) */
    CL_BEGIN_READ_ONLY = 1u << 2, /* BEGIN READ ONLY / START TRANSACTION READ ONLY */
    CL_END_TX = 1u << 3,          /* COMMIT, END, ROLLBACK, ABORT (not ROLLBACK TO SAVEPOINT),
                                     PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED */
    CL_SET_SESSION = 1u << 4,     /* SET / SET SESSION / RESET / DISCARD (session state) */
    CL_SET_LOCAL = 1u << 5,       /* SET LOCAL, SET TRANSACTION, SET SESSION CHARACTERISTICS */
    CL_TX_READ_ONLY = 1u << 6,    /* SET TRANSACTION READ ONLY, SET default_transaction_read_only
                                     = on/true, SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY */
    CL_PIN = 1u << 7,             /* pins the session to the primary: CREATE TEMP/TEMPORARY table,
                                     LISTEN, session-level pg_advisory_lock*, DECLARE ... WITH HOLD */
    CL_FORCE_PRIMARY = 1u << 8,   /* leading comment pgsteer:primary */
    CL_PREPARE = 1u << 9,         /* SQL PREPARE name [(types)] AS stmt */
    CL_EXECUTE = 1u << 10,        /* SQL EXECUTE name [(args)] */
    CL_DEALLOCATE = 1u << 11,     /* DEALLOCATE [PREPARE] name | ALL */
    CL_MULTI = 1u << 12,          /* more than one statement */
    CL_EMPTY = 1u << 13,          /* no statement at all (only whitespace / comments / ;) */
    CL_WRITE_FUNCTION = 1u << 14, /* a side-effecting function is called (also sets CL_WRITE) */
    CL_PGSTEER_SHOW = 1u << 15,   /* SHOW pgsteer.<name>: answered by pgsteer */
    CL_PGSTEER_SET = 1u << 16,    /* SET pgsteer.<name> = value: acted on by pgsteer */
    CL_UNLISTEN = 1u << 17,       /* UNLISTEN */
    CL_SESSION_RESET = 1u << 18,  /* RESET ALL or DISCARD ALL: clears session state */
    CL_TX_READ_WRITE = 1u << 22,  /* READ WRITE written explicitly in transaction modes */
    CL_ROLLBACK = 1u << 21,       /* the END_TX is ROLLBACK or ABORT: nothing of it commits */
    CL_SET_CONFIG = 1u << 20,     /* calls set_config(): may change the session (also a write) */
    CL_COPY = 1u << 19,           /* COPY (either direction; COPY ... FROM is also CL_WRITE) */
    CL_SAVEPOINT = 1u << 23,      /* SAVEPOINT, ROLLBACK TO SAVEPOINT or RELEASE SAVEPOINT
                                     (which one: classify_result.savepoint) */
    CL_NAMES = 1u << 24,          /* may make a name stand for another object than before:
                                     CREATE, ALTER, DO, IMPORT FOREIGN SCHEMA, SELECT INTO */
};

/* A span of the classified text: [off, off+len). len == 0 when absent. */
struct classify_span {
    size_t off;
    size_t len;
};

/* What a CL_SAVEPOINT statement does with its savepoint. */
enum classify_savepoint { CL_SP_NONE = 0, CL_SP_DEFINE, CL_SP_ROLLBACK_TO, CL_SP_RELEASE };

struct classify_result {
    unsigned flags;
    unsigned nstatements;
    /* For CL_SAVEPOINT (first such statement): SAVEPOINT, ROLLBACK TO or RELEASE; its name is
     * in `name`. */
    enum classify_savepoint savepoint;
    /* For CL_PREPARE, CL_EXECUTE, CL_DEALLOCATE, CL_SAVEPOINT (first such statement): the
     * statement's or savepoint's name,
     * as written (unquoted identifiers are to be lower-cased by the caller; quoted ones are
     * given without the quotes). For DEALLOCATE ALL, name_all is true. */
    struct classify_span name;
    bool name_quoted;
    bool name_all;
    /* For CL_PREPARE: the body after AS, so the caller can classify it. */
    struct classify_span prepare_body;
    /* For CL_SET_SESSION / CL_PGSTEER_SET / CL_PGSTEER_SHOW on a single statement: the setting
     * name (e.g. "search_path", "pgsteer.consistency") and, for SET, the value text after TO/=
     * with surrounding quotes removed for a single quoted literal. */
    struct classify_span setting;
    struct classify_span value;
    /* The lower-case setting name when the statement spells it in other words, as
     * `setting` then spans those words: SET TIME ZONE -> "timezone", SET SCHEMA ->
     * "search_path", SET NAMES -> "client_encoding", SET ROLE -> "role", SET SESSION
     * AUTHORIZATION -> "session_authorization". NULL when `setting` is the name itself. */
    const char *setting_name;
};

/* prepare_simple_queries: the integer literals of a simple-protocol statement that may be sent
 * as parameters of a prepared statement in their place, each right after a comparison or
 * arithmetic operator (WHERE id = 42, SET n = n + 1), written in digits only. `usable` only for
 * one statement that can be prepared (SELECT, INSERT, UPDATE, DELETE, WITH, VALUES; not SELECT
 * INTO), with such a literal and none of: a parameter of its own ($1), SELECT * or t.* (whose
 * columns a change of the table changes), an integer literal right after '(' or ',' (a list,
 * whose length varies, or a type modifier), more than CLASSIFY_MAX_LITERALS of them. */
#define CLASSIFY_MAX_LITERALS 16
struct classify_literals {
    bool usable;
    unsigned n; /* 0 unless usable */
    struct classify_span at[CLASSIFY_MAX_LITERALS];
};

/* Extra write functions from config (lower-case names, no schema). A NULL table is empty. */
struct classify_functions {
    const char *const *names;
    size_t count;
};

/* Classify `len` bytes of SQL (need not be NUL-terminated; NUL ends it early).
 * Never fails: unknown or malformed text is classified CL_WRITE, the safe choice.
 * Thread-safe; reads only its arguments. */
void classify_sql(const char *sql, size_t len, const struct classify_functions *extra,
                  struct classify_result *out);

/* classify_sql, and in the same pass the literals of `lits` (which may be NULL). */
void classify_sql_literals(const char *sql, size_t len, const struct classify_functions *extra,
                           struct classify_result *out, struct classify_literals *lits);

/* True when the named function (lower-case, no schema) is a built-in write function or in
 * `extra`. */
bool classify_is_write_function(const char *name, size_t len,
                                const struct classify_functions *extra);

/* defer_begin: whether `len` bytes of SQL (a NUL ends them early) are exactly one BEGIN
 * [WORK | TRANSACTION] or START TRANSACTION, with transaction modes written out in full
 * (ISOLATION LEVEL ..., READ WRITE, READ ONLY, [NOT] DEFERRABLE, commas between them or not),
 * then at most a ';' and white space: a statement that cannot fail on a primary outside a
 * transaction block. Returns CL_PLAIN_BEGIN or CL_PLAIN_START (which also names the tag the
 * node answers with), or 0 for anything else, comments included. Pure; thread-safe. */
enum { CL_PLAIN_BEGIN = 1, CL_PLAIN_START = 2 };
int classify_plain_begin(const char *sql, size_t len);

/* Short name of the most significant flag, for logs and stats ("read", "write", "begin", ...). */
const char *classify_describe(unsigned flags);

#endif
