//! The key of keyed strategies: hash tokens, format-preserving card and national-id digits.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::hmac;

/// The secret behind keyed strategies ([`super::Strategy::Hash`], [`super::Strategy::Card`],
/// [`super::Strategy::NationalId`]): 32 random bytes, used as an HMAC-SHA-256 key.
///
/// Equal values give equal tokens under one key (joins and `GROUP BY` on masked columns still
/// work), and nobody without the key can compute a token from a guessed value. A new key changes
/// every token. `Debug` does not print the key.
#[derive(Clone)]
pub struct HashKey {
    key: hmac::Key,
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// Why a [`HashKey`] file cannot be used. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file exists but cannot be read.
    #[error("cannot read the masking hash key {}: {source}; check that the gateway's user may read it", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file is missing and cannot be created.
    #[error("cannot create the masking hash key {}: {source}; check that its directory exists and that the gateway's user may write there", path.display())]
    Create {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file does not hold a key.
    #[error("the masking hash key {} {problem}; it must hold 64 hexadecimal characters (32 bytes), e.g. from `openssl rand -hex 32`; delete it to have the gateway generate a new one (every hash token then changes)", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with the content.
        problem: String,
    },
    /// Users other than the owner may read the file.
    #[error("the masking hash key {} can be read by group or others (mode {mode:03o}); run `chmod 600 {}`", path.display(), path.display())]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The system's random generator failed.
    #[error("cannot generate a masking hash key for {}: the system random generator failed", path.display())]
    Random {
        /// The key file.
        path: PathBuf,
    },
}

/// How long a gateway waits for another process that has just created the key file to finish
/// writing it (two gateways started together race to create it; the loser reads the winner's).
const RACE_WAIT: Duration = Duration::from_millis(2000);
const RACE_POLL: Duration = Duration::from_millis(20);

impl HashKey {
    /// A key from its bytes (tests, or a key kept elsewhere).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        }
    }

    /// Reads the key at `path` (64 hexadecimal characters, a trailing newline allowed), or, when
    /// the file does not exist, creates it with a fresh random key, readable by its owner only
    /// (mode 0600).
    ///
    /// The file is created with `create_new`, so two gateways started at once cannot end up with
    /// different keys: the one that loses the race reads the winner's file. A file that is
    /// readable by group or others, or that does not hold exactly one key, is an error naming the
    /// file and the fix; it is never replaced.
    pub fn load_or_create(path: &Path) -> Result<HashKey, KeyError> {
        match read_key_file(path) {
            Ok(Some(key)) => return Ok(key),
            Ok(None) => {
                return Err(KeyError::Malformed {
                    path: path.to_path_buf(),
                    problem: "is empty".into(),
                })
            }
            Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Random {
            path: path.to_path_buf(),
        })?;
        match create_key_file(path, &bytes) {
            Ok(()) => Ok(HashKey::from_bytes(bytes)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_after_race(path),
            Err(source) => Err(KeyError::Create {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// HMAC-SHA-256 of `domain` then `data`. Every use of the key has its own domain (a
    /// NUL-terminated label), so a hash token never equals a card's digit stream.
    pub(crate) fn tag(&self, domain: &[u8], data: &[u8]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(domain);
        context.update(data);
        let tag = context.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Like [`HashKey::tag`] with a block counter between domain and data: the blocks of a keyed
    /// stream longer than one tag.
    pub(crate) fn tag_block(&self, domain: &[u8], block: u32, data: &[u8]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(domain);
        context.update(&block.to_be_bytes());
        context.update(data);
        let tag = context.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// The key in the file, `Ok(None)` when the file is empty (perhaps being written right now).
fn read_key_file(path: &Path) -> Result<Option<HashKey>, KeyError> {
    let read_error = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    // The mode of the file actually opened, not of whatever the path names a moment later.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    // A key file is 65 bytes; read a little more than that to report an oversized file without
    // reading all of it.
    let mut content = Vec::with_capacity(80);
    io::Read::by_ref(&mut file)
        .take(4096)
        .read_to_end(&mut content)
        .map_err(read_error)?;
    if content.is_empty() {
        return Ok(None);
    }
    parse_key(&content)
        .map(Some)
        .map_err(|problem| KeyError::Malformed {
            path: path.to_path_buf(),
            problem,
        })
}

fn parse_key(content: &[u8]) -> Result<HashKey, String> {
    let text = std::str::from_utf8(content).map_err(|_| "is not text".to_string())?;
    // A trailing newline (or CRLF, or a stray space from an editor) is fine; anything inside is not.
    let text = text.trim_end();
    if text.len() != 64 {
        return Err(format!(
            "holds {} characters before its end of line, not 64",
            text.chars().count()
        ));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|_| "holds characters that are not hexadecimal digits".to_string())?;
    Ok(HashKey::from_bytes(bytes))
}

/// Creates the key file (failing if it exists), mode 0600, and syncs it and its directory.
fn create_key_file(path: &Path, key: &[u8; 32]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let written = (|| -> io::Result<()> {
        let mut line = hex::encode(key);
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        // A half-written key would stop every later start with a "malformed" error: remove it so
        // that the next start tries again. Nothing else can have read it yet: it was empty or
        // partial, which readers wait on.
        let _ = std::fs::remove_file(path);
        // Not AlreadyExists: that kind means "another process won the race" to the caller.
        return Err(io::Error::other(e));
    }
    Ok(())
}

/// Another process created the file first: read its key, giving it a moment to finish writing.
fn read_after_race(path: &Path) -> Result<HashKey, KeyError> {
    let deadline = std::time::Instant::now() + RACE_WAIT;
    loop {
        let outcome = read_key_file(path);
        let retry = match &outcome {
            Ok(None) => true,
            // Partly written: fewer than 64 characters so far.
            Err(KeyError::Malformed { .. }) => true,
            // The winner failed to write and removed its file.
            Err(KeyError::Read { source, .. }) => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        };
        if !retry || std::time::Instant::now() >= deadline {
            return match outcome {
                Ok(Some(key)) => Ok(key),
                Ok(None) => Err(KeyError::Malformed {
                    path: path.to_path_buf(),
                    problem: "is empty".into(),
                }),
                Err(e) => Err(e),
            };
        }
        std::thread::sleep(RACE_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let key = HashKey::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "HashKey(..)");
    }

    #[test]
    fn parse_accepts_a_trailing_newline_only_around_64_hex_digits() {
        let hex64 = "0f".repeat(32);
        assert!(parse_key(hex64.as_bytes()).is_ok());
        assert!(parse_key(format!("{hex64}\n").as_bytes()).is_ok());
        assert!(parse_key(format!("{hex64}\r\n").as_bytes()).is_ok());
        assert!(parse_key(format!(" {hex64}").as_bytes()).is_err());
        assert!(parse_key(&hex64.as_bytes()[..62]).is_err());
        assert!(parse_key(format!("{}zz", &hex64[..62]).as_bytes()).is_err());
        assert!(parse_key(&[0xff; 64]).is_err());
    }

    #[test]
    fn domains_separate_tags() {
        let key = HashKey::from_bytes([1; 32]);
        assert_ne!(key.tag(b"a\0", b"x"), key.tag(b"b\0", b"x"));
        assert_ne!(
            key.tag_block(b"a\0", 0, b"x"),
            key.tag_block(b"a\0", 1, b"x")
        );
    }
}
