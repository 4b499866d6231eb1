//! Entry points shared by the fuzz targets in `fuzz/` and the corpus replay test, so that stable CI
//! runs every input the fuzzers ever saved through exactly the code they fuzzed.

use crate::wire::{bind_values, error_fields, frontend, typed_header, Frontend, HEADER_LEN};

/// Splits `data` into client frames as the relay does and reads each one.
pub fn frontend_frames(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((ty, len))) = typed_header(rest, 1 << 20) {
        let Some(frame) = rest.get(..len) else { break };
        let body = &frame[HEADER_LEN..];
        if let Ok(Frontend::Bind { rest, .. }) = frontend(ty, body) {
            // What the relay reads when the audit trail keeps parameters.
            let _ = bind_values(rest);
        }
        let _ = error_fields(body);
        rest = &rest[len..];
    }
}

/// Reads `data` as a startup-phase packet, as the handshake does.
pub fn startup_packet(data: &[u8]) {
    if let Ok(Some(len)) = crate::startup::packet_len(data) {
        if let Some(packet) = data.get(..len) {
            let _ = crate::startup::parse(packet);
        }
    }
    let _ = crate::startup::parse(data);
}
