//! Replays the fuzzers' saved inputs (`fuzz/corpus/mysql_*`) on stable, through the same entry
//! points.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        run(&data);
        // Every prefix too: truncated input is what a peer that dies mid-packet sends.
        for end in 0..data.len().min(512) {
            run(&data[..end]);
        }
        n += 1;
    }
    n
}

#[test]
fn packets_corpus_replays_without_panic() {
    assert!(replay("mysql_packets", proto_mysql::fuzzing::packets) > 0);
}

#[test]
fn handshake_corpus_replays_without_panic() {
    assert!(replay("mysql_handshake", proto_mysql::fuzzing::handshake) > 0);
}

#[test]
fn masked_rows_corpus_replays_without_panic() {
    assert!(replay("mysql_masked_rows", proto_mysql::fuzzing::masked_rows) > 0);
}
