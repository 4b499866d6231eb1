//! What the session phases put on the record for one statement: the approval that let a held
//! statement run (its id apart from the rule), the fingerprint and the bound parameters. Pure
//! logic: a fake authenticator, policy and approval service, and a sink that keeps records in
//! memory.

use std::sync::{Arc, Mutex};

use gateway_core::policy::{Decision, StatementContext};
use gateway_core::*;

mod common;
use common::Anyone;

/// Holds every statement for approval under rule `hold-all`, with a fixed fingerprint.
struct HoldAll;

impl PolicyEngine for HoldAll {
    fn access(&self, _: &Identity, _: &Target) -> Result<Access, GatewayError> {
        Ok(Access::ReadWrite)
    }
    fn judge(&self, _: &StatementContext<'_>, _: &str) -> Arc<Judgement> {
        Arc::new(Judgement {
            verdict: Verdict {
                decision: Decision::NeedsApproval,
                rule: Some(Arc::from("hold-all")),
                reason: Some("needs a second pair of eyes".into()),
                syntax_error: None,
            },
            classification: Some(Arc::from("write:delete")),
            objects: None,
            fingerprint: Some(Arc::from("0123456789abcdef")),
            lineage: None,
        })
    }
}

/// Approves statements that mention "approved" as request `req-7`; holds those that mention
/// "wait" as request `req-8` until `release` (or, for "brief", for 50 ms); refuses the rest.
#[derive(Default)]
struct Approver {
    release: tokio::sync::Notify,
    ended: Mutex<Vec<HoldEnd>>,
}

#[async_trait::async_trait]
impl ApprovalService for Approver {
    async fn submit(&self, request: &ApprovalRequest<'_>) -> Submission {
        let sql = request.sql;
        if sql.contains("approved") {
            Submission::Approved { id: "req-7".into() }
        } else if sql.contains("wait") {
            let wait = if sql.contains("brief") { 50 } else { 60_000 };
            Submission::Pending(Hold {
                id: "req-8".into(),
                new: true,
                notice: "held: request req-8".into(),
                wait: Some(std::time::Duration::from_millis(wait)),
                refusal: GatewayError::new(ErrorKind::ApprovalRequired, Side::Gateway, "held"),
            })
        } else {
            Submission::Refused(GatewayError::new(
                ErrorKind::ApprovalRequired,
                Side::Gateway,
                "waiting for approval",
            ))
        }
    }

    async fn wait(&self, id: &str) -> Decided {
        self.release.notified().await;
        Decided::Approved(id.to_owned())
    }

    async fn end(&self, id: &str, why: HoldEnd) -> GatewayError {
        self.ended.lock().unwrap().push(why);
        GatewayError::new(
            ErrorKind::ApprovalRequired,
            Side::Gateway,
            format!("request {id} ended: {}", why.as_str()),
        )
    }
}

/// Keeps the notices a session sends its client.
#[derive(Default)]
struct Told(Mutex<Vec<String>>);

impl NoticeSink for Told {
    fn notice(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_owned());
    }
}

#[derive(Default)]
struct Memory(Mutex<Vec<serde_json::Value>>);

// Through the re-export, as an embedder without its own async-trait dependency writes it.
#[gateway_core::async_trait]
impl AuditSink for Memory {
    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError> {
        self.0
            .lock()
            .unwrap()
            .push(serde_json::to_value(&record).unwrap());
        Ok(())
    }
}

/// A [`Memory`] that can be switched off: while off it says it wants no records.
#[derive(Default)]
struct Switchable {
    memory: Memory,
    off: std::sync::atomic::AtomicBool,
}

#[gateway_core::async_trait]
impl AuditSink for Switchable {
    async fn record(&self, record: AuditRecord) -> Result<(), GatewayError> {
        self.memory.record(record).await
    }
    fn enabled(&self) -> bool {
        !self.off.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn gateway(sink: Arc<dyn AuditSink>) -> Gateway {
    gateway_with(sink, Arc::new(Approver::default()))
}

fn gateway_with(sink: Arc<dyn AuditSink>, approver: Arc<Approver>) -> Gateway {
    Gateway::builder()
        .authenticator(Arc::new(Anyone))
        .policy(Arc::new(HoldAll))
        .approvals(approver)
        .audit(sink)
        .targets(Targets::new([common::target()]))
        .build()
}

async fn open(gw: &Gateway) -> Session {
    gw.open_session(common::request("alice"))
        .await
        .expect("session")
}

#[tokio::test]
async fn an_approved_statement_names_its_approval_and_rule_apart() {
    let sink = Arc::new(Memory::default());
    let session = open(&gateway(Arc::clone(&sink) as Arc<dyn AuditSink>)).await;
    let settings = SqlSettings::default();

    let approved = session
        .prepare("delete from t where id = $1 -- approved", &settings)
        .await
        .unwrap();
    let params = session.parameter_audit().capture([BoundValue {
        value: Some(b"42"),
        binary: false,
    }]);
    let exec = session
        .execute_with(&approved, params)
        .await
        .expect("approved");
    session.finish(exec, Outcome::default()).await.unwrap();

    let held = session.prepare("delete from t", &settings).await.unwrap();
    let refused = session.execute(&held).await.err().expect("refused");
    assert_eq!(refused.kind, ErrorKind::ApprovalRequired);

    let records = sink.0.lock().unwrap().clone();
    let started: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "statement_started")
        .collect();
    assert_eq!(started.len(), 1, "{records:#?}");
    let s = started[0];
    assert_eq!(s["rule"], "hold-all", "the rule stays the rule: {s:#}");
    assert_eq!(s["approval_id"], "req-7", "{s:#}");
    assert_eq!(s["fingerprint"], "0123456789abcdef", "{s:#}");
    assert_eq!(
        s["parameters"],
        serde_json::json!({"mode": "recorded", "values": ["42"]}),
        "{s:#}"
    );

    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "statement_denied")
        .collect();
    assert_eq!(denied.len(), 1, "{records:#?}");
    assert!(denied[0].get("approval_id").is_none(), "{:#}", denied[0]);
    assert_eq!(denied[0]["verdict"]["rule"], "hold-all");
    assert_eq!(denied[0]["fingerprint"], "0123456789abcdef");
}

/// A held statement tells the client, waits, and runs once approved, naming the request; the
/// trail has the request, how its hold ended and the start.
#[tokio::test]
async fn a_held_statement_waits_tells_the_client_and_runs_once_approved() {
    let sink = Arc::new(Memory::default());
    let approver = Arc::new(Approver::default());
    let gw = gateway_with(
        Arc::clone(&sink) as Arc<dyn AuditSink>,
        Arc::clone(&approver),
    );
    let session = Arc::new(open(&gw).await);
    let told = Arc::new(Told::default());
    session.set_notices(Arc::clone(&told) as Arc<dyn NoticeSink>);
    let stmt = session
        .prepare("delete from t -- wait", &SqlSettings::default())
        .await
        .unwrap();
    let running = {
        let session = Arc::clone(&session);
        tokio::spawn(async move { session.execute(&stmt).await.map(|e| e.statement_id()) })
    };
    while told.0.lock().unwrap().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(session.holds().is_waiting());
    assert!(!running.is_finished(), "it waits for the decision");
    approver.release.notify_one();
    running.await.unwrap().expect("runs once approved");
    assert!(!session.holds().is_waiting());
    assert_eq!(*told.0.lock().unwrap(), ["held: request req-8"]);

    let records = sink.0.lock().unwrap().clone();
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "session_opened",
            "approval_requested",
            "approval_ended",
            "statement_started"
        ]
    );
    assert_eq!(records[1]["request_id"], "req-8");
    assert_eq!(records[1]["waits"], true);
    assert_eq!(records[1]["rule"], "hold-all");
    assert_eq!(records[2]["outcome"], "approved");
    assert_eq!(records[3]["approval_id"], "req-8");
}

/// The client's cancel and the timeout each end the wait: the service hears why, the client gets
/// its error, and the trail says how the hold ended and that the statement was refused.
#[tokio::test]
async fn a_cancel_or_a_timeout_ends_the_wait_and_is_recorded() {
    let sink = Arc::new(Memory::default());
    let approver = Arc::new(Approver::default());
    let gw = gateway_with(
        Arc::clone(&sink) as Arc<dyn AuditSink>,
        Arc::clone(&approver),
    );
    let session = Arc::new(open(&gw).await);
    let settings = SqlSettings::default();

    let stmt = session
        .prepare("delete from t -- wait", &settings)
        .await
        .unwrap();
    let running = {
        let session = Arc::clone(&session);
        tokio::spawn(async move { session.execute(&stmt).await.map(|e| e.statement_id()) })
    };
    while !session.holds().is_waiting() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(session.holds().cancel(), "a wait was in progress");
    let e = running.await.unwrap().expect_err("cancelled");
    assert_eq!(e.message, "request req-8 ended: cancelled");

    let brief = session
        .prepare("delete from t -- wait brief", &settings)
        .await
        .unwrap();
    let e = session.execute(&brief).await.err().expect("timed out");
    assert_eq!(e.message, "request req-8 ended: timed_out");
    assert_eq!(
        *approver.ended.lock().unwrap(),
        [HoldEnd::Cancelled, HoldEnd::TimedOut]
    );

    let records = sink.0.lock().unwrap().clone();
    let ended: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "approval_ended")
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(ended, ["cancelled", "timed_out"]);
    let denied: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"] == "statement_denied")
        .collect();
    assert_eq!(denied.len(), 2);
    assert_eq!(
        denied[0]["verdict"]["reason"],
        "request req-8 ended: cancelled"
    );
    assert!(records.iter().all(|r| r["event"] != "statement_started"));
}

/// A sink that wants no records gets none, and no parameters are captured for it; statements
/// run as before. Once it wants records again, they come.
#[tokio::test]
async fn a_sink_that_wants_no_records_gets_none_built() {
    let sink = Arc::new(Switchable::default());
    let session = open(&gateway(Arc::clone(&sink) as Arc<dyn AuditSink>)).await;
    let settings = SqlSettings::default();
    let opened = sink.memory.0.lock().unwrap().len();
    assert_eq!(opened, 1, "session_opened");

    sink.off.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(session.parameter_audit().is_off());
    let approved = session
        .prepare("delete from t where id = $1 -- approved", &settings)
        .await
        .unwrap();
    let exec = session.execute(&approved).await.expect("runs unrecorded");
    session.finish(exec, Outcome::default()).await.unwrap();
    assert_eq!(sink.memory.0.lock().unwrap().len(), opened);

    sink.off.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(!session.parameter_audit().is_off());
    let exec = session.execute(&approved).await.expect("runs recorded");
    session.finish(exec, Outcome::default()).await.unwrap();
    let events: Vec<String> = sink.memory.0.lock().unwrap()[opened..]
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["statement_started", "statement_finished"]);
}

/// Refuses every statement as PostgreSQL's grammar would: a syntax error at character 1.
struct Grammar;

impl PolicyEngine for Grammar {
    fn access(&self, _: &Identity, _: &Target) -> Result<Access, GatewayError> {
        Ok(Access::ReadWrite)
    }
    fn judge(&self, _: &StatementContext<'_>, _: &str) -> Arc<Judgement> {
        Arc::new(Judgement {
            verdict: Verdict::syntax(
                "builtin:syntax-error",
                SyntaxError {
                    message: "syntax error at or near \"selec\"".into(),
                    position: Some(1),
                },
            ),
            classification: None,
            objects: None,
            fingerprint: None,
            lineage: None,
        })
    }
}

#[tokio::test]
async fn a_syntax_error_is_refused_as_the_database_would_and_recorded_as_denied() {
    let sink = Arc::new(Memory::default());
    let gw = Gateway::builder()
        .authenticator(Arc::new(Anyone))
        .policy(Arc::new(Grammar))
        .audit(Arc::clone(&sink) as Arc<dyn AuditSink>)
        .targets(Targets::new([common::target()]))
        .build();
    let session = open(&gw).await;
    let e = session
        .prepare("selec 1", &SqlSettings::default())
        .await
        .expect_err("refused");
    // Not a policy error: the client's SQL is wrong, and it hears so in the database's words.
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert_eq!(e.side, Side::Client);
    assert_eq!(e.message, "syntax error at or near \"selec\"");
    assert_eq!(e.position, Some(1));
    assert_eq!(e.rule.as_deref(), Some("builtin:syntax-error"));

    let records = sink.0.lock().unwrap().clone();
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "statement_denied")
        .collect();
    assert_eq!(denied.len(), 1, "{records:#?}");
    let verdict = &denied[0]["verdict"];
    assert_eq!(verdict["decision"], "deny", "{verdict:#}");
    assert_eq!(verdict["rule"], "builtin:syntax-error", "{verdict:#}");
    assert_eq!(
        verdict["reason"], "syntax error at or near \"selec\"",
        "{verdict:#}"
    );
    assert_eq!(verdict["syntax_error"]["position"], 1, "{verdict:#}");
}

/// Live sessions are listed while they live; ending one stops its wait for approval and lets its
/// protocol crate close it with the reason.
#[tokio::test]
async fn live_sessions_are_listed_and_an_ended_one_is_told_why() {
    let approver = Arc::new(Approver::default());
    let gw = gateway_with(Arc::new(Memory::default()), Arc::clone(&approver));
    let first = Arc::new(open(&gw).await);
    let second = open(&gw).await;
    let live = gw.live_sessions();
    assert_eq!(live.len(), 2);
    assert!(live
        .iter()
        .all(|s| s.subject == "alice" && !s.waiting_for_approval));

    let stmt = first
        .prepare("delete from t -- wait", &SqlSettings::default())
        .await
        .unwrap();
    let waiting = {
        let first = Arc::clone(&first);
        tokio::spawn(async move { first.execute(&stmt).await.map(|e| e.statement_id()) })
    };
    while !first.holds().is_waiting() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let id = first.context().id.to_string();
    let listed = gw.live_sessions();
    assert!(listed
        .iter()
        .any(|s| s.id == id && s.waiting_for_approval && s.statements == 1));

    assert!(gw.end_session("no-such-session", "x").is_none());
    assert!(gw.end_session(&id, "offboarding").is_some());
    let e = waiting.await.unwrap().err().expect("the wait ends");
    assert_eq!(e.message, "request req-8 ended: shutting_down");
    let why = tokio::time::timeout(std::time::Duration::from_secs(5), first.terminated())
        .await
        .expect("terminated resolves");
    assert_eq!(why.kind, ErrorKind::ShuttingDown);
    assert!(
        why.message.ends_with("administrator command: offboarding"),
        "{}",
        why.message
    );
    assert!(!second.is_terminated());

    drop(first);
    let left: Vec<String> = gw.live_sessions().into_iter().map(|s| s.id).collect();
    assert_eq!(left, [second.context().id.to_string()]);
}
