//! Ed25519 checkpoint signatures (aws-lc-rs), key files, and the payloads the audit log writes
//! itself: checkpoints and notices.

use std::path::Path;
use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::AuditError;
use crate::record::{to_hex, ChainHash};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Domain separation for checkpoint signatures, so a signature over a chain position can never be
/// mistaken for a signature over anything else made with the same key.
const CHECKPOINT_DOMAIN: &[u8] = b"portcullis audit checkpoint v1";

/// Signs checkpoints with an Ed25519 private key.
pub struct CheckpointSigner {
    key: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    // Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl CheckpointSigner {
    /// Reads an unencrypted PKCS#8 Ed25519 private key from a PEM (`PRIVATE KEY`) or DER file.
    pub fn from_file(path: &Path) -> Result<Self, AuditError> {
        let bytes = std::fs::read(path).map_err(|e| {
            AuditError::Key(format!("cannot read signing key {}: {e}", path.display()))
        })?;
        Self::from_pkcs8(&bytes)
            .map_err(|e| AuditError::Key(format!("signing key {}: {e}", path.display())))
    }

    /// Parses an unencrypted PKCS#8 (v1 or v2) Ed25519 private key, PEM or DER.
    pub fn from_pkcs8(pem_or_der: &[u8]) -> Result<Self, AuditError> {
        let der = match pem_body(pem_or_der, "PRIVATE KEY")? {
            Some(der) => der,
            None => pem_or_der.to_vec(),
        };
        let key = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| {
            AuditError::Key(format!(
                "not an unencrypted PKCS#8 Ed25519 private key ({e})"
            ))
        })?;
        let key_id = key_id(key.public_key().as_ref());
        Ok(Self { key, key_id })
    }

    /// The raw 32-byte public key, which is all that verify needs.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// Short identifier of the key: the first 16 hex digits of SHA-256 over the raw public key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `(node, seq, hash)`: the payload of the checkpoint record that follows that record.
    pub fn checkpoint(
        &self,
        node: &str,
        seq: u64,
        hash: &ChainHash,
        time: SystemTime,
    ) -> CheckpointPayload {
        let sig = self.key.sign(&checkpoint_message(node, seq, hash));
        CheckpointPayload {
            checkpoint: "ed25519".to_owned(),
            time,
            signed_seq: seq,
            signed_hash: hash.to_hex(),
            key_id: self.key_id.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        }
    }
}

/// The bytes a checkpoint signs: a length-prefixed encoding of a domain tag, the node, the signed
/// record's seq and its hash.
///
/// ```text
/// u64 BE len(domain) || "portcullis audit checkpoint v1"
/// u64 BE len(node)   || node
/// u64 BE seq
/// 32 bytes hash
/// ```
pub fn checkpoint_message(node: &str, seq: u64, hash: &ChainHash) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + CHECKPOINT_DOMAIN.len() + 8 + node.len() + 8 + 32);
    m.extend_from_slice(&(CHECKPOINT_DOMAIN.len() as u64).to_be_bytes());
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&(node.len() as u64).to_be_bytes());
    m.extend_from_slice(node.as_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&hash.0);
    m
}

/// Checks a checkpoint signature with a raw 32-byte Ed25519 public key.
pub fn verify_checkpoint_signature(public_key: &[u8], node: &str, cp: &CheckpointPayload) -> bool {
    let Some(hash) = ChainHash::from_hex(&cp.signed_hash) else {
        return false;
    };
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(cp.signature.as_bytes()) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&checkpoint_message(node, cp.signed_seq, &hash), &sig)
        .is_ok()
}

/// The payload of a checkpoint record at seq `signed_seq + 1`. Serialized once by the writer; the
/// stored bytes are what the chain hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPayload {
    /// Signature algorithm; always `ed25519`.
    pub checkpoint: String,
    /// When the checkpoint was made (RFC 3339 in the payload).
    #[serde(with = "crate::record::rfc3339")]
    pub time: SystemTime,
    /// Seq of the record signed (the one right before the checkpoint).
    pub signed_seq: u64,
    /// Hash of the record signed, hex.
    pub signed_hash: String,
    /// [`CheckpointSigner::key_id`] of the signing key.
    pub key_id: String,
    /// The Ed25519 signature over [`checkpoint_message`], standard base64.
    pub signature: String,
}

/// The payload of a notice record: something the audit log itself says in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticePayload {
    /// What: `log_opened`, `log_closed`, `unclean_stop`, `sink_recovered`,
    /// `torn_record_truncated`, `index_rebuilt`.
    pub notice: String,
    /// When (RFC 3339 in the payload).
    #[serde(with = "crate::record::rfc3339")]
    pub time: SystemTime,
    /// Human-readable explanation.
    pub message: String,
    /// Numbers that go with it (counts, seq ranges, byte offsets).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The public key file kept beside a generated private key: `audit-signing.pem` ->
/// `audit-signing.pub`.
pub fn public_key_path(private_key: &Path) -> std::path::PathBuf {
    private_key.with_extension("pub")
}

/// Loads the signing key at `path`, or, when no file is there, generates one: the private key
/// (mode 0600) at `path` and its public key beside it ([`public_key_path`]). Returns the signer
/// and whether it was generated now. A key the gateway makes for itself is what lets a new
/// deployment's trail be signed from its first record without any configuration.
pub fn load_or_generate_key(path: &Path) -> Result<(CheckpointSigner, bool), AuditError> {
    if path.exists() {
        return Ok((CheckpointSigner::from_file(path)?, false));
    }
    let (private_pem, public_pem) = generate_signing_key()?;
    let public = public_key_path(path);
    // The public key first: a crash between the two writes leaves no private key without its
    // public half, and the next start generates both again.
    if public.exists() {
        std::fs::remove_file(&public).map_err(|e| {
            AuditError::Key(format!(
                "cannot replace the stale public key {}: {e}",
                public.display()
            ))
        })?;
    }
    write_new_file(&public, public_pem.as_bytes(), 0o644).map_err(|e| {
        AuditError::Key(format!(
            "cannot write the public key {}: {e}",
            public.display()
        ))
    })?;
    write_new_file(path, private_pem.as_bytes(), 0o600).map_err(|e| {
        AuditError::Key(format!(
            "cannot write the signing key {}: {e}",
            path.display()
        ))
    })?;
    Ok((CheckpointSigner::from_file(path)?, true))
}

/// Creates `path` (failing if it exists) with `mode` on Unix, writes `bytes` and syncs the file
/// and its directory.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Generates a new Ed25519 signing key. Returns `(private key as PKCS#8 v1 PEM, public key as
/// SubjectPublicKeyInfo PEM)`; the private key goes to `signing_key_file`, the public key to
/// whoever runs verify.
pub fn generate_signing_key() -> Result<(String, String), AuditError> {
    let doc = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new())
        .map_err(|_| AuditError::Key("could not generate an Ed25519 key".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|e| AuditError::Key(format!("generated key rejected: {e}")))?;
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((
        pem_encode("PRIVATE KEY", doc.as_ref()),
        pem_encode("PUBLIC KEY", &spki),
    ))
}

/// Reads an Ed25519 public key given as PEM (`PUBLIC KEY`), DER SubjectPublicKeyInfo, or the raw
/// 32 bytes; returns the raw 32 bytes verify takes.
pub fn parse_public_key(bytes: &[u8]) -> Result<Vec<u8>, AuditError> {
    let der = match pem_body(bytes, "PUBLIC KEY")? {
        Some(der) => der,
        None => bytes.to_vec(),
    };
    if der.len() == 32 {
        return Ok(der);
    }
    match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(raw) if raw.len() == 32 => Ok(raw.to_vec()),
        _ => Err(AuditError::Key(
            "not an Ed25519 public key (PEM, DER SubjectPublicKeyInfo or 32 raw bytes)".into(),
        )),
    }
}

/// Reads a public key file (see [`parse_public_key`]).
pub fn read_public_key_file(path: &Path) -> Result<Vec<u8>, AuditError> {
    let bytes = std::fs::read(path)
        .map_err(|e| AuditError::Key(format!("cannot read public key {}: {e}", path.display())))?;
    parse_public_key(&bytes).map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))
}

/// Reads one or more Ed25519 public keys: PEM text with any number of `PUBLIC KEY` blocks (the
/// public keys of every signing key a chain has had, concatenated), or one key as DER
/// SubjectPublicKeyInfo or 32 raw bytes. Returns the raw 32 bytes of each, in file order.
pub fn parse_public_keys(bytes: &[u8]) -> Result<Vec<Vec<u8>>, AuditError> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    let text = match std::str::from_utf8(bytes) {
        Ok(text) if text.contains(BEGIN) => text,
        _ => return parse_public_key(bytes).map(|key| vec![key]),
    };
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let end = block
            .find("-----END PUBLIC KEY-----")
            .ok_or_else(|| AuditError::Key("PEM `PUBLIC KEY` block has no END line".to_owned()))?;
        let end = end + "-----END PUBLIC KEY-----".len();
        let key = parse_public_key(&block.as_bytes()[..end]).map_err(|e| {
            AuditError::Key(format!("public key {} in the file: {e}", keys.len() + 1))
        })?;
        keys.push(key);
        rest = &block[end..];
    }
    Ok(keys)
}

/// Reads a file of one or more public keys (see [`parse_public_keys`]).
pub fn read_public_keys_file(path: &Path) -> Result<Vec<Vec<u8>>, AuditError> {
    let bytes = std::fs::read(path)
        .map_err(|e| AuditError::Key(format!("cannot read public key {}: {e}", path.display())))?;
    parse_public_keys(&bytes).map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))
}

/// The key id checkpoints carry (`key_id`) and verify reports: the first 8 bytes of SHA-256
/// over the raw 32-byte public key, as 16 lowercase hex digits.
pub fn key_id(public_key: &[u8]) -> String {
    let d = Sha256::digest(public_key);
    to_hex(&d[..8])
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside a PEM block with `label`; `None` if the input is not PEM at all.
fn pem_body(input: &[u8], label: &str) -> Result<Option<Vec<u8>>, AuditError> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(None);
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = text.find(&begin) else {
        if text.contains("-----BEGIN ") {
            return Err(AuditError::Key(format!(
                "PEM file holds no `{label}` block"
            )));
        }
        return Ok(None);
    };
    let rest = &text[start + begin.len()..];
    let Some(stop) = rest.find(&end) else {
        return Err(AuditError::Key(format!(
            "PEM `{label}` block has no END line"
        )));
    };
    let b64: String = rest[..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map(Some)
        .map_err(|e| AuditError::Key(format!("PEM `{label}` block is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify() {
        let (private_pem, public_pem) = generate_signing_key().unwrap();
        let signer = CheckpointSigner::from_pkcs8(private_pem.as_bytes()).unwrap();
        let public = parse_public_key(public_pem.as_bytes()).unwrap();
        assert_eq!(public, signer.public_key());
        let h = ChainHash([7; 32]);
        let cp = signer.checkpoint("node-a", 41, &h, SystemTime::now());
        assert!(verify_checkpoint_signature(&public, "node-a", &cp));
        assert!(!verify_checkpoint_signature(&public, "node-b", &cp));
        let mut forged = cp.clone();
        forged.signed_seq = 42;
        assert!(!verify_checkpoint_signature(&public, "node-a", &forged));
        let (_, other_pem) = generate_signing_key().unwrap();
        let other = parse_public_key(other_pem.as_bytes()).unwrap();
        assert!(!verify_checkpoint_signature(&other, "node-a", &cp));
    }

    #[test]
    fn reads_openssl_keys() {
        // `openssl genpkey -algorithm ed25519` writes PKCS#8 v1; skip where openssl is missing.
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let public = dir.path().join("k.pub");
        let made = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(&public)
                .status()
                .is_ok_and(|s| s.success());
        if !made {
            return;
        }
        let signer = CheckpointSigner::from_file(&key).unwrap();
        assert_eq!(read_public_key_file(&public).unwrap(), signer.public_key());
    }

    #[test]
    fn a_file_may_hold_several_public_keys() {
        let (_, a) = generate_signing_key().unwrap();
        let (_, b) = generate_signing_key().unwrap();
        let both = format!("# old key\n{a}\n# new key, since 2026-11\n{b}");
        let keys = parse_public_keys(both.as_bytes()).unwrap();
        assert_eq!(
            keys,
            vec![
                parse_public_key(a.as_bytes()).unwrap(),
                parse_public_key(b.as_bytes()).unwrap()
            ]
        );
        assert_eq!(key_id(&keys[0]).len(), 16);
        assert_ne!(key_id(&keys[0]), key_id(&keys[1]));
        // One key as raw bytes still reads.
        assert_eq!(parse_public_keys(&keys[1]).unwrap(), vec![keys[1].clone()]);
        let truncated = &both[..both.len() - 10];
        assert!(parse_public_keys(truncated.as_bytes()).is_err());
    }

    #[test]
    fn refuses_garbage_keys() {
        assert!(CheckpointSigner::from_pkcs8(b"not a key").is_err());
        assert!(
            parse_public_key(b"-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
        assert!(parse_public_key(&[0u8; 31]).is_err());
    }
}
