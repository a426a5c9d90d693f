# SPDX-License-Identifier: MIT
"""psycopg2 through pgsteer. psycopg2 speaks the simple protocol only (parameters are
interpolated client-side), so named statements are exercised with SQL PREPARE/EXECUTE and
batching with execute_batch/execute_values (many statements in one Query message)."""

import contextlib
import select
import time

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from harness import (ALL_BYTES, PORT, HOST, USER, PASSWORD, DB, PRIMARY, REPLICAS, SCHEMA,
                     UNICODE_TEXT, check, eq, expect_sqlstate, on_primary, on_replica,
                     run_cases)

S = SCHEMA


def connect(autocommit=True, **kw):
    """A connection wrapped in closing(): psycopg2 2.9's own `with conn` opens a transaction
    even in autocommit mode, which would send everything to the primary."""
    c = psycopg2.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DB,
                         connect_timeout=10, application_name="drv-psycopg2", **kw)
    c.autocommit = autocommit
    return contextlib.closing(c)


def one(cur, sql, args=None):
    cur.execute(sql, args)
    return cur.fetchone()


def t_routing():
    with connect() as c, c.cursor() as cur:
        for i in range(6):
            on_replica(one(cur, "select inet_server_port()")[0], "autocommit read %d" % i)
        port = one(cur, "insert into %s.items (k, v) values (%%s, %%s) returning "
                   "inet_server_port()" % S, (1, "routing"))[0]
        on_primary(port, "autocommit insert")


def t_params():
    with connect() as c, c.cursor() as cur:
        cur.execute("insert into %s.items (k, v, n) values (%%s, %%s, %%s)" % S,
                    (101, "it's \"quoted\"", None))
        cur.execute("insert into %s.items (k, v, n) values (%%(k)s, %%(v)s, %%(n)s)" % S,
                    {"k": 102, "v": "named", "n": 7})
        cur.execute("select k, v, n from %s.items where k = any(%%s) order by k" % S,
                    ([101, 102],))
        eq(cur.fetchall(), [(101, "it's \"quoted\"", None), (102, "named", 7)], "rows")


def t_read_own_write():
    with connect() as c, c.cursor() as cur:
        for i in range(5):
            cur.execute("insert into %s.items (k, v) values (%%s, %%s)" % S, (200 + i, "ryw"))
            eq(one(cur, "select count(*) from %s.items where k = %%s" % S, (200 + i,))[0], 1,
               "row %d visible right after its insert" % i)


def t_prepare_threshold():
    # SQL-level named statements: PREPARE is session state, EXECUTE runs wherever it's routed.
    with connect() as c, c.cursor() as cur:
        cur.execute("prepare q(int) as select $1 + 1, inet_server_port()")
        ports = set()
        for i in range(12):
            v, port = one(cur, "execute q(%s)", (i,))
            eq(v, i + 1, "execute q(%d)" % i)
            ports.add(port)
        check(ports <= set(REPLICAS), "EXECUTE of a read ran on %s, not only replicas %s"
              % (ports, REPLICAS))
        cur.execute("deallocate q")
        cur.execute("prepare q(int) as select $1 * 2")
        eq(one(cur, "execute q(21)")[0], 42, "re-PREPAREd q")


def t_tx_commit():
    with connect(autocommit=False) as c:
        with c.cursor() as cur:
            cur.execute("insert into %s.items (k, v) values (300, 'commit') "
                        "returning inet_server_port()" % S)
            on_primary(cur.fetchone()[0], "insert in transaction")
            eq(one(cur, "select count(*), inet_server_port() from %s.items where k = 300" % S),
               (1, PRIMARY), "read in transaction")
        c.commit()
    with connect() as c, c.cursor() as cur:
        eq(one(cur, "select count(*) from %s.items where k = 300" % S)[0], 1, "committed row")


def t_tx_rollback():
    with connect(autocommit=False) as c:
        with c.cursor() as cur:
            cur.execute("insert into %s.items (k, v) values (301, 'rollback')" % S)
            eq(one(cur, "select count(*) from %s.items where k = 301" % S)[0], 1, "in tx")
        c.rollback()
        with c.cursor() as cur:
            eq(one(cur, "select count(*) from %s.items where k = 301" % S)[0], 0,
               "after rollback")
        c.rollback()


def t_tx_error():
    with connect(autocommit=False) as c:
        cur = c.cursor()
        cur.execute("insert into %s.items (k, v) values (302, 'error')" % S)
        try:
            cur.execute("select 1/0")
            check(False, "1/0 did not fail")
        except psycopg2.Error as e:
            expect_sqlstate(e, "22012", "1/0")
        try:
            cur.execute("select 1")
            check(False, "statement in failed transaction did not fail")
        except psycopg2.Error as e:
            expect_sqlstate(e, "25P02", "statement after error")
        c.rollback()
        eq(one(cur, "select count(*) from %s.items where k = 302" % S)[0], 0, "rolled back")
        c.commit()
        c.autocommit = True
        eq(one(cur, "select 41 + 1")[0], 42, "session after rollback")


def t_session_settings():
    with connect() as c, c.cursor() as cur:
        cur.execute("set search_path to %s" % S)
        cur.execute("set application_name = 'drv-psycopg2-app'")
        ports = set()
        for i in range(8):
            v, app, port = one(cur, "select v, current_setting('application_name'), "
                                    "inet_server_port() from only_here")
            eq((v, app), (S, "drv-psycopg2-app"), "search_path/application_name read %d" % i)
            ports.add(port)
        check(ports & set(REPLICAS), "no read ran on a replica: %s" % ports)
        port = one(cur, "insert into items (k, v) values (400, 'sp') returning "
                        "inet_server_port()")[0]
        on_primary(port, "insert via search_path")
        eq(one(cur, "select current_setting('application_name')")[0], "drv-psycopg2-app",
           "application_name after a write")


def t_big_result():
    with connect() as c, c.cursor() as cur:
        cur.execute("select g, repeat('x', 40) from generate_series(1, 10000) g")
        rows = cur.fetchall()
        eq(len(rows), 10000, "row count")
        eq(sum(r[0] for r in rows), 10000 * 10001 // 2, "sum")
        check(all(r[1] == "x" * 40 for r in rows), "payload")


def t_bytea_text():
    with connect() as c, c.cursor() as cur:
        b, t, port = one(cur, "select b, t, inet_server_port() from %s.blobs where id = 1" % S)
        eq(bytes(b), ALL_BYTES, "seeded bytea")
        eq(t, UNICODE_TEXT, "seeded text")
        on_replica(port, "seeded read")
        eq(one(cur, "select b, t from %s.blobs where id = 2" % S), (None, None), "NULLs")
        cur.execute("insert into %s.blobs values (%%s, %%s, %%s)" % S,
                    (10, psycopg2.Binary(ALL_BYTES), UNICODE_TEXT))
        cur.execute("insert into %s.blobs values (%%s, %%s, %%s)" % S, (11, None, None))
        b, t = one(cur, "select b, t from %s.blobs where id = 10" % S)
        eq((bytes(b), t), (ALL_BYTES, UNICODE_TEXT), "written bytea/text")
        eq(one(cur, "select b, t from %s.blobs where id = 11" % S), (None, None),
           "written NULLs")


def t_statement_timeout():
    with connect() as c, c.cursor() as cur:
        cur.execute("set statement_timeout = '300ms'")
        t0 = time.monotonic()
        try:
            cur.execute("select pg_sleep(5)")
            check(False, "pg_sleep(5) was not cancelled")
        except psycopg2.Error as e:
            expect_sqlstate(e, "57014", "pg_sleep")
        check(time.monotonic() - t0 < 4, "cancel took %.1fs" % (time.monotonic() - t0))
        eq(one(cur, "select current_setting('statement_timeout')")[0], "300ms", "setting")
        cur.execute("reset statement_timeout")
        eq(one(cur, "select 1")[0], 1, "session after the cancel")


def t_listen_notify():
    with connect() as lc, connect() as nc:
        lc.cursor().execute("listen drv_psycopg2_chan")
        nc.cursor().execute("notify drv_psycopg2_chan, 'hello ü'")
        nc.cursor().execute("select pg_notify('drv_psycopg2_chan', 'second')")
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            if select.select([lc], [], [], 0.5)[0]:
                lc.poll()
                while lc.notifies:
                    got.append(lc.notifies.pop(0).payload)
        eq(got, ["hello ü", "second"], "notifications")


def t_copy():
    import io
    with connect() as c, c.cursor() as cur:
        data = "".join("%d\trow %d ü\n" % (i, i) for i in range(1000)) + "1000\t\\N\n"
        cur.copy_expert("copy %s.copy_t (a, b) from stdin" % S, io.StringIO(data))
        eq(cur.rowcount, 1001, "copy in rowcount")
        out = io.StringIO()
        cur.copy_expert("copy (select a, b from %s.copy_t order by a) to stdout" % S, out)
        eq(out.getvalue(), data, "copy out")
        eq(one(cur, "select 1")[0], 1, "session after copy")


def t_pipeline():
    with connect() as c, c.cursor() as cur:
        # Several reads in one Query message run on one replica (before this session writes).
        cur.execute("select 1; select 2; select inet_server_port()")
        on_replica(cur.fetchone()[0], "multi-statement read")
        psycopg2.extras.execute_batch(
            cur, "insert into %s.items (k, v) values (%%s, %%s)" % S,
            [(500 + i, "batch %d" % i) for i in range(100)], page_size=30)
        psycopg2.extras.execute_values(
            cur, "insert into %s.items (k, v) values %%s" % S,
            [(600 + i, "values %d" % i) for i in range(100)], page_size=40)
        eq(one(cur, "select count(*) from %s.items where k between 500 and 699" % S)[0], 200,
           "batched rows")


def t_read_only_tx():
    with connect(autocommit=False) as c:
        c.set_session(readonly=True)
        cur = c.cursor()
        eq(one(cur, "select count(*) from %s.only_here" % S)[0], 1, "read in read-only tx")
        try:
            cur.execute("insert into %s.items (k, v) values (700, 'ro')" % S)
            check(False, "insert in a read-only transaction succeeded")
        except psycopg2.Error as e:
            expect_sqlstate(e, "25006", "insert in read-only tx")
        c.rollback()
        c.set_session(readonly=False)
        cur.execute("insert into %s.items (k, v) values (701, 'rw') returning "
                    "inet_server_port()" % S)
        on_primary(cur.fetchone()[0], "insert after the read-only transaction")
        c.commit()


run_cases([(n[2:], f) for n, f in list(globals().items()) if n.startswith("t_")])
