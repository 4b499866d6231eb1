//! The protocol-agnostic heart of Portcullis.
//!
//! A protocol crate (PostgreSQL, MySQL, ...) owns its wire; this crate owns everything between the
//! wire and the database that does not depend on it: who is asking, which target they reach, what
//! they may run, and what the audit trail records, in a fixed order of phases. It depends on no
//! protocol, no SQL parser and no storage engine.
//!
//! In the order data meets them:
//! - [`Credentials`] from a handshake become an [`Identity`] through an [`Authenticator`];
//! - a [`Gateway`] (built with [`Gateway::builder`]) opens a [`Session`]: the requested database name
//!   chooses a [`Target`], the [`PolicyEngine`] grants [`Access`];
//! - every statement text is judged by [`Session::prepare`] into a [`Statement`] (or a denial), and
//!   each execution is announced by [`Session::execute`] (approval hold, audit "started") and closed
//!   by [`Session::finish`];
//! - result columns go to [`Execution::mask_planner`], which the [`Masker`] decides with the statement's
//!   [`Lineage`] and the target's [`Catalog`]; an empty [`MaskPlan`] means the protocol crate
//!   forwards rows untouched;
//! - every step is an [`AuditRecord`] handed to an [`AuditSink`]; when it cannot be recorded the
//!   statement is refused;
//! - along the way each phase counts into the gateway's own [`Metrics`] ([`Gateway::metrics`]),
//!   served in the Prometheus text format by the binary's admin listener.
//!
//! Around all of it, [`serve`] is what every protocol needs around its wire: a [`serve::Listener`]
//! that accepts, places connections on workers, bounds handshakes and drains on shutdown, driving a
//! protocol crate's [`serve::Handler`].
//!
//! Errors are [`GatewayError`]s: a neutral [`ErrorKind`] plus the [`Side`] that caused it.
//!
//! Each phase opens a `tracing` span on its own target (see [`trace`]): free when no subscriber
//! asks for them, a span tree per connection when trace export is on.

pub mod approval;
pub mod audit;
pub mod error;
pub mod identity;
pub mod live;
pub mod masking;
pub mod metrics;
pub mod parameters;
pub mod policy;
pub mod serve;
pub mod session;
pub mod target;
pub mod text;
pub mod trace;
pub mod workers;

pub use approval::{
    ApprovalRequest, ApprovalService, Decided, Hold, HoldEnd, HoldHandle, NoApprovals, NoticeSink,
    Submission,
};
/// The attribute the async seams ([`Authenticator`], [`AuditSink`], [`ApprovalService`]) are
/// written with, re-exported so that implementing one needs no dependency of its own:
/// `#[gateway_core::async_trait] impl AuditSink for MySink { ... }`.
pub use async_trait::async_trait;
pub use audit::{
    AuditEvent, AuditRecord, AuditSink, LogAuditSink, RecordedError, Rfc3339Micros,
    StatementOutcome,
};
pub use error::{ErrorKind, GatewayError, Side};
pub use identity::{
    AuthMethod, Authenticator, ClientInfo, Credentials, DenyAllAuthenticator, Identity,
};
pub use live::LiveSession;
pub use masking::{
    Catalog, CatalogRelation, CheckRequest, ColumnOrigin, ColumnPlan, EmptyCatalog, Hazard,
    Lineage, MaskPlan, MaskedColumn, Masker, NoMasking, OutputColumn, PlanRequest, RelationKind,
    RelationName, ResultColumn, SourceColumn, StatementLineage, ValueFormat, ValueMask, ValueType,
};
pub use metrics::{ActiveSession, Metrics};
pub use parameters::{BoundValue, ParameterAudit, RecordedParameters, RecordedValue};
pub use policy::{
    Access, AllowAll, Decision, Judgement, PolicyEngine, SqlSettings, StatementContext,
    StatementObjects, SyntaxError, Verdict,
};
pub use session::{
    Execution, Gateway, GatewayBuilder, MaskPlanner, Outcome, Session, SessionContext,
    SessionRequest, Statement,
};
pub use target::{Protocol, Target, Targets, UpstreamTls};
pub use text::TextEncoding;
pub use workers::{Placement, Workers};
