# SPDX-License-Identifier: MIT
"""TLS between pgsteer and the nodes (server_tls), and between applications and pgsteer
(client_tls). A primary that takes the application's
connections over TLS only (pg_hba: `hostnossl ... reject`) with a certificate of a test CA
naming 127.0.0.1, and a replica without TLS. The monitor reaches the nodes over their
Unix-domain sockets (where PostgreSQL has no TLS), so that each test sees what pgsteer's own
connections do: the monitor keeps both nodes eligible whatever the mode. pgsteer shows
applications the same certificate as the primary (it names 127.0.0.1), and an application may
show one of the test CA (CN app) or of the other CA."""

import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402
from cluster import (APP_DB, APP_PASSWORD, APP_USER, Cluster, Pgsteer, make_certs,  # noqa: E402
                     openssl, run_psql)
from wire import Bind, Conn, Execute, Parse, Query, Sync, WireError  # noqa: E402

cluster = None
certs = None

SSL_OF_SELF = "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()"


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

    def test_an_extended_read_whose_replica_cannot_be_reached_runs_elsewhere(self):
        # An extended batch kept while its replica backend logs in is routed again when that
        # login fails: here to the primary (the only other node), its named statement made
        # there, and the session's settings with it.
        px = self.proxy("{mode: verify-full, ca_file: %s}" % os.path.join(certs, "ca.crt"))
        primary = str(cluster.primary_port)
        c = Conn(px.port)
        try:
            c.send(Query("set application_name = 'ext-moved'"))
            c.until_ready()
            c.send(Parse("select inet_server_port(), $1::int, current_setting('application_name')",
                         name="s1") + Bind(stmt="s1", params=("7",)) + Execute() + Sync)
            out = c.until_ready()
            self.assertEqual([m for m in out if m[0] == "E"], [])
            self.assertIn(("D", (primary, "7", "ext-moved")), out)
            # the statement is the session's: bound again, and used after other traffic
            c.send(Bind(stmt="s1", params=("8",)) + Execute() + Sync)
            self.assertIn(("D", (primary, "8", "ext-moved")), c.until_ready())
        finally:
            c.close()
        self.assertEqual(read_retries(px), 1)
        with open(px.log_path) as f:
            self.assertIn("a replica could not be reached for a read; routing it again",
                          f.read())

    def test_pipelined_extended_reads_whose_replica_cannot_be_reached(self):
        # Three read batches queued on the backend before its login fails are routed again
        # together, in order; a simple Query queued behind them is not kept, and then all of
        # them hear 08001 (the session goes on).
        px = self.proxy("{mode: verify-full, ca_file: %s}" % os.path.join(certs, "ca.crt"))
        primary = str(cluster.primary_port)
        c = Conn(px.port)
        try:
            batches = b"".join(Parse("select inet_server_port(), %d" % i) + Bind() + Execute() +
                               Sync for i in range(3))
            c.send(batches)
            out = c.until_ready(3)
            self.assertEqual([m[1] for m in out if m[0] in "DE"],
                             [(primary, str(i)) for i in range(3)])
        finally:
            c.close()
        self.assertEqual(read_retries(px), 1)
        px = self.proxy("{mode: verify-full, ca_file: %s}" % os.path.join(certs, "ca.crt"))
        c = Conn(px.port)
        try:
            batch = Parse("select inet_server_port()") + Bind() + Execute() + Sync
            c.send(batch + Query("select 2"))
            out = c.until_ready(2)
            self.assertEqual([m[1] for m in out if m[0] == "E"], ["08001", "08001"])
            self.assertEqual(self.ask(c, "select inet_server_port()"), [(primary,)])
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

    def test_a_revoked_node_certificate_is_refused(self):
        ca = os.path.join(certs, "ca.crt")
        # a CRL of the node's CA that revokes nothing: the node is reached over TLS
        px = self.proxy("{mode: verify-ca, ca_file: %s, crl_file: %s}"
                        % (ca, os.path.join(certs, "empty.crl")))
        self.assertEqual(self.session(px, "/* pgsteer:primary */ " + SSL_OF_SELF),
                         [[("true",)]])
        # one that revokes the node's certificate: refused, and the error says why
        px = self.proxy("{mode: verify-ca, ca_file: %s, crl_file: %s}"
                        % (ca, os.path.join(certs, "revoked.crl")))
        err = self.refused(px)
        self.assertIn("08001", err)
        self.assertIn("certificate revoked", err)
        # CRLs of another CA only: the node's CA has none, and nothing can be checked
        px = self.proxy("{mode: verify-ca, ca_file: %s, crl_file: %s}"
                        % (ca, os.path.join(certs, "other-ca.crl")))
        self.assertIn("unable to get certificate CRL", self.refused(px))
        # require checks nothing, so the CRL plays no part
        px = self.proxy("{mode: require, crl_file: %s}" % os.path.join(certs, "revoked.crl"))
        self.assertEqual(self.session(px, "/* pgsteer:primary */ " + SSL_OF_SELF),
                         [[("true",)]])

    def test_a_file_that_holds_no_crl_is_refused_at_start(self):
        px = Pgsteer(cluster, extra_yaml="server_tls: {mode: verify-ca, ca_file: %s, "
                     "crl_file: %s}\n" % (os.path.join(certs, "ca.crt"),
                                          os.path.join(certs, "ca.crt")))
        px.monitor_host = cluster.sockdir
        self.addCleanup(px.stop)
        with self.assertRaises(Exception):
            px.start()
        with open(px.log_path) as f:
            log = f.read()
        self.assertIn("server_tls.crl_file %s: no CRL in PEM form could be read"
                      % os.path.join(certs, "ca.crt"), log)

    def test_min_protocol_and_ciphers_to_the_node(self):
        def node_max(version):
            cluster.psql(cluster.primary_port, ["alter system set ssl_max_protocol_version = "
                                                "'%s'" % version, "select pg_reload_conf()"],
                         user="postgres", db="postgres")
        tls_of_self = ("/* pgsteer:primary */ select version || ' ' || cipher from pg_stat_ssl "
                       "where pid = pg_backend_pid()")
        node_max("TLSv1.2")  # a node that stops at TLS 1.2
        try:
            px = self.proxy("{mode: require, ciphers: ECDHE-RSA-AES128-GCM-SHA256}")
            self.assertEqual(self.session(px, tls_of_self),
                             [[("TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256",)]])
            px = self.proxy("{mode: require, min_protocol: TLSv1.3}")
            err = self.refused(px)
            self.assertIn("08001", err)
            self.assertIn("TLS handshake with the node failed", err)
        finally:
            node_max("")
        self.assertEqual(self.session(px, tls_of_self)[0][0][0].split()[0], "TLSv1.3")

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


def client_tls_yaml(mode, ca=None, crl=None, more=""):
    """pgsteer's client_tls with the test certificate (and ca_file, crl_file when given, and
    the keys of `more`, "min_protocol: TLSv1.3" say), TLS to the nodes where they offer it (the
    primary takes nothing else; the replica has none), and an admin user."""
    ca_part = ", ca_file: %s" % os.path.join(certs, ca) if ca else ""
    if crl:
        ca_part += ", crl_file: %s" % crl
    if more:
        ca_part += ", " + more
    return ("client_tls: {mode: %s, cert_file: %s, key_file: %s%s}\n"
            "server_tls: {mode: prefer}\n"
            "admin_users:\n  - {name: admin, password: admin-secret}\n"
            % (mode, os.path.join(certs, "server.crt"), os.path.join(certs, "server.key"), ca_part))


class ClientTlsTest(unittest.TestCase):
    def proxy(self, mode, ca=None, extra_yaml="", crl=None, more="", **kw):
        px = Pgsteer(cluster, extra_yaml=client_tls_yaml(mode, ca, crl, more) + extra_yaml, **kw)
        px.monitor_host = cluster.sockdir
        px.start()
        self.addCleanup(px.stop)
        return px

    def psql(self, px, sql, conninfo, check=True, host="127.0.0.1"):
        """psql through px with libpq settings `conninfo` ("sslmode=require ...")."""
        return run_psql(px.port, sql, host=host, password=APP_PASSWORD, check=check,
                        db="dbname=%s %s" % (APP_DB, conninfo))

    def connect(self, px, **kw):
        return psycopg2.connect(host="127.0.0.1", port=px.port, user=APP_USER,
                                password=APP_PASSWORD, dbname=APP_DB, connect_timeout=10, **kw)

    def admin(self, px, sql):
        out = run_psql(px.admin_port, sql, user="admin", db="pgsteer", password="admin-secret")
        return [r.split("|") for r in out.stdout.strip().splitlines() if r]

    def test_allow_serves_tls_and_plain_clients(self):
        px = self.proxy("allow")
        tls = self.connect(px, sslmode="require")
        plain = self.connect(px, sslmode="disable")
        try:
            self.assertTrue(tls.info.ssl_in_use)
            self.assertFalse(plain.info.ssl_in_use)
            self.assertEqual(tls.info.ssl_attribute("protocol")[:5], "TLSv1")
            for conn in (tls, plain):
                with conn.cursor() as cur:
                    cur.execute("insert into tls_t values (3)")
                    cur.execute("select count(*) > 0 from tls_t")
                    self.assertEqual(cur.fetchone(), (True,))
                conn.commit()
            # SHOW CLIENTS tells which client uses TLS; SHOW CONFIG the mode
            clients = self.admin(px, "SHOW CLIENTS")
            self.assertEqual(sorted(r[10][:5] for r in clients), ["", "TLSv1"])
            config = dict(r[:2] for r in self.admin(px, "SHOW CONFIG"))
            self.assertEqual(config["client_tls.mode"], "allow")
            stats = dict(r[:2] for r in self.admin(px, "SHOW STATS"))
            self.assertEqual(stats["client_tls_connections"], "1")
            self.assertEqual(stats["client_tls_handshake_failures"], "0")
        finally:
            tls.close()
            plain.close()

    def test_a_client_checks_pgsteers_certificate(self):
        px = self.proxy("allow")
        ok = self.psql(px, "select 1", "sslmode=verify-full sslrootcert=%s"
                       % os.path.join(certs, "ca.crt"))
        self.assertEqual(ok.stdout.strip(), "1")
        bad = self.psql(px, "select 1", "sslmode=verify-full sslrootcert=%s"
                        % os.path.join(certs, "other-ca.crt"), check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("certificate verify failed", bad.stderr)

    def test_require_refuses_plain_tcp_but_not_a_unix_socket(self):
        sockdir = tempfile.mkdtemp(prefix="px-", dir=cluster.tmpdir)
        px = self.proxy("require", extra_yaml="unix_socket_dir: %s\n" % sockdir)
        plain = self.psql(px, "select 1", "sslmode=disable", check=False)
        self.assertNotEqual(plain.returncode, 0)
        self.assertIn("pgsteer accepts connections over TCP with TLS only (client_tls mode "
                      "require)", plain.stderr)
        self.assertEqual(self.psql(px, "select 1", "sslmode=require").stdout.strip(), "1")
        local = self.psql(px, "select 1", "sslmode=disable", host=sockdir)
        self.assertEqual(local.stdout.strip(), "1")

    def test_verify_ca_needs_a_client_certificate_of_its_ca(self):
        px = self.proxy("verify-ca", ca="ca.crt")
        good = self.psql(px, "select 1", "sslmode=require sslcert=%s sslkey=%s"
                         % (os.path.join(certs, "app.crt"), os.path.join(certs, "app.key")))
        self.assertEqual(good.stdout.strip(), "1")
        for conninfo in ("sslmode=require sslcert=/nonexistent sslkey=/nonexistent",
                         "sslmode=require sslcert=%s sslkey=%s"
                         % (os.path.join(certs, "stranger.crt"),
                            os.path.join(certs, "stranger.key")),
                         "sslmode=disable"):
            bad = self.psql(px, "select 1", conninfo, check=False)
            self.assertNotEqual(bad.returncode, 0, conninfo)
        with open(px.log_path) as f:
            log = f.read()
        self.assertIn("TLS handshake with the client failed", log)
        self.assertIn("the client's certificate", log)

    def test_a_revoked_client_certificate_is_refused(self):
        def cert(name):
            return "sslmode=require sslcert=%s sslkey=%s" % (
                os.path.join(certs, name + ".crt"), os.path.join(certs, name + ".key"))
        d = tempfile.mkdtemp(prefix="crl-", dir=cluster.tmpdir)
        crl = os.path.join(d, "clients.crl")
        shutil.copy(os.path.join(certs, "empty.crl"), crl)
        px = self.proxy("verify-ca", ca="ca.crt", crl=crl)
        self.assertEqual(self.psql(px, "select 1", cert("report")).stdout.strip(), "1")
        held = self.connect(px, sslmode="require", sslcert=os.path.join(certs, "report.crt"),
                            sslkey=os.path.join(certs, "report.key"))
        try:
            # report's certificate revoked: the CRL replaced in place, then a reload
            shutil.copy(os.path.join(certs, "revoked.crl"), crl + ".new")
            os.rename(crl + ".new", crl)
            px.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while True:
                bad = self.psql(px, "select 1", cert("report"), check=False)
                if bad.returncode != 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertNotEqual(bad.returncode, 0)
            # app's is not revoked
            self.assertEqual(self.psql(px, "select 1", cert("app")).stdout.strip(), "1")
            with open(px.log_path) as f:
                log = f.read()
            self.assertIn("TLS handshake with the client failed", log)
            self.assertIn("certificate revoked", log)
            # a session that logged in before keeps going (the check is at the handshake)
            with held.cursor() as cur:
                cur.execute("select 5")
                self.assertEqual(cur.fetchone(), (5,))
        finally:
            held.close()
        # a CRL file of another CA only: the clients' CA has none, so no chain checks out
        px = self.proxy("verify-ca", ca="ca.crt", crl=os.path.join(certs, "other-ca.crl"))
        self.assertNotEqual(self.psql(px, "select 1", cert("app"), check=False).returncode, 0)
        with open(px.log_path) as f:
            self.assertIn("unable to get certificate CRL", f.read())

    def test_min_protocol_and_ciphers(self):
        # TLS 1.3 only: a client that stops at 1.2 cannot connect
        px = self.proxy("require", more="min_protocol: TLSv1.3")
        old = self.psql(px, "select 1", "sslmode=require ssl_max_protocol_version=TLSv1.2",
                        check=False)
        self.assertNotEqual(old.returncode, 0)
        self.assertEqual(self.psql(px, "select 1", "sslmode=require").stdout.strip(), "1")
        # a TLS 1.2 cipher list: a 1.2 client gets the one cipher allowed
        px = self.proxy("require", more="ciphers: ECDHE-RSA-AES256-GCM-SHA384")
        conn = self.connect(px, sslmode="require", ssl_max_protocol_version="TLSv1.2")
        try:
            self.assertEqual(conn.info.ssl_attribute("protocol"), "TLSv1.2")
            self.assertEqual(conn.info.ssl_attribute("cipher"), "ECDHE-RSA-AES256-GCM-SHA384")
        finally:
            conn.close()

    def test_verify_full_wants_the_users_name_in_the_certificate(self):
        def cert(name):
            return "sslmode=require sslcert=%s sslkey=%s" % (
                os.path.join(certs, name + ".crt"), os.path.join(certs, name + ".key"))
        mismatch = ('certificate validation (client_tls verify-full) failed for user "app": '
                    'CN mismatch')
        px = self.proxy("verify-full", ca="ca.crt")
        self.assertEqual(self.psql(px, "select 1", cert("app")).stdout.strip(), "1")
        # a certificate of the right CA for another name (CN report): logging in as app fails
        bad = self.psql(px, "select 1", cert("report"), check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn(mismatch, bad.stderr)
        # (the SQLSTATE, over TLS from the first byte with the same certificate)
        ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
        ctx.set_alpn_protocols(["postgresql"])
        ctx.load_cert_chain(os.path.join(certs, "report.crt"), os.path.join(certs, "report.key"))
        with self.assertRaises(WireError) as cm:
            Conn(px.port, wrap=lambda s: ctx.wrap_socket(s, server_hostname="127.0.0.1"))
        self.assertEqual(str(cm.exception), "28000: " + mismatch)
        config = dict(r[:2] for r in self.admin(px, "SHOW CONFIG"))
        self.assertEqual(config["client_tls.mode"], "verify-full")
        # With auth_method trust the certificate alone logs a client in, as PostgreSQL's
        # cert method: no password asked for.
        px = self.proxy("verify-full", ca="ca.crt", auth_method="trust")
        ok = run_psql(px.port, "select 1", host="127.0.0.1", db="dbname=%s %s"
                      % (APP_DB, cert("app")))
        self.assertEqual(ok.stdout.strip(), "1")
        bad = run_psql(px.port, "select 1", host="127.0.0.1", check=False,
                       db="dbname=%s %s" % (APP_DB, cert("report")))
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn(mismatch, bad.stderr)

    def test_large_answers_pipelines_and_cancel_over_tls(self):
        px = self.proxy("require")
        conn = self.connect(px, sslmode="require")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                big = "y" * (3 * 1024 * 1024)
                cur.execute("select length(%s), md5(%s)", (big, big))
                self.assertEqual(cur.fetchone(), (len(big), hashlib.md5(big.encode()).hexdigest()))
                cur.execute("select g, md5(g::text) from generate_series(1, 50000) g")
                rows = cur.fetchall()
                self.assertEqual(len(rows), 50000)
                self.assertEqual(rows[-1], (50000, "1017bfd4673955ffee4641ad3d481b1c"))
                # a cancel (libpq sends it in plain text, as PostgreSQL allows) stops a
                # statement of a TLS session
                timer = threading.Timer(0.5, conn.cancel)
                timer.start()
                started = time.monotonic()
                with self.assertRaises(psycopg2.errors.QueryCanceled):
                    cur.execute("select pg_sleep(20)")
                timer.join()
                self.assertLess(time.monotonic() - started, 10)
                cur.execute("select 42")
                self.assertEqual(cur.fetchone(), (42,))
        finally:
            conn.close()

    def test_pgbench_over_tls(self):
        px = self.proxy("require")
        script = os.path.join(cluster.tmpdir, "tls-bench.sql")
        with open(script, "w") as f:
            f.write("\\set n random(1, 1000)\nselect :n, repeat('z', :n);\n")
        env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="require")
        for mode in ("simple", "extended", "prepared"):
            p = subprocess.run([os.path.join(cluster.bindir, "pgbench"), "-n", "-h", "127.0.0.1",
                                "-p", str(px.port), "-U", APP_USER, "-c", "4", "-j", "2",
                                "-t", "300", "-M", mode, "-f", script, APP_DB],
                               env=env, capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
            self.assertIn("number of transactions actually processed: 1200/1200", p.stdout)
            self.assertIn("number of failed transactions: 0", p.stdout)

    def test_bytes_that_are_not_tls_close_the_connection(self):
        px = self.proxy("allow")
        s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        try:
            s.sendall(struct.pack("!II", 8, 80877103))  # SSLRequest
            self.assertEqual(s.recv(1), b"S")
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while True:  # a TLS alert at most, then the end
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            self.assertLess(len(got), 64)
        finally:
            s.close()
        # and pgsteer goes on serving others
        conn = self.connect(px, sslmode="require")
        conn.close()
        with open(px.log_path) as f:
            self.assertIn("TLS handshake with the client failed", f.read())
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % px.admin_port) as r:
            metrics = r.read().decode()
        self.assertIn("\npgsteer_client_tls_handshake_failures_total 1\n", metrics)
        self.assertIn("\npgsteer_client_tls_connections 0\n", metrics)

    def direct(self, alpn):
        """A wrap for wire.Conn: TLS from the first byte, as libpq 17's sslnegotiation=direct,
        checking pgsteer's certificate, offering the ALPN protocols `alpn` (None: no ALPN)."""
        ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
        if alpn is not None:
            ctx.set_alpn_protocols(alpn)
        return lambda s: ctx.wrap_socket(s, server_hostname="127.0.0.1")

    def test_tls_from_the_first_byte_with_alpn(self):
        px = self.proxy("require")
        c = Conn(px.port, wrap=self.direct(["postgresql"]))
        try:
            self.assertEqual(c.sock.selected_alpn_protocol(), "postgresql")
            self.assertEqual(c.sock.version()[:5], "TLSv1")
            c.send(Query("select count(*) > 0 from tls_t"))
            self.assertIn(("D", ("t",)), c.until_ready())
            # the client's bytes are plaintext under the TLS: a large statement crosses intact
            big = "x" * 300000
            c.send(Query("select md5('%s')" % big))
            self.assertIn(("D", (hashlib.md5(big.encode()).hexdigest(),)), c.until_ready())
            clients = self.admin(px, "SHOW CLIENTS")
            self.assertEqual([r[10][:5] for r in clients], ["TLSv1"])
        finally:
            c.close()
        with open(px.log_path) as f:
            self.assertNotIn("TLS handshake with the client failed", f.read())

    def test_tls_from_the_first_byte_needs_alpn_postgresql(self):
        px = self.proxy("allow")
        # No ALPN: the handshake completes, then the error comes over TLS, as from PostgreSQL.
        with self.assertRaises(WireError) as cm:
            Conn(px.port, wrap=self.direct(None))
        self.assertIn("08P01", str(cm.exception))
        self.assertIn('direct TLS connection without the ALPN protocol "postgresql"',
                      str(cm.exception))
        # Other protocols only: the handshake fails (no_application_protocol).
        with self.assertRaises(ssl.SSLError) as cm:
            Conn(px.port, wrap=self.direct(["http/1.1", "h2"]))
        self.assertIn("NO APPLICATION PROTOCOL", str(cm.exception).upper())
        # ALPN with postgresql among others is fine, after an SSLRequest too.
        c = Conn(px.port, wrap=self.direct(["h2", "postgresql"]))
        c.close()
        ok = self.psql(px, "select 1", "sslmode=require")
        self.assertEqual(ok.stdout.strip(), "1")

    def test_a_cancel_request_over_tls(self):
        # PostgreSQL 17's libpq sends its cancel requests over TLS when the session used it:
        # the CancelRequest comes after the handshake, as the startup packet would.
        px = self.proxy("require")
        c = Conn(px.port, wrap=self.direct(["postgresql"]))
        try:
            c.send(Query("select pg_sleep(20)"))
            time.sleep(0.5)
            s = self.direct(["postgresql"])(socket.create_connection(("127.0.0.1", px.port),
                                                                     timeout=10))
            started = time.monotonic()
            s.sendall(struct.pack("!IIII", 16, 80877102, c.key[0], c.key[1]))
            self.assertEqual(s.recv(1), b"")  # closed once the cancel is on its way
            s.close()
            self.assertIn(("E", "57014"), c.until_ready())
            self.assertLess(time.monotonic() - started, 10)
            c.send(Query("select 42"))
            self.assertIn(("D", ("42",)), c.until_ready())
        finally:
            c.close()

    def test_a_reload_takes_a_renewed_certificate(self):
        d = tempfile.mkdtemp(prefix="renew-", dir=cluster.tmpdir)
        crt, key = os.path.join(d, "px.crt"), os.path.join(d, "px.key")
        shutil.copy(os.path.join(certs, "server.crt"), crt)
        shutil.copy(os.path.join(certs, "server.key"), key)
        px = Pgsteer(cluster, extra_yaml="client_tls: {mode: require, cert_file: %s, key_file: "
                     "%s}\nserver_tls: {mode: prefer}\n" % (crt, key))
        px.monitor_host = cluster.sockdir
        px.start()
        self.addCleanup(px.stop)
        old = Conn(px.port, wrap=self.direct(["postgresql"]))
        try:
            # renewed in place (a new key, and another CA's signature), as a certificate manager
            # does, then a reload
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=pgsteer renewed",
                    "-keyout", key + ".new", "-out", os.path.join(d, "px.csr"))
            openssl("x509", "-req", "-in", os.path.join(d, "px.csr"), "-days", "2",
                    "-CA", os.path.join(certs, "other-ca.crt"),
                    "-CAkey", os.path.join(certs, "other-ca.key"), "-CAcreateserial",
                    "-extfile", os.path.join(certs, "san.cnf"), "-out", crt + ".new")
            os.rename(crt + ".new", crt)
            os.rename(key + ".new", key)
            px.proc.send_signal(signal.SIGHUP)
            verify = "sslmode=verify-full sslrootcert=%s"
            deadline = time.monotonic() + 10
            while True:
                new = self.psql(px, "select 1", verify % os.path.join(certs, "other-ca.crt"),
                                check=False)
                if new.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertEqual(new.stdout.strip(), "1", new.stderr)
            stale = self.psql(px, "select 1", verify % os.path.join(certs, "ca.crt"),
                              check=False)
            self.assertIn("certificate verify failed", stale.stderr)
            # a client connected before keeps its session
            old.send(Query("select 7"))
            self.assertIn(("D", ("7",)), old.until_ready())
        finally:
            old.close()

    def test_a_client_that_does_not_log_in_in_time_is_closed(self):
        px = self.proxy("allow", extra_yaml="client_login_timeout_ms: 400\n")

        def until_closed(s):
            got, started = b"", time.monotonic()
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return got, time.monotonic() - started
                got += chunk

        silent = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        stalled_auth = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        stalled_tls = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        session = Conn(px.port)
        try:
            body = struct.pack("!I", 196608) + b"user\0app\0database\0app\0\0"
            stalled_auth.sendall(struct.pack("!I", len(body) + 4) + body)
            self.assertEqual(stalled_auth.recv(1), b"R")  # asked for SCRAM; never answered
            stalled_tls.sendall(struct.pack("!II", 8, 80877103))
            self.assertEqual(stalled_tls.recv(1), b"S")  # then no ClientHello
            for s in (silent, stalled_auth):
                got, waited = until_closed(s)
                self.assertIn(b"C57014\0", got)
                self.assertIn(b"canceling authentication due to timeout", got)
                self.assertLess(waited, 5)
            got, waited = until_closed(stalled_tls)
            self.assertEqual(got, b"")  # nothing it could read mid-handshake
            # a session that logged in may stay idle far longer
            time.sleep(1.0)
            session.send(Query("select 1"))
            self.assertIn(("D", ("1",)), session.until_ready())
        finally:
            for s in (silent, stalled_auth, stalled_tls):
                s.close()
            session.close()
        stats = dict(r[:2] for r in self.admin(px, "SHOW STATS"))
        self.assertEqual(stats["client_login_timeouts"], "3")

    def test_tls_from_the_first_byte_without_client_tls(self):
        px = Pgsteer(cluster, extra_yaml="server_tls: {mode: prefer}\n")
        px.monitor_host = cluster.sockdir
        px.start()
        self.addCleanup(px.stop)
        with self.assertRaises((ssl.SSLError, OSError, WireError)):
            Conn(px.port, wrap=self.direct(["postgresql"]))
        self.assertTrue(px.alive())
        self.assertEqual(self.psql(px, "select 1", "sslmode=disable").stdout.strip(), "1")

    def test_a_reload_turns_client_tls_on(self):
        px = Pgsteer(cluster, extra_yaml="server_tls: {mode: prefer}\n")
        px.monitor_host = cluster.sockdir
        px.start()
        self.addCleanup(px.stop)
        off = self.psql(px, "select 1", "sslmode=require", check=False)
        self.assertNotEqual(off.returncode, 0)
        self.assertIn("does not support SSL", off.stderr)
        with open(px.config_path) as f:
            text = f.read()
        with open(px.config_path, "w") as f:
            f.write(text.replace("server_tls: {mode: prefer}\n",
                                 client_tls_yaml("require").split("admin_users")[0]))
        px.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            on = self.psql(px, "select 1", "sslmode=require", check=False)
            if on.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(on.stdout.strip(), "1", on.stderr)


if __name__ == "__main__":
    unittest.main()


class AdminTlsTest(unittest.TestCase):
    """admin_tls: HTTPS and the console over TLS on the admin port, with pgsteer's test
    certificate (naming 127.0.0.1, of the test CA)."""

    def proxy(self, mode, more=""):
        px = Pgsteer(cluster, extra_yaml="admin_tls: {mode: %s, cert_file: %s, key_file: %s%s}\n"
                     "admin_users:\n  - {name: admin, password: admin-secret}\n"
                     % (mode, os.path.join(certs, "server.crt"), os.path.join(certs, "server.key"),
                        more))
        px.monitor_host = cluster.sockdir
        px.start()
        self.addCleanup(px.stop)
        return px

    def https(self, px, path="/healthz", cafile="ca.crt", cert=None):
        ctx = ssl.create_default_context(cafile=os.path.join(certs, cafile))
        if cert:
            ctx.load_cert_chain(os.path.join(certs, cert + ".crt"),
                                os.path.join(certs, cert + ".key"))
        with urllib.request.urlopen("https://127.0.0.1:%d%s" % (px.admin_port, path),
                                    context=ctx, timeout=10) as r:
            return r.status, r.read().decode()

    def http(self, px, path="/healthz"):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (px.admin_port, path),
                                        timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def console(self, px, sql, sslmode, check=True):
        return run_psql(px.admin_port, sql, user="admin", db="dbname=pgsteer sslmode=%s%s" % (
            sslmode, " sslrootcert=%s" % os.path.join(certs, "ca.crt")
            if sslmode.startswith("verify") else ""), password="admin-secret", check=check)

    def test_allow_serves_https_and_http_and_the_console_both_ways(self):
        px = self.proxy("allow")
        self.assertEqual(self.https(px), (200, "ok\n"))
        code, body = self.https(px, "/status")
        self.assertEqual(code, 200)
        self.assertIn('"nodes"', body)
        self.assertEqual(self.http(px), (200, "ok\n"))
        out = self.console(px, "SHOW CONFIG", "verify-full")
        self.assertIn("admin_tls.mode|allow", out.stdout)
        self.assertIn("admin_tls.mode|allow", self.console(px, "SHOW CONFIG", "disable").stdout)
        # another CA's clients cannot check it
        with self.assertRaises(urllib.error.URLError) as cm:
            self.https(px, cafile="other-ca.crt")
        self.assertIn("CERTIFICATE_VERIFY_FAILED", str(cm.exception))

    def test_require_refuses_plain_http_and_plain_console_logins(self):
        px = self.proxy("require")
        code, body = self.http(px)
        self.assertEqual(code, 400)
        self.assertEqual(body, "the admin port takes HTTPS only (admin_tls mode require)\n")
        bad = self.console(px, "SHOW VERSION", "disable", check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("the admin port accepts connections with TLS only (admin_tls mode require)",
                      bad.stderr)
        self.assertEqual(self.https(px), (200, "ok\n"))
        self.assertIn("pgsteer", self.console(px, "SHOW VERSION", "require").stdout)
        # pgsteer status: HTTPS from the configuration, or asked for; checked with --cacert
        p = subprocess.run([px.binary, "status", "-c", px.config_path, "--json"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn('"nodes"', p.stdout)
        admin = "127.0.0.1:%d" % px.admin_port
        for args in (["--tls"], ["--cacert", os.path.join(certs, "ca.crt")]):
            p = subprocess.run([px.binary, "status", "--admin", admin, "--json"] + args,
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
        p = subprocess.run([px.binary, "status", "--admin", admin, "--cacert",
                            os.path.join(certs, "other-ca.crt")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("the admin port's certificate: unable to get local issuer certificate",
                      p.stderr)
        p = subprocess.run([px.binary, "status", "--admin", admin],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("answered 400", p.stderr)

    def test_direct_tls_for_the_console_and_for_http_with_any_alpn(self):
        px = self.proxy("require")

        def ctx(alpn):
            c = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
            if alpn:
                c.set_alpn_protocols(alpn)
            return c
        # the console, TLS from the first byte (ALPN postgresql, as libpq 17 asks)
        c = Conn(px.admin_port, user="admin", password="admin-secret", database="pgsteer",
                 wrap=lambda s: ctx(["postgresql"]).wrap_socket(s, server_hostname="127.0.0.1"))
        try:
            c.send(Query("SHOW VERSION"))
            self.assertTrue(any(m[0] == "D" for m in c.until_ready()))
        finally:
            c.close()
        # HTTP with ALPN http/1.1, h2 alone (none agreed: HTTP/1.1 all the same) or none
        for alpn, agreed in ((["h2", "http/1.1"], "http/1.1"), (["h2"], None), (None, None)):
            with ctx(alpn).wrap_socket(socket.create_connection(("127.0.0.1", px.admin_port),
                                                                timeout=10),
                                       server_hostname="127.0.0.1") as s:
                self.assertEqual(s.selected_alpn_protocol(), agreed)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                got = b""
                while True:
                    chunk = s.recv(4096)  # (a clean close_notify ends it)
                    if not chunk:
                        break
                    got += chunk
            self.assertTrue(got.startswith(b"HTTP/1.1 200 "), got)
            self.assertTrue(got.endswith(b"\r\n\r\nok\n"), got)
        # bytes that begin as TLS but are not: closed, and the port goes on serving
        with socket.create_connection(("127.0.0.1", px.admin_port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01\x00\x05hello")
            while s.recv(4096):
                pass
        self.assertEqual(self.https(px), (200, "ok\n"))
        with open(px.log_path) as f:
            self.assertIn("TLS handshake with the client failed", f.read())

    def test_verify_ca_wants_a_client_certificate_of_its_ca(self):
        px = self.proxy("verify-ca", more=", ca_file: %s" % os.path.join(certs, "ca.crt"))
        self.assertEqual(self.https(px, cert="app"), (200, "ok\n"))
        for cert in (None, "stranger"):  # none, or another CA's
            with self.assertRaises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                self.https(px, cert=cert)
        code, body = self.http(px)
        self.assertEqual((code, body),
                         (400, "the admin port takes HTTPS only (admin_tls mode verify-ca)\n"))
        # the console with the certificate (and its password)
        ok = run_psql(px.admin_port, "SHOW VERSION", user="admin", password="admin-secret",
                      db="dbname=pgsteer sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s"
                      % (os.path.join(certs, "ca.crt"), os.path.join(certs, "app.crt"),
                         os.path.join(certs, "app.key")))
        self.assertIn("pgsteer", ok.stdout)
        # pgsteer status shows one with --cert
        admin = "127.0.0.1:%d" % px.admin_port
        base = [px.binary, "status", "--admin", admin, "--json", "--cacert",
                os.path.join(certs, "ca.crt")]
        p = subprocess.run(base + ["--cert", os.path.join(certs, "app.crt"), "--key",
                                   os.path.join(certs, "app.key")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        p = subprocess.run(base, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("pgsteer status:", p.stderr)
        p = subprocess.run([px.binary, "status", "--key", "x"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)

    def test_bytes_sent_after_the_ssl_request_before_its_answer_are_refused(self):
        px = self.proxy("allow")
        with socket.create_connection(("127.0.0.1", px.admin_port), timeout=10) as s:
            startup = struct.pack("!I", 196608) + b"user\0admin\0\0"
            s.sendall(struct.pack("!II", 8, 80877103) +
                      struct.pack("!I", len(startup) + 4) + startup)
            got = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        self.assertEqual(got[:1], b"E")
        self.assertIn(b"08P01", got)
        self.assertIn(b"received unencrypted data after SSL request", got)

    def test_a_reload_turns_admin_tls_on(self):
        px = self.proxy("allow")
        with open(px.config_path) as f:
            text = f.read()
        with open(px.config_path, "w") as f:
            f.write(text.replace("admin_tls: {mode: allow", "admin_tls: {mode: require"))
        px.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.http(px)[0] != 400 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.http(px)[0], 400)
        self.assertEqual(self.https(px), (200, "ok\n"))
        self.assertIn("admin_tls.mode|require",
                      self.console(px, "SHOW CONFIG", "verify-full").stdout)
