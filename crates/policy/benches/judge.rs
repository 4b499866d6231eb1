//! Analysis plus decision for typical statements, cached (a repeated or prepared statement: one
//! hash lookup), uncached (a statement never seen: parse, facts, rules, cache insertion) and of a
//! known shape (new values in a known text: the shape, rules, cache insertion), and cold (a
//! text with values in it seen for the first time: no cache of any kind answers).
//!
//! `cargo bench -p policy --bench judge -- --warm-up-time 1 --measurement-time 3`; the figures
//! are recorded in `docs/policy.md`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use gateway_core::{
    Access, AuthMethod, Identity, PolicyEngine, Protocol, SqlSettings, StatementContext, Target,
    UpstreamTls,
};
use policy::analysis::{analyze, lineage, Dialect, ReadingContext};
use policy::{RuleEngine, RuleSet};

const RULES: &str = r#"
[policy]
[[policy.access]]
name = "engineers"
groups = ["engineering"]
mode = "read-write"

[[policy.rules]]
name = "no-drop-in-prod"
action = "deny"
kinds = ["drop", "truncate"]
labels = { env = "prod" }

[[policy.rules]]
name = "no-unfiltered-delete"
action = "deny"
kinds = ["delete", "update"]
filter = "missing"

[[policy.rules]]
name = "protect-secrets"
action = "deny"
objects = ["vault.*"]

[[policy.rules]]
name = "approve-payments"
action = "require-approval"
writes = ["billing.payments"]
"#;

/// pgbench's select-only transaction as `-M simple` sends it: the value is in the text.
const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";

const POINT_SELECT: &str = "SELECT id, email, created_at FROM public.users WHERE id = $1";

const FIVE_WAY_JOIN: &str = "SELECT o.id, c.name, p.title, s.status, w.city \
     FROM orders o \
     JOIN customers c ON c.id = o.customer_id \
     JOIN order_items i ON i.order_id = o.id \
     JOIN products p ON p.id = i.product_id \
     JOIN shipments s ON s.order_id = o.id \
     LEFT JOIN warehouses w ON w.id = s.warehouse_id \
     WHERE o.created_at > now() - interval '7 days' AND c.country = $1 \
     ORDER BY o.created_at DESC LIMIT 100";

const INSERT_RETURNING: &str = "INSERT INTO orders (customer_id, total, currency, note) \
     VALUES ($1, $2, 'EUR', $3) RETURNING id, created_at";

/// About 2 KB: CTEs, window functions, CASE, aggregates, a subquery.
const ANALYTIC: &str = r#"
WITH monthly AS (
    SELECT date_trunc('month', o.created_at) AS month,
           c.region,
           c.segment,
           sum(i.quantity * i.unit_price) AS revenue,
           count(DISTINCT o.id) AS orders,
           count(DISTINCT o.customer_id) AS customers
    FROM orders o
    JOIN order_items i ON i.order_id = o.id
    JOIN customers c ON c.id = o.customer_id
    WHERE o.status NOT IN ('cancelled', 'refunded')
      AND o.created_at >= date_trunc('year', now()) - interval '2 years'
    GROUP BY 1, 2, 3
),
ranked AS (
    SELECT m.*,
           rank() OVER (PARTITION BY m.month ORDER BY m.revenue DESC) AS region_rank,
           lag(m.revenue) OVER (PARTITION BY m.region, m.segment ORDER BY m.month) AS previous_revenue,
           sum(m.revenue) OVER (PARTITION BY m.region ORDER BY m.month
                                ROWS BETWEEN 11 PRECEDING AND CURRENT ROW) AS trailing_year
    FROM monthly m
),
targets AS (
    SELECT t.region, t.segment, t.month, t.target_revenue
    FROM sales_targets t
    WHERE t.month >= date_trunc('year', now()) - interval '2 years'
)
SELECT r.month,
       r.region,
       r.segment,
       r.revenue,
       r.orders,
       r.customers,
       r.region_rank,
       CASE
           WHEN r.previous_revenue IS NULL THEN 'new'
           WHEN r.revenue > r.previous_revenue * 1.10 THEN 'growing'
           WHEN r.revenue < r.previous_revenue * 0.90 THEN 'shrinking'
           ELSE 'flat'
       END AS trend,
       round(100.0 * r.revenue / nullif(t.target_revenue, 0), 1) AS pct_of_target,
       r.trailing_year,
       (SELECT count(*) FROM support_tickets st
         WHERE st.region = r.region AND date_trunc('month', st.opened_at) = r.month) AS tickets,
       coalesce(percent_rank() OVER (ORDER BY r.revenue), 0) AS revenue_percentile
FROM ranked r
LEFT JOIN targets t ON t.region = r.region AND t.segment = r.segment AND t.month = r.month
WHERE r.region_rank <= 10
ORDER BY r.month DESC, r.region_rank, r.segment
"#;

fn bench(c: &mut Criterion) {
    let engine = RuleEngine::new(RuleSet::from_toml(RULES).expect("rules"));
    let identity = Identity {
        subject: "dan".into(),
        groups: vec!["engineering".into()],
        auth_method: AuthMethod::Jwt,
        claims: BTreeMap::new(),
    };
    let target = Target {
        name: "app-prod".into(),
        protocol: Protocol::Postgres,
        host: "127.0.0.1".into(),
        port: 5432,
        database: "app".into(),
        user: "svc".into(),
        password: None,
        tls: UpstreamTls::Disable,
        labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
    };
    let settings = SqlSettings::default();
    let ctx = StatementContext {
        identity: &identity,
        target: &target,
        access: Access::ReadWrite,
        settings: &settings,
    };
    let reading = ReadingContext::new(Dialect::Postgres);
    let counter = AtomicU64::new(0);

    // The first sight of a text with its values in it (pgbench -M simple): a unique leading
    // comment makes every text, and so every shape, new, so this misses the text, shape and
    // decision caches alike: shape scan, parse, facts, fingerprint, rules, cache insertions.
    let mut group = c.benchmark_group("pgbench_point_select");
    group.bench_function("analyze_only", |b| {
        b.iter(|| analyze(black_box(PGBENCH_SELECT), &reading))
    });
    group.bench_function("judge_cold", |b| {
        b.iter_batched(
            || {
                format!(
                    "/* {} */ {PGBENCH_SELECT}",
                    counter.fetch_add(1, Ordering::Relaxed)
                )
            },
            |text| engine.judge(&ctx, black_box(&text)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();

    // MySQL texts with their values in them, as sysbench's text mode (and PyMySQL, mysql2's
    // query(), PDO's emulated prepares) send them.
    let mysql_target = Target {
        name: "shop".into(),
        protocol: Protocol::Mysql,
        port: 3306,
        ..target.clone()
    };
    let mysql_settings = SqlSettings {
        default_schema: Some("sbtest".into()),
        ..SqlSettings::default()
    };
    let mysql_ctx = StatementContext {
        target: &mysql_target,
        settings: &mysql_settings,
        ..ctx
    };
    let mysql_reading = ReadingContext {
        default_schema: Some("sbtest".into()),
        ..ReadingContext::new(Dialect::Mysql)
    };
    for (name, sql) in [
        ("mysql_point_select", "SELECT c FROM sbtest1 WHERE id=$1"),
        (
            "mysql_update_index",
            "UPDATE sbtest3 SET k=k+1 WHERE id=$1 AND c <> 'x$1'",
        ),
    ] {
        let mut group = c.benchmark_group(name);
        let with_value = |n: u64| sql.replace("$1", &n.to_string());
        group.bench_function("analyze_only", |b| {
            b.iter(|| analyze(black_box(&with_value(5000)), &mysql_reading))
        });
        // A text of a shape never seen (a new table name each time): no cache answers.
        group.bench_function("judge_cold", |b| {
            b.iter_batched(
                || {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    with_value(n).replacen("sbtest", &format!("sbtest{n}_"), 1)
                },
                |text| engine.judge(&mysql_ctx, black_box(&text)),
                criterion::BatchSize::SmallInput,
            )
        });
        engine.judge(&mysql_ctx, &with_value(0));
        group.bench_function("judge_same_shape", |b| {
            b.iter_batched(
                || with_value(counter.fetch_add(1, Ordering::Relaxed)),
                |text| engine.judge(&mysql_ctx, black_box(&text)),
                criterion::BatchSize::SmallInput,
            )
        });
        group.finish();
    }

    for (name, sql) in [
        ("point_select", POINT_SELECT),
        ("five_way_join", FIVE_WAY_JOIN),
        ("insert_returning", INSERT_RETURNING),
        ("analytic_2kb", ANALYTIC),
    ] {
        let mut group = c.benchmark_group(name);
        group.bench_function("analyze_only", |b| {
            b.iter(|| analyze(black_box(sql), &reading))
        });
        // Parse and lineage alone (what the masker pays to read a view's definition; the
        // analysis above includes the lineage).
        group.bench_function("lineage_only", |b| {
            b.iter(|| lineage(black_box(sql), &reading))
        });
        // A text never seen before: a unique trailing comment defeats both caches, so this is
        // parse + facts + rules + two cache insertions.
        group.bench_function("judge_uncached", |b| {
            b.iter_batched(
                || format!("{sql} -- {}", counter.fetch_add(1, Ordering::Relaxed)),
                |text| engine.judge(&ctx, black_box(&text)),
                criterion::BatchSize::SmallInput,
            )
        });
        // A new text of a known shape: the values differ (a client that puts them into the
        // text, like pgbench -M simple), so the decision cache misses and the analysis comes from
        // the shape cache: shape + rules + one cache insertion.
        let with_values = |n: u64| {
            sql.replace("$1", &n.to_string())
                .replace("$2", "'EUR'")
                .replace("$3", "'note'")
                .replace("<= 10", &format!("<= {n}"))
        };
        engine.judge(&ctx, &with_values(0));
        group.bench_function("judge_same_shape", |b| {
            b.iter_batched(
                || with_values(counter.fetch_add(1, Ordering::Relaxed)),
                |text| engine.judge(&ctx, black_box(&text)),
                criterion::BatchSize::SmallInput,
            )
        });
        engine.judge(&ctx, sql);
        group.bench_function("judge_cached", |b| {
            b.iter(|| engine.judge(&ctx, black_box(sql)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
