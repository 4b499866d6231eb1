//! Bound parameters in the audit trail: recorded as sent, hashed with a secret key, or omitted.
//!
//! Prepared statements carry their values apart from the text (`WHERE id = $1`), so a trail
//! without them cannot say which row a statement touched. Values can also be personal data or
//! secrets, so the mode is a choice: [`ParameterAudit::Record`] keeps them (each cut at a size
//! limit), [`ParameterAudit::Hash`] keeps an HMAC-SHA-256 of each (keyed, because an unkeyed hash
//! of a low-entropy value such as a birth date or a PIN is reversed by trying them all; whoever
//! holds the key can still check whether a value was used), [`ParameterAudit::Omit`] keeps
//! nothing. Protocol crates ask [`ParameterAudit::is_off`] first and read the values off the wire
//! only when they are wanted.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::hmac;

/// Default cut for recorded values, in bytes.
pub const DEFAULT_MAX_BYTES: usize = 1024;

/// How bound parameters are recorded.
#[derive(Clone)]
pub enum ParameterAudit {
    /// Not recorded.
    Omit,
    /// Recorded as sent: text values as text, binary-format values as hex; each cut at
    /// `max_bytes` (the record says how long it was).
    Record {
        /// Longest value kept whole.
        max_bytes: usize,
    },
    /// HMAC-SHA-256 of each value's bytes under a secret key, as hex.
    Hash {
        /// The key.
        key: Arc<hmac::Key>,
    },
}

impl Default for ParameterAudit {
    fn default() -> Self {
        ParameterAudit::Record {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl fmt::Debug for ParameterAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParameterAudit::Omit => f.write_str("Omit"),
            ParameterAudit::Record { max_bytes } => f
                .debug_struct("Record")
                .field("max_bytes", max_bytes)
                .finish(),
            // The key never shows.
            ParameterAudit::Hash { .. } => f.write_str("Hash { .. }"),
        }
    }
}

/// One bound value as the protocol received it.
#[derive(Debug, Clone, Copy)]
pub struct BoundValue<'a> {
    /// The value's bytes; `None` is SQL NULL.
    pub value: Option<&'a [u8]>,
    /// Whether the value is in the protocol's binary format (else text).
    pub binary: bool,
}

/// The parameters of one execution as the trail records them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordedParameters {
    /// `recorded` or `hashed`.
    pub mode: &'static str,
    /// One entry per parameter, in order.
    pub values: Vec<RecordedValue>,
}

/// One parameter in the trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum RecordedValue {
    /// SQL NULL.
    Null,
    /// A text value, whole; or, in hashed mode, `hmac-sha256:<hex>`.
    Text(String),
    /// A binary-format value, or a value cut at the limit.
    Detailed {
        /// The (start of the) text value.
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The (start of the) binary value, as hex.
        #[serde(skip_serializing_if = "Option::is_none")]
        hex: Option<String>,
        /// The value's full length in bytes.
        bytes: usize,
        /// Whether `text` or `hex` holds only the start of the value.
        truncated: bool,
    },
}

impl ParameterAudit {
    /// Hash mode with `key` (at least 32 bytes; shorter keys are refused).
    pub fn hash_with(key: &[u8]) -> Result<Self, String> {
        if key.len() < 32 {
            return Err(format!(
                "the parameter hash key has {} bytes; use at least 32 random bytes",
                key.len()
            ));
        }
        Ok(ParameterAudit::Hash {
            key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, key)),
        })
    }

    /// Whether parameters are left out (protocol crates then skip reading them).
    pub fn is_off(&self) -> bool {
        matches!(self, ParameterAudit::Omit)
    }

    /// The recorded form of one execution's values; `None` when parameters are omitted.
    pub fn capture<'a>(
        &self,
        values: impl IntoIterator<Item = BoundValue<'a>>,
    ) -> Option<Arc<RecordedParameters>> {
        let (mode, values) = match self {
            ParameterAudit::Omit => return None,
            ParameterAudit::Record { max_bytes } => (
                "recorded",
                values.into_iter().map(|v| record(v, *max_bytes)).collect(),
            ),
            ParameterAudit::Hash { key } => (
                "hashed",
                values
                    .into_iter()
                    .map(|v| match v.value {
                        None => RecordedValue::Null,
                        Some(bytes) => RecordedValue::Text(format!(
                            "hmac-sha256:{}",
                            hex(hmac::sign(key, bytes).as_ref())
                        )),
                    })
                    .collect(),
            ),
        };
        Some(Arc::new(RecordedParameters { mode, values }))
    }
}

fn record(v: BoundValue<'_>, max_bytes: usize) -> RecordedValue {
    let Some(bytes) = v.value else {
        return RecordedValue::Null;
    };
    let truncated = bytes.len() > max_bytes;
    let kept = &bytes[..bytes.len().min(max_bytes)];
    if v.binary {
        return RecordedValue::Detailed {
            text: None,
            hex: Some(hex(kept)),
            bytes: bytes.len(),
            truncated,
        };
    }
    match std::str::from_utf8(kept) {
        Ok(text) if !truncated => RecordedValue::Text(text.to_owned()),
        _ => {
            // Cut on a character boundary; bytes that are not UTF-8 at all (a client encoding
            // other than UTF-8) are shown lossily: the length says what was there.
            let text = match std::str::from_utf8(kept) {
                Ok(t) => t.to_owned(),
                Err(e) if e.error_len().is_none() => {
                    String::from_utf8_lossy(&kept[..e.valid_up_to()]).into_owned()
                }
                Err(_) => String::from_utf8_lossy(kept).into_owned(),
            };
            RecordedValue::Detailed {
                text: Some(text),
                hex: None,
                bytes: bytes.len(),
                truncated,
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> BoundValue<'_> {
        BoundValue {
            value: Some(s.as_bytes()),
            binary: false,
        }
    }

    fn json(p: &RecordedParameters) -> String {
        serde_json::to_string(p).unwrap()
    }

    #[test]
    fn omitted_parameters_are_not_read() {
        assert!(ParameterAudit::Omit.is_off());
        assert!(ParameterAudit::Omit.capture([text("x")]).is_none());
    }

    #[test]
    fn recorded_values_keep_text_null_and_binary_apart() {
        let p = ParameterAudit::default()
            .capture([
                text("alice"),
                BoundValue {
                    value: None,
                    binary: false,
                },
                BoundValue {
                    value: Some(&[0, 0, 0, 42]),
                    binary: true,
                },
            ])
            .unwrap();
        assert_eq!(
            json(&p),
            r#"{"mode":"recorded","values":["alice",null,{"hex":"0000002a","bytes":4,"truncated":false}]}"#
        );
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_and_say_so() {
        let p = ParameterAudit::Record { max_bytes: 4 }
            .capture([text("abcdef"), text("aé€x"), text("abcd")])
            .unwrap();
        assert_eq!(
            p.values,
            vec![
                RecordedValue::Detailed {
                    text: Some("abcd".into()),
                    hex: None,
                    bytes: 6,
                    truncated: true
                },
                // "aé" is 3 bytes; the 4th byte starts "€" and is dropped, not garbled.
                RecordedValue::Detailed {
                    text: Some("aé".into()),
                    hex: None,
                    bytes: 7,
                    truncated: true
                },
                RecordedValue::Text("abcd".into()),
            ]
        );
    }

    #[test]
    fn hashed_values_depend_on_the_key_and_never_show_the_value() {
        let a = ParameterAudit::hash_with(&[7; 32]).unwrap();
        let b = ParameterAudit::hash_with(&[8; 32]).unwrap();
        let pa = a.capture([text("1985-04-12"), text("1985-04-12")]).unwrap();
        let pb = b.capture([text("1985-04-12")]).unwrap();
        assert_eq!(pa.mode, "hashed");
        assert_eq!(
            pa.values[0], pa.values[1],
            "same key, same value, same hash"
        );
        assert_ne!(pa.values[0], pb.values[0], "another key, another hash");
        let s = json(&pa);
        assert!(s.contains("hmac-sha256:"), "{s}");
        assert!(!s.contains("1985"), "{s}");
        assert!(ParameterAudit::hash_with(&[1; 16]).is_err());
        assert_eq!(format!("{a:?}"), "Hash { .. }");
    }
}
