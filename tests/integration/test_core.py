# SPDX-License-Identifier: MIT
"""Integration tests: a real primary and two streaming replicas behind ./pgsteer, driven by
psql, pgbench, psycopg2 and raw sockets. Each test asserts on which node a statement ran
(inet_server_port()) or what a client saw.

Run: /usr/bin/python3 -m unittest -v tests/integration/test_core.py
(or tests/integration/run.sh, which also guarantees cleanup)."""

import faulthandler
import io
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster as cl  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402

CLUSTER = None
PX = None  # pgsteer with auth_method scram-sha-256, shared by most tests
_instances = {}  # auth_method -> Pgsteer, started on first use


def setUpModule():
    global CLUSTER, PX
    CLUSTER = cl.Cluster(replicas=2)
    try:
        CLUSTER.start()
        sys.stderr.write("cluster up in %.1fs: primary :%d, replicas %s\n"
                         % (CLUSTER.start_seconds, CLUSTER.primary_port, CLUSTER.replica_ports))
        CLUSTER.psql(CLUSTER.primary_port, [
            "create table items (id serial primary key, v text)",
            "create table kv (k int primary key, v text)",
            "create table copy_t (a int, b text)",
            "create sequence s",
            "create schema s1",
            "create table s1.only_in_s1 (v int)",
            "insert into s1.only_in_s1 values (7)",
        ])
        CLUSTER.wait_replay()
        PX = pgsteer("scram-sha-256")
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    for px in list(_instances.values()):
        px.stop()
    _instances.clear()
    if CLUSTER is not None:
        CLUSTER.stop()


def pgsteer(auth_method):
    """The pgsteer instance for `auth_method`, started on first use. Waits until reads reach
    a replica (the monitor has seen them) so that the first test does not race it."""
    px = _instances.get(auth_method)
    if px is None:
        px = cl.Pgsteer(CLUSTER, auth_method=auth_method, name=auth_method.split("-")[0])
        px.start()
        _instances[auth_method] = px
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                c = psycopg2.connect(px.dsn())
                try:
                    c.autocommit = True
                    cur = c.cursor()
                    cur.execute("select inet_server_port()")
                    if cur.fetchone()[0] in CLUSTER.replica_ports:
                        break
                finally:
                    c.close()
            except psycopg2.Error:
                pass
            time.sleep(0.1)
    return px


def psql(sql, px=None, user="app", password="secret", check=True, extra_args=()):
    """psql through pgsteer; every string in `sql` is its own Query message."""
    px = px or PX
    return cl.run_psql(px.port, sql, user=user, password=password, check=check, timeout=30,
                       extra_args=extra_args, bindir=CLUSTER.bindir)


def ports(out):
    return [int(x) for x in out.split()]


class Base(unittest.TestCase):
    """Shows the pgsteer logs right after a test that failed; shows the stacks of a test
    that hangs."""

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result is not None else 0
        # A test stuck for two minutes prints every thread's stack (and keeps running).
        faulthandler.dump_traceback_later(120)
        try:
            out = super().run(result)
        finally:
            faulthandler.cancel_dump_traceback_later()
        if result is not None and len(result.failures) + len(result.errors) > before:
            for px in _instances.values():
                px.dump_log(40)
        return out

    @property
    def primary(self):
        return CLUSTER.primary_port

    @property
    def replicas(self):
        return set(CLUSTER.replica_ports)

    def connect(self, px=None, autocommit=True, **kw):
        c = psycopg2.connect((px or PX).dsn(**kw))
        c.autocommit = autocommit
        self.addCleanup(c.close)
        return c

    def query(self, conn, sql, args=None):
        cur = conn.cursor()
        cur.execute(sql, args)
        return cur.fetchall() if cur.description is not None else None

    def one(self, conn, sql, args=None):
        rows = self.query(conn, sql, args)
        self.assertEqual(len(rows), 1, sql)
        return rows[0]

    def assertHealthy(self, px=None):
        px = px or PX
        self.assertTrue(px.alive(), "pgsteer exited")
        c = self.connect(px)
        self.assertEqual(self.one(c, "select 42")[0], 42)


# ---- routing, observed with psql -------------------------------------------------------------
class RoutingTest(Base):
    def test_reads_go_to_replicas(self):
        seen = []
        for _ in range(10):  # ten sessions
            seen += ports(psql("select inet_server_port()").stdout)
        seen += ports(psql(["select inet_server_port()"] * 10).stdout)  # one session
        self.assertEqual(len(seen), 20)
        self.assertNotIn(self.primary, seen)
        self.assertEqual(set(seen), self.replicas, "both replicas serve reads")

    def test_insert_returning_runs_on_primary(self):
        out = psql("insert into items (v) values ('r') returning inet_server_port()").stdout
        self.assertEqual(ports(out), [self.primary])

    def test_transaction_runs_on_primary(self):
        out = psql(["begin", "select inet_server_port()", "select inet_server_port()",
                    "commit"]).stdout
        self.assertEqual(ports(out), [self.primary] * 2)
        out = psql("begin; select inet_server_port(); commit;").stdout
        self.assertEqual(ports(out), [self.primary])

    def test_read_only_transaction_runs_on_replica(self):
        out = psql(["begin read only", "select inet_server_port()", "select inet_server_port()",
                    "commit"]).stdout
        got = ports(out)
        self.assertEqual(len(got), 2)
        self.assertIn(got[0], self.replicas)
        self.assertEqual(got[0], got[1], "a transaction stays on one node")
        got = ports(psql(["start transaction read only", "select inet_server_port()",
                          "commit"]).stdout)
        self.assertEqual(len(got), 1)
        self.assertIn(got[0], self.replicas)

    def test_primary_hint_forces_primary(self):
        out = psql(["/* pgsteer:primary */ select inet_server_port()"] * 3).stdout
        self.assertEqual(ports(out), [self.primary] * 3)

    def test_nextval_runs_on_primary(self):
        out = psql("select nextval('s'), inet_server_port()").stdout.strip()
        n, port = out.split("|")
        self.assertGreaterEqual(int(n), 1)
        self.assertEqual(int(port), self.primary)

    def test_multi_statement_with_write_runs_on_primary(self):
        # One Query message: the select must run where the insert runs.
        out = psql("select inet_server_port(); "
                   "insert into items (v) values ('m') returning inet_server_port()").stdout
        got = ports(out)
        self.assertGreaterEqual(len(got), 1)
        self.assertEqual(set(got), {self.primary})

    def test_search_path_follows_the_session(self):
        out = psql([
            "set search_path to s1, public",
            "select current_setting('search_path') || '|' || inet_server_port()",
            "select v || '|' || inet_server_port() from only_in_s1 order by v limit 1",
            "insert into only_in_s1 values (8) returning inet_server_port()",
        ]).stdout.splitlines()
        self.assertEqual(len(out), 3, out)
        path, port1 = out[0].rsplit("|", 1)
        v, port2 = out[1].rsplit("|", 1)
        self.assertEqual(path, "s1, public")
        self.assertIn(int(port1), self.replicas)
        self.assertEqual(v, "7")
        self.assertIn(int(port2), self.replicas)
        self.assertEqual(int(out[2]), self.primary)


# ---- authentication -------------------------------------------------------------------------
def startup_packet(user="app", db="app", proto=196608):
    body = struct.pack("!I", proto)
    for k, v in (("user", user), ("database", db), ("application_name", "pgsteer-tests")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_msg(sock):
    """(type, body) of the next backend message, or None at EOF."""
    hdr = recv_exact(sock, 5)
    if hdr is None:
        return None
    typ, length = hdr[:1], struct.unpack("!I", hdr[1:])[0]
    if length < 4 or length > 1 << 24:
        raise AssertionError("bad message length %d for type %r" % (length, typ))
    body = recv_exact(sock, length - 4)
    if body is None:
        return None
    return typ, body


def error_fields(body):
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[part[:1].decode()] = part[1:].decode("utf-8", "replace")
    return out


def raw_connect(px, timeout=5):
    s = socket.create_connection(("127.0.0.1", px.port), timeout=timeout)
    s.settimeout(timeout)
    return s


def auth_request(px, user="app"):
    """The authentication request code pgsteer answers a StartupMessage with (0 ok, 5 md5,
    10 SASL) and the message body."""
    with raw_connect(px) as s:
        s.sendall(startup_packet(user))
        m = read_msg(s)
        if m is None:
            raise AssertionError("connection closed after StartupMessage")
        typ, body = m
        if typ == b"E":
            raise AssertionError("error after StartupMessage: %s" % error_fields(body))
        if typ != b"R":
            raise AssertionError("expected an authentication request, got %r" % typ)
        return struct.unpack("!I", body[:4])[0], body[4:]


class AuthTest(Base):
    def assertAuthFails(self, px, user="app", password="wrong"):
        with self.assertRaises(psycopg2.OperationalError) as cm:
            psycopg2.connect(px.dsn(user=user, password=password)).close()
        self.assertIn("password authentication failed", str(cm.exception))
        p = psql("select 1", px=px, user=user, password=password, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("password authentication failed", p.stderr)

    def assertAuthWorks(self, px, password="secret"):
        c = self.connect(px, password=password)
        self.assertEqual(self.one(c, "select current_user")[0], "app")
        p = psql("select current_user", px=px, password=password)
        self.assertEqual(p.stdout.strip(), "app")

    def test_scram(self):
        code, body = auth_request(PX)
        self.assertEqual(code, 10, "AuthenticationSASL")
        self.assertIn(b"SCRAM-SHA-256\0", body)
        self.assertAuthFails(PX)
        self.assertAuthWorks(PX)

    def test_scram_unknown_user_fails(self):
        with self.assertRaises(psycopg2.OperationalError) as cm:
            psycopg2.connect(PX.dsn(user="nobody", password="secret")).close()
        self.assertRegex(str(cm.exception), "authentication failed|does not exist")

    def test_md5(self):
        px = pgsteer("md5")
        code, body = auth_request(px)
        self.assertEqual(code, 5, "AuthenticationMD5Password")
        self.assertEqual(len(body), 4, "4-byte salt")
        self.assertAuthFails(px)
        self.assertAuthWorks(px)

    def test_trust(self):
        px = pgsteer("trust")
        code, _ = auth_request(px)
        self.assertEqual(code, 0, "AuthenticationOk without a password")
        c = self.connect(px, password=None)
        self.assertEqual(self.one(c, "select current_user")[0], "app")
        self.assertAuthWorks(px, password="anything")


# ---- pgbench ----------------------------------------------------------------------------
class PgbenchTest(Base):
    @classmethod
    def setUpClass(cls):
        env = dict(os.environ, PGPASSWORD="secret")
        p = subprocess.run([os.path.join(CLUSTER.bindir, "pgbench"), "-i", "-s", "1", "-q",
                            "-h", "127.0.0.1", "-p", str(CLUSTER.primary_port), "-U", "app",
                            "app"], env=env, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError("pgbench -i failed: %s" % p.stderr)
        CLUSTER.wait_replay()

    def account_lookups(self):
        """Index scans of pgbench_accounts per node, from that node's own statistics: the
        select-only script does one per transaction, and nothing else reads that table on a
        replica (replayed WAL is not counted)."""
        return {port: int(CLUSTER.psql(port, "select coalesce(sum(idx_scan), 0) from "
                                              "pg_stat_user_tables where relname = "
                                              "'pgbench_accounts'"))
                for port in CLUSTER.ports}

    def pgbench(self, mode, select_only):
        if select_only:
            # A read-write run just before may have left a replica behind; reads would then
            # (rightly) avoid it. Start from caught-up replicas the monitor has seen as such.
            CLUSTER.wait_replay()
            time.sleep(0.5)
        before = self.account_lookups()
        args = [os.path.join(CLUSTER.bindir, "pgbench"), "-h", "127.0.0.1", "-p", str(PX.port),
                "-U", "app", "-c", "4", "-j", "2", "-T", "3", "-M", mode]
        if select_only:
            args.append("-S")
        args.append("app")
        env = dict(os.environ, PGPASSWORD="secret")
        p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        report = "pgbench %s\nstdout:\n%s\nstderr:\n%s" % (" ".join(args[1:]), p.stdout,
                                                          p.stderr[-3000:])
        self.assertEqual(p.returncode, 0, report)
        m = re.search(r"number of transactions actually processed: (\d+)", p.stdout)
        self.assertIsNotNone(m, report)
        self.assertGreater(int(m.group(1)), 0, report)
        m = re.search(r"number of failed transactions: (\d+)", p.stdout)
        if m is not None or "failed transactions" in p.stdout:  # PostgreSQL 15+ reports it
            self.assertIsNotNone(m, report)
            self.assertEqual(int(m.group(1)), 0, report)
        if select_only:
            # Busy backends flush statistics at least once a second: after 3 s of reads
            # every replica shows some. Retry briefly for the slowest flush.
            deadline = time.monotonic() + 3
            while True:
                after = self.account_lookups()
                served = {p: after[p] - before[p] for p in CLUSTER.replica_ports}
                if all(v > 0 for v in served.values()) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            self.assertTrue(all(v > 0 for v in served.values()),
                            "select-only lookups per replica port: %s" % served)

    def test_simple_select_only(self):
        self.pgbench("simple", True)

    def test_simple_tpcb(self):
        self.pgbench("simple", False)

    def test_extended_select_only(self):
        self.pgbench("extended", True)

    def test_extended_tpcb(self):
        self.pgbench("extended", False)

    def test_prepared_select_only(self):
        self.pgbench("prepared", True)

    def test_prepared_tpcb(self):
        self.pgbench("prepared", False)


# ---- psycopg2 ---------------------------------------------------------------------------
_keys = iter(range(1000, 10 ** 9))


class PsycopgTest(Base):
    def test_parameterised_insert_then_read_back(self):
        k = next(_keys)
        c = self.connect()
        self.query(c, "insert into kv (k, v) values (%s, %s)", (k, "o'reilly \\ \u00e9"))
        # Same session: read-your-writes.
        self.assertEqual(self.one(c, "select v from kv where k = %s", (k,))[0],
                         "o'reilly \\ \u00e9")
        CLUSTER.wait_replay()
        c2 = self.connect()
        self.assertEqual(self.one(c2, "select v from kv where k = %s", (k,))[0],
                         "o'reilly \\ \u00e9")

    def test_sql_prepare_execute_deallocate_across_nodes(self):
        c = self.connect()
        self.query(c, "prepare q(int) as select $1 + 1, inet_server_port()")
        self.query(c, "prepare w(text) as insert into items (v) values ($1) "
                      "returning inet_server_port()")
        seen = set()
        for i in range(6):
            n, port = self.one(c, "execute q(%s)", (i,))
            self.assertEqual(n, i + 1)
            seen.add(port)
        self.assertTrue(seen <= self.replicas, "autocommit reads on replicas: %s" % seen)
        self.assertEqual(self.one(c, "execute w('prepared')")[0], self.primary)
        c.autocommit = False
        n, port = self.one(c, "execute q(41)")  # in a transaction: primary
        c.commit()
        c.autocommit = True
        self.assertEqual((n, port), (42, self.primary))
        seen.add(port)
        self.assertGreaterEqual(len(seen), 2, "EXECUTE ran on several nodes: %s" % seen)
        self.query(c, "deallocate q")
        for _ in range(3):  # gone from every node
            with self.assertRaises(psycopg2.errors.InvalidSqlStatementName):
                self.query(c, "execute q(1)")
        self.assertEqual(self.one(c, "execute w('still there')")[0], self.primary)

    def test_commit_and_rollback(self):
        k1, k2 = next(_keys), next(_keys)
        c = self.connect(autocommit=False)
        self.query(c, "insert into kv (k, v) values (%s, 'rolled back')", (k1,))
        self.assertEqual(self.one(c, "select inet_server_port()")[0], self.primary)
        c.rollback()
        self.query(c, "insert into kv (k, v) values (%s, 'committed')", (k2,))
        c.commit()
        c.autocommit = True
        rows = self.query(c, "select k from kv where k in (%s, %s)", (k1, k2))
        self.assertEqual(rows, [(k2,)])

    def test_error_in_transaction_then_rollback(self):
        c = self.connect(autocommit=False)
        self.one(c, "select 1")
        with self.assertRaises(psycopg2.errors.DivisionByZero):
            self.query(c, "select 1/0")
        with self.assertRaises(psycopg2.errors.InFailedSqlTransaction):
            self.query(c, "select 1")
        c.rollback()
        self.assertEqual(self.one(c, "select 2")[0], 2)
        c.commit()
        c.autocommit = True
        with self.assertRaises(psycopg2.errors.UndefinedTable):
            self.query(c, "select * from no_such_table")
        self.assertEqual(self.one(c, "select 3")[0], 3)

    def test_large_result(self):
        c = self.connect()
        rows = self.query(c, "select g, repeat('x', 100) from generate_series(1, 10000) g")
        self.assertEqual(len(rows), 10000)
        self.assertEqual(sum(r[0] for r in rows), 10000 * 10001 // 2)
        # A server-side cursor (DECLARE + FETCH inside one transaction).
        c2 = self.connect(autocommit=False)
        cur = c2.cursor("big")
        cur.itersize = 700
        cur.execute("select g from generate_series(1, 10000) g")
        self.assertEqual(sum(r[0] for r in cur), 10000 * 10001 // 2)
        cur.close()
        c2.commit()

    def test_copy_from_stdin_and_to_stdout(self):
        c = self.connect()
        data = "".join("%d\tline %d\n" % (i, i) for i in range(2000))
        cur = c.cursor()
        cur.execute("truncate copy_t")
        cur.copy_expert("copy copy_t (a, b) from stdin", io.StringIO(data))
        self.assertEqual(cur.rowcount, 2000)
        CLUSTER.wait_replay()
        out = io.StringIO()
        cur.copy_expert("copy (select a, b from copy_t order by a) to stdout", out)
        self.assertEqual(out.getvalue(), data)
        out = io.StringIO()
        cur.copy_expert("copy copy_t to stdout", out)
        self.assertEqual(sorted(out.getvalue().splitlines()), sorted(data.splitlines()))
        # Bad data mid-stream: an error, and the session goes on.
        with self.assertRaises(psycopg2.errors.InvalidTextRepresentation):
            cur.copy_expert("copy copy_t (a, b) from stdin", io.StringIO("1\tok\nx\tbad\n"))
        self.assertEqual(self.one(c, "select 5")[0], 5)

    def test_temp_table_pins_session_to_primary(self):
        c = self.connect()
        self.query(c, "create temp table tt (x int)")
        self.query(c, "insert into tt values (1), (2)")
        for _ in range(4):
            n, port = self.one(c, "select count(*), inet_server_port() from tt")
            self.assertEqual((n, port), (2, self.primary))
        self.assertEqual(self.one(c, "select inet_server_port()")[0], self.primary, "pinned")

    def test_advisory_lock_pins_session_to_primary(self):
        c = self.connect()
        self.one(c, "select pg_advisory_lock(4242)")
        for _ in range(3):
            self.assertEqual(self.one(c, "select inet_server_port()")[0], self.primary)
        # Unlocking where the lock is not held returns false: it must run where it was taken.
        self.assertIs(self.one(c, "select pg_advisory_unlock(4242)")[0], True)

    def test_with_hold_cursor_outlives_its_transaction(self):
        c = self.connect()
        self.query(c, "declare wh cursor with hold for select g from generate_series(1, 10) g")
        self.assertEqual(self.query(c, "fetch 4 from wh"), [(1,), (2,), (3,), (4,)])
        self.assertEqual(self.query(c, "fetch 4 from wh"), [(5,), (6,), (7,), (8,)])
        self.query(c, "close wh")
        self.assertEqual(self.one(c, "select inet_server_port()")[0], self.primary, "pinned")

    def test_reset_and_discard_follow_session(self):
        c = self.connect()
        self.query(c, "set search_path to s1, public")
        for _ in range(3):
            self.assertEqual(self.one(c, "select v from only_in_s1 order by v limit 1")[0], 7)
        self.query(c, "reset search_path")
        for _ in range(3):  # on every replica the session's search_path is back to default
            with self.assertRaises(psycopg2.errors.UndefinedTable):
                self.query(c, "select v from only_in_s1")
        self.query(c, "set statement_timeout = '200ms'")
        self.query(c, "discard all")
        for sql in ("select pg_sleep(0.4)", "select pg_sleep(0.4)",
                    "/* pgsteer:primary */ select pg_sleep(0.4)"):
            self.one(c, sql)  # would be cancelled if the timeout were still set there

    def wait_notify(self, conn, timeout=5):
        deadline = time.monotonic() + timeout
        while not conn.notifies and time.monotonic() < deadline:
            select.select([conn], [], [], max(0, deadline - time.monotonic()))
            conn.poll()
        return conn.notifies

    def test_listen_notify(self):
        listener = self.connect()
        self.query(listener, "listen ch_test")
        sender = self.connect()
        self.query(sender, "notify ch_test, 'hello'")
        got = self.wait_notify(listener)
        self.assertEqual([(n.channel, n.payload) for n in got], [("ch_test", "hello")])

    def test_pg_notify_function(self):
        listener = self.connect()
        self.query(listener, "listen ch_fn")
        sender = self.connect()
        self.query(sender, "select pg_notify('ch_fn', 'via function')")
        got = self.wait_notify(listener)
        self.assertEqual([(n.channel, n.payload) for n in got], [("ch_fn", "via function")])

    def test_statement_timeout_follows_session(self):
        c = self.connect()
        self.query(c, "set statement_timeout = '300ms'")
        for sql in ("select pg_sleep(3)", "/* pgsteer:primary */ select pg_sleep(3)"):
            t0 = time.monotonic()
            with self.assertRaises(psycopg2.errors.QueryCanceled) as cm:
                self.query(c, sql)
            self.assertEqual(cm.exception.pgcode, "57014")
            self.assertLess(time.monotonic() - t0, 2.5, sql)
            self.assertEqual(self.one(c, "select 1")[0], 1)
        self.assertEqual(self.one(c, "show statement_timeout")[0], "300ms")
        self.query(c, "reset statement_timeout")
        self.one(c, "select pg_sleep(0.4)")

    def test_cancel_from_another_thread(self):
        for sql in ("select pg_sleep(10)", "/* pgsteer:primary */ select pg_sleep(10)"):
            c = self.connect()
            timer = threading.Timer(0.5, c.cancel)
            timer.start()
            t0 = time.monotonic()
            try:
                with self.assertRaises(psycopg2.errors.QueryCanceled) as cm:
                    self.query(c, sql)
            finally:
                timer.cancel()
            self.assertEqual(cm.exception.pgcode, "57014")
            self.assertLess(time.monotonic() - t0, 3, sql)
            self.assertEqual(self.one(c, "select 1")[0], 1)


# ---- raw protocol input -----------------------------------------------------------------
class ProtocolTest(Base):
    def login_trust(self):
        """A raw connection to the trust instance, logged in (ReadyForQuery seen)."""
        s = raw_connect(pgsteer("trust"))
        self.addCleanup(s.close)
        s.sendall(startup_packet())
        while True:
            m = read_msg(s)
            self.assertIsNotNone(m, "closed during login")
            if m[0] == b"E":
                self.fail("login failed: %s" % error_fields(m[1]))
            if m[0] == b"R" and struct.unpack("!I", m[1][:4])[0] != 0:
                self.fail("trust instance asked for a password (auth request %d)"
                          % struct.unpack("!I", m[1][:4])[0])
            if m[0] == b"Z":
                return s

    def expect_error_then_close(self, s, codes=("08P01",)):
        """Read until an ErrorResponse; its SQLSTATE must be in `codes` (a prefix ending in
        '*' matches a class); then the connection must be closed."""
        while True:
            m = read_msg(s)
            self.assertIsNotNone(m, "closed without an ErrorResponse")
            if m[0] == b"E":
                break
            self.assertIn(m[0], (b"N", b"S"), "unexpected message %r" % m[0])
        f = error_fields(m[1])
        code = f.get("C", "")
        self.assertTrue(any(code == c or (c.endswith("*") and code.startswith(c[:-1]))
                            for c in codes), "SQLSTATE %s not in %s: %s" % (code, codes, f))
        self.assertIn(f.get("S"), ("ERROR", "FATAL"))
        self.assertTrue(f.get("M"), "error has a message")
        self.assertIsNone(read_msg(s), "connection closed after the error")

    def expect_rejected(self, s):
        """An error (or nothing) and then a close, within the socket timeout. (The reply to
        a protocol 2 startup may be a protocol 2 error, so its bytes are not parsed.)"""
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            self.fail("connection not closed; received %r" % data[:100])
        except ConnectionResetError:
            pass
        if data:
            self.assertEqual(data[:1], b"E", "rejected with an error, got %r" % data[:100])

    def test_garbage_after_login(self):
        s = self.login_trust()
        s.sendall(b"\x00garbage garbage garbage garbage")
        self.expect_error_then_close(s)
        self.assertHealthy(pgsteer("trust"))

    def test_unknown_message_type_after_login(self):
        s = self.login_trust()
        s.sendall(b"\x01" + struct.pack("!I", 4))
        self.expect_error_then_close(s)

    def test_bad_message_length_after_login(self):
        s = self.login_trust()
        s.sendall(b"Q" + struct.pack("!I", 2))
        self.expect_error_then_close(s)
        s = self.login_trust()
        s.sendall(b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"select 1")
        self.expect_error_then_close(s)
        self.assertHealthy(pgsteer("trust"))

    def test_garbage_during_authentication(self):
        s = raw_connect(PX)
        self.addCleanup(s.close)
        s.sendall(startup_packet())
        typ, body = read_msg(s)
        self.assertEqual((typ, struct.unpack("!I", body[:4])[0]), (b"R", 10))
        s.sendall(b"garbage garbage garbage garbage")
        self.expect_error_then_close(s, codes=("08P01", "28*"))
        self.assertHealthy()

    def test_truncated_startup_packet(self):
        s = raw_connect(PX)
        self.addCleanup(s.close)
        s.sendall(struct.pack("!II", 100, 196608) + b"user\0ap")
        s.shutdown(socket.SHUT_WR)
        self.expect_rejected(s)
        self.assertHealthy()

    def test_oversized_startup_packet(self):
        for length in (0x7FFFFFFF, 1 << 20):
            s = raw_connect(PX)
            self.addCleanup(s.close)
            s.sendall(struct.pack("!II", length, 196608) + b"user\0app\0\0")
            self.expect_rejected(s)
        self.assertHealthy()

    def test_undersized_startup_packet(self):
        s = raw_connect(PX)
        self.addCleanup(s.close)
        s.sendall(struct.pack("!I", 3) + b"\0\0\0\0")
        self.expect_rejected(s)
        self.assertHealthy()

    def test_unsupported_protocol_version(self):
        s = raw_connect(PX)
        self.addCleanup(s.close)
        s.sendall(startup_packet(proto=2 << 16))
        self.expect_rejected(s)
        self.assertHealthy()

    def test_ssl_request_is_answered(self):
        s = raw_connect(PX)
        self.addCleanup(s.close)
        s.sendall(struct.pack("!II", 8, 80877103))
        answer = recv_exact(s, 1)
        self.assertIn(answer, (b"N", b"S"))
        if answer == b"N":  # the same connection goes on in plain text
            s.sendall(startup_packet())
            typ, body = read_msg(s)
            self.assertEqual((typ, struct.unpack("!I", body[:4])[0]), (b"R", 10))

    def test_gssenc_request_is_answered(self):
        s = raw_connect(PX)
        self.addCleanup(s.close)
        s.sendall(struct.pack("!II", 8, 80877104))
        answer = recv_exact(s, 1)
        self.assertIn(answer, (b"N", b"G"))
        if answer == b"N":
            s.sendall(startup_packet())
            typ, body = read_msg(s)
            self.assertEqual((typ, struct.unpack("!I", body[:4])[0]), (b"R", 10))

    def test_cancel_request_with_unknown_key(self):
        s = raw_connect(PX)
        self.addCleanup(s.close)
        s.sendall(struct.pack("!IIII", 16, 80877102, 12345, 67890))
        self.assertIsNone(read_msg(s), "a CancelRequest gets no answer, just a close")
        self.assertHealthy()


# ---- pgsteer --check and friends ------------------------------------------------------------
class CommandLineTest(Base):
    def run_pgsteer(self, *args):
        return subprocess.run([cl.pgsteer_binary()] + list(args), capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)

    def write(self, name, text):
        path = os.path.join(CLUSTER.tmpdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_check_valid_config(self):
        path = self.write("valid.yaml", cl.config_yaml(CLUSTER, cl.free_port(), cl.free_port()))
        p = self.run_pgsteer("--check", "-c", path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_reports_every_problem_with_position(self):
        path = self.write("broken.yaml", "\n".join([
            "listen: 127.0.0.1:6432",
            "auth_method: bogus",
            "users:",
            "  - {name: app, password: secret}",
            "nodes:",
            "  - {name: primary, host: 127.0.0.1, port: 99999999, role: primary}",
            "",
        ]))
        p = self.run_pgsteer("--check", "-c", path)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 1, out)
        lines = {int(m.group(1)) for m in re.finditer(
            "^" + re.escape(path) + r":(\d+):(\d+): \S", out, re.M)}
        self.assertIn(2, lines, "auth_method on line 2:\n" + out)
        self.assertIn(6, lines, "port on line 6:\n" + out)

    def test_check_reports_yaml_syntax_error(self):
        path = self.write("syntax.yaml", "listen: 127.0.0.1:6432\nusers: [ {name: app\n")
        p = self.run_pgsteer("--check", "-c", path)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 1, out)
        self.assertRegex(out, "(?m)^" + re.escape(path) + r":\d+:\d+: \S")

    def test_check_missing_file(self):
        path = os.path.join(CLUSTER.tmpdir, "no-such-file.yaml")
        p = self.run_pgsteer("--check", "-c", path)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(path, p.stdout + p.stderr)

    def test_version_and_help(self):
        p = self.run_pgsteer("--version")
        self.assertEqual(p.returncode, 0)
        self.assertIn("pgsteer", p.stdout + p.stderr)
        p = self.run_pgsteer("--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn("--check", p.stdout + p.stderr)


# ---- shutdown ------------------------------------------------------------------------------
class ShutdownTest(Base):
    def test_sigterm_waits_for_open_transaction(self):
        k = next(_keys)
        with cl.Pgsteer(CLUSTER, name="shutdown") as px:  # shows its log if this fails
            c = psycopg2.connect(px.dsn())
            self.addCleanup(c.close)
            cur = c.cursor()  # not autocommit: a transaction is open after the insert
            cur.execute("insert into kv (k, v) values (%s, 'during shutdown')", (k,))
            px.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            self.assertTrue(px.alive(), "pgsteer waits for the open transaction")
            # New clients are turned away: refused, or an error such as 57P01.
            with self.assertRaises(psycopg2.OperationalError):
                psycopg2.connect(px.dsn(connect_timeout=3)).close()
            cur.execute("select 1")
            c.commit()
            c.close()
            px.proc.wait(10)
            self.assertEqual(px.proc.returncode, 0, "clean exit after the last transaction")
        c2 = psycopg2.connect(direct_dsn(CLUSTER.primary_port))
        try:
            cur = c2.cursor()
            cur.execute("select v from kv where k = %s", (k,))
            self.assertEqual(cur.fetchall(), [("during shutdown",)])
        finally:
            c2.close()


def direct_dsn(port):
    """A direct connection to a node, bypassing pgsteer."""
    return "host=127.0.0.1 port=%d user=app password=secret dbname=app" % port


# ---- Unix-domain sockets ----------------------------------------------------------------
class UnixSocketTest(Base):
    """unix_socket_dir for clients, and nodes whose host is their socket directory: a
    sidecar's local paths. Routing is told by cluster_name, since inet_server_port() is NULL
    over a Unix-domain socket (which is also how the test knows the hop was one)."""

    @classmethod
    def setUpClass(cls):
        cls.sockdir = os.path.join(CLUSTER.tmpdir, "pxsock")
        os.makedirs(cls.sockdir, exist_ok=True)
        cls.px = cl.Pgsteer(CLUSTER, name="unix", extra_yaml="unix_socket_dir: %s\nworkers: 2\n"
                            "admin_users:\n  - {name: admin, password: adminpw}\n" % cls.sockdir)
        cls.px.node_host = CLUSTER.sockdir
        cls.px.start()
        cls.names = {n.port: n.name for n in CLUSTER.nodes}

    @classmethod
    def tearDownClass(cls):
        cls.px.stop()

    def unix_conn(self, autocommit=True, **kw):
        c = psycopg2.connect(self.px.dsn(host=self.sockdir, **kw))
        c.autocommit = autocommit
        self.addCleanup(c.close)
        return c

    def test_socket_file(self):
        path = os.path.join(self.sockdir, ".s.PGSQL.%d" % self.px.port)
        st = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode), path)
        self.assertEqual(st.st_mode & 0o777, 0o777)
        self.assertIn("and %s with" % path, self.px.log_text())

    def test_reads_and_writes_over_unix_sockets(self):
        replicas = {self.names[p] for p in CLUSTER.replica_ports}
        primary = self.names[CLUSTER.primary_port]
        seen = set()
        # Enough sessions that both workers, polling the one listening socket, take some.
        for _ in range(12):
            c = self.unix_conn()
            name, server_port, client_addr = self.one(
                c, "select current_setting('cluster_name'), inet_server_port(), "
                   "inet_client_addr()")
            self.assertIn(name, replicas)
            self.assertIsNone(server_port, "pgsteer reached the node over TCP")
            seen.add(name)
            self.query(c, "insert into items (v) values ('unix')")
            self.assertEqual(self.one(c, "select current_setting('cluster_name') "
                                         "from items limit 1 for update")[0], primary)
        self.assertEqual(seen, replicas, "sessions spread over both replicas")
        # Whichever worker accepted a connection, the one with fewer clients took it.
        out = cl.run_psql(self.px.admin_port, "SHOW CLIENTS", user="admin", db="pgsteer",
                          password="adminpw", bindir=CLUSTER.bindir).stdout
        ids = [int(r.split("|")[0]) for r in out.strip().splitlines() if r[:1].isdigit()]
        per_worker = [sum(1 for i in ids if i % 2 == w) for w in range(2)]
        self.assertGreaterEqual(len(ids), 12)
        self.assertLessEqual(abs(per_worker[0] - per_worker[1]), 1, ids)
        # The clients arrived over the socket: psql tells which kind of connection it made.
        out = cl.run_psql(self.px.port, ["\\conninfo"], host=self.sockdir,
                          password=cl.APP_PASSWORD, bindir=CLUSTER.bindir).stdout
        self.assertIn('via socket in "%s"' % self.sockdir, out)
        self.assertHealthy(self.px)

    def test_monitor_over_unix_sockets(self):
        # The monitor reaches the nodes through their sockets too (libpq takes a directory
        # as host): after a few rounds (100 ms apart) it reports every node up, where a node
        # it cannot reach would be down.
        time.sleep(0.5)
        out = cl.run_psql(self.px.admin_port, "SHOW NODES", user="admin", db="pgsteer",
                          password="adminpw", bindir=CLUSTER.bindir).stdout
        states = {r.split("|")[0]: r.split("|")[2] for r in out.strip().splitlines()}
        self.assertEqual(states, {n.name: "up" for n in CLUSTER.nodes}, out)

    def test_show_clients_says_unix(self):
        c = self.unix_conn()
        self.one(c, "select 1")
        out = cl.run_psql(self.px.admin_port, "SHOW CLIENTS", user="admin", db="pgsteer",
                          password="adminpw", bindir=CLUSTER.bindir).stdout
        rows = [r.split("|") for r in out.strip().splitlines()]
        self.assertEqual([r[8:10] for r in rows if r[1] == cl.APP_USER], [["unix", ""]], out)

    def test_cancel_over_unix_sockets(self):
        c = self.unix_conn()
        self.one(c, "select 1")
        timer = threading.Timer(0.5, c.cancel)
        timer.start()
        self.addCleanup(timer.cancel)
        t0 = time.monotonic()
        with self.assertRaises(psycopg2.errors.QueryCanceled):
            self.query(c, "select pg_sleep(20)")
        self.assertLess(time.monotonic() - t0, 10)

    def test_pgbench_over_unix_sockets(self):
        p = subprocess.run([os.path.join(CLUSTER.bindir, "pgbench"), "-n", "-h", self.sockdir,
                            "-p", str(self.px.port), "-U", "app", "-c", "4", "-j", "2", "-T",
                            "2", "-M", "extended", "-f", "-", "app"],
                           input="select count(*) from items;\n", capture_output=True,
                           text=True, timeout=60, env=dict(os.environ, PGPASSWORD="secret"))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"number of failed transactions: 0")

    def test_stale_live_and_foreign_socket_files(self):
        d = os.path.join(CLUSTER.tmpdir, "pxsock2")
        os.makedirs(d, exist_ok=True)
        port = cl.free_port(exclude=set(CLUSTER.ports) | {self.px.port, self.px.admin_port})
        path = os.path.join(d, ".s.PGSQL.%d" % port)

        def start():
            px = cl.Pgsteer(CLUSTER, name="unix2", extra_yaml="unix_socket_dir: %s\n" % d)
            px.fixed_port = port
            return px

        def refused(px, why):
            # pgsteer listens on TCP before it sets up the socket, so start() may see the port
            # open before the process gives up: what counts is that it exits, saying why.
            try:
                px.start()
            except cl.ClusterError:
                pass
            try:
                rc = px.proc.wait(timeout=15)
            finally:
                px.stop()
            self.assertNotEqual(rc, 0)
            self.assertIn(why, px.log_text())

        # Left behind by a process that did not exit cleanly: removed, then listened on.
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
        with start() as px:
            # start() returns once the TCP port answers; the socket is there once pgsteer
            # says it listens (after every listener is set up).
            deadline = time.time() + 15
            while "pgsteer listening on" not in px.log_text() and time.time() < deadline:
                time.sleep(0.02)
            self.assertIn("stale socket file", px.log_text())
            c = psycopg2.connect(px.dsn(host=d))
            c.close()
        self.assertFalse(os.path.exists(path), "the socket file is removed at exit")
        # Someone listens there: pgsteer refuses to start rather than steal the path.
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen(1)
        try:
            refused(start(), "another server is listening there")
        finally:
            s.close()
            os.unlink(path)
        # Not a socket at all: never removed.
        with open(path, "w") as f:
            f.write("keep")
        refused(start(), "the file exists and is not a socket")
        with open(path) as f:
            self.assertEqual(f.read(), "keep")


# ---- a replica goes away ----------------------------------------------------------------
def attempt(fn, timeout=10):
    """Run fn in a thread: ('ok', value), ('error', psycopg2.Error), ('exception', e) or
    ('hang', None) when it did not return within `timeout` seconds."""
    box = {}

    def body():
        try:
            box["r"] = ("ok", fn())
        except psycopg2.Error as e:
            box["r"] = ("error", e)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            box["r"] = ("exception", e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    return box.get("r", ("hang", None))


class ReplicaDownTest(Base):
    VICTIM = 2  # replica2

    def read_fresh(self):
        c = psycopg2.connect(PX.dsn(connect_timeout=5))
        try:
            c.autocommit = True
            cur = c.cursor()
            cur.execute("select inet_server_port()")
            return cur.fetchone()[0]
        finally:
            c.close()

    def assertSucceedsElsewhereOrFailsCleanly(self, outcome, victim_port):
        kind, value = outcome
        if kind == "ok":
            self.assertNotEqual(value, victim_port, "read answered by a stopped node?")
            self.assertIn(value, CLUSTER.ports)
        elif kind == "error":
            self.assertIsNotNone(value.pgcode, "error without SQLSTATE: %s" % value)
            self.assertTrue(value.pgcode.startswith("08"), "SQLSTATE %s: %s"
                            % (value.pgcode, value))
        else:
            self.fail("read %s: %s" % (kind, value))

    def test_stopped_replica(self):
        victim_port = CLUSTER.ports[self.VICTIM]
        old = self.connect()
        for _ in range(4):  # give the old session backends on both replicas
            self.one(old, "select inet_server_port()")
        CLUSTER.stop_node(self.VICTIM)
        try:
            for _ in range(6):
                t0 = time.monotonic()
                self.assertSucceedsElsewhereOrFailsCleanly(attempt(self.read_fresh), victim_port)
                self.assertLess(time.monotonic() - t0, 8)
            for _ in range(3):
                r = attempt(lambda: self.one(old, "select inet_server_port()")[0])
                self.assertSucceedsElsewhereOrFailsCleanly(r, victim_port)
                if r[0] == "error" or old.closed:
                    break
            self.assertTrue(PX.alive(), "pgsteer exited")
            # Once the monitor has noticed, reads succeed again (on the other replica).
            deadline = time.monotonic() + 5
            ok = 0
            while ok < 5 and time.monotonic() < deadline:
                r = attempt(self.read_fresh)
                ok = ok + 1 if r[0] == "ok" else 0
                self.assertSucceedsElsewhereOrFailsCleanly(r, victim_port)
            self.assertEqual(ok, 5, "reads keep working with one replica down")
        finally:
            CLUSTER.start_node(self.VICTIM)
        # And the replica comes back into rotation.
        deadline = time.monotonic() + 15
        back = False
        while not back and time.monotonic() < deadline:
            r = attempt(self.read_fresh)
            back = r == ("ok", victim_port)
            time.sleep(0.05)
        self.assertTrue(back, "the restarted replica serves reads again")
        self.assertHealthy()


def load_tests(loader, standard_tests, pattern):
    """Cheap tests first, the disruptive one last."""
    suite = unittest.TestSuite()
    for cls in (CommandLineTest, RoutingTest, AuthTest, ProtocolTest, PsycopgTest, PgbenchTest,
                UnixSocketTest, ShutdownTest, ReplicaDownTest):
        suite.addTests(loader.loadTestsFromTestCase(cls))
    return suite


if __name__ == "__main__":
    unittest.main(verbosity=2)
