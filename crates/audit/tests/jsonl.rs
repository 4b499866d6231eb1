//! The JSONL sink: rotation, tamper tests across files, torn final lines, a real write failure.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audit::sink::jsonl::encode_line;
use audit::{verify, AuditLog, Durability, JsonlSink, OpenMode, Problem, SinkConfig};
use common::*;
use gateway_core::AuditSink;

const NODE: &str = "gw-j";
const SMALL: u64 = 4096;

async fn write_signed(dir: &Path, n: u64) -> Vec<u8> {
    let sink = JsonlSink::open(dir, SMALL, OpenMode::Write(Durability::Sync))
        .await
        .unwrap();
    write_signed_into(Box::new(sink), &config(vec![], Durability::Sync), NODE, n).await
}

async fn reader(dir: &Path) -> JsonlSink {
    JsonlSink::open(dir, SMALL, OpenMode::Read).await.unwrap()
}

/// (file, lines without their newline), in file order.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("audit-")
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let lines = text.lines().map(str::to_owned).collect();
            (p, lines)
        })
        .collect()
}

fn store(files: &[(PathBuf, Vec<String>)]) {
    for (p, lines) in files {
        let mut text = lines.join("\n");
        if !lines.is_empty() {
            text.push('\n');
        }
        std::fs::write(p, text).unwrap();
    }
}

/// Finds the file and line index holding `"seq":k,`.
fn locate(files: &[(PathBuf, Vec<String>)], k: u64) -> (usize, usize) {
    let needle = format!("\"seq\":{k},");
    for (f, (_, lines)) in files.iter().enumerate() {
        if let Some(l) = lines.iter().position(|l| l.contains(&needle)) {
            return (f, l);
        }
    }
    panic!("seq {k} not found");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

async fn failure(dir: &Path, key: &[u8]) -> (u64, Problem) {
    let report = verify(&reader(dir).await, &[key.to_vec()]).await.unwrap();
    let f = report
        .first_failure()
        .unwrap_or_else(|| panic!("verify passed: {report:?}"))
        .clone();
    (f.seq, f.problem)
}

#[tokio::test]
async fn rotated_files_verify_in_order_and_tampering_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let public = write_signed(&base, 40).await;
    let original = files(&base);
    assert!(
        original.len() >= 4,
        "expected rotation into several files, got {}",
        original.len()
    );
    assert!(original
        .iter()
        .all(|(p, _)| std::fs::metadata(p).unwrap().len() <= SMALL));
    let report = verify(&reader(&base).await, std::slice::from_ref(&public))
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");

    let records = all_records(&reader(&base).await).await;
    // An event in the second file.
    let k = records
        .iter()
        .filter(|r| r.kind == audit::RecordKind::Event)
        .map(|r| r.seq)
        .find(|&s| locate(&original, s).0 == 1 && locate(&original, s + 1).0 == 1)
        .unwrap();
    let case = |name: &str| {
        let d = tmp.path().join(name);
        copy_dir(&base, &d);
        d
    };

    // Edit one payload byte.
    let d = case("edit");
    let mut f = files(&d);
    let (fi, li) = locate(&f, k);
    f[fi].1[li] = f[fi].1[li].replacen("from orders", "from ordert", 1);
    store(&f);
    assert_eq!(failure(&d, &public).await, (k, Problem::HashMismatch));

    // Edit a stored hash.
    let d = case("hash");
    let mut f = files(&d);
    let (fi, li) = locate(&f, k);
    let line = &f[fi].1[li];
    let at = line.find("\"hash\":\"").unwrap() + 8;
    let mut edited = line.clone();
    edited.replace_range(
        at..at + 2,
        if &line[at..at + 2] == "00" {
            "11"
        } else {
            "00"
        },
    );
    f[fi].1[li] = edited;
    store(&f);
    assert_eq!(failure(&d, &public).await, (k, Problem::HashMismatch));

    // Delete a line.
    let d = case("delete");
    let mut f = files(&d);
    let (fi, li) = locate(&f, k);
    f[fi].1.remove(li);
    store(&f);
    assert_eq!(
        failure(&d, &public).await,
        (k, Problem::SeqGap { from: k, to: k })
    );

    // Swap two lines.
    let d = case("swap");
    let mut f = files(&d);
    let (fi, li) = locate(&f, k);
    f[fi].1.swap(li, li + 1);
    store(&f);
    assert_eq!(
        failure(&d, &public).await,
        (
            k,
            Problem::OutOfOrder {
                found: k + 1,
                expected: k
            }
        )
    );

    // Delete a whole rotated file in the middle.
    let d = case("file");
    let f = files(&d);
    let first_missing: u64 = serde_json::from_str::<serde_json::Value>(&f[1].1[0]).unwrap()["seq"]
        .as_u64()
        .unwrap();
    let last_missing: u64 = serde_json::from_str::<serde_json::Value>(f[1].1.last().unwrap())
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    std::fs::remove_file(&f[1].0).unwrap();
    assert_eq!(
        failure(&d, &public).await,
        (
            first_missing,
            Problem::SeqGap {
                from: first_missing,
                to: last_missing
            }
        )
    );

    // Truncate the tail: delete the last file and cut the one before.
    let d = case("truncate");
    let mut f = files(&d);
    let last = f.pop().unwrap();
    std::fs::remove_file(&last.0).unwrap();
    let (fi, li) = locate(&f, k);
    f[fi].1.truncate(li);
    f.truncate(fi + 1);
    for (p, _) in files(&d).iter().skip(fi + 1) {
        std::fs::remove_file(p).unwrap();
    }
    store(&f);
    let (seq, problem) = failure(&d, &public).await;
    assert_eq!(seq, k);
    assert!(
        matches!(problem, Problem::ChainEndsBeforeCheckpoint { last_seq, .. } if last_seq == k - 1),
        "{problem}"
    );

    // Forge a checkpoint with another key and recompute the chain after it.
    let d = case("forge");
    let cp_seq = checkpoints(&records)[2];
    let before = records.iter().find(|r| r.seq == cp_seq - 1).unwrap();
    let (other, _) = keys();
    let forged = serde_json::to_vec(&other.checkpoint(
        NODE,
        before.seq,
        &before.hash,
        std::time::SystemTime::now(),
    ))
    .unwrap();
    let rewritten = rewrite_from(&records, cp_seq, |p| *p = forged);
    let mut f = files(&d);
    for r in &rewritten {
        let (fi, li) = locate(&f, r.seq);
        let line = encode_line(r).unwrap();
        f[fi].1[li] = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
    }
    store(&f);
    let (seq, problem) = failure(&d, &public).await;
    assert_eq!(seq, cp_seq);
    // The forged checkpoint names its own key, which is not the one given.
    assert_eq!(
        problem,
        Problem::UnknownSigningKey {
            key_id: other.key_id().to_owned(),
            given: vec![audit::key_id(&public)],
        }
    );
}

#[tokio::test]
async fn a_torn_final_line_is_reported_then_repaired_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let public = write_signed(&dir, 9).await;
    let last_seq = all_records(&reader(&dir).await).await.last().unwrap().seq;
    // A crash in the middle of a write leaves half a line.
    let f = files(&dir);
    let (path, _) = f.last().unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes.extend_from_slice(br#"{"version":1,"node":"gw-j","seq":"#);
    std::fs::write(path, &bytes).unwrap();
    assert_eq!(
        failure(&dir, &public).await,
        (last_seq + 1, Problem::TornFinalRecord)
    );

    // The writer truncates it, says so in the chain, and continues.
    let (signer, _) = keys();
    let cfg = config(vec![], Durability::Sync);
    let sink = JsonlSink::open(&dir, SMALL, OpenMode::Write(Durability::Sync))
        .await
        .unwrap();
    let log = AuditLog::with_sinks(NODE, &cfg, vec![Box::new(sink)], Some(signer))
        .await
        .unwrap();
    log.record(event(NODE, 100)).await.unwrap();
    log.shutdown().await.unwrap();
    let records = all_records(&reader(&dir).await).await;
    let repaired = records
        .iter()
        .find(|r| r.event == "torn_record_truncated")
        .expect("repair notice");
    assert_eq!(
        repaired.seq,
        last_seq + 1,
        "first, before the log_opened notice of the run that repaired it"
    );
    assert!(
        repaired.payload_text().contains("\"bytes\":33"),
        "{}",
        repaired.payload_text()
    );
    let report = verify(&reader(&dir).await, &[]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test]
async fn a_vanished_directory_fails_closed_and_recovers() {
    // Root ignores permission bits, so the failure is made by replacing the directory with a
    // file: the next rotation cannot create its file.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let aside = tmp.path().join("aside");
    let cfg = config(
        vec![SinkConfig::Jsonl {
            dir: dir.clone(),
            max_file_bytes: SMALL,
        }],
        Durability::Sync,
    );
    let log = AuditLog::open(&cfg, NODE).await.unwrap();
    log.record(event(NODE, 0)).await.unwrap();
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let started = Instant::now();
    let mut refused = None;
    for i in 1..200 {
        if let Err(e) = log.record(event(NODE, i)).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("writes kept succeeding without a directory");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.kind, gateway_core::ErrorKind::AuditUnavailable);
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.is_healthy() {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.record(event(NODE, 1000)).await.unwrap();
    log.shutdown().await.unwrap();
    let report = verify(&reader(&dir).await, &[]).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let records = all_records(&reader(&dir).await).await;
    assert!(records.iter().any(|r| r.event == "sink_recovered"));
}

#[tokio::test]
async fn a_range_read_in_chunks_is_the_range_read_at_once() {
    use audit::Sink as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    write_signed(&dir, 120).await;
    let sink = reader(&dir).await;
    let whole = sink.read_range(NODE, 5, usize::MAX).await.unwrap();
    assert!(whole.len() > 100, "{}", whole.len());
    assert!(files(&dir).len() > 3, "the records span several files");
    // Consecutive chunks (resumed where the last one stopped), then a jump back.
    let mut chunks = Vec::new();
    let mut from = 5;
    loop {
        let chunk = sink.read_range(NODE, from, 7).await.unwrap();
        let Some(last) = chunk.last() else { break };
        from = last.seq + 1;
        chunks.extend(chunk);
    }
    assert_eq!(chunks, whole);
    let again = sink.read_range(NODE, 5, 3).await.unwrap();
    assert_eq!(again, whole[..3]);
}
