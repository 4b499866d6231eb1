//! Approvals end to end: a real client's statement is held by a require-approval rule, another
//! identity decides it through the admin API (bearer tokens), and the statement runs or is
//! refused; every step is in the audit trail. Also: denial, self-approval refused, a quorum of
//! two, cancel while waiting, timeout, break-glass, a grant used then revoked, and a gateway
//! restart with a request pending. The OpenAPI document is checked against the routes the
//! gateway serves.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Options, TestGateway};
use serde_json::{json, Value};

const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"

[[policy.access]]
name = "everyone"
groups = ["*"]
mode = "read-write"

[[policy.rules]]
name = "ledger-writes"
action = "require-approval"
writes = ["ledger"]
message = "writes to the ledger need a second person"

[[policy.rules]]
name = "payroll-writes"
action = "require-approval"
writes = ["payroll"]

[approvals]
approvers = ["dba"]
admins = ["admin"]
break_glass = ["oncall"]
wait = "30s"

[[approvals.rules]]
rule = "payroll-writes"
quorum = 2
require_reason = true

[[policy.rules]]
name = "journal-writes"
action = "require-approval"
writes = ["journal"]

[[approvals.rules]]
rule = "journal-writes"
wait = "1s"
"#;

async fn start() -> TestGateway {
    let gw = TestGateway::start_with(Options {
        extra_config: CONFIG.into(),
        ..Options::default()
    })
    .await;
    let direct = gw.db.connect_direct().await;
    direct
        .batch_execute(
            "create table ledger (id int primary key, amount int);
             create table payroll (id int primary key, salary int);
             create table journal (id int primary key);",
        )
        .await
        .unwrap();
    gw
}

/// One admin API call: (status, JSON body).
async fn api(
    gw: &TestGateway,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    common::admin_call(&gw.admin_url(), method, path, token, body).await
}

/// Waits (10 s at most) for a pending request of `subject` and returns it.
async fn pending_of(gw: &TestGateway, token: &str, subject: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = api(gw, "GET", "/api/v1/approvals?state=pending", token, None).await;
        assert_eq!(status, 200, "{body}");
        if let Some(r) = body["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["subject"] == subject)
        {
            return r.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no pending request of {subject} appeared");
}

/// The id of `subject`'s pending request, waiting for it as [`pending_of`] does.
async fn pending_id(gw: &TestGateway, token: &str, subject: &str) -> String {
    pending_of(gw, token, subject).await["id"]
        .as_str()
        .expect("a request id")
        .to_owned()
}

/// The server's message of a client error (tokio-postgres's Display says only "db error").
fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    }
}

async fn count(gw: &TestGateway, table: &str) -> i64 {
    let direct = gw.db.connect_direct().await;
    direct
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_waits_with_a_notice_until_another_identity_approves() {
    let gw = start().await;
    let alice = gw.token_in("alice", &["engineering"]);
    let bob = gw.token_in("bob", &["dba"]);

    let approve = async {
        let r = pending_of(&gw, &bob, "alice").await;
        let id = r["id"].as_str().unwrap().to_owned();
        assert_eq!(r["sql"], "insert into ledger values (1, 100)");
        assert_eq!(r["rule"], "ledger-writes");
        assert_eq!(r["target"], gw.database());
        assert_eq!(r["approvers"], json!(["dba"]));
        // The requester sees her request but cannot approve it.
        let (status, body) = api(
            &gw,
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            &alice,
            None,
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("cannot approve their own request"),
            "{body}"
        );
        // Nor can someone outside the approver groups.
        let carl = gw.token_in("carl", &["engineering"]);
        let (status, _) = api(
            &gw,
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            &carl,
            None,
        )
        .await;
        assert_eq!(
            status, 404,
            "a request is invisible to whoever may not see it"
        );
        let (status, body) = api(
            &gw,
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            &bob,
            Some(json!({"reason": "checked with finance"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        id
    };
    let env = [("PGPASSWORD", alice.as_str())];
    let (out, id) = tokio::join!(
        gw.psql(&["-c", "insert into ledger values (1, 100)"], &env),
        approve
    );
    let stdout = common::assert_success("psql insert held for approval", &out);
    assert!(stdout.contains("INSERT 0 1"), "{stdout}");
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains(&format!(
            "NOTICE:  statement held for approval: request {id}"
        )) && stderr.contains("writes to the ledger need a second person")
            && stderr.contains("dba")
            && stderr.contains("/api/v1/approvals/"),
        "{stderr}"
    );
    assert_eq!(count(&gw, "ledger").await, 1);

    // Used once: the same statement again is a new request.
    let (_, body) = api(&gw, "GET", &format!("/api/v1/approvals/{id}"), &bob, None).await;
    assert_eq!(body["state"], "executed", "{body}");
    assert_eq!(body["approvals"][0]["approver"], "bob");
    assert_eq!(body["approvals"][0]["reason"], "checked with finance");

    let trail = gw
        .trail_until("the held statement's records", |t| {
            t.iter().any(|r| r["event"] == "statement_finished")
                && t.iter().any(|r| r["event"] == "admin_action")
        })
        .await;
    let requested = trail
        .iter()
        .find(|r| r["event"] == "approval_requested")
        .expect("requested");
    assert_eq!(requested["request_id"], id.as_str());
    assert_eq!(requested["subject"], "alice");
    assert_eq!(requested["waits"], true);
    let decided = trail
        .iter()
        .find(|r| r["event"] == "admin_action")
        .expect("decision");
    assert_eq!(decided["subject"], "bob");
    assert_eq!(decided["session_id"], "admin");
    assert_eq!(decided["action"], "approval_approved");
    assert_eq!(decided["id"], id.as_str());
    assert_eq!(decided["reason"], "checked with finance");
    let ended = trail
        .iter()
        .find(|r| r["event"] == "approval_ended")
        .expect("ended");
    assert_eq!(ended["outcome"], "approved");
    let started = trail
        .iter()
        .find(|r| {
            r["event"] == "statement_started" && r["sql"] == "insert into ledger values (1, 100)"
        })
        .expect("started");
    assert_eq!(started["approval_id"], id.as_str());
    assert_eq!(started["rule"], "ledger-writes");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_quorum_cancel_and_break_glass() {
    let gw = start().await;
    let alice_token = gw.token_in("alice", &["engineering"]);
    let bob = gw.token_in("bob", &["dba"]);
    let carol = gw.token_in("carol", &["dba"]);
    let alice = gw.connect_tokio_postgres(&alice_token).await;

    // Denied: the client's error names the request, who denied it and why.
    let deny = async {
        let id = pending_id(&gw, &bob, "alice").await;
        let (status, body) = api(
            &gw,
            "POST",
            &format!("/api/v1/approvals/{id}/deny"),
            &bob,
            Some(json!({"reason": "not today"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "denied");
        id
    };
    let (result, id) = tokio::join!(
        alice.batch_execute("insert into ledger values (2, 5)"),
        deny
    );
    let e = result.expect_err("denied");
    let text = message(&e);
    assert!(
        text.contains(&format!(
            "approval request {id} was denied by bob: not today"
        )),
        "{text}"
    );
    assert_eq!(common::sqlstate(&e), "42501");
    assert_eq!(count(&gw, "ledger").await, 0);

    // A quorum of two with mandatory reasons: one approval is not enough, nor is the same
    // approver twice; the second approver's lets it run.
    let quorum = async {
        let id = pending_id(&gw, &bob, "alice").await;
        let path = format!("/api/v1/approvals/{id}/approve");
        let (status, body) = api(&gw, "POST", &path, &bob, None).await;
        assert_eq!(status, 400, "a reason is required: {body}");
        let (status, body) = api(&gw, "POST", &path, &bob, Some(json!({"reason": "ok"}))).await;
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some("pending")),
            "{body}"
        );
        let (status, _) = api(&gw, "POST", &path, &bob, Some(json!({"reason": "again"}))).await;
        assert_eq!(status, 409);
        let (status, body) = api(
            &gw,
            "POST",
            &path,
            &carol,
            Some(json!({"reason": "ok too"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    };
    let (result, ()) = tokio::join!(
        alice.batch_execute("insert into payroll values (1, 10)"),
        quorum
    );
    result.expect("runs after two approvals");
    assert_eq!(count(&gw, "payroll").await, 1);

    // The client's cancel (CancelRequest) ends the wait and withdraws the request.
    let cancel_token = alice.cancel_token();
    let cancel = async {
        let id = pending_id(&gw, &bob, "alice").await;
        cancel_token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel sent");
        id
    };
    let (result, id) = tokio::join!(
        alice.batch_execute("insert into ledger values (3, 5)"),
        cancel
    );
    let e = result.expect_err("cancelled");
    assert!(
        message(&e).contains("canceling statement due to user request"),
        "{}",
        message(&e)
    );
    let (_, body) = api(&gw, "GET", &format!("/api/v1/approvals/{id}"), &bob, None).await;
    assert_eq!(body["state"], "cancelled", "{body}");
    // The session is still usable.
    alice
        .batch_execute("select 1")
        .await
        .expect("usable after the cancel");

    // Break glass: a member of `oncall` approves her own request, with a reason only.
    let erin_token = gw.token_in("erin", &["oncall"]);
    let erin = gw.connect_tokio_postgres(&erin_token).await;
    let glass = async {
        let id = pending_id(&gw, &bob, "erin").await;
        let path = format!("/api/v1/approvals/{id}/approve");
        let (status, _) = api(&gw, "POST", &path, &erin_token, None).await;
        assert_eq!(status, 400, "break glass needs a reason");
        let (status, body) = api(
            &gw,
            "POST",
            &path,
            &erin_token,
            Some(json!({"reason": "incident 42"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        id
    };
    let (result, id) = tokio::join!(
        erin.batch_execute("insert into ledger values (4, 5)"),
        glass
    );
    result.expect("runs after break glass");
    let trail = gw
        .trail_until("the break-glass record", |t| {
            t.iter().any(|r| r["action"] == "approval_break_glass")
        })
        .await;
    let glass = trail
        .iter()
        .find(|r| r["action"] == "approval_break_glass")
        .unwrap();
    assert_eq!(glass["subject"], "erin");
    assert_eq!(glass["id"], id.as_str());
    assert_eq!(glass["reason"], "incident 42");
    assert_eq!(glass["detail"]["break_glass"], true);
    let outcomes: Vec<&str> = trail
        .iter()
        .filter(|r| r["event"] == "approval_ended")
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["denied", "approved", "cancelled", "approved"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lets_statements_run_until_it_is_revoked() {
    let gw = start().await;
    let alice_token = gw.token_in("alice", &["engineering"]);
    let dave = gw.token_in("dave", &["admin"]);
    let bob = gw.token_in("bob", &["dba"]);
    let alice = gw.connect_tokio_postgres(&alice_token).await;

    let spec = json!({
        "subject": "alice",
        "target": gw.database(),
        "rule": "ledger-writes",
        "duration": "10m",
        "reason": "month-end close",
    });
    // Only admins grant.
    let (status, _) = api(&gw, "POST", "/api/v1/grants", &bob, Some(spec.clone())).await;
    assert_eq!(status, 403);
    let (status, grant) = api(&gw, "POST", "/api/v1/grants", &dave, Some(spec)).await;
    assert_eq!(status, 201, "{grant}");
    let grant_id = grant["id"].as_str().unwrap().to_owned();

    for i in 0..2 {
        alice
            .batch_execute(&format!("insert into ledger values ({i}, 1)"))
            .await
            .expect("runs under the grant, without waiting");
    }
    let (_, list) = api(&gw, "GET", "/api/v1/grants", &dave, None).await;
    assert_eq!(list["grants"][0]["uses"], 2, "{list}");
    let trail = gw
        .trail_until("the grant's uses", |t| {
            t.iter()
                .filter(|r| r["event"] == "statement_started" && r["approval_id"].is_string())
                .count()
                == 2
        })
        .await;
    assert!(trail
        .iter()
        .any(|r| r["action"] == "grant_created" && r["subject"] == "dave"));
    assert!(trail
        .iter()
        .filter(|r| r["event"] == "statement_started" && r["approval_id"].is_string())
        .all(|r| r["approval_id"] == grant_id.as_str()));

    let (status, revoked) = api(
        &gw,
        "DELETE",
        &format!("/api/v1/grants/{grant_id}"),
        &dave,
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked_by"], "dave");
    // Held again; the requester withdraws her own request through the API.
    let withdraw = async {
        let id = pending_id(&gw, &alice_token, "alice").await;
        let (status, body) = api(
            &gw,
            "POST",
            &format!("/api/v1/approvals/{id}/cancel"),
            &alice_token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        id
    };
    let (result, id) = tokio::join!(
        alice.batch_execute("insert into ledger values (9, 1)"),
        withdraw
    );
    let e = result.expect_err("withdrawn");
    assert!(
        message(&e).contains(&format!("approval request {id} was cancelled by alice")),
        "{}",
        message(&e)
    );
    assert_eq!(count(&gw, "ledger").await, 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_request_survives_a_restart_and_the_statement_runs_when_sent_again() {
    let mut gw = start().await;
    let alice_token = gw.token_in("alice", &["engineering"]);
    let bob = gw.token_in("bob", &["dba"]);
    let alice = gw.connect_tokio_postgres(&alice_token).await;
    let sql = "insert into ledger values (7, 70)";

    let waiting = tokio::spawn(async move {
        let r = alice.batch_execute(sql).await;
        (r, alice)
    });
    let id = pending_id(&gw, &bob, "alice").await;
    gw.restart().await;
    let (result, _alice) = waiting.await.unwrap();
    let e = result.expect_err("the shutdown ends the wait");
    assert!(
        message(&e).contains(&format!("approval request {id} stays open")),
        "the client is told which request to come back for: {}",
        message(&e)
    );

    let (status, body) = api(&gw, "GET", &format!("/api/v1/approvals/{id}"), &bob, None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("pending")),
        "{body}"
    );
    let (status, _) = api(
        &gw,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        &bob,
        None,
    )
    .await;
    assert_eq!(status, 200);

    let alice = gw.connect_tokio_postgres(&alice_token).await;
    alice
        .batch_execute(sql)
        .await
        .expect("the approved statement runs when sent again");
    assert_eq!(count(&gw, "ledger").await, 1);
    let (_, body) = api(&gw, "GET", &format!("/api/v1/approvals/{id}"), &bob, None).await;
    assert_eq!(body["state"], "executed");
    // Once: sent a third time it is held again, as a new request.
    let again = async {
        let r = pending_of(&gw, &bob, "alice").await;
        assert_ne!(r["id"], id.as_str());
        let path = format!("/api/v1/approvals/{}/deny", r["id"].as_str().unwrap());
        api(&gw, "POST", &path, &bob, None).await
    };
    let (result, (status, _)) = tokio::join!(alice.batch_execute(sql), again);
    assert_eq!(status, 200);
    assert!(result.is_err());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_callers_without_a_valid_token() {
    let gw = start().await;
    for token in ["", "not-a-token"] {
        let (status, body) = api(&gw, "GET", "/api/v1/approvals", token, None).await;
        assert_eq!(status, 401, "{body}");
    }
    let dave = gw.token_in("dave", &["admin"]);
    let (status, me) = api(&gw, "GET", "/api/v1/whoami", &dave, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        me,
        json!({"subject": "dave", "groups": ["admin"], "admin": true, "approver": false})
    );
    let (status, body) = api(&gw, "GET", "/api/v1/approvals/apr_nosuchthing", &dave, None).await;
    assert_eq!(status, 404, "{body}");
    // Bodies and query strings the API cannot read are JSON errors too.
    let (status, body) = api(
        &gw,
        "POST",
        "/api/v1/grants",
        &dave,
        Some(json!("not a grant")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not the JSON this call takes"),
        "{body}"
    );
    let (status, body) = api(&gw, "GET", "/api/v1/approvals?limit=many", &dave, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_exactly_the_routes_the_gateway_serves() {
    let gw = start().await;
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
            .expect("docs/openapi.json");
    let doc: Value = serde_json::from_str(&file).expect("docs/openapi.json is JSON");

    // Served as it is in the repository, as JSON, without a token.
    let (status, served) = api(&gw, "GET", "/api/v1/openapi.json", "", None).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served, doc);
    let url = format!("{}/api/v1/openapi.json", gw.admin_url());
    let (content_type, text) = tokio::task::spawn_blocking(move || {
        let mut response = ureq::get(&url).call().expect("the admin listener answers");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (content_type, response.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(content_type, "application/json");
    assert_eq!(text, file, "served byte for byte");

    // The document's routes are the router's, no more and no fewer.
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if item.get(method).is_some() {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = portcullis::admin_api_routes()
        .into_iter()
        .map(|(method, path)| (method.to_owned(), path.to_owned()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from docs/openapi.json: {undocumented:?}; documented routes the router lacks: {unrouted:?}"
    );

    // Every documented route answers through the gateway: never 405 nor the router's 404 (an
    // empty body; the API's own 404 is `{"error": ...}`), always with a status the document
    // lists for it, and 200 for the lists.
    let dave = gw.token_in("dave", &["admin"]);
    for (method, path) in &documented {
        assert!(
            ["GET", "POST", "DELETE"].contains(&method.as_str()),
            "api() sends GET, POST and DELETE only; teach it {method} for {path}"
        );
        let concrete = path.replace("{id}", "nosuchid");
        let body = (method == "POST").then(|| json!({}));
        let (status, answer) = api(&gw, method, &concrete, &dave, body).await;
        assert_ne!(
            status, 405,
            "{method} {path}: the router has no such method: {answer}"
        );
        if status == 404 {
            assert!(
                answer["error"].is_string(),
                "{method} {path}: the router has no such path: {answer}"
            );
        }
        let responses = &doc["paths"][path.as_str()][method.to_ascii_lowercase()]["responses"];
        assert!(
            responses.get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which docs/openapi.json does not list: {answer}"
        );
        if method == "GET" && !path.contains('{') {
            assert_eq!(status, 200, "{method} {path}: {answer}");
        }
    }
    // What the checks above tell apart: a path the router lacks, and a method it lacks.
    let (status, answer) = api(&gw, "GET", "/api/v1/nosuchroute", &dave, None).await;
    assert_eq!((status, answer.get("error")), (404, None), "{answer}");
    let (status, _) = api(&gw, "DELETE", "/api/v1/approvals", &dave, None).await;
    assert_eq!(status, 405);
    gw.shutdown().await;
}

/// Runs the real `portcullis` binary with `args` against the gateway's admin API, off the async
/// runtime, with `token` in PORTCULLIS_TOKEN.
async fn cli(gw: &TestGateway, token: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args)
        .env("PORTCULLIS_ADMIN_URL", gw.admin_url())
        .env("PORTCULLIS_TOKEN", token);
    tokio::task::spawn_blocking(move || common::run_with_timeout(cmd, Duration::from_secs(30)))
        .await
        .unwrap()
}

/// The `approvals:` line of `portcullis approvals show`.
fn approvals_line(shown: &str) -> &str {
    shown
        .lines()
        .find(|l| l.starts_with("approvals:"))
        .unwrap_or_else(|| panic!("no approvals line in\n{shown}"))
}

/// [`cli`] with `--json` appended; the command must succeed. Its output, parsed.
async fn cli_json(gw: &TestGateway, token: &str, args: &[&str]) -> Value {
    let args = [args, &["--json"]].concat();
    let out = cli(gw, token, &args).await;
    let stdout = common::assert_success(&format!("portcullis {}", args.join(" ")), &out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvals_and_grants_commands_drive_the_admin_api() {
    let gw = start().await;
    let alice_token = gw.token_in("alice", &["engineering"]);
    let bob = gw.token_in("bob", &["dba"]);
    let dave = gw.token_in("dave", &["admin"]);
    let alice = gw.connect_tokio_postgres(&alice_token).await;
    let sql = "insert into ledger values (1, 100)";

    // A held statement: listed, shown and approved from the command line.
    let approve = async {
        let mut request = None;
        for _ in 0..200 {
            let list = cli_json(&gw, &bob, &["approvals", "list"]).await;
            request = list["requests"]
                .as_array()
                .expect("requests")
                .iter()
                .find(|r| r["subject"] == "alice")
                .cloned();
            if request.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let request = request.expect("alice's request is listed");
        let id = request["id"].as_str().unwrap().to_owned();
        assert_eq!(request["state"], "pending");
        assert_eq!(request["sql"], sql);

        let out = cli(&gw, &bob, &["approvals", "list", "--state", "pending"]).await;
        let table = common::assert_success("approvals list", &out);
        let row = table
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("{table}"));
        for cell in ["pending", "alice", gw.database(), "ledger-writes", sql] {
            assert!(row.contains(cell), "{cell} in {row:?}");
        }
        assert!(table.starts_with("ID "), "{table}");

        let out = cli(&gw, &bob, &["approvals", "show", &id]).await;
        let shown = common::assert_success("approvals show", &out);
        for text in [
            format!("id:"),
            format!(" {id}"),
            "writes to the ledger need a second person".to_owned(),
            format!("    {sql}"),
        ] {
            assert!(shown.contains(&text), "{text:?} in\n{shown}");
        }
        assert!(approvals_line(&shown).ends_with(" 0 of 1"), "{shown}");

        let out = cli(&gw, &bob, &["approvals", "approve", &id, "--reason", "ok"]).await;
        let said = common::assert_success("approvals approve", &out);
        // The waiting statement may run (and use the approval up) before the answer is read.
        assert!(
            said == format!("request {id} is approved\n")
                || said == format!("request {id} is executed\n"),
            "{said}"
        );
        id
    };
    let (result, id) = tokio::join!(alice.batch_execute(sql), approve);
    result.expect("the statement runs once approved from the command line");
    assert_eq!(count(&gw, "ledger").await, 1);
    let shown = cli_json(&gw, &bob, &["approvals", "show", &id]).await;
    assert_eq!(shown["state"], "executed", "{shown}");
    assert_eq!(shown["approvals"][0]["approver"], "bob");
    assert_eq!(shown["approvals"][0]["reason"], "ok");
    let out = cli(&gw, &bob, &["approvals", "show", &id]).await;
    let shown = common::assert_success("approvals show", &out);
    assert!(approvals_line(&shown).ends_with(" 1 of 1"), "{shown}");
    assert!(shown.contains("\n    bob at "), "{shown}");
    assert!(shown.contains(": ok\n"), "{shown}");

    // Deciding it again: the API's 409 message on stderr, exit 1.
    let out = cli(&gw, &bob, &["approvals", "deny", &id]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains(&format!(
            "request {id} is executed; it cannot be decided (HTTP 409)"
        )),
        "{stderr}"
    );

    // Grants: created, listed, revoked.
    let database = gw.database().to_owned();
    let create = [
        "grants",
        "create",
        "--subject",
        "alice",
        "--target",
        &database,
        "--rule",
        "ledger-writes",
        "--duration",
        "30m",
        "--reason",
        "month-end close",
    ];
    let out = cli(&gw, &bob, &create).await;
    assert_eq!(out.status.code(), Some(1), "only admins grant");
    assert!(
        common::stderr(&out).contains("(HTTP 403)"),
        "{}",
        common::stderr(&out)
    );
    let grant = cli_json(&gw, &dave, &create).await;
    let grant_id = grant["id"].as_str().expect("grant id").to_owned();
    assert_eq!(grant["rule"], "ledger-writes");
    assert_eq!(grant["created_by"], "dave");
    assert_eq!(grant["reason"], "month-end close");

    let out = cli(&gw, &dave, &["grants", "list"]).await;
    let table = common::assert_success("grants list", &out);
    let row = table
        .lines()
        .find(|l| l.contains(&grant_id))
        .unwrap_or_else(|| panic!("{table}"));
    for cell in [
        "in force",
        "alice",
        gw.database(),
        "ledger-writes",
        "dave",
        "month-end close",
    ] {
        assert!(row.contains(cell), "{cell} in {row:?}");
    }
    alice
        .batch_execute("insert into ledger values (2, 1)")
        .await
        .expect("runs under the grant");

    let out = cli(&gw, &dave, &["grants", "revoke", &grant_id]).await;
    let said = common::assert_success("grants revoke", &out);
    assert!(
        said.contains(&format!("revoked grant {grant_id}")) && said.contains("used 1 time)"),
        "{said}"
    );
    let list = cli_json(&gw, &dave, &["grants", "list"]).await;
    assert_eq!(list["grants"], json!([]), "no grant in force: {list}");
    let list = cli_json(&gw, &dave, &["grants", "list", "--all"]).await;
    assert_eq!(list["grants"][0]["id"], grant_id.as_str());
    assert_eq!(list["grants"][0]["revoked_by"], "dave");
    let out = cli(&gw, &dave, &["grants", "list", "--all"]).await;
    assert!(common::assert_success("grants list --all", &out).contains("revoked"));

    // A bad token: exit 1 and the API's 401 message on stderr; the token is not printed.
    let (status, refused) = api(&gw, "GET", "/api/v1/approvals", "not-a-valid-token", None).await;
    assert_eq!(status, 401);
    let out = cli(&gw, "not-a-valid-token", &["approvals", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains(&format!(
            "{} (HTTP 401)",
            refused["error"].as_str().unwrap()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-a-valid-token") && common::stdout(&out).is_empty(),
        "{stderr}"
    );

    // No admin listener at the URL: said so.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["approvals", "list", "--url", "http://127.0.0.1:1"])
        .env("PORTCULLIS_TOKEN", &bob);
    let out =
        tokio::task::spawn_blocking(move || common::run_with_timeout(cmd, Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains("cannot reach the admin API at http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains(&bob));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_and_end_sessions_search_the_trail_and_read_the_policy() {
    let gw = start().await;
    let alice = gw
        .connect_tokio_postgres(&gw.token_in("alice", &["engineering"]))
        .await;
    alice.batch_execute("select 1").await.unwrap();
    let dave = gw.token_in("dave", &["admin"]);
    let bob = gw.token_in("bob", &["dba"]);

    for path in ["/api/v1/sessions", "/api/v1/policy", "/api/v1/audit"] {
        let (status, _) = api(&gw, "GET", path, &bob, None).await;
        assert_eq!(status, 403, "{path} is for admins");
    }
    let (status, body) = api(&gw, "GET", "/api/v1/sessions", &dave, None).await;
    assert_eq!(status, 200, "{body}");
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{body}");
    let session = &sessions[0];
    assert_eq!(session["subject"], "alice");
    assert_eq!(session["target"], gw.database());
    assert_eq!(session["protocol"], "postgres");
    assert_eq!(session["statements"], 1);
    let id = session["id"].as_str().unwrap().to_owned();

    let (status, policy) = api(&gw, "GET", "/api/v1/policy", &dave, None).await;
    assert_eq!(status, 200);
    let rules: Vec<&str> = policy["policy"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["ledger-writes", "payroll-writes", "journal-writes"],
        "{policy}"
    );
    assert_eq!(policy["policy"]["rules"][0]["writes"], json!(["ledger"]));

    let (status, explained) = api(
        &gw,
        "POST",
        "/api/v1/policy/explain",
        &dave,
        Some(
            json!({"subject": "alice", "groups": ["engineering"], "target": gw.database(),
                    "sql": "insert into ledger values (1, 1)"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{explained}");
    assert_eq!(
        explained["statements"][0]["verdict"]["decision"], "needs_approval",
        "{explained}"
    );
    assert_eq!(
        explained["statements"][0]["verdict"]["rule"],
        "ledger-writes"
    );

    // The search index follows the trail's log in the background: wait for it.
    let mut found = Value::Null;
    for _ in 0..100 {
        let (status, body) = api(
            &gw,
            "GET",
            "/api/v1/audit?subject=alice&event=session_opened&since=1h",
            &dave,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        found = body;
        if !found["records"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = found["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{found}");
    assert_eq!(records[0]["record"]["session_id"], id.as_str());
    let (status, _) = api(&gw, "GET", "/api/v1/audit?since=yesterday-ish", &dave, None).await;
    assert_eq!(status, 400);

    let (status, ended) = api(
        &gw,
        "POST",
        &format!("/api/v1/sessions/{id}/end"),
        &dave,
        Some(json!({"reason": "offboarding"})),
    )
    .await;
    assert_eq!(status, 200, "{ended}");
    let e = alice
        .batch_execute("select 1")
        .await
        .expect_err("the session was ended");
    if let Some(db) = e.as_db_error() {
        assert_eq!(db.code().code(), "57P01");
        assert!(
            db.message().contains("ended by dave: offboarding"),
            "{}",
            db.message()
        );
    }
    let (status, _) = api(
        &gw,
        "POST",
        &format!("/api/v1/sessions/{id}/end"),
        &dave,
        None,
    )
    .await;
    assert!(
        status == 404 || status == 409,
        "gone, or on its way: {status}"
    );
    for _ in 0..100 {
        let (_, body) = api(&gw, "GET", "/api/v1/sessions", &dave, None).await;
        if body["sessions"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = api(
        &gw,
        "POST",
        &format!("/api/v1/sessions/{id}/end"),
        &dave,
        None,
    )
    .await;
    assert_eq!(status, 404, "gone");
    let trail = gw
        .trail_until("the session's end", |t| {
            t.iter().any(|r| r["event"] == "session_closed")
        })
        .await;
    let action = trail
        .iter()
        .find(|r| r["action"] == "session_ended")
        .expect("recorded");
    assert_eq!(action["subject"], "dave");
    assert_eq!(action["id"], id.as_str());
    assert_eq!(action["reason"], "offboarding");
    gw.shutdown().await;
}

/// A policy change that no longer holds a pending request's statement cancels the request: the
/// waiting client is told, the trail says why, and the statement now runs as the new policy says.
/// The pending gauge counts the request while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_cancels_requests_it_makes_moot() {
    let gw = start().await;
    let alice = gw
        .connect_tokio_postgres(&gw.token_in("alice", &["engineering"]))
        .await;
    let bob = gw.token_in("bob", &["dba"]);
    let relax = async {
        let id = pending_id(&gw, &bob, "alice").await;
        // The gauge is refreshed every 5 s.
        let metrics = format!("{}/metrics", gw.admin_url());
        let mut seen = false;
        for _ in 0..80 {
            let (_, body) =
                common::admin_call(&gw.admin_url(), "GET", "/metrics", &bob, None).await;
            if body
                .as_str()
                .unwrap_or_default()
                .contains("portcullis_approvals_pending 1")
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen, "{metrics} counts the pending request");
        let relaxed = gw.config_text.replace(
            "name = \"ledger-writes\"\naction = \"require-approval\"",
            "name = \"ledger-writes\"\naction = \"allow\"",
        );
        assert_ne!(relaxed, gw.config_text);
        std::fs::write(gw.scratch().join("portcullis.toml"), relaxed).unwrap();
        id
    };
    let (result, id) = tokio::join!(
        alice.batch_execute("insert into ledger values (5, 5)"),
        relax
    );
    let e = result.expect_err("cancelled by the policy change");
    assert!(
        message(&e).contains(&format!("approval request {id} was cancelled by (policy)")),
        "{}",
        message(&e)
    );
    alice
        .batch_execute("insert into ledger values (5, 5)")
        .await
        .expect("allowed by the new policy");
    let trail = gw
        .trail_until("the moot request", |t| {
            t.iter().any(|r| r["action"] == "approval_moot")
        })
        .await;
    let moot = trail
        .iter()
        .find(|r| r["action"] == "approval_moot")
        .unwrap();
    assert_eq!(moot["id"], id.as_str());
    assert_eq!(moot["subject"], "portcullis");
    gw.shutdown().await;
}

/// A client that goes away while its statement waits withdraws the request: nobody can approve
/// a statement for a client that is no longer there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_waiting_withdraws_its_request() {
    let gw = start().await;
    let bob = gw.token_in("bob", &["dba"]);
    let mut psql = std::process::Command::new("psql");
    psql.args(["-X", "-w", "-c", "insert into ledger values (8, 8)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in gw.libpq_env() {
        psql.env(k, v);
    }
    let mut child = psql.spawn().expect("psql runs");
    let id = pending_id(&gw, &bob, "alice").await;
    child.kill().expect("kill psql");
    let _ = child.wait();
    let mut state = Value::Null;
    for _ in 0..100 {
        let (_, body) = api(&gw, "GET", &format!("/api/v1/approvals/{id}"), &bob, None).await;
        state = body;
        if state["state"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "cancelled", "{state}");
    assert_eq!(
        state["decision_reason"],
        "the client disconnected while waiting"
    );
    let trail = gw
        .trail_until("the hold's end", |t| {
            t.iter().any(|r| r["event"] == "approval_ended")
        })
        .await;
    let ended = trail
        .iter()
        .find(|r| r["event"] == "approval_ended")
        .unwrap();
    assert_eq!(ended["outcome"], "disconnected");
    assert_eq!(count(&gw, "ledger").await, 0);
    gw.shutdown().await;
}

/// A statement that waits longer than its rule's `wait` is refused, naming the request, which
/// stays open: approved later, the statement runs when sent again. A grant ends when it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_statement_runs_when_sent_again_after_approval_and_grants_expire() {
    let gw = start().await;
    let alice = gw
        .connect_tokio_postgres(&gw.token_in("alice", &["engineering"]))
        .await;
    let bob = gw.token_in("bob", &["dba"]);
    let sql = "insert into journal values (1)";
    let started = std::time::Instant::now();
    let e = alice.batch_execute(sql).await.expect_err("times out");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let text = message(&e);
    assert!(
        text.contains("was not decided while the statement waited; it stays open"),
        "{text}"
    );
    let id = pending_id(&gw, &bob, "alice").await;
    assert!(text.contains(&id), "{text}");
    let (status, _) = api(
        &gw,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        &bob,
        None,
    )
    .await;
    assert_eq!(status, 200);
    alice
        .batch_execute(sql)
        .await
        .expect("approved: runs when sent again");
    assert_eq!(count(&gw, "journal").await, 1);

    // A grant of one second covers the next statement, then expires.
    let dave = gw.token_in("dave", &["admin"]);
    let (status, grant) = api(
        &gw,
        "POST",
        "/api/v1/grants",
        &dave,
        Some(
            json!({"subject": "alice", "target": gw.database(), "rule": "journal-writes",
                    "duration": "1s", "reason": "one quick fix"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    alice
        .batch_execute("insert into journal values (2)")
        .await
        .expect("runs under the grant");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, list) = api(&gw, "GET", "/api/v1/grants", &dave, None).await;
    assert_eq!(list["grants"], json!([]), "no grant in force: {list}");
    let e = alice
        .batch_execute("insert into journal values (3)")
        .await
        .expect_err("held again once the grant expired");
    assert!(message(&e).contains("was not decided"), "{}", message(&e));
    assert_eq!(count(&gw, "journal").await, 2);
    gw.shutdown().await;
}

/// With `tls_cert` and `tls_key` in `[admin]`, the admin API is served over HTTPS only, and the
/// notices point approvers at the https:// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_can_be_served_over_https() {
    let pki = common::Pki::generate("admin-https");
    let config = CONFIG.replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntls_cert = {}\ntls_key = {}\n",
            common::toml_str(&pki.server_cert_file.display().to_string()),
            common::toml_str(&pki.server_key_file.display().to_string())
        ),
    );
    assert_ne!(config, CONFIG);
    let gw = TestGateway::start_with(Options {
        extra_config: config,
        ..Options::default()
    })
    .await;
    let base = gw.admin_url().replace("http://", "https://");
    let dave = gw.token_in("dave", &["admin"]);
    let ca = std::fs::read(&pki.ca_file).unwrap();
    let (https, plain) = tokio::task::spawn_blocking({
        let (base, dave) = (base.clone(), dave.clone());
        move || {
            let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&ca)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .build();
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .tls_config(tls)
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let mut r = agent
                .get(format!("{base}/api/v1/whoami"))
                .header("authorization", format!("Bearer {dave}"))
                .call()
                .expect("https answers");
            let body = r.body_mut().read_to_string().unwrap();
            let plain = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .new_agent()
                .get(format!("{}/healthz", base.replace("https://", "http://")))
                .call();
            ((r.status().as_u16(), body), plain.is_err())
        }
    })
    .await
    .unwrap();
    assert_eq!(https.0, 200, "{}", https.1);
    let me: Value = serde_json::from_str(&https.1).unwrap();
    assert_eq!(me["subject"], "dave");
    assert!(plain, "plain HTTP is not served on an HTTPS listener");

    // The command line speaks HTTPS too, trusting the given CA.
    let ca_file = pki.ca_file.display().to_string();
    let out = cli(
        &gw,
        &dave,
        &[
            "approvals",
            "list",
            "--json",
            "--url",
            &base,
            "--ca-file",
            &ca_file,
        ],
    )
    .await;
    let listed = common::assert_success("portcullis approvals list over https", &out);
    assert!(listed.contains("\"requests\""), "{listed}");

    // Notices name the https address (the journal rule waits 1 s, then refuses).
    let out = gw
        .psql(&["-c", "insert into journal values (1)"], &[])
        .await;
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains(&format!("POST {base}/api/v1/approvals/")),
        "{stderr}"
    );
    assert!(stderr.contains("was not decided"), "{stderr}");
    gw.shutdown().await;
}
