//! Hash tokens for every type that can carry one, and partial integers.
//!
//! A token is computed over the value's canonical form, not its wire bytes, so that a client
//! reading text and one reading binary see the same token for the same value: integers as their
//! decimal text, floats as their IEEE bits, numerics as their text, UUIDs and bytes as their raw
//! bytes. A value that does not decode as its type (it should not happen; the bytes come from the
//! server) is hashed as it is.

use std::borrow::Cow;
use std::sync::Arc;

use gateway_core::{ValueFormat, ValueMask, ValueType};

use super::{Constant, HashKey};

const HASH_DOMAIN: &[u8] = b"portcullis-mask-hash\0";

/// The mask for [`super::Strategy::Hash`] on `value_type` in `format`.
pub(crate) fn hash_mask(
    key: &Arc<HashKey>,
    value_type: ValueType,
    format: ValueFormat,
) -> Arc<dyn ValueMask> {
    let supported = matches!(
        value_type,
        ValueType::Text
            | ValueType::Json
            | ValueType::Jsonb
            | ValueType::Int2
            | ValueType::Int4
            | ValueType::Int8
            | ValueType::Float4
            | ValueType::Float8
            | ValueType::Numeric
            | ValueType::Uuid
            | ValueType::Bytes
    );
    if !supported {
        return Arc::new(Constant(None));
    }
    Arc::new(HashTyped {
        key: key.clone(),
        value_type,
        format,
    })
}

/// [`super::Strategy::Hash`] for one type and format.
#[derive(Debug)]
struct HashTyped {
    key: Arc<HashKey>,
    value_type: ValueType,
    format: ValueFormat,
}

impl ValueMask for HashTyped {
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        use ValueFormat::{Binary, Text};
        let binary = self.format == Binary;
        let out = match self.value_type {
            ValueType::Text => token_text(&self.tag(value)).to_vec(),
            ValueType::Json => quoted_token(&self.tag(value), false),
            ValueType::Jsonb => {
                let text = match (self.format, value.split_first()) {
                    (Binary, Some((1, text))) => text,
                    // An unknown jsonb version: we cannot tell what the text is.
                    (Binary, _) => return None,
                    (Text, _) => value,
                };
                quoted_token(&self.tag(text), binary)
            }
            ValueType::Int2 | ValueType::Int4 | ValueType::Int8 => {
                let width = int_width(self.value_type);
                let tag = match decode_int(value, width, self.format) {
                    Some(n) => self.tag(n.to_string().as_bytes()),
                    None => self.tag(value),
                };
                let max = match width {
                    2 => i16::MAX as u64,
                    4 => i32::MAX as u64,
                    _ => i64::MAX as u64,
                };
                let n = first_u64(&tag) & max;
                encode_int(n as i64, width, self.format)
            }
            ValueType::Float4 | ValueType::Float8 => {
                let single = self.value_type == ValueType::Float4;
                let tag = match decode_float(value, single, self.format) {
                    Some(f) => self.tag(&canonical_float(f).to_be_bytes()),
                    None => self.tag(value),
                };
                // An integer the type holds exactly: 24 bits of mantissa for float4, 53 for float8.
                let bits = if single { 24 } else { 53 };
                let n = first_u64(&tag) & ((1u64 << bits) - 1);
                match (self.format, single) {
                    (Text, _) => n.to_string().into_bytes(),
                    (Binary, true) => (n as f32).to_be_bytes().to_vec(),
                    (Binary, false) => (n as f64).to_be_bytes().to_vec(),
                }
            }
            ValueType::Numeric => {
                let text = match self.format {
                    Text => Cow::Borrowed(value),
                    Binary => match numeric_binary_to_text(value) {
                        Some(text) => Cow::Owned(text.into_bytes()),
                        None => Cow::Borrowed(value),
                    },
                };
                let n = first_u64(&self.tag(trim_ascii(&text))) & (i64::MAX as u64);
                match self.format {
                    Text => n.to_string().into_bytes(),
                    Binary => numeric_binary_from_u64(n),
                }
            }
            ValueType::Uuid => {
                let tag = match decode_uuid(value, self.format) {
                    Some(bytes) => self.tag(&bytes),
                    None => self.tag(value),
                };
                let mut uuid = [0u8; 16];
                uuid.copy_from_slice(&tag[..16]);
                // Version 4, RFC 4122 variant: what a random UUID looks like.
                uuid[6] = (uuid[6] & 0x0f) | 0x40;
                uuid[8] = (uuid[8] & 0x3f) | 0x80;
                match self.format {
                    Binary => uuid.to_vec(),
                    Text => uuid_text(&uuid).into_bytes(),
                }
            }
            ValueType::Bytes => {
                let raw = match self.format {
                    Binary => Cow::Borrowed(value),
                    Text => decode_bytea_hex(value).map_or(Cow::Borrowed(value), Cow::Owned),
                };
                let tag = self.tag(&raw);
                match self.format {
                    Binary => tag.to_vec(),
                    Text => {
                        let mut out = vec![0u8; 2 + 64];
                        out[..2].copy_from_slice(b"\\x");
                        // The buffer is exactly twice the tag's length: this cannot fail.
                        let _ = hex::encode_to_slice(tag, &mut out[2..]);
                        out
                    }
                }
            }
            _ => return None,
        };
        Some(Cow::Owned(out))
    }
}

impl HashTyped {
    fn tag(&self, canonical: &[u8]) -> [u8; 32] {
        self.key.tag(HASH_DOMAIN, canonical)
    }
}

/// `tok_` and the first 8 bytes of the tag in lowercase hex.
fn token_text(tag: &[u8; 32]) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(b"tok_");
    // 16 hex digits for 8 bytes: the sizes match.
    let _ = hex::encode_to_slice(&tag[..8], &mut out[4..]);
    out
}

/// The token as a JSON string literal, after jsonb's version byte when `jsonb_binary`.
fn quoted_token(tag: &[u8; 32], jsonb_binary: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(23);
    if jsonb_binary {
        out.push(1);
    }
    out.push(b'"');
    out.extend_from_slice(&token_text(tag));
    out.push(b'"');
    out
}

fn first_u64(tag: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag[..8]);
    u64::from_be_bytes(first)
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn int_width(value_type: ValueType) -> usize {
    match value_type {
        ValueType::Int2 => 2,
        ValueType::Int4 => 4,
        _ => 8,
    }
}

/// An integer column's value: decimal text, or big-endian bytes of the column's width.
fn decode_int(value: &[u8], width: usize, format: ValueFormat) -> Option<i64> {
    match format {
        ValueFormat::Text => std::str::from_utf8(value).ok()?.trim().parse().ok(),
        ValueFormat::Binary => match width {
            2 => Some(i64::from(i16::from_be_bytes(value.try_into().ok()?))),
            4 => Some(i64::from(i32::from_be_bytes(value.try_into().ok()?))),
            _ => Some(i64::from_be_bytes(value.try_into().ok()?)),
        },
    }
}

/// `n` (which fits the width) in the column's format.
fn encode_int(n: i64, width: usize, format: ValueFormat) -> Vec<u8> {
    match format {
        ValueFormat::Text => n.to_string().into_bytes(),
        ValueFormat::Binary => n.to_be_bytes()[8 - width..].to_vec(),
    }
}

fn decode_float(value: &[u8], single: bool, format: ValueFormat) -> Option<f64> {
    match (format, single) {
        (ValueFormat::Text, true) => {
            let text = std::str::from_utf8(value).ok()?.trim();
            text.parse::<f32>().ok().map(f64::from)
        }
        (ValueFormat::Text, false) => std::str::from_utf8(value).ok()?.trim().parse().ok(),
        (ValueFormat::Binary, true) => Some(f64::from(f32::from_be_bytes(value.try_into().ok()?))),
        (ValueFormat::Binary, false) => Some(f64::from_be_bytes(value.try_into().ok()?)),
    }
}

/// The bits of a float, with the values SQL calls equal made equal: -0 and 0, and every NaN.
fn canonical_float(f: f64) -> u64 {
    if f == 0.0 {
        0
    } else if f.is_nan() {
        f64::NAN.to_bits()
    } else {
        f.to_bits()
    }
}

/// A UUID's 16 bytes: binary as it is; text as 32 hex digits, hyphens and braces ignored.
fn decode_uuid(value: &[u8], format: ValueFormat) -> Option<[u8; 16]> {
    match format {
        ValueFormat::Binary => value.try_into().ok(),
        ValueFormat::Text => {
            let digits: Vec<u8> = value
                .iter()
                .copied()
                .filter(|c| !matches!(c, b'-' | b'{' | b'}'))
                .collect();
            let mut out = [0u8; 16];
            hex::decode_to_slice(digits, &mut out).ok()?;
            Some(out)
        }
    }
}

fn uuid_text(uuid: &[u8; 16]) -> String {
    let h = hex::encode(uuid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// bytea in its hex text form (`\x` then hex digits) as raw bytes; `None` for the older escape
/// form, which is then hashed as it is.
fn decode_bytea_hex(value: &[u8]) -> Option<Vec<u8>> {
    let digits = value.strip_prefix(b"\\x")?;
    hex::decode(digits).ok()
}

/// PostgreSQL's binary numeric as its text form (`get_str_from_var`): `ndigits`, `weight`,
/// `sign`, `dscale` (each 16 bits), then `ndigits` base-10000 digits.
fn numeric_binary_to_text(value: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        let bytes = value.get(i * 2..i * 2 + 2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    if value.len() != 8 + ndigits * 2 {
        return None;
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let digit = |i: i32| -> Option<u16> {
        if i < 0 || i as usize >= ndigits {
            Some(0)
        } else {
            let d = word(4 + i as usize)?;
            (d < 10_000).then_some(d)
        }
    };
    // Bound the work on hostile input: PostgreSQL's weight and scale are far below these.
    if !(-10_000..=10_000).contains(&weight) || dscale > 20_000 {
        return None;
    }
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            if i == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(i)?));
            i += 1;
        }
        fraction.truncate(dscale);
        out.push_str(&fraction);
    }
    Some(out)
}

/// A non-negative integer in PostgreSQL's binary numeric form, as the server would send it:
/// base-10000 digits without trailing zero digits, scale 0.
fn numeric_binary_from_u64(mut n: u64) -> Vec<u8> {
    let mut groups = Vec::new();
    while n > 0 {
        groups.push((n % 10_000) as u16);
        n /= 10_000;
    }
    groups.reverse();
    let weight = groups.len().saturating_sub(1) as i16;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let mut out = Vec::with_capacity(8 + groups.len() * 2);
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    out
}

/// The mask for [`super::Strategy::Partial`] on integers.
pub(crate) fn partial_integer(
    value_type: ValueType,
    format: ValueFormat,
    keep_last: usize,
) -> Arc<dyn ValueMask> {
    Arc::new(PartialInteger {
        width: int_width(value_type),
        format,
        keep_last,
    })
}

/// Keeps the last `keep_last` decimal digits of an integer's magnitude; the sign and the other
/// digits become zero. A number with no more digits than that becomes 0.
#[derive(Debug)]
struct PartialInteger {
    width: usize,
    format: ValueFormat,
    keep_last: usize,
}

impl ValueMask for PartialInteger {
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let n = decode_int(value, self.width, self.format)?;
        let magnitude = n.unsigned_abs();
        let digits = magnitude.checked_ilog10().map_or(1, |l| l as usize + 1);
        let kept = if digits <= self.keep_last {
            0
        } else {
            // keep_last < digits <= 20, so the power fits.
            magnitude % 10u64.pow(self.keep_last as u32)
        };
        // kept < 10^keep_last <= |n|, and |n| is at most the type's maximum plus one for the
        // most negative value, whose magnitude ends in 8: the kept digits fit the type.
        Some(Cow::Owned(encode_int(kept as i64, self.width, self.format)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary_round_trips_through_text() {
        for n in [
            0u64,
            1,
            9_999,
            10_000,
            12_345_678,
            100_000_000,
            i64::MAX as u64,
        ] {
            let bin = numeric_binary_from_u64(n);
            assert_eq!(numeric_binary_to_text(&bin).unwrap(), n.to_string(), "{n}");
        }
        assert_eq!(numeric_binary_from_u64(0), vec![0u8; 8]);
        // 12.50: ndigits 2, weight 0, sign 0, dscale 2, digits 12, 5000.
        let v = [0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88];
        assert_eq!(numeric_binary_to_text(&v).unwrap(), "12.50");
        // -0.0001: ndigits 1, weight -1, sign 0x4000, dscale 4, digit 1.
        let v = [0, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0, 1];
        assert_eq!(numeric_binary_to_text(&v).unwrap(), "-0.0001");
        assert_eq!(numeric_binary_to_text(&[0, 5, 0, 0]), None);
    }

    #[test]
    fn partial_integer_keeps_trailing_digits() {
        let mask = PartialInteger {
            width: 4,
            format: ValueFormat::Text,
            keep_last: 4,
        };
        let out =
            |v: &str| String::from_utf8(mask.mask(v.as_bytes()).unwrap().into_owned()).unwrap();
        assert_eq!(out("123456789"), "6789");
        assert_eq!(out("-123456789"), "6789");
        assert_eq!(out("1234"), "0");
        assert_eq!(out("12345"), "2345");
        assert_eq!(out("0"), "0");
        let mask = PartialInteger {
            width: 2,
            format: ValueFormat::Binary,
            keep_last: 4,
        };
        let min = i16::MIN.to_be_bytes();
        let out = mask.mask(&min).unwrap();
        assert_eq!(i16::from_be_bytes([out[0], out[1]]), 2768);
    }
}
