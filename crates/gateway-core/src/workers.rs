//! Session workers: threads that each run a single-threaded tokio runtime, to which a listener
//! hands the connections it accepts.
//!
//! A proxy session is a pair of tasks that wake once per message and do a little work each time.
//! On tokio's work-stealing scheduler every wake also pays for the machinery of sharing: poll-time
//! statistics (two clock reads and a `powf` per batch of tasks), waking idle workers to steal,
//! and sessions that wander between cores. A session pinned to one single-threaded runtime pays
//! none of that, and its upstream socket, timers and buffers stay on one thread. Connections are
//! long-lived, so placing each on the worker with the fewest sessions when it is accepted keeps
//! the workers evenly loaded without stealing.
//!
//! Measured with pgbench -S -M prepared at 16 clients on 2 cores, in four paired runs of the
//! embedded gateway: 13.7 to 15.1 us of gateway CPU per transaction on two workers against 15.6
//! to 18.8 us on the shared multi-threaded runtime, and 5 to 27% more transactions per second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

/// A fixed set of session worker threads. Dropping the last handle stops them: sessions still
/// running on them are dropped, so stop the listeners (which drain their sessions) first.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Sessions placed on this worker and not yet ended.
    sessions: Arc<AtomicUsize>,
    /// Dropped (with the pool) to end the worker's thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A session's place on a worker: spawn its task on [`handle`](Self::handle) and keep this value
/// for as long as the session runs, so the worker's count goes down when it ends.
#[derive(Debug)]
pub struct Placement {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
}

impl Placement {
    /// The runtime of the chosen worker.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one), named `{name}-0`, `{name}-1`, ...
    pub fn start(count: usize, name: &str) -> std::io::Result<Arc<Workers>> {
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Runs the tasks spawned on `handle` until the pool is dropped; dropping the
                    // runtime then drops whatever is left on it.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.push(Worker {
                handle,
                sessions: Arc::default(),
                _stop: stop,
            });
        }
        Ok(Arc::new(Workers { workers }))
    }

    /// One worker per available core (as `std::thread::available_parallelism` reports it).
    pub fn per_core(name: &str) -> std::io::Result<Arc<Workers>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::start(cores, name)
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: a pool has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Sessions running on each worker, in worker order.
    pub fn sessions(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.sessions.load(Ordering::Relaxed))
            .collect()
    }

    /// Places a new session on the worker with the fewest sessions (the first of them on a tie).
    pub fn place(&self) -> Placement {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.sessions.load(Ordering::Relaxed))
            .unwrap_or_else(|| unreachable!("a pool has at least one worker"));
        worker.sessions.fetch_add(1, Ordering::Relaxed);
        Placement {
            handle: worker.handle.clone(),
            sessions: Arc::clone(&worker.sessions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_busy_worker_and_leave_when_they_end() {
        let workers = Workers::start(3, "test-worker").unwrap();
        assert_eq!(workers.len(), 3);
        let a = workers.place();
        let b = workers.place();
        let c = workers.place();
        assert_eq!(workers.sessions(), [1, 1, 1]);
        drop(b);
        assert_eq!(workers.sessions(), [1, 0, 1]);
        let d = workers.place();
        assert_eq!(workers.sessions(), [1, 1, 1]);
        drop((a, c, d));
        assert_eq!(workers.sessions(), [0, 0, 0]);
    }

    #[test]
    fn a_task_spawned_on_a_placement_runs_on_its_worker_thread() {
        let workers = Workers::start(2, "named-worker").unwrap();
        let place = workers.place();
        let (tx, rx) = std::sync::mpsc::channel();
        place.handle().spawn(async move {
            // The worker's own runtime drives it: timers and sockets work there.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the task ran");
        assert_eq!(name.as_deref(), Some("named-worker-0"));
    }

    #[test]
    fn zero_workers_means_one() {
        assert_eq!(Workers::start(0, "one").unwrap().len(), 1);
    }
}
