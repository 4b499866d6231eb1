//! Name patterns used by rules: `*` matches any run of characters (also none), `?` exactly one;
//! everything else matches itself. Object patterns add an optional `schema.` part.

use std::fmt;

/// A glob over one name (a target, a group-free name part, a label value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    /// A glob from its pattern text. Never fails: every text is a pattern.
    pub fn new(pattern: impl Into<String>) -> Self {
        Glob {
            pattern: pattern.into(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern is just `*`.
    pub fn is_any(&self) -> bool {
        self.pattern == "*"
    }

    /// Whether `text` matches, comparing characters exactly.
    pub fn matches(&self, text: &str) -> bool {
        wildcard_match(&self.pattern, text, false)
    }

    /// Whether `text` matches, ignoring ASCII case.
    pub fn matches_ignore_case(&self, text: &str) -> bool {
        wildcard_match(&self.pattern, text, true)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Iterative wildcard matching with single-star backtracking: linear in practice, never recursive.
fn wildcard_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if ignore_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || t.get(ti).is_some_and(|&tc| eq(c, tc)) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// A pattern over relation or function names: `name` (any schema) or `schema.name`, each part a
/// [`Glob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectGlob {
    /// The schema (PostgreSQL) or database (MySQL) part; `None` matches any schema.
    pub schema: Option<Glob>,
    /// The relation or function name part.
    pub name: Glob,
}

impl ObjectGlob {
    /// Parses `name` or `schema.name`. Fails on empty parts and on more than one dot.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let parts: Vec<&str> = pattern.split('.').collect();
        match parts.as_slice() {
            [name] if !name.is_empty() => Ok(ObjectGlob { schema: None, name: Glob::new(*name) }),
            [schema, name] if !schema.is_empty() && !name.is_empty() => {
                Ok(ObjectGlob { schema: Some(Glob::new(*schema)), name: Glob::new(*name) })
            }
            _ => Err(format!(
                "`{pattern}` is not an object pattern: write `name` or `schema.name`, each part may use `*` and `?` (e.g. \"public.*\", \"users\")"
            )),
        }
    }

    /// Whether the object `schema.name` matches.
    ///
    /// `lenient` is for rules that restrict (deny, require approval, built-in guardrails): an
    /// object the statement leaves unqualified matches on its name alone, whatever schema the
    /// pattern names, because the session's search_path decides where it resolves; and case is
    /// ignored. Without `lenient` (allow rules) an unqualified object matches only a pattern
    /// without schema (or with schema `*`), and case must match: an allow rule never widens
    /// through ambiguity.
    pub fn matches(&self, schema: Option<&str>, name: &str, lenient: bool) -> bool {
        let name_ok = if lenient {
            self.name.matches_ignore_case(name)
        } else {
            self.name.matches(name)
        };
        if !name_ok {
            return false;
        }
        match (&self.schema, schema) {
            (None, _) => true,
            (Some(g), Some(s)) => {
                if lenient {
                    g.matches_ignore_case(s)
                } else {
                    g.matches(s)
                }
            }
            (Some(g), None) => lenient || g.is_any(),
        }
    }

    /// Matches a function name as the analysis reports it: lower-case, `schema.name` when written
    /// qualified, else bare.
    pub fn matches_function(&self, function: &str, lenient: bool) -> bool {
        match function.rsplit_once('.') {
            Some((schema, name)) => self.matches(Some(schema), name, lenient),
            None => self.matches(None, function, lenient),
        }
    }
}

impl fmt::Display for ObjectGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases: &[(&str, &str, bool, &str)] = &[
            ("app*", "app", true, "star matches nothing"),
            ("app*", "app-prod", true, "star matches a suffix"),
            ("app*", "xapp", false, "anchored at the start"),
            ("*-prod", "app-prod", true, "leading star"),
            ("a?c", "abc", true, "question mark is one character"),
            ("a?c", "ac", false, "question mark is exactly one"),
            ("*", "", true, "star matches the empty name"),
            ("a*b*c", "axxbyyc", true, "several stars backtrack"),
            ("a*b*c", "axxbyy", false, "several stars, no final c"),
            ("prod", "PROD", false, "exact case"),
            ("é*", "été", true, "characters, not bytes"),
        ];
        for (pattern, text, expected, why) in cases {
            assert_eq!(
                Glob::new(*pattern).matches(text),
                *expected,
                "{pattern} vs {text}: {why}"
            );
        }
        assert!(Glob::new("prod").matches_ignore_case("PROD"));
    }

    #[test]
    fn object_globs() {
        let g = ObjectGlob::parse("public.*").unwrap();
        assert!(g.matches(Some("public"), "users", false));
        assert!(!g.matches(Some("audit"), "users", true));
        assert!(
            g.matches(None, "users", true),
            "unqualified: search_path may resolve it to public"
        );
        assert!(
            !g.matches(None, "users", false),
            "an allow rule does not widen through ambiguity"
        );
        assert!(ObjectGlob::parse("*.users")
            .unwrap()
            .matches(None, "users", false));
        assert!(ObjectGlob::parse("users")
            .unwrap()
            .matches(Some("x"), "users", false));
        assert!(ObjectGlob::parse("Users")
            .unwrap()
            .matches(Some("x"), "users", true));
        assert!(ObjectGlob::parse("pg_read_file")
            .unwrap()
            .matches_function("pg_catalog.pg_read_file", true));
        assert!(ObjectGlob::parse("pg_catalog.pg_read_file")
            .unwrap()
            .matches_function("pg_read_file", true));
        for bad in ["", "a.", ".b", "a.b.c"] {
            assert!(ObjectGlob::parse(bad).is_err(), "{bad}");
        }
    }
}

/// Written as the pattern text, as in the configuration.
impl serde::Serialize for Glob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Written as `schema.name` or `name`, as in the configuration.
impl serde::Serialize for ObjectGlob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
