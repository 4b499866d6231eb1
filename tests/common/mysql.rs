//! The MySQL side of the end-to-end harness: a throw-away database on the local MariaDB, a
//! gateway with a `[mysql]` listener in front of it (built from a real configuration file text,
//! on port 0), and the real clients that drive it: the `mariadb` command-line client, PyMySQL
//! and mysql-connector-python, and mysql2 (Node.js).
//!
//! Requirements: MariaDB on 127.0.0.1:3306 accepting `root` without a password, the `mariadb`
//! client on the PATH, a Python with PyMySQL and mysql-connector-python ([`super::python`]) and a
//! `node_modules` with mysql2 ([`node_modules`]); `scripts/test.sh` provides all of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use identity::{MintKey, MintRequest};
use portcullis::config::Config;
use portcullis::server::{RunningServer, Server};

use super::{
    default_trail, default_trail_until, run_with_input, toml_str, Pki, StaticUser, AUDIENCE,
    CLIENT_TIMEOUT, ISSUER, SHUTDOWN_BOUND,
};

/// The MariaDB every MySQL test database lives on.
pub const MYSQL_HOST: &str = "127.0.0.1";
/// Its port.
pub const MYSQL_PORT: u16 = 3306;

/// Runs `sql` directly on the upstream MariaDB as root (not through the gateway) and returns its
/// output in batch form (tab-separated, no column names). Panics when the client fails.
pub fn upstream(sql: &str) -> String {
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "--no-defaults",
        "--protocol=TCP",
        "--batch",
        "--skip-column-names",
        "--default-character-set=utf8mb4",
    ])
    .arg(format!("-h{MYSQL_HOST}"))
    .arg(format!("-P{MYSQL_PORT}"))
    .args(["-uroot", "-e", sql]);
    let out = run_with_input(cmd, None, CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "cannot run `{sql}` on MariaDB at {MYSQL_HOST}:{MYSQL_PORT} as root ({}); the end-to-end \
         tests need it running, root without a password (scripts/test.sh starts it)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

/// A database created for one test on the local MariaDB; dropped when this is dropped.
pub struct MysqlDb {
    /// Its name, which is also the gateway target name clients ask for.
    pub name: String,
}

impl MysqlDb {
    /// Creates `pcm_<unix time>_<random>` (utf8mb4), after dropping such databases left over (by
    /// killed test processes) from more than an hour ago.
    pub fn create() -> MysqlDb {
        sweep_stale_databases();
        let name = format!("pcm_{}_{:08x}", super::unix_now(), rand::random::<u32>());
        upstream(&format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
        ));
        MysqlDb { name }
    }

    /// Runs `sql` directly in this database as root; see [`upstream`].
    pub fn direct(&self, sql: &str) -> String {
        upstream(&format!("USE {}; {sql}", self.name))
    }
}

impl Drop for MysqlDb {
    fn drop(&mut self) {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "--protocol=TCP"])
            .arg(format!("-h{MYSQL_HOST}"))
            .arg(format!("-P{MYSQL_PORT}"))
            .args(["-uroot", "-e"])
            .arg(format!("DROP DATABASE IF EXISTS {}", self.name));
        let out = run_with_input(cmd, None, CLIENT_TIMEOUT);
        if !out.status.success() {
            eprintln!(
                "dropping {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Drops test databases whose name says they were created more than an hour ago. Runs once per
/// test process.
fn sweep_stale_databases() {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let names = upstream(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name REGEXP '^pcm_[0-9]+_[0-9a-f]+$'",
    );
    let cutoff = super::unix_now().saturating_sub(3600);
    for name in names.lines() {
        let created = name
            .split('_')
            .nth(1)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if created < cutoff {
            upstream(&format!("DROP DATABASE IF EXISTS {name}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

/// The policy MySQL gateways get unless a test says otherwise: `analyst` read-only, `engineering`
/// and `admin` read-write, DELETE and UPDATE without a real WHERE denied, and the table `secrets`
/// closed to everyone.
pub const POLICY: &str = r#"
[policy]

[[policy.access]]
name = "analysts"
groups = ["analyst"]
mode = "read-only"

[[policy.access]]
name = "engineers"
groups = ["engineering", "admin"]
mode = "read-write"

[[policy.rules]]
name = "no-unbounded-writes"
action = "deny"
kinds = ["delete", "update"]
filter = "missing"
message = "DELETE and UPDATE need a WHERE clause"

[[policy.rules]]
name = "no-secrets"
action = "deny"
objects = ["secrets"]
message = "the secrets table stays in the database"
"#;

/// What a MySQL gateway under test is configured with.
#[derive(Clone)]
pub struct MysqlOptions {
    /// Serve TLS with a generated certificate.
    pub tls: bool,
    /// `require_tls`.
    pub require_tls: bool,
    /// Verify client certificates against the generated CA (`tls_client_ca`, and
    /// `[identity.client_cert]` with the subject from the CN). Needs `tls`.
    pub client_certs: bool,
    /// `[[identity.users]]`.
    pub users: Vec<StaticUser>,
    /// TOML appended to the configuration verbatim; [`POLICY`] by default.
    pub extra_config: String,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        MysqlOptions {
            tls: false,
            require_tls: false,
            client_certs: false,
            users: Vec::new(),
            extra_config: POLICY.to_owned(),
        }
    }
}

/// A running gateway with a MySQL listener in front of a fresh MariaDB database.
pub struct MysqlGateway {
    // Field order is drop order: stop the gateway before dropping the database.
    server: Option<RunningServer>,
    /// The database (and target name).
    pub db: MysqlDb,
    /// The MySQL listener's address.
    pub addr: SocketAddr,
    /// The HMAC secret tokens are signed with.
    pub secret: String,
    /// TLS material when `MysqlOptions::tls`.
    pub pki: Option<Pki>,
    /// The configuration file text the gateway was started from.
    pub config_text: String,
    dir: tempfile::TempDir,
}

impl MysqlGateway {
    /// A database and a gateway with default options (JWT HS256, plain TCP, [`POLICY`]).
    pub async fn start() -> MysqlGateway {
        Self::start_with(MysqlOptions::default()).await
    }

    /// A database and a gateway configured by `options`.
    pub async fn start_with(options: MysqlOptions) -> MysqlGateway {
        super::init_logging();
        let db = MysqlDb::create();
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = format!("test-secret-{:032x}", rand::random::<u128>());
        let pki = options.tls.then(|| Pki::generate(&db.name));

        let mut text = String::from("[gateway]\nnode = \"test\"\nhandshake_timeout = \"5s\"\n\n");
        text.push_str("[mysql]\nlisten = \"127.0.0.1:0\"\n");
        if let Some(pki) = &pki {
            text.push_str(&format!(
                "tls_cert = {}\ntls_key = {}\n",
                toml_str(&pki.server_cert_file.display().to_string()),
                toml_str(&pki.server_key_file.display().to_string())
            ));
        }
        if let (Some(pki), true) = (&pki, options.client_certs) {
            text.push_str(&format!(
                "tls_client_ca = {}\n",
                toml_str(&pki.ca_file.display().to_string())
            ));
        }
        text.push_str(&format!(
            "require_tls = {}\nallow_plaintext_password = false\n\n",
            options.require_tls
        ));
        if options.client_certs {
            text.push_str("[identity.client_cert]\nsubject = \"cn\"\ngroups_from_ou = false\n\n");
        }
        text.push_str(&format!(
            "[identity.jwt]\nissuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\"]\nalgorithms = [\"HS256\"]\nhs256_secret = {}\n\n",
            toml_str(&secret)
        ));
        for user in &options.users {
            let hash = identity::hash_password(&user.password).expect("hash password");
            let groups: Vec<String> = user.groups.iter().map(|g| toml_str(g)).collect();
            text.push_str(&format!(
                "[[identity.users]]\nname = {}\npassword_hash = {}\ngroups = [{}]\n\n",
                toml_str(&user.name),
                toml_str(&hash),
                groups.join(", ")
            ));
        }
        text.push_str(&format!(
            "[[targets]]\nname = \"{name}\"\nprotocol = \"mysql\"\nhost = \"{MYSQL_HOST}\"\nport = {MYSQL_PORT}\ndatabase = \"{name}\"\nuser = \"root\"\n\n",
            name = db.name
        ));
        text.push_str(&options.extra_config);

        let origin = dir.path().join("portcullis.toml");
        std::fs::write(&origin, &text).expect("write config");
        let config = Config::from_toml_str(&text, &origin).unwrap_or_else(|e| {
            panic!("the test configuration was refused:\n{e}\n--- config ---\n{text}")
        });
        let server = Server::start(config)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e:#}"));
        assert_eq!(server.postgres_addr(), None);
        let addr = server
            .mysql_addr()
            .expect("the configuration has a [mysql] listener");
        MysqlGateway {
            server: Some(server),
            db,
            addr,
            secret,
            pki,
            config_text: text,
            dir,
        }
    }

    /// The target (database) name clients ask for.
    pub fn database(&self) -> &str {
        &self.db.name
    }

    /// The admin listener's base URL; the configuration must have `[admin]`.
    pub fn admin_url(&self) -> String {
        let addr = self
            .server
            .as_ref()
            .and_then(RunningServer::admin_addr)
            .expect("the configuration has an [admin] listener");
        format!("http://{addr}")
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A scratch directory that lives as long as the gateway (the configuration file's).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// A valid token for `subject` in `groups`, valid 10 minutes.
    pub fn token(&self, subject: &str, groups: &[&str]) -> String {
        let mut req = MintRequest::new(
            MintKey::Hs256(self.secret.clone()),
            subject,
            Duration::from_secs(600),
        );
        req.issuer = Some(ISSUER.into());
        req.audience = Some(AUDIENCE.into());
        req.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        identity::mint_token(&req).expect("mint token")
    }

    /// Every record's payload in the gateway's default trail, in chain order.
    pub async fn trail(&self) -> Vec<serde_json::Value> {
        default_trail(self.scratch()).await
    }

    /// [`trail`](Self::trail) once `ready` holds for it, within 10 s.
    pub async fn trail_until(
        &self,
        what: &str,
        ready: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        default_trail_until(self.scratch(), what, ready).await
    }

    /// Runs the `mariadb` client through the gateway as `user` with `password`, against
    /// `database` (the test database when `None`), with `args` added: batch mode (tab-separated,
    /// no column names) with `--force`, and `sql` on standard input, so that the client reports
    /// each error and goes on with the next statement (and exits 0 even then: read stderr).
    pub async fn mariadb(
        &self,
        user: &str,
        password: &str,
        database: Option<&str>,
        args: &[&str],
        sql: &str,
    ) -> Output {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "--no-defaults",
            "--protocol=TCP",
            "--batch",
            "--skip-column-names",
            "--force",
            "--connect-timeout=10",
        ])
        .arg("-h127.0.0.1")
        .arg(format!("-P{}", self.port()))
        .arg(format!("-u{user}"))
        .arg(format!("-p{password}"))
        .arg(format!("-D{}", database.unwrap_or(self.database())))
        .args(args);
        let input = sql.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || run_with_input(cmd, Some(input), CLIENT_TIMEOUT))
            .await
            .expect("client runner panicked")
    }

    /// The environment that points the Python, Node and Java clients at this gateway: `MY_HOST`,
    /// `MY_PORT`, `MY_DB`, `MY_USER` (`alice`) and `MY_PASSWORD` (a fresh read-write token for
    /// her), `MY_READONLY_USER` (`bob`) and `MY_READONLY_PASSWORD` (a token for him in `analyst`,
    /// read-only under [`POLICY`]), and `MY_CA` with the test CA when the gateway serves TLS.
    fn script_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("MY_HOST".into(), "127.0.0.1".into()),
            ("MY_PORT".into(), self.port().to_string()),
            ("MY_DB".into(), self.database().into()),
            ("MY_USER".into(), "alice".into()),
            ("MY_PASSWORD".into(), self.token("alice", &["engineering"])),
            ("MY_READONLY_USER".into(), "bob".into()),
            (
                "MY_READONLY_PASSWORD".into(),
                self.token("bob", &["analyst"]),
            ),
        ];
        if let Some(pki) = &self.pki {
            env.push(("MY_CA".into(), pki.ca_file.display().to_string()));
        }
        env
    }

    /// Runs a Python script (with PyMySQL) against the gateway, with [`script_env`]'s variables.
    pub async fn python(&self, script: &str) -> Output {
        let file = self
            .dir
            .path()
            .join(format!("script-{:08x}.py", rand::random::<u32>()));
        std::fs::write(&file, script).expect("write script");
        let mut cmd = Command::new(super::python());
        cmd.arg(&file)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .envs(self.script_env());
        tokio::task::spawn_blocking(move || run_with_input(cmd, None, CLIENT_TIMEOUT))
            .await
            .expect("client runner panicked")
    }

    /// Runs a Node.js script (with mysql2 on its module path) against the gateway, with
    /// [`script_env`]'s variables.
    pub async fn node(&self, script: &str) -> Output {
        let file = self
            .dir
            .path()
            .join(format!("script-{:08x}.js", rand::random::<u32>()));
        std::fs::write(&file, script).expect("write script");
        let mut cmd = Command::new("node");
        cmd.arg(&file)
            .env("NODE_PATH", node_modules())
            .envs(self.script_env());
        tokio::task::spawn_blocking(move || run_with_input(cmd, None, CLIENT_TIMEOUT))
            .await
            .expect("client runner panicked")
    }

    /// Runs a single-file Java program from `tests/clients` (the JDK compiles it on the fly) with
    /// MariaDB Connector/J on its class path ([`mariadb_jdbc_jar`]) against the gateway, with
    /// [`script_env`]'s variables, in UTC.
    pub async fn java(&self, source: &str) -> Output {
        let jar = mariadb_jdbc_jar();
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients")
            .join(source);
        let mut cmd = Command::new("java");
        cmd.arg("-Duser.timezone=UTC")
            .arg("-cp")
            .arg(jar)
            .arg(source)
            .envs(self.script_env());
        tokio::task::spawn_blocking(move || run_with_input(cmd, None, CLIENT_TIMEOUT))
            .await
            .expect("client runner panicked")
    }

    /// Stops the gateway (then the database is dropped with `self`).
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(SHUTDOWN_BOUND, server.shutdown())
                .await
                .unwrap_or_else(|_| {
                    panic!("the gateway did not shut down within {SHUTDOWN_BOUND:?}")
                });
        }
    }
}

/// The `node_modules` directory with mysql2 for the Node.js driver tests:
/// `PORTCULLIS_TEST_NODE_MODULES`, else `target/test-node/node_modules`. Panics (the tests must
/// run in CI, never skip) when mysql2 is in neither.
pub fn node_modules() -> PathBuf {
    let dir = match std::env::var_os("PORTCULLIS_TEST_NODE_MODULES").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-node/node_modules"),
    };
    assert!(
        dir.join("mysql2/package.json").exists(),
        "no mysql2 for the Node.js driver tests in {}: set PORTCULLIS_TEST_NODE_MODULES, or run \
         `npm install --prefix target/test-node mysql2@3` (scripts/test.sh does this)",
        dir.display()
    );
    dir
}

/// MariaDB Connector/J as Debian's libmariadb-java installs it.
pub const MARIADB_JDBC_JAR: &str = "/usr/share/java/mariadb-java-client.jar";

/// [`MARIADB_JDBC_JAR`], checked together with a `java` to run it. Panics (the tests must run in
/// CI, never skip) when either is missing.
pub fn mariadb_jdbc_jar() -> &'static Path {
    let jar = Path::new(MARIADB_JDBC_JAR);
    let java = Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    let why = std::env::var("PORTCULLIS_TEST_NO_JDBC")
        .map(|reason| format!(" (scripts/test.sh said: {reason})"))
        .unwrap_or_default();
    assert!(
        java && jar.exists(),
        "no MariaDB Connector/J for the JDBC driver test: java {} and {MARIADB_JDBC_JAR} {}{why}; \
         run scripts/test.sh (it installs them), or apt-get install libmariadb-java default-jdk-headless",
        if java { "found" } else { "missing" },
        if jar.exists() { "found" } else { "missing" },
    );
    jar
}
