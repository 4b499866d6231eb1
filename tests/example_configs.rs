//! The configuration a newcomer meets: `examples/full.toml` holds every key the schema accepts,
//! the example files load, and `check-config` and `run` report every problem of a file in one
//! go, before anything is written to disk.
//!
//! The key list comes from the schema itself, not from a list kept by hand: each table of
//! full.toml is loaded once more with a key it cannot have, and the deserializer's refusal
//! ("unknown field `__probe`, expected one of ...") names every key that table accepts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{run_with_timeout, stderr, stdout, Pki};
use portcullis::{Config, Server};

const FULL: &str = include_str!("../examples/full.toml");
const PROBE: &str = "__probe";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A directory holding what full.toml names (certificates, keys) and the variables it expects.
fn full_example_dir() -> tempfile::TempDir {
    // The same values in every test: tests of one binary may run side by side.
    for (name, value) in [
        (
            "PORTCULLIS_JWT_SECRET",
            "example-secret-example-secret-example-secret",
        ),
        ("APP_DB_PASSWORD", "example-password"),
        ("REPORTING_DB_PASSWORD", "example-password"),
        ("SHOP_DB_PASSWORD", "example-password"),
        ("AUDIT_DB_PASSWORD", "example-password"),
        ("SLACK_HOOK_PATH", "T000/B000/example"),
        ("WEBHOOK_SECRET", "example-webhook-secret"),
    ] {
        std::env::set_var(name, value);
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate("full-example");
    let certs = dir.path().join("certs");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&certs).unwrap();
    std::fs::create_dir(&keys).unwrap();
    std::fs::copy(&pki.server_cert_file, certs.join("server.pem")).unwrap();
    std::fs::copy(&pki.server_key_file, certs.join("server.key")).unwrap();
    for ca in ["client-ca.pem", "db-ca.pem", "audit-db-ca.pem"] {
        std::fs::copy(&pki.ca_file, certs.join(ca)).unwrap();
    }
    let (signing_key, _) = audit::generate_signing_key().unwrap();
    std::fs::write(keys.join("audit-signing.pem"), signing_key).unwrap();
    std::fs::write(keys.join("audit-parameters.key"), [7u8; 32]).unwrap();
    dir
}

#[test]
fn example_files_load() {
    let dir = full_example_dir();
    let full = Config::from_toml_str(FULL, &dir.path().join("full.toml"))
        .unwrap_or_else(|e| panic!("examples/full.toml:\n{e}"));
    assert_eq!(full.gateway.node, "gw-1");
    let tls = full.postgres.as_ref().unwrap().tls.as_ref().unwrap();
    assert!(tls.client_ca_file.is_some());
    assert!(full.identity.client_cert.is_some());
    let mysql = full.mysql.as_ref().unwrap();
    assert_eq!(mysql.listen, "0.0.0.0:3307".parse().unwrap());
    assert!(mysql.require_tls && mysql.tls.as_ref().unwrap().client_ca_file.is_some());
    assert_eq!(full.targets.len(), 3);
    assert_eq!(full.targets[2].protocol, gateway_core::Protocol::Mysql);
    assert_eq!(full.audit.sinks.len(), 3);
    assert!(full.admin.is_some() && full.telemetry.is_some());

    let quickstart = Config::load(examples().join("quickstart.toml"))
        .unwrap_or_else(|e| panic!("examples/quickstart.toml:\n{e}"));
    assert_eq!(
        quickstart.postgres.unwrap().listen,
        "127.0.0.1:6432".parse().unwrap()
    );
    assert!(quickstart.policy.is_some(), "the quickstart shows a policy");
}

/// Where a table sits in the document: keys, and indexes into arrays of tables.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `a.b` for a path, array indexes left out (they share one schema).
fn dotted(path: &[Seg]) -> String {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    if keys.is_empty() {
        "(top level)".to_owned()
    } else {
        keys.join(".")
    }
}

fn table_at<'a>(doc: &'a toml::Table, path: &[Seg]) -> &'a toml::Table {
    let (mut table, mut rest) = (doc, path);
    while let [Seg::Key(key), tail @ ..] = rest {
        (table, rest) = match (table.get(key), tail) {
            (Some(toml::Value::Table(t)), _) => (t, tail),
            (Some(toml::Value::Array(items)), [Seg::Index(i), tail @ ..]) => match items.get(*i) {
                Some(toml::Value::Table(t)) => (t, tail),
                _ => panic!("no table at {path:?}"),
            },
            _ => panic!("no table at {path:?}"),
        };
    }
    assert!(rest.is_empty(), "no table at {path:?}");
    table
}

fn table_at_mut<'a>(doc: &'a mut toml::Table, path: &[Seg]) -> &'a mut toml::Table {
    let (mut table, mut rest) = (doc, path);
    while let [Seg::Key(key), tail @ ..] = rest {
        (table, rest) = match (table.get_mut(key), tail) {
            (Some(toml::Value::Table(t)), _) => (t, tail),
            (Some(toml::Value::Array(items)), [Seg::Index(i), tail @ ..]) => {
                match items.get_mut(*i) {
                    Some(toml::Value::Table(t)) => (t, tail),
                    _ => panic!("no table at {path:?}"),
                }
            }
            _ => panic!("no table at {path:?}"),
        };
    }
    assert!(rest.is_empty(), "no table at {path:?}");
    table
}

/// The backquoted names in a serde message such as "expected one of `a`, `b`" (after `marker`).
fn quoted_names(message: &str, marker: &str) -> Option<BTreeSet<String>> {
    let rest = &message[message.find(marker)? + marker.len()..];
    let rest = &rest[rest.find("expected")?..];
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Loads `doc` with `edit` applied to the table at `path`; returns the messages of the errors.
fn load_edited(
    doc: &toml::Table,
    path: &[Seg],
    dir: &Path,
    edit: impl FnOnce(&mut toml::Table),
) -> Vec<String> {
    let mut doc = doc.clone();
    edit(table_at_mut(&mut doc, path));
    let text = toml::to_string(&doc).unwrap();
    match Config::from_toml_str(&text, &dir.join("full.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors().iter().map(|e| e.message.clone()).collect(),
    }
}

/// The keys the schema accepts in the table at `path`, or `None` when it is a free-form map
/// (labels, headers) that takes any key.
fn schema_keys(doc: &toml::Table, path: &[Seg], dir: &Path) -> Option<BTreeSet<String>> {
    let messages = load_edited(doc, path, dir, |t| {
        t.insert(PROBE.into(), toml::Value::Integer(0));
    });
    let marker = format!("unknown field `{PROBE}`");
    messages
        .iter()
        .find_map(|m| quoted_names(m, &marker))
        .map(|mut names| {
            names.remove(PROBE);
            names
        })
}

/// The values the schema accepts for `key` in the table at `path`, when it names an enum variant.
fn schema_variants(doc: &toml::Table, path: &[Seg], key: &str, dir: &Path) -> BTreeSet<String> {
    let messages = load_edited(doc, path, dir, |t| {
        t.insert(key.into(), toml::Value::String(PROBE.into()));
    });
    let marker = format!("unknown variant `{PROBE}`");
    messages
        .iter()
        .find_map(|m| quoted_names(m, &marker))
        .unwrap_or_default()
}

/// Keys shown commented out (`# key = value`) under each table header of `text`: alternatives
/// to a key that is set, which the file cannot set at the same time.
fn commented_keys(text: &str) -> BTreeMap<Vec<Seg>, BTreeSet<String>> {
    let mut out: BTreeMap<Vec<Seg>, BTreeSet<String>> = BTreeMap::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut current = Vec::new();
    let keys = |name: &str| {
        name.split('.')
            .map(|k| Seg::Key(k.trim().to_owned()))
            .collect()
    };
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let n = arrays.entry(name.to_owned()).or_insert(0);
            current = keys(name);
            current.push(Seg::Index(*n));
            *n += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = keys(name);
        } else if let Some(body) = line.strip_prefix('#') {
            let body = body.trim_start();
            let key: String = body
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let rest = body[key.len()..].trim_start();
            if !key.is_empty() && rest.starts_with('=') && rest.len() > 1 {
                out.entry(current.clone()).or_default().insert(key);
            }
        }
    }
    out
}

/// Compares the tables at `paths` (one table, or the elements of one array of tables) with the
/// schema, then descends into their sub-tables.
fn compare(
    doc: &toml::Table,
    paths: &[Vec<Seg>],
    commented: &BTreeMap<Vec<Seg>, BTreeSet<String>>,
    dir: &Path,
    problems: &mut Vec<String>,
) {
    let where_ = dotted(&paths[0]);
    let mut accepted = BTreeSet::new();
    for path in paths {
        match schema_keys(doc, path, dir) {
            Some(keys) => accepted.extend(keys),
            None => return, // a free-form map
        }
    }
    let mut present = BTreeSet::new();
    let mut tags = BTreeSet::new();
    let mut children: BTreeMap<String, Vec<Vec<Seg>>> = BTreeMap::new();
    for path in paths {
        for (key, value) in table_at(doc, path) {
            present.insert(key.clone());
            let mut child = path.clone();
            child.push(Seg::Key(key.clone()));
            match value {
                toml::Value::Table(_) => children.entry(key.clone()).or_default().push(child),
                toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                    for i in 0..items.len() {
                        let mut element = child.clone();
                        element.push(Seg::Index(i));
                        children.entry(key.clone()).or_default().push(element);
                    }
                }
                // A key the table's own fields do not list, holding a string, is the tag of an
                // internally tagged enum (`kind` of `[[audit.sinks]]`): every variant must appear.
                toml::Value::String(_) if !accepted.contains(key) && tags.insert(key.clone()) => {
                    let variants = schema_variants(doc, path, key, dir);
                    let shown: BTreeSet<String> = paths
                        .iter()
                        .filter_map(|p| table_at(doc, p).get(key)?.as_str().map(str::to_owned))
                        .collect();
                    for missing in variants.difference(&shown) {
                        problems.push(format!(
                            "{where_}: no entry with `{key} = \"{missing}\"` (each one has keys of its own)"
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(keys) = commented.get(path) {
            for key in keys {
                if !accepted.contains(key) {
                    problems.push(format!(
                        "{where_}: `{key}` is shown commented out, but the schema has no such key"
                    ));
                }
                present.insert(key.clone());
            }
        }
    }
    for key in accepted.difference(&present) {
        problems.push(format!("{where_}: `{key}` is missing"));
    }
    for paths in children.values() {
        compare(doc, paths, commented, dir, problems);
    }
}

#[test]
fn full_example_holds_every_key_of_the_schema() {
    let dir = full_example_dir();
    // Probing relies on the file loading as it is: then the only error is the probe's.
    if let Err(e) = Config::from_toml_str(FULL, &dir.path().join("full.toml")) {
        panic!("examples/full.toml does not load:\n{e}");
    }
    let doc: toml::Table = toml::from_str(FULL).unwrap();
    let commented = commented_keys(FULL);
    let mut problems = Vec::new();
    compare(&doc, &[Vec::new()], &commented, dir.path(), &mut problems);
    assert!(
        problems.is_empty(),
        "examples/full.toml and the configuration schema disagree; add each missing key with a \
         comment saying what it does and its default (a key that is an alternative to one that \
         is set goes in commented out, as `# key = value`):\n  {}",
        problems.join("\n  ")
    );

    // The comparison can fail: a key taken out of the file is noticed.
    let mut without = doc.clone();
    table_at_mut(&mut without, &[Seg::Key("gateway".into())]).remove("drain_timeout");
    let mut problems = Vec::new();
    compare(
        &without,
        &[Vec::new()],
        &commented,
        dir.path(),
        &mut problems,
    );
    assert_eq!(problems, ["gateway: `drain_timeout` is missing"]);
}

fn check_config(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.arg("check-config")
        .args(args)
        .env_remove("PORTCULLIS_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, Duration::from_secs(60))
}

#[test]
fn check_config_reports_every_problem_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate("check-config");
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    std::fs::write(dir.path().join("garbage.key"), "not a key\n").unwrap();
    std::fs::copy(&pki.server_cert_file, dir.path().join("server.pem")).unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        r#"[gateway]
node = "${PORTCULLIS_TEST_UNSET_NODE}"

[postgres]
tls_cert = "empty.pem"
tls_key = "garbage.key"
tls_client_ca = "missing-ca.pem"

[identity.jwt]
audience = ["portcullis"]
algorithms = ["HS256"]
hs256_secret = "${PORTCULLIS_TEST_UNSET_SECRET}"

[[targets]]
name = "app"
host = "db"
user = "postgres"
password = "${PORTCULLIS_TEST_UNSET_A}:${PORTCULLIS_TEST_UNSET_B}"
tls = "verify-full"
tls_ca_file = "server.pem"
"#,
    )
    .unwrap();
    let shown = file.display().to_string();
    let expected = [
        (
            "2:8",
            "environment variable `PORTCULLIS_TEST_UNSET_NODE` is not set",
        ),
        ("5:12", "`tls_cert`: certificate file"),
        ("6:11", "`tls_key`: private key file"),
        ("7:17", "`tls_client_ca`: file not found"),
        (
            "12:16",
            "environment variable `PORTCULLIS_TEST_UNSET_SECRET` is not set",
        ),
        (
            "18:12",
            "environment variable `PORTCULLIS_TEST_UNSET_A` is not set",
        ),
        (
            "18:12",
            "environment variable `PORTCULLIS_TEST_UNSET_B` is not set",
        ),
    ];
    let positional = check_config(&[&shown], &[]);
    let option = check_config(&["--config", &shown], &[]);
    let from_env = check_config(&[], &[("PORTCULLIS_CONFIG", &file)]);
    for out in [&positional, &option, &from_env] {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let text = stdout(out);
        let lines: Vec<&str> = text.lines().collect();
        // Nothing else: in particular no "secret too short" for the unset secret.
        assert_eq!(lines.len(), expected.len(), "{text}");
        for (line, (location, fragment)) in lines.iter().zip(expected) {
            assert!(
                line.starts_with(&format!("{shown}:{location}: ")) && line.contains(fragment),
                "expected {location} {fragment:?}, got {line:?}\n{text}"
            );
        }
    }
    assert!(stdout(&positional).contains("empty.pem contains no certificate"));
    assert!(
        stdout(&positional).contains("garbage.key contains no private key"),
        "{}",
        stdout(&positional)
    );

    // A good file, both ways; the file twice is a usage error.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[postgres]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let good_shown = good.display().to_string();
    let out = check_config(&["--config", &good_shown], &[]);
    assert_eq!(stdout(&out).trim(), format!("{good_shown}: ok"), "{out:?}");
    let out = check_config(&[&good_shown, "--config", &good_shown], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = check_config(&[], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A configuration with TLS from `pki` (key file `key`), its data directory `state` inside `dir`.
fn tls_config(dir: &Path, pki: &Pki, key: &Path) -> PathBuf {
    let file = dir.join("gw.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\ndata_dir = \"state\"\n\n[postgres]\nlisten = \"127.0.0.1:0\"\ntls_cert = {}\ntls_key = {}\n\n\
             [[targets]]\nname = \"app\"\nhost = \"127.0.0.1\"\nuser = \"postgres\"\n",
            common::toml_str(&pki.server_cert_file.display().to_string()),
            common::toml_str(&key.display().to_string()),
        ),
    )
    .unwrap();
    file
}

#[test]
fn check_config_finds_a_key_that_does_not_belong_to_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, other) = (Pki::generate("mine"), Pki::generate("other"));
    let file = tls_config(dir.path(), &pki, &other.server_key_file);
    let out = check_config(&[&file.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains(":7:11: `tls_key`: certificate"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[tokio::test]
async fn a_bad_tls_key_stops_the_start_before_the_audit_trail_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate("bad-key");
    let key = dir.path().join("server.key");
    std::fs::copy(&pki.server_key_file, &key).unwrap();
    let file = tls_config(dir.path(), &pki, &key);
    let state = dir.path().join("state");

    // The file was fine when it was loaded, and the key broke before the start: the server
    // reads the TLS material before it creates the data directory and opens the trail.
    let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = match Server::start(config).await {
        Ok(_) => panic!("the server started with a broken key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("TLS") && err.contains("server.key"), "{err}");
    assert!(!state.exists(), "the data directory was created: {err}");

    // `run` refuses the file before anything else, naming the key file.
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--config"]).arg(&file);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("`tls_key`: "), "{}", stderr(&out));
    assert!(!state.exists(), "run created the data directory");
}

#[test]
fn every_unset_variable_is_reported_once_and_nothing_derived_from_it() {
    let text = r#"[gateway]
node = "${PORTCULLIS_TEST_UNSET_1}"
data_dir = "${PORTCULLIS_TEST_UNSET_2}/state"

[postgres]
listen = "${PORTCULLIS_TEST_UNSET_3}"

[identity.jwt]
audience = ["${PORTCULLIS_TEST_UNSET_4}"]
algorithms = ["HS256"]
hs256_secret_file = "${PORTCULLIS_TEST_UNSET_5}/secret"

[[targets]]
name = "app"
host = "${PORTCULLIS_TEST_UNSET_6}"
user = "u"
labels = { env = "${PORTCULLIS_TEST_UNSET_7}" }

[[audit.sinks]]
kind = "postgres"
url = "${PORTCULLIS_TEST_UNSET_8}"

[policy]
[[policy.access]]
name = "literal-${PORTCULLIS_TEST_UNSET_9}"
groups = ["*"]
mode = "read-only"
"#;
    let errors = Config::from_toml_str(text, Path::new("/etc/portcullis/gw.toml")).unwrap_err();
    let lines: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    let expected = [
        ("2:8", 1),
        ("3:12", 2),
        ("6:10", 3),
        ("9:13", 4),
        ("11:21", 5),
        ("15:8", 6),
        ("17:18", 7),
        ("21:7", 8),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, (location, n)) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("/etc/portcullis/gw.toml:{location}: "))
                && line.contains(&format!("`PORTCULLIS_TEST_UNSET_{n}` is not set")),
            "expected {location} for variable {n}:\n{lines:#?}"
        );
    }
}
