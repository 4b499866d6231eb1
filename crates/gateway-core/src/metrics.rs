//! Operational metrics of one [`Gateway`](crate::Gateway), in the Prometheus / OpenMetrics text
//! format.
//!
//! Every gateway owns its own [`Metrics`] (nothing is process-global), reachable as
//! [`Gateway::metrics`](crate::Gateway::metrics). The session phases record into it as they happen;
//! protocol crates add what only they see (accepted connections, sessions relaying); other crates
//! feed the audit queue depth, masked values and pending approvals. An admin listener serves
//! [`Metrics::encode`] with [`Metrics::CONTENT_TYPE`].
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `portcullis_connections_total` | counter | `protocol` | client TCP connections accepted (including cancel requests and probes that never log in) |
//! | `portcullis_sessions_active` | gauge | `protocol` | sessions logged in on both sides and relaying now |
//! | `portcullis_logins_failed_total` | counter | `protocol`, `reason` | refused logins; `reason` is the error kind: `authentication`, `access_denied`, `unknown_target`, ... |
//! | `portcullis_statements_total` | counter | `protocol`, `verdict` | statements decided: `allowed` (per execution forwarded upstream), `denied` (by policy), `approval_required` (held and not approved), `audit_refused` (allowed, but the audit trail could not record it) |
//! | `portcullis_statement_duration_seconds` | histogram | `protocol` | from forwarding an execution to its completion, results included; 100 µs to 10 s buckets; executions skipped after an earlier error are not observed |
//! | `portcullis_statement_errors_total` | counter | `protocol`, `side` | executions that ended in an error, by the side that caused it: `client`, `upstream`, `gateway` |
//! | `portcullis_audit_failures_total` | counter | | audit records the sink refused (fail closed: the statement is not run) or dropped (fail open: the statement runs unrecorded) |
//! | `portcullis_audit_queue_depth` | gauge | | records waiting in the audit queue (present once an audit log registers it) |
//! | `portcullis_masked_values_total` | counter | | values rewritten by maskers |
//! | `portcullis_approvals_pending` | gauge | | approval requests waiting for a decision |

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::error::{ErrorKind, Side};
use crate::target::Protocol;

/// Upper bounds of the statement duration buckets, in seconds: 100 µs to 10 s in 1-2.5-5 steps.
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A source of the audit queue depth, read at every scrape.
pub type QueueDepthFn = Box<dyn Fn() -> i64 + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    protocol: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    protocol: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    protocol: &'static str,
    side: &'static str,
}

/// The statement duration histogram, striped by thread.
///
/// prometheus-client's `Histogram` takes a mutex on every observation, and every session on
/// every worker observes into the same one per protocol: each statement end took a lock whose
/// cache line the workers passed back and forth. Here each thread counts into a stripe of its
/// own (relaxed atomics on a line it alone writes, unless threads outnumber the stripes), and a
/// scrape adds the stripes up. Written by hand because prometheus-client has no lock-free
/// histogram; it encodes exactly as its `Histogram` does.
#[derive(Clone, Debug, Default)]
pub(crate) struct DurationHistogram {
    stripes: Arc<[Stripe; STRIPES]>,
}

/// Stripes per histogram: more than the workers of any but large machines; threads beyond it
/// share stripes, which stays correct and only brings some contention back.
const STRIPES: usize = 16;

/// One thread's counts, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds (584 years before it wraps).
    sum_nanos: AtomicU64,
}

/// This thread's stripe: threads take stripes in turn as they first record.
fn stripe_index() -> usize {
    static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl DurationHistogram {
    /// Records one duration.
    pub(crate) fn observe(&self, d: std::time::Duration) {
        let stripe = &self.stripes[stripe_index()];
        let secs = d.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&upper| secs <= upper)
            .unwrap_or(DURATION_BUCKETS.len());
        stripe.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        stripe.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// A counter striped by thread, as [`DurationHistogram`] is: for the per-statement counts, which
/// every session on every worker increments.
#[derive(Clone, Debug, Default)]
pub(crate) struct StripedCounter {
    stripes: Arc<[CounterStripe; STRIPES]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct CounterStripe(AtomicU64);

impl StripedCounter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.stripes[stripe_index()]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The total over all stripes.
    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

impl TypedMetric for StripedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .chain(&[f64::INFINITY])
            .map(|&upper| (upper, 0))
            .collect();
        let mut sum_nanos = 0u64;
        for stripe in self.stripes.iter() {
            for (total, count) in buckets.iter_mut().zip(&stripe.buckets) {
                total.1 += count.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(stripe.sum_nanos.load(Ordering::Relaxed));
        }
        // The count is the buckets' total, so the two always agree in one scrape.
        let count = buckets.iter().map(|b| b.1).sum();
        encoder.encode_histogram::<NoLabelSet>(sum_nanos as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The metrics of one gateway. Created by [`GatewayBuilder::build`](crate::GatewayBuilder::build);
/// shared as an `Arc`, so a listener or an admin endpoint can keep it.
pub struct Metrics {
    registry: Registry,
    connections: Family<ProtocolLabels, Counter>,
    sessions_active: Family<ProtocolLabels, Gauge>,
    logins_failed: Family<LoginLabels, Counter>,
    statements: Family<VerdictLabels, StripedCounter>,
    statement_duration: Family<ProtocolLabels, DurationHistogram>,
    statement_errors: Family<SideLabels, Counter>,
    audit_failures: Counter,
    audit_queue_depth: Arc<QueueDepth>,
    masked_values: Counter,
    approvals_pending: Gauge,
    /// The series of each protocol, resolved on first use so that sessions record with atomic
    /// increments only, and a protocol nobody uses adds no series.
    per_protocol: [OnceLock<Arc<ProtocolMetrics>>; 2],
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The HTTP `Content-Type` of [`encode`](Self::encode)'s output (OpenMetrics text 1.0, which
    /// Prometheus scrapes natively).
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// A fresh set of metrics, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let connections = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "connections",
            "Client connections accepted",
            connections.clone(),
        );
        let sessions_active = Family::<ProtocolLabels, Gauge>::default();
        registry.register(
            "sessions_active",
            "Sessions logged in and relaying",
            sessions_active.clone(),
        );
        let logins_failed = Family::<LoginLabels, Counter>::default();
        registry.register(
            "logins_failed",
            "Refused logins, by the kind of error (authentication, access_denied, unknown_target, ...)",
            logins_failed.clone(),
        );
        let statements = Family::<VerdictLabels, StripedCounter>::default();
        registry.register(
            "statements",
            "Statements decided, by verdict (allowed, denied, approval_required, audit_refused)",
            statements.clone(),
        );
        let statement_duration = Family::<ProtocolLabels, DurationHistogram>::default();
        registry.register_with_unit(
            "statement_duration",
            "Time from forwarding an execution upstream to its completion, results included",
            Unit::Seconds,
            statement_duration.clone(),
        );
        let statement_errors = Family::<SideLabels, Counter>::default();
        registry.register(
            "statement_errors",
            "Executions that ended in an error, by the side that caused it (client, upstream, gateway)",
            statement_errors.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit records the audit sink refused (fail closed) or dropped (fail open)",
            audit_failures.clone(),
        );
        let audit_queue_depth = Arc::new(QueueDepth::default());
        registry.register_collector(Box::new(Arc::clone(&audit_queue_depth)));
        let masked_values = Counter::default();
        registry.register(
            "masked_values",
            "Values rewritten by maskers",
            masked_values.clone(),
        );
        let approvals_pending = Gauge::default();
        registry.register(
            "approvals_pending",
            "Approval requests waiting for a decision",
            approvals_pending.clone(),
        );
        Self {
            registry,
            connections,
            sessions_active,
            logins_failed,
            statements,
            statement_duration,
            statement_errors,
            audit_failures,
            audit_queue_depth,
            masked_values,
            approvals_pending,
            per_protocol: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The whole exposition in the OpenMetrics text format (ending in `# EOF`), to be served with
    /// [`CONTENT_TYPE`](Self::CONTENT_TYPE).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail, and no registered metric or collector reports an
        // error of its own.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a client connection accepted by a `protocol` listener. Protocol crates call this
    /// once per accepted connection, before the handshake.
    pub fn connection_accepted(&self, protocol: Protocol) {
        self.protocol(protocol).connections.inc();
    }

    /// Counts a `protocol` session as active until the returned guard is dropped. Protocol crates
    /// hold it while a session relays.
    pub fn session_active(&self, protocol: Protocol) -> ActiveSession {
        let gauge = self.protocol(protocol).sessions_active.clone();
        gauge.inc();
        ActiveSession { gauge }
    }

    /// Counts an audit record the sink refused. The session phases call this themselves; an audit
    /// implementation that drops records (fail-open) calls it for every record it drops.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// Makes `portcullis_audit_queue_depth` report `depth()` at every scrape; a later call
    /// replaces the earlier source. Until one is registered the gauge is absent. `depth` runs on
    /// the scraping task, so it must be cheap (an atomic load).
    pub fn register_audit_queue_depth(&self, depth: QueueDepthFn) {
        *self
            .audit_queue_depth
            .source
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(depth);
    }

    /// Adds `n` values rewritten by a masker.
    pub fn add_masked_values(&self, n: u64) {
        self.masked_values.inc_by(n);
    }

    /// Sets the number of approval requests waiting for a decision.
    pub fn set_approvals_pending(&self, n: i64) {
        self.approvals_pending.set(n);
    }

    /// Counts a refused login of `protocol`, labelled with the error kind.
    pub(crate) fn login_failed(&self, protocol: Protocol, kind: ErrorKind) {
        self.logins_failed
            .get_or_create(&LoginLabels {
                protocol: protocol.as_str(),
                reason: kind.as_str(),
            })
            .inc();
    }

    /// The pre-resolved series of `protocol`.
    pub(crate) fn protocol(&self, protocol: Protocol) -> &Arc<ProtocolMetrics> {
        let slot = match protocol {
            Protocol::Postgres => &self.per_protocol[0],
            Protocol::Mysql => &self.per_protocol[1],
        };
        slot.get_or_init(|| Arc::new(ProtocolMetrics::resolve(self, protocol.as_str())))
    }
}

/// Keeps a session counted in `portcullis_sessions_active` until dropped.
#[must_use = "the session counts as active only while the guard lives"]
#[derive(Debug)]
pub struct ActiveSession {
    gauge: Gauge,
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The series of one protocol, held by every session of it: recording a statement costs atomic
/// increments, not a label lookup.
pub(crate) struct ProtocolMetrics {
    connections: Counter,
    sessions_active: Gauge,
    pub(crate) allowed: StripedCounter,
    pub(crate) denied: StripedCounter,
    pub(crate) approval_required: StripedCounter,
    pub(crate) audit_refused: StripedCounter,
    pub(crate) duration: DurationHistogram,
    errors: [Counter; 3],
    audit_failures: Counter,
}

impl ProtocolMetrics {
    fn resolve(m: &Metrics, protocol: &'static str) -> Self {
        let verdict = |verdict| {
            m.statements
                .get_or_create_owned(&VerdictLabels { protocol, verdict })
        };
        let side = |side: Side| {
            m.statement_errors.get_or_create_owned(&SideLabels {
                protocol,
                side: side.as_str(),
            })
        };
        let labels = ProtocolLabels { protocol };
        Self {
            connections: m.connections.get_or_create_owned(&labels),
            sessions_active: m.sessions_active.get_or_create_owned(&labels),
            allowed: verdict("allowed"),
            denied: verdict("denied"),
            approval_required: verdict("approval_required"),
            audit_refused: verdict("audit_refused"),
            duration: m.statement_duration.get_or_create_owned(&labels),
            errors: [
                side(Side::Client),
                side(Side::Upstream),
                side(Side::Gateway),
            ],
            audit_failures: m.audit_failures.clone(),
        }
    }

    /// Counts an execution that ended in an error caused by `side`.
    pub(crate) fn statement_error(&self, side: Side) {
        let i = match side {
            Side::Client => 0,
            Side::Upstream => 1,
            Side::Gateway => 2,
        };
        self.errors[i].inc();
    }

    /// Counts an audit record the sink refused.
    pub(crate) fn audit_failure(&self) {
        self.audit_failures.inc();
    }
}

/// Reports the registered audit queue depth at scrape time.
#[derive(Default)]
struct QueueDepth {
    source: RwLock<Option<QueueDepthFn>>,
}

impl fmt::Debug for QueueDepth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueDepth").finish_non_exhaustive()
    }
}

impl Collector for QueueDepth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let source = self.source.read().unwrap_or_else(|e| e.into_inner());
        let Some(depth) = source.as_ref() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(depth());
        let metric = encoder.encode_descriptor(
            "audit_queue_depth",
            "Audit records waiting in the queue",
            None,
            ConstGauge::<i64>::TYPE,
        )?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    use super::*;
    use crate::{
        Access, AuditRecord, AuditSink, AuthMethod, Authenticator, ClientInfo, Credentials,
        Decision, Gateway, GatewayError, Identity, Judgement, Outcome, PolicyEngine, RecordedError,
        SessionRequest, SqlSettings, StatementContext, Target, Targets, UpstreamTls, Verdict,
    };

    /// Admits `alice` with the password `secret`.
    struct FixedPassword;

    #[async_trait::async_trait]
    impl Authenticator for FixedPassword {
        async fn authenticate(
            &self,
            c: &Credentials,
            _: &ClientInfo,
        ) -> Result<Identity, GatewayError> {
            match c {
                Credentials::Password { user, password }
                    if user == "alice" && password == "secret" =>
                {
                    Ok(Identity {
                        subject: user.clone(),
                        groups: vec![],
                        auth_method: AuthMethod::Password,
                        claims: BTreeMap::new(),
                    })
                }
                _ => Err(GatewayError::auth("wrong password")),
            }
        }
    }

    /// Denies texts containing "forbidden", holds texts containing "risky" for approval.
    struct Rules;

    impl PolicyEngine for Rules {
        fn access(&self, _: &Identity, _: &Target) -> Result<Access, GatewayError> {
            Ok(Access::ReadWrite)
        }
        fn judge(&self, _: &StatementContext<'_>, sql: &str) -> Arc<Judgement> {
            let verdict = if sql.contains("forbidden") {
                Verdict::deny("no-forbidden", "forbidden")
            } else if sql.contains("risky") {
                Verdict {
                    decision: Decision::NeedsApproval,
                    rule: Some(Arc::from("hold-risky")),
                    reason: None,
                    syntax_error: None,
                }
            } else {
                Verdict::allow(None)
            };
            Arc::new(Judgement {
                verdict,
                classification: None,
                objects: None,
                fingerprint: None,
                lineage: None,
            })
        }
    }

    /// Accepts records until `failing` is set.
    #[derive(Default)]
    struct SwitchableSink {
        failing: AtomicBool,
    }

    #[async_trait::async_trait]
    impl AuditSink for SwitchableSink {
        async fn record(&self, _: AuditRecord) -> Result<(), GatewayError> {
            if self.failing.load(Ordering::Relaxed) {
                Err(GatewayError::internal("disk full"))
            } else {
                Ok(())
            }
        }
    }

    fn gateway(sink: Arc<SwitchableSink>) -> Gateway {
        let target = Target {
            name: "app".into(),
            protocol: Protocol::Postgres,
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app".into(),
            user: "svc".into(),
            password: None,
            tls: UpstreamTls::Disable,
            labels: BTreeMap::new(),
        };
        Gateway::builder()
            .authenticator(Arc::new(FixedPassword))
            .policy(Arc::new(Rules))
            .audit(sink)
            .targets(Targets::new([target]))
            .build()
    }

    fn request(password: &str, database: &str) -> SessionRequest {
        SessionRequest {
            credentials: Credentials::Password {
                user: "alice".into(),
                password: password.into(),
            },
            client: ClientInfo {
                addr: "127.0.0.1:40000".parse().unwrap(),
                protocol: "postgres",
                tls: false,
                application: None,
            },
            protocol: Protocol::Postgres,
            database: database.into(),
            require_user_match: false,
        }
    }

    /// The value of one series in the exposition, or `None` when the series is absent.
    fn value(exposition: &str, series: &str) -> Option<f64> {
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn statements(exposition: &str, verdict: &str) -> Option<f64> {
        value(
            exposition,
            &format!("portcullis_statements_total{{protocol=\"postgres\",verdict=\"{verdict}\"}}"),
        )
    }

    #[test]
    fn striped_metrics_add_up_what_every_thread_recorded() {
        use std::time::Duration;
        let histogram = DurationHistogram::default();
        let counter = StripedCounter::default();
        let mut registry = Registry::default();
        registry.register_with_unit("d", "durations", Unit::Seconds, histogram.clone());
        registry.register("c", "events", counter.clone());
        // Eight threads, more than one stripe each way round: 50 us, 2 ms, 30 s each.
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for d in [50, 2_000, 30_000_000] {
                        histogram.observe(Duration::from_micros(d));
                        counter.inc();
                    }
                });
            }
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (series, expected) in [
            ("d_seconds_bucket{le=\"0.0001\"}", 8.0),
            ("d_seconds_bucket{le=\"0.001\"}", 8.0),
            ("d_seconds_bucket{le=\"0.0025\"}", 16.0),
            ("d_seconds_bucket{le=\"10.0\"}", 16.0),
            ("d_seconds_bucket{le=\"+Inf\"}", 24.0),
            ("d_seconds_count", 24.0),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
        let sum = value(&text, "d_seconds_sum").unwrap();
        assert!((sum - 8.0 * 30.00205).abs() < 1e-6, "{sum} in\n{text}");
        assert!(text.contains("# TYPE d_seconds histogram"), "{text}");
        assert_eq!(value(&text, "c_total"), Some(24.0), "{text}");
        assert!(text.contains("# TYPE c counter"), "{text}");
    }

    #[tokio::test]
    async fn every_phase_counts_into_the_exposition() {
        let gw = gateway(Arc::default());
        let settings = SqlSettings::default();

        assert!(gw.open_session(request("wrong", "app")).await.is_err());
        assert!(gw.open_session(request("secret", "nowhere")).await.is_err());
        let session = gw.open_session(request("secret", "app")).await.unwrap();

        // Allowed, completes with rows.
        let stmt = session.prepare("select 1", &settings).await.unwrap();
        let exec = session.execute(&stmt).await.unwrap();
        session
            .finish(
                exec,
                Outcome {
                    rows: 1,
                    tag: Some("SELECT 1".into()),
                    ..Outcome::default()
                },
            )
            .await
            .unwrap();
        // Allowed, fails upstream.
        let exec = session.execute(&stmt).await.unwrap();
        let error = RecordedError {
            side: Side::Upstream,
            code: Some("22012".into()),
            message: "division by zero".into(),
        };
        session
            .finish(
                exec,
                Outcome {
                    error: Some(error),
                    ..Outcome::default()
                },
            )
            .await
            .unwrap();
        // Allowed, skipped after the error ahead of it: counted, but never timed.
        let exec = session.execute(&stmt).await.unwrap();
        session
            .finish(
                exec,
                Outcome {
                    skipped: true,
                    ..Outcome::default()
                },
            )
            .await
            .unwrap();
        // Denied by policy.
        let denied = session
            .prepare("select 'forbidden'", &settings)
            .await
            .unwrap_err();
        assert_eq!(denied.kind, ErrorKind::PolicyDenied);
        // Held for approval, and no approval service grants it.
        let held = session
            .prepare("delete from t -- risky", &settings)
            .await
            .unwrap();
        let refused = session.execute(&held).await.err().unwrap();
        assert_eq!(refused.kind, ErrorKind::ApprovalRequired);
        session.close(None).await;

        let text = gw.metrics().encode();
        assert_eq!(statements(&text, "allowed"), Some(3.0), "{text}");
        assert_eq!(statements(&text, "denied"), Some(1.0), "{text}");
        assert_eq!(statements(&text, "approval_required"), Some(1.0), "{text}");
        assert_eq!(statements(&text, "audit_refused"), Some(0.0), "{text}");
        let login = |reason: &str| {
            value(
                &text,
                &format!(
                    "portcullis_logins_failed_total{{protocol=\"postgres\",reason=\"{reason}\"}}"
                ),
            )
        };
        assert_eq!(login("authentication"), Some(1.0), "{text}");
        assert_eq!(login("unknown_target"), Some(1.0), "{text}");
        assert_eq!(
            login("access_denied"),
            None,
            "only reasons that happened have a series: {text}"
        );
        let errors = |side: &str| {
            value(
                &text,
                &format!(
                    "portcullis_statement_errors_total{{protocol=\"postgres\",side=\"{side}\"}}"
                ),
            )
        };
        assert_eq!(errors("upstream"), Some(1.0), "{text}");
        assert_eq!(errors("client"), Some(0.0), "{text}");
        assert_eq!(errors("gateway"), Some(0.0), "{text}");
        assert_eq!(
            value(
                &text,
                "portcullis_statement_duration_seconds_count{protocol=\"postgres\"}"
            ),
            Some(2.0),
            "{text}"
        );
        // The buckets span 100 µs to 10 s; a unit-test execution finishes within the largest.
        assert_eq!(
            value(
                &text,
                "portcullis_statement_duration_seconds_bucket{le=\"10.0\",protocol=\"postgres\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert!(
            text.contains("# UNIT portcullis_statement_duration_seconds seconds"),
            "{text}"
        );
        assert_eq!(
            value(&text, "portcullis_audit_failures_total"),
            Some(0.0),
            "{text}"
        );
        // A protocol nobody used has no series.
        assert!(!text.contains("protocol=\"mysql\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn an_unavailable_audit_trail_refuses_and_counts() {
        let sink = Arc::new(SwitchableSink::default());
        let gw = gateway(Arc::clone(&sink));
        let settings = SqlSettings::default();
        let session = gw.open_session(request("secret", "app")).await.unwrap();
        let stmt = session.prepare("select 1", &settings).await.unwrap();

        sink.failing.store(true, Ordering::Relaxed);
        let refused = session.execute(&stmt).await.err().unwrap();
        assert_eq!(refused.kind, ErrorKind::AuditUnavailable);
        // A failed login whose record is lost counts as a login failure and an audit failure.
        assert!(gw.open_session(request("wrong", "app")).await.is_err());

        let text = gw.metrics().encode();
        assert_eq!(statements(&text, "audit_refused"), Some(1.0), "{text}");
        assert_eq!(statements(&text, "allowed"), Some(0.0), "{text}");
        assert_eq!(
            value(&text, "portcullis_audit_failures_total"),
            Some(2.0),
            "{text}"
        );
    }

    #[tokio::test]
    async fn protocol_crates_and_other_crates_feed_their_series() {
        let gw = gateway(Arc::default());
        let metrics = gw.metrics();
        let active = "portcullis_sessions_active{protocol=\"postgres\"}";

        metrics.connection_accepted(Protocol::Postgres);
        metrics.connection_accepted(Protocol::Postgres);
        let first = metrics.session_active(Protocol::Postgres);
        let second = metrics.session_active(Protocol::Postgres);
        assert_eq!(value(&metrics.encode(), active), Some(2.0));
        drop(first);
        assert_eq!(value(&metrics.encode(), active), Some(1.0));
        drop(second);

        metrics.add_masked_values(3);
        metrics.set_approvals_pending(2);
        let text = metrics.encode();
        assert_eq!(
            value(&text, "portcullis_connections_total{protocol=\"postgres\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(value(&text, active), Some(0.0), "{text}");
        assert_eq!(
            value(&text, "portcullis_masked_values_total"),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "portcullis_approvals_pending"),
            Some(2.0),
            "{text}"
        );
        // No audit queue registered: no gauge rather than a made-up zero.
        assert!(!text.contains("portcullis_audit_queue_depth"), "{text}");

        let depth = Arc::new(AtomicI64::new(7));
        let source = Arc::clone(&depth);
        metrics.register_audit_queue_depth(Box::new(move || source.load(Ordering::Relaxed)));
        assert_eq!(
            value(&metrics.encode(), "portcullis_audit_queue_depth"),
            Some(7.0)
        );
        depth.store(0, Ordering::Relaxed);
        let text = metrics.encode();
        assert_eq!(
            value(&text, "portcullis_audit_queue_depth"),
            Some(0.0),
            "{text}"
        );
        assert!(
            text.contains("# TYPE portcullis_audit_queue_depth gauge"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn gateways_in_one_process_count_separately() {
        let (a, b) = (gateway(Arc::default()), gateway(Arc::default()));
        a.open_session(request("secret", "app"))
            .await
            .unwrap()
            .close(None)
            .await;
        let session = a.open_session(request("secret", "app")).await.unwrap();
        let stmt = session
            .prepare("select 1", &SqlSettings::default())
            .await
            .unwrap();
        let exec = session.execute(&stmt).await.unwrap();
        session.finish(exec, Outcome::default()).await.unwrap();
        assert_eq!(statements(&a.metrics().encode(), "allowed"), Some(1.0));
        assert_eq!(statements(&b.metrics().encode(), "allowed"), None);
        // Clones of a gateway share its metrics.
        assert!(Arc::ptr_eq(a.metrics(), a.clone().metrics()));
    }

    #[test]
    fn label_names_match_the_audit_trail() {
        use ErrorKind::*;
        let kinds = [
            Authentication,
            AccessDenied,
            UnknownTarget,
            PolicyDenied,
            Syntax,
            ApprovalRequired,
            Protocol,
            Unsupported,
            Timeout,
            UpstreamUnavailable,
            AuditUnavailable,
            ShuttingDown,
            Internal,
        ];
        for kind in kinds {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                kind.as_str(),
                "{kind:?}"
            );
        }
        for side in [Side::Client, Side::Upstream, Side::Gateway] {
            assert_eq!(
                serde_json::to_value(side).unwrap(),
                side.as_str(),
                "{side:?}"
            );
        }
    }
}
