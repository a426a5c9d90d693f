# SPDX-License-Identifier: MIT
"""pgsteer logs in to a node with whatever the node asks: SCRAM-SHA-256 (the other tests),
MD5, a cleartext password or trust; and a node that refuses the login turns into a clear error
for the client, not a hang. A user configured with the SCRAM secret of pg_authid instead of a
password logs in to pgsteer and, with the key its login proves, to the node."""

import os
import signal
import sys
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
