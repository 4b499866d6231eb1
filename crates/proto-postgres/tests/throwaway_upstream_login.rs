//! Upstream login with service credentials against a throw-away PostgreSQL this test starts:
//! SCRAM-SHA-256, MD5 and cleartext password methods, and TLS with verify-full.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gateway_core::*;
use proto_postgres::{ListenerConfig, PostgresListener};
use tokio_postgres::NoTls;

struct AnyUser;

#[async_trait::async_trait]
impl Authenticator for AnyUser {
    async fn authenticate(
        &self,
        c: &Credentials,
        _: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        Ok(Identity {
            subject: c.user().to_owned(),
            groups: vec![],
            auth_method: AuthMethod::Password,
            claims: BTreeMap::new(),
        })
    }
}

/// A private PostgreSQL cluster, stopped on drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
    ca_pem: PathBuf,
    other_ca_pem: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pg_bin(name: &str) -> PathBuf {
    // Debian keeps the server binaries out of PATH.
    for dir in std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = dir.path().join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn write_owned(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    run(Command::new("chown").args(["postgres:postgres"]).arg(path));
}

fn start_cluster() -> Cluster {
    let dir = PathBuf::from(format!(
        "/tmp/portcullis-pg-{}-{}",
        std::process::id(),
        free_port()
    ));
    run(Command::new("install")
        .args(["-d", "-o", "postgres", "-g", "postgres"])
        .arg(&dir));
    let port = free_port();

    // A CA and a server certificate for 127.0.0.1, plus an unrelated CA for the negative case.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test db ca");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = other_params.self_signed(&other_key).unwrap();

    write_owned(&dir.join("server.crt"), &server_cert.pem(), 0o644);
    write_owned(&dir.join("server.key"), &server_key.serialize_pem(), 0o600);
    write_owned(&dir.join("ca.pem"), &ca_cert.pem(), 0o644);
    write_owned(&dir.join("other-ca.pem"), &other_ca.pem(), 0o644);

    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]));
    write_owned(
        &dir.join("data/pg_hba.conf"),
        "local all all trust\n\
         hostssl all tls_user 127.0.0.1/32 scram-sha-256\n\
         host all scram_user 127.0.0.1/32 scram-sha-256\n\
         host all md5_user 127.0.0.1/32 md5\n\
         host all clear_user 127.0.0.1/32 password\n\
         host all postgres 127.0.0.1/32 trust\n",
        0o600,
    );
    let opts = format!(
        "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key",
        d = dir.display()
    );
    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin("pg_ctl"))
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("pg.log"))
        .args(["-w", "-o", &opts, "start"]));
    let sql = "create role scram_user login password 'scram-pw';\
               create role tls_user login password 'tls-pw';\
               set password_encryption = 'md5';\
               create role md5_user login password 'md5-pw';\
               create role clear_user login password 'clear-pw';";
    run(Command::new("psql").args(["-h"]).arg(&dir).args([
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]));
    let ca_pem = dir.join("ca.pem");
    let other_ca_pem = dir.join("other-ca.pem");
    Cluster {
        dir,
        port,
        ca_pem,
        other_ca_pem,
    }
}

fn target(name: &str, port: u16, user: &str, password: &str, tls: UpstreamTls) -> Target {
    Target {
        name: name.into(),
        protocol: Protocol::Postgres,
        host: "127.0.0.1".into(),
        port,
        database: "postgres".into(),
        user: user.into(),
        password: Some(password.into()),
        tls,
        labels: BTreeMap::new(),
    }
}

#[tokio::test]
async fn logs_in_upstream_with_every_password_method_and_verified_tls() {
    let cluster = start_cluster();
    let p = cluster.port;
    let verify = |ca: &Path| UpstreamTls::VerifyFull {
        ca_file: Some(ca.to_path_buf()),
        server_name: None,
    };
    let targets = Targets::new([
        target("scram", p, "scram_user", "scram-pw", UpstreamTls::Disable),
        target("md5", p, "md5_user", "md5-pw", UpstreamTls::Disable),
        target("clear", p, "clear_user", "clear-pw", UpstreamTls::Disable),
        target("tls", p, "tls_user", "tls-pw", verify(&cluster.ca_pem)),
        target(
            "tls-wrong-ca",
            p,
            "tls_user",
            "tls-pw",
            verify(&cluster.other_ca_pem),
        ),
        target(
            "tls-required-plain",
            p,
            "tls_user",
            "tls-pw",
            UpstreamTls::Disable,
        ),
        target(
            "wrong-password",
            p,
            "scram_user",
            "not-it",
            UpstreamTls::Disable,
        ),
    ]);
    let gateway = Gateway::builder()
        .authenticator(Arc::new(AnyUser))
        .targets(targets)
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
    let listener = PostgresListener::bind(config, gateway).await.unwrap();
    let port = listener.local_addr().port();
    tokio::spawn(listener.run());

    let connect = |db: &'static str| async move {
        tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=alice password=x dbname={db}"),
            NoTls,
        )
        .await
    };
    for (db, user) in [
        ("scram", "scram_user"),
        ("md5", "md5_user"),
        ("clear", "clear_user"),
        ("tls", "tls_user"),
    ] {
        let (client, conn) = connect(db).await.unwrap_or_else(|e| panic!("{db}: {e}"));
        tokio::spawn(conn);
        let row = client.query_one("select current_user::text, coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false)", &[]).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), user, "{db}");
        assert_eq!(row.get::<_, bool>(1), db == "tls", "{db}: upstream TLS");
    }
    for db in ["tls-wrong-ca", "tls-required-plain", "wrong-password"] {
        let err = connect(db)
            .await
            .err()
            .unwrap_or_else(|| panic!("{db} should fail"));
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{db}: {err}"));
        assert_eq!(db_err.code().code(), "08001", "{db}");
        let text = format!("{} {:?}", db_err.message(), db_err.detail());
        assert!(
            !text.contains("tls-pw") && !text.contains("not-it"),
            "{db} leaks the password: {text}"
        );
    }
}
