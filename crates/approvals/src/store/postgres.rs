//! The PostgreSQL store: gateway nodes on several hosts share requests, approvals and grants, so
//! that a request opened on one node can be decided through another's admin API and its
//! statement, waiting on the first, runs.
//!
//! One connection per node, behind a lock: approvals are rare and each call is one short query
//! (or one short transaction), and waiting statements look at their request once per `poll`.
//! A lost connection is opened again on the next call. TLS follows the audit sink's `sslmode`
//! rule (`audit::sink::pg_tls`: `disable`, `require` or `verify-full` with an optional CA file).

use std::path::Path;
use std::time::Duration;

use audit::sink::pg_tls::PgConnectSettings;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Row};

use super::{json, now_us, strings, Backend, Grant, Moved, Request, State, StoreError, Vote};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS portcullis_approval_requests (
    id text PRIMARY KEY,
    state text NOT NULL,
    created_us bigint NOT NULL,
    expires_us bigint NOT NULL,
    subject text NOT NULL,
    groups text NOT NULL,
    target text NOT NULL,
    node text NOT NULL,
    session_id text NOT NULL,
    statement_id bigint NOT NULL,
    sql text NOT NULL,
    fingerprint text,
    parameters text,
    binding text NOT NULL,
    rule text,
    message text,
    approvers text NOT NULL,
    quorum integer NOT NULL,
    require_reason boolean NOT NULL,
    decided_by text,
    decision_reason text,
    executed_us bigint
);
CREATE INDEX IF NOT EXISTS portcullis_approval_requests_binding
    ON portcullis_approval_requests (binding, subject);
CREATE INDEX IF NOT EXISTS portcullis_approval_requests_state
    ON portcullis_approval_requests (state, created_us);
CREATE TABLE IF NOT EXISTS portcullis_approval_votes (
    request_id text NOT NULL REFERENCES portcullis_approval_requests (id),
    approver text NOT NULL,
    reason text,
    time_us bigint NOT NULL,
    break_glass boolean NOT NULL,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE IF NOT EXISTS portcullis_grants (
    id text PRIMARY KEY,
    subject text NOT NULL,
    target text NOT NULL,
    fingerprint text,
    rule text,
    created_by text NOT NULL,
    reason text,
    created_us bigint NOT NULL,
    expires_us bigint NOT NULL,
    revoked_us bigint,
    revoked_by text,
    uses bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS portcullis_grants_subject ON portcullis_grants (subject, target);
";

const REQUEST_COLUMNS: &str = "id, state, created_us, expires_us, subject, groups, target, node, \
    session_id, statement_id, sql, fingerprint, parameters, binding, rule, message, approvers, \
    quorum, require_reason, decided_by, decision_reason, executed_us";

const GRANT_COLUMNS: &str = "id, subject, target, fingerprint, rule, created_by, reason, \
    created_us, expires_us, revoked_us, revoked_by, uses";

/// The PostgreSQL store.
pub struct PostgresStore {
    settings: PgConnectSettings,
    name: String,
    client: Mutex<Option<Client>>,
}

impl PostgresStore {
    /// Connects to `url` (a connection string whose `sslmode` says how; `ca_file` is the CA
    /// `verify-full` trusts) and creates the tables when missing.
    pub async fn open(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let mut settings = PgConnectSettings::parse(url, ca_file).map_err(StoreError::new)?;
        if settings.config.get_connect_timeout().is_none() {
            settings.config.connect_timeout(Duration::from_secs(5));
        }
        let name = format!(
            "postgres {}",
            settings.config.get_dbname().unwrap_or_default()
        );
        let store = PostgresStore {
            settings,
            name,
            client: Mutex::new(None),
        };
        let client = store.connect().await?;
        client.batch_execute(SCHEMA).await?;
        *store.client.lock().await = Some(client);
        Ok(store)
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let tls = self.settings.tls().map_err(StoreError::new)?;
        let failed = |e: tokio_postgres::Error| {
            StoreError::new(format!(
                "connect to the approval store ({}): {e}",
                self.name
            ))
        };
        match tls {
            Some(tls) => {
                let (client, conn) = self.settings.config.connect(tls).await.map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %e, "the approval store connection ended");
                    }
                });
                Ok(client)
            }
            None => {
                let (client, conn) = self
                    .settings
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %e, "the approval store connection ended");
                    }
                });
                Ok(client)
            }
        }
    }

    /// The node's connection, opened again when it was lost; requests whose time is past are
    /// expired first, as every read of the store does.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(self.connect().await?);
        }
        if let Some(c) = guard.as_ref() {
            c.execute(
                "UPDATE portcullis_approval_requests SET state = 'expired' \
                 WHERE state IN ('pending', 'approved') AND expires_us <= $1",
                &[&now_us()],
            )
            .await?;
        }
        Ok(guard)
    }
}

fn conn(guard: &Option<Client>) -> &Client {
    guard.as_ref().expect("connected by PostgresStore::client")
}

fn request_row(r: &Row) -> Request {
    let state: String = r.get(1);
    let parameters: Option<String> = r.get(12);
    let statement_id: i64 = r.get(9);
    let quorum: i32 = r.get(17);
    Request {
        id: r.get(0),
        state: State::parse(&state).unwrap_or(State::Pending),
        created: r.get(2),
        expires: r.get(3),
        subject: r.get(4),
        groups: strings(r.get(5)),
        target: r.get(6),
        node: r.get(7),
        session_id: r.get(8),
        statement_id: u64::try_from(statement_id).unwrap_or(0),
        sql: r.get(10),
        fingerprint: r.get(11),
        parameters: parameters.and_then(|p| serde_json::from_str(&p).ok()),
        binding: r.get(13),
        rule: r.get(14),
        message: r.get(15),
        approvers: strings(r.get(16)),
        quorum: u32::try_from(quorum).unwrap_or(1),
        require_reason: r.get(18),
        approvals: Vec::new(),
        decided_by: r.get(19),
        decision_reason: r.get(20),
        executed: r.get(21),
    }
}

fn grant_row(r: &Row) -> Grant {
    let uses: i64 = r.get(11);
    Grant {
        id: r.get(0),
        subject: r.get(1),
        target: r.get(2),
        fingerprint: r.get(3),
        rule: r.get(4),
        created_by: r.get(5),
        reason: r.get(6),
        created: r.get(7),
        expires: r.get(8),
        revoked: r.get(9),
        revoked_by: r.get(10),
        uses: u64::try_from(uses).unwrap_or(0),
    }
}

async fn votes(c: &Client, id: &str) -> Result<Vec<Vote>, StoreError> {
    let rows = c
        .query(
            "SELECT approver, reason, time_us, break_glass FROM portcullis_approval_votes \
             WHERE request_id = $1 ORDER BY time_us",
            &[&id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Vote {
            approver: r.get(0),
            reason: r.get(1),
            time: r.get(2),
            break_glass: r.get(3),
        })
        .collect())
}

#[async_trait::async_trait]
impl Backend for PostgresStore {
    async fn insert(&self, r: &Request) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let statement_id = i64::try_from(r.statement_id).unwrap_or(i64::MAX);
        let quorum = i32::try_from(r.quorum).unwrap_or(i32::MAX);
        let parameters = r.parameters.as_ref().map(|p| p.to_string());
        conn(&guard)
            .execute(
                &format!(
                    "INSERT INTO portcullis_approval_requests ({REQUEST_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                     $18, $19, $20, $21, $22)"
                ),
                &[
                    &r.id,
                    &r.state.as_str(),
                    &r.created,
                    &r.expires,
                    &r.subject,
                    &json(&r.groups),
                    &r.target,
                    &r.node,
                    &r.session_id,
                    &statement_id,
                    &r.sql,
                    &r.fingerprint,
                    &parameters,
                    &r.binding,
                    &r.rule,
                    &r.message,
                    &json(&r.approvers),
                    &quorum,
                    &r.require_reason,
                    &r.decided_by,
                    &r.decision_reason,
                    &r.executed,
                ],
            )
            .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
        let guard = self.client().await?;
        let c = conn(&guard);
        let row = c
            .query_opt(
                &format!(
                    "SELECT {REQUEST_COLUMNS} FROM portcullis_approval_requests WHERE id = $1"
                ),
                &[&id],
            )
            .await?;
        match row {
            Some(row) => {
                let mut r = request_row(&row);
                r.approvals = votes(c, id).await?;
                Ok(Some(r))
            }
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        state: Option<State>,
        subject: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Request>, StoreError> {
        let guard = self.client().await?;
        let c = conn(&guard);
        let rows = c
            .query(
                &format!(
                    "SELECT {REQUEST_COLUMNS} FROM portcullis_approval_requests \
                     WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR subject = $2) \
                     ORDER BY created_us DESC LIMIT $3"
                ),
                &[&state.map(State::as_str), &subject, &i64::from(limit)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut r = request_row(row);
            r.approvals = votes(c, &r.id).await?;
            out.push(r);
        }
        Ok(out)
    }

    async fn count(&self, state: State) -> Result<u64, StoreError> {
        let guard = self.client().await?;
        let n: i64 = conn(&guard)
            .query_one(
                "SELECT count(*) FROM portcullis_approval_requests WHERE state = $1",
                &[&state.as_str()],
            )
            .await?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn open_for(&self, binding: &str, subject: &str) -> Result<Option<Request>, StoreError> {
        let guard = self.client().await?;
        let row = conn(&guard)
            .query_opt(
                &format!(
                    "SELECT {REQUEST_COLUMNS} FROM portcullis_approval_requests \
                     WHERE binding = $1 AND subject = $2 AND state IN ('pending', 'approved') \
                     ORDER BY created_us DESC LIMIT 1"
                ),
                &[&binding, &subject],
            )
            .await?;
        Ok(row.as_ref().map(request_row))
    }

    async fn consume(&self, id: &str) -> Result<bool, StoreError> {
        let guard = self.client().await?;
        let n = conn(&guard)
            .execute(
                "UPDATE portcullis_approval_requests SET state = 'executed', executed_us = $2 \
                 WHERE id = $1 AND state = 'approved'",
                &[&id, &now_us()],
            )
            .await?;
        Ok(n == 1)
    }

    async fn vote(
        &self,
        id: &str,
        approver: &str,
        reason: Option<&str>,
        break_glass: bool,
    ) -> Result<Moved, StoreError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected by PostgresStore::client");
        let tx = client.transaction().await?;
        // Row lock: two nodes voting at once count each other's vote.
        let row = tx
            .query_opt(
                "SELECT state, quorum FROM portcullis_approval_requests WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Moved::Missing);
        };
        let state: String = row.get(0);
        let quorum: i32 = row.get(1);
        if state != "pending" {
            return Ok(Moved::Conflict(
                State::parse(&state).unwrap_or(State::Pending),
            ));
        }
        let inserted = tx
            .execute(
                "INSERT INTO portcullis_approval_votes (request_id, approver, reason, time_us, break_glass) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&id, &approver, &reason, &now_us(), &break_glass],
            )
            .await?;
        if inserted == 0 {
            return Ok(Moved::Conflict(State::Pending));
        }
        let count: i64 = tx
            .query_one(
                "SELECT count(*) FROM portcullis_approval_votes WHERE request_id = $1",
                &[&id],
            )
            .await?
            .get(0);
        if break_glass || count >= i64::from(quorum) {
            tx.execute(
                "UPDATE portcullis_approval_requests SET state = 'approved' WHERE id = $1",
                &[&id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Moved::Done)
    }

    async fn close(
        &self,
        id: &str,
        to: State,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Moved, StoreError> {
        let guard = self.client().await?;
        let c = conn(&guard);
        let n = c
            .execute(
                "UPDATE portcullis_approval_requests SET state = $2, decided_by = $3, decision_reason = $4 \
                 WHERE id = $1 AND state IN ('pending', 'approved')",
                &[&id, &to.as_str(), &by, &reason],
            )
            .await?;
        if n == 1 {
            return Ok(Moved::Done);
        }
        let row = c
            .query_opt(
                "SELECT state FROM portcullis_approval_requests WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(match row {
            None => Moved::Missing,
            Some(r) => {
                let s: String = r.get(0);
                Moved::Conflict(State::parse(&s).unwrap_or(State::Pending))
            }
        })
    }

    async fn insert_grant(&self, g: &Grant) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let uses = i64::try_from(g.uses).unwrap_or(i64::MAX);
        conn(&guard)
            .execute(
                &format!(
                    "INSERT INTO portcullis_grants ({GRANT_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ),
                &[
                    &g.id,
                    &g.subject,
                    &g.target,
                    &g.fingerprint,
                    &g.rule,
                    &g.created_by,
                    &g.reason,
                    &g.created,
                    &g.expires,
                    &g.revoked,
                    &g.revoked_by,
                    &uses,
                ],
            )
            .await?;
        Ok(())
    }

    async fn grants(&self, active: bool, limit: u32) -> Result<Vec<Grant>, StoreError> {
        let guard = self.client().await?;
        let rows = conn(&guard)
            .query(
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM portcullis_grants \
                     WHERE (NOT $1 OR (revoked_us IS NULL AND expires_us > $2)) \
                     ORDER BY created_us DESC LIMIT $3"
                ),
                &[&active, &now_us(), &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(grant_row).collect())
    }

    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let guard = self.client().await?;
        let row = conn(&guard)
            .query_opt(
                &format!("SELECT {GRANT_COLUMNS} FROM portcullis_grants WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(grant_row))
    }

    async fn revoke(&self, id: &str, by: &str) -> Result<bool, StoreError> {
        let guard = self.client().await?;
        let n = conn(&guard)
            .execute(
                "UPDATE portcullis_grants SET revoked_us = $2, revoked_by = $3 \
                 WHERE id = $1 AND revoked_us IS NULL AND expires_us > $2",
                &[&id, &now_us(), &by],
            )
            .await?;
        Ok(n == 1)
    }

    async fn use_grant(
        &self,
        subject: &str,
        target: &str,
        fingerprint: Option<&str>,
        rule: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let guard = self.client().await?;
        let row = conn(&guard)
            .query_opt(
                "UPDATE portcullis_grants SET uses = uses + 1 WHERE id = ( \
                     SELECT id FROM portcullis_grants WHERE subject = $1 AND target = $2 \
                     AND revoked_us IS NULL AND expires_us > $3 \
                     AND ((fingerprint IS NOT NULL AND fingerprint = $4) \
                       OR (rule IS NOT NULL AND rule = $5)) \
                     ORDER BY expires_us DESC LIMIT 1) \
                 RETURNING id",
                &[&subject, &target, &now_us(), &fingerprint, &rule],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
