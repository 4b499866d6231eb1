//! The untyped packets a client may send before it is logged in: SSLRequest, GSSENCRequest,
//! CancelRequest and StartupMessage.

use std::collections::BTreeMap;

use crate::wire::Reader;

/// Largest startup packet accepted, as PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// One parsed startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption (always refused).
    GssEncRequest,
    /// The client asks to cancel the query running on another connection.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
    /// A StartupMessage.
    Startup {
        /// Major protocol version (3).
        major: u16,
        /// Minor protocol version requested.
        minor: u16,
        /// Parameters (user, database, application_name, GUCs, `_pq_.` options).
        params: BTreeMap<String, String>,
    },
}

/// Why a startup packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Length outside 8..=MAX_STARTUP_PACKET.
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    /// Body does not match its code.
    #[error("malformed startup packet")]
    Malformed,
    /// A protocol version the gateway does not speak.
    #[error("unsupported frontend protocol {0}.{1}: the gateway speaks 3.0")]
    UnsupportedVersion(u16, u16),
}

/// Reads the declared length of a startup packet from its first four bytes (`None` if fewer are
/// available) and checks it.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some(b) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = i32::from_be_bytes(*b);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    Ok(Some(len as usize))
}

/// Parses a whole startup packet (length prefix included).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let mut r = Reader::new(packet);
    let len = r.i32().ok_or(StartupError::Malformed)?;
    if len as usize != packet.len() {
        return Err(StartupError::Malformed);
    }
    let code = r.i32().ok_or(StartupError::Malformed)?;
    match code {
        SSL_REQUEST if r.rest().is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if r.rest().is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let pid = r.i32().ok_or(StartupError::Malformed)?;
            let secret = r.i32().ok_or(StartupError::Malformed)?;
            if !r.rest().is_empty() {
                // Protocol 3.2 allows longer cancel keys; the gateway never issues them.
                return Err(StartupError::Malformed);
            }
            Ok(StartupPacket::Cancel { pid, secret })
        }
        SSL_REQUEST | GSSENC_REQUEST => Err(StartupError::Malformed),
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedVersion(major, minor));
            }
            let mut params = BTreeMap::new();
            loop {
                let key = r.str().ok_or(StartupError::Malformed)?;
                if key.is_empty() {
                    break;
                }
                let value = r.str().ok_or(StartupError::Malformed)?;
                params.insert(key.to_owned(), value.to_owned());
            }
            if !r.rest().is_empty() {
                return Err(StartupError::Malformed);
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
            })
        }
    }
}

/// Encodes a StartupMessage for protocol 3.0 with `params` in order.
pub fn encode_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Encodes an SSLRequest.
pub fn encode_ssl_request() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&8i32.to_be_bytes());
    b[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    b
}

/// Encodes a CancelRequest for an upstream's keys.
pub fn encode_cancel(pid: i32, secret: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&16i32.to_be_bytes());
    b[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    b[8..12].copy_from_slice(&pid.to_be_bytes());
    b[12..].copy_from_slice(&secret.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_startup_packet() {
        assert_eq!(parse(&encode_ssl_request()), Ok(StartupPacket::SslRequest));
        assert_eq!(
            parse(&encode_cancel(7, -9)),
            Ok(StartupPacket::Cancel { pid: 7, secret: -9 })
        );
        let p = encode_startup(&[("user", "alice"), ("database", "app")]);
        let StartupPacket::Startup {
            major,
            minor,
            params,
        } = parse(&p).unwrap()
        else {
            panic!()
        };
        assert_eq!((major, minor), (3, 0));
        assert_eq!(params.get("user").map(String::as_str), Some("alice"));
        assert_eq!(params.get("database").map(String::as_str), Some("app"));
    }

    #[test]
    fn rejects_malformed_packets() {
        // Table: (bytes, why it must fail)
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0, 0, 8, 0, 2, 0, 0], "protocol 2"),
            (
                vec![0, 0, 0, 9, 0, 3, 0, 0, b'u'],
                "parameter without terminator",
            ),
            (
                vec![0, 0, 0, 12, 4, 210, 22, 47, 0, 0, 0, 1],
                "cancel without secret",
            ),
            (
                vec![0, 0, 0, 9, 4, 210, 22, 47, 0],
                "SSLRequest with a trailing byte",
            ),
            (vec![0, 0, 0, 8, 0, 3], "shorter than declared"),
            (
                vec![0, 0, 0, 10, 0, 3, 0, 0, 0, 0],
                "bytes after the final terminator",
            ),
        ];
        for (bytes, why) in cases {
            assert!(parse(&bytes).is_err(), "{why}");
        }
        assert_eq!(packet_len(&[0, 0, 0, 4]), Err(StartupError::BadLength(4)));
        assert_eq!(
            packet_len(&[0, 1, 0, 0]),
            Err(StartupError::BadLength(65536))
        );
        assert_eq!(packet_len(&[0, 0]), Ok(None));
    }
}
