//! The relay against the real local MariaDB (127.0.0.1:3306, root without a password), driven by
//! the real `mariadb` command-line client. The authenticator and policy are test doubles; the
//! full identity and policy stack is exercised by the workspace's end-to-end tests.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use gateway_core::*;
use proto_mysql::{ListenerConfig, MysqlListener};

struct FixedPassword;

#[async_trait]
impl Authenticator for FixedPassword {
    async fn authenticate(
        &self,
        c: &Credentials,
        _: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        match c {
            Credentials::Password { user, password } if password == "secret" => Ok(Identity {
                subject: user.clone(),
                groups: vec![],
                auth_method: AuthMethod::Password,
                claims: BTreeMap::new(),
            }),
            _ => Err(GatewayError::auth("wrong password")),
        }
    }
}

/// Denies any statement whose text contains "forbidden"; classifies by the first word.
struct DenyForbidden;

impl PolicyEngine for DenyForbidden {
    fn access(&self, _: &Identity, _: &Target) -> Result<Access, GatewayError> {
        Ok(Access::ReadWrite)
    }
    fn judge(&self, _: &StatementContext<'_>, sql: &str) -> Arc<Judgement> {
        let verdict = if sql.contains("forbidden") {
            Verdict::deny(
                "no-forbidden",
                "statements mentioning forbidden things are refused",
            )
        } else {
            Verdict::allow(None)
        };
        let first = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let classification = match first.as_str() {
            "set" | "use" => "session",
            "update" | "insert" | "delete" => "write",
            "kill" => "utility:kill",
            _ => "read",
        };
        Arc::new(Judgement {
            verdict,
            classification: Some(Arc::from(classification)),
            objects: None,
            fingerprint: None,
            lineage: None,
        })
    }
}

/// Keeps every audit record.
#[derive(Default)]
struct Recorded(Mutex<Vec<AuditEvent>>);

#[async_trait]
impl AuditSink for Recorded {
    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError> {
        self.0.lock().unwrap().push(record.event);
        Ok(())
    }
}

/// A database of its own on the local MariaDB, dropped at the end.
struct Database(String);

impl Database {
    fn create() -> Self {
        let name = format!("pc_relay_{}", rand_suffix());
        direct(&format!(
            "CREATE DATABASE {name}; CREATE TABLE {name}.items (id INT PRIMARY KEY, label VARCHAR(20), data BLOB); \
             INSERT INTO {name}.items VALUES (1, 'one', X'00FF'), (2, 'two', NULL), (3, 'forbidden', NULL)"
        ));
        Database(name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        direct(&format!("DROP DATABASE IF EXISTS {}", self.0));
    }
}

fn rand_suffix() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn direct(sql: &str) {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "-P3306",
            "-uroot",
            "-e",
            sql,
        ])
        .output()
        .expect("run the mariadb client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn start(database: &str) -> (std::net::SocketAddr, Arc<Recorded>) {
    let target = Target {
        name: "shop".into(),
        protocol: Protocol::Mysql,
        host: "127.0.0.1".into(),
        port: 3306,
        database: database.into(),
        user: "root".into(),
        password: None,
        tls: UpstreamTls::Disable,
        labels: BTreeMap::new(),
    };
    let audit = Arc::new(Recorded::default());
    let gateway = Gateway::builder()
        .authenticator(Arc::new(FixedPassword))
        .policy(Arc::new(DenyForbidden))
        .audit(Arc::clone(&audit) as Arc<dyn AuditSink>)
        .targets(Targets::new([target]))
        .build();
    let listener =
        MysqlListener::bind(ListenerConfig::new("127.0.0.1:0".parse().unwrap()), gateway)
            .await
            .unwrap();
    let addr = listener.local_addr();
    tokio::spawn(listener.run());
    (addr, audit)
}

/// Runs the mariadb client through the gateway (batch mode: tab-separated, no headers).
async fn client(
    addr: std::net::SocketAddr,
    password: &str,
    database: &str,
    sql: &str,
) -> (bool, String, String) {
    let args = vec![
        "--no-defaults".to_owned(),
        "-h127.0.0.1".to_owned(),
        format!("-P{}", addr.port()),
        "-ualice".to_owned(),
        format!("-p{password}"),
        "-D".to_owned(),
        database.to_owned(),
        "--batch".to_owned(),
        "--skip-column-names".to_owned(),
        "--force".to_owned(),
    ];
    // Statements on standard input, one per line: with --force the client goes on after an
    // error (with -e it would stop at the first).
    let input = sql.replace("; ", ";\n");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("mariadb")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the mariadb client");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write statements");
        drop(stdin);
        child.wait_with_output().expect("run the mariadb client")
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_mariadb_client_queries_through_the_gateway() {
    let db = Database::create();
    let (addr, audit) = start(&db.0).await;
    let (ok, out, err) = client(
        addr,
        "secret",
        "shop",
        "SELECT id, label, HEX(data) FROM items WHERE id < 3 ORDER BY id; SELECT DATABASE()",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, format!("1\tone\t00FF\n2\ttwo\tNULL\n{}\n", db.0));

    // Writes report their affected rows; the audit trail has the statement and its end.
    let (ok, out, err) = client(
        addr,
        "secret",
        "shop",
        "UPDATE items SET label = 'uno' WHERE id = 1; SELECT ROW_COUNT(); SELECT label FROM items WHERE id = 1",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "1\nuno\n");
    let events = audit.0.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(e,
        AuditEvent::StatementStarted { sql, .. } if sql.starts_with("UPDATE items"))));
    assert!(events.iter().any(|e| matches!(e,
        AuditEvent::StatementFinished { tag: Some(tag), affected: Some(1), .. } if tag == "OK 1")));
}

#[tokio::test]
async fn a_denied_statement_gets_an_error_and_the_session_goes_on() {
    let db = Database::create();
    let (addr, audit) = start(&db.0).await;
    // With --force the client reports each error and goes on (and exits 0).
    let (_, out, err) = client(
        addr,
        "secret",
        "shop",
        "SELECT 'forbidden'; SELECT COUNT(*) FROM items",
    )
    .await;
    assert!(err.contains("ERROR 1227 (42000)"), "{err}");
    assert!(err.contains("no-forbidden"), "{err}");
    // The next statement ran on the same connection.
    assert_eq!(out, "3\n");
    let events = audit.0.lock().unwrap().clone();
    assert!(events
        .iter()
        .any(|e| matches!(e, AuditEvent::StatementDenied { .. })));
}

#[tokio::test]
async fn logins_are_refused_with_the_servers_codes() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    let (ok, _, err) = client(addr, "wrong", "shop", "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("ERROR 1045 (28000)"), "{err}");
    let (ok, _, err) = client(addr, "secret", "nosuchtarget", "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("ERROR 1049 (42000)"), "{err}");
}

#[tokio::test]
async fn use_switches_the_database_through_com_init_db() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    // The client sends USE as COM_INIT_DB; a missing database fails upstream.
    let (_, out, err) = client(
        addr,
        "secret",
        "shop",
        "USE information_schema; SELECT DATABASE(); USE shop_missing_db",
    )
    .await;
    assert!(err.contains("ERROR 1049"), "{err}");
    assert_eq!(out, "information_schema\n");
}

#[tokio::test]
async fn character_sets_that_hide_backslashes_are_refused() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    // At login.
    let args = vec![
        "--no-defaults".to_owned(),
        "-h127.0.0.1".to_owned(),
        format!("-P{}", addr.port()),
        "-ualice".to_owned(),
        "-psecret".to_owned(),
        "-Dshop".to_owned(),
        "--default-character-set=gbk".to_owned(),
        "-e".to_owned(),
        "SELECT 1".to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new("mariadb").args(&args).output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("character set gbk is not accepted"), "{err}");

    // Set afterwards: the session ends before the next statement is read in it.
    let (_, out, err) = client(addr, "secret", "shop", "SET NAMES sjis; SELECT 'after'").await;
    assert!(!out.contains("after"), "{out}");
    assert!(err.contains("character set sjis is not accepted"), "{err}");

    // A safe one is fine.
    let (ok, out, err) = client(addr, "secret", "shop", "SET NAMES latin1; SELECT 'after'").await;
    assert!(ok, "{err}");
    assert_eq!(out, "after\n");
}

#[tokio::test]
async fn kill_query_reaches_the_owners_session_by_the_gateways_connection_id() {
    let db = Database::create();
    let (addr, audit) = start(&db.0).await;
    // The first connection to a new listener is gateway connection 1.
    let sleeper = tokio::spawn(client(addr, "secret", "shop", "SELECT SLEEP(20)"));
    let started = std::time::Instant::now();
    let mut killed = false;
    while started.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let running = audit.0.lock().unwrap().iter().any(
            |e| matches!(e, AuditEvent::StatementStarted { sql, .. } if sql.contains("SLEEP")),
        );
        if running {
            let (ok, _, err) = client(addr, "secret", "shop", "KILL QUERY 1").await;
            assert!(ok, "{err}");
            killed = true;
            break;
        }
    }
    assert!(killed, "the sleeping statement never started");
    let (_, out, err) = sleeper.await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the query was not interrupted"
    );
    // MariaDB answers an interrupted SLEEP with 1 (or error 1317).
    assert!(out.trim() == "1" || err.contains("1317"), "{out} {err}");

    // Connection ids the gateway does not know, or that the asker does not own, are refused.
    let (_, _, err) = client(addr, "secret", "shop", "KILL 999999").await;
    assert!(err.contains("ERROR 1094"), "{err}");
    let (_, _, err) = client(addr, "secret", "shop", "KILL HARD QUERY 1").await;
    assert!(err.contains("ERROR 1235"), "{err}");
}

#[tokio::test]
async fn a_latin1_client_is_judged_and_audited_as_the_server_reads_it() {
    let db = Database::create();
    let (addr, audit) = start(&db.0).await;
    let args = vec![
        "--no-defaults".to_owned(),
        "-h127.0.0.1".to_owned(),
        format!("-P{}", addr.port()),
        "-ualice".to_owned(),
        "-psecret".to_owned(),
        "-Dshop".to_owned(),
        "--default-character-set=latin1".to_owned(),
        "--batch".to_owned(),
        "--skip-column-names".to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("mariadb")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // "é" and "€" in latin1 (Windows-1252) bytes.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"SELECT HEX('\xe9\x80');\n").unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "E980\n");
    let events = audit.0.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| matches!(e,
            AuditEvent::StatementStarted { sql, .. } if &**sql == "SELECT HEX('é€')")),
        "{events:?}"
    );
}
