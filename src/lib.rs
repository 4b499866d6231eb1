//! The `portcullis` gateway binary, as a library: configuration, TLS and wiring.
//!
//! This crate turns one TOML file into running listeners. It holds no protocol logic (that lives
//! in the `proto-*` crates), no authentication logic (`identity`) and no phase order
//! (`gateway-core`); it only reads, checks and connects them. Integration tests and embedders use
//! it to run a gateway in-process.
//!
//! In the order data meets them:
//! - [`Config`] reads and checks the file ([`Config::load`], [`Config::from_toml_str`]); every
//!   problem is reported at once as [`ConfigErrors`], each with file, line and column;
//! - [`tls::server_config`] builds a listener's TLS configuration from PEM files;
//! - [`Server::start`] builds the [`gateway_core::Gateway`] (identity chain, targets) and binds the
//!   configured listeners, returning a [`RunningServer`] that reports their addresses and stops
//!   them on [`RunningServer::shutdown`].
//!
//! - [`Telemetry`] is the OpenTelemetry trace export of `[telemetry]`, with the log filter and
//!   the export layer the caller installs in its `tracing` subscriber;
//! - [`memory::return_freed_memory_to_the_os`] is the allocator setting the binary makes at start.
//!
//! Logging setup is left to the caller (`main.rs` for the binary), so that nothing here is
//! process-global; [`telemetry`] provides its parts.

pub mod config;
pub mod discover;
pub mod memory;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use config::{Config, ConfigError, ConfigErrors};
pub use server::{RunningServer, Server};
pub use telemetry::Telemetry;
pub mod admin;
pub mod admin_api;

/// The admin API's routes as `(method, path)`, e.g. `("POST", "/api/v1/approvals/{id}/approve")`:
/// exactly what the admin listener serves under `/api/v1` (with `[approvals]`), and what
/// `docs/openapi.json` describes.
pub fn admin_api_routes() -> Vec<(&'static str, &'static str)> {
    admin_api::ROUTES.to_vec()
}
