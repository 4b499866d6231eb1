//! The neutral error type every phase returns. Protocol crates map [`ErrorKind`] to their wire
//! codes (SQLSTATE, MySQL error numbers) in one table each.

use std::fmt;

/// Which side of the gateway caused an error. The audit trail records it, and operators use it to
/// tell a misbehaving client from a failing database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The client sent something wrong: bad credentials, malformed or oversized messages.
    Client,
    /// The upstream database failed or refused.
    Upstream,
    /// The gateway itself decided (policy) or failed (audit sink, internal error).
    Gateway,
}

impl Side {
    /// Lower-case name, as in audit records and metric labels (`client`, `upstream`, `gateway`).
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Gateway => "gateway",
        }
    }
}

/// What went wrong, independent of any wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// Credentials were missing, malformed or rejected.
    Authentication,
    /// The identity may not use the requested target.
    AccessDenied,
    /// The requested database name matches no configured target.
    UnknownTarget,
    /// A policy rule denied the statement.
    PolicyDenied,
    /// The statement text is not valid SQL for the database's own grammar; the gateway refused
    /// it with the error the database would give (PostgreSQL 42601, MySQL 1064).
    Syntax,
    /// A rule requires approval and none was granted (yet).
    ApprovalRequired,
    /// The peer broke the wire protocol (malformed, truncated or oversized message).
    Protocol,
    /// The client or server asked for something the gateway does not support.
    Unsupported,
    /// A phase did not finish in time (handshake, upstream connect).
    Timeout,
    /// The upstream database could not be reached or refused the service credentials.
    UpstreamUnavailable,
    /// The audit trail could not record the event, so the statement was refused.
    AuditUnavailable,
    /// The gateway is shutting down and ends the session.
    ShuttingDown,
    /// A bug or an unexpected condition inside the gateway.
    Internal,
}

impl ErrorKind {
    /// Snake-case name, as in audit records and metric labels (`authentication`,
    /// `access_denied`, `unknown_target`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Authentication => "authentication",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::UnknownTarget => "unknown_target",
            ErrorKind::PolicyDenied => "policy_denied",
            ErrorKind::Syntax => "syntax",
            ErrorKind::ApprovalRequired => "approval_required",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Timeout => "timeout",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::AuditUnavailable => "audit_unavailable",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error with its kind, the side that caused it, a message for the client, and the rule that
/// decided where a rule did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Who caused it.
    pub side: Side,
    /// Human-readable message; shown to the client, so it never contains secrets.
    pub message: String,
    /// Optional longer explanation (PostgreSQL DETAIL).
    pub detail: Option<String>,
    /// Optional advice on what to do (PostgreSQL HINT).
    pub hint: Option<String>,
    /// Name of the rule that decided, where a rule did.
    pub rule: Option<String>,
    /// For [`ErrorKind::Syntax`]: where in the statement text the error is, as a 1-based
    /// character position (PostgreSQL's error cursor).
    pub position: Option<u32>,
}

impl GatewayError {
    /// A new error of `kind` caused by `side`.
    pub fn new(kind: ErrorKind, side: Side, message: impl Into<String>) -> Self {
        Self {
            kind,
            side,
            message: message.into(),
            detail: None,
            hint: None,
            rule: None,
            position: None,
        }
    }

    /// Authentication failure caused by the client's credentials.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Authentication, Side::Client, message)
    }

    /// A malformed or oversized message from `side`.
    pub fn protocol(side: Side, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, side, message)
    }

    /// The upstream could not be reached or refused the gateway.
    pub fn upstream_unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UpstreamUnavailable, Side::Upstream, message)
    }

    /// An unexpected condition inside the gateway.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, Side::Gateway, message)
    }

    /// Attach a detail line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Attach a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Point at a character of the statement text (1-based, see [`GatewayError::position`]).
    pub fn with_position(mut self, position: Option<u32>) -> Self {
        self.position = position;
        self
    }

    /// Name the rule that decided.
    pub fn with_rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(rule) = &self.rule {
            write!(f, " (rule: {rule})")?;
        }
        Ok(())
    }
}

impl std::error::Error for GatewayError {}
