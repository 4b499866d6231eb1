//! `[telemetry]` and `[admin]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use toml::Spanned;

use super::*;
use crate::config::schema::*;
use crate::config::*;

impl Checker<'_> {
    pub(super) fn check_telemetry(
        &mut self,
        section: &Spanned<TelemetrySection>,
    ) -> Option<TelemetrySettings> {
        let t = section.get_ref();
        let otlp_endpoint = t.otlp_endpoint.as_ref().and_then(|v| {
            otlp_traces_url(v.get_ref().as_str())
                .map_err(|e| self.error(v.span(), format!("`telemetry.otlp_endpoint`: {e}")))
                .ok()
        });
        let service_name = match &t.service_name {
            Some(v) => self.non_empty("service_name", v),
            None => DEFAULT_SERVICE_NAME.to_owned(),
        };
        let mut headers = BTreeMap::new();
        for (name, value) in t.headers.iter().flatten() {
            let text = value.get_ref().as_str();
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(
                    value.span(),
                    format!("`telemetry.headers`: `{name}` is not a valid HTTP header name"),
                );
            } else if axum::http::HeaderValue::from_str(text).is_err() {
                // Never echo the value: it is usually a token.
                self.error(
                    value.span(),
                    format!("`telemetry.headers.{name}`: the value is not a valid HTTP header value (control characters or non-ASCII text)"),
                );
            }
            headers.insert(name.to_ascii_lowercase(), text.to_owned());
        }
        let sample_ratio = match &t.sample_ratio {
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error(
                    v.span(),
                    format!(
                        "`telemetry.sample_ratio` must be between 0.0 and 1.0, not {}",
                        v.get_ref()
                    ),
                );
                1.0
            }
            None => 1.0,
        };
        Some(TelemetrySettings {
            otlp_endpoint: otlp_endpoint?,
            service_name,
            headers,
            sample_ratio,
        })
    }

    pub(super) fn check_admin(&mut self, section: &Spanned<AdminSection>) -> AdminSettings {
        let listen = match &section.get_ref().listen {
            Some(v) => v.get_ref().as_str().parse::<SocketAddr>().unwrap_or_else(|_| {
                self.error(
                    v.span(),
                    format!(
                        "`admin.listen`: `{}` is not an IP:PORT address; write e.g. \"127.0.0.1:9090\"",
                        v.get_ref().as_str()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }),
            None => SocketAddr::from(([127, 0, 0, 1], 9090)),
        };
        let s = section.get_ref();
        let before = self.errors.len();
        let cert = s
            .tls_cert
            .as_ref()
            .map(|v| self.certificate_file("admin.tls_cert", v, "certificate file"));
        let key = s
            .tls_key
            .as_ref()
            .map(|v| self.private_key_file("admin.tls_key", v));
        let tls = match (cert, key) {
            (Some(cert_file), Some(key_file)) => {
                let files = ListenerTlsFiles {
                    cert_file,
                    key_file,
                    client_ca_file: None,
                };
                if self.errors.len() == before {
                    if let (Err(e), Some(v)) = (crate::tls::server_config(&files, &[]), &s.tls_key)
                    {
                        self.error(v.span(), format!("`admin.tls_key`: {e}"));
                    }
                }
                Some(files)
            }
            (None, None) => None,
            _ => {
                self.error(
                    section.span(),
                    "[admin]: `tls_cert` and `tls_key` go together: HTTPS needs both the certificate chain and its private key",
                );
                None
            }
        };
        AdminSettings { listen, tls }
    }
}
