//! SQL analysis: turns statement text into the dialect-neutral [`crate::facts`] that rules read.
//!
//! Each dialect is read with the grammar closest to the server's own: PostgreSQL with pg_query
//! (PostgreSQL's parser compiled in, plus its PL/pgSQL parser for DO blocks and function bodies),
//! MySQL/MariaDB with sqlparser's MySQL dialect, adjusted for versioned comments and for the
//! sql_mode flags that change lexing. Whatever cannot be parsed is reported as a
//! [`ParseFailure`](crate::facts::ParseFailure) and nothing else, so that callers fail closed.
//!
//! The entry point is [`analyze`]; it never panics, whatever the input.

mod filter;
mod lineage;
mod mysql;
mod mysql_builtins;
mod mysql_lineage;
mod pg_builtins;
mod pg_nodes;
mod pg_parse;
mod postgres;
mod shape;

pub use shape::Shape;

use gateway_core::masking::Lineage;

use crate::facts::{
    Analysis, Class, FailureKind, Filter, ObjectName, ParseFailure, StatementFacts,
};

/// The SQL dialect a statement is written in, i.e. the kind of server behind the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL, read with PostgreSQL's own parser.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

/// The session settings that change how a statement text is read. Analysis results are only
/// valid for the context they were computed in: a cache must key on it as well as on the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadingContext {
    /// Which grammar to use.
    pub dialect: Dialect,
    /// PostgreSQL: the schema unqualified names resolve to when known (first writable entry of
    /// search_path), else `None`. MySQL: the session's default database, else `None`.
    pub default_schema: Option<String>,
    /// MySQL sql_mode ANSI_QUOTES: double quotes delimit identifiers, not strings.
    pub ansi_quotes: bool,
    /// MySQL sql_mode NO_BACKSLASH_ESCAPES: a backslash inside a string is an ordinary character.
    pub no_backslash_escapes: bool,
}

impl ReadingContext {
    /// A context for `dialect` with no default schema and default lexing flags.
    pub fn new(dialect: Dialect) -> Self {
        ReadingContext {
            dialect,
            default_schema: None,
            ansi_quotes: false,
            no_backslash_escapes: false,
        }
    }
}

/// Analyses `sql`, which may hold several statements, as read in `ctx`.
///
/// Returns one [`StatementFacts`] per statement, in order, or a [`ParseFailure`] (and no
/// statements) when any part of the text cannot be parsed. Text that holds only whitespace and
/// comments yields no statements and no failure. Never panics: should a parser panic on some
/// input, that is reported as a failure too.
pub fn analyze(sql: &str, ctx: &ReadingContext) -> Analysis {
    let run = std::panic::AssertUnwindSafe(|| match ctx.dialect {
        Dialect::Postgres => postgres::analyze(sql, ctx),
        Dialect::Mysql => mysql::analyze(sql, ctx),
    });
    match std::panic::catch_unwind(run) {
        Ok(analysis) => analysis,
        Err(_) => failed(FailureKind::Unreadable, INTERNAL_FAILURE.to_owned(), None),
    }
}

/// The shape of `sql` as read in `ctx`: the text with its literals taken out, under which its
/// analysis may be shared with every text of the same shape (see [`analyze_shaped`]). `None` when
/// the text has no literal to take out, or when it is not read here exactly as the server reads
/// it; the text is then its own key. A MySQL shape depends on the reading's sql_mode switches.
pub fn shape(sql: &str, ctx: &ReadingContext) -> Option<Shape> {
    match ctx.dialect {
        Dialect::Postgres => shape::postgres(sql),
        Dialect::Mysql => mysql::shape(sql, ctx),
    }
}

/// [`analyze`], for a text whose [`shape`] is `shape`: also says whether the analysis holds for
/// every text of that shape, i.e. whether it may be cached under the shape. It does only when
/// each literal the shape took out is a whole constant in the parse tree and no fact was drawn
/// from a constant's value.
pub fn analyze_shaped(sql: &str, ctx: &ReadingContext, shape: &Shape) -> (Analysis, bool) {
    let run = std::panic::AssertUnwindSafe(|| match ctx.dialect {
        Dialect::Postgres => postgres::analyze_shaped(sql, ctx, &shape.literals),
        Dialect::Mysql => mysql::analyze_shaped(sql, ctx, &shape.literals),
    });
    match std::panic::catch_unwind(run) {
        Ok(result) => result,
        Err(_) => (
            failed(FailureKind::Unreadable, INTERNAL_FAILURE.to_owned(), None),
            false,
        ),
    }
}

/// The lineage of `sql` as read in `ctx`: for each statement, in order, where its result values
/// come from (see [`gateway_core::masking::Lineage`]). The same as [`analyze`] gives in
/// [`Analysis::lineage`], without the rest of the analysis; for reading view definitions. `None`
/// when the text does not parse. MySQL's lineage is coarse (see `mysql_lineage`): it lists what
/// each statement reads and stores, not where each result column comes from.
pub fn lineage(sql: &str, ctx: &ReadingContext) -> Option<Lineage> {
    match ctx.dialect {
        Dialect::Postgres => std::panic::catch_unwind(|| postgres::lineage(sql)).unwrap_or(None),
        Dialect::Mysql => analyze(sql, ctx).lineage.map(|l| (*l).clone()),
    }
}

/// The failure reported when a parser panics (it should not; the text is refused regardless).
const INTERNAL_FAILURE: &str = "the SQL analyser failed on this statement text";

/// An analysis that failed as a whole.
fn failed(kind: FailureKind, message: String, position: Option<usize>) -> Analysis {
    Analysis {
        statements: Vec::new(),
        failure: Some(ParseFailure {
            kind,
            message,
            position,
        }),
        fingerprint: None,
        lineage: None,
    }
}

/// Functions that run SQL text given to them as a value (or read relations named by a value):
/// what they do is decided at run time, out of the analysis' sight. Matched on the last part of
/// the name, so `pg_catalog.query_to_xml` is one too.
const DYNAMIC_SQL_FUNCTIONS: &[&str] = &[
    // Run a query string on another connection (possibly to this very database).
    "dblink",
    "dblink_exec",
    "dblink_send_query",
    "dblink_open",
    // Run a query string in this session.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "ts_stat",
    // Read the relation, schema or database named by a value.
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
];

/// Whether calling `function` (lower-case, as recorded) runs SQL decided at run time.
fn runs_dynamic_sql(function: &str) -> bool {
    let name = function.rsplit('.').next().unwrap_or(function);
    DYNAMIC_SQL_FUNCTIONS.contains(&name)
}

/// Records that the statement runs SQL built at run time (`EXECUTE` of a string, a body in a
/// language the gateway cannot read, a function that runs a query string): the `dynamic_sql`
/// sub-kind, which the engine treats as "could be anything", and the procedural class, whose
/// effects analysis cannot see.
fn dynamic_sql(acc: &mut Collector) {
    acc.class(Class::Procedural);
    acc.kind("dynamic_sql");
}

/// How consequential a class is, for folding several effects of one statement into one class.
/// Procedural is the highest: code whose effects are not visible can do anything the others do.
fn severity(class: Class) -> u8 {
    match class {
        Class::Read => 0,
        Class::Utility => 1,
        Class::Transaction => 2,
        Class::Session => 3,
        Class::Write => 4,
        Class::Ddl => 5,
        Class::Dcl => 6,
        Class::Procedural => 7,
    }
}

/// How permissive a filter is; the weakest (most rows touched) wins.
fn filter_weakness(filter: Filter) -> u8 {
    match filter {
        Filter::Present => 0,
        Filter::Trivial => 1,
        Filter::Absent => 2,
    }
}

/// Accumulates the facts of one statement while a dialect walks its tree.
#[derive(Debug, Default)]
struct Collector {
    class: Option<Class>,
    kinds: Vec<String>,
    reads: Vec<ObjectName>,
    writes: Vec<ObjectName>,
    functions: Vec<String>,
    filter: Option<Filter>,
}

impl Collector {
    /// Raises the class to `class` if that is more consequential than what is recorded.
    fn class(&mut self, class: Class) {
        match self.class {
            Some(current) if severity(current) >= severity(class) => {}
            _ => self.class = Some(class),
        }
    }

    /// Records a sub-kind once, keeping first-seen order.
    fn kind(&mut self, kind: &str) {
        if !self.kinds.iter().any(|k| k == kind) {
            self.kinds.push(kind.to_owned());
        }
    }

    fn read(&mut self, object: ObjectName) {
        if !self.reads.contains(&object) {
            self.reads.push(object);
        }
    }

    fn write(&mut self, object: ObjectName) {
        if !self.writes.contains(&object) {
            self.writes.push(object);
        }
    }

    fn function(&mut self, name: String) {
        if !self.functions.contains(&name) {
            self.functions.push(name);
        }
    }

    /// Records the filter of one UPDATE/DELETE; the weakest one of the statement is kept.
    fn filter(&mut self, filter: Filter) {
        match self.filter {
            Some(current) if filter_weakness(current) >= filter_weakness(filter) => {}
            _ => self.filter = Some(filter),
        }
    }

    /// Folds everything another collector saw into this one (its kinds after ours).
    fn absorb(&mut self, other: Collector) {
        if let Some(class) = other.class {
            self.class(class);
        }
        for kind in &other.kinds {
            self.kind(kind);
        }
        other.reads.into_iter().for_each(|o| self.read(o));
        other.writes.into_iter().for_each(|o| self.write(o));
        other.functions.into_iter().for_each(|f| self.function(f));
        if let Some(filter) = other.filter {
            self.filter(filter);
        }
    }

    /// A collector holding the facts of an already analysed statement.
    fn from_facts(facts: StatementFacts) -> Self {
        Collector {
            class: Some(facts.class),
            kinds: facts.kinds,
            reads: facts.reads,
            writes: facts.writes,
            functions: facts.functions,
            filter: facts.filter,
        }
    }

    fn finish(self) -> StatementFacts {
        StatementFacts {
            class: self.class.unwrap_or(Class::Utility),
            kinds: self.kinds,
            reads: self.reads,
            writes: self.writes,
            functions: self.functions,
            filter: self.filter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce without a new dependency.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % (n as u64)).unwrap_or(0)
        }
    }

    const SEEDS: &[&str] = &[
        "SELECT a, b FROM t WHERE id = 5",
        "WITH d AS (DELETE FROM t WHERE true RETURNING *) SELECT * FROM d",
        "DO $$ BEGIN DELETE FROM t; EXECUTE 'x'; END $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN RETURN 1; END $f$",
        "EXPLAIN ANALYZE UPDATE t SET a = 1 WHERE 1=1",
        "COPY (SELECT 1) TO STDOUT; PREPARE p AS DELETE FROM t",
        "SELECT E'\\''; SELECT U&\"d\\0061ta\" FROM \"T\"",
        "/*!50000 DROP TABLE t */ SELECT 1 # x",
        "LOAD DATA INFILE 'x' INTO TABLE t; HANDLER t OPEN; PREPARE s FROM 'DELETE FROM t'",
        "SELECT * FROM t INTO OUTFILE '/tmp/x'; SELECT `a` FROM `db`.`t` /*M!100000 ; x */",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "CREATE PROCEDURE p(IN x INT) BEGIN DECLARE c CURSOR FOR SELECT a FROM t; IF x THEN DELETE FROM t; ELSE l: LOOP LEAVE l; END LOOP; END IF; END; SELECT 1",
        "CREATE TRIGGER g BEFORE INSERT ON t FOR EACH ROW BEGIN CASE WHEN NEW.a THEN SET NEW.b = CASE 1 WHEN 1 THEN 2 END; END CASE; REPEAT SELECT 1; UNTIL 1 END REPEAT; END",
        "SET STATEMENT max_statement_time=1 FOR SELECT 1; CREATE FUNCTION f() RETURNS INT RETURN (SELECT 1)",
    ];

    const FRAGMENTS: &[&str] = &[
        "SELECT",
        "DELETE",
        "BEGIN",
        "END",
        "IF",
        "CASE",
        ";",
        "FROM",
        "WHERE",
        "(",
        ")",
        "'",
        "\"",
        "`",
        "$$",
        "$a$",
        "/*",
        "*/",
        "/*!",
        "--",
        "#",
        ";",
        "\\",
        "E'",
        "U&\"",
        "WITH",
        "AS",
        "DO",
        "BEGIN",
        "END",
        "1=1",
        "OR",
        "NOT",
        "IN",
        ",",
        ".",
        "::",
        "[",
        "]",
        "\u{0}",
        "é",
        "\u{1F600}",
        " ",
        "\n",
        "INTO",
        "OUTFILE",
        "LOAD",
        "DATA",
        "HANDLER",
    ];

    /// Builds a mutated, truncated or spliced statement text from the seeds and fragments.
    fn garbage(rng: &mut Xorshift) -> String {
        let mut s = String::new();
        match rng.below(4) {
            0 => {
                let seed = SEEDS[rng.below(SEEDS.len())];
                let cut = rng.below(seed.len() + 1);
                // Truncate at a char boundary at or before `cut`.
                let cut = (0..=cut)
                    .rev()
                    .find(|&i| seed.is_char_boundary(i))
                    .unwrap_or(0);
                s.push_str(&seed[..cut]);
            }
            1 => {
                for _ in 0..rng.below(20) {
                    s.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
                    if rng.below(2) == 0 {
                        s.push(' ');
                    }
                }
            }
            2 => {
                let seed = SEEDS[rng.below(SEEDS.len())];
                for c in seed.chars() {
                    if rng.below(10) == 0 {
                        s.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
                    } else {
                        s.push(c);
                    }
                }
            }
            _ => {
                for _ in 0..rng.below(60) {
                    let c =
                        char::from_u32(u32::try_from(rng.below(0x80)).unwrap_or(32)).unwrap_or(' ');
                    s.push(c);
                }
            }
        }
        s
    }

    /// The shape's text between markers is the original text between its literals, and each
    /// literal starts where the shape says: putting the literals back gives the text.
    fn assert_shape_rebuilds(text: &str, shape: &Shape) {
        let mut parts = shape.key().split('\u{1}');
        let mut rebuilt = parts.next().unwrap_or("").to_owned();
        for (part, &start) in parts.zip(&shape.literals) {
            assert_eq!(rebuilt.len(), start, "{text:?}: a literal starts elsewhere");
            let rest = &part[1..];
            // A string runs to its closing quote (`''` inside it), a number over its digits.
            let bytes = &text.as_bytes()[start..];
            let len = if bytes.first() == Some(&b'\'') {
                let mut i = 1;
                loop {
                    match (bytes.get(i), bytes.get(i + 1)) {
                        (Some(b'\''), Some(b'\'')) => i += 2,
                        (Some(b'\''), _) => break i + 1,
                        (Some(_), _) => i += 1,
                        (None, _) => panic!("{text:?}: an unterminated literal at {start}"),
                    }
                }
            } else {
                bytes
                    .iter()
                    .take_while(|b| b.is_ascii_digit() || **b == b'.')
                    .count()
            };
            assert!(len > 0, "{text:?}: no literal at {start}");
            let after = start + len;
            assert!(
                text[after..].starts_with(rest),
                "{text:?}: the shape goes on with {rest:?} after the literal at {start}"
            );
            rebuilt.push_str(&text[start..after]);
            rebuilt.push_str(rest);
        }
        assert_eq!(rebuilt, text, "the shape does not rebuild the text");
    }

    /// A MySQL shape has one marker per literal, and each literal starts, in order, where a
    /// number or a quoted, hex, bit or national string can start.
    fn assert_mysql_shape(text: &str, shape: &Shape) {
        assert_eq!(
            shape.key().matches('\u{1}').count(),
            shape.literals.len(),
            "{text:?}: {shape:?}"
        );
        assert!(
            shape.literals.windows(2).all(|w| w[0] < w[1]),
            "{text:?}: {shape:?}"
        );
        for &at in &shape.literals {
            let first = text.get(at..).and_then(|rest| rest.chars().next());
            assert!(
                first.is_some_and(|c| c.is_ascii_digit() || ".'\"xXbBnN".contains(c)),
                "{text:?}: no literal at {at} ({shape:?})"
            );
        }
    }

    #[test]
    fn analyze_never_panics_on_garbage() {
        let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
        let contexts = [
            ReadingContext::new(Dialect::Postgres),
            ReadingContext {
                default_schema: Some("app".into()),
                ..ReadingContext::new(Dialect::Postgres)
            },
            ReadingContext::new(Dialect::Mysql),
            ReadingContext {
                dialect: Dialect::Mysql,
                default_schema: Some("shop".into()),
                ansi_quotes: true,
                no_backslash_escapes: true,
            },
        ];
        let mut failures = 0usize;
        let mut shaped = 0usize;
        for i in 0..3000 {
            let text = garbage(&mut rng);
            let ctx = &contexts[i % contexts.len()];
            if let Some(shape) = std::panic::catch_unwind(|| shape(&text, ctx))
                .unwrap_or_else(|_| panic!("shape panicked on {text:?}"))
            {
                match ctx.dialect {
                    Dialect::Postgres => assert_shape_rebuilds(&text, &shape),
                    Dialect::Mysql => assert_mysql_shape(&text, &shape),
                }
                shaped += 1;
            }
            let result = std::panic::catch_unwind(|| analyze(&text, ctx));
            let analysis = match result {
                Ok(a) => a,
                Err(_) => panic!("analyze panicked on {text:?} ({:?})", ctx.dialect),
            };
            if let Some(failure) = &analysis.failure {
                // `analyze` turns a parser panic into this failure: the test must still see it.
                assert_ne!(
                    failure.message, INTERNAL_FAILURE,
                    "analysis panicked on {text:?}"
                );
                failures += 1;
                assert!(
                    analysis.statements.is_empty(),
                    "a failure comes with no statements: {text:?}"
                );
            }
        }
        assert!(
            shaped > 100,
            "only {shaped} of 3000 garbage texts had a shape"
        );
        // Most garbage must be refused; this only guards against a generator that makes valid SQL.
        assert!(
            failures > 1000,
            "only {failures} of 3000 garbage texts failed to parse"
        );
    }

    #[test]
    fn severity_orders_classes() {
        let mut c = Collector::default();
        c.class(Class::Read);
        c.class(Class::Write);
        c.class(Class::Read);
        assert_eq!(c.class, Some(Class::Write));
        c.filter(Filter::Present);
        c.filter(Filter::Trivial);
        c.filter(Filter::Present);
        assert_eq!(c.filter, Some(Filter::Trivial));
    }
}
