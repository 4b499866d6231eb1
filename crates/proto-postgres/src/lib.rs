//! The PostgreSQL wire module of Portcullis: a message-level proxy.
//!
//! Clients (psql, libpq, JDBC, drivers) connect to a [`PostgresListener`] exactly as to PostgreSQL.
//! The listener answers TLS and the startup itself, asks for a password (which may carry a JWT) or
//! takes a verified client certificate, opens a [`gateway_core::Session`], logs in upstream with the
//! target's service credentials, and then relays frames both ways. It reads only what the core's
//! phases need (statement texts, portal bindings, completions) and forwards every frame it does
//! not change as the original bytes.
//!
//! It is not a connection pooler and not a re-issuing client: one client connection is one upstream
//! connection, so every protocol feature (extended protocol, pipelining, COPY, NOTIFY, binary
//! formats) keeps its exact behaviour.
//!
//! Modules in the order data meets them: [`startup`] (untyped startup packets), [`wire`] (frames,
//! field readers, encoders, the SQLSTATE table), [`upstream`] (upstream login), the relay,
//! [`cancel`] (CancelRequest routing), and [`catalog`] (the target's relations, which masking
//! resolves result columns through).

pub mod cancel;
pub mod catalog;
mod connection;
pub mod fuzzing;
mod linger;
mod masking;
mod relay;
pub mod startup;
pub mod stream;
pub mod upstream;
pub mod wire;

pub use catalog::{Catalogs, MetadataConnection, PgCatalog};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_core::{Gateway, Protocol, Workers};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Settings of one PostgreSQL listener.
#[derive(Clone)]
pub struct ListenerConfig {
    /// Address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// TLS for clients; client-certificate verification is part of this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Refuse clients that do not use TLS.
    pub require_tls: bool,
    /// Accept passwords and tokens over plain TCP from non-loopback addresses.
    pub allow_plaintext_password: bool,
    /// Refuse a login (SQLSTATE 28000) whose startup `user` differs from the subject the
    /// credential proves. Either way the user name is recorded in `session_opened`.
    pub require_user_match: bool,
    /// Bound on the whole handshake (TLS, startup, password, upstream login), and on how long the
    /// rest of a half-sent message may take afterwards.
    pub handshake_timeout: Duration,
    /// Largest single message accepted from a client.
    pub max_message_bytes: usize,
    /// After [`Shutdown::trigger`], how long sessions may take to finish their work in flight
    /// before they are cut off.
    pub drain_timeout: Duration,
}

impl ListenerConfig {
    /// Default `handshake_timeout`.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `max_message_bytes` (64 MiB).
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
    /// Default `drain_timeout`.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

    /// A plain-TCP listener on `listen` with the defaults the `portcullis` binary uses: no TLS,
    /// passwords and tokens over plain TCP from loopback clients only, the default timeouts and
    /// message limit. Set the fields to change any of it.
    pub fn new(listen: SocketAddr) -> Self {
        ListenerConfig {
            listen,
            tls: None,
            require_tls: false,
            allow_plaintext_password: false,
            require_user_match: false,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("require_tls", &self.require_tls)
            .field("allow_plaintext_password", &self.allow_plaintext_password)
            .field("require_user_match", &self.require_user_match)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

/// A bound PostgreSQL listener.
pub struct PostgresListener {
    listener: TcpListener,
    shared: Arc<connection::Shared>,
    shutdown: Shutdown,
    /// Where sessions run: on these workers, or (`None`) as tasks of the runtime that runs the
    /// listener.
    workers: Option<Arc<Workers>>,
}

/// Tells a running listener to stop: it stops accepting at once, lets each session finish what the
/// upstream still owes it, then ends the session with SQLSTATE 57P01 (admin shutdown).
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Shutdown {
    /// Starts the shutdown; [`PostgresListener::run`] returns once sessions have ended or
    /// `drain_timeout` has passed.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl PostgresListener {
    /// Binds the listener.
    pub async fn bind(config: ListenerConfig, gateway: Gateway) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let upstream_tls = Arc::new(upstream::TlsConfigs::default());
        let catalogs = Catalogs::new(Arc::clone(&upstream_tls), catalog::DEFAULT_REFRESH)
            .with_max_message_bytes(config.max_message_bytes);
        let shared = Arc::new(connection::Shared {
            config,
            gateway,
            cancels: cancel::CancelRegistry::default(),
            upstream_tls,
            catalogs,
            shutdown: rx,
        });
        Ok(Self {
            listener,
            shared,
            shutdown: Shutdown { tx: Arc::new(tx) },
            workers: None,
        })
    }

    /// Runs each session on the least busy of `workers` (single-threaded runtimes, one per
    /// core: see [`Workers`]) instead of on the runtime that runs the listener. Several listeners
    /// may share one pool.
    pub fn with_workers(mut self, workers: Arc<Workers>) -> Self {
        self.workers = Some(workers);
        self
    }

    /// A handle that stops [`run`](Self::run) gracefully.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address; fall back to the configured one.
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.listen)
    }

    /// Starts a session for an accepted connection, on a worker when there are workers.
    fn spawn_session(
        &self,
        sessions: &mut tokio::task::JoinSet<()>,
        tcp: TcpStream,
        peer: SocketAddr,
        span: tracing::Span,
    ) {
        let shared = Arc::clone(&self.shared);
        let Some(workers) = &self.workers else {
            sessions.spawn(connection::serve(shared, tcp, peer).instrument(span));
            return;
        };
        // A tokio socket belongs to the runtime that registered it, which would keep driving its
        // readiness: hand the worker the bare socket, and let it register it there.
        let socket = match tcp.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "cannot hand the connection to a worker");
                return;
            }
        };
        let placement = workers.place();
        let handle = placement.handle().clone();
        let session = async move {
            let _placement = placement;
            match TcpStream::from_std(socket) {
                Ok(tcp) => connection::serve(shared, tcp, peer).await,
                Err(e) => tracing::warn!(error = %e, "a worker could not take the connection"),
            }
        };
        sessions.spawn_on(session.instrument(span), &handle);
    }

    /// Accepts connections until [`Shutdown::trigger`] (or until the task is aborted); each
    /// connection runs in its own task, and a failing connection never affects the others. After
    /// a shutdown it returns once every session has ended, or after the drain timeout.
    pub async fn run(self) {
        let mut sessions = tokio::task::JoinSet::new();
        let mut stop = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        self.shared.gateway.metrics().connection_accepted(Protocol::Postgres);
                        // Every log line of the connection carries its peer, and once logged in
                        // its session id, subject and target; it is also the root of the
                        // connection's trace (the core's spans are its children).
                        let span = tracing::info_span!(
                            target: gateway_core::trace::SESSION_TARGET,
                            "session",
                            protocol = "postgres",
                            %peer,
                            id = tracing::field::Empty,
                            subject = tracing::field::Empty,
                            target = tracing::field::Empty,
                        );
                        self.spawn_session(&mut sessions, tcp, peer, span);
                    }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                // Reap finished sessions so the set does not grow with every connection ever made.
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => break,
            }
        }
        drop(self.listener);
        tracing::info!(
            sessions = sessions.len(),
            "PostgreSQL listener stopped accepting; draining sessions"
        );
        let drained = tokio::time::timeout(self.shared.config.drain_timeout, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                sessions = sessions.len(),
                per_worker = ?self.workers.as_ref().map(|w| w.sessions()),
                "sessions still open after the drain timeout; cutting them off"
            );
            // Aborting a task takes effect when its runtime next polls it. Bounded, so that the
            // listener returns even should a session never be polled again; whatever is left is
            // dropped with its worker.
            if tokio::time::timeout(ABORT_WAIT, sessions.shutdown())
                .await
                .is_err()
            {
                tracing::error!(
                    sessions = sessions.len(),
                    "sessions did not stop within {ABORT_WAIT:?} of being cut off; leaving them"
                );
            }
        }
    }
}

/// How long [`PostgresListener::run`] waits for cut-off sessions to stop.
const ABORT_WAIT: Duration = Duration::from_secs(5);
