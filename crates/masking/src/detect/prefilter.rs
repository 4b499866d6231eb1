//! Cheap passes over a text that tell which detectors could possibly find something in it.
//!
//! Each trigger is a necessary condition of its detector's patterns (an `@` for an address, 13
//! digits in a row, allowing single spaces or dashes between them, for a card, `dd-dddd` for an
//! SSN, a keyword such as `pass` or `token` for an assigned secret, ...): a detector whose
//! trigger did not fire cannot match, so its patterns are not run, and text with no trigger
//! costs these passes only: a literal search (the regex engine's SIMD and Aho-Corasick
//! searchers) and a byte scan for digit shapes. The `RegexSet` of all patterns costs a few
//! nanoseconds a byte whatever the text; `benches/detect.rs` compares the two and
//! `docs/masking-strategies.md` has the figures.

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

    fn and(self, other: KindSet) -> KindSet {
        KindSet(self.0 & other.0)
    }

    fn contains_all(self, other: KindSet) -> bool {
        self.0 & other.0 == other.0
    }
}

fn digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

fn digits_at(b: &[u8], from: usize, n: usize) -> bool {
    (from..from + n).all(|i| digit_at(b, i))
}

/// Exactly `n` digits end just before `i` (a non-digit, or the start, before them).
fn run_of_digits_before(b: &[u8], i: usize, n: usize) -> bool {
    i >= n && digits_at(b, i - n, n) && (i == n || !b[i - n - 1].is_ascii_digit())
}

/// The literal triggers: an `@` for addresses, `.ey`/`.ew` for a JWT's second segment, the
/// BEGIN line of a PEM block, and for secrets their prefixes and the keywords every key of the
/// assigned-secret patterns contains (`password`, `api_key`, `access_token`, `Authorization`,
/// `aws_secret_access_key` ...), and `://` for credentials in URLs. Literals only, so the regex
/// engine searches them with its SIMD and Aho-Corasick literal searchers.
pub(super) const LITERALS: &str = r"@|\.e[wy]|-----BEGIN |(?i:pass|secret|key|token|auth)|AKIA|ASIA|AIza|gh[pousr]_|github_pat_|xox|_live_|://";

/// What a hit of [`LITERALS`] triggers.
fn literal_kind(hit: &[u8]) -> DetectorKind {
    match hit.first() {
        Some(b'@') => DetectorKind::Email,
        Some(b'.') => DetectorKind::Jwt,
        Some(b'-') => DetectorKind::PrivateKey,
        _ => DetectorKind::Secret,
    }
}

/// How the digit scan treats each byte.
const OTHER: u8 = 0;
const DIGIT: u8 = 1;
const SPACE: u8 = 2;
const DASH: u8 = 3;
const DOT: u8 = 4;
const PLUS: u8 = 5;
const PAREN: u8 = 6;

static CLASS: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut d = b'0';
    while d <= b'9' {
        table[d as usize] = DIGIT;
        d += 1;
    }
    table[b' ' as usize] = SPACE;
    table[b'-' as usize] = DASH;
    table[b'.' as usize] = DOT;
    table[b'+' as usize] = PLUS;
    table[b'(' as usize] = PAREN;
    table
};

/// Which detectors could find something in `text`. `literals` is [`LITERALS`], compiled.
pub(super) fn triggers(text: &str, literals: &regex::Regex, wanted: KindSet) -> KindSet {
    let mut found = KindSet::default();
    let literal_kinds = KindSet::of(&[
        DetectorKind::Email,
        DetectorKind::Jwt,
        DetectorKind::PrivateKey,
        DetectorKind::Secret,
    ]);
    if wanted.intersects(literal_kinds) {
        for hit in literals.find_iter(text) {
            found.insert(literal_kind(hit.as_str().as_bytes()));
            if found.contains_all(wanted.and(literal_kinds)) {
                break;
            }
        }
    }
    let digit_kinds = KindSet::of(&[
        DetectorKind::Card,
        DetectorKind::Ssn,
        DetectorKind::Phone,
        DetectorKind::Iban,
    ]);
    if wanted.intersects(digit_kinds) {
        digit_shapes(text.as_bytes(), &mut found);
    }
    found
}

/// The shapes of the digit-based detectors: 13 digits with at most one space or dash between
/// them (card), `dd-dddd` after a non-digit (SSN), `ddd-ddd`/`ddd.ddd` after a non-digit, `+`
/// and a digit, `(` and a digit (phone), two capitals and two digits (IBAN).
fn digit_shapes(b: &[u8], found: &mut KindSet) {
    let mut run = 0u32;
    let mut after_digit = false;
    let mut after_separator = false;
    for (i, &c) in b.iter().enumerate() {
        match CLASS[c as usize] {
            DIGIT => {
                run = if after_digit || after_separator {
                    run + 1
                } else {
                    1
                };
                if run >= 13 {
                    found.insert(DetectorKind::Card);
                }
                // The first digit of a run, after two capitals: `DE89...`.
                if !after_digit
                    && i >= 2
                    && b[i - 1].is_ascii_uppercase()
                    && b[i - 2].is_ascii_uppercase()
                    && digit_at(b, i + 1)
                {
                    found.insert(DetectorKind::Iban);
                }
                after_digit = true;
                after_separator = false;
                continue;
            }
            SPACE | DASH => {
                if c == b'-' {
                    // The second dash of `ddd-dd-dddd`.
                    if run_of_digits_before(b, i, 2) && digits_at(b, i + 1, 4) {
                        found.insert(DetectorKind::Ssn);
                    }
                    // The first dash of `ddd-ddd-dddd`.
                    if run_of_digits_before(b, i, 3) && digits_at(b, i + 1, 3) {
                        found.insert(DetectorKind::Phone);
                    }
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
            DOT => {
                if run_of_digits_before(b, i, 3) && digits_at(b, i + 1, 3) {
                    found.insert(DetectorKind::Phone);
                }
            }
            PLUS if matches!(b.get(i + 1), Some(b'1'..=b'9')) => found.insert(DetectorKind::Phone),
            PAREN if matches!(b.get(i + 1), Some(b'2'..=b'9')) => found.insert(DetectorKind::Phone),
            _ => {}
        }
        run = 0;
        after_digit = false;
        after_separator = false;
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
        let literals = regex::Regex::new(LITERALS).unwrap();
        let all = KindSet::of(DetectorKind::all());
        for (text, kinds) in rows {
            assert_eq!(
                triggers(text, &literals, all),
                KindSet::of(kinds),
                "{text:?}"
            );
        }
    }
}
