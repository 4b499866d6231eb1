//! Written durability on the caller's thread. A session that records an event serializes it,
//! takes the chain's lock just long enough to seal the record (seq, previous hash) into the
//! list of sealed records, and then:
//!
//! - for a record that gates what the gateway does next (a statement about to run, a login, a
//!   denial), takes the write lock and appends every sealed record not yet written with one
//!   `write` (a combining append: whoever writes takes everyone's records, and a caller whose
//!   record went out in another's write finds it written and makes no system call), and returns
//!   once its record is in the primary's file;
//! - for a record that follows what already happened (a statement's end, a session's close),
//!   returns at once: the next gating record's write, or the background thread within
//!   `batch_max_delay`, carries it. Chain order is storage order, so whatever is in the file
//!   has everything sealed before it there too.
//!
//! No queue and no writer thread to wake and wait for: on this class of machine each thread
//! wake-up costs tens of microseconds (measured: a hand-off to the writer thread and back added
//! about 110 us per statement at `pgbench -c 1`), while the append itself is a few microseconds
//! of hashing and one system call, and with the ends riding along, one system call per
//! statement rather than two.
//!
//! A background thread does what may lag: it writes sealed records no gating record took, fsyncs
//! the primary at most `batch_max_delay` after the first unsynced append (group commit without
//! anyone waiting), hands the appended records to the index thread ([`crate::follower`]) for
//! the secondary sinks, and writes timed checkpoints and the closing records. Used when the
//! durability is `written` and the primary can append on the caller's thread
//! ([`Sink::append_blocking`]: the segment log); otherwise the queue and writer thread of
//! [`crate::writer`] serve.
//!
//! When a write fails, what it carried and everything sealed after it is set aside, the chain's
//! end goes back to what was written, and a generation counter moves on: a waiting caller whose
//! record was set aside is refused. The next record reads where the primary really ends (a
//! failed write may have landed in part), keeps what landed, and chains again the records whose
//! callers did not wait (they were told their record was taken); the others' statements did not
//! run.

use std::collections::VecDeque;
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

/// Most records of failed writes kept to be chained again; beyond that they are counted as lost
/// (the outage's `sink_recovered` notice says how many).
const MAX_RESEND: usize = 100_000;

/// How many earlier generations remember where they ended, for callers still waiting on them.
const GENERATIONS_KEPT: usize = 64;

/// While records of a failed write wait to be chained again, how often the background thread
/// tries the primary when nothing else writes.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// A point of the chain: its last record and the checkpoint counters there.
#[derive(Clone, Copy)]
struct Mark {
    seq: u64,
    hash: ChainHash,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
}

impl Mark {
    fn advance(&mut self, r: &StoredRecord) {
        self.seq = r.seq;
        self.hash = r.hash;
        if r.kind == RecordKind::Checkpoint {
            self.since_checkpoint = 0;
            self.last_checkpoint_at = Instant::now();
        } else {
            self.since_checkpoint += 1;
        }
    }
}

/// What a caller waiting for its record holds: the record's seq and the generation it was
/// sealed in.
#[derive(Clone, Copy)]
struct Ticket {
    generation: u64,
    seq: u64,
}

/// Sealed records in seq order, each with whether a failed write chains it again.
#[derive(Default)]
struct Sealed {
    records: Vec<Arc<StoredRecord>>,
    /// Per record: an event whose caller did not wait for it, and was told it was taken.
    resend: Vec<bool>,
}

impl Sealed {
    fn push(&mut self, record: Arc<StoredRecord>, resend: bool) {
        self.records.push(record);
        self.resend.push(resend);
    }

    fn append(&mut self, other: Sealed) {
        self.records.extend(other.records);
        self.resend.extend(other.resend);
    }

    fn take(&mut self) -> Sealed {
        std::mem::take(self)
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn any_resend(&self) -> bool {
        self.resend.iter().any(|r| *r)
    }
}

/// The chain's end and what the background thread has still to do for it.
pub(crate) struct Chain {
    /// The last sealed record, written or not.
    head: Mark,
    signer: Option<CheckpointSigner>,
    /// Sealed, not yet taken by a write.
    pending: Sealed,
    /// The last record this process wrote to the primary (or found there after a failure).
    written: Mark,
    /// Moves on with every failed write, which sets aside what was sealed after `written`.
    generation: u64,
    /// Earlier generations and the last seq written in each.
    ended: VecDeque<(u64, u64)>,
    /// Records appended since the background thread last took them (for the secondary sinks).
    unindexed: Vec<Arc<StoredRecord>>,
    /// The background thread was woken for what was sealed or appended since it last looked.
    woken: bool,
    /// Appends since the last fsync.
    unsynced: bool,
    /// What a failed write carried and what was sealed after it: some of it may have landed.
    in_flight: Sealed,
    /// Events whose callers did not wait for them, to be chained at the next write: taken while
    /// the primary failed, or set aside by a failed write and not found in the file after it.
    unsealed: Vec<(Vec<u8>, RecordIndex)>,
    /// A write failed: read where the primary ends before the next one.
    dirty: bool,
    /// Since when appends fail, and the refusal and drop counts then.
    outage: Option<(Instant, SystemTime, u64, u64)>,
    /// Records whose callers had been told they were taken, lost to failed writes over
    /// [`MAX_RESEND`] since the outage began.
    lost: u64,
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
        let head = Mark {
            seq: head_seq,
            hash: head_hash,
            since_checkpoint,
            last_checkpoint_at,
        };
        Chain {
            head,
            signer,
            pending: Sealed::default(),
            written: head,
            generation: 0,
            ended: VecDeque::new(),
            unindexed: Vec::new(),
            // `Direct::new` wakes the background thread for the opening records' fsync.
            woken: true,
            unsynced: true,
            in_flight: Sealed::default(),
            unsealed: Vec::new(),
            dirty: false,
            outage: None,
            lost: 0,
        }
    }

    fn push(&mut self, record: StoredRecord, resend: bool) {
        debug_assert_eq!(record.seq, self.head.seq + 1);
        self.head.advance(&record);
        self.pending.push(Arc::new(record), resend);
    }

    fn seal_event(
        &mut self,
        node: &str,
        payload: Vec<u8>,
        index: RecordIndex,
        resend: bool,
    ) -> u64 {
        let seq = self.head.seq + 1;
        let r = StoredRecord::seal_indexed(
            node,
            seq,
            RecordKind::Event,
            self.head.hash,
            payload,
            index,
        );
        self.push(r, resend);
        seq
    }

    fn push_notice(&mut self, node: &str, notice: &NoticePayload) {
        match serde_json::to_vec(notice)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                StoredRecord::seal(
                    node,
                    self.head.seq + 1,
                    RecordKind::Notice,
                    self.head.hash,
                    p,
                )
            }) {
            Ok(r) => self.push(r, false),
            Err(e) => tracing::error!(error = %e, "audit: could not chain a notice"),
        }
    }

    /// A checkpoint signing the chain's end, when there is a key and anything to sign.
    fn push_checkpoint(&mut self, node: &str) {
        let Some(signer) = &self.signer else { return };
        if self.head.since_checkpoint == 0 {
            return;
        }
        let cp = signer.checkpoint(node, self.head.seq, &self.head.hash, now_for_payload());
        match serde_json::to_vec(&cp)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                StoredRecord::seal(
                    node,
                    self.head.seq + 1,
                    RecordKind::Checkpoint,
                    self.head.hash,
                    p,
                )
            }) {
            Ok(r) => self.push(r, false),
            Err(e) => tracing::error!(error = %e, "audit: could not make a checkpoint"),
        }
    }

    /// Whether the background thread should try the primary again on its own: records whose
    /// callers were told they were taken wait for a write.
    fn wants_retry(&self) -> bool {
        (self.dirty || self.outage.is_some())
            && (!self.unsealed.is_empty() || self.in_flight.any_resend())
    }

    /// Keeps an event whose caller does not wait for the next write, or counts it as lost when
    /// too many wait already.
    fn keep_unsealed(&mut self, payload: Vec<u8>, index: RecordIndex) {
        if self.unsealed.len() >= MAX_RESEND {
            self.lost += 1;
        } else {
            self.unsealed.push((payload, index));
        }
    }
}

/// The chain, its primary sink, and the background thread's wake-up.
pub(crate) struct Direct {
    node: Arc<str>,
    chain: Mutex<Chain>,
    /// Held while writing to the primary (or reading where it ends after a failure), so that
    /// writes land in seq order. Taken before `chain` when both are held.
    write: Mutex<()>,
    primary: Box<dyn Sink>,
    shared: Arc<Shared>,
    checkpoint_every_records: u64,
    /// Woken by the first seal or append after the background thread last looked.
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
            write: Mutex::new(()),
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

    fn write_lock(&self) -> Result<MutexGuard<'_, ()>, String> {
        self.write
            .lock()
            .map_err(|_| "the audit log's write lock is poisoned".to_owned())
    }

    /// Chains one event. With `waits`, returns once it is written to the primary's file;
    /// without, once it is sealed into the chain (a later write carries it, at the latest the
    /// background thread's within `batch_max_delay`).
    pub(crate) fn record(&self, record: &AuditRecord, waits: bool) -> Result<(), String> {
        // Serialized before the lock: only sealing and writing are serial.
        let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
        crate::json::to_vec_into(&mut payload, record)
            .map_err(|e| format!("audit record encoding failed: {e}"))?;
        let index = RecordIndex::of_event(record);
        let node = &*self.node;
        let mut c = self.lock()?;
        if c.dirty || c.outage.is_some() {
            // After a failure every record goes the careful way: under the write lock, after
            // reading where the primary ends, behind the recovery notice.
            drop(c);
            return self.record_careful(payload, index, waits);
        }
        let seq = c.seal_event(node, payload, index, !waits);
        self.checkpoint_if_due(&mut c);
        if !waits {
            self.wake_locked(&mut c);
            return Ok(());
        }
        let ticket = Ticket {
            generation: c.generation,
            seq,
        };
        drop(c);
        let _w = self.write_lock()?;
        let c = self.lock()?;
        if let Some(settled) = self.settled(&c, ticket) {
            // Written by another caller's append meanwhile, or set aside by a failed one.
            return settled;
        }
        self.write_pending(c)
    }

    /// [`record`](Self::record) while the primary fails or has failed. A caller that waits is
    /// refused unless its record is written now; one that does not has its record kept and
    /// written with the first write that succeeds.
    fn record_careful(
        &self,
        payload: Vec<u8>,
        index: RecordIndex,
        waits: bool,
    ) -> Result<(), String> {
        let node = &*self.node;
        let _w = self.write_lock()?;
        let mut c = self.lock()?;
        if waits {
            return self.commit_locked(&mut c, |c| {
                c.seal_event(node, payload, index, false);
            });
        }
        c.keep_unsealed(payload, index);
        if let Err(e) = self.commit_locked(&mut c, |_| {}) {
            tracing::debug!(error = %e, "audit: a record is kept until the primary takes writes again");
        }
        Ok(())
    }

    fn checkpoint_if_due(&self, c: &mut Chain) {
        if c.head.since_checkpoint >= self.checkpoint_every_records {
            c.push_checkpoint(&self.node);
        }
    }

    fn wake_locked(&self, c: &mut Chain) {
        if !c.woken {
            c.woken = true;
            self.wake.notify_one();
        }
    }

    /// Where a waiting caller's record stands, if that is settled: `Ok` once written, `Err` once
    /// set aside by a failed write; `None` while it is still to be written.
    fn settled(&self, c: &Chain, t: Ticket) -> Option<Result<(), String>> {
        if t.generation == c.generation {
            return (c.written.seq >= t.seq).then_some(Ok(()));
        }
        let end = c
            .ended
            .iter()
            .find(|(g, _)| *g == t.generation)
            .map(|(_, last)| *last);
        Some(match end {
            Some(last) if t.seq <= last => Ok(()),
            _ => Err(format!(
                "the audit log could not be written: {}",
                self.shared.last_error()
            )),
        })
    }

    /// Appends everything sealed and not yet written, with the write lock held and the chain's
    /// lock released for the system call, so that other callers seal meanwhile.
    fn write_pending(&self, mut c: MutexGuard<'_, Chain>) -> Result<(), String> {
        let batch = c.pending.take();
        if batch.is_empty() {
            return Ok(());
        }
        drop(c);
        let result = self.append(&batch.records);
        let mut c = self.lock()?;
        self.written(&mut c, batch, result)
    }

    fn append(&self, records: &[Arc<StoredRecord>]) -> Result<(), String> {
        match self.primary.append_blocking(records) {
            Some(r) => r.map_err(|e| e.to_string()),
            None => Err(format!(
                "{} cannot append on the caller's thread",
                self.primary.name()
            )),
        }
    }

    /// Books the outcome of a write of `batch`. On failure the chain's end goes back to what
    /// was written, and the batch and everything sealed after it wait in `in_flight` until the
    /// next write reads where the primary ends.
    fn written(
        &self,
        c: &mut Chain,
        batch: Sealed,
        result: Result<(), String>,
    ) -> Result<(), String> {
        match result {
            Ok(()) => {
                let n = batch.len() as u64;
                let mut checkpoints = 0;
                for r in &batch.records {
                    c.written.advance(r);
                    checkpoints += u64::from(r.kind == RecordKind::Checkpoint);
                }
                c.unindexed.extend(batch.records);
                c.unsynced = true;
                self.wake_locked(c);
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
                c.in_flight.append(batch);
                self.set_aside(c);
                self.failed(c, &e);
                Err(e)
            }
        }
    }

    /// After a failed write or fsync (with the write lock held): everything sealed after what
    /// is known written waits in `in_flight` for the next write to read where the primary ends,
    /// the chain's end goes back to what was written, and callers waiting on the generation
    /// that ends here are refused unless their record was written.
    fn set_aside(&self, c: &mut Chain) {
        c.ended.push_back((c.generation, c.written.seq));
        if c.ended.len() > GENERATIONS_KEPT {
            c.ended.pop_front();
        }
        c.generation += 1;
        let later = c.pending.take();
        c.in_flight.append(later);
        c.head = c.written;
        c.dirty = true;
    }

    /// The careful way, under both locks: reads where the primary ends after a failure, writes
    /// the recovery notice during an outage, seals what `build` pushes (and a checkpoint that
    /// is due) and appends everything pending. On failure the chain's end stays at what was
    /// written, and the next write first reads where the primary ends.
    fn commit(&self, build: impl FnOnce(&mut Chain)) -> Result<(), String> {
        let _w = self.write_lock()?;
        let mut c = self.lock()?;
        self.commit_locked(&mut c, build)
    }

    /// [`commit`](Self::commit) with both locks held.
    fn commit_locked(&self, c: &mut Chain, build: impl FnOnce(&mut Chain)) -> Result<(), String> {
        let node = &*self.node;
        if c.dirty {
            self.resync(c)?;
        }
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
            let mut message = format!(
                "audit sink recovered after failing for {ms} ms since {}; {refused} record(s) refused and \
                 {dropped} dropped meanwhile",
                crate::record::format_time(started_at)
            );
            if c.lost > 0 {
                details.insert("lost".into(), c.lost.into());
                message.push_str(&format!(
                    "; {} record(s) taken before the failure could not be kept for writing and are lost",
                    c.lost
                ));
            }
            details.insert("error".into(), self.shared.last_error().into());
            c.push_notice(
                node,
                &NoticePayload {
                    notice: "sink_recovered".into(),
                    time: now_for_payload(),
                    message,
                    details,
                },
            );
        }
        for (payload, index) in std::mem::take(&mut c.unsealed) {
            c.seal_event(node, payload, index, true);
        }
        build(c);
        self.checkpoint_if_due(c);
        let batch = c.pending.take();
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.append(&batch.records);
        let outcome = self.written(c, batch, result);
        if outcome.is_ok() {
            c.lost = 0;
        }
        outcome
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

    /// After a failed write (both locks held), part of what it carried may be in the file:
    /// continue from what is there. Of the rest, records whose callers were told they were
    /// taken are chained again after it; the others are dropped (their callers were refused;
    /// notices and checkpoints are made again when due).
    fn resync(&self, c: &mut Chain) -> Result<(), String> {
        let tail = match self.primary.tail_blocking(&self.node) {
            Some(r) => r.map_err(|e| e.to_string())?,
            None => return Err(format!("{} cannot be read back", self.primary.name())),
        };
        let (seq, hash) = tail.map_or((0, ChainHash::GENESIS), |t| (t.seq, t.hash));
        let landed = if seq == c.written.seq && hash == c.written.hash {
            0
        } else {
            let found = c
                .in_flight
                .records
                .iter()
                .position(|r| r.seq == seq && r.hash == hash);
            let Some(at) = found else {
                let e = format!(
                    "{} now ends at seq {seq}, which is not a record this gateway wrote (expected seq {}): another \
                     writer or a restore changed it; verify it before restarting",
                    self.primary.name(),
                    c.written.seq
                );
                self.failed(c, &e);
                return Err(e);
            };
            at + 1
        };
        let mut in_flight = c.in_flight.take();
        let rest = in_flight.records.split_off(landed);
        let rest_resend = in_flight.resend.split_off(landed);
        if landed > 0 {
            tracing::warn!(
                from = in_flight.records.first().map(|r| r.seq),
                to = seq,
                "audit: records of a failed write had landed; the callers waiting for them were told the trail was unavailable"
            );
            for r in &in_flight.records {
                c.written.advance(r);
            }
            self.shared
                .stats
                .written
                .fetch_add(landed as u64, Ordering::Relaxed);
            c.unindexed.extend(in_flight.records);
            c.unsynced = true;
        }
        c.head = c.written;
        // Before anything taken later: these were taken first.
        let mut again = Vec::new();
        for (r, resend) in rest.into_iter().zip(rest_resend) {
            if resend {
                let r = Arc::try_unwrap(r).unwrap_or_else(|shared| (*shared).clone());
                let index = r.index();
                again.push((r.payload, index));
            }
        }
        again.append(&mut c.unsealed);
        for (payload, index) in again {
            c.keep_unsealed(payload, index);
        }
        if c.lost > 0 {
            tracing::error!(
                lost = c.lost,
                "audit: records taken before a failed write could not all be kept for writing again"
            );
        }
        c.dirty = false;
        Ok(())
    }

    /// Writes what was sealed and not yet written (the background thread's share).
    fn flush(&self) -> Result<(), String> {
        let w = self.write_lock()?;
        let c = self.lock()?;
        if c.dirty || c.outage.is_some() {
            if !c.wants_retry() {
                return Ok(());
            }
            drop(c);
            drop(w);
            return self.commit(|_| {});
        }
        self.write_pending(c)
    }

    /// The background thread: writes what no gating record took, fsyncs, feeds the index,
    /// writes timed checkpoints, and on `shutdown` closes the chain (`log_closed`, final
    /// checkpoint, fsync).
    pub(crate) async fn run(
        self: Arc<Self>,
        mut follower: Option<Follower>,
        shutdown: Arc<Notify>,
        delay: Duration,
        checkpoint_every: Duration,
        retry_for: Duration,
    ) -> Result<(), AuditError> {
        loop {
            let (checkpoint_due, retry) = {
                let c = self.lock().map_err(AuditError::Config)?;
                (
                    (c.signer.is_some() && c.head.since_checkpoint > 0)
                        .then(|| c.head.last_checkpoint_at + checkpoint_every),
                    c.wants_retry(),
                )
            };
            let retry_at = retry.then(|| Instant::now() + RETRY_EVERY);
            let timer = match (checkpoint_due, retry_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let due = tokio::time::Instant::from_std(timer.unwrap_or_else(Instant::now));
            let mut closing = tokio::select! {
                biased;
                () = shutdown.notified() => true,
                () = self.wake.notified() => false,
                () = tokio::time::sleep_until(due), if timer.is_some() => false,
            };
            if !closing && !delay.is_zero() {
                // Let appends gather: one fsync for all of them.
                closing = tokio::select! {
                    biased;
                    () = shutdown.notified() => true,
                    () = tokio::time::sleep(delay) => false,
                };
            }
            // From here on, whatever is sealed or appended wakes the next round.
            self.lock().map_err(AuditError::Config)?.woken = false;
            if closing {
                let node = &*self.node;
                let result = self.commit(|c| {
                    let last = c.head.seq + 1;
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
                if let Err(e) = self.commit(|c| c.push_checkpoint(node)) {
                    tracing::error!(error = %e, "audit: could not write a timed checkpoint");
                }
            } else if let Err(e) = self.flush() {
                tracing::debug!(error = %e, "audit: a background write failed");
            }
            let (records, unsynced) = {
                let mut c = self.lock().map_err(AuditError::Config)?;
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
                    if let (Ok(_w), Ok(mut c)) = (self.write_lock(), self.lock()) {
                        self.set_aside(&mut c);
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
