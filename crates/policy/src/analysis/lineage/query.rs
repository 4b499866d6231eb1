//! Queries: SELECT with its FROM items and clauses, set operations, VALUES, and WITH (also
//! recursive).

use std::rc::Rc;
use std::sync::Arc;

use gateway_core::masking::{RelationName, SourceColumn};
use pg_query::protobuf as pb;
use pg_query::protobuf::node::Node as N;

use super::expr::colname;
use super::scope::{self, Item, Scope};
use super::{names, string, whole, Col, Cte, Out, Tracer, Val, MAX_PASSES, MAX_RECURSIVE_PASSES};

/// Built-in functions whose columns in FROM are known: the column names (one column named after
/// the function, or an alias, when empty).
const FROM_FUNCTIONS: &[(&str, &[&str])] = &[
    ("generate_series", &[]),
    ("generate_subscripts", &[]),
    ("json_array_elements", &[]),
    ("json_array_elements_text", &[]),
    ("json_each", &["key", "value"]),
    ("json_each_text", &["key", "value"]),
    ("json_object_keys", &[]),
    ("jsonb_array_elements", &[]),
    ("jsonb_array_elements_text", &[]),
    ("jsonb_each", &["key", "value"]),
    ("jsonb_each_text", &["key", "value"]),
    ("jsonb_object_keys", &[]),
    ("jsonb_path_query", &[]),
    ("regexp_matches", &[]),
    ("regexp_split_to_table", &[]),
    ("string_to_table", &[]),
    ("unnest", &[]),
];

impl Tracer {
    /// A SELECT (plain, set operation or VALUES) with its WITH clause.
    pub(super) fn select(&mut self, s: &pb::SelectStmt, outer: Option<&Scope<'_>>) -> Vec<Col> {
        if !self.enter() {
            return Vec::new();
        }
        let mark = self.ctes.len();
        if let Some(with) = &s.with_clause {
            self.with(with, outer);
        }
        let cols = match pb::SetOperation::try_from(s.op) {
            Ok(
                pb::SetOperation::SetopUnion
                | pb::SetOperation::SetopIntersect
                | pb::SetOperation::SetopExcept,
            ) => self.set_operation(s, outer),
            _ if !s.values_lists.is_empty() => self.values(&s.values_lists, outer),
            _ => self.simple_select(s, outer),
        };
        self.ctes.truncate(mark);
        self.leave();
        cols
    }

    fn set_operation(&mut self, s: &pb::SelectStmt, outer: Option<&Scope<'_>>) -> Vec<Col> {
        let left = match &s.larg {
            Some(l) => self.select(l, outer),
            None => Vec::new(),
        };
        let right = match &s.rarg {
            Some(r) => self.select(r, outer),
            None => Vec::new(),
        };
        let cols = merge_positions(left, right);
        // ORDER BY and LIMIT of the whole: output names, ordinals, or expressions over nothing.
        let nothing = Scope::new(&[], outer);
        for key in &s.sort_clause {
            self.sort_key(key, &nothing, &cols);
        }
        self.limits(s, &nothing);
        cols
    }

    /// VALUES: per column, the union of each row's expression there.
    fn values(&mut self, rows: &[pb::Node], outer: Option<&Scope<'_>>) -> Vec<Col> {
        let scope = Scope::new(&[], outer);
        let mut vals: Vec<Val> = Vec::new();
        for row in rows {
            let Some(N::List(list)) = &row.node else {
                continue;
            };
            for (i, e) in list.items.iter().enumerate() {
                let v = self.expr(e, &scope).derived();
                match vals.get_mut(i) {
                    Some(existing) => existing.absorb(v),
                    None => vals.push(v),
                }
            }
        }
        vals.into_iter()
            .enumerate()
            .map(|(i, v)| Col::value(Some(Arc::from(format!("column{}", i + 1))), v))
            .collect()
    }

    fn simple_select(&mut self, s: &pb::SelectStmt, outer: Option<&Scope<'_>>) -> Vec<Col> {
        let mut items = Vec::new();
        for f in &s.from_clause {
            self.add_from_item(f, &mut items, outer);
        }
        let scope = Scope::new(&items, outer);
        for w in &s.window_clause {
            if let Some(N::WindowDef(def)) = &w.node {
                self.window(def, &scope);
            }
        }
        let cols = self.targets(&s.target_list, &scope);
        if let Some(w) = &s.where_clause {
            let v = self.expr(w, &scope);
            self.predicate(v);
        }
        for key in &s.group_clause {
            self.sort_key(key, &scope, &cols);
        }
        if let Some(h) = &s.having_clause {
            let v = self.expr(h, &scope);
            self.predicate(v);
        }
        for key in s.sort_clause.iter().chain(&s.distinct_clause) {
            self.sort_key(key, &scope, &cols);
        }
        self.limits(s, &scope);
        cols
    }

    fn limits(&mut self, s: &pb::SelectStmt, scope: &Scope<'_>) {
        for limit in [&s.limit_offset, &s.limit_count].into_iter().flatten() {
            let v = self.expr(limit, scope);
            self.predicate(v);
        }
    }

    /// A select list (or RETURNING list): `*` and `t.*` expand, everything else is one value.
    pub(super) fn targets(&mut self, list: &[pb::Node], scope: &Scope<'_>) -> Vec<Col> {
        let mut cols = Vec::with_capacity(list.len());
        for t in list {
            let Some(N::ResTarget(target)) = &t.node else {
                continue;
            };
            let Some(val) = target.val.as_deref() else {
                continue;
            };
            let ends_in_star = |fields: &[pb::Node]| {
                matches!(
                    fields.last().and_then(|f| f.node.as_ref()),
                    Some(N::AStar(_))
                )
            };
            match &val.node {
                Some(N::ColumnRef(c)) if ends_in_star(&c.fields) => {
                    self.star(&c.fields, scope, &mut cols);
                    continue;
                }
                // `(x).*`: as many columns as x's type has fields.
                Some(N::AIndirection(i)) if ends_in_star(&i.indirection) => {
                    let v = self.expr(val, scope);
                    cols.push(Col::out(Out::Many {
                        stars: Vec::new(),
                        val: v,
                    }));
                    continue;
                }
                _ => {}
            }
            let v = self.expr(val, scope);
            let name = if target.name.is_empty() {
                colname(val)
            } else {
                Some(Arc::from(target.name.as_str()))
            };
            cols.push(Col::value(name, v));
        }
        cols
    }

    /// `*`, `t.*` or `s.t.*` in a select list.
    fn star(&mut self, fields: &[pb::Node], scope: &Scope<'_>, cols: &mut Vec<Col>) {
        let qualifier: Vec<&str> = fields.iter().filter_map(string).collect();
        let (schema, table) = match qualifier.as_slice() {
            [] => {
                scope::expand_all(scope.items, scope.items, cols);
                return;
            }
            [table] => (None, *table),
            [.., schema, table] => (Some(*schema), *table),
        };
        match scope::find_items(scope, schema, table) {
            Some((level, hits)) => {
                for item in hits {
                    scope::expand_item(level, item, cols);
                }
            }
            // No such item: PostgreSQL refuses the statement.
            None => cols.push(Col::out(Out::Star(RelationName {
                schema: schema.map(Arc::from),
                name: Arc::from(table),
            }))),
        }
    }

    /// A GROUP BY, ORDER BY or DISTINCT ON key. A bare name may be an output's (ORDER BY
    /// prefers those, GROUP BY input columns: both are taken); an integer is an output's
    /// position, taken as any output so that the lineage does not depend on the literal.
    fn sort_key(&mut self, key: &pb::Node, scope: &Scope<'_>, cols: &[Col]) {
        let node = match &key.node {
            Some(N::SortBy(s)) => match s.node.as_deref() {
                Some(n) => n,
                None => return,
            },
            _ => key,
        };
        match &node.node {
            None => {}
            Some(N::GroupingSet(g)) => {
                for k in &g.content {
                    self.sort_key(k, scope, cols);
                }
            }
            Some(N::List(l)) => {
                for k in &l.items {
                    self.sort_key(k, scope, cols);
                }
            }
            Some(N::AConst(_)) => self.predicate(whole(cols)),
            Some(N::ColumnRef(c)) if c.fields.len() == 1 => {
                let name = c.fields.first().and_then(string);
                let mut v = Val::default();
                let mut output = false;
                for col in cols
                    .iter()
                    .filter(|c| name.is_some() && c.name.as_deref() == name)
                {
                    output = true;
                    col.whole(&mut v);
                }
                if !output || !scope.items.is_empty() {
                    v.absorb(self.expr(node, scope));
                }
                self.predicate(v);
            }
            Some(_) => {
                let v = self.expr(node, scope);
                self.predicate(v);
            }
        }
    }

    /// Adds one FROM item (a join adds its sides, then its own entries) to `items`.
    pub(super) fn add_from_item(
        &mut self,
        node: &pb::Node,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) {
        let Some(n) = &node.node else { return };
        if !self.enter() {
            return;
        }
        match n {
            N::RangeVar(rv) => {
                let item = self.range_var(rv);
                items.push(item);
            }
            N::RangeSubselect(sub) => {
                let cols = {
                    let lateral = Scope::new(items, outer);
                    let scope = if sub.lateral { Some(&lateral) } else { outer };
                    sub.subquery
                        .as_deref()
                        .and_then(|q| q.node.as_ref())
                        .and_then(|q| self.statement(q, scope))
                        .unwrap_or_default()
                };
                let (name, aliases) = alias(sub.alias.as_ref());
                let cols = rename(cols, &aliases);
                items.push(Item::derived(name, cols.into(), false));
            }
            N::RangeFunction(f) => {
                let item = self.range_function(f, items, outer);
                items.push(item);
            }
            N::JoinExpr(j) => self.join(j, items, outer),
            N::RangeTableSample(t) => {
                if let Some(rel) = &t.relation {
                    self.add_from_item(rel, items, outer);
                }
                let scope = Scope::new(items, outer);
                let mut v = self.gather_list(&t.args, &scope);
                if let Some(r) = &t.repeatable {
                    v.absorb(self.expr(r, &scope));
                }
                self.predicate(v);
            }
            N::RangeTableFunc(t) => {
                // XMLTABLE: every column is computed from the document and the paths.
                let v = {
                    let scope = Scope::new(items, outer);
                    self.gather(n, &scope)
                };
                let (name, aliases) = alias(t.alias.as_ref());
                let cols: Vec<Col> = t
                    .columns
                    .iter()
                    .filter_map(|c| match &c.node {
                        Some(N::RangeTableFuncCol(col)) => {
                            Some(Col::value(Some(Arc::from(col.colname.as_str())), v.clone()))
                        }
                        _ => None,
                    })
                    .collect();
                items.push(Item::derived(name, rename(cols, &aliases).into(), false));
            }
            N::JsonTable(t) => {
                let v = {
                    let scope = Scope::new(items, outer);
                    self.gather(n, &scope)
                };
                let mut column_names = Vec::new();
                json_table_columns(&t.columns, &mut column_names, 0);
                let (name, _) = alias(t.alias.as_ref());
                let cols: Vec<Col> = column_names
                    .into_iter()
                    .map(|c| Col::value(Some(c), v.clone()))
                    .collect();
                items.push(Item::derived(name, cols.into(), false));
            }
            _ => {
                // A FROM item of a kind not known here: one output of unknown width carrying
                // everything in it.
                let v = {
                    let scope = Scope::new(items, outer);
                    self.gather(n, &scope)
                };
                let cols = vec![Col::out(Out::Many {
                    stars: Vec::new(),
                    val: v,
                })];
                items.push(Item::derived(Arc::from(""), cols.into(), false));
            }
        }
        self.leave();
    }

    /// A relation in FROM: a CTE in scope, else a base relation.
    fn range_var(&mut self, rv: &pb::RangeVar) -> Item {
        if rv.schemaname.is_empty() {
            if let Some(cte) = self.ctes.iter().rev().find(|c| *c.name == *rv.relname) {
                let (name, aliases) = alias(rv.alias.as_ref());
                let name = if name.is_empty() {
                    Arc::clone(&cte.name)
                } else {
                    name
                };
                let cols = if aliases.is_empty() {
                    Rc::clone(&cte.cols)
                } else {
                    rename(cte.cols.to_vec(), &aliases).into()
                };
                return Item::derived(name, cols, cte.pending);
            }
        }
        let item = Item::base(rv, None);
        if let scope::Kind::Base { rel, .. } = &item.kind {
            self.relation(rel);
        }
        item
    }

    /// A function in FROM (also ROWS FROM): its columns carry its arguments (and, unless it is
    /// built in, whatever it reads). A function sees the FROM items before it (implicitly
    /// LATERAL).
    fn range_function(
        &mut self,
        f: &pb::RangeFunction,
        items: &[Item],
        outer: Option<&Scope<'_>>,
    ) -> Item {
        let scope = Scope::new(items, outer);
        let (alias_name, aliases) = alias(f.alias.as_ref());
        let mut cols = Vec::new();
        let mut first_name: Option<Arc<str>> = None;
        let single = f.functions.len() == 1;
        for entry in &f.functions {
            let Some(N::List(pair)) = &entry.node else {
                continue;
            };
            let Some(call) = pair.items.first() else {
                continue;
            };
            let v = self.expr(call, &scope).derived();
            let parts: Vec<&str> = match &call.node {
                Some(N::FuncCall(fc)) => fc.funcname.iter().filter_map(string).collect(),
                _ => Vec::new(),
            };
            let function = parts.last().copied();
            if first_name.is_none() {
                first_name = function.map(Arc::from);
            }
            let declared = match pair.items.get(1).and_then(|d| d.node.as_ref()) {
                Some(N::List(defs)) if !defs.items.is_empty() => names(&defs.items),
                _ if single => names(&f.coldeflist),
                _ => Vec::new(),
            };
            if !declared.is_empty() {
                cols.extend(declared.into_iter().map(|c| Col::value(Some(c), v.clone())));
                continue;
            }
            let args = match &call.node {
                Some(N::FuncCall(fc)) => fc.args.len(),
                _ => 0,
            };
            // Only PostgreSQL's own: a function of that name elsewhere may return anything.
            let built_in = matches!(parts.as_slice(), [_] | ["pg_catalog", _]);
            let known = function.filter(|_| built_in).and_then(|name| {
                FROM_FUNCTIONS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(n, columns)| (*n, *columns))
            });
            match known {
                Some((name, [])) => {
                    // One column named after the function (or after the alias, when it is the
                    // only function); `unnest(a, b)` has one per argument.
                    let column: Arc<str> = if single && !alias_name.is_empty() {
                        Arc::clone(&alias_name)
                    } else {
                        Arc::from(name)
                    };
                    let count = if name == "unnest" { args.max(1) } else { 1 };
                    for _ in 0..count {
                        cols.push(Col::value(Some(Arc::clone(&column)), v.clone()));
                    }
                }
                Some((_, columns)) => {
                    cols.extend(
                        columns
                            .iter()
                            .map(|c| Col::value(Some(Arc::from(*c)), v.clone())),
                    );
                }
                None => cols.push(Col::out(Out::Many {
                    stars: Vec::new(),
                    val: v,
                })),
            }
        }
        if f.ordinality {
            cols.push(Col::value(Some(Arc::from("ordinality")), Val::default()));
        }
        let name = if alias_name.is_empty() {
            first_name.unwrap_or_else(|| Arc::from(""))
        } else {
            alias_name
        };
        Item::derived(name, rename(cols, &aliases).into(), false)
    }

    /// A JOIN: both sides, then the merged USING columns, the ON condition (a predicate), and
    /// the join's alias.
    fn join(&mut self, j: &pb::JoinExpr, items: &mut Vec<Item>, outer: Option<&Scope<'_>>) {
        let start = items.len();
        if let Some(l) = &j.larg {
            self.add_from_item(l, items, outer);
        }
        let middle = items.len();
        if let Some(r) = &j.rarg {
            self.add_from_item(r, items, outer);
        }
        let end = items.len();
        if !j.using_clause.is_empty() || j.is_natural {
            let mut merged = Vec::new();
            for name in names(&j.using_clause) {
                let mut v = Val::alternatives();
                for side in [start..middle, middle..end] {
                    let side = items.get(side).unwrap_or(&[]);
                    match scope::resolve_level(side, &name) {
                        Some((sv, _)) => v.either(sv),
                        None => v.either(Val::derived_from(SourceColumn::Column {
                            relation: None,
                            column: Arc::clone(&name),
                        })),
                    }
                }
                self.read(&v);
                merged.push((name, v));
            }
            let using_alias = j
                .join_using_alias
                .as_ref()
                .map_or("", |a| a.aliasname.as_str());
            items.push(Item::using(using_alias, merged));
        }
        if let Some(quals) = &j.quals {
            let scope = Scope::new(items, outer);
            let v = self.expr(quals, &scope);
            self.predicate(v);
        }
        if let Some(a) = j.alias.as_ref().filter(|a| !a.aliasname.is_empty()) {
            let members = start..items.len();
            items.push(Item::join(&a.aliasname, members, !a.colnames.is_empty()));
        }
    }

    /// A WITH clause: its queries become CTEs in scope for the rest of the statement. Those of
    /// WITH RECURSIVE see each other (and themselves): they are computed again until nothing
    /// changes, each reference contributing the current approximation.
    pub(super) fn with(&mut self, w: &pb::WithClause, outer: Option<&Scope<'_>>) {
        let ctes: Vec<&pb::CommonTableExpr> = w
            .ctes
            .iter()
            .filter_map(|c| match &c.node {
                Some(N::CommonTableExpr(cte)) => Some(&**cte),
                _ => None,
            })
            .collect();
        if !w.recursive {
            for cte in ctes {
                let cols = self.cte_cols(cte, outer);
                self.ctes.push(Cte {
                    name: Arc::from(cte.ctename.as_str()),
                    cols: cols.into(),
                    pending: false,
                });
            }
            return;
        }
        let base = self.ctes.len();
        for cte in &ctes {
            self.ctes.push(Cte {
                name: Arc::from(cte.ctename.as_str()),
                cols: Rc::from(Vec::new()),
                pending: true,
            });
        }
        let mut stable = false;
        for _ in 0..MAX_PASSES {
            if !self.spend_pass() {
                return;
            }
            stable = self.recursive_pass(&ctes, base, outer);
            if stable {
                break;
            }
        }
        if !stable {
            // Still changing: every column may carry anything any of these queries carries.
            // That is everything they will ever carry: a source reaches a column either from
            // outside these queries, which every pass adds, or through a reference to one of
            // them, which only moves what they already carry.
            let mut all = Val::default();
            for cte in self.ctes.get(base..).unwrap_or(&[]) {
                all.absorb(whole(&cte.cols));
            }
            for cte in self.ctes.get_mut(base..).unwrap_or(&mut []) {
                let widened: Vec<Col> = cte
                    .cols
                    .iter()
                    .map(|c| Col {
                        name: c.name.clone(),
                        out: match &c.out {
                            Out::Value(_) => Out::Value(all.clone()),
                            Out::Star(rel) => Out::Many {
                                stars: vec![rel.clone()],
                                val: all.clone(),
                            },
                            Out::Many { stars, .. } => Out::Many {
                                stars: stars.clone(),
                                val: all.clone(),
                            },
                        },
                        renamed: c.renamed,
                    })
                    .collect();
                cte.cols = widened.into();
            }
            // Once more over the widened columns, for the predicates and hazards that read them.
            if self.spend_pass() {
                self.recursive_pass(&ctes, base, outer);
            }
        }
    }

    /// One pass over a WITH RECURSIVE list whose CTEs are at `base..` of the CTEs in scope:
    /// each query computed with the current columns of all, its result merged into its own.
    /// Whether nothing changed.
    fn recursive_pass(
        &mut self,
        ctes: &[&pb::CommonTableExpr],
        base: usize,
        outer: Option<&Scope<'_>>,
    ) -> bool {
        let mut stable = true;
        for (i, cte) in ctes.iter().enumerate() {
            let new = self.cte_cols(cte, outer);
            let Some(slot) = self.ctes.get_mut(base + i) else {
                continue;
            };
            let merged = if slot.pending {
                new
            } else if *slot.cols == *new {
                continue;
            } else {
                merge_positions(slot.cols.to_vec(), new)
            };
            if slot.pending || *slot.cols != *merged {
                stable = false;
            }
            slot.cols = merged.into();
            slot.pending = false;
        }
        stable
    }

    /// Counts one pass over a WITH RECURSIVE list against the statement's budget; past it the
    /// statement is untraced (nested recursive queries would otherwise multiply their passes).
    fn spend_pass(&mut self) -> bool {
        if self.recursive_passes >= MAX_RECURSIVE_PASSES {
            self.untraced = true;
            return false;
        }
        self.recursive_passes += 1;
        true
    }

    /// The outputs of one CTE's query, named by its column list, with the columns SEARCH and
    /// CYCLE add.
    fn cte_cols(&mut self, cte: &pb::CommonTableExpr, outer: Option<&Scope<'_>>) -> Vec<Col> {
        let cols = cte
            .ctequery
            .as_deref()
            .and_then(|q| q.node.as_ref())
            .and_then(|q| self.statement(q, outer))
            .unwrap_or_default();
        let mut cols = rename(cols, &names(&cte.aliascolnames));
        if let Some(search) = &cte.search_clause {
            let mut v = Val::default();
            for name in names(&search.search_col_list) {
                v.absorb(scope::derived_column(&cols, &name));
            }
            cols.push(Col::value(
                Some(Arc::from(search.search_seq_column.as_str())),
                v.derived(),
            ));
        }
        if let Some(cycle) = &cte.cycle_clause {
            let mut v = Val::default();
            for name in names(&cycle.cycle_col_list) {
                v.absorb(scope::derived_column(&cols, &name));
            }
            self.predicate(v.clone());
            cols.push(Col::value(
                Some(Arc::from(cycle.cycle_mark_column.as_str())),
                Val::default(),
            ));
            cols.push(Col::value(
                Some(Arc::from(cycle.cycle_path_column.as_str())),
                v.derived(),
            ));
        }
        cols
    }
}

/// A FROM item's alias: its name (empty without one) and column names.
fn alias(a: Option<&pb::Alias>) -> (Arc<str>, Vec<Arc<str>>) {
    match a {
        Some(a) => (Arc::from(a.aliasname.as_str()), names(&a.colnames)),
        None => (Arc::from(""), Vec::new()),
    }
}

/// Applies a column alias list by position. Past a `*` (or an output of unknown width) the
/// positions are not known: from there on, no name is certain.
pub(super) fn rename(mut cols: Vec<Col>, aliases: &[Arc<str>]) -> Vec<Col> {
    if aliases.is_empty() {
        return cols;
    }
    let mut next = aliases.iter();
    let mut lost = false;
    for c in &mut cols {
        if lost {
            c.name = None;
            c.renamed = true;
            continue;
        }
        match c.out {
            Out::Value(_) => match next.next() {
                Some(name) => c.name = Some(Arc::clone(name)),
                None => break,
            },
            Out::Star(_) | Out::Many { .. } => {
                lost = true;
                c.renamed = true;
            }
        }
    }
    cols
}

/// The columns of a set operation (or of a recursive query's passes): the union of both sides
/// at each position, plain only where both are. A side with `*` or an output of unknown width
/// makes positions unknowable: one output of unknown width then carries everything.
pub(super) fn merge_positions(left: Vec<Col>, right: Vec<Col>) -> Vec<Col> {
    let all_values = left
        .iter()
        .chain(&right)
        .all(|c| matches!(c.out, Out::Value(_)));
    if !all_values {
        let mut stars: Vec<RelationName> = Vec::new();
        let mut val = Val::default();
        for c in left.iter().chain(&right) {
            match &c.out {
                Out::Star(rel) => {
                    if !stars.contains(rel) {
                        stars.push(rel.clone());
                    }
                }
                Out::Value(v) => val.absorb(v.clone()),
                Out::Many { stars: s, val: v } => {
                    for rel in s {
                        if !stars.contains(rel) {
                            stars.push(rel.clone());
                        }
                    }
                    val.absorb(v.clone());
                }
            }
        }
        return vec![Col::out(Out::Many {
            stars,
            val: val.derived(),
        })];
    }
    let mut right = right.into_iter();
    let mut cols: Vec<Col> = left
        .into_iter()
        .map(|mut l| {
            if let Some(r) = right.next() {
                if let (Out::Value(lv), Out::Value(rv)) = (&mut l.out, r.out) {
                    lv.either(rv);
                }
            }
            l
        })
        .collect();
    cols.extend(right);
    cols
}

/// The column names of JSON_TABLE, nested paths included.
fn json_table_columns(columns: &[pb::Node], into: &mut Vec<Arc<str>>, depth: usize) {
    if depth > 32 {
        return;
    }
    for c in columns {
        if let Some(N::JsonTableColumn(col)) = &c.node {
            if !col.name.is_empty() {
                into.push(Arc::from(col.name.as_str()));
            }
            json_table_columns(&col.columns, into, depth + 1);
        }
    }
}
