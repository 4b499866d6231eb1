//! The tamper-evident audit trail of Portcullis. Every [`gateway_core::AuditRecord`] the gateway
//! hands to [`AuditLog`] (its [`gateway_core::AuditSink`]) is serialized once to JSON; those
//! bytes become the payload of a [`StoredRecord`] that carries a per-node sequence number and the
//! SHA-256 [`chain_hash`] of the record before it. Every N records or T seconds, and at shutdown,
//! the writer appends a checkpoint signed with Ed25519 ([`CheckpointSigner`]). Records go to
//! every configured [`Sink`] ([`SqliteSink`], [`JsonlSink`], [`PostgresSink`]) through a bounded
//! queue and one batching writer task, durably before `record()` returns in `sync` durability;
//! when the sinks fail, `record()` fails and the gateway refuses statements (fail closed).
//! [`verify()`] checks a sink end to end and names the first broken record; [`tail`] and
//! [`search`] read it. [`AuditConfig`] is the `[audit]` section of the gateway config.
//!
//! This crate is not the gateway's decision about what to record (that is `gateway-core`), nor a
//! log shipper: it stores, chains, signs and checks. `docs/audit.md` describes the record schema,
//! the exact hash input, and what verify can and cannot prove.

#![warn(missing_docs)]

pub mod config;
mod direct;
pub mod error;
mod follower;
mod json;
mod opening;
pub mod record;
pub mod signing;
pub mod sink;
pub mod verify;
pub mod writer;

pub use config::{
    parse_duration, parse_rfc3339, parse_time, AuditConfig, Durability, OnFailure, ParameterMode,
    SinkConfig,
};
pub use error::{AuditError, SinkError};
pub use record::{chain_hash, format_time, ChainHash, RecordKind, StoredRecord, SCHEMA_VERSION};
pub use signing::{
    checkpoint_message, generate_signing_key, key_id, parse_public_key, parse_public_keys,
    read_public_key_file, read_public_keys_file, verify_checkpoint_signature, CheckpointPayload,
    CheckpointSigner, NoticePayload,
};
pub use sink::{
    open_sink, JsonlSink, OpenMode, PostgresSink, ScanCursor, ScanItem, ScanPage, SearchFilter,
    Sink, SqliteSink, SslMode,
};
pub use verify::{search, tail, verify, NodeReport, Problem, VerifyFailure, VerifyReport};
pub use writer::{AuditLog, AuditStats};
