//! The masking seam as a protocol crate sees it: whether a session is masked is asked once, when
//! it opens; only executions of masked sessions plan masking, with the statement's lineage and
//! the catalog the protocol crate handed over; `check` refusals are audited denials. Pure logic:
//! a fake authenticator, masker and catalog, the built-in policy and audit sink.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway_core::*;

mod common;
use common::Anyone;

/// Masks column "email" of relation 42 for sessions whose subject is "masked"; hands back a
/// lineage of its own from `check`; counts how often it is asked whether a session is masked.
#[derive(Default)]
struct MaskEmail {
    asked: AtomicUsize,
}

#[derive(Debug)]
struct Stars;

impl ValueMask for Stars {
    fn mask<'a>(&self, _: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        Some(Cow::Borrowed(b"***"))
    }
}

#[async_trait]
impl Masker for MaskEmail {
    fn is_active(&self, session: &SessionContext) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed);
        session.identity.subject == "masked"
    }

    async fn check(&self, request: CheckRequest<'_>) -> Result<Option<Arc<Lineage>>, GatewayError> {
        // The built-in policy does not analyse, so there is no lineage to read: the masker reads
        // the text itself and hands its lineage back for the plans.
        assert!(request.lineage.is_none());
        assert_eq!(request.sql, "select id, email from users");
        Ok(Some(Arc::new(Lineage {
            statements: vec![StatementLineage::default()],
        })))
    }

    async fn plan(&self, request: PlanRequest<'_>) -> MaskPlan {
        assert!(
            request.lineage.is_some(),
            "the lineage check handed back reaches the plan"
        );
        let mut columns = Vec::new();
        for c in request.columns {
            let masked = match &c.origin {
                ColumnOrigin::Relation { table_oid, attnum } => {
                    match request.catalog.relation_by_oid(*table_oid).await {
                        Ok(Some(rel)) => rel.column(*attnum).is_some_and(|n| &**n == "email"),
                        // Unresolvable: masked.
                        _ => true,
                    }
                }
                _ => false,
            };
            columns.push(if masked {
                ColumnPlan::Mask {
                    mask: Arc::new(Stars),
                    reason: "email: redact".into(),
                }
            } else {
                ColumnPlan::Pass
            });
        }
        MaskPlan::new(columns)
    }

    fn scrub<'a>(&self, _: &SessionContext, text: &'a str) -> Cow<'a, str> {
        Cow::Owned(text.replace("alice@example.com", "***"))
    }
}

struct Users;

#[async_trait]
impl Catalog for Users {
    async fn relation_by_oid(
        &self,
        oid: u32,
    ) -> Result<Option<Arc<CatalogRelation>>, GatewayError> {
        Ok((oid == 42).then(|| {
            Arc::new(CatalogRelation {
                oid,
                schema: "public".into(),
                name: "users".into(),
                kind: RelationKind::Table,
                columns: vec![Some("id".into()), None, Some("email".into())],
                definition: None,
            })
        }))
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

fn column(name: &str, table_oid: u32, attnum: i16) -> ResultColumn {
    ResultColumn {
        name: name.into(),
        origin: ColumnOrigin::Relation { table_oid, attnum },
        value_type: ValueType::Text,
        type_id: 25,
        format: ValueFormat::Text,
    }
}

#[tokio::test]
async fn only_executions_of_masked_sessions_plan_masking() {
    let masker = Arc::new(MaskEmail::default());
    let gw = Gateway::builder()
        .authenticator(Arc::new(Anyone))
        .masker(Arc::clone(&masker) as Arc<dyn Masker>)
        .targets(Targets::new([common::target()]))
        .build();
    let settings = SqlSettings::default();
    // id (attnum 1), email (attnum 3; attnum 2 is dropped), and a column of an unknown relation.
    let columns = [
        column("id", 42, 1),
        column("email", 42, 3),
        column("x", 7, 1),
    ];

    for (user, masked) in [("masked", true), ("plain", false)] {
        let session = gw.open_session(common::request(user)).await.unwrap();
        session.set_catalog(Arc::new(Users));
        assert_eq!(session.masking_active(), masked, "{user}");
        let stmt = session
            .prepare("select id, email from users", &settings)
            .await
            .unwrap();
        for _ in 0..3 {
            let exec = session.execute(&stmt).await.unwrap();
            assert_eq!(exec.mask_planner().is_some(), masked, "{user}");
            let plan = match exec.mask_planner() {
                Some(planner) => planner.plan(0, &columns).await,
                None => MaskPlan::default(),
            };
            assert_eq!(plan.is_empty(), !masked, "{user}");
            if masked {
                assert!(matches!(plan.column(0), ColumnPlan::Pass));
                for i in [1, 2] {
                    let ColumnPlan::Mask { mask, .. } = plan.column(i) else {
                        panic!("column {i} is not masked");
                    };
                    assert_eq!(
                        mask.mask(b"alice@example.com").as_deref(),
                        Some(&b"***"[..])
                    );
                }
                assert!(matches!(plan.column(9), ColumnPlan::Pass), "past the end");
            }
            session.finish(exec, Outcome::default()).await.unwrap();
        }
        let scrubbed = session.scrub("bad value \"alice@example.com\"");
        assert_eq!(scrubbed.contains("alice"), !masked, "{user}: {scrubbed}");
    }
    // Asked once per session, not per execution or per result.
    assert_eq!(masker.asked.load(Ordering::Relaxed), 2);
}
