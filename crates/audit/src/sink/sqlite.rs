//! The embedded default: one SQLite file in WAL mode.
//!
//! Table `audit_records` holds the chain (row id = storage order), `audit_checkpoints` a copy of
//! every checkpoint record. rusqlite is blocking, so every call runs on tokio's blocking pool;
//! the connection's mutex is only ever taken there, never across an `.await`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::{Damage, OpenMode, ScanCursor, ScanPage, SearchFilter, Sink};
use crate::config::Durability;
use crate::error::SinkError;
use crate::record::{micros_since_epoch, ChainHash, RecordKind, StoredRecord};

// Every index is paid for on each statement's two records, so the only one is the (node, seq)
// key that tail, catch-up and verify read by. Searches walk the table backwards by row id (newest
// first, stopping at their limit): no index on time, subject or target would serve that plan, and
// each cost about a third of an insert.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_records (
    id        INTEGER PRIMARY KEY,
    version   INTEGER NOT NULL,
    node      TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL,
    time_us   INTEGER NOT NULL,
    subject   TEXT,
    target    TEXT,
    event     TEXT    NOT NULL,
    verdict   TEXT,
    payload   BLOB    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_records_node_seq ON audit_records (node, seq);
DROP INDEX IF EXISTS audit_records_time;
DROP INDEX IF EXISTS audit_records_subject;
DROP INDEX IF EXISTS audit_records_target;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id        INTEGER PRIMARY KEY,
    version   INTEGER NOT NULL,
    node      TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL,
    time_us   INTEGER NOT NULL,
    subject   TEXT,
    target    TEXT,
    event     TEXT    NOT NULL,
    verdict   TEXT,
    payload   BLOB    NOT NULL,
    UNIQUE (node, seq)
);
";

const COLUMNS: &str = "id, version, node, seq, kind, prev_hash, hash, time_us, subject, target, event, verdict, payload";

/// A SQLite audit sink.
pub struct SqliteSink {
    name: String,
    /// The write-ahead log, which written durability fsyncs in the background.
    wal: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteSink {
    /// Opens (for writing: creates) the database at `path`. Writing uses WAL with
    /// `synchronous=FULL` for sync durability and `NORMAL` for written and batched: a commit
    /// is then written to the WAL file (safe from a crash of the gateway) without an fsync, which
    /// [`Sink::sync`] adds.
    pub async fn open(path: &Path, mode: OpenMode) -> Result<Self, SinkError> {
        let name = format!("sqlite {}", path.display());
        let path: PathBuf = path.to_path_buf();
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let n = name.clone();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&path, mode))
            .await
            .map_err(|e| SinkError::new(&n, format!("open task failed: {e}")))?
            .map_err(|e| SinkError::new(&n, e))?;
        Ok(Self {
            name,
            wal: PathBuf::from(wal),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SinkError> {
        self.with_lock(move |conn| f(conn).map_err(|e| e.to_string()))
            .await
    }

    /// Runs `f` with the connection locked: on the writer's thread directly, elsewhere on the
    /// blocking pool.
    async fn with_lock<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, String> + Send + 'static,
    ) -> Result<T, SinkError> {
        let conn = Arc::clone(&self.conn);
        let name = self.name.clone();
        let call = move || {
            let mut guard = conn
                .lock()
                .map_err(|_| SinkError::new(&name, "connection lock poisoned"))?;
            f(&mut guard).map_err(|e| SinkError::new(&name, e))
        };
        if crate::writer::on_writer_thread() {
            return call();
        }
        tokio::task::spawn_blocking(call)
            .await
            .map_err(|e| SinkError::new(&self.name, format!("task failed: {e}")))?
    }
}

fn open_blocking(path: &Path, mode: OpenMode) -> Result<Connection, String> {
    let conn = match mode {
        OpenMode::Write(_) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            Connection::open(path)
        }
        OpenMode::Read => Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        ),
    }
    .map_err(|e| format!("cannot open: {e}"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    if let OpenMode::Write(durability) = mode {
        let sync = match durability {
            Durability::Sync => "FULL",
            Durability::Written | Durability::Batched => "NORMAL",
        };
        // 16 KiB pages for a new index file (an existing file keeps its page size): a batch of
        // records dirties a quarter of the pages it would at the default 4 KiB, so a quarter of
        // the WAL frames and writes. Set before WAL mode, which fixes the page size.
        conn.execute_batch(&format!(
            "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"
        ))
        .map_err(|e| format!("cannot set WAL mode: {e}"))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| format!("cannot create tables: {e}"))?;
    }
    Ok(conn)
}

fn seq_i64(seq: u64) -> rusqlite::Result<i64> {
    i64::try_from(seq).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// The tables a record is inserted into: every record into `audit_records`, checkpoints also into
/// `audit_checkpoints`. Constant statements, so the per-record insert builds no SQL text.
#[derive(Clone, Copy)]
enum Table {
    Records,
    Checkpoints,
}

impl Table {
    fn insert_sql(self) -> &'static str {
        macro_rules! insert_into {
            ($table:literal) => {
                concat!(
                    "INSERT INTO ",
                    $table,
                    " (version, node, seq, kind, prev_hash, hash, time_us, subject, target, event, verdict, payload) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                )
            };
        }
        match self {
            Table::Records => insert_into!("audit_records"),
            Table::Checkpoints => insert_into!("audit_checkpoints"),
        }
    }
}

fn insert(stmt: &mut rusqlite::CachedStatement<'_>, r: &StoredRecord) -> rusqlite::Result<()> {
    let (mut prev, mut hash) = ([0u8; 64], [0u8; 64]);
    stmt.execute(params![
        r.version,
        r.node,
        seq_i64(r.seq)?,
        r.kind.as_str(),
        r.prev_hash.hex_into(&mut prev),
        r.hash.hex_into(&mut hash),
        r.time_us,
        r.subject,
        r.target,
        r.event,
        r.verdict,
        r.payload,
    ])?;
    Ok(())
}

/// Inserts `records` in one transaction.
fn insert_batch(conn: &mut Connection, records: &[Arc<StoredRecord>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        // One single-row INSERT per record. Measured against 32-row INSERTs on the same run
        // (pgbench through the gateway): those saved a little CPU per record but doubled the
        // index's writes (167k pwrites against 82k).
        let mut one = tx.prepare_cached(Table::Records.insert_sql())?;
        for r in records {
            insert(&mut one, r)?;
        }
        for r in records.iter().filter(|r| r.kind == RecordKind::Checkpoint) {
            insert(&mut tx.prepare_cached(Table::Checkpoints.insert_sql())?, r)?;
        }
    }
    tx.commit()
}

/// Reads one row; a row whose columns cannot be a record is reported, not skipped.
fn read_row(row: &Row<'_>) -> rusqlite::Result<(i64, Result<StoredRecord, Damage>)> {
    let id: i64 = row.get(0)?;
    let node: Option<String> = row.get(2).ok();
    let seq: Option<u64> = row
        .get::<_, i64>(3)
        .ok()
        .and_then(|s| u64::try_from(s).ok());
    let parsed = (|| -> Result<StoredRecord, String> {
        let text = |i: usize| {
            row.get::<_, String>(i)
                .map_err(|e| format!("column {i}: {e}"))
        };
        let opt_text = |i: usize| {
            row.get::<_, Option<String>>(i)
                .map_err(|e| format!("column {i}: {e}"))
        };
        let version: u32 = row.get(1).map_err(|e| format!("version: {e}"))?;
        let kind_s = text(4)?;
        let kind = RecordKind::parse(&kind_s).ok_or_else(|| format!("unknown kind `{kind_s}`"))?;
        let prev_hash = ChainHash::from_hex(&text(5)?).ok_or("prev_hash is not 64 hex digits")?;
        let hash = ChainHash::from_hex(&text(6)?).ok_or("hash is not 64 hex digits")?;
        Ok(StoredRecord {
            version,
            node: text(2)?,
            seq: seq.ok_or("seq is not a non-negative integer")?,
            kind,
            prev_hash,
            hash,
            time_us: row.get(7).map_err(|e| format!("time_us: {e}"))?,
            subject: opt_text(8)?,
            target: opt_text(9)?,
            event: text(10)?,
            verdict: opt_text(11)?,
            payload: row
                .get::<_, Vec<u8>>(12)
                .map_err(|e| format!("payload: {e}"))?,
        })
    })();
    Ok((id, parsed.map_err(|problem| (node, seq, problem))))
}

fn collect_records(rows: &mut rusqlite::Rows<'_>) -> rusqlite::Result<Vec<StoredRecord>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        if let (_, Ok(r)) = read_row(row)? {
            out.push(r);
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Sink for SqliteSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write_batch(&self, records: &[Arc<StoredRecord>]) -> Result<(), SinkError> {
        if crate::writer::on_writer_thread() {
            // The records as they are: copying the list for another thread would touch every
            // record's reference count, a cache line the sessions' cores wrote last (measured:
            // 4% of the index thread's time).
            let mut conn = self
                .conn
                .lock()
                .map_err(|_| SinkError::new(&self.name, "connection lock poisoned"))?;
            return insert_batch(&mut conn, records)
                .map_err(|e| SinkError::new(&self.name, e.to_string()));
        }
        let records = records.to_vec();
        self.with_conn(move |conn| insert_batch(conn, &records))
            .await
    }

    async fn sync(&self) -> Result<(), SinkError> {
        // Holding the connection's lock keeps a commit from landing half-way; any descriptor's
        // fsync makes the file's written pages durable. No WAL yet: nothing was committed.
        let wal = self.wal.clone();
        self.with_lock(move |_conn| match std::fs::File::open(&wal) {
            Ok(f) => f
                .sync_data()
                .map_err(|e| format!("cannot sync {}: {e}", wal.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot open {}: {e}", wal.display())),
        })
        .await
    }

    async fn last_seq_of_event(&self, node: &str, event: &str) -> Result<Option<u64>, SinkError> {
        let (node, event) = (node.to_owned(), event.to_owned());
        self.with_conn(move |conn| {
            // Newest first by row id, the table's storage order: a recent match stops the scan.
            let mut stmt = conn.prepare_cached(
                "SELECT seq FROM audit_records WHERE node = ?1 AND event = ?2 ORDER BY id DESC LIMIT 1",
            )?;
            let seq: Option<i64> = stmt.query_row(params![node, event], |r| r.get(0)).optional()?;
            Ok(seq.and_then(|s| u64::try_from(s).ok()))
        })
        .await
    }

    fn indexed(&self) -> bool {
        true
    }

    async fn tail(&self, node: &str) -> Result<Option<StoredRecord>, SinkError> {
        let node = node.to_owned();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_records WHERE node = ?1 ORDER BY seq DESC LIMIT 1"
            ))?;
            let row = stmt.query_row(params![node], read_row).optional()?;
            match row {
                None => Ok(None),
                Some((_, Ok(r))) => Ok(Some(r)),
                Some((id, Err((_, _, problem)))) => Err(rusqlite::Error::InvalidColumnType(
                    0,
                    format!("last record (row id {id}) is damaged: {problem}"),
                    rusqlite::types::Type::Null,
                )),
            }
        })
        .await
    }

    async fn scan(&self, cursor: ScanCursor, limit: usize) -> Result<ScanPage, SinkError> {
        let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_records WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let after = i64::try_from(cursor.position).unwrap_or(i64::MAX);
            let mut rows = stmt.query(params![after, limit_i])?;
            let mut page = ScanPage::default();
            let mut last = None;
            while let Some(row) = rows.next()? {
                let (id, parsed) = read_row(row)?;
                last = Some(id);
                page.push_row(format!("audit_records row id {id}"), parsed);
            }
            page.set_next_row(limit, last);
            Ok(page)
        })
        .await
    }

    async fn checkpoint_copies(&self) -> Result<Vec<(String, StoredRecord)>, SinkError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit_checkpoints ORDER BY id"
            ))?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                if let (id, Ok(r)) = read_row(row)? {
                    out.push((format!("audit_checkpoints row id {id}"), r));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn read_range(
        &self,
        node: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SinkError> {
        let node = node.to_owned();
        let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_records WHERE node = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let mut rows = stmt.query(params![node, seq_i64(from_seq)?, limit_i])?;
            collect_records(&mut rows)
        })
        .await
    }

    async fn search(
        &self,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SinkError> {
        let f = filter.clone();
        let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| {
            let since = f.since.map(micros_since_epoch);
            let until = f.until.map(micros_since_epoch);
            let text = f.text.map(String::into_bytes);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_records WHERE \
                 (?1 IS NULL OR node = ?1) AND (?2 IS NULL OR subject = ?2) AND (?3 IS NULL OR target = ?3) \
                 AND (?4 IS NULL OR time_us >= ?4) AND (?5 IS NULL OR time_us < ?5) \
                 AND (?6 IS NULL OR event = ?6) AND (?7 IS NULL OR verdict = ?7) \
                 AND (?8 IS NULL OR instr(payload, ?8) > 0) \
                 ORDER BY id DESC LIMIT ?9"
            ))?;
            let mut rows = stmt.query(params![f.node, f.subject, f.target, since, until, f.event, f.verdict, text, limit_i])?;
            let mut out = collect_records(&mut rows)?;
            out.reverse();
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_index_file_uses_16_kib_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        let new = dir.path().join("new.db");
        let conn = open_blocking(&new, OpenMode::Write(Durability::Written)).unwrap();
        assert_eq!(page_size(&conn), 16384);

        let old = dir.path().join("old.db");
        let made = Connection::open(&old).unwrap();
        made.execute_batch(
            "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t (x)",
        )
        .unwrap();
        drop(made);
        let conn = open_blocking(&old, OpenMode::Write(Durability::Written)).unwrap();
        assert_eq!(page_size(&conn), 4096);
    }
}
