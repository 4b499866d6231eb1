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
        /// Error, if it failed.
        error: Option<RecordedError>,
        /// Wall time from start to finish.
        duration: Duration,
        /// Whether the statement never ran upstream (skipped after an earlier error in a pipeline).
        skipped: bool,
    },
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

/// Where records go. `record` returns only once the record is accepted; an `Err` makes the gateway
/// refuse the statement (fail closed), so no unaudited statement reaches a database.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Accepts one record.
    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError>;
}

/// Writes records as structured `tracing` events at INFO on target `portcullis::audit`: the
/// built-in until a durable sink is configured.
#[derive(Debug, Default)]
pub struct LogAuditSink;

#[async_trait::async_trait]
impl AuditSink for LogAuditSink {
    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError> {
        if tracing::enabled!(target: "portcullis::audit", tracing::Level::INFO) {
            let json = serde_json::to_string(&record)
                .map_err(|e| GatewayError::internal(format!("audit encoding failed: {e}")))?;
            tracing::info!(target: "portcullis::audit", "{json}");
        }
        Ok(())
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*t))
}

/// Current time, for records.
pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}
