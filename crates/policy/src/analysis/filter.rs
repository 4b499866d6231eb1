//! Constant folding for WHERE triviality, shared by both dialects. Each dialect reduces its own
//! expression tree to [`Const`] values and asks here how they compare and whether they are true.
//! Anything that is not provably constant stays unknown (`None`), which callers read as a real
//! condition: folding errs towards "Present" only when it cannot prove "always true".

/// A constant value reduced from a literal.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Const {
    Bool(bool),
    Num(f64),
    Str(String),
    Null,
}

impl Const {
    /// Whether the value counts as true in a WHERE clause; `None` when it is NULL or the
    /// server would reject it.
    pub(super) fn truth(&self) -> Option<bool> {
        match self {
            Const::Bool(b) => Some(*b),
            Const::Num(n) => Some(*n != 0.0),
            Const::Str(s) => {
                let word = s.trim().to_ascii_lowercase();
                match word.as_str() {
                    "t" | "true" | "y" | "yes" | "on" => Some(true),
                    "f" | "false" | "n" | "no" | "off" => Some(false),
                    _ => numeric_prefix(&word).map(|n| n != 0.0),
                }
            }
            Const::Null => None,
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Const::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Const::Num(n) => Some(*n),
            Const::Str(s) => s.trim().parse::<f64>().ok(),
            Const::Null => None,
        }
    }
}

/// The leading number of a string as MySQL converts it (`'1abc'` is 1), if there is one.
fn numeric_prefix(s: &str) -> Option<f64> {
    let end = s
        .char_indices()
        .take_while(|(i, c)| {
            c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '-' || *c == '+'))
        })
        .map(|(i, c)| i + c.len_utf8())
        .last()?;
    s.get(..end).and_then(|p| p.parse::<f64>().ok())
}

/// Compares two constants with a comparison operator; `None` when the operator is not a
/// comparison or the values do not compare. `case_insensitive` follows MySQL's default
/// collations, where `'a' = 'A'` and trailing spaces do not count.
pub(super) fn compare(
    op: &str,
    left: &Const,
    right: &Const,
    case_insensitive: bool,
) -> Option<bool> {
    if op == "<=>" {
        return match (left, right) {
            (Const::Null, Const::Null) => Some(true),
            (Const::Null, _) | (_, Const::Null) => Some(false),
            _ => compare("=", left, right, case_insensitive),
        };
    }
    if matches!(left, Const::Null) || matches!(right, Const::Null) {
        return None;
    }
    let ordering = match (left, right) {
        (Const::Str(a), Const::Str(b)) => {
            if case_insensitive {
                let a = a.trim_end_matches(' ').to_lowercase();
                let b = b.trim_end_matches(' ').to_lowercase();
                a.cmp(&b)
            } else {
                a.cmp(b)
            }
        }
        _ => {
            let a = left.number()?;
            let b = right.number()?;
            a.partial_cmp(&b)?
        }
    };
    use std::cmp::Ordering::{Equal, Greater, Less};
    match op {
        "=" | "==" => Some(ordering == Equal),
        "<>" | "!=" => Some(ordering != Equal),
        "<" => Some(ordering == Less),
        ">" => Some(ordering == Greater),
        "<=" => Some(ordering != Greater),
        ">=" => Some(ordering != Less),
        _ => None,
    }
}

/// Whether comparing an expression with itself under `op` is always true (`id = id`). Strictly
/// it is not when the column is NULL, but a filter that only excludes NULLs is no filter.
pub(super) fn reflexive(op: &str) -> bool {
    matches!(op, "=" | "==" | "<=" | ">=" | "<=>")
}

/// Three-valued AND over known truths: false if any is false, true only if all are true.
pub(super) fn and(values: impl IntoIterator<Item = Option<bool>>) -> Option<bool> {
    let mut all_true = true;
    for v in values {
        match v {
            Some(false) => return Some(false),
            Some(true) => {}
            None => all_true = false,
        }
    }
    if all_true {
        Some(true)
    } else {
        None
    }
}

/// Three-valued OR: true if any is true, whatever the others are (`x OR true`).
pub(super) fn or(values: impl IntoIterator<Item = Option<bool>>) -> Option<bool> {
    let mut all_false = true;
    for v in values {
        match v {
            Some(true) => return Some(true),
            Some(false) => {}
            None => all_false = false,
        }
    }
    if all_false {
        Some(false)
    } else {
        None
    }
}
