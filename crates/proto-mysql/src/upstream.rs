//! Logging in to the upstream server with the target's service credentials: TCP or verified TLS,
//! then `mysql_native_password`, `caching_sha2_password` (fast path, full authentication over TLS
//! or with the server's RSA key) or `mysql_clear_password` over TLS, following auth switches.

use std::collections::HashMap;

use gateway_core::serve::stream::UpstreamStream;
use gateway_core::serve::tls::TlsConfigs;
use gateway_core::{GatewayError, Side, Target, UpstreamTls};
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, ErrPacket, HandshakePacket, HandshakeResponse, SslRequest,
};
use mysql_common::proto::MySerialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::packet::{ok_fields, packet, PacketReader};

/// Largest packet accepted from the upstream during login.
const MAX_LOGIN_PACKET: usize = 1 << 20;

/// `max_packet_size` the gateway announces upstream (the protocol's maximum, 1 GiB; the server's
/// own `max_allowed_packet` still applies).
const MAX_PACKET_SIZE: u32 = 1 << 30;

/// A logged-in upstream connection, before the relay starts.
pub struct Upstream {
    /// The stream, positioned after the login's OK packet.
    pub stream: UpstreamStream,
    /// Bytes already read past the OK packet (normally none).
    pub reader: PacketReader,
    /// The capabilities in force on this connection (the client's, as agreed with the server).
    pub capabilities: CapabilityFlags,
    /// The server's version string.
    pub server_version: String,
    /// The server's connection id (for KILL).
    pub connection_id: u32,
    /// Status flags of the login's OK packet.
    pub status: u16,
}

/// Connects and logs in. `capabilities` are those the client agreed with the gateway; the
/// connection uses them (so that every packet the relay forwards means the same to both ends),
/// and the login fails when the server lacks one that changes what is on the wire.
/// `attributes` are sent as connection attributes when the server takes them.
pub async fn connect(
    target: &Target,
    capabilities: CapabilityFlags,
    collation: u8,
    attributes: HashMap<String, String>,
    tls_configs: &TlsConfigs,
) -> Result<Upstream, GatewayError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| {
            target.unreachable(format!("connect to {}:{}: {e}", target.host, target.port))
        })?;
    let _ = tcp.set_nodelay(true);
    let mut stream = UpstreamStream::Plain(tcp);
    let mut reader = PacketReader::new();
    let greeting = reader
        .read(&mut stream, MAX_LOGIN_PACKET)
        .await
        .map_err(|e| target.unreachable(e.into_gateway(Side::Upstream, "read greeting").message))?;
    let payload = greeting.payload();
    if payload.first() == Some(&0xff) {
        return Err(target.unreachable(server_error(&payload)));
    }
    let handshake: HandshakePacket<'_> = ParseBuf(&payload)
        .parse(())
        .map_err(|e| target.unreachable(format!("malformed greeting: {e}")))?;
    let server_caps = handshake.capabilities();
    let server_version = handshake.server_version_str().into_owned();
    let connection_id = handshake.connection_id();
    let mut nonce = handshake.nonce();
    let mut plugin = handshake
        .auth_plugin_name_ref()
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| b"mysql_native_password".to_vec());

    // What changes the shape of packets must be the same on both sides of the gateway.
    let wire = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_DEPRECATE_EOF
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
        | CapabilityFlags::CLIENT_SESSION_TRACK;
    let missing = (capabilities & wire) - server_caps;
    if !missing.is_empty() {
        return Err(target.unreachable(format!(
            "the server lacks capabilities the client uses: {missing:?}"
        )));
    }
    let mut caps = (capabilities
        - CapabilityFlags::CLIENT_SSL
        - CapabilityFlags::CLIENT_CONNECT_ATTRS
        - CapabilityFlags::CLIENT_CONNECT_WITH_DB)
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_SECURE_CONNECTION;
    if server_caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS) {
        caps |= CapabilityFlags::CLIENT_CONNECT_ATTRS;
    }
    caps &= server_caps | CapabilityFlags::CLIENT_CONNECT_WITH_DB;

    let mut seq = greeting.last_seq.wrapping_add(1);
    let tls = matches!(target.tls, UpstreamTls::VerifyFull { .. });
    if tls {
        if !server_caps.contains(CapabilityFlags::CLIENT_SSL) {
            return Err(target.unreachable(
                "the database does not offer TLS, and the target requires verify-full",
            ));
        }
        caps |= CapabilityFlags::CLIENT_SSL;
        let mut request = Vec::new();
        SslRequest::new(caps, MAX_PACKET_SIZE, collation).serialize(&mut request);
        stream
            .write_all(&packet(seq, &request))
            .await
            .map_err(|e| target.unreachable(format!("TLS request: {e}")))?;
        seq = seq.wrapping_add(1);
        let UpstreamStream::Plain(tcp) = stream else {
            return Err(target.unreachable("TLS requested twice"));
        };
        stream = tls_configs
            .connect(target, tcp)
            .await
            .map_err(|e| target.unreachable(e))?;
    }

    let password = target.password.as_deref().unwrap_or("").as_bytes();
    let response = auth_response(&plugin, &nonce, password, tls)
        .ok_or_else(|| unsupported_plugin(target, &plugin))?;
    let (major, minor, patch) = handshake.server_version_parsed().unwrap_or((8, 0, 0));
    let mut login = Vec::new();
    HandshakeResponse::new(
        Some(response),
        (major, minor, patch),
        Some(target.user.as_bytes()),
        Some(target.database.as_bytes()),
        Some(AuthPlugin::from_bytes(&plugin)),
        caps,
        caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS)
            .then_some(attributes),
        MAX_PACKET_SIZE,
    )
    .serialize(&mut login);
    // The collation the client asked for, not the one mysql_common picks by server version.
    if let Some(c) = login.get_mut(8) {
        *c = collation;
    }
    stream
        .write_all(&packet(seq, &login))
        .await
        .map_err(|e| target.unreachable(format!("send login: {e}")))?;

    loop {
        let p = reader
            .read(&mut stream, MAX_LOGIN_PACKET)
            .await
            .map_err(|e| target.unreachable(e.into_gateway(Side::Upstream, "login").message))?;
        seq = p.last_seq.wrapping_add(1);
        let payload = p.payload();
        match payload.first() {
            Some(0x00) => {
                let status = ok_fields(&payload).map_or(0, |(_, s)| s);
                return Ok(Upstream {
                    stream,
                    reader,
                    capabilities: caps,
                    server_version,
                    connection_id,
                    status,
                });
            }
            Some(0xff) => {
                return Err(target.unreachable(server_error(&payload)));
            }
            Some(0xfe) => {
                let switch: AuthSwitchRequest<'_> = ParseBuf(&payload)
                    .parse(())
                    .map_err(|e| target.unreachable(format!("malformed auth switch: {e}")))?;
                plugin = switch.auth_plugin().as_bytes().to_vec();
                nonce = switch.plugin_data().to_vec();
                if nonce.last() == Some(&0) {
                    nonce.pop();
                }
                let response = auth_response(&plugin, &nonce, password, tls)
                    .ok_or_else(|| unsupported_plugin(target, &plugin))?;
                send(&mut stream, seq, &response, target).await?;
            }
            Some(0x01) if plugin == b"caching_sha2_password" => match payload.get(1) {
                // Fast authentication succeeded; the OK follows.
                Some(0x03) => {}
                // Full authentication: the password itself, in clear over TLS, else encrypted
                // with the server's RSA key.
                Some(0x04) if tls => {
                    let mut clear = password.to_vec();
                    clear.push(0);
                    send(&mut stream, seq, &clear, target).await?;
                }
                Some(0x04) => send(&mut stream, seq, &[0x02], target).await?,
                // The public key the gateway asked for.
                Some(_) if payload.len() > 100 => {
                    let key = &payload[1..];
                    let mut clear = password.to_vec();
                    clear.push(0);
                    for (i, b) in clear.iter_mut().enumerate() {
                        *b ^= nonce[i % nonce.len().max(1)];
                    }
                    let encrypted = mysql_common::crypto::encrypt(&clear, key);
                    send(&mut stream, seq, &encrypted, target).await?;
                }
                _ => return Err(target.unreachable("unexpected caching_sha2_password data")),
            },
            _ => {
                return Err(target.unreachable("unexpected packet during login"));
            }
        }
    }
}

/// Makes the upstream session refuse writes: a second fence behind the policy for read-only
/// identities, as PostgreSQL's `default_transaction_read_only`. Sent before the client's first
/// command.
pub async fn fence_read_only(up: &mut Upstream, target: &Target) -> Result<(), GatewayError> {
    up.stream
        .write_all(&packet(0, b"\x03SET SESSION TRANSACTION READ ONLY"))
        .await
        .map_err(|e| target.unreachable(format!("read-only session: {e}")))?;
    let answer = up
        .reader
        .read(&mut up.stream, MAX_LOGIN_PACKET)
        .await
        .map_err(|e| {
            target.unreachable(e.into_gateway(Side::Upstream, "read-only session").message)
        })?;
    let payload = answer.payload();
    match payload.first() {
        Some(0x00) => {
            up.status = ok_fields(&payload).map_or(up.status, |(_, s)| s);
            Ok(())
        }
        _ => Err(target.unreachable(format!(
            "could not make the session read-only: {}",
            server_error(&payload)
        ))),
    }
}

async fn send(
    stream: &mut UpstreamStream,
    seq: u8,
    payload: &[u8],
    target: &Target,
) -> Result<(), GatewayError> {
    stream
        .write_all(&packet(seq, payload))
        .await
        .map_err(|e| target.unreachable(format!("login: {e}")))
}

fn unsupported_plugin(target: &Target, plugin: &[u8]) -> GatewayError {
    target.unreachable(format!(
            "the server asks for authentication plugin {}, which the gateway does not speak (it speaks mysql_native_password, caching_sha2_password, and mysql_clear_password over TLS)",
            String::from_utf8_lossy(plugin)
        ),
    )
}

/// The first answer for `plugin` to a server's `nonce`.
fn auth_response(plugin: &[u8], nonce: &[u8], password: &[u8], tls: bool) -> Option<Vec<u8>> {
    if password.is_empty() && plugin != b"mysql_clear_password" {
        return Some(Vec::new());
    }
    match plugin {
        b"mysql_native_password" => {
            mysql_common::scramble::scramble_native(nonce, password).map(|s| s.to_vec())
        }
        b"caching_sha2_password" => {
            mysql_common::scramble::scramble_sha256(nonce, password).map(|s| s.to_vec())
        }
        b"mysql_clear_password" if tls => {
            let mut clear = password.to_vec();
            clear.push(0);
            Some(clear)
        }
        _ => None,
    }
}

/// The message of a server's ERR packet, for logs and the client's error detail.
pub(crate) fn server_error(payload: &[u8]) -> String {
    match ParseBuf(payload).parse::<ErrPacket<'_>>(CapabilityFlags::CLIENT_PROTOCOL_41) {
        Ok(ErrPacket::Error(e)) => format!("server error {}: {}", e.error_code(), e.message_str()),
        _ => "the server refused the login".into(),
    }
}
