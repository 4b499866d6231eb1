//! Minting tokens for development and tests (`portcullis token mint`). Nothing in the gateway
//! mints tokens on its own.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::Value;

use crate::IdentityError;

/// Claims the mint sets itself; `extra` may not contain them.
const RESERVED_CLAIMS: &[&str] = &["sub", "iss", "aud", "iat", "exp", "nbf", "groups"];

/// The key a token is signed with.
#[derive(Clone)]
pub enum MintKey {
    /// An HMAC secret; the token is signed with HS256.
    Hs256(String),
    /// A PEM private key (PKCS#8, or PKCS#1 for RSA) and the algorithm to sign with:
    /// `RS256`/`RS384`/`RS512`/`PS256`/`PS384`/`PS512` for RSA, `ES256`/`ES384` for EC, `EdDSA` for
    /// Ed25519.
    PrivateKeyPem {
        /// JOSE algorithm name.
        alg: String,
        /// The PEM text.
        pem: Vec<u8>,
    },
}

impl fmt::Debug for MintKey {
    // Hand-written: key material never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MintKey::Hs256(_) => f.write_str("Hs256(<redacted>)"),
            MintKey::PrivateKeyPem { alg, .. } => f
                .debug_struct("PrivateKeyPem")
                .field("alg", alg)
                .field("pem", &"<redacted>")
                .finish(),
        }
    }
}

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// The signing key.
    pub key: MintKey,
    /// `iss`, when set.
    pub issuer: Option<String>,
    /// `aud` (a single string), when set.
    pub audience: Option<String>,
    /// `sub`; must not be empty.
    pub subject: String,
    /// The `groups` claim (an array, possibly empty).
    pub groups: Vec<String>,
    /// Lifetime: `exp` is `iat` plus this.
    pub ttl: Duration,
    /// `nbf`, when set.
    pub not_before: Option<SystemTime>,
    /// `kid` header, to pick a key from a JWKS.
    pub kid: Option<String>,
    /// Further claims; they may not repeat the ones above.
    pub extra: serde_json::Map<String, Value>,
}

impl MintRequest {
    /// A request for `subject`, signed with `key`, valid for `ttl`, with no other claims.
    pub fn new(key: MintKey, subject: impl Into<String>, ttl: Duration) -> Self {
        Self {
            key,
            issuer: None,
            audience: None,
            subject: subject.into(),
            groups: Vec::new(),
            ttl,
            not_before: None,
            kid: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// Signs a compact JWT with `iat` (now), `exp` (now + ttl), `sub`, `groups`, and `iss`, `aud`,
/// `nbf` and the extra claims when given.
pub fn mint_token(request: &MintRequest) -> Result<String, IdentityError> {
    if request.subject.is_empty() {
        return Err(IdentityError::Mint("the subject is empty".into()));
    }
    if let Some(name) = request
        .extra
        .keys()
        .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
    {
        return Err(IdentityError::Mint(format!(
            "extra claim {name:?} is set by the mint itself"
        )));
    }
    let (alg, key) = encoding_key(&request.key)?;
    let now = unix_seconds(SystemTime::now())?;
    let exp = now
        .checked_add(request.ttl.as_secs())
        .ok_or_else(|| IdentityError::Mint("the lifetime is too long".into()))?;

    let mut claims = request.extra.clone();
    claims.insert("sub".into(), Value::String(request.subject.clone()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(exp));
    claims.insert("groups".into(), Value::from(request.groups.clone()));
    if let Some(issuer) = &request.issuer {
        claims.insert("iss".into(), Value::String(issuer.clone()));
    }
    if let Some(audience) = &request.audience {
        claims.insert("aud".into(), Value::String(audience.clone()));
    }
    if let Some(nbf) = request.not_before {
        claims.insert("nbf".into(), Value::from(unix_seconds(nbf)?));
    }

    let mut header = Header::new(alg);
    header.kid = request.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| IdentityError::Mint(format!("signing failed: {e}")))
}

fn encoding_key(key: &MintKey) -> Result<(Algorithm, EncodingKey), IdentityError> {
    match key {
        MintKey::Hs256(secret) => {
            if secret.is_empty() {
                return Err(IdentityError::InvalidKey("the HMAC secret is empty".into()));
            }
            Ok((
                Algorithm::HS256,
                EncodingKey::from_secret(secret.as_bytes()),
            ))
        }
        MintKey::PrivateKeyPem { alg, pem } => {
            if alg.eq_ignore_ascii_case("none") {
                return Err(IdentityError::Mint(
                    "algorithm none makes unsigned tokens and is refused".into(),
                ));
            }
            let alg = Algorithm::from_str(alg)
                .map_err(|_| IdentityError::Mint(format!("unknown algorithm {alg:?}")))?;
            let bad_key = |_| {
                IdentityError::InvalidKey(format!(
                    "the PEM is not a private key usable with {alg:?}"
                ))
            };
            let key = match alg.family() {
                AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem).map_err(bad_key)?,
                AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem).map_err(bad_key)?,
                AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem).map_err(bad_key)?,
                AlgorithmFamily::Hmac => {
                    return Err(IdentityError::Mint(format!(
                        "{alg:?} needs a secret: use MintKey::Hs256"
                    )))
                }
            };
            Ok((alg, key))
        }
    }
}

fn unix_seconds(t: SystemTime) -> Result<u64, IdentityError> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| IdentityError::Mint("a time before 1970 cannot be a claim".into()))
}
