//! The MySQL and MariaDB wire module of Portcullis: a packet-level proxy.
//!
//! Clients (the mariadb and mysql command-line clients, PyMySQL, mysql2, Connector/J, ...)
//! connect to a [`MysqlListener`] exactly as to the server. The gateway answers the handshake
//! itself with a fresh salt, offers TLS, asks for the password in clear text
//! (`mysql_clear_password`, which carries a JWT or a static user's password, over TLS or from
//! loopback only), opens a [`gateway_core::Session`] for the target the database name chooses,
//! logs in upstream with the target's service credentials (`mysql_native_password` or
//! `caching_sha2_password`), and then relays commands and their results. It reads only what the
//! core's phases need (statement texts, prepared statement ids, the end of each result and its
//! status) and forwards every packet as the original bytes. In a session whose results the
//! core's masker may rewrite, it also reads each result's column definitions, has the masker plan
//! them (origins resolved through the target's `information_schema`), rewrites the rows of masked
//! columns, text and binary, and scrubs error messages.
//!
//! Why not opensrv-mysql: it writes every column definition itself (utf8, length 1024, no
//! origin), which drivers that read the charset cannot live with and which would hide the column
//! origins masking needs; it also allows one authentication round only and answers unknown
//! commands with OK. What this crate needs of MySQL's packets (handshake, handshake response,
//! auth switch, OK/ERR, scrambles) comes from `mysql_common`; the framing is read by hand
//! ([`packet`]) so that results are forwarded from the read buffer without being reassembled.
//!
//! Modules in the order data meets them: [`packet`] (framing, OK/ERR), `handshake` (the client's
//! login), [`upstream`] (the gateway's login to the server), the relay, and for masked sessions
//! `masking` (column definitions, row rewriting, error scrubbing) and `catalog` (the target's
//! relations, from a metadata connection). [`fuzzing`] holds the fuzz targets' entry points.

mod catalog;
pub mod fuzzing;
mod handshake;
mod kill;
mod masking;
pub mod packet;
mod relay;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use gateway_core::serve::Listener;
pub use gateway_core::serve::{ListenerConfig, Shutdown};
use gateway_core::{Gateway, Workers};

/// How long binding waits for the first MySQL target's greeting (its server version).
const VERSION_PROBE: std::time::Duration = std::time::Duration::from_millis(500);

/// A bound MySQL listener: the shared [`Listener`] driving this crate's handler.
pub struct MysqlListener {
    inner: Listener<handshake::MysqlHandler>,
}

impl MysqlListener {
    /// Binds the listener. It first reads the server version of the first MySQL target from its
    /// greeting (waiting at most half a second), to greet clients with.
    pub async fn bind(config: ListenerConfig, gateway: Gateway) -> std::io::Result<Self> {
        let metrics = Arc::clone(gateway.metrics());
        let handler = handshake::MysqlHandler::new(config, gateway);
        handler.learn_server_version(VERSION_PROBE).await;
        Ok(Self {
            inner: Listener::bind(handler, metrics).await?,
        })
    }

    /// Runs each session on the least busy of `workers` instead of on the runtime that runs the
    /// listener. Several listeners may share one pool.
    pub fn with_workers(self, workers: Arc<Workers>) -> Self {
        Self {
            inner: self.inner.with_workers(workers),
        }
    }

    /// A handle that stops [`run`](Self::run) gracefully: each session ends (error 1053, server
    /// shutdown in progress) once the upstream owes it nothing more.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.inner.shutdown_handle()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Accepts connections until [`Shutdown::trigger`] (or until the task is aborted).
    pub async fn run(self) {
        self.inner.run().await
    }
}
