//! [`AuditLog`]: the gateway's durable [`AuditSink`]. A bounded queue feeds one writer task that
//! chains, batches, checkpoints and writes records to every sink.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gateway_core::{AuditEvent, AuditRecord, AuditSink, ErrorKind, GatewayError, Metrics, Side};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::config::{AuditConfig, Durability, OnFailure};
use crate::direct::{Chain, Direct};
use crate::error::{AuditError, SinkError};
use crate::follower::Follower;
use crate::opening::{catch_up, extend_primary, previous_stop};
use crate::record::{now_for_payload, ChainHash, RecordIndex, RecordKind, StoredRecord};
use crate::signing::{load_or_generate_key, public_key_path, CheckpointSigner, NoticePayload};
use crate::sink::{open_sink, OpenMode, Sink};

/// Counters for metrics. Read them with `load(Ordering::Relaxed)`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records waiting in the queue.
    pub queue_depth: AtomicU64,
    /// Records (events, checkpoints, notices) durable in every sink.
    pub written: AtomicU64,
    /// Sink writes that failed (each attempt counts).
    pub failed: AtomicU64,
    /// Records dropped because the trail was unavailable and `on_failure = "open"`. Also counted
    /// in the gateway's `portcullis_audit_failures_total` once
    /// [`AuditLog::count_drops_in`] has been called.
    pub dropped: AtomicU64,
    /// `record()` calls refused because the trail was unavailable (`on_failure = "closed"`).
    pub refused: AtomicU64,
    /// Signed checkpoints written.
    pub checkpoints: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) stats: Arc<AuditStats>,
    /// False from the first failed write until a write succeeds again.
    pub(crate) healthy: AtomicBool,
    /// Set by `shutdown`.
    closed: AtomicBool,
    /// The last sink error, for messages; only touched outside any `.await`.
    last_error: Mutex<String>,
    /// Seconds (since the log opened) of the last fail-open ERROR line, to keep the log readable.
    last_drop_log: AtomicU64,
    opened: Instant,
    /// The gateway's metrics, where dropped records are counted too (fail open).
    metrics: OnceLock<Arc<Metrics>>,
}

impl Shared {
    pub(crate) fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    pub(crate) fn set_last_error(&self, error: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            e.clear();
            e.push_str(error);
        }
    }
}

/// Initial capacity of a record's payload buffer (statement records measured 300 to 700 bytes).
pub(crate) const PAYLOAD_CAPACITY: usize = 768;

struct Entry {
    /// Serialized by the writer, off the statement's path: the record is in the queue (and so
    /// accepted by the trail) before the statement is forwarded, and the bytes the chain hashes
    /// are made once, there.
    record: AuditRecord,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The durable audit log: implements [`AuditSink`] for the gateway.
///
/// `record()` queues the record; the writer serializes it once (those bytes are the stored
/// payload) and chains it. In `sync` durability `record()` then waits until the batch holding the
/// record is durable in every sink;
/// in `batched` it returns at once. While the sinks fail, `record()` returns `Err` (fail closed)
/// or drops the record and returns `Ok` (fail open); the writer keeps retrying and resumes on its
/// own. Call [`shutdown`](Self::shutdown) before the process exits.
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
    /// Written durability on a primary that appends on the caller's thread: records go there
    /// directly, and the queue stays empty.
    direct: Option<Arc<Direct>>,
    shared: Arc<Shared>,
    durability: Durability,
    on_failure: OnFailure,
    retry_for: Duration,
    shutdown: Arc<Notify>,
    /// The writer thread's result, sent when it ends.
    writer: Mutex<Option<oneshot::Receiver<Result<(), AuditError>>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("durability", &self.durability)
            .field("on_failure", &self.on_failure)
            .finish()
    }
}

thread_local! {
    /// Set on the audit writer's own thread (and the index thread's), where sinks may block instead of handing their I/O
    /// to tokio's blocking pool.
    pub(crate) static ON_WRITER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the caller runs on the audit writer's thread, where blocking I/O is the point: nothing
/// else runs there, and handing a write to the blocking pool and back would only add two thread
/// wake-ups to every batch (a context switch each, which under sync durability is most of the
/// trail's cost).
pub(crate) fn on_writer_thread() -> bool {
    ON_WRITER_THREAD.with(std::cell::Cell::get)
}

/// Runs the writer on a thread of its own, with a single-threaded runtime for its channel,
/// timers and any network sink. Its result arrives on the receiver.
fn spawn_writer_thread(
    run: impl std::future::Future<Output = Result<(), AuditError>> + Send + 'static,
) -> std::io::Result<oneshot::Receiver<Result<(), AuditError>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            ON_WRITER_THREAD.with(|on| on.set(true));
            let _ = done.send(runtime.block_on(run));
        })?;
    Ok(result)
}

impl AuditLog {
    /// Opens every configured sink for writing, reads the chain's tail for `node` from the
    /// primary, brings lagging secondary sinks up to it, loads the signing key and starts the
    /// writer. Must run inside a tokio runtime. Without `signing_key_file` a warning is logged.
    pub async fn open(config: &AuditConfig, node: &str) -> Result<AuditLog, AuditError> {
        if config.sinks.is_empty() {
            return Err(AuditError::Config("no audit sink configured".into()));
        }
        let signer = match (&config.signing_key_file, &config.generated_key_file) {
            (Some(path), _) => Some(CheckpointSigner::from_file(path)?),
            (None, Some(path)) => {
                let (signer, generated) = load_or_generate_key(path)?;
                let public = public_key_path(path);
                if generated {
                    tracing::info!(
                        key_id = signer.key_id(),
                        private_key = %path.display(),
                        public_key = %public.display(),
                        "audit: generated a checkpoint signing key (no `audit.signing_key_file` set); keep a copy of \
                         the public key away from this host to verify the trail with `portcullis audit verify --public-key`"
                    );
                } else {
                    tracing::info!(
                        key_id = signer.key_id(),
                        private_key = %path.display(),
                        public_key = %public.display(),
                        "audit: signing checkpoints with the key generated in the data directory"
                    );
                }
                Some(signer)
            }
            (None, None) => {
                tracing::warn!(
                    "audit: no signing key: the trail is hash-chained but not signed, so whoever can \
                     write to the sinks can rewrite it undetected"
                );
                None
            }
        };
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for sink in &config.sinks {
            sinks.push(open_sink(sink, OpenMode::Write(config.durability)).await?);
        }
        Self::with_sinks(node, config, sinks, signer).await
    }

    /// Like [`open`](Self::open) with sinks and signer already made (embedding, tests). The first
    /// sink is the primary.
    pub async fn with_sinks(
        node: &str,
        config: &AuditConfig,
        sinks: Vec<Box<dyn Sink>>,
        signer: Option<CheckpointSigner>,
    ) -> Result<AuditLog, AuditError> {
        let Some(primary) = sinks.first() else {
            return Err(AuditError::Config("no audit sink configured".into()));
        };
        let mut repairs = Vec::new();
        let mut tail = primary.tail(node).await?;
        for sink in sinks.iter().skip(1) {
            if let Some(notice) =
                extend_primary(primary.as_ref(), sink.as_ref(), node, tail.as_ref()).await?
            {
                repairs.push(notice);
                tail = primary.tail(node).await?;
            }
        }
        let (head_seq, head_hash) = tail
            .as_ref()
            .map(|t| (t.seq, t.hash))
            .unwrap_or((0, ChainHash::GENESIS));
        if let Some(t) = &tail {
            if t.computed_hash() != t.hash {
                tracing::error!(node, seq = t.seq, sink = primary.name(), "audit: the last stored record does not match its hash; continuing the chain from the stored hash, verify will name it");
            }
        }
        let mut durable = vec![head_seq; sinks.len()];
        for (i, sink) in sinks.iter().enumerate().skip(1) {
            durable[i] =
                catch_up(primary.as_ref(), sink.as_ref(), node, head_seq, &head_hash).await?;
        }
        for sink in &sinks {
            repairs.extend(sink.take_repairs());
        }
        let unclean = previous_stop(primary.as_ref(), node, tail.as_ref()).await?;

        let stats = Arc::new(AuditStats::default());
        let shared = Arc::new(Shared {
            stats,
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
            last_drop_log: AtomicU64::new(u64::MAX),
            opened: Instant::now(),
            metrics: OnceLock::new(),
        });
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let shutdown = Arc::new(Notify::new());
        let mut writer = Writer {
            node: node.to_owned(),
            sinks,
            durable,
            dirty: Vec::new(),
            head_seq,
            head_hash,
            pending: Vec::new(),
            held: HeldStarts::default(),
            waiters: Vec::new(),
            signer,
            unsynced_since: None,
            follower: None,
            since_checkpoint: 0,
            last_checkpoint_at: Instant::now(),
            config: config.clone(),
            shared: Arc::clone(&shared),
            outage: None,
        };
        writer.dirty = vec![false; writer.sinks.len()];
        let mut opened = serde_json::Map::new();
        opened.insert("previous_seq".into(), head_seq.into());
        opened.insert(
            "previous_stop".into(),
            match (&tail, &unclean) {
                (None, _) => "none",
                (Some(_), None) => "clean",
                (Some(_), Some(_)) => "unclean",
            }
            .into(),
        );
        opened.insert(
            "durability".into(),
            format!("{:?}", config.durability).to_lowercase().into(),
        );
        opened.insert(
            "on_failure".into(),
            format!("{:?}", config.on_failure).to_lowercase().into(),
        );
        opened.insert(
            "signing_key_id".into(),
            writer.signer.as_ref().map(|s| s.key_id().to_owned()).into(),
        );
        opened.insert(
            "sinks".into(),
            writer
                .sinks
                .iter()
                .map(|s| s.name().to_owned())
                .collect::<Vec<_>>()
                .into(),
        );
        // What the previous run left behind comes first, then this run's opening.
        for repair in repairs {
            writer.notice(repair);
        }
        if let Some(unclean) = unclean {
            tracing::warn!("audit: {}", unclean.message);
            writer.notice(unclean);
        }
        writer.notice(NoticePayload {
            notice: "log_opened".into(),
            time: now_for_payload(),
            message: format!("audit log opened; the chain continues after seq {head_seq}"),
            details: opened,
        });
        // The opening notices are written before the gateway takes any statement: a sink that
        // cannot take them fails the start.
        writer
            .flush()
            .await
            .map_err(|e| AuditError::Sink(SinkError::new("audit", e)))?;
        if matches!(config.durability, Durability::Written | Durability::Sync)
            && writer.sinks.len() > 1
        {
            // Written and sync durability: the writer keeps the primary, which holds the trail;
            // the secondaries follow on a thread of their own, so that no statement waits for
            // an index (in sync durability: for a second fsync).
            let secondaries = writer.sinks.split_off(1);
            let durable = writer.durable.split_off(1);
            writer.dirty.truncate(1);
            writer.follower = Some(
                Follower::spawn(
                    node,
                    secondaries,
                    durable,
                    config.batch_max_delay,
                    Arc::clone(&shared),
                )
                .map_err(|e| {
                    AuditError::Config(format!("cannot start the audit index thread: {e}"))
                })?,
            );
        }
        let direct_primary = config.durability == Durability::Written
            && writer
                .sinks
                .first()
                .and_then(|p| p.tail_blocking(node))
                .is_some();
        if direct_primary {
            // The secondaries are the follower's already (above); the primary leaves the writer.
            let Some(primary) = writer.sinks.pop() else {
                return Err(AuditError::Config("no audit sink configured".into()));
            };
            let follower = writer.follower.take();
            let chain = Chain::new(
                writer.head_seq,
                writer.head_hash,
                writer.since_checkpoint,
                writer.last_checkpoint_at.into_std(),
                writer.signer.take(),
            );
            let direct = Arc::new(Direct::new(
                node,
                chain,
                primary,
                Arc::clone(&shared),
                config.checkpoint_every_records,
            ));
            let handle = spawn_writer_thread(Arc::clone(&direct).run(
                follower,
                Arc::clone(&shutdown),
                config.batch_max_delay,
                config.checkpoint_every,
                config.retry_for,
            ))
            .map_err(|e| {
                AuditError::Config(format!("cannot start the audit writer thread: {e}"))
            })?;
            return Ok(AuditLog {
                tx,
                direct: Some(direct),
                shared,
                durability: config.durability,
                on_failure: config.on_failure,
                retry_for: config.retry_for,
                shutdown,
                writer: Mutex::new(Some(handle)),
            });
        }
        let handle = spawn_writer_thread(writer.run(rx, Arc::clone(&shutdown))).map_err(|e| {
            AuditError::Config(format!("cannot start the audit writer thread: {e}"))
        })?;
        Ok(AuditLog {
            tx,
            direct: None,
            shared,
            durability: config.durability,
            on_failure: config.on_failure,
            retry_for: config.retry_for,
            shutdown,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// The counters, shared; they stay valid after shutdown.
    pub fn stats(&self) -> Arc<AuditStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Counts every record dropped from now on (`on_failure = "open"`) in `metrics`'
    /// `portcullis_audit_failures_total`, beside [`AuditStats::dropped`]: with fail open,
    /// `record()` succeeds, so the gateway's session phases, which count the records the sink
    /// refuses, never see a drop. The gateway binary calls this once the gateway (and with it its
    /// metrics) is built, before any listener runs; a second call is ignored.
    pub fn count_drops_in(&self, metrics: Arc<Metrics>) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// Whether the last write succeeded (false while the sinks fail).
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// Stops taking records, writes what is queued, writes a final signed checkpoint, and waits
    /// for the writer. Records still unwritten after `retry_for` of failing sinks are reported as
    /// [`AuditError::Unwritten`]. Calling it again returns `Ok` at once.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        self.shared.closed.store(true, Ordering::Release);
        self.shutdown.notify_one();
        let handle = match self.writer.lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        match handle {
            Some(h) => h.await.map_err(|_| {
                AuditError::Config("the audit writer thread ended without a result".into())
            })?,
            None => Ok(()),
        }
    }

    fn unavailable(&self, why: &str) -> Result<(), GatewayError> {
        match self.on_failure {
            OnFailure::Closed => {
                self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(GatewayError::new(
                    ErrorKind::AuditUnavailable,
                    Side::Gateway,
                    format!("audit trail unavailable: {why}"),
                ))
            }
            OnFailure::Open => {
                let dropped = self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(metrics) = self.shared.metrics.get() {
                    metrics.audit_failure();
                }
                let now = self.shared.opened.elapsed().as_secs();
                if self.shared.last_drop_log.swap(now, Ordering::Relaxed) != now {
                    tracing::error!(
                        dropped_total = dropped,
                        reason = why,
                        "audit: record dropped (on_failure = \"open\")"
                    );
                }
                Ok(())
            }
        }
    }

    fn last_error(&self) -> String {
        self.shared
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    async fn enqueue(&self, entry: Entry) -> Result<(), &'static str> {
        let depth = &self.shared.stats.queue_depth;
        depth.fetch_add(1, Ordering::Relaxed);
        let sent = match self.tx.try_send(entry) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(entry)) => {
                match tokio::time::timeout(self.retry_for, self.tx.send(entry)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err("the audit writer has stopped"),
                    Err(_) => Err("the audit queue is full"),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err("the audit writer has stopped"),
        };
        if sent.is_err() {
            depth.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }
}

/// Whether a record gates what the gateway does next (a login, a statement about to run, a
/// denial answered to the client), so that written durability waits for it to be written. A
/// statement's end and a session's close follow what already happened; the writer writes them
/// at once and before any later record of their session.
fn gates(event: &AuditEvent) -> bool {
    !matches!(
        event,
        AuditEvent::StatementFinished { .. } | AuditEvent::SessionClosed { .. }
    )
}

#[async_trait::async_trait]
impl AuditSink for AuditLog {
    fn finish_before_result(&self) -> bool {
        self.durability == Durability::Sync
    }

    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return self.unavailable("the audit log is shut down");
        }
        if let Some(direct) = &self.direct {
            // Every record tries the primary again: a failing disk costs a failed write, and the
            // first one that succeeds ends the outage.
            return match direct.record(&record, gates(&record.event)) {
                Ok(()) => Ok(()),
                Err(why) => self.unavailable(&why),
            };
        }
        if !self.shared.healthy.load(Ordering::Acquire) {
            return self.unavailable(&self.last_error());
        }
        let wait = match self.durability {
            Durability::Batched => false,
            Durability::Written => gates(&record.event),
            Durability::Sync => true,
        };
        match wait {
            false => match self.enqueue(Entry { record, done: None }).await {
                Ok(()) => Ok(()),
                Err(why) => self.unavailable(why),
            },
            true => {
                let (done, wait) = oneshot::channel();
                if let Err(why) = self
                    .enqueue(Entry {
                        record,
                        done: Some(done),
                    })
                    .await
                {
                    return self.unavailable(why);
                }
                match wait.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(why)) => match self.on_failure {
                        OnFailure::Closed => self.unavailable(&why),
                        OnFailure::Open => {
                            // Queued, so it stays pending and is written once a sink recovers.
                            tracing::error!(reason = %why, "audit: record not yet durable (on_failure = \"open\")");
                            Ok(())
                        }
                    },
                    Err(_) => self.unavailable("the audit writer has stopped"),
                }
            }
        }
    }
}

/// One call to a sink, bounded by `limit`; errors as the writer reports them.
async fn bounded<T>(
    sink: &dyn Sink,
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, SinkError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "{}: {what} did not finish within {limit:?}",
            sink.name()
        )),
    }
}

struct Outage {
    since: Instant,
    started_at: std::time::SystemTime,
    refused_before: u64,
    dropped_before: u64,
    /// Seqs of records whose callers were told the trail was unavailable.
    late: Option<(u64, u64)>,
    backoff: Duration,
}

/// The starts [`Writer`] holds in batched durability, in arrival order, with each session's
/// chained together so that an end finds its session's starts without a scan.
#[derive(Default)]
struct HeldStarts {
    /// Arrival order: a start, and the position of its session's next held start. `None` once
    /// taken.
    starts: Vec<Option<(AuditRecord, Option<usize>)>>,
    /// Per session: positions of its first and last held start.
    sessions: HashMap<Arc<str>, (usize, usize)>,
}

impl HeldStarts {
    fn push(&mut self, start: AuditRecord) {
        let at = self.starts.len();
        match self.sessions.get_mut(&start.session_id) {
            Some((_, last)) => {
                if let Some(Some((_, next))) = self.starts.get_mut(*last) {
                    *next = Some(at);
                }
                *last = at;
            }
            None => {
                self.sessions
                    .insert(Arc::clone(&start.session_id), (at, at));
            }
        }
        self.starts.push(Some((start, None)));
    }

    /// Position of the first held start of `session`, if any.
    fn first_of(&self, session: &str) -> Option<usize> {
        self.sessions.get(session).map(|(first, _)| *first)
    }

    /// Takes the start at `at` (a position [`first_of`](Self::first_of) or an earlier `take`
    /// gave) and the position of its session's next one. The session stays known until
    /// [`set_first`](Self::set_first) says where its held starts begin now.
    fn take(&mut self, at: usize) -> Option<(AuditRecord, Option<usize>)> {
        self.starts.get_mut(at)?.take()
    }

    /// After takes: `session`'s held starts begin at `first` (`None`: it has none left).
    fn set_first(&mut self, session: &str, first: Option<usize>) {
        match first {
            Some(at) => {
                if let Some((head, _)) = self.sessions.get_mut(session) {
                    *head = at;
                }
            }
            None => {
                self.sessions.remove(session);
            }
        }
    }

    /// Every start not taken, in arrival order; empties the structure.
    fn take_all(&mut self) -> Vec<AuditRecord> {
        self.sessions.clear();
        self.starts
            .drain(..)
            .flatten()
            .map(|(start, _)| start)
            .collect()
    }
}

struct Writer {
    node: String,
    sinks: Vec<Box<dyn Sink>>,
    /// Per sink: highest seq known durable there.
    durable: Vec<u64>,
    /// Per sink: a write failed, so ask its tail before writing again.
    dirty: Vec<bool>,
    head_seq: u64,
    head_hash: ChainHash,
    /// Chained records not yet durable in every sink.
    pending: Vec<Arc<StoredRecord>>,
    /// Batched durability: `statement_started` records taken since the last write, not chained
    /// yet. A statement's end that arrives before the batch is written joins its start as one
    /// `statement_executed` record: half the rows, hashes and bytes for almost every statement,
    /// and the start is durable at the same write it would have been anyway.
    held: HeldStarts,
    /// Callers waiting (sync durability) on pending records, by seq.
    waiters: Vec<(u64, oneshot::Sender<Result<(), String>>)>,
    signer: Option<CheckpointSigner>,
    /// Written durability: when the primary first took records that are not fsynced yet.
    unsynced_since: Option<Instant>,
    /// Written durability with secondary sinks: the thread that writes them after the primary.
    follower: Option<Follower>,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
    config: AuditConfig,
    shared: Arc<Shared>,
    outage: Option<Outage>,
}

impl Writer {
    fn append_event(&mut self, payload: Vec<u8>, index: RecordIndex) -> u64 {
        let seq = self.head_seq + 1;
        let r = StoredRecord::seal_indexed(
            &self.node,
            seq,
            RecordKind::Event,
            self.head_hash,
            payload,
            index,
        );
        self.head_seq = seq;
        self.head_hash = r.hash;
        self.pending.push(Arc::new(r));
        self.since_checkpoint += 1;
        seq
    }

    fn append(&mut self, kind: RecordKind, payload: Vec<u8>) -> Result<u64, String> {
        let seq = self.head_seq + 1;
        let r = StoredRecord::seal(&self.node, seq, kind, self.head_hash, payload)?;
        self.head_seq = seq;
        self.head_hash = r.hash;
        self.pending.push(Arc::new(r));
        if kind != RecordKind::Checkpoint {
            self.since_checkpoint += 1;
        }
        Ok(seq)
    }

    fn notice(&mut self, notice: NoticePayload) {
        match serde_json::to_vec(&notice) {
            Ok(payload) => {
                if let Err(e) = self.append(RecordKind::Notice, payload) {
                    tracing::error!(error = %e, "audit: could not chain a notice");
                }
            }
            Err(e) => tracing::error!(error = %e, "audit: could not encode a notice"),
        }
    }

    fn checkpoint(&mut self) {
        let Some(signer) = &self.signer else { return };
        if self.since_checkpoint == 0 {
            return;
        }
        let cp = signer.checkpoint(
            &self.node,
            self.head_seq,
            &self.head_hash,
            now_for_payload(),
        );
        match serde_json::to_vec(&cp)
            .map_err(|e| e.to_string())
            .and_then(|p| self.append(RecordKind::Checkpoint, p))
        {
            Ok(_) => {
                self.since_checkpoint = 0;
                self.last_checkpoint_at = Instant::now();
            }
            Err(e) => tracing::error!(error = %e, "audit: could not make a checkpoint"),
        }
    }

    fn take_entry(&mut self, entry: Entry) {
        self.shared
            .stats
            .queue_depth
            .fetch_sub(1, Ordering::Relaxed);
        let Entry { record, done } = entry;
        // Sync durability: every record is durable at its own moment, so nothing waits to join.
        if self.config.durability == Durability::Batched && done.is_none() {
            if matches!(record.event, AuditEvent::StatementStarted { .. }) {
                self.held.push(record);
            } else {
                self.release_session(record);
            }
            return;
        }
        self.chain_event(record, done);
    }

    /// Chains `record` after whatever of its session is held: its start joined to it when it is
    /// that start's end, the session's earlier starts alone, so the session's order is kept.
    fn release_session(&mut self, mut record: AuditRecord) {
        let mut next = self.held.first_of(&record.session_id);
        while let Some((start, after)) = next.and_then(|at| self.held.take(at)) {
            next = after;
            match start.join_end(record) {
                Ok(joined) => {
                    // Its later starts (pipelined behind it) stay held, waiting for their ends.
                    self.held.set_first(&joined.session_id, next);
                    return self.chain_event(joined, None);
                }
                Err((start, back)) => {
                    self.chain_event(start, None);
                    record = back;
                }
            }
        }
        self.held.set_first(&record.session_id, None);
        self.chain_event(record, None);
    }

    /// Chains every held start whose end has not arrived: the batch is about to be written.
    fn release_held(&mut self) {
        for start in self.held.take_all() {
            self.chain_event(start, None);
        }
    }

    /// Serializes, chains and queues one event record for the next write; `done` is told once
    /// it is durable (sync durability).
    fn chain_event(
        &mut self,
        record: AuditRecord,
        done: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        // Statement records are a few hundred bytes: one allocation instead of a growing Vec.
        let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
        if let Err(e) = crate::json::to_vec_into(&mut payload, &record) {
            // Not expected for these types (no map has non-string keys), but a record that
            // cannot be encoded must not vanish silently: a waiting caller refuses its statement.
            self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "audit: could not encode a record; it is not in the trail");
            if let Some(done) = done {
                let _ = done.send(Err(format!("audit record encoding failed: {e}")));
            }
            return;
        }
        let index = RecordIndex::of_event(&record);
        let seq = self.append_event(payload, index);
        if let Some(done) = done {
            if self
                .outage
                .as_ref()
                .is_some_and(|o| o.since.elapsed() >= self.config.retry_for)
            {
                let why = self.outage_message();
                self.mark_late(seq);
                let _ = done.send(Err(why));
            } else {
                self.waiters.push((seq, done));
            }
        }
        if self.since_checkpoint >= self.config.checkpoint_every_records {
            self.checkpoint();
        }
    }

    fn mark_late(&mut self, seq: u64) {
        if let Some(o) = self.outage.as_mut() {
            o.late = Some(match o.late {
                Some((a, b)) => (a.min(seq), b.max(seq)),
                None => (seq, seq),
            });
        }
    }

    fn outage_message(&self) -> String {
        self.shared
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Writes pending records to every sink that lacks them. On success every waiter is told.
    async fn flush(&mut self) -> Result<(), String> {
        self.release_held();
        let Some(last) = self.pending.last().map(|r| r.seq) else {
            return Ok(());
        };
        let call_timeout = self.config.retry_for.max(Duration::from_secs(1));
        for i in 0..self.sinks.len() {
            if self.dirty[i] {
                self.resync(i, call_timeout).await?;
                self.dirty[i] = false;
            }
            let from = self.durable[i];
            // `pending` is in seq order: what this sink lacks is a suffix.
            let todo = &self.pending[self.pending.partition_point(|r| r.seq <= from)..];
            if todo.is_empty() {
                continue;
            }
            let sink = &self.sinks[i];
            let result =
                bounded(sink.as_ref(), "write", call_timeout, sink.write_batch(todo)).await;
            if let Err(e) = result {
                self.dirty[i] = true;
                return Err(e);
            }
            self.durable[i] = last;
            if i == 0 && self.config.durability == Durability::Written {
                // In the operating system's hands: a crash of the gateway can no longer lose
                // them. Statements may go on; the fsync and the secondary sinks follow.
                self.unsynced_since.get_or_insert_with(Instant::now);
                for (_, done) in self.waiters.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            if i == 0 {
                if let Some(follower) = &self.follower {
                    follower.send(todo.to_vec());
                }
            }
        }
        let n = self.pending.len() as u64;
        let checkpoints = self
            .pending
            .iter()
            .filter(|r| r.kind == RecordKind::Checkpoint)
            .count() as u64;
        self.pending.clear();
        self.shared.stats.written.fetch_add(n, Ordering::Relaxed);
        self.shared
            .stats
            .checkpoints
            .fetch_add(checkpoints, Ordering::Relaxed);
        for (_, done) in self.waiters.drain(..) {
            let _ = done.send(Ok(()));
        }
        Ok(())
    }

    /// After a failed write some prefix may have landed: continue from what the sink holds.
    async fn resync(&mut self, i: usize, call_timeout: Duration) -> Result<(), String> {
        let sink = &self.sinks[i];
        let tail = bounded(
            sink.as_ref(),
            "reading the tail",
            call_timeout,
            sink.tail(&self.node),
        )
        .await?;
        let (seq, hash) = tail
            .map(|t| (t.seq, t.hash))
            .unwrap_or((0, ChainHash::GENESIS));
        if seq == self.durable[i] {
            return Ok(());
        }
        match self.pending.iter().find(|r| r.seq == seq) {
            Some(r) if r.hash == hash => {
                self.durable[i] = seq;
                Ok(())
            }
            _ => Err(format!(
                "{} now ends at seq {seq}, which is not a record this writer sent (expected seq {} or a pending one): \
                 another writer or a restore changed it; verify it before restarting",
                sink.name(),
                self.durable[i]
            )),
        }
    }

    fn on_failure(&mut self, error: String) {
        self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.shared.last_error.lock() {
            e.clone_from(&error);
        }
        match self.outage.as_mut() {
            None => {
                tracing::error!(error = %error, pending = self.pending.len(), "audit: sink write failed; refusing new records until it recovers");
                self.shared.healthy.store(false, Ordering::Release);
                self.outage = Some(Outage {
                    since: Instant::now(),
                    started_at: std::time::SystemTime::now(),
                    refused_before: self.shared.stats.refused.load(Ordering::Relaxed),
                    dropped_before: self.shared.stats.dropped.load(Ordering::Relaxed),
                    late: None,
                    backoff: Duration::from_millis(50),
                });
            }
            Some(o) => {
                o.backoff = (o.backoff * 2).min(Duration::from_secs(1));
                tracing::warn!(error = %error, "audit: sink still failing");
            }
        }
        // Callers that have waited long enough are told; their records stay pending and are
        // written once a sink recovers (the recovery notice lists them).
        if self
            .outage
            .as_ref()
            .is_some_and(|o| o.since.elapsed() >= self.config.retry_for)
            && !self.waiters.is_empty()
        {
            let waiters = std::mem::take(&mut self.waiters);
            for (seq, done) in waiters {
                self.mark_late(seq);
                let _ = done.send(Err(error.clone()));
            }
        }
    }

    fn on_recovered(&mut self) {
        let Some(o) = self.outage.take() else { return };
        let refused = self
            .shared
            .stats
            .refused
            .load(Ordering::Relaxed)
            .saturating_sub(o.refused_before);
        let dropped = self
            .shared
            .stats
            .dropped
            .load(Ordering::Relaxed)
            .saturating_sub(o.dropped_before);
        let failed_for = o.since.elapsed();
        let mut details = serde_json::Map::new();
        details.insert(
            "failed_for_ms".into(),
            u64::try_from(failed_for.as_millis())
                .unwrap_or(u64::MAX)
                .into(),
        );
        details.insert("refused".into(), refused.into());
        details.insert("dropped".into(), dropped.into());
        details.insert("error".into(), self.outage_message().into());
        let mut message = format!(
            "audit sinks recovered after failing for {} ms since {}; {refused} record(s) refused and {dropped} dropped meanwhile",
            failed_for.as_millis(),
            crate::record::format_time(o.started_at)
        );
        if let Some((a, b)) = o.late {
            details.insert("late_from_seq".into(), a.into());
            details.insert("late_to_seq".into(), b.into());
            message.push_str(&format!(
                "; records {a}..{b} were written after their callers had been told the trail was unavailable"
            ));
        }
        self.shared.healthy.store(true, Ordering::Release);
        tracing::warn!("{message}");
        self.notice(NoticePayload {
            notice: "sink_recovered".into(),
            time: now_for_payload(),
            message,
            details,
        });
        // A sink that repaired itself while recovering (a torn JSONL line) says so too.
        let repairs: Vec<NoticePayload> =
            self.sinks.iter().flat_map(|s| s.take_repairs()).collect();
        for repair in repairs {
            self.notice(repair);
        }
    }

    async fn write_with_state(&mut self) {
        match self.flush().await {
            Ok(()) => {
                if self.outage.is_some() {
                    self.on_recovered();
                    if let Err(e) = self.flush().await {
                        self.on_failure(e);
                    }
                }
            }
            Err(e) => self.on_failure(e),
        }
    }

    /// How long to let a batch fill. In sync durability every statement waits for its batch, so
    /// the writer never waits there: what arrives during a write forms the next batch.
    fn batch_delay(&self) -> Duration {
        match self.config.durability {
            Durability::Sync | Durability::Written => Duration::ZERO,
            Durability::Batched => self.config.batch_max_delay,
        }
    }

    /// Written durability: fsyncs what the sinks hold once the oldest unsynced write is
    /// `batch_max_delay` old (or at once with `force`), primary first. One fsync covers every
    /// batch written since the last: group commit without anyone waiting for it.
    async fn sync_if_due(&mut self, force: bool) {
        let Some(since) = self.unsynced_since else {
            return;
        };
        if !force && since.elapsed() < self.config.batch_max_delay {
            return;
        }
        let call_timeout = self.config.retry_for.max(Duration::from_secs(1));
        for i in 0..self.sinks.len() {
            let sink = &self.sinks[i];
            let result = bounded(sink.as_ref(), "fsync", call_timeout, sink.sync()).await;
            if let Err(e) = result {
                // The data may be gone from the page cache: ask the sink where it ends before
                // writing to it again.
                self.dirty[i] = true;
                self.on_failure(e);
                return;
            }
        }
        self.unsynced_since = None;
    }

    /// When the next background fsync is due, if one is.
    fn sync_due(&self) -> Option<Instant> {
        self.unsynced_since
            .map(|since| since + self.config.batch_max_delay)
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Entry>,
        shutdown: Arc<Notify>,
    ) -> Result<(), AuditError> {
        let max = self.config.batch_max_records.max(1);
        let mut closing = false;
        loop {
            if let Some(backoff) = self.outage.as_ref().map(|o| o.backoff) {
                // Failing: wait, take what was queued before the failure, and try again.
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.notified(), if !closing => { closing = true; rx.close(); }
                }
                while let Ok(entry) = rx.try_recv() {
                    self.take_entry(entry);
                }
                if closing && rx.is_empty() {
                    break;
                }
                self.write_with_state().await;
                self.sync_if_due(false).await;
                continue;
            }
            let sync_due = self.sync_due();
            let checkpoint_due = self.last_checkpoint_at + self.config.checkpoint_every;
            let wants_timed_checkpoint = self.signer.is_some() && self.since_checkpoint > 0;
            tokio::select! {
                entry = rx.recv() => {
                    let Some(entry) = entry else { break };
                    self.take_entry(entry);
                    let mut taken = 1;
                    while taken < max {
                        match rx.try_recv() {
                            Ok(entry) => { self.take_entry(entry); taken += 1; }
                            Err(_) => break,
                        }
                    }
                    let delay = self.batch_delay();
                    if !delay.is_zero() && taken < max {
                        // Sleep rather than wait on the queue: waiting would wake this task for
                        // every record sent, which is exactly the per-record cost batching avoids.
                        tokio::time::sleep(delay).await;
                        while taken < max {
                            match rx.try_recv() {
                                Ok(entry) => { self.take_entry(entry); taken += 1; }
                                Err(_) => break,
                            }
                        }
                    }
                }
                () = tokio::time::sleep_until(checkpoint_due), if wants_timed_checkpoint => {}
                () = tokio::time::sleep_until(sync_due.unwrap_or(checkpoint_due)), if sync_due.is_some() => {}
                () = shutdown.notified(), if !closing => {
                    // Refuse new sends, then drain what is buffered (recv returns None when empty).
                    closing = true;
                    rx.close();
                    continue;
                }
            }
            if wants_timed_checkpoint && Instant::now() >= checkpoint_due {
                self.checkpoint();
            }
            self.write_with_state().await;
            self.sync_if_due(false).await;
        }
        self.finish().await
    }

    /// The queue is closed and drained: final checkpoint, last attempts, report.
    async fn finish(mut self) -> Result<(), AuditError> {
        // The final checkpoint signs everything, held starts and the closing notice included.
        self.release_held();
        let mut details = serde_json::Map::new();
        details.insert("last_seq".into(), (self.head_seq + 1).into());
        self.notice(NoticePayload {
            notice: "log_closed".into(),
            time: now_for_payload(),
            message: format!(
                "audit log closed cleanly at seq {}: every record taken was written",
                self.head_seq + 1
            ),
            details,
        });
        self.checkpoint();
        // Whatever the durability, a clean stop leaves every sink fsynced.
        self.unsynced_since.get_or_insert_with(Instant::now);
        let deadline = Instant::now() + self.config.retry_for;
        loop {
            self.write_with_state().await;
            if self.pending.is_empty() {
                self.sync_if_due(true).await;
                if self.unsynced_since.is_none() {
                    if let Some(follower) = self.follower.take() {
                        follower.close(self.config.retry_for);
                    }
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let unwritten = self.pending.len() as u64;
                let reason = self.outage_message();
                for (_, done) in self.waiters.drain(..) {
                    let _ = done.send(Err(reason.clone()));
                }
                tracing::error!(unwritten, reason = %reason, "audit: shut down with records no sink took");
                return Err(AuditError::Unwritten { unwritten, reason });
            }
            let backoff = self
                .outage
                .as_ref()
                .map(|o| o.backoff)
                .unwrap_or(Duration::from_millis(50));
            tokio::time::sleep(backoff).await;
        }
    }
}
