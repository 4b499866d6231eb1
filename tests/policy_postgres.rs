//! The policy end to end through the PostgreSQL path: a gateway started in-process on port 0 with
//! a `[policy]` section, in front of a database of its own, driven by tokio-postgres (simple and
//! extended protocol) and psql (the psql on this machine predates `\bind`, so its extended protocol
//! is covered by tokio-postgres); the `policy explain` command and SIGHUP against the built binary.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_with_timeout, toml_str, TestDb, AUDIENCE, ISSUER, UPSTREAM_HOST, UPSTREAM_PORT};
use identity::{MintKey, MintRequest};
use portcullis::{Config, RunningServer, Server};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const RULES: &str = r#"
[policy]
[[policy.access]]
name = "analysts-read"
groups = ["analyst"]
mode = "read-only"

[[policy.access]]
name = "engineers"
groups = ["engineering"]
mode = "read-write"

[[policy.rules]]
name = "no-drop-in-prod"
action = "deny"
kinds = ["drop", "truncate"]
labels = { env = "prod" }
message = "Dropping tables in production is not allowed"

[[policy.rules]]
name = "no-unfiltered-delete"
action = "deny"
kinds = ["delete", "update"]
filter = "missing"
message = "DELETE and UPDATE need a WHERE clause"
"#;

/// A gateway with a policy in front of its own database. Field order is drop order.
struct PolicyGateway {
    server: Option<RunningServer>,
    db: TestDb,
    secret: String,
    config_path: PathBuf,
    /// Everything but `[policy]`.
    base: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PolicyGateway {
    async fn start() -> PolicyGateway {
        Self::start_with(RULES).await
    }

    /// A gateway whose `[policy]` is `rules`.
    async fn start_with(rules: &str) -> PolicyGateway {
        let db = TestDb::create().await;
        let setup = db.connect_direct().await;
        setup
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, note text);
                 INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5) g;
                 CREATE FUNCTION my_writing_function() RETURNS int LANGUAGE sql
                   AS 'INSERT INTO t VALUES (100, ''hidden'') RETURNING 1';",
            )
            .await
            .expect("set up the test table");
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = format!("policy-test-secret-{:032x}", rand::random::<u128>());
        let base = base_config(&db.name, "127.0.0.1:0", &secret);
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, format!("{base}{rules}")).expect("write config");
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("config refused:\n{e}"));
        let server = Server::start(config)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e:#}"));
        let port = server.postgres_addr().expect("listener").port();
        PolicyGateway {
            server: Some(server),
            db,
            secret,
            config_path,
            base,
            port,
            _dir: dir,
        }
    }

    fn token(&self, subject: &str, groups: &[&str]) -> String {
        token(&self.secret, subject, groups)
    }

    async fn connect(&self, subject: &str, groups: &[&str]) -> Client {
        connect(self.port, &self.db.name, &self.token(subject, groups)).await
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    /// Rewrites the configuration file with `rules` as its `[policy]`.
    fn write_policy(&self, rules: &str) {
        std::fs::write(&self.config_path, format!("{}{rules}", self.base)).expect("rewrite config");
    }

    async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

fn base_config(database: &str, listen: &str, secret: &str) -> String {
    format!(
        "[gateway]\nnode = \"policy-test\"\nhandshake_timeout = \"5s\"\n\n[postgres]\nlisten = {}\n\n\
         [identity.jwt]\nissuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\"]\nalgorithms = [\"HS256\"]\nhs256_secret = {}\n\n\
         [[targets]]\nname = {db}\nhost = \"{UPSTREAM_HOST}\"\nport = {UPSTREAM_PORT}\ndatabase = {db}\nuser = \"postgres\"\nlabels = {{ env = \"prod\" }}\n",
        toml_str(listen),
        toml_str(secret),
        db = toml_str(database),
    )
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

async fn connect(port: u16, database: &str, token: &str) -> Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("someone")
        .password(token)
        .dbname(database)
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through the gateway: {e:?}"));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("gateway connection ended: {e}");
        }
    });
    client
}

/// The SQLSTATE and message of a failed statement.
fn db_error(e: &tokio_postgres::Error) -> (SqlState, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an error from the server side, got {e:?}"));
    (db.code().clone(), db.message().to_owned())
}

fn assert_denied(
    result: Result<impl std::fmt::Debug, tokio_postgres::Error>,
    rule: &str,
    reason: &str,
) {
    let e = match result {
        Ok(v) => panic!("expected a denial by {rule}, the statement ran: {v:?}"),
        Err(e) => e,
    };
    let (code, message) = db_error(&e);
    assert_eq!(code, SqlState::INSUFFICIENT_PRIVILEGE, "{message}");
    assert!(
        message.contains(&format!("\"{rule}\"")),
        "the message must name the rule {rule}: {message}"
    );
    assert!(
        message.contains(reason),
        "the message must give the reason {reason:?}: {message}"
    );
}

async fn table_exists(db: &TestDb) -> bool {
    let direct = db.connect_direct().await;
    let row = direct
        .query_one("SELECT to_regclass('public.t') IS NOT NULL", &[])
        .await
        .expect("check table");
    row.get(0)
}

async fn count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count rows")
        .get(0)
}

#[tokio::test]
async fn denied_drop_names_the_rule_and_the_table_survives() {
    let gw = PolicyGateway::start().await;
    let c = gw.connect("dan", &["engineering"]).await;

    // Simple protocol.
    assert_denied(
        c.simple_query("DROP TABLE t").await,
        "no-drop-in-prod",
        "Dropping tables in production is not allowed",
    );
    assert!(
        table_exists(&gw.db).await,
        "nothing of a denied statement reaches the database"
    );
    assert_eq!(
        count(&c).await,
        5,
        "the session stays usable after a denial"
    );
    // Extended protocol: the denial skips to Sync and the next statement runs.
    assert_denied(
        c.query("DROP TABLE t", &[]).await,
        "no-drop-in-prod",
        "Dropping tables",
    );
    assert_denied(
        c.prepare("TRUNCATE t").await,
        "no-drop-in-prod",
        "Dropping tables",
    );
    let rows = c
        .query("SELECT note FROM t WHERE id = $1", &[&2i32])
        .await
        .expect("allowed query");
    assert_eq!(rows[0].get::<_, String>(0), "row 2");
    assert!(table_exists(&gw.db).await);
    // Inside a transaction the denial fails the transaction, as PostgreSQL would.
    c.batch_execute("BEGIN").await.expect("begin");
    assert_denied(
        c.simple_query("DROP TABLE t").await,
        "no-drop-in-prod",
        "Dropping",
    );
    let e = c
        .simple_query("SELECT 1")
        .await
        .expect_err("the transaction is aborted");
    assert_eq!(db_error(&e).0, SqlState::IN_FAILED_SQL_TRANSACTION);
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(count(&c).await, 5);
    gw.shutdown().await;
}

#[tokio::test]
async fn delete_without_where_is_denied_and_with_where_runs() {
    let gw = PolicyGateway::start().await;
    let c = gw.connect("dan", &["engineering"]).await;
    assert_denied(
        c.execute("DELETE FROM t", &[]).await,
        "no-unfiltered-delete",
        "need a WHERE clause",
    );
    assert_denied(
        c.simple_query("DELETE FROM t WHERE 1 = 1").await,
        "no-unfiltered-delete",
        "need a WHERE clause",
    );
    assert_denied(
        c.execute("UPDATE t SET note = 'x' WHERE true", &[]).await,
        "no-unfiltered-delete",
        "WHERE",
    );
    assert_eq!(count(&c).await, 5);
    assert_eq!(
        c.execute("DELETE FROM t WHERE id = $1", &[&1i32])
            .await
            .expect("a real WHERE"),
        1
    );
    assert_eq!(count(&c).await, 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn multi_statement_smuggling_is_denied_whole() {
    let gw = PolicyGateway::start().await;
    let c = gw.connect("dan", &["engineering"]).await;
    assert_denied(
        c.simple_query("select 1; drop table t").await,
        "no-drop-in-prod",
        "statement 2 of 2",
    );
    assert_denied(
        c.simple_query("insert into t values (99, 'smuggled'); /* x */ DROP/**/TABLE t")
            .await,
        "no-drop-in-prod",
        "Dropping",
    );
    assert!(table_exists(&gw.db).await);
    let direct = gw.db.connect_direct().await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE id = 99", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 0,
        "no statement of a denied text runs, not even the allowed first one"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn read_only_identities_are_fenced_twice() {
    let gw = PolicyGateway::start().await;
    let c = gw.connect("ann", &["analyst"]).await;
    // The policy fence.
    assert_denied(
        c.simple_query("INSERT INTO t VALUES (50, 'x')").await,
        "builtin:read-only",
        "read-only",
    );
    assert_denied(
        c.query("INSERT INTO t VALUES (50, 'x')", &[]).await,
        "builtin:read-only",
        "write:insert",
    );
    assert_denied(
        c.simple_query("BEGIN READ WRITE").await,
        "builtin:read-only",
        "READ WRITE",
    );
    assert_denied(
        c.simple_query("SET default_transaction_read_only = off")
            .await,
        "builtin:read-only",
        "read-only",
    );
    assert_denied(
        c.simple_query("SELECT set_config('default_transaction_read_only', 'off', false)")
            .await,
        "builtin:session-fence",
        "set_config",
    );
    assert_eq!(count(&c).await, 5);
    // The upstream fence: a write the analysis cannot see (inside a function) passes the policy
    // and is refused by the read-only transaction the upstream session runs in.
    for extended in [false, true] {
        let result = if extended {
            c.query("SELECT my_writing_function()", &[])
                .await
                .map(|_| ())
        } else {
            c.simple_query("SELECT my_writing_function()")
                .await
                .map(|_| ())
        };
        let e = result.expect_err("the upstream refuses the hidden write");
        assert_eq!(db_error(&e).0, SqlState::READ_ONLY_SQL_TRANSACTION, "{e:?}");
    }
    let ro: String = c
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    assert_eq!(
        count(&c).await,
        5,
        "the session stays usable, nothing was written"
    );
    // The same function runs for a read-write identity.
    let w = gw.connect("dan", &["engineering"]).await;
    w.query("SELECT my_writing_function()", &[])
        .await
        .expect("read-write identity");
    assert_eq!(count(&w).await, 6);
    gw.shutdown().await;
}

#[tokio::test]
async fn identities_without_an_access_rule_are_refused() {
    let gw = PolicyGateway::start().await;
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(gw.port)
        .user("x")
        .password(gw.token("zed", &["visitors"]))
        .dbname(&gw.db.name);
    let e = config
        .connect(NoTls)
        .await
        .err()
        .expect("no access rule admits visitors");
    let (code, message) = db_error(&e);
    assert_eq!(
        code,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "{message}"
    );
    assert!(message.contains("no access rule admits"), "{message}");
    gw.shutdown().await;
}

#[tokio::test]
async fn psql_sees_denials_and_keeps_going() {
    let gw = PolicyGateway::start().await;
    let script = gw._dir.path().join("script.sql");
    std::fs::write(
        &script,
        "DROP TABLE t;\nSELECT 'after-drop' AS marker;\nDELETE FROM t;\nSELECT 'after-delete' AS marker;\n",
    )
    .unwrap();
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-w", "-v", "ON_ERROR_STOP=0", "-f"])
        .arg(&script);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", gw.port.to_string())
        .env("PGDATABASE", &gw.db.name)
        .env("PGUSER", "dan")
        .env("PGPASSWORD", gw.token("dan", &["engineering"]));
    let out = tokio::task::spawn_blocking(move || run_with_timeout(cmd, Duration::from_secs(60)))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Dropping tables in production is not allowed (rule \"no-drop-in-prod\")"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DELETE and UPDATE need a WHERE clause (rule \"no-unfiltered-delete\")"),
        "{stderr}"
    );
    assert!(
        stdout.contains("after-drop") && stdout.contains("after-delete"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(table_exists(&gw.db).await);
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_applies_to_open_sessions_and_keeps_the_policy_on_errors() {
    let gw = PolicyGateway::start().await;
    let c = gw.connect("dan", &["engineering"]).await;
    assert_eq!(count(&c).await, 5);

    let stricter = format!(
        "{RULES}\n[[policy.rules]]\nname = \"t-is-closed\"\naction = \"deny\"\nreads = [\"t\"]\nmessage = \"t is closed for maintenance\"\n"
    );
    gw.write_policy(&stricter);
    gw.server().reload().expect("the new policy is valid");
    assert_denied(
        c.query("SELECT count(*) FROM t", &[]).await,
        "t-is-closed",
        "closed for maintenance",
    );
    c.simple_query("SELECT 1")
        .await
        .expect("other statements still run");

    // An invalid file is refused with its location; the running policy stays.
    gw.write_policy(&format!(
        "{stricter}\n[[policy.rules]]\nname = \"broken\"\naction = \"forbid\"\n"
    ));
    let errors = gw.server().reload().expect_err("invalid file");
    let text = errors.to_string();
    assert!(
        text.contains(":10: `action`: unknown value `forbid`"),
        "{text}"
    );
    assert!(
        errors.errors().iter().all(|e| e.location.is_some()),
        "{text}"
    );
    assert_denied(
        c.simple_query("SELECT * FROM t").await,
        "t-is-closed",
        "closed",
    );
    c.simple_query("SELECT 1")
        .await
        .expect("the session survives a failed reload");

    // The file watcher picks up a change without being asked.
    gw.write_policy(RULES);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.query("SELECT count(*) FROM t", &[]).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(db_error(&e).0, SqlState::INSUFFICIENT_PRIVILEGE);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the watcher did not reload the relaxed policy: {e:?}"),
        }
    }
    assert_eq!(count(&c).await, 5);
    gw.shutdown().await;
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portcullis"))
}

#[tokio::test]
async fn policy_explain_prints_analysis_and_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "{}{RULES}",
            base_config(
                "appdb",
                "127.0.0.1:0",
                "explain-secret-0123456789abcdef0123456789"
            )
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(binary());
        cmd.args(["policy", "explain", "--config"])
            .arg(&config)
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(60))
    };

    let out = run(&[
        "--as",
        "dan",
        "--groups",
        "engineering",
        "--target",
        "appdb",
        "select 1; drop table public.t",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a denial still exits 0: {out:?}");
    for expected in [
        "access:   read-write (rule \"engineers\")",
        "statement 1: read",
        "statement 2: ddl:drop",
        "  kinds:     drop, drop_table",
        "  writes:    public.t",
        "  verdict:   deny (rule \"no-drop-in-prod\"): Dropping tables in production is not allowed",
        "verdict:  deny (rule \"no-drop-in-prod\"): statement 2 of 2 (ddl:drop): Dropping tables",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }

    let out = run(&[
        "--as",
        "ann",
        "--groups",
        "analyst",
        "--target",
        "appdb",
        "--json",
        "delete from t where id = 1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["access"]["mode"], "read_only");
    assert_eq!(json["verdict"]["decision"], "deny");
    assert_eq!(json["verdict"]["rule"], "builtin:read-only");
    assert_eq!(json["statements"][0]["facts"]["filter"], "present");

    let out = run(&["--as", "zed", "--target", "appdb", "selec 1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("access:   refused") && stdout.contains("parse:    failed: syntax error"),
        "{stdout}"
    );

    let out = run(&["--as", "dan", "--target", "nope", "select 1"]);
    assert_eq!(out.status.code(), Some(1), "unknown target: {out:?}");
    std::fs::write(&config, "[policy]\nunparsable = \"perhaps\"\n").unwrap();
    let out = run(&["--as", "dan", "--target", "appdb", "select 1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gw.toml:2:14: `unparsable`"),
        "{out:?}"
    );
}

/// The built binary reloads on SIGHUP (the in-process server has no signal handler: `main.rs`
/// installs it).
#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let db = TestDb::create().await;
    db.connect_direct()
        .await
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("sighup-secret-{:032x}", rand::random::<u128>());
    let base = base_config(&db.name, "127.0.0.1:0", &secret);
    let config = dir.path().join("gw.toml");
    std::fs::write(&config, format!("{base}{RULES}")).unwrap();

    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines_rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("the gateway never logged {needle:?}");
    };
    let ready = wait_for("PostgreSQL listener ready");
    let port: u16 = ready
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {ready:?}"));

    let c = connect(port, &db.name, &token(&secret, "dan", &["engineering"])).await;
    c.simple_query("SELECT * FROM t")
        .await
        .expect("allowed before the reload");
    std::fs::write(
        &config,
        format!("{base}{RULES}\n[[policy.rules]]\nname = \"t-is-closed\"\naction = \"deny\"\nreads = [\"t\"]\n"),
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    wait_for("SIGHUP: reloading the configuration");
    wait_for("policy reloaded");
    assert_denied(
        c.simple_query("SELECT * FROM t").await,
        "t-is-closed",
        "does not allow",
    );
    c.simple_query("SELECT 1")
        .await
        .expect("the session survives the reload");

    let _ = child.kill();
    let _ = child.wait();
    drop(db);
}

/// A policy whose only statement rule names writes to one table.
const DYNAMIC_RULES: &str = r#"
[policy]
[[policy.access]]
name = "engineers"
groups = ["engineering"]
mode = "read-write"

[[policy.access]]
name = "dbas"
groups = ["dba"]
mode = "read-write"

[[policy.rules]]
name = "t-is-loader-only"
action = "deny"
writes = ["t"]
message = "t is written by the loader only"

[[policy.rules]]
name = "dba-dynamic-sql"
action = "allow"
groups = ["dba"]
kinds = ["dynamic_sql"]
overrides = ["builtin:dynamic-sql"]
"#;

#[tokio::test]
async fn sql_built_at_run_time_meets_every_deny_rule() {
    let gw = PolicyGateway::start_with(DYNAMIC_RULES).await;
    let c = gw.connect("dan", &["engineering"]).await;
    let direct = gw.db.connect_direct().await;
    let note = |id: i32| {
        let direct = &direct;
        async move {
            direct
                .query_one("SELECT note FROM t WHERE id = $1", &[&id])
                .await
                .expect("read note")
                .get::<_, String>(0)
        }
    };

    // The string names no table the gateway can see, but it could be any statement: the rule on
    // writes to t applies, in the simple and the extended protocol.
    let hidden =
        "DO $$ BEGIN EXECUTE format('UPDATE %I SET note = %L WHERE id = 1', 't', 'hidden'); END $$";
    assert_denied(
        c.simple_query(hidden).await,
        "t-is-loader-only",
        "built at run time",
    );
    assert_denied(
        c.execute(hidden, &[]).await,
        "t-is-loader-only",
        "t is written by the loader only",
    );
    assert_eq!(note(1).await, "row 1", "nothing of the DO block ran");
    // The same in a function body: creating it is judged by what its body may do.
    assert_denied(
        c.simple_query(
            "CREATE FUNCTION sneaky() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN EXECUTE 'DELETE FROM t'; END $f$",
        )
        .await,
        "t-is-loader-only",
        "built at run time",
    );
    // PL/pgSQL without EXECUTE is read as written, and runs.
    c.simple_query("DO $$ BEGIN PERFORM count(*) FROM t; END $$")
        .await
        .expect("a static DO block that only reads runs");
    assert_eq!(count(&c).await, 5, "the session stays usable");

    // An identity allowed dynamic SQL explicitly runs it.
    let dba = gw.connect("dot", &["dba"]).await;
    dba.simple_query("DO $$ BEGIN EXECUTE 'UPDATE t SET note = ''dynamic'' WHERE id = 2'; END $$")
        .await
        .expect("dba-dynamic-sql lifts the could-be-anything reading");
    assert_eq!(note(2).await, "dynamic");
    gw.shutdown().await;
}

/// Statements PostgreSQL's grammar rejects, sent to the server directly and through the gateway:
/// the gateway stops them, and answers what the server answers.
#[tokio::test]
async fn syntax_errors_get_the_servers_own_answer() {
    let trail = tempfile::tempdir().expect("tempdir");
    let gw = PolicyGateway::start_with(&format!(
        "{RULES}\n[audit]\n[[audit.sinks]]\nkind = \"jsonl\"\ndir = {}\n",
        toml_str(&trail.path().to_string_lossy())
    ))
    .await;
    let c = gw.connect("dan", &["engineering"]).await;
    let direct = gw.db.connect_direct().await;
    // (statement, why)
    let cases = [
        ("selec 1", "a typo in the first keyword"),
        (
            "SELECT * FROM",
            "at end of input: the cursor is just past the text",
        ),
        (
            "select 1;\nselec 2",
            "the second line of a two-statement text",
        ),
        ("SELECT 'é€', )", "positions count characters, not bytes"),
        ("SELECT 'unterminated", "a lexer error"),
        ("SELECT (1", "an unclosed parenthesis"),
        ("DELETE FROM t WHERE", "nothing after WHERE"),
    ];
    for (sql, why) in cases {
        let server = direct.simple_query(sql).await.expect_err(why);
        let server = server.as_db_error().expect("a server error");
        for extended in [false, true] {
            let gateway = if extended {
                c.prepare(sql).await.map(|_| ()).expect_err(why)
            } else {
                c.simple_query(sql).await.map(|_| ()).expect_err(why)
            };
            let gateway = gateway
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql:?} ({why}): not an error response"));
            assert_eq!(gateway.code(), &SqlState::SYNTAX_ERROR, "{sql:?} ({why})");
            assert_eq!(gateway.message(), server.message(), "{sql:?} ({why})");
            assert_eq!(
                format!("{:?}", gateway.position()),
                format!("{:?}", server.position()),
                "{sql:?} ({why}): the error cursor"
            );
        }
    }
    // Nothing reached the database, and the session goes on.
    assert_eq!(count(&c).await, 5);
    // Inside a transaction the error aborts it, as the server's would.
    c.batch_execute("BEGIN").await.expect("begin");
    let e = c.simple_query("selec 1").await.expect_err("syntax error");
    assert_eq!(db_error(&e).0, SqlState::SYNTAX_ERROR);
    let e = c.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(db_error(&e).0, SqlState::IN_FAILED_SQL_TRANSACTION);
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(count(&c).await, 5);
    gw.shutdown().await;

    // Each refusal is on the record as a denial by the built-in rule, with the parser's words
    // and position.
    let sink = audit::open_sink(
        &audit::SinkConfig::Jsonl {
            dir: trail.path().to_path_buf(),
            max_file_bytes: 1 << 20,
        },
        audit::OpenMode::Read,
    )
    .await
    .expect("open the trail");
    let records = audit::search(sink.as_ref(), &audit::SearchFilter::default(), 100_000)
        .await
        .expect("read the trail");
    let denied: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r.event == "statement_denied")
        .map(|r| serde_json::from_slice(&r.payload).expect("JSON payload"))
        .filter(|p: &serde_json::Value| p["sql"] == "selec 1")
        .collect();
    // Simple and extended protocol, and once more inside the transaction.
    assert_eq!(denied.len(), 3, "{denied:#?}");
    for p in &denied {
        let verdict = &p["verdict"];
        assert_eq!(verdict["decision"], "deny", "{p:#}");
        assert_eq!(verdict["rule"], "builtin:syntax-error", "{p:#}");
        assert_eq!(
            verdict["reason"], "syntax error at or near \"selec\"",
            "{p:#}"
        );
        assert_eq!(verdict["syntax_error"]["position"], 1, "{p:#}");
    }
}

#[tokio::test]
async fn psql_points_at_the_syntax_error() {
    let gw = PolicyGateway::start().await;
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-w",
        "-v",
        "ON_ERROR_STOP=0",
        "-c",
        "selec 1",
        "-c",
        "SELECT 'still here' AS marker",
    ]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", gw.port.to_string())
        .env("PGDATABASE", &gw.db.name)
        .env("PGUSER", "dan")
        .env("PGPASSWORD", gw.token("dan", &["engineering"]));
    let out = tokio::task::spawn_blocking(move || run_with_timeout(cmd, Duration::from_secs(60)))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // psql draws the excerpt and caret only from the error's position field.
    assert!(
        stderr.contains("ERROR:  syntax error at or near \"selec\"\nLINE 1: selec 1\n        ^"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("rule"),
        "the server's wording, not a policy error: {stderr}"
    );
    assert!(
        stdout.contains("still here"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    gw.shutdown().await;
}
