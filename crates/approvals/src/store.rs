//! Requests, approvals and grants in SQLite: one file in the gateway's `data_dir` by default.
//!
//! Every state change is one conditional UPDATE (or a transaction) so that two deciders, or two
//! gateway nodes sharing the file, cannot both move a request: an approval is consumed once, a
//! denied request cannot then be approved. The calls are synchronous and short; the service runs
//! them on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
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

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL,
    subject TEXT NOT NULL,
    groups TEXT NOT NULL,
    target TEXT NOT NULL,
    node TEXT NOT NULL,
    session_id TEXT NOT NULL,
    statement_id INTEGER NOT NULL,
    sql TEXT NOT NULL,
    fingerprint TEXT,
    parameters TEXT,
    binding TEXT NOT NULL,
    rule TEXT,
    message TEXT,
    approvers TEXT NOT NULL,
    quorum INTEGER NOT NULL,
    require_reason INTEGER NOT NULL,
    decided_by TEXT,
    decision_reason TEXT,
    executed_us INTEGER
);
CREATE INDEX IF NOT EXISTS requests_binding ON requests (binding, subject);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state, created_us);
CREATE TABLE IF NOT EXISTS votes (
    request_id TEXT NOT NULL REFERENCES requests (id),
    approver TEXT NOT NULL,
    reason TEXT,
    time_us INTEGER NOT NULL,
    break_glass INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    target TEXT NOT NULL,
    fingerprint TEXT,
    rule TEXT,
    created_by TEXT NOT NULL,
    reason TEXT,
    created_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL,
    revoked_us INTEGER,
    revoked_by TEXT,
    uses INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS grants_subject ON grants (subject, target);
";

const REQUEST_COLUMNS: &str = "id, state, created_us, expires_us, subject, groups, target, node, \
    session_id, statement_id, sql, fingerprint, parameters, binding, rule, message, approvers, \
    quorum, require_reason, decided_by, decision_reason, executed_us";

const GRANT_COLUMNS: &str = "id, subject, target, fingerprint, rule, created_by, reason, \
    created_us, expires_us, revoked_us, revoked_by, uses";

impl Store {
    /// Opens (creating when missing) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        // WAL: readers (waiting statements polling) never block the decider; busy_timeout: two
        // nodes (or processes) writing the same file wait for each other instead of failing.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    /// Saves a new request (state pending, no votes).
    pub fn insert(&self, r: &Request) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"),
                params![
                    r.id,
                    r.state.as_str(),
                    r.created,
                    r.expires,
                    r.subject,
                    json(&r.groups),
                    r.target,
                    r.node,
                    r.session_id,
                    i64::try_from(r.statement_id).unwrap_or(i64::MAX),
                    r.sql,
                    r.fingerprint,
                    r.parameters.as_ref().map(|p| p.to_string()),
                    r.binding,
                    r.rule,
                    r.message,
                    json(&r.approvers),
                    r.quorum,
                    r.require_reason,
                    r.decided_by,
                    r.decision_reason,
                    r.executed,
                ],
            )?;
            Ok(())
        })
    }

    /// The request, with its votes.
    pub fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
        self.with(|c| {
            expire(c)?;
            let r = c
                .query_row(
                    &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"),
                    [id],
                    request_row,
                )
                .optional()?;
            match r {
                Some(mut r) => {
                    r.approvals = votes(c, &r.id)?;
                    Ok(Some(r))
                }
                None => Ok(None),
            }
        })
    }

    /// Requests, newest first: in `state` when given, of `subject` when given.
    pub fn list(
        &self,
        state: Option<State>,
        subject: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Request>, StoreError> {
        self.with(|c| {
            expire(c)?;
            let mut stmt = c.prepare(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests \
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR subject = ?2) \
                 ORDER BY created_us DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![state.map(State::as_str), subject, limit],
                request_row,
            )?;
            let mut out = Vec::new();
            for r in rows {
                let mut r = r?;
                r.approvals = votes(c, &r.id)?;
                out.push(r);
            }
            Ok(out)
        })
    }

    /// The open (pending or approved, unexpired) request of `subject` for exactly `binding`.
    pub fn open_for(&self, binding: &str, subject: &str) -> Result<Option<Request>, StoreError> {
        self.with(|c| {
            expire(c)?;
            let r = c
                .query_row(
                    &format!(
                        "SELECT {REQUEST_COLUMNS} FROM requests WHERE binding = ?1 AND subject = ?2 \
                         AND state IN ('pending', 'approved') ORDER BY created_us DESC LIMIT 1"
                    ),
                    [binding, subject],
                    request_row,
                )
                .optional()?;
            Ok(r)
        })
    }

    /// The state of `id` now (expiring it if its time is past).
    pub fn state(&self, id: &str) -> Result<Option<State>, StoreError> {
        self.with(|c| {
            expire(c)?;
            let s: Option<String> = c
                .query_row("SELECT state FROM requests WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(s.and_then(|s| State::parse(&s)))
        })
    }

    /// Approved -> executed: the approval is used once. `false` when it was not (or no longer)
    /// approved.
    pub fn consume(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            expire(c)?;
            let n = c.execute(
                "UPDATE requests SET state = 'executed', executed_us = ?2 \
                 WHERE id = ?1 AND state = 'approved'",
                params![id, now_us()],
            )?;
            Ok(n == 1)
        })
    }

    /// Adds `approver`'s approval to a pending request; the request becomes approved once
    /// `quorum` distinct approvers agreed, or at once for a break-glass approval.
    pub fn vote(
        &self,
        id: &str,
        approver: &str,
        reason: Option<&str>,
        break_glass: bool,
    ) -> Result<Moved, StoreError> {
        self.with(|c| {
            expire(c)?;
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let row: Option<(String, u32)> = tx
                .query_row(
                    "SELECT state, quorum FROM requests WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((state, quorum)) = row else {
                return Ok(Moved::Missing);
            };
            if state != "pending" {
                return Ok(Moved::Conflict(
                    State::parse(&state).unwrap_or(State::Pending),
                ));
            }
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO votes (request_id, approver, reason, time_us, break_glass) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, approver, reason, now_us(), break_glass],
            )?;
            if inserted == 0 {
                return Ok(Moved::Conflict(State::Pending));
            }
            let count: u32 = tx.query_row(
                "SELECT count(*) FROM votes WHERE request_id = ?1",
                [id],
                |r| r.get(0),
            )?;
            if break_glass || count >= quorum {
                tx.execute("UPDATE requests SET state = 'approved' WHERE id = ?1", [id])?;
            }
            tx.commit()?;
            Ok(Moved::Done)
        })
    }

    /// Pending (or approved, not yet run) -> `to` (denied or cancelled), by `by`.
    pub fn close(
        &self,
        id: &str,
        to: State,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Moved, StoreError> {
        self.with(|c| {
            expire(c)?;
            let n = c.execute(
                "UPDATE requests SET state = ?2, decided_by = ?3, decision_reason = ?4 \
                 WHERE id = ?1 AND state IN ('pending', 'approved')",
                params![id, to.as_str(), by, reason],
            )?;
            if n == 1 {
                return Ok(Moved::Done);
            }
            let s: Option<String> = c
                .query_row("SELECT state FROM requests WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(match s {
                None => Moved::Missing,
                Some(s) => Moved::Conflict(State::parse(&s).unwrap_or(State::Pending)),
            })
        })
    }

    /// Saves a new grant.
    pub fn insert_grant(&self, g: &Grant) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    g.id,
                    g.subject,
                    g.target,
                    g.fingerprint,
                    g.rule,
                    g.created_by,
                    g.reason,
                    g.created,
                    g.expires,
                    g.revoked,
                    g.revoked_by,
                    i64::try_from(g.uses).unwrap_or(i64::MAX),
                ],
            )?;
            Ok(())
        })
    }

    /// Grants, newest first; only those in force when `active`.
    pub fn grants(&self, active: bool, limit: u32) -> Result<Vec<Grant>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants \
                 WHERE (?1 = 0 OR (revoked_us IS NULL AND expires_us > ?2)) \
                 ORDER BY created_us DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![active, now_us(), limit], grant_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The grant.
    pub fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"),
                [id],
                grant_row,
            )
            .optional()?)
        })
    }

    /// Revokes a grant in force. `false` when there was none.
    pub fn revoke(&self, id: &str, by: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE grants SET revoked_us = ?2, revoked_by = ?3 \
                 WHERE id = ?1 AND revoked_us IS NULL AND expires_us > ?2",
                params![id, now_us(), by],
            )?;
            Ok(n == 1)
        })
    }

    /// A grant in force that lets `subject` run a statement of `fingerprint` held by `rule` on
    /// `target`; its use is counted.
    pub fn use_grant(
        &self,
        subject: &str,
        target: &str,
        fingerprint: Option<&str>,
        rule: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            let id: Option<String> = c
                .query_row(
                    "SELECT id FROM grants WHERE subject = ?1 AND target = ?2 \
                     AND revoked_us IS NULL AND expires_us > ?3 \
                     AND ((fingerprint IS NOT NULL AND fingerprint = ?4) \
                       OR (rule IS NOT NULL AND rule = ?5)) \
                     ORDER BY expires_us DESC LIMIT 1",
                    params![subject, target, now_us(), fingerprint, rule],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = &id {
                c.execute("UPDATE grants SET uses = uses + 1 WHERE id = ?1", [id])?;
            }
            Ok(id)
        })
    }
}

/// Pending or approved requests whose time is past become expired.
fn expire(c: &Connection) -> Result<(), StoreError> {
    c.execute(
        "UPDATE requests SET state = 'expired' WHERE state IN ('pending', 'approved') AND expires_us <= ?1",
        [now_us()],
    )?;
    Ok(())
}

fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn strings(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

fn request_row(r: &Row<'_>) -> rusqlite::Result<Request> {
    let state: String = r.get(1)?;
    let parameters: Option<String> = r.get(12)?;
    let statement_id: i64 = r.get(9)?;
    Ok(Request {
        id: r.get(0)?,
        state: State::parse(&state).unwrap_or(State::Pending),
        created: r.get(2)?,
        expires: r.get(3)?,
        subject: r.get(4)?,
        groups: strings(r.get(5)?),
        target: r.get(6)?,
        node: r.get(7)?,
        session_id: r.get(8)?,
        statement_id: u64::try_from(statement_id).unwrap_or(0),
        sql: r.get(10)?,
        fingerprint: r.get(11)?,
        parameters: parameters.and_then(|p| serde_json::from_str(&p).ok()),
        binding: r.get(13)?,
        rule: r.get(14)?,
        message: r.get(15)?,
        approvers: strings(r.get(16)?),
        quorum: r.get(17)?,
        require_reason: r.get(18)?,
        approvals: Vec::new(),
        decided_by: r.get(19)?,
        decision_reason: r.get(20)?,
        executed: r.get(21)?,
    })
}

fn votes(c: &Connection, id: &str) -> Result<Vec<Vote>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT approver, reason, time_us, break_glass FROM votes WHERE request_id = ?1 ORDER BY time_us",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(Vote {
            approver: r.get(0)?,
            reason: r.get(1)?,
            time: r.get(2)?,
            break_glass: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn grant_row(r: &Row<'_>) -> rusqlite::Result<Grant> {
    let uses: i64 = r.get(11)?;
    Ok(Grant {
        id: r.get(0)?,
        subject: r.get(1)?,
        target: r.get(2)?,
        fingerprint: r.get(3)?,
        rule: r.get(4)?,
        created_by: r.get(5)?,
        reason: r.get(6)?,
        created: r.get(7)?,
        expires: r.get(8)?,
        revoked: r.get(9)?,
        revoked_by: r.get(10)?,
        uses: u64::try_from(uses).unwrap_or(0),
    })
}
