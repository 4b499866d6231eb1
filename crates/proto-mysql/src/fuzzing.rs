//! Entry points shared by the fuzz targets in `fuzz/` and the corpus replay test, so that stable CI
//! runs every saved input through exactly the code the fuzzers reach.

use std::borrow::Cow;
use std::sync::Arc;

use gateway_core::{ColumnPlan, MaskPlan, ValueMask};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthSwitchRequest, HandshakePacket, HandshakeResponse};

use crate::masking::{self, ActivePlan, RowFormat};
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
        let _ = crate::packet::ok_fields(&payload);
        let _ = crate::upstream::server_error(&payload);
    }
}

/// Lengthens every value by one byte: rows change size, and cross the packet boundary.
#[derive(Debug)]
struct Lengthen;

impl ValueMask for Lengthen {
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let mut v = value.to_vec();
        v.push(b'*');
        Some(Cow::Owned(v))
    }
}

/// Sends every value as NULL.
#[derive(Debug)]
struct Nulls;

impl ValueMask for Nulls {
    fn mask<'a>(&self, _: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        None
    }
}

/// Reads `data` as a masked result as the relay does: framed packets, the first one's first byte
/// choosing the row format (odd: binary) and the number of columns, that many column
/// definitions, then rows, each rewritten with every column masked (lengthened or set NULL, in
/// turn); ERR packets are read as the relay scrubs them.
pub fn masked_rows(data: &[u8]) {
    let mut reader = PacketReader::new();
    reader.buffered().extend_from_slice(data);
    let mut next = || match reader.try_packet(1 << 20) {
        Ok(Some(p)) => Some(p.payload().into_owned()),
        _ => None,
    };
    let Some(head) = next() else { return };
    let choice = head.first().copied().unwrap_or(0);
    let format = if choice & 1 == 1 {
        RowFormat::Binary
    } else {
        RowFormat::Text
    };
    let count = usize::from(choice >> 1) % 32;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let Some(def) = next() else { return };
        columns.push(masking::describe(&def));
    }
    let plan = MaskPlan::new(
        (0..count)
            .map(|i| ColumnPlan::Mask {
                mask: if i % 2 == 0 {
                    Arc::new(Lengthen) as Arc<dyn ValueMask>
                } else {
                    Arc::new(Nulls)
                },
                reason: Arc::from("fuzz"),
            })
            .collect(),
    );
    let mut active = ActivePlan::new(plan, &columns, format);
    let mut out = Vec::new();
    while let Some(row) = next() {
        let _ = masking::err_parts(&row);
        out.clear();
        active.rewrite_row(&row, &mut out);
        let mut framed = Vec::new();
        crate::packet::frame(&mut framed, 0, &out);
    }
    let _ = active.report();
}
