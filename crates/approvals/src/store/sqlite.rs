//! The SQLite store: one file (`approvals.db` in the gateway's `data_dir` by default), in WAL mode
//! with full synchronous commits. rusqlite is synchronous: each call runs on tokio's blocking
//! pool, and the calls are short.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{json, now_us, strings, Backend, Grant, Moved, Request, State, StoreError, Vote};

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
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

impl SqliteStore {
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
    fn insert(&self, r: &Request) -> Result<(), StoreError> {
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
    fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
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
    fn list(
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
    fn open_for(&self, binding: &str, subject: &str) -> Result<Option<Request>, StoreError> {
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

    /// Approved -> executed: the approval is used once. `false` when it was not (or no longer)
    /// approved.
    fn consume(&self, id: &str) -> Result<bool, StoreError> {
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
    fn vote(
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
    fn close(
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
    fn insert_grant(&self, g: &Grant) -> Result<(), StoreError> {
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
    fn grants(&self, active: bool, limit: u32) -> Result<Vec<Grant>, StoreError> {
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
    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
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
    fn revoke(&self, id: &str, by: &str) -> Result<bool, StoreError> {
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
    fn use_grant(
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

/// Runs `f` on the store on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    store: &SqliteStore,
    f: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .unwrap_or_else(|e| Err(StoreError::task(e)))
}

#[async_trait::async_trait]
impl Backend for SqliteStore {
    async fn insert(&self, r: &Request) -> Result<(), StoreError> {
        let r = r.clone();
        blocking(self, move |s| s.insert(&r)).await
    }
    async fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
        let id = id.to_owned();
        blocking(self, move |s| s.get(&id)).await
    }
    async fn list(
        &self,
        state: Option<State>,
        subject: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Request>, StoreError> {
        let subject = subject.map(str::to_owned);
        blocking(self, move |s| s.list(state, subject.as_deref(), limit)).await
    }
    async fn count(&self, state: State) -> Result<u64, StoreError> {
        blocking(self, move |s| {
            s.with(|c| {
                expire(c)?;
                let n: i64 = c.query_row(
                    "SELECT count(*) FROM requests WHERE state = ?1",
                    [state.as_str()],
                    |r| r.get(0),
                )?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
        })
        .await
    }
    async fn open_for(&self, binding: &str, subject: &str) -> Result<Option<Request>, StoreError> {
        let (binding, subject) = (binding.to_owned(), subject.to_owned());
        blocking(self, move |s| s.open_for(&binding, &subject)).await
    }
    async fn consume(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        blocking(self, move |s| s.consume(&id)).await
    }
    async fn vote(
        &self,
        id: &str,
        approver: &str,
        reason: Option<&str>,
        break_glass: bool,
    ) -> Result<Moved, StoreError> {
        let (id, approver, reason) = (
            id.to_owned(),
            approver.to_owned(),
            reason.map(str::to_owned),
        );
        blocking(self, move |s| {
            s.vote(&id, &approver, reason.as_deref(), break_glass)
        })
        .await
    }
    async fn close(
        &self,
        id: &str,
        to: State,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Moved, StoreError> {
        let (id, by, reason) = (id.to_owned(), by.to_owned(), reason.map(str::to_owned));
        blocking(self, move |s| s.close(&id, to, &by, reason.as_deref())).await
    }
    async fn insert_grant(&self, g: &Grant) -> Result<(), StoreError> {
        let g = g.clone();
        blocking(self, move |s| s.insert_grant(&g)).await
    }
    async fn grants(&self, active: bool, limit: u32) -> Result<Vec<Grant>, StoreError> {
        blocking(self, move |s| s.grants(active, limit)).await
    }
    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let id = id.to_owned();
        blocking(self, move |s| s.grant(&id)).await
    }
    async fn revoke(&self, id: &str, by: &str) -> Result<bool, StoreError> {
        let (id, by) = (id.to_owned(), by.to_owned());
        blocking(self, move |s| s.revoke(&id, &by)).await
    }
    async fn use_grant(
        &self,
        subject: &str,
        target: &str,
        fingerprint: Option<&str>,
        rule: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let (subject, target) = (subject.to_owned(), target.to_owned());
        let (fingerprint, rule) = (fingerprint.map(str::to_owned), rule.map(str::to_owned));
        blocking(self, move |s| {
            s.use_grant(&subject, &target, fingerprint.as_deref(), rule.as_deref())
        })
        .await
    }
}
