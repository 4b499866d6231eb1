//! The `portcullis` command line: run a gateway, check a configuration, explain what the policy
//! makes of a statement, hash a password for a static user, mint a development token.
//!
//! Exit codes: 0 success; 1 the command failed (invalid configuration, unreadable file, listener
//! could not start, ...); 2 the command line itself is wrong.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use portcullis::config::parse_duration;
use portcullis::{Config, Server};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Identity-aware gateway for PostgreSQL and MySQL",
    after_help = "Exit codes: 0 success, 1 the command failed, 2 invalid command line."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until Ctrl-C or SIGTERM; SIGHUP reloads `[policy]` from the file.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file and print every problem in it as `file:line:col: message`.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Hash a password for `[[identity.users]]` and print the PHC string. The password is read
    /// from the terminal without echo, or from the first line of standard input.
    HashPassword,
    /// Development and test tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The policy: see what it decides without running anything.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the access decision, the analysis of each statement and the verdict with its rule,
    /// for an identity on a target. Exits 0 whatever the verdict.
    Explain(ExplainArgs),
}

#[derive(Args)]
struct ExplainArgs {
    /// Configuration file (TOML) with a `[policy]` section.
    #[arg(short, long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    config: PathBuf,
    /// Subject of the identity.
    #[arg(long = "as", value_name = "SUBJECT")]
    subject: String,
    /// Groups of the identity, comma-separated.
    #[arg(long, value_name = "GROUP,...", value_delimiter = ',')]
    groups: Vec<String>,
    /// Target name (the database name clients ask for).
    #[arg(long, value_name = "NAME")]
    target: String,
    /// The target's protocol, when targets of both protocols share the name.
    #[arg(long, value_parser = ["postgres", "mysql"])]
    protocol: Option<String>,
    /// Schema (PostgreSQL) or database (MySQL) that unqualified names resolve to.
    #[arg(long, value_name = "SCHEMA")]
    default_schema: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The statement text (may hold several statements).
    #[arg(value_name = "SQL")]
    sql: String,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a JWT with an explicit key file and print it.
    Mint(MintArgs),
}

#[derive(Args)]
struct MintArgs {
    /// Key file: the shared secret for HS256 (surrounding whitespace ignored), or a PEM private
    /// key for the other algorithms.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Signature algorithm.
    #[arg(long, default_value = "HS256", value_parser = [
        "HS256", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ])]
    alg: String,
    /// Subject (`sub`).
    #[arg(long, value_name = "SUBJECT")]
    sub: String,
    /// Groups, comma-separated (`groups`).
    #[arg(long, value_name = "GROUP,...", value_delimiter = ',')]
    groups: Vec<String>,
    /// Issuer (`iss`).
    #[arg(long, value_name = "ISSUER")]
    iss: Option<String>,
    /// Audience (`aud`).
    #[arg(long, value_name = "AUDIENCE")]
    aud: Option<String>,
    /// Lifetime, e.g. 15m, 1h, 1d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Key id header (`kid`), to pick a key from a JWKS.
    #[arg(long)]
    kid: Option<String>,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("the lifetime must be longer than zero".to_owned()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { file } => return check_config(&file),
        Command::HashPassword => hash_password(),
        Command::Token {
            command: TokenCommand::Mint(args),
        } => mint(args),
        Command::Policy {
            command: PolicyCommand::Explain(args),
        } => explain(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.errors().len();
            if errors.errors().iter().all(|e| e.location.is_none()) {
                return Ok(ExitCode::FAILURE);
            }
            eprintln!(
                "portcullis: {} has {n} problem{}; fix {} and start again",
                config_path.display(),
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "them" },
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    init_tracing(&config.gateway.log_level)?;
    if config.postgres.is_none() {
        bail!(
            "{} configures no listener: add a [postgres] section (e.g. listen = \"127.0.0.1:6432\")",
            config_path.display()
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let node = config.gateway.node.clone();
        let server = Server::start(config).await?;
        if let Some(addr) = server.postgres_addr() {
            tracing::info!(%addr, node = %node, "PostgreSQL listener ready");
        }
        let signal = wait_for_shutdown(&server).await?;
        tracing::info!(signal, "shutting down");
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Logs to stderr, filtered by `RUST_LOG` when set, else by the configured `log_level`.
fn init_tracing(log_level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .with_context(|| format!("RUST_LOG={directives:?} is not a valid log filter"))?,
        _ => EnvFilter::try_new(log_level)
            .with_context(|| format!("log_level {log_level:?} is not a valid log filter"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

/// Waits for Ctrl-C or, on Unix, SIGTERM, and returns the signal's name; on Unix, reloads the
/// policy on every SIGHUP meanwhile (errors are logged by the reload itself, and the running
/// policy stays).
async fn wait_for_shutdown(server: &portcullis::RunningServer) -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r.map(|()| "SIGINT").context("cannot listen for Ctrl-C"),
                _ = term.recv() => return Ok("SIGTERM"),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = tokio::task::block_in_place(|| server.reload());
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = server;
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
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

fn render_explanation(
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

fn render_verdict(v: &gateway_core::Verdict) -> String {
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

fn hash_password() -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ")
            .context("cannot read the password from the terminal")?;
        let again = rpassword::prompt_password("Repeat password: ")
            .context("cannot read the password from the terminal")?;
        if first != again {
            bail!("the two passwords differ; nothing was hashed, try again");
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        line.strip_suffix('\r').unwrap_or(line).to_owned()
    };
    if password.is_empty() {
        bail!("the password is empty: type it at the prompt, or pipe it in (e.g. `portcullis hash-password < file`)");
    }
    let hash = identity::hash_password(&password).context("cannot hash the password")?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

fn mint(args: MintArgs) -> anyhow::Result<ExitCode> {
    let key_bytes = std::fs::read(&args.key)
        .with_context(|| format!("cannot read the key file {}", args.key.display()))?;
    let looks_like_pem = key_bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let key = if args.alg == "HS256" {
        if looks_like_pem {
            bail!(
                "{} holds a PEM key, not a shared secret: pass --alg with the key's algorithm (RS256, ES256, EdDSA, ...)",
                args.key.display()
            );
        }
        let text = String::from_utf8(key_bytes).map_err(|_| {
            anyhow::anyhow!(
                "{} is not UTF-8 text; for HS256 it must hold the shared secret",
                args.key.display()
            )
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            bail!(
                "{} is empty; for HS256 it must hold the shared secret",
                args.key.display()
            );
        }
        identity::MintKey::Hs256(secret.to_owned())
    } else {
        if !looks_like_pem {
            bail!(
                "{} is not a PEM private key; --alg {} needs one (for a shared secret use --alg HS256)",
                args.key.display(),
                args.alg
            );
        }
        identity::MintKey::PrivateKeyPem {
            alg: args.alg.clone(),
            pem: key_bytes,
        }
    };
    let request = identity::MintRequest {
        key,
        issuer: args.iss,
        audience: args.aud,
        subject: args.sub,
        groups: args
            .groups
            .into_iter()
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect(),
        ttl: args.ttl,
        not_before: None,
        kid: args.kid,
        extra: serde_json::Map::new(),
    };
    let token = identity::mint_token(&request)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
