//! Approvals on the MySQL listener when held statements wait (`without_notices = "wait"`): the
//! statement waits silently until approved, and a `KILL QUERY` of the waiting connection (what
//! a client's Ctrl-C sends) ends the wait and withdraws the request.

mod common;

use common::mysql::{MysqlGateway, MysqlOptions, POLICY};
use common::{admin_call, assert_success};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_statement_runs_once_approved_and_kill_query_withdraws_it() {
    let gw = MysqlGateway::start_with(MysqlOptions {
        extra_config: format!(
            "{POLICY}{}",
            r#"
[[policy.rules]]
name = "ledger-writes"
action = "require-approval"
writes = ["ledger"]

[approvals]
approvers = ["dba"]
without_notices = "wait"
wait = "30s"

[admin]
listen = "127.0.0.1:0"
"#
        ),
        ..MysqlOptions::default()
    })
    .await;
    gw.db.direct("CREATE TABLE ledger (id INT PRIMARY KEY)");
    let bob = gw.token("bob", &["dba"]);
    let base = gw.admin_url();

    // Approver: approves the first pending request, then waits for the second one and prints
    // its id for the script, which kills the waiting query.
    let approver = {
        let (base, bob) = (base.clone(), bob.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..400 {
                let (_, body) =
                    admin_call(&base, "GET", "/api/v1/approvals?state=pending", &bob, None).await;
                if let Some(id) = body["requests"][0]["id"].as_str() {
                    if !seen.contains(&id.to_owned()) {
                        seen.push(id.to_owned());
                        if seen.len() == 1 {
                            let path = format!("/api/v1/approvals/{id}/approve");
                            let (status, _) = admin_call(&base, "POST", &path, &bob, None).await;
                            assert_eq!(status, 200);
                        }
                    }
                    if seen.len() == 2 {
                        break;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let out = gw
        .python(
            r#"
import json, os, threading, time
import pymysql

def connect():
    return pymysql.connect(
        host=os.environ["MY_HOST"], port=int(os.environ["MY_PORT"]), user=os.environ["MY_USER"],
        password=os.environ["MY_PASSWORD"], database=os.environ["MY_DB"], autocommit=True,
        connect_timeout=10, read_timeout=60,
    )

out = {}
waiting = connect()
with waiting.cursor() as cur:
    cur.execute("INSERT INTO ledger VALUES (1)")
    out["rowcount"] = cur.rowcount

result = {}
def run():
    try:
        with waiting.cursor() as cur:
            cur.execute("INSERT INTO ledger VALUES (2)")
        result["error"] = None
    except pymysql.MySQLError as e:
        result["error"] = [e.args[0], e.args[1]]
thread = threading.Thread(target=run)
thread.start()
time.sleep(1.0)
killer = connect()
with killer.cursor() as cur:
    cur.execute("KILL QUERY %d" % waiting.thread_id())
thread.join(20)
out["killed"] = result.get("error")
with waiting.cursor() as cur:
    cur.execute("SELECT COUNT(*) FROM ledger")
    out["rows"] = cur.fetchone()[0]
print(json.dumps(out))
"#,
        )
        .await;
    let stdout = assert_success("PyMySQL waiting for approvals", &out);
    let v: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(v["rowcount"], 1, "{v}");
    let killed = &v["killed"];
    assert_eq!(killed[0], 1227, "{v}");
    assert!(
        killed[1]
            .as_str()
            .unwrap()
            .contains("canceling statement due to user request"),
        "{v}"
    );
    assert_eq!(v["rows"], 1, "only the approved insert ran: {v}");
    let seen = approver.await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (_, second) = admin_call(
        &base,
        "GET",
        &format!("/api/v1/approvals/{}", seen[1]),
        &bob,
        None,
    )
    .await;
    assert_eq!(second["state"], "cancelled", "{second}");
    gw.shutdown().await;
}

/// A MySQL client that goes away while its statement waits withdraws the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_waiting_withdraws_its_request() {
    let gw = MysqlGateway::start_with(MysqlOptions {
        extra_config: format!(
            "{POLICY}{}",
            r#"
[[policy.rules]]
name = "ledger-writes"
action = "require-approval"
writes = ["ledger"]

[approvals]
approvers = ["dba"]
without_notices = "wait"

[admin]
listen = "127.0.0.1:0"
"#
        ),
        ..MysqlOptions::default()
    })
    .await;
    gw.db.direct("CREATE TABLE ledger (id INT PRIMARY KEY)");
    let bob = gw.token("bob", &["dba"]);
    // The process exits (closing its socket) while the insert waits.
    let out = gw
        .python(
            r#"
import os, threading, time
import pymysql

conn = pymysql.connect(
    host=os.environ["MY_HOST"], port=int(os.environ["MY_PORT"]), user=os.environ["MY_USER"],
    password=os.environ["MY_PASSWORD"], database=os.environ["MY_DB"], autocommit=True,
    connect_timeout=10,
)
def run():
    with conn.cursor() as cur:
        cur.execute("INSERT INTO ledger VALUES (1)")
threading.Thread(target=run, daemon=True).start()
time.sleep(1.0)
print("leaving", flush=True)
os._exit(0)
"#,
        )
        .await;
    assert_success("PyMySQL leaving while it waits", &out);
    let mut state = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = admin_call(
            &gw.admin_url(),
            "GET",
            "/api/v1/approvals?state=all",
            &bob,
            None,
        )
        .await;
        state = body["requests"][0].clone();
        if state["state"] == "cancelled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "cancelled", "{state}");
    assert_eq!(
        state["decision_reason"],
        "the client disconnected while waiting"
    );
    assert_eq!(gw.db.direct("SELECT COUNT(*) FROM ledger").trim(), "0");
    gw.shutdown().await;
}
