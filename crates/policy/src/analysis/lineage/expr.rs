//! Expressions: column references, function calls (built in, or opaque), subqueries in
//! expressions, window definitions, and the generic walk that everything else goes through.

use std::sync::Arc;

use gateway_core::masking::{Hazard, SourceColumn};
use pg_query::protobuf as pb;
use pg_query::protobuf::node::Node as N;

use super::super::pg_builtins;
use super::super::pg_nodes::{self, Visit};
use super::scope::{self, Scope};
use super::{string, whole, Tracer, Val};

/// Functions that read or write server files or large objects, outside the result protocol.
const SERVER_FILE_FUNCTIONS: &[&str] = &[
    "lo_export",
    "lo_from_bytea",
    "lo_get",
    "lo_import",
    "lo_put",
    "loread",
    "lowrite",
    "pg_file_write",
    "pg_ls_dir",
    "pg_read_binary_file",
    "pg_read_file",
    "pg_stat_file",
];

/// Functions that keep their arguments' values where the client can read them later: settings,
/// notifications, large objects, messages in the write-ahead log, sequences, advisory lock keys.
const STORING_FUNCTIONS: &[&str] = &[
    "lo_create",
    "lo_from_bytea",
    "lo_import",
    "lo_put",
    "lowrite",
    // Advisory lock keys are listed in pg_locks for every session to read.
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    // Names that end up in catalogs and views (restore points, slots, origins).
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_restore_point",
    "pg_logical_emit_message",
    "pg_notify",
    "pg_replication_origin_create",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "set_config",
    // A sequence's value is read back with currval, nextval or SELECT last_value.
    "setval",
];

/// Built-in functions whose result carries data read by other means than their arguments:
/// taken as opaque, like functions that are not built in. Logical decoding returns the changes
/// to any table; large objects may hold whatever was stored in them.
const OPAQUE_BUILTINS: &[&str] = &[
    "lo_get",
    "loread",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_binary_changes",
    "pg_logical_slot_peek_changes",
];

/// Hands each child of a node to [`Tracer::expr`] and unions what they carry.
struct Gather<'t, 's> {
    tracer: &'t mut Tracer,
    scope: &'s Scope<'s>,
    val: Val,
}

impl Visit for Gather<'_, '_> {
    fn node(&mut self, node: &pb::Node) {
        let v = self.tracer.expr(node, self.scope);
        self.val.absorb(v);
    }

    fn range_var(&mut self, _: &pb::RangeVar) {}

    fn func_call(&mut self, call: &pb::FuncCall) {
        let v = self.tracer.func_call(call, self.scope);
        self.val.absorb(v);
    }
}

impl Tracer {
    /// What the value of an expression may carry.
    pub(super) fn expr(&mut self, node: &pb::Node, scope: &Scope<'_>) -> Val {
        let Some(n) = &node.node else {
            return Val::default();
        };
        if !self.enter() {
            return Val::default();
        }
        let v = self.expr_at(n, scope);
        self.leave();
        v
    }

    fn expr_at(&mut self, n: &N, scope: &Scope<'_>) -> Val {
        match n {
            N::ColumnRef(c) => {
                let v = scope::column(scope, &c.fields);
                self.read(&v);
                v
            }
            N::AConst(_)
            | N::ParamRef(_)
            | N::SetToDefault(_)
            | N::SqlvalueFunction(_)
            | N::String(_)
            | N::Integer(_)
            | N::Float(_)
            | N::Boolean(_)
            | N::BitString(_)
            | N::TypeName(_) => Val::default(),
            N::FuncCall(f) => self.func_call(f, scope),
            N::SubLink(s) => self.sublink(s, scope),
            N::TypeCast(t) => match &t.arg {
                Some(arg) => self.expr(arg, scope).derived(),
                None => Val::default(),
            },
            N::MultiAssignRef(m) => self.multi_assign(m, scope),
            // A query where an expression was expected (JSON_ARRAY(SELECT ...)): what its rows
            // carry.
            _ if pg_nodes::name(n).ends_with("Stmt") => {
                let cols = self.statement(n, Some(scope)).unwrap_or_default();
                whole(&cols)
            }
            _ => self.gather(n, scope),
        }
    }

    /// The generic walk: the union of what every child carries, a derived value.
    pub(super) fn gather(&mut self, n: &N, scope: &Scope<'_>) -> Val {
        let mut g = Gather {
            tracer: self,
            scope,
            val: Val::default(),
        };
        pg_nodes::children(n, &[], &mut g);
        g.val.derived()
    }

    /// The union of what a list of expressions carries.
    pub(super) fn gather_list(&mut self, list: &[pb::Node], scope: &Scope<'_>) -> Val {
        let mut v = Val::default();
        for e in list {
            v.absorb(self.expr(e, scope));
        }
        v
    }

    /// A function call: its arguments (and an aggregate's ORDER BY and FILTER, which shape its
    /// value); a function that is not built in may return anything its owner can read. The
    /// window of a window function is a predicate.
    pub(super) fn func_call(&mut self, f: &pb::FuncCall, scope: &Scope<'_>) -> Val {
        if !self.enter() {
            return Val::default();
        }
        let args = self.gather_list(&f.args, scope);
        let mut v = args.clone();
        for o in &f.agg_order {
            v.absorb(self.expr(o, scope));
        }
        if let Some(filter) = &f.agg_filter {
            v.absorb(self.expr(filter, scope));
        }
        if let Some(w) = &f.over {
            self.window(w, scope);
        }
        let parts: Vec<&str> = f.funcname.iter().filter_map(string).collect();
        if let Some(&last) = parts.last() {
            let written: Arc<str> = Arc::from(parts.join(".").as_str());
            self.function_hazards(last, &written, args);
            let catalog = match parts.as_slice() {
                [_] => true,
                [.., schema, _] => *schema == "pg_catalog",
                [] => false,
            };
            // A function that runs SQL text returns whatever that SQL reads, built in or not.
            let opaque = !(catalog && pg_builtins::is_builtin(last))
                || OPAQUE_BUILTINS.contains(&last)
                || super::super::runs_dynamic_sql(last);
            if opaque {
                let opaque = SourceColumn::Opaque { function: written };
                self.reads.add(opaque.clone());
                v.add(opaque);
            }
        }
        self.leave();
        v.derived()
    }

    /// The hazards of calling `name` (its last name part) with arguments carrying `args`.
    fn function_hazards(&mut self, name: &str, written: &Arc<str>, args: Val) {
        if super::super::runs_dynamic_sql(name) {
            self.hazard(Hazard::Dynamic);
        }
        if SERVER_FILE_FUNCTIONS.contains(&name) {
            self.hazard(Hazard::ServerFile {
                function: Arc::clone(written),
            });
        }
        if STORING_FUNCTIONS.contains(&name) {
            self.stores(args);
        }
    }

    /// A window definition: everything in it decides which rows a value is computed over.
    pub(super) fn window(&mut self, w: &pb::WindowDef, scope: &Scope<'_>) {
        let mut v = self.gather_list(&w.partition_clause, scope);
        v.absorb(self.gather_list(&w.order_clause, scope));
        for offset in [&w.start_offset, &w.end_offset].into_iter().flatten() {
            v.absorb(self.expr(offset, scope));
        }
        self.predicate(v);
    }

    /// A subquery in an expression. A scalar or ARRAY subquery carries its outputs; EXISTS, IN,
    /// ANY, ALL and row comparisons give a boolean, so what they test is a predicate.
    fn sublink(&mut self, s: &pb::SubLink, scope: &Scope<'_>) -> Val {
        let cols = s
            .subselect
            .as_deref()
            .and_then(|q| q.node.as_ref())
            .and_then(|q| self.statement(q, Some(scope)))
            .unwrap_or_default();
        let exists = s.sub_link_type == pb::SubLinkType::ExistsSublink as i32;
        let mut inner = Val::default();
        for c in &cols {
            // What EXISTS's select list says of a row does not change whether there is one
            // (a set-returning function there may: values are kept).
            if !(exists && matches!(c.out, super::Out::Star(_))) {
                c.whole(&mut inner);
            }
        }
        let tested = match &s.testexpr {
            Some(t) => self.expr(t, scope),
            None => Val::default(),
        };
        match pb::SubLinkType::try_from(s.sub_link_type) {
            Ok(
                pb::SubLinkType::ExistsSublink
                | pb::SubLinkType::AllSublink
                | pb::SubLinkType::AnySublink
                | pb::SubLinkType::RowcompareSublink,
            ) => {
                self.predicate(tested);
                self.predicate(inner);
                Val::default()
            }
            _ => {
                let mut v = inner;
                v.absorb(tested);
                v.derived()
            }
        }
    }

    /// One column of `SET (a, b) = (...)`: of a row constructor, its own element; of a
    /// subquery, all its outputs.
    fn multi_assign(&mut self, m: &pb::MultiAssignRef, scope: &Scope<'_>) -> Val {
        let Some(source) = &m.source else {
            return Val::default();
        };
        if let Some(N::RowExpr(row)) = &source.node {
            let element = usize::try_from(m.colno)
                .ok()
                .and_then(|c| c.checked_sub(1))
                .and_then(|i| row.args.get(i));
            if let (Some(e), true) = (
                element,
                row.args.len() == usize::try_from(m.ncolumns).unwrap_or(0),
            ) {
                return self.expr(e, scope).derived();
            }
        }
        self.expr(source, scope).derived()
    }
}

/// The name PostgreSQL gives an output without an alias (FigureColname), when this module is
/// sure of it; `None` where PostgreSQL would say `?column?` or this module does not know. The
/// second value is the name's strength (a cast prefers a stronger name of its argument).
pub(super) fn colname(node: &pb::Node) -> Option<Arc<str>> {
    colname_at(node, 0).map(|(name, _)| name)
}

fn colname_at(node: &pb::Node, depth: usize) -> Option<(Arc<str>, u8)> {
    if depth > 32 {
        return None;
    }
    let named = |s: &str, strength: u8| Some((Arc::from(s), strength));
    match node.node.as_ref()? {
        N::ColumnRef(c) => c.fields.last().and_then(string).and_then(|s| named(s, 2)),
        N::AIndirection(i) => match i.indirection.iter().rev().find_map(|x| match &x.node {
            Some(N::String(s)) => Some(Some(s.sval.as_str())),
            Some(N::AStar(_)) => Some(None),
            _ => None,
        }) {
            Some(Some(field)) => named(field, 2),
            Some(None) => None,
            None => colname_at(i.arg.as_deref()?, depth + 1),
        },
        N::FuncCall(f) => f.funcname.last().and_then(string).and_then(|s| named(s, 2)),
        N::AExpr(e) if e.kind == pb::AExprKind::AexprNullif as i32 => named("nullif", 2),
        N::TypeCast(t) => {
            let inner = t.arg.as_deref().and_then(|a| colname_at(a, depth + 1));
            match inner {
                Some((name, strength)) if strength > 1 => Some((name, strength)),
                _ => {
                    let type_name = t.type_name.as_ref()?.names.last().and_then(string)?;
                    named(type_name, 1)
                }
            }
        }
        N::CollateClause(c) => colname_at(c.arg.as_deref()?, depth + 1),
        N::GroupingFunc(_) => named("grouping", 2),
        N::SubLink(s) => match pb::SubLinkType::try_from(s.sub_link_type).ok()? {
            pb::SubLinkType::ExistsSublink => named("exists", 2),
            pb::SubLinkType::ArraySublink => named("array", 2),
            pb::SubLinkType::ExprSublink => {
                let Some(N::SelectStmt(q)) = s.subselect.as_deref()?.node.as_ref() else {
                    return None;
                };
                let Some(N::ResTarget(t)) = q.target_list.first()?.node.as_ref() else {
                    return None;
                };
                if t.name.is_empty() {
                    colname_at(t.val.as_deref()?, depth + 1)
                } else {
                    named(&t.name, 2)
                }
            }
            _ => None,
        },
        N::CaseExpr(_) => named("case", 1),
        N::AArrayExpr(_) => named("array", 2),
        N::RowExpr(_) => named("row", 2),
        N::CoalesceExpr(_) => named("coalesce", 2),
        N::MinMaxExpr(m) => match pb::MinMaxOp::try_from(m.op).ok()? {
            pb::MinMaxOp::IsGreatest => named("greatest", 2),
            pb::MinMaxOp::IsLeast => named("least", 2),
            pb::MinMaxOp::Undefined => None,
        },
        _ => None,
    }
}
