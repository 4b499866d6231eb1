//! Statements that change data (INSERT, UPDATE, DELETE, MERGE: what they store, and what their
//! RETURNING lists give back) and COPY ... TO.

use std::rc::Rc;
use std::sync::Arc;

use gateway_core::masking::{Hazard, RelationName, SourceColumn};
use pg_query::protobuf as pb;
use pg_query::protobuf::node::Node as N;

use super::scope::{Item, Scope, Written};
use super::{names, relation_name, whole, Col, Out, Tracer, Val};

impl Tracer {
    pub(super) fn insert(
        &mut self,
        s: &pb::InsertStmt,
        outer: Option<&Scope<'_>>,
    ) -> Option<Vec<Col>> {
        let mark = self.ctes.len();
        if let Some(with) = &s.with_clause {
            self.with(with, outer);
        }
        let outputs = s
            .relation
            .as_ref()
            .and_then(|rv| self.insert_into(s, rv, outer));
        self.ctes.truncate(mark);
        outputs
    }

    fn insert_into(
        &mut self,
        s: &pb::InsertStmt,
        rv: &pb::RangeVar,
        outer: Option<&Scope<'_>>,
    ) -> Option<Vec<Col>> {
        let rel = relation_name(rv);
        self.relation(&rel);
        let columns = names(&s.cols);
        let source = s
            .select_stmt
            .as_deref()
            .and_then(|q| q.node.as_ref())
            .and_then(|q| self.statement(q, outer))
            .unwrap_or_default();
        let mut stored = whole(&source);
        let mut written = Written::default();
        let by_name = !columns.is_empty()
            && columns.len() == source.len()
            && source.iter().all(|c| matches!(c.out, Out::Value(_)));
        if by_name {
            for (name, col) in columns.iter().zip(&source) {
                if let Out::Value(v) = &col.out {
                    written.column(name, v);
                }
            }
        } else {
            written.positional(&stored);
        }
        if let Some(conflict) = &s.on_conflict_clause {
            if conflict.action == pb::OnConflictAction::OnconflictUpdate as i32 {
                let items = vec![
                    Item::base(rv, None),
                    Item::pseudo("excluded", rel.clone(), Some(Rc::new(written.clone()))),
                ];
                let scope = Scope::new(&items, outer);
                stored.absorb(self.set_list(&conflict.target_list, &scope, &mut written));
                if let Some(w) = &conflict.where_clause {
                    let v = self.expr(w, &scope);
                    self.predicate(v);
                }
            }
        }
        self.stores(stored);
        let returning = s.returning_clause.as_ref()?;
        let mut items = vec![Item::base(rv, Some(Rc::new(written)))];
        Some(self.returning(returning, &rel, &mut items, outer))
    }

    pub(super) fn update(
        &mut self,
        s: &pb::UpdateStmt,
        outer: Option<&Scope<'_>>,
    ) -> Option<Vec<Col>> {
        let mark = self.ctes.len();
        if let Some(with) = &s.with_clause {
            self.with(with, outer);
        }
        let outputs = s.relation.as_ref().and_then(|rv| {
            let rel = relation_name(rv);
            self.relation(&rel);
            let mut items = vec![Item::base(rv, None)];
            for f in &s.from_clause {
                self.add_from_item(f, &mut items, outer);
            }
            let scope = Scope::new(&items, outer);
            let mut written = Written::default();
            let stored = self.set_list(&s.target_list, &scope, &mut written);
            if let Some(w) = &s.where_clause {
                let v = self.expr(w, &scope);
                self.predicate(v);
            }
            self.stores(stored);
            let returning = s.returning_clause.as_ref()?;
            if let Some(target) = items.first_mut() {
                *target = Item::base(rv, Some(Rc::new(written)));
            }
            Some(self.returning(returning, &rel, &mut items, outer))
        });
        self.ctes.truncate(mark);
        outputs
    }

    pub(super) fn delete(
        &mut self,
        s: &pb::DeleteStmt,
        outer: Option<&Scope<'_>>,
    ) -> Option<Vec<Col>> {
        let mark = self.ctes.len();
        if let Some(with) = &s.with_clause {
            self.with(with, outer);
        }
        let outputs = s.relation.as_ref().and_then(|rv| {
            let rel = relation_name(rv);
            self.relation(&rel);
            let mut items = vec![Item::base(rv, None)];
            for f in &s.using_clause {
                self.add_from_item(f, &mut items, outer);
            }
            if let Some(w) = &s.where_clause {
                let scope = Scope::new(&items, outer);
                let v = self.expr(w, &scope);
                self.predicate(v);
            }
            let returning = s.returning_clause.as_ref()?;
            Some(self.returning(returning, &rel, &mut items, outer))
        });
        self.ctes.truncate(mark);
        outputs
    }

    pub(super) fn merge(
        &mut self,
        s: &pb::MergeStmt,
        outer: Option<&Scope<'_>>,
    ) -> Option<Vec<Col>> {
        let mark = self.ctes.len();
        if let Some(with) = &s.with_clause {
            self.with(with, outer);
        }
        let outputs = s.relation.as_ref().and_then(|rv| {
            let rel = relation_name(rv);
            self.relation(&rel);
            let mut items = vec![Item::base(rv, None)];
            if let Some(source) = &s.source_relation {
                self.add_from_item(source, &mut items, outer);
            }
            let scope = Scope::new(&items, outer);
            if let Some(on) = &s.join_condition {
                let v = self.expr(on, &scope);
                self.predicate(v);
            }
            let mut written = Written::default();
            let mut stored = Val::default();
            for clause in &s.merge_when_clauses {
                let Some(N::MergeWhenClause(c)) = &clause.node else {
                    continue;
                };
                if let Some(condition) = &c.condition {
                    let v = self.expr(condition, &scope);
                    self.predicate(v);
                }
                if c.command_type == pb::CmdType::CmdUpdate as i32 {
                    stored.absorb(self.set_list(&c.target_list, &scope, &mut written));
                } else if c.command_type == pb::CmdType::CmdInsert as i32 {
                    let columns = names(&c.target_list);
                    let values: Vec<Val> = c.values.iter().map(|e| self.expr(e, &scope)).collect();
                    for v in &values {
                        stored.absorb(v.clone());
                    }
                    if !columns.is_empty() && columns.len() == values.len() {
                        for (name, v) in columns.iter().zip(&values) {
                            written.column(name, v);
                        }
                    } else {
                        for v in &values {
                            written.positional(v);
                        }
                    }
                }
            }
            self.stores(stored);
            let returning = s.returning_clause.as_ref()?;
            if let Some(target) = items.first_mut() {
                *target = Item::base(rv, Some(Rc::new(written)));
            }
            Some(self.returning(returning, &rel, &mut items, outer))
        });
        self.ctes.truncate(mark);
        outputs
    }

    /// `SET col = expr, ...` (UPDATE, ON CONFLICT DO UPDATE, MERGE): what is stored, recorded by
    /// column in `written`.
    fn set_list(&mut self, targets: &[pb::Node], scope: &Scope<'_>, written: &mut Written) -> Val {
        let mut stored = Val::default();
        for t in targets {
            let Some(N::ResTarget(target)) = &t.node else {
                continue;
            };
            let mut v = match &target.val {
                Some(val) => self.expr(val, scope),
                None => Val::default(),
            };
            // `SET a[i] = x`, `SET c.f = x`: the subscripts choose where the value goes.
            v.absorb(self.gather_list(&target.indirection, scope));
            written.column(&Arc::from(target.name.as_str()), &v);
            stored.absorb(v);
        }
        stored
    }

    /// A RETURNING list over the target (items[0], with what the statement writes into it) and
    /// the statement's other FROM items; `old` and `new` (or their aliases) name the target's
    /// rows before and after.
    fn returning(
        &mut self,
        r: &pb::ReturningClause,
        rel: &RelationName,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> Vec<Col> {
        let mut old = "old";
        let mut new = "new";
        for o in &r.options {
            if let Some(N::ReturningOption(opt)) = &o.node {
                if opt.option == pb::ReturningOptionKind::ReturningOptionOld as i32 {
                    old = &opt.value;
                } else if opt.option == pb::ReturningOptionKind::ReturningOptionNew as i32 {
                    new = &opt.value;
                }
            }
        }
        let written = match items.first().map(|i| &i.kind) {
            Some(super::scope::Kind::Base { written, .. }) => written.clone(),
            _ => None,
        };
        items.push(Item::pseudo(old, rel.clone(), None));
        items.push(Item::pseudo(new, rel.clone(), written));
        let scope = Scope::new(items, outer);
        self.targets(&r.exprs, &scope)
    }

    /// COPY ... TO (STDOUT, a file or a program): rows leave outside the result protocol.
    pub(super) fn copy(&mut self, s: &pb::CopyStmt) {
        if s.is_from {
            return;
        }
        let mut relations = Vec::new();
        if let Some(rv) = &s.relation {
            let rel = relation_name(rv);
            let columns = names(&s.attlist);
            let mut v = Val::default();
            if columns.is_empty() {
                v.add(SourceColumn::WholeRow {
                    relation: rel.clone(),
                });
            } else {
                for column in columns {
                    v.add(SourceColumn::Column {
                        relation: Some(rel.clone()),
                        column,
                    });
                }
            }
            self.read(&v);
            relations.push(rel);
        }
        if let Some(query) = s.query.as_deref().and_then(|q| q.node.as_ref()) {
            let start = self.relations.len();
            let cols = self.statement(query, None).unwrap_or_default();
            let v = whole(&cols);
            self.read(&v);
            for rel in self.relations.get(start..).unwrap_or(&[]) {
                if !relations.contains(rel) {
                    relations.push(rel.clone());
                }
            }
        }
        self.hazard(Hazard::CopyTo { reads: relations });
    }
}
