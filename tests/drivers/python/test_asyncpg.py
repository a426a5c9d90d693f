# SPDX-License-Identifier: MIT
"""asyncpg through pgsteer. asyncpg prepares every statement under a name
(__asyncpg_stmt_N__, kept in a per-connection cache), sends Parse+Describe+Flush and waits
before Bind/Execute/Sync, uses binary formats, and pipelines executemany()."""

import asyncio
import io
import time

import asyncpg

from harness import (ALL_BYTES, PORT, HOST, USER, PASSWORD, DB, PRIMARY, REPLICAS, SCHEMA,
                     UNICODE_TEXT, check, eq, expect_sqlstate, on_primary, on_replica,
                     run_cases_async)

S = SCHEMA


async def connect(**kw):
    return await asyncpg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD,
                                 database=DB, timeout=10,
                                 server_settings={"application_name": "drv-asyncpg"}, **kw)


class conn:
    def __init__(self, **kw):
        self.kw = kw

    async def __aenter__(self):
        self.c = await connect(**self.kw)
        return self.c

    async def __aexit__(self, *exc):
        await self.c.close(timeout=5)


async def t_routing():
    async with conn() as c:
        for i in range(4):
            on_replica(await c.fetchval("select inet_server_port()"), "read %d" % i)
            on_replica(await c.fetchval("select inet_server_port() + $1 - $1", i),
                       "parameterised read %d" % i)
        on_primary(await c.fetchval("insert into %s.items (k, v) values ($1, $2) returning "
                                    "inet_server_port()" % S, 1, "routing"), "insert")


async def t_params():
    async with conn() as c:
        await c.execute("insert into %s.items (k, v, n) values ($1, $2, $3)" % S,
                        101, "it's \"quoted\"", None)
        await c.execute("insert into %s.items (k, v, n) values ($1, $2, $3)" % S,
                        102, "second", 7)
        rows = await c.fetch("select k, v, n from %s.items where k = any($1::int[]) "
                             "order by k" % S, [101, 102])
        eq([tuple(r) for r in rows], [(101, "it's \"quoted\"", None), (102, "second", 7)],
           "rows")


async def t_read_own_write():
    async with conn() as c:
        for i in range(5):
            await c.execute("insert into %s.items (k, v) values ($1, 'ryw')" % S, 200 + i)
            eq(await c.fetchval("select count(*) from %s.items where k = $1" % S, 200 + i), 1,
               "row %d visible right after its insert" % i)


async def t_prepare_threshold():
    async with conn() as c:
        ports = set()
        for i in range(12):  # one cached named statement, Bound on both replicas
            v, port = await c.fetchrow("select $1::int + 1, inet_server_port()", i)
            eq(v, i + 1, "execution %d" % i)
            ports.add(port)
        check(ports <= set(REPLICAS), "cached statement ran on %s, replicas %s"
              % (ports, REPLICAS))
        check(len(ports) == len(REPLICAS), "cached statement used only %s" % ports)
        st = await c.prepare("select $1::text || '!', inet_server_port()")
        for i in range(6):
            v, port = await st.fetchrow("x%d" % i)
            eq(v, "x%d!" % i, "explicit prepared statement %d" % i)
            on_replica(port, "explicit prepared statement %d" % i)
        ins = await c.prepare("insert into %s.items (k, v) values ($1, 'prep') returning "
                              "inet_server_port()" % S)
        for i in range(6):
            on_primary(await ins.fetchval(800 + i), "prepared insert %d" % i)
        for i in range(6):  # the read statement again, now maybe on the primary
            eq((await st.fetchrow("y%d" % i))[0], "y%d!" % i, "after writes %d" % i)
        # Cursor (named portal) in a transaction.
        async with c.transaction():
            n = 0
            async for r in c.cursor("select g from generate_series(1, 1000) g", prefetch=100):
                n += 1
        eq(n, 1000, "rows from a cursor")


async def t_tx_commit():
    async with conn() as c:
        async with c.transaction():
            on_primary(await c.fetchval("insert into %s.items (k, v) values (300, 'commit') "
                                        "returning inet_server_port()" % S), "insert in tx")
            eq(tuple(await c.fetchrow("select count(*), inet_server_port() from %s.items "
                                      "where k = $1" % S, 300)), (1, PRIMARY), "read in tx")
        eq(await c.fetchval("select count(*) from %s.items where k = 300" % S), 1,
           "committed row")


async def t_tx_rollback():
    async with conn() as c:
        tr = c.transaction()
        await tr.start()
        await c.execute("insert into %s.items (k, v) values ($1, 'rollback')" % S, 301)
        eq(await c.fetchval("select count(*) from %s.items where k = 301" % S), 1, "in tx")
        await tr.rollback()
        eq(await c.fetchval("select count(*) from %s.items where k = 301" % S), 0,
           "after rollback")


async def t_tx_error():
    async with conn() as c:
        tr = c.transaction()
        await tr.start()
        await c.execute("insert into %s.items (k, v) values ($1, 'error')" % S, 302)
        try:
            await c.fetchval("select 1/$1::int", 0)
            check(False, "1/0 did not fail")
        except asyncpg.PostgresError as e:
            expect_sqlstate(e, "22012", "1/0")
        try:
            await c.fetchval("select $1::int", 1)
            check(False, "statement in failed transaction did not fail")
        except asyncpg.PostgresError as e:
            expect_sqlstate(e, "25P02", "statement after error")
        await tr.rollback()
        eq(await c.fetchval("select count(*) from %s.items where k = 302" % S), 0,
           "rolled back")
        async with c.transaction():
            await c.execute("insert into %s.items (k, v) values (304, 'outer')" % S)
            try:
                async with c.transaction():  # a savepoint
                    await c.execute("insert into %s.items (k, v) values (305, 'inner')" % S)
                    await c.execute("select 1/0")
            except asyncpg.DivisionByZeroError:
                pass
        eq(tuple(await c.fetchrow("select count(*) filter (where k = 304), count(*) filter "
                                  "(where k = 305) from %s.items" % S)), (1, 0), "savepoint")
        eq(await c.fetchval("select $1::int + 1", 41), 42, "session after rollback")


async def t_session_settings():
    async with conn() as c:
        await c.execute("set search_path to %s" % S)
        await c.execute("set application_name = 'drv-asyncpg-app'")
        seen = [tuple(await c.fetchrow("select inet_server_port(), v, "
                                       "current_setting('application_name') from only_here "
                                       "where $1::bool", True)) for i in range(8)]
        check(all(r[1:] == (S, "drv-asyncpg-app") for r in seen),
              "reads saw %s, want %r everywhere" % (seen, (S, "drv-asyncpg-app")))
        check(set(r[0] for r in seen) & set(REPLICAS), "no read on a replica: %s" % seen)
        on_primary(await c.fetchval("insert into items (k, v) values ($1, 'sp') returning "
                                    "inet_server_port()", 400), "insert via search_path")


async def t_big_result():
    async with conn() as c:
        rows = await c.fetch("select g, repeat('x', 40) from generate_series(1, $1::int) g",
                             10000)
        eq(len(rows), 10000, "row count")
        eq(sum(r[0] for r in rows), 10000 * 10001 // 2, "sum")


async def t_bytea_text():
    async with conn() as c:
        b, t, port = await c.fetchrow("select b, t, inet_server_port() from %s.blobs "
                                      "where id = $1" % S, 1)
        eq((b, t), (ALL_BYTES, UNICODE_TEXT), "seeded bytea/text")
        on_replica(port, "seeded read")
        eq(tuple(await c.fetchrow("select b, t from %s.blobs where id = 2" % S)), (None, None),
           "NULLs")
        await c.execute("insert into %s.blobs values ($1, $2, $3)" % S, 10, ALL_BYTES,
                        UNICODE_TEXT)
        await c.execute("insert into %s.blobs values ($1, $2, $3)" % S, 11, None, None)
        eq(tuple(await c.fetchrow("select b, t from %s.blobs where id = 10" % S)),
           (ALL_BYTES, UNICODE_TEXT), "written")
        eq(tuple(await c.fetchrow("select b, t from %s.blobs where id = 11" % S)),
           (None, None), "written NULLs")


async def t_statement_timeout():
    async with conn() as c:
        await c.execute("set statement_timeout = '300ms'")
        t0 = time.monotonic()
        try:
            await c.execute("select pg_sleep(5)")
            check(False, "pg_sleep(5) was not cancelled")
        except asyncpg.PostgresError as e:
            expect_sqlstate(e, "57014", "pg_sleep")
        check(time.monotonic() - t0 < 4, "took %.1fs" % (time.monotonic() - t0))
        eq(await c.fetchval("select current_setting('statement_timeout')"), "300ms", "setting")
        await c.execute("reset statement_timeout")
        eq(await c.fetchval("select $1::int", 1), 1, "session after the cancel")
        # A client-side timeout makes asyncpg send a CancelRequest.
        t0 = time.monotonic()
        try:
            await c.fetchval("select pg_sleep(5)", timeout=0.3)
            check(False, "client timeout did not fire")
        except asyncio.TimeoutError:
            pass
        check(time.monotonic() - t0 < 4, "client timeout took %.1fs" % (time.monotonic() - t0))
        eq(await c.fetchval("select $1::int", 2), 2, "session after the CancelRequest")


async def t_listen_notify():
    async with conn() as lc, conn() as nc:
        q = asyncio.Queue()
        await lc.add_listener("drv_asyncpg_chan", lambda *a: q.put_nowait(a[3]))
        await nc.execute("notify drv_asyncpg_chan, 'hello ü'")
        await nc.fetchval("select pg_notify($1, $2)", "drv_asyncpg_chan", "second")
        got = [await asyncio.wait_for(q.get(), 5), await asyncio.wait_for(q.get(), 5)]
        eq(got, ["hello ü", "second"], "notifications")


async def t_copy():
    async with conn() as c:
        rows = [(i, "row %d ü" % i) for i in range(1000)] + [(1000, None)]
        res = await c.copy_records_to_table("copy_t", schema_name=S, records=rows,
                                            columns=["a", "b"])
        eq(res, "COPY 1001", "copy_records_to_table")
        data = "".join("%d\ttext %d\n" % (2000 + i, i) for i in range(100)).encode()
        res = await c.copy_to_table("copy_t", schema_name=S, source=io.BytesIO(data),
                                    columns=["a", "b"])
        eq(res, "COPY 100", "copy_to_table")
        out = io.BytesIO()
        await c.copy_from_query("select a, b from %s.copy_t where a < 1001 order by a" % S,
                                output=out)
        want = "".join("%d\t%s\n" % (a, "\\N" if b is None else b) for a, b in rows)
        eq(out.getvalue().decode(), want, "copy out")
        eq(await c.fetchval("select $1::int", 1), 1, "session after copy")


async def t_pipeline():
    async with conn() as c:
        await c.executemany("insert into %s.items (k, v) values ($1, $2)" % S,
                            [(900 + i, "many %d" % i) for i in range(200)])
        eq(await c.fetchval("select count(*) from %s.items where k between 900 and 1099" % S),
           200, "executemany rows")
        try:
            await c.executemany("insert into %s.items (k, v) values ($1, $2)" % S,
                                [(1200, "a"), (None, "b"), ("x", "c")])
            check(False, "bad executemany did not fail")
        except (asyncpg.PostgresError, asyncpg.DataError):
            pass
        eq(await c.fetchval("select $1::int", 3), 3, "session after failed executemany")


async def t_read_only_tx():
    async with conn() as c:
        async with c.transaction(readonly=True):
            eq(await c.fetchval("select count(*) from %s.only_here" % S), 1, "read")
        tr = c.transaction(readonly=True, isolation="repeatable_read")
        await tr.start()
        try:
            await c.execute("insert into %s.items (k, v) values (700, 'ro')" % S)
            check(False, "insert in a read-only transaction succeeded")
        except asyncpg.PostgresError as e:
            expect_sqlstate(e, "25006", "insert in read-only tx")
        await tr.rollback()
        on_primary(await c.fetchval("insert into %s.items (k, v) values (701, 'rw') "
                                    "returning inet_server_port()" % S), "insert after")


async def t_causal_token():
    # The causal token through a driver that prepares every statement it fetches, SET and SHOW
    # of pgsteer.* included: session B, given session A's last write position, reads A's row.
    async with conn() as a, conn() as b:
        await a.execute("insert into %s.items (k, v) values (7771, 'token')" % S)
        token = await a.fetchval("show pgsteer.last_write_lsn")
        check(isinstance(token, str) and "/" in token and token != "0/0", "token %r" % token)
        await b.fetch("set pgsteer.min_lsn = '%s'" % token)
        eq(await b.fetchval("show pgsteer.min_lsn"), token, "min_lsn as set")
        eq(await b.fetchval("select count(*) from %s.items where k = 7771" % S), 1,
           "the row, read with the token")
        await b.fetch("set pgsteer.consistency = eventual")
        eq(await b.fetchval("show pgsteer.consistency"), "eventual", "consistency as set")
        try:
            await b.fetch("set pgsteer.consistency = sometimes")
            check(False, "a bad pgsteer.consistency was taken")
        except asyncpg.PostgresError as e:
            expect_sqlstate(e, "22023", "bad pgsteer.consistency")
        eq(await b.fetchval("select $1::int + 1", 41), 42, "session goes on")


run_cases_async([(n[2:], f) for n, f in list(globals().items()) if n.startswith("t_")])
