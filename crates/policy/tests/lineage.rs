//! Lineage of PostgreSQL statements: one row per case, with the reason it is there; each row
//! states the exact outputs, predicates and hazards. All failing rows are reported together.
//!
//! Every row is also checked for what holds of any lineage: `reads` holds every source of the
//! outputs, predicates and stored values, and `*` outputs' whole rows; and the analysis carries
//! the same lineage as [`lineage`].

use std::sync::Arc;

use gateway_core::masking::{
    Hazard, Lineage, OutputColumn, RelationName, SourceColumn, StatementLineage,
};
use policy::analysis::{analyze, lineage, Dialect, ReadingContext};

fn rel(name: &str) -> RelationName {
    RelationName {
        schema: None,
        name: Arc::from(name),
    }
}

fn qrel(schema: &str, name: &str) -> RelationName {
    RelationName {
        schema: Some(Arc::from(schema)),
        name: Arc::from(name),
    }
}

/// `table.column`.
fn col(table: &str, column: &str) -> SourceColumn {
    SourceColumn::Column {
        relation: Some(rel(table)),
        column: Arc::from(column),
    }
}

/// `schema.table.column`.
fn qcol(schema: &str, table: &str, column: &str) -> SourceColumn {
    SourceColumn::Column {
        relation: Some(qrel(schema, table)),
        column: Arc::from(column),
    }
}

/// A column of that name in any relation.
fn any(column: &str) -> SourceColumn {
    SourceColumn::Column {
        relation: None,
        column: Arc::from(column),
    }
}

fn row(table: &str) -> SourceColumn {
    SourceColumn::WholeRow {
        relation: rel(table),
    }
}

fn opaque(function: &str) -> SourceColumn {
    SourceColumn::Opaque {
        function: Arc::from(function),
    }
}

fn plain(sources: Vec<SourceColumn>) -> OutputColumn {
    OutputColumn::Value {
        sources,
        plain: true,
    }
}

fn derived(sources: Vec<SourceColumn>) -> OutputColumn {
    OutputColumn::Value {
        sources,
        plain: false,
    }
}

/// A value from constants and parameters only.
fn constant() -> OutputColumn {
    derived(vec![])
}

fn star(table: &str) -> OutputColumn {
    OutputColumn::Star {
        relation: rel(table),
    }
}

fn stores(sources: Vec<SourceColumn>) -> Hazard {
    Hazard::Stores { sources }
}

fn server_file(function: &str) -> Hazard {
    Hazard::ServerFile {
        function: Arc::from(function),
    }
}

/// One row: the statement, why it is here, and its expected lineage (of its statement
/// `statement`, 0-based).
struct Case {
    sql: &'static str,
    why: &'static str,
    outputs: Option<Vec<OutputColumn>>,
    predicates: Vec<SourceColumn>,
    hazards: Vec<Hazard>,
}

fn case(
    sql: &'static str,
    why: &'static str,
    outputs: Option<Vec<OutputColumn>>,
    predicates: Vec<SourceColumn>,
    hazards: Vec<Hazard>,
) -> Case {
    Case {
        sql,
        why,
        outputs,
        predicates,
        hazards,
    }
}

fn ctx() -> ReadingContext {
    ReadingContext::new(Dialect::Postgres)
}

fn lineage_of(sql: &str) -> Lineage {
    lineage(sql, &ctx()).unwrap_or_else(|| panic!("{sql}: no lineage"))
}

/// What every lineage must hold, whatever the statement.
fn invariants(sql: &str, st: &StatementLineage, problems: &mut Vec<String>) {
    let mut needed: Vec<SourceColumn> = st.predicates.clone();
    for out in st.outputs.iter().flatten() {
        match out {
            OutputColumn::Star { relation } => needed.push(SourceColumn::WholeRow {
                relation: relation.clone(),
            }),
            OutputColumn::Value { sources, .. } => needed.extend(sources.iter().cloned()),
            other => problems.push(format!("{sql}: unexpected output {other:?}")),
        }
    }
    for h in &st.hazards {
        if let Hazard::Stores { sources } = h {
            needed.extend(sources.iter().cloned());
            if sources.is_empty() {
                problems.push(format!("{sql}: a Stores hazard that stores nothing"));
            }
        }
    }
    for s in needed {
        if !st.reads.contains(&s) {
            problems.push(format!("{sql}: {s:?} is not in reads {:?}", st.reads));
        }
    }
    for (i, s) in st.reads.iter().enumerate() {
        if st.reads[..i].contains(s) {
            problems.push(format!("{sql}: {s:?} twice in reads"));
        }
    }
    for (i, s) in st.predicates.iter().enumerate() {
        if st.predicates[..i].contains(s) {
            problems.push(format!("{sql}: {s:?} twice in predicates"));
        }
    }
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    vec![
        // Plain columns, aliases, qualification.
        case(
            "SELECT id, name FROM accounts WHERE id = $1",
            "a point select: two plain columns, the filter's column a predicate",
            Some(vec![plain(vec![col("accounts", "id")]), plain(vec![col("accounts", "name")])]),
            vec![col("accounts", "id")],
            vec![],
        ),
        case(
            "SELECT ssn AS x FROM customers",
            "an alias renames, the value stays the column's",
            Some(vec![plain(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT c.ssn, public.customers.email FROM customers c, public.customers",
            "an alias, and a schema-qualified reference to a schema-qualified relation",
            Some(vec![
                plain(vec![col("customers", "ssn")]),
                plain(vec![qcol("public", "customers", "email")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT ssn FROM customers c JOIN orders o ON o.customer_id = c.id",
            "an unqualified name two tables could own: a column of that name in any relation",
            Some(vec![plain(vec![any("ssn")])]),
            vec![col("orders", "customer_id"), col("customers", "id")],
            vec![],
        ),
        case(
            "SELECT ((((((((((ssn)))))))))) FROM customers",
            "parentheses keep a reference plain",
            Some(vec![plain(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        // Stars.
        case(
            "SELECT * FROM customers",
            "star over one table",
            Some(vec![star("customers")]),
            vec![],
            vec![],
        ),
        case(
            "SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id",
            "star over a join: each table in FROM order",
            Some(vec![star("customers"), star("orders")]),
            vec![col("orders", "customer_id"), col("customers", "id")],
            vec![],
        ),
        case(
            "SELECT o.*, c.ssn FROM customers c, orders o",
            "a qualified star is that item only",
            Some(vec![star("orders"), plain(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT * FROM (SELECT ssn, lower(email) FROM customers) s",
            "star over a subquery inlines its outputs",
            Some(vec![
                plain(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "email")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "WITH x AS (SELECT ssn FROM customers) SELECT * FROM x",
            "star over a CTE inlines its outputs",
            Some(vec![plain(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT s.* FROM (SELECT * FROM customers) s",
            "a star through a subquery stays a star",
            Some(vec![star("customers")]),
            vec![],
            vec![],
        ),
        case(
            "SELECT * FROM a JOIN b USING (id)",
            "USING reorders star's columns: the list cannot be traced",
            None,
            vec![],
            vec![Hazard::UntracedOutput],
        ),
        case(
            "SELECT x FROM (SELECT * FROM customers) s(x)",
            "an alias list over a star: the name says nothing about which column",
            Some(vec![derived(vec![col("customers", "x"), row("customers")])]),
            vec![],
            vec![],
        ),
        // Expressions.
        case(
            "SELECT ssn || '', lower(email), substr(ssn, 1, 3), ssn::int FROM customers",
            "concatenation, built-in functions and casts derive from their arguments",
            Some(vec![
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "email")]),
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "ssn")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT CASE WHEN vip THEN ssn END, COALESCE(NULL, ssn), format('%s', ssn) FROM customers",
            "CASE carries its conditions too; COALESCE and format their arguments",
            Some(vec![
                derived(vec![col("customers", "vip"), col("customers", "ssn")]),
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "ssn")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT ARRAY[ssn, email], ssn[1], (address).city, doc -> 'a' ->> 'b' FROM customers",
            "arrays, subscripts, field selection and JSON operators",
            Some(vec![
                derived(vec![col("customers", "ssn"), col("customers", "email")]),
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "address")]),
                derived(vec![col("customers", "doc")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT 1, $1, 'x', now(), current_user",
            "constants, parameters and built-ins without arguments carry nothing",
            Some(vec![constant(), constant(), constant(), constant(), constant()]),
            vec![],
            vec![],
        ),
        case(
            "SELECT GREATEST(a, b), NULLIF(a, ''), a IS NULL, a BETWEEN b AND c FROM t",
            "other expression kinds go through the generic walk",
            Some(vec![
                derived(vec![col("t", "a"), col("t", "b")]),
                derived(vec![col("t", "a")]),
                derived(vec![col("t", "a")]),
                derived(vec![col("t", "a"), col("t", "b"), col("t", "c")]),
            ]),
            vec![],
            vec![],
        ),
        // Aggregates and windows.
        case(
            "SELECT string_agg(ssn, ','), json_agg(ssn), count(ssn), max(ssn), count(*) FROM customers",
            "aggregates carry their arguments (count too: a conservative reading)",
            Some(vec![
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "ssn")]),
                constant(),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT string_agg(name, ',' ORDER BY ssn) FILTER (WHERE vip) FROM customers",
            "an aggregate's ORDER BY and FILTER shape its value",
            Some(vec![derived(vec![
                col("customers", "name"),
                col("customers", "ssn"),
                col("customers", "vip"),
            ])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY salary) FROM employees",
            "an ordered-set aggregate returns one of the ordered values",
            Some(vec![derived(vec![col("employees", "salary")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT lag(ssn) OVER (PARTITION BY region ORDER BY id) FROM customers",
            "a window function's value from its arguments, its window a predicate",
            Some(vec![derived(vec![col("customers", "ssn")])]),
            vec![col("customers", "region"), col("customers", "id")],
            vec![],
        ),
        case(
            "SELECT rank() OVER w FROM customers WINDOW w AS (ORDER BY ssn)",
            "a named window's definition is a predicate",
            Some(vec![constant()]),
            vec![col("customers", "ssn")],
            vec![],
        ),
        // Whole rows and JSON.
        case(
            "SELECT row_to_json(c), to_jsonb(c.*), ROW(c.*) FROM customers c",
            "a whole row inside an expression",
            Some(vec![
                derived(vec![col("customers", "c"), row("customers")]),
                derived(vec![row("customers")]),
                derived(vec![row("customers")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT c, c::text FROM customers c",
            "a bare alias is the whole row (or a column of that name)",
            Some(vec![
                derived(vec![col("customers", "c"), row("customers")]),
                derived(vec![col("customers", "c"), row("customers")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT json_build_object('s', ssn), jsonb_agg(c) FROM customers c",
            "JSON constructors and aggregates of whole rows",
            Some(vec![
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "c"), row("customers")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT s FROM (SELECT ssn, email FROM customers) s",
            "a subquery's whole row is everything it outputs",
            Some(vec![derived(vec![
                any("s"),
                col("customers", "ssn"),
                col("customers", "email"),
            ])]),
            vec![],
            vec![],
        ),
        // Subqueries.
        case(
            "SELECT s.x FROM (SELECT ssn AS x FROM customers) s",
            "a subquery's plain output stays plain",
            Some(vec![plain(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT (SELECT max(ssn) FROM customers) AS m",
            "a scalar subquery carries its output",
            Some(vec![derived(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT (SELECT o.total FROM orders o WHERE o.customer_id = c.id) FROM customers c",
            "a correlated subquery sees the outer query; its filter is a predicate",
            Some(vec![derived(vec![col("orders", "total")])]),
            vec![col("orders", "customer_id"), col("customers", "id")],
            vec![],
        ),
        case(
            "SELECT (SELECT ssn FROM orders o WHERE o.customer_id = c.id) FROM customers c",
            "an unqualified name in a correlated subquery may be the outer query's",
            Some(vec![derived(vec![col("orders", "ssn"), col("customers", "ssn")])]),
            vec![col("orders", "customer_id"), col("customers", "id")],
            vec![],
        ),
        case(
            "SELECT ARRAY(SELECT email FROM customers)",
            "an ARRAY subquery carries its output",
            Some(vec![derived(vec![col("customers", "email")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT name FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
            "EXISTS in WHERE: predicates only",
            Some(vec![plain(vec![col("customers", "name")])]),
            vec![col("orders", "customer_id"), col("customers", "id")],
            vec![],
        ),
        case(
            "SELECT c.ssn IN (SELECT o.ssn FROM orders o) FROM customers c",
            "IN leaks through a boolean: the tested value and the subquery's outputs are predicates",
            Some(vec![constant()]),
            vec![col("customers", "ssn"), col("orders", "ssn")],
            vec![],
        ),
        case(
            "SELECT x.v FROM customers c, LATERAL (SELECT c.ssn AS v) x",
            "LATERAL sees the earlier FROM items",
            Some(vec![plain(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT id, ssn FROM a JOIN b USING (id)",
            "a USING column merges both sides",
            Some(vec![plain(vec![col("a", "id"), col("b", "id")]), plain(vec![any("ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT g, e.key, e.value FROM customers c, generate_series(1, 3) g, jsonb_each(c.doc) e",
            "functions in FROM: built-ins with known columns, arguments from earlier items",
            Some(vec![
                derived(vec![]),
                derived(vec![col("customers", "doc")]),
                derived(vec![col("customers", "doc")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "SELECT f.x FROM customers c, lookup(c.ssn) AS f(x, y)",
            "a function in FROM that is not built in: its arguments and whatever it reads",
            Some(vec![derived(vec![col("customers", "ssn"), opaque("lookup")])]),
            vec![],
            vec![],
        ),
        // CTEs.
        case(
            "WITH a AS (SELECT ssn AS s FROM customers), b AS (SELECT upper(s) AS u FROM a) SELECT u FROM b",
            "a CTE reads an earlier one",
            Some(vec![derived(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "WITH RECURSIVE r(n, s) AS (SELECT 1, ssn FROM customers UNION ALL SELECT n + 1, s FROM r WHERE n < 3) SELECT n, s FROM r",
            "a recursive CTE: the recursive term passes the column through",
            Some(vec![constant(), plain(vec![col("customers", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "WITH RECURSIVE r(a, b) AS (SELECT ssn, email FROM customers UNION ALL SELECT b, a FROM r) SELECT a FROM r",
            "a recursive CTE that swaps its columns: each may hold either",
            Some(vec![plain(vec![col("customers", "ssn"), col("customers", "email")])]),
            vec![],
            vec![],
        ),
        case(
            "WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING ssn) SELECT ssn FROM d",
            "a data-modifying CTE's RETURNING outputs",
            Some(vec![plain(vec![col("customers", "ssn")])]),
            vec![col("customers", "id")],
            vec![],
        ),
        case(
            "WITH i AS (INSERT INTO archive SELECT ssn FROM customers RETURNING id) SELECT id FROM i",
            "a data-modifying CTE stores what it inserts",
            Some(vec![derived(vec![col("archive", "id"), col("customers", "ssn")])]),
            vec![],
            vec![stores(vec![col("customers", "ssn")])],
        ),
        // Set operations and VALUES.
        case(
            "SELECT ssn FROM a UNION SELECT email FROM b",
            "UNION: by position, the union of both branches",
            Some(vec![plain(vec![col("a", "ssn"), col("b", "email")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT ssn FROM a INTERSECT SELECT lower(x) FROM b EXCEPT SELECT y FROM c",
            "nested set operations: plain only where every branch is",
            Some(vec![derived(vec![col("a", "ssn"), col("b", "x"), col("c", "y")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT * FROM a UNION ALL SELECT * FROM b",
            "a set operation over stars cannot be traced by position",
            None,
            vec![],
            vec![Hazard::UntracedOutput],
        ),
        case(
            "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) v(x, y)",
            "VALUES of constants carry nothing",
            Some(vec![constant(), constant()]),
            vec![],
            vec![],
        ),
        case(
            "SELECT v.x FROM customers c, LATERAL (VALUES (c.ssn), (c.email)) v(x)",
            "VALUES: per column, every row's expression",
            Some(vec![derived(vec![col("customers", "ssn"), col("customers", "email")])]),
            vec![],
            vec![],
        ),
        // Predicates.
        case(
            "SELECT name FROM customers WHERE region = 'x' GROUP BY name, region HAVING max(ssn) > '1' ORDER BY name LIMIT 5",
            "WHERE, GROUP BY, HAVING and ORDER BY are predicates",
            Some(vec![plain(vec![col("customers", "name")])]),
            vec![col("customers", "region"), col("customers", "name"), col("customers", "ssn")],
            vec![],
        ),
        case(
            "SELECT lower(ssn) AS k FROM customers ORDER BY k",
            "ORDER BY an output's name orders by its value",
            Some(vec![derived(vec![col("customers", "ssn")])]),
            vec![col("customers", "ssn"), col("customers", "k")],
            vec![],
        ),
        case(
            "SELECT DISTINCT ON (email) email, ssn FROM customers ORDER BY 1",
            "DISTINCT ON is a predicate; an ordinal stands for any output (literals never decide)",
            Some(vec![plain(vec![col("customers", "email")]), plain(vec![col("customers", "ssn")])]),
            vec![col("customers", "email"), col("customers", "ssn")],
            vec![],
        ),
        case(
            "SELECT a, count(*) FROM t GROUP BY GROUPING SETS ((a), (b), ())",
            "grouping sets are predicates",
            Some(vec![plain(vec![col("t", "a")]), constant()]),
            vec![col("t", "a"), col("t", "b")],
            vec![],
        ),
        // DML.
        case(
            "INSERT INTO t (a, b) VALUES ($1, $2) RETURNING *",
            "INSERT of parameters: nothing stored from other columns, RETURNING * is the table",
            Some(vec![star("t")]),
            vec![],
            vec![],
        ),
        case(
            "INSERT INTO archive (s) SELECT ssn FROM customers WHERE vip RETURNING s",
            "INSERT ... SELECT stores its sources; RETURNING gives them back",
            Some(vec![derived(vec![col("archive", "s"), col("customers", "ssn")])]),
            vec![col("customers", "vip")],
            vec![stores(vec![col("customers", "ssn")])],
        ),
        case(
            "INSERT INTO archive SELECT ssn FROM customers RETURNING *",
            "RETURNING * after storing other columns' values: not traceable as the table's columns",
            None,
            vec![],
            vec![stores(vec![col("customers", "ssn")]), Hazard::UntracedOutput],
        ),
        case(
            "UPDATE accounts SET note = c.ssn FROM customers c WHERE c.id = accounts.owner RETURNING accounts.note, accounts.id",
            "UPDATE SET from another column stores it; RETURNING reads the new value",
            Some(vec![
                derived(vec![col("accounts", "note"), col("customers", "ssn")]),
                plain(vec![col("accounts", "id")]),
            ]),
            vec![col("customers", "id"), col("accounts", "owner")],
            vec![stores(vec![col("customers", "ssn")])],
        ),
        case(
            "UPDATE t SET a = a + 1 WHERE id = $1 RETURNING *",
            "a column set from itself: RETURNING * stays the table's columns",
            Some(vec![star("t")]),
            vec![col("t", "id")],
            vec![stores(vec![col("t", "a")])],
        ),
        case(
            "DELETE FROM t USING u WHERE t.id = u.id RETURNING u.ssn, t.*",
            "DELETE RETURNING over the target and USING items",
            Some(vec![plain(vec![col("u", "ssn")]), star("t")]),
            vec![col("t", "id"), col("u", "id")],
            vec![],
        ),
        case(
            "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = excluded.b || t.c",
            "ON CONFLICT DO UPDATE stores its SET values",
            None,
            vec![],
            vec![stores(vec![col("t", "b"), col("t", "c")])],
        ),
        case(
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.flag THEN UPDATE SET v = s.ssn WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)",
            "MERGE: the join and WHEN conditions are predicates, UPDATE and INSERT values stored",
            None,
            vec![col("t", "id"), col("s", "id"), col("s", "flag")],
            vec![stores(vec![col("s", "ssn"), col("s", "id"), col("s", "v")])],
        ),
        // Statements that store or move rows elsewhere.
        case(
            "CREATE TABLE copy AS SELECT ssn, id FROM customers",
            "CREATE TABLE AS stores its query's outputs",
            None,
            vec![],
            vec![stores(vec![col("customers", "ssn"), col("customers", "id")])],
        ),
        case(
            "SELECT ssn INTO copy FROM customers",
            "SELECT INTO stores its outputs and returns none",
            None,
            vec![],
            vec![stores(vec![col("customers", "ssn")])],
        ),
        case(
            "CREATE MATERIALIZED VIEW mv AS SELECT lower(ssn) FROM customers",
            "a materialized view stores its query's outputs",
            None,
            vec![],
            vec![stores(vec![col("customers", "ssn")])],
        ),
        case(
            "CREATE VIEW v AS SELECT ssn FROM customers",
            "a view stores its definition, not values",
            None,
            vec![],
            vec![],
        ),
        case(
            "COPY customers TO STDOUT",
            "COPY TO: rows leave outside the result protocol",
            None,
            vec![],
            vec![Hazard::CopyTo {
                reads: vec![rel("customers")],
            }],
        ),
        case(
            "COPY (SELECT c.ssn FROM customers c JOIN orders o ON o.customer_id = c.id) TO '/tmp/x'",
            "COPY (query) TO reads every relation of the query",
            None,
            vec![col("orders", "customer_id"), col("customers", "id")],
            vec![Hazard::CopyTo {
                reads: vec![rel("customers"), rel("orders")],
            }],
        ),
        case(
            "COPY t FROM STDIN",
            "COPY FROM returns nothing and reads nothing",
            None,
            vec![],
            vec![],
        ),
        case(
            "DECLARE cur CURSOR FOR SELECT ssn FROM customers WHERE vip",
            "a cursor's rows come later; its filter counts now",
            None,
            vec![col("customers", "vip")],
            vec![Hazard::Cursor {
                name: Arc::from("cur"),
            }],
        ),
        case(
            "FETCH 10 FROM cur",
            "FETCH returns rows the analysis cannot list",
            None,
            vec![],
            vec![Hazard::UntracedOutput],
        ),
        case(
            "EXECUTE stmt(1)",
            "EXECUTE of a prepared statement",
            None,
            vec![],
            vec![Hazard::UntracedOutput],
        ),
        case(
            "PREPARE stmt AS SELECT ssn FROM customers WHERE id = $1",
            "PREPARE: rows come with EXECUTE; the query's filter counts; the name is the protocol's too",
            None,
            vec![col("customers", "id")],
            vec![Hazard::Prepared { name: "stmt".into() }],
        ),
        case(
            "CALL refresh_everything(1)",
            "a procedure call",
            None,
            vec![],
            vec![Hazard::UntracedOutput],
        ),
        case(
            "CREATE FUNCTION public.upper(varchar) RETURNS text LANGUAGE sql AS $$ SELECT ssn FROM customers $$",
            "a function defined now runs later out of sight (here it shadows a built-in)",
            None,
            vec![],
            vec![Hazard::Defines { what: "CreateFunction".into() }],
        ),
        case(
            "CREATE TRIGGER t BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION f()",
            "a trigger runs code on every row it sees",
            None,
            vec![],
            vec![Hazard::Defines { what: "CreateTrig".into() }],
        ),
        case(
            "CREATE FOREIGN TABLE mirror (ssn text) SERVER loopback OPTIONS (table_name 'customers')",
            "a foreign table is a route to data the gateway does not see",
            None,
            vec![],
            vec![Hazard::Defines { what: "CreateForeignTable".into() }],
        ),
        case(
            "ALTER TABLE customers RENAME COLUMN ssn TO tax_id",
            "a rename moves a column away from the rule that names it",
            None,
            vec![],
            vec![Hazard::Alters { relations: vec![rel("customers")], schemas: vec![] }],
        ),
        case(
            "ALTER TABLE parted ATTACH PARTITION public.customers FOR VALUES FROM (1) TO (10)",
            "every relation an ALTER names counts, the attached partition too",
            None,
            vec![],
            vec![Hazard::Alters {
                relations: vec![rel("parted"), qrel("public", "customers")],
                schemas: vec![],
            }],
        ),
        case(
            "ALTER SCHEMA public RENAME TO pub",
            "a schema rename moves every table in it",
            None,
            vec![],
            vec![Hazard::Alters { relations: vec![], schemas: vec!["public".into()] }],
        ),
        case(
            "SELECT setval('s', salary), pg_advisory_lock(salary) FROM customers",
            "a sequence and an advisory lock key keep values for later",
            Some(vec![
                derived(vec![col("customers", "salary")]),
                derived(vec![col("customers", "salary")]),
            ]),
            vec![],
            vec![stores(vec![col("customers", "salary")])],
        ),
        case(
            "DEALLOCATE ALL",
            "SQL drops prepared statements the protocol named too",
            None,
            vec![],
            vec![Hazard::Prepared { name: "".into() }],
        ),
        case(
            "DO $$ BEGIN PERFORM 1; END $$",
            "a DO block runs code the analysis cannot trace",
            None,
            vec![],
            vec![Hazard::Dynamic],
        ),
        case(
            "SELECT dblink('conn', 'SELECT ssn FROM customers'), query_to_xml('SELECT 1', true, true, '')",
            "functions that run SQL text: whatever it reads, and the hazard",
            Some(vec![derived(vec![opaque("dblink")]), derived(vec![opaque("query_to_xml")])]),
            vec![],
            vec![Hazard::Dynamic],
        ),
        case(
            "SELECT set_config('app.x', ssn, false), pg_notify('chan', email) FROM customers",
            "settings and notifications keep values for later",
            Some(vec![
                derived(vec![col("customers", "ssn")]),
                derived(vec![col("customers", "email")]),
            ]),
            vec![],
            vec![
                stores(vec![col("customers", "ssn")]),
                stores(vec![col("customers", "email")]),
            ],
        ),
        case(
            "SELECT pg_read_file('/etc/passwd'), lo_from_bytea(0, ssn::bytea) FROM customers",
            "server files and large objects",
            Some(vec![constant(), derived(vec![col("customers", "ssn")])]),
            vec![],
            vec![
                server_file("pg_read_file"),
                server_file("lo_from_bytea"),
                stores(vec![col("customers", "ssn")]),
            ],
        ),
        case(
            "SELECT mask_me(ssn), public.lower(email), pg_catalog.lower(email) FROM customers",
            "a user-defined function is opaque; a built-in name in another schema too",
            Some(vec![
                derived(vec![col("customers", "ssn"), opaque("mask_me")]),
                derived(vec![col("customers", "email"), opaque("public.lower")]),
                derived(vec![col("customers", "email")]),
            ]),
            vec![],
            vec![],
        ),
        case(
            "EXPLAIN ANALYZE SELECT pg_notify('c', ssn) FROM customers",
            "EXPLAIN: one plan column, the statement's hazards kept (ANALYZE runs it)",
            Some(vec![constant()]),
            vec![],
            vec![stores(vec![col("customers", "ssn")])],
        ),
        case(
            "SHOW search_path",
            "SHOW: one value from no table",
            Some(vec![constant()]),
            vec![],
            vec![],
        ),
        case(
            "SHOW ALL",
            "SHOW ALL: name, setting and description",
            Some(vec![constant(), constant(), constant()]),
            vec![],
            vec![],
        ),
        case(
            "SELECT (c).*, (lookup(c.id)).* FROM customers c",
            "a field expansion is as wide as the type: untraceable by position",
            None,
            vec![],
            vec![Hazard::UntracedOutput],
        ),
        case(
            "SELECT name FROM customers c WHERE EXISTS (SELECT * FROM orders o WHERE o.customer_id = c.id)",
            "what EXISTS selects does not decide whether a row exists: its filter does",
            Some(vec![plain(vec![col("customers", "name")])]),
            vec![col("orders", "customer_id"), col("customers", "id")],
            vec![],
        ),
        case(
            "SET search_path = app",
            "other utility statements: nothing",
            None,
            vec![],
            vec![],
        ),
        case(
            "SELECT data FROM pg_logical_slot_peek_changes('slot', NULL, NULL)",
            "logical decoding returns any table's changes: opaque though built in",
            Some(vec![derived(vec![opaque("pg_logical_slot_peek_changes")])]),
            vec![],
            vec![],
        ),
        case(
            "SELECT lo_get(42)",
            "a large object's contents",
            Some(vec![derived(vec![opaque("lo_get")])]),
            vec![],
            vec![server_file("lo_get")],
        ),
        case(
            "SELECT j.ssn, x.id FROM (customers c JOIN orders o ON o.customer_id = c.id) AS j, a JOIN b USING (id) AS x",
            "a join's alias reaches its sides; a USING alias its merged columns",
            Some(vec![
                plain(vec![any("ssn")]),
                plain(vec![col("a", "id"), col("b", "id")]),
            ]),
            vec![col("orders", "customer_id"), col("customers", "id")],
            vec![],
        ),
        case(
            "UPDATE t SET a = u.ssn FROM u WHERE u.id = t.id RETURNING old.a, new.a",
            "RETURNING old and new: the value before, and the value written",
            Some(vec![
                plain(vec![col("t", "a")]),
                derived(vec![col("t", "a"), col("u", "ssn")]),
            ]),
            vec![col("u", "id"), col("t", "id")],
            vec![stores(vec![col("u", "ssn")])],
        ),
        case(
            "SELECT x.n FROM (SELECT ssn AS n FROM a UNION SELECT * FROM b) x",
            "a set operation over a star, used by name: the star's column of that name or the other branch",
            Some(vec![derived(vec![col("b", "n"), col("a", "ssn")])]),
            vec![],
            vec![],
        ),
        case(
            "ALTER TABLE t ALTER COLUMN c TYPE text USING set_config('x', ssn, false)",
            "an expression that runs over a table's rows in DDL keeps its side channels",
            None,
            vec![],
            vec![
                stores(vec![col("t", "ssn")]),
                Hazard::Alters { relations: vec![rel("t")], schemas: vec![] },
            ],
        ),
    ]
}

#[test]
fn lineage_table() {
    let mut problems = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    for c in &cases {
        let lineage = lineage_of(c.sql);
        let Some(st) = lineage.statements.first() else {
            problems.push(format!("{}: no statement", c.sql));
            continue;
        };
        if lineage.statements.len() != 1 {
            problems.push(format!(
                "{}: {} statements",
                c.sql,
                lineage.statements.len()
            ));
        }
        if st.outputs != c.outputs {
            problems.push(format!(
                "{} ({}):\n  outputs {:?}\n  wanted  {:?}",
                c.sql, c.why, st.outputs, c.outputs
            ));
        }
        if st.predicates != c.predicates {
            problems.push(format!(
                "{} ({}):\n  predicates {:?}\n  wanted     {:?}",
                c.sql, c.why, st.predicates, c.predicates
            ));
        }
        if st.hazards != c.hazards {
            problems.push(format!(
                "{} ({}):\n  hazards {:?}\n  wanted  {:?}",
                c.sql, c.why, st.hazards, c.hazards
            ));
        }
        invariants(c.sql, st, &mut problems);
        // The analysis carries the same lineage.
        let analysis = analyze(c.sql, &ctx());
        if analysis.lineage.as_deref() != Some(&lineage) {
            problems.push(format!("{}: the analysis' lineage differs", c.sql));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn reads_hold_every_column_read() {
    let l = lineage_of(
        "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders o WHERE o.total > 10)",
    );
    let st = &l.statements[0];
    for s in [
        col("customers", "name"),
        col("orders", "customer_id"),
        col("orders", "total"),
    ] {
        assert!(st.reads.contains(&s), "{s:?} not in {:?}", st.reads);
    }
    let l = lineage_of("SELECT 1 FROM (SELECT ssn FROM customers) s");
    assert_eq!(l.statements[0].reads, vec![col("customers", "ssn")]);
    assert_eq!(l.statements[0].outputs, Some(vec![constant()]));
}

#[test]
fn a_text_of_several_statements_has_one_lineage_each() {
    let l = lineage_of("SELECT 1; SELECT ssn FROM customers; DELETE FROM t WHERE id = 2");
    assert_eq!(l.statements.len(), 3);
    assert_eq!(l.statements[0].outputs, Some(vec![constant()]));
    assert_eq!(
        l.statements[1].outputs,
        Some(vec![plain(vec![col("customers", "ssn")])])
    );
    assert_eq!(l.statements[2].outputs, None);
    assert_eq!(l.statements[2].predicates, vec![col("t", "id")]);
}

#[test]
fn lineage_is_for_texts_that_parse() {
    assert!(lineage("SELECT * FROM", &ctx()).is_none());
    assert!(lineage("SELECT 1\0", &ctx()).is_none());
    // MySQL's is coarse (tests/mysql_lineage.rs): no outputs.
    let mysql = lineage("SELECT 1", &ReadingContext::new(Dialect::Mysql)).unwrap();
    assert_eq!(mysql.statements.len(), 1);
    assert_eq!(mysql.statements[0].outputs, None);
    assert!(analyze("SELEC 1", &ReadingContext::new(Dialect::Mysql))
        .lineage
        .is_none());
    assert!(analyze("SELEC 1", &ctx()).lineage.is_none());
    // Only whitespace and comments: no statements, and an empty lineage.
    assert_eq!(lineage("-- nothing", &ctx()), Some(Lineage::default()));
}

#[test]
fn deep_nesting_never_panics() {
    let parens = format!(
        "SELECT {}ssn{} FROM customers",
        "(".repeat(1000),
        ")".repeat(1000)
    );
    let l = lineage_of(&parens);
    assert_eq!(
        l.statements[0].outputs,
        Some(vec![plain(vec![col("customers", "ssn")])])
    );
    // Trees deeper than the parse tree decoder reads are no lineage at all (and a failed
    // analysis), never a crash.
    let mut subqueries = "SELECT ssn FROM customers".to_owned();
    for i in 0..200 {
        subqueries = format!("SELECT * FROM ({subqueries}) s{i}");
    }
    assert!(lineage(&subqueries, &ctx()).is_none());
    let sum = format!("SELECT {} FROM customers", vec!["ssn"; 1000].join(" + "));
    assert!(lineage(&sum, &ctx()).is_none());
    let mut calls = "ssn".to_owned();
    for _ in 0..1000 {
        calls = format!("lower({calls})");
    }
    assert!(lineage(&format!("SELECT {calls} FROM customers"), &ctx()).is_none());
    // As deep as the decoder allows: traced.
    let mut subqueries = "SELECT ssn FROM customers".to_owned();
    for i in 0..20 {
        subqueries = format!("SELECT * FROM ({subqueries}) s{i}");
    }
    assert_eq!(
        lineage_of(&subqueries).statements[0].outputs,
        Some(vec![plain(vec![col("customers", "ssn")])])
    );
}

/// Every PostgreSQL text of the analysis corpus (`tests/corpus.toml`) that parses has a lineage
/// that keeps the invariants: a wide net of statement kinds, none of which may crash the walk.
#[test]
fn the_analysis_corpus_keeps_the_invariants() {
    #[derive(serde::Deserialize)]
    struct Corpus {
        case: Vec<Row>,
    }
    #[derive(serde::Deserialize)]
    struct Row {
        dialect: String,
        sql: String,
    }
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus.toml"))
        .expect("the corpus");
    let corpus: Corpus = toml::from_str(&text).expect("the corpus parses");
    let mut problems = Vec::new();
    let mut traced = 0;
    for row in corpus.case.iter().filter(|r| r.dialect == "pg") {
        let Some(lineage) = lineage(&row.sql, &ctx()) else {
            continue;
        };
        for st in &lineage.statements {
            invariants(&row.sql, st, &mut problems);
        }
        traced += 1;
    }
    assert!(traced > 100, "only {traced} corpus texts were traced");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn recursive_queries_that_do_not_settle_are_widened() {
    // Each pass moves every column's sources one column on: after as many passes as columns,
    // each holds all of them; the walk widens earlier, and the filter over the rotated column
    // sees all of them too.
    let columns: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
    let rotated: Vec<String> = (0..12).map(|i| format!("c{}", (i + 11) % 12)).collect();
    let sql = format!(
        "WITH RECURSIVE r({cols}) AS (SELECT {cols} FROM t UNION ALL SELECT {rot} FROM r WHERE c0 > 0) SELECT c0 FROM r",
        cols = columns.join(", "),
        rot = rotated.join(", "),
    );
    let l = lineage_of(&sql);
    let all: Vec<SourceColumn> = columns.iter().map(|c| col("t", c)).collect();
    let st = &l.statements[0];
    match st.outputs.as_deref() {
        Some([OutputColumn::Value { sources, plain }]) => {
            assert!(!plain);
            for s in &all {
                assert!(sources.contains(s), "{s:?} missing from {sources:?}");
            }
        }
        other => panic!("{other:?}"),
    }
    for s in &all {
        assert!(
            st.predicates.contains(s),
            "{s:?} missing from the predicates"
        );
    }
}

#[test]
fn a_recursive_query_feeds_a_store_in_the_same_list() {
    let l = lineage_of(
        "WITH RECURSIVE r(n, s) AS (SELECT 1, ssn FROM customers UNION ALL SELECT n + 1, s FROM r WHERE n < 3), \
         w AS (INSERT INTO log SELECT s FROM r) SELECT 1",
    );
    assert_eq!(
        l.statements[0].hazards,
        vec![stores(vec![col("customers", "ssn")])]
    );
}

#[test]
fn nested_recursive_queries_are_bounded() {
    let mut sql = "SELECT ssn FROM customers".to_owned();
    for i in 0..12 {
        sql = format!(
            "WITH RECURSIVE r{i}(x) AS ({sql} UNION ALL SELECT x FROM r{i}) SELECT x FROM r{i}"
        );
    }
    let start = std::time::Instant::now();
    let l = lineage_of(&sql);
    // Not a performance assertion: only that the walk ends; past its budget it says untraced.
    eprintln!("12 nested recursive queries: {:?}", start.elapsed());
    assert_eq!(l.statements[0].outputs, None);
    assert!(l.statements[0].hazards.contains(&Hazard::UntracedOutput));
    let mut sql = "SELECT ssn FROM customers".to_owned();
    for i in 0..4 {
        sql = format!(
            "WITH RECURSIVE r{i}(x) AS ({sql} UNION ALL SELECT x FROM r{i}) SELECT x FROM r{i}"
        );
    }
    assert_eq!(
        lineage_of(&sql).statements[0].outputs,
        Some(vec![plain(vec![col("customers", "ssn")])])
    );
}
