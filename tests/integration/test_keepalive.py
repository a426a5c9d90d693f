# SPDX-License-Identifier: MIT
"""Integration tests of TCP keepalive (tcp_keepalive and its timings): pgsteer's sockets to
clients and to nodes carry the configured keepalive timer, read from the kernel
(/proc/net/tcp); a client that vanishes without closing its connection (its socket gone with no
FIN or RST, as when its host dies) is dropped, and the transaction it left open ends; a node
that vanishes in the middle of a statement fails the statement instead of leaving the client
waiting.

Run: tests/integration/run.sh test_keepalive"""

import faulthandler
import json
import os
import selectors
import socket
import sys
import threading
import time
import types
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster as cl  # noqa: E402
import wire  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402

CLUSTER = None
TCP_REPAIR = 19  # linux/tcp.h: closing a socket in repair mode sends nothing to the peer
USER_HZ = 100    # /proc/net/tcp gives timers in clock ticks


def setUpModule():
    global CLUSTER
    CLUSTER = cl.Cluster(replicas=0)
    try:
        CLUSTER.start()
        CLUSTER.psql(CLUSTER.primary_port, [
            "create table ka_t (id int primary key, v text)",
            "insert into ka_t values (1, 'committed')",
        ])
    except BaseException:
        CLUSTER.stop()
        raise


def tearDownModule():
    if CLUSTER is not None:
        CLUSTER.stop()


def socket_inodes(pid):
    out = set()
    fddir = "/proc/%d/fd" % pid
    for fd in os.listdir(fddir):
        try:
            target = os.readlink(os.path.join(fddir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def tcp_sockets(pid):
    """pgsteer's established IPv4 TCP sockets: {(local port, remote port): (bytes sent and not
    yet acknowledged, seconds until the keepalive timer fires or None when no keepalive timer
    runs)}. While sent data waits for its acknowledgement the kernel shows the retransmission
    timer instead (see settled)."""
    inodes = socket_inodes(pid)
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state, queues, timer, inode = fields[1], fields[2], fields[3], \
                fields[4], fields[5], fields[9]
            if inode not in inodes or state != "01":  # 01: ESTABLISHED
                continue
            kind, when = timer.split(":")
            key = (int(local.split(":")[1], 16), int(remote.split(":")[1], 16))
            unacked = int(queues.split(":")[0], 16)
            out[key] = (unacked, int(when, 16) / USER_HZ if kind == "02" else None)
    return out


def settled(pid, key, timeout=5):
    """The keepalive timer (seconds left, or None) of pgsteer's socket `key` once everything
    it sent there is acknowledged (a peer delays its acknowledgement by up to 200 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        unacked, left = tcp_sockets(pid)[key]
        if unacked == 0:
            return left
        if time.monotonic() > deadline:
            raise AssertionError("socket %s: %d bytes still unacknowledged" % (key, unacked))
        time.sleep(0.02)


def clients(px):
    """Client connections pgsteer holds, from /status."""
    url = "http://127.0.0.1:%d/status" % px.admin_port
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["client_connections"]


def local_port(conn):
    """The client-side port of a psycopg2 connection."""
    s = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return s.getsockname()[1]
    finally:
        s.close()


def on_primary():
    conn = psycopg2.connect(host="127.0.0.1", port=CLUSTER.primary_port, user=cl.APP_USER,
                            password=cl.APP_PASSWORD, dbname=cl.APP_DB)
    conn.autocommit = True
    return conn


def vanish(sock):
    """Close sock so that the peer hears nothing: no FIN, no RST. The kernel then answers the
    peer's next segment (a keepalive probe) with a reset, as a rebooted host would. Needs
    CAP_NET_ADMIN; the test is skipped without it."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    except PermissionError:
        raise unittest.SkipTest("TCP_REPAIR needs CAP_NET_ADMIN (run as root)")
    sock.close()


class Relay:
    """A TCP relay to the node at `target_port`, in a thread: what pgsteer sees as the node.
    The connection on which a statement containing `marker` passes is remembered
    (`marked`, set once), and `vanish()` makes the relay's end of it disappear silently."""

    def __init__(self, target_port, marker=b"pg_sleep"):
        self.target_port = target_port
        self.marker = marker
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.peer = {}  # socket -> the socket its data goes to
        self.marked = None
        self.seen = threading.Event()
        self.to_vanish = None
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _drop(self, s):
        for x in (s, self.peer.pop(s, None)):
            if x is not None:
                self.peer.pop(x, None)
                self.sel.unregister(x)
                x.close()

    def _run(self):
        while not self.done:
            if self.to_vanish is not None:
                down, self.to_vanish = self.to_vanish, None
                self.sel.unregister(down)
                up = self.peer.pop(down)
                self.peer.pop(up)
                self.sel.unregister(up)
                up.close()
                vanish(down)
            for key, _ in self.sel.select(0.02):
                s = key.fileobj
                if s is self.listener:
                    down, _ = s.accept()
                    up = socket.create_connection(("127.0.0.1", self.target_port))
                    self.peer[down], self.peer[up] = up, down
                    self.sel.register(down, selectors.EVENT_READ)
                    self.sel.register(up, selectors.EVENT_READ)
                    continue
                if s not in self.peer:
                    continue
                try:
                    data = s.recv(65536)
                    if data:
                        self.peer[s].sendall(data)
                except OSError:
                    data = b""
                if not data:
                    self._drop(s)
                elif self.marker in data and self.marked is None and s.getsockname()[1] == \
                        self.port:
                    self.marked = s
                    self.seen.set()

    def vanish(self):
        """Make the relay's end of the marked connection disappear (see vanish())."""
        self.to_vanish = self.marked
        while self.to_vanish is not None:
            time.sleep(0.01)

    def close(self):
        self.done = True
        self.thread.join(5)
        for s in list(self.peer):
            s.close()
        self.listener.close()


def through(cluster, port):
    """The cluster as pgsteer's configuration sees it, its primary reached at `port`."""
    view = types.SimpleNamespace(**vars(cluster))
    view.nodes = [types.SimpleNamespace(name=n.name, role=n.role, port=port)
                  for n in cluster.nodes]
    view.ports = cluster.ports + [port]  # not to be picked for pgsteer's own
    return view


class KeepaliveTest(unittest.TestCase):
    def setUp(self):
        faulthandler.dump_traceback_later(120, exit=True)

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()

    def pgsteer(self, extra_yaml):
        px = cl.Pgsteer(CLUSTER, extra_yaml=extra_yaml)
        px.start()
        self.addCleanup(px.stop)
        return px

    def backend_port(self, conn):
        """pgsteer's local port of the backend that serves conn (from the node's view)."""
        with conn.cursor() as cur:
            cur.execute("select pg_backend_pid()")
            pid = cur.fetchone()[0]
        with on_primary() as direct, direct.cursor() as cur:
            cur.execute("select client_port from pg_stat_activity where pid = %s", (pid,))
            return cur.fetchone()[0]

    def test_client_and_node_sockets_carry_the_configured_timer(self):
        px = self.pgsteer("tcp_keepalive_idle_s: 40\ntcp_keepalive_interval_s: 5\n"
                          "tcp_keepalive_count: 3\n"
                          "admin_users:\n  - {name: admin, password: admin-secret}\n")
        shown = cl.run_psql(px.admin_port, "SHOW CONFIG", user="admin", db="pgsteer",
                            password="admin-secret", bindir=CLUSTER.bindir).stdout.splitlines()
        for row in ("tcp_keepalive|on", "tcp_keepalive_idle_s|40", "tcp_keepalive_interval_s|5",
                    "tcp_keepalive_count|3"):
            self.assertIn(row, shown)
        conn = psycopg2.connect(px.dsn())
        self.addCleanup(conn.close)
        conn.autocommit = True
        bport = self.backend_port(conn)
        client_side = settled(px.proc.pid, (px.port, local_port(conn)))
        node_side = settled(px.proc.pid, (bport, CLUSTER.primary_port))
        for what, left in (("client", client_side), ("node", node_side)):
            self.assertIsNotNone(left, "no keepalive timer on the %s socket" % what)
            self.assertGreater(left, 30, what)
            self.assertLessEqual(left, 40, what)

    def test_off_leaves_sockets_without_keepalive(self):
        px = self.pgsteer("tcp_keepalive: off\n")
        conn = psycopg2.connect(px.dsn())
        self.addCleanup(conn.close)
        conn.autocommit = True
        bport = self.backend_port(conn)
        self.assertIsNone(settled(px.proc.pid, (px.port, local_port(conn))))
        self.assertIsNone(settled(px.proc.pid, (bport, CLUSTER.primary_port)))

    def open_transaction_then_vanish(self, px):
        """A client that locks ka_t's row in an open transaction and then vanishes."""
        c = wire.Conn(px.port, user=cl.APP_USER, password=cl.APP_PASSWORD, database=cl.APP_DB)
        c.send(wire.Query("begin; update ka_t set v = 'uncommitted' where id = 1"))
        c.until_ready()
        # Once pgsteer's answer is acknowledged it has nothing to resend: only a keepalive
        # probe can find out that the client is gone.
        settled(px.proc.pid, (px.port, c.sock.getsockname()[1]))
        vanish(c.sock)

    def update_row(self, lock_timeout):
        """Update ka_t's row directly on the primary, waiting up to lock_timeout for the
        lock; the seconds it took."""
        with on_primary() as conn, conn.cursor() as cur:
            cur.execute("set lock_timeout = %s", (lock_timeout,))
            t0 = time.monotonic()
            cur.execute("update ka_t set v = 'committed' where id = 1 returning v")
            return time.monotonic() - t0

    def test_a_vanished_client_is_dropped_and_its_transaction_ends(self):
        px = self.pgsteer("tcp_keepalive_idle_s: 1\ntcp_keepalive_interval_s: 1\n"
                          "tcp_keepalive_count: 2\n")
        self.open_transaction_then_vanish(px)
        # The first probe, a second after the last exchange, meets the reset: pgsteer closes
        # the session and its backend, and the node rolls the transaction back.
        took = self.update_row("20s")
        self.assertLess(took, 10)
        with on_primary() as conn, conn.cursor() as cur:
            cur.execute("select v from ka_t where id = 1")
            self.assertEqual(cur.fetchone()[0], "committed")
        self.assertEqual(clients(px), 0)
        self.assertIn("connection lost: connection reset by peer", px.log_text())

    def test_a_vanished_node_fails_the_statement(self):
        relay = Relay(CLUSTER.primary_port)
        self.addCleanup(relay.close)
        px = cl.Pgsteer(through(CLUSTER, relay.port),
                        extra_yaml="tcp_keepalive_idle_s: 1\ntcp_keepalive_interval_s: 1\n"
                        "tcp_keepalive_count: 2\n")
        px.start()
        self.addCleanup(px.stop)
        conn = psycopg2.connect(px.dsn())
        self.addCleanup(conn.close)
        conn.autocommit = True
        outcome = {}

        def sleep():
            t0 = time.monotonic()
            try:
                with conn.cursor() as cur:
                    cur.execute("select pg_sleep(20)")
                outcome["error"] = None
            except psycopg2.Error as e:
                outcome["error"] = e
            outcome["took"] = time.monotonic() - t0

        t = threading.Thread(target=sleep, daemon=True)
        t.start()
        # Should the statement still wait, stopping pgsteer ends it before conn is closed
        # (closing a connection another thread uses can crash libpq).
        self.addCleanup(t.join, 10)
        self.addCleanup(px.stop)
        self.assertTrue(relay.seen.wait(10), "the statement did not reach the relay")
        settled(px.proc.pid, (relay.marked.getpeername()[1], relay.port))
        relay.vanish()
        t.join(15)
        self.assertFalse(t.is_alive(), "the statement is still waiting for the vanished node")
        self.assertIsInstance(outcome["error"], psycopg2.OperationalError)
        self.assertIn("connection reset by peer", str(outcome["error"]))
        self.assertLess(outcome["took"], 12)

    def test_without_keepalive_a_vanished_client_keeps_its_locks(self):
        px = self.pgsteer("tcp_keepalive: off\n")
        self.open_transaction_then_vanish(px)
        with self.assertRaises(psycopg2.errors.LockNotAvailable):
            self.update_row("3s")
        px.stop()  # ends the session, and with it the transaction
        self.assertLess(self.update_row("20s"), 10)


if __name__ == "__main__":
    unittest.main()
