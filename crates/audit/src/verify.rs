//! Verify a sink end to end, and read it: [`verify`], [`tail`], [`search`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::error::SinkError;
use crate::record::{ChainHash, RecordIndex, RecordKind, StoredRecord, SCHEMA_VERSION};
use crate::signing::{key_id, verify_checkpoint_signature, CheckpointPayload};
use crate::sink::{ScanCursor, ScanItem, SearchFilter, Sink};

/// What verify found, per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The sink verified.
    pub sink: String,
    /// One entry per node, by node name.
    pub nodes: Vec<NodeReport>,
    /// Whether checkpoint signatures were checked (at least one public key was given).
    pub signatures_checked: bool,
    /// Key ids of the public keys given, in the order given (see [`crate::signing::key_id`]).
    pub public_key_ids: Vec<String>,
    /// Things that are not failures but limit what the report proves.
    pub warnings: Vec<String>,
}

impl VerifyReport {
    /// True when no node has a failure.
    pub fn is_ok(&self) -> bool {
        self.nodes.iter().all(|n| n.failure.is_none())
    }

    /// The first failure in storage order (chain failures before checkpoint-copy failures).
    pub fn first_failure(&self) -> Option<&VerifyFailure> {
        self.nodes
            .iter()
            .filter_map(|n| n.failure.as_ref())
            .min_by_key(|f| f.order)
    }
}

/// One node's chain in a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The gateway node.
    pub node: String,
    /// Readable records seen.
    pub records: u64,
    /// Highest seq seen.
    pub last_seq: u64,
    /// Checkpoint records in the chain.
    pub checkpoints: u64,
    /// The seq the last checkpoint in the chain signs, if any.
    pub last_signed_seq: Option<u64>,
    /// Key ids of the keys that signed this node's checkpoints (up to a failure), in the order
    /// they first appear: more than one after a key rotation. Signatures were checked only when
    /// public keys were given.
    pub signing_keys: Vec<String>,
    /// Records after the last signed seq: these are hash-linked but not signed, so a truncation
    /// or rewrite of them cannot be detected from this sink alone.
    pub unsigned_tail: u64,
    /// The first place this node's chain does not verify.
    pub failure: Option<VerifyFailure>,
}

/// The first broken place in a node's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The node.
    pub node: String,
    /// The first chain position (seq) that does not verify: the edited record, the first missing
    /// one, the one stored elsewhere, or the first one missing after a truncation.
    pub seq: u64,
    /// What is wrong.
    pub problem: Problem,
    /// Where in the sink (`audit_records row id 42`, `audit-000002.jsonl line 17`).
    pub location: String,
    order: u64,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} seq {}: {} ({})",
            self.node, self.seq, self.problem, self.location
        )
    }
}

/// What is wrong at a [`VerifyFailure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The record's content does not hash to its stored hash.
    HashMismatch,
    /// The stored index columns (time, subject, target, event, verdict) do not match the payload.
    ColumnsMismatch(String),
    /// Records `from..=to` are missing.
    SeqGap {
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// Record `found` is stored where record `expected` belongs (`expected` comes later).
    OutOfOrder {
        /// The seq stored at this position.
        found: u64,
        /// The seq that belongs here.
        expected: u64,
    },
    /// The record's hash is not the `prev_hash` of the record after it: it was replaced (with a
    /// recomputed hash).
    Replaced {
        /// The seq of the record after it.
        next: u64,
    },
    /// A checkpoint does not refer to the record before it, or cannot be read.
    CheckpointMalformed(String),
    /// A checkpoint's Ed25519 signature does not verify with the given public key it names.
    CheckpointSignatureInvalid(String),
    /// A checkpoint names a signing key that is not among the public keys given: a key the
    /// verifier lacks (after a rotation), another node's key, or a forgery.
    UnknownSigningKey {
        /// The checkpoint's `key_id`.
        key_id: String,
        /// The key ids of the public keys given.
        given: Vec<String>,
    },
    /// A checkpoint copy kept beside the chain signs a seq the chain does not reach.
    ChainEndsBeforeCheckpoint {
        /// Seq of the checkpoint record.
        checkpoint_seq: u64,
        /// Where the chain ends.
        last_seq: u64,
    },
    /// A checkpoint copy kept beside the chain differs from the chain's record at that seq.
    CheckpointCopyMismatch,
    /// The last JSONL line is cut off (an interrupted write; the writer truncates it on start).
    TornFinalRecord,
    /// An entry cannot be read as a record.
    Unreadable(String),
    /// A schema version this build does not know.
    UnsupportedVersion(u32),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::HashMismatch => f.write_str("hash mismatch: record edited"),
            Problem::ColumnsMismatch(what) => write!(f, "stored columns disagree with the payload ({what}): record edited"),
            Problem::SeqGap { from, to } if from == to => write!(f, "seq gap: record {from} missing"),
            Problem::SeqGap { from, to } => write!(f, "seq gap: records {from}..{to} missing"),
            Problem::OutOfOrder { found, expected } => {
                write!(f, "out of order: record {found} is stored where record {expected} belongs")
            }
            Problem::Replaced { next } => {
                write!(f, "record replaced: its hash is not the prev_hash of record {next} (chain rewritten)")
            }
            Problem::CheckpointMalformed(why) => write!(f, "checkpoint malformed: {why}"),
            Problem::CheckpointSignatureInvalid(why) => write!(f, "checkpoint signature invalid: {why}"),
            Problem::UnknownSigningKey { key_id, given } => write!(
                f,
                "checkpoint signed by key {key_id}, which is not among the given public keys ({}): give its public \
                 key too (keys rotated), or the checkpoint was forged",
                given.join(", ")
            ),
            Problem::ChainEndsBeforeCheckpoint { checkpoint_seq, last_seq } => write!(
                f,
                "chain ends before the last signed checkpoint: a checkpoint at seq {checkpoint_seq} is on record, \
                 the chain ends at seq {last_seq} (truncated)"
            ),
            Problem::CheckpointCopyMismatch => {
                f.write_str("the chain's record differs from the signed checkpoint kept beside it: record replaced")
            }
            Problem::TornFinalRecord => f.write_str("torn final record: the last write was interrupted"),
            Problem::Unreadable(why) => write!(f, "unreadable record: {why}"),
            Problem::UnsupportedVersion(v) => write!(f, "unsupported schema version {v} (this build reads {SCHEMA_VERSION})"),
        }
    }
}

struct NodeState {
    report: NodeReport,
    expected: u64,
    prev_hash: ChainHash,
    /// Missing range of a gap failure, which becomes "out of order" if one of them shows up.
    gap: Option<(u64, u64)>,
    checkpoints_in_chain: HashMap<u64, ChainHash>,
}

impl NodeState {
    fn new(node: &str) -> Self {
        NodeState {
            report: NodeReport {
                node: node.to_owned(),
                records: 0,
                last_seq: 0,
                checkpoints: 0,
                last_signed_seq: None,
                signing_keys: Vec::new(),
                unsigned_tail: 0,
                failure: None,
            },
            expected: 1,
            prev_hash: ChainHash::GENESIS,
            gap: None,
            checkpoints_in_chain: HashMap::new(),
        }
    }

    fn fail(&mut self, seq: u64, problem: Problem, location: &str, order: u64) {
        if self.report.failure.is_none() {
            self.report.failure = Some(VerifyFailure {
                node: self.report.node.clone(),
                seq,
                problem,
                location: location.to_owned(),
                order,
            });
        }
    }
}

/// The public keys checkpoints are checked with, by key id.
struct KeyRing {
    by_id: HashMap<String, Vec<Vec<u8>>>,
    ids: Vec<String>,
}

impl KeyRing {
    fn new(keys: &[Vec<u8>]) -> Self {
        let mut ring = KeyRing {
            by_id: HashMap::new(),
            ids: Vec::new(),
        };
        for key in keys {
            let id = key_id(key);
            let same_id = ring.by_id.entry(id.clone()).or_default();
            if !same_id.contains(key) {
                same_id.push(key.clone());
            }
            if !ring.ids.contains(&id) {
                ring.ids.push(id);
            }
        }
        ring
    }

    /// Checks a checkpoint's signature with the key its `key_id` names. `Ok` without keys
    /// (nothing is checked then).
    fn check(&self, node: &str, cp: &CheckpointPayload) -> Result<(), Problem> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let Some(candidates) = self.by_id.get(&cp.key_id) else {
            return Err(Problem::UnknownSigningKey {
                key_id: cp.key_id.clone(),
                given: self.ids.clone(),
            });
        };
        // Two different keys with one 64-bit id are as good as impossible; try each anyway.
        if candidates
            .iter()
            .any(|key| verify_checkpoint_signature(key, node, cp))
        {
            Ok(())
        } else {
            Err(Problem::CheckpointSignatureInvalid(format!(
                "does not verify with the given key {} (checkpoint forged or edited)",
                cp.key_id
            )))
        }
    }
}

/// Checks every chain in `sink`: each record's hash, seq continuity per node, `prev_hash` links,
/// the stored columns against the payload, checkpoint signatures, and the checkpoint copies kept
/// beside the chain. Names the first broken record of each node. `Err` only when the sink cannot
/// be read.
///
/// `public_keys` are raw 32-byte Ed25519 keys (see [`crate::parse_public_keys`]); each
/// checkpoint is checked with the one its `key_id` names, so a chain signed by several keys in
/// turn (rotation) verifies when all of them are given, and a checkpoint whose key is missing
/// is [`Problem::UnknownSigningKey`]. With no key only the hash links are checked (a warning
/// says so).
pub async fn verify(sink: &dyn Sink, public_keys: &[Vec<u8>]) -> Result<VerifyReport, SinkError> {
    let keys = KeyRing::new(public_keys);
    let mut nodes: BTreeMap<String, NodeState> = BTreeMap::new();
    let mut cursor = ScanCursor::default();
    let mut order: u64 = 0;
    let mut last_node: Option<String> = None;
    loop {
        let page = sink.scan(cursor, 1024).await?;
        for item in page.items {
            order += 1;
            match item {
                ScanItem::Record { location, record } => {
                    last_node = Some(record.node.clone());
                    let s = nodes
                        .entry(record.node.clone())
                        .or_insert_with(|| NodeState::new(&record.node));
                    check_record(s, &record, &location, order, &keys);
                }
                ScanItem::Damaged {
                    location,
                    node,
                    seq,
                    problem,
                    torn_final,
                } => {
                    let node = node
                        .or_else(|| last_node.clone())
                        .unwrap_or_else(|| "?".to_owned());
                    let s = nodes
                        .entry(node.clone())
                        .or_insert_with(|| NodeState::new(&node));
                    let at = seq.unwrap_or(s.expected).min(s.expected);
                    let problem = if torn_final {
                        Problem::TornFinalRecord
                    } else {
                        Problem::Unreadable(problem)
                    };
                    s.fail(at, problem, &location, order);
                }
            }
        }
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }

    let mut beyond_end: HashMap<String, (u64, String)> = HashMap::new();
    for (location, copy) in sink.checkpoint_copies().await? {
        let s = nodes
            .entry(copy.node.clone())
            .or_insert_with(|| NodeState::new(&copy.node));
        if s.report.failure.is_some() {
            continue;
        }
        let order = u64::MAX;
        if copy.computed_hash() != copy.hash {
            s.fail(copy.seq, Problem::HashMismatch, &location, order);
            continue;
        }
        let payload: CheckpointPayload = match serde_json::from_slice(&copy.payload) {
            Ok(p) => p,
            Err(e) => {
                s.fail(
                    copy.seq,
                    Problem::CheckpointMalformed(e.to_string()),
                    &location,
                    order,
                );
                continue;
            }
        };
        if let Err(problem) = keys.check(&copy.node, &payload) {
            s.fail(copy.seq, problem, &location, order);
            continue;
        }
        if copy.seq > s.report.last_seq {
            // Reported after all copies are seen, naming the last one.
            let beyond = beyond_end
                .entry(copy.node.clone())
                .or_insert((0, String::new()));
            if copy.seq > beyond.0 {
                *beyond = (copy.seq, location);
            }
        } else if s.checkpoints_in_chain.get(&copy.seq) != Some(&copy.hash) {
            s.fail(copy.seq, Problem::CheckpointCopyMismatch, &location, order);
        }
    }

    for (node, (checkpoint_seq, location)) in beyond_end {
        if let Some(s) = nodes.get_mut(&node) {
            let last_seq = s.report.last_seq;
            s.fail(
                last_seq + 1,
                Problem::ChainEndsBeforeCheckpoint {
                    checkpoint_seq,
                    last_seq,
                },
                &location,
                u64::MAX,
            );
        }
    }

    let mut warnings = Vec::new();
    if public_keys.is_empty() {
        warnings.push(
            "no public key given: checkpoint signatures were not checked, so a chain rewritten with recomputed hashes \
             would pass"
                .to_owned(),
        );
    }
    let mut reports = Vec::with_capacity(nodes.len());
    for (node, mut s) in nodes {
        let signed = s.report.last_signed_seq.unwrap_or(0);
        s.report.unsigned_tail = s.report.last_seq.saturating_sub(signed);
        if s.report.checkpoints == 0 && s.report.records > 0 {
            warnings.push(format!(
                "node {node}: no signed checkpoint: the chain is only hash-linked, and whoever can write to the sink \
                 could have rewritten or truncated it undetected"
            ));
        } else if s.report.unsigned_tail > 1 {
            warnings.push(format!(
                "node {node}: records {}..{} come after the last signed checkpoint: their removal could not be \
                 detected from this sink alone (a gateway that is running, or crashed, leaves such a tail)",
                signed + 1,
                s.report.last_seq
            ));
        }
        reports.push(s.report);
    }
    Ok(VerifyReport {
        sink: sink.name().to_owned(),
        nodes: reports,
        signatures_checked: !public_keys.is_empty(),
        public_key_ids: keys.ids,
        warnings,
    })
}

fn check_record(s: &mut NodeState, r: &StoredRecord, location: &str, order: u64, keys: &KeyRing) {
    s.report.records += 1;
    s.report.last_seq = s.report.last_seq.max(r.seq);
    if s.report.failure.is_some() {
        // One failure per node; a record that fills a reported gap turns it into "out of order".
        if let (Some((from, to)), Some(f)) = (s.gap, s.report.failure.as_mut()) {
            if (from..=to).contains(&r.seq) {
                if let Problem::SeqGap { .. } = f.problem {
                    let found = s.expected;
                    f.problem = Problem::OutOfOrder {
                        found: found.max(to + 1),
                        expected: from,
                    };
                }
                s.gap = None;
            }
        }
        return;
    }
    if r.version != SCHEMA_VERSION {
        s.fail(
            r.seq,
            Problem::UnsupportedVersion(r.version),
            location,
            order,
        );
        return;
    }
    if r.computed_hash() != r.hash {
        s.fail(r.seq, Problem::HashMismatch, location, order);
        return;
    }
    match RecordIndex::derive(r.kind, &r.payload) {
        Ok(index) if index == r.index() => {}
        Ok(index) => {
            s.fail(
                r.seq,
                Problem::ColumnsMismatch(describe_mismatch(&index, &r.index())),
                location,
                order,
            );
            return;
        }
        Err(e) => {
            s.fail(r.seq, Problem::Unreadable(e), location, order);
            return;
        }
    }
    if r.seq > s.expected {
        s.gap = Some((s.expected, r.seq - 1));
        s.fail(
            s.expected,
            Problem::SeqGap {
                from: s.expected,
                to: r.seq - 1,
            },
            location,
            order,
        );
        // Remember what was found, for a later "out of order".
        s.expected = r.seq;
        return;
    }
    if r.seq < s.expected {
        s.fail(
            s.expected,
            Problem::OutOfOrder {
                found: r.seq,
                expected: s.expected,
            },
            location,
            order,
        );
        return;
    }
    if r.prev_hash != s.prev_hash {
        if r.seq == 1 {
            s.fail(1, Problem::Replaced { next: 1 }, location, order);
        } else {
            s.fail(
                r.seq - 1,
                Problem::Replaced { next: r.seq },
                location,
                order,
            );
        }
        return;
    }
    if r.kind == RecordKind::Checkpoint {
        s.report.checkpoints += 1;
        s.checkpoints_in_chain.insert(r.seq, r.hash);
        match serde_json::from_slice::<CheckpointPayload>(&r.payload) {
            Err(e) => {
                s.fail(
                    r.seq,
                    Problem::CheckpointMalformed(e.to_string()),
                    location,
                    order,
                );
                return;
            }
            Ok(cp) => {
                if cp.signed_seq + 1 != r.seq
                    || ChainHash::from_hex(&cp.signed_hash) != Some(r.prev_hash)
                {
                    // The chain before it was rewritten (or the checkpoint moved): what it signs
                    // is not what the chain holds.
                    s.fail(
                        r.seq,
                        Problem::CheckpointSignatureInvalid(format!(
                            "it signs seq {} hash {}, but the record before it is seq {} hash {} (history rewritten)",
                            cp.signed_seq,
                            cp.signed_hash,
                            r.seq.saturating_sub(1),
                            r.prev_hash
                        )),
                        location,
                        order,
                    );
                    return;
                }
                if let Err(problem) = keys.check(&r.node, &cp) {
                    s.fail(r.seq, problem, location, order);
                    return;
                }
                s.report.last_signed_seq = Some(cp.signed_seq);
                if !s.report.signing_keys.contains(&cp.key_id) {
                    s.report.signing_keys.push(cp.key_id);
                }
            }
        }
    }
    s.expected = r.seq + 1;
    s.prev_hash = r.hash;
}

fn describe_mismatch(payload: &RecordIndex, stored: &RecordIndex) -> String {
    let mut parts = Vec::new();
    if payload.time_us != stored.time_us {
        parts.push("time");
    }
    if payload.subject != stored.subject {
        parts.push("subject");
    }
    if payload.target != stored.target {
        parts.push("target");
    }
    if payload.event != stored.event {
        parts.push("event");
    }
    if payload.verdict != stored.verdict {
        parts.push("verdict");
    }
    parts.join(", ")
}

/// The newest `n` records (of `node`, when given), oldest first.
pub async fn tail(
    sink: &dyn Sink,
    n: usize,
    node: Option<&str>,
) -> Result<Vec<StoredRecord>, SinkError> {
    sink.search(
        &SearchFilter {
            node: node.map(str::to_owned),
            ..SearchFilter::default()
        },
        n,
    )
    .await
}

/// The newest `limit` records matching `filter`, oldest first. SQLite and PostgreSQL answer from
/// their indexes; JSONL is scanned.
pub async fn search(
    sink: &dyn Sink,
    filter: &SearchFilter,
    limit: usize,
) -> Result<Vec<StoredRecord>, SinkError> {
    sink.search(filter, limit).await
}
