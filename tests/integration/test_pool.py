# SPDX-License-Identifier: MIT
"""Integration tests of the pool: a backend whose client leaves while it is idle is reset and
handed to the next client of the same user, database and startup parameters, and nothing of the
first session reaches the second. Each test asserts on server process ids (pg_backend_pid())
and on what the node reports about them. Also the backends made from the pool that several
clients' reads share (multiplex_reads), and a client that does not read its answers.

Run: tests/integration/run.sh test_pool"""

import contextlib
import faulthandler
import json
import os
import re
import socket
import sys
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster as cl  # noqa: E402
import wire  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402

ADMIN_YAML = "admin_users:\n  - {name: admin, password: admin-secret}\n"

CLUSTER = None
PX = None  # one worker, so that every client meets the same pool
_started = []


def setUpModule():
    global CLUSTER, PX
    CLUSTER = cl.Cluster(replicas=2)
    try:
        CLUSTER.start()
        CLUSTER.psql(CLUSTER.primary_port, [
            "create table pool_t (id serial primary key, v text)",
            "create table pool_other (v int)",
        ])
        CLUSTER.wait_replay()
        PX = start_pgsteer("workers: 1\n", name="pool")
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    for px in _started:
        px.stop()
    if CLUSTER is not None:
        CLUSTER.stop()


def status(px):
    with urllib.request.urlopen("http://127.0.0.1:%d/status" % px.admin_port, timeout=5) as r:
        return json.loads(r.read())


def node_stats(px, name):
    for n in status(px)["nodes"]:
        if n["name"] == name:
            return n
    raise AssertionError("no node %s" % name)


def start_pgsteer(extra_yaml, name=None):
    """A pgsteer with an admin user, started and ready (both replicas eligible)."""
    px = cl.Pgsteer(CLUSTER, extra_yaml=ADMIN_YAML + extra_yaml, name=name)
    px.start()
    _started.append(px)
    return px.wait_replicas_eligible()


def connect(px, **kw):
    conn = psycopg2.connect(px.dsn(**kw))
    conn.autocommit = True
    return conn


def one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def primary_pid(conn):
    """The pid of the connection's backend on the primary (a write goes there)."""
    return one(conn, "insert into pool_t (v) values ('pid') returning pg_backend_pid()")[0]


def session_pid(px, **kw):
    """Open a session through px, write once and leave: the pid of the primary backend it
    used."""
    c = connect(px, **kw)
    try:
        return primary_pid(c)
    finally:
        c.close()


def admin(px, sql, **kw):
    """Run sql on px's admin console; the CompletedProcess."""
    return cl.run_psql(px.admin_port, sql, user="admin", db="pgsteer", password="admin-secret",
                       bindir=CLUSTER.bindir, **kw)


def on_primary(sql, args=None):
    """Run sql directly on the primary (not through pgsteer); the first row."""
    conn = psycopg2.connect(host="127.0.0.1", port=CLUSTER.primary_port, user=cl.APP_USER,
                            password=cl.APP_PASSWORD, dbname=cl.APP_DB)
    conn.autocommit = True
    try:
        return one(conn, sql, args)
    finally:
        conn.close()


def wait_for(pred, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def wait_gone(pid, what):
    """Wait until the primary has no server process `pid` any more."""
    wait_for(lambda: on_primary("select count(*) = 0 from pg_stat_activity where pid = %s",
                                (pid,))[0], what=what)


def pooled(px, node="primary"):
    """Wait until `node` has an idle backend in px's pool whose reset is answered, and return
    the number of them."""
    def ready():
        out = admin(px, "SHOW SERVERS").stdout
        return sum(1 for r in out.strip().splitlines()
                   if r.split("|")[1] == node and r.split("|")[2] == "pooled")
    return wait_for(ready, what="a pooled backend to %s" % node)


class PoolTest(unittest.TestCase):
    def setUp(self):
        faulthandler.dump_traceback_later(120, exit=True)

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()

    def test_the_next_client_gets_the_backend_of_the_one_before(self):
        before = node_stats(PX, "primary")
        pid1 = session_pid(PX)
        pooled(PX)
        self.assertGreaterEqual(node_stats(PX, "primary")["idle_backends"], 1)
        c2 = connect(PX)
        pid2 = primary_pid(c2)
        self.assertEqual(pid1, pid2)
        after = node_stats(PX, "primary")
        c2.close()
        self.assertGreaterEqual(after["backends_reused"], before["backends_reused"] + 1)
        # The backend stays in one session: reused, not opened again.
        self.assertLessEqual(after["backends_opened"], before["backends_opened"] + 1)

    def test_nothing_of_a_session_reaches_the_next(self):
        c1 = connect(PX)
        pid = primary_pid(c1)
        with c1.cursor() as cur:
            # A transaction keeps every statement on the primary's backend seen above.
            cur.execute("begin")
            self.assertEqual(primary_pid(c1), pid)
            cur.execute("set search_path to pg_catalog")
            cur.execute("set work_mem = '7MB'")
            cur.execute("prepare pool_p as select 1")
            cur.execute("create temp table pool_tmp (v int)")
            cur.execute("listen pool_channel")
            cur.execute("select pg_advisory_lock(4242)")
            cur.execute("commit")
        self.assertEqual(on_primary("select count(*) from pg_locks where locktype = 'advisory' "
                                    "and pid = %s", (pid,))[0], 1)
        c1.close()
        pooled(PX)
        c2 = connect(PX)
        with c2.cursor() as cur:
            cur.execute("begin")
            self.assertEqual(primary_pid(c2), pid, "the pool should hand out the same backend")
            cur.execute("show search_path")
            self.assertEqual(cur.fetchone()[0], '"$user", public')
            cur.execute("show work_mem")
            self.assertEqual(cur.fetchone()[0], "4MB")
            cur.execute("select count(*) from pg_prepared_statements")
            self.assertEqual(cur.fetchone()[0], 0)
            cur.execute("select to_regclass('pg_temp.pool_tmp') is null")
            self.assertTrue(cur.fetchone()[0])
            cur.execute("select count(*) from pg_listening_channels()")
            self.assertEqual(cur.fetchone()[0], 0)
            cur.execute("commit")
        self.assertEqual(on_primary("select count(*) from pg_locks where locktype = 'advisory' "
                                    "and pid = %s", (pid,))[0], 0)
        c2.close()

    def test_an_open_transaction_is_not_kept(self):
        c1 = connect(PX)
        with c1.cursor() as cur:
            cur.execute("begin")
            cur.execute("insert into pool_t (v) values ('rolled back') returning pg_backend_pid()")
            pid1 = cur.fetchone()[0]
        c1.close()  # without commit
        wait_gone(pid1, "the backend of the open transaction to end")
        self.assertEqual(on_primary("select count(*) from pool_t where v = 'rolled back'")[0], 0)
        self.assertNotEqual(session_pid(PX), pid1)

    def test_a_busy_backend_is_not_kept(self):
        # The client leaves while its statement runs: that backend must not serve anyone.
        c1 = connect(PX)
        pid1 = primary_pid(c1)
        sock = socket.fromfd(c1.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        c1.cursor().execute("set statement_timeout = 0")
        with c1.cursor() as cur:
            t = threading.Thread(target=lambda: self._swallow(cur, "select pg_sleep(3), "
                                                              "txid_current()"))
            t.start()
            wait_for(lambda: on_primary("select count(*) from pg_stat_activity where pid = %s "
                                        "and query like 'select pg_sleep%%'", (pid1,))[0],
                     what="the statement to run")
            sock.shutdown(socket.SHUT_RDWR)
            t.join(10)
        sock.close()
        c1.close()
        c2 = connect(PX)
        start = time.monotonic()
        self.assertNotEqual(primary_pid(c2), pid1)
        self.assertLess(time.monotonic() - start, 2.5, "the new client waited for the old statement")
        c2.close()

    @staticmethod
    def _swallow(cur, sql):
        try:
            cur.execute(sql)
        except psycopg2.Error:
            pass

    def test_other_startup_parameters_get_other_backends(self):
        pid1 = session_pid(PX, application_name="pool-a")
        pooled(PX)
        c2 = connect(PX, application_name="pool-b")
        pid2 = primary_pid(c2)
        self.assertNotEqual(pid1, pid2)
        self.assertEqual(one(c2, "select application_name from pg_stat_activity "
                                 "where pid = pg_backend_pid() and txid_current() > 0")[0],
                         "pool-b")
        c2.close()
        self.assertEqual(session_pid(PX, application_name="pool-a"), pid1)

    def test_reads_reuse_replica_backends(self):
        PX.wait_replicas_eligible()  # an earlier test restarted the primary
        names = {n.port: n.name for n in CLUSTER.nodes}
        seen = {}
        before = {n: node_stats(PX, n)["backends_reused"] for n in ("replica1", "replica2")}
        for _ in range(6):
            c = connect(PX)
            port, pid = one(c, "select inet_server_port(), pg_backend_pid()")
            c.close()
            name = names[port]
            self.assertIn(name, ("replica1", "replica2"))
            pooled(PX, name)
            seen.setdefault(name, set()).add(pid)
        # Sessions spread over both replicas, each replica with one server process for all.
        for name, pids in seen.items():
            self.assertEqual(len(pids), 1, seen)
        reused = sum(node_stats(PX, n)["backends_reused"] - before[n]
                     for n in ("replica1", "replica2"))
        self.assertGreaterEqual(reused, 6 - len(seen))

    def test_cancel_reaches_a_reused_backend(self):
        pid = session_pid(PX)
        pooled(PX)
        c2 = connect(PX)
        self.assertEqual(primary_pid(c2), pid)
        timer = threading.Timer(0.5, c2.cancel)
        timer.start()
        start = time.monotonic()
        with self.assertRaises(psycopg2.errors.QueryCanceled):
            one(c2, "select pg_sleep(10), txid_current()")
        timer.join()
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(primary_pid(c2), pid)
        c2.close()

    def test_node_restart_while_pooled(self):
        # The pool must not hand out a backend the node has closed.
        pid1 = session_pid(PX)
        pooled(PX)
        CLUSTER.stop_node(0, mode="fast")
        CLUSTER.start_node(0)
        wait_for(lambda: node_stats(PX, "primary")["state"] == "up", what="the primary to be up")
        PX.wait_replicas_eligible(timeout=30)  # the replicas reconnect to it
        self.assertEqual(node_stats(PX, "primary")["idle_backends"], 0)
        self.assertNotEqual(session_pid(PX), pid1)

    def test_admin_shows_the_pool(self):
        c1 = connect(PX)
        primary_pid(c1)
        c1.close()
        pooled(PX)
        out = admin(PX, "SHOW NODES", extra_args=["-P", "tuples_only=off"]).stdout
        lines = out.strip().splitlines()
        cols = lines[0].split("|")
        primary = dict(zip(cols, next(r.split("|") for r in lines[1:]
                                      if r.startswith("primary|"))))
        self.assertGreaterEqual(int(primary["idle_backends"]), 1, out)
        self.assertGreaterEqual(int(primary["backends_opened"]), 1, out)
        self.assertIn("backends_reused", primary)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % PX.admin_port,
                                    timeout=5) as r:
            text = r.read().decode()
        self.assertRegex(text, r'pgsteer_node_idle_backend_connections\{node="primary"[^}]*\} [1-9]')
        self.assertRegex(text, r'pgsteer_node_backends_reused_total\{node="primary"[^}]*\} \d')
        self.assertRegex(text, r'pgsteer_node_backends_opened_total\{node="primary"[^}]*\} [1-9]')
        cfg = admin(PX, "SHOW CONFIG").stdout
        self.assertIn("backend_idle_max|20", cfg)


@contextlib.contextmanager
def settings(extra_yaml):
    """A pgsteer of its own with `extra_yaml`, its replicas eligible, stopped at the end."""
    with cl.Pgsteer(CLUSTER, extra_yaml=ADMIN_YAML + extra_yaml) as px:
        yield px.wait_replicas_eligible()


class PoolSettingsTest(unittest.TestCase):
    def setUp(self):
        faulthandler.dump_traceback_later(120, exit=True)

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()

    def test_idle_timeout_closes_pooled_backends(self):
        with settings("workers: 1\nbackend_idle_timeout_ms: 2000\n") as px:
            pid = session_pid(px)
            pooled(px)
            wait_gone(pid, "the idle backend to be closed")
            self.assertEqual(node_stats(px, "primary")["idle_backends"], 0)

    def test_backend_idle_max_0_keeps_none(self):
        with settings("workers: 1\nbackend_idle_max: 0\n") as px:
            pid1 = session_pid(px)
            wait_gone(pid1, "the backend to be closed")
            self.assertNotEqual(session_pid(px), pid1)
            self.assertEqual(node_stats(px, "primary")["backends_reused"], 0)

    def test_idle_max_bounds_the_pool(self):
        with settings("workers: 1\nbackend_idle_max: 2\n") as px:
            conns = [connect(px) for _ in range(4)]
            pids = [primary_pid(c) for c in conns]
            for c in conns:
                c.close()
            wait_for(lambda: on_primary("select count(*) from pg_stat_activity "
                                        "where pid = any(%s)", (pids,))[0] == 2,
                     what="two of four backends to be closed")
            self.assertEqual(node_stats(px, "primary")["idle_backends"], 2)

    def test_a_full_pool_makes_room_for_the_newest(self):
        with settings("workers: 1\nbackend_idle_max: 1\n") as px:
            pid_a = session_pid(px, application_name="pool-old")
            pooled(px)
            pid_b = session_pid(px, application_name="pool-new")
            wait_gone(pid_a, "the older kept backend to make room")
            pooled(px)
            self.assertEqual(session_pid(px, application_name="pool-new"), pid_b)
            self.assertEqual(node_stats(px, "primary")["idle_backends"], 1)

    def test_lifetime_ends_reuse(self):
        with settings("workers: 1\nbackend_lifetime_ms: 1\n") as px:
            pid1 = session_pid(px)
            wait_gone(pid1, "the backend past its lifetime to be closed")
            self.assertNotEqual(session_pid(px), pid1)

    def test_reload_empties_the_pool(self):
        with settings("workers: 1\n") as px:
            pid1 = session_pid(px)
            pooled(px)
            admin(px, "RELOAD")
            wait_gone(pid1, "the pooled backend to be closed")
            self.assertNotEqual(session_pid(px), pid1)



def admin_rows(px, sql):
    """The rows of an admin command, each a list of its fields."""
    out = admin(px, sql).stdout
    return [r.split("|") for r in out.strip().splitlines() if r]


def admin_stat(px, name):
    for r in admin_rows(px, "SHOW STATS"):
        if r[0] == name:
            return r[1]
    raise AssertionError("no stat %s" % name)


# Reads queue behind a shared backend's long read however long it takes: what the tests of
# queueing need (by default they would move to their own backends after 10 ms).
NO_STALL = "multiplex_stall_ms: 0\n"


@contextlib.contextmanager
def multiplexing(extra_yaml="", warm=True):
    """A pgsteer with multiplex_reads on, one worker, reading from replica1 only (replica2 at
    weight 0, by a reload before any client), and, when `warm`, a shared backend to replica1
    ready: a client read there once and left, so its backend is in the pool."""
    with cl.Pgsteer(CLUSTER, extra_yaml=ADMIN_YAML + "workers: 1\nmultiplex_reads: on\n" +
                    extra_yaml) as px:
        with open(px.config_path) as f:
            text = f.read()
        with open(px.config_path, "w") as f:
            f.write(re.sub(r"(name: replica2[^}]*weight: )1", r"\g<1>0", text))
        admin(px, "RELOAD")
        wait_for(lambda: admin_stat(px, "reloads") == "1", what="the reload")
        wait_for(lambda: node_stats(px, "replica1")["eligible"], what="replica1 eligible")
        if warm:
            c = connect(px)
            one(c, "select 1")
            c.close()
            pooled(px, "replica1")
        yield px


def answers_of_one_server(batches, first=None, n=3):
    """What replica1 answers, straight, to batches(i) (after first(i), when given) for each of
    n clients."""
    want = []
    for i in range(n):
        direct = wire.Conn(CLUSTER.replica_ports[0], user=cl.APP_USER, password=cl.APP_PASSWORD,
                           database=cl.APP_DB)
        try:
            if first:
                direct.send(first(i))
                direct.until_ready()
            direct.send(b"".join(batches(i)))
            want.append(direct.until_ready(count=len(batches(i))))
        finally:
            direct.close()
    return want


def raw_login(px):
    """A wire-level client of px, logged in with the startup parameters of px.dsn(), so that
    it shares the backend the psycopg2 clients share."""
    return wire.Conn(px.port, user=cl.APP_USER, password=cl.APP_PASSWORD, database=cl.APP_DB,
                     params={"application_name": "pgsteer-tests"})


def raw_pid(conn):
    conn.send(wire.Query("select pg_backend_pid()"))
    pid = None
    while True:
        t, body = conn.read()
        if t == b"D":
            pid = int(body[6:].decode())
        elif t == b"Z":
            return pid


def read_until_ready(conn):
    """Read a Query's answer up to its ReadyForQuery: (DataRows, bytes of their bodies)."""
    rows = size = 0
    while True:
        t, body = conn.read()
        if t == b"D":
            rows += 1
            size += len(body)
        elif t == b"E":
            raise AssertionError(wire.error_field(body, "M"))
        elif t == b"Z":
            return rows, size


def replica_pid(conn):
    """The server process that answers a read of conn, and that it is replica1's."""
    pid, standby = one(conn, "select pg_backend_pid(), pg_is_in_recovery()")
    assert standby
    return pid


class MultiplexTest(unittest.TestCase):
    """multiplex_reads: reads outside transactions from sessions with no state of their own
    share one backend per replica and worker, pipelined behind each other."""

    def setUp(self):
        faulthandler.dump_traceback_later(120, exit=True)

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()

    def test_off_by_default(self):
        self.assertIn("multiplex_reads|off", admin(PX, "SHOW CONFIG").stdout)
        conns = [connect(PX) for _ in range(3)]
        try:
            pids = {one(c, "select pg_backend_pid()")[0] for c in conns}
            self.assertEqual(len(pids), 3)
        finally:
            for c in conns:
                c.close()

    def test_clients_share_one_server_process_and_get_their_own_answers(self):
        # (No stall detection: on a loaded machine a 10 ms wait would send a read elsewhere.)
        with multiplexing(NO_STALL) as px:
            self.assertIn("multiplex_reads|on", admin(px, "SHOW CONFIG").stdout)
            conns = [connect(px) for _ in range(6)]
            try:
                pids = {replica_pid(c) for c in conns}
                self.assertEqual(len(pids), 1, "every read on one server process")
                shared = [r for r in admin_rows(px, "SHOW SERVERS") if r[2] == "shared"]
                self.assertEqual([(r[1], int(r[3])) for r in shared],
                                 [("replica1", pids.pop())])
                errors = []

                def worker(i, c):
                    try:
                        for k in range(40):
                            want = i * 1000 + k
                            with c.cursor() as cur:
                                cur.execute("select %s::int, g from generate_series(1, %s) g",
                                            (want, 1 + k % 5))
                                rows = cur.fetchall()
                            if rows != [(want, g) for g in range(1, 2 + k % 5)]:
                                errors.append((i, k, rows))
                    except Exception as e:  # noqa: BLE001 (reported below)
                        errors.append((i, repr(e)))
                threads = [threading.Thread(target=worker, args=(i, c))
                           for i, c in enumerate(conns)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                self.assertEqual(errors, [])
                self.assertGreaterEqual(int(admin_stat(px, "multiplexed_reads")), 6 + 6 * 40)
            finally:
                for c in conns:
                    c.close()

    def test_a_session_with_state_keeps_its_own_backend(self):
        with multiplexing() as px:
            a, b = connect(px), connect(px)
            try:
                shared_pid = replica_pid(b)
                with a.cursor() as cur:
                    cur.execute("set work_mem = '7MB'")
                self.assertEqual(one(a, "show work_mem")[0], "7MB")
                self.assertNotEqual(replica_pid(a), shared_pid)
                self.assertEqual(one(b, "show work_mem")[0], "4MB")
                self.assertEqual(replica_pid(b), shared_pid)
                # In a transaction, reads stay on the transaction's backend too.
                b.autocommit = False
                with b.cursor() as cur:
                    cur.execute("select pg_backend_pid()")
                    self.assertNotEqual(cur.fetchone()[0], shared_pid)
                b.rollback()
            finally:
                a.close()
                b.close()

    def test_a_client_leaving_mid_read_does_not_disturb_the_others(self):
        with multiplexing(NO_STALL) as px:
            b = connect(px)
            try:
                shared_pid = replica_pid(b)
                # A raw client sends a slow read and goes away without reading the answer;
                # b's read queued behind it gets its own answer, and the backend stays.
                s = raw_login(px)
                self.assertEqual(raw_pid(s), shared_pid)
                s.send(wire.Query("select pg_sleep(0.5), 'leaver'"))
                time.sleep(0.1)
                result = {}
                t = threading.Thread(target=lambda: result.update(
                    v=one(b, "select 'mine', pg_backend_pid()")))
                t.start()
                time.sleep(0.1)
                s.sock.close()
                t.join()
                self.assertEqual(result["v"], ("mine", shared_pid))
                self.assertEqual(replica_pid(b), shared_pid)
            finally:
                b.close()

    def test_a_cancel_does_not_reach_another_clients_read(self):
        with multiplexing(NO_STALL) as px:
            a, b = connect(px), connect(px)
            try:
                self.assertEqual(replica_pid(a), replica_pid(b))
                result = {}

                def slow():
                    result["b"] = one(b, "select 'b', pg_sleep(1)")
                t = threading.Thread(target=slow)
                t.start()
                time.sleep(0.2)
                ta = threading.Thread(target=lambda: result.update(a=one(a, "select 'a'")))
                ta.start()
                time.sleep(0.2)
                a.cancel()  # a's read waits behind b's: the node must not cancel b's
                t.join()
                ta.join()
                self.assertEqual(result["b"][0], "b")
                self.assertEqual(result["a"], ("a",))
                with open(px.log_path) as f:
                    self.assertIn("not sent: another client's statement shares the backend",
                                  f.read())
            finally:
                a.close()
                b.close()

    def test_a_cancel_reaches_a_read_alone_on_the_shared_backend(self):
        """A cancel request reaches a client's statement on the shared backend when nothing of
        another client is there with it: the statement fails with 57014 as on its own
        backend, and the shared backend goes on serving everyone."""
        with multiplexing(NO_STALL) as px:
            a, b = connect(px), connect(px)
            try:
                shared_pid = replica_pid(a)
                self.assertEqual(replica_pid(b), shared_pid)
                result = {}

                def slow():
                    try:
                        result["a"] = one(a, "select pg_sleep(5)")
                    except psycopg2.Error as e:
                        result["a"] = e
                t = threading.Thread(target=slow)
                t0 = time.monotonic()
                t.start()
                time.sleep(0.3)
                a.cancel()
                t.join(timeout=10)
                self.assertLess(time.monotonic() - t0, 3, "the cancel stopped the statement")
                self.assertIsInstance(result["a"], psycopg2.Error)
                self.assertEqual(result["a"].pgcode, "57014")
                # Once the node has closed the cancel's connection, the shared backend takes
                # reads again (until then they run on the sessions' own backends).
                wait_for(lambda: replica_pid(b) == shared_pid, what="sharing again")
                self.assertEqual(replica_pid(a), shared_pid)
                with open(px.log_path) as f:
                    self.assertIn("cancel request sent over the shared backend", f.read())
            finally:
                a.close()
                b.close()

    def test_a_read_the_replica_refuses_is_retried_on_the_primary(self):
        CLUSTER.psql(CLUSTER.primary_port,
                     "create or replace function mux_hidden_write() returns int language sql "
                     "as 'insert into pool_other values (1); select 7'")
        CLUSTER.wait_replay()
        with multiplexing() as px:
            c = connect(px)
            try:
                replica_pid(c)
                before = int(admin_stat(px, "read_retries_on_primary"))
                self.assertEqual(one(c, "select mux_hidden_write()"), (7,))
                self.assertEqual(int(admin_stat(px, "read_retries_on_primary")), before + 1)
                self.assertEqual(one(c, "select 'after'"), ("after",))
            finally:
                c.close()

    def test_the_shared_backend_failing_gives_its_clients_an_error_and_they_go_on(self):
        with multiplexing(NO_STALL) as px:
            a, b = connect(px), connect(px)
            try:
                shared_pid = replica_pid(a)
                result = {}

                def slow(name, conn):
                    try:
                        result[name] = one(conn, "select pg_sleep(3)")
                    except psycopg2.Error as e:
                        result[name] = e
                ts = [threading.Thread(target=slow, args=(n, c)) for n, c in (("a", a), ("b", b))]
                for t in ts:
                    t.start()
                time.sleep(0.3)
                CLUSTER.psql(CLUSTER.replica_ports[0],
                             "select pg_terminate_backend(%d)" % shared_pid, user="postgres",
                             db="postgres")
                for t in ts:
                    t.join()
                for n in ("a", "b"):
                    # The one running gets the node's FATAL, then like b the loss of the
                    # connection (08006): libpq reports the last.
                    self.assertIsInstance(result[n], psycopg2.Error, n)
                    self.assertIn(result[n].pgcode, ("57P01", "08006"), n)
                # Both sessions go on.
                self.assertEqual(one(a, "select 'a'"), ("a",))
                self.assertEqual(one(b, "select 'b'"), ("b",))
            finally:
                a.close()
                b.close()

    def test_extended_batches_answer_as_one_server_does(self):
        """Self-contained extended batches (Parse of the unnamed statement, Bind, Describe,
        Execute, Sync) share the backend; what follows them on the client's own backend sees
        the unnamed statement they made, as on one server. Compared with a replica reached
        directly, batch by batch, and with several batches sent before reading."""
        W = wire
        steps = [
            [W.Parse("select $1::int * 2"), W.Bind(params=(21,)), W.Describe(b"P"),
             W.Execute(), W.Sync],
            [W.Bind(params=(5,)), W.Execute(), W.Sync],  # the unnamed statement above
            [W.Parse("select $1::text || 'x'"), W.Describe(b"S"), W.Bind(params=("a",)),
             W.Execute(), W.Sync],
            [W.Parse("select * from no_such_table"), W.Bind(), W.Execute(), W.Sync],
            [W.Bind(params=(1,)), W.Execute(), W.Sync],  # after the failed Parse
            [W.Parse("select 1/0"), W.Bind(), W.Execute(), W.Sync],
            [W.Parse("select g from generate_series(1, 3) g"), W.Bind(), W.Execute(), W.Sync],
            [W.Bind(), W.Execute(maxrows=2), W.Sync],
        ]
        direct = wire.Conn(CLUSTER.replica_ports[0], user=cl.APP_USER,
                           password=cl.APP_PASSWORD, database=cl.APP_DB)
        try:
            want = []
            for st in steps:
                direct.send(b"".join(st))
                want.append(direct.until_ready())
        finally:
            direct.close()
        with multiplexing() as px:
            b = connect(px)
            s = raw_login(px)
            try:
                shared_pid = replica_pid(b)
                self.assertEqual(raw_pid(s), shared_pid)
                before = int(admin_stat(px, "multiplexed_reads"))
                got = []
                for st in steps:
                    s.send(b"".join(st))
                    got.append(s.until_ready())
                self.maxDiff = None
                self.assertEqual(got, want)
                self.assertGreaterEqual(int(admin_stat(px, "multiplexed_reads")) - before, 5)
                # All at once, before reading any answer: the same, in order.
                s.send(b"".join(b"".join(st) for st in steps))
                self.assertEqual(s.until_ready(count=len(steps)),
                                 [item for answer in want for item in answer])
                # The batch ran on the shared backend.
                s.send(b"".join([W.Parse("select pg_backend_pid()"), W.Bind(), W.Execute(),
                                 W.Sync]))
                self.assertIn(("D", (str(shared_pid),)), s.until_ready())
            finally:
                s.close()
                b.close()

    def test_clients_that_keep_their_connections_share_too(self):
        """With no backend in the pool (no client has left yet, or the pool is off), a
        client's own idle backend to the replica becomes the shared one, reset first: what
        the client prepared there is gone, so a statement pgsteer prepares there for clients
        may take any name."""
        for extra in ("", "backend_idle_max: 0\n"):
            with self.subTest(extra=extra):
                self.check_keeping_clients_share(extra)

    def check_keeping_clients_share(self, extra_yaml):
        W = wire
        with multiplexing(extra_yaml, warm=False) as px:
            s = raw_login(px)
            b = None
            try:
                own = raw_pid(s)  # the first read opens s's own backend
                self.assertEqual(admin_stat(px, "multiplexed_reads"), "0")
                s.send(W.Parse("select 'mine'", name="pgsteer_s1") + W.Sync)
                self.assertEqual(s.until_ready(), [("1", None), ("Z", "I")])
                self.assertEqual(raw_pid(s), own)  # shared from now on
                self.assertEqual(admin_stat(px, "multiplexed_reads"), "1")
                self.assertEqual([(r[1], r[2], int(r[3])) for r in admin_rows(px, "SHOW SERVERS")
                                  if r[1] == "replica1"], [("replica1", "shared", own)])
                s.send(W.Bind("pgsteer_s1") + W.Execute() + W.Sync)
                self.assertEqual(s.until_ready(), [("2", None), ("D", ("mine",)),
                                                   ("C", "SELECT 1"), ("Z", "I")])
                b = connect(px)
                self.assertEqual(replica_pid(b), own)
                self.assertEqual(int(admin_stat(px, "multiplexed_reads")), 3)
            finally:
                s.close()
                if b:
                    b.close()

    def test_another_login_takes_an_idle_shared_backends_place(self):
        """One shared backend per replica and worker, for one login (user, database, startup
        parameters): a session of another login finds it idle, sends it to the pool and
        shares one of its own login's from then on; and back."""
        with multiplexing() as px:
            a = connect(px)
            b = connect(px, application_name="pgsteer-tests-other")
            try:
                first = replica_pid(a)
                before = int(admin_stat(px, "multiplexed_reads"))
                own = replica_pid(b)  # the shared one is a's login's: b opens its own
                self.assertNotEqual(own, first)
                self.assertEqual(replica_pid(b), own)  # b's becomes the shared one
                self.assertEqual([(r[2], int(r[3])) for r in admin_rows(px, "SHOW SERVERS")
                                  if r[2] == "shared"], [("shared", own)])
                self.assertEqual(int(admin_stat(px, "multiplexed_reads")), before + 1)
                # a's login again: b's goes to the pool, a's pooled one is shared again.
                wait_for(lambda: replica_pid(a) == first, what="a's login sharing again")
                rows = [r for r in admin_rows(px, "SHOW SERVERS") if r[1] == "replica1"]
                self.assertEqual(sorted(("pooled" if r[2] == "resetting" else r[2], int(r[3]))
                                        for r in rows), [("pooled", own), ("shared", first)])
            finally:
                a.close()
                b.close()

    def test_reads_do_not_queue_behind_a_stalled_shared_backend(self):
        """A shared backend that owes answers and has sent none for multiplex_stall_ms is
        stuck behind a long read: other sessions' reads run on their own backends meanwhile,
        and share again once it moves."""
        with multiplexing() as px:
            self.assertIn("multiplex_stall_ms|10", admin(px, "SHOW CONFIG").stdout)
            b = connect(px)
            s = raw_login(px)
            try:
                shared_pid = replica_pid(b)
                self.assertEqual(raw_pid(s), shared_pid)
                s.send(wire.Query("select pg_sleep(1), 'slow'"))
                time.sleep(0.1)
                t0 = time.monotonic()
                own = replica_pid(b)
                self.assertLess(time.monotonic() - t0, 0.5, "b's read did not wait")
                self.assertNotEqual(own, shared_pid)
                self.assertEqual(admin_stat(px, "multiplex_stalls"), "1")
                self.assertEqual(s.until_ready()[1], ("D", ("", "slow")))
                self.assertEqual(replica_pid(b), shared_pid)
            finally:
                s.close()
                b.close()

    def each_gets_its_own(self, clients, batches, want):
        """Every client sends its batches(i), one at a time, then all at once, and gets the
        answers want[i] (what one server gave)."""
        self.maxDiff = None
        for i, s in enumerate(clients):
            got = []
            for batch in batches(i):
                s.send(batch)
                got += s.until_ready()
            self.assertEqual(got, want[i])
        for i, s in enumerate(clients):
            s.send(b"".join(batches(i)))
        for i, s in enumerate(clients):
            self.assertEqual(s.until_ready(count=len(batches(i))), want[i])

    def test_unnamed_statements_share_one_kept_statement(self):
        """Drivers that parse every query as the unnamed statement (pgbench -M extended,
        node-postgres, pgJDBC before prepareThreshold) run, on the shared backend, the one
        statement it keeps for the text (cache_unnamed_statements): every client gets its own
        answers, one by one and pipelined, and the node prepared each text once. A kept
        statement whose table gained a column is refused once (0A000) and then prepared
        anew."""
        W = wire

        def batches(i):
            out = []
            for k in range(5):
                out.append(W.Parse("select $1::int + %d" % (k % 2)) + W.Bind("", params=(i,)) +
                           W.Describe(b"P") + W.Execute() + W.Sync)
                out.append(W.Parse("select $1::text || 'x'", types=(25,)) +
                           W.Bind("", params=(str(k),)) + W.Execute() + W.Sync)
            out.append(W.Parse("select nosuch") + W.Bind("") + W.Execute() + W.Sync)
            return out

        want = answers_of_one_server(batches)
        self.assertEqual(want[0][-2:], [("E", "42703"), ("Z", "I")])
        CLUSTER.psql(CLUSTER.primary_port, "create table kept_mux (id int, v int); "
                     "insert into kept_mux values (1, 10)")
        CLUSTER.wait_replay()
        with multiplexing() as px:
            b = connect(px)
            clients = [raw_login(px) for _ in range(3)]
            try:
                shared_pid = replica_pid(b)
                before = int(admin_stat(px, "multiplexed_reads"))
                reused = int(admin_stat(px, "unnamed_statements_reused"))
                self.each_gets_its_own(clients, batches, want)
                self.assertGreaterEqual(int(admin_stat(px, "multiplexed_reads")) - before,
                                        3 * 2 * (len(batches(0)) - 1))
                self.assertGreaterEqual(int(admin_stat(px, "unnamed_statements_reused")) -
                                        reused, 3 * 2 * (len(batches(0)) - 1) - 3)
                with b.cursor() as cur:
                    cur.execute("select pg_backend_pid(), statement from pg_prepared_statements")
                    rows = cur.fetchall()
                self.assertEqual({r[0] for r in rows}, {shared_pid})
                self.assertEqual(sorted(r[1] for r in rows),
                                 ["select $1::int + 0", "select $1::int + 1",
                                  "select $1::text || 'x'"])
                # The result type changes under the kept statement: refused once, then anew.
                run = (W.Parse("select * from kept_mux where id = $1") +
                       W.Bind("", params=(1,)) + W.Execute() + W.Sync)
                s = clients[0]
                for _ in range(2):
                    s.send(run)
                    self.assertIn(("D", ("1", "10")), s.until_ready())
                CLUSTER.psql(CLUSTER.primary_port,
                             "alter table kept_mux add column w int default 7")
                CLUSTER.wait_replay()
                s.send(run)
                self.assertEqual(s.until_ready(), [("1", None), ("E", "0A000"), ("Z", "I")])
                for _ in range(2):
                    s.send(run)
                    self.assertIn(("D", ("1", "10", "7")), s.until_ready())
            finally:
                for s in clients:
                    s.close()
                b.close()
                CLUSTER.psql(CLUSTER.primary_port, "drop table kept_mux")

    def test_simple_queries_share_one_kept_statement(self):
        """Simple-protocol reads whose integer literals become parameters
        (prepare_simple_queries) run on the shared backend as the one statement it keeps for
        the text: every client gets its own answers, one by one and pipelined, and the node
        prepared each text once. When a column's type changes under the kept statement, the
        node refuses it (0A000) and the read runs again as it came."""
        W = wire

        def batches(i):
            out = []
            for k in range(6):
                out.append(W.Query("select v, id from mux_q where id = %d" % (10 + (5 * i + k) % 20)))
                out.append(W.Query("select v * 100 + %d as x from mux_q where id = 15" % (10 + k)))
            out.append(W.Query("select nosuch from mux_q where id = 12"))
            return out

        CLUSTER.psql(CLUSTER.primary_port, "create table mux_q (id int primary key, v int); "
                     "insert into mux_q select g, g * 3 from generate_series(10, 29) g")
        CLUSTER.wait_replay()
        want = answers_of_one_server(batches)
        self.assertEqual(want[0][-2:], [("E", "42703"), ("Z", "I")])
        with multiplexing() as px:
            b = connect(px)
            clients = [raw_login(px) for _ in range(3)]
            try:
                shared_pid = replica_pid(b)
                reused = int(admin_stat(px, "simple_queries_reused"))
                self.each_gets_its_own(clients, batches, want)
                self.assertGreaterEqual(int(admin_stat(px, "simple_queries_reused")) - reused,
                                        3 * 12 - 2)
                with b.cursor() as cur:
                    cur.execute("select pg_backend_pid(), statement from pg_prepared_statements")
                    rows = cur.fetchall()
                self.assertEqual({r[0] for r in rows}, {shared_pid})
                self.assertEqual(sorted(r[1] for r in rows),
                                 ["select v * $1 + $2 as x from mux_q where id = $3",
                                  "select v, id from mux_q where id = $1"])
                s = clients[0]
                q = W.Query("select v, id from mux_q where id = 12")
                s.send(q)
                self.assertEqual(s.until_ready(),
                                 [("T", ("v", "id")), ("D", ("36", "12")), ("C", "SELECT 1"),
                                  ("Z", "I")])
                CLUSTER.psql(CLUSTER.primary_port, "alter table mux_q alter column v type text")
                CLUSTER.wait_replay()
                for _ in range(2):
                    s.send(q)
                    self.assertEqual(s.until_ready(),
                                     [("T", ("v", "id")), ("D", ("36", "12")),
                                      ("C", "SELECT 1"), ("Z", "I")])
            finally:
                for s in clients:
                    s.close()
                b.close()
                CLUSTER.psql(CLUSTER.primary_port, "drop table mux_q")
        with open(px.log_path) as f:
            self.assertIn("refused the statement kept for its query", f.read())

    def test_named_statements_share_the_backend_under_names_of_their_own(self):
        """A Bind of a client's named statement to the unnamed portal (pgbench -M prepared,
        pgJDBC past prepareThreshold, psycopg 3's prepared statements) runs on the shared
        backend, under pgsteer's name for a statement of the same text and types: clients
        that give one name to different statements, or different names to one, each get their
        own statement's answers, as from one server, also with every client's batches sent
        before any answer is read."""
        W = wire

        def parses(i):
            return (W.Parse("select $1::int + %d" % i, name="s1") +
                    W.Parse("select $1::int * 2, 'same text'", name="s2_%d" % i) +
                    W.Parse("select $1::text || $2::text", name="s3", types=(25, 25)) +
                    W.Parse("select 1/0", name="zero") + W.Sync)

        def batches(i):
            out = []
            for k in range(6):
                out.append(W.Bind("s1", params=(k,)) + W.Describe(b"P") + W.Execute() + W.Sync)
                out.append(W.Bind("s2_%d" % i, params=(k,)) + W.Execute() + W.Sync)
                out.append(W.Bind("s3", params=(str(i), str(k))) + W.Describe(b"P") +
                           W.Execute() + W.Sync)
            out.append(W.Bind("zero") + W.Execute() + W.Sync)
            out.append(W.Bind("s1", params=(100,)) + W.Execute(maxrows=1) + W.Sync)
            out.append(W.Bind("no_such") + W.Execute() + W.Sync)
            return out

        want = answers_of_one_server(batches, parses)
        self.assertIn(("E", "22012"), want[0])
        self.assertEqual(want[0][-2:], [("E", "26000"), ("Z", "I")])
        with multiplexing() as px:
            b = connect(px)
            clients = [raw_login(px) for _ in range(3)]
            try:
                shared_pid = replica_pid(b)
                for i, s in enumerate(clients):
                    s.send(parses(i))
                    self.assertEqual(s.until_ready(), [("1", None)] * 4 + [("Z", "I")])
                before = int(admin_stat(px, "multiplexed_reads"))
                self.each_gets_its_own(clients, batches, want)
                # Every client's statements ran on the shared backend (the unknown name
                # excepted: its error comes from the client's own).
                self.assertGreaterEqual(int(admin_stat(px, "multiplexed_reads")) - before,
                                        3 * 2 * (len(batches(0)) - 1))
                s = clients[0]
                s.send(W.Parse("select pg_backend_pid()", name="pid") + W.Sync)
                s.until_ready()
                s.send(W.Bind("pid") + W.Execute() + W.Sync)
                self.assertIn(("D", (str(shared_pid),)), s.until_ready())
                # On the node, one statement for each text and types, under pgsteer's names.
                with b.cursor() as cur:
                    cur.execute("select pg_backend_pid(), name, statement "
                                "from pg_prepared_statements order by statement")
                    rows = cur.fetchall()
                self.assertEqual({r[0] for r in rows}, {shared_pid})
                self.assertTrue(all(re.fullmatch(r"pgsteer_s[0-9]+", r[1]) for r in rows), rows)
                self.assertEqual(sorted(r[2] for r in rows),
                                 sorted(["select $1::int + 0", "select $1::int + 1",
                                         "select $1::int + 2", "select $1::int * 2, 'same text'",
                                         "select $1::text || $2::text", "select 1/0",
                                         "select pg_backend_pid()"]))
            finally:
                for s in clients:
                    s.close()
                b.close()

    def test_a_named_statement_the_shared_backend_cannot_prepare(self):
        """The shared backend prepares a client's statement when it first needs it: if the
        node refuses (here its table was dropped since the client prepared it), the client
        gets the node's error for its batch, as one server gives it when it re-checks the
        statement, and a later Bind prepares it anew."""
        W = wire
        CLUSTER.psql(CLUSTER.primary_port, "create table mux_late (v int)")
        CLUSTER.wait_replay()
        with multiplexing() as px:
            b = connect(px)
            s = raw_login(px)
            try:
                shared_pid = replica_pid(b)
                s.send(W.Parse("select count(*), pg_backend_pid() from mux_late", name="late") +
                       W.Sync)
                self.assertEqual(s.until_ready(), [("1", None), ("Z", "I")])
                CLUSTER.psql(CLUSTER.primary_port, "drop table mux_late")
                CLUSTER.wait_replay()
                s.send(W.Bind("late") + W.Execute() + W.Sync)
                self.assertEqual(s.until_ready(), [("E", "42P01"), ("Z", "I")])
                CLUSTER.psql(CLUSTER.primary_port, "create table mux_late (v int)")
                CLUSTER.wait_replay()
                for _ in range(2):
                    s.send(W.Bind("late") + W.Execute() + W.Sync)
                    self.assertEqual(s.until_ready(), [("2", None), ("D", ("0", str(shared_pid))),
                                                       ("C", "SELECT 1"), ("Z", "I")])
            finally:
                s.close()
                b.close()
                CLUSTER.psql(CLUSTER.primary_port, "drop table if exists mux_late")

    def test_more_named_statements_than_a_shared_backend_keeps(self):
        """A shared backend keeps up to 128 statements: a client's statements beyond that run
        on its own backend, with the same answers."""
        W = wire
        n = 131
        with multiplexing() as px:
            b = connect(px)
            s = raw_login(px)
            try:
                shared_pid = replica_pid(b)
                s.send(b"".join(W.Parse("select pg_backend_pid(), %d" % k, name="p%d" % k)
                                for k in range(n)) + W.Sync)
                s.until_ready()
                pids = []
                for k in range(n):
                    s.send(W.Bind("p%d" % k) + W.Execute() + W.Sync)
                    out = s.until_ready()
                    self.assertEqual(out[1][1][1], str(k))
                    pids.append(int(out[1][1][0]))
                self.assertEqual(pids[:128], [shared_pid] * 128)
                self.assertNotIn(shared_pid, pids[128:])
                # The ones it keeps stay usable.
                s.send(W.Bind("p5") + W.Execute() + W.Sync)
                self.assertEqual(s.until_ready()[1], ("D", (str(shared_pid), "5")))
            finally:
                s.close()
                b.close()

    def test_a_long_answer_to_a_slow_reader(self):
        for extra in (NO_STALL, ""):
            with self.subTest(extra=extra):
                self.check_slow_reader(extra)

    def check_slow_reader(self, extra_yaml):
        with multiplexing(extra_yaml) as px:
            s = raw_login(px)
            b = connect(px)
            try:
                self.assertEqual(raw_pid(s), replica_pid(b))
                # The raw client asks for about 80 MB, more than pgsteer buffers for a client
                # plus what the sockets hold, and reads none of it for a while: the shared
                # backend pauses, then both complete. b's read behind it waits, or with
                # multiplex_stall_ms (by default) runs on b's own backend meanwhile.
                s.send(wire.Query("select repeat('x', 1000) from generate_series(1, 80000)"))
                time.sleep(0.3)
                result = {}
                t = threading.Thread(target=lambda: result.update(v=one(b, "select 'b'")))
                t.start()
                t.join(timeout=0.5)
                if extra_yaml:
                    self.assertTrue(t.is_alive(), "b's read waits behind the long answer")
                else:
                    self.assertFalse(t.is_alive(), "b's read does not wait")
                    self.assertEqual(result.get("v"), ("b",))
                    self.assertGreaterEqual(int(admin_stat(px, "multiplex_stalls")), 1)
                rows, size = read_until_ready(s)
                t.join(timeout=30)
                self.assertEqual(result.get("v"), ("b",))
                self.assertEqual(rows, 80000)
                self.assertGreater(size, 80000 * 1000)
            finally:
                s.sock.close()
                b.close()



def vm_rss_mb(px):
    with open("/proc/%d/status" % px.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


class SlowReaderTest(unittest.TestCase):
    """A client that does not read its answer: pgsteer stops reading the node once a few
    megabytes wait for the client, instead of holding the whole answer in memory."""

    BIG = "select repeat('x', 1000) from generate_series(1, 200000)"  # about 200 MB

    def setUp(self):
        faulthandler.dump_traceback_later(120, exit=True)

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()

    def check(self, px, s):
        before = vm_rss_mb(px)
        s.send(wire.Query(self.BIG))
        time.sleep(1.5)
        grown = vm_rss_mb(px) - before
        self.assertLess(grown, 40, "pgsteer holds %.0f MB for a client that does not read"
                        % grown)
        rows, size = read_until_ready(s)
        self.assertEqual(rows, 200000)
        self.assertGreater(size, 200000 * 1000)

    def test_on_its_own_backend(self):
        s = raw_login(PX)
        try:
            self.check(PX, s)
        finally:
            s.close()

    def test_on_a_shared_backend(self):
        with multiplexing() as px:
            b = connect(px)
            s = raw_login(px)
            try:
                self.assertEqual(raw_pid(s), replica_pid(b))
                self.check(px, s)
            finally:
                s.close()
                b.close()


if __name__ == "__main__":
    unittest.main()
