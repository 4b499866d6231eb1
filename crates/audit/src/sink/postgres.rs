//! A PostgreSQL table shared by several gateway nodes (each with its own chain).
//!
//! The table (default `audit_records`) and its companion `<table>_checkpoints` are created when
//! missing. A batch is one multi-row `INSERT` per table in one transaction. A unique index on
//! `(node, seq)` makes a second writer of the same node fail instead of forking the chain.
//! The connection is plain TCP, a Unix socket, or TLS as `sslmode` in the connection string says
//! ([`super::pg_tls`]: `disable`, `require`, `verify-full`; never a silent fallback to plain
//! text); it is re-established on the next call after any error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pg_tls::{error_chain, host_name, PgConnectSettings, SslMode};
use super::{Damage, OpenMode, ScanCursor, ScanPage, SearchFilter, Sink};
use crate::error::SinkError;
use crate::record::{micros_since_epoch, ChainHash, RecordKind, StoredRecord};

const COLUMNS: &str = "id, version, node, seq, kind, prev_hash, hash, time_us, subject, target, event, verdict, payload";
const INSERT_COLUMNS: &str =
    "version, node, seq, kind, prev_hash, hash, time_us, subject, target, event, verdict, payload";
/// Rows per INSERT statement (12 parameters each, well under PostgreSQL's 65535).
const ROWS_PER_INSERT: usize = 1000;

/// A PostgreSQL audit sink.
pub struct PostgresSink {
    name: String,
    settings: PgConnectSettings,
    /// The TLS connector; `None` with `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
    table: String,
    checkpoints: String,
    table_plain: String,
    client: Mutex<Option<Client>>,
}

/// Checks a table name (`name` or `schema.name`, letters, digits and `_`) and returns it quoted.
pub fn quote_table(table: &str) -> Result<String, String> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2
        || parts.iter().any(|p| {
            p.is_empty()
                || p.len() > 50
                || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || p.starts_with(|c: char| c.is_ascii_digit())
        })
    {
        return Err(format!(
            "`{table}` is not a table name: use letters, digits and `_`, optionally `schema.table`"
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

impl PostgresSink {
    /// Connects; for writing, creates the tables if missing. `url` is a connection string
    /// (`postgresql://...` or `host=... dbname=...`) whose `sslmode` says how to connect;
    /// `ca_file` (PEM) is the CA that `sslmode=verify-full` trusts instead of the bundled
    /// Mozilla roots.
    pub async fn open(
        url: &str,
        table: &str,
        ca_file: Option<&Path>,
        mode: OpenMode,
    ) -> Result<Self, SinkError> {
        let mut settings =
            PgConnectSettings::parse(url, ca_file).map_err(|e| SinkError::new("postgres", e))?;
        if settings.config.get_connect_timeout().is_none() {
            settings.config.connect_timeout(Duration::from_secs(5));
        }
        let name = format!(
            "postgres {}/{} table {table}",
            settings
                .config
                .get_hosts()
                .first()
                .map(host_name)
                .unwrap_or_default(),
            settings.config.get_dbname().unwrap_or_default()
        );
        let tls = settings.tls().map_err(|e| SinkError::new(&name, e))?;
        match settings.ssl_mode {
            SslMode::Require => tracing::warn!(
                sink = %name,
                "audit sink uses sslmode=require: the connection is encrypted but the server's certificate is not \
                 checked; use sslmode=verify-full (with `ca_file` for a private CA)"
            ),
            SslMode::Disable
                if matches!(mode, OpenMode::Write(_)) && !local_only(&settings.config) =>
            {
                tracing::warn!(
                    sink = %name,
                    "audit sink connects without TLS to a host that is not loopback: records and the password \
                     cross the network in plain text; add sslmode=verify-full to the connection string"
                )
            }
            _ => {}
        }
        let quoted = quote_table(table).map_err(|e| SinkError::new(&name, e))?;
        let checkpoints =
            quote_table(&format!("{table}_checkpoints")).map_err(|e| SinkError::new(&name, e))?;
        let sink = PostgresSink {
            name,
            settings,
            tls,
            table: quoted,
            checkpoints,
            table_plain: table.to_owned(),
            client: Mutex::new(None),
        };
        let client = sink.connect().await?;
        if matches!(mode, OpenMode::Write(_)) {
            sink.create_tables(&client).await?;
        }
        *sink.client.lock().await = Some(client);
        Ok(sink)
    }

    /// How the sink connects: `disable`, `require` or `verify-full`.
    pub fn ssl_mode(&self) -> SslMode {
        self.settings.ssl_mode
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        let name = self.name.clone();
        let log_end = move |e: tokio_postgres::Error| {
            tracing::warn!(sink = %name, error = %error_chain(&e), "audit sink connection ended");
        };
        let config = &self.settings.config;
        let connected = match &self.tls {
            None => config.connect(NoTls).await.map(|(client, connection)| {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        log_end(e);
                    }
                });
                client
            }),
            Some(tls) => config
                .connect(tls.clone())
                .await
                .map(|(client, connection)| {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            log_end(e);
                        }
                    });
                    client
                }),
        };
        connected.map_err(|e| {
            let mut error = self.err(e);
            if self.settings.ssl_mode != SslMode::Disable
                && (error.message.contains("TLS") || error.message.contains("certificate"))
            {
                let hint = self.settings.tls_hint(&error.message);
                error.message = format!("{} ({hint})", error.message);
            }
            error
        })
    }

    async fn create_tables(&self, client: &Client) -> Result<(), SinkError> {
        let index_base = self.table_plain.replace('.', "_");
        let mut sql = String::new();
        for (t, unique) in [(&self.table, true), (&self.checkpoints, false)] {
            sql.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    id        BIGSERIAL PRIMARY KEY,
                    version   INTEGER NOT NULL,
                    node      TEXT    NOT NULL,
                    seq       BIGINT  NOT NULL,
                    kind      TEXT    NOT NULL,
                    prev_hash TEXT    NOT NULL,
                    hash      TEXT    NOT NULL,
                    time_us   BIGINT  NOT NULL,
                    subject   TEXT,
                    target    TEXT,
                    event     TEXT    NOT NULL,
                    verdict   TEXT,
                    payload   BYTEA   NOT NULL,
                    UNIQUE (node, seq));\n"
            ));
            if unique {
                for col in ["time_us", "subject", "target", "verdict", "event"] {
                    let idx = format!("{index_base}_{col}");
                    sql.push_str(&format!(
                        "CREATE INDEX IF NOT EXISTS \"{idx}\" ON {t} ({col});\n"
                    ));
                }
            }
        }
        // Two gateways starting at once may race on CREATE TABLE IF NOT EXISTS; an advisory lock
        // taken inside the transaction serializes them.
        let batch = format!("BEGIN; SELECT pg_advisory_xact_lock(7243110955); {sql} COMMIT;");
        client.batch_execute(&batch).await.map_err(|e| self.err(e))
    }

    fn err(&self, e: tokio_postgres::Error) -> SinkError {
        let msg = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => error_chain(&e),
        };
        SinkError::new(&self.name, msg)
    }

    /// A connected client, connecting first if needed. Only the writer task writes, and verify
    /// and search use their own sink instance, so this lock is uncontended; it is never taken on
    /// a gateway session's path.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, SinkError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = None;
            *guard = Some(self.connect().await?);
        }
        Ok(guard)
    }

    /// Maps an error and drops the connection, so that the next call connects afresh (and the
    /// server aborts any transaction left open).
    fn fail(&self, slot: &mut Option<Client>, e: tokio_postgres::Error) -> SinkError {
        *slot = None;
        self.err(e)
    }
}

/// Whether every host of the connection is a Unix socket or a loopback address.
fn local_only(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    config.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    })
}

fn read_row(row: &Row) -> (i64, Result<StoredRecord, Damage>) {
    let id: i64 = row.try_get(0).unwrap_or(0);
    let node: Option<String> = row.try_get(2).ok();
    let seq: Option<u64> = row
        .try_get::<_, i64>(3)
        .ok()
        .and_then(|s| u64::try_from(s).ok());
    let parsed = (|| -> Result<StoredRecord, String> {
        let version: i32 = row.try_get(1).map_err(|e| e.to_string())?;
        let kind_s: String = row.try_get(4).map_err(|e| e.to_string())?;
        let kind = RecordKind::parse(&kind_s).ok_or_else(|| format!("unknown kind `{kind_s}`"))?;
        let prev: String = row.try_get(5).map_err(|e| e.to_string())?;
        let hash: String = row.try_get(6).map_err(|e| e.to_string())?;
        Ok(StoredRecord {
            version: u32::try_from(version).map_err(|_| "negative version")?,
            node: node.clone().ok_or("node is NULL")?,
            seq: seq.ok_or("seq is not a non-negative integer")?,
            kind,
            prev_hash: ChainHash::from_hex(&prev).ok_or("prev_hash is not 64 hex digits")?,
            hash: ChainHash::from_hex(&hash).ok_or("hash is not 64 hex digits")?,
            time_us: row.try_get(7).map_err(|e| e.to_string())?,
            subject: row.try_get(8).map_err(|e| e.to_string())?,
            target: row.try_get(9).map_err(|e| e.to_string())?,
            event: row.try_get(10).map_err(|e| e.to_string())?,
            verdict: row.try_get(11).map_err(|e| e.to_string())?,
            payload: row.try_get(12).map_err(|e| e.to_string())?,
        })
    })();
    (id, parsed.map_err(|p| (node, seq, p)))
}

struct InsertRow {
    version: i32,
    seq: i64,
    kind: &'static str,
    prev_hash: String,
    hash: String,
}

fn insert_sql(table: &str, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({INSERT_COLUMNS}) VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..12 {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * 12 + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// Runs a query on the connected client; an error drops the connection.
macro_rules! on_client {
    ($self:ident, |$c:ident| $body:expr) => {{
        let mut guard = $self.client().await?;
        let result = match guard.as_mut() {
            Some($c) => $body.await,
            None => return Err(SinkError::new(&$self.name, "not connected")),
        };
        result.map_err(|e| $self.fail(&mut guard, e))
    }};
}

#[async_trait::async_trait]
impl Sink for PostgresSink {
    fn indexed(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn write_batch(&self, records: &[Arc<StoredRecord>]) -> Result<(), SinkError> {
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            rows.push(InsertRow {
                version: i32::try_from(r.version)
                    .map_err(|_| SinkError::new(&self.name, "version out of range"))?,
                seq: i64::try_from(r.seq)
                    .map_err(|_| SinkError::new(&self.name, "seq out of range"))?,
                kind: r.kind.as_str(),
                prev_hash: r.prev_hash.to_hex(),
                hash: r.hash.to_hex(),
            });
        }
        on_client!(self, |client| async {
            let tx = client.transaction().await?;
            for (dest, only_checkpoints) in [(&self.table, false), (&self.checkpoints, true)] {
                let chosen: Vec<usize> = (0..records.len())
                    .filter(|&i| !only_checkpoints || records[i].kind == RecordKind::Checkpoint)
                    .collect();
                for chunk in chosen.chunks(ROWS_PER_INSERT) {
                    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * 12);
                    for &i in chunk {
                        let (r, row) = (&records[i], &rows[i]);
                        params.extend_from_slice(&[
                            &row.version,
                            &r.node,
                            &row.seq,
                            &row.kind,
                            &row.prev_hash,
                            &row.hash,
                            &r.time_us,
                            &r.subject,
                            &r.target,
                            &r.event,
                            &r.verdict,
                            &r.payload,
                        ]);
                    }
                    tx.execute(insert_sql(dest, chunk.len()).as_str(), &params)
                        .await?;
                }
            }
            tx.commit().await
        })
    }

    async fn tail(&self, node: &str) -> Result<Option<StoredRecord>, SinkError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE node = $1 ORDER BY seq DESC LIMIT 1",
            self.table
        );
        let row = on_client!(self, |c| c.query_opt(sql.as_str(), &[&node]))?;
        match row.as_ref().map(read_row) {
            None => Ok(None),
            Some((_, Ok(r))) => Ok(Some(r)),
            Some((id, Err((_, _, p)))) => Err(SinkError::new(
                &self.name,
                format!("last record (id {id}) is damaged: {p}"),
            )),
        }
    }

    async fn scan(&self, cursor: ScanCursor, limit: usize) -> Result<ScanPage, SinkError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
            self.table
        );
        let after = i64::try_from(cursor.position).unwrap_or(i64::MAX);
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = on_client!(self, |c| c.query(sql.as_str(), &[&after, &lim]))?;
        let mut page = ScanPage::default();
        let mut last = None;
        for row in &rows {
            let (id, parsed) = read_row(row);
            last = Some(id);
            page.push_row(format!("{} id {id}", self.table_plain), parsed);
        }
        page.set_next_row(limit, last);
        Ok(page)
    }

    async fn checkpoint_copies(&self) -> Result<Vec<(String, StoredRecord)>, SinkError> {
        let sql = format!("SELECT {COLUMNS} FROM {} ORDER BY id", self.checkpoints);
        let rows = on_client!(self, |c| c.query(sql.as_str(), &[]))?;
        Ok(rows
            .iter()
            .filter_map(|row| match read_row(row) {
                (id, Ok(r)) => Some((format!("{}_checkpoints id {id}", self.table_plain), r)),
                _ => None,
            })
            .collect())
    }

    async fn read_range(
        &self,
        node: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SinkError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE node = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
            self.table
        );
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = on_client!(self, |c| c.query(sql.as_str(), &[&node, &from, &lim]))?;
        Ok(rows.iter().filter_map(|r| read_row(r).1.ok()).collect())
    }

    async fn search(
        &self,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SinkError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE \
             ($1::text IS NULL OR node = $1) AND ($2::text IS NULL OR subject = $2) AND ($3::text IS NULL OR target = $3) \
             AND ($4::bigint IS NULL OR time_us >= $4) AND ($5::bigint IS NULL OR time_us < $5) \
             AND ($6::text IS NULL OR event = $6) AND ($7::text IS NULL OR verdict = $7) \
             AND ($8::bytea IS NULL OR position($8::bytea IN payload) > 0) \
             ORDER BY id DESC LIMIT $9",
            self.table
        );
        let f = filter;
        let since = f.since.map(micros_since_epoch);
        let until = f.until.map(micros_since_epoch);
        let text = f.text.clone().map(String::into_bytes);
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = on_client!(self, |c| c.query(
            sql.as_str(),
            &[&f.node, &f.subject, &f.target, &since, &until, &f.event, &f.verdict, &text, &lim],
        ))?;
        let mut out: Vec<StoredRecord> = rows.iter().filter_map(|r| read_row(r).1.ok()).collect();
        out.reverse();
        Ok(out)
    }
}
