//! The configuration file: one TOML document, read into a checked [`Config`].
//!
//! Reading happens in two steps. First the text is deserialized into the file schema below
//! (unknown keys are refused, and every string value has its `${ENV_VAR}` references replaced
//! while it is read, so that a missing variable is reported at that value). Then the schema is
//! checked as a whole: every problem found is collected into [`ConfigErrors`], each with the
//! file, line and column of the value at fault, so that one run of `portcullis check-config`
//! shows all of them.
//!
//! Relative paths in the file are resolved against the directory of the file itself, never
//! against the working directory of the process.
//!
//! # Keys
//!
//! The doc comments on the schema structs in `schema.rs` (`GatewaySection`, `PostgresSection`,
//! `MysqlSection`, ...) and on the sections other crates own (`policy::rules::PolicySection`,
//! `audit::AuditConfig`, `masking::config::MaskingSection`) are the reference for every key;
//! `examples/full.toml` shows all of them in use (and `tests/example_configs.rs` fails when it
//! lacks one).
//!
//! # Layout
//!
//! `interpolate.rs` reads string values with `${VAR}`; `schema.rs` is the file as written;
//! `check/` checks it into a [`Config`], a file per group of sections (`listeners.rs`:
//! `[gateway]`, `[postgres]` and `[mysql]`; `authentication.rs`: `[identity]`; `targets.rs`;
//! `telemetry.rs`: `[telemetry]` and `[admin]`; `sections.rs`: the sections other crates
//! define).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_core::Target;

mod check;
mod interpolate;
mod schema;
#[cfg(test)]
pub(crate) mod tests;

use check::Checker;
use schema::FileConfig;

// ---------------------------------------------------------------------------------------------
// Checked configuration: what the rest of the binary uses.
// ---------------------------------------------------------------------------------------------

/// A checked configuration, ready to start a gateway from. Paths are absolute or relative to the
/// working directory (already resolved against the config file's directory).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the configuration came from, as given.
    pub source: PathBuf,
    /// Settings of this gateway node.
    pub gateway: GatewaySettings,
    /// `[postgres]`: the PostgreSQL listener, if configured.
    pub postgres: Option<ListenerSettings>,
    /// `[mysql]`: the MySQL listener, if configured (its TLS files never name a client CA).
    pub mysql: Option<ListenerSettings>,
    /// How clients prove who they are.
    pub identity: IdentitySettings,
    /// The upstream databases, in file order.
    pub targets: Vec<Target>,
    /// `[policy]`: access rules, statement rules and built-in guardrails. `None`: every
    /// authenticated identity may run anything on every target.
    pub policy: Option<policy::RuleSet>,
    /// `[audit]`, checked, with paths resolved and the default SQLite sink in `gateway.data_dir`
    /// when no sink is configured.
    pub audit: audit::AuditConfig,
    /// `[masking]`, checked: which result columns are masked for whom. `None`: nothing is masked.
    pub masking: Option<masking::MaskingConfig>,
    /// `[approvals]`, checked, with its store's path resolved (default `approvals.db` in
    /// `gateway.data_dir`). `None`: statements that rules hold for approval are refused.
    pub approvals: Option<approvals::ApprovalsConfig>,
    /// `[admin]`: the admin HTTP listener (metrics, health, readiness, admin API), if configured.
    pub admin: Option<AdminSettings>,
    /// `[telemetry]`: trace export, when an `otlp_endpoint` is configured.
    pub telemetry: Option<TelemetrySettings>,
}

/// `[telemetry]`, checked: where and how spans are exported (OTLP over HTTP, protobuf).
#[derive(Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The URL spans are POSTed to, `/v1/traces` included.
    pub otlp_endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Extra HTTP headers sent with every export (e.g. `authorization`); values may be secrets.
    pub headers: BTreeMap<String, String>,
    /// Fraction of sessions (traces) exported, `0.0..=1.0`; statements follow their session.
    pub sample_ratio: f64,
}

impl fmt::Debug for TelemetrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values often carry a token: show only their names.
        f.debug_struct("TelemetrySettings")
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("service_name", &self.service_name)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("sample_ratio", &self.sample_ratio)
            .finish()
    }
}

/// `[admin]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Address of the admin HTTP listener.
    pub listen: SocketAddr,
    /// HTTPS with these files (no client certificates), if configured.
    pub tls: Option<ListenerTlsFiles>,
}

/// `[gateway]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Node name recorded in every audit record.
    pub node: String,
    /// Directory for the node's own files (the default SQLite audit trail).
    pub data_dir: PathBuf,
    /// Longest time from accept to an authenticated session.
    pub handshake_timeout: Duration,
    /// On shutdown, how long sessions may take to finish the work in flight before they are cut
    /// off.
    pub drain_timeout: Duration,
    /// Largest single protocol message accepted from a client.
    pub max_message_bytes: usize,
    /// `tracing` filter directive used when `RUST_LOG` is not set.
    pub log_level: String,
    /// Session worker threads: `None` one per core, `Some(0)` none (sessions run on the shared
    /// multi-threaded runtime), `Some(n)` n of them.
    pub workers: Option<usize>,
}

/// A listener section, `[postgres]` or `[mysql]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS for clients, if configured.
    pub tls: Option<ListenerTlsFiles>,
    /// Refuse clients that do not negotiate TLS.
    pub require_tls: bool,
    /// Accept passwords and tokens over plain TCP from non-loopback clients.
    pub allow_plaintext_password: bool,
    /// Refuse a login whose user name differs from the authenticated subject.
    pub require_user_match: bool,
}

/// The PEM files that make up a listener's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsFiles {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Private key of the leaf certificate.
    pub key_file: PathBuf,
    /// CA certificates that client certificates are verified against; `None`: no client
    /// certificates are requested.
    pub client_ca_file: Option<PathBuf>,
}

/// `[identity]`, checked.
#[derive(Debug, Clone, Default)]
pub struct IdentitySettings {
    /// Tokens presented in the password field.
    pub jwt: Option<JwtSettings>,
    /// Static local users.
    pub users: Vec<StaticUserSettings>,
    /// Identity from verified TLS client certificates.
    pub client_cert: Option<ClientCertSettings>,
}

/// `[identity.jwt]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Accepted `aud` values (at least one).
    pub audience: Vec<String>,
    /// Accepted signature algorithms (JOSE names, never `none`).
    pub algorithms: Vec<String>,
    /// Where the verification keys come from.
    pub keys: JwtKeys,
    /// Claim that names the subject.
    pub subject_claim: String,
    /// Claim that lists the groups.
    pub groups_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Where JWT verification keys come from. `hs256_secret_file` is read while the configuration is
/// loaded and becomes [`JwtKeys::Hs256Secret`].
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKeys {
    /// A shared secret for the HMAC algorithms.
    Hs256Secret(String),
    /// A PEM public key file.
    PublicKeyPemFile(PathBuf),
    /// A JWKS document on disk.
    JwksFile(PathBuf),
    /// A JWKS document fetched from a URL.
    JwksUrl(String),
}

impl fmt::Debug for JwtKeys {
    // Hand-written so that the shared secret can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKeys::Hs256Secret(_) => f.write_str("Hs256Secret(<redacted>)"),
            JwtKeys::PublicKeyPemFile(p) => f.debug_tuple("PublicKeyPemFile").field(p).finish(),
            JwtKeys::JwksFile(p) => f.debug_tuple("JwksFile").field(p).finish(),
            JwtKeys::JwksUrl(u) => f.debug_tuple("JwksUrl").field(u).finish(),
        }
    }
}

/// One `[[identity.users]]` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticUserSettings {
    /// User name clients log in with.
    pub name: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Groups of the user.
    pub groups: Vec<String>,
}

/// `[identity.client_cert]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertSettings {
    /// Which part of the certificate subject becomes the identity's subject.
    pub subject: CertSubject,
    /// Whether the subject's organizational units become groups.
    pub groups_from_ou: bool,
}

/// Which part of a client certificate names the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSubject {
    /// The subject's common name (`cn`).
    CommonName,
    /// The whole distinguished name, RFC 4514 style (`dn`).
    DistinguishedName,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A position in the configuration file, both 1-based; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line number.
    pub line: usize,
    /// Column number.
    pub column: usize,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given.
    pub file: PathBuf,
    /// Where in the file; `None` when the file as a whole is at fault (e.g. unreadable).
    pub location: Option<Location>,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(Location { line, column }) => {
                write!(
                    f,
                    "{}:{line}:{column}: {}",
                    self.file.display(),
                    self.message
                )
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a configuration file, in file order; displayed one per line as
/// `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// The individual errors; never empty.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// A single problem with the file as a whole (no line or column), e.g. a change that a
    /// running gateway cannot take without a restart.
    pub fn whole_file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ConfigErrors {
            errors: vec![ConfigError {
                file: file.into(),
                location: None,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            errors: vec![ConfigError {
                file: path.to_path_buf(),
                location: None,
                message: format!("cannot read the configuration file: {e}"),
            }],
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and checks `text`. `origin` is the path of the file it came from: it names the file
    /// in error messages, and relative paths in the file are resolved against its directory.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
        let mut checker = Checker::new(text, origin);
        // Every `${VAR}` problem in the file, found before the schema is read: deserializing stops
        // at the first error, and one run should show every unset variable.
        if let Ok(document) = toml::de::DeTable::parse(text) {
            checker.check_references(document.get_ref());
        }
        let file: FileConfig = match toml::from_str(text) {
            Ok(file) => file,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                checker.error(span, e.message().trim_end().to_owned());
                return Err(checker.into_errors());
            }
        };
        let config = checker.check(file);
        if checker.errors.is_empty() {
            Ok(config)
        } else {
            Err(checker.into_errors())
        }
    }
}

/// Parses a duration string (`"500ms"`, `"10s"`, `"5m"`, `"1h30m"`, `"2d"`): one grammar for the
/// whole config, defined beside the `[audit]` keys that use it too.
pub use audit::parse_duration;
