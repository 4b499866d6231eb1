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
mod masking;
mod relay;
pub mod startup;
pub mod upstream;
pub mod wire;

pub use catalog::{Catalogs, MetadataConnection, PgCatalog};

use std::net::SocketAddr;
use std::sync::Arc;

pub use gateway_core::serve::stream;
use gateway_core::serve::Listener;
pub use gateway_core::serve::{ListenerConfig, Shutdown};
use gateway_core::{Gateway, Workers};

/// A bound PostgreSQL listener: the shared [`Listener`] driving this crate's handler.
pub struct PostgresListener {
    inner: Listener<connection::PostgresHandler>,
}

impl PostgresListener {
    /// Binds the listener.
    pub async fn bind(config: ListenerConfig, gateway: Gateway) -> std::io::Result<Self> {
        let upstream_tls = Arc::new(upstream::TlsConfigs::default());
        let catalogs = Catalogs::new(Arc::clone(&upstream_tls), catalog::DEFAULT_REFRESH)
            .with_max_message_bytes(config.max_message_bytes);
        let metrics = Arc::clone(gateway.metrics());
        let handler = connection::PostgresHandler(Arc::new(connection::Shared {
            config,
            gateway,
            cancels: cancel::CancelRegistry::default(),
            upstream_tls,
            catalogs,
        }));
        Ok(Self {
            inner: Listener::bind(handler, metrics).await?,
        })
    }

    /// Runs each session on the least busy of `workers` (single-threaded runtimes, one per
    /// core: see [`Workers`]) instead of on the runtime that runs the listener. Several listeners
    /// may share one pool.
    pub fn with_workers(self, workers: Arc<Workers>) -> Self {
        Self {
            inner: self.inner.with_workers(workers),
        }
    }

    /// A handle that stops [`run`](Self::run) gracefully: sessions end with SQLSTATE 57P01
    /// (admin shutdown) once the upstream owes them nothing more.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.inner.shutdown_handle()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Accepts connections until [`Shutdown::trigger`] (or until the task is aborted); see
    /// [`Listener::run`].
    pub async fn run(self) {
        self.inner.run().await
    }
}
