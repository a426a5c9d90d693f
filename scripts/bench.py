# SPDX-License-Identifier: MIT
"""pgsteer's benchmark: pgbench through pgsteer, PgBouncer and Pgpool-II against direct access.

`make bench` runs this with its defaults; `make bench-conns` runs the idle-connection test
(`--idle-conns 10000`); `make bench-instructions` counts user-space instructions per transaction
in pgsteer and PgBouncer under callgrind (`--instructions`). Standard library only, plus
PostgreSQL's programs, pgbouncer, pgpool and valgrind (scripts/deps.sh bench installs them).
Every server runs on free loopback ports inside one temporary directory, stopped and removed at
the end, on errors and on SIGINT/SIGTERM/SIGHUP.

The set-up (docs/performance.md explains each choice):

  cluster    a primary and two streaming replicas (tests/integration/cluster.py), shared_buffers
             256MB so the scale-10 data set is cached the same way for everyone; pgbench -i -s 10
             straight on the primary, then every replica is waited for.
  direct     pgbench straight to a replica for select-only, to the primary for tpcb-like.
  pgsteer    read/write splitting over the primary and both replicas, lag awareness on (the
             default monitor interval, 100 ms), clients log in with SCRAM; its defaults
             otherwise (one worker per CPU, read_balance: session).
  pgbouncer  transaction pooling in front of the primary (it cannot split reads from writes, so
             it fronts the node that can run everything), default_pool_size = the most clients,
             SCRAM with a plain password in auth_file. PgBouncer 1.18 cannot keep protocol-level
             prepared statements in transaction mode, so -M prepared goes to a second database
             entry of the same process in session mode.
  pgpool     Pgpool-II in streaming-replication mode, load_balance_mode on across the primary
             and both replicas (weight 1 each), sr_check and health check every second,
             delay_threshold 16MB (the same lag limit as pgsteer), num_init_children = the most
             clients + 2, max_pool 1, no query cache. pool_hba trusts 127.0.0.1; pgpool logs in
             to the nodes with the password in pool_passwd.
With --connect (a new connection per transaction) the clients log in to pgsteer and PgBouncer
without a password too (trust, as Pgpool-II's pool_hba), so that the proxies' connection
handling is measured rather than pgbench's SCRAM computation; each proxy still logs in to the
nodes with SCRAM. direct keeps SCRAM (the servers' pg_hba).

Each configuration (script x protocol mode x clients) runs every contender in turn, rotating
the order, and the whole sweep repeats --rounds times, so that drift (autovacuum, caches, table
growth) does not favour one contender. Reported values are medians over rounds. Any pgbench run
that exits non-zero or reports failed transactions stops the benchmark.
"""

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "integration"))

import cluster as cl  # noqa: E402  (after the path change on purpose)

ALL_CONTENDERS = ("direct", "pgsteer", "pgbouncer", "pgpool")
# Measured only when asked for with --contenders: pgsteer with a setting added to its
# configuration. pgsteer-1w has one event-loop worker, to show what the workers (one per CPU by
# default) add; pgsteer-r1 reads from the first replica only (the others at weight 0, set by a
# reload after start), to show what spreading reads over replicas on this machine costs;
# pgsteer-pin pins each worker to its own CPU; pgsteer-poll polls for 100 µs after input
# before it sleeps; pgsteer-nopool keeps no backend once its client leaves, so every pgbench
# run (and, with --connect, every transaction) logs in to the nodes anew; pgsteer-mux shares
# one backend per replica and worker between sessions' reads (multiplex_reads: on), and
# pgsteer-mux1w does so with one worker; pgsteer-nocache sends every Parse of the unnamed
# statement to the node as it came (cache_unnamed_statements: off); pgsteer-noprep sends every
# simple-protocol Query to the node as it came (prepare_simple_queries: off); pgsteer-nodefer
# sends every BEGIN to the node when it comes (defer_begin: off).
EXTRA_PGSTEER = {"pgsteer-1w": "workers: 1\n", "pgsteer-r1": "",
                 "pgsteer-pin": "cpu_affinity: auto\n", "pgsteer-poll": "busy_poll_us: 100\n",
                 "pgsteer-nopool": "backend_idle_max: 0\n",
                 "pgsteer-mux": "multiplex_reads: on\n",
                 "pgsteer-mux1w": "multiplex_reads: on\nworkers: 1\n",
                 "pgsteer-nocache": "cache_unnamed_statements: off\n",
                 "pgsteer-noprep": "prepare_simple_queries: off\n",
                 "pgsteer-nodefer": "defer_begin: off\n"}
EXTRA_CONTENDERS = tuple(EXTRA_PGSTEER)
ALL_MODES = ("simple", "extended", "prepared")
ALL_SCRIPTS = ("select-only", "tpcb-like")
# Statements per transaction of pgbench's built-in scripts, to turn transactions into queries.
STATEMENTS = {"select-only": 1, "tpcb-like": 7}
LABEL = {"direct": "direct", "pgsteer": "pgsteer", "pgbouncer": "PgBouncer",
         "pgpool": "Pgpool-II", "pgsteer-1w": "pgsteer, 1 worker",
         "pgsteer-r1": "pgsteer, 1st replica only",
         "pgsteer-pin": "pgsteer, cpu_affinity: auto",
         "pgsteer-poll": "pgsteer, busy_poll_us: 100",
         "pgsteer-nopool": "pgsteer, backend_idle_max: 0",
         "pgsteer-mux": "pgsteer, multiplex_reads: on",
         "pgsteer-mux1w": "pgsteer, multiplex_reads: on, 1 worker",
         "pgsteer-nocache": "pgsteer, cache_unnamed_statements: off",
         "pgsteer-noprep": "pgsteer, prepare_simple_queries: off",
         "pgsteer-nodefer": "pgsteer, defer_begin: off"}
SCALE = 10
# The goals, checked for every protocol mode and script (docs/performance.md).
GOAL_VS_PGBOUNCER = 1.1
GOAL_VS_PGPOOL = 2.0
GOAL_IDLE_RSS_MB = 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


# ---- /proc ---------------------------------------------------------------------------------
def proc_cpu_seconds(pid):
    """utime + stime of one process (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_stats():
    """(pid, fields) for every process, fields being /proc/PID/stat after the command name:
    fields[0] is the state (field 3 of proc(5)), fields[1] the parent, fields[2] the process
    group, fields[11:15] utime, stime, cutime and cstime in clock ticks."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                yield int(d), f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue


def group_cpu_seconds(pgid):
    """utime + stime of every live process in process group `pgid`, plus what the group's
    leader collected from children it reaped (cutime + cstime)."""
    total = 0.0
    for pid, fields in proc_stats():
        if int(fields[2]) != pgid:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        if pid == pgid:
            total += (int(fields[13]) + int(fields[14])) / CLK_TCK
    return total


def proc_status_kb(pid, key):
    """A `kB` value of /proc/PID/status (VmRSS, VmHWM...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError("no %s in /proc/%d/status" % (key, pid))


def system_busy_seconds():
    """CPU time spent by the whole machine (all CPUs) outside idle and iowait, in seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def servers_cpu_seconds(c):
    """CPU time of every PostgreSQL process of cluster `c`, in seconds: each postmaster's own and
    what it collected from children it reaped (cutime + cstime), plus its live children
    (backends, WAL sender and receiver, startup, checkpointer...), zombies included. A backend
    is its own process group (PostgreSQL calls setsid), so the tree is followed by parent."""
    postmasters = set()
    for n in c.nodes:
        try:
            with open(os.path.join(n.datadir, "postmaster.pid")) as f:
                postmasters.add(int(f.readline()))
        except (OSError, ValueError):
            pass
    total = 0.0
    for pid, fields in proc_stats():
        if pid in postmasters:
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
        elif int(fields[1]) in postmasters:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def children_cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


# ---- the cluster ---------------------------------------------------------------------------
class BenchCluster(cl.Cluster):
    """The test cluster with caches sized for pgbench scale 10 (about 160 MB); with `tls`,
    the nodes also take clients over TLS (ssl = on), with the certificate every contender
    shows (`certs`: the directory cluster.make_certs fills)."""

    tls = False
    certs = None

    def _conf_lines(self, node):
        lines = cl.Cluster._conf_lines(self, node) + [
            "# pgsteer benchmark",
            "shared_buffers = 256MB",
        ]
        if self.tls:
            if self.certs is None:
                self.certs = cl.make_certs(os.path.join(self.tmpdir, "certs"))
            lines += ["ssl = on",
                      "ssl_cert_file = '%s'" % os.path.join(self.certs, "server.crt"),
                      "ssl_key_file = '%s'" % os.path.join(self.certs, "server.key")]
        return lines + [""]


def spawn_as_postgres(c, args, log_path, cwd):
    """Start a long-running program as the `postgres` user when we are root (PgBouncer
    refuses to run as root), in its own process group, output to log_path."""
    kw = {}
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    env["LC_ALL"] = "C"
    if os.geteuid() == 0:
        pw = c._pw
        kw.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        env["HOME"] = cwd
        env["USER"] = env["LOGNAME"] = "postgres"
    logf = open(log_path, "ab")
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                cwd=cwd, env=env, start_new_session=True, **kw)
    finally:
        logf.close()


def stop_group(proc, sig=signal.SIGTERM, timeout=5):
    """Signal the process group that `proc` leads (we started it with a new session), then
    SIGKILL the group after `timeout` seconds."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent
    except OSError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def wait_port(proc, port, what, log_path, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError("%s exited with status %s; log:\n%s"
                             % (what, proc.returncode, cl.tail(log_path)))
        if cl.port_open(port):
            return
        time.sleep(0.05)
    raise BenchError("%s did not listen on %d within %ds; log:\n%s"
                     % (what, port, timeout, cl.tail(log_path)))


class Service:
    """A peer proxy run from a directory inside the cluster's temporary directory."""

    name = None

    def __init__(self, c, max_clients):
        self.c = c
        self.max_clients = max_clients
        self.dir = os.path.join(c.tmpdir, self.name)
        self.log_path = os.path.join(self.dir, self.name + ".log")
        self.port = None
        self.proc = None
        self.version = None
        self.target_port = None  # PgBouncer: the node it fronts (default: the primary)
        self.unix = False  # --unix: reach the nodes over their Unix-domain sockets
        self.client_auth = "scram-sha-256"  # PgBouncer: how clients log in (--connect: trust)
        self.certs = None  # --tls: clients over TLS with this directory's server.crt and .key
        self.command_prefix = []  # run the program under this command (valgrind, ...)

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

    def _mkdir(self):
        os.makedirs(self.dir, exist_ok=True)
        self.c._chown(self.dir)

    def _write(self, name, text, mode=0o600):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        self.c._chown(path)
        return path

    def cpu_seconds(self):
        return proc_cpu_seconds(self.proc.pid)

    def peak_rss_kb(self):
        return proc_status_kb(self.proc.pid, "VmHWM")

    def stop(self):
        stop_group(self.proc)


class PgBouncer(Service):
    """PgBouncer in transaction pooling mode in front of the primary; the database entry
    `app_session` is the same pool in session mode, for -M prepared."""

    name = "pgbouncer"

    def start(self):
        self._mkdir()
        self.version = subprocess.run(["pgbouncer", "--version"], capture_output=True,
                                      text=True).stdout.splitlines()[0].strip()
        self._write("userlist.txt", '"%s" "%s"\n' % (cl.APP_USER, cl.APP_PASSWORD))
        for attempt in range(5):
            self.port = cl.free_port(exclude=set(self.c.ports))
            target = "host=%s port=%d dbname=%s" % (
                self.c.sockdir if self.unix else "127.0.0.1",
                self.target_port or self.c.primary_port, cl.APP_DB)
            ini = self._write("pgbouncer.ini", "\n".join([
                "[databases]",
                "%s = %s" % (cl.APP_DB, target),
                "%s_session = %s pool_mode=session" % (cl.APP_DB, target),
                "",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                "listen_port = %d" % self.port,
                "unix_socket_dir = %s" % (self.dir if self.unix else ""),
                "auth_type = %s" % self.client_auth,
                "auth_file = %s" % os.path.join(self.dir, "userlist.txt"),
                "pool_mode = transaction",
                # Every client gets a server connection without queueing, as with the others.
                "default_pool_size = %d" % self.max_clients,
                "max_client_conn = %d" % (self.max_clients + 20),
                "pidfile = %s" % os.path.join(self.dir, "pgbouncer.pid"),
                "log_connections = 0",
                "log_disconnections = 0",
                "log_pooler_errors = 1",
                "stats_period = 60",
            ] + ([
                "client_tls_sslmode = require",
                "client_tls_cert_file = %s" % os.path.join(self.certs, "server.crt"),
                "client_tls_key_file = %s" % os.path.join(self.certs, "server.key"),
            ] if self.certs else []) + [""]))
            self.proc = spawn_as_postgres(self.c, self.command_prefix + ["pgbouncer", ini],
                                          self.log_path, self.dir)
            try:
                wait_port(self.proc, self.port, "pgbouncer", self.log_path)
                return self
            except BenchError:
                if attempt < 4 and "in use" in cl.tail(self.log_path).lower():
                    stop_group(self.proc)
                    continue
                raise

    def dbname(self, mode):
        return cl.APP_DB + "_session" if mode == "prepared" else cl.APP_DB


class Pgpool(Service):
    """Pgpool-II in streaming-replication mode with load balancing over all three nodes."""

    name = "pgpool"

    def start(self):
        self._mkdir()
        out = subprocess.run(["pgpool", "--version"], capture_output=True, text=True)
        self.version = (out.stdout or out.stderr).strip()
        d = self.dir
        self._write("pcp.conf", "")
        self._write("pool_hba.conf", "local all all trust\nhost all all 127.0.0.1/32 trust\n")
        # pgpool's own logins to the nodes (SCRAM) need the clear-text password.
        self._write("pool_passwd", "%s:TEXT%s\n" % (cl.APP_USER, cl.APP_PASSWORD))
        for attempt in range(5):
            used = set(self.c.ports)
            self.port = cl.free_port(exclude=used)
            pcp_port = cl.free_port(exclude=used | {self.port})
            lines = [
                "backend_clustering_mode = 'streaming_replication'",
                "listen_addresses = '127.0.0.1'",
                "port = %d" % self.port,
                "unix_socket_directories = '%s'" % d,  # Pgpool-II 4.4 and later
                "socket_dir = '%s'" % d,  # the same setting's name before 4.4
                "pcp_listen_addresses = '127.0.0.1'",
                "pcp_port = %d" % pcp_port,
                "pcp_socket_dir = '%s'" % d,
                "wd_ipc_socket_dir = '%s'" % d,
                "pid_file_name = '%s'" % os.path.join(d, "pgpool.pid"),
                "logdir = '%s'" % d,
                "log_destination = 'stderr'",
                "log_min_messages = warning",
                "log_connections = off",
                "enable_pool_hba = on",
                "pool_passwd = '%s'" % os.path.join(d, "pool_passwd"),
                "num_init_children = %d" % (self.max_clients + 2),
                "max_pool = 1",
                "reserved_connections = 0",
                "child_life_time = 0",
                "child_max_connections = 0",
                "connection_life_time = 0",
                "client_idle_limit = 0",
                "connection_cache = on",
                "load_balance_mode = on",
                "statement_level_load_balance = off",
                "disable_load_balance_on_write = 'transaction'",
                "memory_cache_enabled = off",
                "use_watchdog = off",
                "failover_command = ''",
                "failover_on_backend_error = off",
                "sr_check_period = 1",
                "sr_check_user = '%s'" % cl.APP_USER,
                "sr_check_password = '%s'" % cl.APP_PASSWORD,
                "sr_check_database = 'postgres'",
                "delay_threshold = %d" % (16 * 1024 * 1024),
                "health_check_period = 1",
                "health_check_timeout = 5",
                "health_check_user = '%s'" % cl.APP_USER,
                "health_check_password = '%s'" % cl.APP_PASSWORD,
                "health_check_database = 'postgres'",
                "health_check_max_retries = 3",
            ]
            if self.certs:
                lines += ["ssl = on",
                          "ssl_cert = '%s'" % os.path.join(self.certs, "server.crt"),
                          "ssl_key = '%s'" % os.path.join(self.certs, "server.key")]
            for i, n in enumerate(self.c.nodes):
                lines += [
                    "backend_hostname%d = '%s'" % (i, self.c.sockdir if self.unix
                                                   else "127.0.0.1"),
                    "backend_port%d = %d" % (i, n.port),
                    "backend_weight%d = 1" % i,
                    "backend_flag%d = 'ALLOW_TO_FAILOVER'" % i,
                    "backend_application_name%d = '%s'" % (i, n.name),
                ]
            conf = self._write("pgpool.conf", "\n".join(lines) + "\n")
            # -n: foreground; -D: ignore any pgpool_status (there is none in a new directory).
            self.proc = spawn_as_postgres(
                self.c, ["pgpool", "-n", "-D", "-f", conf, "-F", os.path.join(d, "pcp.conf"),
                         "-a", os.path.join(d, "pool_hba.conf")], self.log_path, d)
            try:
                wait_port(self.proc, self.port, "pgpool", self.log_path)
                break
            except BenchError:
                if attempt < 4 and "in use" in cl.tail(self.log_path).lower():
                    stop_group(self.proc)
                    continue
                raise
        # pgpool listens before its health checks have seen the nodes: wait until every
        # node is up and the primary is known.
        deadline = time.monotonic() + 30
        while True:
            p = cl.run_psql(self.port, "show pool_nodes", check=False, timeout=10)
            rows = [r.split("|") for r in p.stdout.splitlines() if "|" in r]
            if p.returncode == 0 and len(rows) == len(self.c.nodes) and all(
                    r[3] in ("up", "waiting") for r in rows) and any(
                    r[6] == "primary" for r in rows):
                return self
            if time.monotonic() > deadline:
                raise BenchError("pgpool does not see every node: %s %s\n%s"
                                 % (p.stdout, p.stderr, cl.tail(self.log_path)))
            time.sleep(0.2)

    def cpu_seconds(self):
        return group_cpu_seconds(self.proc.pid)

    def peak_rss_kb(self):
        return None  # many processes sharing memory: no single meaningful number

    def stop(self):
        # SIGINT is pgpool's fast shutdown; SIGTERM waits for clients.
        stop_group(self.proc, signal.SIGINT)


# ---- pgbench -------------------------------------------------------------------------------
class Contender:
    def __init__(self, name, port_for, dbname_for=None, service=None, proc=None,
                 host="127.0.0.1"):
        self.name = name
        self.host = host  # where pgbench connects: an address, or a socket directory
        self.port_for = port_for  # script -> port
        self.dbname_for = dbname_for or (lambda mode: cl.APP_DB)
        self.service = service
        self.proc = proc  # the process whose CPU and memory are reported, if any

    def cpu(self):
        if self.service is not None:
            return self.service.cpu_seconds()
        if self.proc is not None:
            return proc_cpu_seconds(self.proc.pid)
        return None

    def peak_rss_kb(self):
        if self.service is not None:
            return self.service.peak_rss_kb()
        if self.proc is not None:
            return proc_status_kb(self.proc.pid, "VmHWM")
        return None


def pgbench_args(bindir, host, port, dbname, script, mode, clients, threads, duration,
                 log_prefix=None, transactions=None, connect=False):
    """pgbench for `duration` seconds, or for `transactions` per client when that is given;
    with a per-transaction log when `log_prefix` is given; with a new connection for every
    transaction when `connect`."""
    args = [os.path.join(bindir, "pgbench"), "-n", "-h", host, "-p", str(port),
            "-U", cl.APP_USER, "-M", mode, "-c", str(clients), "-j", str(threads)]
    if connect:
        args.append("-C")
    if transactions is not None:
        args += ["-t", str(transactions)]
    else:
        args += ["-T", str(duration)]
    if log_prefix is not None:
        args += ["--log", "--log-prefix=%s" % log_prefix]
    if script == "select-only":
        args.append("-S")
    return args + [dbname]


# --tls: pgbench reaches every contender over TLS.
PGBENCH_SSLMODE = "disable"


def pgbench_env():
    env = dict(os.environ)
    env["PGSSLMODE"] = PGBENCH_SSLMODE
    env["PGPASSWORD"] = cl.APP_PASSWORD
    env["PGCONNECT_TIMEOUT"] = "10"
    env["PGAPPNAME"] = "pgsteer-bench"
    env.pop("PGSERVICE", None)
    return env


def load_data(c):
    """pgbench -i at SCALE straight on the primary, then wait until every replica has it."""
    init = subprocess.run([os.path.join(c.bindir, "pgbench"), "-i", "-s", str(SCALE), "-q",
                           "-h", c.sockdir, "-p", str(c.primary_port), "-U", cl.APP_USER,
                           cl.APP_DB], capture_output=True, text=True, timeout=600,
                          env=pgbench_env())
    if init.returncode != 0:
        raise BenchError("pgbench -i failed:\n%s" % (init.stdout + init.stderr))
    c.wait_replay(timeout=300)


def read_latencies(log_prefix):
    """Per-transaction latencies in µs from pgbench's --log files (one file per thread)."""
    lat = []
    files = glob.glob(log_prefix + ".*")
    for path in files:
        with open(path) as f:
            for line in f:
                parts = line.split(None, 3)
                if len(parts) < 3:
                    continue
                if not parts[2].isdigit():  # "failed" or "skipped"
                    raise BenchError("pgbench log %s has a failed transaction: %s"
                                     % (path, line.strip()))
                lat.append(int(parts[2]))
        os.unlink(path)
    return lat


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


def run_pgbench(c, contender, script, mode, clients, threads, duration, logdir, connect=False):
    port = contender.port_for(script)
    dbname = contender.dbname_for(mode)
    prefix = os.path.join(logdir, "tx")
    for old in glob.glob(prefix + ".*"):
        os.unlink(old)
    args = pgbench_args(c.bindir, contender.host, port, dbname, script, mode, clients, threads,
                        duration, prefix, connect=connect)
    load = os.getloadavg()[0]
    cpu0 = contender.cpu()
    busy0 = system_busy_seconds()
    kids0 = children_cpu_seconds()
    servers0 = servers_cpu_seconds(c)
    t0 = time.monotonic()
    p = subprocess.run(args, env=pgbench_env(), capture_output=True, text=True,
                       timeout=duration + 120, stdin=subprocess.DEVNULL, cwd=logdir)
    wall = time.monotonic() - t0
    cpu1 = contender.cpu()
    busy1 = system_busy_seconds()
    kids1 = children_cpu_seconds()
    # The backends of pgbench's sessions exit as it disconnects: let the postmasters reap them
    # (their time then moves into cutime) or see them as zombies.
    time.sleep(0.2)
    servers1 = servers_cpu_seconds(c)
    out = p.stdout + p.stderr
    where = "%s -M %s -c %d via %s" % (script, mode, clients, contender.name)
    if p.returncode != 0:
        raise BenchError("pgbench failed (exit %d) for %s:\n$ %s\n%s"
                         % (p.returncode, where, " ".join(args), out[-3000:]))
    m = re.search(r"number of failed transactions: (\d+)", out)
    if m and int(m.group(1)) != 0:
        raise BenchError("pgbench reports %s failed transactions for %s:\n%s"
                         % (m.group(1), where, out[-3000:]))
    m_tx = re.search(r"number of transactions actually processed: (\d+)", out)
    m_tps = re.search(r"tps = ([0-9.]+)", out)
    m_lat = re.search(r"latency average = ([0-9.]+) ms", out)
    if not (m_tx and m_tps and m_lat):
        raise BenchError("cannot read pgbench's report for %s:\n%s" % (where, out[-3000:]))
    tx = int(m_tx.group(1))
    if tx == 0:
        raise BenchError("pgbench ran no transaction for %s:\n%s" % (where, out[-3000:]))
    lat = sorted(read_latencies(prefix))
    if abs(len(lat) - tx) > clients:  # the log holds every transaction pgbench counted
        raise BenchError("pgbench logged %d transactions but reports %d for %s"
                         % (len(lat), tx, where))
    run = {
        "contender": contender.name,
        "script": script,
        "mode": mode,
        "clients": clients,
        "threads": threads,
        "duration_s": duration,
        "wall_s": round(wall, 3),
        "loadavg_1m_before": round(load, 2),
        "transactions": tx,
        "tps": float(m_tps.group(1)),
        "latency_avg_us": round(statistics.fmean(lat), 1) if lat else None,
        "latency_avg_us_pgbench": round(float(m_lat.group(1)) * 1000, 1),
        "latency_p50_us": percentile(lat, 0.50),
        "latency_p99_us": percentile(lat, 0.99),
        "latency_max_us": lat[-1] if lat else None,
        # Where the machine's CPU went, per transaction: everything (pgbench, the servers,
        # the proxy, the kernel and anything else running), and pgbench alone.
        "machine_cpu_us_per_tx": round((busy1 - busy0) / tx * 1e6, 1),
        "pgbench_cpu_us_per_tx": round((kids1 - kids0) / tx * 1e6, 1),
        # Every PostgreSQL process of the cluster, per transaction.
        "servers_cpu_us_per_tx": round((servers1 - servers0) / tx * 1e6, 1),
    }
    if cpu0 is not None and cpu1 is not None:
        queries = tx * STATEMENTS[script]
        run["proxy_cpu_s"] = round(cpu1 - cpu0, 3)
        run["proxy_cpu_s_per_1k_queries"] = round((cpu1 - cpu0) / queries * 1000, 5)
    rss = contender.peak_rss_kb()
    if rss is not None:
        run["proxy_peak_rss_kb"] = rss
    return run


# ---- routing check -------------------------------------------------------------------------
def xact_counts(c):
    """Committed transactions in the benchmark database, per node name."""
    counts = {}
    for n in c.nodes:
        out = c.psql(n.port, "select xact_commit from pg_stat_database where datname = '%s'"
                     % cl.APP_DB, user="postgres", db="postgres")
        counts[n.name] = int(out.strip() or 0)
    return counts


def routing_share(c, before, settle=1.5):
    """Share of the transactions since `before` that each node ran. Busy backends flush
    their statistics at most once a second, so wait that long first."""
    time.sleep(settle)
    after = xact_counts(c)
    delta = {k: after[k] - before[k] for k in after}
    total = sum(delta.values()) or 1
    return {k: round(v / total, 3) for k, v in delta.items()}


# ---- the benchmark -------------------------------------------------------------------------
def parse_list(text, allowed, what, conv=str):
    items = [conv(x.strip()) for x in text.split(",") if x.strip()]
    if not items:
        raise SystemExit("bench.py: --%s is empty" % what)
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise SystemExit("bench.py: unknown %s %s (choose from %s)"
                             % (what, ", ".join(bad), ", ".join(allowed)))
    return items


def machine_info(c=None):
    info = {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    if c is not None:
        p = subprocess.run([os.path.join(c.bindir, "postgres"), "--version"],
                           capture_output=True, text=True)
        info["postgresql"] = p.stdout.strip()
    git = shutil.which("git")
    if git:
        p = subprocess.run([git, "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True)
        if p.returncode == 0:
            info["pgsteer_commit"] = p.stdout.strip()
            d = subprocess.run([git, "-C", REPO_ROOT, "status", "--porcelain", "--", "src",
                                "include"], capture_output=True, text=True)
            info["pgsteer_tree_modified"] = bool(d.stdout.strip())
    return info


def config_key(script, mode, clients):
    return "%s %s c%d" % (script, mode, clients)


def summarise(runs, contenders, configs):
    """One row per (configuration, contender): medians over rounds, ratios to direct and
    pgsteer's ratio to each peer."""
    rows = []
    by = {}
    for r in runs:
        by.setdefault((r["script"], r["mode"], r["clients"], r["contender"]), []).append(r)

    def med(rs, key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    for script, mode, clients in configs:
        agg = {}
        for name in contenders:
            rs = by.get((script, mode, clients, name), [])
            if not rs:
                continue
            agg[name] = {
                "tps": med(rs, "tps"),
                "latency_avg_us": med(rs, "latency_avg_us"),
                "latency_p99_us": med(rs, "latency_p99_us"),
                "cpu_s_per_1k_queries": med(rs, "proxy_cpu_s_per_1k_queries"),
                "machine_cpu_us_per_tx": med(rs, "machine_cpu_us_per_tx"),
                "servers_cpu_us_per_tx": med(rs, "servers_cpu_us_per_tx"),
                "peak_rss_kb": max((r["proxy_peak_rss_kb"] for r in rs
                                    if "proxy_peak_rss_kb" in r), default=None),
                "rounds": len(rs),
                "tps_all": [r["tps"] for r in rs],
            }
        direct = agg.get("direct")
        steer = agg.get("pgsteer")
        for name in contenders:
            if name not in agg:
                continue
            a = agg[name]
            row = {"script": script, "mode": mode, "clients": clients, "contender": name}
            row.update(a)
            if direct:
                row["tps_vs_direct"] = a["tps"] / direct["tps"]
                row["added_latency_us"] = a["latency_avg_us"] - direct["latency_avg_us"]
            if steer and name not in ("pgsteer", "direct"):
                row["pgsteer_tps_ratio"] = steer["tps"] / a["tps"]
            rows.append(row)
    return rows


def goals(rows, contenders):
    """The issue's goals, per script and mode: at the most clients, pgsteer's TPS at least
    1.1x PgBouncer's and 2x Pgpool-II's; at 1 client, less added latency than PgBouncer.
    Checked for pgsteer with its defaults; each entry's "variants" holds the same check for
    every other pgsteer contender measured (pgsteer-pin, pgsteer-poll, ...)."""
    out = []
    idx = {(r["script"], r["mode"], r["clients"], r["contender"]): r for r in rows}
    clients = sorted({r["clients"] for r in rows})
    if not clients:
        return out
    hi = max(clients)
    variants = [c for c in contenders if c in EXTRA_PGSTEER]

    def check(script, mode, name, peer, want):
        """(value, met) of one goal for contender `name`, or None when not measured."""
        if peer == "latency":
            s1 = idx.get((script, mode, 1, name))
            b1 = idx.get((script, mode, 1, "pgbouncer"))
            if s1 and b1 and "added_latency_us" in s1 and "added_latency_us" in b1:
                return ("%+.0f µs vs %+.0f µs" % (s1["added_latency_us"], b1["added_latency_us"]),
                        s1["added_latency_us"] < b1["added_latency_us"])
            return None
        s, p = idx.get((script, mode, hi, name)), idx.get((script, mode, hi, peer))
        if s and p and hi > 1:
            ratio = s["tps"] / p["tps"]
            # The two ran back to back in every round: the spread of the per-round ratios
            # shows how far one run's verdict can be trusted on this machine.
            pairs = [a / b for a, b in zip(s.get("tps_all", []), p.get("tps_all", []))]
            if len(pairs) > 1:
                return "%.2fx (%.2f-%.2f)" % (ratio, min(pairs), max(pairs)), ratio >= want
            return "%.2fx" % ratio, ratio >= want
        return None

    for script in sorted({r["script"] for r in rows}):
        for mode in ALL_MODES:
            for peer, want, n, goal in (
                    ("pgbouncer", GOAL_VS_PGBOUNCER, hi,
                     "TPS >= %.1fx %s" % (GOAL_VS_PGBOUNCER, LABEL["pgbouncer"])),
                    ("pgpool", GOAL_VS_PGPOOL, hi,
                     "TPS >= %.1fx %s" % (GOAL_VS_PGPOOL, LABEL["pgpool"])),
                    ("latency", None, 1, "added latency < PgBouncer's")):
                got = check(script, mode, "pgsteer", peer, want)
                if got is None:
                    continue
                g = {"script": script, "mode": mode, "clients": n, "goal": goal,
                     "value": got[0], "met": got[1], "variants": {}}
                for v in variants:
                    vg = check(script, mode, v, peer, want)
                    if vg is not None:
                        g["variants"][v] = {"value": vg[0], "met": vg[1]}
                out.append(g)
    return out


def fmt(v, spec, none="–"):
    return none if v is None else format(v, spec)


def table_markdown(rows):
    head = ["config", "contender", "TPS", "avg µs", "p99 µs", "× direct", "added µs",
            "pgsteer ÷ this", "CPU s / 1k q", "peak RSS MB", "machine CPU µs / tx",
            "servers CPU µs / tx"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    prev = None
    for r in rows:
        cfg = "%s, %s, %d cl" % (r["script"], r["mode"], r["clients"])
        lines.append("| " + " | ".join([
            cfg if cfg != prev else "",
            LABEL[r["contender"]],
            fmt(r["tps"], ".0f"),
            fmt(r["latency_avg_us"], ".0f"),
            fmt(r["latency_p99_us"], ".0f"),
            fmt(r.get("tps_vs_direct"), ".2f"),
            "" if r["contender"] == "direct" else fmt(r.get("added_latency_us"), "+.0f"),
            fmt(r.get("pgsteer_tps_ratio"), ".2f", ""),
            fmt(r.get("cpu_s_per_1k_queries"), ".4f", ""),
            fmt(None if r.get("peak_rss_kb") is None else r["peak_rss_kb"] / 1024, ".1f", ""),
            fmt(r.get("machine_cpu_us_per_tx"), ".0f"),
            fmt(r.get("servers_cpu_us_per_tx"), ".0f"),
        ]) + " |")
        prev = cfg
    return "\n".join(lines)


def goals_markdown(gs):
    variants = []
    for g in gs:
        variants += [v for v in g.get("variants", {}) if v not in variants]
    head = (["script", "mode", "clients", "goal", "pgsteer", "met"] +
            [LABEL[v] for v in variants])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in gs:
        cells = [g["script"], g["mode"], "%d" % g["clients"], g["goal"], g["value"],
                 "yes" if g["met"] else "**NO**"]
        for v in variants:
            vg = g.get("variants", {}).get(v)
            cells.append("" if vg is None else
                         "%s, %s" % (vg["value"], "yes" if vg["met"] else "**NO**"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_json(doc, out, save, suffix=""):
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    log("wrote %s" % out)
    if save:
        d = os.path.join(REPO_ROOT, "results")
        os.makedirs(d, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
        base = os.path.join(d, "%s-%s%s" % (datetime.date.today().isoformat(), host, suffix))
        path, n = base + ".json", 1
        while os.path.exists(path):  # a second run the same day keeps the first
            n += 1
            path = "%s-%d.json" % (base, n)
        shutil.copyfile(out, path)
        log("saved %s" % path)


def start_perf(pid, path):
    """perf record of pgsteer (flat samples, which name the hot functions) for one run."""
    perf = shutil.which("perf")
    if perf is None:
        log("--perf: perf is not installed (Debian: linux-perf); not profiling")
        return None
    return subprocess.Popen([perf, "record", "-q", "-F", "2999", "-p", str(pid), "-o", path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop_perf(p):
    if p is not None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def only_first_replica(c, px):
    """Reload pgsteer `px` with every replica but the first at weight 0."""
    with open(px.config_path) as f:
        text = f.read()
    for i in range(2, len(c.replica_ports) + 1):
        text = re.sub(r"(name: replica%d[^}]*weight: )1" % i, r"\g<1>0", text)
    with open(px.config_path, "w") as f:
        f.write(text)
    px.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)


def bench(args):
    contenders = parse_list(args.contenders, ALL_CONTENDERS + EXTRA_CONTENDERS, "contenders")
    modes = parse_list(args.modes, ALL_MODES, "modes")
    scripts = parse_list(args.scripts, ALL_SCRIPTS, "scripts")
    clients = parse_list(args.clients, None, "clients", int)
    if any(n < 1 for n in clients):
        raise SystemExit("bench.py: --clients must be positive")
    configs = [(s, m, n) for s in scripts for m in modes for n in clients]
    max_clients = max(clients)
    started = datetime.datetime.now(datetime.timezone.utc)
    log("%d configurations x %d contenders x %d rounds of %ds"
        % (len(configs), len(contenders), args.rounds, args.duration))

    global PGBENCH_SSLMODE
    PGBENCH_SSLMODE = "require" if args.tls else "disable"
    c = BenchCluster(replicas=2)
    c.tls = args.tls
    with c:
        log("cluster up in %.1fs (%s); pgbench -i -s %d on the primary"
            % (c.start_seconds, c.tmpdir, SCALE))
        load_data(c)
        # Read before the runs: the commit and whether the source differs from it describe
        # the binary measured, not edits made while the benchmark runs.
        machine = machine_info(c)
        logdir = os.path.join(c.tmpdir, "bench")
        os.makedirs(logdir, exist_ok=True)

        bouncer = PgBouncer(c, max_clients)
        if args.one_replica:
            bouncer.target_port = c.replica_ports[0]
        pool = Pgpool(c, max_clients)
        # --unix: every hop over Unix-domain sockets, for every contender (pgbench to the
        # proxy, the proxy to the nodes); pgsteer instances share one socket directory, since
        # each socket is named by its port.
        sockdir = os.path.join(c.tmpdir, "pgsteer-sockets")
        base_yaml = args.pgsteer_yaml
        if args.unix:
            os.makedirs(sockdir, exist_ok=True)
            bouncer.unix = pool.unix = True
            base_yaml = "unix_socket_dir: %s\n%s" % (sockdir, base_yaml)
        host = {"direct": c.sockdir if args.unix else "127.0.0.1",
                "pgsteer": sockdir if args.unix else "127.0.0.1",
                "pgbouncer": bouncer.dir if args.unix else "127.0.0.1",
                "pgpool": pool.dir if args.unix else "127.0.0.1"}

        # --connect: clients log in without a password to every proxy (see the top).
        client_auth = "trust" if args.connect else "scram-sha-256"
        bouncer.client_auth = client_auth
        # --tls: every contender takes pgbench over TLS with the same certificate; the hops
        # from the proxies to the nodes stay plain, as in a sidecar on the nodes' network.
        if args.tls:
            bouncer.certs = pool.certs = c.certs
            base_yaml = ("client_tls:\n  mode: require\n  cert_file: %s\n  key_file: %s\n%s"
                         % (os.path.join(c.certs, "server.crt"),
                            os.path.join(c.certs, "server.key"), base_yaml))

        def pgsteer(extra, name=None):
            px = cl.Pgsteer(c, extra_yaml=extra + base_yaml, name=name, auth_method=client_auth)
            if args.unix:
                px.node_host = c.sockdir
            return px

        extra = {name: pgsteer(yaml, name) for name, yaml in EXTRA_PGSTEER.items()
                 if name in contenders}
        with pgsteer("") as px, contextlib.ExitStack() as stack:
            # The peers run only when measured (each needs its package installed).
            for svc in (bouncer, pool):
                if svc.name in contenders:
                    stack.enter_context(svc)
            for name in extra:
                stack.enter_context(extra[name])
            if "pgsteer-r1" in extra:
                only_first_replica(c, extra["pgsteer-r1"])
            if args.one_replica:
                # Reads from the first replica only (the others at weight 0, by a reload), and
                # PgBouncer in front of that same replica: both proxies serve one PostgreSQL
                # instance, which takes the cost of spreading reads over several instances that
                # share this machine's cores out of the comparison. Every pgsteer contender.
                for p in [px] + [p for name, p in extra.items() if name != "pgsteer-r1"]:
                    only_first_replica(c, p)
            replica = c.replica_ports[0]
            table = {
                "direct": Contender("direct", lambda s: replica if s == "select-only"
                                    else c.primary_port, host=host["direct"]),
                "pgsteer": Contender("pgsteer", lambda s: px.port, proc=px.proc,
                                     host=host["pgsteer"]),
                "pgbouncer": Contender("pgbouncer", lambda s: bouncer.port,
                                       dbname_for=bouncer.dbname, service=bouncer,
                                       host=host["pgbouncer"]),
                "pgpool": Contender("pgpool", lambda s: pool.port, service=pool,
                                    host=host["pgpool"]),
            }
            for name, p in extra.items():
                table[name] = Contender(name, (lambda p: lambda s: p.port)(p), proc=p.proc,
                                        host=host["pgsteer"])
            versions = {"pgbouncer": bouncer.version, "pgpool": pool.version}
            # Warm-up, and a check that each contender routes select-only where it should.
            routing = {}
            for name in contenders:
                before = xact_counts(c)
                run_pgbench(c, table[name], "select-only", "simple", 1, 1, args.warmup, logdir)
                if name.startswith("pgsteer"):
                    # Its kept backends (backend_idle_max) sit idle with their last second of
                    # statistics unreported until they exit: a reload closes them.
                    table[name].proc.send_signal(signal.SIGHUP)
                routing[name] = routing_share(c, before)
                log("warm-up %-9s select-only served by %s" % (
                    name, ", ".join("%s %.0f%%" % (k, v * 100) for k, v in
                                    routing[name].items())))
            if "pgsteer" in routing:
                to_replicas = sum(v for k, v in routing["pgsteer"].items() if k != "primary")
                if to_replicas < 0.9:
                    raise BenchError("pgsteer sent only %.0f%% of select-only transactions to "
                                     "replicas: it is not splitting; log:\n%s"
                                     % (to_replicas * 100, cl.tail(px.log_path)))
            runs = []
            total = len(configs) * len(contenders) * args.rounds
            k = 0
            perf_dir = None
            if args.perf:
                perf_dir = os.path.abspath(args.perf)
                os.makedirs(perf_dir, exist_ok=True)
            for rnd in range(args.rounds):
                for ci, (script, mode, n) in enumerate(configs):
                    # Rotate who goes first, per round and per configuration.
                    shift = (rnd + ci) % len(contenders)
                    order = contenders[shift:] + contenders[:shift]
                    for name in order:
                        k += 1
                        c.wait_replay(timeout=120)
                        perf = None
                        if perf_dir and name == "pgsteer":
                            perf = start_perf(px.proc.pid, os.path.join(
                                perf_dir, "%s-%s-c%d-r%d.data" % (script, mode, n, rnd + 1)))
                        try:
                            r = run_pgbench(c, table[name], script, mode, n,
                                            min(n, args.threads), args.duration, logdir,
                                            connect=args.connect)
                        finally:
                            stop_perf(perf)
                        r["round"] = rnd + 1
                        runs.append(r)
                        log("[%d/%d] %-28s %-9s %8.0f tps  avg %6.0f µs  p99 %6.0f µs"
                            % (k, total, config_key(script, mode, n), name, r["tps"],
                               r["latency_avg_us"], r["latency_p99_us"]))
                        if not px.alive():
                            raise BenchError("pgsteer exited; log:\n%s" % cl.tail(px.log_path))
            # A peer that logs per query would be slowed by its own logging: keep the sizes.
            log_bytes = {name: os.path.getsize(path) for name, path in (
                ("pgsteer", px.log_path), ("pgbouncer", bouncer.log_path),
                ("pgpool", pool.log_path)) if os.path.exists(path)}
            steer_final = {
                "VmHWM_kb": proc_status_kb(px.proc.pid, "VmHWM"),
                "VmRSS_kb": proc_status_kb(px.proc.pid, "VmRSS"),
                "cpu_s_total": proc_cpu_seconds(px.proc.pid),
            }

    rows = summarise(runs, contenders, configs)
    gs = goals(rows, contenders)
    finished = datetime.datetime.now(datetime.timezone.utc)
    doc = {
        "benchmark": "pgsteer pgbench comparison",
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "settings": {"duration_s": args.duration, "rounds": args.rounds, "clients": clients,
                     "threads": args.threads, "modes": modes, "scripts": scripts,
                     "contenders": contenders, "scale": SCALE, "warmup_s": args.warmup,
                     "transport": "unix" if args.unix else "tcp",
                     "client_tls": args.tls,
                     "connection_per_transaction": args.connect,
                     "proxy_client_auth": "trust" if args.connect else "scram-sha-256 "
                                          "(Pgpool-II: trust)"},
        "machine": machine,
        "versions": versions,
        "routing_check_select_only": routing,
        "pgsteer_process": steer_final,
        "log_bytes": log_bytes,
        "summary": rows,
        "goals": gs,
        "runs": runs,
    }
    md = table_markdown(rows)
    print()
    # (the processor too: runs on two machines of the same size can differ by 2x and more)
    print("pgbench, scale %d, %ds x %d rounds (median), %s, %d cores (%s), %s, over %s"
          % (SCALE, args.duration, args.rounds, started.strftime("%Y-%m-%d"),
             os.cpu_count(), doc["machine"].get("cpu", "?"),
             doc["machine"].get("postgresql", ""),
             "Unix-domain sockets" if args.unix else
             "loopback TCP with TLS from pgbench" if args.tls else "loopback TCP"))
    print()
    print(md)
    print()
    print("pgsteer peak RSS (VmHWM) %.1f MB, CPU %.1f s over the whole benchmark."
          % (steer_final["VmHWM_kb"] / 1024, steer_final["cpu_s_total"]))
    if gs:
        print()
        print("Goals (issue): pgsteer at %d clients >= %.1fx PgBouncer and >= %.1fx Pgpool-II "
              "TPS; at 1 client less added latency than PgBouncer. A TPS ratio is of the "
              "medians; in parentheses, the lowest and highest of the per-round ratios "
              "(the two ran back to back in each round)." % (
                  max(clients), GOAL_VS_PGBOUNCER, GOAL_VS_PGPOOL))
        print()
        print(goals_markdown(gs))
    print()
    save_json(doc, args.out, args.save)
    return 0


# ---- idle connections ----------------------------------------------------------------------
def startup_message(user, db):
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", db), ("application_name", "pgsteer-bench")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def query_message(sql):
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def read_messages(buf):
    """Split complete messages off `buf` (a bytearray): yields (type, body) and removes them."""
    out = []
    pos = 0
    while len(buf) - pos >= 5:
        t = buf[pos:pos + 1]
        n = struct.unpack_from("!i", buf, pos + 1)[0]
        if len(buf) - pos < 1 + n:
            break
        out.append((t, bytes(buf[pos + 5:pos + 1 + n])))
        pos += 1 + n
    del buf[:pos]
    return out


class ProbeClient:
    """One blocking connection (trust auth) that times `select 1` round trips."""

    def __init__(self, port, user, db):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.s.sendall(startup_message(user, db))
        self._until_ready()

    def _until_ready(self):
        while True:
            for t, body in read_messages(self.buf):
                if t == b"E":
                    raise BenchError("server error: %r" % body)
                if t == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                    raise BenchError("the probe needs trust authentication")
                if t == b"Z":
                    return
            data = self.s.recv(65536)
            if not data:
                raise BenchError("connection closed")
            self.buf += data

    def query(self, sql="select 1"):
        t0 = time.perf_counter()
        self.s.sendall(query_message(sql))
        self._until_ready()
        return time.perf_counter() - t0

    def close(self):
        self.s.close()


class Probe(threading.Thread):
    """Times a query every `interval` seconds on its own connection until stopped; each
    sample is tagged with the phase it ran in."""

    def __init__(self, port, interval=0.01):
        super().__init__(daemon=True)
        self.client = ProbeClient(port, cl.APP_USER, cl.APP_DB)
        self.client.query()  # open its backend before measuring
        self.interval = interval
        self.phase = "before"
        self.samples = {}
        self.error = None
        self._halt = threading.Event()

    def run(self):
        try:
            while not self._halt.is_set():
                dt = self.client.query()
                self.samples.setdefault(self.phase, []).append(dt)
                self._halt.wait(self.interval)
        except Exception as e:  # reported by the main thread
            self.error = e

    def stop(self):
        self._halt.set()
        self.join(30)
        self.client.close()

    def stats(self):
        out = {}
        for phase, xs in self.samples.items():
            xs = sorted(xs)
            out[phase] = {"queries": len(xs),
                          "median_ms": round(statistics.median(xs) * 1000, 3),
                          "p99_ms": round(percentile(xs, 0.99) * 1000, 3),
                          "max_ms": round(xs[-1] * 1000, 3)}
        return out


def open_idle(port, n, inflight=256, timeout=120):
    """Open n connections that complete the startup handshake (trust) and then stay idle.
    Non-blocking, at most `inflight` handshakes at once. Returns the sockets."""
    sel = selectors.DefaultSelector()
    startup = startup_message(cl.APP_USER, cl.APP_DB)
    done = []
    started = 0
    active = 0
    deadline = time.monotonic() + timeout

    def begin():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, 115):  # EINPROGRESS
            s.close()
            raise BenchError("connect: %s" % os.strerror(err))
        sel.register(s, selectors.EVENT_WRITE, {"sent": 0, "buf": bytearray()})

    try:
        while len(done) < n:
            while started < n and active < inflight:
                begin()
                started += 1
                active += 1
            if time.monotonic() > deadline:
                raise BenchError("opened only %d of %d connections in %ds"
                                 % (len(done), n, timeout))
            for key, ev in sel.select(1.0):
                s, st = key.fileobj, key.data
                if ev & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError("connect: %s" % os.strerror(err))
                    st["sent"] += s.send(startup[st["sent"]:])
                    if st["sent"] == len(startup):
                        sel.modify(s, selectors.EVENT_READ, st)
                    continue
                data = s.recv(65536)
                if not data:
                    raise BenchError("pgsteer closed connection %d during login" % len(done))
                st["buf"] += data
                for t, body in read_messages(st["buf"]):
                    if t == b"E":
                        raise BenchError("login refused: %r" % body)
                    if t == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                        raise BenchError("pgsteer asked for a password: use trust")
                    if t == b"Z":
                        sel.unregister(s)
                        done.append(s)
                        active -= 1
                        break
    except BaseException:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        for s in done:
            s.close()
        raise
    finally:
        sel.close()
    return done


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            raise BenchError("RLIMIT_NOFILE hard limit %d < %d and cannot be raised (run as "
                             "root or raise it with ulimit -Hn)" % (hard, need))
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def idle_conns(args):
    n = args.idle_conns
    # This process holds n sockets and pgsteer n + its backends; both inherit this limit.
    limit = raise_nofile(n + 1024)
    started = datetime.datetime.now(datetime.timezone.utc)
    result = {"benchmark": "pgsteer idle client connections", "connections": n,
              "started": started.isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "rlimit_nofile": limit,
              "note": "clients log in with auth_method trust to keep the set-up quick (SCRAM "
                      "costs about 1-2 ms of CPU per login); idle clients open no backend"}
    socks = []
    with cl.Cluster(replicas=2) as c:
        extra = "max_client_conn: %d\n" % (n + 100)
        with cl.Pgsteer(c, auth_method="trust", extra_yaml=extra) as px:
            pid = px.proc.pid
            probe = Probe(px.port)
            result["rss_kb_start"] = proc_status_kb(pid, "VmRSS")
            probe.start()
            try:
                time.sleep(1.0)
                probe.phase = "opening"
                t0 = time.monotonic()
                socks = open_idle(px.port, n)
                opened = time.monotonic() - t0
                log("opened %d idle connections in %.1fs" % (n, opened))
                result["open_seconds"] = round(opened, 2)
                result["rss_kb_after_open"] = proc_status_kb(pid, "VmRSS")
                probe.phase = "holding"
                time.sleep(args.hold)
                result["rss_kb_held"] = proc_status_kb(pid, "VmRSS")
                result["hwm_kb"] = proc_status_kb(pid, "VmHWM")
                result["pgsteer_fds"] = fd_count(pid)
                # Idle clients should hold no backend: count the nodes' client sessions.
                result["node_sessions_while_holding"] = {
                    n.name: int(c.psql(n.port, "select count(*) from pg_stat_activity where "
                                       "backend_type = 'client backend' and datname = '%s'"
                                       % cl.APP_DB, user="postgres", db="postgres"))
                    for n in c.nodes}
                # Every idle connection still answers: a few of them run a query now.
                for s in socks[:: max(1, n // 20)]:
                    s.setblocking(True)
                    s.settimeout(10)
                    s.sendall(query_message("select 1"))
                    buf = bytearray()
                    ready = False
                    while not ready:
                        data = s.recv(65536)
                        if not data:
                            raise BenchError("an idle connection was closed by pgsteer")
                        buf += data
                        ready = any(t == b"Z" for t, _ in read_messages(buf))
                result["idle_connections_checked"] = len(socks[:: max(1, n // 20)])
            finally:
                probe.stop()
                for s in socks:
                    s.close()
            if probe.error is not None:
                raise BenchError("the probe connection failed: %s; log:\n%s"
                                 % (probe.error, cl.tail(px.log_path)))
            if not px.alive():
                raise BenchError("pgsteer exited; log:\n%s" % cl.tail(px.log_path))
            result["probe"] = probe.stats()
        result["machine"] = machine_info(c)
    rss_mb = result["rss_kb_held"] / 1024
    hwm_mb = result["hwm_kb"] / 1024
    per_conn = (result["rss_kb_held"] - result["rss_kb_start"]) * 1024 / n
    result["bytes_per_connection"] = round(per_conn)
    result["goal_mb"] = GOAL_IDLE_RSS_MB
    result["met"] = hwm_mb < GOAL_IDLE_RSS_MB
    print()
    print("%d idle connections through pgsteer (%s, %d cores)"
          % (n, started.strftime("%Y-%m-%d"), os.cpu_count()))
    print()
    print("| measure | value |")
    print("|---|---|")
    print("| time to open (trust login) | %.1f s |" % result["open_seconds"])
    print("| pgsteer VmRSS before | %.1f MB |" % (result["rss_kb_start"] / 1024))
    print("| pgsteer VmRSS holding %d | %.1f MB |" % (n, rss_mb))
    print("| pgsteer VmHWM (peak) | %.1f MB |" % hwm_mb)
    print("| per idle connection | %.1f kB |" % (per_conn / 1024))
    print("| pgsteer open fds | %s |" % result["pgsteer_fds"])
    print("| sessions on the nodes meanwhile | %s |" % ", ".join(
        "%s %d" % kv for kv in result["node_sessions_while_holding"].items()))
    print("| goal: peak below %.0f MB | %s |" % (GOAL_IDLE_RSS_MB,
                                                 "met" if result["met"] else "**NOT MET**"))
    for phase in ("before", "opening", "holding"):
        st = result["probe"].get(phase)
        if st:
            print("| `select 1` on another connection, %s | %d queries, median %.2f ms, "
                  "p99 %.2f ms, max %.2f ms |" % (phase, st["queries"], st["median_ms"],
                                                  st["p99_ms"], st["max_ms"]))
    print()
    save_json(result, args.out or os.path.join(REPO_ROOT, "build", "bench-conns.json"),
              args.save, "-conns")
    return 0


# ---- user-space instructions per transaction (callgrind) -----------------------------------
# pgbench clients and, per client, the transactions of the short and of the long run: the
# difference between the two cancels the logins (SCRAM, backend connections), which both runs
# have alike, and leaves what one more transaction costs.
INSTR_CLIENTS = 4
INSTR_TX = {"select-only": (500, 3000), "tpcb-like": (100, 600)}


def callgrind_command(outdir, name, extra=()):
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise BenchError("valgrind is not installed (scripts/deps.sh bench installs it)")
    # Names written out in every dump file, so that each file can be read on its own.
    return [valgrind, "--tool=callgrind", "--compress-strings=no",
            "--callgrind-out-file=%s/%s.%%p" % (outdir, name)] \
        + list(extra)


def callgrind_control(pid, what, as_postgres):
    """Send `what` (--zero, --dump=LABEL) to the callgrind run of process `pid`. vgdb finds
    only the runs of its own user, so a run as `postgres` is reached as `postgres`."""
    cmd = ["callgrind_control", what, str(pid)]
    if as_postgres and os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0 or "error" in (p.stdout + p.stderr).lower():
        raise BenchError("callgrind_control %s %d failed:\n%s" % (what, pid, p.stdout + p.stderr))


# The heap functions whose calls a dump counts: what "no allocation per message" is checked by.
HEAP_FUNCTIONS = ("malloc", "calloc", "realloc", "free")


def callgrind_read_dump(path):
    """(instruction total, {heap function: calls}) of a complete callgrind dump, or None while
    the file is still being written (its totals line comes last). Calls are those made while
    collection was on (for pgsteer: inside its event loops), from any caller."""
    calls = dict.fromkeys(HEAP_FUNCTIONS, 0)
    names = {}  # "(id)" -> name: the same dump may name a function once and then only by id
    callee = None
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("cfn="):
                    ref = line[4:].strip()
                    m = re.match(r"(\(\d+\))\s*(.*)", ref)
                    if m:
                        if m.group(2):
                            names[m.group(1)] = m.group(2)
                        ref = names.get(m.group(1), "")
                    callee = ref
                elif line.startswith("calls="):
                    if callee in calls:
                        calls[callee] += int(line[6:].split()[0])
                    callee = None
                elif line.startswith("totals:"):  # "summary:", in the header, is the same
                    return int(line.split()[1]), calls
    except OSError:
        pass
    return None


def callgrind_dump_total(outdir, name, pid, seen, timeout=60):
    """(instruction total, heap calls) of the next dump file of `pid` (NAME.PID.N, N counting
    up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in glob.glob(os.path.join(outdir, "%s.%d.*" % (name, pid))):
            if path in seen:
                continue
            got = callgrind_read_dump(path)
            if got is not None:
                seen.add(path)
                return got
        time.sleep(0.1)
    raise BenchError("no callgrind dump of %s (pid %d) appeared in %s" % (name, pid, outdir))


def pgbench_fixed(c, contender, script, mode, clients, per_client):
    """pgbench with a fixed number of transactions per client; returns how many it ran."""
    args = pgbench_args(c.bindir, contender.host, contender.port_for(script),
                        contender.dbname_for(mode), script, mode, clients, min(clients, 2), None,
                        transactions=per_client)
    p = subprocess.run(args, env=pgbench_env(), capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if p.returncode != 0 or m is None or (failed and int(failed.group(1)) != 0) \
            or int(m.group(1)) != clients * per_client:
        raise BenchError("pgbench %s -M %s via %s:\n$ %s\n%s"
                         % (script, mode, contender.name, " ".join(args), out[-3000:]))
    return int(m.group(1))


def instructions(args):
    """User-space instructions per transaction in pgsteer and in PgBouncer, each run under
    callgrind: a count that is the same from run to run whatever else the machine does, unlike
    time. pgsteer's count covers its event loops (`--toggle-collect=uv_run`), not the monitor
    thread, whose polling is a cost per second, not per query; PgBouncer's covers the whole
    process, which is one event loop."""
    modes = parse_list(args.modes, ALL_MODES, "modes")
    scripts = parse_list(args.scripts, ALL_SCRIPTS, "scripts")
    names = ("pgsteer", "pgbouncer")
    started = datetime.datetime.now(datetime.timezone.utc)
    result = {"benchmark": "user-space instructions per transaction (callgrind)",
              "started": started.isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "clients": INSTR_CLIENTS, "transactions_per_client": INSTR_TX, "rows": []}
    with BenchCluster(replicas=2) as c:
        load_data(c)
        outdir = os.path.join(c.tmpdir, "callgrind")
        os.makedirs(outdir)
        os.chmod(outdir, 0o777)  # PgBouncer runs as postgres and writes its dumps here
        px = cl.Pgsteer(c, extra_yaml=args.pgsteer_yaml, start_timeout=120)
        px.command_prefix = callgrind_command(outdir, "pgsteer", ["--toggle-collect=uv_run"])
        bouncer = PgBouncer(c, INSTR_CLIENTS)
        bouncer.command_prefix = callgrind_command(outdir, "pgbouncer")
        with px, bouncer:
            table = {"pgsteer": Contender("pgsteer", lambda s: px.port),
                     "pgbouncer": Contender("pgbouncer", lambda s: bouncer.port,
                                            dbname_for=bouncer.dbname)}
            pids = {"pgsteer": px.proc.pid, "pgbouncer": bouncer.proc.pid}
            seen = set()
            for script in scripts:
                for mode in modes:
                    row = {"script": script, "mode": mode}
                    for name in names:
                        # Unmeasured, as long as the long run: fills what only the first
                        # sessions fill (SCRAM keys, startup parameters, PgBouncer's server
                        # connections, opened as concurrency needs them) so that the two
                        # measured runs differ only in their number of transactions.
                        pgbench_fixed(c, table[name], script, mode, INSTR_CLIENTS,
                                      INSTR_TX[script][1])
                        counts = []
                        for per_client in INSTR_TX[script]:
                            callgrind_control(pids[name], "--zero", name == "pgbouncer")
                            tx = pgbench_fixed(c, table[name], script, mode, INSTR_CLIENTS,
                                               per_client)
                            callgrind_control(pids[name], "--dump=%s-%s-%d" % (
                                script, mode, per_client), name == "pgbouncer")
                            counts.append((tx, callgrind_dump_total(outdir, name, pids[name],
                                                                    seen)))
                        (tx1, (ir1, heap1)), (tx2, (ir2, heap2)) = counts
                        per_tx = (ir2 - ir1) / (tx2 - tx1)
                        # Heap calls per transaction, logins cancelled out as for instructions.
                        heap = {fn: round((heap2[fn] - heap1[fn]) / (tx2 - tx1), 3)
                                for fn in HEAP_FUNCTIONS}
                        allocs = heap["malloc"] + heap["calloc"] + heap["realloc"]
                        row[name] = {"runs": [{"transactions": t, "instructions": i,
                                               "heap_calls": h}
                                              for t, (i, h) in counts],
                                     "per_transaction": round(per_tx),
                                     "per_query": round(per_tx / STATEMENTS[script]),
                                     "heap_calls_per_transaction": heap,
                                     "allocations_per_transaction": round(allocs, 3)}
                        log("%s %s via %s: %.0f instructions, %.3f allocations per transaction"
                            % (script, mode, name, per_tx, allocs))
                    row["pgsteer_vs_pgbouncer"] = round(
                        row["pgsteer"]["per_transaction"]
                        / row["pgbouncer"]["per_transaction"], 2)
                    result["rows"].append(row)
            if args.callgrind_dir:
                os.makedirs(args.callgrind_dir, exist_ok=True)
                for path in sorted(seen):
                    shutil.copy(path, args.callgrind_dir)
                log("callgrind files in %s (callgrind_annotate FILE)" % args.callgrind_dir)
            result["versions"] = {"pgbouncer": bouncer.version,
                                  "valgrind": subprocess.run(
                                      ["valgrind", "--version"], capture_output=True,
                                      text=True).stdout.strip()}
        result["machine"] = machine_info(c)
    print()
    print("User-space instructions per transaction under callgrind (%d clients; %s)"
          % (INSTR_CLIENTS, started.strftime("%Y-%m-%d")))
    print()
    print("| script | mode | pgsteer | PgBouncer | pgsteer ÷ PgBouncer | pgsteer per query "
          "| PgBouncer per query | heap allocations per transaction: pgsteer, PgBouncer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print("| %s | %s | %d | %d | %.2f | %d | %d | %.3f, %.3f |" % (
            r["script"], r["mode"], r["pgsteer"]["per_transaction"],
            r["pgbouncer"]["per_transaction"], r["pgsteer_vs_pgbouncer"],
            r["pgsteer"]["per_query"], r["pgbouncer"]["per_query"],
            r["pgsteer"]["allocations_per_transaction"],
            r["pgbouncer"]["allocations_per_transaction"]))
    print()
    save_json(result, args.out or os.path.join(REPO_ROOT, "build", "bench-instructions.json"),
              args.save, "-instructions")
    return 0


# ---- main ----------------------------------------------------------------------------------
def _on_signal(signum, frame):
    # Unwind through the context managers, which stop every server and remove the files.
    raise SystemExit(128 + signum)


def check_release_binary(path):
    """Refuse to measure a sanitizer build: `make SAN=1` and `make SAN=thread` leave theirs as
    ./pgsteer, and it runs several times slower with more memory (`make bench` rebuilds the
    release binary first; running this script directly does not)."""
    try:
        p = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30)
    except OSError:
        return
    for lib in ("libasan", "libtsan", "libubsan"):
        if lib in p.stdout:
            raise BenchError("%s is a sanitizer build (it links %s): run make first"
                             % (path, lib))


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark pgsteer against direct access, PgBouncer and Pgpool-II with "
                    "pgbench; or, with --idle-conns, hold idle connections through pgsteer.")
    ap.add_argument("--duration", type=int, default=5, help="seconds per pgbench run (5)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="times every configuration is run per contender; medians (2)")
    ap.add_argument("--clients", default="1,8", help="client counts, comma-separated (1,8)")
    ap.add_argument("--threads", type=int, default=2,
                    help="pgbench threads (-j) at most, never more than clients (2)")
    ap.add_argument("--modes", default=",".join(ALL_MODES),
                    help="protocol modes (simple,extended,prepared)")
    ap.add_argument("--scripts", default=",".join(ALL_SCRIPTS),
                    help="pgbench scripts (select-only,tpcb-like)")
    ap.add_argument("--contenders", default=",".join(ALL_CONTENDERS),
                    help="what to measure (direct,pgsteer,pgbouncer,pgpool; also pgsteer-1w: "
                         "pgsteer with workers: 1, pgsteer-r1: pgsteer reading from the first "
                         "replica only, pgsteer-pin: pgsteer with cpu_affinity: auto, "
                         "pgsteer-poll: pgsteer with busy_poll_us: 100, pgsteer-nopool: "
                         "pgsteer with backend_idle_max: 0, pgsteer-mux: pgsteer with "
                         "multiplex_reads: on, pgsteer-mux1w: the same with workers: 1, "
                         "pgsteer-nocache: pgsteer with cache_unnamed_statements: off, "
                         "pgsteer-noprep: pgsteer with prepare_simple_queries: off, "
                         "pgsteer-nodefer: pgsteer with defer_begin: off)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="seconds of select-only per contender before measuring (2)")
    ap.add_argument("--quick", action="store_true",
                    help="a fast look: --duration 2 --rounds 1 --warmup 1 unless given")
    ap.add_argument("--out", default=None,
                    help="JSON results (build/bench.json; build/bench-conns.json)")
    ap.add_argument("--save", action="store_true",
                    help="also copy the JSON to results/YYYY-MM-DD-HOST.json")
    ap.add_argument("--perf", metavar="DIR", default=None,
                    help="perf record pgsteer during each of its runs into DIR")
    ap.add_argument("--one-replica", action="store_true",
                    help="every pgsteer contender reads from the first replica only and "
                         "PgBouncer fronts that replica (select-only), so both serve one "
                         "PostgreSQL instance")
    ap.add_argument("--connect", action="store_true",
                    help="a new connection for every transaction (pgbench -C), as applications "
                         "that connect per request do")
    ap.add_argument("--unix", action="store_true",
                    help="every contender over Unix-domain sockets: pgbench to the proxy (or "
                         "to PostgreSQL) and the proxy to the nodes")
    ap.add_argument("--tls", action="store_true",
                    help="pgbench reaches every contender over TLS (sslmode=require): the nodes "
                         "with ssl = on, pgsteer with client_tls, PgBouncer with "
                         "client_tls_sslmode, Pgpool-II with ssl; the proxies' hops to the "
                         "nodes stay plain")
    ap.add_argument("--pgsteer-yaml", default="", metavar="YAML",
                    help="extra configuration lines for pgsteer, e.g. 'workers: 1'")
    ap.add_argument("--idle-conns", type=int, default=0, metavar="N",
                    help="instead: hold N idle connections through pgsteer, report its memory")
    ap.add_argument("--hold", type=float, default=5,
                    help="with --idle-conns: seconds to hold them (5)")
    ap.add_argument("--instructions", action="store_true",
                    help="instead: count pgsteer's and PgBouncer's user-space instructions "
                         "per transaction under callgrind (--scripts, --modes apply)")
    ap.add_argument("--callgrind-dir", metavar="DIR", default=None,
                    help="with --instructions: keep the callgrind files in DIR")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.quick:
        given = " ".join(argv)
        if "--duration" not in given:
            args.duration = 2
        if "--rounds" not in given:
            args.rounds = 1
        if "--warmup" not in given:
            args.warmup = 1
    if args.tls and args.unix:
        ap.error("--tls and --unix do not go together: PostgreSQL has no TLS on Unix sockets")
    if args.duration < 1 or args.rounds < 1 or args.threads < 1 or args.warmup < 1:
        ap.error("--duration, --rounds, --threads and --warmup must be at least 1")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        check_release_binary(cl.pgsteer_binary())
        if args.idle_conns:
            return idle_conns(args)
        if args.instructions:
            return instructions(args)
        if args.out is None:
            args.out = os.path.join(REPO_ROOT, "build", "bench.json")
        return bench(args)
    except (BenchError, cl.ClusterError) as e:
        log("FAILED: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
