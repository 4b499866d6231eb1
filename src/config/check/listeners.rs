//! `[gateway]`, and the listener sections `[postgres]` and `[mysql]`, which share their checks.

use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use super::*;
use crate::config::schema::*;
use crate::config::*;

impl Checker<'_> {
    pub(super) fn check_gateway(&mut self, section: &GatewaySection) -> GatewaySettings {
        let node = match &section.node {
            Some(v) => self.non_empty("node", v),
            None => DEFAULT_NODE.to_owned(),
        };
        let handshake_timeout = self.duration(
            "handshake_timeout",
            section.handshake_timeout.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        if handshake_timeout.is_zero() {
            if let Some(v) = &section.handshake_timeout {
                self.error(v.span(), "`handshake_timeout` must be longer than zero");
            }
        }
        let data_dir = match &section.data_dir {
            Some(v) => {
                let dir = self.non_empty("data_dir", v);
                self.resolve(&dir)
            }
            None => self.resolve(DEFAULT_DATA_DIR),
        };
        let drain_timeout = self.duration(
            "drain_timeout",
            section.drain_timeout.as_ref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let max_message_bytes = match &section.max_message_bytes {
            Some(v) => match usize::try_from(*v.get_ref()) {
                Ok(0) => {
                    self.error(v.span(), "`max_message_bytes` must be at least 1");
                    DEFAULT_MAX_MESSAGE_BYTES
                }
                Ok(n) => n,
                Err(_) => {
                    self.error(
                        v.span(),
                        "`max_message_bytes` is too large for this machine",
                    );
                    DEFAULT_MAX_MESSAGE_BYTES
                }
            },
            None => DEFAULT_MAX_MESSAGE_BYTES,
        };
        let log_level = match &section.log_level {
            Some(v) => {
                let directive = v.get_ref().as_str();
                if let Err(e) = tracing_subscriber::EnvFilter::try_new(directive) {
                    self.error(
                        v.span(),
                        format!("`log_level`: {e}; write a level such as \"info\" or directives such as \"info,proto_postgres=debug\""),
                    );
                }
                directive.to_owned()
            }
            None => DEFAULT_LOG_LEVEL.to_owned(),
        };
        let workers = section
            .workers
            .as_ref()
            .map(|v| match usize::try_from(*v.get_ref()) {
                Ok(n) if n <= MAX_WORKERS => n,
                _ => {
                    self.error(
                        v.span(),
                        format!(
                            "`workers` must be at most {MAX_WORKERS} (or 0: no worker threads)"
                        ),
                    );
                    0
                }
            });
        GatewaySettings {
            node,
            data_dir,
            handshake_timeout,
            drain_timeout,
            max_message_bytes,
            log_level,
            workers,
        }
    }

    pub(super) fn check_postgres(
        &mut self,
        section: &Spanned<PostgresSection>,
    ) -> ListenerSettings {
        let s = section.get_ref();
        self.check_listener(
            ListenerKind::Postgres,
            section.span(),
            ListenerKeys {
                listen: s.listen.as_ref(),
                tls_cert: s.tls_cert.as_ref(),
                tls_key: s.tls_key.as_ref(),
                tls_client_ca: s.tls_client_ca.as_ref(),
                require_tls: s.require_tls.as_ref(),
                allow_plaintext_password: s.allow_plaintext_password,
                require_user_match: s.require_user_match,
            },
        )
    }

    pub(super) fn check_mysql(&mut self, section: &Spanned<MysqlSection>) -> ListenerSettings {
        let s = section.get_ref();
        self.check_listener(
            ListenerKind::Mysql,
            section.span(),
            ListenerKeys {
                listen: s.listen.as_ref(),
                tls_cert: s.tls_cert.as_ref(),
                tls_key: s.tls_key.as_ref(),
                tls_client_ca: s.tls_client_ca.as_ref(),
                require_tls: s.require_tls.as_ref(),
                allow_plaintext_password: s.allow_plaintext_password,
                require_user_match: s.require_user_match,
            },
        )
    }

    /// The checks every listener section shares: its address, TLS files that read and belong
    /// together, and the options that need TLS.
    fn check_listener(
        &mut self,
        kind: ListenerKind,
        span: Range<usize>,
        section: ListenerKeys<'_>,
    ) -> ListenerSettings {
        let listen = match section.listen {
            Some(v) => match v.get_ref().as_str().parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    let port = kind.default_listen().port();
                    self.error(
                        v.span(),
                        format!(
                            "`listen`: `{}` is not an IP:PORT address; write e.g. \"127.0.0.1:{port}\", \"0.0.0.0:{port}\" or \"[::1]:{port}\"",
                            v.get_ref().as_str()
                        ),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            },
            None => kind.default_listen(),
        };
        let before = self.errors.len();
        let cert = section
            .tls_cert
            .map(|v| self.certificate_file("tls_cert", v, "certificate file"));
        let key = section.tls_key.map(|v| self.private_key_file("tls_key", v));
        let client_ca = section
            .tls_client_ca
            .map(|v| self.certificate_file("tls_client_ca", v, "client CA file"));
        let files_ok = self.errors.len() == before;
        let tls = match (cert, key) {
            (Some(cert_file), Some(key_file)) => {
                let files = ListenerTlsFiles {
                    cert_file,
                    key_file,
                    client_ca_file: client_ca,
                };
                // Each file reads; together they must also make a TLS configuration (the key
                // belongs to the certificate, the CA is usable), as the listener will build it.
                if files_ok {
                    if let (Err(e), Some(v)) =
                        (crate::tls::server_config(&files, &[]), section.tls_key)
                    {
                        self.error(v.span(), format!("`tls_key`: {e}"));
                    }
                }
                Some(files)
            }
            (Some(_), None) => {
                let at = section.tls_cert.map_or(span.clone(), |v| v.span());
                self.error(at, "`tls_cert` is set but `tls_key` is not: TLS needs both the certificate chain and its private key");
                None
            }
            (None, Some(_)) => {
                let at = section.tls_key.map_or(span.clone(), |v| v.span());
                self.error(at, "`tls_key` is set but `tls_cert` is not: TLS needs both the certificate chain and its private key");
                None
            }
            (None, None) => {
                if let Some(v) = section.tls_client_ca {
                    self.error(
                        v.span(),
                        "`tls_client_ca` needs TLS: set `tls_cert` and `tls_key` too",
                    );
                }
                None
            }
        };
        let require_tls = section.require_tls.is_some_and(|v| *v.get_ref());
        if require_tls && section.tls_cert.is_none() && section.tls_key.is_none() {
            if let Some(v) = section.require_tls {
                self.error(
                    v.span(),
                    "`require_tls = true` needs `tls_cert` and `tls_key`",
                );
            }
        }
        ListenerSettings {
            listen,
            tls,
            require_tls,
            allow_plaintext_password: section.allow_plaintext_password.unwrap_or(false),
            require_user_match: section.require_user_match.unwrap_or(false),
        }
    }
}

/// Which listener section is being checked.
#[derive(Clone, Copy)]
enum ListenerKind {
    Postgres,
    Mysql,
}

impl ListenerKind {
    fn default_listen(self) -> SocketAddr {
        match self {
            ListenerKind::Postgres => DEFAULT_POSTGRES_LISTEN,
            ListenerKind::Mysql => DEFAULT_MYSQL_LISTEN,
        }
    }
}

/// The keys a listener section may hold, borrowed from `[postgres]` or `[mysql]`.
struct ListenerKeys<'a> {
    listen: Option<&'a Str>,
    tls_cert: Option<&'a Str>,
    tls_key: Option<&'a Str>,
    /// Always `None` for `[mysql]`, whose schema has no such key.
    tls_client_ca: Option<&'a Str>,
    require_tls: Option<&'a Spanned<bool>>,
    allow_plaintext_password: Option<bool>,
    require_user_match: Option<bool>,
}
