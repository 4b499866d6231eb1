//! The end-to-end harness: a fresh PostgreSQL database per test, a gateway started in-process on
//! port 0 in front of it (built from a real configuration file text), tokens, TLS material, and
//! helpers that drive real clients (tokio-postgres, psql, pgbench, Python drivers) against it.
//!
//! Every test owns its database (`pc_<random>`, dropped `WITH (FORCE)` when the [`TestGateway`]
//! is dropped) and its gateway, so tests are independent and may run in parallel.
//!
//! Requirements: PostgreSQL on 127.0.0.1:5432 accepting user `postgres` without a password
//! (`scripts/test.sh` makes sure of it), `psql`/`pgbench` on the PATH, and a Python with psycopg 3,
//! asyncpg, PyMySQL and mysql-connector-python (`PORTCULLIS_TEST_PYTHON`, or
//! `target/test-venv/bin/python`). The MySQL side of the harness is in [`mysql`].

#![allow(dead_code)] // Each test file uses a different part of the harness.

pub mod mysql;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use identity::{MintKey, MintRequest};
use portcullis::config::Config;
use portcullis::server::{RunningServer, Server};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// How long a login through the test gateway may take before the test fails saying so. The
/// gateway bounds every handshake itself (`handshake_timeout`, 2 s in tests), so a login that
/// outlasts this was never served at all: the failure names that instead of leaving the test to
/// the runner's kill.
pub const LOGIN_BOUND: Duration = Duration::from_secs(30);

/// How long [`TestGateway::shutdown`] may take: the drain timeout (30 s by default), the wait for
/// cut-off sessions (5 s) and a margin.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(60);

/// Awaits a login, failing the test with `what` if it outlasts [`LOGIN_BOUND`].
pub async fn bounded_login<T>(what: &str, login: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LOGIN_BOUND, login)
        .await
        .unwrap_or_else(|_| {
            panic!("{what}: no answer to the login within {LOGIN_BOUND:?}, though the gateway bounds every handshake: the connection was never served")
        })
}

/// The upstream every test database lives on.
pub const UPSTREAM_HOST: &str = "127.0.0.1";
/// Its port.
pub const UPSTREAM_PORT: u16 = 5432;
/// Issuer the test gateways require.
pub const ISSUER: &str = "test-issuer";
/// Audience the test gateways require.
pub const AUDIENCE: &str = "portcullis";
/// Longest any external client (psql, pgbench, Python) may run before the harness kills it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Connection string of the upstream PostgreSQL as the `postgres` superuser, for set-up and for
/// reference results read directly (not through the gateway).
pub fn upstream_conninfo(database: &str) -> String {
    format!("host={UPSTREAM_HOST} port={UPSTREAM_PORT} user=postgres dbname={database}")
}

/// Connects directly to the upstream (bypassing the gateway).
pub async fn connect_upstream(database: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&upstream_conninfo(database), NoTls).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to PostgreSQL at {UPSTREAM_HOST}:{UPSTREAM_PORT} as postgres ({e}); \
                 the end-to-end tests need it running with trust authentication (scripts/test.sh starts it)"
        )
    });
    tokio::spawn(conn);
    client
}

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

/// A database created for one test; dropped (`WITH (FORCE)`) when this is dropped.
pub struct TestDb {
    /// Its name, which is also the gateway target name clients ask for.
    pub name: String,
}

impl TestDb {
    /// Creates `pc_<unix time>_<random>`, after dropping such databases left over (by killed test
    /// processes) from more than an hour ago.
    pub async fn create() -> TestDb {
        let name = format!("pc_{}_{:08x}", unix_now(), rand::random::<u32>());
        let admin = connect_upstream("postgres").await;
        sweep_stale_databases(&admin).await;
        // Concurrent CREATE DATABASE can fail while another session happens to use template1;
        // that is transient, so retry a few times.
        let mut attempt = 0;
        loop {
            match admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 10 => {
                    attempt += 1;
                    eprintln!("CREATE DATABASE {name} failed ({e}), retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("CREATE DATABASE {name}: {e}"),
            }
        }
        TestDb { name }
    }

    /// A direct (gateway-less) connection to this database as the superuser.
    pub async fn connect_direct(&self) -> Client {
        connect_upstream(&self.name).await
    }
}

/// Drops test databases whose name says they were created more than an hour ago. Runs once per
/// test process.
async fn sweep_stale_databases(admin: &Client) {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let Ok(rows) = admin
        .query(
            "select datname from pg_database where datname ~ '^pc_[0-9]+_[0-9a-f]+$'",
            &[],
        )
        .await
    else {
        return;
    };
    let cutoff = unix_now().saturating_sub(3600);
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .split('_')
            .nth(1)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if created < cutoff {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Synchronous on purpose: Drop cannot await, and psql is always there.
        let result = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-w",
                "-h",
                UPSTREAM_HOST,
                "-p",
                &UPSTREAM_PORT.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                "postgres",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "dropping {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("dropping {}: cannot run psql: {e}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------------

/// A throw-away CA with a server certificate for 127.0.0.1/localhost, able to issue client
/// certificates. Files live in their own temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate (PEM).
    pub ca_file: PathBuf,
    /// The server certificate (PEM).
    pub server_cert_file: PathBuf,
    /// The server key (PEM).
    pub server_key_file: PathBuf,
}

/// A client certificate and its key, as files (for libpq) and as DER (for rustls).
pub struct ClientCert {
    /// Certificate PEM file.
    pub cert_file: PathBuf,
    /// Key PEM file (mode 0600, as libpq demands).
    pub key_file: PathBuf,
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// PKCS#8 key DER.
    pub key_der: Vec<u8>,
}

impl Pki {
    /// Generates a CA named `name` and a server certificate signed by it.
    pub fn generate(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(
            ca_params,
            rcgen::KeyPair::generate().expect("CA key"),
        )
        .expect("CA certificate");

        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut server_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test server");
        server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params
            .signed_by(&server_key, &ca)
            .expect("server certificate");

        let ca_file = dir.path().join("ca.pem");
        let server_cert_file = dir.path().join("server.pem");
        let server_key_file = dir.path().join("server.key");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        std::fs::write(&server_cert_file, server.pem()).expect("write server cert");
        write_private(&server_key_file, server_key.serialize_pem().as_bytes());
        Pki {
            dir,
            ca,
            ca_file,
            server_cert_file,
            server_key_file,
        }
    }

    /// Issues a client certificate whose subject CN is `cn`.
    pub fn client_cert(&self, cn: &str) -> ClientCert {
        let key = rcgen::KeyPair::generate().expect("client key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("client certificate");
        let stem = format!("client-{:08x}", rand::random::<u32>());
        let cert_file = self.dir.path().join(format!("{stem}.pem"));
        let key_file = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write client cert");
        write_private(&key_file, key.serialize_pem().as_bytes());
        ClientCert {
            cert_file,
            key_file,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A rustls client configuration trusting this CA, optionally presenting `cert`.
    pub fn rustls_client(&self, cert: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.der().clone())
            .expect("CA into root store");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match cert {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(
                    vec![rustls::pki_types::CertificateDer::from(c.cert_der.clone())],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(c.key_der.clone().into()),
                )
                .expect("client auth cert"),
        };
        Arc::new(config)
    }
}

fn write_private(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
}

// ---------------------------------------------------------------------------------------------
// tokio-postgres over rustls (aws-lc-rs), so that TLS is tested from Rust without a second
// crypto provider in the tree.
// ---------------------------------------------------------------------------------------------

pub mod tls {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

    /// `MakeTlsConnect` for tokio-postgres on a rustls client configuration.
    #[derive(Clone)]
    pub struct RustlsConnector(pub Arc<rustls::ClientConfig>);

    /// One connection attempt's connector.
    pub struct RustlsConnect {
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    }

    /// The TLS stream handed to tokio-postgres.
    pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

    impl<S> MakeTlsConnect<S> for RustlsConnector
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = RustlsStream<S>;
        type TlsConnect = RustlsConnect;
        type Error = io::Error;

        fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
            let name = rustls::pki_types::ServerName::try_from(domain.to_owned())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(RustlsConnect {
                config: self.0.clone(),
                name,
            })
        }
    }

    impl<S> TlsConnect<S> for RustlsConnect
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = RustlsStream<S>;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

        fn connect(self, stream: S) -> Self::Future {
            Box::pin(async move {
                let s = tokio_rustls::TlsConnector::from(self.config)
                    .connect(self.name, stream)
                    .await?;
                Ok(RustlsStream(s))
            })
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
        fn channel_binding(&self) -> ChannelBinding {
            // The gateway authenticates clients with a cleartext password or a certificate; no
            // SCRAM channel binding is ever needed.
            ChannelBinding::none()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

/// How tokens are verified by the gateway under test.
#[derive(Clone)]
pub enum JwtKeys {
    /// `hs256_secret` (the harness's random secret), algorithms `["HS256"]`.
    Hs256,
    /// `public_key_file` with this PEM public key, algorithms `[alg]`.
    PublicKey {
        /// JOSE algorithm name.
        alg: String,
        /// PEM text of the public key.
        pem: String,
    },
}

/// A static `[[identity.users]]` entry.
#[derive(Clone)]
pub struct StaticUser {
    /// User name.
    pub name: String,
    /// Clear password (hashed into the config).
    pub password: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// What the gateway under test is configured with.
#[derive(Clone)]
pub struct Options {
    /// Serve TLS with a generated certificate.
    pub tls: bool,
    /// Verify client certificates against the generated CA (`[identity.client_cert]` too).
    pub client_certs: bool,
    /// `require_tls`.
    pub require_tls: bool,
    /// `[[identity.users]]`.
    pub users: Vec<StaticUser>,
    /// `[identity.jwt]` keys.
    pub jwt: JwtKeys,
    /// `handshake_timeout`, a duration string.
    pub handshake_timeout: String,
    /// `max_message_bytes`.
    pub max_message_bytes: u64,
    /// Further `[[targets]]` beside the test database: (name, port, upstream database), all on
    /// 127.0.0.1 as user postgres.
    pub extra_targets: Vec<(String, u16, String)>,
    /// TOML appended to the configuration verbatim (an `[audit]` section, say).
    pub extra_config: String,
    /// Lines added to the `[postgres]` section verbatim (`require_user_match = true`, say).
    pub postgres_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls: false,
            client_certs: false,
            require_tls: false,
            users: Vec::new(),
            jwt: JwtKeys::Hs256,
            handshake_timeout: "2s".into(),
            // Large enough for the 5 MB bytea and COPY chunks of the client tests; the bad-input
            // tests set their own small limit.
            max_message_bytes: 64 * 1024 * 1024,
            extra_targets: Vec::new(),
            extra_config: String::new(),
            postgres_extra: String::new(),
        }
    }
}

/// A running gateway in front of a fresh database.
pub struct TestGateway {
    // Field order is drop order: stop the gateway before dropping the database.
    server: Option<RunningServer>,
    /// The database (and target name).
    pub db: TestDb,
    /// The listener's address.
    pub addr: SocketAddr,
    /// The HMAC secret tokens are signed with (for `JwtKeys::Hs256`).
    pub secret: String,
    /// TLS material when `Options::tls`.
    pub pki: Option<Pki>,
    /// The configuration file text the gateway was started from.
    pub config_text: String,
    dir: tempfile::TempDir,
}

impl TestGateway {
    /// A database and a gateway with default options (JWT HS256, plain TCP).
    pub async fn start() -> TestGateway {
        Self::start_with(Options::default()).await
    }

    /// A database and a gateway configured by `options`.
    pub async fn start_with(options: Options) -> TestGateway {
        init_logging();
        let db = TestDb::create().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = format!("test-secret-{:032x}", rand::random::<u128>());
        let pki = options.tls.then(|| Pki::generate(&db.name));

        let mut text = String::new();
        text.push_str(&format!(
            "[gateway]\nnode = \"test\"\nhandshake_timeout = \"{}\"\nmax_message_bytes = {}\n\n",
            options.handshake_timeout, options.max_message_bytes
        ));
        text.push_str("[postgres]\nlisten = \"127.0.0.1:0\"\n");
        if let Some(pki) = &pki {
            text.push_str(&format!(
                "tls_cert = {}\ntls_key = {}\n",
                toml_str(&pki.server_cert_file.display().to_string()),
                toml_str(&pki.server_key_file.display().to_string())
            ));
            if options.client_certs {
                text.push_str(&format!(
                    "tls_client_ca = {}\n",
                    toml_str(&pki.ca_file.display().to_string())
                ));
            }
        }
        text.push_str(&format!(
            "require_tls = {}\nallow_plaintext_password = false\n{}\n\n",
            options.require_tls, options.postgres_extra
        ));

        text.push_str(&format!(
            "[identity.jwt]\nissuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\"]\nsubject_claim = \"sub\"\ngroups_claim = \"groups\"\nleeway = \"5s\"\n"
        ));
        match &options.jwt {
            JwtKeys::Hs256 => {
                text.push_str(&format!(
                    "algorithms = [\"HS256\"]\nhs256_secret = {}\n\n",
                    toml_str(&secret)
                ));
            }
            JwtKeys::PublicKey { alg, pem } => {
                let key_file = dir.path().join("jwt-public.pem");
                std::fs::write(&key_file, pem).expect("write public key");
                text.push_str(&format!(
                    "algorithms = [\"{alg}\"]\npublic_key_file = {}\n\n",
                    toml_str(&key_file.display().to_string())
                ));
            }
        }
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
        if options.client_certs {
            text.push_str("[identity.client_cert]\nsubject = \"cn\"\ngroups_from_ou = false\n\n");
        }
        text.push_str(&format!(
            "[[targets]]\nname = \"{name}\"\nhost = \"{UPSTREAM_HOST}\"\nport = {UPSTREAM_PORT}\ndatabase = \"{name}\"\nuser = \"postgres\"\ntls = \"disable\"\n",
            name = db.name
        ));
        for (name, port, database) in &options.extra_targets {
            text.push_str(&format!(
                "\n[[targets]]\nname = {}\nhost = \"{UPSTREAM_HOST}\"\nport = {port}\ndatabase = {}\nuser = \"postgres\"\n",
                toml_str(name),
                toml_str(database)
            ));
        }

        text.push('\n');
        text.push_str(&options.extra_config);
        let origin = dir.path().join("portcullis.toml");
        std::fs::write(&origin, &text).expect("write config");
        let config = Config::from_toml_str(&text, &origin).unwrap_or_else(|e| {
            panic!("the test configuration was refused:\n{e}\n--- config ---\n{text}")
        });
        let server = Server::start(config)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e:#}"));
        let addr = server
            .postgres_addr()
            .expect("the configuration has a [postgres] listener");
        TestGateway {
            server: Some(server),
            db,
            addr,
            secret,
            pki,
            config_text: text,
            dir,
        }
    }

    /// The admin listener's base URL (`http://127.0.0.1:PORT`); the configuration must have
    /// `[admin]`.
    pub fn admin_url(&self) -> String {
        let addr = self
            .server
            .as_ref()
            .and_then(RunningServer::admin_addr)
            .expect("the configuration has an [admin] listener");
        format!("http://{addr}")
    }

    /// A valid token for `subject` in `groups`.
    pub fn token_in(&self, subject: &str, groups: &[&str]) -> String {
        let mut req = self.mint_request(subject);
        req.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        identity::mint_token(&req).expect("mint token")
    }

    /// Stops the gateway and starts it again from the same configuration file (same data
    /// directory, so the same trail and approval store); the listeners get new ports.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(SHUTDOWN_BOUND, server.shutdown())
                .await
                .expect("the gateway shuts down");
        }
        let origin = self.dir.path().join("portcullis.toml");
        let config = Config::from_toml_str(&self.config_text, &origin).expect("same config");
        let server = Server::start(config)
            .await
            .unwrap_or_else(|e| panic!("gateway did not restart: {e:#}"));
        self.addr = server.postgres_addr().expect("[postgres]");
        self.server = Some(server);
    }

    /// The target (database) name clients ask for.
    pub fn database(&self) -> &str {
        &self.db.name
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A scratch directory that lives as long as the gateway.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Every record's payload in the default trail's segment log (`<scratch>/data/audit`), in
    /// chain order. A statement's "started" record is there before the statement runs; its
    /// "finished" one is written right after the result is relayed, so a test that wants it
    /// waits with [`trail_until`](Self::trail_until).
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

    /// A mint request for `subject` with the gateway's issuer, audience and key, valid 10 minutes.
    pub fn mint_request(&self, subject: &str) -> MintRequest {
        let mut req = MintRequest::new(
            MintKey::Hs256(self.secret.clone()),
            subject,
            Duration::from_secs(600),
        );
        req.issuer = Some(ISSUER.into());
        req.audience = Some(AUDIENCE.into());
        req.groups = vec!["engineering".into()];
        req
    }

    /// A valid token for `subject`.
    pub fn token(&self, subject: &str) -> String {
        identity::mint_token(&self.mint_request(subject)).expect("mint token")
    }

    /// A tokio-postgres configuration for this gateway: user `user`, `password`, the test database.
    pub fn pg_config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port())
            .user(user)
            .password(password)
            .dbname(self.database())
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Connects with tokio-postgres (plain TCP) using `token` as the password. Panics on error.
    pub async fn connect_tokio_postgres(&self, token: &str) -> Client {
        self.try_connect(token)
            .await
            .unwrap_or_else(|e| panic!("connect through the gateway: {e:?}"))
    }

    /// Connects with tokio-postgres (plain TCP) using `password`; returns the error.
    pub async fn try_connect(&self, password: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = bounded_login(
            "tokio-postgres over plain TCP",
            self.pg_config("alice", password).connect(NoTls),
        )
        .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("gateway connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Connects and hands back every notice and notification the connection receives.
    pub async fn connect_with_messages(
        &self,
        token: &str,
    ) -> (Client, tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>) {
        let (client, mut conn) = bounded_login(
            "tokio-postgres, with notices",
            self.pg_config("alice", token).connect(NoTls),
        )
        .await
        .expect("connect through the gateway");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(m) => {
                        let _ = tx.send(m);
                    }
                    Err(e) => {
                        eprintln!("gateway connection ended: {e}");
                        break;
                    }
                }
            }
        });
        (client, rx)
    }

    /// Connects over TLS (verifying the gateway against the test CA), optionally with a client
    /// certificate, with `password` if given.
    pub async fn try_connect_tls(
        &self,
        user: &str,
        password: Option<&str>,
        cert: Option<&ClientCert>,
    ) -> Result<Client, tokio_postgres::Error> {
        let pki = self.pki.as_ref().expect("gateway started without TLS");
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port())
            .user(user)
            .dbname(self.database())
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(10));
        if let Some(p) = password {
            config.password(p);
        }
        let (client, conn) = bounded_login(
            "tokio-postgres over TLS",
            config.connect(tls::RustlsConnector(pki.rustls_client(cert))),
        )
        .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("gateway connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Asserts that a fresh, well-behaved client still logs in and queries.
    pub async fn assert_serves_normal_clients(&self) {
        let client = self.connect_tokio_postgres(&self.token("healthy")).await;
        let v: i32 = client
            .query_one("select 40 + $1::int4", &[&2i32])
            .await
            .expect("query")
            .get(0);
        assert_eq!(v, 42);
        let rows = client
            .simple_query("select 'still here'")
            .await
            .expect("simple query");
        let first = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(first.as_deref(), Some("still here"));
    }

    /// The environment that points libpq (psql, pgbench, psycopg) and asyncpg at this gateway:
    /// `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER` and `PGPASSWORD` (a fresh token for `alice`).
    pub fn libpq_env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.port().to_string()),
            ("PGDATABASE".into(), self.database().into()),
            ("PGUSER".into(), "alice".into()),
            ("PGPASSWORD".into(), self.token("alice")),
            ("PGCONNECT_TIMEOUT".into(), "10".into()),
        ]
    }

    /// Runs psql against the gateway (`-X -w -v ON_ERROR_STOP=1` plus `args`) with
    /// [`libpq_env`](Self::libpq_env) overridden by `env` (an empty value removes a variable).
    pub async fn psql(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-w", "-v", "ON_ERROR_STOP=1"]).args(args);
        self.run_client(cmd, env).await
    }

    /// Runs pgbench against the gateway with `args`.
    pub async fn pgbench(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("pgbench");
        cmd.args(args);
        self.run_client(cmd, &[]).await
    }

    /// Runs a Python script (with psycopg 3 and asyncpg available) against the gateway.
    pub async fn python(&self, script: &str) -> Output {
        let file = self
            .dir
            .path()
            .join(format!("script-{:08x}.py", rand::random::<u32>()));
        std::fs::write(&file, script).expect("write script");
        let mut cmd = Command::new(python());
        cmd.arg(&file)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1");
        self.run_client(cmd, &[]).await
    }

    /// Runs any client program against the gateway, with [`libpq_env`](Self::libpq_env)
    /// overridden by `env` (an empty value removes a variable), killed after [`CLIENT_TIMEOUT`].
    pub async fn run_client(&self, mut cmd: Command, env: &[(&str, &str)]) -> Output {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in self.libpq_env() {
            cmd.env(k, v);
        }
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        // The gateway runs on this test's runtime: wait for the child off the async workers.
        tokio::task::spawn_blocking(move || run_with_timeout(cmd, CLIENT_TIMEOUT))
            .await
            .expect("client runner panicked")
    }

    /// Stops the gateway (then the database is dropped with `self`).
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(SHUTDOWN_BOUND, server.shutdown())
                .await
                .unwrap_or_else(|_| {
                    panic!("the gateway did not shut down within {SHUTDOWN_BOUND:?} (see the log for sessions still open per worker)")
                });
        }
    }
}

/// One call of a gateway's admin API at `base` (`http://IP:PORT`) with a bearer `token`:
/// (status, JSON body; the raw text as a JSON string when it is not JSON).
pub async fn admin_call(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let url = format!("{base}{path}");
    let (method, token) = (method.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let auth = format!("Bearer {token}");
        let mut response = match (method.as_str(), body) {
            ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
            (_, Some(body)) => agent
                .post(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(body.to_string()),
            (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
        }
        .expect("the admin API answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    })
    .await
    .expect("admin call panicked")
}

/// Every record's payload in the default trail's segment log of a gateway whose configuration
/// file is in `config_dir` (`<config_dir>/data/audit`), in chain order.
pub async fn default_trail(config_dir: &Path) -> Vec<serde_json::Value> {
    let sink = audit::SinkConfig::Jsonl {
        dir: config_dir.join("data/audit"),
        max_file_bytes: u64::MAX,
    };
    let sink = audit::open_sink(&sink, audit::OpenMode::Read)
        .await
        .expect("open the trail");
    let mut records = audit::search(sink.as_ref(), &audit::SearchFilter::default(), 1_000_000)
        .await
        .expect("read the trail");
    records.sort_by_key(|r| r.seq);
    records
        .into_iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("payloads are JSON"))
        .collect()
}

/// [`default_trail`] once `ready` holds for it, within 10 s.
pub async fn default_trail_until(
    config_dir: &Path,
    what: &str,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = default_trail(config_dir).await;
        if ready(&records) {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the trail never had {what}: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Quotes `s` as a TOML basic string. `${` is escaped so the config loader does not read it as an
/// environment variable reference.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out.replace("${", "$${")
}

/// Runs `cmd` with its output captured, killing it after `timeout` (then the exit status is a
/// failure and stderr says so).
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout)
}

/// [`run_with_timeout`] with `input` written to the program's standard input (then closed), or
/// no standard input at all.
pub fn run_with_input(mut cmd: Command, input: Option<Vec<u8>>, timeout: Duration) -> Output {
    let program = format!("{:?}", cmd.get_program());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // From a thread of its own: a program that answers before it has read everything must
        // not block the writer (nor the writer the reading of its answers).
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let status = loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                killed = true;
                break child.wait().expect("wait for killed child");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    if killed {
        stderr.extend_from_slice(
            format!("\n[harness: {program} killed after {timeout:?}]\n").as_bytes(),
        );
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The Python interpreter for driver tests: `PORTCULLIS_TEST_PYTHON`, else
/// `target/test-venv/bin/python`. Panics (the tests must run in CI, never skip) when neither exists.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_TEST_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "PORTCULLIS_TEST_PYTHON={} does not exist",
            p.display()
        );
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "no Python for the driver tests: set PORTCULLIS_TEST_PYTHON, or create {} with \
         `python3 -m venv target/test-venv && target/test-venv/bin/pip install 'psycopg[binary]' asyncpg PyMySQL mysql-connector-python==9.7.0` \
         (scripts/test.sh does this)",
        venv.display()
    );
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics with both streams unless the process succeeded; returns stdout.
pub fn assert_success(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// The SQLSTATE of a server error, or a panic describing what the error was instead.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.code().code().to_owned(),
        None => panic!("expected a server error with a SQLSTATE, got: {e:?}"),
    }
}

/// Seconds since the epoch, for hand-made claims.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn init_logging() {
    // `RUST_LOG=info cargo test ...` shows the gateway's log beside a failing test.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}
