//! Written durability with many sessions appending at once (one write carries everyone's sealed
//! records, and a statement's end rides with a later write): one valid chain, every record once,
//! the index equal to the log; and a gateway killed with SIGKILL in the middle of that loses no
//! record whose `record()` had returned for a statement about to run.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use audit::{verify, AuditConfig, AuditLog, JsonlSink, OpenMode, RecordKind, SqliteSink};
use common::*;
use gateway_core::{AuditEvent, AuditRecord, AuditSink};

const NODE: &str = "gw-many";

fn record(session: u64, event: AuditEvent) -> AuditRecord {
    AuditRecord {
        time: SystemTime::now(),
        node: Arc::from(NODE),
        session_id: Arc::from(format!("s{session}")),
        subject: Some(Arc::from("alice")),
        target: Some(Arc::from("sales")),
        client: client(),
        event,
    }
}

fn started(session: u64, statement_id: u64) -> AuditRecord {
    record(
        session,
        AuditEvent::StatementStarted {
            statement_id,
            sql: Arc::from(format!("select {statement_id} /* \"s{session}\" */")),
            classification: Some(Arc::from("read")),
            objects: None,
            fingerprint: None,
            parameters: None,
            rule: None,
            approval_id: None,
        },
    )
}

fn finished(session: u64, statement_id: u64) -> AuditRecord {
    record(
        session,
        AuditEvent::StatementFinished {
            statement_id,
            rows: 1,
            tag: Some("SELECT 1".into()),
            affected: None,
            error: None,
            duration: Duration::from_micros(50),
            skipped: false,
            masked: None,
        },
    )
}

fn default_config(dir: &Path) -> AuditConfig {
    AuditConfig {
        // Small, so that checkpoints land among the concurrent appends too.
        checkpoint_every_records: 97,
        ..AuditConfig::default_for(dir)
    }
}

/// (session, statement id, event) of every event record in the segment log, in chain order.
async fn logged_events(dir: &Path) -> Vec<(String, u64, String)> {
    let log = JsonlSink::open(&dir.join("audit"), u64::MAX, OpenMode::Read)
        .await
        .unwrap();
    all_records(&log)
        .await
        .iter()
        .filter(|r| r.kind == RecordKind::Event)
        .map(|r| {
            let p: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            (
                p["session_id"].as_str().unwrap_or_default().to_owned(),
                p["statement_id"].as_u64().unwrap_or(u64::MAX),
                r.event.clone(),
            )
        })
        .collect()
}

async fn verify_both(dir: &Path) {
    let public = audit::read_public_key_file(&dir.join("audit-signing.pub")).unwrap();
    let log = JsonlSink::open(&dir.join("audit"), u64::MAX, OpenMode::Read)
        .await
        .unwrap();
    let report = verify(&log, std::slice::from_ref(&public)).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let index = SqliteSink::open(&dir.join("audit.db"), OpenMode::Read)
        .await
        .unwrap();
    let report = verify(&index, std::slice::from_ref(&public)).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        all_records(&index).await,
        all_records(&log).await,
        "the index holds the log's chain"
    );
}

#[test]
fn concurrent_appenders_make_one_valid_chain() {
    const SESSIONS: u64 = 24;
    const STATEMENTS: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = Arc::new(
            AuditLog::open(&default_config(dir.path()), NODE)
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for s in 0..SESSIONS {
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                for i in 0..STATEMENTS {
                    log.record(started(s, i)).await.unwrap();
                    if i % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    log.record(finished(s, i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.shutdown().await.unwrap();
    });
    rt.block_on(async {
        let events = logged_events(dir.path()).await;
        assert_eq!(
            events.len() as u64,
            2 * SESSIONS * STATEMENTS,
            "every record once"
        );
        // Per session, in the order the session recorded them.
        for s in 0..SESSIONS {
            let id = format!("s{s}");
            let mine: Vec<(u64, &str)> = events
                .iter()
                .filter(|(session, _, _)| *session == id)
                .map(|(_, stmt, event)| (*stmt, event.as_str()))
                .collect();
            let want: Vec<(u64, &str)> = (0..STATEMENTS)
                .flat_map(|i| [(i, "statement_started"), (i, "statement_finished")])
                .collect();
            assert_eq!(mine, want, "session {id}");
        }
        verify_both(dir.path()).await;
    });
}

/// The child side of the kill test: appends from several sessions until it is killed, printing
/// `started <session> <statement>` once `record()` has returned for a statement's start (what
/// lets the gateway forward the statement).
fn run_until_killed(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = Arc::new(AuditLog::open(&default_config(dir), NODE).await.unwrap());
        let mut tasks = Vec::new();
        for s in 0..8u64 {
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    log.record(started(s, i)).await.unwrap();
                    println!("started {s} {i}");
                    tokio::task::yield_now().await;
                    log.record(finished(s, i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn a_killed_gateway_loses_no_started_record() {
    if let Ok(dir) = std::env::var("AUDIT_TEST_APPEND_UNTIL_KILLED") {
        run_until_killed(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_gateway_loses_no_started_record",
            "--nocapture",
        ])
        .env("AUDIT_TEST_APPEND_UNTIL_KILLED", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut confirmed = Vec::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while confirmed.len() < 3000 {
        let Some(Ok(line)) = lines.next() else {
            panic!("the appending child stopped early");
        };
        if let Some(rest) = line.strip_prefix("started ") {
            let mut it = rest.split(' ').map(|n| n.parse::<u64>().unwrap());
            confirmed.push((it.next().unwrap(), it.next().unwrap()));
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What the child printed after the kill was decided is confirmed too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("started ") {
            let mut it = rest.split(' ').map(|n| n.parse::<u64>().unwrap());
            if let (Some(s), Some(i)) = (it.next(), it.next()) {
                confirmed.push((s, i));
            }
        }
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The next start names the unclean stop and fills the index from the log.
        let log = AuditLog::open(&default_config(dir.path()), NODE)
            .await
            .unwrap();
        log.shutdown().await.unwrap();
        let events = logged_events(dir.path()).await;
        let started: std::collections::HashSet<(String, u64)> = events
            .iter()
            .filter(|(_, _, e)| e == "statement_started")
            .map(|(s, i, _)| (s.clone(), *i))
            .collect();
        for (s, i) in &confirmed {
            assert!(
                started.contains(&(format!("s{s}"), *i)),
                "statement {i} of session s{s} ran, but its start is not in the log"
            );
        }
        let log = JsonlSink::open(&dir.path().join("audit"), u64::MAX, OpenMode::Read)
            .await
            .unwrap();
        assert!(
            all_records(&log)
                .await
                .iter()
                .any(|r| r.event == "unclean_stop"),
            "the kill is named"
        );
        verify_both(dir.path()).await;
    });
}
