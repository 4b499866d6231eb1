//! The PostgreSQL sink over TLS, against a throw-away PostgreSQL cluster this test starts with
//! `ssl = on`, a server certificate from a throw-away CA, and a pg_hba.conf that refuses every
//! TCP connection without TLS (so a record that lands proves it went through TLS).
//!
//! Needs the PostgreSQL server binaries (`initdb`, `pg_ctl`) and `runuser` (initdb refuses root);
//! nextest runs it alone (`throwaway` in the name).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use audit::{verify, AuditLog, Durability, OpenMode, PostgresSink, SinkConfig, SslMode};
use common::*;
use gateway_core::AuditSink;

/// A private PostgreSQL cluster, stopped and removed on drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    /// A connection string to the cluster's `postgres` database over TCP with `extra` appended.
    fn url(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres {extra}",
            self.port
        )
    }

    /// Runs SQL over the cluster's Unix socket (which pg_hba.conf trusts without TLS).
    fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
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

/// Debian keeps the server binaries out of PATH.
fn pg_bin(name: &str) -> PathBuf {
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

/// A CA (PEM) and, when `server` is given, a certificate for 127.0.0.1/localhost it signed with
/// its key: `(ca_pem, Some((cert_pem, key_pem)))`.
fn ca(name: &str, server: bool) -> (String, Option<(String, String)>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    if !server {
        return (ca_cert.pem(), None);
    }
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), Some((cert.pem(), key.serialize_pem())))
}

fn start_cluster() -> Cluster {
    let dir = PathBuf::from(format!(
        "/tmp/portcullis-audit-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    run(Command::new("install")
        .args(["-d", "-o", "postgres", "-g", "postgres"])
        .arg(&dir));
    let port = free_port();
    let (ca_pem, server) = ca("audit db test CA", true);
    let (cert_pem, key_pem) = server.unwrap();
    let (other_ca_pem, _) = ca("unrelated test CA", false);
    write_owned(&dir.join("server.crt"), &cert_pem, 0o644);
    write_owned(&dir.join("server.key"), &key_pem, 0o600);
    write_owned(&dir.join("ca.pem"), &ca_pem, 0o644);
    write_owned(&dir.join("other-ca.pem"), &other_ca_pem, 0o644);

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
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
        0o600,
    );
    let opts = format!(
        "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={d}/server.crt \
         -c ssl_key_file={d}/server.key",
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
    Cluster {
        ca_file: dir.join("ca.pem"),
        other_ca_file: dir.join("other-ca.pem"),
        dir,
        port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_over_tls_throwaway() {
    let cluster = start_cluster();
    let node = "gw-tls";

    // verify-full with the cluster's CA: the gateway's writer goes through TLS (pg_hba refuses
    // anything else over TCP), signed, and reads back the same way.
    let sink_config = SinkConfig::Postgres {
        url: cluster.url("sslmode=verify-full"),
        table: "audit_records".into(),
        ca_file: Some(cluster.ca_file.clone()),
    };
    let mut cfg = config(vec![sink_config.clone()], Durability::Sync);
    cfg.check(Path::new("/nonexistent"))
        .expect("a verify-full sink with a CA file is a valid configuration");
    let (signer, public) = keys();
    let sink = audit::open_sink(&sink_config, OpenMode::Write(Durability::Sync))
        .await
        .unwrap_or_else(|e| panic!("verify-full with the right CA: {e}"));
    let log = AuditLog::with_sinks(node, &cfg, vec![sink], Some(signer))
        .await
        .unwrap();
    for i in 0..12 {
        log.record(event(node, i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    let reader = PostgresSink::open(
        &cluster.url("sslmode=verify-full"),
        "audit_records",
        Some(&cluster.ca_file),
        OpenMode::Read,
    )
    .await
    .unwrap();
    assert_eq!(reader.ssl_mode(), SslMode::VerifyFull);
    let report = verify(&reader, std::slice::from_ref(&public))
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.nodes[0].records >= 12, "{report:?}");
    // What the server saw: only TLS connections reach it over TCP, and the rows are there.
    let stored = cluster.psql(&format!(
        "select count(*) from audit_records where node = '{node}' and event = 'statement_started'"
    ));
    assert!(stored.parse::<u32>().unwrap() >= 10, "{stored}");

    // The same URL as a `postgresql://` URL with sslmode among other parameters.
    let url = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?application_name=audit-test&sslmode=verify-full",
        cluster.port
    );
    PostgresSink::open(
        &url,
        "audit_records",
        Some(&cluster.ca_file),
        OpenMode::Read,
    )
    .await
    .expect("URL form with verify-full");

    // A CA that did not sign the server's certificate: refused, and the message says why and
    // what the certificate had to satisfy.
    let wrong = PostgresSink::open(
        &cluster.url("sslmode=verify-full"),
        "audit_records",
        Some(&cluster.other_ca_file),
        OpenMode::Read,
    )
    .await
    .err()
    .expect("a wrong CA must fail");
    let message = wrong.to_string();
    assert!(message.contains("TLS handshake"), "{message}");
    assert!(
        message.contains("UnknownIssuer") || message.contains("unknown issuer"),
        "{message}"
    );
    assert!(message.contains("other-ca.pem"), "{message}");
    assert!(message.contains("sslmode=verify-full"), "{message}");

    // The bundled Mozilla roots do not trust a private CA either.
    let roots = PostgresSink::open(
        &cluster.url("sslmode=verify-full"),
        "audit_records",
        None,
        OpenMode::Read,
    )
    .await
    .err()
    .expect("a private CA is not in the bundled roots");
    assert!(
        roots.to_string().contains("bundled Mozilla roots"),
        "{roots}"
    );

    // The host name is checked: connect to 127.0.0.1 (`hostaddr`) under a name the certificate
    // (127.0.0.1, localhost) does not carry.
    let misnamed = PostgresSink::open(
        &format!(
            "host=db.invalid hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full",
            cluster.port
        ),
        "audit_records",
        Some(&cluster.ca_file),
        OpenMode::Read,
    )
    .await
    .err()
    .expect("a certificate that does not name the host must fail");
    assert!(
        misnamed.to_string().contains("NotValidForName")
            || misnamed.to_string().contains("not valid for name"),
        "{misnamed}"
    );

    // require: encrypted, certificate unchecked (libpq's meaning), so it connects without a CA.
    let require = PostgresSink::open(
        &cluster.url("sslmode=require"),
        "audit_records",
        None,
        OpenMode::Read,
    )
    .await
    .expect("sslmode=require");
    assert_eq!(require.ssl_mode(), SslMode::Require);
    assert!(verify(&require, std::slice::from_ref(&public))
        .await
        .unwrap()
        .is_ok());

    // Without sslmode the sink never tries TLS, so this server (hostnossl reject) refuses it.
    let plain = PostgresSink::open(&cluster.url(""), "audit_records", None, OpenMode::Read)
        .await
        .err()
        .expect("plain TCP is refused by pg_hba.conf");
    assert!(plain.to_string().contains("no encryption"), "{plain}");
}
