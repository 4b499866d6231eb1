//! Content detectors: personal data and secrets found inside text, with a low false-positive
//! rate.
//!
//! Each detector ([`DetectorKind`]) is a loose pattern plus a check in code (Luhn for cards, mod 97
//! for IBANs, number plans for SSNs and phones, decoding for JWTs, the END line for private keys,
//! and the characters around a candidate: a card number inside a longer number is not a card).
//! All patterns of a [`Detectors`] run together as one `RegexSet` pass, so a text with no
//! candidate costs one scan; only candidates are checked.
//!
//! [`Detectors::redact`] replaces each finding with a placeholder that says what was there and
//! nothing else (`[email]`, `[card]`, ...). Findings may sit inside JSON strings, where a span can
//! start or end within a backslash escape (a PEM key's `\n`): spans are widened to whole escapes
//! and never take a quote, so a JSON document stays valid ([`Detectors::redact_json`] also quotes
//! placeholders that replace a bare JSON number, such as a card number stored as a number).
//!
//! What each detector matches, and what it deliberately does not, is in
//! `docs/masking-strategies.md`.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use gateway_core::{ValueFormat, ValueMask, ValueType};
use regex::{Regex, RegexSet};

mod patterns;

/// What a detector looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DetectorKind {
    /// E-mail addresses: `local@domain.tld`.
    Email,
    /// Payment card numbers of the major brands that pass the Luhn check.
    Card,
    /// US social security numbers written `123-45-6789`.
    Ssn,
    /// International bank account numbers with a valid checksum.
    Iban,
    /// Phone numbers: `+` and 8 to 15 digits, or North American numbers.
    Phone,
    /// API keys, tokens and passwords: well-known token formats, and values assigned to keys
    /// such as `password` or `api_key`.
    Secret,
    /// JSON Web Tokens.
    Jwt,
    /// PEM private keys, from the BEGIN line through the END line.
    PrivateKey,
}

const ALL_KINDS: [DetectorKind; 8] = [
    DetectorKind::Email,
    DetectorKind::Card,
    DetectorKind::Ssn,
    DetectorKind::Iban,
    DetectorKind::Phone,
    DetectorKind::Secret,
    DetectorKind::Jwt,
    DetectorKind::PrivateKey,
];

impl DetectorKind {
    /// Every detector.
    pub fn all() -> &'static [DetectorKind] {
        &ALL_KINDS
    }

    /// The detector's name, as in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Email => "email",
            DetectorKind::Card => "card",
            DetectorKind::Ssn => "ssn",
            DetectorKind::Iban => "iban",
            DetectorKind::Phone => "phone",
            DetectorKind::Secret => "secret",
            DetectorKind::Jwt => "jwt",
            DetectorKind::PrivateKey => "private-key",
        }
    }

    /// The detector a configuration names ([`DetectorKind::name`]).
    pub fn parse(name: &str) -> Option<DetectorKind> {
        ALL_KINDS.iter().copied().find(|k| k.name() == name)
    }

    /// What a finding of this kind is replaced with: `[email]`, `[card]`, ... (valid inside a
    /// JSON string, and found by no detector).
    pub fn placeholder(self) -> &'static str {
        match self {
            DetectorKind::Email => "[email]",
            DetectorKind::Card => "[card]",
            DetectorKind::Ssn => "[ssn]",
            DetectorKind::Iban => "[iban]",
            DetectorKind::Phone => "[phone]",
            DetectorKind::Secret => "[secret]",
            DetectorKind::Jwt => "[jwt]",
            DetectorKind::PrivateKey => "[private-key]",
        }
    }
}

/// One thing a detector found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub kind: DetectorKind,
    /// Where it is: a byte range of the text, on character boundaries.
    pub range: Range<usize>,
}

/// A candidate pattern, compiled.
struct Pattern {
    kind: DetectorKind,
    regex: Regex,
    group: Option<usize>,
    check: patterns::Check,
}

/// A set of detectors, compiled once (building one compiles its regexes: do it at configuration
/// time, not per value) and shared between sessions: `Send + Sync`, and every method takes
/// `&self`.
pub struct Detectors {
    kinds: Vec<DetectorKind>,
    set: RegexSet,
    patterns: Vec<Pattern>,
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detectors")
            .field("kinds", &self.kinds)
            .finish()
    }
}

impl Detectors {
    /// The detectors of `kinds` (in any order; duplicates are ignored).
    pub fn new(kinds: &[DetectorKind]) -> Detectors {
        let mut kinds = kinds.to_vec();
        kinds.sort_unstable();
        kinds.dedup();
        let specs: Vec<patterns::PatternSpec> =
            kinds.iter().flat_map(|&k| patterns::specs(k)).collect();
        // The patterns are this module's constants, covered by tests: a failure here is a bug
        // in them, not something a configuration can cause.
        let set = RegexSet::new(specs.iter().map(|s| s.regex.as_str()))
            .expect("detector patterns compile");
        let patterns = specs
            .into_iter()
            .map(|s| Pattern {
                kind: s.kind,
                regex: Regex::new(&s.regex).expect("detector pattern compiles"),
                group: s.group,
                check: s.check,
            })
            .collect();
        Detectors {
            kinds,
            set,
            patterns,
        }
    }

    /// Every detector.
    pub fn all() -> Detectors {
        Self::new(DetectorKind::all())
    }

    /// The detectors in this set, in [`DetectorKind`] order.
    pub fn kinds(&self) -> &[DetectorKind] {
        &self.kinds
    }

    /// Everything found in `text`, in order, without overlaps: where two findings overlap, the
    /// one that starts first (then the longer) is kept.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        // One pass of every pattern at once: most texts have no candidate at all and cost only
        // this. (A prefilter of literal and digit-shape triggers in front of it measured slower
        // than the set alone: see docs/masking-strategies.md.)
        let matched = self.set.matches(text);
        if !matched.matched_any() {
            return Vec::new();
        }
        let mut findings = Vec::new();
        for index in matched.iter() {
            let pattern = &self.patterns[index];
            // Not `find_iter`: a check may trim a match (an IBAN runs on into the next one) or
            // reject it (a card number inside a longer number), and the search then goes on
            // from the end of what was found, or just after the rejected match's start.
            let mut pos = 0;
            while pos <= text.len() {
                let (whole, candidate) = match pattern.group {
                    None => match pattern.regex.find_at(text, pos) {
                        Some(m) => (m.range(), Some(m.range())),
                        None => break,
                    },
                    Some(group) => match pattern.regex.captures_at(text, pos) {
                        Some(c) => {
                            let whole = c.get(0).map_or(pos..pos, |m| m.range());
                            (whole, c.get(group).map(|m| m.range()))
                        }
                        None => break,
                    },
                };
                let next_start =
                    whole.start + text[whole.start..].chars().next().map_or(1, char::len_utf8);
                match candidate.and_then(|c| (pattern.check)(text, c)) {
                    Some(range) => {
                        pos = range.end.max(next_start);
                        findings.push(Finding {
                            kind: pattern.kind,
                            range,
                        });
                    }
                    None => pos = next_start,
                }
            }
        }
        findings.retain(|f| !f.range.is_empty());
        findings.sort_by(|a, b| {
            a.range
                .start
                .cmp(&b.range.start)
                .then(b.range.end.cmp(&a.range.end))
                .then(a.kind.cmp(&b.kind))
        });
        let mut kept: Vec<Finding> = Vec::with_capacity(findings.len());
        for finding in findings {
            if kept
                .last()
                .is_none_or(|last| finding.range.start >= last.range.end)
            {
                kept.push(finding);
            }
        }
        kept
    }

    /// The kind of thing `value` is, when the whole of it (surrounding whitespace aside) is one
    /// finding: for discovering columns that hold personal data. A sentence that mentions an
    /// address is not an address.
    pub fn classify(&self, value: &str) -> Option<DetectorKind> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return None;
        }
        match self.find(trimmed).as_slice() {
            [only] if only.range == (0..trimmed.len()) => Some(only.kind),
            _ => None,
        }
    }

    /// `text` with every finding replaced by its kind's placeholder; `Cow::Borrowed` when
    /// nothing was found. Backslash escapes are never cut (a span that starts or ends inside
    /// one takes all of it) and a `"` is never replaced, so JSON inside the text stays valid.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.rewrite(text, false)
    }

    /// Like [`Detectors::redact`] for a JSON document: a finding outside any string (a card
    /// number stored as a JSON number) becomes a quoted placeholder, so the result is valid JSON
    /// whenever `json` was.
    pub fn redact_json<'a>(&self, json: &'a str) -> Cow<'a, str> {
        self.rewrite(json, true)
    }

    fn rewrite<'a>(&self, text: &'a str, json: bool) -> Cow<'a, str> {
        let findings = self.find(text);
        if findings.is_empty() {
            return Cow::Borrowed(text);
        }
        Cow::Owned(replace_findings(text, &findings, json))
    }
}

/// The length of the escape that starts with the backslash at `at`: `\uXXXX`, or `\` and one
/// character (whatever its UTF-8 length), cut at the end of the text.
fn escape_len(bytes: &[u8], at: usize) -> usize {
    let len = match bytes.get(at + 1) {
        None => 1,
        Some(b'u')
            if bytes
                .get(at + 2..at + 6)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
        {
            6
        }
        Some(&c) if c < 0x80 => 2,
        Some(&c) if c >= 0xF0 => 5,
        Some(&c) if c >= 0xE0 => 4,
        Some(_) => 3,
    };
    len.min(bytes.len() - at)
}

/// Writes `text` with each finding replaced by its placeholder, widening spans to whole escapes
/// and keeping every unescaped `"` (a span that contains one is replaced piece by piece around
/// it). With `json`, a placeholder outside a string is quoted.
fn replace_findings(text: &str, findings: &[Finding], json: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16 * findings.len());
    // Everything before `pos` has been scanned (string state, escapes), before `copied` written.
    let mut pos = 0;
    let mut copied = 0;
    let mut in_string = false;
    for finding in findings {
        let mut start = finding.range.start.max(copied);
        if finding.range.end <= start {
            continue;
        }
        // Scan up to the span, moving its start back to an escape it begins inside.
        while pos < start {
            match bytes[pos] {
                b'\\' => {
                    let len = escape_len(bytes, pos);
                    if pos + len > start {
                        start = pos;
                        break;
                    }
                    pos += len;
                }
                b'"' => {
                    in_string = !in_string;
                    pos += 1;
                }
                _ => pos += 1,
            }
        }
        out.push_str(&text[copied..start]);
        let placeholder = finding.kind.placeholder();
        let mut piece_start = start;
        let emit = |out: &mut String, from: usize, to: usize, in_string: bool| {
            if to > from {
                if json && !in_string {
                    out.push('"');
                    out.push_str(placeholder);
                    out.push('"');
                } else {
                    out.push_str(placeholder);
                }
            }
        };
        // Scan through the span; an escape it ends inside extends it.
        while pos < finding.range.end {
            match bytes[pos] {
                b'\\' => pos += escape_len(bytes, pos),
                b'"' => {
                    emit(&mut out, piece_start, pos, in_string);
                    out.push('"');
                    in_string = !in_string;
                    pos += 1;
                    piece_start = pos;
                }
                _ => pos += 1,
            }
        }
        emit(&mut out, piece_start, pos, in_string);
        copied = pos;
    }
    out.push_str(&text[copied..]);
    out
}

/// How a detector mask reads a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// UTF-8 text.
    Text,
    /// A JSON document.
    Json,
    /// jsonb in binary format: version byte 1, then the JSON text.
    JsonbBinary,
}

/// Replaces what `detectors` find in each value.
struct DetectorMask {
    detectors: Arc<Detectors>,
    encoding: Encoding,
}

impl std::fmt::Debug for DetectorMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorMask")
            .field("kinds", &self.detectors.kinds)
            .field("encoding", &self.encoding)
            .finish()
    }
}

impl ValueMask for DetectorMask {
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        // A value that is not UTF-8 cannot be checked, so it is never passed: NULL.
        match self.encoding {
            Encoding::Text | Encoding::Json => {
                let text = std::str::from_utf8(value).ok()?;
                let redacted = if self.encoding == Encoding::Json {
                    self.detectors.redact_json(text)
                } else {
                    self.detectors.redact(text)
                };
                Some(match redacted {
                    Cow::Borrowed(_) => Cow::Borrowed(value),
                    Cow::Owned(s) => Cow::Owned(s.into_bytes()),
                })
            }
            Encoding::JsonbBinary => {
                let (&version, json) = value.split_first()?;
                if version != 1 {
                    return None;
                }
                let text = std::str::from_utf8(json).ok()?;
                Some(match self.detectors.redact_json(text) {
                    Cow::Borrowed(_) => Cow::Borrowed(value),
                    Cow::Owned(s) => {
                        let mut out = Vec::with_capacity(1 + s.len());
                        out.push(1);
                        out.extend_from_slice(s.as_bytes());
                        Cow::Owned(out)
                    }
                })
            }
        }
    }
}

/// A mask that replaces what `detectors` find in each value of a text-like column (text, json,
/// jsonb; both formats, jsonb's binary version byte kept), or `None` for types detectors do not
/// scan. Values that are not UTF-8 come back as NULL; values with nothing found come back as
/// `Cow::Borrowed`, the original bytes.
pub fn detector_mask(
    detectors: Arc<Detectors>,
    value_type: ValueType,
    format: ValueFormat,
) -> Option<Arc<dyn ValueMask>> {
    let encoding = match (value_type, format) {
        (ValueType::Text, _) => Encoding::Text,
        // json's binary form is its text.
        (ValueType::Json, _) | (ValueType::Jsonb, ValueFormat::Text) => Encoding::Json,
        (ValueType::Jsonb, ValueFormat::Binary) => Encoding::JsonbBinary,
        _ => return None,
    };
    Some(Arc::new(DetectorMask {
        detectors,
        encoding,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &kind in DetectorKind::all() {
            assert_eq!(DetectorKind::parse(kind.name()), Some(kind));
            assert_eq!(kind.placeholder(), format!("[{}]", kind.name()));
        }
        assert_eq!(DetectorKind::parse("phone-number"), None);
    }

    #[test]
    fn detectors_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Detectors>();
    }

    #[test]
    fn escapes_are_kept_whole_and_quotes_kept() {
        let text = r#"{"k": "a\n4111111111111111\tb"}"#;
        let findings = [Finding {
            kind: DetectorKind::Card,
            range: 8..27,
        }];
        // The span starts inside `\n` and ends inside `\t`: both escapes go whole.
        assert_eq!(
            replace_findings(text, &findings, true),
            r#"{"k": "a[card]b"}"#
        );
        let findings = [Finding {
            kind: DetectorKind::Secret,
            range: 6..9,
        }];
        assert_eq!(
            replace_findings(r#"{"k": "ab"}"#, &findings, true),
            r#"{"k": "[secret]"}"#
        );
    }

    #[test]
    fn placeholders_are_not_found_again() {
        let detectors = Detectors::all();
        for &kind in DetectorKind::all() {
            assert!(detectors.find(kind.placeholder()).is_empty());
            let text = format!("password={}", kind.placeholder());
            assert!(detectors.find(&text).is_empty(), "{text}");
        }
    }
}
