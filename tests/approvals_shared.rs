//! Two gateway nodes sharing a PostgreSQL approval store: a statement held on one node is
//! decided through the other node's admin API, and runs on the first; a grant created on one
//! node covers statements on the other.

mod common;

use common::{admin_call, Options, TestDb, TestGateway};
use serde_json::json;

const RULES: &str = r#"
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
"#;

async fn node(store: &TestDb) -> TestGateway {
    let gw = TestGateway::start_with(Options {
        extra_config: format!(
            "{RULES}\n[approvals]\napprovers = [\"dba\"]\nadmins = [\"admin\"]\npoll = \"100ms\"\nstore_url = \"postgresql://postgres@127.0.0.1:5432/{}\"\n",
            store.name
        ),
        ..Options::default()
    })
    .await;
    gw.db
        .connect_direct()
        .await
        .batch_execute("create table ledger (id int primary key, amount int)")
        .await
        .unwrap();
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_on_one_node_is_approved_through_another() {
    let store = TestDb::create().await;
    let a = node(&store).await;
    let b = node(&store).await;
    let alice = a
        .connect_tokio_postgres(&a.token_in("alice", &["engineering"]))
        .await;
    let bob = b.token_in("bob", &["dba"]);

    let approve_on_b = async {
        let id = loop {
            let (status, body) = admin_call(
                &b.admin_url(),
                "GET",
                "/api/v1/approvals?state=pending",
                &bob,
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            if let Some(id) = body["requests"][0]["id"].as_str() {
                break id.to_owned();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let (status, body) = admin_call(
            &b.admin_url(),
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            &bob,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        id
    };
    let (result, id) = tokio::join!(
        alice.batch_execute("insert into ledger values (1, 1)"),
        approve_on_b
    );
    result.expect("node a runs the statement node b's approver approved");
    let rows: i64 =
        a.db.connect_direct()
            .await
            .query_one("select count(*) from ledger", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(rows, 1);
    // Each node has its own token key in this test: node a's admin API wants node a's tokens.
    let bob_on_a = a.token_in("bob", &["dba"]);
    let (_, body) = admin_call(
        &a.admin_url(),
        "GET",
        &format!("/api/v1/approvals/{id}"),
        &bob_on_a,
        None,
    )
    .await;
    assert_eq!(body["state"], "executed", "{body}");

    // A grant made through node b covers alice's statements on node a.
    let dave = b.token_in("dave", &["admin"]);
    let (status, grant) = admin_call(
        &b.admin_url(),
        "POST",
        "/api/v1/grants",
        &dave,
        Some(
            json!({"subject": "alice", "target": a.database(), "rule": "ledger-writes",
                    "duration": "5m", "reason": "backfill"}),
        ),
    )
    .await;
    // Node b does not serve node a's target: grants name targets of the gateway they are made on.
    assert_eq!(status, 400, "{grant}");
    let (status, grant) = admin_call(
        &a.admin_url(),
        "POST",
        "/api/v1/grants",
        &a.token_in("dave", &["admin"]),
        Some(
            json!({"subject": "alice", "target": a.database(), "rule": "ledger-writes",
                    "duration": "5m", "reason": "backfill"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    let (_, listed) = admin_call(&b.admin_url(), "GET", "/api/v1/grants", &dave, None).await;
    assert_eq!(
        listed["grants"][0]["id"], grant["id"],
        "node b sees the shared grant: {listed}"
    );
    alice
        .batch_execute("insert into ledger values (2, 2)")
        .await
        .expect("runs under the grant");
    a.shutdown().await;
    b.shutdown().await;
}
