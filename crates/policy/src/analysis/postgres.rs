//! PostgreSQL: pg_query (PostgreSQL's own parser) and its PL/pgSQL parser.
//!
//! The parse tree is walked in its serialised (JSON) form: every node of every statement is
//! visited, so a relation or function call in a place this module does not know by name (a new
//! clause in a later PostgreSQL) is still seen. Statement types are then mapped to classes by
//! name, and any statement type not listed is reported as procedural, the strictest class.

use pg_query::protobuf;

use serde_json::Value as Json;

use super::tree::{self, Obj, Value};

use super::filter::{self, Const};
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
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) => parsed,
        Err(e) => {
            let position = locate_error(sql, &e);
            return (
                failed(FailureKind::Syntax, error_message(&e), position),
                false,
            );
        }
    };
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    let mut constants = Vec::new();
    let mut literal_sensitive = false;
    for raw in &parsed.protobuf.stmts {
        let Some(stmt) = raw.stmt.as_deref() else {
            continue;
        };
        let tree = match tree::to_tree(stmt) {
            Ok(tree) => tree,
            Err(e) => {
                return (
                    failed(
                        FailureKind::Unreadable,
                        format!("could not read the parse tree: {e}"),
                        None,
                    ),
                    false,
                )
            }
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
        walker.top(&tree, &mut acc, &[], false, 0);
        if let Some(failure) = walker.failure {
            let analysis = Analysis {
                statements: Vec::new(),
                failure: Some(failure),
                fingerprint: None,
            };
            return (analysis, false);
        }
        constants = walker.constants;
        literal_sensitive |= walker.literal_sensitive;
        statements.push(acc.finish());
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
    };
    (analysis, shareable)
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

fn error_message(e: &pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) | pg_query::Error::Scan(m) | pg_query::Error::Split(m) => {
            m.clone()
        }
        other => other.to_string(),
    }
}

/// Finds the byte offset of a syntax error. pg_query reports no position, so the shortest token
/// prefix of the text that fails somewhere other than "at end of input" is searched for (a
/// grammar error is detected at the first token no valid statement can continue with).
fn locate_error(sql: &str, e: &pg_query::Error) -> Option<usize> {
    let message = error_message(e);
    if message.contains("at end of input") {
        return Some(sql.len());
    }
    let fails_inside = |end: usize| -> bool {
        match sql.get(..end) {
            Some(prefix) => match pg_query::parse(prefix, pg_query::ParserOptions::DEFAULT) {
                Ok(_) => false,
                Err(e) => !error_message(&e).contains("at end of input"),
            },
            None => false,
        }
    };
    if let Ok(scan) = pg_query::scan(sql) {
        let ends: Vec<(usize, usize)> = scan
            .tokens
            .iter()
            .filter_map(|t| Some((usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?)))
            .collect();
        let (mut lo, mut hi) = (0usize, ends.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match ends.get(mid) {
                Some(&(_, end)) if fails_inside(end) => hi = mid,
                _ => lo = mid + 1,
            }
        }
        if let Some(&(start, _)) = ends.get(lo) {
            return Some(start);
        }
    }
    // Lexer errors (an unterminated string): the message quotes the text it stopped at.
    let near = message.split("at or near \"").nth(1)?;
    let near = near.strip_suffix('"').unwrap_or(near);
    sql.find(near)
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

/// `{"node": {"SelectStmt": {...}}}` or `{"SelectStmt": {...}}` as (type name, fields).
fn typed(v: &Value) -> Option<(&str, &Value)> {
    let mut m = v.as_object()?;
    if m.len() == 1 {
        if let Some(inner) = m.get("node").and_then(Value::as_object) {
            m = inner;
        }
    }
    if m.len() != 1 {
        return None;
    }
    let (key, inner) = m.iter().next()?;
    key.starts_with(|c: char| c.is_ascii_uppercase())
        .then_some((key, inner))
}

fn text<'v>(m: &'v Obj, key: &str) -> &'v str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

fn flag(m: &Obj, key: &str) -> bool {
    m.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn int(m: &Obj, key: &str) -> i32 {
    m.get(key)
        .and_then(Value::as_i64)
        .and_then(|i| i32::try_from(i).ok())
        .unwrap_or(0)
}

fn list<'v>(m: &'v Obj, key: &str) -> &'v [Value] {
    m.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn object<'v>(m: &'v Obj, key: &str) -> Option<&'v Obj> {
    m.get(key).and_then(Value::as_object)
}

/// The `sval`s of a list of String nodes (qualified names, function names).
fn strings(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match typed(i) {
            Some(("String", s)) => s.get("sval").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// `OBJECT_MATVIEW` -> `matview`.
fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn object_type(v: i32) -> String {
    protobuf::ObjectType::try_from(v)
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

    /// Text nested in the statement (a DO or function body, SQL inside PL/pgSQL) is not valid
    /// for PostgreSQL's grammar: the server would reject it too.
    fn fail_syntax(&mut self, message: String) {
        self.failure_of(FailureKind::Syntax, message);
    }

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
    fn relation(&self, rv: &Obj) -> ObjectName {
        let schema = text(rv, "schemaname");
        ObjectName {
            schema: if schema.is_empty() {
                self.ctx.default_schema.clone()
            } else {
                Some(schema.to_owned())
            },
            name: text(rv, "relname").to_owned(),
        }
    }

    fn write_relation(&self, acc: &mut Collector, rv: Option<&Obj>) {
        if let Some(rv) = rv {
            if rv.contains_key("relname") {
                acc.write(self.relation(rv));
            }
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

    /// A statement node (possibly wrapped in `{"node": ...}`) at statement level.
    fn top(
        &mut self,
        v: &Value,
        acc: &mut Collector,
        scope: &[String],
        nested: bool,
        depth: usize,
    ) {
        match typed(v) {
            Some((name, Value::Object(m))) => self.statement(name, m, acc, scope, nested, depth),
            _ => self.walk(v, acc, scope, depth),
        }
    }

    /// Generic walk over any subtree: relations are reads, function calls are recorded and
    /// statements nested anywhere (data-modifying CTEs, rule actions) are analysed as such.
    fn walk(&mut self, v: &Value, acc: &mut Collector, scope: &[String], depth: usize) {
        if depth > MAX_DEPTH {
            self.fail("the statement is nested too deeply to analyse".to_owned());
            return;
        }
        match v {
            Value::Array(items) => items
                .iter()
                .for_each(|i| self.walk(i, acc, scope, depth + 1)),
            Value::Object(m) => {
                if let Some((name, inner)) = typed(v) {
                    if name == "AConst" && self.nested_parses == 0 {
                        if let Some(location) = inner.get("location").and_then(Value::as_i64) {
                            self.constants.extend(i32::try_from(location).ok());
                        }
                    }
                    match inner {
                        Value::Object(fields) if name.ends_with("Stmt") => {
                            self.statement(name, fields, acc, scope, true, depth + 1)
                        }
                        _ => self.walk(inner, acc, scope, depth + 1),
                    }
                    return;
                }
                if m.contains_key("relname") && m.contains_key("schemaname") {
                    let relname = text(m, "relname");
                    let is_cte =
                        text(m, "schemaname").is_empty() && scope.iter().any(|c| c == relname);
                    if !is_cte {
                        acc.read(self.relation(m));
                    }
                    return;
                }
                if m.contains_key("funcname") && m.contains_key("funcformat") {
                    let name = strings(list(m, "funcname")).join(".").to_lowercase();
                    if super::runs_dynamic_sql(&name) {
                        super::dynamic_sql(acc);
                    }
                    if !name.is_empty() {
                        acc.function(name);
                    }
                }
                m.values().for_each(|f| self.walk(f, acc, scope, depth + 1));
            }
            _ => {}
        }
    }

    /// Walks every field of `m` except the ones listed (handled by the caller).
    fn walk_except(
        &mut self,
        m: &Obj,
        skip: &[&str],
        acc: &mut Collector,
        scope: &[String],
        depth: usize,
    ) {
        for (k, v) in m.iter() {
            if !skip.contains(&k) {
                self.walk(v, acc, scope, depth + 1);
            }
        }
    }

    /// Walks the CTE bodies of a WITH clause, each seeing only the CTE names visible to it, and
    /// returns the names visible to the rest of the statement. A non-recursive CTE named like a
    /// table still reads the table inside its own body.
    fn with_scope(
        &mut self,
        m: &Obj,
        acc: &mut Collector,
        scope: &[String],
        depth: usize,
    ) -> Vec<String> {
        let Some(with) = object(m, "with_clause") else {
            return scope.to_vec();
        };
        let recursive = flag(with, "recursive");
        let ctes: Vec<&Obj> = list(with, "ctes")
            .iter()
            .filter_map(|c| match typed(c) {
                Some(("CommonTableExpr", Value::Object(cte))) => Some(cte),
                _ => None,
            })
            .collect();
        let names: Vec<String> = ctes.iter().map(|c| text(c, "ctename").to_owned()).collect();
        for (i, cte) in ctes.iter().enumerate() {
            let mut visible = scope.to_vec();
            let own = if recursive { names.len() } else { i };
            visible.extend(names.iter().take(own).cloned());
            if let Some(query) = cte.get("ctequery") {
                self.top(query, acc, &visible, true, depth + 1);
            }
        }
        let mut visible = scope.to_vec();
        visible.extend(names);
        visible
    }

    fn where_filter(&mut self, m: &Obj, key: &str) -> Filter {
        match m.get(key) {
            None | Some(Value::Null) => Filter::Absent,
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
        name: &str,
        m: &Obj,
        acc: &mut Collector,
        scope: &[String],
        nested: bool,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            self.fail("the statement is nested too deeply to analyse".to_owned());
            return;
        }
        let scope = &self.with_scope(m, acc, scope, depth);
        let d = depth + 1;
        match name {
            "SelectStmt" => {
                acc.class(Class::Read);
                if !nested {
                    acc.kind("select");
                }
                if let Some(into) = object(m, "into_clause") {
                    acc.class(Class::Write);
                    acc.kind("select_into");
                    acc.kind("create_table");
                    self.write_relation(acc, object(into, "rel"));
                }
                if !list(m, "locking_clause").is_empty() {
                    acc.kind("select_for_update");
                }
                self.walk_except(m, &["with_clause", "into_clause"], acc, scope, d);
            }
            "InsertStmt" => {
                acc.class(Class::Write);
                acc.kind("insert");
                self.write_relation(acc, object(m, "relation"));
                if let Some(conflict) = object(m, "on_conflict_clause") {
                    let action = protobuf::OnConflictAction::try_from(int(conflict, "action"));
                    if action == Ok(protobuf::OnConflictAction::OnconflictUpdate) {
                        acc.kind("insert_on_conflict_update");
                    }
                }
                self.walk_except(m, &["with_clause", "relation"], acc, scope, d);
            }
            "UpdateStmt" | "DeleteStmt" => {
                acc.class(Class::Write);
                acc.kind(if name == "UpdateStmt" {
                    "update"
                } else {
                    "delete"
                });
                self.write_relation(acc, object(m, "relation"));
                acc.filter(self.where_filter(m, "where_clause"));
                self.walk_except(m, &["with_clause", "relation"], acc, scope, d);
            }
            "MergeStmt" => {
                acc.class(Class::Write);
                acc.kind("merge");
                self.write_relation(acc, object(m, "relation"));
                let mut changes_rows = false;
                for clause in list(m, "merge_when_clauses") {
                    if let Some(("MergeWhenClause", Value::Object(c))) = typed(clause) {
                        if let Ok(cmd) = protobuf::CmdType::try_from(int(c, "command_type")) {
                            let word = enum_word(cmd.as_str_name(), "CMD_");
                            changes_rows |= word == "update" || word == "delete";
                            if word != "nothing" {
                                acc.kind(&word);
                            }
                        }
                    }
                }
                if changes_rows {
                    acc.filter(self.where_filter(m, "join_condition"));
                }
                self.walk_except(m, &["with_clause", "relation"], acc, scope, d);
            }
            "CopyStmt" => self.copy(m, acc, scope, d),
            "TruncateStmt" => {
                acc.class(Class::Write);
                acc.kind("truncate");
                for rel in list(m, "relations") {
                    if let Some((_, Value::Object(rv))) = typed(rel) {
                        self.write_relation(acc, Some(rv));
                    }
                }
                acc.filter(Filter::Absent);
            }
            "ExplainStmt" => self.explain(m, acc, scope, d),
            "PrepareStmt" => {
                acc.kind("prepare");
                match m.get("query") {
                    Some(query) => self.top(query, acc, scope, false, d),
                    None => acc.class(Class::Procedural),
                }
            }
            "ExecuteStmt" => {
                acc.class(Class::Procedural);
                acc.kind("execute");
                self.walk_except(m, &[], acc, scope, d);
            }
            "PLAssignStmt" | "PlassignStmt" => {
                // `x := expr` inside PL/pgSQL: only the expression matters.
                self.walk_except(m, &[], acc, scope, d);
            }
            "DeallocateStmt" => {
                acc.class(Class::Session);
                acc.kind("deallocate");
            }
            "DoStmt" => self.do_block(m, acc, d),
            "CallStmt" => {
                acc.class(Class::Procedural);
                acc.kind("call");
                self.walk_except(m, &[], acc, scope, d);
            }
            "CreateFunctionStmt" => self.create_function(m, acc, scope, d),
            "VariableSetStmt" => self.set(m, acc, scope, d),
            "VariableShowStmt" => {
                acc.class(Class::Read);
                acc.kind("show");
                acc.kind(&format!(
                    "show_{}",
                    text(m, "name").to_ascii_lowercase().replace(' ', "_")
                ));
            }
            "DiscardStmt" => {
                acc.class(Class::Session);
                acc.kind("discard");
                if let Ok(mode) = protobuf::DiscardMode::try_from(int(m, "target")) {
                    acc.kind(&format!(
                        "discard_{}",
                        enum_word(mode.as_str_name(), "DISCARD_")
                    ));
                }
            }
            "TransactionStmt" => {
                acc.class(Class::Transaction);
                if let Ok(kind) = protobuf::TransactionStmtKind::try_from(int(m, "kind")) {
                    let word = enum_word(kind.as_str_name(), "TRANS_STMT_");
                    acc.kind(if word == "prepare" {
                        "prepare_transaction"
                    } else {
                        &word
                    });
                }
            }
            "ConstraintsSetStmt" => {
                acc.class(Class::Transaction);
                acc.kind("set_constraints");
            }
            "VacuumStmt" => {
                acc.class(Class::Utility);
                acc.kind(if flag(m, "is_vacuumcmd") {
                    "vacuum"
                } else {
                    "analyze"
                });
                self.walk_except(m, &[], acc, scope, d);
            }
            "ClusterStmt" | "ReindexStmt" | "CheckPointStmt" | "ListenStmt" | "UnlistenStmt"
            | "NotifyStmt" | "LockStmt" => {
                acc.class(Class::Utility);
                acc.kind(&snake(name));
                self.walk_except(m, &[], acc, scope, d);
            }
            "LoadStmt" => {
                // LOAD runs a shared library's initialisation code inside the server.
                acc.class(Class::Procedural);
                acc.kind("load");
            }
            "DeclareCursorStmt" => {
                acc.class(Class::Read);
                acc.kind("declare_cursor");
                if let Some(query) = m.get("query") {
                    self.top(query, acc, scope, true, d);
                }
            }
            "FetchStmt" => {
                acc.class(Class::Read);
                acc.kind(if flag(m, "ismove") { "move" } else { "fetch" });
            }
            "ClosePortalStmt" => {
                acc.class(Class::Session);
                acc.kind("close");
            }
            "GrantStmt" => {
                acc.class(Class::Dcl);
                acc.kind(if flag(m, "is_grant") {
                    "grant"
                } else {
                    "revoke"
                });
                let obj = object_type(int(m, "objtype"));
                if is_relation_type(&obj) {
                    for o in list(m, "objects") {
                        if let Some((_, Value::Object(rv))) = typed(o) {
                            self.write_relation(acc, Some(rv));
                        }
                    }
                }
            }
            "GrantRoleStmt" => {
                acc.class(Class::Dcl);
                acc.kind(if flag(m, "is_grant") {
                    "grant_role"
                } else {
                    "revoke_role"
                });
            }
            "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "DropRoleStmt" => {
                acc.class(Class::Dcl);
                acc.kind(match name {
                    "CreateRoleStmt" => "create_role",
                    "DropRoleStmt" => "drop_role",
                    _ => "alter_role",
                });
            }
            "AlterDefaultPrivilegesStmt" | "ReassignOwnedStmt" | "DropOwnedStmt" => {
                acc.class(Class::Dcl);
                acc.kind(&snake(name));
            }
            "RefreshMatViewStmt" => {
                acc.class(Class::Write);
                acc.kind("refresh_materialized_view");
                self.write_relation(acc, object(m, "relation"));
            }
            "CreateStmt" | "CreateForeignTableStmt" => {
                ddl(
                    acc,
                    "create",
                    if name == "CreateStmt" {
                        "table"
                    } else {
                        "foreign_table"
                    },
                );
                let base = object(m, "base_stmt").unwrap_or(m);
                self.write_relation(acc, object(base, "relation"));
                self.walk_except(base, &["relation"], acc, scope, d);
            }
            "CreateTableAsStmt" => {
                if object_type(int(m, "objtype")) == "matview" {
                    ddl(acc, "create", "materialized_view");
                } else {
                    ddl(acc, "create", "table");
                    acc.kind("create_table_as");
                }
                if let Some(into) = object(m, "into") {
                    self.write_relation(acc, object(into, "rel"));
                }
                if let Some(query) = m.get("query") {
                    self.top(query, acc, scope, true, d);
                }
            }
            "ViewStmt" => {
                ddl(acc, "create", "view");
                self.write_relation(acc, object(m, "view"));
                self.walk_except(m, &["view"], acc, scope, d);
            }
            "IndexStmt" => {
                ddl(acc, "create", "index");
                self.write_relation(acc, object(m, "relation"));
                self.walk_except(m, &["relation"], acc, scope, d);
            }
            "CreateSeqStmt" | "AlterSeqStmt" => {
                ddl(
                    acc,
                    if name == "CreateSeqStmt" {
                        "create"
                    } else {
                        "alter"
                    },
                    "sequence",
                );
                self.write_relation(acc, object(m, "sequence"));
            }
            "AlterTableStmt" => {
                ddl(acc, "alter", &object_type(int(m, "objtype")));
                self.write_relation(acc, object(m, "relation"));
                self.walk_except(m, &["relation"], acc, scope, d);
            }
            "RenameStmt" => {
                ddl(acc, "alter", &object_type(int(m, "rename_type")));
                acc.kind("rename");
                self.write_relation(acc, object(m, "relation"));
            }
            "AlterObjectSchemaStmt" | "AlterOwnerStmt" => {
                ddl(acc, "alter", &object_type(int(m, "object_type")));
                acc.kind(&snake(name));
                self.write_relation(acc, object(m, "relation"));
            }
            "DropStmt" => {
                let obj = object_type(int(m, "remove_type"));
                ddl(acc, "drop", &obj);
                if is_relation_type(&obj) {
                    for o in list(m, "objects") {
                        if let Some(("List", Value::Object(l))) = typed(o) {
                            if let Some(target) = self.qualified(&strings(list(l, "items"))) {
                                acc.write(target);
                            }
                        }
                    }
                }
            }
            "DropdbStmt" => ddl(acc, "drop", "database"),
            "CreatedbStmt" => ddl(acc, "create", "database"),
            "CreateSchemaStmt" => {
                ddl(acc, "create", "schema");
                for element in list(m, "schema_elts") {
                    self.top(element, acc, scope, true, d);
                }
            }
            "CreateTrigStmt" => {
                ddl(acc, "create", "trigger");
                self.write_relation(acc, object(m, "relation"));
                let func = strings(list(m, "funcname")).join(".").to_lowercase();
                if !func.is_empty() {
                    acc.function(func);
                }
                self.walk_except(m, &["relation"], acc, scope, d);
            }
            "RuleStmt" => {
                ddl(acc, "create", "rule");
                self.write_relation(acc, object(m, "relation"));
                self.walk_except(m, &["relation"], acc, scope, d);
            }
            "CommentStmt" => {
                acc.class(Class::Ddl);
                acc.kind("comment");
            }
            "AlterSystemStmt" => {
                acc.class(Class::Ddl);
                acc.kind("alter_system");
            }
            _ => {
                let words = snake(name);
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
                self.write_relation(acc, object(m, "relation"));
                self.walk_except(m, &["relation"], acc, scope, d);
            }
        }
    }

    fn copy(&mut self, m: &Obj, acc: &mut Collector, scope: &[String], d: usize) {
        acc.kind("copy");
        let to_file = !text(m, "filename").is_empty();
        if flag(m, "is_program") {
            // COPY ... PROGRAM runs a shell command on the database server.
            acc.class(Class::Procedural);
            acc.kind("copy_program");
        }
        if flag(m, "is_from") {
            acc.class(Class::Write);
            acc.kind("copy_from");
            if to_file {
                acc.kind("copy_from_file");
            }
            self.write_relation(acc, object(m, "relation"));
            self.walk_except(m, &["relation", "query"], acc, scope, d);
        } else {
            acc.class(Class::Read);
            acc.kind("copy_to");
            if to_file {
                // Writes a file on the database server's file system.
                acc.class(Class::Write);
                acc.kind("copy_to_file");
            }
            if let Some(query) = m.get("query") {
                self.top(query, acc, scope, true, d);
            }
            self.walk_except(m, &["query"], acc, scope, d);
        }
    }

    fn explain(&mut self, m: &Obj, acc: &mut Collector, scope: &[String], d: usize) {
        acc.kind("explain");
        let analyze = list(m, "options").iter().any(|o| match typed(o) {
            Some(("DefElem", Value::Object(opt))) if text(opt, "defname") == "analyze" => {
                // `ANALYZE false|off|0` is the only way to turn it off; anything else runs it.
                !matches!(opt.get("arg").and_then(def_arg), Some(ref v) if matches!(v.as_str(), "false" | "off" | "0"))
            }
            _ => false,
        });
        let Some(query) = m.get("query") else { return };
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

    fn set(&mut self, m: &Obj, acc: &mut Collector, scope: &[String], d: usize) {
        let kind = protobuf::VariableSetKind::try_from(int(m, "kind"))
            .map(|k| k.as_str_name())
            .unwrap_or("");
        let setting = text(m, "name").to_ascii_lowercase().replace(' ', "_");
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
        self.walk_except(m, &[], acc, scope, d);
    }

    fn do_block(&mut self, m: &Obj, acc: &mut Collector, d: usize) {
        acc.class(Class::Procedural);
        acc.kind("do");
        let mut language = "plpgsql".to_owned();
        let mut body = None;
        for arg in list(m, "args") {
            if let Some(("DefElem", Value::Object(opt))) = typed(arg) {
                match text(opt, "defname") {
                    "language" => language = opt.get("arg").and_then(def_arg).unwrap_or_default(),
                    "as" => body = opt.get("arg").and_then(def_arg),
                    _ => {}
                }
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

    fn create_function(&mut self, m: &Obj, acc: &mut Collector, scope: &[String], d: usize) {
        ddl(
            acc,
            "create",
            if flag(m, "is_procedure") {
                "procedure"
            } else {
                "function"
            },
        );
        let mut language = String::new();
        let mut body: Option<String> = None;
        for opt in list(m, "options") {
            if let Some(("DefElem", Value::Object(opt))) = typed(opt) {
                match text(opt, "defname") {
                    "language" => language = opt.get("arg").and_then(def_arg).unwrap_or_default(),
                    "as" => {
                        body = opt.get("arg").and_then(|a| match typed(a) {
                            Some(("List", Value::Object(l))) => {
                                strings(list(l, "items")).into_iter().next()
                            }
                            _ => def_arg(a),
                        })
                    }
                    _ => {}
                }
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
            ("sql", Some(body)) => match pg_query::parse(&body, pg_query::ParserOptions::DEFAULT) {
                Ok(parsed) => self.parsed_statements(&parsed, acc, d),
                Err(e) => self.fail_syntax(error_message(&e)),
            },
            // A body in another language (PL/Python, PL/Perl, C, ...) is not read: whatever it
            // does, it does unseen.
            (language, _) if !matches!(language, "sql" | "plpgsql" | "") => super::dynamic_sql(acc),
            _ => {}
        }
        for key in ["parameters", "sql_body"] {
            if let Some(v) = m.get(key) {
                self.walk(v, acc, scope, d);
            }
        }
    }

    fn parsed_statements(&mut self, parsed: &pg_query::ParseResult, acc: &mut Collector, d: usize) {
        // Text parsed on its own (a function body, an expression in PL/pgSQL): its facts come
        // from text, not from the tree, and its constants sit at offsets into that text, which
        // must not be taken for the statement's own.
        self.literal_sensitive = true;
        self.nested_parses += 1;
        for raw in &parsed.protobuf.stmts {
            let Some(stmt) = raw.stmt.as_deref() else {
                continue;
            };
            match tree::to_tree(stmt) {
                Ok(tree) => self.top(&tree, acc, &[], true, d),
                Err(e) => self.fail(format!("could not read the parse tree: {e}")),
            }
        }
        self.nested_parses -= 1;
    }

    /// Reads a PL/pgSQL function (given as CREATE FUNCTION text) and analyses every SQL
    /// statement and expression in it. A body that cannot be read fails the analysis.
    fn plpgsql(&mut self, create_function: &str, acc: &mut Collector, d: usize) {
        self.literal_sensitive = true;
        match pg_query::parse_plpgsql(create_function) {
            Ok(tree) => self.plpgsql_walk(&tree, acc, d),
            Err(e) => self.fail_syntax(error_message(&e)),
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
        match pg_query::parse(query, mode) {
            Ok(parsed) => self.parsed_statements(&parsed, acc, d),
            Err(e) => self.fail_syntax(error_message(&e)),
        }
    }
}

/// The value of a DefElem argument as text (`'plpgsql'`, `true`, `0`).
fn def_arg(v: &Value) -> Option<String> {
    match typed(v)? {
        ("String", Value::Object(s)) => Some(text(s, "sval").to_ascii_lowercase()),
        ("Boolean", Value::Object(b)) => Some(flag(b, "boolval").to_string()),
        ("Integer", Value::Object(i)) => Some(int(i, "ival").to_string()),
        _ => None,
    }
}

/// Folds a WHERE expression: `Some(true)` only when it is provably always true. Sets `read` when
/// the answer looked at a constant's value.
fn truth(v: &Value, read: &mut bool) -> Option<bool> {
    truth_at(v, 0, read)
}

fn truth_at(v: &Value, depth: usize, read: &mut bool) -> Option<bool> {
    if depth > 64 {
        return None;
    }
    let (name, inner) = typed(v)?;
    let m = inner.as_object()?;
    match name {
        "BoolExpr" => {
            let args = list(m, "args").iter().map(|a| truth_at(a, depth + 1, read));
            match protobuf::BoolExprType::try_from(int(m, "boolop")) {
                Ok(protobuf::BoolExprType::AndExpr) => filter::and(args),
                Ok(protobuf::BoolExprType::OrExpr) => filter::or(args),
                Ok(protobuf::BoolExprType::NotExpr) => {
                    let mut args = args;
                    args.next().flatten().map(|b| !b)
                }
                _ => None,
            }
        }
        "AExpr" => {
            let op = strings(list(m, "name")).pop().unwrap_or_default();
            let kind = protobuf::AExprKind::try_from(int(m, "kind")).ok()?;
            let lexpr = m.get("lexpr")?;
            let rexpr = m.get("rexpr")?;
            match kind {
                protobuf::AExprKind::AexprOp | protobuf::AExprKind::AexprDistinct => {
                    if kind == protobuf::AExprKind::AexprOp
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
                    if kind == protobuf::AExprKind::AexprDistinct {
                        return Some(l != r);
                    }
                    filter::compare(&op, &l, &r, false)
                }
                protobuf::AExprKind::AexprIn => {
                    let l = constant(lexpr, depth + 1, read)?;
                    let items = match typed(rexpr) {
                        Some(("List", Value::Object(items))) => list(items, "items"),
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
        "NullTest" => {
            let c = constant(m.get("arg")?, depth + 1, read)?;
            let is_null = matches!(c, Const::Null);
            match protobuf::NullTestType::try_from(int(m, "nulltesttype")).ok()? {
                protobuf::NullTestType::IsNull => Some(is_null),
                protobuf::NullTestType::IsNotNull => Some(!is_null),
                _ => None,
            }
        }
        _ => constant(v, depth + 1, read)?.truth(),
    }
}

/// Two column references naming the same column (`id = id`, `t.id = t.id`).
fn same_column(a: &Value, b: &Value) -> bool {
    match (typed(a), typed(b)) {
        (Some(("ColumnRef", Value::Object(x))), Some(("ColumnRef", Value::Object(y)))) => {
            let (fx, fy) = (strings(list(x, "fields")), strings(list(y, "fields")));
            !fx.is_empty() && fx == fy
        }
        _ => false,
    }
}

/// Reduces a literal (possibly cast, or a nested comparison) to a constant; sets `read` when it
/// reads one.
fn constant(v: &Value, depth: usize, read: &mut bool) -> Option<Const> {
    if depth > 64 {
        return None;
    }
    let (name, inner) = typed(v)?;
    let m = inner.as_object()?;
    match name {
        "AConst" => {
            *read = true;
            if flag(m, "isnull") {
                return Some(Const::Null);
            }
            let (kind, val) = typed(m.get("val")?)?;
            let val = val.as_object()?;
            match kind {
                "Ival" => Some(Const::Num(f64::from(int(val, "ival")))),
                "Fval" => text(val, "fval").parse().ok().map(Const::Num),
                "Boolval" => Some(Const::Bool(flag(val, "boolval"))),
                "Sval" => Some(Const::Str(text(val, "sval").to_owned())),
                _ => None,
            }
        }
        "TypeCast" => {
            let c = constant(m.get("arg")?, depth + 1, read)?;
            let type_name = object(m, "type_name")
                .map(|t| strings(list(t, "names")))
                .unwrap_or_default();
            match type_name.last().map(String::as_str) {
                Some("bool") => c.truth().map(Const::Bool),
                _ => Some(c),
            }
        }
        "BoolExpr" | "AExpr" | "NullTest" => truth_at(v, depth + 1, read).map(Const::Bool),
        _ => None,
    }
}
