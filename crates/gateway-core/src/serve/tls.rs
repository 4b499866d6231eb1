//! TLS for both sides of a connection: the client-facing acceptor is configured by the binary
//! ([`ListenerConfig::tls`](super::ListenerConfig::tls)); this module holds the upstream side,
//! verified client configurations cached per CA file, and the TLS handshake to a target.

use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::stream::UpstreamStream;
use crate::target::{Target, UpstreamTls};

/// Upstream TLS client configurations, built once per CA file rather than once per connection.
#[derive(Debug, Default)]
pub struct TlsConfigs {
    by_ca:
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, Arc<rustls::ClientConfig>>>,
}

impl TlsConfigs {
    /// The verify-full client configuration for `ca_file` (the bundled roots when `None`).
    pub fn get(
        &self,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let key = ca_file
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let mut map = self.by_ca.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(Arc::clone(c));
        }
        let config = client_tls_config(ca_file)?;
        map.insert(key, Arc::clone(&config));
        Ok(config)
    }
}

/// A verify-full client configuration trusting the CAs in `ca_file`, or the Mozilla root set
/// bundled with `webpki-roots` when no file is given (the gateway does not read the system's trust
/// store, so what it trusts is the same on every machine).
fn client_tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let Some(ca) = ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return finish_client_config(roots);
    };
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("read CA file {}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("parse CA file {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate in {}: {e}", ca.display()))?;
    }
    finish_client_config(roots)
}

fn finish_client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl TlsConfigs {
    /// Runs the TLS handshake to `target` over `tcp` (after whatever the protocol does to ask for
    /// TLS) when the target's [`UpstreamTls`] asks for it, verifying the certificate chain and the
    /// host name; a plain stream otherwise. The error text says what failed, for the caller's
    /// "could not connect" error.
    pub async fn connect(&self, target: &Target, tcp: TcpStream) -> Result<UpstreamStream, String> {
        let UpstreamTls::VerifyFull {
            ca_file,
            server_name,
        } = &target.tls
        else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let config = self.get(ca_file.as_deref())?;
        let name = server_name.clone().unwrap_or_else(|| target.host.clone());
        let name =
            ServerName::try_from(name).map_err(|e| format!("invalid TLS server name: {e}"))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map(|s| UpstreamStream::Tls(Box::new(s)))
            .map_err(|e| format!("TLS handshake: {e}"))
    }
}
