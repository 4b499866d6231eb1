//! MySQL and MariaDB clients against the binary's gateway: `Server::start` from a TOML file with a
//! `[mysql]` listener on port 0, JWT (HS256) and static-user logins, a policy, and the default
//! audit trail, in front of the local MariaDB, each test in a database of its own. The clients are
//! the real ones: the `mariadb` command-line client, PyMySQL, mysql-connector-python (its
//! pure-Python implementation and its C extension) and mysql2 (Node.js).

mod common;

use common::mysql::{MysqlGateway, MysqlOptions, POLICY};
use common::{assert_success, stderr, stdout, StaticUser};
use std::process::Command;

use serde_json::Value;

/// The static user of these tests: `breakglass` in `admin` (read-write).
fn breakglass() -> StaticUser {
    StaticUser {
        name: "breakglass".into(),
        password: "correct horse battery staple".into(),
        groups: vec!["admin".into()],
    }
}

/// A gateway with [`breakglass`] and a table `items` (3 rows) and a table `secrets` in its
/// database.
async fn gateway_with(options: MysqlOptions) -> MysqlGateway {
    let gw = MysqlGateway::start_with(MysqlOptions {
        users: vec![breakglass()],
        ..options
    })
    .await;
    gw.db.direct(
        "CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(40) NOT NULL); \
         INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three'); \
         CREATE TABLE secrets (id INT PRIMARY KEY, value VARCHAR(40)); \
         INSERT INTO secrets VALUES (1, 'hunter2')",
    );
    gw
}

async fn gateway() -> MysqlGateway {
    gateway_with(MysqlOptions::default()).await
}

/// The keys under which a client program's JSON reports an error: code, SQLSTATE, message.
struct ErrorKeys {
    code: &'static str,
    state: &'static str,
    message: &'static str,
}

/// The mysql-connector-python program written out in this file.
const PYTHON_ERRORS: ErrorKeys = ErrorKeys {
    code: "errno",
    state: "sqlstate",
    message: "msg",
};

/// tests/clients/MariadbJdbc.java.
const JAVA_ERRORS: ErrorKeys = ErrorKeys {
    code: "code",
    state: "state",
    message: "message",
};

/// Checks the denials a client program reported: `denied.text` and `denied.prepared` were refused
/// (1227, 42000) naming their rules, and the session went on after each (`denied.NAME_after`
/// counts 3 rows).
fn assert_denials(out: &Value, keys: &ErrorKeys) {
    let denied = &out["denied"];
    for (name, rule) in [("text", "no-secrets"), ("prepared", "no-unbounded-writes")] {
        assert_eq!(denied[name][keys.code], 1227, "{name}: {out}");
        assert_eq!(denied[name][keys.state], "42000", "{name}: {out}");
        assert!(
            denied[name][keys.message]
                .as_str()
                .is_some_and(|m| m.contains(&format!("(rule \"{rule}\")"))),
            "{name}: {out}"
        );
        assert_eq!(denied[format!("{name}_after")], 3, "{name}: {out}");
    }
}

/// Checks that each of the client program's `readonly.NAME` was refused as read-only.
fn assert_read_only_refusals(out: &Value, keys: &ErrorKeys, names: &[&str]) {
    for name in names {
        let refused = &out["readonly"][name];
        assert_eq!(refused[keys.code], 1227, "{name}: {out}");
        assert!(
            refused[keys.message].as_str().is_some_and(
                |m| m.contains("is read-only") && m.contains("(rule \"builtin:read-only\")")
            ),
            "{name}: {out}"
        );
    }
}

/// The records of the trail whose `event` is `event` and for which `pred` holds.
fn records<'a>(trail: &'a [Value], event: &str, pred: impl Fn(&Value) -> bool) -> Vec<&'a Value> {
    trail
        .iter()
        .filter(|r| r["event"] == event && pred(r))
        .collect()
}

#[tokio::test]
async fn the_mariadb_client_logs_in_with_a_token_or_a_static_password() {
    let gw = gateway().await;
    let token = gw.token("alice", &["engineering"]);

    let out = gw
        .mariadb(
            "alice",
            &token,
            None,
            &[],
            "SELECT id, label FROM items ORDER BY id;\nSELECT DATABASE();\n",
        )
        .await;
    let text = assert_success("a token login", &out);
    assert_eq!(
        text,
        format!("1\tone\n2\ttwo\n3\tthree\n{}\n", gw.database()),
        "{}",
        stderr(&out)
    );

    let out = gw
        .mariadb(
            "breakglass",
            "correct horse battery staple",
            None,
            &[],
            "SELECT COUNT(*) FROM items;\n",
        )
        .await;
    assert_eq!(assert_success("a static user's login", &out), "3\n");

    // A token signed with another key: the server's own code for a refused login.
    let forged = {
        let mut req = identity::MintRequest::new(
            identity::MintKey::Hs256("another-secret-another-secret-another".into()),
            "alice",
            std::time::Duration::from_secs(600),
        );
        req.issuer = Some(common::ISSUER.into());
        req.audience = Some(common::AUDIENCE.into());
        identity::mint_token(&req).unwrap()
    };
    for (what, user, password) in [
        ("a forged token", "alice", forged.as_str()),
        ("a wrong password", "breakglass", "wrong horse"),
        ("garbage", "alice", "not-a-token"),
    ] {
        let out = gw.mariadb(user, password, None, &[], "SELECT 1;\n").await;
        assert!(!out.status.success(), "{what} logged in: {out:?}");
        assert!(
            stderr(&out).contains("ERROR 1045 (28000)"),
            "{what}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "", "{what}");
    }

    // The database name chooses the target: one the gateway does not know is ER_BAD_DB_ERROR.
    let out = gw
        .mariadb("alice", &token, Some("no_such_target"), &[], "SELECT 1;\n")
        .await;
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("ERROR 1049 (42000)"), "{err}");
    assert!(err.contains("no_such_target"), "{err}");

    gw.shutdown().await;
}

#[tokio::test]
async fn a_denied_statement_names_the_rule_and_the_session_goes_on() {
    let gw = gateway().await;
    let token = gw.token("alice", &["engineering"]);
    // One session: --force reports each error and goes on with the next line.
    let out = gw
        .mariadb(
            "alice",
            &token,
            None,
            &[],
            "DELETE FROM items;\n\
             SELECT COUNT(*) FROM items;\n\
             SELECT value FROM secrets;\n\
             UPDATE items SET label = 'x';\n\
             DELETE FROM items WHERE id = 3;\n\
             SELECT COUNT(*) FROM items;\n\
             SELECT CONNECTION_ID() = CONNECTION_ID();\n",
        )
        .await;
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 3, "{err}");
    assert!(
        errors[0].starts_with("ERROR 1227 (42000) at line 1:")
            && errors[0].contains("DELETE and UPDATE need a WHERE clause")
            && errors[0].contains("(rule \"no-unbounded-writes\")"),
        "{err}"
    );
    assert!(
        errors[1].starts_with("ERROR 1227 (42000) at line 3:")
            && errors[1].contains("(rule \"no-secrets\")"),
        "{err}"
    );
    assert!(
        errors[2].starts_with("ERROR 1227 (42000) at line 4:")
            && errors[2].contains("(rule \"no-unbounded-writes\")"),
        "{err}"
    );
    // Every allowed statement ran, in the same session, after the refusals.
    assert_eq!(stdout(&out), "3\n2\n1\n", "{err}");
    assert_eq!(
        gw.db
            .direct("SELECT GROUP_CONCAT(label ORDER BY id) FROM items"),
        "one,two\n",
        "the unbounded DELETE and UPDATE never reached the database"
    );
    gw.shutdown().await;
}

/// Stored programs sent the way the mariadb client sends them (a `DELIMITER` in the script, the
/// whole `CREATE` in one query): judged by what their bodies will run. A procedure whose body only
/// runs filtered statements is created and called; one that hides an unfiltered DELETE in a branch,
/// a trigger that reads the secrets table and a function loaded from a shared library are refused
/// with the rule that applies, and never reach the database.
#[tokio::test]
async fn stored_programs_are_judged_by_what_their_bodies_run() {
    let gw = gateway().await;
    let token = gw.token("alice", &["engineering"]);
    let out = gw
        .mariadb(
            "alice",
            &token,
            None,
            &[],
            "DELIMITER //\n\
             CREATE PROCEDURE relabel(IN which INT, IN label_to VARCHAR(20))\n\
             BEGIN\n\
               DECLARE n INT DEFAULT (SELECT COUNT(*) FROM items WHERE id = which);\n\
               IF n > 0 THEN\n\
                 UPDATE items SET label = label_to WHERE id = which;\n\
               END IF;\n\
             END//\n\
             CREATE PROCEDURE wipe()\n\
             BEGIN\n\
               IF (SELECT COUNT(*) FROM items) > 100 THEN DELETE FROM items; END IF;\n\
             END//\n\
             CREATE TRIGGER leak BEFORE INSERT ON items FOR EACH ROW\n\
               SET NEW.label = (SELECT value FROM secrets LIMIT 1)//\n\
             CREATE FUNCTION native RETURNS STRING SONAME 'udf_example.so'//\n\
             DELIMITER ;\n\
             CALL relabel(2, 'deux');\n\
             SELECT label FROM items WHERE id = 2;\n",
        )
        .await;
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 3, "{err}");
    for (error, rule) in
        errors
            .iter()
            .zip(["no-unbounded-writes", "no-secrets", "no-unbounded-writes"])
    {
        assert!(
            error.starts_with("ERROR 1227 (42000)")
                && error.contains(&format!("(rule \"{rule}\")")),
            "{err}"
        );
    }
    assert_eq!(stdout(&out), "deux\n", "{err}");
    assert_eq!(
        gw.db.direct(
            "SELECT GROUP_CONCAT(ROUTINE_NAME ORDER BY ROUTINE_NAME) FROM information_schema.ROUTINES \
             WHERE ROUTINE_SCHEMA = DATABASE()"
        ),
        "relabel\n",
        "only the procedure whose body passed was created"
    );
    assert_eq!(
        gw.db.direct(
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
        ),
        "0\n"
    );
    // The procedure's creation is recorded with what its body does.
    let trail = gw
        .trail_until("the CREATE PROCEDURE", |t| {
            t.iter().any(|r| {
                r["event"] == "statement_started"
                    && r["sql"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("CREATE PROCEDURE relabel"))
            })
        })
        .await;
    let created = records(&trail, "statement_started", |r| {
        r["sql"]
            .as_str()
            .is_some_and(|s| s.starts_with("CREATE PROCEDURE relabel"))
    });
    assert_eq!(created[0]["classification"], "ddl:create", "{created:#?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_read_only_identity_cannot_write() {
    let gw = gateway().await;
    let analyst = gw.token("bob", &["analyst"]);
    let out = gw
        .mariadb(
            "bob",
            &analyst,
            None,
            &[],
            "SELECT COUNT(*) FROM items;\n\
             INSERT INTO items VALUES (4, 'four');\n\
             UPDATE items SET label = 'uno' WHERE id = 1;\n\
             CREATE TABLE notes (body TEXT);\n\
             DROP TABLE items;\n\
             SELECT label FROM items WHERE id = 1;\n",
        )
        .await;
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 4, "{err}");
    for e in &errors {
        assert!(
            e.starts_with("ERROR 1227 (42000)")
                && e.contains("is read-only")
                && e.contains("(rule \"builtin:read-only\")"),
            "{err}"
        );
    }
    assert_eq!(stdout(&out), "3\none\n", "{err}");
    assert_eq!(
        gw.db.direct(
            "SELECT COUNT(*), GROUP_CONCAT(label ORDER BY id) FROM items; \
             SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'notes'"
        ),
        "3\tone,two,three\n0\n"
    );

    // An identity the access rules do not name gets no session at all.
    let stranger = gw.token("mallory", &["contractors"]);
    let out = gw
        .mariadb("mallory", &stranger, None, &[], "SELECT 1;\n")
        .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("ERROR 1044 (42000)"),
        "{}",
        stderr(&out)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_audit_trail_records_mysql_sessions_statements_and_denials() {
    let gw = gateway().await;
    let token = gw.token("alice", &["engineering"]);
    let out = gw
        .mariadb(
            "alice",
            &token,
            None,
            &[],
            "INSERT INTO items VALUES (4, 'four');\n\
             SELECT label FROM items WHERE id = 4;\n\
             DELETE FROM items;\n",
        )
        .await;
    assert_eq!(stdout(&out), "four\n", "{}", stderr(&out));
    let out = gw
        .mariadb(
            "breakglass",
            "correct horse battery staple",
            None,
            &[],
            "SELECT COUNT(*) FROM items;\n",
        )
        .await;
    assert_eq!(stdout(&out), "4\n", "{}", stderr(&out));
    let out = gw.mariadb("alice", "wrong", None, &[], "SELECT 1;\n").await;
    assert!(stderr(&out).contains("ERROR 1045"), "{}", stderr(&out));

    let trail = gw
        .trail_until("both sessions closed", |t| {
            records(t, "session_closed", |_| true).len() == 2
        })
        .await;

    let opened = records(&trail, "session_opened", |r| r["subject"] == "alice");
    assert_eq!(opened.len(), 1, "{trail:#?}");
    let session = opened[0];
    assert_eq!(session["client"]["protocol"], "mysql", "{session}");
    assert_eq!(session["client"]["tls"], false, "{session}");
    assert_eq!(session["target"], gw.database(), "{session}");
    assert_eq!(session["auth_method"], "jwt", "{session}");
    assert_eq!(session["user"], "alice", "{session}");
    assert_eq!(session["access"], "read_write", "{session}");
    let id = session["session_id"].as_str().expect("session_id");
    let mine = |r: &Value| r["session_id"] == id;

    let started = records(&trail, "statement_started", |r| {
        mine(r) && r["sql"] == "INSERT INTO items VALUES (4, 'four')"
    });
    assert_eq!(started.len(), 1, "{trail:#?}");
    assert_eq!(started[0]["rule"], "engineers", "{}", started[0]);
    let finished = records(&trail, "statement_finished", |r| {
        mine(r) && r["statement_id"] == started[0]["statement_id"]
    });
    assert_eq!(finished.len(), 1, "{trail:#?}");
    assert_eq!(finished[0]["tag"], "OK 1", "{}", finished[0]);
    assert!(finished[0]["error"].is_null(), "{}", finished[0]);

    let select = records(&trail, "statement_started", |r| {
        mine(r) && r["sql"] == "SELECT label FROM items WHERE id = 4"
    });
    assert_eq!(select.len(), 1, "{trail:#?}");
    let select_finished = records(&trail, "statement_finished", |r| {
        mine(r) && r["statement_id"] == select[0]["statement_id"]
    });
    assert_eq!(select_finished.len(), 1, "{trail:#?}");
    assert_eq!(select_finished[0]["rows"], 1, "{}", select_finished[0]);

    let denied = records(&trail, "statement_denied", |r| {
        mine(r) && r["sql"] == "DELETE FROM items"
    });
    assert_eq!(denied.len(), 1, "{trail:#?}");
    assert_eq!(denied[0]["verdict"]["decision"], "deny", "{}", denied[0]);
    assert_eq!(
        denied[0]["verdict"]["rule"], "no-unbounded-writes",
        "{}",
        denied[0]
    );
    assert!(
        records(&trail, "statement_started", |r| r["sql"]
            == "DELETE FROM items")
        .is_empty(),
        "a denied statement never starts"
    );

    let static_user = records(&trail, "session_opened", |r| r["subject"] == "breakglass");
    assert_eq!(static_user.len(), 1, "{trail:#?}");
    assert_eq!(static_user[0]["client"]["protocol"], "mysql");
    assert_ne!(static_user[0]["auth_method"], "jwt", "{}", static_user[0]);

    let failed = records(&trail, "login_failed", |r| r["user"] == "alice");
    assert_eq!(failed.len(), 1, "{trail:#?}");
    assert_eq!(failed[0]["client"]["protocol"], "mysql", "{}", failed[0]);
    gw.shutdown().await;
}

#[tokio::test]
async fn pymysql_parameters_multi_statements_binary_utf8mb4_and_nulls() {
    let gw = gateway().await;
    gw.db.direct(
        "CREATE TABLE docs (id INT PRIMARY KEY, title VARCHAR(100) NULL, body BLOB NULL, \
         tag VARBINARY(16) NULL, score DOUBLE NULL)",
    );
    let out = gw
        .python(
            r#"
import json, os
import pymysql
from pymysql.constants import CLIENT

conn = pymysql.connect(
    host=os.environ["MY_HOST"], port=int(os.environ["MY_PORT"]), user=os.environ["MY_USER"],
    password=os.environ["MY_PASSWORD"], database=os.environ["MY_DB"], charset="utf8mb4",
    client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True, connect_timeout=10,
)
out = {}
with conn.cursor() as cur:
    # Parameters (PyMySQL quotes them into the text), utf8mb4, binary values, NULLs.
    blob = bytes(range(256)) * 4
    cur.execute(
        "INSERT INTO docs (id, title, body, tag, score) VALUES (%s, %s, %s, %s, %s)",
        (1, "caf\u00e9 \U0001F600 \u6f22\u5b57", blob, b"\x00\xff'\\\"", 1.5),
    )
    out["inserted"] = cur.rowcount
    cur.executemany(
        "INSERT INTO docs (id, title, body, tag, score) VALUES (%s, %s, %s, %s, %s)",
        [(2, None, None, None, None), (3, "three", b"", b"", None)],
    )
    out["many"] = cur.rowcount
    cur.execute("SELECT id, title, body, tag, score FROM docs WHERE id = %s", (1,))
    row = cur.fetchone()
    out["title"] = row[1]
    out["blob_ok"] = row[2] == blob
    out["tag"] = row[3].hex()
    out["score"] = row[4]
    cur.execute("SELECT id, title, body, tag, score FROM docs WHERE id IN (%s, %s) ORDER BY id", (2, 3))
    out["nulls"] = [[None if v is None else (v.hex() if isinstance(v, bytes) else v) for v in r] for r in cur.fetchall()]
    cur.execute("SELECT id FROM docs WHERE title = %s", ("caf\u00e9 \U0001F600 \u6f22\u5b57",))
    out["by_emoji"] = cur.fetchall()
    # Several statements in one text (CLIENT_MULTI_STATEMENTS): one result per statement.
    cur.execute(
        "INSERT INTO docs (id, title) VALUES (10, 'ten'); "
        "UPDATE docs SET score = 2.5 WHERE id = 10; "
        "SELECT id, title, score FROM docs WHERE id >= 3 ORDER BY id; "
        "SELECT COUNT(*) FROM docs"
    )
    results = [cur.rowcount]
    while cur.nextset():
        rows = cur.fetchall()
        results.append([list(r) for r in rows] if rows else cur.rowcount)
    out["multi"] = results
    # A denied statement in the middle of a multi-statement text is refused whole.
    try:
        cur.execute("SELECT 1; DELETE FROM docs")
        out["denied"] = None
    except pymysql.err.MySQLError as e:
        out["denied"] = [e.args[0], e.args[1]]
    cur.execute("SELECT COUNT(*) FROM docs")
    out["after"] = cur.fetchone()[0]
conn.close()
print(json.dumps(out))
"#,
        )
        .await;
    let text = assert_success("the PyMySQL script", &out);
    let out: Value = serde_json::from_str(text.trim()).expect("the script prints JSON");
    assert_eq!(out["inserted"], 1, "{out}");
    assert_eq!(out["many"], 2, "{out}");
    assert_eq!(out["title"], "café 😀 漢字", "{out}");
    assert_eq!(out["blob_ok"], true, "{out}");
    assert_eq!(out["tag"], "00ff275c22", "{out}");
    assert_eq!(out["score"], 1.5, "{out}");
    assert_eq!(
        out["nulls"],
        serde_json::json!([[2, null, null, null, null], [3, "three", "", "", null]]),
        "{out}"
    );
    assert_eq!(out["by_emoji"], serde_json::json!([[1]]), "{out}");
    assert_eq!(
        out["multi"],
        serde_json::json!([1, 1, [[3, "three", null], [10, "ten", 2.5]], [[4]]]),
        "{out}"
    );
    assert_eq!(out["denied"][0], 1227, "{out}");
    assert!(
        out["denied"][1]
            .as_str()
            .is_some_and(|m| m.contains("no-unbounded-writes")),
        "{out}"
    );
    assert_eq!(out["after"], 4, "{out}");
    // What the gateway let through is what the database holds.
    assert_eq!(
        gw.db
            .direct("SELECT HEX(tag), LENGTH(body), title FROM docs WHERE id = 1"),
        "00FF275C22\t1024\tcafé 😀 漢字\n"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn mysql2_prepared_statements_and_queries() {
    let gw = gateway().await;
    gw.db.direct(
        "CREATE TABLE events (id INT PRIMARY KEY, name VARCHAR(100) NULL, payload VARBINARY(64) NULL, \
         amount DECIMAL(10,2) NULL, at DATETIME NULL)",
    );
    let out = gw
        .node(
            r#"
const mysql = require('mysql2/promise');
(async () => {
  const conn = await mysql.createConnection({
    host: process.env.MY_HOST, port: Number(process.env.MY_PORT), user: process.env.MY_USER,
    password: process.env.MY_PASSWORD, database: process.env.MY_DB, charset: 'utf8mb4',
    // The gateway asks for the password or token in clear text (over TLS, or from loopback).
    enableCleartextPlugin: true, connectTimeout: 10000, dateStrings: true, decimalNumbers: false,
  });
  const out = {};
  // execute(): COM_STMT_PREPARE, then COM_STMT_EXECUTE with binary parameters.
  const insert = 'INSERT INTO events (id, name, payload, amount, at) VALUES (?, ?, ?, ?, ?)';
  const [r1] = await conn.execute(insert, [1, 'ünïcode 🐘', Buffer.from([0, 255, 39, 92]), '12.50', '2026-01-02 03:04:05']);
  const [r2] = await conn.execute(insert, [2, null, null, null, null]);
  out.affected = [r1.affectedRows, r2.affectedRows];
  const [rows] = await conn.execute('SELECT id, name, HEX(payload) AS hex, payload, amount, at FROM events WHERE id = ?', [1]);
  out.row = rows.map(r => ({ ...r, payload: r.payload.toString('hex') }));
  const [nulls] = await conn.execute('SELECT id, name, payload, amount, at FROM events WHERE id = ?', [2]);
  out.nulls = nulls;
  // The same prepared statement again, with other values (mysql2 caches it).
  const [again] = await conn.execute('SELECT id, name, HEX(payload) AS hex, payload, amount, at FROM events WHERE id = ?', [2]);
  out.again = again.map(r => r.id);
  // query(): parameters quoted into the text by the driver, COM_QUERY.
  const [q] = await conn.query('SELECT COUNT(*) AS n, MAX(name) AS name FROM events WHERE id >= ?', [1]);
  out.query = q;
  // A denied prepared statement: refused at COM_STMT_PREPARE with the rule's name.
  try {
    await conn.execute('DELETE FROM events');
    out.denied = null;
  } catch (e) {
    out.denied = { errno: e.errno, sqlState: e.sqlState, message: e.message };
  }
  const [[count]] = await conn.query('SELECT COUNT(*) AS n FROM events');
  out.after = count.n;
  await conn.end();
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
"#,
        )
        .await;
    let text = assert_success("the mysql2 script", &out);
    let out: Value = serde_json::from_str(text.trim()).expect("the script prints JSON");
    assert_eq!(out["affected"], serde_json::json!([1, 1]), "{out}");
    assert_eq!(
        out["row"],
        serde_json::json!([{
            "id": 1, "name": "ünïcode 🐘", "hex": "00FF275C", "payload": "00ff275c",
            "amount": "12.50", "at": "2026-01-02 03:04:05"
        }]),
        "{out}"
    );
    assert_eq!(
        out["nulls"],
        serde_json::json!([{"id": 2, "name": null, "payload": null, "amount": null, "at": null}]),
        "{out}"
    );
    assert_eq!(out["again"], serde_json::json!([2]), "{out}");
    assert_eq!(
        out["query"],
        serde_json::json!([{"n": 2, "name": "ünïcode 🐘"}]),
        "{out}"
    );
    assert_eq!(out["denied"]["errno"], 1227, "{out}");
    assert_eq!(out["denied"]["sqlState"], "42000", "{out}");
    assert!(
        out["denied"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-unbounded-writes")),
        "{out}"
    );
    assert_eq!(out["after"], 2, "{out}");

    // The executions were judged and audited as the statements they prepared.
    let trail = gw
        .trail_until("the session closed", |t| {
            !records(t, "session_closed", |_| true).is_empty()
        })
        .await;
    let started = records(&trail, "statement_started", |r| {
        r["sql"]
            .as_str()
            .is_some_and(|s| s.starts_with("INSERT INTO events"))
    });
    assert_eq!(started.len(), 2, "{trail:#?}");
    assert!(
        records(&trail, "statement_denied", |r| r["sql"]
            == "DELETE FROM events")
        .len()
            == 1,
        "{trail:#?}"
    );
    gw.shutdown().await;
}

/// The table the driver tests below write and read: one column of each kind whose encoding a
/// driver gets wrong most easily, in the text and in the binary protocol.
const KINDS_TABLE: &str = "CREATE TABLE kinds (id INT PRIMARY KEY, big BIGINT UNSIGNED NULL, \
     amount DECIMAL(20,6) NULL, at DATETIME(6) NULL, raw VARBINARY(32) NULL, label VARCHAR(100) NULL)";

/// What [`KINDS_TABLE`] holds once a driver test inserted its three rows, read directly from
/// MariaDB (not through the gateway).
const KINDS_ROWS: &str = "1\t18446744073709551615\t12345678901234.123456\t2026-01-02 03:04:05.678901\t00FFFE80275C22\tcafé 🐘 漢字\n\
     2\tNULL\tNULL\tNULL\tNULL\t\n\
     3\t0\t-0.000001\t1999-12-31 23:59:59.000000\t\tNULL\n";

/// The drivers' INSERT into [`KINDS_TABLE`], a server-side prepared statement.
const KINDS_INSERT: &str =
    "INSERT INTO kinds (id, big, amount, at, raw, label) VALUES (?, ?, ?, ?, ?, ?)";

/// `SELECT ... FROM kinds` in a form the direct reading and the drivers' readings compare with.
const KINDS_DIRECT: &str =
    "SELECT id, big, amount, DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f'), HEX(raw), label \
     FROM kinds ORDER BY id";

/// The rows of [`KINDS_TABLE`] as the driver scripts print them: numbers as JSON numbers (the
/// unsigned maximum included), decimals and timestamps as text, bytes in hex.
fn kinds_json() -> Value {
    serde_json::json!([
        [
            1,
            18446744073709551615u64,
            "12345678901234.123456",
            "2026-01-02 03:04:05.678901",
            "00fffe80275c22",
            "café 🐘 漢字"
        ],
        [2, null, null, null, null, ""],
        [3, 0, "-0.000001", "1999-12-31 23:59:59", "", null]
    ])
}

/// The script of the mysql-connector-python tests: over TLS (the driver sends a clear-text
/// password only over TLS), server-side prepared statements (`cursor(prepared=True)`) with a
/// parameter of each kind, text queries, a denied statement in each protocol, and a read-only
/// identity's write. `USE_PURE` chooses the implementation.
const MYSQL_CONNECTOR_PYTHON: &str = r#"
import datetime, decimal, json, os, sys
try:
    import mysql.connector
except ImportError as e:
    sys.exit(f"mysql-connector-python is not installed in {sys.executable} ({e}): scripts/test.sh installs it")

def connect(user, password):
    return mysql.connector.connect(
        host=os.environ["MY_HOST"], port=int(os.environ["MY_PORT"]), user=user, password=password,
        database=os.environ["MY_DB"], charset="utf8mb4", collation="utf8mb4_general_ci",
        use_pure=USE_PURE, auth_plugin="mysql_clear_password",
        ssl_ca=os.environ["MY_CA"], ssl_verify_cert=True, connection_timeout=10, autocommit=True,
    )

def plain(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.datetime):
        return v.isoformat(sep=" ")
    return v

def rows(cur):
    return [[plain(v) for v in r] for r in cur.fetchall()]

def error(e):
    return {"errno": e.errno, "sqlstate": e.sqlstate, "msg": e.msg}

# The C extension cannot bind a Python int above 2**63 - 1 as a statement parameter, even talking
# to MariaDB directly (it fails with "Failed raising error"): BIGINT UNSIGNED's maximum goes as a
# Decimal there, which the binary protocol sends as DECIMAL text. It reads back as an int.
BIG_MAX = 18446744073709551615 if USE_PURE else decimal.Decimal("18446744073709551615")

out = {}
conn = connect(os.environ["MY_USER"], os.environ["MY_PASSWORD"])
out["connection"] = type(conn).__name__
cur = conn.cursor()
# A text query, several rows.
cur.execute("SELECT id, label FROM items ORDER BY id")
out["items"] = rows(cur)

# Server-side prepared statements: COM_STMT_PREPARE, then COM_STMT_EXECUTE with binary parameters.
ps = conn.cursor(prepared=True)
insert = "KINDS_INSERT"
affected = []
for params in [
    (1, BIG_MAX, decimal.Decimal("12345678901234.123456"),
     datetime.datetime(2026, 1, 2, 3, 4, 5, 678901), b"\x00\xff\xfe\x80'\\\"", "caf\u00e9 \U0001F418 \u6f22\u5b57"),
    (2, None, None, None, None, ""),
    (3, 0, decimal.Decimal("-0.000001"), datetime.datetime(1999, 12, 31, 23, 59, 59), b"", None),
]:
    ps.execute(insert, params)
    affected.append(ps.rowcount)
out["affected"] = affected
ps.execute("SELECT id, big, amount, at, raw, label FROM kinds WHERE id >= ? ORDER BY id", (1,))
out["prepared_rows"] = rows(ps)
# Each kind as a parameter of a lookup.
lookups = {}
for name, sql, value in [
    ("big", "SELECT id FROM kinds WHERE big = ?", BIG_MAX),
    ("amount", "SELECT id FROM kinds WHERE amount = ?", decimal.Decimal("-0.000001")),
    ("at", "SELECT id FROM kinds WHERE at = ?", datetime.datetime(2026, 1, 2, 3, 4, 5, 678901)),
    ("raw", "SELECT id FROM kinds WHERE raw = ?", b"\x00\xff\xfe\x80'\\\""),
    ("label", "SELECT id FROM kinds WHERE label = ?", "caf\u00e9 \U0001F418 \u6f22\u5b57"),
    ("empty", "SELECT id FROM kinds WHERE label = ?", ""),
    ("null", "SELECT id FROM kinds WHERE big <=> ?", None),
]:
    ps.execute(sql, (value,))
    lookups[name] = [r[0] for r in ps.fetchall()]
out["lookups"] = lookups
# The same rows in the text protocol.
cur.execute("SELECT id, big, amount, at, raw, label FROM kinds ORDER BY id")
out["text_rows"] = rows(cur)

# Denied: in the text protocol, and at COM_STMT_PREPARE; the connection goes on after each.
denied = {}
for name, c, sql in [("text", cur, "SELECT value FROM secrets"), ("prepared", ps, "DELETE FROM kinds")]:
    try:
        c.execute(sql)
        c.fetchall()
        denied[name] = None
    except mysql.connector.Error as e:
        denied[name] = error(e)
    cur.execute("SELECT COUNT(*) FROM kinds")
    denied[name + "_after"] = cur.fetchone()[0]
out["denied"] = denied
ps.execute("SELECT label FROM items WHERE id = ?", (2,))
out["prepared_after"] = rows(ps)
conn.close()

# A read-only identity reads, and its writes are refused in both protocols.
ro = connect(os.environ["MY_READONLY_USER"], os.environ["MY_READONLY_PASSWORD"])
rcur = ro.cursor()
rps = ro.cursor(prepared=True)
readonly = {}
rps.execute("SELECT COUNT(*) FROM items WHERE id >= ?", (1,))
readonly["count"] = rps.fetchone()[0]
for name, c, sql, params in [
    ("prepared", rps, "INSERT INTO items VALUES (?, ?)", (4, "four")),
    ("text", rcur, "UPDATE items SET label = 'uno' WHERE id = 1", None),
]:
    try:
        c.execute(sql, params)
        readonly[name] = None
    except mysql.connector.Error as e:
        readonly[name] = error(e)
rcur.execute("SELECT label FROM items WHERE id = 1")
readonly["after"] = rows(rcur)
out["readonly"] = readonly
ro.close()
print(json.dumps(out))
"#;

/// Runs [`MYSQL_CONNECTOR_PYTHON`] with mysql-connector-python's pure-Python implementation
/// (`use_pure`) or its C extension, and checks what it read and what the database holds.
async fn mysql_connector_python(use_pure: bool) {
    let gw = gateway_with(MysqlOptions {
        tls: true,
        ..MysqlOptions::default()
    })
    .await;
    gw.db.direct(KINDS_TABLE);
    let script = MYSQL_CONNECTOR_PYTHON
        .replace("KINDS_INSERT", KINDS_INSERT)
        .replace("USE_PURE", if use_pure { "True" } else { "False" });
    let out = gw.python(&script).await;
    let text = assert_success("the mysql-connector-python script", &out);
    let out: Value = serde_json::from_str(text.trim()).expect("the script prints JSON");
    // The implementation asked for: without its C extension the driver would fall back to the
    // pure one.
    let implementation = if use_pure {
        "MySQLConnection"
    } else {
        "CMySQLConnection"
    };
    assert_eq!(out["connection"], implementation, "{out}");
    assert_eq!(
        out["items"],
        serde_json::json!([[1, "one"], [2, "two"], [3, "three"]]),
        "{out}"
    );
    assert_eq!(out["affected"], serde_json::json!([1, 1, 1]), "{out}");
    let mut prepared_rows = kinds_json();
    if !use_pure {
        // The C extension reads BIGINT UNSIGNED's maximum in a binary result as -1, talking to
        // MariaDB directly as well; the pure implementation reads the same column definition and
        // row as 18446744073709551615, and so does the text protocol below.
        prepared_rows[0][1] = serde_json::json!(-1);
    }
    assert_eq!(out["prepared_rows"], prepared_rows, "{out}");
    assert_eq!(out["text_rows"], kinds_json(), "{out}");
    assert_eq!(
        out["lookups"],
        serde_json::json!({
            "big": [1], "amount": [3], "at": [1], "raw": [1], "label": [1], "empty": [2], "null": [2]
        }),
        "{out}"
    );
    assert_denials(&out, &PYTHON_ERRORS);
    assert_eq!(out["prepared_after"], serde_json::json!([["two"]]), "{out}");
    let readonly = &out["readonly"];
    assert_eq!(readonly["count"], 3, "{out}");
    assert_read_only_refusals(&out, &PYTHON_ERRORS, &["prepared", "text"]);
    assert_eq!(readonly["after"], serde_json::json!([["one"]]), "{out}");
    stored_and_audited(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn mysql_connector_python_pure_prepared_statements_types_denials_and_read_only() {
    mysql_connector_python(true).await;
}

#[tokio::test]
async fn mysql_connector_python_c_extension_prepared_statements_types_denials_and_read_only() {
    mysql_connector_python(false).await;
}

/// The gateway does not offer compression (CLIENT_COMPRESS), and a client that asks for it anyway
/// is refused at login, saying why: mysql-connector-python's pure implementation asks without
/// looking at the greeting and then compresses every packet, which the gateway cannot read.
#[tokio::test]
async fn mysql_connector_python_asking_for_compression_is_refused_with_the_reason() {
    let gw = gateway_with(MysqlOptions {
        tls: true,
        ..MysqlOptions::default()
    })
    .await;
    let out = gw
        .python(
            r#"
import json, os
import mysql.connector

def connect(compress):
    return mysql.connector.connect(
        host=os.environ["MY_HOST"], port=int(os.environ["MY_PORT"]), user=os.environ["MY_USER"],
        password=os.environ["MY_PASSWORD"], database=os.environ["MY_DB"], use_pure=True,
        auth_plugin="mysql_clear_password", ssl_ca=os.environ["MY_CA"], connection_timeout=10,
        compress=compress,
    )

out = {}
try:
    conn = connect(True)
    cur = conn.cursor()
    cur.execute("SELECT COUNT(*) FROM items")
    out["compressed"] = cur.fetchall()
except mysql.connector.Error as e:
    out["compressed"] = {"errno": e.errno, "msg": e.msg}
conn = connect(False)
cur = conn.cursor()
cur.execute("SELECT COUNT(*) FROM items")
out["plain"] = cur.fetchall()
print(json.dumps(out))
"#,
        )
        .await;
    let text = assert_success("the mysql-connector-python script", &out);
    let out: Value = serde_json::from_str(text.trim()).expect("the script prints JSON");
    assert_eq!(out["compressed"]["errno"], 1235, "{out}");
    assert!(
        out["compressed"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("compression")),
        "{out}"
    );
    assert_eq!(out["plain"], serde_json::json!([[3]]), "{out}");
    // Refused before any session: the only session is the plain login's.
    let trail = gw
        .trail_until("the plain session closed", |t| {
            !records(t, "session_closed", |_| true).is_empty()
        })
        .await;
    assert_eq!(
        records(&trail, "session_opened", |_| true).len(),
        1,
        "{trail:#?}"
    );
    gw.shutdown().await;
}

/// MariaDB Connector/J (Debian's libmariadb-java) over TLS with server-side prepared statements
/// (`useServerPrepStmts`): `tests/clients/MariadbJdbc.java` runs text queries, prepared statements
/// with a parameter of each kind, a batch (whose executions the driver sends without waiting for
/// each answer), a rolled-back transaction, a denied statement in each protocol, and a read-only
/// identity's writes.
#[tokio::test]
async fn mariadb_connector_j_prepared_statements_batches_types_denials_and_read_only() {
    let gw = gateway_with(MysqlOptions {
        tls: true,
        ..MysqlOptions::default()
    })
    .await;
    gw.db.direct(KINDS_TABLE);
    let out = gw.java("MariadbJdbc.java").await;
    let text = assert_success("the Connector/J program", &out);
    let out: Value = serde_json::from_str(text.trim()).expect("the program prints JSON");
    assert_eq!(out["product"], "MariaDB", "{out}");
    assert_eq!(
        out["items"],
        serde_json::json!([[1, "one"], [2, "two"], [3, "three"]]),
        "{out}"
    );
    assert_eq!(out["affected"], serde_json::json!([1, 1, 1]), "{out}");
    assert_eq!(out["prepared_rows"], kinds_json(), "{out}");
    assert_eq!(out["text_rows"], kinds_json(), "{out}");
    assert_eq!(
        out["lookups"],
        serde_json::json!({
            "big": [1], "amount": [3], "at": [1], "raw": [1], "label": [1], "empty": [2], "null": [2]
        }),
        "{out}"
    );
    assert_denials(&out, &JAVA_ERRORS);
    assert_eq!(out["rolled_back"], serde_json::json!([[3]]), "{out}");
    assert_eq!(out["timeout_text"], serde_json::json!([[3]]), "{out}");
    assert_eq!(
        out["timeout_prepared"],
        serde_json::json!([["two"]]),
        "{out}"
    );
    let readonly = &out["readonly"];
    assert_eq!(readonly["count"], serde_json::json!([[3]]), "{out}");
    assert_read_only_refusals(&out, &JAVA_ERRORS, &["prepared", "text", "timeout_text"]);
    assert_eq!(readonly["after"], serde_json::json!([["one"]]), "{out}");
    // The single execution and the batch's two, each audited as the statement prepared.
    let trail = stored_and_audited(&gw).await;
    // Refused at COM_STMT_PREPARE; Connector/J then falls back to a statement of its own (the
    // parameters quoted into the text), which is refused as well and never runs.
    let denied = records(&trail, "statement_denied", |r| {
        r["sql"] == "INSERT INTO items VALUES (?, ?)" && r["verdict"]["rule"] == "builtin:read-only"
    });
    assert_eq!(denied.len(), 1, "{trail:#?}");
    for sql in ["DELETE FROM kinds", "INSERT INTO items VALUES (4, 'four')"] {
        assert!(
            !records(&trail, "statement_denied", |r| r["sql"] == sql).is_empty(),
            "{sql}: {trail:#?}"
        );
        assert!(
            records(&trail, "statement_started", |r| r["sql"] == sql).is_empty(),
            "{sql}: {trail:#?}"
        );
    }
    // setQueryTimeout's statement ran as itself, classified as the read it is.
    let timed = records(&trail, "statement_started", |r| {
        r["sql"].as_str().is_some_and(|s| {
            s.starts_with("SET STATEMENT max_statement_time=5 FOR SELECT COUNT(*) FROM items")
        })
    });
    assert_eq!(timed.len(), 1, "{trail:#?}");
    assert_eq!(timed[0]["classification"], "read", "{timed:#?}");
    gw.shutdown().await;
}

/// TLS logins in a row with each client: a client sends its ClientHello right behind the
/// SSLRequest packet without waiting (the protocol has no answer in between), and the gateway must
/// leave those bytes to the TLS handshake however they arrive.
const TLS_LOGINS: usize = 10;

#[tokio::test]
async fn a_verified_client_certificate_logs_in_without_a_password() {
    let gw = gateway_with(MysqlOptions {
        tls: true,
        client_certs: true,
        extra_config: format!(
            "{POLICY}\n[[policy.access]]\nname = \"carol-by-certificate\"\nsubjects = [\"carol\"]\nmode = \"read-write\"\n"
        ),
        ..MysqlOptions::default()
    })
    .await;
    let pki = gw.pki.as_ref().expect("TLS material");
    let ca = format!("--ssl-ca={}", pki.ca_file.display());
    let carol = pki.client_cert("carol");
    let cert = format!("--ssl-cert={}", carol.cert_file.display());
    let key = format!("--ssl-key={}", carol.key_file.display());
    // No password at all: the certificate is the credential.
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "--no-defaults",
        "--protocol=TCP",
        "--batch",
        "--skip-column-names",
        "--connect-timeout=10",
        "-h127.0.0.1",
    ])
    .arg(format!("-P{}", gw.port()))
    .arg("-ucarol")
    .arg(format!("-D{}", gw.database()))
    .args(["--ssl", &ca, "--ssl-verify-server-cert", &cert, &key]);
    let out = tokio::task::spawn_blocking(move || {
        common::run_with_input(
            cmd,
            Some(b"SELECT COUNT(*) FROM items;\n".to_vec()),
            common::CLIENT_TIMEOUT,
        )
    })
    .await
    .expect("client runner");
    assert_eq!(assert_success("a certificate login", &out), "3\n");

    // A certificate from another CA is refused by TLS itself.
    let other = common::Pki::generate("other").client_cert("carol");
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "--no-defaults",
        "--protocol=TCP",
        "--batch",
        "--connect-timeout=10",
        "-h127.0.0.1",
    ])
    .arg(format!("-P{}", gw.port()))
    .arg("-ucarol")
    .arg(format!("-D{}", gw.database()))
    .args(["--ssl", &ca])
    .arg(format!("--ssl-cert={}", other.cert_file.display()))
    .arg(format!("--ssl-key={}", other.key_file.display()));
    let out = tokio::task::spawn_blocking(move || {
        common::run_with_input(cmd, Some(b"SELECT 1;\n".to_vec()), common::CLIENT_TIMEOUT)
    })
    .await
    .expect("client runner");
    assert!(!out.status.success(), "{out:?}");

    let trail = gw
        .trail_until("the certificate session", |t| {
            !records(t, "session_opened", |r| r["subject"] == "carol").is_empty()
        })
        .await;
    let opened = records(&trail, "session_opened", |r| r["subject"] == "carol");
    assert_eq!(opened[0]["auth_method"], "client_certificate", "{opened:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn tls_logins_with_the_mariadb_client_and_pymysql() {
    let gw = gateway_with(MysqlOptions {
        tls: true,
        require_tls: true,
        ..MysqlOptions::default()
    })
    .await;
    let ca = gw
        .pki
        .as_ref()
        .expect("TLS material")
        .ca_file
        .display()
        .to_string();
    let token = gw.token("alice", &["engineering"]);

    // The certificate verified against the test CA (it names 127.0.0.1), and the cipher shown by
    // the client's own status command.
    let ssl_ca = format!("--ssl-ca={ca}");
    let mut out = None;
    for _ in 0..TLS_LOGINS {
        let o = gw
            .mariadb(
                "alice",
                &token,
                None,
                &["--ssl", &ssl_ca, "--ssl-verify-server-cert"],
                "SELECT COUNT(*) FROM items;\n\\s\n",
            )
            .await;
        assert_success("a TLS login with the mariadb client", &o);
        out = Some(o);
    }
    let out = out.expect("logged in");
    let text = assert_success("a TLS login with the mariadb client", &out);
    assert!(text.starts_with("3\n"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("SSL:") && l.contains("Cipher in use is")),
        "{text}"
    );

    // require_tls: the same client without TLS is refused, with a hint.
    let out = gw
        .mariadb("alice", &token, None, &["--skip-ssl"], "SELECT 1;\n")
        .await;
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("ERROR"), "{err}");
    assert!(err.contains("--ssl"), "{err}");

    let out = gw
        .python(
            &r#"
import json, os, ssl, sys
import pymysql

context = ssl.create_default_context(cafile=os.environ["MY_CA"])
# Logins in a row: the ClientHello right behind the SSL request must reach TLS every time.
for _ in range(LOGINS):
    conn = pymysql.connect(
        host=os.environ["MY_HOST"], port=int(os.environ["MY_PORT"]), user=os.environ["MY_USER"],
        password=os.environ["MY_PASSWORD"], database=os.environ["MY_DB"], charset="utf8mb4",
        ssl=context, connect_timeout=10,
    )
    conn.close()
conn = pymysql.connect(
    host=os.environ["MY_HOST"], port=int(os.environ["MY_PORT"]), user=os.environ["MY_USER"],
    password=os.environ["MY_PASSWORD"], database=os.environ["MY_DB"], charset="utf8mb4",
    ssl=context, connect_timeout=10,
)
with conn.cursor() as cur:
    cur.execute("SELECT label FROM items WHERE id = %s", (2,))
    label = cur.fetchone()[0]
print(json.dumps({"label": label, "tls": conn._sock.version()}))
conn.close()
"#
            .replace("LOGINS", &TLS_LOGINS.to_string()),
        )
        .await;
    let text = assert_success("a TLS login with PyMySQL", &out);
    let out: Value = serde_json::from_str(text.trim()).expect("JSON");
    assert_eq!(out["label"], "two", "{out}");
    assert!(
        out["tls"].as_str().is_some_and(|v| v.starts_with("TLSv1.")),
        "{out}"
    );

    // Each client's logins, and PyMySQL's last session.
    let sessions = 2 * TLS_LOGINS + 1;
    let trail = gw
        .trail_until("every TLS session closed", |t| {
            records(t, "session_closed", |_| true).len() == sessions
        })
        .await;
    let opened = records(&trail, "session_opened", |_| true);
    assert_eq!(opened.len(), sessions, "{trail:#?}");
    for session in opened {
        assert_eq!(session["client"]["protocol"], "mysql", "{session}");
        assert_eq!(session["client"]["tls"], true, "{session}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn results_are_masked_for_the_identities_a_masking_rule_names() {
    let gw = gateway_with(MysqlOptions {
        extra_config: format!(
            "{POLICY}\n[masking]\n\n[[masking.rules]]\nname = \"labels\"\ncolumns = [\"items.label\"]\nstrategy = \"redact\"\ngroups = [\"analyst\"]\n"
        ),
        ..MysqlOptions::default()
    })
    .await;
    let out = gw
        .mariadb(
            "bob",
            &gw.token("bob", &["analyst"]),
            None,
            &[],
            "SELECT id, label AS l FROM items ORDER BY id;\nSELECT UPPER(label) FROM items WHERE id = 1;\n",
        )
        .await;
    let text = assert_success("a masked identity", &out);
    assert!(!text.contains("one") && !text.contains("ONE"), "{text}");
    assert!(text.starts_with("1\t****\n2\t****\n3\t****\n"), "{text}");

    // Identities no masking rule names see the values.
    let out = gw
        .mariadb(
            "alice",
            &gw.token("alice", &["engineering"]),
            None,
            &[],
            "SELECT label FROM items WHERE id = 1;\n",
        )
        .await;
    assert_eq!(assert_success("an unmasked identity", &out), "one\n");

    // The trail says what was masked.
    let trail = gw
        .trail_until("the masked statement's end", |t| {
            records(t, "statement_finished", |r| r.get("masked").is_some()).len()
                + records(t, "statement_executed", |r| {
                    r["outcome"].get("masked").is_some()
                })
                .len()
                > 0
        })
        .await;
    assert!(!trail.is_empty());
    gw.shutdown().await;
}

/// A protocol without notices: a held statement is refused at once with the request id, and the
/// same statement runs when sent again after another identity approved it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_statement_is_refused_then_runs_when_sent_again_after_approval() {
    let gw = gateway_with(MysqlOptions {
        extra_config: format!(
            "{}{}",
            common::mysql::POLICY,
            r#"
[[policy.rules]]
name = "ledger-writes"
action = "require-approval"
writes = ["ledger"]
message = "writes to the ledger need a second person"

[approvals]
approvers = ["dba"]

[admin]
listen = "127.0.0.1:0"
"#
        ),
        ..MysqlOptions::default()
    })
    .await;
    gw.db
        .direct("create table ledger (id int primary key, amount int)");
    let alice = gw.token("alice", &["engineering"]);
    let bob = gw.token("bob", &["engineering", "dba"]);
    let insert = "insert into ledger values (1, 10);\n";

    let out = gw.mariadb("alice", &alice, None, &[], insert).await;
    let stderr = common::stderr(&out);
    assert!(stderr.contains("ERROR 1227"), "{stderr}");
    assert!(
        stderr.contains("run it again once the request is approved"),
        "{stderr}"
    );
    let id = request_id(&stderr);
    assert_eq!(gw.db.direct("select count(*) from ledger").trim(), "0");

    // Sent again before the decision: the same request, still refused.
    let out = gw.mariadb("alice", &alice, None, &[], insert).await;
    assert_eq!(request_id(&common::stderr(&out)), id);

    let (status, body) = common::admin_call(
        &gw.admin_url(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        &bob,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = gw.mariadb("alice", &alice, None, &[], insert).await;
    assert_eq!(common::stderr(&out), "", "runs once approved");
    assert_eq!(gw.db.direct("select count(*) from ledger").trim(), "1");

    // Once: a third time is a new request.
    let out = gw.mariadb("alice", &alice, None, &[], insert).await;
    let again = request_id(&common::stderr(&out));
    assert_ne!(again, id);

    let trail = gw
        .trail_until("the approved statement's start", |t| {
            t.iter()
                .any(|r| r["event"] == "statement_started" && r["approval_id"] == id.as_str())
        })
        .await;
    let requested: Vec<(bool, bool)> = trail
        .iter()
        .filter(|r| r["event"] == "approval_requested")
        .map(|r| (r["new"].as_bool().unwrap(), r["waits"].as_bool().unwrap()))
        .collect();
    assert_eq!(requested, [(true, false), (false, false), (true, false)]);
    assert!(trail
        .iter()
        .filter(|r| r["event"] == "approval_ended")
        .all(|r| r["outcome"] == "not_waiting"));
    gw.shutdown().await;
}

/// The `apr_...` request id in a client's error text.
fn request_id(text: &str) -> String {
    let start = text
        .find("apr_")
        .unwrap_or_else(|| panic!("no request id in: {text}"));
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// What the typed-values driver tests leave behind: the database holds what the gateway let
/// through, both sessions (writer and read-only) came over TLS, and the three executions of
/// [`KINDS_INSERT`] are each audited as the statement prepared. Returns the trail.
async fn stored_and_audited(gw: &MysqlGateway) -> Vec<Value> {
    assert_eq!(gw.db.direct(KINDS_DIRECT), KINDS_ROWS);
    assert_eq!(
        gw.db
            .direct("SELECT COUNT(*), GROUP_CONCAT(label ORDER BY id) FROM items"),
        "3\tone,two,three\n"
    );
    let trail = gw
        .trail_until("both sessions closed", |t| {
            records(t, "session_closed", |_| true).len() == 2
        })
        .await;
    let opened = records(&trail, "session_opened", |_| true);
    assert_eq!(opened.len(), 2, "{trail:#?}");
    for session in opened {
        assert_eq!(session["client"]["tls"], true, "{session}");
    }
    assert_eq!(
        records(&trail, "statement_started", |r| r["sql"] == KINDS_INSERT).len(),
        3,
        "{trail:#?}"
    );
    trail
}
