//! The masking seam: where each result column comes from, a mask plan per result set, and value
//! by value masking that hands back the original bytes where nothing applies.
//!
//! In the order data meets them:
//! - the policy engine's analysis of a statement carries its [`Lineage`]: for each result column,
//!   the source columns its value is computed from, plus what cannot be traced ([`Hazard`]);
//! - before a statement runs, [`Masker::check`] may refuse it (strict mode: a masked value could
//!   leave along a path that cannot be traced);
//! - when a result's columns are known (PostgreSQL: RowDescription; MySQL: the column
//!   definitions), the protocol crate describes them as [`ResultColumn`]s (origin from the wire,
//!   type, format) and [`Masker::plan`] returns a [`MaskPlan`], resolving origins through the
//!   target's [`Catalog`];
//! - the protocol crate runs each value of a masked column through its [`ValueMask`]; a plan with
//!   no masked column ([`MaskPlan::is_empty`]) means rows go through as the original bytes;
//! - text the client reads outside rows (error and notice fields, notification payloads) goes
//!   through [`Masker::scrub`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::error::GatewayError;
use crate::session::SessionContext;

/// How a result's values are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueFormat {
    /// The type's text form.
    Text,
    /// The type's binary form (PostgreSQL binary format, MySQL binary protocol).
    Binary,
}

/// A result column's type, as far as masking needs to know it: a masked value must stay valid for
/// its type (or become NULL), so strategies need the family and, in binary format, the width.
/// Protocol crates map their type ids onto this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueType {
    /// Character strings of any kind (text, varchar, char, name, ...).
    Text,
    /// Boolean.
    Bool,
    /// 2-byte integer.
    Int2,
    /// 4-byte integer.
    Int4,
    /// 8-byte integer.
    Int8,
    /// 4-byte float.
    Float4,
    /// 8-byte float.
    Float8,
    /// Arbitrary-precision numeric / decimal.
    Numeric,
    /// Calendar date.
    Date,
    /// Time of day.
    Time,
    /// Timestamp without time zone.
    Timestamp,
    /// Timestamp with time zone.
    TimestampTz,
    /// UUID.
    Uuid,
    /// Raw bytes.
    Bytes,
    /// JSON text.
    Json,
    /// PostgreSQL jsonb (binary form: a version byte, then the text).
    Jsonb,
    /// An array of any element type.
    Array,
    /// A row value (record or a table's composite type).
    Composite,
    /// Anything else (enums, domains, extension types): masked values become NULL.
    Other,
}

impl ValueType {
    /// Whether the value is a container that can hold other values (JSON, arrays, rows): masking
    /// one part of it is not possible value by value.
    pub fn is_container(self) -> bool {
        matches!(
            self,
            ValueType::Json | ValueType::Jsonb | ValueType::Array | ValueType::Composite
        )
    }
}

/// Where a result column's values come from, as the wire reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ColumnOrigin {
    /// The wire names no origin: a computed value.
    Unknown,
    /// PostgreSQL RowDescription: the table's OID and the column's attribute number.
    Relation {
        /// `pg_class.oid` of the table or view.
        table_oid: u32,
        /// `pg_attribute.attnum` (1-based).
        attnum: i16,
    },
    /// MySQL column definition: schema, `org_table` and `org_name`.
    Named {
        /// Database (schema) of the table.
        schema: Arc<str>,
        /// The table's real name.
        table: Arc<str>,
        /// The column's real name.
        column: Arc<str>,
    },
}

/// One column of a result set, as the protocol crate reads it off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultColumn {
    /// The label the client sees.
    pub name: Arc<str>,
    /// Where the wire says the values come from.
    pub origin: ColumnOrigin,
    /// The value type, for type-valid masking.
    pub value_type: ValueType,
    /// The protocol's own type id (PostgreSQL type OID, MySQL column type), for messages.
    pub type_id: u32,
    /// Text or binary.
    pub format: ValueFormat,
}

// ---------------------------------------------------------------------------------------------
// Lineage: what the SQL says about where result values come from
// ---------------------------------------------------------------------------------------------

/// A relation as a statement names it, normalised by the analysis (quotes removed, unquoted names
/// case-folded); `schema` is `None` when the statement leaves it to the search path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RelationName {
    /// Schema (PostgreSQL) or database (MySQL), when written or known.
    pub schema: Option<Arc<str>>,
    /// Relation name.
    pub name: Arc<str>,
}

impl fmt::Display for RelationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A value a result (or a predicate) may carry part of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum SourceColumn {
    /// A column of a base relation (or view). `relation` is `None` when the analysis could not
    /// tell which of the statement's relations the column belongs to: it then may be a column of
    /// that name in any relation the statement reads.
    Column {
        /// The relation, when known.
        relation: Option<RelationName>,
        /// The column name, normalised.
        column: Arc<str>,
    },
    /// A whole row of a relation (`t`, `t.*` inside an expression, `row_to_json(t)`): every
    /// column of it.
    WholeRow {
        /// The relation.
        relation: RelationName,
    },
    /// The result of a function the analysis cannot see into (not built in, definition not
    /// read): it may return anything its owner can read.
    Opaque {
        /// The function, as written.
        function: Arc<str>,
    },
}

/// One entry of a statement's result list, before `*` is expanded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum OutputColumn {
    /// `*` or `t.*` over a relation of the FROM list: expands to the relation's columns, in order,
    /// each a plain reference.
    Star {
        /// The relation.
        relation: RelationName,
    },
    /// One value, computed from `sources` (empty: from constants and parameters only).
    Value {
        /// Everything the value may carry part of.
        sources: Vec<SourceColumn>,
        /// The value is one source column's value as stored (a plain reference, perhaps through
        /// subqueries and CTEs): the same value the column holds, not something derived from it.
        plain: bool,
    },
}

/// What a statement's result cannot be traced through: the masker refuses such a statement in
/// strict mode when a masked value could be involved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Hazard {
    /// SQL built at run time (EXECUTE of a string, a DO block, a procedural function body).
    Dynamic,
    /// `COPY ... TO`: rows leave outside the result protocol.
    CopyTo {
        /// Relations the copy reads.
        reads: Vec<RelationName>,
    },
    /// A server-side file or large-object function (`pg_read_file`, `lo_export`, ...).
    ServerFile {
        /// The function.
        function: Arc<str>,
    },
    /// A cursor is declared (its rows arrive later through FETCH) or closed. SQL cursors share
    /// their names with the protocol's portals.
    Cursor {
        /// The cursor's name.
        name: Arc<str>,
    },
    /// Values of these columns are kept where the client can read them later by other means:
    /// written into a relation (INSERT ... SELECT, UPDATE ... SET, CREATE TABLE AS, SELECT INTO),
    /// a setting (`set_config`), a notification (`pg_notify`), a large object.
    Stores {
        /// What is stored.
        sources: Vec<SourceColumn>,
    },
    /// The statement returns rows whose list the analysis cannot read (its outputs are `None`):
    /// FETCH, EXECUTE of a prepared statement, a procedure call, `*` over a join the analysis
    /// cannot expand.
    UntracedOutput,
    /// A prepared statement is made or dropped with SQL (PREPARE, DEALLOCATE; an empty name is
    /// DEALLOCATE ALL). SQL prepared statements share their names with the protocol's.
    Prepared {
        /// The statement's name.
        name: Arc<str>,
    },
    /// The statement defines code that runs later, out of the analysis's sight (a function,
    /// procedure, trigger, rule, cast, operator, aggregate, language, extension), or a route to
    /// data the gateway does not see (a foreign server, foreign table, user mapping,
    /// subscription).
    Defines {
        /// What it defines, as the statement's kind (`CREATE FUNCTION`).
        what: Arc<str>,
    },
    /// The statement changes relations in place (ALTER TABLE, renames, a new schema, attached
    /// partitions, inheritance): masking rules name columns by schema, table and column name,
    /// and a column renamed, moved, retyped from another or read through a new parent is no
    /// longer where a rule names it.
    Alters {
        /// Every relation the statement names.
        relations: Vec<RelationName>,
        /// Schemas it renames.
        schemas: Vec<Arc<str>>,
    },
    /// The origins the wire reports for the statement's result columns may name aliases rather
    /// than stored columns: MySQL and MariaDB report a derived table's or a CTE's alias as a
    /// column's `org_table` and its output name as `org_name`, so that
    /// `SELECT c FROM (SELECT email AS c FROM customers) t` names column `c` of a table `t`
    /// (which may exist, and hold something else). A masker takes such columns for computed
    /// values.
    AliasedOrigins,
}

/// The lineage of one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatementLineage {
    /// The result columns in order (set operations: the union of each branch's column at the same
    /// position), or `None` when the statement returns rows the analysis cannot list (FETCH,
    /// EXECUTE of a prepared statement, a procedure call) or returns no rows.
    pub outputs: Option<Vec<OutputColumn>>,
    /// Columns read by filters, join conditions, grouping, ordering and window definitions: a
    /// result can leak them a bit at a time.
    pub predicates: Vec<SourceColumn>,
    /// Every column the statement reads anywhere (outputs and predicates included).
    pub reads: Vec<SourceColumn>,
    /// What cannot be traced.
    pub hazards: Vec<Hazard>,
}

/// The lineage of a statement text: one entry per statement, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lineage {
    /// Per statement.
    pub statements: Vec<StatementLineage>,
}

// ---------------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------------

/// What kind of relation a catalog entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RelationKind {
    /// A table (ordinary, partitioned, foreign).
    Table,
    /// A view: its columns are computed by its definition.
    View,
    /// A materialized view: stored, but computed from its definition.
    MaterializedView,
    /// Anything else (sequence, composite type, ...).
    Other,
}

/// A relation as the target's catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRelation {
    /// The relation's id (PostgreSQL `pg_class.oid`; 0 where the protocol has none).
    pub oid: u32,
    /// Schema (or MySQL database).
    pub schema: Arc<str>,
    /// Relation name.
    pub name: Arc<str>,
    /// Table, view, ...
    pub kind: RelationKind,
    /// Columns by position: index `attnum - 1`; `None` for a dropped column.
    pub columns: Vec<Option<Arc<str>>>,
    /// For views and materialized views: the definition as SQL, when it can be read.
    pub definition: Option<Arc<str>>,
}

impl CatalogRelation {
    /// The name of column `attnum` (1-based), if it exists and is not dropped.
    pub fn column(&self, attnum: i16) -> Option<&Arc<str>> {
        let index = usize::try_from(attnum).ok()?.checked_sub(1)?;
        self.columns.get(index)?.as_ref()
    }

    /// The live columns, in order (what `*` expands to).
    pub fn live_columns(&self) -> impl Iterator<Item = &Arc<str>> {
        self.columns.iter().flatten()
    }
}

/// Resolves relations of one target. Implementations cache (a lookup is on the path of every
/// masked result) and refresh on their own schedule and when told of schema changes.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// The relation with this id. `Ok(None)`: no such relation (dropped since). `Err`: the
    /// catalog cannot be read now; the masker then treats the column as unresolvable.
    async fn relation_by_oid(&self, oid: u32)
        -> Result<Option<Arc<CatalogRelation>>, GatewayError>;

    /// Relations with this name: in `schema` when given, else in every schema (the caller does
    /// not know the session's search path, and a masker must consider each).
    async fn relations_named(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<Arc<CatalogRelation>>, GatewayError>;

    /// The schema may have changed (the gateway saw DDL): drop what is cached.
    fn invalidate(&self);
}

// ---------------------------------------------------------------------------------------------
// Plans and values
// ---------------------------------------------------------------------------------------------

/// Masks the values of one result column; built for the column's type and format.
pub trait ValueMask: Send + Sync + fmt::Debug {
    /// The masked form of one non-NULL value: `None` means send NULL, `Cow::Borrowed(value)` that
    /// the value goes out unchanged (a detector found nothing in it).
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>>;
}

/// What happens to one result column.
#[derive(Debug, Clone)]
pub enum ColumnPlan {
    /// Sent as it is.
    Pass,
    /// Each value goes through `mask`.
    Mask {
        /// The mask.
        mask: Arc<dyn ValueMask>,
        /// What the audit trail says about it: the rule (or detector set) and strategy.
        reason: Arc<str>,
    },
}

/// The masking of one result set: one entry per column.
#[derive(Debug, Clone, Default)]
pub struct MaskPlan {
    columns: Vec<ColumnPlan>,
}

impl MaskPlan {
    /// A plan from per-column decisions.
    pub fn new(columns: Vec<ColumnPlan>) -> Self {
        Self { columns }
    }

    /// Whether no column is masked: rows then go through untouched.
    pub fn is_empty(&self) -> bool {
        self.columns.iter().all(|c| matches!(c, ColumnPlan::Pass))
    }

    /// The plan of column `index` ([`ColumnPlan::Pass`] past the end).
    pub fn column(&self, index: usize) -> &ColumnPlan {
        const PASS: ColumnPlan = ColumnPlan::Pass;
        self.columns.get(index).unwrap_or(&PASS)
    }

    /// Per column.
    pub fn columns(&self) -> &[ColumnPlan] {
        &self.columns
    }

    /// What this plan masked, for the audit trail: each masked column with its label (`names`,
    /// by position) and how many of its values were masked (`counts`, by position).
    pub fn report(&self, names: &[Arc<str>], counts: &[u64]) -> Vec<MaskedColumn> {
        self.columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                ColumnPlan::Mask { reason, .. } => Some(MaskedColumn {
                    column: Arc::clone(names.get(i)?),
                    reason: Arc::clone(reason),
                    values: counts.get(i).copied().unwrap_or(0),
                }),
                ColumnPlan::Pass => None,
            })
            .collect()
    }
}

/// What was masked in one execution's result, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MaskedColumn {
    /// The column's label.
    pub column: Arc<str>,
    /// The rule and strategy.
    pub reason: Arc<str>,
    /// Values changed (NULLs and values a detector left alone are not counted).
    pub values: u64,
}

impl MaskedColumn {
    /// Adds `more` to `into`, summing the values of the same column masked for the same reason
    /// (the results of one execution: several statements of a text, several portals' runs).
    pub fn merge(into: &mut Vec<MaskedColumn>, more: Vec<MaskedColumn>) {
        for m in more {
            match into
                .iter_mut()
                .find(|x| x.column == m.column && x.reason == m.reason)
            {
                Some(x) => x.values += m.values,
                None => into.push(m),
            }
        }
    }
}

/// What a masker needs to plan one result set.
#[derive(Clone, Copy)]
pub struct PlanRequest<'a> {
    /// The session.
    pub session: &'a SessionContext,
    /// The lineage of the statement that produced the result, when the analysis knows it.
    pub lineage: Option<&'a StatementLineage>,
    /// The result columns.
    pub columns: &'a [ResultColumn],
    /// The target's catalog.
    pub catalog: &'a dyn Catalog,
}

/// What a masker needs to check one statement text.
#[derive(Clone, Copy)]
pub struct CheckRequest<'a> {
    /// The session.
    pub session: &'a SessionContext,
    /// The statement text as the client sent it.
    pub sql: &'a str,
    /// Its lineage from the policy engine's analysis, when there is one.
    pub lineage: Option<&'a Lineage>,
    /// The target's catalog.
    pub catalog: &'a dyn Catalog,
}

/// Chooses what to mask.
#[async_trait::async_trait]
pub trait Masker: Send + Sync {
    /// Whether any masking may apply to this session at all. Asked once per session; when
    /// `false`, protocol crates skip decoding result metadata entirely (the zero-copy path) and
    /// no other method is called for the session.
    fn is_active(&self, session: &SessionContext) -> bool;

    /// Runs before a statement text of an active session is forwarded. `Err` refuses it (strict
    /// mode: a masked value could leave along a path that cannot be traced, or a predicate reads a
    /// masked column where the configuration forbids it). When the policy engine gave no lineage
    /// (no analysis configured), the masker may read the text itself and hand its lineage back:
    /// plans for the statement's results then get it. The default allows everything.
    async fn check(
        &self,
        _request: CheckRequest<'_>,
    ) -> Result<Option<Arc<Lineage>>, GatewayError> {
        Ok(None)
    }

    /// Runs once per result set of an active session, when its columns are known. A column that
    /// cannot be resolved must be masked, never passed.
    async fn plan(&self, request: PlanRequest<'_>) -> MaskPlan;

    /// Text the client of an active session reads outside result rows: error and notice fields,
    /// notification payloads. The default hands it back unchanged.
    fn scrub<'a>(&self, _session: &SessionContext, text: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(text)
    }

    /// Runs when the database answers a statement of an active session with an error or a
    /// notice: whether the statement reads values the session must not see (or what cannot be
    /// traced). `true` means the message's text is hidden whole: the database prints values in
    /// messages unquoted as often as quoted (`date out of range: 18273645-01-01`), and no
    /// scrubbing of the text can tell a value from the wording. `request.columns` is empty. The
    /// default is `true`.
    async fn reads_masked(&self, _request: PlanRequest<'_>) -> bool {
        true
    }
}

/// Masks nothing: the built-in until masking rules are configured.
#[derive(Debug, Default)]
pub struct NoMasking;

#[async_trait::async_trait]
impl Masker for NoMasking {
    fn is_active(&self, _: &SessionContext) -> bool {
        false
    }

    async fn plan(&self, _: PlanRequest<'_>) -> MaskPlan {
        MaskPlan::default()
    }
}

/// A catalog that knows nothing: every origin is unresolvable, so a masker masks every column it
/// cannot trace. For protocol crates and tests without a metadata connection.
#[derive(Debug, Default)]
pub struct EmptyCatalog;

#[async_trait::async_trait]
impl Catalog for EmptyCatalog {
    async fn relation_by_oid(&self, _: u32) -> Result<Option<Arc<CatalogRelation>>, GatewayError> {
        Ok(None)
    }

    async fn relations_named(
        &self,
        _: Option<&str>,
        _: &str,
    ) -> Result<Vec<Arc<CatalogRelation>>, GatewayError> {
        Ok(Vec::new())
    }

    fn invalidate(&self) {}
}
