//! The approval seam: statements a rule holds for someone else's approval.
//!
//! For a statement whose verdict is [`Decision::NeedsApproval`](crate::Decision) the session
//! asks the [`ApprovalService`] to [`submit`](ApprovalService::submit) an [`ApprovalRequest`]:
//! the service answers at once (a time-boxed grant covers it, an earlier request for exactly this
//! execution was approved, or it refuses), or it opens a request and says how long the statement
//! may wait ([`Submission::Pending`]). While it waits the session tells the client through the
//! protocol crate's [`NoticeSink`] (a NOTICE in PostgreSQL), and races the service's
//! [`wait`](ApprovalService::wait) with the session's [`HoldHandle`] (the client's cancel, the
//! gateway's shutdown) and the timeout. Whatever ends the wait is recorded in the audit trail,
//! and a wait that ends without a decision is handed back to the service with
//! [`end`](ApprovalService::end).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ErrorKind, GatewayError, Side};
use crate::parameters::RecordedParameters;
use crate::policy::{StatementObjects, Verdict};
use crate::session::SessionContext;

/// One execution held for approval, as the service sees it.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalRequest<'a> {
    /// Who asks, where, from where.
    pub session: &'a SessionContext,
    /// The statement's id within the session (as in its audit records).
    pub statement_id: u64,
    /// The statement text.
    pub sql: &'a str,
    /// The statement's shape without literal values, when the policy engine analysed it.
    pub fingerprint: Option<&'a str>,
    /// Classification, when analysed.
    pub classification: Option<&'a str>,
    /// Objects read and written, when analysed.
    pub objects: Option<&'a StatementObjects>,
    /// Bound parameters as the audit trail records them, when there were any and they are
    /// recorded.
    pub parameters: Option<&'a RecordedParameters>,
    /// SHA-256 over the target, the statement text and the exact bound values: an approval
    /// covers this execution and no other (same text with other parameters is another request).
    pub binding: [u8; 32],
    /// The verdict, naming the rule that holds the statement and its message.
    pub verdict: &'a Verdict,
    /// Whether the client can be told anything while the statement waits (the protocol crate
    /// handed the session a [`NoticeSink`]).
    pub notices: bool,
}

/// What the service answers to a submitted request.
#[derive(Debug)]
pub enum Submission {
    /// Run it now: `id` names the approved request or the grant that covers it (recorded in
    /// `statement_started`).
    Approved {
        /// Request or grant id.
        id: String,
    },
    /// Refused without a request (no approval service, no approver for the rule, ...).
    Refused(GatewayError),
    /// A request is open (new, or the one already open for exactly this execution).
    Pending(Hold),
}

/// An open request, and how the statement waits for it.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The request id.
    pub id: String,
    /// Whether `id` was opened by this submission (`false`: an earlier execution opened it).
    pub new: bool,
    /// What the user is told while it waits: the request id, who can approve, and where.
    pub notice: String,
    /// How long the statement may wait for the decision; `None`: it does not wait, it is refused
    /// now with [`refusal`](Self::refusal), and runs when the client sends it again after the
    /// approval.
    pub wait: Option<Duration>,
    /// The error the client gets when the statement does not wait.
    pub refusal: GatewayError,
}

/// How a request was decided, as [`ApprovalService::wait`] reports it.
#[derive(Debug)]
pub enum Decided {
    /// Approved: run it; the id names the request.
    Approved(String),
    /// Denied (or withdrawn): the error names the request and who decided.
    Denied(GatewayError),
    /// Nobody decided before the request expired.
    Expired(GatewayError),
}

/// Why a wait ended without a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The statement waited as long as it may.
    TimedOut,
    /// The client cancelled it (CancelRequest, KILL QUERY).
    Cancelled,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The client went away (its connection closed) while the statement waited.
    Disconnected,
}

impl HoldEnd {
    /// The snake-case name, as in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldEnd::TimedOut => "timed_out",
            HoldEnd::Cancelled => "cancelled",
            HoldEnd::ShuttingDown => "shutting_down",
            HoldEnd::Disconnected => "disconnected",
        }
    }
}

/// Decides held statements. Called only for statements whose verdict is
/// [`Decision::NeedsApproval`](crate::Decision), after policy and before audit "started".
#[async_trait::async_trait]
pub trait ApprovalService: Send + Sync {
    /// Answers at once: approved (a grant or an approved request covers it), refused, or pending.
    async fn submit(&self, request: &ApprovalRequest<'_>) -> Submission;

    /// Resolves when request `id` is decided. When approved the request is consumed: it covers
    /// this one execution. The session bounds the wait with the hold's timeout and the client's
    /// cancel.
    async fn wait(&self, id: &str) -> Decided;

    /// The wait for `id` ended without a decision; returns the error the client gets. A request
    /// that timed out or was interrupted by a shutdown may stay open (the client can run the
    /// statement again once it is approved); a cancelled one is withdrawn.
    async fn end(&self, id: &str, why: HoldEnd) -> GatewayError;
}

/// Refuses every held statement, naming the rule: the built-in until approvals are configured.
#[derive(Debug, Default)]
pub struct NoApprovals;

#[async_trait::async_trait]
impl ApprovalService for NoApprovals {
    async fn submit(&self, request: &ApprovalRequest<'_>) -> Submission {
        let verdict = request.verdict;
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
        Submission::Refused(e)
    }

    async fn wait(&self, id: &str) -> Decided {
        Decided::Denied(GatewayError::new(
            ErrorKind::ApprovalRequired,
            Side::Gateway,
            format!("approval request {id} is unknown: approvals are not configured"),
        ))
    }

    async fn end(&self, id: &str, _: HoldEnd) -> GatewayError {
        GatewayError::new(
            ErrorKind::ApprovalRequired,
            Side::Gateway,
            format!("approval request {id} is unknown: approvals are not configured"),
        )
    }
}

/// Where a protocol crate takes messages for its client that are not results: the notice that a
/// statement waits for approval. Called from the session's task; an implementation queues the
/// text for its wire (it must not block).
pub trait NoticeSink: Send + Sync {
    /// Sends `text` to the client as an informational message.
    fn notice(&self, text: &str);
}

/// Ends a session's wait for an approval from outside the session's task: the protocol crate
/// calls [`cancel`](Self::cancel) on the client's cancel (PostgreSQL's CancelRequest, MySQL's
/// KILL QUERY) and [`shut_down`](Self::shut_down) when the gateway stops. Cheap to clone. A
/// cancel with no wait in progress does nothing; a shutdown also ends every later wait at once.
#[derive(Clone, Default)]
pub struct HoldHandle {
    state: Arc<HoldState>,
}

#[derive(Default)]
struct HoldState {
    /// 0: nothing; 1: cancel the current wait; 2: shutting down (ends every wait); 3: the client
    /// went away (ends every wait).
    signal: AtomicU8,
    notify: tokio::sync::Notify,
    /// Whether a wait is in progress (cancel is only meaningful then).
    waiting: std::sync::atomic::AtomicBool,
}

const CANCEL: u8 = 1;
const SHUTDOWN: u8 = 2;
const DISCONNECTED: u8 = 3;

impl std::fmt::Debug for HoldHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldHandle")
            .field("waiting", &self.is_waiting())
            .finish()
    }
}

impl HoldHandle {
    /// Whether a statement of the session waits for an approval now.
    pub fn is_waiting(&self) -> bool {
        self.state.waiting.load(Ordering::Acquire)
    }

    /// Cancels the wait in progress, if any. Returns whether there was one.
    pub fn cancel(&self) -> bool {
        if !self.is_waiting() {
            return false;
        }
        let _ = self
            .state
            .signal
            .compare_exchange(0, CANCEL, Ordering::AcqRel, Ordering::Acquire);
        self.state.notify.notify_waiters();
        true
    }

    /// Ends the wait in progress and every later one: the client's connection closed.
    pub fn disconnected(&self) {
        let _ = self
            .state
            .signal
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != SHUTDOWN).then_some(DISCONNECTED)
            });
        self.state.notify.notify_waiters();
    }

    /// Ends the wait in progress and every later one: the gateway is stopping.
    pub fn shut_down(&self) {
        self.state.signal.store(SHUTDOWN, Ordering::Release);
        self.state.notify.notify_waiters();
    }

    /// Marks a hold as begun; the guard marks its end.
    pub(crate) fn begin(&self) -> WaitGuard<'_> {
        // A cancel aimed at an earlier wait must not end this one.
        let _ = self
            .state
            .signal
            .compare_exchange(CANCEL, 0, Ordering::AcqRel, Ordering::Acquire);
        self.state.waiting.store(true, Ordering::Release);
        WaitGuard(self)
    }

    /// Resolves when the current wait must end, and why.
    pub(crate) async fn ended(&self) -> HoldEnd {
        loop {
            let notified = self.state.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.state.signal.load(Ordering::Acquire) {
                CANCEL => return HoldEnd::Cancelled,
                SHUTDOWN => return HoldEnd::ShuttingDown,
                DISCONNECTED => return HoldEnd::Disconnected,
                _ => notified.await,
            }
        }
    }
}

/// Marks the end of a wait when dropped.
pub(crate) struct WaitGuard<'a>(&'a HoldHandle);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.state.waiting.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_ends_only_the_wait_in_progress() {
        let h = HoldHandle::default();
        assert!(!h.cancel(), "no wait: nothing to cancel");
        let guard = h.begin();
        let ended = h.ended();
        tokio::pin!(ended);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), ended.as_mut())
                .await
                .is_err(),
            "the earlier cancel (with no wait) must not end this wait"
        );
        assert!(h.cancel());
        assert_eq!(ended.await, HoldEnd::Cancelled);
        drop(guard);
        let _next = h.begin();
        let next = tokio::time::timeout(Duration::from_millis(20), h.ended()).await;
        assert!(next.is_err(), "a new wait starts uncancelled");
        h.shut_down();
        assert_eq!(h.ended().await, HoldEnd::ShuttingDown);
    }
}
