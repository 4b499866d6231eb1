//! Shared by this crate's tests: a gateway in front of the real local MariaDB (127.0.0.1:3306,
//! root without a password) with test doubles for authentication, policy and audit, throw-away
//! databases, and the real `mariadb` command-line client. The full identity and policy stack is
//! exercised by the workspace's end-to-end tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use gateway_core::*;
use proto_mysql::{ListenerConfig, MysqlListener};

pub struct FixedPassword;

#[async_trait]
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

/// Denies any statement whose text contains "forbidden"; classifies by the first word.
pub struct DenyForbidden;

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
        let first = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let classification = match first.as_str() {
            "set" | "use" => "session",
            "update" | "insert" | "delete" => "write",
            "kill" => "utility:kill",
            _ => "read",
        };
        Arc::new(Judgement {
            verdict,
            classification: Some(Arc::from(classification)),
            objects: None,
            fingerprint: None,
            lineage: None,
        })
    }
}

/// Keeps every audit record.
#[derive(Default)]
pub struct Recorded(pub Mutex<Vec<AuditEvent>>);

#[async_trait]
impl AuditSink for Recorded {
    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError> {
        self.0.lock().unwrap().push(record.event);
        Ok(())
    }
}

/// A database of its own on the local MariaDB, dropped at the end.
pub struct Database(pub String);

impl Database {
    pub fn create() -> Self {
        let name = format!("pc_relay_{}", rand_suffix());
        direct(&format!(
            "CREATE DATABASE {name}; CREATE TABLE {name}.items (id INT PRIMARY KEY, label VARCHAR(20), data BLOB); \
             INSERT INTO {name}.items VALUES (1, 'one', X'00FF'), (2, 'two', NULL), (3, 'forbidden', NULL)"
        ));
        Database(name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        direct(&format!("DROP DATABASE IF EXISTS {}", self.0));
    }
}

pub fn rand_suffix() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

pub fn direct(sql: &str) {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "-P3306",
            "-uroot",
            "--default-character-set=utf8mb4",
            "-e",
            sql,
        ])
        .output()
        .expect("run the mariadb client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gateway whose target `shop` is `database` on the local MariaDB.
pub async fn start(database: &str) -> (std::net::SocketAddr, Arc<Recorded>) {
    start_with(3306, database).await
}

/// A gateway whose target `shop` is `database` on the MariaDB at 127.0.0.1:`port`.
pub async fn start_on(port: u16, database: &str) -> std::net::SocketAddr {
    start_with(port, database).await.0
}

/// A gateway on the local MariaDB with listener settings changed by `configure`.
pub async fn start_configured(
    database: &str,
    configure: impl FnOnce(&mut ListenerConfig),
) -> (std::net::SocketAddr, Arc<Recorded>) {
    let mut config = ListenerConfig::new("127.0.0.1:0".parse().unwrap());
    configure(&mut config);
    serve(3306, database, config).await
}

async fn start_with(port: u16, database: &str) -> (std::net::SocketAddr, Arc<Recorded>) {
    let config = ListenerConfig::new("127.0.0.1:0".parse().unwrap());
    serve(port, database, config).await
}

async fn serve(
    port: u16,
    database: &str,
    config: ListenerConfig,
) -> (std::net::SocketAddr, Arc<Recorded>) {
    let target = Target {
        name: "shop".into(),
        protocol: Protocol::Mysql,
        host: "127.0.0.1".into(),
        port,
        database: database.into(),
        user: "root".into(),
        password: None,
        tls: UpstreamTls::Disable,
        labels: BTreeMap::new(),
    };
    let audit = Arc::new(Recorded::default());
    let gateway = Gateway::builder()
        .authenticator(Arc::new(FixedPassword))
        .policy(Arc::new(DenyForbidden))
        .audit(Arc::clone(&audit) as Arc<dyn AuditSink>)
        .targets(Targets::new([target]))
        .build();
    let listener = MysqlListener::bind(config, gateway).await.unwrap();
    let addr = listener.local_addr();
    tokio::spawn(listener.run());
    (addr, audit)
}

/// Runs the mariadb client through the gateway (batch mode: tab-separated, no headers).
pub async fn client(
    addr: std::net::SocketAddr,
    password: &str,
    database: &str,
    sql: &str,
) -> (bool, String, String) {
    let args = vec![
        "--no-defaults".to_owned(),
        "-h127.0.0.1".to_owned(),
        format!("-P{}", addr.port()),
        "-ualice".to_owned(),
        format!("-p{password}"),
        "-D".to_owned(),
        database.to_owned(),
        "--batch".to_owned(),
        "--skip-column-names".to_owned(),
        "--force".to_owned(),
    ];
    // Statements on standard input, one per line: with --force the client goes on after an
    // error (with -e it would stop at the first).
    let out = mariadb(args, sql.replace("; ", ";\n").into_bytes()).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the mariadb client with `args` and `input` on standard input.
pub async fn mariadb(args: Vec<String>, input: Vec<u8>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("mariadb")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the mariadb client");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&input).expect("write statements");
        drop(stdin);
        child.wait_with_output().expect("run the mariadb client")
    })
    .await
    .unwrap()
}
