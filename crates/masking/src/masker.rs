//! [`RuleMasker`]: the gateway's masker, driven by `[masking]` rules and detectors.
//!
//! Where a result value comes from is decided in this order:
//! 1. the wire's origin (PostgreSQL: table OID and column number; MySQL: schema, table and
//!    column), resolved through the target's catalog; a view's column is traced on through the
//!    view's definition;
//! 2. the statement's lineage (from the policy engine's analysis, or read here when the policy
//!    gave none), with `*` expanded through the catalog;
//! 3. nothing: a computed column is masked whole when the statement reads any masked column or
//!    calls a function the analysis cannot see into.
//!
//! A plain copy of one masked column gets its rule's strategy; anything derived from masked
//! columns (or that cannot be placed) is redacted whole, or set NULL where a rule says `null`:
//! shape-keeping strategies would reveal part of a value through `substr` and the like.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use gateway_core::{
    Catalog, CatalogRelation, CheckRequest, ColumnOrigin, ColumnPlan, ErrorKind, GatewayError,
    Hazard, Lineage, MaskPlan, Masker, OutputColumn, PlanRequest, Protocol, RelationKind,
    RelationName, SessionContext, Side, SourceColumn, StatementLineage, ValueMask, ValueType,
};
use policy::analysis::{Dialect, ReadingContext};

use crate::config::{MaskingConfig, Rule};
use crate::detect::{detector_mask, DetectorKind, Detectors};
use crate::strategy::{value_mask, HashKey, KeyError, Strategy};

/// How deep views over views are followed before a column counts as untraceable.
const VIEW_DEPTH: usize = 8;
/// Lineages of view definitions and statement texts kept (each map is cleared when full).
const CACHE_ENTRIES: usize = 4096;

/// Lineages by (dialect, SQL text); `None` where the text cannot be read.
type LineageCache = HashMap<(Dialect, Arc<str>), Option<Arc<Lineage>>>;

/// Relations by (schema, name) as a statement names them; `None` where the catalog could not be
/// read.
type NamedRelations = HashMap<(Option<Arc<str>>, Arc<str>), Option<Vec<Arc<CatalogRelation>>>>;

/// The masker built from `[masking]`.
pub struct RuleMasker {
    config: MaskingConfig,
    key: Option<Arc<HashKey>>,
    /// Lineage by (dialect, SQL text): view definitions, and statement texts the policy engine
    /// did not analyse.
    lineages: Mutex<LineageCache>,
    /// Detector sets by the kinds they hold, when several `[[masking.detectors]]` apply at once.
    detector_sets: Mutex<HashMap<Vec<DetectorKind>, Arc<Detectors>>>,
    /// Every detector, for error and notice texts of masked sessions.
    all_detectors: Arc<Detectors>,
}

impl std::fmt::Debug for RuleMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleMasker")
            .field("rules", &self.config.rules.len())
            .field("detectors", &self.config.detectors.len())
            .field("strict", &self.config.strict)
            .finish_non_exhaustive()
    }
}

impl RuleMasker {
    /// A masker for `config`; loads the hash key (creating it when missing) if a rule needs it.
    pub fn new(config: MaskingConfig) -> Result<RuleMasker, KeyError> {
        let key = if config.needs_hash_key() {
            Some(Arc::new(HashKey::load_or_create(&config.hash_key_file)?))
        } else {
            None
        };
        Ok(RuleMasker {
            config,
            key,
            lineages: Mutex::new(HashMap::new()),
            detector_sets: Mutex::new(HashMap::new()),
            all_detectors: Arc::new(Detectors::all()),
        })
    }

    /// The configuration it runs.
    pub fn config(&self) -> &MaskingConfig {
        &self.config
    }

    fn rules_for<'s>(&'s self, session: &SessionContext) -> Vec<&'s Rule> {
        self.config
            .rules
            .iter()
            .filter(|r| r.principals.applies(session))
            .collect()
    }

    /// The detectors that run for the session (the union of every set that applies), and the
    /// reason audit records give.
    fn detectors_for(&self, session: &SessionContext) -> Option<(Arc<Detectors>, Arc<str>)> {
        let applying: Vec<_> = self
            .config
            .detectors
            .iter()
            .filter(|d| d.principals.applies(session))
            .collect();
        match applying.as_slice() {
            [] => None,
            [one] => Some((Arc::clone(&one.detectors), Arc::clone(&one.reason))),
            many => {
                let kinds: BTreeSet<DetectorKind> = many
                    .iter()
                    .flat_map(|d| d.detectors.kinds().iter().copied())
                    .collect();
                let kinds: Vec<DetectorKind> = kinds.into_iter().collect();
                let mut sets = self.detector_sets.lock().unwrap_or_else(|p| p.into_inner());
                let set = Arc::clone(
                    sets.entry(kinds.clone())
                        .or_insert_with(|| Arc::new(Detectors::new(&kinds))),
                );
                let reason = many
                    .iter()
                    .map(|d| &*d.reason)
                    .collect::<Vec<_>>()
                    .join("; ");
                Some((set, Arc::from(reason)))
            }
        }
    }

    /// The lineage of `sql` read in `dialect`, cached by text. `None`: it cannot be read.
    fn lineage_of(&self, dialect: Dialect, sql: &str) -> Option<Arc<Lineage>> {
        let key = (dialect, Arc::<str>::from(sql));
        if let Some(hit) = self
            .lineages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return hit.clone();
        }
        let lineage = policy::analysis::lineage(sql, &ReadingContext::new(dialect)).map(Arc::new);
        let mut cache = self.lineages.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, lineage.clone());
        lineage
    }

    fn mask_for(
        &self,
        strategy: &Strategy,
        column: &gateway_core::ResultColumn,
    ) -> Arc<dyn ValueMask> {
        value_mask(
            strategy,
            column.value_type,
            column.format,
            self.key.as_ref(),
        )
    }
}

/// The SQL reader of the session's protocol; `None` for a protocol without one, whose masked
/// sessions [`Masker::check`] refuses outright.
fn reader(session: &SessionContext) -> Option<Dialect> {
    match session.target.protocol {
        Protocol::Postgres => Some(Dialect::Postgres),
        Protocol::Mysql => Some(Dialect::Mysql),
        _ => None,
    }
}

/// The dialect names are resolved in. A protocol without a reader never gets here with masked
/// rules (its statements were refused by the check), so PostgreSQL's folding is as good as any.
fn dialect(session: &SessionContext) -> Dialect {
    reader(session).unwrap_or(Dialect::Postgres)
}

fn refusal(message: String, rule: &str) -> GatewayError {
    GatewayError::new(ErrorKind::PolicyDenied, Side::Gateway, message)
        .with_hint("masked columns may only leave through result columns the gateway can trace; select the columns themselves, or ask for an identity without masking")
        .with_rule(rule)
}

/// What a value may carry: the rules whose columns reach it, and whether part of it could not be
/// placed at all.
#[derive(Debug, Clone, Default)]
struct Taint {
    /// Indexes into the session's rules.
    rules: BTreeSet<usize>,
    /// Some part of the value comes from where the gateway cannot see.
    untraced: bool,
    /// The value may be computed from its rules' columns rather than be a copy of one, although
    /// the wire names a column: a MySQL view's column, whose definition's outputs the analysis
    /// cannot line up. A shape-keeping strategy must not be applied to it.
    derived: bool,
}

impl Taint {
    fn untraced() -> Taint {
        Taint {
            rules: BTreeSet::new(),
            untraced: true,
            derived: false,
        }
    }

    fn add(&mut self, other: &Taint) {
        self.rules.extend(other.rules.iter().copied());
        self.untraced |= other.untraced;
        self.derived |= other.derived;
    }

    fn is_clean(&self) -> bool {
        self.rules.is_empty() && !self.untraced
    }
}

/// One output position after `*` is expanded: its taint, and whether it is a plain copy of a
/// stored column.
#[derive(Debug, Clone)]
struct Traced {
    taint: Taint,
    plain: bool,
}

/// Resolves lineage and wire origins to rules for one session, with lookups cached for the
/// duration of one check or plan.
struct Resolver<'a> {
    masker: &'a RuleMasker,
    rules: &'a [&'a Rule],
    catalog: &'a dyn Catalog,
    dialect: Dialect,
    named: NamedRelations,
}

impl<'a> Resolver<'a> {
    fn new(
        masker: &'a RuleMasker,
        rules: &'a [&'a Rule],
        catalog: &'a dyn Catalog,
        dialect: Dialect,
    ) -> Self {
        Resolver {
            masker,
            rules,
            catalog,
            dialect,
            named: HashMap::new(),
        }
    }

    /// Relations called `name` (in `schema` when given). `None`: the catalog cannot be read.
    async fn relations(&mut self, name: &RelationName) -> Option<Vec<Arc<CatalogRelation>>> {
        let key = (name.schema.clone(), Arc::clone(&name.name));
        if let Some(hit) = self.named.get(&key) {
            return hit.clone();
        }
        let found = self
            .catalog
            .relations_named(name.schema.as_deref(), &name.name)
            .await
            .ok();
        self.named.insert(key, found.clone());
        found
    }

    /// Rules naming a column called `column` in some relation that cannot be placed.
    fn anywhere(&self, column: &str) -> Taint {
        Taint {
            rules: self
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.names_column(column))
                .map(|(i, _)| i)
                .collect(),
            untraced: false,
            derived: false,
        }
    }

    /// Column `index` (0-based) of a catalog relation: the rules naming it, and for views what
    /// their definition reads.
    async fn relation_column(
        &mut self,
        rel: &CatalogRelation,
        index: usize,
        depth: usize,
    ) -> Taint {
        let Some(Some(column)) = rel.columns.get(index) else {
            // Dropped, or past the end: the catalog and the wire disagree.
            return Taint::untraced();
        };
        let mut taint = Taint {
            rules: self
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.names(&rel.schema, &rel.name, column))
                .map(|(i, _)| i)
                .collect(),
            untraced: holds_samples(rel, column),
            derived: false,
        };
        match rel.kind {
            RelationKind::Table => {}
            RelationKind::View | RelationKind::MaterializedView => {
                taint.add(&self.view_column(rel, index, depth).await);
            }
            // Sequences, composite types: nothing stored that a rule names, but nothing to trace.
            _ => {}
        }
        taint
    }

    /// What column `index` of a view carries, from its definition.
    async fn view_column(&mut self, view: &CatalogRelation, index: usize, depth: usize) -> Taint {
        if depth >= VIEW_DEPTH {
            return Taint::untraced();
        }
        let Some(definition) = &view.definition else {
            return Taint::untraced();
        };
        let Some(lineage) = self.masker.lineage_of(self.dialect, definition) else {
            return Taint::untraced();
        };
        let Some(statement) = lineage.statements.first() else {
            return Taint::untraced();
        };
        // The view's columns are its definition's outputs, in order (dropped columns of a view
        // do not exist: views cannot drop columns).
        match self.outputs(statement, depth + 1).await {
            Some(outputs) if outputs.len() == view.columns.len() => match outputs.get(index) {
                Some(traced) => {
                    let mut taint = traced.taint.clone();
                    // The wire names the view's column, which looks like a plain column; what
                    // the definition computes there (`reverse(ssn)`) must not get a
                    // shape-keeping strategy, which would keep part of the masked value.
                    taint.derived |= !traced.plain;
                    taint
                }
                None => Taint::untraced(),
            },
            _ => {
                // Anything the definition reads, computed or not (MySQL's lineage has no
                // outputs at all).
                let mut taint = self.fallback(statement, depth + 1).await;
                taint.derived = true;
                taint
            }
        }
    }

    /// What a source the analysis names carries.
    async fn source(&mut self, source: &SourceColumn, depth: usize) -> Taint {
        match source {
            SourceColumn::Column {
                relation: Some(relation),
                column,
            } => {
                let Some(relations) = self.relations(relation).await else {
                    return Taint::untraced();
                };
                if relations.is_empty() {
                    // Not in the catalog (a relation of another session, or one created in this
                    // very statement): judge by the column name alone.
                    return self.anywhere(column);
                }
                let mut taint = Taint::default();
                for rel in &relations {
                    match rel
                        .columns
                        .iter()
                        .position(|c| c.as_deref() == Some(&**column))
                    {
                        Some(index) => {
                            taint.add(&Box::pin(self.relation_column(rel, index, depth)).await)
                        }
                        None => taint.add(&self.anywhere(column)),
                    }
                }
                taint
            }
            SourceColumn::Column {
                relation: None,
                column,
            } => self.anywhere(column),
            SourceColumn::WholeRow { relation } => self.whole_row(relation, depth).await,
            // A function the analysis cannot see into may read and return anything.
            SourceColumn::Opaque { .. } => Taint::untraced(),
            _ => Taint::untraced(),
        }
    }

    async fn whole_row(&mut self, relation: &RelationName, depth: usize) -> Taint {
        let Some(relations) = self.relations(relation).await else {
            return Taint::untraced();
        };
        if relations.is_empty() {
            return Taint::untraced();
        }
        let mut taint = Taint::default();
        for rel in &relations {
            for index in 0..rel.columns.len() {
                if rel.columns[index].is_some() {
                    taint.add(&Box::pin(self.relation_column(rel, index, depth)).await);
                }
            }
        }
        taint
    }

    async fn sources(&mut self, sources: &[SourceColumn], depth: usize) -> Taint {
        let mut taint = Taint::default();
        for s in sources {
            taint.add(&Box::pin(self.source(s, depth)).await);
        }
        taint
    }

    /// The statement's outputs with `*` expanded, or `None` when they cannot be listed.
    async fn outputs(&mut self, statement: &StatementLineage, depth: usize) -> Option<Vec<Traced>> {
        let outputs = statement.outputs.as_ref()?;
        let mut traced = Vec::with_capacity(outputs.len());
        for output in outputs {
            match output {
                OutputColumn::Star { relation } => {
                    let relations = self.relations(relation).await?;
                    // The search path decides which of several same-named relations `*` reads;
                    // unknown here, so every candidate must agree on the column count.
                    let first = relations.first()?;
                    let width = first.live_columns().count();
                    if relations.iter().any(|r| r.live_columns().count() != width) {
                        return None;
                    }
                    let mut columns: Vec<Traced> = (0..width)
                        .map(|_| Traced {
                            taint: Taint::default(),
                            plain: true,
                        })
                        .collect();
                    for rel in &relations {
                        let live = rel
                            .columns
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| c.is_some())
                            .map(|(i, _)| i)
                            .collect::<Vec<_>>();
                        for (slot, index) in live.into_iter().enumerate() {
                            let t = Box::pin(self.relation_column(rel, index, depth)).await;
                            columns[slot].taint.add(&t);
                        }
                    }
                    traced.extend(columns);
                }
                OutputColumn::Value { sources, plain } => {
                    let taint = self.sources(sources, depth).await;
                    traced.push(Traced {
                        taint,
                        plain: *plain && sources.len() == 1,
                    });
                }
                _ => return None,
            }
        }
        Some(traced)
    }

    /// What a computed column of a statement whose outputs cannot be lined up may carry:
    /// everything the statement reads.
    async fn fallback(&mut self, statement: &StatementLineage, depth: usize) -> Taint {
        let mut taint = self.sources(&statement.reads, depth).await;
        if statement
            .hazards
            .iter()
            .any(|h| matches!(h, Hazard::UntracedOutput | Hazard::Dynamic))
        {
            taint.untraced = true;
        }
        taint
    }

    /// Taint of a column the wire places in a relation by id.
    async fn by_oid(&mut self, oid: u32, attnum: i16) -> Taint {
        match self.catalog.relation_by_oid(oid).await {
            Ok(Some(rel)) => match usize::try_from(attnum).ok().and_then(|a| a.checked_sub(1)) {
                Some(index) => self.relation_column(&rel, index, 0).await,
                // System columns (ctid, xmin, ...): nothing a rule can name, nothing stored.
                None => Taint::default(),
            },
            // Dropped since, or the catalog cannot be read now: never pass what is not placed.
            Ok(None) | Err(_) => Taint::untraced(),
        }
    }

    /// Taint of a column the wire places by schema, table and column name (MySQL).
    async fn by_name(&mut self, schema: &Arc<str>, table: &Arc<str>, column: &Arc<str>) -> Taint {
        let relation = RelationName {
            schema: Some(Arc::clone(schema)),
            name: Arc::clone(table),
        };
        self.source(
            &SourceColumn::Column {
                relation: Some(relation),
                column: Arc::clone(column),
            },
            0,
        )
        .await
    }
}

/// Whether a column of a catalog relation holds samples of other tables' values: the planner's
/// statistics keep the most common values and histogram bounds of every column (masked ones
/// included) after ANALYZE, readable through `pg_stats` and its siblings. Such a column may carry
/// any masked value, and no rule can say which.
fn holds_samples(rel: &CatalogRelation, column: &str) -> bool {
    // MariaDB's engine-independent statistics (ANALYZE TABLE ... PERSISTENT) keep each column's
    // smallest and largest value and a histogram; MySQL's histograms keep sample values.
    let mysql_samples = (rel.schema.eq_ignore_ascii_case("mysql")
        && rel.name.eq_ignore_ascii_case("column_stats")
        && ["min_value", "max_value", "histogram"]
            .iter()
            .any(|c| column.eq_ignore_ascii_case(c)))
        || (rel.schema.eq_ignore_ascii_case("information_schema")
            && rel.name.eq_ignore_ascii_case("column_statistics")
            && column.eq_ignore_ascii_case("histogram"));
    mysql_samples
        || &*rel.schema == "pg_catalog"
            && matches!(
                &*rel.name,
                "pg_statistic"
                    | "pg_stats"
                    | "pg_stats_ext"
                    | "pg_stats_ext_exprs"
                    | "pg_statistic_ext_data"
            )
            && (column.starts_with("stavalues")
                || matches!(
                    column,
                    "most_common_vals"
                        | "histogram_bounds"
                        | "most_common_elems"
                        | "stxdmcv"
                        | "stxdexpr"
                ))
}

/// The strictest strategy among `rules`, for a value derived from their columns: redaction, or
/// NULL where a rule asks for it.
fn derived_strategy(rules: &[&Rule], taint: &Taint) -> Strategy {
    if taint
        .rules
        .iter()
        .any(|&i| rules[i].strategy == Strategy::Null)
    {
        Strategy::Null
    } else {
        Strategy::Redact
    }
}

fn derived_reason(rules: &[&Rule], taint: &Taint, strategy: &Strategy) -> Arc<str> {
    let names: Vec<&str> = taint.rules.iter().map(|&i| &*rules[i].name).collect();
    let from = match (names.is_empty(), taint.untraced) {
        (true, _) => "an origin the gateway cannot trace".to_owned(),
        (false, false) => names.join(", "),
        (false, true) => format!(
            "{} and an origin the gateway cannot trace",
            names.join(", ")
        ),
    };
    Arc::from(format!(
        "{}: {} (derived from {from})",
        names.first().copied().unwrap_or("untraced"),
        strategy.name()
    ))
}

/// For detector sessions: containers (arrays, rows), bytes and types the detectors cannot rewrite
/// (xml, tsvector, ...) become NULL when a detector finds something in their bytes. Binary forms
/// hold the text of their elements verbatim between length words (an array of text, a row, a
/// bytea, an xml value), so the bytes are scanned as they are, whatever the format.
#[derive(Debug)]
struct NullOnFinding(Arc<Detectors>);

impl ValueMask for NullOnFinding {
    fn mask<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let found = |bytes: &[u8]| !self.0.find(&String::from_utf8_lossy(bytes)).is_empty();
        // bytea's text form is hex (`\x5a65...`), which a client decodes back into the text.
        let hex_bytes = value
            .strip_prefix(b"\\x")
            .and_then(|hex| hex::decode(hex).ok());
        if found(value) || hex_bytes.is_some_and(|b| found(&b)) {
            None
        } else {
            Some(Cow::Borrowed(value))
        }
    }
}

#[async_trait::async_trait]
impl Masker for RuleMasker {
    fn is_active(&self, session: &SessionContext) -> bool {
        self.config
            .rules
            .iter()
            .any(|r| r.principals.applies(session))
            || self
                .config
                .detectors
                .iter()
                .any(|d| d.principals.applies(session))
    }

    async fn check(&self, request: CheckRequest<'_>) -> Result<Option<Arc<Lineage>>, GatewayError> {
        let rules = self.rules_for(request.session);
        let Some(dialect) = reader(request.session) else {
            if rules.is_empty() {
                return Ok(None);
            }
            return Err(refusal(
                format!(
                    "masking: the gateway has no SQL reader for protocol {}, so it cannot tell which result values come from masked columns",
                    request.session.target.protocol.as_str()
                ),
                "masking",
            ));
        };
        let (lineage, computed) = match request.lineage {
            Some(l) => (Some(Cow::Borrowed(l)), None),
            None => match self.lineage_of(dialect, request.sql) {
                Some(l) => (Some(Cow::Owned((*l).clone())), Some(l)),
                None => (None, None),
            },
        };
        if rules.is_empty() {
            return Ok(computed);
        }
        let Some(lineage) = lineage else {
            return Err(refusal(
                "masking: the gateway cannot read this statement, so it cannot tell which result values come from masked columns".to_owned(),
                "masking",
            ));
        };
        if dialect == Dialect::Mysql {
            // The results of a multi-statement text are planned by their position, which is
            // the statement's only while each statement returns one result: a procedure (or
            // an EXECUTE) returns any number, and would shift the statements after it.
            let count = lineage.statements.len();
            let shifting = lineage
                .statements
                .iter()
                .take(count.saturating_sub(1))
                .any(|st| {
                    st.hazards.contains(&Hazard::UntracedOutput)
                        && st.hazards.contains(&Hazard::Dynamic)
                });
            if shifting {
                return Err(refusal(
                    "masking: a CALL or EXECUTE must be the last statement of a text, since the gateway cannot tell its results from those of the statements after it".to_owned(),
                    "masking",
                ));
            }
        }
        let mut resolver = Resolver::new(self, &rules, request.catalog, dialect);
        for statement in &lineage.statements {
            self.check_statement(&mut resolver, &rules, statement)
                .await?;
        }
        Ok(computed)
    }

    async fn plan(&self, request: PlanRequest<'_>) -> MaskPlan {
        let rules = self.rules_for(request.session);
        let detectors = self.detectors_for(request.session);
        if rules.is_empty() && detectors.is_none() {
            return MaskPlan::default();
        }
        let mut resolver = Resolver::new(self, &rules, request.catalog, dialect(request.session));
        let outputs = match request.lineage {
            Some(statement) => resolver
                .outputs(statement, 0)
                .await
                .filter(|o| o.len() == request.columns.len()),
            None => None,
        };
        // MySQL's wire names an alias as the origin of a column of a derived table or a CTE
        // (and the analysis flags those statements); without a lineage it cannot be told
        // whether that is the case, so no named origin is trusted.
        let aliased = match request.lineage {
            Some(statement) => statement.hazards.contains(&Hazard::AliasedOrigins),
            None => dialect(request.session) == Dialect::Mysql,
        };
        let mut fallback: Option<Taint> = None;
        let mut plans = Vec::with_capacity(request.columns.len());
        for (i, column) in request.columns.iter().enumerate() {
            let (taint, plain) = match &column.origin {
                ColumnOrigin::Relation { table_oid, attnum } => {
                    (resolver.by_oid(*table_oid, *attnum).await, true)
                }
                ColumnOrigin::Named {
                    schema,
                    table,
                    column,
                } if aliased => {
                    // What the name says (if it names a masked column, its rules still apply),
                    // and anything the statement reads, as for a computed column.
                    let mut taint = resolver.by_name(schema, table, column).await;
                    if fallback.is_none() {
                        fallback = Some(match request.lineage {
                            Some(statement) => resolver.fallback(statement, 0).await,
                            None => Taint::untraced(),
                        });
                    }
                    taint.add(fallback.as_ref().unwrap_or(&Taint::untraced()));
                    (taint, false)
                }
                ColumnOrigin::Named {
                    schema,
                    table,
                    column,
                } => (resolver.by_name(schema, table, column).await, true),
                _ => match &outputs {
                    Some(outputs) => (outputs[i].taint.clone(), outputs[i].plain),
                    None => {
                        if fallback.is_none() {
                            fallback = Some(match request.lineage {
                                Some(statement) => resolver.fallback(statement, 0).await,
                                // No lineage at all: nothing says where the value comes from.
                                None => Taint::untraced(),
                            });
                        }
                        (fallback.clone().unwrap_or_else(Taint::untraced), false)
                    }
                },
            };
            plans.push(self.column_plan(&rules, detectors.as_ref(), column, &taint, plain));
        }
        MaskPlan::new(plans)
    }

    async fn reads_masked(&self, request: PlanRequest<'_>) -> bool {
        let rules = self.rules_for(request.session);
        if rules.is_empty() {
            // Detectors alone: their scrubbing of the text is all there is to do.
            return false;
        }
        let Some(statement) = request.lineage else {
            return true;
        };
        if statement.hazards.iter().any(|h| {
            matches!(
                h,
                Hazard::UntracedOutput | Hazard::Dynamic | Hazard::Defines { .. }
            )
        }) {
            return true;
        }
        let mut resolver = Resolver::new(self, &rules, request.catalog, dialect(request.session));
        let mut taint = resolver.sources(&statement.reads, 0).await;
        for output in statement.outputs.iter().flatten() {
            if let OutputColumn::Star { relation } = output {
                taint.add(&resolver.whole_row(relation, 0).await);
            }
        }
        !taint.is_clean()
    }

    fn scrub<'a>(&self, session: &SessionContext, text: &'a str) -> Cow<'a, str> {
        let quoted = if self
            .config
            .rules
            .iter()
            .any(|r| r.principals.applies(session))
        {
            match dialect(session) {
                Dialect::Postgres => redact_quoted(text),
                Dialect::Mysql => redact_quoted_mysql(text),
            }
        } else {
            Cow::Borrowed(text)
        };
        match self.all_detectors.redact(&quoted) {
            Cow::Borrowed(_) => quoted,
            Cow::Owned(o) => Cow::Owned(o),
        }
    }
}

impl RuleMasker {
    fn column_plan(
        &self,
        rules: &[&Rule],
        detectors: Option<&(Arc<Detectors>, Arc<str>)>,
        column: &gateway_core::ResultColumn,
        taint: &Taint,
        plain: bool,
    ) -> ColumnPlan {
        if taint.is_clean() {
            let Some((detectors, reason)) = detectors else {
                return ColumnPlan::Pass;
            };
            let mask: Option<Arc<dyn ValueMask>> =
                match detector_mask(Arc::clone(detectors), column.value_type, column.format) {
                    Some(m) => Some(m),
                    None if matches!(
                        column.value_type,
                        ValueType::Array
                            | ValueType::Composite
                            | ValueType::Other
                            | ValueType::Bytes
                    ) =>
                    {
                        Some(Arc::new(NullOnFinding(Arc::clone(detectors))))
                    }
                    None => None,
                };
            return match mask {
                Some(mask) => ColumnPlan::Mask {
                    mask,
                    reason: Arc::clone(reason),
                },
                None => ColumnPlan::Pass,
            };
        }
        // A plain copy of one stored column: the strictest of the rules naming it decides.
        let strictest = taint
            .rules
            .iter()
            .map(|&i| rules[i])
            .max_by_key(|r| r.strategy.strictness());
        if let (true, false, false, Some(rule)) = (plain, taint.untraced, taint.derived, strictest)
        {
            return ColumnPlan::Mask {
                mask: self.mask_for(&rule.strategy, column),
                reason: Arc::clone(&rule.reason),
            };
        }
        let strategy = derived_strategy(rules, taint);
        ColumnPlan::Mask {
            mask: self.mask_for(&strategy, column),
            reason: derived_reason(rules, taint, &strategy),
        }
    }

    async fn check_statement(
        &self,
        resolver: &mut Resolver<'_>,
        rules: &[&Rule],
        statement: &StatementLineage,
    ) -> Result<(), GatewayError> {
        let names = |t: &Taint| -> String {
            let n: Vec<&str> = t.rules.iter().map(|&i| &*rules[i].name).collect();
            if n.is_empty() {
                "columns the gateway cannot place".to_owned()
            } else {
                format!("columns masked by {}", n.join(", "))
            }
        };
        let rule_of = |t: &Taint| -> String {
            t.rules
                .iter()
                .next()
                .map(|&i| format!("masking:{}", rules[i].name))
                .unwrap_or_else(|| "masking".to_owned())
        };
        for hazard in &statement.hazards {
            match hazard {
                Hazard::Dynamic if self.config.strict => {
                    let what = match resolver.dialect {
                        Dialect::Postgres => "SQL built at run time (a DO block, EXECUTE of a string, dblink, query_to_xml, ...)",
                        Dialect::Mysql => "SQL out of the gateway's sight (a procedure CALL, EXECUTE of a prepared statement, PREPARE)",
                    };
                    return Err(refusal(
                        format!("masking: this statement runs {what}, which the gateway cannot trace; masked values could leave unmasked"),
                        "masking",
                    ));
                }
                Hazard::ServerFile { function } => {
                    return Err(refusal(
                        format!("masking: {function} reads or writes server files or large objects, a channel masking cannot cover"),
                        "masking",
                    ));
                }
                Hazard::CopyTo { reads } => {
                    let mut taint = Taint::default();
                    for relation in reads {
                        taint.add(&resolver.whole_row(relation, 0).await);
                    }
                    if !taint.is_clean() {
                        return Err(refusal(
                            format!("masking: COPY TO would send {} outside the result rows the gateway masks; select the rows instead", names(&taint)),
                            &rule_of(&taint),
                        ));
                    }
                }
                Hazard::Defines { what } if self.config.strict => {
                    return Err(refusal(
                        format!("masking: {what} defines code that runs later, or a route to data, out of the gateway's sight (a function can read masked columns and store, raise or return them unmasked); ask for an identity without masking to change the schema"),
                        "masking",
                    ));
                }
                Hazard::Alters { relations, schemas } => {
                    if let Some(schema) = schemas.first() {
                        return Err(refusal(
                            format!("masking: renaming schema {schema} would move tables out from under the masking rules, which name columns by schema, table and column"),
                            "masking",
                        ));
                    }
                    let mut taint = Taint::default();
                    for relation in relations {
                        taint.add(&resolver.whole_row(relation, 0).await);
                    }
                    if !taint.rules.is_empty() {
                        return Err(refusal(
                            format!("masking: this statement changes a relation with {} in place (a rename, a new parent or partition, a column computed or retyped from another), after which the rules would no longer name where its values are", names(&taint)),
                            &rule_of(&taint),
                        ));
                    }
                }
                Hazard::Stores { sources } => {
                    let taint = resolver.sources(sources, 0).await;
                    if !taint.is_clean() {
                        return Err(refusal(
                            format!("masking: this statement would store values of {} where they could be read back unmasked (a table, a setting, a notification or a large object)", names(&taint)),
                            &rule_of(&taint),
                        ));
                    }
                }
                _ => {}
            }
        }
        if self.config.strict {
            // Whole rows in result values (`row_to_json(t)`, `t::text`, a row through a
            // subquery); `*` itself is expanded column by column and is not one.
            let whole_rows = statement
                .outputs
                .iter()
                .flatten()
                .flat_map(|o| match o {
                    OutputColumn::Value { sources, .. } => sources.as_slice(),
                    _ => &[],
                })
                .filter(|s| matches!(s, SourceColumn::WholeRow { .. }));
            for source in whole_rows {
                let taint = resolver.source(source, 0).await;
                if !taint.rules.is_empty() {
                    return Err(refusal(
                        format!("masking: this statement reads whole rows of a relation with {} (row_to_json, to_jsonb, a row value or its text), which cannot be masked column by column; name the columns instead", names(&taint)),
                        &rule_of(&taint),
                    ));
                }
            }
        }
        if self.config.refuse_predicates {
            let taint = resolver.sources(&statement.predicates, 0).await;
            if !taint.rules.is_empty() {
                return Err(refusal(
                    format!("masking: this statement filters, joins, groups or orders by {}, which reveals their values a bit at a time", names(&taint)),
                    &rule_of(&taint),
                ));
            }
        }
        Ok(())
    }
}

/// Every double-quoted span becomes `"***"`: PostgreSQL quotes the values it prints in messages
/// (`invalid input syntax for type integer: "..."`). An unmatched quote hides the rest.
pub fn redact_quoted(text: &str) -> Cow<'_, str> {
    if !text.contains('"') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..open]);
        out.push_str("\"***\"");
        match rest[open + 1..].find('"') {
            Some(close) => rest = &rest[open + 1 + close + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// [`redact_quoted`] for MySQL's messages, which quote values (and names) with single quotes
/// (`Duplicate entry '...' for key '...'`, `Incorrect integer value: '...'`) and sometimes double
/// ones. An apostrophe between two letters (`doesn't`) opens nothing; inside a span, the next
/// quote of the same kind closes it, and an unmatched one hides the rest.
pub fn redact_quoted_mysql(text: &str) -> Cow<'_, str> {
    if !text.contains(['\'', '"']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut previous: Option<char> = None;
    while let Some((at, c)) = chars.next() {
        let next = chars.peek().map(|(_, n)| *n);
        let apostrophe = c == '\''
            && previous.is_some_and(char::is_alphanumeric)
            && next.is_some_and(char::is_alphanumeric);
        if (c == '\'' || c == '"') && !apostrophe {
            out.push(c);
            out.push_str("***");
            out.push(c);
            match text[at + 1..].find(c) {
                Some(close) => {
                    let resume = at + 1 + close + 1;
                    while chars.peek().is_some_and(|(i, _)| *i < resume) {
                        chars.next();
                    }
                    previous = Some(c);
                }
                None => return Cow::Owned(out),
            }
            continue;
        }
        out.push(c);
        previous = Some(c);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_messages_have_their_quoted_spans_hidden() {
        let cases = [
            ("no quotes", "no quotes"),
            (
                "Duplicate entry 'alice@example.com' for key 'email'",
                "Duplicate entry '***' for key '***'",
            ),
            ("Table 'shop.x' doesn't exist", "Table '***' doesn't exist"),
            (
                r#"Incorrect integer value: "123-45-6789""#,
                r#"Incorrect integer value: "***""#,
            ),
            // A value with an apostrophe closes early: the rest is a new span, hidden too.
            ("entry 'o'brien' here", "entry '***'brien'***'"),
            ("open 'secret", "open '***'"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact_quoted_mysql(text), expected, "{text}");
        }
    }

    #[test]
    fn detector_nulls_read_binary_containers() {
        let mask = NullOnFinding(Arc::new(Detectors::all()));
        // text[] in binary: one dimension, no nulls, element type 25, one element from 1.
        let array = |element: &[u8]| {
            let mut v = Vec::new();
            for word in [1i32, 0, 25, 1, 1, element.len() as i32] {
                v.extend_from_slice(&word.to_be_bytes());
            }
            v.extend_from_slice(element);
            v
        };
        let found = array(b"write to jane.doe@example.com today");
        assert!(mask.mask(&found).is_none(), "a finding in a binary array");
        let clean = array(b"nothing to see");
        assert!(matches!(mask.mask(&clean), Some(Cow::Borrowed(_))));
        // bytea in text format: hex, decoded before it is scanned.
        let hex = format!("\\x{}", hex::encode("mail jane.doe@example.com"));
        assert!(
            mask.mask(hex.as_bytes()).is_none(),
            "a finding in hex bytea"
        );
    }

    #[test]
    fn quoted_spans_are_hidden() {
        assert_eq!(redact_quoted("no quotes"), "no quotes");
        assert_eq!(
            redact_quoted(r#"invalid input syntax for type integer: "123-45-6789""#),
            r#"invalid input syntax for type integer: "***""#
        );
        assert_eq!(redact_quoted(r#"a "x" b "y" c"#), r#"a "***" b "***" c"#);
        assert_eq!(
            redact_quoted(r#"value "ab"c" left"#),
            r#"value "***"c"***""#
        );
        assert_eq!(redact_quoted(r#"open "secret"#), r#"open "***""#);
    }
}
