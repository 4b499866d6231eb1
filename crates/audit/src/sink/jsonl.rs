//! JSON lines in numbered files: `audit-000001.jsonl`, `audit-000002.jsonl`, ... in one
//! directory per gateway node, plus `checkpoints.jsonl` with a copy of every checkpoint record.
//!
//! Each line is one record: the stored columns, then `"payload"` with the payload's exact bytes
//! embedded as JSON (read back verbatim). A file is rotated before a record would make it larger
//! than `max_file_bytes`; a full file is fsynced before the next one starts, and the directory
//! once it has. In sync durability every batch is fsynced; in written durability a batch is one
//! `write` and [`Sink::sync`] fsyncs in the background. A crash can leave the last line cut off:
//! verify reports it as a torn final record, and the writer truncates it when it opens the
//! directory again and says so in a notice.
//!
//! This is the default primary sink (the segment log): appending a batch is one system call, no
//! transaction and no index, which is what lets written durability put every record in the
//! operating system's hands before its statement runs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Damage, OpenMode, ScanCursor, ScanItem, ScanPage, Sink};
use crate::config::Durability;
use crate::error::SinkError;
use crate::record::{now_for_payload, ChainHash, RecordKind, StoredRecord};
use crate::signing::NoticePayload;

const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";

/// A JSONL audit sink.
pub struct JsonlSink {
    name: String,
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    max_file_bytes: u64,
    durability: Option<Durability>,
    /// The file being appended to, once the directory has been (re)opened for writing.
    current: Option<Current>,
    /// Checkpoint copies were appended since the last [`Sink::sync`].
    checkpoints_unsynced: bool,
    /// Where the last [`Sink::read_range`] that stopped at its limit left off: the node, the seq
    /// the next chunk starts at, and the page holding it. Records are only ever appended after a
    /// complete line, so the position stays valid.
    range_resume: Option<(String, u64, ScanCursor)>,
    repairs: Vec<NoticePayload>,
    /// The buffer a write's lines are encoded into, kept from one write to the next.
    lines: Vec<u8>,
}

struct Current {
    number: u64,
    file: File,
    len: u64,
}

#[derive(Serialize)]
struct LineHead<'a> {
    version: u32,
    node: &'a str,
    seq: u64,
    kind: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
    time_us: i64,
    subject: Option<&'a str>,
    target: Option<&'a str>,
    event: &'a str,
    verdict: Option<&'a str>,
}

#[derive(Deserialize)]
struct Line<'a> {
    version: u32,
    node: String,
    seq: u64,
    kind: String,
    prev_hash: String,
    hash: String,
    time_us: i64,
    subject: Option<String>,
    target: Option<String>,
    event: String,
    verdict: Option<String>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// One record as a JSONL line, ending in `\n` (what the sink appends; also for export tools).
pub fn encode_line(r: &StoredRecord) -> Result<Vec<u8>, String> {
    let mut line = Vec::with_capacity(r.payload.len() + 320);
    encode_line_into(r, &mut line)?;
    Ok(line)
}

/// [`encode_line`], appended to `out` (which is left as it was on error).
fn encode_line_into(r: &StoredRecord, out: &mut Vec<u8>) -> Result<(), String> {
    // The payload is embedded verbatim, so it must be one line holding one JSON object. A full
    // parse here cost a JSON pass per record on the statement's path; the shape check below is
    // enough for what this sink is given: payloads the writer serialized, or the exact bytes
    // another sink stored under the same hash. Should such bytes not be JSON after all, the line
    // reads back as damaged and verify names it: nothing passes unnoticed.
    let p = &r.payload;
    if p.first() != Some(&b'{') || p.last() != Some(&b'}') || p.contains(&b'\n') {
        return Err(format!("record {} payload is not single-line JSON", r.seq));
    }
    let (mut prev, mut hash) = ([0u8; 64], [0u8; 64]);
    let head = LineHead {
        version: r.version,
        node: &r.node,
        seq: r.seq,
        kind: r.kind.as_str(),
        prev_hash: r.prev_hash.hex_into(&mut prev),
        hash: r.hash.hex_into(&mut hash),
        time_us: r.time_us,
        subject: r.subject.as_deref(),
        target: r.target.as_deref(),
        event: &r.event,
        verdict: r.verdict.as_deref(),
    };
    crate::json::to_vec_into(out, &head).map_err(|e| e.to_string())?;
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(p);
    out.extend_from_slice(b"}\n");
    Ok(())
}

fn decode_line(bytes: &[u8]) -> Result<StoredRecord, Damage> {
    let line: Line<'_> =
        serde_json::from_slice(bytes).map_err(|e| (None, None, format!("not a record: {e}")))?;
    let bad = |m: &str| (Some(line.node.clone()), Some(line.seq), m.to_owned());
    let kind = RecordKind::parse(&line.kind).ok_or_else(|| bad("unknown kind"))?;
    let prev_hash = ChainHash::from_hex(&line.prev_hash)
        .ok_or_else(|| bad("prev_hash is not 64 hex digits"))?;
    let hash = ChainHash::from_hex(&line.hash).ok_or_else(|| bad("hash is not 64 hex digits"))?;
    Ok(StoredRecord {
        version: line.version,
        node: line.node,
        seq: line.seq,
        kind,
        prev_hash,
        hash,
        time_us: line.time_us,
        subject: line.subject,
        target: line.target,
        event: line.event,
        verdict: line.verdict,
        payload: line.payload.get().as_bytes().to_vec(),
    })
}

fn file_name(number: u64) -> String {
    format!("audit-{number:06}.jsonl")
}

/// The numbered files in `dir`, in order.
fn list_files(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("audit-")
            .and_then(|s| s.strip_suffix(".jsonl"))
        {
            if let Ok(n) = n.parse::<u64>() {
                numbers.push(n);
            }
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// The last complete line of a file (without its `\n`), and the length up to and including that
/// line's `\n` (bytes after it are a torn line). Reads backwards in chunks.
fn last_complete_line(file: &mut File) -> std::io::Result<(Option<Vec<u8>>, u64)> {
    const CHUNK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    let mut end: Option<u64> = None; // offset of the last '\n'
    while pos > 0 {
        let take = CHUNK.min(pos);
        pos -= take;
        let mut chunk = vec![0u8; usize::try_from(take).unwrap_or(0)];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        if end.is_none() {
            end = buf
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| pos + i as u64);
        }
        if let Some(e) = end {
            let e_rel = usize::try_from(e - pos).unwrap_or(0);
            if let Some(start) = buf[..e_rel].iter().rposition(|&b| b == b'\n') {
                return Ok((Some(buf[start + 1..e_rel].to_vec()), e + 1));
            }
        }
    }
    match end {
        Some(e) => {
            let e = usize::try_from(e).unwrap_or(0);
            Ok((Some(buf[..e].to_vec()), e as u64 + 1))
        }
        None => Ok((None, 0)),
    }
}

/// The newest file that begins at or before `seq` (seqs grow from file to file), so that a range
/// is read from there instead of from the start of the trail.
fn range_start(dir: &Path, seq: u64) -> Result<u64, String> {
    let files = list_files(dir).map_err(|e| format!("cannot list directory: {e}"))?;
    for &number in files.iter().rev() {
        if first_seq(dir, number)?.is_some_and(|s| s <= seq) {
            return Ok(number);
        }
    }
    Ok(files.first().copied().unwrap_or(1))
}

/// The seq of a file's first record, if its first line can be read as one.
fn first_seq(dir: &Path, number: u64) -> Result<Option<u64>, String> {
    let path = dir.join(file_name(number));
    let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut line = Vec::new();
    BufReader::new(file)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if line.pop() != Some(b'\n') {
        return Ok(None);
    }
    Ok(decode_line(&line).ok().map(|r| r.seq))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl JsonlSink {
    /// Opens the directory. For writing it is created if missing and a torn final line in the
    /// newest file is truncated (reported through [`Sink::take_repairs`]).
    pub async fn open(dir: &Path, max_file_bytes: u64, mode: OpenMode) -> Result<Self, SinkError> {
        let name = format!("jsonl {}", dir.display());
        let durability = match mode {
            OpenMode::Write(d) => Some(d),
            OpenMode::Read => None,
        };
        let sink = JsonlSink {
            name: name.clone(),
            dir: dir.to_path_buf(),
            inner: Arc::new(Mutex::new(Inner {
                max_file_bytes,
                durability,
                current: None,
                checkpoints_unsynced: false,
                range_resume: None,
                repairs: Vec::new(),
                lines: Vec::new(),
            })),
        };
        match mode {
            OpenMode::Write(_) => {
                let d = dir.to_path_buf();
                let inner = Arc::clone(&sink.inner);
                let n = name.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&d)
                        .map_err(|e| SinkError::new(&n, format!("cannot create directory: {e}")))?;
                    let mut g = inner
                        .lock()
                        .map_err(|_| SinkError::new(&n, "lock poisoned"))?;
                    open_current(&d, &mut g).map_err(|e| SinkError::new(&n, e))
                })
                .await
                .map_err(|e| SinkError::new(&name, format!("task failed: {e}")))??;
            }
            OpenMode::Read => {
                if !dir.is_dir() {
                    return Err(SinkError::new(name, "no such directory"));
                }
            }
        }
        Ok(sink)
    }

    /// Runs `f` with the sink locked, on the caller's thread.
    fn locked<T>(
        &self,
        f: impl FnOnce(&Path, &mut Inner) -> Result<T, String>,
    ) -> Result<T, SinkError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| SinkError::new(&self.name, "lock poisoned"))?;
        f(&self.dir, &mut g).map_err(|e| SinkError::new(&self.name, e))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path, &mut Inner) -> Result<T, String> + Send + 'static,
    ) -> Result<T, SinkError> {
        let dir = self.dir.clone();
        let inner = Arc::clone(&self.inner);
        let name = self.name.clone();
        let call = move || {
            let mut g = inner
                .lock()
                .map_err(|_| SinkError::new(&name, "lock poisoned"))?;
            f(&dir, &mut g).map_err(|e| SinkError::new(&name, e))
        };
        if crate::writer::on_writer_thread() {
            return call();
        }
        tokio::task::spawn_blocking(call)
            .await
            .map_err(|e| SinkError::new(&self.name, format!("task failed: {e}")))?
    }
}

/// The last record of the directory, for `node`.
fn tail_blocking(
    dir: &Path,
    inner: &mut Inner,
    node: &str,
) -> Result<Option<StoredRecord>, String> {
    if inner.durability.is_some() && inner.current.is_none() {
        // After a failed write: repair before answering, so the answer is what the next write
        // continues from.
        open_current(dir, inner)?;
    }
    let files = list_files(dir).map_err(|e| format!("cannot list directory: {e}"))?;
    for &number in files.iter().rev() {
        let path = dir.join(file_name(number));
        let mut file =
            File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let (line, _) = last_complete_line(&mut file)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if let Some(line) = line {
            let r = decode_line(&line).map_err(|(_, _, p)| {
                format!("last record of {} is damaged: {p}", file_name(number))
            })?;
            if r.node != node {
                return Err(format!(
                    "the directory holds the chain of node `{}`, not `{node}`: use one directory per node",
                    r.node
                ));
            }
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Finds the newest file, truncates a torn final line, and opens it for appending.
fn open_current(dir: &Path, inner: &mut Inner) -> Result<(), String> {
    let files = list_files(dir).map_err(|e| format!("cannot list directory: {e}"))?;
    let number = files.last().copied().unwrap_or(1);
    let path = dir.join(file_name(number));
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let (_, good_len) = last_complete_line(&mut file)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if good_len < len {
        file.set_len(good_len)
            .map_err(|e| format!("cannot truncate torn line in {}: {e}", path.display()))?;
        file.sync_all().map_err(|e| e.to_string())?;
        let mut details = serde_json::Map::new();
        details.insert("file".into(), file_name(number).into());
        details.insert("offset".into(), good_len.into());
        details.insert("bytes".into(), (len - good_len).into());
        inner.repairs.push(NoticePayload {
            notice: "torn_record_truncated".into(),
            time: now_for_payload(),
            message: format!(
                "{}: removed a torn final line of {} bytes at offset {good_len}, left by an interrupted write",
                file_name(number),
                len - good_len
            ),
            details,
        });
        tracing::warn!(file = %path.display(), bytes = len - good_len, "audit: truncated a torn final JSONL line");
    }
    if files.is_empty() {
        sync_dir(dir).map_err(|e| e.to_string())?;
    }
    // A truncation may have moved the end under a remembered position.
    inner.range_resume = None;
    inner.current = Some(Current {
        number,
        file,
        len: good_len,
    });
    Ok(())
}

fn write_blocking(
    dir: &Path,
    inner: &mut Inner,
    records: &[Arc<StoredRecord>],
) -> Result<(), String> {
    if inner.current.is_none() {
        open_current(dir, inner)?;
    }
    let sync = inner.durability == Some(Durability::Sync);
    let inner_durability = inner.durability;
    let max = inner.max_file_bytes;
    let mut checkpoints_unsynced = false;
    let mut pending = std::mem::take(&mut inner.lines);
    pending.clear();
    let result = (|| -> Result<(), String> {
        let Some(cur) = inner.current.as_mut() else {
            return Err("no open file".into());
        };
        let mut checkpoints: Vec<u8> = Vec::new();
        for r in records {
            // Each line is encoded where it is written from.
            let start = pending.len();
            encode_line_into(r, &mut pending)?;
            if r.kind == RecordKind::Checkpoint {
                checkpoints.extend_from_slice(&pending[start..]);
            }
            if cur.len + start as u64 > 0 && cur.len + pending.len() as u64 > max {
                let line = pending.split_off(start);
                flush(cur, &mut pending, sync)?;
                // A full segment is made durable before the next one starts, whatever the
                // durability: background syncs then only ever concern the newest file.
                cur.file
                    .sync_data()
                    .map_err(|e| format!("cannot sync {}: {e}", file_name(cur.number)))?;
                let next = cur.number + 1;
                let path = dir.join(file_name(next));
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .open(&path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                sync_dir(dir).map_err(|e| format!("cannot sync directory: {e}"))?;
                *cur = Current {
                    number: next,
                    file,
                    len: 0,
                };
                pending = line;
            }
        }
        flush(cur, &mut pending, sync)?;
        // Written durability checks the place once per background fsync instead (two `statx`
        // per write were 6% of the gateway's CPU at pgbench -c 16): a moved directory is then
        // noticed within `batch_max_delay`, and the records written meanwhile are in the moved
        // files, chained, not lost.
        if inner_durability != Some(Durability::Written) {
            still_in_place(dir, cur)?;
        }
        if !checkpoints.is_empty() {
            let path = dir.join(CHECKPOINTS_FILE);
            let mut f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            f.write_all(&checkpoints)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            if sync {
                f.sync_data()
                    .map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
            } else {
                checkpoints_unsynced = true;
            }
        }
        Ok(())
    })();
    inner.checkpoints_unsynced |= checkpoints_unsynced;
    if pending.capacity() <= 1 << 20 {
        inner.lines = pending;
    }
    if result.is_err() {
        // Forget the open file: the next write lists the directory again and truncates whatever
        // part of a line this failure left behind.
        inner.current = None;
    }
    result
}

/// Fails when the configured path no longer names the file being appended to (the directory or
/// file was moved or deleted): writes through the open handle would succeed, but the records
/// would not be where the trail is read from.
fn still_in_place(dir: &Path, cur: &Current) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(file_name(cur.number));
    let open = cur
        .file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    match std::fs::metadata(&path) {
        Ok(on_disk) if on_disk.dev() == open.dev() && on_disk.ino() == open.ino() => Ok(()),
        Ok(_) => Err(format!(
            "{} was replaced while the trail was being written",
            path.display()
        )),
        Err(e) => Err(format!(
            "{} is gone ({e}): the trail's directory was moved or deleted",
            path.display()
        )),
    }
}

fn flush(cur: &mut Current, pending: &mut Vec<u8>, sync: bool) -> Result<(), String> {
    if pending.is_empty() {
        return Ok(());
    }
    cur.file
        .write_all(pending)
        .map_err(|e| format!("cannot write {}: {e}", file_name(cur.number)))?;
    if sync {
        cur.file
            .sync_data()
            .map_err(|e| format!("cannot sync {}: {e}", file_name(cur.number)))?;
    }
    cur.len += pending.len() as u64;
    pending.clear();
    Ok(())
}

fn scan_blocking(dir: &Path, cursor: ScanCursor, limit: usize) -> Result<ScanPage, String> {
    scan_files(dir, cursor, limit, None)
}

/// [`scan_blocking`], stopping after file `last` when given.
fn scan_files(
    dir: &Path,
    cursor: ScanCursor,
    limit: usize,
    last: Option<u64>,
) -> Result<ScanPage, String> {
    let mut files = list_files(dir).map_err(|e| format!("cannot list directory: {e}"))?;
    let last_file = files.last().copied();
    if let Some(last) = last {
        files.retain(|&n| n <= last);
    }
    let mut page = ScanPage::default();
    let start = cursor.segment;
    let mut cursor = cursor;
    for &number in files.iter().filter(|&&n| n >= start) {
        if number != cursor.segment {
            cursor = ScanCursor {
                segment: number,
                position: 0,
                line: 0,
            };
        }
        let path = dir.join(file_name(number));
        let mut file =
            File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        file.seek(SeekFrom::Start(cursor.position))
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        loop {
            if page.items.len() >= limit {
                page.next = Some(cursor);
                return Ok(page);
            }
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            cursor.line += 1;
            cursor.position += n as u64;
            let location = format!("{} line {}", file_name(number), cursor.line);
            if buf.last() != Some(&b'\n') {
                let torn_final = Some(number) == last_file;
                page.items.push(ScanItem::Damaged {
                    location,
                    node: None,
                    seq: None,
                    problem: if torn_final {
                        "torn final record: the last line is cut off (an interrupted write)".into()
                    } else {
                        "a line is cut off in the middle of the trail".into()
                    },
                    torn_final,
                });
                continue;
            }
            let body = &buf[..buf.len() - 1];
            page.items.push(match decode_line(body) {
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
    }
    Ok(page)
}

#[async_trait::async_trait]
impl Sink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write_batch(&self, records: &[Arc<StoredRecord>]) -> Result<(), SinkError> {
        let records = records.to_vec();
        self.blocking(move |dir, inner| {
            if inner.durability.is_none() {
                return Err("opened read-only".into());
            }
            write_blocking(dir, inner, &records)
        })
        .await
    }

    async fn tail(&self, node: &str) -> Result<Option<StoredRecord>, SinkError> {
        let node = node.to_owned();
        self.blocking(move |dir, inner| tail_blocking(dir, inner, &node))
            .await
    }

    fn append_blocking(&self, records: &[Arc<StoredRecord>]) -> Option<Result<(), SinkError>> {
        Some(self.locked(|dir, inner| {
            if inner.durability.is_none() {
                return Err("opened read-only".into());
            }
            write_blocking(dir, inner, records)
        }))
    }

    fn tail_blocking(&self, node: &str) -> Option<Result<Option<StoredRecord>, SinkError>> {
        Some(self.locked(|dir, inner| tail_blocking(dir, inner, node)))
    }

    async fn scan(&self, cursor: ScanCursor, limit: usize) -> Result<ScanPage, SinkError> {
        self.blocking(move |dir, _| scan_blocking(dir, cursor, limit))
            .await
    }

    async fn sync(&self) -> Result<(), SinkError> {
        // The fsync runs on duplicates of the descriptors, outside the lock: appends on other
        // threads go on while it waits for the disk.
        let (current, checkpoints) = self.locked(|dir, inner| {
            if let Some(cur) = &inner.current {
                if let Err(e) = still_in_place(dir, cur) {
                    // Like a failed write: the next one lists the directory again.
                    inner.current = None;
                    return Err(e);
                }
            }
            let current = match &inner.current {
                Some(cur) => Some((
                    cur.file
                        .try_clone()
                        .map_err(|e| format!("cannot sync {}: {e}", file_name(cur.number)))?,
                    file_name(cur.number),
                )),
                None => None,
            };
            let checkpoints =
                std::mem::take(&mut inner.checkpoints_unsynced).then(|| dir.join(CHECKPOINTS_FILE));
            Ok((current, checkpoints))
        })?;
        let name = self.name.clone();
        let sync = move || -> Result<(), SinkError> {
            if let Some((file, file_name)) = current {
                file.sync_data()
                    .map_err(|e| SinkError::new(&name, format!("cannot sync {file_name}: {e}")))?;
            }
            if let Some(path) = checkpoints {
                File::open(&path).and_then(|f| f.sync_data()).map_err(|e| {
                    SinkError::new(&name, format!("cannot sync {}: {e}", path.display()))
                })?;
            }
            Ok(())
        };
        if crate::writer::on_writer_thread() {
            return sync();
        }
        tokio::task::spawn_blocking(sync)
            .await
            .map_err(|e| SinkError::new(&self.name, format!("task failed: {e}")))?
    }

    async fn read_range(
        &self,
        node: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SinkError> {
        let node = node.to_owned();
        self.blocking(move |dir, inner| {
            // Callers read a range in consecutive chunks (catch-up, the scan after a crash):
            // continue from the page where the previous chunk ended instead of reading its file
            // from the start again, which made a long segment cost its length once per chunk.
            let resume = inner
                .range_resume
                .as_ref()
                .filter(|(n, next, _)| *n == node && *next == from_seq)
                .map(|(_, _, cursor)| *cursor);
            let mut cursor = match resume {
                Some(cursor) => cursor,
                None => ScanCursor {
                    segment: range_start(dir, from_seq)?,
                    position: 0,
                    line: 0,
                },
            };
            let mut out = Vec::new();
            loop {
                let page = scan_blocking(dir, cursor, 1024)?;
                for item in page.items {
                    if let ScanItem::Record { record, .. } = item {
                        if record.node == node && record.seq >= from_seq {
                            out.push(record);
                            if out.len() >= limit {
                                // The next chunk starts in this page: remember where it began.
                                let next = out.last().map_or(from_seq, |r| r.seq + 1);
                                inner.range_resume = Some((node, next, cursor));
                                return Ok(out);
                            }
                        }
                    }
                }
                match page.next {
                    Some(next) => cursor = next,
                    None => return Ok(out),
                }
            }
        })
        .await
    }

    async fn last_seq_of_event(&self, node: &str, event: &str) -> Result<Option<u64>, SinkError> {
        let (node, event) = (node.to_owned(), event.to_owned());
        self.blocking(move |dir, _| {
            let files = list_files(dir).map_err(|e| format!("cannot list directory: {e}"))?;
            // Newest file first; within a file the last match wins.
            for &number in files.iter().rev() {
                let mut found = None;
                let mut cursor = ScanCursor {
                    segment: number,
                    position: 0,
                    line: 0,
                };
                loop {
                    let page = scan_files(dir, cursor, 1024, Some(number))?;
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
                if found.is_some() {
                    return Ok(found);
                }
            }
            Ok(None)
        })
        .await
    }

    async fn checkpoint_copies(&self) -> Result<Vec<(String, StoredRecord)>, SinkError> {
        self.blocking(|dir, _| {
            let path = dir.join(CHECKPOINTS_FILE);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
            };
            let mut out = Vec::new();
            for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
                let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if let Ok(r) = decode_line(&line) {
                    out.push((format!("{CHECKPOINTS_FILE} line {}", i + 1), r));
                }
            }
            Ok(out)
        })
        .await
    }

    fn take_repairs(&self) -> Vec<NoticePayload> {
        match self.inner.lock() {
            Ok(mut g) => std::mem::take(&mut g.repairs),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trip_keeps_payload_bytes() {
        let payload = br#"{"time":{"secs_since_epoch":1,"nanos_since_epoch":0},"event":"x","sql":"a \"b\" \u00e9"}"#.to_vec();
        let r = StoredRecord::seal(
            "n",
            1,
            RecordKind::Event,
            ChainHash::GENESIS,
            payload.clone(),
        )
        .unwrap();
        let line = encode_line(&r).unwrap();
        let back = decode_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.payload, payload);
    }

    #[test]
    fn encode_line_refuses_payloads_that_are_not_one_json_object() {
        for bad in [&b"{\"a\":1}\n{\"b\":2}"[..], b"[1,2]", b"", b"{\"a\":1} "] {
            let mut r = StoredRecord::seal(
                "n",
                1,
                RecordKind::Event,
                ChainHash::GENESIS,
                br#"{"time":"2026-01-01T00:00:00Z","event":"x"}"#.to_vec(),
            )
            .unwrap();
            r.payload = bad.to_vec();
            assert!(
                encode_line(&r).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn finds_last_complete_line_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let long = "x".repeat(100_000);
        std::fs::write(&path, format!("a\n{long}\ntorn")).unwrap();
        let mut f = File::open(&path).unwrap();
        let (line, good) = last_complete_line(&mut f).unwrap();
        assert_eq!(line.unwrap(), long.as_bytes());
        assert_eq!(good, 2 + 100_001);
        std::fs::write(&path, "only\n").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(
            last_complete_line(&mut f).unwrap(),
            (Some(b"only".to_vec()), 5)
        );
        std::fs::write(&path, "torn").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(last_complete_line(&mut f).unwrap(), (None, 0));
    }
}
