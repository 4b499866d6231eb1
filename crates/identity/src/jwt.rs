//! JWT verification: signed tokens presented in the password field.
//!
//! A token is checked in this order, and the first failing check names itself in the error:
//! size, shape, header (`alg` present, not `none`, in the allow-list, no `crit`), key selection
//! (the key must belong to the algorithm's family; a JWKS key's `kty`, `alg` and curve must match
//! the header), signature, then claims (`exp` required, `nbf` when present, `iss` and `aud` when
//! configured, all with the configured leeway; `iat` when present must not lie further in the
//! future than the leeway), then the subject and groups claims.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gateway_core::{AuthMethod, GatewayError, Identity};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;

use crate::IdentityError;

/// Longest token accepted; longer ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Least time between two fetches of a JWKS URL triggered by tokens with an unknown `kid`.
pub const DEFAULT_JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Time allowed for one JWKS fetch (connect, TLS, request and body).
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest JWKS document accepted from a file or URL.
const MAX_JWKS_LEN: u64 = 1024 * 1024;

/// Where the keys that verify token signatures come from.
#[derive(Clone)]
pub enum JwtKeySource {
    /// A shared HMAC secret (verifies HS256, HS384, HS512 only). Its bytes are the UTF-8 string.
    Hs256Secret(String),
    /// A PEM file holding one RSA, EC (P-256/P-384) or Ed25519 public key, or a certificate.
    PublicKeyPemFile(PathBuf),
    /// A JSON Web Key Set file, read once at startup; keys are chosen by the token's `kid`.
    JwksFile(PathBuf),
    /// A JSON Web Key Set URL (`https://`, or `http://` to a loopback address only), fetched at
    /// startup and again, at most once per refetch interval, when a token names an unknown `kid`.
    JwksUrl(String),
}

impl fmt::Debug for JwtKeySource {
    // Hand-written so the secret never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKeySource::Hs256Secret(_) => f.write_str("Hs256Secret(<redacted>)"),
            JwtKeySource::PublicKeyPemFile(p) => {
                f.debug_tuple("PublicKeyPemFile").field(p).finish()
            }
            JwtKeySource::JwksFile(p) => f.debug_tuple("JwksFile").field(p).finish(),
            JwtKeySource::JwksUrl(u) => f.debug_tuple("JwksUrl").field(u).finish(),
        }
    }
}

/// What a token must satisfy, and where its subject and groups are read from.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Required `iss` value, when set.
    pub issuer: Option<String>,
    /// Accepted audiences: when non-empty, the token's `aud` must contain one of them. When empty,
    /// `aud` is not checked.
    pub audience: Vec<String>,
    /// Allowed algorithms, by JOSE name (`HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`,
    /// `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`). `none` is refused at setup. A token is
    /// accepted only if its algorithm is listed here and also fits the key that verifies it.
    pub algorithms: Vec<String>,
    /// Where verification keys come from.
    pub keys: JwtKeySource,
    /// Claim holding the subject; a dotted path such as `user.name` walks into objects.
    pub subject_claim: String,
    /// Claim holding the groups: an array of strings, or one string separated by spaces or
    /// commas. A dotted path such as `realm_access.roles` walks into objects. Missing means no
    /// groups.
    pub groups_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

impl JwtConfig {
    /// Defaults for `keys`: no issuer or audience check, subject from `sub`, groups from `groups`,
    /// 30 s leeway, and the algorithms that fit the key source (`HS256` for a secret; `RS256`,
    /// `ES256` and `EdDSA` otherwise).
    pub fn new(keys: JwtKeySource) -> Self {
        let algorithms = match keys {
            JwtKeySource::Hs256Secret(_) => vec!["HS256".to_owned()],
            _ => vec!["RS256".to_owned(), "ES256".to_owned(), "EdDSA".to_owned()],
        };
        Self {
            issuer: None,
            audience: Vec::new(),
            algorithms,
            keys,
            subject_claim: "sub".to_owned(),
            groups_claim: "groups".to_owned(),
            leeway: Duration::from_secs(30),
        }
    }
}

/// Verifies JWTs against a [`JwtConfig`] and turns their claims into an [`Identity`] with
/// [`AuthMethod::Jwt`].
pub struct JwtAuthenticator {
    issuer: Option<String>,
    audience: Vec<String>,
    algorithms: Vec<Algorithm>,
    subject_claim: String,
    groups_claim: String,
    leeway: u64,
    keys: Keys,
}

impl fmt::Debug for JwtAuthenticator {
    // Hand-written: the keys (an HMAC secret in particular) must not be printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.keys {
            Keys::Single { family, .. } => format!("single {} key", family_name(*family)),
            Keys::Set(set) => format!("key set file ({} keys)", set.keys.len()),
            Keys::Remote(remote) => format!("key set URL {}", remote.url),
        };
        f.debug_struct("JwtAuthenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("subject_claim", &self.subject_claim)
            .field("groups_claim", &self.groups_claim)
            .field("leeway", &self.leeway)
            .field("keys", &keys)
            .finish()
    }
}

/// The verification keys, by source.
enum Keys {
    /// One key from a secret or a PEM file.
    Single {
        key: DecodingKey,
        family: AlgorithmFamily,
    },
    /// A key set read from a file at startup.
    Set(KeySet),
    /// A key set fetched from a URL, refreshed on unknown `kid`s.
    Remote(RemoteKeys),
}

/// Usable signature keys of a JWKS.
struct KeySet {
    keys: Vec<SetKey>,
}

/// One JWKS key with the facts needed to decide which tokens it may verify.
struct SetKey {
    kid: Option<String>,
    family: AlgorithmFamily,
    alg: Option<Algorithm>,
    curve: Option<EllipticCurve>,
    key: DecodingKey,
}

struct RemoteKeys {
    url: String,
    agent: ureq::Agent,
    current: RwLock<Arc<KeySet>>,
    /// When the last fetch started; held while fetching so that concurrent logins with an unknown
    /// `kid` cause one fetch, not many.
    last_fetch: tokio::sync::Mutex<Instant>,
    refetch_interval: Duration,
}

impl JwtAuthenticator {
    /// Checks the configuration and loads the keys: reads a PEM or JWKS file, or fetches a JWKS URL
    /// (this blocks for up to 10 s; a failed fetch is an error, so a wrong URL shows at startup).
    ///
    /// Refused: an empty or unknown algorithm list, `none`, an empty secret, an allow-list with no
    /// algorithm that fits a single key, a key set with no usable signature key, and a plain
    /// `http://` JWKS URL to anything but a loopback address.
    pub fn new(config: JwtConfig) -> Result<Self, IdentityError> {
        let algorithms = parse_algorithms(&config.algorithms)?;
        if config.subject_claim.is_empty() {
            return Err(IdentityError::InvalidJwtConfig(
                "subject_claim must not be empty".into(),
            ));
        }
        if config.groups_claim.is_empty() {
            return Err(IdentityError::InvalidJwtConfig(
                "groups_claim must not be empty".into(),
            ));
        }
        if config.issuer.as_deref() == Some("") {
            return Err(IdentityError::InvalidJwtConfig(
                "issuer must not be empty when set".into(),
            ));
        }
        let keys = match &config.keys {
            JwtKeySource::Hs256Secret(secret) => {
                if secret.is_empty() {
                    return Err(IdentityError::InvalidKey("the HMAC secret is empty".into()));
                }
                if secret.len() < 32 {
                    tracing::warn!(
                        "the JWT HMAC secret is shorter than 32 bytes; use a longer random secret"
                    );
                }
                Keys::Single {
                    key: DecodingKey::from_secret(secret.as_bytes()),
                    family: AlgorithmFamily::Hmac,
                }
            }
            JwtKeySource::PublicKeyPemFile(path) => {
                let pem = read_limited(path)?;
                let (key, family) = public_key_from_pem(&pem).ok_or_else(|| {
                    IdentityError::InvalidKey(format!(
                        "{} holds no RSA, EC or Ed25519 public key or certificate in PEM form",
                        path.display()
                    ))
                })?;
                Keys::Single { key, family }
            }
            JwtKeySource::JwksFile(path) => {
                let text = read_limited(path)?;
                let text = String::from_utf8(text).map_err(|_| {
                    IdentityError::Jwks(format!("{} is not UTF-8 text", path.display()))
                })?;
                let set = parse_key_set(&text)
                    .map_err(|e| IdentityError::Jwks(format!("{}: {e}", path.display())))?;
                Keys::Set(set)
            }
            JwtKeySource::JwksUrl(url) => {
                check_jwks_url(url)?;
                let agent = jwks_agent();
                let set = fetch_key_set(&agent, url).map_err(IdentityError::Jwks)?;
                Keys::Remote(RemoteKeys {
                    url: url.clone(),
                    agent,
                    current: RwLock::new(Arc::new(set)),
                    last_fetch: tokio::sync::Mutex::new(Instant::now()),
                    refetch_interval: DEFAULT_JWKS_REFETCH_INTERVAL,
                })
            }
        };
        if let Keys::Single { family, .. } = &keys {
            if !algorithms.iter().any(|a| a.family() == *family) {
                return Err(IdentityError::InvalidJwtConfig(format!(
                    "none of the allowed algorithms can be verified with the configured {} key",
                    family_name(*family)
                )));
            }
        }
        Ok(Self {
            issuer: config.issuer,
            audience: config.audience,
            algorithms,
            subject_claim: config.subject_claim,
            groups_claim: config.groups_claim,
            leeway: config.leeway.as_secs(),
            keys,
        })
    }

    /// Sets the least time between two JWKS URL fetches caused by unknown `kid`s (default 30 s).
    /// Has no effect on other key sources.
    pub fn with_jwks_refetch_interval(mut self, interval: Duration) -> Self {
        if let Keys::Remote(remote) = &mut self.keys {
            remote.refetch_interval = interval;
        }
        self
    }

    /// Verifies `token` and returns the identity it carries. The error message names the check
    /// that failed and never contains the token or a key.
    pub async fn verify(&self, token: &str) -> Result<Identity, GatewayError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(GatewayError::auth("token too long (more than 16 KiB)"));
        }
        let header = parse_header(token)?;
        let alg = self.check_algorithm(&header)?;
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(GatewayError::auth("token key id (kid) is not a string")),
        };
        let validation = self.validation(alg);
        let claims = match &self.keys {
            Keys::Single { key, family } => {
                if *family != alg.family() {
                    return Err(GatewayError::auth(format!(
                        "token algorithm {alg:?} does not fit the configured {} key",
                        family_name(*family)
                    )));
                }
                decode(token, key, &validation)?
            }
            Keys::Set(set) => verify_with_set(token, set, kid, alg, &validation)?,
            Keys::Remote(remote) => {
                let set = remote.current();
                match (kid, set.has_kid(kid)) {
                    (Some(kid), false) => {
                        let set = self.refetch(remote, kid).await?;
                        verify_with_set(token, &set, Some(kid), alg, &validation)?
                    }
                    _ => verify_with_set(token, &set, kid, alg, &validation)?,
                }
            }
        };
        self.check_issued_at(&claims)?;
        self.identity(claims)
    }

    /// `iat`, which the library never looks at: a token issued later than now (beyond the leeway)
    /// comes from an issuer whose clock is wrong, or was minted ahead of time to be used later,
    /// and either way its `exp` cannot be trusted to bound its life. Absent is fine (RFC 7519
    /// makes it optional).
    fn check_issued_at(&self, claims: &serde_json::Map<String, Value>) -> Result<(), GatewayError> {
        let iat = match claims.get("iat") {
            None => return Ok(()),
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::INFINITY),
            Some(_) => return Err(GatewayError::auth("token claim iat is malformed")),
        };
        let now = jsonwebtoken::get_current_timestamp();
        // Compared as floats: `iat` may carry a fraction (NumericDate allows it), and a huge value
        // must not wrap.
        if iat > now.saturating_add(self.leeway) as f64 {
            return Err(GatewayError::auth(
                "token issued in the future (iat is later than now plus the allowed clock skew)",
            ));
        }
        Ok(())
    }

    fn check_algorithm(
        &self,
        header: &serde_json::Map<String, Value>,
    ) -> Result<Algorithm, GatewayError> {
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg.as_str(),
            Some(_) => return Err(GatewayError::auth("token algorithm (alg) is not a string")),
            None => return Err(GatewayError::auth("token header has no algorithm (alg)")),
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(GatewayError::auth("unsigned tokens (alg none) are refused"));
        }
        let alg = Algorithm::from_str(alg).map_err(|_| {
            GatewayError::auth(format!("token algorithm {} is not supported", shown(alg)))
        })?;
        if !self.algorithms.contains(&alg) {
            return Err(GatewayError::auth(format!(
                "token algorithm {alg:?} not allowed"
            )));
        }
        if header.contains_key("crit") {
            // No extension is understood here, and RFC 7515 says a token naming one we do not
            // understand must be refused (the library would silently ignore it).
            return Err(GatewayError::auth(
                "token header lists critical extensions (crit), which are not supported",
            ));
        }
        Ok(alg)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Fetches the JWKS again if the last fetch is older than the refetch interval, and returns the
    /// key set to use. Errors only when a fetch was due and failed.
    async fn refetch(&self, remote: &RemoteKeys, kid: &str) -> Result<Arc<KeySet>, GatewayError> {
        let mut last = remote.last_fetch.lock().await;
        // Another login may have refreshed the set while this one waited for the lock.
        let set = remote.current();
        if set.has_kid(Some(kid)) || last.elapsed() < remote.refetch_interval {
            return Ok(set);
        }
        // Counted from the start, so that failed fetches are rate-limited too.
        *last = Instant::now();
        let agent = remote.agent.clone();
        let url = remote.url.clone();
        let fetched = tokio::task::spawn_blocking(move || fetch_key_set(&agent, &url))
            .await
            .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")));
        match fetched {
            Ok(set) => {
                let set = Arc::new(set);
                if let Ok(mut current) = remote.current.write() {
                    *current = set.clone();
                }
                tracing::info!(url = %remote.url, keys = set.keys.len(), "JWKS refreshed");
                Ok(set)
            }
            Err(reason) => {
                tracing::warn!(url = %remote.url, %reason, "JWKS refresh failed");
                Err(GatewayError::auth(format!(
                    "token key id (kid) {} is unknown and the key set (JWKS) could not be fetched from the identity provider",
                    shown(kid)
                )))
            }
        }
    }

    fn identity(&self, claims: serde_json::Map<String, Value>) -> Result<Identity, GatewayError> {
        let subject = match claim(&claims, &self.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(GatewayError::auth(format!(
                    "token subject claim {} is not a non-empty string",
                    self.subject_claim
                )))
            }
            None => {
                return Err(GatewayError::auth(format!(
                    "token has no subject claim ({})",
                    self.subject_claim
                )))
            }
        };
        let groups = match claim(&claims, &self.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => split_groups(s),
            Some(Value::Array(items)) => {
                let mut groups = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(g) if !g.is_empty() => groups.push(g.clone()),
                        Value::String(_) => {}
                        _ => {
                            return Err(GatewayError::auth(format!(
                                "token groups claim {} is not a list of strings",
                                self.groups_claim
                            )))
                        }
                    }
                }
                groups
            }
            Some(_) => {
                return Err(GatewayError::auth(format!(
                    "token groups claim {} is not a list of strings",
                    self.groups_claim
                )))
            }
        };
        Ok(Identity {
            subject,
            groups,
            auth_method: AuthMethod::Jwt,
            claims: claims.into_iter().collect::<BTreeMap<_, _>>(),
        })
    }
}

impl RemoteKeys {
    fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(set) => set.clone(),
            // A panic while swapping an Arc cannot leave it half-written.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl KeySet {
    fn has_kid(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => true,
        }
    }
}

/// Verifies with the set's key named `kid`, or, for a token without `kid`, with each key that fits
/// the algorithm until one verifies the signature.
fn verify_with_set(
    token: &str,
    set: &KeySet,
    kid: Option<&str>,
    alg: Algorithm,
    validation: &Validation,
) -> Result<serde_json::Map<String, Value>, GatewayError> {
    match kid {
        Some(kid) => {
            let mut named = set
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .peekable();
            if named.peek().is_none() {
                return Err(GatewayError::auth(format!(
                    "token key id (kid) {} is not in the key set",
                    shown(kid)
                )));
            }
            let mut misfit = None;
            for key in named {
                match key.fits(alg) {
                    Ok(()) => return decode(token, &key.key, validation),
                    Err(why) => misfit = Some(why),
                }
            }
            Err(GatewayError::auth(format!(
                "token algorithm {alg:?} does not fit key {}: {}",
                shown(kid),
                misfit.unwrap_or_default()
            )))
        }
        None => {
            let mut last = None;
            for key in set.keys.iter().filter(|k| k.fits(alg).is_ok()) {
                match decode(token, &key.key, validation) {
                    Err(e) if e.message == SIGNATURE_INVALID => last = Some(e),
                    other => return other,
                }
            }
            Err(last.unwrap_or_else(|| {
                GatewayError::auth(format!(
                    "token has no key id (kid) and no key in the key set fits algorithm {alg:?}"
                ))
            }))
        }
    }
}

impl SetKey {
    fn fits(&self, alg: Algorithm) -> Result<(), String> {
        if self.family != alg.family() {
            return Err(format!("it is a {} key", family_name(self.family)));
        }
        if let Some(key_alg) = self.alg {
            if key_alg != alg {
                return Err(format!("it is for {key_alg:?}"));
            }
        }
        let curve_fits = match (alg, &self.curve) {
            (Algorithm::ES256, Some(curve)) => *curve == EllipticCurve::P256,
            (Algorithm::ES384, Some(curve)) => *curve == EllipticCurve::P384,
            _ => true,
        };
        if !curve_fits {
            return Err("its curve does not match".into());
        }
        Ok(())
    }
}

const SIGNATURE_INVALID: &str = "token signature invalid";

/// Signature and claim checks by the library, with each failure mapped to a message naming it.
fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<serde_json::Map<String, Value>, GatewayError> {
    match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, validation) {
        Ok(data) => Ok(data.claims),
        Err(err) => Err(GatewayError::auth(match err.kind() {
            JwtErrorKind::InvalidSignature => SIGNATURE_INVALID.to_owned(),
            JwtErrorKind::ExpiredSignature => "token expired".to_owned(),
            JwtErrorKind::ImmatureSignature => {
                "token not yet valid (nbf is in the future)".to_owned()
            }
            JwtErrorKind::InvalidIssuer => "token issuer not accepted".to_owned(),
            JwtErrorKind::InvalidAudience => "token audience not accepted".to_owned(),
            JwtErrorKind::MissingRequiredClaim(claim) => {
                format!("token has no valid {claim} claim")
            }
            JwtErrorKind::InvalidClaimFormat(claim) => format!("token claim {claim} is malformed"),
            JwtErrorKind::InvalidAlgorithm => "token algorithm does not fit the key".to_owned(),
            JwtErrorKind::InvalidToken
            | JwtErrorKind::Base64(_)
            | JwtErrorKind::Json(_)
            | JwtErrorKind::Utf8(_) => {
                "token is malformed (payload or signature is not valid base64url JSON)".to_owned()
            }
            JwtErrorKind::InvalidEcdsaKey
            | JwtErrorKind::InvalidEddsaKey
            | JwtErrorKind::InvalidRsaKey(_) => {
                "token could not be verified: the key for it is unusable".to_owned()
            }
            _ => "token refused".to_owned(),
        })),
    }
}

/// Splits a compact JWS and decodes its header, so that `alg` can be judged before the library
/// (which cannot even parse `none`) sees the token.
fn parse_header(token: &str) -> Result<serde_json::Map<String, Value>, GatewayError> {
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => {
            return Err(GatewayError::auth(
                "encrypted tokens (JWE) are not supported",
            ))
        }
        _ => {
            return Err(GatewayError::auth(
                "token is malformed (expected three dot-separated parts)",
            ))
        }
    }
    let header = parts[0];
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| GatewayError::auth("token header is not valid base64url"))?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&json)
        .map_err(|_| GatewayError::auth("token header is not a JSON object"))?;
    if parts[2].is_empty() {
        let alg_none =
            matches!(header.get("alg"), Some(Value::String(a)) if a.eq_ignore_ascii_case("none"));
        return Err(GatewayError::auth(if alg_none {
            "unsigned tokens (alg none) are refused"
        } else {
            "token has no signature (unsigned tokens are refused)"
        }));
    }
    Ok(header)
}

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, IdentityError> {
    if names.is_empty() {
        return Err(IdentityError::InvalidJwtConfig(
            "algorithms must list at least one algorithm".into(),
        ));
    }
    let mut algorithms = Vec::with_capacity(names.len());
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            return Err(IdentityError::InvalidJwtConfig(
                "algorithm none would accept unsigned tokens and is refused".into(),
            ));
        }
        let alg = Algorithm::from_str(name).map_err(|_| {
            IdentityError::InvalidJwtConfig(format!(
                "unknown algorithm {name:?} (use HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"
            ))
        })?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    Ok(algorithms)
}

fn public_key_from_pem(pem: &[u8]) -> Option<(DecodingKey, AlgorithmFamily)> {
    // The PEM decoder classifies the key by its OID, so at most one of these succeeds.
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, AlgorithmFamily::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((key, AlgorithmFamily::Ec));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Some((key, AlgorithmFamily::Ed));
    }
    None
}

/// Reads the usable signature keys of a JWKS document. Keys that cannot verify signatures here
/// (encryption keys, symmetric `oct` keys, unsupported curves) are skipped with a warning; a set
/// left with no key is an error.
fn parse_key_set(text: &str) -> Result<KeySet, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut keys = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let kid = entry
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or("(no kid)");
        match set_key(entry) {
            Ok(key) => keys.push(key),
            Err(why) => tracing::warn!(index, kid, reason = %why, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err(
            "the key set holds no usable signature key (RSA, EC P-256/P-384 or Ed25519)".into(),
        );
    }
    Ok(KeySet { keys })
}

fn set_key(entry: &Value) -> Result<SetKey, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if let Some(usage) = &jwk.common.public_key_use {
        if *usage != PublicKeyUse::Signature {
            return Err("not a signature key (use is not sig)".into());
        }
    }
    let (family, curve) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 | EllipticCurve::P384 => {
                (AlgorithmFamily::Ec, Some(p.curve.clone()))
            }
            _ => return Err("unsupported EC curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, None),
            _ => return Err("unsupported OKP curve".into()),
        },
        // A shared secret published in a key set is either a mistake or an invitation to forge.
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not accepted from a key set".into())
        }
        _ => return Err("unsupported key type".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(key_alg) => {
            let alg = Algorithm::try_from(key_alg)
                .map_err(|_| format!("algorithm {key_alg} cannot sign"))?;
            if alg.family() != family {
                return Err(format!("algorithm {alg:?} does not fit its key type"));
            }
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "key parameters are malformed".to_owned())?;
    Ok(SetKey {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        curve,
        key,
    })
}

fn check_jwks_url(url: &str) -> Result<(), IdentityError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = lower.strip_prefix("http://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false);
        if loopback {
            return Ok(());
        }
        // Keys fetched in clear text could be swapped by anyone on the path.
        return Err(IdentityError::Jwks(format!(
            "{url}: a key set URL must use https:// (http:// is allowed only to a loopback address)"
        )));
    }
    Err(IdentityError::Jwks(format!("{url}: not an http(s) URL")))
}

fn jwks_agent() -> ureq::Agent {
    // The provider is passed explicitly: rustls here is built with aws-lc-rs only, and ureq would
    // otherwise fall back to ring.
    let tls = ureq::tls::TlsConfig::builder()
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(JWKS_FETCH_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Fetches and parses a JWKS; blocking (ureq is synchronous), so async callers use
/// `spawn_blocking`. The error says what failed, for logs and setup errors.
fn fetch_key_set(agent: &ureq::Agent, url: &str) -> Result<KeySet, String> {
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| format!("{url}: fetch failed: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url}: HTTP status {status}"));
    }
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_LEN)
        .read_to_string()
        .map_err(|e| format!("{url}: reading the body failed: {e}"))?;
    parse_key_set(&text).map_err(|e| format!("{url}: {e}"))
}

fn read_limited(path: &PathBuf) -> Result<Vec<u8>, IdentityError> {
    let data = std::fs::read(path).map_err(|source| IdentityError::ReadFile {
        path: path.clone(),
        source,
    })?;
    if data.len() as u64 > MAX_JWKS_LEN {
        return Err(IdentityError::InvalidKey(format!(
            "{} is larger than 1 MiB",
            path.display()
        )));
    }
    Ok(data)
}

/// Looks a claim up by exact name first (claim names such as `https://example.com/groups` contain
/// dots), then as a dotted path into nested objects.
fn claim<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn split_groups(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}

/// An attacker-chosen header value made safe to echo: printable ASCII, at most 64 characters.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    format!("{out:?}")
}
