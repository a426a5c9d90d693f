/* SPDX-License-Identifier: MIT */
/* SQL statement classifier: one forward lexer pass over a Query's text feeds a small recogniser
 * per statement, which decides whether the statement may run on a replica and which session
 * state it touches. Nothing is allocated and the text is not copied (a word that may be a keyword
 * is lower-cased into a 15-byte buffer on the stack for the keyword table's hash probe). The
 * keyword and character-class tables are built once, on the first call. */

#include "classify.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

/* Statements that wrap a statement (EXPLAIN, DECLARE ... FOR) recurse. Valid SQL nests at most
 * twice; the bound keeps hostile input (EXPLAIN EXPLAIN EXPLAIN ...) from using up the stack. */
#define CLASSIFY_NEST_MAX 4

/* ------------------------------------------------------------------------------------------ */
/* Case-insensitive comparison in place                                                        */

static inline unsigned char fold(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Orders s[0..n) against the lower-case NUL-terminated word w, folding ASCII case in s unless
 * `exact` (quoted identifiers keep their case). Same order as strcmp on lower-case text. */
static int word_cmp(const char *s, size_t n, const char *w, bool exact)
{
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char a = (unsigned char)s[i];
        unsigned char b = (unsigned char)w[i];
        if (!exact)
            a = fold(a);
        if (b == 0)
            return 1;
        if (a != b)
            return a < b ? -1 : 1;
    }
    return w[i] == 0 ? 0 : -1;
}

static bool ci_eq(const char *s, size_t n, const char *w)
{
    return word_cmp(s, n, w, false) == 0;
}

/* True when s[0..n) is a non-empty prefix of w, ignoring case (PostgreSQL's boolean parser
 * accepts "t", "tr", "y", ...). */
static bool ci_prefix_of(const char *s, size_t n, const char *w)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (w[i] == 0 || fold((unsigned char)s[i]) != (unsigned char)w[i])
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Keywords                                                                                     */

/* Only the words the recogniser looks at; every other word is an identifier (KW_NONE). */
enum kw {
    KW_NONE = 0,
    KW_ABORT,
    KW_ALL,
    KW_ANALYSE,
    KW_ANALYZE,
    KW_AS,
    KW_ATOMIC,
    KW_AUTHORIZATION,
    KW_BEGIN,
    KW_CALL,
    KW_CASE,
    KW_CHARACTERISTICS,
    KW_CLOSE,
    KW_COMMIT,
    KW_CONSTRAINTS,
    KW_COPY,
    KW_CREATE,
    KW_DEALLOCATE,
    KW_DECLARE,
    KW_DELETE,
    KW_DISCARD,
    KW_END,
    KW_EXECUTE,
    KW_EXPLAIN,
    KW_FETCH,
    KW_FOR,
    KW_FROM,
    KW_GLOBAL,
    KW_HOLD,
    KW_INSERT,
    KW_INTO,
    KW_KEY,
    KW_LISTEN,
    KW_LOCAL,
    KW_MERGE,
    KW_MOVE,
    KW_NAMES,
    KW_NO,
    KW_ONLY,
    KW_OR,
    KW_PREPARE,
    KW_PREPARED,
    KW_READ,
    KW_RECURSIVE,
    KW_RELEASE,
    KW_RESET,
    KW_ROLE,
    KW_ROLLBACK,
    KW_SAVEPOINT,
    KW_SCHEMA,
    KW_SELECT,
    KW_SESSION,
    KW_SET,
    KW_SHARE,
    KW_SHOW,
    KW_START,
    KW_TABLE,
    KW_TEMP,
    KW_TEMPORARY,
    KW_TIME,
    KW_TO,
    KW_TRANSACTION,
    KW_UESCAPE,
    KW_UNLISTEN,
    KW_UPDATE,
    KW_VALUES,
    KW_VERBOSE,
    KW_WITH,
    KW_WORK,
    KW_WRITE,
    KW_ZONE,
};

struct kw_entry {
    unsigned char len;
    const char *word;
    enum kw kw;
};

/* Every identifier is looked up, so the lookup is a hash probe (kw_slots, built once). */
static const struct kw_entry kw_table[] = {
    {2, "as", KW_AS},
    {2, "no", KW_NO},
    {2, "or", KW_OR},
    {2, "to", KW_TO},
    {3, "all", KW_ALL},
    {3, "end", KW_END},
    {3, "for", KW_FOR},
    {3, "key", KW_KEY},
    {3, "set", KW_SET},
    {4, "call", KW_CALL},
    {4, "case", KW_CASE},
    {4, "copy", KW_COPY},
    {4, "from", KW_FROM},
    {4, "hold", KW_HOLD},
    {4, "into", KW_INTO},
    {4, "move", KW_MOVE},
    {4, "only", KW_ONLY},
    {4, "read", KW_READ},
    {4, "role", KW_ROLE},
    {4, "show", KW_SHOW},
    {4, "temp", KW_TEMP},
    {4, "time", KW_TIME},
    {4, "with", KW_WITH},
    {4, "work", KW_WORK},
    {4, "zone", KW_ZONE},
    {5, "abort", KW_ABORT},
    {5, "begin", KW_BEGIN},
    {5, "close", KW_CLOSE},
    {5, "fetch", KW_FETCH},
    {5, "local", KW_LOCAL},
    {5, "merge", KW_MERGE},
    {5, "names", KW_NAMES},
    {5, "reset", KW_RESET},
    {5, "share", KW_SHARE},
    {5, "start", KW_START},
    {5, "table", KW_TABLE},
    {5, "write", KW_WRITE},
    {6, "atomic", KW_ATOMIC},
    {6, "commit", KW_COMMIT},
    {6, "create", KW_CREATE},
    {6, "delete", KW_DELETE},
    {6, "global", KW_GLOBAL},
    {6, "insert", KW_INSERT},
    {6, "listen", KW_LISTEN},
    {6, "schema", KW_SCHEMA},
    {6, "select", KW_SELECT},
    {6, "update", KW_UPDATE},
    {6, "values", KW_VALUES},
    {7, "analyse", KW_ANALYSE},
    {7, "analyze", KW_ANALYZE},
    {7, "declare", KW_DECLARE},
    {7, "discard", KW_DISCARD},
    {7, "execute", KW_EXECUTE},
    {7, "explain", KW_EXPLAIN},
    {7, "prepare", KW_PREPARE},
    {7, "release", KW_RELEASE},
    {7, "session", KW_SESSION},
    {7, "uescape", KW_UESCAPE},
    {7, "verbose", KW_VERBOSE},
    {8, "prepared", KW_PREPARED},
    {8, "rollback", KW_ROLLBACK},
    {8, "unlisten", KW_UNLISTEN},
    {9, "recursive", KW_RECURSIVE},
    {9, "savepoint", KW_SAVEPOINT},
    {9, "temporary", KW_TEMPORARY},
    {10, "deallocate", KW_DEALLOCATE},
    {11, "constraints", KW_CONSTRAINTS},
    {11, "transaction", KW_TRANSACTION},
    {13, "authorization", KW_AUTHORIZATION},
    {15, "characteristics", KW_CHARACTERISTICS},
};

#define KW_LEN_MIN 2
#define KW_LEN_MAX 15 /* "characteristics" */
#define KW_COUNT   (sizeof kw_table / sizeof kw_table[0])

/* Open addressing with linear probing: slot = FNV-1a of the lower-case word, each slot holding
 * 1 + an index into kw_table, 0 when empty. At most a quarter full, so a probe rarely looks twice.
 */
#define KW_SLOTS 512
_Static_assert(KW_SLOTS >= 4 * KW_COUNT && (KW_SLOTS & (KW_SLOTS - 1)) == 0, "kw_slots size");
_Static_assert(KW_COUNT < 255, "kw_slots holds 1 + an index in a byte");
static unsigned char kw_slots[KW_SLOTS];

/* Character classes for the lexer, one table lookup per byte. Byte 0 has none: a NUL ends the
 * text for every scanning loop. */
enum { CC_SPACE = 1, CC_DIGIT = 2, CC_IDENT_START = 4, CC_IDENT = 8, CC_OP = 16 };
static unsigned char cclass[256];

static inline uint32_t kw_hash_step(uint32_t h, unsigned char c)
{
    return (h ^ c) * 16777619u;
}

/* Builds kw_slots and cclass; run once (pthread_once) before the first classification. */
static void tables_init(void)
{
    for (size_t i = 0; i < KW_COUNT; i++) {
        uint32_t h = 2166136261u;
        for (size_t j = 0; j < kw_table[i].len; j++)
            h = kw_hash_step(h, (unsigned char)kw_table[i].word[j]);
        size_t slot = h & (KW_SLOTS - 1);
        while (kw_slots[slot] != 0)
            slot = (slot + 1) & (KW_SLOTS - 1);
        kw_slots[slot] = (unsigned char)(i + 1);
    }
    for (int c = 1; c < 256; c++) {
        unsigned char k = 0, l = (unsigned char)(c | 0x20);
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v')
            k |= CC_SPACE;
        if (c >= '0' && c <= '9')
            k |= CC_DIGIT | CC_IDENT;
        /* Identifier characters as PostgreSQL's scanner has them: bytes >= 0x80 are letters. */
        if ((l >= 'a' && l <= 'z') || c == '_' || c >= 0x80)
            k |= CC_IDENT_START | CC_IDENT;
        if (c == '$')
            k |= CC_IDENT;
        if (c != 0 && strchr("~!@#^&|`?+-*/%<>=", c) != NULL)
            k |= CC_OP;
        cclass[c] = k;
    }
}

static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static enum kw kw_lookup(const char *s, size_t n)
{
    if (n < KW_LEN_MIN || n > KW_LEN_MAX)
        return KW_NONE;
    unsigned char w[KW_LEN_MAX];
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        w[i] = fold((unsigned char)s[i]);
        h = kw_hash_step(h, w[i]);
    }
    for (size_t slot = h & (KW_SLOTS - 1); kw_slots[slot] != 0;
         slot = (slot + 1) & (KW_SLOTS - 1)) {
        const struct kw_entry *e = &kw_table[kw_slots[slot] - 1];
        if (e->len == n && memcmp(e->word, w, n) == 0)
            return e->kw;
    }
    return KW_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* Write functions                                                                              */

struct fn_entry {
    const char *name;
    bool pin; /* session-level lock: only the node that took it can release it */
};

/* Functions with side effects, or whose result only makes sense on the session that called a
 * write function before (currval, lastval), or that fail on a replica (pg_current_wal_lsn).
 * Sorted by name (byte order) for binary search. Any name starting with lo_ (large objects)
 * is a write function too. */
static const struct fn_entry fn_table[] = {
    {"currval", false},
    {"dblink", false},
    {"dblink_exec", false},
    {"lastval", false},
    {"nextval", false},
    {"pg_advisory_lock", true},
    {"pg_advisory_lock_shared", true},
    {"pg_advisory_unlock", false},
    {"pg_advisory_unlock_all", false},
    {"pg_advisory_unlock_shared", false},
    {"pg_advisory_xact_lock", false},
    {"pg_advisory_xact_lock_shared", false},
    {"pg_cancel_backend", false},
    {"pg_create_logical_replication_slot", false},
    {"pg_create_physical_replication_slot", false},
    {"pg_create_restore_point", false},
    {"pg_current_wal_lsn", false},
    {"pg_current_xact_id", false},
    {"pg_current_xact_id_if_assigned", false},
    {"pg_drop_replication_slot", false},
    {"pg_logical_emit_message", false},
    {"pg_notify", false},
    {"pg_reload_conf", false},
    {"pg_replication_origin_create", false},
    {"pg_stat_reset", false},
    {"pg_switch_wal", false},
    {"pg_terminate_backend", false},
    {"pg_try_advisory_lock", true},
    {"pg_try_advisory_lock_shared", true},
    {"pg_try_advisory_xact_lock", false},
    {"pg_try_advisory_xact_lock_shared", false},
    {"set_config", false},
    {"setval", false},
    {"txid_current", false},
    {"txid_current_if_assigned", false},
};

/* Looks s[0..n) up among the built-in and configured write functions. Unquoted names compare
 * ignoring case; quoted ones (`exact`) must match the lower-case name exactly. */
static bool write_fn_lookup(const char *s, size_t n, bool exact,
                            const struct classify_functions *extra, bool *pin)
{
    *pin = false;
    if (n >= 3 && word_cmp(s, 3, "lo_", exact) == 0)
        return true;
    size_t lo = 0, hi = sizeof fn_table / sizeof fn_table[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = word_cmp(s, n, fn_table[mid].name, exact);
        if (c == 0) {
            *pin = fn_table[mid].pin;
            return true;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (extra != NULL && extra->names != NULL) {
        for (size_t i = 0; i < extra->count; i++) {
            if (extra->names[i] != NULL && word_cmp(s, n, extra->names[i], exact) == 0)
                return true;
        }
    }
    return false;
}

bool classify_is_write_function(const char *name, size_t len,
                                const struct classify_functions *extra)
{
    bool pin;
    if (name == NULL)
        return false;
    return write_fn_lookup(name, len, false, extra, &pin);
}

/* ------------------------------------------------------------------------------------------ */
/* Lexer                                                                                        */

enum tok_type {
    TK_EOF = 0, /* end of the text, or its first NUL byte */
    TK_ERROR,   /* unterminated string, quoted identifier or comment; it runs to the end */
    TK_IDENT,   /* unquoted identifier or keyword (kw says which keyword) */
    TK_QIDENT,  /* "quoted identifier" */
    TK_UQIDENT, /* U&"quoted identifier" (may hold escapes, so its name is not known) */
    TK_STRING,  /* '...' standard string */
    TK_XSTRING, /* any other string: E'', U&'', B'', X'', N'', $tag$...$tag$ */
    TK_NUMBER,
    TK_PARAM, /* $1 */
    TK_OP,    /* operator or other punctuation */
    TK_LPAREN,
    TK_RPAREN,
    TK_SEMI,
    TK_COMMA,
    TK_DOT,
};

struct tok {
    enum tok_type type;
    enum kw kw;
    size_t off, len;       /* the whole token */
    size_t in_off, in_len; /* between the quotes (TK_QIDENT, TK_UQIDENT, TK_STRING) */
};

struct lexer {
    const char *s;
    size_t n;     /* readable bytes; cut down to the first NUL once one is met */
    size_t pos;   /* next byte to lex */
    bool leading; /* no token yet: a comment here may be the pgsteer:primary hint */
    bool hint;    /* the hint was seen */
    bool error;   /* an unterminated construct was met */
    /* classify_sql_literals: where the literals that may be parameters are noted (NULL: not
     * asked), and what the tokens before told */
    struct classify_literals *lits;
    enum tok_type prev_type;
    enum kw prev_kw;
    size_t prev_off, prev_len;
    bool prev_op;    /* the previous token is an operator a parameter may follow */
    bool lits_bad;   /* something makes the statement unfit to run with parameters */
    bool lits_into;  /* an INTO (SELECT INTO makes a table: a utility statement) */
    bool lits_order; /* an ORDER BY was seen: the server takes "ORDER BY -1" (a minus folded
                        into the constant) as a column position, "-$1" as an expression */
};

/* Reads byte i, or 0 past the end: a NUL byte and the end of the text look alike, so every
 * scanning loop stops at either without a separate length check. */
static inline unsigned char lx_at(const struct lexer *lx, size_t i)
{
    return i < lx->n ? (unsigned char)lx->s[i] : 0;
}

static inline bool is_space(unsigned char c)
{
    return cclass[c] & CC_SPACE;
}

static inline bool is_digit(unsigned char c)
{
    return cclass[c] & CC_DIGIT;
}

static inline bool is_ident_start(unsigned char c)
{
    return cclass[c] & CC_IDENT_START;
}

static inline bool is_ident_char(unsigned char c)
{
    return cclass[c] & CC_IDENT;
}

static inline bool is_op_char(unsigned char c)
{
    return cclass[c] & CC_OP;
}

static struct tok lex_make(enum tok_type type, size_t off, size_t end)
{
    struct tok t = {.type = type, .off = off, .len = end - off};
    return t;
}

/* Ends the text at `end` (where the NUL or the end of input was met) with an error token that
 * covers [off, end): the caller classifies the statement as a write. */
static struct tok lex_fail(struct lexer *lx, size_t off, size_t end)
{
    lx->n = end;
    lx->pos = end;
    lx->error = true;
    return lex_make(TK_ERROR, off, end);
}

/* The hint is a whole block comment whose text, without surrounding whitespace, is
 * "pgsteer:primary" in any case. */
static void lex_check_hint(struct lexer *lx, size_t a, size_t b)
{
    while (a < b && is_space((unsigned char)lx->s[a]))
        a++;
    while (b > a && is_space((unsigned char)lx->s[b - 1]))
        b--;
    if (ci_eq(lx->s + a, b - a, "pgsteer:primary"))
        lx->hint = true;
}

/* A string or quoted identifier opening with the quote at `q`; the token starts at `off` (before
 * any prefix such as E or U&). Doubled quotes stand for one; `backslash` strings (E'') also
 * escape any byte with a backslash. */
static struct tok lex_quoted(struct lexer *lx, size_t off, size_t q, bool backslash,
                             enum tok_type type)
{
    unsigned char quote = lx_at(lx, q);
    size_t p = q + 1;
    for (;;) {
        unsigned char c = lx_at(lx, p);
        if (c == 0)
            return lex_fail(lx, off, p);
        if (c == quote) {
            if (lx_at(lx, p + 1) == quote) {
                p += 2;
                continue;
            }
            break;
        }
        if (backslash && c == '\\') {
            if (lx_at(lx, p + 1) == 0)
                return lex_fail(lx, off, p + 1);
            p += 2;
            continue;
        }
        p++;
    }
    struct tok t = lex_make(type, off, p + 1);
    t.in_off = q + 1;
    t.in_len = p - (q + 1);
    lx->pos = p + 1;
    return t;
}

/* At a '$' that is not a parameter: $$...$$ or $tag$...$tag$ where the tag is made of identifier
 * characters other than '$' and does not start with a digit. A lone '$' is punctuation. */
static struct tok lex_dollar(struct lexer *lx, size_t p)
{
    size_t q = p + 1;
    if (lx_at(lx, q) != '$') {
        if (!is_ident_start(lx_at(lx, q))) {
            lx->pos = p + 1;
            return lex_make(TK_OP, p, p + 1);
        }
        while (is_ident_start(lx_at(lx, q)) || is_digit(lx_at(lx, q)))
            q++;
        if (lx_at(lx, q) != '$') {
            lx->pos = p + 1;
            return lex_make(TK_OP, p, p + 1);
        }
    }
    /* The delimiter is s[p..q] inclusive; it holds no NUL, so a memcmp match cannot run past
     * the first NUL either. */
    size_t dlen = q + 1 - p;
    for (size_t r = q + 1;; r++) {
        unsigned char c = lx_at(lx, r);
        if (c == 0)
            return lex_fail(lx, p, r);
        if (c == '$' && dlen <= lx->n - r && memcmp(lx->s + r, lx->s + p, dlen) == 0) {
            lx->pos = r + dlen;
            return lex_make(TK_XSTRING, p, r + dlen);
        }
    }
}

static struct tok lex_number(struct lexer *lx, size_t p)
{
    size_t q = p;
    unsigned char x = fold(lx_at(lx, p + 1));
    if (lx_at(lx, p) == '0' && (x == 'x' || x == 'o' || x == 'b')) {
        /* 0x1F, 0o17, 0b101 (PostgreSQL 16) */
        q = p + 2;
        while (is_ident_start(lx_at(lx, q)) || is_digit(lx_at(lx, q)))
            q++;
    } else {
        while (is_digit(lx_at(lx, q)) || lx_at(lx, q) == '_')
            q++;
        if (lx_at(lx, q) == '.' && lx_at(lx, q + 1) != '.') {
            q++;
            while (is_digit(lx_at(lx, q)) || lx_at(lx, q) == '_')
                q++;
        }
        if (fold(lx_at(lx, q)) == 'e') {
            size_t r = q + 1;
            if (lx_at(lx, r) == '+' || lx_at(lx, r) == '-')
                r++;
            if (is_digit(lx_at(lx, r))) {
                q = r;
                while (is_digit(lx_at(lx, q)))
                    q++;
            }
        }
        /* Letters right after a number are left to the next token: older servers read
         * "1into t" as "1 into t", so a keyword must not hide inside a number. */
    }
    lx->pos = q;
    return lex_make(TK_NUMBER, p, q);
}

/* An operator: a run of operator characters that stops before a comment start, with trailing
 * '+'/'-' dropped as PostgreSQL does (so "=-1" is "=" then "-1"). */
static struct tok lex_operator(struct lexer *lx, size_t p)
{
    size_t q = p;
    while (is_op_char(lx_at(lx, q))) {
        unsigned char c = lx_at(lx, q), d = lx_at(lx, q + 1);
        if (q > p && ((c == '-' && d == '-') || (c == '/' && d == '*')))
            break;
        q++;
    }
    size_t n = q - p;
    if (n > 1 && (lx->s[q - 1] == '+' || lx->s[q - 1] == '-')) {
        bool keep = false;
        for (size_t i = p; i < q - 1; i++) {
            if (strchr("~!@#^&|`?%", lx->s[i]) != NULL) {
                keep = true;
                break;
            }
        }
        if (!keep) {
            do
                n--;
            while (n > 1 && (lx->s[p + n - 1] == '+' || lx->s[p + n - 1] == '-'));
        }
    }
    lx->pos = p + n;
    return lex_make(TK_OP, p, p + n);
}

/* Returns the next token, skipping whitespace and comments. After TK_EOF or TK_ERROR it keeps
 * returning TK_EOF. */
static struct tok lex_scan(struct lexer *lx)
{
    size_t p = lx->pos;
    unsigned char c;
    for (;;) {
        c = lx_at(lx, p);
        if (is_space(c)) {
            p++;
        } else if (c == '-' && lx_at(lx, p + 1) == '-') {
            p += 2;
            while ((c = lx_at(lx, p)) != 0 && c != '\n')
                p++;
        } else if (c == '/' && lx_at(lx, p + 1) == '*') {
            /* Block comments nest in PostgreSQL. */
            size_t start = p, depth = 1;
            p += 2;
            while (depth > 0) {
                c = lx_at(lx, p);
                if (c == 0)
                    return lex_fail(lx, start, p);
                if (c == '*' && lx_at(lx, p + 1) == '/') {
                    p += 2;
                    depth--;
                } else if (c == '/' && lx_at(lx, p + 1) == '*') {
                    p += 2;
                    depth++;
                } else {
                    p++;
                }
            }
            if (lx->leading)
                lex_check_hint(lx, start + 2, p - 2);
        } else {
            break;
        }
    }
    lx->leading = false;
    if (c == 0) {
        lx->n = p;
        lx->pos = p;
        return lex_make(TK_EOF, p, p);
    }

    unsigned char c1 = lx_at(lx, p + 1);
    unsigned char lc = c | 0x20;
    switch (c) {
    case '\'':
        return lex_quoted(lx, p, p, false, TK_STRING);
    case '"':
        return lex_quoted(lx, p, p, false, TK_QIDENT);
    case '$':
        if (is_digit(c1)) {
            size_t q = p + 1;
            while (is_digit(lx_at(lx, q)))
                q++;
            lx->pos = q;
            return lex_make(TK_PARAM, p, q);
        }
        return lex_dollar(lx, p);
    case '(':
    case ')':
    case ';':
    case ',':
        lx->pos = p + 1;
        return lex_make(c == '('   ? TK_LPAREN
                        : c == ')' ? TK_RPAREN
                        : c == ';' ? TK_SEMI
                                   : TK_COMMA,
                        p, p + 1);
    case '.':
        if (is_digit(c1))
            return lex_number(lx, p);
        lx->pos = p + 1;
        return lex_make(TK_DOT, p, p + 1);
    default:
        break;
    }
    if (c1 == '\'') {
        /* E'' takes backslash escapes; B'', X'' and N'' quote like standard strings. */
        if (lc == 'e')
            return lex_quoted(lx, p, p + 1, true, TK_XSTRING);
        if (lc == 'b' || lc == 'x' || lc == 'n')
            return lex_quoted(lx, p, p + 1, false, TK_XSTRING);
    }
    if (lc == 'u' && c1 == '&') {
        unsigned char c2 = lx_at(lx, p + 2);
        if (c2 == '\'')
            return lex_quoted(lx, p, p + 2, false, TK_XSTRING);
        if (c2 == '"')
            return lex_quoted(lx, p, p + 2, false, TK_UQIDENT);
    }
    if (is_ident_start(c)) {
        size_t q = p + 1;
        while (is_ident_char(lx_at(lx, q)))
            q++;
        lx->pos = q;
        struct tok t = lex_make(TK_IDENT, p, q);
        t.kw = kw_lookup(lx->s + p, q - p);
        return t;
    }
    if (is_digit(c))
        return lex_number(lx, p);
    if (is_op_char(c))
        return lex_operator(lx, p);
    lx->pos = p + 1;
    return lex_make(TK_OP, p, p + 1);
}

/* Operators after which an integer literal may become a parameter: comparisons and arithmetic.
 * Whatever follows, a parameter of the literal's own type stands where the literal stood. */
static bool lit_op(const struct lexer *lx, const struct tok *t)
{
    const char *o = lx->s + t->off;
    if (t->len == 1)
        return strchr("=<>+-*/", o[0]) != NULL;
    return t->len == 2 && ((o[0] == '<' && (o[1] == '>' || o[1] == '=')) ||
                           (o[0] == '>' && o[1] == '=') || (o[0] == '!' && o[1] == '='));
}

/* Whether the n digits at d are 2147483648 or 9223372036854775808 (leading zeros aside): the
 * two integers whose negation fits a narrower type than they do. The server folds a unary
 * minus into the constant it applies to, so -2147483648 is an int4 and -9223372036854775808 an
 * int8, where minus a parameter of the literal's own type would be an int8 and a numeric
 * (pg_typeof, the columns' types, which function or operator is chosen). */
static bool lit_negation_narrows(const char *d, size_t n)
{
    while (n > 1 && *d == '0')
        d++, n--;
    return (n == 10 && memcmp(d, "2147483648", 10) == 0) ||
           (n == 19 && memcmp(d, "9223372036854775808", 19) == 0);
}

/* Whether a word (n bytes at w) brings clauses whose expressions the server matches against
 * others of the statement: GROUP BY (each selected column either grouped or inside an
 * aggregate, "a + 1" against "a + 1"), DISTINCT (ON) against ORDER BY, and ON CONFLICT's
 * target against an index's expressions and predicate. Two parameters never match as two equal
 * literals do, so such a text with literals would fail to prepare (42803, 42P10) where the
 * Query runs: it goes as it came. */
static bool lit_matching_word(const char *w, size_t n)
{
    return (n == 5 && ci_eq(w, n, "group")) ||
           (n == 8 && (ci_eq(w, n, "distinct") || ci_eq(w, n, "conflict")));
}

/* Whether a word (n bytes at w) is RETURNING. A change that returns rows runs to its end before
 * a Query's RowDescription goes out, so when it fails the client gets the error alone; the
 * Describe of a kept statement's portal answers with the RowDescription first. (The same for
 * a change inside WITH: classify_sql_literals.) */
static bool lit_returning_word(const char *w, size_t n)
{
    return n == 9 && ci_eq(w, n, "returning");
}

/* classify_sql_literals' part of the lexer: notes integer literals right after such an operator,
 * and what makes a statement unfit to run with parameters. Everything else stays as written:
 * ORDER BY 1 and GROUP BY 1 name columns, type modifiers (varchar(10)) must be constants, and a
 * literal after '(' or ',' is most often one of a list (IN, VALUES) whose length varies, which
 * would make every text a new one. */
static void lex_note(struct lexer *lx, const struct tok *t)
{
    struct classify_literals *L = lx->lits;
    switch (t->type) {
    case TK_NUMBER: {
        bool digits = true;
        for (size_t i = 0; i < t->len && digits; i++)
            digits = is_digit((unsigned char)lx->s[t->off + i]);
        if (digits && lx->prev_op && !is_ident_char(lx_at(lx, t->off + t->len))) {
            if (lit_negation_narrows(lx->s + t->off, t->len) ||
                (lx->lits_order && lx->prev_len == 1 && lx->s[lx->prev_off] == '-'))
                break; /* stays as written (see there, and lits_order) */
            if (L->n == CLASSIFY_MAX_LITERALS)
                lx->lits_bad = true;
            else
                L->at[L->n++] = (struct classify_span){t->off, t->len};
        } else if (lx->prev_type == TK_LPAREN || lx->prev_type == TK_COMMA) {
            lx->lits_bad = true;
        }
        break;
    }
    case TK_PARAM: /* $1 of the client's own: the text is not a statement to run so */
    case TK_ERROR:
        lx->lits_bad = true;
        break;
    case TK_IDENT:
        if (t->kw == KW_INTO)
            lx->lits_into = true;
        else if (lit_matching_word(lx->s + t->off, t->len) ||
                 lit_returning_word(lx->s + t->off, t->len))
            lx->lits_bad = true;
        else if (lx->prev_type == TK_IDENT && ci_eq(lx->s + t->off, t->len, "by") &&
                 ci_eq(lx->s + lx->prev_off, lx->prev_len, "order"))
            lx->lits_order = true;
        break;
    case TK_OP:
        /* SELECT *, t.*: columns that a change of the table changes, which a prepared
         * statement may not follow (0A000). (DISTINCT * and RETURNING * are ruled out by
         * their first words.) */
        if (t->len == 1 && lx->s[t->off] == '*' &&
            (lx->prev_type == TK_COMMA || lx->prev_type == TK_DOT ||
             (lx->prev_type == TK_IDENT && (lx->prev_kw == KW_SELECT || lx->prev_kw == KW_ALL))))
            lx->lits_bad = true;
        break;
    default:
        break;
    }
    lx->prev_op = t->type == TK_OP && lit_op(lx, t);
    lx->prev_type = t->type;
    lx->prev_kw = t->kw;
    lx->prev_off = t->off;
    lx->prev_len = t->len;
}

static struct tok lex_next(struct lexer *lx)
{
    struct tok t = lex_scan(lx);
    if (lx->lits != NULL)
        lex_note(lx, &t);
    return t;
}

/* ------------------------------------------------------------------------------------------ */
/* Statement recogniser                                                                         */

struct cctx {
    struct lexer lx;
    const struct classify_functions *extra;
    bool too_deep; /* wrapped statements nest beyond CLASSIFY_NEST_MAX */
};

/* What one statement does. Spans are offsets into the whole text. */
struct stmt {
    unsigned flags;
    enum classify_savepoint savepoint;
    struct classify_span name;
    bool name_quoted;
    bool name_all;
    struct classify_span body;
    bool has_setting;
    struct classify_span setting;
    struct classify_span value;
    const char *setting_name;
};

/* What the scan of a statement's remaining tokens looks for. */
enum {
    D_FUNCS = 1u << 0,   /* calls of write functions */
    D_LOCK = 1u << 1,    /* FOR UPDATE / SHARE / NO KEY UPDATE / KEY SHARE */
    D_INTO = 1u << 2,    /* SELECT ... INTO [TEMP] */
    D_DML = 1u << 3,     /* INSERT/UPDATE/DELETE/MERGE starting a sub-statement (in WITH) */
    D_COPYDIR = 1u << 4, /* COPY ... FROM at the top level */
    D_ATOMIC = 1u << 5,  /* BEGIN ATOMIC ... END bodies, where ';' does not end the statement */
    D_PGTEMP = 1u << 6,  /* pg_temp.name creates a temporary object */
};

#define D_READ (D_FUNCS | D_LOCK | D_INTO | D_DML)

struct scan {
    unsigned det;
    size_t depth;        /* parentheses */
    size_t atomic;       /* BEGIN ATOMIC / CASE nesting inside a routine body */
    bool with_seen;      /* a WITH list may precede a data-modifying main statement */
    enum kw p1, p2, p3;  /* keywords of the last three tokens, KW_NONE for other tokens */
    struct tok prev;     /* the last token */
    enum kw before_name; /* keyword before the current, possibly qualified, name */
    size_t ntok;         /* tokens fed */
    struct tok first;    /* the first token fed */
    size_t last_end;     /* end of the last token fed */
};

static void scan_init(struct scan *s, unsigned det)
{
    memset(s, 0, sizeof *s);
    s->det = det;
}

static inline bool tok_is_term(const struct tok *t)
{
    return t->type == TK_EOF || t->type == TK_ERROR || t->type == TK_SEMI;
}

static inline bool tok_is_name(const struct tok *t)
{
    return t->type == TK_IDENT || t->type == TK_QIDENT;
}

static inline bool tok_is_op(const struct cctx *c, const struct tok *t, char op)
{
    return t->type == TK_OP && t->len == 1 && c->lx.s[t->off] == op;
}

/* The text a token stands for: a name or a string's content, or the token itself. */
static void tok_text(const struct cctx *c, const struct tok *t, const char **s, size_t *n)
{
    if (t->type == TK_QIDENT || t->type == TK_UQIDENT || t->type == TK_STRING) {
        *s = c->lx.s + t->in_off;
        *n = t->in_len;
    } else {
        *s = c->lx.s + t->off;
        *n = t->len;
    }
}

static struct classify_span tok_name_span(const struct tok *t)
{
    struct classify_span sp;
    if (t->type == TK_QIDENT) {
        sp.off = t->in_off;
        sp.len = t->in_len;
    } else {
        sp.off = t->off;
        sp.len = t->len;
    }
    return sp;
}

/* `name` is followed by '(': flags the statement when it names a write function. */
static void scan_call(struct cctx *c, struct stmt *st, const struct tok *name)
{
    bool pin = false, hit;
    const char *s = c->lx.s + name->in_off;
    if (name->type == TK_IDENT) {
        hit = write_fn_lookup(c->lx.s + name->off, name->len, false, c->extra, &pin);
    } else if (name->type == TK_UQIDENT && memchr(s, '\\', name->in_len) != NULL) {
        /* Unicode escapes can spell any name: assume the worst. */
        hit = true;
    } else {
        hit = write_fn_lookup(s, name->in_len, true, c->extra, &pin);
    }
    if (hit)
        st->flags |= CL_WRITE | CL_WRITE_FUNCTION | (pin ? CL_PIN : 0u);
    if (name->type == TK_IDENT && ci_eq(c->lx.s + name->off, name->len, "set_config"))
        st->flags |= CL_SET_CONFIG;
}

/* Feeds one token (not a statement terminator) to the scan. */
static void scan_feed(struct cctx *c, struct stmt *st, struct scan *s, const struct tok *t)
{
    unsigned det = s->det;
    switch (t->type) {
    case TK_LPAREN:
        if ((det & D_FUNCS) && s->ntok > 0 &&
            (tok_is_name(&s->prev) || s->prev.type == TK_UQIDENT)) {
            /* A name before '(' is a call unless it is being declared: INSERT INTO t (cols),
             * WITH cte (cols) AS, AS alias (cols), CAST (x AS type (n)). */
            enum kw b = s->before_name;
            if (b != KW_INTO && b != KW_WITH && b != KW_RECURSIVE && b != KW_AS && b != KW_TABLE)
                scan_call(c, st, &s->prev);
        }
        s->depth++;
        break;
    case TK_RPAREN:
        if (s->depth > 0)
            s->depth--;
        break;
    case TK_DOT:
        if ((det & D_PGTEMP) && s->prev.type == TK_IDENT &&
            ci_eq(c->lx.s + s->prev.off, s->prev.len, "pg_temp"))
            st->flags |= CL_PIN;
        break;
    case TK_IDENT:
        switch (t->kw) {
        case KW_INSERT:
        case KW_DELETE:
        case KW_MERGE:
        case KW_UPDATE:
            /* A data-modifying statement inside a query starts after '(' (a CTE body), after
             * the ')' ending a WITH list (the main statement), or after a ';' inside
             * parentheses. Elsewhere these words are column names or aliases. */
            if ((det & D_DML) && (s->prev.type == TK_LPAREN || s->prev.type == TK_SEMI ||
                                  (s->prev.type == TK_RPAREN && s->with_seen)))
                st->flags |= CL_WRITE;
            if (t->kw == KW_UPDATE && (det & D_LOCK) &&
                (s->p1 == KW_FOR || (s->p1 == KW_KEY && s->p2 == KW_NO && s->p3 == KW_FOR)))
                st->flags |= CL_WRITE;
            break;
        case KW_SHARE:
            if ((det & D_LOCK) && (s->p1 == KW_FOR || (s->p1 == KW_KEY && s->p2 == KW_FOR)))
                st->flags |= CL_WRITE;
            break;
        case KW_INTO:
            /* SELECT ... INTO creates a table; INSERT INTO / MERGE INTO are caught as DML. */
            if ((det & D_INTO) && s->p1 != KW_INSERT && s->p1 != KW_MERGE)
                st->flags |= CL_WRITE | CL_NAMES;
            break;
        case KW_TEMP:
        case KW_TEMPORARY:
            if ((det & D_INTO) && ((s->p1 == KW_INTO && s->p2 != KW_INSERT && s->p2 != KW_MERGE) ||
                                   ((s->p1 == KW_LOCAL || s->p1 == KW_GLOBAL) && s->p2 == KW_INTO)))
                st->flags |= CL_PIN;
            break;
        case KW_WITH:
            s->with_seen = true;
            break;
        case KW_FROM:
            if ((det & D_COPYDIR) && s->depth == 0)
                st->flags |= CL_WRITE;
            break;
        case KW_ATOMIC:
            if ((det & D_ATOMIC) && s->p1 == KW_BEGIN)
                s->atomic++;
            break;
        case KW_CASE:
            if (s->atomic > 0)
                s->atomic++;
            break;
        case KW_END:
            if (s->atomic > 0)
                s->atomic--;
            break;
        case KW_UESCAPE:
            /* U&"..." UESCAPE '!' can spell any function name. */
            if ((det & D_FUNCS) && s->prev.type == TK_UQIDENT)
                st->flags |= CL_WRITE | CL_WRITE_FUNCTION;
            break;
        default:
            break;
        }
        break;
    default:
        break;
    }
    if ((tok_is_name(t) || t->type == TK_UQIDENT) && s->prev.type != TK_DOT)
        s->before_name = s->p1;
    s->p3 = s->p2;
    s->p2 = s->p1;
    s->p1 = t->type == TK_IDENT ? t->kw : KW_NONE;
    if (s->ntok == 0)
        s->first = *t;
    s->prev = *t;
    s->ntok++;
    s->last_end = t->off + t->len;
}

/* Feeds `t` and the tokens after it up to the end of the statement, and consumes the ';'. */
static void scan_to_end(struct cctx *c, struct stmt *st, struct scan *s, struct tok t)
{
    for (;;) {
        if (t.type == TK_EOF || t.type == TK_ERROR)
            return;
        /* Like psql, a ';' inside parentheses does not end the statement: CREATE RULE ... DO
         * (stmt; stmt). Anywhere else it is a syntax error that runs nothing. */
        if (t.type == TK_SEMI && s->atomic == 0 && s->depth == 0)
            return;
        scan_feed(c, st, s, &t);
        t = lex_next(&c->lx);
    }
}

/* Consumes the rest of the statement, starting with `t`, looking at nothing. */
static void skip_to_end(struct cctx *c, struct stmt *st, struct tok t)
{
    struct scan s;
    scan_init(&s, 0);
    scan_to_end(c, st, &s, t);
}

static void classify_stmt(struct cctx *c, struct tok t, struct stmt *st, int nest);

/* Transaction modes up to the end of the statement, starting with `t`: true when the last
 * READ ONLY / READ WRITE says READ ONLY. */
static bool parse_tx_modes(struct cctx *c, struct stmt *st, struct tok t)
{
    bool ro = false, serializable = false;
    enum kw prev = KW_NONE;
    while (!tok_is_term(&t)) {
        if (prev == KW_READ && t.kw == KW_ONLY)
            ro = true;
        else if (prev == KW_READ && t.kw == KW_WRITE) {
            ro = false;
            st->flags |= CL_TX_READ_WRITE;
        } else if (t.type == TK_IDENT && ci_eq(c->lx.s + t.off, t.len, "serializable"))
            serializable = true;
        prev = t.type == TK_IDENT ? t.kw : KW_NONE;
        t = lex_next(&c->lx);
    }
    skip_to_end(c, st, t);
    /* A hot standby refuses serializable transactions, even read-only ones. */
    return ro && !serializable;
}

/* A boolean setting value PostgreSQL reads as true: on, 1, or a prefix of true / yes. */
static bool text_is_true(const char *s, size_t n)
{
    return ci_eq(s, n, "on") || (n == 1 && s[0] == '1') || ci_prefix_of(s, n, "true") ||
           ci_prefix_of(s, n, "yes");
}

static bool text_is_false(const char *s, size_t n)
{
    return ci_eq(s, n, "off") || ci_eq(s, n, "0") || ci_prefix_of(s, n, "false") ||
           ci_eq(s, n, "no");
}

/* The value of SET up to the end of the statement, starting with `t`. One plain '...' literal
 * is given without its quotes. */
static void parse_set_value(struct cctx *c, struct stmt *st, struct tok t)
{
    struct scan s;
    scan_init(&s, 0);
    st->value.off = t.off;
    st->value.len = 0;
    scan_to_end(c, st, &s, t);
    if (s.ntok == 1 && s.first.type == TK_STRING) {
        st->value.off = s.first.in_off;
        st->value.len = s.first.in_len;
    } else if (s.ntok > 0) {
        st->value.off = s.first.off;
        st->value.len = s.last_end - s.first.off;
    }
}

/* A setting name, possibly qualified, starting with `t`; returns the token after it. Sets the
 * setting span and says whether the name is in the pgsteer namespace and has one part. */
static struct tok parse_setting_name(struct cctx *c, struct stmt *st, struct tok t, bool *pgsteer,
                                     bool *simple)
{
    struct tok first = t, last = t;
    unsigned parts = 1;
    *pgsteer = false;
    *simple = false;
    if (!tok_is_name(&t))
        return t;
    t = lex_next(&c->lx);
    while (t.type == TK_DOT) {
        struct tok part = lex_next(&c->lx);
        if (!tok_is_name(&part)) {
            t = part;
            break;
        }
        last = part;
        parts++;
        t = lex_next(&c->lx);
    }
    const char *s;
    size_t n;
    tok_text(c, &first, &s, &n);
    if (parts == 1) {
        st->setting = tok_name_span(&first);
        *simple = true;
        /* "pgsteer.x" quoted as one name is the same setting. */
        *pgsteer = first.type == TK_QIDENT && n > 8 && word_cmp(s, 8, "pgsteer.", false) == 0;
    } else {
        st->setting.off = first.off;
        st->setting.len = last.off + last.len - first.off;
        *pgsteer = ci_eq(s, n, "pgsteer");
    }
    return t;
}

/* SET forms that name the setting in other words (SET TIME ZONE 'UTC'): the value follows
 * without TO or '=', starting with `value`. `first`..`last` are the words. */
static void set_canonical(struct cctx *c, struct stmt *st, const struct tok *first,
                          const struct tok *last, const char *canon, bool local, struct tok value)
{
    st->flags |= local ? CL_SET_LOCAL : CL_SET_SESSION;
    st->has_setting = !local;
    st->setting.off = first->off;
    st->setting.len = last->off + last->len - first->off;
    st->setting_name = canon;
    parse_set_value(c, st, value);
}

/* SET [SESSION | LOCAL] ... ; the SET keyword is consumed. */
static void stmt_set(struct cctx *c, struct stmt *st)
{
    struct tok t = lex_next(&c->lx), t2;
    bool local = false, pgsteer = false, simple = false;

    if (t.kw == KW_LOCAL) {
        local = true;
        t = lex_next(&c->lx);
    } else if (t.kw == KW_SESSION) {
        t2 = lex_next(&c->lx);
        if (t2.kw == KW_CHARACTERISTICS) {
            /* SET SESSION CHARACTERISTICS AS TRANSACTION modes: new defaults for the session's
             * transactions, so a session change to replay on every node. */
            st->flags |= CL_SET_SESSION;
            st->setting_name = "session characteristics";
            st->has_setting = true;
            st->setting.off = t.off;
            st->setting.len = t2.off + t2.len - t.off;
            if (parse_tx_modes(c, st, lex_next(&c->lx)))
                st->flags |= CL_TX_READ_ONLY;
            return;
        }
        if (t2.kw == KW_AUTHORIZATION) {
            set_canonical(c, st, &t, &t2, "session_authorization", false, lex_next(&c->lx));
            return;
        }
        t = t2;
    }

    switch (t.kw) {
    case KW_TRANSACTION:
        st->flags |= CL_SET_LOCAL;
        if (parse_tx_modes(c, st, lex_next(&c->lx)))
            st->flags |= CL_TX_READ_ONLY;
        return;
    case KW_CONSTRAINTS:
        st->flags |= CL_SET_LOCAL;
        skip_to_end(c, st, t);
        return;
    case KW_SCHEMA:
    case KW_NAMES:
    case KW_ROLE:
    case KW_TIME:
    case KW_SESSION:
        t2 = lex_next(&c->lx);
        if (t2.kw == KW_TO || tok_is_op(c, &t2, '=')) {
            /* SET schema = ...: the word is a plain setting name after all. */
        } else if (t.kw == KW_SCHEMA) {
            set_canonical(c, st, &t, &t, "search_path", local, t2);
            return;
        } else if (t.kw == KW_NAMES) {
            set_canonical(c, st, &t, &t, "client_encoding", local, t2);
            return;
        } else if (t.kw == KW_ROLE) {
            set_canonical(c, st, &t, &t, "role", local, t2);
            return;
        } else if (t.kw == KW_TIME && t2.kw == KW_ZONE) {
            set_canonical(c, st, &t, &t2, "timezone", local, lex_next(&c->lx));
            return;
        } else if (t.kw == KW_SESSION && t2.kw == KW_AUTHORIZATION) {
            set_canonical(c, st, &t, &t2, "session_authorization", local, lex_next(&c->lx));
            return;
        }
        /* Otherwise the word is a plain setting name. */
        st->setting = tok_name_span(&t);
        simple = true;
        t = t2;
        break;
    default:
        if (!tok_is_name(&t)) {
            /* Not a setting name: malformed, the server will reject it. */
            st->flags |= local ? CL_SET_LOCAL : CL_SET_SESSION;
            skip_to_end(c, st, t);
            return;
        }
        t = parse_setting_name(c, st, t, &pgsteer, &simple);
        break;
    }

    const char *name = c->lx.s + st->setting.off;
    size_t nlen = st->setting.len;
    if (pgsteer) {
        st->flags |= CL_PGSTEER_SET | (local ? CL_SET_LOCAL : 0u);
        st->has_setting = true;
    } else if (local || (simple && (ci_eq(name, nlen, "transaction_read_only") ||
                                    ci_eq(name, nlen, "transaction_isolation") ||
                                    ci_eq(name, nlen, "transaction_deferrable")))) {
        /* transaction_* settings only last for the current transaction. */
        st->flags |= CL_SET_LOCAL;
    } else {
        st->flags |= CL_SET_SESSION;
        st->has_setting = true;
    }
    if (t.kw == KW_TO || tok_is_op(c, &t, '=')) {
        parse_set_value(c, st, lex_next(&c->lx));
    } else {
        /* SET name FROM CURRENT, or malformed: no value. */
        st->value.off = t.off;
        skip_to_end(c, st, t);
    }
    if (simple &&
        (ci_eq(name, nlen, "default_transaction_read_only") ||
         ci_eq(name, nlen, "transaction_read_only")) &&
        text_is_true(c->lx.s + st->value.off, st->value.len))
        st->flags |= CL_TX_READ_ONLY;
}

/* RESET name | ALL | TIME ZONE | SESSION AUTHORIZATION | TRANSACTION ISOLATION LEVEL; the
 * RESET keyword is consumed. */
static void stmt_reset(struct cctx *c, struct stmt *st)
{
    struct tok t = lex_next(&c->lx);
    if (t.kw == KW_ALL) {
        st->flags |= CL_SET_SESSION | CL_SESSION_RESET;
        skip_to_end(c, st, lex_next(&c->lx));
        return;
    }
    if (t.kw == KW_TRANSACTION) {
        st->flags |= CL_SET_LOCAL;
        skip_to_end(c, st, t);
        return;
    }
    const char *canon = NULL;
    struct tok words = t, t2 = t;
    if (t.kw == KW_TIME || t.kw == KW_SESSION) {
        t2 = lex_next(&c->lx);
        if ((t.kw == KW_TIME && t2.kw == KW_ZONE) ||
            (t.kw == KW_SESSION && t2.kw == KW_AUTHORIZATION))
            canon = t.kw == KW_TIME ? "timezone" : "session_authorization";
    } else if (t.kw == KW_ROLE) {
        canon = "role";
    }
    st->has_setting = true;
    if (canon != NULL) {
        st->flags |= CL_SET_SESSION;
        st->setting.off = words.off;
        st->setting.len = t2.off + t2.len - words.off;
        st->setting_name = canon;
        skip_to_end(c, st, lex_next(&c->lx));
        return;
    }
    bool pgsteer = false, simple;
    struct tok rest;
    if (t2.off != t.off) {
        /* Two words were read and are not a known pair: the first is a plain name. */
        st->setting = tok_name_span(&words);
        rest = t2;
    } else {
        rest = parse_setting_name(c, st, t, &pgsteer, &simple);
    }
    st->flags |= pgsteer ? CL_PGSTEER_SET : CL_SET_SESSION;
    st->value.off = st->setting.off + st->setting.len;
    skip_to_end(c, st, rest);
}

/* SHOW name: only pgsteer.* settings matter, pgsteer answers those itself. */
static void stmt_show(struct cctx *c, struct stmt *st)
{
    bool pgsteer, simple;
    struct stmt tmp = {0};
    struct tok t = parse_setting_name(c, &tmp, lex_next(&c->lx), &pgsteer, &simple);
    if (pgsteer) {
        st->flags |= CL_PGSTEER_SHOW;
        st->has_setting = true;
        st->setting = tmp.setting;
    }
    skip_to_end(c, st, t);
}

/* A statement name (PREPARE, EXECUTE, DEALLOCATE). */
static void stmt_set_name(struct stmt *st, const struct tok *t)
{
    st->name = tok_name_span(t);
    st->name_quoted = t->type == TK_QIDENT;
}

/* PREPARE name [(types)] AS statement, or PREPARE TRANSACTION 'gid'. */
static void stmt_prepare(struct cctx *c, struct stmt *st)
{
    struct tok t = lex_next(&c->lx);
    if (t.kw == KW_TRANSACTION) {
        /* "transaction" can also be a statement name: PREPARE transaction AS ... */
        struct tok t2 = lex_next(&c->lx);
        if (t2.type == TK_STRING || t2.type == TK_XSTRING || tok_is_term(&t2)) {
            st->flags |= CL_END_TX | CL_WRITE;
            skip_to_end(c, st, t2);
            return;
        }
        stmt_set_name(st, &t);
        t = t2;
    } else if (tok_is_name(&t)) {
        stmt_set_name(st, &t);
        t = lex_next(&c->lx);
    } else {
        st->flags |= CL_WRITE;
        skip_to_end(c, st, t);
        return;
    }
    if (t.type == TK_LPAREN) {
        size_t depth = 1;
        while (depth > 0) {
            t = lex_next(&c->lx);
            if (tok_is_term(&t))
                break;
            if (t.type == TK_LPAREN)
                depth++;
            else if (t.type == TK_RPAREN)
                depth--;
        }
        if (depth == 0)
            t = lex_next(&c->lx);
    }
    if (t.kw != KW_AS) {
        /* Malformed: the server rejects it; send it where that is harmless. */
        st->name.off = st->name.len = 0;
        st->name_quoted = false;
        st->flags |= CL_WRITE;
        skip_to_end(c, st, t);
        return;
    }
    /* The body is classified by the caller, separately: a prepared write writes only when
     * executed. */
    t = lex_next(&c->lx);
    struct scan s;
    scan_init(&s, 0);
    st->body.off = t.off;
    scan_to_end(c, st, &s, t);
    if (s.ntok == 0) {
        st->name.off = st->name.len = 0;
        st->name_quoted = false;
        st->body.off = 0;
        st->flags |= CL_WRITE; /* no body: malformed */
        return;
    }
    st->flags |= CL_PREPARE;
    st->body.len = s.last_end - st->body.off;
}

/* EXPLAIN [ANALYZE] [VERBOSE] statement | EXPLAIN (option [value], ...) statement. Only an
 * analysed statement runs; a plain EXPLAIN reads. */
static void stmt_explain(struct cctx *c, struct stmt *st, int nest)
{
    struct tok t = lex_next(&c->lx);
    bool analyze = false;
    if (t.type == TK_LPAREN) {
        size_t depth = 1;
        bool want_name = true, in_analyze = false;
        for (;;) {
            t = lex_next(&c->lx);
            if (tok_is_term(&t))
                break;
            if (t.type == TK_LPAREN) {
                depth++;
            } else if (t.type == TK_RPAREN) {
                if (--depth == 0) {
                    t = lex_next(&c->lx);
                    break;
                }
            } else if (depth == 1 && t.type == TK_COMMA) {
                want_name = true;
                in_analyze = false;
            } else if (depth == 1 && want_name) {
                want_name = false;
                in_analyze = t.kw == KW_ANALYZE || t.kw == KW_ANALYSE;
                if (in_analyze)
                    analyze = true;
            } else if (depth == 1 && in_analyze) {
                const char *s;
                size_t n;
                tok_text(c, &t, &s, &n);
                if (text_is_false(s, n))
                    analyze = false;
            }
        }
    } else {
        while (t.kw == KW_ANALYZE || t.kw == KW_ANALYSE || t.kw == KW_VERBOSE) {
            if (t.kw != KW_VERBOSE)
                analyze = true;
            t = lex_next(&c->lx);
        }
    }
    if (tok_is_term(&t) || nest >= CLASSIFY_NEST_MAX) {
        if (!tok_is_term(&t))
            c->too_deep = true;
        skip_to_end(c, st, t);
        return;
    }
    struct stmt inner = {0};
    classify_stmt(c, t, &inner, nest + 1);
    if (analyze)
        st->flags |= inner.flags & (CL_WRITE | CL_WRITE_FUNCTION | CL_PIN);
    if (inner.flags & CL_EXECUTE) {
        /* EXPLAIN EXECUTE needs the prepared statement wherever it runs. */
        st->flags |= CL_EXECUTE;
        st->name = inner.name;
        st->name_quoted = inner.name_quoted;
    }
}

/* DECLARE name [options] CURSOR [WITH HOLD] FOR query. */
static void stmt_declare(struct cctx *c, struct stmt *st, int nest)
{
    struct tok t = lex_next(&c->lx); /* cursor name */
    enum kw prev = KW_NONE;
    if (!tok_is_term(&t))
        t = lex_next(&c->lx);
    while (!tok_is_term(&t) && t.kw != KW_FOR) {
        if (prev == KW_WITH && t.kw == KW_HOLD)
            st->flags |= CL_PIN | CL_WRITE; /* outlives the transaction on its node */
        prev = t.type == TK_IDENT ? t.kw : KW_NONE;
        t = lex_next(&c->lx);
    }
    if (t.kw == KW_FOR) {
        t = lex_next(&c->lx);
        if (!tok_is_term(&t) && nest < CLASSIFY_NEST_MAX) {
            struct stmt inner = {0};
            classify_stmt(c, t, &inner, nest + 1);
            st->flags |= inner.flags & (CL_WRITE | CL_WRITE_FUNCTION | CL_PIN);
            return;
        }
        if (!tok_is_term(&t))
            c->too_deep = true;
    }
    skip_to_end(c, st, t);
}

/* After SAVEPOINT, RELEASE or ROLLBACK TO: [SAVEPOINT] name, as the grammar has it (SAVEPOINT
 * takes no SAVEPOINT keyword; a savepoint may be named "savepoint"). Anything else is left to
 * the server to refuse, and is not a CL_SAVEPOINT. */
static void stmt_savepoint(struct cctx *c, struct stmt *st, enum classify_savepoint op)
{
    struct tok t = lex_next(&c->lx);
    if (op != CL_SP_DEFINE && t.kw == KW_SAVEPOINT) {
        struct tok t2 = lex_next(&c->lx);
        if (!tok_is_term(&t2)) {
            t = t2;
        } else {
            stmt_set_name(st, &t);
            st->flags |= CL_SAVEPOINT;
            st->savepoint = op;
            skip_to_end(c, st, t2);
            return;
        }
    }
    if (!tok_is_name(&t)) {
        skip_to_end(c, st, t);
        return;
    }
    struct tok end = lex_next(&c->lx);
    if (tok_is_term(&end)) {
        stmt_set_name(st, &t);
        st->flags |= CL_SAVEPOINT;
        st->savepoint = op;
    }
    skip_to_end(c, st, end);
}

/* COMMIT, END, ROLLBACK, ABORT and their PREPARED / TO SAVEPOINT forms. */
static void stmt_end_tx(struct cctx *c, struct stmt *st, enum kw head)
{
    struct tok t = lex_next(&c->lx);
    if ((head == KW_COMMIT || head == KW_ROLLBACK) && t.kw == KW_PREPARED) {
        /* Finishes a two-phase transaction; cannot run inside one, so no END_TX. */
        st->flags |= CL_WRITE;
    } else {
        if (head == KW_ROLLBACK && (t.kw == KW_WORK || t.kw == KW_TRANSACTION))
            t = lex_next(&c->lx);
        if (head == KW_ROLLBACK && t.kw == KW_TO) {
            /* ROLLBACK TO [SAVEPOINT] name stays in the transaction. */
            stmt_savepoint(c, st, CL_SP_ROLLBACK_TO);
            return;
        }
        st->flags |= CL_END_TX;
        if (head == KW_ROLLBACK || head == KW_ABORT)
            st->flags |= CL_ROLLBACK;
    }
    skip_to_end(c, st, t);
}

/* DEALLOCATE [PREPARE] name | ALL. */
static void stmt_deallocate(struct cctx *c, struct stmt *st)
{
    struct tok t = lex_next(&c->lx);
    if (t.kw == KW_PREPARE) {
        struct tok t2 = lex_next(&c->lx);
        if (!tok_is_term(&t2))
            t = t2; /* else "prepare" is the statement's name */
        else {
            stmt_set_name(st, &t);
            st->flags |= CL_DEALLOCATE;
            skip_to_end(c, st, t2);
            return;
        }
    }
    if (t.kw == KW_ALL) {
        st->name_all = true;
        st->flags |= CL_DEALLOCATE;
    } else if (tok_is_name(&t)) {
        stmt_set_name(st, &t);
        st->flags |= CL_DEALLOCATE;
    } else {
        st->flags |= CL_WRITE;
        skip_to_end(c, st, t);
        return;
    }
    skip_to_end(c, st, lex_next(&c->lx));
}

/* CREATE ...: a write; temporary objects also pin the session. */
static void stmt_create(struct cctx *c, struct stmt *st)
{
    struct scan s;
    scan_init(&s, D_ATOMIC | D_PGTEMP);
    struct tok t = lex_next(&c->lx);
    if (t.kw == KW_OR) {
        t = lex_next(&c->lx); /* REPLACE */
        if (!tok_is_term(&t))
            t = lex_next(&c->lx);
    }
    if (t.kw == KW_GLOBAL || t.kw == KW_LOCAL)
        t = lex_next(&c->lx);
    if (t.kw == KW_TEMP || t.kw == KW_TEMPORARY)
        st->flags |= CL_PIN;
    st->flags |= CL_WRITE | CL_NAMES;
    scan_to_end(c, st, &s, t);
}

/* Classifies one statement whose first token `t` (not a terminator) is already read, and
 * consumes the statement up to and including its ';'. */
static void classify_stmt(struct cctx *c, struct tok t, struct stmt *st, int nest)
{
    struct scan s;
    if (t.type == TK_LPAREN) {
        /* (SELECT ...) */
        scan_init(&s, D_READ);
        scan_to_end(c, st, &s, t);
        return;
    }
    if (t.type != TK_IDENT) {
        st->flags |= CL_WRITE;
        skip_to_end(c, st, t);
        return;
    }
    switch (t.kw) {
    case KW_SELECT:
    case KW_WITH:
    case KW_VALUES:
    case KW_TABLE:
        scan_init(&s, D_READ);
        scan_to_end(c, st, &s, t);
        return;
    case KW_SHOW:
        stmt_show(c, st);
        return;
    case KW_EXPLAIN:
        stmt_explain(c, st, nest);
        return;
    case KW_BEGIN:
        st->flags |= parse_tx_modes(c, st, lex_next(&c->lx)) ? CL_BEGIN_READ_ONLY : CL_BEGIN;
        return;
    case KW_START:
        t = lex_next(&c->lx);
        if (t.kw == KW_TRANSACTION) {
            st->flags |= parse_tx_modes(c, st, lex_next(&c->lx)) ? CL_BEGIN_READ_ONLY : CL_BEGIN;
        } else {
            st->flags |= CL_WRITE;
            skip_to_end(c, st, t);
        }
        return;
    case KW_COMMIT:
    case KW_END:
    case KW_ROLLBACK:
    case KW_ABORT:
        stmt_end_tx(c, st, t.kw);
        return;
    case KW_SAVEPOINT:
        stmt_savepoint(c, st, CL_SP_DEFINE);
        return;
    case KW_RELEASE:
        stmt_savepoint(c, st, CL_SP_RELEASE);
        return;
    case KW_FETCH:
    case KW_MOVE:
    case KW_CLOSE:
        /* Run wherever the transaction (or cursor) is; nothing to decide. */
        skip_to_end(c, st, lex_next(&c->lx));
        return;
    case KW_PREPARE:
        stmt_prepare(c, st);
        return;
    case KW_EXECUTE:
        t = lex_next(&c->lx);
        if (tok_is_name(&t)) {
            stmt_set_name(st, &t);
            st->flags |= CL_EXECUTE;
            /* Arguments are expressions and may call write functions. */
            scan_init(&s, D_FUNCS);
            scan_to_end(c, st, &s, lex_next(&c->lx));
        } else {
            st->flags |= CL_WRITE;
            skip_to_end(c, st, t);
        }
        return;
    case KW_DEALLOCATE:
        stmt_deallocate(c, st);
        return;
    case KW_SET:
        stmt_set(c, st);
        return;
    case KW_RESET:
        stmt_reset(c, st);
        return;
    case KW_DISCARD:
        t = lex_next(&c->lx);
        st->flags |= CL_SET_SESSION | (t.kw == KW_ALL ? CL_SESSION_RESET : 0u);
        skip_to_end(c, st, t);
        return;
    case KW_LISTEN:
        /* Notifications reach only the session that listens, and replicas refuse LISTEN. */
        st->flags |= CL_PIN | CL_WRITE;
        skip_to_end(c, st, lex_next(&c->lx));
        return;
    case KW_UNLISTEN:
        st->flags |= CL_UNLISTEN | CL_WRITE;
        skip_to_end(c, st, lex_next(&c->lx));
        return;
    case KW_CREATE:
        stmt_create(c, st);
        return;
    case KW_DECLARE:
        stmt_declare(c, st, nest);
        return;
    case KW_COPY:
        st->flags |= CL_COPY;
        scan_init(&s, D_FUNCS | D_LOCK | D_DML | D_COPYDIR);
        scan_to_end(c, st, &s, lex_next(&c->lx));
        return;
    case KW_INSERT:
    case KW_UPDATE:
    case KW_DELETE:
    case KW_MERGE:
    case KW_CALL:
        /* Writes that evaluate expressions: note write functions (an advisory lock pins). */
        st->flags |= CL_WRITE;
        scan_init(&s, D_FUNCS);
        scan_feed(c, st, &s, &t);
        scan_to_end(c, st, &s, lex_next(&c->lx));
        return;
    default:
        /* DDL, maintenance, LOCK, DO, unknown words: the primary. */
        st->flags |= CL_WRITE;
        if (ci_eq(c->lx.s + t.off, t.len, "alter") || ci_eq(c->lx.s + t.off, t.len, "do") ||
            ci_eq(c->lx.s + t.off, t.len, "import"))
            st->flags |= CL_NAMES;
        skip_to_end(c, st, lex_next(&c->lx));
        return;
    }
}

void classify_sql(const char *sql, size_t len, const struct classify_functions *extra,
                  struct classify_result *out)
{
    classify_sql_literals(sql, len, extra, out, NULL);
}

void classify_sql_literals(const char *sql, size_t len, const struct classify_functions *extra,
                           struct classify_result *out, struct classify_literals *lits)
{
    struct cctx c;
    bool have_name = false, have_setting = false;
    unsigned n = 0;
    enum kw first = KW_NONE;

    pthread_once(&tables_once, tables_init);
    memset(out, 0, sizeof *out);
    memset(&c, 0, sizeof c);
    c.lx.s = sql;
    c.lx.n = sql != NULL ? len : 0;
    c.lx.leading = true;
    c.extra = extra;
    c.lx.lits = lits;
    if (lits != NULL) {
        lits->n = 0;
        lits->usable = false;
    }

    for (;;) {
        struct tok t = lex_next(&c.lx);
        if (t.type == TK_EOF)
            break;
        if (t.type == TK_SEMI)
            continue;
        struct stmt st = {0};
        c.too_deep = false;
        if (n == 0 && t.type == TK_IDENT)
            first = t.kw;
        if (t.type == TK_ERROR)
            skip_to_end(&c, &st, t);
        else
            classify_stmt(&c, t, &st, 0);
        if (c.lx.error || c.too_deep) {
            /* Unterminated or absurdly nested text: the server rejects it, so nothing it seems
             * to say (a SET, a PREPARE) takes effect; send it where a mistake is harmless. */
            memset(&st, 0, sizeof st);
            st.flags = CL_WRITE;
        }
        n++;
        out->flags |= st.flags;
        if (!have_name && (st.flags & (CL_PREPARE | CL_EXECUTE | CL_DEALLOCATE | CL_SAVEPOINT))) {
            have_name = true;
            out->savepoint = st.savepoint;
            out->name = st.name;
            out->name_quoted = st.name_quoted;
            out->name_all = st.name_all;
            out->prepare_body = st.body;
        }
        if (!have_setting && st.has_setting) {
            have_setting = true;
            out->setting = st.setting;
            out->value = st.value;
            out->setting_name = st.setting_name;
        }
    }

    if (c.lx.hint)
        out->flags |= CL_FORCE_PRIMARY;
    if (n == 0)
        out->flags |= CL_EMPTY;
    if (n > 1)
        out->flags |= CL_MULTI;
    if (n != 1) {
        /* Setting spans describe a single SET / RESET / SHOW only. */
        out->setting.off = out->setting.len = 0;
        out->value.off = out->value.len = 0;
        out->setting_name = NULL;
    }
    out->nstatements = n;
    if (lits != NULL) {
        bool plannable = first == KW_SELECT || first == KW_INSERT || first == KW_UPDATE ||
                         first == KW_DELETE || first == KW_WITH || first == KW_VALUES;
        /* (WITH that changes something: its rows come after the change, as RETURNING's) */
        lits->usable = n == 1 && plannable && lits->n > 0 && !c.lx.lits_bad && !c.lx.error &&
                       !c.too_deep && !(c.lx.lits_into && first != KW_INSERT) &&
                       !(first == KW_WITH && (out->flags & CL_WRITE));
        if (!lits->usable)
            lits->n = 0;
    }
}

/* ---- defer_begin ---- */

/* The next word of a BEGIN (letters and '_' only) into *w, skipping white space and, when
 * `comma` is set, one ',' before it. Returns its length, 0 at the end, -1 at anything else. */
static int begin_word(const char *s, size_t len, size_t *at, bool comma, const char **w)
{
    size_t i = *at;
    bool seen_comma = false;
    for (;;) {
        while (i < len &&
               (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\f'))
            i++;
        if (i < len && s[i] == ',' && comma && !seen_comma) {
            seen_comma = true;
            i++;
            continue;
        }
        break;
    }
    size_t st = i;
    while (i < len && (((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') || s[i] == '_'))
        i++;
    *at = i;
    *w = s + st;
    if (i == st)
        return seen_comma || (i < len && s[i] != ';') ? -1 : 0;
    return (int)(i - st);
}

static bool begin_is(const char *w, int n, const char *kw)
{
    return (size_t)n == strlen(kw) && strncasecmp(w, kw, (size_t)n) == 0;
}

/* Whether the next word of the BEGIN is `kw`. */
static bool begin_next_is(const char *s, size_t len, size_t *at, const char *kw)
{
    const char *w;
    int n = begin_word(s, len, at, false, &w);
    return begin_is(w, n, kw);
}

int classify_plain_begin(const char *sql, size_t len)
{
    const char *nul = memchr(sql, 0, len);
    if (nul)
        len = (size_t)(nul - sql);
    size_t at = 0;
    const char *w;
    int n = begin_word(sql, len, &at, false, &w);
    int kind = CL_PLAIN_BEGIN;
    if (begin_is(w, n, "start")) {
        if (!begin_next_is(sql, len, &at, "transaction"))
            return 0;
        kind = CL_PLAIN_START;
    } else if (begin_is(w, n, "begin")) {
        size_t save = at;
        n = begin_word(sql, len, &at, false, &w);
        if (!begin_is(w, n, "work") && !begin_is(w, n, "transaction"))
            at = save; /* not the optional noise word: a mode, or the end */
    } else {
        return 0;
    }
    for (bool first = true;; first = false) {
        n = begin_word(sql, len, &at, !first, &w);
        if (n == 0)
            break;
        if (begin_is(w, n, "deferrable"))
            continue;
        if (begin_is(w, n, "not")) {
            if (!begin_next_is(sql, len, &at, "deferrable"))
                return 0;
            continue;
        }
        if (begin_is(w, n, "read")) {
            n = begin_word(sql, len, &at, false, &w);
            if (!begin_is(w, n, "write") && !begin_is(w, n, "only"))
                return 0;
            continue;
        }
        if (!begin_is(w, n, "isolation") || !begin_next_is(sql, len, &at, "level"))
            return 0;
        n = begin_word(sql, len, &at, false, &w);
        if (begin_is(w, n, "serializable"))
            continue;
        if (begin_is(w, n, "repeatable")) {
            if (!begin_next_is(sql, len, &at, "read"))
                return 0;
            continue;
        }
        if (!begin_is(w, n, "read"))
            return 0;
        n = begin_word(sql, len, &at, false, &w);
        if (!begin_is(w, n, "committed") && !begin_is(w, n, "uncommitted"))
            return 0;
    }
    /* The end: at most one ';', then white space. */
    if (at < len && sql[at] == ';')
        at++;
    while (at < len && (sql[at] == ' ' || sql[at] == '\t' || sql[at] == '\n' || sql[at] == '\r' ||
                        sql[at] == '\f'))
        at++;
    return at == len ? kind : 0;
}

/* Precedence, most specific first: what pgsteer answers itself, then transaction boundaries,
 * session state, prepared statements, pinning, and finally where the statement may run. */
const char *classify_describe(unsigned flags)
{
    if (flags & CL_EMPTY)
        return "empty";
    if (flags & CL_PGSTEER_SET)
        return "pgsteer-set";
    if (flags & CL_PGSTEER_SHOW)
        return "pgsteer-show";
    if (flags & CL_BEGIN_READ_ONLY)
        return "begin-read-only";
    if (flags & CL_BEGIN)
        return "begin";
    if (flags & CL_END_TX)
        return "end-tx";
    if (flags & CL_SET_SESSION)
        return "set";
    if (flags & CL_SET_LOCAL)
        return "set-local";
    if (flags & CL_PREPARE)
        return "prepare";
    if (flags & CL_EXECUTE)
        return "execute";
    if (flags & CL_DEALLOCATE)
        return "deallocate";
    if (flags & CL_SAVEPOINT)
        return "savepoint";
    if (flags & CL_PIN)
        return "pin";
    if (flags & CL_WRITE_FUNCTION)
        return "write-function";
    if (flags & CL_WRITE)
        return "write";
    return "read";
}
