//! The relay against the real local MariaDB, driven by the real `mariadb` command-line client.

mod common;

use common::*;
use gateway_core::*;

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
    let out = mariadb(args, Vec::new()).await;
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
    // "é" and "€" in latin1 (Windows-1252) bytes.
    let out = mariadb(args, b"SELECT HEX('\xe9\x80');\n".to_vec()).await;
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
