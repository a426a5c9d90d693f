/* SPDX-License-Identifier: MIT */
/* Session state that follows a client to every node: prepared statements and the session
 * changes replayed on each backend. See include/session.h and docs/internals.md. */
#include "session.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

/* set_config(name, value, false) changes the session like SET, but its name and value may be
 * parameters: it is replayed as it was sent, keyed by its text; at most SET_CONFIG_MAX distinct
 * texts are kept, the oldest dropped. */
#define SET_CONFIG_MAX 32

static void session_change_remove(struct client *c, const char *key);

/* ---- statements ---- */

void session_stmt_free(struct stmt *s)
{
    free(s->name);
    free(s->query);
    free(s->types);
    free(s);
}

void session_changes_free(struct session_change *ch)
{
    while (ch) {
        struct session_change *next = ch->next;
        session_changes_free(ch->replaced); /* the changes it replaced, oldest last */
        free(ch->key);
        free(ch->sql);
        free(ch->raw);
        free(ch);
        ch = next;
    }
}

struct stmt *session_stmt_find(struct client *c, const char *name, size_t len)
{
    for (struct stmt *s = c->stmts; s; s = s->next) {
        if (strlen(s->name) == len && memcmp(s->name, name, len) == 0)
            return s;
    }
    return NULL;
}

void session_stmt_remove(struct client *c, const char *name, size_t len)
{
    for (struct stmt **pp = &c->stmts; *pp; pp = &(*pp)->next) {
        struct stmt *s = *pp;
        if (strlen(s->name) == len && memcmp(s->name, name, len) == 0) {
            *pp = s->next;
            session_stmt_free(s);
            return;
        }
    }
}

bool session_in_failed_tx(const struct client *c, const struct backend *b)
{
    return b->tx_status == 'E' && c->tx_node == b->node;
}

void session_stmt_forget(struct client *c, uint32_t id)
{
    for (struct stmt **pp = &c->stmts; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct stmt *s = *pp;
            *pp = s->next;
            session_stmt_free(s);
            return;
        }
    }
}

void session_stmt_unplace(struct client *c, uint32_t id, int node)
{
    for (struct stmt *s = c->stmts; s; s = s->next) {
        if (s->id == id) {
            s->nodes &= ~(1u << node);
            return;
        }
    }
}

void session_stmt_clear(struct client *c)
{
    while (c->stmts) {
        struct stmt *n = c->stmts->next;
        session_stmt_free(c->stmts);
        c->stmts = n;
    }
}

/* Record a Parse. Returns the statement or NULL when out of memory. */
struct stmt *session_stmt_put(struct client *c, const char *name, size_t nlen, const char *query,
                              size_t qlen, struct proto_reader *types, uint16_t ntypes,
                              unsigned flags)
{
    /* A statement of the same name is replaced in place, its memory reused: drivers parse the
     * unnamed statement for every query, and that must not cost an allocation each time. */
    struct stmt *s = session_stmt_find(c, name, nlen);
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL || (s->name = strndup(name, nlen)) == NULL) {
            free(s);
            return NULL;
        }
        s->next = c->stmts;
        c->stmts = s;
    }
    if (qlen + 1 > s->query_cap) {
        char *q = realloc(s->query, qlen + 1);
        if (q == NULL) {
            session_stmt_remove(c, name, nlen);
            return NULL;
        }
        s->query = q;
        s->query_cap = qlen + 1;
    }
    memcpy(s->query, query, qlen);
    s->query[qlen] = 0;
    s->query_len = qlen;
    if (ntypes > s->types_cap) {
        uint32_t *t = realloc(s->types, ntypes * sizeof(uint32_t));
        if (t == NULL) {
            session_stmt_remove(c, name, nlen);
            return NULL;
        }
        s->types = t;
        s->types_cap = ntypes;
    }
    for (uint16_t i = 0; i < ntypes; i++)
        s->types[i] = (uint32_t)proto_read_i32(types);
    s->ntypes = ntypes;
    s->flags = flags;
    s->nodes = 0;
    s->hash = 0;
    s->id = ++c->stmt_seq;
    if (nlen == 0)
        c->unnamed_dropped = false;
    return s;
}

struct session_change *session_change_find(struct client *c, const char *key)
{
    for (struct session_change *ch = c->changes; ch; ch = ch->next) {
        if (strcmp(ch->key, key) == 0)
            return ch;
    }
    return NULL;
}

static void session_change_remove(struct client *c, const char *key)
{
    for (struct session_change **pp = &c->changes; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            struct session_change *ch = *pp;
            *pp = ch->next;
            ch->next = NULL;
            session_changes_free(ch);
            return;
        }
    }
}

/* Append a session change (replacing an older one with the same key). */
int session_change_add(struct client *c, const char *key, const char *sql, size_t sqllen,
                       unsigned flags)
{
    struct session_change *ch = calloc(1, sizeof(*ch));
    if (ch == NULL)
        return -1;
    /* The older change of this key leaves the list but is kept, to be put back should the
     * statement that made this one fail (session_change_undo), with the ones it replaced in
     * turn while their statements' answers are still to come (session_change_confirm). */
    for (struct session_change **pp = &c->changes; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            struct session_change *old = *pp;
            *pp = old->next;
            old->next = NULL;
            ch->replaced = old;
            break;
        }
    }
    ch->key = strdup(key);
    ch->sql = strndup(sql, sqllen);
    if (ch->key == NULL || ch->sql == NULL) {
        session_changes_free(ch);
        return -1;
    }
    ch->gen = ++c->change_gen;
    ch->flags = flags;
    struct session_change **pp = &c->changes;
    while (*pp)
        pp = &(*pp)->next;
    *pp = ch;
    return 0;
}

static struct session_change *change_copy(const struct session_change *ch);

/* Put change n back into the list in its place: the list is in the order of gen. */
static void change_insert(struct client *c, struct session_change *n)
{
    struct session_change **at = &c->changes;
    while (*at && (*at)->gen < n->gen)
        at = &(*at)->next;
    n->next = *at;
    *at = n;
}

/* Change `gen` failed: in a copy of the settings (`*list`: the transaction's or a savepoint's)
 * taken while it was recorded, it gives way to a copy of `back`, the change it had replaced
 * (none: it just goes), so that putting the copy back does not bring the failed change back.
 * Out of memory, it just goes. */
static void copy_undo(struct session_change **list, uint64_t gen, const struct session_change *back)
{
    for (struct session_change **pp = list; *pp; pp = &(*pp)->next) {
        if ((*pp)->gen != gen)
            continue;
        struct session_change *dead = *pp;
        struct session_change *n = back ? change_copy(back) : NULL;
        if (n != NULL) {
            n->next = dead->next;
            *pp = n;
        } else {
            *pp = dead->next;
        }
        dead->next = NULL;
        session_changes_free(dead);
        return;
    }
}

static void copies_undo(struct client *c, uint64_t gen, const struct session_change *back)
{
    copy_undo(&c->tx_saved, gen, back);
    for (struct savepoint *sp = c->savepoints; sp; sp = sp->next)
        copy_undo(&sp->saved, gen, back);
}

void session_change_confirm(struct client *c, uint64_t gen)
{
    for (struct session_change *ch = c->changes; ch; ch = ch->next) {
        for (struct session_change *n = ch; n; n = n->replaced) {
            if (n->gen == gen) {
                session_changes_free(n->replaced);
                n->replaced = NULL;
                return;
            }
        }
    }
}

void session_change_undo(struct client *c, uint64_t gen)
{
    for (struct session_change **pp = &c->changes; *pp; pp = &(*pp)->next) {
        struct session_change *ch = *pp;
        if (ch->gen != gen) {
            /* Replaced already by a newer change of its key, sent before this one's answer
             * came (a pipelining client): it leaves the chain, the newer one stays. */
            for (struct session_change **rp = &ch->replaced; *rp; rp = &(*rp)->replaced) {
                if ((*rp)->gen == gen) {
                    struct session_change *dead = *rp;
                    copies_undo(c, gen, dead->replaced);
                    *rp = dead->replaced;
                    dead->replaced = NULL;
                    session_changes_free(dead);
                    return;
                }
            }
            continue;
        }
        *pp = ch->next;
        ch->next = NULL;
        struct session_change *old = ch->replaced;
        ch->replaced = NULL;
        session_changes_free(ch);
        copies_undo(c, gen, old);
        if (old != NULL)
            change_insert(c, old);
        return;
    }
}

/* Undone by a rollback: everything but prepared statements (PREPARE and DEALLOCATE are not
 * transactional) and DISCARD ALL (which cannot run in a transaction). */
static bool change_transactional(const struct session_change *ch)
{
    return strncmp(ch->key, "prepare:", 8) != 0 && strcmp(ch->key, "deallocate-all") != 0 &&
           strcmp(ch->key, "discard") != 0;
}

static struct session_change *change_copy(const struct session_change *ch)
{
    struct session_change *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    n->gen = ch->gen;
    n->flags = ch->flags;
    n->rawlen = ch->rawlen;
    n->key = strdup(ch->key);
    n->sql = ch->sql ? strdup(ch->sql) : NULL;
    n->raw = ch->raw ? malloc(ch->rawlen) : NULL;
    if (n->key == NULL || (ch->sql && n->sql == NULL) || (ch->raw && n->raw == NULL)) {
        session_changes_free(n);
        return NULL;
    }
    if (ch->raw)
        memcpy(n->raw, ch->raw, ch->rawlen);
    return n;
}

/* A copy of the transactional changes of list `from` into *out. Returns 0, or -1 out of memory
 * (nothing copied). */
static int copy_transactional(const struct session_change *from, struct session_change **out)
{
    struct session_change *head = NULL, **tail = &head;
    for (const struct session_change *ch = from; ch; ch = ch->next) {
        if (!change_transactional(ch))
            continue;
        struct session_change *n = change_copy(ch);
        if (n == NULL) {
            session_changes_free(head);
            return -1;
        }
        *tail = n;
        tail = &n->next;
    }
    *out = head;
    return 0;
}

/* The node is back to the settings of `copy` (rolled back to them): so is the record, and the
 * copy's changes move into it. They keep their generations, which every backend that had them
 * has replayed. */
static void restore_transactional(struct client *c, struct session_change *copy, uint64_t upto)
{
    for (struct session_change **pp = &c->changes; *pp;) {
        struct session_change *ch = *pp;
        if (change_transactional(ch) && ch->gen <= upto) {
            *pp = ch->next;
            ch->next = NULL;
            session_changes_free(ch);
        } else {
            pp = &ch->next;
        }
    }
    while (copy) {
        struct session_change *n = copy;
        copy = n->next;
        if (upto != UINT64_MAX && session_change_find(c, n->key) != NULL) {
            n->next = NULL; /* a change of the key made after the transaction ended wins */
            session_changes_free(n);
            continue;
        }
        change_insert(c, n);
    }
}

/* Inside a transaction, before its first change to the settings: keep a copy of them. Out of
 * memory, nothing is kept and a rollback leaves the changes recorded. */
static void session_tx_save(struct client *c)
{
    if (copy_transactional(c->changes, &c->tx_saved) == 0)
        c->tx_saved_valid = true;
}

void session_batch_save(struct client *c, const struct backend *b)
{
    if (c->tx_saved_valid || c->tx_node >= 0 || b->tx_status != 'I')
        return; /* saved already, or in a transaction block (session_track saves for it) */
    session_tx_save(c);
    c->tx_saved_implicit = c->tx_saved_valid;
}

void session_tx_end(struct client *c, bool rolled_back, uint64_t gen_at)
{
    if (rolled_back) {
        restore_transactional(c, c->tx_saved, gen_at);
        c->tx_saved = NULL;
    }
    session_changes_free(c->tx_saved);
    c->tx_saved = NULL;
    c->tx_saved_valid = false;
    c->tx_saved_implicit = false;
}

/* Savepoints that went are kept for the next ones, up to SAVEPOINT_SPARE per client: drivers
 * that set one before every statement (pgJDBC's autosave) then allocate nothing for them. */
#define SAVEPOINT_SPARE 8

/* Drop the savepoints set after `keep` (all of them when NULL). */
static void savepoints_pop_to(struct client *c, const struct savepoint *keep)
{
    while (c->savepoints && c->savepoints != keep) {
        struct savepoint *sp = c->savepoints;
        c->savepoints = sp->next;
        session_changes_free(sp->saved);
        sp->saved = NULL;
        if (c->nspare_savepoints < SAVEPOINT_SPARE) {
            sp->next = c->spare_savepoints;
            c->spare_savepoints = sp;
            c->nspare_savepoints++;
        } else {
            free(sp);
        }
    }
}

void session_savepoints_clear(struct client *c)
{
    savepoints_pop_to(c, NULL);
}

void session_savepoints_free(struct client *c)
{
    session_savepoints_clear(c);
    while (c->spare_savepoints) {
        struct savepoint *sp = c->spare_savepoints;
        c->spare_savepoints = sp->next;
        free(sp);
    }
    c->nspare_savepoints = 0;
}

/* SAVEPOINT, ROLLBACK TO or RELEASE (cr) about to run in the transaction open on b. As on the
 * server, a name refers to the newest savepoint of that name; one the record does not know
 * changes nothing here (the server refuses it, or it was set where pgsteer does not look: in a
 * Query of several statements). A ROLLBACK TO one it knows ends a failure of the transaction,
 * which b's status says at once (its ReadyForQuery confirms it), so that statements pipelined
 * behind it are recorded. */
static void session_savepoint(struct client *c, struct backend *b, const char *sql,
                              const struct classify_result *cr)
{
    char name[64];
    session_copy_name(name, sizeof(name), sql + cr->name.off, cr->name.len, cr->name_quoted);
    if (cr->savepoint == CL_SP_DEFINE) {
        struct savepoint *sp = c->spare_savepoints;
        if (sp != NULL) {
            c->spare_savepoints = sp->next;
            c->nspare_savepoints--;
        } else if ((sp = malloc(sizeof(*sp))) == NULL) {
            return; /* out of memory: a ROLLBACK TO it will leave the settings recorded */
        }
        memcpy(sp->name, name, sizeof(name));
        sp->saved = NULL;
        sp->valid = copy_transactional(c->changes, &sp->saved) == 0;
        sp->next = c->savepoints;
        c->savepoints = sp;
        return;
    }
    struct savepoint *sp = c->savepoints;
    while (sp && strcmp(sp->name, name) != 0)
        sp = sp->next;
    if (sp == NULL)
        return;
    if (cr->savepoint == CL_SP_RELEASE) {
        savepoints_pop_to(c, sp->next); /* it and the ones set after it */
        return;
    }
    /* ROLLBACK TO: the savepoint stays, the ones after it go, and the settings are those it
     * saved. Unchanged since the transaction began (no copy for it yet), they are already. */
    savepoints_pop_to(c, sp);
    if (b->tx_status == 'E')
        b->tx_status = 'T'; /* no longer failed: what follows before its answer runs */
    struct session_change *copy;
    if (sp->valid && c->tx_saved_valid && copy_transactional(sp->saved, &copy) == 0)
        restore_transactional(c, copy, UINT64_MAX);
}

static void session_limit_set_config(struct client *c)
{
    size_t n = 0;
    for (struct session_change *ch = c->changes; ch; ch = ch->next)
        n += strncmp(ch->key, "setconfig:", 10) == 0;
    for (struct session_change **pp = &c->changes; *pp && n > SET_CONFIG_MAX;) {
        if (strncmp((*pp)->key, "setconfig:", 10) == 0) {
            struct session_change *ch = *pp;
            *pp = ch->next;
            ch->next = NULL;
            session_changes_free(ch);
            n--;
        } else {
            pp = &(*pp)->next;
        }
    }
}

/* Record a set_config() call sent with Parse/Bind: replayed as unnamed Parse, Bind (the
 * client's parameters), Execute, Sync. `bind` is the client's Bind message body. */
int session_add_set_config_bind(struct client *c, const struct stmt *s, const char *bind,
                                size_t bindlen)
{
    struct proto_reader r;
    proto_reader_init(&r, bind, bindlen);
    proto_read_str(&r, NULL);
    proto_read_str(&r, NULL);
    if (r.err)
        return 0;
    struct buf raw;
    buf_init(&raw);
    int rc = proto_write_Parse(&raw, "", s->query, s->query_len, s->types, s->ntypes);
    size_t st = proto_begin(&raw, FE_BIND);
    rc |= proto_put_bytes(&raw, "\0\0", 2);
    rc |= proto_put_bytes(&raw, bind + r.pos, bindlen - r.pos);
    rc |= proto_end(&raw, st);
    st = proto_begin(&raw, FE_EXECUTE);
    rc |= proto_put_u8(&raw, 0);
    rc |= proto_put_i32(&raw, 0);
    rc |= proto_end(&raw, st);
    rc |= proto_write_Sync(&raw);
    char *key = malloc(s->query_len + 11);
    if (rc == 0 && key) {
        memcpy(key, "setconfig:", 10);
        memcpy(key + 10, s->query, s->query_len + 1);
        rc = session_change_add(c, key, "", 0, 0);
    } else {
        rc = -1;
    }
    free(key);
    if (rc == 0) {
        struct session_change *last = c->changes;
        while (last->next)
            last = last->next;
        free(last->sql);
        last->sql = NULL;
        last->raw = raw.data; /* ownership moves to the change */
        last->rawlen = raw.len;
        session_limit_set_config(c);
    } else {
        buf_destroy(&raw);
    }
    return rc;
}

void session_copy_name(char *dst, size_t cap, const char *src, size_t len, bool quoted)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = quoted ? src[i] : (char)tolower((unsigned char)src[i]);
    dst[n] = 0;
}

/* Session bookkeeping for a Query about to run on `node`. */
void session_track(struct client *c, const char *sql, size_t len, const struct classify_result *cr,
                   struct backend *b)
{
    char key[160], name[128];
    unsigned f = cr->flags;
    if ((f & CL_SAVEPOINT) && !(f & CL_MULTI)) {
        /* Outside a transaction block they fail; in a failed one all but ROLLBACK TO do. */
        if ((c->tx_node >= 0 || b->tx_status == 'T' || b->tx_status == 'E') &&
            (cr->savepoint == CL_SP_ROLLBACK_TO || !session_in_failed_tx(c, b)))
            session_savepoint(c, b, sql, cr);
        return;
    }
    if (session_in_failed_tx(c, b) && !(f & CL_END_TX))
        return; /* in a failed transaction every statement but its end fails, changing nothing */
    if ((f & (CL_SET_SESSION | CL_SET_CONFIG | CL_SESSION_RESET)) && !c->tx_saved_valid &&
        (c->tx_node >= 0 || b->tx_status == 'T' || (f & (CL_BEGIN | CL_BEGIN_READ_ONLY))))
        session_tx_save(c);
    if (f & CL_PIN) {
        c->pinned = true;
        c->pin_reason = "temp table, LISTEN, advisory lock or WITH HOLD cursor";
    }
    if (f & CL_MULTI) {
        /* Several statements: replay the session changes among them as a whole. */
        if (f & (CL_SET_SESSION | CL_PREPARE | CL_SET_CONFIG)) {
            snprintf(key, sizeof(key), "sql:%llu", (unsigned long long)c->change_gen + 1);
            session_change_add(c, key, sql, len, 0);
            b->set_gen = c->change_gen;
        }
        return;
    }
    if (f & CL_SET_CONFIG) {
        size_t klen = len < 200 ? len : 200;
        snprintf(key, sizeof(key), "setconfig:%.*s", (int)klen, sql);
        session_change_add(c, key, sql, len, 0);
        b->set_gen = c->change_gen;
        session_limit_set_config(c);
    }
    if (f & CL_SESSION_RESET) {
        /* DISCARD ALL drops everything; RESET ALL only the settings. */
        size_t i = 0;
        while (i < len && isspace((unsigned char)sql[i]))
            i++;
        bool discard = len - i >= 7 && strncasecmp(sql + i, "discard", 7) == 0;
        if (discard && c->tx_node >= 0)
            return; /* DISCARD ALL fails inside a transaction block, and changes nothing (the
                       block as predicted: its end may be on its way, pipelined before it) */
        for (struct session_change **pp = &c->changes; *pp;) {
            /* RESET ALL keeps what is not a setting: prepared statements, and a DISCARD ALL or
             * DEALLOCATE ALL that a backend may not have replayed yet. */
            const char *k = (*pp)->key;
            if (discard || (strncmp(k, "prepare:", 8) != 0 && strcmp(k, "discard") != 0 &&
                            strcmp(k, "deallocate-all") != 0)) {
                struct session_change *ch = *pp;
                *pp = ch->next;
                ch->next = NULL;
                session_changes_free(ch);
            } else {
                pp = &(*pp)->next;
            }
        }
        session_change_add(c, discard ? "discard" : "reset", sql, len, 0);
        b->set_gen = c->change_gen;
        if (discard)
            backend_stmts_clear(b);
        /* pgsteer's own settings are session settings too: a pooled connection handed to the
         * next user must not keep a consistency mode or a causal token. */
        c->consistency = c->px->cfg->consistency;
        c->min_lsn = LSN_INVALID;
        c->default_read_only = false;
        if (discard) {
            c->pinned = false;
            session_stmt_clear(c); /* last: `sql` may be a prepared statement's text */
        }
    } else if (f & CL_SET_SESSION) {
        const char *nm = cr->setting_name;
        if (nm && strcmp(nm, "session characteristics") == 0) {
            if (f & (CL_TX_READ_ONLY | CL_TX_READ_WRITE))
                c->default_read_only = (f & CL_TX_READ_ONLY) != 0;
        } else if ((nm == NULL && cr->setting.len == 29 &&
                    strncasecmp(sql + cr->setting.off, "default_transaction_read_only", 29) == 0)) {
            c->default_read_only = (f & CL_TX_READ_ONLY) != 0;
        }
        if (cr->setting_name)
            snprintf(name, sizeof(name), "%s", cr->setting_name);
        else
            session_copy_name(name, sizeof(name), sql + cr->setting.off, cr->setting.len, false);
        snprintf(key, sizeof(key), "set:%s", cr->setting.len ? name : "?");
        if (cr->setting.len == 0)
            snprintf(key, sizeof(key), "sql:%llu", (unsigned long long)c->change_gen + 1);
        session_change_add(c, key, sql, len, 0);
        b->set_gen = c->change_gen;
    } else if (f & CL_PREPARE) {
        struct classify_result body;
        classify_sql(sql + cr->prepare_body.off, cr->prepare_body.len, &c->px->wfuncs, &body);
        session_copy_name(name, sizeof(name), sql + cr->name.off, cr->name.len, cr->name_quoted);
        snprintf(key, sizeof(key), "prepare:%s", name);
        if (session_change_find(c, key) != NULL || session_stmt_find(c, name, strlen(name)))
            return; /* the name is taken: PostgreSQL refuses it (42P05) on b, which has it */
        session_change_add(c, key, sql, len, body.flags);
        b->set_gen = c->change_gen;
    } else if (f & CL_DEALLOCATE) {
        if (cr->name_all) {
            for (struct session_change **pp = &c->changes; *pp;) {
                if (strncmp((*pp)->key, "prepare:", 8) == 0) {
                    struct session_change *ch = *pp;
                    *pp = ch->next;
                    ch->next = NULL;
                    session_changes_free(ch);
                } else {
                    pp = &(*pp)->next;
                }
            }
            session_stmt_clear(c);
            session_change_add(c, "deallocate-all", "DEALLOCATE ALL", 14, 0);
            b->set_gen = c->change_gen;
            backend_stmts_clear(b);
            return;
        }
        session_copy_name(name, sizeof(name), sql + cr->name.off, cr->name.len, cr->name_quoted);
        if (session_forget_sql_prepare(c, b, name))
            return;
        /* A statement made with Parse (session_before_named_sql made it exist on b). */
        struct stmt *s = session_stmt_find(c, name, strlen(name));
        if (s != NULL) {
            session_close_elsewhere(c, b, s);
            session_stmt_remove(c, name, strlen(name));
        }
    }
}

bool session_forget_sql_prepare(struct client *c, struct backend *b, const char *name)
{
    char key[160];
    snprintf(key, sizeof(key), "prepare:%s", name);
    struct session_change *ch = session_change_find(c, key);
    if (ch == NULL)
        return false;
    /* Backends that replayed the PREPARE drop it too; later ones never get it. */
    char dsql[160];
    int dn = snprintf(dsql, sizeof(dsql), "DEALLOCATE \"%s\"", name);
    for (int i = 0; i < CONFIG_MAX_NODES; i++) {
        struct backend *o = c->backends[i];
        if (o == NULL || o == b || o->set_gen < ch->gen)
            continue;
        struct buf q;
        buf_init(&q);
        size_t st = proto_begin(&q, FE_QUERY);
        proto_put_bytes(&q, dsql, (size_t)dn);
        proto_put_u8(&q, 0);
        if (proto_end(&q, st) == 0 && backend_queue(o, buf_head(&q), buf_avail(&q)) == 0)
            backend_expect(o, EXP_QUERY, true, false);
        buf_destroy(&q);
        backend_flush(o);
    }
    session_change_remove(c, key);
    return true;
}

/* Make statement `name` exist on backend b before a Bind or Describe uses it there. */
int session_ensure_prepared(struct client *c, struct backend *b, const char *name, size_t nlen)
{
    struct stmt *s = session_stmt_find(c, name, nlen);
    uint32_t bit = 1u << b->node;
    if (s == NULL || (s->nodes & bit))
        return 0;
    struct buf q;
    buf_init(&q);
    int rc = proto_write_Parse(&q, s->name, s->query, s->query_len, s->types, s->ntypes);
    if (rc == 0)
        rc = backend_queue(b, buf_head(&q), buf_avail(&q));
    if (rc == 0)
        rc = backend_expect(b, EXP_PARSE, true, false);
    buf_destroy(&q);
    if (rc == 0)
        backend_expect_last(b)->stmt = s->id; /* should it fail, b is unmarked */
    s->nodes |= bit;
    return rc;
}

int session_before_named_sql(struct client *c, struct backend *b, const char *sql,
                             const struct classify_result *cr, bool sync)
{
    if (!(cr->flags & (CL_PREPARE | CL_EXECUTE | CL_DEALLOCATE)) || cr->name_all ||
        cr->name.len == 0 || c->px->cfg->nodes[b->node].pooled || session_in_failed_tx(c, b))
        return 0; /* in a failed transaction the statement fails anyway (25P02) */
    char name[128];
    session_copy_name(name, sizeof(name), sql + cr->name.off, cr->name.len, cr->name_quoted);
    size_t nlen = strlen(name);
    struct stmt *s = session_stmt_find(c, name, nlen);
    if (s == NULL || (s->nodes & (1u << b->node)))
        return 0;
    int rc;
    if (cr->flags & CL_DEALLOCATE) {
        /* DEALLOCATE needs only the name, which it drops: a text that parses under any
         * settings, so that it succeeds as on one server even where the statement's own text
         * would not parse now (a search_path that hides its tables; a server re-parses a
         * statement only when it is run). */
        struct buf q;
        buf_init(&q);
        rc = proto_write_Parse(&q, s->name, "SELECT NULL", 11, NULL, 0);
        if (rc == 0)
            rc = backend_queue(b, buf_head(&q), buf_avail(&q));
        if (rc == 0)
            rc = backend_expect(b, EXP_PARSE, true, false);
        buf_destroy(&q);
    } else {
        rc = session_ensure_prepared(c, b, name, nlen);
    }
    if (rc == 0 && sync) {
        /* The client's Query runs after the Sync whatever became of the Parse (in a failed
         * transaction both fail): one error is the Query's to give. */
        backend_expect_last(b)->quiet = true;
        struct buf q;
        buf_init(&q);
        rc = proto_write_Sync(&q);
        if (rc == 0)
            rc = backend_queue(b, buf_head(&q), buf_avail(&q));
        if (rc == 0)
            rc = backend_expect(b, EXP_SYNC, true, false);
        buf_destroy(&q);
    }
    return rc;
}

/* Close a named statement on every other backend that has it, answers swallowed. */
void session_close_elsewhere(struct client *c, struct backend *b, const struct stmt *s)
{
    for (int i = 0; i < CONFIG_MAX_NODES; i++) {
        struct backend *o = c->backends[i];
        if (o == NULL || o == b || !(s->nodes & (1u << i)))
            continue;
        struct buf q;
        buf_init(&q);
        size_t st = proto_begin(&q, FE_CLOSE);
        proto_put_u8(&q, 'S');
        proto_put_str(&q, s->name);
        int rc = proto_end(&q, st);
        rc |= proto_write_Sync(&q);
        if (rc == 0 && backend_queue(o, buf_head(&q), buf_avail(&q)) == 0) {
            backend_expect(o, EXP_CLOSE, true, false);
            backend_expect(o, EXP_SYNC, true, false);
        }
        buf_destroy(&q);
        backend_flush(o);
    }
}

/* Behind a transaction-pooling pooler a named statement does not survive the transaction that
 * made it: the next one may run on another server. So there the client's statements all use
 * the unnamed slot: its Parse is sent unnamed, and before each Bind or Describe of a statement
 * the slot does not hold in this batch (one transaction), its Parse is sent again, answer
 * swallowed. `c->pooled_unnamed` says which statement the slot holds in this batch. */
int session_pooled_fill_slot(struct client *c, struct backend *b, const char *name, size_t nlen)
{
    struct stmt *s = session_stmt_find(c, name, nlen);
    if (s == NULL || c->pooled_unnamed == s->id)
        return 0;
    struct buf *q = &c->scratch;
    buf_reset(q);
    int rc = proto_write_Parse(q, "", s->query, s->query_len, s->types, s->ntypes);
    if (rc == 0)
        rc = backend_queue(b, buf_head(q), buf_avail(q));
    if (rc == 0)
        rc = backend_expect(b, EXP_PARSE, true, false);
    c->pooled_unnamed = s->id;
    return rc;
}

/* The message with its statement name replaced by "" (Parse, Bind, Describe S, Close S), in
 * c->scratch. `name_off` is the offset of the name in the body, nlen its length. */
int session_pooled_rewrite(struct client *c, const struct proto_msg *m, size_t name_off,
                           size_t nlen)
{
    struct buf *q = &c->scratch;
    buf_reset(q);
    size_t st = proto_begin(q, m->type);
    int rc = proto_put_bytes(q, m->body, name_off);
    rc |= proto_put_bytes(q, m->body + name_off + nlen, m->len - name_off - nlen);
    rc |= proto_end(q, st);
    return rc;
}

/* Bring backend b's session up to date with the client's: replay, as one Query whose answers
 * the client never sees, every change it has not had yet. */
int session_sync_backend(struct client *c, struct backend *b)
{
    if (b->set_gen >= c->change_gen)
        return 0;
    /* One Query per change: several statements in one Query run as one transaction block,
     * where DISCARD ALL is refused; and one failing change must not undo the others. */
    int rc = 0;
    for (struct session_change *ch = c->changes; ch && rc == 0; ch = ch->next) {
        if (ch->gen <= b->set_gen)
            continue;
        if (ch->raw) {
            static const uint8_t kinds[] = {EXP_PARSE, EXP_BIND, EXP_EXECUTE, EXP_SYNC};
            rc = backend_queue(b, ch->raw, ch->rawlen);
            for (size_t i = 0; i < sizeof(kinds) && rc == 0; i++)
                rc = backend_expect(b, kinds[i], true, false);
            /* The replay used the unnamed statement: the client's is gone from there. */
            struct stmt *un = session_stmt_find(c, "", 0);
            if (un)
                un->nodes &= ~(1u << b->node);
            continue;
        }
        if (strcmp(ch->key, "discard") == 0 || strcmp(ch->key, "deallocate-all") == 0)
            backend_stmts_clear(b); /* the replay drops them */
        struct buf q;
        buf_init(&q);
        size_t st = proto_begin(&q, FE_QUERY);
        rc |= proto_put_bytes(&q, ch->sql, strlen(ch->sql));
        rc |= proto_put_u8(&q, 0);
        rc |= proto_end(&q, st);
        if (rc == 0)
            rc = backend_queue(b, buf_head(&q), buf_avail(&q));
        if (rc == 0)
            rc = backend_expect(b, EXP_QUERY, true, false);
        buf_destroy(&q);
    }
    b->set_gen = c->change_gen;
    return rc;
}
