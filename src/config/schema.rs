//! The file schema: what the TOML may hold. The doc comments here are the reference for every
//! key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::interpolate::ConfigString;
// ---------------------------------------------------------------------------------------------
// The file schema. The doc comments here are the reference for every key.
// ---------------------------------------------------------------------------------------------

pub(super) type Str = Spanned<ConfigString>;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    /// `[gateway]`: settings of this node. Optional.
    #[serde(default)]
    pub(super) gateway: GatewaySection,
    /// `[postgres]`: the PostgreSQL listener. Without it no PostgreSQL client can connect.
    pub(super) postgres: Option<Spanned<PostgresSection>>,
    /// `[mysql]`: the MySQL listener (MySQL and MariaDB clients). Without it no MySQL client can
    /// connect.
    pub(super) mysql: Option<Spanned<MysqlSection>>,
    /// `[identity]`: how clients prove who they are. Without any method every login is refused.
    #[serde(default)]
    pub(super) identity: IdentitySection,
    /// `[[targets]]`: the upstream databases.
    #[serde(default)]
    pub(super) targets: Vec<Spanned<TargetSection>>,
    /// `[policy]`: who may open which targets and run which statements. The schema and its
    /// reference live in `policy::rules::PolicySection` (values are taken literally: `${VAR}` is
    /// not expanded inside `[policy]`, so a policy reads the same wherever it is deployed).
    pub(super) policy: Option<Spanned<policy::rules::PolicySection>>,
    /// `[audit]`: where the audit trail goes and how durably. The schema and its reference live in
    /// `audit::AuditConfig` (docs/audit.md). Paths are resolved against the config file's
    /// directory; `${VAR}` is expanded in a PostgreSQL sink's `url` only.
    pub(super) audit: Option<Spanned<audit::AuditConfig>>,
    /// `[masking]`: column rules and content detectors that mask result values for the identities
    /// they name. The schema and its reference live in `masking::config::MaskingSection`
    /// (docs/masking.md); values are literal, like `[policy]`'s.
    pub(super) masking: Option<Spanned<masking::config::MaskingSection>>,
    /// `[approvals]`: who approves statements that `require-approval` rules hold, how long they
    /// wait, and where requests and grants are kept. The schema and its reference live in
    /// `approvals::ApprovalsConfig` (docs/approvals.md); values are literal, like `[policy]`'s.
    /// Without it held statements are refused.
    pub(super) approvals: Option<Spanned<approvals::ApprovalsConfig>>,
    /// `[admin]`: the admin HTTP listener serving `/metrics`, `/healthz` and `/readyz`, and the
    /// admin API (`/api/v1`, bearer tokens) when `[approvals]` is configured. Without it none
    /// runs.
    pub(super) admin: Option<Spanned<AdminSection>>,
    /// `[telemetry]`: OpenTelemetry trace export. Without it (or without `otlp_endpoint`) no span
    /// leaves the process.
    pub(super) telemetry: Option<Spanned<TelemetrySection>>,
}

/// `[telemetry]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetrySection {
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry Collector, Jaeger, Tempo, ...), e.g.
    /// `"http://127.0.0.1:4318"`; spans are POSTed as protobuf to `<url>/v1/traces` (a URL that
    /// already ends in `/v1/traces` is used as it is). `http://` only: run a collector next to
    /// the gateway to forward over TLS. Absent: no export.
    pub(super) otlp_endpoint: Option<Str>,
    /// `service.name` of the exported spans. Default `"portcullis"`. (`service.instance.id` is
    /// `gateway.node`.)
    pub(super) service_name: Option<Str>,
    /// HTTP headers sent with every export, e.g. `{ authorization = "Bearer ${OTLP_TOKEN}" }`.
    pub(super) headers: Option<BTreeMap<String, Str>>,
    /// Fraction of sessions whose trace is exported, `0.0` to `1.0`; a session's statements
    /// follow its decision. Default `1.0`.
    pub(super) sample_ratio: Option<Spanned<f64>>,
}

/// `[admin]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminSection {
    /// Address and port of the admin HTTP listener, `IP:PORT`. It has no authentication: keep it
    /// on loopback or a management network. Default `"127.0.0.1:9090"`.
    pub(super) listen: Option<Str>,
    /// PEM certificate chain (leaf first): with `tls_key`, the admin listener serves HTTPS only.
    /// Default: plain HTTP.
    pub(super) tls_cert: Option<Str>,
    /// PEM private key of `tls_cert`.
    pub(super) tls_key: Option<Str>,
}

/// `[gateway]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct GatewaySection {
    /// Node name recorded in every audit record. Default `"portcullis"`.
    pub(super) node: Option<Str>,
    /// Directory for the node's own files, such as the default SQLite audit trail (created at
    /// start when missing). Default `"data"` next to the configuration file.
    pub(super) data_dir: Option<Str>,
    /// Longest time a client may take from connecting to being authenticated (TLS, startup,
    /// authentication). Duration string. Default `"10s"`.
    pub(super) handshake_timeout: Option<Str>,
    /// On shutdown (SIGTERM, SIGINT), how long sessions may take to finish the statements in
    /// flight; each session ends as soon as the database owes it nothing more. Duration string.
    /// Default `"30s"`.
    pub(super) drain_timeout: Option<Str>,
    /// Largest single protocol message accepted from a client, in bytes. Default `67108864`
    /// (64 MiB).
    pub(super) max_message_bytes: Option<Spanned<u64>>,
    /// Log filter, a `tracing` EnvFilter directive such as `"info"` or
    /// `"info,proto_postgres=debug"`. The `RUST_LOG` environment variable overrides it.
    /// Default `"info"`.
    pub(super) log_level: Option<Str>,
    /// Threads that run client sessions, each a single-threaded async runtime; every new
    /// connection goes to the one with the fewest sessions. Default: one per core. `0` runs
    /// sessions on the shared work-stealing runtime instead.
    pub(super) workers: Option<Spanned<u64>>,
}

/// `[postgres]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostgresSection {
    /// Address and port to listen on, `IP:PORT` (`[::1]:6432` for IPv6). Port 0 picks a free
    /// port. Default `"127.0.0.1:6432"`.
    pub(super) listen: Option<Str>,
    /// PEM file with the server certificate chain, leaf first. With `tls_key` it enables TLS.
    pub(super) tls_cert: Option<Str>,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub(super) tls_key: Option<Str>,
    /// PEM file with the CA certificates that client certificates are verified against. When
    /// set, clients may present a certificate (those that do not can still log in with a
    /// password or token); needs `tls_cert` and `tls_key`.
    pub(super) tls_client_ca: Option<Str>,
    /// Refuse clients that do not negotiate TLS. Needs `tls_cert` and `tls_key`. Default `false`.
    pub(super) require_tls: Option<Spanned<bool>>,
    /// Accept passwords and tokens over unencrypted connections from non-loopback clients.
    /// Loopback clients may always use them. Default `false`.
    pub(super) allow_plaintext_password: Option<bool>,
    /// Refuse a login whose user name (startup `user`) differs from the subject the credential
    /// proves. Default `false`: the user name is recorded beside the subject but not checked.
    pub(super) require_user_match: Option<bool>,
}

/// `[mysql]`: the keys of `[postgres]`, with the same meaning.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MysqlSection {
    /// Address and port to listen on, `IP:PORT` (`[::1]:3307` for IPv6). Port 0 picks a free
    /// port. Default `"127.0.0.1:3307"`, beside a database server's own 3306.
    pub(super) listen: Option<Str>,
    /// PEM file with the server certificate chain, leaf first. With `tls_key` it enables TLS.
    pub(super) tls_cert: Option<Str>,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub(super) tls_key: Option<Str>,
    /// PEM file with the CA certificates client certificates must chain to. With it, a client
    /// that presents a certificate is verified, and (with `[identity.client_cert]`) logs in as
    /// the certificate's subject without a password. Needs TLS.
    pub(super) tls_client_ca: Option<Str>,
    /// Refuse clients that do not negotiate TLS. Needs `tls_cert` and `tls_key`. Default `false`.
    pub(super) require_tls: Option<Spanned<bool>>,
    /// Accept passwords and tokens (sent in clear text, `mysql_clear_password`) over unencrypted
    /// connections from non-loopback clients. Loopback clients may always send them. Default
    /// `false`.
    pub(super) allow_plaintext_password: Option<bool>,
    /// Refuse a login whose user name (the handshake's user) differs from the subject the
    /// credential proves. Default `false`: the user name is recorded beside the subject but not
    /// checked.
    pub(super) require_user_match: Option<bool>,
}

/// `[identity]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct IdentitySection {
    /// `[identity.jwt]`: JWTs presented in the password field.
    pub(super) jwt: Option<Spanned<JwtSection>>,
    /// `[[identity.users]]`: static local users (break-glass access, or no identity provider).
    #[serde(default)]
    pub(super) users: Vec<Spanned<UserSection>>,
    /// `[identity.client_cert]`: identity from verified TLS client certificates.
    pub(super) client_cert: Option<Spanned<ClientCertSection>>,
}

/// `[identity.jwt]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtSection {
    /// Required value of the `iss` claim. Optional: when absent the issuer is not checked.
    pub(super) issuer: Option<Str>,
    /// Accepted values of the `aud` claim; a token must name at least one. Required, non-empty.
    #[serde(default)]
    pub(super) audience: Vec<Str>,
    /// Accepted signature algorithms: `HS256`, `HS384`, `HS512` with `hs256_secret` or
    /// `hs256_secret_file`; `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`,
    /// `ES384`, `EdDSA` with a public key or JWKS. Required, non-empty; `none` is refused.
    pub(super) algorithms: Option<Spanned<Vec<Str>>>,
    /// Shared HMAC secret, at least 32 bytes. Use an environment variable:
    /// `"${PORTCULLIS_JWT_SECRET}"`. One of the four key sources.
    pub(super) hs256_secret: Option<Str>,
    /// File holding the shared HMAC secret (surrounding whitespace is ignored), at least 32
    /// bytes. One of the key sources.
    pub(super) hs256_secret_file: Option<Str>,
    /// PEM file with the issuer's public key. One of the key sources.
    pub(super) public_key_file: Option<Str>,
    /// JWKS document on disk; tokens choose a key by `kid`. One of the key sources.
    pub(super) jwks_file: Option<Str>,
    /// URL of the issuer's JWKS document (`https://`; `http://` only for a loopback host). One of
    /// the key sources.
    pub(super) jwks_url: Option<Str>,
    /// Claim that names the subject. Default `"sub"`.
    pub(super) subject_claim: Option<Str>,
    /// Claim that lists the subject's groups (an array of strings, or one string). Default
    /// `"groups"`.
    pub(super) groups_claim: Option<Str>,
    /// Clock skew tolerated when checking `exp` and `nbf`. Duration string. Default `"30s"`.
    pub(super) leeway: Option<Str>,
}

/// `[[identity.users]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserSection {
    /// User name clients log in with. Required, unique.
    pub(super) name: Str,
    /// Argon2 password hash in PHC form (`$argon2id$v=19$...`), as printed by
    /// `portcullis hash-password`. Required.
    pub(super) password_hash: Str,
    /// Groups of the user, for rules. Default `[]`.
    #[serde(default)]
    pub(super) groups: Vec<ConfigString>,
}

/// `[identity.client_cert]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientCertSection {
    /// What names the subject: `"cn"` (the certificate's common name) or `"dn"` (the whole
    /// distinguished name). Default `"cn"`.
    pub(super) subject: Option<Str>,
    /// Whether the certificate's organizational units (`OU`) become groups. Default `false`.
    pub(super) groups_from_ou: Option<bool>,
}

/// `[[targets]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetSection {
    /// The database name clients ask for. Required, unique per protocol.
    pub(super) name: Str,
    /// Wire protocol: `"postgres"` or `"mysql"`. Default `"postgres"`.
    pub(super) protocol: Option<Str>,
    /// Upstream host name or IP address. Required.
    pub(super) host: Str,
    /// Upstream port. Default 5432 for postgres, 3306 for mysql.
    pub(super) port: Option<Spanned<u16>>,
    /// Database name on the upstream. Default: `name`.
    pub(super) database: Option<Str>,
    /// Service user the gateway logs in as upstream. Required.
    pub(super) user: Str,
    /// Service password. Use an environment variable: `"${APP_DB_PASSWORD}"`. Optional (trust).
    pub(super) password: Option<Str>,
    /// Upstream TLS: `"disable"` or `"verify-full"` (certificate chain and host name verified).
    /// Default `"disable"`.
    pub(super) tls: Option<Str>,
    /// PEM file with the CA certificates to trust for `verify-full`. Default: the Mozilla root set
    /// bundled with the gateway (webpki-roots); the system trust store is not read.
    pub(super) tls_ca_file: Option<Str>,
    /// Host name to verify for `verify-full` instead of `host`. Optional.
    pub(super) tls_server_name: Option<Str>,
    /// Free-form labels for rules, e.g. `{ env = "prod", team = "payments" }`. Default `{}`.
    #[serde(default)]
    pub(super) labels: BTreeMap<String, ConfigString>,
}
