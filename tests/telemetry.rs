//! Trace export end to end: a local OTLP/HTTP receiver started by the test, a gateway started
//! in-process with `[telemetry] otlp_endpoint` pointing at it, statements through tokio-postgres
//! (allowed in the simple and the extended protocol, and one denied by a rule), a graceful
//! shutdown, and then the spans the receiver decoded: their tree, their attributes and the
//! resource.
//!
//! Its own test binary on purpose: the export layer has to be in the process's global `tracing`
//! subscriber (the gateway's tasks run on the runtime's threads), and a process has only one.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{toml_str, TestDb, AUDIENCE, ISSUER, UPSTREAM_HOST, UPSTREAM_PORT};
use identity::{MintKey, MintRequest};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{status, Span};
use portcullis::{Config, Server, Telemetry};
use prost::Message as _;
use tokio_postgres::NoTls;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// What the receiver got: each export request with its `authorization` header.
#[derive(Default)]
struct Received {
    requests: Vec<(Option<String>, ExportTraceServiceRequest)>,
}

type Shared = Arc<Mutex<Received>>;

/// A minimal OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf body.
async fn start_receiver() -> (std::net::SocketAddr, Shared) {
    let received: Shared = Arc::default();
    let router = Router::new()
        .route("/v1/traces", post(export))
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("receiver address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, received)
}

async fn export(
    State(received): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let content_type = [(header::CONTENT_TYPE, "application/x-protobuf")];
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            let auth = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            received.lock().unwrap().requests.push((auth, request));
            (
                StatusCode::OK,
                content_type,
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }
        Err(_) => (StatusCode::BAD_REQUEST, content_type, Vec::new()),
    }
}

/// One exported span with its resource's attributes.
struct Exported {
    resource: Vec<KeyValue>,
    span: Span,
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(any_value::Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

fn token(secret: &str, subject: &str, groups: &[&str]) -> String {
    let mut req = MintRequest::new(
        MintKey::Hs256(secret.to_owned()),
        subject,
        Duration::from_secs(600),
    );
    req.issuer = Some(ISSUER.into());
    req.audience = Some(AUDIENCE.into());
    req.groups = groups.iter().map(|g| (*g).to_owned()).collect();
    identity::mint_token(&req).expect("mint token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_statement_spans_reach_an_otlp_receiver() {
    let (receiver, received) = start_receiver().await;
    let db = TestDb::create().await;
    db.connect_direct()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);")
        .await
        .expect("set up the test table");

    let dir = tempfile::tempdir().expect("tempdir");
    let secret = format!("telemetry-test-secret-{:032x}", rand::random::<u128>());
    std::env::set_var("PORTCULLIS_TEST_OTLP_TOKEN", "otlp-test-token");
    let text = format!(
        "[gateway]\nnode = \"trace-node\"\nhandshake_timeout = \"5s\"\n\n\
         [postgres]\nlisten = \"127.0.0.1:0\"\n\n\
         [identity.jwt]\nissuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\"]\nalgorithms = [\"HS256\"]\nhs256_secret = {secret}\n\n\
         [[targets]]\nname = {db}\nhost = \"{UPSTREAM_HOST}\"\nport = {UPSTREAM_PORT}\ndatabase = {db}\nuser = \"postgres\"\n\n\
         [policy]\n[[policy.access]]\nname = \"engineers\"\ngroups = [\"engineering\"]\nmode = \"read-write\"\n\n\
         [[policy.rules]]\nname = \"no-drop\"\naction = \"deny\"\nkinds = [\"drop\"]\nmessage = \"no dropping here\"\n\n\
         [telemetry]\notlp_endpoint = \"http://{receiver}\"\nservice_name = \"portcullis-test\"\n\
         headers = {{ authorization = \"Bearer ${{PORTCULLIS_TEST_OTLP_TOKEN}}\" }}\n",
        secret = toml_str(&secret),
        db = toml_str(&db.name),
    );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, &text).expect("write config");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config refused:\n{e}"));
    let settings = config.telemetry.clone().expect("[telemetry] is configured");
    assert_eq!(
        settings.otlp_endpoint,
        format!("http://{receiver}/v1/traces")
    );

    // The export layer becomes this process's subscriber (`RUST_LOG` adds a log layer beside it).
    let telemetry = Telemetry::start(&settings, &config.gateway.node).expect("start telemetry");
    let registry = tracing_subscriber::registry().with(telemetry.layer());
    let installed = if std::env::var_os("RUST_LOG").is_some() {
        use tracing_subscriber::Layer as _;
        let log = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::EnvFilter::from_default_env());
        registry.with(log).try_init()
    } else {
        registry.try_init()
    };
    installed.expect("this test binary installs the only global subscriber");

    let server = Server::start_with_telemetry(config, Some(telemetry))
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e:#}"));
    assert!(server.telemetry().is_some());
    let port = server.postgres_addr().expect("listener").port();

    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(port)
        .user("alice")
        .password(token(&secret, "alice", &["engineering"]))
        .dbname(&db.name)
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = pg
        .connect(NoTls)
        .await
        .expect("connect through the gateway");
    let conn = tokio::spawn(conn);
    // Simple protocol, extended protocol (Parse once, then Bind/Execute), and a denial.
    client
        .simple_query("SELECT count(*) FROM t")
        .await
        .expect("allowed simple query");
    let rows = client
        .query("SELECT id FROM t WHERE id >= $1 ORDER BY id", &[&2i32])
        .await
        .expect("allowed extended query");
    assert_eq!(rows.len(), 2);
    let denied = client
        .simple_query("DROP TABLE t")
        .await
        .expect_err("the policy denies DROP");
    assert_eq!(denied.code().map(|c| c.code()), Some("42501"));
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;

    // Graceful shutdown exports the last spans before it returns.
    server.shutdown().await;

    let received = std::mem::take(&mut received.lock().unwrap().requests);
    assert!(!received.is_empty(), "the receiver got no export request");
    for (auth, _) in &received {
        assert_eq!(auth.as_deref(), Some("Bearer otlp-test-token"));
    }
    let spans: Vec<Exported> = received
        .into_iter()
        .flat_map(|(_, request)| request.resource_spans)
        .flat_map(|rs| {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            rs.scope_spans
                .into_iter()
                .flat_map(|ss| ss.spans)
                .map(move |span| Exported {
                    resource: resource.clone(),
                    span,
                })
        })
        .collect();
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    let by_id: HashMap<&[u8], &Span> = spans
        .iter()
        .map(|s| (s.span.span_id.as_slice(), &s.span))
        .collect();
    let parent_name = |span: &Span| -> Option<&str> {
        by_id
            .get(span.parent_span_id.as_slice())
            .map(|p| p.name.as_str())
    };

    for s in &spans {
        assert_eq!(
            str_attr(&s.resource, "service.name"),
            Some("portcullis-test")
        );
        assert_eq!(
            str_attr(&s.resource, "service.instance.id"),
            Some("trace-node")
        );
    }

    // One connection: one session span, the root of the trace.
    let sessions: Vec<&Span> = spans
        .iter()
        .map(|s| &s.span)
        .filter(|s| s.name == "session")
        .collect();
    assert_eq!(sessions.len(), 1, "spans: {names:?}");
    let session = sessions[0];
    assert!(session.parent_span_id.is_empty());
    assert_eq!(str_attr(&session.attributes, "protocol"), Some("postgres"));
    assert_eq!(str_attr(&session.attributes, "subject"), Some("alice"));
    assert_eq!(
        str_attr(&session.attributes, "target"),
        Some(db.name.as_str())
    );
    assert!(str_attr(&session.attributes, "id").is_some());

    // Every other span belongs to the session's trace.
    for s in &spans {
        assert_eq!(
            s.span.trace_id, session.trace_id,
            "{} is not in the session's trace",
            s.span.name
        );
    }
    let children_of_session = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .map(|s| &s.span)
            .filter(|s| s.name == name && s.parent_span_id == session.span_id)
            .collect()
    };

    let auth = children_of_session("auth");
    assert_eq!(auth.len(), 1, "spans: {names:?}");
    assert_eq!(str_attr(&auth[0].attributes, "subject"), Some("alice"));

    // Statements: the simple SELECT, the extended SELECT, and the denied DROP (tokio-postgres
    // runs nothing else through this connection).
    let statements = children_of_session("statement");
    assert_eq!(statements.len(), 3, "spans: {names:?}");
    for st in &statements {
        assert_eq!(str_attr(&st.attributes, "subject"), Some("alice"));
        assert_eq!(str_attr(&st.attributes, "target"), Some(db.name.as_str()));
        assert!(int_attr(&st.attributes, "statement_id").is_some());
    }
    let allowed: Vec<&&Span> = statements
        .iter()
        .filter(|s| str_attr(&s.attributes, "verdict") == Some("allow"))
        .collect();
    assert_eq!(allowed.len(), 2);
    let mut rows: Vec<i64> = allowed
        .iter()
        .map(|s| int_attr(&s.attributes, "rows").expect("rows recorded at finish"))
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, vec![1, 2]);
    for s in &allowed {
        assert_eq!(str_attr(&s.attributes, "classification"), Some("read"));
        assert_ne!(
            s.status.as_ref().map(|st| st.code),
            Some(status::StatusCode::Error as i32)
        );
    }
    let denial = statements
        .iter()
        .find(|s| str_attr(&s.attributes, "verdict") == Some("deny"))
        .expect("a statement span for the denied DROP");
    assert_eq!(str_attr(&denial.attributes, "rule"), Some("no-drop"));
    assert_eq!(
        denial.status.as_ref().map(|st| st.code),
        Some(status::StatusCode::Error as i32)
    );

    // Each statement's audit records are its children; the upstream wait is a child of each
    // allowed statement.
    let audit_events = |st: &Span| -> Vec<String> {
        let mut events: Vec<String> = spans
            .iter()
            .map(|s| &s.span)
            .filter(|s| s.name == "audit" && s.parent_span_id == st.span_id)
            .filter_map(|s| str_attr(&s.attributes, "event").map(str::to_owned))
            .collect();
        events.sort();
        events
    };
    for s in &allowed {
        assert_eq!(
            audit_events(s),
            vec!["statement_finished", "statement_started"]
        );
        let upstream = spans
            .iter()
            .filter(|x| x.span.name == "upstream" && x.span.parent_span_id == s.span_id)
            .count();
        assert_eq!(upstream, 1, "spans: {names:?}");
    }
    assert_eq!(audit_events(denial), vec!["statement_denied"]);
    // Session records hang off the session.
    let mut session_events: Vec<&str> = children_of_session("audit")
        .iter()
        .filter_map(|s| str_attr(&s.attributes, "event"))
        .collect();
    session_events.sort_unstable();
    assert_eq!(session_events, vec!["session_closed", "session_opened"]);

    // Judging: one policy span per statement text prepared, each with its analysis (the cache
    // was cold), under the session.
    let policies = children_of_session("policy");
    assert!(policies.len() >= 3, "spans: {names:?}");
    assert!(policies
        .iter()
        .any(|p| str_attr(&p.attributes, "decision") == Some("deny")
            && str_attr(&p.attributes, "rule") == Some("no-drop")));
    let analyses = spans
        .iter()
        .filter(|s| s.span.name == "analysis")
        .collect::<Vec<_>>();
    assert!(!analyses.is_empty(), "spans: {names:?}");
    for a in analyses {
        assert_eq!(parent_name(&a.span), Some("policy"));
    }
}
