#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""`make demo`: a PostgreSQL primary and two streaming replicas on this machine, pgsteer in
front of them, five seconds of pgbench through pgsteer, and a table of where the reads and
writes went, from each node's own statistics and from pgsteer's admin status. Everything runs
in a temporary directory and is stopped and removed at the end."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import cluster as cl  # noqa: E402

SECONDS = 5
READERS = 3


def say(msg=""):
    print(msg, flush=True)


def step(n, msg):
    say("\n[%d/5] %s" % (n, msg))


def node_stats(c):
    """Per node name, from that node's own pg_stat_database for the app database: committed
    transactions and rows written (inserted + updated + deleted). Asked from the postgres
    database, so that asking does not count in app's numbers."""
    out = {}
    for n in c.nodes:
        row = c.psql(n.port, "select xact_commit, tup_inserted + tup_updated + tup_deleted "
                             "from pg_stat_database where datname = 'app'", db="postgres")
        xacts, written = (int(x) for x in row.split("|"))
        out[n.name] = (xacts, written)
    return out


def wait_idle(c, timeout=5):
    """Wait until no session is left in the app database on any node: a backend flushes its
    statistics when it exits, so the counters are complete after this."""
    deadline = time.monotonic() + timeout
    for n in c.nodes:
        while time.monotonic() < deadline:
            busy = c.psql(n.port, "select count(*) from pg_stat_activity where datname = 'app'",
                          db="postgres")
            if busy == "0":
                break
            time.sleep(0.1)


def pgbench_cmd(c, port, args):
    return ([os.path.join(c.bindir, "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U",
             cl.APP_USER] + args + [cl.APP_DB])


def pgbench_env():
    return dict(os.environ, PGPASSWORD=cl.APP_PASSWORD)


def fetch_status(px):
    """pgsteer's admin status as a dict, or None (with the reason printed) when the admin
    endpoint does not answer with JSON."""
    url = "http://127.0.0.1:%d/status" % px.admin_port
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body = r.read(1 << 20).decode("utf-8", "replace")
    except Exception as e:  # noqa: BLE001 - the admin endpoint is optional here
        say("      (%s did not answer: %s)" % (url, e))
        return None
    try:
        status = json.loads(body)
    except ValueError:
        say("      %s answered, but not with JSON:" % url)
        for line in body.splitlines()[:10]:
            say("        " + line)
        return None
    return status if isinstance(status, dict) else None


def show_status(status):
    q = status.get("queries") or {}
    if q:
        say("      pgsteer routed %s statements: %s as reads, %s to the primary."
            % (q.get("total", "?"), q.get("reads", "?"), q.get("writes", "?")))
    reasons = {k: v for k, v in (status.get("primary_reasons") or {}).items() if v}
    if reasons:
        say("      Why they went to the primary: "
            + ", ".join("%s %s" % (v, k) for k, v in sorted(reasons.items(),
                                                            key=lambda kv: -kv[1])))
        say("      (\"transaction\": statements inside a transaction that BEGIN opened there)")


def main():
    say("pgsteer demo: one PostgreSQL primary, two streaming replicas, pgsteer in front.")
    say("Reads should land on the replicas, writes on the primary.")

    step(1, "Starting a primary and two streaming replicas (PostgreSQL in %s)"
         % cl.pg_bindir())
    with cl.Cluster(replicas=2) as c:
        for n in c.nodes:
            say("      %-9s %-8s 127.0.0.1:%d" % (n.name, n.role, n.port))
        say("      ready in %.1f s (temporary directory %s)" % (c.start_seconds, c.tmpdir))

        step(2, "Starting pgsteer")
        with cl.Pgsteer(c, name="demo") as px:
            say("      listening on 127.0.0.1:%d, admin on 127.0.0.1:%d, log %s"
                % (px.port, px.admin_port, px.log_path))
            say("      its configuration:")
            with open(px.config_path) as f:
                for line in f.read().splitlines():
                    say("        " + line)
            say("      while the demo runs, connect with:  psql 'host=127.0.0.1 port=%d "
                "user=app password=secret dbname=app'" % px.port)

            step(3, "Creating pgbench's tables on the primary (pgbench -i -s 1)")
            p = subprocess.run(pgbench_cmd(c, c.primary_port, ["-i", "-s", "1", "-q"]),
                               env=pgbench_env(), capture_output=True, text=True,
                               timeout=120, stdin=subprocess.DEVNULL)
            if p.returncode != 0:
                say("      pgbench -i failed:\n" + p.stderr)
                return 1
            c.wait_replay()
            say("      100000 accounts created; both replicas have replayed them")
            before = node_stats(c)

            step(4, "Running %d s of mixed work through pgsteer: %d read-only sessions "
                    "(pgbench select-only) and 1 read-write session (pgbench tpcb-like) at "
                    "the same time" % (SECONDS, READERS))
            common = ["-n", "-T", str(SECONDS)]
            runs = [("readers", common + ["-S", "-c", str(READERS), "-j", "2"]),
                    ("writers", common + ["-c", "1"])]
            procs = [(label, subprocess.Popen(pgbench_cmd(c, px.port, args), env=pgbench_env(),
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True, stdin=subprocess.DEVNULL))
                     for label, args in runs]
            bench_ok = True
            for label, proc in procs:
                out, err = proc.communicate(timeout=SECONDS + 60)
                n = re.search(r"number of transactions actually processed: (\d+)", out)
                failed = re.search(r"number of failed transactions: (\d+)", out)
                say("      %-8s %8s transactions, %s failed" % (
                    label, n.group(1) if n else "?", failed.group(1) if failed else "?"))
                if proc.returncode != 0 or (failed and failed.group(1) != "0") or not n:
                    bench_ok = False
                    say("      pgbench (%s) exited with status %d:" % (label, proc.returncode))
                    for line in err.strip().splitlines()[-10:]:
                        say("        " + line)

            say("\n      Asking pgsteer's admin endpoint (GET /status):")
            status = fetch_status(px)
            if status is not None:
                show_status(status)

        step(5, "Where the work went")
        wait_idle(c)
        after = node_stats(c)
        seen = {}
        for node in (status or {}).get("nodes") or []:
            if isinstance(node, dict) and "name" in node:
                seen[node["name"]] = node
        xacts = {n.name: after[n.name][0] - before[n.name][0] for n in c.nodes}
        total = sum(xacts.values()) or 1
        say("      Each node's own statistics (pg_stat_database)%s:"
            % (" and pgsteer's counters (/status)" if seen else ""))
        head = "      %-9s %-8s %-6s %13s %7s %13s" % ("node", "role", "port", "transactions",
                                                     "share", "rows written")
        if seen:
            head += "  %-6s %9s %9s" % ("state", "reads", "other")
        say(head)
        for n in c.nodes:
            w = after[n.name][1] - before[n.name][1]
            line = "      %-9s %-8s %-6d %13d %6.1f%% %13d" % (
                n.name, n.role, n.port, xacts[n.name], 100.0 * xacts[n.name] / total, w)
            if seen:
                s = seen.get(n.name, {})
                line += "  %-6s %9s %9s" % (s.get("state", "?"), s.get("reads", "?"),
                                            s.get("writes", "?"))
            say(line)
        if seen:
            say("      (state, reads, other: pgsteer's view; other = statements it sent there "
                "for a")
            say("      reason other than being a read: a write, a transaction, ...)")
        on_replicas = 100.0 * sum(xacts[n.name] for n in c.nodes[1:]) / total
        say("")
        as_expected = (bench_ok and on_replicas >= 50 and xacts["primary"] > 0
                       and all(xacts[n.name] > 0 for n in c.nodes[1:]))
        if as_expected:
            say("      %.0f%% of the transactions ran on the replicas: the read-only "
                "sessions'." % on_replicas)
            say("      The read-write session ran on the primary, which wrote every row (a "
                "replica")
            say("      only replays the primary's WAL, and these counters leave replay out).")
            say("      A session that writes also reads from the primary until a replica has")
            say("      replayed its write (consistency: session, the default%s), so a session"
                % ("; see docs/consistency.md"
                   if os.path.exists(os.path.join(REPO, "docs", "consistency.md")) else ""))
            say("      that mixes both mostly stays there.")
            say("      Each session keeps the replica it was given while that replica stays")
            say("      eligible (read_balance: session, the default), so three read-only")
            say("      sessions split 2:1 between two replicas; read_balance: statement")
            say("      spreads every read instead.")
        else:
            say("      That is not the expected split (most transactions on the replicas, "
                "the")
            say("      read-write ones on the primary, and no failures). pgsteer's log:")
            px.dump_log(30, out=sys.stdout)
    say("\nStopped pgsteer and PostgreSQL and removed the temporary directory.")
    return 0 if as_expected else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except cl.ClusterError as e:
        say("\ndemo failed: %s" % e)
        sys.exit(1)
    except KeyboardInterrupt:
        say("\ninterrupted; everything was stopped")
        sys.exit(130)
