//! The admin listener end to end: a gateway with a PostgreSQL listener in front of the local
//! PostgreSQL (127.0.0.1:5432, trust, user `postgres`), an admin listener on port 0, tokio-postgres
//! as the client, and `/metrics`, `/healthz`, `/readyz` read with plain HTTP/1.1 requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway_core::{
    Access, Gateway, GatewayError, Identity, Judgement, PolicyEngine, Protocol, StatementContext,
    Target, Targets, UpstreamTls, Verdict,
};
use identity::{hash_password, IdentityChain, StaticUser, StaticUsers};
use proto_postgres::{ListenerConfig, PostgresListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

/// Denies any statement whose text contains "forbidden".
struct DenyForbidden;

impl PolicyEngine for DenyForbidden {
    fn access(&self, _: &Identity, _: &Target) -> Result<Access, GatewayError> {
        Ok(Access::ReadWrite)
    }
    fn judge(&self, _: &StatementContext<'_>, sql: &str) -> Arc<Judgement> {
        let verdict = if sql.contains("forbidden") {
            Verdict::deny(
                "no-forbidden",
                "statements mentioning forbidden things are refused",
            )
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

/// A gateway for static user `alice` (password `secret`) in front of the local PostgreSQL, with
/// its PostgreSQL listener running on port 0.
async fn start_gateway() -> (Gateway, SocketAddr) {
    let users = StaticUsers::new(vec![StaticUser {
        name: "alice".into(),
        password_hash: hash_password("secret").unwrap(),
        groups: vec![],
    }])
    .unwrap();
    let target = Target {
        name: "postgres".into(),
        protocol: Protocol::Postgres,
        host: "127.0.0.1".into(),
        port: 5432,
        database: "postgres".into(),
        user: "postgres".into(),
        password: None,
        tls: UpstreamTls::Disable,
        labels: BTreeMap::new(),
    };
    let gateway = Gateway::builder()
        .node("admin-test")
        .authenticator(Arc::new(IdentityChain {
            jwt: None,
            users,
            cert: None,
        }))
        .policy(Arc::new(DenyForbidden))
        .targets(Targets::new([target]))
        .build();
    let config = ListenerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        require_tls: false,
        allow_plaintext_password: false,
        require_user_match: false,
        handshake_timeout: Duration::from_secs(10),
        max_message_bytes: 1 << 20,
        drain_timeout: Duration::from_secs(5),
    };
    let listener = PostgresListener::bind(config, gateway.clone())
        .await
        .unwrap();
    let addr = listener.local_addr();
    tokio::spawn(listener.run());
    (gateway, addr)
}

async fn connect(
    addr: SocketAddr,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=alice password={password} dbname=postgres",
            addr.port()
        ),
        NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// An HTTP response: status code, headers (names lower-cased) and body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One `GET` over a fresh connection (`Connection: close`, so the body ends at EOF).
async fn get(addr: SocketAddr, path: &str) -> Response {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("the admin listener answers within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The value of one series in an exposition, or `None` when the series is absent.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_health_and_readiness_over_http() {
    let (gateway, pg_addr) = start_gateway().await;
    let ready = Arc::new(AtomicBool::new(false));
    let admin = portcullis::admin::bind(
        "127.0.0.1:0".parse().unwrap(),
        gateway,
        Arc::clone(&ready),
        None,
        None,
    )
    .await
    .unwrap();
    let admin_addr = admin.local_addr();
    assert_ne!(admin_addr.port(), 0);
    let admin_task = tokio::spawn(admin.run());

    // Liveness holds from the start; readiness follows the flag the server sets.
    let health = get(admin_addr, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_eq!(get(admin_addr, "/readyz").await.status, 503);
    ready.store(true, Ordering::Release);
    let readyz = get(admin_addr, "/readyz").await;
    assert_eq!((readyz.status, readyz.body.as_str()), (200, "ready"));
    assert_eq!(get(admin_addr, "/nothing-here").await.status, 404);

    let client = connect(pg_addr, "secret").await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let denied = client.simple_query("select 'forbidden'").await.unwrap_err();
    assert_eq!(denied.as_db_error().unwrap().code().code(), "42501");

    let response = get(admin_addr, "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = &response.body;
    let statements = |verdict: &str| {
        value(
            text,
            &format!("portcullis_statements_total{{protocol=\"postgres\",verdict=\"{verdict}\"}}"),
        )
    };
    assert_eq!(statements("allowed"), Some(1.0), "{text}");
    assert_eq!(statements("denied"), Some(1.0), "{text}");
    assert_eq!(
        value(text, "portcullis_connections_total{protocol=\"postgres\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(text, "portcullis_sessions_active{protocol=\"postgres\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            text,
            "portcullis_statement_duration_seconds_count{protocol=\"postgres\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // A wrong password is a failed login; the session that ends leaves the active gauge.
    let wrong = connect(pg_addr, "wrong")
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(wrong.as_db_error().unwrap().code().code(), "28P01");
    drop(client);
    let mut text = String::new();
    for _ in 0..100 {
        text = get(admin_addr, "/metrics").await.body;
        if value(&text, "portcullis_sessions_active{protocol=\"postgres\"}") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        value(&text, "portcullis_sessions_active{protocol=\"postgres\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "portcullis_connections_total{protocol=\"postgres\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "portcullis_logins_failed_total{protocol=\"postgres\",reason=\"authentication\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // Shutting down: readiness drops while the process still answers.
    ready.store(false, Ordering::Release);
    assert_eq!(get(admin_addr, "/readyz").await.status, 503);
    assert_eq!(get(admin_addr, "/healthz").await.status, 200);
    admin_task.abort();
}
