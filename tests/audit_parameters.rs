//! Bound parameters and fingerprints in the audit trail, end to end: real clients (tokio-postgres
//! with binary parameters, psycopg 3 with text parameters, pgbench) through the gateway to the
//! local PostgreSQL, then the records read back from the default trail's segment log (which holds
//! a statement's record before the statement runs; the SQLite index follows it a moment later).

mod common;

use std::path::Path;

use common::{assert_success, Options, TestGateway};
use serde_json::{json, Value};

/// The payloads of every `statement_started` record, in chain order.
async fn started(gw: &TestGateway) -> Vec<Value> {
    gw.trail()
        .await
        .into_iter()
        .filter(|r| r["event"] == "statement_started")
        .collect()
}

/// The one started record whose text is `sql`.
fn by_sql<'a>(records: &'a [Value], sql: &str) -> &'a Value {
    let found: Vec<&Value> = records.iter().filter(|r| r["sql"] == sql).collect();
    assert_eq!(found.len(), 1, "one record of {sql:?} in {records:#?}");
    found[0]
}

/// A gateway with a policy that admits everyone read-write (the policy engine's analysis is what
/// yields fingerprints) and `audit` as its `[audit]` settings.
async fn gateway(audit: &str) -> TestGateway {
    TestGateway::start_with(Options {
        extra_config: format!(
            "[policy]\n[[policy.access]]\nname = \"everyone\"\ngroups = [\"*\"]\nmode = \"read-write\"\n\n{audit}"
        ),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn parameters_are_recorded_as_sent_by_default() {
    let gw = gateway("[audit]\nparameter_max_bytes = 16\n").await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    // tokio-postgres sends every parameter in binary format.
    let long = "x".repeat(40);
    let sql = "select $1::int4 + 1, $2::text, $3::text, $4::text";
    let row = client
        .query_one(sql, &[&41i32, &"bob", &None::<&str>, &long])
        .await
        .expect("prepared statement through the gateway");
    assert_eq!(row.get::<_, i32>(0), 42);

    // psycopg 3 binds server-side: numbers in binary (the smallest integer type that fits),
    // strings in text format.
    let out = gw
        .python(
            r#"
import psycopg
with psycopg.connect() as conn:
    conn.execute("select %s::int + 1, %s::text", (7, "é and 'quotes'"))
"#,
        )
        .await;
    assert_success("psycopg", &out);

    let records = started(&gw).await;
    let binary = by_sql(&records, sql);
    assert_eq!(
        binary["parameters"],
        json!({
            "mode": "recorded",
            "values": [
                {"hex": "00000029", "bytes": 4, "truncated": false},
                {"hex": "626f62", "bytes": 3, "truncated": false},
                null,
                {"hex": "78".repeat(16), "bytes": 40, "truncated": true},
            ]
        }),
        "{binary:#}"
    );
    let text = by_sql(&records, "select $1::int + 1, $2::text");
    assert_eq!(
        text["parameters"],
        json!({
            "mode": "recorded",
            "values": [
                {"hex": "0007", "bytes": 2, "truncated": false},
                "é and 'quotes'"
            ]
        }),
        "{text:#}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn hashed_parameters_need_the_key_and_never_show_the_value() {
    let key_dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_dir.path().join("parameter.key");
    let key: [u8; 32] = rand::random();
    std::fs::write(&key_file, key).expect("write key");
    let gw = gateway(&format!(
        "[audit]\nparameters = \"hash\"\nparameter_hash_key_file = {}\n",
        common::toml_str(&key_file.display().to_string())
    ))
    .await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    let secret = "1985-04-12-birthday";
    let sql = "select length($1::text), $2::text";
    client
        .query_one(sql, &[&secret, &None::<&str>])
        .await
        .expect("prepared statement through the gateway");

    let records = started(&gw).await;
    let record = by_sql(&records, sql);
    let params = &record["parameters"];
    assert_eq!(params["mode"], "hashed", "{record:#}");
    // HMAC-SHA-256 under the configured key, of the bytes as sent (text is UTF-8 either way).
    let expected = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
        secret.as_bytes(),
    );
    let hex: String = expected
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        params["values"],
        json!([format!("hmac-sha256:{hex}"), null])
    );
    // Written durability: the records are in the segment log's files now.
    assert_not_in_files(&gw.scratch().join("data/audit"), secret);
    gw.shutdown().await;
}

/// No file under `dir` holds `needle`.
fn assert_not_in_files(dir: &Path, needle: &str) {
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds {needle:?}",
                path.display()
            );
            files += 1;
        }
    }
    assert!(files > 0, "no trail files under {}", dir.display());
}

#[tokio::test]
async fn omitted_parameters_leave_no_field() {
    let gw = gateway("[audit]\nparameters = \"omit\"\n").await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    let sql = "select $1::text";
    client.query_one(sql, &[&"kept-out"]).await.expect("query");
    let records = started(&gw).await;
    let record = by_sql(&records, sql);
    assert!(record.get("parameters").is_none(), "{record:#}");
    // The fingerprint does not depend on the parameter mode.
    assert!(record["fingerprint"].is_string(), "{record:#}");
    gw.shutdown().await;
}

#[tokio::test]
async fn texts_that_differ_only_in_literals_share_a_fingerprint() {
    let gw = gateway("").await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    client
        .batch_execute("create table fp (id int primary key, name text)")
        .await
        .expect("create");
    let texts = [
        "select name from fp where id = 1",
        "SELECT name\n  FROM fp WHERE id = 22 -- another comment",
        "select name from fp where id = $1",
        "select id from fp where name = 'x'",
    ];
    for sql in &texts[..2] {
        client.simple_query(sql).await.expect("simple query");
    }
    client.query(texts[2], &[&3i32]).await.expect("prepared");
    client.simple_query(texts[3]).await.expect("simple query");

    let records = started(&gw).await;
    let fp = |sql: &str| {
        by_sql(&records, sql)["fingerprint"]
            .as_str()
            .unwrap_or_else(|| panic!("a fingerprint for {sql:?}"))
            .to_owned()
    };
    let first = fp(texts[0]);
    assert_eq!(first.len(), 16, "{first}");
    assert_eq!(
        fp(texts[1]),
        first,
        "layout, case, comments and literals do not count"
    );
    assert_eq!(fp(texts[2]), first, "a parameter is a literal too");
    assert_ne!(fp(texts[3]), first, "another query, another fingerprint");
    gw.shutdown().await;
}

#[tokio::test]
async fn pgbench_prepared_statements_carry_their_parameters() {
    let gw = gateway("").await;
    let init = gw.pgbench(&["-i", "-s", "1", "-q"]).await;
    assert_success("pgbench -i", &init);
    let run = gw
        .pgbench(&["-S", "-M", "prepared", "-t", "20", "-c", "1"])
        .await;
    assert_success("pgbench -S -M prepared", &run);
    let records = started(&gw).await;
    let selects: Vec<&Value> = records
        .iter()
        .filter(|r| r["sql"] == "SELECT abalance FROM pgbench_accounts WHERE aid = $1;")
        .collect();
    assert_eq!(selects.len(), 20, "one record per execution");
    for r in selects {
        let values = r["parameters"]["values"].as_array().expect("values");
        assert_eq!(values.len(), 1, "{r:#}");
        let aid: u32 = values[0]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("pgbench binds the account id as text: {r:#}"));
        assert!((1..=100_000).contains(&aid), "{aid}");
    }
    gw.shutdown().await;
}
