//! The session API protocol crates drive, and the one place where the order of phases lives:
//! authenticate -> target -> access -> audit "opened"; per statement: judge -> (deny: audit
//! "denied") -> approval -> audit "started" -> results -> audit "finished"; close -> audit "closed".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::approval::{ApprovalOutcome, ApprovalService, NoApprovals};
use crate::audit::{now, AuditEvent, AuditRecord, AuditSink, LogAuditSink, RecordedError};
use crate::error::{ErrorKind, GatewayError, Side};
use crate::identity::{Authenticator, ClientInfo, Credentials, DenyAllAuthenticator, Identity};
use crate::masking::{Masker, NoMasking, ResultColumn, RowMasker};
use crate::metrics::{Metrics, ProtocolMetrics};
use crate::policy::{
    Access, AllowAll, Decision, Judgement, PolicyEngine, SqlSettings, StatementContext,
};
use crate::target::{Protocol, Target, Targets};

struct Inner {
    node: Arc<str>,
    authenticator: Arc<dyn Authenticator>,
    policy: Arc<dyn PolicyEngine>,
    masker: Arc<dyn Masker>,
    audit: Arc<dyn AuditSink>,
    approvals: Arc<dyn ApprovalService>,
    targets: Targets,
    metrics: Arc<Metrics>,
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
                targets: self.targets,
                metrics: Arc::new(Metrics::new()),
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
        match self.admit(&req).await {
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
                let session = Session {
                    gateway: self.clone(),
                    ctx,
                    statements: AtomicU64::new(0),
                    metrics,
                };
                session
                    .record(AuditEvent::SessionOpened {
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
                if let Err(audit_err) = self.inner.audit.record(record).await {
                    self.inner.metrics.audit_failure();
                    tracing::error!(error = %audit_err, "could not record a failed login");
                }
                Err(e)
            }
        }
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
    statements: AtomicU64,
    /// This session's protocol's series, resolved once.
    metrics: Arc<ProtocolMetrics>,
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
}

/// How an execution ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Rows sent to the client.
    pub rows: u64,
    /// Command tag or summary from the upstream.
    pub tag: Option<String>,
    /// Error, if the execution failed.
    pub error: Option<RecordedError>,
    /// The execution never ran upstream (skipped after an earlier error in a pipeline).
    pub skipped: bool,
}

/// One execution in flight. Dropping it without [`Session::finish`] records nothing more;
/// protocol crates finish every execution, including skipped ones.
pub struct Execution {
    statement_id: u64,
    started: Instant,
    masker: Option<Arc<dyn Masker>>,
    ctx: Arc<SessionContext>,
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
        self.gateway.inner.masker.is_active(&self.ctx)
    }

    async fn record(&self, event: AuditEvent) -> Result<(), GatewayError> {
        let record = AuditRecord {
            time: now(),
            node: Arc::clone(&self.gateway.inner.node),
            session_id: Arc::clone(&self.ctx.id),
            subject: Some(Arc::clone(&self.ctx.subject)),
            target: Some(Arc::clone(&self.ctx.target_name)),
            client: Arc::clone(&self.ctx.client),
            event,
        };
        self.gateway.inner.audit.record(record).await.map_err(|e| {
            self.metrics.audit_failure();
            GatewayError::new(
                ErrorKind::AuditUnavailable,
                Side::Gateway,
                "the audit trail is unavailable, so the gateway refuses to run statements",
            )
            .with_detail(e.message)
        })
    }

    /// Judges a statement text read under `settings`. A denial is audited here and returned as an
    /// [`ErrorKind::PolicyDenied`] error naming the rule; nothing of the statement may then be
    /// forwarded upstream.
    pub async fn prepare(
        &self,
        sql: &str,
        settings: &SqlSettings,
    ) -> Result<Statement, GatewayError> {
        let judgement = {
            let ctx = StatementContext {
                identity: &self.ctx.identity,
                target: &self.ctx.target,
                access: self.ctx.access,
                settings,
            };
            self.gateway.inner.policy.judge(&ctx, sql)
        };
        if judgement.verdict.decision == Decision::Deny {
            self.metrics.denied.inc();
            let statement_id = self.statements.fetch_add(1, Ordering::Relaxed);
            self.record(AuditEvent::StatementDenied {
                statement_id,
                sql: Arc::from(sql),
                verdict: judgement.verdict.clone(),
                objects: judgement.objects.clone(),
            })
            .await?;
            let mut e = GatewayError::new(
                ErrorKind::PolicyDenied,
                Side::Gateway,
                judgement
                    .verdict
                    .reason
                    .clone()
                    .unwrap_or_else(|| "statement denied by policy".into()),
            );
            e.rule = judgement.verdict.rule.as_deref().map(str::to_owned);
            return Err(e);
        }
        Ok(Statement {
            sql: Arc::from(sql),
            judgement,
        })
    }

    /// Called right before an execution is forwarded upstream: holds it for approval when the
    /// verdict says so, then records "started". `Err` means do not forward.
    pub async fn execute(&self, stmt: &Statement) -> Result<Execution, GatewayError> {
        let statement_id = self.statements.fetch_add(1, Ordering::Relaxed);
        let verdict = &stmt.judgement.verdict;
        let mut rule = verdict.rule.clone();
        if verdict.decision == Decision::NeedsApproval {
            match self
                .gateway
                .inner
                .approvals
                .request(&self.ctx.identity, &self.ctx.target, &stmt.sql, verdict)
                .await
            {
                ApprovalOutcome::Approved { id } => {
                    rule = Some(Arc::from(format!(
                        "{} (approval {id})",
                        rule.as_deref().unwrap_or_default()
                    )))
                }
                ApprovalOutcome::Refused(e) => {
                    self.metrics.approval_required.inc();
                    self.record(AuditEvent::StatementDenied {
                        statement_id,
                        sql: Arc::clone(&stmt.sql),
                        verdict: verdict.clone(),
                        objects: stmt.judgement.objects.clone(),
                    })
                    .await?;
                    return Err(e);
                }
            }
        }
        let started = self
            .record(AuditEvent::StatementStarted {
                statement_id,
                sql: Arc::clone(&stmt.sql),
                classification: stmt.judgement.classification.clone(),
                objects: stmt.judgement.objects.clone(),
                rule,
            })
            .await;
        if let Err(e) = started {
            self.metrics.audit_refused.inc();
            return Err(e);
        }
        self.metrics.allowed.inc();
        Ok(Execution {
            statement_id,
            started: Instant::now(),
            masker: Some(Arc::clone(&self.gateway.inner.masker)),
            ctx: Arc::clone(&self.ctx),
        })
    }

    /// Records the end of an execution.
    pub async fn finish(&self, exec: Execution, outcome: Outcome) -> Result<(), GatewayError> {
        let duration = exec.started.elapsed();
        if !outcome.skipped {
            // A skipped execution never ran: its "duration" would only measure the wait for the
            // error ahead of it.
            self.metrics.duration.observe(duration.as_secs_f64());
        }
        if let Some(error) = &outcome.error {
            self.metrics.statement_error(error.side);
        }
        self.record(AuditEvent::StatementFinished {
            statement_id: exec.statement_id,
            rows: outcome.rows,
            tag: outcome.tag,
            error: outcome.error,
            duration,
            skipped: outcome.skipped,
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

    /// Runs when a result set's column metadata arrives. `None` means forward rows untouched.
    pub fn row_masker(&self, columns: &[ResultColumn]) -> Option<Box<dyn RowMasker>> {
        self.masker
            .as_ref()
            .and_then(|m| m.row_masker(&self.ctx, columns))
    }
}
