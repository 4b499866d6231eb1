//! The audit seam: every session event and statement becomes an [`AuditEvent`] handed to an
//! [`AuditSink`] before the gateway proceeds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{ErrorKind, GatewayError, Side};
use crate::identity::{AuthMethod, ClientInfo};
use crate::parameters::RecordedParameters;
use crate::policy::Verdict;

/// An error as recorded in the trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordedError {
    /// Who caused it.
    pub side: Side,
    /// Wire code (SQLSTATE or MySQL error number) when there is one.
    pub code: Option<String>,
    /// The message.
    pub message: String,
}

impl From<&GatewayError> for RecordedError {
    fn from(e: &GatewayError) -> Self {
        Self {
            side: e.side,
            code: None,
            message: e.to_string(),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A login failed; `check` names the check that failed. Never carries the credential.
    LoginFailed {
        /// The user name the client sent.
        user: String,
        /// The database name the client asked for.
        database: String,
        /// Why it failed.
        kind: ErrorKind,
        /// Which check failed, as told to the client.
        reason: String,
    },
    /// A session was admitted.
    SessionOpened {
        /// The user name the client sent in its handshake, which may differ from the record's
        /// `subject` (a token for alice presented as `user=bob`): kept so that the trail shows
        /// both.
        user: String,
        /// How the subject authenticated.
        auth_method: AuthMethod,
        /// Groups at login.
        groups: Vec<String>,
        /// Access granted.
        access: crate::policy::Access,
    },
    /// A session ended.
    SessionClosed {
        /// Statements run in the session.
        statements: u64,
        /// Error that ended it, if any.
        error: Option<RecordedError>,
    },
    /// A statement was refused before reaching the upstream.
    StatementDenied {
        /// Statement id within the session.
        statement_id: u64,
        /// Statement text.
        sql: Arc<str>,
        /// The verdict, with its rule.
        verdict: Verdict,
        /// Relations read and written and functions called, when the policy engine analysed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        objects: Option<Arc<crate::policy::StatementObjects>>,
        /// The statement's shape without literal values, when the policy engine analysed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<Arc<str>>,
        /// Bound parameters (recorded or hashed), when the execution had them and the
        /// configuration keeps them.
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<Arc<RecordedParameters>>,
    },
    /// A statement is about to be forwarded upstream.
    StatementStarted {
        /// Statement id within the session.
        statement_id: u64,
        /// Statement text.
        sql: Arc<str>,
        /// Classification, when the policy engine analysed it.
        classification: Option<Arc<str>>,
        /// Relations read and written and functions called, when the policy engine analysed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        objects: Option<Arc<crate::policy::StatementObjects>>,
        /// The statement's shape without literal values, when the policy engine analysed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<Arc<str>>,
        /// Bound parameters (recorded or hashed), when the execution had them and the
        /// configuration keeps them.
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<Arc<RecordedParameters>>,
        /// The rule that allowed it, if any.
        rule: Option<Arc<str>>,
        /// The approval request or time-boxed grant that let it run, when the rule required one.
        #[serde(skip_serializing_if = "Option::is_none")]
        approval_id: Option<Arc<str>>,
    },
    /// A statement finished.
    StatementFinished {
        /// Statement id within the session.
        statement_id: u64,
        /// Rows returned to the client.
        rows: u64,
        /// Command tag (PostgreSQL) or affected rows summary.
        tag: Option<String>,
        /// Rows the statement inserted, updated or deleted, when the protocol reports them.
        #[serde(skip_serializing_if = "Option::is_none")]
        affected: Option<u64>,
        /// Error, if it failed.
        error: Option<RecordedError>,
        /// Wall time from start to finish.
        duration: Duration,
        /// Whether the statement never ran upstream (skipped after an earlier error in a pipeline).
        skipped: bool,
        /// Result columns that were masked, with how many values each, when any was.
        #[serde(skip_serializing_if = "Option::is_none")]
        masked: Option<Arc<[crate::masking::MaskedColumn]>>,
    },
    /// A statement was held for someone else's approval: a request is open for it (new, or the
    /// one an earlier execution of exactly this statement opened).
    ApprovalRequested {
        /// Statement id within the session.
        statement_id: u64,
        /// The request.
        request_id: Arc<str>,
        /// Whether this execution opened the request.
        new: bool,
        /// Statement text.
        sql: Arc<str>,
        /// The statement's shape without literal values, when the policy engine analysed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<Arc<str>>,
        /// Bound parameters (recorded or hashed), when the execution had them and the
        /// configuration keeps them.
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<Arc<RecordedParameters>>,
        /// The rule that holds it.
        rule: Option<Arc<str>>,
        /// Whether the statement waits for the decision (otherwise it is refused now and runs
        /// when sent again after the approval).
        waits: bool,
    },
    /// A statement's hold ended: `outcome` is `approved` (its `statement_started` follows, naming
    /// the request), `denied`, `expired`, `timed_out`, `cancelled`, `shutting_down` or
    /// `not_waiting` (refused now; the request stays open).
    ApprovalEnded {
        /// Statement id within the session.
        statement_id: u64,
        /// The request.
        request_id: Arc<str>,
        /// How the hold ended.
        outcome: &'static str,
    },
    /// An administrative action outside any session (a decision on an approval request, a
    /// grant created or revoked, a session ended): `subject` of the record is who acted,
    /// `session_id` is `admin`.
    AdminAction {
        /// What was done, e.g. `approval_approved`, `grant_created`.
        action: &'static str,
        /// The request, grant or session acted on.
        id: String,
        /// The reason the actor gave, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The action's particulars.
        detail: serde_json::Value,
    },
    /// A statement ran and ended: what `statement_started` and `statement_finished` say, in one
    /// record, for a statement whose end was known before its start was written (a sink that
    /// batches writes joins the two with [`AuditRecord::join_end`]). `time` is when it started.
    StatementExecuted {
        /// Statement id within the session.
        statement_id: u64,
        /// Statement text.
        sql: Arc<str>,
        /// Classification, when the policy engine analysed it.
        classification: Option<Arc<str>>,
        /// Relations read and written and functions called, when the policy engine analysed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        objects: Option<Arc<crate::policy::StatementObjects>>,
        /// The statement's shape without literal values, when the policy engine analysed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<Arc<str>>,
        /// Bound parameters (recorded or hashed), when the execution had them and the
        /// configuration keeps them.
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<Arc<RecordedParameters>>,
        /// The rule that allowed it, if any.
        rule: Option<Arc<str>>,
        /// The approval request or time-boxed grant that let it run, when the rule required one.
        #[serde(skip_serializing_if = "Option::is_none")]
        approval_id: Option<Arc<str>>,
        /// How it ended: the fields of `statement_finished`, after the others. Boxed, so that
        /// this variant, made only where records are written, does not make every event larger
        /// (records are moved several times on their way to the sink).
        #[serde(flatten)]
        outcome: Box<StatementOutcome>,
    },
}

/// How a statement ended, as a `statement_executed` record says it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatementOutcome {
    /// Rows returned to the client.
    pub rows: u64,
    /// Command tag (PostgreSQL) or affected rows summary.
    pub tag: Option<String>,
    /// Rows the statement inserted, updated or deleted, when the protocol reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affected: Option<u64>,
    /// Error, if it failed.
    pub error: Option<RecordedError>,
    /// Wall time from start to finish.
    pub duration: Duration,
    /// Whether the statement never ran upstream (skipped after an earlier error in a pipeline).
    pub skipped: bool,
    /// Result columns that were masked, with how many values each, when any was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masked: Option<Arc<[crate::masking::MaskedColumn]>>,
}

impl AuditEvent {
    /// The `event` name, as in the record's JSON.
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::LoginFailed { .. } => "login_failed",
            AuditEvent::SessionOpened { .. } => "session_opened",
            AuditEvent::SessionClosed { .. } => "session_closed",
            AuditEvent::StatementDenied { .. } => "statement_denied",
            AuditEvent::StatementStarted { .. } => "statement_started",
            AuditEvent::StatementFinished { .. } => "statement_finished",
            AuditEvent::StatementExecuted { .. } => "statement_executed",
            AuditEvent::ApprovalRequested { .. } => "approval_requested",
            AuditEvent::ApprovalEnded { .. } => "approval_ended",
            AuditEvent::AdminAction { .. } => "admin_action",
        }
    }
}

/// One record: an event plus who, where and when.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRecord {
    /// When the event happened; serialized as RFC 3339 UTC with microseconds.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The gateway node that saw it.
    pub node: Arc<str>,
    /// Session id (unique per node).
    pub session_id: Arc<str>,
    /// The subject, when authenticated.
    pub subject: Option<Arc<str>>,
    /// The target name.
    pub target: Option<Arc<str>>,
    /// The client connection.
    pub client: Arc<ClientInfo>,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl AuditRecord {
    /// Joins `end`, a `statement_finished`, to this `statement_started` of the same statement in
    /// the same session: one `statement_executed` record, at this record's time. Any other pair
    /// is handed back unchanged, `(self, end)`.
    // Both records are handed back whole on a mismatch (rare: a start whose end comes later),
    // so that the caller writes them as they are.
    #[allow(clippy::result_large_err)]
    pub fn join_end(self, end: AuditRecord) -> Result<AuditRecord, (AuditRecord, AuditRecord)> {
        let same_session = self.session_id == end.session_id;
        match (self.event, end.event) {
            (
                AuditEvent::StatementStarted {
                    statement_id,
                    sql,
                    classification,
                    objects,
                    fingerprint,
                    parameters,
                    rule,
                    approval_id,
                },
                AuditEvent::StatementFinished {
                    statement_id: ended,
                    rows,
                    tag,
                    affected,
                    error,
                    duration,
                    skipped,
                    masked,
                },
            ) if same_session && statement_id == ended => Ok(AuditRecord {
                event: AuditEvent::StatementExecuted {
                    statement_id,
                    sql,
                    classification,
                    objects,
                    fingerprint,
                    parameters,
                    rule,
                    approval_id,
                    outcome: Box::new(StatementOutcome {
                        rows,
                        tag,
                        affected,
                        error,
                        duration,
                        skipped,
                        masked,
                    }),
                },
                ..self
            }),
            (started, ended) => Err((
                AuditRecord {
                    event: started,
                    ..self
                },
                AuditRecord {
                    event: ended,
                    ..end
                },
            )),
        }
    }
}

/// Where records go. `record` returns only once the record is accepted; an `Err` makes the gateway
/// refuse the statement (fail closed), so no unaudited statement reaches a database.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Accepts one record.
    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError>;

    /// Whether the end of a result may reach the client only once its "finished" record has been
    /// accepted: a sink that promises durability before the gateway proceeds (sync durability)
    /// says `true`, so that every result a client saw has its outcome in the trail. With `false`
    /// (the default) protocol crates relay the result first and record its end right after, which
    /// keeps the trail off the path of the answer.
    fn finish_before_result(&self) -> bool {
        false
    }

    /// Whether records are wanted at all. A sink that would discard every record says `false`,
    /// and the session then builds none and captures no bound parameters for them. Asked for
    /// every record, so the answer may change while the gateway runs.
    fn enabled(&self) -> bool {
        true
    }
}

/// Writes records as structured `tracing` events at INFO on target `portcullis::audit`: the
/// built-in until a durable sink is configured.
#[derive(Debug, Default)]
pub struct LogAuditSink;

#[async_trait::async_trait]
impl AuditSink for LogAuditSink {
    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError> {
        if self.enabled() {
            let json = serde_json::to_string(&record)
                .map_err(|e| GatewayError::internal(format!("audit encoding failed: {e}")))?;
            tracing::info!(target: "portcullis::audit", "{json}");
        }
        Ok(())
    }

    /// Only while the log shows INFO on `portcullis::audit`.
    fn enabled(&self) -> bool {
        tracing::enabled!(target: "portcullis::audit", tracing::Level::INFO)
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(Rfc3339Micros::new(*t).as_str())
}

/// A time as RFC 3339 in UTC with microseconds, e.g. `2025-01-31T12:00:00.123456Z`, formatted
/// into a buffer on the stack. Every audit record carries one; formatting through `fmt` (as
/// humantime does) was a measurable share of a record's serialization. Years outside 0..=9999
/// are written with as many digits as they need.
#[derive(Clone, Copy)]
pub struct Rfc3339Micros {
    /// Room for the longest: a 12-digit year with its sign plus the 23 characters after it.
    buf: [u8; 40],
    len: usize,
}

impl Rfc3339Micros {
    /// Formats `t`.
    pub fn new(t: SystemTime) -> Self {
        let us: i128 = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_micros() as i128,
            Err(e) => -(e.duration().as_micros() as i128),
        };
        let secs = us.div_euclid(1_000_000) as i64;
        let micros = us.rem_euclid(1_000_000) as u32;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400) as u32;
        let mut out = Self {
            buf: [0; 40],
            len: 0,
        };
        if (0..=9999).contains(&y) {
            out.digits(y as u32, 4);
        } else {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut out.buf[..]);
            // At most 13 characters (sign and 12 digits) for the years an i64 of seconds reaches.
            let _ = write!(cursor, "{y:04}");
            out.len = cursor.position() as usize;
        }
        out.push(b'-');
        out.digits(m, 2);
        out.push(b'-');
        out.digits(d, 2);
        out.push(b'T');
        out.digits(sod / 3600, 2);
        out.push(b':');
        out.digits(sod % 3600 / 60, 2);
        out.push(b':');
        out.digits(sod % 60, 2);
        out.push(b'.');
        out.digits(micros, 6);
        out.push(b'Z');
        out
    }

    /// The formatted time.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// `n` as exactly `width` decimal digits (zero-padded; `n` is below `10^width`).
    fn digits(&mut self, mut n: u32, width: usize) {
        let end = (self.len + width).min(self.buf.len());
        for slot in self.buf[self.len..end].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.len = end;
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar): year, month, day of
/// the day `z` days after 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Current time, for records.
pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(session: &str, event: AuditEvent) -> AuditRecord {
        AuditRecord {
            time: UNIX_EPOCH + Duration::from_micros(1_795_000_000_000_001),
            node: "n1".into(),
            session_id: session.into(),
            subject: Some("alice".into()),
            target: Some("main".into()),
            client: Arc::new(crate::ClientInfo {
                addr: "127.0.0.1:5000".parse().unwrap(),
                protocol: "postgres",
                tls: false,
                application: None,
            }),
            event,
        }
    }

    fn started(session: &str, statement_id: u64) -> AuditRecord {
        record(
            session,
            AuditEvent::StatementStarted {
                statement_id,
                sql: "select 1".into(),
                classification: Some("read".into()),
                objects: None,
                fingerprint: Some("0123456789abcdef".into()),
                parameters: None,
                rule: Some("readers".into()),
                approval_id: None,
            },
        )
    }

    fn finished(session: &str, statement_id: u64) -> AuditRecord {
        let mut r = record(
            session,
            AuditEvent::StatementFinished {
                statement_id,
                rows: 1,
                tag: Some("SELECT 1".into()),
                affected: None,
                error: None,
                duration: Duration::from_micros(250),
                skipped: false,
                masked: None,
            },
        );
        r.time += Duration::from_micros(250);
        r
    }

    #[test]
    fn a_start_and_its_end_join_into_one_record_at_the_start_time() {
        let start = started("s1", 7);
        let start_time = start.time;
        let joined = start.join_end(finished("s1", 7)).expect("same statement");
        assert_eq!(joined.time, start_time);
        assert_eq!(joined.event.name(), "statement_executed");
        let json = serde_json::to_value(&joined).unwrap();
        assert_eq!(json["event"], "statement_executed");
        assert_eq!(json["time"], "2026-11-18T11:06:40.000001Z");
        assert_eq!(json["session_id"], "s1");
        assert_eq!(json["statement_id"], 7);
        assert_eq!(json["sql"], "select 1");
        assert_eq!(json["classification"], "read");
        assert_eq!(json["fingerprint"], "0123456789abcdef");
        assert_eq!(json["rule"], "readers");
        assert_eq!(json["rows"], 1);
        assert_eq!(json["tag"], "SELECT 1");
        assert_eq!(json["error"], serde_json::Value::Null);
        assert_eq!(json["duration"]["nanos"], 250_000);
        assert_eq!(json["skipped"], false);
    }

    #[test]
    fn only_the_same_statement_of_the_same_session_joins() {
        for (start, end) in [
            (started("s1", 7), finished("s1", 8)),
            (started("s1", 7), finished("s2", 7)),
            (finished("s1", 7), finished("s1", 7)),
            (
                started("s1", 7),
                record(
                    "s1",
                    AuditEvent::SessionClosed {
                        statements: 7,
                        error: None,
                    },
                ),
            ),
        ] {
            let (want_start, want_end) = (
                serde_json::to_value(&start).unwrap(),
                serde_json::to_value(&end).unwrap(),
            );
            let (a, b) = start.join_end(end).expect_err("not one statement");
            assert_eq!(serde_json::to_value(&a).unwrap(), want_start);
            assert_eq!(serde_json::to_value(&b).unwrap(), want_end);
        }
    }

    #[test]
    fn rfc3339_matches_humantime() {
        let micros = [
            0u64,
            1,
            951_782_399_999_999,   // 2000-02-28T23:59:59.999999
            951_868_800_000_000,   // 2000-03-01 (after a leap day)
            1_709_251_199_123_456, // 2024-02-29T23:59:59.123456
            1_795_000_000_654_321,
            4_102_444_800_000_000,   // 2100-01-01
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999
        ];
        for us in micros {
            let t = UNIX_EPOCH + Duration::from_micros(us);
            assert_eq!(
                Rfc3339Micros::new(t).as_str(),
                humantime::format_rfc3339_micros(t).to_string(),
                "{us} us after the epoch"
            );
        }
    }

    #[test]
    fn rfc3339_outside_humantimes_range() {
        let before = UNIX_EPOCH - Duration::from_micros(1);
        assert_eq!(
            Rfc3339Micros::new(before).as_str(),
            "1969-12-31T23:59:59.999999Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800); // 10000-01-01
        assert_eq!(
            Rfc3339Micros::new(far).as_str(),
            "10000-01-01T00:00:00.000000Z"
        );
        // The far ends SystemTime can hold come out whole (ending in the `Z`), not cut short.
        for t in [
            UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2),
            UNIX_EPOCH - Duration::from_secs(i64::MAX as u64 / 2),
        ] {
            let s = Rfc3339Micros::new(t);
            assert!(s.as_str().ends_with('Z'), "{}", s.as_str());
        }
    }
}
