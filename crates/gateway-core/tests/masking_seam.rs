//! The masking seam as a protocol crate sees it: whether a session is masked is asked once, when
//! it opens, and only executions of masked sessions carry the masker. Pure logic: a fake
//! authenticator and masker, the built-in policy and audit sink.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway_core::*;

mod common;
use common::Anyone;

/// Masks every value of sessions whose subject is "masked"; counts how often it is asked.
#[derive(Default)]
struct MaskOne {
    asked: AtomicUsize,
}

struct Redact;

impl RowMasker for Redact {
    fn mask_row(&mut self, values: &mut [Option<Vec<u8>>]) -> bool {
        values.iter_mut().for_each(|v| *v = Some(b"***".to_vec()));
        true
    }
}

impl Masker for MaskOne {
    fn is_active(&self, session: &SessionContext) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed);
        session.identity.subject == "masked"
    }

    fn row_masker(
        &self,
        session: &SessionContext,
        _: &[ResultColumn],
    ) -> Option<Box<dyn RowMasker>> {
        (session.identity.subject == "masked").then(|| Box::new(Redact) as Box<dyn RowMasker>)
    }
}

#[tokio::test]
async fn only_executions_of_masked_sessions_carry_the_masker() {
    let masker = Arc::new(MaskOne::default());
    let gw = Gateway::builder()
        .authenticator(Arc::new(Anyone))
        .masker(Arc::clone(&masker) as Arc<dyn Masker>)
        .targets(Targets::new([common::target()]))
        .build();
    let settings = SqlSettings::default();
    let columns = [ResultColumn {
        name: "email".into(),
        table: None,
        column: None,
    }];

    for (user, masked) in [("masked", true), ("plain", false)] {
        let session = gw.open_session(common::request(user)).await.unwrap();
        assert_eq!(session.masking_active(), masked, "{user}");
        let stmt = session
            .prepare("select email from users", &settings)
            .await
            .unwrap();
        for _ in 0..3 {
            let exec = session.execute(&stmt).await.unwrap();
            let mut row_masker = exec.row_masker(&columns);
            assert_eq!(row_masker.is_some(), masked, "{user}");
            if let Some(m) = row_masker.as_mut() {
                let mut row = [Some(b"a@b.c".to_vec())];
                assert!(m.mask_row(&mut row));
                assert_eq!(row[0].as_deref(), Some(&b"***"[..]));
            }
            session.finish(exec, Outcome::default()).await.unwrap();
        }
    }
    // Asked once per session, not per execution or per result.
    assert_eq!(masker.asked.load(Ordering::Relaxed), 2);
}
