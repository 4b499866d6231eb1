//! Compact JSON for the records on a statement's path: byte for byte what `serde_json::to_writer`
//! writes (the tests below compare the two on every kind of record), with a string escape that
//! looks at eight bytes at a time instead of one.
//!
//! serde_json checks each byte of every string against its escape table; a record is mostly
//! strings (statement text, identity, client, fingerprint), and that loop was 36% of the
//! instructions a session spends on a record (callgrind, pgbench-like `statement_started`,
//! SHA-256 left out). Here a string is scanned a word at a time for the three kinds of byte JSON
//! escapes (control characters, `"` and `\`), and copied in runs between them.
//!
//! Anything this serializer does not write the way serde_json does (floats, byte strings, map
//! keys other than strings and integers) is handed to serde_json itself, or refused: a caller
//! that gets an error serializes with serde_json instead ([`to_vec_into`] does).

use std::fmt;

use serde::ser::{self, Serialize};

/// Appends the compact JSON of `value` to `out`, exactly as `serde_json::to_writer` would; falls
/// back to serde_json for what this serializer does not handle. `out` holds only what serde_json
/// wrote when both fail.
pub(crate) fn to_vec_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let start = out.len();
    if value.serialize(&mut Json { out }).is_ok() {
        return Ok(());
    }
    out.truncate(start);
    let result = serde_json::to_writer(&mut *out, value);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Why this serializer gave up (the caller then asks serde_json).
#[derive(Debug)]
pub(crate) struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

struct Json<'o> {
    out: &'o mut Vec<u8>,
}

/// Writes `s` as a JSON string: `"` and `\` escaped with a backslash; `\b`, `\t`, `\n`, `\f`,
/// `\r` for those control characters and `\u00XX` (lowercase hex) for the others; every other
/// byte as it is.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0; // start of the bytes not yet copied
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let special = specials(u64::from_le_bytes(word));
        if special == 0 {
            i += 8;
            continue;
        }
        // Little-endian: the lowest set bit is in the first byte that needs an escape (exact;
        // bits above it may not be, so the scan starts again after it).
        let at = i + (special.trailing_zeros() / 8) as usize;
        out.extend_from_slice(&bytes[run..at]);
        escape_byte(out, bytes[at]);
        i = at + 1;
        run = i;
    }
    let tail = &bytes[i..];
    if !tail.is_empty() {
        // Fewer than eight bytes left: one more word. From a long string, its last eight bytes
        // with those already seen shifted out (zeros, which count as specials, are cleared
        // with them); from a short one, its bytes padded with spaces, which need no escape.
        let word = match bytes.len().checked_sub(8) {
            Some(last) => {
                let mut word = [0u8; 8];
                word.copy_from_slice(&bytes[last..]);
                let seen = 8 - tail.len();
                specials(u64::from_le_bytes(word)) >> (8 * seen) << (8 * seen)
            }
            None => {
                let mut word = [b' '; 8];
                for (w, b) in word.iter_mut().zip(tail) {
                    *w = *b;
                }
                specials(u64::from_le_bytes(word))
            }
        };
        if word != 0 {
            for (k, &b) in tail.iter().enumerate() {
                if needs_escape(b) {
                    out.extend_from_slice(&bytes[run..i + k]);
                    escape_byte(out, b);
                    run = i + k + 1;
                }
            }
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Per byte of `w`, the high bit set where the byte needs an escape: below 0x20, `"` or `\`.
/// Exact for the lowest such byte; a word without one gives 0.
fn specials(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    fn zero_bytes(w: u64) -> u64 {
        w.wrapping_sub(ONES) & !w & HIGHS
    }
    (w.wrapping_sub(ONES * 0x20) & !w & HIGHS)
        | zero_bytes(w ^ (ONES * u64::from(b'"')))
        | zero_bytes(w ^ (ONES * u64::from(b'\\')))
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn escape_byte(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x09 => out.extend_from_slice(b"\\t"),
        0x0a => out.extend_from_slice(b"\\n"),
        0x0c => out.extend_from_slice(b"\\f"),
        0x0d => out.extend_from_slice(b"\\r"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

fn write_int<I: itoa::Integer>(out: &mut Vec<u8>, v: I) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// What a compound value closes with.
#[derive(Clone, Copy)]
enum Close {
    Array,
    Object,
    /// A variant's content inside `{"variant": ...}`: the content's bracket, then `}`.
    VariantArray,
    VariantObject,
}

#[doc(hidden)]
pub(crate) struct Compound<'a, 'o> {
    json: &'a mut Json<'o>,
    first: bool,
    close: Close,
}

impl Compound<'_, '_> {
    fn comma(&mut self) {
        if self.first {
            self.first = false;
        } else {
            self.json.out.push(b',');
        }
    }

    fn finish(self) {
        let out = &mut self.json.out;
        match self.close {
            Close::Array => out.push(b']'),
            Close::Object => out.push(b'}'),
            Close::VariantArray => out.extend_from_slice(b"]}"),
            Close::VariantObject => out.extend_from_slice(b"}}"),
        }
    }
}

impl<'a, 'o> Json<'o> {
    fn compound(&'a mut self, open: &[u8], close: Close) -> Compound<'a, 'o> {
        self.out.extend_from_slice(open);
        Compound {
            json: self,
            first: true,
            close,
        }
    }

    fn variant_open(&mut self, variant: &str) {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
    }

    /// serde_json's own bytes for a value this serializer leaves to it.
    fn delegate<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        serde_json::to_writer(&mut *self.out, v).map_err(|e| Unsupported(e.to_string()))
    }
}

impl<'a, 'o> ser::Serializer for &'a mut Json<'o> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Compound<'a, 'o>;
    type SerializeTuple = Compound<'a, 'o>;
    type SerializeTupleStruct = Compound<'a, 'o>;
    type SerializeTupleVariant = Compound<'a, 'o>;
    type SerializeMap = Compound<'a, 'o>;
    type SerializeStruct = Compound<'a, 'o>;
    type SerializeStructVariant = Compound<'a, 'o>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Unsupported> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Unsupported> {
        self.delegate(&v)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Unsupported> {
        self.delegate(&v)
    }
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        write_str(self.out, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        self.delegate(v)
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Unsupported> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        write_str(self.out, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.variant_open(variant);
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a, 'o>, Unsupported> {
        Ok(self.compound(b"[", Close::Array))
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a, 'o>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'a, 'o>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a, 'o>, Unsupported> {
        self.variant_open(variant);
        Ok(self.compound(b"[", Close::VariantArray))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a, 'o>, Unsupported> {
        Ok(self.compound(b"{", Close::Object))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a, 'o>, Unsupported> {
        Ok(self.compound(b"{", Close::Object))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a, 'o>, Unsupported> {
        self.variant_open(variant);
        Ok(self.compound(b"{", Close::VariantObject))
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.comma();
        value.serialize(&mut *self.json)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.comma();
        key.serialize(MapKey {
            out: &mut *self.json.out,
        })
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.json.out.push(b':');
        value.serialize(&mut *self.json)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.comma();
        write_str(self.json.out, key);
        self.json.out.push(b':');
        value.serialize(&mut *self.json)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish();
        Ok(())
    }
}

/// Map keys: strings as they are, integers quoted (serde_json's rules); anything else is left
/// to serde_json.
struct MapKey<'o> {
    out: &'o mut Vec<u8>,
}

impl MapKey<'_> {
    fn quoted_int<I: itoa::Integer>(self, v: I) -> Result<(), Unsupported> {
        self.out.push(b'"');
        write_int(self.out, v);
        self.out.push(b'"');
        Ok(())
    }
}

fn unsupported_key() -> Unsupported {
    Unsupported("map key of a kind left to serde_json".into())
}

impl ser::Serializer for MapKey<'_> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = ser::Impossible<(), Unsupported>;
    type SerializeTuple = ser::Impossible<(), Unsupported>;
    type SerializeTupleStruct = ser::Impossible<(), Unsupported>;
    type SerializeTupleVariant = ser::Impossible<(), Unsupported>;
    type SerializeMap = ser::Impossible<(), Unsupported>;
    type SerializeStruct = ser::Impossible<(), Unsupported>;
    type SerializeStructVariant = ser::Impossible<(), Unsupported>;

    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        write_str(self.out, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        write_str(self.out, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Unsupported> {
        self.quoted_int(v)
    }
    fn serialize_bool(self, _v: bool) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_f32(self, _v: f32) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_f64(self, _v: f64) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        Err(unsupported_key())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(unsupported_key())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use gateway_core::{
        Access, AuditEvent, AuditRecord, AuthMethod, ClientInfo, Decision, ErrorKind,
        RecordedError, RecordedParameters, RecordedValue, Side, StatementObjects, Verdict,
    };

    use super::*;

    /// Strings that exercise every escape, the word boundaries and multi-byte text.
    const TEXTS: &[&str] = &[
        "",
        "a",
        "select 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        "quote \" and backslash \\ and slash /",
        "\u{0}\u{1}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}",
        "1234567\"",
        "12345678\"",
        "\"2345678",
        "é ü 日本語 🎉 and the end\\",
        "a somewhat longer text with a newline at the very end of its last word\n",
    ];

    fn same<T: Serialize>(value: &T) {
        let want = serde_json::to_vec(value).unwrap();
        let mut got = b"prefix".to_vec();
        value.serialize(&mut Json { out: &mut got }).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got[6..]),
            String::from_utf8_lossy(&want)
        );
        let mut via = Vec::new();
        to_vec_into(&mut via, value).unwrap();
        assert_eq!(via, want);
    }

    #[test]
    fn strings_match_serde_json() {
        for t in TEXTS {
            same(t);
        }
        // Every ASCII byte, at every offset within a word.
        for b in 0u8..0x80 {
            for pad in 0..9 {
                let s = format!("{}{}{}", "x".repeat(pad), b as char, "y".repeat(9 - pad));
                same(&s);
            }
        }
        same(&'"');
        same(&'\u{1}');
    }

    fn client(application: Option<&str>) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            addr: "[::1]:5432".parse().unwrap(),
            protocol: "postgres",
            tls: true,
            application: application.map(str::to_owned),
        })
    }

    fn events(text: &str) -> Vec<AuditEvent> {
        let sql: Arc<str> = Arc::from(text);
        let objects = Some(Arc::new(StatementObjects {
            reads: vec![text.to_owned(), "public.t".into()],
            writes: vec![],
            functions: vec!["now".into()],
        }));
        let parameters = Some(Arc::new(RecordedParameters {
            mode: "recorded",
            values: vec![
                RecordedValue::Null,
                RecordedValue::Text(text.to_owned()),
                RecordedValue::Detailed {
                    text: None,
                    hex: Some("00ff".into()),
                    bytes: 2,
                    truncated: false,
                },
                RecordedValue::Detailed {
                    text: Some(text.to_owned()),
                    hex: None,
                    bytes: 4096,
                    truncated: true,
                },
            ],
        }));
        let error = Some(RecordedError {
            side: Side::Upstream,
            code: Some("42P01".into()),
            message: text.to_owned(),
        });
        vec![
            AuditEvent::LoginFailed {
                user: text.to_owned(),
                database: "db".into(),
                kind: ErrorKind::Authentication,
                reason: text.to_owned(),
            },
            AuditEvent::SessionOpened {
                user: text.to_owned(),
                auth_method: AuthMethod::Jwt,
                groups: vec![text.to_owned(), "b".into()],
                access: Access::ReadOnly,
            },
            AuditEvent::SessionClosed {
                statements: u64::MAX,
                error: error.clone(),
            },
            AuditEvent::SessionClosed {
                statements: 0,
                error: None,
            },
            AuditEvent::StatementDenied {
                statement_id: 3,
                sql: Arc::clone(&sql),
                verdict: Verdict {
                    decision: Decision::NeedsApproval,
                    rule: Some(Arc::from(text)),
                    reason: Some(text.to_owned()),
                    syntax_error: None,
                },
                objects: objects.clone(),
                fingerprint: Some(Arc::from("0123456789abcdef")),
                parameters: parameters.clone(),
            },
            AuditEvent::StatementStarted {
                statement_id: 4,
                sql: Arc::clone(&sql),
                classification: Some(Arc::from("read")),
                objects: objects.clone(),
                fingerprint: Some(Arc::from("0123456789abcdef")),
                parameters: parameters.clone(),
                rule: Some(Arc::from(text)),
                approval_id: Some(Arc::from(text)),
            },
            AuditEvent::ApprovalRequested {
                statement_id: 6,
                request_id: Arc::from(text),
                new: true,
                sql: Arc::clone(&sql),
                fingerprint: Some(Arc::from("0123456789abcdef")),
                parameters: parameters.clone(),
                rule: Some(Arc::from(text)),
                waits: false,
            },
            AuditEvent::ApprovalEnded {
                statement_id: 6,
                request_id: Arc::from(text),
                outcome: "timed_out",
            },
            AuditEvent::AdminAction {
                action: "approval_approved",
                id: text.to_owned(),
                reason: Some(text.to_owned()),
                detail: serde_json::json!({ "quorum": 2, "by": [text, "b"], "break_glass": false }),
            },
            AuditEvent::StatementStarted {
                statement_id: 5,
                sql: Arc::clone(&sql),
                classification: None,
                objects: None,
                fingerprint: None,
                parameters: None,
                rule: None,
                approval_id: None,
            },
            AuditEvent::StatementFinished {
                statement_id: 4,
                rows: 1,
                tag: Some(text.to_owned()),
                affected: Some(3),
                error,
                duration: Duration::new(3, 141_592_653),
                skipped: true,
                masked: Some(Arc::from(vec![gateway_core::MaskedColumn {
                    column: Arc::from(text),
                    reason: Arc::from("pii: redact"),
                    values: 12,
                }])),
            },
        ]
    }

    #[test]
    fn every_kind_of_record_matches_serde_json() {
        for text in TEXTS {
            for event in events(text) {
                let record = AuditRecord {
                    time: UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456),
                    node: Arc::from(*text),
                    session_id: Arc::from("0f6c2a9e-4b7d"),
                    subject: Some(Arc::from(*text)),
                    target: None,
                    client: client(Some(text)),
                    event,
                };
                same(&record);
            }
        }
        // A start joined to its end (batched durability's one record per statement).
        let mut all = events("select 1");
        let finished = all.pop().unwrap();
        let started = all.pop().unwrap();
        let record = |event| AuditRecord {
            time: UNIX_EPOCH,
            node: Arc::from("n"),
            session_id: Arc::from("s"),
            subject: None,
            target: Some(Arc::from("t")),
            client: client(None),
            event,
        };
        let started = AuditRecord {
            event: AuditEvent::StatementStarted {
                statement_id: 4,
                sql: Arc::from("select 1"),
                classification: None,
                objects: None,
                fingerprint: None,
                parameters: None,
                rule: None,
                approval_id: None,
            },
            ..record(started)
        };
        let joined = started.join_end(record(finished)).ok().unwrap();
        same(&joined);
    }

    #[test]
    fn maps_floats_and_bytes_match_serde_json() {
        let mut m = BTreeMap::new();
        m.insert("b\"", vec![1.5f64, f64::NAN, -0.0, 1e300]);
        m.insert("a", vec![]);
        same(&m);
        let mut ints = BTreeMap::new();
        ints.insert(-3i64, "x");
        ints.insert(7, "y");
        same(&ints);
        same(&serde_json::json!({"n": null, "t": true, "f": 0.1, "o": {}, "a": [[], {}]}));
        same(&(1u8, "two", [3u16; 2]));
        same(&Some(()));
        same(&u128::MAX);
        same(&i128::MIN);
    }

    #[test]
    fn unsupported_keys_fall_back_to_serde_json() {
        let mut m = BTreeMap::new();
        m.insert(true, 1);
        let mut out = Vec::new();
        let r = to_vec_into(&mut out, &m);
        let want = serde_json::to_vec(&m);
        assert_eq!(r.is_ok(), want.is_ok());
        if let Ok(want) = want {
            assert_eq!(out, want);
        } else {
            assert!(out.is_empty());
        }
    }
}
