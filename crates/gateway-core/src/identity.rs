//! Who is asking: the credentials a protocol crate collects and the [`Identity`] an
//! [`Authenticator`] makes of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::error::GatewayError;

/// How an identity proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthMethod {
    /// A signed JWT presented in the password field.
    Jwt,
    /// A static local user's password (argon2id hash in the config).
    Password,
    /// A verified TLS client certificate.
    ClientCertificate,
}

/// An authenticated principal. Permissions follow this, never the upstream credentials.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Identity {
    /// Stable subject (JWT `sub`, static user name, certificate subject).
    pub subject: String,
    /// Groups the subject belongs to; rules match on these.
    pub groups: Vec<String>,
    /// How the subject authenticated.
    pub auth_method: AuthMethod,
    /// Further claims (JWT payload) for rules and audit. Never contains the token itself.
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl Identity {
    /// Whether the identity is a member of `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What the client presented. Protocol crates build this from their handshake.
#[derive(Clone)]
#[non_exhaustive]
pub enum Credentials {
    /// A user name and the password field, which may carry a JWT or a static user's password.
    Password {
        /// The user name the client sent in its handshake.
        user: String,
        /// The password field as sent. Never logged.
        password: String,
    },
    /// A TLS client certificate the listener already verified against its CA.
    ClientCertificate {
        /// The user name the client sent in its handshake.
        user: String,
        /// The DER encoding of the leaf certificate.
        certificate_der: Vec<u8>,
    },
    /// A bearer token the protocol carries as such (not in a password field): it is checked as a
    /// token only, never as a static user's password.
    BearerToken {
        /// The user name the client sent in its handshake (may be empty).
        user: String,
        /// The token as sent. Never logged.
        token: String,
    },
}

impl Credentials {
    /// The user name the client asked for.
    pub fn user(&self) -> &str {
        match self {
            Credentials::Password { user, .. }
            | Credentials::ClientCertificate { user, .. }
            | Credentials::BearerToken { user, .. } => user,
        }
    }
}

impl std::fmt::Debug for Credentials {
    // Hand-written so that a password or token can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::ClientCertificate {
                user,
                certificate_der,
            } => f
                .debug_struct("ClientCertificate")
                .field("user", user)
                .field("certificate_len", &certificate_der.len())
                .finish(),
            Credentials::BearerToken { user, .. } => f
                .debug_struct("BearerToken")
                .field("user", user)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Facts about the client connection, for rules and audit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientInfo {
    /// The client's address.
    #[serde(serialize_with = "serialize_addr")]
    pub addr: SocketAddr,
    /// Wire protocol name, e.g. `postgres`.
    pub protocol: &'static str,
    /// Whether the client connection is encrypted.
    pub tls: bool,
    /// Application name the client announced, if any.
    pub application: Option<String>,
}

/// Turns credentials into an identity. Runs once per connection, after the protocol handshake and
/// before any upstream connection is made.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    /// Returns the identity, or an [`ErrorKind::Authentication`](crate::ErrorKind) error whose
    /// message says which check failed and contains no key material or secret.
    async fn authenticate(
        &self,
        credentials: &Credentials,
        client: &ClientInfo,
    ) -> Result<Identity, GatewayError>;
}

/// Refuses everyone: the default until an authenticator is configured.
#[derive(Debug, Default)]
pub struct DenyAllAuthenticator;

#[async_trait::async_trait]
impl Authenticator for DenyAllAuthenticator {
    async fn authenticate(
        &self,
        _: &Credentials,
        _: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        Err(GatewayError::auth(
            "no authentication method is configured on this gateway",
        ))
    }
}

/// `ip:port` for IPv4 written digit by digit on the stack: every audit record carries the client
/// address, and `Display` through `fmt` was a measurable share of a record's serialization.
/// IPv6 (rarer, and longer to get right) goes through serde's own `Display`-based form.
fn serialize_addr<S: serde::Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    let SocketAddr::V4(v4) = addr else {
        return serde::Serialize::serialize(addr, s);
    };
    // "255.255.255.255:65535" is 21 bytes.
    let mut buf = [0u8; 21];
    let mut len = 0;
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        push_decimal(&mut buf, &mut len, u32::from(octet));
    }
    buf[len] = b':';
    len += 1;
    push_decimal(&mut buf, &mut len, u32::from(v4.port()));
    // Only ASCII digits and separators were written.
    s.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default())
}

/// Appends `n` (below 100000) in decimal.
fn push_decimal(buf: &mut [u8; 21], len: &mut usize, mut n: u32) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        if let Some(slot) = buf.get_mut(*len) {
            *slot = d;
            *len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_serialize_as_display() {
        for addr in [
            "127.0.0.1:5432",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.4:9",
            "[::1]:6432",
            "[2001:db8::42%3]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let client = ClientInfo {
                addr,
                protocol: "postgres",
                tls: false,
                application: None,
            };
            let json = serde_json::to_value(&client).unwrap();
            assert_eq!(json["addr"], addr.to_string(), "{addr}");
        }
    }
}
