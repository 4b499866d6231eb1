//! The SQLite sink and the writer: tamper tests (verify names the right record), continuation,
//! sync durability, fail closed / open, shutdown, search.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit::{
    verify, AuditLog, Durability, OnFailure, OpenMode, Problem, RecordKind, SearchFilter, Sink,
    SinkConfig, SqliteSink, StoredRecord,
};
use common::*;
use gateway_core::AuditSink;
use rusqlite::{params, Connection};

const NODE: &str = "gw-1";

/// Writes `n` events through a signed log and shuts it down; returns the public key.
async fn write_signed(path: &Path, n: u64) -> Vec<u8> {
    let cfg = config(
        vec![SinkConfig::Sqlite { path: path.into() }],
        Durability::Sync,
    );
    let sink = SqliteSink::open(path, OpenMode::Write(Durability::Sync))
        .await
        .unwrap();
    write_signed_into(Box::new(sink), &cfg, NODE, n).await
}

async fn reader(path: &Path) -> SqliteSink {
    SqliteSink::open(path, OpenMode::Read).await.unwrap()
}

fn db(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn write_rows(conn: &Connection, records: &[StoredRecord]) {
    for r in records {
        conn.execute(
            "UPDATE audit_records SET prev_hash = ?1, hash = ?2, payload = ?3, time_us = ?6, subject = ?7, \
             target = ?8, event = ?9, verdict = ?10 WHERE node = ?4 AND seq = ?5",
            params![
                r.prev_hash.to_hex(),
                r.hash.to_hex(),
                r.payload,
                r.node,
                r.seq as i64,
                r.time_us,
                r.subject,
                r.target,
                r.event,
                r.verdict
            ],
        )
        .unwrap();
    }
}

async fn failure(path: &Path, key: Option<&[u8]>) -> (u64, Problem) {
    let keys: Vec<Vec<u8>> = key.map(|k| vec![k.to_vec()]).unwrap_or_default();
    let report = verify(&reader(path).await, &keys).await.unwrap();
    let f = report
        .first_failure()
        .unwrap_or_else(|| panic!("verify passed: {report:?}"))
        .clone();
    (f.seq, f.problem)
}

#[tokio::test]
async fn an_untouched_chain_verifies_and_ends_signed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let public = write_signed(&path, 23).await;
    let report = verify(&reader(&path).await, std::slice::from_ref(&public))
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let node = &report.nodes[0];
    assert_eq!(node.node, NODE);
    assert!(node.checkpoints >= 5, "{node:?}");
    assert_eq!(
        node.unsigned_tail, 1,
        "only the final checkpoint itself follows the last signed record"
    );
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let records = all_records(&reader(&path).await).await;
    assert_eq!(
        records.first().map(|r| r.event.as_str()),
        Some("log_opened")
    );
    assert_eq!(records.last().map(|r| r.kind), Some(RecordKind::Checkpoint));
}

#[tokio::test]
async fn tampering_is_named_at_the_right_record() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.db");
    let public = write_signed(&base, 23).await;
    let records = all_records(&reader(&base).await).await;
    let copy = |name: &str| {
        let p = dir.path().join(name);
        // A consistent copy: checkpoint the WAL into the main file first.
        db(&base)
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        std::fs::copy(&base, &p).unwrap();
        p
    };
    let k = nth_event(&records, 6);

    // Edit one byte of a payload.
    let p = copy("edit.db");
    let mut payload = records.iter().find(|r| r.seq == k).unwrap().payload.clone();
    replace_bytes(&mut payload, "from orders", "from ordert");
    db(&p)
        .execute(
            "UPDATE audit_records SET payload = ?1 WHERE seq = ?2",
            params![payload, k as i64],
        )
        .unwrap();
    assert_eq!(failure(&p, Some(&public)).await, (k, Problem::HashMismatch));

    // Edit a stored hash.
    let p = copy("hash.db");
    db(&p)
        .execute(
            "UPDATE audit_records SET hash = ?1 WHERE seq = ?2",
            params!["ab".repeat(32), k as i64],
        )
        .unwrap();
    assert_eq!(failure(&p, Some(&public)).await, (k, Problem::HashMismatch));

    // Edit an index column only (hide a record from a subject search).
    let p = copy("subject.db");
    db(&p)
        .execute(
            "UPDATE audit_records SET subject = 'mallory' WHERE seq = ?1",
            params![k as i64],
        )
        .unwrap();
    let (seq, problem) = failure(&p, Some(&public)).await;
    assert_eq!(
        (seq, problem.to_string().contains("subject")),
        (k, true),
        "{problem}"
    );

    // Delete a record.
    let p = copy("delete.db");
    db(&p)
        .execute(
            "DELETE FROM audit_records WHERE seq = ?1",
            params![k as i64],
        )
        .unwrap();
    assert_eq!(
        failure(&p, Some(&public)).await,
        (k, Problem::SeqGap { from: k, to: k })
    );

    // Delete two.
    let p = copy("delete2.db");
    db(&p)
        .execute(
            "DELETE FROM audit_records WHERE seq IN (?1, ?2)",
            params![k as i64, k as i64 + 1],
        )
        .unwrap();
    assert_eq!(
        failure(&p, Some(&public)).await,
        (k, Problem::SeqGap { from: k, to: k + 1 })
    );

    // Reorder two records (swap their rows).
    let p = copy("reorder.db");
    {
        let c = db(&p);
        let id = |seq: u64| -> i64 {
            c.query_row(
                "SELECT id FROM audit_records WHERE seq = ?1",
                params![seq as i64],
                |r| r.get(0),
            )
            .unwrap()
        };
        let (a, b) = (id(k), id(k + 1));
        c.execute("UPDATE audit_records SET id = -1 WHERE id = ?1", params![a])
            .unwrap();
        c.execute(
            "UPDATE audit_records SET id = ?1 WHERE id = ?2",
            params![a, b],
        )
        .unwrap();
        c.execute("UPDATE audit_records SET id = ?1 WHERE id = -1", params![b])
            .unwrap();
    }
    assert_eq!(
        failure(&p, Some(&public)).await,
        (
            k,
            Problem::OutOfOrder {
                found: k + 1,
                expected: k
            }
        )
    );

    // Truncate the tail (the final checkpoint goes with it): the copy beside the chain tells.
    let p = copy("truncate.db");
    db(&p)
        .execute(
            "DELETE FROM audit_records WHERE seq >= ?1",
            params![k as i64],
        )
        .unwrap();
    let last_cp = *checkpoints(&records).last().unwrap();
    assert_eq!(
        failure(&p, Some(&public)).await,
        (
            k,
            Problem::ChainEndsBeforeCheckpoint {
                checkpoint_seq: last_cp,
                last_seq: k - 1
            }
        )
    );

    // Replace a record with a self-consistent one (recomputed hash): the next one no longer links.
    let p = copy("replace.db");
    let forged = StoredRecord::seal(
        NODE,
        k,
        RecordKind::Event,
        records[(k - 1) as usize].prev_hash,
        {
            let mut p = records[(k - 1) as usize].payload.clone();
            replace_bytes(&mut p, "from orders", "from ordert");
            p
        },
    )
    .unwrap();
    write_rows(&db(&p), &[forged]);
    assert_eq!(
        failure(&p, Some(&public)).await,
        (k, Problem::Replaced { next: k + 1 })
    );

    // Rewrite history from an event on, recomputing every hash: only the signature tells, at the
    // first checkpoint after the edit.
    let p = copy("rewrite.db");
    let rewritten = rewrite_from(&records, k, |p| {
        replace_bytes(p, "from orders", "from ordert")
    });
    write_rows(&db(&p), &rewritten);
    let next_cp = checkpoints(&records).into_iter().find(|&c| c > k).unwrap();
    let (seq, problem) = failure(&p, Some(&public)).await;
    assert_eq!(seq, next_cp);
    assert!(
        matches!(problem, Problem::CheckpointSignatureInvalid(_)),
        "{problem}"
    );
    assert!(
        problem
            .to_string()
            .starts_with("checkpoint signature invalid"),
        "{problem}"
    );

    // Forge a checkpoint: a signature by another key over the right position.
    let p = copy("forge.db");
    let (other, _) = keys();
    let cp_seq = checkpoints(&records)[1];
    let before = records.iter().find(|r| r.seq == cp_seq - 1).unwrap();
    let forged = other.checkpoint(NODE, before.seq, &before.hash, std::time::SystemTime::now());
    let forged_payload = serde_json::to_vec(&forged).unwrap();
    let rewritten = rewrite_from(&records, cp_seq, |p| *p = forged_payload);
    write_rows(&db(&p), &rewritten);
    let (seq, problem) = failure(&p, Some(&public)).await;
    assert_eq!(seq, cp_seq);
    assert!(problem.to_string().contains("signed by key"), "{problem}");
}

#[tokio::test]
async fn truncation_to_a_checkpoint_with_its_copies_cannot_be_seen() {
    // Documented limit: cut the chain right after a checkpoint and delete the later copies too,
    // and the sink alone cannot tell. Verify passes; only another sink or an exported checkpoint
    // would show it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let public = write_signed(&path, 23).await;
    let records = all_records(&reader(&path).await).await;
    let cut = checkpoints(&records)[1];
    let c = db(&path);
    c.execute(
        "DELETE FROM audit_records WHERE seq > ?1",
        params![cut as i64],
    )
    .unwrap();
    c.execute(
        "DELETE FROM audit_checkpoints WHERE seq > ?1",
        params![cut as i64],
    )
    .unwrap();
    let report = verify(&reader(&path).await, std::slice::from_ref(&public))
        .await
        .unwrap();
    assert!(report.is_ok());
    assert_eq!(report.nodes[0].last_seq, cut);
}

#[tokio::test]
async fn no_public_key_means_no_signature_check_and_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    write_signed(&path, 8).await;
    let records = all_records(&reader(&path).await).await;
    let rewritten = rewrite_from(&records, nth_event(&records, 2), |p| {
        replace_bytes(p, "from orders", "from ordert")
    });
    write_rows(&db(&path), &rewritten);
    let report = verify(&reader(&path).await, &[]).await.unwrap();
    // Without the key the rewritten checkpoint's signed hash still disagrees with its chain.
    assert!(!report.is_ok());
    assert!(!report.signatures_checked);
    assert!(report.warnings.iter().any(|w| w.contains("no public key")));
}

/// Key rotation: the gateway restarts with a new signing key and the chain goes on. Each
/// checkpoint names its key (`key_id`), so verify checks each with its own key when all are
/// given, and names the first checkpoint whose key is missing otherwise.
#[tokio::test]
async fn a_chain_signed_by_rotated_keys_verifies_with_both_and_names_the_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let old = write_signed(&path, 12).await;
    let before = all_records(&reader(&path).await).await.len() as u64;
    // write_signed makes a fresh key every time: a restart with a rotated key.
    let new = write_signed(&path, 12).await;
    let all = all_records(&reader(&path).await).await;
    let (old_id, new_id) = (audit::key_id(&old), audit::key_id(&new));
    let cps = checkpoints(&all);
    let first_old_cp = cps[0];
    let first_new_cp = cps.iter().copied().find(|&c| c > before).unwrap();
    assert!(first_old_cp < before && first_new_cp < all.len() as u64);

    // Both keys, in either order, as separate keys: everything verifies, both signers named.
    for keys in [
        vec![old.clone(), new.clone()],
        vec![new.clone(), old.clone()],
    ] {
        let report = verify(&reader(&path).await, &keys).await.unwrap();
        assert!(report.is_ok(), "{report:?}");
        let node = &report.nodes[0];
        assert_eq!(node.signing_keys, vec![old_id.clone(), new_id.clone()]);
        assert_eq!(node.last_signed_seq, Some(all.len() as u64 - 1));
        assert_eq!(report.public_key_ids.len(), 2);
    }
    // Only the old key: the first checkpoint of the new key is named, with both ids.
    let (seq, problem) = failure(&path, Some(&old)).await;
    assert_eq!(seq, first_new_cp);
    assert_eq!(
        problem,
        Problem::UnknownSigningKey {
            key_id: new_id.clone(),
            given: vec![old_id.clone()]
        }
    );
    assert!(problem.to_string().contains(&new_id), "{problem}");
    // Only the new key: the very first checkpoint is already unverifiable.
    let (seq, problem) = failure(&path, Some(&new)).await;
    assert_eq!(seq, first_old_cp);
    assert!(
        matches!(&problem, Problem::UnknownSigningKey { key_id, .. } if *key_id == old_id),
        "{problem}"
    );
    // A key that signed nothing, given beside the right ones, changes nothing.
    let (_, unrelated) = keys();
    let report = verify(&reader(&path).await, &[unrelated, old.clone(), new.clone()])
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");

    // Relabelling a new-key checkpoint as the old key's (hashes recomputed) is a bad signature,
    // not an unknown key.
    let p = dir.path().join("relabelled.db");
    std::fs::copy(&path, &p).unwrap();
    let rewritten = rewrite_from(&all, first_new_cp, |payload| {
        replace_bytes(payload, &new_id, &old_id)
    });
    write_rows(&db(&p), &rewritten);
    let keys = [old.clone(), new.clone()];
    let report = verify(&reader(&p).await, &keys).await.unwrap();
    let f = report.first_failure().unwrap();
    assert_eq!(f.seq, first_new_cp);
    assert!(
        matches!(f.problem, Problem::CheckpointSignatureInvalid(_)),
        "{f}"
    );
}

#[tokio::test]
async fn the_chain_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let public = write_signed(&path, 7).await;
    let first = all_records(&reader(&path).await).await;
    // Reopen with the same key: write_signed makes a new key, so reopen by hand.
    let (signer, _) = keys();
    let cfg = config(
        vec![SinkConfig::Sqlite { path: path.clone() }],
        Durability::Batched,
    );
    let log = AuditLog::open(&cfg, NODE).await.unwrap();
    log.record(event(NODE, 100)).await.unwrap();
    log.shutdown().await.unwrap();
    let sink = SqliteSink::open(&path, OpenMode::Write(Durability::Sync))
        .await
        .unwrap();
    let log = AuditLog::with_sinks(NODE, &cfg, vec![Box::new(sink)], Some(signer))
        .await
        .unwrap();
    log.record(event(NODE, 101)).await.unwrap();
    log.shutdown().await.unwrap();
    let all = all_records(&reader(&path).await).await;
    let reopened = &all[first.len()];
    assert_eq!(reopened.seq, first.len() as u64 + 1);
    assert_eq!(reopened.prev_hash, first.last().unwrap().hash);
    assert_eq!(reopened.event, "log_opened");
    assert!(reopened
        .payload_text()
        .contains(&format!("\"previous_seq\":{}", first.len())));
    // Checkpoints made with the first key verify with it; the later key's do not.
    let report = verify(&reader(&path).await, std::slice::from_ref(&public))
        .await
        .unwrap();
    let f = report.first_failure().unwrap();
    assert!(f.problem.to_string().contains("signed by key"), "{f}");
    assert!(f.seq > first.len() as u64);
}

#[tokio::test]
async fn sync_records_are_readable_from_a_fresh_connection_when_record_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let cfg = config(
        vec![SinkConfig::Sqlite { path: path.clone() }],
        Durability::Sync,
    );
    let log = AuditLog::open(&cfg, NODE).await.unwrap();
    for i in 0..20u64 {
        log.record(event(NODE, i)).await.unwrap();
        let fresh = Connection::open(&path).unwrap();
        let found: i64 = fresh
            .query_row(
                "SELECT count(*) FROM audit_records WHERE instr(payload, ?1) > 0",
                params![format!("\"statement_id\":{i},").into_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, 1, "record {i} not visible after record() returned");
    }
    log.shutdown().await.unwrap();
    let stats = log.stats();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
    assert!(stats.written.load(Ordering::Relaxed) >= 21);
}

async fn flaky_log(
    dir: &Path,
    durability: Durability,
    on_failure: OnFailure,
) -> (AuditLog, Arc<AtomicBool>, std::path::PathBuf) {
    let path = dir.join("audit.db");
    let mut cfg = config(vec![SinkConfig::Sqlite { path: path.clone() }], durability);
    cfg.on_failure = on_failure;
    let failing = Arc::new(AtomicBool::new(false));
    let inner = SqliteSink::open(&path, OpenMode::Write(durability))
        .await
        .unwrap();
    let sink = FlakySink {
        inner: Box::new(inner),
        failing: Arc::clone(&failing),
    };
    let (signer, _) = keys();
    let log = AuditLog::with_sinks(NODE, &cfg, vec![Box::new(sink)], Some(signer))
        .await
        .unwrap();
    (log, failing, path)
}

#[tokio::test]
async fn fails_closed_within_a_bound_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (log, failing, path) = flaky_log(dir.path(), Durability::Sync, OnFailure::Closed).await;
    log.record(event(NODE, 0)).await.unwrap();
    failing.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = log.record(event(NODE, 1)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.kind, gateway_core::ErrorKind::AuditUnavailable);
    assert!(err.message.contains("disk full"), "{err}");
    // Meanwhile every record() fails at once.
    let started = Instant::now();
    assert!(log.record(event(NODE, 2)).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(!log.is_healthy());
    failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.is_healthy() {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.record(event(NODE, 3)).await.unwrap();
    log.shutdown().await.unwrap();
    let stats = log.stats();
    assert!(stats.refused.load(Ordering::Relaxed) >= 2);
    assert!(stats.failed.load(Ordering::Relaxed) >= 1);
    let records = all_records(&reader(&path).await).await;
    let recovered = records
        .iter()
        .find(|r| r.event == "sink_recovered")
        .expect("recovery notice");
    let text = recovered.payload_text();
    assert!(
        text.contains("were written after their callers had been told"),
        "{text}"
    );
    let report = verify(&reader(&path).await, &[]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test]
async fn fail_open_counts_drops_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let (log, failing, path) = flaky_log(dir.path(), Durability::Batched, OnFailure::Open).await;
    log.record(event(NODE, 0)).await.unwrap();
    failing.store(true, Ordering::SeqCst);
    log.record(event(NODE, 1)).await.unwrap();
    // The writer notices the failure on its next write; then records are dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.is_healthy() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 2..12 {
        log.record(event(NODE, i)).await.unwrap();
    }
    assert_eq!(log.stats().dropped.load(Ordering::Relaxed), 10);
    failing.store(false, Ordering::SeqCst);
    log.shutdown().await.unwrap();
    let records = all_records(&reader(&path).await).await;
    let notice = records
        .iter()
        .find(|r| r.event == "sink_recovered")
        .expect("recovery notice");
    assert!(
        notice.payload_text().contains("\"dropped\":10"),
        "{}",
        notice.payload_text()
    );
    // The record queued before the failure was kept.
    assert!(records
        .iter()
        .any(|r| r.payload_text().contains("\"statement_id\":1,")));
    assert!(verify(&reader(&path).await, &[]).await.unwrap().is_ok());
}

#[tokio::test]
async fn shutdown_drains_the_queue_and_signs_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (signer, public) = keys();
    let mut cfg = config(
        vec![SinkConfig::Sqlite { path: path.clone() }],
        Durability::Batched,
    );
    cfg.checkpoint_every_records = 100_000;
    let sink = SqliteSink::open(&path, OpenMode::Write(Durability::Batched))
        .await
        .unwrap();
    let log = Arc::new(
        AuditLog::with_sinks(NODE, &cfg, vec![Box::new(sink)], Some(signer))
            .await
            .unwrap(),
    );
    for i in 0..500 {
        log.record(event(NODE, i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    assert!(
        log.record(event(NODE, 9999)).await.is_err(),
        "a shut-down log refuses records"
    );
    let records = all_records(&reader(&path).await).await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == RecordKind::Event)
            .count(),
        500
    );
    assert_eq!(records.last().unwrap().kind, RecordKind::Checkpoint);
    let report = verify(&reader(&path).await, std::slice::from_ref(&public))
        .await
        .unwrap();
    assert!(
        report.is_ok() && report.nodes[0].unsigned_tail == 1,
        "{report:?}"
    );
}

#[tokio::test]
async fn batched_throughput_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut cfg = config(
        vec![SinkConfig::Sqlite { path: path.clone() }],
        Durability::Batched,
    );
    cfg.queue_capacity = 4096;
    cfg.batch_max_records = 512;
    cfg.checkpoint_every_records = 1000;
    cfg.retry_for = Duration::from_secs(5);
    let sink = SqliteSink::open(&path, OpenMode::Write(Durability::Batched))
        .await
        .unwrap();
    let (signer, public) = keys();
    let log = Arc::new(
        AuditLog::with_sinks(NODE, &cfg, vec![Box::new(sink)], Some(signer))
            .await
            .unwrap(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            for i in 0..2500u64 {
                log.record(event(NODE, t * 10_000 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    log.shutdown().await.unwrap();
    eprintln!("10k batched records in {:?}", started.elapsed());
    let report = verify(&reader(&path).await, std::slice::from_ref(&public))
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.nodes[0].records > 10_000);
}

#[tokio::test]
async fn tail_and_search_find_the_right_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    write_signed(&path, 30).await;
    let sink = reader(&path).await;
    let last = audit::tail(&sink, 3, Some(NODE)).await.unwrap();
    assert_eq!(last.len(), 3);
    assert!(last[0].seq < last[2].seq);
    let denied = audit::search(
        &sink,
        &SearchFilter {
            verdict: Some("deny".into()),
            ..Default::default()
        },
        100,
    )
    .await
    .unwrap();
    assert_eq!(denied.len(), (0..30).filter(|i| i % 7 == 3).count());
    assert!(denied.iter().all(|r| r.event == "statement_denied"));
    let alice_text = SearchFilter {
        subject: Some("alice".into()),
        text: Some("select 12 ".into()),
        target: Some("sales".into()),
        ..Default::default()
    };
    let found = audit::search(&sink, &alice_text, 100).await.unwrap();
    assert_eq!(found.len(), 1);
    let future = SearchFilter {
        since: Some(std::time::SystemTime::now() + Duration::from_secs(60)),
        ..Default::default()
    };
    assert!(audit::search(&sink, &future, 100).await.unwrap().is_empty());
    // The generic scan-based search agrees with the SQL one.
    struct Scanning<'a>(&'a SqliteSink);
    #[async_trait::async_trait]
    impl Sink for Scanning<'_> {
        fn name(&self) -> &str {
            self.0.name()
        }
        async fn write_batch(
            &self,
            r: &[std::sync::Arc<StoredRecord>],
        ) -> Result<(), audit::SinkError> {
            self.0.write_batch(r).await
        }
        async fn tail(&self, n: &str) -> Result<Option<StoredRecord>, audit::SinkError> {
            self.0.tail(n).await
        }
        async fn scan(
            &self,
            c: audit::ScanCursor,
            l: usize,
        ) -> Result<audit::ScanPage, audit::SinkError> {
            self.0.scan(c, l).await
        }
        async fn checkpoint_copies(&self) -> Result<Vec<(String, StoredRecord)>, audit::SinkError> {
            self.0.checkpoint_copies().await
        }
    }
    assert_eq!(
        audit::search(&Scanning(&sink), &alice_text, 100)
            .await
            .unwrap(),
        found
    );
    assert_eq!(audit::tail(&Scanning(&sink), 3, None).await.unwrap(), last);
}

#[tokio::test]
async fn the_only_index_is_node_and_seq_and_older_ones_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    write_signed(&path, 3).await;
    let indexes = |path: &Path| -> Vec<String> {
        let conn = db(path);
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_records' AND sql IS NOT NULL ORDER BY name")
            .unwrap();
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        names
    };
    assert_eq!(indexes(&path), ["audit_records_node_seq"]);
    // A file written by an earlier gateway has three more; opening it for writing drops them.
    db(&path)
        .execute_batch(
            "CREATE INDEX audit_records_time ON audit_records (time_us);
             CREATE INDEX audit_records_subject ON audit_records (subject, time_us);
             CREATE INDEX audit_records_target ON audit_records (target, time_us);",
        )
        .unwrap();
    assert_eq!(indexes(&path).len(), 4);
    drop(
        SqliteSink::open(&path, OpenMode::Write(Durability::Batched))
            .await
            .unwrap(),
    );
    assert_eq!(indexes(&path), ["audit_records_node_seq"]);
    // The chain is intact and still continues.
    write_signed(&path, 2).await;
    let report = verify(&reader(&path).await, &[]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// One statement record of `session`: `started`, `finished` or `denied`.
fn statement(session: &str, id: u64, what: &str) -> gateway_core::AuditRecord {
    use gateway_core::AuditEvent;
    let mut r = event(NODE, 0);
    r.session_id = Arc::from(session);
    r.event = match what {
        "started" => AuditEvent::StatementStarted {
            statement_id: id,
            sql: Arc::from(format!("select {id}")),
            classification: Some(Arc::from("read")),
            objects: None,
            fingerprint: None,
            parameters: None,
            rule: Some(Arc::from("readers")),
            approval_id: None,
        },
        "finished" => AuditEvent::StatementFinished {
            statement_id: id,
            rows: id,
            tag: Some(format!("SELECT {id}")),
            affected: None,
            error: None,
            duration: Duration::from_micros(300),
            skipped: false,
            masked: None,
        },
        _ => match event(NODE, 3).event {
            AuditEvent::StatementDenied {
                verdict,
                objects,
                fingerprint,
                parameters,
                ..
            } => AuditEvent::StatementDenied {
                statement_id: id,
                sql: Arc::from("delete from orders"),
                verdict,
                objects,
                fingerprint,
                parameters,
            },
            other => panic!("event 3 is a denial, not {other:?}"),
        },
    };
    r
}

/// Batched durability: a statement whose end arrives before its start is written becomes one
/// `statement_executed` record; each session's records keep their order; a start written alone
/// is followed by its own `statement_finished`; the chain verifies.
#[tokio::test]
async fn batched_durability_joins_a_start_and_its_end_into_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut cfg = config(
        vec![SinkConfig::Sqlite { path: path.clone() }],
        Durability::Batched,
    );
    // Everything recorded back to back lands in one batch.
    cfg.batch_max_delay = Duration::from_millis(300);
    let log = AuditLog::open(&cfg, NODE).await.unwrap();
    for (session, id, what) in [
        ("s1", 1, "started"),
        ("s1", 2, "started"), // pipelined behind statement 1
        ("s2", 1, "started"),
        ("s1", 1, "finished"),
        ("s2", 2, "denied"), // s2's held start goes first, alone
        ("s1", 2, "finished"),
        ("s1", 3, "started"), // its end comes after the batch is written
    ] {
        log.record(statement(session, id, what)).await.unwrap();
    }
    let events = |records: Vec<StoredRecord>| -> Vec<(String, String, u64)> {
        records
            .into_iter()
            .filter(|r| r.kind == RecordKind::Event)
            .map(|r| {
                let p: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                (
                    r.event,
                    p["session_id"].as_str().unwrap().to_owned(),
                    p["statement_id"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(all_records(&reader(&path).await).await).len() < 5 {
        assert!(Instant::now() < deadline, "the batch was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.record(statement("s1", 3, "finished")).await.unwrap();
    log.shutdown().await.unwrap();

    let records = all_records(&reader(&path).await).await;
    let want = [
        ("statement_executed", "s1", 1),
        ("statement_started", "s2", 1),
        ("statement_denied", "s2", 2),
        ("statement_executed", "s1", 2),
        ("statement_started", "s1", 3),
        ("statement_finished", "s1", 3),
    ]
    .map(|(e, s, i)| (e.to_owned(), s.to_owned(), i));
    assert_eq!(events(records.clone()), want);

    let executed = records
        .iter()
        .find(|r| r.event == "statement_executed")
        .unwrap();
    assert_eq!(executed.verdict.as_deref(), Some("allow"));
    let p: serde_json::Value = serde_json::from_slice(&executed.payload).unwrap();
    assert_eq!(p["sql"], "select 1");
    assert_eq!(p["rule"], "readers");
    assert_eq!(p["rows"], 1);
    assert_eq!(p["tag"], "SELECT 1");
    assert_eq!(p["duration"]["nanos"], 300_000);
    assert!(verify(&reader(&path).await, &[]).await.unwrap().is_ok());
    // Search finds the joined record by its event name and verdict.
    let found = reader(&path)
        .await
        .search(
            &SearchFilter {
                event: Some("statement_executed".into()),
                verdict: Some("allow".into()),
                ..SearchFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
}

/// Sync durability never joins: each record is durable at its own moment.
#[tokio::test]
async fn sync_durability_keeps_a_start_and_its_end_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let cfg = config(
        vec![SinkConfig::Sqlite { path: path.clone() }],
        Durability::Sync,
    );
    let log = AuditLog::open(&cfg, NODE).await.unwrap();
    log.record(statement("s1", 1, "started")).await.unwrap();
    log.record(statement("s1", 1, "finished")).await.unwrap();
    log.shutdown().await.unwrap();
    let events: Vec<String> = all_records(&reader(&path).await)
        .await
        .into_iter()
        .filter(|r| r.kind == RecordKind::Event)
        .map(|r| r.event)
        .collect();
    assert_eq!(events, ["statement_started", "statement_finished"]);
}

/// A sink that notes which thread each batch is written from.
struct ThreadNoting {
    inner: Box<dyn Sink>,
    threads: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

#[async_trait::async_trait]
impl Sink for ThreadNoting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn write_batch(
        &self,
        records: &[Arc<audit::record::StoredRecord>],
    ) -> Result<(), audit::error::SinkError> {
        let name = std::thread::current().name().map(str::to_owned);
        self.threads.lock().unwrap().push(name);
        self.inner.write_batch(records).await
    }
    async fn tail(
        &self,
        node: &str,
    ) -> Result<Option<audit::record::StoredRecord>, audit::error::SinkError> {
        self.inner.tail(node).await
    }
    async fn scan(
        &self,
        cursor: audit::sink::ScanCursor,
        limit: usize,
    ) -> Result<audit::sink::ScanPage, audit::error::SinkError> {
        self.inner.scan(cursor, limit).await
    }
    async fn checkpoint_copies(
        &self,
    ) -> Result<Vec<(String, audit::record::StoredRecord)>, audit::error::SinkError> {
        self.inner.checkpoint_copies().await
    }
}

#[tokio::test]
async fn batches_are_written_from_the_writers_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let cfg = config(
        vec![SinkConfig::Sqlite { path: path.clone() }],
        Durability::Sync,
    );
    let threads = Arc::default();
    let sink = ThreadNoting {
        inner: Box::new(
            SqliteSink::open(&path, OpenMode::Write(Durability::Sync))
                .await
                .unwrap(),
        ),
        threads: Arc::clone(&threads),
    };
    let log = AuditLog::with_sinks(NODE, &cfg, vec![Box::new(sink)], None)
        .await
        .unwrap();
    for i in 0..20 {
        log.record(event(NODE, i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    let threads = threads.lock().unwrap().clone();
    // The opening notices are written by the caller before the writer starts; every batch after
    // them comes from the writer's thread, where the SQLite sink writes without a hand-off.
    assert!(threads.len() >= 2, "{threads:?}");
    assert!(
        threads[1..]
            .iter()
            .all(|t| t.as_deref() == Some("audit-writer")),
        "{threads:?}"
    );
    // And every record is in the trail.
    let records = all_records(&reader(&path).await).await;
    let statements = records
        .iter()
        .filter(|r| r.event.starts_with("statement_"))
        .count();
    assert_eq!(statements, 20, "{records:?}");
}
