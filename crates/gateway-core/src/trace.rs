//! Tracing spans: which ones the gateway opens, on which `tracing` targets, and what they cost.
//!
//! Two targets, so that a subscriber can take exactly what it wants:
//! - [`SESSION_TARGET`] (`portcullis::session`): one `session` span per client connection, opened
//!   by the protocol crate at accept (fields: `protocol`, `peer`; once logged in `id`, `subject`,
//!   `target`). Log lines of the connection carry it as context; it costs one span per connection.
//! - [`TARGET`] (`portcullis::trace`): the per-statement spans below. They exist for trace export
//!   (OpenTelemetry). A subscriber that does not enable this target turns every one of their
//!   callsites off for good (tracing caches a callsite's interest), so on the hot path they cost a
//!   cached interest check and an empty [`tracing::Span::none`]: nothing is allocated, recorded or
//!   timed.
//!
//! The span tree of a connection (all at INFO):
//! ```text
//! session                       protocol crate, the whole connection
//! ├── auth                      Gateway::open_session: authenticate, choose the target, access
//! ├── audit                     every audit record written (event = session_opened, ...)
//! ├── policy                    Session::prepare: judge one statement text (decision, rule)
//! │   └── analysis              policy engine: parse and analyse the text (cache misses only)
//! ├── statement                 Session::execute .. Session::finish: one execution
//! │   ├── approval              held for approval (only when a rule requires one)
//! │   ├── audit                 statement_started
//! │   ├── upstream              from forwarding to the upstream's first response (when the
//! │   │                         protocol crate reports it)
//! │   └── audit                 statement_finished
//! └── statement                 a statement refused in `prepare` (verdict = deny)
//!     └── audit                 statement_denied
//! ```
//! A `statement` span records `statement_id`, `session_id`, `subject`, `target`, `verdict`, `rule`,
//! `classification`, and at the end `rows`, `tag`, `skipped`, `error.side`, `error.kind` (the
//! gateway refused it) or `error.code` (SQLSTATE); a failed or refused statement also sets
//! `otel.status_code = "error"`. Its duration runs from the moment the execution is announced
//! (right before it is forwarded) to the end of its result. Statement texts are not recorded on
//! spans (they are in the audit trail): a trace backend is a different trust domain.

/// Target of the per-statement spans (`auth`, `policy`, `analysis`, `statement`, `approval`,
/// `audit`, `upstream`).
pub const TARGET: &str = "portcullis::trace";

/// Target of the per-connection `session` span.
pub const SESSION_TARGET: &str = "portcullis::session";

/// Whether the current subscriber wants the per-statement spans. Protocol crates ask once per
/// session, to skip bookkeeping that only feeds the trace (such as reporting the upstream's first
/// response) when nobody traces.
pub fn statement_spans_enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}
