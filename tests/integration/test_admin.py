# SPDX-License-Identifier: MIT
"""Integration tests for the admin interface and operations: GET /status, /metrics (checked
with promtool), /healthz, /readyz, the PostgreSQL-protocol admin console (psql), reload by
SIGHUP and POST /reload, PAUSE/RESUME, SIGTERM's graceful shutdown and `pgsteer status`, all
against a real primary and two streaming replicas.

Run: tests/integration/run.sh test_admin (or the whole suite with run.sh)."""

import faulthandler
import json
import os
import re
import shutil
import signal
import socket
import struct
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

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"
ADMIN_YAML = "admin_users:\n  - {name: %s, password: %s}\n" % (ADMIN_USER, ADMIN_PASSWORD)
TOKEN = "t0ken-for-tests"

CLUSTER = None
PX = None  # shared instance, no admin token
_started = []


def setUpModule():
    global CLUSTER, PX
    CLUSTER = cl.Cluster(replicas=2)
    try:
        CLUSTER.start()
        CLUSTER.psql(CLUSTER.primary_port, "create table admin_t (id serial primary key, v int)")
        CLUSTER.wait_replay()
        PX = start_pgsteer(name="admin")
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    for px in _started:
        px.stop()
    if CLUSTER is not None:
        CLUSTER.stop()


def start_pgsteer(extra_yaml="", name=None):
    """A pgsteer with admin users, started and ready: its first monitor round is done and reads
    reach both replicas."""
    px = cl.Pgsteer(CLUSTER, extra_yaml=ADMIN_YAML + extra_yaml, name=name)
    px.start()
    _started.append(px)
    return px.wait_replicas_eligible(token=TOKEN)


def http(px, path, method="GET", token=None, body=None, timeout=5):
    """(status, headers, body text) of one request to the admin port."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (px.admin_port, path), method=method,
                                 data=body)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def raw_http(px, data, timeout=5):
    """Send raw bytes to the admin port; return everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", px.admin_port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out.decode("latin-1")
            out += chunk


def open_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def status(px):
    code, _, body = http(px, "/status")
    assert code == 200, (code, body)
    return json.loads(body)


def node(doc, name):
    for n in doc["nodes"]:
        if n["name"] == name:
            return n
    raise AssertionError("no node %s in %r" % (name, doc["nodes"]))


def admin_psql(px, sql, check=True, user=ADMIN_USER, password=ADMIN_PASSWORD):
    return cl.run_psql(px.admin_port, sql, user=user, db="pgsteer", password=password,
                       check=check, timeout=30, bindir=CLUSTER.bindir)


def psql(px, sql, check=True):
    return cl.run_psql(px.port, sql, password=cl.APP_PASSWORD, check=check, timeout=30,
                       bindir=CLUSTER.bindir)


def rows(out):
    return [line.split("|") for line in out.strip().splitlines() if line]


METRIC = re.compile(r'^([a-z_:][a-z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def metrics(px):
    """{(name, frozenset of label pairs): float} of a /metrics scrape, and its text."""
    code, headers, text = http(px, "/metrics")
    assert code == 200, (code, text)
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = METRIC.match(line)
        assert m, "bad sample line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out, text, headers


def sample(ms, name, **labels):
    return ms.get((name, frozenset(labels.items())), 0.0)


class Base(unittest.TestCase):
    """Shows pgsteer's log after a test that failed; dumps stacks of a test that hangs."""

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result is not None else 0
        faulthandler.dump_traceback_later(120)
        try:
            out = super().run(result)
        finally:
            faulthandler.cancel_dump_traceback_later()
        if result is not None and len(result.failures) + len(result.errors) > before:
            for px in _started:
                if px.alive():
                    px.dump_log(40)
        return out

    def connect(self, px, autocommit=True):
        c = psycopg2.connect(px.dsn())
        c.autocommit = autocommit
        self.addCleanup(c.close)
        return c

    def port_of(self, conn):
        cur = conn.cursor()
        cur.execute("select inet_server_port()")
        return cur.fetchone()[0]


# ---- HTTP ------------------------------------------------------------------------------------
class HttpTest(Base):
    def test_status_counts_match_routing(self):
        before = status(PX)
        reads, writes = 7, 3
        psql(PX, ["select %d" % i for i in range(reads)])
        psql(PX, ["insert into admin_t (v) values (%d)" % i for i in range(writes)])
        after = status(PX)
        d = lambda f: f(after) - f(before)  # noqa: E731
        self.assertEqual(d(lambda s: s["queries"]["reads"]), reads)
        self.assertEqual(d(lambda s: s["queries"]["writes"]), writes)
        self.assertEqual(d(lambda s: s["queries"]["total"]), reads + writes)
        self.assertEqual(d(lambda s: s["queries_by_reason"]["read"]), reads)
        self.assertEqual(d(lambda s: s["queries_by_reason"]["write"]), writes)
        self.assertEqual(d(lambda s: node(s, "primary")["writes"]), writes)
        self.assertEqual(d(lambda s: node(s, "primary")["reads"]), 0)
        self.assertEqual(d(lambda s: node(s, "replica1")["reads"] + node(s, "replica2")["reads"]),
                         reads)
        self.assertEqual(after["version"], subprocess.run(
            [PX.binary, "--version"], capture_output=True, text=True).stdout.split()[1])
        self.assertGreater(after["uptime_seconds"], 0)
        self.assertTrue(after["primary_up"])
        for n in after["nodes"]:
            self.assertEqual(n["state"], "up", n)
            self.assertEqual(n["lag_bytes"] is not None, True)
            self.assertIn("state_changed_at", n)
            self.assertIn("state_reason", n)
            self.assertIn("backends", n)
        self.assertEqual(node(after, "primary")["role"], "primary")
        self.assertEqual(node(after, "replica1")["role"], "replica")
        self.assertTrue(node(after, "replica1")["eligible"])

    def test_status_sees_clients_backends_and_primary_reasons(self):
        c = self.connect(PX)
        cur = c.cursor()
        before = status(PX)
        cur.execute("begin")
        cur.execute("select 1")
        cur.execute("commit")
        cur.execute("/* pgsteer:primary */ select 1")
        during = status(PX)
        self.assertGreaterEqual(during["client_connections"], 1)
        self.assertGreaterEqual(node(during, "primary")["backends"], 1)
        pr = during["primary_reasons"]
        pb = before["primary_reasons"]
        self.assertEqual(pr["forced"] - pb["forced"], 1)
        self.assertGreaterEqual(pr["begin"] + pr["transaction"] - pb["begin"] - pb["transaction"],
                                2)
        c.close()

    def test_metrics_match_routing_and_pass_promtool(self):
        ms0, _, _ = metrics(PX)
        reads, writes = 5, 2
        psql(PX, ["select %d" % i for i in range(reads)])
        psql(PX, ["insert into admin_t (v) values (%d)" % i for i in range(writes)])
        ms1, text, headers = metrics(PX)
        self.assertTrue(headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"))
        d = lambda name, **lb: sample(ms1, name, **lb) - sample(ms0, name, **lb)  # noqa: E731
        self.assertEqual(d("pgsteer_queries_total", reason="read"), reads)
        self.assertEqual(d("pgsteer_queries_total", reason="write"), writes)
        self.assertEqual(d("pgsteer_node_writes_total", node="primary"), writes)
        self.assertEqual(d("pgsteer_node_reads_total", node="replica1")
                         + d("pgsteer_node_reads_total", node="replica2"), reads)
        for n in ("primary", "replica1", "replica2"):
            self.assertEqual(sample(ms1, "pgsteer_node_up", node=n), 1)
            self.assertIn(("pgsteer_node_lag_bytes", frozenset({("node", n)})), ms1)
            self.assertIn(("pgsteer_node_lag_seconds", frozenset({("node", n)})), ms1)
        self.assertEqual(sample(ms1, "pgsteer_node_eligible", node="replica1"), 1)
        self.assertEqual(sample(ms1, "pgsteer_node_eligible", node="primary"), 0)
        self.assertEqual(sample(ms1, "pgsteer_primary_up"), 1)
        # pgsteer's own time: one request observation per routing unit, cumulative buckets
        self.assertGreaterEqual(d("pgsteer_proxy_seconds_count", direction="request"),
                                reads + writes)
        self.assertGreater(d("pgsteer_proxy_seconds_count", direction="response"), 0)
        self.assertEqual(sample(ms1, "pgsteer_proxy_seconds_bucket", direction="request",
                                le="+Inf"),
                         sample(ms1, "pgsteer_proxy_seconds_count", direction="request"))
        for line in text.splitlines():
            if line.startswith("# TYPE") and line.endswith(" counter"):
                self.assertTrue(line.split()[2].endswith("_total"), line)
            if not line.startswith("#"):
                self.assertTrue(line.startswith("pgsteer_"), line)
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool missing: apt-get install prometheus "
                                       "(scripts/deps.sh test)")
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(p.returncode, 0, "promtool: %s%s" % (p.stdout, p.stderr))
        self.assertEqual(p.stdout.strip() + p.stderr.strip(), "", "promtool lint warnings")

    def test_conf_files_use_real_metric_names(self):
        _, text, _ = metrics(PX)
        families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        for name in ("pgsteer-alerts.yml", "grafana-dashboard.json"):
            with open(os.path.join(cl.REPO_ROOT, "conf", name)) as f:
                used = set(re.findall(r"\b(pgsteer_[a-z_]+)", f.read()))
            self.assertTrue(used, name)
            self.assertEqual(used - families, set(), "%s uses unknown metrics" % name)
        with open(os.path.join(cl.REPO_ROOT, "conf", "grafana-dashboard.json")) as f:
            self.assertEqual(json.load(f)["title"], "pgsteer")
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool)
        p = subprocess.run([promtool, "check", "rules",
                            os.path.join(cl.REPO_ROOT, "conf", "pgsteer-alerts.yml")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_healthz_readyz_and_unknown_paths(self):
        code, _, body = http(PX, "/healthz")
        self.assertEqual((code, body), (200, "ok\n"))
        code, _, body = http(PX, "/readyz")
        self.assertEqual(code, 200, body)
        for path in ("/", "/nope", "/status/x", "/metricsx"):
            self.assertEqual(http(PX, path)[0], 404, path)
        self.assertEqual(http(PX, "/reload")[0], 405)
        self.assertEqual(http(PX, "/status", method="DELETE")[0], 405)
        # The query string is not part of the path.
        self.assertEqual(http(PX, "/healthz?verbose=1")[0], 200)

    def test_malformed_and_oversized_requests(self):
        for req in (b"GARBAGE\r\n\r\n", b"GET /status HTTP/9.9\r\n\r\n",
                    b"GET /status HTTP/1.1\r\nNo colon here\r\n\r\n",
                    b"GET /status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"):
            out = raw_http(PX, req)
            self.assertTrue(out.startswith("HTTP/1.1 400 "), (req, out[:80]))
            self.assertIn("Connection: close", out)
        big = b"GET /status HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        self.assertTrue(raw_http(PX, big).startswith("HTTP/1.1 400 "))
        self.assertEqual(status(PX)["primary_up"], True)

    def test_slow_admin_clients_do_not_stall_the_proxy(self):
        # Half a request, a half startup packet, and a peer that connects and says nothing.
        socks = []
        for data in (b"GET /sta", b"\x00\x00\x00", b""):
            s = socket.create_connection(("127.0.0.1", PX.admin_port), timeout=5)
            self.addCleanup(s.close)
            if data:
                s.sendall(data)
            socks.append(s)
        t0 = time.monotonic()
        self.assertEqual(psql(PX, "select 42").stdout.strip(), "42")
        self.assertEqual(http(PX, "/healthz")[0], 200)
        self.assertTrue(status(PX)["primary_up"])
        self.assertLess(time.monotonic() - t0, 3)
        # A client that sends requests and never reads: the server does not block on it.
        hog = socket.create_connection(("127.0.0.1", PX.admin_port), timeout=5)
        self.addCleanup(hog.close)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        self.assertEqual(http(PX, "/healthz")[0], 200)

    def test_token_required_when_configured(self):
        px = start_pgsteer(extra_yaml="admin_token: %s\n" % TOKEN, name="admin-token")
        try:
            for path in ("/status", "/metrics"):
                code, headers, _ = http(px, path)
                self.assertEqual(code, 401, path)
                self.assertIn("Bearer", headers.get("WWW-Authenticate", ""))
                self.assertEqual(http(px, path, token="wrong")[0], 401)
                self.assertEqual(http(px, path, token=TOKEN)[0], 200)
            self.assertEqual(http(px, "/reload", method="POST")[0], 401)
            # The probes need no token (Kubernetes probes carry none).
            self.assertEqual(http(px, "/healthz")[0], 200)
            self.assertEqual(http(px, "/readyz")[0], 200)
            # pgsteer status reads the token from the configuration.
            p = subprocess.run([px.binary, "status", "-c", px.config_path, "--json"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("nodes", json.loads(p.stdout))
            p = subprocess.run([px.binary, "status", "--admin", "127.0.0.1:%d" % px.admin_port],
                               capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, PGSTEER_ADMIN_TOKEN=""))
            self.assertEqual(p.returncode, 1)
            self.assertIn("401", p.stderr)
        finally:
            px.stop()


# ---- the PostgreSQL-protocol console ------------------------------------------------------
class ConsoleTest(Base):
    def test_show_nodes(self):
        psql(PX, ["select 1", "insert into admin_t (v) values (1)"])
        out = admin_psql(PX, "SHOW NODES").stdout
        got = {r[0]: r for r in rows(out)}
        self.assertEqual(set(got), {"primary", "replica1", "replica2"})
        self.assertEqual(got["primary"][1], "primary")
        self.assertEqual(got["replica1"][1], "replica")
        for r in got.values():
            self.assertEqual(r[2], "up")
        self.assertEqual(got["replica1"][3], "yes")
        st = status(PX)
        self.assertEqual(int(got["primary"][7]), node(st, "primary")["writes"])

    def test_explain_route(self):
        out = admin_psql(PX, "EXPLAIN ROUTE insert into admin_t (v) values (1)").stdout
        self.assertEqual(rows(out), [["primary", "write", "write"]])
        out = admin_psql(PX, "EXPLAIN ROUTE select * from admin_t").stdout
        (r,) = rows(out)
        self.assertIn(r[0], ("replica1", "replica2"))
        self.assertEqual(r[1:], ["read", "read"])
        out = admin_psql(PX, "explain route select nextval('admin_t_id_seq');").stdout
        self.assertEqual(rows(out)[0][:2], ["primary", "write-function"])
        out = admin_psql(PX, "EXPLAIN ROUTE /* pgsteer:primary */ select 1").stdout
        self.assertEqual(rows(out)[0][:2], ["primary", "forced"])
        # Explaining does not move the real round robin: reads still alternate.
        before = status(PX)
        for _ in range(6):
            admin_psql(PX, "EXPLAIN ROUTE select 1")
        self.assertEqual(status(PX)["queries"], before["queries"])

    def test_other_commands(self):
        self.assertIn("SHOW NODES", admin_psql(PX, "SHOW HELP").stdout)
        stats = dict(rows(admin_psql(PX, "SHOW STATS").stdout))
        self.assertIn("queries_total", stats)
        self.assertIn("queries_read-your-writes", stats)
        cfg = dict(rows(admin_psql(PX, "SHOW CONFIG").stdout))
        self.assertEqual(cfg["listen"], "127.0.0.1:%d" % PX.port)
        self.assertEqual(cfg["server_tls.mode"], "disable")
        self.assertNotIn("secret", admin_psql(PX, "SHOW CONFIG").stdout)
        # A client is listed with its address: the port is its socket's own.
        with socket.create_connection(("127.0.0.1", PX.port)) as s:
            s.sendall(b"\0\0\0\x08\x04\xd2\x16\x2f")  # SSLRequest: answered 'N'
            self.assertEqual(s.recv(1), b"N")
            clients = rows(admin_psql(PX, "SHOW CLIENTS").stdout)
            mine = [r for r in clients if r[8:10] == ["127.0.0.1", str(s.getsockname()[1])]]
            self.assertEqual(len(mine), 1, clients)
            self.assertEqual(mine[0][3], "login")
        c = self.connect(PX)
        c.cursor().execute("select 1")
        clients = rows(admin_psql(PX, "SHOW CLIENTS").stdout)
        self.assertTrue(any(r[1] == cl.APP_USER and r[2] == cl.APP_DB for r in clients), clients)
        servers = rows(admin_psql(PX, "SHOW SERVERS").stdout)
        self.assertTrue(any(r[1] in ("replica1", "replica2") for r in servers), servers)
        p = admin_psql(PX, "SELECT 1", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("unknown admin command", p.stderr)

    def test_authentication(self):
        p = admin_psql(PX, "SHOW NODES", check=False, password="wrong")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("password authentication failed", p.stderr)
        # A client user is not an admin user.
        p = admin_psql(PX, "SHOW NODES", check=False, user=cl.APP_USER, password=cl.APP_PASSWORD)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("admin_users", p.stderr)
        p = cl.run_psql(PX.admin_port, "SHOW NODES", user=ADMIN_USER, db="postgres",
                        password=ADMIN_PASSWORD, check=False, bindir=CLUSTER.bindir)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("pgsteer", p.stderr)

    def test_pause_holds_statements_until_resume(self):
        c = self.connect(PX)
        self.port_of(c)  # logged in, backends open
        admin_psql(PX, "PAUSE")
        self.addCleanup(admin_psql, PX, "RESUME")
        self.assertEqual(status(PX)["paused"], True)
        done = threading.Event()
        result = []

        def run():
            try:
                result.append(self.port_of(c))
            except Exception as e:  # reported below
                result.append(e)
            done.set()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        held = not done.wait(0.8)
        admin_psql(PX, "RESUME")
        self.assertTrue(done.wait(10), "the held statement never ran after RESUME")
        self.assertTrue(held, "PAUSE did not hold the statement")
        self.assertNotIsInstance(result[0], Exception)
        self.assertEqual(status(PX)["paused"], False)

    def test_cancel_drops_a_statement_held_by_pause(self):
        # A statement that PAUSE holds can be cancelled (a driver's statement timeout, Ctrl-C):
        # the client gets the error of a cancelled statement (57014) while pgsteer is still
        # paused, by Query and by Parse/Bind/Execute, and its connection works after RESUME.
        from wire import Bind, Conn, Execute, Parse, Query, Sync
        c = Conn(PX.port)
        self.addCleanup(c.close)
        c.send(Query("select 1"))
        c.until_ready()
        admin_psql(PX, "PAUSE")
        self.addCleanup(admin_psql, PX, "RESUME")
        for unit in (Query("select 42"), Parse("select 43") + Bind() + Execute() + Sync):
            c.send(unit)
            stop = threading.Event()

            def cancel():
                # Until the answer comes: a cancel that overtakes the statement finds nothing.
                while not stop.wait(0.2):
                    with socket.create_connection(("127.0.0.1", PX.port), timeout=5) as s:
                        s.sendall(struct.pack("!IIII", 16, 80877102, *c.key))
            t = threading.Thread(target=cancel, daemon=True)
            t.start()
            try:
                out = c.until_ready()
            finally:
                stop.set()
                t.join()
            self.assertEqual(out, [("E", "57014"), ("Z", "I")])
            self.assertEqual(status(PX)["paused"], True)
        # A client that goes away while its statement is held is seen going.
        before = status(PX)["client_connections"]
        gone = Conn(PX.port)
        gone.send(Query("select 45"))
        deadline = time.time() + 10
        while status(PX)["client_connections"] != before + 1:
            self.assertLess(time.time(), deadline, "the new client never showed")
            time.sleep(0.05)
        gone.sock.close()
        while status(PX)["client_connections"] != before:
            self.assertLess(time.time(), deadline, "a client gone during PAUSE is still counted")
            time.sleep(0.05)
        admin_psql(PX, "RESUME")
        c.send(Query("select 44"))
        self.assertIn(("D", ("44",)), c.until_ready())


# ---- pgsteer status -----------------------------------------------------------------------
class StatusCommandTest(Base):
    def test_table_and_json(self):
        psql(PX, "select 1")
        p = subprocess.run([PX.binary, "status", "-c", PX.config_path], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        header = [l for l in lines if l.startswith("NODE")]
        self.assertEqual(len(header), 1, p.stdout)
        for word in ("ROLE", "STATE", "LAG", "READS", "WRITES"):
            self.assertIn(word, header[0])
        self.assertIn(" %d workers, primary up" % status(PX)["workers"], lines[0])
        for n in ("primary", "replica1", "replica2"):
            self.assertTrue(any(l.startswith(n + " ") for l in lines), p.stdout)
        p = subprocess.run([PX.binary, "status", "--admin", "127.0.0.1:%d" % PX.admin_port,
                            "--json"], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        doc = json.loads(p.stdout)
        self.assertEqual({n["name"] for n in doc["nodes"]}, {"primary", "replica1", "replica2"})

    def test_unreachable(self):
        port = cl.free_port()
        p = subprocess.run([PX.binary, "status", "--admin", "127.0.0.1:%d" % port],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot connect", p.stderr)
        p = subprocess.run([PX.binary, "status", "--bogus"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)


# ---- reload -------------------------------------------------------------------------------
def write_config(px, node_names):
    """Rewrite px's configuration file with only the nodes named."""
    text = cl.config_yaml(CLUSTER, px.port, px.admin_port, px.auth_method,
                          ADMIN_YAML + px.extra_yaml[len(ADMIN_YAML):])
    out = []
    for line in text.splitlines():
        m = re.match(r"\s+- \{name: (\w+), host:", line)
        if m and m.group(1) not in node_names:
            continue
        out.append(line)
    with open(px.config_path, "w") as f:
        f.write("\n".join(out) + "\n")


def wait_for(pred, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def read_log(px):
    with open(px.log_path) as f:
        return f.read()


class LogFormatTest(Base):
    def test_json_lines_and_a_reload_back_to_text(self):
        px = start_pgsteer("log_format: json\n")
        psql(px, "select 1")
        bad = cl.run_psql(px.port, "select 1", password="wrong", check=False,
                          bindir=CLUSTER.bindir)
        self.assertNotEqual(bad.returncode, 0)
        self.assertEqual(dict(rows(admin_psql(px, "SHOW CONFIG").stdout))["log_format"][:4],
                         "json")
        wait_for(lambda: "password authentication failed" in read_log(px),
                 what="the failed login in the log")
        docs = [json.loads(line) for line in read_log(px).splitlines()]  # every line is one JSON object
        for d in docs:
            self.assertEqual(sorted(d), ["level", "message", "time"])
            self.assertIn(d["level"], ("debug", "info", "warning", "error"))
            self.assertRegex(d["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertTrue(any(d["message"].startswith("pgsteer listening on") for d in docs))
        self.assertTrue(any('password authentication failed for user "app"' in d["message"]
                            for d in docs), docs)
        # a reload back to text: the lines after it are text again
        with open(px.config_path) as f:
            text = f.read()
        with open(px.config_path, "w") as f:
            f.write(text.replace("log_format: json", "log_format: text"))
        px.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(not l.startswith("{") for l in read_log(px).splitlines()),
                 what="a text line after the reload")
        self.assertEqual(dict(rows(admin_psql(px, "SHOW CONFIG").stdout))["log_format"][:4],
                         "text")


class ReloadTest(Base):
    @classmethod
    def setUpClass(cls):
        # Per-statement balancing, so that one session shows every replica that takes reads.
        cls.px = start_pgsteer(extra_yaml="read_balance: statement\n", name="admin-reload")

    @classmethod
    def tearDownClass(cls):
        cls.px.stop()

    def reads_seen(self, conn, n=12):
        return {self.port_of(conn) for _ in range(n)}

    def test_reload_adds_a_replica_without_dropping_clients(self):
        px = self.px
        r1, r2 = CLUSTER.replica_ports
        c = self.connect(px)
        tx = self.connect(px, autocommit=False)
        tcur = tx.cursor()
        tcur.execute("insert into admin_t (v) values (100) returning id")  # open transaction
        # Down to one replica (SIGHUP).
        write_config(px, {"primary", "replica1"})
        px.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: {n["name"] for n in status(px)["nodes"]} == {"primary", "replica1"},
                 what="replica2 dropped")
        self.assertEqual(self.reads_seen(c), {r1})
        # Back to two (POST /reload): the new replica gets reads once the monitor saw it.
        write_config(px, {"primary", "replica1", "replica2"})
        code, _, body = http(px, "/reload", method="POST")
        self.assertEqual(code, 200, body)
        wait_for(lambda: node(status(px), "replica2")["eligible"], what="replica2 eligible")
        self.assertEqual(self.reads_seen(c), {r1, r2})
        # The sessions connected all along still work, the transaction commits.
        tcur.execute("select inet_server_port()")
        self.assertEqual(tcur.fetchone()[0], CLUSTER.primary_port)
        tx.commit()
        self.assertEqual(self.port_of(c) in (r1, r2), True)
        st = status(px)
        self.assertGreaterEqual(st["reloads"]["success"], 2)
        self.assertIn("configuration reloaded", px.log_text())
        # New clients are served too.
        self.assertEqual(psql(px, "select 7").stdout.strip(), "7")

    def test_reload_of_write_functions_reclassifies_a_repeated_statement(self):
        # pgsteer keeps the class of a client's recent statement texts; a reload that makes a
        # function a write function must change where the same text goes next time.
        px = self.px
        c = self.connect(px)
        cur = c.cursor()
        sql = "select lower('X'), inet_server_port()"
        for _ in range(3):
            cur.execute(sql)
            self.assertIn(cur.fetchone()[1], CLUSTER.replica_ports)
        before = status(px)["reloads"]["success"]
        orig = px.extra_yaml
        px.extra_yaml = orig + "write_functions: [lower]\n"
        try:
            write_config(px, {"primary", "replica1", "replica2"})
            px.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: status(px)["reloads"]["success"] > before, what="reload")
            for _ in range(3):
                cur.execute(sql)
                self.assertEqual(cur.fetchone()[1], CLUSTER.primary_port)
        finally:
            px.extra_yaml = orig
            write_config(px, {"primary", "replica1", "replica2"})
            px.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: status(px)["reloads"]["success"] > before + 1, what="reload back")
        # A read-your-writes wait may follow the writes above; then reads leave the primary.
        wait_for(lambda: (cur.execute(sql), cur.fetchone()[1])[1] in CLUSTER.replica_ports,
                 what="reads on replicas again")

    def test_broken_reload_changes_nothing(self):
        px = self.px
        write_config(px, {"primary", "replica1", "replica2"})
        before = status(px)
        with open(px.config_path) as f:
            good = f.read()
        def restore():
            with open(px.config_path, "w") as f:
                f.write(good)
        self.addCleanup(restore)
        with open(px.config_path, "w") as f:
            f.write(good.replace("nodes:", "nodse:") + "workers: many\n")
        c = self.connect(px)
        self.port_of(c)
        px.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: status(px)["reloads"]["failure"] > before["reloads"]["failure"],
                 what="reload failure counted")
        log = px.log_text()
        self.assertIn("reload failed", log)
        self.assertIn("unknown key 'nodse'", log)
        self.assertIn("workers", log)
        code, _, body = http(px, "/reload", method="POST")
        self.assertEqual(code, 500)
        self.assertIn("nodse", body)
        p = admin_psql(px, "RELOAD", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nodse", p.stderr)
        after = status(px)
        self.assertEqual([(n["name"], n["role"]) for n in after["nodes"]],
                         [(n["name"], n["role"]) for n in before["nodes"]])
        self.assertEqual(after["reloads"]["success"], before["reloads"]["success"])
        self.assertTrue(px.alive())
        self.assertIn(self.port_of(c), CLUSTER.replica_ports)
        self.assertEqual(psql(px, "select 8").stdout.strip(), "8")


# ---- shutdown -----------------------------------------------------------------------------
class ShutdownTest(Base):
    def test_sigterm_lets_an_open_transaction_commit(self):
        px = start_pgsteer(extra_yaml="shutdown_timeout_ms: 10000\n", name="admin-term")
        try:
            idle = self.connect(px)
            self.port_of(idle)
            tx = self.connect(px, autocommit=False)
            cur = tx.cursor()
            cur.execute("insert into admin_t (v) values (4242)")
            px.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            self.assertTrue(px.alive(), "pgsteer exited with a transaction open")
            # No new client connections; readiness fails while draining.
            with self.assertRaises(psycopg2.OperationalError):
                psycopg2.connect(px.dsn(connect_timeout=2)).close()
            code, _, body = http(px, "/readyz")
            self.assertEqual(code, 503)
            self.assertIn("shutting down", body)
            # The idle session was closed; the transaction goes on and commits.
            with self.assertRaises(psycopg2.Error):
                self.port_of(idle)
            cur.execute("insert into admin_t (v) values (4243)")
            tx.commit()
            self.assertEqual(px.proc.wait(10), 0)
            got = CLUSTER.psql(CLUSTER.primary_port,
                               "select count(*) from admin_t where v in (4242, 4243)")
            self.assertEqual(got, "2")
        finally:
            px.stop()

    def test_sigterm_timeout_closes_remaining_sessions(self):
        px = start_pgsteer(extra_yaml="shutdown_timeout_ms: 500\n", name="admin-term2")
        try:
            tx = self.connect(px, autocommit=False)
            tx.cursor().execute("insert into admin_t (v) values (1)")
            t0 = time.monotonic()
            px.proc.send_signal(signal.SIGTERM)
            self.assertEqual(px.proc.wait(10), 0)
            self.assertLess(time.monotonic() - t0, 5)
        finally:
            px.stop()

    def test_sigint_closes_at_once(self):
        px = start_pgsteer(name="admin-int")
        try:
            tx = self.connect(px, autocommit=False)
            tx.cursor().execute("insert into admin_t (v) values (1)")
            px.proc.send_signal(signal.SIGINT)
            self.assertEqual(px.proc.wait(5), 0)
        finally:
            px.stop()


# ---- several workers (workers: 3) -------------------------------------------------------------
class WorkersTest(Base):
    """Three event-loop workers share one port (SO_REUSEPORT): clients spread evenly over them, and
    the admin interface, PAUSE/RESUME, cancel requests, the client limit and shutdown see the
    process as one."""

    N = 24

    def test_workers_act_as_one_proxy(self):
        px = start_pgsteer(extra_yaml="workers: 3\nmax_client_conn: %d\n" % (self.N + 6),
                           name="admin-workers")
        try:
            self.assertEqual(status(px)["workers"], 3)
            conns = [self.connect(px) for _ in range(self.N)]
            before = status(px)
            for c in conns:
                self.port_of(c)
                c.cursor().execute("insert into admin_t (v) values (7)")
            after = status(px)
            d = lambda f: f(after) - f(before)  # noqa: E731
            self.assertEqual(after["client_connections"], self.N)
            self.assertEqual(d(lambda s: s["queries"]["reads"]), self.N)
            self.assertEqual(d(lambda s: s["queries"]["writes"]), self.N)
            self.assertEqual(d(lambda s: node(s, "primary")["writes"]), self.N)
            self.assertEqual(d(lambda s: node(s, "replica1")["reads"] +
                               node(s, "replica2")["reads"]), self.N)

            # The console lists every worker's clients; a client id names its worker (id % 3).
            ids = [int(r[0]) for r in rows(admin_psql(px, "SHOW CLIENTS").stdout)]
            self.assertEqual(len(ids), self.N)
            self.assertEqual(len(set(ids)), self.N)
            # Each new connection goes to the worker with the fewest clients, wherever the
            # kernel's hash put it: 8 each (rather than, say, 11, 8 and 5).
            per_worker = [sum(1 for i in ids if i % 3 == w) for w in range(3)]
            self.assertEqual(per_worker, [8, 8, 8], ids)
            servers = rows(admin_psql(px, "SHOW SERVERS").stdout)
            self.assertEqual({int(r[0]) for r in servers}, set(ids))
            stats = dict(r[:2] for r in rows(admin_psql(px, "SHOW STATS").stdout))
            self.assertEqual(stats["workers"], "3")
            self.assertEqual(stats["client_connections"], str(self.N))

            # PAUSE holds statements on every worker; RESUME lets all of them go.
            admin_psql(px, "PAUSE")
            done, errors = [], []

            def run(c):
                try:
                    self.port_of(c)
                    done.append(c)
                except Exception as e:  # reported below
                    errors.append(e)
            threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in conns]
            for t in threads:
                t.start()
            time.sleep(0.8)
            held = len(done)
            admin_psql(px, "RESUME")
            for t in threads:
                t.join(10)
            self.assertEqual(held, 0, "PAUSE did not hold every worker's clients")
            self.assertEqual(errors, [])
            self.assertEqual(len(done), self.N)

            # Cancel requests arrive on any worker and reach the one that owns the client.
            import psycopg2.errors
            for c in conns[:6]:
                timer = threading.Timer(0.3, c.cancel)
                timer.start()
                t0 = time.monotonic()
                with self.assertRaises(psycopg2.errors.QueryCanceled):
                    c.cursor().execute("select pg_sleep(10)")
                timer.join()
                self.assertLess(time.monotonic() - t0, 5)

            # max_client_conn counts the clients of all workers.
            wait_for(lambda: status(px)["client_connections"] == self.N, what="cancel conns gone")
            extra = [self.connect(px) for _ in range(6)]
            with self.assertRaises(psycopg2.OperationalError) as cm:
                psycopg2.connect(px.dsn(sslmode="disable"))
            self.assertIn("too many client connections", str(cm.exception))
            for c in extra + conns:
                c.close()

            # SIGTERM: every worker drains, the process exits cleanly.
            tx = self.connect(px, autocommit=False)
            tx.cursor().execute("insert into admin_t (v) values (4244)")
            px.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            tx.cursor().execute("insert into admin_t (v) values (4245)")
            tx.commit()
            self.assertEqual(px.proc.wait(10), 0)
            self.assertIn("pgsteer stopped", px.log_text())
            got = CLUSTER.psql(CLUSTER.primary_port,
                               "select count(*) from admin_t where v in (4244, 4245)")
            self.assertEqual(got, "2")
        finally:
            px.stop()

    def test_sessions_spread_evenly_over_replicas_across_workers(self):
        # read_balance: session (the default): each new session takes the next replica of one
        # rotation for the whole process, whichever worker the kernel gave it to.
        px = start_pgsteer(extra_yaml="workers: 3\n", name="admin-workers-spread")
        try:
            seen = []
            for _ in range(6):
                c = psycopg2.connect(px.dsn())
                c.autocommit = True
                seen.append(self.port_of(c))
                c.close()
            r1, r2 = CLUSTER.replica_ports
            self.assertEqual(sorted(seen.count(p) for p in (r1, r2)), [3, 3], seen)
        finally:
            px.stop()

    @staticmethod
    def threads(px):
        """{thread name: sorted list of the CPUs it may run on} for px's main thread (as
        "pgsteer") and its named threads. Other threads (a sanitizer's) keep the process name
        and are left out."""
        out = {}
        for tid in os.listdir("/proc/%d/task" % px.proc.pid):
            try:
                with open("/proc/%d/task/%s/comm" % (px.proc.pid, tid)) as f:
                    name = f.read().strip()
                if int(tid) == px.proc.pid or name.startswith("pgsteer-"):
                    out[name] = sorted(os.sched_getaffinity(int(tid)))
            except OSError:
                pass
        return out

    def test_second_instance_cannot_share_the_port(self):
        # The workers bind with SO_REUSEPORT, which would let another pgsteer of the same user
        # bind the same port and take half of the new connections: it must refuse to start.
        px = start_pgsteer(extra_yaml="workers: 2\n", name="admin-first")
        try:
            second = cl.Pgsteer(CLUSTER, extra_yaml=ADMIN_YAML + "workers: 2\n",
                                name="admin-second")
            second.fixed_port = px.port
            # start() sees the first one's port open and may return: the second must exit.
            try:
                second.start()
            except cl.ClusterError:
                pass
            try:
                self.assertNotEqual(second.proc.wait(timeout=15), 0)
            finally:
                second.stop()
            self.assertIn("cannot listen on 127.0.0.1:%d: address already in use" % px.port,
                          second.log_text())
            self.assertFalse(second.alive())
            self.assertIn(self.port_of(self.connect(px)), CLUSTER.replica_ports)
        finally:
            px.stop()

    def test_thread_names_and_cpu_affinity(self):
        cpus = sorted(os.sched_getaffinity(0))
        # Without cpu_affinity (the default) every thread may run anywhere; threads are named.
        px = start_pgsteer(extra_yaml="workers: 3\n", name="admin-unpinned")
        try:
            self.assertEqual(self.threads(px), {"pgsteer": cpus, "pgsteer-w1": cpus,
                                                "pgsteer-w2": cpus, "pgsteer-monitor": cpus})
            self.assertEqual(dict(rows(admin_psql(px, "SHOW CONFIG").stdout))["cpu_affinity"],
                             "off")
        finally:
            px.stop()
        # cpu_affinity: auto pins worker i to the i-th allowed CPU (wrapping around); the
        # monitor thread, started from worker 0's thread, is not pinned, not even after a
        # reload restarts it.
        px = start_pgsteer(extra_yaml="workers: 3\ncpu_affinity: auto\n", name="admin-pinned")
        try:
            want = {"pgsteer": [cpus[0]], "pgsteer-w1": [cpus[1 % len(cpus)]],
                    "pgsteer-w2": [cpus[2 % len(cpus)]], "pgsteer-monitor": cpus}
            self.assertEqual(self.threads(px), want)
            for i in range(3):
                self.assertIn("cpu_affinity: worker %d runs on CPU %d" % (i, want[
                    "pgsteer" if i == 0 else "pgsteer-w%d" % i][0]), px.log_text())
            self.assertEqual(dict(rows(admin_psql(px, "SHOW CONFIG").stdout))["cpu_affinity"],
                             "auto")
            c = self.connect(px)
            for _ in range(6):
                self.port_of(c)
            # A reload that changes the monitor's settings starts a new monitor thread; one
            # that changes cpu_affinity says it waits for a restart.
            with open(px.config_path) as f:
                text = f.read()
            text = text.replace("cpu_affinity: auto", "cpu_affinity: off")
            text = text.replace("workers: 3", "workers: 2\nunix_socket_dir: %s" % CLUSTER.tmpdir)
            text = text.replace("interval_ms: 100", "interval_ms: 120")
            with open(px.config_path, "w") as f:
                f.write(text)
            warning = "cpu_affinity keep their old values until a restart"
            reloads = status(px)["reloads"]["success"]
            px.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: status(px)["reloads"]["success"] == reloads + 1, what="reload")
            self.assertEqual(px.log_text().count(warning), 1)
            wait_for(lambda: self.threads(px) == want, what="threads after the reload")
            cfg = dict(rows(admin_psql(px, "SHOW CONFIG").stdout))
            self.assertEqual((cfg["cpu_affinity"], cfg["workers"], cfg["unix_socket_dir"]),
                             ("auto", "3", "(none)"), "the values in use, not the file's")
            # The file still differs from what runs: a second reload says so again.
            px.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: status(px)["reloads"]["success"] == reloads + 2, what="reload")
            self.assertEqual(px.log_text().count(warning), 2)
            self.port_of(c)
            c.close()
        finally:
            px.stop()

    def test_default_workers_follow_a_cgroup_cpu_limit(self):
        # A container's CPU limit leaves every CPU in the affinity mask; without `workers`,
        # pgsteer starts no more workers than the limit allows (rounded up).
        if len(os.sched_getaffinity(0)) < 2:
            self.skipTest("needs 2 CPUs")
        name = "pgsteer-test-%d" % os.getpid()
        if os.path.exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
            d = os.path.join("/sys/fs/cgroup/cpu", name)
            files = {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}
        elif "cpu" in open_text("/sys/fs/cgroup/cgroup.subtree_control").split():
            d = os.path.join("/sys/fs/cgroup", name)
            files = {"cpu.max": "100000 100000"}
        else:
            self.skipTest("no cgroup cpu controller to use")
        try:
            os.mkdir(d)
            for f, v in files.items():
                with open(os.path.join(d, f), "w") as fh:
                    fh.write(v)
        except OSError as e:
            self.skipTest("cannot make a cgroup: %s" % e)
        try:
            px = cl.Pgsteer(CLUSTER, extra_yaml=ADMIN_YAML, name="admin-cgroup")

            def enter():
                with open(os.path.join(d, "cgroup.procs"), "w") as fh:
                    fh.write(str(os.getpid()))
            px.preexec_fn = enter
            px.start()
            try:
                self.assertEqual(status(px)["workers"], 1)
                self.assertIn("workers: 1, for a cgroup CPU limit of 1.00 CPUs", px.log_text())
                self.assertEqual(
                    dict(rows(admin_psql(px, "SHOW CONFIG").stdout))["workers"],
                    "1 (default)")
                c = self.connect(px)
                self.port_of(c)
                c.close()
            finally:
                px.stop()
        finally:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.1)

    def test_admin_reloads_and_pause_while_workers_are_busy(self):
        # Clients connect, run a read and a write and leave, as fast as pgbench -C can, on
        # three workers, while the admin side lists them, scrapes counters, reloads and pauses:
        # every cross-worker call happens under load. No transaction may fail.
        px = start_pgsteer(extra_yaml="workers: 3\n", name="admin-workers-busy")
        try:
            script = os.path.join(CLUSTER.tmpdir, "busy.sql")
            with open(script, "w") as f:
                f.write("\\set v random(1, 1000000)\nselect :v;\n"
                        "insert into admin_t (v) values (:v);\n")
            env = dict(os.environ, PGPASSWORD=cl.APP_PASSWORD)
            bench = subprocess.Popen(
                [os.path.join(CLUSTER.bindir, "pgbench"), "-n", "-C", "-c", "8", "-j", "2",
                 "-T", "4", "-f", script, "-h", "127.0.0.1", "-p", str(px.port), "-U",
                 cl.APP_USER, cl.APP_DB], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
            reloads0 = status(px)["reloads"]["success"]
            deadline = time.monotonic() + 3.5
            rounds = 0
            while time.monotonic() < deadline:
                self.assertEqual(status(px)["workers"], 3)
                metrics(px)
                admin_psql(px, "SHOW CLIENTS")
                admin_psql(px, "SHOW SERVERS")
                if rounds % 3 == 0:
                    px.proc.send_signal(signal.SIGHUP)
                if rounds == 4:
                    admin_psql(px, "PAUSE")
                    time.sleep(0.1)
                    admin_psql(px, "RESUME")
                rounds += 1
            out = bench.communicate(timeout=60)[0]
            self.assertEqual(bench.returncode, 0, out)
            m = re.search(r"number of failed transactions: (\d+)", out)
            self.assertTrue(m is None or m.group(1) == "0", out)
            done = int(re.search(r"actually processed: (\d+)", out).group(1))
            self.assertGreater(done, 50, out)
            wait_for(lambda: status(px)["reloads"]["success"] > reloads0, what="a reload")
            self.assertTrue(px.alive())
            wait_for(lambda: status(px)["client_connections"] == 0, what="clients gone")
            self.assertEqual(rows(admin_psql(px, "SHOW CLIENTS").stdout), [])
        finally:
            px.stop()

# ---- readiness follows the primary (last: stops and restarts the primary) -----------------
class BusyPollTest(Base):
    def stats(self, px):
        return dict(r[:2] for r in rows(admin_psql(px, "SHOW STATS").stdout))

    def cpu_seconds(self, px):
        with open("/proc/%d/stat" % px.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def test_off_by_default(self):
        cur = self.connect(PX).cursor()
        for _ in range(50):
            cur.execute("select 1")
        config = dict(r[:2] for r in rows(admin_psql(PX, "SHOW CONFIG").stdout))
        self.assertEqual(config["busy_poll_us"], "0")
        stats = self.stats(PX)
        self.assertEqual(stats["busy_poll_reads"], "0")
        self.assertEqual(stats["busy_poll_sleeps"], "0")
        self.assertEqual(sample(metrics(PX)[0], "pgsteer_busy_poll_reads_total"), 0)

    def test_polls_after_input_and_sleeps_when_idle(self):
        px = start_pgsteer(extra_yaml="busy_poll_us: 2000\n", name="admin-busy-poll")
        try:
            config = dict(r[:2] for r in rows(admin_psql(px, "SHOW CONFIG").stdout))
            self.assertEqual(config["busy_poll_us"], "2000")
            cur = self.connect(px).cursor()
            # Answers arrive while the worker polls: the server answers a query, and the
            # next query follows the answer, well within 2 ms.
            for i in range(300):
                cur.execute("select %s::int, inet_server_port()", (i,))
                v, port = cur.fetchone()
                self.assertEqual(v, i)
                self.assertIn(port, CLUSTER.replica_ports)
            cur.execute("insert into admin_t (v) values (1) returning v")
            self.assertEqual(cur.fetchone()[0], 1)
            stats = self.stats(px)
            self.assertGreater(int(stats["busy_poll_reads"]), 0, stats)
            # With no input the polling ends and the worker sleeps: the process uses almost
            # no CPU while idle (a worker that kept polling would use a whole second).
            wait_for(lambda: int(self.stats(px)["busy_poll_sleeps"]) > 0, what="a sleep")
            time.sleep(0.2)
            t0 = self.cpu_seconds(px)
            time.sleep(1.0)
            self.assertLess(self.cpu_seconds(px) - t0, 0.3)
            ms = metrics(px)[0]
            self.assertGreater(sample(ms, "pgsteer_busy_poll_reads_total"), 0)
            self.assertGreater(sample(ms, "pgsteer_busy_poll_sleeps_total"), 0)

            # A reload turns it off: no more polling reads.
            before = status(px)["reloads"]["success"]
            orig = px.extra_yaml
            px.extra_yaml = orig.replace("busy_poll_us: 2000", "busy_poll_us: 0")
            write_config(px, {"primary", "replica1", "replica2"})
            px.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: status(px)["reloads"]["success"] > before, what="reload")
            px.extra_yaml = orig
            config = dict(r[:2] for r in rows(admin_psql(px, "SHOW CONFIG").stdout))
            self.assertEqual(config["busy_poll_us"], "0")
            time.sleep(0.1)  # any polling begun before the reload ends within 2 ms
            reads = int(self.stats(px)["busy_poll_reads"])
            for i in range(100):
                cur.execute("select %s::int", (i,))
                self.assertEqual(cur.fetchone()[0], i)
            self.assertEqual(int(self.stats(px)["busy_poll_reads"]), reads)
        finally:
            px.stop()


class ZReadinessTest(Base):
    def test_readyz_follows_the_primary(self):
        code, _, body = http(PX, "/readyz")
        self.assertEqual(code, 200, body)
        CLUSTER.stop_node(0)
        try:
            def not_ready():
                code, _, body = http(PX, "/readyz")
                return (code, body) if code == 503 else None
            code, body = wait_for(not_ready, timeout=15, what="/readyz 503")
            self.assertIn("primary", body)
            self.assertEqual(http(PX, "/healthz")[0], 200)
            ms, _, _ = metrics(PX)
            self.assertEqual(sample(ms, "pgsteer_primary_up"), 0)
            self.assertEqual(sample(ms, "pgsteer_node_up", node="primary"), 0)
        finally:
            CLUSTER.start_node(0)
        wait_for(lambda: http(PX, "/readyz")[0] == 200, timeout=15, what="/readyz 200 again")


if __name__ == "__main__":
    unittest.main()
