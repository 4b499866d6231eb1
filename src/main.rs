//! The `portcullis` command line: run a gateway, check a configuration, explain what the policy
//! makes of a statement, hash a password for a static user, mint a development token, verify,
//! read and key the audit trail, and decide approval requests and manage grants through a
//! running gateway's admin API.
//!
//! Exit codes: 0 success; 1 the command failed (invalid configuration, unreadable file, listener
//! could not start, ...); 2 the command line itself is wrong. `audit verify` is the exception
//! scripts rely on: 0 every chain verifies, 1 a chain does not verify or the sink holds no records,
//! 2 the trail could not be checked (sink, configuration or key unreadable).

use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use portcullis::telemetry::log_filter;
use portcullis::{Config, Server, Telemetry};

mod cli;

use cli::approvals::*;
use cli::audit::*;
use cli::policy::*;
use cli::token::*;

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
    /// Check a configuration file and print every problem in it as `file:line:col: message`:
    /// what `run` would refuse, including unset variables and unreadable certificate and key
    /// files.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(
            value_name = "FILE",
            conflicts_with = "config",
            required_unless_present = "config"
        )]
        file: Option<PathBuf>,
        /// Configuration file (TOML), as for `run`.
        #[arg(short, long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
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
    /// The audit trail: verify it, read it, make its signing key.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Approval requests of a running gateway (its admin API): list, show and decide them.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Time-boxed grants of a running gateway (its admin API): list, create and revoke them.
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Sample every column of a target with the masking detectors and print suggested
    /// `[[masking.rules]]` and `[[masking.detectors]]` in the configuration's own syntax.
    Discover(DiscoverArgs),
}

#[derive(Args)]
struct DiscoverArgs {
    /// Configuration file (TOML) naming the target.
    #[arg(short, long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    config: PathBuf,
    /// The target to sample, by name.
    #[arg(short, long, value_name = "NAME")]
    target: String,
    /// Non-NULL values sampled per column.
    #[arg(long, value_name = "N", default_value_t = 200)]
    sample: usize,
}

fn main() -> ExitCode {
    portcullis::memory::return_freed_memory_to_the_os();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { file, config } => match file.or(config) {
            Some(file) => return check_config(&file),
            None => Err(anyhow::anyhow!(
                "check-config needs a configuration file: `portcullis check-config FILE`, `--config FILE` or PORTCULLIS_CONFIG"
            )),
        },
        Command::HashPassword => hash_password(),
        Command::Token {
            command: TokenCommand::Mint(args),
        } => mint(args),
        Command::Policy {
            command: PolicyCommand::Explain(args),
        } => explain(args),
        Command::Discover(args) => discover(&args),
        Command::Approvals { command } => approvals(command),
        Command::Grants { command } => grants(command),
        Command::Audit { command } => match command {
            AuditCommand::Verify(args) => return audit_verify(&args),
            AuditCommand::Tail(args) => audit_tail(&args),
            AuditCommand::Search(args) => audit_search(&args),
            AuditCommand::Keygen(args) => audit_keygen(&args),
        },
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
    if config.postgres.is_none() && config.mysql.is_none() {
        bail!(
            "{} configures no listener: add a [postgres] section (e.g. listen = \"127.0.0.1:6432\") or a [mysql] section (e.g. listen = \"127.0.0.1:3307\")",
            config_path.display()
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The export pipeline runs on the runtime, and its layer must be in the subscriber before
    // the first span.
    let telemetry = match &config.telemetry {
        Some(settings) => {
            let _runtime = runtime.enter();
            Some(Telemetry::start(settings, &config.gateway.node)?)
        }
        None => None,
    };
    init_tracing(&config.gateway.log_level, telemetry.as_ref())?;
    runtime.block_on(async move {
        let node = config.gateway.node.clone();
        if let Some(t) = &telemetry {
            tracing::info!(endpoint = t.endpoint(), "exporting traces over OTLP/HTTP");
        }
        let server = Server::start_with_telemetry(config, telemetry.clone()).await?;
        if let Some(addr) = server.postgres_addr() {
            tracing::info!(%addr, node = %node, "PostgreSQL listener ready");
        }
        if let Some(addr) = server.mysql_addr() {
            tracing::info!(%addr, node = %node, "MySQL listener ready");
        }
        let signal = wait_for_shutdown(&server).await?;
        tracing::info!(signal, "shutting down");
        server.shutdown().await;
        // Already stopped by the server's shutdown; this catches nothing but is cheap, and keeps
        // the last spans safe should the server ever stop differently.
        if let Some(t) = &telemetry {
            t.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Logs to stderr, filtered by `RUST_LOG` when set, else by the configured `log_level` (the
/// per-statement spans stay off unless the filter names them, see
/// [`portcullis::telemetry::log_filter`]); with trace export, its layer sits beside the log layer
/// with its own filter.
fn init_tracing(log_level: &str, telemetry: Option<&Telemetry>) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => log_filter(&directives)
            .with_context(|| format!("RUST_LOG={directives:?} is not a valid log filter"))?,
        _ => log_filter(log_level)
            .with_context(|| format!("log_level {log_level:?} is not a valid log filter"))?,
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    // Two shapes rather than an `Option` layer: a `None` layer answers "always interested" for
    // every callsite, which would turn the disabled per-statement spans back on in the registry.
    let installed = match telemetry {
        Some(t) => tracing_subscriber::registry()
            .with(log)
            .with(t.layer())
            .try_init(),
        None => tracing_subscriber::registry().with(log).try_init(),
    };
    installed.context("cannot install the log subscriber")?;
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

fn discover(args: &DiscoverArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let findings = runtime.block_on(portcullis::discover::discover(
        &config,
        &args.target,
        args.sample.max(1),
    ))?;
    print!("{}", portcullis::discover::render(&args.target, &findings));
    Ok(ExitCode::SUCCESS)
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
