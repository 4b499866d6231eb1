//! `portcullis discover`: samples every column of a target with the masking detectors and prints
//! suggested `[[masking.rules]]` in the configuration's own syntax, so that a new deployment
//! finds its PII in one command.
//!
//! It reads through a metadata connection made as the gateway's catalog makes it (the target's
//! service credentials, a read-only session): the first values of each text-like column of every
//! table outside the system schemas, up to `sample` non-NULL values each. A column is suggested
//! for a rule when most of its sampled values are, whole, one kind of sensitive value (an email
//! address, a card number passing Luhn, ...) or when its name says so; a column whose values only
//! contain such values (free text, JSON) is suggested for `[[masking.detectors]]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use masking::detect::{DetectorKind, Detectors};

use crate::config::Config;

/// What `discover` found in one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `schema.table.column`.
    pub column: String,
    /// The kind the column holds.
    pub kind: DetectorKind,
    /// Why: how many sampled values matched, or the column's name.
    pub evidence: String,
    /// Whole values (a rule) or values inside text (detectors).
    pub whole: bool,
}

/// The catalog query: every live column of every table, materialized view and foreign table
/// outside the system schemas, with its type's category (S: string, U: user-defined).
const COLUMNS_SQL: &str = "SELECT n.nspname, c.relname, a.attname, t.typcategory::text \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     WHERE c.relkind IN ('r', 'p', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
     ORDER BY n.nspname, c.relname, a.attnum";

/// An identifier quoted for PostgreSQL (the names come from the catalog itself).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The kind a column's name suggests, for columns whose sample is empty or inconclusive.
fn kind_by_name(column: &str) -> Option<DetectorKind> {
    let c = column.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| c.contains(w));
    // Short abbreviations only as whole words of the name (`pan`, not `company` or `span`).
    let word = |w: &str| {
        c.split(|ch: char| !ch.is_ascii_alphanumeric())
            .any(|part| part == w)
    };
    if has(&["email", "e_mail", "mail_address"]) {
        Some(DetectorKind::Email)
    } else if word("ssn") || has(&["social_security", "national_id", "tax_id"]) {
        Some(DetectorKind::Ssn)
    } else if has(&["card_number", "cc_number", "credit_card", "card_no"]) || word("pan") {
        Some(DetectorKind::Card)
    } else if has(&["iban"]) {
        Some(DetectorKind::Iban)
    } else if has(&["phone", "mobile", "msisdn"]) {
        Some(DetectorKind::Phone)
    } else if has(&[
        "password",
        "secret",
        "api_key",
        "apikey",
        "access_token",
        "private_key",
    ]) {
        Some(DetectorKind::Secret)
    } else {
        None
    }
}

/// The masking strategy suggested for a kind.
fn strategy_for(kind: DetectorKind) -> &'static str {
    match kind {
        DetectorKind::Email => "email",
        DetectorKind::Card => "card",
        DetectorKind::Ssn => "national-id",
        DetectorKind::Iban | DetectorKind::Phone => "partial",
        _ => "redact",
    }
}

/// Classifies one column's sampled values.
pub fn classify(
    detectors: &Detectors,
    column: &str,
    name: &str,
    values: &[String],
) -> Option<Finding> {
    let mut whole: BTreeMap<&'static str, (DetectorKind, usize)> = BTreeMap::new();
    let mut inside: BTreeMap<&'static str, (DetectorKind, usize)> = BTreeMap::new();
    for v in values {
        if let Some(kind) = detectors.classify(v) {
            whole.entry(kind.name()).or_insert((kind, 0)).1 += 1;
            continue;
        }
        let mut seen = Vec::new();
        for f in detectors.find(v) {
            if !seen.contains(&f.kind) {
                seen.push(f.kind);
                inside.entry(f.kind.name()).or_insert((f.kind, 0)).1 += 1;
            }
        }
    }
    let n = values.len();
    // Whole values: a majority of the sample (and at least two values) is one kind.
    if let Some((kind, hits)) = whole.values().max_by_key(|(_, h)| *h) {
        if *hits >= 2 && hits * 2 >= n {
            return Some(Finding {
                column: column.to_owned(),
                kind: *kind,
                evidence: format!("{hits} of {n} sampled values are {}", kind.name()),
                whole: true,
            });
        }
    }
    if let Some(kind) = kind_by_name(name) {
        return Some(Finding {
            column: column.to_owned(),
            kind,
            evidence: format!("its name (no sampled value confirms it; {n} sampled)"),
            whole: true,
        });
    }
    // Inside text: any hit is worth a look, since one leaked key is one too many.
    inside
        .values()
        .max_by_key(|(_, h)| *h)
        .map(|(kind, hits)| Finding {
            column: column.to_owned(),
            kind: *kind,
            evidence: format!("{hits} of {n} sampled values contain {}", kind.name()),
            whole: false,
        })
}

/// Samples target `target` of `config` (up to `sample` values per column) and returns the
/// findings, in catalog order.
pub async fn discover(
    config: &Config,
    target: &str,
    sample: usize,
) -> anyhow::Result<Vec<Finding>> {
    let target = config
        .targets
        .iter()
        .find(|t| t.name == target)
        .with_context(|| {
            let names: Vec<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
            format!("no target named {target:?} (targets: {})", names.join(", "))
        })?;
    let target = Arc::new(target.clone());
    let tls = proto_postgres::upstream::TlsConfigs::default();
    let mut conn = proto_postgres::MetadataConnection::open(
        &target,
        &tls,
        Duration::from_secs(30),
        64 * 1024 * 1024,
    )
    .await
    .with_context(|| format!("cannot read target {:?}", target.name))?;
    let columns = conn
        .query(COLUMNS_SQL, &[], 4)
        .await
        .context("cannot list the target's columns")?;
    let detectors = Detectors::all();
    let mut findings = Vec::new();
    for row in columns {
        let [Some(schema), Some(table), Some(name), Some(category)] = row.as_slice() else {
            continue;
        };
        // Strings and extension types (citext and the like) hold text; JSON is category U too.
        if category != "S" && category != "U" {
            if let Some(kind) = kind_by_name(name) {
                findings.push(Finding {
                    column: format!("{schema}.{table}.{name}"),
                    kind,
                    evidence: "its name (not a text column, not sampled)".into(),
                    whole: true,
                });
            }
            continue;
        }
        let sql = format!(
            "SELECT {col}::text FROM {schema_q}.{table_q} WHERE {col} IS NOT NULL LIMIT {sample}",
            col = ident(name),
            schema_q = ident(schema),
            table_q = ident(table),
        );
        let values: Vec<String> = match conn.query(&sql, &[], 1).await {
            Ok(rows) => rows
                .into_iter()
                .filter_map(|mut r| r.pop().flatten())
                .collect(),
            Err(e) => {
                tracing::warn!(column = %format!("{schema}.{table}.{name}"), error = %e, "could not sample");
                continue;
            }
        };
        let column = format!("{schema}.{table}.{name}");
        if let Some(f) = classify(&detectors, &column, name, &values) {
            findings.push(f);
        }
    }
    Ok(findings)
}

/// The findings as `[masking]` configuration text.
pub fn render(target: &str, findings: &[Finding]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# portcullis discover: target \"{target}\": {} column(s) look sensitive.",
        findings.len()
    );
    let _ = writeln!(
        out,
        "# Review each rule, and add `groups = [...]` to say whom it masks for (without it, every identity)."
    );
    let mut by_kind: BTreeMap<&'static str, Vec<&Finding>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.whole) {
        by_kind.entry(f.kind.name()).or_default().push(f);
    }
    if !findings.is_empty() {
        let _ = writeln!(out, "\n[masking]");
    }
    for (kind, list) in &by_kind {
        let _ = writeln!(out);
        for f in list {
            let _ = writeln!(out, "# {}: {}", f.column, f.evidence);
        }
        let _ = writeln!(out, "[[masking.rules]]");
        let _ = writeln!(out, "name = \"discovered-{kind}\"");
        let columns: Vec<String> = list.iter().map(|f| format!("{:?}", f.column)).collect();
        let _ = writeln!(out, "columns = [{}]", columns.join(", "));
        let _ = writeln!(out, "strategy = \"{}\"", strategy_for(list[0].kind));
    }
    let inside: Vec<&Finding> = findings.iter().filter(|f| !f.whole).collect();
    if !inside.is_empty() {
        let _ = writeln!(out);
        for f in &inside {
            let _ = writeln!(out, "# {}: {}", f.column, f.evidence);
        }
        let mut kinds: Vec<&str> = inside.iter().map(|f| f.kind.name()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let kinds: Vec<String> = kinds.iter().map(|k| format!("{k:?}")).collect();
        let _ = writeln!(out, "# Free text and JSON hold such values: scan them for the identities masking applies to.");
        let _ = writeln!(out, "[[masking.detectors]]");
        let _ = writeln!(out, "name = \"discovered-in-text\"");
        let _ = writeln!(out, "kinds = [{}]", kinds.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_classified_by_their_values_then_by_their_names() {
        let d = Detectors::all();
        let emails: Vec<String> = (0..10).map(|i| format!("user{i}@example.com")).collect();
        let f = classify(&d, "public.t.contact", "contact", &emails).unwrap();
        assert_eq!((f.kind, f.whole), (DetectorKind::Email, true));
        let words: Vec<String> = (0..10).map(|i| format!("word {i}")).collect();
        assert!(classify(&d, "public.t.label", "label", &words).is_none());
        let f = classify(&d, "public.t.ssn", "ssn", &words).unwrap();
        assert_eq!(f.kind, DetectorKind::Ssn);
        let f = classify(&d, "public.t.card_pan", "card_pan", &words).unwrap();
        assert_eq!(f.kind, DetectorKind::Card);
        assert!(classify(&d, "public.t.company", "company", &words).is_none());
        assert!(classify(&d, "public.t.lessn", "lessn", &words).is_none());
        let mut text = words.clone();
        text.push("please mail bob@example.com about it".into());
        let f = classify(&d, "public.t.body", "body", &text).unwrap();
        assert_eq!((f.kind, f.whole), (DetectorKind::Email, false));
    }

    #[test]
    fn findings_render_as_configuration_the_gateway_accepts() {
        let findings = vec![
            Finding {
                column: "public.users.email".into(),
                kind: DetectorKind::Email,
                evidence: "10 of 10".into(),
                whole: true,
            },
            Finding {
                column: "public.tickets.body".into(),
                kind: DetectorKind::Card,
                evidence: "1 of 10".into(),
                whole: false,
            },
        ];
        let text = render("main", &findings);
        let section: masking::config::MaskingSection = toml::from_str::<toml::Table>(&text)
            .unwrap()
            .get("masking")
            .cloned()
            .unwrap()
            .try_into()
            .unwrap();
        let config =
            masking::MaskingConfig::from_section(&section, std::path::Path::new("/"), &|p| {
                p.to_path_buf()
            })
            .unwrap();
        assert_eq!(config.rules.len(), 1);
        assert_eq!(config.detectors.len(), 1);
    }
}
