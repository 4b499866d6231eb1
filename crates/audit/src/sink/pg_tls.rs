//! TLS to a PostgreSQL audit database: the `sslmode` rule, the rustls client configuration, and
//! the connection-string handling around tokio-postgres, which itself knows only `disable`,
//! `prefer` and `require` and does no certificate checking of its own.
//!
//! The rule, stricter than libpq's:
//!
//! | `sslmode` in the URL | connection |
//! |---|---|
//! | absent, `disable` | plain TCP (or a Unix socket); TLS is never attempted |
//! | `require` | TLS or no connection; the server's certificate is **not** checked (libpq's meaning), so this stops passive eavesdropping only; a warning is logged |
//! | `verify-full` | TLS or no connection; the certificate must chain to `ca_file` (default: the bundled Mozilla roots) and name the host |
//! | `prefer`, `allow` | refused: they fall back to plain text without telling anyone |
//! | `verify-ca` | refused: use `verify-full` |
//!
//! `ca_file` (in the sink config) is accepted only with `verify-full`. The libpq file parameters
//! (`sslrootcert`, `sslcert`, `sslkey`, ...) are refused in the URL with a message that says
//! what to use instead.
//!
//! The rustls glue to tokio-postgres is the `tokio-postgres-rustls` crate (0.14: rustls 0.23,
//! tokio-postgres 0.7, no crypto provider of its own); the provider passed in is aws-lc-rs, the
//! one the rest of the gateway uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::Host;

/// ALPN protocol id of PostgreSQL; PostgreSQL 17 requires it for direct TLS
/// (`sslnegotiation=direct`), older servers ignore it.
const POSTGRES_ALPN: &[u8] = b"postgresql";

/// How a PostgreSQL sink connects, from `sslmode` in its connection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP or a Unix socket; also what an absent `sslmode` means.
    Disable,
    /// TLS or no connection, without checking the server's certificate.
    Require,
    /// TLS or no connection; the certificate chain (to `ca_file`, or the bundled Mozilla roots)
    /// and the host name are checked.
    VerifyFull,
}

impl SslMode {
    /// The `sslmode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A PostgreSQL sink's connection settings: tokio-postgres's configuration (with `sslmode`
/// taken out of the string and set to what tokio-postgres understands) and the TLS to use.
pub struct PgConnectSettings {
    /// The connection configuration for tokio-postgres.
    pub config: tokio_postgres::Config,
    /// The `sslmode` the string asked for.
    pub ssl_mode: SslMode,
    /// The CA file of `verify-full`, if any.
    pub ca_file: Option<PathBuf>,
}

impl PgConnectSettings {
    /// Reads a connection string (`postgresql://...` or `key=value ...`) and the sink's
    /// `ca_file`, applying the rule in the module documentation. Messages never repeat the
    /// string, which may hold a password.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let (rest, ssl_params) = take_ssl_params(url)?;
        let mut ssl_mode = SslMode::Disable;
        for (key, value) in ssl_params {
            match key.as_str() {
                "sslmode" => {
                    ssl_mode = match value.as_str() {
                        "disable" => SslMode::Disable,
                        "require" => SslMode::Require,
                        "verify-full" => SslMode::VerifyFull,
                        "prefer" | "allow" => {
                            return Err(format!(
                                "sslmode={value} falls back to an unencrypted connection without saying so, which \
                                 the audit sink does not do: write sslmode=verify-full (or require, or disable)"
                            ))
                        }
                        "verify-ca" => {
                            return Err("sslmode=verify-ca is not supported: use sslmode=verify-full, which also \
                                 checks that the certificate names the host"
                                .to_owned())
                        }
                        other => {
                            return Err(format!(
                                "unknown sslmode `{other}`: write disable, require or verify-full"
                            ))
                        }
                    }
                }
                "sslrootcert" => {
                    return Err(
                        "`sslrootcert` in the connection string is not read: set `ca_file` on the sink \
                         (`--ca-file` for the audit commands) and sslmode=verify-full"
                            .to_owned(),
                    )
                }
                other => {
                    return Err(format!(
                        "`{other}` in the connection string is not supported by the audit sink (no client \
                         certificates, CRLs or key passwords): authenticate with a password or trust"
                    ))
                }
            }
        }
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("invalid connection string: {}", error_chain(&e)))?;
        if ca_file.is_some() && ssl_mode != SslMode::VerifyFull {
            return Err(format!(
                "`ca_file` is set but sslmode is {}: add sslmode=verify-full to the connection string (the CA \
                 file is used only to verify the server)",
                ssl_mode.as_str()
            ));
        }
        if ssl_mode != SslMode::Disable {
            if config.get_hosts().is_empty() {
                return Err(format!(
                    "sslmode={} needs `host`: the server's certificate is checked against it (`hostaddr` alone \
                     gives no name)",
                    ssl_mode.as_str()
                ));
            }
            #[cfg(unix)]
            if config
                .get_hosts()
                .iter()
                .any(|h| matches!(h, Host::Unix(_)))
            {
                return Err(format!(
                    "sslmode={} needs a TCP host: PostgreSQL does not use TLS on a Unix socket",
                    ssl_mode.as_str()
                ));
            }
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgConnectSettings {
            config,
            ssl_mode,
            ca_file: ca_file.map(Path::to_path_buf),
        })
    }

    /// The rustls connector for tokio-postgres; `None` for `disable`. Reads `ca_file`.
    pub fn tls(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, String> {
        if self.ssl_mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let mut config = match self.ssl_mode {
            SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCertificate { provider }))
                .with_no_client_auth(),
            _ => builder
                .with_root_certificates(root_store(self.ca_file.as_deref())?)
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![POSTGRES_ALPN.to_vec()];
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }

    /// Says what the server and its certificate had to satisfy, for a failed TLS connection
    /// whose error reads `error`.
    pub fn tls_hint(&self, error: &str) -> String {
        match self.ssl_mode {
            SslMode::Disable => String::new(),
            SslMode::Require => {
                "sslmode=require: the server must accept TLS (PostgreSQL `ssl = on`)".to_owned()
            }
            SslMode::VerifyFull if error.contains("does not support TLS") => {
                "sslmode=verify-full: the server must accept TLS (PostgreSQL `ssl = on`)".to_owned()
            }
            SslMode::VerifyFull => {
                let trusted = match &self.ca_file {
                    Some(ca) => format!("a CA in `ca_file` {}", ca.display()),
                    None => "the bundled Mozilla roots (set `ca_file` for a private CA)".to_owned(),
                };
                let hosts: Vec<String> = self.config.get_hosts().iter().map(host_name).collect();
                format!(
                    "sslmode=verify-full: the server's certificate must chain to {trusted} and name the host {}",
                    hosts.join(" or ")
                )
            }
        }
    }
}

/// The name of a host of a connection string, for messages.
pub(crate) fn host_name(h: &Host) -> String {
    match h {
        Host::Tcp(s) => s.clone(),
        #[cfg(unix)]
        Host::Unix(p) => p.display().to_string(),
    }
}

/// An error and its sources, `a: b: c`. tokio-postgres's own `Display` shows only the outermost
/// ("error performing TLS handshake"), which does not say what went wrong.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let Some(ca) = ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read `ca_file` {}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("`ca_file` {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate in `ca_file` {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "`ca_file` {} holds no PEM certificate",
            ca.display()
        ));
    }
    Ok(roots)
}

/// `sslmode=require`: any certificate is accepted (libpq's meaning of `require`), but the
/// handshake signatures are still checked, so the connection is encrypted to whoever holds the
/// key of the certificate presented.
#[derive(Debug)]
struct AnyServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Takes the libpq `ssl*` parameters (except `sslnegotiation`, which tokio-postgres reads) out of
/// a connection string. Returns the rest of the string, for tokio-postgres, and the parameters
/// taken, in order. A string this cannot read is returned whole, for tokio-postgres to report.
fn take_ssl_params(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let is_ssl_key = |k: &str| k.starts_with("ssl") && k != "sslnegotiation";
    for prefix in ["postgresql://", "postgres://"] {
        if let Some(rest) = url.strip_prefix(prefix) {
            return Ok(take_from_url(prefix, rest, is_ssl_key));
        }
    }
    Ok(take_from_key_values(url, is_ssl_key))
}

/// URL form: query parameters `?k=v&k=v`, percent-encoded. As tokio-postgres does, everything up
/// to the first `@` is credentials, so the query starts at the first `?` after it.
fn take_from_url(
    prefix: &str,
    rest: &str,
    is_ssl_key: impl Fn(&str) -> bool,
) -> (String, Vec<(String, String)>) {
    let creds_end = rest.find('@').map_or(0, |i| i + 1);
    let Some(q) = rest[creds_end..].find('?').map(|i| i + creds_end) else {
        return (format!("{prefix}{rest}"), Vec::new());
    };
    let (base, query) = (&rest[..q], &rest[q + 1..]);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key_decoded = percent_decode(key);
        if is_ssl_key(&key_decoded) {
            taken.push((key_decoded, percent_decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let mut out = format!("{prefix}{base}");
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    (out, taken)
}

/// Key-value form: `key = value` pairs separated by whitespace; a value is `'quoted'` or bare,
/// with `\` escaping the next character (libpq's and tokio-postgres's grammar). The pairs taken
/// are cut out of the string; the rest is left byte for byte as it was.
fn take_from_key_values(
    s: &str,
    is_ssl_key: impl Fn(&str) -> bool,
) -> (String, Vec<(String, String)>) {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(s.len(), |&(o, _)| o);
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut taken = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while at(i).is_some_and(|c| !c.is_whitespace() && c != '=') {
            i += 1;
        }
        let key: String = chars[start..i].iter().map(|&(_, c)| c).collect();
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            // Not a key-value string this reads: let tokio-postgres say what is wrong.
            return (s.to_owned(), Vec::new());
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i) {
                    None => return (s.to_owned(), Vec::new()),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        if let Some(c) = at(i + 1) {
                            value.push(c);
                        }
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = at(i) {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    if let Some(c2) = at(i + 1) {
                        value.push(c2);
                    }
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        if is_ssl_key(&key) {
            cuts.push((offset(start), offset(i.min(chars.len()))));
            taken.push((key, value));
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (from, to) in cuts {
        out.push_str(&s[last..from]);
        out.push(' ');
        last = to;
    }
    out.push_str(&s[last..]);
    (out, taken)
}

/// `%XX` decoding as libpq does it: invalid escapes are kept as they are; the result is read as
/// UTF-8 with replacement characters (it is only compared with parameter names and values).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> Result<SslMode, String> {
        PgConnectSettings::parse(url, None).map(|s| s.ssl_mode)
    }

    #[test]
    fn the_sslmode_rule() {
        // (connection string, expected mode or a word of the refusal, why)
        let cases: &[(&str, Result<SslMode, &str>, &str)] = &[
            (
                "host=db user=a",
                Ok(SslMode::Disable),
                "absent: plain, never tried",
            ),
            (
                "host=db sslmode=disable",
                Ok(SslMode::Disable),
                "explicit disable",
            ),
            ("host=db sslmode=require", Ok(SslMode::Require), "require"),
            (
                "host=db sslmode = 'verify-full' dbname=x",
                Ok(SslMode::VerifyFull),
                "quoted, spaced",
            ),
            (
                "postgresql://a@db/x?sslmode=verify-full",
                Ok(SslMode::VerifyFull),
                "URL",
            ),
            (
                "postgresql://a@db/x?application_name=p&sslmode=require&connect_timeout=3",
                Ok(SslMode::Require),
                "URL, middle",
            ),
            (
                "postgres://a@db/x?ssl%6dode=verify-full",
                Ok(SslMode::VerifyFull),
                "percent-encoded key",
            ),
            (
                "host=db sslmode=prefer",
                Err("falls back"),
                "prefer downgrades silently",
            ),
            (
                "postgresql://db/x?sslmode=allow",
                Err("falls back"),
                "allow downgrades silently",
            ),
            (
                "host=db sslmode=verify-ca",
                Err("verify-ca is not supported"),
                "verify-ca",
            ),
            (
                "host=db sslmode=strict",
                Err("unknown sslmode"),
                "unknown value",
            ),
            (
                "host=db sslmode=require sslrootcert=/ca.pem",
                Err("ca_file"),
                "libpq's CA parameter",
            ),
            (
                "host=db sslcert=/c.pem",
                Err("not supported"),
                "client certificates",
            ),
            (
                "host=/run/postgresql sslmode=require",
                Err("Unix socket"),
                "TLS on a Unix socket",
            ),
            (
                "host=db frobnicate=1",
                Err("invalid connection string"),
                "tokio-postgres still checks the rest",
            ),
            (
                "hostaddr=10.0.0.1 sslmode=verify-full",
                Err("needs `host`"),
                "no name to check",
            ),
        ];
        for (url, expected, why) in cases {
            match (mode(url), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{why}: {url}"),
                (Err(e), Err(word)) => assert!(e.contains(word), "{why}: {url}: {e}"),
                (got, want) => panic!("{why}: {url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn ca_file_goes_with_verify_full_only() {
        let ca = Path::new("/etc/ca.pem");
        assert!(PgConnectSettings::parse("host=db sslmode=verify-full", Some(ca)).is_ok());
        for url in ["host=db", "host=db sslmode=require"] {
            let e = PgConnectSettings::parse(url, Some(ca)).err().unwrap();
            assert!(e.contains("sslmode=verify-full"), "{url}: {e}");
        }
    }

    #[test]
    fn the_rest_of_the_string_reaches_tokio_postgres_unchanged() {
        let s = PgConnectSettings::parse(
            "host=db port=6543 sslmode=verify-full password='p w\\'x' dbname=audit",
            None,
        )
        .unwrap();
        assert_eq!(s.config.get_dbname(), Some("audit"));
        assert_eq!(s.config.get_ports(), &[6543]);
        assert_eq!(s.config.get_password(), Some(&b"p w'x"[..]));
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let s = PgConnectSettings::parse(
            "postgresql://writer:s%3Fcret@db:7000/audit?sslmode=require&application_name=gw",
            None,
        )
        .unwrap();
        assert_eq!(s.config.get_password(), Some(&b"s?cret"[..]));
        assert_eq!(s.config.get_application_name(), Some("gw"));
        assert_eq!(s.config.get_ports(), &[7000]);
        // Without sslmode tokio-postgres would "prefer"; the sink never tries TLS then.
        let s = PgConnectSettings::parse("postgresql://db/audit", None).unwrap();
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn refusals_never_repeat_the_password() {
        for url in [
            "host=db password=hunter2 sslmode=prefer",
            "postgresql://u:hunter2@db/x?sslmode=bogus",
            "host=db password=hunter2 nonsense=1",
        ] {
            let e = PgConnectSettings::parse(url, None).err().unwrap();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
