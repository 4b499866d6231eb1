//! The stored form of a record and the chain hash that links it to the one before.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

/// Version of the stored-record schema and of the hash input. Bumped whenever either changes;
/// verify refuses versions it does not know rather than guessing.
pub const SCHEMA_VERSION: u32 = 1;

/// A SHA-256 chain hash. Shown and stored as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev_hash` of the first record of every chain: 32 zero bytes.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0])?;
            let lo = hex_val(pair[1])?;
            out[i] = (hi << 4) | lo;
        }
        Some(ChainHash(out))
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// The hash as 64 lowercase hex digits written into `buf`, without allocating.
    pub fn hex_into<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        hex_digits(&self.0, buf)
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut s = vec![0u8; bytes.len() * 2];
    hex_digits(bytes, &mut s).to_owned()
}

/// Writes `bytes` as lowercase hex into the first `2 * bytes.len()` bytes of `out` (which must be
/// that long) and returns them as text.
fn hex_digits<'o>(bytes: &[u8], out: &'o mut [u8]) -> &'o str {
    // Both digits of a byte from one table: two hashes per record, on the session's path and
    // again in the index.
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        t
    };
    let out = &mut out[..bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
    // Only ASCII hex digits were written, so this cannot fail.
    std::str::from_utf8(out).unwrap_or_default()
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A gateway event: the payload is the JSON of a `gateway_core::AuditRecord`.
    Event,
    /// A signed checkpoint over the record before it (see [`crate::CheckpointPayload`]).
    Checkpoint,
    /// Something the audit log itself has to say: opened, recovered after a sink failure, dropped
    /// records (fail open), truncated a torn final line (see [`crate::NoticePayload`]).
    Notice,
}

impl RecordKind {
    /// The name stored in the `kind` column and hashed.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Event => "event",
            RecordKind::Checkpoint => "checkpoint",
            RecordKind::Notice => "notice",
        }
    }

    /// Parses a stored kind name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "event" => Some(RecordKind::Event),
            "checkpoint" => Some(RecordKind::Checkpoint),
            "notice" => Some(RecordKind::Notice),
            _ => None,
        }
    }
}

/// One record as every sink stores it.
///
/// `version`, `node`, `seq`, `kind`, `prev_hash` and `payload` are the hashed content; `hash` is
/// the result. `time_us`, `subject`, `target`, `event` and `verdict` are derived from the payload
/// when the record is made (for indexes and search); verify derives them again and reports a
/// record whose stored columns disagree with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Schema version ([`SCHEMA_VERSION`] for records written by this build).
    pub version: u32,
    /// The gateway node whose chain this record belongs to.
    pub node: String,
    /// Position in the node's chain, starting at 1, without gaps.
    pub seq: u64,
    /// What the record is.
    pub kind: RecordKind,
    /// Hash of the record at `seq - 1` ([`ChainHash::GENESIS`] for seq 1).
    pub prev_hash: ChainHash,
    /// [`chain_hash`] of this record.
    pub hash: ChainHash,
    /// When it happened, in microseconds since the Unix epoch (from the payload).
    pub time_us: i64,
    /// Subject, for events of authenticated sessions (from the payload).
    pub subject: Option<String>,
    /// Target name (from the payload).
    pub target: Option<String>,
    /// Event name (`statement_started`, `login_failed`, ...), `checkpoint`, or the notice name.
    pub event: String,
    /// `allow`, `deny` or `needs_approval` where the event carries a decision (from the payload).
    pub verdict: Option<String>,
    /// The exact JSON bytes that were hashed.
    pub payload: Vec<u8>,
}

impl StoredRecord {
    /// Builds the next record of a chain: derives the index columns from `payload` and computes
    /// the hash. Fails only when the payload is not a JSON object with the fields the kind needs.
    pub fn seal(
        node: &str,
        seq: u64,
        kind: RecordKind,
        prev_hash: ChainHash,
        payload: Vec<u8>,
    ) -> Result<Self, String> {
        let index = RecordIndex::derive(kind, &payload)?;
        Ok(Self::seal_indexed(
            node, seq, kind, prev_hash, payload, index,
        ))
    }

    /// [`seal`](Self::seal) with index columns the caller already knows (built from the event
    /// itself, which spares parsing the payload back on the writer's hot path). They must be what
    /// [`RecordIndex::derive`] finds in `payload`: verify checks exactly that.
    pub(crate) fn seal_indexed(
        node: &str,
        seq: u64,
        kind: RecordKind,
        prev_hash: ChainHash,
        payload: Vec<u8>,
        index: RecordIndex,
    ) -> Self {
        debug_assert_eq!(RecordIndex::derive(kind, &payload).as_ref(), Ok(&index));
        let hash = chain_hash(SCHEMA_VERSION, node, seq, kind, &prev_hash, &payload);
        StoredRecord {
            version: SCHEMA_VERSION,
            node: node.to_owned(),
            seq,
            kind,
            prev_hash,
            hash,
            time_us: index.time_us,
            subject: index.subject,
            target: index.target,
            event: index.event,
            verdict: index.verdict,
            payload,
        }
    }

    /// The hash recomputed from the stored content.
    pub fn computed_hash(&self) -> ChainHash {
        chain_hash(
            self.version,
            &self.node,
            self.seq,
            self.kind,
            &self.prev_hash,
            &self.payload,
        )
    }

    /// `time_us` as a [`SystemTime`].
    pub fn time(&self) -> SystemTime {
        time_from_micros(self.time_us)
    }

    /// The payload as text (lossy only if the stored bytes were damaged).
    pub fn payload_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }

    pub(crate) fn index(&self) -> RecordIndex {
        RecordIndex {
            time_us: self.time_us,
            subject: self.subject.clone(),
            target: self.target.clone(),
            event: self.event.clone(),
            verdict: self.verdict.clone(),
        }
    }
}

/// SHA-256 over the length-prefixed encoding of a record's hashed content (schema version 1):
///
/// ```text
/// u32 BE version
/// u64 BE len(node)    || node (UTF-8)
/// u64 BE seq
/// u64 BE len(kind)    || kind ("event" | "checkpoint" | "notice")
/// 32 bytes prev_hash
/// u64 BE len(payload) || payload (the stored bytes, verbatim)
/// ```
pub fn chain_hash(
    version: u32,
    node: &str,
    seq: u64,
    kind: RecordKind,
    prev_hash: &ChainHash,
    payload: &[u8],
) -> ChainHash {
    // aws-lc-rs rather than the sha2 crate: without the SHA extensions (common on server CPUs),
    // sha2 falls back to portable code, and hashing every record was a measured 7% of the
    // gateway's CPU under pgbench; aws-lc's assembly uses AVX2 there.
    let mut h = digest::Context::new(&digest::SHA256);
    h.update(&version.to_be_bytes());
    h.update(&(node.len() as u64).to_be_bytes());
    h.update(node.as_bytes());
    h.update(&seq.to_be_bytes());
    let kind = kind.as_str();
    h.update(&(kind.len() as u64).to_be_bytes());
    h.update(kind.as_bytes());
    h.update(&prev_hash.0);
    h.update(&(payload.len() as u64).to_be_bytes());
    h.update(payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    ChainHash(out)
}

/// The columns derived from a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordIndex {
    pub time_us: i64,
    pub subject: Option<String>,
    pub target: Option<String>,
    pub event: String,
    pub verdict: Option<String>,
}

/// The fields of a payload the index needs; everything else is skipped.
#[derive(Deserialize)]
struct IndexFields {
    time: Option<SerdeTime>,
    subject: Option<String>,
    target: Option<String>,
    event: Option<String>,
    notice: Option<String>,
    verdict: Option<VerdictFields>,
}

#[derive(Deserialize)]
struct VerdictFields {
    decision: Option<String>,
}

/// The record's time: RFC 3339 as the gateway writes it, or `SystemTime`'s own serde shape
/// (records written before the gateway switched to RFC 3339).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SerdeTime {
    Rfc3339(String),
    Struct {
        secs_since_epoch: u64,
        nanos_since_epoch: u32,
    },
}

impl SerdeTime {
    fn micros(&self) -> Option<i64> {
        match self {
            SerdeTime::Rfc3339(s) => humantime::parse_rfc3339(s).ok().map(micros_since_epoch),
            SerdeTime::Struct {
                secs_since_epoch,
                nanos_since_epoch,
            } => i64::try_from(*secs_since_epoch)
                .ok()
                .and_then(|s| s.checked_mul(1_000_000))
                .and_then(|us| us.checked_add(i64::from(nanos_since_epoch / 1000))),
        }
    }
}

/// Serde for the `time` of notices and checkpoints: written as RFC 3339 with microseconds, like
/// every event's time; read in that form or as `SystemTime`'s own serde shape
/// (`secs_since_epoch`/`nanos_since_epoch`), which gateways before this one wrote.
pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(gateway_core::Rfc3339Micros::new(*t).as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let t = super::SerdeTime::deserialize(d)?;
        t.micros()
            .map(super::time_from_micros)
            .ok_or_else(|| serde::de::Error::custom("not an RFC 3339 time in range"))
    }
}

impl RecordIndex {
    /// The index columns of an event record, from the event itself: the same values
    /// [`derive`](Self::derive) reads back from its JSON.
    pub(crate) fn of_event(record: &gateway_core::AuditRecord) -> Self {
        use gateway_core::AuditEvent;
        let verdict = match &record.event {
            AuditEvent::LoginFailed { .. } => Some("deny"),
            AuditEvent::StatementDenied { verdict, .. } => Some(match verdict.decision {
                gateway_core::Decision::Allow => "allow",
                gateway_core::Decision::Deny => "deny",
                gateway_core::Decision::NeedsApproval => "needs_approval",
            }),
            AuditEvent::StatementStarted { .. } | AuditEvent::StatementExecuted { .. } => {
                Some("allow")
            }
            AuditEvent::ApprovalRequested { .. } => Some("needs_approval"),
            AuditEvent::SessionOpened { .. }
            | AuditEvent::SessionClosed { .. }
            | AuditEvent::StatementFinished { .. }
            | AuditEvent::ApprovalEnded { .. }
            | AuditEvent::AdminAction { .. } => None,
        };
        let event = record.event.name();
        RecordIndex {
            // The payload's time is written with microseconds, truncated like this.
            time_us: micros_since_epoch(record.time),
            subject: record.subject.as_deref().map(str::to_owned),
            target: record.target.as_deref().map(str::to_owned),
            event: event.to_owned(),
            verdict: verdict.map(str::to_owned),
        }
    }

    pub(crate) fn derive(kind: RecordKind, payload: &[u8]) -> Result<Self, String> {
        let f: IndexFields = serde_json::from_slice(payload)
            .map_err(|e| format!("payload is not a JSON object: {e}"))?;
        let time = f.time.ok_or("payload has no `time`")?;
        let time_us = time
            .micros()
            .ok_or("payload `time` is not an RFC 3339 time in range")?;
        let event = match kind {
            RecordKind::Event => f.event.ok_or("event payload has no `event`")?,
            RecordKind::Checkpoint => "checkpoint".to_owned(),
            RecordKind::Notice => f.notice.ok_or("notice payload has no `notice`")?,
        };
        let verdict = match (f.verdict.and_then(|v| v.decision), event.as_str()) {
            (Some(d), _) => Some(d),
            (None, "statement_started" | "statement_executed") => Some("allow".to_owned()),
            (None, "login_failed") => Some("deny".to_owned()),
            (None, "approval_requested") => Some("needs_approval".to_owned()),
            _ => None,
        };
        Ok(RecordIndex {
            time_us,
            subject: f.subject,
            target: f.target,
            event,
            verdict,
        })
    }
}

pub(crate) fn time_from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

pub(crate) fn micros_since_epoch(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros())
            .map(|v| -v)
            .unwrap_or(i64::MIN),
    }
}

/// Formats a time as RFC 3339 in UTC with microseconds, e.g. `2025-01-31T12:00:00.123456Z`.
pub fn format_time(t: SystemTime) -> String {
    gateway_core::Rfc3339Micros::new(t).as_str().to_owned()
}

/// The current time in the payload format serde uses for `SystemTime`.
pub(crate) fn now_for_payload() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = chain_hash(1, "n", 1, RecordKind::Event, &ChainHash::GENESIS, b"{}");
        assert_eq!(ChainHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChainHash::from_hex("zz"), None);
        let mut buf = [0u8; 64];
        assert_eq!(h.hex_into(&mut buf), h.to_hex());
        assert_eq!(to_hex(&[0x00, 0x7f, 0xff]), "007fff");
        // A known SHA-256 (of the empty string), so the hash provider cannot drift unnoticed.
        let empty = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"");
        assert_eq!(
            to_hex(empty.as_ref()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hash_input_is_length_prefixed() {
        // Moving a byte from node to payload must change the hash.
        let a = chain_hash(1, "ab", 1, RecordKind::Event, &ChainHash::GENESIS, b"c");
        let b = chain_hash(1, "a", 1, RecordKind::Event, &ChainHash::GENESIS, b"bc");
        assert_ne!(a, b);
    }

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_micros(1_738_324_800_123_456);
        assert_eq!(format_time(t), "2025-01-31T12:00:00.123456Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }
}
