# SPDX-License-Identifier: MIT
"""Integration tests for replica lag and read consistency: a real primary and two streaming
replicas behind several ./pgsteer instances with short monitor intervals.

Lag is made for real: `pg_wal_replay_pause()` on a replica freezes what it serves while the
primary writes. Each test checks what pgsteer logged (`replica1 evicted: ...`, `replica1 back:
...`) and when, against the lag measured directly on the nodes, and where reads ran
(inet_server_port()). The consistency tests run a write-then-read-back probe and count stale
reads. Every test leaves the replicas resumed, caught up and back in every pgsteer's read set.

Run: tests/integration/run.sh test_lag (or the whole suite with run.sh)."""

import faulthandler
import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster as cl  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402

# The lag and fallback instances: a small byte limit, a time limit out of the way.
LAG_INTERVAL = 0.050
LAG_MONITOR = "{interval_ms: 50, max_lag_bytes: 1MB, max_lag_ms: 100000}"
MAX_LAG_BYTES = 1 << 20
# The consistency instance: a short interval, limits out of the way so that a paused replica
# stays eligible (stale, and still offered reads).
RYW_INTERVAL = 0.020
RYW_MONITOR = "{interval_ms: 20, max_lag_bytes: 1GB, max_lag_ms: 100000}"
# The time lag instance: a byte limit out of the way, a short time limit.
TIME_INTERVAL = 0.050
TIME_MONITOR = "{interval_ms: 50, max_lag_bytes: 1GB, max_lag_ms: 300}"
MAX_LAG_MS = 300

CLUSTER = None
PX = None  # fallback: primary (default)
PXE = None  # fallback: error
PXC = None  # consistency tests
PXT = None  # time lag
ALL = []

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) (\w+) (.*)$")
REPLICA_EVENT = re.compile(r"^(\S+) (evicted|still evicted|back): (.*)$")
LSN_TEXT = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")


class MonitoredPgsteer(cl.Pgsteer):
    """cl.Pgsteer with its own `monitor:` mapping (cl.Pgsteer always writes the default one,
    and the configuration rejects the key twice)."""

    def __init__(self, cluster, monitor, **kw):
        super().__init__(cluster, **kw)
        self.monitor = monitor

    def start(self):
        orig = cl.config_yaml

        def config_yaml(*args, **kw):
            kw["monitor"] = self.monitor
            return orig(*args, **kw)

        cl.config_yaml = config_yaml
        try:
            return super().start()
        finally:
            cl.config_yaml = orig


def setUpModule():
    global CLUSTER, PX, PXE, PXC, PXT
    CLUSTER = cl.Cluster(replicas=2)
    try:
        CLUSTER.start()
        sys.stderr.write("cluster up in %.1fs: primary :%d, replicas %s\n"
                         % (CLUSTER.start_seconds, CLUSTER.primary_port, CLUSTER.replica_ports))
        CLUSTER.psql(CLUSTER.primary_port, [
            "create table t (id int primary key, v bigint not null)",
            "insert into t values (1, 0)",
            "create table filler (id int, pad text)",
            # Writes inside functions: bump_listed is in the consistency instance's
            # write_functions, bump is not (the classifier takes `select bump()` for a read).
            "create function bump_listed() returns bigint language sql "
            "as 'update t set v = v + 1 where id = 1 returning v'",
            "create function bump() returns bigint language sql "
            "as 'update t set v = v + 1 where id = 1 returning v'",
        ])
        CLUSTER.wait_replay()
        # Per-statement balancing, so that one session shows which replicas take reads.
        PX = MonitoredPgsteer(CLUSTER, LAG_MONITOR, name="lag",
                              extra_yaml="read_balance: statement")
        PXE = MonitoredPgsteer(CLUSTER, LAG_MONITOR, name="lag-error",
                               extra_yaml="fallback: error")
        PXC = MonitoredPgsteer(CLUSTER, RYW_MONITOR, name="consistency",
                               extra_yaml="write_functions: [bump_listed]\n"
                                          "read_balance: statement")
        PXT = MonitoredPgsteer(CLUSTER, TIME_MONITOR, name="timelag")
        for px in (PX, PXE, PXC, PXT):
            ALL.append(px)
            px.start()
        for px in ALL:
            wait_both_replicas_serve(px)
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    for px in ALL:
        px.stop()
    if CLUSTER is not None:
        CLUSTER.stop()


# ---- helpers ---------------------------------------------------------------------------------
def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def direct(port):
    """An autocommit connection straight to a node (Unix socket, trust)."""
    # The password is not asked (trust); giving it keeps libpq from reading a password file.
    c = psycopg2.connect(host=CLUSTER.sockdir, port=port, user=cl.APP_USER, dbname=cl.APP_DB,
                         password=cl.APP_PASSWORD, application_name="pgsteer-tests-direct")
    c.autocommit = True
    return c


def scalar(conn, sql, args=None):
    cur = conn.cursor()
    cur.execute(sql, args)
    return cur.fetchone()[0]


def on_node(port, sql):
    c = direct(port)
    try:
        return scalar(c, sql)
    finally:
        c.close()


def through(px, **kw):
    c = psycopg2.connect(px.dsn(**kw))
    c.autocommit = True
    return c


def read_ports(conn, n):
    cur = conn.cursor()
    out = []
    for _ in range(n):
        cur.execute("select inet_server_port()")
        out.append(cur.fetchone()[0])
    return out


def wait_both_replicas_serve(px, timeout=10):
    want = set(CLUSTER.replica_ports)
    seen = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = through(px)
            try:
                seen.update(read_ports(c, 4))
            finally:
                c.close()
        except psycopg2.Error:
            pass
        if want <= seen:
            return
        time.sleep(0.05)
    raise AssertionError("%s: reads never reached both replicas (saw %s)" % (px.name, seen))


def log_events(px, since=0):
    """(unix time, level, message, end offset) of each line of px's log from byte `since`."""
    try:
        with open(px.log_path, "rb") as f:
            f.seek(since)
            data = f.read()
    except OSError:
        return []
    out = []
    off = since
    for raw in data.split(b"\n")[:-1]:  # a line being written has no newline yet
        off += len(raw) + 1
        m = LOG_LINE.match(raw.decode("utf-8", "replace"))
        if m:
            ts = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            out.append((ts + int(m.group(2)) / 1000.0, m.group(3), m.group(4), off))
    return out


def log_mark(px):
    try:
        return os.path.getsize(px.log_path)
    except OSError:
        return 0


def wait_log(px, pattern, since, timeout=5.0):
    """The first line after byte `since` matching `pattern`: (time, match). Fails after
    `timeout` seconds."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for ts, _, msg, _ in log_events(px, since):
            m = rx.search(msg)
            if m:
                return ts, m
        if time.monotonic() > deadline:
            raise AssertionError("%s: no log line /%s/ within %.1fs; log since mark:\n%s"
                                 % (px.name, pattern, timeout,
                                    "\n".join(e[2] for e in log_events(px, since)[-20:])))
        time.sleep(0.01)


def log_lines(px, pattern, since):
    rx = re.compile(pattern)
    return [(ts, msg) for ts, _, msg, _ in log_events(px, since) if rx.search(msg)]


def replica_state(px, name):
    """'up' or 'evicted', from the newest state-change line px logged for replica `name`
    (every node starts up)."""
    state = "up"
    for _, _, msg, _ in log_events(px):
        m = REPLICA_EVENT.match(msg)
        if m and m.group(1) == name:
            state = "up" if m.group(2) == "back" else "evicted"
    return state


def wait_up(px, name, timeout=5):
    deadline = time.monotonic() + timeout
    while replica_state(px, name) != "up":
        if time.monotonic() > deadline:
            raise AssertionError("%s: %s not back after %ds" % (px.name, name, timeout))
        time.sleep(0.01)


def wait_reads_reach(test, px, port, timeout):
    """Read on new sessions until one lands on `port`; returns the unix time it did."""
    deadline = time.monotonic() + timeout
    while True:
        c = through(px)
        try:
            if port in read_ports(c, 4):
                return time.time()
        finally:
            c.close()
        test.assertLess(time.monotonic(), deadline, "reads never reached :%d" % port)
        time.sleep(0.02)


def replica_names():
    return [n.name for n in CLUSTER.nodes[1:]]


def settle(timeout=15):
    """Resume replay everywhere, wait for the replicas to catch up and for every pgsteer to
    have every replica back in its read set."""
    for n in CLUSTER.nodes[1:]:
        if n.running:
            on_node(n.port, "select pg_wal_replay_resume()")
    CLUSTER.wait_replay()
    deadline = time.monotonic() + timeout
    for px in ALL:
        for name in replica_names():
            while replica_state(px, name) != "up":
                if time.monotonic() > deadline:
                    raise AssertionError("%s: %s not back after %ds" % (px.name, name, timeout))
                time.sleep(0.02)


def pause(port):
    on_node(port, "select pg_wal_replay_pause()")


def resume(port):
    on_node(port, "select pg_wal_replay_resume()")


def make_wal(nbytes):
    """Write at least `nbytes` of WAL on the primary in one transaction (rows of about 1 kB
    of incompressible-looking text, below the TOAST threshold)."""
    rows = nbytes // 900 + 1
    c = direct(CLUSTER.primary_port)
    try:
        before = lsn(scalar(c, "select pg_current_wal_lsn()::text"))
        c.cursor().execute("insert into filler select g, repeat(md5(g::text), 30) "
                           "from generate_series(1, %s) g", (rows,))
        after = lsn(scalar(c, "select pg_current_wal_lsn()::text"))
    finally:
        c.close()
    assert after - before >= nbytes, "only %d bytes of WAL written" % (after - before)
    return after - before


class LagProbe(threading.Thread):
    """Polls the primary's pg_current_wal_lsn() and a replica's pg_last_wal_replay_lsn()
    directly, as fast as it can, and records when the byte lag first exceeded `threshold`:
    `t_over` (start of the first sample over it) and `t_under` (start of the last sample
    under it), both unix times. The lag appeared in between."""

    def __init__(self, replica_port, threshold):
        super().__init__(daemon=True)
        self.replica_port = replica_port
        self.threshold = threshold
        self.t_over = self.t_under = None
        self.samples = 0
        self.error = None
        self.stop_flag = threading.Event()
        self.over = threading.Event()

    def run(self):
        try:
            p, r = direct(CLUSTER.primary_port), direct(self.replica_port)
            try:
                pc, rc = p.cursor(), r.cursor()
                while not self.stop_flag.is_set() and not self.over.is_set():
                    t = time.time()
                    pc.execute("select pg_current_wal_lsn()::text")
                    rc.execute("select pg_last_wal_replay_lsn()::text")
                    lag = lsn(pc.fetchone()[0]) - lsn(rc.fetchone()[0])
                    self.samples += 1
                    if lag > self.threshold:
                        self.t_over = t
                        self.over.set()
                    else:
                        self.t_under = t
            finally:
                p.close()
                r.close()
        except Exception as e:  # reported by the test
            self.error = e
            self.over.set()


def probe(conn, pairs):
    """The read-your-writes probe: `pairs` times, increment a counter and read it back on the
    same session. Returns (stale reads, {port: reads})."""
    cur = conn.cursor()
    stale = 0
    where = {}
    for _ in range(pairs):
        cur.execute("update t set v = v + 1 where id = 1 returning v")
        v = cur.fetchone()[0]
        cur.execute("select v, inet_server_port() from t where id = 1")
        got, port = cur.fetchone()
        if got != v:
            stale += 1
        where[port] = where.get(port, 0) + 1
    return stale, where


def describe(where):
    names = {n.port: n.name for n in CLUSTER.nodes}
    total = sum(where.values()) or 1
    return ", ".join("%s %d (%.1f%%)" % (names.get(p, p), k, 100.0 * k / total)
                     for p, k in sorted(where.items()))


def report(msg):
    sys.stderr.write("\n    [measured] %s " % msg)
    sys.stderr.flush()


class Base(unittest.TestCase):
    """Settles the cluster before each test; shows the pgsteer logs after a failure and the
    stacks of a test that hangs."""

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result is not None else 0
        faulthandler.dump_traceback_later(120)
        try:
            out = super().run(result)
        finally:
            faulthandler.cancel_dump_traceback_later()
        if result is not None and len(result.failures) + len(result.errors) > before:
            for px in ALL:
                px.dump_log(25)
        return out

    def setUp(self):
        settle()

    @property
    def primary(self):
        return CLUSTER.primary_port

    @property
    def r1(self):
        return CLUSTER.replica_ports[0]

    @property
    def r2(self):
        return CLUSTER.replica_ports[1]

    def connect(self, px, **kw):
        c = through(px, **kw)
        self.addCleanup(c.close)
        return c


# ---- eviction by byte lag, fallback, a stopped replica ---------------------------------------
class EvictionTest(Base):
    def test_paused_replica_is_evicted_gets_no_reads_and_comes_back(self):
        mark = log_mark(PX)
        old = self.connect(PX)
        self.assertEqual(set(read_ports(old, 6)), {self.r1, self.r2})
        pause(self.r1)
        self.addCleanup(resume, self.r1)
        lag = LagProbe(self.r1, MAX_LAG_BYTES)
        lag.start()
        try:
            wrote = make_wal(3 * MAX_LAG_BYTES)
            self.assertTrue(lag.over.wait(10), "the lag never exceeded max_lag_bytes")
        finally:
            lag.stop_flag.set()
            lag.join()
        self.assertIsNone(lag.error)
        t_evict, m = wait_log(PX, r"^replica1 evicted: lag (\S+ \S+) > 1 MB$", mark)
        report("eviction %.0f ms after the lag passed 1 MB (appeared between %.0f and %.0f ms "
               "before; %d probe samples, %d bytes of WAL)"
               % ((t_evict - lag.t_over) * 1000, (t_evict - lag.t_over) * 1000,
                  (t_evict - (lag.t_under or lag.t_over)) * 1000, lag.samples, wrote))
        # Log times are truncated to the millisecond, hence the 1 ms of slack before.
        self.assertGreaterEqual(t_evict, (lag.t_under or lag.t_over) - 0.001,
                                "evicted before the lag existed")
        self.assertLessEqual(t_evict - lag.t_over, 2 * LAG_INTERVAL,
                             "evicted later than two monitor intervals after the lag")
        # The healthy replica may lag past 1 MB too while the burst streams (that is real
        # lag); it is back once it has replayed.
        wait_up(PX, "replica2")

        # While evicted: no reads, on a new session or on one that read there before.
        seen = read_ports(self.connect(PX), 50)
        self.assertNotIn(self.r1, seen)
        self.assertEqual(set(seen), {self.r2}, "reads go to the other replica")
        self.assertEqual(set(read_ports(old, 20)), {self.r2})

        t_resume = time.time()
        resume(self.r1)
        t_back, m = wait_log(PX, r"^replica1 back: (.*)$", mark)
        report("back %.0f ms after pg_wal_replay_resume() (recover_checks 3, interval 50 ms)"
               % ((t_back - t_resume) * 1000))
        # Back after recover_checks (3) healthy rounds: the first may come right after the
        # resume, the third two intervals later.
        self.assertGreaterEqual(t_back - t_resume, 2 * LAG_INTERVAL - 0.015,
                                "back sooner than recover_checks rounds")
        self.assertLess(t_back - t_resume, 3.0)
        self.assertEqual(m.group(1), "lag 0 B")
        self.assertEqual(len(log_lines(PX, r"^replica1 (evicted|still evicted|back)", mark)), 2,
                         "exactly one eviction and one comeback, no flapping")
        seen = read_ports(self.connect(PX), 50)
        self.assertIn(self.r1, seen, "reads reach the replica again")
        self.assertNotIn(self.primary, seen)

    def pause_both_and_wait(self, pxs):
        marks = {px: log_mark(px) for px in pxs}
        for port in CLUSTER.replica_ports:
            pause(port)
            self.addCleanup(resume, port)
        make_wal(3 * MAX_LAG_BYTES)
        for px in pxs:
            for name in replica_names():
                wait_log(px, r"^%s evicted: lag" % name, marks[px])

    def test_both_paused_reads_fall_back_to_primary_or_fail(self):
        self.pause_both_and_wait([PX, PXE])
        # fallback: primary (the default): every read runs on the primary.
        seen = read_ports(self.connect(PX), 50)
        self.assertEqual(set(seen), {self.primary})
        # fallback: error: reads fail with SQLSTATE 57P03, the session survives, writes
        # (on another session: a session's own reads right after its write go to the primary
        # whatever the fallback, see docs/consistency.md) work.
        c = self.connect(PXE)
        cur = c.cursor()
        with self.assertRaises(psycopg2.Error) as ctx:
            cur.execute("select inet_server_port()")
        self.assertEqual(ctx.exception.pgcode, "57P03", str(ctx.exception))
        self.assertIn("no replica is eligible", str(ctx.exception))
        w = self.connect(PXE).cursor()
        w.execute("update t set v = v + 1 where id = 1 returning inet_server_port()")
        self.assertEqual(w.fetchone()[0], self.primary)
        # ... and once a replica is back, reads work again on the same session.
        resume(self.r2)
        deadline = time.monotonic() + 5
        while True:
            try:
                cur.execute("select inet_server_port()")
                self.assertEqual(cur.fetchone()[0], self.r2)
                break
            except psycopg2.Error as e:
                self.assertEqual(e.pgcode, "57P03")
                self.assertLess(time.monotonic(), deadline, "reads never came back")
                time.sleep(0.02)

    def test_fallback_error_applies_to_the_extended_protocol(self):
        # The same rule for a read sent as Parse/Bind/Execute/Sync (pgbench -M extended).
        self.pause_both_and_wait([PXE])
        script = os.path.join(CLUSTER.tmpdir, "read.sql")
        with open(script, "w") as f:
            f.write("select inet_server_port();\n")
        env = dict(os.environ, PGPASSWORD=cl.APP_PASSWORD)
        p = subprocess.run([os.path.join(CLUSTER.bindir, "pgbench"), "-n", "-M", "extended",
                            "-t", "1", "-f", script, "-h", "127.0.0.1", "-p", str(PXE.port),
                            "-U", cl.APP_USER, cl.APP_DB], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0, "the read ran (on the primary?) although "
                            "fallback is error:\n" + p.stdout + p.stderr)
        self.assertIn("no replica is eligible", p.stderr)

    def test_stopped_replica_is_evicted_and_comes_back(self):
        mark = log_mark(PX)
        old = self.connect(PX)
        self.assertEqual(set(read_ports(old, 6)), {self.r1, self.r2})
        t_stop = time.time()
        CLUSTER.stop_node(1, mode="fast")
        t_stopped = time.time()
        try:
            t_evict, _ = wait_log(PX, r"^replica1 evicted: not answering", mark)
            report("evicted %.0f ms after pg_ctl stop returned (it took %.0f ms)"
                   % ((t_evict - t_stopped) * 1000, (t_stopped - t_stop) * 1000))
            self.assertGreaterEqual(t_evict, t_stop - 0.001)
            self.assertLessEqual(t_evict - t_stopped, 2 * LAG_INTERVAL)
            self.assertEqual(set(read_ports(self.connect(PX), 50)), {self.r2})
            self.assertEqual(set(read_ports(old, 20)), {self.r2},
                             "a session that used the replica reads elsewhere, without errors")
        finally:
            t_start = time.time()
            CLUSTER.start_node(1)
        t_back, _ = wait_log(PX, r"^replica1 back: ", mark, timeout=10)
        self.assertGreater(t_back, t_start)
        # A backend failure (the stop closed the old session's idle backend) keeps the node
        # out of reads for a second of its own, so reads may take that long to return.
        t_reads = wait_reads_reach(self, PX, self.r1, timeout=3)
        report("back %.0f ms after pg_ctl start began, reads there %.0f ms after that"
               % ((t_back - t_start) * 1000, (t_reads - t_back) * 1000))
        # The old session's backend to the restarted node died while the node was down: its
        # reads reach the node again, without an error.
        deadline = time.monotonic() + 3
        seen = []
        while self.r1 not in seen and time.monotonic() < deadline:
            seen = read_ports(old, 10)
        self.assertIn(self.r1, seen,
                      "a session that used the replica before it restarted reads there again")


# ---- time lag ------------------------------------------------------------------------------
class TimeLagTest(Base):
    def test_idle_primary_no_time_lag_paused_replica_lag_grows(self):
        # Idle primary, replicas caught up: time lag stays near zero, so a 300 ms limit
        # evicts nothing however long the primary is idle (3.5 times the limit here).
        mark = log_mark(PXT)
        time.sleep(3.5 * MAX_LAG_MS / 1000.0)
        self.assertEqual(log_lines(PXT, r"evicted", mark), [])

        # A paused replica's time lag grows with wall time from the first write it misses,
        # even though the primary writes nothing more.
        pause(self.r1)
        self.addCleanup(resume, self.r1)
        c = direct(self.primary)
        t_w0 = time.time()
        c.cursor().execute("update t set v = v + 1 where id = 1")
        t_w = time.time()
        c.close()
        t_evict, m = wait_log(PXT, r"^replica1 evicted: lag (\d+) ms > 300 ms$", mark)
        said = int(m.group(1))
        report("time-lag eviction %.0f ms after the write (logged lag %d ms, limit %d ms, "
               "interval %.0f ms)" % ((t_evict - t_w0) * 1000, said, MAX_LAG_MS,
                                      TIME_INTERVAL * 1000))
        self.assertGreaterEqual(t_evict - t_w0, MAX_LAG_MS / 1000.0 - 0.001,
                                "evicted before the lag reached the limit")
        self.assertLessEqual(t_evict - t_w, MAX_LAG_MS / 1000.0 + 2 * TIME_INTERVAL + 0.02)
        self.assertGreater(said, MAX_LAG_MS)
        # The lag it reports is wall time since the write, less at most one interval.
        self.assertLessEqual(said, (t_evict - t_w0) * 1000 + 2)
        self.assertGreaterEqual(said, (t_evict - t_w) * 1000 - TIME_INTERVAL * 1000 - 20)
        self.assertEqual(log_lines(PXT, r"^replica2 evicted", mark), [])
        resume(self.r1)
        wait_log(PXT, r"^replica1 back: lag 0 B$", mark)

    def status_lag_ms(self, name):
        """lag_ms of node `name` in the admin interface's GET /status."""
        url = "http://127.0.0.1:%d/status" % PXT.admin_port
        with urllib.request.urlopen(url, timeout=2) as r:
            self.assertEqual(r.status, 200)
            doc = json.loads(r.read().decode())
        nodes = doc.get("nodes") if isinstance(doc, dict) else None
        self.assertIsInstance(nodes, list, "GET /status: no 'nodes' list: %r" % (doc,))
        for n in nodes:
            if n.get("name") == name:
                self.assertIn("lag_ms", n, "GET /status: no lag_ms for %s: %r" % (name, n))
                return n["lag_ms"]
        self.fail("GET /status: no node %s: %r" % (name, doc))

    def test_status_time_lag(self):
        # The admin interface's numbers: near zero for a caught-up replica on an idle primary,
        # wall time since the first missed write for a paused one.
        samples = []
        for _ in range(10):
            samples.append(self.status_lag_ms("replica2"))
            time.sleep(0.1)
        self.assertLessEqual(max(samples), 2 * TIME_INTERVAL * 1000, samples)
        pause(self.r1)
        self.addCleanup(resume, self.r1)
        c = direct(self.primary)
        t_w0 = time.time()
        c.cursor().execute("update t set v = v + 1 where id = 1")
        c.close()
        grow = []
        for _ in range(8):
            time.sleep(0.15)
            t = time.time()
            grow.append((t - t_w0, self.status_lag_ms("replica1"), self.status_lag_ms("replica2")))
        report("status lag_ms of a paused replica: %s"
               % ", ".join("%.0f ms -> %d" % (t * 1000, l) for t, l, _ in grow))
        for t, lag1, lag2 in grow:
            self.assertLessEqual(lag1, t * 1000 + 5)
            self.assertGreaterEqual(lag1, t * 1000 - 2 * TIME_INTERVAL * 1000 - 50)
            self.assertLessEqual(lag2, 2 * TIME_INTERVAL * 1000)
        self.assertEqual([g[1] for g in grow], sorted(g[1] for g in grow), "lag_ms grows")


# ---- consistency modes -----------------------------------------------------------------------
class ConsistencyTest(Base):
    PAIRS = 2000

    def back_on_replicas_after(self, conn):
        """After one write on `conn`, read until a read lands on a replica: the delay in ms."""
        cur = conn.cursor()
        cur.execute("update t set v = v + 1 where id = 1")
        t0 = time.monotonic()
        while True:
            cur.execute("select inet_server_port()")
            if cur.fetchone()[0] != self.primary:
                return (time.monotonic() - t0) * 1000
            self.assertLess(time.monotonic() - t0, 2, "reads stay on the primary")
            time.sleep(0.001)

    def test_session_mode_reads_your_writes(self):
        c = self.connect(PXC)
        cur = c.cursor()
        cur.execute("show pgsteer.consistency")
        self.assertEqual(cur.fetchone()[0], "session")
        t0 = time.monotonic()
        stale, where = probe(c, self.PAIRS)
        t_last = time.monotonic()
        report("session probe, %d pairs in %.1fs: %d stale; reads: %s"
               % (self.PAIRS, t_last - t0, stale, describe(where)))
        self.assertEqual(stale, 0)
        # 300 ms after the last write the session's reads are on replicas again.
        time.sleep(max(0, 0.3 - (time.monotonic() - t_last)))
        seen = read_ports(c, 20)
        self.assertTrue(set(seen) <= {self.r1, self.r2}, seen)
        delays = sorted(self.back_on_replicas_after(c) for _ in range(20))
        report("session mode, interval %.0f ms: first read on a replica %.0f/%.0f/%.0f ms "
               "(min/median/max of 20) after a write"
               % (RYW_INTERVAL * 1000, delays[0], delays[10], delays[-1]))
        self.assertLessEqual(delays[-1], 3 * RYW_INTERVAL * 1000 + 50)

    def test_session_mode_with_a_stale_eligible_replica(self):
        # replica1 paused but within this instance's limits: still eligible, and behind.
        pause(self.r1)
        self.addCleanup(resume, self.r1)
        mark = log_mark(PXC)
        c = self.connect(PXC)
        stale, where = probe(c, 500)
        report("session probe with replica1 paused: %d stale; reads: %s"
               % (stale, describe(where)))
        self.assertEqual(stale, 0)
        time.sleep(0.3)
        # The session's reads avoid the replica that has not replayed its writes.
        self.assertEqual(set(read_ports(c, 20)), {self.r2})
        self.assertEqual(log_lines(PXC, r"evicted", mark), [], "replica1 stayed eligible")
        # Control: the same probe in eventual mode does read stale data from replica1, so
        # the probe can see staleness.
        e = self.connect(PXC)
        e.cursor().execute("set pgsteer.consistency = eventual")
        stale, where = probe(e, 200)
        report("eventual probe with replica1 paused: %d stale of 200; reads: %s"
               % (stale, describe(where)))
        self.assertGreater(stale, 0)

    def test_session_mode_with_asynchronous_commit(self):
        # With synchronous_commit off a commit returns before its WAL is written: the
        # read-your-writes bound must still cover it. Reading 25 ms after each write lets a
        # monitor round (20 ms) pass, so the read is decided by the bound, not by the write
        # being unbounded.
        c = self.connect(PXC)
        cur = c.cursor()
        cur.execute("set synchronous_commit = off")
        stale = 0
        where = {}
        for _ in range(100):
            cur.execute("update t set v = v + 1 where id = 1 returning v")
            v = cur.fetchone()[0]
            time.sleep(0.025)
            cur.execute("select v, inet_server_port() from t where id = 1")
            got, port = cur.fetchone()
            stale += got != v
            where[port] = where.get(port, 0) + 1
        report("session mode, synchronous_commit off, reads 25 ms after each write: %d stale "
               "of 100; reads: %s" % (stale, describe(where)))
        self.assertEqual(stale, 0)

    def function_write_probe(self, function, in_transaction):
        c = self.connect(PXC)
        cur = c.cursor()
        stale = 0
        where = {}
        for _ in range(200):
            if in_transaction:
                cur.execute("begin")
            cur.execute("select %s()" % function)
            v = cur.fetchone()[0]
            if in_transaction:
                cur.execute("commit")
            cur.execute("select v, inet_server_port() from t where id = 1")
            got, port = cur.fetchone()
            stale += got != v
            where[port] = where.get(port, 0) + 1
        report("session mode, writes by %s()%s: %d stale of 200; reads: %s"
               % (function, " in BEGIN ... COMMIT" if in_transaction else "", stale,
                  describe(where)))
        return stale

    def test_session_mode_write_functions(self):
        # A function listed in write_functions is a write, alone or in a transaction.
        self.assertEqual(self.function_write_probe("bump_listed", False), 0)
        self.assertEqual(self.function_write_probe("bump_listed", True), 0)

    def test_session_mode_read_write_transaction_counts_as_a_write(self):
        # A read-write transaction may write without any statement looking like a write
        # (here a function missing from write_functions): its commit on the primary must
        # count as a write, or the session's next read can miss what it just committed.
        self.assertEqual(self.function_write_probe("bump", True), 0)

    def test_eventual_mode_reads_on_replicas(self):
        c = self.connect(PXC)
        cur = c.cursor()
        cur.execute("set pgsteer.consistency = eventual")
        cur.execute("show pgsteer.consistency")
        self.assertEqual(cur.fetchone()[0], "eventual")
        stale, where = probe(c, self.PAIRS)
        report("eventual probe, %d pairs: %d stale (%.2f%%); reads: %s"
               % (self.PAIRS, stale, 100.0 * stale / self.PAIRS, describe(where)))
        on_replicas = where.get(self.r1, 0) + where.get(self.r2, 0)
        self.assertGreater(on_replicas, self.PAIRS // 2, "reads right after writes on replicas")
        self.assertEqual(where.get(self.primary, 0), 0)

    def test_strong_mode_everything_on_primary(self):
        c = self.connect(PXC)
        cur = c.cursor()
        cur.execute("set pgsteer.consistency = strong")
        cur.execute("show pgsteer.consistency")
        self.assertEqual(cur.fetchone()[0], "strong")
        self.assertEqual(set(read_ports(c, 20)), {self.primary}, "reads before any write")
        stale, where = probe(c, self.PAIRS)
        report("strong probe, %d pairs: %d stale; reads: %s"
               % (self.PAIRS, stale, describe(where)))
        self.assertEqual(stale, 0)
        self.assertEqual(set(where), {self.primary})
        time.sleep(0.3)
        self.assertEqual(set(read_ports(c, 20)), {self.primary})
        cur.execute("reset pgsteer.consistency")
        cur.execute("show pgsteer.consistency")
        self.assertEqual(cur.fetchone()[0], "session")
        # The writes made in strong mode still bound this session's reads: they return to
        # replicas once those have replayed the writes.
        deadline = time.monotonic() + 2
        while read_ports(c, 1)[0] == self.primary:
            self.assertLess(time.monotonic(), deadline, "reads stay on the primary")
            time.sleep(0.01)
        self.assertEqual(set(read_ports(c, 20)) - {self.r1, self.r2}, set())

    def test_causal_token_across_sessions_and_instances(self):
        # The writer (session A) and the reader (session B, on another pgsteer) share only
        # the token. replica1 is paused but within B's instance's limits: a reader without
        # the token reads stale data there.
        pause(self.r1)
        self.addCleanup(resume, self.r1)
        a = self.connect(PXC).cursor()
        b = self.connect(PX).cursor()
        control = self.connect(PX).cursor()
        with self.assertRaises(psycopg2.Error) as ctx:
            b.execute("set pgsteer.min_lsn = 'not an lsn'")
        self.assertEqual(ctx.exception.pgcode, "22P02")
        stale = control_stale = 0
        where = {}
        t0 = time.monotonic()
        for i in range(200):
            a.execute("update t set v = v + 1 where id = 1 returning v")
            v = a.fetchone()[0]
            a.execute("show pgsteer.last_write_lsn")
            token = a.fetchone()[0]
            self.assertRegex(token, LSN_TEXT)
            self.assertGreater(lsn(token), 0)
            b.execute("set pgsteer.min_lsn = '%s'" % token)
            if i == 0:
                b.execute("show pgsteer.min_lsn")
                self.assertEqual(b.fetchone()[0], token)
            if i % 10 == 9:
                time.sleep(0.15)  # some reads after the replicas have caught up
            b.execute("select v, inet_server_port() from t where id = 1")
            got, port = b.fetchone()
            stale += got != v
            where[port] = where.get(port, 0) + 1
            control.execute("select v from t where id = 1")
            control_stale += control.fetchone()[0] != v
        report("causal token, 200 writes in %.1fs: %d stale with the token (reads: %s); "
               "%d stale without" % (time.monotonic() - t0, stale, describe(where),
                                     control_stale))
        b.execute("reset pgsteer.min_lsn")
        b.execute("show pgsteer.min_lsn")
        self.assertEqual(b.fetchone()[0], "0/0")
        self.assertEqual(stale, 0)
        self.assertNotIn(self.r1, where, "a replica behind the token got a read")
        self.assertGreater(where.get(self.r2, 0), 0, "the token lets reads use a caught-up "
                           "replica")
        self.assertGreater(control_stale, 0, "without the token, replica1 serves stale reads")


def load_tests(loader, standard_tests, pattern):
    suite = unittest.TestSuite()
    for cls in (ConsistencyTest, TimeLagTest, EvictionTest):
        suite.addTests(loader.loadTestsFromTestCase(cls))
    return suite


if __name__ == "__main__":
    unittest.main(verbosity=2)
