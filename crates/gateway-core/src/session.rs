//! The session API protocol crates drive, and the one place where the order of phases lives:
//! authenticate -> target -> access -> audit "opened"; per statement: judge -> (deny: audit
//! "denied") -> approval -> audit "started" -> results -> audit "finished"; close -> audit "closed".

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::approval::{
    ApprovalRequest, ApprovalService, Decided, HoldEnd, HoldHandle, NoApprovals, NoticeSink,
    Submission,
};
use crate::audit::{now, AuditEvent, AuditRecord, AuditSink, LogAuditSink, RecordedError};
use crate::error::{ErrorKind, GatewayError, Side};
use crate::identity::{Authenticator, ClientInfo, Credentials, DenyAllAuthenticator, Identity};
use crate::masking::{
    Catalog, EmptyCatalog, MaskPlan, MaskedColumn, Masker, NoMasking, PlanRequest, ResultColumn,
};
use crate::metrics::{Metrics, ProtocolMetrics};
use crate::parameters::{ParameterAudit, RecordedParameters};
use crate::policy::{
    Access, AllowAll, Decision, Judgement, PolicyEngine, SqlSettings, StatementContext,
};
use crate::target::{Protocol, Target, Targets};
use crate::trace::TARGET;
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

struct Inner {
    node: Arc<str>,
    authenticator: Arc<dyn Authenticator>,
    policy: Arc<dyn PolicyEngine>,
    masker: Arc<dyn Masker>,
    audit: Arc<dyn AuditSink>,
    approvals: Arc<dyn ApprovalService>,
    parameters: ParameterAudit,
    targets: Targets,
    metrics: Arc<Metrics>,
    live: Arc<crate::live::LiveSessions>,
}

/// A gateway: the configured seams and targets. Cheap to clone; many can live in one process.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// Builds a [`Gateway`]; every seam has a built-in default (deny-all authentication, allow-all
/// policy, no masking, log audit sink, no approvals).
pub struct GatewayBuilder {
    node: String,
    authenticator: Arc<dyn Authenticator>,
    policy: Arc<dyn PolicyEngine>,
    masker: Arc<dyn Masker>,
    audit: Arc<dyn AuditSink>,
    approvals: Arc<dyn ApprovalService>,
    parameters: ParameterAudit,
    targets: Targets,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self {
            node: "portcullis".into(),
            authenticator: Arc::new(DenyAllAuthenticator),
            policy: Arc::new(AllowAll::default()),
            masker: Arc::new(NoMasking),
            audit: Arc::new(LogAuditSink),
            approvals: Arc::new(NoApprovals),
            parameters: ParameterAudit::default(),
            targets: Targets::default(),
        }
    }
}

impl GatewayBuilder {
    /// Node name recorded in every audit record.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = node.into();
        self
    }
    /// Sets the authenticator.
    pub fn authenticator(mut self, a: Arc<dyn Authenticator>) -> Self {
        self.authenticator = a;
        self
    }
    /// Sets the policy engine.
    pub fn policy(mut self, p: Arc<dyn PolicyEngine>) -> Self {
        self.policy = p;
        self
    }
    /// Sets the masker.
    pub fn masker(mut self, m: Arc<dyn Masker>) -> Self {
        self.masker = m;
        self
    }
    /// Sets the audit sink.
    pub fn audit(mut self, a: Arc<dyn AuditSink>) -> Self {
        self.audit = a;
        self
    }
    /// Sets the approval service.
    pub fn approvals(mut self, a: Arc<dyn ApprovalService>) -> Self {
        self.approvals = a;
        self
    }
    /// Sets how bound parameters are recorded (default: recorded, each cut at 1 KiB).
    pub fn parameters(mut self, p: ParameterAudit) -> Self {
        self.parameters = p;
        self
    }
    /// Sets the targets.
    pub fn targets(mut self, t: Targets) -> Self {
        self.targets = t;
        self
    }
    /// Finishes the gateway, with its own fresh [`Metrics`].
    pub fn build(self) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                node: Arc::from(self.node),
                authenticator: self.authenticator,
                policy: self.policy,
                masker: self.masker,
                audit: self.audit,
                approvals: self.approvals,
                parameters: self.parameters,
                targets: self.targets,
                metrics: Arc::new(Metrics::new()),
                live: Arc::default(),
            }),
        }
    }
}

/// What a protocol crate knows when a client asks for a session.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Credentials from the handshake.
    pub credentials: Credentials,
    /// Facts about the client connection.
    pub client: ClientInfo,
    /// The wire protocol, which together with `database` chooses the target.
    pub protocol: Protocol,
    /// The database name the client asked for.
    pub database: String,
    /// Refuse the login (access denied) when the user name in the credentials differs from the
    /// authenticated identity's subject. Off by default: many clients send their OS user name, and
    /// the subject comes from the credential, not from this name.
    pub require_user_match: bool,
}

/// The immutable facts of an admitted session, shared with maskers and rules.
#[derive(Debug)]
pub struct SessionContext {
    /// Session id, unique per node.
    pub id: Arc<str>,
    /// Who.
    pub identity: Identity,
    /// Where.
    pub target: Arc<Target>,
    /// With what access.
    pub access: Access,
    /// From where.
    pub client: Arc<ClientInfo>,
    subject: Arc<str>,
    target_name: Arc<str>,
}

impl Gateway {
    /// Starts building a gateway.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The configured targets.
    pub fn targets(&self) -> &Targets {
        &self.inner.targets
    }

    /// This gateway's metrics: the session phases record into them, protocol crates add accepted
    /// connections and active sessions, an admin listener serves [`Metrics::encode`].
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Phase 1 of every connection: authenticate, choose the target, check access, record the
    /// session. Failed logins are audited too (without the credential). The protocol crate
    /// connects upstream only after this succeeds.
    pub async fn open_session(&self, req: SessionRequest) -> Result<Session, GatewayError> {
        let id: Arc<str> = Arc::from(new_session_id());
        let client = Arc::new(req.client.clone());
        let auth = tracing::info_span!(
            target: TARGET,
            "auth",
            user = req.credentials.user(),
            database = %req.database,
            subject = Empty,
            access = Empty,
            error.kind = Empty,
            otel.status_code = Empty,
        );
        let admitted = self.admit(&req).instrument(auth.clone()).await;
        if !auth.is_disabled() {
            match &admitted {
                Ok((identity, _, access)) => {
                    auth.record("subject", identity.subject.as_str());
                    auth.record("access", access_name(*access));
                }
                Err(e) => {
                    auth.record("error.kind", e.kind.as_str());
                    auth.record("otel.status_code", "error");
                }
            }
        }
        drop(auth);
        match admitted {
            Ok((identity, target, access)) => {
                let subject = Arc::from(identity.subject.as_str());
                let target_name = Arc::from(target.name.as_str());
                let ctx = Arc::new(SessionContext {
                    id,
                    identity,
                    target,
                    access,
                    client,
                    subject,
                    target_name,
                });
                let metrics = Arc::clone(self.inner.metrics.protocol(req.protocol));
                let masking = self.inner.masker.is_active(&ctx);
                let statements = Arc::new(AtomicU64::new(0));
                let holds = HoldHandle::default();
                let end = Arc::new(crate::live::EndSignal::default());
                let live = self.inner.live.register(&ctx, &statements, &holds, &end);
                let session = Session {
                    gateway: self.clone(),
                    ctx,
                    statements,
                    metrics,
                    masking,
                    catalog: OnceLock::new(),
                    notices: OnceLock::new(),
                    holds,
                    end,
                    _live: live,
                };
                session
                    .record(AuditEvent::SessionOpened {
                        user: req.credentials.user().to_owned(),
                        auth_method: session.ctx.identity.auth_method,
                        groups: session.ctx.identity.groups.clone(),
                        access,
                    })
                    .await?;
                Ok(session)
            }
            Err(e) => {
                self.inner.metrics.login_failed(req.protocol, e.kind);
                let record = AuditRecord {
                    time: now(),
                    node: Arc::clone(&self.inner.node),
                    session_id: id,
                    subject: None,
                    target: Some(Arc::from(req.database.as_str())),
                    client,
                    event: AuditEvent::LoginFailed {
                        user: req.credentials.user().to_owned(),
                        database: req.database.clone(),
                        kind: e.kind,
                        reason: e.message.clone(),
                    },
                };
                // The login is refused either way; a failing sink must not turn a wrong password
                // into a different error, but it must be visible.
                let span = tracing::info_span!(target: TARGET, "audit", event = "login_failed");
                if let Err(audit_err) = self.inner.audit.record(record).instrument(span).await {
                    self.inner.metrics.audit_failure();
                    tracing::error!(error = %audit_err, "could not record a failed login");
                }
                Err(e)
            }
        }
    }

    /// The sessions admitted and not yet dropped, oldest first.
    pub fn live_sessions(&self) -> Vec<crate::live::LiveSession> {
        self.inner.live.list()
    }

    /// Ends live session `id` for `reason`: a statement of it waiting for approval stops
    /// waiting, and its protocol crate closes the connection after the statement in flight
    /// ([`Session::terminated`]). `None` when no such session is live.
    pub fn end_session(&self, id: &str, reason: &str) -> Option<crate::live::LiveSession> {
        self.inner.live.end(id, reason.to_owned())
    }

    /// Authenticates credentials with the gateway's authenticator, outside any session (an admin
    /// API presenting a bearer token). No audit record: the caller records what it does.
    pub async fn authenticate(
        &self,
        credentials: &Credentials,
        client: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        self.inner
            .authenticator
            .authenticate(credentials, client)
            .await
    }

    /// Records an administrative action taken outside any session ([`AuditEvent::AdminAction`]):
    /// `subject` acted, from `client`, on `target` when the action concerns one. The session id
    /// of the record is `admin`. `Err` when the trail could not take it: the caller must then
    /// not report the action as done.
    pub async fn record_admin(
        &self,
        subject: &str,
        target: Option<&str>,
        client: ClientInfo,
        event: AuditEvent,
    ) -> Result<(), GatewayError> {
        if !self.inner.audit.enabled() {
            return Ok(());
        }
        let record = AuditRecord {
            time: now(),
            node: Arc::clone(&self.inner.node),
            session_id: Arc::from("admin"),
            subject: Some(Arc::from(subject)),
            target: target.map(Arc::from),
            client: Arc::new(client),
            event,
        };
        let span = tracing::info_span!(target: TARGET, "audit", event = "admin_action");
        self.inner
            .audit
            .record(record)
            .instrument(span)
            .await
            .map_err(|e| {
                self.inner.metrics.audit_failure();
                GatewayError::new(
                    ErrorKind::AuditUnavailable,
                    Side::Gateway,
                    "the audit trail is unavailable, so the action was not taken",
                )
                .with_detail(e.message)
            })
    }

    async fn admit(
        &self,
        req: &SessionRequest,
    ) -> Result<(Identity, Arc<Target>, Access), GatewayError> {
        let identity = self
            .inner
            .authenticator
            .authenticate(&req.credentials, &req.client)
            .await?;
        let user = req.credentials.user();
        if req.require_user_match && user != identity.subject {
            return Err(GatewayError::new(
                ErrorKind::AccessDenied,
                Side::Client,
                format!(
                    "user name \"{user}\" does not match the authenticated subject \"{}\"",
                    identity.subject
                ),
            )
            .with_hint(format!(
                "connect with user={} (this listener requires the user name to be the subject)",
                identity.subject
            )));
        }
        let target = self
            .inner
            .targets
            .get(req.protocol, &req.database)
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::UnknownTarget,
                    Side::Client,
                    format!(
                        "database \"{}\" is not a target of this gateway",
                        req.database
                    ),
                )
                .with_hint("connect with the database name of a configured target")
            })?;
        let access = self.inner.policy.access(&identity, &target)?;
        Ok((identity, target, access))
    }
}

fn new_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Time plus a process-wide counter: unique per node and sortable. The counter is the only
    // process-wide state and carries no configuration.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{t:x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// An admitted session. Protocol crates call [`prepare`](Self::prepare) for every statement text,
/// [`execute`](Self::execute) right before forwarding an execution, and
/// [`Session::finish`] when its result completes.
pub struct Session {
    gateway: Gateway,
    ctx: Arc<SessionContext>,
    /// Statements judged so far (shared with the live-session list).
    statements: Arc<AtomicU64>,
    /// This session's protocol's series, resolved once.
    metrics: Arc<ProtocolMetrics>,
    /// Whether the masker may rewrite this session's results ([`Masker::is_active`]), asked
    /// once: executions of a session it does not mask carry no masker, and so do not touch the
    /// shared masker's reference count, which every worker would otherwise contend on.
    masking: bool,
    /// The target's catalog, set by the protocol crate ([`Session::set_catalog`]); masking treats
    /// every origin as unresolvable without one.
    catalog: OnceLock<Arc<dyn Catalog>>,
    /// Where notices for the client go (set by the protocol crate; none: the client is told
    /// nothing while a statement waits).
    notices: OnceLock<Arc<dyn NoticeSink>>,
    /// Ends a wait for approval from outside the session's task.
    holds: HoldHandle,
    /// Raised when an administrator ends the session.
    end: Arc<crate::live::EndSignal>,
    /// Lists the session among the gateway's live sessions while it lives.
    _live: crate::live::LiveGuard,
}

/// A judged statement text, ready to execute (possibly many times).
#[derive(Debug, Clone)]
pub struct Statement {
    sql: Arc<str>,
    judgement: Arc<Judgement>,
}

impl Statement {
    /// The statement text.
    pub fn sql(&self) -> &str {
        &self.sql
    }
    /// What the policy engine made of it.
    pub fn judgement(&self) -> &Judgement {
        &self.judgement
    }
    /// Whether executions of it are held for approval (protocol crates then pass the bound
    /// values to [`Session::execute_bound`]).
    pub fn needs_approval(&self) -> bool {
        self.judgement.verdict.decision == Decision::NeedsApproval
    }
}

/// What an approval covers: SHA-256 over the target name, the statement text and the bound
/// values, each length-prefixed so that no two different triples hash the same input.
fn binding(target: &str, sql: &str, values: &[u8]) -> [u8; 32] {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [target.as_bytes(), sql.as_bytes(), values] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// How an execution ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Rows sent to the client.
    pub rows: u64,
    /// Command tag or summary from the upstream.
    pub tag: Option<String>,
    /// Rows the statement inserted, updated or deleted, when the protocol reports them (MySQL's
    /// OK packets, PostgreSQL's INSERT/UPDATE/DELETE/MERGE/COPY command tags).
    pub affected: Option<u64>,
    /// Error, if the execution failed.
    pub error: Option<RecordedError>,
    /// The execution never ran upstream (skipped after an earlier error in a pipeline).
    pub skipped: bool,
    /// Result columns that were masked, with how many values each.
    pub masked: Vec<MaskedColumn>,
}

/// One execution in flight. Dropping it without [`Session::finish`] records nothing more;
/// protocol crates finish every execution, including skipped ones.
pub struct Execution {
    /// The `statement` span, from `execute` to `finish` (disabled when nobody traces).
    span: Span,
    /// The `upstream` span: from forwarding to the first response, or to `finish`.
    upstream: Span,
    statement_id: u64,
    started: Instant,
    /// What masking needs; `None` when the session is not masked.
    masking: Option<MaskPlanner>,
}

/// Plans the masking of one execution's result sets: the masker, the session it masks for, the
/// statement's lineage and the target's catalog. Cheap to clone (shared parts), so that a
/// protocol crate can plan without holding on to the execution.
#[derive(Clone)]
pub struct MaskPlanner {
    masker: Arc<dyn Masker>,
    session: Arc<SessionContext>,
    lineage: Option<Arc<crate::masking::Lineage>>,
    catalog: Arc<dyn Catalog>,
}

impl MaskPlanner {
    /// Runs when a result set's columns are known: `statement` is the index of the statement
    /// within the text that produced it (0 unless the text holds several). An empty plan means
    /// forward rows untouched.
    pub async fn plan(&self, statement: usize, columns: &[ResultColumn]) -> MaskPlan {
        let lineage = self
            .lineage
            .as_deref()
            .and_then(|l| l.statements.get(statement));
        self.masker
            .plan(PlanRequest {
                session: &self.session,
                lineage,
                columns,
                catalog: &*self.catalog,
            })
            .await
    }
}

impl MaskPlanner {
    /// Whether statement `statement` of the text reads values the session must not see
    /// ([`Masker::reads_masked`]): its errors and notices are then hidden.
    pub async fn reads_masked(&self, statement: usize) -> bool {
        let lineage = self
            .lineage
            .as_deref()
            .and_then(|l| l.statements.get(statement));
        self.masker
            .reads_masked(PlanRequest {
                session: &self.session,
                lineage,
                columns: &[],
                catalog: &*self.catalog,
            })
            .await
    }
}

impl Session {
    /// The session's immutable facts.
    pub fn context(&self) -> &Arc<SessionContext> {
        &self.ctx
    }
    /// Who is asking.
    pub fn identity(&self) -> &Identity {
        &self.ctx.identity
    }
    /// The target.
    pub fn target(&self) -> &Arc<Target> {
        &self.ctx.target
    }
    /// The access granted.
    pub fn access(&self) -> Access {
        self.ctx.access
    }
    /// Whether maskers may rewrite results in this session; when `false` protocol crates skip
    /// result metadata decoding and forward rows untouched.
    pub fn masking_active(&self) -> bool {
        self.masking
    }
    /// Hands the session its target's catalog, which masking resolves result columns through.
    /// Protocol crates call it once, right after the session opens; later calls do nothing.
    pub fn set_catalog(&self, catalog: Arc<dyn Catalog>) {
        let _ = self.catalog.set(catalog);
    }

    /// The schema of the target may have changed (the session ran DDL): the catalog drops what
    /// it cached.
    pub fn schema_changed(&self) {
        if let Some(c) = self.catalog.get() {
            c.invalidate();
        }
    }

    /// Resolves when an administrator ended this session ([`Gateway::end_session`]) and no
    /// statement of it waits for approval any more (the wait has been ended and recorded): the
    /// protocol crate then closes the connection with this error.
    pub async fn terminated(&self) -> GatewayError {
        self.end.raised().await;
        while self.holds.is_waiting() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        GatewayError::new(
            ErrorKind::ShuttingDown,
            Side::Gateway,
            format!(
                "terminating connection due to administrator command: {}",
                self.end.reason().unwrap_or_default()
            ),
        )
    }

    /// Whether an administrator ended this session.
    pub fn is_terminated(&self) -> bool {
        self.end.is_raised()
    }

    /// Hands the session where notices for its client go ([`NoticeSink`]): told while a
    /// statement waits for approval. Protocol crates whose wire has notices call it once.
    pub fn set_notices(&self, notices: Arc<dyn NoticeSink>) {
        let _ = self.notices.set(notices);
    }

    /// The handle that ends this session's wait for an approval: the protocol crate's cancel
    /// path and its shutdown call it.
    pub fn holds(&self) -> &HoldHandle {
        &self.holds
    }

    fn catalog(&self) -> Arc<dyn Catalog> {
        match self.catalog.get() {
            Some(c) => Arc::clone(c),
            None => Arc::new(EmptyCatalog),
        }
    }

    /// Text the client reads outside result rows (error and notice fields, notification
    /// payloads), with what the masker must not let out taken out. Unchanged when the session is
    /// not masked.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.masking {
            self.gateway.inner.masker.scrub(&self.ctx, text)
        } else {
            Cow::Borrowed(text)
        }
    }

    /// Whether the end of each result must be recorded before it is relayed to the client
    /// ([`AuditSink::finish_before_result`]); otherwise record it right after relaying.
    pub fn finish_before_result(&self) -> bool {
        self.gateway.inner.audit.finish_before_result()
    }
    /// How bound parameters are recorded. When [`ParameterAudit::is_off`], or when the audit sink
    /// wants no records ([`AuditSink::enabled`]), protocol crates do not read them off the wire
    /// at all.
    pub fn parameter_audit(&self) -> &ParameterAudit {
        if self.gateway.inner.audit.enabled() {
            &self.gateway.inner.parameters
        } else {
            &ParameterAudit::Omit
        }
    }

    /// Writes an audit record, under an `audit` span that is a child of the current span.
    async fn record(&self, event: AuditEvent) -> Result<(), GatewayError> {
        self.record_in(&Span::none(), || event).await
    }

    /// Writes an audit record, under an `audit` span that is a child of `parent` (of the current
    /// span when `parent` is disabled).
    /// The event is made by `event` only when the sink wants records ([`AuditSink::enabled`]):
    /// building one clones its statement's shared strings, which is wasted work for a sink that
    /// would discard it.
    async fn record_in(
        &self,
        parent: &Span,
        event: impl FnOnce() -> AuditEvent,
    ) -> Result<(), GatewayError> {
        if !self.gateway.inner.audit.enabled() {
            return Ok(());
        }
        let event = event();
        let span = parent.in_scope(
            || tracing::info_span!(target: TARGET, "audit", event = AuditEvent::name(&event)),
        );
        let record = AuditRecord {
            time: now(),
            node: Arc::clone(&self.gateway.inner.node),
            session_id: Arc::clone(&self.ctx.id),
            subject: Some(Arc::clone(&self.ctx.subject)),
            target: Some(Arc::clone(&self.ctx.target_name)),
            client: Arc::clone(&self.ctx.client),
            event,
        };
        let written = self
            .gateway
            .inner
            .audit
            .record(record)
            .instrument(span)
            .await;
        written.map_err(|e| {
            self.metrics.audit_failure();
            GatewayError::new(
                ErrorKind::AuditUnavailable,
                Side::Gateway,
                "the audit trail is unavailable, so the gateway refuses to run statements",
            )
            .with_detail(e.message)
        })
    }

    /// [`prepare`](Self::prepare) for a statement as the client sent it: `text` in the client's
    /// `encoding`. The statement is judged and audited as the server will read it; bytes the
    /// encoding cannot read are refused (nothing is forwarded).
    pub async fn prepare_bytes(
        &self,
        text: &[u8],
        encoding: crate::text::TextEncoding,
        settings: &SqlSettings,
    ) -> Result<Statement, GatewayError> {
        let sql = crate::text::decode(text, encoding)?;
        self.prepare(&sql, settings).await
    }

    /// Judges a statement text read under `settings`. A denial is audited here and returned as an
    /// [`ErrorKind::PolicyDenied`] error naming the rule (or [`ErrorKind::Syntax`] when the
    /// database's grammar rejects the text); nothing of the statement may then be forwarded
    /// upstream.
    pub async fn prepare(
        &self,
        sql: &str,
        settings: &SqlSettings,
    ) -> Result<Statement, GatewayError> {
        let mut judgement = {
            let ctx = StatementContext {
                identity: &self.ctx.identity,
                target: &self.ctx.target,
                access: self.ctx.access,
                settings,
            };
            let span = tracing::info_span!(
                target: TARGET,
                "policy",
                decision = Empty,
                rule = Empty,
                classification = Empty,
            );
            let judgement = span.in_scope(|| self.gateway.inner.policy.judge(&ctx, sql));
            if !span.is_disabled() {
                span.record("decision", decision_name(judgement.verdict.decision));
                span.record("rule", judgement.verdict.rule.as_deref());
                span.record("classification", judgement.classification.as_deref());
            }
            judgement
        };
        if judgement.verdict.decision == Decision::Deny {
            self.metrics.denied.inc();
            let statement_id = self.statements.fetch_add(1, Ordering::Relaxed);
            let span = self.statement_span(statement_id, &judgement);
            span.record("otel.status_code", "error");
            self.record_in(&span, || AuditEvent::StatementDenied {
                statement_id,
                sql: Arc::from(sql),
                verdict: judgement.verdict.clone(),
                objects: judgement.objects.clone(),
                fingerprint: judgement.fingerprint.clone(),
                parameters: None,
            })
            .await?;
            let mut e = match &judgement.verdict.syntax_error {
                // Not valid SQL for the database's own grammar: the client gets the error the
                // database would give, which drivers and tools know how to handle.
                Some(syntax) => GatewayError::new(ErrorKind::Syntax, Side::Client, &syntax.message)
                    .with_position(syntax.position),
                None => GatewayError::new(
                    ErrorKind::PolicyDenied,
                    Side::Gateway,
                    judgement
                        .verdict
                        .reason
                        .clone()
                        .unwrap_or_else(|| "statement denied by policy".into()),
                ),
            };
            e.rule = judgement.verdict.rule.as_deref().map(str::to_owned);
            return Err(e);
        }
        if self.masking {
            let catalog = self.catalog();
            let checked = self
                .gateway
                .inner
                .masker
                .check(crate::masking::CheckRequest {
                    session: &self.ctx,
                    sql,
                    lineage: judgement.lineage.as_deref(),
                    catalog: &*catalog,
                })
                .await;
            match checked {
                Ok(Some(lineage)) if judgement.lineage.is_none() => {
                    Arc::make_mut(&mut judgement).lineage = Some(lineage);
                }
                Ok(_) => {}
                Err(mut e) => {
                    self.metrics.denied.inc();
                    let statement_id = self.statements.fetch_add(1, Ordering::Relaxed);
                    let span = self.statement_span(statement_id, &judgement);
                    span.record("otel.status_code", "error");
                    let rule: Arc<str> = Arc::from(e.rule.as_deref().unwrap_or("masking"));
                    e.rule = Some(rule.to_string());
                    let verdict = crate::policy::Verdict::deny(rule, e.message.clone());
                    self.record_in(&span, || AuditEvent::StatementDenied {
                        statement_id,
                        sql: Arc::from(sql),
                        verdict,
                        objects: judgement.objects.clone(),
                        fingerprint: judgement.fingerprint.clone(),
                        parameters: None,
                    })
                    .await?;
                    return Err(e);
                }
            }
        }
        Ok(Statement {
            sql: Arc::from(sql),
            judgement,
        })
    }

    /// Called right before an execution is forwarded upstream: holds it for approval when the
    /// verdict says so, then records "started". `Err` means do not forward.
    pub async fn execute(&self, stmt: &Statement) -> Result<Execution, GatewayError> {
        self.execute_with(stmt, None).await
    }

    /// [`execute`](Self::execute) for an execution with bound parameters, captured with
    /// [`ParameterAudit::capture`] from [`parameter_audit`](Self::parameter_audit).
    pub async fn execute_with(
        &self,
        stmt: &Statement,
        parameters: Option<Arc<RecordedParameters>>,
    ) -> Result<Execution, GatewayError> {
        self.execute_bound(stmt, parameters, &[]).await
    }

    /// [`execute_with`](Self::execute_with), with the execution's bound values as sent on the
    /// wire (`values`): an approval then covers exactly these values. Protocol crates pass them
    /// only when [`Statement::needs_approval`] (they are not read otherwise).
    pub async fn execute_bound(
        &self,
        stmt: &Statement,
        parameters: Option<Arc<RecordedParameters>>,
        values: &[u8],
    ) -> Result<Execution, GatewayError> {
        let statement_id = self.statements.fetch_add(1, Ordering::Relaxed);
        let span = self.statement_span(statement_id, &stmt.judgement);
        let verdict = &stmt.judgement.verdict;
        let mut approval_id = None;
        if verdict.decision == Decision::NeedsApproval {
            // Marks the session as holding a statement until its hold is settled and recorded:
            // a protocol crate that drains on shutdown waits for the held statement's answer.
            let _holding = self.holds.begin();
            let held = self
                .hold(statement_id, stmt, parameters.as_ref(), values, &span)
                .instrument(span.in_scope(|| tracing::info_span!(target: TARGET, "approval")))
                .await;
            match held {
                Ok(id) => approval_id = Some(Arc::from(id)),
                Err(e) => {
                    self.metrics.approval_required.inc();
                    span.record("otel.status_code", "error");
                    let mut verdict = verdict.clone();
                    verdict.reason = Some(e.message.clone());
                    self.record_in(&span, || AuditEvent::StatementDenied {
                        statement_id,
                        sql: Arc::clone(&stmt.sql),
                        verdict,
                        objects: stmt.judgement.objects.clone(),
                        fingerprint: stmt.judgement.fingerprint.clone(),
                        parameters,
                    })
                    .await?;
                    return Err(e);
                }
            }
        }
        let started = self
            .record_in(&span, || AuditEvent::StatementStarted {
                statement_id,
                sql: Arc::clone(&stmt.sql),
                classification: stmt.judgement.classification.clone(),
                objects: stmt.judgement.objects.clone(),
                fingerprint: stmt.judgement.fingerprint.clone(),
                parameters,
                rule: verdict.rule.clone(),
                approval_id,
            })
            .await;
        if let Err(e) = started {
            self.metrics.audit_refused.inc();
            if !span.is_disabled() {
                span.record("error.side", e.side.as_str());
                span.record("error.kind", e.kind.as_str());
                span.record("otel.status_code", "error");
            }
            return Err(e);
        }
        self.metrics.allowed.inc();
        let upstream = span.in_scope(|| tracing::info_span!(target: TARGET, "upstream"));
        Ok(Execution {
            span,
            upstream,
            statement_id,
            started: Instant::now(),
            masking: self.masking.then(|| MaskPlanner {
                masker: Arc::clone(&self.gateway.inner.masker),
                session: Arc::clone(&self.ctx),
                lineage: stmt.judgement.lineage.clone(),
                catalog: self.catalog(),
            }),
        })
    }

    /// Holds an execution for approval: submits it, and while a request is open tells the client
    /// and waits for the decision, the timeout, the client's cancel or the gateway's shutdown,
    /// recording the request and how its hold ended. `Ok` is the approving request's or grant's
    /// id.
    async fn hold(
        &self,
        statement_id: u64,
        stmt: &Statement,
        parameters: Option<&Arc<RecordedParameters>>,
        values: &[u8],
        span: &Span,
    ) -> Result<String, GatewayError> {
        let judgement = &stmt.judgement;
        let approvals = &self.gateway.inner.approvals;
        let request = ApprovalRequest {
            session: &self.ctx,
            statement_id,
            sql: &stmt.sql,
            fingerprint: judgement.fingerprint.as_deref(),
            classification: judgement.classification.as_deref(),
            objects: judgement.objects.as_deref(),
            parameters: parameters.map(|p| &**p),
            binding: binding(&self.ctx.target.name, &stmt.sql, values),
            verdict: &judgement.verdict,
            notices: self.notices.get().is_some(),
        };
        let hold = match approvals.submit(&request).await {
            Submission::Approved { id } => return Ok(id),
            Submission::Refused(e) => return Err(e),
            Submission::Pending(hold) => hold,
        };
        let request_id: Arc<str> = Arc::from(hold.id.as_str());
        self.record_in(span, || AuditEvent::ApprovalRequested {
            statement_id,
            request_id: Arc::clone(&request_id),
            new: hold.new,
            sql: Arc::clone(&stmt.sql),
            fingerprint: judgement.fingerprint.clone(),
            parameters: parameters.cloned(),
            rule: judgement.verdict.rule.clone(),
            waits: hold.wait.is_some(),
        })
        .await?;
        let ended = |outcome: &'static str| {
            let request_id = Arc::clone(&request_id);
            move || AuditEvent::ApprovalEnded {
                statement_id,
                request_id,
                outcome,
            }
        };
        let Some(wait) = hold.wait else {
            self.record_in(span, ended("not_waiting")).await?;
            return Err(hold.refusal);
        };
        if let Some(notices) = self.notices.get() {
            notices.notice(&hold.notice);
        }
        let decided = tokio::select! {
            decided = approvals.wait(&hold.id) => Ok(decided),
            why = self.holds.ended() => Err(why),
            () = tokio::time::sleep(wait) => Err(HoldEnd::TimedOut),
        };
        match decided {
            Ok(Decided::Approved(id)) => {
                self.record_in(span, ended("approved")).await?;
                Ok(id)
            }
            Ok(Decided::Denied(e)) => {
                self.record_in(span, ended("denied")).await?;
                Err(e)
            }
            Ok(Decided::Expired(e)) => {
                self.record_in(span, ended("expired")).await?;
                Err(e)
            }
            Err(why) => {
                let e = approvals.end(&hold.id, why).await;
                self.record_in(span, ended(why.as_str())).await?;
                Err(e)
            }
        }
    }

    /// Records the end of an execution.
    pub async fn finish(&self, mut exec: Execution, outcome: Outcome) -> Result<(), GatewayError> {
        let duration = exec.started.elapsed();
        if !outcome.skipped {
            // A skipped execution never ran: its "duration" would only measure the wait for the
            // error ahead of it.
            self.metrics.duration.observe(duration);
        }
        if let Some(error) = &outcome.error {
            self.metrics.statement_error(error.side);
        }
        let masked_values: u64 = outcome.masked.iter().map(|m| m.values).sum();
        if masked_values > 0 {
            self.gateway.inner.metrics.add_masked_values(masked_values);
        }
        let span = exec.end_trace(&outcome);
        self.record_in(&span, || AuditEvent::StatementFinished {
            statement_id: exec.statement_id,
            rows: outcome.rows,
            tag: outcome.tag,
            affected: outcome.affected,
            error: outcome.error,
            duration,
            skipped: outcome.skipped,
            masked: (!outcome.masked.is_empty()).then(|| Arc::from(outcome.masked)),
        })
        .await
    }

    /// Records the end of the session.
    pub async fn close(self, error: Option<RecordedError>) {
        let statements = self.statements.load(Ordering::Relaxed);
        if let Err(e) = self
            .record(AuditEvent::SessionClosed { statements, error })
            .await
        {
            tracing::error!(session = %self.ctx.id, error = %e, "could not record session close");
        }
    }
}

impl Execution {
    /// Statement id within the session.
    pub fn statement_id(&self) -> u64 {
        self.statement_id
    }

    /// What plans the masking of this execution's results; `None` when the session is not
    /// masked (protocol crates then need not read result metadata, and forward rows untouched).
    pub fn mask_planner(&self) -> Option<&MaskPlanner> {
        self.masking.as_ref()
    }

    /// Tells the trace that the upstream's first response to this execution arrived: ends the
    /// `upstream` span (otherwise it ends at [`Session::finish`]). Later calls do nothing.
    pub fn upstream_responded(&mut self) {
        if !self.upstream.is_disabled() {
            self.upstream = Span::none();
        }
    }

    /// Ends the `upstream` span if it is still open, records the outcome on the `statement` span
    /// and hands that span over (it closes when the caller drops it).
    fn end_trace(&mut self, outcome: &Outcome) -> Span {
        self.upstream = Span::none();
        let span = std::mem::replace(&mut self.span, Span::none());
        if !span.is_disabled() {
            span.record("rows", otel_int(outcome.rows));
            span.record("tag", outcome.tag.as_deref());
            span.record("skipped", outcome.skipped);
            if let Some(e) = &outcome.error {
                span.record("error.side", e.side.as_str());
                span.record("error.code", e.code.as_deref());
                span.record("otel.status_code", "error");
            }
        }
        span
    }
}

impl Session {
    /// The `statement` span of one execution (or denial), a child of the current span (the
    /// protocol crate's `session` span). Fields known later are recorded by `end_trace`.
    fn statement_span(&self, statement_id: u64, judgement: &Judgement) -> Span {
        tracing::info_span!(
            target: TARGET,
            "statement",
            statement_id = otel_int(statement_id),
            session_id = &*self.ctx.id,
            subject = &*self.ctx.subject,
            target = &*self.ctx.target_name,
            verdict = decision_name(judgement.verdict.decision),
            rule = judgement.verdict.rule.as_deref(),
            classification = judgement.classification.as_deref(),
            rows = Empty,
            tag = Empty,
            skipped = Empty,
            error.side = Empty,
            error.kind = Empty,
            error.code = Empty,
            otel.status_code = Empty,
        )
    }
}

/// A count as a span field: OTLP integers are signed, and tracing-opentelemetry would export a
/// `u64` as text.
fn otel_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Snake-case name of a decision, as in audit records.
fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::NeedsApproval => "needs_approval",
    }
}

/// Kebab-case name of an access mode, as in the configuration.
pub(crate) fn access_name(access: Access) -> &'static str {
    match access {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    }
}
