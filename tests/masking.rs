//! Masking end to end: a gateway with `[masking]` rules in front of a database of its own, driven
//! by tokio-postgres (extended protocol, binary results) and by simple queries, as an identity the
//! rules mask and one they do not. Canary values are seeded; a masked session must never receive
//! one, nor its digits-only or case-folded form.

mod common;

use common::{sqlstate, TestGateway};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Canary values: each appears in the table and nowhere else.
const SSN: &str = "078-05-1120";
const EMAIL: &str = "Zelda.Canary@Example.org";
const CARD: &str = "4539 1488 0343 6467";
const SALARY: i32 = 918_273;
const NOTE: &str = "met at the harbour";

const MASKING: &str = r#"
[policy]
[[policy.access]]
name = "everyone"
groups = ["analysts", "engineering"]
mode = "read-write"

[masking]
[[masking.rules]]
name = "ssn"
columns = ["customers.ssn"]
strategy = "partial"
keep_last = 4
groups = ["analysts"]

[[masking.rules]]
name = "email"
columns = ["public.customers.email"]
strategy = "email"
groups = ["analysts"]

[[masking.rules]]
name = "card"
columns = ["customers.card"]
strategy = "card"
groups = ["analysts"]

[[masking.rules]]
name = "salary"
columns = ["customers.salary"]
strategy = "redact"
groups = ["analysts"]
"#;

struct Setup {
    gw: TestGateway,
}

impl Setup {
    async fn start() -> Setup {
        Self::start_with(MASKING).await
    }

    async fn start_with(config: &str) -> Setup {
        let gw = TestGateway::start_with(common::Options {
            extra_config: config.to_owned(),
            ..Default::default()
        })
        .await;
        let direct = gw.db.connect_direct().await;
        direct
            .batch_execute(&format!(
                "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text,
                                         card text, salary int, note text);
                 INSERT INTO customers VALUES
                   (1, 'Zelda', '{EMAIL}', '{SSN}', '{CARD}', {SALARY}, '{NOTE}'),
                   (2, 'Link', 'link@hyrule.example', '219-09-9999', '4916 3385 0608 2832', 50000, 'sword');
                 CREATE VIEW customer_contacts AS SELECT id, name, email, ssn AS national_id FROM customers;
                 CREATE VIEW contact_digest AS SELECT id, upper(email) AS shout FROM customer_contacts;
                 CREATE VIEW ssn_backwards AS SELECT id, reverse(ssn) AS r, ssn AS copy FROM customers;
                 CREATE VIEW ssn_backwards_again AS SELECT r, copy FROM ssn_backwards;
                 CREATE TABLE scratch (v text);"
            ))
            .await
            .expect("seed the customers table");
        Setup { gw }
    }

    async fn connect(&self, subject: &str, groups: &[&str]) -> Client {
        let mut req = self.gw.mint_request(subject);
        req.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        let token = identity::mint_token(&req).expect("mint");
        self.gw.connect_tokio_postgres(&token).await
    }

    async fn analyst(&self) -> Client {
        self.connect("ann", &["analysts"]).await
    }
}

/// Every form of every canary that must not reach a masked client.
fn forbidden() -> Vec<String> {
    let mut out = Vec::new();
    for canary in [SSN, EMAIL, CARD, &SALARY.to_string()] {
        out.push(canary.to_owned());
        out.push(canary.to_lowercase());
        out.push(canary.to_uppercase());
        let digits: String = canary.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= 6 {
            out.push(digits);
        }
    }
    out.push("zelda.canary".to_owned());
    out
}

fn assert_clean(what: &str, text: &str) {
    let lower = text.to_lowercase();
    for f in forbidden() {
        assert!(
            !lower.contains(&f.to_lowercase()),
            "{what}: the canary {f:?} leaked in {text:?}"
        );
    }
}

/// All values of a simple-protocol result, as text, for scanning.
async fn simple(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

fn flat(rows: &[Vec<Option<String>>]) -> String {
    format!("{rows:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_no_rule_names_sees_the_data() {
    let s = Setup::start().await;
    let eng = s.connect("erin", &["engineering"]).await;
    let rows = simple(
        &eng,
        "SELECT ssn, email, salary FROM customers WHERE id = 1",
    )
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![vec![
            Some(SSN.into()),
            Some(EMAIL.into()),
            Some(SALARY.to_string())
        ]]
    );
    let row = eng
        .query_one("SELECT salary, card FROM customers WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), SALARY);
    assert_eq!(row.get::<_, String>(1), CARD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_columns_get_their_rule_in_text_and_binary() {
    let s = Setup::start().await;
    let ann = s.analyst().await;
    // Simple protocol: text format.
    let rows = simple(
        &ann,
        "SELECT id, name, ssn, email, card, salary FROM customers ORDER BY id",
    )
    .await
    .unwrap();
    assert_clean("simple select", &flat(&rows));
    let first = &rows[0];
    assert_eq!(first[1].as_deref(), Some("Zelda"), "unmasked columns pass");
    assert_eq!(
        first[2].as_deref(),
        Some("*******1120"),
        "partial keeps the last 4"
    );
    let email = first[3].clone().unwrap();
    assert!(
        email.ends_with("@Example.org") && email.starts_with('Z') && email.contains("***"),
        "{email}"
    );
    let card = first[4].clone().unwrap();
    assert!(card.ends_with("6467") && card.len() == CARD.len(), "{card}");
    assert_eq!(
        first[5].as_deref(),
        Some("0"),
        "redacted integers stay integers"
    );

    // Extended protocol: tokio-postgres asks for binary results; they decode as their types.
    let row = ann
        .query_one(
            "SELECT salary, ssn, name FROM customers WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0);
    assert_eq!(row.get::<_, String>(1), "*******1120");
    assert_eq!(row.get::<_, String>(2), "Zelda");
    // A prepared statement runs twice: both executions are masked.
    let stmt = ann
        .prepare("SELECT ssn FROM customers WHERE id = $1")
        .await
        .unwrap();
    for _ in 0..2 {
        let row = ann.query_one(&stmt, &[&1i32]).await.unwrap();
        assert_clean("prepared", &row.get::<_, String>(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_values_are_masked_however_the_query_builds_them() {
    let s = Setup::start().await;
    let ann = s.analyst().await;
    let queries = [
        "SELECT ssn AS x FROM customers",
        "SELECT \"ssn\" FROM public.customers",
        "SELECT c.ssn FROM customers c",
        "SELECT ssn || '' FROM customers",
        "SELECT substr(ssn, 1, 3), substr(ssn, 5, 2) FROM customers",
        "SELECT lower(email), upper(email) FROM customers",
        "SELECT replace(ssn, '-', '') FROM customers",
        "SELECT ssn::text, salary::text, salary + 0, salary * 1 FROM customers",
        "SELECT CASE WHEN id = 1 THEN ssn END FROM customers",
        "SELECT COALESCE(NULL, ssn) FROM customers",
        "SELECT format('%s', card) FROM customers",
        "SELECT ARRAY[ssn, email] FROM customers",
        "SELECT string_agg(ssn, ',') FROM customers",
        "SELECT json_agg(email) FROM customers",
        "SELECT max(salary), sum(salary) FROM customers",
        "SELECT lag(ssn) OVER (ORDER BY id) FROM customers",
        "SELECT (SELECT ssn FROM customers WHERE id = 1)",
        "SELECT x FROM (SELECT ssn AS x FROM customers) s",
        "WITH t AS (SELECT email AS e FROM customers) SELECT e FROM t",
        "WITH t AS (SELECT email || '!' AS e FROM customers) SELECT * FROM t",
        "SELECT ssn FROM customers UNION SELECT 'x'",
        "SELECT name FROM customers UNION ALL SELECT ssn FROM customers",
        "VALUES ((SELECT card FROM customers WHERE id = 1))",
        "SELECT v.x FROM customers c, LATERAL (SELECT c.ssn AS x) v",
        "SELECT national_id, email FROM customer_contacts",
        "SELECT * FROM customer_contacts",
        "SELECT shout FROM contact_digest",
        "SELECT * FROM customers",
        "SELECT json_build_object('s', ssn) FROM customers",
        "SELECT encode(convert_to(ssn, 'UTF8'), 'hex') FROM customers",
        "SELECT md5(ssn) = md5('078-05-1120') FROM customers",
    ];
    for sql in queries {
        let rows = simple(&ann, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_clean(sql, &flat(&rows));
        // The same text in the extended protocol, results as text (prepared, then executed).
        let stmt = ann
            .prepare(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        let rows = ann
            .query(&stmt, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        for row in rows {
            for (i, column) in row.columns().iter().enumerate() {
                let ty = column.type_().name();
                let text: Result<Option<String>, _> = match ty {
                    "text" | "varchar" => row.try_get(i),
                    "json" | "jsonb" => row
                        .try_get::<_, Option<Raw>>(i)
                        .map(|v| v.map(|v| String::from_utf8_lossy(&v.0).into_owned())),
                    "int4" => row
                        .try_get::<_, Option<i32>>(i)
                        .map(|v| v.map(|v| v.to_string())),
                    "int8" => row
                        .try_get::<_, Option<i64>>(i)
                        .map(|v| v.map(|v| v.to_string())),
                    "bool" => row
                        .try_get::<_, Option<bool>>(i)
                        .map(|v| v.map(|v| v.to_string())),
                    "_text" => row
                        .try_get::<_, Option<Vec<Option<String>>>>(i)
                        .map(|v| v.map(|v| format!("{v:?}"))),
                    other => panic!("{sql}: column of type {other} in the test"),
                };
                let text = text.unwrap_or_else(|e| {
                    panic!("{sql}: column {i} ({ty}) does not decode as its type: {e:?}")
                });
                assert_clean(&format!("{sql} (extended)"), &format!("{text:?}"));
            }
        }
    }
}

/// A value's raw bytes, whatever its type.
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computed_view_column_never_gets_a_shape_keeping_strategy() {
    let s = Setup::start().await;
    let ann = s.analyst().await;
    let backwards: String = SSN.chars().rev().collect();
    let tail = &backwards[backwards.len() - 4..];
    for sql in [
        "SELECT r, copy FROM ssn_backwards WHERE id = 1",
        "SELECT r, copy FROM ssn_backwards_again LIMIT 1",
        "SELECT * FROM ssn_backwards WHERE id = 1",
    ] {
        let rows = simple(&ann, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        let r = rows[0][rows[0].len() - 2].clone().unwrap_or_default();
        let copy = rows[0][rows[0].len() - 1].clone().unwrap_or_default();
        // `partial` keeps the last 4 characters of what it is given: of reverse(ssn), that would
        // be the first digits of the number. A computed column is redacted whole instead.
        assert!(
            !r.contains(tail),
            "{sql}: {r:?} keeps the shape of reverse(ssn)"
        );
        assert_clean(sql, &r);
        // The plain copy keeps its rule's strategy.
        assert!(
            copy.ends_with(&SSN[SSN.len() - 4..]) && !copy.contains("078"),
            "{sql}: {copy:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_what_cannot_be_traced() {
    let s = Setup::start().await;
    let ann = s.analyst().await;
    let refused = [
        "SELECT row_to_json(c) FROM customers c",
        "SELECT to_jsonb(c.*) FROM customers c",
        "SELECT c FROM customers c",
        "SELECT c::text FROM customers c",
        "SELECT jsonb_agg(c) FROM customers c",
        "COPY customers TO STDOUT",
        "COPY (SELECT ssn FROM customers) TO STDOUT",
        "DO $$ BEGIN PERFORM 1; END $$",
        "INSERT INTO scratch SELECT ssn FROM customers",
        "CREATE TABLE stolen AS SELECT email FROM customers",
        "SELECT ssn INTO stolen2 FROM customers",
        "UPDATE scratch SET v = (SELECT ssn FROM customers LIMIT 1)",
        "CREATE FUNCTION first_ssn() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM customers LIMIT 1'",
        "CREATE PROCEDURE copy_ssn() LANGUAGE plpgsql AS $$ BEGIN INSERT INTO scratch SELECT ssn FROM customers; END $$",
        "CREATE RULE copy AS ON INSERT TO scratch DO ALSO SELECT 1",
        "CREATE FUNCTION copy_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.v := (SELECT ssn FROM customers LIMIT 1); RETURN NEW; END $$",
        "SELECT pg_notify('c', email) FROM customers",
    ];
    for sql in refused {
        let e = ann
            .simple_query(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql}: should have been refused"));
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e:?}");
        let db = e.as_db_error().expect("a server error");
        assert!(db.message().contains("mask"), "{sql}: {}", db.message());
        assert_clean(sql, &format!("{db:?}"));
        // The session stays usable.
        ann.simple_query("SELECT 1").await.unwrap();
    }
    // Nothing reached the tables.
    let direct = s.gw.db.connect_direct().await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // The same statements pass for an identity the rules do not name.
    let eng = s.connect("erin", &["engineering"]).await;
    eng.simple_query("SELECT row_to_json(c) FROM customers c")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_do_not_echo_masked_values() {
    let s = Setup::start().await;
    let ann = s.analyst().await;
    for sql in [
        "SELECT ssn::int FROM customers WHERE id = 1",
        "SELECT email::uuid FROM customers WHERE id = 1",
        "SELECT card::date FROM customers WHERE id = 1",
        "SELECT (ssn || '')::numeric FROM customers",
        "SELECT ssn::jsonb FROM customers",
    ] {
        let e = ann
            .simple_query(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} fails"));
        let db = e.as_db_error().expect("a server error");
        assert_clean(sql, &format!("{db:?}"));
        let e = ann
            .query(sql, &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} fails"));
        assert_clean(sql, &format!("{:?}", e.as_db_error()));
    }
    // A unique violation's DETAIL names the duplicate value: not for a masked session.
    let direct = s.gw.db.connect_direct().await;
    direct
        .batch_execute(
            "CREATE UNIQUE INDEX ON scratch (v); INSERT INTO scratch VALUES ('078-05-1120')",
        )
        .await
        .unwrap();
    let e = ann
        .simple_query("INSERT INTO scratch VALUES ('078-05-1120')")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23505");
    assert!(db.detail().is_none(), "{db:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_says_what_was_masked() {
    let s = Setup::start().await;
    let ann = s.analyst().await;
    ann.simple_query("SELECT id, ssn, lower(email) FROM customers")
        .await
        .unwrap();
    let records =
        s.gw.trail_until("a statement_finished with masked columns", |records| {
            records.iter().any(|r| r.get("masked").is_some())
        })
        .await;
    let finished = records.iter().find(|r| r.get("masked").is_some()).unwrap();
    let masked = finished["masked"].as_array().unwrap();
    let ssn = masked
        .iter()
        .find(|m| m["column"] == "ssn")
        .expect("ssn masked");
    assert_eq!(ssn["reason"], "ssn: partial");
    assert_eq!(ssn["values"], 2);
    let lower = masked
        .iter()
        .find(|m| m["column"] == "lower")
        .expect("lower(email) masked");
    assert!(
        lower["reason"].as_str().unwrap().contains("derived"),
        "{lower}"
    );
    assert!(masked.iter().all(|m| m["column"] != "id"));
    assert_clean("the trail", &format!("{masked:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_the_masker_reads_statements_itself() {
    let config = MASKING.split("[masking]").nth(1).unwrap();
    let s = Setup::start_with(&format!("[masking]{config}")).await;
    let ann = s.analyst().await;
    for sql in [
        "SELECT ssn || '' FROM customers",
        "SELECT x FROM (SELECT email AS x FROM customers) s",
        "SELECT national_id FROM customer_contacts",
    ] {
        let rows = simple(&ann, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_clean(sql, &flat(&rows));
    }
    for sql in [
        "SELECT row_to_json(c) FROM customers c",
        "SELECT pg_read_file('/etc/hostname')",
        "COPY customers TO STDOUT",
    ] {
        let e = ann.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}");
        assert!(
            e.as_db_error().unwrap().message().contains("mask"),
            "{sql}: {e:?}"
        );
    }
    let rows = simple(&ann, "SELECT name FROM customers WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![Some("Link".to_owned())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_suggests_rules_the_gateway_accepts() {
    let s = Setup::start().await;
    let direct = s.gw.db.connect_direct().await;
    // More rows, so that each column has a sample worth the name; a free-text column with an
    // address inside, and columns whose names say what they hold but whose values do not.
    direct
        .batch_execute(
            "INSERT INTO customers
               SELECT g, 'name ' || g, 'user' || g || '@example.com',
                      lpad((100 + g)::text, 3, '0') || '-45-' || lpad((1000 + g)::text, 4, '0'),
                      '4111 1111 1111 1111', g, 'call me at desk ' || g
                 FROM generate_series(10, 40) g;
             CREATE TABLE tickets (id int, body text, phone_number text);
             INSERT INTO tickets VALUES (1, 'please write to Mallory.Q@example.net soon', NULL),
                                        (2, 'nothing here', NULL);",
        )
        .await
        .unwrap();
    let config = portcullis::Config::from_toml_str(
        &s.gw.config_text,
        &s.gw.scratch().join("portcullis.toml"),
    )
    .unwrap();
    let findings = portcullis::discover::discover(&config, s.gw.database(), 100)
        .await
        .unwrap();
    let find = |column: &str| {
        findings
            .iter()
            .find(|f| f.column == format!("public.{column}"))
            .unwrap_or_else(|| panic!("{column} not found in {findings:#?}"))
    };
    assert_eq!(find("customers.email").kind.name(), "email");
    assert!(find("customers.email").whole);
    assert_eq!(find("customers.ssn").kind.name(), "ssn");
    assert_eq!(find("customers.card").kind.name(), "card");
    assert!(
        !find("tickets.body").whole,
        "free text goes to the detectors"
    );
    assert_eq!(find("tickets.phone_number").kind.name(), "phone");
    assert!(
        findings
            .iter()
            .all(|f| !f.column.ends_with(".name") && !f.column.ends_with(".id")),
        "{findings:#?}"
    );
    // The suggestion is configuration the gateway accepts, as printed.
    let text = portcullis::discover::render(s.gw.database(), &findings);
    let checked = portcullis::Config::from_toml_str(
        &format!(
            "{}\n{text}",
            s.gw.config_text
                .replace("[masking]", "[unused_masking]")
                .split("[unused_masking]")
                .next()
                .unwrap()
        ),
        &s.gw.scratch().join("portcullis.toml"),
    )
    .unwrap_or_else(|e| panic!("discover printed configuration the gateway refuses:\n{e}\n{text}"));
    let masking = checked.masking.expect("a [masking] section");
    assert!(masking
        .rules
        .iter()
        .any(|r| r.names("public", "customers", "email")));
    assert_eq!(masking.detectors.len(), 1);
    // The values it sampled are not in what it prints.
    assert_clean("discover's output", &text);
}
