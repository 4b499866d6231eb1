//! Approvals for Portcullis: statements a `require-approval` rule holds wait for someone else's
//! approval, or run under a time-boxed grant.
//!
//! - [`Approvals`] is the gateway's [`ApprovalService`]: a held execution opens a request (or
//!   finds the one already open for exactly that statement and those bound values), waits for
//!   the decision, and runs once when a quorum of approvers agreed. A grant lets an identity run
//!   statements of one fingerprint, or held by one rule, on one target until it expires.
//! - The same type carries the decisions the admin API takes ([`Approvals::approve`],
//!   [`Approvals::deny`], [`Approvals::cancel`], grants), each checked against the actor's
//!   groups and recorded in the audit trail through a [`Recorder`] *before* it takes effect.
//! - Requests and grants live in a [`store::Backend`]: a SQLite file in `data_dir` by default,
//!   or a PostgreSQL database that gateway nodes on several hosts share (`store_url`). A pending
//!   request survives a restart (the client runs the statement again once it is approved).
//!
//! States: `pending` -> `approved` (quorum) -> `executed` (run once); `pending` -> `denied` |
//! `cancelled` | `expired`; `approved` -> `expired` when not run within `expire_after`.

pub mod config;
pub mod notify;
pub mod store;

use std::time::Duration;

use gateway_core::{
    ApprovalRequest, ApprovalService, AuditEvent, Decided, ErrorKind, GatewayError, Hold, HoldEnd,
    Identity, Side, Submission,
};
use serde_json::json;

pub use config::{ApprovalsConfig, Effective, RuleApprovals, WithoutNotices};
use std::sync::Arc;

use store::{now_us, Backend, Grant, Moved, Request, State, StoreError};

/// Writes an administrative action to the audit trail on behalf of the actor of one admin call.
/// An action is taken only after its record is written.
#[async_trait::async_trait]
pub trait Recorder: Send + Sync {
    /// Records `event`, concerning `target` when it names one.
    async fn record(&self, target: Option<&str>, event: AuditEvent) -> Result<(), GatewayError>;
}

/// Why an admin action was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// What kind of failure.
    pub kind: ActionErrorKind,
    /// For the caller.
    pub message: String,
}

/// The kinds of [`ActionError`], each an HTTP status in the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionErrorKind {
    /// No such request or grant (404).
    NotFound,
    /// The actor may not do this (403).
    Forbidden,
    /// The request is not in a state that allows it (409).
    Conflict,
    /// The call itself is wrong: a missing reason, a bad duration (400).
    Invalid,
    /// The store or the audit trail is unavailable (503).
    Unavailable,
}

impl ActionError {
    fn new(kind: ActionErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ActionError {
    fn from(e: StoreError) -> Self {
        ActionError::new(ActionErrorKind::Unavailable, e.to_string())
    }
}

impl From<GatewayError> for ActionError {
    fn from(e: GatewayError) -> Self {
        ActionError::new(ActionErrorKind::Unavailable, e.to_string())
    }
}

/// What a new grant covers.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    /// Who may run the statements.
    pub subject: String,
    /// On which target.
    pub target: String,
    /// Statements of this fingerprint (as in audit records and request listings).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Statements this require-approval rule holds.
    #[serde(default)]
    pub rule: Option<String>,
    /// For how long, e.g. `"30m"`.
    pub duration: String,
    /// Why (required).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The longest grant: a grant is just-in-time access, not a standing permission.
const MAX_GRANT: Duration = Duration::from_secs(24 * 3600);

/// The approval service: requests, decisions and grants over one [`Backend`].
pub struct Approvals {
    config: ApprovalsConfig,
    store: Arc<dyn Backend>,
    node: String,
    /// Bumped whenever this node decides something, so that waiting statements look at once.
    changed: tokio::sync::watch::Sender<u64>,
    /// Where approvers decide (the admin API's base URL), told in notices.
    admin_url: std::sync::OnceLock<String>,
    /// Announces requests and decisions.
    webhooks: notify::Webhooks,
}

impl Approvals {
    /// Opens the configured store: PostgreSQL at `store_url`, else the SQLite file at
    /// `config.store_path(data_dir)`.
    pub async fn open(
        config: ApprovalsConfig,
        data_dir: &std::path::Path,
        node: &str,
    ) -> Result<Self, StoreError> {
        let store: Arc<dyn Backend> = match &config.store_url {
            Some(url) => Arc::new(
                store::postgres::PostgresStore::open(url, config.store_ca_file.as_deref()).await?,
            ),
            None => Arc::new(store::sqlite::SqliteStore::open(
                &config.store_path(data_dir),
            )?),
        };
        Ok(Self::with_store(config, store, node))
    }

    /// The service over a given store. Starts the webhook sender (needs a tokio runtime).
    pub fn with_store(config: ApprovalsConfig, store: Arc<dyn Backend>, node: &str) -> Self {
        Self {
            webhooks: notify::Webhooks::start(config.webhooks.clone()),
            config,
            store,
            node: node.to_owned(),
            changed: tokio::sync::watch::channel(0).0,
            admin_url: std::sync::OnceLock::new(),
        }
    }

    /// Tells notices where approvers decide: the admin API's base URL (`http://host:port`), set
    /// once its listener is bound. Later calls do nothing.
    pub fn set_admin_url(&self, url: impl Into<String>) {
        let _ = self.admin_url.set(url.into());
    }

    /// The configuration.
    pub fn config(&self) -> &ApprovalsConfig {
        &self.config
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Requests waiting for decisions now (every node's, when the store is shared).
    pub async fn pending(&self) -> Result<u64, StoreError> {
        self.store.count(State::Pending).await
    }

    /// Every pending request, for re-judging after a policy change ([`Approvals::cancel_moot`]).
    async fn all_pending(&self) -> Result<Vec<Request>, StoreError> {
        self.store.list(Some(State::Pending), None, 10_000).await
    }

    /// Cancels the pending requests a policy change made moot: `still_held(request)` says
    /// whether the statement would still be held by the same rule (the caller re-judges it
    /// under the new policy). Returns the ids cancelled. Waiting statements of cancelled
    /// requests are refused with the reason.
    pub async fn cancel_moot(
        &self,
        still_held: impl Fn(&Request) -> bool,
        recorder: &dyn Recorder,
    ) -> Result<Vec<String>, StoreError> {
        let mut cancelled = Vec::new();
        for r in self.all_pending().await? {
            if still_held(&r) {
                continue;
            }
            let reason = "the policy changed: the statement is no longer held by this rule";
            let recorded = recorder
                .record(
                    Some(&r.target),
                    AuditEvent::AdminAction {
                        action: "approval_moot",
                        id: r.id.clone(),
                        reason: Some(reason.to_owned()),
                        detail: json!({ "requester": r.subject, "rule": r.rule }),
                    },
                )
                .await;
            if let Err(e) = recorded {
                tracing::error!(request = %r.id, error = %e, "could not record a moot request; it stays pending");
                continue;
            }
            if self
                .store
                .close(&r.id, State::Cancelled, "(policy)", Some(reason))
                .await?
                == Moved::Done
            {
                cancelled.push(r.id.clone());
            }
        }
        if !cancelled.is_empty() {
            self.bump();
        }
        Ok(cancelled)
    }

    /// Whether `actor` may use the admin API's administrative calls.
    pub fn is_admin(&self, actor: &Identity) -> bool {
        self.config.admins.iter().any(|g| actor.in_group(g))
    }

    /// Whether `actor` may decide some requests (is in some approver group).
    pub fn is_approver(&self, actor: &Identity) -> bool {
        self.config.approvers.iter().any(|g| actor.in_group(g))
            || self
                .config
                .rules
                .iter()
                .filter_map(|r| r.approvers.as_ref())
                .flatten()
                .any(|g| actor.in_group(g))
    }

    fn may_see(&self, actor: &Identity, r: &Request) -> bool {
        self.is_admin(actor)
            || r.subject == actor.subject
            || r.approvers.iter().any(|g| actor.in_group(g))
    }

    /// Requests the actor may see, newest first: all of them for admins and approvers, their
    /// own for everyone else.
    pub async fn list(
        &self,
        actor: &Identity,
        state: Option<State>,
        limit: u32,
    ) -> Result<Vec<Request>, ActionError> {
        let everyone = self.is_admin(actor) || self.is_approver(actor);
        let subject = (!everyone).then(|| actor.subject.clone());
        let mut list = self.store.list(state, subject.as_deref(), limit).await?;
        list.retain(|r| self.may_see(actor, r));
        Ok(list)
    }

    /// One request, if the actor may see it.
    pub async fn get(&self, actor: &Identity, id: &str) -> Result<Request, ActionError> {
        let r = self.store.get(id).await?;
        match r {
            Some(r) if self.may_see(actor, &r) => Ok(r),
            _ => Err(not_found("approval request", id)),
        }
    }

    /// Adds `actor`'s approval. A requester never approves their own request, except a member of
    /// a `break_glass` group with a reason: that approval alone approves it, and is recorded as
    /// break-glass.
    pub async fn approve(
        &self,
        actor: &Identity,
        id: &str,
        reason: Option<&str>,
        recorder: &dyn Recorder,
    ) -> Result<Request, ActionError> {
        let r = self.get(actor, id).await?;
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        let own = r.subject == actor.subject;
        let break_glass = own && self.config.break_glass.iter().any(|g| actor.in_group(g));
        if own && !break_glass {
            return Err(ActionError::new(
                ActionErrorKind::Forbidden,
                format!("{} cannot approve their own request {id}", actor.subject),
            ));
        }
        if break_glass && reason.is_none() {
            return Err(ActionError::new(
                ActionErrorKind::Invalid,
                "approving one's own request (break glass) needs a reason",
            ));
        }
        if !break_glass {
            may_decide(actor, &r)?;
        }
        reason_given(&r, reason)?;
        if r.state != State::Pending {
            return Err(conflict(&r));
        }
        if r.approvals.iter().any(|v| v.approver == actor.subject) {
            return Err(ActionError::new(
                ActionErrorKind::Conflict,
                format!("{} already approved request {id}", actor.subject),
            ));
        }
        let given = r.approvals.len() + 1;
        let action = if break_glass {
            "approval_break_glass"
        } else {
            "approval_approved"
        };
        recorder
            .record(
                Some(&r.target),
                AuditEvent::AdminAction {
                    action,
                    id: id.to_owned(),
                    reason: reason.map(str::to_owned),
                    detail: json!({
                        "requester": r.subject,
                        "rule": r.rule,
                        "approvals": given,
                        "quorum": r.quorum,
                        "approved": break_glass || given >= r.quorum as usize,
                        "break_glass": break_glass,
                    }),
                },
            )
            .await?;
        if break_glass {
            tracing::warn!(request = id, subject = %actor.subject, "break-glass approval of one's own request");
        }
        let moved = self
            .store
            .vote(id, &actor.subject, reason, break_glass)
            .await?;
        self.bump();
        let r = self.after_move(actor, id, moved).await?;
        if break_glass {
            self.notify("break_glass", &r, Some(&actor.subject), reason);
        } else if matches!(r.state, State::Approved | State::Executed) {
            self.notify("approved", &r, Some(&actor.subject), reason);
        }
        Ok(r)
    }

    fn notify(&self, event: &'static str, r: &Request, by: Option<&str>, reason: Option<&str>) {
        self.webhooks.emit(notify::Notification {
            event,
            request_id: r.id.clone(),
            requester: r.subject.clone(),
            target: r.target.clone(),
            rule: r.rule.clone(),
            sql: r.sql.clone(),
            by: by.map(str::to_owned),
            reason: reason.map(str::to_owned),
            approvers: r.approvers.clone(),
            quorum: r.quorum,
            url: self
                .admin_url
                .get()
                .map(|base| format!("{base}/api/v1/approvals/{}", r.id)),
            time: store::format_us(now_us()),
        });
    }

    /// Denies a request (approvers of the request only).
    pub async fn deny(
        &self,
        actor: &Identity,
        id: &str,
        reason: Option<&str>,
        recorder: &dyn Recorder,
    ) -> Result<Request, ActionError> {
        let r = self.get(actor, id).await?;
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        may_decide(actor, &r)?;
        reason_given(&r, reason)?;
        self.close(actor, r, State::Denied, "approval_denied", reason, recorder)
            .await
    }

    /// Withdraws a request: its requester or an admin.
    pub async fn cancel(
        &self,
        actor: &Identity,
        id: &str,
        reason: Option<&str>,
        recorder: &dyn Recorder,
    ) -> Result<Request, ActionError> {
        let r = self.get(actor, id).await?;
        if r.subject != actor.subject && !self.is_admin(actor) {
            return Err(ActionError::new(
                ActionErrorKind::Forbidden,
                format!("only the requester or an admin may cancel request {id}"),
            ));
        }
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        self.close(
            actor,
            r,
            State::Cancelled,
            "approval_cancelled",
            reason,
            recorder,
        )
        .await
    }

    async fn close(
        &self,
        actor: &Identity,
        r: Request,
        to: State,
        action: &'static str,
        reason: Option<&str>,
        recorder: &dyn Recorder,
    ) -> Result<Request, ActionError> {
        if !matches!(r.state, State::Pending | State::Approved) {
            return Err(conflict(&r));
        }
        recorder
            .record(
                Some(&r.target),
                AuditEvent::AdminAction {
                    action,
                    id: r.id.clone(),
                    reason: reason.map(str::to_owned),
                    detail: json!({ "requester": r.subject, "rule": r.rule, "was": r.state }),
                },
            )
            .await?;
        let moved = self.store.close(&r.id, to, &actor.subject, reason).await?;
        self.bump();
        let closed = self.after_move(actor, &r.id, moved).await?;
        self.notify(to.as_str(), &closed, Some(&actor.subject), reason);
        Ok(closed)
    }

    async fn after_move(
        &self,
        actor: &Identity,
        id: &str,
        moved: Moved,
    ) -> Result<Request, ActionError> {
        match moved {
            Moved::Done => self.get(actor, id).await,
            Moved::Missing => Err(not_found("approval request", id)),
            Moved::Conflict(state) => Err(ActionError::new(
                ActionErrorKind::Conflict,
                format!(
                    "request {id} is {} now; nothing was changed",
                    state.as_str()
                ),
            )),
        }
    }

    /// Creates a grant (admins only).
    pub async fn create_grant(
        &self,
        actor: &Identity,
        spec: GrantSpec,
        recorder: &dyn Recorder,
    ) -> Result<Grant, ActionError> {
        if !self.is_admin(actor) {
            return Err(forbidden_admin(actor));
        }
        let invalid = |m: String| ActionError::new(ActionErrorKind::Invalid, m);
        let duration = humantime::parse_duration(&spec.duration)
            .map_err(|e| invalid(format!("`duration`: {e} (write e.g. \"30m\")")))?;
        if duration.is_zero() || duration > MAX_GRANT {
            return Err(invalid(format!(
                "`duration` must be more than 0s and at most {}",
                humantime::format_duration(MAX_GRANT)
            )));
        }
        let fingerprint = spec.fingerprint.filter(|f| !f.is_empty());
        let rule = spec.rule.filter(|r| !r.is_empty());
        if fingerprint.is_none() && rule.is_none() {
            return Err(invalid(
                "a grant names the statements it covers: `fingerprint`, `rule`, or both".into(),
            ));
        }
        let reason = spec
            .reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        if reason.is_none() {
            return Err(invalid("a grant needs a `reason`".into()));
        }
        if spec.subject.is_empty() || spec.target.is_empty() {
            return Err(invalid("`subject` and `target` are required".into()));
        }
        let created = now_us();
        let grant = Grant {
            id: new_id("grt"),
            subject: spec.subject,
            target: spec.target,
            fingerprint,
            rule,
            created_by: actor.subject.clone(),
            reason,
            created,
            expires: created
                .saturating_add(i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)),
            revoked: None,
            revoked_by: None,
            uses: 0,
        };
        recorder
            .record(
                Some(&grant.target),
                AuditEvent::AdminAction {
                    action: "grant_created",
                    id: grant.id.clone(),
                    reason: grant.reason.clone(),
                    detail: json!({
                        "subject": grant.subject,
                        "fingerprint": grant.fingerprint,
                        "rule": grant.rule,
                        "expires": store::format_us(grant.expires),
                    }),
                },
            )
            .await?;
        self.store.insert_grant(&grant).await?;
        Ok(grant)
    }

    /// Grants (admins: all; others: their own), newest first; only those in force when
    /// `active`.
    pub async fn grants(&self, actor: &Identity, active: bool) -> Result<Vec<Grant>, ActionError> {
        let mut list = self.store.grants(active, 1000).await?;
        if !self.is_admin(actor) {
            list.retain(|g| g.subject == actor.subject);
        }
        Ok(list)
    }

    /// Revokes a grant in force (admins only).
    pub async fn revoke_grant(
        &self,
        actor: &Identity,
        id: &str,
        recorder: &dyn Recorder,
    ) -> Result<Grant, ActionError> {
        if !self.is_admin(actor) {
            return Err(forbidden_admin(actor));
        }
        let Some(g) = self.store.grant(id).await? else {
            return Err(not_found("grant", id));
        };
        if g.revoked.is_some() || g.expires <= now_us() {
            return Err(ActionError::new(
                ActionErrorKind::Conflict,
                format!("grant {id} is no longer in force"),
            ));
        }
        recorder
            .record(
                Some(&g.target),
                AuditEvent::AdminAction {
                    action: "grant_revoked",
                    id: id.to_owned(),
                    reason: None,
                    detail: json!({ "subject": g.subject, "uses": g.uses }),
                },
            )
            .await?;
        if !self.store.revoke(id, &actor.subject).await? {
            return Err(ActionError::new(
                ActionErrorKind::Conflict,
                format!("grant {id} is no longer in force"),
            ));
        }
        self.store
            .grant(id)
            .await?
            .ok_or_else(|| not_found("grant", id))
    }

    fn notice(&self, id: &str, rule: Option<&str>, message: Option<&str>, e: &Effective) -> String {
        let mut text = format!("statement held for approval: request {id}");
        if let Some(rule) = rule {
            text.push_str(&format!(" (rule \"{rule}\""));
            if let Some(m) = message {
                text.push_str(&format!(": {m}"));
            }
            text.push(')');
        }
        text.push_str(&format!(
            ". It needs {} approval{} from the group{} {}",
            e.quorum,
            if e.quorum == 1 { "" } else { "s" },
            if e.approvers.len() == 1 { "" } else { "s" },
            e.approvers.join(", ")
        ));
        match self.admin_url.get() {
            Some(url) => text.push_str(&format!(
                "; approve with `portcullis approvals approve {id}` or POST {url}/api/v1/approvals/{id}/approve."
            )),
            None => text.push_str(&format!("; approve with `portcullis approvals approve {id}`.")),
        }
        text
    }

    fn store_unavailable(e: StoreError) -> GatewayError {
        tracing::error!(error = %e, "the approval store is unavailable");
        GatewayError::new(
            ErrorKind::ApprovalRequired,
            Side::Gateway,
            "this statement requires approval, and the approval store is unavailable",
        )
        .with_detail(e.to_string())
    }
}

#[async_trait::async_trait]
impl ApprovalService for Approvals {
    async fn submit(&self, req: &ApprovalRequest<'_>) -> Submission {
        let rule = req.verdict.rule.as_deref();
        let effective = self.config.effective(rule);
        let session = req.session;
        let subject = session.identity.subject.clone();
        let target = session.target.name.clone();
        let binding = hex::encode(req.binding);
        let fingerprint = req.fingerprint.map(str::to_owned);
        // A grant in force covers it.
        match self
            .store
            .use_grant(&subject, &target, fingerprint.as_deref(), rule)
            .await
        {
            Ok(Some(id)) => return Submission::Approved { id },
            Ok(None) => {}
            Err(e) => return Submission::Refused(Self::store_unavailable(e)),
        }
        let hold = |id: String, new: bool| {
            let wait = (!effective.wait.is_zero()
                && (req.notices || effective.without_notices == WithoutNotices::Wait))
                .then_some(effective.wait);
            let refusal = GatewayError::new(
                ErrorKind::ApprovalRequired,
                Side::Gateway,
                format!(
                    "statement held for approval: request {id}; run it again once the request is approved"
                ),
            )
            .with_hint(format!(
                "approvers: the group{} {} (portcullis approvals show {id})",
                if effective.approvers.len() == 1 { "" } else { "s" },
                effective.approvers.join(", ")
            ));
            let mut refusal = refusal;
            refusal.rule = rule.map(str::to_owned);
            Submission::Pending(Hold {
                notice: self.notice(&id, rule, req.verdict.reason.as_deref(), &effective),
                id,
                new,
                wait,
                refusal,
            })
        };
        // The request already open for exactly this execution: approved -> run it once;
        // pending -> wait on it again.
        match self.store.open_for(&binding, &subject).await {
            Ok(Some(open)) if open.state == State::Approved => {
                match self.store.consume(&open.id).await {
                    Ok(true) => return Submission::Approved { id: open.id },
                    Ok(false) => {}
                    Err(e) => return Submission::Refused(Self::store_unavailable(e)),
                }
            }
            Ok(Some(open)) => return hold(open.id, false),
            Ok(None) => {}
            Err(e) => return Submission::Refused(Self::store_unavailable(e)),
        }
        if effective.approvers.is_empty() {
            let mut e = GatewayError::new(
                ErrorKind::ApprovalRequired,
                Side::Gateway,
                req.verdict
                    .reason
                    .clone()
                    .unwrap_or_else(|| "this statement requires approval".into()),
            )
            .with_hint("no group may approve statements of this rule; ask an administrator");
            e.rule = rule.map(str::to_owned);
            return Submission::Refused(e);
        }
        let created = now_us();
        let expires = created.saturating_add(
            i64::try_from(self.config.expire_after.as_micros()).unwrap_or(i64::MAX),
        );
        let request = Request {
            id: new_id("apr"),
            state: State::Pending,
            created,
            expires,
            subject,
            groups: session.identity.groups.clone(),
            target,
            node: self.node.clone(),
            session_id: session.id.to_string(),
            statement_id: req.statement_id,
            sql: req.sql.to_owned(),
            fingerprint,
            parameters: req.parameters.and_then(|p| serde_json::to_value(p).ok()),
            binding,
            rule: rule.map(str::to_owned),
            message: req.verdict.reason.clone(),
            approvers: effective.approvers.clone(),
            quorum: effective.quorum,
            require_reason: effective.require_reason,
            approvals: Vec::new(),
            decided_by: None,
            decision_reason: None,
            executed: None,
        };
        let id = request.id.clone();
        match self.store.insert(&request).await {
            Ok(()) => {
                self.notify("requested", &request, None, None);
                hold(id, true)
            }
            Err(e) => Submission::Refused(Self::store_unavailable(e)),
        }
    }

    async fn wait(&self, id: &str) -> Decided {
        let mut changed = self.changed.subscribe();
        loop {
            let state = match self.store.get(id).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Decided::Denied(refused(format!(
                        "approval request {id} no longer exists"
                    )))
                }
                Err(e) => return Decided::Denied(Self::store_unavailable(e)),
            };
            match state.state {
                State::Pending => {}
                State::Approved => {
                    match self.store.consume(id).await {
                        Ok(true) => return Decided::Approved(id.to_owned()),
                        // Someone else moved it between the two reads: look again.
                        Ok(false) => continue,
                        Err(e) => return Decided::Denied(Self::store_unavailable(e)),
                    }
                }
                State::Denied => {
                    return Decided::Denied(refused(format!(
                        "approval request {id} was denied by {}{}",
                        state.decided_by.as_deref().unwrap_or("an approver"),
                        state
                            .decision_reason
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )))
                }
                State::Cancelled => {
                    return Decided::Denied(refused(format!(
                        "approval request {id} was cancelled by {}",
                        state.decided_by.as_deref().unwrap_or("an administrator")
                    )))
                }
                State::Expired => {
                    return Decided::Expired(refused(format!(
                        "approval request {id} expired before it was approved"
                    )))
                }
                State::Executed => {
                    return Decided::Denied(refused(format!(
                    "approval request {id} was already used by another execution of this statement"
                )))
                }
            }
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }

    async fn end(&self, id: &str, why: HoldEnd) -> GatewayError {
        match why {
            HoldEnd::TimedOut => refused(format!(
                "approval request {id} was not decided while the statement waited; it stays open: run the statement again once it is approved"
            )),
            HoldEnd::Cancelled => {
                let closed = self
                    .store
                    .close(id, State::Cancelled, "(client)", Some("cancelled while waiting"))
                    .await;
                if let Err(e) = closed {
                    tracing::error!(request = id, error = %e, "could not withdraw a cancelled approval request");
                }
                self.bump();
                refused(format!(
                    "canceling statement due to user request; approval request {id} is withdrawn"
                ))
            }
            HoldEnd::Disconnected => {
                if let Err(e) = self
                    .store
                    .close(id, State::Cancelled, "(client)", Some("the client disconnected while waiting"))
                    .await
                {
                    tracing::error!(request = id, error = %e, "could not withdraw the request of a client that left");
                }
                self.bump();
                refused(format!(
                    "the client disconnected; approval request {id} is withdrawn"
                ))
            }
            HoldEnd::ShuttingDown => GatewayError::new(
                ErrorKind::ShuttingDown,
                Side::Gateway,
                format!(
                    "the gateway is shutting down; approval request {id} stays open: reconnect and run the statement again once it is approved"
                ),
            ),
        }
    }
}

/// Whether `actor` is in one of `r`'s approver groups.
fn may_decide(actor: &Identity, r: &Request) -> Result<(), ActionError> {
    if r.approvers.iter().any(|g| actor.in_group(g)) {
        return Ok(());
    }
    Err(ActionError::new(
        ActionErrorKind::Forbidden,
        format!(
            "{} may not decide request {}: its approvers are the groups {}",
            actor.subject,
            r.id,
            r.approvers.join(", ")
        ),
    ))
}

/// Whether a decision on `r` gives the reason it needs.
fn reason_given(r: &Request, reason: Option<&str>) -> Result<(), ActionError> {
    if r.require_reason && reason.is_none() {
        return Err(ActionError::new(
            ActionErrorKind::Invalid,
            format!("request {} needs a reason with every decision", r.id),
        ));
    }
    Ok(())
}

/// A decision on a request, as the admin API's routes name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// [`Approvals::approve`].
    Approve,
    /// [`Approvals::deny`].
    Deny,
    /// [`Approvals::cancel`].
    Cancel,
}

impl Approvals {
    /// Takes decision `verb` on request `id` for `actor`.
    pub async fn decide(
        &self,
        verb: Verb,
        actor: &Identity,
        id: &str,
        reason: Option<&str>,
        recorder: &dyn Recorder,
    ) -> Result<Request, ActionError> {
        match verb {
            Verb::Approve => self.approve(actor, id, reason, recorder).await,
            Verb::Deny => self.deny(actor, id, reason, recorder).await,
            Verb::Cancel => self.cancel(actor, id, reason, recorder).await,
        }
    }
}

fn refused(message: String) -> GatewayError {
    GatewayError::new(ErrorKind::ApprovalRequired, Side::Gateway, message)
}

fn conflict(r: &Request) -> ActionError {
    ActionError::new(
        ActionErrorKind::Conflict,
        format!(
            "request {} is {}; it cannot be decided",
            r.id,
            r.state.as_str()
        ),
    )
}

fn not_found(what: &str, id: &str) -> ActionError {
    ActionError::new(ActionErrorKind::NotFound, format!("no {what} {id}"))
}

fn forbidden_admin(actor: &Identity) -> ActionError {
    ActionError::new(
        ActionErrorKind::Forbidden,
        format!("{} is not in an admin group of [approvals]", actor.subject),
    )
}

/// `prefix_` and 12 random characters: short enough to type, too many to guess.
fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut id = String::with_capacity(prefix.len() + 13);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..12 {
        id.push(ALPHABET[rand::random_range(0..ALPHABET.len())] as char);
    }
    id
}
