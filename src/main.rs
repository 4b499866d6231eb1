//! The `portcullis` command line: run a gateway, check a configuration, hash a password for a
//! static user, mint a development token.
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
    /// Run the gateway until Ctrl-C or SIGTERM.
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
        let signal = shutdown_signal().await?;
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

/// Waits for Ctrl-C or, on Unix, SIGTERM; returns the signal's name.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("cannot listen for Ctrl-C"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        Ok("Ctrl-C")
    }
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
