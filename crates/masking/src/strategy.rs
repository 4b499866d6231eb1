//! Masking strategies: what a masked value becomes, by strategy, column type and wire format.
//!
//! A masked value must stay valid for its column's type in its format, or be NULL: drivers decode
//! binary results by type, and a text value that does not parse as its type breaks clients just
//! as badly. So every strategy says, type by type, what it produces ([`value_mask`]), and falls
//! back to NULL where it has nothing valid to offer. The tables are in
//! `docs/masking-strategies.md`.
//!
//! Masks are built once per result column and then called once per value: constant answers are
//! precomputed `&'static` bytes, and only strategies whose output depends on the value allocate.

use std::borrow::Cow;
use std::sync::Arc;

use gateway_core::{ValueFormat, ValueMask, ValueType};

mod key;
mod text;
mod typed;

pub use key::{HashKey, KeyError};
pub(crate) use text::luhn_valid;

/// How a masked column's values are masked. Rules name one in the configuration
/// ([`Strategy::parse`]); when several rules mask the same column, the strictest wins
/// ([`Strategy::strictness`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// A fixed value that says nothing, not even the length: `****` for text, 0 for numbers, the
    /// epoch for dates and times, the nil UUID, empty bytes; NULL for other types.
    Redact,
    /// NULL, whatever the type.
    Null,
    /// Text keeps its last `keep_last` characters, the others become `*`; a value no longer than
    /// that is starred whole. Integers keep their last `keep_last` digits.
    Partial {
        /// How many trailing characters (or digits) stay readable.
        keep_last: usize,
    },
    /// An e-mail address keeps its first character and its domain: `j***@example.com`.
    Email,
    /// A keyed, deterministic token (`tok_` and 16 hex digits for text, a number for numbers, a
    /// UUID for UUIDs): equal values give equal tokens, so joins and grouping still work.
    Hash,
    /// A card number with keyed digits in place of all but the last four, separators kept, still
    /// passing the Luhn check.
    Card,
    /// A national identifier with keyed digits in place of all but the last four and keyed
    /// letters of the same case, separators kept.
    NationalId,
}

/// The names [`Strategy::parse`] accepts, for error messages.
const STRATEGY_NAMES: &str = "redact, null, partial, email, hash, card, national-id";

/// How many characters [`Strategy::Partial`] keeps when the configuration does not say.
pub const DEFAULT_KEEP_LAST: usize = 4;

impl Strategy {
    /// The strategy a configuration names: `redact`, `null`, `partial` (with `keep_last`, 4 when
    /// not given), `email`, `hash`, `card` or `national-id`. `keep_last` with any other strategy
    /// is an error, so that a misplaced setting is not silently ignored.
    pub fn parse(name: &str, keep_last: Option<usize>) -> Result<Strategy, String> {
        let strategy = match name {
            "redact" => Strategy::Redact,
            "null" => Strategy::Null,
            "partial" => Strategy::Partial {
                keep_last: keep_last.unwrap_or(DEFAULT_KEEP_LAST),
            },
            "email" => Strategy::Email,
            "hash" => Strategy::Hash,
            "card" => Strategy::Card,
            "national-id" => Strategy::NationalId,
            other => {
                return Err(format!(
                    "unknown masking strategy {other:?}; the strategies are {STRATEGY_NAMES}"
                ))
            }
        };
        if keep_last.is_some() && !matches!(strategy, Strategy::Partial { .. }) {
            return Err(format!(
                "keep_last applies only to the partial strategy, not to {name:?}"
            ));
        }
        Ok(strategy)
    }

    /// The strategy's name, as in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Redact => "redact",
            Strategy::Null => "null",
            Strategy::Partial { .. } => "partial",
            Strategy::Email => "email",
            Strategy::Hash => "hash",
            Strategy::Card => "card",
            Strategy::NationalId => "national-id",
        }
    }

    /// How little the strategy reveals, to choose among several rules that mask one column:
    /// higher reveals less. Null > Redact > Hash > Card = NationalId > Email > Partial.
    pub fn strictness(&self) -> u8 {
        match self {
            Strategy::Null => 6,
            Strategy::Redact => 5,
            // A token reveals equality with other values, nothing of the value itself.
            Strategy::Hash => 4,
            // Both keep four real digits.
            Strategy::Card | Strategy::NationalId => 3,
            // Keeps the domain and the first character.
            Strategy::Email => 2,
            Strategy::Partial { .. } => 1,
        }
    }

    /// Whether the strategy needs a [`HashKey`]: [`Strategy::Hash`], [`Strategy::Card`],
    /// [`Strategy::NationalId`].
    pub fn needs_key(&self) -> bool {
        matches!(self, Strategy::Hash | Strategy::Card | Strategy::NationalId)
    }
}

/// The mask for one column: `strategy` applied to values of `value_type` in `format`.
///
/// Keyed strategies ([`Strategy::needs_key`]) need `key`. The configuration layer loads the key
/// whenever a rule names one, so `None` there is a caller's mistake; it is not worth a panic on
/// the result path, and the mask then behaves as [`Strategy::Redact`] (which reveals less than
/// any keyed strategy).
pub fn value_mask(
    strategy: &Strategy,
    value_type: ValueType,
    format: ValueFormat,
    key: Option<&Arc<HashKey>>,
) -> Arc<dyn ValueMask> {
    let key = match (strategy.needs_key(), key) {
        (true, None) => return redact(value_type, format),
        (_, key) => key,
    };
    let is_json = matches!(value_type, ValueType::Json | ValueType::Jsonb);
    match strategy {
        Strategy::Null => Arc::new(Constant(None)),
        Strategy::Redact => redact(value_type, format),
        Strategy::Hash => match key {
            Some(key) => typed::hash_mask(key, value_type, format),
            None => redact(value_type, format),
        },
        Strategy::Partial { keep_last } => match value_type {
            ValueType::Text => Arc::new(text::PartialText {
                keep_last: *keep_last,
            }),
            ValueType::Int2 | ValueType::Int4 | ValueType::Int8 => {
                typed::partial_integer(value_type, format, *keep_last)
            }
            _ if is_json => redact(value_type, format),
            _ => Arc::new(Constant(None)),
        },
        Strategy::Email => match value_type {
            ValueType::Text => Arc::new(text::EmailText),
            _ if is_json => redact(value_type, format),
            _ => Arc::new(Constant(None)),
        },
        Strategy::Card | Strategy::NationalId => match (value_type, key) {
            (ValueType::Text, Some(key)) if *strategy == Strategy::Card => {
                Arc::new(text::CardText { key: key.clone() })
            }
            (ValueType::Text, Some(key)) => Arc::new(text::NationalIdText { key: key.clone() }),
            _ if is_json || value_type == ValueType::Text => redact(value_type, format),
            _ => Arc::new(Constant(None)),
        },
    }
}

/// The mask for [`Strategy::Redact`].
fn redact(value_type: ValueType, format: ValueFormat) -> Arc<dyn ValueMask> {
    Arc::new(Constant(redacted_value(value_type, format)))
}

/// A mask whose answer does not depend on the value: `None` is NULL.
#[derive(Debug)]
pub(crate) struct Constant(pub(crate) Option<&'static [u8]>);

impl ValueMask for Constant {
    fn mask<'a>(&self, _value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        self.0.map(Cow::Borrowed)
    }
}

/// The text every redacted text value becomes: four stars, whatever the length.
pub(crate) const REDACTED_TEXT: &[u8] = b"****";
/// A redacted JSON value: a string literal.
const REDACTED_JSON: &[u8] = b"\"****\"";
/// A redacted jsonb value in binary format: the version byte, then the JSON text.
const REDACTED_JSONB_BINARY: &[u8] = b"\x01\"****\"";
/// Days from 2000-01-01 (PostgreSQL's date epoch) back to 1970-01-01.
static DATE_1970: [u8; 4] = (-10_957i32).to_be_bytes();
/// Microseconds from 2000-01-01 00:00:00 back to 1970-01-01 00:00:00.
static TIMESTAMP_1970: [u8; 8] = (-946_684_800_000_000i64).to_be_bytes();
static ZEROS: [u8; 16] = [0; 16];

/// What [`Strategy::Redact`] sends for a type in a format: `None` is NULL.
fn redacted_value(value_type: ValueType, format: ValueFormat) -> Option<&'static [u8]> {
    use ValueFormat::{Binary, Text};
    let value: &'static [u8] = match (value_type, format) {
        (ValueType::Text, _) => REDACTED_TEXT,
        (ValueType::Json, _) | (ValueType::Jsonb, Text) => REDACTED_JSON,
        (ValueType::Jsonb, Binary) => REDACTED_JSONB_BINARY,
        (ValueType::Int2 | ValueType::Int4 | ValueType::Int8, Text)
        | (ValueType::Float4 | ValueType::Float8 | ValueType::Numeric, Text) => b"0",
        (ValueType::Int2, Binary) => &ZEROS[..2],
        (ValueType::Int4 | ValueType::Float4, Binary) => &ZEROS[..4],
        (ValueType::Int8 | ValueType::Float8, Binary) => &ZEROS[..8],
        // ndigits 0, weight 0, sign positive, dscale 0: zero.
        (ValueType::Numeric, Binary) => &ZEROS[..8],
        (ValueType::Date, Text) => b"1970-01-01",
        (ValueType::Date, Binary) => &DATE_1970,
        (ValueType::Time, Text) => b"00:00:00",
        (ValueType::Time, Binary) => &ZEROS[..8],
        (ValueType::Timestamp, Text) => b"1970-01-01 00:00:00",
        (ValueType::TimestampTz, Text) => b"1970-01-01 00:00:00+00",
        (ValueType::Timestamp | ValueType::TimestampTz, Binary) => &TIMESTAMP_1970,
        (ValueType::Uuid, Text) => b"00000000-0000-0000-0000-000000000000",
        (ValueType::Uuid, Binary) => &ZEROS[..16],
        // bytea's text form is `\x` and the hex digits: empty.
        (ValueType::Bytes, Text) => b"\\x",
        (ValueType::Bytes, Binary) => b"",
        // Booleans (either value reveals the value), arrays, rows, and types we cannot write.
        _ => return None,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_name_round_trip() {
        for name in STRATEGY_NAMES.split(", ") {
            let strategy = Strategy::parse(name, None).unwrap();
            assert_eq!(strategy.name(), name);
        }
        assert_eq!(
            Strategy::parse("partial", None),
            Ok(Strategy::Partial { keep_last: 4 })
        );
        assert_eq!(
            Strategy::parse("partial", Some(2)),
            Ok(Strategy::Partial { keep_last: 2 })
        );
        let err = Strategy::parse("mask", None).unwrap_err();
        assert!(
            err.contains("national-id") && err.contains("\"mask\""),
            "{err}"
        );
        let err = Strategy::parse("hash", Some(3)).unwrap_err();
        assert!(err.contains("keep_last"), "{err}");
    }

    #[test]
    fn strictness_orders_strategies() {
        let order = [
            Strategy::Partial { keep_last: 4 },
            Strategy::Email,
            Strategy::Card,
            Strategy::Hash,
            Strategy::Redact,
            Strategy::Null,
        ];
        for pair in order.windows(2) {
            assert!(pair[0].strictness() < pair[1].strictness(), "{pair:?}");
        }
        assert_eq!(
            Strategy::Card.strictness(),
            Strategy::NationalId.strictness()
        );
    }

    #[test]
    fn keyed_strategies_without_a_key_redact() {
        for strategy in [Strategy::Hash, Strategy::Card, Strategy::NationalId] {
            let mask = value_mask(&strategy, ValueType::Text, ValueFormat::Text, None);
            assert_eq!(
                mask.mask(b"4111 1111 1111 1111").as_deref(),
                Some(REDACTED_TEXT)
            );
        }
    }
}
