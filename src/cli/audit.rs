//! `portcullis audit verify|tail|search|keygen`: the audit trail from the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use audit::parse_time as parse_time_arg;
use clap::{Args, Subcommand};
use portcullis::Config;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit sink end to end: every record's hash, the chain links, seq continuity and,
    /// with --public-key, the checkpoint signatures. Prints each node's summary, the first broken
    /// record with where it is stored, and what the check could not prove.
    #[command(
        after_help = "Exit codes: 0 every chain verifies, 1 a chain does not verify or the sink holds no records, 2 the trail could not be checked (sink, configuration or key unreadable, or an invalid command line)."
    )]
    Verify(VerifyArgs),
    /// Print the newest records of an audit sink, oldest first.
    Tail(TailArgs),
    /// Print the newest records of an audit sink that match every given filter, oldest first.
    Search(SearchArgs),
    /// Generate an Ed25519 key pair that signs audit checkpoints (`audit.signing_key_file`).
    Keygen(KeygenArgs),
}

/// Which audit sink to read: the primary sink of a gateway configuration, or one named directly.
#[derive(Args)]
pub(crate) struct SinkArgs {
    /// Gateway configuration file: verify reads its primary (first) audit sink, by default the
    /// segment log `<gateway.data_dir>/audit`; tail and search read its first indexed sink
    /// (SQLite or PostgreSQL; by default `<gateway.data_dir>/audit.db`), else the primary. A
    /// sink named with --sqlite, --jsonl or --postgres takes precedence.
    #[arg(short, long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// An SQLite audit file.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["jsonl", "postgres"])]
    pub(crate) sqlite: Option<PathBuf>,
    /// A JSONL audit directory.
    #[arg(long, value_name = "DIR", conflicts_with = "postgres")]
    pub(crate) jsonl: Option<PathBuf>,
    /// A PostgreSQL audit sink: connection string of its database.
    #[arg(long, value_name = "URL")]
    pub(crate) postgres: Option<String>,
    /// Table of the PostgreSQL sink (`name` or `schema.name`) [default: audit_records].
    #[arg(long, value_name = "TABLE", requires = "postgres", conflicts_with_all = ["sqlite", "jsonl"])]
    pub(crate) table: Option<String>,
    /// CA certificate(s) (PEM) that the PostgreSQL sink's server certificate must chain to, with
    /// `sslmode=verify-full` in the URL [default: the bundled Mozilla roots].
    #[arg(long, value_name = "FILE", requires = "postgres", conflicts_with_all = ["sqlite", "jsonl"])]
    pub(crate) ca_file: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) sink: SinkArgs,
    /// Ed25519 public key file (PEM, DER or 32 raw bytes) the checkpoints must verify with.
    /// Repeat it, or put several PEM keys in one file, for a chain whose signing key was
    /// rotated: each checkpoint is checked with the key it names. Without it, --config uses the
    /// public key of the gateway's own signing key (`audit.signing_key_file`, or the one it
    /// generated in its data directory); otherwise only the hash links are checked.
    #[arg(long, value_name = "FILE")]
    pub(crate) public_key: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    pub(crate) sink: SinkArgs,
    /// How many records.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
    pub(crate) lines: usize,
    /// Only records of this gateway node.
    #[arg(long, value_name = "NODE")]
    pub(crate) node: Option<String>,
    /// One JSON object per record and line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct SearchArgs {
    #[command(flatten)]
    pub(crate) sink: SinkArgs,
    /// Subject (exact).
    #[arg(long, value_name = "SUBJECT")]
    pub(crate) subject: Option<String>,
    /// Target name (exact).
    #[arg(long, value_name = "TARGET")]
    pub(crate) target: Option<String>,
    /// At or after this time: RFC 3339 (`2025-01-31T12:00:00Z`, `2025-01-31`) or a duration
    /// meaning that long ago (`15m`, `2h`, `7d`).
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub(crate) since: Option<SystemTime>,
    /// Before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub(crate) until: Option<SystemTime>,
    /// Event: `statement_started`, `statement_finished`, `statement_executed` (both in one
    /// record, batched durability), `statement_denied`, `session_opened`, `session_closed`,
    /// `login_failed`, `checkpoint`, or a notice (`log_opened`, ...).
    #[arg(long, value_name = "EVENT")]
    pub(crate) event: Option<String>,
    /// Verdict.
    #[arg(long, value_name = "VERDICT", value_parser = ["allow", "deny", "needs_approval"])]
    pub(crate) verdict: Option<String>,
    /// Text the record contains (case-sensitive; quotes and backslashes in statements are
    /// JSON-escaped in records).
    #[arg(long, value_name = "TEXT")]
    pub(crate) text: Option<String>,
    /// Only records of this gateway node.
    #[arg(long, value_name = "NODE")]
    pub(crate) node: Option<String>,
    /// At most this many records (the newest).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) limit: usize,
    /// One JSON object per record and line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600). An existing file is never
    /// overwritten.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Where to write the public key (PEM) for `audit verify --public-key`; without it the public
    /// key is printed.
    #[arg(long, value_name = "FILE")]
    pub(crate) public_out: Option<PathBuf>,
}

/// A runtime for the audit commands, which read sinks through async clients.
pub(crate) fn audit_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

impl SinkArgs {
    /// The sink to read: the one named on the command line, else the configuration's primary
    /// sink (`indexed = false`) or its first indexed sink (`indexed = true`, for tail and
    /// search), and the configuration's `[audit]` when one was read.
    fn sink_config(
        &self,
        indexed: bool,
    ) -> anyhow::Result<(audit::SinkConfig, Option<audit::AuditConfig>)> {
        if let Some(path) = &self.sqlite {
            return Ok((audit::SinkConfig::Sqlite { path: path.clone() }, None));
        }
        if let Some(dir) = &self.jsonl {
            return Ok((
                audit::SinkConfig::Jsonl {
                    dir: dir.clone(),
                    // Only the writer rotates; any valid size will do for reading.
                    max_file_bytes: u64::MAX,
                },
                None,
            ));
        }
        if let Some(url) = &self.postgres {
            return Ok((
                audit::SinkConfig::Postgres {
                    url: url.clone(),
                    table: self
                        .table
                        .clone()
                        .unwrap_or_else(|| "audit_records".to_owned()),
                    ca_file: self.ca_file.clone(),
                },
                None,
            ));
        }
        let Some(path) = &self.config else {
            bail!("say which audit trail to read: --config FILE, --sqlite PATH, --jsonl DIR or --postgres URL");
        };
        let config = Config::load(path).map_err(|errors| {
            anyhow::anyhow!(
                "{errors}\n{} is not a valid configuration; its audit sink was not read",
                path.display()
            )
        })?;
        let chosen = match indexed {
            true => config.audit.search_sink(),
            false => config.audit.sinks.first(),
        };
        let sink = chosen
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{} configures no audit sink", path.display()))?;
        Ok((sink, Some(config.audit)))
    }

    /// Opens the sink [`sink_config`](Self::sink_config) chooses.
    async fn open(
        &self,
        indexed: bool,
    ) -> anyhow::Result<(Box<dyn audit::Sink>, Option<audit::AuditConfig>)> {
        let (config, audit) = self.sink_config(indexed)?;
        let sink = audit::open_sink(&config, audit::OpenMode::Read)
            .await
            .context("cannot open the audit trail")?;
        Ok((sink, audit))
    }
}

/// The public key of the gateway's own signing key, for `audit verify --config` without
/// `--public-key`: the public key file beside a generated key (readable by an auditor who may not
/// read the 0600 private key), else the public half of the private key.
pub(crate) fn configured_public_key(audit: &audit::AuditConfig) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(private) = audit.signing_key_path() else {
        return Ok(None);
    };
    let public = audit::signing::public_key_path(private);
    let (key, from) = if audit.signing_key_file.is_none() && public.is_file() {
        (audit::read_public_key_file(&public)?, public.as_path())
    } else if private.is_file() {
        (
            audit::CheckpointSigner::from_file(private)?.public_key(),
            private,
        )
    } else {
        return Ok(None);
    };
    eprintln!(
        "portcullis: checking signatures with the gateway's signing key {} (key id {}); for evidence, \
         keep a copy of the public key away from the gateway host and pass it with --public-key",
        from.display(),
        audit::key_id(&key)
    );
    Ok(Some(key))
}

pub(crate) fn audit_verify(args: &VerifyArgs) -> ExitCode {
    let checked = audit_runtime().and_then(|runtime| {
        runtime.block_on(async {
            // The keys first: a typo in a path should not cost a scan of the whole trail.
            let mut keys = Vec::new();
            for path in &args.public_key {
                keys.extend(audit::read_public_keys_file(path)?);
            }
            let (sink, audit) = args.sink.open(false).await?;
            if keys.is_empty() {
                if let Some(key) = audit
                    .as_ref()
                    .map(configured_public_key)
                    .transpose()?
                    .flatten()
                {
                    keys.push(key);
                }
            }
            let report = audit::verify(sink.as_ref(), &keys)
                .await
                .context("cannot read the audit trail")?;
            anyhow::Ok(report)
        })
    });
    let report = match checked {
        Ok(checked) => checked,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            eprintln!("portcullis: the audit trail was not verified");
            return ExitCode::from(2);
        }
    };
    if args.json {
        let json = verify_report_json(&report);
        match serde_json::to_string_pretty(&json) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("portcullis: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", render_verify_report(&report));
    }
    if verified(&report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Whether the report proves a trail: no failure, and at least one record. A gateway writes a
/// record at every start, so an empty sink is the wrong sink or a trail that was removed.
pub(crate) fn verified(report: &audit::VerifyReport) -> bool {
    report.is_ok() && !report.nodes.is_empty()
}

pub(crate) fn render_verify_report(report: &audit::VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "sink: {}", report.sink);
    match report.public_key_ids.as_slice() {
        [id] => {
            let _ = writeln!(out, "signatures: checked with public key {id}");
        }
        [_, _, ..] => {
            let _ = writeln!(
                out,
                "signatures: checked with public keys {}",
                report.public_key_ids.join(", ")
            );
        }
        [] => {
            let _ = writeln!(
                out,
                "signatures: NOT checked (no --public-key): only the hash links were verified"
            );
        }
    }
    for n in &report.nodes {
        let records = format!(
            "node {}: {} record{} up to seq {}",
            n.node,
            n.records,
            plural(n.records),
            n.last_seq
        );
        // Checkpoints are only counted up to a failure, so a broken chain shows no signed range.
        let _ = match (&n.failure, n.last_signed_seq) {
            (Some(f), _) => writeln!(out, "{records}: BROKEN at seq {}", f.seq),
            (None, Some(seq)) => writeln!(
                out,
                "{records}, {} checkpoint{}, signed up to seq {seq}{}, {} record{} after it: ok",
                n.checkpoints,
                plural(n.checkpoints),
                if report.signatures_checked {
                    format!(
                        " by key{} {}",
                        plural(n.signing_keys.len() as u64),
                        n.signing_keys.join(", ")
                    )
                } else {
                    String::new()
                },
                n.unsigned_tail,
                plural(n.unsigned_tail)
            ),
            (None, None) => writeln!(out, "{records}, no checkpoint: ok"),
        };
    }
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    match report.first_failure() {
        Some(f) => {
            let _ = writeln!(out, "FAILED: {f}");
        }
        None if report.nodes.is_empty() => {
            let _ = writeln!(
                out,
                "FAILED: the sink holds no records (a gateway writes one at every start): is this the right sink, or was the trail removed?"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "ok: {} chain{} verif{}",
                report.nodes.len(),
                plural(report.nodes.len() as u64),
                if report.nodes.len() == 1 { "ies" } else { "y" }
            );
        }
    }
    out
}

pub(crate) fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

pub(crate) fn verify_report_json(report: &audit::VerifyReport) -> serde_json::Value {
    use serde_json::json;
    let failure = |f: &audit::VerifyFailure| {
        json!({
            "node": f.node,
            "seq": f.seq,
            "problem": problem_code(&f.problem),
            "message": f.problem.to_string(),
            "location": f.location,
        })
    };
    json!({
        "sink": report.sink,
        "ok": verified(report),
        "signatures_checked": report.signatures_checked,
        "public_key_ids": report.public_key_ids,
        "nodes": report.nodes.iter().map(|n| json!({
            "node": n.node,
            "records": n.records,
            "last_seq": n.last_seq,
            "checkpoints": n.checkpoints,
            "last_signed_seq": n.last_signed_seq,
            "signing_keys": n.signing_keys,
            "unsigned_tail": n.unsigned_tail,
            "failure": n.failure.as_ref().map(failure),
        })).collect::<Vec<_>>(),
        "first_failure": report.first_failure().map(failure),
        "warnings": report.warnings,
    })
}

/// A stable name for each verify problem, for scripts reading `--json`.
pub(crate) fn problem_code(p: &audit::Problem) -> &'static str {
    use audit::Problem;
    match p {
        Problem::HashMismatch => "hash_mismatch",
        Problem::ColumnsMismatch(_) => "columns_mismatch",
        Problem::SeqGap { .. } => "seq_gap",
        Problem::OutOfOrder { .. } => "out_of_order",
        Problem::Replaced { .. } => "replaced",
        Problem::CheckpointMalformed(_) => "checkpoint_malformed",
        Problem::CheckpointSignatureInvalid(_) => "checkpoint_signature_invalid",
        Problem::UnknownSigningKey { .. } => "unknown_signing_key",
        Problem::ChainEndsBeforeCheckpoint { .. } => "chain_ends_before_checkpoint",
        Problem::CheckpointCopyMismatch => "checkpoint_copy_mismatch",
        Problem::TornFinalRecord => "torn_final_record",
        Problem::Unreadable(_) => "unreadable",
        Problem::UnsupportedVersion(_) => "unsupported_version",
    }
}

pub(crate) fn audit_tail(args: &TailArgs) -> anyhow::Result<ExitCode> {
    let records = audit_runtime()?.block_on(async {
        let (sink, _) = args.sink.open(true).await?;
        audit::tail(sink.as_ref(), args.lines, args.node.as_deref())
            .await
            .context("cannot read the audit trail")
    })?;
    print_records(&records, args.json)
}

pub(crate) fn audit_search(args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let filter = audit::SearchFilter {
        node: args.node.clone(),
        subject: args.subject.clone(),
        target: args.target.clone(),
        since: args.since,
        until: args.until,
        event: args.event.clone(),
        verdict: args.verdict.clone(),
        text: args.text.clone(),
    };
    let records = audit_runtime()?.block_on(async {
        let (sink, _) = args.sink.open(true).await?;
        audit::search(sink.as_ref(), &filter, args.limit)
            .await
            .context("cannot search the audit trail")
    })?;
    print_records(&records, args.json)
}

pub(crate) fn print_records(
    records: &[audit::StoredRecord],
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for r in records {
        let line = if json {
            serde_json::to_string(&record_json(r))?
        } else {
            record_line(r)
        };
        if let Err(e) = writeln!(out, "{line}") {
            // `audit search ... | head` closes the pipe early; that is not a failure.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e).context("cannot write to standard output");
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A record as one JSON object: the stored columns, and the payload as JSON (as text if the stored
/// bytes are not JSON).
pub(crate) fn record_json(r: &audit::StoredRecord) -> serde_json::Value {
    let payload = serde_json::from_slice::<serde_json::Value>(&r.payload)
        .unwrap_or_else(|_| serde_json::Value::String(r.payload_text().into_owned()));
    serde_json::json!({
        "time": audit::format_time(r.time()),
        "node": r.node,
        "seq": r.seq,
        "kind": r.kind.as_str(),
        "event": r.event,
        "subject": r.subject,
        "target": r.target,
        "verdict": r.verdict,
        "hash": r.hash.to_hex(),
        "prev_hash": r.prev_hash.to_hex(),
        "payload": payload,
    })
}

/// A record as one line: time, node, seq, event, subject, target, then what happened
/// (`[session#statement]`, verdict and a shortened statement, or the outcome).
pub(crate) fn record_line(r: &audit::StoredRecord) -> String {
    let p: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
    let text = |key: &str| p.get(key).and_then(serde_json::Value::as_str);
    let int = |key: &str| p.get(key).and_then(serde_json::Value::as_u64);
    let session = text("session_id").unwrap_or("?");
    let statement = format!("[{session}#{}]", int("statement_id").unwrap_or(0));
    let rule = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_str)
            .map(|rule| format!(" (rule {rule})"))
            .unwrap_or_default()
    };
    let verdict = r.verdict.as_deref().unwrap_or("-");
    let sql = short_sql(text("sql").unwrap_or(""));
    // How a statement ended: `SELECT 1, 1 row, 0.3 ms`.
    let outcome = || {
        let how = if p.get("skipped").and_then(serde_json::Value::as_bool) == Some(true) {
            "skipped (not run)".to_owned()
        } else if let Some(error) = p.get("error").filter(|e| !e.is_null()) {
            format!("error: {}", recorded_error(error))
        } else {
            text("tag").unwrap_or("ok").to_owned()
        };
        let ms = p
            .get("duration")
            .map(|d| {
                let secs = d
                    .get("secs")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                let nanos = d
                    .get("nanos")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                secs as f64 * 1e3 + nanos as f64 / 1e6
            })
            .unwrap_or(0.0);
        let rows = int("rows").unwrap_or(0);
        format!("{how}, {rows} row{}, {ms:.1} ms", plural(rows))
    };
    let detail = match r.event.as_str() {
        "statement_started" => format!("{statement} {verdict}{}: {sql}", rule(p.get("rule"))),
        "statement_executed" => format!(
            "{statement} {verdict}{}: {sql} -> {}",
            rule(p.get("rule")),
            outcome()
        ),
        "statement_denied" => format!(
            "{statement} {verdict}{}: {sql}",
            rule(p.pointer("/verdict/rule"))
        ),
        "statement_finished" => format!("{statement} {}", outcome()),
        "session_opened" => {
            let groups: Vec<&str> = p
                .get("groups")
                .and_then(serde_json::Value::as_array)
                .map(|g| g.iter().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            // The login name the client sent, when it is not the subject (a token for alice
            // presented as user=bob).
            let user = match (text("user"), text("subject")) {
                (Some(user), subject) if Some(user) != subject => format!(" as user {user}"),
                _ => String::new(),
            };
            format!(
                "[{session}] {} via {}{user}, groups: {}, from {}",
                text("access").unwrap_or("?"),
                text("auth_method").unwrap_or("?"),
                if groups.is_empty() {
                    "-".to_owned()
                } else {
                    groups.join(",")
                },
                p.pointer("/client/addr")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("?")
            )
        }
        "session_closed" => {
            let n = int("statements").unwrap_or(0);
            match p.get("error").filter(|e| !e.is_null()) {
                Some(error) => format!(
                    "[{session}] {n} statement{}, ended by {}",
                    plural(n),
                    recorded_error(error)
                ),
                None => format!("[{session}] {n} statement{}", plural(n)),
            }
        }
        "login_failed" => format!(
            "[{session}] user {} from {}: {}",
            text("user").unwrap_or("?"),
            p.pointer("/client/addr")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?"),
            text("reason").unwrap_or("?")
        ),
        "checkpoint" => format!(
            "signs seq {} with key {}",
            int("signed_seq").unwrap_or(0),
            text("key_id").unwrap_or("?")
        ),
        _ => text("message").unwrap_or("").to_owned(),
    };
    format!(
        "{} {} {} {} {} {} {detail}",
        audit::format_time(r.time()),
        r.node,
        r.seq,
        r.event,
        r.subject.as_deref().unwrap_or("-"),
        r.target.as_deref().unwrap_or("-")
    )
}

/// `side CODE: message` of a recorded error.
pub(crate) fn recorded_error(e: &serde_json::Value) -> String {
    let field = |k: &str| e.get(k).and_then(serde_json::Value::as_str);
    let mut s = field("side").unwrap_or("?").to_owned();
    if let Some(code) = field("code") {
        s.push(' ');
        s.push_str(code);
    }
    s.push_str(": ");
    s.push_str(&short_sql(field("message").unwrap_or("")));
    s
}

/// A statement on one line: whitespace runs become one space, and long text is cut at 100
/// characters.
pub(crate) fn short_sql(sql: &str) -> String {
    const MAX: usize = 100;
    let mut out = String::new();
    for (i, word) in sql.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() > MAX {
            break;
        }
    }
    if out.chars().count() > MAX {
        out = out.chars().take(MAX - 1).collect();
        out.push('…');
    }
    out
}

pub(crate) fn audit_keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    for path in std::iter::once(&args.out).chain(&args.public_out) {
        if path.exists() {
            bail!(
                "{} already exists; keygen never overwrites a key: choose another path or remove the file",
                path.display()
            );
        }
    }
    if args.public_out.as_ref() == Some(&args.out) {
        bail!("--out and --public-out name the same file");
    }
    let (private_pem, public_pem) =
        audit::generate_signing_key().context("cannot generate a signing key")?;
    let public = audit::parse_public_key(public_pem.as_bytes())?;
    let key_id = audit::signing::key_id(&public);
    audit::signing::write_new_file(&args.out, private_pem.as_bytes(), 0o600)
        .with_context(|| format!("cannot write the private key to {}", args.out.display()))?;
    eprintln!(
        "wrote the private key to {} (mode 0600): set `audit.signing_key_file` to it and keep it on the gateway only",
        args.out.display()
    );
    match &args.public_out {
        Some(path) => {
            audit::signing::write_new_file(path, public_pem.as_bytes(), 0o644)
                .with_context(|| format!("cannot write the public key to {}", path.display()))?;
            eprintln!(
                "wrote the public key to {}: give it to whoever runs `portcullis audit verify --public-key`",
                path.display()
            );
        }
        None => print!("{public_pem}"),
    }
    eprintln!("key id: {key_id}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit::parse_rfc3339;
    use std::time::Duration;

    #[test]
    fn a_session_line_names_the_login_user_when_it_is_not_the_subject() {
        let line = |user: &str| {
            let payload = format!(
                r#"{{"time":"2026-12-07T10:00:00.000000Z","node":"n","session_id":"s1","subject":"alice","target":"db","client":{{"addr":"127.0.0.1:5000","protocol":"postgres","tls":false,"application":null}},"event":"session_opened","user":"{user}","auth_method":"jwt","groups":["analyst"],"access":"read_only"}}"#
            );
            let r = audit::StoredRecord::seal(
                "n",
                1,
                audit::RecordKind::Event,
                audit::ChainHash::GENESIS,
                payload.into_bytes(),
            )
            .expect("seal");
            record_line(&r)
        };
        assert!(
            line("bob").contains("via jwt as user bob, groups: analyst"),
            "{}",
            line("bob")
        );
        assert!(
            line("alice").contains("via jwt, groups: analyst"),
            "{}",
            line("alice")
        );
    }

    #[test]
    fn reads_rfc3339_times() {
        let at = |text: &str| parse_rfc3339(text).map(audit::format_time);
        // One row per form: (input, expected UTC time or None, why).
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                "2025-01-31T12:00:00Z",
                Some("2025-01-31T12:00:00.000000Z"),
                "plain UTC",
            ),
            (
                "2025-01-31t12:00:00z",
                Some("2025-01-31T12:00:00.000000Z"),
                "lower-case separators",
            ),
            (
                "2025-01-31 12:00:00Z",
                Some("2025-01-31T12:00:00.000000Z"),
                "space separator",
            ),
            (
                "2025-01-31T12:00:00.123456789Z",
                Some("2025-01-31T12:00:00.123456Z"),
                "nanoseconds",
            ),
            (
                "2025-01-31T12:00:00.5Z",
                Some("2025-01-31T12:00:00.500000Z"),
                "short fraction",
            ),
            (
                "2025-01-31T14:30:00+02:30",
                Some("2025-01-31T12:00:00.000000Z"),
                "east of UTC",
            ),
            (
                "2025-01-31T02:00:00-10:00",
                Some("2025-01-31T12:00:00.000000Z"),
                "west of UTC",
            ),
            (
                "2024-02-29",
                Some("2024-02-29T00:00:00.000000Z"),
                "date only, leap day",
            ),
            (
                "2016-12-31T23:59:60Z",
                Some("2016-12-31T23:59:59.000000Z"),
                "leap second",
            ),
            ("2025-02-29", None, "no leap day in 2025"),
            ("2025-01-31T12:00:00", None, "no offset"),
            ("2025-01-31T24:00:00Z", None, "hour out of range"),
            ("2025-01-31T12:00:00.Z", None, "empty fraction"),
            ("2025-1-31", None, "month needs two digits"),
            ("yesterday", None, "not a time"),
        ];
        for (text, want, why) in cases {
            assert_eq!(at(text).as_deref(), *want, "{text}: {why}");
        }
    }

    #[test]
    fn time_arguments_take_durations_ago() {
        let t = parse_time_arg("2h").unwrap();
        let ago = SystemTime::now().duration_since(t).unwrap();
        assert!(
            ago >= Duration::from_secs(7200) && ago < Duration::from_secs(7300),
            "{ago:?}"
        );
        assert!(parse_time_arg("soon").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn shortens_statements() {
        assert_eq!(short_sql("select\n  1,\t2"), "select 1, 2");
        let long = format!("insert into t values ('{}')", "x".repeat(200));
        let short = short_sql(&long);
        assert_eq!(short.chars().count(), 100);
        assert!(short.ends_with('…'));
    }
}
