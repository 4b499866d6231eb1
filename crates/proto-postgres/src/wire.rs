//! Framing and the few message fields the proxy reads, plus encoders for the messages the gateway
//! originates.
//!
//! Encoding uses pgwire's message types. Decoding is done here, by hand, on purpose: pgwire's
//! decoders read with `bytes::Buf::get_*`, which panics on a truncated body, and they copy every
//! field (all Bind parameters, for instance). A proxy reads untrusted bytes and needs only a few
//! fields, so it uses bounds-checked, borrowing readers over the original frame instead.

use bytes::{Bytes, BytesMut};
use gateway_core::{BoundValue, ErrorKind, GatewayError};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::Message;

/// Length of a typed message header: one type byte and a four-byte length.
pub const HEADER_LEN: usize = 5;

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is smaller than the length field itself.
    #[error("invalid message length {0}")]
    InvalidLength(i32),
    /// The message is larger than the configured limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
}

/// Reads the header of a typed message at the start of `buf`: its type byte and its total length
/// on the wire (type byte included). `Ok(None)` when fewer than five bytes are available.
pub fn typed_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::InvalidLength(len));
    }
    let len = len as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    Ok(Some((header[0], len + 1)))
}

/// A bounds-checked reader over a message body. Every accessor returns `None` instead of
/// panicking when the body is shorter than it claims.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `body` from its start.
    pub fn new(body: &'a [u8]) -> Self {
        Self { buf: body }
    }

    /// A NUL-terminated string, as raw bytes without the NUL.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.buf.iter().position(|&b| b == 0)?;
        let (s, rest) = self.buf.split_at(end);
        self.buf = rest.get(1..)?;
        Some(s)
    }

    /// A NUL-terminated string that must be valid UTF-8.
    pub fn str(&mut self) -> Option<&'a str> {
        self.cstr().and_then(|s| std::str::from_utf8(s).ok())
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> Option<i32> {
        let (b, rest) = self.buf.split_first_chunk::<4>()?;
        self.buf = rest;
        Some(i32::from_be_bytes(*b))
    }

    /// A big-endian i16.
    pub fn i16(&mut self) -> Option<i16> {
        let (b, rest) = self.buf.split_first_chunk::<2>()?;
        self.buf = rest;
        Some(i16::from_be_bytes(*b))
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(*b)
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(b)
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// The client messages the relay reads, with their fields borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    /// Simple Query.
    Query {
        /// Statement text (raw bytes in the client encoding).
        sql: &'a [u8],
    },
    /// Parse.
    Parse {
        /// Statement name ("" is the unnamed statement).
        name: &'a [u8],
        /// Statement text.
        sql: &'a [u8],
    },
    /// Bind.
    Bind {
        /// Portal name.
        portal: &'a [u8],
        /// Statement name.
        statement: &'a [u8],
        /// The rest of the body: parameter formats, values and result formats (read with
        /// [`bind_values`] only when the audit trail keeps parameters).
        rest: &'a [u8],
    },
    /// Execute.
    Execute {
        /// Portal name.
        portal: &'a [u8],
    },
    /// Close of a statement (`b'S'`) or portal (`b'P'`).
    Close {
        /// `b'S'` or `b'P'`.
        kind: u8,
        /// Name.
        name: &'a [u8],
    },
    /// Describe of a statement (`b'S'`) or portal (`b'P'`).
    Describe {
        /// `b'S'` or `b'P'`.
        kind: u8,
    },
    /// Sync.
    Sync,
    /// Terminate.
    Terminate,
    /// FunctionCall (fastpath).
    FunctionCall,
    /// Describe, Flush, CopyData, CopyDone, CopyFail, password messages: forwarded unread.
    Other,
}

/// Why a client message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A known message whose body is too short or lacks a terminator.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// A type byte no PostgreSQL frontend sends.
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
}

/// The parameter values of a Bind message, from the `rest` of [`Frontend::Bind`]. `None` when
/// the section is malformed (the upstream then refuses the message itself).
pub fn bind_values(rest: &[u8]) -> Option<Vec<BoundValue<'_>>> {
    let mut r = Reader::new(rest);
    let n_formats = usize::try_from(r.i16()?).ok()?;
    let formats = r.bytes(n_formats.checked_mul(2)?)?;
    let n_values = usize::try_from(r.i16()?).ok()?;
    if n_formats > 1 && n_formats != n_values {
        return None;
    }
    // Binary is format code 1; one code applies to every value, none means all text.
    let binary = |i: usize| match n_formats {
        0 => false,
        1 => formats[..2] == [0, 1],
        _ => formats[2 * i..2 * i + 2] == [0, 1],
    };
    let mut values = Vec::with_capacity(n_values.min(rest.len() / 4));
    for i in 0..n_values {
        let value = match r.i32()? {
            -1 => None,
            len => Some(r.bytes(usize::try_from(len).ok()?)?),
        };
        values.push(BoundValue {
            value,
            binary: binary(i),
        });
    }
    Some(values)
}

/// Reads the fields the relay needs from one client message body.
pub fn frontend(ty: u8, body: &[u8]) -> Result<Frontend<'_>, MessageError> {
    let mut r = Reader::new(body);
    let m = MessageError::Malformed;
    Ok(match ty {
        b'Q' => Frontend::Query {
            sql: r.cstr().ok_or(m("Query"))?,
        },
        b'P' => {
            let name = r.cstr().ok_or(m("Parse"))?;
            let sql = r.cstr().ok_or(m("Parse"))?;
            Frontend::Parse { name, sql }
        }
        b'B' => {
            let portal = r.cstr().ok_or(m("Bind"))?;
            let statement = r.cstr().ok_or(m("Bind"))?;
            Frontend::Bind {
                portal,
                statement,
                rest: r.rest(),
            }
        }
        b'E' => Frontend::Execute {
            portal: r.cstr().ok_or(m("Execute"))?,
        },
        b'C' => {
            let kind = r
                .u8()
                .filter(|k| *k == b'S' || *k == b'P')
                .ok_or(m("Close"))?;
            Frontend::Close {
                kind,
                name: r.cstr().ok_or(m("Close"))?,
            }
        }
        b'D' => {
            let kind = r
                .u8()
                .filter(|k| *k == b'S' || *k == b'P')
                .ok_or(m("Describe"))?;
            r.cstr().ok_or(m("Describe"))?;
            Frontend::Describe { kind }
        }
        b'S' => Frontend::Sync,
        b'X' => Frontend::Terminate,
        b'F' => Frontend::FunctionCall,
        b'H' | b'd' | b'c' | b'f' | b'p' => Frontend::Other,
        other => return Err(MessageError::UnknownType(other)),
    })
}

/// The fields of an ErrorResponse or NoticeResponse body, as (field type, value) pairs.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut r = Reader::new(body);
    let mut fields = Vec::new();
    while let Some(code) = r.u8() {
        if code == 0 {
            break;
        }
        match r.cstr() {
            Some(v) => fields.push((code, String::from_utf8_lossy(v).into_owned())),
            None => break,
        }
    }
    fields
}

/// The SQLSTATE the gateway reports for each neutral error kind: the one table that maps them.
pub fn sqlstate(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Authentication => "28P01",
        ErrorKind::AccessDenied => "28000",
        ErrorKind::UnknownTarget => "3D000",
        ErrorKind::PolicyDenied | ErrorKind::ApprovalRequired => "42501",
        ErrorKind::Syntax => "42601",
        ErrorKind::Protocol => "08P01",
        ErrorKind::Unsupported => "0A000",
        ErrorKind::Timeout => "08P01",
        ErrorKind::UpstreamUnavailable => "08001",
        ErrorKind::AuditUnavailable => "58000",
        ErrorKind::ShuttingDown => "57P01",
        // Internal, and kinds added after this table: internal_error.
        _ => "XX000",
    }
}

/// Encodes `err` as an ErrorResponse. `fatal` errors end the connection (severity FATAL).
pub fn error_response(err: &GatewayError, fatal: bool) -> Bytes {
    let severity = if fatal { "FATAL" } else { "ERROR" };
    let mut message = err.message.clone();
    // A syntax error is worded exactly as PostgreSQL words it (tools match on it); the rule is
    // in the audit record.
    if let (Some(rule), false) = (&err.rule, err.kind == ErrorKind::Syntax) {
        message = format!("{message} (rule \"{rule}\")");
    }
    let mut fields = vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', sqlstate(err.kind).to_owned()),
        (b'M', message),
    ];
    if let Some(d) = &err.detail {
        fields.push((b'D', d.clone()));
    }
    if let Some(h) = &err.hint {
        fields.push((b'H', h.clone()));
    }
    if let Some(p) = err.position {
        // psql draws its `LINE 1: ...` excerpt and caret from this field.
        fields.push((b'P', p.to_string()));
    }
    encode(&ErrorResponse::new(fields))
}

/// Encodes a NoticeResponse (severity NOTICE, SQLSTATE 00000) with `message`: what psql prints
/// as `NOTICE:  message`.
pub fn notice_response(message: &str) -> Bytes {
    encode(&pgwire::messages::response::NoticeResponse::new(vec![
        (b'S', "NOTICE".to_owned()),
        (b'V', "NOTICE".to_owned()),
        (b'C', "00000".to_owned()),
        (b'M', message.to_owned()),
    ]))
}

/// Encodes a ReadyForQuery with `status` (`I`, `T` or `E`).
pub fn ready_for_query(status: u8) -> Bytes {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status))
}

/// Encodes any pgwire message.
pub fn encode<M: Message>(m: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(m.message_length() + 1);
    // Encoding only fails when a message exceeds pgwire's size limit; the gateway builds only
    // small messages, and a failure leaves an empty buffer that the peer sees as a closed stream.
    if let Err(e) = m.encode(&mut buf) {
        tracing::error!(error = %e, "could not encode a protocol message");
        buf.clear();
    }
    buf.freeze()
}

/// Builds a typed message from its type byte and body.
pub fn typed(ty: u8, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(body.len() + HEADER_LEN);
    buf.extend_from_slice(&[ty]);
    buf.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    buf.extend_from_slice(body);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rejects_short_and_oversized_lengths() {
        assert_eq!(typed_header(b"Q\0\0", 100), Ok(None));
        assert_eq!(
            typed_header(b"Q\0\0\0\x03", 100),
            Err(FrameError::InvalidLength(3))
        );
        assert_eq!(
            typed_header(b"Q\xff\xff\xff\xff", 100),
            Err(FrameError::InvalidLength(-1))
        );
        assert_eq!(
            typed_header(b"Q\0\0\x01\0", 100),
            Err(FrameError::TooLarge { len: 256, max: 100 })
        );
        assert_eq!(
            typed_header(b"Q\0\0\0\x09select", 100),
            Ok(Some((b'Q', 10)))
        );
    }

    #[test]
    fn bind_values_follow_the_format_codes() {
        let read = |rest: &[u8]| {
            bind_values(rest).map(|vs| {
                vs.iter()
                    .map(|v| (v.value.map(<[u8]>::to_vec), v.binary))
                    .collect::<Vec<_>>()
            })
        };
        // No format codes: all text. One NULL, one "ab".
        assert_eq!(
            read(b"\0\0\0\x02\xff\xff\xff\xff\0\0\0\x02ab\0\0"),
            Some(vec![(None, false), (Some(b"ab".to_vec()), false)])
        );
        // One code (binary) for both values.
        assert_eq!(
            read(b"\0\x01\0\x01\0\x02\0\0\0\x01\x07\0\0\0\0\0\0"),
            Some(vec![(Some(vec![7]), true), (Some(vec![]), true)])
        );
        // One code per value.
        assert_eq!(
            read(b"\0\x02\0\0\0\x01\0\x02\0\0\0\x01x\0\0\0\x01\x01"),
            Some(vec![(Some(b"x".to_vec()), false), (Some(vec![1]), true)])
        );
        // Malformed: value longer than the body, code count mismatch, negative counts, truncation.
        assert_eq!(read(b"\0\0\0\x01\0\0\0\x09ab"), None);
        assert_eq!(read(b"\0\x02\0\0\0\0\0\x01\0\0\0\0"), None);
        assert_eq!(read(b"\xff\xff\0\0"), None);
        assert_eq!(read(b"\0\0\xff\xff"), None);
        assert_eq!(read(b"\0"), None);
    }

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(b"ab\0\0\x01");
        assert_eq!(r.cstr(), Some(&b"ab"[..]));
        assert_eq!(r.i32(), None);
        assert_eq!(r.i16(), Some(1));
        assert_eq!(r.u8(), None);
        assert_eq!(Reader::new(b"no-nul").cstr(), None);
        assert_eq!(Reader::new(b"\xff\0").str(), None);
        assert_eq!(Reader::new(b"ab").bytes(3), None);
    }

    #[test]
    fn error_response_round_trips_through_the_field_reader() {
        let e = GatewayError::new(
            ErrorKind::PolicyDenied,
            gateway_core::Side::Gateway,
            "no drops",
        )
        .with_rule("guard")
        .with_hint("ask");
        let frame = error_response(&e, false);
        let (ty, len) = typed_header(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!((ty, len), (b'E', frame.len()));
        let fields = error_fields(&frame[HEADER_LEN..]);
        assert!(fields.contains(&(b'C', "42501".into())));
        assert!(fields.contains(&(b'M', "no drops (rule \"guard\")".into())));
        assert!(fields.contains(&(b'H', "ask".into())));
        assert!(fields.contains(&(b'S', "ERROR".into())));
    }

    #[test]
    fn syntax_errors_carry_42601_the_parser_message_and_position() {
        let e = GatewayError::new(
            ErrorKind::Syntax,
            gateway_core::Side::Client,
            "syntax error at or near \"selec\"",
        )
        .with_rule("builtin:syntax-error")
        .with_position(Some(1));
        let frame = error_response(&e, false);
        let fields = error_fields(&frame[HEADER_LEN..]);
        assert!(fields.contains(&(b'C', "42601".into())));
        assert!(fields.contains(&(b'M', "syntax error at or near \"selec\"".into())));
        assert!(fields.contains(&(b'P', "1".into())));
    }

    #[test]
    fn frontend_messages_read_their_fields_or_fail_cleanly() {
        assert_eq!(
            frontend(b'Q', b"select 1\0"),
            Ok(Frontend::Query { sql: b"select 1" })
        );
        assert_eq!(
            frontend(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17"),
            Ok(Frontend::Parse {
                name: b"s1",
                sql: b"select $1"
            })
        );
        assert_eq!(
            frontend(b'B', b"\0s1\0\0\0"),
            Ok(Frontend::Bind {
                portal: b"",
                statement: b"s1",
                rest: b"\0\0",
            })
        );
        assert_eq!(
            frontend(b'E', b"p\0\0\0\0\0"),
            Ok(Frontend::Execute { portal: b"p" })
        );
        assert_eq!(
            frontend(b'C', b"Sx\0"),
            Ok(Frontend::Close {
                kind: b'S',
                name: b"x"
            })
        );
        // Table: (type, body, why it must fail)
        let bad: &[(u8, &[u8], &str)] = &[
            (b'Q', b"select 1", "query without terminator"),
            (b'P', b"s1\0", "parse without statement text"),
            (b'B', b"", "empty bind"),
            (b'C', b"Z\0", "close of neither statement nor portal"),
            (b'C', b"", "empty close"),
            (b'?', b"", "unknown type"),
        ];
        for (ty, body, why) in bad {
            assert!(frontend(*ty, body).is_err(), "{why}");
        }
    }

    #[test]
    fn ready_for_query_encodes_status() {
        assert_eq!(&ready_for_query(b'T')[..], b"Z\0\0\0\x05T");
        assert_eq!(&ready_for_query(b'x')[..], b"Z\0\0\0\x05I");
    }
}
