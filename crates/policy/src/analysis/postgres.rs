//! PostgreSQL: pg_query (PostgreSQL's own parser) and its PL/pgSQL parser.
//!
//! The parse tree is walked as pg_query's typed structs: every node of every statement is
//! visited (through [`pg_nodes`], generated from those structs), so a relation or function call
//! in a place this module does not know by name (a new clause in a later PostgreSQL) is still
//! seen. Statement types are then mapped to classes, and any statement type not listed is
//! reported as procedural, the strictest class.
//!
//! The walk reads the structs in place: an earlier version turned each tree into a JSON-shaped
//! value first, which cost more than PostgreSQL's grammar itself (see "Caching and cost" in
//! `docs/policy.md`).

use pg_query::protobuf as pb;
use pg_query::protobuf::a_const::Val;
use pg_query::protobuf::node::Node as N;

use serde_json::Value as Json;

use super::pg_nodes::{self, Visit};
use super::pg_parse::{self, ParseError};

use std::sync::Arc;

use gateway_core::masking::Lineage;

use super::filter::{self, Const};
use super::lineage as trace;
use super::{failed, Collector, ReadingContext};
use crate::facts::{Analysis, Class, FailureKind, Filter, ObjectName, ParseFailure};

/// Deeper trees than this are refused rather than walked (pg_query itself stops far earlier).
const MAX_DEPTH: usize = 400;

/// Analyses a PostgreSQL statement text.
pub(super) fn analyze(sql: &str, ctx: &ReadingContext) -> Analysis {
    analyze_shaped(sql, ctx, &[]).0
}

/// Analyses a PostgreSQL statement text and says whether the analysis holds for every text of
/// the same shape: true only when each of `literals` (byte offsets of the literals the shape
/// took out) is where the parser put an `A_Const`, the walker never looked inside a constant or
/// re-read the text, and the analysis succeeded. See [`super::shape`] for why that suffices.
pub(super) fn analyze_shaped(
    sql: &str,
    ctx: &ReadingContext,
    literals: &[usize],
) -> (Analysis, bool) {
    if let Some(pos) = sql.find('\0') {
        return (
            failed(
                FailureKind::Unreadable,
                "the statement text contains a NUL byte".to_owned(),
                Some(pos),
            ),
            false,
        );
    }
    let parsed = match pg_parse::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) => parsed,
        Err(e) => {
            let (kind, message, position) = parse_failure(sql, e);
            return (failed(kind, message, position), false);
        }
    };
    let mut statements = Vec::with_capacity(parsed.stmts.len());
    let mut lineages = Vec::with_capacity(parsed.stmts.len());
    let mut constants = Vec::new();
    let mut literal_sensitive = false;
    for raw in &parsed.stmts {
        let Some(stmt) = raw.stmt.as_deref() else {
            continue;
        };
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        let mut walker = Walker {
            ctx,
            text,
            failure: None,
            constants: std::mem::take(&mut constants),
            literal_sensitive: false,
            nested_parses: 0,
        };
        let mut acc = Collector::default();
        walker.top(stmt, &mut acc, &[], false, 0);
        if let Some(failure) = walker.failure {
            let analysis = Analysis {
                statements: Vec::new(),
                failure: Some(failure),
                fingerprint: None,
                lineage: None,
            };
            return (analysis, false);
        }
        constants = walker.constants;
        literal_sensitive |= walker.literal_sensitive;
        statements.push(acc.finish());
        lineages.push(trace::statement(stmt));
    }
    let shareable = !literal_sensitive && {
        constants.sort_unstable();
        literals
            .iter()
            .all(|&offset| i32::try_from(offset).is_ok_and(|o| constants.binary_search(&o).is_ok()))
    };
    let analysis = Analysis {
        statements,
        failure: None,
        fingerprint: fingerprint(sql),
        lineage: Some(Arc::new(Lineage {
            statements: lineages,
        })),
    };
    (analysis, shareable)
}

/// The lineage of each statement of a PostgreSQL text; `None` when it does not parse.
pub(super) fn lineage(sql: &str) -> Option<Lineage> {
    if sql.contains('\0') {
        return None;
    }
    let parsed = pg_parse::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    let statements = parsed
        .stmts
        .iter()
        .filter_map(|raw| raw.stmt.as_deref())
        .map(trace::statement)
        .collect();
    Some(Lineage { statements })
}

/// pg_query's fingerprint: PostgreSQL's own tree with constants, aliases and layout ignored (the
/// same family as pg_stat_statements' query id). Parses the text a second time, but only when the
/// analysis is not cached.
fn fingerprint(sql: &str) -> Option<String> {
    pg_query::fingerprint(
        sql,
        pg_query::ParserOptions::DEFAULT,
        pg_query::FingerprintOptions::DEFAULT,
    )
    .ok()
    .map(|f| format!("{:016x}", f.value))
}

/// The text of one statement of a multi-statement string (a length of 0 means "to the end").
fn statement_text(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0);
    let rest = sql.get(start..).unwrap_or("");
    match usize::try_from(len) {
        Ok(0) | Err(_) => rest,
        Ok(n) => rest.get(..n).unwrap_or(rest),
    }
}

/// Whether a parser message is one of libpg_query's own limits (its stack depth, its protobuf
/// encoding) rather than PostgreSQL's grammar rejecting the text: the server reads such trees
/// without trouble, so they are never answered as syntax errors.
fn is_parser_limit(message: &str) -> bool {
    message.contains("stack depth limit exceeded") || message.contains("nested too deeply")
}

/// The failure a parse error of `sql` makes: kind, message and byte offset into `sql`.
fn parse_failure(sql: &str, e: ParseError) -> (FailureKind, String, Option<usize>) {
    match e {
        ParseError::Parser { message, cursor } => {
            let kind = if is_parser_limit(&message) {
                FailureKind::Unreadable
            } else {
                FailureKind::Syntax
            };
            // PostgreSQL's cursor counts characters from 1; one past the last is "at end".
            let position = cursor.checked_sub(1).map(|chars| {
                sql.char_indices()
                    .nth(chars)
                    .map_or(sql.len(), |(byte, _)| byte)
            });
            (kind, message, position)
        }
        ParseError::Unreadable(m) if m.ends_with("recursion limit reached") => (
            FailureKind::Unreadable,
            "the statement is nested too deeply for the gateway to read (its parse tree is more than 100 levels deep)".to_owned(),
            None,
        ),
        ParseError::Unreadable(m) => (
            FailureKind::Unreadable,
            format!("could not read the parse tree: {m}"),
            None,
        ),
    }
}

/// Walks one statement's tree, recording facts into a [`Collector`].
struct Walker<'a> {
    ctx: &'a ReadingContext,
    /// The text of the statement being walked (PL/pgSQL function bodies are re-read from it).
    text: &'a str,
    failure: Option<ParseFailure>,
    /// Where each `A_Const` the walk passed is (byte offsets into the whole text).
    constants: Vec<i32>,
    /// Whether the facts may depend on a literal's value: set wherever the walker reads one (or
    /// re-reads the text), so that the analysis is not shared with texts of the same shape.
    literal_sensitive: bool,
    /// How many texts parsed on their own the walk is inside (their constants are not recorded).
    nested_parses: usize,
}

/// Where [`Walker::walk`] hands a node's children: with the facts, scope and depth they are
/// walked in.
struct Children<'w, 'a> {
    walker: &'w mut Walker<'a>,
    acc: &'w mut Collector,
    scope: &'w [String],
    depth: usize,
}

impl Visit for Children<'_, '_> {
    fn node(&mut self, node: &pb::Node) {
        self.walker.walk(node, self.acc, self.scope, self.depth + 1);
    }

    fn range_var(&mut self, rv: &pb::RangeVar) {
        self.walker.read(rv, self.acc, self.scope);
    }

    fn func_call(&mut self, call: &pb::FuncCall) {
        self.walker
            .func_call(call, self.acc, self.scope, self.depth + 1);
    }
}

/// The `sval`s of a list of String nodes (qualified names, function names).
fn strings(items: &[pb::Node]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match &i.node {
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// A function name as recorded: its parts joined by `.`, lower-case.
fn function_name(items: &[pb::Node]) -> String {
    let mut name = String::new();
    for item in items {
        if let Some(N::String(s)) = &item.node {
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(&s.sval);
        }
    }
    name.make_ascii_lowercase();
    if !name.is_ascii() {
        name = name.to_lowercase();
    }
    name
}

/// The DefElems of an option list, as (name, argument).
fn def_elems(items: &[pb::Node]) -> impl Iterator<Item = (&str, Option<&pb::Node>)> {
    items.iter().filter_map(|o| match &o.node {
        Some(N::DefElem(d)) => Some((d.defname.as_str(), d.arg.as_deref())),
        _ => None,
    })
}

/// `OBJECT_MATVIEW` -> `matview`.
fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn object_type(v: i32) -> String {
    pb::ObjectType::try_from(v)
        .map(|t| enum_word(t.as_str_name(), "OBJECT_"))
        .unwrap_or_else(|_| "object".to_owned())
}

/// Object types whose names are relations (and so belong in reads/writes).
fn is_relation_type(obj: &str) -> bool {
    matches!(
        obj,
        "table" | "view" | "matview" | "index" | "sequence" | "foreign_table"
    )
}

/// `CreateEventTrigStmt` -> `create_event_trig`.
fn snake(type_name: &str) -> String {
    let base = type_name.strip_suffix("Stmt").unwrap_or(type_name);
    let mut out = String::with_capacity(base.len() + 4);
    for (i, c) in base.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn ddl(acc: &mut Collector, verb: &str, object: &str) {
    acc.class(Class::Ddl);
    acc.kind(verb);
    acc.kind(&format!("{verb}_{object}"));
}

impl Walker<'_> {
    /// The walk cannot go on (too deep, a tree it cannot read).
    fn fail(&mut self, message: String) {
        self.failure_of(FailureKind::Unreadable, message);
    }

    /// The walk met text it could not parse: a syntax error the server would give too, or one
    /// of pg_query's own limits (see [`failure_kind`]).
    fn failure_of(&mut self, kind: FailureKind, message: String) {
        if self.failure.is_none() {
            self.failure = Some(ParseFailure {
                kind,
                message,
                position: None,
            });
        }
    }

    /// Normalises a RangeVar: pg_query has already folded unquoted names and decoded U&"...".
    fn relation(&self, rv: &pb::RangeVar) -> ObjectName {
        ObjectName {
            schema: if rv.schemaname.is_empty() {
                self.ctx.default_schema.clone()
            } else {
                Some(rv.schemaname.clone())
            },
            name: rv.relname.clone(),
        }
    }

    /// A relation read, unless it names a CTE in scope.
    fn read(&self, rv: &pb::RangeVar, acc: &mut Collector, scope: &[String]) {
        let is_cte = rv.schemaname.is_empty() && scope.contains(&rv.relname);
        if !is_cte {
            acc.read(self.relation(rv));
        }
    }

    fn write_relation(&self, acc: &mut Collector, rv: Option<&pb::RangeVar>) {
        if let Some(rv) = rv {
            acc.write(self.relation(rv));
        }
    }

    /// A qualified name given as a list of strings (DROP TABLE a.b).
    fn qualified(&self, names: &[String]) -> Option<ObjectName> {
        let (name, rest) = names.split_last()?;
        let schema = rest
            .last()
            .cloned()
            .or_else(|| self.ctx.default_schema.clone());
        Some(ObjectName {
            schema,
            name: name.clone(),
        })
    }

    /// A statement node at statement level.
    fn top(
        &mut self,
        node: &pb::Node,
        acc: &mut Collector,
        scope: &[String],
        nested: bool,
        depth: usize,
    ) {
        if let Some(n) = &node.node {
            self.statement(n, acc, scope, nested, depth);
        }
    }

    /// Generic walk over any subtree: relations are reads, function calls are recorded and
    /// statements nested anywhere (data-modifying CTEs, rule actions) are analysed as such.
    fn walk(&mut self, node: &pb::Node, acc: &mut Collector, scope: &[String], depth: usize) {
        if depth > MAX_DEPTH {
            self.fail("the statement is nested too deeply to analyse".to_owned());
            return;
        }
        let Some(n) = &node.node else { return };
        match n {
            N::RangeVar(rv) => self.read(rv, acc, scope),
            N::AConst(c) => {
                if self.nested_parses == 0 {
                    self.constants.push(c.location);
                }
            }
            N::FuncCall(f) => self.func_call(f, acc, scope, depth),
            _ if pg_nodes::name(n).ends_with("Stmt") => {
                self.statement(n, acc, scope, true, depth + 1)
            }
            _ => self.children(n, &[], acc, scope, depth),
        }
    }

    /// A function call: recorded by name, then its arguments and clauses walked.
    fn func_call(&mut self, f: &pb::FuncCall, acc: &mut Collector, scope: &[String], depth: usize) {
        if depth > MAX_DEPTH {
            self.fail("the statement is nested too deeply to analyse".to_owned());
            return;
        }
        let name = function_name(&f.funcname);
        if super::runs_dynamic_sql(&name) {
            super::dynamic_sql(acc);
        }
        if !name.is_empty() {
            acc.function(name);
        }
        let mut children = Children {
            walker: self,
            acc,
            scope,
            depth,
        };
        pg_nodes::walk_func_call(f, &[], &mut children);
    }

    /// Walks every child of `n` except the fields listed (handled by the caller).
    fn children(
        &mut self,
        n: &N,
        skip: &[&str],
        acc: &mut Collector,
        scope: &[String],
        depth: usize,
    ) {
        let mut children = Children {
            walker: self,
            acc,
            scope,
            depth,
        };
        pg_nodes::children(n, skip, &mut children);
    }

    /// Walks the CTE bodies of a WITH clause, each seeing only the CTE names visible to it, and
    /// returns the names visible to the rest of the statement. A non-recursive CTE named like a
    /// table still reads the table inside its own body.
    fn with_scope(
        &mut self,
        n: &N,
        acc: &mut Collector,
        scope: &[String],
        depth: usize,
    ) -> Vec<String> {
        let Some(with) = pg_nodes::with_clause(n) else {
            return scope.to_vec();
        };
        let ctes: Vec<&pb::CommonTableExpr> = with
            .ctes
            .iter()
            .filter_map(|c| match &c.node {
                Some(N::CommonTableExpr(cte)) => Some(&**cte),
                _ => None,
            })
            .collect();
        let names: Vec<String> = ctes.iter().map(|c| c.ctename.clone()).collect();
        for (i, cte) in ctes.iter().enumerate() {
            let mut visible = scope.to_vec();
            let own = if with.recursive { names.len() } else { i };
            visible.extend(names.iter().take(own).cloned());
            if let Some(query) = &cte.ctequery {
                self.top(query, acc, &visible, true, depth + 1);
            }
        }
        let mut visible = scope.to_vec();
        visible.extend(names);
        visible
    }

    fn where_filter(&mut self, clause: Option<&pb::Node>) -> Filter {
        match clause {
            None => Filter::Absent,
            Some(expr) => {
                if truth(expr, &mut self.literal_sensitive) == Some(true) {
                    Filter::Trivial
                } else {
                    Filter::Present
                }
            }
        }
    }

    #[allow(clippy::too_many_lines)]
    fn statement(
        &mut self,
        n: &N,
        acc: &mut Collector,
        scope: &[String],
        nested: bool,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            self.fail("the statement is nested too deeply to analyse".to_owned());
            return;
        }
        let scope = &self.with_scope(n, acc, scope, depth);
        let d = depth + 1;
        match n {
            N::SelectStmt(s) => {
                acc.class(Class::Read);
                if !nested {
                    acc.kind("select");
                }
                if let Some(into) = &s.into_clause {
                    acc.class(Class::Write);
                    acc.kind("select_into");
                    acc.kind("create_table");
                    self.write_relation(acc, into.rel.as_ref());
                }
                if !s.locking_clause.is_empty() {
                    acc.kind("select_for_update");
                }
                self.children(n, &["with_clause", "into_clause"], acc, scope, d);
            }
            N::InsertStmt(s) => {
                acc.class(Class::Write);
                acc.kind("insert");
                self.write_relation(acc, s.relation.as_ref());
                if let Some(conflict) = &s.on_conflict_clause {
                    let action = pb::OnConflictAction::try_from(conflict.action);
                    if action == Ok(pb::OnConflictAction::OnconflictUpdate) {
                        acc.kind("insert_on_conflict_update");
                    }
                }
                self.children(n, &["with_clause", "relation"], acc, scope, d);
            }
            N::UpdateStmt(s) => {
                acc.class(Class::Write);
                acc.kind("update");
                self.write_relation(acc, s.relation.as_ref());
                acc.filter(self.where_filter(s.where_clause.as_deref()));
                self.children(n, &["with_clause", "relation"], acc, scope, d);
            }
            N::DeleteStmt(s) => {
                acc.class(Class::Write);
                acc.kind("delete");
                self.write_relation(acc, s.relation.as_ref());
                acc.filter(self.where_filter(s.where_clause.as_deref()));
                self.children(n, &["with_clause", "relation"], acc, scope, d);
            }
            N::MergeStmt(s) => {
                acc.class(Class::Write);
                acc.kind("merge");
                self.write_relation(acc, s.relation.as_ref());
                let mut changes_rows = false;
                for clause in &s.merge_when_clauses {
                    if let Some(N::MergeWhenClause(c)) = &clause.node {
                        if let Ok(cmd) = pb::CmdType::try_from(c.command_type) {
                            let word = enum_word(cmd.as_str_name(), "CMD_");
                            changes_rows |= word == "update" || word == "delete";
                            if word != "nothing" {
                                acc.kind(&word);
                            }
                        }
                    }
                }
                if changes_rows {
                    acc.filter(self.where_filter(s.join_condition.as_deref()));
                }
                self.children(n, &["with_clause", "relation"], acc, scope, d);
            }
            N::CopyStmt(s) => self.copy(n, s, acc, scope, d),
            N::TruncateStmt(s) => {
                acc.class(Class::Write);
                acc.kind("truncate");
                for rel in &s.relations {
                    if let Some(N::RangeVar(rv)) = &rel.node {
                        self.write_relation(acc, Some(rv));
                    }
                }
                acc.filter(Filter::Absent);
            }
            N::ExplainStmt(s) => self.explain(s, acc, scope, d),
            N::PrepareStmt(s) => {
                acc.kind("prepare");
                match &s.query {
                    Some(query) => self.top(query, acc, scope, false, d),
                    None => acc.class(Class::Procedural),
                }
            }
            N::ExecuteStmt(_) => {
                acc.class(Class::Procedural);
                acc.kind("execute");
                self.children(n, &[], acc, scope, d);
            }
            N::PlassignStmt(_) => {
                // `x := expr` inside PL/pgSQL: only the expression matters.
                self.children(n, &[], acc, scope, d);
            }
            N::DeallocateStmt(_) => {
                acc.class(Class::Session);
                acc.kind("deallocate");
            }
            N::DoStmt(s) => self.do_block(s, acc, d),
            N::CallStmt(_) => {
                acc.class(Class::Procedural);
                acc.kind("call");
                self.children(n, &[], acc, scope, d);
            }
            N::CreateFunctionStmt(s) => self.create_function(s, acc, scope, d),
            N::VariableSetStmt(s) => self.set(n, s, acc, scope, d),
            N::VariableShowStmt(s) => {
                acc.class(Class::Read);
                acc.kind("show");
                acc.kind(&format!(
                    "show_{}",
                    s.name.to_ascii_lowercase().replace(' ', "_")
                ));
            }
            N::DiscardStmt(s) => {
                acc.class(Class::Session);
                acc.kind("discard");
                if let Ok(mode) = pb::DiscardMode::try_from(s.target) {
                    acc.kind(&format!(
                        "discard_{}",
                        enum_word(mode.as_str_name(), "DISCARD_")
                    ));
                }
            }
            N::TransactionStmt(s) => {
                acc.class(Class::Transaction);
                if let Ok(kind) = pb::TransactionStmtKind::try_from(s.kind) {
                    let word = enum_word(kind.as_str_name(), "TRANS_STMT_");
                    acc.kind(if word == "prepare" {
                        "prepare_transaction"
                    } else {
                        &word
                    });
                }
            }
            N::ConstraintsSetStmt(_) => {
                acc.class(Class::Transaction);
                acc.kind("set_constraints");
            }
            N::VacuumStmt(s) => {
                acc.class(Class::Utility);
                acc.kind(if s.is_vacuumcmd { "vacuum" } else { "analyze" });
                self.children(n, &[], acc, scope, d);
            }
            N::ClusterStmt(_)
            | N::ReindexStmt(_)
            | N::CheckPointStmt(_)
            | N::ListenStmt(_)
            | N::UnlistenStmt(_)
            | N::NotifyStmt(_)
            | N::LockStmt(_) => {
                acc.class(Class::Utility);
                acc.kind(&snake(pg_nodes::name(n)));
                self.children(n, &[], acc, scope, d);
            }
            N::LoadStmt(_) => {
                // LOAD runs a shared library's initialisation code inside the server.
                acc.class(Class::Procedural);
                acc.kind("load");
            }
            N::DeclareCursorStmt(s) => {
                acc.class(Class::Read);
                acc.kind("declare_cursor");
                if let Some(query) = &s.query {
                    self.top(query, acc, scope, true, d);
                }
            }
            N::FetchStmt(s) => {
                acc.class(Class::Read);
                acc.kind(if s.ismove { "move" } else { "fetch" });
            }
            N::ClosePortalStmt(_) => {
                acc.class(Class::Session);
                acc.kind("close");
            }
            N::GrantStmt(s) => {
                acc.class(Class::Dcl);
                acc.kind(if s.is_grant { "grant" } else { "revoke" });
                if is_relation_type(&object_type(s.objtype)) {
                    for o in &s.objects {
                        if let Some(N::RangeVar(rv)) = &o.node {
                            self.write_relation(acc, Some(rv));
                        }
                    }
                }
            }
            N::GrantRoleStmt(s) => {
                acc.class(Class::Dcl);
                acc.kind(if s.is_grant {
                    "grant_role"
                } else {
                    "revoke_role"
                });
            }
            N::CreateRoleStmt(_) => {
                acc.class(Class::Dcl);
                acc.kind("create_role");
            }
            N::DropRoleStmt(_) => {
                acc.class(Class::Dcl);
                acc.kind("drop_role");
            }
            N::AlterRoleStmt(_) | N::AlterRoleSetStmt(_) => {
                acc.class(Class::Dcl);
                acc.kind("alter_role");
            }
            N::AlterDefaultPrivilegesStmt(_) | N::ReassignOwnedStmt(_) | N::DropOwnedStmt(_) => {
                acc.class(Class::Dcl);
                acc.kind(&snake(pg_nodes::name(n)));
            }
            N::RefreshMatViewStmt(s) => {
                acc.class(Class::Write);
                acc.kind("refresh_materialized_view");
                self.write_relation(acc, s.relation.as_ref());
            }
            N::CreateStmt(s) => {
                ddl(acc, "create", "table");
                self.write_relation(acc, s.relation.as_ref());
                self.children(n, &["relation"], acc, scope, d);
            }
            N::CreateForeignTableStmt(s) => {
                ddl(acc, "create", "foreign_table");
                if let Some(base) = &s.base_stmt {
                    self.write_relation(acc, base.relation.as_ref());
                    let mut children = Children {
                        walker: self,
                        acc,
                        scope,
                        depth: d,
                    };
                    pg_nodes::walk_create_stmt(base, &["relation"], &mut children);
                }
            }
            N::CreateTableAsStmt(s) => {
                if object_type(s.objtype) == "matview" {
                    ddl(acc, "create", "materialized_view");
                } else {
                    ddl(acc, "create", "table");
                    acc.kind("create_table_as");
                }
                if let Some(into) = &s.into {
                    self.write_relation(acc, into.rel.as_ref());
                }
                if let Some(query) = &s.query {
                    self.top(query, acc, scope, true, d);
                }
            }
            N::ViewStmt(s) => {
                ddl(acc, "create", "view");
                self.write_relation(acc, s.view.as_ref());
                self.children(n, &["view"], acc, scope, d);
            }
            N::IndexStmt(s) => {
                ddl(acc, "create", "index");
                self.write_relation(acc, s.relation.as_ref());
                self.children(n, &["relation"], acc, scope, d);
            }
            N::CreateSeqStmt(s) => {
                ddl(acc, "create", "sequence");
                self.write_relation(acc, s.sequence.as_ref());
            }
            N::AlterSeqStmt(s) => {
                ddl(acc, "alter", "sequence");
                self.write_relation(acc, s.sequence.as_ref());
            }
            N::AlterTableStmt(s) => {
                ddl(acc, "alter", &object_type(s.objtype));
                self.write_relation(acc, s.relation.as_ref());
                self.children(n, &["relation"], acc, scope, d);
            }
            N::RenameStmt(s) => {
                ddl(acc, "alter", &object_type(s.rename_type));
                acc.kind("rename");
                self.write_relation(acc, s.relation.as_ref());
            }
            N::AlterObjectSchemaStmt(s) => {
                ddl(acc, "alter", &object_type(s.object_type));
                acc.kind(&snake(pg_nodes::name(n)));
                self.write_relation(acc, s.relation.as_ref());
            }
            N::AlterOwnerStmt(s) => {
                ddl(acc, "alter", &object_type(s.object_type));
                acc.kind(&snake(pg_nodes::name(n)));
                self.write_relation(acc, s.relation.as_ref());
            }
            N::DropStmt(s) => {
                let obj = object_type(s.remove_type);
                ddl(acc, "drop", &obj);
                if is_relation_type(&obj) {
                    for o in &s.objects {
                        if let Some(N::List(l)) = &o.node {
                            if let Some(target) = self.qualified(&strings(&l.items)) {
                                acc.write(target);
                            }
                        }
                    }
                }
            }
            N::DropdbStmt(_) => ddl(acc, "drop", "database"),
            N::CreatedbStmt(_) => ddl(acc, "create", "database"),
            N::CreateSchemaStmt(s) => {
                ddl(acc, "create", "schema");
                for element in &s.schema_elts {
                    self.top(element, acc, scope, true, d);
                }
            }
            N::CreateTrigStmt(s) => {
                ddl(acc, "create", "trigger");
                self.write_relation(acc, s.relation.as_ref());
                let func = function_name(&s.funcname);
                if !func.is_empty() {
                    acc.function(func);
                }
                self.children(n, &["relation"], acc, scope, d);
            }
            N::RuleStmt(s) => {
                ddl(acc, "create", "rule");
                self.write_relation(acc, s.relation.as_ref());
                self.children(n, &["relation"], acc, scope, d);
            }
            N::CommentStmt(_) => {
                acc.class(Class::Ddl);
                acc.kind("comment");
            }
            N::AlterSystemStmt(_) => {
                acc.class(Class::Ddl);
                acc.kind("alter_system");
            }
            _ => {
                let words = snake(pg_nodes::name(n));
                let verb = words.split('_').next().unwrap_or("");
                match verb {
                    "create" | "alter" | "drop" | "define" | "composite" | "import" | "sec" => {
                        acc.class(Class::Ddl);
                        if matches!(verb, "create" | "alter" | "drop") {
                            acc.kind(verb);
                        }
                    }
                    // A statement type this module does not know: its effect is not visible.
                    _ => acc.class(Class::Procedural),
                }
                acc.kind(&words);
                self.write_relation(acc, pg_nodes::relation(n));
                self.children(n, &["relation"], acc, scope, d);
            }
        }
    }

    fn copy(&mut self, n: &N, s: &pb::CopyStmt, acc: &mut Collector, scope: &[String], d: usize) {
        acc.kind("copy");
        let to_file = !s.filename.is_empty();
        if s.is_program {
            // COPY ... PROGRAM runs a shell command on the database server.
            acc.class(Class::Procedural);
            acc.kind("copy_program");
        }
        if s.is_from {
            acc.class(Class::Write);
            acc.kind("copy_from");
            if to_file {
                acc.kind("copy_from_file");
            }
            self.write_relation(acc, s.relation.as_ref());
            self.children(n, &["relation", "query"], acc, scope, d);
        } else {
            acc.class(Class::Read);
            acc.kind("copy_to");
            if to_file {
                // Writes a file on the database server's file system.
                acc.class(Class::Write);
                acc.kind("copy_to_file");
            }
            if let Some(query) = &s.query {
                self.top(query, acc, scope, true, d);
            }
            self.children(n, &["query"], acc, scope, d);
        }
    }

    fn explain(&mut self, s: &pb::ExplainStmt, acc: &mut Collector, scope: &[String], d: usize) {
        acc.kind("explain");
        let analyze = def_elems(&s.options).any(|(name, arg)| {
            // `ANALYZE false|off|0` is the only way to turn it off; anything else runs it.
            name == "analyze"
                && !matches!(arg.and_then(def_arg), Some(ref v) if matches!(v.as_str(), "false" | "off" | "0"))
        });
        let Some(query) = &s.query else { return };
        if analyze {
            acc.class(Class::Utility);
            acc.kind("explain_analyze");
            self.top(query, acc, scope, false, d);
        } else {
            // Plain EXPLAIN only plans: what the statement would touch is reported as read.
            let mut inner = Collector::default();
            self.top(query, &mut inner, scope, true, d);
            acc.class(Class::Utility);
            inner
                .reads
                .into_iter()
                .chain(inner.writes)
                .for_each(|o| acc.read(o));
            inner.functions.into_iter().for_each(|f| acc.function(f));
        }
    }

    fn set(
        &mut self,
        n: &N,
        s: &pb::VariableSetStmt,
        acc: &mut Collector,
        scope: &[String],
        d: usize,
    ) {
        let kind = pb::VariableSetKind::try_from(s.kind)
            .map(|k| k.as_str_name())
            .unwrap_or("");
        let setting = s.name.to_ascii_lowercase().replace(' ', "_");
        let verb = if kind.starts_with("VAR_RESET") {
            "reset"
        } else {
            "set"
        };
        acc.kind(verb);
        if kind == "VAR_RESET_ALL" {
            acc.class(Class::Session);
            acc.kind("reset_all");
            return;
        }
        acc.kind(&format!("{verb}_{setting}"));
        acc.class(match setting.as_str() {
            "role" | "session_authorization" => Class::Dcl,
            "transaction"
            | "transaction_isolation"
            | "transaction_read_only"
            | "transaction_deferrable"
            | "transaction_snapshot" => Class::Transaction,
            _ => Class::Session,
        });
        self.children(n, &[], acc, scope, d);
    }

    fn do_block(&mut self, s: &pb::DoStmt, acc: &mut Collector, d: usize) {
        acc.class(Class::Procedural);
        acc.kind("do");
        let mut language = "plpgsql".to_owned();
        let mut body = None;
        for (name, arg) in def_elems(&s.args) {
            match name {
                "language" => language = arg.and_then(def_arg).unwrap_or_default(),
                "as" => body = arg.and_then(def_arg),
                _ => {}
            }
        }
        if language != "plpgsql" {
            // PL/Python, PL/Perl, PL/Tcl, ...: the gateway cannot read the body, so it could do
            // anything SQL can.
            acc.kind(&format!("do_{language}"));
            super::dynamic_sql(acc);
            return;
        }
        let Some(body) = body else { return };
        // The body is text the walker reads again, not a tree: never shared by shape.
        self.literal_sensitive = true;
        let mut tag = "$portcullis$".to_owned();
        let mut n = 0u32;
        while body.contains(&tag) {
            n += 1;
            tag = format!("$portcullis{n}$");
        }
        let wrapper = format!(
            "CREATE FUNCTION portcullis_do() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}"
        );
        self.plpgsql(&wrapper, acc, d);
    }

    fn create_function(
        &mut self,
        s: &pb::CreateFunctionStmt,
        acc: &mut Collector,
        scope: &[String],
        d: usize,
    ) {
        ddl(
            acc,
            "create",
            if s.is_procedure {
                "procedure"
            } else {
                "function"
            },
        );
        let mut language = String::new();
        let mut body: Option<String> = None;
        for (name, arg) in def_elems(&s.options) {
            match name {
                "language" => language = arg.and_then(def_arg).unwrap_or_default(),
                "as" => {
                    body = arg.and_then(|a| match &a.node {
                        Some(N::List(l)) => strings(&l.items).into_iter().next(),
                        _ => def_arg(a),
                    })
                }
                _ => {}
            }
        }
        // Creating a function runs nothing, but what its body will do is reported so that rules
        // on objects and kinds see it before it is called.
        match (language.as_str(), body) {
            ("plpgsql", Some(_)) => {
                let text = self.text;
                self.literal_sensitive = true;
                self.plpgsql(text, acc, d);
            }
            ("sql", Some(body)) => match pg_parse::parse(&body, pg_query::ParserOptions::DEFAULT) {
                Ok(parsed) => self.parsed_statements(&parsed, acc, d),
                Err(e) => self.nested_parse_failed(&body, e),
            },
            // A body in another language (PL/Python, PL/Perl, C, ...) is not read: whatever it
            // does, it does unseen.
            (language, _) if !matches!(language, "sql" | "plpgsql" | "") => super::dynamic_sql(acc),
            _ => {}
        }
        for p in &s.parameters {
            self.walk(p, acc, scope, d);
        }
        if let Some(body) = &s.sql_body {
            self.walk(body, acc, scope, d);
        }
    }

    /// Text nested in the statement did not parse; its position (inside the nested text) is not
    /// reported.
    fn nested_parse_failed(&mut self, text: &str, e: ParseError) {
        let (kind, message, _) = parse_failure(text, e);
        self.failure_of(kind, message);
    }

    fn parsed_statements(&mut self, parsed: &pb::ParseResult, acc: &mut Collector, d: usize) {
        // Text parsed on its own (a function body, an expression in PL/pgSQL): its facts come
        // from text, not from the tree, and its constants sit at offsets into that text, which
        // must not be taken for the statement's own.
        self.literal_sensitive = true;
        self.nested_parses += 1;
        for raw in &parsed.stmts {
            if let Some(stmt) = raw.stmt.as_deref() {
                self.top(stmt, acc, &[], true, d);
            }
        }
        self.nested_parses -= 1;
    }

    /// Reads a PL/pgSQL function (given as CREATE FUNCTION text) and analyses every SQL
    /// statement and expression in it. A body that cannot be read fails the analysis.
    fn plpgsql(&mut self, create_function: &str, acc: &mut Collector, d: usize) {
        self.literal_sensitive = true;
        match super::pg_parse::parse_plpgsql(create_function) {
            Ok(tree) => self.plpgsql_walk(&tree, acc, d),
            // The position is in the text the function was rebuilt into: not reported.
            Err(super::pg_parse::ParseError::Parser { message, .. }) => {
                let kind = if is_parser_limit(&message) {
                    FailureKind::Unreadable
                } else {
                    FailureKind::Syntax
                };
                self.failure_of(kind, message);
            }
            Err(super::pg_parse::ParseError::Unreadable(message)) => {
                self.failure_of(FailureKind::Unreadable, message);
            }
        }
    }

    /// Walks the JSON pg_query gives for a PL/pgSQL function (its own format, not the protobuf
    /// tree), analysing each SQL expression in it.
    fn plpgsql_walk(&mut self, v: &Json, acc: &mut Collector, d: usize) {
        if d > MAX_DEPTH {
            self.fail("the PL/pgSQL body is nested too deeply to analyse".to_owned());
            return;
        }
        match v {
            Json::Array(items) => items.iter().for_each(|i| self.plpgsql_walk(i, acc, d + 1)),
            Json::Object(m) => {
                for (key, inner) in m {
                    match key.as_str() {
                        "PLpgSQL_expr" => {
                            if let Json::Object(expr) = inner {
                                self.plpgsql_expr(expr, acc, d + 1);
                            }
                        }
                        // EXECUTE string, FOR r IN EXECUTE string: the statement is a value.
                        "PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors" => {
                            super::dynamic_sql(acc);
                            self.plpgsql_walk(inner, acc, d + 1);
                        }
                        // RETURN QUERY EXECUTE string, OPEN cursor FOR EXECUTE string: the same
                        // statement types also take a static query, which is read as usual.
                        "PLpgSQL_stmt_return_query" | "PLpgSQL_stmt_open" => {
                            if inner.get("dynquery").is_some_and(|q| !q.is_null()) {
                                super::dynamic_sql(acc);
                            }
                            self.plpgsql_walk(inner, acc, d + 1);
                        }
                        _ => self.plpgsql_walk(inner, acc, d + 1),
                    }
                }
            }
            _ => {}
        }
    }

    fn plpgsql_expr(
        &mut self,
        expr: &serde_json::Map<String, Json>,
        acc: &mut Collector,
        d: usize,
    ) {
        let query = expr.get("query").and_then(Json::as_str).unwrap_or("");
        let mode = match expr.get("parseMode").and_then(Json::as_i64).unwrap_or(0) {
            2 => pg_query::ParserOptions::PLPGSQL_EXPR,
            3 => pg_query::ParserOptions::PLPGSQL_ASSIGN1,
            4 => pg_query::ParserOptions::PLPGSQL_ASSIGN2,
            5 => pg_query::ParserOptions::PLPGSQL_ASSIGN3,
            _ => pg_query::ParserOptions::DEFAULT,
        };
        match pg_parse::parse(query, mode) {
            Ok(parsed) => self.parsed_statements(&parsed, acc, d),
            Err(e) => self.nested_parse_failed(query, e),
        }
    }
}

/// The value of a DefElem argument as text (`'plpgsql'`, `true`, `0`).
fn def_arg(v: &pb::Node) -> Option<String> {
    match v.node.as_ref()? {
        N::String(s) => Some(s.sval.to_ascii_lowercase()),
        N::Boolean(b) => Some(b.boolval.to_string()),
        N::Integer(i) => Some(i.ival.to_string()),
        _ => None,
    }
}

/// Folds a WHERE expression: `Some(true)` only when it is provably always true. Sets `read` when
/// the answer looked at a constant's value.
fn truth(v: &pb::Node, read: &mut bool) -> Option<bool> {
    truth_at(v, 0, read)
}

fn truth_at(v: &pb::Node, depth: usize, read: &mut bool) -> Option<bool> {
    if depth > 64 {
        return None;
    }
    match v.node.as_ref()? {
        N::BoolExpr(b) => {
            let args = b.args.iter().map(|a| truth_at(a, depth + 1, read));
            match pb::BoolExprType::try_from(b.boolop) {
                Ok(pb::BoolExprType::AndExpr) => filter::and(args),
                Ok(pb::BoolExprType::OrExpr) => filter::or(args),
                Ok(pb::BoolExprType::NotExpr) => {
                    let mut args = args;
                    args.next().flatten().map(|b| !b)
                }
                _ => None,
            }
        }
        N::AExpr(e) => {
            let op = strings(&e.name).pop().unwrap_or_default();
            let kind = pb::AExprKind::try_from(e.kind).ok()?;
            let lexpr = e.lexpr.as_deref()?;
            let rexpr = e.rexpr.as_deref()?;
            match kind {
                pb::AExprKind::AexprOp | pb::AExprKind::AexprDistinct => {
                    if kind == pb::AExprKind::AexprOp
                        && filter::reflexive(&op)
                        && same_column(lexpr, rexpr)
                    {
                        return Some(true);
                    }
                    // A comparison with a non-constant side folds to nothing whatever the
                    // other side's value: only a fold of two constants read their values.
                    let mut both_read = false;
                    let l = constant(lexpr, depth + 1, &mut both_read);
                    let r = constant(rexpr, depth + 1, &mut both_read);
                    let (l, r) = (l?, r?);
                    *read |= both_read;
                    if kind == pb::AExprKind::AexprDistinct {
                        return Some(l != r);
                    }
                    filter::compare(&op, &l, &r, false)
                }
                pb::AExprKind::AexprIn => {
                    let l = constant(lexpr, depth + 1, read)?;
                    let items = match &rexpr.node {
                        Some(N::List(items)) => &items.items,
                        _ => return None,
                    };
                    let hits = items.iter().map(|i| {
                        constant(i, depth + 1, read)
                            .and_then(|r| filter::compare("=", &l, &r, false))
                    });
                    let any = filter::or(hits);
                    if op == "<>" {
                        any.map(|b| !b)
                    } else {
                        any
                    }
                }
                _ => None,
            }
        }
        N::NullTest(t) => {
            let c = constant(t.arg.as_deref()?, depth + 1, read)?;
            let is_null = matches!(c, Const::Null);
            match pb::NullTestType::try_from(t.nulltesttype).ok()? {
                pb::NullTestType::IsNull => Some(is_null),
                pb::NullTestType::IsNotNull => Some(!is_null),
                _ => None,
            }
        }
        _ => constant(v, depth + 1, read)?.truth(),
    }
}

/// Two column references naming the same column (`id = id`, `t.id = t.id`).
fn same_column(a: &pb::Node, b: &pb::Node) -> bool {
    match (&a.node, &b.node) {
        (Some(N::ColumnRef(x)), Some(N::ColumnRef(y))) => {
            let (fx, fy) = (strings(&x.fields), strings(&y.fields));
            !fx.is_empty() && fx == fy
        }
        _ => false,
    }
}

/// Reduces a literal (possibly cast, or a nested comparison) to a constant; sets `read` when it
/// reads one.
fn constant(v: &pb::Node, depth: usize, read: &mut bool) -> Option<Const> {
    if depth > 64 {
        return None;
    }
    match v.node.as_ref()? {
        N::AConst(c) => {
            *read = true;
            if c.isnull {
                return Some(Const::Null);
            }
            match c.val.as_ref()? {
                Val::Ival(i) => Some(Const::Num(f64::from(i.ival))),
                Val::Fval(f) => f.fval.parse().ok().map(Const::Num),
                Val::Boolval(b) => Some(Const::Bool(b.boolval)),
                Val::Sval(s) => Some(Const::Str(s.sval.clone())),
                Val::Bsval(_) => None,
            }
        }
        N::TypeCast(t) => {
            let c = constant(t.arg.as_deref()?, depth + 1, read)?;
            let type_name = t
                .type_name
                .as_ref()
                .map(|t| strings(&t.names))
                .unwrap_or_default();
            match type_name.last().map(String::as_str) {
                Some("bool") => c.truth().map(Const::Bool),
                _ => Some(c),
            }
        }
        N::BoolExpr(_) | N::AExpr(_) | N::NullTest(_) => {
            truth_at(v, depth + 1, read).map(Const::Bool)
        }
        _ => None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Statements that reach many node types: joins, subqueries, CTEs (also data-modifying and
    /// recursive), set operations, window functions, DML with RETURNING and ON CONFLICT, MERGE,
    /// DDL, COPY, SET, EXPLAIN, DO, CREATE FUNCTION, grants, casts, arrays, literals of each kind.
    pub(in crate::analysis) const CORPUS: &[&str] = &[
        "select 1",
        "select abalance from pgbench_accounts where aid = 12345",
        "select a.x, b.y from s.a join b on a.id = b.id left join lateral (select 1) l on true where a.x > 1.5 and b.y is not null order by 1 desc nulls last limit 10 offset 5",
        "with recursive t(n) as (select 1 union all select n + 1 from t where n < 10) select sum(n) from t",
        "with d as (delete from old where ts < now() - interval '1 day' returning *) insert into archive select * from d",
        "select x from a union select y from b intersect select z from c except all select w from d",
        "select row_number() over (partition by a order by b rows between unbounded preceding and current row) from t",
        "insert into t (a, b) values (1, 'x'), (2, null) on conflict (a) do update set b = excluded.b returning a",
        "update t set a = a + 1, b = default from u where t.id = u.id and u.flag",
        "delete from t where id in (select id from u where x = any(array[1, 2, 3]))",
        "merge into t using s on t.id = s.id when matched then update set v = s.v when not matched then insert values (s.id, s.v)",
        "create table s.t (id bigint primary key, name text not null default 'x', created timestamptz default now(), check (id > 0))",
        "alter table t add column c int, drop column d cascade, alter column e type text using e::text",
        "drop table if exists a, b.c cascade",
        "create index concurrently on t using gin (doc jsonb_path_ops) where deleted is false",
        "copy t (a, b) from stdin with (format csv, header true)",
        "copy (select * from t) to stdout",
        "set search_path = app, public",
        "set local statement_timeout to 5000",
        "reset all",
        "explain (analyze, buffers) select * from t",
        "do $$ begin perform 1; end $$",
        "create function f(a int) returns int language sql as 'select a + 1'",
        "grant select on all tables in schema public to analyst",
        "select '{1,2}'::int[], 1::numeric(10, 2), b'101', x'ff', e'\\n', $1, -2147483649, 3.4e38, true, null",
        "select case when a then 1 else 2 end, coalesce(a, b), nullif(a, b), greatest(1, 2), a between 1 and 2, a like 'x%' escape '!'",
        "select * from t where (a, b) in ((1, 2)) and exists (select 1) and not a is distinct from b",
        "select json_build_object('a', 1) -> 'a', doc #>> '{a,b}' from t tablesample system (10)",
        "begin isolation level serializable read only",
        "commit",
        "vacuum (analyze) t",
        "lock table t in access exclusive mode nowait",
        "prepare p (int) as select $1; execute p(1); deallocate p",
        "create view v with (security_barrier) as select * from t where owner = current_user",
        "select xmlelement(name foo, xmlattributes('x' as bar))",
        "listen chan; notify chan, 'payload'",
        "truncate t restart identity",
        "call proc(1, 'two')",
    ];

    /// Every node type of the corpus is walked: the relations and functions in clauses the
    /// statement logic does not name are still found.
    #[test]
    fn the_corpus_is_analysed_without_failure() {
        let ctx = ReadingContext::new(super::super::Dialect::Postgres);
        for sql in CORPUS {
            let analysis = analyze(sql, &ctx);
            assert!(analysis.failure.is_none(), "{sql}: {analysis:?}");
            assert!(!analysis.statements.is_empty(), "{sql}");
        }
    }
}
