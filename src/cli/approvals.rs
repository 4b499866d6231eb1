//! `portcullis approvals` and `portcullis grants`: the admin API (`/api/v1` on the admin
//! listener) from the command line.
//!
//! Every command calls one route with `Authorization: Bearer <token>` and prints the answer as a
//! table or a summary, or with `--json` the API's JSON as it came. An answer other than 2xx is
//! an error: its message (`{"error": ...}`) goes to stderr and the exit status is 1. The token is
//! never printed, not even by `--help`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};

/// How long one call may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The longest statement text a list shows (in characters); `show` prints all of it.
const SQL_WIDTH: usize = 60;

#[derive(Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// List approval requests, newest first: every request for approvers and admins, one's own
    /// for everyone else.
    List(ListArgs),
    /// Show one request with all its fields and the approvals given so far.
    Show(ShowArgs),
    /// Approve a request (counts toward its quorum).
    Approve(DecideArgs),
    /// Deny a request.
    Deny(DecideArgs),
    /// Withdraw a request (its requester or an admin).
    Cancel(DecideArgs),
}

#[derive(Subcommand)]
pub(crate) enum GrantsCommand {
    /// List grants in force (with --all, also revoked and expired ones), newest first.
    List(GrantListArgs),
    /// Create a time-boxed grant (admins): SUBJECT may run, on TARGET, the statements of a
    /// fingerprint or those a rule holds, without a request.
    Create(CreateArgs),
    /// Revoke a grant in force at once (admins).
    Revoke(RevokeArgs),
}

/// Where the admin API is, who calls it, and how to print the answer.
#[derive(Args)]
pub(crate) struct ApiArgs {
    /// The admin listener's base URL: `http://` or, when `[admin]` has `tls_cert`, `https://`.
    #[arg(
        long,
        value_name = "URL",
        env = "PORTCULLIS_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    url: String,
    /// Bearer token: a JWT the gateway's [identity.jwt] accepts (the one you would use as a
    /// database password). Prefer the environment variable: a command line is visible to other
    /// users of the machine.
    #[arg(
        long,
        value_name = "JWT",
        env = "PORTCULLIS_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// With an https:// URL: the CA certificates (PEM) that the admin listener's certificate
    /// chains to. Default: the bundled Mozilla roots.
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_ADMIN_CA")]
    ca_file: Option<std::path::PathBuf>,
    /// Print the API's JSON answer as it came instead of a table or summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only requests in this state, or `all`.
    #[arg(long, default_value = "pending", value_parser = [
        "pending", "approved", "denied", "expired", "cancelled", "executed", "all",
    ])]
    state: String,
    /// At most this many (the API's default is 100, its maximum 1000).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
}

#[derive(Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The request's id (`apr_...`).
    #[arg(value_name = "ID")]
    id: String,
}

#[derive(Args)]
pub(crate) struct DecideArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The request's id (`apr_...`).
    #[arg(value_name = "ID")]
    id: String,
    /// Why: required when the request's rule requires reasons, and for a break-glass approval of
    /// one's own request.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

#[derive(Args)]
pub(crate) struct GrantListArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Also grants that were revoked or have expired.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
#[command(group(ArgGroup::new("covers").required(true).multiple(true).args(["fingerprint", "rule"])))]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Who may run the statements (a subject).
    #[arg(long, value_name = "SUBJECT")]
    subject: String,
    /// On which target (its name).
    #[arg(long, value_name = "TARGET")]
    target: String,
    /// Statements of this fingerprint (as shown by `approvals show` and in audit records).
    #[arg(long, value_name = "FINGERPRINT")]
    fingerprint: Option<String>,
    /// Statements this require-approval rule holds.
    #[arg(long, value_name = "RULE")]
    rule: Option<String>,
    /// For how long, e.g. 30m or 2h (at most 24h).
    #[arg(long, value_name = "DURATION")]
    duration: String,
    /// Why (recorded in the audit trail).
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

#[derive(Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The grant's id (`grt_...`).
    #[arg(value_name = "ID")]
    id: String,
}

pub(crate) fn approvals(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalsCommand::List(args) => {
            let mut query = Vec::new();
            if args.state != "all" {
                query.push(("state", args.state.clone()));
            }
            if let Some(limit) = args.limit {
                query.push(("limit", limit.to_string()));
            }
            let answer =
                Client::new(&args.api)?.call(Call::Get, "/api/v1/approvals", &query, None)?;
            print_answer(&args.api, &answer, |v| {
                let requests = list(v, "requests")?;
                if requests.is_empty() {
                    return Ok(match args.state.as_str() {
                        "all" => "no requests\n".to_owned(),
                        state => format!("no {state} requests\n"),
                    });
                }
                Ok(requests_table(requests))
            })
        }
        ApprovalsCommand::Show(args) => {
            let answer = Client::new(&args.api)?.call(
                Call::Get,
                &request_path(&args.id, None),
                &[],
                None,
            )?;
            print_answer(&args.api, &answer, show_request)
        }
        ApprovalsCommand::Approve(args) => decide(args, "approve"),
        ApprovalsCommand::Deny(args) => decide(args, "deny"),
        ApprovalsCommand::Cancel(args) => decide(args, "cancel"),
    }
}

pub(crate) fn grants(command: GrantsCommand) -> anyhow::Result<ExitCode> {
    match command {
        GrantsCommand::List(args) => {
            let query = if args.all {
                vec![("all", "true".to_owned())]
            } else {
                Vec::new()
            };
            let answer = Client::new(&args.api)?.call(Call::Get, "/api/v1/grants", &query, None)?;
            print_answer(&args.api, &answer, |v| {
                let grants = list(v, "grants")?;
                if grants.is_empty() {
                    return Ok(if args.all {
                        "no grants\n".to_owned()
                    } else {
                        "no grants in force\n".to_owned()
                    });
                }
                Ok(grants_table(grants))
            })
        }
        GrantsCommand::Create(args) => {
            let body = json!({
                "subject": args.subject,
                "target": args.target,
                "fingerprint": args.fingerprint,
                "rule": args.rule,
                "duration": args.duration,
                "reason": args.reason,
            });
            let answer =
                Client::new(&args.api)?.call(Call::Post, "/api/v1/grants", &[], Some(body))?;
            print_answer(&args.api, &answer, |g| {
                Ok(format!(
                    "created grant {}: {} may run {} on {} until {}\n",
                    text(g, "id"),
                    text(g, "subject"),
                    covers(g),
                    text(g, "target"),
                    time(g, "expires"),
                ))
            })
        }
        GrantsCommand::Revoke(args) => {
            let path = format!("/api/v1/grants/{}", segment(&args.id));
            let answer = Client::new(&args.api)?.call(Call::Delete, &path, &[], None)?;
            print_answer(&args.api, &answer, |g| {
                let uses = g["uses"].as_u64().unwrap_or(0);
                Ok(format!(
                    "revoked grant {} ({} on {}; used {uses} time{})\n",
                    text(g, "id"),
                    text(g, "subject"),
                    text(g, "target"),
                    if uses == 1 { "" } else { "s" },
                ))
            })
        }
    }
}

/// `approve`, `deny` or `cancel`: POST `/api/v1/approvals/{id}/{action}` with the reason.
fn decide(args: DecideArgs, action: &str) -> anyhow::Result<ExitCode> {
    let body = args
        .reason
        .as_ref()
        .map(|reason| json!({ "reason": reason }));
    let path = request_path(&args.id, Some(action));
    let answer = Client::new(&args.api)?.call(Call::Post, &path, &[], body)?;
    print_answer(&args.api, &answer, |r| {
        let mut out = format!("request {} is {}", text(r, "id"), text(r, "state"));
        let given = r["approvals"].as_array().map_or(0, Vec::len);
        if r["state"] == "pending" {
            let _ = write!(
                out,
                " ({given} of {} approvals)",
                r["quorum"].as_u64().unwrap_or(0)
            );
        }
        out.push('\n');
        Ok(out)
    })
}

/// What the API answered: the body of a 2xx response.
struct Answer {
    text: String,
}

/// Prints `answer`: as it came with `--json`, else through `render`.
fn print_answer(
    api: &ApiArgs,
    answer: &Answer,
    render: impl FnOnce(&Value) -> anyhow::Result<String>,
) -> anyhow::Result<ExitCode> {
    if api.json {
        println!("{}", answer.text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let value: Value = serde_json::from_str(&answer.text)
        .context("the admin API answered with something other than JSON")?;
    print!("{}", render(&value)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy)]
enum Call {
    Get,
    Post,
    Delete,
}

/// A client of one gateway's admin API.
struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

impl Client {
    fn new(api: &ApiArgs) -> anyhow::Result<Self> {
        let base = api.url.trim().trim_end_matches('/').to_owned();
        let scheme_len = if base.starts_with("https://") {
            "https://".len()
        } else if base.starts_with("http://") {
            "http://".len()
        } else {
            0
        };
        if scheme_len == 0 || base.len() == scheme_len {
            bail!("--url {base:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:9090)");
        }
        // Verified against `--ca-file`, else the bundled Mozilla roots; the provider is passed
        // explicitly (rustls is built with aws-lc-rs only).
        let mut tls = ureq::tls::TlsConfig::builder().unversioned_rustls_crypto_provider(
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        );
        if let Some(ca) = &api.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("--ca-file {}", ca.display()))?;
            let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if roots.is_empty() {
                bail!("--ca-file {}: no PEM certificate in it", ca.display());
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)));
        }
        let token = api.token.trim();
        if token.is_empty() {
            bail!("the token is empty: pass --token or set PORTCULLIS_TOKEN");
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Self {
            agent,
            base,
            authorization: format!("Bearer {token}"),
        })
    }

    /// Calls `path` and returns the body of a 2xx answer; any other answer is an error with the
    /// API's message.
    fn call(
        &self,
        method: Call,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let auth = self.authorization.as_str();
        let result = match method {
            Call::Get => self
                .agent
                .get(&url)
                .header("authorization", auth)
                .query_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
                .call(),
            Call::Delete => self.agent.delete(&url).header("authorization", auth).call(),
            Call::Post => {
                let request = self.agent.post(&url).header("authorization", auth);
                match body {
                    Some(body) => request
                        .content_type("application/json")
                        .send(body.to_string()),
                    None => request.send_empty(),
                }
            }
        };
        let mut response = result.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("cannot read the admin API's answer from {}", self.base))?;
        if status.is_success() {
            return Ok(Answer { text });
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        let code = status.as_u16();
        match message {
            Some(message) => bail!("{message} (HTTP {code})"),
            None if code == 404 => bail!(
                "{} has no admin API (HTTP 404 for {path}): is this the gateway's [admin] listener, with [approvals] configured?",
                self.base
            ),
            None => {
                let text = text.trim();
                let reason = status.canonical_reason().unwrap_or("error");
                if text.is_empty() {
                    bail!("the admin API answered HTTP {code} {reason}")
                } else {
                    bail!("{text} (HTTP {code} {reason})")
                }
            }
        }
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Timeout(_) => anyhow::anyhow!(
                "the admin API at {} did not answer within {}s",
                self.base,
                TIMEOUT.as_secs()
            ),
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                anyhow::anyhow!(
                    "cannot reach the admin API at {} ({e}): is the gateway running with an [admin] listener there? Set --url or PORTCULLIS_ADMIN_URL to its address",
                    self.base
                )
            }
            e => anyhow::anyhow!("calling the admin API at {} failed: {e}", self.base),
        }
    }
}

/// `/api/v1/approvals/{id}` or `/api/v1/approvals/{id}/{action}`.
fn request_path(id: &str, action: Option<&str>) -> String {
    let mut path = format!("/api/v1/approvals/{}", segment(id));
    if let Some(action) = action {
        path.push('/');
        path.push_str(action);
    }
    path
}

/// `text` as one URL path segment: letters, digits, `-`, `_` and `~` as they are, everything
/// else percent-encoded (ids are `apr_`/`grt_` and letters and digits; whatever else is typed
/// stays one segment, never `..`).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn list<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a Vec<Value>> {
    v[key]
        .as_array()
        .with_context(|| format!("the admin API's answer has no `{key}` list"))
}

/// A string field, or `-` when absent or null.
fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

/// A time field as `2025-01-31 12:00:00Z` (seconds, UTC), or `-`.
fn time(v: &Value, key: &str) -> String {
    match v[key].as_str() {
        Some(t) => short_time(t),
        None => "-".to_owned(),
    }
}

fn short_time(t: &str) -> String {
    // RFC 3339 with microseconds in UTC: `2025-01-31T12:00:00.123456Z`.
    match (t.get(..19), t.ends_with('Z')) {
        (Some(head), true) => format!("{}Z", head.replacen('T', " ", 1)),
        _ => t.to_owned(),
    }
}

/// The statement on one line, at most `width` characters.
fn one_line(sql: &str, width: usize) -> String {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= width {
        return flat;
    }
    let mut cut: String = flat.chars().take(width.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

/// Rows under a header, columns padded to their widest cell; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}

fn requests_table(requests: &[Value]) -> String {
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            vec![
                text(r, "id").to_owned(),
                text(r, "state").to_owned(),
                text(r, "subject").to_owned(),
                text(r, "target").to_owned(),
                text(r, "rule").to_owned(),
                time(r, "created"),
                one_line(text(r, "sql"), SQL_WIDTH),
            ]
        })
        .collect();
    table(
        &["ID", "STATE", "SUBJECT", "TARGET", "RULE", "CREATED", "SQL"],
        &rows,
    )
}

/// What a grant covers: `rule R`, `fingerprint F`, or both.
fn covers(g: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(rule) = g["rule"].as_str() {
        parts.push(format!("statements held by rule {rule}"));
    }
    if let Some(f) = g["fingerprint"].as_str() {
        parts.push(format!("statements of fingerprint {f}"));
    }
    parts.join(" and ")
}

fn grants_table(grants: &[Value]) -> String {
    let now = gateway_core::Rfc3339Micros::new(SystemTime::now());
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            // Same format, both UTC: comparing the text compares the times.
            let state = if !g["revoked"].is_null() {
                "revoked"
            } else if g["expires"].as_str().is_some_and(|e| e <= now.as_str()) {
                "expired"
            } else {
                "in force"
            };
            vec![
                text(g, "id").to_owned(),
                state.to_owned(),
                text(g, "subject").to_owned(),
                text(g, "target").to_owned(),
                text(g, "rule").to_owned(),
                text(g, "fingerprint").to_owned(),
                time(g, "expires"),
                g["uses"].as_u64().unwrap_or(0).to_string(),
                text(g, "created_by").to_owned(),
                one_line(text(g, "reason"), SQL_WIDTH),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "SUBJECT",
            "TARGET",
            "RULE",
            "FINGERPRINT",
            "EXPIRES",
            "USES",
            "CREATED BY",
            "REASON",
        ],
        &rows,
    )
}

/// Every field of a request, one per line, then its approvals.
fn show_request(r: &Value) -> anyhow::Result<String> {
    if !r["id"].is_string() {
        bail!("the admin API's answer is not a request");
    }
    let groups = r["groups"]
        .as_array()
        .map(|g| strings(g).join(", "))
        .unwrap_or_default();
    let approvers = r["approvers"]
        .as_array()
        .map(|g| strings(g).join(", "))
        .unwrap_or_default();
    let yes_no = |key: &str| if r[key] == true { "yes" } else { "no" };
    let parameters = match &r["parameters"] {
        Value::Null => "-".to_owned(),
        p => p.to_string(),
    };
    let fields: Vec<(&str, String)> = vec![
        ("id", text(r, "id").to_owned()),
        ("state", text(r, "state").to_owned()),
        ("subject", text(r, "subject").to_owned()),
        ("groups", groups),
        ("target", text(r, "target").to_owned()),
        ("rule", text(r, "rule").to_owned()),
        ("message", text(r, "message").to_owned()),
        ("created", time(r, "created")),
        ("expires", time(r, "expires")),
        ("node", text(r, "node").to_owned()),
        ("session", text(r, "session_id").to_owned()),
        (
            "statement",
            r["statement_id"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ),
        ("fingerprint", text(r, "fingerprint").to_owned()),
        ("parameters", parameters),
        ("binding", text(r, "binding").to_owned()),
        ("approvers", approvers),
        ("quorum", r["quorum"].as_u64().unwrap_or(0).to_string()),
        ("reason required", yes_no("require_reason").to_owned()),
        ("decided by", text(r, "decided_by").to_owned()),
        ("decision reason", text(r, "decision_reason").to_owned()),
        ("executed", time(r, "executed")),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in &fields {
        let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"));
    }
    out.push_str("sql:\n");
    for line in text(r, "sql").lines() {
        let _ = writeln!(out, "    {line}");
    }
    let votes = r["approvals"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let _ = writeln!(
        out,
        "{:<width$} {} of {}",
        "approvals:",
        votes.len(),
        r["quorum"].as_u64().unwrap_or(0)
    );
    for v in votes {
        let _ = write!(out, "    {} at {}", text(v, "approver"), time(v, "time"));
        if v["break_glass"] == true {
            out.push_str(" (break glass)");
        }
        if let Some(reason) = v["reason"].as_str() {
            let _ = write!(out, ": {reason}");
        }
        out.push('\n');
    }
    Ok(out)
}

fn strings(values: &[Value]) -> Vec<&str> {
    values.iter().filter_map(Value::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_shown_on_one_line_and_cut() {
        assert_eq!(one_line("select\n  1", 60), "select 1");
        let long = "x".repeat(100);
        let cut = one_line(&long, 60);
        assert_eq!(cut.chars().count(), 60);
        assert!(cut.ends_with("..."));
        assert_eq!(one_line(&"é".repeat(61), 60).chars().count(), 60);
    }

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(segment("apr_k3m9x2qpz7wd"), "apr_k3m9x2qpz7wd");
        assert_eq!(segment("../x y"), "%2E%2E%2Fx%20y");
    }

    #[test]
    fn times_are_shortened_to_seconds() {
        assert_eq!(
            short_time("2025-01-31T12:00:00.123456Z"),
            "2025-01-31 12:00:00Z"
        );
        assert_eq!(short_time("soon"), "soon");
    }

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let t = table(
            &["A", "B"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(t, "A     B\nlong  x\ns     y\n");
    }
}
