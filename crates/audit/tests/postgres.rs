//! The PostgreSQL sink against the local server (127.0.0.1:5432, user postgres, trust): each test
//! makes its own database and drops it.

mod common;

use std::time::{Duration, Instant};

use audit::{
    verify, AuditLog, Durability, OpenMode, PostgresSink, Problem, SearchFilter, Sink, SinkConfig,
};
use common::*;
use gateway_core::AuditSink;
use tokio_postgres::{Client, NoTls};

struct TestDb {
    name: String,
    admin: Client,
}

impl TestDb {
    async fn new() -> TestDb {
        let (admin, conn) = tokio_postgres::connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("audit_test_{}_{nanos}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb { name, admin }
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={}",
            self.name
        )
    }

    async fn client(&self) -> Client {
        let (c, conn) = tokio_postgres::connect(&self.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }

    async fn drop_db(self) {
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

async fn sink(db: &TestDb, table: &str, mode: OpenMode) -> PostgresSink {
    PostgresSink::open(&db.url(), table, None, mode)
        .await
        .unwrap()
}

async fn write_signed(db: &TestDb, table: &str, node: &str, n: u64) -> Vec<u8> {
    let s = sink(db, table, OpenMode::Write(Durability::Sync)).await;
    write_signed_into(Box::new(s), &config(vec![], Durability::Sync), node, n).await
}

/// Copies `base` (and its checkpoints) into a new table, keeping row ids.
async fn copy_table(c: &Client, base: &str, to: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE {to} (LIKE {base} INCLUDING ALL); INSERT INTO {to} SELECT * FROM {base};
         CREATE TABLE {to}_checkpoints (LIKE {base}_checkpoints INCLUDING ALL);
         INSERT INTO {to}_checkpoints SELECT * FROM {base}_checkpoints;"
    ))
    .await
    .unwrap();
}

async fn failure(db: &TestDb, table: &str, key: &[u8]) -> (u64, Problem) {
    let report = verify(&sink(db, table, OpenMode::Read).await, &[key.to_vec()])
        .await
        .unwrap();
    let f = report
        .first_failure()
        .unwrap_or_else(|| panic!("verify passed: {report:?}"))
        .clone();
    (f.seq, f.problem)
}

#[tokio::test]
async fn postgres_chain_verifies_and_tampering_is_named() {
    let db = TestDb::new().await;
    let public = write_signed(&db, "base", "gw-p", 23).await;
    let report = verify(
        &sink(&db, "base", OpenMode::Read).await,
        std::slice::from_ref(&public),
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let records = all_records(&sink(&db, "base", OpenMode::Read).await).await;
    let k = nth_event(&records, 6);
    let c = db.client().await;

    copy_table(&c, "base", "edit").await;
    c.execute(
        "UPDATE edit SET payload = convert_to(replace(convert_from(payload, 'UTF8'), 'from orders', 'from ordert'), 'UTF8') WHERE seq = $1",
        &[&(k as i64)],
    )
    .await
    .unwrap();
    assert_eq!(
        failure(&db, "edit", &public).await,
        (k, Problem::HashMismatch)
    );

    copy_table(&c, "base", "del").await;
    c.execute("DELETE FROM del WHERE seq = $1", &[&(k as i64)])
        .await
        .unwrap();
    assert_eq!(
        failure(&db, "del", &public).await,
        (k, Problem::SeqGap { from: k, to: k })
    );

    copy_table(&c, "base", "reorder").await;
    let id = |row: tokio_postgres::Row| -> i64 { row.get(0) };
    let ida = id(c
        .query_one("SELECT id FROM reorder WHERE seq = $1", &[&(k as i64)])
        .await
        .unwrap());
    let idb = id(c
        .query_one("SELECT id FROM reorder WHERE seq = $1", &[&(k as i64 + 1)])
        .await
        .unwrap());
    c.execute("UPDATE reorder SET id = -1 WHERE id = $1", &[&ida])
        .await
        .unwrap();
    c.execute("UPDATE reorder SET id = $1 WHERE id = $2", &[&ida, &idb])
        .await
        .unwrap();
    c.execute("UPDATE reorder SET id = $1 WHERE id = -1", &[&idb])
        .await
        .unwrap();
    assert_eq!(
        failure(&db, "reorder", &public).await,
        (
            k,
            Problem::OutOfOrder {
                found: k + 1,
                expected: k
            }
        )
    );

    copy_table(&c, "base", "trunc").await;
    c.execute("DELETE FROM trunc WHERE seq >= $1", &[&(k as i64)])
        .await
        .unwrap();
    let last_cp = *checkpoints(&records).last().unwrap();
    assert_eq!(
        failure(&db, "trunc", &public).await,
        (
            k,
            Problem::ChainEndsBeforeCheckpoint {
                checkpoint_seq: last_cp,
                last_seq: k - 1
            }
        )
    );
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_holds_several_nodes_and_searches_them() {
    let db = TestDb::new().await;
    let public = write_signed(&db, "audit_records", "gw-a", 10).await;
    // The second node has a different key; verify with one key reports the other's checkpoints.
    write_signed(&db, "audit_records", "gw-b", 12).await;
    let s = sink(&db, "audit_records", OpenMode::Read).await;
    let report = verify(&s, &[]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        report
            .nodes
            .iter()
            .map(|n| n.node.as_str())
            .collect::<Vec<_>>(),
        ["gw-a", "gw-b"]
    );
    let with_key = verify(&s, std::slice::from_ref(&public)).await.unwrap();
    assert!(with_key.nodes[0].failure.is_none());
    assert!(with_key.nodes[1].failure.is_some());
    let b_denied = SearchFilter {
        node: Some("gw-b".into()),
        verdict: Some("deny".into()),
        ..Default::default()
    };
    let found = audit::search(&s, &b_denied, 100).await.unwrap();
    assert_eq!(found.len(), (0..12).filter(|i| i % 7 == 3).count());
    assert!(found.iter().all(|r| r.node == "gw-b"));
    let text = SearchFilter {
        text: Some("select 4 ".into()),
        subject: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(
        audit::search(&s, &text, 100).await.unwrap().len(),
        2,
        "one per node"
    );
    let last = audit::tail(&s, 2, Some("gw-a")).await.unwrap();
    assert_eq!(last.len(), 2);
    assert_eq!(last[1].event, "checkpoint");
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_database_gone_fails_closed_and_recovers() {
    let db = TestDb::new().await;
    let mut cfg = config(
        vec![SinkConfig::Postgres {
            url: db.url(),
            table: "audit_records".into(),
            ca_file: None,
        }],
        Durability::Sync,
    );
    cfg.retry_for = Duration::from_millis(500);
    let log = AuditLog::open(&cfg, "gw-p").await.unwrap();
    log.record(event("gw-p", 0)).await.unwrap();
    let away = format!("{}_away", db.name);
    db.admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';
             ALTER DATABASE {0} RENAME TO {away}",
            db.name
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let e = log.record(event("gw-p", 1)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind, gateway_core::ErrorKind::AuditUnavailable);
    assert!(log.record(event("gw-p", 2)).await.is_err());
    db.admin
        .batch_execute(&format!("ALTER DATABASE {away} RENAME TO {}", db.name))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.is_healthy() {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.record(event("gw-p", 3)).await.unwrap();
    log.shutdown().await.unwrap();
    let s = sink(&db, "audit_records", OpenMode::Read).await;
    let report = verify(&s, &[]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let records = all_records(&s).await;
    assert!(records.iter().any(|r| r.event == "sink_recovered"));
    // The record whose caller was refused is in the trail, flagged as late by the notice.
    assert!(records
        .iter()
        .any(|r| r.payload_text().contains("\"statement_id\":1,")));
    db.drop_db().await;
}

#[tokio::test]
async fn a_secondary_sink_that_lags_is_filled_from_the_primary() {
    let db = TestDb::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("audit.db");
    let sqlite = SinkConfig::Sqlite { path: path.clone() };
    let pg = SinkConfig::Postgres {
        url: db.url(),
        table: "audit_records".into(),
        ca_file: None,
    };
    // First only SQLite.
    let log = AuditLog::open(&config(vec![sqlite.clone()], Durability::Sync), "gw-m")
        .await
        .unwrap();
    for i in 0..10 {
        log.record(event("gw-m", i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    // Then SQLite (primary) and PostgreSQL: PostgreSQL gets the history first.
    let log = AuditLog::open(&config(vec![sqlite, pg], Durability::Sync), "gw-m")
        .await
        .unwrap();
    for i in 10..15 {
        log.record(event("gw-m", i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    let a = all_records(
        &audit::SqliteSink::open(&path, OpenMode::Read)
            .await
            .unwrap(),
    )
    .await;
    let pg_sink = sink(&db, "audit_records", OpenMode::Read).await;
    let b = all_records(&pg_sink).await;
    assert_eq!(a, b);
    assert!(verify(&pg_sink, &[]).await.unwrap().is_ok());
    assert_eq!(
        pg_sink.tail("gw-m").await.unwrap().map(|r| r.seq),
        a.last().map(|r| r.seq)
    );
    db.drop_db().await;
}
