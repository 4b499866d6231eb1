//! Masking through the MySQL module, against the real local MariaDB (127.0.0.1:3306, root without
//! a password): the `masking` crate's [`masking::RuleMasker`] configured from a `[masking]`
//! section, the real `mariadb` command-line client for the text protocol, and a hand-written
//! client for the binary protocol (COM_STMT_PREPARE and COM_STMT_EXECUTE, rows decoded by
//! mysql_common). The authenticator and policy are test doubles (no `[policy]`: the masker reads
//! each statement itself).
//!
//! `alice` is masked (group `analysts`), `dba` is not, `carol` only has content detectors.

mod common;

use std::collections::BTreeMap;

use std::sync::Arc;

use common::{direct, rand_suffix, Recorded};
use gateway_core::*;
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, Column, HandshakeResponse};
use mysql_common::proto::{Binary, MySerialize, Text};
use mysql_common::row::RowDeserializer;
use mysql_common::value::{ServerSide, Value};
use proto_mysql::packet::{self, PacketReader};
use proto_mysql::{ListenerConfig, MysqlListener};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const EMAIL: &str = "alice.canary@example.com";
const SSN: &str = "078-05-1120";
const CARD: &str = "4539 1488 0343 6467";
const SCORE: i32 = 918_273;

const MASKING: &str = r#"
strict = true

[[rules]]
name = "contact"
columns = ["customers.email"]
strategy = "email"
groups = ["analysts"]

[[rules]]
name = "ids"
columns = ["customers.ssn"]
strategy = "partial"
keep_last = 4
groups = ["analysts"]

[[rules]]
name = "cards"
columns = ["customers.card"]
strategy = "redact"
groups = ["analysts"]

[[rules]]
name = "dob"
columns = ["customers.born"]
strategy = "null"
groups = ["analysts"]

[[rules]]
name = "scores"
columns = ["customers.score"]
strategy = "partial"
keep_last = 4
groups = ["analysts"]

[[rules]]
name = "joined"
columns = ["customers.joined"]
strategy = "redact"
groups = ["analysts"]

[[rules]]
name = "people"
columns = ["people.code"]
strategy = "partial"
keep_last = 4
groups = ["analysts"]

[[rules]]
name = "people-mail"
columns = ["people.mail"]
strategy = "email"
groups = ["analysts"]

[[rules]]
name = "codes"
columns = ["big.code"]
strategy = "redact"
groups = ["analysts"]

[[detectors]]
name = "pii-scan"
kinds = ["email"]
groups = ["contractors"]
"#;

struct Users;

#[async_trait]
impl Authenticator for Users {
    async fn authenticate(
        &self,
        c: &Credentials,
        _: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        let Credentials::Password { user, password } = c else {
            return Err(GatewayError::auth("wrong password"));
        };
        let groups = match user.as_str() {
            "alice" => vec!["analysts".to_owned()],
            "carol" => vec!["contractors".to_owned()],
            _ => vec![],
        };
        if password != "secret" {
            return Err(GatewayError::auth("wrong password"));
        }
        Ok(Identity {
            subject: user.clone(),
            groups,
            auth_method: AuthMethod::Password,
            claims: BTreeMap::new(),
        })
    }
}

/// Allows everything; classifies by the first word, gives no lineage.
struct AllowAll;

impl PolicyEngine for AllowAll {
    fn access(&self, _: &Identity, _: &Target) -> Result<Access, GatewayError> {
        Ok(Access::ReadWrite)
    }
    fn judge(&self, _: &StatementContext<'_>, sql: &str) -> Arc<Judgement> {
        let first = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let classification = match first.as_str() {
            "set" | "use" => "session",
            "update" | "insert" | "delete" => "write",
            "create" | "alter" | "drop" => "ddl",
            _ => "read",
        };
        Arc::new(Judgement {
            verdict: Verdict::allow(None),
            classification: Some(Arc::from(classification)),
            objects: None,
            fingerprint: None,
            lineage: None,
        })
    }
}

/// A database of its own on the local MariaDB, dropped at the end.
struct Database(String);

/// The length of `big.payload` in row 1: its text row (`1`, the payload, `a`) is 3 bytes short
/// of a packet's maximum, so that masking `a` to `****` makes it a split packet.
const BIG: usize = 0xFF_FFFF - 2 - 8;

impl Database {
    fn create() -> Self {
        let name = format!("pc_mask_{}", rand_suffix());
        direct(&format!(
            "CREATE DATABASE {name}; USE {name}; \
             CREATE TABLE customers (id INT PRIMARY KEY, email VARCHAR(100), ssn CHAR(11), \
               card VARCHAR(30), born DATE, score INT, joined DATETIME, note VARCHAR(100)); \
             INSERT INTO customers VALUES \
               (1, '{EMAIL}', '{SSN}', '{CARD}', '1980-02-03', {SCORE}, '2021-03-04 05:06:07', 'write to bob@example.org'), \
               (2, NULL, NULL, NULL, NULL, NULL, NULL, 'second'); \
             CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(100)); \
             INSERT INTO items VALUES (1, 'one'); \
             CREATE VIEW contacts AS SELECT id, email AS contact, UPPER(ssn) AS code FROM customers; \
             CREATE TABLE people (id INT PRIMARY KEY, code VARCHAR(40), mail VARCHAR(40)); \
             INSERT INTO people VALUES (1, 'secret.person@corp.example', 'p@q.example'); \
             CREATE VIEW people_v AS SELECT id, code AS mail, REVERSE(code) AS rev FROM people; \
             CREATE TABLE big (id INT PRIMARY KEY, payload LONGTEXT, code VARCHAR(10)); \
             INSERT INTO big VALUES (1, REPEAT('x', {BIG}), 'a'), (2, 'small', 'b')"
        ));
        Database(name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        direct(&format!("DROP DATABASE IF EXISTS {}", self.0));
    }
}

async fn start(database: &str) -> (std::net::SocketAddr, Arc<Recorded>) {
    let target = Target {
        name: "shop".into(),
        protocol: Protocol::Mysql,
        host: "127.0.0.1".into(),
        port: 3306,
        database: database.into(),
        user: "root".into(),
        password: None,
        tls: UpstreamTls::Disable,
        labels: BTreeMap::new(),
    };
    let section: ::masking::MaskingSection = toml::from_str(MASKING).unwrap();
    let config = ::masking::MaskingConfig::from_section(
        &section,
        std::path::Path::new("/nonexistent"),
        &|p| p.to_path_buf(),
    )
    .unwrap();
    let masker = ::masking::RuleMasker::new(config).unwrap();
    let audit = Arc::new(Recorded::default());
    let gateway = Gateway::builder()
        .authenticator(Arc::new(Users))
        .policy(Arc::new(AllowAll))
        .masker(Arc::new(masker))
        .audit(Arc::clone(&audit) as Arc<dyn AuditSink>)
        .targets(Targets::new([target]))
        .build();
    let listener =
        MysqlListener::bind(ListenerConfig::new("127.0.0.1:0".parse().unwrap()), gateway)
            .await
            .unwrap();
    let addr = listener.local_addr();
    tokio::spawn(listener.run());
    (addr, audit)
}

/// Runs the mariadb client through the gateway as `user` (batch mode: tab-separated, no
/// headers; with --force it goes on after an error). Returns standard output and error.
async fn client(addr: std::net::SocketAddr, user: &str, sql: &str) -> (String, String) {
    let args = vec![
        "--no-defaults".to_owned(),
        "-h127.0.0.1".to_owned(),
        format!("-P{}", addr.port()),
        format!("-u{user}"),
        "-psecret".to_owned(),
        "-Dshop".to_owned(),
        "--batch".to_owned(),
        "--skip-column-names".to_owned(),
        "--force".to_owned(),
        "--max-allowed-packet=64M".to_owned(),
    ];
    let out = common::mariadb(args, sql.replace("; ", ";\n").into_bytes()).await;
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a masked session must never receive, in any of these forms.
fn assert_no_canary(what: &str, text: &str) {
    for canary in [
        EMAIL,
        &EMAIL.to_uppercase(),
        "alice.canary",
        SSN,
        "078-05",
        CARD,
        "4539",
        &SCORE.to_string(),
        "1980-02-03",
        "2021-03-04",
    ] {
        assert!(
            !text.contains(canary),
            "{what}: {canary:?} leaked in {text:?}"
        );
    }
}

#[tokio::test]
async fn plain_columns_follow_their_rules_in_text_results() {
    let db = Database::create();
    let (addr, audit) = start(&db.0).await;
    let (out, err) = client(
        addr,
        "alice",
        "SELECT id, email, ssn, card, born, score, joined, note FROM customers ORDER BY id; \
         SELECT email AS e, c.ssn AS s FROM customers c WHERE id = 1",
    )
    .await;
    assert_eq!(
        out,
        "1\ta***@example.com\t*******1120\t****\tNULL\t8273\t1970-01-01 00:00:00\twrite to bob@example.org\n\
         2\tNULL\tNULL\tNULL\tNULL\tNULL\tNULL\tsecond\n\
         a***@example.com\t*******1120\n",
        "{err}"
    );
    // The audit trail counts what was masked, per column (NULLs are not counted).
    let events = audit.0.lock().unwrap().clone();
    let masked = events
        .iter()
        .find_map(|e| match e {
            AuditEvent::StatementFinished {
                masked: Some(m), ..
            } => Some(m.clone()),
            _ => None,
        })
        .expect("a statement with masked columns");
    let email = masked.iter().find(|m| &*m.column == "email").unwrap();
    assert_eq!(email.values, 1);
    assert!(email.reason.contains("contact"), "{}", email.reason);
    assert!(!masked
        .iter()
        .any(|m| &*m.column == "note" || &*m.column == "id"));

    // An identity the rules do not name reads the values as stored.
    let (out, err) = client(
        addr,
        "dba",
        "SELECT email, ssn, card, born, score FROM customers WHERE id = 1",
    )
    .await;
    assert_eq!(
        out,
        format!("{EMAIL}\t{SSN}\t{CARD}\t1980-02-03\t{SCORE}\n"),
        "{err}"
    );
}

#[tokio::test]
async fn derived_values_views_and_aliased_origins_do_not_leak() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    // One statement per row, with why it is there. Each must run, and leak nothing.
    let cases = [
        (
            "SELECT UPPER(email) FROM customers WHERE id = 1",
            "a function of a masked column",
        ),
        (
            "SELECT CONCAT(ssn, '') FROM customers WHERE id = 1",
            "a masked column through a function that keeps it whole",
        ),
        ("SELECT MAX(card) FROM customers", "an aggregate"),
        (
            "SELECT c FROM (SELECT email AS c FROM customers) t",
            "MariaDB names the derived table's alias as the origin",
        ),
        (
            "SELECT label FROM (SELECT email AS label FROM customers WHERE id = 1) items",
            "an alias that names a real table and column",
        ),
        (
            "SELECT c FROM (SELECT DISTINCT ssn AS c FROM customers LIMIT 5) t",
            "a materialized derived table, origin without a schema",
        ),
        (
            "WITH w AS (SELECT email AS id FROM customers) SELECT id FROM w",
            "a CTE's name is reported as the origin",
        ),
        (
            "SELECT email FROM customers UNION SELECT label FROM items",
            "a set operation",
        ),
        (
            "SELECT contact, code FROM contacts",
            "a view renames a masked column",
        ),
        (
            "SELECT (SELECT ssn FROM customers WHERE id = 1) AS s",
            "a scalar subquery",
        ),
        (
            "SELECT @x := email FROM customers WHERE id = 1; SELECT @x",
            "a variable, set and read back",
        ),
        (
            "SELECT CAST(score AS CHAR), score + 0 FROM customers WHERE id = 1",
            "an integer through a cast",
        ),
        (
            "SELECT DATE_FORMAT(born, '%Y-%m-%d') FROM customers WHERE id = 1",
            "a date through a function",
        ),
        (
            "SELECT CAST(email AS SIGNED) FROM customers WHERE id = 1; SHOW WARNINGS",
            "warnings quote the values a statement read",
        ),
        (
            "SELECT CAST(email AS SIGNED) FROM customers WHERE id = 1; SHOW ERRORS; SHOW WARNINGS LIMIT 1",
            "errors and warnings in other forms",
        ),
    ];
    for (sql, why) in cases {
        let (out, err) = client(addr, "alice", sql).await;
        assert!(!err.contains("ERROR"), "{sql} ({why}) failed: {err}");
        assert!(!out.is_empty(), "{sql} ({why}): no rows");
        assert_no_canary(&format!("{sql} ({why})"), &out);
    }
    // A view's column is computed as far as the gateway can tell, even one that copies a column:
    // it gets no shape-keeping strategy. (The strictest rule of the table the view reads is the
    // email strategy, which would show the domain of the code the partial strategy hides.)
    let (out, err) = client(
        addr,
        "alice",
        "SELECT code, mail FROM people; SELECT mail, rev FROM people_v",
    )
    .await;
    assert_eq!(
        out, "**********************mple\tp***@q.example\n****\t****\n",
        "{err}"
    );
    // The unmasked identity sees the clear values of the same statements (the probes work).
    let (out, _) = client(
        addr,
        "dba",
        "SELECT c FROM (SELECT email AS c FROM customers) t",
    )
    .await;
    assert!(out.contains(EMAIL), "{out}");
    let (out, _) = client(addr, "dba", "SELECT contact FROM contacts WHERE id = 1").await;
    assert_eq!(out, format!("{EMAIL}\n"));
}

#[tokio::test]
async fn errors_that_echo_values_are_hidden_and_others_scrubbed() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    // MariaDB's "Duplicate entry" for the grouping key prints the value it grouped by.
    let echo = "SELECT COUNT(*), CONCAT(email, FLOOR(RAND(0)*2)) AS x \
                FROM customers, information_schema.COLLATIONS GROUP BY x";
    let (_, err) = client(addr, "dba", echo).await;
    assert!(err.contains(EMAIL), "the probe must echo the value: {err}");
    let (_, err) = client(addr, "alice", echo).await;
    assert!(err.contains("ERROR 1062 (23000)"), "{err}");
    assert!(
        err.contains("hidden because the statement reads masked columns"),
        "{err}"
    );
    assert_no_canary("error", &err);
    // A statement that reads nothing masked: quoted spans are hidden, the rest stays.
    let (_, err) = client(
        addr,
        "alice",
        "SELECT EXTRACTVALUE('<a/>', '~bob@example.org')",
    )
    .await;
    // (The client echoes the statement that failed: only its ERROR line is the gateway's.)
    let line = err
        .lines()
        .find(|l| l.starts_with("ERROR"))
        .unwrap_or_default();
    assert!(line.starts_with("ERROR 1105 (HY000)"), "{err}");
    assert!(line.ends_with("XPATH syntax error: '***'"), "{err}");
}

#[tokio::test]
async fn statements_that_would_move_masked_values_are_refused() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    let cases = [
        (
            "CREATE TABLE copy AS SELECT email FROM customers",
            "would store",
        ),
        (
            "INSERT INTO items (id, label) SELECT id + 10, ssn FROM customers",
            "would store",
        ),
        (
            "UPDATE customers SET note = ssn WHERE id = 1",
            "would store",
        ),
        (
            "SET SESSION sql_mode = (SELECT ssn FROM customers WHERE id = 1)",
            "would store",
        ),
        ("CALL nothing()", "runs SQL out of the gateway's sight"),
        (
            "ALTER TABLE customers RENAME COLUMN email TO contact",
            "changes a relation",
        ),
    ];
    for (sql, what) in cases {
        let (_, err) = client(addr, "alice", sql).await;
        assert!(
            err.contains("ERROR 1227 (42000)") && err.contains(what),
            "{sql}: {err}"
        );
    }
    // Nothing was moved: the unmasked identity sees the tables as they were.
    let (out, err) = client(
        addr,
        "dba",
        "SELECT COUNT(*) FROM items; SELECT note FROM customers WHERE id = 1",
    )
    .await;
    assert_eq!(out, "1\nwrite to bob@example.org\n", "{err}");
    // Writes that move nothing masked go through.
    let (out, err) = client(
        addr,
        "alice",
        "UPDATE customers SET note = 'n' WHERE id = 2; SELECT note FROM customers WHERE id = 2",
    )
    .await;
    assert_eq!(out, "n\n", "{err}");
}

#[tokio::test]
async fn a_row_that_grows_past_a_packet_is_split_and_the_sequence_follows() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    let (out, err) = client(
        addr,
        "alice",
        "SELECT id, payload, code FROM big ORDER BY id",
    )
    .await;
    assert!(!err.contains("ERROR"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(lines[0].len(), 2 + BIG + 5);
    assert!(lines[0].ends_with("\t****"));
    assert_eq!(lines[1], "2\tsmall\t****");

    // The binary protocol: the row is split before it is masked, and after.
    let mut c = RawClient::connect(addr, "alice").await;
    let id = c
        .prepare("SELECT id, payload, code FROM big ORDER BY id")
        .await;
    let (_, rows) = c.execute(id).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(matches!(&rows[0][1], Value::Bytes(b) if b.len() == BIG));
    assert_eq!(rows[0][2], Value::Bytes(b"****".to_vec()));
    assert_eq!(rows[1][2], Value::Bytes(b"****".to_vec()));
}

#[tokio::test]
async fn detector_sessions_redact_what_the_detectors_find() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    let (out, err) = client(addr, "carol", "SELECT note, id FROM customers ORDER BY id").await;
    assert_eq!(out, "write to [email]\t1\nsecond\t2\n", "{err}");
}

// ---------------------------------------------------------------------------------------------
// The binary protocol
// ---------------------------------------------------------------------------------------------

/// Just enough of a MySQL client for prepared statements: a clear-text login (loopback), then
/// COM_STMT_PREPARE and COM_STMT_EXECUTE without parameters.
struct RawClient {
    stream: TcpStream,
    reader: PacketReader,
}

const MAX: usize = 64 << 20;

impl RawClient {
    async fn connect(addr: std::net::SocketAddr, user: &str) -> RawClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut c = RawClient {
            stream,
            reader: PacketReader::new(),
        };
        let greeting = c.read().await;
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_DEPRECATE_EOF
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_TRANSACTIONS
            | CapabilityFlags::CLIENT_MULTI_RESULTS
            | CapabilityFlags::CLIENT_MULTI_STATEMENTS
            | CapabilityFlags::CLIENT_PS_MULTI_RESULTS;
        let mut login = Vec::new();
        HandshakeResponse::new(
            Some(&b"secret\0"[..]),
            (10, 11, 0),
            Some(user.as_bytes()),
            Some(&b"shop"[..]),
            Some(AuthPlugin::from_bytes(b"mysql_clear_password")),
            caps,
            None,
            MAX as u32,
        )
        .serialize(&mut login);
        c.stream
            .write_all(&packet::packet(greeting.last_seq.wrapping_add(1), &login))
            .await
            .unwrap();
        let ok = c.read().await;
        assert_eq!(ok.first(), Some(0x00), "login refused: {:?}", ok.payload());
        c
    }

    async fn read(&mut self) -> packet::Packet {
        self.reader.read(&mut self.stream, MAX).await.unwrap()
    }

    async fn command(&mut self, payload: &[u8]) {
        self.stream
            .write_all(&packet::packet(0, payload))
            .await
            .unwrap();
    }

    /// Runs a text of one or more statements with COM_QUERY: one entry per result, the rows of
    /// a result set or `None` for an OK; an error ends the list.
    async fn query(&mut self, sql: &str) -> Vec<Result<Option<Vec<Vec<Value>>>, String>> {
        let mut command = vec![0x03];
        command.extend_from_slice(sql.as_bytes());
        self.command(&command).await;
        let more = |status: u16| status & 0x0008 != 0;
        // Status flags of an OK packet (or an EOF that is one): header, two lenenc integers.
        let ok_status = |p: &[u8]| {
            let (_, a) = packet::lenenc_int(&p[1..]).unwrap();
            let (_, b) = packet::lenenc_int(&p[1 + a..]).unwrap();
            u16::from_le_bytes([p[1 + a + b], p[2 + a + b]])
        };
        let mut results = Vec::new();
        loop {
            let head = self.read().await.payload().into_owned();
            match head.first() {
                Some(0xff) => {
                    results.push(Err(String::from_utf8_lossy(&head[9..]).into_owned()));
                    return results;
                }
                Some(0x00) => {
                    results.push(Ok(None));
                    if !more(ok_status(&head)) {
                        return results;
                    }
                    continue;
                }
                _ => {}
            }
            let (count, _) = packet::lenenc_int(&head).unwrap();
            let mut columns = Vec::new();
            for _ in 0..count {
                let def = self.read().await.payload().into_owned();
                columns.push(ParseBuf(&def).parse::<Column>(()).unwrap());
            }
            let columns: Arc<[Column]> = columns.into();
            let mut rows = Vec::new();
            let status = loop {
                let payload = self.read().await.payload().into_owned();
                match payload.first() {
                    Some(0xfe) if payload.len() < 0xFF_FFFF => break ok_status(&payload),
                    Some(0xff) => {
                        results.push(Err(String::from_utf8_lossy(&payload[9..]).into_owned()));
                        return results;
                    }
                    _ => {
                        let row = ParseBuf(&payload)
                            .parse::<RowDeserializer<(), Text>>(Arc::clone(&columns))
                            .unwrap()
                            .into_inner();
                        rows.push(row.unwrap());
                    }
                }
            };
            results.push(Ok(Some(rows)));
            if !more(status) {
                return results;
            }
        }
    }

    /// Prepares `sql`; returns the statement id.
    async fn prepare(&mut self, sql: &str) -> u32 {
        let mut command = vec![0x16];
        command.extend_from_slice(sql.as_bytes());
        self.command(&command).await;
        let ok = self.read().await;
        let p = ok.payload();
        assert_eq!(p.first(), Some(&0x00), "prepare failed: {p:?}");
        let id = u32::from_le_bytes(p[1..5].try_into().unwrap());
        let columns = u16::from_le_bytes([p[5], p[6]]);
        let params = u16::from_le_bytes([p[7], p[8]]);
        // With CLIENT_DEPRECATE_EOF, no EOF after the definitions.
        for _ in 0..(usize::from(columns) + usize::from(params)) {
            self.read().await;
        }
        id
    }

    /// Executes statement `id`: its columns and rows, or the server's error message.
    async fn execute(&mut self, id: u32) -> Result<(Vec<Column>, Vec<Vec<Value>>), String> {
        let mut command = vec![0x17];
        command.extend_from_slice(&id.to_le_bytes());
        command.push(0);
        command.extend_from_slice(&1u32.to_le_bytes());
        self.command(&command).await;
        let head = self.read().await.payload().into_owned();
        if head.first() == Some(&0xff) {
            return Err(String::from_utf8_lossy(&head[9..]).into_owned());
        }
        let count = usize::from(head[0]);
        let mut columns = Vec::new();
        for _ in 0..count {
            let def = self.read().await.payload().into_owned();
            columns.push(ParseBuf(&def).parse::<Column>(()).unwrap());
        }
        let columns: Arc<[Column]> = columns.into();
        let mut rows = Vec::new();
        loop {
            let p = self.read().await;
            let payload = p.payload().into_owned();
            match payload.first() {
                Some(0xfe) if payload.len() < 0xFF_FFFF => break,
                Some(0xff) => return Err(String::from_utf8_lossy(&payload[9..]).into_owned()),
                _ => {
                    let row = ParseBuf(&payload)
                        .parse::<RowDeserializer<ServerSide, Binary>>(Arc::clone(&columns))
                        .unwrap()
                        .into_inner();
                    rows.push(row.unwrap());
                }
            }
        }
        Ok((columns.to_vec(), rows))
    }
}

#[tokio::test]
async fn prepared_statements_are_masked_in_binary_rows() {
    let db = Database::create();
    let (addr, audit) = start(&db.0).await;
    let mut c = RawClient::connect(addr, "alice").await;
    let id = c
        .prepare(
            "SELECT id, email, ssn, card, born, score, joined, note FROM customers ORDER BY id",
        )
        .await;
    let (_, rows) = c.execute(id).await.unwrap();
    assert_eq!(
        rows,
        vec![
            vec![
                Value::Int(1),
                Value::Bytes(b"a***@example.com".to_vec()),
                Value::Bytes(b"*******1120".to_vec()),
                Value::Bytes(b"****".to_vec()),
                Value::NULL,
                Value::Int(8273),
                Value::Date(1970, 1, 1, 0, 0, 0, 0),
                Value::Bytes(b"write to bob@example.org".to_vec()),
            ],
            vec![
                Value::Int(2),
                Value::NULL,
                Value::NULL,
                Value::NULL,
                Value::NULL,
                Value::NULL,
                Value::NULL,
                Value::Bytes(b"second".to_vec()),
            ],
        ]
    );
    // Executed again: masked again.
    let (_, again) = c.execute(id).await.unwrap();
    assert_eq!(again, rows);
    // Derived values, in binary too.
    let derived = c
        .prepare(
            "SELECT UPPER(email), score * 2, born + INTERVAL 1 DAY FROM customers WHERE id = 1",
        )
        .await;
    let (_, rows) = c.execute(derived).await.unwrap();
    assert_no_canary("binary derived", &format!("{rows:?}"));
    assert!(
        !format!("{rows:?}").contains(&(2 * SCORE).to_string()),
        "{rows:?}"
    );
    let executions = audit
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e,
                AuditEvent::StatementFinished {
                    masked: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(executions, 3);

    // The unmasked identity reads the stored values through the same statement.
    let mut c = RawClient::connect(addr, "dba").await;
    let id = c
        .prepare("SELECT email, born, score FROM customers WHERE id = 1")
        .await;
    let (_, rows) = c.execute(id).await.unwrap();
    assert_eq!(
        rows,
        vec![vec![
            Value::Bytes(EMAIL.as_bytes().to_vec()),
            Value::Date(1980, 2, 3, 0, 0, 0, 0),
            Value::Int(i64::from(SCORE)),
        ]]
    );
}

#[tokio::test]
async fn each_result_of_a_multi_statement_text_is_planned_by_its_statement() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    let mut c = RawClient::connect(addr, "alice").await;
    let bytes = |s: &str| Value::Bytes(s.as_bytes().to_vec());
    let results = c
        .query(
            "SELECT label FROM items; \
             SELECT c FROM (SELECT email AS c FROM customers WHERE id = 1) t; \
             SELECT email FROM customers WHERE id = 1; \
             UPDATE items SET label = 'uno' WHERE id = 1; \
             SELECT email, ssn, label FROM customers, items WHERE customers.id = 1",
        )
        .await;
    assert_eq!(
        results,
        vec![
            Ok(Some(vec![vec![bytes("one")]])),
            // Aliased: masked whole (NULL, since a rule on the table it reads says null).
            Ok(Some(vec![vec![Value::NULL]])),
            Ok(Some(vec![vec![bytes("a***@example.com")]])),
            Ok(None),
            Ok(Some(vec![vec![
                bytes("a***@example.com"),
                bytes("*******1120"),
                bytes("uno"),
            ]])),
        ]
    );
    // A procedure returns any number of results, which would shift the statements after it.
    let results = c.query("CALL nothing(); SELECT email FROM customers").await;
    assert!(
        matches!(&results[..], [Err(m)] if m.contains("must be the last statement")),
        "{results:?}"
    );
    // The session goes on.
    let results = c.query("SELECT label FROM items").await;
    assert_eq!(results, vec![Ok(Some(vec![vec![bytes("uno")]]))]);
}
