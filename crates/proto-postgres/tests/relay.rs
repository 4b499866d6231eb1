//! The relay against the real local PostgreSQL (127.0.0.1:5432, trust), driven by tokio-postgres.
//! The authenticator here is a fixed-password test double; the full identity stack is exercised by
//! the workspace's end-to-end tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway_core::*;
use proto_postgres::{ListenerConfig, PostgresListener};
use tokio_postgres::{NoTls, SimpleQueryMessage};

struct FixedPassword;

#[async_trait::async_trait]
impl Authenticator for FixedPassword {
    async fn authenticate(
        &self,
        c: &Credentials,
        _: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        match c {
            Credentials::Password { user, password } if password == "secret" => Ok(Identity {
                subject: user.clone(),
                groups: vec![],
                auth_method: AuthMethod::Password,
                claims: BTreeMap::new(),
            }),
            _ => Err(GatewayError::auth("wrong password")),
        }
    }
}

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

async fn start() -> std::net::SocketAddr {
    let listener = bind().await;
    let addr = listener.local_addr();
    tokio::spawn(listener.run());
    addr
}

/// A listener in front of the local PostgreSQL, with the test authenticator and policy.
async fn bind() -> PostgresListener {
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
        .authenticator(Arc::new(FixedPassword))
        .policy(Arc::new(DenyForbidden))
        .targets(Targets::new([target]))
        .build();
    let config = ListenerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        require_tls: false,
        allow_plaintext_password: false,
        require_user_match: false,
        handshake_timeout: Duration::from_secs(5),
        max_message_bytes: 1 << 20,
        drain_timeout: Duration::from_secs(10),
    };
    PostgresListener::bind(config, gateway).await.unwrap()
}

async fn connect(addr: std::net::SocketAddr) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=alice password=secret dbname=postgres",
            addr.port()
        ),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn simple_and_extended_queries_pass_through() {
    let addr = start().await;
    let client = connect(addr).await;
    let rows = client
        .query("select $1::int + 1 as n, $2::text as t", &[&41i32, &"x"])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>("n"), 42);
    assert_eq!(rows[0].get::<_, &str>("t"), "x");
    let msgs = client.simple_query("select 1; select 2").await.unwrap();
    let n = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 2);
    let app: String = client
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "portcullis:alice");
}

#[tokio::test]
async fn denied_statement_keeps_session_usable_and_transaction_failed() {
    let addr = start().await;
    let client = connect(addr).await;
    let err = client.simple_query("select 'forbidden'").await.unwrap_err();
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "42501");
    assert!(db.message().contains("no-forbidden"), "{}", db.message());
    // Extended protocol denial.
    let err = client
        .query("select 'forbidden'::text", &[])
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    // Still usable.
    let v: i32 = client.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    // Inside a transaction, a denial fails the transaction as PostgreSQL would.
    client.batch_execute("begin").await.unwrap();
    assert!(client.simple_query("select 'forbidden'").await.is_err());
    let err = client.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P02");
    client.batch_execute("rollback").await.unwrap();
}

#[tokio::test]
async fn pipelined_queries_with_a_denial_in_the_middle_keep_their_order() {
    let addr = start().await;
    let client = connect(addr).await;
    let a = client.query_one("select 1::int", &[]);
    let b = client.query_one("select 'forbidden'::text", &[]);
    let c = client.query_one("select 3::int", &[]);
    let (a, b, c) = tokio::join!(a, b, c);
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().as_db_error().unwrap().code().code(), "42501");
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test]
async fn copy_in_and_out() {
    let addr = start().await;
    let client = connect(addr).await;
    client
        .batch_execute("create temp table c (a int, b text)")
        .await
        .unwrap();
    let sink = client.copy_in("copy c from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    let stream = client
        .copy_out("copy (select * from c order by a) to stdout")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert!(out.starts_with(b"0\tvalue 0\n"));
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 5000);
}

#[tokio::test]
async fn wrong_password_is_refused_with_28p01() {
    let addr = start().await;
    let err = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=alice password=nope dbname=postgres",
            addr.port()
        ),
        NoTls,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");
}

#[tokio::test]
async fn cancel_reaches_the_upstream() {
    let addr = start().await;
    let client = connect(addr).await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014");
}

#[tokio::test]
async fn shutdown_lets_running_statements_finish_then_ends_sessions_with_57p01() {
    let listener = bind().await;
    let addr = listener.local_addr();
    let shutdown = listener.shutdown_handle();
    let running = tokio::spawn(listener.run());
    let idle = connect(addr).await;
    let busy = connect(addr).await;
    let slow =
        tokio::spawn(async move { busy.query_one("select pg_sleep(0.5)::text, 42", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.trigger();
    // The statement in flight completes...
    let row = slow.await.unwrap().unwrap();
    assert_eq!(row.get::<_, i32>(1), 42);
    // ...the listener returns once sessions have ended, well before the drain timeout...
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    // ...the idle session was told why, and new connections are refused.
    assert!(idle.is_closed() || idle.simple_query("select 1").await.is_err());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn many_denials_in_one_pipeline_each_get_their_own_error() {
    let addr = start().await;
    let client = connect(addr).await;
    // Twelve denials and twelve allowed statements interleaved in one pipeline: denial 1 must not be
    // confused with denial 10, 11 or 12.
    let mut queries = Vec::new();
    for i in 0..24i32 {
        let sql = if i % 2 == 0 {
            format!("select 'forbidden {i}'::text")
        } else {
            format!("select '{i}'::text")
        };
        queries.push(sql);
    }
    let results =
        futures_util::future::join_all(queries.iter().map(|q| client.query_one(q.as_str(), &[])))
            .await;
    for (i, r) in results.into_iter().enumerate() {
        if i % 2 == 0 {
            let err = r.expect_err("denied");
            let db = err.as_db_error().expect("server error");
            assert_eq!(db.code().code(), "42501", "statement {i}");
            assert!(
                !db.message().contains("PORTCULLIS_DENIED"),
                "{}",
                db.message()
            );
        } else {
            assert_eq!(r.expect("allowed").get::<_, String>(0), i.to_string());
        }
    }
}

/// Sessions on worker threads: each connection goes to the least busy worker and is counted
/// there while it lives; a cancel sent on another connection (another worker) reaches it; a
/// shutdown drains the sessions on the workers as it does on the listener's own runtime.
#[tokio::test]
async fn sessions_on_workers_are_spread_cancelled_and_drained() {
    let workers = gateway_core::Workers::start(2, "relay-test-worker").unwrap();
    let listener = bind().await.with_workers(Arc::clone(&workers));
    let addr = listener.local_addr();
    let shutdown = listener.shutdown_handle();
    let running = tokio::spawn(listener.run());

    let mut clients = Vec::new();
    for i in 0..4 {
        let client = connect(addr).await;
        let row = client.query_one("select $1::int + 1", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        clients.push(client);
    }
    assert_eq!(workers.sessions(), [2, 2]);

    let token = clients[0].cancel_token();
    let sleeper = clients.remove(0);
    let sleeping = tokio::spawn(async move {
        let result = sleeper.simple_query("select pg_sleep(30)").await;
        (sleeper, result)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.unwrap();
    let (sleeper, result) = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        result.unwrap_err().as_db_error().unwrap().code().code(),
        "57014"
    );

    // A session that ends leaves its worker's count.
    drop(sleeper);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while workers.sessions().iter().sum::<usize>() != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            workers.sessions()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(workers.sessions(), [0, 0]);
    for client in &clients {
        assert!(client.is_closed() || client.simple_query("select 1").await.is_err());
    }
}
