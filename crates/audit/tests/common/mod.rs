//! Helpers shared by the audit tests: records, configs, a sink that fails on demand, chain
//! rewriting (what an attacker with write access but no signing key can do).

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use audit::{
    AuditConfig, CheckpointSigner, Durability, OnFailure, RecordKind, ScanCursor, ScanItem,
    ScanPage, Sink, SinkConfig, SinkError, StoredRecord,
};
use gateway_core::{AuditEvent, AuditRecord, AuditSink as _, ClientInfo, Decision, Verdict};

pub fn client() -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        addr: "127.0.0.1:50000".parse().expect("address"),
        protocol: "postgres",
        tls: false,
        application: Some("psql".into()),
    })
}

/// Statement `i` by `alice` on `sales`; every seventh is denied.
pub fn event(node: &str, i: u64) -> AuditRecord {
    let event = if i % 7 == 3 {
        AuditEvent::StatementDenied {
            statement_id: i,
            sql: Arc::from(format!("delete from orders where id = {i}")),
            verdict: Verdict {
                decision: Decision::Deny,
                rule: Some(Arc::from("no-deletes")),
                reason: Some("deletes need approval".into()),
                syntax_error: None,
            },
            objects: None,
            fingerprint: None,
            parameters: None,
        }
    } else {
        AuditEvent::StatementStarted {
            statement_id: i,
            sql: Arc::from(format!("select {i} from orders")),
            classification: Some(Arc::from("read")),
            objects: None,
            fingerprint: None,
            parameters: None,
            rule: None,
            approval_id: None,
        }
    };
    AuditRecord {
        time: SystemTime::now(),
        node: Arc::from(node),
        session_id: Arc::from("s1"),
        subject: Some(Arc::from(if i % 2 == 1 { "bob" } else { "alice" })),
        target: Some(Arc::from("sales")),
        client: client(),
        event,
    }
}

pub fn config(sinks: Vec<SinkConfig>, durability: Durability) -> AuditConfig {
    AuditConfig {
        durability,
        on_failure: OnFailure::Closed,
        queue_capacity: 1024,
        batch_max_records: 64,
        batch_max_delay: Duration::ZERO,
        checkpoint_every_records: 5,
        checkpoint_every: Duration::from_secs(60),
        retry_for: Duration::from_millis(300),
        signing_key_file: None,
        // Tests pass their signer in, or sign nothing.
        generated_key_file: None,
        sinks,
        // Everything else as when `[audit]` is absent, so new keys need no change here.
        ..AuditConfig::default_for(std::path::Path::new("unused"))
    }
}

pub fn keys() -> (CheckpointSigner, Vec<u8>) {
    let (private_pem, public_pem) = audit::generate_signing_key().expect("keygen");
    let signer = CheckpointSigner::from_pkcs8(private_pem.as_bytes()).expect("signer");
    let public = audit::parse_public_key(public_pem.as_bytes()).expect("public key");
    (signer, public)
}

/// Writes events `0..n` of `node` through a signed log (sync durability, `cfg`) into `sink` and
/// shuts the log down; returns the public key that verifies its checkpoints.
pub async fn write_signed_into(
    sink: Box<dyn Sink>,
    cfg: &AuditConfig,
    node: &str,
    n: u64,
) -> Vec<u8> {
    let (signer, public) = keys();
    let log = audit::AuditLog::with_sinks(node, cfg, vec![sink], Some(signer))
        .await
        .unwrap();
    for i in 0..n {
        log.record(event(node, i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    public
}

/// Every readable record, in storage order.
pub async fn all_records(sink: &dyn Sink) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut cursor = ScanCursor::default();
    loop {
        let page = sink.scan(cursor, 100).await.expect("scan");
        for item in page.items {
            if let ScanItem::Record { record, .. } = item {
                out.push(record);
            }
        }
        match page.next {
            Some(c) => cursor = c,
            None => return out,
        }
    }
}

/// The seq of the `n`-th event record (1-based) of a chain.
pub fn nth_event(records: &[StoredRecord], n: usize) -> u64 {
    records
        .iter()
        .filter(|r| r.kind == RecordKind::Event)
        .nth(n - 1)
        .expect("enough events")
        .seq
}

/// Seqs of the checkpoint records.
pub fn checkpoints(records: &[StoredRecord]) -> Vec<u64> {
    records
        .iter()
        .filter(|r| r.kind == RecordKind::Checkpoint)
        .map(|r| r.seq)
        .collect()
}

/// Applies `edit` to the record at `seq` and recomputes every hash from there on, as an attacker
/// with write access (but without the signing key) would.
pub fn rewrite_from(
    records: &[StoredRecord],
    seq: u64,
    edit: impl FnOnce(&mut Vec<u8>),
) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut prev = None;
    let mut edit = Some(edit);
    for r in records.iter().filter(|r| r.seq >= seq) {
        let mut payload = r.payload.clone();
        if r.seq == seq {
            if let Some(edit) = edit.take() {
                edit(&mut payload);
            }
        }
        let prev_hash = prev.unwrap_or(r.prev_hash);
        let sealed = StoredRecord::seal(&r.node, r.seq, r.kind, prev_hash, payload).expect("seal");
        prev = Some(sealed.hash);
        out.push(sealed);
    }
    out
}

/// Replaces the first occurrence of `from` by `to` (same length keeps JSON valid for digits).
pub fn replace_bytes(payload: &mut Vec<u8>, from: &str, to: &str) {
    let text = String::from_utf8(payload.clone()).expect("utf-8");
    assert!(text.contains(from), "payload {text} lacks {from}");
    *payload = text.replacen(from, to, 1).into_bytes();
}

/// A sink that wraps another and fails while `failing` is set.
pub struct FlakySink {
    pub inner: Box<dyn Sink>,
    pub failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Sink for FlakySink {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn write_batch(&self, records: &[std::sync::Arc<StoredRecord>]) -> Result<(), SinkError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SinkError::new("flaky", "disk full (simulated)"));
        }
        self.inner.write_batch(records).await
    }
    async fn tail(&self, node: &str) -> Result<Option<StoredRecord>, SinkError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SinkError::new("flaky", "disk full (simulated)"));
        }
        self.inner.tail(node).await
    }
    async fn scan(&self, cursor: ScanCursor, limit: usize) -> Result<ScanPage, SinkError> {
        self.inner.scan(cursor, limit).await
    }
    async fn checkpoint_copies(&self) -> Result<Vec<(String, StoredRecord)>, SinkError> {
        self.inner.checkpoint_copies().await
    }
    fn append_blocking(
        &self,
        records: &[std::sync::Arc<StoredRecord>],
    ) -> Option<Result<(), SinkError>> {
        if self.failing.load(Ordering::SeqCst) {
            return Some(Err(SinkError::new("flaky", "disk full (simulated)")));
        }
        self.inner.append_blocking(records)
    }
    fn tail_blocking(&self, node: &str) -> Option<Result<Option<StoredRecord>, SinkError>> {
        if self.failing.load(Ordering::SeqCst) {
            return Some(Err(SinkError::new("flaky", "disk full (simulated)")));
        }
        self.inner.tail_blocking(node)
    }
}
