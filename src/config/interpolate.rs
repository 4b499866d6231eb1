//! String values with `${ENV_VAR}` references, replaced while the file is read.

use serde::{Deserialize, Deserializer};

// ---------------------------------------------------------------------------------------------
// Strings with `${ENV_VAR}` interpolation, and durations
// ---------------------------------------------------------------------------------------------

/// A string value with `${NAME}` replaced by the environment variable `NAME` as it is
/// deserialized; `$${` stands for a literal `${`. A variable that is not set is an error at the
/// value, reported by [`Checker::check_references`] before deserializing, which therefore never
/// fails on one (the value then keeps its raw text, and the file is refused). Deliberately not
/// `Debug`: it may hold a secret.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct ConfigString(String);

impl ConfigString {
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ConfigString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Ok(ConfigString(interpolate(&raw, env_lookup).unwrap_or(raw)))
    }
}

/// Looks up `${NAME}` in the environment, with the error messages config values show.
pub(super) fn env_lookup(name: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) => Ok(value),
        Err(std::env::VarError::NotPresent) => Err(format!(
            "environment variable `{name}` is not set (write `$${{` for a literal `${{`)"
        )),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable `{name}` is not valid UTF-8"))
        }
    }
}

/// Replaces `${NAME}` in `raw` with `lookup(NAME)` and `$${` with `${`. Replacements are not
/// scanned again. On failure, every problem in `raw` (each unset variable, each malformed
/// reference), in order.
pub(super) fn interpolate(
    raw: &str,
    lookup: impl Fn(&str) -> Result<String, String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(raw.len());
    let mut problems = Vec::new();
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                problems.push(
                    "unterminated `${`: write `${NAME}` for an environment variable or `$${` for a literal `${`"
                        .to_owned(),
                );
                rest = "";
                break;
            };
            let name = &body[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push(format!(
                    "`${{{name}}}` is not a valid environment variable reference: names are letters, digits and `_`, not starting with a digit"
                ));
            } else {
                match lookup(name) {
                    Ok(value) => out.push_str(&value),
                    Err(problem) => problems.push(problem),
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
