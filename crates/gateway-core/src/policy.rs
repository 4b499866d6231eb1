//! The policy seam: may this identity use this target, and may it run this statement.

use std::sync::Arc;

use crate::error::GatewayError;
use crate::identity::Identity;
use crate::target::Target;

/// What an identity may do on a target once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Reads only; protocol crates also make the upstream session read-only as a second fence.
    ReadOnly,
    /// Reads and writes.
    ReadWrite,
}

/// The outcome of judging one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run it.
    Allow,
    /// Refuse it.
    Deny,
    /// Hold it until someone else approves.
    NeedsApproval,
}

/// A decision with the rule that made it and the reason shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// What to do.
    pub decision: Decision,
    /// Name of the deciding rule (`None` only for the built-in allow-all engine).
    pub rule: Option<Arc<str>>,
    /// Message for the user when the statement is not simply allowed.
    pub reason: Option<String>,
    /// Set when the statement is refused because the database's own grammar rejects it: the
    /// client then gets the error the database would give (PostgreSQL: SQLSTATE 42601 with the
    /// parser's message and position), not a policy error. Absent from audit records otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syntax_error: Option<Arc<SyntaxError>>,
}

/// A statement text the database's own grammar rejects, as the database reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyntaxError {
    /// The grammar's message, worded as the database words it (`syntax error at or near "selec"`).
    pub message: String,
    /// Where the grammar stopped: a 1-based position in characters (not bytes) into the
    /// statement text, as PostgreSQL's error cursor counts; `None` when not known.
    pub position: Option<u32>,
}

impl Verdict {
    /// Allowed by `rule`.
    pub fn allow(rule: Option<Arc<str>>) -> Self {
        Self {
            decision: Decision::Allow,
            rule,
            reason: None,
            syntax_error: None,
        }
    }

    /// Denied by `rule` for `reason`.
    pub fn deny(rule: impl Into<Arc<str>>, reason: impl Into<String>) -> Self {
        Self {
            decision: Decision::Deny,
            rule: Some(rule.into()),
            reason: Some(reason.into()),
            syntax_error: None,
        }
    }

    /// Denied by `rule` because the database's grammar rejects the text (see [`SyntaxError`]);
    /// the reason is the grammar's message.
    pub fn syntax(rule: impl Into<Arc<str>>, error: SyntaxError) -> Self {
        Self {
            decision: Decision::Deny,
            rule: Some(rule.into()),
            reason: Some(error.message.clone()),
            syntax_error: Some(Arc::new(error)),
        }
    }
}

/// What the policy engine made of a statement: the verdict plus the facts the audit trail records.
/// Engines cache these by statement text, so they are shared.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// Statement classification (read, write, ddl, ...) when the engine analysed it.
    pub classification: Option<Arc<str>>,
    /// What the statement touches, when the engine analysed it; the audit trail records it.
    pub objects: Option<Arc<StatementObjects>>,
    /// The statement's shape with literal values stripped (texts that differ only in constants
    /// share it), when the engine analysed it; the audit trail records it.
    pub fingerprint: Option<Arc<str>>,
    /// Where each statement's result values come from, when the engine analysed the text: what
    /// masking reads to follow a masked column through expressions, subqueries and set
    /// operations. Not part of audit records.
    #[serde(skip)]
    pub lineage: Option<Arc<crate::masking::Lineage>>,
}

/// Relations and functions a statement text touches (all its statements together), normalised
/// by the policy engine (`schema.name` where known).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatementObjects {
    /// Relations read.
    pub reads: Vec<String>,
    /// Relations written (inserted, updated, deleted, created, altered, dropped, ...).
    pub writes: Vec<String>,
    /// Functions called.
    pub functions: Vec<String>,
}

impl StatementObjects {
    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty() && self.functions.is_empty()
    }
}

/// Session settings that change how a statement text is read. Protocol crates keep them current
/// from the wire (ParameterStatus, handshake, `USE`), and policy engines key their caches on them:
/// the same text can mean different things under different settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SqlSettings {
    /// The schema (PostgreSQL) or database (MySQL) unqualified names resolve to, when known.
    pub default_schema: Option<Arc<str>>,
    /// PostgreSQL `standard_conforming_strings` (on by default since 9.1): when off, backslashes
    /// escape inside ordinary string literals.
    pub standard_conforming_strings: bool,
    /// MySQL `sql_mode` ANSI_QUOTES: double quotes delimit identifiers.
    pub ansi_quotes: bool,
    /// MySQL `sql_mode` NO_BACKSLASH_ESCAPES: backslash is an ordinary character in strings.
    pub no_backslash_escapes: bool,
}

impl Default for SqlSettings {
    fn default() -> Self {
        Self {
            default_schema: None,
            standard_conforming_strings: true,
            ansi_quotes: false,
            no_backslash_escapes: false,
        }
    }
}

/// The context a statement is judged in.
#[derive(Debug)]
pub struct StatementContext<'a> {
    /// Who is asking.
    pub identity: &'a Identity,
    /// Where the statement goes.
    pub target: &'a Target,
    /// What the session was admitted with.
    pub access: Access,
    /// How the session reads SQL right now.
    pub settings: &'a SqlSettings,
}

/// Decides access and judges statements. Called on every connection and statement, so both
/// methods must be cheap on the hot path (cache what you analyse).
pub trait PolicyEngine: Send + Sync {
    /// Runs once per session, after authentication and target selection. `Err` refuses the
    /// session with an [`ErrorKind::AccessDenied`](crate::ErrorKind) error naming the rule.
    fn access(&self, identity: &Identity, target: &Target) -> Result<Access, GatewayError>;

    /// Runs for every statement before anything of it is forwarded upstream.
    fn judge(&self, ctx: &StatementContext<'_>, sql: &str) -> Arc<Judgement>;
}

/// Admits every authenticated identity read-write and allows every statement: the built-in until a
/// rule set is configured.
#[derive(Debug)]
pub struct AllowAll {
    allowed: Arc<Judgement>,
}

impl Default for AllowAll {
    fn default() -> Self {
        Self {
            allowed: Arc::new(Judgement {
                verdict: Verdict::allow(None),
                classification: None,
                objects: None,
                fingerprint: None,
                lineage: None,
            }),
        }
    }
}

impl PolicyEngine for AllowAll {
    fn access(&self, _: &Identity, _: &Target) -> Result<Access, GatewayError> {
        Ok(Access::ReadWrite)
    }

    fn judge(&self, _: &StatementContext<'_>, _: &str) -> Arc<Judgement> {
        Arc::clone(&self.allowed)
    }
}
