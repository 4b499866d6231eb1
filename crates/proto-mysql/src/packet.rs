//! MySQL packet framing, and the packets the gateway writes itself (OK, ERR).
//!
//! A packet is a 3-byte little-endian payload length, a sequence id, and the payload; a payload of
//! 16 MiB - 1 bytes or more is split into pieces of exactly that size, the last one shorter
//! (possibly empty). The framing is read by hand rather than with `mysql_common`'s codec because
//! the relay must forward each packet as the bytes it read (the codec hands over reassembled
//! payloads and re-frames what it writes): [`PacketReader`] keeps the raw bytes, and joins the
//! payload only when a packet really was split.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use gateway_core::{ErrorKind, GatewayError, Side};
use mysql_common::packets::{ErrPacket, ServerError, SqlState};
use mysql_common::proto::MySerialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of a packet header.
pub const HEADER_LEN: usize = 4;

/// Payload length that means "continued in the next packet".
pub const MAX_PIECE: usize = 0xFF_FFFF;

/// `(payload length, sequence id)` of the header at the start of `buf`, if it is there.
pub fn header(buf: &[u8]) -> Option<(usize, u8)> {
    let h = buf.get(..HEADER_LEN)?;
    Some((
        usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
        h[3],
    ))
}

/// One logical packet as read.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The bytes as they came: every piece with its header.
    pub raw: Bytes,
    /// Sequence id of the first piece.
    pub seq: u8,
    /// Sequence id of the last piece (the next packet of the exchange follows it).
    pub last_seq: u8,
    pieces: usize,
}

impl Packet {
    /// The payload: borrowed from [`raw`](Self::raw), or joined when the packet was split.
    pub fn payload(&self) -> Cow<'_, [u8]> {
        if self.pieces == 1 {
            return Cow::Borrowed(&self.raw[HEADER_LEN..]);
        }
        let mut joined = Vec::with_capacity(self.raw.len());
        let mut rest = &self.raw[..];
        while let Some((len, _)) = header(rest) {
            joined.extend_from_slice(&rest[HEADER_LEN..HEADER_LEN + len]);
            rest = &rest[HEADER_LEN + len..];
        }
        Cow::Owned(joined)
    }

    /// The first byte of the payload (the command, or the kind of a response).
    pub fn first(&self) -> Option<u8> {
        self.raw.get(HEADER_LEN).copied()
    }

    /// Payload length (all pieces).
    pub fn len(&self) -> usize {
        self.raw.len() - HEADER_LEN * self.pieces
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a packet could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The stream ended between packets.
    Closed,
    /// The stream ended inside a packet, or failed.
    Io(std::io::Error),
    /// The packet is larger than allowed.
    TooLarge {
        /// The bound that was exceeded.
        max: usize,
    },
}

impl ReadError {
    /// The error as the core sees it, caused by `side`.
    pub fn into_gateway(self, side: Side, what: &str) -> GatewayError {
        match self {
            ReadError::Closed => GatewayError::protocol(side, format!("{what}: connection closed")),
            ReadError::Io(e) => GatewayError::protocol(side, format!("{what}: {e}")),
            ReadError::TooLarge { max } => GatewayError::protocol(
                side,
                format!("{what}: packet larger than the limit of {max} bytes"),
            ),
        }
    }
}

/// Reads whole logical packets from a stream, keeping their raw bytes.
#[derive(Debug, Default)]
pub struct PacketReader {
    buf: BytesMut,
}

impl PacketReader {
    /// A reader with an empty buffer.
    pub fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Bytes read from the stream but not yet handed out.
    pub fn buffered(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads more from `stream` into the buffer; `Ok(0)` at the end of the stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 8 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        stream.read_buf(&mut self.buf).await
    }

    /// The next packet already in the buffer, if a whole one is there. Its payload (all pieces)
    /// may not exceed `max` bytes.
    pub fn try_packet(&mut self, max: usize) -> Result<Option<Packet>, ReadError> {
        let mut at = 0;
        let mut pieces = 0;
        let mut payload = 0usize;
        let mut first_seq = None;
        loop {
            let Some((len, seq)) = header(&self.buf[at..]) else {
                return Ok(None);
            };
            payload += len;
            if payload > max {
                return Err(ReadError::TooLarge { max });
            }
            if self.buf.len() < at + HEADER_LEN + len {
                self.buf.reserve(at + HEADER_LEN + len - self.buf.len());
                return Ok(None);
            }
            first_seq.get_or_insert(seq);
            pieces += 1;
            at += HEADER_LEN + len;
            if len < MAX_PIECE {
                let raw = self.buf.split_to(at).freeze();
                return Ok(Some(Packet {
                    raw,
                    seq: first_seq.unwrap_or(seq),
                    last_seq: seq,
                    pieces,
                }));
            }
        }
    }

    /// Reads the next whole packet, whose payload may not exceed `max` bytes.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        max: usize,
    ) -> Result<Packet, ReadError> {
        loop {
            if let Some(p) = self.try_packet(max)? {
                return Ok(p);
            }
            match self.fill(stream).await {
                Ok(0) if self.buf.is_empty() => return Err(ReadError::Closed),
                Ok(0) => {
                    return Err(ReadError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed inside a packet",
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// [`read`](Self::read), with the rest of a packet whose first bytes have arrived bounded by
    /// `partial`: a peer may stay idle between packets as long as it likes, but not stall in the
    /// middle of one.
    pub async fn read_bounded<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        max: usize,
        partial: std::time::Duration,
    ) -> Result<Packet, ReadError> {
        loop {
            if let Some(p) = self.try_packet(max)? {
                return Ok(p);
            }
            let filled = if self.buf.is_empty() {
                self.fill(stream).await
            } else {
                match tokio::time::timeout(partial, self.fill(stream)).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ReadError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the rest of a packet did not arrive within {partial:?}"),
                        )))
                    }
                }
            };
            match filled {
                Ok(0) if self.buf.is_empty() => return Err(ReadError::Closed),
                Ok(0) => {
                    return Err(ReadError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed inside a packet",
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Drops `n` buffered bytes (already forwarded).
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n);
    }
}

/// Frames `payload` with sequence ids from `seq` on, splitting it as the protocol requires.
/// Returns the sequence id after the last piece.
pub fn frame(out: &mut Vec<u8>, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PIECE);
        out.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq]);
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PIECE {
            return seq;
        }
    }
}

/// A whole packet with sequence id `seq`.
pub fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER_LEN);
    frame(&mut out, seq, payload);
    out
}

/// An OK packet (no rows affected) with the server's status flags.
pub fn ok(seq: u8, status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    packet(seq, &[0x00, 0, 0, s[0], s[1], 0, 0])
}

/// The MySQL error code and SQLSTATE for an error of the core, chosen among the server's own
/// codes so that clients and drivers classify it as they would the server's.
pub fn error_code(kind: ErrorKind) -> (u16, [u8; 5]) {
    match kind {
        // ER_ACCESS_DENIED_ERROR
        ErrorKind::Authentication => (1045, *b"28000"),
        // ER_DBACCESS_DENIED_ERROR
        ErrorKind::AccessDenied => (1044, *b"42000"),
        // ER_BAD_DB_ERROR
        ErrorKind::UnknownTarget => (1049, *b"42000"),
        // ER_SPECIFIC_ACCESS_DENIED_ERROR
        ErrorKind::PolicyDenied | ErrorKind::ApprovalRequired => (1227, *b"42000"),
        // ER_PARSE_ERROR
        ErrorKind::Syntax => (1064, *b"42000"),
        // ER_NET_READ_ERROR
        ErrorKind::Protocol => (1158, *b"08S01"),
        // ER_NOT_SUPPORTED_YET
        ErrorKind::Unsupported => (1235, *b"42000"),
        // ER_NET_READ_INTERRUPTED
        ErrorKind::Timeout => (1159, *b"08S01"),
        // ER_CONNECT_TO_FOREIGN_DATA_SOURCE
        ErrorKind::UpstreamUnavailable => (1429, *b"HY000"),
        // ER_OPTION_PREVENTS_STATEMENT
        ErrorKind::AuditUnavailable => (1290, *b"HY000"),
        // ER_SERVER_SHUTDOWN
        ErrorKind::ShuttingDown => (1053, *b"08S01"),
        // ER_UNKNOWN_ERROR
        _ => (1105, *b"HY000"),
    }
}

/// An ERR packet for `err`: the message names the rule, and adds the detail and hint the
/// PostgreSQL module sends as separate fields (MySQL's ERR has one message).
pub fn err(seq: u8, e: &GatewayError) -> Vec<u8> {
    let (code, state) = error_code(e.kind);
    let mut message = e.message.clone();
    if let (Some(rule), false) = (&e.rule, e.kind == ErrorKind::Syntax) {
        message = format!("{message} (rule \"{rule}\")");
    }
    if let Some(detail) = &e.detail {
        message = format!("{message}: {detail}");
    }
    if let Some(hint) = &e.hint {
        message = format!("{message}. Hint: {hint}");
    }
    err_with(seq, code, state, &message)
}

/// An ERR packet with the given code, SQLSTATE and message.
pub fn err_with(seq: u8, code: u16, state: [u8; 5], message: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(message.len() + 9);
    ErrPacket::Error(ServerError::new(
        code,
        Some(SqlState::new(state)),
        message.as_bytes(),
    ))
    .serialize(&mut payload);
    packet(seq, &payload)
}

/// `(rows affected, status flags)` of an OK packet, or of an EOF that is an OK packet
/// (CLIENT_DEPRECATE_EOF): header, affected rows, last insert id, status, warnings. Read by hand:
/// it runs for every result the relay forwards, and mysql_common has a packet kind for each of
/// the two headers where one reader serves both.
pub fn ok_fields(payload: &[u8]) -> Option<(u64, u16)> {
    let (affected, a) = lenenc_int(payload.get(1..)?)?;
    let (_, b) = lenenc_int(payload.get(1 + a..)?)?;
    let s = payload.get(1 + a + b..3 + a + b)?;
    Some((affected, u16::from_le_bytes([s[0], s[1]])))
}

/// Reads a length-encoded integer at the start of `buf`: the value and the bytes it took.
pub fn lenenc_int(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let read = |n: usize| -> Option<(u64, usize)> {
        let b = buf.get(1..1 + n)?;
        let mut v = 0u64;
        for (i, byte) in b.iter().enumerate() {
            v |= u64::from(*byte) << (8 * i);
        }
        Some((v, 1 + n))
    };
    match first {
        0..=0xFA => Some((u64::from(first), 1)),
        0xFC => read(2),
        0xFD => read(3),
        0xFE => read(8),
        // 0xFB is NULL in a row, 0xFF an error: not integers.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_packets_are_joined_and_kept_raw() {
        let payload: Vec<u8> = (0..(MAX_PIECE + 10)).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        let next = frame(&mut wire, 3, &payload);
        assert_eq!(next, 5);
        wire.extend_from_slice(&packet(5, b"\x03SELECT 1"));
        let mut r = PacketReader::new();
        r.buffered().extend_from_slice(&wire[..wire.len() - 3]);
        let big = r.try_packet(usize::MAX).unwrap().unwrap();
        assert_eq!((big.seq, big.last_seq, big.len()), (3, 4, payload.len()));
        assert_eq!(&*big.payload(), &payload[..]);
        assert_eq!(&big.raw[..], &wire[..MAX_PIECE + 10 + 2 * HEADER_LEN]);
        // The next packet is not complete yet.
        assert!(r.try_packet(usize::MAX).unwrap().is_none());
        r.buffered().extend_from_slice(&wire[wire.len() - 3..]);
        let small = r.try_packet(usize::MAX).unwrap().unwrap();
        assert_eq!(&*small.payload(), b"\x03SELECT 1");
    }

    #[test]
    fn a_piece_of_exactly_the_maximum_is_followed_by_an_empty_one() {
        let payload = vec![7u8; MAX_PIECE];
        let mut wire = Vec::new();
        frame(&mut wire, 0, &payload);
        assert_eq!(wire.len(), MAX_PIECE + 2 * HEADER_LEN);
        assert_eq!(&wire[wire.len() - HEADER_LEN..], &[0, 0, 0, 1]);
    }

    #[test]
    fn oversized_packets_are_refused_before_they_are_read() {
        let mut r = PacketReader::new();
        r.buffered().extend_from_slice(&[0xff, 0xff, 0x0f, 0]);
        assert!(matches!(
            r.try_packet(1024),
            Err(ReadError::TooLarge { max: 1024 })
        ));
    }

    #[test]
    fn errors_carry_the_rule_and_a_server_code() {
        let mut e = GatewayError::new(ErrorKind::PolicyDenied, Side::Gateway, "no drops");
        e.rule = Some("guard".into());
        let p = err(1, &e);
        assert_eq!(p[3], 1);
        assert_eq!(p[4], 0xff);
        assert_eq!(u16::from_le_bytes([p[5], p[6]]), 1227);
        assert_eq!(&p[7..13], b"#42000");
        assert_eq!(&p[13..], b"no drops (rule \"guard\")");
    }

    #[test]
    fn length_encoded_integers() {
        assert_eq!(lenenc_int(&[0xfa]), Some((250, 1)));
        assert_eq!(lenenc_int(&[0xfc, 0x01, 0x02]), Some((0x0201, 3)));
        assert_eq!(lenenc_int(&[0xfd, 1, 0, 0]), Some((1, 4)));
        assert_eq!(lenenc_int(&[0xfe, 1, 0, 0, 0, 0, 0, 0, 0]), Some((1, 9)));
        assert_eq!(lenenc_int(&[0xfc, 0x01]), None);
        assert_eq!(lenenc_int(&[0xfb]), None);
    }
}
