//! Where records are stored: the [`Sink`] trait and its three implementations.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::SinkError;
use crate::record::{micros_since_epoch, StoredRecord};
use crate::signing::NoticePayload;

pub mod jsonl;
pub mod pg_tls;
pub mod postgres;
pub mod sqlite;

pub use jsonl::JsonlSink;
pub use pg_tls::SslMode;
pub use postgres::PostgresSink;
pub use sqlite::SqliteSink;

/// An entry that cannot be read as a record: node and seq where they could still be read, and
/// what is wrong.
pub(crate) type Damage = (Option<String>, Option<u64>, String);

/// A place records are stored. The writer is the only caller of [`write_batch`](Self::write_batch)
/// for a node; verify, tail and search only read.
///
/// Every sink keeps, beside the chain, a copy of each checkpoint record (a separate table or
/// file), so that verify can tell a chain that was cut short after a checkpoint.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Names the sink in messages: `sqlite /var/lib/portcullis/audit.db`.
    fn name(&self) -> &str;

    /// Stores `records` (one node, consecutive seqs, in order) durably as the sink's durability
    /// setting says, all or nothing where the store allows it. After an `Err` some prefix may
    /// have been stored: the writer asks [`tail`](Self::tail) before it tries again. Records come
    /// shared, so a sink that hands them to a blocking thread keeps them without copying.
    async fn write_batch(&self, records: &[Arc<StoredRecord>]) -> Result<(), SinkError>;

    /// The record with the highest seq for `node`, if any: where that node's chain continues.
    async fn tail(&self, node: &str) -> Result<Option<StoredRecord>, SinkError>;

    /// Reads records in storage order from `cursor`, at most `limit` items. Damaged entries are
    /// returned as [`ScanItem::Damaged`], never skipped silently.
    async fn scan(&self, cursor: ScanCursor, limit: usize) -> Result<ScanPage, SinkError>;

    /// The copies of checkpoint records kept beside the chain, with where each was found.
    async fn checkpoint_copies(&self) -> Result<Vec<(String, StoredRecord)>, SinkError>;

    /// Records of `node` with `seq >= from_seq`, in seq order, at most `limit`.
    /// The default scans the whole sink; indexed sinks override it.
    async fn read_range(
        &self,
        node: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SinkError> {
        let mut out = Vec::new();
        let mut cursor = ScanCursor::default();
        loop {
            let page = self.scan(cursor, 1024).await?;
            for item in page.items {
                if let ScanItem::Record { record, .. } = item {
                    if record.node == node && record.seq >= from_seq {
                        out.push(record);
                    }
                }
            }
            match page.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        out.sort_by_key(|r| r.seq);
        out.truncate(limit);
        Ok(out)
    }

    /// The newest `limit` records matching `filter`, oldest first. The default scans the whole
    /// sink; SQLite and PostgreSQL answer from their indexes.
    async fn search(
        &self,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SinkError> {
        let mut out = VecDeque::new();
        let mut cursor = ScanCursor::default();
        loop {
            let page = self.scan(cursor, 1024).await?;
            for item in page.items {
                if let ScanItem::Record { record, .. } = item {
                    if filter.matches(&record) {
                        if out.len() == limit {
                            out.pop_front();
                        }
                        if limit > 0 {
                            out.push_back(record);
                        }
                    }
                }
            }
            match page.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok(out.into())
    }

    /// Makes everything [`write_batch`](Self::write_batch) has stored durable on disk. Written
    /// durability writes without syncing and calls this in the background, at most
    /// `batch_max_delay` after a write; sinks that sync every write (sync durability, PostgreSQL)
    /// have nothing to do.
    async fn sync(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// The highest seq of `node` whose record's event (or notice) is `event`, if any. The default
    /// scans the whole sink; the segment log reads its files newest first.
    async fn last_seq_of_event(&self, node: &str, event: &str) -> Result<Option<u64>, SinkError> {
        let mut found = None;
        let mut cursor = ScanCursor::default();
        loop {
            let page = self.scan(cursor, 1024).await?;
            for item in page.items {
                if let ScanItem::Record { record, .. } = item {
                    if record.node == node && record.event == event {
                        found = found.max(Some(record.seq));
                    }
                }
            }
            match page.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok(found)
    }

    /// Appends `records` on the caller's thread, without a hand-off to the writer, where the sink
    /// can (a file: one `write`); `None` where it cannot. Written durability uses it so that a
    /// statement's record costs a system call on the session's own thread, not two thread
    /// wake-ups. Same contract as [`write_batch`](Self::write_batch) otherwise.
    fn append_blocking(&self, _records: &[Arc<StoredRecord>]) -> Option<Result<(), SinkError>> {
        None
    }

    /// [`tail`](Self::tail) on the caller's thread, for sinks that offer
    /// [`append_blocking`](Self::append_blocking).
    fn tail_blocking(&self, _node: &str) -> Option<Result<Option<StoredRecord>, SinkError>> {
        None
    }

    /// Whether tail and search can answer from an index (SQLite, PostgreSQL) rather than a scan.
    fn indexed(&self) -> bool {
        false
    }

    /// Repairs the sink made when it was opened for writing (a torn final line truncated), for
    /// the writer to record as notices. Each call hands them over once.
    fn take_repairs(&self) -> Vec<NoticePayload> {
        Vec::new()
    }
}

/// A position in a sink's storage order. `Default` is the beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCursor {
    /// File number (JSONL) or 0.
    pub segment: u64,
    /// Byte offset (JSONL) or the last row id read (SQL sinks).
    pub position: u64,
    /// Line number within the segment (JSONL), for messages.
    pub line: u64,
}

/// One page of [`Sink::scan`].
#[derive(Debug, Default)]
pub struct ScanPage {
    /// Entries in storage order.
    pub items: Vec<ScanItem>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<ScanCursor>,
}

impl ScanPage {
    /// Adds one row of a table-backed sink (SQLite, PostgreSQL): its record, or why it could not
    /// be read.
    pub(crate) fn push_row(&mut self, location: String, parsed: Result<StoredRecord, Damage>) {
        self.items.push(match parsed {
            Ok(record) => ScanItem::Record { location, record },
            Err((node, seq, problem)) => ScanItem::Damaged {
                location,
                node,
                seq,
                problem,
                torn_final: false,
            },
        });
    }

    /// After a table-backed page of `limit` rows whose last row id was `last`, points the cursor
    /// past it; a shorter page is the end.
    pub(crate) fn set_next_row(&mut self, limit: usize, last: Option<i64>) {
        if self.items.len() == limit {
            self.next = last.map(|id| ScanCursor {
                segment: 0,
                position: u64::try_from(id).unwrap_or(0),
                line: 0,
            });
        }
    }
}

/// One stored entry.
#[derive(Debug)]
pub enum ScanItem {
    /// A readable record.
    Record {
        /// Where it is stored (`row id 42`, `audit-000002.jsonl line 17`).
        location: String,
        /// The record.
        record: StoredRecord,
    },
    /// An entry that cannot be read as a record.
    Damaged {
        /// Where it is stored.
        location: String,
        /// Node and seq, when they could still be read.
        node: Option<String>,
        /// See `node`.
        seq: Option<u64>,
        /// Why it cannot be read.
        problem: String,
        /// The last entry of a JSONL sink is cut off (a write interrupted by a crash).
        torn_final: bool,
    },
}

/// Which records [`Sink::search`] returns. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    /// Only this gateway node.
    pub node: Option<String>,
    /// Exact subject.
    pub subject: Option<String>,
    /// Exact target name.
    pub target: Option<String>,
    /// At or after this time.
    pub since: Option<SystemTime>,
    /// Before this time.
    pub until: Option<SystemTime>,
    /// Exact event name (`statement_started`, `statement_denied`, `login_failed`, ...).
    pub event: Option<String>,
    /// Exact verdict (`allow`, `deny`, `needs_approval`).
    pub verdict: Option<String>,
    /// Substring of the payload JSON (case-sensitive; JSON escaping applies to quotes and
    /// backslashes in the text).
    pub text: Option<String>,
}

impl SearchFilter {
    /// Whether `r` matches; the reference semantics SQL sinks reproduce.
    pub fn matches(&self, r: &StoredRecord) -> bool {
        fn eq(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        eq(&self.node, Some(&r.node))
            && eq(&self.subject, r.subject.as_deref())
            && eq(&self.target, r.target.as_deref())
            && eq(&self.event, Some(&r.event))
            && eq(&self.verdict, r.verdict.as_deref())
            && self
                .since
                .is_none_or(|t| r.time_us >= micros_since_epoch(t))
            && self.until.is_none_or(|t| r.time_us < micros_since_epoch(t))
            && self
                .text
                .as_deref()
                .is_none_or(|t| contains(&r.payload, t.as_bytes()))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// How a sink is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// For the writer: create what is missing, repair a torn tail, sync as `durability` says.
    Write(crate::config::Durability),
    /// For verify, tail and search: create nothing, change nothing.
    Read,
}

/// Opens the sink `config` describes.
pub async fn open_sink(
    config: &crate::config::SinkConfig,
    mode: OpenMode,
) -> Result<Box<dyn Sink>, SinkError> {
    use crate::config::SinkConfig;
    Ok(match config {
        SinkConfig::Sqlite { path } => Box::new(SqliteSink::open(path, mode).await?),
        SinkConfig::Jsonl {
            dir,
            max_file_bytes,
        } => Box::new(JsonlSink::open(dir, *max_file_bytes, mode).await?),
        SinkConfig::Postgres {
            url,
            table,
            ca_file,
        } => Box::new(PostgresSink::open(url, table, ca_file.as_deref(), mode).await?),
    })
}
