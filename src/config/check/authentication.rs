//! `[identity]`: JWT key sources and algorithms, static users, client certificates.

use std::collections::HashSet;
use std::ops::Range;

use toml::Spanned;

use super::*;
use crate::config::schema::*;
use crate::config::*;

impl Checker<'_> {
    pub(super) fn check_identity(
        &mut self,
        section: &IdentitySection,
        // Whether a listener verifies client certificates (`tls_client_ca`).
        has_client_ca: bool,
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
            if !has_client_ca {
                self.error(
                    c.span(),
                    "`[identity.client_cert]` needs `tls_client_ca` in `[postgres]` or `[mysql]`: without it no client certificate is ever verified",
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

    pub(super) fn check_jwt(&mut self, section: &Spanned<JwtSection>) -> JwtSettings {
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

    pub(super) fn jwt_keys(&mut self, key: &str, value: &Str) -> JwtKeys {
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

    pub(super) fn check_secret_length(&mut self, key: &str, span: Range<usize>, secret: &str) {
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
}

/// Checks that `hash` is an argon2id PHC string with parameters, salt and hash.
pub(crate) fn check_password_hash(hash: &str) -> Result<(), String> {
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

pub(crate) fn jwks_url_is_acceptable(url: &str) -> bool {
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
