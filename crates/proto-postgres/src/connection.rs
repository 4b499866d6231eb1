//! One client connection: the handshake (TLS, startup, password or certificate), the session, the
//! upstream login, and then the relay.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use gateway_core::{
    Access, ClientInfo, Credentials, ErrorKind, Gateway, GatewayError, Protocol, SessionRequest,
    Side,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cancel::{CancelRegistry, CancelTarget};
use crate::relay::relay;
use crate::startup::{self, StartupPacket};
use crate::wire::{encode, error_response, ready_for_query, typed_header, HEADER_LEN};
use gateway_core::serve::stream::ClientStream;
use gateway_core::serve::{self, Accepted, Handler, ListenerConfig};

/// Largest password message accepted. PostgreSQL silently drops longer ones; the gateway answers
/// them with a clean authentication error instead.
const MAX_PASSWORD_MESSAGE: usize = 64 * 1024;

/// Startup parameters a client may pass through to the upstream (lower-case). Everything else is
/// dropped: `options` and `replication` could change what the session may do behind the policy.
const FORWARDED_PARAMS: &[&str] = &[
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "bytea_output",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// Client encodings in which the trailing byte of a multibyte character can be an ASCII quote or
/// backslash (PostgreSQL accepts them for clients only). A statement in one of them reads
/// differently to the gateway (which reads SQL as UTF-8-compatible text) and to the server: a
/// quote hidden in a character would let a statement smuggle another past the policy. Names are
/// PostgreSQL's and its aliases, compared without case, `_` or `-`.
const UNSAFE_CLIENT_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "cp932",
    "big5",
    "win950",
    "windows950",
    "cp950",
    "gbk",
    "win936",
    "windows936",
    "cp936",
    "gb18030",
    "uhc",
    "win949",
    "windows949",
    "cp949",
    "johab",
];

/// Whether `name` is one of [`UNSAFE_CLIENT_ENCODINGS`].
pub(crate) fn unsafe_client_encoding(name: &str) -> bool {
    let normalised: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    UNSAFE_CLIENT_ENCODINGS.contains(&normalised.as_str())
}

/// The error for a session that asks for an unsafe client encoding.
pub(crate) fn unsafe_encoding_error(name: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::Unsupported,
        Side::Client,
        format!("client_encoding {name} is not accepted through the gateway"),
    )
    .with_detail("in this encoding a multibyte character can hide a quote or backslash from the gateway's SQL reader")
    .with_hint("use client_encoding UTF8 (for example PGCLIENTENCODING=UTF8)")
}

pub(crate) struct Shared {
    pub config: ListenerConfig,
    pub gateway: Gateway,
    pub cancels: CancelRegistry,
    pub upstream_tls: Arc<crate::upstream::TlsConfigs>,
    /// One catalog per target, for sessions whose results may be masked.
    pub catalogs: crate::catalog::Catalogs,
}

/// The PostgreSQL protocol as the shared listener drives it.
pub(crate) struct PostgresHandler(pub Arc<Shared>);

impl Handler for PostgresHandler {
    type Session = Established;

    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn config(&self) -> &ListenerConfig {
        &self.0.config
    }

    async fn handshake(self: Arc<Self>, conn: Accepted) -> serve::Handshake<Established> {
        match handshake(&self.0, conn.tcp, conn.peer).await {
            Ok(Some(done)) => serve::Handshake::Established(done),
            Ok(None) => serve::Handshake::Closed,
            Err((client, error)) => serve::Handshake::Refused {
                client,
                reply: error_response(&error, true).to_vec(),
                error,
            },
        }
    }

    async fn serve(
        self: Arc<Self>,
        (client, (session, upstream, registration)): Established,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let span = tracing::Span::current();
        span.record("id", &*session.context().id);
        span.record("subject", session.identity().subject.as_str());
        span.record("target", session.target().name.as_str());
        tracing::debug!("session opened");
        let result = relay(&self.0, client, session.clone(), upstream, stop).await;
        drop(registration);
        let error = result.err().map(|e| gateway_core::RecordedError::from(&e));
        match Arc::try_unwrap(session) {
            Ok(s) => s.close(error).await,
            Err(_) => tracing::error!("session still referenced at close; close not recorded"),
        }
    }
}

pub(crate) type Established = (
    ClientStream,
    (
        Arc<gateway_core::Session>,
        crate::upstream::Upstream,
        crate::cancel::Registration,
    ),
);
type HandshakeError = (Option<ClientStream>, GatewayError);

async fn read_startup<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<Option<StartupPacket>, GatewayError> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        // A client that connects and closes (health checks, port scanners) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => {
            return Err(GatewayError::protocol(
                Side::Client,
                format!("read startup packet: {e}"),
            ))
        }
    }
    let n = startup::packet_len(&len)
        .map_err(|e| GatewayError::protocol(Side::Client, e.to_string()))?
        .unwrap_or(0);
    let mut packet = vec![0u8; n];
    packet[..4].copy_from_slice(&len);
    s.read_exact(&mut packet[4..])
        .await
        .map_err(|e| GatewayError::protocol(Side::Client, format!("read startup packet: {e}")))?;
    startup::parse(&packet)
        .map(Some)
        .map_err(|e| GatewayError::protocol(Side::Client, e.to_string()))
}

async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Option<Established>, HandshakeError> {
    let config = &shared.config;
    let mut client = ClientStream::Plain(tcp);
    let mut tls_done = false;
    let mut gss_refused = false;
    let (minor, params) = loop {
        let packet = match read_startup(&mut client).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e) => return Err((Some(client), e)),
        };
        match packet {
            StartupPacket::SslRequest if !tls_done => {
                if config.tls.is_none() {
                    if let Err(e) = client.write_all(b"N").await {
                        return Err((None, GatewayError::protocol(Side::Client, e.to_string())));
                    }
                    continue;
                }
                let ClientStream::Plain(mut tcp) = client else {
                    return Err((
                        None,
                        GatewayError::protocol(Side::Client, "TLS requested twice"),
                    ));
                };
                if let Err(e) = tcp.write_all(b"S").await {
                    return Err((None, GatewayError::protocol(Side::Client, e.to_string())));
                }
                match config.accept_tls(tcp).await {
                    Some(Ok(s)) => client = s,
                    Some(Err(e)) => return Err((None, e)),
                    // Checked above; answered like a failed handshake should it ever happen.
                    None => {
                        return Err((
                            None,
                            GatewayError::protocol(Side::Gateway, "TLS is not configured"),
                        ))
                    }
                }
                tls_done = true;
            }
            StartupPacket::GssEncRequest if !gss_refused && !tls_done => {
                gss_refused = true;
                if let Err(e) = client.write_all(b"N").await {
                    return Err((None, GatewayError::protocol(Side::Client, e.to_string())));
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                shared.cancels.cancel(pid, secret).await;
                return Ok(None);
            }
            StartupPacket::Startup { minor, params, .. } => break (minor, params),
            other => {
                return Err((
                    Some(client),
                    GatewayError::protocol(
                        Side::Client,
                        format!("unexpected {other:?} during startup"),
                    ),
                ))
            }
        }
    };

    let tls = matches!(client, ClientStream::Tls(_));
    if let Err(e) = config.check_tls_required(tls) {
        let e = e.with_hint("connect with sslmode=require (or stronger)");
        return Err((Some(client), e));
    }
    // Protocol 3.x newer than 3.0 and `_pq_.` options: answer as PostgreSQL does, then go on in 3.0.
    let pq_options: Vec<String> = params
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if minor > 0 || !pq_options.is_empty() {
        let m = NegotiateProtocolVersion::new(0, pq_options);
        if let Err(e) = client.write_all(&encode(&m)).await {
            return Err((None, GatewayError::protocol(Side::Client, e.to_string())));
        }
    }
    let Some(user) = params.get("user").filter(|u| !u.is_empty()).cloned() else {
        let e = GatewayError::new(
            ErrorKind::Authentication,
            Side::Client,
            "no user name in the startup message",
        );
        return Err((Some(client), e));
    };
    if let Some((_, enc)) = params
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("client_encoding") && unsafe_client_encoding(v))
    {
        let e = unsafe_encoding_error(enc);
        return Err((Some(client), e));
    }
    let database = params
        .get("database")
        .filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| user.clone());
    let application = params
        .get("application_name")
        .cloned()
        .filter(|a| !a.is_empty());

    let credentials = match peer_certificate(&client) {
        Some(der) => Credentials::ClientCertificate {
            user: user.clone(),
            certificate_der: der,
        },
        None => {
            if let Err(e) = config.check_password_transport(peer, tls) {
                return Err((Some(client), e.with_hint("connect with sslmode=require")));
            }
            match read_password(&mut client).await {
                Ok(password) => Credentials::Password {
                    user: user.clone(),
                    password,
                },
                Err(e) => return Err((Some(client), e)),
            }
        }
    };

    let request = SessionRequest {
        credentials,
        client: ClientInfo {
            addr: peer,
            protocol: "postgres",
            tls,
            application: application.clone(),
        },
        protocol: Protocol::Postgres,
        database,
        require_user_match: config.require_user_match,
    };
    let session = match shared.gateway.open_session(request).await {
        Ok(s) => Arc::new(s),
        Err(e) => return Err((Some(client), e)),
    };
    // Every session gets its target's catalog, masked or not: a schema change any session makes
    // through the gateway drops what the catalog cached (the relay tells it on a DDL command
    // tag), so masked sessions do not resolve columns by a stale name. Unmasked sessions never
    // look anything up in it.
    session.set_catalog(shared.catalogs.get(session.target()));

    let upstream_params = upstream_params(&params, &session, application.as_deref());
    let upstream =
        match crate::upstream::connect(session.target(), &upstream_params, &shared.upstream_tls)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                // The session was opened; record why it ended.
                let recorded = gateway_core::RecordedError::from(&e);
                if let Ok(s) = Arc::try_unwrap(session) {
                    s.close(Some(recorded)).await;
                }
                return Err((Some(client), e));
            }
        };
    let target = session.target();
    let (up_pid, up_secret) = upstream.backend_key.unwrap_or((0, 0));
    let registration = shared.cancels.register(CancelTarget {
        host: target.host.clone(),
        port: target.port,
        pid: up_pid,
        secret: up_secret,
        holds: session.holds().clone(),
    });

    // Login complete on both sides: tell the client, relaying the server's parameters.
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(&encode(&Authentication::Ok));
    for (name, value) in &upstream.parameter_status {
        // The upstream reports the service account here; the client sees the name it logged in with.
        let value = if name == "session_authorization" {
            user.as_str()
        } else {
            value.as_str()
        };
        out.extend_from_slice(&encode(&ParameterStatus::new(
            name.clone(),
            value.to_owned(),
        )));
    }
    let (pid, secret) = registration.keys();
    out.extend_from_slice(&encode(&BackendKeyData::new(pid, SecretKey::I32(secret))));
    out.extend_from_slice(&ready_for_query(b'I'));
    if let Err(e) = client.write_all(&out).await {
        return Err((None, GatewayError::protocol(Side::Client, e.to_string())));
    }
    Ok(Some((client, (session, upstream, registration))))
}

fn peer_certificate(client: &ClientStream) -> Option<Vec<u8>> {
    match client {
        ClientStream::Tls(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec()),
        ClientStream::Plain(_) => None,
    }
}

async fn read_password(client: &mut ClientStream) -> Result<String, GatewayError> {
    client
        .write_all(&encode(&Authentication::CleartextPassword))
        .await
        .map_err(|e| GatewayError::protocol(Side::Client, e.to_string()))?;
    let mut header = [0u8; HEADER_LEN];
    client.read_exact(&mut header).await.map_err(|_| {
        GatewayError::new(
            ErrorKind::Authentication,
            Side::Client,
            "the client closed the connection before sending a password",
        )
    })?;
    let (ty, len) = match typed_header(&header, MAX_PASSWORD_MESSAGE) {
        Ok(Some(h)) => h,
        Ok(None) => {
            return Err(GatewayError::protocol(
                Side::Client,
                "truncated password message",
            ))
        }
        Err(crate::wire::FrameError::TooLarge { .. }) => {
            return Err(GatewayError::auth(format!(
                "password message longer than {MAX_PASSWORD_MESSAGE} bytes refused"
            )))
        }
        Err(e) => return Err(GatewayError::protocol(Side::Client, e.to_string())),
    };
    if ty != b'p' {
        return Err(GatewayError::protocol(
            Side::Client,
            format!(
                "expected a password message, got message type {:?}",
                ty as char
            ),
        ));
    }
    let mut body = vec![0u8; len - HEADER_LEN];
    client
        .read_exact(&mut body)
        .await
        .map_err(|e| GatewayError::protocol(Side::Client, format!("read password: {e}")))?;
    if body.last() != Some(&0) {
        return Err(GatewayError::protocol(
            Side::Client,
            "password message is not NUL-terminated",
        ));
    }
    body.pop();
    String::from_utf8(body).map_err(|_| GatewayError::auth("password is not valid UTF-8"))
}

fn upstream_params(
    client_params: &BTreeMap<String, String>,
    session: &gateway_core::Session,
    application: Option<&str>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = client_params
        .iter()
        .filter(|(k, _)| FORWARDED_PARAMS.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // application_name carries the identity, so pg_stat_activity and the server log show who.
    let subject = &session.identity().subject;
    let app = match application {
        Some(a) => format!("{a} (portcullis:{subject})"),
        None => format!("portcullis:{subject}"),
    };
    out.push(("application_name".into(), app));
    if session.access() == Access::ReadOnly {
        // A second fence behind the policy engine: the upstream itself refuses writes.
        out.push(("default_transaction_read_only".into(), "on".into()));
    }
    out
}
