//! What a start finds in the sinks before the first record: a secondary the primary lacks records
//! of (filled from it), a primary a secondary holds more of (filled from that), and how the
//! previous run ended (a clean `log_closed`, or an unclean stop whose open sessions are named).

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::AuditError;
use crate::record::{now_for_payload, ChainHash, RecordKind, StoredRecord};
use crate::signing::NoticePayload;
use crate::sink::Sink;

/// Brings `sink` up to the primary's tail `(head_seq, head_hash)` by copying what it lacks.
/// Returns the sink's tail seq afterwards.
pub(crate) async fn catch_up(
    primary: &dyn Sink,
    sink: &dyn Sink,
    node: &str,
    head_seq: u64,
    head_hash: &ChainHash,
) -> Result<u64, AuditError> {
    let tail = sink.tail(node).await?;
    let (seq, hash) = tail
        .map(|t| (t.seq, t.hash))
        .unwrap_or((0, ChainHash::GENESIS));
    if seq > head_seq {
        return Err(AuditError::Diverged(format!(
            "{} holds node `{node}` up to seq {seq}, the primary {} only up to {head_seq}; verify both and remove \
             the sink that is wrong, or make the longer one primary",
            sink.name(),
            primary.name()
        )));
    }
    if seq == head_seq {
        if hash != *head_hash {
            return Err(AuditError::Diverged(format!(
                "{} and the primary {} hold different records at node `{node}` seq {seq}",
                sink.name(),
                primary.name()
            )));
        }
        return Ok(seq);
    }
    if seq > 0 {
        let ours = primary.read_range(node, seq, 1).await?;
        if ours.first().map(|r| r.hash) != Some(hash) {
            return Err(AuditError::Diverged(format!(
                "{} and the primary {} hold different records at node `{node}` seq {seq}",
                sink.name(),
                primary.name()
            )));
        }
    }
    tracing::warn!(
        sink = sink.name(),
        node,
        from = seq + 1,
        to = head_seq,
        "audit: copying records the sink lacks from the primary"
    );
    copy_records(primary, sink, node, seq, head_seq).await
}

/// Copies `node`'s records `after + 1 ..= upto` from `from` into `to`, in chunks, and returns the
/// last seq copied. A gap in `from` is an error: the copy would not continue the chain.
async fn copy_records(
    from: &dyn Sink,
    to: &dyn Sink,
    node: &str,
    after: u64,
    upto: u64,
) -> Result<u64, AuditError> {
    let mut seq = after;
    while seq < upto {
        let chunk = from.read_range(node, seq + 1, 1000).await?;
        let Some(last) = chunk.last().map(|r| r.seq) else {
            break;
        };
        if chunk.first().map(|r| r.seq) != Some(seq + 1) {
            return Err(AuditError::Diverged(format!(
                "{} has a gap after seq {seq}",
                from.name()
            )));
        }
        let chunk: Vec<Arc<StoredRecord>> = chunk.into_iter().map(Arc::new).collect();
        to.write_batch(&chunk).await?;
        seq = last;
    }
    Ok(seq)
}

/// When `sink` holds more of `node`'s chain than the primary, and its records continue the
/// primary's (the same record at the primary's last seq, or the primary is empty), copies them
/// into the primary and says so in a notice. That happens when the default layout meets a trail
/// an older gateway kept in SQLite alone, or when a power loss kept more of a secondary than of
/// the primary: the records are hash-linked, so the longer chain is the trail. A sink whose
/// records differ from the primary's stays an error (see [`catch_up`]).
pub(crate) async fn extend_primary(
    primary: &dyn Sink,
    sink: &dyn Sink,
    node: &str,
    head: Option<&StoredRecord>,
) -> Result<Option<NoticePayload>, AuditError> {
    let Some(theirs) = sink.tail(node).await? else {
        return Ok(None);
    };
    let head_seq = head.map_or(0, |h| h.seq);
    if theirs.seq <= head_seq {
        return Ok(None);
    }
    if let Some(head) = head {
        let same = sink.read_range(node, head.seq, 1).await?;
        if same.first().map(|r| r.hash) != Some(head.hash) {
            return Err(AuditError::Diverged(format!(
                "{} and the primary {} hold different records at node `{node}` seq {}",
                sink.name(),
                primary.name(),
                head.seq
            )));
        }
    }
    tracing::warn!(
        sink = sink.name(),
        primary = primary.name(),
        node,
        from = head_seq + 1,
        to = theirs.seq,
        "audit: the primary lacks records another sink holds; copying them into the primary"
    );
    let seq = copy_records(sink, primary, node, head_seq, theirs.seq).await?;
    primary.sync().await?;
    let mut details = serde_json::Map::new();
    details.insert("from_sink".into(), sink.name().into());
    details.insert("from_seq".into(), (head_seq + 1).into());
    details.insert("to_seq".into(), seq.into());
    Ok(Some(NoticePayload {
        notice: "primary_filled".into(),
        time: now_for_payload(),
        message: format!(
            "the primary {} lacked records {}..{seq} that {} held; they were copied into it",
            primary.name(),
            head_seq + 1,
            sink.name()
        ),
        details,
    }))
}

/// Most interrupted sessions named one by one in an `unclean_stop` notice; the count is exact.
const MAX_NAMED_SESSIONS: usize = 1000;

/// The fields of an event payload that say which session it belongs to.
#[derive(serde::Deserialize)]
struct SessionFields {
    event: Option<String>,
    session_id: Option<String>,
    subject: Option<String>,
    target: Option<String>,
    time: Option<serde_json::Value>,
}

/// How the chain's previous run ended. A clean stop ends with a `log_closed` notice (and the
/// final checkpoint after it); any other tail is an unclean stop: a crash, a SIGKILL or a power
/// loss. For that, returns the `unclean_stop` notice naming the last seq and every session the
/// run opened and never closed (read from its records since its `log_opened`), which the notice
/// closes as interrupted.
pub(crate) async fn previous_stop(
    primary: &dyn Sink,
    node: &str,
    tail: Option<&StoredRecord>,
) -> Result<Option<NoticePayload>, AuditError> {
    let Some(tail) = tail else { return Ok(None) };
    if tail.event == "log_closed" {
        return Ok(None);
    }
    if tail.kind == RecordKind::Checkpoint && tail.seq > 1 {
        let before = primary.read_range(node, tail.seq - 1, 1).await?;
        if before.first().is_some_and(|r| r.event == "log_closed") {
            return Ok(None);
        }
    }
    let from = primary
        .last_seq_of_event(node, "log_opened")
        .await?
        .unwrap_or(1);
    // Only the sessions still open are kept: memory follows the concurrency, not the run.
    let mut open: HashMap<String, (u64, serde_json::Value)> = HashMap::new();
    let mut seq = from;
    while seq <= tail.seq {
        let chunk = primary.read_range(node, seq, 1000).await?;
        let Some(last) = chunk.last().map(|r| r.seq) else {
            break;
        };
        for r in chunk.iter().filter(|r| r.kind == RecordKind::Event) {
            let Ok(f) = serde_json::from_slice::<SessionFields>(&r.payload) else {
                continue;
            };
            let Some(id) = f.session_id else { continue };
            match f.event.as_deref() {
                Some("session_opened") => {
                    let mut s = serde_json::Map::new();
                    s.insert("session_id".into(), id.clone().into());
                    s.insert("subject".into(), f.subject.into());
                    s.insert("target".into(), f.target.into());
                    s.insert("opened_at".into(), f.time.unwrap_or_default());
                    s.insert("opened_seq".into(), r.seq.into());
                    open.insert(id, (r.seq, s.into()));
                }
                Some("session_closed") => {
                    open.remove(&id);
                }
                _ => {}
            }
        }
        seq = last + 1;
    }
    let mut interrupted: Vec<(u64, serde_json::Value)> = open.into_values().collect();
    interrupted.sort_unstable_by_key(|(seq, _)| *seq);
    let interrupted: Vec<serde_json::Value> = interrupted.into_iter().map(|(_, s)| s).collect();
    let count = interrupted.len();
    let last_time = crate::record::format_time(tail.time());
    let mut details = serde_json::Map::new();
    details.insert("last_seq".into(), tail.seq.into());
    details.insert("last_time".into(), last_time.clone().into());
    details.insert("interrupted_count".into(), count.into());
    details.insert(
        "interrupted_sessions".into(),
        interrupted
            .into_iter()
            .take(MAX_NAMED_SESSIONS)
            .collect::<Vec<_>>()
            .into(),
    );
    Ok(Some(NoticePayload {
        notice: "unclean_stop".into(),
        time: now_for_payload(),
        message: format!(
            "the previous run stopped without closing the trail (a crash, SIGKILL or power loss): its last \
             record is seq {} at {last_time}; {count} session(s) it left open are closed as interrupted",
            tail.seq
        ),
        details,
    }))
}
