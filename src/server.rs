//! Wiring: a checked [`Config`] becomes a [`Gateway`] with its identity chain and targets, and the
//! configured listeners are bound and run. Nothing here is global, so one process (a test) can run
//! many servers side by side, each on port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use gateway_core::serve::{ListenerConfig, Shutdown};
use gateway_core::{Gateway, PolicyEngine, Protocol, Targets, Workers};
use identity::{
    CertAuthenticator, CertConfig, CertSubjectField, IdentityChain, JwtAuthenticator, JwtConfig,
    JwtKeySource, StaticUser, StaticUsers,
};
use policy::RuleEngine;
use proto_mysql::MysqlListener;
use proto_postgres::PostgresListener;
use tokio::task::JoinHandle;

use crate::config::{
    CertSubject, Config, ConfigErrors, GatewaySettings, IdentitySettings, JwtKeys, JwtSettings,
    ListenerSettings,
};
use crate::telemetry::Telemetry;
use crate::tls;

/// ALPN protocol id of PostgreSQL over TLS (used by direct TLS connections, PostgreSQL 17+).
const POSTGRES_ALPN: &[u8] = b"postgresql";

/// How often the configuration file is checked for changes.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Starts gateways from configuration.
pub struct Server;

impl Server {
    /// Builds the gateway described by `config` and starts its listeners. Returns once every
    /// listener is bound, so a client may connect as soon as this returns.
    ///
    /// With a `[policy]` section the gateway runs a [`RuleEngine`]; the configuration file is then
    /// watched (checked every second) and a changed `[policy]` replaces the running one, as does
    /// [`RunningServer::reload`]. Without it every authenticated identity may do anything, and a
    /// warning says so.
    ///
    /// `[telemetry]` is not acted on here: trace export belongs to the process's `tracing`
    /// subscriber, see [`Server::start_with_telemetry`]. With an `otlp_endpoint` configured this
    /// warns that no span will be exported.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        if let Some(t) = &config.telemetry {
            tracing::warn!(endpoint = %t.otlp_endpoint, "[telemetry] is configured but this server was started without its export pipeline: no span is exported (Server::start_with_telemetry)");
        }
        Self::start_inner(config, None).await
    }

    /// [`Server::start`] with the trace export pipeline built from `config.telemetry`
    /// ([`Telemetry::start`]), whose [`Telemetry::layer`] the caller has installed in the
    /// subscriber this server runs under. The server owns `telemetry` from now on:
    /// [`RunningServer::shutdown`] exports the last spans and stops it once every session has
    /// ended.
    pub async fn start_with_telemetry(
        config: Config,
        telemetry: Option<Telemetry>,
    ) -> anyhow::Result<RunningServer> {
        if let (Some(t), None) = (&config.telemetry, &telemetry) {
            tracing::warn!(endpoint = %t.otlp_endpoint, "[telemetry] is configured but no export pipeline was given: no span is exported");
        }
        Self::start_inner(config, telemetry).await
    }

    async fn start_inner(
        config: Config,
        telemetry: Option<Telemetry>,
    ) -> anyhow::Result<RunningServer> {
        let authenticator = identity_chain(&config.identity).await?;
        let mut builder = Gateway::builder()
            .node(config.gateway.node.clone())
            .authenticator(Arc::new(authenticator))
            .targets(Targets::new(config.targets.iter().cloned()));
        let engine = match &config.policy {
            Some(rules) => {
                if rules.access.is_empty() {
                    tracing::warn!(
                        "[policy] has no [[policy.access]] rule: every session will be refused"
                    );
                }
                let engine = Arc::new(RuleEngine::new(rules.clone()));
                builder = builder.policy(Arc::clone(&engine) as Arc<dyn PolicyEngine>);
                Some(engine)
            }
            None => {
                tracing::warn!("no [policy] section: every authenticated identity has read-write access to every target and may run any statement");
                None
            }
        };
        // Read before the data directory and the trail are created, so that a bad certificate or
        // key file stops the start with nothing written.
        let postgres_tls = config
            .postgres
            .as_ref()
            .and_then(|pg| pg.tls.as_ref())
            .map(|files| tls::server_config(files, &[POSTGRES_ALPN]))
            .transpose()
            .context("cannot set up TLS for [postgres]")?;
        let admin_tls = config
            .admin
            .as_ref()
            .and_then(|admin| admin.tls.as_ref())
            .map(|files| tls::server_config(files, &[b"http/1.1"]))
            .transpose()
            .context("cannot set up TLS for [admin]")?;
        // MySQL has no ALPN id: its clients ask for TLS inside the protocol, never directly.
        let mysql_tls = config
            .mysql
            .as_ref()
            .and_then(|my| my.tls.as_ref())
            .map(|files| tls::server_config(files, &[]))
            .transpose()
            .context("cannot set up TLS for [mysql]")?;
        for (section, settings, protocol) in [
            ("[postgres]", &config.postgres, Protocol::Postgres),
            ("[mysql]", &config.mysql, Protocol::Mysql),
        ] {
            if settings.is_some() && !config.targets.iter().any(|t| t.protocol == protocol) {
                tracing::warn!(
                    "{section} is configured but no [[targets]] has protocol = \"{}\": every login there will be refused (unknown target)",
                    protocol.as_str()
                );
            }
        }
        let parameters = config
            .audit
            .parameter_audit()
            .map_err(|e| anyhow::anyhow!("[audit]: {e}"))?;
        // The audit trail opens before any listener: no statement may run unrecorded.
        if let Err(e) = std::fs::create_dir_all(&config.gateway.data_dir) {
            anyhow::bail!(
                "cannot create the data directory {}: {e}",
                config.gateway.data_dir.display()
            );
        }
        // The masking hash key lives in the data directory by default: created just above.
        if let Some(masking) = &config.masking {
            if config.policy.is_none() {
                tracing::info!("[masking] without [policy]: the masker reads each statement of a masked session itself");
            }
            let masker = masking::RuleMasker::new(masking.clone())
                .map_err(|e| anyhow::anyhow!("[masking]: {e}"))?;
            builder = builder.masker(Arc::new(masker));
        }
        let audit_log = Arc::new(
            audit::AuditLog::open(&config.audit, &config.gateway.node)
                .await
                .context("cannot open the audit trail ([audit])")?,
        );
        builder = builder
            .audit(Arc::clone(&audit_log) as Arc<dyn gateway_core::AuditSink>)
            .parameters(parameters);
        let approvals = match &config.approvals {
            Some(settings) => {
                let service = approvals::Approvals::open(
                    settings.clone(),
                    &config.gateway.data_dir,
                    &config.gateway.node,
                )
                .await
                .context("cannot open the approval store ([approvals])")?;
                let service = Arc::new(service);
                builder = builder
                    .approvals(Arc::clone(&service) as Arc<dyn gateway_core::ApprovalService>);
                if config.admin.is_none() {
                    tracing::warn!("[approvals] without [admin]: nobody can decide requests (the admin API runs on the admin listener)");
                }
                Some(service)
            }
            None => None,
        };
        let gateway = builder.build();
        // With `on_failure = "open"` a dropped record never reaches the session phases as an
        // error, so the audit log counts it in the gateway's metrics itself.
        audit_log.count_drops_in(Arc::clone(gateway.metrics()));
        let stats = audit_log.stats();
        gateway
            .metrics()
            .register_audit_queue_depth(Box::new(move || {
                i64::try_from(stats.queue_depth.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
            }));
        let ready = Arc::new(AtomicBool::new(false));
        let mut admin_addr = None;
        let mut admin_task = None;
        if let Some(admin) = &config.admin {
            let server = crate::admin::bind(
                admin.listen,
                gateway.clone(),
                Arc::clone(&ready),
                approvals
                    .clone()
                    .map(|approvals| crate::admin_api::ApiParts {
                        approvals,
                        audit: config.audit.clone(),
                        policy: engine.clone(),
                    }),
                admin_tls.clone(),
            )
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for [admin] (is another process using the port?)",
                    admin.listen
                )
            })?;
            let addr = server.local_addr();
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the admin listener's /metrics, /healthz and /readyz have no authentication and are reachable from the network");
            }
            admin_addr = Some(addr);
            admin_task = Some(tokio::spawn(server.run()));
        }
        let reloader = Arc::new(Reloader {
            path: config.source.clone(),
            engine,
            last_seen: Mutex::new(std::fs::read(&config.source).ok()),
            approvals: approvals.as_ref().map(|a| (gateway.clone(), Arc::clone(a))),
        });

        let workers = match config.gateway.workers {
            Some(0) => None,
            Some(n) => Some(Workers::start(n, "portcullis-session")),
            None => Some(Workers::per_core("portcullis-session")),
        }
        .transpose()
        .context("cannot start the session worker threads")?;
        let mut listeners = Vec::new();
        let mut shutdowns = Vec::new();
        // Every listener is bound before any runs: when one cannot bind, the start fails with
        // none left accepting.
        let postgres = match &config.postgres {
            Some(pg) => {
                let listener_config = listener_config(pg, postgres_tls, &config.gateway);
                let listener = PostgresListener::bind(listener_config, gateway.clone())
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen on {} for [postgres] (is another process using the port?)",
                            pg.listen
                        )
                    })?;
                warn_plaintext("PostgreSQL", pg, listener.local_addr());
                Some(listener)
            }
            None => None,
        };
        let mysql = match &config.mysql {
            Some(my) => {
                let listener_config = listener_config(my, mysql_tls, &config.gateway);
                let listener = MysqlListener::bind(listener_config, gateway.clone())
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen on {} for [mysql] (is another process using the port?)",
                            my.listen
                        )
                    })?;
                warn_plaintext("MySQL", my, listener.local_addr());
                Some(listener)
            }
            None => None,
        };
        let postgres_addr = postgres.as_ref().map(PostgresListener::local_addr);
        let mysql_addr = mysql.as_ref().map(MysqlListener::local_addr);
        if let Some(mut listener) = postgres {
            if let Some(workers) = &workers {
                listener = listener.with_workers(Arc::clone(workers));
            }
            shutdowns.push(listener.shutdown_handle());
            listeners.push(tokio::spawn(listener.run()));
        }
        if let Some(mut listener) = mysql {
            if let Some(workers) = &workers {
                listener = listener.with_workers(Arc::clone(workers));
            }
            shutdowns.push(listener.shutdown_handle());
            listeners.push(tokio::spawn(listener.run()));
        }

        let mut tasks = vec![tokio::spawn(watch_config(Arc::clone(&reloader)))];
        if let Some(approvals) = &approvals {
            tasks.push(tokio::spawn(count_pending_approvals(
                Arc::clone(approvals),
                Arc::clone(gateway.metrics()),
            )));
        }

        ready.store(true, Ordering::Release);
        Ok(RunningServer {
            gateway,
            postgres_addr,
            mysql_addr,
            admin_addr,
            admin: admin_task,
            ready,
            audit: audit_log,
            listeners,
            shutdowns,
            tasks,
            _workers: workers,
            reloader,
            telemetry,
        })
    }
}

/// A started server: its gateway and the tasks running its listeners. Dropping it stops
/// everything at once; [`RunningServer::shutdown`] stops gracefully.
pub struct RunningServer {
    gateway: Gateway,
    postgres_addr: Option<SocketAddr>,
    mysql_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    /// The admin listener; it keeps serving (503 on /readyz) until sessions and the audit trail
    /// have stopped.
    admin: Option<JoinHandle<()>>,
    ready: Arc<AtomicBool>,
    audit: Arc<audit::AuditLog>,
    /// Listener tasks; each returns after its graceful shutdown.
    listeners: Vec<JoinHandle<()>>,
    shutdowns: Vec<Shutdown>,
    /// Background tasks (the config watcher), aborted on shutdown.
    tasks: Vec<JoinHandle<()>>,
    reloader: Arc<Reloader>,
    /// Trace export, stopped after the sessions (whose spans it exports) have ended.
    telemetry: Option<Telemetry>,
    /// The threads sessions run on (`gateway.workers`); they stop when the server is dropped,
    /// after the listeners have drained their sessions.
    _workers: Option<Arc<Workers>>,
}

impl RunningServer {
    /// The address the PostgreSQL listener is bound to, if one is configured (with the real port
    /// when the configuration asked for port 0).
    pub fn postgres_addr(&self) -> Option<SocketAddr> {
        self.postgres_addr
    }

    /// The address the MySQL listener is bound to, if one is configured (with the real port when
    /// the configuration asked for port 0).
    pub fn mysql_addr(&self) -> Option<SocketAddr> {
        self.mysql_addr
    }

    /// The address the admin listener is bound to, if `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The gateway the listeners serve.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Reads the configuration file again and, when all of it is valid, replaces the running
    /// `[policy]`: open sessions judge their next statement under the new rules (their access
    /// mode, and with it the upstream read-only fence, can only become stricter until they
    /// reconnect). When the file has errors, each is logged with its line and column, returned,
    /// and the running policy stays. Adding or removing the whole `[policy]` section needs a
    /// restart. Other sections (listeners, identity, targets) take effect at the next start.
    /// The binary calls this on SIGHUP; the file watcher calls it when the file changes.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        self.reloader.reload()
    }

    /// Stops gracefully: the listeners stop accepting at once, every session ends (SQLSTATE
    /// 57P01) as soon as the database owes it nothing more, and this returns when all sessions
    /// have ended or `gateway.drain_timeout` has passed. Then the audit trail is closed and,
    /// with trace export, the last spans are exported and the pipeline stopped.
    pub async fn shutdown(mut self) {
        self.ready.store(false, Ordering::Release);
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
        }
        for s in &self.shutdowns {
            s.trigger();
        }
        for task in std::mem::take(&mut self.listeners) {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!("a listener task panicked: {e}");
                }
            }
        }
        // Sessions have ended: write what is queued and a final checkpoint.
        if let Err(e) = self.audit.shutdown().await {
            tracing::error!(error = %e, "the audit trail could not be closed cleanly");
        }
        // Every session span has ended: export what is left.
        if let Some(telemetry) = self.telemetry.take() {
            telemetry.shutdown().await;
        }
        if let Some(admin) = self.admin.take() {
            admin.abort();
        }
    }

    /// The trace export pipeline this server was started with.
    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.as_ref()
    }

    /// The audit trail's counters (queue depth, written, failed, dropped).
    pub fn audit_stats(&self) -> Arc<audit::AuditStats> {
        self.audit.stats()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.listeners).chain(&self.admin) {
            task.abort();
        }
    }
}

/// The listener configuration for a checked listener section: its own settings, and the
/// handshake, message and drain bounds every listener takes from `[gateway]`.
fn listener_config(
    settings: &ListenerSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    gateway: &GatewaySettings,
) -> ListenerConfig {
    let mut config = ListenerConfig::new(settings.listen);
    config.tls = tls;
    config.require_tls = settings.require_tls;
    config.allow_plaintext_password = settings.allow_plaintext_password;
    config.require_user_match = settings.require_user_match;
    config.handshake_timeout = gateway.handshake_timeout;
    config.max_message_bytes = gateway.max_message_bytes;
    config.drain_timeout = gateway.drain_timeout;
    config
}

/// Warns when a listener reachable from the network has no TLS: either passwords and tokens
/// cross the network in clear (`allow_plaintext_password`), or no client off this host can log in
/// with one.
fn warn_plaintext(protocol: &str, settings: &ListenerSettings, addr: SocketAddr) {
    if settings.tls.is_some() || addr.ip().is_loopback() {
        return;
    }
    if settings.allow_plaintext_password {
        tracing::warn!(%addr, "{protocol} listener without TLS accepts passwords and tokens in plain text from the network (allow_plaintext_password = true)");
    } else {
        tracing::warn!(%addr, "{protocol} listener without TLS: clients off this host cannot log in with a password or token; set tls_cert and tls_key");
    }
}

/// Keeps `portcullis_approvals_pending` current: requests waiting for a decision in the store
/// (every node's, when it is shared), read every few seconds.
async fn count_pending_approvals(
    approvals: Arc<approvals::Approvals>,
    metrics: Arc<gateway_core::Metrics>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match approvals.pending().await {
            Ok(n) => metrics.set_approvals_pending(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => tracing::warn!(error = %e, "could not count pending approval requests"),
        }
    }
}

/// After a policy reload: cancels the pending requests whose statements the new policy no longer
/// holds by the same rule (now allowed, denied, or held by another rule), each recorded.
async fn cancel_moot_requests(
    gateway: Gateway,
    approvals: Arc<approvals::Approvals>,
    engine: Arc<RuleEngine>,
) {
    let still_held = |r: &approvals::store::Request| {
        let Some(target) = gateway.targets().iter().find(|t| t.name == r.target) else {
            // A target of another node sharing the store: not this node's to judge.
            return true;
        };
        let identity = gateway_core::Identity {
            subject: r.subject.clone(),
            groups: r.groups.clone(),
            auth_method: gateway_core::AuthMethod::Jwt,
            claims: Default::default(),
        };
        let explained = engine.explain(
            &identity,
            target,
            &gateway_core::SqlSettings::default(),
            &r.sql,
        );
        explained.statements.iter().any(|s| {
            s.verdict.decision == gateway_core::Decision::NeedsApproval
                && s.verdict.rule.as_deref() == r.rule.as_deref()
        })
    };
    let recorder = PolicyRecorder(&gateway);
    match approvals.cancel_moot(still_held, &recorder).await {
        Ok(ids) if !ids.is_empty() => {
            tracing::info!(requests = ?ids, "pending approval requests the new policy no longer holds were cancelled")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "could not re-judge pending approval requests after the policy reload")
        }
    }
}

/// Records what the gateway itself does to requests (subject `portcullis`).
struct PolicyRecorder<'a>(&'a Gateway);

#[async_trait::async_trait]
impl approvals::Recorder for PolicyRecorder<'_> {
    async fn record(
        &self,
        target: Option<&str>,
        event: gateway_core::AuditEvent,
    ) -> Result<(), gateway_core::GatewayError> {
        let client = gateway_core::ClientInfo {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            protocol: "admin",
            tls: false,
            application: Some("policy reload".into()),
        };
        self.0
            .record_admin("portcullis", target, client, event)
            .await
    }
}

/// Reloads the policy from the configuration file; shared by [`RunningServer::reload`] and the
/// file watcher.
struct Reloader {
    path: PathBuf,
    /// `None` when the gateway started without `[policy]` (allow-all).
    engine: Option<Arc<RuleEngine>>,
    /// The file's contents when last loaded or tried, so the watcher acts on changes only.
    last_seen: Mutex<Option<Vec<u8>>>,
    /// With `[approvals]`: pending requests a new policy no longer holds are cancelled.
    approvals: Option<(Gateway, Arc<approvals::Approvals>)>,
}

impl Reloader {
    fn reload(&self) -> Result<(), ConfigErrors> {
        if let Ok(mut last) = self.last_seen.lock() {
            *last = std::fs::read(&self.path).ok();
        }
        let result = self.apply();
        match &result {
            Ok(()) => {}
            Err(errors) => {
                for e in errors.errors() {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    file = %self.path.display(),
                    "the configuration was not reloaded; the running policy stays"
                );
            }
        }
        result
    }

    fn apply(&self) -> Result<(), ConfigErrors> {
        let config = Config::load(&self.path)?;
        match (&self.engine, config.policy) {
            (Some(engine), Some(rules)) => {
                let (access, statements) = (rules.access.len(), rules.rules.len());
                engine.replace(rules);
                if let (Some((gateway, approvals)), Ok(runtime)) =
                    (&self.approvals, tokio::runtime::Handle::try_current())
                {
                    runtime.spawn(cancel_moot_requests(
                        gateway.clone(),
                        Arc::clone(approvals),
                        Arc::clone(engine),
                    ));
                }
                tracing::info!(
                    file = %self.path.display(),
                    access_rules = access,
                    statement_rules = statements,
                    "policy reloaded; other sections take effect at the next start"
                );
                Ok(())
            }
            (Some(_), None) => Err(ConfigErrors::whole_file(
                &self.path,
                "[policy] was removed: removing the whole policy needs a restart (the running policy stays)",
            )),
            (None, Some(_)) => Err(ConfigErrors::whole_file(
                &self.path,
                "[policy] was added: the gateway started without a policy and needs a restart to enforce one",
            )),
            (None, None) => {
                tracing::info!(file = %self.path.display(), "configuration checked; no [policy] to reload");
                Ok(())
            }
        }
    }

    /// Whether the file differs from what was last loaded or tried.
    fn changed(&self) -> bool {
        let now = std::fs::read(&self.path).ok();
        match self.last_seen.lock() {
            Ok(last) => now.is_some() && *last != now,
            Err(_) => false,
        }
    }
}

/// Checks the configuration file every second and reloads it when its contents change. Comparing
/// contents rather than modification times catches edits within the same second; an invalid
/// intermediate state (an editor saving in several writes) is reported once and replaced by the
/// next valid one.
async fn watch_config(reloader: Arc<Reloader>) {
    let mut tick = tokio::time::interval(CONFIG_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = Arc::clone(&reloader);
        // File reads and the whole configuration check are blocking work.
        let outcome = tokio::task::spawn_blocking(move || {
            if r.changed() {
                tracing::info!(file = %r.path.display(), "configuration file changed; reloading");
                let _ = r.reload();
            }
        })
        .await;
        if let Err(e) = outcome {
            tracing::error!("the configuration watcher failed: {e}");
        }
    }
}

/// Builds the identity chain. Key files are read and a JWKS URL is fetched here, off the async
/// workers, so a broken key source stops the start with an error that names it.
async fn identity_chain(settings: &IdentitySettings) -> anyhow::Result<IdentityChain> {
    let jwt = match &settings.jwt {
        Some(jwt) => {
            let jwt_config = jwt_config(jwt);
            let authenticator =
                tokio::task::spawn_blocking(move || JwtAuthenticator::new(jwt_config))
                    .await
                    .context("setting up [identity.jwt] failed unexpectedly")?
                    .context("cannot set up [identity.jwt]")?;
            Some(authenticator)
        }
        None => None,
    };
    let users = StaticUsers::new(
        settings
            .users
            .iter()
            .map(|u| StaticUser {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
                groups: u.groups.clone(),
            })
            .collect(),
    )
    .context("cannot set up [[identity.users]]")?;
    let cert = settings.client_cert.map(|c| {
        CertAuthenticator::new(CertConfig {
            subject_from: match c.subject {
                CertSubject::CommonName => CertSubjectField::CommonName,
                CertSubject::DistinguishedName => CertSubjectField::DistinguishedName,
            },
            groups_from_ou: c.groups_from_ou,
        })
    });
    if jwt.is_none() && users.is_empty() && cert.is_none() {
        tracing::warn!("no authentication method is configured ([identity.jwt], [[identity.users]] or [identity.client_cert]): every login will be refused");
    }
    Ok(IdentityChain { jwt, users, cert })
}

/// The identity crate's JWT configuration for checked `[identity.jwt]` settings.
pub(crate) fn jwt_config(settings: &JwtSettings) -> JwtConfig {
    JwtConfig {
        issuer: settings.issuer.clone(),
        audience: settings.audience.clone(),
        algorithms: settings.algorithms.clone(),
        keys: match &settings.keys {
            JwtKeys::Hs256Secret(secret) => JwtKeySource::Hs256Secret(secret.clone()),
            JwtKeys::PublicKeyPemFile(path) => JwtKeySource::PublicKeyPemFile(path.clone()),
            JwtKeys::JwksFile(path) => JwtKeySource::JwksFile(path.clone()),
            JwtKeys::JwksUrl(url) => JwtKeySource::JwksUrl(url.clone()),
        },
        subject_claim: settings.subject_claim.clone(),
        groups_claim: settings.groups_claim.clone(),
        leeway: settings.leeway,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse_config(text: &str, dir: &Path) -> Config {
        Config::from_toml_str(text, &dir.join("gw.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn starts_on_port_zero_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse_config(
            "[gateway]\nnode = \"t1\"\n[postgres]\nlisten = \"127.0.0.1:0\"\n\
             [identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"HS256\"]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n\
             [[targets]]\nname = \"app\"\nhost = \"127.0.0.1\"\nuser = \"u\"\n",
            dir.path(),
        );
        let server = Server::start(config.clone()).await.unwrap();
        let addr = server.postgres_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert!(server
            .gateway()
            .targets()
            .get(gateway_core::Protocol::Postgres, "app")
            .is_some());
        // Two servers from one configuration live side by side.
        let second = Server::start(config).await.unwrap();
        assert_ne!(second.postgres_addr(), Some(addr));
        tokio::net::TcpStream::connect(addr).await.unwrap();
        server.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        second.shutdown().await;
    }

    #[tokio::test]
    async fn without_listener_nothing_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(parse_config("", dir.path())).await.unwrap();
        assert_eq!(server.postgres_addr(), None);
        assert_eq!(server.mysql_addr(), None);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn binds_both_listeners_and_stops_both() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse_config(
            "[postgres]\nlisten = \"127.0.0.1:0\"\n[mysql]\nlisten = \"127.0.0.1:0\"\n\
             [[targets]]\nname = \"shop\"\nprotocol = \"mysql\"\nhost = \"127.0.0.1\"\nuser = \"u\"\n",
            dir.path(),
        );
        let server = Server::start(config).await.unwrap();
        let pg = server.postgres_addr().unwrap();
        let my = server.mysql_addr().unwrap();
        assert_ne!(my.port(), 0);
        assert_ne!(pg, my);
        // The MySQL listener speaks first: a greeting (protocol version 10) with the gateway's
        // version suffix.
        let mut tcp = tokio::net::TcpStream::connect(my).await.unwrap();
        let mut greeting = [0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut greeting)
            .await
            .unwrap();
        assert!(n > 5 && greeting[4] == 10, "{:?}", &greeting[..n]);
        assert!(
            String::from_utf8_lossy(&greeting[..n]).contains("-portcullis"),
            "{:?}",
            &greeting[..n]
        );
        drop(tcp);
        server.shutdown().await;
        assert!(tokio::net::TcpStream::connect(pg).await.is_err());
        assert!(tokio::net::TcpStream::connect(my).await.is_err());
    }

    #[tokio::test]
    async fn start_errors_name_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        crate::config::tests::write_tls_files(dir.path());
        let config = parse_config(
            "[postgres]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n",
            dir.path(),
        );
        // Broken after the configuration was checked: the start stops before the data directory
        // (and the audit trail in it) is created.
        std::fs::write(dir.path().join("server.pem"), "not a certificate").unwrap();
        let e = format!("{:#}", Server::start(config).await.err().unwrap());
        assert!(e.contains("[postgres]") && e.contains("server.pem"), "{e}");
        assert!(!dir.path().join("data").exists(), "{e}");

        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = parse_config(
            &format!("[postgres]\nlisten = \"{}\"\n", taken.local_addr().unwrap()),
            dir.path(),
        );
        let e = format!("{:#}", Server::start(config).await.err().unwrap());
        assert!(e.contains("cannot listen on"), "{e}");

        let config = parse_config(
            &format!("[mysql]\nlisten = \"{}\"\n", taken.local_addr().unwrap()),
            dir.path(),
        );
        let e = format!("{:#}", Server::start(config).await.err().unwrap());
        assert!(
            e.contains("cannot listen on") && e.contains("[mysql]"),
            "{e}"
        );

        // [mysql]'s TLS files are read before anything is written, as [postgres]'s are.
        let dir = tempfile::tempdir().unwrap();
        crate::config::tests::write_tls_files(dir.path());
        let config = parse_config(
            "[mysql]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n",
            dir.path(),
        );
        std::fs::write(dir.path().join("server.pem"), "not a certificate").unwrap();
        let e = format!("{:#}", Server::start(config).await.err().unwrap());
        assert!(e.contains("[mysql]") && e.contains("server.pem"), "{e}");
        assert!(!dir.path().join("data").exists(), "{e}");
    }
}
