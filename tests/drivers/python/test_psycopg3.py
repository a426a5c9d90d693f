# SPDX-License-Identifier: MIT
"""psycopg 3 through pgsteer: extended protocol for every parameterised query, named
statements after prepare_threshold (5) executions, binary results, pipeline() with several
Syncs in flight, COPY and notifications."""

import threading
import time

import psycopg
import psycopg.errors

from harness import (ALL_BYTES, PORT, HOST, USER, PASSWORD, DB, PRIMARY, REPLICAS, SCHEMA,
                     UNICODE_TEXT, check, eq, expect_sqlstate, on_primary, on_replica,
                     run_cases)

S = SCHEMA


def connect(autocommit=True, **kw):
    return psycopg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DB,
                           connect_timeout=10, application_name="drv-psycopg3",
                           autocommit=autocommit, **kw)


def one(c, sql, args=None, **kw):
    return c.execute(sql, args, **kw).fetchone()


def t_routing():
    with connect() as c:
        for i in range(4):
            on_replica(one(c, "select inet_server_port()")[0], "autocommit read %d" % i)
            on_replica(one(c, "select inet_server_port() + %s - %s", (i, i))[0],
                       "parameterised read %d" % i)
        port = one(c, "insert into %s.items (k, v) values (%%s, %%s) returning "
                   "inet_server_port()" % S, (1, "routing"))[0]
        on_primary(port, "autocommit insert")


def t_params():
    with connect() as c:
        c.execute("insert into %s.items (k, v, n) values (%%s, %%s, %%s)" % S,
                  (101, "it's \"quoted\"", None))
        c.execute("insert into %s.items (k, v, n) values (%%(k)s, %%(v)s, %%(n)s)" % S,
                  {"k": 102, "v": "named", "n": 7})
        rows = c.execute("select k, v, n from %s.items where k = any(%%s) order by k" % S,
                         ([101, 102],)).fetchall()
        eq(rows, [(101, "it's \"quoted\"", None), (102, "named", 7)], "rows")
        rows = c.cursor(binary=True).execute(
            "select k, v, n from %s.items where k = any(%%s) order by k" % S,
            ([101, 102],)).fetchall()
        eq(rows, [(101, "it's \"quoted\"", None), (102, "named", 7)], "rows (binary)")


def t_read_own_write():
    with connect() as c:
        for i in range(5):
            c.execute("insert into %s.items (k, v) values (%%s, %%s)" % S, (200 + i, "ryw"))
            eq(one(c, "select count(*) from %s.items where k = %%s" % S, (200 + i,))[0], 1,
               "row %d visible right after its insert" % i)


def t_prepare_threshold():
    # prepare_threshold=5: the 6th execution on prepares a named statement (_pg3_N); those
    # must exist on whichever replica each execution lands on.
    with connect() as c:
        check(c.prepare_threshold == 5, "prepare_threshold is %r" % c.prepare_threshold)
        ports = set()
        for i in range(15):
            v, port = one(c, "select %s::int + 1, inet_server_port()", (i,))
            eq(v, i + 1, "execution %d" % i)
            ports.add(port)
        check(ports <= set(REPLICAS), "prepared reads ran on %s, replicas are %s"
              % (ports, REPLICAS))
        check(len(ports) == len(REPLICAS), "prepared reads used only %s" % ports)
        # prepare=True: named from the first execution; writes use it on the primary.
        for i in range(8):
            port = one(c, "insert into %s.items (k, v) values (%%s, 'prep') returning "
                       "inet_server_port()" % S, (800 + i,), prepare=True)[0]
            on_primary(port, "prepared insert %d" % i)
        eq(one(c, "select count(*) from %s.items where k between 800 and 807" % S)[0], 8,
           "prepared inserts")
        # After a write the session may read from the primary: the same named statement is
        # then used there too.
        for i in range(8):
            eq(one(c, "select %s::int + 1, inet_server_port()", (i,))[0], i + 1,
               "prepared read after write %d" % i)
        c.execute("deallocate all")
        for i in range(7):
            eq(one(c, "select %s::int * 3", (i,))[0], i * 3, "after DEALLOCATE ALL %d" % i)


def t_tx_commit():
    with connect() as c:
        with c.transaction():
            port = one(c, "insert into %s.items (k, v) values (300, 'commit') "
                       "returning inet_server_port()" % S)[0]
            on_primary(port, "insert in transaction")
            eq(one(c, "select count(*), inet_server_port() from %s.items where k = %%s" % S,
                   (300,)), (1, PRIMARY), "read in transaction")
        eq(one(c, "select count(*) from %s.items where k = 300" % S)[0], 1, "committed row")
    with connect(autocommit=False) as c:
        c.execute("insert into %s.items (k, v) values (%%s, 'commit2')" % S, (303,))
        c.commit()
        eq(one(c, "select count(*) from %s.items where k = 303" % S)[0], 1, "committed row 2")
        c.commit()


def t_tx_rollback():
    with connect() as c:
        tx_rolled = False
        try:
            with c.transaction():
                c.execute("insert into %s.items (k, v) values (%%s, 'rollback')" % S, (301,))
                eq(one(c, "select count(*) from %s.items where k = 301" % S)[0], 1, "in tx")
                raise psycopg.Rollback()
        finally:
            tx_rolled = True
        check(tx_rolled, "rollback")
        eq(one(c, "select count(*) from %s.items where k = 301" % S)[0], 0, "after rollback")


def t_tx_error():
    with connect(autocommit=False) as c:
        c.execute("insert into %s.items (k, v) values (%%s, 'error')" % S, (302,))
        try:
            c.execute("select 1/%s", (0,))
            check(False, "1/0 did not fail")
        except psycopg.Error as e:
            expect_sqlstate(e, "22012", "1/0")
        try:
            c.execute("select %s", (1,))
            check(False, "statement in failed transaction did not fail")
        except psycopg.Error as e:
            expect_sqlstate(e, "25P02", "statement after error")
        c.rollback()
        eq(one(c, "select count(*) from %s.items where k = 302" % S)[0], 0, "rolled back")
        c.commit()
        # Savepoints: an error inside a nested transaction() rolls back to the savepoint.
        c.autocommit = True
        with c.transaction():
            c.execute("insert into %s.items (k, v) values (%%s, 'outer')" % S, (304,))
            try:
                with c.transaction():
                    c.execute("insert into %s.items (k, v) values (%%s, 'inner')" % S, (305,))
                    c.execute("select 1/0")
            except psycopg.errors.DivisionByZero:
                pass
        eq(one(c, "select count(*) filter (where k = 304), count(*) filter (where k = 305) "
                  "from %s.items" % S), (1, 0), "savepoint rollback")
        eq(one(c, "select %s::int + 1", (41,))[0], 42, "session after rollback")


def t_session_settings():
    with connect() as c:
        c.execute("set search_path to %s" % S)
        # set_config() is a function call that changes the session: pgsteer runs it on the
        # primary, and may then read from the primary until the next monitor round.
        c.execute("select set_config('application_name', %s, false)", ("drv-psycopg3-app",))
        time.sleep(0.5)
        seen = [one(c, "select inet_server_port(), v, current_setting('application_name') "
                       "from only_here where %s", (True,)) for i in range(8)]
        check(all(r[1:] == (S, "drv-psycopg3-app") for r in seen),
              "reads saw (port, only_here.v, application_name) %s, want %r everywhere"
              % (seen, (S, "drv-psycopg3-app")))
        check(set(r[0] for r in seen) & set(REPLICAS), "no read ran on a replica: %s" % seen)
        port = one(c, "insert into items (k, v) values (%s, 'sp') returning "
                      "inet_server_port()", (400,))[0]
        on_primary(port, "insert via search_path")
        eq(c.info.parameter_status("application_name"), "drv-psycopg3-app",
           "ParameterStatus application_name")


def t_big_result():
    with connect() as c:
        rows = c.execute("select g, repeat('x', 40) from generate_series(1, %s) g",
                         (10000,)).fetchall()
        eq(len(rows), 10000, "row count")
        eq(sum(r[0] for r in rows), 10000 * 10001 // 2, "sum")
        with c.cursor(name="drv_big") as cur:  # server-side cursor: named portal + FETCH
            with c.transaction():
                cur.execute("select g from generate_series(1, 10000) g")
                n = 0
                while True:
                    got = cur.fetchmany(1000)
                    if not got:
                        break
                    n += len(got)
        eq(n, 10000, "rows through a server-side cursor")


def t_bytea_text():
    with connect() as c:
        for binary in (False, True):
            b, t, port = one(c, "select b, t, inet_server_port() from %s.blobs where id = %%s"
                             % S, (1,), binary=binary)
            eq(bytes(b), ALL_BYTES, "seeded bytea (binary=%s)" % binary)
            eq(t, UNICODE_TEXT, "seeded text")
            on_replica(port, "seeded read")
            eq(one(c, "select b, t from %s.blobs where id = 2" % S, binary=binary),
               (None, None), "NULLs")
        c.execute("insert into %s.blobs values (%%s, %%s, %%s)" % S, (10, ALL_BYTES,
                                                                        UNICODE_TEXT))
        c.execute("insert into %s.blobs values (%%s, %%b, %%s)" % S, (11, ALL_BYTES[::-1],
                                                                        None))
        c.execute("insert into %s.blobs values (%%s, %%s, %%s)" % S, (12, None, None))
        b, t = one(c, "select b, t from %s.blobs where id = 10" % S)
        eq((bytes(b), t), (ALL_BYTES, UNICODE_TEXT), "written bytea/text")
        eq(bytes(one(c, "select b from %s.blobs where id = 11" % S)[0]), ALL_BYTES[::-1],
           "bytea sent in binary")
        eq(one(c, "select b, t from %s.blobs where id = 12" % S), (None, None),
           "written NULLs")


def t_statement_timeout():
    with connect() as c:
        c.execute("set statement_timeout = '300ms'")
        t0 = time.monotonic()
        try:
            c.execute("select pg_sleep(%s)", (5,))
            check(False, "pg_sleep(5) was not cancelled")
        except psycopg.Error as e:
            expect_sqlstate(e, "57014", "pg_sleep")
        check(time.monotonic() - t0 < 4, "cancel took %.1fs" % (time.monotonic() - t0))
        eq(one(c, "select current_setting('statement_timeout')")[0], "300ms", "setting")
        c.execute("reset statement_timeout")
        eq(one(c, "select %s::int", (1,))[0], 1, "session after the cancel")
        # Connection.cancel(): a CancelRequest for a query running through pgsteer.
        timer = threading.Timer(0.3, c.cancel)
        timer.start()
        t0 = time.monotonic()
        try:
            c.execute("select pg_sleep(5)")
            check(False, "pg_sleep(5) was not cancelled by cancel()")
        except psycopg.Error as e:
            expect_sqlstate(e, "57014", "cancel()")
        finally:
            timer.cancel()
        check(time.monotonic() - t0 < 4, "cancel() took %.1fs" % (time.monotonic() - t0))
        eq(one(c, "select 2")[0], 2, "session after cancel()")


def t_listen_notify():
    with connect() as lc, connect() as nc:
        lc.execute("listen drv_psycopg3_chan")
        nc.execute("notify drv_psycopg3_chan, 'hello ü'")
        nc.execute("select pg_notify(%s, %s)", ("drv_psycopg3_chan", "second"))
        got = []
        for n in lc.notifies():
            got.append((n.channel, n.payload))
            if len(got) == 2:
                break
        eq(got, [("drv_psycopg3_chan", "hello ü"), ("drv_psycopg3_chan", "second")],
           "notifications")
        eq(one(lc, "select 1")[0], 1, "listener after notifications")


def t_copy():
    with connect() as c:
        rows = [(i, "row %d ü" % i) for i in range(1000)] + [(1000, None)]
        with c.cursor() as cur:
            with cur.copy("copy %s.copy_t (a, b) from stdin" % S) as cp:
                for r in rows:
                    cp.write_row(r)
            eq(cur.rowcount, 1001, "copy in rowcount")
            got = []
            with cur.copy("copy (select a, b from %s.copy_t order by a) to stdout" % S) as cp:
                for r in cp.rows():
                    got.append((int(r[0]), r[1]))
            eq(got, rows, "copy out")
            with cur.copy("copy (select a from %s.copy_t where a < 3 order by a) to stdout "
                          "(format binary)" % S) as cp:
                cp.set_types(["int4"])
                eq([r[0] for r in cp.rows()], [0, 1, 2], "binary copy out")
        eq(one(c, "select %s::int", (1,))[0], 1, "session after copy")


def t_pipeline():
    with connect() as c:
        # Reads only: several Syncs in flight, all on replicas.
        with c.pipeline():
            curs = [c.execute("select %s::int, inet_server_port()", (i,)) for i in range(20)]
        for i, cur in enumerate(curs):
            v, port = cur.fetchone()
            eq(v, i, "pipelined read %d" % i)
            on_replica(port, "pipelined read %d" % i)
        # Writes and reads interleaved, answers in order; then a transaction in a pipeline.
        with c.pipeline() as p:
            curs = []
            for i in range(10):
                curs.append(c.execute("insert into %s.items (k, v) values (%%s, 'pipe') "
                                      "returning k, inet_server_port()" % S, (900 + i,)))
                curs.append(c.execute("select %s::int * 10", (i,)))
            p.sync()
            with c.transaction():
                c.execute("insert into %s.items (k, v) values (%%s, 'pipe tx')" % S, (950,))
                ctx = c.execute("select count(*) from %s.items where k >= 900" % S)
        for i in range(10):
            k, port = curs[2 * i].fetchone()
            eq(k, 900 + i, "pipelined insert %d" % i)
            on_primary(port, "pipelined insert %d" % i)
            eq(curs[2 * i + 1].fetchone()[0], i * 10, "pipelined read after write %d" % i)
        eq(ctx.fetchone()[0], 11, "count inside the pipelined transaction")
        # An error inside a pipeline: the batch is aborted, the session goes on.
        try:
            with c.pipeline():
                c.execute("select 1/%s", (0,))
                c.execute("select 1")
            check(False, "error in pipeline not raised")
        except psycopg.Error as e:
            expect_sqlstate(e, "22012", "pipeline error")
        eq(one(c, "select %s::int", (7,))[0], 7, "session after pipeline error")
        # executemany uses the pipeline too.
        with c.cursor() as cur:
            cur.executemany("insert into %s.items (k, v) values (%%s, %%s)" % S,
                            [(960 + i, "many") for i in range(30)])
        eq(one(c, "select count(*) from %s.items where k between 960 and 989" % S)[0], 30,
           "executemany")


def t_read_only_tx():
    with connect(autocommit=False) as c:
        c.read_only = True
        eq(one(c, "select count(*) from %s.only_here" % S)[0], 1, "read in read-only tx")
        try:
            c.execute("insert into %s.items (k, v) values (%%s, 'ro')" % S, (700,))
            check(False, "insert in a read-only transaction succeeded")
        except psycopg.Error as e:
            expect_sqlstate(e, "25006", "insert in read-only tx")
        c.rollback()
        c.read_only = False
        port = one(c, "insert into %s.items (k, v) values (%%s, 'rw') returning "
                      "inet_server_port()" % S, (701,))[0]
        on_primary(port, "insert after the read-only transaction")
        c.commit()
    with connect() as c:
        with c.transaction():
            c.execute("set transaction read only")
            eq(one(c, "select 1")[0], 1, "set transaction read only")


def t_causal_token():
    # The causal token through psycopg 3, which sends every statement with Parse/Bind/Execute:
    # session B, given session A's last write position, reads A's row.
    with connect() as a, connect() as b:
        a.execute("insert into %s.items (k, v) values (7772, 'token')" % S)
        token = one(a, "show pgsteer.last_write_lsn")[0]
        check("/" in token and token != "0/0", "token %r" % token)
        b.execute("set pgsteer.min_lsn = '%s'" % token)
        eq(one(b, "show pgsteer.min_lsn")[0], token, "min_lsn as set")
        eq(one(b, "select count(*) from %s.items where k = 7772" % S)[0], 1,
           "the row, read with the token")
        try:
            b.execute("set pgsteer.min_lsn = %s", (token,))
            check(False, "a parameter in SET pgsteer.min_lsn was taken")
        except psycopg.Error as e:
            expect_sqlstate(e, "42601", "parameter in SET pgsteer.min_lsn")
        eq(one(b, "select %s::int + 1", (41,))[0], 42, "session goes on")


run_cases([(n[2:], f) for n, f in list(globals().items()) if n.startswith("t_")])
