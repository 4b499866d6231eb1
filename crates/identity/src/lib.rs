//! Who is asking: turns the credentials a protocol crate collected into a
//! [`gateway_core::Identity`].
//!
//! This crate implements the [`gateway_core::Authenticator`] seam and nothing else: it does not
//! decide what an identity may do (that is the policy crate), it does not speak any wire protocol,
//! and it never logs or returns a password, a token or key material.
//!
//! In the order a login meets them:
//! - [`IdentityChain`] is the [`Authenticator`] the gateway is given. It routes client
//!   certificates to the [`CertAuthenticator`], and a password field either to a static user
//!   ([`StaticUsers`], argon2id hashes) or, when it looks like a compact JWS, to the
//!   [`JwtAuthenticator`];
//! - [`JwtAuthenticator`] checks a token's signature against an HMAC secret, a PEM public key or a
//!   JWKS (file or URL), refuses unsigned tokens and algorithms outside the allow-list or foreign
//!   to the key, and checks `exp`, `nbf`, `iss` and `aud` as configured ([`JwtConfig`]);
//! - [`StaticUsers`] holds local users with argon2id password hashes ([`hash_password`] makes them);
//! - [`CertAuthenticator`] reads the subject (and optionally groups from OU attributes) of a
//!   certificate the TLS layer already verified ([`CertConfig`]);
//! - [`mint_token`] signs development tokens ([`MintRequest`], [`MintKey`]); it is only used by
//!   `portcullis token mint` and tests, never implicitly.
//!
//! Setup problems (unreadable key files, bad hashes, impossible configurations) are
//! [`IdentityError`]s; refused logins are [`GatewayError::auth`] errors whose message names the
//! check that failed.

#![warn(missing_docs)]

pub mod cert;
pub mod jwt;
pub mod mint;
pub mod users;

mod error;

pub use cert::{CertAuthenticator, CertConfig, CertSubjectField};
pub use error::IdentityError;
pub use jwt::{JwtAuthenticator, JwtConfig, JwtKeySource};
pub use mint::{mint_token, MintKey, MintRequest};
pub use users::{hash_password, StaticUser, StaticUsers};

use gateway_core::{Authenticator, ClientInfo, Credentials, GatewayError, Identity};

/// Largest password field the chain looks at; anything longer is refused before any work is done.
/// It matches the largest token [`JwtAuthenticator`] accepts.
const MAX_PASSWORD_LEN: usize = jwt::MAX_TOKEN_LEN;

/// The gateway's [`Authenticator`]: every configured way of proving who one is, tried in a fixed
/// order.
///
/// - Client certificate credentials go to `cert` (refused when it is `None`).
/// - A password for a name in `users` is checked against that user's argon2id hash, and nothing
///   else is tried.
/// - Otherwise, when `jwt` is configured and the password looks like a compact JWS, it is verified
///   as a token.
/// - Otherwise the login fails with "unknown user or wrong password", after the same argon2 work a
///   real user would cost, so timing does not reveal which names exist.
#[derive(Debug, Default)]
pub struct IdentityChain {
    /// Token verification, when configured.
    pub jwt: Option<JwtAuthenticator>,
    /// Static local users (may be empty).
    pub users: StaticUsers,
    /// Client certificate authentication, when configured.
    pub cert: Option<CertAuthenticator>,
}

impl IdentityChain {
    /// A chain with no method configured: it refuses everyone.
    pub fn new() -> Self {
        Self::default()
    }

    async fn authenticate_password(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Identity, GatewayError> {
        if password.is_empty() {
            return Err(GatewayError::auth("password required"));
        }
        let token_shaped = self.jwt.is_some() && looks_like_compact_jws(password);
        // Checked before the user lookup so that the answer does not depend on whether the name
        // exists.
        if password.len() > MAX_PASSWORD_LEN {
            return Err(GatewayError::auth(if token_shaped {
                "token too long (more than 16 KiB)"
            } else {
                "password too long"
            }));
        }
        if self.users.contains(user) {
            return self.users.verify(user, password).await;
        }
        if let (Some(jwt), true) = (&self.jwt, token_shaped) {
            return jwt.verify(password).await;
        }
        self.users.spend_dummy_verification(password).await;
        Err(GatewayError::auth("unknown user or wrong password"))
    }
}

#[async_trait::async_trait]
impl Authenticator for IdentityChain {
    async fn authenticate(
        &self,
        credentials: &Credentials,
        client: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        let result = match credentials {
            Credentials::ClientCertificate {
                certificate_der, ..
            } => match &self.cert {
                Some(cert) => cert.authenticate(certificate_der),
                None => Err(GatewayError::auth(
                    "client certificate authentication is not enabled on this gateway",
                )),
            },
            Credentials::Password { user, password } => {
                self.authenticate_password(user, password).await
            }
            Credentials::BearerToken { token, .. } => match &self.jwt {
                Some(jwt) if token.len() <= MAX_PASSWORD_LEN => jwt.verify(token).await,
                Some(_) => Err(GatewayError::auth("token too long (more than 16 KiB)")),
                None => Err(GatewayError::auth(
                    "token authentication is not enabled on this gateway",
                )),
            },
            _ => Err(GatewayError::auth(
                "this kind of credential is not accepted by this gateway",
            )),
        };
        match &result {
            Ok(identity) => tracing::debug!(
                subject = %identity.subject,
                method = ?identity.auth_method,
                client = %client.addr,
                "authenticated"
            ),
            Err(err) => tracing::info!(
                user = %credentials.user(),
                client = %client.addr,
                reason = %err.message,
                "authentication refused"
            ),
        }
        result
    }
}

/// Whether `s` has the shape of a compact JWS: three base64url segments separated by dots. The
/// signature segment may be empty so that unsigned tokens reach the JWT check and are refused
/// with a message that says so.
fn looks_like_compact_jws(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !header.is_empty()
        && !payload.is_empty()
        && b64url(header)
        && b64url(payload)
        && b64url(signature)
}

#[cfg(test)]
mod tests;
