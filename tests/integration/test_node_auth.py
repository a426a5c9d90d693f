# SPDX-License-Identifier: MIT
"""pgsteer logs in to a node with whatever the node asks: SCRAM-SHA-256 (the other tests),
MD5, a cleartext password or trust; and a node that refuses the login turns into a clear error
for the client, not a hang. A user configured with the SCRAM secret of pg_authid instead of a
password logs in to pgsteer and, with the key its login proves, to the node."""

import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import APP_DB, APP_USER, Cluster, Pgsteer, run_psql  # noqa: E402
from wire import Conn, Query, WireError  # noqa: E402

cluster = None


def setUpModule():
    global cluster
    cluster = Cluster(replicas=0)
    cluster.start()


def tearDownModule():
    if cluster:
        cluster.stop()


def set_hba(method):
    """Put `host all app 127.0.0.1/32 <method>` first in the primary's pg_hba.conf."""
    node = cluster.nodes[0]
    path = os.path.join(node.datadir, "pg_hba.conf")
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if not ln.startswith("host all %s " % APP_USER)]
    lines.insert(0, "host all %s 127.0.0.1/32 %s" % (APP_USER, method))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    cluster.psql(node.port, "select pg_reload_conf()", user="postgres", db="postgres")


def set_password_encryption(enc):
    cluster.psql(cluster.primary_port,
                 ["set password_encryption = '%s'" % enc,
                  "alter role %s password 'secret'" % APP_USER], user="postgres", db="postgres")


class NodeAuthTest(unittest.TestCase):
    def tearDown(self):
        set_password_encryption("scram-sha-256")
        set_hba("scram-sha-256")

    def login_and_write(self):
        with Pgsteer(cluster) as px:
            c = Conn(px.port)
            try:
                c.send(Query("select inet_server_port(), current_user"))
                out = c.until_ready()
                self.assertEqual(out[1], ("D", (str(cluster.primary_port), APP_USER)))
            finally:
                c.close()

    def test_md5(self):
        set_password_encryption("md5")
        set_hba("md5")
        stored = cluster.psql(cluster.primary_port,
                              "select left(rolpassword, 3) from pg_authid where rolname = '%s'"
                              % APP_USER, user="postgres", db="postgres")
        self.assertEqual(stored, "md5")
        self.login_and_write()

    def test_cleartext_password(self):
        set_hba("password")
        self.login_and_write()

    def test_trust(self):
        set_hba("trust")
        self.login_and_write()

    def test_node_refusing_the_login_is_a_clear_error(self):
        set_hba("reject")
        with Pgsteer(cluster) as px:
            with self.assertRaises(WireError) as cm:
                Conn(px.port)
            self.assertIn("28000", str(cm.exception))
            self.assertIn("primary", str(cm.exception))
            self.assertTrue(px.alive())


if __name__ == "__main__":
    unittest.main()


class ScramSecretTest(unittest.TestCase):
    def setUp(self):
        cluster.psql(cluster.primary_port, ["drop role if exists vault",
                                            "create role vault login password 'v-secret'"],
                     user="postgres", db="postgres")
        self.secret = cluster.psql(cluster.primary_port,
                                   "select rolpassword from pg_authid where rolname = 'vault'",
                                   user="postgres", db="postgres")
        self.assertTrue(self.secret.startswith("SCRAM-SHA-256$4096:"))

    def tearDown(self):
        set_hba("scram-sha-256")

    def proxy(self):
        # backend_idle_max 0: every client's backend logs in anew (none kept from the last);
        # an admin user with the same secret
        px = Pgsteer(cluster, extra_yaml="backend_idle_max: 0\nadmin_users:\n"
                     "  - {name: vault, password: \"%s\"}\n" % self.secret)
        px.users = ((APP_USER, "secret"), ("vault", '"%s"' % self.secret))
        px.start()
        self.addCleanup(px.stop)
        return px

    def ask(self, px, sql, password="v-secret"):
        """The rows of sql's answer, or ("E", error) when the node refuses pgsteer's login for
        it (at the client's login when pgsteer has not yet learnt the node's startup
        parameters, or, once it has, at the statement); a login that pgsteer refuses raises
        WireError."""
        try:
            c = Conn(px.port, user="vault", password=password, database=APP_DB)
        except WireError as e:
            if "could not authenticate to the node" in str(e) or "node primary: " in str(e):
                return ("E", str(e))
            raise
        try:
            c.send(Query(sql))
            out = c.until_ready()
            errs = [m[1] for m in out if m[0] == "E"]
            return ("E", errs[0]) if errs else [m[1] for m in out if m[0] == "D"]
        finally:
            c.close()

    def test_a_secret_in_place_of_the_password(self):
        px = self.proxy()
        for _ in range(2):  # (two logins to the node, each with the key its client proved)
            self.assertEqual(self.ask(px, "select current_user, inet_server_port()"),
                             [("vault", str(cluster.primary_port))])
        with self.assertRaises(WireError) as cm:
            self.ask(px, "select 1", password="wrong")
        self.assertIn("28P01", str(cm.exception))
        with open(px.config_path) as f:
            self.assertNotIn("v-secret", f.read())
        # the admin console checks its users against secrets the same way
        ok = run_psql(px.admin_port, "SHOW VERSION", user="vault", db="pgsteer",
                      password="v-secret")
        self.assertIn("pgsteer", ok.stdout)
        bad = run_psql(px.admin_port, "SHOW VERSION", user="vault", db="pgsteer",
                       password="wrong", check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("password authentication failed", bad.stderr)

    def test_an_auth_file_of_secrets_reloaded(self):
        # PgBouncer's userlist.txt format: the secret there, not in the configuration
        authfile = os.path.join(cluster.tmpdir, "userlist.txt")
        with open(authfile, "w") as f:
            f.write('; from pg_authid\n"vault" "%s"\n' % self.secret)
        px = Pgsteer(cluster, extra_yaml="auth_file: %s\n" % authfile)
        px.start()
        self.addCleanup(px.stop)
        self.assertEqual(self.ask(px, "select current_user"), [("vault",)])
        # a new secret on the node, copied to the file, then a reload
        cluster.psql(cluster.primary_port, "alter role vault password 'v-secret-2'",
                     user="postgres", db="postgres")
        secret = cluster.psql(cluster.primary_port,
                              "select rolpassword from pg_authid where rolname = 'vault'",
                              user="postgres", db="postgres")
        with open(authfile, "w") as f:
            f.write('"vault" "%s"\n' % secret)
        px.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                got = self.ask(px, "select current_user", password="v-secret-2")
                break
            except WireError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.assertEqual(got, [("vault",)])
        with self.assertRaises(WireError):
            self.ask(px, "select 1")  # (the old password)

    def test_the_node_must_store_the_same_secret(self):
        px = self.proxy()
        self.assertEqual(self.ask(px, "select 1"), [("1",)])
        # the same password set again: a new salt, so another secret on the node
        cluster.psql(cluster.primary_port, "alter role vault password 'v-secret'",
                     user="postgres", db="postgres")
        got = self.ask(px, "select 1")
        self.assertEqual(got[0], "E")
        self.assertIn("28P01", str(got[1]))

    def test_a_node_that_asks_for_a_cleartext_password_is_a_clear_error(self):
        px = self.proxy()
        node = cluster.nodes[0]
        path = os.path.join(node.datadir, "pg_hba.conf")
        with open(path) as f:
            body = f.read()
        with open(path, "w") as f:
            f.write("host all vault 127.0.0.1/32 password\n" + body)
        try:
            cluster.psql(node.port, "select pg_reload_conf()", user="postgres", db="postgres")
            got = self.ask(px, "select 1")
        finally:
            with open(path, "w") as f:
                f.write(body)
            cluster.psql(node.port, "select pg_reload_conf()", user="postgres", db="postgres")
        self.assertEqual(got[0], "E")
        self.assertIn("pgsteer holds a SCRAM secret for this user", str(got[1]))


LOOKUP_FN = """
create or replace function public.pgsteer_lookup(u text, out usename name, out passwd text)
returns setof record language sql security definer set search_path = pg_catalog as
$$ select usename, passwd from pg_catalog.pg_shadow where usename = u $$"""


class AuthQueryTest(unittest.TestCase):
    """auth_query: a user named nowhere in pgsteer's configuration logs in with the secret the
    monitor thread looks up on the primary, and pgsteer logs in to the node with the key that
    login proves."""

    @classmethod
    def setUpClass(cls):
        cluster.psql(cluster.primary_port, [
            "drop role if exists dyn", "create role dyn login password 'd-secret'",
            LOOKUP_FN,
            "revoke all on function public.pgsteer_lookup(text) from public",
            "grant execute on function public.pgsteer_lookup(text) to %s" % APP_USER],
            user="postgres", db="postgres")

    def proxy(self, query="SELECT * FROM public.pgsteer_lookup($1)", cache_ms=60000,
              extra="", monitor="{interval_ms: 100}"):
        # (the monitor's user, app, runs the query); backend_idle_max 0: every client's backend
        # logs in anew
        px = Pgsteer(cluster, extra_yaml="auth_query: {query: '%s', cache_ms: %d}\n"
                     "backend_idle_max: 0\n"
                     "admin_users: [{name: admin, password: admin-secret}]\n%s"
                     % (query, cache_ms, extra), monitor=monitor)
        px.start()
        self.addCleanup(px.stop)
        return px

    def ask(self, px, sql, user="dyn", password="d-secret"):
        c = Conn(px.port, user=user, password=password, database=APP_DB)
        try:
            c.send(Query(sql))
            out = c.until_ready()
            errs = [m[1] for m in out if m[0] == "E"]
            self.assertEqual(errs, [])
            return [m[1] for m in out if m[0] == "D"]
        finally:
            c.close()

    def stat(self, px, name):
        out = run_psql(px.admin_port, "SHOW STATS", user="admin", db="pgsteer",
                       password="admin-secret").stdout
        for line in out.splitlines():
            f = line.split("|")
            if f[0] == name:
                return int(f[1])
        raise AssertionError("no stat %s in %r" % (name, out))

    def test_a_user_looked_up_on_the_primary(self):
        px = self.proxy()
        self.assertEqual(self.ask(px, "select current_user, inet_server_port()"),
                         [("dyn", str(cluster.primary_port))])
        self.assertEqual(self.stat(px, "auth_query_lookups"), 1)
        # the second login takes the secret from the cache
        self.assertEqual(self.ask(px, "select 1"), [("1",)])
        self.assertEqual(self.stat(px, "auth_query_lookups"), 1)
        # a wrong password is refused, and drops the cached secret
        with self.assertRaises(WireError) as cm:
            self.ask(px, "select 1", password="wrong")
        self.assertIn("28P01", str(cm.exception))
        self.assertEqual(self.ask(px, "select 1"), [("1",)])
        self.assertEqual(self.stat(px, "auth_query_lookups"), 2)
        # a user the primary does not know: the same refusal as a wrong password
        with self.assertRaises(WireError) as cm:
            self.ask(px, "select 1", user="nobody")
        self.assertIn("28P01", str(cm.exception))
        self.assertEqual(self.stat(px, "auth_query_lookups"), 3)
        self.assertEqual(self.stat(px, "auth_query_errors"), 0)
        # the users of the configuration are not looked up
        self.assertEqual(self.ask(px, "select current_user", user=APP_USER,
                                  password="secret"), [(APP_USER,)])
        self.assertEqual(self.stat(px, "auth_query_lookups"), 3)

    def test_a_password_changed_on_the_primary(self):
        px = self.proxy()
        self.assertEqual(self.ask(px, "select 1"), [("1",)])
        cluster.psql(cluster.primary_port, "alter role dyn password 'd-secret-2'",
                     user="postgres", db="postgres")
        self.addCleanup(cluster.psql, cluster.primary_port, "alter role dyn password 'd-secret'",
                        user="postgres", db="postgres")
        # the cached secret refuses the new password once, then the new one is looked up
        with self.assertRaises(WireError):
            self.ask(px, "select 1", password="d-secret-2")
        self.assertEqual(self.ask(px, "select current_user", password="d-secret-2"),
                         [("dyn",)])
        with self.assertRaises(WireError):
            self.ask(px, "select 1")

    def test_concurrent_logins_on_every_worker(self):
        # cache_ms 0: each login is a lookup, handed from its worker to the monitor and back
        px = self.proxy(cache_ms=0, extra="workers: 2\n")
        results = []

        def one():
            try:
                results.append(self.ask(px, "select current_user"))
            except Exception as e:  # noqa: BLE001 (reported below)
                results.append(e)

        threads = [threading.Thread(target=one) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(results, [[("dyn",)]] * 24)
        self.assertEqual(self.stat(px, "auth_query_lookups"), 24)

    def test_a_query_that_fails_is_a_clear_error(self):
        # a function the primary does not have
        px = self.proxy(query="SELECT * FROM public.no_such_lookup($1)")
        with self.assertRaises(WireError) as cm:
            self.ask(px, "select 1")
        self.assertIn("08001", str(cm.exception))
        self.assertIn('could not look up user "dyn" (auth_query)', str(cm.exception))
        self.assertIn("function public.no_such_lookup(unknown) does not exist",
                      str(cm.exception))
        self.assertEqual(self.stat(px, "auth_query_errors"), 1)
        # the users of the configuration log in all the same
        self.assertEqual(self.ask(px, "select 1", user=APP_USER, password="secret"), [("1",)])

    def test_a_primary_that_cannot_be_reached(self):
        px = self.proxy()
        # the lookups go to where the monitor reaches the primary: nowhere, after a reload
        with open(px.config_path) as f:
            text = f.read()
        port = cluster.primary_port
        bad = text.replace("port: %d, role: primary" % port,
                           "port: %d, role: primary, monitor_port: 1" % port)
        self.assertNotEqual(bad, text)
        with open(px.config_path, "w") as f:
            f.write(bad)
        px.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.ask(px, "select 1")
            except WireError as e:
                if "could not look up" in str(e):
                    self.assertIn("08001", str(e))
                    break
            if time.monotonic() > deadline:
                self.fail("the lookup did not fail after the reload")
            time.sleep(0.1)

    def test_a_reload_during_a_lookup(self):
        # the reload replaces the monitor while it runs a (slow) lookup: the client's lookup is
        # asked again of the new monitor, and the login goes through
        # (connect_timeout_ms bounds each lookup too)
        px = self.proxy(query="SELECT s.* FROM public.pgsteer_lookup($1) s, pg_sleep(1)",
                        monitor="{interval_ms: 100, connect_timeout_ms: 5000}")
        got = []
        t0 = time.monotonic()
        t = threading.Thread(target=lambda: got.append(self.ask(px, "select current_user")))
        t.start()
        time.sleep(0.3)
        px.proc.send_signal(signal.SIGHUP)
        t.join(30)
        elapsed = time.monotonic() - t0
        self.assertEqual(got, [[("dyn",)]])
        self.assertGreater(elapsed, 1.25)  # (the lookup ran twice: it was not answered early)
        self.assertEqual(self.stat(px, "auth_query_lookups"), 1)
