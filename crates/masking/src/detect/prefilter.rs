//! One cheap pass over a text that tells which detectors could possibly find something in it.
//!
//! Each trigger is a necessary condition of its detector's patterns (an `@` for an address, 13
//! digits in a row, allowing single spaces or dashes between them, for a card, `ddd-dd-dddd` for
//! an SSN, a keyword such as `pass` or `token` for an assigned secret, ...): a detector whose
//! trigger did not fire cannot match, so its patterns are not run. Text with no trigger costs
//! this pass only. The `RegexSet` of all patterns costs about 3 ns a byte whatever the text
//! (measured on a 2 KB JSON document: 6 us); this pass costs about 1 (see `benches/detect.rs`
//! and `docs/masking-strategies.md`).

use super::DetectorKind;

/// A set of detector kinds, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct KindSet(u16);

impl KindSet {
    fn bit(kind: DetectorKind) -> u16 {
        1 << (kind as u16)
    }

    pub(super) fn of(kinds: &[DetectorKind]) -> Self {
        KindSet(kinds.iter().fold(0, |acc, &k| acc | Self::bit(k)))
    }

    fn insert(&mut self, kind: DetectorKind) {
        self.0 |= Self::bit(kind);
    }

    pub(super) fn contains(self, kind: DetectorKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub(super) fn intersects(self, other: KindSet) -> bool {
        self.0 & other.0 != 0
    }
}

fn digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

fn digits_at(b: &[u8], from: usize, n: usize) -> bool {
    (from..from + n).all(|i| digit_at(b, i))
}

/// Whether `b[i..]` starts with `word`, ignoring ASCII case (`word` is lowercase).
fn starts_with_ignore_case(b: &[u8], i: usize, word: &[u8]) -> bool {
    b.get(i..i + word.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(word))
}

/// Exactly `n` digits end just before `i` (a non-digit, or the start, before them).
fn run_of_digits_before(b: &[u8], i: usize, n: usize) -> bool {
    i >= n && digits_at(b, i - n, n) && (i == n || !b[i - n - 1].is_ascii_digit())
}

/// The keywords of assigned secrets (`password=`, `api_key:`, `Authorization: Bearer`, ...),
/// lowercase: every key of the generic, AWS and bearer patterns contains one.
const KEYWORDS: [&[u8]; 5] = [b"pass", b"secret", b"key", b"token", b"auth"];

/// Which detectors could find something in `b`.
pub(super) fn triggers(b: &[u8]) -> KindSet {
    let mut found = KindSet::default();
    // Digits of a run that card numbers could be part of: digits with at most one space or dash
    // between them.
    let mut run = 0u32;
    let mut after_digit = false;
    let mut after_separator = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                run = if after_digit || after_separator {
                    run + 1
                } else {
                    1
                };
                if run >= 13 {
                    found.insert(DetectorKind::Card);
                }
                after_digit = true;
                after_separator = false;
                continue;
            }
            b' ' | b'-' => {
                if c == b'-' {
                    dash(b, i, &mut found);
                }
                if after_digit {
                    after_digit = false;
                    after_separator = true;
                } else {
                    run = 0;
                    after_separator = false;
                }
                continue;
            }
            b'@' => found.insert(DetectorKind::Email),
            b'.' => {
                if run_of_digits_before(b, i, 3) && digits_at(b, i + 1, 3) {
                    found.insert(DetectorKind::Phone);
                }
                if b.get(i + 1) == Some(&b'e') && matches!(b.get(i + 2), Some(b'w' | b'y')) {
                    found.insert(DetectorKind::Jwt);
                }
            }
            b'+' if matches!(b.get(i + 1), Some(b'1'..=b'9')) => found.insert(DetectorKind::Phone),
            b'(' if matches!(b.get(i + 1), Some(b'2'..=b'9')) => found.insert(DetectorKind::Phone),
            b':' if b.get(i + 1..i + 3) == Some(b"//") => found.insert(DetectorKind::Secret),
            b'_' if b.get(i..i + 6) == Some(b"_live_") => found.insert(DetectorKind::Secret),
            b'A'..=b'Z' | b'a'..=b'z' => letter(b, i, c, &mut found),
            _ => {}
        }
        run = 0;
        after_digit = false;
        after_separator = false;
    }
    found
}

fn dash(b: &[u8], i: usize, found: &mut KindSet) {
    if b.get(i..i + 11) == Some(b"-----BEGIN ") {
        found.insert(DetectorKind::PrivateKey);
    }
    // The second dash of `ddd-dd-dddd`.
    if run_of_digits_before(b, i, 2) && digits_at(b, i + 1, 4) {
        found.insert(DetectorKind::Ssn);
    }
    // The first dash of `ddd-ddd-dddd` (or `ddd-ddd.dddd`).
    if run_of_digits_before(b, i, 3) && digits_at(b, i + 1, 3) {
        found.insert(DetectorKind::Phone);
    }
}

fn letter(b: &[u8], i: usize, c: u8, found: &mut KindSet) {
    if c.is_ascii_uppercase()
        && b.get(i + 1).is_some_and(u8::is_ascii_uppercase)
        && digits_at(b, i + 2, 2)
    {
        found.insert(DetectorKind::Iban);
    }
    match c {
        b'A' if matches!(b.get(i + 1..i + 4), Some(b"KIA" | b"SIA" | b"Iza")) => {
            found.insert(DetectorKind::Secret)
        }
        b'g' if matches!(
            b.get(i + 1..i + 4),
            Some(b"hp_" | b"ho_" | b"hu_" | b"hs_" | b"hr_")
        ) || b.get(i..i + 11) == Some(b"github_pat_") =>
        {
            found.insert(DetectorKind::Secret)
        }
        b'x' if b.get(i..i + 3) == Some(b"xox") => found.insert(DetectorKind::Secret),
        _ => {}
    }
    let lower = c.to_ascii_lowercase();
    if matches!(lower, b'p' | b's' | b'k' | b't' | b'a')
        && KEYWORDS
            .iter()
            .any(|w| w[0] == lower && starts_with_ignore_case(b, i, w))
    {
        found.insert(DetectorKind::Secret);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_fire_on_the_shapes() {
        use DetectorKind::*;
        let rows: &[(&str, &[DetectorKind])] = &[
            ("nothing at all here", &[]),
            ("a@b", &[Email]),
            ("4111 1111 1111 1", &[Card]),
            ("4111 1111 1111", &[]),
            ("4111  1111 1111 1111", &[]),
            ("123-45-6789", &[Ssn]),
            ("2024-01-15", &[]),
            ("415-555-2671", &[Phone]),
            ("415.555.2671", &[Phone]),
            ("(415) 555", &[Phone]),
            ("+4420", &[Phone]),
            ("+0530", &[]),
            ("DE89 3704", &[Iban]),
            ("AKIA ASIA AIza", &[Secret]),
            ("ghp_ github_pat_ xoxb sk_live_", &[Secret]),
            ("PASSWORD Api_Key Authorization token", &[Secret]),
            ("postgres://x", &[Secret]),
            ("a.eyJ", &[Jwt]),
            ("-----BEGIN X", &[PrivateKey]),
        ];
        for (text, kinds) in rows {
            assert_eq!(triggers(text.as_bytes()), KindSet::of(kinds), "{text:?}");
        }
    }
}
