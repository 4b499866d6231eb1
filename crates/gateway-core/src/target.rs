//! Targets: the upstream databases a gateway fronts, chosen by the database name a client asks for.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// The wire protocol of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Protocol {
    /// PostgreSQL frontend/backend protocol 3.0.
    Postgres,
    /// MySQL client/server protocol.
    Mysql,
}

impl Protocol {
    /// Lower-case name used in config and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
        }
    }
}

/// How the gateway secures its connection to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain TCP.
    Disable,
    /// TLS with the certificate chain and host name verified against `ca_file` (or the system
    /// roots when absent).
    VerifyFull {
        /// PEM file with the CA certificates to trust.
        ca_file: Option<PathBuf>,
        /// Name to verify instead of `host`.
        server_name: Option<String>,
    },
}

/// One upstream database and the service credentials the gateway uses for it. Users never see
/// these credentials.
#[derive(Clone)]
pub struct Target {
    /// The name clients ask for (the database name in their connection string).
    pub name: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Upstream host name or address.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Database name on the upstream.
    pub database: String,
    /// Service user on the upstream.
    pub user: String,
    /// Service password; `None` for trust authentication.
    pub password: Option<String>,
    /// Upstream TLS mode.
    pub tls: UpstreamTls,
    /// Free-form labels for rules (environment, team, ...).
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// The error for a failed connection or login to this target's database: the message names
    /// the target (never its host or credentials, which clients do not see), `detail` says what
    /// failed.
    pub fn unreachable(&self, detail: impl Into<String>) -> crate::error::GatewayError {
        crate::error::GatewayError::upstream_unavailable(format!(
            "the gateway could not connect to the database of target \"{}\"",
            self.name
        ))
        .with_detail(detail)
    }
}

impl std::fmt::Debug for Target {
    // Hand-written to keep the service password out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("labels", &self.labels)
            .finish()
    }
}

/// The set of targets, looked up by protocol and requested name.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    by_name: HashMap<(Protocol, String), Arc<Target>>,
}

impl Targets {
    /// Builds the registry; a later target with the same protocol and name replaces an earlier one.
    pub fn new(targets: impl IntoIterator<Item = Target>) -> Self {
        let by_name = targets
            .into_iter()
            .map(|t| ((t.protocol, t.name.clone()), Arc::new(t)))
            .collect();
        Self { by_name }
    }

    /// The target a client of `protocol` reaches by asking for `name`.
    pub fn get(&self, protocol: Protocol, name: &str) -> Option<Arc<Target>> {
        self.by_name.get(&(protocol, name.to_owned())).cloned()
    }

    /// All targets, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.by_name.values()
    }
}
