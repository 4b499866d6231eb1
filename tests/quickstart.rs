//! The quickstart as the README shows it: `examples/quickstart.toml` as it is (only the listen
//! port is moved to 0, and the file to a scratch directory so that its audit trail lands there),
//! in front of the local PostgreSQL's `postgres` database, driven with psql as a token-holding
//! analyst and as the static breakglass user, and in front of the local MariaDB's `mysql`
//! database, driven the same way with the mariadb client. Nothing here writes to either
//! database: the analyst's writes are refused, and breakglass writes only to temporary tables.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{assert_success, connect_upstream, run_with_timeout, stderr, CLIENT_TIMEOUT};
use identity::{MintKey, MintRequest};
use portcullis::{Config, RunningServer, Server};

const QUICKSTART_LISTEN: &str = "listen = \"127.0.0.1:6432\"";
const QUICKSTART_MYSQL_LISTEN: &str = "listen = \"127.0.0.1:3307\"";

struct Quickstart {
    server: RunningServer,
    port: u16,
    mysql_port: u16,
    secret: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Quickstart {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let text = std::fs::read_to_string(examples.join("quickstart.toml")).unwrap();
    assert!(
        text.contains(QUICKSTART_LISTEN),
        "the quickstart listens elsewhere now"
    );
    assert!(
        text.contains(QUICKSTART_MYSQL_LISTEN),
        "the quickstart's MySQL listener listens elsewhere now"
    );
    let text = text
        .replace(QUICKSTART_LISTEN, "listen = \"127.0.0.1:0\"")
        .replace(QUICKSTART_MYSQL_LISTEN, "listen = \"127.0.0.1:0\"");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        examples.join("dev-jwt-secret"),
        dir.path().join("dev-jwt-secret"),
    )
    .unwrap();
    let config = Config::from_toml_str(&text, &dir.path().join("quickstart.toml"))
        .unwrap_or_else(|e| panic!("examples/quickstart.toml:\n{e}"));
    let server = Server::start(config)
        .await
        .unwrap_or_else(|e| panic!("the quickstart did not start: {e:#}"));
    let port = server.postgres_addr().unwrap().port();
    let mysql_port = server.mysql_addr().unwrap().port();
    let secret = std::fs::read_to_string(dir.path().join("dev-jwt-secret")).unwrap();
    Quickstart {
        server,
        port,
        mysql_port,
        secret: secret.trim().to_owned(),
        _dir: dir,
    }
}

impl Quickstart {
    /// The README's token: `token mint --iss portcullis-dev --aud portcullis --sub alice --groups analyst`.
    fn analyst_token(&self) -> String {
        let mut req = MintRequest::new(
            MintKey::Hs256(self.secret.clone()),
            "alice",
            Duration::from_secs(600),
        );
        req.issuer = Some("portcullis-dev".into());
        req.audience = Some("portcullis".into());
        req.groups = vec!["analyst".into()];
        identity::mint_token(&req).unwrap()
    }

    /// `psql -X -w -c SQL` as `user` with `password`, against the target `postgres`.
    async fn psql(&self, user: &str, password: &str, sql: &str) -> Output {
        let mut cmd = Command::new("psql");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(format!(
                "host=127.0.0.1 port={} dbname=postgres user={user} connect_timeout=10",
                self.port
            ))
            .env("PGPASSWORD", password);
        tokio::task::spawn_blocking(move || run_with_timeout(cmd, CLIENT_TIMEOUT))
            .await
            .unwrap()
    }
}

impl Quickstart {
    /// The README's `mariadb -h 127.0.0.1 -P 3307 -u USER -pPASSWORD -D mysql`, batch mode, with
    /// `sql` on standard input and `--force`, so each error is reported and the session goes on.
    async fn mariadb(&self, user: &str, password: &str, sql: &str) -> Output {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "--batch", "--skip-column-names", "--force"])
            .args(["-h", "127.0.0.1", "-P", &self.mysql_port.to_string()])
            .args(["-u", user])
            .arg(format!("-p{password}"))
            .args(["-D", "mysql"]);
        let input = sql.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || {
            common::run_with_input(cmd, Some(input), CLIENT_TIMEOUT)
        })
        .await
        .unwrap()
    }
}

/// psql failed with a policy error naming `rule`.
fn assert_refused_by(out: &Output, rule: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected a refusal by {rule}: {out:?}"
    );
    assert!(
        err.contains("ERROR:") && err.contains(&format!("(rule \"{rule}\")")),
        "expected a refusal naming rule {rule}, got:\n{err}"
    );
}

#[tokio::test]
async fn the_quickstart_analyst_reads_and_is_refused_writes_naming_the_rule() {
    let qs = start().await;
    let table = format!("quickstart_probe_{:08x}", rand::random::<u32>());
    let token = qs.analyst_token();

    let out = qs
        .psql(
            "alice",
            &token,
            "select current_setting('transaction_read_only')",
        )
        .await;
    let read = assert_success("the analyst's read", &out);
    assert!(
        read.contains(" on"),
        "the upstream session is read-only too:\n{read}"
    );

    let out = qs
        .psql("alice", &token, &format!("create table {table} (id int)"))
        .await;
    assert_refused_by(&out, "builtin:read-only");
    let upstream = connect_upstream("postgres").await;
    let row = upstream
        .query_one("select to_regclass($1)::text", &[&table])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0),
        None,
        "the table was created"
    );

    let out = qs
        .psql(
            "alice",
            &token,
            "select rolname, rolpassword from pg_authid",
        )
        .await;
    assert_refused_by(&out, "no-password-hashes");

    // Breakglass writes (here to a temporary table, gone with its session) but reads no hashes.
    let out = qs
        .psql(
            "breakglass",
            "change-me",
            "create temp table scratch (id int); insert into scratch values (1); select count(*) from scratch",
        )
        .await;
    assert_success("breakglass's write", &out);
    let out = qs
        .psql(
            "breakglass",
            "change-me",
            "select rolpassword from pg_shadow",
        )
        .await;
    assert_refused_by(&out, "no-password-hashes");

    // A token without a group the policy names gets no session at all.
    let mut req = MintRequest::new(
        MintKey::Hs256(qs.secret.clone()),
        "mallory",
        Duration::from_secs(600),
    );
    req.issuer = Some("portcullis-dev".into());
    req.audience = Some("portcullis".into());
    let out = qs
        .psql("mallory", &identity::mint_token(&req).unwrap(), "select 1")
        .await;
    assert!(!out.status.success(), "{out:?}");

    tokio::time::timeout(common::SHUTDOWN_BOUND, qs.server.shutdown())
        .await
        .expect("the quickstart gateway did not shut down");
}

#[tokio::test]
async fn the_quickstart_serves_mariadb_clients_under_the_same_policy() {
    let qs = start().await;
    let token = qs.analyst_token();
    let table = format!("quickstart_probe_{:08x}", rand::random::<u32>());

    let out = qs
        .mariadb(
            "alice",
            &token,
            &format!(
                "SELECT DATABASE();\n\
                 CREATE TABLE test.{table} (id INT);\n\
                 SELECT user, authentication_string FROM mysql.user;\n\
                 SELECT COUNT(*) FROM global_priv;\n\
                 SELECT 'still here';\n"
            ),
        )
        .await;
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 3, "{err}");
    assert!(
        errors[0].starts_with("ERROR 1227 (42000)")
            && errors[0].contains("(rule \"builtin:read-only\")"),
        "{err}"
    );
    for e in &errors[1..] {
        assert!(
            e.starts_with("ERROR 1227 (42000)") && e.contains("(rule \"no-password-hashes\")"),
            "{err}"
        );
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mysql\nstill here\n");
    let tables = common::mysql::upstream(&format!(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '{table}'"
    ));
    assert_eq!(tables, "0\n", "the table was created");

    // Breakglass writes (to a temporary table, gone with its session) but reads no hashes.
    let out = qs
        .mariadb(
            "breakglass",
            "change-me",
            "CREATE TEMPORARY TABLE scratch (id INT);\n\
             INSERT INTO scratch VALUES (1);\n\
             SELECT COUNT(*) FROM scratch;\n\
             SELECT authentication_string FROM user;\n",
        )
        .await;
    let err = stderr(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n", "{err}");
    assert!(
        err.contains("ERROR 1227 (42000)") && err.contains("(rule \"no-password-hashes\")"),
        "{err}"
    );

    tokio::time::timeout(common::SHUTDOWN_BOUND, qs.server.shutdown())
        .await
        .expect("the quickstart gateway did not shut down");
}
