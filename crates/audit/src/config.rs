//! `[audit]` configuration: plain serde structs the gateway config embeds.
//!
//! Durations are strings in the gateway's format (`"500ms"`, `"10s"`, `"5m"`, `"1h30m"`).
//! Paths are used as given: the gateway config resolves relative paths before it hands them over.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer};

/// Default `batch_max_delay`: measured with pgbench -S -M prepared (bench/), 10 ms instead of 0
/// took batched durability from 4.1k to 5.9k TPS at -c 1 and 9.3k to 9.9k at -c 16: writing
/// as soon as the writer is free means a wake-up, a blocking-pool hand-off and an SQLite commit
/// for nearly every record. A crash loses at most this much more of the queue.
const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(10);

fn default_batch_max_delay() -> Duration {
    DEFAULT_BATCH_MAX_DELAY
}

/// `[audit]`.
///
/// ```toml
/// [audit]
/// durability = "written"           # or "sync", "batched"
/// on_failure = "closed"            # or "open"
/// queue_capacity = 8192
/// batch_max_records = 512
/// batch_max_delay = "10ms"
/// checkpoint_every_records = 1000
/// checkpoint_every = "1m"
/// retry_for = "2s"
/// signing_key_file = "/etc/portcullis/audit-signing.pem"
///
/// [[audit.sinks]]
/// kind = "sqlite"
/// path = "/var/lib/portcullis/audit.db"
///
/// [[audit.sinks]]
/// kind = "jsonl"
/// dir = "/var/log/portcullis/audit"
/// max_file_bytes = 104857600
///
/// [[audit.sinks]]
/// kind = "postgres"
/// url = "postgresql://audit@db.internal/audit?sslmode=verify-full"
/// table = "audit_records"
/// ca_file = "/etc/portcullis/audit-db-ca.pem"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `"written"` (default): a statement runs only after its record is written to the primary
    /// sink's file (in the operating system's hands: it survives a crash of the gateway), and
    /// fsyncs follow in groups within `batch_max_delay`. `"sync"`: a statement runs only after
    /// its record is durable (fsynced) in the primary sink; the secondaries follow. `"batched"`: `record()` returns once the
    /// record is queued.
    #[serde(default)]
    pub durability: Durability,
    /// `"closed"` (default): when the sinks cannot take records, statements are refused.
    /// `"open"`: records are dropped (logged at ERROR and counted) and statements go on.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Records that may wait for the writer. Default 8192.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Most records in one write. Default 512.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Batched durability only: how long the writer lets a batch fill before writing it (it
    /// sleeps, so senders do not wake it per record). Default `"10ms"`; `"0ms"` writes as soon
    /// as the writer is free. In sync durability the writer never waits (statements wait for their
    /// batch); records that arrive during a write form the next batch (group commit).
    #[serde(default = "default_batch_max_delay", deserialize_with = "de_duration")]
    pub batch_max_delay: Duration,
    /// A signed checkpoint after this many records. Default 1000.
    #[serde(default = "default_checkpoint_every_records")]
    pub checkpoint_every_records: u64,
    /// A signed checkpoint at least this often while records arrive. Default `"1m"`.
    #[serde(default = "default_checkpoint_every", deserialize_with = "de_duration")]
    pub checkpoint_every: Duration,
    /// How long a failing write is retried before the records waiting on it fail, and how long
    /// `record()` waits for room in a full queue. Default `"2s"`. The writer keeps retrying
    /// after that (backing off to once a second) and resumes when a sink recovers.
    #[serde(default = "default_retry_for", deserialize_with = "de_duration")]
    pub retry_for: Duration,
    /// PKCS#8 Ed25519 private key (PEM or DER) that signs checkpoints. Without one the gateway
    /// signs with a key of its own, [`generated_key_file`](Self::generated_key_file), made on the
    /// first start.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Where the gateway keeps the signing key it generates when `signing_key_file` is not set:
    /// `<data_dir>/audit-signing.pem` (0600), with its public key beside it as
    /// `audit-signing.pub`. Set by [`check`](Self::check); not a configuration key.
    #[serde(skip)]
    pub generated_key_file: Option<PathBuf>,
    /// Bound parameters of prepared statements: `"record"` (default; each value cut at
    /// `parameter_max_bytes`), `"hash"` (HMAC-SHA-256 under `parameter_hash_key_file`) or
    /// `"omit"`. Statement texts are recorded whole either way, literals included.
    #[serde(default)]
    pub parameters: ParameterMode,
    /// Longest parameter value recorded whole, in bytes. Default 1024.
    #[serde(default = "default_parameter_max_bytes")]
    pub parameter_max_bytes: usize,
    /// The secret key (a file of at least 32 bytes, e.g. `head -c 32 /dev/urandom`) that
    /// `parameters = "hash"` uses. Keep it apart from the trail: whoever holds it can test
    /// guesses against the hashes.
    #[serde(default)]
    pub parameter_hash_key_file: Option<PathBuf>,
    /// Where records go; every record goes to every sink. The first is the primary: its tail is
    /// where the chain continues and verify reads it; tail and search read the first indexed
    /// sink (SQLite or PostgreSQL). Default: the segment log `<data_dir>/audit` (JSON lines)
    /// as primary and the SQLite index `<data_dir>/audit.db` beside it.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

/// When `record()` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Durability {
    /// A record that gates something (a login, a statement about to run, a denial) returns once
    /// its batch is written to the primary sink: for a file sink, handed to the operating system
    /// with `write`, so a crash of the gateway (SIGKILL, panic) cannot lose it. fsyncs follow in
    /// groups, at most `batch_max_delay` later; only a power loss or kernel crash can lose that
    /// window. Records that follow something (a statement's end, a session's close) return once
    /// queued: the writer writes them at once, before any later record of the session. Secondary
    /// sinks are written after the primary, off the statement's path.
    #[default]
    Written,
    /// After the batch holding the record is durable in the primary (SQLite `synchronous=FULL`,
    /// JSONL fsync per batch, PostgreSQL commit).
    Sync,
    /// After the record is queued (SQLite `synchronous=NORMAL`, JSONL written without fsync).
    Batched,
}

/// How bound parameters are recorded (see [`AuditConfig::parameters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParameterMode {
    /// As sent, each value cut at `parameter_max_bytes`.
    #[default]
    Record,
    /// HMAC-SHA-256 of each value.
    Hash,
    /// Not at all.
    Omit,
}

fn default_parameter_max_bytes() -> usize {
    gateway_core::parameters::DEFAULT_MAX_BYTES
}

/// What happens to statements when no record can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Refuse: `record()` fails, and the gateway refuses the statement.
    #[default]
    Closed,
    /// Carry on: `record()` succeeds, the record is dropped, logged at ERROR and counted.
    Open,
}

/// One `[[audit.sinks]]` entry.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// `kind = "sqlite"`: one SQLite file (WAL).
    Sqlite {
        /// The database file; created if missing.
        path: PathBuf,
    },
    /// `kind = "jsonl"`: JSON lines in numbered files `audit-000001.jsonl`, ... in `dir`.
    Jsonl {
        /// The directory; created if missing. One gateway node per directory.
        dir: PathBuf,
        /// A new file is started before a record would make the current one larger than this.
        /// Default 104857600 (100 MiB).
        #[serde(default = "default_max_file_bytes")]
        max_file_bytes: u64,
    },
    /// `kind = "postgres"`: a table in PostgreSQL, shared by several gateway nodes.
    Postgres {
        /// Connection string (`postgresql://user@host/db` or `host=... dbname=...`). Its
        /// `sslmode` is `disable` (the default), `require` or `verify-full`; `prefer` and
        /// `allow` are refused (see [`crate::sink::pg_tls`]).
        url: String,
        /// Table name, optionally schema-qualified; created if missing, with a companion
        /// `<table>_checkpoints`. Default `audit_records`.
        #[serde(default = "default_table")]
        table: String,
        /// PEM file of the CA(s) `sslmode=verify-full` trusts; default: the bundled Mozilla
        /// roots. Only with `verify-full`.
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Debug for SinkConfig {
    // Hand-written: a PostgreSQL connection string may carry a password, and configs get logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkConfig::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            SinkConfig::Jsonl {
                dir,
                max_file_bytes,
            } => f
                .debug_struct("Jsonl")
                .field("dir", dir)
                .field("max_file_bytes", max_file_bytes)
                .finish(),
            SinkConfig::Postgres { table, ca_file, .. } => f
                .debug_struct("Postgres")
                .field("url", &"<redacted>")
                .field("table", table)
                .field("ca_file", ca_file)
                .finish(),
        }
    }
}

impl AuditConfig {
    /// The sink searches read (`audit tail`/`search`, the admin API): the first indexed one
    /// (SQLite or PostgreSQL), else the first.
    pub fn search_sink(&self) -> Option<&SinkConfig> {
        self.sinks
            .iter()
            .find(|s| !matches!(s, SinkConfig::Jsonl { .. }))
            .or(self.sinks.first())
    }

    /// The configuration when `[audit]` is absent: the segment log `<data_dir>/audit` as the
    /// primary and the SQLite index `<data_dir>/audit.db`, written durability, fail closed,
    /// signed with the key generated in `<data_dir>`.
    pub fn default_for(data_dir: &Path) -> Self {
        AuditConfig {
            durability: Durability::Written,
            on_failure: OnFailure::Closed,
            queue_capacity: default_queue_capacity(),
            batch_max_records: default_batch_max_records(),
            batch_max_delay: DEFAULT_BATCH_MAX_DELAY,
            checkpoint_every_records: default_checkpoint_every_records(),
            checkpoint_every: default_checkpoint_every(),
            retry_for: default_retry_for(),
            signing_key_file: None,
            generated_key_file: Some(data_dir.join(GENERATED_KEY_FILE)),
            parameters: ParameterMode::default(),
            parameter_max_bytes: default_parameter_max_bytes(),
            parameter_hash_key_file: None,
            sinks: default_sinks(data_dir),
        }
    }

    /// The signing key file in use: the configured one, else the generated one.
    pub fn signing_key_path(&self) -> Option<&Path> {
        self.signing_key_file
            .as_deref()
            .or(self.generated_key_file.as_deref())
    }

    /// How the gateway records bound parameters; reads the hash key file in hash mode.
    pub fn parameter_audit(&self) -> Result<gateway_core::ParameterAudit, String> {
        use gateway_core::ParameterAudit;
        match self.parameters {
            ParameterMode::Omit => Ok(ParameterAudit::Omit),
            ParameterMode::Record => Ok(ParameterAudit::Record {
                max_bytes: self.parameter_max_bytes,
            }),
            ParameterMode::Hash => {
                let path = self.parameter_hash_key_file.as_deref().ok_or_else(|| {
                    "`audit.parameters = \"hash\"` needs `audit.parameter_hash_key_file`".to_owned()
                })?;
                let key = std::fs::read(path).map_err(|e| {
                    format!(
                        "could not read the parameter hash key {}: {e}",
                        path.display()
                    )
                })?;
                ParameterAudit::hash_with(&key).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }

    /// Fills in the default sink when none is configured, and checks the numbers. Every problem
    /// is returned, one message each.
    pub fn check(&mut self, data_dir: &Path) -> Result<(), Vec<String>> {
        if self.sinks.is_empty() {
            self.sinks = default_sinks(data_dir);
        }
        self.generated_key_file = if self.signing_key_file.is_none() {
            Some(data_dir.join(GENERATED_KEY_FILE))
        } else {
            None
        };
        let mut errors = Vec::new();
        if self.queue_capacity == 0 {
            errors.push("`audit.queue_capacity` must be at least 1".to_owned());
        }
        if self.batch_max_records == 0 {
            errors.push("`audit.batch_max_records` must be at least 1".to_owned());
        }
        if self.checkpoint_every_records == 0 {
            errors.push("`audit.checkpoint_every_records` must be at least 1".to_owned());
        }
        if self.checkpoint_every.is_zero() {
            errors.push("`audit.checkpoint_every` must be longer than 0".to_owned());
        }
        match (self.parameters, &self.parameter_hash_key_file) {
            (ParameterMode::Hash, None) => errors.push(
                "`audit.parameters = \"hash\"` needs `audit.parameter_hash_key_file` (at least 32 secret bytes)"
                    .to_owned(),
            ),
            (ParameterMode::Hash, Some(key)) if !key.is_file() => errors.push(format!(
                "`audit.parameter_hash_key_file`: file not found: {}",
                key.display()
            )),
            (ParameterMode::Record | ParameterMode::Omit, Some(_)) => errors.push(
                "`audit.parameter_hash_key_file` is only used with `audit.parameters = \"hash\"`"
                    .to_owned(),
            ),
            _ => {}
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            match sink {
                SinkConfig::Jsonl { max_file_bytes, .. } if *max_file_bytes < 4096 => errors.push(
                    format!("`audit.sinks[{i}].max_file_bytes` must be at least 4096"),
                ),
                SinkConfig::Postgres {
                    url,
                    table,
                    ca_file,
                } => {
                    if let Err(e) = crate::sink::postgres::quote_table(table) {
                        errors.push(format!("`audit.sinks[{i}].table`: {e}"));
                    }
                    if let Err(e) =
                        crate::sink::pg_tls::PgConnectSettings::parse(url, ca_file.as_deref())
                    {
                        errors.push(format!("`audit.sinks[{i}].url`: {e}"));
                    }
                    if let Some(ca) = ca_file.as_deref().filter(|ca| !ca.is_file()) {
                        errors.push(format!(
                            "`audit.sinks[{i}].ca_file`: file not found: {}",
                            ca.display()
                        ));
                    }
                }
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The signing key generated in the data directory when none is configured.
pub const GENERATED_KEY_FILE: &str = "audit-signing.pem";

/// The sinks when none is configured: the segment log holds the chain (appending a line is one
/// `write`, no transaction), and the SQLite index beside it serves tail and search. The index is
/// written after the log, off the statements' path, and is filled from the log at start when it
/// lags (a crash, or a deleted file).
fn default_sinks(data_dir: &Path) -> Vec<SinkConfig> {
    vec![
        SinkConfig::Jsonl {
            dir: data_dir.join("audit"),
            max_file_bytes: default_max_file_bytes(),
        },
        SinkConfig::Sqlite {
            path: data_dir.join("audit.db"),
        },
    ]
}

fn default_queue_capacity() -> usize {
    8192
}
fn default_batch_max_records() -> usize {
    512
}
fn default_checkpoint_every_records() -> u64 {
    1000
}
fn default_checkpoint_every() -> Duration {
    Duration::from_secs(60)
}
fn default_retry_for() -> Duration {
    Duration::from_secs(2)
}
fn default_max_file_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_table() -> String {
    "audit_records".to_owned()
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Parses `"500ms"`, `"10s"`, `"5m"`, `"1h30m"`, `"2d"`: whole numbers with units `ms`, `s`,
/// `m`, `h`, `d` (and their long names), the grammar of the gateway config.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str = "write a whole number and a unit, e.g. \"500ms\", \"10s\", \"5m\", \"1h\"";
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("empty duration: {HINT}"));
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration `{text}`: {HINT}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration `{text}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" | "msec" | "msecs" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "" => {
                return Err(format!(
                    "duration `{text}` has a number without a unit: {HINT}"
                ))
            }
            other => {
                return Err(format!(
                    "unknown unit `{other}` in duration `{text}`: {HINT}"
                ))
            }
        };
        rest = &rest[unit_len..];
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        audit: AuditConfig,
    }

    #[test]
    fn debug_output_never_shows_a_postgres_url() {
        let sink = SinkConfig::Postgres {
            url: "postgresql://audit:s3cret@db/audit".into(),
            table: "t".into(),
            ca_file: None,
        };
        let shown = format!("{sink:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn reads_every_key() {
        let doc: Doc = toml::from_str(
            r#"
            [audit]
            durability = "batched"
            on_failure = "open"
            queue_capacity = 10
            batch_max_records = 5
            batch_max_delay = "3ms"
            checkpoint_every_records = 7
            checkpoint_every = "1m30s"
            retry_for = "500ms"
            signing_key_file = "k.pem"
            [[audit.sinks]]
            kind = "sqlite"
            path = "a.db"
            [[audit.sinks]]
            kind = "jsonl"
            dir = "logs"
            [[audit.sinks]]
            kind = "postgres"
            url = "host=localhost"
            "#,
        )
        .unwrap();
        let a = doc.audit;
        assert_eq!(a.durability, Durability::Batched);
        assert_eq!(a.on_failure, OnFailure::Open);
        assert_eq!(a.batch_max_delay, Duration::from_millis(3));
        assert_eq!(a.checkpoint_every, Duration::from_secs(90));
        assert_eq!(
            a.sinks[1],
            SinkConfig::Jsonl {
                dir: "logs".into(),
                max_file_bytes: 100 * 1024 * 1024
            }
        );
        assert_eq!(
            a.sinks[2],
            SinkConfig::Postgres {
                url: "host=localhost".into(),
                table: "audit_records".into(),
                ca_file: None,
            }
        );
    }

    #[test]
    fn defaults_and_refusals() {
        let mut a: AuditConfig = toml::from_str("").unwrap();
        a.check(Path::new("/data")).unwrap();
        assert_eq!(a, AuditConfig::default_for(Path::new("/data")));
        assert!(toml::from_str::<AuditConfig>("durability = \"eventually\"").is_err());
        assert!(toml::from_str::<AuditConfig>("surprise = 1").is_err());
        assert!(toml::from_str::<AuditConfig>("checkpoint_every = \"10\"").is_err());
        assert!(toml::from_str::<AuditConfig>(
            "[[sinks]]\nkind = \"sqlite\"\npath = \"x\"\ndir = \"y\""
        )
        .is_err());
        let mut bad: AuditConfig = toml::from_str(
            "queue_capacity = 0\n[[sinks]]\nkind = \"postgres\"\nurl = \"host=db\"\ntable = \"a;drop\"",
        )
        .unwrap();
        assert_eq!(bad.check(Path::new("/d")).unwrap_err().len(), 2);
    }

    #[test]
    fn parameter_modes_are_checked_and_built() {
        let dir = tempfile::tempdir().unwrap();
        let (short, good) = (dir.path().join("short.key"), dir.path().join("good.key"));
        std::fs::write(&short, [7u8; 16]).unwrap();
        std::fs::write(&good, [7u8; 32]).unwrap();
        let config = |text: String| -> AuditConfig { toml::from_str(&text).unwrap() };
        let key = |p: &Path| format!("parameter_hash_key_file = {:?}\n", p.display().to_string());

        // Default: recorded, cut at 1 KiB.
        let mut a = config(String::new());
        a.check(dir.path()).unwrap();
        assert!(matches!(
            a.parameter_audit(),
            Ok(gateway_core::ParameterAudit::Record { max_bytes: 1024 })
        ));
        assert!(config("parameters = \"omit\"".into())
            .parameter_audit()
            .unwrap()
            .is_off());
        // Hash needs a key file, of at least 32 bytes; a key file without hash mode is a mistake.
        let errors = config("parameters = \"hash\"".into())
            .check(dir.path())
            .unwrap_err();
        assert!(errors[0].contains("parameter_hash_key_file"), "{errors:?}");
        let mut short_key = config(format!("parameters = \"hash\"\n{}", key(&short)));
        short_key.check(dir.path()).unwrap();
        let e = short_key.parameter_audit().unwrap_err();
        assert!(e.contains("at least 32"), "{e}");
        let good_key = config(format!("parameters = \"hash\"\n{}", key(&good)));
        assert!(matches!(
            good_key.parameter_audit(),
            Ok(gateway_core::ParameterAudit::Hash { .. })
        ));
        let errors = config(key(&good)).check(dir.path()).unwrap_err();
        assert!(errors[0].contains("only used with"), "{errors:?}");
        assert!(toml::from_str::<AuditConfig>("parameters = \"encrypt\"").is_err());
    }

    #[test]
    fn postgres_tls_settings_are_checked_with_the_config() {
        let check = |sink: &str| {
            let mut a: AuditConfig =
                toml::from_str(&format!("[[sinks]]\nkind = \"postgres\"\n{sink}")).unwrap();
            a.check(Path::new("/d")).map_err(|e| e.join("\n"))
        };
        assert!(check("url = \"postgresql://db/a?sslmode=verify-full\"").is_ok());
        let e = check("url = \"postgresql://db/a?sslmode=prefer\"").unwrap_err();
        assert!(
            e.contains("audit.sinks[0].url") && e.contains("verify-full"),
            "{e}"
        );
        let e = check("url = \"host=db\"\nca_file = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(e.contains("add sslmode=verify-full"), "{e}");
        assert!(
            e.contains("`audit.sinks[0].ca_file`: file not found"),
            "{e}"
        );
    }
}

/// A time as audit searches take it (`--since` / `--until`, the admin API's `since` / `until`):
/// RFC 3339, or a duration before now.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Some(t) = parse_rfc3339(text) {
        return Ok(t);
    }
    if let Ok(ago) = parse_duration(text) {
        return SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{text}` reaches back before 1970"));
    }
    Err(format!(
        "`{text}` is neither an RFC 3339 time (2025-01-31T12:00:00Z, 2025-01-31T12:00:00+02:00, 2025-01-31) nor a duration ago (15m, 2h, 7d)"
    ))
}

/// Parses an RFC 3339 time (`2025-01-31T12:00:00Z`, fractions and `±HH:MM` offsets allowed; a
/// space or `t` may separate date and time) or a bare date (midnight UTC).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month_days = match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        1..=12 => 31,
        _ => return None,
    };
    if day < 1 || day > month_days {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let (mut secs, mut nanos) = (days * 86_400, 0u32);
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ')
            || b.get(13) != Some(&b':')
            || b.get(16) != Some(&b':')
        {
            return None;
        }
        let (h, m, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
        // A leap second (:60) counts as the last second of its minute.
        if h > 23 || m > 59 || s > 60 {
            return None;
        }
        secs += h * 3600 + m * 60 + s.min(59);
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
            let mut frac = 0u32;
            for k in 0..9 {
                let digit = if start + k < i {
                    b[start + k] - b'0'
                } else {
                    0
                };
                frac = frac * 10 + u32::from(digit);
            }
            nanos = frac;
        }
        match b.get(i) {
            Some(b'Z' | b'z') if b.len() == i + 1 => {}
            Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
                let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if oh > 23 || om > 59 {
                    return None;
                }
                let offset = oh * 3600 + om * 60;
                secs += if *sign == b'+' { -offset } else { offset };
            }
            _ => return None,
        }
    }
    let since_epoch = Duration::new(u64::try_from(secs).ok()?, nanos);
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
