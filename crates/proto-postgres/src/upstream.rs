//! Connecting to the upstream PostgreSQL with the target's service credentials: TCP or verified
//! TLS, then trust, cleartext, MD5 or SCRAM-SHA-256 (SCRAM and MD5 from `postgres-protocol`).

use bytes::{Bytes, BytesMut};
use gateway_core::{GatewayError, Target, UpstreamTls};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::startup::{encode_ssl_request, encode_startup};
use crate::wire::{error_fields, typed, typed_header, Reader, HEADER_LEN};
use gateway_core::serve::stream::UpstreamStream;
pub use gateway_core::serve::tls::TlsConfigs;

/// Largest message accepted from the upstream during login.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// A logged-in upstream connection, before the relay starts.
pub struct Upstream {
    /// The stream, positioned after the first ReadyForQuery.
    pub stream: UpstreamStream,
    /// ParameterStatus frames the server sent, in order, as raw frames.
    pub parameter_status: Vec<(String, String)>,
    /// The upstream's BackendKeyData (pid, secret).
    pub backend_key: Option<(i32, i32)>,
    /// Bytes already read past the first ReadyForQuery (normally empty).
    pub leftover: BytesMut,
}

/// Connects and logs in. `params` are the startup parameters besides user and database.
pub async fn connect(
    target: &Target,
    params: &[(String, String)],
    tls_configs: &TlsConfigs,
) -> Result<Upstream, GatewayError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| {
            target.unreachable(format!("connect to {}:{}: {e}", target.host, target.port))
        })?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match &target.tls {
        UpstreamTls::Disable => UpstreamStream::Plain(tcp),
        UpstreamTls::VerifyFull { .. } => {
            let mut tcp = tcp;
            tcp.write_all(&encode_ssl_request())
                .await
                .map_err(|e| target.unreachable(format!("TLS request: {e}")))?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer)
                .await
                .map_err(|e| target.unreachable(format!("TLS request: {e}")))?;
            if answer[0] != b'S' {
                return Err(target
                    .unreachable("the database refused TLS, and the target requires verify-full"));
            }
            tls_configs
                .connect(target, tcp)
                .await
                .map_err(|e| target.unreachable(e))?
        }
    };

    let mut startup: Vec<(&str, &str)> =
        vec![("user", &target.user), ("database", &target.database)];
    startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    stream
        .write_all(&encode_startup(&startup))
        .await
        .map_err(|e| target.unreachable(format!("send startup: {e}")))?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramSha256> = None;
    let mut parameter_status = Vec::new();
    let mut backend_key = None;
    loop {
        let (ty, body) = read_message(&mut stream, &mut buf)
            .await
            .map_err(|e| target.unreachable(e))?;
        let mut r = Reader::new(&body);
        match ty {
            b'R' => {
                let code = r
                    .i32()
                    .ok_or_else(|| target.unreachable("malformed authentication request"))?;
                let reply = match code {
                    0 => None,
                    3 => Some(password_message(target.password.as_deref().unwrap_or("").as_bytes())),
                    5 => {
                        let salt = r
                            .bytes(4)
                            .and_then(|s| <[u8; 4]>::try_from(s).ok())
                            .ok_or_else(|| target.unreachable("malformed MD5 request"))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            target.user.as_bytes(),
                            target.password.as_deref().unwrap_or("").as_bytes(),
                            salt,
                        );
                        Some(password_message(hash.as_bytes()))
                    }
                    10 => {
                        let mut offered = Vec::new();
                        while let Some(m) = r.str().filter(|m| !m.is_empty()) {
                            offered.push(m);
                        }
                        if !offered.contains(&"SCRAM-SHA-256") {
                            return Err(target.unreachable(format!("the database offers SASL mechanisms {offered:?}; the gateway speaks SCRAM-SHA-256"),
                            ));
                        }
                        let password = target.password.as_deref().unwrap_or("");
                        let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        let mut body = Vec::new();
                        body.extend_from_slice(b"SCRAM-SHA-256\0");
                        body.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                        body.extend_from_slice(s.message());
                        scram = Some(s);
                        Some(typed(b'p', &body))
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| target.unreachable("unexpected SASL continue"))?;
                        s.update(r.rest()).map_err(|e| target.unreachable(format!("SCRAM: {e}")))?;
                        Some(typed(b'p', s.message()))
                    }
                    12 => {
                        let s = scram.as_mut().ok_or_else(|| target.unreachable("unexpected SASL final"))?;
                        s.finish(r.rest())
                            .map_err(|e| target.unreachable(format!("SCRAM server signature: {e}")))?;
                        None
                    }
                    other => {
                        return Err(target.unreachable(format!("the database asks for authentication method {other}, which the gateway does not support"),
                        ))
                    }
                };
                if let Some(reply) = reply {
                    stream
                        .write_all(&reply)
                        .await
                        .map_err(|e| target.unreachable(format!("send credentials: {e}")))?;
                }
            }
            b'S' => {
                let name = r.str().unwrap_or_default().to_owned();
                let value = r.str().unwrap_or_default().to_owned();
                parameter_status.push((name, value));
            }
            b'K' => {
                if let (Some(pid), Some(secret)) = (r.i32(), r.i32()) {
                    backend_key = Some((pid, secret));
                }
            }
            b'N' | b'v' => {}
            b'E' => {
                let fields = error_fields(&body);
                let get = |c: u8| {
                    fields
                        .iter()
                        .find(|(k, _)| *k == c)
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("")
                };
                // The upstream's own words go to the gateway's log; the client learns only that the
                // gateway could not log in, because the message names the service account.
                tracing::warn!(target = %target.name, code = get(b'C'), message = get(b'M'), "upstream refused login");
                return Err(target.unreachable(format!(
                    "the database refused the gateway's login (SQLSTATE {})",
                    get(b'C')
                )));
            }
            b'Z' => {
                return Ok(Upstream {
                    stream,
                    parameter_status,
                    backend_key,
                    leftover: buf,
                });
            }
            other => {
                return Err(target.unreachable(format!(
                    "unexpected message {:?} during login",
                    other as char
                )));
            }
        }
    }
}

fn password_message(password: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(password.len() + 1);
    body.extend_from_slice(password);
    body.push(0);
    typed(b'p', &body)
}

async fn read_message(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
) -> Result<(u8, Bytes), String> {
    loop {
        match typed_header(buf, MAX_LOGIN_MESSAGE) {
            Err(e) => return Err(format!("invalid message from the database: {e}")),
            Ok(Some((ty, len))) if buf.len() >= len => {
                let frame = buf.split_to(len).freeze();
                return Ok((ty, frame.slice(HEADER_LEN..)));
            }
            Ok(_) => {}
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the database closed the connection during login".into());
        }
    }
}
