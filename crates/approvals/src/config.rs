//! `[approvals]`: who decides held statements, how long statements wait, and where requests and
//! grants are kept. Plain serde structs the gateway's config embeds; durations are strings such
//! as `"30s"`, `"5m"`, `"1h30m"`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `[approvals]`.
///
/// ```toml
/// [approvals]
/// approvers = ["dba"]
/// admins = ["platform"]
/// quorum = 1
/// wait = "5m"
/// without_notices = "refuse"
/// expire_after = "1h"
/// require_reason = false
/// break_glass = ["oncall"]
/// path = "/var/lib/portcullis/approvals.db"
///
/// [[approvals.rules]]
/// rule = "ledger-writes"
/// approvers = ["finance-leads", "dba"]
/// quorum = 2
/// require_reason = true
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Groups whose members may approve or deny held statements (any of), for every rule without
    /// its own `approvers`. Default: none (then only rules that name approvers can be approved).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Groups whose members use the admin API beyond deciding requests: list every request,
    /// create and revoke grants, list and end sessions, search the audit trail. Default: none.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Distinct approvers a request needs. Default 1.
    #[serde(default = "one")]
    pub quorum: u32,
    /// How long a held statement waits for the decision before it is refused (the request stays
    /// open: run the statement again once it is approved). Default `"5m"`.
    #[serde(default = "default_wait", deserialize_with = "de_duration")]
    pub wait: Duration,
    /// Sessions whose protocol cannot tell the user anything while a statement waits (MySQL):
    /// `"refuse"` (default) refuses the statement at once with the request id in the error, and
    /// the same statement runs when sent again after the approval; `"wait"` waits silently.
    #[serde(default)]
    pub without_notices: WithoutNotices,
    /// How long a request may be decided, and an approved request used, after it was opened.
    /// Default `"1h"`.
    #[serde(default = "default_expire_after", deserialize_with = "de_duration")]
    pub expire_after: Duration,
    /// Whether a decision must give a reason. Default `false`.
    #[serde(default)]
    pub require_reason: bool,
    /// Groups whose members may approve their own requests, with a mandatory reason (break
    /// glass): such an approval satisfies the quorum alone, and is recorded and notified as
    /// break-glass. Default: none.
    #[serde(default)]
    pub break_glass: Vec<String>,
    /// The SQLite file requests and grants are kept in. Default `approvals.db` in the gateway's
    /// `data_dir`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A PostgreSQL database that keeps requests and grants instead of the SQLite file, shared
    /// by every gateway node that names it: a connection string (`postgresql://...` or
    /// `host=... dbname=...`) whose `sslmode` is `disable` (default), `require` or
    /// `verify-full`, as for a PostgreSQL audit sink. `${VAR}` is expanded here. Default: none.
    #[serde(default)]
    pub store_url: Option<String>,
    /// With `store_url` and `sslmode=verify-full`: the CA certificates (PEM) to trust instead of
    /// the bundled Mozilla roots.
    #[serde(default)]
    pub store_ca_file: Option<PathBuf>,
    /// How often a waiting statement looks for decisions taken on other gateway nodes sharing
    /// the store. Decisions taken on this node wake it at once. Default `"1s"`.
    #[serde(default = "default_poll", deserialize_with = "de_duration")]
    pub poll: Duration,
    /// Settings for the statements one require-approval rule holds.
    #[serde(default)]
    pub rules: Vec<RuleApprovals>,
    /// Where requests, decisions and break-glass approvals are announced (`[[approvals.webhooks]]`).
    #[serde(default)]
    pub webhooks: Vec<crate::notify::WebhookConfig>,
}

/// `[[approvals.rules]]`: overrides for the statements the policy rule `rule` holds. Unset keys
/// take the `[approvals]` value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleApprovals {
    /// The name of a `require-approval` rule in `[policy]`. Required.
    pub rule: String,
    /// Groups whose members may decide this rule's requests.
    pub approvers: Option<Vec<String>>,
    /// Distinct approvers needed.
    pub quorum: Option<u32>,
    /// How long its statements wait; `"0s"`: refuse at once, run again after the approval.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub wait: Option<Duration>,
    /// As `[approvals] without_notices`.
    pub without_notices: Option<WithoutNotices>,
    /// Whether a decision must give a reason.
    pub require_reason: Option<bool>,
}

/// What a session without notices does with a held statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithoutNotices {
    /// Refuse at once, naming the request; the statement runs when sent again after approval.
    #[default]
    Refuse,
    /// Wait silently, as sessions with notices do.
    Wait,
}

/// The settings that apply to one rule's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Groups that may decide.
    pub approvers: Vec<String>,
    /// Distinct approvers needed.
    pub quorum: u32,
    /// How long a statement waits (zero: it does not).
    pub wait: Duration,
    /// Sessions without notices.
    pub without_notices: WithoutNotices,
    /// Whether a decision needs a reason.
    pub require_reason: bool,
}

fn one() -> u32 {
    1
}
fn default_wait() -> Duration {
    Duration::from_secs(300)
}
fn default_expire_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            approvers: Vec::new(),
            admins: Vec::new(),
            quorum: 1,
            wait: default_wait(),
            without_notices: WithoutNotices::default(),
            expire_after: default_expire_after(),
            require_reason: false,
            break_glass: Vec::new(),
            path: None,
            store_url: None,
            store_ca_file: None,
            poll: default_poll(),
            rules: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

impl ApprovalsConfig {
    /// The settings for statements held by `rule`.
    pub fn effective(&self, rule: Option<&str>) -> Effective {
        let r = rule.and_then(|name| self.rules.iter().find(|r| r.rule == name));
        Effective {
            approvers: r
                .and_then(|r| r.approvers.clone())
                .unwrap_or_else(|| self.approvers.clone()),
            quorum: r.and_then(|r| r.quorum).unwrap_or(self.quorum),
            wait: r.and_then(|r| r.wait).unwrap_or(self.wait),
            without_notices: r
                .and_then(|r| r.without_notices)
                .unwrap_or(self.without_notices),
            require_reason: r
                .and_then(|r| r.require_reason)
                .unwrap_or(self.require_reason),
        }
    }

    /// The store's file: `path`, or `approvals.db` in `data_dir`.
    pub fn store_path(&self, data_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir.join("approvals.db"))
    }

    /// Checks the section on its own and against the names of the policy's require-approval
    /// rules (`held_rules`); every problem is reported.
    pub fn check(&self, held_rules: &[&str]) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.quorum == 0 {
            errors.push("`quorum` must be at least 1".to_owned());
        }
        if self.poll.is_zero() {
            errors.push("`poll` must be longer than 0s".to_owned());
        }
        if self.expire_after < self.wait {
            errors.push(format!(
                "`expire_after` ({}) is shorter than `wait` ({}): a waiting statement's request would expire first",
                humantime::format_duration(self.expire_after),
                humantime::format_duration(self.wait)
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if !held_rules.contains(&r.rule.as_str()) {
                errors.push(format!(
                    "`rules[{i}].rule`: \"{}\" is not a require-approval rule of [policy]",
                    r.rule
                ));
            }
            if r.quorum == Some(0) {
                errors.push(format!("`rules[{i}].quorum` must be at least 1"));
            }
            if self.rules[..i].iter().any(|o| o.rule == r.rule) {
                errors.push(format!(
                    "`rules[{i}].rule`: \"{}\" is configured twice",
                    r.rule
                ));
            }
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            errors.extend(hook.check(i));
        }
        for rule in held_rules {
            let e = self.effective(Some(rule));
            if e.approvers.is_empty() {
                errors.push(format!(
                    "rule \"{rule}\" holds statements but no group may approve them: set `approvers`, or `approvers` in its [[approvals.rules]] entry"
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration `{s}`: {e} (write e.g. \"30s\", \"5m\", \"1h\")"
        ))
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_entries_override_the_section_and_are_checked_against_the_policy() {
        let c: ApprovalsConfig = toml::from_str(
            r#"
            approvers = ["dba"]
            wait = "2m"
            [[rules]]
            rule = "ledger"
            approvers = ["finance"]
            quorum = 2
            wait = "0s"
            [[rules]]
            rule = "ghost"
            "#,
        )
        .unwrap();
        let e = c.effective(Some("ledger"));
        assert_eq!(e.approvers, vec!["finance".to_owned()]);
        assert_eq!((e.quorum, e.wait), (2, Duration::ZERO));
        let d = c.effective(Some("schema"));
        assert_eq!(d.approvers, vec!["dba".to_owned()]);
        assert_eq!((d.quorum, d.wait), (1, Duration::from_secs(120)));
        let errors = c.check(&["ledger", "schema"]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("\"ghost\" is not a require-approval rule"));

        let none: ApprovalsConfig = toml::from_str("quorum = 0").unwrap();
        let errors = none.check(&["schema"]).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("`quorum`")));
        assert!(errors.iter().any(|e| e.contains("no group may approve")));
    }

    #[test]
    fn a_bad_duration_names_the_form() {
        let e = toml::from_str::<ApprovalsConfig>("wait = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("invalid duration `soon`"), "{e}");
    }
}
