//! Runs the table-driven analysis corpus in `tests/corpus.toml`: one row per case, each with the
//! reason it is there. All failing rows are reported together.

use std::collections::BTreeSet;

use policy::analysis::{analyze, Dialect, ReadingContext};
use policy::facts::{FailureKind, Filter, StatementFacts};

#[derive(serde::Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    dialect: String,
    sql: String,
    why: String,
    #[serde(default)]
    statement: usize,
    count: Option<usize>,
    #[serde(default)]
    fails: bool,
    /// With `fails`: "syntax" (PostgreSQL's grammar rejects it) or "unreadable".
    failure: Option<String>,
    class: Option<String>,
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    not_kinds: Vec<String>,
    reads: Option<Vec<String>>,
    writes: Option<Vec<String>>,
    functions: Option<Vec<String>>,
    filter: Option<String>,
    schema: Option<String>,
    #[serde(default)]
    ansi_quotes: bool,
    #[serde(default)]
    no_backslash_escapes: bool,
}

fn filter_name(f: Option<Filter>) -> &'static str {
    match f {
        None => "none",
        Some(Filter::Absent) => "absent",
        Some(Filter::Trivial) => "trivial",
        Some(Filter::Present) => "present",
    }
}

fn check_set(
    what: &str,
    expected: &Option<Vec<String>>,
    actual: Vec<String>,
    problems: &mut Vec<String>,
) {
    if let Some(expected) = expected {
        let e: BTreeSet<&String> = expected.iter().collect();
        let a: BTreeSet<&String> = actual.iter().collect();
        if e != a {
            problems.push(format!("{what}: expected {e:?}, got {a:?}"));
        }
    }
}

fn check(case: &Case) -> Vec<String> {
    let mut problems = Vec::new();
    let dialect = match case.dialect.as_str() {
        "pg" => Dialect::Postgres,
        "mysql" => Dialect::Mysql,
        other => return vec![format!("unknown dialect {other}")],
    };
    let ctx = ReadingContext {
        dialect,
        default_schema: case.schema.clone(),
        ansi_quotes: case.ansi_quotes,
        no_backslash_escapes: case.no_backslash_escapes,
    };
    let analysis = analyze(&case.sql, &ctx);
    if case.fails {
        if let (Some(expected), Some(f)) = (&case.failure, &analysis.failure) {
            let kind = match f.kind {
                FailureKind::Syntax => "syntax",
                FailureKind::Unreadable => "unreadable",
            };
            if kind != expected {
                problems.push(format!(
                    "failure: expected {expected}, got {kind} ({})",
                    f.message
                ));
            }
        }
        if analysis.failure.is_none() {
            problems.push(format!(
                "expected a parse failure, got {:?}",
                analysis.statements
            ));
        }
        if !analysis.statements.is_empty() {
            problems.push("a failure must come with no statements".to_owned());
        }
        return problems;
    }
    if let Some(f) = &analysis.failure {
        problems.push(format!(
            "unexpected failure: {} at {:?}",
            f.message, f.position
        ));
        return problems;
    }
    if let Some(count) = case.count {
        if analysis.statements.len() != count {
            problems.push(format!(
                "expected {count} statements, got {}",
                analysis.statements.len()
            ));
        }
    }
    let Some(facts): Option<&StatementFacts> = analysis.statements.get(case.statement) else {
        if case.class.is_some() {
            problems.push(format!("no statement {}", case.statement));
        }
        return problems;
    };
    if let Some(class) = &case.class {
        if facts.class.as_str() != class {
            problems.push(format!("class: expected {class}, got {}", facts.class));
        }
    }
    for k in &case.kinds {
        if !facts.kinds.contains(k) {
            problems.push(format!("kind {k} missing from {:?}", facts.kinds));
        }
    }
    for k in &case.not_kinds {
        if facts.kinds.contains(k) {
            problems.push(format!("kind {k} must not be in {:?}", facts.kinds));
        }
    }
    check_set(
        "reads",
        &case.reads,
        facts.reads.iter().map(|o| o.to_string()).collect(),
        &mut problems,
    );
    check_set(
        "writes",
        &case.writes,
        facts.writes.iter().map(|o| o.to_string()).collect(),
        &mut problems,
    );
    check_set(
        "functions",
        &case.functions,
        facts.functions.clone(),
        &mut problems,
    );
    if let Some(filter) = &case.filter {
        if filter_name(facts.filter) != filter {
            problems.push(format!(
                "filter: expected {filter}, got {}",
                filter_name(facts.filter)
            ));
        }
    }
    problems
}

#[test]
fn corpus() {
    let text = include_str!("corpus.toml");
    let corpus: Corpus = toml::from_str(text).expect("corpus.toml is valid");
    assert!(
        corpus.case.len() >= 150,
        "the corpus keeps at least 150 cases"
    );
    let mut failures = Vec::new();
    for (i, case) in corpus.case.iter().enumerate() {
        let problems = check(case);
        if !problems.is_empty() {
            failures.push(format!(
                "case {i} [{}] {:?} ({}):\n    {}",
                case.dialect,
                case.sql,
                case.why,
                problems.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        corpus.case.len(),
        failures.join("\n")
    );
}
