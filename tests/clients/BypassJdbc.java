import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

/**
 * Runs the masking bypass cases (tests/masking_bypass.rs) through PgJDBC.
 *
 * <pre>java -cp DIR:postgresql.jar BypassJdbc MODE CASES_FILE</pre>
 *
 * MODE is PgJDBC's preferQueryMode: "simple" or "extended" (text results either way). The
 * connection comes from PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD. CASES_FILE has one
 * line per case ("C", id, rows per fetch or 0, tab-separated) followed by one line per step ("S",
 * the statement with backslash, newline and tab escaped). Before each case the runner selects
 * 'case-marker:ID:' so that the recording relay can attribute bytes to cases; for each case it
 * prints one JSON line with, per step, the rows (values as text) or the error's SQLSTATE. A case
 * with rows per fetch runs its statement in a transaction with that fetch size (a portal run in
 * pieces). A case with a repeat count (a fourth field) runs its statement as a PreparedStatement
 * that many times, past the driver's prepareThreshold.
 */
public class BypassJdbc {
    static final class Case {
        String id;
        int fetchSize;
        int repeat;
        List<String> steps = new ArrayList<>();
    }

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        List<Case> cases = read(args[1]);
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
                + "/" + System.getenv("PGDATABASE") + "?sslmode=disable&preferQueryMode=" + mode;
        Properties props = new Properties();
        props.setProperty("user", System.getenv("PGUSER"));
        props.setProperty("password", System.getenv("PGPASSWORD"));
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
        Connection conn = DriverManager.getConnection(url, props);
        for (Case c : cases) {
            StringBuilder json = new StringBuilder();
            json.append("{\"id\":").append(quote(c.id));
            try {
                marker(conn, c.id);
            } catch (SQLException e) {
                json.append(",\"marker_error\":").append(quote(String.valueOf(e.getMessage())));
                try {
                    conn.close();
                } catch (SQLException ignored) {
                    // The session is gone either way.
                }
                conn = DriverManager.getConnection(url, props);
                marker(conn, c.id);
            }
            json.append(",\"steps\":[");
            boolean first = true;
            for (String sql : c.steps) {
                if (!first) {
                    json.append(',');
                }
                first = false;
                List<List<String>> rows = new ArrayList<>();
                try {
                    if (c.repeat > 0) {
                        // A PreparedStatement run past prepareThreshold (5): the driver then uses
                        // a named server-side statement and binary results for the types it
                        // reads in binary. The last run's rows are kept.
                        try (java.sql.PreparedStatement ps = conn.prepareStatement(sql)) {
                            for (int n = 0; n < c.repeat; n++) {
                                rows.clear();
                                try (ResultSet rs = ps.executeQuery()) {
                                    collect(rs, rows);
                                }
                            }
                        }
                    } else if (c.fetchSize > 0) {
                        conn.setAutoCommit(false);
                        try (Statement st = conn.createStatement()) {
                            st.setFetchSize(c.fetchSize);
                            try (ResultSet rs = st.executeQuery(sql)) {
                                collect(rs, rows);
                            }
                            conn.commit();
                        } catch (SQLException e) {
                            conn.rollback();
                            throw e;
                        } finally {
                            conn.setAutoCommit(true);
                        }
                    } else {
                        try (Statement st = conn.createStatement()) {
                            boolean isResult = st.execute(sql);
                            while (true) {
                                if (isResult) {
                                    try (ResultSet rs = st.getResultSet()) {
                                        collect(rs, rows);
                                    }
                                } else if (st.getUpdateCount() == -1) {
                                    break;
                                }
                                isResult = st.getMoreResults();
                            }
                        }
                    }
                    json.append("{\"ok\":true,\"rows\":[");
                    for (int r = 0; r < rows.size(); r++) {
                        if (r > 0) {
                            json.append(',');
                        }
                        json.append('[');
                        List<String> row = rows.get(r);
                        for (int i = 0; i < row.size(); i++) {
                            if (i > 0) {
                                json.append(',');
                            }
                            json.append(quote(row.get(i)));
                        }
                        json.append(']');
                    }
                    json.append("]}");
                } catch (SQLException e) {
                    json.append("{\"ok\":false,\"sqlstate\":").append(quote(String.valueOf(e.getSQLState())))
                            .append(",\"message\":").append(quote(String.valueOf(e.getMessage()))).append('}');
                }
            }
            json.append("]}");
            out.println(json);
        }
        marker(conn, "end");
        conn.close();
    }

    static void marker(Connection conn, String id) throws SQLException {
        try (Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery("SELECT 'case-marker:" + id + ":'")) {
            while (rs.next()) {
                rs.getString(1);
            }
        }
    }

    static void collect(ResultSet rs, List<List<String>> rows) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        int n = md.getColumnCount();
        while (rs.next()) {
            List<String> row = new ArrayList<>();
            for (int i = 1; i <= n; i++) {
                String v = rs.getString(i);
                row.add(v == null ? "null" : md.getColumnTypeName(i) + ":" + v);
            }
            rows.add(row);
        }
    }

    static List<Case> read(String path) throws Exception {
        List<Case> cases = new ArrayList<>();
        for (String line : Files.readAllLines(Paths.get(path), StandardCharsets.UTF_8)) {
            String[] parts = line.split("\t", -1);
            if (parts[0].equals("C")) {
                Case c = new Case();
                c.id = parts[1];
                c.fetchSize = Integer.parseInt(parts[2]);
                c.repeat = parts.length > 3 ? Integer.parseInt(parts[3]) : 0;
                cases.add(c);
            } else if (parts[0].equals("S")) {
                cases.get(cases.size() - 1).steps.add(unescape(parts[1]));
            }
        }
        return cases;
    }

    static String unescape(String s) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '\\' && i + 1 < s.length()) {
                char n = s.charAt(++i);
                b.append(n == 'n' ? '\n' : n == 't' ? '\t' : n);
            } else {
                b.append(c);
            }
        }
        return b.toString();
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
