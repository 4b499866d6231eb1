//! The listener every protocol shares, the handler trait it drives, and the settings of one
//! listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::stream::ClientStream;
use crate::error::{ErrorKind, GatewayError, Side};
use crate::metrics::Metrics;
use crate::target::Protocol;
use crate::workers::Workers;

/// Settings of one protocol listener: the same for every protocol (the `[postgres]` and `[mysql]`
/// sections of the binary's configuration).
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
    /// Refuse a login whose handshake user name differs from the subject the credential proves.
    /// Either way the user name is recorded in `session_opened`.
    pub require_user_match: bool,
    /// Bound on the whole handshake (TLS, login, upstream login), and on how long the rest of a
    /// half-sent message may take afterwards.
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

    /// Refuses a connection without TLS when the listener requires it. The protocol crate adds a
    /// hint in its clients' terms.
    pub fn check_tls_required(&self, tls: bool) -> Result<(), GatewayError> {
        if self.require_tls && !tls {
            return Err(GatewayError::new(
                ErrorKind::AccessDenied,
                Side::Client,
                "this gateway accepts only TLS connections",
            ));
        }
        Ok(())
    }

    /// Refuses a password or token sent in plain text from off this host, unless the listener
    /// allows it: a password crossing a network unencrypted is as good as published. Checked
    /// before the client is asked for its password. The protocol crate adds a hint in its
    /// clients' terms.
    pub fn check_password_transport(
        &self,
        peer: SocketAddr,
        tls: bool,
    ) -> Result<(), GatewayError> {
        if !tls && !peer.ip().is_loopback() && !self.allow_plaintext_password {
            return Err(GatewayError::new(
                ErrorKind::AccessDenied,
                Side::Client,
                "passwords and tokens are accepted only over TLS on this listener",
            ));
        }
        Ok(())
    }

    /// Runs the server side of a TLS handshake on `tcp`, after the protocol has agreed to it.
    /// `None` when the listener has no TLS configured.
    pub async fn accept_tls(&self, tcp: TcpStream) -> Option<Result<ClientStream, GatewayError>> {
        let tls = self.tls.clone()?;
        Some(
            match tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await {
                Ok(s) => Ok(ClientStream::Tls(Box::new(s))),
                Err(e) => Err(GatewayError::protocol(
                    Side::Client,
                    format!("TLS handshake failed: {e}"),
                )),
            },
        )
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

/// A connection the listener accepted, handed to [`Handler::handshake`].
pub struct Accepted {
    /// The socket (TCP_NODELAY already set).
    pub tcp: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
}

/// How a handshake ended.
pub enum Handshake<S> {
    /// Logged in on both sides: the listener hands `S` to [`Handler::serve`].
    Established(S),
    /// The connection ended without a session and without an error to send (a client that
    /// connected and closed, a cancel request, a peer that is gone).
    Closed,
    /// The login was refused: when `client` is still usable, the listener writes `reply` (the
    /// protocol's encoding of `error`) and closes so that the client reads it.
    Refused {
        /// The client's stream, if it can still carry the reply.
        client: Option<ClientStream>,
        /// The protocol's error message for `error`, ready to write.
        reply: Vec<u8>,
        /// Why; logged.
        error: GatewayError,
    },
}

/// A wire protocol, as the shared [`Listener`] drives it.
pub trait Handler: Send + Sync + 'static {
    /// What a finished handshake hands to [`serve`](Self::serve): typically the client stream,
    /// the core's session and the upstream connection.
    type Session: Send + 'static;

    /// The protocol, for metrics, spans and logs.
    fn protocol(&self) -> Protocol;

    /// The listener's settings.
    fn config(&self) -> &ListenerConfig;

    /// Runs the protocol's handshake on an accepted connection: TLS, login, the core's
    /// [`open_session`](crate::Gateway::open_session), the upstream login. The listener bounds it
    /// by [`ListenerConfig::handshake_timeout`]; when the deadline passes, the future (and the
    /// socket) is dropped.
    fn handshake(
        self: Arc<Self>,
        conn: Accepted,
    ) -> impl Future<Output = Handshake<Self::Session>> + Send;

    /// Serves an established session to its end, and records its close. `stop` turns true when
    /// the listener shuts down: the handler then ends the session as soon as the upstream owes
    /// it nothing more; the listener cuts it off after the drain timeout.
    fn serve(
        self: Arc<Self>,
        session: Self::Session,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;
}

/// Tells a running listener to stop: it stops accepting at once, lets each session finish what the
/// upstream still owes it, then the handler ends the session (PostgreSQL: SQLSTATE 57P01).
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// Starts the shutdown; [`Listener::run`] returns once sessions have ended or the drain
    /// timeout has passed.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// A bound listener driving one protocol's [`Handler`].
pub struct Listener<H: Handler> {
    listener: TcpListener,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    stop: watch::Receiver<bool>,
    /// Where sessions run: on these workers, or (`None`) as tasks of the runtime that runs the
    /// listener.
    workers: Option<Arc<Workers>>,
}

impl<H: Handler> Listener<H> {
    /// Binds `handler.config().listen`. `metrics` are the gateway's ([`crate::Gateway::metrics`]).
    pub async fn bind(handler: H, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(handler.config().listen).await?;
        let (tx, stop) = watch::channel(false);
        Ok(Self {
            listener,
            handler: Arc::new(handler),
            metrics,
            shutdown: Shutdown { tx: Arc::new(tx) },
            stop,
            workers: None,
        })
    }

    /// Runs each session on the least busy of `workers` (single-threaded runtimes, one per core:
    /// see [`Workers`]) instead of on the runtime that runs the listener. Several listeners may
    /// share one pool.
    pub fn with_workers(mut self, workers: Arc<Workers>) -> Self {
        self.workers = Some(workers);
        self
    }

    /// A handle that stops [`run`](Self::run) gracefully.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The handler this listener drives.
    pub fn handler(&self) -> &Arc<H> {
        &self.handler
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address; fall back to the configured one.
        self.listener
            .local_addr()
            .unwrap_or(self.handler.config().listen)
    }

    /// Starts a connection's task, on a worker when there are workers.
    fn spawn_connection(
        &self,
        sessions: &mut tokio::task::JoinSet<()>,
        tcp: TcpStream,
        peer: SocketAddr,
        span: tracing::Span,
    ) {
        let handler = Arc::clone(&self.handler);
        let metrics = Arc::clone(&self.metrics);
        let stop = self.stop.clone();
        let Some(workers) = &self.workers else {
            sessions.spawn(connection(handler, metrics, stop, tcp, peer).instrument(span));
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
        let task = async move {
            let _placement = placement;
            match TcpStream::from_std(socket) {
                Ok(tcp) => connection(handler, metrics, stop, tcp, peer).await,
                Err(e) => tracing::warn!(error = %e, "a worker could not take the connection"),
            }
        };
        sessions.spawn_on(task.instrument(span), &handle);
    }

    /// Accepts connections until [`Shutdown::trigger`] (or until the task is aborted); each
    /// connection runs in its own task, and a failing connection never affects the others. After
    /// a shutdown it returns once every session has ended, or after the drain timeout.
    pub async fn run(self) {
        let protocol = self.handler.protocol();
        let mut sessions = tokio::task::JoinSet::new();
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        self.metrics.connection_accepted(protocol);
                        // Every log line of the connection carries its peer, and once logged in
                        // its session id, subject and target; it is also the root of the
                        // connection's trace (the core's spans are its children).
                        let span = tracing::info_span!(
                            target: crate::trace::SESSION_TARGET,
                            "session",
                            protocol = protocol.as_str(),
                            %peer,
                            id = tracing::field::Empty,
                            subject = tracing::field::Empty,
                            target = tracing::field::Empty,
                        );
                        self.spawn_connection(&mut sessions, tcp, peer, span);
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
            protocol = protocol.as_str(),
            sessions = sessions.len(),
            "listener stopped accepting; draining sessions"
        );
        let drained = tokio::time::timeout(self.handler.config().drain_timeout, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                protocol = protocol.as_str(),
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

/// How long [`Listener::run`] waits for cut-off sessions to stop.
const ABORT_WAIT: Duration = Duration::from_secs(5);

/// Drives one accepted connection to its end: the bounded handshake, then the session.
async fn connection<H: Handler>(
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = handler.config().handshake_timeout;
    let handshake = Arc::clone(&handler).handshake(Accepted { tcp, peer });
    match tokio::time::timeout(deadline, handshake).await {
        Ok(Handshake::Established(session)) => {
            let _active = metrics.session_active(handler.protocol());
            handler.serve(session, stop).await;
        }
        Ok(Handshake::Closed) => {}
        Ok(Handshake::Refused {
            client,
            reply,
            error,
        }) => {
            tracing::info!(%peer, error = %error, "connection refused during handshake");
            if let Some(c) = client {
                // The client may still be sending (the rest of an oversized message): close so
                // that the error reaches it rather than a reset.
                let (mut read, mut write) = c.split();
                super::linger::lingering_close(&mut read, &mut write, &reply, deadline).await;
            }
        }
        Err(_) => {
            // The handshake future (and with it the socket) is gone; the databases themselves
            // just close here too.
            tracing::info!(%peer, timeout = ?deadline, "handshake timed out");
        }
    }
}
