//! The index thread: in written and sync durability it writes the secondary sinks (by default
//! the SQLite index) from the batches the primary has taken, off the statements' path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::record::StoredRecord;
use crate::sink::Sink;
use crate::writer::{Shared, ON_WRITER_THREAD};

/// Most records the index thread keeps while its sinks fail; beyond that it lets them go and
/// the next start fills the sinks from the primary.
const FOLLOWER_MAX_QUEUED: usize = 200_000;

enum FollowerMsg {
    Batch(Vec<Arc<StoredRecord>>),
    Close,
}

/// The thread that writes the secondary sinks (by default the SQLite index) in written
/// durability, from the batches the writer has put in the primary. It waits up to
/// `batch_max_delay` for batches to gather, so an index commit covers many records. It fsyncs
/// the secondaries only when it closes: a batch reaches it after the primary's fsync, so a
/// secondary is never ahead of what the primary holds on disk, and whatever a power loss takes
/// from a secondary the next start copies again from the primary (SQLite's write-ahead log
/// loses only its last commits then, never its consistency). A secondary that fails does not
/// stop statements (the primary holds every record): the thread logs it, retries with backoff,
/// and the next start fills any gap from the primary.
pub(crate) struct Follower {
    tx: std::sync::mpsc::Sender<FollowerMsg>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Follower {
    pub(crate) fn spawn(
        node: &str,
        sinks: Vec<Box<dyn Sink>>,
        durable: Vec<u64>,
        delay: Duration,
        shared: Arc<Shared>,
    ) -> std::io::Result<Follower> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let node = node.to_owned();
        std::thread::Builder::new()
            .name("audit-index".into())
            .spawn(move || {
                ON_WRITER_THREAD.with(|on| on.set(true));
                runtime.block_on(follow(node, rx, sinks, durable, delay, shared));
                let _ = done_tx.send(());
            })?;
        Ok(Follower { tx, done })
    }

    pub(crate) fn send(&self, records: Vec<Arc<StoredRecord>>) {
        // A closed channel means the thread is gone; the next start fills the sinks.
        let _ = self.tx.send(FollowerMsg::Batch(records));
    }

    /// Lets the thread write what it holds (retrying failures for up to `wait`), then waits for
    /// it to end.
    pub(crate) fn close(self, wait: Duration) {
        let _ = self.tx.send(FollowerMsg::Close);
        if self
            .done
            .recv_timeout(wait + Duration::from_secs(1))
            .is_err()
        {
            tracing::error!(
                "audit: the index thread did not finish in time; the next start fills the secondary sinks from the primary"
            );
        }
    }
}

async fn follow(
    node: String,
    rx: std::sync::mpsc::Receiver<FollowerMsg>,
    sinks: Vec<Box<dyn Sink>>,
    mut durable: Vec<u64>,
    delay: Duration,
    shared: Arc<Shared>,
) {
    let mut queue: Vec<Arc<StoredRecord>> = Vec::new();
    let mut dirty = vec![false; sinks.len()];
    let mut closing = false;
    let mut backoff = Duration::from_millis(50);
    let mut close_deadline = None;
    loop {
        if queue.is_empty() {
            if closing {
                for sink in &sinks {
                    if let Err(e) = sink.sync().await {
                        tracing::error!(error = %e, "audit: could not fsync a secondary sink at close; the next start fills it from the primary");
                    }
                }
                return;
            }
            match rx.recv() {
                Ok(FollowerMsg::Batch(b)) => queue.extend(b),
                Ok(FollowerMsg::Close) | Err(_) => closing = true,
            }
            // Let more batches gather: one index commit for many records.
            if !closing && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        loop {
            match rx.try_recv() {
                Ok(FollowerMsg::Batch(b)) => queue.extend(b),
                Ok(FollowerMsg::Close) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    closing = true;
                    break;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
            }
        }
        if closing && close_deadline.is_none() {
            close_deadline = Some(Instant::now() + backoff.max(Duration::from_secs(2)));
        }
        let mut failed = None;
        for (i, sink) in sinks.iter().enumerate() {
            if dirty[i] {
                match sink.tail(&node).await {
                    Ok(tail) => {
                        durable[i] = tail.map_or(0, |t| t.seq).max(durable[i]);
                        dirty[i] = false;
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        continue;
                    }
                }
            }
            let from = durable[i];
            let todo = &queue[queue.partition_point(|r| r.seq <= from)..];
            if todo.is_empty() {
                continue;
            }
            let last = todo.last().map_or(from, |r| r.seq);
            match sink.write_batch(todo).await {
                Ok(()) => durable[i] = last,
                Err(e) => {
                    dirty[i] = true;
                    failed = Some(e.to_string());
                }
            }
        }
        match failed {
            None => {
                queue.clear();
                backoff = Duration::from_millis(50);
            }
            Some(e) => {
                shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, queued = queue.len(), "audit: a secondary sink failed; statements go on (the primary has every record), retrying");
                let low = durable.iter().copied().min().unwrap_or(0);
                queue.retain(|r| r.seq > low);
                if queue.len() > FOLLOWER_MAX_QUEUED {
                    tracing::error!(dropped = queue.len(), "audit: too many records wait for a failing secondary sink; they are dropped here and the next start fills the sink from the primary");
                    queue.clear();
                }
                if close_deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::error!("audit: closing with records a secondary sink did not take; the next start fills it from the primary");
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
