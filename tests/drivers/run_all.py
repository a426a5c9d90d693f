# SPDX-License-Identifier: MIT
"""Runs every driver test against one shared cluster (a primary and two streaming replicas)
with ./pgsteer in front of it, and the two PgBouncer topologies.

Each driver test is its own program (Python, Java, Node, Perl, Ruby), run as a subprocess with
a time limit. It reads where to connect from the environment:

    PGSTEER_HOST PGSTEER_PORT PGSTEER_USER PGSTEER_PASSWORD PGSTEER_DB
    PRIMARY_PORT REPLICA_PORTS (comma-separated) DRIVER_SCHEMA
    PGSTEER_SSLROOTCERT (set when pgsteer takes clients over TLS only: the CA to verify it by)

and prints one line per case, "ok NAME" or "FAIL NAME: message". DRIVER_SCHEMA is a schema
made for that driver alone (see FIXTURES), so drivers never see each other's rows.

    /usr/bin/python3 tests/drivers/run_all.py             # everything
    /usr/bin/python3 tests/drivers/run_all.py psycopg2 jdbc   # some drivers
    /usr/bin/python3 tests/drivers/run_all.py --list

Exit status 0 when every selected driver passed every case. Use tests/drivers/run.sh, which
also guarantees cleanup."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import cluster as cl  # noqa: E402

PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
JDBC_JAR = "/usr/share/java/postgresql.jar"

# The cases every driver test runs, in this order (a driver may add its own).
CASES = [
    "routing", "params", "read_own_write", "prepare_threshold", "tx_commit", "tx_rollback",
    "tx_error", "session_settings", "big_result", "bytea_text", "statement_timeout",
    "listen_notify", "copy", "pipeline", "read_only_tx",
]

ALL_BYTES_HEX = bytes(range(256)).hex()
UNICODE_TEXT = "zażółć gęślą jaźń · Ελληνικά · 日本語 · \U0001F418"


def fixtures(schema):
    """SQL run on the primary before the tests: the driver's own schema and tables."""
    return [
        "drop schema if exists %s cascade" % schema,
        "create schema %s" % schema,
        "create table %s.items (id serial primary key, k int, v text, n int)" % schema,
        "create table %s.only_here (v text)" % schema,
        "insert into %s.only_here values ('%s')" % (schema, schema),
        "create table %s.blobs (id int primary key, b bytea, t text)" % schema,
        "insert into %s.blobs values (1, decode('%s', 'hex'), '%s'), (2, NULL, NULL)"
        % (schema, ALL_BYTES_HEX, UNICODE_TEXT),
        "create table %s.copy_t (a int, b text)" % schema,
    ]


def node_modules_ready(node_dir):
    """npm ci into tests/drivers/node when node_modules is missing or older than the lock
    file. Returns None when ready, else why not."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node or npm is not installed"
    lock = os.path.join(node_dir, "package-lock.json")
    stamp = os.path.join(node_dir, "node_modules", ".package-lock.json")
    if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(lock):
        return None
    p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=node_dir, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        p = subprocess.run(["npm", "ci", "--offline", "--no-audit", "--no-fund",
                            "--loglevel=error"], cwd=node_dir, capture_output=True, text=True,
                           timeout=300)
    if p.returncode != 0:
        return "npm ci failed: %s" % (p.stderr.strip()[-500:])
    return None


class Driver:
    def __init__(self, name, argv, prepare=None, timeout=150, cases=None, auth=None):
        self.name = name
        self.auth = auth  # a pgsteer auth_method other than the default scram-sha-256
        self.argv = argv
        self.prepare = prepare  # callable(workdir) -> None or an error string
        self.timeout = timeout
        self.cases = cases or CASES

    @property
    def schema(self):
        return "drv_" + self.name.replace("-", "_").replace(".", "_")


def compile_java(workdir):
    if not shutil.which("javac"):
        return "javac is not installed (apt-get install default-jdk-headless)"
    if not os.path.exists(JDBC_JAR):
        return "%s is missing (apt-get install libpostgresql-jdbc-java)" % JDBC_JAR
    out = os.path.join(workdir, "java")
    os.makedirs(out, exist_ok=True)
    p = subprocess.run(["javac", "-d", out, "-cp", JDBC_JAR,
                        os.path.join(HERE, "java", "DriverTest.java")],
                       capture_output=True, text=True, timeout=180)
    if p.returncode != 0:
        return "javac failed: %s" % p.stderr.strip()[-1500:]
    return None


def drivers(workdir):
    py = os.path.join(HERE, "python")
    node_dir = os.path.join(HERE, "node")
    node_prep = lambda wd: node_modules_ready(node_dir)  # noqa: E731
    java_cp = os.path.join(workdir, "java") + ":" + JDBC_JAR
    bouncer_cases = ["prepared_statements", "prepared_concurrent", "routing", "transactions",
                     "session_settings", "discard_all", "check_query"]
    return [
        Driver("psycopg2", [PY, os.path.join(py, "test_psycopg2.py")]),
        Driver("psycopg3", [PY, os.path.join(py, "test_psycopg3.py")]),
        Driver("asyncpg", [PY, os.path.join(py, "test_asyncpg.py")]),
        Driver("pg8000", [PY, os.path.join(py, "test_pg8000.py")], auth="md5"),
        Driver("sqlalchemy", [PY, os.path.join(py, "test_sqlalchemy.py")]),
        Driver("jdbc", ["java", "-cp", java_cp, "DriverTest"], prepare=compile_java),
        Driver("node-pg", ["node", os.path.join(node_dir, "test_pg.js")], prepare=node_prep),
        Driver("postgresjs", ["node", os.path.join(node_dir, "test_postgresjs.js")],
               prepare=node_prep),
        Driver("pg-promise", ["node", os.path.join(node_dir, "test_pg_promise.js")],
               prepare=node_prep),
        Driver("perl-dbd-pg", ["perl", os.path.join(HERE, "perl", "test_dbd_pg.pl")]),
        Driver("ruby-pg", ["ruby", os.path.join(HERE, "ruby", "test_pg.rb")]),
        Driver("pgbouncer-behind", [PY, os.path.join(HERE, "test_pgbouncer.py"), "behind"],
               cases=bouncer_cases),
        Driver("pgbouncer-front", [PY, os.path.join(HERE, "test_pgbouncer.py"), "front"],
               cases=bouncer_cases),
    ]


def parse(out):
    res = {}
    for line in out.splitlines():
        if line.startswith("ok "):
            res[line[3:].split(" ")[0]] = ("ok", "")
        elif line.startswith("FAIL "):
            name, _, msg = line[5:].partition(": ")
            res[name.strip()] = ("FAIL", msg)
    return res


def metric(px, name):
    """Counter `name` from px's /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % px.admin_port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise RuntimeError("no %s in /metrics" % name)


def multiplexed_reads(px):
    return metric(px, "pgsteer_multiplexed_reads_total")


def kept_parses(px):
    """Parses of unnamed statements a backend answered with a statement it kept prepared."""
    return metric(px, "pgsteer_unnamed_statements_reused_total")


def kept_queries(px):
    """Simple-protocol queries run as a statement their backend kept prepared."""
    return metric(px, "pgsteer_simple_queries_reused_total")


def deferred_begins(px):
    """BEGINs pgsteer answered at once and sent with the transaction's first statement."""
    return metric(px, "pgsteer_begins_deferred_total")


def main(argv):
    wanted = [a for a in argv if not a.startswith("-")]
    verbose = "-v" in argv
    with tempfile.TemporaryDirectory(prefix="drivers-",
                                     dir=os.environ.get("PGSTEER_TEST_TMPDIR")) as workdir:
        all_drivers = drivers(workdir)
        if "--list" in argv:
            for d in all_drivers:
                print(d.name)
            return 0
        unknown = set(wanted) - {d.name for d in all_drivers}
        if unknown:
            sys.stderr.write("unknown drivers: %s\n" % " ".join(sorted(unknown)))
            return 2
        sel = [d for d in all_drivers if not wanted or d.name in wanted]
        t0 = time.monotonic()
        # Per-statement balancing: each driver's statements must work while consecutive reads
        # of one session move between the replicas (named statements re-prepared on the way).
        extra_yaml = os.environ.get("PGSTEER_EXTRA_YAML", "")
        multiplex = "multiplex_reads: on" in extra_yaml
        if "read_balance" not in extra_yaml:
            extra_yaml = "read_balance: statement\n" + extra_yaml
        # PGSTEER_DRIVERS_TLS=1: every driver reaches pgsteer over TLS and checks its
        # certificate (client_tls require: a driver left in plain text is refused, so a pass
        # says the driver's TLS and pgsteer's took every case, large rows and COPY included).
        tls_env = {}
        if os.environ.get("PGSTEER_DRIVERS_TLS") == "1":
            certs = cl.make_certs(os.path.join(workdir, "certs"))
            tls_yaml = ("client_tls:\n  mode: require\n  cert_file: %s\n  key_file: %s\n"
                        % (os.path.join(certs, "server.crt"), os.path.join(certs, "server.key")))
            extra_yaml += "\n" + tls_yaml
            root = os.path.join(certs, "ca.crt")
            # libpq's drivers read PGSSLMODE and PGSSLROOTCERT; the others, PGSTEER_SSLROOTCERT.
            # node-postgres (and pg-promise on it) reads PGSSLNEGOTIATION: it starts TLS at
            # once, with ALPN, instead of an SSLRequest first (libpq before 17 ignores it).
            tls_env = {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": root,
                       "PGSSLNEGOTIATION": "direct", "PGSTEER_SSLROOTCERT": root,
                       "PGSTEER_CLIENT_TLS_YAML": tls_yaml}
        with cl.Cluster(replicas=2) as c, cl.Pgsteer(c, extra_yaml=extra_yaml) as px:
            print("cluster up in %.1fs: primary :%d, replicas %s; pgsteer :%d%s"
                  % (c.start_seconds, c.primary_port, c.replica_ports, px.port,
                     ", clients over TLS (verify-full)" if tls_env else ""), flush=True)
            for d in sel:
                c.psql(c.primary_port, fixtures(d.schema))
            c.wait_replay()
            env = dict(os.environ)
            env.update({
                "PGSTEER_HOST": "127.0.0.1", "PGSTEER_PORT": str(px.port),
                "PGSTEER_USER": cl.APP_USER, "PGSTEER_PASSWORD": cl.APP_PASSWORD,
                "PGSTEER_DB": cl.APP_DB, "PRIMARY_PORT": str(c.primary_port),
                "REPLICA_PORTS": ",".join(str(p) for p in c.replica_ports),
                "PGSTEER_BIN": px.binary, "CLUSTER_TMPDIR": c.tmpdir,
                "CLUSTER_SOCKDIR": c.sockdir, "PG_BINDIR": c.bindir,
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            })
            env.update(tls_env)
            summary = []
            others = {}  # auth_method -> another pgsteer, for drivers that cannot do SCRAM
            for d in sel:
                env["DRIVER_SCHEMA"] = d.schema
                env["PGSTEER_PORT"] = str(px.port)
                if d.auth:
                    if d.auth not in others:
                        others[d.auth] = cl.Pgsteer(c, auth_method=d.auth,
                                                    extra_yaml=extra_yaml).start()
                    env["PGSTEER_PORT"] = str(others[d.auth].port)
                t1 = time.monotonic()
                mux0 = multiplexed_reads(px) if multiplex else 0
                kept0 = kept_parses(px)
                keptq0 = kept_queries(px)
                begins0 = deferred_begins(px)
                err = d.prepare(workdir) if d.prepare else None
                if err:
                    res, out, rc = {}, "", "setup failed: " + err
                else:
                    try:
                        p = subprocess.run(d.argv, env=env, capture_output=True, text=True,
                                           timeout=d.timeout, cwd=workdir,
                                           stdin=subprocess.DEVNULL)
                        out, errout, rc = p.stdout, p.stderr, p.returncode
                    except subprocess.TimeoutExpired as e:
                        out = (e.stdout or b"").decode("utf-8", "replace") \
                            if isinstance(e.stdout, bytes) else (e.stdout or "")
                        errout = (e.stderr or b"").decode("utf-8", "replace") \
                            if isinstance(e.stderr, bytes) else (e.stderr or "")
                        rc = "timed out after %ds" % d.timeout
                    res = parse(out)
                    if verbose or rc != 0:
                        tail = "\n".join(errout.strip().splitlines()[-25:])
                        if tail:
                            print("---- %s stderr (tail)\n%s" % (d.name, tail))
                names = list(d.cases) + [n for n in res if n not in d.cases]
                bad = []
                print("== %s (%.1fs)%s, %d Parses answered by kept statements, %d queries run "
                      "as kept statements, %d BEGINs deferred" % (
                          d.name, time.monotonic() - t1,
                          ", %d reads over shared backends" % (multiplexed_reads(px) - mux0)
                          if multiplex else "", kept_parses(px) - kept0,
                          kept_queries(px) - keptq0, deferred_begins(px) - begins0))
                for n in names:
                    st, msg = res.get(n, ("NOT RUN", ""))
                    if st != "ok":
                        bad.append(n)
                    print("   %-7s %s%s" % (st, n, (": " + msg) if msg else ""))
                ok = not bad and rc == 0
                if rc != 0 and not bad:
                    print("   exit status %s" % rc)
                summary.append((d.name, ok, bad, rc))
                sys.stdout.flush()
            for o in others.values():
                o.stop()
            if multiplex and len(sel) == len(all_drivers) and multiplexed_reads(px) < 50:
                # The cases read a great deal outside transactions (about 250 such reads went
                # over shared backends when this was written): far fewer means the run did
                # not test what it says it did.
                summary.append(("multiplex_reads", False, [],
                                "%d reads over shared backends" % multiplexed_reads(px)))
            if (len(sel) == len(all_drivers) and "cache_unnamed_statements: off" not in extra_yaml
                    and kept_parses(px) < 20):
                # Several drivers send their statements as the unnamed one (pgJDBC before its
                # threshold, node-postgres, psycopg 3's first runs): a run in which pgsteer
                # kept none of them prepared did not test what it says it did.
                summary.append(("kept statements", False, [],
                                "%d Parses answered by kept statements" % kept_parses(px)))
            if (len(sel) == len(all_drivers) and "prepare_simple_queries: off" not in extra_yaml
                    and kept_queries(px) < 5):
                # psycopg2, SQLAlchemy on it and pg-promise send values written into simple
                # queries (about 14 of them ran as kept statements when this was written).
                summary.append(("kept simple queries", False, [],
                                "%d queries run as kept statements" % kept_queries(px)))
            if (len(sel) == len(all_drivers) and "defer_begin: off" not in extra_yaml
                    and deferred_begins(px) < 5):
                # psycopg2, SQLAlchemy, node-postgres, the Ruby and Perl drivers send BEGIN on
                # its own: a run in which pgsteer deferred none did not test what it says.
                summary.append(("deferred BEGINs", False, [],
                                "%d BEGINs deferred" % deferred_begins(px)))
            if not all(ok for _, ok, _, _ in summary):
                px.failed = True
        print("\nsummary (%.0fs):" % (time.monotonic() - t0))
        for name, ok, bad, rc in summary:
            print("  %-18s %s" % (name, "PASS" if ok else "FAIL (%s)" % (
                ", ".join(bad) if bad else "exit status %s" % rc)))
        return 0 if all(ok for _, ok, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
