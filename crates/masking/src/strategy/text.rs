//! Strategies whose output depends on a text value: partial, e-mail, card, national id.
//!
//! Text values arrive as their UTF-8 bytes in both formats. A value that is not UTF-8 cannot be
//! masked character by character, so it is redacted whole.

use std::borrow::Cow;
use std::sync::Arc;

use gateway_core::ValueMask;

use super::{HashKey, REDACTED_TEXT};

/// [`super::Strategy::Partial`] on text.
#[derive(Debug)]
pub(crate) struct PartialText {
    pub(crate) keep_last: usize,
}

impl ValueMask for PartialText {
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let Ok(text) = std::str::from_utf8(value) else {
            return Some(Cow::Borrowed(REDACTED_TEXT));
        };
        let chars = text.chars().count();
        // A value no longer than what would be kept is never shown whole: all stars.
        let (starred, kept) = if chars <= self.keep_last {
            (chars, "")
        } else {
            let starred = chars - self.keep_last;
            let cut = text
                .char_indices()
                .nth(starred)
                .map_or(text.len(), |(i, _)| i);
            (starred, &text[cut..])
        };
        let mut out = Vec::with_capacity(starred + kept.len());
        out.resize(starred, b'*');
        out.extend_from_slice(kept.as_bytes());
        Some(Cow::Owned(out))
    }
}

/// [`super::Strategy::Email`] on text: `j***@example.com`; anything that is not an address is
/// redacted.
#[derive(Debug)]
pub(crate) struct EmailText;

impl ValueMask for EmailText {
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let parts = std::str::from_utf8(value)
            .ok()
            .and_then(|text| split_email(text.trim()));
        let Some((first, domain)) = parts else {
            return Some(Cow::Borrowed(REDACTED_TEXT));
        };
        let mut out = Vec::with_capacity(first.len_utf8() + 4 + domain.len());
        let mut buf = [0u8; 4];
        out.extend_from_slice(first.encode_utf8(&mut buf).as_bytes());
        out.extend_from_slice(b"***@");
        out.extend_from_slice(domain.as_bytes());
        Some(Cow::Owned(out))
    }
}

/// The first character of the local part and the domain of an address, if `text` is one: a
/// non-empty local part without spaces, quotes or angle brackets, and a domain of at least two
/// dot-separated labels of letters, digits and hyphens, the last at least two letters.
fn split_email(text: &str) -> Option<(char, &str)> {
    let (local, domain) = text.rsplit_once('@')?;
    let first = local.chars().next()?;
    let bad = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '@' | '"' | '<' | '>' | '(' | ')' | '[' | ']' | '\\' | ',' | ';' | ':'
            )
    };
    if local.chars().any(bad)
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return None;
    }
    // Per value, so no allocation: the labels are checked as they are split off.
    let (mut labels, mut tld) = (0usize, "");
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if !ok {
            return None;
        }
        labels += 1;
        tld = label;
    }
    if labels < 2 || tld.chars().count() < 2 || !tld.chars().all(char::is_alphabetic) {
        return None;
    }
    Some((first, domain))
}

/// A stream of keyed bytes for one value: HMAC-SHA-256 blocks over (domain, block number, data).
struct KeyStream<'k> {
    key: &'k HashKey,
    domain: &'static [u8],
    data: &'k [u8],
    block: u32,
    buffer: [u8; 32],
    used: usize,
}

impl<'k> KeyStream<'k> {
    fn new(key: &'k HashKey, domain: &'static [u8], data: &'k [u8]) -> Self {
        Self {
            key,
            domain,
            data,
            block: 0,
            buffer: [0; 32],
            used: 32,
        }
    }

    fn byte(&mut self) -> u8 {
        if self.used == self.buffer.len() {
            self.buffer = self.key.tag_block(self.domain, self.block, self.data);
            self.block = self.block.wrapping_add(1);
            self.used = 0;
        }
        let b = self.buffer[self.used];
        self.used += 1;
        b
    }

    /// A uniform value below `n` (by rejection, so that no digit or letter is more likely).
    fn below(&mut self, n: u8) -> u8 {
        let limit = 256 - (256 % n as u16);
        loop {
            let b = self.byte();
            if (b as u16) < limit {
                return b % n;
            }
        }
    }

    fn digit(&mut self) -> u8 {
        b'0' + self.below(10)
    }

    fn letter(&mut self, upper: bool) -> u8 {
        let base = if upper { b'A' } else { b'a' };
        base + self.below(26)
    }
}

/// Whether the ASCII digits pass the Luhn check.
// `is_multiple_of` is newer than the workspace's rust-version.
#[allow(clippy::manual_is_multiple_of)]
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    !digits.is_empty() && luhn_sum(digits) % 10 == 0
}

/// The Luhn sum of ASCII digits (the rightmost is the check digit).
fn luhn_sum(digits: &[u8]) -> u32 {
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d.saturating_sub(b'0'));
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum()
}

/// Characters a card number may be grouped with.
fn is_card_separator(c: u8) -> bool {
    c == b' ' || c == b'-'
}

/// [`super::Strategy::Card`] on text.
#[derive(Debug)]
pub(crate) struct CardText {
    pub(crate) key: Arc<HashKey>,
}

impl ValueMask for CardText {
    #[allow(clippy::manual_is_multiple_of)]
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let redacted = Some(Cow::Borrowed(REDACTED_TEXT));
        // Digits grouped by spaces or dashes, nothing else: a value with letters or other marks
        // is not a card number we can keep the shape of.
        if !value
            .iter()
            .all(|&c| c.is_ascii_digit() || is_card_separator(c))
        {
            return redacted;
        }
        let digits: Vec<u8> = value.iter().copied().filter(u8::is_ascii_digit).collect();
        if !(12..=19).contains(&digits.len()) {
            return redacted;
        }
        // The same number gives the same masked digits however it is grouped.
        let mut stream = KeyStream::new(&self.key, b"portcullis-mask-card\0", &digits);
        let masked_count = digits.len() - 4;
        let mut new_digits = digits.clone();
        for d in &mut new_digits[..masked_count] {
            *d = stream.digit();
        }
        // The check digit is among the four kept ones, so the first masked digit is chosen to
        // make the whole number pass: doubled or not, 0..=9 map one to one onto residues.
        new_digits[0] = b'0';
        let rest = luhn_sum(&new_digits);
        let doubled = (new_digits.len() - 1) % 2 == 1;
        for candidate in 0..10u8 {
            let contribution = if doubled {
                let x = u32::from(candidate) * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                u32::from(candidate)
            };
            if (rest + contribution) % 10 == 0 {
                new_digits[0] = b'0' + candidate;
                break;
            }
        }
        let mut next = new_digits.into_iter();
        let out = value
            .iter()
            .map(|&c| {
                if c.is_ascii_digit() {
                    next.next().unwrap_or(b'0')
                } else {
                    c
                }
            })
            .collect();
        Some(Cow::Owned(out))
    }
}

/// [`super::Strategy::NationalId`] on text.
#[derive(Debug)]
pub(crate) struct NationalIdText {
    pub(crate) key: Arc<HashKey>,
}

impl ValueMask for NationalIdText {
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let Ok(text) = std::str::from_utf8(value) else {
            return Some(Cow::Borrowed(REDACTED_TEXT));
        };
        let digits = text.bytes().filter(u8::is_ascii_digit).count();
        // Like partial: an identifier of four digits or fewer keeps none of them.
        let keep_from = if digits > 4 { digits - 4 } else { digits };
        // The identifier's letters and digits, without separators: the same identifier gives the
        // same mask however it is written.
        let data: Vec<u8> = text
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(|c| {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf).as_bytes().to_vec()
            })
            .collect();
        let mut stream = KeyStream::new(&self.key, b"portcullis-mask-national-id\0", &data);
        let mut out = Vec::with_capacity(value.len());
        let mut seen_digits = 0;
        for c in text.chars() {
            if c.is_ascii_digit() {
                let kept = seen_digits >= keep_from;
                seen_digits += 1;
                out.push(if kept { c as u8 } else { stream.digit() });
            } else if c.is_alphabetic() {
                out.push(stream.letter(c.is_uppercase()));
            } else if c.is_numeric() {
                // Digits of other scripts: never kept.
                out.push(stream.digit());
            } else {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        Some(Cow::Owned(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(mask: &dyn ValueMask, value: &str) -> String {
        String::from_utf8(mask.mask(value.as_bytes()).unwrap().into_owned()).unwrap()
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(!luhn_valid(b""));
    }

    #[test]
    fn partial_counts_characters() {
        let mask = PartialText { keep_last: 4 };
        assert_eq!(masked(&mask, "123456789"), "*****6789");
        assert_eq!(masked(&mask, "héllo wörld"), "*******örld");
        assert_eq!(masked(&mask, "abcd"), "****");
        assert_eq!(masked(&mask, "ab"), "**");
        assert_eq!(masked(&mask, ""), "");
        assert_eq!(mask.mask(&[0xff, 0xfe]).as_deref(), Some(REDACTED_TEXT));
    }

    #[test]
    fn email_keeps_first_character_and_domain() {
        let mask = EmailText;
        assert_eq!(masked(&mask, "jane.doe@example.com"), "j***@example.com");
        assert_eq!(masked(&mask, " Émile@exemple.fr "), "É***@exemple.fr");
        for not_email in [
            "user@localhost",
            "a@b",
            "@example.com",
            "jane doe@x.com",
            "x@y.c0m",
            "",
        ] {
            assert_eq!(masked(&mask, not_email), "****", "{not_email}");
        }
    }

    #[test]
    fn card_keeps_shape_last_four_and_luhn() {
        let key = Arc::new(HashKey::from_bytes([3; 32]));
        let mask = CardText { key };
        for card in [
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "340000000000009",
            "4222222222222",
        ] {
            let out = masked(&mask, card);
            assert_eq!(out.len(), card.len());
            assert_eq!(&out[out.len() - 4..], &card[card.len() - 4..]);
            let digits: Vec<u8> = out.bytes().filter(u8::is_ascii_digit).collect();
            assert!(luhn_valid(&digits), "{out}");
            assert_ne!(out, card);
        }
        assert_eq!(masked(&mask, "4111 1111"), "****");
        assert_eq!(masked(&mask, "card 4111111111111111"), "****");
    }

    #[test]
    fn national_id_keeps_separators_case_and_last_four() {
        let key = Arc::new(HashKey::from_bytes([4; 32]));
        let mask = NationalIdText { key };
        let out = masked(&mask, "123-45-6789");
        assert!(out.ends_with("-6789") && out.as_bytes()[3] == b'-', "{out}");
        let out = masked(&mask, "QQ 12 34 56 C");
        let b = out.as_bytes();
        assert!(
            b[0].is_ascii_uppercase() && b[1].is_ascii_uppercase() && b[12].is_ascii_uppercase()
        );
        assert!(out.ends_with("34 56 ") || out.contains(" 34 56 "), "{out}");
        assert_eq!(masked(&mask, "1234").len(), 4);
        assert_ne!(masked(&mask, "1234"), "1234");
    }
}
