# SPDX-License-Identifier: MIT
"""pgsteer with PgBouncer (Debian's pgbouncer), in the two topologies of docs/pgbouncer.md:

  behind:  app -> pgsteer -> PgBouncer (one per node, pool_mode transaction) -> nodes
           pgsteer's nodes point at the PgBouncers; monitor_host/monitor_port at the nodes.
  front:   app -> PgBouncer (pool_mode session, server_check_query, server_reset_query
           DISCARD ALL) -> pgsteer -> nodes

Run by run_all.py with the shared cluster in the environment; starts its own PgBouncers and
pgsteer. Prints "ok NAME" / "FAIL NAME: message" per case.

    /usr/bin/python3 tests/drivers/test_pgbouncer.py behind|front [case...]"""

import os
import pwd
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "python"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import cluster as cl  # noqa: E402
import harness as hn  # noqa: E402
from harness import check, eq, on_primary, on_replica, expect_sqlstate  # noqa: E402

import psycopg  # noqa: E402

MODE = sys.argv[1] if len(sys.argv) > 1 else "behind"
sys.argv[1:] = sys.argv[2:]  # the rest are case names for run_cases
TMP = os.environ["CLUSTER_TMPDIR"]
S = hn.SCHEMA
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
NODE_PORTS = [hn.PRIMARY] + hn.REPLICAS


def as_postgres_kw():
    """PgBouncer refuses to run as root: run it as `postgres` then."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def bouncer_ini(port, target_port, workdir, pool_mode, extra=""):
    """The PgBouncer configuration both topologies use (docs/pgbouncer.md shows the same)."""
    return """[databases]
app = host=127.0.0.1 port={target} dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {dir}/userlist.txt
pool_mode = {pool_mode}
default_pool_size = 4
max_client_conn = 200
server_check_query = select 1
server_check_delay = 0
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
{extra}
""".format(target=target_port, port=port, dir=workdir, pool_mode=pool_mode, extra=extra)


class Bouncer:
    def __init__(self, name, target_port, pool_mode, extra=""):
        self.dir = os.path.join(TMP, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = cl.free_port()
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.write('"%s" "%s"\n' % (hn.USER, hn.PASSWORD))
        self.ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(self.ini, "w") as f:
            f.write(bouncer_ini(self.port, target_port, self.dir, pool_mode, extra))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in [self.dir] + [os.path.join(self.dir, x) for x in os.listdir(self.dir)]:
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self.proc = subprocess.Popen([PGBOUNCER, self.ini], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, **as_postgres_kw())
        deadline = time.monotonic() + 10
        while not cl.port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pgbouncer %s did not start:\n%s" % (name, self.log()))
            time.sleep(0.05)

    def log(self):
        return cl.tail(os.path.join(self.dir, "pgbouncer.log"), 30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_pgsteer(nodes_yaml, name):
    port, admin = cl.free_port(), cl.free_port()
    cfg = os.path.join(TMP, name + ".yaml")
    with open(cfg, "w") as f:
        f.write("listen: 127.0.0.1:%d\nadmin_listen: 127.0.0.1:%d\nauth_method: scram-sha-256\n"
                "users:\n  - {name: %s, password: %s}\nnodes:\n%smonitor: {interval_ms: 100}\n%s"
                % (port, admin, hn.USER, hn.PASSWORD, nodes_yaml, CLIENT_TLS_YAML))
    log = open(os.path.join(TMP, name + ".log"), "ab")
    proc = subprocess.Popen([os.environ.get("PGSTEER_BIN", cl.pgsteer_binary()), "-c", cfg],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    with open(os.path.join(TMP, name + ".pid"), "w") as f:
        f.write("%d\n" % proc.pid)
    deadline = time.monotonic() + 10
    while not cl.port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("pgsteer %s did not start:\n%s"
                               % (name, cl.tail(os.path.join(TMP, name + ".log"))))
        time.sleep(0.05)
    time.sleep(0.5)  # a few monitor rounds, so that replicas are eligible
    return proc, port


# Set when the driver run takes clients over TLS only (run_all.py): the client_tls section of
# the shared pgsteer, given to pgsteer behind PgBouncer too. In front, PgBouncer reaches pgsteer
# over TLS (server_tls_sslmode) while the test's connections to PgBouncer stay plain.
CLIENT_TLS_YAML = os.environ.get("PGSTEER_CLIENT_TLS_YAML", "")
APP_SSLMODE = None  # libpq's, from the environment
procs = []
bouncers = []
if MODE == "behind":
    nodes = ""
    for i, p in enumerate(NODE_PORTS):
        b = Bouncer("bouncer-behind-%d" % i, p, "transaction")
        bouncers.append(b)
        nodes += ("  - {name: n%d, host: 127.0.0.1, port: %d, monitor_host: 127.0.0.1, "
                  "monitor_port: %d, pooler: transaction, role: %s}\n" % (i, b.port, p, "primary" if i == 0
                                                     else "replica"))
    proc, APP_PORT = start_pgsteer(nodes, "pgsteer-behind")
    procs.append(proc)
else:
    # pgsteer in front of the nodes is the shared one from run_all.py (PGSTEER_PORT).
    b = Bouncer("bouncer-front", hn.PORT, "session",
                extra="default_pool_size = 1\nserver_lifetime = 3600"
                + ("\nserver_tls_sslmode = require" if CLIENT_TLS_YAML else ""))
    if CLIENT_TLS_YAML:
        APP_SSLMODE = "disable"  # (PgBouncer has no certificate of its own here)
    bouncers.append(b)
    APP_PORT = b.port


def connect(**kw):
    if APP_SSLMODE:
        kw.setdefault("sslmode", APP_SSLMODE)
    kw.setdefault("autocommit", True)
    return psycopg.connect(host="127.0.0.1", port=APP_PORT, user=hn.USER, password=hn.PASSWORD,
                           dbname=hn.DB, connect_timeout=10, **kw)


def settle():
    """Front: every app session shares one pgsteer session (pool size 1), so the previous
    case's writes route its reads to the primary until the next monitor round: wait it out."""
    time.sleep(0.3)


def t_routing():
    settle()
    with connect() as c:
        for i in range(4):
            on_replica(c.execute("select inet_server_port()").fetchone()[0], "read %d" % i)
            on_replica(c.execute("select inet_server_port() + %s - %s", (i, i)).fetchone()[0],
                       "parameterised read %d" % i)
        on_primary(c.execute("insert into %s.items (k, v) values (%%s, 'bouncer') returning "
                             "inet_server_port()" % S, (1,)).fetchone()[0], "insert")


def t_prepared_statements():
    with connect() as c:
        for i in range(12):  # named from the 6th execution, and prepare=True from the 1st
            eq(c.execute("select %s::int + 1", (i,)).fetchone()[0], i + 1, "threshold %d" % i)
            eq(c.execute("select %s::int * 2, inet_server_port()", (i,), prepare=True)
               .fetchone()[0], i * 2, "prepared %d" % i)
        for i in range(6):
            on_primary(c.execute("insert into %s.items (k, v) values (%%s, 'p') returning "
                                 "inet_server_port()" % S, (100 + i,), prepare=True)
                       .fetchone()[0], "prepared insert %d" % i)
        with c.transaction():
            eq(c.execute("select %s::int * 2", (21,), prepare=True).fetchone()[0], 42, "in tx")


def t_prepared_concurrent():
    # Several sessions at once: in transaction pooling PgBouncer hands pgsteer's backends
    # different server connections from one transaction to the next.
    errors = []

    def worker(n):
        try:
            with connect() as c:
                for i in range(25):
                    v = c.execute("select %s::int + %s::int, inet_server_port()", (n, i),
                                  prepare=True).fetchone()[0]
                    if v != n + i:
                        errors.append("session %d: got %r" % (n, v))
                    if i % 5 == 0:
                        c.execute("insert into %s.items (k, v) values (%%s, 'conc')" % S,
                                  (1000 + n * 100 + i,), prepare=True)
        except Exception as e:  # noqa: B902
            errors.append("session %d: %s: %s" % (n, type(e).__name__, str(e).strip()))

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    check(not errors, "; ".join(errors[:4]) + (" (+%d more)" % (len(errors) - 4)
                                               if len(errors) > 4 else ""))


def t_transactions():
    with connect() as c:
        with c.transaction():
            c.execute("insert into %s.items (k, v) values (300, 'c')" % S)
            eq(c.execute("select count(*) from %s.items where k = 300" % S).fetchone()[0], 1,
               "in tx")
        try:
            with c.transaction():
                c.execute("insert into %s.items (k, v) values (301, 'e')" % S)
                c.execute("select 1/0")
        except psycopg.Error as e:
            expect_sqlstate(e, "22012", "1/0")
        eq(c.execute("select count(*) filter (where k = 300), count(*) filter (where k = 301) "
                     "from %s.items" % S).fetchone(), (1, 0), "commit and rollback")


def t_session_settings():
    settle()
    with connect(application_name="drv-bouncer-app") as c:
        if MODE == "front":
            c.execute("set search_path to %s" % S)
        seen = [c.execute("select inet_server_port(), current_setting('application_name'), "
                          "current_setting('search_path')").fetchone() for i in range(6)]
        check(all(r[1] == "drv-bouncer-app" for r in seen), "application_name: %s" % seen)
        if MODE == "front":
            check(all(r[2] == S for r in seen), "search_path: %s" % seen)
            eq(c.execute("select v from only_here").fetchone()[0], S, "search_path used")
        check(any(r[0] in hn.REPLICAS for r in seen), "no read on a replica: %s" % seen)


def t_discard_all():
    # front: PgBouncer sends DISCARD ALL (server_reset_query) to pgsteer when a client leaves;
    # the next client on the same pgsteer connection (pool size 1) must find a clean session,
    # and pgsteer must be unpinned again (reads on replicas).
    # behind: a SET replayed on a node reached through a transaction-pooling PgBouncer stays
    # on whichever server connection ran it, for the next PgBouncer client to find (a
    # documented limit, docs/pgbouncer.md), so only the front topology checks search_path.
    with connect() as c:
        if MODE == "front":
            c.execute("set search_path to %s" % S)
        c.execute("prepare drv_q as select 1")
        c.execute("create temp table drv_tmp (x int)")  # pins the session to the primary
        on_primary(c.execute("select inet_server_port()").fetchone()[0], "pinned read")
        if MODE == "behind":
            c.execute("discard all")
    time.sleep(0.3)
    with connect() as c:
        ports = [c.execute("select inet_server_port()").fetchone()[0] for i in range(4)]
        check(any(p in hn.REPLICAS for p in ports), "still pinned after DISCARD ALL: %s" % ports)
        if MODE == "front":
            eq(c.execute("select current_setting('search_path')").fetchone()[0],
               '"$user", public', "search_path after DISCARD ALL")
        try:
            c.execute("execute drv_q")
            check(False, "prepared statement survived DISCARD ALL")
        except psycopg.Error as e:
            expect_sqlstate(e, "26000", "execute after DISCARD ALL")
        eq(c.execute("select count(*) from pg_class where relname = 'drv_tmp' and "
                     "relpersistence = 't'").fetchone()[0], 0, "temp table after DISCARD ALL")
        # EXECUTE of a statement pgsteer does not know is treated as a write, so reads stay on
        # the primary until the next monitor round (read-your-writes): wait for it.
        time.sleep(0.3)
        ports = [c.execute("select inet_server_port()").fetchone()[0] for i in range(4)]
        check(any(p in hn.REPLICAS for p in ports), "still pinned after DISCARD ALL: %s" % ports)


def t_check_query():
    # server_check_query runs before a server connection is reused (server_check_delay 0).
    for i in range(5):
        with connect() as c:
            eq(c.execute("select %s::int", (i,)).fetchone()[0], i, "session %d" % i)
    logs = "\n".join(b.log() for b in bouncers)
    check("server check query failed" not in logs.lower() and "closing because: server "
          "conn crashed" not in logs, "PgBouncer log shows failures:\n%s" % logs[-1500:])


try:
    cases = [(n[2:], f) for n, f in list(globals().items()) if n.startswith("t_")]
    order = ["prepared_statements", "prepared_concurrent", "routing", "transactions",
             "session_settings", "discard_all", "check_query"]
    cases.sort(key=lambda nf: order.index(nf[0]))
    import atexit

    def _stop():
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for b in bouncers:
            b.stop()
    atexit.register(_stop)
    # run_cases ends with os._exit: stop the servers first through a wrapper.
    _orig_exit = os._exit

    def _exit(code):
        _stop()
        _orig_exit(code)
    os._exit = _exit
    hn.run_cases(cases)
except Exception:
    for p in procs:
        p.terminate()
    for b in bouncers:
        b.stop()
    raise
