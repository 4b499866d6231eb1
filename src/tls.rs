//! TLS for client-facing listeners: a `rustls` server configuration built from PEM files, on the
//! aws-lc-rs provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::ListenerTlsFiles;

/// Why a listener's TLS configuration could not be built. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{what} {}: {source}", path.display())]
    Pem {
        /// What the file should hold, e.g. "certificate file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds no item of the kind expected.
    #[error("{what} {} contains no {expected} (expected a PEM block such as `-----BEGIN {marker}-----`)", path.display())]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The kind of item missing.
        expected: &'static str,
        /// A PEM marker for that kind.
        marker: &'static str,
    },
    /// A CA certificate was refused by the trust store.
    #[error("client CA file {}: {source}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("client CA file {}: {source}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why.
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the certificate chain and key (e.g. the key does not match the certificate).
    #[error("certificate {} with key {}: {source}", cert.display(), key.display())]
    CertifiedKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        source: rustls::Error,
    },
}

/// Builds the TLS configuration of a listener from `files`, advertising the ALPN protocol ids in
/// `alpn` (e.g. `b"postgresql"`; empty for none).
///
/// With a client CA, clients may present a certificate, which must then chain to that CA; clients
/// without one are still admitted to TLS so that they can authenticate with a password or token.
pub fn server_config(
    files: &ListenerTlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let certs = read_certificates("certificate file", &files.cert_file)?;
    let key = read_private_key(&files.key_file)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::CertifiedKey {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
            source,
        })?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certificates("client CA file", ca_file)? {
                roots.add(ca).map_err(|source| TlsError::ClientCa {
                    path: ca_file.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::Verifier {
                    path: ca_file.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::CertifiedKey {
                cert: files.cert_file.clone(),
                key: files.key_file.clone(),
                source,
            })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Reads the private key (PKCS#8, PKCS#1 or SEC1 PEM) in `path`.
pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key file",
            path: path.to_path_buf(),
            expected: "private key",
            marker: "PRIVATE KEY",
        },
        source => TlsError::Pem {
            what: "private key file",
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Reads the PEM certificates in `path` (`what` names the file in errors): at least one, and every
/// one well-formed.
pub(crate) fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "certificate",
            marker: "CERTIFICATE",
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let (cert_file, key_file, ca_file) = (
            dir.join("server.pem"),
            dir.join("server.key"),
            dir.join("ca.pem"),
        );
        std::fs::write(&cert_file, leaf.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::write(&ca_file, ca.pem()).unwrap();
        (cert_file, key_file, ca_file)
    }

    #[test]
    fn builds_with_and_without_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file, ca_file) = write_pki(dir.path());
        let mut files = ListenerTlsFiles {
            cert_file,
            key_file,
            client_ca_file: None,
        };
        let config = server_config(&files, &[b"postgresql"]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
        files.client_ca_file = Some(ca_file);
        server_config(&files, &[]).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file, _) = write_pki(dir.path());
        let missing = dir.path().join("missing.pem");
        let files = ListenerTlsFiles {
            cert_file: missing.clone(),
            key_file: key_file.clone(),
            client_ca_file: None,
        };
        let e = server_config(&files, &[]).unwrap_err().to_string();
        assert!(
            e.contains("certificate file") && e.contains("missing.pem"),
            "{e}"
        );

        // A key file holding only a certificate.
        let files = ListenerTlsFiles {
            cert_file: cert_file.clone(),
            key_file: cert_file.clone(),
            client_ca_file: None,
        };
        let e = server_config(&files, &[]).unwrap_err().to_string();
        assert!(
            e.contains("private key file")
                && e.contains("server.pem")
                && e.contains("no private key"),
            "{e}"
        );

        // A client CA file without certificates.
        let files = ListenerTlsFiles {
            cert_file,
            key_file: key_file.clone(),
            client_ca_file: Some(key_file),
        };
        let e = server_config(&files, &[]).unwrap_err().to_string();
        assert!(
            e.contains("client CA file") && e.contains("no certificate"),
            "{e}"
        );
    }
}
