//! Detector cost per value: a plain 200-byte sentence (no candidate: the common case), the same
//! sentence with an e-mail address in it, and a 2 KB JSON document with a few findings.
//!
//! `cargo bench -p masking --bench detect -- --warm-up-time 1 --measurement-time 3`; the figures
//! are recorded in `docs/masking-strategies.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use masking::detect::{DetectorKind, Detectors};

const SENTENCE: &str = "The quarterly report was reviewed by the finance team on Tuesday, and \
     the remaining questions about shipping costs, supplier contracts and the new warehouse in \
     Rotterdam will be discussed at the next meeting.";

const SENTENCE_WITH_EMAIL: &str = "The quarterly report was reviewed by the finance team on \
     Tuesday; send the remaining questions about shipping costs and supplier contracts to \
     jane.doe@example.com before the next meeting in Rotterdam.";

const SENTENCE_NON_ASCII: &str = "Der Quartalsbericht wurde am Dienstag vom Finanzteam geprüft; \
     die offenen Fragen zu Versandkosten, Lieferverträgen und dem neuen Lager in Köln \
     besprechen wir beim nächsten Treffen. 次回の会議で話し合います。";

fn json_document(findings: bool) -> String {
    let mut items = Vec::new();
    for i in 0..14 {
        let contact = if findings && i % 4 == 0 {
            format!("customer{i}@example.org")
        } else {
            format!("customer number {i}")
        };
        items.push(format!(
            r#"{{"id": {},"sku": "WX-{:05}-B","name": "Widget model {i}","qty": {},"price": {}.95,"note": "{contact}","updated": "2024-01-15T10:{:02}:00Z"}}"#,
            1000 + i,
            i * 37,
            i % 5 + 1,
            i * 3 + 9,
            i
        ));
    }
    format!(
        r#"{{"order": 48213, "status": "shipped", "items": [{}]}}"#,
        items.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let detectors = Detectors::all();
    let json_clean = json_document(false);
    let json_findings = json_document(true);
    assert!(
        SENTENCE.len() >= 200 && SENTENCE.len() < 240,
        "{}",
        SENTENCE.len()
    );
    assert!(
        (1900..2300).contains(&json_clean.len()),
        "{}",
        json_clean.len()
    );
    eprintln!(
        "sentence: {} bytes, JSON: {} bytes",
        SENTENCE.len(),
        json_clean.len()
    );
    let mut group = c.benchmark_group("detect");
    group.bench_function("sentence_200b_clean", |b| {
        b.iter(|| detectors.redact(black_box(SENTENCE)))
    });
    group.bench_function("sentence_200b_email", |b| {
        b.iter(|| detectors.redact(black_box(SENTENCE_WITH_EMAIL)))
    });
    group.bench_function("json_2kb_clean", |b| {
        b.iter(|| detectors.redact_json(black_box(&json_clean)))
    });
    group.bench_function("json_2kb_4_emails", |b| {
        b.iter(|| detectors.redact_json(black_box(&json_findings)))
    });
    group.bench_function("sentence_200b_non_ascii", |b| {
        b.iter(|| detectors.redact(black_box(SENTENCE_NON_ASCII)))
    });
    group.finish();
    // What each detector alone costs on the clean JSON document.
    let mut group = c.benchmark_group("detect_one_kind");
    for &kind in DetectorKind::all() {
        let one = Detectors::new(&[kind]);
        group.bench_function(format!("json_2kb_clean_{}", kind.name()), |b| {
            b.iter(|| one.redact_json(black_box(&json_clean)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
