//! `portcullis token mint`: development and test tokens.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use portcullis::config::parse_duration;

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Sign a JWT with an explicit key file and print it.
    Mint(MintArgs),
}

#[derive(Args)]
pub(crate) struct MintArgs {
    /// Key file: the shared secret for HS256 (surrounding whitespace ignored), or a PEM private
    /// key for the other algorithms.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
    /// Signature algorithm.
    #[arg(long, default_value = "HS256", value_parser = [
        "HS256", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ])]
    pub(crate) alg: String,
    /// Subject (`sub`).
    #[arg(long, value_name = "SUBJECT")]
    pub(crate) sub: String,
    /// Groups, comma-separated (`groups`).
    #[arg(long, value_name = "GROUP,...", value_delimiter = ',')]
    pub(crate) groups: Vec<String>,
    /// Issuer (`iss`).
    #[arg(long, value_name = "ISSUER")]
    pub(crate) iss: Option<String>,
    /// Audience (`aud`).
    #[arg(long, value_name = "AUDIENCE")]
    pub(crate) aud: Option<String>,
    /// Lifetime, e.g. 15m, 1h, 1d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub(crate) ttl: Duration,
    /// Key id header (`kid`), to pick a key from a JWKS.
    #[arg(long)]
    pub(crate) kid: Option<String>,
}

pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("the lifetime must be longer than zero".to_owned()),
        d => Ok(d),
    }
}

pub(crate) fn mint(args: MintArgs) -> anyhow::Result<ExitCode> {
    let key_bytes = std::fs::read(&args.key)
        .with_context(|| format!("cannot read the key file {}", args.key.display()))?;
    let looks_like_pem = key_bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let key = if args.alg == "HS256" {
        if looks_like_pem {
            bail!(
                "{} holds a PEM key, not a shared secret: pass --alg with the key's algorithm (RS256, ES256, EdDSA, ...)",
                args.key.display()
            );
        }
        let text = String::from_utf8(key_bytes).map_err(|_| {
            anyhow::anyhow!(
                "{} is not UTF-8 text; for HS256 it must hold the shared secret",
                args.key.display()
            )
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            bail!(
                "{} is empty; for HS256 it must hold the shared secret",
                args.key.display()
            );
        }
        identity::MintKey::Hs256(secret.to_owned())
    } else {
        if !looks_like_pem {
            bail!(
                "{} is not a PEM private key; --alg {} needs one (for a shared secret use --alg HS256)",
                args.key.display(),
                args.alg
            );
        }
        identity::MintKey::PrivateKeyPem {
            alg: args.alg.clone(),
            pem: key_bytes,
        }
    };
    let request = identity::MintRequest {
        key,
        issuer: args.iss,
        audience: args.aud,
        subject: args.sub,
        groups: args
            .groups
            .into_iter()
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect(),
        ttl: args.ttl,
        not_before: None,
        kid: args.kid,
        extra: serde_json::Map::new(),
    };
    let token = identity::mint_token(&request)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
