//! The embedding example (`examples/embedded.rs`), run for real: this file includes it, builds the
//! gateway it builds from the command line it would be given, serves it on port 0 in front of the
//! local PostgreSQL, and drives it with tokio-postgres, with and without the example's policy file.

#[allow(dead_code)] // `main` and the signal handling are the example's own.
#[path = "../examples/embedded.rs"]
mod embedded;

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use common::TestDb;
use identity::{MintKey, MintRequest};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

const SECRET: &str = "embedded-example-test-secret-0123456789";

/// The example serving `db` with the given extra flags, and what stops it.
struct Served {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn serve(db: &TestDb, extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut argv = vec![
        "embedded",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &db.name,
        "--jwt-secret-file",
        secret_file.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    let args = embedded::Args::try_parse_from(argv).unwrap();
    let gateway = embedded::build_gateway(&args).unwrap();
    let listener = embedded::bind(&args, gateway).await.unwrap();
    let addr = listener.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(embedded::serve(listener, async {
        let _ = stopped.await;
    }));
    Served {
        addr,
        stop,
        task,
        _dir: dir,
    }
}

/// A token the example accepts (its default issuer and audience).
fn token(subject: &str, groups: &[&str]) -> String {
    let mut req = MintRequest::new(
        MintKey::Hs256(SECRET.into()),
        subject,
        Duration::from_secs(600),
    );
    req.issuer = Some("portcullis-dev".into());
    req.audience = Some("portcullis".into());
    req.groups = groups.iter().map(|g| g.to_string()).collect();
    identity::mint_token(&req).unwrap()
}

async fn connect(
    addr: SocketAddr,
    db: &TestDb,
    subject: &str,
    groups: &[&str],
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(addr.port())
        .user(subject)
        .password(token(subject, groups))
        .dbname(&db.name)
        .connect_timeout(Duration::from_secs(10))
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_example_serves_queries_and_drains_on_stop() {
    let db = TestDb::create().await;
    let served = serve(&db, &[]).await;
    let client = connect(served.addr, &db, "alice", &[]).await.unwrap();

    // Extended protocol through the gateway, to the target's database, carrying the identity.
    let row = client
        .query_one(
            "select current_database(), current_setting('application_name'), $1::int + 1",
            &[&41i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), db.name);
    assert_eq!(row.get::<_, &str>(1), "portcullis:alice");
    assert_eq!(row.get::<_, i32>(2), 42);
    // Allow-all: writes pass too.
    client
        .batch_execute("create table t (x int); insert into t values (1), (2); delete from t")
        .await
        .unwrap();

    // A token signed with another key is refused.
    let mut forged = MintRequest::new(
        MintKey::Hs256("another-secret-that-is-also-32-bytes-long".into()),
        "mallory",
        Duration::from_secs(600),
    );
    forged.issuer = Some("portcullis-dev".into());
    forged.audience = Some("portcullis".into());
    let e = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(served.addr.port())
        .user("mallory")
        .password(identity::mint_token(&forged).unwrap())
        .dbname(&db.name)
        .connect(NoTls)
        .await
        .err()
        .expect("a token signed with another key logged in");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("28P01"),
        "{e:?}"
    );

    // Stop (what Ctrl-C or SIGTERM does in the example): the idle session is ended and `serve`
    // returns.
    served.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), served.task)
        .await
        .expect("serve did not return after the stop")
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session outlived the shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tokio::net::TcpStream::connect(served.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_example_enforces_its_policy_file() {
    let db = TestDb::create().await;
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/embedded-policy.toml");
    let served = serve(&db, &["--policy", policy.to_str().unwrap()]).await;

    let engineer = connect(served.addr, &db, "erin", &["engineer"])
        .await
        .unwrap();
    engineer
        .batch_execute("create table t (x int); insert into t values (1), (2)")
        .await
        .unwrap();
    let e = engineer.batch_execute("delete from t").await.unwrap_err();
    let e = e.as_db_error().expect("a database error");
    assert_eq!(e.code().code(), "42501", "{e:?}");
    assert!(e.message().contains("no-unfiltered-writes"), "{e:?}");
    engineer
        .batch_execute("delete from t where x = 1")
        .await
        .unwrap();

    let analyst = connect(served.addr, &db, "ann", &["analyst"])
        .await
        .unwrap();
    let n: i64 = analyst
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let e = analyst
        .batch_execute("insert into t values (3)")
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("42501"),
        "{e:?}"
    );

    // No access rule admits an identity without a group: the login is refused.
    let e = connect(served.addr, &db, "nobody", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("28000"),
        "{e:?}"
    );

    served.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), served.task)
        .await
        .expect("serve did not return after the stop")
        .unwrap();
}
