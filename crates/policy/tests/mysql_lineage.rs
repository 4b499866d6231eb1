//! Lineage of MySQL statements: one row per case, with the reason it is there. MySQL's lineage is
//! coarse (no outputs): each row states the relations and opaque sources the statement reads,
//! whether it has predicates, and its hazards. All failing rows are reported together.

use std::sync::Arc;

use gateway_core::masking::{Hazard, Lineage, RelationName, SourceColumn, StatementLineage};
use policy::analysis::{analyze, lineage, Dialect, ReadingContext};

fn ctx() -> ReadingContext {
    ReadingContext {
        default_schema: Some("shop".into()),
        ..ReadingContext::new(Dialect::Mysql)
    }
}

fn row(name: &str) -> SourceColumn {
    let (schema, name) = match name.split_once('.') {
        Some((s, n)) => (s, n),
        None => ("shop", name),
    };
    SourceColumn::WholeRow {
        relation: RelationName {
            schema: Some(Arc::from(schema)),
            name: Arc::from(name),
        },
    }
}

fn opaque(name: &str) -> SourceColumn {
    SourceColumn::Opaque {
        function: Arc::from(name),
    }
}

/// What a row expects of a statement's lineage. Hazards are named by kind: `aliased`,
/// `dynamic`, `untraced`, `stores`, `server_file`, `defines`, `alters`.
struct Case {
    sql: &'static str,
    why: &'static str,
    reads: Vec<SourceColumn>,
    predicates: bool,
    hazards: &'static [&'static str],
    /// For `stores`: the sources stored.
    stored: Vec<SourceColumn>,
}

fn case(
    sql: &'static str,
    why: &'static str,
    reads: Vec<SourceColumn>,
    predicates: bool,
    hazards: &'static [&'static str],
) -> Case {
    Case {
        sql,
        why,
        reads,
        predicates,
        hazards,
        stored: Vec::new(),
    }
}

fn storing(mut c: Case, stored: Vec<SourceColumn>) -> Case {
    c.stored = stored;
    c
}

fn kind(h: &Hazard) -> &'static str {
    match h {
        Hazard::AliasedOrigins => "aliased",
        Hazard::Dynamic => "dynamic",
        Hazard::UntracedOutput => "untraced",
        Hazard::Stores { .. } => "stores",
        Hazard::ServerFile { .. } => "server_file",
        Hazard::Defines { .. } => "defines",
        Hazard::Alters { .. } => "alters",
        _ => "other",
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "SELECT email, ssn FROM customers",
            "plain columns: the wire's origins can be trusted",
            vec![row("customers")],
            false,
            &[],
        ),
        case(
            "SELECT UPPER(email) AS e FROM shop.customers c WHERE id = 1",
            "built-ins pass their arguments through; a WHERE is a predicate",
            vec![row("customers")],
            true,
            &[],
        ),
        case(
            "CREATE PROCEDURE p() BEGIN INSERT INTO scratch SELECT email FROM customers; END",
            "a stored program read from its tokens: it defines what runs later, reading anything",
            vec![row("scratch"), row("customers")],
            true,
            &["aliased", "defines"],
        ),
        case(
            "SET STATEMENT max_statement_time=5 FOR SELECT UPPER(email) AS e FROM customers WHERE id = 1",
            "MariaDB's SET STATEMENT: the lineage of the statement it runs",
            vec![row("customers")],
            true,
            &[],
        ),
        case(
            "SELECT c FROM (SELECT email AS c FROM customers) t",
            "a derived table's alias is reported as the origin",
            vec![row("customers")],
            false,
            &["aliased"],
        ),
        case(
            "WITH w AS (SELECT email AS c FROM customers) SELECT c FROM w",
            "a CTE's name is reported as the origin",
            vec![row("customers")],
            false,
            &["aliased"],
        ),
        case(
            "SELECT email FROM customers UNION SELECT label FROM items",
            "set operations",
            vec![row("customers"), row("items")],
            false,
            &["aliased"],
        ),
        case(
            "SELECT get_email(id) FROM items",
            "a stored function may read any table",
            vec![row("items"), opaque("get_email")],
            false,
            &[],
        ),
        case(
            "SELECT shop.upper(label) FROM items",
            "a qualified name is never a built-in",
            vec![row("items"), opaque("shop.upper")],
            false,
            &[],
        ),
        case(
            "SELECT @x, @@session.sql_mode",
            "variables may hold anything stored earlier",
            vec![opaque("@x"), opaque("@@session.sql_mode")],
            false,
            &[],
        ),
        case(
            "SELECT COUNT(*) FROM items GROUP BY label ORDER BY 1",
            "grouping and ordering are predicates",
            vec![row("items")],
            true,
            &[],
        ),
        case(
            "SELECT i.label FROM items i JOIN customers c ON c.id = i.id",
            "a join is a predicate",
            vec![row("items"), row("customers")],
            true,
            &[],
        ),
        storing(
            case(
                "INSERT INTO items (label) SELECT email FROM customers",
                "INSERT ... SELECT stores what it reads, and may copy the target's own columns",
                vec![row("customers"), row("items")],
                false,
                &["stores"],
            ),
            vec![row("customers"), row("items")],
        ),
        case(
            "INSERT INTO items (id, label) VALUES (1, 'a'), (2, UPPER('b'))",
            "constants store nothing anyone could not write",
            vec![row("items")],
            false,
            &[],
        ),
        storing(
            case(
                "INSERT INTO items (label) VALUES (@x)",
                "a variable may hold a masked value",
                vec![row("items"), opaque("@x")],
                false,
                &["stores"],
            ),
            vec![opaque("@x")],
        ),
        case(
            "UPDATE customers SET score = 1 WHERE id = 3",
            "a constant assigned stores nothing",
            vec![row("customers")],
            true,
            &[],
        ),
        storing(
            case(
                "UPDATE customers SET card = ssn WHERE id = 3",
                "copying a column to another is a store",
                vec![row("customers")],
                true,
                &["stores"],
            ),
            vec![row("customers")],
        ),
        storing(
            case(
                "CREATE TABLE copy AS SELECT email FROM customers",
                "CREATE TABLE ... SELECT stores what it reads",
                vec![row("customers"), row("copy")],
                false,
                &["stores"],
            ),
            vec![row("customers")],
        ),
        storing(
            case(
                "SET SESSION sql_mode = (SELECT ssn FROM customers LIMIT 1)",
                "a system variable is read back by SHOW VARIABLES",
                vec![row("customers")],
                false,
                &["stores"],
            ),
            vec![row("customers")],
        ),
        case(
            "SET @x = (SELECT ssn FROM customers LIMIT 1)",
            "a user variable is read back only as an opaque value",
            vec![row("customers")],
            false,
            &[],
        ),
        case(
            "CALL refresh_report()",
            "a procedure's results and statements are out of sight",
            vec![],
            false,
            &["dynamic", "untraced", "aliased"],
        ),
        case(
            "SELECT LOAD_FILE('/etc/passwd')",
            "server files",
            vec![opaque("load_file")],
            false,
            &["server_file"],
        ),
        storing(
            case(
                "SELECT GET_LOCK(email, 0) FROM customers",
                "lock names are visible to every session",
                vec![row("customers")],
                false,
                &["stores"],
            ),
            vec![row("customers")],
        ),
        case(
            "ALTER TABLE customers RENAME COLUMN email TO contact",
            "a rename moves a value away from where a rule names it",
            vec![row("customers")],
            false,
            &["alters"],
        ),
        case(
            "SELECT email INTO OUTFILE '/tmp/x' FROM customers",
            "a file on the server; read from the tokens only, so every read may be a predicate",
            vec![row("customers")],
            true,
            &["aliased", "server_file"],
        ),
        case(
            "HANDLER customers READ FIRST",
            "read from the tokens only: nothing is trusted",
            vec![row("customers")],
            true,
            &["aliased"],
        ),
        case(
            "SELECT x FROM JSON_TABLE('[1]', '$[*]' COLUMNS (x INT PATH '$')) AS j",
            "a table function's columns are named by its alias",
            vec![],
            false,
            &["aliased"],
        ),
    ]
}

fn check(c: &Case, st: &StatementLineage, problems: &mut Vec<String>) {
    let mut say = |what: String| problems.push(format!("{} ({}): {what}", c.sql, c.why));
    if st.outputs.is_some() {
        say("outputs are traced".into());
    }
    for r in &c.reads {
        if !st.reads.contains(r) {
            say(format!("reads lack {r:?}: {:?}", st.reads));
        }
    }
    for r in &st.reads {
        if !c.reads.contains(r) {
            say(format!("reads hold {r:?} too"));
        }
    }
    if c.predicates == st.predicates.is_empty() {
        say(format!("predicates: {:?}", st.predicates));
    }
    let mut kinds: Vec<&str> = st.hazards.iter().map(kind).collect();
    kinds.sort_unstable();
    let mut expected = c.hazards.to_vec();
    expected.sort_unstable();
    if kinds != expected {
        say(format!("hazards {kinds:?}, expected {expected:?}"));
    }
    if let Some(Hazard::Stores { sources }) = st
        .hazards
        .iter()
        .find(|h| matches!(h, Hazard::Stores { .. }))
    {
        let mut got = sources.clone();
        let mut want = c.stored.clone();
        let key = |s: &SourceColumn| format!("{s:?}");
        got.sort_by_key(key);
        want.sort_by_key(key);
        if got != want {
            say(format!("stores {got:?}, expected {want:?}"));
        }
    }
}

#[test]
fn mysql_lineage_table() {
    let mut problems = Vec::new();
    for c in cases() {
        let analysis = analyze(c.sql, &ctx());
        if let Some(f) = &analysis.failure {
            problems.push(format!("{}: does not parse: {}", c.sql, f.message));
            continue;
        }
        let Some(l) = analysis.lineage.as_deref() else {
            problems.push(format!("{}: no lineage", c.sql));
            continue;
        };
        match l.statements.as_slice() {
            [st] => check(&c, st, &mut problems),
            other => problems.push(format!("{}: {} statements", c.sql, other.len())),
        }
        // `lineage` gives the analysis's own.
        if lineage(c.sql, &ctx()).as_ref() != Some(l) {
            problems.push(format!("{}: lineage() differs from the analysis's", c.sql));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_statement_of_a_text_has_a_lineage() {
    let l: Lineage = lineage("SELECT 1; CALL p(); SELECT email FROM customers", &ctx()).unwrap();
    assert_eq!(l.statements.len(), 3);
    assert!(l.statements[1].hazards.contains(&Hazard::Dynamic));
    assert!(lineage("SELECT FROM WHERE", &ctx()).is_none());
}
