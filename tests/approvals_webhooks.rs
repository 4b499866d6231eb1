//! Webhooks announce requests and decisions: a signed JSON body (retried after a 503) and a
//! Slack-style text body, received by a local HTTP server, never delaying the statement.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{admin_call, Options, TestGateway};
use serde_json::Value;

#[derive(Default)]
struct Received {
    /// (path, signature header, event header, body)
    posts: Mutex<Vec<(String, Option<String>, Option<String>, String)>>,
    /// Answer 503 to the first post to `/json`.
    failed_once: Mutex<bool>,
}

async fn receive(
    State(r): State<Arc<Received>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    if path == "json" {
        let mut failed = r.failed_once.lock().unwrap();
        if !*failed {
            *failed = true;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    r.posts.lock().unwrap().push((
        path,
        header("x-portcullis-signature"),
        header("x-portcullis-event"),
        body,
    ));
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_decisions_are_announced_signed_and_retried() {
    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/{path}", post(receive))
        .with_state(Arc::clone(&received));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let gw = TestGateway::start_with(Options {
        extra_config: format!(
            r#"
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

[approvals]
approvers = ["dba"]

[[approvals.webhooks]]
url = "http://{hooks}/json"
secret = "hook-secret"

[[approvals.webhooks]]
url = "http://{hooks}/slack"
format = "slack"
events = ["requested"]
"#
        ),
        ..Options::default()
    })
    .await;
    let direct = gw.db.connect_direct().await;
    direct
        .batch_execute("create table ledger (id int)")
        .await
        .unwrap();
    let alice = gw
        .connect_tokio_postgres(&gw.token_in("alice", &["engineering"]))
        .await;
    let bob = gw.token_in("bob", &["dba"]);

    let approve = async {
        let id = loop {
            let (_, body) = admin_call(
                &gw.admin_url(),
                "GET",
                "/api/v1/approvals?state=pending",
                &bob,
                None,
            )
            .await;
            if let Some(id) = body["requests"][0]["id"].as_str() {
                break id.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let path = format!("/api/v1/approvals/{id}/approve");
        let (status, _) = admin_call(&gw.admin_url(), "POST", &path, &bob, None).await;
        assert_eq!(status, 200);
        id
    };
    let (result, id) = tokio::join!(
        alice.batch_execute("insert into ledger values (1)"),
        approve
    );
    result.expect("approved and run");

    // The first JSON delivery got a 503 and is retried after a second.
    let mut posts = Vec::new();
    for _ in 0..100 {
        posts = received.posts.lock().unwrap().clone();
        if posts.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    posts.sort_by(|a, b| (a.0.as_str(), a.2.as_deref()).cmp(&(b.0.as_str(), b.2.as_deref())));
    let kinds: Vec<(&str, Option<&str>)> = posts
        .iter()
        .map(|p| (p.0.as_str(), p.2.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("json", Some("approved")),
            ("json", Some("requested")),
            ("slack", Some("requested"))
        ],
        "the slack hook asked for `requested` only"
    );
    for (path, signature, _, body) in &posts {
        if path == "json" {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"hook-secret");
            aws_lc_rs::hmac::verify(
                &key,
                body.as_bytes(),
                &hex_decode(
                    signature
                        .as_deref()
                        .unwrap()
                        .strip_prefix("sha256=")
                        .unwrap(),
                ),
            )
            .expect("the signature covers the exact body");
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["request_id"], id.as_str());
            assert_eq!(v["requester"], "alice");
            assert_eq!(v["sql"], "insert into ledger values (1)");
        } else {
            assert!(signature.is_none());
            let v: Value = serde_json::from_str(body).unwrap();
            let text = v["text"].as_str().unwrap();
            assert!(
                text.contains(&format!("request {id}: alice asks")),
                "{text}"
            );
            assert!(text.contains("/api/v1/approvals/"), "{text}");
        }
    }
    gw.shutdown().await;
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
