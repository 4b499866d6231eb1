//! The audit trail end to end, against the local PostgreSQL (127.0.0.1:5432, trust, user
//! `postgres`), each test in its own database and scratch directory: what a session leaves in the
//! trail (and what it must not), `portcullis audit verify` on a clean and an edited trail, the
//! gateway binary killed with SIGKILL under load in sync durability, fail closed when the JSONL
//! sink's directory goes away, fail open counting the records it drops in `/metrics`, and verify
//! across a rotation of the signing key.
//!
//! The tamper test edits the SQLite trail with the `sqlite3` command-line shell.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_with_timeout, sqlstate, toml_str, TestDb};
use identity::{MintKey, MintRequest};
use portcullis::{Config, Server};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

/// The gateway binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Audience the test gateways require.
const AUDIENCE: &str = "portcullis";

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

/// One test's world: a database, a scratch directory holding the gateway configuration (and, by
/// default, the trail in `data/`), and the HS256 secret tokens are signed with.
struct Setup {
    dir: tempfile::TempDir,
    secret: String,
    config: PathBuf,
    // Last: the database is dropped after everything else.
    db: TestDb,
}

impl Setup {
    /// Writes `portcullis.toml` for gateway node `node`: a listener on port 0, JWT HS256, the
    /// test database as target, a policy that admits everyone read-write and denies DROP (rule
    /// `no-drop`), and `audit` appended verbatim (empty: the default trail, the segment log
    /// `<dir>/data/audit` with its SQLite index `<dir>/data/audit.db`, written durability, signed
    /// with the key generated in `<dir>/data`).
    async fn new(node: &str, audit: &str) -> Setup {
        let db = TestDb::create().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = format!("audit-test-secret-{:032x}", rand::random::<u128>());
        let text = format!(
            r#"[gateway]
node = "{node}"
log_level = "info"

[postgres]
listen = "127.0.0.1:0"

[identity.jwt]
audience = ["{AUDIENCE}"]
algorithms = ["HS256"]
hs256_secret = {secret}

[[targets]]
name = "{db}"
host = "127.0.0.1"
port = 5432
user = "postgres"

[policy]
[[policy.access]]
name = "everyone"
groups = ["*"]
mode = "read-write"

[[policy.rules]]
name = "no-drop"
action = "deny"
kinds = ["drop"]
message = "tables are not dropped through the gateway"

{audit}
"#,
            secret = toml_str(&secret),
            db = db.name,
        );
        let config = dir.path().join("portcullis.toml");
        std::fs::write(&config, text).expect("write config");
        Setup {
            dir,
            secret,
            config,
            db,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The default trail's primary: the segment log.
    fn log_trail(&self) -> audit::SinkConfig {
        audit::SinkConfig::Jsonl {
            dir: self.path("data/audit"),
            max_file_bytes: u64::MAX,
        }
    }

    /// The default trail's SQLite index.
    fn sqlite_trail(&self) -> audit::SinkConfig {
        audit::SinkConfig::Sqlite {
            path: self.path("data/audit.db"),
        }
    }

    /// Starts the gateway in-process.
    async fn start_in_process(&self) -> (portcullis::RunningServer, SocketAddr) {
        let config = Config::load(&self.config)
            .unwrap_or_else(|e| panic!("the test configuration was refused:\n{e}"));
        let server = Server::start(config)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e:#}"));
        let addr = server.postgres_addr().expect("a PostgreSQL listener");
        (server, addr)
    }

    /// A token for `subject` signed with this gateway's secret, valid 10 minutes.
    fn token(&self, subject: &str) -> String {
        token_signed_with(&self.secret, subject)
    }

    /// Connects through the gateway at `addr` as `user` with `password`.
    async fn connect(
        &self,
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(addr.port())
            .user(user)
            .password(password)
            .dbname(&self.db.name)
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs `portcullis audit ARGS`.
    async fn audit_cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("audit")
            .args(args)
            .env_remove("PORTCULLIS_CONFIG")
            .current_dir(self.dir.path());
        tokio::task::spawn_blocking(move || run_with_timeout(cmd, Duration::from_secs(60)))
            .await
            .expect("cli runner")
    }
}

fn token_signed_with(secret: &str, subject: &str) -> String {
    let mut request = MintRequest::new(
        MintKey::Hs256(secret.to_owned()),
        subject,
        Duration::from_secs(600),
    );
    request.audience = Some(AUDIENCE.into());
    request.groups = vec!["engineering".into()];
    identity::mint_token(&request).expect("mint token")
}

/// Every record of a sink, in chain order, with its payload parsed.
async fn read_trail(sink: &audit::SinkConfig) -> Vec<(audit::StoredRecord, Value)> {
    let sink = audit::open_sink(sink, audit::OpenMode::Read)
        .await
        .expect("open the trail");
    let mut records = audit::search(sink.as_ref(), &audit::SearchFilter::default(), 10_000_000)
        .await
        .expect("read the trail");
    records.sort_by_key(|r| (r.node.clone(), r.seq));
    records
        .into_iter()
        .map(|r| {
            let payload = serde_json::from_slice(&r.payload).expect("payloads are JSON");
            (r, payload)
        })
        .collect()
}

/// `(session_id, statement_id)` of a statement event.
fn statement_key(payload: &Value) -> (String, u64) {
    (
        payload["session_id"]
            .as_str()
            .expect("session_id")
            .to_owned(),
        payload["statement_id"].as_u64().expect("statement_id"),
    )
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a fresh Ed25519 checkpoint key pair with `portcullis audit keygen`; returns the paths
/// of the private and the public key.
async fn keygen(setup: &Setup) -> (PathBuf, PathBuf) {
    let (private, public) = (
        setup.path("audit-signing.pem"),
        setup.path("audit-signing.pub"),
    );
    let out = setup
        .audit_cli(&[
            "keygen",
            "--out",
            &private.to_string_lossy(),
            "--public-out",
            &public.to_string_lossy(),
        ])
        .await;
    assert!(out.status.success(), "keygen failed: {}", describe(&out));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private)
            .expect("private key written")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the private key must be readable by its owner only"
        );
    }
    // Never overwritten.
    let again = setup
        .audit_cli(&["keygen", "--out", &private.to_string_lossy()])
        .await;
    assert_eq!(
        again.status.code(),
        Some(1),
        "keygen over an existing key: {}",
        describe(&again)
    );
    (private, public)
}

// ---------------------------------------------------------------------------------------------
// What a session leaves in the trail
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sessions_statements_denials_and_failed_logins_but_no_credentials() {
    let setup = Setup::new("trail", "").await;
    let (server, addr) = setup.start_in_process().await;

    let good_token = setup.token("alice");
    let client = setup
        .connect(addr, "alice", &good_token)
        .await
        .expect("alice logs in");
    client
        .batch_execute("create table audit_probe (id int)")
        .await
        .expect("create");
    client
        .execute("insert into audit_probe values (4242)", &[])
        .await
        .expect("insert");
    let n: i64 = client
        .query_one("select count(*) from audit_probe", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    let denied = client
        .batch_execute("drop table audit_probe")
        .await
        .expect_err("DROP is denied");
    assert_eq!(sqlstate(&denied), "42501");
    drop(client);

    // A well-formed token signed with a key the gateway does not know.
    let forged_secret = format!("forged-secret-{:032x}", rand::random::<u128>());
    let forged_token = token_signed_with(&forged_secret, "mallory");
    let refused = setup
        .connect(addr, "mallory", &forged_token)
        .await
        .expect_err("a forged token is refused");
    assert_eq!(sqlstate(&refused), "28P01");

    // Shutdown ends the sessions (session_closed) and writes everything queued.
    server.shutdown().await;

    let trail = read_trail(&setup.sqlite_trail()).await;
    let events: Vec<&str> = trail.iter().map(|(r, _)| r.event.as_str()).collect();
    assert_eq!(events.first(), Some(&"log_opened"), "{events:?}");

    let find = |event: &str, pred: &dyn Fn(&Value) -> bool| -> Vec<&(audit::StoredRecord, Value)> {
        trail
            .iter()
            .filter(|(r, p)| r.event == event && pred(p))
            .collect()
    };

    let opened = find("session_opened", &|p| p["subject"] == "alice");
    assert_eq!(opened.len(), 1, "one session for alice: {events:?}");
    let (opened_record, opened_payload) = opened[0];
    let session = opened_payload["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    assert_eq!(opened_payload["auth_method"], "jwt");
    assert_eq!(opened_payload["groups"], serde_json::json!(["engineering"]));
    assert_eq!(
        opened_record.target.as_deref(),
        Some(setup.db.name.as_str())
    );

    // The INSERT: started (allowed, by rule `everyone`) and then finished with its tag.
    let started = find("statement_started", &|p| {
        p["sql"] == "insert into audit_probe values (4242)"
    });
    assert_eq!(started.len(), 1, "{events:?}");
    let (started_record, started_payload) = started[0];
    assert_eq!(started_payload["session_id"], session.as_str());
    assert_eq!(started_payload["rule"], "everyone");
    assert_eq!(
        started_payload["objects"]["writes"],
        serde_json::json!(["audit_probe"]),
        "the analysis' objects are on the record: {started_payload}"
    );
    assert_eq!(started_record.verdict.as_deref(), Some("allow"));
    assert_eq!(started_record.subject.as_deref(), Some("alice"));
    let key = statement_key(started_payload);
    let finished = find("statement_finished", &|p| statement_key(p) == key);
    assert_eq!(
        finished.len(),
        1,
        "the INSERT's statement_finished: {events:?}"
    );
    let (finished_record, finished_payload) = finished[0];
    assert!(finished_record.seq > started_record.seq);
    assert_eq!(finished_payload["tag"], "INSERT 0 1");
    assert!(finished_payload["error"].is_null(), "{finished_payload}");

    // The SELECT reports the rows it returned.
    let select = find("statement_started", &|p| {
        p["sql"] == "select count(*) from audit_probe"
    });
    assert_eq!(select.len(), 1);
    let select_finished = find("statement_finished", &|p| {
        statement_key(p) == statement_key(&select[0].1)
    });
    assert_eq!(select_finished[0].1["rows"], 1);

    // The DROP: denied with its rule, never started.
    let drop = find("statement_denied", &|p| {
        p["sql"] == "drop table audit_probe"
    });
    assert_eq!(drop.len(), 1, "{events:?}");
    let (drop_record, drop_payload) = drop[0];
    assert_eq!(drop_payload["verdict"]["decision"], "deny");
    assert_eq!(drop_payload["verdict"]["rule"], "no-drop");
    assert_eq!(drop_record.verdict.as_deref(), Some("deny"));
    assert!(find("statement_started", &|p| p["sql"]
        == "drop table audit_probe")
    .is_empty());

    // The failed login: who tried and which check failed, no subject (nobody was authenticated).
    let failed = find("login_failed", &|p| p["user"] == "mallory");
    assert_eq!(failed.len(), 1, "{events:?}");
    let (failed_record, failed_payload) = failed[0];
    assert!(failed_record.subject.is_none());
    assert_eq!(failed_record.verdict.as_deref(), Some("deny"));
    assert_eq!(failed_payload["database"], setup.db.name.as_str());
    assert!(
        !failed_payload["reason"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{failed_payload}"
    );

    let closed = find("session_closed", &|p| p["session_id"] == session.as_str());
    assert_eq!(closed.len(), 1, "{events:?}");
    assert_eq!(
        closed[0].1["statements"], 4,
        "create, insert, select and the denied drop"
    );

    // No credential anywhere in the files of the trail: neither token (nor any part of one that
    // is not the standard header), nor the gateway's secret, nor the forger's.
    let mut secrets: Vec<(&str, String)> = vec![("the HS256 secret", setup.secret.clone())];
    secrets.push(("the forged token's secret", forged_secret.clone()));
    for (name, token) in [
        ("alice's token", &good_token),
        ("the forged token", &forged_token),
    ] {
        secrets.push((name, token.clone()));
        for (i, part) in token.split('.').enumerate().skip(1) {
            secrets.push((
                if i == 1 {
                    "a token's claims"
                } else {
                    "a token's signature"
                },
                part.to_owned(),
            ));
        }
    }
    let data = setup.path("data");
    let mut files = 0;
    let mut paths: Vec<PathBuf> = Vec::new();
    for dir in [data.clone(), data.join("audit")] {
        for entry in std::fs::read_dir(&dir).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                paths.push(path);
            }
        }
    }
    for path in paths {
        let bytes = std::fs::read(&path).expect("read trail file");
        files += 1;
        for (name, secret) in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{name} is in {}",
                path.display()
            );
        }
    }
    assert!(files >= 3 && data.join("audit.db").is_file() && data.join("audit").is_dir());
}

// ---------------------------------------------------------------------------------------------
// verify, tail and search from the command line
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_a_clean_trail_and_names_the_edited_record() {
    let setup = Setup::new("edited", "").await;
    let (server, addr) = setup.start_in_process().await;
    let client = setup
        .connect(addr, "alice", &setup.token("alice"))
        .await
        .expect("alice logs in");
    client
        .batch_execute("create table audit_probe (id int)")
        .await
        .expect("create");
    for id in [1, 7777, 3] {
        client
            .execute(&format!("insert into audit_probe values ({id})"), &[])
            .await
            .expect("insert");
    }
    drop(client);
    server.shutdown().await;

    let config = setup.config.to_string_lossy().into_owned();
    let clean = setup.audit_cli(&["verify", "--config", &config]).await;
    let out = String::from_utf8_lossy(&clean.stdout).into_owned();
    assert_eq!(clean.status.code(), Some(0), "{}", describe(&clean));
    // Without --public-key, verify checks with the key the gateway generated in its data dir.
    assert!(
        out.contains("signatures: checked with public key"),
        "{out}\n{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(
        String::from_utf8_lossy(&clean.stderr).contains("audit-signing.pub"),
        "{}",
        describe(&clean)
    );
    assert!(
        out.contains("node edited: ") && out.contains(": ok\n"),
        "{out}"
    );
    assert!(out.contains("ok: 1 chain verifies"), "{out}");

    // tail: one line per record, the newest last.
    let tail = setup
        .audit_cli(&["tail", "--config", &config, "-n", "3"])
        .await;
    assert!(tail.status.success(), "{}", describe(&tail));
    let lines: Vec<String> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains(" session_closed alice "), "{lines:?}");
    assert!(lines[1].contains(" log_closed "), "{lines:?}");
    assert!(lines[2].contains(" checkpoint "), "{lines:?}");

    // search: the one record that holds the statement text, as JSON.
    let search = setup
        .audit_cli(&[
            "search",
            "--config",
            &config,
            "--text",
            "values (7777)",
            "--json",
        ])
        .await;
    assert!(search.status.success(), "{}", describe(&search));
    let found: Vec<Value> = String::from_utf8_lossy(&search.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["event"], "statement_started");
    assert_eq!(
        found[0]["payload"]["sql"],
        "insert into audit_probe values (7777)"
    );
    let seq = found[0]["seq"].as_u64().expect("seq");

    // Edit that record's payload in the segment log, as someone with write access to the file
    // could: verify of the configuration's trail names it.
    let segment = setup.path("data/audit/audit-000001.jsonl");
    let text = std::fs::read_to_string(&segment).expect("segment");
    assert_eq!(text.matches("values (7777)").count(), 1, "{text}");
    std::fs::write(&segment, text.replace("values (7777)", "values (7778)")).expect("edit");
    let broken = setup.audit_cli(&["verify", "--config", &config]).await;
    assert_eq!(broken.status.code(), Some(1), "{}", describe(&broken));
    let out = String::from_utf8_lossy(&broken.stdout).into_owned();
    assert!(
        out.contains(&format!("FAILED: node edited seq {seq}: hash mismatch")),
        "{out}"
    );
    assert!(out.contains(&format!("BROKEN at seq {seq}")), "{out}");

    // The same edit in the SQLite index, with the sqlite3 shell.
    let db = setup.path("data/audit.db");
    let edit = format!(
        "UPDATE audit_records SET payload = CAST(replace(CAST(payload AS TEXT), '7777', '7778') AS BLOB) WHERE seq = {seq}"
    );
    let mut sqlite3 = Command::new("sqlite3");
    sqlite3.arg(&db).arg(&edit);
    let edited = tokio::task::spawn_blocking(move || match sqlite3.output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run the sqlite3 shell ({e}); install it (Debian: apt-get install sqlite3)"
        ),
    })
    .await
    .expect("sqlite3 runner");
    assert!(edited.status.success(), "sqlite3: {}", describe(&edited));

    let json = setup
        .audit_cli(&["verify", "--sqlite", &db.to_string_lossy(), "--json"])
        .await;
    assert_eq!(json.status.code(), Some(1), "{}", describe(&json));
    let report: Value = serde_json::from_slice(&json.stdout).expect("a JSON report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_failure"]["seq"], seq);
    assert_eq!(report["first_failure"]["problem"], "hash_mismatch");
    assert_eq!(
        report["first_failure"]["location"],
        format!("audit_records row id {seq}")
    );

    // A sink that cannot be read is exit 2, not a verdict on the trail.
    let missing = setup
        .audit_cli(&[
            "verify",
            "--sqlite",
            &setup.path("nothing.db").to_string_lossy(),
        ])
        .await;
    assert_eq!(missing.status.code(), Some(2), "{}", describe(&missing));
}

// ---------------------------------------------------------------------------------------------
// SIGKILL under load
// ---------------------------------------------------------------------------------------------

/// The gateway binary as a child process (`portcullis run --config FILE`), with its log captured.
struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl GatewayProcess {
    /// Starts the binary and waits until its PostgreSQL listener is ready (read from its log).
    fn start(config: &Path) -> GatewayProcess {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("PORTCULLIS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway binary");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready, listening) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // `INFO portcullis: PostgreSQL listener ready addr=127.0.0.1:PORT node=...`
                if let Some(rest) = line.split("listener ready addr=").nth(1) {
                    if let Ok(addr) = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .parse::<SocketAddr>()
                    {
                        let _ = ready.send(addr);
                    }
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        match listening.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => GatewayProcess { child, addr, log },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the gateway did not start listening:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL the gateway");
        let status = self.child.wait().expect("reap the gateway");
        assert!(!status.success(), "killed with SIGKILL: {status}");
    }

    /// SIGTERM, then waits (at most a minute) for the graceful exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the gateway") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// In sync durability the end of a result reaches the client only once the statement's
/// `statement_finished` is durable: after each query returns, a fresh reader of the trail finds
/// it. (The SIGKILL test relies on this under load, where a kill lands only now and then; this
/// checks every statement, over the simple and the extended protocol.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_durability_records_each_end_before_the_client_sees_it() {
    let setup = Setup::new("sync-ends", "[audit]\ndurability = \"sync\"\n").await;
    let (server, addr) = setup.start_in_process().await;
    let client = setup
        .connect(addr, "alice", &setup.token("alice"))
        .await
        .expect("alice logs in");
    for i in 0..12 {
        let sql = format!("select {i} as sync_end_{i}");
        if i % 2 == 0 {
            client.simple_query(&sql).await.expect("simple query");
        } else {
            client.query(&sql, &[]).await.expect("extended query");
        }
        let trail = read_trail(&setup.log_trail()).await;
        let started = trail
            .iter()
            .find(|(_, p)| p["event"] == "statement_started" && p["sql"] == sql.as_str())
            .unwrap_or_else(|| panic!("no statement_started for {sql}"));
        let key = statement_key(&started.1);
        assert!(
            trail
                .iter()
                .any(|(_, p)| p["event"] == "statement_finished" && statement_key(p) == key),
            "the client had the result of {sql:?} before its statement_finished was in the trail"
        );
    }
    drop(client);
    server.shutdown().await;
}

/// The unique text of INSERT number `n` of client `c`.
fn crash_insert(c: u32, n: u32) -> String {
    format!("insert into crash_probe (client, n, note) values ({c}, {n}, 'crash-{c}-{n}')")
}

/// What sync durability promises when the gateway process dies with SIGKILL, for the statements
/// that were running at that moment:
///
/// - "started" is made durable before a statement is forwarded to the database, so every
///   statement that reached the database (every row in the table) has its `statement_started`.
/// - "finished" is made durable before the gateway relays the result's end to the client (the
///   CommandComplete of an extended-protocol execution, the ReadyForQuery of a simple query), so
///   every statement whose success the client saw has its `statement_finished` too, of the same
///   session and statement id, after the started record.
/// - A statement in flight at the kill, whose result the client never saw, may have a started
///   record alone (the outcome is unknown: it may or may not have run, and no finished record is
///   ever written for it, not even after the restart), both records (the kill came between the
///   durable write and the relay), or none (the kill came before its started record was durable;
///   then it was never forwarded).
///
/// After the restart the chain continues from the last durable record, and verify passes with
/// the signing key's public half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_keeps_every_acknowledged_statement_throwaway() {
    sigkill_under_load(Durability::Sync).await;
}

/// The default, written durability, under the same SIGKILL: every statement that reached the
/// database has its `statement_started` (it was in the log's file before it was forwarded), and
/// the next start names the crash and the four sessions it interrupted. A statement's end is
/// relayed before its `statement_finished` is written, so an acknowledged statement may lack
/// that one record, never its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_in_written_durability_loses_no_forwarded_statement_throwaway() {
    sigkill_under_load(Durability::Written).await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Durability {
    Sync,
    Written,
}

async fn sigkill_under_load(durability: Durability) {
    let setup = Setup::new("crash", "").await;
    // Sync: an explicit key; written: the default configuration, with the key it generates.
    // Frequent checkpoints, so that the kill lands between them.
    let (audit, public_key) = match durability {
        Durability::Sync => {
            let (private_key, public_key) = keygen(&setup).await;
            (
                format!(
                    "[audit]\ndurability = \"sync\"\nsigning_key_file = {}\ncheckpoint_every_records = 50\n",
                    toml_str(&private_key.to_string_lossy())
                ),
                Some(public_key),
            )
        }
        Durability::Written => ("[audit]\ncheckpoint_every_records = 50\n".to_owned(), None),
    };
    let mut text = std::fs::read_to_string(&setup.config).expect("config");
    text.push_str(&audit);
    std::fs::write(&setup.config, text).expect("write config");
    setup
        .db
        .connect_direct()
        .await
        .batch_execute("create table crash_probe (client int, n int, note text)")
        .await
        .expect("create crash_probe");

    let config = setup.config.clone();
    let mut gateway = tokio::task::block_in_place(|| GatewayProcess::start(&config));

    // Four clients insert as fast as they can, two with the extended protocol, two with simple
    // queries; each keeps the statements whose success it saw.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let client = setup
            .connect(
                gateway.addr,
                &format!("loader{c}"),
                &setup.token(&format!("loader{c}")),
            )
            .await;
        let client = client.expect("a loader logs in");
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = crash_insert(c, n);
                let result = if c % 2 == 0 {
                    client.execute(&sql, &[]).await.map(|_| ())
                } else {
                    client.batch_execute(&sql).await
                };
                match result {
                    Ok(()) => acknowledged.lock().expect("ack list").push(sql),
                    // The gateway is gone.
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| gateway.kill_hard());
    // Every client notices the dead connection; the flag is only a safety net.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("loaders stop")
            .expect("loader task");
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("ack list"));
    assert!(
        acknowledged.len() >= 20,
        "only {} INSERTs were acknowledged in 2 s",
        acknowledged.len()
    );

    // Restart on the same data directory, run one more statement, stop gracefully.
    let mut gateway = tokio::task::block_in_place(|| GatewayProcess::start(&config));
    let after = setup
        .connect(gateway.addr, "after", &setup.token("after"))
        .await
        .expect("log in after the restart");
    after
        .batch_execute("insert into crash_probe (client, n, note) values (99, 1, 'after-restart')")
        .await
        .expect("insert");
    drop(after);
    let status = tokio::task::block_in_place(|| gateway.terminate());
    assert!(
        status.success(),
        "graceful stop failed ({status}):\n{}",
        gateway.log()
    );

    let config_arg = config.to_string_lossy().into_owned();
    let mut args = vec!["verify", "--config", &config_arg];
    let key_arg = public_key.map(|k| k.to_string_lossy().into_owned());
    if let Some(key) = &key_arg {
        args.extend(["--public-key", key]);
    }
    let verify = setup.audit_cli(&args).await;
    assert_eq!(
        verify.status.code(),
        Some(0),
        "verify after SIGKILL and restart: {}",
        describe(&verify)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("signatures: checked with public key"));

    let trail = read_trail(&setup.log_trail()).await;
    let mut started: HashMap<(String, u64), (u64, String)> = HashMap::new();
    let mut started_by_sql: HashMap<String, (String, u64)> = HashMap::new();
    let mut finished: HashMap<(String, u64), (u64, Value)> = HashMap::new();
    for (r, p) in &trail {
        match r.event.as_str() {
            "statement_started" => {
                let sql = p["sql"].as_str().expect("sql").to_owned();
                started_by_sql.insert(sql.clone(), statement_key(p));
                started.insert(statement_key(p), (r.seq, sql));
            }
            "statement_finished" => {
                finished.insert(statement_key(p), (r.seq, p.clone()));
            }
            _ => {}
        }
    }

    // Acknowledged: started and finished, successfully, in that order.
    for sql in &acknowledged {
        let key = started_by_sql
            .get(sql)
            .unwrap_or_else(|| panic!("acknowledged but no statement_started in the trail: {sql}"));
        let (started_seq, _) = started[key];
        let Some((finished_seq, outcome)) = finished.get(key) else {
            assert_eq!(
                durability,
                Durability::Written,
                "acknowledged but no statement_finished in the trail: {sql}"
            );
            continue;
        };
        assert!(
            *finished_seq > started_seq,
            "{sql}: finished at seq {finished_seq}, started at {started_seq}"
        );
        assert_eq!(outcome["tag"], "INSERT 0 1", "{sql}: {outcome}");
        assert!(outcome["error"].is_null(), "{sql}: {outcome}");
    }
    // Nothing reached the database unrecorded: every row has its started record.
    let rows = setup
        .db
        .connect_direct()
        .await
        .query("select client, n from crash_probe", &[])
        .await
        .expect("rows");
    let mut in_database = HashSet::new();
    for row in rows {
        let (c, n): (i32, i32) = (row.get(0), row.get(1));
        let sql = if c == 99 {
            "insert into crash_probe (client, n, note) values (99, 1, 'after-restart')".to_owned()
        } else {
            crash_insert(c as u32, n as u32)
        };
        assert!(
            started_by_sql.contains_key(&sql),
            "in the database but not in the trail: {sql}"
        );
        in_database.insert(sql);
    }
    for sql in &acknowledged {
        assert!(
            in_database.contains(sql),
            "acknowledged but not in the database: {sql}"
        );
    }
    // No finished record without its started record before it.
    for (key, (seq, _)) in &finished {
        let (started_seq, _) = started
            .get(key)
            .unwrap_or_else(|| panic!("statement_finished without started: {key:?}"));
        assert!(started_seq < seq, "{key:?}");
    }
    let unfinished = started
        .keys()
        .filter(|k| !finished.contains_key(*k))
        .count();
    eprintln!(
        "{} INSERTs acknowledged, {} rows in the database, {unfinished} started records without a finished one",
        acknowledged.len(),
        in_database.len()
    );

    // Two runs of one chain: two log_opened notices, the second continuing the first after the
    // record that names the crash; a clean stop ends with its own record and a checkpoint.
    let opened: Vec<&(audit::StoredRecord, Value)> = trail
        .iter()
        .filter(|(r, _)| r.event == "log_opened")
        .collect();
    assert_eq!(opened.len(), 2);
    assert_eq!(opened[1].1["details"]["previous_seq"], opened[1].0.seq - 2);
    assert_eq!(opened[1].1["details"]["previous_stop"], "unclean");
    let crash = trail
        .iter()
        .find(|(r, _)| r.event == "unclean_stop")
        .expect("the restart names the crash");
    assert_eq!(crash.0.seq, opened[1].0.seq - 1);
    assert_eq!(crash.1["details"]["last_seq"], opened[1].0.seq - 2);
    let mut interrupted: Vec<&str> = crash.1["details"]["interrupted_sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["subject"].as_str().expect("subject"))
        .collect();
    interrupted.sort_unstable();
    assert_eq!(
        interrupted,
        ["loader0", "loader1", "loader2", "loader3"],
        "{}",
        crash.1
    );
    let n = trail.len();
    assert_eq!(trail[n - 1].0.event, "checkpoint");
    assert_eq!(trail[n - 2].0.event, "log_closed");
}

// ---------------------------------------------------------------------------------------------
// Fail closed
// ---------------------------------------------------------------------------------------------

/// With the JSONL sink's directory replaced by a file, the next statement is refused with
/// SQLSTATE 58000 and never reaches the database; once the directory is back, statements run
/// again, and the record of the refused statement (queued before the failure) is written late and
/// named as such in the `sink_recovered` notice.
///
/// The sink appends through an open descriptor, which keeps working after the directory is moved;
/// it therefore checks after every batch that its path still names the file it writes, so the
/// very next write fails even without a checkpoint in the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_statements_while_the_trail_cannot_be_written() {
    let setup = Setup::new(
        "closed",
        "[audit]\ndurability = \"sync\"\non_failure = \"closed\"\nretry_for = \"300ms\"\n\
         signing_key_file = \"audit-signing.pem\"\n\n\
         [[audit.sinks]]\nkind = \"jsonl\"\ndir = \"trail\"\n",
    )
    .await;
    let (private_pem, public_pem) = audit::generate_signing_key().expect("key");
    std::fs::write(setup.path("audit-signing.pem"), private_pem).expect("write key");
    std::fs::write(setup.path("audit-signing.pub"), public_pem).expect("write public key");
    let upstream = setup.db.connect_direct().await;
    upstream
        .batch_execute("create table guarded (id int)")
        .await
        .expect("create");
    let count = || async {
        let n: i64 = upstream
            .query_one("select count(*) from guarded", &[])
            .await
            .expect("count")
            .get(0);
        n
    };

    let (server, addr) = setup.start_in_process().await;
    let client = setup
        .connect(addr, "alice", &setup.token("alice"))
        .await
        .expect("alice logs in");
    client
        .execute("insert into guarded values (1)", &[])
        .await
        .expect("insert while the trail is fine");
    assert_eq!(count().await, 1);

    let trail = setup.path("trail");
    let moved = setup.path("trail.moved");
    std::fs::rename(&trail, &moved).expect("move the trail away");
    std::fs::write(&trail, "not a directory").expect("put a file in its place");

    let refused = client
        .execute("insert into guarded values (2)", &[])
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&refused), "58000", "{refused:?}");
    let message = refused
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("audit trail is unavailable"), "{message}");
    // While the trail is down every statement is refused, reads too, at once.
    let read = client
        .query_one("select count(*) from guarded", &[])
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&read), "58000");
    assert_eq!(
        count().await,
        1,
        "a refused statement must not reach the database"
    );

    std::fs::remove_file(&trail).expect("remove the file");
    std::fs::rename(&moved, &trail).expect("put the trail back");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.execute("insert into guarded values (3)", &[]).await {
            Ok(_) => break,
            Err(e) if sqlstate(&e) == "58000" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the gateway did not recover: {e:?}"),
        }
    }
    let ids: Vec<i32> = upstream
        .query("select id from guarded order by id", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 3]);
    drop(client);
    server.shutdown().await;

    let verify = setup
        .audit_cli(&[
            "verify",
            "--jsonl",
            "trail",
            "--public-key",
            &setup.path("audit-signing.pub").to_string_lossy(),
        ])
        .await;
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));

    let records = read_trail(&audit::SinkConfig::Jsonl {
        dir: trail,
        max_file_bytes: 1 << 20,
    })
    .await;
    let recovered: Vec<&Value> = records
        .iter()
        .filter(|(r, _)| r.event == "sink_recovered")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(recovered.len(), 1, "one outage, one recovery notice");
    let details = &recovered[0]["details"];
    assert!(details["refused"].as_u64().unwrap_or(0) >= 1, "{details}");
    // The refused INSERT's started record was queued before the failure: it is in the trail,
    // and the notice names it as written after its caller was refused.
    let (late, key) = records
        .iter()
        .find(|(r, p)| {
            r.event == "statement_started" && p["sql"] == "insert into guarded values (2)"
        })
        .map(|(r, p)| (r.seq, statement_key(p)))
        .expect("the refused statement's record");
    let (from, to) = (
        details["late_from_seq"].as_u64(),
        details["late_to_seq"].as_u64(),
    );
    assert!(
        from.zip(to).is_some_and(|(a, b)| (a..=b).contains(&late)),
        "seq {late} not in {details}"
    );
    // It never ran, so it never finished.
    assert!(!records
        .iter()
        .any(|(r, p)| r.event == "statement_finished" && statement_key(p) == key));
}

// ---------------------------------------------------------------------------------------------
// Fail open
// ---------------------------------------------------------------------------------------------

/// The body of `GET path` from the admin listener at `addr`.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the admin listener");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send the request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the admin listener answers within 10 s")
        .expect("read the response");
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the series named exactly `series` (name and labels) in an exposition.
fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// With `on_failure = "open"` statements keep running while the trail cannot be written, and
/// every record the audit log drops meanwhile is counted in `portcullis_audit_failures_total`
/// (the session phases never see those drops: `record()` succeeds), equal to the log's own
/// `dropped` counter and to the count in the `sink_recovered` notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_runs_statements_and_counts_the_dropped_records_in_metrics() {
    let setup = Setup::new(
        "open",
        "[audit]\ndurability = \"sync\"\non_failure = \"open\"\nretry_for = \"300ms\"\n\n\
         [[audit.sinks]]\nkind = \"jsonl\"\ndir = \"trail\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let upstream = setup.db.connect_direct().await;
    upstream
        .batch_execute("create table unguarded (id int)")
        .await
        .expect("create");
    let (server, addr) = setup.start_in_process().await;
    let admin = server.admin_addr().expect("an admin listener");
    let failures = |text: &str| metric(text, "portcullis_audit_failures_total");

    let client = setup
        .connect(addr, "alice", &setup.token("alice"))
        .await
        .expect("alice logs in");
    client
        .execute("insert into unguarded values (1)", &[])
        .await
        .expect("insert while the trail is fine");
    assert_eq!(failures(&http_get(admin, "/metrics").await), Some(0.0));

    let trail = setup.path("trail");
    let moved = setup.path("trail.moved");
    std::fs::rename(&trail, &moved).expect("move the trail away");
    std::fs::write(&trail, "not a directory").expect("put a file in its place");

    // Every statement runs; the first waits up to retry_for for its record, the later ones'
    // records are dropped at once.
    for id in 2..=6 {
        client
            .execute(&format!("insert into unguarded values ({id})"), &[])
            .await
            .unwrap_or_else(|e| panic!("insert {id} with the trail down, fail open: {e:?}"));
    }
    let n: i64 = upstream
        .query_one("select count(*) from unguarded", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 6, "fail open: every statement reached the database");
    let stats = server.audit_stats();
    let dropped = stats.dropped.load(Ordering::Relaxed);
    assert!(
        dropped >= 1,
        "records were dropped while the trail was down"
    );
    let text = http_get(admin, "/metrics").await;
    assert_eq!(failures(&text), Some(dropped as f64), "{text}");

    // Put the trail back: the writer recovers on its own (backing off to once a second).
    let written_before = stats.written.load(Ordering::Relaxed);
    std::fs::remove_file(&trail).expect("remove the file");
    std::fs::rename(&moved, &trail).expect("put the trail back");
    let deadline = Instant::now() + Duration::from_secs(15);
    while stats.written.load(Ordering::Relaxed) == written_before {
        assert!(Instant::now() < deadline, "the audit log did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .execute("insert into unguarded values (7)", &[])
        .await
        .expect("insert after recovery");
    let dropped = stats.dropped.load(Ordering::Relaxed);
    let text = http_get(admin, "/metrics").await;
    assert_eq!(
        failures(&text),
        Some(dropped as f64),
        "nothing more is dropped once the trail is back: {text}"
    );
    drop(client);
    server.shutdown().await;

    let records = read_trail(&audit::SinkConfig::Jsonl {
        dir: trail,
        max_file_bytes: 1 << 20,
    })
    .await;
    let recovered: Vec<&Value> = records
        .iter()
        .filter(|(r, _)| r.event == "sink_recovered")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(recovered.len(), 1, "one outage, one recovery notice");
    assert_eq!(recovered[0]["details"]["dropped"].as_u64(), Some(dropped));
    // The statement after recovery is in the trail.
    assert!(records
        .iter()
        .any(|(r, p)| r.event == "statement_started"
            && p["sql"] == "insert into unguarded values (7)"));
}

// ---------------------------------------------------------------------------------------------
// Key rotation
// ---------------------------------------------------------------------------------------------

/// The operator rotates the checkpoint signing key (a new `audit.signing_key_file`, restart):
/// the chain goes on, each checkpoint names its key, and `audit verify` passes when given every
/// public key (repeated `--public-key`, or one file holding them all), and otherwise names the
/// first checkpoint whose key it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_takes_every_key_a_rotated_chain_was_signed_with() {
    let setup = Setup::new(
        "rotated",
        "[audit]\ncheckpoint_every_records = 4\nsigning_key_file = \"audit-signing.pem\"\n",
    )
    .await;
    let mut public_files = Vec::new();
    let mut key_ids = Vec::new();
    for (round, name) in ["old", "new"].into_iter().enumerate() {
        // The private key file is replaced in place, as an operator would.
        let (private_pem, public_pem) = audit::generate_signing_key().expect("key");
        std::fs::write(setup.path("audit-signing.pem"), private_pem).expect("write key");
        let public_file = setup.path(&format!("{name}.pub"));
        std::fs::write(&public_file, &public_pem).expect("write public key");
        let public = audit::parse_public_key(public_pem.as_bytes()).expect("public key");
        key_ids.push(audit::key_id(&public));
        public_files.push(public_file.to_string_lossy().into_owned());

        let (server, addr) = setup.start_in_process().await;
        let client = setup
            .connect(addr, "alice", &setup.token("alice"))
            .await
            .expect("alice logs in");
        for i in 0..5 {
            client
                .query_one(&format!("select {round}{i}"), &[])
                .await
                .expect("select");
        }
        drop(client);
        server.shutdown().await;
    }
    let (old_id, new_id) = (&key_ids[0], &key_ids[1]);
    let records = read_trail(&setup.sqlite_trail()).await;
    let first_new_checkpoint = records
        .iter()
        .find(|(r, p)| r.event == "checkpoint" && p["key_id"] == new_id.as_str())
        .map(|(r, _)| r.seq)
        .expect("a checkpoint signed with the new key");
    assert!(
        records.iter().any(|(r, p)| r.event == "checkpoint"
            && p["key_id"] == old_id.as_str()
            && r.seq < first_new_checkpoint),
        "the old key signed the first part of the chain"
    );
    let config = setup.config.to_string_lossy().into_owned();

    // Both keys, as two files.
    let both = setup
        .audit_cli(&[
            "verify",
            "--config",
            &config,
            "--public-key",
            &public_files[0],
            "--public-key",
            &public_files[1],
        ])
        .await;
    assert_eq!(both.status.code(), Some(0), "{}", describe(&both));
    let out = String::from_utf8_lossy(&both.stdout).into_owned();
    assert!(
        out.contains(&format!(
            "signatures: checked with public keys {old_id}, {new_id}"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("by keys {old_id}, {new_id}")),
        "{out}"
    );

    // Both keys in one file.
    let keyring = setup.path("all-keys.pub");
    let mut text = std::fs::read_to_string(&public_files[0]).expect("old key");
    text.push_str(&std::fs::read_to_string(&public_files[1]).expect("new key"));
    std::fs::write(&keyring, text).expect("write the key file");
    let one_file = setup
        .audit_cli(&[
            "verify",
            "--config",
            &config,
            "--public-key",
            &keyring.to_string_lossy(),
            "--json",
        ])
        .await;
    assert_eq!(one_file.status.code(), Some(0), "{}", describe(&one_file));
    let report: Value = serde_json::from_slice(&one_file.stdout).expect("a JSON report");
    assert_eq!(
        report["public_key_ids"],
        serde_json::json!([old_id, new_id])
    );
    assert_eq!(
        report["nodes"][0]["signing_keys"],
        serde_json::json!([old_id, new_id])
    );

    // The old key only: the first checkpoint signed with the new one is named.
    let old_only = setup
        .audit_cli(&[
            "verify",
            "--config",
            &config,
            "--public-key",
            &public_files[0],
        ])
        .await;
    assert_eq!(old_only.status.code(), Some(1), "{}", describe(&old_only));
    let out = String::from_utf8_lossy(&old_only.stdout).into_owned();
    assert!(
        out.contains(&format!(
            "FAILED: node rotated seq {first_new_checkpoint}: checkpoint signed by key {new_id}, which is not among the given public keys ({old_id})"
        )),
        "{out}"
    );
    let json = setup
        .audit_cli(&[
            "verify",
            "--config",
            &config,
            "--public-key",
            &public_files[0],
            "--json",
        ])
        .await;
    assert_eq!(json.status.code(), Some(1), "{}", describe(&json));
    let report: Value = serde_json::from_slice(&json.stdout).expect("a JSON report");
    assert_eq!(report["first_failure"]["problem"], "unknown_signing_key");
    assert_eq!(report["first_failure"]["seq"], first_new_checkpoint);
}
