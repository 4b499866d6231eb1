//! Where requests, approvals and grants are kept: the [`Backend`] trait, with a SQLite file
//! ([`sqlite::SqliteStore`], one node or several processes on one host) and a PostgreSQL
//! database ([`postgres::PostgresStore`], gateway nodes on several hosts sharing requests and
//! grants).
//!
//! Every state change is one conditional UPDATE (or a transaction) so that two deciders, or two
//! gateway nodes sharing the store, cannot both move a request: an approval is consumed once, a
//! denied request cannot then be approved. Times are microseconds since the epoch.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub mod postgres;
pub mod sqlite;

/// A request's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for decisions.
    Pending,
    /// Approved by a quorum (or break glass); not yet run.
    Approved,
    /// Denied by an approver.
    Denied,
    /// Nobody decided (or the approved statement was not run) before it expired.
    Expired,
    /// Withdrawn: the requester cancelled it, or an administrator did.
    Cancelled,
    /// Approved and run: used up.
    Executed,
}

impl State {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Executed => "executed",
        }
    }

    /// Reads a stored or requested name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "denied" => State::Denied,
            "expired" => State::Expired,
            "cancelled" => State::Cancelled,
            "executed" => State::Executed,
            _ => return None,
        })
    }
}

/// One approval request, as stored and as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// `apr_...`.
    pub id: String,
    /// Current state.
    pub state: State,
    /// When it was opened (RFC 3339).
    #[serde(serialize_with = "ser_time")]
    pub created: i64,
    /// Until when it may be decided, and once approved, used.
    #[serde(serialize_with = "ser_time")]
    pub expires: i64,
    /// Who asked.
    pub subject: String,
    /// The requester's groups.
    pub groups: Vec<String>,
    /// The target.
    pub target: String,
    /// The gateway node and session it came from.
    pub node: String,
    /// The session.
    pub session_id: String,
    /// The statement id within the session.
    pub statement_id: u64,
    /// The statement text.
    pub sql: String,
    /// Its fingerprint, when analysed.
    pub fingerprint: Option<String>,
    /// Bound parameters as the audit trail records them.
    pub parameters: Option<serde_json::Value>,
    /// What the approval covers: hex of SHA-256 over target, text and bound values.
    pub binding: String,
    /// The rule that holds it.
    pub rule: Option<String>,
    /// The rule's message.
    pub message: Option<String>,
    /// Groups that may decide.
    pub approvers: Vec<String>,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// Whether decisions need a reason.
    pub require_reason: bool,
    /// Approvals given so far.
    pub approvals: Vec<Vote>,
    /// Who denied or cancelled it, and why.
    pub decided_by: Option<String>,
    /// The reason given with the denial or cancellation.
    pub decision_reason: Option<String>,
    /// When it was run (state `executed`).
    #[serde(serialize_with = "ser_opt_time")]
    pub executed: Option<i64>,
}

/// One approval of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Vote {
    /// Who approved.
    pub approver: String,
    /// Their reason.
    pub reason: Option<String>,
    /// When (RFC 3339).
    #[serde(serialize_with = "ser_time")]
    pub time: i64,
    /// A break-glass approval of one's own request.
    pub break_glass: bool,
}

/// A time-boxed grant: `subject` may run statements matching `fingerprint` or held by `rule` on
/// `target` until `expires`, without a request.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    /// `grt_...`.
    pub id: String,
    /// Who may.
    pub subject: String,
    /// Where (a target name).
    pub target: String,
    /// Statements of this shape (a fingerprint), if set.
    pub fingerprint: Option<String>,
    /// Statements this rule holds, if set.
    pub rule: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// Why.
    pub reason: Option<String>,
    /// When it was created (RFC 3339).
    #[serde(serialize_with = "ser_time")]
    pub created: i64,
    /// When it ends (RFC 3339).
    #[serde(serialize_with = "ser_time")]
    pub expires: i64,
    /// When it was revoked, if it was.
    #[serde(serialize_with = "ser_opt_time")]
    pub revoked: Option<i64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Statements it let run.
    pub uses: u64,
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A time in microseconds as RFC 3339.
pub fn format_us(us: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_micros(us.max(0).unsigned_abs());
    gateway_core::Rfc3339Micros::new(t).as_str().to_owned()
}

fn ser_time<S: serde::Serializer>(us: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_us(*us))
}

fn ser_opt_time<S: serde::Serializer>(us: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match us {
        Some(us) => s.serialize_str(&format_us(*us)),
        None => s.serialize_none(),
    }
}

/// A store error: the file cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("approval store: {0}")]
pub struct StoreError(String);

impl StoreError {
    /// A store call that did not complete (its blocking task panicked or was cancelled).
    pub fn task(e: impl std::fmt::Display) -> Self {
        StoreError(format!("the store call did not complete: {e}"))
    }
}

impl StoreError {
    /// An error with this text.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError(message.into())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError(match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        })
    }
}

/// What moving a request's state found.
#[derive(Debug, PartialEq, Eq)]
pub enum Moved {
    /// Done.
    Done,
    /// No such request.
    Missing,
    /// The request is no longer in the state the change needs (someone else moved it first, or
    /// it expired): its state now.
    Conflict(State),
}

/// The operations the service needs of a store. Implementations make each state change atomic
/// (see the module docs); reads expire pending and approved requests whose time is past first.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Saves a new request (state pending, no votes).
    async fn insert(&self, r: &Request) -> Result<(), StoreError>;
    /// The request, with its votes.
    async fn get(&self, id: &str) -> Result<Option<Request>, StoreError>;
    /// Requests, newest first: in `state` when given, of `subject` when given.
    async fn list(
        &self,
        state: Option<State>,
        subject: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Request>, StoreError>;
    /// How many requests are in `state`.
    async fn count(&self, state: State) -> Result<u64, StoreError>;
    /// The open (pending or approved, unexpired) request of `subject` for exactly `binding`.
    async fn open_for(&self, binding: &str, subject: &str) -> Result<Option<Request>, StoreError>;
    /// Approved -> executed: the approval is used once. `false` when it was not (or no longer)
    /// approved.
    async fn consume(&self, id: &str) -> Result<bool, StoreError>;
    /// Adds `approver`'s approval to a pending request; the request becomes approved once
    /// its quorum of distinct approvers agreed, or at once for a break-glass approval.
    async fn vote(
        &self,
        id: &str,
        approver: &str,
        reason: Option<&str>,
        break_glass: bool,
    ) -> Result<Moved, StoreError>;
    /// Pending (or approved, not yet run) -> `to` (denied or cancelled), by `by`.
    async fn close(
        &self,
        id: &str,
        to: State,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Moved, StoreError>;
    /// Saves a new grant.
    async fn insert_grant(&self, g: &Grant) -> Result<(), StoreError>;
    /// Grants, newest first; only those in force when `active`.
    async fn grants(&self, active: bool, limit: u32) -> Result<Vec<Grant>, StoreError>;
    /// The grant.
    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    /// Revokes a grant in force. `false` when there was none.
    async fn revoke(&self, id: &str, by: &str) -> Result<bool, StoreError>;
    /// A grant in force that lets `subject` run a statement of `fingerprint` held by `rule` on
    /// `target`; its use is counted.
    async fn use_grant(
        &self,
        subject: &str,
        target: &str,
        fingerprint: Option<&str>,
        rule: Option<&str>,
    ) -> Result<Option<String>, StoreError>;
}

/// Group names as stored (a JSON array).
pub(crate) fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// Group names read back.
pub(crate) fn strings(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}
