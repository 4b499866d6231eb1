//! `portcullis policy explain`: what the policy makes of a statement, without running it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use portcullis::Config;

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print the access decision, the analysis of each statement and the verdict with its rule,
    /// for an identity on a target. Exits 0 whatever the verdict.
    Explain(ExplainArgs),
}

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// Configuration file (TOML) with a `[policy]` section.
    #[arg(short, long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    pub(crate) config: PathBuf,
    /// Subject of the identity.
    #[arg(long = "as", value_name = "SUBJECT")]
    pub(crate) subject: String,
    /// Groups of the identity, comma-separated.
    #[arg(long, value_name = "GROUP,...", value_delimiter = ',')]
    pub(crate) groups: Vec<String>,
    /// Target name (the database name clients ask for).
    #[arg(long, value_name = "NAME")]
    pub(crate) target: String,
    /// The target's protocol, when targets of both protocols share the name.
    #[arg(long, value_parser = ["postgres", "mysql"])]
    pub(crate) protocol: Option<String>,
    /// Schema (PostgreSQL) or database (MySQL) that unqualified names resolve to.
    #[arg(long, value_name = "SCHEMA")]
    pub(crate) default_schema: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// The statement text (may hold several statements).
    #[arg(value_name = "SQL")]
    pub(crate) sql: String,
}

pub(crate) fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    use gateway_core::{AuthMethod, Identity, Protocol, SqlSettings};

    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(rules) = config.policy.clone() else {
        bail!(
            "{} has no [policy] section: without one every authenticated identity may run anything on every target",
            args.config.display()
        );
    };
    let protocol = match args.protocol.as_deref() {
        Some("mysql") => Some(Protocol::Mysql),
        Some(_) => Some(Protocol::Postgres),
        None => None,
    };
    let candidates: Vec<&gateway_core::Target> = config
        .targets
        .iter()
        .filter(|t| t.name == args.target && protocol.is_none_or(|p| t.protocol == p))
        .collect();
    let target = match candidates.as_slice() {
        [one] => *one,
        [] => bail!(
            "{} has no target named `{}`{}",
            args.config.display(),
            args.target,
            protocol.map(|p| format!(" for protocol {}", p.as_str())).unwrap_or_default()
        ),
        _ => bail!(
            "targets of both protocols are named `{}`: pass --protocol postgres or --protocol mysql",
            args.target
        ),
    };
    let identity = Identity {
        subject: args.subject.clone(),
        groups: args
            .groups
            .iter()
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect(),
        auth_method: AuthMethod::Jwt,
        claims: Default::default(),
    };
    let settings = SqlSettings {
        default_schema: args.default_schema.as_deref().map(std::sync::Arc::from),
        ..SqlSettings::default()
    };
    let engine = policy::RuleEngine::new(rules);
    let explanation = engine.explain(&identity, target, &settings, &args.sql);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", render_explanation(&identity, target, &explanation));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn render_explanation(
    identity: &gateway_core::Identity,
    target: &gateway_core::Target,
    e: &policy::Explanation,
) -> String {
    use std::fmt::Write as _;
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "identity: {} (groups: {})",
        identity.subject,
        list(identity.groups.clone())
    );
    let _ = writeln!(
        out,
        "target:   {} ({})",
        target.name,
        target.protocol.as_str()
    );
    match (e.access.mode, &e.access.rule) {
        (Some(mode), Some(rule)) => {
            let mode = match mode {
                gateway_core::Access::ReadOnly => "read-only",
                gateway_core::Access::ReadWrite => "read-write",
            };
            let _ = writeln!(out, "access:   {mode} (rule \"{rule}\")");
        }
        _ => {
            let _ = writeln!(
                out,
                "access:   refused: {}",
                e.access
                    .reason
                    .as_deref()
                    .unwrap_or("no access rule admits this identity")
            );
        }
    }
    if let Some(failure) = &e.failure {
        let at = failure
            .position
            .map(|p| format!(" at position {p}"))
            .unwrap_or_default();
        let _ = writeln!(out, "parse:    failed: {}{at}", failure.message);
    }
    for (i, s) in e.statements.iter().enumerate() {
        let f = &s.facts;
        let _ = writeln!(out, "statement {}: {}", i + 1, s.classification);
        let _ = writeln!(out, "  class:     {}", f.class);
        let _ = writeln!(out, "  kinds:     {}", list(f.kinds.clone()));
        let _ = writeln!(
            out,
            "  reads:     {}",
            list(f.reads.iter().map(ToString::to_string).collect())
        );
        let _ = writeln!(
            out,
            "  writes:    {}",
            list(f.writes.iter().map(ToString::to_string).collect())
        );
        let _ = writeln!(out, "  functions: {}", list(f.functions.clone()));
        let filter = match f.filter {
            None => "-",
            Some(policy::facts::Filter::Absent) => "absent",
            Some(policy::facts::Filter::Trivial) => "trivial (always true)",
            Some(policy::facts::Filter::Present) => "present",
        };
        let _ = writeln!(out, "  filter:    {filter}");
        let _ = writeln!(out, "  verdict:   {}", render_verdict(&s.verdict));
    }
    let _ = writeln!(out, "verdict:  {}", render_verdict(&e.verdict));
    out
}

pub(crate) fn render_verdict(v: &gateway_core::Verdict) -> String {
    let decision = match v.decision {
        gateway_core::Decision::Allow => "allow",
        gateway_core::Decision::Deny => "deny",
        gateway_core::Decision::NeedsApproval => "require-approval",
    };
    let mut s = decision.to_owned();
    if let Some(rule) = &v.rule {
        s.push_str(&format!(" (rule \"{rule}\")"));
    }
    if let Some(reason) = &v.reason {
        s.push_str(&format!(": {reason}"));
    }
    s
}
