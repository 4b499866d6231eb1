//! Embedding Portcullis: a PostgreSQL gateway built in your own service from the library crates,
//! without the `portcullis` binary or its TOML configuration.
//!
//! What it wires, in the order a connection meets it:
//! - [`proto_postgres::PostgresListener`] speaks the PostgreSQL wire protocol to clients (psql,
//!   pgbench, drivers) and drives the core's phases for every session and statement;
//! - [`identity::IdentityChain`] is the [`gateway_core::Authenticator`]: clients log in with an
//!   HS256 JWT in the password field. Any `Authenticator` implementation fits here (your own token
//!   check, a lookup in your user store);
//! - one [`gateway_core::Target`]: the PostgreSQL the clients reach, with service credentials they
//!   never see;
//! - the policy: allow-all by default, or a [`policy::RuleEngine`] with `--policy FILE`, a TOML
//!   file whose only table is `[policy]` (`examples/embedded-policy.toml`, rules in
//!   `docs/policy.md`);
//! - the audit sink: the built-in [`gateway_core::LogAuditSink`], which turns every record into an
//!   INFO event on the `portcullis::audit` log target. With `RUST_LOG=warn` records are not even
//!   serialized: that is "audit off", as `bench/pgbench.sh` measures it. For the tamper-evident
//!   trail, give the builder an `audit::AuditLog` (`.audit(...)`), as the binary does.
//!
//! The process serves until Ctrl-C or SIGTERM, then stops accepting, lets every session finish
//! what the database still owes it (SQLSTATE 57P01 for the client afterwards) and exits.
//!
//! Run it in front of the local PostgreSQL (127.0.0.1:5432, user postgres, trust):
//!
//! ```sh
//! cargo run --release --example embedded -- --jwt-secret-file examples/dev-jwt-secret
//! PGPASSWORD=$(cargo run -q -- token mint --key examples/dev-jwt-secret \
//!     --iss portcullis-dev --aud portcullis --sub alice) \
//!   psql "host=127.0.0.1 port=6432 dbname=postgres user=alice"
//! ```
//!
//! `tests/embedded_example.rs` includes this file and runs it against the real PostgreSQL.

use std::future::Future;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use gateway_core::{Gateway, Protocol, Target, Targets, UpstreamTls, Workers};
use identity::{IdentityChain, JwtAuthenticator, JwtConfig, JwtKeySource};
use policy::{RuleEngine, RuleSet};
use proto_postgres::{ListenerConfig, PostgresListener};

/// Everything the example is told, as flags or environment variables.
#[derive(Parser)] // No `Debug`: it would print the upstream password.
#[command(about = "A PostgreSQL gateway embedded from gateway-core and proto-postgres")]
pub struct Args {
    /// Address clients connect to (port 0 picks a free port).
    #[arg(long, env = "EMBEDDED_LISTEN", default_value = "127.0.0.1:6432")]
    pub listen: SocketAddr,
    /// Upstream PostgreSQL host.
    #[arg(long, env = "EMBEDDED_UPSTREAM_HOST", default_value = "127.0.0.1")]
    pub upstream_host: String,
    /// Upstream PostgreSQL port.
    #[arg(long, env = "EMBEDDED_UPSTREAM_PORT", default_value_t = 5432)]
    pub upstream_port: u16,
    /// The database name clients ask for, which is also the upstream database.
    #[arg(long, env = "EMBEDDED_DATABASE", default_value = "postgres")]
    pub database: String,
    /// Service user the gateway logs in upstream as.
    #[arg(long, env = "EMBEDDED_UPSTREAM_USER", default_value = "postgres")]
    pub upstream_user: String,
    /// Its password, if the upstream asks for one (prefer the environment variable).
    #[arg(long, env = "EMBEDDED_UPSTREAM_PASSWORD", hide_env_values = true)]
    pub upstream_password: Option<String>,
    /// File holding the HS256 secret client tokens are signed with (at least 32 bytes).
    #[arg(long, env = "EMBEDDED_JWT_SECRET_FILE")]
    pub jwt_secret_file: PathBuf,
    /// Required `iss` of client tokens.
    #[arg(long, env = "EMBEDDED_JWT_ISSUER", default_value = "portcullis-dev")]
    pub jwt_issuer: String,
    /// Required `aud` of client tokens.
    #[arg(long, env = "EMBEDDED_JWT_AUDIENCE", default_value = "portcullis")]
    pub jwt_audience: String,
    /// A TOML file whose only table is `[policy]`; without it every authenticated identity may
    /// run anything.
    #[arg(long, env = "EMBEDDED_POLICY")]
    pub policy: Option<PathBuf>,
    /// Session worker threads (single-threaded runtimes); default one per core, `0` runs
    /// sessions on the main runtime.
    #[arg(long, env = "EMBEDDED_WORKERS")]
    pub workers: Option<usize>,
}

/// Builds the gateway. Every seam of `Gateway::builder()` has a default; this sets the
/// authenticator, the targets and (optionally) the policy, and keeps the defaults for the rest:
/// no masking, no approvals, and the log audit sink.
pub fn build_gateway(args: &Args) -> anyhow::Result<Gateway> {
    // Who is asking: tokens must carry a valid HS256 signature, this issuer and this audience,
    // and must not have expired. The chain is the `Authenticator`; it could also hold static
    // users and client certificate authentication.
    let secret = std::fs::read_to_string(&args.jwt_secret_file)
        .with_context(|| format!("cannot read {}", args.jwt_secret_file.display()))?;
    let mut jwt = JwtConfig::new(JwtKeySource::Hs256Secret(secret.trim().to_owned()));
    jwt.issuer = Some(args.jwt_issuer.clone());
    jwt.audience = vec![args.jwt_audience.clone()];
    let authenticator = IdentityChain {
        jwt: Some(JwtAuthenticator::new(jwt).context("cannot set up token verification")?),
        ..IdentityChain::default()
    };

    // Where they go: clients name the target as their database.
    let target = Target {
        name: args.database.clone(),
        protocol: Protocol::Postgres,
        host: args.upstream_host.clone(),
        port: args.upstream_port,
        database: args.database.clone(),
        user: args.upstream_user.clone(),
        password: args.upstream_password.clone(),
        tls: UpstreamTls::Disable,
        labels: Default::default(),
    };

    let mut builder = Gateway::builder()
        .node("embedded")
        .authenticator(Arc::new(authenticator))
        .targets(Targets::new([target]));

    // What they may do: without a policy, the default allows every statement (no SQL is parsed).
    if let Some(path) = &args.policy {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let rules = RuleSet::from_toml(&text).map_err(|errors| {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{}: {}", path.display(), all.join("; "))
        })?;
        builder = builder.policy(Arc::new(RuleEngine::new(rules)));
    }

    // No `.audit(...)`: records go to `LogAuditSink`, i.e. to the log.
    Ok(builder.build())
}

/// Binds the PostgreSQL listener for `gateway`; `local_addr()` tells the port when 0 was asked.
pub async fn bind(args: &Args, gateway: Gateway) -> anyhow::Result<PostgresListener> {
    // The same values the binary uses by default (`gateway.*` in its configuration reference).
    // The binary's defaults: no TLS (set `tls` to a `rustls::ServerConfig`, as src/tls.rs
    // builds it), tokens over plain TCP from loopback clients only, 10 s handshakes, 64 MiB
    // messages, 30 s to drain on shutdown.
    let config = ListenerConfig::new(args.listen);
    let listener = PostgresListener::bind(config, gateway)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // Sessions run on one single-threaded runtime per core, as in the binary (`gateway.workers`).
    // The listener keeps the pool; its threads stop once the listener has drained its sessions.
    let workers = match args.workers {
        Some(0) => return Ok(listener),
        Some(n) => Workers::start(n, "embedded-session"),
        None => Workers::per_core("embedded-session"),
    }
    .context("cannot start the session worker threads")?;
    Ok(listener.with_workers(workers))
}

/// Serves until `stop` resolves, then shuts down gracefully: no new connections, each session
/// ends once the database owes it nothing more, and after the drain timeout the rest are cut off.
/// Returns when every session has ended.
pub async fn serve(listener: PostgresListener, stop: impl Future<Output = ()>) {
    // The handle must be taken before `run` consumes the listener.
    let shutdown = listener.shutdown_handle();
    tokio::join!(listener.run(), async move {
        stop.await;
        shutdown.trigger();
    });
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. SIGTERM is subscribed to at once, so one that arrives
/// while the gateway starts is not lost (nor does it kill the process).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // RUST_LOG as given (default `info`, which shows the audit records). The per-statement spans
    // of `portcullis::trace` exist for trace export, which this example does not set up.
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{directives},{}=off",
        gateway_core::trace::TARGET
    ))
    .with_context(|| format!("RUST_LOG={directives:?} is not a valid log filter"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let stop = shutdown_signal()?;
    let gateway = build_gateway(&args)?;
    let listener = bind(&args, gateway).await?;
    tracing::info!(addr = %listener.local_addr(), database = %args.database, "embedded gateway listening");
    serve(listener, stop).await;
    tracing::info!("every session has ended; exiting");
    Ok(())
}
