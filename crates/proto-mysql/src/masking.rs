//! Masking on the MySQL wire: column definitions read into typed result columns, the values of
//! masked columns rewritten in text and binary rows, and the messages of ERR packets scrubbed for
//! masked sessions.
//!
//! Only sessions the masker is active for get here; every other session's rows go through as the
//! original bytes without being looked at. Within a masked session, a result set whose plan masks
//! nothing is not rewritten either.
//!
//! What the masks see. The masks of the `masking` crate read and write each type's text form, or
//! its binary form as PostgreSQL defines it (big-endian integers, days since 2000-01-01, ...),
//! which is not MySQL's. So the values a mask gets here are always in their text form, whatever
//! the protocol: a text row's values as they are; a binary row's strings, blobs, decimals and
//! JSON as they are (the binary protocol sends them as their text too); its integers, floats,
//! dates and times converted to text, and the mask's answer converted back, or sent as NULL when
//! it does not fit the column's type. Binary strings (charset `binary`: BLOB, VARBINARY, BIT,
//! geometry) are raw bytes in both protocols, which is PostgreSQL's binary form of bytea, and are
//! described as such ([`ValueFormat::Binary`]).

use std::borrow::Cow;
use std::sync::Arc;

use gateway_core::{
    ColumnOrigin, ColumnPlan, MaskPlan, MaskedColumn, ResultColumn, Session, ValueFormat, ValueType,
};
use mysql_common::constants::{ColumnFlags, ColumnType};
use mysql_common::io::ParseBuf;
use mysql_common::packets::Column;

use crate::packet::lenenc_int;

/// The collation id MySQL gives binary strings (BLOB, VARBINARY, BINARY, BIT, geometry).
const BINARY_CHARSET: u16 = 63;

/// How a value of a column is laid out in a binary-protocol row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// A length-encoded string (strings, blobs, decimals, JSON, enums, sets, bits, geometry).
    Bytes,
    /// A little-endian integer of `width` bytes.
    Int {
        /// 1, 2, 4 or 8.
        width: u8,
        /// UNSIGNED_FLAG.
        unsigned: bool,
    },
    /// A 4-byte little-endian float.
    Float,
    /// An 8-byte little-endian double.
    Double,
    /// A length byte (0, 4, 7 or 11), then year, month, day, hour, minute, second, microseconds.
    DateTime {
        /// DATE: the text form has no time of day.
        date_only: bool,
    },
    /// A length byte (0, 8 or 12), then sign, days, hours, minutes, seconds, microseconds.
    Time,
    /// MYSQL_TYPE_NULL: no bytes (the value is always NULL).
    Null,
    /// A type the gateway does not know the layout of: the row cannot be read past it.
    Unknown,
}

/// One column definition as masking reads it.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    /// What the masker gets.
    pub column: ResultColumn,
    /// How binary rows lay its values out.
    pub encoding: Encoding,
}

/// Reads a column definition packet. A definition that does not parse (a type code the gateway
/// does not know) still yields a column: of unknown origin and type, so that the masker decides
/// with nothing to trust, and of unknown layout, so that binary rows of a masked result become
/// NULLs rather than be misread.
pub(crate) fn describe(payload: &[u8]) -> Described {
    let Ok(def) = ParseBuf(payload).parse::<Column>(()) else {
        return Described {
            column: ResultColumn {
                name: Arc::from("?"),
                origin: ColumnOrigin::Unknown,
                value_type: ValueType::Other,
                type_id: 0,
                format: ValueFormat::Text,
            },
            encoding: Encoding::Unknown,
        };
    };
    let column_type = def.column_type();
    let flags = def.flags();
    let (value_type, format) = value_type(column_type, def.character_set(), flags);
    let schema = def.schema_str();
    let table = def.org_table_str();
    let name = def.org_name_str();
    // MariaDB leaves the schema empty where the value is not a stored column's, although it may
    // still name a table and a column: a value computed inside a view or a materialized derived
    // table (`SELECT c FROM (SELECT DISTINCT email AS c FROM t LIMIT 5) d` names table `t`,
    // column `c`). Such an origin names no stored column, so it is no origin at all.
    let origin = if schema.is_empty() || table.is_empty() || name.is_empty() {
        ColumnOrigin::Unknown
    } else {
        ColumnOrigin::Named {
            schema: Arc::from(schema.as_ref()),
            table: Arc::from(table.as_ref()),
            column: Arc::from(name.as_ref()),
        }
    };
    Described {
        column: ResultColumn {
            name: Arc::from(def.name_str().as_ref()),
            origin,
            value_type,
            type_id: column_type as u32,
            format,
        },
        encoding: encoding(column_type, flags),
    }
}

/// The masking family of a MySQL column type, and the form its values reach the masks in (see
/// the module documentation). Integer families are chosen wide enough for the unsigned range.
pub(crate) fn value_type(
    column_type: ColumnType,
    charset: u16,
    flags: ColumnFlags,
) -> (ValueType, ValueFormat) {
    use ColumnType::*;
    let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
    let value_type = match column_type {
        MYSQL_TYPE_TINY | MYSQL_TYPE_YEAR => ValueType::Int2,
        MYSQL_TYPE_SHORT if unsigned => ValueType::Int4,
        MYSQL_TYPE_SHORT => ValueType::Int2,
        MYSQL_TYPE_INT24 => ValueType::Int4,
        MYSQL_TYPE_LONG if unsigned => ValueType::Int8,
        MYSQL_TYPE_LONG => ValueType::Int4,
        MYSQL_TYPE_LONGLONG => ValueType::Int8,
        MYSQL_TYPE_FLOAT => ValueType::Float4,
        MYSQL_TYPE_DOUBLE => ValueType::Float8,
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => ValueType::Numeric,
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => ValueType::Date,
        MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2 => ValueType::Timestamp,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => ValueType::Time,
        MYSQL_TYPE_JSON => ValueType::Json,
        MYSQL_TYPE_BIT | MYSQL_TYPE_GEOMETRY => ValueType::Bytes,
        MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET => {
            if charset == BINARY_CHARSET {
                ValueType::Bytes
            } else {
                ValueType::Text
            }
        }
        _ => ValueType::Other,
    };
    let format = if value_type == ValueType::Bytes {
        ValueFormat::Binary
    } else {
        ValueFormat::Text
    };
    (value_type, format)
}

fn encoding(column_type: ColumnType, flags: ColumnFlags) -> Encoding {
    use ColumnType::*;
    let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
    let int = |width| Encoding::Int { width, unsigned };
    match column_type {
        MYSQL_TYPE_STRING
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_SET
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_BIT
        | MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_VECTOR
        | MYSQL_TYPE_JSON => Encoding::Bytes,
        MYSQL_TYPE_TINY => int(1),
        MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => int(2),
        MYSQL_TYPE_LONG | MYSQL_TYPE_INT24 => int(4),
        MYSQL_TYPE_LONGLONG => int(8),
        MYSQL_TYPE_FLOAT => Encoding::Float,
        MYSQL_TYPE_DOUBLE => Encoding::Double,
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Encoding::DateTime { date_only: true },
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_TIMESTAMP => Encoding::DateTime { date_only: false },
        MYSQL_TYPE_TIME => Encoding::Time,
        MYSQL_TYPE_NULL => Encoding::Null,
        _ => Encoding::Unknown,
    }
}

/// Sends every value as NULL.
#[derive(Debug)]
struct Nulls;

impl gateway_core::ValueMask for Nulls {
    fn mask<'a>(&self, _: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        None
    }
}

/// Which row format a result set's rows come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowFormat {
    /// COM_QUERY: every value a length-encoded string, 0xFB for NULL.
    Text,
    /// COM_STMT_EXECUTE: a 0x00 header, a NULL bitmap, then each non-NULL value by its type.
    Binary,
}

/// The plan of the result set being relayed, with what it masked so far.
pub(crate) struct ActivePlan {
    plan: MaskPlan,
    names: Vec<Arc<str>>,
    encodings: Vec<Encoding>,
    format: RowFormat,
    counts: Vec<u64>,
}

/// A value of a binary row, located.
enum Slot<'a> {
    Null,
    Value(&'a [u8]),
}

impl ActivePlan {
    pub(crate) fn new(plan: MaskPlan, columns: &[Described], format: RowFormat) -> Self {
        Self {
            counts: vec![0; columns.len()],
            names: columns.iter().map(|c| Arc::clone(&c.column.name)).collect(),
            encodings: columns.iter().map(|c| c.encoding).collect(),
            format,
            plan,
        }
    }

    /// A plan that sends every value as NULL: for rows the gateway cannot place.
    pub(crate) fn nulls(columns: &[Described], format: RowFormat) -> Self {
        let reason: Arc<str> = Arc::from("unplaced result: null");
        let plan = MaskPlan::new(
            columns
                .iter()
                .map(|_| ColumnPlan::Mask {
                    mask: Arc::new(Nulls),
                    reason: Arc::clone(&reason),
                })
                .collect(),
        );
        Self::new(plan, columns, format)
    }

    /// Whether rows of this result set need rewriting at all.
    pub(crate) fn masks(&self) -> bool {
        !self.plan.is_empty()
    }

    /// Rewrites one row payload into `out` (the payload only, unframed) when a masked column
    /// changed a value. Returns `false` (and leaves `out` as it was) when the row goes out as it
    /// came. A malformed row (the upstream's bytes do not add up) is replaced by a row of NULLs:
    /// nothing unreadable is passed.
    pub(crate) fn rewrite_row(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let rewritten = match self.format {
            RowFormat::Text => self.rewrite_text(payload, out),
            RowFormat::Binary => self.rewrite_binary(payload, out),
        };
        match rewritten {
            Some(true) => true,
            Some(false) => {
                out.truncate(start);
                false
            }
            None => {
                out.truncate(start);
                self.null_row(out);
                true
            }
        }
    }

    /// `None`: malformed.
    fn rewrite_text(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Option<bool> {
        out.reserve(payload.len() + 8);
        let mut rest = payload;
        let mut changed = false;
        for i in 0..self.names.len() {
            let value = match rest.first()? {
                0xfb => {
                    rest = &rest[1..];
                    None
                }
                _ => {
                    let (len, used) = lenenc_int(rest)?;
                    let end = used.checked_add(usize::try_from(len).ok()?)?;
                    let v = rest.get(used..end)?;
                    rest = &rest[end..];
                    Some(v)
                }
            };
            let masked = match (self.plan.column(i), value) {
                (ColumnPlan::Mask { mask, .. }, Some(v)) => {
                    let m = mask.mask(v);
                    if !same(&m, v) {
                        changed = true;
                        self.count(i);
                    }
                    m
                }
                (_, v) => v.map(Cow::Borrowed),
            };
            match masked {
                None => out.push(0xfb),
                Some(v) => put_lenenc_bytes(out, &v),
            }
        }
        if !rest.is_empty() {
            return None;
        }
        Some(changed)
    }

    /// `None`: malformed.
    fn rewrite_binary(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Option<bool> {
        let n = self.names.len();
        let bitmap_len = (n + 7 + 2) / 8;
        if payload.first() != Some(&0x00) {
            return None;
        }
        let bitmap = payload.get(1..1 + bitmap_len)?;
        let mut rest = &payload[1 + bitmap_len..];
        out.reserve(payload.len() + 8);
        let start = out.len();
        out.push(0x00);
        out.extend_from_slice(bitmap);
        let mut changed = false;
        for i in 0..n {
            let bit = i + 2;
            let null = bitmap[bit / 8] & (1 << (bit % 8)) != 0;
            let encoding = *self.encodings.get(i)?;
            let slot = if null {
                Slot::Null
            } else {
                let len = binary_len(encoding, rest)?;
                let v = rest.get(..len)?;
                rest = &rest[len..];
                Slot::Value(v)
            };
            let value = match slot {
                Slot::Null => continue,
                Slot::Value(v) => v,
            };
            let ColumnPlan::Mask { mask, .. } = self.plan.column(i) else {
                out.extend_from_slice(value);
                continue;
            };
            let masked = match encoding {
                Encoding::Bytes => {
                    let (len, used) = lenenc_int(value)?;
                    let body = value.get(used..used + usize::try_from(len).ok()?)?;
                    let m = mask.mask(body);
                    if same(&m, body) {
                        out.extend_from_slice(value);
                        continue;
                    }
                    m.map(|m| {
                        let mut v = Vec::with_capacity(m.len() + 9);
                        put_lenenc_bytes(&mut v, &m);
                        v
                    })
                }
                _ => {
                    let text = binary_to_text(encoding, value)?;
                    let m = mask.mask(text.as_bytes());
                    if same(&m, text.as_bytes()) {
                        out.extend_from_slice(value);
                        continue;
                    }
                    m.and_then(|m| text_to_binary(encoding, &m))
                }
            };
            changed = true;
            self.count(i);
            match masked {
                Some(v) => out.extend_from_slice(&v),
                None => out[start + 1 + bit / 8] |= 1 << (bit % 8),
            }
        }
        if !rest.is_empty() {
            return None;
        }
        Some(changed)
    }

    fn count(&mut self, i: usize) {
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
    }

    /// A row of NULLs, one per described column.
    fn null_row(&mut self, out: &mut Vec<u8>) {
        let n = self.names.len();
        match self.format {
            RowFormat::Text => out.extend(std::iter::repeat_n(0xfb, n)),
            RowFormat::Binary => {
                let bitmap_len = (n + 7 + 2) / 8;
                let at = out.len();
                out.push(0x00);
                out.extend(std::iter::repeat_n(0, bitmap_len));
                for i in 0..n {
                    let bit = i + 2;
                    out[at + 1 + bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        for c in &mut self.counts {
            *c += 1;
        }
    }

    /// What was masked, for the audit trail.
    pub(crate) fn report(&self) -> Vec<MaskedColumn> {
        self.plan.report(&self.names, &self.counts)
    }
}

/// Whether a mask handed the value back unchanged (the same bytes, not a copy).
fn same(masked: &Option<Cow<'_, [u8]>>, value: &[u8]) -> bool {
    matches!(masked, Some(Cow::Borrowed(b)) if std::ptr::eq(*b, value))
}

/// The length of a non-NULL binary value of `encoding` at the start of `rest`.
fn binary_len(encoding: Encoding, rest: &[u8]) -> Option<usize> {
    match encoding {
        Encoding::Bytes => {
            let (len, used) = lenenc_int(rest)?;
            used.checked_add(usize::try_from(len).ok()?)
        }
        Encoding::Int { width, .. } => Some(usize::from(width)),
        Encoding::Float => Some(4),
        Encoding::Double => Some(8),
        Encoding::DateTime { .. } | Encoding::Time => Some(1 + usize::from(*rest.first()?)),
        Encoding::Null => Some(0),
        Encoding::Unknown => None,
    }
}

/// Writes a length-encoded string.
pub(crate) fn put_lenenc_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len() as u64;
    if n < 0xfb {
        out.push(n as u8);
    } else if n < 1 << 16 {
        out.push(0xfc);
        out.extend_from_slice(&n.to_le_bytes()[..2]);
    } else if n < 1 << 24 {
        out.push(0xfd);
        out.extend_from_slice(&n.to_le_bytes()[..3]);
    } else {
        out.push(0xfe);
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(bytes);
}

/// The text form of a binary value (the bytes after the NULL bitmap, length byte included), as
/// the text protocol would send it.
pub(crate) fn binary_to_text(encoding: Encoding, value: &[u8]) -> Option<String> {
    match encoding {
        Encoding::Int { width, unsigned } => {
            let mut b = [0u8; 8];
            b.get_mut(..value.len())?.copy_from_slice(value);
            let raw = u64::from_le_bytes(b);
            Some(if unsigned {
                raw.to_string()
            } else {
                // Sign-extend from the column's width.
                let shift = 64 - 8 * u32::from(width);
                (((raw << shift) as i64) >> shift).to_string()
            })
        }
        Encoding::Float => Some(f32::from_le_bytes(value.try_into().ok()?).to_string()),
        Encoding::Double => Some(f64::from_le_bytes(value.try_into().ok()?).to_string()),
        Encoding::DateTime { date_only } => {
            let body = value.get(1..)?;
            let u16_at = |i: usize| -> Option<u16> {
                Some(u16::from_le_bytes([*body.get(i)?, *body.get(i + 1)?]))
            };
            let (mut y, mut mo, mut d, mut h, mut mi, mut s, mut us) = (0, 0, 0, 0, 0, 0, 0u32);
            if body.len() >= 4 {
                y = u16_at(0)?;
                mo = body[2];
                d = body[3];
            }
            if body.len() >= 7 {
                h = body[4];
                mi = body[5];
                s = body[6];
            }
            if body.len() >= 11 {
                us = u32::from_le_bytes(body[7..11].try_into().ok()?);
            }
            let mut text = format!("{y:04}-{mo:02}-{d:02}");
            if !date_only {
                text.push_str(&format!(" {h:02}:{mi:02}:{s:02}"));
                if us != 0 {
                    text.push_str(&format!(".{us:06}"));
                }
            }
            Some(text)
        }
        Encoding::Time => {
            let body = value.get(1..)?;
            let (mut negative, mut days, mut h, mut mi, mut s, mut us) = (false, 0u32, 0, 0, 0, 0);
            if body.len() >= 8 {
                negative = body[0] == 1;
                days = u32::from_le_bytes(body[1..5].try_into().ok()?);
                h = body[5];
                mi = body[6];
                s = body[7];
            }
            if body.len() >= 12 {
                us = u32::from_le_bytes(body[8..12].try_into().ok()?);
            }
            let hours = u64::from(days) * 24 + u64::from(h);
            let sign = if negative { "-" } else { "" };
            let mut text = format!("{sign}{hours:02}:{mi:02}:{s:02}");
            if us != 0 {
                text.push_str(&format!(".{us:06}"));
            }
            Some(text)
        }
        Encoding::Bytes | Encoding::Null | Encoding::Unknown => None,
    }
}

/// The binary form of a masked value's text, for a column of `encoding`; `None` (NULL) when the
/// text is not a value of that type, or does not fit it.
pub(crate) fn text_to_binary(encoding: Encoding, text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?.trim();
    match encoding {
        Encoding::Int { width, unsigned } => {
            let n: i128 = text.parse().ok()?;
            let bits = 8 * u32::from(width);
            let (min, max) = if unsigned {
                (0i128, (1i128 << bits) - 1)
            } else {
                (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
            };
            if n < min || n > max {
                return None;
            }
            Some((n as u64).to_le_bytes()[..usize::from(width)].to_vec())
        }
        Encoding::Float => Some(text.parse::<f32>().ok()?.to_le_bytes().to_vec()),
        Encoding::Double => Some(text.parse::<f64>().ok()?.to_le_bytes().to_vec()),
        Encoding::DateTime { .. } => {
            let (date, time) = match text.split_once([' ', 'T']) {
                Some((d, t)) => (d, Some(t)),
                None => (text, None),
            };
            let mut parts = date.splitn(3, '-');
            let y: u16 = parts.next()?.parse().ok()?;
            let mo: u8 = parts.next()?.parse().ok()?;
            let d: u8 = parts.next()?.parse().ok()?;
            let mut out = vec![4, 0, 0, mo, d];
            out[1..3].copy_from_slice(&y.to_le_bytes());
            if let Some(time) = time {
                let (h, mi, s, us) = clock(time)?;
                let h = u8::try_from(h).ok().filter(|h| *h < 24)?;
                out.extend_from_slice(&[h, mi, s]);
                out[0] = 7;
                if us != 0 {
                    out.extend_from_slice(&us.to_le_bytes());
                    out[0] = 11;
                }
            }
            Some(out)
        }
        Encoding::Time => {
            let (negative, clock_text) = match text.strip_prefix('-') {
                Some(t) => (true, t),
                None => (false, text),
            };
            let (h, mi, s, us) = clock(clock_text)?;
            let days = u32::try_from(h / 24).ok()?;
            let mut out = vec![8, u8::from(negative)];
            out.extend_from_slice(&days.to_le_bytes());
            out.extend_from_slice(&[(h % 24) as u8, mi, s]);
            if us != 0 {
                out.extend_from_slice(&us.to_le_bytes());
                out[0] = 12;
            }
            Some(out)
        }
        Encoding::Bytes | Encoding::Null | Encoding::Unknown => None,
    }
}

/// `HH:MM:SS[.ffffff]` (hours may exceed 24): hours, minutes, seconds, microseconds.
fn clock(text: &str) -> Option<(u64, u8, u8, u32)> {
    let (hms, fraction) = match text.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (text, None),
    };
    let mut parts = hms.splitn(3, ':');
    let h: u64 = parts.next()?.parse().ok()?;
    let mi: u8 = parts.next()?.parse().ok().filter(|m| *m < 60)?;
    let s: u8 = parts.next()?.parse().ok().filter(|s| *s < 60)?;
    let us = match fraction {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let digits: u32 = f.parse().ok()?;
            digits * 10u32.pow(6 - f.len() as u32)
        }
        Some(_) => return None,
    };
    Some((h, mi, s, us))
}

/// An ERR packet's parts: code, SQLSTATE (when the packet has one) and message.
pub(crate) fn err_parts(payload: &[u8]) -> Option<(u16, Option<[u8; 5]>, Cow<'_, str>)> {
    if payload.first() != Some(&0xff) {
        return None;
    }
    let code = u16::from_le_bytes([*payload.get(1)?, *payload.get(2)?]);
    let rest = payload.get(3..)?;
    let (state, message) = match rest.split_first() {
        Some((b'#', after)) if after.len() >= 5 => {
            let mut state = [0u8; 5];
            state.copy_from_slice(&after[..5]);
            (Some(state), &after[5..])
        }
        _ => (None, rest),
    };
    Some((code, state, String::from_utf8_lossy(message)))
}

/// The payload of an ERR packet of a masked session with its message scrubbed; `None` when it
/// goes out unchanged.
///
/// `reads_masked`: the statement the error answers reads masked columns (or what cannot be
/// traced), so the message is replaced whole: the server prints values in messages unquoted as
/// often as quoted (`Incorrect datetime value: '...'`, `Out of range value for column`, the
/// `Duplicate entry '...' for key` of a constraint), and the text is no place to tell them from
/// the wording. Otherwise the masker scrubs the message (quoted spans, detector findings). The
/// error code and SQLSTATE always stay.
pub(crate) fn scrub_error(
    session: &Session,
    payload: &[u8],
    reads_masked: bool,
) -> Option<Vec<u8>> {
    let (code, state, message) = err_parts(payload)?;
    let state = state.unwrap_or(*b"HY000");
    let scrubbed: Cow<'_, str> = if reads_masked {
        Cow::Owned(format!(
            "the database's message (error {code}) is hidden because the statement reads masked columns"
        ))
    } else {
        session.scrub(&message)
    };
    if scrubbed == message {
        return None;
    }
    // The framing is the caller's: the payload alone.
    let framed = crate::packet::err_with(0, code, state, &scrubbed);
    Some(framed[crate::packet::HEADER_LEN..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A column definition packet, written by hand: mysql_common's `Column::serialize` writes
    /// the column length ahead of the character set, the other way round from the protocol.
    fn column_def(
        schema: &str,
        table: &str,
        name: &str,
        column_type: ColumnType,
        charset: u16,
        flags: ColumnFlags,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for s in ["def", schema, table, table, name, name] {
            put_lenenc_bytes(&mut out, s.as_bytes());
        }
        out.push(0x0c);
        out.extend_from_slice(&charset.to_le_bytes());
        out.extend_from_slice(&255u32.to_le_bytes());
        out.push(column_type as u8);
        out.extend_from_slice(&flags.bits().to_le_bytes());
        out.extend_from_slice(&[0, 0, 0]);
        out
    }

    #[derive(Debug)]
    struct Stars;
    impl gateway_core::ValueMask for Stars {
        fn mask<'a>(&self, _: &'a [u8]) -> Option<Cow<'a, [u8]>> {
            Some(Cow::Borrowed(b"***"))
        }
    }

    /// Hands integers back as text with their last digit kept, and everything else as NULL.
    #[derive(Debug)]
    struct LastDigit;
    impl gateway_core::ValueMask for LastDigit {
        fn mask<'a>(&self, v: &'a [u8]) -> Option<Cow<'a, [u8]>> {
            let s = std::str::from_utf8(v).ok()?;
            let n: i64 = s.parse().ok()?;
            Some(Cow::Owned((n % 10).to_string().into_bytes()))
        }
    }

    /// A constant text, like the redact strategy's dates.
    #[derive(Debug)]
    struct Fixed(&'static [u8]);
    impl gateway_core::ValueMask for Fixed {
        fn mask<'a>(&self, _: &'a [u8]) -> Option<Cow<'a, [u8]>> {
            Some(Cow::Borrowed(self.0))
        }
    }

    fn mask(m: impl gateway_core::ValueMask + 'static) -> ColumnPlan {
        ColumnPlan::Mask {
            mask: Arc::new(m),
            reason: "r".into(),
        }
    }

    #[test]
    fn column_definitions_become_typed_columns_with_origins() {
        let d = describe(&column_def(
            "shop",
            "customers",
            "email",
            ColumnType::MYSQL_TYPE_VAR_STRING,
            45,
            ColumnFlags::empty(),
        ));
        assert_eq!(
            d.column.origin,
            ColumnOrigin::Named {
                schema: "shop".into(),
                table: "customers".into(),
                column: "email".into()
            }
        );
        assert_eq!(
            (d.column.value_type, d.column.format, d.encoding),
            (ValueType::Text, ValueFormat::Text, Encoding::Bytes)
        );
        // A computed value, and a value MariaDB places in a table without a schema: no origin.
        for (schema, table, name) in [("", "", ""), ("", "customers", "c")] {
            let d = describe(&column_def(
                schema,
                table,
                name,
                ColumnType::MYSQL_TYPE_VAR_STRING,
                45,
                ColumnFlags::empty(),
            ));
            assert_eq!(d.column.origin, ColumnOrigin::Unknown);
        }
        let blob = describe(&column_def(
            "s",
            "t",
            "b",
            ColumnType::MYSQL_TYPE_BLOB,
            BINARY_CHARSET,
            ColumnFlags::BINARY_FLAG,
        ));
        assert_eq!(
            (blob.column.value_type, blob.column.format),
            (ValueType::Bytes, ValueFormat::Binary)
        );
        let unsigned = describe(&column_def(
            "s",
            "t",
            "n",
            ColumnType::MYSQL_TYPE_LONG,
            BINARY_CHARSET,
            ColumnFlags::UNSIGNED_FLAG,
        ));
        assert_eq!(unsigned.column.value_type, ValueType::Int8);
        assert_eq!(
            unsigned.encoding,
            Encoding::Int {
                width: 4,
                unsigned: true
            }
        );
        // Truncated definitions still describe a column, of unknown everything.
        let full = column_def(
            "s",
            "t",
            "n",
            ColumnType::MYSQL_TYPE_LONG,
            63,
            ColumnFlags::empty(),
        );
        for cut in 0..full.len() {
            let d = describe(&full[..cut]);
            assert_eq!(d.column.origin, ColumnOrigin::Unknown, "cut at {cut}");
            assert_eq!(d.encoding, Encoding::Unknown);
        }
    }

    fn described(types: &[(ColumnType, ColumnFlags)]) -> Vec<Described> {
        types
            .iter()
            .map(|(t, f)| describe(&column_def("s", "t", "c", *t, 45, *f)))
            .collect()
    }

    fn text_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            match v {
                None => out.push(0xfb),
                Some(v) => put_lenenc_bytes(&mut out, v),
            }
        }
        out
    }

    #[test]
    fn text_rows_are_rewritten_and_counted_and_malformed_ones_become_nulls() {
        let cols = described(&[
            (ColumnType::MYSQL_TYPE_LONG, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_VAR_STRING, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_VAR_STRING, ColumnFlags::empty()),
        ]);
        let plan = MaskPlan::new(vec![ColumnPlan::Pass, mask(Stars), mask(Nulls)]);
        let mut active = ActivePlan::new(plan, &cols, RowFormat::Text);
        let long = vec![b'x'; 300];
        let row = text_row(&[Some(b"7"), Some(&long), Some(b"123-45-6789")]);
        let mut out = Vec::new();
        assert!(active.rewrite_row(&row, &mut out));
        assert_eq!(out, text_row(&[Some(b"7"), Some(b"***"), None]));
        // NULLs stay NULL and are not counted; a row with nothing to mask goes out as it came.
        out.clear();
        assert!(!active.rewrite_row(&text_row(&[Some(b"8"), None, None]), &mut out));
        assert!(out.is_empty());
        let report = active.report();
        assert_eq!((report[0].values, report[1].values), (1, 1));
        // Truncated or padded rows never pass: every column NULL.
        for cut in 0..row.len() {
            out.clear();
            assert!(active.rewrite_row(&row[..cut], &mut out), "cut at {cut}");
            assert_eq!(out, vec![0xfb; 3], "cut at {cut}");
        }
        let mut padded = row.clone();
        padded.push(0);
        out.clear();
        assert!(active.rewrite_row(&padded, &mut out));
        assert_eq!(out, vec![0xfb; 3]);
    }

    /// A binary row: header, NULL bitmap (offset 2), the values given.
    fn binary_row(n: usize, values: &[Option<Vec<u8>>]) -> Vec<u8> {
        let bitmap_len = (n + 7 + 2) / 8;
        let mut out = vec![0u8; 1 + bitmap_len];
        for (i, v) in values.iter().enumerate() {
            match v {
                None => out[1 + (i + 2) / 8] |= 1 << ((i + 2) % 8),
                Some(v) => out.extend_from_slice(v),
            }
        }
        out
    }

    fn lenenc(v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_lenenc_bytes(&mut out, v);
        out
    }

    #[test]
    fn binary_rows_are_rewritten_by_type_with_nulls_in_the_bitmap() {
        let cols = described(&[
            (ColumnType::MYSQL_TYPE_LONGLONG, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_VAR_STRING, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_TINY, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_DATE, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_DATETIME, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_LONG, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_DOUBLE, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_TIME, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_VAR_STRING, ColumnFlags::empty()),
        ]);
        let plan = MaskPlan::new(vec![
            ColumnPlan::Pass,
            mask(Stars),
            mask(Nulls),
            mask(Fixed(b"1970-01-01")),
            mask(Fixed(b"1970-01-01 00:00:00")),
            mask(LastDigit),
            // A double masked to something that is not a number: NULL.
            mask(Stars),
            mask(Fixed(b"00:00:00")),
            ColumnPlan::Pass,
        ]);
        let mut active = ActivePlan::new(plan, &cols, RowFormat::Binary);
        let date = vec![4, 0xc4, 0x07, 2, 3];
        let datetime = vec![11, 0xc4, 0x07, 2, 3, 4, 5, 6, 1, 0, 0, 0];
        let time = vec![8, 1, 1, 0, 0, 0, 2, 3, 4];
        let row = binary_row(
            9,
            &[
                Some(42i64.to_le_bytes().to_vec()),
                Some(lenenc(b"alice@example.com")),
                Some(vec![5]),
                Some(date),
                Some(datetime),
                Some((-1234i32).to_le_bytes().to_vec()),
                Some(2.5f64.to_le_bytes().to_vec()),
                Some(time),
                None,
            ],
        );
        let mut out = Vec::new();
        assert!(active.rewrite_row(&row, &mut out));
        let expected = binary_row(
            9,
            &[
                Some(42i64.to_le_bytes().to_vec()),
                Some(lenenc(b"***")),
                None,
                Some(vec![4, 0xb2, 0x07, 1, 1]),
                Some(vec![7, 0xb2, 0x07, 1, 1, 0, 0, 0]),
                Some((-4i32).to_le_bytes().to_vec()),
                None,
                Some(vec![8, 0, 0, 0, 0, 0, 0, 0, 0]),
                None,
            ],
        );
        assert_eq!(out, expected);
        assert!(active.report().iter().all(|m| m.values == 1));
        // Truncated rows never pass.
        for cut in 0..row.len() {
            out.clear();
            assert!(active.rewrite_row(&row[..cut], &mut out), "cut at {cut}");
            assert_eq!(
                out,
                binary_row(9, &[None, None, None, None, None, None, None, None, None])
            );
        }
    }

    #[test]
    fn binary_values_convert_to_text_and_back() {
        let int = |width, unsigned| Encoding::Int { width, unsigned };
        let cases: &[(Encoding, &[u8], &str)] = &[
            (int(1, false), &[0xff], "-1"),
            (int(1, true), &[0xff], "255"),
            (int(2, false), &[0x00, 0x80], "-32768"),
            (int(4, true), &[0xff, 0xff, 0xff, 0xff], "4294967295"),
            (int(8, false), &(-5i64).to_le_bytes(), "-5"),
            (
                int(8, true),
                &u64::MAX.to_le_bytes(),
                "18446744073709551615",
            ),
            (Encoding::Float, &1.5f32.to_le_bytes(), "1.5"),
            (Encoding::Double, &(-0.25f64).to_le_bytes(), "-0.25"),
            (
                Encoding::DateTime { date_only: true },
                &[4, 0xe4, 0x07, 12, 31],
                "2020-12-31",
            ),
            (
                Encoding::DateTime { date_only: false },
                &[7, 0xe4, 0x07, 12, 31, 23, 59, 58],
                "2020-12-31 23:59:58",
            ),
            (
                Encoding::DateTime { date_only: false },
                &[11, 0xe4, 0x07, 12, 31, 23, 59, 58, 0x40, 0xe2, 0x01, 0x00],
                "2020-12-31 23:59:58.123456",
            ),
            (
                Encoding::Time,
                &[12, 1, 2, 0, 0, 0, 3, 4, 5, 1, 0, 0, 0],
                "-51:04:05.000001",
            ),
        ];
        for (encoding, bytes, text) in cases {
            assert_eq!(
                binary_to_text(*encoding, bytes).as_deref(),
                Some(*text),
                "{encoding:?}"
            );
            assert_eq!(
                text_to_binary(*encoding, text.as_bytes()).as_deref(),
                Some(*bytes),
                "{encoding:?} {text}"
            );
        }
        // Zero-length dates and times read as zeros.
        assert_eq!(
            binary_to_text(Encoding::DateTime { date_only: false }, &[0]).as_deref(),
            Some("0000-00-00 00:00:00")
        );
        assert_eq!(
            binary_to_text(Encoding::Time, &[0]).as_deref(),
            Some("00:00:00")
        );
        // What does not fit the column is no value.
        for (encoding, text) in [
            (int(1, false), "128"),
            (int(1, true), "-1"),
            (int(4, false), "tok_0011"),
            (Encoding::Double, "****"),
            (Encoding::DateTime { date_only: true }, "1970-01"),
            (
                Encoding::DateTime { date_only: false },
                "1970-01-01 24:00:00",
            ),
            (Encoding::Time, "00:60:00"),
        ] {
            assert_eq!(text_to_binary(encoding, text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn length_encoded_strings_take_the_shortest_prefix() {
        for (n, prefix) in [
            (0usize, 1usize),
            (250, 1),
            (251, 3),
            (65_535, 3),
            (65_536, 4),
            (1 << 24, 9),
        ] {
            let v = vec![b'a'; n];
            let mut out = Vec::new();
            put_lenenc_bytes(&mut out, &v);
            assert_eq!(out.len(), n + prefix, "{n}");
            assert_eq!(lenenc_int(&out), Some((n as u64, prefix)));
        }
    }

    #[test]
    fn error_packets_are_read_with_and_without_a_state() {
        let framed = crate::packet::err_with(1, 1062, *b"23000", "Duplicate entry 'a@b.c'");
        let (code, state, message) = err_parts(&framed[4..]).unwrap();
        assert_eq!(
            (code, state, message.as_ref()),
            (1062, Some(*b"23000"), "Duplicate entry 'a@b.c'")
        );
        let (code, state, message) = err_parts(b"\xff\x15\x04boom").unwrap();
        assert_eq!((code, state, message.as_ref()), (1045, None, "boom"));
        assert!(err_parts(b"\x00").is_none());
        assert!(err_parts(b"\xff\x15").is_none());
    }
}
