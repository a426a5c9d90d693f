# SPDX-License-Identifier: MIT
"""TLS between pgsteer and the nodes (server_tls). A primary that takes the application's
connections over TLS only (pg_hba: `hostnossl ... reject`) with a certificate of a test CA
naming 127.0.0.1, and a replica without TLS. The monitor reaches the nodes over their
Unix-domain sockets (where PostgreSQL has no TLS), so that each test sees what pgsteer's own
connections do: the monitor keeps both nodes eligible whatever the mode."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Cluster, Pgsteer  # noqa: E402
from wire import Bind, Conn, Execute, Parse, Query, Sync, WireError  # noqa: E402

cluster = None
certs = None

SSL_OF_SELF = "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()"


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def make_certs(d):
    """A test CA with a server certificate for IP 127.0.0.1, and another CA."""
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
    os.chmod(os.path.join(d, "server.key"), 0o600)
    if os.geteuid() == 0:  # the server runs as postgres and must own its key
        for name in os.listdir(d):
            shutil.chown(os.path.join(d, name), "postgres", "postgres")
    return d


def read_retries(px):
    """pgsteer_read_retries_total from px's /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % px.admin_port, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("pgsteer_read_retries_total "):
                return int(line.split()[1])
    raise AssertionError("no pgsteer_read_retries_total")


def setUpModule():
    global cluster, certs
    cluster = Cluster(replicas=1)
    cluster.start()
    certs = make_certs(os.path.join(cluster.tmpdir, "certs"))
    primary = cluster.nodes[0]
    hba = os.path.join(primary.datadir, "pg_hba.conf")
    with open(hba) as f:
        body = f.read()
    with open(hba, "w") as f:
        f.write("hostnossl all app 127.0.0.1/32 reject\n" + body)
    cluster.psql(cluster.primary_port,
                 ["alter system set ssl_cert_file = '%s'" % os.path.join(certs, "server.crt"),
                  "alter system set ssl_key_file = '%s'" % os.path.join(certs, "server.key"),
                  "alter system set ssl = on", "select pg_reload_conf()"],
                 user="postgres", db="postgres")
    cluster.psql(cluster.primary_port, "create table tls_t (id int)")
    cluster.wait_replay()


def tearDownModule():
    if cluster:
        cluster.stop()


class TlsTest(unittest.TestCase):
    def proxy(self, tls_yaml, extra_yaml=""):
        px = Pgsteer(cluster, extra_yaml="server_tls: %s\n" % tls_yaml + extra_yaml)
        px.monitor_host = cluster.sockdir
        px.start()
        self.addCleanup(px.stop)
        return px

    def ask(self, c, sql):
        """Rows of sql's answer, or the SQLSTATE and message of its error."""
        c.send(Query(sql))
        out = c.until_ready()
        errs = [m for m in out if m[0] == "E"]
        if errs:
            return ("E", errs[0][1])
        return [m[1] for m in out if m[0] == "D"]

    def session(self, px, *sqls):
        """The answers (as ask gives them) to sqls sent one by one on a new connection through
        px; a login that fails raises WireError."""
        c = Conn(px.port)
        try:
            return [self.ask(c, sql) for sql in sqls]
        finally:
            c.close()

    def refused(self, px):
        """The WireError of a statement for the primary on a new connection through px."""
        with self.assertRaises(WireError) as cm:
            self.session(px, "/* pgsteer:primary */ select 1")
        return str(cm.exception)

    def test_prefer_uses_tls_where_the_node_offers_it(self):
        px = self.proxy("{mode: prefer}")
        # the primary offers TLS (and takes nothing else from app): used
        self.assertEqual(self.session(px, "/* pgsteer:primary */ " + SSL_OF_SELF,
                                      "insert into tls_t values (1)"), [[("true",)], []])
        # the replica answers 'N': plain text (a new session, which has written nothing that
        # would keep its reads on the primary)
        self.assertEqual(self.session(px, SSL_OF_SELF + " and inet_server_port() = %d"
                                      % cluster.replica_ports[0]), [[("false",)]])

    def test_verify_full_checks_the_certificate_and_its_address(self):
        px = self.proxy("{mode: verify-full, ca_file: %s}" % os.path.join(certs, "ca.crt"))
        # writes and a transaction go over it too
        self.assertEqual(self.session(px, "/* pgsteer:primary */ " + SSL_OF_SELF,
                                      "begin; insert into tls_t values (2); commit"),
                         [[("true",)], []])
        # A replica without TLS is not reached in this mode: the read that was to be its first
        # statement there runs on the primary instead (nothing of it reached the replica), and
        # the next ones go to the primary while pgsteer holds the replica off.
        got = self.session(px, *["select inet_server_port()"] * 3)
        self.assertEqual(got, [[(str(cluster.primary_port),)]] * 3)
        self.assertEqual(read_retries(px), 1)
        with open(px.log_path) as f:
            log = f.read()
        self.assertIn("does not accept TLS", log)
        self.assertIn("a replica could not be reached for a read; retrying it on the primary", log)

    def test_a_read_moved_to_the_primary_keeps_the_sessions_settings(self):
        px = self.proxy("{mode: verify-full, ca_file: %s}" % os.path.join(certs, "ca.crt"))
        got = self.session(px, "set application_name = 'tls-moved'",
                           "select current_setting('application_name'), inet_server_port()")
        self.assertEqual(got, [[], [("tls-moved", str(cluster.primary_port))]])
        self.assertEqual(read_retries(px), 1)

    def test_a_shared_backends_reads_move_to_the_primary(self):
        # multiplex_reads: reads from several sessions queued on one shared backend that
        # cannot log in each run on the primary.
        px = self.proxy("{mode: verify-full, ca_file: %s}" % os.path.join(certs, "ca.crt"),
                        "workers: 1\nmultiplex_reads: on\n")
        conns = [Conn(px.port) for _ in range(3)]
        try:
            for i, c in enumerate(conns):
                c.send(Query("select %d, inet_server_port()" % i))
            got = [[m[1] for m in c.until_ready() if m[0] in "DE"] for c in conns]
        finally:
            for c in conns:
                c.close()
        self.assertEqual(got, [[(str(i), str(cluster.primary_port))] for i in range(3)])
        # (a read that came after the failure went to the primary at once)
        self.assertGreaterEqual(read_retries(px), 1)

    def test_an_extended_read_whose_replica_cannot_be_reached_fails_once(self):
        # Only a simple-protocol read is kept to be run again; an extended one hears 08001 (its
        # connection stays usable), and the next read goes to the primary.
        px = self.proxy("{mode: verify-full, ca_file: %s}" % os.path.join(certs, "ca.crt"))
        c = Conn(px.port)
        try:
            c.send(Parse("select inet_server_port()") + Bind() + Execute() + Sync)
            out = c.until_ready()
            self.assertEqual([m[1] for m in out if m[0] == "E"], ["08001"])
            self.assertEqual(self.ask(c, "select inet_server_port()"),
                             [(str(cluster.primary_port),)])
        finally:
            c.close()
        self.assertEqual(read_retries(px), 0)

    def test_large_answers_and_requests_cross_intact(self):
        # Many TLS records each way: a 2 MB statement text, a 50,000-row answer, pipelined
        # queries whose answers arrive together.
        px = self.proxy("{mode: verify-full, ca_file: %s}" % os.path.join(certs, "ca.crt"))
        c = Conn(px.port)
        try:
            big = "x" * (2 * 1024 * 1024)
            self.assertEqual(self.ask(c, "/* pgsteer:primary */ select length('%s')" % big),
                             [(str(len(big)),)])
            rows = self.ask(c, "/* pgsteer:primary */ select g, md5(g::text) "
                            "from generate_series(1, 50000) g")
            self.assertEqual(len(rows), 50000)
            self.assertEqual(rows[-1], ("50000", "1017bfd4673955ffee4641ad3d481b1c"))
            c.send(b"".join(Query("/* pgsteer:primary */ select %d" % i) for i in range(200)))
            out = c.until_ready(200)
            self.assertEqual([m[1][0] for m in out if m[0] == "D"],
                             [str(i) for i in range(200)])
        finally:
            c.close()

    def test_a_certificate_of_another_ca_is_refused(self):
        px = self.proxy("{mode: verify-ca, ca_file: %s}" % os.path.join(certs, "other-ca.crt"))
        err = self.refused(px)
        self.assertIn("08001", err)
        self.assertIn("certificate", err)

    def test_require_does_not_check_the_certificate(self):
        px = self.proxy("{mode: require, ca_file: %s}" % os.path.join(certs, "other-ca.crt"))
        self.assertEqual(self.session(px, "/* pgsteer:primary */ " + SSL_OF_SELF),
                         [[("true",)]])

    def test_verify_full_refuses_a_certificate_for_another_host(self):
        # The node reached as "localhost", its certificate naming 127.0.0.1 only.
        try:
            addr = socket.getaddrinfo("localhost", None, socket.AF_UNSPEC,
                                      socket.SOCK_STREAM)[0][4][0]
        except OSError:
            addr = None
        if addr != "127.0.0.1":
            self.skipTest("localhost is not 127.0.0.1 first here")
        px = Pgsteer(cluster, extra_yaml="server_tls: {mode: verify-full, ca_file: %s}\n"
                     % os.path.join(certs, "ca.crt"))
        px.node_host = "localhost"
        px.monitor_host = cluster.sockdir
        px.start()
        self.addCleanup(px.stop)
        err = self.refused(px)
        self.assertIn("08001", err)
        self.assertIn("certificate", err)

    def test_without_tls_the_primary_refuses(self):
        # The default (disable): pg_hba's hostnossl line refuses the application.
        px = self.proxy("{mode: disable}")
        self.assertIn("28000", self.refused(px))

    def test_a_reload_changes_the_mode_for_new_connections(self):
        px = self.proxy("{mode: disable}")
        with open(px.config_path) as f:
            text = f.read()
        with open(px.config_path, "w") as f:
            f.write(text.replace("server_tls: {mode: disable}", "server_tls: {mode: require}"))
        px.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                got = self.session(px, "/* pgsteer:primary */ " + SSL_OF_SELF)
                break
            except WireError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.assertEqual(got, [[("true",)]])


if __name__ == "__main__":
    unittest.main()
