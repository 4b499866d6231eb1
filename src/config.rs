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
//! The doc comments on the schema structs below (`GatewaySection`, `PostgresSection`, ...) are
//! the reference for every key; `examples/full.toml` shows all of them in use (and
//! `tests/example_configs.rs` fails when it lacks one).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_core::{Protocol, Target, UpstreamTls};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

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
    /// The PostgreSQL listener, if configured.
    pub postgres: Option<PostgresListenerSettings>,
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
    /// `[admin]`: the admin HTTP listener (metrics, health, readiness), if configured.
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

/// `[postgres]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresListenerSettings {
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

// ---------------------------------------------------------------------------------------------
// Strings with `${ENV_VAR}` interpolation, and durations
// ---------------------------------------------------------------------------------------------

/// A string value with `${NAME}` replaced by the environment variable `NAME` as it is
/// deserialized; `$${` stands for a literal `${`. A variable that is not set is an error at the
/// value, reported by [`Checker::check_references`] before deserializing, which therefore never
/// fails on one (the value then keeps its raw text, and the file is refused). Deliberately not
/// `Debug`: it may hold a secret.
#[derive(Clone, PartialEq, Eq)]
struct ConfigString(String);

impl ConfigString {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ConfigString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Ok(ConfigString(interpolate(&raw, env_lookup).unwrap_or(raw)))
    }
}

/// Looks up `${NAME}` in the environment, with the error messages config values show.
fn env_lookup(name: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) => Ok(value),
        Err(std::env::VarError::NotPresent) => Err(format!(
            "environment variable `{name}` is not set (write `$${{` for a literal `${{`)"
        )),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable `{name}` is not valid UTF-8"))
        }
    }
}

/// Replaces `${NAME}` in `raw` with `lookup(NAME)` and `$${` with `${`. Replacements are not
/// scanned again. On failure, every problem in `raw` (each unset variable, each malformed
/// reference), in order.
fn interpolate(
    raw: &str,
    lookup: impl Fn(&str) -> Result<String, String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(raw.len());
    let mut problems = Vec::new();
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                problems.push(
                    "unterminated `${`: write `${NAME}` for an environment variable or `$${` for a literal `${`"
                        .to_owned(),
                );
                rest = "";
                break;
            };
            let name = &body[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push(format!(
                    "`${{{name}}}` is not a valid environment variable reference: names are letters, digits and `_`, not starting with a digit"
                ));
            } else {
                match lookup(name) {
                    Ok(value) => out.push_str(&value),
                    Err(problem) => problems.push(problem),
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Parses a duration string (`"500ms"`, `"10s"`, `"5m"`, `"1h30m"`, `"2d"`): one grammar for the
/// whole config, defined beside the `[audit]` keys that use it too.
pub use audit::parse_duration;

// ---------------------------------------------------------------------------------------------
// The file schema. The doc comments here are the reference for every key.
// ---------------------------------------------------------------------------------------------

type Str = Spanned<ConfigString>;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// `[gateway]`: settings of this node. Optional.
    #[serde(default)]
    gateway: GatewaySection,
    /// `[postgres]`: the PostgreSQL listener. Without it no PostgreSQL client can connect.
    postgres: Option<Spanned<PostgresSection>>,
    /// `[identity]`: how clients prove who they are. Without any method every login is refused.
    #[serde(default)]
    identity: IdentitySection,
    /// `[[targets]]`: the upstream databases.
    #[serde(default)]
    targets: Vec<Spanned<TargetSection>>,
    /// `[policy]`: who may open which targets and run which statements. The schema and its
    /// reference live in `policy::rules::PolicySection` (values are taken literally: `${VAR}` is
    /// not expanded inside `[policy]`, so a policy reads the same wherever it is deployed).
    policy: Option<Spanned<policy::rules::PolicySection>>,
    /// `[audit]`: where the audit trail goes and how durably. The schema and its reference live in
    /// `audit::AuditConfig` (docs/audit.md). Paths are resolved against the config file's
    /// directory; `${VAR}` is expanded in a PostgreSQL sink's `url` only.
    audit: Option<Spanned<audit::AuditConfig>>,
    /// `[masking]`: column rules and content detectors that mask result values for the identities
    /// they name. The schema and its reference live in `masking::config::MaskingSection`
    /// (docs/masking.md); values are literal, like `[policy]`'s.
    masking: Option<Spanned<masking::config::MaskingSection>>,
    /// `[admin]`: the admin HTTP listener serving `/metrics`, `/healthz` and `/readyz`. Without it
    /// none runs.
    admin: Option<Spanned<AdminSection>>,
    /// `[telemetry]`: OpenTelemetry trace export. Without it (or without `otlp_endpoint`) no span
    /// leaves the process.
    telemetry: Option<Spanned<TelemetrySection>>,
}

/// `[telemetry]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetrySection {
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry Collector, Jaeger, Tempo, ...), e.g.
    /// `"http://127.0.0.1:4318"`; spans are POSTed as protobuf to `<url>/v1/traces` (a URL that
    /// already ends in `/v1/traces` is used as it is). `http://` only: run a collector next to
    /// the gateway to forward over TLS. Absent: no export.
    otlp_endpoint: Option<Str>,
    /// `service.name` of the exported spans. Default `"portcullis"`. (`service.instance.id` is
    /// `gateway.node`.)
    service_name: Option<Str>,
    /// HTTP headers sent with every export, e.g. `{ authorization = "Bearer ${OTLP_TOKEN}" }`.
    headers: Option<BTreeMap<String, Str>>,
    /// Fraction of sessions whose trace is exported, `0.0` to `1.0`; a session's statements
    /// follow its decision. Default `1.0`.
    sample_ratio: Option<Spanned<f64>>,
}

/// `[admin]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    /// Address and port of the admin HTTP listener, `IP:PORT`. It has no authentication: keep it
    /// on loopback or a management network. Default `"127.0.0.1:9090"`.
    listen: Option<Str>,
}

/// `[gateway]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    /// Node name recorded in every audit record. Default `"portcullis"`.
    node: Option<Str>,
    /// Directory for the node's own files, such as the default SQLite audit trail (created at
    /// start when missing). Default `"data"` next to the configuration file.
    data_dir: Option<Str>,
    /// Longest time a client may take from connecting to being authenticated (TLS, startup,
    /// authentication). Duration string. Default `"10s"`.
    handshake_timeout: Option<Str>,
    /// On shutdown (SIGTERM, SIGINT), how long sessions may take to finish the statements in
    /// flight; each session ends as soon as the database owes it nothing more. Duration string.
    /// Default `"30s"`.
    drain_timeout: Option<Str>,
    /// Largest single protocol message accepted from a client, in bytes. Default `67108864`
    /// (64 MiB).
    max_message_bytes: Option<Spanned<u64>>,
    /// Log filter, a `tracing` EnvFilter directive such as `"info"` or
    /// `"info,proto_postgres=debug"`. The `RUST_LOG` environment variable overrides it.
    /// Default `"info"`.
    log_level: Option<Str>,
    /// Threads that run client sessions, each a single-threaded async runtime; every new
    /// connection goes to the one with the fewest sessions. Default: one per core. `0` runs
    /// sessions on the shared work-stealing runtime instead.
    workers: Option<Spanned<u64>>,
}

/// `[postgres]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSection {
    /// Address and port to listen on, `IP:PORT` (`[::1]:6432` for IPv6). Port 0 picks a free
    /// port. Default `"127.0.0.1:6432"`.
    listen: Option<Str>,
    /// PEM file with the server certificate chain, leaf first. With `tls_key` it enables TLS.
    tls_cert: Option<Str>,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    tls_key: Option<Str>,
    /// PEM file with the CA certificates that client certificates are verified against. When
    /// set, clients may present a certificate (those that do not can still log in with a
    /// password or token); needs `tls_cert` and `tls_key`.
    tls_client_ca: Option<Str>,
    /// Refuse clients that do not negotiate TLS. Needs `tls_cert` and `tls_key`. Default `false`.
    require_tls: Option<Spanned<bool>>,
    /// Accept passwords and tokens over unencrypted connections from non-loopback clients.
    /// Loopback clients may always use them. Default `false`.
    allow_plaintext_password: Option<bool>,
    /// Refuse a login whose user name (startup `user`) differs from the subject the credential
    /// proves. Default `false`: the user name is recorded beside the subject but not checked.
    require_user_match: Option<bool>,
}

/// `[identity]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IdentitySection {
    /// `[identity.jwt]`: JWTs presented in the password field.
    jwt: Option<Spanned<JwtSection>>,
    /// `[[identity.users]]`: static local users (break-glass access, or no identity provider).
    #[serde(default)]
    users: Vec<Spanned<UserSection>>,
    /// `[identity.client_cert]`: identity from verified TLS client certificates.
    client_cert: Option<Spanned<ClientCertSection>>,
}

/// `[identity.jwt]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtSection {
    /// Required value of the `iss` claim. Optional: when absent the issuer is not checked.
    issuer: Option<Str>,
    /// Accepted values of the `aud` claim; a token must name at least one. Required, non-empty.
    #[serde(default)]
    audience: Vec<Str>,
    /// Accepted signature algorithms: `HS256`, `HS384`, `HS512` with `hs256_secret` or
    /// `hs256_secret_file`; `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`,
    /// `ES384`, `EdDSA` with a public key or JWKS. Required, non-empty; `none` is refused.
    algorithms: Option<Spanned<Vec<Str>>>,
    /// Shared HMAC secret, at least 32 bytes. Use an environment variable:
    /// `"${PORTCULLIS_JWT_SECRET}"`. One of the four key sources.
    hs256_secret: Option<Str>,
    /// File holding the shared HMAC secret (surrounding whitespace is ignored), at least 32
    /// bytes. One of the key sources.
    hs256_secret_file: Option<Str>,
    /// PEM file with the issuer's public key. One of the key sources.
    public_key_file: Option<Str>,
    /// JWKS document on disk; tokens choose a key by `kid`. One of the key sources.
    jwks_file: Option<Str>,
    /// URL of the issuer's JWKS document (`https://`; `http://` only for a loopback host). One of
    /// the key sources.
    jwks_url: Option<Str>,
    /// Claim that names the subject. Default `"sub"`.
    subject_claim: Option<Str>,
    /// Claim that lists the subject's groups (an array of strings, or one string). Default
    /// `"groups"`.
    groups_claim: Option<Str>,
    /// Clock skew tolerated when checking `exp` and `nbf`. Duration string. Default `"30s"`.
    leeway: Option<Str>,
}

/// `[[identity.users]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSection {
    /// User name clients log in with. Required, unique.
    name: Str,
    /// Argon2 password hash in PHC form (`$argon2id$v=19$...`), as printed by
    /// `portcullis hash-password`. Required.
    password_hash: Str,
    /// Groups of the user, for rules. Default `[]`.
    #[serde(default)]
    groups: Vec<ConfigString>,
}

/// `[identity.client_cert]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientCertSection {
    /// What names the subject: `"cn"` (the certificate's common name) or `"dn"` (the whole
    /// distinguished name). Default `"cn"`.
    subject: Option<Str>,
    /// Whether the certificate's organizational units (`OU`) become groups. Default `false`.
    groups_from_ou: Option<bool>,
}

/// `[[targets]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSection {
    /// The database name clients ask for. Required, unique per protocol.
    name: Str,
    /// Wire protocol: `"postgres"` or `"mysql"`. Default `"postgres"`.
    protocol: Option<Str>,
    /// Upstream host name or IP address. Required.
    host: Str,
    /// Upstream port. Default 5432 for postgres, 3306 for mysql.
    port: Option<Spanned<u16>>,
    /// Database name on the upstream. Default: `name`.
    database: Option<Str>,
    /// Service user the gateway logs in as upstream. Required.
    user: Str,
    /// Service password. Use an environment variable: `"${APP_DB_PASSWORD}"`. Optional (trust).
    password: Option<Str>,
    /// Upstream TLS: `"disable"` or `"verify-full"` (certificate chain and host name verified).
    /// Default `"disable"`.
    tls: Option<Str>,
    /// PEM file with the CA certificates to trust for `verify-full`. Default: the Mozilla root set
    /// bundled with the gateway (webpki-roots); the system trust store is not read.
    tls_ca_file: Option<Str>,
    /// Host name to verify for `verify-full` instead of `host`. Optional.
    tls_server_name: Option<Str>,
    /// Free-form labels for rules, e.g. `{ env = "prod", team = "payments" }`. Default `{}`.
    #[serde(default)]
    labels: BTreeMap<String, ConfigString>,
}

// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

const DEFAULT_NODE: &str = "portcullis";
const DEFAULT_HANDSHAKE_TIMEOUT: Duration =
    proto_postgres::ListenerConfig::DEFAULT_HANDSHAKE_TIMEOUT;
const DEFAULT_DRAIN_TIMEOUT: Duration = proto_postgres::ListenerConfig::DEFAULT_DRAIN_TIMEOUT;
const DEFAULT_DATA_DIR: &str = "data";
const DEFAULT_MAX_MESSAGE_BYTES: usize = proto_postgres::ListenerConfig::DEFAULT_MAX_MESSAGE_BYTES;
/// Most session worker threads a configuration may ask for.
const MAX_WORKERS: usize = 1024;
const DEFAULT_LOG_LEVEL: &str = "info";
const DEFAULT_SERVICE_NAME: &str = "portcullis";
/// Path of the OTLP/HTTP traces endpoint under a receiver's base URL.
const OTLP_TRACES_PATH: &str = "/v1/traces";

/// The URL spans are POSTed to, for a configured `otlp_endpoint`: an `http://` URL with a host,
/// `/v1/traces` appended unless the path already ends with it.
fn otlp_traces_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let example = "write e.g. \"http://127.0.0.1:4318\"";
    let uri: axum::http::Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL ({e}); {example}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https is not supported: the built-in exporter has no TLS client; send spans over http:// to an OpenTelemetry Collector on this host or a trusted network, and let it forward them over TLS".to_owned())
        }
        _ => return Err(format!("`{text}` is not an http:// URL; {example}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` names no host; {example}"));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(format!(
            "`{text}` has a query or fragment; name only the receiver's base URL ({example})"
        ));
    }
    let base = text.trim_end_matches('/');
    if uri.path().trim_end_matches('/').ends_with(OTLP_TRACES_PATH) {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}{OTLP_TRACES_PATH}"))
    }
}
const DEFAULT_POSTGRES_LISTEN: &str = "127.0.0.1:6432";
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const MIN_HMAC_SECRET_BYTES: usize = 32;

const HMAC_ALGORITHMS: &[&str] = &["HS256", "HS384", "HS512"];
const PUBLIC_KEY_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Collects errors with their positions while turning the file schema into a [`Config`].
struct Checker<'a> {
    text: &'a str,
    origin: &'a Path,
    base: PathBuf,
    errors: Vec<(usize, ConfigError)>,
    /// Where values with an unresolved `${VAR}` start. Their problem is already reported, and
    /// what checking their raw text would add (a secret too short, a file not found) is noise.
    unresolved: HashSet<usize>,
}

impl<'a> Checker<'a> {
    fn new(text: &'a str, origin: &'a Path) -> Self {
        let base = match origin.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Checker {
            text,
            origin,
            base,
            errors: Vec::new(),
            unresolved: HashSet::new(),
        }
    }

    fn location(&self, offset: usize) -> Location {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        if self.unresolved.contains(&span.start) {
            return;
        }
        let error = ConfigError {
            file: self.origin.to_path_buf(),
            location: Some(self.location(span.start)),
            message: message.into(),
        };
        self.errors.push((span.start, error));
    }

    fn into_errors(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        ConfigErrors {
            errors: self.errors.into_iter().map(|(_, e)| e).collect(),
        }
    }

    /// Reports every `${VAR}` problem (unset, not UTF-8, malformed) in the string values that are
    /// interpolated: everywhere but `[policy]` and `[audit]`, whose values are literal, except an
    /// audit sink's `url`. This mirrors where the schema uses [`ConfigString`] (the `[policy]` and
    /// `[audit]` schemas, in their own crates, cannot).
    fn check_references(&mut self, document: &toml::de::DeTable<'_>) {
        for (key, value) in document {
            match key.get_ref().as_ref() {
                "policy" | "masking" => {}
                "audit" => {
                    let sinks = value.get_ref().get("sinks").map(|s| s.get_ref());
                    for sink in sinks
                        .and_then(toml::de::DeValue::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(url) = sink.get_ref().get("url") {
                            self.check_reference_value(url);
                        }
                    }
                }
                _ => self.check_reference_value(value),
            }
        }
    }

    fn check_reference_value(&mut self, value: &Spanned<toml::de::DeValue<'_>>) {
        match value.get_ref() {
            toml::de::DeValue::String(raw) => {
                if let Err(problems) = interpolate(raw, env_lookup) {
                    for problem in problems {
                        self.error(value.span(), problem);
                    }
                    self.unresolved.insert(value.span().start);
                }
            }
            toml::de::DeValue::Array(items) => {
                for item in items {
                    self.check_reference_value(item);
                }
            }
            toml::de::DeValue::Table(table) => {
                for (_, item) in table {
                    self.check_reference_value(item);
                }
            }
            _ => {}
        }
    }

    /// Resolves a path value against the config file's directory.
    fn resolve(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// Resolves a path value and checks that it names a readable file.
    fn existing_file(&mut self, key: &str, value: &Str) -> PathBuf {
        let path = self.resolve(value.get_ref().as_str());
        if value.get_ref().as_str().is_empty() {
            self.error(value.span(), format!("`{key}` is empty: name a file"));
            return path;
        }
        let problem = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => match std::fs::File::open(&path) {
                Ok(_) => None,
                Err(e) => Some(format!("cannot read {}: {e}", path.display())),
            },
            Ok(_) => Some(format!("{} is not a file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "file not found: {} (relative paths are resolved against the directory of the configuration file)",
                path.display()
            )),
            Err(e) => Some(format!("cannot read {}: {e}", path.display())),
        };
        if let Some(problem) = problem {
            self.error(value.span(), format!("`{key}`: {problem}"));
        }
        path
    }

    /// [`Checker::existing_file`] holding PEM certificates (at least one, all well-formed); `what`
    /// names the file in the message.
    fn certificate_file(&mut self, key: &str, value: &Str, what: &'static str) -> PathBuf {
        let before = self.errors.len();
        let path = self.existing_file(key, value);
        if self.errors.len() == before {
            if let Err(e) = crate::tls::read_certificates(what, &path) {
                self.error(value.span(), format!("`{key}`: {e}"));
            }
        }
        path
    }

    /// [`Checker::existing_file`] holding a PEM private key.
    fn private_key_file(&mut self, key: &str, value: &Str) -> PathBuf {
        let before = self.errors.len();
        let path = self.existing_file(key, value);
        if self.errors.len() == before {
            if let Err(e) = crate::tls::read_private_key(&path) {
                self.error(value.span(), format!("`{key}`: {e}"));
            }
        }
        path
    }

    fn duration(&mut self, key: &str, value: Option<&Str>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref().as_str()) {
            Ok(d) => d,
            Err(e) => {
                self.error(value.span(), format!("`{key}`: {e}"));
                default
            }
        }
    }

    fn non_empty(&mut self, key: &str, value: &Str) -> String {
        let s = value.get_ref().as_str();
        if s.trim().is_empty() {
            self.error(value.span(), format!("`{key}` must not be empty"));
        }
        s.to_owned()
    }

    fn check(&mut self, file: FileConfig) -> Config {
        let gateway = self.check_gateway(&file.gateway);
        let postgres = file.postgres.as_ref().map(|p| self.check_postgres(p));
        let identity =
            self.check_identity(&file.identity, file.postgres.as_ref().map(|p| p.get_ref()));
        let targets = self.check_targets(&file.targets);
        let policy = file.policy.as_ref().and_then(|p| self.check_policy(p));
        let audit = self.check_audit(file.audit.as_ref(), &gateway.data_dir);
        let masking = file
            .masking
            .as_ref()
            .and_then(|m| self.check_masking(m, &gateway.data_dir));
        let admin = file.admin.as_ref().map(|a| self.check_admin(a));
        let telemetry = file
            .telemetry
            .as_ref()
            .and_then(|t| self.check_telemetry(t));
        Config {
            source: self.origin.to_path_buf(),
            gateway,
            postgres,
            identity,
            targets,
            policy,
            audit,
            masking,
            admin,
            telemetry,
        }
    }

    fn check_telemetry(
        &mut self,
        section: &Spanned<TelemetrySection>,
    ) -> Option<TelemetrySettings> {
        let t = section.get_ref();
        let otlp_endpoint = t.otlp_endpoint.as_ref().and_then(|v| {
            otlp_traces_url(v.get_ref().as_str())
                .map_err(|e| self.error(v.span(), format!("`telemetry.otlp_endpoint`: {e}")))
                .ok()
        });
        let service_name = match &t.service_name {
            Some(v) => self.non_empty("service_name", v),
            None => DEFAULT_SERVICE_NAME.to_owned(),
        };
        let mut headers = BTreeMap::new();
        for (name, value) in t.headers.iter().flatten() {
            let text = value.get_ref().as_str();
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(
                    value.span(),
                    format!("`telemetry.headers`: `{name}` is not a valid HTTP header name"),
                );
            } else if axum::http::HeaderValue::from_str(text).is_err() {
                // Never echo the value: it is usually a token.
                self.error(
                    value.span(),
                    format!("`telemetry.headers.{name}`: the value is not a valid HTTP header value (control characters or non-ASCII text)"),
                );
            }
            headers.insert(name.to_ascii_lowercase(), text.to_owned());
        }
        let sample_ratio = match &t.sample_ratio {
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error(
                    v.span(),
                    format!(
                        "`telemetry.sample_ratio` must be between 0.0 and 1.0, not {}",
                        v.get_ref()
                    ),
                );
                1.0
            }
            None => 1.0,
        };
        Some(TelemetrySettings {
            otlp_endpoint: otlp_endpoint?,
            service_name,
            headers,
            sample_ratio,
        })
    }

    fn check_admin(&mut self, section: &Spanned<AdminSection>) -> AdminSettings {
        let listen = match &section.get_ref().listen {
            Some(v) => v.get_ref().as_str().parse::<SocketAddr>().unwrap_or_else(|_| {
                self.error(
                    v.span(),
                    format!(
                        "`admin.listen`: `{}` is not an IP:PORT address; write e.g. \"127.0.0.1:9090\"",
                        v.get_ref().as_str()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }),
            None => SocketAddr::from(([127, 0, 0, 1], 9090)),
        };
        AdminSettings { listen }
    }

    fn check_audit(
        &mut self,
        section: Option<&Spanned<audit::AuditConfig>>,
        data_dir: &Path,
    ) -> audit::AuditConfig {
        let Some(section) = section else {
            return audit::AuditConfig::default_for(data_dir);
        };
        let span = section.span();
        let mut config = section.get_ref().clone();
        if let Some(key) = &config.signing_key_file {
            let path = self.resolve(&key.to_string_lossy());
            if !path.is_file() {
                self.error(
                    span.clone(),
                    format!(
                        "`audit.signing_key_file`: file not found: {}",
                        path.display()
                    ),
                );
            } else if let Err(e) = audit::CheckpointSigner::from_file(&path) {
                self.error(span.clone(), format!("`audit.signing_key_file`: {e}"));
            }
            config.signing_key_file = Some(path);
        }
        if let Some(key) = &config.parameter_hash_key_file {
            // Existence is checked with the other [audit] settings below.
            config.parameter_hash_key_file = Some(self.resolve(&key.to_string_lossy()));
        }
        // Sinks whose url has a `${VAR}` problem, reported at the url by `check_references`: what
        // `check` says about the raw text is noise.
        let mut unresolved_urls = Vec::new();
        for (i, sink) in config.sinks.iter_mut().enumerate() {
            match sink {
                audit::SinkConfig::Sqlite { path } => *path = self.resolve(&path.to_string_lossy()),
                audit::SinkConfig::Jsonl { dir, .. } => *dir = self.resolve(&dir.to_string_lossy()),
                audit::SinkConfig::Postgres { url, ca_file, .. } => {
                    if let Some(ca) = ca_file {
                        *ca = self.resolve(&ca.to_string_lossy());
                    }
                    match interpolate(url, env_lookup) {
                        Ok(expanded) => *url = expanded,
                        Err(_) => unresolved_urls.push(format!("`audit.sinks[{i}].url`")),
                    }
                }
            }
        }
        if let Err(errors) = config.check(data_dir) {
            for e in errors {
                if !unresolved_urls
                    .iter()
                    .any(|key| e.starts_with(key.as_str()))
                {
                    self.error(span.clone(), format!("[audit]: {e}"));
                }
            }
        }
        for sink in &config.sinks {
            if let audit::SinkConfig::Postgres {
                ca_file: Some(ca), ..
            } = sink
            {
                // A missing file is reported by `check` above.
                if ca.is_file() {
                    if let Err(e) = crate::tls::read_certificates("CA file", ca) {
                        self.error(span.clone(), format!("`audit.sinks.ca_file`: {e}"));
                    }
                }
            }
        }
        config
    }

    fn check_masking(
        &mut self,
        section: &Spanned<masking::config::MaskingSection>,
        data_dir: &Path,
    ) -> Option<masking::MaskingConfig> {
        let resolve = |p: &Path| self.resolve(&p.to_string_lossy());
        match masking::MaskingConfig::from_section(section.get_ref(), data_dir, &resolve) {
            Ok(config) => Some(config),
            Err(errors) => {
                for e in errors {
                    self.error(section.span(), format!("[masking]: {e}"));
                }
                None
            }
        }
    }

    fn check_policy(
        &mut self,
        section: &Spanned<policy::rules::PolicySection>,
    ) -> Option<policy::RuleSet> {
        match policy::RuleSet::from_section(section) {
            Ok(rules) => Some(rules),
            Err(errors) => {
                for e in errors {
                    self.error(e.span, e.message);
                }
                None
            }
        }
    }

    fn check_gateway(&mut self, section: &GatewaySection) -> GatewaySettings {
        let node = match &section.node {
            Some(v) => self.non_empty("node", v),
            None => DEFAULT_NODE.to_owned(),
        };
        let handshake_timeout = self.duration(
            "handshake_timeout",
            section.handshake_timeout.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        if handshake_timeout.is_zero() {
            if let Some(v) = &section.handshake_timeout {
                self.error(v.span(), "`handshake_timeout` must be longer than zero");
            }
        }
        let data_dir = match &section.data_dir {
            Some(v) => {
                let dir = self.non_empty("data_dir", v);
                self.resolve(&dir)
            }
            None => self.resolve(DEFAULT_DATA_DIR),
        };
        let drain_timeout = self.duration(
            "drain_timeout",
            section.drain_timeout.as_ref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let max_message_bytes = match &section.max_message_bytes {
            Some(v) => match usize::try_from(*v.get_ref()) {
                Ok(0) => {
                    self.error(v.span(), "`max_message_bytes` must be at least 1");
                    DEFAULT_MAX_MESSAGE_BYTES
                }
                Ok(n) => n,
                Err(_) => {
                    self.error(
                        v.span(),
                        "`max_message_bytes` is too large for this machine",
                    );
                    DEFAULT_MAX_MESSAGE_BYTES
                }
            },
            None => DEFAULT_MAX_MESSAGE_BYTES,
        };
        let log_level = match &section.log_level {
            Some(v) => {
                let directive = v.get_ref().as_str();
                if let Err(e) = tracing_subscriber::EnvFilter::try_new(directive) {
                    self.error(
                        v.span(),
                        format!("`log_level`: {e}; write a level such as \"info\" or directives such as \"info,proto_postgres=debug\""),
                    );
                }
                directive.to_owned()
            }
            None => DEFAULT_LOG_LEVEL.to_owned(),
        };
        let workers = section
            .workers
            .as_ref()
            .map(|v| match usize::try_from(*v.get_ref()) {
                Ok(n) if n <= MAX_WORKERS => n,
                _ => {
                    self.error(
                        v.span(),
                        format!(
                            "`workers` must be at most {MAX_WORKERS} (or 0: no worker threads)"
                        ),
                    );
                    0
                }
            });
        GatewaySettings {
            node,
            data_dir,
            handshake_timeout,
            drain_timeout,
            max_message_bytes,
            log_level,
            workers,
        }
    }

    fn check_postgres(&mut self, section: &Spanned<PostgresSection>) -> PostgresListenerSettings {
        let span = section.span();
        let section = section.get_ref();
        let listen = match &section.listen {
            Some(v) => match v.get_ref().as_str().parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    self.error(
                        v.span(),
                        format!(
                            "`listen`: `{}` is not an IP:PORT address; write e.g. \"127.0.0.1:6432\", \"0.0.0.0:6432\" or \"[::1]:6432\"",
                            v.get_ref().as_str()
                        ),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            },
            None => DEFAULT_POSTGRES_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 6432))),
        };
        let before = self.errors.len();
        let cert = section
            .tls_cert
            .as_ref()
            .map(|v| self.certificate_file("tls_cert", v, "certificate file"));
        let key = section
            .tls_key
            .as_ref()
            .map(|v| self.private_key_file("tls_key", v));
        let client_ca = section
            .tls_client_ca
            .as_ref()
            .map(|v| self.certificate_file("tls_client_ca", v, "client CA file"));
        let files_ok = self.errors.len() == before;
        let tls = match (cert, key) {
            (Some(cert_file), Some(key_file)) => {
                let files = ListenerTlsFiles {
                    cert_file,
                    key_file,
                    client_ca_file: client_ca,
                };
                // Each file reads; together they must also make a TLS configuration (the key
                // belongs to the certificate, the CA is usable), as the listener will build it.
                if files_ok {
                    if let (Err(e), Some(v)) = (
                        crate::tls::server_config(&files, &[]),
                        section.tls_key.as_ref(),
                    ) {
                        self.error(v.span(), format!("`tls_key`: {e}"));
                    }
                }
                Some(files)
            }
            (Some(_), None) => {
                let at = section.tls_cert.as_ref().map_or(span.clone(), |v| v.span());
                self.error(at, "`tls_cert` is set but `tls_key` is not: TLS needs both the certificate chain and its private key");
                None
            }
            (None, Some(_)) => {
                let at = section.tls_key.as_ref().map_or(span.clone(), |v| v.span());
                self.error(at, "`tls_key` is set but `tls_cert` is not: TLS needs both the certificate chain and its private key");
                None
            }
            (None, None) => {
                if let Some(v) = &section.tls_client_ca {
                    self.error(
                        v.span(),
                        "`tls_client_ca` needs TLS: set `tls_cert` and `tls_key` too",
                    );
                }
                None
            }
        };
        let require_tls = section.require_tls.as_ref().is_some_and(|v| *v.get_ref());
        if require_tls && section.tls_cert.is_none() && section.tls_key.is_none() {
            if let Some(v) = &section.require_tls {
                self.error(
                    v.span(),
                    "`require_tls = true` needs `tls_cert` and `tls_key`",
                );
            }
        }
        PostgresListenerSettings {
            listen,
            tls,
            require_tls,
            allow_plaintext_password: section.allow_plaintext_password.unwrap_or(false),
            require_user_match: section.require_user_match.unwrap_or(false),
        }
    }

    fn check_identity(
        &mut self,
        section: &IdentitySection,
        postgres: Option<&PostgresSection>,
    ) -> IdentitySettings {
        let jwt = section.jwt.as_ref().map(|j| self.check_jwt(j));

        let mut users = Vec::new();
        let mut seen = HashSet::new();
        for user in &section.users {
            let u = user.get_ref();
            let name = self.non_empty("name", &u.name);
            if !seen.insert(name.clone()) {
                self.error(
                    u.name.span(),
                    format!(
                        "duplicate user `{name}`: each `[[identity.users]]` name must be unique"
                    ),
                );
            }
            let hash = u.password_hash.get_ref().as_str();
            if let Err(problem) = check_password_hash(hash) {
                self.error(
                    u.password_hash.span(),
                    format!(
                        "`password_hash` {problem}: generate one with `portcullis hash-password`"
                    ),
                );
            }
            users.push(StaticUserSettings {
                name,
                password_hash: hash.to_owned(),
                groups: u.groups.iter().map(|g| g.as_str().to_owned()).collect(),
            });
        }

        let client_cert = section.client_cert.as_ref().map(|c| {
            let has_client_ca = postgres.is_some_and(|p| p.tls_client_ca.is_some());
            if !has_client_ca {
                self.error(
                    c.span(),
                    "`[identity.client_cert]` needs `tls_client_ca` in `[postgres]`: without it no client certificate is ever verified",
                );
            }
            let c = c.get_ref();
            let subject = match &c.subject {
                None => CertSubject::CommonName,
                Some(v) => match v.get_ref().as_str() {
                    "cn" => CertSubject::CommonName,
                    "dn" => CertSubject::DistinguishedName,
                    other => {
                        self.error(v.span(), format!("`subject`: unknown value `{other}`; write \"cn\" or \"dn\""));
                        CertSubject::CommonName
                    }
                },
            };
            ClientCertSettings { subject, groups_from_ou: c.groups_from_ou.unwrap_or(false) }
        });

        IdentitySettings {
            jwt,
            users,
            client_cert,
        }
    }

    fn check_jwt(&mut self, section: &Spanned<JwtSection>) -> JwtSettings {
        let span = section.span();
        let j = section.get_ref();
        let before = self.errors.len();

        let mut algorithms = Vec::new();
        match &j.algorithms {
            None => self.error(
                span.clone(),
                "`[identity.jwt]` needs `algorithms`, e.g. [\"RS256\"] or [\"HS256\"]",
            ),
            Some(list) if list.get_ref().is_empty() => {
                self.error(list.span(), "`algorithms` must name at least one algorithm")
            }
            Some(list) => {
                for alg in list.get_ref() {
                    let name = alg.get_ref().as_str();
                    if name.eq_ignore_ascii_case("none") {
                        self.error(alg.span(), "algorithm `none` is refused: unsigned tokens would let anyone claim any identity");
                    } else if HMAC_ALGORITHMS.contains(&name)
                        || PUBLIC_KEY_ALGORITHMS.contains(&name)
                    {
                        algorithms.push(name.to_owned());
                    } else {
                        self.error(
                            alg.span(),
                            format!(
                                "unknown algorithm `{name}`; expected one of {}, {}",
                                HMAC_ALGORITHMS.join(", "),
                                PUBLIC_KEY_ALGORITHMS.join(", ")
                            ),
                        );
                    }
                }
            }
        }

        let mut sources: Vec<(&str, &Str)> = [
            ("hs256_secret", &j.hs256_secret),
            ("hs256_secret_file", &j.hs256_secret_file),
            ("public_key_file", &j.public_key_file),
            ("jwks_file", &j.jwks_file),
            ("jwks_url", &j.jwks_url),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
        // In file order, so that the first one written is the one the others are reported against.
        sources.sort_by_key(|(_, v)| v.span().start);
        let mut keys = JwtKeys::JwksUrl(String::new());
        match sources.as_slice() {
            [] => self.error(
                span.clone(),
                "`[identity.jwt]` needs exactly one key source: `hs256_secret`, `hs256_secret_file`, `public_key_file`, `jwks_file` or `jwks_url`",
            ),
            [(key, value)] => keys = self.jwt_keys(key, value),
            [(first, _), rest @ ..] => {
                for (key, value) in rest {
                    self.error(
                        value.span(),
                        format!("`{key}` and `{first}` are both set: `[identity.jwt]` takes exactly one key source"),
                    );
                }
            }
        }
        if let [(key, value)] = sources.as_slice() {
            let symmetric = matches!(*key, "hs256_secret" | "hs256_secret_file");
            let mismatched: Vec<&str> = algorithms
                .iter()
                .map(String::as_str)
                .filter(|a| HMAC_ALGORITHMS.contains(a) != symmetric)
                .collect();
            if !mismatched.is_empty() {
                let kind = if symmetric {
                    "a shared secret"
                } else {
                    "public keys"
                };
                self.error(
                    value.span(),
                    format!(
                        "`{key}` provides {kind}, which cannot verify {}: use HS* algorithms with a shared secret and public-key algorithms with public keys, never both",
                        mismatched.join(", ")
                    ),
                );
            }
        }

        if j.audience.is_empty() {
            self.error(
                span.clone(),
                "`[identity.jwt]` needs `audience`, e.g. [\"portcullis\"]: without it a token minted for any other application would be accepted",
            );
        }
        let audience = j
            .audience
            .iter()
            .map(|a| self.non_empty("audience", a))
            .collect();
        let issuer = j.issuer.as_ref().map(|v| self.non_empty("issuer", v));
        let subject_claim = j
            .subject_claim
            .as_ref()
            .map_or("sub".to_owned(), |v| self.non_empty("subject_claim", v));
        let groups_claim = j
            .groups_claim
            .as_ref()
            .map_or("groups".to_owned(), |v| self.non_empty("groups_claim", v));
        let leeway = self.duration("leeway", j.leeway.as_ref(), DEFAULT_LEEWAY);

        let settings = JwtSettings {
            issuer,
            audience,
            algorithms,
            keys,
            subject_claim,
            groups_claim,
            leeway,
        };
        // A key file must also hold a key the algorithms can use: load it as `run` will (a JWKS
        // URL is left to `run`, which fetches it).
        if let ([(_, source)], true) = (sources.as_slice(), self.errors.len() == before) {
            if matches!(
                settings.keys,
                JwtKeys::PublicKeyPemFile(_) | JwtKeys::JwksFile(_)
            ) {
                if let Err(e) =
                    identity::JwtAuthenticator::new(crate::server::jwt_config(&settings))
                {
                    self.error(source.span(), format!("`[identity.jwt]`: {e}"));
                }
            }
        }
        settings
    }

    fn jwt_keys(&mut self, key: &str, value: &Str) -> JwtKeys {
        let text = value.get_ref().as_str();
        match key {
            "hs256_secret" => {
                self.check_secret_length(key, value.span(), text);
                JwtKeys::Hs256Secret(text.to_owned())
            }
            "hs256_secret_file" => {
                let path = self.existing_file(key, value);
                match std::fs::read_to_string(&path) {
                    Ok(contents) => {
                        let secret = contents.trim();
                        self.check_secret_length(key, value.span(), secret);
                        JwtKeys::Hs256Secret(secret.to_owned())
                    }
                    // `existing_file` has already reported a missing or unreadable file.
                    Err(e) if e.kind() != std::io::ErrorKind::InvalidData => {
                        JwtKeys::Hs256Secret(String::new())
                    }
                    Err(_) => {
                        self.error(
                            value.span(),
                            format!("`{key}`: {} is not UTF-8 text", path.display()),
                        );
                        JwtKeys::Hs256Secret(String::new())
                    }
                }
            }
            "public_key_file" => JwtKeys::PublicKeyPemFile(self.existing_file(key, value)),
            "jwks_file" => JwtKeys::JwksFile(self.existing_file(key, value)),
            _ => {
                if !jwks_url_is_acceptable(text) {
                    self.error(
                        value.span(),
                        "`jwks_url` must be an https:// URL (http:// is accepted only for localhost, 127.0.0.1 or [::1])",
                    );
                }
                JwtKeys::JwksUrl(text.to_owned())
            }
        }
    }

    fn check_secret_length(&mut self, key: &str, span: Range<usize>, secret: &str) {
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            self.error(
                span,
                format!(
                    "`{key}`: the secret is {} bytes; it must be at least {MIN_HMAC_SECRET_BYTES} bytes (generate one with `openssl rand -base64 48`)",
                    secret.len()
                ),
            );
        }
    }

    fn check_targets(&mut self, sections: &[Spanned<TargetSection>]) -> Vec<Target> {
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        for section in sections {
            let t = section.get_ref();
            let name = self.non_empty("name", &t.name);
            let protocol = match &t.protocol {
                None => Protocol::Postgres,
                Some(v) => match v.get_ref().as_str() {
                    "postgres" => Protocol::Postgres,
                    "mysql" => Protocol::Mysql,
                    other => {
                        self.error(v.span(), format!("`protocol`: unknown value `{other}`; write \"postgres\" or \"mysql\""));
                        Protocol::Postgres
                    }
                },
            };
            if !seen.insert((protocol, name.clone())) {
                self.error(
                    t.name.span(),
                    format!("duplicate target `{name}` for protocol {}: target names must be unique per protocol", protocol.as_str()),
                );
            }
            let host = self.non_empty("host", &t.host);
            let port = match &t.port {
                Some(p) if *p.get_ref() == 0 => {
                    self.error(p.span(), "`port` must be between 1 and 65535");
                    0
                }
                Some(p) => *p.get_ref(),
                None => match protocol {
                    Protocol::Postgres => 5432,
                    Protocol::Mysql => 3306,
                },
            };
            let database = t
                .database
                .as_ref()
                .map_or_else(|| name.clone(), |v| self.non_empty("database", v));
            let user = self.non_empty("user", &t.user);
            let password = t.password.as_ref().map(|v| v.get_ref().as_str().to_owned());

            let tls = match t.tls.as_ref().map(|v| (v, v.get_ref().as_str())) {
                None | Some((_, "disable")) => {
                    for (key, value) in [
                        ("tls_ca_file", &t.tls_ca_file),
                        ("tls_server_name", &t.tls_server_name),
                    ] {
                        if let Some(v) = value {
                            self.error(v.span(), format!("`{key}` is set but `tls` is \"disable\": set `tls = \"verify-full\"` or remove `{key}`"));
                        }
                    }
                    UpstreamTls::Disable
                }
                Some((_, "verify-full")) => UpstreamTls::VerifyFull {
                    ca_file: t
                        .tls_ca_file
                        .as_ref()
                        .map(|v| self.certificate_file("tls_ca_file", v, "CA file")),
                    server_name: t
                        .tls_server_name
                        .as_ref()
                        .map(|v| self.non_empty("tls_server_name", v)),
                },
                Some((v, other)) => {
                    self.error(
                        v.span(),
                        format!(
                            "`tls`: unknown value `{other}`; write \"disable\" or \"verify-full\""
                        ),
                    );
                    UpstreamTls::Disable
                }
            };
            let labels = t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                .collect();
            targets.push(Target {
                name,
                protocol,
                host,
                port,
                database,
                user,
                password,
                tls,
                labels,
            });
        }
        targets
    }
}

/// Checks that `hash` is an argon2id PHC string with parameters, salt and hash.
fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = argon2::PasswordHash::new(hash)
        .map_err(|e| format!("is not a valid argon2id PHC string ({e})"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!("uses `{}`, not argon2id", parsed.algorithm));
    }
    argon2::Params::try_from(&parsed)
        .map_err(|e| format!("has invalid argon2 parameters ({e})"))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("has no salt or no hash".to_owned());
    }
    Ok(())
}

fn jwks_url_is_acceptable(url: &str) -> bool {
    if let Some(rest) = url.strip_prefix("https://") {
        return !rest.is_empty();
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const VALID_HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dGhpcyBpcyBub3QgYSByZWFsIGhhc2ggYnV0IGl0IHBhcnNlcw";

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_str(text, Path::new("/etc/portcullis/gw.toml"))
    }

    fn messages(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.errors().iter().map(ToString::to_string).collect(),
        }
    }

    fn assert_one_error(text: &str, location: &str, fragment: &str) {
        let m = messages(text);
        assert_eq!(m.len(), 1, "expected exactly one error, got {m:#?}");
        assert!(
            m[0].starts_with(&format!("/etc/portcullis/gw.toml:{location}: ")),
            "{m:#?}"
        );
        assert!(m[0].contains(fragment), "{m:#?}");
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.gateway.node, "portcullis");
        assert_eq!(c.gateway.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.gateway.max_message_bytes, 64 * 1024 * 1024);
        assert_eq!(c.gateway.log_level, "info");
        assert_eq!(c.gateway.workers, None);
        assert!(c.postgres.is_none());
        assert!(c.identity.jwt.is_none());
        assert!(c.targets.is_empty());

        let c = parse("[postgres]\n[[targets]]\nname = \"app\"\nhost = \"db\"\nuser = \"svc\"\n")
            .unwrap();
        let pg = c.postgres.unwrap();
        assert_eq!(pg.listen, "127.0.0.1:6432".parse().unwrap());
        assert!(pg.tls.is_none() && !pg.require_tls && !pg.allow_plaintext_password);
        assert!(!pg.require_user_match);
        let t = &c.targets[0];
        assert_eq!(
            (t.protocol, t.port, t.database.as_str()),
            (Protocol::Postgres, 5432, "app")
        );
        assert_eq!(t.tls, UpstreamTls::Disable);
        assert!(t.password.is_none());
    }

    #[test]
    fn unknown_key_is_rejected_with_location() {
        assert_one_error(
            "[gateway]\nnode = \"a\"\nnodes = \"b\"\n",
            "3:1",
            "unknown field `nodes`",
        );
        assert_one_error(
            "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\npasword = \"x\"\n",
            "5:1",
            "pasword",
        );
        assert_one_error(
            "[identity.jwt]\nissuer = \"x\"\nsecret = \"y\"\n",
            "3:1",
            "secret",
        );
    }

    #[test]
    fn syntax_and_type_errors_have_locations() {
        assert_one_error("[gateway]\nnode = \n", "2:8", "");
        assert_one_error("[gateway]\nmax_message_bytes = \"big\"\n", "2:21", "");
        assert_one_error("[gateway]\nworkers = 5000\n", "2:11", "at most 1024");
        assert_eq!(
            parse("[gateway]\nworkers = 0\n").unwrap().gateway.workers,
            Some(0)
        );
        assert_eq!(
            parse("[gateway]\nworkers = 3\n").unwrap().gateway.workers,
            Some(3)
        );
        assert_one_error(
            "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\nport = 70000\n",
            "5:8",
            "",
        );
        assert_one_error(
            "[[targets]]\nname = \"a\"\nuser = \"u\"\n",
            "1:1",
            "missing field `host`",
        );
    }

    #[test]
    fn interpolation_replaces_escapes_and_rejects_bad_references() {
        let env = |name: &str| match name {
            "A" => Ok("alpha".to_owned()),
            "B_2" => Ok("${NOT_AGAIN}".to_owned()),
            _ => Err(format!("`{name}` not set")),
        };
        assert_eq!(interpolate("x${A}y", env).unwrap(), "xalphay");
        assert_eq!(interpolate("${A}${B_2}", env).unwrap(), "alpha${NOT_AGAIN}");
        assert_eq!(interpolate("$${A} $A $", env).unwrap(), "${A} $A $");
        assert_eq!(
            interpolate("$argon2id$v=19$m=1", env).unwrap(),
            "$argon2id$v=19$m=1"
        );
        let problems = |raw: &str| interpolate(raw, env).unwrap_err().join("\n");
        assert!(problems("${MISSING}").contains("MISSING"));
        assert!(problems("${A").contains("unterminated"));
        assert!(problems("${1A}").contains("not a valid"));
        assert!(problems("${}").contains("not a valid"));
        // Every problem of a value, not only the first.
        assert_eq!(
            interpolate("${X}:${A}:${1}:${Y}", env).unwrap_err().len(),
            3
        );
    }

    #[test]
    fn env_vars_are_interpolated_in_string_values() {
        std::env::set_var("PORTCULLIS_TEST_CFG_DB_PASSWORD", "s3cret");
        std::env::set_var("PORTCULLIS_TEST_CFG_ENV", "prod");
        let c = parse(
            "[[targets]]\nname = \"app\"\nhost = \"db\"\nuser = \"svc\"\npassword = \"${PORTCULLIS_TEST_CFG_DB_PASSWORD}\"\nlabels = { env = \"${PORTCULLIS_TEST_CFG_ENV}-$${x}\" }\n",
        )
        .unwrap();
        assert_eq!(c.targets[0].password.as_deref(), Some("s3cret"));
        assert_eq!(c.targets[0].labels["env"], "prod-${x}");
    }

    #[test]
    fn missing_env_var_is_reported_at_its_value() {
        assert_one_error(
            "[[targets]]\nname = \"app\"\nhost = \"db\"\nuser = \"svc\"\npassword = \"${PORTCULLIS_TEST_CFG_SURELY_UNSET}\"\n",
            "5:12",
            "environment variable `PORTCULLIS_TEST_CFG_SURELY_UNSET` is not set",
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("10").unwrap_err().contains("without a unit"));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_one_error(
            "[gateway]\nhandshake_timeout = \"10 seconds\"\n",
            "2:21",
            "handshake_timeout",
        );
        assert_one_error(
            "[gateway]\nhandshake_timeout = \"0s\"\n",
            "2:21",
            "longer than zero",
        );
    }

    #[test]
    fn bad_listen_address() {
        assert_one_error(
            "[postgres]\nlisten = \"localhost:6432\"\n",
            "2:10",
            "not an IP:PORT address",
        );
    }

    #[test]
    fn bad_log_level() {
        assert_one_error("[gateway]\nlog_level = \"info,=[\"\n", "2:13", "log_level");
    }

    /// A self-signed certificate and its key as PEM files, `server.pem` and `server.key` in `dir`.
    pub(crate) fn write_tls_files(dir: &Path) {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("server.pem"), pair.cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), pair.signing_key.serialize_pem()).unwrap();
    }

    #[test]
    fn tls_cert_without_key_and_the_reverse() {
        let dir = tempfile::tempdir().unwrap();
        write_tls_files(dir.path());
        let origin = dir.path().join("gw.toml");
        let err =
            Config::from_toml_str("[postgres]\ntls_cert = \"server.pem\"\n", &origin).unwrap_err();
        assert_eq!(err.errors().len(), 1);
        assert!(
            err.errors()[0].message.contains("`tls_key` is not"),
            "{err}"
        );
        assert_eq!(
            err.errors()[0].location,
            Some(Location {
                line: 2,
                column: 12
            })
        );
        let err =
            Config::from_toml_str("[postgres]\ntls_key = \"server.key\"\n", &origin).unwrap_err();
        assert!(err.to_string().contains("`tls_cert` is not"), "{err}");
        let err = Config::from_toml_str("[postgres]\nrequire_tls = true\n", &origin).unwrap_err();
        assert!(
            err.to_string().contains("needs `tls_cert` and `tls_key`"),
            "{err}"
        );
        let err = Config::from_toml_str("[postgres]\ntls_client_ca = \"server.pem\"\n", &origin)
            .unwrap_err();
        assert!(
            err.to_string().contains("`tls_client_ca` needs TLS"),
            "{err}"
        );

        let c = Config::from_toml_str(
            "[postgres]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nrequire_tls = true\n",
            &origin,
        )
        .unwrap();
        let tls = c.postgres.unwrap().tls.unwrap();
        assert_eq!(tls.cert_file, dir.path().join("server.pem"));
        assert_eq!(tls.key_file, dir.path().join("server.key"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        write_tls_files(&dir.path().join("certs"));
        std::fs::rename(
            dir.path().join("certs/server.pem"),
            dir.path().join("certs/db-ca.pem"),
        )
        .unwrap();
        let origin = dir.path().join("gw.toml");
        let c = Config::from_toml_str(
            "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\ntls = \"verify-full\"\ntls_ca_file = \"certs/db-ca.pem\"\ntls_server_name = \"db.internal\"\n",
            &origin,
        )
        .unwrap();
        assert_eq!(
            c.targets[0].tls,
            UpstreamTls::VerifyFull {
                ca_file: Some(dir.path().join("certs/db-ca.pem")),
                server_name: Some("db.internal".into())
            }
        );
        // A bare file name as origin resolves against the working directory.
        let checker = Checker::new("", Path::new("gw.toml"));
        assert_eq!(checker.resolve("a.pem"), PathBuf::from("./a.pem"));
        assert_eq!(checker.resolve("/abs/a.pem"), PathBuf::from("/abs/a.pem"));
    }

    #[test]
    fn verify_full_ca_file_missing() {
        assert_one_error(
            "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\ntls = \"verify-full\"\ntls_ca_file = \"nope/ca.pem\"\n",
            "6:15",
            "file not found: /etc/portcullis/nope/ca.pem",
        );
        assert_one_error(
            "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\ntls_ca_file = \"ca.pem\"\n",
            "5:15",
            "`tls` is \"disable\"",
        );
        assert_one_error(
            "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\ntls = \"verify\"\n",
            "5:7",
            "write \"disable\" or \"verify-full\"",
        );
    }

    #[test]
    fn duplicate_targets_per_protocol() {
        let base = "[[targets]]\nname = \"app\"\nhost = \"h\"\nuser = \"u\"\n";
        let mysql =
            "[[targets]]\nname = \"app\"\nprotocol = \"mysql\"\nhost = \"h\"\nuser = \"u\"\n";
        assert_one_error(
            &format!("{base}{base}"),
            "6:8",
            "duplicate target `app` for protocol postgres",
        );
        let c = parse(&format!("{base}{mysql}")).unwrap();
        assert_eq!(c.targets[1].port, 3306);
        assert_one_error(
            "[[targets]]\nname = \"a\"\nprotocol = \"oracle\"\nhost = \"h\"\nuser = \"u\"\n",
            "3:12",
            "unknown value `oracle`",
        );
    }

    #[test]
    fn client_cert_needs_client_ca() {
        assert_one_error(
            "[postgres]\n[identity.client_cert]\nsubject = \"cn\"\n",
            "2:1",
            "needs `tls_client_ca`",
        );
        let m = messages("[identity.client_cert]\nsubject = \"email\"\n");
        assert_eq!(m.len(), 2, "{m:#?}");
        assert!(m[1].contains("write \"cn\" or \"dn\""), "{m:#?}");
    }

    const JWT_OK: &str = "[identity.jwt]\naudience = [\"portcullis\"]\nalgorithms = [\"HS256\"]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n";

    #[test]
    fn jwt_valid_section() {
        let c = parse(JWT_OK).unwrap();
        let jwt = c.identity.jwt.unwrap();
        assert_eq!(
            jwt.keys,
            JwtKeys::Hs256Secret("0123456789abcdef0123456789abcdef".into())
        );
        assert_eq!(
            (jwt.subject_claim.as_str(), jwt.groups_claim.as_str()),
            ("sub", "groups")
        );
        assert_eq!(jwt.leeway, Duration::from_secs(30));
        assert!(!format!("{:?}", jwt.keys).contains("0123"));
    }

    #[test]
    fn jwt_key_sources_zero_or_several() {
        assert_one_error(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS256\"]\n",
            "1:1",
            "exactly one key source",
        );
        assert_one_error(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp/jwks\"\npublic_key_file = \"k.pem\"\n",
            "5:19",
            "`public_key_file` and `jwks_url` are both set",
        );
    }

    #[test]
    fn jwt_algorithms() {
        assert_one_error(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS256\", \"none\"]\njwks_url = \"https://idp/jwks\"\n",
            "3:24",
            "`none` is refused",
        );
        assert_one_error(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS257\"]\njwks_url = \"https://idp/jwks\"\n",
            "3:15",
            "unknown algorithm `RS257`",
        );
        assert_one_error(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = []\njwks_url = \"https://idp/jwks\"\n",
            "3:14",
            "at least one algorithm",
        );
        assert_one_error(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"HS256\"]\njwks_url = \"https://idp/jwks\"\n",
            "4:12",
            "cannot verify HS256",
        );
        assert_one_error(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS256\"]\njwks_url = \"http://idp.example.com/jwks\"\n",
            "4:12",
            "https://",
        );
        assert!(parse("[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"ES256\"]\njwks_url = \"http://127.0.0.1:8080/jwks\"\n").is_ok());
    }

    #[test]
    fn jwt_secret_rules() {
        assert_one_error(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"HS256\"]\nhs256_secret = \"short\"\n",
            "4:16",
            "at least 32 bytes",
        );
        assert_one_error(
            "[identity.jwt]\nalgorithms = [\"HS256\"]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
            "1:1",
            "needs `audience`",
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "  0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        let c = Config::from_toml_str(
            "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"secret\"\n",
            &dir.path().join("gw.toml"),
        )
        .unwrap();
        assert_eq!(
            c.identity.jwt.unwrap().keys,
            JwtKeys::Hs256Secret("0123456789abcdef0123456789abcdef".into())
        );
    }

    #[test]
    fn static_users() {
        let ok = format!("[[identity.users]]\nname = \"bg\"\npassword_hash = \"{VALID_HASH}\"\ngroups = [\"admin\"]\n");
        let c = parse(&ok).unwrap();
        assert_eq!(c.identity.users[0].groups, vec!["admin".to_owned()]);
        assert_one_error(
            "[[identity.users]]\nname = \"bg\"\npassword_hash = \"change-me\"\n",
            "3:17",
            "not a valid argon2id PHC string",
        );
        assert_one_error(
            "[[identity.users]]\nname = \"bg\"\npassword_hash = \"$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2doYXNoaGFzaGhhc2g\"\n",
            "3:17",
            "not argon2id",
        );
        assert_one_error(&format!("{ok}{ok}"), "6:8", "duplicate user `bg`");
    }

    #[test]
    fn all_errors_are_reported_together_in_file_order() {
        let text = "\
[gateway]
handshake_timeout = \"soon\"

[postgres]
listen = \"nowhere\"

[identity.jwt]
audience = [\"p\"]
algorithms = [\"none\"]

[[targets]]
name = \"app\"
host = \"h\"
user = \"u\"
tls = \"verify-full\"
tls_ca_file = \"missing-ca.pem\"

[[targets]]
name = \"app\"
host = \"h\"
user = \"u\"
";
        let err = parse(text).unwrap_err();
        let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        let locations: Vec<&str> = lines
            .iter()
            .map(|l| {
                l.trim_start_matches("/etc/portcullis/gw.toml:")
                    .split(": ")
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            locations,
            ["2:21", "5:10", "7:1", "9:15", "16:15", "19:8"],
            "{lines:#?}"
        );
    }

    #[test]
    fn unreadable_file_has_no_location() {
        let err = Config::load("/nonexistent/portcullis.toml").unwrap_err();
        assert_eq!(err.errors()[0].location, None);
        assert!(err
            .to_string()
            .starts_with("/nonexistent/portcullis.toml: cannot read"));
    }

    #[test]
    fn policy_section_is_checked_into_a_rule_set() {
        let c = parse(
            "[policy]\n[[policy.access]]\nname = \"analysts\"\ngroups = [\"analyst\"]\ntargets = [\"app*\"]\nmode = \"read-only\"\n\
             [[policy.rules]]\nname = \"no-drop\"\naction = \"deny\"\nkinds = [\"drop\"]\n",
        )
        .unwrap();
        let rules = c.policy.unwrap();
        assert_eq!(rules.access.len(), 1);
        assert_eq!(&*rules.rules[0].name, "no-drop");
        assert!(parse("").unwrap().policy.is_none());
    }

    #[test]
    fn policy_errors_have_locations() {
        // One row per mistake: the text, where it is reported, and what the message says.
        let cases: &[(&str, &str, &str)] = &[
            ("[policy]\nunparsable = \"maybe\"\n", "2:14", "write \"deny\" or \"allow\""),
            ("[policy]\nfail_open = true\n", "2:1", "unknown field `fail_open`"),
            (
                "[[policy.access]]\nname = \"a\"\ngroups = [\"x\"]\nmode = \"rw\"\n",
                "4:8",
                "write \"read-only\" or \"read-write\"",
            ),
            ("[[policy.access]]\nname = \"a\"\nmode = \"read-only\"\n", "1:1", "needs `groups` or `subjects`"),
            (
                "[[policy.rules]]\nname = \"r\"\naction = \"block\"\n",
                "3:10",
                "unknown value `block`",
            ),
            (
                "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nkinds = [\"drop-table\"]\n",
                "4:10",
                "neither a class",
            ),
            (
                "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nobjects = [\"a.b.c\"]\n",
                "4:12",
                "not an object pattern",
            ),
            (
                "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nkinds = []\n",
                "4:9",
                "would match nothing",
            ),
            (
                "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\noverrides = [\"builtin:read-only\"]\n",
                "4:13",
                "only for `action = \"allow\"`",
            ),
            (
                "[[policy.rules]]\nname = \"r\"\naction = \"allow\"\noverrides = [\"builtin:unparsable\"]\n",
                "4:14",
                "unparsable = \"allow\"",
            ),
            (
                "[[policy.rules]]\nname = \"builtin:mine\"\naction = \"deny\"\n",
                "2:8",
                "reserved",
            ),
            (
                "[[policy.access]]\nname = \"x\"\ngroups = [\"*\"]\nmode = \"read-only\"\n[[policy.rules]]\nname = \"x\"\naction = \"deny\"\n",
                "6:8",
                "duplicate rule name `x`",
            ),
            (
                "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nfilter = \"none\"\n",
                "4:10",
                "write \"missing\"",
            ),
            (
                "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nkind = [\"drop\"]\n",
                "4:1",
                "unknown field `kind`",
            ),
        ];
        for (text, location, fragment) in cases {
            assert_one_error(text, location, fragment);
        }
    }

    #[test]
    fn telemetry_section() {
        // Absent, or present without an endpoint: no export.
        assert!(parse("").unwrap().telemetry.is_none());
        assert!(parse("[telemetry]\nservice_name = \"gw\"\n")
            .unwrap()
            .telemetry
            .is_none());

        let t = parse("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n")
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(t.otlp_endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.service_name, "portcullis");
        assert!(t.headers.is_empty());
        assert_eq!(t.sample_ratio, 1.0);

        std::env::set_var("PORTCULLIS_TEST_CFG_OTLP_TOKEN", "tok-123");
        let t = parse(
            "[telemetry]\notlp_endpoint = \"http://collector:4318/otlp/\"\nservice_name = \"gw-east\"\n\
             headers = { Authorization = \"Bearer ${PORTCULLIS_TEST_CFG_OTLP_TOKEN}\" }\nsample_ratio = 0.25\n",
        )
        .unwrap()
        .telemetry
        .unwrap();
        assert_eq!(t.otlp_endpoint, "http://collector:4318/otlp/v1/traces");
        assert_eq!(t.service_name, "gw-east");
        assert_eq!(t.headers["authorization"], "Bearer tok-123");
        assert_eq!(t.sample_ratio, 0.25);
        // Header values stay out of Debug output.
        assert!(!format!("{t:?}").contains("tok-123"));
        let t =
            parse("[telemetry]\notlp_endpoint = \"http://h:4318/v1/traces\"\nsample_ratio = 0\n")
                .unwrap()
                .telemetry
                .unwrap();
        assert_eq!(
            (t.otlp_endpoint.as_str(), t.sample_ratio),
            ("http://h:4318/v1/traces", 0.0)
        );

        let cases = [
            (
                "[telemetry]\notlp_endpoint = \"not a url\"\n",
                "2:17",
                "`telemetry.otlp_endpoint`: `not a url` is not a URL",
            ),
            (
                "[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\n",
                "2:17",
                "is not an http:// URL",
            ),
            (
                "[telemetry]\notlp_endpoint = \"https://collector:4318\"\n",
                "2:17",
                "https is not supported",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://c:4318/?x=1\"\n",
                "2:17",
                "has a query or fragment",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = 1.5\n",
                "3:16",
                "`telemetry.sample_ratio` must be between 0.0 and 1.0, not 1.5",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = -0.1\n",
                "3:16",
                "must be between 0.0 and 1.0",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://c:4318\"\nservice_name = \" \"\n",
                "3:16",
                "`service_name` must not be empty",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://c:4318\"\nheaders = { \"bad header\" = \"x\" }\n",
                "3:28",
                "`bad header` is not a valid HTTP header name",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://c:4318\"\nheaders = { x-token = \"a\\nb\" }\n",
                "3:23",
                "`telemetry.headers.x-token`: the value is not a valid HTTP header value",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample = 1.0\n",
                "3:1",
                "unknown field `sample`",
            ),
        ];
        for (text, location, fragment) in cases {
            assert_one_error(text, location, fragment);
        }
    }
}
