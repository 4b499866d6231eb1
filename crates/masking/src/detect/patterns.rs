//! The candidate patterns of each detector and the checks that turn a candidate into a finding.
//!
//! A pattern is deliberately loose and cheap (all of them run together as one `RegexSet` pass);
//! the check is where precision comes from: checksums (Luhn, mod 97), number plans, prefixes,
//! decoding (JWT), and the characters around the candidate ("not part of a longer number").
//!
//! Patterns use ASCII classes and ASCII word boundaries only: Unicode `\d` would take digits of
//! other scripts, and a Unicode `\b` keeps the regex engine off its fastest path on non-ASCII
//! text.

use std::ops::Range;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use super::DetectorKind;
use crate::strategy::luhn_valid;

/// A candidate's check: the finding's byte range in `text` (a match may be trimmed, or
/// extended, as for a private key's body), or `None` when the candidate is not the thing.
pub(super) type Check = fn(text: &str, candidate: Range<usize>) -> Option<Range<usize>>;

/// One candidate pattern of a detector.
pub(super) struct PatternSpec {
    pub(super) kind: DetectorKind,
    pub(super) regex: String,
    /// When set, the finding is this capture group (the value of `password=...`), not the match.
    pub(super) group: Option<usize>,
    pub(super) check: Check,
}

/// Where a token may start: at an ASCII word boundary, or right after a JSON escape such as `\n`
/// (the escape is then trimmed off the match; in `\nAKIA...` there is no word boundary between
/// `n` and `A`).
const START: &str = r"(?:(?-u:\b)|\\[nrtbf])";
/// An ASCII word boundary.
const B: &str = r"(?-u:\b)";
/// Between a key and its value: optional closing quote (escaped inside a JSON string), then
/// `=`, `:`, `:=` or `=>`, then an optional opening quote.
const ASSIGN: &str = r#"\\?["']?[ \t]{0,16}(?::=|=>|=|:)[ \t]{0,16}(?:\\?["'])?"#;

pub(super) fn specs(kind: DetectorKind) -> Vec<PatternSpec> {
    let spec = |regex: String, group: Option<usize>, check: Check| PatternSpec {
        kind,
        regex,
        group,
        check,
    };
    match kind {
        DetectorKind::Email => vec![spec(
            r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}"
                .into(),
            None,
            check_email,
        )],
        DetectorKind::Card => vec![spec(
            format!(r"{START}[0-9](?:[ -]?[0-9]){{12,18}}{B}"),
            None,
            check_card,
        )],
        DetectorKind::Ssn => vec![spec(
            format!(r"{START}[0-9]{{3}}-[0-9]{{2}}-[0-9]{{4}}{B}"),
            None,
            check_ssn,
        )],
        DetectorKind::Iban => vec![spec(
            format!(
                r"{START}[A-Z]{{2}}[0-9]{{2}}(?: ?[A-Z0-9]{{4}}){{2,7}}(?: ?[A-Z0-9]{{1,3}})?{B}"
            ),
            None,
            check_iban,
        )],
        DetectorKind::Phone => vec![
            // E.164-like: + and 8 to 15 digits, single spaces or dashes, an area in parentheses.
            spec(
                r"\+[1-9](?:[ -]?(?:\([0-9]{1,4}\)|[0-9])){6,16}".into(),
                None,
                check_e164,
            ),
            // North American: (415) 555-2671, 1 (415) 555-2671.
            spec(
                format!(r"(?:{B}1[ .-]?)?\([2-9][0-9]{{2}}\)[ ]?[2-9][0-9]{{2}}[-.][0-9]{{4}}{B}"),
                None,
                check_nanp,
            ),
            // North American: 415-555-2671, 415.555.2671, 1-415-555-2671.
            spec(
                format!(r"{START}(?:1[ .-])?[2-9][0-9]{{2}}[-.][2-9][0-9]{{2}}[-.][0-9]{{4}}{B}"),
                None,
                check_nanp,
            ),
        ],
        DetectorKind::Secret => vec![
            // AWS access key ids.
            spec(
                format!(r"{START}(?:AKIA|ASIA)[0-9A-Z]{{16}}{B}"),
                None,
                check_token,
            ),
            // AWS secret access keys: 40 base64 characters, only where named as such.
            spec(
                format!(
                    r"(?i:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key){ASSIGN}([A-Za-z0-9/+]{{40}})"
                ),
                Some(1),
                check_aws_secret,
            ),
            // GitHub tokens: classic and fine-grained.
            spec(
                format!(
                    r"{START}(?:gh[pousr]_[A-Za-z0-9]{{36}}|github_pat_[A-Za-z0-9_]{{22,255}}){B}"
                ),
                None,
                check_token,
            ),
            // Slack tokens.
            spec(
                format!(r"{START}xox[baprs]-[A-Za-z0-9-]{{10,250}}"),
                None,
                check_token_end,
            ),
            // Stripe live secret and restricted keys.
            spec(
                format!(r"{START}[sr]k_live_[A-Za-z0-9]{{16,247}}{B}"),
                None,
                check_token,
            ),
            // Google API keys.
            spec(
                format!(r"{START}AIza[0-9A-Za-z_-]{{35}}"),
                None,
                check_token_end,
            ),
            // `password=...`, `"api_key": "..."`, `client_secret: ...`: the value only.
            spec(
                format!(
                    r#"{START}(?i:(?:[a-z0-9]{{1,32}}[_.-]){{0,4}}(?:password|passwd|passphrase|pass_phrase|secret|client[_-]?secret|secret[_-]?key|api[_-]?key|apikey|api[_-]?token|access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?token)){B}{ASSIGN}((?:[^\s"'\\,;&<>]|\\[^"'\s]){{1,256}})"#
                ),
                Some(1),
                check_assigned_secret,
            ),
            // `Authorization: Bearer <token>`: the token only.
            spec(
                format!(r"(?i:authorization){ASSIGN}(?i:bearer)[ \t]{{1,16}}([A-Za-z0-9._~+/-]{{1,256}}={{0,2}})"),
                Some(1),
                check_bearer,
            ),
            // Credentials in a URL: scheme://user:password@host, the password only.
            spec(
                r#"[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/:@"'\\]{1,128}:([^\s/@"'\\]{1,256})@"#.into(),
                Some(1),
                check_url_password,
            ),
        ],
        DetectorKind::Jwt => vec![spec(
            format!(
                r"{START}e[wy][A-Za-z0-9_-]{{4,}}={{0,2}}\.e[wy][A-Za-z0-9_-]{{4,}}={{0,2}}\.[A-Za-z0-9_-]*={{0,2}}"
            ),
            None,
            check_jwt,
        )],
        DetectorKind::PrivateKey => vec![spec(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----".into(),
            None,
            check_private_key,
        )],
    }
}

// ---------------------------------------------------------------------------------------------
// Context
// ---------------------------------------------------------------------------------------------

/// The byte before `start`, with a JSON escape (`\n`, `\t`, ...) ending there read as the
/// whitespace it stands for.
fn before(text: &str, start: usize) -> Option<u8> {
    let b = text.as_bytes();
    let prev = *b.get(start.checked_sub(1)?)?;
    if start >= 2
        && matches!(prev, b'n' | b'r' | b't' | b'b' | b'f')
        && odd_backslashes(b, start - 1)
    {
        return Some(b' ');
    }
    Some(prev)
}

/// The byte `n` places before `start` (1 = the byte just before), raw.
fn before_n(text: &str, start: usize, n: usize) -> Option<u8> {
    text.as_bytes().get(start.checked_sub(n)?).copied()
}

fn after(text: &str, end: usize) -> Option<u8> {
    text.as_bytes().get(end).copied()
}

fn after_n(text: &str, end: usize, n: usize) -> Option<u8> {
    text.as_bytes().get(end + n - 1).copied()
}

/// Whether the run of backslashes ending just before `at` is odd (so the byte at `at` is
/// escaped).
pub(super) fn odd_backslashes(bytes: &[u8], at: usize) -> bool {
    bytes[..at]
        .iter()
        .rev()
        .take_while(|&&c| c == b'\\')
        .count()
        % 2
        == 1
}

/// A match that starts with an escape (`\n`, consumed by [`START`]), or starts just after a
/// backslash (the letter of an escape, as in `\njane@example.com`), begins after the escape.
fn skip_escape(text: &str, range: Range<usize>) -> Range<usize> {
    let b = text.as_bytes();
    let mut start = range.start;
    if b.get(start) == Some(&b'\\') && !odd_backslashes(b, start) {
        // Consumed by START: `\` and one letter.
        start += 2;
    } else if start > 0 && odd_backslashes(b, start) {
        // The match began inside an escape: `\uXXXX` or `\X`.
        let is_unicode = b.get(start) == Some(&b'u')
            && b.get(start + 1..start + 5)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        start += if is_unicode { 5 } else { 1 };
    }
    start.min(range.end)..range.end
}

fn is_digit(c: Option<u8>) -> bool {
    c.is_some_and(|c| c.is_ascii_digit())
}

fn is_alnum(c: Option<u8>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric())
}

/// A number continues before `start`: an alphanumeric, a digit then `.` (the candidate is the
/// fraction of a decimal, the tail of a version), or an alphanumeric then `-`, `_` or `/` (the
/// tail of a longer identifier: `PN-415-555-2671`). A comma is a CSV field break.
fn number_continues_before(text: &str, start: usize) -> bool {
    let prev = before(text, start);
    let prev2 = before_n(text, start, 2);
    is_alnum(prev)
        || (prev == Some(b'.') && is_digit(prev2))
        || (matches!(prev, Some(b'-' | b'_' | b'/')) && is_alnum(prev2))
}

/// A number continues after `end`: an alphanumeric, `.` then a digit, or `-`, `_` or `/` then
/// an alphanumeric.
fn number_continues_after(text: &str, end: usize) -> bool {
    let next = after(text, end);
    let next2 = after_n(text, end, 2);
    is_alnum(next)
        || (next == Some(b'.') && is_digit(next2))
        || (matches!(next, Some(b'-' | b'_' | b'/')) && is_alnum(next2))
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// File extensions that look like top-level domains in `icon@2x.png`.
#[rustfmt::skip]
const FILE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "css", "js", "mjs",
    "ts", "tsx", "jsx", "json", "map", "html", "htm", "xml", "txt", "md", "pdf", "zip", "gz",
    "tar", "rs", "py", "rb", "go", "java", "class", "jar", "so", "dll", "exe", "lock", "yml",
    "yaml", "toml", "csv", "log", "mp3", "mp4", "woff", "woff2", "ttf",
];

fn check_email(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let range = skip_escape(text, candidate);
    let email = &text[range.clone()];
    let (local, domain) = email.split_once('@')?;
    if local.is_empty()
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || local.len() > 64
    {
        return None;
    }
    // A local part longer than 64 characters (the pattern takes at most 64): not an address.
    if matches!(before_n(text, range.start, 1), Some(c) if c.is_ascii_alphanumeric() || b"._%+-".contains(&c))
        && !(range.start >= 2 && odd_backslashes(text.as_bytes(), range.start - 1))
    {
        return None;
    }
    // The address continues as a domain would (`a@b.com2`, `a@b.com-x`) or is a longer word.
    let next = after(text, range.end);
    if matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'@') {
        return None;
    }
    if matches!(next, Some(b'.')) && is_alnum(after_n(text, range.end, 2)) {
        return None;
    }
    for label in domain.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') || label.len() > 63 {
            return None;
        }
    }
    // `scheme://user:password@host`: the user information of a URL (its password is the
    // secret detector's), not an address.
    let mut window_start = range.start.saturating_sub(256);
    while !text.is_char_boundary(window_start) {
        window_start += 1;
    }
    let window = &text[window_start..range.start];
    let token = window
        .rfind(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .map_or(window, |i| &window[i + 1..]);
    if token.contains("://") {
        return None;
    }
    let tld = domain.rsplit('.').next()?;
    if FILE_EXTENSIONS
        .iter()
        .any(|ext| tld.eq_ignore_ascii_case(ext))
    {
        return None;
    }
    Some(range)
}

/// The card brands whose numbers we look for: (prefix range on the leading digits, lengths).
/// Maestro and other debit-only ranges start with digits shared by too many other numbers.
#[rustfmt::skip]
const CARD_BRANDS: &[(u32, u32, u32, &[usize])] = &[
    // (digits of prefix, first, last, lengths)
    (1, 4, 4, &[13, 16, 19]),                           // Visa
    (2, 51, 55, &[16]),                                 // Mastercard
    (4, 2221, 2720, &[16]),                             // Mastercard 2-series
    (2, 34, 34, &[15]),                                 // American Express
    (2, 37, 37, &[15]),                                 // American Express
    (4, 6011, 6011, &[16, 17, 18, 19]),                 // Discover
    (2, 65, 65, &[16, 17, 18, 19]),                     // Discover
    (3, 644, 649, &[16, 17, 18, 19]),                   // Discover
    (4, 3528, 3589, &[16, 17, 18, 19]),                 // JCB
    (2, 36, 36, &[14, 15, 16, 17, 18, 19]),             // Diners Club
    (2, 38, 38, &[14, 15, 16, 17, 18, 19]),             // Diners Club
    (3, 300, 305, &[14, 15, 16, 17, 18, 19]),           // Diners Club
    (2, 62, 62, &[16, 17, 18, 19]),                     // UnionPay
];

/// Whether ASCII digits start with a known card prefix and have that brand's length.
pub(super) fn known_card_prefix(digits: &[u8]) -> bool {
    CARD_BRANDS.iter().any(|&(n, first, last, lengths)| {
        let n = n as usize;
        if digits.len() < n || !lengths.contains(&digits.len()) {
            return false;
        }
        let prefix = digits[..n]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        (first..=last).contains(&prefix)
    })
}

fn check_card(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let range = skip_escape(text, candidate);
    let raw = &text.as_bytes()[range.clone()];
    if number_continues_before(text, range.start) || number_continues_after(text, range.end) {
        return None;
    }
    let separators: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_digit())
        .collect();
    if let Some(&sep) = separators.first() {
        // One kind of separator, groups of 3 to 6 digits (4-4-4-4, 4-6-5, 4-6-4, ...): single
        // digits separated by spaces are a list of numbers, not a card.
        if separators.iter().any(|&c| c != sep) {
            return None;
        }
        if raw
            .split(|&c| c == sep)
            .any(|group| !(3..=6).contains(&group.len()))
        {
            return None;
        }
        // The same separator then another digit group: part of a longer grouped number.
        if after(text, range.end) == Some(sep) && is_digit(after_n(text, range.end, 2)) {
            return None;
        }
        if before(text, range.start) == Some(sep) && is_digit(before_n(text, range.start, 2)) {
            return None;
        }
    }
    let digits: Vec<u8> = raw.iter().copied().filter(u8::is_ascii_digit).collect();
    if !(13..=19).contains(&digits.len()) || !known_card_prefix(&digits) || !luhn_valid(&digits) {
        return None;
    }
    Some(range)
}

fn check_ssn(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let range = skip_escape(text, candidate);
    let s = &text.as_bytes()[range.clone()];
    if s.len() != 11
        || number_continues_before(text, range.start)
        || number_continues_after(text, range.end)
    {
        return None;
    }
    let area = &s[0..3];
    let group = &s[4..6];
    let serial = &s[7..11];
    // Never issued: area 000, 666 and 900-999, group 00, serial 0000.
    if area == b"000" || area == b"666" || area[0] == b'9' || group == b"00" || serial == b"0000" {
        return None;
    }
    Some(range)
}

/// IBAN lengths by country (the SWIFT registry's).
#[rustfmt::skip]
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16),
    ("BG", 22), ("BH", 22), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22), ("CY", 28),
    ("CZ", 24), ("DE", 22), ("DK", 18), ("DO", 28), ("EE", 20), ("EG", 29), ("ES", 24),
    ("FI", 18), ("FO", 18), ("FR", 27), ("GB", 22), ("GE", 22), ("GI", 23), ("GL", 18),
    ("GR", 27), ("GT", 28), ("HR", 21), ("HU", 28), ("IE", 22), ("IL", 23), ("IQ", 23),
    ("IS", 26), ("IT", 27), ("JO", 30), ("KW", 30), ("KZ", 20), ("LB", 28), ("LC", 32),
    ("LI", 21), ("LT", 20), ("LU", 20), ("LV", 21), ("MC", 27), ("MD", 24), ("ME", 22),
    ("MK", 19), ("MR", 27), ("MT", 31), ("MU", 30), ("NL", 18), ("NO", 15), ("PK", 24),
    ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22), ("SA", 24),
    ("SC", 31), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27), ("ST", 25), ("SV", 28),
    ("TL", 23), ("TN", 24), ("TR", 26), ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20),
];

/// Whether a compact IBAN (no spaces) passes ISO 13616's mod-97 check.
pub(super) fn iban_mod97(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let rearranged = iban[4..].iter().chain(&iban[..4]);
    let mut rem: u32 = 0;
    for &c in rearranged {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn check_iban(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let range = skip_escape(text, candidate);
    if number_continues_before(text, range.start) {
        return None;
    }
    let raw = &text.as_bytes()[range.clone()];
    let country = std::str::from_utf8(&raw[..2]).ok()?;
    let &(_, length) = IBAN_LENGTHS.iter().find(|(c, _)| *c == country)?;
    // The candidate may run on into the next word ("... 00 ABC"): take the country's length of
    // characters, and require that it ends where the text has a break.
    let mut compact = Vec::with_capacity(length);
    let mut end = range.start;
    for (i, &c) in raw.iter().enumerate() {
        if compact.len() == length {
            break;
        }
        if c != b' ' {
            compact.push(c);
        }
        end = range.start + i + 1;
    }
    if compact.len() != length || number_continues_after(text, end) {
        return None;
    }
    iban_mod97(&compact).then_some(range.start..end)
}

fn check_e164(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let prev = before(text, candidate.start);
    // `1+2345678901`, `x+...`: arithmetic or an encoded string, not a phone number.
    if is_alnum(prev) || matches!(prev, Some(b'+' | b'.' | b'/' | b'=' | b'%')) {
        return None;
    }
    // The pattern runs on over a following number (`+44 20 7946 0958 2024`): try the whole
    // match, then shorter ones cut at a space.
    let raw = &text.as_bytes()[candidate.clone()];
    let cuts = std::iter::once(raw.len()).chain(
        (1..raw.len())
            .rev()
            .filter(|&i| raw[i] == b' ' && raw[i - 1].is_ascii_digit()),
    );
    for cut in cuts {
        let end = candidate.start + cut;
        if number_continues_after(text, end) {
            continue;
        }
        let digits = raw[..cut].iter().filter(|c| c.is_ascii_digit()).count();
        if (8..=15).contains(&digits) {
            return Some(candidate.start..end);
        }
    }
    None
}

fn check_nanp(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let range = skip_escape(text, candidate);
    if number_continues_before(text, range.start) || number_continues_after(text, range.end) {
        return None;
    }
    let prev = before(text, range.start);
    if matches!(prev, Some(b'+' | b'$' | b'#' | b'=')) {
        // `+1 ...` is the E.164 pattern's; `$555-555-5555`, `#415-555-2671`: not a number to call.
        return None;
    }
    let raw = &text.as_bytes()[range.clone()];
    // One separator style between the groups of a dashed or dotted number.
    let separators: Vec<u8> = raw
        .iter()
        .copied()
        .skip_while(|&c| c != b'(' && !c.is_ascii_digit())
        .filter(|c| matches!(c, b'-' | b'.'))
        .collect();
    if separators.windows(2).any(|w| w[0] != w[1]) {
        return None;
    }
    Some(range)
}

/// A token with fixed shape: only its surroundings are checked.
fn check_token(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    Some(skip_escape(text, candidate))
}

/// A token of open-ended length matched up to where its alphabet ends: the next character must
/// not be one that would have continued it.
fn check_token_end(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let next = after(text, candidate.end);
    if matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
        return None;
    }
    Some(skip_escape(text, candidate))
}

fn check_aws_secret(text: &str, value: Range<usize>) -> Option<Range<usize>> {
    let next = after(text, value.end);
    if matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == b'/' || c == b'+' || c == b'=') {
        return None;
    }
    Some(value)
}

/// Values that say there is no secret here.
const NOT_SECRETS: &[&str] = &[
    "null",
    "nil",
    "none",
    "true",
    "false",
    "undefined",
    "redacted",
    "hidden",
    "masked",
    "required",
    "optional",
    "string",
    "str",
];

/// A value that opens with a quote (`password="two words"`, `password=\"x y\"` inside a JSON
/// string) runs to the closing quote, on the same line, within 256 bytes; otherwise it is what
/// the pattern matched.
fn extend_quoted(text: &str, value: Range<usize>) -> Range<usize> {
    let b = text.as_bytes();
    let Some(open) = value.start.checked_sub(1) else {
        return value;
    };
    let quote = b[open];
    if quote != b'"' && quote != b'\'' {
        return value;
    }
    // `\"`: the value sits in a JSON string, and so does its closing quote, escaped.
    let escaped = odd_backslashes(b, open);
    let limit = (value.end + 256).min(b.len());
    let mut i = value.end;
    while i < limit {
        match b[i] {
            b'\\' => {
                if escaped && b.get(i + 1) == Some(&quote) {
                    return value.start..i;
                }
                i += 2;
            }
            c if c == quote && !escaped => return value.start..i,
            b'"' | b'\n' | b'\r' => break,
            _ => i += 1,
        }
    }
    value
}

/// The pattern takes at most 256 characters of a value: a longer one (a long token) runs on to
/// where its characters end, so that no tail of it is left readable.
fn extend_long_value(
    text: &str,
    value: Range<usize>,
    is_value_char: fn(u8) -> bool,
) -> Range<usize> {
    if value.len() < 256 {
        return value;
    }
    let b = text.as_bytes();
    let mut end = value.end;
    while end < b.len() {
        match b[end] {
            b'\\'
                if b.get(end + 1)
                    .is_some_and(|&c| !matches!(c, b'"' | b'\'') && !c.is_ascii_whitespace()) =>
            {
                end += 2
            }
            b'\\' => break,
            c if is_value_char(c) => end += 1,
            _ => break,
        }
    }
    // Whole characters: a multi-byte character's bytes are all >= 0x80 and taken together.
    while !text.is_char_boundary(end) {
        end += 1;
    }
    value.start..end
}

fn is_assigned_value_char(c: u8) -> bool {
    !c.is_ascii_whitespace() && !matches!(c, b'"' | b'\'' | b',' | b';' | b'&' | b'<' | b'>')
}

fn is_bearer_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'~' | b'+' | b'/' | b'-' | b'=')
}

fn check_assigned_secret(text: &str, value: Range<usize>) -> Option<Range<usize>> {
    let value = extend_long_value(text, value, is_assigned_value_char);
    let extended = extend_quoted(text, value.clone());
    let value = if extended != value {
        extended
    } else {
        // Unquoted: the closing bracket of a JSON object or array (`{"secret": true}`), a call
        // or a template is not part of the value, unless the value opened it (`[email]`).
        let mut trimmed = &text[value.clone()];
        for (open, close) in [('{', '}'), ('[', ']'), ('(', ')')] {
            let opened = trimmed.matches(open).count();
            let mut closed = trimmed.matches(close).count();
            while trimmed.ends_with(close) && opened < closed {
                trimmed = &trimmed[..trimmed.len() - 1];
                closed -= 1;
            }
        }
        value.start..value.start + trimmed.len()
    };
    let v = &text[value.clone()];
    if v.len() < 3 {
        return None;
    }
    // Already masked, a placeholder, a template variable or a bind parameter.
    if v.bytes()
        .all(|c| matches!(c, b'*' | b'x' | b'X' | b'.' | b'#' | b'-'))
        || NOT_SECRETS.iter().any(|n| v.eq_ignore_ascii_case(n))
        || is_bracketed_word(v)
        || v.starts_with("${")
        || v.starts_with("{{")
        || v.starts_with("%(")
        || v.starts_with("%s")
        || (v.starts_with('$') && v[1..].bytes().all(|c| c.is_ascii_digit()))
        || (v.starts_with(':') && v.len() > 1)
    {
        return None;
    }
    Some(value)
}

/// `[email]`, `[redacted]`, `<password>`: a placeholder (ours included: redacting twice changes
/// nothing more).
fn is_bracketed_word(v: &str) -> bool {
    let inner = v
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .or_else(|| v.strip_prefix('<').and_then(|v| v.strip_suffix('>')));
    inner.is_some_and(|w| {
        !w.is_empty()
            && w.bytes()
                .all(|c| c.is_ascii_alphabetic() || c == b'-' || c == b'_')
    })
}

fn check_bearer(text: &str, value: Range<usize>) -> Option<Range<usize>> {
    let value = extend_long_value(text, value, is_bearer_char);
    (value.len() >= 8)
        .then_some(value)
        .filter(|v| check_assigned_secret(text, v.clone()).is_some())
}

fn check_url_password(text: &str, value: Range<usize>) -> Option<Range<usize>> {
    let v = &text[value.clone()];
    // `host:port@...` is not a password: a port is all digits. Neither is a placeholder.
    if v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    check_assigned_secret(text, value)
}

/// Base64url as JWTs use it: no padding, but tolerate some.
const JWT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn check_jwt(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let range = skip_escape(text, candidate);
    let next = after(text, range.end);
    if matches!(next, Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'=' | b'+' | b'/'))
    {
        return None;
    }
    let jwt = &text[range.clone()];
    let mut segments = jwt.split('.');
    let header = JWT_BASE64.decode(segments.next()?).ok()?;
    let payload = JWT_BASE64.decode(segments.next()?).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).ok()?;
    if !header.get("alg").is_some_and(serde_json::Value::is_string) {
        return None;
    }
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&payload).ok()?;
    Some(range)
}

fn check_private_key(text: &str, begin: Range<usize>) -> Option<Range<usize>> {
    let header = &text[begin.clone()];
    // `-----BEGIN ` ... `PRIVATE KEY` ...: the label between.
    let label = header
        .strip_prefix("-----BEGIN ")?
        .split("PRIVATE KEY")
        .next()?;
    // The key's body: base64, line breaks (or `\n` escapes inside a JSON string), and the
    // `Proc-Type:`/`DEK-Info:` headers of encrypted keys. The END line is made of the same
    // characters, so it lies within this stretch; a quote (the end of a JSON string) or any other
    // character ends it. Looking for the END line only there keeps a text full of BEGIN lines
    // linear.
    let b = text.as_bytes();
    let mut body_end = begin.end;
    while body_end < b.len() {
        match b[body_end] {
            c if c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'+' | b'/' | b'=' | b' ' | b'\t' | b'\r' | b'\n' | b':' | b',' | b'-' | b'.'
                ) =>
            {
                body_end += 1
            }
            b'\\' if matches!(b.get(body_end + 1), Some(b'n' | b'r' | b't')) => body_end += 2,
            _ => break,
        }
    }
    let body = &text[begin.end..body_end];
    let end_marker = format!("-----END {label}PRIVATE KEY");
    if let Some(at) = body.find(&end_marker) {
        let after_marker = begin.end + at + end_marker.len();
        let tail = &text[after_marker..];
        let close = [" BLOCK-----", "-----"]
            .iter()
            .find(|t| tail.starts_with(*t))
            .map_or(0, |t| t.len());
        return Some(begin.start..after_marker + close);
    }
    // No END line: the key was cut short; hide what there is of its body, not the whitespace
    // that ends the line or the text.
    let mut end = body_end;
    while end > begin.end && matches!(b[end - 1], b' ' | b'\t' | b'\r' | b'\n') {
        end -= 1;
    }
    Some(begin.start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iban_checksum() {
        assert!(iban_mod97(b"DE89370400440532013000"));
        assert!(iban_mod97(b"GB82WEST12345698765432"));
        assert!(!iban_mod97(b"DE89370400440532013001"));
    }

    #[test]
    fn card_prefixes() {
        assert!(known_card_prefix(b"4111111111111111"));
        assert!(known_card_prefix(b"378282246310005"));
        assert!(known_card_prefix(b"2223003122003222"));
        assert!(!known_card_prefix(b"1234567812345670"));
        assert!(!known_card_prefix(b"37828224631000"));
    }

    #[test]
    fn escapes_are_skipped_at_the_start() {
        let text = r"x\njane@example.com";
        assert_eq!(skip_escape(text, 2..19), 3..19);
        assert_eq!(skip_escape(text, 1..19), 3..19);
        let text = r"\\jane";
        assert_eq!(skip_escape(text, 2..6), 2..6);
    }
}
