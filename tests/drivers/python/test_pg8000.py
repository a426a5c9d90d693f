# SPDX-License-Identifier: MIT
"""pg8000 (Debian's 1.10) through pgsteer. pg8000 sends a Flush after every message, prepares
every statement under a name (pg8000_statement_N) with Parse/Describe/Sync, binds named
portals (pg8000_portal_N) and fetches 100 rows per Execute, so a large result inside a
transaction is several Execute+Sync rounds on the same portal. It logs in with md5 only, so
run_all.py points it at a pgsteer with auth_method md5."""

import io
import time

import pg8000

from harness import (ALL_BYTES, PORT, HOST, USER, PASSWORD, DB, PRIMARY, REPLICAS, SCHEMA,
                     UNICODE_TEXT, check, eq, expect_sqlstate, on_primary, on_replica,
                     run_cases, SSLROOTCERT)

S = SCHEMA


class connect:
    def __init__(self, autocommit=True):
        self.autocommit = autocommit

    def __enter__(self):
        self.c = pg8000.connect(user=USER, host=HOST, port=PORT, database=DB,
                                password=PASSWORD, timeout=20,
                                ssl=bool(SSLROOTCERT))  # (1.10 does not verify it)
        self.c.autocommit = self.autocommit
        return self.c

    def __exit__(self, *exc):
        try:
            self.c.close()
        except Exception:
            pass


def one(c, sql, args=None):
    cur = c.cursor()
    cur.execute(sql, args)
    return tuple(cur.fetchone())


def t_routing():
    with connect() as c:
        for i in range(4):
            on_replica(one(c, "select inet_server_port()")[0], "read %d" % i)
            on_replica(one(c, "select inet_server_port() + %s - %s", (i, i))[0],
                       "parameterised read %d" % i)
        on_primary(one(c, "insert into %s.items (k, v) values (%%s, %%s) returning "
                   "inet_server_port()" % S, (1, "routing"))[0], "insert")


def t_params():
    with connect() as c:
        cur = c.cursor()
        cur.execute("insert into %s.items (k, v, n) values (%%s, %%s, %%s)" % S,
                    (101, "it's \"quoted\"", None))
        cur.execute("insert into %s.items (k, v, n) values (%%s, %%s, %%s)" % S,
                    (102, "second", 7))
        cur.execute("select k, v, n from %s.items where k in (%%s, %%s) order by k" % S,
                    (101, 102))
        eq([tuple(r) for r in cur.fetchall()],
           [(101, "it's \"quoted\"", None), (102, "second", 7)], "rows")


def t_read_own_write():
    with connect() as c:
        for i in range(5):
            c.cursor().execute("insert into %s.items (k, v) values (%%s, 'ryw')" % S,
                               (200 + i,))
            eq(one(c, "select count(*) from %s.items where k = %%s" % S, (200 + i,))[0], 1,
               "row %d visible right after its insert" % i)


def t_prepare_threshold():
    with connect() as c:  # every execution reuses pg8000_statement_N
        ports = set()
        for i in range(12):
            v, port = one(c, "select %s + 1, inet_server_port()", (i,))
            eq(v, i + 1, "execution %d" % i)
            ports.add(port)
        # (Each execution is two units, Parse/Describe/Sync then Bind/Execute/Sync, so with
        # round-robin between two replicas every Execute may land on the same one.)
        check(ports <= set(REPLICAS), "cached statement ran on %s" % ports)
        for i in range(4):
            on_primary(one(c, "insert into %s.items (k, v) values (%%s, 'prep') returning "
                              "inet_server_port()" % S, (800 + i,))[0], "insert %d" % i)
        for i in range(4):
            eq(one(c, "select %s + 1, inet_server_port()", (i,))[0], i + 1, "after writes")


def t_tx_commit():
    with connect(autocommit=False) as c:
        on_primary(one(c, "insert into %s.items (k, v) values (300, 'commit') returning "
                          "inet_server_port()" % S)[0], "insert in tx")
        eq(one(c, "select count(*), inet_server_port() from %s.items where k = %%s" % S,
               (300,)), (1, PRIMARY), "read in tx")
        c.commit()
    with connect() as c:
        eq(one(c, "select count(*) from %s.items where k = 300" % S)[0], 1, "committed")


def t_tx_rollback():
    with connect(autocommit=False) as c:
        c.cursor().execute("insert into %s.items (k, v) values (%%s, 'rb')" % S, (301,))
        eq(one(c, "select count(*) from %s.items where k = 301" % S)[0], 1, "in tx")
        c.rollback()
        eq(one(c, "select count(*) from %s.items where k = 301" % S)[0], 0, "after rollback")
        c.rollback()


def t_tx_error():
    with connect(autocommit=False) as c:
        c.cursor().execute("insert into %s.items (k, v) values (%%s, 'error')" % S, (302,))
        try:
            one(c, "select 1/%s", (0,))
            check(False, "1/0 did not fail")
        except pg8000.Error as e:
            expect_sqlstate(e, "22012", "1/0")
        try:
            one(c, "select %s", (1,))
            check(False, "statement in failed transaction did not fail")
        except pg8000.Error as e:
            expect_sqlstate(e, "25P02", "statement after error")
        c.rollback()
        eq(one(c, "select count(*) from %s.items where k = 302" % S)[0], 0, "rolled back")
        c.commit()
        eq(one(c, "select %s + 1", (41,))[0], 42, "session after rollback")
        c.commit()


def t_session_settings():
    with connect() as c:
        c.cursor().execute("set search_path to %s" % S)
        c.cursor().execute("set application_name = 'drv-pg8000-app'")
        seen = [one(c, "select inet_server_port(), v, current_setting('application_name') "
                       "from only_here where %s", (True,)) for i in range(8)]
        check(all(r[1:] == (S, "drv-pg8000-app") for r in seen),
              "reads saw %s, want %r everywhere" % (seen, (S, "drv-pg8000-app")))
        check(set(r[0] for r in seen) & set(REPLICAS), "no read on a replica: %s" % seen)
        on_primary(one(c, "insert into items (k, v) values (%s, 'sp') returning "
                          "inet_server_port()", (400,))[0], "insert via search_path")


def t_big_result():
    # In a transaction: 100 rows per Execute on a named portal, 100 Execute+Sync rounds.
    with connect(autocommit=False) as c:
        cur = c.cursor()
        cur.execute("select g, repeat('x', 40), inet_server_port() from "
                    "generate_series(1, %s) g", (10000,))
        rows = cur.fetchall()
        eq(len(rows), 10000, "row count")
        eq(sum(r[0] for r in rows), 10000 * 10001 // 2, "sum")
        c.commit()


def t_bytea_text():
    with connect() as c:
        b, t, port = one(c, "select b, t, inet_server_port() from %s.blobs where id = %%s"
                         % S, (1,))
        eq((bytes(b), t), (ALL_BYTES, UNICODE_TEXT), "seeded bytea/text")
        on_replica(port, "seeded read")
        eq(one(c, "select b, t from %s.blobs where id = 2" % S), (None, None), "NULLs")
        c.cursor().execute("insert into %s.blobs values (%%s, %%s, %%s)" % S,
                           (10, pg8000.Binary(ALL_BYTES), UNICODE_TEXT))
        b, t = one(c, "select b, t from %s.blobs where id = 10" % S)
        eq((bytes(b), t), (ALL_BYTES, UNICODE_TEXT), "written")


def t_statement_timeout():
    with connect() as c:
        c.cursor().execute("set statement_timeout = '300ms'")
        t0 = time.monotonic()
        try:
            one(c, "select pg_sleep(5)")
            check(False, "pg_sleep(5) was not cancelled")
        except pg8000.Error as e:
            expect_sqlstate(e, "57014", "pg_sleep")
        check(time.monotonic() - t0 < 4, "took %.1fs" % (time.monotonic() - t0))
        eq(one(c, "select current_setting('statement_timeout')")[0], "300ms", "setting")
        c.cursor().execute("reset statement_timeout")
        # pg8000 1.10 sends a Python int as an untyped parameter: the server answers text
        eq(one(c, "select %s::int", (1,))[0], 1, "session after the cancel")


def t_listen_notify():
    # pg8000 reads notifications only while it reads answers: the listener runs a query.
    with connect() as lc, connect() as nc:
        lc.cursor().execute("listen drv_pg8000_chan")
        nc.cursor().execute("notify drv_pg8000_chan")
        nc.cursor().execute("select pg_notify(%s, %s)", ("drv_pg8000_chan", "x"))
        deadline = time.monotonic() + 5
        while len(lc.notifies) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            one(lc, "select 1")
        eq([n[1] for n in lc.notifies], ["drv_pg8000_chan"] * 2, "notifications")


def t_copy():
    with connect() as c:
        data = "".join("%d\trow %d ü\n" % (i, i) for i in range(1000)) + "1000\t\\N\n"
        cur = c.cursor()
        cur.execute("copy %s.copy_t (a, b) from stdin" % S, stream=io.BytesIO(data.encode()))
        eq(cur.rowcount, 1001, "copy in rowcount")
        out = io.BytesIO()
        cur.execute("copy (select a, b from %s.copy_t order by a) to stdout" % S, stream=out)
        eq(out.getvalue().decode(), data, "copy out")
        eq(one(c, "select 1")[0], 1, "session after copy")


def t_pipeline():
    with connect() as c:  # executemany: one named statement, many Bind/Execute/Sync
        cur = c.cursor()
        cur.executemany("insert into %s.items (k, v) values (%%s, %%s)" % S,
                        [(900 + i, "many %d" % i) for i in range(100)])
        eq(cur.rowcount, 100, "executemany rowcount")
        eq(one(c, "select count(*) from %s.items where k between 900 and 999" % S)[0], 100,
           "rows")


def t_read_only_tx():
    with connect(autocommit=False) as c:
        c.cursor().execute("set transaction read only")
        eq(one(c, "select count(*) from %s.only_here" % S)[0], 1, "read")
        try:
            c.cursor().execute("insert into %s.items (k, v) values (700, 'ro')" % S)
            check(False, "insert in a read-only transaction succeeded")
        except pg8000.Error as e:
            expect_sqlstate(e, "25006", "insert in read-only tx")
        c.rollback()
        on_primary(one(c, "insert into %s.items (k, v) values (701, 'rw') returning "
                          "inet_server_port()" % S)[0], "insert after")
        c.commit()


run_cases([(n[2:], f) for n, f in list(globals().items()) if n.startswith("t_")])
