//! Entry points shared by the fuzz targets in `fuzz/` and the corpus replay test, so that stable CI
//! runs every saved input through exactly the code the fuzzers reach.

use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthSwitchRequest, HandshakePacket, HandshakeResponse};

use crate::packet::PacketReader;

/// Frames `data` as the relay does (a bounded reader) and follows every packet through each kind
/// of response the relay reads, with and without CLIENT_DEPRECATE_EOF; reads each payload as the
/// OK, EOF, row and KILL readers do.
pub fn packets(data: &[u8]) {
    let mut reader = PacketReader::new();
    reader.buffered().extend_from_slice(data);
    let mut payloads = Vec::new();
    while let Ok(Some(p)) = reader.try_packet(1 << 20) {
        payloads.push(p.payload().into_owned());
    }
    for deprecate_eof in [false, true] {
        crate::relay::follow(&payloads, deprecate_eof);
    }
    for p in &payloads {
        crate::relay::read_payload(p);
        if let Ok(text) = std::str::from_utf8(p) {
            let _ = crate::kill::is_plain_kill(text);
        }
    }
}

/// Reads `data` as the first packets of a login, on both sides: a client's SSL request or
/// handshake response (with its attributes and plugin), and a server's greeting or auth switch.
pub fn handshake(data: &[u8]) {
    let mut reader = PacketReader::new();
    reader.buffered().extend_from_slice(data);
    while let Ok(Some(p)) = reader.try_packet(64 * 1024) {
        let payload = p.payload();
        if let Ok(hello) = ParseBuf(&payload).parse::<HandshakeResponse<'_>>(()) {
            let _ = hello.connect_attributes();
            let _ = hello.auth_plugin();
            let _ = crate::handshake::collation_charset(hello.collation());
        }
        if let Ok(greeting) = ParseBuf(&payload).parse::<HandshakePacket<'_>>(()) {
            let _ = greeting.nonce();
            let _ = greeting.server_version_parsed();
        }
        let _ = ParseBuf(&payload).parse::<AuthSwitchRequest<'_>>(());
        let _ = crate::upstream::ok_status(&payload, CapabilityFlags::CLIENT_PROTOCOL_41);
        let _ = crate::upstream::server_error(&payload);
    }
}
