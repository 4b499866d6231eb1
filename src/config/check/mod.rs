//! Checking the schema as a whole into a [`Config`], with every problem located.

mod authentication;
mod listeners;
mod sections;
mod targets;
mod telemetry;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::interpolate::*;
use super::schema::*;
use super::*;
// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

pub(super) const DEFAULT_NODE: &str = "portcullis";
pub(super) const DEFAULT_HANDSHAKE_TIMEOUT: Duration =
    proto_postgres::ListenerConfig::DEFAULT_HANDSHAKE_TIMEOUT;
pub(super) const DEFAULT_DRAIN_TIMEOUT: Duration =
    proto_postgres::ListenerConfig::DEFAULT_DRAIN_TIMEOUT;
pub(super) const DEFAULT_DATA_DIR: &str = "data";
pub(super) const DEFAULT_MAX_MESSAGE_BYTES: usize =
    proto_postgres::ListenerConfig::DEFAULT_MAX_MESSAGE_BYTES;
/// Most session worker threads a configuration may ask for.
pub(super) const MAX_WORKERS: usize = 1024;
pub(super) const DEFAULT_LOG_LEVEL: &str = "info";
pub(super) const DEFAULT_SERVICE_NAME: &str = "portcullis";
/// Path of the OTLP/HTTP traces endpoint under a receiver's base URL.
pub(super) const OTLP_TRACES_PATH: &str = "/v1/traces";

/// The URL spans are POSTed to, for a configured `otlp_endpoint`: an `http://` URL with a host,
/// `/v1/traces` appended unless the path already ends with it.
pub(super) fn otlp_traces_url(text: &str) -> Result<String, String> {
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
/// `postgres.listen` when unset: PostgreSQL's own port is 5432, so a gateway beside it uses 6432.
pub(super) const DEFAULT_POSTGRES_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6432);
/// `mysql.listen` when unset: beside a MySQL or MariaDB server's own 3306.
pub(super) const DEFAULT_MYSQL_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3307);
pub(super) const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
pub(super) const MIN_HMAC_SECRET_BYTES: usize = 32;

pub(super) const HMAC_ALGORITHMS: &[&str] = &["HS256", "HS384", "HS512"];
pub(super) const PUBLIC_KEY_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Collects errors with their positions while turning the file schema into a [`Config`].
pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a Path,
    pub(super) base: PathBuf,
    pub(super) errors: Vec<(usize, ConfigError)>,
    /// Where values with an unresolved `${VAR}` start. Their problem is already reported, and
    /// what checking their raw text would add (a secret too short, a file not found) is noise.
    unresolved: HashSet<usize>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(text: &'a str, origin: &'a Path) -> Self {
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

    pub(super) fn location(&self, offset: usize) -> Location {
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

    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
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

    pub(super) fn into_errors(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        ConfigErrors {
            errors: self.errors.into_iter().map(|(_, e)| e).collect(),
        }
    }

    /// Reports every `${VAR}` problem (unset, not UTF-8, malformed) in the string values that are
    /// interpolated: everywhere but `[policy]` and `[audit]`, whose values are literal, except an
    /// audit sink's `url`. This mirrors where the schema uses [`ConfigString`] (the `[policy]` and
    /// `[audit]` schemas, in their own crates, cannot).
    pub(super) fn check_references(&mut self, document: &toml::de::DeTable<'_>) {
        for (key, value) in document {
            match key.get_ref().as_ref() {
                "policy" | "masking" => {}
                "approvals" => {
                    // `${VAR}` is expanded in the store's URL and the webhooks' URL and secret.
                    let section = value.get_ref();
                    if let Some(url) = section.get("store_url") {
                        self.check_reference_value(url);
                    }
                    let hooks = section.get("webhooks").map(|h| h.get_ref());
                    for hook in hooks
                        .and_then(toml::de::DeValue::as_array)
                        .into_iter()
                        .flatten()
                    {
                        for key in ["url", "secret"] {
                            if let Some(v) = hook.get_ref().get(key) {
                                self.check_reference_value(v);
                            }
                        }
                    }
                }
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

    pub(super) fn check_reference_value(&mut self, value: &Spanned<toml::de::DeValue<'_>>) {
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
    pub(super) fn resolve(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// Resolves a path value and checks that it names a readable file.
    pub(super) fn existing_file(&mut self, key: &str, value: &Str) -> PathBuf {
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
    pub(super) fn certificate_file(
        &mut self,
        key: &str,
        value: &Str,
        what: &'static str,
    ) -> PathBuf {
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
    pub(super) fn private_key_file(&mut self, key: &str, value: &Str) -> PathBuf {
        let before = self.errors.len();
        let path = self.existing_file(key, value);
        if self.errors.len() == before {
            if let Err(e) = crate::tls::read_private_key(&path) {
                self.error(value.span(), format!("`{key}`: {e}"));
            }
        }
        path
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<&Str>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref().as_str()) {
            Ok(d) => d,
            Err(e) => {
                self.error(value.span(), format!("`{key}`: {e}"));
                default
            }
        }
    }

    pub(super) fn non_empty(&mut self, key: &str, value: &Str) -> String {
        let s = value.get_ref().as_str();
        if s.trim().is_empty() {
            self.error(value.span(), format!("`{key}` must not be empty"));
        }
        s.to_owned()
    }

    pub(super) fn check(&mut self, file: FileConfig) -> Config {
        let gateway = self.check_gateway(&file.gateway);
        let postgres = file.postgres.as_ref().map(|p| self.check_postgres(p));
        let mysql = file.mysql.as_ref().map(|m| self.check_mysql(m));
        let identity = self.check_identity(
            &file.identity,
            file.postgres
                .as_ref()
                .is_some_and(|p| p.get_ref().tls_client_ca.is_some())
                || file
                    .mysql
                    .as_ref()
                    .is_some_and(|m| m.get_ref().tls_client_ca.is_some()),
        );
        let targets = self.check_targets(&file.targets);
        let policy = file.policy.as_ref().and_then(|p| self.check_policy(p));
        let audit = self.check_audit(file.audit.as_ref(), &gateway.data_dir);
        let masking = file
            .masking
            .as_ref()
            .and_then(|m| self.check_masking(m, &gateway.data_dir));
        let admin = file.admin.as_ref().map(|a| self.check_admin(a));
        let approvals = file
            .approvals
            .as_ref()
            .map(|a| self.check_approvals(a, policy.as_ref(), &gateway.data_dir));
        let telemetry = file
            .telemetry
            .as_ref()
            .and_then(|t| self.check_telemetry(t));
        Config {
            source: self.origin.to_path_buf(),
            gateway,
            postgres,
            mysql,
            identity,
            targets,
            policy,
            audit,
            masking,
            approvals,
            admin,
            telemetry,
        }
    }
}
