//! The lineage of MySQL and MariaDB statements, coarse: sqlparser's tree is walked for what a
//! statement reads and stores, not for where each result column comes from.
//!
//! - `outputs` is always `None`: result columns are not traced through expressions. A masker
//!   places a column by the origin the wire reports (`org_table`, `org_name`) when it can trust
//!   it, and otherwise takes it to carry anything the statement reads.
//! - `reads` holds the whole rows of every relation the statement reads or writes, the functions
//!   the analysis cannot see into (anything but MySQL's built-ins: a stored function may read any
//!   table), and the user and system variables it reads (which may hold any value a session put
//!   there earlier), each as [`SourceColumn::Opaque`].
//! - `predicates` is `reads` when the statement filters, joins, groups, orders or partitions at
//!   all (which columns it does that by is not traced), else empty.
//! - hazards: [`Hazard::AliasedOrigins`] when a derived table, a CTE, a table function or a set
//!   operation is involved, since the server then reports aliases as origins;
//!   [`Hazard::Stores`] for what INSERT, REPLACE, UPDATE, CREATE TABLE ... SELECT, SET of a
//!   system variable and the lock and sequence functions keep where it can be read back;
//!   [`Hazard::Dynamic`] (with untraced, aliased outputs) for CALL, EXECUTE, PREPARE and
//!   statements the analysis does not map; [`Hazard::ServerFile`] for `INTO OUTFILE`,
//!   `LOAD DATA INFILE` and `LOAD_FILE`; [`Hazard::Defines`] for stored programs and servers;
//!   [`Hazard::Alters`] for ALTER TABLE and RENAME TABLE; and, for SHOW WARNINGS and SHOW
//!   ERRORS, whose messages quote values of earlier statements, untraced, aliased outputs.

use std::ops::ControlFlow;
use std::sync::Arc;

use gateway_core::masking::{Hazard, RelationName, SourceColumn, StatementLineage};
use sqlparser::ast::{
    self, Expr, GroupByExpr, ObjectNamePart, OnInsert, Query, SetExpr, Statement, TableFactor,
    Visit, Visitor,
};

use crate::facts::{Class, ObjectName, StatementFacts};

use super::mysql_builtins::is_builtin;

/// Functions whose arguments are kept where other sessions (or later statements) can read them:
/// lock names (`information_schema.METADATA_LOCK_INFO`, `IS_USED_LOCK`), sequence values.
const STORING_FUNCTIONS: &[&str] = &[
    "get_lock",
    "release_lock",
    "is_free_lock",
    "is_used_lock",
    "setval",
];

/// What a walk over part of a statement finds.
#[derive(Default)]
struct Scan {
    /// Functions that are not built in, as written.
    opaque_functions: Vec<String>,
    /// Built-in functions that store their arguments.
    storing_functions: Vec<String>,
    /// `@user` and `@@system` variables read.
    variables: Vec<String>,
    /// A column is referenced (or a subquery, which may reference any).
    columns: bool,
    /// A derived table, CTE, table function or set operation.
    aliased: bool,
    /// A filter, join, grouping, ordering or window.
    predicates: bool,
    /// `LOAD_FILE` is called.
    load_file: bool,
}

impl Scan {
    fn of<V: Visit + ?Sized>(node: &V) -> Scan {
        let mut scan = Scan::default();
        let _ = node.visit(&mut scan);
        scan
    }

    fn push(list: &mut Vec<String>, name: String) {
        if !list.contains(&name) {
            list.push(name);
        }
    }

    /// The opaque sources found: functions and variables.
    fn opaque(&self) -> impl Iterator<Item = SourceColumn> + '_ {
        self.opaque_functions
            .iter()
            .chain(&self.variables)
            .map(|f| SourceColumn::Opaque {
                function: Arc::from(f.as_str()),
            })
    }
}

fn is_variable(name: &str) -> bool {
    name.starts_with('@')
}

impl Visitor for Scan {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if query.with.is_some() {
            self.aliased = true;
        }
        if query.order_by.is_some() {
            self.predicates = true;
        }
        let mut bodies = vec![query.body.as_ref()];
        while let Some(body) = bodies.pop() {
            match body {
                SetExpr::Select(select) => {
                    let grouped = match &select.group_by {
                        GroupByExpr::All(_) => true,
                        GroupByExpr::Expressions(e, _) => !e.is_empty(),
                    };
                    if select.selection.is_some()
                        || select.having.is_some()
                        || select.qualify.is_some()
                        || grouped
                        || !select.named_window.is_empty()
                        || select.from.iter().any(|t| !t.joins.is_empty())
                        || select.from.len() > 1
                    {
                        self.predicates = true;
                    }
                }
                SetExpr::SetOperation { left, right, .. } => {
                    self.aliased = true;
                    bodies.push(left);
                    bodies.push(right);
                }
                // A nested query is visited on its own.
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table { args: None, .. } | TableFactor::NestedJoin { .. } => {}
            // Derived tables, table functions (JSON_TABLE, ...), anything else.
            _ => self.aliased = true,
        }
        if let TableFactor::Function { name, .. } = factor {
            Scan::push(&mut self.opaque_functions, function_name(name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(i) if is_variable(&i.value) => {
                Scan::push(&mut self.variables, i.value.to_ascii_lowercase());
            }
            Expr::CompoundIdentifier(parts)
                if parts.first().is_some_and(|p| is_variable(&p.value)) =>
            {
                let name = parts
                    .iter()
                    .map(|p| p.value.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(".");
                Scan::push(&mut self.variables, name);
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => self.columns = true,
            Expr::Subquery(_) | Expr::Exists { .. } => {
                self.columns = true;
            }
            Expr::Function(f) => {
                let name = function_name(&f.name);
                if f.over.is_some() {
                    self.predicates = true;
                }
                if name == "load_file" {
                    self.load_file = true;
                }
                if STORING_FUNCTIONS.contains(&name.as_str()) {
                    Scan::push(&mut self.storing_functions, name);
                } else if !is_builtin(&name) {
                    Scan::push(&mut self.opaque_functions, name);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        let filtered = match statement {
            Statement::Update(u) => u.selection.is_some() || !u.order_by.is_empty(),
            Statement::Delete(d) => d.selection.is_some() || !d.order_by.is_empty(),
            _ => false,
        };
        if filtered {
            self.predicates = true;
        }
        ControlFlow::Continue(())
    }
}

/// A function's name as the builtin list spells it: lower case, qualified as written (a
/// qualified name is never a built-in).
fn function_name(name: &ast::ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
            ObjectNamePart::Function(f) => f.name.value.to_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn relation(o: &ObjectName) -> RelationName {
    RelationName {
        schema: o.schema.as_deref().map(Arc::from),
        name: Arc::from(o.name.as_str()),
    }
}

fn whole_rows<'a>(objects: impl Iterator<Item = &'a ObjectName>) -> Vec<SourceColumn> {
    let mut out: Vec<SourceColumn> = Vec::new();
    for o in objects {
        let source = SourceColumn::WholeRow {
            relation: relation(o),
        };
        if !out.contains(&source) {
            out.push(source);
        }
    }
    out
}

fn push_unique(list: &mut Vec<SourceColumn>, more: impl IntoIterator<Item = SourceColumn>) {
    for s in more {
        if !list.contains(&s) {
            list.push(s);
        }
    }
}

/// The lineage of one statement: `stmt` is its tree, or `None` for the statements recognised
/// from their tokens only (HANDLER, LOAD DATA, PREPARE ... FROM, SELECT ... INTO OUTFILE).
pub(super) fn statement(stmt: Option<&Statement>, facts: &StatementFacts) -> StatementLineage {
    let kinds = |k: &str| facts.kinds.iter().any(|x| x == k);
    let mut lineage = StatementLineage::default();
    let mut reads = whole_rows(facts.reads.iter().chain(&facts.writes));
    let Some(stmt) = stmt else {
        // Nothing but the facts: every output may carry anything read, under any name.
        lineage.hazards.push(Hazard::AliasedOrigins);
        if kinds("into_outfile") {
            lineage.hazards.push(Hazard::ServerFile {
                function: Arc::from("SELECT ... INTO OUTFILE"),
            });
        }
        if kinds("load_data") && !kinds("load_data_local") {
            lineage.hazards.push(Hazard::ServerFile {
                function: Arc::from("LOAD DATA INFILE"),
            });
        }
        if kinds("prepare") || kinds("prepare_dynamic") {
            lineage.hazards.push(Hazard::Dynamic);
        }
        // Stored programs read from their tokens (see `mysql::routines`).
        for (kind, what) in [
            ("create_procedure", "CREATE PROCEDURE"),
            ("create_function", "CREATE FUNCTION"),
            ("create_trigger", "CREATE TRIGGER"),
            ("create_event", "CREATE EVENT"),
        ] {
            if kinds(kind) {
                lineage.hazards.push(Hazard::Defines {
                    what: Arc::from(what),
                });
            }
        }
        lineage.predicates = reads.clone();
        lineage.reads = reads;
        return lineage;
    };
    let scan = Scan::of(stmt);
    push_unique(&mut reads, scan.opaque());
    if scan.predicates {
        lineage.predicates = reads.clone();
    }
    if scan.aliased {
        lineage.hazards.push(Hazard::AliasedOrigins);
    }
    if scan.load_file {
        lineage.hazards.push(Hazard::ServerFile {
            function: Arc::from("load_file"),
        });
    }
    if kinds("into_outfile") {
        lineage.hazards.push(Hazard::ServerFile {
            function: Arc::from("SELECT ... INTO OUTFILE"),
        });
    }
    let procedural = facts.class == Class::Procedural || kinds("call") || kinds("execute");
    if procedural || kinds("prepare") {
        lineage.hazards.push(Hazard::Dynamic);
    }
    if procedural || kinds("show_warnings") || kinds("show_errors") {
        lineage.hazards.push(Hazard::UntracedOutput);
        if !scan.aliased {
            lineage.hazards.push(Hazard::AliasedOrigins);
        }
    }
    if let Some(what) = defines(stmt) {
        lineage.hazards.push(Hazard::Defines {
            what: Arc::from(what),
        });
    }
    if matches!(stmt, Statement::AlterTable(_) | Statement::RenameTable(_)) {
        let mut relations: Vec<RelationName> = Vec::new();
        for w in &facts.writes {
            let r = relation(w);
            if !relations.contains(&r) {
                relations.push(r);
            }
        }
        lineage.hazards.push(Hazard::Alters {
            relations,
            schemas: Vec::new(),
        });
    }
    if let Some(stored) = stores(stmt, facts, &scan) {
        if !stored.is_empty() {
            lineage.hazards.push(Hazard::Stores { sources: stored });
        }
    }
    lineage.reads = reads;
    lineage
}

/// What a statement keeps where it can be read back, or `None` when it keeps nothing.
fn stores(stmt: &Statement, facts: &StatementFacts, scan: &Scan) -> Option<Vec<SourceColumn>> {
    let read = whole_rows(facts.reads.iter());
    let written = whole_rows(facts.writes.iter());
    let mut sources = Vec::new();
    match stmt {
        Statement::Insert(insert) => {
            // The rows inserted (and the values of an ON DUPLICATE KEY UPDATE) may be computed
            // from any column the statement reads, of the target table too.
            let mut values = match &insert.source {
                Some(source) => match source.body.as_ref() {
                    SetExpr::Values(v) => Scan::of(v),
                    _ => Scan {
                        columns: true,
                        ..Scan::of(source.as_ref())
                    },
                },
                None => Scan::default(),
            };
            let assigned = Scan::of(&insert.assignments);
            values.columns |= assigned.columns;
            if let Some(OnInsert::DuplicateKeyUpdate(updates)) = &insert.on {
                let updates = Scan::of(updates);
                values.columns |= updates.columns;
                push_unique(&mut sources, updates.opaque());
            }
            push_unique(&mut sources, read);
            push_unique(&mut sources, values.opaque());
            push_unique(&mut sources, assigned.opaque());
            if values.columns {
                push_unique(&mut sources, written);
            }
        }
        Statement::Update(update) => {
            let values = Scan::of(&update.assignments);
            push_unique(&mut sources, read);
            push_unique(&mut sources, values.opaque());
            if values.columns {
                push_unique(&mut sources, written);
            }
        }
        Statement::CreateTable(ct) if ct.query.is_some() => {
            push_unique(&mut sources, read);
            push_unique(&mut sources, scan.opaque());
        }
        Statement::Set(set) => {
            // A user variable is read back only as an opaque value (masked whole); a system
            // variable is read back by SHOW VARIABLES and the like as a plain one.
            let (targets, values): (Vec<&ast::ObjectName>, Vec<&Expr>) = match set {
                ast::Set::SingleAssignment {
                    variable, values, ..
                } => (vec![variable], values.iter().collect()),
                ast::Set::ParenthesizedAssignments { variables, values } => {
                    (variables.iter().collect(), values.iter().collect())
                }
                ast::Set::MultipleAssignments { assignments } => (
                    assignments.iter().map(|a| &a.name).collect(),
                    assignments.iter().map(|a| &a.value).collect(),
                ),
                _ => return None,
            };
            let system = targets.iter().any(|t| {
                let last = t.0.last().map(|p| match p {
                    ObjectNamePart::Identifier(i) => i.value.clone(),
                    ObjectNamePart::Function(f) => f.name.value.clone(),
                });
                let first = t.0.first().map(|p| match p {
                    ObjectNamePart::Identifier(i) => i.value.clone(),
                    ObjectNamePart::Function(f) => f.name.value.clone(),
                });
                let user = |s: &Option<String>| {
                    s.as_deref()
                        .is_some_and(|s| s.starts_with('@') && !s.starts_with("@@"))
                };
                !(user(&first) || user(&last))
            });
            if !system {
                return None;
            }
            for v in values {
                push_unique(&mut sources, Scan::of(v).opaque());
            }
            push_unique(&mut sources, read);
        }
        _ => {}
    }
    if !scan.storing_functions.is_empty() {
        push_unique(&mut sources, whole_rows(facts.reads.iter()));
        push_unique(&mut sources, scan.opaque());
    }
    Some(sources)
}

/// What a statement defines that runs later out of the analysis's sight, if it does.
fn defines(stmt: &Statement) -> Option<&'static str> {
    Some(match stmt {
        Statement::CreateFunction(_) => "CREATE FUNCTION",
        Statement::CreateProcedure { .. } => "CREATE PROCEDURE",
        Statement::CreateTrigger(_) => "CREATE TRIGGER",
        Statement::CreateServer(_) => "CREATE SERVER",
        _ => return None,
    })
}
