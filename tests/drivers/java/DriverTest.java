// SPDX-License-Identifier: MIT
// pgJDBC (Debian's libpostgresql-jdbc-java) through pgsteer. pgJDBC switches a
// PreparedStatement from the unnamed to a named server statement after prepareThreshold (5)
// executions, batches BEGIN with the statements after it under one Sync, sends executeBatch
// as many Bind/Execute pairs under one Sync, and uses named portals for fetchSize cursors.
// Prints "ok NAME" or "FAIL NAME: message" per case (see tests/drivers/run_all.py).

import java.io.ByteArrayInputStream;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class DriverTest {
    static final String HOST = env("PGSTEER_HOST", "127.0.0.1");
    static final int PORT = Integer.parseInt(env("PGSTEER_PORT", "6432"));
    static final String USER = env("PGSTEER_USER", "app");
    static final String PASSWORD = env("PGSTEER_PASSWORD", "secret");
    static final String DB = env("PGSTEER_DB", "app");
    static final int PRIMARY = Integer.parseInt(env("PRIMARY_PORT", "0"));
    static final Set<Integer> REPLICAS = new HashSet<>();
    static final String S = env("DRIVER_SCHEMA", "public");
    static final String UNICODE_TEXT =
        "zażółć gęślą jaźń · Ελληνικά · 日本語 · \uD83D\uDC18";
    static final byte[] ALL_BYTES = new byte[256];
    static {
        for (String p : env("REPLICA_PORTS", "").split(","))
            if (!p.isEmpty()) REPLICAS.add(Integer.parseInt(p));
        for (int i = 0; i < 256; i++) ALL_BYTES[i] = (byte) i;
    }

    static String env(String k, String d) {
        String v = System.getenv(k);
        return v == null ? d : v;
    }

    static class Fail extends RuntimeException {
        Fail(String m) { super(m); }
    }

    static void check(boolean c, String m) { if (!c) throw new Fail(m); }

    static void eq(Object got, Object want, String what) {
        if (!Objects.equals(got, want))
            throw new Fail(what + ": got " + got + ", want " + want);
    }

    static void onReplica(int port, String what) {
        check(REPLICAS.contains(port), what + " ran on port " + port + ", not on a replica "
              + REPLICAS + " (primary " + PRIMARY + ")");
    }

    static void onPrimary(int port, String what) {
        check(port == PRIMARY, what + " ran on port " + port + ", not on the primary " + PRIMARY);
    }

    static void expectState(SQLException e, String want, String what) {
        check(want.equals(e.getSQLState()), what + ": SQLSTATE " + e.getSQLState() + ", want "
              + want + " (" + e.getMessage() + ")");
    }

    static Connection connect(String extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", USER);
        p.setProperty("password", PASSWORD);
        p.setProperty("ApplicationName", "drv-jdbc");
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "60");
        String root = System.getenv("PGSTEER_SSLROOTCERT");
        if (root != null && !root.isEmpty()) { /* pgsteer takes clients over TLS only */
            p.setProperty("sslmode", "verify-full");
            p.setProperty("sslrootcert", root);
        }
        return DriverManager.getConnection("jdbc:postgresql://" + HOST + ":" + PORT + "/" + DB
                                           + (extra.isEmpty() ? "" : "?" + extra), p);
    }

    static Connection connect() throws SQLException { return connect(""); }

    static Object[] row(Connection c, String sql, Object... args) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < args.length; i++) ps.setObject(i + 1, args[i]);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "no row from " + sql);
                Object[] r = new Object[rs.getMetaData().getColumnCount()];
                for (int i = 0; i < r.length; i++) r[i] = rs.getObject(i + 1);
                return r;
            }
        }
    }

    static int port(Connection c, String sql, Object... args) throws SQLException {
        return ((Number) row(c, sql, args)[0]).intValue();
    }

    static long count(Connection c, String where) throws SQLException {
        return ((Number) row(c, "select count(*) from " + S + ".items where " + where)[0])
            .longValue();
    }

    interface Case { void run() throws Exception; }

    static void routing() throws Exception {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            for (int i = 0; i < 4; i++) {
                try (ResultSet rs = st.executeQuery("select inet_server_port()")) {
                    rs.next();
                    onReplica(rs.getInt(1), "Statement read " + i);
                }
                onReplica(port(c, "select inet_server_port() + ? - ?", i, i), "prepared read " + i);
            }
            onPrimary(port(c, "insert into " + S + ".items (k, v) values (?, ?) returning "
                           + "inet_server_port()", 1, "routing"), "insert");
        }
    }

    static void params() throws Exception {
        try (Connection c = connect()) {
            try (PreparedStatement ps = c.prepareStatement(
                     "insert into " + S + ".items (k, v, n) values (?, ?, ?)")) {
                ps.setInt(1, 101); ps.setString(2, "it's \"quoted\""); ps.setNull(3, Types.INTEGER);
                eq(ps.executeUpdate(), 1, "insert 1");
                ps.setInt(1, 102); ps.setString(2, "second"); ps.setInt(3, 7);
                eq(ps.executeUpdate(), 1, "insert 2");
            }
            try (PreparedStatement ps = c.prepareStatement(
                     "select k, v, n from " + S + ".items where k = any(?) order by k")) {
                ps.setArray(1, c.createArrayOf("int4", new Integer[] {101, 102}));
                List<String> got = new ArrayList<>();
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) got.add(rs.getInt(1) + "|" + rs.getString(2) + "|"
                                              + rs.getObject(3));
                }
                eq(got, Arrays.asList("101|it's \"quoted\"|null", "102|second|7"), "rows");
            }
        }
    }

    static void readOwnWrite() throws Exception {
        try (Connection c = connect();
             PreparedStatement ins = c.prepareStatement(
                 "insert into " + S + ".items (k, v) values (?, 'ryw')")) {
            for (int i = 0; i < 8; i++) {  // crosses prepareThreshold on both statements
                ins.setInt(1, 200 + i);
                ins.executeUpdate();
                eq(count(c, "k = " + (200 + i)), 1L, "row " + i + " right after its insert");
            }
        }
    }

    static void prepareThreshold() throws Exception {
        for (String extra : new String[] {"", "prepareThreshold=1", "prepareThreshold=-1"}) {
            try (Connection c = connect(extra);
                 PreparedStatement ps = c.prepareStatement("select ?::int + 1, inet_server_port()")) {
                Set<Integer> ports = new TreeSet<>();
                for (int i = 0; i < 15; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        eq(rs.getInt(1), i + 1, "[" + extra + "] execution " + i);
                        ports.add(rs.getInt(2));
                    }
                }
                check(REPLICAS.containsAll(ports), "[" + extra + "] reads ran on " + ports);
                check(ports.size() == REPLICAS.size(), "[" + extra + "] reads used only " + ports);
                try (PreparedStatement ins = c.prepareStatement(
                         "insert into " + S + ".items (k, v) values (?, 'prep') returning "
                         + "inet_server_port()")) {
                    for (int i = 0; i < 7; i++) {
                        ins.setInt(1, 800 + i);
                        try (ResultSet rs = ins.executeQuery()) {
                            rs.next();
                            onPrimary(rs.getInt(1), "[" + extra + "] prepared insert " + i);
                        }
                    }
                }
                for (int i = 0; i < 7; i++) {  // the named read again, maybe on the primary now
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        eq(rs.getInt(1), i + 1, "[" + extra + "] read after writes " + i);
                    }
                }
                // A named statement that outlives a transaction.
                c.setAutoCommit(false);
                for (int i = 0; i < 3; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        eq(rs.getInt(1), i + 1, "[" + extra + "] in transaction " + i);
                    }
                    c.commit();
                }
                c.setAutoCommit(true);
                ps.setInt(1, 99);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    eq(rs.getInt(1), 100, "[" + extra + "] after the transactions");
                }
            }
        }
    }

    static void txCommit() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);  // BEGIN goes out with the first statement, one Sync
            onPrimary(port(c, "insert into " + S + ".items (k, v) values (300, 'c') returning "
                           + "inet_server_port()"), "insert in tx");
            Object[] r = row(c, "select count(*), inet_server_port() from " + S
                             + ".items where k = ?", 300);
            eq(((Number) r[0]).longValue(), 1L, "read in tx");
            onPrimary((Integer) r[1], "read in tx");
            c.commit();
            c.setAutoCommit(true);
            eq(count(c, "k = 300"), 1L, "committed");
        }
    }

    static void txRollback() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.executeUpdate("insert into " + S + ".items (k, v) values (301, 'rb')");
            }
            eq(count(c, "k = 301"), 1L, "in tx");
            c.rollback();
            eq(count(c, "k = 301"), 0L, "after rollback");
            c.rollback();
        }
    }

    static void txError() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.executeUpdate("insert into " + S + ".items (k, v) values (302, 'e')");
            }
            try {
                row(c, "select 1/?", 0);
                check(false, "1/0 did not fail");
            } catch (SQLException e) {
                expectState(e, "22012", "1/0");
            }
            try {
                row(c, "select ?::int", 1);
                check(false, "statement in failed transaction did not fail");
            } catch (SQLException e) {
                expectState(e, "25P02", "statement after error");
            }
            c.rollback();
            eq(count(c, "k = 302"), 0L, "rolled back");
            Savepoint sp = null;
            try (Statement st = c.createStatement()) {
                st.executeUpdate("insert into " + S + ".items (k, v) values (304, 'outer')");
                sp = c.setSavepoint();
                st.executeUpdate("insert into " + S + ".items (k, v) values (305, 'inner')");
                try {
                    st.executeQuery("select 1/0");
                    check(false, "1/0 did not fail");
                } catch (SQLException e) {
                    expectState(e, "22012", "1/0 after savepoint");
                }
                c.rollback(sp);
            }
            c.commit();
            eq(count(c, "k = 304") * 10 + count(c, "k = 305"), 10L, "savepoint rollback");
            c.setAutoCommit(true);
            eq(((Number) row(c, "select ?::int + 1", 41)[0]).intValue(), 42, "session goes on");
        }
    }

    static void sessionSettings() throws Exception {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            st.execute("set search_path to " + S);
            st.execute("set application_name = 'drv-jdbc-app'");
            List<String> seen = new ArrayList<>();
            boolean ok = true, replica = false;
            try (PreparedStatement ps = c.prepareStatement(
                     "select inet_server_port(), v, current_setting('application_name') "
                     + "from only_here where ?")) {
                for (int i = 0; i < 8; i++) {  // crosses prepareThreshold
                    ps.setBoolean(1, true);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        seen.add(rs.getInt(1) + ":" + rs.getString(2) + ":" + rs.getString(3));
                        ok &= S.equals(rs.getString(2)) && "drv-jdbc-app".equals(rs.getString(3));
                        replica |= REPLICAS.contains(rs.getInt(1));
                    }
                }
            }
            check(ok, "reads saw " + seen + ", want " + S + " and drv-jdbc-app everywhere");
            check(replica, "no read on a replica: " + seen);
            onPrimary(port(c, "insert into items (k, v) values (?, 'sp') returning "
                           + "inet_server_port()", 400), "insert via search_path");
        }
    }

    static void bigResult() throws Exception {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            long n = 0, sum = 0;
            try (ResultSet rs = st.executeQuery(
                     "select g, repeat('x', 40) from generate_series(1, 10000) g")) {
                while (rs.next()) { n++; sum += rs.getLong(1); }
            }
            eq(n, 10000L, "row count");
            eq(sum, 10000L * 10001 / 2, "sum");
            c.setAutoCommit(false);  // fetchSize: named portal, Execute with a row limit
            try (PreparedStatement ps = c.prepareStatement(
                     "select g from generate_series(1, ?) g")) {
                ps.setFetchSize(700);
                ps.setInt(1, 10000);
                n = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) n++;
                }
            }
            c.commit();
            eq(n, 10000L, "rows with fetchSize");
        }
    }

    static void byteaText() throws Exception {
        try (Connection c = connect()) {
            try (PreparedStatement ps = c.prepareStatement(
                     "select b, t, inet_server_port() from " + S + ".blobs where id = ?")) {
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(Arrays.equals(rs.getBytes(1), ALL_BYTES), "seeded bytea differs");
                    eq(rs.getString(2), UNICODE_TEXT, "seeded text");
                    onReplica(rs.getInt(3), "seeded read");
                }
                ps.setInt(1, 2);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getBytes(1) == null && rs.getString(2) == null, "NULLs");
                }
            }
            try (PreparedStatement ps = c.prepareStatement(
                     "insert into " + S + ".blobs values (?, ?, ?)")) {
                ps.setInt(1, 10); ps.setBytes(2, ALL_BYTES); ps.setString(3, UNICODE_TEXT);
                ps.executeUpdate();
                ps.setInt(1, 11); ps.setNull(2, Types.BINARY); ps.setNull(3, Types.VARCHAR);
                ps.executeUpdate();
            }
            Object[] r = row(c, "select b, t from " + S + ".blobs where id = ?", 10);
            check(Arrays.equals((byte[]) r[0], ALL_BYTES), "written bytea differs");
            eq(r[1], UNICODE_TEXT, "written text");
            r = row(c, "select b, t from " + S + ".blobs where id = ?", 11);
            check(r[0] == null && r[1] == null, "written NULLs");
        }
    }

    static void statementTimeout() throws Exception {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            st.execute("set statement_timeout = '300ms'");
            long t0 = System.nanoTime();
            try {
                st.executeQuery("select pg_sleep(5)");
                check(false, "pg_sleep(5) was not cancelled");
            } catch (SQLException e) {
                expectState(e, "57014", "pg_sleep");
            }
            check(System.nanoTime() - t0 < 4_000_000_000L, "cancel too slow");
            st.execute("reset statement_timeout");
            eq(((Number) row(c, "select ?::int", 1)[0]).intValue(), 1, "session after cancel");
            st.setQueryTimeout(1);  // pgJDBC sends a CancelRequest after 1s
            t0 = System.nanoTime();
            try {
                st.executeQuery("select pg_sleep(5)");
                check(false, "setQueryTimeout did not cancel");
            } catch (SQLException e) {
                expectState(e, "57014", "setQueryTimeout");
            }
            check(System.nanoTime() - t0 < 4_000_000_000L, "CancelRequest too slow");
            st.setQueryTimeout(0);
            eq(((Number) row(c, "select ?::int", 2)[0]).intValue(), 2, "session after cancel");
        }
    }

    static void listenNotify() throws Exception {
        try (Connection lc = connect(); Connection nc = connect()) {
            try (Statement st = lc.createStatement()) { st.execute("listen drv_jdbc_chan"); }
            try (Statement st = nc.createStatement()) {
                st.execute("notify drv_jdbc_chan, 'hello ü'");
                st.execute("select pg_notify('drv_jdbc_chan', 'second')");
            }
            PGConnection pg = lc.unwrap(PGConnection.class);
            List<String> got = new ArrayList<>();
            long deadline = System.currentTimeMillis() + 5000;
            while (got.size() < 2 && System.currentTimeMillis() < deadline) {
                PGNotification[] ns = pg.getNotifications(500);
                if (ns != null) for (PGNotification n : ns) got.add(n.getParameter());
            }
            eq(got, Arrays.asList("hello ü", "second"), "notifications");
        }
    }

    static void copy() throws Exception {
        try (Connection c = connect()) {
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < 1000; i++) sb.append(i).append("\trow ").append(i).append(" ü\n");
            sb.append("1000\t\\N\n");
            long n = cm.copyIn("copy " + S + ".copy_t (a, b) from stdin",
                               new ByteArrayInputStream(sb.toString().getBytes(StandardCharsets.UTF_8)));
            eq(n, 1001L, "copy in");
            StringWriter w = new StringWriter();
            cm.copyOut("copy (select a, b from " + S + ".copy_t order by a) to stdout", w);
            eq(w.toString(), sb.toString(), "copy out");
            eq(((Number) row(c, "select ?::int", 1)[0]).intValue(), 1, "session after copy");
        }
    }

    static void pipeline() throws Exception {
        try (Connection c = connect()) {
            try (PreparedStatement ps = c.prepareStatement(
                     "insert into " + S + ".items (k, v) values (?, ?)")) {
                for (int i = 0; i < 200; i++) {
                    ps.setInt(1, 900 + i); ps.setString(2, "batch " + i); ps.addBatch();
                }
                int[] r = ps.executeBatch();
                eq(r.length, 200, "batch results");
            }
            eq(count(c, "k between 900 and 1099"), 200L, "batched rows");
            try (Statement st = c.createStatement()) {
                st.addBatch("insert into " + S + ".items (k, v) values (1200, 'a')");
                st.addBatch("update " + S + ".items set n = 1 where k = 1200");
                st.addBatch("delete from " + S + ".items where k = 1200");
                eq(Arrays.toString(st.executeBatch()), "[1, 1, 1]", "statement batch");
            }
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement(
                     "insert into " + S + ".items (k, v) values (?, ?)")) {
                for (int i = 0; i < 3; i++) {
                    ps.setInt(1, 1300 + i); ps.setString(2, i == 1 ? null : "x"); ps.addBatch();
                }
                ps.setObject(1, "not a number", Types.OTHER); ps.setString(2, "bad"); ps.addBatch();
                try {
                    ps.executeBatch();
                    check(false, "bad batch did not fail");
                } catch (BatchUpdateException e) {
                    // expected
                }
            }
            c.rollback();
            c.setAutoCommit(true);
            eq(count(c, "k between 1300 and 1303"), 0L, "failed batch rolled back");
            try (Connection c2 = connect("reWriteBatchedInserts=true");
                 PreparedStatement ps = c2.prepareStatement(
                     "insert into " + S + ".items (k, v) values (?, ?)")) {
                for (int i = 0; i < 300; i++) {
                    ps.setInt(1, 2000 + i); ps.setString(2, "rw"); ps.addBatch();
                }
                ps.executeBatch();
                eq(count(c2, "k between 2000 and 2299"), 300L, "rewritten batch");
            }
        }
    }

    // pgJDBC's autosave sets a savepoint before every statement of a transaction and rolls
    // back to it when one fails, so that the transaction goes on. Settings changed in such a
    // transaction follow the session to the replicas once it commits: the one that ran, not
    // the one rolled back with its savepoint.
    static void autosave() throws Exception {
        try (Connection c = connect("autosave=always")) {
            try (Statement st = c.createStatement()) {
                st.execute("set pgsteer.consistency = eventual"); // reads stay on replicas
            }
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.execute("set statement_timeout = '7s'");
                try {
                    st.executeQuery("select 1/0");
                    check(false, "1/0 did not fail");
                } catch (SQLException e) {
                    expectState(e, "22012", "1/0 with autosave");
                }
                st.execute("set statement_timeout = '8s'");
                try {
                    st.execute("set statement_timeout = 'abc'");
                    check(false, "a bad statement_timeout was taken");
                } catch (SQLException e) {
                    expectState(e, "22023", "bad setting with autosave");
                }
                eq(row(c, "show statement_timeout")[0], "8s", "setting inside the transaction");
            }
            c.commit();
            c.setAutoCommit(true);
            for (int i = 0; i < 6; i++) {
                onReplica(port(c, "select inet_server_port()"), "read after autosave");
                eq(row(c, "show statement_timeout")[0], "8s", "setting after the commit, " + i);
            }
        }
    }

    static void readOnlyTx() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            c.setReadOnly(true);  // BEGIN READ ONLY
            eq(((Number) row(c, "select count(*) from " + S + ".only_here")[0]).longValue(), 1L,
               "read");
            try (Statement st = c.createStatement()) {
                st.executeUpdate("insert into " + S + ".items (k, v) values (700, 'ro')");
                check(false, "insert in a read-only transaction succeeded");
            } catch (SQLException e) {
                expectState(e, "25006", "insert in read-only tx");
            }
            c.rollback();
            c.setReadOnly(false);
            onPrimary(port(c, "insert into " + S + ".items (k, v) values (701, 'rw') returning "
                           + "inet_server_port()"), "insert after");
            c.commit();
        }
    }

    public static void main(String[] args) throws Exception {
        LinkedHashMap<String, Case> cases = new LinkedHashMap<>();
        cases.put("routing", DriverTest::routing);
        cases.put("params", DriverTest::params);
        cases.put("read_own_write", DriverTest::readOwnWrite);
        cases.put("prepare_threshold", DriverTest::prepareThreshold);
        cases.put("tx_commit", DriverTest::txCommit);
        cases.put("tx_rollback", DriverTest::txRollback);
        cases.put("tx_error", DriverTest::txError);
        cases.put("session_settings", DriverTest::sessionSettings);
        cases.put("big_result", DriverTest::bigResult);
        cases.put("bytea_text", DriverTest::byteaText);
        cases.put("statement_timeout", DriverTest::statementTimeout);
        cases.put("listen_notify", DriverTest::listenNotify);
        cases.put("copy", DriverTest::copy);
        cases.put("pipeline", DriverTest::pipeline);
        cases.put("read_only_tx", DriverTest::readOnlyTx);
        cases.put("autosave", DriverTest::autosave);
        Set<String> only = new HashSet<>(Arrays.asList(args));
        long timeout = (long) (Double.parseDouble(env("DRIVER_CASE_TIMEOUT", "30")) * 1000);
        ExecutorService ex = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        int failed = 0;
        for (Map.Entry<String, Case> e : cases.entrySet()) {
            if (!only.isEmpty() && !only.contains(e.getKey())) continue;
            long t0 = System.nanoTime();
            Future<?> f = ex.submit(() -> { e.getValue().run(); return null; });
            String err = null;
            try {
                f.get(timeout, TimeUnit.MILLISECONDS);
            } catch (TimeoutException te) {
                err = "no answer within " + timeout / 1000 + "s (hung)";
                f.cancel(true);
            } catch (ExecutionException ee) {
                Throwable c = ee.getCause();
                if (!(c instanceof Fail)) c.printStackTrace();
                err = (c instanceof Fail ? "" : c.getClass().getSimpleName() + ": ") + c.getMessage();
            }
            if (err == null) {
                System.out.printf("ok %s (%d ms)%n", e.getKey(), (System.nanoTime() - t0) / 1000000);
            } else {
                failed++;
                System.out.printf("FAIL %s: %s%n", e.getKey(), err.replaceAll("\\s+", " "));
            }
            System.out.flush();
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}
