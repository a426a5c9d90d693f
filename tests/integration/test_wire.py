# SPDX-License-Identifier: MIT
"""Wire-level tests: the exact message sequences drivers send, sent once to the primary
directly and once through pgsteer (which spreads them over three nodes); the client must get
the same answers in the same order. Also asserts where statements ran."""

import os
import random
import re
import signal
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Cluster, Pgsteer  # noqa: E402
from wire import (Bind, Close, Conn, Describe, Execute, Flush, Parse, Query, Sync,  # noqa: E402
                  error_field, msg, WireError)

cluster = None
proxy = None
eventual = None
shared = None


def setUpModule():
    global cluster, proxy, eventual, shared
    cluster = Cluster(replicas=2)
    cluster.start()
    cluster.psql(cluster.primary_port,
                 "create table w (id int primary key, v int); "
                 "create table wlog (x int); "
                 "insert into w select g, g * 10 from generate_series(1, 100) g; "
                 "create table big as select g as id, md5(g::text) as t "
                 "from generate_series(1, 20000) g")
    cluster.wait_replay()
    # Every statement takes the next replica: the hardest case for session state, which must
    # follow the session to every node.
    proxy = Pgsteer(cluster, extra_yaml="read_balance: statement\n")
    proxy.start()
    # The same without read-your-writes: after a transaction's write a session's reads still
    # go to the replicas, so that what a session change left there shows.
    eventual = Pgsteer(cluster, extra_yaml="read_balance: statement\nconsistency: eventual\n")
    eventual.start()
    # Reads of sessions without state of their own on one backend per replica, shared with
    # other sessions (multiplex_reads; one worker, so that every session meets the same ones).
    shared = Pgsteer(cluster, extra_yaml="read_balance: statement\nconsistency: eventual\n"
                     "multiplex_reads: on\nworkers: 1\n")
    shared.start()


def tearDownModule():
    if shared:
        shared.stop()
    if eventual:
        eventual.stop()
    if proxy:
        proxy.stop()
    if cluster:
        cluster.stop()


def metric(px, name):
    """The value of counter `name` in px's /metrics."""
    import urllib.request
    url = "http://127.0.0.1:%d/metrics" % px.admin_port
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
    raise AssertionError("no " + name)


def metric_sum(px, name):
    """The sum of counter `name` over its labels (per node, say) in px's /metrics."""
    import urllib.request
    url = "http://127.0.0.1:%d/metrics" % px.admin_port
    with urllib.request.urlopen(url, timeout=5) as r:
        return sum(int(line.split()[-1]) for line in r.read().decode().splitlines()
                   if line.startswith(name + "{"))


def multiplexed_reads(px):
    """SHOW STATS's multiplexed_reads of px, from its /metrics."""
    return metric(px, "pgsteer_multiplexed_reads_total")


def primary_backend_pid(via):
    """The pid of the primary's server process behind Conn `via` (asked in a transaction,
    which runs on the primary)."""
    via.send(Query("begin"))
    via.until_ready()
    via.send(Query("select pg_backend_pid()"))
    pid = int(via.until_ready()[1][1][0])
    via.send(Query("commit"))
    via.until_ready()
    return pid


def raw_answers(c):
    """Every message up to the ReadyForQuery, whole but for parameter statuses, notices and
    an error's place in the server's source (F, L, R), which differ between servers."""
    out = []
    while True:
        t, body = c.read()
        if t in (b"S", b"N"):
            continue
        if t == b"E":
            body = tuple(f for f in body.split(b"\0") if f and f[:1] not in b"FLR")
        out.append((t, body))
        if t == b"Z":
            return out


def both(test, script, port=None):
    """Run script(conn) against the primary directly and through pgsteer (at `port`, by
    default the module's proxy); assert that both answer the same and return the answers."""
    direct = Conn(cluster.primary_port)
    via = Conn(port or proxy.port)
    try:
        a = script(direct)
        b = script(via)
    finally:
        direct.close()
        via.close()
    test.assertEqual(a, b)
    return b


# Random steps for the differential tests below: what creates, uses and drops prepared
# statements, by protocol and by SQL, what changes settings (SET, RESET, set_config, some of
# them failing), savepoints, transactions that commit, fail and roll back, reads and writes.
# Returns (kind, statement name or None, the messages).
RANDOM_TEXTS = ("select v from w where id = $1", "select v + 1 from w where id = $1")


def random_step(rng, live):
    n = rng.choice(("a", "b", "c"))
    t, i = rng.choice(RANDOM_TEXTS), rng.randint(1, 9)
    free = [x for x in ("a", "b", "c") if x not in live]
    # Mostly a free name, as drivers do; now and then one that is taken.
    f = rng.choice(free) if free and rng.random() < 0.8 else n
    k = rng.randrange(20)
    if k >= 14:
        return ("sql", None, Query(rng.choice((
            "set search_path = public", "set search_path = pg_catalog, public",
            "reset search_path", "show search_path", "set search_path = 'x",
            "set statement_timeout = 1000", "show statement_timeout", "reset all",
            "set statement_timeout = 'abc'", "set statement_timeout = 2000; select 1/0",
            "select set_config('statement_timeout', '3000', false)",
            "set local statement_timeout = 4000", "savepoint s", "release s",
            "rollback to s", "savepoint t", "rollback to savepoint t",
            "release savepoint t", "set statement_timeout = 5000"))))
    if k == 13 and rng.random() < 0.5:
        # The same through the extended protocol, one in eight failing.
        return ("sql", None, Parse(rng.choice((
            "set statement_timeout = 6000", "set statement_timeout = 'abc'",
            "savepoint s", "rollback to s", "release s", "show statement_timeout",
            "rollback", "commit"))) +
            Bind() + Execute() + Sync)
    if k == 12 and rng.random() < 0.7:
        # The unnamed statement, as drivers use it: parsed for every query (which pgsteer may
        # answer from a statement it keeps prepared), or bound again, described, closed; now
        # and then a text that does not parse.
        return ("sql", None, rng.choice((
            Parse(t) + Bind("", [i]) + Execute() + Sync,
            Parse(t) + Bind("", [i]) + Describe(b"P") + Execute() + Sync,
            Parse(t) + Describe(b"S") + Sync,
            Bind("", [i]) + Execute() + Sync,
            Describe(b"S") + Sync,
            Close(b"S") + Sync,
            Parse("select v from nosuch where id = $1") + Bind("", [i]) + Execute() + Sync)))
    if k == 0:
        return ("create", f, Parse(t, name=f) + Sync)
    if k == 1:
        return ("create", f, Query("prepare %s(int) as %s" % (f, t)))
    if k == 2:
        return ("create", f, Parse(t, name=f) + Bind(f, [i]) + Execute() + Sync)
    if k in (3, 4):
        return ("use", n, Bind(n, [i]) + Execute() + Sync)
    if k in (5, 6):
        return ("use", n, Query("execute %s(%d)" % (n, i)))
    if k == 7:
        return ("use", n, Describe(b"S", n) + Sync)
    if k == 8:
        return ("drop", n, Close(b"S", n) + Sync)
    if k == 9:
        return ("drop", n, Query("deallocate %s" % n))
    if k == 10:
        return ("drop all", None, Query(rng.choice(("deallocate all", "discard all"))))
    if k == 11:
        # (A BEGIN outside a transaction block is answered by pgsteer and sent with what
        # follows, whether it comes as a Query or parsed and bound as the unnamed statement.)
        if rng.random() < 0.25:
            return ("tx", None, Parse(rng.choice(("begin", "start transaction"))) +
                    Bind() + Describe(b"P") + Execute() + Sync)
        return ("tx", None, Query(rng.choice(("begin", "begin read only", "commit",
                                              "rollback", "select 1/0"))))
    # A write that takes no lock the other connection's open transaction could hold.
    # (A literal of two digits or more becomes a parameter of a statement kept prepared.)
    return ("sql", None, Query(rng.choice(("insert into wlog values (%d)" % i,
                                           "select v from w where id = %d" % i if i % 2 else
                                           "select v from w where id + 10 = %d" % (i + 10)))))


def run_random_sequences(test, seeds, steps, most_at_once, same, port=None):
    """For every seed, send random_step()s to the primary and through pgsteer (at `port`, by
    default the module's proxy or `eventual`), up to `most_at_once` of them before reading the
    answers; fail at the first answers that are not `same(direct's, pgsteer's)`."""
    for seed in seeds:
        rng = random.Random(seed)
        # Two in three without read-your-writes, whose reads after a write would go to the
        # primary and hide what a replica's session holds.
        direct = Conn(cluster.primary_port)
        via = Conn(port or (proxy.port if seed % 3 == 0 else eventual.port))
        live, done = set(), []
        try:
            for _ in range(rng.randint(*steps)):
                n = rng.randint(1, most_at_once) if most_at_once > 1 else 1
                chunk = [random_step(rng, live) for _ in range(n)]
                data = b"".join(d for _, _, d in chunk)
                direct.send(data)
                a = direct.until_ready(n)
                via.send(data)
                b = via.until_ready(n)
                done.extend(d for _, _, d in chunk)
                test.assertTrue(same(a, b), "seed %d: %r != %r, after %r" % (seed, a, b, done))
                # The names in use, to pick free ones (for several steps at once, roughly).
                ok = n > 1 or not any(m[0] == "E" for m in a)
                for kind, name, _ in chunk:
                    if kind == "create" and ok:
                        live.add(name)
                    elif kind == "drop" and ok:
                        live.discard(name)
                    elif kind == "drop all" and ok:
                        live.clear()
        finally:
            direct.close()
            via.close()


class WireTest(unittest.TestCase):
    def test_extended_unnamed_roundtrip(self):
        def s(c):
            c.send(Parse("select $1::int + 1 as x") + Bind(params=[41]) + Describe(b"P") +
                   Execute() + Sync)
            return c.until_ready()
        out = both(self, s)
        self.assertIn(("D", ("42",)), out)

    def test_named_statement_follows_reads_across_nodes(self):
        def s(c):
            out = []
            c.send(Parse("select v from w where id = $1", name="s1") + Sync)
            out += c.until_ready()
            for i in range(1, 7):  # round robin spreads these over both replicas
                c.send(Bind("s1", [i]) + Execute() + Sync)
                out += c.until_ready()
            c.send(Close(b"S", "s1") + Sync)
            out += c.until_ready()
            # the name is free again everywhere
            c.send(Parse("select v + 1 from w where id = $1", name="s1") + Bind("s1", [2]) +
                   Execute() + Sync)
            out += c.until_ready()
            c.send(Bind("s1", [3]) + Execute() + Sync)
            out += c.until_ready()
            return out
        out = both(self, s)
        self.assertIn(("D", ("60",)), out)
        self.assertIn(("D", ("31",)), out)

    def test_pipeline_mixing_reads_and_writes_keeps_order(self):
        def s(c):
            c.send(Parse("select v from w where id = 5") + Bind() + Execute() + Sync +
                   Parse("update w set v = v + 1 where id = 6 returning v") + Bind() +
                   Execute() + Sync +
                   Parse("select count(*) from w") + Bind() + Execute() + Sync +
                   Query("select 1; select 2") +
                   Parse("update w set v = v - 1 where id = 6 returning v") + Bind() +
                   Execute() + Sync)
            return c.until_ready(5)
        both(self, s)

    def test_flush_without_sync(self):
        def s(c):
            out = []
            c.send(Parse("select id, v from w where id = $1", name="fl") + Describe(b"S", "fl") +
                   Flush)
            out += c.take(3)  # ParseComplete, ParameterDescription, RowDescription
            c.send(Bind("fl", [7]) + Execute() + Sync)
            out += c.until_ready()
            c.send(Parse("insert into w values (1000, 1) returning id") + Describe(b"S") + Flush)
            out += c.take(3)
            c.send(Bind() + Execute() + Sync)
            out += c.until_ready()
            c.send(Query("delete from w where id = 1000"))
            out += c.until_ready()
            return out
        both(self, s)

    def test_flushed_read_prefix_then_write_in_one_batch(self):
        def s(c):
            out = []
            c.send(Parse("select v from w where id = $1", name="pre") + Describe(b"S", "pre") +
                   Flush)
            out += c.take(3)
            c.send(Parse("update w set v = v where id = $1 returning v") + Bind(params=[11]) +
                   Execute() + Bind("pre", [12]) + Execute() + Sync)
            out += c.until_ready()
            c.send(Bind("pre", [13]) + Execute() + Sync)
            return out + c.until_ready()
        out = both(self, s)
        self.assertNotIn("E", [m[0] for m in out])

    def test_pipelined_named_statements_alternating_nodes(self):
        def s(c):
            data = Parse("select v from w where id = $1", name="r") + Sync
            data += Parse("update w set v = v where id = $1 returning v", name="u") + Sync
            for i in range(1, 9):
                data += Bind("r", [i]) + Execute() + Sync + Bind("u", [i]) + Execute() + Sync
            data += Close(b"S", "r") + Close(b"S", "u") + Sync
            c.send(data)
            return c.until_ready(19)
        out = both(self, s)
        self.assertNotIn("E", [m[0] for m in out])

    def test_misclassified_write_is_retried_on_primary(self):
        cluster.psql(cluster.primary_port,
                     "create or replace function bump() returns int language sql as "
                     "$$ update w set v = v + 1 where id = 50 returning v $$")
        cluster.wait_replay()
        c = Conn(proxy.port)
        try:
            for _ in range(4):  # both replicas refuse it; each time the primary answers
                # after a write the session reads from the primary until a monitor round has
                # bounded the write's LSN (read-your-writes): wait, so the read tries a replica
                time.sleep(0.5)
                # and the same run as a kept statement (its literals parameters), its
                # RowDescription held back until the replica has accepted it
                for sql in ("select bump() as b, inet_server_port() as p",
                            "select bump() as b, inet_server_port() as p where 10 = 11 - 1"):
                    c.send(Query(sql))
                    out = c.until_ready()
                    self.assertEqual([m[0] for m in out], ["T", "D", "C", "Z"])
                    self.assertEqual(out[0], ("T", ("b", "p")))
                    self.assertEqual(int(out[1][1][1]), cluster.primary_port)
                    time.sleep(0.5)
        finally:
            c.close()
        with open(proxy.log_path) as f:
            self.assertGreaterEqual(f.read().count("retrying it on the primary"), 8)

    def test_error_in_batch_skips_to_sync(self):
        def s(c):
            c.send(Parse("select 1/0") + Bind() + Execute() +
                   Parse("select 1") + Bind() + Execute() + Sync +
                   Parse("select 2") + Bind() + Execute() + Sync)
            return c.until_ready(2)
        out = both(self, s)
        # 1/0 is folded at Bind; the rest of the first batch is skipped up to its Sync
        self.assertEqual(out[:3], [("1", None), ("E", "22012"), ("Z", "I")])

    def test_begin_batched_with_statements(self):
        def s(c):
            c.send(Parse("begin") + Bind() + Execute() +
                   Parse("update w set v = v where id = 8 returning v") + Bind() + Execute() +
                   Parse("select v from w where id = 9") + Bind() + Execute() + Sync)
            out = c.until_ready()
            c.send(Parse("commit") + Bind() + Execute() + Sync)
            return out + c.until_ready()
        out = both(self, s)
        self.assertIn(("Z", "T"), out)
        self.assertEqual(out[-1], ("Z", "I"))

    def test_error_in_transaction_then_rollback(self):
        def s(c):
            out = []
            for sql in ("begin", "select 1/0", "select 1", "rollback", "select 3"):
                c.send(Query(sql))
                out += c.until_ready()
            return out
        out = both(self, s)
        self.assertIn(("Z", "E"), out)
        self.assertEqual(out[-1], ("Z", "I"))

    def test_simple_multi_statement_and_empty(self):
        def s(c):
            out = []
            for sql in ("select 1; select 2", "", ";", "select 1; select 1/0; select 3",
                        "-- only a comment"):
                c.send(Query(sql))
                out += c.until_ready()
            return out
        both(self, s)

    def test_copy_out_and_in(self):
        def s(c):
            c.send(Query("copy (select id from big where id <= 3) to stdout"))
            out = c.until_ready()
            c.send(Query("create temp table ci (x int)"))
            out += c.until_ready()
            c.send(Query("copy ci from stdin"))
            out += c.take(1)
            c.send(msg(b"d", b"1\n2\n") + msg(b"c"))
            out += c.until_ready()
            c.send(Query("select sum(x) from ci"))
            out += c.until_ready()
            return out
        out = both(self, s)
        self.assertIn(("D", ("3",)), out)

    def test_extended_copy_in_with_sync_before_data(self):
        # pg8000's way: Execute, Flush, Sync, then the data once CopyInResponse arrived; the
        # server ignores a Sync received in copy-in and answers the one after CopyDone.
        def s(c):
            c.send(Query("create temp table cx (x int)"))
            out = c.until_ready()
            for rnd in range(2):
                c.send(Parse("copy cx from stdin", name="cp%d" % rnd) + Flush)
                out += c.take(1)
                c.send(Bind("cp%d" % rnd) + Flush + Execute() + Flush + Sync)
                out += c.take(2)  # BindComplete, CopyInResponse
                c.send(msg(b"d", b"1\n2\n") + msg(b"c") + Sync)
                out += c.until_ready()
                c.send(Parse("copy (select sum(x) from cx) to stdout") + Bind() + Execute() +
                       Sync)
                out += c.until_ready()
            return out
        out = both(self, s)
        self.assertEqual(out.count(("C", "COPY 2")), 2)

    def test_large_result(self):
        def s(c):
            c.send(Query("select * from big order by id"))
            return c.until_ready()
        out = both(self, s)
        self.assertEqual(len([m for m in out if m[0] == "D"]), 20000)

    def test_slow_reader_of_a_large_copy_gets_everything(self):
        # 60 MB through pgsteer to a client that does not read for a while: pgsteer stops
        # reading the node while the client is behind, and resumes without losing a byte.
        c = Conn(proxy.port)
        try:
            c.send(Query("copy (select repeat('x', 1000) from generate_series(1, 60000)) "
                         "to stdout"))
            time.sleep(1.0)
            rows = 0
            while True:
                t, body = c.read()
                if t == b"d":
                    self.assertEqual(len(body), 1001)
                    rows += 1
                elif t == b"Z":
                    break
            self.assertEqual(rows, 60000)
            c.send(Query("select 1"))
            self.assertEqual(c.until_ready()[1], ("D", ("1",)))
        finally:
            c.close()

    def test_reads_on_replicas_writes_on_primary(self):
        c = Conn(proxy.port)
        try:
            seen = set()
            for _ in range(6):
                c.send(Query("select inet_server_port()"))
                seen.add(int(c.until_ready()[1][1][0]))
            self.assertEqual(seen, set(cluster.replica_ports))
            c.send(Parse("select inet_server_port(), nextval('pg_catalog.pg_class_oid_seq')")
                   + Bind() + Execute() + Sync)
            out = c.until_ready()
            self.assertEqual(out[0][0], "E")  # no such sequence: but it ran on the primary
            c.send(Parse("insert into w values (2000, 1) returning inet_server_port()") +
                   Bind() + Execute() + Sync)
            out = c.until_ready()
            self.assertEqual(int(out[2][1][0]), cluster.primary_port)
            c.send(Query("delete from w where id = 2000"))
            c.until_ready()
        finally:
            c.close()

    def test_set_follows_session_to_every_node(self):
        c = Conn(proxy.port)
        try:
            c.send(Query("set application_name = 'wire-set'"))
            c.until_ready()
            seen = {}
            for _ in range(4):
                c.send(Query("select inet_server_port(), current_setting('application_name')"))
                row = c.until_ready()[1][1]
                seen[int(row[0])] = row[1]
            c.send(Query("insert into w values (3000, 1) returning "
                         "current_setting('application_name')"))
            out = c.until_ready()
            self.assertEqual(out[1][1][0], "wire-set")
            self.assertEqual(set(seen), set(cluster.replica_ports))
            self.assertEqual(set(seen.values()), {"wire-set"})
            c.send(Query("delete from w where id = 3000"))
            c.until_ready()
        finally:
            c.close()

    def test_set_config_follows_session_to_every_node(self):
        c = Conn(proxy.port)
        try:
            c.send(Query("select set_config('application_name', 'via-set-config', false)"))
            c.until_ready()
            time.sleep(0.4)  # a write function: reads wait one monitor round
            seen = {}
            for _ in range(4):
                c.send(Query("select inet_server_port(), current_setting('application_name')"))
                row = c.until_ready()[1][1]
                seen[int(row[0])] = row[1]
            self.assertEqual(set(seen), set(cluster.replica_ports))
            self.assertEqual(set(seen.values()), {"via-set-config"})
        finally:
            c.close()

    def test_discard_all_resets_pgsteer_settings(self):
        c = Conn(proxy.port)
        try:
            for q in ("set pgsteer.consistency = strong", "set pgsteer.min_lsn = '5/0'",
                      "discard all"):
                c.send(Query(q))
                self.assertEqual(c.until_ready()[-1], ("Z", "I"))
            c.send(Query("show pgsteer.consistency"))
            self.assertEqual(c.until_ready()[1], ("D", ("session",)))
            c.send(Query("show pgsteer.min_lsn"))
            self.assertEqual(c.until_ready()[1], ("D", ("0/0",)))
        finally:
            c.close()

    def test_read_only_transactions_by_setting_go_to_replicas(self):
        c = Conn(proxy.port)

        def port(sql):
            c.send(Query(sql))
            out = c.until_ready()
            self.assertEqual(out[-1], ("Z", "I"), out)
            return int([m for m in out if m[0] == "D"][0][1][0])
        try:
            replicas, primary = set(cluster.replica_ports), cluster.primary_port
            self.assertEqual(port("begin; select inet_server_port(); commit"), primary)
            self.assertIn(port("begin; set transaction read only; select inet_server_port(); "
                               "commit"), replicas)
            c.send(Query("set default_transaction_read_only = on"))
            c.until_ready()
            self.assertIn(port("begin; select inet_server_port(); commit"), replicas)
            self.assertEqual(port("begin read write; select inet_server_port(); commit"), primary)
            c.send(Query("set session characteristics as transaction read write"))
            c.until_ready()
            self.assertEqual(port("begin; select inet_server_port(); commit"), primary)
            c.send(Query("set session characteristics as transaction read only"))
            c.until_ready()
            self.assertIn(port("begin; select inet_server_port(); commit"), replicas)
            c.send(Query("reset all"))
            c.until_ready()
            self.assertEqual(port("begin; select inet_server_port(); commit"), primary)
        finally:
            c.close()

    def test_sql_prepare_execute_deallocate(self):
        def s(c):
            out = []
            for sql in ("prepare q1(int) as select v from w where id = $1",
                        "execute q1(1)", "execute q1(2)", "execute q1(3)",
                        "prepare u1 as update w set v = v where id = 4 returning v",
                        "execute u1", "deallocate q1", "execute q1(1)", "deallocate all"):
                c.send(Query(sql))
                out += c.until_ready()
            return out
        out = both(self, s)
        self.assertIn(("E", "26000"), out)  # q1 gone after DEALLOCATE, wherever it runs

    def test_sql_deallocate_of_a_parsed_statement(self):
        # A statement made with Parse, used on both replicas (and so prepared on both), then
        # dropped with SQL DEALLOCATE, which runs on one node only: the name must be free
        # again on every node, and a DEALLOCATE must find the statement wherever it runs.
        def s(c):
            out = []
            for name in ("s_dealloc", "s_dealloc2"):
                c.send(Parse("select v from w where id = $1", name=name) + Sync)
                out += c.until_ready()
            for i in range(1, 7):  # round robin spreads these over both replicas
                c.send(Bind("s_dealloc", [i]) + Execute() + Sync)
                out += c.until_ready()
            c.send(Query("deallocate s_dealloc"))
            out += c.until_ready()
            c.send(Parse("select v + 1 from w where id = $1", name="s_dealloc") + Sync)
            out += c.until_ready()
            for i in range(1, 7):
                c.send(Bind("s_dealloc", [i]) + Execute() + Sync)
                out += c.until_ready()
            for _ in range(2):  # never bound: prepared on the node the DEALLOCATE takes
                c.send(Query("deallocate s_dealloc2"))
                out += c.until_ready()
            c.send(Query("deallocate s_dealloc"))
            out += c.until_ready()
            return out
        out = both(self, s)
        self.assertEqual(out.count(("C", "DEALLOCATE")), 3, out)
        self.assertIn(("D", ("61",)), out)  # the second text
        self.assertEqual([m for m in out if m[0] == "E"], [("E", "26000")])

    def test_protocol_close_of_a_sql_prepared_statement(self):
        # The other way round: PREPARE in SQL, used on both replicas, closed with the
        # protocol's Close: the name must be free again on every node.
        def s(c):
            out = []
            c.send(Query("prepare q_close(int) as select v from w where id = $1"))
            out += c.until_ready()
            for i in range(1, 7):
                c.send(Query("execute q_close(%d)" % i))
                out += c.until_ready()
            c.send(Close(b"S", "q_close") + Sync)
            out += c.until_ready()
            c.send(Query("prepare q_close(int) as select v + 1 from w where id = $1"))
            out += c.until_ready()
            for i in range(1, 7):
                c.send(Query("execute q_close(%d)" % i))
                out += c.until_ready()
            c.send(Query("deallocate q_close"))
            out += c.until_ready()
            return out
        out = both(self, s)
        self.assertIn(("D", ("61",)), out)  # the second text
        self.assertEqual([m for m in out if m[0] == "E"], [])

    def test_settings_after_failures_and_rollbacks(self):
        # A SET that fails, a SET in a transaction that rolls back (or fails and commits,
        # which rolls back) and one in a transaction that commits: SHOW on every replica
        # (each statement goes to the next one) must say what the server says.
        def s(c):
            out = []
            for sql in ("set statement_timeout = 1000", "set statement_timeout = 'abc'",
                        "show statement_timeout", "show statement_timeout",
                        "begin", "set statement_timeout = 2000", "rollback",
                        "show statement_timeout", "show statement_timeout",
                        "begin", "set statement_timeout = 3000", "select 1/0", "commit",
                        "show statement_timeout", "show statement_timeout",
                        "begin", "reset all", "rollback",
                        "show statement_timeout", "show statement_timeout",
                        "begin", "set statement_timeout = 4000", "commit",
                        "show statement_timeout", "show statement_timeout",
                        "set statement_timeout = 5000; select 1/0",
                        "show statement_timeout", "show statement_timeout"):
                c.send(Query(sql))
                out += c.until_ready()
            return out
        out = both(self, s, eventual.port)
        shown = [m[1][0] for m in out if m[0] == "D"]
        self.assertEqual(shown, ["1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "4s", "4s",
                                 "4s", "4s"])

    def test_settings_after_rollback_to_savepoint(self):
        # ROLLBACK TO a savepoint undoes the settings changed after it and keeps the ones
        # before; RELEASE keeps them all; a COMMIT after a ROLLBACK TO commits. SHOW on every
        # replica afterwards (each statement goes to the next one) must say what the server
        # says, whether the savepoints come as Query or as Parse/Bind/Execute.
        def ext(sql):
            return Parse(sql) + Bind() + Execute() + Sync

        def s(c):
            out = []
            show = ["show statement_timeout"] * 2
            for sql in (["begin", "set statement_timeout = 1000", "savepoint a",
                         "set statement_timeout = 2000", "savepoint b",
                         "set statement_timeout = 3000", "rollback to savepoint b",
                         "show statement_timeout", "rollback to a", "show statement_timeout",
                         "set statement_timeout = 4000", "release a", "commit"] + show +
                        ["begin", "savepoint a", "set statement_timeout = 5000", "select 1/0",
                         "rollback to a", "commit"] + show +
                        ["begin", "set statement_timeout = 6000", "savepoint a",
                         "rollback to a", "commit"] + show +
                        ["begin", "set statement_timeout = 7000", "savepoint a",
                         "rollback to a; commit"] + show +
                        ["begin", "savepoint \"A\"", "savepoint a",
                         "set statement_timeout = 8000", "rollback to \"A\"", "release a",
                         "commit"] + show +
                        ["begin", ext("savepoint a"), ext("set statement_timeout = 9000"),
                         ext("savepoint b"), ext("set statement_timeout = 10000"),
                         ext("rollback to savepoint b"), "show statement_timeout",
                         ext("rollback to a"), ext("commit")] + show +
                        ["begin", "savepoint a", "savepoint a", "set statement_timeout = 11000",
                         "rollback to a", "release a", "rollback to a", "commit"] + show):
                c.send(Query(sql) if isinstance(sql, str) else sql)
                out += c.until_ready()
            return out
        out = both(self, s, eventual.port)
        shown = [m[1][0] for m in out if m[0] == "D"]
        self.assertEqual(shown, ["2s", "1s", "4s", "4s", "4s", "4s", "6s", "6s", "7s", "7s",
                                 "7s", "7s", "9s", "7s", "7s", "7s", "7s"])

    def test_set_pipelined_behind_rollback_to_savepoint_is_kept(self):
        # A ROLLBACK TO ends the transaction's failure before its answer comes back: a SET
        # sent right behind it runs, and must follow the session to the replicas.
        def s(c):
            out = []
            for sql in ("begin", "savepoint a", "select 1/0"):
                c.send(Query(sql))
                out += c.until_ready()
            c.send(Query("rollback to a") + Query("set statement_timeout = 7000") +
                   Query("commit"))
            for _ in range(3):
                out += c.until_ready()
            for _ in range(2):
                c.send(Query("show statement_timeout"))
                out += c.until_ready()
            return out
        out = both(self, s, eventual.port)
        self.assertEqual([m[1][0] for m in out if m[0] == "D"], ["7s", "7s"])

    def test_failed_set_through_the_extended_protocol_changes_nothing(self):
        # A SET sent as Parse/Bind/Execute that the server refuses (or that runs after an
        # error in its batch) changes nothing; one that runs is kept on every replica.
        def s(c):
            out = []
            for data in (Parse("set statement_timeout = 1000") + Bind() + Execute() + Sync,
                         Parse("set statement_timeout = 'abc'") + Bind() + Execute() + Sync,
                         Query("show statement_timeout"), Query("show statement_timeout"),
                         Parse("select 1/0") + Bind() + Execute() +
                         Parse("set statement_timeout = 2000") + Bind() + Execute() + Sync,
                         Query("show statement_timeout"), Query("show statement_timeout"),
                         Parse("set statement_timeout = 3000") + Bind() + Execute() +
                         Parse("select 1/0") + Bind() + Execute() + Sync,
                         Query("show statement_timeout"), Query("show statement_timeout")):
                c.send(data)
                out += c.until_ready()
            return out
        out = both(self, s, eventual.port)
        shown = [m[1][0] for m in out if m[0] == "D"]
        self.assertEqual(shown, ["1s", "1s", "1s", "1s", "1s", "1s"])

    def test_pgsteer_settings_through_the_extended_protocol(self):
        # SET and SHOW of pgsteer.* sent as Parse/Bind/Execute (pgJDBC, psycopg 3, asyncpg)
        # are answered by pgsteer as they are when sent as a Query: no node sees them.
        c = Conn(eventual.port)
        try:
            c.send(Parse("set pgsteer.consistency = strong") + Bind() + Describe(b"P") +
                   Execute() + Sync)
            self.assertEqual(c.until_ready(), [("1", None), ("2", None), ("n", None),
                                               ("C", "SET"), ("Z", "I")])
            c.send(Parse("show pgsteer.consistency") + Bind() + Describe(b"P") + Execute() +
                   Sync)
            self.assertEqual(c.until_ready(), [("1", None), ("2", None),
                                               ("T", ("pgsteer.consistency",)),
                                               ("D", ("strong",)), ("C", "SHOW"), ("Z", "I")])
            # strong: reads go to the primary
            c.send(Parse("select inet_server_port()") + Bind() + Execute() + Sync)
            self.assertEqual(c.until_ready()[2], ("D", (str(cluster.primary_port),)))
            # Prepared by name in one batch and run in later ones, as asyncpg does.
            c.send(Parse("show pgsteer.last_write_lsn", name="lsn") + Describe(b"S", "lsn") +
                   Sync)
            self.assertEqual(c.until_ready(), [("1", None), ("t", None),
                                               ("T", ("pgsteer.last_write_lsn",)), ("Z", "I")])
            c.send(Query("insert into wlog values (1)"))
            c.until_ready()
            c.send(Bind("lsn") + Execute() + Sync)
            out = c.until_ready()
            self.assertEqual([m[0] for m in out], ["2", "D", "C", "Z"])
            self.assertRegex(out[1][1][0], r"^[0-9A-F]+/[0-9A-F]+$")
            self.assertNotEqual(out[1][1][0], "0/0")
            # A name in use is refused (42P05) and the statement stays; a portal closed in the
            # batch is gone for the Execute after it (34000), as on a server.
            c.send(Parse("show pgsteer.min_lsn", name="lsn") + Sync)
            self.assertEqual(c.until_ready(), [("E", "42P05"), ("Z", "I")])
            c.send(Bind("lsn") + Close(b"P") + Execute() + Sync)
            self.assertEqual(c.until_ready(), [("2", None), ("3", None), ("E", "34000"),
                                               ("Z", "I")])
            c.send(Close(b"S", "lsn") + Sync)
            self.assertEqual(c.until_ready(), [("3", None), ("Z", "I")])
            c.send(Bind("lsn") + Execute() + Sync)
            self.assertEqual(c.until_ready(), [("E", "26000"), ("Z", "I")])
            # An error skips the rest of its batch, as on a server.
            c.send(Parse("set pgsteer.consistency = sometimes") + Bind() + Execute() +
                   Parse("set pgsteer.consistency = session") + Bind() + Execute() + Sync)
            self.assertEqual(c.until_ready(), [("1", None), ("2", None), ("E", "22023"),
                                               ("Z", "I")])
            c.send(Parse("set pgsteer.consistency = eventual") + Bind() + Execute() + Sync)
            self.assertEqual(c.until_ready(), [("1", None), ("2", None), ("C", "SET"),
                                               ("Z", "I")])
            # eventual: a read right after a write still goes to a replica
            c.send(Query("insert into wlog values (2)"))
            c.until_ready()
            c.send(Parse("select inet_server_port()") + Bind() + Execute() + Sync)
            self.assertIn(int(c.until_ready()[2][1][0]), cluster.replica_ports)
            # The statement after them is the client's own again.
            c.send(Parse("select $1::int + 1") + Bind(params=[1]) + Execute() + Sync)
            self.assertEqual(c.until_ready()[2], ("D", ("2",)))
        finally:
            c.close()

    def test_statements_under_a_search_path_that_hides_their_table(self):
        # A server re-parses a prepared statement under the search_path of the moment when it
        # runs it, so after a SET that hides its table it fails (42P01), by Bind and by SQL
        # EXECUTE, DEALLOCATE still drops it, and it works again once the table is visible:
        # the same through pgsteer, whose re-prepare on another node happens under the settings
        # of the moment too.
        def s(c):
            out = []
            for data in (Parse("select v from w where id = $1", name="hid") + Sync,
                         Parse("select v + 1 from w where id = $1", name="hid2") + Sync,
                         Query("set search_path = pg_catalog"),
                         Bind("hid", [1]) + Execute() + Sync,
                         Query("execute hid(2)"), Query("execute hid(3)"),
                         Query("deallocate hid2"),
                         Query("reset search_path"),
                         Bind("hid", [4]) + Execute() + Sync, Query("execute hid(5)"),
                         Bind("hid2", [6]) + Execute() + Sync):
                c.send(data)
                out += c.until_ready()
            return out
        out = both(self, s, eventual.port)
        self.assertEqual([m for m in out if m[0] in "ED"],
                         [("E", "42P01"), ("E", "42P01"), ("E", "42P01"), ("D", ("40",)),
                          ("D", ("50",)), ("E", "26000")])

    def test_unnamed_statements_are_kept_prepared(self):
        self.maxDiff = None
        # Drivers that do not keep statements prepared parse the same text as the unnamed
        # statement for every query. Each backend keeps it prepared under a name of its own
        # and answers the next Parse of it with a Parse of nothing, binding the kept one: the
        # answers are the same as one server's, the unnamed statement can still be bound
        # again, described and closed, and the counters show the node did not parse it anew.
        prepared = metric(proxy, "pgsteer_unnamed_statements_prepared_total")
        reused = metric(proxy, "pgsteer_unnamed_statements_reused_total")

        def s(c):
            out = []
            for data in [Parse("select v from w where id = $1") + Bind("", [i]) +
                         Describe(b"P") + Execute() + Sync for i in range(1, 9)] + [
                    Parse("select v, id from w where id = $1", types=(23,)) + Describe(b"S") +
                    Bind("", [3]) + Execute() + Sync,
                    Bind("", [4]) + Describe(b"P") + Execute() + Sync,
                    Describe(b"S") + Sync,
                    Bind("", [5]) + Execute() + Sync,
                    Query("select 1"),
                    Parse("select v from w where id = $1") + Bind("", [6]) + Execute() + Sync,
                    Close(b"S") + Sync,
                    Bind("", [7]) + Execute() + Sync,
                    Parse("select v from nosuch where id = $1") + Bind("", [8]) + Execute() +
                    Sync,
                    Bind("", [9]) + Execute() + Sync]:
                c.send(data)
                out += c.until_ready()
            return out
        out = both(self, s)
        self.assertEqual([m for m in out if m[0] in "DE"],
                         [("D", ("%d" % (i * 10),)) for i in range(1, 9)] +
                         [("D", ("30", "3")), ("D", ("40", "4")), ("D", ("50", "5")),
                          ("D", ("1",)), ("D", ("60",)), ("E", "26000"), ("E", "42P01"),
                          ("E", "26000")])
        # Two replicas, read in turn: each let the text go as it came the first time,
        # prepared it the second and answered the others.
        self.assertGreaterEqual(metric(proxy, "pgsteer_unnamed_statements_prepared_total") -
                                prepared, 2)
        self.assertGreaterEqual(metric(proxy, "pgsteer_unnamed_statements_reused_total") -
                                reused, 4)

    def test_simple_queries_are_kept_prepared(self):
        self.maxDiff = None
        # A simple-protocol Query whose integer literals follow an operator runs as a
        # statement its backend keeps prepared, the literals its parameters. The client must
        # see what one server gives, byte for byte: rows, tags, row descriptions (types of the
        # literals included), errors with their positions (the placeholders are padded to the
        # literals' lengths), and nothing of the Parse, Bind or NoData in between.
        prepared = metric(proxy, "pgsteer_simple_queries_prepared_total")
        reused = metric(proxy, "pgsteer_simple_queries_reused_total")
        texts = ["select v, id from w where id = 12", "select v, id from w where id = 34",
                 "select v + 100 as x, id - 10, 7 * 3 from w where id = 56",
                 "select v from w where id = 9999999999",
                 "select v from w where id = 99999999999999999999",
                 "select v, id = 2147483648, id > -2147483648 from w where id = 00012",
                 # a unary minus folds into these two: an int4 and an int8, not int8, numeric
                 "select -2147483648, pg_typeof(-9223372036854775808) from w where id = 12",
                 "select abs(-2147483648) from w where id = 12",
                 # expressions the server matches against others: as they came
                 "select id + 1, count(*) from w where id = 12 group by id + 1",
                 "select distinct on (id + 1) v from w where id = 12 order by id + 1",
                 # ORDER BY -1 names a position (refused); - 1 + 0 is an expression
                 "select v from w where id = 12 order by -1",
                 "select v from w where id < 14 order by - 1 + 0, (-1), v - 3",
                 # a change that returns rows and fails: the error alone, no RowDescription
                 "update w set v = v + 2147483647 where id = 12 returning v",
                 "with d as (delete from wlog where x = 123456) select v * 2147483647 from w "
                 "where id = 12",
                 "select id from w where id >= 95 and id < 98 order by 1 limit 10",
                 "select nosuch from w where id = 12",
                 "select v from w where id = 12345 and nosuch = 10",
                 "select v from w where id = 1 and v = 123456789 and nosuch = 10",
                 "select v, 'été' from w where id = 12345 and nosuch = 10",
                 "select v / (id - 12) from w where id = 12",
                 "select v from w where id = 12 and v + 2147483647 > 10",
                 "update w set v = v + 0 where id = 77",
                 "delete from wlog where x = 123456",
                 "select v from w where id = 12 for update"]

        def s(c):
            out = []
            for sql in texts * 3 + ["begin", texts[0], "select 1/0", texts[0], "rollback",
                                        texts[1]]:
                c.send(Query(sql))
                out.append((sql, raw_answers(c)))
            return out
        out = both(self, s)
        self.assertIn((b"E", (b"SERROR", b"VERROR", b"C42703",
                              b"Mcolumn \"nosuch\" does not exist", b"P38")),
                      [m for _, r in out for m in r])
        # (Which node a read meets depends on the monitor's timing: after the UPDATE and the
        # DELETE, reads go to the primary until a round shows the replicas caught up. So the
        # counts vary from run to run; without keeping they would be 0.)
        self.assertGreaterEqual(metric(proxy, "pgsteer_simple_queries_prepared_total") -
                                prepared, 6)
        self.assertGreaterEqual(metric(proxy, "pgsteer_simple_queries_reused_total") - reused,
                                5)
        # What the nodes keep: the text with its literal's place taken by a parameter.
        via = Conn(proxy.port)
        try:
            kept = set()
            for _ in range(3):
                via.send(Query("select v from w where id = 12"))
                via.until_ready()
            for _ in range(2):  # one statement to each replica
                via.send(Query("select statement, parameter_types::text from "
                               "pg_prepared_statements where name like 'pgsteer_s%'"))
                kept |= {m[1] for m in via.until_ready() if m[0] == "D"}
            self.assertIn(("select v from w where id = $1", "{integer}"), kept)
            # A text that never comes again (its string differs every time) is not kept:
            # a backend keeps a text the second time it sees it.
            before = metric(proxy, "pgsteer_simple_queries_prepared_total")
            for k in range(20):
                via.send(Query("select v from w where id = 12 and 'once %d' <> ''" % k))
                self.assertIn(("D", ("120",)), via.until_ready())
            self.assertEqual(metric(proxy, "pgsteer_simple_queries_prepared_total"), before)
            for k in range(4):
                via.send(Query("select v from w where id = 12 and 'twice' <> ''"))
                self.assertIn(("D", ("120",)), via.until_ready())
            self.assertGreaterEqual(metric(proxy, "pgsteer_simple_queries_prepared_total"),
                                    before + 1)
            # A text longer than 64 kB goes as it came, however often it comes.
            before = metric(proxy, "pgsteer_simple_queries_prepared_total")
            for k in range(4):
                via.send(Query("select v from w where id = 12 /* %s */" % ("x" * 70000)))
                self.assertIn(("D", ("120",)), via.until_ready())
            self.assertEqual(metric(proxy, "pgsteer_simple_queries_prepared_total"), before)
        finally:
            via.close()

    def test_kept_statements_follow_a_table_that_takes_a_name(self):
        # PostgreSQL plans a prepared statement anew when something it uses changes, not when
        # a new object would take the place of a name in it: a temporary table named as a
        # table that a kept statement reads. One server parses every Query and every unnamed
        # Parse anew, so after the session creates one, what its backends keep is planned
        # anew too. (The first temporary table adds pg_temp to the search path, which makes
        # the server plan anew by itself: the session makes one first.)
        sel = "select v from w where id = 12"

        def s(c):
            out = []

            def q(sql):
                c.send(Query(sql))
                out.append((sql, c.until_ready()))

            def ext(sql, params):
                c.send(Parse(sql) + Bind("", params) + Describe(b"P") + Execute() + Sync)
                out.append((sql, c.until_ready()))

            q("create temp table other (x int)")
            for _ in range(3):
                q(sel)
                ext("select v from w where id = $1", ["12"])
            q("create temp table w (v int, id int)")
            q("insert into w values (4242, 12)")
            for _ in range(2):
                q(sel)
                ext("select v from w where id = $1", ["12"])
            # the same through the extended protocol, and with ALTER ... RENAME
            ext("alter table w rename to w_gone", [])
            for _ in range(2):
                q(sel)
                ext("select v from w where id = $1", ["12"])
            q("discard temp")
            return out
        out = both(self, s)
        rows = [r for sql, r in out if sql.startswith("select")]
        self.assertIn(("D", ("4242",)), rows[7])
        self.assertIn(("D", ("120",)), rows[-1])

    def test_kept_statements_follow_another_sessions_table_that_takes_a_name(self):
        # A table created in a schema earlier in search_path takes the place of a name in every
        # other session's statements: one server parses each Query and unnamed Parse anew and
        # reads the new table, where a statement kept prepared would go on reading the old one
        # (nothing it uses changed). Once such a statement has committed through pgsteer, the
        # backends of every session plan what they keep anew: on the primary at once, on a
        # replica once it has replayed the commit (planned anew before, the statement would
        # find the old table and keep it). Through sessions' own backends and through the
        # backends that multiplex_reads shares. The schema is the user's ("$user", first in
        # the default search_path), made first so that the path itself does not change.
        sel = "select v from shadowed where id = 12"
        ext = "select v from shadowed where id = $1"

        def reads(c):
            # Each text twice in a row: with the statement rotation every replica gets each text
            # in every round, whichever replica the rotation stands at (another session's reads
            # or a replica briefly held off move it), so both keep both from the first call on.
            got = []
            for _ in range(3):
                for _ in range(2):
                    c.send(Query(sel))
                    got += [m[1][0] for m in c.until_ready() if m[0] == "D"]
                for _ in range(2):
                    c.send(Parse(ext) + Bind("", ["12"]) + Describe(b"P") + Execute() + Sync)
                    got += [m[1][0] for m in c.until_ready() if m[0] == "D"]
            return got

        def replay(what):
            for port in cluster.replica_ports:
                cluster.psql(port, "select pg_wal_replay_%s()" % what)

        cluster.psql(cluster.primary_port,
                     "create table shadowed (id int, v text); "
                     "insert into shadowed values (12, 'public')")
        # Fresh instances, configured as the module's proxy and shared: nothing the earlier
        # tests left in their pools or rotations plays a part in the counts below.
        fresh = [Pgsteer(cluster, extra_yaml="read_balance: statement\n"),
                 Pgsteer(cluster, extra_yaml="read_balance: statement\nconsistency: eventual\n"
                         "multiplex_reads: on\nworkers: 1\n")]
        for px in fresh:
            px.start()
            self.addCleanup(px.stop)
            px.wait_replicas_eligible()
        try:
            for px in fresh:
                cluster.psql(cluster.primary_port, "create schema app")
                cluster.wait_replay()
                a, b = Conn(px.port), Conn(px.port)
                try:
                    self.assertEqual(reads(a), ["public"] * 12)
                    # Another session's temporary table is its own: what a keeps stays.
                    b.send(Query("create temp table shadowed (id int, v text)"))
                    self.assertEqual(b.until_ready()[-1], ("Z", "I"))
                    cluster.wait_replay()
                    time.sleep(0.5)
                    # (a window in which a read met a backend new to it, opened or taken from
                    # the pool, or a node was held off, as a loaded machine's replay lag can
                    # make it, prepares anew for a reason of its own: such a window is read
                    # again, and a quiet one decides)
                    def churn():
                        return [metric_sum(px, "pgsteer_node_%s_total" % m)
                                for m in ("backends_opened", "backends_reused", "evictions")]
                    for _ in range(5):
                        before_window = churn()
                        prepared = metric(px, "pgsteer_unnamed_statements_prepared_total")
                        self.assertEqual(reads(a), ["public"] * 12)
                        if churn() == before_window:
                            break
                    else:
                        self.fail("no window without a backend new to a read or a node held off")
                    self.assertEqual(
                        metric(px, "pgsteer_unnamed_statements_prepared_total"), prepared)
                    before = metric(px, "pgsteer_unnamed_statements_reused_total")
                    replay("pause")
                    try:
                        b.send(Query("create table app.shadowed (id int, v text)"))
                        self.assertEqual(b.until_ready()[-1], ("Z", "I"))
                        b.send(Query("insert into app.shadowed values (12, 'app')"))
                        self.assertEqual(b.until_ready()[-1], ("Z", "I"))
                        # the replicas have not replayed it: their answer stands
                        self.assertEqual(reads(a), ["public"] * 12, px.name)
                    finally:
                        replay("resume")
                    cluster.wait_replay()
                    time.sleep(0.5)  # a monitor round that has seen the replicas replay it
                    self.assertEqual(reads(a), ["app"] * 12, px.name)
                    # and what is planned anew is kept again
                    self.assertGreater(
                        metric(px, "pgsteer_unnamed_statements_reused_total"), before)
                finally:
                    a.close()
                    b.close()
                    cluster.psql(cluster.primary_port, "drop schema app cascade")
        finally:
            cluster.psql(cluster.primary_port, "drop table shadowed")
            cluster.wait_replay()

    def test_random_simple_queries_match_the_primary(self):
        # prepare_simple_queries turns a Query's integer literals into typed parameters of a
        # statement the backend keeps: random texts with literals in every place (select
        # lists, WHERE, ORDER BY, LIMIT, GROUP BY, DISTINCT, unary minus, function arguments,
        # the limits of each integer type), each sent three times so that the second and third
        # run as the kept statement, must get what one server gives, byte for byte.
        nums = ("0", "1", "7", "12", "007", "2147483647", "2147483648", "9223372036854775807",
                "9223372036854775808", "99999999999999999999", "10000000000")

        def expr(rng, depth=0):
            k = rng.randrange(12)
            if depth > 2 or k < 3:
                return rng.choice(("v", "id", rng.choice(nums)))
            if k < 6:
                return "%s %s %s" % (expr(rng, depth + 1), rng.choice("+-*/"),
                                     rng.choice(nums))
            if k == 6:
                return "-%s" % rng.choice(nums)
            if k == 7:
                return "(%s)" % expr(rng, depth + 1)
            if k == 8:
                return "abs(%s)" % expr(rng, depth + 1)
            if k == 9:
                return "pg_typeof(%s)::text" % expr(rng, depth + 1)
            if k == 10:
                return "%s %s %s" % (expr(rng, depth + 1), rng.choice(("=", "<", ">=", "<>")),
                                     expr(rng, depth + 1))
            return rng.choice(("- %s", "(select %s)", "case when v > 50 then %s else 0 end",
                               "%s::int8", "sum(v) over (order by id) + %s",
                               "(select count(*) from w where id < %s)")) % expr(rng, depth + 1)

        def text(rng):
            r = rng.random()
            if r < 0.1:  # (a change of nothing, or an error)
                k = rng.choice(nums)
                return "update w set v = v + %s - %s where id = %s%s" % (
                    k, k, rng.choice(nums), rng.choice(("", " returning v - %s, id" % k)))
            if r < 0.2:  # other statement shapes: rows in an order of their own
                a, b = expr(rng), expr(rng)
                return "select * from (%s) q order by q" % rng.choice((
                    "with x as (select v, id from w where id < %s) select %s from x where "
                    "id > %s" % (rng.choice(nums), a, rng.choice(nums)),
                    "select %s from w where id = %s union all select %s from w where id < %s"
                    % (a, rng.choice(nums), b, rng.choice(nums)),
                    "select %s from w where id in (select id from w where v > %s)"
                    % (a, rng.choice(nums)),
                    "select %s from (select v + %s as v, id from w) s where id <= %s"
                    % (a, rng.choice(nums), rng.choice(nums)),
                    "select count(*) filter (where v > %s), exists(select 1 from w where id = %s)"
                    " from w" % (rng.choice(nums), rng.choice(nums)),
                    "select %s, b.v from w a join w b on b.id = a.id + %s where a.id < %s"
                    % (re.sub(r"\b(v|id)\b", r"a.\1", a), rng.choice(nums),
                       rng.choice(nums)),
                    "select %s from w where v::numeric / %s > 1 and v is not null"
                    % (a, rng.choice(nums)),
                    "select %s from w where id = %s or not (v * %s < 0)"
                    % (a, rng.choice(nums), rng.choice(nums))))
            items = [expr(rng) for _ in range(rng.randint(1, 3))]
            distinct = rng.random() < 0.1
            sql = "select %s%s from w where id %s %s" % (
                "distinct " if distinct else "", ", ".join(items),
                rng.choice(("=", "<", "<=", ">", "<>")), rng.choice(("12", "5", "2", "100")))
            if distinct or rng.random() < 0.15:
                if not distinct:
                    sql += " group by %s" % ", ".join(items)
                # (rows in an order of their own, whatever the plan)
                return "select * from (%s) q order by q" % sql
            # The rows' order is the table's only up to its first update: so an order here.
            sql += " order by %s, id" % rng.choice(("1", items[0], "v"))
            if rng.random() < 0.3:
                sql += " limit %s" % rng.choice(("1", "3", "2 + 1"))
            return sql

        n = int(os.environ.get("SEEDS", "150"))
        seed = int(os.environ.get("SEED0", "4711"))

        def s(c):
            rng = random.Random(seed)
            out = []
            for _ in range(n):
                sql = text(rng)
                for _ in range(3):
                    c.send(Query(sql))
                    out.append((sql, raw_answers(c)))
            return out
        for px in (proxy, shared):  # own backends; one shared by every session's reads
            prepared = metric(px, "pgsteer_simple_queries_prepared_total")
            both(self, s, port=px.port)
            self.assertGreater(metric(px, "pgsteer_simple_queries_prepared_total") - prepared,
                               n // 10)

    def test_simple_query_whose_result_type_changed_runs_again(self):
        # A kept statement may not change its result type: after a column's type changes, the
        # node refuses it (0A000) where the Query, parsed anew, simply has the new type.
        # Outside a transaction block pgsteer runs the Query as it came; inside one the client
        # gets the error once, as with any statement it keeps prepared.
        cluster.psql(cluster.primary_port,
                     "create table kept_q (id int primary key, v int); "
                     "insert into kept_q values (10, 7)")
        cluster.wait_replay()
        q = Query("select v from kept_q where id = 10")
        via = Conn(eventual.port)
        try:
            for _ in range(4):
                via.send(q)
                self.assertEqual(via.until_ready(),
                                 [("T", ("v",)), ("D", ("7",)), ("C", "SELECT 1"), ("Z", "I")])
            cluster.psql(cluster.primary_port, "alter table kept_q alter column v type text")
            cluster.wait_replay()
            for _ in range(4):
                via.send(q)
                self.assertEqual(via.until_ready(),
                                 [("T", ("v",)), ("D", ("7",)), ("C", "SELECT 1"), ("Z", "I")])
            for _ in range(2):
                via.send(Query("begin") + q + Query("commit"))
                via.until_ready(3)
            cluster.psql(cluster.primary_port, "alter table kept_q alter column v type bigint "
                         "using v::bigint")
            cluster.wait_replay()
            via.send(Query("begin") + q + Query("rollback"))
            self.assertEqual([m for m in via.until_ready(3) if m[0] in "EZ"],
                             [("Z", "T"), ("E", "0A000"), ("Z", "E"), ("Z", "I")])
            via.send(Query("begin") + q + Query("commit"))
            self.assertIn(("D", ("7",)), via.until_ready(3))
        finally:
            via.close()
            cluster.psql(cluster.primary_port, "drop table kept_q")
        with open(eventual.log_path) as f:
            self.assertIn("refused the statement kept for its query", f.read())

    def test_begin_is_answered_at_once_and_sent_with_the_first_statement(self):
        # defer_begin: a BEGIN outside a transaction block that cannot fail on the primary is
        # answered by pgsteer and sent ahead of the transaction's first statement. The client
        # must see what one server gives, the transaction's statements must run in one
        # transaction with the modes it asked for, and other BEGINs go as they came.
        deferred = metric(proxy, "pgsteer_begins_deferred_total")

        def raw(c):
            out = []
            while True:
                t, body = c.read()
                if t == b"S":
                    continue
                if t in (b"E", b"N"):
                    body = error_field(body, "C")
                out.append((t, body))
                if t == b"Z":
                    return out

        def s(c):
            out = []
            for form in ["begin", "BEGIN;", "start transaction isolation level serializable",
                         "begin transaction read write, not deferrable",
                         "begin isolation level repeatable read read only"]:
                for sql in [form, "show transaction_isolation", "show transaction_read_only",
                            "select pg_current_xact_id() is not null",
                            "select pg_current_xact_id_if_assigned() is not null", "commit"]:
                    c.send(Query(sql))
                    out.append((sql, raw(c)))
            # Pipelined, and a rollback undoes what the transaction wrote.
            c.send(Query("begin") + Query("insert into wlog values (424242)") +
                   Query("rollback") + Query("select count(*) from wlog where x = 424242"))
            out.append(("pipelined", raw(c), raw(c), raw(c), raw(c)))
            # An empty transaction; a BEGIN in a transaction block warns (25001), as ever.
            for sql in ["begin", "commit", "begin", "begin", "select 1", "commit"]:
                c.send(Query(sql))
                out.append((sql, raw(c)))
            # The extended protocol after a BEGIN; an error ends the transaction as ever.
            c.send(Query("begin"))
            out.append(raw(c))
            c.send(Parse("select $1::int * 2") + Bind(params=[21]) + Execute() + Sync)
            out.append(raw(c))
            for sql in ["select 1/0", "select 1", "rollback"]:
                c.send(Query(sql))
                out.append((sql, raw(c)))
            # A BEGIN prepared as a named statement (pgbench -M prepared), with and without a
            # Describe; the session's unnamed statement survives it on the node.
            c.send(Parse("begin", name="b1") + Parse("start transaction read only", name="b2") +
                   Sync)
            out.append(raw(c))
            for name, describe in (("b1", True), ("b2", False)):
                c.send(Parse("select $1::int + 1") + Sync)
                out.append(raw(c))
                c.send(Bind(stmt=name) + (Describe(b"P") if describe else b"") + Execute() +
                       Sync)
                out.append(raw(c))
                c.send(Bind(params=[41]) + Execute() + Sync)
                out.append(raw(c))
                c.send(Query("show transaction_read_only"))
                out.append(raw(c))
                c.send(Query("commit"))
                out.append(raw(c))
            # Parsed as the unnamed statement in the same batch (pgbench -M extended): the
            # session's unnamed statement is the BEGIN from then on, and runs again as one.
            c.send(Parse("BEGIN ISOLATION LEVEL REPEATABLE READ") + Bind() + Describe(b"P") +
                   Execute() + Sync)
            out.append(raw(c))
            c.send(Query("show transaction_isolation"))
            out.append(raw(c))
            c.send(Query("commit"))
            out.append(raw(c))
            c.send(Parse("begin") + Bind() + Execute() + Sync)
            out.append(raw(c))
            c.send(Query("rollback"))
            out.append(raw(c))
            c.send(Parse("begin") + Bind() + Execute() + Sync)
            out.append(raw(c))
            c.send(Bind() + Execute() + Sync)  # inside the block: the node's warning
            out.append(raw(c))
            c.send(Query("rollback"))
            out.append(raw(c))
            # The node holds the statements the client believes it holds: in a failed
            # transaction a Bind of the unnamed one with a parameter too many is refused for
            # that (08P01), where a statement pgsteer had to prepare again would fail first.
            c.send(Parse("begin") + Bind() + Execute() + Sync)
            out.append(raw(c))
            for _ in range(2):
                c.send(Describe(b"S", "nosuch") + Sync)
                out.append(raw(c))
                c.send(Bind("", [7]) + Execute() + Sync)
                out.append(raw(c))
                c.send(Query("rollback"))
                out.append(raw(c))
                c.send(Parse("select $1::int") + Sync + Parse("begin", name="b3") + Sync)
                out.append((raw(c), raw(c)))
                c.send(Bind(stmt="b3") + Execute() + Sync)
                out.append(raw(c))
                c.send(Describe(b"S", "nosuch") + Sync)
                out.append(raw(c))
                c.send(Bind("", [7, 8]) + Execute() + Sync)
                out.append(raw(c))
                c.send(Query("rollback") + Query("deallocate b3"))
                out.append((raw(c), raw(c)))
                c.send(Parse("begin") + Bind() + Execute() + Sync)
                out.append(raw(c))
            c.send(Query("rollback"))
            out.append(raw(c))
            # Not taken (sent as they came): a mode the server refuses, several statements.
            for sql in ["begin isolation level snapshot", "begin; select 2; commit",
                        "/* c */ begin", "commit"]:
                c.send(Query(sql))
                out.append((sql, raw(c)))
            return out
        out = both(self, s)
        self.assertEqual(out[0], ("begin", [(b"C", b"BEGIN\x00"), (b"Z", b"T")]))
        # the transaction's second statement sees the id its first was given
        self.assertEqual(out[4][0], "select pg_current_xact_id_if_assigned() is not null")
        self.assertIn((b"D", b"\x00\x01\x00\x00\x00\x01t"), out[4][1])
        self.assertIn((b"D", b"\x00\x01\x00\x00\x00\x0cserializable"), out[13][1])
        self.assertEqual(out[30][:4], ("pipelined", [(b"C", b"BEGIN\x00"), (b"Z", b"T")],
                                       [(b"C", b"INSERT 0 1\x00"), (b"Z", b"T")],
                                       [(b"C", b"ROLLBACK\x00"), (b"Z", b"I")]))
        self.assertIn((b"D", b"\x00\x01\x00\x00\x00\x010"), out[30][4])
        self.assertIn(("begin", [(b"N", "25001"), (b"C", b"BEGIN\x00"), (b"Z", b"T")]), out)
        self.assertIn(("begin isolation level snapshot", [(b"E", "42601"), (b"Z", b"I")]), out)
        self.assertIn([(b"2", b""), (b"n", b""), (b"C", b"BEGIN\x00"), (b"Z", b"T")], out)
        self.assertIn([(b"2", b""), (b"C", b"START TRANSACTION\x00"), (b"Z", b"T")], out)
        self.assertIn([(b"2", b""), (b"D", b"\x00\x01\x00\x00\x00\x0242"),
                       (b"C", b"SELECT 1\x00"), (b"Z", b"T")], out)
        self.assertIn([(b"1", b""), (b"2", b""), (b"n", b""), (b"C", b"BEGIN\x00"),
                       (b"Z", b"T")], out)
        self.assertIn([(b"2", b""), (b"N", "25001"), (b"C", b"BEGIN\x00"), (b"Z", b"T")], out)
        self.assertEqual(sum(1 for r in out if r == [(b"E", "08P01"), (b"Z", b"E")]), 4)
        # Every plain BEGIN outside a transaction block: 5 forms, then 4, then 2 prepared and
        # 3 parsed, then 3 parsed and 2 prepared.
        self.assertEqual(metric(proxy, "pgsteer_begins_deferred_total") - deferred, 19)

        # The node hears of the transaction with its first statement, not before.
        def state_after_begin(port):
            via = Conn(port)
            direct = Conn(cluster.primary_port)
            try:
                pid = primary_backend_pid(via)

                def state():
                    direct.send(Query("select state from pg_stat_activity where pid = %d" % pid))
                    return direct.until_ready()[1][1][0]
                via.send(Query("begin"))
                self.assertEqual(via.until_ready(), [("C", "BEGIN"), ("Z", "T")])
                before = state()
                via.send(Query("select 1"))
                via.until_ready()
                after = state()
                via.send(Query("commit"))
                self.assertEqual(via.until_ready(), [("C", "COMMIT"), ("Z", "I")])
                return before, after
            finally:
                via.close()
                direct.close()
        self.assertEqual(state_after_begin(proxy.port), ("idle", "idle in transaction"))
        with Pgsteer(cluster, extra_yaml="defer_begin: off\nworkers: 1\n") as px:
            self.assertEqual(state_after_begin(px.port),
                             ("idle in transaction", "idle in transaction"))
            self.assertEqual(metric(px, "pgsteer_begins_deferred_total"), 0)

    def test_a_backend_ending_under_a_held_begin_or_an_open_transaction(self):
        # A BEGIN pgsteer answered but has not sent yet is not lost when the idle backend it
        # would go to ends (a node's administrator terminates it): the transaction begins on
        # the next one, and its statements still run as one transaction.
        via = Conn(proxy.port)
        direct = Conn(cluster.primary_port)
        try:
            pid = primary_backend_pid(via)
            via.send(Query("begin"))
            self.assertEqual(via.until_ready(), [("C", "BEGIN"), ("Z", "T")])
            direct.send(Query("select pg_terminate_backend(%d)" % pid))
            direct.until_ready()
            time.sleep(0.5)  # pgsteer reads the backend's end
            via.send(Query("insert into wlog values (434343)"))
            self.assertEqual(via.until_ready(), [("C", "INSERT 0 1"), ("Z", "T")])
            via.send(Query("rollback"))
            self.assertEqual(via.until_ready(), [("C", "ROLLBACK"), ("Z", "I")])
            direct.send(Query("select count(*) from wlog where x = 434343"))
            self.assertEqual(direct.until_ready()[1], ("D", ("0",)))
            # Once sent, the transaction lives on its backend: if that ends while the
            # transaction is idle, the session ends with it, as on one server, rather than
            # run its next statements outside any transaction.
            via.send(Query("begin"))
            via.until_ready()
            via.send(Query("insert into wlog values (454545)"))
            via.until_ready()
            via.send(Query("select pg_backend_pid()"))
            pid = int(via.until_ready()[1][1][0])
            direct.send(Query("select pg_terminate_backend(%d)" % pid))
            direct.until_ready()
            t, body = via.read()
            self.assertEqual((t, error_field(body, "S")), (b"E", "FATAL"))
            self.assertIn("the transaction's connection to node", error_field(body, "M"))
            with self.assertRaises((WireError, OSError)):
                via.send(Query("insert into wlog values (454546)"))
                via.until_ready()
            direct.send(Query("select count(*) from wlog where x in (454545, 454546)"))
            self.assertEqual(direct.until_ready()[1], ("D", ("0",)))
        finally:
            via.close()
            direct.close()

    def test_pipelined_refusals_drop_only_the_refused_statement(self):
        # Two kept texts; the first's result type changes. Sent pipelined (to the primary: a
        # read on a replica waits for the one before, which may yet move to the primary), its
        # two runs are refused (not run again: other answers are owed behind them), and the
        # refusal must drop that text only: the second text stays kept.
        cluster.psql(cluster.primary_port, "create table kq_a (id int primary key, v int); "
                     "insert into kq_a values (10, 7)")
        cluster.wait_replay()
        a = Query("/* pgsteer:primary */ select v from kq_a where id = 10")
        b = Query("/* pgsteer:primary */ select v from w where id = 12")
        with Pgsteer(cluster, extra_yaml="consistency: eventual\nworkers: 1\n") as px:
            via = Conn(px.port)
            try:
                for q in (a, b) * 3:
                    via.send(q)
                    self.assertIn(("C", "SELECT 1"), via.until_ready())
                self.assertEqual(metric(px, "pgsteer_simple_queries_prepared_total"), 2)
                cluster.psql(cluster.primary_port, "alter table kq_a alter column v type text")
                cluster.wait_replay()
                via.send(a + a + b + b)
                out = via.until_ready(4)
                self.assertEqual(out[-8:], [("T", ("v",)), ("D", ("120",)), ("C", "SELECT 1"),
                                            ("Z", "I")] * 2)
                self.assertEqual([m for m in out[:-8] if m[0] != "T"],
                                 [("E", "0A000"), ("Z", "I"), ("E", "0A000"), ("Z", "I")])
                for q, v in ((a, "7"), (b, "120"), (b, "120"), (a, "7"), (a, "7")):
                    via.send(q)
                    self.assertIn(("D", (v,)), via.until_ready())
                # The second text stayed kept; the first was prepared anew (seen once more).
                self.assertEqual(metric(px, "pgsteer_simple_queries_prepared_total"), 3)
            finally:
                via.close()
                cluster.psql(cluster.primary_port, "drop table kq_a")

    def test_kept_statements_beyond_the_limit_make_room(self):
        # A backend keeps at most 128 texts: a new text then takes the place of the one used
        # least recently, which is closed on the node. Answers stay those of one server, and
        # the texts used all along stay kept. (A text is kept the second time it comes.)
        def run(c, k, i):
            c.send(Parse("select $1::int + %d" % k) + Bind("", [i]) + Execute() + Sync)
            return c.until_ready()

        direct = Conn(cluster.primary_port)
        with Pgsteer(cluster, extra_yaml="consistency: eventual\nworkers: 1\n") as px:
            via = Conn(px.port)
            try:
                for k in range(160):
                    for c in (direct, via, via):
                        self.assertEqual(run(c, k, 1), [("1", None), ("2", None),
                                                        ("D", (str(k + 1),)),
                                                        ("C", "SELECT 1"), ("Z", "I")])
                    # text 0 is used between every two new ones: it is never the oldest
                    self.assertEqual(run(via, 0, k), run(direct, 0, k))
                via.send(Query("select count(*), count(*) filter (where statement = "
                               "'select $1::int + 0') from pg_prepared_statements "
                               "where name like 'pgsteer_s%'"))
                self.assertEqual(via.until_ready()[1], ("D", ("128", "1")))
                self.assertEqual(metric(px, "pgsteer_unnamed_statements_prepared_total"), 160)
                self.assertEqual(metric(px, "pgsteer_unnamed_statements_reused_total"), 160)
            finally:
                via.close()
                direct.close()

    def test_kept_statement_whose_result_type_changed_runs_again(self):
        # A prepared statement may not change its result type: after a column is added to its
        # table, a server refuses to run the kept one (0A000), where the unnamed statement,
        # parsed anew every time, simply has the column. pgsteer closes the kept statement and
        # runs the batch again from its text, so the client sees what one server gives.
        cluster.psql(cluster.primary_port,
                     "create table kept_t (id int primary key, v int); "
                     "insert into kept_t values (1, 10)")
        cluster.wait_replay()
        run = Parse("select * from kept_t where id = $1") + Bind("", [1]) + Describe(b"P") + \
            Execute() + Sync
        via = Conn(eventual.port)
        try:
            for _ in range(4):
                via.send(run)
                self.assertIn(("D", ("1", "10")), via.until_ready())
            cluster.psql(cluster.primary_port, "alter table kept_t add column w int default 7")
            cluster.wait_replay()
            for _ in range(4):
                via.send(run)
                self.assertEqual(via.until_ready(),
                                 [("1", None), ("2", None), ("T", ("id", "v", "w")),
                                  ("D", ("1", "10", "7")), ("C", "SELECT 1"), ("Z", "I")])
            # In a transaction block the refusal ends the transaction, and it is the client's
            # to see: once, after which the text is prepared anew.
            for _ in range(2):
                via.send(Query("begin") + run + Query("commit"))
                via.until_ready(3)
            cluster.psql(cluster.primary_port, "alter table kept_t add column x int default 8")
            cluster.wait_replay()
            via.send(Query("begin") + run + Query("rollback"))
            self.assertEqual([m for m in via.until_ready(3) if m[0] in "EZ"],
                             [("Z", "T"), ("E", "0A000"), ("Z", "E"), ("Z", "I")])
            via.send(Query("begin") + run + Query("commit"))
            self.assertIn(("D", ("1", "10", "7", "8")), via.until_ready(3))
        finally:
            via.close()
            cluster.psql(cluster.primary_port, "drop table kept_t")

    def test_reset_all_keeps_a_discard_not_yet_replayed(self):
        # DISCARD ALL drops statements everywhere, also on nodes that see it only later,
        # after a RESET ALL: a statement parsed before it can be parsed again on any node.
        def s(c):
            out = []
            for _ in range(4):
                c.send(Parse("select v from w where id = $1", name="s_discard") + Sync)
                out += c.until_ready()
                for sql in ("discard all", "reset all", "select 1"):
                    c.send(Query(sql))
                    out += c.until_ready()
            return out
        out = both(self, s)
        self.assertEqual([m for m in out if m[0] == "E"], [])

    def test_random_session_sequences_match_the_primary(self):
        # Random sequences of what creates, uses and drops prepared statements, by protocol
        # and by SQL, and of what changes settings (SET, RESET, set_config, some of them
        # failing), inside and outside transactions that commit, fail and roll back, reads
        # and writes between them, sent one step at a time to the primary and through pgsteer
        # (every statement to the next replica): every answer must be the same, including a
        # Parse or PREPARE of a name that is taken (42P05), everything in a failed
        # transaction (25P02) and SHOW after a rollback. Settings keep `w` visible (see
        # test_statements_under_a_search_path_that_hides_their_table for when they do not).
        run_random_sequences(self, range(int(os.environ.get("SEEDS", "150"))), (5, 25), 1,
                             lambda a, b: a == b)

    def test_random_pipelined_session_sequences_match_the_primary(self):
        # The same random steps, up to four sent at once before reading any answer, as a
        # pipelining client does: what a step changes is recorded when it is sent and undone
        # when its error comes back, after later steps went out. Every answer must be the
        # primary's, but for one known difference (docs/internals.md): a statement sent behind
        # one whose error has not arrived yet may get 26000 where the server says 25P02.
        def same(a, b):
            return len(a) == len(b) and all(
                x == y or (x == ("E", "25P02") and y == ("E", "26000")) for x, y in zip(a, b))

        # Seeds from 1100: among them, sequences that found three of the bugs fixed so far.
        seed0 = int(os.environ.get("SEED0", "1100"))
        run_random_sequences(self, range(seed0, seed0 + int(os.environ.get("SEEDS", "600"))),
                             (3, 10), 4, same)

    def test_random_sequences_with_multiplexed_reads_match_the_primary(self):
        # The random steps through a pgsteer with multiplex_reads: a session's reads share a
        # backend with other sessions' until it changes a setting or opens a transaction, and
        # its answers must still be the primary's, one step at a time and pipelined (with the
        # known difference above).
        def same(a, b):
            return len(a) == len(b) and all(
                x == y or (x == ("E", "25P02") and y == ("E", "26000")) for x, y in zip(a, b))

        before = multiplexed_reads(shared)
        n = int(os.environ.get("SEEDS", "150"))
        run_random_sequences(self, range(5000, 5000 + n), (5, 25), 1, lambda a, b: a == b,
                             port=shared.port)
        run_random_sequences(self, range(6000, 6000 + 2 * n), (3, 10), 4, same,
                             port=shared.port)
        self.assertGreater(multiplexed_reads(shared) - before, n)

    def test_protocol_violation_gets_08P01(self):
        c = Conn(proxy.port)
        try:
            c.send(b"\x01garbage-that-is-not-a-message")
            t, body = c.read()
            self.assertEqual(t, b"E")
            from wire import error_field
            self.assertEqual(error_field(body, "C"), "08P01")
            with self.assertRaises((WireError, OSError)):
                c.read()
        finally:
            c.sock.close()

    def test_bad_startup_packets_do_not_crash(self):
        for payload in (struct.pack("!I", 3), struct.pack("!I", 100000) + b"x" * 10,
                        struct.pack("!II", 8, 12345678), b"\x00\x00"):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
            s.close()
        self.assertTrue(proxy.alive())
        c = Conn(proxy.port)
        c.send(Query("select 1"))
        self.assertEqual(c.until_ready()[1], ("D", ("1",)))
        c.close()

    def test_ssl_request_answered_n(self):
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(struct.pack("!II", 8, 80877103))
        self.assertEqual(s.recv(1), b"N")
        s.close()

    def test_cancel_request(self):
        c = Conn(proxy.port)
        try:
            c.send(Query("select pg_sleep(10)"))
            # A cancel only stops a statement the node is running: wait until one runs it
            # (pgsteer may first have to log in to the replica, which can take a while on a
            # loaded machine), instead of guessing a delay.
            deadline = time.time() + 10
            while not any(cluster.psql(n.port, "select count(*) from pg_stat_activity where "
                                       "state = 'active' and query = 'select pg_sleep(10)'",
                                       user="postgres", db="postgres") != "0"
                          for n in cluster.nodes):
                self.assertLess(time.time(), deadline, "the statement never started")
                time.sleep(0.05)
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            s.sendall(struct.pack("!IIII", 16, 80877102, *c.key))
            s.close()
            t0 = time.time()
            out = c.until_ready()
            self.assertLess(time.time() - t0, 5)
            self.assertIn(("E", "57014"), out)
        finally:
            c.close()

    def test_cancel_connection_stays_open_until_the_node_has_acted(self):
        # PostgreSQL closes a cancel connection once it has signalled the server process, and
        # libpq's PQcancel waits for that close, so that the client's next statement cannot be
        # the one the cancel lands on. pgsteer must close the client's cancel connection only
        # when the node has closed its own: with the primary's postmaster stopped, the cancel
        # is not acted on, and the client's cancel connection stays open; once it runs again,
        # the statement is cancelled and the connection closes.
        with open(os.path.join(cluster.nodes[0].datadir, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        c = Conn(proxy.port)
        stopped = False
        try:
            c.send(Query("begin"))
            c.until_ready()
            c.send(Query("select pg_sleep(10)"))  # in a transaction: on the primary
            deadline = time.time() + 10
            while cluster.psql(cluster.primary_port, "select count(*) from pg_stat_activity "
                               "where state = 'active' and query = 'select pg_sleep(10)'",
                               user="postgres", db="postgres") == "0":
                self.assertLess(time.time(), deadline, "the statement never started")
                time.sleep(0.05)
            os.kill(postmaster, signal.SIGSTOP)
            stopped = True
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            s.sendall(struct.pack("!IIII", 16, 80877102, *c.key))
            s.settimeout(0.5)
            with self.assertRaises(socket.timeout, msg="pgsteer closed the cancel connection "
                                   "before the node acted on the request"):
                s.recv(1)
            os.kill(postmaster, signal.SIGCONT)
            stopped = False
            s.settimeout(5)
            t0 = time.time()
            self.assertEqual(s.recv(1), b"", "the cancel connection closes without an answer")
            s.close()
            out = c.until_ready()
            self.assertLess(time.time() - t0, 5)
            self.assertEqual(out, [("T", ("pg_sleep",)), ("E", "57014"), ("Z", "E")])
            c.send(Query("rollback"))
            self.assertEqual(c.until_ready(), [("C", "ROLLBACK"), ("Z", "I")])
        finally:
            if stopped:
                os.kill(postmaster, signal.SIGCONT)
            c.close()

    def test_what_a_lost_backend_never_answered_did_not_happen(self):
        # A pipeline: a sleeping read, then a batch that prepares statement "s", then a PREPARE
        # (a read, so on the same replica), each queued behind the sleep. The server process
        # ends during the sleep, before it reads the rest: each unit gets an error and its
        # ReadyForQuery, and no ParseComplete or CommandComplete, so for the client neither
        # statement was made, and the session goes on without them: "s" can be prepared again
        # (not 42P05) and "q" does not exist (26000). Then a transaction that changed a setting
        # loses its server process: it is gone, rolled back, and the setting with it.
        def kill(ports, query):
            deadline = time.time() + 10
            while True:
                self.assertLess(time.time(), deadline, "the sleep never started")
                for port in ports:
                    if cluster.psql(port, "select count(pg_terminate_backend(pid)) from "
                                    "pg_stat_activity where query = '%s'" % query,
                                    user="postgres", db="postgres") != "0":
                        return
                time.sleep(0.05)

        with Pgsteer(cluster, extra_yaml="read_balance: session\n") as px:
            c = Conn(px.port)
            try:
                c.send(Parse("select pg_sleep(3)") + Bind() + Execute() + Sync +
                       Parse("select $1::int", name="s") + Bind(stmt="s", params=(1,)) +
                       Execute() + Sync + Query("prepare q as select 1"))
                kill(cluster.replica_ports, "select pg_sleep(3)")
                self.assertEqual(c.until_ready(3), [
                    ("1", None), ("2", None), ("E", "57P01"), ("Z", "I"),  # the node's FATAL
                    ("E", "08006"), ("Z", "I"), ("E", "08006"), ("Z", "I")])
                c.send(Parse("select $1::int", name="s") + Bind(stmt="s", params=(7,)) +
                       Execute() + Sync)
                self.assertEqual(c.until_ready(), [("1", None), ("2", None), ("D", ("7",)),
                                                   ("C", "SELECT 1"), ("Z", "I")])
                c.send(Query("execute q"))
                self.assertEqual(c.until_ready(), [("E", "26000"), ("Z", "I")])

                c.send(Query("set chaos.tag = 'before'"))
                c.until_ready()
                c.send(Query("begin"))
                c.until_ready()
                c.send(Query("set chaos.tag = 'in the transaction'"))
                self.assertEqual(c.until_ready(), [("C", "SET"), ("Z", "T")])
                c.send(Query("select pg_sleep(4)"))
                kill([cluster.primary_port], "select pg_sleep(4)")
                self.assertEqual(c.until_ready(), [("T", ("pg_sleep",)), ("E", "57P01"),
                                                   ("Z", "I")])
                c.send(Query("show chaos.tag"))
                self.assertEqual(c.until_ready(), [("T", ("chaos.tag",)), ("D", ("before",)),
                                                   ("C", "SHOW"), ("Z", "I")])
            finally:
                c.close()

    def test_a_cancel_waits_for_the_replay_ahead_of_the_statement(self):
        # A session prepared q (on a replica); its server process there ends, so its next read
        # there goes to a new one, which first replays PREPARE q. The primary holds an ACCESS
        # EXCLUSIVE lock on the table q reads, which the replicas hold too, so the replay waits.
        # The client cancels its read meanwhile: the cancel must reach the read once the replay
        # is done, not stop the replay (the read would then run in full, and q be missing).
        cluster.psql(cluster.primary_port, "create table if not exists tlock (x int)")
        cluster.wait_replay()
        with Pgsteer(cluster, extra_yaml="workers: 1\nread_balance: session\n") as px:
            c = Conn(px.port)
            locker = Conn(cluster.primary_port)
            try:
                c.send(Query("prepare q as select count(*) from tlock"))
                self.assertEqual(c.until_ready(), [("C", "PREPARE"), ("Z", "I")])
                for port in cluster.replica_ports:
                    cluster.psql(port, "select pg_terminate_backend(pid) from pg_stat_activity "
                                 "where query = 'prepare q as select count(*) from tlock'",
                                 user="postgres", db="postgres")
                time.sleep(0.3)  # pgsteer reads the end of that backend
                locker.send(Query("begin"))
                locker.until_ready()
                locker.send(Query("lock table tlock in access exclusive mode"))
                locker.until_ready()
                cluster.psql(cluster.primary_port, "select pg_switch_wal()", user="postgres",
                             db="postgres")
                cluster.wait_replay()
                c.send(Query("select pg_sleep(5)"))
                deadline = time.time() + 10
                while not any(cluster.psql(port, "select count(*) from pg_stat_activity where "
                                           "wait_event_type = 'Lock' and query ilike "
                                           "'prepare%tlock'", user="postgres",
                                           db="postgres") != "0"
                              for port in cluster.replica_ports):
                    self.assertLess(time.time(), deadline, "the replay did not wait: %s" % [
                        cluster.psql(port, "select state, wait_event_type, query from "
                                     "pg_stat_activity where usename = 'app'", user="postgres",
                                     db="postgres") for port in cluster.ports])
                    time.sleep(0.05)
                s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
                s.sendall(struct.pack("!IIII", 16, 80877102, *c.key))
                time.sleep(0.3)
                locker.send(Query("commit"))
                locker.until_ready()
                t0 = time.time()
                self.assertEqual(s.recv(1), b"")
                s.close()
                self.assertEqual(c.until_ready(), [("T", ("pg_sleep",)), ("E", "57014"),
                                                   ("Z", "I")])
                self.assertLess(time.time() - t0, 4, "the read ran in full: not cancelled")
                c.send(Query("execute q"))
                self.assertEqual(c.until_ready(), [("T", ("count",)), ("D", ("0",)),
                                                   ("C", "SELECT 1"), ("Z", "I")])
            finally:
                c.close()
                locker.close()

    def test_a_client_gone_when_its_transaction_is_lost(self):
        # pgsteer ends a client whose idle transaction's server process ended, with a FATAL
        # error; here the client is gone too (reset) and pgsteer learns both in one turn of its
        # loop, the server's end first (pgsteer is stopped meanwhile): writing the error fails,
        # which closes the client, within the close that was under way. pgsteer must close it
        # once and go on.
        with Pgsteer(cluster, extra_yaml="workers: 1\n") as px:
            c = Conn(px.port)
            c.send(Query("begin"))
            c.until_ready()
            c.send(Query("select pg_backend_pid()"))
            pid = int(c.until_ready()[1][1][0])
            os.kill(px.proc.pid, signal.SIGSTOP)
            try:
                cluster.psql(cluster.primary_port, "select pg_terminate_backend(%d)" % pid,
                             user="postgres", db="postgres")
                deadline = time.time() + 10
                while cluster.psql(cluster.primary_port, "select count(*) from "
                                   "pg_stat_activity where pid = %d" % pid,
                                   user="postgres", db="postgres") != "0":
                    self.assertLess(time.time(), deadline, "the server process did not end")
                    time.sleep(0.05)
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.sock.close()
                time.sleep(0.2)
            finally:
                os.kill(px.proc.pid, signal.SIGCONT)
            time.sleep(0.5)
            self.assertTrue(px.alive(), px.log_text()[-2000:])
            d = Conn(px.port)
            d.send(Query("select 1"))
            self.assertEqual(d.until_ready(), [("T", ("?column?",)), ("D", ("1",)),
                                               ("C", "SELECT 1"), ("Z", "I")])
            d.close()

    def test_cancel_during_the_login_to_the_node_is_not_lost(self):
        # The replicas' postmasters are stopped, so pgsteer's login to the replica this client's
        # first read goes to hangs, with the statement queued behind it. A cancel that comes
        # meanwhile is held and sent once the login completes and the statement is out, as a
        # client pressing Ctrl-C would expect, instead of being dropped because the node did
        # not know the backend yet.
        postmasters = []
        for n in cluster.nodes:
            if n.port != cluster.primary_port:
                with open(os.path.join(n.datadir, "postmaster.pid")) as f:
                    postmasters.append(int(f.readline()))
        c = Conn(proxy.port)
        stopped = []
        try:
            for pid in postmasters:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            c.send(Query("select pg_sleep(10)"))
            time.sleep(0.3)
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            s.sendall(struct.pack("!IIII", 16, 80877102, *c.key))
            s.close()
            deadline = time.time() + 5
            while "held until the login to node replica" not in proxy.log_text():
                self.assertLess(time.time(), deadline, "pgsteer did not hold the cancel")
                time.sleep(0.05)
            while stopped:
                os.kill(stopped.pop(), signal.SIGCONT)
            t0 = time.time()
            out = c.until_ready()
            self.assertLess(time.time() - t0, 5)
            self.assertIn(("E", "57014"), out)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            c.close()

    def test_read_balance_session_keeps_a_session_on_one_replica(self):
        with Pgsteer(cluster, extra_yaml="read_balance: session\n") as px:
            per_session = []
            for _ in range(2):
                c = Conn(px.port)
                try:
                    ports = set()
                    for _ in range(6):
                        c.send(Query("select inet_server_port()"))
                        ports.add(int(c.until_ready()[1][1][0]))
                    c.send(Query("insert into w values (4000, 1) returning inet_server_port()"))
                    self.assertEqual(int(c.until_ready()[1][1][0]), cluster.primary_port)
                    c.send(Query("delete from w where id = 4000"))
                    c.until_ready()
                finally:
                    c.close()
                self.assertEqual(len(ports), 1)
                per_session.append(ports.pop())
            # the round robin hands the next session the other replica
            self.assertEqual(set(per_session), set(cluster.replica_ports))

    def test_burst_of_first_logins_opens_one_primary_connection(self):
        # 200 clients log in at once to a pgsteer that has never served these startup
        # parameters: one logs in to the primary for them, the others wait for its answer,
        # instead of 200 primary connections (which would exceed max_connections). Each
        # worker fills its own cache: two workers, so at most two primary sessions.
        import threading
        with Pgsteer(cluster, auth_method="trust", extra_yaml="workers: 2\n") as px:
            conns, errors, lock = [], [], threading.Lock()

            def login():
                try:
                    c = Conn(px.port, params={"application_name": "burst"}, timeout=30)
                    c.send(Query("select 1"))
                    c.until_ready()
                    with lock:
                        conns.append(c)
                except Exception as e:  # noqa: BLE001 - collected and asserted below
                    with lock:
                        errors.append(repr(e))

            threads = [threading.Thread(target=login) for _ in range(200)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            try:
                self.assertEqual(errors, [])
                self.assertEqual(len(conns), 200)
                n = int(cluster.psql(cluster.primary_port,
                                     "select count(*) from pg_stat_activity "
                                     "where application_name = 'burst'").strip())
                self.assertLessEqual(n, 2)
            finally:
                for c in conns:
                    c.close()

    def test_replica_parameter_reports_hidden(self):
        c = Conn(proxy.port)
        try:
            self.assertNotEqual(c.params.get("in_hot_standby"), "on")
            self.assertIn("server_version", c.params)
        finally:
            c.close()


if __name__ == "__main__":
    unittest.main()
