//! What the default trail costs per statement in CPU, all threads counted: the sessions' own
//! appends, the background fsyncs and checkpoints, and the SQLite index. Not a test of
//! behaviour, and never a threshold (speed is measured, not asserted): it prints a table.
//!
//! ```sh
//! cargo test --release -p audit --test cost -- --ignored --nocapture
//! ```
//!
//! Each run records `STATEMENTS` pgbench-like statements (a `statement_started` and a
//! `statement_finished` each, as the gateway writes them in written durability) from 1 and from
//! 16 concurrent sessions on a two-worker runtime, through [`AuditLog::open`] with the default
//! layout (segment log + SQLite index, generated signing key) in a temporary directory, and
//! reads each thread's CPU time from `/proc/self/task/*/schedstat`. The same sessions recording
//! into a sink that drops every record give the baseline (building the records, the runtime's
//! own scheduling), which is subtracted. Each measurement is the fastest of five runs, since
//! whatever else runs on the machine only ever adds. The figures in `docs/audit.md` come from
//! here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use audit::{AuditConfig, AuditLog};
use gateway_core::{
    AuditEvent, AuditRecord, AuditSink, ClientInfo, RecordedParameters, RecordedValue,
    StatementObjects,
};

/// Statements per run (`COST_STATEMENTS` overrides, e.g. for callgrind).
fn statements() -> u64 {
    env_or("COST_STATEMENTS", 64_000)
}

/// Runs per measurement (`COST_ROUNDS` overrides).
fn rounds() -> u64 {
    env_or("COST_ROUNDS", 5)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Takes every record and keeps none: the baseline.
struct Discard;

#[async_trait::async_trait]
impl AuditSink for Discard {
    async fn record(&self, record: AuditRecord) -> Result<(), gateway_core::GatewayError> {
        std::hint::black_box(record);
        Ok(())
    }
}

/// A session of pgbench -S -M prepared as the gateway records it.
struct Session {
    id: Arc<str>,
    client: Arc<ClientInfo>,
    node: Arc<str>,
    subject: Arc<str>,
    target: Arc<str>,
    sql: Arc<str>,
    classification: Arc<str>,
    objects: Arc<StatementObjects>,
    fingerprint: Arc<str>,
    rule: Arc<str>,
}

impl Session {
    fn new(n: u64) -> Session {
        Session {
            id: Arc::from(format!("0f6c2a9e-4b7d-4e1a-9c3f-{n:012x}")),
            client: Arc::new(ClientInfo {
                addr: format!("127.0.0.1:{}", 40000 + n).parse().expect("address"),
                protocol: "postgres",
                tls: false,
                application: Some("pgbench".into()),
            }),
            node: Arc::from("bench"),
            subject: Arc::from("bench"),
            target: Arc::from("portcullis_bench"),
            sql: Arc::from("SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
            classification: Arc::from("read"),
            objects: Arc::new(StatementObjects {
                reads: vec!["public.pgbench_accounts".into()],
                writes: Vec::new(),
                functions: Vec::new(),
            }),
            fingerprint: Arc::from("5a2f0c3b9d8e7f61"),
            rule: Arc::from("bench"),
        }
    }

    fn record(&self, event: AuditEvent) -> AuditRecord {
        AuditRecord {
            time: SystemTime::now(),
            node: Arc::clone(&self.node),
            session_id: Arc::clone(&self.id),
            subject: Some(Arc::clone(&self.subject)),
            target: Some(Arc::clone(&self.target)),
            client: Arc::clone(&self.client),
            event,
        }
    }

    fn started(&self, statement_id: u64) -> AuditRecord {
        self.record(AuditEvent::StatementStarted {
            statement_id,
            sql: Arc::clone(&self.sql),
            classification: Some(Arc::clone(&self.classification)),
            objects: Some(Arc::clone(&self.objects)),
            fingerprint: Some(Arc::clone(&self.fingerprint)),
            parameters: Some(Arc::new(RecordedParameters {
                mode: "recorded",
                values: vec![RecordedValue::Text(format!(
                    "{}",
                    statement_id * 7919 % 1_000_000
                ))],
            })),
            rule: Some(Arc::clone(&self.rule)),
            approval_id: None,
        })
    }

    fn finished(&self, statement_id: u64) -> AuditRecord {
        self.record(AuditEvent::StatementFinished {
            statement_id,
            rows: 1,
            tag: Some("SELECT 1".into()),
            affected: None,
            error: None,
            duration: Duration::from_micros(87),
            skipped: false,
            masked: None,
        })
    }
}

/// CPU nanoseconds per thread name, from `/proc/self/task/*/schedstat`.
fn cpu_by_thread() -> BTreeMap<(String, u64), u64> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("procfs")
        .flatten()
    {
        let path = task.path();
        let tid: u64 = task.file_name().to_string_lossy().parse().unwrap_or(0);
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let sched = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let ns: u64 = sched
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        out.insert((comm.trim().to_owned(), tid), ns);
    }
    out
}

fn group(name: &str) -> &'static str {
    match name {
        "audit-writer" => "background (fsync, checkpoints)",
        "audit-index" => "index thread (SQLite)",
        n if n.starts_with("cost-worker") => "sessions (append on the caller's thread)",
        _ => "other",
    }
}

/// CPU nanoseconds by thread group over one run of `sessions` sessions recording into the
/// default trail (or, with `discard`, into nothing).
fn run(sessions: u64, discard: bool) -> BTreeMap<&'static str, u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = AuditConfig::default_for(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cost-worker")
        .enable_all()
        .build()
        .expect("runtime");
    let log = Arc::new(rt.block_on(AuditLog::open(&config, "bench")).expect("open"));
    let sink: Arc<dyn AuditSink> = if discard {
        Arc::new(Discard)
    } else {
        Arc::clone(&log) as Arc<dyn AuditSink>
    };
    let per_session = statements() / sessions;
    let before = cpu_by_thread();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for s in 0..sessions {
            let sink = Arc::clone(&sink);
            tasks.push(tokio::spawn(async move {
                let session = Session::new(s);
                for i in 0..per_session {
                    sink.record(session.started(i)).await.expect("started");
                    // The statement's round trip: other sessions run meanwhile.
                    tokio::task::yield_now().await;
                    sink.record(session.finished(i)).await.expect("finished");
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("session");
        }
        // Let the index and the fsyncs catch up before reading the clocks.
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let after = cpu_by_thread();
    rt.block_on(log.shutdown()).expect("shutdown");
    let mut groups: BTreeMap<&str, u64> = BTreeMap::new();
    for ((name, tid), ns) in &after {
        let was = before.get(&(name.clone(), *tid)).copied().unwrap_or(0);
        *groups.entry(group(name)).or_default() += ns.saturating_sub(was);
    }
    groups
}

/// The run of the lowest total CPU among `ROUNDS`.
fn fastest(sessions: u64, discard: bool) -> BTreeMap<&'static str, u64> {
    (0..rounds())
        .map(|_| run(sessions, discard))
        .min_by_key(|g| g.values().sum::<u64>())
        .unwrap_or_default()
}

fn report(sessions: u64) {
    let statements = ((statements() / sessions) * sessions) as f64;
    let us = |ns: u64| ns as f64 / statements / 1000.0;
    let base = fastest(sessions, true);
    let trail = fastest(sessions, false);
    let (base_total, trail_total) = (base.values().sum::<u64>(), trail.values().sum::<u64>());
    println!(
        "\n{sessions} session(s): the trail costs {:.2} us of CPU per statement ({:.2} with it, {:.2} without)",
        us(trail_total.saturating_sub(base_total)),
        us(trail_total),
        us(base_total)
    );
    for (g, ns) in &trail {
        let without = base.get(g).copied().unwrap_or(0);
        println!(
            "  {g:45} {:6.2} us ({:+.2})",
            us(*ns),
            us(*ns) - us(without)
        );
    }
}

#[test]
#[ignore = "prints a measurement; run with --ignored --nocapture, in release"]
fn cpu_per_statement_of_the_default_trail() {
    // COST_SESSIONS="16" measures one case only (for a profile).
    let cases = std::env::var("COST_SESSIONS").unwrap_or_else(|_| "1 16".into());
    for sessions in cases.split_whitespace().filter_map(|s| s.parse().ok()) {
        report(sessions);
    }
}
