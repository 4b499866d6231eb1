//! Written durability on the caller's thread. A session that records an event serializes it,
//! takes the chain's lock, seals the record (seq, previous hash) and appends it to the primary
//! with one `write`, and goes on: no queue, no writer thread to wake and wait for. On this class
//! of machine each thread wake-up costs tens of microseconds (measured: a hand-off to the writer
//! thread and back added about 110 us per statement at `pgbench -c 1`), while the append itself
//! is a few microseconds of hashing and one system call.
//!
//! A background thread does what may lag: it fsyncs the primary at most `batch_max_delay` after
//! the first unsynced append (group commit without anyone waiting), hands the appended records to
//! the index thread ([`crate::follower`]) for the secondary sinks, and writes timed
//! checkpoints and the closing records. Used when the durability is `written` and the primary
//! can append on the caller's thread ([`Sink::append_blocking`]: the segment log); otherwise the
//! queue and writer thread of [`crate::writer`] serve.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use gateway_core::AuditRecord;
use tokio::sync::Notify;

use crate::error::AuditError;
use crate::follower::Follower;
use crate::record::{now_for_payload, ChainHash, RecordIndex, RecordKind, StoredRecord};
use crate::signing::{CheckpointSigner, NoticePayload};
use crate::sink::Sink;
use crate::writer::{Shared, PAYLOAD_CAPACITY};

/// The chain's end and what the background thread has still to do for it.
pub(crate) struct Chain {
    head_seq: u64,
    head_hash: ChainHash,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
    signer: Option<CheckpointSigner>,
    /// Records appended since the background thread last took them (for the secondary sinks).
    unindexed: Vec<Arc<StoredRecord>>,
    /// Appends since the last fsync.
    unsynced: bool,
    /// The batch of an append that failed: some of it may have landed.
    in_flight: Vec<Arc<StoredRecord>>,
    /// An append failed: read where the primary ends before the next one.
    dirty: bool,
    /// Since when appends fail, and the refusal and drop counts then.
    outage: Option<(Instant, SystemTime, u64, u64)>,
    /// Records being sealed for the next append.
    batch: Vec<Arc<StoredRecord>>,
}

impl Chain {
    /// The chain as the writer left it after the opening records (`unsynced`: they were written
    /// without an fsync).
    pub(crate) fn new(
        head_seq: u64,
        head_hash: ChainHash,
        since_checkpoint: u64,
        last_checkpoint_at: Instant,
        signer: Option<CheckpointSigner>,
    ) -> Chain {
        Chain {
            head_seq,
            head_hash,
            since_checkpoint,
            last_checkpoint_at,
            signer,
            unindexed: Vec::new(),
            unsynced: true,
            in_flight: Vec::new(),
            dirty: false,
            outage: None,
            batch: Vec::new(),
        }
    }

    fn push(&mut self, record: StoredRecord) {
        debug_assert_eq!(record.seq, self.head_seq + 1);
        self.head_seq = record.seq;
        self.head_hash = record.hash;
        if record.kind == RecordKind::Checkpoint {
            self.since_checkpoint = 0;
            self.last_checkpoint_at = Instant::now();
        } else {
            self.since_checkpoint += 1;
        }
        self.batch.push(Arc::new(record));
    }

    fn push_notice(&mut self, node: &str, notice: &NoticePayload) {
        match serde_json::to_vec(notice)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                StoredRecord::seal(
                    node,
                    self.head_seq + 1,
                    RecordKind::Notice,
                    self.head_hash,
                    p,
                )
            }) {
            Ok(r) => self.push(r),
            Err(e) => tracing::error!(error = %e, "audit: could not chain a notice"),
        }
    }

    /// A checkpoint signing the chain's end, when there is a key and anything to sign.
    fn push_checkpoint(&mut self, node: &str) {
        let Some(signer) = &self.signer else { return };
        if self.since_checkpoint == 0 {
            return;
        }
        let cp = signer.checkpoint(node, self.head_seq, &self.head_hash, now_for_payload());
        match serde_json::to_vec(&cp)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                StoredRecord::seal(
                    node,
                    self.head_seq + 1,
                    RecordKind::Checkpoint,
                    self.head_hash,
                    p,
                )
            }) {
            Ok(r) => self.push(r),
            Err(e) => tracing::error!(error = %e, "audit: could not make a checkpoint"),
        }
    }
}

/// The chain, its primary sink, and the background thread's wake-up.
pub(crate) struct Direct {
    node: Arc<str>,
    chain: Mutex<Chain>,
    primary: Box<dyn Sink>,
    shared: Arc<Shared>,
    checkpoint_every_records: u64,
    /// Woken by the first append after the background thread last looked.
    wake: Notify,
}

impl Direct {
    pub(crate) fn new(
        node: &str,
        chain: Chain,
        primary: Box<dyn Sink>,
        shared: Arc<Shared>,
        checkpoint_every_records: u64,
    ) -> Direct {
        Direct {
            node: Arc::from(node),
            chain: Mutex::new(chain),
            primary,
            shared,
            checkpoint_every_records,
            wake: {
                // The opening records await their fsync.
                let wake = Notify::new();
                wake.notify_one();
                wake
            },
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Chain>, String> {
        self.chain
            .lock()
            .map_err(|_| "the audit chain's lock is poisoned".to_owned())
    }

    /// Appends one event; returns once it is written to the primary's file.
    pub(crate) fn record(&self, record: &AuditRecord) -> Result<(), String> {
        // Serialized before the lock: only the chaining and the write are serial.
        let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
        serde_json::to_writer(&mut payload, record)
            .map_err(|e| format!("audit record encoding failed: {e}"))?;
        let index = RecordIndex::of_event(record);
        let mut chain = self.lock()?;
        let node = &*self.node;
        self.commit(&mut chain, |c| {
            let r = StoredRecord::seal_indexed(
                node,
                c.head_seq + 1,
                RecordKind::Event,
                c.head_hash,
                payload,
                index,
            );
            c.push(r);
        })
    }

    /// Seals what `build` pushes (after a recovery notice, before a checkpoint that is due) and
    /// appends it as one write. On failure the chain's end stays where it was, and the next
    /// append first reads where the primary ends.
    fn commit(&self, c: &mut Chain, build: impl FnOnce(&mut Chain)) -> Result<(), String> {
        let node = &*self.node;
        if c.dirty {
            self.resync(c)?;
        }
        let saved = (
            c.head_seq,
            c.head_hash,
            c.since_checkpoint,
            c.last_checkpoint_at,
        );
        c.batch.clear();
        if let Some((since, started_at, refused_before, dropped_before)) = c.outage {
            let stats = &self.shared.stats;
            let refused = stats
                .refused
                .load(Ordering::Relaxed)
                .saturating_sub(refused_before);
            let dropped = stats
                .dropped
                .load(Ordering::Relaxed)
                .saturating_sub(dropped_before);
            let mut details = serde_json::Map::new();
            let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
            details.insert("failed_for_ms".into(), ms.into());
            details.insert("refused".into(), refused.into());
            details.insert("dropped".into(), dropped.into());
            details.insert("error".into(), self.shared.last_error().into());
            c.push_notice(
                node,
                &NoticePayload {
                    notice: "sink_recovered".into(),
                    time: now_for_payload(),
                    message: format!(
                        "audit sink recovered after failing for {ms} ms since {}; {refused} record(s) refused and \
                         {dropped} dropped meanwhile",
                        crate::record::format_time(started_at)
                    ),
                    details,
                },
            );
        }
        build(c);
        if c.since_checkpoint >= self.checkpoint_every_records {
            c.push_checkpoint(node);
        }
        let written = match self.primary.append_blocking(&c.batch) {
            Some(r) => r.map_err(|e| e.to_string()),
            None => Err(format!(
                "{} cannot append on the caller's thread",
                self.primary.name()
            )),
        };
        match written {
            Ok(()) => {
                let n = c.batch.len() as u64;
                let checkpoints = c
                    .batch
                    .iter()
                    .filter(|r| r.kind == RecordKind::Checkpoint)
                    .count() as u64;
                c.unindexed.append(&mut c.batch);
                if !c.unsynced {
                    c.unsynced = true;
                    self.wake.notify_one();
                }
                if c.outage.take().is_some() {
                    self.shared.healthy.store(true, Ordering::Release);
                    tracing::warn!("audit: the primary sink takes records again");
                }
                let stats = &self.shared.stats;
                stats.written.fetch_add(n, Ordering::Relaxed);
                stats.checkpoints.fetch_add(checkpoints, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                (
                    c.head_seq,
                    c.head_hash,
                    c.since_checkpoint,
                    c.last_checkpoint_at,
                ) = saved;
                c.in_flight = std::mem::take(&mut c.batch);
                c.dirty = true;
                self.failed(c, &e);
                Err(e)
            }
        }
    }

    fn failed(&self, c: &mut Chain, error: &str) {
        self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.shared.set_last_error(error);
        if c.outage.is_none() {
            tracing::error!(error = %error, "audit: the primary sink failed; refusing statements until a write succeeds again");
            self.shared.healthy.store(false, Ordering::Release);
            let stats = &self.shared.stats;
            c.outage = Some((
                Instant::now(),
                SystemTime::now(),
                stats.refused.load(Ordering::Relaxed),
                stats.dropped.load(Ordering::Relaxed),
            ));
        }
    }

    /// After a failed append, part of its batch may be in the file: continue from what is there.
    fn resync(&self, c: &mut Chain) -> Result<(), String> {
        let tail = match self.primary.tail_blocking(&self.node) {
            Some(r) => r.map_err(|e| e.to_string())?,
            None => return Err(format!("{} cannot be read back", self.primary.name())),
        };
        let (seq, hash) = tail.map_or((0, ChainHash::GENESIS), |t| (t.seq, t.hash));
        if seq == c.head_seq && hash == c.head_hash {
            c.in_flight.clear();
            c.dirty = false;
            return Ok(());
        }
        let landed = c
            .in_flight
            .iter()
            .position(|r| r.seq == seq && r.hash == hash);
        let Some(at) = landed else {
            let e = format!(
                "{} now ends at seq {seq}, which is not a record this gateway wrote (expected seq {}): another \
                 writer or a restore changed it; verify it before restarting",
                self.primary.name(),
                c.head_seq
            );
            self.failed(c, &e);
            return Err(e);
        };
        let landed: Vec<Arc<StoredRecord>> = c.in_flight.drain(..=at).collect();
        tracing::warn!(
            from = landed.first().map(|r| r.seq),
            to = seq,
            "audit: records of a failed write had landed; their callers were told the trail was unavailable"
        );
        for r in &landed {
            if r.kind == RecordKind::Checkpoint {
                c.since_checkpoint = 0;
            } else {
                c.since_checkpoint += 1;
            }
        }
        c.head_seq = seq;
        c.head_hash = hash;
        c.unindexed.extend(landed);
        c.in_flight.clear();
        c.dirty = false;
        Ok(())
    }

    /// The background thread: fsyncs, feeds the index, writes timed checkpoints, and on
    /// `shutdown` closes the chain (`log_closed`, final checkpoint, fsync).
    pub(crate) async fn run(
        self: Arc<Self>,
        mut follower: Option<Follower>,
        shutdown: Arc<Notify>,
        delay: Duration,
        checkpoint_every: Duration,
        retry_for: Duration,
    ) -> Result<(), AuditError> {
        loop {
            let checkpoint_due = {
                let c = self.lock().map_err(AuditError::Config)?;
                (c.signer.is_some() && c.since_checkpoint > 0)
                    .then(|| c.last_checkpoint_at + checkpoint_every)
            };
            let due = tokio::time::Instant::from_std(checkpoint_due.unwrap_or_else(Instant::now));
            let mut closing = tokio::select! {
                biased;
                () = shutdown.notified() => true,
                () = self.wake.notified() => false,
                () = tokio::time::sleep_until(due), if checkpoint_due.is_some() => false,
            };
            if !closing && !delay.is_zero() {
                // Let appends gather: one fsync for all of them.
                closing = tokio::select! {
                    biased;
                    () = shutdown.notified() => true,
                    () = tokio::time::sleep(delay) => false,
                };
            }
            let (records, unsynced) = {
                let mut c = self.lock().map_err(AuditError::Config)?;
                if closing {
                    let node = &*self.node;
                    let last = c.head_seq + 1;
                    let result = self.commit(&mut c, |c| {
                        let mut details = serde_json::Map::new();
                        details.insert("last_seq".into(), last.into());
                        c.push_notice(
                            node,
                            &NoticePayload {
                                notice: "log_closed".into(),
                                time: now_for_payload(),
                                message: format!(
                                    "audit log closed cleanly at seq {last}: every record taken was written"
                                ),
                                details,
                            },
                        );
                        c.push_checkpoint(node);
                    });
                    if let Err(reason) = result {
                        tracing::error!(reason = %reason, "audit: could not close the chain cleanly; the next start will report an unclean stop");
                    }
                } else if checkpoint_due.is_some_and(|due| Instant::now() >= due) {
                    let node = &*self.node;
                    if let Err(e) = self.commit(&mut c, |c| c.push_checkpoint(node)) {
                        tracing::error!(error = %e, "audit: could not write a timed checkpoint");
                    }
                }
                (
                    std::mem::take(&mut c.unindexed),
                    std::mem::take(&mut c.unsynced),
                )
            };
            let mut sync_result = Ok(());
            if unsynced || closing {
                sync_result = self.primary.sync().await;
                if let Err(e) = &sync_result {
                    // The pages may be gone: make the next append read the file's end first.
                    let error = e.to_string();
                    if let Ok(mut c) = self.lock() {
                        c.dirty = true;
                        c.unsynced = true;
                        self.failed(&mut c, &error);
                    }
                }
            }
            if let Some(f) = &follower {
                if !records.is_empty() {
                    f.send(records);
                }
            }
            if closing {
                if let Some(f) = follower.take() {
                    f.close(retry_for);
                }
                return sync_result.map_err(|e| AuditError::Unwritten {
                    unwritten: 0,
                    reason: e.to_string(),
                });
            }
        }
    }
}
