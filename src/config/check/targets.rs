//! `[[targets]]`.

use std::collections::HashSet;

use gateway_core::{Protocol, Target, UpstreamTls};
use toml::Spanned;

use super::*;
use crate::config::schema::*;

impl Checker<'_> {
    pub(super) fn check_targets(&mut self, sections: &[Spanned<TargetSection>]) -> Vec<Target> {
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        for section in sections {
            let t = section.get_ref();
            let name = self.non_empty("name", &t.name);
            let protocol = match &t.protocol {
                None => Protocol::Postgres,
                Some(v) => match v.get_ref().as_str() {
                    "postgres" => Protocol::Postgres,
                    "mysql" => Protocol::Mysql,
                    other => {
                        self.error(v.span(), format!("`protocol`: unknown value `{other}`; write \"postgres\" or \"mysql\""));
                        Protocol::Postgres
                    }
                },
            };
            if !seen.insert((protocol, name.clone())) {
                self.error(
                    t.name.span(),
                    format!("duplicate target `{name}` for protocol {}: target names must be unique per protocol", protocol.as_str()),
                );
            }
            let host = self.non_empty("host", &t.host);
            let port = match &t.port {
                Some(p) if *p.get_ref() == 0 => {
                    self.error(p.span(), "`port` must be between 1 and 65535");
                    0
                }
                Some(p) => *p.get_ref(),
                // The configuration names only these two protocols.
                None if protocol == Protocol::Mysql => 3306,
                None => 5432,
            };
            let database = t
                .database
                .as_ref()
                .map_or_else(|| name.clone(), |v| self.non_empty("database", v));
            let user = self.non_empty("user", &t.user);
            let password = t.password.as_ref().map(|v| v.get_ref().as_str().to_owned());

            let tls = match t.tls.as_ref().map(|v| (v, v.get_ref().as_str())) {
                None | Some((_, "disable")) => {
                    for (key, value) in [
                        ("tls_ca_file", &t.tls_ca_file),
                        ("tls_server_name", &t.tls_server_name),
                    ] {
                        if let Some(v) = value {
                            self.error(v.span(), format!("`{key}` is set but `tls` is \"disable\": set `tls = \"verify-full\"` or remove `{key}`"));
                        }
                    }
                    UpstreamTls::Disable
                }
                Some((_, "verify-full")) => UpstreamTls::VerifyFull {
                    ca_file: t
                        .tls_ca_file
                        .as_ref()
                        .map(|v| self.certificate_file("tls_ca_file", v, "CA file")),
                    server_name: t
                        .tls_server_name
                        .as_ref()
                        .map(|v| self.non_empty("tls_server_name", v)),
                },
                Some((v, other)) => {
                    self.error(
                        v.span(),
                        format!(
                            "`tls`: unknown value `{other}`; write \"disable\" or \"verify-full\""
                        ),
                    );
                    UpstreamTls::Disable
                }
            };
            let labels = t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                .collect();
            targets.push(Target {
                name,
                protocol,
                host,
                port,
                database,
                user,
                password,
                tls,
                labels,
            });
        }
        targets
    }
}
