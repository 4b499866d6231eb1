//! Statement bytes as the server will read them. Protocols whose clients may send text in a
//! character set other than UTF-8 (MySQL's `character_set_client`) hand the core the bytes and
//! the encoding; the core judges and audits the text the server will see, in UTF-8.

use std::borrow::Cow;

use crate::error::{ErrorKind, GatewayError, Side};

/// How a client's statement bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TextEncoding {
    /// UTF-8 (MySQL's utf8mb4, utf8mb3; PostgreSQL's UTF8).
    Utf8,
    /// MySQL's `latin1`, which is Windows-1252 (not ISO 8859-1): 0x80-0x9F are the Windows
    /// characters, and the five bytes Windows leaves undefined map to the C1 controls.
    Latin1,
    /// An ASCII-compatible character set the gateway has no table for: text in ASCII reads the
    /// same in it, anything else is refused.
    AsciiOnly,
}

/// Windows-1252's characters for 0x80-0x9F (MySQL's latin1). Written out rather than taken from
/// a crate: it is the only table the gateway needs, and the encoding crates bring dozens.
const LATIN1_HIGH: [char; 32] = [
    '\u{20AC}', '\u{0081}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{008D}', '\u{017D}', '\u{008F}',
    '\u{0090}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{009D}', '\u{017E}', '\u{0178}',
];

/// The text of `bytes` in `encoding`; borrowed when it is already UTF-8 (all ASCII, or UTF-8).
/// Bytes the encoding cannot read are an error: the gateway does not judge a text it cannot read
/// as the server does.
pub fn decode(bytes: &[u8], encoding: TextEncoding) -> Result<Cow<'_, str>, GatewayError> {
    if bytes.is_ascii() {
        // ASCII reads the same in every encoding here; from_utf8 cannot fail on it.
        return std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| unreadable("the text"));
    }
    match encoding {
        TextEncoding::Utf8 => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| unreadable("UTF-8")),
        TextEncoding::Latin1 => Ok(Cow::Owned(
            bytes
                .iter()
                .map(|&b| match b {
                    0x80..=0x9f => LATIN1_HIGH[usize::from(b - 0x80)],
                    _ => char::from(b),
                })
                .collect(),
        )),
        TextEncoding::AsciiOnly => Err(GatewayError::new(
            ErrorKind::Unsupported,
            Side::Client,
            "statement text outside ASCII is accepted through the gateway only in utf8mb4 or latin1",
        )
        .with_hint("use the utf8mb4 character set, and hex literals (X'..') for binary values")),
    }
}

fn unreadable(what: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::Unsupported,
        Side::Client,
        format!("statement text that is not valid {what} is not accepted through the gateway"),
    )
    .with_hint("use the utf8mb4 character set, and hex literals (X'..') for binary values")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_and_utf8_are_borrowed() {
        assert!(matches!(
            decode(b"select 1", TextEncoding::AsciiOnly).unwrap(),
            Cow::Borrowed("select 1")
        ));
        assert!(matches!(
            decode("select 'é'".as_bytes(), TextEncoding::Utf8).unwrap(),
            Cow::Borrowed("select 'é'")
        ));
        assert!(decode(b"select '\xe9'", TextEncoding::Utf8).is_err());
    }

    #[test]
    fn latin1_is_read_as_windows_1252() {
        assert_eq!(
            decode(b"select '\xe9\x80\x93\x81'", TextEncoding::Latin1).unwrap(),
            "select '\u{e9}\u{20ac}\u{201c}\u{81}'"
        );
        // A quote is a quote in latin1: no byte of it hides one.
        assert_eq!(decode(b"'\x5c'", TextEncoding::Latin1).unwrap(), "'\\'");
    }

    #[test]
    fn other_encodings_take_ascii_only() {
        let e = decode(b"select '\xe9'", TextEncoding::AsciiOnly).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
    }
}
