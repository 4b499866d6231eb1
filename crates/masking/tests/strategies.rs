//! Every strategy on every value type in both formats: the masked value is valid for its type
//! (parsed back), NULL where the strategy has nothing valid to offer, and reveals what the
//! strategy says and no more. Plus the hash key file.

use std::borrow::Cow;
use std::sync::Arc;

use gateway_core::{ValueFormat, ValueMask, ValueType};
use masking::strategy::{value_mask, HashKey, KeyError, Strategy};
use regex::bytes::Regex;

const FORMATS: [ValueFormat; 2] = [ValueFormat::Text, ValueFormat::Binary];

const TYPES: [ValueType; 19] = [
    ValueType::Text,
    ValueType::Bool,
    ValueType::Int2,
    ValueType::Int4,
    ValueType::Int8,
    ValueType::Float4,
    ValueType::Float8,
    ValueType::Numeric,
    ValueType::Date,
    ValueType::Time,
    ValueType::Timestamp,
    ValueType::TimestampTz,
    ValueType::Uuid,
    ValueType::Bytes,
    ValueType::Json,
    ValueType::Jsonb,
    ValueType::Array,
    ValueType::Composite,
    ValueType::Other,
];

fn strategies() -> Vec<Strategy> {
    vec![
        Strategy::Redact,
        Strategy::Null,
        Strategy::Partial { keep_last: 4 },
        Strategy::Email,
        Strategy::Hash,
        Strategy::Card,
        Strategy::NationalId,
    ]
}

fn key(byte: u8) -> Arc<HashKey> {
    Arc::new(HashKey::from_bytes([byte; 32]))
}

/// 12345.678 in PostgreSQL's binary numeric: 3 digits, weight 1, positive, scale 3.
const NUMERIC_12345_678: [u8; 14] = [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c];

/// Realistic values of each type in each format (a few for text, which most strategies target).
fn samples(value_type: ValueType, format: ValueFormat) -> Vec<Vec<u8>> {
    use ValueFormat::{Binary, Text};
    let v = |s: &str| s.as_bytes().to_vec();
    match (value_type, format) {
        (ValueType::Text, _) => vec![
            v("jane.doe@example.com"),
            v("4111 1111 1111 1111"),
            v("123-45-6789"),
            v("Grüße aus Köln"),
            v("ab"),
            v(""),
        ],
        (ValueType::Bool, Text) => vec![v("t"), v("f")],
        (ValueType::Bool, Binary) => vec![vec![1], vec![0]],
        (ValueType::Int2, Text) => vec![v("12345"), v("-32768"), v("7")],
        (ValueType::Int2, Binary) => vec![
            12345i16.to_be_bytes().to_vec(),
            i16::MIN.to_be_bytes().to_vec(),
        ],
        (ValueType::Int4, Text) => vec![v("123456789"), v("-2147483648"), v("0")],
        (ValueType::Int4, Binary) => vec![
            123_456_789i32.to_be_bytes().to_vec(),
            i32::MIN.to_be_bytes().to_vec(),
        ],
        (ValueType::Int8, Text) => vec![v("1234567890123"), v("-9223372036854775808")],
        (ValueType::Int8, Binary) => vec![
            1_234_567_890_123i64.to_be_bytes().to_vec(),
            i64::MIN.to_be_bytes().to_vec(),
        ],
        (ValueType::Float4, Text) => vec![v("1.25"), v("-1e+30"), v("NaN")],
        (ValueType::Float4, Binary) => vec![1.25f32.to_be_bytes().to_vec()],
        (ValueType::Float8, Text) => vec![v("2.5"), v("Infinity")],
        (ValueType::Float8, Binary) => vec![2.5f64.to_be_bytes().to_vec()],
        (ValueType::Numeric, Text) => vec![v("12345.678"), v("-0.0001"), v("NaN")],
        (ValueType::Numeric, Binary) => vec![NUMERIC_12345_678.to_vec()],
        (ValueType::Date, Text) => vec![v("2024-01-15")],
        (ValueType::Date, Binary) => vec![8780i32.to_be_bytes().to_vec()],
        (ValueType::Time, Text) => vec![v("12:34:56.789")],
        (ValueType::Time, Binary) => vec![45_296_789_000i64.to_be_bytes().to_vec()],
        (ValueType::Timestamp, Text) => vec![v("2024-01-15 12:34:56")],
        (ValueType::TimestampTz, Text) => vec![v("2024-01-15 12:34:56+01")],
        (ValueType::Timestamp | ValueType::TimestampTz, Binary) => {
            vec![758_637_296_000_000i64.to_be_bytes().to_vec()]
        }
        (ValueType::Uuid, Text) => vec![v("550e8400-e29b-41d4-a716-446655440000")],
        (ValueType::Uuid, Binary) => vec![hex::decode("550e8400e29b41d4a716446655440000").unwrap()],
        (ValueType::Bytes, Text) => vec![v("\\xdeadbeef"), v("\\x")],
        (ValueType::Bytes, Binary) => vec![vec![0xde, 0xad, 0xbe, 0xef], vec![]],
        (ValueType::Json, _) | (ValueType::Jsonb, Text) => {
            vec![v(r#"{"email": "jane@example.com", "n": 1}"#), v("42")]
        }
        (ValueType::Jsonb, Binary) => vec![b"\x01{\"email\": \"jane@example.com\"}".to_vec()],
        (ValueType::Array, Text) => vec![v("{1,2,3}")],
        (ValueType::Composite, Text) => vec![v("(1,jane)")],
        (ValueType::Other, Text) => vec![v("happy")],
        (_, Binary) => vec![vec![0, 0, 0, 1, 0, 0, 0, 0]],
        _ => unreachable!(),
    }
}

/// Whether the strategy produces a value (not NULL) for this type: the table of
/// `docs/masking-strategies.md`.
fn gives_value(strategy: &Strategy, value_type: ValueType) -> bool {
    use ValueType as T;
    let json = matches!(value_type, T::Json | T::Jsonb);
    let int = matches!(value_type, T::Int2 | T::Int4 | T::Int8);
    match strategy {
        Strategy::Null => false,
        Strategy::Redact => !matches!(value_type, T::Bool | T::Array | T::Composite | T::Other),
        Strategy::Partial { .. } => value_type == T::Text || int || json,
        Strategy::Email | Strategy::Card | Strategy::NationalId => value_type == T::Text || json,
        Strategy::Hash => matches!(
            value_type,
            T::Text
                | T::Json
                | T::Jsonb
                | T::Int2
                | T::Int4
                | T::Int8
                | T::Float4
                | T::Float8
                | T::Numeric
                | T::Uuid
                | T::Bytes
        ),
        _ => unreachable!("a new strategy needs rows here"),
    }
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap()
}

/// Panics unless `out` is a valid value of the type in the format.
fn assert_valid(value_type: ValueType, format: ValueFormat, out: &[u8], context: &str) {
    use ValueFormat::{Binary, Text};
    let text = || std::str::from_utf8(out).unwrap_or_else(|_| panic!("{context}: not UTF-8"));
    let width = |n: usize| assert_eq!(out.len(), n, "{context}: binary width");
    match (value_type, format) {
        (ValueType::Text, _) => {
            text();
        }
        (ValueType::Json, _) | (ValueType::Jsonb, Text) => {
            serde_json::from_slice::<serde_json::Value>(out)
                .unwrap_or_else(|e| panic!("{context}: not JSON: {e}"));
        }
        (ValueType::Jsonb, Binary) => {
            assert_eq!(out.first(), Some(&1), "{context}: jsonb version byte");
            serde_json::from_slice::<serde_json::Value>(&out[1..])
                .unwrap_or_else(|e| panic!("{context}: not JSON: {e}"));
        }
        (ValueType::Int2, Text) => {
            text()
                .parse::<i16>()
                .unwrap_or_else(|e| panic!("{context}: {e}"));
        }
        (ValueType::Int4, Text) => {
            text()
                .parse::<i32>()
                .unwrap_or_else(|e| panic!("{context}: {e}"));
        }
        (ValueType::Int8, Text) => {
            text()
                .parse::<i64>()
                .unwrap_or_else(|e| panic!("{context}: {e}"));
        }
        (ValueType::Int2, Binary) => width(2),
        (ValueType::Int4 | ValueType::Float4, Binary) => width(4),
        (ValueType::Int8 | ValueType::Float8 | ValueType::Time, Binary) => width(8),
        (ValueType::Float4, Text) => {
            text()
                .parse::<f32>()
                .unwrap_or_else(|e| panic!("{context}: {e}"));
        }
        (ValueType::Float8, Text) => {
            text()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{context}: {e}"));
        }
        (ValueType::Numeric, Text) => {
            assert!(
                re(r"^-?[0-9]+(\.[0-9]+)?$").is_match(out),
                "{context}: numeric text"
            );
        }
        (ValueType::Numeric, Binary) => {
            assert!(out.len() >= 8, "{context}: numeric header");
            let ndigits = u16::from_be_bytes([out[0], out[1]]) as usize;
            assert_eq!(out.len(), 8 + 2 * ndigits, "{context}: numeric digits");
            assert!(
                matches!(u16::from_be_bytes([out[4], out[5]]), 0 | 0x4000),
                "{context}: sign"
            );
            for d in out[8..].chunks(2) {
                assert!(
                    u16::from_be_bytes([d[0], d[1]]) < 10_000,
                    "{context}: base-10000 digit"
                );
            }
        }
        (ValueType::Date, Text) => {
            assert!(
                re(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$").is_match(out),
                "{context}: date"
            )
        }
        (ValueType::Date, Binary) => width(4),
        (ValueType::Time, Text) => {
            assert!(
                re(r"^[0-9]{2}:[0-9]{2}:[0-9]{2}$").is_match(out),
                "{context}: time"
            )
        }
        (ValueType::Timestamp, Text) => assert!(
            re(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$").is_match(out),
            "{context}: timestamp"
        ),
        (ValueType::TimestampTz, Text) => assert!(
            re(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}[+-][0-9]{2}$")
                .is_match(out),
            "{context}: timestamptz"
        ),
        (ValueType::Timestamp | ValueType::TimestampTz, Binary) => width(8),
        (ValueType::Uuid, Text) => assert!(
            re(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$").is_match(out),
            "{context}: uuid"
        ),
        (ValueType::Uuid, Binary) => width(16),
        (ValueType::Bytes, Text) => {
            assert!(
                re(r"^\\x([0-9a-f]{2})*$").is_match(out),
                "{context}: bytea hex"
            )
        }
        (ValueType::Bytes, Binary) => {}
        _ => panic!("{context}: a value where NULL was expected"),
    }
}

#[test]
fn every_strategy_type_and_format_gives_a_valid_value_or_null() {
    let key = key(1);
    let mut checked = 0;
    for strategy in strategies() {
        for value_type in TYPES {
            for format in FORMATS {
                let mask = value_mask(&strategy, value_type, format, Some(&key));
                for value in samples(value_type, format) {
                    let context = format!(
                        "{} on {value_type:?}/{format:?} {:?}",
                        strategy.name(),
                        String::from_utf8_lossy(&value)
                    );
                    let out = mask.mask(&value);
                    if gives_value(&strategy, value_type) {
                        let out = out.unwrap_or_else(|| panic!("{context}: NULL"));
                        assert_valid(value_type, format, &out, &context);
                    } else {
                        assert!(out.is_none(), "{context}: expected NULL, got {out:?}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn keyed_strategies_without_a_key_behave_as_redact() {
    for strategy in [Strategy::Hash, Strategy::Card, Strategy::NationalId] {
        for value_type in TYPES {
            for format in FORMATS {
                let keyless = value_mask(&strategy, value_type, format, None);
                let redact = value_mask(&Strategy::Redact, value_type, format, None);
                for value in samples(value_type, format) {
                    assert_eq!(
                        keyless.mask(&value),
                        redact.mask(&value),
                        "{strategy:?} {value_type:?}"
                    );
                }
            }
        }
    }
}

/// Redact, row by row: (type, format, what every value becomes, why).
#[test]
fn redact_sends_fixed_values() {
    use ValueFormat::{Binary, Text};
    let rows: &[(ValueType, ValueFormat, Option<&[u8]>, &str)] = &[
        (ValueType::Text, Text, Some(b"****"), "length not revealed"),
        (
            ValueType::Text,
            Binary,
            Some(b"****"),
            "text's binary form is its UTF-8",
        ),
        (
            ValueType::Json,
            Text,
            Some(b"\"****\""),
            "a JSON string literal",
        ),
        (
            ValueType::Jsonb,
            Binary,
            Some(b"\x01\"****\""),
            "jsonb version byte kept",
        ),
        (ValueType::Int2, Binary, Some(&[0, 0]), "zero, two bytes"),
        (ValueType::Int4, Text, Some(b"0"), "zero"),
        (ValueType::Int8, Binary, Some(&[0; 8]), "zero, eight bytes"),
        (ValueType::Float4, Binary, Some(&[0; 4]), "0.0"),
        (ValueType::Float8, Text, Some(b"0"), "zero"),
        (ValueType::Numeric, Text, Some(b"0"), "zero"),
        (
            ValueType::Numeric,
            Binary,
            Some(&[0; 8]),
            "ndigits 0, weight 0, sign 0, dscale 0",
        ),
        (ValueType::Date, Text, Some(b"1970-01-01"), "the Unix epoch"),
        (
            ValueType::Date,
            Binary,
            Some(&(-10957i32).to_be_bytes()),
            "days since 2000-01-01",
        ),
        (ValueType::Time, Text, Some(b"00:00:00"), "midnight"),
        (
            ValueType::Time,
            Binary,
            Some(&[0; 8]),
            "microseconds since midnight",
        ),
        (
            ValueType::Timestamp,
            Text,
            Some(b"1970-01-01 00:00:00"),
            "the Unix epoch",
        ),
        (
            ValueType::TimestampTz,
            Text,
            Some(b"1970-01-01 00:00:00+00"),
            "the Unix epoch, UTC",
        ),
        (
            ValueType::TimestampTz,
            Binary,
            Some(&(-946_684_800_000_000i64).to_be_bytes()),
            "microseconds since 2000-01-01",
        ),
        (
            ValueType::Uuid,
            Text,
            Some(b"00000000-0000-0000-0000-000000000000"),
            "the nil UUID",
        ),
        (ValueType::Uuid, Binary, Some(&[0; 16]), "the nil UUID"),
        (ValueType::Bytes, Text, Some(b"\\x"), "empty bytea"),
        (ValueType::Bytes, Binary, Some(b""), "empty"),
        (
            ValueType::Bool,
            Text,
            None,
            "true or false would each reveal something",
        ),
        (ValueType::Array, Binary, None, "element types unknown"),
        (ValueType::Composite, Text, None, "field types unknown"),
        (ValueType::Other, Text, None, "cannot write a valid value"),
    ];
    for &(value_type, format, expected, why) in rows {
        let mask = value_mask(&Strategy::Redact, value_type, format, None);
        for value in samples(value_type, format) {
            let out = mask.mask(&value);
            assert_eq!(out.as_deref(), expected, "{value_type:?}/{format:?}: {why}");
            // A constant: no allocation per value.
            assert!(
                matches!(out, None | Some(Cow::Borrowed(_))),
                "{value_type:?}: borrowed"
            );
        }
    }
}

fn masked_text(mask: &dyn ValueMask, value: &str) -> String {
    String::from_utf8(mask.mask(value.as_bytes()).expect("not NULL").into_owned()).unwrap()
}

#[test]
fn hash_tokens_are_deterministic_and_key_dependent() {
    let (k1, k2) = (key(1), key(2));
    let text =
        |k: &Arc<HashKey>| value_mask(&Strategy::Hash, ValueType::Text, ValueFormat::Text, Some(k));
    let a = masked_text(&*text(&k1), "jane.doe@example.com");
    assert!(re(r"^tok_[0-9a-f]{16}$").is_match(a.as_bytes()), "{a}");
    assert_eq!(
        a,
        masked_text(&*text(&k1), "jane.doe@example.com"),
        "equal inputs, equal tokens"
    );
    assert_eq!(
        a,
        masked_text(
            &*text(&Arc::new(HashKey::from_bytes([1; 32]))),
            "jane.doe@example.com"
        )
    );
    assert_ne!(
        a,
        masked_text(&*text(&k2), "jane.doe@example.com"),
        "another key, another token"
    );
    assert_ne!(
        a,
        masked_text(&*text(&k1), "jane.doe@example.org"),
        "another value, another token"
    );

    // Binary and text clients see the same token for the same value.
    for (value_type, text_value, binary_value) in [
        (
            ValueType::Int4,
            "123456789",
            123_456_789i32.to_be_bytes().to_vec(),
        ),
        (ValueType::Int8, "-42", (-42i64).to_be_bytes().to_vec()),
        (
            ValueType::Uuid,
            "550e8400-e29b-41d4-a716-446655440000",
            hex::decode("550e8400e29b41d4a716446655440000").unwrap(),
        ),
        (
            ValueType::Bytes,
            "\\xdeadbeef",
            vec![0xde, 0xad, 0xbe, 0xef],
        ),
        (ValueType::Numeric, "12345.678", NUMERIC_12345_678.to_vec()),
        (ValueType::Float8, "1.5", 1.5f64.to_be_bytes().to_vec()),
        (ValueType::Jsonb, r#"{"a": 1}"#, b"\x01{\"a\": 1}".to_vec()),
    ] {
        let t = value_mask(&Strategy::Hash, value_type, ValueFormat::Text, Some(&k1));
        let b = value_mask(&Strategy::Hash, value_type, ValueFormat::Binary, Some(&k1));
        let from_text = t.mask(text_value.as_bytes()).unwrap();
        let from_binary = b.mask(&binary_value).unwrap();
        let from_binary_as_text: Vec<u8> = match value_type {
            ValueType::Int4 => i32::from_be_bytes(from_binary[..].try_into().unwrap())
                .to_string()
                .into(),
            ValueType::Int8 => i64::from_be_bytes(from_binary[..].try_into().unwrap())
                .to_string()
                .into(),
            ValueType::Uuid => {
                let h = hex::encode(&from_binary);
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
                .into()
            }
            ValueType::Bytes => format!("\\x{}", hex::encode(&from_binary)).into(),
            ValueType::Numeric => {
                // Integers below 10^16 fit in four base-10000 digits; read them back.
                let ndigits = u16::from_be_bytes([from_binary[0], from_binary[1]]) as usize;
                let weight = i16::from_be_bytes([from_binary[2], from_binary[3]]) as usize;
                let mut n: u128 = 0;
                for i in 0..=weight {
                    let d = if i < ndigits {
                        u16::from_be_bytes([from_binary[8 + 2 * i], from_binary[9 + 2 * i]])
                    } else {
                        0
                    };
                    n = n * 10_000 + u128::from(d);
                }
                n.to_string().into()
            }
            ValueType::Float8 => (f64::from_be_bytes(from_binary[..].try_into().unwrap()) as u64)
                .to_string()
                .into(),
            ValueType::Jsonb => from_binary[1..].to_vec(),
            _ => unreachable!(),
        };
        assert_eq!(
            from_text.as_ref(),
            &from_binary_as_text[..],
            "{value_type:?}"
        );
    }

    // Integer tokens are non-negative and fit the type.
    let m = value_mask(
        &Strategy::Hash,
        ValueType::Int2,
        ValueFormat::Text,
        Some(&k1),
    );
    for v in ["1", "2", "3", "-32768", "32767"] {
        let n: i16 = masked_text(&*m, v).parse().unwrap();
        assert!(n >= 0);
    }
    // UUID tokens look random: version 4, RFC 4122 variant.
    let m = value_mask(
        &Strategy::Hash,
        ValueType::Uuid,
        ValueFormat::Text,
        Some(&k1),
    );
    let u = masked_text(&*m, "550e8400-e29b-41d4-a716-446655440000");
    assert_eq!(&u[14..15], "4", "{u}");
    assert!("89ab".contains(&u[19..20]), "{u}");
    // Float tokens are integers the type holds exactly.
    let m = value_mask(
        &Strategy::Hash,
        ValueType::Float4,
        ValueFormat::Text,
        Some(&k1),
    );
    let f: u64 = masked_text(&*m, "1.25").parse().unwrap();
    assert!(f < 1 << 24);
    // JSON tokens are string literals.
    let m = value_mask(
        &Strategy::Hash,
        ValueType::Json,
        ValueFormat::Text,
        Some(&k1),
    );
    let j: String = serde_json::from_str(&masked_text(&*m, r#"{"a": 1}"#)).unwrap();
    assert!(j.starts_with("tok_"), "{j}");
}

#[allow(clippy::manual_is_multiple_of)]
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// (type, format, value, what it becomes, why).
type IntegerRow = (ValueType, ValueFormat, Vec<u8>, Vec<u8>, &'static str);

#[test]
fn card_keeps_separators_and_last_four_and_passes_luhn() {
    let k = key(5);
    let mask = value_mask(
        &Strategy::Card,
        ValueType::Text,
        ValueFormat::Text,
        Some(&k),
    );
    let cards = [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "3782 822463 10005",
        "6011000990139424",
        "3530111333300000",
        "30569309025904",
        "6221260000000000000",
        "400000000000",
    ];
    for card in cards {
        let out = masked_text(&*mask, card);
        assert_eq!(out.len(), card.len(), "{card} -> {out}");
        for (a, b) in card.bytes().zip(out.bytes()) {
            assert_eq!(
                a.is_ascii_digit(),
                b.is_ascii_digit(),
                "{card} -> {out}: shape"
            );
            if !a.is_ascii_digit() {
                assert_eq!(a, b, "{card} -> {out}: separators");
            }
        }
        assert_eq!(&out[out.len() - 4..], &card[card.len() - 4..], "last four");
        let digits: Vec<u8> = out.bytes().filter(u8::is_ascii_digit).collect();
        assert!(luhn(&digits), "{card} -> {out}: Luhn");
        let original: Vec<u8> = card.bytes().filter(u8::is_ascii_digit).collect();
        assert_ne!(digits, original, "{card}: digits replaced");
        assert_eq!(out, masked_text(&*mask, card), "deterministic");
    }
    // The same number grouped differently gets the same digits.
    let plain = masked_text(&*mask, "4111111111111111");
    let spaced: String = masked_text(&*mask, "4111 1111 1111 1111").replace(' ', "");
    assert_eq!(plain, spaced);
    // A different key gives different digits.
    let other = value_mask(
        &Strategy::Card,
        ValueType::Text,
        ValueFormat::Text,
        Some(&key(6)),
    );
    assert_ne!(plain, masked_text(&*other, "4111111111111111"));
    // Not a card number: redacted.
    for not_card in [
        "4111 1111",
        "card 4111111111111111",
        "41111111111111111111",
        "",
        "4111.1111.1111.1111",
    ] {
        assert_eq!(masked_text(&*mask, not_card), "****", "{not_card}");
    }
}

#[test]
fn national_id_keeps_separators_case_and_last_four_digits() {
    let k = key(7);
    let mask = value_mask(
        &Strategy::NationalId,
        ValueType::Text,
        ValueFormat::Text,
        Some(&k),
    );
    // (value, expected shape: d digit, U upper, l lower, anything else literal)
    let rows = [
        ("123-45-6789", "ddd-dd-6789", "US SSN"),
        ("QQ 12 34 56 C", "UU dd 34 56 U", "UK National Insurance"),
        ("X1234567L", "Uddd4567U", "Spanish NIE"),
        ("AB123456c", "UUdd3456l", "lower case kept lower"),
        ("1234", "dddd", "too short to keep four"),
    ];
    for (value, shape, why) in rows {
        let out = masked_text(&*mask, value);
        assert_eq!(out.len(), shape.len(), "{why}: {out}");
        for (o, s) in out.chars().zip(shape.chars()) {
            let ok = match s {
                'd' => o.is_ascii_digit(),
                'U' => o.is_ascii_uppercase(),
                'l' => o.is_ascii_lowercase(),
                literal => o == literal,
            };
            assert!(ok, "{why}: {value} -> {out}, shape {shape}");
        }
        assert_ne!(out, value, "{why}: masked");
        assert_eq!(out, masked_text(&*mask, value), "{why}: deterministic");
    }
}

#[test]
fn partial_reveals_only_the_tail_and_nothing_of_short_values() {
    let rows: &[(usize, &str, &str, &str)] = &[
        (
            4,
            "4111111111111111",
            "************1111",
            "the usual last four",
        ),
        (
            4,
            "+1 415 555 2671",
            "***********2671",
            "every other character starred",
        ),
        (2, "Grüße", "***ße", "characters, not bytes"),
        (4, "abcd", "****", "as long as what is kept: all starred"),
        (4, "abc", "***", "shorter: all starred"),
        (0, "secret", "******", "keep nothing"),
        (4, "", "", "empty stays empty"),
    ];
    for &(keep_last, value, expected, why) in rows {
        let mask = value_mask(
            &Strategy::Partial { keep_last },
            ValueType::Text,
            ValueFormat::Text,
            None,
        );
        assert_eq!(masked_text(&*mask, value), expected, "{why}");
    }
    let rows: &[IntegerRow] = &[
        (
            ValueType::Int4,
            ValueFormat::Text,
            b"123456789".to_vec(),
            b"6789".to_vec(),
            "last four digits",
        ),
        (
            ValueType::Int8,
            ValueFormat::Text,
            b"-98765".to_vec(),
            b"8765".to_vec(),
            "sign dropped",
        ),
        (
            ValueType::Int2,
            ValueFormat::Text,
            b"123".to_vec(),
            b"0".to_vec(),
            "short: nothing kept",
        ),
        (
            ValueType::Int4,
            ValueFormat::Binary,
            123_456_789i32.to_be_bytes().to_vec(),
            6789i32.to_be_bytes().to_vec(),
            "binary: same value",
        ),
        (
            ValueType::Int8,
            ValueFormat::Binary,
            1234i64.to_be_bytes().to_vec(),
            0i64.to_be_bytes().to_vec(),
            "binary short: zero",
        ),
    ];
    for (value_type, format, value, expected, why) in rows {
        let mask = value_mask(
            &Strategy::Partial { keep_last: 4 },
            *value_type,
            *format,
            None,
        );
        assert_eq!(mask.mask(value).as_deref(), Some(&expected[..]), "{why}");
    }
}

#[test]
fn email_keeps_first_character_and_domain_only() {
    let mask = value_mask(&Strategy::Email, ValueType::Text, ValueFormat::Text, None);
    let rows = [
        ("jane.doe@example.com", "j***@example.com"),
        ("X@mail.example.co.uk", "X***@mail.example.co.uk"),
        ("not an address", "****"),
        ("user@localhost", "****"),
        ("a@b", "****"),
    ];
    for (value, expected) in rows {
        assert_eq!(masked_text(&*mask, value), expected, "{value}");
    }
}

// ---------------------------------------------------------------------------------------------
// The key file
// ---------------------------------------------------------------------------------------------

fn token(key: &HashKey, value: &str) -> String {
    let mask = value_mask(
        &Strategy::Hash,
        ValueType::Text,
        ValueFormat::Text,
        Some(&Arc::new(key.clone())),
    );
    masked_text(&*mask, value)
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn write_mode(path: &std::path::Path, content: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
#[cfg(unix)]
fn key_file_is_created_0600_and_reloaded_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.key");
    let created = HashKey::load_or_create(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let content = std::fs::read_to_string(&path).unwrap();
    assert!(
        re(r"^[0-9a-f]{64}\n$").is_match(content.as_bytes()),
        "{content:?}"
    );
    let reloaded = HashKey::load_or_create(&path).unwrap();
    assert_eq!(token(&created, "x"), token(&reloaded, "x"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        content,
        "not rewritten"
    );
    // A key written by hand is used as it is.
    let by_hand = dir.path().join("by-hand.key");
    write_mode(&by_hand, format!("{}\n", "01".repeat(32)).as_bytes(), 0o600);
    assert_eq!(
        token(&HashKey::load_or_create(&by_hand).unwrap(), "x"),
        token(&HashKey::from_bytes([1; 32]), "x")
    );
    // Another directory, another key.
    let other = tempfile::tempdir().unwrap();
    let fresh = HashKey::load_or_create(&other.path().join("mask.key")).unwrap();
    assert_ne!(token(&created, "x"), token(&fresh, "x"));
    assert_eq!(format!("{created:?}"), "HashKey(..)");
}

#[test]
#[cfg(unix)]
fn processes_racing_to_create_the_key_agree_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.key");
    let tokens: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| token(&HashKey::load_or_create(&path).unwrap(), "x")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
}

#[test]
#[cfg(unix)]
fn bad_key_files_are_rejected_with_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!("{}\n", "ab".repeat(32));
    let rows: &[(&str, Vec<u8>, u32, &str)] = &[
        ("short.key", b"abcdef\n".to_vec(), 0o600, "64 hexadecimal"),
        (
            "long.key",
            format!("{}00\n", "ab".repeat(32)).into_bytes(),
            0o600,
            "64 hexadecimal",
        ),
        (
            "not-hex.key",
            format!("{}zz\n", "ab".repeat(31)).into_bytes(),
            0o600,
            "not hexadecimal",
        ),
        ("binary.key", vec![0xff; 32], 0o600, "not text"),
        ("empty.key", Vec::new(), 0o600, "is empty"),
        (
            "two-lines.key",
            format!("{good}{good}").into_bytes(),
            0o600,
            "64 hexadecimal",
        ),
        ("group.key", good.clone().into_bytes(), 0o640, "chmod 600"),
        ("world.key", good.clone().into_bytes(), 0o604, "chmod 600"),
    ];
    for (name, content, file_mode, hint) in rows {
        let path = dir.path().join(name);
        write_mode(&path, content, *file_mode);
        let err = HashKey::load_or_create(&path).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{name}: {message}"
        );
        assert!(message.contains(hint), "{name}: {message}");
        if *file_mode != 0o600 {
            assert!(
                matches!(err, KeyError::Permissions { .. }),
                "{name}: {err:?}"
            );
        }
        // Never replaced.
        assert_eq!(&std::fs::read(&path).unwrap(), content, "{name}");
    }
    // A directory that does not exist: the path and what to check.
    let missing = dir.path().join("no-such-dir").join("mask.key");
    let message = HashKey::load_or_create(&missing).unwrap_err().to_string();
    assert!(
        message.contains("no-such-dir") && message.contains("directory exists"),
        "{message}"
    );
}

/// Values a server should never send (wrong widths, not UTF-8, hostile numeric headers) still
/// get a valid value or NULL, and never a panic: masks run on bytes from the network.
#[test]
fn malformed_values_never_panic() {
    let key = key(9);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut values: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![0x01],
        vec![0x02, b'{', b'}'],
        b"\\xzz".to_vec(),
        b"not a number".to_vec(),
        // numeric: 0xffff digits claimed, none given; huge weight; NaN; bad sign.
        vec![0xff, 0xff, 0x7f, 0xff, 0, 0, 0, 0],
        vec![0, 1, 0x7f, 0xff, 0, 0, 0xff, 0xff, 0x27, 0x0f],
        vec![0, 0, 0, 0, 0xc0, 0, 0, 0],
        vec![0, 0, 0, 0, 0x12, 0x34, 0, 0],
    ];
    for len in 0..40 {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.push((state >> 24) as u8);
        }
        values.push(v);
    }
    for strategy in strategies() {
        for value_type in TYPES {
            for format in FORMATS {
                let mask = value_mask(&strategy, value_type, format, Some(&key));
                for value in &values {
                    let context =
                        format!("{} on {value_type:?}/{format:?} {value:?}", strategy.name());
                    if let Some(out) = mask.mask(value) {
                        // Text columns with bytes that are not UTF-8 may keep them only where the
                        // strategy keeps the value's own characters (never here: all redact).
                        assert_valid(value_type, format, &out, &context);
                    }
                }
            }
        }
    }
}
