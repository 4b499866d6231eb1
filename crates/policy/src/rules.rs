//! The rule language: the `[policy]` table of the gateway's TOML configuration ([`PolicySection`],
//! read with serde, unknown keys refused, every value with its span), and the checked
//! [`RuleSet`] the [engine](crate::engine) runs.
//!
//! Checking collects every problem at once as [`RuleError`]s, each with the byte span of the
//! value at fault, so that the configuration loader can report `file:line:column` for each.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use gateway_core::{Access, Identity, Target};
use serde::Deserialize;
use toml::Spanned;

use crate::facts::Class;
use crate::glob::{Glob, ObjectGlob};

// ---------------------------------------------------------------------------------------------
// The file schema
// ---------------------------------------------------------------------------------------------

type S = Spanned<String>;

/// `[policy]` as written. The doc comments are the reference for every key; `docs/policy.md`
/// explains how they combine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// What happens to statements the parser cannot read: `"deny"` (default) or `"allow"`.
    pub unparsable: Option<S>,
    /// Functions the built-in rule `builtin:dangerous-function` denies, as `name` or
    /// `schema.name` globs. Replaces the built-in list ([`DEFAULT_DANGEROUS_FUNCTIONS`]).
    pub dangerous_functions: Option<Spanned<Vec<S>>>,
    /// Whether `builtin:dangerous-function` is on. Default `true`.
    pub deny_dangerous_functions: Option<bool>,
    /// Whether `builtin:session-fence` also denies `SET application_name`, which carries the
    /// identity into the upstream's `pg_stat_activity` and logs. Default `false`, because PgJDBC
    /// and DBeaver set it on every connection.
    pub protect_application_name: Option<bool>,
    /// `[[policy.access]]`: who may open which targets, in order; the first match decides.
    #[serde(default)]
    pub access: Vec<Spanned<AccessSection>>,
    /// `[[policy.rules]]`: statement rules.
    #[serde(default)]
    pub rules: Vec<Spanned<RuleSection>>,
}

/// One `[[policy.access]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    /// Unique name, shown in audit records and messages. Required.
    pub name: S,
    /// Groups admitted (any of); `"*"` admits every identity. `groups` or `subjects` is required.
    pub groups: Option<Spanned<Vec<S>>>,
    /// Subjects admitted (any of).
    pub subjects: Option<Spanned<Vec<S>>>,
    /// Groups excluded even when `groups`/`subjects` admit them.
    pub except_groups: Option<Spanned<Vec<S>>>,
    /// Subjects excluded.
    pub except_subjects: Option<Spanned<Vec<S>>>,
    /// Globs over target names (any of). Default: every target.
    pub targets: Option<Spanned<Vec<S>>>,
    /// Target labels that must all match (values are globs).
    pub labels: Option<Spanned<BTreeMap<String, S>>>,
    /// `"read-only"` or `"read-write"`. Required.
    pub mode: S,
}

/// One `[[policy.rules]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// Unique name, shown to the user and in audit records. Required.
    pub name: S,
    /// `"deny"`, `"require-approval"` or `"allow"`. Required.
    pub action: S,
    /// Class names or sub-kinds (any of).
    pub kinds: Option<Spanned<Vec<S>>>,
    /// Object globs over everything read or written (any of).
    pub objects: Option<Spanned<Vec<S>>>,
    /// Object globs over what is read (any of).
    pub reads: Option<Spanned<Vec<S>>>,
    /// Object globs over what is written (any of).
    pub writes: Option<Spanned<Vec<S>>>,
    /// Function globs (any of).
    pub functions: Option<Spanned<Vec<S>>>,
    /// `"missing"`: only UPDATE/DELETE/MERGE whose WHERE is absent or always true.
    pub filter: Option<S>,
    /// Globs over target names (any of). Default: every target.
    pub targets: Option<Spanned<Vec<S>>>,
    /// Target labels that must all match (values are globs).
    pub labels: Option<Spanned<BTreeMap<String, S>>>,
    /// Groups the rule applies to (any of); `"*"` is every identity. Default: every identity.
    pub groups: Option<Spanned<Vec<S>>>,
    /// Subjects the rule applies to (any of).
    pub subjects: Option<Spanned<Vec<S>>>,
    /// Groups the rule does not apply to.
    pub except_groups: Option<Spanned<Vec<S>>>,
    /// Subjects the rule does not apply to.
    pub except_subjects: Option<Spanned<Vec<S>>>,
    /// Message shown to the user when the rule denies or holds a statement.
    pub message: Option<S>,
    /// Allow rules only: built-in rules this rule lifts for the statements it matches.
    pub overrides: Option<Spanned<Vec<S>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDocument {
    policy: Spanned<PolicySection>,
}

// ---------------------------------------------------------------------------------------------
// The checked rule set
// ---------------------------------------------------------------------------------------------

/// The functions `builtin:dangerous-function` denies when `dangerous_functions` is not set: they
/// reach outside the database (files, other servers, other sessions, server configuration) or run
/// SQL text that analysis cannot see.
pub const DEFAULT_DANGEROUS_FUNCTIONS: &[&str] = &[
    // Other sessions and the server process.
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    // The server's file system.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "lo_import",
    "lo_export",
    "load_file",
    // Other servers.
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "dblink_open",
    // SQL text run inside a function, out of the analysis' sight.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    // MySQL user-defined functions commonly installed to run shell commands.
    "sys_exec",
    "sys_eval",
];

/// A built-in rule: a guardrail that applies without being written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Builtin {
    /// The statement could not be analysed (unless `unparsable = "allow"`).
    Unparsable,
    /// PostgreSQL's own grammar rejects the statement (unless `unparsable = "allow"`): refused
    /// with the syntax error the server would give (SQLSTATE 42601), not a policy error.
    SyntaxError,
    /// The session's settings make the server read SQL differently from the gateway.
    ReadingSettings,
    /// The session is read-only and the statement is not.
    ReadOnly,
    /// The statement would step around the gateway's fences (role, session authorization, string
    /// and encoding settings, `set_config`, and `application_name` when protected).
    SessionFence,
    /// The statement calls a dangerous function.
    DangerousFunction,
    /// The statement reads or writes the server's files or runs a program there (COPY ... PROGRAM,
    /// COPY to or from a server file, LOAD, SELECT ... INTO OUTFILE, LOAD DATA INFILE).
    ServerFiles,
    /// No access rule admits this identity to this target any more (the policy changed after the
    /// session opened).
    NoAccess,
    /// Not a rule that decides by itself: SQL built at run time (the `dynamic_sql` sub-kind) is
    /// treated as "could be anything", so every deny and require-approval rule, and every
    /// built-in guardrail, applies to it whatever it names. Lifting it (an allow rule's
    /// `overrides`) judges such statements by what is visible of them only.
    DynamicSql,
}

impl Builtin {
    /// The rule name as shown to users and recorded in audit records.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Unparsable => "builtin:unparsable",
            Builtin::SyntaxError => "builtin:syntax-error",
            Builtin::ReadingSettings => "builtin:reading-settings",
            Builtin::ReadOnly => "builtin:read-only",
            Builtin::SessionFence => "builtin:session-fence",
            Builtin::DangerousFunction => "builtin:dangerous-function",
            Builtin::ServerFiles => "builtin:server-files",
            Builtin::NoAccess => "builtin:no-access",
            Builtin::DynamicSql => "builtin:dynamic-sql",
        }
    }

    /// The built-in rules an allow rule may lift with `overrides`.
    pub const OVERRIDABLE: [Builtin; 5] = [
        Builtin::ReadOnly,
        Builtin::SessionFence,
        Builtin::DangerousFunction,
        Builtin::ServerFiles,
        Builtin::DynamicSql,
    ];

    fn from_name(name: &str) -> Option<Builtin> {
        [
            Builtin::Unparsable,
            Builtin::SyntaxError,
            Builtin::ReadingSettings,
            Builtin::ReadOnly,
            Builtin::SessionFence,
            Builtin::DangerousFunction,
            Builtin::ServerFiles,
            Builtin::NoAccess,
            Builtin::DynamicSql,
        ]
        .into_iter()
        .find(|b| b.name() == name)
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happens to a statement the gateway cannot analyse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unparsable {
    /// Deny it: the default, because what the gateway cannot read it cannot judge. A text
    /// PostgreSQL's grammar rejects is refused with the server's own syntax error
    /// (`builtin:syntax-error`), anything else with a policy error (`builtin:unparsable`).
    Deny,
    /// Let it through, relying on the upstream's own permissions (and, for read-only sessions,
    /// the upstream's read-only transaction); a syntax error then comes from the server itself.
    Allow,
}

/// What a statement rule does to the statements it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Allow; may also lift built-in rules with `overrides`.
    Allow,
    /// Hold for someone else's approval.
    RequireApproval,
    /// Refuse.
    Deny,
}

/// Who a rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Principals {
    /// Every identity (`groups = ["*"]`, or no `groups`/`subjects` on a statement rule).
    pub everyone: bool,
    /// Groups (any of).
    pub groups: Vec<String>,
    /// Subjects (any of).
    pub subjects: Vec<String>,
    /// Groups excluded.
    pub except_groups: Vec<String>,
    /// Subjects excluded.
    pub except_subjects: Vec<String>,
}

impl Principals {
    /// Whether the rule applies to `identity`.
    pub fn admits(&self, identity: &Identity) -> bool {
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

/// Which targets a rule applies to: a name glob (any of) and labels (all of).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetSelector {
    /// Globs over the target name; empty means every name.
    pub names: Vec<Glob>,
    /// Label name and value glob; every one must match.
    pub labels: Vec<(String, Glob)>,
}

impl TargetSelector {
    /// Whether `target` is selected.
    pub fn selects(&self, target: &Target) -> bool {
        (self.names.is_empty() || self.names.iter().any(|g| g.matches(&target.name)))
            && self
                .labels
                .iter()
                .all(|(k, g)| target.labels.get(k).is_some_and(|v| g.matches(v)))
    }
}

/// One entry of a rule's `kinds`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum KindSelector {
    /// A broad class (`read`, `write`, `ddl`, ...), compared with the statement's class.
    Class(Class),
    /// A sub-kind (`drop`, `delete`, `copy_program`, ...), compared with the statement's kinds.
    Kind(String),
}

/// One `[[policy.access]]` rule, checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessRule {
    /// Its name.
    pub name: Arc<str>,
    /// Who it admits.
    pub principals: Principals,
    /// Which targets.
    pub targets: TargetSelector,
    /// With what access.
    pub mode: Access,
}

/// One `[[policy.rules]]` rule, checked. Every condition that is set must hold (a list holds
/// when any of its entries does).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatementRule {
    /// Its name.
    pub name: Arc<str>,
    /// What it does.
    pub action: Action,
    /// Classes or sub-kinds; empty: any statement.
    pub kinds: Vec<KindSelector>,
    /// Objects read or written; empty: no condition.
    pub objects: Vec<ObjectGlob>,
    /// Objects read; empty: no condition.
    pub reads: Vec<ObjectGlob>,
    /// Objects written; empty: no condition.
    pub writes: Vec<ObjectGlob>,
    /// Functions called; empty: no condition.
    pub functions: Vec<ObjectGlob>,
    /// Only UPDATE/DELETE/MERGE whose WHERE is absent or always true.
    pub filter_missing: bool,
    /// Targets.
    pub targets: TargetSelector,
    /// Identities.
    pub principals: Principals,
    /// User-facing message.
    pub message: Option<String>,
    /// Built-in rules lifted (allow rules only).
    pub overrides: Vec<Builtin>,
}

/// A checked `[policy]`: what the engine runs. Serializes as the admin API's effective policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleSet {
    /// What happens to statements the parser cannot read.
    pub unparsable: Unparsable,
    /// The functions `builtin:dangerous-function` denies.
    pub dangerous_functions: Vec<ObjectGlob>,
    /// Whether `builtin:dangerous-function` is on.
    pub deny_dangerous_functions: bool,
    /// Whether `builtin:session-fence` also denies `SET application_name`.
    pub protect_application_name: bool,
    /// Access rules in order.
    pub access: Vec<AccessRule>,
    /// Statement rules in order.
    pub rules: Vec<StatementRule>,
}

impl Default for RuleSet {
    /// The built-in guardrails and no access rule: every session is refused.
    fn default() -> Self {
        RuleSet {
            unparsable: Unparsable::Deny,
            dangerous_functions: DEFAULT_DANGEROUS_FUNCTIONS
                .iter()
                .filter_map(|f| ObjectGlob::parse(f).ok())
                .collect(),
            deny_dangerous_functions: true,
            protect_application_name: false,
            access: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// One problem in a `[policy]` table: the byte span of the value at fault in the document, and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Byte range in the TOML document.
    pub span: Range<usize>,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.span.start, self.message)
    }
}

impl RuleSet {
    /// The access rule that admits `identity` to `target`: the first that matches.
    pub fn access_rule(&self, identity: &Identity, target: &Target) -> Option<&AccessRule> {
        self.access
            .iter()
            .find(|r| r.principals.admits(identity) && r.targets.selects(target))
    }

    /// Parses a TOML document whose only table is `[policy]` (for tests, benchmarks and
    /// embedders; the gateway reads `[policy]` as part of its whole configuration).
    pub fn from_toml(text: &str) -> Result<RuleSet, Vec<RuleError>> {
        let doc: PolicyDocument = toml::from_str(text).map_err(|e| {
            vec![RuleError {
                span: e.span().unwrap_or(0..0),
                message: e.message().trim_end().to_owned(),
            }]
        })?;
        RuleSet::from_section(&doc.policy)
    }

    /// Checks a `[policy]` table, reporting every problem at once.
    pub fn from_section(section: &Spanned<PolicySection>) -> Result<RuleSet, Vec<RuleError>> {
        let mut c = Checker::default();
        let set = c.policy(section);
        if c.errors.is_empty() {
            Ok(set)
        } else {
            c.errors.sort_by_key(|e| e.span.start);
            Err(c.errors)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Checker {
    errors: Vec<RuleError>,
    names: HashSet<String>,
}

impl Checker {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(RuleError {
            span,
            message: message.into(),
        });
    }

    fn policy(&mut self, section: &Spanned<PolicySection>) -> RuleSet {
        let p = section.get_ref();
        let mut set = RuleSet::default();
        if let Some(v) = &p.unparsable {
            set.unparsable = match v.get_ref().as_str() {
                "deny" => Unparsable::Deny,
                "allow" => Unparsable::Allow,
                other => {
                    self.error(
                        v.span(),
                        format!(
                            "`unparsable`: unknown value `{other}`; write \"deny\" or \"allow\""
                        ),
                    );
                    Unparsable::Deny
                }
            };
        }
        if let Some(list) = &p.dangerous_functions {
            set.dangerous_functions = self.objects("dangerous_functions", list, true);
        }
        set.deny_dangerous_functions = p.deny_dangerous_functions.unwrap_or(true);
        set.protect_application_name = p.protect_application_name.unwrap_or(false);
        set.access = p.access.iter().map(|a| self.access(a)).collect();
        set.rules = p.rules.iter().map(|r| self.rule(r)).collect();
        set
    }

    fn name(&mut self, value: &S, what: &str) -> Arc<str> {
        let name = value.get_ref().trim();
        if name.is_empty() {
            self.error(
                value.span(),
                format!("`name` of a {what} must not be empty"),
            );
        } else if name.starts_with("builtin:") {
            self.error(
                value.span(),
                format!(
                    "`{name}`: names starting with `builtin:` are reserved for the built-in rules"
                ),
            );
        } else if !self.names.insert(name.to_owned()) {
            self.error(
                value.span(),
                format!("duplicate rule name `{name}`: names must be unique across `[[policy.access]]` and `[[policy.rules]]`"),
            );
        }
        Arc::from(name)
    }

    /// A list that, when present, must not be empty: an empty list would match nothing, which is
    /// never what a rule means.
    fn list<'a>(&mut self, key: &str, list: &'a Spanned<Vec<S>>) -> &'a [S] {
        if list.get_ref().is_empty() {
            self.error(list.span(), format!("`{key}` is empty, so it would match nothing: name at least one entry or remove the key"));
        }
        list.get_ref()
    }

    fn strings(&mut self, key: &str, list: Option<&Spanned<Vec<S>>>) -> Vec<String> {
        let Some(list) = list else { return Vec::new() };
        let mut out = Vec::new();
        for v in self.list(key, list) {
            let s = v.get_ref().trim();
            if s.is_empty() {
                self.error(v.span(), format!("`{key}` has an empty entry"));
            } else {
                out.push(s.to_owned());
            }
        }
        out
    }

    fn objects(&mut self, key: &str, list: &Spanned<Vec<S>>, allow_empty: bool) -> Vec<ObjectGlob> {
        let entries = if allow_empty {
            list.get_ref().as_slice()
        } else {
            self.list(key, list)
        };
        let mut out = Vec::new();
        for v in entries {
            match ObjectGlob::parse(v.get_ref().trim()) {
                Ok(g) => out.push(g),
                Err(e) => self.error(v.span(), format!("`{key}`: {e}")),
            }
        }
        out
    }

    fn principals(&mut self, p: PrincipalKeys<'_>, required: Option<Range<usize>>) -> Principals {
        let groups = self.strings("groups", p.groups);
        let subjects = self.strings("subjects", p.subjects);
        let except_groups = self.strings("except_groups", p.except_groups);
        let except_subjects = self.strings("except_subjects", p.except_subjects);
        if let Some(span) = required {
            if p.groups.is_none() && p.subjects.is_none() {
                self.error(span, "an access rule needs `groups` or `subjects` (`groups = [\"*\"]` admits every identity)");
            }
        }
        let everyone =
            groups.iter().any(|g| g == "*") || (p.groups.is_none() && p.subjects.is_none());
        Principals {
            everyone,
            groups: groups.into_iter().filter(|g| g != "*").collect(),
            subjects,
            except_groups,
            except_subjects,
        }
    }

    fn targets(
        &mut self,
        names: Option<&Spanned<Vec<S>>>,
        labels: Option<&Spanned<BTreeMap<String, S>>>,
    ) -> TargetSelector {
        let names = self
            .strings("targets", names)
            .into_iter()
            .map(Glob::new)
            .collect();
        let labels = match labels {
            Some(l) => {
                if l.get_ref().is_empty() {
                    self.error(
                        l.span(),
                        "`labels` is empty: name at least one label or remove the key",
                    );
                }
                l.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), Glob::new(v.get_ref().clone())))
                    .collect()
            }
            None => Vec::new(),
        };
        TargetSelector { names, labels }
    }

    fn access(&mut self, section: &Spanned<AccessSection>) -> AccessRule {
        let a = section.get_ref();
        let name = self.name(&a.name, "`[[policy.access]]` rule");
        let principals = self.principals(
            PrincipalKeys {
                groups: a.groups.as_ref(),
                subjects: a.subjects.as_ref(),
                except_groups: a.except_groups.as_ref(),
                except_subjects: a.except_subjects.as_ref(),
            },
            Some(section.span()),
        );
        let targets = self.targets(a.targets.as_ref(), a.labels.as_ref());
        let mode = match a.mode.get_ref().as_str() {
            "read-only" => Access::ReadOnly,
            "read-write" => Access::ReadWrite,
            other => {
                self.error(
                    a.mode.span(),
                    format!(
                        "`mode`: unknown value `{other}`; write \"read-only\" or \"read-write\""
                    ),
                );
                Access::ReadOnly
            }
        };
        AccessRule {
            name,
            principals,
            targets,
            mode,
        }
    }

    fn rule(&mut self, section: &Spanned<RuleSection>) -> StatementRule {
        let r = section.get_ref();
        let name = self.name(&r.name, "`[[policy.rules]]` rule");
        let action = match r.action.get_ref().as_str() {
            "deny" => Action::Deny,
            "require-approval" => Action::RequireApproval,
            "allow" => Action::Allow,
            other => {
                self.error(
                    r.action.span(),
                    format!("`action`: unknown value `{other}`; write \"deny\", \"require-approval\" or \"allow\""),
                );
                Action::Deny
            }
        };
        let mut kinds = Vec::new();
        if let Some(list) = &r.kinds {
            for v in self.list("kinds", list) {
                match kind_selector(v.get_ref().trim()) {
                    Ok(k) => kinds.push(k),
                    Err(e) => self.error(v.span(), e),
                }
            }
        }
        let objects = r
            .objects
            .as_ref()
            .map(|l| self.objects("objects", l, false))
            .unwrap_or_default();
        let reads = r
            .reads
            .as_ref()
            .map(|l| self.objects("reads", l, false))
            .unwrap_or_default();
        let writes = r
            .writes
            .as_ref()
            .map(|l| self.objects("writes", l, false))
            .unwrap_or_default();
        let functions = r
            .functions
            .as_ref()
            .map(|l| self.objects("functions", l, false))
            .unwrap_or_default();
        let filter_missing = match &r.filter {
            None => false,
            Some(v) if v.get_ref() == "missing" => true,
            Some(v) => {
                self.error(
                    v.span(),
                    format!(
                        "`filter`: unknown value `{}`; write \"missing\" (UPDATE/DELETE/MERGE without a WHERE, or with one that is always true)",
                        v.get_ref()
                    ),
                );
                false
            }
        };
        let targets = self.targets(r.targets.as_ref(), r.labels.as_ref());
        let principals = self.principals(
            PrincipalKeys {
                groups: r.groups.as_ref(),
                subjects: r.subjects.as_ref(),
                except_groups: r.except_groups.as_ref(),
                except_subjects: r.except_subjects.as_ref(),
            },
            None,
        );
        let message = r
            .message
            .as_ref()
            .map(|m| m.get_ref().trim().to_owned())
            .filter(|m| !m.is_empty());
        let mut overrides = Vec::new();
        if let Some(list) = &r.overrides {
            if action != Action::Allow {
                self.error(list.span(), "`overrides` is only for `action = \"allow\"` rules: it lifts built-in rules for the statements the rule allows");
            }
            for v in self.list("overrides", list) {
                match Builtin::from_name(v.get_ref().trim()) {
                    Some(b) if Builtin::OVERRIDABLE.contains(&b) => overrides.push(b),
                    Some(Builtin::Unparsable | Builtin::SyntaxError) => self.error(
                        v.span(),
                        "`builtin:unparsable` cannot be lifted per rule (no rule can match what was not parsed): set `unparsable = \"allow\"` in `[policy]`",
                    ),
                    _ => self.error(
                        v.span(),
                        format!(
                            "`{}` is not a built-in rule that can be lifted; write one of {}",
                            v.get_ref(),
                            Builtin::OVERRIDABLE.iter().map(|b| format!("\"{b}\"")).collect::<Vec<_>>().join(", ")
                        ),
                    ),
                }
            }
        }
        StatementRule {
            name,
            action,
            kinds,
            objects,
            reads,
            writes,
            functions,
            filter_missing,
            targets,
            principals,
            message,
            overrides,
        }
    }
}

struct PrincipalKeys<'a> {
    groups: Option<&'a Spanned<Vec<S>>>,
    subjects: Option<&'a Spanned<Vec<S>>>,
    except_groups: Option<&'a Spanned<Vec<S>>>,
    except_subjects: Option<&'a Spanned<Vec<S>>>,
}

const CLASSES: [Class; 8] = [
    Class::Read,
    Class::Write,
    Class::Ddl,
    Class::Dcl,
    Class::Procedural,
    Class::Session,
    Class::Transaction,
    Class::Utility,
];

fn kind_selector(text: &str) -> Result<KindSelector, String> {
    if let Some(class) = CLASSES.iter().find(|c| c.as_str() == text) {
        return Ok(KindSelector::Class(*class));
    }
    let well_formed = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if well_formed {
        Ok(KindSelector::Kind(text.to_owned()))
    } else {
        Err(format!(
            "`kinds`: `{text}` is neither a class ({}) nor a sub-kind: sub-kinds are lower-case words joined by `_`, e.g. \"drop\", \"drop_table\", \"delete\", \"copy_program\"",
            CLASSES.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
        ))
    }
}
