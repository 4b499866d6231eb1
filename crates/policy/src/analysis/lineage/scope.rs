//! FROM items and how column references resolve in them.
//!
//! A query level's items are kept in one list in FROM order (a join's sides before the join's
//! own entries); a level sees its parent's (correlated subqueries), and a LATERAL item sees the
//! items before it. PostgreSQL resolves names against the catalog, which the analysis does not
//! have: where it cannot tell which item owns a name, every item that could is taken.

use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use gateway_core::masking::{RelationName, SourceColumn};
use pg_query::protobuf as pb;
use pg_query::protobuf::node::Node as N;

use super::{relation_name, Col, Out, Val};

/// Values an INSERT, UPDATE or MERGE writes, by column, for what RETURNING (and `excluded`)
/// reads back.
#[derive(Debug, Clone, Default)]
pub(super) struct Written {
    columns: Vec<(Arc<str>, Vec<SourceColumn>)>,
    /// Written to columns the analysis cannot name (`INSERT INTO t SELECT ...`): any column.
    positional: Vec<SourceColumn>,
}

impl Written {
    pub(super) fn column(&mut self, name: &Arc<str>, v: &Val) {
        match self.columns.iter_mut().find(|(c, _)| c == name) {
            Some((_, sources)) => {
                for s in &v.sources {
                    super::add(sources, s.clone());
                }
            }
            None => self.columns.push((Arc::clone(name), v.sources.clone())),
        }
    }

    pub(super) fn positional(&mut self, v: &Val) {
        for s in &v.sources {
            super::add(&mut self.positional, s.clone());
        }
    }

    /// What column `name` may hold besides its stored value.
    fn for_column(&self, name: &str) -> Val {
        let mut v = Val::default();
        for (c, sources) in &self.columns {
            if &**c == name {
                sources.iter().for_each(|s| v.add(s.clone()));
            }
        }
        self.positional.iter().for_each(|s| v.add(s.clone()));
        v
    }

    fn all(&self) -> Val {
        let mut v = Val::default();
        for (_, sources) in &self.columns {
            sources.iter().for_each(|s| v.add(s.clone()));
        }
        self.positional.iter().for_each(|s| v.add(s.clone()));
        v
    }

    /// Whether every column written holds nothing but its own old value (or constants): then
    /// `RETURNING *` is the relation's columns as a masker reads them.
    fn self_only(&self, rel: &RelationName) -> bool {
        self.positional.is_empty()
            && self.columns.iter().all(|(name, sources)| {
                sources.iter().all(|s| {
                    matches!(s, SourceColumn::Column { relation: Some(r), column }
                        if r == rel && column == name)
                })
            })
    }
}

/// What a FROM item is.
pub(super) enum Kind {
    /// A table or view.
    Base {
        rel: RelationName,
        /// Its columns were renamed by an alias list (`FROM t AS x(a, b)`): names say nothing
        /// about which column is meant.
        renamed: bool,
        /// For RETURNING and `excluded`: what the statement writes into it.
        written: Option<Rc<Written>>,
    },
    /// A subquery, CTE reference, function, VALUES, ...: its outputs.
    Derived { cols: Rc<[Col]>, pending: bool },
    /// The alias of a join, over the items at `members` of the same list.
    Join {
        members: Range<usize>,
        renamed: bool,
    },
    /// The merged columns of a JOIN ... USING (or NATURAL JOIN, whose columns are unknown).
    Using { cols: Vec<(Arc<str>, Val)> },
}

/// One FROM item.
pub(super) struct Item {
    /// The name a qualified reference uses: the alias, else the relation's (or function's) name;
    /// empty when it has none.
    pub(super) name: Arc<str>,
    /// The schema a qualified reference may give (not for an aliased item).
    schema: Option<Arc<str>>,
    aliased: bool,
    /// Reachable only by qualified references (a join's alias, RETURNING's `old`, `excluded`).
    qualified_only: bool,
    pub(super) kind: Kind,
}

impl Item {
    /// A base relation as a RangeVar names it, under its alias if it has one.
    pub(super) fn base(rv: &pb::RangeVar, written: Option<Rc<Written>>) -> Item {
        let rel = relation_name(rv);
        let alias = rv.alias.as_ref().filter(|a| !a.aliasname.is_empty());
        Item {
            name: alias.map_or_else(
                || Arc::clone(&rel.name),
                |a| Arc::from(a.aliasname.as_str()),
            ),
            schema: if alias.is_some() {
                None
            } else {
                rel.schema.clone()
            },
            aliased: alias.is_some(),
            qualified_only: false,
            kind: Kind::Base {
                rel,
                renamed: alias.is_some_and(|a| !a.colnames.is_empty()),
                written,
            },
        }
    }

    /// The same relation under another name, reachable only by that name (`old`, `new`,
    /// `excluded`).
    pub(super) fn pseudo(name: &str, rel: RelationName, written: Option<Rc<Written>>) -> Item {
        Item {
            name: Arc::from(name),
            schema: None,
            aliased: true,
            qualified_only: true,
            kind: Kind::Base {
                rel,
                renamed: false,
                written,
            },
        }
    }

    pub(super) fn derived(name: Arc<str>, cols: Rc<[Col]>, pending: bool) -> Item {
        Item {
            name,
            schema: None,
            aliased: true,
            qualified_only: false,
            kind: Kind::Derived { cols, pending },
        }
    }

    pub(super) fn join(name: &str, members: Range<usize>, renamed: bool) -> Item {
        Item {
            name: Arc::from(name),
            schema: None,
            aliased: true,
            qualified_only: true,
            kind: Kind::Join { members, renamed },
        }
    }

    pub(super) fn using(name: &str, cols: Vec<(Arc<str>, Val)>) -> Item {
        Item {
            name: Arc::from(name),
            schema: None,
            aliased: true,
            qualified_only: false,
            kind: Kind::Using { cols },
        }
    }

    fn answers(&self, schema: Option<&str>, name: &str) -> bool {
        !self.name.is_empty()
            && *self.name == *name
            && match (schema, &self.schema) {
                (None, _) => true,
                (Some(s), Some(own)) => **own == *s,
                // Unqualified in FROM: found through the search path, possibly in `s`.
                (Some(_), None) => !self.aliased,
            }
    }
}

/// The items of one query level and the levels around it.
#[derive(Clone, Copy)]
pub(super) struct Scope<'a> {
    pub(super) items: &'a [Item],
    pub(super) parent: Option<&'a Scope<'a>>,
}

impl<'a> Scope<'a> {
    /// No items at all (the parameters of EXECUTE, a CALL's arguments).
    pub(super) const EMPTY: Scope<'static> = Scope {
        items: &[],
        parent: None,
    };

    pub(super) fn new(items: &'a [Item], parent: Option<&'a Scope<'a>>) -> Self {
        Scope { items, parent }
    }

    fn levels(&self) -> impl Iterator<Item = &Scope<'a>> {
        std::iter::successors(Some(self), |s| s.parent)
    }
}

/// The value of a ColumnRef with these fields.
pub(super) fn column(scope: &Scope<'_>, fields: &[pb::Node]) -> Val {
    #[derive(Clone, Copy)]
    enum Part<'f> {
        Name(&'f str),
        Star,
        Other,
    }
    let parts: Vec<Part<'_>> = fields
        .iter()
        .map(|f| match &f.node {
            Some(N::String(s)) => Part::Name(&s.sval),
            Some(N::AStar(_)) => Part::Star,
            _ => Part::Other,
        })
        .collect();
    let unknown = |name: &str| Val::derived_from(any_relation(name));
    match parts.as_slice() {
        [Part::Name(c)] => unqualified(scope, c),
        [Part::Star] => {
            let mut v = Val::default();
            for item in scope.items.iter().filter(|i| !i.qualified_only) {
                v.absorb(item_whole(scope.items, item));
            }
            v
        }
        [Part::Name(t), Part::Star] => whole_named(scope, None, t),
        [Part::Name(s), Part::Name(t), Part::Star]
        | [Part::Name(_), Part::Name(s), Part::Name(t), Part::Star] => {
            whole_named(scope, Some(s), t)
        }
        [Part::Name(t), Part::Name(c)] => {
            qualified(scope, None, t, c).unwrap_or_else(|| unknown(c))
        }
        // schema.table.column, else table.column.field.
        [Part::Name(a), Part::Name(b), Part::Name(c)] => qualified(scope, Some(a), b, c)
            .or_else(|| qualified(scope, None, a, b).map(Val::derived))
            .unwrap_or_else(|| unknown(c)),
        // catalog.schema.table.column, else schema.table.column.field.
        [Part::Name(a), Part::Name(b), Part::Name(c), Part::Name(d)] => {
            qualified(scope, Some(b), c, d)
                .or_else(|| qualified(scope, Some(a), b, c).map(Val::derived))
                .unwrap_or_else(|| unknown(d))
        }
        [Part::Name(_), Part::Name(b), Part::Name(c), Part::Name(d), Part::Name(e)] => {
            qualified(scope, Some(b), c, d)
                .map(Val::derived)
                .unwrap_or_else(|| unknown(e))
        }
        _ => {
            // A shape PostgreSQL does not accept: whatever names are in it, in any relation.
            let mut v = Val::default();
            for p in parts {
                if let Part::Name(n) = p {
                    v.add(any_relation(n));
                }
            }
            v
        }
    }
}

/// A column of this name in any relation.
fn any_relation(name: &str) -> SourceColumn {
    SourceColumn::Column {
        relation: None,
        column: Arc::from(name),
    }
}

/// An unqualified column name. Items that certainly have it (a subquery's, CTE's or USING
/// join's column of that name) settle it at their level; items that may have it (tables, whose
/// columns are not known here) are all taken, and the levels outside are searched too, since the
/// name may be an outer query's. A name that is also a FROM item's is that item's whole row as
/// well (`SELECT t FROM t`).
pub(super) fn unqualified(scope: &Scope<'_>, name: &str) -> Val {
    let mut v = Val::alternatives();
    let mut found = false;
    for level in scope.levels() {
        if let Some((lv, certain)) = resolve_level(level.items, name) {
            found = true;
            v.either(lv);
            if certain {
                break;
            }
        }
    }
    if !found {
        // Not a column of anything in sight (a function parameter, a typo the server rejects).
        v = Val::derived_from(any_relation(name));
    }
    for level in scope.levels() {
        let mut hit = false;
        for item in level.items.iter().filter(|i| i.answers(None, name)) {
            hit = true;
            v.absorb(item_whole(level.items, item));
            v.plain = false;
        }
        if hit {
            break;
        }
    }
    v
}

/// Resolves an unqualified name among one level's items: the value, and whether the level
/// certainly owns the name (else outer levels may, too). `None` when no item could own it.
pub(super) fn resolve_level(items: &[Item], name: &str) -> Option<(Val, bool)> {
    // USING columns hide their sides' columns of the same name.
    let mut merged = Val::alternatives();
    let mut any = false;
    for item in items.iter().filter(|i| !i.qualified_only) {
        if let Kind::Using { cols, .. } = &item.kind {
            for (_, v) in cols.iter().filter(|(c, _)| &**c == name) {
                merged.either(v.clone());
                any = true;
            }
        }
    }
    if any {
        return Some((merged, true));
    }
    let mut named = Val::alternatives();
    for item in items.iter().filter(|i| !i.qualified_only) {
        if let Kind::Derived {
            cols,
            pending: false,
        } = &item.kind
        {
            if cols.iter().any(|c| c.name.as_deref() == Some(name)) {
                any = true;
                named.either(derived_column(cols, name));
            }
        }
    }
    if any {
        return Some((named, true));
    }
    let mut maybe = Val::alternatives();
    let mut bases: Vec<&Item> = Vec::new();
    for item in items.iter().filter(|i| !i.qualified_only) {
        match &item.kind {
            Kind::Base { .. } => bases.push(item),
            Kind::Derived { pending: true, .. } => any = true,
            Kind::Derived { cols, .. } => {
                for c in cols.iter().filter(|c| c.name.is_none()) {
                    any = true;
                    maybe.either(c.unnamed(name));
                }
            }
            Kind::Join { .. } | Kind::Using { .. } => {}
        }
    }
    match bases.as_slice() {
        [] => {}
        [one] => {
            any = true;
            maybe.either(item_column(items, one, name));
        }
        several => {
            // Which table has it is for the catalog to say: a column of that name in any.
            any = true;
            let mut v = Val::plain(any_relation(name));
            for item in several {
                if let Kind::Base {
                    rel,
                    renamed,
                    written,
                } = &item.kind
                {
                    if *renamed {
                        v.add(SourceColumn::WholeRow {
                            relation: rel.clone(),
                        });
                        v.plain = false;
                    }
                    if let Some(w) = written {
                        let extra = w.for_column(name);
                        if !extra.sources.is_empty() {
                            v.absorb(extra);
                            v.plain = false;
                        }
                    }
                }
            }
            maybe.either(v);
        }
    }
    any.then_some((maybe, false))
}

/// `table.column` (or `schema.table.column`): `None` when no item in sight has that name.
fn qualified(scope: &Scope<'_>, schema: Option<&str>, table: &str, column: &str) -> Option<Val> {
    for level in scope.levels() {
        let mut v = Val::alternatives();
        let mut hit = false;
        for item in level.items.iter().filter(|i| i.answers(schema, table)) {
            hit = true;
            v.either(item_column(level.items, item, column));
        }
        if hit {
            return Some(v);
        }
    }
    None
}

/// Column `name` of `item` (whose level's items are `items`).
fn item_column(items: &[Item], item: &Item, name: &str) -> Val {
    match &item.kind {
        Kind::Base {
            rel,
            renamed,
            written,
        } => {
            let mut v = Val::plain(SourceColumn::Column {
                relation: Some(rel.clone()),
                column: Arc::from(name),
            });
            if *renamed {
                v.add(SourceColumn::WholeRow {
                    relation: rel.clone(),
                });
                v.plain = false;
            }
            if let Some(w) = written {
                let extra = w.for_column(name);
                if !extra.sources.is_empty() {
                    v.absorb(extra);
                    v.plain = false;
                }
            }
            v
        }
        Kind::Derived { pending: true, .. } => Val::alternatives(),
        Kind::Derived { cols, .. } => derived_column(cols, name),
        Kind::Join { members, renamed } => {
            let members = items.get(members.clone()).unwrap_or(&[]);
            match resolve_level(members, name) {
                Some((v, _)) if !*renamed => v,
                _ => item_whole(items, item),
            }
        }
        Kind::Using { cols, .. } => {
            let mut v = Val::alternatives();
            let mut hit = false;
            for (_, cv) in cols.iter().filter(|(c, _)| &**c == name) {
                hit = true;
                v.either(cv.clone());
            }
            if hit {
                v
            } else {
                item_whole(items, item)
            }
        }
    }
}

/// Column `name` of a list of outputs: the outputs of that name; else those whose name is not
/// known; else (a name PostgreSQL would reject) all of them.
pub(super) fn derived_column(cols: &[Col], name: &str) -> Val {
    let mut v = Val::alternatives();
    let mut hit = false;
    for c in cols.iter().filter(|c| c.name.as_deref() == Some(name)) {
        hit = true;
        match &c.out {
            Out::Value(cv) => v.either(cv.clone()),
            _ => v.either(c.unnamed(name)),
        }
    }
    if hit {
        return v;
    }
    for c in cols.iter().filter(|c| c.name.is_none()) {
        hit = true;
        v.either(c.unnamed(name));
    }
    if hit {
        v
    } else {
        super::whole(cols)
    }
}

/// Everything a FROM item may carry (its whole row).
pub(super) fn item_whole(items: &[Item], item: &Item) -> Val {
    let mut v = Val::default();
    match &item.kind {
        Kind::Base { rel, written, .. } => {
            v.add(SourceColumn::WholeRow {
                relation: rel.clone(),
            });
            if let Some(w) = written {
                v.absorb(w.all());
            }
        }
        Kind::Derived { cols, .. } => v.absorb(super::whole(cols)),
        Kind::Join { members, .. } => {
            for m in items.get(members.clone()).unwrap_or(&[]) {
                if !m.qualified_only {
                    v.absorb(item_whole(items, m));
                }
            }
        }
        Kind::Using { cols, .. } => {
            for (_, cv) in cols {
                v.absorb(cv.clone());
            }
        }
    }
    v
}

/// `table.*` (or `schema.table.*`) inside an expression: that item's whole row.
fn whole_named(scope: &Scope<'_>, schema: Option<&str>, table: &str) -> Val {
    for level in scope.levels() {
        let mut v = Val::default();
        let mut hit = false;
        for item in level.items.iter().filter(|i| i.answers(schema, table)) {
            hit = true;
            v.absorb(item_whole(level.items, item));
        }
        if hit {
            return v;
        }
    }
    Val::derived_from(SourceColumn::WholeRow {
        relation: RelationName {
            schema: schema.map(Arc::from),
            name: Arc::from(table),
        },
    })
}

/// `*` in a select list: every item of the level in FROM order. Columns merged by USING come
/// first in PostgreSQL's expansion, so such a join makes the list untraceable.
pub(super) fn expand_all(items: &[Item], all: &[Item], cols: &mut Vec<Col>) {
    let merges = items
        .iter()
        .any(|i| matches!(i.kind, Kind::Using { .. }) && !i.qualified_only);
    if merges {
        cols.push(many(items, all));
        return;
    }
    for item in items.iter().filter(|i| !i.qualified_only) {
        expand_item(all, item, cols);
    }
}

/// `t.*` in a select list (or one item of `*`); `all` is the item's level.
pub(super) fn expand_item(all: &[Item], item: &Item, cols: &mut Vec<Col>) {
    match &item.kind {
        Kind::Base { rel, written, .. } => match written {
            Some(w) if !w.self_only(rel) => cols.push(Col::out(Out::Many {
                stars: vec![rel.clone()],
                val: w.all().derived(),
            })),
            _ => cols.push(Col::out(Out::Star(rel.clone()))),
        },
        Kind::Derived { cols: own, .. } => cols.extend(own.iter().cloned()),
        Kind::Join { members, .. } => {
            let members = all.get(members.clone()).unwrap_or(&[]);
            expand_all(members, all, cols);
        }
        Kind::Using { cols: merged, .. } => {
            for (name, v) in merged {
                cols.push(Col::value(Some(Arc::clone(name)), v.clone()));
            }
        }
    }
}

/// The items as one output of unknown width.
fn many(items: &[Item], all: &[Item]) -> Col {
    let mut stars = Vec::new();
    let mut val = Val::default();
    for item in items.iter().filter(|i| !i.qualified_only) {
        match &item.kind {
            Kind::Base { rel, written, .. } => {
                if !stars.contains(rel) {
                    stars.push(rel.clone());
                }
                if let Some(w) = written {
                    val.absorb(w.all());
                }
            }
            _ => val.absorb(item_whole(all, item)),
        }
    }
    Col::out(Out::Many { stars, val })
}

/// The items a qualified `*` names, at the innermost level that has any.
pub(super) fn find_items<'s>(
    scope: &'s Scope<'s>,
    schema: Option<&str>,
    table: &str,
) -> Option<(&'s [Item], Vec<&'s Item>)> {
    for level in scope.levels() {
        let hits: Vec<&Item> = level
            .items
            .iter()
            .filter(|i| i.answers(schema, table))
            .collect();
        if !hits.is_empty() {
            return Some((level.items, hits));
        }
    }
    None
}
