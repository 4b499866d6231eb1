//! Setup errors: what can go wrong while building the authenticators from configuration.

use std::path::PathBuf;

/// A configuration or setup problem, reported when the gateway starts (or when a token is minted).
/// Messages name the file, user or setting at fault and never contain key material or passwords.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A key, key set or certificate file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key could not be used (wrong format, wrong type for the algorithm, empty secret).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A JWKS could not be fetched or parsed, or holds no usable key.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// The JWT settings contradict each other or name an unsupported algorithm.
    #[error("invalid JWT configuration: {0}")]
    InvalidJwtConfig(String),
    /// A static user's entry is unusable.
    #[error("static user {user:?}: {reason}")]
    InvalidUser {
        /// The user name as configured.
        user: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Hashing a password failed.
    #[error("cannot hash password: {0}")]
    Hashing(String),
    /// A token could not be minted.
    #[error("cannot mint token: {0}")]
    Mint(String),
}
