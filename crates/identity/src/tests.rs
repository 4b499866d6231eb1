//! Unit tests for the whole crate: tokens (mint + verify, every refusal), key sets from files and
//! URLs, static users, client certificates and the chain that routes between them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gateway_core::{AuthMethod, Authenticator, ClientInfo, Credentials, ErrorKind, GatewayError};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::*;

const SECRET: &str = "a-test-secret-that-is-long-enough-1234567890";

/// A generated key pair in the forms the tests need.
struct TestKey {
    alg: &'static str,
    private_pem: String,
    public_pem: String,
    public_raw: Vec<u8>,
}

impl TestKey {
    fn generate(alg: &'static str) -> Self {
        let sig_alg = match alg {
            "RS256" => &rcgen::PKCS_RSA_SHA256,
            "ES256" => &rcgen::PKCS_ECDSA_P256_SHA256,
            "EdDSA" => &rcgen::PKCS_ED25519,
            other => panic!("no generator for {other}"),
        };
        let pair = rcgen::KeyPair::generate_for(sig_alg).expect("key generation");
        Self {
            alg,
            private_pem: pair.serialize_pem(),
            public_pem: pair.public_key_pem(),
            public_raw: pair.public_key_raw().to_vec(),
        }
    }

    fn mint_key(&self) -> MintKey {
        MintKey::PrivateKeyPem {
            alg: self.alg.to_owned(),
            pem: self.private_pem.clone().into_bytes(),
        }
    }

    fn jwk(&self, kid: &str) -> Jwk {
        let alg: Algorithm = self.alg.parse().expect("alg");
        if alg == Algorithm::EdDSA {
            // The library derives Ed25519 JWKs only from bare PKCS#8 v1 keys; build it directly.
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "x": URL_SAFE_NO_PAD.encode(&self.public_raw)});
            return serde_json::from_value(jwk).expect("jwk");
        }
        let key = match alg.family() {
            jsonwebtoken::AlgorithmFamily::Rsa => {
                EncodingKey::from_rsa_pem(self.private_pem.as_bytes())
            }
            jsonwebtoken::AlgorithmFamily::Ec => {
                EncodingKey::from_ec_pem(self.private_pem.as_bytes())
            }
            _ => EncodingKey::from_ed_pem(self.private_pem.as_bytes()),
        }
        .expect("encoding key");
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }
}

// RSA generation is the slow one; share one key of each kind across tests.
static RSA: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("RS256"));
static RSA2: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("RS256"));
static EC: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("ES256"));
static ED: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("EdDSA"));

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-identity-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

fn mint(key: MintKey, subject: &str) -> MintRequest {
    let mut request = MintRequest::new(key, subject, Duration::from_secs(300));
    request.groups = vec!["dba".into(), "readers".into()];
    request
}

fn hs_config() -> JwtConfig {
    JwtConfig::new(JwtKeySource::Hs256Secret(SECRET.into()))
}

fn hs_auth(tweak: impl FnOnce(&mut JwtConfig)) -> JwtAuthenticator {
    let mut config = hs_config();
    tweak(&mut config);
    JwtAuthenticator::new(config).expect("jwt config")
}

fn pem_auth(key: &TestKey) -> JwtAuthenticator {
    let mut config = JwtConfig::new(JwtKeySource::PublicKeyPemFile(temp_file(
        "key.pem",
        key.public_pem.as_bytes(),
    )));
    config.algorithms = vec![key.alg.to_owned()];
    JwtAuthenticator::new(config).expect("jwt config")
}

/// Encodes arbitrary claims with HS256 and the test secret, for tokens the mint will not make.
fn hs_token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn hand_built(header: Value, claims: Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn assert_auth_error(
    result: Result<gateway_core::Identity, GatewayError>,
    expected: &str,
    secrets: &[&str],
) {
    let err = result.expect_err(&format!("expected refusal: {expected}"));
    assert_eq!(err.kind, ErrorKind::Authentication, "{err:?}");
    assert!(
        err.message.contains(expected),
        "message {:?} should contain {:?}",
        err.message,
        expected
    );
    for secret in secrets {
        assert!(
            !err.message.contains(secret),
            "message {:?} leaks a secret",
            err.message
        );
    }
}

#[tokio::test]
async fn round_trip_every_algorithm() {
    // (name, mint key, authenticator)
    let cases: Vec<(&str, MintKey, JwtAuthenticator)> = vec![
        (
            "HS256 secret",
            MintKey::Hs256(SECRET.into()),
            hs_auth(|_| {}),
        ),
        ("RS256 PEM", RSA.mint_key(), pem_auth(&RSA)),
        ("ES256 PEM", EC.mint_key(), pem_auth(&EC)),
        ("EdDSA PEM", ED.mint_key(), pem_auth(&ED)),
    ];
    for (name, key, auth) in cases {
        let mut request = mint(key, "alice");
        request.issuer = Some("https://idp.example".into());
        request.audience = Some("portcullis".into());
        request.not_before = Some(SystemTime::now() - Duration::from_secs(5));
        request
            .extra
            .insert("email".into(), json!("alice@example.com"));
        let token = mint_token(&request).expect(name);
        let identity = auth
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(identity.subject, "alice", "{name}");
        assert_eq!(identity.groups, vec!["dba", "readers"], "{name}");
        assert_eq!(identity.auth_method, AuthMethod::Jwt, "{name}");
        assert_eq!(
            identity.claims.get("email"),
            Some(&json!("alice@example.com")),
            "{name}"
        );
        assert!(identity.claims.contains_key("exp"), "{name}");
        assert!(
            !identity
                .claims
                .values()
                .any(|v| v.as_str() == Some(token.as_str())),
            "{name}: token copied"
        );
    }
}

#[tokio::test]
async fn refusals_name_the_failed_check() {
    let strict = || {
        hs_auth(|c| {
            c.issuer = Some("https://idp.example".into());
            c.audience = vec!["portcullis".into(), "other".into()];
            c.leeway = Duration::from_secs(5);
        })
    };
    let valid = json!({"sub": "alice", "iss": "https://idp.example", "aud": "portcullis", "exp": now() + 300});
    let with = |k: &str, v: Value| {
        let mut c = valid.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = valid.clone();
        c.as_object_mut().expect("object").remove(k);
        c
    };
    let good = hs_token(valid.clone());
    let good_signature = good.rsplit('.').next().expect("signature").to_owned();
    let wrong_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &valid,
        &EncodingKey::from_secret(b"another-secret-another-secret-another"),
    )
    .expect("encode");
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &valid,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let mut tampered: Vec<&str> = good.split('.').collect();
    let other_payload = URL_SAFE_NO_PAD.encode(with("sub", json!("mallory")).to_string());
    tampered[1] = &other_payload;
    let tampered = tampered.join(".");

    // (why, token, expected message)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "signed with another secret",
            wrong_secret,
            "token signature invalid",
        ),
        (
            "payload changed after signing",
            tampered,
            "token signature invalid",
        ),
        (
            "exp beyond leeway in the past",
            hs_token(with("exp", json!(now() - 60))),
            "token expired",
        ),
        (
            "exp missing",
            hs_token(without("exp")),
            "token has no valid exp claim",
        ),
        (
            "exp not a number",
            hs_token(with("exp", json!("tomorrow"))),
            "token has no valid exp claim",
        ),
        (
            "nbf in the future",
            hs_token(with("nbf", json!(now() + 600))),
            "token not yet valid",
        ),
        (
            "iat in the future beyond the leeway",
            hs_token(with("iat", json!(now() + 600))),
            "token issued in the future (iat",
        ),
        (
            "iat far in the future (no overflow)",
            hs_token(with("iat", json!(u64::MAX))),
            "token issued in the future (iat",
        ),
        (
            "iat not a number",
            hs_token(with("iat", json!("yesterday"))),
            "token claim iat is malformed",
        ),
        (
            "wrong issuer",
            hs_token(with("iss", json!("https://evil.example"))),
            "token issuer not accepted",
        ),
        (
            "issuer missing",
            hs_token(without("iss")),
            "token has no valid iss claim",
        ),
        (
            "wrong audience",
            hs_token(with("aud", json!("someone-else"))),
            "token audience not accepted",
        ),
        (
            "audience list without ours",
            hs_token(with("aud", json!(["a", "b"]))),
            "token audience not accepted",
        ),
        (
            "audience missing",
            hs_token(without("aud")),
            "token has no valid aud claim",
        ),
        (
            "subject missing",
            hs_token(without("sub")),
            "token has no subject claim (sub)",
        ),
        (
            "subject empty",
            hs_token(with("sub", json!(""))),
            "token subject claim sub is not a non-empty string",
        ),
        (
            "groups of wrong type",
            hs_token(with("groups", json!({"a": 1}))),
            "not a list of strings",
        ),
        (
            "alg none, empty signature",
            hand_built(json!({"alg": "none", "typ": "JWT"}), valid.clone(), ""),
            "unsigned tokens (alg none) are refused",
        ),
        (
            "alg None with a copied signature",
            hand_built(json!({"alg": "None"}), valid.clone(), &good_signature),
            "unsigned tokens (alg none) are refused",
        ),
        (
            "HS256 header without signature",
            hand_built(json!({"alg": "HS256"}), valid.clone(), ""),
            "token has no signature",
        ),
        (
            "algorithm not in the allow-list",
            hs384,
            "token algorithm HS384 not allowed",
        ),
        (
            "unknown algorithm",
            hand_built(json!({"alg": "XS999"}), valid.clone(), &good_signature),
            "token algorithm \"XS999\" is not supported",
        ),
        (
            "critical header extension",
            hand_built(
                json!({"alg": "HS256", "crit": ["exp"]}),
                valid.clone(),
                &good_signature,
            ),
            "critical extensions",
        ),
        (
            "no header alg",
            hand_built(json!({"typ": "JWT"}), valid.clone(), &good_signature),
            "no algorithm (alg)",
        ),
        ("garbage", "not a token at all".into(), "token is malformed"),
        (
            "two parts",
            "eyJhbGciOiJIUzI1NiJ9.e30".into(),
            "token is malformed",
        ),
        (
            "header not base64url",
            "!!!.e30.c2ln".into(),
            "token header is not valid base64url",
        ),
        (
            "header not JSON",
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("hello")),
            "not a JSON object",
        ),
        (
            "payload not JSON (not read before the signature is checked)",
            format!(
                "{}.@@@.{good_signature}",
                good.split('.').next().unwrap_or("")
            ),
            "token signature invalid",
        ),
        (
            "encrypted token",
            "a.b.c.d.e".into(),
            "encrypted tokens (JWE) are not supported",
        ),
        (
            "oversized",
            format!("{good}{}", "A".repeat(MAX_TOKEN)),
            "token too long",
        ),
    ];
    let auth = strict();
    assert!(
        auth.verify(&good).await.is_ok(),
        "the baseline token must pass"
    );
    for (why, token, expected) in cases {
        let result = auth.verify(&token).await;
        let err = result.expect_err(why);
        assert_eq!(err.kind, ErrorKind::Authentication, "{why}");
        assert!(
            err.message.contains(expected),
            "{why}: {:?} should contain {expected:?}",
            err.message
        );
        assert!(!err.message.contains(SECRET), "{why}: leaks the secret");
        if token.len() > 20 {
            assert!(!err.message.contains(&token), "{why}: echoes the token");
        }
    }
}

const MAX_TOKEN: usize = jwt::MAX_TOKEN_LEN;

#[tokio::test]
async fn leeway_accepts_small_skew() {
    let auth = hs_auth(|c| c.leeway = Duration::from_secs(120));
    let claims = json!({"sub": "alice", "exp": now() - 30, "nbf": now() + 30, "iat": now() + 30});
    assert!(auth.verify(&hs_token(claims)).await.is_ok());
    // iat in the past, with a fraction, is an ordinary token.
    let claims = json!({"sub": "alice", "exp": now() + 60, "iat": now() as f64 - 0.5});
    assert!(auth.verify(&hs_token(claims)).await.is_ok());
    let auth = hs_auth(|c| c.leeway = Duration::ZERO);
    let claims = json!({"sub": "alice", "exp": now() + 600, "iat": now() + 30});
    assert_auth_error(
        auth.verify(&hs_token(claims)).await,
        "token issued in the future",
        &[SECRET],
    );
    let auth = hs_auth(|c| c.leeway = Duration::ZERO);
    let claims = json!({"sub": "alice", "exp": now() - 30});
    assert_auth_error(
        auth.verify(&hs_token(claims)).await,
        "token expired",
        &[SECRET],
    );
}

#[tokio::test]
async fn aud_is_ignored_when_no_audience_is_configured() {
    let auth = hs_auth(|_| {});
    let claims = json!({"sub": "alice", "aud": "anything", "exp": now() + 60});
    assert!(auth.verify(&hs_token(claims)).await.is_ok());
}

#[tokio::test]
async fn hmac_token_against_rsa_key_is_refused() {
    // The classic confusion: an HS256 token "signed" with the RSA public key as the HMAC secret.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": now() + 60}),
        &EncodingKey::from_secret(RSA.public_pem.as_bytes()),
    )
    .expect("encode");

    // Allow-list of the RSA key only: refused as not allowed.
    assert_auth_error(
        pem_auth(&RSA).verify(&forged).await,
        "token algorithm HS256 not allowed",
        &[],
    );

    // Even when a careless allow-list names HS256, the RSA key does not verify HMAC tokens.
    let mut config = JwtConfig::new(JwtKeySource::PublicKeyPemFile(temp_file(
        "rsa.pem",
        RSA.public_pem.as_bytes(),
    )));
    config.algorithms = vec!["RS256".into(), "HS256".into()];
    let auth = JwtAuthenticator::new(config).expect("config");
    assert_auth_error(
        auth.verify(&forged).await,
        "token algorithm HS256 does not fit the configured RSA key",
        &[],
    );

    // And an RSA-family token is not verified with an HMAC secret.
    let rs = mint_token(&mint(RSA.mint_key(), "alice")).expect("mint");
    let auth = hs_auth(|c| c.algorithms = vec!["HS256".into(), "RS256".into()]);
    assert_auth_error(
        auth.verify(&rs).await,
        "token algorithm RS256 does not fit the configured HMAC key",
        &[SECRET],
    );

    // A token of one public-key family against another.
    let es = mint_token(&mint(EC.mint_key(), "alice")).expect("mint");
    let mut config = JwtConfig::new(JwtKeySource::PublicKeyPemFile(temp_file(
        "rsa.pem",
        RSA.public_pem.as_bytes(),
    )));
    config.algorithms = vec!["RS256".into(), "ES256".into()];
    let auth = JwtAuthenticator::new(config).expect("config");
    assert_auth_error(
        auth.verify(&es).await,
        "token algorithm ES256 does not fit the configured RSA key",
        &[],
    );
}

#[tokio::test]
async fn wrong_public_key_fails_the_signature_check() {
    let token = mint_token(&mint(RSA2.mint_key(), "alice")).expect("mint");
    assert_auth_error(
        pem_auth(&RSA).verify(&token).await,
        "token signature invalid",
        &[],
    );
}

#[tokio::test]
async fn groups_claim_shapes_and_paths() {
    // (why, groups claim setting, claims, expected groups)
    let cases: Vec<(&str, &str, Value, Vec<&str>)> = vec![
        (
            "array",
            "groups",
            json!({"groups": ["a", "b"]}),
            vec!["a", "b"],
        ),
        (
            "space separated",
            "groups",
            json!({"groups": "a b  c"}),
            vec!["a", "b", "c"],
        ),
        (
            "comma separated",
            "groups",
            json!({"groups": "a,b, c"}),
            vec!["a", "b", "c"],
        ),
        ("missing", "groups", json!({}), vec![]),
        ("null", "groups", json!({"groups": null}), vec![]),
        (
            "dotted path",
            "realm_access.roles",
            json!({"realm_access": {"roles": ["admin"]}}),
            vec!["admin"],
        ),
        (
            "dotted name wins",
            "https://ex.com/groups",
            json!({"https://ex.com/groups": ["x"]}),
            vec!["x"],
        ),
        (
            "scope",
            "scope",
            json!({"scope": "read write"}),
            vec!["read", "write"],
        ),
    ];
    for (why, groups_claim, extra, expected) in cases {
        let auth = hs_auth(|c| c.groups_claim = groups_claim.into());
        let mut claims = json!({"sub": "alice", "exp": now() + 60});
        for (k, v) in extra.as_object().expect("object") {
            claims[k] = v.clone();
        }
        let identity = auth
            .verify(&hs_token(claims))
            .await
            .unwrap_or_else(|e| panic!("{why}: {e}"));
        assert_eq!(identity.groups, expected, "{why}");
    }
    let auth = hs_auth(|c| c.subject_claim = "user.name".into());
    let identity = auth
        .verify(&hs_token(
            json!({"user": {"name": "bob"}, "exp": now() + 60}),
        ))
        .await
        .expect("nested subject");
    assert_eq!(identity.subject, "bob");
}

#[test]
fn bad_configurations_are_refused() {
    let rsa_pem = temp_file("rsa.pem", RSA.public_pem.as_bytes());
    // (why, config, expected message)
    let cases: Vec<(&str, JwtConfig, &str)> = vec![
        (
            "alg none",
            JwtConfig {
                algorithms: vec!["none".into()],
                ..hs_config()
            },
            "algorithm none",
        ),
        (
            "empty allow-list",
            JwtConfig {
                algorithms: vec![],
                ..hs_config()
            },
            "at least one algorithm",
        ),
        (
            "unknown algorithm",
            JwtConfig {
                algorithms: vec!["HS257".into()],
                ..hs_config()
            },
            "unknown algorithm",
        ),
        (
            "empty secret",
            JwtConfig::new(JwtKeySource::Hs256Secret(String::new())),
            "secret is empty",
        ),
        (
            "secret with RSA-only allow-list",
            JwtConfig {
                algorithms: vec!["RS256".into()],
                ..hs_config()
            },
            "none of the allowed algorithms",
        ),
        (
            "RSA key with HMAC-only allow-list",
            JwtConfig {
                algorithms: vec!["HS256".into()],
                ..JwtConfig::new(JwtKeySource::PublicKeyPemFile(rsa_pem))
            },
            "none of the allowed algorithms",
        ),
        (
            "missing PEM file",
            JwtConfig::new(JwtKeySource::PublicKeyPemFile(
                "/nonexistent/key.pem".into(),
            )),
            "cannot read",
        ),
        (
            "PEM file without a key",
            JwtConfig::new(JwtKeySource::PublicKeyPemFile(temp_file(
                "junk.pem", b"hello",
            ))),
            "holds no RSA, EC or Ed25519 public key",
        ),
        (
            "JWKS file that is not a key set",
            JwtConfig::new(JwtKeySource::JwksFile(temp_file(
                "jwks.json",
                b"{\"nope\": 1}",
            ))),
            "no \"keys\" array",
        ),
        (
            "JWKS with only a symmetric key",
            JwtConfig::new(JwtKeySource::JwksFile(temp_file(
                "jwks.json",
                br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}"#,
            ))),
            "no usable signature key",
        ),
        (
            "plain http to a remote host",
            JwtConfig::new(JwtKeySource::JwksUrl("http://idp.example/jwks.json".into())),
            "must use https://",
        ),
        (
            "not a URL",
            JwtConfig::new(JwtKeySource::JwksUrl("ftp://x/jwks".into())),
            "not an http(s) URL",
        ),
        (
            "empty subject claim",
            JwtConfig {
                subject_claim: String::new(),
                ..hs_config()
            },
            "subject_claim",
        ),
    ];
    for (why, config, expected) in cases {
        let err = JwtAuthenticator::new(config).expect_err(why).to_string();
        assert!(
            err.contains(expected),
            "{why}: {err:?} should contain {expected:?}"
        );
        assert!(!err.contains(SECRET), "{why}: leaks the secret");
    }
    let debug = format!("{:?} {:?}", hs_config(), hs_auth(|_| {}));
    assert!(!debug.contains(SECRET), "Debug leaks the secret: {debug}");
}

fn jwks_json(keys: &[(&TestKey, &str)]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|(key, kid)| key.jwk(kid)).collect(),
    };
    serde_json::to_string(&set).expect("jwks json")
}

fn with_kid(key: &TestKey, kid: &str, subject: &str) -> String {
    let mut request = mint(key.mint_key(), subject);
    request.kid = Some(kid.into());
    mint_token(&request).expect("mint")
}

#[tokio::test]
async fn jwks_file_selects_the_key_by_kid() {
    let path = temp_file(
        "jwks.json",
        jwks_json(&[(&RSA, "rsa-1"), (&EC, "ec-1"), (&ED, "ed-1")]).as_bytes(),
    );
    let mut config = JwtConfig::new(JwtKeySource::JwksFile(path));
    config.algorithms = vec![
        "RS256".into(),
        "ES256".into(),
        "EdDSA".into(),
        "HS256".into(),
    ];
    let auth = JwtAuthenticator::new(config).expect("config");

    for (key, kid) in [(&*RSA, "rsa-1"), (&*EC, "ec-1"), (&*ED, "ed-1")] {
        let identity = auth
            .verify(&with_kid(key, kid, "alice"))
            .await
            .unwrap_or_else(|e| panic!("{kid}: {e}"));
        assert_eq!(identity.subject, "alice");
    }
    // (why, token, expected message)
    let forged_hs = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &header,
            &json!({"sub": "mallory", "exp": now() + 60}),
            &EncodingKey::from_secret(RSA.public_pem.as_bytes()),
        )
        .expect("encode")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "kid of another key",
            with_kid(&RSA2, "rsa-1", "alice"),
            "token signature invalid",
        ),
        (
            "unknown kid",
            with_kid(&RSA, "rsa-9", "alice"),
            "token key id (kid) \"rsa-9\" is not in the key set",
        ),
        (
            "EC token naming the RSA key",
            with_kid(&EC, "rsa-1", "alice"),
            "token algorithm ES256 does not fit key",
        ),
        (
            "HS256 token naming the RSA key",
            forged_hs,
            "token algorithm HS256 does not fit key \"rsa-1\"",
        ),
        (
            "no kid, no key verifies",
            mint_token(&mint(RSA2.mint_key(), "alice")).expect("mint"),
            "token signature invalid",
        ),
    ];
    for (why, token, expected) in cases {
        let err = auth.verify(&token).await.expect_err(why);
        assert!(
            err.message.contains(expected),
            "{why}: {:?} should contain {expected:?}",
            err.message
        );
    }
    // Without kid, the key that fits the algorithm and verifies is found.
    let identity = auth
        .verify(&mint_token(&mint(EC.mint_key(), "carol")).expect("mint"))
        .await
        .expect("no kid");
    assert_eq!(identity.subject, "carol");
}

#[tokio::test]
async fn jwks_key_alg_must_match_the_header() {
    // A JWKS key declared for RS512 does not verify an RS256 token, even with a valid signature.
    let mut jwk = RSA.jwk("rsa-1");
    jwk.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS512);
    let path = temp_file(
        "jwks.json",
        serde_json::to_string(&JwkSet { keys: vec![jwk] })
            .expect("json")
            .as_bytes(),
    );
    let mut config = JwtConfig::new(JwtKeySource::JwksFile(path));
    config.algorithms = vec!["RS256".into(), "RS512".into()];
    let auth = JwtAuthenticator::new(config).expect("config");
    assert_auth_error(
        auth.verify(&with_kid(&RSA, "rsa-1", "alice")).await,
        "it is for RS512",
        &[],
    );
}

/// A tiny HTTP server for JWKS URL tests: serves `body` (or a 500 when it is empty) and counts
/// requests.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counter) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().map(|b| b.clone()).unwrap_or_default();
                let status = if body.is_empty() {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Self { addr, body, hits }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, body: String) {
        *self.body.lock().expect("lock") = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn url_auth(url: String) -> Result<JwtAuthenticator, IdentityError> {
    let mut config = JwtConfig::new(JwtKeySource::JwksUrl(url));
    config.algorithms = vec!["RS256".into(), "ES256".into()];
    JwtAuthenticator::new(config)
}

#[tokio::test]
async fn jwks_url_is_fetched_at_startup_and_refreshed_on_unknown_kid() {
    let server = JwksServer::start(jwks_json(&[(&RSA, "old")]));
    let eager = url_auth(server.url())
        .expect("fetch")
        .with_jwks_refetch_interval(Duration::ZERO);
    let patient = url_auth(server.url()).expect("fetch");
    assert_eq!(server.hits(), 2, "one fetch per authenticator at startup");

    // Known kid: served from the cache.
    eager
        .verify(&with_kid(&RSA, "old", "alice"))
        .await
        .expect("cached key");
    assert_eq!(server.hits(), 2);

    // The provider rotates in a new key.
    server.serve(jwks_json(&[(&RSA, "old"), (&EC, "new")]));
    let rotated = with_kid(&EC, "new", "bob");

    // Within the refetch interval, an unknown kid does not cause a fetch.
    assert_auth_error(
        patient.verify(&rotated).await,
        "token key id (kid) \"new\" is not in the key set",
        &[],
    );
    assert_eq!(server.hits(), 2);

    // Past it, one fetch picks the new key up.
    let identity = eager.verify(&rotated).await.expect("refreshed key");
    assert_eq!(identity.subject, "bob");
    assert_eq!(server.hits(), 3);

    // A failing provider gives a clear refusal, not a panic.
    server.serve(String::new());
    assert_auth_error(
        eager.verify(&with_kid(&EC, "newer", "bob")).await,
        "could not be fetched from the identity provider",
        &[],
    );
    assert_eq!(server.hits(), 4);
    // The cached keys keep working.
    eager
        .verify(&rotated)
        .await
        .expect("cached key after a failed refresh");
}

#[test]
fn jwks_url_failures_at_startup_are_setup_errors() {
    // Nothing listens on a port that was just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let err = url_auth(format!("http://127.0.0.1:{port}/jwks")).expect_err("no server");
    assert!(matches!(err, IdentityError::Jwks(_)), "{err}");

    let server = JwksServer::start(String::new());
    let err = url_auth(server.url()).expect_err("HTTP 500").to_string();
    assert!(err.contains("HTTP status 500"), "{err}");

    server.serve("{\"keys\": []}".into());
    let err = url_auth(server.url()).expect_err("empty set").to_string();
    assert!(err.contains("no usable signature key"), "{err}");
}

#[test]
fn mint_refuses_what_it_cannot_sign() {
    // (why, request, expected message)
    let base = || mint(MintKey::Hs256(SECRET.into()), "alice");
    let cases: Vec<(&str, MintRequest, &str)> = vec![
        (
            "empty subject",
            MintRequest {
                subject: String::new(),
                ..base()
            },
            "subject is empty",
        ),
        (
            "empty secret",
            MintRequest {
                key: MintKey::Hs256(String::new()),
                ..base()
            },
            "secret is empty",
        ),
        (
            "alg none",
            MintRequest {
                key: MintKey::PrivateKeyPem {
                    alg: "none".into(),
                    pem: vec![],
                },
                ..base()
            },
            "algorithm none",
        ),
        (
            "HMAC alg with a PEM",
            MintRequest {
                key: MintKey::PrivateKeyPem {
                    alg: "HS256".into(),
                    pem: vec![],
                },
                ..base()
            },
            "use MintKey::Hs256",
        ),
        (
            "EC key for RS256",
            MintRequest {
                key: MintKey::PrivateKeyPem {
                    alg: "RS256".into(),
                    pem: EC.private_pem.clone().into(),
                },
                ..base()
            },
            "not a private key usable with RS256",
        ),
        (
            "reserved extra claim",
            {
                let mut r = base();
                r.extra.insert("exp".into(), json!(1));
                r
            },
            "extra claim \"exp\"",
        ),
    ];
    for (why, request, expected) in cases {
        let err = mint_token(&request).expect_err(why).to_string();
        assert!(
            err.contains(expected),
            "{why}: {err:?} should contain {expected:?}"
        );
        assert!(
            !err.contains(SECRET) && !err.contains("PRIVATE KEY"),
            "{why}: leaks key material"
        );
    }
    let debug = format!("{:?}", base());
    assert!(!debug.contains(SECRET), "Debug leaks the secret");
}

#[test]
fn minted_claims_are_as_requested() {
    let mut request = mint(MintKey::Hs256(SECRET.into()), "alice");
    request.kid = Some("k1".into());
    request.not_before = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
    let token = mint_token(&request).expect("mint");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.kid.as_deref(), Some("k1"));
    assert_eq!(header.alg, Algorithm::HS256);
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("claims");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nbf"], 1_000);
    assert_eq!(claims["groups"], json!(["dba", "readers"]));
    let iat = claims["iat"].as_u64().expect("iat");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 300));
    assert!(claims.get("iss").is_none() && claims.get("aud").is_none());
}

// ---- static users ----

static ALICE_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("correct horse").expect("hash"));

fn users() -> StaticUsers {
    StaticUsers::new(vec![StaticUser {
        name: "alice".into(),
        password_hash: ALICE_HASH.clone(),
        groups: vec!["dba".into()],
    }])
    .expect("users")
}

#[tokio::test]
async fn static_users_right_wrong_unknown() {
    let users = users();
    let identity = users
        .verify("alice", "correct horse")
        .await
        .expect("right password");
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.groups, vec!["dba"]);
    assert_eq!(identity.auth_method, AuthMethod::Password);
    // (why, user, password)
    let cases = [
        ("wrong password", "alice", "battery staple"),
        ("unknown user", "mallory", "correct horse"),
        ("case matters", "Alice", "correct horse"),
    ];
    for (why, user, password) in cases {
        let err = users.verify(user, password).await.expect_err(why);
        assert_eq!(err.message, "unknown user or wrong password", "{why}");
        assert!(!err.message.contains(password), "{why}");
    }
}

#[test]
fn static_user_hashes_are_checked_at_setup() {
    let user = |name: &str, hash: &str| StaticUser {
        name: name.into(),
        password_hash: hash.into(),
        groups: vec![],
    };
    // (why, users, expected message)
    let cases: Vec<(&str, Vec<StaticUser>, &str)> = vec![
        ("not a PHC string", vec![user("a", "plaintext")], "not a PHC string"),
        (
            "argon2i, not argon2id",
            vec![user("a", "$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHRmb3JkdW1teQ$M0Fdjtb6F2lf8SH4LW2tm3XzLPeJwd2Ykj9ksq1nnLU")],
            "expected argon2id",
        ),
        ("empty name", vec![user("", &ALICE_HASH)], "user name is empty"),
        ("duplicate", vec![user("a", &ALICE_HASH), user("a", &ALICE_HASH)], "defined twice"),
    ];
    for (why, users, expected) in cases {
        let err = StaticUsers::new(users).expect_err(why).to_string();
        assert!(
            err.contains(expected),
            "{why}: {err:?} should contain {expected:?}"
        );
    }
    assert!(format!("{:?}", users()).contains("alice"));
    assert!(
        !format!("{:?}", users()).contains(ALICE_HASH.as_str()),
        "Debug shows a hash"
    );
}

#[test]
fn hashes_are_salted_argon2id_with_default_params() {
    let a = hash_password("pw").expect("hash");
    let b = hash_password("pw").expect("hash");
    assert_ne!(a, b, "salt must be random");
    assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
    assert!(hash_password("").is_err());
    // The dummy hash used for unknown users costs the same as a default one.
    let dummy = argon2::PasswordHash::new(users::DUMMY_HASH_FOR_TESTS).expect("dummy parses");
    let params = argon2::Params::try_from(&dummy).expect("params");
    let default = argon2::Params::default();
    assert_eq!(
        (params.m_cost(), params.t_cost(), params.p_cost()),
        (default.m_cost(), default.t_cost(), default.p_cost())
    );
}

#[test]
fn dummy_hash_follows_configured_parameters() {
    let params = argon2::Params::new(8 * 1024, 1, 1, None).expect("params");
    let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").expect("salt");
    let hash = argon2::PasswordHasher::hash_password(
        &argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params.clone(),
        ),
        b"pw",
        &salt,
    )
    .expect("hash")
    .to_string();
    let users = StaticUsers::new(vec![StaticUser {
        name: "a".into(),
        password_hash: hash,
        groups: vec![],
    }])
    .expect("users");
    let dummy = users.dummy_hash_for_tests();
    let parsed = argon2::PasswordHash::new(&dummy).expect("dummy parses");
    let dummy_params = argon2::Params::try_from(&parsed).expect("params");
    assert_eq!(
        (dummy_params.m_cost(), dummy_params.t_cost()),
        (params.m_cost(), params.t_cost())
    );
}

// ---- client certificates ----

fn certificate(attributes: &[(rcgen::DnType, &str)]) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    let mut dn = rcgen::DistinguishedName::new();
    for (ty, value) in attributes {
        dn.push(ty.clone(), *value);
    }
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    params
        .self_signed(&key)
        .expect("certificate")
        .der()
        .to_vec()
}

#[test]
fn certificate_subjects_and_groups() {
    use rcgen::DnType;
    // The second OU uses the OU OID directly, since rcgen keeps one value per attribute type.
    let ou2 = DnType::CustomDnType(vec![2, 5, 4, 11]);
    let full = certificate(&[
        (DnType::CommonName, "alice"),
        (DnType::OrganizationalUnitName, "dba"),
        (ou2, "oncall"),
        (DnType::OrganizationName, "Example"),
    ]);
    let no_cn = certificate(&[(DnType::OrganizationName, "Example")]);
    let cn = |groups_from_ou| {
        CertAuthenticator::new(CertConfig {
            subject_from: CertSubjectField::CommonName,
            groups_from_ou,
        })
    };
    let dn = CertAuthenticator::new(CertConfig {
        subject_from: CertSubjectField::DistinguishedName,
        groups_from_ou: false,
    });

    let identity = cn(true).authenticate(&full).expect("CN");
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.groups, vec!["dba", "oncall"]);
    assert_eq!(identity.auth_method, AuthMethod::ClientCertificate);
    assert!(identity.claims.contains_key("serial") && identity.claims.contains_key("issuer_dn"));

    assert!(cn(false).authenticate(&full).expect("CN").groups.is_empty());

    let identity = dn.authenticate(&full).expect("DN");
    for part in ["CN=alice", "OU=dba", "O=Example"] {
        assert!(
            identity.subject.contains(part),
            "{} should contain {part}",
            identity.subject
        );
    }
    assert_eq!(
        dn.authenticate(&no_cn).expect("DN without CN").subject,
        "O=Example"
    );

    let cn_only = cn(false);
    // (why, authenticator, certificate, expected message)
    let cases: Vec<(&str, &CertAuthenticator, Vec<u8>, &str)> = vec![
        ("no CN", &cn_only, no_cn.clone(), "has no common name (CN)"),
        (
            "empty subject as DN",
            &dn,
            certificate(&[]),
            "empty subject",
        ),
        (
            "not DER",
            &dn,
            b"not a certificate".to_vec(),
            "could not be parsed",
        ),
        (
            "truncated",
            &dn,
            full[..full.len() / 2].to_vec(),
            "could not be parsed",
        ),
    ];
    for (why, auth, der, expected) in cases {
        let err = auth.authenticate(&der).expect_err(why);
        assert!(
            err.message.contains(expected),
            "{why}: {:?} should contain {expected:?}",
            err.message
        );
    }
}

// ---- the chain ----

fn client() -> ClientInfo {
    ClientInfo {
        addr: "127.0.0.1:5000".parse().expect("addr"),
        protocol: "postgres",
        tls: true,
        application: None,
    }
}

fn password(user: &str, password: &str) -> Credentials {
    Credentials::Password {
        user: user.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn chain_routes_each_credential() {
    let chain = IdentityChain {
        jwt: Some(hs_auth(|_| {})),
        users: users(),
        cert: Some(CertAuthenticator::new(CertConfig::default())),
    };
    let token = mint_token(&mint(MintKey::Hs256(SECRET.into()), "bob")).expect("mint");

    let identity = chain
        .authenticate(&password("alice", "correct horse"), &client())
        .await
        .expect("static");
    assert_eq!(
        (identity.subject.as_str(), identity.auth_method),
        ("alice", AuthMethod::Password)
    );

    let identity = chain
        .authenticate(&password("anyone", &token), &client())
        .await
        .expect("jwt");
    assert_eq!(
        (identity.subject.as_str(), identity.auth_method),
        ("bob", AuthMethod::Jwt)
    );

    let der = certificate(&[(rcgen::DnType::CommonName, "carol")]);
    let creds = Credentials::ClientCertificate {
        user: "carol".into(),
        certificate_der: der,
    };
    let identity = chain.authenticate(&creds, &client()).await.expect("cert");
    assert_eq!(
        (identity.subject.as_str(), identity.auth_method),
        ("carol", AuthMethod::ClientCertificate)
    );

    // A bearer token is checked as a token, whatever user name comes with it.
    let bearer = |token: &str| Credentials::BearerToken {
        user: "alice".into(),
        token: token.into(),
    };
    let identity = chain
        .authenticate(&bearer(&token), &client())
        .await
        .expect("bearer");
    assert_eq!(
        (identity.subject.as_str(), identity.auth_method),
        ("bob", AuthMethod::Jwt)
    );

    // (why, credentials, expected message)
    let cases: Vec<(&str, Credentials, &str)> = vec![
        ("empty password", password("alice", ""), "password required"),
        (
            "a static user's password as a bearer token",
            bearer("correct horse"),
            "token",
        ),
        (
            "bearer token, bad signature",
            bearer(&format!("{token}x")),
            "token signature invalid",
        ),
        (
            "static user, wrong password",
            password("alice", "nope"),
            "unknown user or wrong password",
        ),
        (
            "static user presenting a token",
            password("alice", &token),
            "unknown user or wrong password",
        ),
        (
            "unknown user, not a token",
            password("mallory", "hunter2"),
            "unknown user or wrong password",
        ),
        (
            "unknown user, bad token",
            password("mallory", &format!("{token}x")),
            "token signature invalid",
        ),
        (
            "static user, huge password",
            password("alice", &"p".repeat(MAX_TOKEN + 1)),
            "password too long",
        ),
    ];
    for (why, creds, expected) in cases {
        let secret = match &creds {
            Credentials::Password { password, .. } => password.clone(),
            Credentials::BearerToken { token, .. } => token.clone(),
            _ => String::new(),
        };
        let err = chain.authenticate(&creds, &client()).await.expect_err(why);
        assert!(
            err.message.contains(expected),
            "{why}: {:?} should contain {expected:?}",
            err.message
        );
        if !secret.is_empty() {
            assert!(!err.message.contains(&secret), "{why}: echoes the password");
        }
    }
}

#[tokio::test]
async fn chain_without_methods_refuses() {
    let chain = IdentityChain::new();
    let token = mint_token(&mint(MintKey::Hs256(SECRET.into()), "bob")).expect("mint");
    assert_auth_error(
        chain
            .authenticate(&password("bob", &token), &client())
            .await,
        "unknown user or wrong password",
        &[SECRET, &token],
    );
    let creds = Credentials::ClientCertificate {
        user: "x".into(),
        certificate_der: vec![1, 2, 3],
    };
    assert_auth_error(
        chain.authenticate(&creds, &client()).await,
        "client certificate authentication is not enabled",
        &[],
    );
}

#[test]
fn compact_jws_shape() {
    // (input, looks like a JWS)
    let cases = [
        ("eyJh.eyJz.c2ln", true),
        ("eyJh.eyJz.", true),
        ("a-_b.c.d", true),
        ("eyJh.eyJz", false),
        ("a.b.c.d", false),
        (".b.c", false),
        ("a..c", false),
        ("a b.c.d", false),
        ("a.b.c=", false),
        ("correct horse battery staple", false),
    ];
    for (input, expected) in cases {
        assert_eq!(looks_like_compact_jws(input), expected, "{input}");
    }
}
