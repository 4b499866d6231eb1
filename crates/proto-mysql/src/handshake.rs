//! The client's login: the gateway's greeting (fresh salt), TLS, the handshake response, the
//! switch to `mysql_clear_password`, the core's session, the upstream login, and the final OK.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use gateway_core::serve::stream::ClientStream;
use gateway_core::serve::tls::TlsConfigs;
use gateway_core::serve::{self, Accepted, Handler, ListenerConfig};
use gateway_core::{
    Access, ClientInfo, Credentials, ErrorKind, Gateway, GatewayError, Protocol, Session,
    SessionRequest, Side, TextEncoding,
};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::packet::{self, PacketReader};
use crate::upstream::{self, Upstream};

/// Largest packet accepted from a client before it is logged in (a JWT fits many times over).
const MAX_LOGIN_PACKET: usize = 64 * 1024;

/// The version the greeting announces until an upstream server has told its own. Clients choose
/// SQL by it (MariaDB's "5.5.5-" prefix, MySQL 8's variables), so it follows the servers behind the
/// gateway: each upstream login records the server's version for the next greeting.
const DEFAULT_SERVER_VERSION: &str = "8.0.36";

/// Suffix of the announced version, so that a client's logs show the gateway.
const VERSION_SUFFIX: &str = "-portcullis";

/// `utf8mb4_general_ci`, announced in the greeting.
const DEFAULT_COLLATION: u8 = 45;

/// Capabilities the gateway offers clients. Left out on purpose: CLIENT_LOCAL_FILES (LOAD DATA
/// LOCAL, which would let the server ask the client for files), CLIENT_COMPRESS,
/// CLIENT_IGNORE_SPACE (changes how the server reads function names), CLIENT_QUERY_ATTRIBUTES and
/// CLIENT_OPTIONAL_RESULTSET_METADATA (change packets the relay reads), CLIENT_SESSION_TRACK
/// (not read yet), MariaDB's extended capabilities.
fn offered() -> CapabilityFlags {
    CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_FOUND_ROWS
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_ODBC
        | CapabilityFlags::CLIENT_INTERACTIVE
        | CapabilityFlags::CLIENT_IGNORE_SIGPIPE
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_CONNECT_ATTRS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
        | CapabilityFlags::CLIENT_DEPRECATE_EOF
}

/// What the listener's sessions share.
pub(crate) struct Shared {
    pub config: ListenerConfig,
    pub gateway: Gateway,
    pub upstream_tls: TlsConfigs,
    /// The gateway's connection ids, shown to clients in the greeting.
    next_connection_id: AtomicU32,
    /// The version the next greeting announces (see [`DEFAULT_SERVER_VERSION`]).
    server_version: RwLock<String>,
    /// Sessions by gateway connection id, for KILL.
    pub kills: Arc<crate::kill::Registry>,
    /// The targets' catalogs, which masked sessions resolve result columns through.
    pub catalogs: crate::catalog::Catalogs,
}

/// The MySQL protocol as the shared listener drives it.
pub(crate) struct MysqlHandler(pub Arc<Shared>);

impl MysqlHandler {
    pub fn new(config: ListenerConfig, gateway: Gateway) -> Self {
        Self(Arc::new(Shared {
            config,
            gateway,
            upstream_tls: TlsConfigs::default(),
            next_connection_id: AtomicU32::new(1),
            server_version: RwLock::new(DEFAULT_SERVER_VERSION.to_owned()),
            kills: Arc::default(),
            catalogs: crate::catalog::Catalogs::new(),
        }))
    }
}

impl MysqlHandler {
    /// Reads the version of the first MySQL target's server from its greeting (no login: the
    /// server greets every connection), so that the first clients are greeted with it too rather
    /// than with [`DEFAULT_SERVER_VERSION`]. Bounded by `within`; a server that does not answer
    /// leaves the default until the first upstream login.
    pub async fn learn_server_version(&self, within: std::time::Duration) {
        let Some(target) = self
            .0
            .gateway
            .targets()
            .iter()
            .find(|t| t.protocol == Protocol::Mysql)
            .cloned()
        else {
            return;
        };
        let greeting = async {
            let mut tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .ok()?;
            let p = PacketReader::new()
                .read(&mut tcp, MAX_LOGIN_PACKET)
                .await
                .ok()?;
            let payload = p.payload();
            let hello: HandshakePacket<'_> = ParseBuf(&payload).parse(()).ok()?;
            Some(hello.server_version_str().into_owned())
        };
        if let Ok(Some(version)) = tokio::time::timeout(within, greeting).await {
            if let Ok(mut v) = self.0.server_version.write() {
                *v = version;
            }
        }
    }
}

/// A logged-in client and its upstream, handed to the relay.
pub(crate) struct Established {
    pub client: ClientStream,
    pub client_reader: PacketReader,
    pub session: Arc<Session>,
    pub upstream: Upstream,
    /// The database the session started in (upstream name).
    pub database: String,
    /// The session's entry in the KILL registry, removed when the session ends.
    pub registration: crate::kill::Registration,
    /// How the client's statements are read: its character set at login.
    pub encoding: TextEncoding,
}

impl Handler for MysqlHandler {
    type Session = Established;

    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }

    fn config(&self) -> &ListenerConfig {
        &self.0.config
    }

    async fn handshake(self: Arc<Self>, conn: Accepted) -> serve::Handshake<Established> {
        let mut state = Login {
            client: Some(ClientStream::Plain(conn.tcp)),
            reader: PacketReader::new(),
            seq: 0,
        };
        match login(&self.0, &mut state, conn.peer).await {
            Ok(done) => serve::Handshake::Established(done),
            Err(None) => serve::Handshake::Closed,
            Err(Some(error)) => serve::Handshake::Refused {
                client: state.client,
                reply: packet::err(state.seq, &error),
                error,
            },
        }
    }

    async fn serve(self: Arc<Self>, established: Established, stop: watch::Receiver<bool>) {
        let session = Arc::clone(&established.session);
        let span = tracing::Span::current();
        span.record("id", &*session.context().id);
        span.record("subject", session.identity().subject.as_str());
        span.record("target", session.target().name.as_str());
        tracing::debug!("session opened");
        let result = crate::relay::relay(&self.0, established, stop).await;
        let error = result.err().map(|e| gateway_core::RecordedError::from(&e));
        match Arc::try_unwrap(session) {
            Ok(s) => s.close(error).await,
            Err(_) => tracing::error!("session still referenced at close; close not recorded"),
        }
    }
}

/// The login in progress: the client stream (taken while TLS is set up), what was read, and the
/// sequence id the gateway's next packet carries.
struct Login {
    client: Option<ClientStream>,
    reader: PacketReader,
    seq: u8,
}

impl Login {
    fn stream(&mut self) -> Result<&mut ClientStream, Option<GatewayError>> {
        self.client.as_mut().ok_or(None)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Option<GatewayError>> {
        let stream = self.stream()?;
        stream.write_all(bytes).await.map_err(|_| None)?;
        Ok(())
    }

    async fn read(&mut self) -> Result<packet::Packet, Option<GatewayError>> {
        let Some(stream) = self.client.as_mut() else {
            return Err(None);
        };
        match self.reader.read(stream, MAX_LOGIN_PACKET).await {
            Ok(p) => {
                self.seq = p.last_seq.wrapping_add(1);
                Ok(p)
            }
            // A client that connects and goes away (health checks, port scanners) is no error.
            Err(packet::ReadError::Closed) => Err(None),
            Err(packet::ReadError::TooLarge { max }) => Err(Some(GatewayError::auth(format!(
                "login packet longer than {max} bytes refused"
            )))),
            Err(e) => Err(Some(e.into_gateway(Side::Client, "read login"))),
        }
    }
}

impl Login {
    /// Reads the client's first packet with exact reads, taking nothing past it: when it is an
    /// SSL request, the client's TLS ClientHello follows at once (the protocol has no answer in
    /// between), and it must stay in the socket for the TLS acceptor.
    async fn read_first(&mut self) -> Result<packet::Packet, Option<GatewayError>> {
        let Some(stream) = self.client.as_mut() else {
            return Err(None);
        };
        let mut raw = vec![0u8; packet::HEADER_LEN];
        match stream.read_exact(&mut raw).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(None),
            Err(e) => {
                return Err(Some(GatewayError::protocol(
                    Side::Client,
                    format!("read login: {e}"),
                )))
            }
        }
        let (len, _) = packet::header(&raw).unwrap_or((0, 0));
        if len > MAX_LOGIN_PACKET {
            return Err(Some(GatewayError::auth(format!(
                "login packet longer than {MAX_LOGIN_PACKET} bytes refused"
            ))));
        }
        raw.resize(packet::HEADER_LEN + len, 0);
        stream
            .read_exact(&mut raw[packet::HEADER_LEN..])
            .await
            .map_err(|e| {
                Some(GatewayError::protocol(
                    Side::Client,
                    format!("read login: {e}"),
                ))
            })?;
        self.reader.buffered().extend_from_slice(&raw);
        // The whole packet is buffered: this reads nothing more from the socket.
        self.read().await
    }
}

/// A salt of printable characters, as the servers send (some clients treat it as a C string).
fn salt() -> [u8; 20] {
    let mut rng = rand::rng();
    std::array::from_fn(|_| rng.random_range(b'!'..=b'~'))
}

async fn login(
    shared: &Shared,
    state: &mut Login,
    peer: SocketAddr,
) -> Result<Established, Option<GatewayError>> {
    let config = &shared.config;
    let connection_id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let salt = salt();
    let mut caps = offered();
    if config.tls.is_some() {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    let version = shared
        .server_version
        .read()
        .map(|v| format!("{v}{VERSION_SUFFIX}"))
        .unwrap_or_else(|_| format!("{DEFAULT_SERVER_VERSION}{VERSION_SUFFIX}"));
    let mut scramble_2 = salt[8..].to_vec();
    scramble_2.push(0);
    let mut greeting = Vec::new();
    HandshakePacket::new(
        10,
        version.as_bytes(),
        connection_id,
        <[u8; 8]>::try_from(&salt[..8]).unwrap_or_default(),
        Some(scramble_2),
        caps,
        DEFAULT_COLLATION,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(&b"mysql_native_password"[..]),
    )
    .serialize(&mut greeting);
    state.send(&packet::packet(0, &greeting)).await?;

    let mut response = state.read_first().await?;
    let mut tls = false;
    // An SSL request is the first 32 bytes of a handshake response, with CLIENT_SSL.
    if response.len() == 32 {
        let payload = response.payload();
        let client_caps = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
        if client_caps & CapabilityFlags::CLIENT_SSL.bits() != 0 {
            let Some(ClientStream::Plain(tcp)) = state.client.take() else {
                return Err(Some(GatewayError::protocol(
                    Side::Client,
                    "TLS requested twice",
                )));
            };
            if !state.reader.buffered().is_empty() {
                return Err(Some(GatewayError::protocol(
                    Side::Client,
                    "data sent ahead of the TLS handshake",
                )));
            }
            match config.accept_tls(tcp).await {
                Some(Ok(stream)) => state.client = Some(stream),
                Some(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    return Err(None);
                }
                None => {
                    return Err(Some(GatewayError::protocol(
                        Side::Client,
                        "TLS requested, but this listener does not offer it",
                    )))
                }
            }
            tls = true;
            response = state.read().await?;
        }
    }
    config
        .check_tls_required(tls)
        .map_err(|e| Some(e.with_hint("connect with --ssl (or ssl-mode=REQUIRED)")))?;

    let payload = response.payload();
    let hello: HandshakeResponse<'_> = ParseBuf(&payload).parse(()).map_err(|e| {
        Some(GatewayError::protocol(
            Side::Client,
            format!("malformed handshake response: {e}"),
        ))
    })?;
    let client_caps = hello.capabilities() & caps;
    let needed = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_SECURE_CONNECTION;
    if !client_caps.contains(needed) {
        return Err(Some(GatewayError::new(
            ErrorKind::Unsupported,
            Side::Client,
            "this client is too old for the gateway: it needs protocol 4.1 with pluggable authentication",
        )));
    }
    // Compression is not offered. A client that asks for it all the same (mysql-connector-python's
    // pure implementation does, without reading the greeting's capabilities) compresses every
    // packet after the login, which the gateway would misread: refuse it now, saying why.
    if hello
        .capabilities()
        .contains(CapabilityFlags::CLIENT_COMPRESS)
        && !caps.contains(CapabilityFlags::CLIENT_COMPRESS)
    {
        return Err(Some(
            GatewayError::new(
                ErrorKind::Unsupported,
                Side::Client,
                "this client asked for compression, which the gateway does not offer",
            )
            .with_hint("connect without compression"),
        ));
    }
    let user = String::from_utf8_lossy(hello.user()).into_owned();
    if user.is_empty() {
        return Err(Some(GatewayError::auth("no user name in the login")));
    }
    let database = match hello
        .db_name()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .filter(|d| !d.is_empty())
    {
        Some(d) => d,
        // Without a database, the only MySQL target there is (the mariadb client's Ctrl-C opens
        // such a connection to send its KILL QUERY); with several, the name must choose.
        None => only_target(&shared.gateway).ok_or_else(|| {
            Some(
                GatewayError::new(
                    ErrorKind::UnknownTarget,
                    Side::Client,
                    "no database named in the login: the database name chooses the target",
                )
                .with_hint("connect with a database, for example mariadb -D <target>"),
            )
        })?,
    };
    let collation = hello.collation();
    let charset = collation_charset(collation);
    if unsafe_charset(&charset) {
        return Err(Some(unsafe_charset_error(&charset)));
    }
    let attributes = hello.connect_attributes().unwrap_or_default();
    let application = attributes
        .get("program_name")
        .cloned()
        .filter(|a| !a.is_empty());
    let client_plugin = hello
        .auth_plugin()
        .map(|p| p.as_bytes().to_vec())
        .unwrap_or_default();
    let clear_response = (client_plugin == b"mysql_clear_password")
        .then(|| strip_nul(hello.scramble_buf()).to_vec());
    drop(payload);

    // A client certificate the listener verified (`tls_client_ca`) is the credential: no
    // password is asked for.
    let credentials = match peer_certificate(state.client.as_ref()) {
        Some(certificate_der) => Credentials::ClientCertificate {
            user: user.clone(),
            certificate_der,
        },
        None => Credentials::Password {
            user: user.clone(),
            password: read_password(state, config, peer, tls, clear_response).await?,
        },
    };

    let request = SessionRequest {
        credentials,
        client: ClientInfo {
            addr: peer,
            protocol: "mysql",
            tls,
            application: application.clone(),
        },
        protocol: Protocol::Mysql,
        database,
        require_user_match: config.require_user_match,
    };
    let session = Arc::new(shared.gateway.open_session(request).await.map_err(Some)?);
    let target = Arc::clone(session.target());

    let mut upstream_attributes = HashMap::new();
    upstream_attributes.insert("_client_name".to_owned(), "portcullis".to_owned());
    upstream_attributes.insert(
        "program_name".to_owned(),
        match &application {
            Some(a) => format!("{a} (portcullis:{})", session.identity().subject),
            None => format!("portcullis:{}", session.identity().subject),
        },
    );
    upstream_attributes.insert(
        "portcullis_subject".to_owned(),
        session.identity().subject.clone(),
    );
    upstream_attributes.insert(
        "portcullis_session".to_owned(),
        session.context().id.to_string(),
    );
    let connected = match upstream::connect(
        &target,
        client_caps,
        collation,
        upstream_attributes,
        &shared.upstream_tls,
    )
    .await
    {
        Ok(mut u) if session.access() == Access::ReadOnly => {
            upstream::fence_read_only(&mut u, &target).await.map(|()| u)
        }
        other => other,
    };
    let upstream = match connected {
        Ok(u) => u,
        Err(e) => {
            let recorded = gateway_core::RecordedError::from(&e);
            if let Ok(s) = Arc::try_unwrap(session) {
                s.close(Some(recorded)).await;
            }
            return Err(Some(e));
        }
    };
    if let Ok(mut v) = shared.server_version.write() {
        if *v != upstream.server_version {
            v.clone_from(&upstream.server_version);
        }
    }
    let registration = shared.kills.register(
        connection_id,
        &session.identity().subject,
        (target.host.clone(), target.port),
        upstream.connection_id,
        session.holds().clone(),
    );
    let seq = state.seq;
    let status = upstream.status;
    state.send(&packet::ok(seq, status)).await?;
    let Some(client) = state.client.take() else {
        return Err(None);
    };
    Ok(Established {
        client,
        client_reader: std::mem::take(&mut state.reader),
        session,
        upstream,
        database: target.database.clone(),
        registration,
        encoding: encoding(&charset),
    })
}

/// Character sets in which the trailing byte of a multibyte character can be a backslash (and in
/// gb18030 also a quote's neighbour): a statement in one of them reads differently to the gateway
/// (which reads SQL as UTF-8) and to the server, which lets a quote escape the policy's view.
const UNSAFE_CHARSETS: &[&str] = &["big5", "cp932", "gbk", "sjis", "gb18030"];

/// Whether `charset` is one of [`UNSAFE_CHARSETS`].
pub(crate) fn unsafe_charset(charset: &str) -> bool {
    UNSAFE_CHARSETS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(charset.trim()))
}

/// The error that ends a session (or refuses a login) in an unsafe character set.
pub(crate) fn unsafe_charset_error(charset: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::Unsupported,
        Side::Client,
        format!("character set {charset} is not accepted through the gateway"),
    )
    .with_detail("in this character set a multibyte character can hide a backslash from the gateway's SQL reader")
    .with_hint("use utf8mb4 (the default of current clients)")
}

/// The leaf certificate a TLS client presented (verified by the listener's client CA).
fn peer_certificate(client: Option<&ClientStream>) -> Option<Vec<u8>> {
    match client? {
        ClientStream::Tls(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec()),
        ClientStream::Plain(_) => None,
    }
}

/// The password or token in clear: over TLS, or from this host. Taken from the handshake
/// response when the client already used `mysql_clear_password`, else asked for with an auth
/// switch.
async fn read_password(
    state: &mut Login,
    config: &ListenerConfig,
    peer: SocketAddr,
    tls: bool,
    clear_response: Option<Vec<u8>>,
) -> Result<String, Option<GatewayError>> {
    config
        .check_password_transport(peer, tls)
        .map_err(|e| Some(e.with_hint("connect with --ssl (or ssl-mode=REQUIRED)")))?;
    let password = match clear_response {
        Some(p) => p,
        None => {
            let mut switch = Vec::new();
            AuthSwitchRequest::new(&b"mysql_clear_password"[..], &b""[..]).serialize(&mut switch);
            let seq = state.seq;
            state.send(&packet::packet(seq, &switch)).await?;
            let answer = state.read().await.map_err(|e| {
                e.or_else(|| {
                    Some(GatewayError::auth(
                        "the client closed the connection instead of sending its password (a mysql client needs --enable-cleartext-plugin)",
                    ))
                })
            })?;
            strip_nul(&answer.payload()).to_vec()
        }
    };
    String::from_utf8(password).map_err(|_| Some(GatewayError::auth("password is not valid UTF-8")))
}

/// The name of the gateway's only MySQL target, if it has exactly one.
fn only_target(gateway: &Gateway) -> Option<String> {
    let mut mysql = gateway
        .targets()
        .iter()
        .filter(|t| t.protocol == Protocol::Mysql);
    match (mysql.next(), mysql.next()) {
        (Some(only), None) => Some(only.name.clone()),
        _ => None,
    }
}

/// How statements in MySQL character set `charset` are read.
pub(crate) fn encoding(charset: &str) -> TextEncoding {
    match charset.trim().to_ascii_lowercase().as_str() {
        "utf8mb4" | "utf8mb3" | "utf8" | "binary" => TextEncoding::Utf8,
        "latin1" => TextEncoding::Latin1,
        _ => TextEncoding::AsciiOnly,
    }
}

/// The character set of a collation id from a handshake.
pub(crate) fn collation_charset(id: u8) -> String {
    use mysql_common::collations::{Collation, CollationId};
    Collation::resolve(CollationId::from(u16::from(id)))
        .charset()
        .to_owned()
}

fn strip_nul(b: &[u8]) -> &[u8] {
    b.strip_suffix(&[0]).unwrap_or(b)
}
