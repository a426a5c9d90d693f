# SPDX-License-Identifier: MIT
"""SQLAlchemy 1.4 (Core and ORM, psycopg2 dialect) through pgsteer: first-connect
introspection, executemany with execute_values batching, server-side cursors, savepoints and
ORM sessions. NullPool: each case starts a fresh pgsteer session, so one case's writes (which
send that session's reads to the primary for a moment) do not decide where the next reads."""

import time

import sqlalchemy as sa
from sqlalchemy import orm

from harness import (ALL_BYTES, PORT, HOST, USER, PASSWORD, DB, PRIMARY, REPLICAS, SCHEMA,
                     UNICODE_TEXT, check, eq, expect_sqlstate, on_primary, on_replica,
                     run_cases)

S = SCHEMA
URL = "postgresql+psycopg2://%s:%s@%s:%d/%s" % (USER, PASSWORD, HOST, PORT, DB)
engine = sa.create_engine(URL, future=True, poolclass=sa.pool.NullPool,
                          connect_args={"application_name": "drv-sqlalchemy",
                                        "connect_timeout": 10})
ac_engine = engine.execution_options(isolation_level="AUTOCOMMIT")

meta = sa.MetaData(schema=S)
items = sa.Table("items", meta, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("k", sa.Integer), sa.Column("v", sa.Text),
                 sa.Column("n", sa.Integer))
blobs = sa.Table("blobs", meta, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("b", sa.LargeBinary), sa.Column("t", sa.Text))

Base = orm.declarative_base()

# The dialect's first-connect queries run in a transaction; pgsteer counts a transaction as a
# write for read-your-writes, so the session reads from the primary until the next monitor
# round. Get that behind us before the routing assertions.
with engine.connect() as _c:
    _c.rollback()
time.sleep(0.3)


class Item(Base):
    __table__ = items


def t_routing():
    with ac_engine.connect() as c:
        for i in range(4):
            on_replica(c.execute(sa.text("select inet_server_port()")).scalar(), "read %d" % i)
            on_replica(c.execute(sa.select(sa.func.inet_server_port() + sa.literal(i) -
                                           sa.literal(i))).scalar(), "expression read %d" % i)
        res = c.execute(items.insert().values(k=1, v="routing")
                        .returning(sa.func.inet_server_port())).scalar()
        on_primary(res, "insert")


def t_params():
    with ac_engine.connect() as c:
        c.execute(items.insert(), [{"k": 101, "v": "it's \"quoted\"", "n": None},
                                   {"k": 102, "v": "second", "n": 7}])
        rows = c.execute(sa.select(items.c.k, items.c.v, items.c.n)
                         .where(items.c.k.in_([101, 102])).order_by(items.c.k)).all()
        eq([tuple(r) for r in rows], [(101, "it's \"quoted\"", None), (102, "second", 7)],
           "rows")
        rows = c.execute(sa.text("select k from %s.items where k = :k" % S), {"k": 102}).all()
        eq(rows, [(102,)], "text() with a bound parameter")


def t_read_own_write():
    with ac_engine.connect() as c:
        for i in range(5):
            c.execute(items.insert().values(k=200 + i, v="ryw"))
            eq(c.execute(sa.select(sa.func.count()).select_from(items)
                         .where(items.c.k == 200 + i)).scalar(), 1, "row %d" % i)


def t_prepare_threshold():
    # psycopg2 has no server-side statements; the same compiled statement repeated through
    # the pool (cached by SQLAlchemy's compiled cache) still reads from replicas.
    ports = set()
    stmt = sa.select(sa.bindparam("x", type_=sa.Integer) + 1, sa.func.inet_server_port())
    for i in range(12):
        with ac_engine.connect() as c:
            v, port = c.execute(stmt, {"x": i}).one()
            eq(v, i + 1, "execution %d" % i)
            ports.add(port)
    check(ports <= set(REPLICAS), "reads ran on %s" % ports)


def t_tx_commit():
    with engine.begin() as c:
        on_primary(c.execute(items.insert().values(k=300, v="commit")
                             .returning(sa.func.inet_server_port())).scalar(), "insert in tx")
        eq(tuple(c.execute(sa.text("select count(*), inet_server_port() from %s.items "
                                   "where k = 300" % S)).one()), (1, PRIMARY), "read in tx")
    with orm.Session(engine) as s, s.begin():
        s.add_all([Item(k=310 + i, v="orm") for i in range(5)])
    with orm.Session(ac_engine) as s:
        eq(s.query(Item).filter(Item.k.between(310, 314)).count(), 5, "ORM rows committed")
    with ac_engine.connect() as c:
        eq(c.execute(sa.text("select count(*) from %s.items where k = 300" % S)).scalar(), 1,
           "committed")


def t_tx_rollback():
    with engine.connect() as c:
        tx = c.begin()
        c.execute(items.insert().values(k=301, v="rollback"))
        eq(c.execute(sa.text("select count(*) from %s.items where k = 301" % S)).scalar(), 1,
           "in tx")
        tx.rollback()
        eq(c.execute(sa.text("select count(*) from %s.items where k = 301" % S)).scalar(), 0,
           "after rollback")
        c.rollback()


def t_tx_error():
    with orm.Session(engine) as s:
        s.add(Item(k=302, v="error"))
        s.flush()
        try:
            s.execute(sa.text("select 1/0"))
            check(False, "1/0 did not fail")
        except sa.exc.DBAPIError as e:
            expect_sqlstate(e, "22012", "1/0")
        s.rollback()
        eq(s.execute(sa.text("select count(*) from %s.items where k = 302" % S)).scalar(), 0,
           "rolled back")
        with s.begin_nested():  # a savepoint that commits
            s.add(Item(k=304, v="nested"))
        try:
            with s.begin_nested():
                s.add(Item(k=305, v="nested-bad"))
                s.flush()
                s.execute(sa.text("select 1/0"))
        except sa.exc.DBAPIError:
            pass
        s.commit()
        eq(tuple(s.execute(sa.text("select count(*) filter (where k = 304), count(*) filter "
                                   "(where k = 305) from %s.items" % S)).one()), (1, 0),
           "savepoints")
        s.commit()


def t_session_settings():
    with ac_engine.connect() as c:
        c.execute(sa.text("set search_path to %s" % S))
        c.execute(sa.text("set application_name = 'drv-sqlalchemy-app'"))
        seen = [tuple(c.execute(sa.text("select inet_server_port(), v, current_setting("
                                        "'application_name') from only_here")).one())
                for i in range(8)]
        check(all(r[1:] == (S, "drv-sqlalchemy-app") for r in seen),
              "reads saw %s, want %r everywhere" % (seen, (S, "drv-sqlalchemy-app")))
        check(set(r[0] for r in seen) & set(REPLICAS), "no read on a replica: %s" % seen)
        c.execute(sa.text("reset all"))
        eq(c.execute(sa.text("select current_setting('application_name')")).scalar(),
           "drv-sqlalchemy", "application_name after RESET ALL (the startup value)")


def t_big_result():
    with ac_engine.connect() as c:
        rows = c.execute(sa.text("select g, repeat('x', 40) from generate_series(1, 10000) g")
                         ).all()
        eq(len(rows), 10000, "row count")
        eq(sum(r[0] for r in rows), 10000 * 10001 // 2, "sum")
        n = 0
        with engine.connect() as c2:  # server-side cursor (DECLARE/FETCH in a transaction)
            res = c2.execution_options(stream_results=True, max_row_buffer=500).execute(
                sa.text("select g from generate_series(1, 10000) g"))
            for _ in res:
                n += 1
            c2.rollback()
        eq(n, 10000, "streamed rows")


def t_bytea_text():
    with ac_engine.connect() as c:
        b, t, port = c.execute(sa.select(blobs.c.b, blobs.c.t, sa.func.inet_server_port())
                               .where(blobs.c.id == 1)).one()
        eq((bytes(b), t), (ALL_BYTES, UNICODE_TEXT), "seeded")
        on_replica(port, "seeded read")
        eq(tuple(c.execute(sa.select(blobs.c.b, blobs.c.t).where(blobs.c.id == 2)).one()),
           (None, None), "NULLs")
        c.execute(blobs.insert(), [{"id": 10, "b": ALL_BYTES, "t": UNICODE_TEXT},
                                   {"id": 11, "b": None, "t": None}])
        rows = c.execute(sa.select(blobs.c.b, blobs.c.t).where(blobs.c.id.in_([10, 11]))
                         .order_by(blobs.c.id)).all()
        eq([(bytes(r[0]) if r[0] is not None else None, r[1]) for r in rows],
           [(ALL_BYTES, UNICODE_TEXT), (None, None)], "written")


def t_statement_timeout():
    with ac_engine.connect() as c:
        c.execute(sa.text("set statement_timeout = '300ms'"))
        t0 = time.monotonic()
        try:
            c.execute(sa.text("select pg_sleep(5)"))
            check(False, "pg_sleep(5) was not cancelled")
        except sa.exc.DBAPIError as e:
            expect_sqlstate(e, "57014", "pg_sleep")
        check(time.monotonic() - t0 < 4, "took %.1fs" % (time.monotonic() - t0))
        c.execute(sa.text("reset statement_timeout"))
        eq(c.execute(sa.text("select 1")).scalar(), 1, "session after the cancel")


def t_listen_notify():
    import select
    with ac_engine.connect() as lc, ac_engine.connect() as nc:
        lc.execute(sa.text("listen drv_sqlalchemy_chan"))
        nc.execute(sa.text("select pg_notify('drv_sqlalchemy_chan', :p)"), {"p": "ü"})
        raw = lc.connection.dbapi_connection
        got = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            if select.select([raw], [], [], 0.5)[0]:
                raw.poll()
                got += [n.payload for n in raw.notifies]
        eq(got, ["ü"], "notification")
        lc.execute(sa.text("unlisten *"))


def t_copy():
    import io
    with ac_engine.connect() as c:
        cur = c.connection.dbapi_connection.cursor()
        data = "".join("%d\trow %d\n" % (i, i) for i in range(500))
        cur.copy_expert("copy %s.copy_t (a, b) from stdin" % S, io.StringIO(data))
        out = io.StringIO()
        cur.copy_expert("copy (select a, b from %s.copy_t order by a) to stdout" % S, out)
        eq(out.getvalue(), data, "copy round trip")
        eq(c.execute(sa.text("select 1")).scalar(), 1, "session after copy")


def t_pipeline():
    with ac_engine.connect() as c:  # executemany: psycopg2 execute_values pages
        c.execute(items.insert(), [{"k": 900 + i, "v": "many %d" % i, "n": i}
                                   for i in range(2500)])
        eq(c.execute(sa.text("select count(*) from %s.items where k between 900 and 3399" % S)
                     ).scalar(), 2500, "executemany rows")
    with orm.Session(engine) as s, s.begin():  # ORM bulk insert with RETURNING ids
        objs = [Item(k=5000 + i, v="bulk") for i in range(300)]
        s.add_all(objs)
        s.flush()
        check(all(o.id for o in objs), "ids returned")


def t_read_only_tx():
    ro = engine.execution_options(postgresql_readonly=True)
    with ro.connect() as c:
        with c.begin():
            eq(c.execute(sa.text("select count(*) from %s.only_here" % S)).scalar(), 1, "read")
        try:
            with c.begin():
                c.execute(items.insert().values(k=700, v="ro"))
            check(False, "insert in a read-only transaction succeeded")
        except sa.exc.DBAPIError as e:
            expect_sqlstate(e, "25006", "insert in read-only tx")
    with ac_engine.connect() as c:
        on_primary(c.execute(items.insert().values(k=701, v="rw")
                             .returning(sa.func.inet_server_port())).scalar(), "insert after")


run_cases([(n[2:], f) for n, f in list(globals().items()) if n.startswith("t_")])
