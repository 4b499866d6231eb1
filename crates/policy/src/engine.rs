//! The rule engine: [`RuleEngine`] implements [`gateway_core::PolicyEngine`] over a [`RuleSet`].
//!
//! For every statement text it (1) refuses to read PostgreSQL text under
//! `standard_conforming_strings = off`, (2) analyses the text (cached by text and reading
//! settings), (3) checks that an access rule still admits the session, (4) judges each statement
//! with the user's rules and the built-in guardrails, deny beating require-approval beating
//! allow, and (5) lets the strictest statement decide for the whole text. Decisions are cached by
//! text, reading settings, identity, target and access, so a repeated statement costs one hash
//! lookup. PostgreSQL texts that differ only in literal values share an analysis, and usually a
//! decision, through two more caches keyed by the text's shape, wherever that is proven not to
//! change the outcome (see [`crate::analysis::Shape`]). [`RuleEngine::replace`] swaps the rule set (and empty caches) atomically: sessions
//! judge their next statement under the new rules.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use gateway_core::{
    Access, Decision, ErrorKind, GatewayError, Identity, Judgement, PolicyEngine, Protocol, Side,
    SqlSettings, StatementContext, StatementObjects, SyntaxError, Target, Verdict,
};
use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};

use crate::analysis::{analyze, analyze_shaped, shape, Dialect, ReadingContext, Shape};
use crate::facts::{
    Analysis, Class, FailureKind, Filter, ObjectName, ParseFailure, StatementFacts,
};
use crate::rules::{Action, Builtin, KindSelector, RuleSet, StatementRule, Unparsable};

/// Upper bound of the memory the analysis cache may hold, in bytes of statement text (plus a
/// fixed overhead per entry). Statements larger than a shard's share are never cached.
pub const ANALYSIS_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Upper bound of the shape cache (analyses shared by texts that differ only in literal values),
/// counted the same way.
pub const SHAPE_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Upper bound of the decision cache, counted the same way.
pub const DECISION_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Bytes charged per cache entry on top of its statement text: keys, facts, the judgement.
const ENTRY_OVERHEAD: u64 = 512;

/// The policy engine built from a [`RuleSet`]. Cheap to share (`Arc`); every method may be called
/// from any thread.
pub struct RuleEngine {
    state: ArcSwap<Compiled>,
}

/// A rule set with its own caches: replaced together, so a decision made under old rules can
/// never be served under new ones.
struct Compiled {
    rules: RuleSet,
    analyses: Cache<AnalysisKey, Arc<Analysis>, TextWeighter>,
    /// Analyses by statement shape (the text with its literals taken out): only those proven
    /// not to depend on the literals' values (see `analysis::shape`).
    shapes: Cache<AnalysisKey, Arc<Analysis>, TextWeighter>,
    decisions: Cache<DecisionKey, Arc<Judgement>, TextWeighter>,
    /// Decisions by statement shape: those whose analysis is shared by shape and whose rules did
    /// not read the text itself. Kept apart from `decisions` so that no text can be taken for a
    /// shape.
    shape_decisions: Cache<DecisionKey, Arc<Judgement>, TextWeighter>,
    /// Hashes of texts lately judged by shape, one per slot: a text found here again is repeated
    /// (a statement with constant literals prepared again and again, not a new value each time)
    /// and is cached by text as well, which is cheaper to look up than a shape is to read.
    seen: Box<[AtomicU64]>,
}

impl Compiled {
    fn new(rules: RuleSet) -> Self {
        Compiled {
            rules,
            analyses: Cache::with_weighter(4096, ANALYSIS_CACHE_BYTES, TextWeighter),
            shapes: Cache::with_weighter(2048, SHAPE_CACHE_BYTES, TextWeighter),
            decisions: Cache::with_weighter(4096, DECISION_CACHE_BYTES, TextWeighter),
            shape_decisions: Cache::with_weighter(2048, SHAPE_CACHE_BYTES, TextWeighter),
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether `sql` was judged by shape lately; remembers it either way.
    fn seen_again(&self, sql: &str) -> bool {
        let hash = SEEN_HASHER.hash_one(sql) | 1; // never 0, the empty slot
        let slot = &self.seen[(hash as usize) % self.seen.len()];
        slot.swap(hash, Ordering::Relaxed) == hash
    }
}

/// Slots of [`Compiled::seen`]: 32 KiB.
const SEEN_SLOTS: usize = 4096;
/// The same for every engine, so that tests are repeatable; collisions only cost a lookup.
const SEEN_HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5eed);

impl std::fmt::Debug for RuleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.load();
        f.debug_struct("RuleEngine")
            .field("access_rules", &state.rules.access.len())
            .field("statement_rules", &state.rules.rules.len())
            .finish()
    }
}

impl RuleEngine {
    /// An engine running `rules`.
    pub fn new(rules: RuleSet) -> Self {
        RuleEngine {
            state: ArcSwap::from_pointee(Compiled::new(rules)),
        }
    }

    /// Replaces the running rule set. Statements judged after this returns see only the new
    /// rules; both caches start empty. Open sessions are not touched.
    pub fn replace(&self, rules: RuleSet) {
        self.state.store(Arc::new(Compiled::new(rules)));
    }

    /// A copy of the running rule set.
    pub fn rules(&self) -> RuleSet {
        self.state.load().rules.clone()
    }

    /// Everything the engine makes of `sql` for `identity` on `target`, uncached: the access
    /// decision, the analysis of each statement, each statement's verdict and the overall
    /// verdict (what `portcullis policy explain` prints). When no access rule admits the identity,
    /// the statements are judged as the refused session would be: denied by
    /// `builtin:no-access`.
    pub fn explain(
        &self,
        identity: &Identity,
        target: &Target,
        settings: &SqlSettings,
        sql: &str,
    ) -> Explanation {
        let state = self.state.load();
        let rule = state.rules.access_rule(identity, target);
        let access = AccessExplanation {
            mode: rule.map(|r| r.mode),
            rule: rule.map(|r| Arc::clone(&r.name)),
            reason: rule.is_none().then(|| refused_message(identity, target)),
        };
        let ctx = StatementContext {
            identity,
            target,
            access: rule.map_or(Access::ReadOnly, |r| r.mode),
            settings,
        };
        let evaluation = evaluate(&state, &ctx, sql, None);
        Explanation {
            access,
            failure: evaluation.analysis.as_ref().and_then(|a| a.failure.clone()),
            statements: evaluation
                .analysis
                .as_ref()
                .map(|a| {
                    a.statements
                        .iter()
                        .zip(evaluation.statements)
                        .map(|(facts, v)| StatementExplanation {
                            classification: v.classification,
                            facts: facts.clone(),
                            verdict: v.verdict,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            verdict: evaluation.judgement.verdict,
            classification: evaluation.judgement.classification,
        }
    }

    /// The analysis of `sql`, from a cache when it can be; also whether it is the analysis of
    /// every text of `shape` (`sql`'s shape, when it has one).
    fn analysis(
        state: &Compiled,
        sql: &str,
        reading: &ReadingContext,
        shape: Option<&Shape>,
    ) -> (Arc<Analysis>, bool) {
        let lookup = AnalysisRef { sql, reading };
        if let Some(hit) = state.analyses.get(&lookup) {
            return (hit, false);
        }
        // A text seen for the first time may still have the shape of one analysed before
        // (`... WHERE id = 7` after `... WHERE id = 6`). Such texts are not cached by text: the
        // shape entry answers them, and clients that put values into the text would otherwise
        // fill the text cache with texts never seen again.
        if let Some(shape) = shape {
            let lookup = AnalysisRef {
                sql: shape.key(),
                reading,
            };
            if let Some(hit) = state.shapes.get(&lookup) {
                return (hit, true);
            }
        }
        // Only cache misses parse, so only they get a span (on the trace target, off unless a
        // trace subscriber asks for it).
        let span = tracing::info_span!(
            target: gateway_core::trace::TARGET,
            "analysis",
            bytes = sql.len() as i64,
        );
        let (analysis, shareable) = span.in_scope(|| match shape {
            Some(shape) => analyze_shaped(sql, reading, shape),
            None => (analyze(sql, reading), false),
        });
        let analysis = Arc::new(analysis);
        match shape {
            Some(shape) if shareable => state.shapes.insert(
                AnalysisKey {
                    sql: Box::from(shape.key()),
                    reading: reading.clone(),
                },
                Arc::clone(&analysis),
            ),
            _ => state.analyses.insert(
                AnalysisKey {
                    sql: Box::from(sql),
                    reading: reading.clone(),
                },
                Arc::clone(&analysis),
            ),
        }
        (analysis, shareable)
    }
}

impl PolicyEngine for RuleEngine {
    fn access(&self, identity: &Identity, target: &Target) -> Result<Access, GatewayError> {
        let state = self.state.load();
        match state.rules.access_rule(identity, target) {
            Some(rule) => Ok(rule.mode),
            None => Err(GatewayError::new(
                ErrorKind::AccessDenied,
                Side::Client,
                refused_message(identity, target),
            )
            .with_hint("ask an administrator for an access rule that covers one of your groups")),
        }
    }

    fn judge(&self, ctx: &StatementContext<'_>, sql: &str) -> Arc<Judgement> {
        let state = self.state.load();
        let lookup = DecisionRef {
            sql,
            settings: ctx.settings,
            subject: &ctx.identity.subject,
            groups: &ctx.identity.groups,
            target: &ctx.target.name,
            protocol: ctx.target.protocol,
            access: ctx.access,
        };
        if let Some(hit) = state.decisions.get(&lookup) {
            return hit;
        }
        // A new text may have the shape of one judged before (see `analysis::shape`): values in
        // the text, as clients that do not bind parameters send them.
        let shape = text_shape(ctx, sql);
        let shape_lookup = shape.as_ref().map(|shape| DecisionRef {
            sql: shape.key(),
            ..lookup
        });
        if let Some(hit) = shape_lookup
            .as_ref()
            .and_then(|l| state.shape_decisions.get(l))
        {
            if state.seen_again(sql) {
                state
                    .decisions
                    .insert(lookup.to_owned_key(), Arc::clone(&hit));
            }
            return hit;
        }
        let evaluation = evaluate(&state, ctx, sql, shape.as_ref());
        let judgement = Arc::new(evaluation.judgement);
        match shape_lookup {
            Some(key) if evaluation.shape_shared => {
                state.seen_again(sql);
                state
                    .shape_decisions
                    .insert(key.to_owned_key(), Arc::clone(&judgement));
            }
            _ => state
                .decisions
                .insert(lookup.to_owned_key(), Arc::clone(&judgement)),
        }
        judgement
    }
}

/// The shape of `sql` as the engine reads it in `ctx`: none where the text is not analysed at
/// all (PostgreSQL with `standard_conforming_strings` off).
fn text_shape(ctx: &StatementContext<'_>, sql: &str) -> Option<Shape> {
    let dialect = dialect(ctx.target.protocol)?;
    if dialect == Dialect::Postgres && !ctx.settings.standard_conforming_strings {
        return None;
    }
    shape(sql, &lexing(ctx, dialect))
}

/// How the statements of a session are read: its dialect, default schema and, for MySQL, the
/// sql_mode switches that change where strings and identifiers end.
fn reading_context(ctx: &StatementContext<'_>, dialect: Dialect) -> ReadingContext {
    ReadingContext {
        default_schema: ctx.settings.default_schema.as_deref().map(str::to_owned),
        ..lexing(ctx, dialect)
    }
}

/// [`reading_context`] without the default schema, which a shape does not depend on (no copy of
/// it for every text judged by shape).
fn lexing(ctx: &StatementContext<'_>, dialect: Dialect) -> ReadingContext {
    ReadingContext {
        dialect,
        default_schema: None,
        ansi_quotes: dialect == Dialect::Mysql && ctx.settings.ansi_quotes,
        no_backslash_escapes: dialect == Dialect::Mysql && ctx.settings.no_backslash_escapes,
    }
}

fn refused_message(identity: &Identity, target: &Target) -> String {
    format!(
        "\"{}\" may not use target \"{}\": no access rule admits this identity",
        identity.subject, target.name
    )
}

// ---------------------------------------------------------------------------------------------
// Explanations
// ---------------------------------------------------------------------------------------------

/// What [`RuleEngine::explain`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    /// The access decision for the identity and target.
    pub access: AccessExplanation,
    /// Why the text could not be parsed, if it could not.
    pub failure: Option<ParseFailure>,
    /// Each statement with its facts and verdict (empty when the text was not analysed).
    pub statements: Vec<StatementExplanation>,
    /// The verdict for the whole text: the strictest statement's.
    pub verdict: Verdict,
    /// The classification recorded in the audit trail.
    pub classification: Option<Arc<str>>,
}

/// The access part of an [`Explanation`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccessExplanation {
    /// The access granted; `None` when the session would be refused.
    pub mode: Option<Access>,
    /// The access rule that decided.
    pub rule: Option<Arc<str>>,
    /// Why the session would be refused.
    pub reason: Option<String>,
}

/// One statement of an [`Explanation`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatementExplanation {
    /// e.g. `write:delete`.
    pub classification: Arc<str>,
    /// What the analysis found.
    pub facts: StatementFacts,
    /// This statement's verdict.
    pub verdict: Verdict,
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

struct Evaluation {
    judgement: Judgement,
    analysis: Option<Arc<Analysis>>,
    statements: Vec<StatementVerdict>,
    /// The judgement holds for every text of the shape it was evaluated with: the analysis is
    /// shared by shape and no rule read the text itself.
    shape_shared: bool,
}

struct StatementVerdict {
    verdict: Verdict,
    classification: Arc<str>,
}

fn builtin_rule(b: Builtin) -> Arc<str> {
    Arc::from(b.name())
}

fn deny_all(b: Builtin, reason: String, analysis: Option<Arc<Analysis>>) -> Evaluation {
    Evaluation {
        judgement: Judgement {
            verdict: Verdict::deny(builtin_rule(b), reason),
            classification: None,
            objects: analysis.as_deref().map(objects_of),
            fingerprint: analysis.as_deref().and_then(fingerprint_of),
            lineage: analysis.as_deref().and_then(|a| a.lineage.clone()),
        },
        analysis,
        statements: Vec::new(),
        shape_shared: false,
    }
}

/// Everything the statements of `analysis` touch, each name once, in first-seen order.
fn objects_of(analysis: &Analysis) -> Arc<StatementObjects> {
    fn push(list: &mut Vec<String>, name: String) {
        if !list.contains(&name) {
            list.push(name);
        }
    }
    let mut objects = StatementObjects::default();
    for st in &analysis.statements {
        st.reads
            .iter()
            .for_each(|o| push(&mut objects.reads, o.to_string()));
        st.writes
            .iter()
            .for_each(|o| push(&mut objects.writes, o.to_string()));
        st.functions
            .iter()
            .for_each(|f| push(&mut objects.functions, f.clone()));
    }
    Arc::new(objects)
}

fn fingerprint_of(analysis: &Analysis) -> Option<Arc<str>> {
    analysis.fingerprint.as_deref().map(Arc::from)
}

/// The SQL reader of a protocol; `None` for a protocol the engine has no reader for, whose
/// statements are all denied (it cannot judge what it cannot read).
fn dialect(protocol: Protocol) -> Option<Dialect> {
    match protocol {
        Protocol::Postgres => Some(Dialect::Postgres),
        Protocol::Mysql => Some(Dialect::Mysql),
        _ => None,
    }
}

fn evaluate(
    state: &Compiled,
    ctx: &StatementContext<'_>,
    sql: &str,
    shape: Option<&Shape>,
) -> Evaluation {
    let Some(dialect) = dialect(ctx.target.protocol) else {
        return deny_all(
            Builtin::Unparsable,
            format!(
                "the policy engine has no SQL reader for protocol {}, so it cannot judge this statement",
                ctx.target.protocol.as_str()
            ),
            None,
        );
    };
    if dialect == Dialect::Postgres && !ctx.settings.standard_conforming_strings {
        return deny_all(
            Builtin::ReadingSettings,
            "standard_conforming_strings is off in this session, so the server reads backslashes in string literals differently from the gateway; the gateway refuses statements it cannot read as the server does (reconnect, and have standard_conforming_strings on for this target)".to_owned(),
            None,
        );
    }
    let reading = reading_context(ctx, dialect);
    let (analysis, analysis_shared) = RuleEngine::analysis(state, sql, &reading, shape);
    let rules = &state.rules;

    let Some(access_rule) = rules.access_rule(ctx.identity, ctx.target) else {
        return deny_all(
            Builtin::NoAccess,
            format!("{}, so no statement may run (if the session is open, the policy changed since it opened)", refused_message(ctx.identity, ctx.target)),
            Some(analysis),
        );
    };
    // A session keeps the upstream fence it opened with; a stricter policy applies at once, a
    // more generous one from the next session.
    let access = if ctx.access == Access::ReadOnly || access_rule.mode == Access::ReadOnly {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };

    if let Some(failure) = &analysis.failure {
        let position = failure
            .position
            .map(|p| format!(" at position {p}"))
            .unwrap_or_default();
        let reason = format!(
            "the gateway could not parse this statement: {}{position}",
            failure.message
        );
        return match rules.unparsable {
            // PostgreSQL's own grammar rejects it: the server would answer with this syntax
            // error, and clients (drivers, ORMs, psql) know how to handle that answer.
            Unparsable::Deny if failure.kind == FailureKind::Syntax => {
                let error = SyntaxError {
                    message: failure.message.clone(),
                    position: failure.position.and_then(|p| char_position(sql, p)),
                };
                let mut evaluation = deny_all(Builtin::SyntaxError, String::new(), Some(analysis));
                evaluation.judgement.verdict =
                    Verdict::syntax(builtin_rule(Builtin::SyntaxError), error);
                evaluation
            }
            Unparsable::Deny => deny_all(Builtin::Unparsable, reason, Some(analysis)),
            Unparsable::Allow => Evaluation {
                judgement: Judgement {
                    verdict: Verdict {
                        decision: Decision::Allow,
                        rule: Some(builtin_rule(Builtin::Unparsable)),
                        reason: Some(reason),
                        syntax_error: None,
                    },
                    classification: Some(Arc::from("unparsed")),
                    objects: None,
                    fingerprint: None,
                    lineage: None,
                },
                analysis: Some(analysis),
                statements: Vec::new(),
                shape_shared: false,
            },
        };
    }

    let judge = Judge {
        rules,
        identity: ctx.identity,
        target: ctx.target,
        access,
        sql,
        dialect,
        read_text: std::cell::Cell::new(false),
    };
    let last = analysis.statements.len().saturating_sub(1);
    let statements: Vec<StatementVerdict> = analysis
        .statements
        .iter()
        .enumerate()
        .map(|(i, facts)| judge.statement(facts, &access_rule.name, i == last))
        .collect();

    // The strictest statement decides; among equals, the first.
    let n = statements.len();
    let deciding = statements
        .iter()
        .enumerate()
        .max_by_key(|(i, s)| (strictness(s.verdict.decision), std::cmp::Reverse(*i)));
    let verdict = match deciding {
        None => Verdict::allow(Some(Arc::clone(&access_rule.name))),
        Some((i, s)) => {
            let mut v = s.verdict.clone();
            if n > 1 && v.decision != Decision::Allow {
                v.reason = v
                    .reason
                    .map(|r| format!("statement {} of {n} ({}): {r}", i + 1, s.classification));
            }
            v
        }
    };
    let classification = match statements.as_slice() {
        [] => None,
        [one] => Some(Arc::clone(&one.classification)),
        many => Some(Arc::from(
            many.iter()
                .map(|s| &*s.classification)
                .collect::<Vec<_>>()
                .join("; "),
        )),
    };
    Evaluation {
        judgement: Judgement {
            verdict,
            classification,
            objects: Some(objects_of(&analysis)),
            fingerprint: fingerprint_of(&analysis),
            lineage: analysis.lineage.clone(),
        },
        analysis: Some(analysis),
        statements,
        shape_shared: analysis_shared && !judge.read_text.get(),
    }
}

/// The 1-based character position of byte offset `byte` in `sql`, as PostgreSQL counts its
/// error cursor (an offset at the end of the text points just past its last character).
fn char_position(sql: &str, byte: usize) -> Option<u32> {
    let mut end = byte.min(sql.len());
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    u32::try_from(sql.get(..end)?.chars().count() + 1).ok()
}

fn strictness(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::NeedsApproval => 1,
        Decision::Deny => 2,
    }
}

/// `class` or `class:kind`, e.g. `read`, `write:delete`, `ddl:drop`.
pub fn classification(facts: &StatementFacts) -> String {
    match facts.kinds.first() {
        Some(kind)
            if !(facts.class == Class::Read && kind == "select")
                && kind != facts.class.as_str() =>
        {
            format!("{}:{kind}", facts.class)
        }
        _ => facts.class.to_string(),
    }
}

struct Judge<'a> {
    rules: &'a RuleSet,
    identity: &'a Identity,
    target: &'a Target,
    access: Access,
    sql: &'a str,
    dialect: Dialect,
    /// Set when a rule read the text itself rather than its facts: the verdict may then depend
    /// on literal values, and is not shared by shape.
    read_text: std::cell::Cell<bool>,
}

impl Judge<'_> {
    /// Judges one statement of the text; `last` when no statement follows it in the text.
    fn statement(
        &self,
        facts: &StatementFacts,
        access_rule: &Arc<str>,
        last: bool,
    ) -> StatementVerdict {
        let classification: Arc<str> = Arc::from(classification(facts));
        // Allow rules first: they decide what is lifted, and lifting `builtin:dynamic-sql`
        // changes which restricting rules match.
        let mut allow: Option<&StatementRule> = None;
        let mut lifted: Vec<Builtin> = Vec::new();
        for rule in &self.rules.rules {
            if rule.action == Action::Allow && self.matches(rule, facts, false) {
                allow.get_or_insert(rule);
                lifted.extend(rule.overrides.iter().copied());
            }
        }
        // SQL built at run time could do anything: restricting rules match it whatever they
        // name, unless an allow rule lifted that for this statement.
        let anything = has(facts, "dynamic_sql") && !lifted.contains(&Builtin::DynamicSql);
        let mut deny: Option<&StatementRule> = None;
        let mut approval: Option<&StatementRule> = None;
        for rule in &self.rules.rules {
            if rule.action == Action::Allow || !self.matches(rule, facts, anything) {
                continue;
            }
            match rule.action {
                Action::Deny => {
                    deny.get_or_insert(rule);
                }
                _ => {
                    approval.get_or_insert(rule);
                }
            }
        }
        // Said when a restricting rule matched only because the statement could be anything.
        let unseen = |rule: &StatementRule| {
            if anything && !self.matches(rule, facts, false) {
                format!(" ({DYNAMIC_SQL_NOTE}, so this rule applies to it whatever it names)")
            } else {
                String::new()
            }
        };
        let verdict = if let Some(rule) = deny {
            Verdict::deny(
                Arc::clone(&rule.name),
                format!(
                    "{}{}",
                    rule.message
                        .as_deref()
                        .unwrap_or("the gateway's policy does not allow this statement"),
                    unseen(rule)
                ),
            )
        } else if let Some((b, reason)) = self.guardrail(facts, &lifted, anything, last) {
            Verdict::deny(builtin_rule(b), reason)
        } else if let Some(rule) = approval {
            Verdict {
                decision: Decision::NeedsApproval,
                rule: Some(Arc::clone(&rule.name)),
                reason: Some(match &rule.message {
                    Some(m) => format!("approval is required: {m}{}", unseen(rule)),
                    None => format!("this statement requires approval{}", unseen(rule)),
                }),
                syntax_error: None,
            }
        } else if let Some(rule) = allow {
            Verdict::allow(Some(Arc::clone(&rule.name)))
        } else {
            Verdict::allow(Some(Arc::clone(access_rule)))
        };
        StatementVerdict {
            verdict,
            classification,
        }
    }

    /// Whether `rule` applies to the statement. With `anything` (SQL built at run time, not
    /// lifted), a restricting rule's statement conditions hold whatever they name: only who and
    /// where are checked.
    fn matches(&self, rule: &StatementRule, facts: &StatementFacts, anything: bool) -> bool {
        // Restricting rules match generously (unqualified names, any case); allow rules strictly.
        let lenient = rule.action != Action::Allow;
        if anything && lenient {
            return rule.principals.admits(self.identity) && rule.targets.selects(self.target);
        }
        let any_object = |globs: &[crate::glob::ObjectGlob], objects: &[&[ObjectName]]| {
            objects.iter().flat_map(|list| list.iter()).any(|o| {
                globs
                    .iter()
                    .any(|g| g.matches(o.schema.as_deref(), &o.name, lenient))
            })
        };
        rule.principals.admits(self.identity)
            && rule.targets.selects(self.target)
            && (rule.kinds.is_empty()
                || rule.kinds.iter().any(|k| match k {
                    KindSelector::Class(c) => facts.class == *c,
                    KindSelector::Kind(kind) => facts.kinds.iter().any(|k| k == kind),
                }))
            && (rule.objects.is_empty()
                || any_object(&rule.objects, &[&facts.reads, &facts.writes]))
            && (rule.reads.is_empty() || any_object(&rule.reads, &[&facts.reads]))
            && (rule.writes.is_empty() || any_object(&rule.writes, &[&facts.writes]))
            && (rule.functions.is_empty()
                || facts.functions.iter().any(|f| {
                    rule.functions
                        .iter()
                        .any(|g| g.matches_function(f, lenient))
                }))
            && (!rule.filter_missing
                || matches!(facts.filter, Some(Filter::Absent | Filter::Trivial)))
    }

    /// The first built-in rule (not lifted) that stands against the statement, with its reason.
    /// With `anything` (SQL built at run time, not lifted) each guardrail that is on stands
    /// against it: the hidden SQL could change the role, call any function or touch files.
    fn guardrail(
        &self,
        facts: &StatementFacts,
        lifted: &[Builtin],
        anything: bool,
        last: bool,
    ) -> Option<(Builtin, String)> {
        let on = |b: Builtin| !lifted.contains(&b);
        if on(Builtin::ReadOnly) && self.access == Access::ReadOnly {
            let mentions_write = || {
                self.read_text.set(true);
                mentions_write(self.sql)
            };
            if let Some(reason) = read_only_violation(facts, mentions_write) {
                return Some((
                    Builtin::ReadOnly,
                    format!(
                        "your access to target \"{}\" is read-only: {reason}",
                        self.target.name
                    ),
                ));
            }
        }
        if anything {
            let hit = [
                (
                    Builtin::SessionFence,
                    true,
                    "change the role or the settings the gateway relies on",
                ),
                (
                    Builtin::DangerousFunction,
                    self.rules.deny_dangerous_functions,
                    "call functions that reach outside the database",
                ),
                (
                    Builtin::ServerFiles,
                    true,
                    "read or write the server's files",
                ),
            ]
            .into_iter()
            .find(|(b, enabled, _)| *enabled && on(*b));
            if let Some((b, _, could)) = hit {
                return Some((
                    b,
                    format!("{DYNAMIC_SQL_NOTE}: it could {could}; an allow rule with `overrides = [\"builtin:dynamic-sql\"]` lets chosen identities run it"),
                ));
            }
        }
        if on(Builtin::SessionFence) {
            if let Some(reason) = session_fence_violation(
                facts,
                self.dialect,
                self.rules.protect_application_name,
                last,
            ) {
                return Some((Builtin::SessionFence, reason));
            }
        }
        if on(Builtin::DangerousFunction) && self.rules.deny_dangerous_functions {
            let hit = facts.functions.iter().find(|f| {
                self.rules
                    .dangerous_functions
                    .iter()
                    .any(|g| g.matches_function(f, true))
            });
            if let Some(f) = hit {
                return Some((
                    Builtin::DangerousFunction,
                    format!("calling {f}() is not allowed through the gateway: it reaches outside the database or runs SQL the gateway cannot see"),
                ));
            }
        }
        if on(Builtin::ServerFiles) {
            if let Some(reason) = server_files_violation(facts) {
                return Some((Builtin::ServerFiles, reason));
            }
        }
        None
    }
}

/// How the gateway says that a statement runs SQL it cannot read.
const DYNAMIC_SQL_NOTE: &str = "this statement runs SQL built at run time (EXECUTE of a string, a body in a language the gateway cannot read, or a function that runs a query string), which the gateway cannot see";

fn has(facts: &StatementFacts, kind: &str) -> bool {
    facts.kinds.iter().any(|k| k == kind)
}

/// Utility sub-kinds a read-only session may run: they read, plan, or move a cursor.
const READ_ONLY_UTILITIES: &[&str] = &[
    "explain",
    "show",
    "describe",
    "declare_cursor",
    "fetch",
    "move",
    "close",
    "deallocate",
    "listen",
    "unlisten",
    "discard",
    "use",
    "set_constraints",
];

/// Settings that would turn a read-only upstream session back into a read-write one.
const READ_ONLY_FENCE_SETTINGS: &[&str] = &[
    "set_default_transaction_read_only",
    "set_transaction_read_only",
    "set_tx_read_only",
];

/// Statements that start or shape a transaction and may say READ WRITE.
const TRANSACTION_MODE_KINDS: &[&str] = &[
    "begin",
    "start",
    "start_transaction",
    "set_transaction",
    "set_session_characteristics",
];

/// Why a read-only session may not run the statement, if it may not.
fn read_only_violation(
    facts: &StatementFacts,
    mentions_write: impl FnOnce() -> bool,
) -> Option<String> {
    if let Some(k) = facts
        .kinds
        .iter()
        .find(|k| READ_ONLY_FENCE_SETTINGS.contains(&k.as_str()))
    {
        return Some(format!(
            "changing {} would lift the read-only transaction the upstream session runs in",
            k.trim_start_matches("set_")
        ));
    }
    if facts
        .kinds
        .iter()
        .any(|k| TRANSACTION_MODE_KINDS.contains(&k.as_str()))
        && mentions_write()
    {
        return Some("a READ WRITE transaction would lift the read-only transaction the upstream session runs in".to_owned());
    }
    let allowed = match facts.class {
        Class::Read => !has(facts, "select_for_update") && !has(facts, "select_for_share"),
        Class::Transaction | Class::Session => true,
        Class::Utility => facts
            .kinds
            .first()
            .is_some_and(|k| READ_ONLY_UTILITIES.contains(&k.as_str()) || k.starts_with("show_")),
        Class::Write | Class::Ddl | Class::Dcl | Class::Procedural => false,
    };
    (!allowed).then(|| format!("this statement is {}", classification(facts)))
}

/// Whether the word WRITE appears anywhere in the text, in any case. A READ WRITE transaction
/// mode needs the keyword spelled out (keywords cannot be quoted, escaped or split by comments),
/// so its absence proves the statement does not ask for one. Deliberately generous: it is only
/// asked about transaction statements of read-only sessions, where a false match (a comment or a
/// table name with "write" in another statement of the same text) denies a harmless statement,
/// and a miss would open the upstream fence.
fn mentions_write(sql: &str) -> bool {
    sql.as_bytes()
        .windows(5)
        .any(|w| w.eq_ignore_ascii_case(b"write"))
}

/// Sub-kinds that step around the gateway's fences, for every identity, with the reason.
const SESSION_FENCE_KINDS: &[(&str, &str)] = &[
    ("set_role", "changing the role would act as someone other than the identity the gateway checked"),
    ("reset_role", "changing the role would act as someone other than the identity the gateway checked"),
    (
        "set_session_authorization",
        "changing the session authorization would act as someone other than the identity the gateway checked",
    ),
    (
        "reset_session_authorization",
        "changing the session authorization would act as someone other than the identity the gateway checked",
    ),
];

/// PostgreSQL settings that change how the server reads statement text.
const POSTGRES_READING_SETTINGS: &[&str] =
    &["set_standard_conforming_strings", "set_client_encoding"];
/// MySQL settings that change how the server reads statement text: the SQL mode (ANSI_QUOTES,
/// NO_BACKSLASH_ESCAPES) and the client's character set (in some, a multibyte character hides a
/// backslash). The MySQL module reads them back from the server after every statement that may
/// change them and judges the next text under them, so they may change as the last statement of a
/// text; a statement after them in the same text would be read by the server under settings the
/// judgement did not use.
const MYSQL_READING_SETTINGS: &[&str] = &[
    "set_sql_mode",
    "set_names",
    "set_character_set_client",
    "set_charset",
    "set_character_set",
];

/// `last`: no statement follows this one in the text.
fn session_fence_violation(
    facts: &StatementFacts,
    dialect: Dialect,
    protect_application_name: bool,
    last: bool,
) -> Option<String> {
    for (kind, reason) in SESSION_FENCE_KINDS {
        if has(facts, kind) {
            return Some(format!("{reason}; this is not allowed through the gateway"));
        }
    }
    if protect_application_name && has(facts, "set_application_name") {
        return Some(
            "application_name carries the identity the gateway checked and may not be changed; this is not allowed through the gateway"
                .to_owned(),
        );
    }
    let reading = match dialect {
        Dialect::Postgres => POSTGRES_READING_SETTINGS,
        Dialect::Mysql => MYSQL_READING_SETTINGS,
    };
    if let Some(k) = facts.kinds.iter().find(|k| reading.contains(&k.as_str())) {
        let setting = k.trim_start_matches("set_");
        match dialect {
            Dialect::Postgres => {
                return Some(format!(
                    "changing {setting} would make the server read statements differently from the gateway; this is not allowed through the gateway"
                ))
            }
            Dialect::Mysql if !last => {
                return Some(format!(
                    "changing {setting} would make the server read the rest of this text differently from the gateway; send the change as a statement of its own"
                ))
            }
            Dialect::Mysql => {}
        }
    }
    if facts
        .functions
        .iter()
        .any(|f| f == "set_config" || f.ends_with(".set_config"))
    {
        return Some(
            "set_config() can change the role, application_name and the settings that keep sessions read-only; it is not allowed through the gateway".to_owned(),
        );
    }
    None
}

fn server_files_violation(facts: &StatementFacts) -> Option<String> {
    let what = if has(facts, "copy_program") {
        "COPY ... PROGRAM runs a program on the database server"
    } else if has(facts, "copy_to_file") || has(facts, "copy_from_file") {
        "COPY to or from a file on the database server reaches the server's file system"
    } else if has(facts, "load") {
        "LOAD loads a library into the database server"
    } else if has(facts, "into_outfile") || has(facts, "into_dumpfile") {
        "SELECT ... INTO OUTFILE writes a file on the database server"
    } else if has(facts, "load_data") && !has(facts, "load_data_local") {
        "LOAD DATA INFILE reads a file on the database server"
    } else {
        return None;
    };
    Some(format!("{what}; this is not allowed through the gateway"))
}

// ---------------------------------------------------------------------------------------------
// Cache keys: owned keys are stored, borrowed ones look up without allocating.
// ---------------------------------------------------------------------------------------------

#[derive(PartialEq, Eq)]
struct AnalysisKey {
    sql: Box<str>,
    reading: ReadingContext,
}

#[derive(PartialEq, Eq)]
struct AnalysisRef<'a> {
    sql: &'a str,
    reading: &'a ReadingContext,
}

impl Hash for AnalysisRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sql.hash(state);
        self.reading.hash(state);
    }
}

impl Hash for AnalysisKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        AnalysisRef {
            sql: &self.sql,
            reading: &self.reading,
        }
        .hash(state);
    }
}

impl Equivalent<AnalysisKey> for AnalysisRef<'_> {
    fn equivalent(&self, key: &AnalysisKey) -> bool {
        *self
            == (AnalysisRef {
                sql: &key.sql,
                reading: &key.reading,
            })
    }
}

#[derive(PartialEq, Eq)]
struct DecisionKey {
    sql: Box<str>,
    settings: SqlSettings,
    subject: Box<str>,
    groups: Box<[String]>,
    target: Box<str>,
    protocol: Protocol,
    access: Access,
}

#[derive(PartialEq, Eq)]
struct DecisionRef<'a> {
    sql: &'a str,
    settings: &'a SqlSettings,
    subject: &'a str,
    groups: &'a [String],
    target: &'a str,
    protocol: Protocol,
    access: Access,
}

impl DecisionRef<'_> {
    fn to_owned_key(&self) -> DecisionKey {
        DecisionKey {
            sql: Box::from(self.sql),
            settings: self.settings.clone(),
            subject: Box::from(self.subject),
            groups: Box::from(self.groups),
            target: Box::from(self.target),
            protocol: self.protocol,
            access: self.access,
        }
    }
}

impl DecisionKey {
    fn as_ref(&self) -> DecisionRef<'_> {
        DecisionRef {
            sql: &self.sql,
            settings: &self.settings,
            subject: &self.subject,
            groups: &self.groups,
            target: &self.target,
            protocol: self.protocol,
            access: self.access,
        }
    }
}

impl Hash for DecisionRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sql.hash(state);
        self.settings.hash(state);
        self.subject.hash(state);
        self.groups.hash(state);
        self.target.hash(state);
        self.protocol.hash(state);
        self.access.hash(state);
    }
}

impl Hash for DecisionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl Equivalent<DecisionKey> for DecisionRef<'_> {
    fn equivalent(&self, key: &DecisionKey) -> bool {
        *self == key.as_ref()
    }
}

/// Weighs cache entries by their statement text, so the caches are bounded in bytes rather than
/// in entries (one huge statement must not count as one small one).
#[derive(Clone)]
struct TextWeighter;

impl Weighter<AnalysisKey, Arc<Analysis>> for TextWeighter {
    fn weight(&self, key: &AnalysisKey, _: &Arc<Analysis>) -> u64 {
        // Facts are at most a small multiple of the text they come from.
        (key.sql.len() as u64)
            .saturating_mul(3)
            .saturating_add(ENTRY_OVERHEAD)
    }
}

impl Weighter<DecisionKey, Arc<Judgement>> for TextWeighter {
    fn weight(&self, key: &DecisionKey, _: &Arc<Judgement>) -> u64 {
        let groups: usize = key.groups.iter().map(String::len).sum();
        (key.sql.len() + key.subject.len() + groups + key.target.len()) as u64 + ENTRY_OVERHEAD
    }
}
#[cfg(test)]
mod tests;
