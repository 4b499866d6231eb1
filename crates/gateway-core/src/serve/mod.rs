//! The serving layer: what every wire protocol needs around its wire, written once.
//!
//! A protocol crate implements a [`Handler`]: its handshake (which may upgrade the connection to
//! TLS in the protocol's own way) and its serving of an established session. A [`Listener`]
//! drives it: it accepts, counts the connection in the protocol's metrics, places the connection
//! on a worker ([`Workers`](crate::Workers)), bounds the handshake by the configured deadline,
//! closes a refused connection so that the client reads the error ([`linger`]), counts the
//! session as active while it is served, and on [`Shutdown::trigger`] stops accepting and drains
//! its sessions within the drain timeout.
//!
//! The rest is shared pieces a handler uses: [`ListenerConfig`] (the settings every listener
//! section of the configuration has) with its transport rules, [`stream`] (plain or TLS streams
//! split into halves), and [`tls`] (verified upstream TLS).

pub mod linger;
mod listener;
pub mod stream;
pub mod tls;

pub use listener::{Accepted, Handler, Handshake, Listener, ListenerConfig, Shutdown};
