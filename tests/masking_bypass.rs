//! The masking bypass suite: adversarial statements, driven by real clients, proving that no
//! protected value reaches a masked client through any byte it receives.
//!
//! A gateway runs in-process in front of a database seeded with canary values (an SSN, a
//! mixed-case e-mail address, a Luhn-valid card number with spaces, a salary, a birth date, an
//! API key, a free-text note and a JSON profile holding them). Every client connects through a
//! small recording relay ([`Recorder`]) that keeps each byte the gateway sends to the client.
//! Each case runs through psql, tokio-postgres (simple protocol, and extended with binary
//! results), psycopg 3 (named prepared statements with text results; unnamed with binary
//! results for a subset), asyncpg (binary, decoded by type) and PgJDBC (simple and extended);
//! before each case a client selects `'case-marker:<id>:'`, so the recorded stream is split into
//! one segment per case (psql: one connection per case). After the run, no segment may hold a
//! canary as it is, lower- or upper-cased, as its digits alone (values of 6 digits or more), nor
//! the salary's and birth date's binary forms; a case may add forms of its own (a reversed or
//! re-encoded value).
//!
//! A case is masked or refused (SQLSTATE 42501); either way the session must stay usable, and
//! the cases the documentation says are refused must be. Binary clients must also decode every
//! value by its column's type. An unmasked identity sees the real values, so the suite cannot
//! pass by breaking everything. Writes the gateway refuses leave nothing behind (checked
//! directly on the database).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{stderr, stdout, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------------
// Canaries and the configuration
// ---------------------------------------------------------------------------------------------

/// The canaries: each appears in the seeded data and nowhere a masked client may read it.
const SSN: &str = "078-05-1120";
const EMAIL: &str = "Zelda.Canary@Example.org";
const CARD: &str = "4539 1488 0343 6467";
const SALARY: i32 = 18_273_645;
const BORN: &str = "1987-06-14";
/// 1987-06-14 as PostgreSQL's binary date: days since 2000-01-01.
const BORN_DAYS: i32 = -4584;
const API_KEY: &str = "sk_live_Q7zX9mP2vL4nR8tK1wY6bC3d";

const CONFIG: &str = r#"
[policy]
[[policy.access]]
name = "everyone"
groups = ["analysts", "engineering", "support"]
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

[[masking.rules]]
name = "born"
columns = ["customers.born"]
strategy = "redact"
groups = ["analysts"]

[[masking.rules]]
name = "api-key"
columns = ["customers.api_key"]
strategy = "hash"
groups = ["analysts"]

# The note and the profile repeat the canaries: for analysts they are masked by rule, for the
# support group by the detectors alone.
[[masking.rules]]
name = "note"
columns = ["customers.note"]
strategy = "null"
groups = ["analysts"]

[[masking.rules]]
name = "profile"
columns = ["customers.profile"]
strategy = "redact"
groups = ["analysts"]

[[masking.detectors]]
name = "support-scan"
kinds = ["email", "card", "ssn", "secret"]
groups = ["support"]
"#;

/// The database every test starts from (run directly, as the superuser).
fn seed_sql() -> String {
    let profile = format!(
        r#"{{"contact": {{"mail": "{EMAIL}", "ssn": "{SSN}"}}, "cards": ["{CARD}"], "key": "{API_KEY}"}}"#
    );
    format!(
        r#"
CREATE TABLE customers (
    id int PRIMARY KEY CHECK (id > 0),
    name text NOT NULL,
    email text,
    ssn text,
    card text,
    salary int,
    born date,
    api_key text,
    note text,
    profile jsonb,
    region text DEFAULT 'north',
    UNIQUE (name, ssn)
);
INSERT INTO customers VALUES
  (1, 'Zelda', '{EMAIL}', '{SSN}', '{CARD}', {SALARY}, '{BORN}', '{API_KEY}',
   'Prefers mail to {EMAIL}, call after six', '{profile}'),
  (2, 'Link', 'link@hyrule.example', '219-09-9999', '4916 3385 0608 2832', 50000, '1990-02-03',
   'sk_test_notasecret', 'sword', '{{"mail": "link@hyrule.example"}}'),
  (3, 'Impa', 'impa@sheikah.example', '{SSN}', '5555 5555 5555 4444', 61000, '1960-03-04',
   'none', 'twin record', '{{}}');
CREATE VIEW customer_contacts AS
    SELECT id, name, email, ssn AS national_id, salary AS pay FROM customers;
CREATE VIEW contact_digest AS
    SELECT id, upper(email) AS shout, national_id FROM customer_contacts;
CREATE FUNCTION ssn_of(i int) RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT ssn FROM customers WHERE id = i $$;
CREATE FUNCTION all_ssns() RETURNS TABLE (id int, ssn text) LANGUAGE sql STABLE
    AS $$ SELECT id, ssn FROM customers $$;
CREATE FUNCTION shout_ssn(i int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE s text;
BEGIN
    SELECT c.ssn INTO s FROM customers c WHERE c.id = i;
    RAISE NOTICE 'ssn is %', s;
    RETURN 1;
END $$;
CREATE FUNCTION fail_with_ssn(i int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE s text;
BEGIN
    SELECT c.ssn INTO s FROM customers c WHERE c.id = i;
    RAISE EXCEPTION 'bad record %', s USING HINT = s, DETAIL = s;
END $$;
CREATE FUNCTION date_of_salary(i int) RETURNS date LANGUAGE sql STABLE
    AS $$ SELECT make_date(salary, 1, 1) FROM customers WHERE id = i $$;
CREATE FUNCTION notify_contacts() RETURNS void LANGUAGE sql
    AS $$ SELECT pg_notify('bypass_chan', 'mail ' || email || ' ssn ' || ssn || ' card ' || card)
          FROM customers WHERE id = 1 $$;
CREATE MATERIALIZED VIEW contact_mv AS SELECT id, lower(email) AS mail, ssn AS tax FROM customers;
CREATE TABLE scratch (v text);
CREATE SEQUENCE bypass_seq;
CREATE DOMAIN tax_code AS text;
CREATE SCHEMA shadow;
CREATE TABLE shadow.customers (id int, name text, email text, ssn text);
INSERT INTO shadow.customers VALUES (1, 'Decoy', 'decoy@shadow.example', '000-00-0000');
"#
    )
}

/// Who connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    /// Masked by rules (every canary column).
    Analysts,
    /// Masked by the detectors only.
    Support,
    /// Not masked.
    Engineering,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Analysts => "analysts",
            Group::Support => "support",
            Group::Engineering => "engineering",
        }
    }
}

fn token(gw: &TestGateway, group: Group) -> String {
    let mut req = gw.mint_request(&format!("{}-user", group.name()));
    req.groups = vec![group.name().to_owned()];
    identity::mint_token(&req).expect("mint")
}

async fn start() -> TestGateway {
    let gw = TestGateway::start_with(common::Options {
        extra_config: CONFIG.to_owned(),
        ..Default::default()
    })
    .await;
    gw.db
        .connect_direct()
        .await
        .batch_execute(&seed_sql())
        .await
        .expect("seed the database");
    gw
}

// ---------------------------------------------------------------------------------------------
// Forbidden forms
// ---------------------------------------------------------------------------------------------

/// One form of a canary that must not appear in the bytes a masked client receives.
#[derive(Clone, Debug)]
struct Needle {
    label: String,
    bytes: Vec<u8>,
    /// Compared ignoring ASCII case (covers the value as it is, lower- and upper-cased).
    fold: bool,
}

fn text_needle(label: &str, text: &str) -> Needle {
    Needle {
        label: label.to_owned(),
        bytes: text.to_ascii_lowercase().into_bytes(),
        fold: true,
    }
}

/// The text forms of a canary: as it is (in any case) and its digits alone when it has 6 or more.
fn text_forms(label: &str, canary: &str) -> Vec<Needle> {
    let mut out = vec![text_needle(label, canary)];
    let digits: String = canary.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 6 && digits != canary {
        out.push(text_needle(&format!("{label} (digits only)"), &digits));
    }
    out
}

/// Every canary form a group must not see.
fn needles(group: Group) -> Vec<Needle> {
    let mut out = Vec::new();
    out.extend(text_forms("ssn", SSN));
    out.extend(text_forms("email", EMAIL));
    out.extend(text_forms("card", CARD));
    out.extend(text_forms("api_key", API_KEY));
    if group == Group::Analysts {
        out.extend(text_forms("salary", &SALARY.to_string()));
        out.push(Needle {
            label: "salary (int4 binary)".into(),
            bytes: SALARY.to_be_bytes().to_vec(),
            fold: false,
        });
        out.push(Needle {
            label: "salary (int8 binary)".into(),
            bytes: i64::from(SALARY).to_be_bytes().to_vec(),
            fold: false,
        });
        out.extend(text_forms("born", BORN));
        out.push(Needle {
            label: "born (date binary)".into(),
            bytes: BORN_DAYS.to_be_bytes().to_vec(),
            fold: false,
        });
    }
    out
}

/// Each needle found in `bytes`, with the bytes around it.
fn leaks(bytes: &[u8], needles: &[Needle]) -> Vec<String> {
    let folded = bytes.to_ascii_lowercase();
    let mut found = Vec::new();
    for n in needles {
        let hay = if n.fold { &folded[..] } else { bytes };
        if n.bytes.is_empty() || hay.len() < n.bytes.len() {
            continue;
        }
        if let Some(at) = hay.windows(n.bytes.len()).position(|w| w == &n.bytes[..]) {
            let from = at.saturating_sub(40);
            let to = (at + n.bytes.len() + 40).min(bytes.len());
            found.push(format!(
                "{} in …{}…",
                n.label,
                bytes[from..to].escape_ascii()
            ));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The recording relay
// ---------------------------------------------------------------------------------------------

/// What the gateway sent on each connection, in the order the connections were accepted.
type Recorded = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A TCP relay in front of the gateway that keeps every byte the gateway sends to the client,
/// per connection, in the order the connections were accepted.
struct Recorder {
    port: u16,
    connections: Recorded,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(gateway: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let port = listener.local_addr().expect("recorder address").port();
        let connections: Recorded = Arc::default();
        let list = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let record = Arc::new(Mutex::new(Vec::new()));
                list.lock().unwrap().push(Arc::clone(&record));
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(gateway).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                        let _ = server_write.shutdown().await;
                    });
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        match server_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                // Recorded before the client can act on it.
                                record.lock().unwrap().extend_from_slice(&chunk[..n]);
                                if client_write.write_all(&chunk[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = client_write.shutdown().await;
                });
            }
        });
        Recorder {
            port,
            connections,
            task,
        }
    }

    /// Everything recorded so far (every connection, in order), forgetting it.
    fn take(&self) -> Vec<u8> {
        let taken: Vec<_> = std::mem::take(&mut *self.connections.lock().unwrap());
        taken
            .iter()
            .flat_map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const MARKER: &[u8] = b"case-marker:";

/// The recorded stream split at each case marker (`case-marker:<id>:`): case id to the bytes
/// from its marker to the next (`login` for what came before the first).
fn segments(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut current = "login".to_owned();
    let mut start = 0;
    let mut i = 0;
    while i + MARKER.len() <= bytes.len() {
        if &bytes[i..i + MARKER.len()] == MARKER {
            out.entry(current.clone())
                .or_default()
                .extend_from_slice(&bytes[start..i]);
            let id_start = i + MARKER.len();
            // The id ends at the colon that closes the marker.
            let id_end = bytes[id_start..]
                .iter()
                .position(|b| *b == b':')
                .map_or(bytes.len(), |p| id_start + p);
            current = String::from_utf8_lossy(&bytes[id_start..id_end]).into_owned();
            start = i;
            i = id_end;
        } else {
            i += 1;
        }
    }
    out.entry(current)
        .or_default()
        .extend_from_slice(&bytes[start..]);
    out
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// What a step must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Return its rows (masked).
    Rows,
    /// Return its rows, or be refused by the gateway (42501).
    RowsOrRefused,
    /// Be refused by the gateway (42501), as the documentation says.
    Refused,
    /// Fail with this SQLSTATE (or be refused by the gateway): an error channel.
    Fails(&'static str),
    /// Anything: a follow-up whose outcome depends on whether an earlier step was refused.
    Anything,
}

#[derive(Clone, Debug)]
struct Step {
    sql: String,
    expect: Expect,
}

fn rows(sql: &str) -> Step {
    Step {
        sql: sql.to_owned(),
        expect: Expect::Rows,
    }
}

fn any(sql: &str) -> Step {
    Step {
        sql: sql.to_owned(),
        expect: Expect::RowsOrRefused,
    }
}

fn refused(sql: &str) -> Step {
    Step {
        sql: sql.to_owned(),
        expect: Expect::Refused,
    }
}

fn fails(code: &'static str, sql: &str) -> Step {
    Step {
        sql: sql.to_owned(),
        expect: Expect::Fails(code),
    }
}

fn anything(sql: &str) -> Step {
    Step {
        sql: sql.to_owned(),
        expect: Expect::Anything,
    }
}

#[derive(Clone, Debug)]
struct Case {
    id: &'static str,
    why: &'static str,
    steps: Vec<Step>,
    /// Run the (single) statement as a portal in pieces of this many rows.
    portal_rows: Option<i32>,
    /// Also run by psycopg with binary results.
    binary: bool,
    /// Further forms that must not appear (the value re-encoded by the case).
    extra: Vec<String>,
    /// The first row as the binary clients decode it: (tokio-postgres, asyncpg) per column.
    typed: Vec<(&'static str, &'static str)>,
    /// The bytes must hold a notification (the case is about its payload).
    notification: bool,
    /// Run the (single) statement this many times as one prepared statement (PgJDBC: past its
    /// prepareThreshold, where it switches to a named statement and binary results).
    repeat: u32,
    /// Clients that cannot run the case at all (PgJDBC closes the connection when DateStyle
    /// is not ISO).
    not_for: Vec<&'static str>,
}

fn case(id: &'static str, why: &'static str, steps: Vec<Step>) -> Case {
    Case {
        id,
        why,
        steps,
        portal_rows: None,
        binary: false,
        extra: Vec::new(),
        typed: Vec::new(),
        notification: false,
        not_for: Vec::new(),
        repeat: 0,
    }
}

impl Case {
    fn binary(mut self) -> Case {
        self.binary = true;
        self
    }

    fn portal(mut self, rows: i32) -> Case {
        self.portal_rows = Some(rows);
        self
    }

    fn extra(mut self, forms: &[&str]) -> Case {
        self.extra.extend(forms.iter().map(|s| (*s).to_owned()));
        self
    }

    fn typed(mut self, columns: &[(&'static str, &'static str)]) -> Case {
        self.typed = columns.to_vec();
        self
    }

    fn notification(mut self) -> Case {
        self.notification = true;
        self
    }

    fn repeat(mut self, times: u32) -> Case {
        self.repeat = times;
        self
    }

    fn not_for(mut self, clients: &[&'static str]) -> Case {
        self.not_for.extend(clients);
        self
    }
}

/// The cases an analyst (masked by rules) runs. `db` is the database's name, for the cases that
/// point a foreign server back at it.
fn analyst_cases(db: &str) -> Vec<Case> {
    let hex_ssn: String = SSN.bytes().map(|b| format!("{b:02x}")).collect();
    let reversed_ssn: String = SSN.chars().rev().collect();
    let reversed_card: String = CARD.chars().rev().collect();
    let reversed_email: String = EMAIL.chars().rev().collect();
    let b64_email = base64_encode(EMAIL.as_bytes());
    let salary_hex = format!("{SALARY:x}");
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let hex_ssn = leak(hex_ssn);
    let reversed_ssn = leak(reversed_ssn);
    let reversed_card = leak(reversed_card);
    let reversed_email = leak(reversed_email);
    let b64_email = leak(b64_email);
    let salary_hex = leak(salary_hex);
    vec![
        // --- plain columns, aliases, quoting, qualification -------------------------------
        case("p01", "every column, plain, typed", vec![rows(
            "SELECT id, name, email, ssn, card, salary, born, api_key, note, profile FROM customers ORDER BY id",
        )])
        .binary()
        .typed(&[("int4:1", "int:1"), ("text:Zelda", "str:Zelda")]),
        case("p02", "aliases that name other columns", vec![rows(
            "SELECT ssn AS name, email AS id, card AS \"Card\", salary AS born FROM customers",
        )]),
        case("p03", "quoted identifiers and a quoted table", vec![rows(
            "SELECT \"ssn\", \"email\", \"customers\".\"card\" FROM \"customers\"",
        )]),
        case("p04", "schema-qualified with an alias", vec![rows(
            "SELECT c.ssn, c.\"card\", c.salary FROM public.customers AS c",
        )]),
        case("p05", "TABLE", vec![rows("TABLE customers")]).binary(),
        case("p06", "SELECT *", vec![rows("SELECT * FROM customers")]).binary(),
        case("p07", "qualified star", vec![rows("SELECT customers.* FROM public.customers")]),
        case("p08", "a Unicode-escaped identifier", vec![rows(
            "SELECT U&\"\\0073sn\", U&\"\\0065mail\" FROM customers",
        )]),
        case("p09", "a column alias list renaming every column", vec![any(
            "SELECT x.c, x.d, lower(x.c) FROM customers AS x(a, b, c, d)",
        )]),
        case("p10", "ONLY, FOR UPDATE", vec![rows(
            "SELECT ssn, email FROM ONLY customers WHERE id = 1 FOR UPDATE",
        )]),
        case("p11", "DISTINCT ON and TABLESAMPLE", vec![rows(
            "SELECT DISTINCT ON (id) ssn, card FROM customers TABLESAMPLE SYSTEM (100) ORDER BY id",
        )]),
        case("p12", "plain salary and birth date decode as their types", vec![rows(
            "SELECT salary, born FROM customers WHERE id = 1",
        )])
        .binary()
        .typed(&[("int4:0", "int:0"), ("date:1970-01-01", "date:1970-01-01")]),
        case("p13", "a column alias list over TABLE in a derived table", vec![any(
            "SELECT lower(x), y || '', x FROM (TABLE customers) AS t(a, b, x, y)",
        )]),
        case("m01", "several statements in one simple Query", vec![rows(
            "SELECT 'x' AS a; SELECT ssn FROM customers WHERE false; SELECT lower(email), ssn || '' FROM customers; SELECT card FROM customers",
        )])
        .not_for(&["psycopg", "asyncpg", "tokio-extended"]),
        // --- joins ---------------------------------------------------------------------------
        case("j01", "JOIN USING", vec![rows(
            "SELECT a.ssn, b.email FROM customers a JOIN customers b USING (id)",
        )]),
        case("j02", "NATURAL JOIN on itself", vec![rows(
            "SELECT * FROM customers a NATURAL JOIN customers b",
        )]),
        case("j03", "self-join on an expression", vec![rows(
            "SELECT a.name, b.ssn, a.card || b.card FROM customers a JOIN customers b ON a.id = b.id + 0",
        )]),
        case("j04", "* over a USING join", vec![rows(
            "SELECT * FROM customers a JOIN customers b USING (id)",
        )]),
        case("j05", "LATERAL subquery of masked columns", vec![rows(
            "SELECT s.* FROM customers c CROSS JOIN LATERAL (SELECT c.ssn, lower(c.email) AS e) s",
        )]),
        case("j06", "join with the same-named table of another schema", vec![rows(
            "SELECT a.email, b.email, a.ssn || b.ssn FROM public.customers a LEFT JOIN shadow.customers b ON a.id = b.id",
        )]),
        case("j07", "a set-returning function in FROM over a masked column", vec![any(
            "SELECT x, upper(x) FROM customers c, regexp_split_to_table(c.ssn, '-') AS x",
        )]),
        case("j08", "unnest WITH ORDINALITY and a column alias list", vec![any(
            "SELECT u.v, u.n FROM customers c, unnest(ARRAY[c.email, c.card]) WITH ORDINALITY AS u(v, n)",
        )]),
        case("j09", "a function with a column definition list", vec![any(
            "SELECT r.a, r.b FROM customers c, json_to_record(json_build_object('a', c.ssn, 'b', c.salary)) AS r(a text, b int)",
        )]),
        case("j10", "XMLTABLE over a masked column", vec![any(
            "SELECT x.v FROM customers c, XMLTABLE('/r' PASSING xmlelement(name r, c.email) COLUMNS v text PATH '.') AS x",
        )]),
        case("j11", "ROWS FROM two functions", vec![any(
            "SELECT t.* FROM customers c, LATERAL ROWS FROM (unnest(ARRAY[c.email]), unnest(ARRAY[c.ssn])) AS t(e, s)",
        )]),
        case("j12", "a subquery per row rebuilding the SSN from its pieces", vec![rows(
            "SELECT (SELECT string_agg(x, '') FROM regexp_split_to_table(c.ssn, '') x) FROM customers c",
        )]),
        // --- expressions ---------------------------------------------------------------------
        case("e01", "concatenation", vec![rows(
            "SELECT ssn || '', 'x' || email, concat(card, ''), concat_ws('-', ssn, card) FROM customers",
        )]),
        case("e02", "substrings", vec![rows(
            "SELECT substr(ssn, 1, 3), substring(ssn from 5 for 2), left(ssn, 7), right(email, 11) FROM customers",
        )]),
        case("e03", "translate to letters", vec![rows(
            "SELECT translate(ssn, '0123456789', 'abcdefghij') FROM customers",
        )])
        .extra(&["ahi-af-bbca"]),
        case("e04", "regular expressions", vec![rows(
            "SELECT regexp_replace(ssn, '-', '', 'g'), regexp_match(email, '(.*)@(.*)') FROM customers",
        )]),
        case("e05", "case changes", vec![rows(
            "SELECT lower(email), upper(email), initcap(email) FROM customers",
        )]),
        case("e06", "reverse", vec![rows(
            "SELECT reverse(ssn), reverse(card), reverse(email) FROM customers",
        )])
        .extra(&[reversed_ssn, reversed_card, reversed_email]),
        case("e07", "digests", vec![rows(
            "SELECT md5(ssn), sha256(convert_to(ssn, 'UTF8')) FROM customers",
        )]),
        case("e08", "encode and convert_to", vec![rows(
            "SELECT encode(convert_to(ssn, 'UTF8'), 'hex'), encode(convert_to(email, 'UTF8'), 'base64'), encode(convert_to(card, 'UTF8'), 'escape') FROM customers",
        )])
        .binary()
        .extra(&[hex_ssn, b64_email]),
        case("e09", "salary through to_hex and casts", vec![rows(
            "SELECT to_hex(salary), salary::text, salary + 0, -salary, salary::bigint, salary::numeric, salary::float8 FROM customers",
        )])
        .binary()
        .extra(&[salary_hex]),
        case("e10", "casts to other character types and bytea", vec![rows(
            "SELECT ssn::varchar(20), ssn::char(11), card::bpchar, email::name, ssn::bytea, convert_to(email, 'LATIN1') FROM customers",
        )])
        .binary(),
        case("e11", "COLLATE", vec![rows(
            "SELECT ssn COLLATE \"C\", email COLLATE \"POSIX\", card::text COLLATE \"C\" FROM customers",
        )]),
        case("e12", "lengths and ascii", vec![rows(
            "SELECT length(ssn), ascii(ssn), octet_length(email), bit_length(card), char_length(api_key) FROM customers",
        )]),
        case("e13", "CASE, COALESCE, NULLIF, GREATEST, LEAST", vec![rows(
            "SELECT CASE WHEN id = 1 THEN ssn ELSE email END, COALESCE(NULL, card), NULLIF(ssn, 'x'), GREATEST(ssn, email), LEAST(card, 'zzz') FROM customers",
        )]),
        case("e14", "format and quoting functions", vec![rows(
            "SELECT format('%s|%s|%s', ssn, email, card), format('%I', ssn), quote_literal(email), quote_ident(card) FROM customers",
        )]),
        case("e15", "split into arrays", vec![rows(
            "SELECT split_part(email, '@', 1), string_to_array(ssn, '-'), regexp_split_to_array(card, ' ') FROM customers",
        )])
        .binary(),
        case("e16", "the birth date through date functions", vec![rows(
            "SELECT born, born + 0, born::text, to_char(born, 'YYYYMMDD'), extract(year from born), born::timestamp FROM customers",
        )])
        .binary(),
        case("e17", "the API key", vec![rows(
            "SELECT api_key, md5(api_key), substr(api_key, 9), upper(api_key) FROM customers",
        )]),
        case("e18", "overlay, position, replace", vec![rows(
            "SELECT overlay(ssn placing '' from 1 for 0), position('-' in ssn), strpos(email, '@'), replace(card, ' ', '') FROM customers",
        )]),
        case("e19", "cast chains", vec![rows(
            "SELECT ssn::text::varchar, CAST(email AS varchar(100)), (card)::text, ssn::tax_code FROM customers",
        )])
        .binary(),
        case("e20", "arithmetic and money", vec![rows(
            "SELECT (salary * 2) / 2, salary % 1000000000, salary::money, salary::bit(32), int4send(salary), date_send(born) FROM customers",
        )])
        .binary(),
        case("e21", "a row constructor as text", vec![any(
            "SELECT row(ssn, email)::text FROM customers",
        )]),
        case("e22", "comparisons and LIKE", vec![rows(
            "SELECT ssn IS NOT DISTINCT FROM ssn, ssn LIKE '0%', email ILIKE 'z%' FROM customers",
        )]),
        case("e23", "characters rebuilt with chr and ascii", vec![rows(
            "SELECT chr(ascii(substr(ssn, 1, 1))) || chr(ascii(substr(ssn, 2, 1))) || substr(ssn, 3) FROM customers",
        )]),
        case("e24", "padding and repeat", vec![rows(
            "SELECT lpad(ssn, 20, '*'), rpad(email, 40), repeat(card, 2) FROM customers",
        )]),
        case("e25", "unnest with ordinality, rebuilt", vec![rows(
            "SELECT string_agg(ch, '' ORDER BY i) FROM customers, LATERAL unnest(string_to_array(ssn, NULL)) WITH ORDINALITY AS u(ch, i) GROUP BY id",
        )]),
        case("e26", "digits re-read as hex bytea", vec![rows(
            "SELECT decode(replace(ssn, '-', '') || '0', 'hex') FROM customers",
        )])
        .binary(),
        case("e27", "the note and the profile", vec![rows(
            "SELECT note, lower(note), profile, profile->'contact', profile->>'key', jsonb_pretty(profile), profile::text FROM customers",
        )])
        .binary(),
        case("e28", "bytea printed as escaped text", vec![
            rows("SET bytea_output = 'escape'"),
            rows("SELECT convert_to(ssn, 'UTF8'), ssn::bytea, decode(email, 'escape') FROM customers"),
            rows("RESET bytea_output"),
        ]),
        case("e29", "the birth date in other date styles", vec![
            rows("SET DateStyle = 'German, DMY'"),
            rows("SELECT born, born::text, born + 1 FROM customers"),
            rows("SET DateStyle = 'SQL, MDY'"),
            rows("SELECT born, born::timestamptz FROM customers"),
            rows("RESET DateStyle"),
        ])
        .extra(&["14.06.1987", "06/14/1987"])
        .not_for(&["jdbc"]),
        // --- arrays ---------------------------------------------------------------------------
        case("a01", "ARRAY constructor", vec![rows(
            "SELECT ARRAY[ssn, email, card], ARRAY[salary] FROM customers",
        )])
        .binary(),
        case("a02", "array_agg", vec![rows(
            "SELECT array_agg(ssn ORDER BY id), array_agg(salary), array_agg(born) FROM customers",
        )])
        .binary(),
        case("a03", "ARRAY(subquery)", vec![rows(
            "SELECT ARRAY(SELECT email FROM customers ORDER BY id)",
        )])
        .binary(),
        case("a04", "subscripts", vec![rows(
            "SELECT (ARRAY[ssn, name])[1], (string_to_array(email, '@'))[2], (array_agg(card))[1] FROM customers GROUP BY ssn, name, email",
        )]),
        case("a05", "unnest in the select list", vec![rows(
            "SELECT unnest(ARRAY[ssn, email, card]) FROM customers",
        )]),
        // --- JSON -----------------------------------------------------------------------------
        case("js01", "json_build_object", vec![rows(
            "SELECT json_build_object('s', ssn, 'e', email), jsonb_build_object('c', card, 'p', salary) FROM customers",
        )])
        .binary(),
        case("js02", "row_to_json of the table", vec![refused("SELECT row_to_json(c) FROM customers c")]),
        case("js03", "to_jsonb of the table", vec![refused("SELECT to_jsonb(c) FROM customers c")]),
        case("js04", "to_json of columns", vec![rows(
            "SELECT to_json(ssn), to_jsonb(email), to_jsonb(salary), to_json(born) FROM customers",
        )])
        .binary(),
        case("js05", "json_agg", vec![rows(
            "SELECT json_agg(email), jsonb_agg(ssn) FROM customers",
        )]),
        case("js06", "the value as an object key", vec![rows(
            "SELECT jsonb_object_agg(ssn, id), json_object_agg(email, card) FROM customers",
        )])
        .binary(),
        case("js07", "row_to_json of a subquery", vec![any(
            "SELECT row_to_json(s) FROM (SELECT ssn, email FROM customers) s",
        )]),
        case("js08", "JSON extraction back to text", vec![rows(
            "SELECT json_build_array(ssn, email)->>0, (jsonb_build_object('k', card))->>'k' FROM customers",
        )]),
        case("js09", "jsonb_path_query", vec![rows(
            "SELECT jsonb_path_query(jsonb_build_object('s', ssn), '$.s') FROM customers",
        )]),
        case("js10", "jsonb_each_text over built objects in FROM", vec![any(
            "SELECT e.key, e.value FROM customers c, jsonb_each_text(jsonb_build_object('s', c.ssn, 'e', c.email)) e",
        )]),
        // --- XML ------------------------------------------------------------------------------
        case("x01", "xmlelement and xmlforest", vec![rows(
            "SELECT xmlelement(name c, ssn), xmlforest(email, card AS cc), xmlelement(name c, xmlattributes(email AS mail)) FROM customers",
        )])
        .binary(),
        case("x02", "xmlagg", vec![rows(
            "SELECT xmlagg(xmlelement(name s, ssn)) FROM customers",
        )]),
        case("x03", "query_to_xml runs SQL text", vec![refused(
            "SELECT query_to_xml('SELECT ssn FROM customers', true, false, '')",
        )]),
        // --- aggregates and windows ----------------------------------------------------------
        case("w01", "string_agg, min, max", vec![rows(
            "SELECT string_agg(ssn, ','), min(email), max(card), min(salary), max(born) FROM customers",
        )])
        .binary(),
        case("w02", "window functions", vec![rows(
            "SELECT lag(ssn) OVER w, lead(email) OVER w, first_value(card) OVER w, last_value(salary) OVER w, nth_value(born, 1) OVER w FROM customers WINDOW w AS (ORDER BY id)",
        )])
        .binary(),
        case("w03", "ordered-set aggregates", vec![rows(
            "SELECT mode() WITHIN GROUP (ORDER BY ssn), percentile_disc(0.5) WITHIN GROUP (ORDER BY salary) FROM customers",
        )]),
        case("w04", "FILTER and ROLLUP", vec![rows(
            "SELECT ssn, min(email) FILTER (WHERE id = 1), count(*) FROM customers GROUP BY ROLLUP (ssn)",
        )]),
        case("w05", "ORDER BY ... LIMIT 1 of the salary", vec![rows(
            "SELECT salary FROM customers ORDER BY salary DESC LIMIT 1",
        )])
        .binary(),
        // --- subqueries -----------------------------------------------------------------------
        case("s01", "scalar subqueries", vec![rows(
            "SELECT (SELECT ssn FROM customers WHERE id = 1), (SELECT max(email) FROM customers)",
        )]),
        case("s02", "correlated subquery", vec![rows(
            "SELECT c.name, (SELECT d.ssn FROM customers d WHERE d.id = c.id) FROM customers c",
        )]),
        case("s03", "derived table", vec![rows(
            "SELECT x FROM (SELECT lower(email) AS x FROM customers) s",
        )]),
        case("s04", "LATERAL derived value", vec![rows(
            "SELECT l.v FROM customers c, LATERAL (SELECT c.card || '' AS v) l",
        )]),
        case("s05", "EXISTS and IN", vec![rows(
            "SELECT id, ssn IN (SELECT ssn FROM customers), EXISTS (SELECT 1 FROM customers d WHERE d.ssn = c.ssn) FROM customers c",
        )]),
        case("s06", "plain columns through a derived table", vec![rows(
            "SELECT * FROM (SELECT ssn, email FROM customers ORDER BY 1 LIMIT 5) q",
        )]),
        // --- CTEs -----------------------------------------------------------------------------
        case("t01", "CTE", vec![rows(
            "WITH t AS (SELECT email AS e, ssn AS s FROM customers) SELECT e, s, e || s FROM t",
        )]),
        case("t02", "materialized CTE", vec![rows(
            "WITH t AS MATERIALIZED (SELECT card, born FROM customers) SELECT * FROM t",
        )]),
        case("t03", "recursive CTE rebuilding the SSN character by character", vec![rows(
            "WITH RECURSIVE r(i, acc) AS (SELECT 1, ''::text UNION ALL SELECT i + 1, acc || substr((SELECT ssn FROM customers WHERE id = 1), i, 1) FROM r WHERE i <= 11) SELECT acc FROM r ORDER BY i DESC LIMIT 1",
        )]),
        case("t04", "recursive CTE joined to the table", vec![rows(
            "WITH RECURSIVE r(n, acc) AS (SELECT 0, ''::text UNION ALL SELECT r.n + 1, r.acc || substr(c.email, r.n + 1, 1) FROM r JOIN customers c ON c.id = 1 WHERE r.n < length(c.email)) SELECT max(acc) FROM r",
        )]),
        case("t05", "VALUES in a CTE", vec![rows(
            "WITH x(a) AS (VALUES ((SELECT salary FROM customers WHERE id = 1))) SELECT a, a + 1 FROM x",
        )])
        .binary(),
        case("t06", "the path array of a recursive CTE's CYCLE clause", vec![any(
            "WITH RECURSIVE r(s) AS (SELECT ssn FROM customers UNION ALL SELECT s FROM r) CYCLE s SET is_cycle USING path SELECT path::text, s FROM r",
        )]),
        case("t07", "the ordering column of a recursive CTE's SEARCH clause", vec![any(
            "WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM customers UNION ALL SELECT n + 1, e FROM r WHERE n < 2) SEARCH DEPTH FIRST BY e SET ord SELECT ord::text FROM r",
        )]),
        // --- set operations and VALUES -------------------------------------------------------
        case("u01", "UNION", vec![rows("SELECT ssn FROM customers UNION SELECT email FROM customers")]),
        case("u02", "UNION ALL behind an unmasked column", vec![rows(
            "SELECT name FROM customers UNION ALL SELECT card FROM customers",
        )]),
        case("u03", "INTERSECT and EXCEPT", vec![rows(
            "SELECT ssn FROM customers INTERSECT SELECT ssn FROM customers EXCEPT SELECT 'nobody'",
        )]),
        case("u04", "UNION of *", vec![rows(
            "SELECT * FROM customers UNION ALL SELECT * FROM customers",
        )]),
        case("u05", "VALUES", vec![rows(
            "VALUES ((SELECT card FROM customers WHERE id = 1)), ('x')",
        )]),
        case("u06", "UNION of the salary with a constant", vec![rows(
            "SELECT salary FROM customers UNION SELECT 1",
        )])
        .binary(),
        // --- views and functions -------------------------------------------------------------
        case("v01", "a view", vec![rows("SELECT * FROM customer_contacts")]).binary(),
        case("v02", "a view over a view", vec![rows("SELECT shout, national_id FROM contact_digest")]),
        case("v03", "expressions over a view", vec![rows(
            "SELECT lower(national_id), pay + 1, email || '' FROM customer_contacts",
        )]),
        case("v04", "a materialized view and its refresh", vec![
            rows("SELECT mail, tax, upper(mail) FROM contact_mv"),
            rows("REFRESH MATERIALIZED VIEW contact_mv"),
            rows("TABLE contact_mv"),
        ]),
        case("f01", "a SQL function returning the SSN", vec![rows("SELECT ssn_of(1), ssn_of(3)")]),
        case("f02", "the SQL function in FROM", vec![rows("SELECT * FROM all_ssns()")]),
        case("f03", "the SQL function's column in FROM", vec![rows(
            "SELECT s.ssn, lower(s.ssn) FROM all_ssns() s",
        )]),
        case("f04", "a PL/pgSQL function that RAISEs NOTICE with the SSN", vec![rows(
            "SELECT shout_ssn(1)",
        )]),
        case("f05", "a PL/pgSQL function that RAISEs EXCEPTION with the SSN", vec![fails(
            "P0001",
            "SELECT fail_with_ssn(1)",
        )]),
        case("f06", "ROWS FROM the function", vec![rows(
            "SELECT * FROM ROWS FROM (all_ssns()) AS t(i, s)",
        )]),
        // --- whole rows ----------------------------------------------------------------------
        case("r01", "the row itself", vec![refused("SELECT c FROM customers c")]),
        case("r02", "the row as text", vec![refused("SELECT c::text FROM customers c")]),
        case("r03", "fields of the row", vec![any("SELECT (c).ssn, (c).email FROM customers c")]),
        case("r04", "ROW(c.*)", vec![any("SELECT ROW(c.*) FROM customers c")]),
        case("r05", "the row aggregated", vec![refused("SELECT jsonb_agg(c) FROM customers c")]),
        case("r06", "c.* as text", vec![any("SELECT c.*::text FROM customers c")]),
        // --- COPY and DO ----------------------------------------------------------------------
        case("k01", "COPY the table", vec![refused("COPY customers TO STDOUT")]),
        case("k02", "COPY a query", vec![refused("COPY (SELECT ssn FROM customers) TO STDOUT")]),
        case("k03", "COPY some columns as CSV", vec![refused(
            "COPY customers (name, ssn) TO STDOUT WITH (FORMAT csv)",
        )]),
        case("k04", "DO", vec![refused("DO $$ BEGIN PERFORM ssn FROM customers; END $$")]),
        // --- writes of masked values ---------------------------------------------------------
        case("d01", "CREATE TABLE AS", vec![refused("CREATE TABLE stolen AS SELECT ssn FROM customers")]),
        case("d02", "INSERT ... SELECT", vec![refused("INSERT INTO scratch SELECT email FROM customers")]),
        case("d03", "UPDATE ... SET from a subquery", vec![refused(
            "UPDATE scratch SET v = (SELECT card FROM customers LIMIT 1)",
        )]),
        case("d04", "SELECT INTO", vec![refused("SELECT ssn INTO stolen2 FROM customers")]),
        case("d05", "CREATE MATERIALIZED VIEW", vec![refused(
            "CREATE MATERIALIZED VIEW stolen_mv AS SELECT email FROM customers",
        )]),
        case("d06", "INSERT of a function's result", vec![refused(
            "INSERT INTO scratch (v) SELECT ssn_of(1)",
        )]),
        case("d07", "set_config", vec![refused(
            "SELECT set_config('bypass.x', ssn, false) FROM customers",
        )]),
        case("d08", "a large object", vec![
            refused("SELECT lo_from_bytea(0, convert_to(ssn, 'UTF8')) FROM customers"),
            anything("SELECT lo_get(oid) FROM pg_largeobject_metadata"),
        ]),
        case("d09", "a sequence keeps the salary", vec![
            any("SELECT setval('bypass_seq', salary) FROM customers WHERE id = 1"),
            any("SELECT last_value FROM bypass_seq"),
        ]),
        case("d10", "an advisory lock keyed by the salary", vec![
            any("SELECT pg_advisory_lock(salary) FROM customers WHERE id = 1"),
            any("SELECT objid, classid FROM pg_locks WHERE locktype = 'advisory'"),
            anything("SELECT pg_advisory_unlock_all()"),
        ]),
        case("d11", "INSERT ... ON CONFLICT DO UPDATE with a masked value", vec![refused(
            "INSERT INTO customers (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = customers.ssn",
        )]),
        case("d12", "MERGE inserting a masked value", vec![refused(
            "MERGE INTO scratch s USING customers c ON false WHEN NOT MATCHED THEN INSERT VALUES (c.ssn)",
        )]),
        case("d13", "a prepared INSERT ... SELECT", vec![
            refused("PREPARE steal AS INSERT INTO scratch SELECT card FROM customers"),
            anything("EXECUTE steal"),
            anything("DEALLOCATE ALL"),
        ]),
        // --- RETURNING -----------------------------------------------------------------------
        case("n01", "UPDATE ... RETURNING", vec![rows(
            "UPDATE customers SET name = name WHERE id = 1 RETURNING ssn, email, lower(card), salary + 0",
        )]),
        case("n02", "a data-modifying CTE returning the SSN", vec![rows(
            "WITH u AS (UPDATE customers SET name = name RETURNING *) SELECT ssn, card FROM u",
        )]),
        case("n03", "INSERT ... RETURNING a subquery", vec![
            any("INSERT INTO scratch VALUES ('x') RETURNING (SELECT ssn FROM customers WHERE id = 1)"),
            anything("DELETE FROM scratch WHERE v = 'x'"),
        ]),
        case("n04", "INSERT ... ON CONFLICT ... RETURNING", vec![
            rows("INSERT INTO customers (id, name) VALUES (50, 'x') ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING ssn, email, id"),
            anything("DELETE FROM customers WHERE id = 50"),
        ]),
        case("n05", "DELETE ... RETURNING, rolled back", vec![
            rows("BEGIN"),
            rows("WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING *) SELECT email, ssn, salary FROM d"),
            rows("DELETE FROM customers WHERE id = 3 RETURNING lower(email), card, born"),
            rows("ROLLBACK"),
        ]),
        // --- prepared statements and cursors -------------------------------------------------
        case("q01", "PREPARE and EXECUTE", vec![
            rows("PREPARE q1 AS SELECT lower(email), ssn, salary FROM customers"),
            rows("EXECUTE q1"),
            rows("DEALLOCATE q1"),
        ]),
        case("q02", "PREPARE of the function with a parameter", vec![
            rows("PREPARE q2(int) AS SELECT ssn_of($1), $1"),
            rows("EXECUTE q2(1)"),
            rows("DEALLOCATE q2"),
        ]),
        case("q03", "a cursor fetched in pieces", vec![
            rows("BEGIN"),
            rows("DECLARE c1 CURSOR FOR SELECT ssn, lower(email), card FROM customers ORDER BY id"),
            rows("FETCH 1 FROM c1"),
            rows("FETCH 1 FROM c1"),
            rows("FETCH ALL FROM c1"),
            rows("CLOSE c1"),
            rows("COMMIT"),
        ]),
        case("q04", "a WITH HOLD cursor", vec![
            rows("DECLARE c2 SCROLL CURSOR WITH HOLD FOR SELECT upper(email), salary * 1, born FROM customers"),
            rows("FETCH NEXT FROM c2"),
            rows("FETCH ABSOLUTE 3 FROM c2"),
            rows("FETCH BACKWARD ALL FROM c2"),
            rows("CLOSE c2"),
        ]),
        case("q05", "a scroll cursor over *", vec![
            rows("BEGIN"),
            rows("DECLARE c3 SCROLL CURSOR FOR SELECT * FROM customers"),
            rows("FETCH LAST FROM c3"),
            rows("FETCH PRIOR FROM c3"),
            rows("MOVE ABSOLUTE 0 IN c3"),
            rows("FETCH FORWARD 5 FROM c3"),
            rows("COMMIT"),
        ]),
        case("q08", "one prepared statement run past PgJDBC's prepareThreshold (binary results)", vec![rows(
            "SELECT id, salary, born, ssn, lower(email), salary + 1, born + 1 FROM customers ORDER BY id",
        )])
        .repeat(7),
        case("q06", "a portal run one row at a time", vec![rows(
            "SELECT ssn, lower(email), card, salary FROM customers ORDER BY id",
        )])
        .portal(1),
        case("q07", "a portal of * run two rows at a time", vec![rows(
            "SELECT * FROM customers ORDER BY id",
        )])
        .portal(2),
        // --- temporary views and search paths ------------------------------------------------
        case("tv1", "a temporary view", vec![
            rows("CREATE TEMP VIEW tv AS SELECT ssn AS a, lower(email) AS b, salary AS c FROM customers"),
            rows("SELECT * FROM tv"),
            rows("SELECT a || b, c + 1 FROM tv"),
            rows("DROP VIEW tv"),
        ]),
        case("tv2", "a temporary view that shadows the table's name", vec![
            rows("CREATE TEMP VIEW customers AS SELECT id, ssn AS name, email AS note FROM public.customers"),
            rows("SELECT name, note, lower(name) FROM customers"),
            rows("DROP VIEW pg_temp.customers"),
        ]),
        case("sp1", "search_path to the second schema and back", vec![
            rows("SET search_path = shadow, public"),
            rows("SELECT email, lower(email), ssn FROM customers"),
            rows("SELECT lower(email), upper(ssn) FROM public.customers"),
            rows("SET search_path = public"),
            rows("SELECT lower(email) FROM customers"),
            rows("RESET search_path"),
        ]),
        case("sp2", "search_path without public", vec![
            rows("SET search_path = shadow"),
            rows("SELECT * FROM public.customers"),
            rows("SELECT lower(c.email), c.card || '' FROM public.customers c JOIN customers s USING (id)"),
            rows("RESET search_path"),
        ]),
        // --- error channels ------------------------------------------------------------------
        case("er01", "the SSN cast to int", vec![fails("22P02", "SELECT ssn::int FROM customers WHERE id = 1")]),
        case("er02", "the e-mail cast to date", vec![fails("22007", "SELECT email::date FROM customers WHERE id = 1")]),
        case("er03", "the e-mail cast to uuid", vec![fails("22P02", "SELECT email::uuid FROM customers WHERE id = 1")]),
        case("er04", "the SSN cast to json", vec![fails("22P02", "SELECT ssn::json FROM customers WHERE id = 1")]),
        case("er05", "the e-mail cast to regclass", vec![fails("0A000", "SELECT email::regclass FROM customers WHERE id = 1")]),
        case("er06", "the SSN cast to regclass with dots", vec![fails(
            "42601",
            "SELECT (ssn || '.a.b.c')::regclass FROM customers WHERE id = 1",
        )]),
        case("er07", "the SSN's digits cast to regclass", vec![fails(
            "0A000",
            "SELECT translate(ssn, '-', '.')::regclass FROM customers WHERE id = 1",
        )])
        .extra(&["078.05.1120"]),
        case("er08", "the SSN as letters cast to regclass", vec![fails(
            "0A000",
            "SELECT translate(ssn, '0123456789-', 'abcdefghij.')::regclass FROM customers WHERE id = 1",
        )])
        .extra(&["ahi.af.bbca"]),
        case("er09", "to_date of the SSN", vec![fails("22008", "SELECT to_date(ssn, 'YYYY-MM-DD') FROM customers WHERE id = 1")]),
        case("er10", "make_date of the salary", vec![fails("22008", "SELECT make_date(salary, 1, 1) FROM customers WHERE id = 1")]),
        case("er11", "chr of the salary", vec![fails("54000", "SELECT chr(salary) FROM customers WHERE id = 1")]),
        case("er12", "setseed of the salary", vec![fails("22023", "SELECT setseed(salary) FROM customers WHERE id = 1")]),
        case("er13", "jsonpath of the SSN", vec![fails("42601", "SELECT jsonb_path_query('{}', ssn::jsonpath) FROM customers WHERE id = 1")]),
        case("er14", "jsonpath of the e-mail", vec![fails(
            "42601",
            "SELECT jsonb_path_query('{}', ('$.' || email)::jsonpath) FROM customers WHERE id = 1",
        )]),
        case("er15", "unique violation DETAIL", vec![fails("23505", "UPDATE customers SET name = 'Zelda' WHERE id = 3")]),
        case("er16", "check constraint failing row", vec![fails("23514", "UPDATE customers SET id = -id WHERE id = 1")]),
        case("er17", "not-null failing row", vec![fails("23502", "UPDATE customers SET name = NULL WHERE id = 1")]),
        case("er18", "a range literal", vec![fails("22P02", "SELECT ssn::int8range FROM customers WHERE id = 1")]),
        case("er19", "a setting named by the SSN", vec![fails("42704", "SELECT current_setting(ssn) FROM customers WHERE id = 1")]),
        case("er20", "a role named by the e-mail", vec![fails("42704", "SELECT has_table_privilege(email, 'customers', 'select') FROM customers WHERE id = 1")]),
        case("er21", "a date unit named by the SSN", vec![fails("22023", "SELECT date_trunc(ssn, now()) FROM customers WHERE id = 1")]),
        case("er22", "a function whose body fails on the salary", vec![fails("22008", "SELECT date_of_salary(1)")]),
        case("er23", "XML parse of the e-mail", vec![fails("2200M", "SELECT xmlparse(document email) FROM customers WHERE id = 1")]),
        case("er24", "pg_size_bytes of the card", vec![fails("22023", "SELECT pg_size_bytes(card) FROM customers WHERE id = 1")]),
        // --- side channels -------------------------------------------------------------------
        case("sc1", "a notification from an unmasked session", vec![
            rows("LISTEN bypass_chan"),
            rows("SELECT pg_sleep(1.2), 'notify-me'"),
            rows("SELECT 1"),
            rows("UNLISTEN *"),
        ])
        .notification(),
        case("sc2", "a notification sent by a function the masked session calls", vec![
            rows("LISTEN bypass_chan"),
            rows("SELECT notify_contacts()"),
            rows("SELECT 1"),
            rows("UNLISTEN *"),
        ])
        .notification(),
        case("sc3", "pg_notify of a masked column", vec![refused(
            "SELECT pg_notify('bypass_chan', email) FROM customers",
        )]),
        case("sc4", "planner statistics", vec![
            rows("ANALYZE customers"),
            any("SELECT attname, most_common_vals::text, histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'"),
        ]),
        case("sc8", "extended statistics over masked columns", vec![
            any("CREATE STATISTICS bypass_stats (mcv) ON ssn, email FROM customers"),
            rows("ANALYZE customers"),
            any("SELECT statistics_name, most_common_vals::text FROM pg_stats_ext"),
            any("SELECT m.values::text FROM pg_statistic_ext_data d, pg_mcv_list_items(d.stxdmcv) m"),
            anything("DROP STATISTICS IF EXISTS bypass_stats"),
        ]),
        case("sc5", "EXPLAIN VERBOSE ANALYZE", vec![rows(
            "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF) SELECT ssn_of(1), lower(email) FROM customers WHERE ssn IS NOT NULL",
        )]),
        case("sc6", "the SSN's digits rebuilt through a join predicate", vec![any(
            "SELECT string_agg(d::text, '' ORDER BY p) FROM generate_series(1, 11) p, generate_series(0, 9) d, customers c WHERE c.id = 1 AND substr(c.ssn, p, 1) = d::text",
        )]),
        case("sc7", "the salary rebuilt through a join predicate", vec![any(
            "SELECT string_agg(d::text, '' ORDER BY p) FROM generate_series(1, 8) p, generate_series(0, 9) d, customers c WHERE c.id = 1 AND substr(c.salary::text, p, 1) = d::text",
        )]),
        // --- code and schema changes ---------------------------------------------------------
        case("dd1", "a function that shadows a built-in", vec![
            any("CREATE FUNCTION public.upper(varchar) RETURNS text LANGUAGE sql AS $$ SELECT ssn FROM customers WHERE id = 1 $$"),
            anything("SELECT upper(name::varchar) FROM customers WHERE id = 2"),
            anything("DROP FUNCTION IF EXISTS public.upper(varchar)"),
        ]),
        case("dd2", "a trigger that copies the SSN", vec![
            any("CREATE FUNCTION steal() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO scratch VALUES (NEW.ssn); RETURN NEW; END $$"),
            anything("CREATE TRIGGER steal BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION steal()"),
            anything("UPDATE customers SET name = name WHERE id = 1"),
            anything("SELECT v FROM scratch"),
            anything("DROP TRIGGER IF EXISTS steal ON customers"),
            anything("DROP FUNCTION IF EXISTS steal()"),
            anything("DELETE FROM scratch"),
        ]),
        case("dd3", "renaming the masked column", vec![
            any("ALTER TABLE customers RENAME COLUMN ssn TO tax_id"),
            anything("SELECT tax_id FROM customers"),
            anything("ALTER TABLE customers RENAME COLUMN tax_id TO ssn"),
        ]),
        case("dd4", "renaming the masked table", vec![
            any("ALTER TABLE customers RENAME TO clients"),
            anything("SELECT ssn, email FROM clients"),
            anything("ALTER TABLE clients RENAME TO customers"),
        ]),
        case("dd5", "a parent table inheriting the masked rows", vec![
            rows("CREATE TABLE heir (id int, name text, email text, ssn text)"),
            any("ALTER TABLE customers INHERIT heir"),
            anything("SELECT ssn, email FROM heir"),
            anything("ALTER TABLE customers NO INHERIT heir"),
            anything("DROP TABLE heir"),
        ]),
        case("dd6", "a foreign table pointing back at the masked table", vec![
            any("CREATE EXTENSION IF NOT EXISTS postgres_fdw"),
            anything(&format!("CREATE SERVER loopback FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '5432', dbname '{db}')")),
            anything("CREATE USER MAPPING FOR CURRENT_USER SERVER loopback OPTIONS (user 'postgres')"),
            anything("CREATE FOREIGN TABLE mirror (ssn text, email text) SERVER loopback OPTIONS (schema_name 'public', table_name 'customers')"),
            anything("SELECT ssn, email FROM mirror"),
            anything("DROP SERVER IF EXISTS loopback CASCADE"),
        ]),
        case("dd7", "a column generated from the masked one", vec![
            any("ALTER TABLE customers ADD COLUMN tax text GENERATED ALWAYS AS (ssn || '') STORED"),
            anything("SELECT tax FROM customers"),
            anything("ALTER TABLE customers DROP COLUMN IF EXISTS tax"),
        ]),
        case("dd8", "ALTER COLUMN TYPE USING copies the masked column", vec![
            any("ALTER TABLE customers ALTER COLUMN region TYPE text USING ssn"),
            anything("SELECT region FROM customers"),
            anything("UPDATE customers SET region = 'north'"),
        ]),
        case("dd9", "renaming the schema the e-mail rule names", vec![
            any("ALTER SCHEMA public RENAME TO pub"),
            anything("SELECT email, lower(email) FROM pub.customers"),
            anything("ALTER SCHEMA pub RENAME TO public"),
        ]),
        case("dd10", "a partitioned parent that attaches the masked table", vec![
            rows("CREATE TABLE parted (LIKE customers) PARTITION BY RANGE (id)"),
            any("ALTER TABLE parted ATTACH PARTITION customers FOR VALUES FROM (1) TO (1000)"),
            anything("SELECT ssn, email FROM parted"),
            anything("ALTER TABLE parted DETACH PARTITION customers"),
            anything("DROP TABLE parted"),
        ]),
        case("dd11", "a rule that rewrites reads of a table into reads of the masked one", vec![
            rows("CREATE TABLE decoy (v text)"),
            any("CREATE RULE \"_RETURN\" AS ON SELECT TO decoy DO INSTEAD SELECT ssn AS v FROM customers"),
            anything("SELECT v FROM decoy"),
            anything("DROP TABLE IF EXISTS decoy"),
            anything("DROP VIEW IF EXISTS decoy"),
        ]),
    ]
}

/// Cases for the detector group (no column rules): every text value is scanned.
fn support_cases() -> Vec<Case> {
    vec![
        case("sd01", "the free-text note", vec![rows("SELECT note FROM customers")]).binary(),
        case("sd02", "the JSON profile", vec![rows("SELECT profile FROM customers")]).binary(),
        case("sd03", "JSON fields", vec![rows(
            "SELECT profile->'contact', profile->>'key', profile #>> '{contact,ssn}', profile->'cards' FROM customers",
        )])
        .binary(),
        case("sd04", "the profile as text and pretty", vec![rows(
            "SELECT profile::text, jsonb_pretty(profile), profile::json FROM customers",
        )])
        .binary(),
        case("sd05", "the columns themselves", vec![rows(
            "SELECT email, ssn, card, api_key, upper(email) FROM customers",
        )])
        .binary(),
        case("sd06", "SELECT *", vec![rows("SELECT * FROM customers")]).binary(),
        case("sd07", "the note in an array", vec![rows(
            "SELECT ARRAY[note], ARRAY[email, ssn], array_agg(card) OVER () FROM customers",
        )])
        .binary(),
        case("sd08", "the note as bytes", vec![rows(
            "SELECT convert_to(note, 'UTF8'), note::bytea FROM customers",
        )])
        .binary(),
        case("sd09", "the note in JSON built on the fly", vec![rows(
            "SELECT to_jsonb(note), json_build_object('n', note), json_agg(note) OVER () FROM customers",
        )])
        .binary(),
        case("sd10", "the note in XML", vec![rows(
            "SELECT xmlelement(name n, note), xmlforest(email) FROM customers",
        )])
        .binary(),
        case("sd11", "the note in a row value", vec![rows("SELECT ROW(note, id) FROM customers")]).binary(),
        case("sd12", "the note as a text search vector", vec![rows(
            "SELECT to_tsvector('simple', note) FROM customers",
        )])
        .binary(),
        case("sd13", "a notification", vec![
            rows("LISTEN bypass_chan"),
            rows("SELECT pg_sleep(1.2), 'notify-me'"),
            rows("SELECT 1"),
            rows("UNLISTEN *"),
        ])
        .notification(),
        case("sd14", "a portal in pieces", vec![rows("SELECT note, profile FROM customers ORDER BY id")]).portal(1),
    ]
}

/// Cases in the frontend protocol itself (tests/clients/raw_portals.py reads the steps): portals
/// and statements that SQL created under names the gateway tracks for the protocol.
fn raw_cases() -> Vec<Case> {
    let steps = |lines: &[&str]| lines.iter().map(|l| anything(l)).collect::<Vec<_>>();
    vec![
        case(
            "rw1",
            "Execute of a SQL cursor that was never bound",
            steps(&[
                "Q BEGIN",
                "Q DECLARE rc1 CURSOR FOR SELECT lower(email), ssn || '' FROM customers",
                "D P|rc1",
                "E rc1|0",
                "S",
                "Q ROLLBACK",
            ]),
        ),
        case(
            "rw2",
            "Bind to a statement prepared with SQL PREPARE",
            steps(&[
                "Q PREPARE rp1 AS SELECT lower(email), card || '' FROM customers",
                "B |rp1",
                "D P|",
                "E |0",
                "S",
                "Q DEALLOCATE ALL",
            ]),
        ),
        case(
            "rw3",
            "a Bind the database refused, then Execute of the cursor that holds its name",
            steps(&[
                "Q DECLARE rc2 CURSOR WITH HOLD FOR SELECT lower(email), upper(ssn) FROM customers",
                "P |SELECT 'x' AS lower, 'y' AS upper",
                "B rc2|",
                "S",
                "E rc2|0",
                "S",
                "Q CLOSE ALL",
            ]),
        ),
        case(
            "rw4",
            "the same, pipelined without waiting",
            steps(&[
                "Q DECLARE rc3 CURSOR WITH HOLD FOR SELECT lower(email), upper(ssn) FROM customers",
                "P |SELECT 'x' AS lower, 'y' AS upper",
                "B rc3|",
                "SS",
                "D P|rc3",
                "E rc3|0",
                "S",
                "Q CLOSE ALL",
            ]),
        ),
        case(
            "rw5",
            "a bound portal closed with SQL and declared again over masked values",
            steps(&[
                "Q BEGIN",
                "P |SELECT 'x' AS lower",
                "B p1|",
                "S",
                "Q CLOSE p1",
                "Q DECLARE p1 CURSOR FOR SELECT lower(email) FROM customers",
                "E p1|0",
                "S",
                "Q ROLLBACK",
            ]),
        ),
        case(
            "rw6",
            "a portal name reused by a WITH HOLD cursor after its transaction ended",
            steps(&[
                "Q BEGIN",
                "P |SELECT 'x' AS lower",
                "B p2|",
                "E p2|0",
                "S",
                "Q COMMIT",
                "Q DECLARE p2 CURSOR WITH HOLD FOR SELECT lower(email) FROM customers",
                "E p2|0",
                "S",
                "Q CLOSE ALL",
            ]),
        ),
        case(
            "rw7",
            "a portal run in pieces whose cursor is swapped between pieces",
            steps(&[
                "Q BEGIN",
                "P |SELECT 'x' AS lower FROM generate_series(1, 3)",
                "B p3|",
                "E p3|1",
                "S",
                "Q CLOSE p3",
                "Q DECLARE p3 CURSOR FOR SELECT lower(email) FROM customers",
                "E p3|1",
                "S",
                "Q ROLLBACK",
            ]),
        ),
        case(
            "rw9",
            "a parsed statement deallocated with SQL and prepared again over masked values",
            steps(&[
                "P s1|SELECT 'x' AS lower",
                "S",
                "Q DEALLOCATE s1",
                "Q PREPARE s1 AS SELECT lower(email) FROM customers",
                "B |s1",
                "E |0",
                "S",
                "Q DEALLOCATE ALL",
            ]),
        ),
        case(
            "rw10",
            "the same with DEALLOCATE ALL, pipelined",
            steps(&[
                "P s2|SELECT 'x' AS lower",
                "SS",
                "Q DEALLOCATE ALL",
                "Q PREPARE s2 AS SELECT lower(email) FROM customers",
                "B p9|s2",
                "D P|p9",
                "E p9|0",
                "S",
                "Q DEALLOCATE ALL",
            ]),
        ),
        case(
            "rw8",
            "a plain portal run in pieces still works",
            vec![
                anything("Q BEGIN"),
                anything("P |SELECT lower(email), ssn FROM customers ORDER BY id"),
                anything("B p4|"),
                rows("E p4|1"),
                rows("S"),
                anything("E p4|5"),
                rows("S"),
                anything("Q COMMIT"),
            ],
        ),
    ]
}

/// Leaks the suite knows of and the product does not close yet: (case, client prefix, what is
/// missing). Each is asserted to still leak, so that closing one makes the suite say so.
///
/// Predicates: with `refuse_predicates = false` (the default) a filter or join condition on a
/// masked column may read it, and joined to rows generated for the purpose (digits, positions)
/// the condition selects exactly the rows that spell the value, which an aggregate then returns
/// in one cell. The lineage has no notion of a value carried by which rows a condition keeps;
/// `refuse_predicates = true` refuses these statements
/// (`refuse_predicates_closes_the_predicate_channel`).
const KNOWN_LEAKS: &[(&str, &str, &str)] = &[
    (
        "sc6",
        "",
        "predicates joined to generated rows rebuild the SSN; only refuse_predicates closes it",
    ),
    (
        "sc7",
        "",
        "predicates joined to generated rows rebuild the salary; only refuse_predicates closes it",
    ),
];

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Outcomes and judging
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
#[allow(dead_code)] // The message is read through Debug, in failure reports.
enum Outcome {
    Rows(Vec<Vec<String>>),
    Error { sqlstate: String, message: String },
}

#[derive(Debug, Clone, Default)]
struct CaseRun {
    steps: Vec<Outcome>,
    /// The marker before this case failed: the previous case left the session unusable.
    marker_error: Option<String>,
}

/// What one client did with every case, and the bytes it received per case.
struct ClientRun {
    client: String,
    runs: BTreeMap<String, CaseRun>,
    segments: BTreeMap<String, Vec<u8>>,
    /// Whatever else the client printed (psql's stderr, a runner's crash), scanned too.
    other_output: String,
}

fn judge(run: &ClientRun, cases: &[Case], group: Group) -> Vec<String> {
    judge_with(run, cases, group, KNOWN_LEAKS)
}

/// Every failure of one client's run: a case that leaked (unless `known` lists it, then one
/// that no longer does), a step that did not do what it must, a session left unusable.
fn judge_with(
    run: &ClientRun,
    cases: &[Case],
    group: Group,
    known: &[(&str, &str, &str)],
) -> Vec<String> {
    let base = needles(group);
    let mut failures = Vec::new();
    let mut fail = |case: &str, what: String| {
        failures.push(format!("[{}] {case}: {what}", run.client));
    };
    if let Some(bytes) = run.segments.get("login") {
        for l in leaks(bytes, &base) {
            fail("login", l);
        }
    }
    for l in leaks(run.other_output.as_bytes(), &base) {
        fail("output", l);
    }
    let ids: Vec<&str> = cases.iter().map(|c| c.id).collect();
    for (i, c) in cases.iter().enumerate() {
        let Some(result) = run.runs.get(c.id) else {
            fail(c.id, "the client reported nothing for this case".into());
            continue;
        };
        // The next case's marker proves this one left the session usable.
        let next = ids.get(i + 1).copied().unwrap_or("end");
        if let Some(e) = run.runs.get(next).and_then(|r| r.marker_error.as_ref()) {
            fail(c.id, format!("the session was unusable afterwards: {e}"));
        }
        if result.steps.len() != c.steps.len() {
            fail(
                c.id,
                format!(
                    "{} step outcomes for {} steps",
                    result.steps.len(),
                    c.steps.len()
                ),
            );
        }
        // Canaries in what the client decoded (a value may be encoded on the wire).
        let mut decoded = Vec::new();
        for (step, outcome) in c.steps.iter().zip(&result.steps) {
            let ok = match (step.expect, outcome) {
                (Expect::Anything, _) => true,
                (Expect::Rows | Expect::RowsOrRefused, Outcome::Rows(_)) => true,
                (Expect::RowsOrRefused | Expect::Refused, Outcome::Error { sqlstate, .. }) => {
                    sqlstate == "42501"
                }
                (Expect::Fails(code), Outcome::Error { sqlstate, .. }) => {
                    sqlstate == code || sqlstate == "42501"
                }
                _ => false,
            };
            if !ok {
                fail(
                    c.id,
                    format!(
                        "{:?} expected of {:?}, got {outcome:?}",
                        step.expect, step.sql
                    ),
                );
            }
            if let Outcome::Rows(rows) = outcome {
                decoded.extend(leaks(format!("{rows:?}").as_bytes(), &base));
            }
        }
        let mut all = base.clone();
        all.extend(c.extra.iter().map(|e| text_needle("case form", e)));
        let bytes = run.segments.get(c.id).cloned().unwrap_or_default();
        let mut found = leaks(&bytes, &all);
        found.extend(decoded.into_iter().map(|l| format!("decoded value: {l}")));
        let known = known
            .iter()
            .find(|(id, client, _)| *id == c.id && run.client.starts_with(client));
        match (known, found.is_empty()) {
            (None, true) => {}
            (None, false) => {
                for l in found {
                    fail(c.id, format!("LEAK ({}): {l}", c.why));
                }
            }
            (Some(_), false) => {}
            (Some((_, _, missing)), true) => fail(
                c.id,
                format!("listed as a known leak ({missing}) but no longer leaks: take it off KNOWN_LEAKS"),
            ),
        }
        if c.notification && !bytes.windows(11).any(|w| w == b"bypass_chan") {
            fail(c.id, "no notification reached the client".into());
        }
    }
    failures
}

fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The notifier: an unmasked session sends the canaries to whoever waits with 'notify-me'
// ---------------------------------------------------------------------------------------------

/// Watches the database for a session running a statement that says `notify-me` and, for each
/// one, has an unmasked session (through the gateway) notify `bypass_chan` with the canary
/// e-mail, SSN and card number read from the table.
async fn notifier(gw: &TestGateway) -> tokio::task::JoinHandle<()> {
    let direct = gw.db.connect_direct().await;
    let engineer = gw
        .connect_tokio_postgres(&token(gw, Group::Engineering))
        .await;
    tokio::spawn(async move {
        let mut served = BTreeSet::new();
        loop {
            let waiting = direct
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                     AND state = 'active' AND query LIKE '%' || 'notify-' || 'me%' \
                     AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap_or_default();
            for row in waiting {
                let pid: i32 = row.get(0);
                if served.insert(pid) {
                    engineer
                        .batch_execute(
                            "SELECT pg_notify('bypass_chan', 'mail ' || email || ' ssn ' || ssn || ' card ' || card) FROM customers WHERE id = 1",
                        )
                        .await
                        .expect("notify as an unmasked session");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

async fn connect_through(gw: &TestGateway, port: u16, token: &str) -> Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("alice")
        .password(token)
        .dbname(gw.database())
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) =
        common::bounded_login("tokio-postgres through the recorder", config.connect(NoTls))
            .await
            .expect("connect through the recorder");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn db_error(e: &tokio_postgres::Error) -> Outcome {
    match e.as_db_error() {
        Some(db) => Outcome::Error {
            sqlstate: db.code().code().to_owned(),
            message: db.message().to_owned(),
        },
        None => Outcome::Error {
            sqlstate: "client".into(),
            message: format!("{e:?}"),
        },
    }
}

fn simple_rows(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<String>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("null").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A value's raw bytes, whatever its type.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A binary date: exactly 4 bytes of days since 2000-01-01.
struct PgDate(i32);

impl<'a> FromSql<'a> for PgDate {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 4] = raw
            .try_into()
            .map_err(|_| format!("date of {} bytes", raw.len()))?;
        Ok(PgDate(i32::from_be_bytes(bytes)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
}

/// A binary timestamp: exactly 8 bytes.
struct PgTimestamp(i64);

impl<'a> FromSql<'a> for PgTimestamp {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw
            .try_into()
            .map_err(|_| format!("timestamp of {} bytes", raw.len()))?;
        Ok(PgTimestamp(i64::from_be_bytes(bytes)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMP || *ty == Type::TIMESTAMPTZ
    }
}

/// Days since 2000-01-01 as a calendar date (Howard Hinnant's civil_from_days).
fn civil(days_since_2000: i32) -> String {
    let z = i64::from(days_since_2000) + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One binary value decoded by its column's type, as `type:text`; an error when it does not
/// decode as that type.
fn typed(row: &tokio_postgres::Row, i: usize) -> Result<String, String> {
    let ty = row.columns()[i].type_().clone();
    let err = |e: tokio_postgres::Error| format!("column {i} of type {ty} does not decode: {e:?}");
    macro_rules! get {
        ($t:ty, $f:expr) => {
            row.try_get::<_, Option<$t>>(i)
                .map_err(err)
                .map(|v| v.map_or("null".to_owned(), $f))
        };
    }
    let name = ty.name().to_owned();
    let show = move |s: String| format!("{name}:{s}");
    match ty.name() {
        "int2" => get!(i16, |v| show(v.to_string())),
        "int4" => get!(i32, |v| show(v.to_string())),
        "int8" => get!(i64, |v| show(v.to_string())),
        "oid" => get!(u32, |v| show(v.to_string())),
        "float4" => get!(f32, |v| show(v.to_string())),
        "float8" => get!(f64, |v| show(v.to_string())),
        "bool" => get!(bool, |v| show(v.to_string())),
        "text" | "varchar" | "bpchar" | "name" | "unknown" => get!(String, show),
        "bytea" => get!(Vec<u8>, |v: Vec<u8>| show(format!(
            "{}:{}",
            v.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            v.escape_ascii()
        ))),
        "date" => get!(PgDate, |v: PgDate| show(civil(v.0))),
        "timestamp" | "timestamptz" => {
            get!(PgTimestamp, |v: PgTimestamp| show(v.0.to_string()))
        }
        "_text" | "_varchar" => get!(Vec<Option<String>>, |v| show(format!("{v:?}"))),
        "_int4" => get!(Vec<Option<i32>>, |v| show(format!("{v:?}"))),
        "jsonb" => get!(Raw, |v: Raw| {
            if v.0.first() != Some(&1) {
                format!("BAD jsonb version byte: {}", v.0.escape_ascii())
            } else {
                show(String::from_utf8_lossy(&v.0[1..]).into_owned())
            }
        })
        .and_then(|s| if s.starts_with("BAD") { Err(s) } else { Ok(s) }),
        _ => get!(Raw, |v: Raw| show(v.0.escape_ascii().to_string())),
    }
}

/// tokio-postgres, `simple_query`: the simple protocol, text results.
async fn run_tokio_simple(client: &Client, cases: &[Case]) -> BTreeMap<String, CaseRun> {
    let mut runs = BTreeMap::new();
    for c in cases {
        let mut run = CaseRun::default();
        if let Err(e) = client
            .simple_query(&format!("SELECT 'case-marker:{}:'", c.id))
            .await
        {
            run.marker_error = Some(format!("{e:?}"));
        }
        for step in &c.steps {
            let outcome = if let Some(n) = c.portal_rows {
                // In the simple protocol a portal in pieces is a cursor fetched n rows at a time.
                let mut all = Vec::new();
                let mut result = client.simple_query("BEGIN").await.map(|_| ());
                if result.is_ok() {
                    result = client
                        .simple_query(&format!(
                            "DECLARE bypass_portal NO SCROLL CURSOR FOR {}",
                            step.sql
                        ))
                        .await
                        .map(|_| ());
                }
                while result.is_ok() {
                    match client
                        .simple_query(&format!("FETCH {n} FROM bypass_portal"))
                        .await
                    {
                        Ok(m) => {
                            let part = simple_rows(m);
                            if part.is_empty() {
                                break;
                            }
                            all.extend(part);
                        }
                        Err(e) => result = Err(e),
                    }
                }
                let end = client
                    .simple_query(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
                    .await;
                match result.and(end.map(|_| ())) {
                    Ok(()) => Outcome::Rows(all),
                    Err(e) => db_error(&e),
                }
            } else {
                match client.simple_query(&step.sql).await {
                    Ok(m) => Outcome::Rows(simple_rows(m)),
                    Err(e) => db_error(&e),
                }
            };
            run.steps.push(outcome);
        }
        runs.insert(c.id.to_owned(), run);
    }
    let mut end = CaseRun::default();
    if let Err(e) = client.simple_query("SELECT 'case-marker:end:'").await {
        end.marker_error = Some(format!("{e:?}"));
    }
    runs.insert("end".into(), end);
    runs
}

/// tokio-postgres, `query`: the extended protocol, binary results decoded by type; portals run
/// in pieces with `bind` and `query_portal`.
async fn run_tokio_extended(
    client: &mut Client,
    cases: &[Case],
) -> (BTreeMap<String, CaseRun>, Vec<String>) {
    let mut runs = BTreeMap::new();
    let mut typed_failures = Vec::new();
    let decode = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<Vec<String>>, String> {
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| typed(r, i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect()
    };
    for c in cases {
        let mut run = CaseRun::default();
        if let Err(e) = client
            .query(&format!("SELECT 'case-marker:{}:'", c.id), &[])
            .await
        {
            run.marker_error = Some(format!("{e:?}"));
        }
        for step in &c.steps {
            let outcome = if let Some(n) = c.portal_rows {
                let mut all = Vec::new();
                let result: Result<(), tokio_postgres::Error> = async {
                    let tx = client.transaction().await?;
                    let stmt = tx.prepare(&step.sql).await?;
                    let portal = tx.bind(&stmt, &[]).await?;
                    loop {
                        let part = tx.query_portal(&portal, n).await?;
                        if part.is_empty() {
                            break;
                        }
                        all.extend(part);
                    }
                    tx.commit().await
                }
                .await;
                match result {
                    Ok(()) => match decode(all) {
                        Ok(rows) => Outcome::Rows(rows),
                        Err(e) => Outcome::Error {
                            sqlstate: "decode".into(),
                            message: e,
                        },
                    },
                    Err(e) => db_error(&e),
                }
            } else {
                match client.query(&step.sql, &[]).await {
                    Ok(rows) => match decode(rows) {
                        Ok(rows) => Outcome::Rows(rows),
                        Err(e) => Outcome::Error {
                            sqlstate: "decode".into(),
                            message: e,
                        },
                    },
                    Err(e) => db_error(&e),
                }
            };
            run.steps.push(outcome);
        }
        if !c.typed.is_empty() {
            if let Some(Outcome::Rows(rows)) = run.steps.first() {
                let first = rows.first().cloned().unwrap_or_default();
                for (i, (want, _)) in c.typed.iter().enumerate() {
                    if first.get(i).map(String::as_str) != Some(*want) {
                        typed_failures.push(format!(
                            "[tokio-postgres extended] {}: column {i} decoded as {:?}, expected {want:?}",
                            c.id,
                            first.get(i)
                        ));
                    }
                }
            }
        }
        runs.insert(c.id.to_owned(), run);
    }
    let mut end = CaseRun::default();
    if let Err(e) = client.query("SELECT 'case-marker:end:'", &[]).await {
        end.marker_error = Some(format!("{e:?}"));
    }
    runs.insert("end".into(), end);
    (runs, typed_failures)
}

/// Reads the JSON lines a Python or Java runner prints.
fn parse_runner(text: &str) -> BTreeMap<String, CaseRun> {
    let mut runs = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("runner printed a bad line ({e}): {line}"));
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let steps = v["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .map(|s| {
                        if s["ok"].as_bool() == Some(true) {
                            Outcome::Rows(
                                s["rows"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .map(|r| {
                                        r.as_array()
                                            .into_iter()
                                            .flatten()
                                            .map(|x| x.as_str().unwrap_or_default().to_owned())
                                            .collect()
                                    })
                                    .collect(),
                            )
                        } else {
                            Outcome::Error {
                                sqlstate: s["sqlstate"].as_str().unwrap_or_default().to_owned(),
                                message: s["message"].as_str().unwrap_or_default().to_owned(),
                            }
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let marker_error = v["marker_error"].as_str().map(str::to_owned);
        runs.insert(
            id,
            CaseRun {
                steps,
                marker_error,
            },
        );
    }
    // The runners select the end marker without reporting it: a run that got that far ended
    // with a usable session.
    runs.entry("end".into()).or_default();
    runs
}

/// The Python runner (psycopg 3 or asyncpg; `raw`: the frontend protocol by hand) over every
/// case, through the recorder.
async fn run_python(
    gw: &TestGateway,
    recorder: &Recorder,
    token: &str,
    mode: &str,
    cases: &[Case],
) -> ClientRun {
    let file = gw.scratch().join(format!("cases-{mode}.json"));
    let list: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id,
                "portal_rows": c.portal_rows,
                "steps": c.steps.iter().map(|s| serde_json::json!({"sql": s.sql})).collect::<Vec<_>>(),
            })
        })
        .collect();
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    let mut cmd = Command::new(common::python());
    if mode == "raw" {
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/raw_portals.py"));
    } else {
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/bypass_runner.py"))
            .arg(mode);
    }
    cmd.arg(&file)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    let port = recorder.port.to_string();
    let out = gw
        .run_client(cmd, &[("PGPORT", &port), ("PGPASSWORD", token)])
        .await;
    let bytes = recorder.take();
    let text = stdout(&out);
    let runs = parse_runner(&text);
    assert!(
        out.status.success(),
        "{mode} runner failed ({}):\n{}\n{}",
        out.status,
        text,
        stderr(&out)
    );
    ClientRun {
        client: mode.to_owned(),
        runs,
        segments: segments(&bytes),
        other_output: stderr(&out),
    }
}

/// Where the PgJDBC driver is (Debian's libpostgresql-jdbc-java, which scripts/test.sh
/// installs), or `None` when scripts/test.sh could not install it and said so loudly
/// (`PORTCULLIS_TEST_NO_JDBC` holds its reason).
fn jdbc_jar() -> Option<&'static str> {
    const JAR: &str = "/usr/share/java/postgresql.jar";
    let javac = Command::new("javac")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if Path::new(JAR).exists() && javac {
        return Some(JAR);
    }
    match std::env::var("PORTCULLIS_TEST_NO_JDBC") {
        Ok(reason) if !reason.is_empty() => {
            eprintln!(
                "\n!!!!!!!! JDBC CASES SKIPPED: javac or {JAR} is missing and scripts/test.sh could not install them: {reason} !!!!!!!!\n"
            );
            None
        }
        _ => panic!(
            "javac or {JAR} is missing: run scripts/test.sh (it installs them), or apt-get install libpostgresql-jdbc-java default-jdk-headless"
        ),
    }
}

/// The JDBC runner in `mode` (PgJDBC's preferQueryMode) over every case.
async fn run_jdbc(
    gw: &TestGateway,
    recorder: &Recorder,
    token: &str,
    mode: &str,
    cases: &[Case],
    jar: &str,
) -> ClientRun {
    let classes = gw.scratch().join("jdbc-classes");
    if !classes.join("BypassJdbc.class").exists() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/BypassJdbc.java");
        let mut javac = Command::new("javac");
        javac
            .arg("-cp")
            .arg(jar)
            .arg("-d")
            .arg(&classes)
            .arg(&source);
        let out = gw.run_client(javac, &[]).await;
        common::assert_success("javac BypassJdbc.java", &out);
    }
    let escape = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\t', "\\t")
    };
    let mut text = String::new();
    for c in cases {
        text.push_str(&format!(
            "C\t{}\t{}\t{}\n",
            c.id,
            c.portal_rows.unwrap_or(0),
            c.repeat
        ));
        for s in &c.steps {
            text.push_str(&format!("S\t{}\n", escape(&s.sql)));
        }
    }
    let file = gw.scratch().join(format!("cases-jdbc-{mode}.txt"));
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(format!("{}:{jar}", classes.display()))
        .arg("BypassJdbc")
        .arg(mode)
        .arg(&file);
    let port = recorder.port.to_string();
    let out = gw
        .run_client(cmd, &[("PGPORT", &port), ("PGPASSWORD", token)])
        .await;
    let bytes = recorder.take();
    let printed = stdout(&out);
    assert!(
        out.status.success(),
        "JDBC runner ({mode}) failed ({}):\n{}\n{}",
        out.status,
        printed,
        stderr(&out)
    );
    ClientRun {
        client: format!("jdbc-{mode}"),
        runs: parse_runner(&printed),
        segments: segments(&bytes),
        other_output: stderr(&out),
    }
}

/// psql (simple protocol, text), one connection per case: each step is a `-c`, followed by an
/// echo of its SQLSTATE.
async fn run_psql(gw: &TestGateway, recorder: &Recorder, token: &str, cases: &[Case]) -> ClientRun {
    let port = recorder.port.to_string();
    let mut runs = BTreeMap::new();
    let mut segs = BTreeMap::new();
    let mut other = String::new();
    for c in cases {
        let mut args: Vec<String> = vec![
            "-A".into(),
            "-t".into(),
            "-q".into(),
            "-v".into(),
            "ON_ERROR_STOP=0".into(),
        ];
        if let Some(n) = c.portal_rows {
            args.push("-c".into());
            args.push(format!("\\set FETCH_COUNT {n}"));
        }
        for s in &c.steps {
            args.push("-c".into());
            args.push(s.sql.clone());
            args.push("-c".into());
            args.push("\\echo @@step :SQLSTATE".into());
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = gw
            .psql(&arg_refs, &[("PGPORT", &port), ("PGPASSWORD", token)])
            .await;
        let bytes = recorder.take();
        let mut run = CaseRun::default();
        let mut rows = Vec::new();
        for line in stdout(&out).lines() {
            if let Some(code) = line.strip_prefix("@@step ") {
                let code = code.trim();
                run.steps.push(if code == "00000" {
                    Outcome::Rows(std::mem::take(&mut rows))
                } else {
                    rows.clear();
                    Outcome::Error {
                        sqlstate: code.to_owned(),
                        message: String::new(),
                    }
                });
            } else if !line.is_empty() {
                rows.push(vec![line.to_owned()]);
            }
        }
        if !out.status.success() && run.steps.is_empty() {
            run.marker_error = Some(format!("psql failed: {}", stderr(&out)));
        }
        other.push_str(&stderr(&out));
        runs.insert(c.id.to_owned(), run);
        segs.insert(c.id.to_owned(), bytes);
    }
    runs.entry("end".into()).or_default();
    ClientRun {
        client: "psql".into(),
        runs,
        segments: segs,
        other_output: other,
    }
}

// ---------------------------------------------------------------------------------------------
// After the run: nothing the gateway refused was written
// ---------------------------------------------------------------------------------------------

async fn assert_nothing_written(gw: &TestGateway, client: &str) {
    let direct = gw.db.connect_direct().await;
    let mut failures = Vec::new();
    // Every relation the analyst could have written into: read it all, as text.
    let tables = direct
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
             AND c.relname NOT IN ('customers', 'contact_mv') ",
            &[],
        )
        .await
        .unwrap();
    for t in tables {
        let name: String = t.get(0);
        let rows = direct
            .simple_query(&format!("SELECT t::text FROM {name} t"))
            .await
            .unwrap();
        let text = format!("{:?}", simple_rows(rows));
        for l in leaks(text.as_bytes(), &needles(Group::Analysts)) {
            failures.push(format!("[{client}] table {name} holds a canary: {l}"));
        }
    }
    for gone in ["stolen", "stolen2", "stolen_mv"] {
        let exists: bool = direct
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&gone])
            .await
            .unwrap()
            .get(0);
        if exists {
            failures.push(format!("[{client}] {gone} was created"));
        }
    }
    // The masked table is as it was.
    let row = direct
        .query_one(
            "SELECT name, ssn, email FROM public.customers WHERE id = 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("[{client}] the customers table changed shape: {e}"));
    let (name, ssn, email): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    if (name.as_str(), ssn.as_str(), email.as_str()) != ("Zelda", SSN, EMAIL) {
        failures.push(format!("[{client}] row 1 changed: {name} {ssn} {email}"));
    }
    report(failures);
}

// ---------------------------------------------------------------------------------------------
// The tests: one per client, each with its own gateway and database
// ---------------------------------------------------------------------------------------------

/// Runs `cases` for `group` through one client kind, then judges every case.
async fn suite(client: &str, group: Group) {
    let gw = start().await;
    let _notifier = notifier(&gw).await;
    let recorder = Recorder::start(gw.addr).await;
    let token = token(&gw, group);
    let cases: Vec<Case> = match group {
        Group::Support => support_cases(),
        _ => analyst_cases(gw.database()),
    }
    .into_iter()
    .filter(|c| !c.not_for.iter().any(|n| client.starts_with(n)))
    .collect();
    let mut failures = Vec::new();
    let run = match client {
        "psql" => run_psql(&gw, &recorder, &token, &cases).await,
        "tokio-simple" => {
            let c = connect_through(&gw, recorder.port, &token).await;
            let runs = run_tokio_simple(&c, &cases).await;
            drop(c);
            tokio::time::sleep(Duration::from_millis(100)).await;
            ClientRun {
                client: client.into(),
                runs,
                segments: segments(&recorder.take()),
                other_output: String::new(),
            }
        }
        "tokio-extended" => {
            let mut c = connect_through(&gw, recorder.port, &token).await;
            let (runs, typed) = run_tokio_extended(&mut c, &cases).await;
            failures.extend(typed);
            drop(c);
            tokio::time::sleep(Duration::from_millis(100)).await;
            ClientRun {
                client: client.into(),
                runs,
                segments: segments(&recorder.take()),
                other_output: String::new(),
            }
        }
        "psycopg-text" | "asyncpg" => run_python(&gw, &recorder, &token, client, &cases).await,
        "psycopg-binary" => {
            let subset: Vec<Case> = cases.iter().filter(|c| c.binary).cloned().collect();
            let run = run_python(&gw, &recorder, &token, client, &subset).await;
            failures.extend(judge(&run, &subset, group));
            report(failures);
            assert_nothing_written(&gw, client).await;
            return;
        }
        "jdbc-simple" | "jdbc-extended" => {
            let Some(jar) = jdbc_jar() else { return };
            let mode = client.trim_start_matches("jdbc-");
            run_jdbc(&gw, &recorder, &token, mode, &cases, jar).await
        }
        other => panic!("unknown client {other}"),
    };
    if client == "asyncpg" {
        for c in cases.iter().filter(|c| !c.typed.is_empty()) {
            if let Some(Outcome::Rows(rows)) = run.runs.get(c.id).and_then(|r| r.steps.first()) {
                let first = rows.first().cloned().unwrap_or_default();
                for (i, (_, want)) in c.typed.iter().enumerate() {
                    if first.get(i).map(String::as_str) != Some(*want) {
                        failures.push(format!(
                            "[asyncpg] {}: column {i} decoded as {:?}, expected {want:?}",
                            c.id,
                            first.get(i)
                        ));
                    }
                }
            }
        }
    }
    failures.extend(judge(&run, &cases, group));
    report(failures);
    assert_nothing_written(&gw, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_simple_text() {
    suite("psql", Group::Analysts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_simple_text() {
    suite("tokio-simple", Group::Analysts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_extended_binary() {
    suite("tokio-extended", Group::Analysts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_extended_text() {
    suite("psycopg-text", Group::Analysts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_extended_binary() {
    suite("psycopg-binary", Group::Analysts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_extended_binary() {
    suite("asyncpg", Group::Analysts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_simple_text() {
    suite("jdbc-simple", Group::Analysts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_extended_text() {
    suite("jdbc-extended", Group::Analysts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_group_psql() {
    suite("psql", Group::Support).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_group_tokio_postgres_simple_and_extended() {
    suite("tokio-simple", Group::Support).await;
    suite("tokio-extended", Group::Support).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_group_python_drivers() {
    suite("psycopg-text", Group::Support).await;
    suite("psycopg-binary", Group::Support).await;
    suite("asyncpg", Group::Support).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_group_jdbc() {
    suite("jdbc-simple", Group::Support).await;
    suite("jdbc-extended", Group::Support).await;
}

/// With `refuse_predicates = true` the statements that rebuild values through filters and join
/// conditions (the known leaks) are refused, and the rest of the suite's statements still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_predicates_closes_the_predicate_channel() {
    let config = CONFIG.replacen("[masking]\n", "[masking]\nrefuse_predicates = true\n", 1);
    let gw = TestGateway::start_with(common::Options {
        extra_config: config,
        ..Default::default()
    })
    .await;
    gw.db
        .connect_direct()
        .await
        .batch_execute(&seed_sql())
        .await
        .expect("seed the database");
    let recorder = Recorder::start(gw.addr).await;
    let token = token(&gw, Group::Analysts);
    let mut cases: Vec<Case> = analyst_cases(gw.database())
        .into_iter()
        .filter(|c| ["sc6", "sc7", "p01", "e05", "t03"].contains(&c.id))
        .collect();
    for c in &mut cases {
        if c.id.starts_with("sc") {
            c.steps = c.steps.iter().map(|s| refused(&s.sql)).collect();
        }
    }
    cases.push(case(
        "rp1",
        "a filter on a masked column",
        vec![refused("SELECT name FROM customers WHERE ssn LIKE '0%'")],
    ));
    let client = connect_through(&gw, recorder.port, &token).await;
    let runs = run_tokio_simple(&client, &cases).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let run = ClientRun {
        client: "tokio-simple, refuse_predicates".into(),
        runs,
        segments: segments(&recorder.take()),
        other_output: String::new(),
    };
    // The known leaks are closed here: judged without the list.
    report(judge_with(&run, &cases, Group::Analysts, &[]));
}

/// Portals and statements created with SQL under the names of protocol portals and statements,
/// driven by hand over the frontend protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_protocol_portals() {
    let gw = start().await;
    let recorder = Recorder::start(gw.addr).await;
    let token = token(&gw, Group::Analysts);
    let cases = raw_cases();
    let run = run_python(&gw, &recorder, &token, "raw", &cases).await;
    report(judge(&run, &cases, Group::Analysts));
}

/// The same statements show the real values to an identity no rule names: the suite's clean
/// results come from masking, not from statements that return nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmasked_identity_sees_the_canaries() {
    let gw = start().await;
    let recorder = Recorder::start(gw.addr).await;
    let token = token(&gw, Group::Engineering);
    let ids = [
        "p01", "e05", "e09", "e16", "js01", "v02", "f01", "q03", "er01", "sc4",
    ];
    let cases: Vec<Case> = analyst_cases(gw.database())
        .into_iter()
        .filter(|c| ids.contains(&c.id))
        .collect();
    let client = connect_through(&gw, recorder.port, &token).await;
    let runs = run_tokio_simple(&client, &cases).await;
    let mut c2 = connect_through(&gw, recorder.port, &token).await;
    let (_, _) = run_tokio_extended(&mut c2, &cases).await;
    drop((client, c2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bytes = recorder.take();
    let all = needles(Group::Analysts);
    let found = leaks(&bytes, &all);
    for label in [
        "ssn",
        "email",
        "card",
        "salary",
        "born",
        "api_key",
        "salary (int4 binary)",
        "born (date binary)",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(&format!("{label} in"))),
            "the unmasked identity never saw {label}: {found:#?}"
        );
    }
    for id in ["p01", "e05", "f01", "er01"] {
        let run = &runs[id];
        assert!(
            !leaks(format!("{:?}", run.steps).as_bytes(), &all).is_empty(),
            "{id}: no canary in what the unmasked identity decoded: {:?}",
            run.steps
        );
    }
    // psql too.
    let psql = run_psql(&gw, &recorder, &token, &cases[..2]).await;
    assert!(
        !leaks(&psql.segments["p01"], &all).is_empty(),
        "psql as the unmasked identity saw no canary"
    );
}
