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
//! field readers, encoders, the SQLSTATE table), [`upstream`] (upstream login), the relay, and
//! [`cancel`] (CancelRequest routing).

pub mod cancel;
pub mod fuzzing;
mod connection;
mod relay;
pub mod startup;
pub mod stream;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_core::Gateway;
use tokio::net::TcpListener;

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
    /// Bound on the whole handshake (TLS, startup, password, upstream login), and on how long the
    /// rest of a half-sent message may take afterwards.
    pub handshake_timeout: Duration,
    /// Largest single message accepted from a client.
    pub max_message_bytes: usize,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("require_tls", &self.require_tls)
            .field("allow_plaintext_password", &self.allow_plaintext_password)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// A bound PostgreSQL listener.
pub struct PostgresListener {
    listener: TcpListener,
    shared: Arc<connection::Shared>,
}

impl PostgresListener {
    /// Binds the listener.
    pub async fn bind(config: ListenerConfig, gateway: Gateway) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let shared = Arc::new(connection::Shared { config, gateway, cancels: cancel::CancelRegistry::default(), upstream_tls: Default::default() });
        Ok(Self { listener, shared })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address; fall back to the configured one.
        self.listener.local_addr().unwrap_or(self.shared.config.listen)
    }

    /// Accepts connections until the task is aborted; each connection runs in its own task, and a
    /// failing connection never affects the others.
    pub async fn run(self) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    let shared = Arc::clone(&self.shared);
                    tokio::spawn(connection::serve(shared, tcp, peer));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
