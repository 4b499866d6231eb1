import java.math.BigDecimal;
import java.math.BigInteger;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.time.LocalDateTime;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

/**
 * Drives the gateway's MySQL listener with MariaDB Connector/J (tests/mysql_clients.rs).
 *
 * <pre>java -Duser.timezone=UTC -cp mariadb-java-client.jar MariadbJdbc.java</pre>
 *
 * The connection comes from MY_HOST, MY_PORT, MY_DB, MY_USER and MY_PASSWORD (a read-write
 * identity), MY_READONLY_USER and MY_READONLY_PASSWORD (a read-only one) and MY_CA (the CA of the
 * gateway's TLS certificate). Statements are prepared on the server (useServerPrepStmts). The
 * database has a table `items` (ids 1 to 3) and an empty table `kinds` (see KINDS_TABLE in the
 * test). Prints one JSON object with what each step read, or the error it got.
 */
public class MariadbJdbc {
    static final String INSERT =
            "INSERT INTO kinds (id, big, amount, at, raw, label) VALUES (?, ?, ?, ?, ?, ?)";
    static final String SELECT = "SELECT id, big, amount, at, raw, label FROM kinds";
    static final BigInteger BIG_MAX = new BigInteger("18446744073709551615");
    static final byte[] RAW = {0, (byte) 0xff, (byte) 0xfe, (byte) 0x80, '\'', '\\', '"'};
    static final String LABEL = "caf\u00e9 \ud83d\udc18 \u6f22\u5b57";
    static final Timestamp AT = Timestamp.valueOf("2026-01-02 03:04:05.678901");

    public static void main(String[] args) throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect(env("MY_USER"), env("MY_PASSWORD"))) {
            out.put("product", conn.getMetaData().getDatabaseProductName());
            Statement st = conn.createStatement();
            // A text query, several rows.
            out.put("items", rows(st.executeQuery("SELECT id, label FROM items ORDER BY id")));

            // Server-side prepared statements: one execution, then a batch of two (the driver
            // sends a batch's executions without waiting for each answer).
            List<Object> affected = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement(INSERT)) {
                ps.setInt(1, 1);
                ps.setObject(2, BIG_MAX);
                ps.setBigDecimal(3, new BigDecimal("12345678901234.123456"));
                ps.setTimestamp(4, AT);
                ps.setBytes(5, RAW);
                ps.setString(6, LABEL);
                affected.add(ps.executeUpdate());

                ps.setInt(1, 2);
                ps.setNull(2, Types.BIGINT);
                ps.setNull(3, Types.DECIMAL);
                ps.setNull(4, Types.TIMESTAMP);
                ps.setNull(5, Types.VARBINARY);
                ps.setString(6, "");
                ps.addBatch();
                ps.setInt(1, 3);
                ps.setLong(2, 0);
                ps.setBigDecimal(3, new BigDecimal("-0.000001"));
                ps.setTimestamp(4, Timestamp.valueOf("1999-12-31 23:59:59"));
                ps.setBytes(5, new byte[0]);
                ps.setNull(6, Types.VARCHAR);
                ps.addBatch();
                for (int n : ps.executeBatch()) {
                    affected.add(n);
                }
            }
            out.put("affected", affected);
            try (PreparedStatement ps =
                    conn.prepareStatement(SELECT + " WHERE id >= ? ORDER BY id")) {
                ps.setInt(1, 1);
                out.put("prepared_rows", kinds(ps.executeQuery()));
            }
            // Each kind as a parameter of a lookup.
            Map<String, Object> lookups = new LinkedHashMap<>();
            lookups.put("big", lookup(conn, "big = ?", BIG_MAX));
            lookups.put("amount", lookup(conn, "amount = ?", new BigDecimal("-0.000001")));
            lookups.put("at", lookup(conn, "at = ?", AT));
            lookups.put("raw", lookup(conn, "raw = ?", RAW));
            lookups.put("label", lookup(conn, "label = ?", LABEL));
            lookups.put("empty", lookup(conn, "label = ?", ""));
            lookups.put("null", lookup(conn, "big <=> ?", null));
            out.put("lookups", lookups);
            // The same rows in the text protocol.
            out.put("text_rows", kinds(st.executeQuery(SELECT + " ORDER BY id")));

            // Denied: a text query, and a prepared statement; the connection goes on after each.
            Map<String, Object> denied = new LinkedHashMap<>();
            try {
                st.executeQuery("SELECT value FROM secrets");
                denied.put("text", null);
            } catch (SQLException e) {
                denied.put("text", error(e));
            }
            denied.put("text_after", count(st));
            try (PreparedStatement ps = conn.prepareStatement("DELETE FROM kinds")) {
                ps.executeUpdate();
                denied.put("prepared", null);
            } catch (SQLException e) {
                denied.put("prepared", error(e));
            }
            denied.put("prepared_after", count(st));
            out.put("denied", denied);

            // setQueryTimeout: Connector/J sends MariaDB's `SET STATEMENT max_statement_time=N
            // FOR ...`, judged as the statement it runs.
            Statement timed = conn.createStatement();
            timed.setQueryTimeout(5);
            out.put("timeout_text", rows(timed.executeQuery("SELECT COUNT(*) FROM items")));
            try (PreparedStatement ps =
                    conn.prepareStatement("SELECT label FROM items WHERE id = ?")) {
                ps.setQueryTimeout(5);
                ps.setInt(1, 2);
                out.put("timeout_prepared", rows(ps.executeQuery()));
            }

            // A transaction rolled back: the row it inserted is gone.
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO items VALUES (?, ?)")) {
                ps.setInt(1, 9);
                ps.setString(2, "nine");
                ps.executeUpdate();
            }
            conn.rollback();
            conn.setAutoCommit(true);
            out.put("rolled_back", rows(st.executeQuery("SELECT COUNT(*) FROM items")));
        }

        // A read-only identity reads, and its writes are refused as prepared statements and as
        // text.
        try (Connection ro = connect(env("MY_READONLY_USER"), env("MY_READONLY_PASSWORD"))) {
            Map<String, Object> readonly = new LinkedHashMap<>();
            try (PreparedStatement ps =
                    ro.prepareStatement("SELECT COUNT(*) FROM items WHERE id >= ?")) {
                ps.setInt(1, 1);
                readonly.put("count", rows(ps.executeQuery()));
            }
            try (PreparedStatement ps = ro.prepareStatement("INSERT INTO items VALUES (?, ?)")) {
                ps.setInt(1, 4);
                ps.setString(2, "four");
                ps.executeUpdate();
                readonly.put("prepared", null);
            } catch (SQLException e) {
                readonly.put("prepared", error(e));
            }
            Statement st = ro.createStatement();
            try {
                st.executeUpdate("UPDATE items SET label = 'uno' WHERE id = 1");
                readonly.put("text", null);
            } catch (SQLException e) {
                readonly.put("text", error(e));
            }
            Statement timed = ro.createStatement();
            timed.setQueryTimeout(5);
            try {
                timed.executeUpdate("UPDATE items SET label = 'uno' WHERE id = 1");
                readonly.put("timeout_text", null);
            } catch (SQLException e) {
                readonly.put("timeout_text", error(e));
            }
            readonly.put("after", rows(st.executeQuery("SELECT label FROM items WHERE id = 1")));
            out.put("readonly", readonly);
        }
        System.out.println(json(out));
    }

    static String env(String name) {
        String value = System.getenv(name);
        if (value == null) {
            throw new IllegalStateException(name + " is not set");
        }
        return value;
    }

    /** Over TLS, the gateway's certificate checked against the test CA. */
    static Connection connect(String user, String password) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("useServerPrepStmts", "true");
        p.setProperty("useSsl", "true");
        p.setProperty("serverSslCert", env("MY_CA"));
        p.setProperty("connectTimeout", "10000");
        String url = "jdbc:mariadb://" + env("MY_HOST") + ":" + env("MY_PORT") + "/" + env("MY_DB");
        return DriverManager.getConnection(url, p);
    }

    static Map<String, Object> error(SQLException e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("code", e.getErrorCode());
        m.put("state", e.getSQLState());
        m.put("message", e.getMessage());
        return m;
    }

    static Object count(Statement st) throws SQLException {
        try (ResultSet rs = st.executeQuery("SELECT COUNT(*) FROM kinds")) {
            rs.next();
            return rs.getLong(1);
        }
    }

    /** The ids of the rows of `kinds` where `condition` holds for `value`. */
    static List<Object> lookup(Connection conn, String condition, Object value)
            throws SQLException {
        try (PreparedStatement ps =
                conn.prepareStatement("SELECT id FROM kinds WHERE " + condition + " ORDER BY id")) {
            if (value == null) {
                ps.setNull(1, Types.BIGINT);
            } else {
                ps.setObject(1, value);
            }
            List<Object> ids = new ArrayList<>();
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    ids.add(rs.getInt(1));
                }
            }
            return ids;
        }
    }

    /** Rows of any result, each value as the driver's getObject gives it. */
    static List<Object> rows(ResultSet rs) throws SQLException {
        try (rs) {
            List<Object> rows = new ArrayList<>();
            int columns = rs.getMetaData().getColumnCount();
            while (rs.next()) {
                List<Object> row = new ArrayList<>();
                for (int i = 1; i <= columns; i++) {
                    row.add(rs.getObject(i));
                }
                rows.add(row);
            }
            return rows;
        }
    }

    /** Rows of `SELECT id, big, amount, at, raw, label FROM kinds`, read with typed getters. */
    static List<Object> kinds(ResultSet rs) throws SQLException {
        try (rs) {
            List<Object> rows = new ArrayList<>();
            while (rs.next()) {
                List<Object> row = new ArrayList<>();
                row.add(rs.getInt(1));
                String big = rs.getString(2);
                row.add(big == null ? null : new BigInteger(big));
                BigDecimal amount = rs.getBigDecimal(3);
                row.add(amount == null ? null : amount.toPlainString());
                Timestamp at = rs.getTimestamp(4);
                row.add(at == null ? null : datetime(at.toLocalDateTime()));
                row.add(rs.getBytes(5));
                row.add(rs.getString(6));
                rows.add(row);
            }
            return rows;
        }
    }

    /** As Python's isoformat(" "): microseconds only when there are some. */
    static String datetime(LocalDateTime t) {
        String s = String.format("%04d-%02d-%02d %02d:%02d:%02d", t.getYear(), t.getMonthValue(),
                t.getDayOfMonth(), t.getHour(), t.getMinute(), t.getSecond());
        return t.getNano() == 0 ? s : s + String.format(".%06d", t.getNano() / 1000);
    }

    static String json(Object v) {
        StringBuilder b = new StringBuilder();
        write(b, v);
        return b.toString();
    }

    static void write(StringBuilder b, Object v) {
        if (v == null) {
            b.append("null");
        } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long
                || v instanceof BigInteger) {
            b.append(v);
        } else if (v instanceof byte[]) {
            StringBuilder hex = new StringBuilder();
            for (byte x : (byte[]) v) {
                hex.append(String.format("%02x", x & 0xff));
            }
            write(b, hex.toString());
        } else if (v instanceof Map) {
            b.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) {
                    b.append(',');
                }
                first = false;
                write(b, e.getKey().toString());
                b.append(':');
                write(b, e.getValue());
            }
            b.append('}');
        } else if (v instanceof List) {
            b.append('[');
            boolean first = true;
            for (Object x : (List<?>) v) {
                if (!first) {
                    b.append(',');
                }
                first = false;
                write(b, x);
            }
            b.append(']');
        } else {
            // Strings, and any other type as its text (visible in a failed assertion).
            String s = v instanceof String ? (String) v : v.getClass().getName() + ":" + v;
            b.append('"');
            for (char c : s.toCharArray()) {
                if (c == '"' || c == '\\') {
                    b.append('\\').append(c);
                } else if (c < 0x20) {
                    b.append(String.format("\\u%04x", (int) c));
                } else {
                    b.append(c);
                }
            }
            b.append('"');
        }
    }
}
