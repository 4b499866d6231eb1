//! The approval seam: statements a rule holds for someone else's approval.

use crate::error::{ErrorKind, GatewayError, Side};
use crate::identity::Identity;
use crate::policy::Verdict;
use crate::target::Target;

/// What the approval service says about a held statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// Approved (or covered by a time-boxed grant): run it.
    Approved {
        /// The request or grant id, for the audit trail.
        id: String,
    },
    /// Not approved (yet): the statement is refused with this error.
    Refused(GatewayError),
}

/// Decides held statements. Called only for statements whose verdict is
/// [`Decision::NeedsApproval`](crate::Decision), after policy and before audit "started".
#[async_trait::async_trait]
pub trait ApprovalService: Send + Sync {
    /// May wait (bounded by the implementation) for a decision.
    async fn request(
        &self,
        identity: &Identity,
        target: &Target,
        sql: &str,
        verdict: &Verdict,
    ) -> ApprovalOutcome;
}

/// Refuses every held statement, naming the rule: the built-in until approvals are configured.
#[derive(Debug, Default)]
pub struct NoApprovals;

#[async_trait::async_trait]
impl ApprovalService for NoApprovals {
    async fn request(
        &self,
        _: &Identity,
        _: &Target,
        _: &str,
        verdict: &Verdict,
    ) -> ApprovalOutcome {
        let mut e = GatewayError::new(
            ErrorKind::ApprovalRequired,
            Side::Gateway,
            verdict
                .reason
                .clone()
                .unwrap_or_else(|| "this statement requires approval".into()),
        )
        .with_hint("approvals are not configured on this gateway; ask an administrator");
        e.rule = verdict.rule.as_deref().map(str::to_owned);
        ApprovalOutcome::Refused(e)
    }
}
