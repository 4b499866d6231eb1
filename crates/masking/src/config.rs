//! `[masking]`: which columns are masked, how, and for whom. The schema here is the reference for
//! every key; docs/masking.md shows it in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_core::{Identity, SessionContext};
use policy::glob::Glob;
use serde::Deserialize;

use crate::detect::{DetectorKind, Detectors};
use crate::strategy::Strategy;

/// `[masking]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingSection {
    /// Refuse statements whose results could carry a masked value along a path the gateway
    /// cannot follow (whole rows, SQL built at run time). Default `true`.
    pub strict: Option<bool>,
    /// Refuse statements that filter, join, group, order or partition by a masked column (they
    /// reveal a value a bit at a time). Default `false`.
    pub refuse_predicates: Option<bool>,
    /// Key of the keyed strategies (`hash`, `card`, `national-id`): 64 hex characters. Default
    /// `<data_dir>/masking-hash.key`, generated (0600) on the first start that needs it.
    pub hash_key_file: Option<PathBuf>,
    /// `[[masking.rules]]`: where several apply to one column, the strictest strategy wins.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// `[[masking.detectors]]`: content detectors for the identities they name.
    #[serde(default)]
    pub detectors: Vec<DetectorSection>,
}

/// `[[masking.rules]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// Unique name; audit records name it.
    pub name: String,
    /// Column globs (`*`, `?`): `schema.table.column`, `table.column` (any schema) or `column`
    /// (any table). Names compare as the catalog spells them.
    pub columns: Vec<String>,
    /// `redact`, `null`, `partial`, `email`, `hash`, `card` or `national-id`.
    pub strategy: String,
    /// `partial`: how many trailing characters stay. Default 4.
    pub keep_last: Option<usize>,
    /// Groups it applies to. Absent, or `"*"`: every identity (unless `subjects` is given).
    pub groups: Option<Vec<String>>,
    /// Subjects it applies to.
    pub subjects: Option<Vec<String>>,
    /// Groups it never applies to, even when listed above.
    #[serde(default)]
    pub except_groups: Vec<String>,
    /// Subjects it never applies to.
    #[serde(default)]
    pub except_subjects: Vec<String>,
    /// Target name globs. Default: every target.
    pub targets: Option<Vec<String>>,
}

/// `[[masking.detectors]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSection {
    /// Unique name; audit records name it.
    pub name: String,
    /// Detector kinds: `email`, `card`, `ssn`, `iban`, `phone`, `secret`, `jwt`, `private-key`.
    /// Default: all of them.
    pub kinds: Option<Vec<String>>,
    /// Groups it applies to. Absent, or `"*"`: every identity (unless `subjects` is given).
    pub groups: Option<Vec<String>>,
    /// Subjects it applies to.
    pub subjects: Option<Vec<String>>,
    /// Groups it never applies to, even when listed above.
    #[serde(default)]
    pub except_groups: Vec<String>,
    /// Subjects it never applies to.
    #[serde(default)]
    pub except_subjects: Vec<String>,
    /// Target name globs. Default: every target.
    pub targets: Option<Vec<String>>,
}

/// Who a rule or detector set applies to, and where, as written (the same keys in both sections).
struct PrincipalSection<'a> {
    groups: Option<&'a [String]>,
    subjects: Option<&'a [String]>,
    except_groups: &'a [String],
    except_subjects: &'a [String],
    targets: Option<&'a [String]>,
}

macro_rules! principal_section {
    ($s:expr) => {
        PrincipalSection {
            groups: $s.groups.as_deref(),
            subjects: $s.subjects.as_deref(),
            except_groups: &$s.except_groups,
            except_subjects: &$s.except_subjects,
            targets: $s.targets.as_deref(),
        }
    };
}

/// `[masking]`, checked.
#[derive(Debug, Clone)]
pub struct MaskingConfig {
    /// See [`MaskingSection::strict`].
    pub strict: bool,
    /// See [`MaskingSection::refuse_predicates`].
    pub refuse_predicates: bool,
    /// Where the hash key is (resolved), when a rule needs one.
    pub hash_key_file: PathBuf,
    /// Column rules, in order.
    pub rules: Vec<Rule>,
    /// Detector sets, in order.
    pub detectors: Vec<DetectorRule>,
}

/// One column rule, checked.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name.
    pub name: Arc<str>,
    /// The columns it names.
    pub columns: Vec<ColumnGlob>,
    /// How values are masked.
    pub strategy: Strategy,
    /// Who and where.
    pub principals: Principals,
    /// `name: strategy`, as audit records give the reason.
    pub reason: Arc<str>,
}

/// One detector set, checked.
#[derive(Debug, Clone)]
pub struct DetectorRule {
    /// Its name.
    pub name: Arc<str>,
    /// The detectors.
    pub detectors: Arc<Detectors>,
    /// Who and where.
    pub principals: Principals,
    /// `name: detectors`, as audit records give the reason.
    pub reason: Arc<str>,
}

/// A column glob of one to three parts.
#[derive(Debug, Clone)]
pub struct ColumnGlob {
    schema: Option<Glob>,
    table: Option<Glob>,
    column: Glob,
}

impl ColumnGlob {
    /// Parses `schema.table.column`, `table.column` or `column`.
    pub fn parse(text: &str) -> Result<ColumnGlob, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{text}`: empty name part"));
        }
        let g = |s: &str| Glob::new(s);
        match parts.as_slice() {
            [c] => Ok(ColumnGlob {
                schema: None,
                table: None,
                column: g(c),
            }),
            [t, c] => Ok(ColumnGlob {
                schema: None,
                table: Some(g(t)),
                column: g(c),
            }),
            [s, t, c] => Ok(ColumnGlob {
                schema: Some(g(s)),
                table: Some(g(t)),
                column: g(c),
            }),
            _ => Err(format!(
                "`{text}`: a column is `column`, `table.column` or `schema.table.column`"
            )),
        }
    }

    /// Whether the column `schema.table.column` matches.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.column.matches(column)
            && self.table.as_ref().is_none_or(|t| t.matches(table))
            && self.schema.as_ref().is_none_or(|s| s.matches(schema))
    }

    /// Whether a column named `column` in some relation the caller could not place may match.
    pub fn matches_column_anywhere(&self, column: &str) -> bool {
        self.column.matches(column)
    }
}

/// Who a rule applies to, checked.
#[derive(Debug, Clone)]
pub struct Principals {
    everyone: bool,
    groups: Vec<String>,
    subjects: Vec<String>,
    except_groups: Vec<String>,
    except_subjects: Vec<String>,
    targets: Option<Vec<Glob>>,
}

impl Principals {
    fn from_section(section: &PrincipalSection<'_>) -> Principals {
        let groups = section.groups.unwrap_or_default().to_vec();
        let subjects = section.subjects.unwrap_or_default().to_vec();
        let everyone = groups.iter().any(|g| g == "*")
            || (section.groups.is_none() && section.subjects.is_none());
        Principals {
            everyone,
            groups,
            subjects,
            except_groups: section.except_groups.to_vec(),
            except_subjects: section.except_subjects.to_vec(),
            targets: section
                .targets
                .map(|t| t.iter().map(|g| Glob::new(g.as_str())).collect()),
        }
    }

    /// Whether it applies to this session's identity on its target.
    pub fn applies(&self, session: &SessionContext) -> bool {
        self.applies_to(&session.identity, &session.target.name)
    }

    /// Whether it applies to `identity` on the target called `target`.
    pub fn applies_to(&self, identity: &Identity, target: &str) -> bool {
        if let Some(targets) = &self.targets {
            if !targets.iter().any(|t| t.matches(target)) {
                return false;
            }
        }
        if self.except_subjects.contains(&identity.subject)
            || self.except_groups.iter().any(|g| identity.in_group(g))
        {
            return false;
        }
        self.everyone
            || self.subjects.contains(&identity.subject)
            || self.groups.iter().any(|g| identity.in_group(g))
    }
}

impl Rule {
    /// Whether the rule names `schema.table.column`.
    pub fn names(&self, schema: &str, table: &str, column: &str) -> bool {
        self.columns
            .iter()
            .any(|c| c.matches(schema, table, column))
    }

    /// Whether the rule may name a column called `column` of a relation that cannot be placed.
    pub fn names_column(&self, column: &str) -> bool {
        self.columns
            .iter()
            .any(|c| c.matches_column_anywhere(column))
    }
}

impl MaskingConfig {
    /// Checks a `[masking]` section. `resolve` turns a path as written into one relative to the
    /// working directory (the config file's directory is the base); `data_dir` is where the
    /// default hash key lives. Every problem is reported, each naming its key.
    pub fn from_section(
        section: &MaskingSection,
        data_dir: &Path,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<MaskingConfig, Vec<String>> {
        let mut errors = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut rules = Vec::new();
        for (i, r) in section.rules.iter().enumerate() {
            let at = format!("`masking.rules[{i}]` ({})", r.name);
            if r.name.trim().is_empty() {
                errors.push(format!("`masking.rules[{i}].name` is empty"));
            }
            if !names.insert(r.name.clone()) {
                errors.push(format!("{at}: the name is used twice"));
            }
            if r.columns.is_empty() {
                errors.push(format!("{at}: `columns` is empty"));
            }
            let mut columns = Vec::new();
            for c in &r.columns {
                match ColumnGlob::parse(c) {
                    Ok(g) => columns.push(g),
                    Err(e) => errors.push(format!("{at}: `columns`: {e}")),
                }
            }
            if r.keep_last.is_some() && r.strategy != "partial" {
                errors.push(format!(
                    "{at}: `keep_last` is for the `partial` strategy only"
                ));
            }
            let principals = principal_section!(r);
            check_principals(&principals, &at, &mut errors);
            let strategy = match Strategy::parse(&r.strategy, r.keep_last) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(format!("{at}: `strategy`: {e}"));
                    continue;
                }
            };
            rules.push(Rule {
                name: Arc::from(r.name.as_str()),
                reason: Arc::from(format!("{}: {}", r.name, strategy.name())),
                columns,
                strategy,
                principals: Principals::from_section(&principals),
            });
        }
        let mut detectors = Vec::new();
        for (i, d) in section.detectors.iter().enumerate() {
            let at = format!("`masking.detectors[{i}]` ({})", d.name);
            if d.name.trim().is_empty() {
                errors.push(format!("`masking.detectors[{i}].name` is empty"));
            }
            if !names.insert(d.name.clone()) {
                errors.push(format!("{at}: the name is used twice"));
            }
            let kinds = match &d.kinds {
                None => DetectorKind::all().to_vec(),
                Some(list) => {
                    let mut kinds = Vec::new();
                    for k in list {
                        match DetectorKind::parse(k) {
                            Some(kind) => kinds.push(kind),
                            None => errors.push(format!(
                                "{at}: `kinds`: unknown detector `{k}` (known: {})",
                                DetectorKind::all()
                                    .iter()
                                    .map(|k| k.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        }
                    }
                    if list.is_empty() {
                        errors.push(format!("{at}: `kinds` is empty"));
                    }
                    kinds
                }
            };
            let principals = principal_section!(d);
            check_principals(&principals, &at, &mut errors);
            detectors.push(DetectorRule {
                name: Arc::from(d.name.as_str()),
                reason: Arc::from(format!(
                    "{}: detectors ({})",
                    d.name,
                    kinds
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                detectors: Arc::new(Detectors::new(&kinds)),
                principals: Principals::from_section(&principals),
            });
        }
        let hash_key_file = match &section.hash_key_file {
            Some(p) => resolve(p),
            None => data_dir.join("masking-hash.key"),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(MaskingConfig {
            strict: section.strict.unwrap_or(true),
            refuse_predicates: section.refuse_predicates.unwrap_or(false),
            hash_key_file,
            rules,
            detectors,
        })
    }

    /// Whether a rule uses a keyed strategy, so that the hash key must be loaded (or created).
    pub fn needs_hash_key(&self) -> bool {
        self.rules.iter().any(|r| r.strategy.needs_key())
    }
}

fn check_principals(p: &PrincipalSection<'_>, at: &str, errors: &mut Vec<String>) {
    for (key, list) in [
        ("groups", p.groups),
        ("subjects", p.subjects),
        ("targets", p.targets),
    ] {
        if let Some(list) = list {
            if list.is_empty() {
                errors.push(format!(
                    "{at}: `{key}` is empty, so the entry applies to no one; remove it or name someone"
                ));
            }
            if list.iter().any(|s| s.trim().is_empty()) {
                errors.push(format!("{at}: `{key}` holds an empty name"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> MaskingSection {
        toml::from_str(text).expect("valid TOML for the schema")
    }

    fn check(text: &str) -> Result<MaskingConfig, Vec<String>> {
        MaskingConfig::from_section(&section(text), Path::new("/data"), &|p| {
            Path::new("/etc/portcullis").join(p)
        })
    }

    #[test]
    fn column_globs_of_one_two_and_three_parts() {
        let g = ColumnGlob::parse("ssn").unwrap();
        assert!(g.matches("public", "customers", "ssn"));
        assert!(!g.matches("public", "customers", "ssn2"));
        let g = ColumnGlob::parse("customers.e*").unwrap();
        assert!(g.matches("crm", "customers", "email"));
        assert!(!g.matches("crm", "orders", "email"));
        let g = ColumnGlob::parse("public.*.card_?").unwrap();
        assert!(g.matches("public", "x", "card_1"));
        assert!(!g.matches("other", "x", "card_1"));
        assert!(g.matches_column_anywhere("card_9"));
        assert!(ColumnGlob::parse("a..b").is_err());
        assert!(ColumnGlob::parse("a.b.c.d").is_err());
    }

    #[test]
    fn defaults_are_strict_with_a_key_in_the_data_dir() {
        let c = check(
            r#"
            [[rules]]
            name = "ids"
            columns = ["ssn"]
            strategy = "hash"
            "#,
        )
        .unwrap();
        assert!(c.strict);
        assert!(!c.refuse_predicates);
        assert_eq!(c.hash_key_file, Path::new("/data/masking-hash.key"));
        assert!(c.needs_hash_key());
        assert_eq!(&*c.rules[0].reason, "ids: hash");
    }

    #[test]
    fn key_file_resolves_against_the_config() {
        let c = check(
            r#"
            hash_key_file = "keys/mask.key"
            [[rules]]
            name = "r"
            columns = ["email"]
            strategy = "email"
            "#,
        )
        .unwrap();
        assert_eq!(c.hash_key_file, Path::new("/etc/portcullis/keys/mask.key"));
        assert!(!c.needs_hash_key());
    }

    #[test]
    fn every_problem_is_reported() {
        let errors = check(
            r#"
            [[rules]]
            name = "a"
            columns = []
            strategy = "shred"
            [[rules]]
            name = "a"
            columns = ["x..y"]
            strategy = "redact"
            keep_last = 2
            groups = []
            [[detectors]]
            name = "d"
            kinds = ["email", "horoscope"]
            "#,
        )
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "`columns` is empty",
            "`strategy`",
            "used twice",
            "empty name part",
            "`keep_last` is for the `partial` strategy only",
            "`groups` is empty",
            "unknown detector `horoscope`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    fn identity(subject: &str, groups: &[&str]) -> Identity {
        Identity {
            subject: subject.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            auth_method: gateway_core::AuthMethod::Jwt,
            claims: Default::default(),
        }
    }

    #[test]
    fn principals_groups_subjects_exceptions_and_targets() {
        let c = check(
            r#"
            [[rules]]
            name = "everyone"
            columns = ["a"]
            strategy = "null"
            except_groups = ["dba"]
            [[rules]]
            name = "analysts-on-prod"
            columns = ["b"]
            strategy = "null"
            groups = ["analysts"]
            subjects = ["carol"]
            except_subjects = ["alice"]
            targets = ["prod-*"]
            "#,
        )
        .unwrap();
        let (everyone, analysts) = (&c.rules[0].principals, &c.rules[1].principals);
        assert!(everyone.applies_to(&identity("bob", &[]), "dev"));
        assert!(!everyone.applies_to(&identity("bob", &["dba"]), "dev"));
        assert!(analysts.applies_to(&identity("bob", &["analysts"]), "prod-eu"));
        assert!(analysts.applies_to(&identity("carol", &[]), "prod-eu"));
        assert!(!analysts.applies_to(&identity("bob", &["analysts"]), "staging"));
        assert!(!analysts.applies_to(&identity("alice", &["analysts"]), "prod-eu"));
        assert!(!analysts.applies_to(&identity("dave", &["engineering"]), "prod-eu"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<MaskingSection, _> =
            toml::from_str("[[rules]]\nname='a'\ncolumns=['x']\nstrategy='null'\ncolour='red'\n");
        assert!(r.is_err());
    }
}
