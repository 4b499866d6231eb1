//! Tests of the configuration: schema, interpolation, checks.

use super::check::*;
use super::interpolate::*;
use super::*;
use gateway_core::{Protocol, UpstreamTls};
use std::path::Path;

const VALID_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dGhpcyBpcyBub3QgYSByZWFsIGhhc2ggYnV0IGl0IHBhcnNlcw";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(text, Path::new("/etc/portcullis/gw.toml"))
}

fn messages(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

fn assert_one_error(text: &str, location: &str, fragment: &str) {
    let m = messages(text);
    assert_eq!(m.len(), 1, "expected exactly one error, got {m:#?}");
    assert!(
        m[0].starts_with(&format!("/etc/portcullis/gw.toml:{location}: ")),
        "{m:#?}"
    );
    assert!(m[0].contains(fragment), "{m:#?}");
}

#[test]
fn minimal_file_gets_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.gateway.node, "portcullis");
    assert_eq!(c.gateway.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.gateway.max_message_bytes, 64 * 1024 * 1024);
    assert_eq!(c.gateway.log_level, "info");
    assert_eq!(c.gateway.workers, None);
    assert!(c.postgres.is_none());
    assert!(c.mysql.is_none());
    assert!(c.identity.jwt.is_none());
    assert!(c.targets.is_empty());

    let c =
        parse("[postgres]\n[[targets]]\nname = \"app\"\nhost = \"db\"\nuser = \"svc\"\n").unwrap();
    let pg = c.postgres.unwrap();
    assert_eq!(pg.listen, "127.0.0.1:6432".parse().unwrap());
    assert!(pg.tls.is_none() && !pg.require_tls && !pg.allow_plaintext_password);
    assert!(!pg.require_user_match);
    let t = &c.targets[0];
    assert_eq!(
        (t.protocol, t.port, t.database.as_str()),
        (Protocol::Postgres, 5432, "app")
    );
    assert_eq!(t.tls, UpstreamTls::Disable);
    assert!(t.password.is_none());
}

#[test]
fn unknown_key_is_rejected_with_location() {
    assert_one_error(
        "[gateway]\nnode = \"a\"\nnodes = \"b\"\n",
        "3:1",
        "unknown field `nodes`",
    );
    assert_one_error(
        "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\npasword = \"x\"\n",
        "5:1",
        "pasword",
    );
    assert_one_error(
        "[identity.jwt]\nissuer = \"x\"\nsecret = \"y\"\n",
        "3:1",
        "secret",
    );
}

#[test]
fn syntax_and_type_errors_have_locations() {
    assert_one_error("[gateway]\nnode = \n", "2:8", "");
    assert_one_error("[gateway]\nmax_message_bytes = \"big\"\n", "2:21", "");
    assert_one_error("[gateway]\nworkers = 5000\n", "2:11", "at most 1024");
    assert_eq!(
        parse("[gateway]\nworkers = 0\n").unwrap().gateway.workers,
        Some(0)
    );
    assert_eq!(
        parse("[gateway]\nworkers = 3\n").unwrap().gateway.workers,
        Some(3)
    );
    assert_one_error(
        "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\nport = 70000\n",
        "5:8",
        "",
    );
    assert_one_error(
        "[[targets]]\nname = \"a\"\nuser = \"u\"\n",
        "1:1",
        "missing field `host`",
    );
}

#[test]
fn interpolation_replaces_escapes_and_rejects_bad_references() {
    let env = |name: &str| match name {
        "A" => Ok("alpha".to_owned()),
        "B_2" => Ok("${NOT_AGAIN}".to_owned()),
        _ => Err(format!("`{name}` not set")),
    };
    assert_eq!(interpolate("x${A}y", env).unwrap(), "xalphay");
    assert_eq!(interpolate("${A}${B_2}", env).unwrap(), "alpha${NOT_AGAIN}");
    assert_eq!(interpolate("$${A} $A $", env).unwrap(), "${A} $A $");
    assert_eq!(
        interpolate("$argon2id$v=19$m=1", env).unwrap(),
        "$argon2id$v=19$m=1"
    );
    let problems = |raw: &str| interpolate(raw, env).unwrap_err().join("\n");
    assert!(problems("${MISSING}").contains("MISSING"));
    assert!(problems("${A").contains("unterminated"));
    assert!(problems("${1A}").contains("not a valid"));
    assert!(problems("${}").contains("not a valid"));
    // Every problem of a value, not only the first.
    assert_eq!(
        interpolate("${X}:${A}:${1}:${Y}", env).unwrap_err().len(),
        3
    );
}

#[test]
fn env_vars_are_interpolated_in_string_values() {
    std::env::set_var("PORTCULLIS_TEST_CFG_DB_PASSWORD", "s3cret");
    std::env::set_var("PORTCULLIS_TEST_CFG_ENV", "prod");
    let c = parse(
        "[[targets]]\nname = \"app\"\nhost = \"db\"\nuser = \"svc\"\npassword = \"${PORTCULLIS_TEST_CFG_DB_PASSWORD}\"\nlabels = { env = \"${PORTCULLIS_TEST_CFG_ENV}-$${x}\" }\n",
    )
    .unwrap();
    assert_eq!(c.targets[0].password.as_deref(), Some("s3cret"));
    assert_eq!(c.targets[0].labels["env"], "prod-${x}");
}

#[test]
fn missing_env_var_is_reported_at_its_value() {
    assert_one_error(
        "[[targets]]\nname = \"app\"\nhost = \"db\"\nuser = \"svc\"\npassword = \"${PORTCULLIS_TEST_CFG_SURELY_UNSET}\"\n",
        "5:12",
        "environment variable `PORTCULLIS_TEST_CFG_SURELY_UNSET` is not set",
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    assert!(parse_duration("10").unwrap_err().contains("without a unit"));
    assert!(parse_duration("10 parsecs").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("").is_err());
    assert!(parse_duration("99999999999999999999h").is_err());
    assert_one_error(
        "[gateway]\nhandshake_timeout = \"10 seconds\"\n",
        "2:21",
        "handshake_timeout",
    );
    assert_one_error(
        "[gateway]\nhandshake_timeout = \"0s\"\n",
        "2:21",
        "longer than zero",
    );
}

#[test]
fn bad_listen_address() {
    assert_one_error(
        "[postgres]\nlisten = \"localhost:6432\"\n",
        "2:10",
        "not an IP:PORT address",
    );
}

#[test]
fn mysql_section_defaults() {
    let c = parse(
        "[mysql]\n[[targets]]\nname = \"shop\"\nprotocol = \"mysql\"\nhost = \"db\"\nuser = \"svc\"\n",
    )
    .unwrap();
    assert!(c.postgres.is_none());
    let my = c.mysql.unwrap();
    assert_eq!(my.listen, "127.0.0.1:3307".parse().unwrap());
    assert!(my.tls.is_none() && !my.require_tls && !my.allow_plaintext_password);
    assert!(!my.require_user_match);
    let t = &c.targets[0];
    assert_eq!(
        (t.protocol, t.port, t.database.as_str()),
        (Protocol::Mysql, 3306, "shop")
    );

    // Both listeners side by side, each with its own settings.
    let c = parse(
        "[postgres]\nlisten = \"0.0.0.0:6432\"\n[mysql]\nlisten = \"[::1]:0\"\nallow_plaintext_password = true\nrequire_user_match = true\n",
    )
    .unwrap();
    assert_eq!(c.postgres.unwrap().listen, "0.0.0.0:6432".parse().unwrap());
    let my = c.mysql.unwrap();
    assert_eq!(my.listen, "[::1]:0".parse().unwrap());
    assert!(my.allow_plaintext_password && my.require_user_match);
}

#[test]
fn mysql_section_errors_have_locations() {
    assert_one_error(
        "[mysql]\nlisten = \"localhost:3307\"\n",
        "2:10",
        "write e.g. \"127.0.0.1:3307\"",
    );
    assert_one_error(
        "[mysql]\nlisten = \"127.0.0.1:3307\"\nport = 3307\n",
        "3:1",
        "unknown field `port`",
    );
    assert_one_error("[mysql]\nrequire_tls = \"yes\"\n", "2:15", "");
    assert_one_error(
        "[mysql]\nrequire_tls = true\n",
        "2:15",
        "needs `tls_cert` and `tls_key`",
    );
    let m = messages("[mysql]\ntls_cert = \"missing.pem\"\ntls_key = \"missing.key\"\n");
    assert_eq!(m.len(), 2, "{m:#?}");
    assert!(
        m[0].starts_with(
            "/etc/portcullis/gw.toml:2:12: `tls_cert`: file not found: /etc/portcullis/missing.pem"
        ),
        "{m:#?}"
    );
    assert!(
        m[1].starts_with("/etc/portcullis/gw.toml:3:11: `tls_key`: file not found"),
        "{m:#?}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_tls_files(dir.path());
    let origin = dir.path().join("gw.toml");
    let err = Config::from_toml_str("[mysql]\ntls_cert = \"server.pem\"\n", &origin).unwrap_err();
    assert_eq!(err.errors().len(), 1, "{err}");
    assert!(
        err.errors()[0].message.contains("`tls_key` is not"),
        "{err}"
    );
    assert_eq!(
        err.errors()[0].location,
        Some(Location {
            line: 2,
            column: 12
        })
    );
    let c = Config::from_toml_str(
        "[mysql]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nrequire_tls = true\n",
        &origin,
    )
    .unwrap();
    let my = c.mysql.unwrap();
    assert!(my.require_tls);
    let tls = my.tls.unwrap();
    assert_eq!(tls.cert_file, dir.path().join("server.pem"));
    assert_eq!(tls.key_file, dir.path().join("server.key"));
    assert_eq!(tls.client_ca_file, None);

    // A key that does not belong to the certificate is found as for [postgres].
    let other = tempfile::tempdir().unwrap();
    write_tls_files(other.path());
    std::fs::copy(
        other.path().join("server.key"),
        dir.path().join("other.key"),
    )
    .unwrap();
    let err = Config::from_toml_str(
        "[mysql]\ntls_cert = \"server.pem\"\ntls_key = \"other.key\"\n",
        &origin,
    )
    .unwrap_err();
    assert_eq!(err.errors().len(), 1, "{err}");
    assert_eq!(
        err.errors()[0].location,
        Some(Location {
            line: 3,
            column: 11
        })
    );
    assert!(err.errors()[0].message.starts_with("`tls_key`: "), "{err}");
}

#[test]
fn client_cert_identity_needs_a_client_ca() {
    // A listener without tls_client_ca never verifies a client certificate.
    assert_one_error(
        "[mysql]\n[identity.client_cert]\nsubject = \"cn\"\n",
        "2:1",
        "needs `tls_client_ca` in `[postgres]` or `[mysql]`",
    );
}

#[test]
fn bad_log_level() {
    assert_one_error("[gateway]\nlog_level = \"info,=[\"\n", "2:13", "log_level");
}

/// A self-signed certificate and its key as PEM files, `server.pem` and `server.key` in `dir`.
pub(crate) fn write_tls_files(dir: &Path) {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("server.pem"), pair.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), pair.signing_key.serialize_pem()).unwrap();
}

#[test]
fn tls_cert_without_key_and_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    write_tls_files(dir.path());
    let origin = dir.path().join("gw.toml");
    let err =
        Config::from_toml_str("[postgres]\ntls_cert = \"server.pem\"\n", &origin).unwrap_err();
    assert_eq!(err.errors().len(), 1);
    assert!(
        err.errors()[0].message.contains("`tls_key` is not"),
        "{err}"
    );
    assert_eq!(
        err.errors()[0].location,
        Some(Location {
            line: 2,
            column: 12
        })
    );
    let err = Config::from_toml_str("[postgres]\ntls_key = \"server.key\"\n", &origin).unwrap_err();
    assert!(err.to_string().contains("`tls_cert` is not"), "{err}");
    let err = Config::from_toml_str("[postgres]\nrequire_tls = true\n", &origin).unwrap_err();
    assert!(
        err.to_string().contains("needs `tls_cert` and `tls_key`"),
        "{err}"
    );
    let err =
        Config::from_toml_str("[postgres]\ntls_client_ca = \"server.pem\"\n", &origin).unwrap_err();
    assert!(
        err.to_string().contains("`tls_client_ca` needs TLS"),
        "{err}"
    );
    let err =
        Config::from_toml_str("[mysql]\ntls_client_ca = \"server.pem\"\n", &origin).unwrap_err();
    assert!(
        err.to_string().contains("`tls_client_ca` needs TLS"),
        "{err}"
    );

    let c = Config::from_toml_str(
        "[postgres]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nrequire_tls = true\n",
        &origin,
    )
    .unwrap();
    let tls = c.postgres.unwrap().tls.unwrap();
    assert_eq!(tls.cert_file, dir.path().join("server.pem"));
    assert_eq!(tls.key_file, dir.path().join("server.key"));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    write_tls_files(&dir.path().join("certs"));
    std::fs::rename(
        dir.path().join("certs/server.pem"),
        dir.path().join("certs/db-ca.pem"),
    )
    .unwrap();
    let origin = dir.path().join("gw.toml");
    let c = Config::from_toml_str(
        "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\ntls = \"verify-full\"\ntls_ca_file = \"certs/db-ca.pem\"\ntls_server_name = \"db.internal\"\n",
        &origin,
    )
    .unwrap();
    assert_eq!(
        c.targets[0].tls,
        UpstreamTls::VerifyFull {
            ca_file: Some(dir.path().join("certs/db-ca.pem")),
            server_name: Some("db.internal".into())
        }
    );
    // A bare file name as origin resolves against the working directory.
    let checker = Checker::new("", Path::new("gw.toml"));
    assert_eq!(checker.resolve("a.pem"), PathBuf::from("./a.pem"));
    assert_eq!(checker.resolve("/abs/a.pem"), PathBuf::from("/abs/a.pem"));
}

#[test]
fn verify_full_ca_file_missing() {
    assert_one_error(
        "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\ntls = \"verify-full\"\ntls_ca_file = \"nope/ca.pem\"\n",
        "6:15",
        "file not found: /etc/portcullis/nope/ca.pem",
    );
    assert_one_error(
        "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\ntls_ca_file = \"ca.pem\"\n",
        "5:15",
        "`tls` is \"disable\"",
    );
    assert_one_error(
        "[[targets]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\ntls = \"verify\"\n",
        "5:7",
        "write \"disable\" or \"verify-full\"",
    );
}

#[test]
fn duplicate_targets_per_protocol() {
    let base = "[[targets]]\nname = \"app\"\nhost = \"h\"\nuser = \"u\"\n";
    let mysql = "[[targets]]\nname = \"app\"\nprotocol = \"mysql\"\nhost = \"h\"\nuser = \"u\"\n";
    assert_one_error(
        &format!("{base}{base}"),
        "6:8",
        "duplicate target `app` for protocol postgres",
    );
    let c = parse(&format!("{base}{mysql}")).unwrap();
    assert_eq!(c.targets[1].port, 3306);
    assert_one_error(
        "[[targets]]\nname = \"a\"\nprotocol = \"oracle\"\nhost = \"h\"\nuser = \"u\"\n",
        "3:12",
        "unknown value `oracle`",
    );
}

#[test]
fn client_cert_needs_client_ca() {
    assert_one_error(
        "[postgres]\n[identity.client_cert]\nsubject = \"cn\"\n",
        "2:1",
        "needs `tls_client_ca`",
    );
    let m = messages("[identity.client_cert]\nsubject = \"email\"\n");
    assert_eq!(m.len(), 2, "{m:#?}");
    assert!(m[1].contains("write \"cn\" or \"dn\""), "{m:#?}");
}

const JWT_OK: &str = "[identity.jwt]\naudience = [\"portcullis\"]\nalgorithms = [\"HS256\"]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n";

#[test]
fn jwt_valid_section() {
    let c = parse(JWT_OK).unwrap();
    let jwt = c.identity.jwt.unwrap();
    assert_eq!(
        jwt.keys,
        JwtKeys::Hs256Secret("0123456789abcdef0123456789abcdef".into())
    );
    assert_eq!(
        (jwt.subject_claim.as_str(), jwt.groups_claim.as_str()),
        ("sub", "groups")
    );
    assert_eq!(jwt.leeway, Duration::from_secs(30));
    assert!(!format!("{:?}", jwt.keys).contains("0123"));
}

#[test]
fn jwt_key_sources_zero_or_several() {
    assert_one_error(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS256\"]\n",
        "1:1",
        "exactly one key source",
    );
    assert_one_error(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp/jwks\"\npublic_key_file = \"k.pem\"\n",
        "5:19",
        "`public_key_file` and `jwks_url` are both set",
    );
}

#[test]
fn jwt_algorithms() {
    assert_one_error(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS256\", \"none\"]\njwks_url = \"https://idp/jwks\"\n",
        "3:24",
        "`none` is refused",
    );
    assert_one_error(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS257\"]\njwks_url = \"https://idp/jwks\"\n",
        "3:15",
        "unknown algorithm `RS257`",
    );
    assert_one_error(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = []\njwks_url = \"https://idp/jwks\"\n",
        "3:14",
        "at least one algorithm",
    );
    assert_one_error(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"HS256\"]\njwks_url = \"https://idp/jwks\"\n",
        "4:12",
        "cannot verify HS256",
    );
    assert_one_error(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"RS256\"]\njwks_url = \"http://idp.example.com/jwks\"\n",
        "4:12",
        "https://",
    );
    assert!(parse("[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"ES256\"]\njwks_url = \"http://127.0.0.1:8080/jwks\"\n").is_ok());
}

#[test]
fn jwt_secret_rules() {
    assert_one_error(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"HS256\"]\nhs256_secret = \"short\"\n",
        "4:16",
        "at least 32 bytes",
    );
    assert_one_error(
        "[identity.jwt]\nalgorithms = [\"HS256\"]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
        "1:1",
        "needs `audience`",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret"),
        "  0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let c = Config::from_toml_str(
        "[identity.jwt]\naudience = [\"p\"]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"secret\"\n",
        &dir.path().join("gw.toml"),
    )
    .unwrap();
    assert_eq!(
        c.identity.jwt.unwrap().keys,
        JwtKeys::Hs256Secret("0123456789abcdef0123456789abcdef".into())
    );
}

#[test]
fn static_users() {
    let ok = format!("[[identity.users]]\nname = \"bg\"\npassword_hash = \"{VALID_HASH}\"\ngroups = [\"admin\"]\n");
    let c = parse(&ok).unwrap();
    assert_eq!(c.identity.users[0].groups, vec!["admin".to_owned()]);
    assert_one_error(
        "[[identity.users]]\nname = \"bg\"\npassword_hash = \"change-me\"\n",
        "3:17",
        "not a valid argon2id PHC string",
    );
    assert_one_error(
        "[[identity.users]]\nname = \"bg\"\npassword_hash = \"$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2doYXNoaGFzaGhhc2g\"\n",
        "3:17",
        "not argon2id",
    );
    assert_one_error(&format!("{ok}{ok}"), "6:8", "duplicate user `bg`");
}

#[test]
fn all_errors_are_reported_together_in_file_order() {
    let text = "\
[gateway]
handshake_timeout = \"soon\"

[postgres]
listen = \"nowhere\"

[mysql]
listen = \"127.0.0.1:3307x\"

[identity.jwt]
audience = [\"p\"]
algorithms = [\"none\"]

[[targets]]
name = \"app\"
host = \"h\"
user = \"u\"
tls = \"verify-full\"
tls_ca_file = \"missing-ca.pem\"

[[targets]]
name = \"app\"
host = \"h\"
user = \"u\"
";
    let err = parse(text).unwrap_err();
    let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let locations: Vec<&str> = lines
        .iter()
        .map(|l| {
            l.trim_start_matches("/etc/portcullis/gw.toml:")
                .split(": ")
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        locations,
        ["2:21", "5:10", "8:10", "10:1", "12:15", "19:15", "22:8"],
        "{lines:#?}"
    );
}

#[test]
fn unreadable_file_has_no_location() {
    let err = Config::load("/nonexistent/portcullis.toml").unwrap_err();
    assert_eq!(err.errors()[0].location, None);
    assert!(err
        .to_string()
        .starts_with("/nonexistent/portcullis.toml: cannot read"));
}

#[test]
fn policy_section_is_checked_into_a_rule_set() {
    let c = parse(
        "[policy]\n[[policy.access]]\nname = \"analysts\"\ngroups = [\"analyst\"]\ntargets = [\"app*\"]\nmode = \"read-only\"\n\
         [[policy.rules]]\nname = \"no-drop\"\naction = \"deny\"\nkinds = [\"drop\"]\n",
    )
    .unwrap();
    let rules = c.policy.unwrap();
    assert_eq!(rules.access.len(), 1);
    assert_eq!(&*rules.rules[0].name, "no-drop");
    assert!(parse("").unwrap().policy.is_none());
}

#[test]
fn policy_errors_have_locations() {
    // One row per mistake: the text, where it is reported, and what the message says.
    let cases: &[(&str, &str, &str)] = &[
        ("[policy]\nunparsable = \"maybe\"\n", "2:14", "write \"deny\" or \"allow\""),
        ("[policy]\nfail_open = true\n", "2:1", "unknown field `fail_open`"),
        (
            "[[policy.access]]\nname = \"a\"\ngroups = [\"x\"]\nmode = \"rw\"\n",
            "4:8",
            "write \"read-only\" or \"read-write\"",
        ),
        ("[[policy.access]]\nname = \"a\"\nmode = \"read-only\"\n", "1:1", "needs `groups` or `subjects`"),
        (
            "[[policy.rules]]\nname = \"r\"\naction = \"block\"\n",
            "3:10",
            "unknown value `block`",
        ),
        (
            "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nkinds = [\"drop-table\"]\n",
            "4:10",
            "neither a class",
        ),
        (
            "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nobjects = [\"a.b.c\"]\n",
            "4:12",
            "not an object pattern",
        ),
        (
            "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nkinds = []\n",
            "4:9",
            "would match nothing",
        ),
        (
            "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\noverrides = [\"builtin:read-only\"]\n",
            "4:13",
            "only for `action = \"allow\"`",
        ),
        (
            "[[policy.rules]]\nname = \"r\"\naction = \"allow\"\noverrides = [\"builtin:unparsable\"]\n",
            "4:14",
            "unparsable = \"allow\"",
        ),
        (
            "[[policy.rules]]\nname = \"builtin:mine\"\naction = \"deny\"\n",
            "2:8",
            "reserved",
        ),
        (
            "[[policy.access]]\nname = \"x\"\ngroups = [\"*\"]\nmode = \"read-only\"\n[[policy.rules]]\nname = \"x\"\naction = \"deny\"\n",
            "6:8",
            "duplicate rule name `x`",
        ),
        (
            "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nfilter = \"none\"\n",
            "4:10",
            "write \"missing\"",
        ),
        (
            "[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nkind = [\"drop\"]\n",
            "4:1",
            "unknown field `kind`",
        ),
    ];
    for (text, location, fragment) in cases {
        assert_one_error(text, location, fragment);
    }
}

#[test]
fn telemetry_section() {
    // Absent, or present without an endpoint: no export.
    assert!(parse("").unwrap().telemetry.is_none());
    assert!(parse("[telemetry]\nservice_name = \"gw\"\n")
        .unwrap()
        .telemetry
        .is_none());

    let t = parse("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n")
        .unwrap()
        .telemetry
        .unwrap();
    assert_eq!(t.otlp_endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(t.service_name, "portcullis");
    assert!(t.headers.is_empty());
    assert_eq!(t.sample_ratio, 1.0);

    std::env::set_var("PORTCULLIS_TEST_CFG_OTLP_TOKEN", "tok-123");
    let t = parse(
        "[telemetry]\notlp_endpoint = \"http://collector:4318/otlp/\"\nservice_name = \"gw-east\"\n\
         headers = { Authorization = \"Bearer ${PORTCULLIS_TEST_CFG_OTLP_TOKEN}\" }\nsample_ratio = 0.25\n",
    )
    .unwrap()
    .telemetry
    .unwrap();
    assert_eq!(t.otlp_endpoint, "http://collector:4318/otlp/v1/traces");
    assert_eq!(t.service_name, "gw-east");
    assert_eq!(t.headers["authorization"], "Bearer tok-123");
    assert_eq!(t.sample_ratio, 0.25);
    // Header values stay out of Debug output.
    assert!(!format!("{t:?}").contains("tok-123"));
    let t = parse("[telemetry]\notlp_endpoint = \"http://h:4318/v1/traces\"\nsample_ratio = 0\n")
        .unwrap()
        .telemetry
        .unwrap();
    assert_eq!(
        (t.otlp_endpoint.as_str(), t.sample_ratio),
        ("http://h:4318/v1/traces", 0.0)
    );

    let cases = [
        (
            "[telemetry]\notlp_endpoint = \"not a url\"\n",
            "2:17",
            "`telemetry.otlp_endpoint`: `not a url` is not a URL",
        ),
        (
            "[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\n",
            "2:17",
            "is not an http:// URL",
        ),
        (
            "[telemetry]\notlp_endpoint = \"https://collector:4318\"\n",
            "2:17",
            "https is not supported",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://c:4318/?x=1\"\n",
            "2:17",
            "has a query or fragment",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = 1.5\n",
            "3:16",
            "`telemetry.sample_ratio` must be between 0.0 and 1.0, not 1.5",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = -0.1\n",
            "3:16",
            "must be between 0.0 and 1.0",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nservice_name = \" \"\n",
            "3:16",
            "`service_name` must not be empty",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nheaders = { \"bad header\" = \"x\" }\n",
            "3:28",
            "`bad header` is not a valid HTTP header name",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nheaders = { x-token = \"a\\nb\" }\n",
            "3:23",
            "`telemetry.headers.x-token`: the value is not a valid HTTP header value",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample = 1.0\n",
            "3:1",
            "unknown field `sample`",
        ),
    ];
    for (text, location, fragment) in cases {
        assert_one_error(text, location, fragment);
    }
}
