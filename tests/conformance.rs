//! One conformance suite for every protocol: the scenarios that are not about one wire run against
//! both listeners of one gateway, each driven by its own real command-line client (psql for
//! PostgreSQL, the mariadb client for MySQL). A new protocol gets them by adding a [`Driver`]
//! variant: how to run statements as a user, and how its client shows each kind of refusal.
//!
//! Both listeners serve a target named `shop` (a fresh PostgreSQL database and a fresh MariaDB
//! database, each with the same `items` table) under one policy and one audit trail.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::mysql::{MysqlDb, POLICY};
use common::{run_with_input, run_with_timeout, toml_str, StaticUser, TestDb, CLIENT_TIMEOUT};
use identity::{MintKey, MintRequest};
use portcullis::config::Config;
use portcullis::server::{RunningServer, Server};
use serde_json::Value;
use tokio::io::AsyncReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// A protocol's client, as the scenarios drive it.
#[derive(Clone, Copy, Debug)]
enum Driver {
    Postgres,
    Mysql,
}

/// What a client run showed: its standard output, and each error it reported.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Driver {
    const ALL: [Driver; 2] = [Driver::Postgres, Driver::Mysql];

    fn protocol(self) -> &'static str {
        match self {
            Driver::Postgres => "postgres",
            Driver::Mysql => "mysql",
        }
    }

    /// How this client shows a policy denial.
    fn denied(self) -> &'static str {
        match self {
            Driver::Postgres => "ERROR:  42501",
            Driver::Mysql => "ERROR 1227 (42000)",
        }
    }

    /// How this client shows a refused login (bad credentials). psql prints no SQLSTATE for a
    /// failed connection; the message (checked too) tells the kinds apart.
    fn login_refused(self) -> &'static str {
        match self {
            Driver::Postgres => "FATAL:",
            Driver::Mysql => "ERROR 1045 (28000)",
        }
    }

    /// How this client shows an identity no access rule admits.
    fn no_access(self) -> &'static str {
        match self {
            Driver::Postgres => "FATAL:",
            Driver::Mysql => "ERROR 1044 (42000)",
        }
    }

    /// Runs `sql` (statements one per line) as `user` with `password` against target `shop`;
    /// every statement runs, errors are reported and the client goes on.
    async fn run(self, gw: &Gateway, user: &str, password: &str, sql: &str) -> Run {
        let mut cmd = match self {
            Driver::Postgres => {
                let mut c = Command::new("psql");
                c.args(["-X", "-A", "-t", "-q", "-v", "VERBOSITY=verbose"])
                    .arg(format!(
                        "host=127.0.0.1 port={} user={user} dbname=shop sslmode=disable",
                        gw.postgres.port()
                    ))
                    .env("PGPASSWORD", password)
                    .env("PGCONNECT_TIMEOUT", "10");
                c
            }
            Driver::Mysql => {
                let mut c = Command::new("mariadb");
                c.args([
                    "--no-defaults",
                    "--protocol=TCP",
                    "--batch",
                    "--skip-column-names",
                    "--force",
                    "--connect-timeout=10",
                    "--show-warnings=0",
                    "-h127.0.0.1",
                ])
                .arg(format!("-P{}", gw.mysql.port()))
                .arg(format!("-u{user}"))
                .arg(format!("-p{password}"))
                .arg("-Dshop");
                c
            }
        };
        cmd.env_remove("PGSERVICE");
        let input = sql.as_bytes().to_vec();
        let out: Output =
            tokio::task::spawn_blocking(move || run_with_input(cmd, Some(input), CLIENT_TIMEOUT))
                .await
                .expect("client runner");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        Run {
            // psql and the mariadb client with --force exit 0 after statement errors: an error
            // is any error line.
            ok: out.status.success() && !stderr.contains("ERROR") && !stderr.contains("FATAL"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        }
    }
}

/// One gateway with both listeners in front of a fresh database on each server.
struct Gateway {
    server: Option<RunningServer>,
    postgres: SocketAddr,
    mysql: SocketAddr,
    secret: String,
    dir: tempfile::TempDir,
    _pg: TestDb,
    _my: MysqlDb,
}

impl Gateway {
    async fn start() -> Gateway {
        let pg = TestDb::create().await;
        pg.connect_direct()
            .await
            .batch_execute(
                "CREATE TABLE items (id int PRIMARY KEY, label text);
                 INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');",
            )
            .await
            .expect("seed PostgreSQL");
        let my = MysqlDb::create();
        my.direct(
            "CREATE TABLE items (id INT PRIMARY KEY, label TEXT);
             INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = format!("test-secret-{:032x}", rand::random::<u128>());
        let carol = StaticUser {
            name: "carol".into(),
            password: "carol's long password".into(),
            groups: vec!["engineering".into()],
        };
        let hash = identity::hash_password(&carol.password).expect("hash");
        let text = format!(
            r#"[gateway]
node = "conformance"
handshake_timeout = "{handshake}s"
max_message_bytes = {MAX_MESSAGE_BYTES}

[postgres]
listen = "127.0.0.1:0"

[mysql]
listen = "127.0.0.1:0"

[identity.jwt]
audience = ["portcullis"]
algorithms = ["HS256"]
hs256_secret = {secret}

[[identity.users]]
name = "carol"
password_hash = {hash}
groups = ["engineering"]

[[targets]]
name = "shop"
protocol = "postgres"
host = "127.0.0.1"
port = 5432
database = "{pg}"
user = "postgres"
tls = "disable"

[[targets]]
name = "shop"
protocol = "mysql"
host = "127.0.0.1"
port = 3306
database = "{my}"
user = "root"
{POLICY}"#,
            handshake = HANDSHAKE_TIMEOUT.as_secs(),
            secret = toml_str(&secret),
            hash = toml_str(&hash),
            pg = pg.name,
            my = my.name,
        );
        let origin = dir.path().join("portcullis.toml");
        std::fs::write(&origin, &text).expect("write config");
        let config = Config::from_toml_str(&text, &origin)
            .unwrap_or_else(|e| panic!("configuration refused:\n{e}\n{text}"));
        let server = Server::start(config).await.expect("gateway starts");
        Gateway {
            postgres: server.postgres_addr().expect("postgres listener"),
            mysql: server.mysql_addr().expect("mysql listener"),
            server: Some(server),
            secret,
            dir,
            _pg: pg,
            _my: my,
        }
    }

    fn token(&self, subject: &str, groups: &[&str]) -> String {
        let mut req = MintRequest::new(
            MintKey::Hs256(self.secret.clone()),
            subject,
            Duration::from_secs(600),
        );
        req.audience = Some("portcullis".into());
        req.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        identity::mint_token(&req).expect("mint")
    }

    fn addr(&self, driver: Driver) -> SocketAddr {
        match driver {
            Driver::Postgres => self.postgres,
            Driver::Mysql => self.mysql,
        }
    }

    /// Stops the gateway; the directory with its configuration and trail stays.
    async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.dir
    }
}

#[tokio::test]
async fn every_protocol_passes_the_same_scenarios() {
    let gw = Gateway::start().await;
    let alice = gw.token("alice", &["engineering"]);
    let ann = gw.token("ann", &["analyst"]);
    let nobody = gw.token("nobody", &["visitors"]);
    for driver in Driver::ALL {
        let what = |s: &str| format!("{driver:?}: {s}");

        // Login by token, and by a static user's password.
        let run = driver
            .run(&gw, "alice", &alice, "SELECT count(*) FROM items;\n")
            .await;
        assert!(run.ok, "{} {run:?}", what("token login"));
        assert_eq!(run.stdout.trim(), "3", "{}", what("token login"));
        let run = driver
            .run(&gw, "carol", "carol's long password", "SELECT 40 + 2;\n")
            .await;
        assert!(run.ok, "{} {run:?}", what("static user"));
        assert_eq!(run.stdout.trim(), "42");

        // A bad token and a wrong password are refused with the protocol's own code.
        let run = driver
            .run(&gw, "alice", &format!("{alice}x"), "SELECT 1;\n")
            .await;
        assert!(
            run.stderr.contains(driver.login_refused())
                && run.stderr.contains("token signature invalid"),
            "{} {run:?}",
            what("bad token")
        );
        let run = driver.run(&gw, "carol", "wrong", "SELECT 1;\n").await;
        assert!(
            run.stderr.contains(driver.login_refused())
                && run.stderr.contains("unknown user or wrong password"),
            "{} {run:?}",
            what("wrong password")
        );

        // Access by group: no access rule admits `visitors`.
        let run = driver.run(&gw, "nobody", &nobody, "SELECT 1;\n").await;
        assert!(
            run.stderr.contains(driver.no_access()) && run.stderr.contains("no access rule"),
            "{} {run:?}",
            what("no access")
        );

        // Read-only: reads run, writes are denied naming the fence.
        let run = driver
            .run(
                &gw,
                "ann",
                &ann,
                "INSERT INTO items VALUES (9, 'nine');\nSELECT count(*) FROM items;\n",
            )
            .await;
        assert!(
            run.stderr.contains(driver.denied()) && run.stderr.contains("builtin:read-only"),
            "{} {run:?}",
            what("read-only write")
        );
        assert_eq!(run.stdout.trim(), "3", "{}", what("read after the denial"));

        // A denial names its rule, and the session goes on.
        let run = driver
            .run(
                &gw,
                "alice",
                &alice,
                "DELETE FROM items;\nSELECT label FROM items WHERE id = 2;\n",
            )
            .await;
        assert!(
            run.stderr.contains(driver.denied()) && run.stderr.contains("no-unbounded-writes"),
            "{} {run:?}",
            what("denial")
        );
        assert_eq!(run.stdout.trim(), "two", "{}", what("after the denial"));

        // An oversized message: refused with an error, and the listener serves the next client.
        let big = format!("SELECT '{}';\n", "x".repeat(MAX_MESSAGE_BYTES * 2));
        let run = driver.run(&gw, "alice", &alice, &big).await;
        assert!(!run.ok, "{} {run:?}", what("oversized message"));
        assert!(
            !run.stdout.contains("xxxx"),
            "{}",
            what("oversized message")
        );
        let run = driver.run(&gw, "alice", &alice, "SELECT 1;\n").await;
        assert!(run.ok, "{} {run:?}", what("after an oversized message"));

        // A handshake that never ends is closed at the handshake deadline.
        let started = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(gw.addr(driver))
            .await
            .expect("connect");
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT * 5, tcp.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "{}", what("stalled handshake left open"));
        assert!(
            started.elapsed() >= HANDSHAKE_TIMEOUT / 2,
            "{}",
            what("closed before the deadline")
        );
    }

    // One audit trail for both: sessions by protocol, statements, denials with their rules.
    let trail = common::default_trail_until(gw.dir.path(), "both protocols' denials", |t| {
        Driver::ALL.iter().all(|d| {
            t.iter().any(|r| {
                r["event"] == "statement_denied"
                    && r["verdict"]["rule"] == "no-unbounded-writes"
                    && r["client"]["protocol"] == d.protocol()
            })
        })
    })
    .await;
    for driver in Driver::ALL {
        let of = |event: &str| {
            trail
                .iter()
                .filter(|r| r["event"] == event && r["client"]["protocol"] == driver.protocol())
                .count()
        };
        assert!(of("session_opened") >= 5, "{driver:?}: {trail:#?}");
        assert!(of("login_failed") >= 3, "{driver:?}: {trail:#?}");
        let started: Vec<&Value> = trail
            .iter()
            .filter(|r| r["event"] == "statement_started" || r["event"] == "statement_executed")
            .filter(|r| r["client"]["protocol"] == driver.protocol())
            .collect();
        assert!(
            started.iter().any(|r| r["sql"]
                .as_str()
                .is_some_and(|s| s.contains("WHERE id = 2"))),
            "{driver:?}: {trail:#?}"
        );
    }
    let kept = gw.shutdown().await;
    let dir = kept.path().to_path_buf();

    // And the trail verifies end to end.
    let mut cmd = Command::new(BIN);
    cmd.args(["audit", "verify", "--config", "portcullis.toml"])
        .env_remove("PORTCULLIS_CONFIG")
        .current_dir(&dir);
    let out = tokio::task::spawn_blocking(move || run_with_timeout(cmd, Duration::from_secs(60)))
        .await
        .expect("cli runner");
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(kept);
}
