# SPDX-License-Identifier: MIT
"""Server processes ended under load: while clients run reads, writes, transactions, prepared
statements and pipelines through pgsteer, another connection ends pgsteer's server processes
on every node at random moments (pg_terminate_backend, as an administrator, a failover tool or
an idle timeout on the server does). Whatever moment it hits, pgsteer must not crash or hang,
every answer a client gets must be the answer to what that client asked (never another
query's, never a stale one), an error must be one that says the connection to the node was
lost, every write the client saw committed must be on the primary, and once the killing stops
the same client connections must work again without errors and pgsteer's counts of clients
and server connections must match what the servers see."""

import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Cluster, ClusterError, Pgsteer, config_yaml  # noqa: E402
from wire import (Bind, Conn, Describe, Execute, Parse, Query, Sync, WireError,  # noqa: E402
                  error_field, msg, normalise)

cluster = None

# What a client may be told when the server process behind its statement ended: the server's
# own FATAL (57P01, terminating connection due to administrator command; 57P02 and 57P03 when
# a node stops, crashes or is starting), pgsteer's word that the node could not be reached
# or its connection was lost (class 08), and the error of a statement sent in a transaction
# that such an error already ended (25P02).
LOST = {"57P01", "57P02", "57P03", "08000", "08001", "08003", "08006", "25P02"}

# Seconds of killing per configuration, then of quiet. CHAOS_SECONDS in the environment makes
# a longer run (for a stress run by hand).
CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "6"))
CLIENTS = 6


def setUpModule():
    global cluster
    cluster = Cluster(replicas=2)
    cluster.start()
    cluster.psql(cluster.primary_port,
                 "create table w (id int primary key, v int); "
                 "insert into w select g, g * 10 from generate_series(1, 100) g; "
                 "create table chaos (id bigint primary key, client int)")
    cluster.wait_replay()


def tearDownModule():
    if cluster:
        cluster.stop()


def metrics(px):
    """px's /metrics as {name with labels: value}."""
    url = "http://127.0.0.1:%d/metrics" % px.admin_port
    with urllib.request.urlopen(url, timeout=5) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


class Lost(Exception):
    """The connection to pgsteer ended (after an allowed error, or with none)."""


class Client:
    """One application connection through pgsteer doing random work. Every answer is checked
    as it comes; self.problems collects what must not happen."""

    def __init__(self, test, px, cid, seed, acked, never, problems):
        self.test, self.px, self.cid, self.seed = test, px, cid, seed
        self.never = never  # writes of transactions that never committed
        self.rng = random.Random(seed)
        self.acked, self.problems = acked, problems
        self.conn = None
        self.prepared = False
        self.tag = None  # chaos.tag's value in the session (None: never set), or UNKNOWN
        self.sqlprep = False  # PREPARE q done (True), not (False), or UNKNOWN
        self.seq = 0
        self.status = "I"  # the transaction status of the last ReadyForQuery
        self.kind = self.last_kind = -1
        self.errors = 0
        self.reconnects = 0
        self.steps = 0
        self.strict = False  # set once the killing stopped: every step must then succeed

    def problem(self, what):
        self.problems.append("client %d (step %d, kind %d after %d): %s"
                             % (self.cid, self.steps, self.kind, self.last_kind, what))

    def token(self):
        self.seq += 1
        return self.seed * 10000000 + self.seq  # unique across clients and tests

    def connect(self):
        self.conn = Conn(self.px.port, timeout=15)
        self.status = "I"
        self.prepared = False
        self.tag = None
        self.sqlprep = False

    def answers(self):
        """Messages up to the ReadyForQuery, as (type, detail); raises Lost when the
        connection ends first. An error must be one of LOST (else it is a problem)."""
        return self.answers_with(())

    def answers_with(self, codes):
        """answers(), with errors of `codes` allowed too, killing or not."""
        out = []
        while True:
            try:
                t, body = self.conn.read()
            except (WireError, OSError) as e:
                if "timed out" in str(e):
                    self.problem("no answer within 15 s (a hang)")
                raise Lost() from e
            item = ("d", body.decode()) if t == b"d" else normalise(t, body)
            if item is None:
                continue
            if item[0] == "E":
                self.errors += 1
                if item[1] not in codes and (item[1] not in LOST or self.strict):
                    self.problem("error %s: %s" % (item[1], error_field(body, "M")))
            out.append(item)
            if item[0] == "Z":
                self.status = item[1]
                return out

    def expect(self, got, want, what):
        """got must be want, or end in an error (allowed while killing) with its
        ReadyForQuery."""
        if got == want:
            return True
        if any(m[0] == "E" for m in got) and not self.strict:
            return False
        self.problem("%s: got %r, expected %r" % (what, got, want))
        return False

    def step(self):
        k = self.rng.randrange(18)
        self.last_kind, self.kind = self.kind, k
        tok = self.token()
        i = self.rng.randint(1, 100)
        row = ("D", (str(tok), str(i * 10)))
        c = self.conn
        if k < 3:
            c.send(Query("select %d::bigint, v from w where id = %d" % (tok, i)))
            self.expect(self.answers(), [("T", ("int8", "v")), row, ("C", "SELECT 1"),
                                         ("Z", "I")], "simple read")
        elif k < 5:
            c.send(Parse("select $1::bigint, v from w where id = $2") +
                   Bind(params=(tok, i)) + Describe(b"P") + Execute() + Sync)
            self.expect(self.answers(), [("1", None), ("2", None), ("T", ("int8", "v")), row,
                                         ("C", "SELECT 1"), ("Z", "I")], "extended read")
        elif k < 6:
            # A named statement prepared once per connection, run again and again (pgbench -M
            # prepared, pgJDBC past prepareThreshold).
            pre = b""
            want = []
            if not self.prepared:
                pre = Parse("select $1::bigint, v from w where id = $2", name="s")
                want = [("1", None)]
            c.send(pre + Bind(stmt="s", params=(tok, i)) + Execute() + Sync)
            got = self.answers()
            self.expect(got, want + [("2", None), row, ("C", "SELECT 1"), ("Z", "I")],
                        "prepared read")
            # Prepared once its ParseComplete came, whatever failed after it.
            self.prepared = self.prepared or got[0] == ("1", None)
        elif k < 7:
            c.send(Query("insert into chaos values (%d, %d)" % (tok, self.cid)))
            if self.expect(self.answers(), [("C", "INSERT 0 1"), ("Z", "I")], "insert"):
                self.acked.add(tok)
                # Read your writes: the session's next read sees it, wherever it runs.
                c.send(Query("select count(*) from chaos where id = %d" % tok))
                self.expect(self.answers(), [("T", ("count",)), ("D", ("1",)),
                                             ("C", "SELECT 1"), ("Z", "I")], "read of own write")
        elif k < 9:
            self.transaction(tok, i, row)
        elif k < 10:
            # A pipeline of two reads in one batch.
            tok2 = self.token()
            c.send(Parse("select $1::bigint, v from w where id = $2") +
                   Bind(params=(tok, i)) + Execute() +
                   Parse("select $1::bigint") + Bind(params=(tok2,)) + Execute() + Sync)
            self.expect(self.answers(), [("1", None), ("2", None), row, ("C", "SELECT 1"),
                                         ("1", None), ("2", None), ("D", (str(tok2),)),
                                         ("C", "SELECT 1"), ("Z", "I")], "pipelined reads")
        elif k < 11:
            self.setting(tok)
        elif k < 12:
            self.sql_prepared(tok, i, row)
        elif k < 13:
            # A long answer, so that some ends come while it streams.
            n = self.rng.choice((2000, 20000))
            c.send(Query("select g, %d::bigint from generate_series(1, %d) g" % (tok, n)))
            got = self.answers()
            rows = [m for m in got if m[0] == "D"]
            if any(m[0] == "E" for m in got) and not self.strict:
                return
            if rows != [("D", (str(g), str(tok))) for g in range(1, n + 1)] or \
                    got[-2:] != [("C", "SELECT %d" % n), ("Z", "I")]:
                self.problem("long read: %d rows, ending %r" % (len(rows), got[-2:]))
        elif k < 14:
            # COPY out, then COPY in.
            c.send(Query("copy (select %d::bigint, v from w where id = %d) to stdout" % (tok, i)))
            self.expect(self.answers(), [("H", None), ("d", "%d\t%d\n" % (tok, i * 10)),
                                         ("c", None), ("C", "COPY 1"), ("Z", "I")], "copy out")
            self.copy_in(tok)
        elif k < 15:
            self.abandon(tok)
        elif k < 16:
            self.cancel(tok)
        elif k < 17:
            self.vanish_in_transaction(tok)
        else:
            self.settings_in_transaction(tok)

    def transaction(self, tok, i, row):
        """BEGIN alone (answered by pgsteer with defer_begin), a write, a read in it, COMMIT."""
        c = self.conn
        c.send(Query("begin"))
        if not self.expect(self.answers(), [("C", "BEGIN"), ("Z", "T")], "begin"):
            self.rollback()
            return
        c.send(Query("insert into chaos values (%d, %d)" % (tok, self.cid)))
        if not self.expect(self.answers(), [("C", "INSERT 0 1"), ("Z", "T")], "insert in tx"):
            self.rollback()
            return
        c.send(Query("select %d::bigint, v from w where id = %d" % (tok, i)))
        if not self.expect(self.answers(), [("T", ("int8", "v")), row, ("C", "SELECT 1"),
                                            ("Z", "T")], "read in tx"):
            self.rollback()
            return
        c.send(Query("commit"))
        if self.expect(self.answers(), [("C", "COMMIT"), ("Z", "I")], "commit"):
            self.acked.add(tok)

    UNKNOWN = object()

    def settings_in_transaction(self, tok):
        """SET in a transaction, a savepoint, SET again, ROLLBACK TO it, then COMMIT or
        ROLLBACK: the session's setting is the transaction's after a commit, the one before
        it after a rollback, and also the one before it when the transaction was lost with
        its server process before its end was sent (the server rolled it back)."""
        c = self.conn
        before = self.tag
        steps = [(Query("begin"), [("C", "BEGIN"), ("Z", "T")]),
                 (Query("set chaos.tag = 'x%d'" % tok), [("C", "SET"), ("Z", "T")]),
                 (Query("savepoint s"), [("C", "SAVEPOINT"), ("Z", "T")]),
                 (Query("set chaos.tag = 'y%d'" % tok), [("C", "SET"), ("Z", "T")]),
                 (Query("rollback to s"), [("C", "ROLLBACK"), ("Z", "T")])]
        for q, want in steps:
            c.send(q)
            if not self.expect(self.answers(), want, "settings in a transaction"):
                self.rollback()
                self.tag = before  # lost with the transaction
                return
        commit = self.rng.random() < 0.5
        c.send(Query("commit" if commit else "rollback"))
        ok = self.expect(self.answers(), [("C", "COMMIT" if commit else "ROLLBACK"),
                                          ("Z", "I")], "end of a transaction")
        if not ok:
            self.tag = self.UNKNOWN  # its end was sent: committed or not, who knows
        else:
            self.tag = "x%d" % tok if commit else before

    def setting(self, tok):
        """A setting of the session's (SET), then a read of it: the value must follow the
        session to every backend, including one opened after the last one ended."""
        c = self.conn
        if self.rng.random() < 0.5 or self.tag is self.UNKNOWN:
            c.send(Query("set chaos.tag = 't%d'" % tok))
            # An error leaves the value unknown: the node may have taken it before it ended.
            self.tag = "t%d" % tok if self.expect(self.answers(), [("C", "SET"), ("Z", "I")],
                                                  "set") else self.UNKNOWN
            return
        c.send(Query("select current_setting('chaos.tag', true), %d::bigint" % tok))
        got = self.answers()
        if self.tag is None and got[1:2] == [("D", ("", str(tok)))]:
            # Never set by the session: NULL, or '' on a server process where a session it
            # served before had set it (a reset keeps such a setting, empty, as PostgreSQL
            # does for any name with a dot that was ever set in it).
            got[1] = ("D", (None, str(tok)))
        self.expect(got, [("T", ("current_setting", "int8")), ("D", (self.tag, str(tok))),
                          ("C", "SELECT 1"), ("Z", "I")], "read of a setting")

    def sql_prepared(self, tok, i, row):
        """PREPARE once per connection, then EXECUTE: the statement must be there on every
        backend the session's EXECUTE reaches."""
        c = self.conn
        if self.sqlprep is self.UNKNOWN:
            # An error left it unknown whether the node prepared it: drop it, if it is there.
            c.send(Query("deallocate q"))
            got = self.answers_with({"26000"})
            if got in ([("C", "DEALLOCATE"), ("Z", "I")], [("E", "26000"), ("Z", "I")]):
                self.sqlprep = False
            else:
                self.expect(got, [("C", "DEALLOCATE"), ("Z", "I")], "deallocate")
            return
        if not self.sqlprep:
            c.send(Query("prepare q as select $1::bigint, v from w where id = $2"))
            ok = self.expect(self.answers(), [("C", "PREPARE"), ("Z", "I")], "prepare")
            self.sqlprep = True if ok else self.UNKNOWN
            return
        c.send(Query("execute q(%d, %d)" % (tok, i)))
        self.expect(self.answers(), [("T", ("int8", "v")), row, ("C", "SELECT 1"), ("Z", "I")],
                    "execute")

    def copy_in(self, tok):
        c = self.conn
        c.send(Query("copy chaos from stdin"))
        first = self.answers_until(b"G")
        if first is not None:
            if not self.strict and any(m[0] == "E" for m in first):
                return
            self.problem("copy in: %r" % first)
            return
        c.send(msg(b"d", b"%d\t%d\n" % (tok, self.cid)) + msg(b"c"))
        if self.expect(self.answers(), [("C", "COPY 1"), ("Z", "I")], "copy in"):
            self.acked.add(tok)

    def answers_until(self, kind):
        """Read until a message of type `kind` (returns None) or a ReadyForQuery (returns
        what came)."""
        out = []
        while True:
            try:
                t, body = self.conn.read()
            except (WireError, OSError) as e:
                raise Lost() from e
            if t == kind:
                return None
            item = normalise(t, body)
            if item is None:
                continue
            if item[0] == "E":
                self.errors += 1
                if item[1] not in LOST or self.strict:
                    self.problem("error %s: %s" % (item[1], error_field(body, "M")))
            out.append(item)
            if item[0] == "Z":
                return out

    def other_connection(self):
        """A second connection of the client's, or None when it cannot log in (a problem once
        the killing stopped)."""
        try:
            return Conn(self.px.port, timeout=15)
        except (WireError, OSError):
            if self.strict:
                self.problem("cannot connect after the killing stopped")
            return None

    def vanish(self, other):
        """Close `other` without a Terminate, half the time with a reset."""
        if self.rng.random() < 0.5:
            other.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        other.sock.close()

    def abandon(self, tok):
        """Another connection that sends a long read and goes away while it streams, without
        a Terminate; pgsteer must drop what the node still sends and keep nothing."""
        other = self.other_connection()
        if other is None:
            return
        other.send(Query("select g, %d from generate_series(1, 100000) g" % tok))
        time.sleep(self.rng.uniform(0, 0.005))
        self.vanish(other)

    def vanish_in_transaction(self, tok):
        """Another connection that writes in a transaction and goes away without a Terminate,
        after the write's answer or while it is on its way: the write must never be
        committed, and the server process, still in the transaction, must serve no other
        session (whose statements would then run in it)."""
        other = self.other_connection()
        if other is None:
            return
        self.never.add(tok)
        other.send(Query("begin") + Query("insert into chaos values (%d, %d)" % (tok, self.cid)))
        if self.rng.random() < 0.5:
            try:
                ready = 0
                while ready < 2:
                    ready += other.read()[0] == b"Z"
            except (WireError, OSError):
                pass
        self.vanish(other)

    def cancel(self, tok):
        """A read that sleeps, cancelled by a CancelRequest on a second connection with the
        key pgsteer gave: the answer is the read's or the cancel's error (57014)."""
        c = self.conn
        c.send(Query("select pg_sleep(0.02), %d::bigint" % tok))
        time.sleep(self.rng.uniform(0, 0.03))
        try:
            s = socket.create_connection(("127.0.0.1", self.px.port), timeout=15)
            s.sendall(struct.pack("!IIII", 16, 80877102, *c.key))
            s.recv(1)  # pgsteer closes it when the cancel is passed on
            s.close()
        except OSError:
            pass
        got = self.answers_with({"57014"})
        ok = [("T", ("pg_sleep", "int8")), ("D", ("", str(tok))), ("C", "SELECT 1"), ("Z", "I")]
        # Cancelled before it ran, while it ran, or once its row was out.
        if got != ok and got not in ([("E", "57014"), ("Z", "I")],
                                     [ok[0], ("E", "57014"), ("Z", "I")],
                                     ok[:2] + [("E", "57014"), ("Z", "I")]):
            self.expect(got, ok, "cancelled read")

    def rollback(self):
        """After an error in a transaction: end it, if the last ReadyForQuery says one is open
        (a transaction lost with its server process is not: its error came with status I,
        and a driver that reads the status sends nothing more)."""
        if self.status == "I":
            return
        self.conn.send(Query("rollback"))
        got = self.answers()
        if got[-1] != ("Z", "I"):
            self.problem("rollback left status %r" % (got[-1],))

    def run(self, strict, stop):
        """Steps until `stop` is set; once `strict` is set every step must succeed."""
        while not stop.is_set() and len(self.problems) < 20:
            self.strict = strict.is_set()
            try:
                if self.conn is None:
                    self.connect()
                self.step()
                self.steps += 1
            except Lost:
                if self.strict:
                    self.problem("connection lost after the killing stopped")
                self.conn.sock.close()
                self.conn = None
                self.reconnects += 1
            except (WireError, OSError) as e:
                # Logging in failed: pgsteer refuses with an error or the connection ends.
                if self.strict:
                    self.problem("cannot connect after the killing stopped: %s" % e)
                self.conn = None
                time.sleep(0.01)
            except Exception as e:  # noqa: BLE001 (a malformed answer, reported not raised)
                self.problem("unexpected %r" % e)
                return
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Killer:
    """Ends pgsteer's server processes (user app, not the killer's own) on random nodes at
    random moments, through a direct connection to every node; with `restarts`, also stops a
    random node now and then (the primary too) and starts it again."""

    def __init__(self, seed, restarts=False):
        self.rng = random.Random(seed)
        self.conns = [None] * len(cluster.nodes)
        self.killed = 0
        self.restarted = 0
        self.restarts = restarts
        self.stop = threading.Event()

    def kill_one(self):
        i = self.rng.randrange(len(cluster.nodes))
        # The monitor's connections too, now and then: it must reconnect on its own.
        monitor = "" if self.rng.random() < 0.1 else \
            " and application_name <> 'pgsteer-monitor'"
        try:
            if self.conns[i] is None:
                self.conns[i] = Conn(cluster.nodes[i].port)
            self.conns[i].send(Query(
                "select count(pg_terminate_backend(pid)) from (select pid from "
                "pg_stat_activity where usename = 'app' and pid <> pg_backend_pid() and "
                "backend_type = 'client backend'%s order by random() limit 1) p" % monitor))
            for t, d in self.conns[i].until_ready():
                if t == "D":
                    self.killed += int(d[0])
        except (WireError, OSError):
            if self.conns[i] is not None:  # the node is down or restarting: the next time
                self.conns[i].sock.close()
                self.conns[i] = None

    def run(self):
        next_restart = time.monotonic() + self.rng.uniform(0.5, 1.5)
        while not self.stop.wait(self.rng.uniform(0.005, 0.06)):
            self.kill_one()
            if self.restarts and time.monotonic() >= next_restart:
                i = self.rng.randrange(len(cluster.nodes))
                cluster.stop_node(i, mode=self.rng.choice(("fast", "immediate")))
                time.sleep(self.rng.uniform(0.1, 0.6))
                cluster.start_node(i)
                self.restarted += 1
                next_restart = time.monotonic() + self.rng.uniform(0.5, 1.5)

    def close(self):
        for c in self.conns:
            if c is not None:
                c.close()


def server_connections(port):
    """pgsteer's connections on the node at `port`: user app, not the monitor's."""
    c = Conn(port)
    try:
        c.send(Query("select count(*) from pg_stat_activity where usename = 'app' and "
                     "backend_type = 'client backend' and pid <> pg_backend_pid() and "
                     "application_name <> 'pgsteer-monitor'"))
        return int([d for t, d in c.until_ready() if t == "D"][0][0])
    finally:
        c.close()


class ChaosTest(unittest.TestCase):
    maxDiff = None

    def run_chaos(self, extra_yaml, seed, reloads=None, restarts=False):
        """The run described at the top, with pgsteer started with extra_yaml; with
        `reloads` (a list of configuration variants, each (extra YAML, replica2's weight)),
        pgsteer's file is rewritten with one of them and reloaded every 0.05 to 0.3 s while
        the killing goes on too; with `restarts`, nodes are stopped and started too."""
        px = Pgsteer(cluster, extra_yaml=extra_yaml)
        with px:
            px.wait_replicas_eligible()
            acked, never, problems = set(), set(), []
            clients = [Client(self, px, n + 1, seed * 100 + n, acked, never, problems)
                       for n in range(CLIENTS)]
            killer = Killer(seed, restarts)
            strict, stop = threading.Event(), threading.Event()
            threads = [threading.Thread(target=cl.run, args=(strict, stop)) for cl in clients]
            kt = threading.Thread(target=killer.run)
            reloaded = [0]
            rt = threading.Thread(target=self.reloader, args=(px, reloads, seed, killer.stop,
                                                               reloaded))
            for t in threads + [kt, rt]:
                t.start()
            try:
                time.sleep(CHAOS_SECONDS)
            finally:
                killer.stop.set()
                kt.join()
                rt.join()
                killer.close()
                try:
                    # Every node up and read from again; then a short pause for pgsteer to see
                    # the ends of what was killed last; then every step of every connection,
                    # old or new, must succeed.
                    cluster.wait_replay()
                    try:
                        px.wait_replicas_eligible(timeout=30)
                    except ClusterError as e:
                        url = "http://127.0.0.1:%d/status" % px.admin_port
                        with urllib.request.urlopen(url, timeout=5) as r:
                            raise AssertionError("%s; /status: %s" % (e, r.read().decode()))
                    time.sleep(1.0)
                    strict.set()
                    time.sleep(2.0)
                finally:
                    stop.set()
                    for t in threads:
                        t.join(60)
            hung = [t for t in threads if t.is_alive()]
            self.assertEqual(hung, [], "client threads still running")
            self.assertTrue(px.alive(), "pgsteer exited: %s" % px.log_text()[-3000:])
            summary = ("killed %d server processes; %d steps, %d errors, %d reconnections"
                       % (killer.killed, sum(c.steps for c in clients),
                          sum(c.errors for c in clients), sum(c.reconnects for c in clients)))
            if restarts:
                summary += "; %d nodes restarted" % killer.restarted
            if problems:
                px.failed = True
            if reloads:
                summary += "; %d reloads" % reloaded[0]
                m = metrics(px)
                self.assertEqual(m.get('pgsteer_config_reloads_total{result="success"}'),
                                 reloaded[0], summary)
                self.assertEqual(m.get('pgsteer_config_reloads_total{result="failure"}'), 0)
            self.assertEqual(problems, [], summary)
            self.assertGreater(killer.killed, 10, summary)
            self.assertGreater(sum(c.errors for c in clients), 0, summary)
            # Every write a client saw committed is on the primary.
            ids = set(int(x) for x in cluster.psql(
                cluster.primary_port, "select id from chaos").split())
            self.assertEqual(acked - ids, set(), "acknowledged writes missing; " + summary)
            self.assertEqual(never & ids, set(), "writes of abandoned transactions committed; "
                             + summary)
            # No client left behind, and pgsteer's server connections are the ones the
            # servers have (none leaked, none counted that has ended).
            deadline = time.monotonic() + 10
            while True:
                m = metrics(px)
                ours = [int(m.get('pgsteer_node_backend_connections{node="%s"}' % n.name, -1) +
                            m.get('pgsteer_node_idle_backend_connections{node="%s"}' % n.name, 0))
                        for n in cluster.nodes]
                theirs = [server_connections(n.port) for n in cluster.nodes]
                if (m.get("pgsteer_client_connections") == 0 and ours == theirs) or \
                        time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            self.assertEqual(m.get("pgsteer_client_connections"), 0, summary)
            self.assertEqual(ours, theirs, "pgsteer's count of server connections per node "
                             "against the servers'; " + summary)
            sys.stderr.write("\n  %s ... " % summary)

    @staticmethod
    def reloader(px, reloads, seed, stop, reloaded):
        """Rewrite px's configuration with a random one of `reloads` and reload it, until
        stop is set (see run_chaos); then back to the first. Counts reloads in reloaded[0]."""
        if not reloads:
            return
        rng = random.Random(seed)

        def reload(extra, weight):
            text = config_yaml(cluster, px.port, px.admin_port, extra_yaml=extra,
                               monitor="{interval_ms: 100}")
            name = cluster.nodes[2].name
            lines = [ln.replace("weight: 1", "weight: %d" % weight) if "name: %s," % name in ln
                     else ln for ln in text.splitlines()]
            with open(px.config_path + ".new", "w") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(px.config_path + ".new", px.config_path)
            # One reload at a time: wait until this one is counted before the next.
            before = metrics(px).get('pgsteer_config_reloads_total{result="success"}', 0)
            px.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while metrics(px).get('pgsteer_config_reloads_total{result="success"}', 0) == before:
                if time.monotonic() > deadline:
                    raise AssertionError("a reload was not counted within 10 s")
                time.sleep(0.01)
            reloaded[0] += 1

        while not stop.wait(rng.uniform(0.05, 0.3)):
            reload(*rng.choice(reloads))
        reload(*reloads[0])

    def test_defaults(self):
        self.run_chaos("", 1)

    def test_statement_balancing_one_worker(self):
        # Every read to the next replica, so that a session's state must follow it to every
        # node, and every session on one loop.
        self.run_chaos("read_balance: statement\nworkers: 1\n", 2)

    def test_multiplexed_reads(self):
        self.run_chaos("read_balance: statement\nmultiplex_reads: on\nworkers: 1\n", 3)

    def test_node_restarts(self):
        # Nodes stopped (fast or immediate) and started again, the primary too, while server
        # processes are ended as in the others.
        self.run_chaos("", 5, restarts=True)

    def test_reloads(self):
        # Reloads that turn features on and off, and take a replica out of reading and back,
        # while sessions use them.
        self.run_chaos("", 4, reloads=[
            ("", 1),
            ("prepare_simple_queries: off\ncache_unnamed_statements: off\n", 1),
            ("read_balance: statement\nmultiplex_reads: on\n", 1),
            ("backend_idle_max: 0\ndefer_begin: off\n", 1),
            ("read_balance: statement\n", 0),
        ])


if __name__ == "__main__":
    unittest.main()
