//! `[audit]`, `[masking]` and `[policy]`: sections whose schema lives in their own crates.

use std::path::Path;

use toml::Spanned;

use super::*;
use crate::config::interpolate::*;

impl Checker<'_> {
    pub(super) fn check_audit(
        &mut self,
        section: Option<&Spanned<audit::AuditConfig>>,
        data_dir: &Path,
    ) -> audit::AuditConfig {
        let Some(section) = section else {
            return audit::AuditConfig::default_for(data_dir);
        };
        let span = section.span();
        let mut config = section.get_ref().clone();
        if let Some(key) = &config.signing_key_file {
            let path = self.resolve(&key.to_string_lossy());
            if !path.is_file() {
                self.error(
                    span.clone(),
                    format!(
                        "`audit.signing_key_file`: file not found: {}",
                        path.display()
                    ),
                );
            } else if let Err(e) = audit::CheckpointSigner::from_file(&path) {
                self.error(span.clone(), format!("`audit.signing_key_file`: {e}"));
            }
            config.signing_key_file = Some(path);
        }
        if let Some(key) = &config.parameter_hash_key_file {
            // Existence is checked with the other [audit] settings below.
            config.parameter_hash_key_file = Some(self.resolve(&key.to_string_lossy()));
        }
        // Sinks whose url has a `${VAR}` problem, reported at the url by `check_references`: what
        // `check` says about the raw text is noise.
        let mut unresolved_urls = Vec::new();
        for (i, sink) in config.sinks.iter_mut().enumerate() {
            match sink {
                audit::SinkConfig::Sqlite { path } => *path = self.resolve(&path.to_string_lossy()),
                audit::SinkConfig::Jsonl { dir, .. } => *dir = self.resolve(&dir.to_string_lossy()),
                audit::SinkConfig::Postgres { url, ca_file, .. } => {
                    if let Some(ca) = ca_file {
                        *ca = self.resolve(&ca.to_string_lossy());
                    }
                    match interpolate(url, env_lookup) {
                        Ok(expanded) => *url = expanded,
                        Err(_) => unresolved_urls.push(format!("`audit.sinks[{i}].url`")),
                    }
                }
            }
        }
        if let Err(errors) = config.check(data_dir) {
            for e in errors {
                if !unresolved_urls
                    .iter()
                    .any(|key| e.starts_with(key.as_str()))
                {
                    self.error(span.clone(), format!("[audit]: {e}"));
                }
            }
        }
        for sink in &config.sinks {
            if let audit::SinkConfig::Postgres {
                ca_file: Some(ca), ..
            } = sink
            {
                // A missing file is reported by `check` above.
                if ca.is_file() {
                    if let Err(e) = crate::tls::read_certificates("CA file", ca) {
                        self.error(span.clone(), format!("`audit.sinks.ca_file`: {e}"));
                    }
                }
            }
        }
        config
    }

    pub(super) fn check_approvals(
        &mut self,
        section: &Spanned<approvals::ApprovalsConfig>,
        policy: Option<&policy::RuleSet>,
        data_dir: &Path,
    ) -> approvals::ApprovalsConfig {
        let mut config = section.get_ref().clone();
        let held: Vec<&str> = policy
            .map(|p| {
                p.rules
                    .iter()
                    .filter(|r| r.action == policy::rules::Action::RequireApproval)
                    .map(|r| &*r.name)
                    .collect()
            })
            .unwrap_or_default();
        // `${VAR}` here; an unset variable is reported at the value by `check_references`.
        let expand = |text: &mut String| {
            if let Ok(expanded) = interpolate(text, env_lookup) {
                *text = expanded;
            }
        };
        if let Some(url) = &mut config.store_url {
            expand(url);
        }
        for hook in &mut config.webhooks {
            expand(&mut hook.url);
            if let Some(secret) = &mut hook.secret {
                expand(secret);
            }
        }
        if let Err(errors) = config.check(&held) {
            for e in errors {
                self.error(section.span(), format!("[approvals]: {e}"));
            }
        }
        if let Some(ca) = &config.store_ca_file {
            let ca = self.resolve(&ca.to_string_lossy());
            if !ca.is_file() {
                self.error(
                    section.span(),
                    format!(
                        "`approvals.store_ca_file`: file not found: {}",
                        ca.display()
                    ),
                );
            }
            config.store_ca_file = Some(ca);
        }
        // A path in the file is relative to the file; the default is in the (resolved) data_dir.
        config.path = Some(match &config.path {
            Some(p) => self.resolve(&p.to_string_lossy()),
            None => config.store_path(data_dir),
        });
        config
    }

    pub(super) fn check_masking(
        &mut self,
        section: &Spanned<masking::config::MaskingSection>,
        data_dir: &Path,
    ) -> Option<masking::MaskingConfig> {
        let resolve = |p: &Path| self.resolve(&p.to_string_lossy());
        match masking::MaskingConfig::from_section(section.get_ref(), data_dir, &resolve) {
            Ok(config) => Some(config),
            Err(errors) => {
                for e in errors {
                    self.error(section.span(), format!("[masking]: {e}"));
                }
                None
            }
        }
    }

    pub(super) fn check_policy(
        &mut self,
        section: &Spanned<policy::rules::PolicySection>,
    ) -> Option<policy::RuleSet> {
        match policy::RuleSet::from_section(section) {
            Ok(rules) => Some(rules),
            Err(errors) => {
                for e in errors {
                    self.error(e.span, e.message);
                }
                None
            }
        }
    }
}
