# SPDX-License-Identifier: MIT
"""pgsteer logs in to a node with whatever the node asks: SCRAM-SHA-256 (the other tests),
MD5, a cleartext password or trust; and a node that refuses the login turns into a clear error
for the client, not a hang."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import APP_USER, Cluster, Pgsteer  # noqa: E402
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
