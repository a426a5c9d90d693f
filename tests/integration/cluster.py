# SPDX-License-Identifier: MIT
"""A throw-away PostgreSQL primary with streaming replicas, and pgsteer in front of it.

Used by the integration tests and the demo. Standard library only. Everything lives in one
temporary directory that is removed on stop, on exceptions, at interpreter exit and on
SIGTERM/SIGHUP/SIGINT. When run as root, PostgreSQL runs as the `postgres` user.

    with Cluster(replicas=2) as c, Pgsteer(c) as px:
        c.psql(c.ports[0], "create table t (x int)")
        psycopg2.connect(px.dsn())
"""

import atexit
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

APP_USER = "app"
APP_PASSWORD = "secret"
APP_DB = "app"


class ClusterError(RuntimeError):
    pass


def default_tmp_parent():
    """$PGSTEER_TEST_TMPDIR, else /dev/shm when it is large (a tmpfs: PostgreSQL creates
    thousands of small files and a disk makes startup four times slower), else /tmp. Either
    is world-traversable, which matters when the servers run as `postgres`."""
    env = os.environ.get("PGSTEER_TEST_TMPDIR")
    if env:
        return env
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 1 << 30 and os.access("/dev/shm", os.W_OK):
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir() if os.geteuid() != 0 else "/tmp"


def pg_bindir():
    """PostgreSQL's bindir: $PG_BINDIR, else /usr/lib/postgresql/15/bin, else the newest
    /usr/lib/postgresql/*/bin with a server, else `pg_config --bindir`."""
    env = os.environ.get("PG_BINDIR")
    if env and os.access(os.path.join(env, "postgres"), os.X_OK):
        return env
    base = "/usr/lib/postgresql"
    if os.access(os.path.join(base, "15", "bin", "postgres"), os.X_OK):
        return os.path.join(base, "15", "bin")
    found = []
    if os.path.isdir(base):
        for v in os.listdir(base):
            d = os.path.join(base, v, "bin")
            if os.access(os.path.join(d, "postgres"), os.X_OK):
                try:
                    key = tuple(int(p) for p in v.split("."))
                except ValueError:
                    continue
                found.append((key, d))
    if found:
        return max(found)[1]
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        d = out.stdout.strip()
        if os.access(os.path.join(d, "postgres"), os.X_OK):
            return d
    except (OSError, subprocess.CalledProcessError):
        pass
    raise ClusterError("no PostgreSQL server found; run scripts/deps.sh test (or set PG_BINDIR)")


def free_port(exclude=()):
    """A TCP port on 127.0.0.1 that nobody listens on right now (the kernel picks it)."""
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in exclude:
            return port


def port_open(port, host="127.0.0.1", timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    return "\n".join(data.splitlines()[-lines:])


def run_psql(port, sql, user=APP_USER, db=APP_DB, host="127.0.0.1", password=None, timeout=60,
             check=True, extra_args=(), bindir=None):
    """Run psql once with every string in `sql` (a str or a list) as its own -c, so each is a
    separate Query message. Returns the CompletedProcess (text mode). With check, a non-zero
    exit raises ClusterError carrying stderr."""
    bindir = bindir or pg_bindir()
    sqls = [sql] if isinstance(sql, str) else list(sql)
    # -w: never prompt for a password (psql would read it from the terminal and hang).
    args = [os.path.join(bindir, "psql"), "-X", "-w", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", host, "-p", str(port), "-U", user, "-d", db]
    args += list(extra_args)
    for s in sqls:
        args += ["-c", s]
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    env.pop("PGSERVICE", None)
    if password is not None:
        env["PGPASSWORD"] = password
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    env["PGAPPNAME"] = "pgsteer-tests"
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise ClusterError("psql -p %s failed (%d): %s\n  sql: %s"
                           % (port, p.returncode, p.stderr.strip(), " | ".join(sqls)))
    return p


# ---- process-wide cleanup ----------------------------------------------------------------
# Live clusters and pgsteer instances, so that atexit and signal handlers can stop them.
_live = []
_live_lock = threading.RLock()
_handlers_installed = False


def openssl(*args):
    """Runs the openssl command; raises when it fails."""
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def make_crl(d, ca, out, revoke=()):
    """A CRL of CA `ca` (files ca.crt and ca.key in d) revoking the certificates `revoke`
    (names of .crt files in d), written to d/out."""
    db = os.path.join(d, "%s-%s.db" % (ca, out))
    os.makedirs(db)
    open(os.path.join(db, "index.txt"), "w").close()
    cnf = os.path.join(db, "ca.cnf")
    with open(cnf, "w") as f:
        f.write("[ca]\ndefault_ca = this\n[this]\ndatabase = %s\ndefault_md = sha256\n"
                "default_crl_days = 2\n" % os.path.join(db, "index.txt"))
    keys = ["-config", cnf, "-keyfile", os.path.join(d, ca + ".key"),
            "-cert", os.path.join(d, ca + ".crt")]
    for name in revoke:
        openssl("ca", *keys, "-revoke", os.path.join(d, name + ".crt"))
    openssl("ca", *keys, "-gencrl", "-out", os.path.join(d, out))


def make_certs(d):
    """A test CA with a server certificate for IP 127.0.0.1 and client certificates (CN app,
    CN report), another CA with a client certificate (CN stranger), and CRLs: revoked.crl
    (the test CA's, revoking report and server), empty.crl (the test CA's, revoking
    nothing) and other-ca.crl (the other CA's, revoking nothing)."""
    os.makedirs(d)
    ext = os.path.join(d, "san.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName = IP:127.0.0.1\n")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=pgsteer test %s" % ca, "-keyout", os.path.join(d, ca + ".key"),
                "-out", os.path.join(d, ca + ".crt"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=pgsteer test node",
            "-keyout", os.path.join(d, "server.key"), "-out", os.path.join(d, "server.csr"))
    openssl("x509", "-req", "-in", os.path.join(d, "server.csr"), "-days", "2",
            "-CA", os.path.join(d, "ca.crt"), "-CAkey", os.path.join(d, "ca.key"),
            "-CAcreateserial", "-extfile", ext, "-out", os.path.join(d, "server.crt"))
    for name, ca in (("app", "ca"), ("report", "ca"), ("stranger", "other-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % name,
                "-keyout", os.path.join(d, name + ".key"), "-out", os.path.join(d, name + ".csr"))
        openssl("x509", "-req", "-in", os.path.join(d, name + ".csr"), "-days", "2",
                "-CA", os.path.join(d, ca + ".crt"), "-CAkey", os.path.join(d, ca + ".key"),
                "-CAcreateserial", "-out", os.path.join(d, name + ".crt"))
    for name in ("server.key", "app.key", "report.key", "stranger.key"):
        os.chmod(os.path.join(d, name), 0o600)
    make_crl(d, "ca", "revoked.crl", revoke=("report", "server"))
    make_crl(d, "ca", "empty.crl")
    make_crl(d, "other-ca", "other-ca.crl")
    if os.geteuid() == 0:  # the server runs as postgres and must own its key (libpq, as root,
        for name in ("server.key", "server.crt"):  # wants the client keys root's)
            shutil.chown(os.path.join(d, name), "postgres", "postgres")
    return d


def _register(obj):
    global _handlers_installed
    with _live_lock:
        _live.append(obj)
        if _handlers_installed:
            return
        _handlers_installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            prev = signal.getsignal(sig)
            if prev in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)
        # SIGINT stays Python's KeyboardInterrupt: it unwinds through the context managers.


def _unregister(obj):
    with _live_lock:
        if obj in _live:
            _live.remove(obj)


def cleanup_all():
    """Stop every live pgsteer, then every live cluster (newest first)."""
    with _live_lock:
        objs = list(reversed(_live))
    for o in objs:
        if isinstance(o, Pgsteer):
            o.stop()
    for o in objs:
        if isinstance(o, Cluster):
            o.stop()


def _on_signal(signum, frame):
    cleanup_all()
    # Die of the same signal, so the parent sees why.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# ---- the cluster ---------------------------------------------------------------------------
class Node:
    def __init__(self, name, role, port, datadir, log):
        self.name = name
        self.role = role
        self.port = port
        self.datadir = datadir
        self.log = log
        self.running = False
        self.starting = False  # pg_ctl start in progress

    def __repr__(self):
        return "<Node %s %s :%d%s>" % (self.name, self.role, self.port,
                                       "" if self.running else " stopped")


class Cluster:
    """A primary and `replicas` streaming replicas on free loopback ports.

    Attributes after start(): tmpdir, nodes (list of Node, primary first), ports (primary
    first), primary_port, replica_ports, bindir, start_seconds."""

    def __init__(self, replicas=2, tmp_parent=None):
        self.nreplicas = replicas
        self.tmp_parent = tmp_parent or default_tmp_parent()
        self.bindir = pg_bindir()
        self.tmpdir = None
        self.nodes = []
        self.start_seconds = None
        self._stopped = False
        self._as_postgres = os.geteuid() == 0
        self._pw = None
        if self._as_postgres:
            try:
                self._pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterError("running as root, PostgreSQL must run as the `postgres` user, "
                                   "which does not exist (install postgresql, or run as "
                                   "another user)") from None

    # -- context manager
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def ports(self):
        return [n.port for n in self.nodes]

    @property
    def primary_port(self):
        return self.nodes[0].port

    @property
    def replica_ports(self):
        return [n.port for n in self.nodes[1:]]

    @property
    def sockdir(self):
        return self.tmpdir

    # -- running things as the server's user
    def _spawn(self, args, logname="commands.log"):
        """Start a PostgreSQL program (as `postgres` when we are root). Its output is appended
        to tmpdir/<logname>, never to a pipe: pg_ctl's postmaster would hold a pipe open.
        Returns (Popen, log path, offset of this command's output in the log)."""
        kw = {}
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        env["LC_ALL"] = "C"
        if self._as_postgres:
            kw.update(user=self._pw.pw_uid, group=self._pw.pw_gid, extra_groups=[])
            env["HOME"] = self.tmpdir
            env["USER"] = env["LOGNAME"] = "postgres"
        cmdlog = os.path.join(self.tmpdir, logname)
        with open(cmdlog, "ab") as out:
            out.write(("$ %s\n" % " ".join(args)).encode())
            out.flush()
            start = out.tell()
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 cwd=self.tmpdir, env=env, **kw)
        return p, cmdlog, start

    def _finish(self, spawned, check=True, timeout=120):
        """Wait for a _spawn()ed program; with check, a non-zero exit raises ClusterError
        with its output."""
        p, cmdlog, start = spawned
        try:
            rc = p.wait(timeout)
        except BaseException:
            p.kill()
            p.wait()
            raise
        if check and rc != 0:
            with open(cmdlog, "rb") as f:
                f.seek(start)
                msg = f.read().decode("utf-8", "replace")[-3000:]
            raise ClusterError("%s failed (%d):\n%s" % (os.path.basename(p.args[0]), rc, msg))
        return rc

    def _run(self, args, check=True, timeout=120):
        return self._finish(self._spawn(args), check=check, timeout=timeout)

    def _bin(self, name):
        return os.path.join(self.bindir, name)

    def _chown(self, path):
        if self._as_postgres:
            os.chown(path, self._pw.pw_uid, self._pw.pw_gid)

    def psql(self, port, sql, user=APP_USER, db=APP_DB, timeout=60):
        """Run `sql` (str or list of statements, each its own Query) directly on the node at
        `port` over the Unix socket (trust). Returns stdout without the trailing newline."""
        p = run_psql(port, sql, user=user, db=db, host=self.sockdir, timeout=timeout,
                     bindir=self.bindir)
        return p.stdout.rstrip("\n")

    def _psql_ok(self, port, sql, user="postgres", db="postgres"):
        try:
            return run_psql(port, sql, user=user, db=db, host=self.sockdir, timeout=10,
                            check=False, bindir=self.bindir)
        except subprocess.TimeoutExpired:
            return None

    # -- lifecycle
    def start(self):
        t0 = time.monotonic()
        os.makedirs(self.tmp_parent, exist_ok=True)
        self.tmpdir = tempfile.mkdtemp(prefix="pgsteer-", dir=self.tmp_parent)
        _register(self)
        if self._as_postgres:
            os.chmod(self.tmpdir, 0o755)  # root's files (pgsteer config, logs) live here too
            self._chown(self.tmpdir)
        self._init_primary()
        # Base backups run in parallel: each copies the whole primary, which dominates startup.
        backups = [self._backup_replica(i) for i in range(1, self.nreplicas + 1)]
        try:
            for node, spawned in backups:
                self._finish(spawned)
        except BaseException:
            for node, spawned in backups:
                if spawned[0].poll() is None:
                    spawned[0].kill()
                    spawned[0].wait()
            raise
        for node, spawned in backups:
            self._append_conf(node)
            self._pg_ctl_start(node)
        self.wait_streaming()
        for n in self.nodes[1:]:
            self._wait_accepting(n)
        self.start_seconds = time.monotonic() - t0
        return self

    def _conf_lines(self, node):
        return [
            "",
            "# pgsteer test cluster",
            "listen_addresses = '127.0.0.1'",
            "port = %d" % node.port,
            "unix_socket_directories = '%s'" % self.tmpdir,
            "cluster_name = '%s'" % node.name,
            "wal_level = replica",
            "max_wal_senders = 10",
            "wal_keep_size = '256MB'",
            "hot_standby = on",
            "hot_standby_feedback = on",
            "wal_receiver_status_interval = 1s",
            "fsync = off",
            "synchronous_commit = on",
            "full_page_writes = off",
            "shared_buffers = 32MB",
            "max_connections = 200",
            "logging_collector = off",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "log_min_messages = warning",
            "",
        ]

    def _append_conf(self, node):
        with open(os.path.join(node.datadir, "postgresql.conf"), "a") as f:
            f.write("\n".join(self._conf_lines(node)))

    def _pg_ctl_start(self, node, attempts=5):
        """Start node, picking a new port when its port was taken meanwhile."""
        for attempt in range(attempts):
            node.starting = True
            try:
                rc = self._run([self._bin("pg_ctl"), "start", "-w", "-t", "60", "-D",
                                node.datadir, "-l", node.log], check=False)
            finally:
                node.starting = False
            if rc == 0:
                node.running = True
                return
            if "could not bind" in tail(node.log, 20) or "already in use" in tail(node.log, 20):
                node.port = free_port(exclude=self.ports)
                self._append_conf(node)
                continue
            break
        raise ClusterError("%s did not start; log %s:\n%s" % (node.name, node.log,
                                                               tail(node.log)))

    def _init_primary(self):
        d = os.path.join(self.tmpdir, "primary")
        node = Node("primary", "primary", free_port(), d, os.path.join(self.tmpdir, "primary.log"))
        self.nodes.append(node)
        self._run([self._bin("initdb"), "-D", d, "-U", "postgres", "--auth-local=trust",
                   "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "-N"])
        # Replication connections from loopback are trusted (first match wins, so prepend).
        hba = os.path.join(d, "pg_hba.conf")
        with open(hba) as f:
            body = f.read()
        with open(hba, "w") as f:
            f.write("host replication postgres 127.0.0.1/32 trust\n" + body)
        self._append_conf(node)
        self._pg_ctl_start(node)
        self.psql(node.port, ["CREATE ROLE %s LOGIN SUPERUSER PASSWORD '%s'"
                              % (APP_USER, APP_PASSWORD),
                              "CREATE DATABASE %s OWNER %s" % (APP_DB, APP_USER)],
                  user="postgres", db="postgres")

    def _backup_replica(self, i):
        """Start pg_basebackup for replica i; returns (node, spawned)."""
        d = os.path.join(self.tmpdir, "replica%d" % i)
        node = Node("replica%d" % i, "replica", free_port(exclude=self.ports), d,
                    os.path.join(self.tmpdir, "replica%d.log" % i))
        self.nodes.append(node)
        return node, self._spawn([self._bin("pg_basebackup"), "-R", "-X", "stream", "-c", "fast",
                                  "-N", "-D", d, "-h", "127.0.0.1", "-p", str(self.primary_port),
                                  "-U", "postgres"], logname="basebackup-%s.log" % node.name)

    def _wait_accepting(self, node, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self._psql_ok(node.port, "select 1")
            if p is not None and p.returncode == 0:
                return
            time.sleep(0.05)
        raise ClusterError("%s does not accept connections; log:\n%s" % (node.name,
                                                                         tail(node.log)))

    def wait_streaming(self, timeout=60):
        """Wait until every running replica streams from the primary (pg_stat_replication)."""
        want = sorted(n.name for n in self.nodes[1:] if n.running)
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            p = self._psql_ok(self.primary_port, "select application_name from "
                              "pg_stat_replication where state = 'streaming' order by 1")
            if p is not None and p.returncode == 0:
                got = sorted(p.stdout.split())
                if all(w in got for w in want):
                    return
            time.sleep(0.05)
        raise ClusterError("replicas not streaming after %ds: want %s, got %s\n%s"
                           % (timeout, want, got, "\n".join(
                               "--- %s\n%s" % (n.log, tail(n.log, 15)) for n in self.nodes)))

    def wait_replay(self, timeout=60):
        """Wait until every running replica has replayed the primary's current WAL position."""
        lsn = self.psql(self.primary_port, "select pg_current_wal_lsn()", user="postgres",
                        db="postgres")
        deadline = time.monotonic() + timeout
        for n in self.nodes[1:]:
            if not n.running:
                continue
            while True:
                p = self._psql_ok(n.port, "select pg_last_wal_replay_lsn() >= '%s'::pg_lsn" % lsn)
                if p is not None and p.returncode == 0 and p.stdout.strip() == "t":
                    break
                if time.monotonic() > deadline:
                    raise ClusterError("%s did not replay %s within %ds" % (n.name, lsn, timeout))
                time.sleep(0.02)
        return lsn

    def stop_node(self, i, mode="immediate"):
        """Stop node i (0 = primary) at once; the others keep running."""
        n = self.nodes[i]
        if n.running:
            self._run([self._bin("pg_ctl"), "stop", "-w", "-m", mode, "-D", n.datadir],
                      check=False)
            n.running = False

    def start_node(self, i):
        """Start node i again; for a replica, wait until it streams and accepts queries."""
        n = self.nodes[i]
        if n.running:
            return
        self._pg_ctl_start(n)
        if i > 0:
            self.wait_streaming()
        self._wait_accepting(n)

    def stop(self):
        """Stop every node (immediate shutdown) and delete the temporary directory. Safe to
        call more than once and from handlers."""
        # A signal arriving in the middle of this runs it again from the handler; that run
        # redoes every step (each is idempotent) and finishes the job before the process dies.
        if self._stopped:
            return
        try:
            for n in reversed(self.nodes):
                pidfile = os.path.join(n.datadir, "postmaster.pid")
                if n.starting:
                    # Interrupted inside pg_ctl start: the postmaster may not have written
                    # its pid file yet. Give it a moment so that it can be found and stopped.
                    deadline = time.monotonic() + 3
                    while not os.path.exists(pidfile) and time.monotonic() < deadline:
                        time.sleep(0.05)
                if os.path.exists(pidfile):
                    try:
                        self._run([self._bin("pg_ctl"), "stop", "-w", "-t", "20", "-m",
                                   "immediate", "-D", n.datadir], check=False, timeout=30)
                    except Exception:
                        pass
                    _kill_postmaster(n.datadir)
                n.running = False
        finally:
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            self._stopped = True
            _unregister(self)

    def logs(self, lines=20):
        return "\n".join("--- %s (%s :%d)\n%s" % (n.name, n.role, n.port, tail(n.log, lines))
                         for n in self.nodes)


def _kill_postmaster(datadir):
    """Last resort when pg_ctl could not stop a node: SIGKILL the postmaster in its pid file."""
    try:
        with open(os.path.join(datadir, "postmaster.pid")) as f:
            pid = int(f.readline().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


# ---- pgsteer -------------------------------------------------------------------------------
def pgsteer_binary():
    return os.path.abspath(os.environ.get("PGSTEER") or os.path.join(REPO_ROOT, "pgsteer"))


def config_yaml(cluster, port, admin_port, auth_method="scram-sha-256", extra_yaml="",
                users=((APP_USER, APP_PASSWORD),), monitor="{interval_ms: 100}",
                node_host="127.0.0.1", monitor_host=None):
    """The YAML pgsteer is started with (see docs/configuration.md). `node_host` is where every
    node is reached: an address, or the cluster's socket directory (cluster.sockdir);
    `monitor_host`, when given, where the monitor reaches them instead."""
    lines = [
        "listen: 127.0.0.1:%d" % port,
        "admin_listen: 127.0.0.1:%d" % admin_port,
        "auth_method: %s" % auth_method,
        "users:",
    ]
    lines += ["  - {name: %s, password: %s}" % (u, p) for u, p in users]
    lines.append("nodes:")
    for n in cluster.nodes:
        w = ", weight: 1" if n.role == "replica" else ""
        if monitor_host:
            w += ", monitor_host: %s" % monitor_host
        lines.append("  - {name: %s, host: %s, port: %d, role: %s%s}"
                     % (n.name, node_host, n.port, n.role, w))
    if monitor:
        lines.append("monitor: %s" % monitor)
    text = "\n".join(lines) + "\n"
    if extra_yaml:
        text += extra_yaml.rstrip("\n") + "\n"
    return text


class Pgsteer:
    """pgsteer in front of `cluster`, on free ports, its stderr in a log file in the
    cluster's temporary directory. Attributes: port, admin_port, log_path, config_path,
    proc. `extra_yaml` is appended to the generated configuration, so it must not repeat
    its keys (listen, admin_listen, auth_method, users, nodes, monitor); `monitor` replaces
    the monitor mapping instead."""

    _seq = 0

    def __init__(self, cluster, auth_method="scram-sha-256", extra_yaml="", name=None,
                 start_timeout=15, monitor="{interval_ms: 100}"):
        Pgsteer._seq += 1
        self.cluster = cluster
        self.auth_method = auth_method
        self.extra_yaml = extra_yaml
        self.users = ((APP_USER, APP_PASSWORD),)  # (name, password as written in the YAML)
        self.preexec_fn = None  # run in the child before exec (e.g. to enter a cgroup)
        self.node_host = "127.0.0.1"  # or cluster.sockdir: the nodes over Unix-domain sockets
        self.monitor_host = None  # where the monitor reaches the nodes, if not at node_host
        self.fixed_port = None  # listen on this port rather than a free one
        self.command_prefix = []  # run pgsteer under this command (e.g. valgrind and options)
        self.monitor_yaml = monitor  # the `monitor:` value (flow mapping); None leaves it out
        self.name = name or "pgsteer%d" % Pgsteer._seq
        self.start_timeout = start_timeout
        self.port = self.admin_port = None
        self.proc = None
        self.binary = pgsteer_binary()
        self.config_path = os.path.join(cluster.tmpdir, self.name + ".yaml")
        self.log_path = os.path.join(cluster.tmpdir, self.name + ".log")
        self.pid_path = os.path.join(cluster.tmpdir, self.name + ".pid")
        self.failed = False  # set by tests that failed, so the log tail is shown on exit

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or self.failed:
            self.dump_log()
        self.stop()
        return False

    def dsn(self, user=APP_USER, password=APP_PASSWORD, dbname=APP_DB, **kw):
        parts = {"host": "127.0.0.1", "port": self.port, "user": user, "dbname": dbname,
                 "connect_timeout": 10, "application_name": "pgsteer-tests"}
        if password is not None:
            parts["password"] = password
        parts.update(kw)
        return " ".join("%s=%s" % (k, _dsn_quote(v)) for k, v in parts.items())

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        if not os.access(self.binary, os.X_OK):
            raise ClusterError("%s is not built (run make)" % self.binary)
        _register(self)
        used = set(self.cluster.ports)
        for attempt in range(5):
            self.port = self.fixed_port or free_port(exclude=used)
            self.admin_port = free_port(exclude=used | {self.port})
            with open(self.config_path, "w") as f:
                f.write(config_yaml(self.cluster, self.port, self.admin_port, self.auth_method,
                                    self.extra_yaml, users=self.users, monitor=self.monitor_yaml,
                                    node_host=self.node_host,
                                    monitor_host=self.monitor_host))
            logf = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(self.command_prefix +
                                             [self.binary, "-c", self.config_path],
                                             stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                             cwd=self.cluster.tmpdir, start_new_session=True,
                                             preexec_fn=self.preexec_fn)
            finally:
                logf.close()
            with open(self.pid_path, "w") as f:
                f.write("%d\n" % self.proc.pid)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if port_open(self.port):
                    return self
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.stop()
                raise ClusterError("pgsteer did not listen on %d within %ss; log:\n%s"
                                   % (self.port, self.start_timeout, tail(self.log_path)))
            log = tail(self.log_path)
            if "in use" in log.lower() and attempt < 4:
                continue  # a port was taken between picking and binding: pick others
            raise ClusterError("pgsteer exited with status %s; log:\n%s"
                               % (self.proc.returncode, log))
        raise ClusterError("pgsteer could not bind free ports")

    def stop(self, timeout=5):
        """SIGTERM, then SIGKILL after `timeout` seconds. Returns the exit status or None."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.send_signal(signal.SIGTERM)
                    rc = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    rc = self.proc.wait()
            else:
                rc = self.proc.returncode
        try:
            os.unlink(self.pid_path)
        except OSError:
            pass
        _unregister(self)
        return rc

    def wait_replicas_eligible(self, token=None, timeout=10):
        """Wait until /status on the admin port says every replica is eligible (the first
        monitor rounds are done and reads reach them all); `token` is the admin_token, if
        set. Returns self."""
        req = urllib.request.Request("http://127.0.0.1:%d/status" % self.admin_port)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    doc = json.loads(r.read())
                if all(n["eligible"] for n in doc["nodes"] if n["role"] == "replica"):
                    return self
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise ClusterError("pgsteer %s: replicas not eligible within %ss" % (self.name, timeout))

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def dump_log(self, lines=60, out=None):
        out = out or sys.stderr
        out.write("\n----- %s log (%s), last %d lines -----\n%s\n----- end of %s log -----\n"
                  % (self.name, self.log_path, lines, tail(self.log_path, lines), self.name))
        out.flush()


def _dsn_quote(v):
    v = str(v)
    if v == "" or any(c in v for c in " '\\"):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return v


if __name__ == "__main__":
    # Smoke test: python3 tests/integration/cluster.py [replicas]
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with Cluster(replicas=n) as c:
        print("started in %.2fs: %s (tmp %s)" % (c.start_seconds, c.nodes, c.tmpdir))
        c.psql(c.primary_port, "create table smoke (x int); insert into smoke values (42)")
        c.wait_replay()
        for port in c.replica_ports:
            print("replica :%d sees %s" % (port, c.psql(port, "select x from smoke")))
