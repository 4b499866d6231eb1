//! The per-record cost of written durability on the session's thread, piece by piece: the JSON
//! payload of a pgbench-like `statement_started` record, the chain hash, the segment log's line,
//! and a whole `record()` into the default layout (segment log, SQLite index, signed
//! checkpoints), which adds the lock and the `write` system call. Background work (fsyncs, the
//! index) is not in these figures: `tests/cost.rs` counts every thread's CPU.
//!
//! `cargo bench -p audit --bench append -- --warm-up-time 1 --measurement-time 3`; the figures
//! are recorded in `docs/audit.md`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use audit::sink::jsonl::encode_line;
use audit::{AuditConfig, AuditLog, ChainHash, RecordKind, StoredRecord};
use criterion::{criterion_group, criterion_main, Criterion};
use gateway_core::{
    AuditEvent, AuditRecord, AuditSink as _, ClientInfo, RecordedParameters, RecordedValue,
    StatementObjects,
};

fn client() -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        addr: "127.0.0.1:40001".parse().expect("address"),
        protocol: "postgres",
        tls: false,
        application: Some("pgbench".into()),
    })
}

fn record(client: &Arc<ClientInfo>, event: AuditEvent) -> AuditRecord {
    AuditRecord {
        time: SystemTime::now(),
        node: Arc::from("bench"),
        session_id: Arc::from("0f6c2a9e-4b7d-4e1a-9c3f-000000000001"),
        subject: Some(Arc::from("bench")),
        target: Some(Arc::from("portcullis_bench")),
        client: Arc::clone(client),
        event,
    }
}

fn started(client: &Arc<ClientInfo>, statement_id: u64) -> AuditRecord {
    record(
        client,
        AuditEvent::StatementStarted {
            statement_id,
            sql: Arc::from("SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
            classification: Some(Arc::from("read")),
            objects: Some(Arc::new(StatementObjects {
                reads: vec!["public.pgbench_accounts".into()],
                writes: Vec::new(),
                functions: Vec::new(),
            })),
            fingerprint: Some(Arc::from("5a2f0c3b9d8e7f61")),
            parameters: Some(Arc::new(RecordedParameters {
                mode: "recorded",
                values: vec![RecordedValue::Text("482913".into())],
            })),
            rule: Some(Arc::from("bench")),
            approval_id: None,
        },
    )
}

fn finished(client: &Arc<ClientInfo>, statement_id: u64) -> AuditRecord {
    record(
        client,
        AuditEvent::StatementFinished {
            statement_id,
            rows: 1,
            tag: Some("SELECT 1".into()),
            affected: None,
            error: None,
            duration: Duration::from_micros(87),
            skipped: false,
            masked: None,
        },
    )
}

fn pieces(c: &mut Criterion) {
    let client = client();
    let start = started(&client, 42);
    let payload = serde_json::to_vec(&start).expect("json");
    let sealed = StoredRecord::seal(
        "bench",
        7,
        RecordKind::Event,
        ChainHash::GENESIS,
        payload.clone(),
    )
    .expect("seal");
    let mut g = c.benchmark_group("record");
    g.bench_function("serialize statement_started", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&start)).expect("json");
            black_box(buf.len())
        })
    });
    g.bench_function("chain hash", |b| {
        b.iter(|| {
            audit::chain_hash(
                1,
                "bench",
                black_box(7),
                RecordKind::Event,
                &ChainHash::GENESIS,
                black_box(&payload),
            )
        })
    });
    g.bench_function("segment log line", |b| {
        b.iter(|| encode_line(black_box(&sealed)).expect("line"))
    });
    g.finish();
}

fn whole(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = AuditConfig::default_for(dir.path());
    let log = rt.block_on(AuditLog::open(&config, "bench")).expect("open");
    let client = client();
    let mut i = 0;
    let mut g = c.benchmark_group("written");
    g.bench_function("record() started + finished, default layout", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(async {
                log.record(started(&client, i)).await.expect("started");
                log.record(finished(&client, i)).await.expect("finished");
            })
        })
    });
    g.finish();
    rt.block_on(log.shutdown()).expect("shutdown");
}

criterion_group!(benches, pieces, whole);
criterion_main!(benches);
