//! The parse tree as the PostgreSQL walker reads it: the same shape `serde_json::to_value` gives
//! pg_query's protobuf structs (every field present, objects ordered by field name, a oneof
//! variant as a one-key object, `None` as null), built without its costs.
//!
//! `serde_json::Value` allocates a `String` for every field name of every node and a `BTreeMap`
//! per node, and a point select's tree has hundreds of fields: making and freeing it was about
//! 30% of a cache miss's instructions (callgrind), more than PostgreSQL's grammar itself. Field
//! names from `#[derive(Serialize)]` are `&'static str`, so here they are borrowed, and an object
//! is a vector sorted by name. Written by hand because no crate builds a borrowed-key tree from
//! `Serialize`; a test checks it against `serde_json::to_value` on a corpus of statements.

use std::fmt;

use serde::ser::{self, Serialize};

/// A node or field value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Array(Vec<Value>),
    Object(Obj),
}

/// An object: fields sorted by name (as `serde_json::Map` orders them), names borrowed from the
/// serialized type.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Obj(Vec<(&'static str, Value)>);

impl Obj {
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(k, _)| (*k).cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Fields arrive in declaration order; sorted once, when the object is complete.
    fn sorted(mut fields: Vec<(&'static str, Value)>) -> Obj {
        fields.sort_by(|a, b| a.0.cmp(b.0));
        Obj(fields)
    }
}

impl Value {
    /// A field of an object (`None` for anything else), as `serde_json::Value::get`.
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?.get(key)
    }

    pub(super) fn as_object(&self) -> Option<&Obj> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    pub(super) fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// As `serde_json::Value::as_i64`: integers that fit, not floats.
    pub(super) fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }
}

/// Builds the tree of `value`.
pub(super) fn to_tree<T: Serialize + ?Sized>(value: &T) -> Result<Value, Error> {
    value.serialize(Builder)
}

/// Why a value could not be made into a tree (only map-typed fields, which pg_query's structs
/// do not have, or a custom error from a `Serialize` impl).
#[derive(Debug)]
pub(super) struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

struct Builder;

/// A sequence, tuple, or the fields of a tuple variant (`variant` set).
struct Seq {
    items: Vec<Value>,
    variant: Option<&'static str>,
}

/// The fields of a struct, or of a struct variant (`variant` set).
struct Fields {
    fields: Vec<(&'static str, Value)>,
    variant: Option<&'static str>,
}

fn wrap(variant: Option<&'static str>, value: Value) -> Value {
    match variant {
        Some(name) => Value::Object(Obj(vec![(name, value)])),
        None => value,
    }
}

impl ser::Serializer for Builder {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Seq;
    type SerializeTupleVariant = Seq;
    type SerializeMap = ser::Impossible<Value, Error>;
    type SerializeStruct = Fields;
    type SerializeStructVariant = Fields;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        Ok(Value::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, Error> {
        Ok(Value::UInt(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, Error> {
        Ok(Value::UInt(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, Error> {
        Ok(Value::UInt(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, Error> {
        Ok(Value::UInt(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        // As serde_json: a number that JSON cannot hold is null.
        Ok(if v.is_finite() {
            Value::Float(v)
        } else {
            Value::Null
        })
    }
    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::String(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::Array(
            v.iter().map(|b| Value::UInt((*b).into())).collect(),
        ))
    }
    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Value, Error> {
        Ok(Value::String(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        Ok(wrap(Some(variant), value.serialize(self)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, Error> {
        Ok(Seq {
            items: Vec::with_capacity(len.unwrap_or(0)),
            variant: None,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Seq, Error> {
        Ok(Seq {
            items: Vec::with_capacity(len),
            variant: Some(variant),
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(Error("a map in the parse tree".to_owned()))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Fields, Error> {
        Ok(Fields {
            fields: Vec::with_capacity(len),
            variant: None,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Fields, Error> {
        Ok(Fields {
            fields: Vec::with_capacity(len),
            variant: Some(variant),
        })
    }
}

impl Seq {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.items.push(value.serialize(Builder)?);
        Ok(())
    }
    fn done(self) -> Value {
        wrap(self.variant, Value::Array(self.items))
    }
}

impl ser::SerializeSeq for Seq {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.done())
    }
}

impl ser::SerializeTuple for Seq {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.done())
    }
}

impl ser::SerializeTupleStruct for Seq {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.done())
    }
}

impl ser::SerializeTupleVariant for Seq {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.done())
    }
}

impl Fields {
    fn push<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.fields.push((key, value.serialize(Builder)?));
        Ok(())
    }
    fn done(self) -> Value {
        wrap(self.variant, Value::Object(Obj::sorted(self.fields)))
    }
}

impl ser::SerializeStruct for Fields {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.push(key, value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.done())
    }
}

impl ser::SerializeStructVariant for Fields {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.push(key, value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.done())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The tree as `serde_json::Value`, to compare with what `serde_json::to_value` makes.
    fn to_json(v: &Value) -> serde_json::Value {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::UInt(u) => (*u).into(),
            Value::Float(f) => (*f).into(),
            Value::String(s) => s.clone().into(),
            Value::Array(items) => items.iter().map(to_json).collect(),
            Value::Object(m) => serde_json::Value::Object(
                m.iter().map(|(k, v)| (k.to_owned(), to_json(v))).collect(),
            ),
        }
    }

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

    #[test]
    fn the_tree_is_what_serde_json_makes_of_the_parse_tree() {
        for sql in CORPUS {
            let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            for raw in &parsed.protobuf.stmts {
                let stmt = raw.stmt.as_deref().expect("a statement");
                let json = serde_json::to_value(stmt).unwrap();
                let tree = to_tree(stmt).unwrap();
                assert_eq!(to_json(&tree), json, "{sql}");
            }
        }
    }

    #[test]
    fn objects_answer_by_field_name() {
        #[derive(serde::Serialize)]
        struct RangeVar {
            schemaname: String,
            relname: String,
            inh: bool,
            relpersistence: Option<u32>,
        }
        let v = to_tree(&RangeVar {
            schemaname: String::new(),
            relname: "accounts".into(),
            inh: true,
            relpersistence: None,
        })
        .unwrap();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m.get("relname").and_then(Value::as_str), Some("accounts"));
        assert_eq!(m.get("inh").and_then(Value::as_bool), Some(true));
        assert_eq!(m.get("relpersistence"), Some(&Value::Null));
        assert!(m.contains_key("schemaname"));
        assert!(!m.contains_key("alias"));
        let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["inh", "relname", "relpersistence", "schemaname"]);
    }
}
