//! The trail's life across runs with the default layout (segment log + SQLite index): written
//! durability, the clean stop's record, the unclean stop's record with the sessions it left open,
//! the signing key generated on the first start, and a trail an older gateway kept in SQLite.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use audit::{
    open_sink, verify, AuditConfig, AuditLog, ChainHash, Durability, JsonlSink, OpenMode,
    RecordKind, Sink, SinkConfig, SqliteSink, StoredRecord,
};
use common::*;
use gateway_core::{Access, AuditEvent, AuditRecord, AuditSink, AuthMethod};

const NODE: &str = "gw-life";

fn session_event(session: &str, subject: &str, event: AuditEvent) -> AuditRecord {
    AuditRecord {
        time: SystemTime::now(),
        node: Arc::from(NODE),
        session_id: Arc::from(session),
        subject: Some(Arc::from(subject)),
        target: Some(Arc::from("sales")),
        client: client(),
        event,
    }
}

fn opened(session: &str, subject: &str) -> AuditRecord {
    session_event(
        session,
        subject,
        AuditEvent::SessionOpened {
            user: subject.to_owned(),
            auth_method: AuthMethod::Jwt,
            groups: vec!["analyst".into()],
            access: Access::ReadOnly,
        },
    )
}

fn closed(session: &str, subject: &str) -> AuditRecord {
    session_event(
        session,
        subject,
        AuditEvent::SessionClosed {
            statements: 0,
            error: None,
        },
    )
}

/// The configuration a gateway gets without `[audit]`, in `data_dir`.
fn default_config(data_dir: &Path) -> AuditConfig {
    AuditConfig {
        retry_for: Duration::from_millis(500),
        ..AuditConfig::default_for(data_dir)
    }
}

async fn log_records(data_dir: &Path) -> Vec<StoredRecord> {
    let sink = JsonlSink::open(&data_dir.join("audit"), u64::MAX, OpenMode::Read)
        .await
        .unwrap();
    all_records(&sink).await
}

fn payload(r: &StoredRecord) -> serde_json::Value {
    serde_json::from_slice(&r.payload).unwrap()
}

fn notices<'a>(records: &'a [StoredRecord], name: &str) -> Vec<&'a StoredRecord> {
    records
        .iter()
        .filter(|r| r.kind == RecordKind::Notice && r.event == name)
        .collect()
}

fn public_key(data_dir: &Path) -> Vec<u8> {
    audit::read_public_key_file(&data_dir.join("audit-signing.pub")).unwrap()
}

#[tokio::test]
async fn the_default_layout_signs_from_the_first_record_with_a_generated_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = default_config(dir.path());
    let log = AuditLog::open(&config, NODE).await.unwrap();
    log.record(opened("s1", "alice")).await.unwrap();
    log.record(event(NODE, 0)).await.unwrap();
    log.shutdown().await.unwrap();

    let key = dir.path().join("audit-signing.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is for the gateway only");
    }
    let public = public_key(dir.path());
    let records = log_records(dir.path()).await;
    assert!(
        !checkpoints(&records).is_empty(),
        "a clean stop ends with a signed checkpoint"
    );
    let report = verify(
        &JsonlSink::open(&dir.path().join("audit"), u64::MAX, OpenMode::Read)
            .await
            .unwrap(),
        std::slice::from_ref(&public),
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // The next start uses the same key, and the index holds the same chain as the log.
    let log = AuditLog::open(&config, NODE).await.unwrap();
    log.record(event(NODE, 2)).await.unwrap();
    log.shutdown().await.unwrap();
    assert_eq!(public_key(dir.path()), public, "the key is not replaced");
    let index = SqliteSink::open(&dir.path().join("audit.db"), OpenMode::Read)
        .await
        .unwrap();
    let indexed = all_records(&index).await;
    assert_eq!(indexed, log_records(dir.path()).await);
    let report = verify(&index, &[public]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test]
async fn an_explicit_signing_key_wins_over_the_generated_one() {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, public_pem) = audit::generate_signing_key().unwrap();
    let key = dir.path().join("mine.pem");
    std::fs::write(&key, private_pem).unwrap();
    let mut config: AuditConfig = toml::from_str(&format!(
        "signing_key_file = {:?}",
        key.display().to_string()
    ))
    .unwrap();
    config.check(dir.path()).unwrap();
    assert_eq!(config.generated_key_file, None);
    let log = AuditLog::open(&config, NODE).await.unwrap();
    log.record(event(NODE, 0)).await.unwrap();
    log.shutdown().await.unwrap();
    assert!(!dir.path().join("audit-signing.pem").exists());
    let public = audit::parse_public_key(public_pem.as_bytes()).unwrap();
    let sink = JsonlSink::open(&dir.path().join("audit"), u64::MAX, OpenMode::Read)
        .await
        .unwrap();
    let report = verify(&sink, &[public]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Written durability: when `record()` returns for a record that gates a statement, the record
/// is in the segment log's file, readable by another process, whether or not it was fsynced.
#[tokio::test]
async fn written_durability_returns_once_the_record_is_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        // Long enough that no background fsync can have run when the file is read.
        batch_max_delay: Duration::from_secs(30),
        ..default_config(dir.path())
    };
    assert_eq!(config.durability, Durability::Written, "the default");
    let log = AuditLog::open(&config, NODE).await.unwrap();
    for i in 0..20u64 {
        log.record(event(NODE, i)).await.unwrap();
        let records = log_records(dir.path()).await;
        let want = format!("\"statement_id\":{i},");
        assert!(
            records.iter().any(|r| r.payload_text().contains(&want)),
            "statement {i} is in the file when record() returns"
        );
    }
    // A statement's end returns once queued; the writer writes it before the next record.
    log.record(closed("s1", "alice")).await.unwrap();
    log.record(event(NODE, 99)).await.unwrap();
    let records = log_records(dir.path()).await;
    let close = records.iter().position(|r| r.event == "session_closed");
    let next = records
        .iter()
        .position(|r| r.payload_text().contains("\"statement_id\":99,"));
    assert!(close.is_some() && close < next, "the end is written first");
    log.shutdown().await.unwrap();
}

/// A run that stops without closing the trail (what SIGKILL leaves: records, and no
/// `log_closed`) is named by the next start, with the sessions it left open.
#[tokio::test]
async fn the_next_start_names_an_unclean_stop_and_the_sessions_it_left_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = default_config(dir.path());
    let log = AuditLog::open(&config, NODE).await.unwrap();
    log.record(opened("s1", "alice")).await.unwrap();
    log.shutdown().await.unwrap();

    // A second run, as the writer would have left it when killed: its opening notice, two
    // sessions of which one closed, no closing notice.
    let sink = JsonlSink::open(
        &dir.path().join("audit"),
        u64::MAX,
        OpenMode::Write(Durability::Written),
    )
    .await
    .unwrap();
    let tail = sink.tail(NODE).await.unwrap().unwrap();
    let mut prev = tail.hash;
    let mut seq = tail.seq;
    let mut crashed_run = Vec::new();
    let opening =
        br#"{"notice":"log_opened","time":"2026-12-07T10:00:00.000000Z","message":"opened"}"#;
    let mut push = |kind: RecordKind, payload: Vec<u8>| {
        seq += 1;
        let r = StoredRecord::seal(NODE, seq, kind, prev, payload).unwrap();
        prev = r.hash;
        crashed_run.push(Arc::new(r));
    };
    push(RecordKind::Notice, opening.to_vec());
    for r in [
        opened("s2", "bob"),
        opened("s3", "carol"),
        closed("s2", "bob"),
    ] {
        push(RecordKind::Event, serde_json::to_vec(&r).unwrap());
    }
    let last_seq = seq;
    sink.write_batch(&crashed_run).await.unwrap();
    drop(sink);

    let log = AuditLog::open(&config, NODE).await.unwrap();
    log.shutdown().await.unwrap();
    let records = log_records(dir.path()).await;
    let unclean = notices(&records, "unclean_stop");
    assert_eq!(unclean.len(), 1, "one record names the crash");
    let p = payload(unclean[0]);
    assert_eq!(p["details"]["last_seq"], last_seq);
    assert_eq!(p["details"]["interrupted_count"], 1);
    let sessions = p["details"]["interrupted_sessions"].as_array().unwrap();
    assert_eq!(sessions[0]["session_id"], "s3");
    assert_eq!(sessions[0]["subject"], "carol");
    assert!(
        p["message"].as_str().unwrap().contains("interrupted"),
        "{p}"
    );
    let opened_notices = notices(&records, "log_opened");
    let last_open = payload(opened_notices.last().unwrap());
    assert_eq!(last_open["details"]["previous_stop"], "unclean");
    assert!(
        unclean[0].seq < opened_notices.last().unwrap().seq,
        "the crash is named before the new run opens"
    );
    assert_eq!(
        payload(opened_notices[0])["details"]["previous_stop"],
        "none"
    );

    // That run closed the trail cleanly in turn: the next start finds no crash.
    let log = AuditLog::open(&config, NODE).await.unwrap();
    log.shutdown().await.unwrap();
    let records = log_records(dir.path()).await;
    assert_eq!(notices(&records, "unclean_stop").len(), 1);
    let last_open = payload(notices(&records, "log_opened").last().unwrap());
    assert_eq!(last_open["details"]["previous_stop"], "clean");
    let closes = notices(&records, "log_closed");
    assert_eq!(closes.len(), 3, "every clean stop writes its own record");
    let report = verify(
        &JsonlSink::open(&dir.path().join("audit"), u64::MAX, OpenMode::Read)
            .await
            .unwrap(),
        &[public_key(dir.path())],
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// A gateway that kept its trail in `<data_dir>/audit.db` alone (the layout before the segment
/// log) starts with the new default: the log is filled from the database, and the chain goes on.
#[tokio::test]
async fn a_trail_kept_in_sqlite_alone_moves_into_the_segment_log() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, public) = keys();
    let old = vec![open_sink(
        &SinkConfig::Sqlite {
            path: dir.path().join("audit.db"),
        },
        OpenMode::Write(Durability::Sync),
    )
    .await
    .unwrap()];
    let log = AuditLog::with_sinks(NODE, &config(vec![], Durability::Sync), old, Some(signer))
        .await
        .unwrap();
    for i in 0..12 {
        log.record(event(NODE, i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    let before = all_records(
        &SqliteSink::open(&dir.path().join("audit.db"), OpenMode::Read)
            .await
            .unwrap(),
    )
    .await;

    let config = default_config(dir.path());
    let log = AuditLog::open(&config, NODE).await.unwrap();
    log.record(event(NODE, 12)).await.unwrap();
    log.shutdown().await.unwrap();
    let records = log_records(dir.path()).await;
    assert_eq!(&records[..before.len()], &before[..], "copied as they were");
    let filled = notices(&records, "primary_filled");
    assert_eq!(filled.len(), 1);
    assert_eq!(payload(filled[0])["details"]["to_seq"], before.len());
    // Signed by the old key up to the move, by the generated key after it.
    let log_sink = JsonlSink::open(&dir.path().join("audit"), u64::MAX, OpenMode::Read)
        .await
        .unwrap();
    let report = verify(&log_sink, &[public, public_key(dir.path())])
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test]
async fn notices_and_checkpoints_carry_rfc3339_times() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&default_config(dir.path()), NODE)
        .await
        .unwrap();
    log.record(event(NODE, 0)).await.unwrap();
    log.shutdown().await.unwrap();
    let records = log_records(dir.path()).await;
    for r in records.iter().filter(|r| r.kind != RecordKind::Event) {
        let time = payload(r)["time"].clone();
        let text = time
            .as_str()
            .unwrap_or_else(|| panic!("{} time {time}", r.event));
        assert!(
            humantime::parse_rfc3339(text).is_ok() && text.ends_with('Z'),
            "{} time {text}",
            r.event
        );
    }
    // Records written before the change still read: the stored column comes from either form.
    let old = br#"{"notice":"log_opened","time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5000},"message":"m"}"#;
    let r = StoredRecord::seal(
        NODE,
        1,
        RecordKind::Notice,
        ChainHash::GENESIS,
        old.to_vec(),
    )
    .unwrap();
    assert_eq!(r.time_us, 1_700_000_000_000_005);
}

/// Written durability appends on the caller's thread: when the segment log cannot be written,
/// `record()` fails at once (fail closed), and the first record after the disk is back resumes
/// the chain after a `sink_recovered` notice.
#[tokio::test]
async fn written_durability_fails_closed_and_the_next_record_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let aside = tmp.path().join("aside");
    let cfg = config(
        vec![SinkConfig::Jsonl {
            dir: dir.clone(),
            // Small files: a rotation soon needs to create a file in the directory.
            max_file_bytes: 4096,
        }],
        Durability::Written,
    );
    let log = AuditLog::open(&cfg, NODE).await.unwrap();
    log.record(event(NODE, 0)).await.unwrap();
    // Root ignores permission bits: replace the directory with a file instead.
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let mut refused = None;
    for i in 1..200 {
        if let Err(e) = log.record(event(NODE, i)).await {
            refused = Some((i, e));
            break;
        }
    }
    let (refused_at, e) = refused.expect("writes kept succeeding without a directory");
    assert_eq!(e.kind, gateway_core::ErrorKind::AuditUnavailable);
    assert!(!log.is_healthy());
    assert!(
        log.record(event(NODE, 500)).await.is_err(),
        "still refused while the directory is gone"
    );
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    log.record(event(NODE, 1000)).await.unwrap();
    assert!(log.is_healthy());
    log.shutdown().await.unwrap();

    let reader = JsonlSink::open(&dir, u64::MAX, OpenMode::Read)
        .await
        .unwrap();
    let report = verify(&reader, &[]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let records = all_records(&reader).await;
    let recovered = notices(&records, "sink_recovered");
    assert_eq!(recovered.len(), 1);
    assert!(payload(recovered[0])["details"]["refused"].as_u64() >= Some(2));
    let ids: Vec<u64> = records
        .iter()
        .filter_map(|r| payload(r)["statement_id"].as_u64())
        .collect();
    // The first refused record may have landed before the failure showed (the write went
    // through the open file, which had been moved): it is in the chain, its statement did not
    // run. One refused while nothing could be written is not.
    assert!(refused_at >= 1 && !ids.contains(&500), "{ids:?}");
    assert!(ids.contains(&1000), "{ids:?}");
    assert!(
        recovered[0].seq
            < records
                .iter()
                .find(|r| payload(r)["statement_id"] == 1000)
                .unwrap()
                .seq
    );
}

/// The index follows the log off the statements' path: while it fails, records are still
/// written to the log and `record()` succeeds; once it works again it catches up on its own.
#[tokio::test]
async fn a_failing_index_does_not_stop_statements_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("audit");
    let db = dir.path().join("audit.db");
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(
            JsonlSink::open(&log_dir, u64::MAX, OpenMode::Write(Durability::Written))
                .await
                .unwrap(),
        ),
        Box::new(FlakySink {
            inner: Box::new(
                SqliteSink::open(&db, OpenMode::Write(Durability::Written))
                    .await
                    .unwrap(),
            ),
            failing: Arc::clone(&failing),
        }),
    ];
    let cfg = AuditConfig {
        batch_max_delay: Duration::from_millis(5),
        ..config(vec![], Durability::Written)
    };
    let log = AuditLog::with_sinks(NODE, &cfg, sinks, None).await.unwrap();
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..40 {
        log.record(event(NODE, i)).await.unwrap();
    }
    assert!(log.is_healthy(), "the log took every record");
    // Let the index thread fail a few times, then heal it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        log.stats()
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    log.shutdown().await.unwrap();

    let logged = log_records(dir.path()).await;
    let indexed = all_records(&SqliteSink::open(&db, OpenMode::Read).await.unwrap()).await;
    assert_eq!(indexed, logged, "the index caught up with the log");
    assert_eq!(
        logged
            .iter()
            .filter(|r| r.kind == RecordKind::Event)
            .count(),
        40
    );
}

fn statement_end(session: &str, statement_id: u64) -> AuditRecord {
    session_event(
        session,
        "alice",
        AuditEvent::StatementFinished {
            statement_id,
            rows: 1,
            tag: Some("SELECT 1".into()),
            affected: None,
            error: None,
            duration: Duration::from_micros(10),
            skipped: false,
            masked: None,
        },
    )
}

/// A statement's end is taken without a write of its own (the next write carries it). When that
/// write fails, the statement whose start it carried is refused, but the end, already taken, is
/// kept and chained again once the log takes writes; so is an end taken while the log fails.
#[tokio::test]
async fn ends_taken_before_and_during_a_failure_are_written_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("audit");
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(FlakySink {
        inner: Box::new(
            JsonlSink::open(&log_dir, u64::MAX, OpenMode::Write(Durability::Written))
                .await
                .unwrap(),
        ),
        failing: Arc::clone(&failing),
    })];
    let cfg = AuditConfig {
        // No background write meanwhile: the next record's write carries the end.
        batch_max_delay: Duration::from_secs(30),
        ..config(vec![], Durability::Written)
    };
    let log = AuditLog::with_sinks(NODE, &cfg, sinks, None).await.unwrap();
    let start = |i: u64| event(NODE, i * 7); // never a denial (i * 7 % 7 == 0)
    log.record(start(1)).await.unwrap();
    log.record(statement_end("s1", 7)).await.unwrap();
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        log.record(start(2)).await.is_err(),
        "its statement is refused"
    );
    log.record(statement_end("s1", 777)).await.unwrap();
    assert!(!log.is_healthy());
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    log.record(start(3)).await.unwrap();
    assert!(log.is_healthy());
    log.shutdown().await.unwrap();

    let reader = JsonlSink::open(&log_dir, u64::MAX, OpenMode::Read)
        .await
        .unwrap();
    let report = verify(&reader, &[]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let records = all_records(&reader).await;
    let order: Vec<(String, u64)> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Event)
        .map(|r| {
            (
                r.event.clone(),
                payload(r)["statement_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("statement_started".to_owned(), 7),
            ("statement_finished".to_owned(), 7),
            ("statement_finished".to_owned(), 777),
            ("statement_started".to_owned(), 21),
        ],
        "the refused start is not in the trail; both ends are, before the next start"
    );
    let recovered = notices(&records, "sink_recovered");
    assert_eq!(recovered.len(), 1);
    assert_eq!(payload(recovered[0])["details"]["refused"], 1);
}
