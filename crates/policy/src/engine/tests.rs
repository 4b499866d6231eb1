//! The decision logic, one row per case with the reason in the row.

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_core::{
    Access, AuthMethod, Decision, Identity, PolicyEngine, Protocol, SqlSettings, StatementContext,
    Target, UpstreamTls,
};

use super::RuleEngine;
use crate::rules::RuleSet;

const RULES: &str = r#"
[policy]
[[policy.access]]
name = "analysts-read"
groups = ["analyst"]
targets = ["app*"]
mode = "read-only"

[[policy.access]]
name = "devs"
groups = ["dev"]
mode = "read-write"

[[policy.access]]
name = "shop-readers"
groups = ["shop-reader"]
targets = ["shop"]
mode = "read-only"

[[policy.access]]
name = "dba"
groups = ["dba"]
mode = "read-write"

[[policy.access]]
name = "everyone-docs"
groups = ["*"]
targets = ["docs"]
except_groups = ["contractor"]
mode = "read-only"

[[policy.rules]]
name = "no-drop-in-prod"
action = "deny"
kinds = ["drop", "truncate"]
labels = { env = "prod" }
except_groups = ["dba"]
message = "Dropping tables in production is not allowed"

[[policy.rules]]
name = "no-unfiltered-delete"
action = "deny"
kinds = ["delete", "update"]
filter = "missing"
message = "DELETE and UPDATE need a WHERE clause"

[[policy.rules]]
name = "approve-ddl"
action = "require-approval"
kinds = ["ddl"]
message = "schema changes need a second pair of eyes"

[[policy.rules]]
name = "protect-secrets"
action = "deny"
objects = ["vault.secrets"]
message = "the vault is off limits"

[[policy.rules]]
name = "approve-payments"
action = "require-approval"
writes = ["billing.payments"]

[[policy.rules]]
name = "allow-sandbox"
action = "allow"
writes = ["sandbox.*"]

[[policy.rules]]
name = "no-sleep-for-mallory"
action = "deny"
functions = ["pg_sleep"]
subjects = ["mallory"]

[[policy.rules]]
name = "dba-may-set-role"
action = "allow"
groups = ["dba"]
kinds = ["set_role", "reset_role"]
overrides = ["builtin:session-fence"]

[[policy.rules]]
name = "dba-dblink"
action = "allow"
groups = ["dba"]
functions = ["dblink"]
overrides = ["builtin:dangerous-function", "builtin:dynamic-sql"]
"#;

fn target(name: &str, protocol: Protocol, env: &str) -> Target {
    Target {
        name: name.to_owned(),
        protocol,
        host: "127.0.0.1".into(),
        port: 5432,
        database: name.to_owned(),
        user: "svc".into(),
        password: None,
        tls: UpstreamTls::Disable,
        labels: BTreeMap::from([("env".to_owned(), env.to_owned())]),
    }
}

fn targets() -> Vec<Target> {
    vec![
        target("app-prod", Protocol::Postgres, "prod"),
        target("app-dev", Protocol::Postgres, "dev"),
        target("docs", Protocol::Postgres, "prod"),
        target("other", Protocol::Postgres, "prod"),
        target("shop", Protocol::Mysql, "prod"),
    ]
}

fn identity(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        auth_method: AuthMethod::Jwt,
        claims: BTreeMap::new(),
    }
}

fn engine(text: &str) -> RuleEngine {
    RuleEngine::new(RuleSet::from_toml(text).unwrap_or_else(|e| panic!("{e:?}")))
}

use Decision::{Allow, Deny, NeedsApproval as Approval};

/// (subject, groups, target, sql, decision, rule, why)
type Row = (
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
    Decision,
    &'static str,
    &'static str,
);

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // Access and the default allow.
    ("ann", &["analyst"], "app-prod", "select * from orders", Allow, "analysts-read", "a read needs no rule; the access rule is named"),
    ("dan", &["dev"], "app-prod", "delete from orders where id = 5", Allow, "devs", "a real WHERE passes"),
    ("eve", &[], "docs", "select 1", Allow, "everyone-docs", "groups = [\"*\"] admits identities without groups"),
    ("", &[], "app-prod", "   -- only a comment", Deny, "builtin:no-access", "no access rule admits an identity without groups to app-prod"),
    // Read-only built-in.
    ("ann", &["analyst"], "app-prod", "insert into orders values (1)", Deny, "builtin:read-only", "a write in a read-only session"),
    ("ann", &["analyst"], "app-prod", "select * from orders for update", Deny, "builtin:read-only", "row locks are not reads"),
    ("ann", &["analyst"], "app-prod", "explain select * from orders", Allow, "analysts-read", "plain EXPLAIN only plans"),
    ("ann", &["analyst"], "app-prod", "explain analyze delete from orders where id = 1", Deny, "builtin:read-only", "EXPLAIN ANALYZE runs the write"),
    ("ann", &["analyst"], "app-prod", "with d as (delete from orders where id = 1 returning *) select * from d", Deny, "builtin:read-only", "a write hidden in a CTE"),
    ("ann", &["analyst"], "app-prod", "do $$ begin perform 1; end $$", Deny, "builtin:read-only", "procedural code may do anything"),
    ("ann", &["analyst"], "app-prod", "vacuum orders", Deny, "builtin:read-only", "maintenance is not a read"),
    ("ann", &["analyst"], "app-prod", "begin", Allow, "analysts-read", "transactions are fine"),
    ("ann", &["analyst"], "app-prod", "begin read only", Allow, "analysts-read", "a read-only transaction is fine"),
    ("ann", &["analyst"], "app-prod", "begin read write", Deny, "builtin:read-only", "READ WRITE lifts the upstream fence"),
    ("ann", &["analyst"], "app-prod", "start transaction isolation level serializable, read /* x */ write", Deny, "builtin:read-only", "READ WRITE behind a comment"),
    ("ann", &["analyst"], "app-prod", "set session characteristics as transaction read write", Deny, "builtin:read-only", "session default READ WRITE"),
    ("ann", &["analyst"], "app-prod", "set default_transaction_read_only = off", Deny, "builtin:read-only", "the fence's own setting"),
    ("ann", &["analyst"], "app-prod", "set transaction_read_only = off", Deny, "builtin:read-only", "the fence's own setting, per transaction"),
    ("ann", &["analyst"], "app-prod", "set search_path = reporting, public", Allow, "analysts-read", "harmless SETs pass"),
    ("ann", &["analyst"], "app-prod", "show search_path", Allow, "analysts-read", "SHOW reads"),
    ("ann", &["analyst"], "app-prod", "declare c cursor for select 1", Allow, "analysts-read", "cursors over reads"),
    ("ann", &["analyst"], "app-prod", "select my_writing_function()", Allow, "analysts-read", "invisible writes are the upstream fence's job"),
    // Deny beats approval beats allow.
    ("dan", &["dev"], "app-prod", "drop table orders", Deny, "no-drop-in-prod", "deny beats the DDL approval"),
    ("dot", &["dba"], "app-prod", "drop table orders", Approval, "approve-ddl", "except_groups lifts the deny; approval remains"),
    ("dan", &["dev"], "app-dev", "drop table orders", Approval, "approve-ddl", "labels: the deny is for env=prod only"),
    ("dan", &["dev"], "app-prod", "truncate orders", Deny, "no-drop-in-prod", "truncate is listed too"),
    ("dan", &["dev"], "app-prod", "update billing.payments set amount = 0 where id = 1", Approval, "approve-payments", "writes to the payments table"),
    ("dan", &["dev"], "app-prod", "select * from billing.payments", Allow, "devs", "reading it is not a write"),
    ("dan", &["dev"], "app-prod", "update billing.payments set amount = 0", Deny, "no-unfiltered-delete", "deny beats approval"),
    // filter = "missing".
    ("dan", &["dev"], "app-prod", "delete from orders", Deny, "no-unfiltered-delete", "no WHERE"),
    ("dan", &["dev"], "app-prod", "delete from orders where 1 = 1", Deny, "no-unfiltered-delete", "trivial WHERE"),
    ("dan", &["dev"], "app-prod", "update orders set x = 1 where true", Deny, "no-unfiltered-delete", "WHERE true"),
    ("dan", &["dev"], "app-prod", "DeLeTe/**/FROM orders", Deny, "no-unfiltered-delete", "case and comments change nothing"),
    // Objects: qualified, unqualified, case.
    ("dan", &["dev"], "app-prod", "select * from vault.secrets", Deny, "protect-secrets", "qualified"),
    ("dan", &["dev"], "app-prod", "select * from secrets", Deny, "protect-secrets", "unqualified: search_path cannot fool a deny rule"),
    ("dan", &["dev"], "app-prod", "select * from \"VAULT\".\"SECRETS\"", Deny, "protect-secrets", "restricting rules ignore case"),
    ("dan", &["dev"], "app-prod", "select * from public.secrets", Allow, "devs", "another schema is another table"),
    ("dan", &["dev"], "app-prod", "insert into sandbox.scratch values (1)", Allow, "allow-sandbox", "an allow rule names itself"),
    ("dan", &["dev"], "app-prod", "insert into scratch values (1)", Allow, "devs", "allow rules do not widen through unqualified names"),
    // Functions and subjects.
    ("mallory", &["dev"], "app-prod", "select pg_sleep(10)", Deny, "no-sleep-for-mallory", "subjects"),
    ("dan", &["dev"], "app-prod", "select pg_sleep(10)", Allow, "devs", "the rule is for mallory only"),
    // Multi-statement: the strictest statement wins.
    ("ann", &["analyst"], "app-prod", "select 1; drop table orders", Deny, "no-drop-in-prod", "smuggled DROP"),
    ("dan", &["dev"], "app-dev", "select 1; create table t (a int); delete from t", Deny, "no-unfiltered-delete", "deny beats the approval of the second"),
    ("dan", &["dev"], "app-dev", "select 1; create table t (a int)", Approval, "approve-ddl", "approval beats allow"),
    // Session fences, for everyone.
    ("dan", &["dev"], "app-prod", "set role postgres", Deny, "builtin:session-fence", "SET ROLE"),
    ("dan", &["dev"], "app-prod", "reset role", Deny, "builtin:session-fence", "RESET ROLE"),
    ("dan", &["dev"], "app-prod", "set session authorization postgres", Deny, "builtin:session-fence", "SET SESSION AUTHORIZATION"),
    ("dan", &["dev"], "app-prod", "select set_config('role', 'postgres', false)", Deny, "builtin:session-fence", "set_config"),
    ("dan", &["dev"], "app-prod", "select pg_catalog.set_config('application_name', 'x', false)", Deny, "builtin:session-fence", "set_config, qualified"),
    ("dan", &["dev"], "app-prod", "set application_name = 'PostgreSQL JDBC Driver'", Allow, "devs", "drivers set it; protect_application_name is off by default"),
    ("dan", &["dev"], "app-prod", "set standard_conforming_strings = off", Deny, "builtin:session-fence", "changes how strings are read"),
    ("dan", &["dev"], "app-prod", "set client_encoding = 'SJIS'", Deny, "builtin:session-fence", "changes how bytes are read"),
    ("dan", &["dev"], "app-prod", "set default_transaction_read_only = off", Allow, "devs", "a read-write session has no read-only fence to lift"),
    ("dot", &["dba"], "app-prod", "set role postgres", Allow, "dba-may-set-role", "an allow rule lifts the fence explicitly"),
    // Dangerous functions and server files.
    ("dan", &["dev"], "app-prod", "select pg_read_file('/etc/passwd')", Deny, "builtin:dangerous-function", "default list"),
    ("dan", &["dev"], "app-prod", "select * from pg_catalog.pg_read_file('/etc/passwd')", Deny, "builtin:dangerous-function", "qualified"),
    ("dan", &["dev"], "app-prod", "select query_to_xml('delete from orders', true, false, '')", Deny, "no-drop-in-prod", "SQL hidden in a string could be anything: the first deny rule applies"),
    ("dan", &["dev"], "app-dev", "select query_to_xml('delete from orders', true, false, '')", Deny, "no-unfiltered-delete", "SQL hidden in a string could be an unfiltered delete"),
    ("dot", &["dba"], "app-prod", "select * from dblink('host=x', 'select 1') as t(a int)", Allow, "dba-dblink", "lifted for dblink"),
    ("dot", &["dba"], "app-prod", "select dblink_exec('host=x', 'drop table t')", Deny, "no-unfiltered-delete", "only dblink was lifted: the string could be anything"),
    ("dan", &["dev"], "app-prod", "copy orders to program 'id'", Deny, "builtin:server-files", "runs a program"),
    ("dan", &["dev"], "app-prod", "copy orders from '/etc/passwd'", Deny, "builtin:server-files", "reads a server file"),
    ("dan", &["dev"], "app-prod", "copy orders to stdout", Allow, "devs", "COPY to the client is fine"),
    // Unparsable.
    ("dan", &["dev"], "app-prod", "selec 1", Deny, "builtin:syntax-error", "fail closed, as the server's syntax error"),
    ("dan", &["dev"], "app-prod", "select 1; selec 2", Deny, "builtin:syntax-error", "one bad statement fails the text"),
    ("dan", &["dev"], "app-prod", "select 1 \0", Deny, "builtin:unparsable", "a NUL byte is not a syntax error: the gateway cannot read it"),
    ("dan", &["dev"], "shop", "selec 1", Deny, "builtin:unparsable", "sqlparser is not MySQL's grammar: never claimed as the server's syntax error"),
    // MySQL.
    ("dan", &["dev"], "shop", "delete from orders", Deny, "no-unfiltered-delete", "same rules, other dialect"),
    ("dan", &["dev"], "shop", "set sql_mode = 'ANSI_QUOTES'", Allow, "devs", "the MySQL module reads the new sql_mode back before the next text"),
    ("dan", &["dev"], "shop", "set sql_mode = 'ANSI_QUOTES'; select \"x\" from orders", Deny, "builtin:session-fence", "the rest of the text would be read under a mode the judgement did not use"),
    ("dan", &["dev"], "shop", "set names gbk; select 1", Deny, "builtin:session-fence", "a character set change mid-text"),
    ("dan", &["dev"], "shop", "set @@session.character_set_client = 'sjis'; select 1", Deny, "builtin:session-fence", "the client character set, by its variable"),
    ("dan", &["dev"], "shop", "select 1; set names utf8mb4", Allow, "devs", "a change at the end of the text"),
    ("dan", &["dev"], "shop", "prepare s from 'delete from orders'", Deny, "no-unfiltered-delete", "PREPARE judged by the text it prepares"),
    ("dan", &["dev"], "shop", "prepare s from @q", Deny, "no-drop-in-prod", "PREPARE from a variable could be anything: the first deny rule applies"),
    ("dan", &["dev"], "shop", "analyze delete from orders", Deny, "builtin:unparsable", "MariaDB's ANALYZE runs the statement it analyses: refused, not run unjudged"),
    ("sam", &["shop-reader"], "shop", "analyze update orders set x = 1 where id = 1", Deny, "builtin:unparsable", "a write under ANALYZE too"),
    ("sam", &["shop-reader"], "shop", "analyze table orders", Deny, "builtin:read-only", "ANALYZE TABLE updates statistics"),
    ("dan", &["dev"], "shop", "execute immediate @q", Deny, "no-drop-in-prod", "so could EXECUTE IMMEDIATE of a variable"),
    ("dan", &["dev"], "shop", "execute immediate concat('dele', 'te from orders')", Deny, "no-drop-in-prod", "or of an expression"),
    ("dan", &["dev"], "shop", "execute immediate 'delete from orders'", Deny, "no-unfiltered-delete", "MariaDB's EXECUTE IMMEDIATE of a literal"),
    ("dan", &["dev"], "shop", "create procedure p() begin delete from orders; end", Deny, "no-unfiltered-delete", "a procedure is judged by what its body will run"),
    ("dan", &["dev"], "shop", "create trigger t before insert on orders for each row delete from orders", Deny, "no-unfiltered-delete", "so is a trigger"),
    ("dan", &["dev"], "shop", "create event e on schedule every 1 hour do delete from orders", Deny, "no-unfiltered-delete", "and an event"),
    ("dan", &["dev"], "shop", "create procedure p(in x int) begin declare c cursor for select * from orders where id = x; if x > 0 then update orders set n = n + 1 where id = x; end if; end; call p(1)", Approval, "approve-ddl", "a body of filtered statements is DDL like any other; the text goes on after its END"),
    ("dan", &["dev"], "shop", "create procedure p() begin if (select count(*) from orders) > 0 then delete from orders; end if; end", Deny, "no-unfiltered-delete", "a statement in a branch counts"),
    ("dan", &["dev"], "shop", "create function f(a int) returns int reads sql data return (select count(*) from orders where id = a)", Approval, "approve-ddl", "a function's RETURN expression"),
    ("dan", &["dev"], "shop", "create procedure p() begin frobnicate the widgets; end", Deny, "no-drop-in-prod", "a body statement the reader cannot read could be anything"),
    ("dan", &["dev"], "shop", "create function f returns string soname 'udf.so'", Deny, "no-drop-in-prod", "native code from a shared library could be anything"),
    ("sam", &["shop-reader"], "shop", "create procedure p() select 1", Deny, "builtin:read-only", "creating a routine is DDL"),
    ("dan", &["dev"], "shop", "set global max_connections = 10", Allow, "devs", "server-wide settings are administration, allowed for read-write access"),
    ("sam", &["shop-reader"], "shop", "set global max_connections = 10", Deny, "builtin:read-only", "but not for a read-only identity"),
    ("sam", &["shop-reader"], "shop", "set @@global.max_connections = 10", Deny, "builtin:read-only", "by the variable's scope"),
    ("sam", &["shop-reader"], "shop", "set @@session.sql_select_limit = 10", Allow, "shop-readers", "a session's own setting"),
    ("dan", &["dev"], "app-prod", "set standard_conforming_strings = off", Deny, "builtin:session-fence", "PostgreSQL: refused even alone"),
    ("dan", &["dev"], "shop", "select * into outfile '/tmp/x' from orders", Deny, "builtin:server-files", "writes a server file"),
    ("dan", &["dev"], "shop", "select load_file('/etc/passwd')", Deny, "builtin:dangerous-function", "reads a server file"),
    ("dan", &["dev"], "shop", "select * from orders where id = 1", Allow, "devs", "plain read"),
    ("sam", &["shop-reader"], "shop", "SET STATEMENT max_statement_time=10 FOR select * from orders where id = 1", Allow, "shop-readers", "MariaDB Connector/J's setQueryTimeout: judged as the statement it runs"),
    ("sam", &["shop-reader"], "shop", "set statement max_statement_time = 1 for update orders set x = 1 where id = 1", Deny, "builtin:read-only", "a write under SET STATEMENT is still a write"),
    ("dan", &["dev"], "shop", "set statement max_statement_time=1, sql_mode='' for delete from orders", Deny, "no-unfiltered-delete", "the inner statement meets every rule"),
    ("dan", &["dev"], "shop", "set statement max_statement_time=1 for prepare s from @q", Deny, "no-drop-in-prod", "an inner statement read from its tokens"),
    ("dan", &["dev"], "shop", "set statement sql_mode='ANSI_QUOTES' for select 1; select \"x\" from orders", Allow, "devs", "a statement's own sql_mode changes how nothing is read"),
    ("dan", &["dev"], "shop", "set statement character_set_client=sjis for select 1", Deny, "builtin:unparsable", "MariaDB refuses it; so does the reader"),
    ("dan", &["dev"], "shop", "set statement max_statement_time=1 for", Deny, "builtin:unparsable", "no statement"),
];

fn judge_row(
    engine: &RuleEngine,
    row: &Row,
    settings: &SqlSettings,
) -> Arc<gateway_core::Judgement> {
    let (subject, groups, target_name, sql, ..) = *row;
    let id = identity(subject, groups);
    let targets = targets();
    let target = targets.iter().find(|t| t.name == target_name).unwrap();
    let access = engine.access(&id, target).unwrap_or(Access::ReadOnly);
    let ctx = StatementContext {
        identity: &id,
        target,
        access,
        settings,
    };
    engine.judge(&ctx, sql)
}

#[test]
fn decision_table() {
    let engine = engine(RULES);
    let settings = SqlSettings::default();
    let mut failures = Vec::new();
    for row in ROWS {
        let (subject, _, target, sql, decision, rule, why) = *row;
        let j = judge_row(&engine, row, &settings);
        let v = &j.verdict;
        if v.decision != decision || v.rule.as_deref() != Some(rule) {
            failures.push(format!(
                "{subject}@{target}: {sql:?} ({why}): expected {decision:?} by {rule}, got {:?} by {:?}: {:?}",
                v.decision, v.rule, v.reason
            ));
        }
        if decision != Allow && v.reason.as_deref().is_none_or(str::is_empty) {
            failures.push(format!("{sql:?}: a refusal must carry a reason"));
        }
        // The cached answer is the same answer.
        let again = judge_row(&engine, row, &settings);
        assert!(
            Arc::ptr_eq(&j, &again),
            "{sql:?}: the second judgement must come from the cache"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        ROWS.len(),
        failures.join("\n")
    );
}

#[test]
fn access_decisions() {
    let engine = engine(RULES);
    let t = targets();
    let by = |name: &str| t.iter().find(|x| x.name == name).unwrap();
    assert_eq!(
        engine
            .access(&identity("ann", &["analyst"]), by("app-prod"))
            .unwrap(),
        Access::ReadOnly
    );
    assert_eq!(
        engine
            .access(&identity("ann", &["analyst", "dev"]), by("app-prod"))
            .unwrap(),
        Access::ReadOnly,
        "first match wins"
    );
    assert_eq!(
        engine
            .access(&identity("dan", &["dev"]), by("other"))
            .unwrap(),
        Access::ReadWrite
    );
    let refused = engine
        .access(&identity("ann", &["analyst"]), by("other"))
        .unwrap_err();
    assert_eq!(refused.kind, gateway_core::ErrorKind::AccessDenied);
    assert!(
        refused.rule.is_none(),
        "a refusal for lack of a rule names no rule"
    );
    assert!(
        refused.message.contains("\"ann\"") && refused.message.contains("\"other\""),
        "{}",
        refused.message
    );
    assert!(
        engine
            .access(&identity("carl", &["contractor"]), by("docs"))
            .is_err(),
        "except_groups"
    );
}

#[test]
fn reasons_and_classifications() {
    let engine = engine(RULES);
    let s = SqlSettings::default();
    let j = judge_row(
        &engine,
        &(
            "dan",
            &["dev"],
            "app-prod",
            "drop table orders",
            Deny,
            "",
            "",
        ),
        &s,
    );
    assert_eq!(
        j.verdict.reason.as_deref(),
        Some("Dropping tables in production is not allowed")
    );
    assert_eq!(j.classification.as_deref(), Some("ddl:drop"));
    let j = judge_row(
        &engine,
        &(
            "dan",
            &["dev"],
            "app-prod",
            "select 1; delete from orders",
            Deny,
            "",
            "",
        ),
        &s,
    );
    assert_eq!(j.classification.as_deref(), Some("read; write:delete"));
    assert_eq!(
        j.verdict.reason.as_deref(),
        Some("statement 2 of 2 (write:delete): DELETE and UPDATE need a WHERE clause")
    );
    let j = judge_row(
        &engine,
        &("dan", &["dev"], "app-prod", "select * from", Deny, "", ""),
        &s,
    );
    // The server's own words and error cursor (1-based, in characters: just past the end).
    assert_eq!(
        j.verdict.reason.as_deref(),
        Some("syntax error at end of input")
    );
    let syntax = j.verdict.syntax_error.as_deref().expect("a syntax error");
    assert_eq!(syntax.message, "syntax error at end of input");
    assert_eq!(syntax.position, Some(14));
    assert_eq!(j.verdict.rule.as_deref(), Some("builtin:syntax-error"));
    // Positions count characters, not bytes.
    let j = judge_row(
        &engine,
        &("dan", &["dev"], "app-prod", "select 'é€', )", Deny, "", ""),
        &s,
    );
    let syntax = j
        .verdict
        .syntax_error
        .as_deref()
        .unwrap_or_else(|| panic!("a syntax error: {:?}", j.verdict));
    assert_eq!(syntax.message, "syntax error at or near \")\"");
    assert_eq!(syntax.position, Some(14));
    let j = judge_row(
        &engine,
        &(
            "dan",
            &["dev"],
            "app-dev",
            "create table t (a int)",
            Approval,
            "",
            "",
        ),
        &s,
    );
    assert_eq!(
        j.verdict.reason.as_deref(),
        Some("approval is required: schema changes need a second pair of eyes")
    );
    let j = judge_row(
        &engine,
        &(
            "ann",
            &["analyst"],
            "app-prod",
            "insert into orders values (1)",
            Deny,
            "",
            "",
        ),
        &s,
    );
    assert_eq!(
        j.verdict.reason.as_deref(),
        Some("your access to target \"app-prod\" is read-only: this statement is write:insert")
    );
    assert_eq!(j.classification.as_deref(), Some("write:insert"));
}

#[test]
fn standard_conforming_strings_off_fails_closed() {
    let engine = engine(RULES);
    let off = SqlSettings {
        standard_conforming_strings: false,
        ..SqlSettings::default()
    };
    let j = judge_row(
        &engine,
        &("dan", &["dev"], "app-prod", "select 1", Allow, "", ""),
        &off,
    );
    assert_eq!(
        (j.verdict.decision, j.verdict.rule.as_deref()),
        (Deny, Some("builtin:reading-settings"))
    );
    assert!(j
        .verdict
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("standard_conforming_strings is off"));
    // MySQL has no such setting; the flag is ignored there.
    let j = judge_row(
        &engine,
        &("dan", &["dev"], "shop", "select 1", Allow, "", ""),
        &off,
    );
    assert_eq!(j.verdict.decision, Allow);
}

#[test]
fn unparsable_allow() {
    let engine = engine("[policy]\nunparsable = \"allow\"\n[[policy.access]]\nname = \"all\"\ngroups = [\"*\"]\nmode = \"read-write\"\n");
    let j = judge_row(
        &engine,
        &("dan", &[], "app-prod", "selec 1", Allow, "", ""),
        &SqlSettings::default(),
    );
    assert_eq!(
        (j.verdict.decision, j.verdict.rule.as_deref()),
        (Allow, Some("builtin:unparsable"))
    );
    assert_eq!(j.classification.as_deref(), Some("unparsed"));
    assert!(
        j.verdict.syntax_error.is_none(),
        "let through: the server gives its own syntax error"
    );
}

const DYNAMIC_RULES: &str = r#"
[policy]
[[policy.access]]
name = "rw"
groups = ["dev", "ops", "dba"]
mode = "read-write"

[[policy.access]]
name = "analysts"
groups = ["analyst"]
mode = "read-only"

[[policy.rules]]
name = "no-payment-writes"
action = "deny"
groups = ["dev"]
writes = ["billing.payments"]
message = "payments are written by the billing service only"

[[policy.rules]]
name = "approve-deletes"
action = "require-approval"
groups = ["ops"]
kinds = ["delete"]

[[policy.rules]]
name = "ops-guardrails-lifted"
action = "allow"
groups = ["ops"]
kinds = ["dynamic_sql"]
overrides = ["builtin:session-fence", "builtin:dangerous-function", "builtin:server-files"]

[[policy.rules]]
name = "dba-dynamic"
action = "allow"
groups = ["dba"]
kinds = ["dynamic_sql"]
overrides = ["builtin:dynamic-sql", "builtin:dangerous-function"]

[[policy.rules]]
name = "dynamic-on-dev"
action = "allow"
targets = ["app-dev"]
overrides = ["builtin:dynamic-sql"]
"#;

/// SQL built at run time could be anything: every restricting rule applies to it, whatever it
/// names, unless an allow rule lifts `builtin:dynamic-sql` for that identity or target.
#[rustfmt::skip]
const DYNAMIC_ROWS: &[Row] = &[
    ("dan", &["dev"], "app-prod", "do $$ begin execute 'update billing.payments set amount = 0'; end $$", Deny, "no-payment-writes", "the string writes payments"),
    ("dan", &["dev"], "app-prod", "do $$ begin execute 'select 1'; end $$", Deny, "no-payment-writes", "a literal string is no safer: it is a value like any other"),
    ("dan", &["dev"], "app-prod", "do $$ begin execute format('delete from %I', 'orders'); end $$", Deny, "no-payment-writes", "EXECUTE format(...)"),
    ("dan", &["dev"], "app-prod", "do $$ declare r record; begin for r in execute 'select 1' loop end loop; end $$", Deny, "no-payment-writes", "FOR ... IN EXECUTE"),
    ("dan", &["dev"], "app-prod", "do $$ declare c refcursor; begin open c for execute 'select 1'; end $$", Deny, "no-payment-writes", "OPEN ... FOR EXECUTE"),
    ("dan", &["dev"], "app-prod", "create function f() returns setof int language plpgsql as $f$ begin return query execute 'select 1'; end $f$", Deny, "no-payment-writes", "RETURN QUERY EXECUTE in a function body"),
    ("dan", &["dev"], "app-prod", "create function f() returns int language plpython3u as $f$ return 1 $f$", Deny, "no-payment-writes", "a body in a language the gateway cannot read"),
    ("dan", &["dev"], "app-prod", "do language plperl $$ spi_exec_query('select 1') $$", Deny, "no-payment-writes", "DO in PL/Perl"),
    ("dan", &["dev"], "app-prod", "select * from dblink('dbname=app', 'select 1') as t(a int)", Deny, "no-payment-writes", "dblink runs a string"),
    ("dan", &["dev"], "app-prod", "select query_to_xml('select 1', true, false, '')", Deny, "no-payment-writes", "query_to_xml runs a string"),
    ("dan", &["dev"], "app-prod", "do $$ begin update orders set x = 1 where id = 1; end $$", Allow, "rw", "static PL/pgSQL is read, not assumed"),
    ("dan", &["dev"], "app-prod", "do $$ begin update billing.payments set amount = 0 where id = 1; end $$", Deny, "no-payment-writes", "static PL/pgSQL is judged by what it does"),
    ("dan", &["dev"], "app-prod", "prepare p as update orders set x = 1 where id = 1", Allow, "rw", "SQL-level PREPARE is judged by its statement"),
    ("dan", &["dev"], "app-prod", "execute p", Allow, "rw", "SQL-level EXECUTE runs what was judged at PREPARE"),
    ("dan", &["dev"], "app-prod", "select format('update billing.payments set amount = %s', 0)", Allow, "rw", "building a string runs nothing"),
    ("dan", &["dev"], "app-dev", "do $$ begin execute 'select 1'; end $$", Allow, "dynamic-on-dev", "lifted for a target"),
    ("dan", &["dev"], "app-dev", "do $$ begin execute 'select 1'; update billing.payments set amount = 0 where id = 1; end $$", Deny, "no-payment-writes", "lifted: judged by what is visible, which still writes payments"),
    ("dot", &["dba"], "app-prod", "do $$ begin execute 'update billing.payments set amount = 0'; end $$", Allow, "dba-dynamic", "lifted for a group"),
    ("dot", &["dba"], "app-prod", "select * from dblink('dbname=app', 'select 1') as t(a int)", Allow, "dba-dynamic", "lifted for a group, with the dangerous-function guardrail"),
    ("oscar", &["ops"], "app-prod", "do $$ begin execute 'select 1'; end $$", Approval, "approve-deletes", "require-approval rules apply whatever they name"),
    ("oscar", &["ops"], "app-prod", "do $$ begin delete from orders where id = 1; end $$", Approval, "approve-deletes", "a visible delete, as always"),
    ("oscar", &["ops"], "app-prod", "do $$ begin perform 1; end $$", Allow, "rw", "no dynamic SQL, no delete"),
    ("eve", &["dev", "ops"], "app-prod", "do $$ begin execute 'select 1'; end $$", Deny, "no-payment-writes", "deny still beats approval"),
    ("ann", &["analyst"], "app-prod", "do $$ begin execute 'select 1'; end $$", Deny, "builtin:read-only", "procedural code in a read-only session"),
    ("ann", &["analyst"], "app-prod", "select query_to_xml('select 1', true, false, '')", Deny, "builtin:read-only", "a function running a string is procedural, not a read"),
];

#[test]
fn dynamic_sql_could_be_anything() {
    let engine = engine(DYNAMIC_RULES);
    let settings = SqlSettings::default();
    let mut failures = Vec::new();
    for row in DYNAMIC_ROWS {
        let (subject, _, target, sql, decision, rule, why) = *row;
        let v = judge_row(&engine, row, &settings).verdict.clone();
        if v.decision != decision || v.rule.as_deref() != Some(rule) {
            failures.push(format!(
                "{subject}@{target}: {sql:?} ({why}): expected {decision:?} by {rule}, got {:?} by {:?}: {:?}",
                v.decision, v.rule, v.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dynamic_sql_meets_the_guardrails_unless_lifted() {
    // No statement rules at all: the built-in guardrails are deny rules too, and the hidden SQL
    // could step around any of them (SET ROLE, pg_read_file, COPY ... PROGRAM).
    let engine = engine(
        "[policy]\n[[policy.access]]\nname = \"all\"\ngroups = [\"*\"]\nmode = \"read-write\"\n",
    );
    let row: Row = (
        "dan",
        &["dev"],
        "app-prod",
        "do $$ begin execute 'set role postgres'; end $$",
        Deny,
        "",
        "",
    );
    let v = judge_row(&engine, &row, &SqlSettings::default())
        .verdict
        .clone();
    assert_eq!(v.rule.as_deref(), Some("builtin:session-fence"));
    let reason = v.reason.unwrap_or_default();
    assert!(
        reason.contains("built at run time") && reason.contains("builtin:dynamic-sql"),
        "{reason}"
    );
    // The reason of a user rule that matched only because the SQL is hidden says so.
    let engine = self::engine(DYNAMIC_RULES);
    let row: Row = (
        "dan",
        &["dev"],
        "app-prod",
        "do $$ begin execute 'select 1'; end $$",
        Deny,
        "",
        "",
    );
    let reason = judge_row(&engine, &row, &SqlSettings::default())
        .verdict
        .reason
        .clone()
        .unwrap_or_default();
    assert!(reason.starts_with("payments are written by the billing service only (this statement runs SQL built at run time"), "{reason}");
}

#[test]
fn protect_application_name() {
    let engine = engine(
        "[policy]\nprotect_application_name = true\n[[policy.access]]\nname = \"all\"\ngroups = [\"*\"]\nmode = \"read-write\"\n",
    );
    let row: Row = (
        "dan",
        &[],
        "app-prod",
        "set application_name = 'someone else'",
        Allow,
        "",
        "",
    );
    let j = judge_row(&engine, &row, &SqlSettings::default());
    assert_eq!(
        (j.verdict.decision, j.verdict.rule.as_deref()),
        (Deny, Some("builtin:session-fence"))
    );
}

#[test]
fn dangerous_function_list_and_switch() {
    let access = "[[policy.access]]\nname = \"all\"\ngroups = [\"*\"]\nmode = \"read-write\"\n";
    let s = SqlSettings::default();
    let replaced = engine(&format!(
        "[policy]\ndangerous_functions = [\"pg_sleep\"]\n{access}"
    ));
    let row = |sql: &'static str| -> Row { ("dan", &[], "app-prod", sql, Allow, "", "") };
    assert_eq!(
        judge_row(&replaced, &row("select pg_sleep(1)"), &s)
            .verdict
            .decision,
        Deny
    );
    assert_eq!(
        judge_row(&replaced, &row("select pg_read_file('x')"), &s)
            .verdict
            .decision,
        Allow,
        "the key replaces the default list"
    );
    let off = engine(&format!(
        "[policy]\ndeny_dangerous_functions = false\n{access}"
    ));
    assert_eq!(
        judge_row(&off, &row("select pg_read_file('x')"), &s)
            .verdict
            .decision,
        Allow
    );
}

#[test]
fn a_stricter_policy_applies_to_open_sessions_at_once() {
    let engine = engine(RULES);
    let id = identity("ann", &["analyst"]);
    let t = targets();
    let target = t.iter().find(|x| x.name == "app-prod").unwrap();
    // The session was admitted read-write under an earlier policy; now the rule says read-only.
    let ctx = StatementContext {
        identity: &id,
        target,
        access: Access::ReadWrite,
        settings: &SqlSettings::default(),
    };
    let j = engine.judge(&ctx, "insert into orders values (1)");
    assert_eq!(j.verdict.rule.as_deref(), Some("builtin:read-only"));
}

#[test]
fn judgements_carry_the_lineage_of_the_analysis() {
    let engine = engine(RULES);
    let id = identity("ann", &["analyst"]);
    let t = targets();
    let target = t.iter().find(|x| x.name == "app-prod").unwrap();
    let ctx = StatementContext {
        identity: &id,
        target,
        access: Access::ReadOnly,
        settings: &SqlSettings::default(),
    };
    let reading = crate::analysis::ReadingContext::new(crate::analysis::Dialect::Postgres);
    // Allowed, denied by a rule, and denied by a guardrail: each carries the text's lineage.
    for sql in [
        "select id from orders where id = 1; select 2",
        "insert into orders values (1)",
        "delete from orders",
    ] {
        let j = engine.judge(&ctx, sql);
        let lineage = j
            .lineage
            .as_deref()
            .unwrap_or_else(|| panic!("{sql}: no lineage"));
        assert_eq!(
            Some(lineage),
            crate::analysis::lineage(sql, &reading).as_ref(),
            "{sql}"
        );
    }
    let j = engine.judge(&ctx, "selec 1");
    assert!(
        j.lineage.is_none(),
        "a text that does not parse has no lineage"
    );
}

#[test]
fn default_schema_is_part_of_the_cache_key() {
    let engine = engine(RULES);
    let row: Row = (
        "dan",
        &["dev"],
        "app-prod",
        "insert into scratch values (1)",
        Allow,
        "",
        "",
    );
    let plain = judge_row(&engine, &row, &SqlSettings::default());
    let sandbox = SqlSettings {
        default_schema: Some(Arc::from("sandbox")),
        ..SqlSettings::default()
    };
    let resolved = judge_row(&engine, &row, &sandbox);
    assert_eq!(plain.verdict.rule.as_deref(), Some("devs"));
    assert_eq!(
        resolved.verdict.rule.as_deref(),
        Some("allow-sandbox"),
        "the session resolves it to sandbox.scratch"
    );
}

#[test]
fn replace_swaps_rules_and_clears_caches() {
    let engine = engine(RULES);
    let row: Row = (
        "dan",
        &["dev"],
        "app-prod",
        "select * from orders",
        Allow,
        "",
        "",
    );
    let s = SqlSettings::default();
    assert_eq!(judge_row(&engine, &row, &s).verdict.decision, Allow);
    let stricter = format!(
        "{RULES}\n[[policy.rules]]\nname = \"no-orders\"\naction = \"deny\"\nreads = [\"orders\"]\nmessage = \"orders are closed\"\n"
    );
    engine.replace(RuleSet::from_toml(&stricter).unwrap());
    let j = judge_row(&engine, &row, &s);
    assert_eq!(
        (j.verdict.decision, j.verdict.rule.as_deref()),
        (Deny, Some("no-orders"))
    );
    engine.replace(RuleSet::default());
    let j = judge_row(&engine, &row, &s);
    assert_eq!(
        j.verdict.rule.as_deref(),
        Some("builtin:no-access"),
        "no access rule any more"
    );
}

#[test]
fn explain_matches_judge() {
    let engine = engine(RULES);
    let t = targets();
    let target = t.iter().find(|x| x.name == "app-prod").unwrap();
    let e = engine.explain(
        &identity("ann", &["analyst"]),
        target,
        &SqlSettings::default(),
        "select 1; delete from orders where id = 2",
    );
    assert_eq!(e.access.mode, Some(Access::ReadOnly));
    assert_eq!(e.access.rule.as_deref(), Some("analysts-read"));
    assert_eq!(e.statements.len(), 2);
    assert_eq!(e.statements[0].verdict.decision, Allow);
    assert_eq!(
        e.statements[1].verdict.rule.as_deref(),
        Some("builtin:read-only")
    );
    assert_eq!(e.verdict.rule.as_deref(), Some("builtin:read-only"));
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["statements"][1]["facts"]["kinds"][0], "delete");
    let refused = engine.explain(
        &identity("zed", &[]),
        target,
        &SqlSettings::default(),
        "select 1",
    );
    assert!(refused.access.mode.is_none() && refused.access.reason.is_some());
    assert_eq!(refused.verdict.rule.as_deref(), Some("builtin:no-access"));
}

#[test]
fn rule_set_errors_carry_spans() {
    let text = "[policy]\nunparsable = \"sometimes\"\n[[policy.rules]]\nname = \"r\"\naction = \"deny\"\nobjects = [\"a.b.c\"]\n";
    let errors = RuleSet::from_toml(text).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(&text[errors[0].span.clone()], "\"sometimes\"");
    assert_eq!(&text[errors[1].span.clone()], "\"a.b.c\"");
}

#[test]
fn texts_of_one_shape_share_an_analysis_but_never_a_verdict_that_reads_a_literal() {
    let engine = engine(RULES);
    let settings = SqlSettings::default();
    let id = identity("dan", &["dev"]);
    let targets = targets();
    let target = targets.iter().find(|t| t.name == "app-prod").unwrap();
    let ctx = StatementContext {
        identity: &id,
        target,
        access: Access::ReadWrite,
        settings: &settings,
    };
    let judge = |sql: &str| engine.judge(&ctx, sql);

    // Values in the text: one analysis for the shape, none kept by text.
    for n in 1..=5 {
        let j = judge(&format!("SELECT * FROM vault.secrets WHERE id = {n}"));
        assert_eq!(j.verdict.decision, Deny, "{j:?}");
        assert_eq!(j.verdict.rule.as_deref(), Some("protect-secrets"));
    }
    let state = engine.state.load();
    assert_eq!(state.shapes.len(), 1, "one analysis for five texts");
    assert_eq!(
        state.shape_decisions.len(),
        1,
        "one decision for five texts"
    );
    assert_eq!(state.analyses.len(), 0, "no analysis cached by text");
    assert_eq!(state.decisions.len(), 0, "no decision cached by text");
    // A text that comes again is a repeated statement, not a new value: cached by text too.
    let shared = judge("SELECT * FROM vault.secrets WHERE id = 2");
    assert_eq!(
        state.decisions.len(),
        1,
        "a repeated text is cached by text"
    );
    assert!(Arc::ptr_eq(
        &shared,
        &judge("SELECT * FROM vault.secrets WHERE id = 2")
    ));

    // The same shape, but the verdict rests on the values: each text is analysed on its own.
    let filtered = judge("DELETE FROM t WHERE 1 = 2");
    assert_eq!(filtered.verdict.decision, Allow, "{filtered:?}");
    let unfiltered = judge("DELETE FROM t WHERE 1 = 1");
    assert_eq!(unfiltered.verdict.decision, Deny, "{unfiltered:?}");
    assert_eq!(
        unfiltered.verdict.rule.as_deref(),
        Some("no-unfiltered-delete")
    );
    assert_eq!(state.shapes.len(), 1);
    assert_eq!(state.analyses.len(), 2);
    assert_eq!(state.decisions.len(), 3);

    // The analysis is shared, but a rule reads the text itself: a read-only session may not
    // start a READ WRITE transaction, and the word is looked for in the text. Each text gets its
    // own verdict, in either order.
    let analyst = identity("ann", &["analyst"]);
    let read_only = StatementContext {
        identity: &analyst,
        access: Access::ReadOnly,
        ..ctx
    };
    let judge = |sql: &str| engine.judge(&read_only, sql);
    assert_eq!(judge("BEGIN; SELECT 'read'").verdict.decision, Allow);
    assert_eq!(judge("BEGIN; SELECT 'write'").verdict.decision, Deny);
    assert_eq!(judge("BEGIN; SELECT 'writes'").verdict.decision, Deny);
    assert_eq!(judge("BEGIN; SELECT 'reads'").verdict.decision, Allow);
    assert_eq!(state.shapes.len(), 2, "the analysis is shared");
    assert_eq!(state.shape_decisions.len(), 1, "the decisions are not");
}

/// Every decision-table text with literals, again with other values: what the engine decides
/// through the shape caches must be what it decides for that text on its own (`explain`, which
/// never consults a shape).
/// Where the literal starting at `start` ends: a quoted string at its closing quote (a doubled
/// quote, or with `backslash_escapes` a backslash escape, inside it), a number after its digits.
fn literal_end(sql: &str, start: usize, backslash_escapes: bool) -> usize {
    let bytes = sql.as_bytes();
    if bytes[start] == b'\'' {
        let mut i = start + 1;
        loop {
            match (bytes[i], bytes.get(i + 1)) {
                (b'\'', Some(b'\'')) => i += 2,
                (b'\\', Some(_)) if backslash_escapes => i += 2,
                (b'\'', _) => return i + 1,
                _ => i += 1,
            }
        }
    }
    start
        + bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .count()
}

/// MySQL texts of one shape whose decisions depend on their values: each gets its own, whichever
/// comes first (a folded `WHERE`, the text `EXECUTE IMMEDIATE` runs, a value where no value may be
/// shared).
#[test]
fn mysql_texts_of_one_shape_whose_values_matter_are_judged_alone() {
    let pairs: &[(&str, &str, &str)] = &[
        (
            "delete from orders where 1 = 2",
            "delete from orders where 1 = 1",
            "no-unfiltered-delete",
        ),
        (
            "delete from orders where 'a' = 'b'",
            "delete from orders where 'a' = 'a'",
            "no-unfiltered-delete",
        ),
        (
            "update orders set x = 1 where id in (1, 2) or 1 = 0",
            "update orders set x = 1 where id in (1, 2) or 1 = 1",
            "no-unfiltered-delete",
        ),
        (
            "execute immediate 'select 1'",
            "execute immediate 'delete from orders'",
            "no-unfiltered-delete",
        ),
        (
            "select 1; execute immediate 'select 2'",
            "select 1; execute immediate 'drop table orders'",
            "no-drop-in-prod",
        ),
    ];
    let targets = targets();
    let target = targets.iter().find(|t| t.name == "shop").unwrap();
    let id = identity("dan", &["dev"]);
    let settings = SqlSettings::default();
    let reading = crate::analysis::ReadingContext::new(crate::analysis::Dialect::Mysql);
    for (allowed, denied, rule) in pairs {
        let shape = |sql| crate::analysis::shape(sql, &reading).map(|s| s.key().to_owned());
        assert!(shape(allowed).is_some(), "{allowed:?} has a shape");
        assert_eq!(
            shape(allowed),
            shape(denied),
            "{allowed:?} and {denied:?} share a shape"
        );
        // Both orders, each on a fresh engine.
        for order in [[*allowed, *denied], [*denied, *allowed]] {
            let shared = engine(RULES);
            let access = shared.access(&id, target).unwrap();
            let ctx = StatementContext {
                identity: &id,
                target,
                access,
                settings: &settings,
            };
            for sql in order {
                let judgement = shared.judge(&ctx, sql);
                let expected = if sql == *denied {
                    (Decision::Deny, Some(*rule))
                } else {
                    (Decision::Allow, Some("devs"))
                };
                assert_eq!(
                    (
                        judgement.verdict.decision,
                        judgement.verdict.rule.as_deref()
                    ),
                    expected,
                    "{sql:?} judged after {order:?}"
                );
            }
        }
    }
}

#[test]
fn decisions_by_shape_match_each_texts_own() {
    const VALUES: &[&str] = &[
        "'write'",
        "'read'",
        "1",
        "0",
        "'x'",
        "'1=1'",
        "2.5",
        "'; drop table orders; --'",
        "'*/ drop table orders /*'",
        "'role'",
        "'application_name'",
    ];
    let shared = engine(RULES);
    let targets = targets();
    let settings = SqlSettings::default();
    let mut checked = 0;
    for (n, row) in ROWS.iter().enumerate() {
        let (subject, groups, target_name, sql, ..) = *row;
        let target = targets.iter().find(|t| t.name == target_name).unwrap();
        let reading =
            crate::analysis::ReadingContext::new(super::dialect(target.protocol).unwrap());
        let Some(shape) = crate::analysis::shape(sql, &reading) else {
            continue;
        };
        let id = identity(subject, groups);
        let access = shared.access(&id, target).unwrap_or(Access::ReadOnly);
        let ctx = StatementContext {
            identity: &id,
            target,
            access,
            settings: &settings,
        };
        // Warm the shape caches with the row's own text, then judge other values.
        shared.judge(&ctx, sql);
        for k in 0..6 {
            // The row's text with each literal the shape took out replaced.
            let mut text = String::new();
            let mut from = 0;
            for (i, &start) in shape.literals.iter().enumerate() {
                let end = literal_end(
                    sql,
                    start,
                    reading.dialect == crate::analysis::Dialect::Mysql,
                );
                let string = sql.as_bytes()[start] == b'\'';
                text.push_str(&sql[from..start]);
                let value = VALUES[(n + k * 3 + i) % VALUES.len()];
                // Keep the class: a number where a number was, a string where a string was.
                let value = match (string, value.starts_with('\'')) {
                    (true, true) => value.to_owned(),
                    (true, false) => format!("'{value}'"),
                    (false, _) => (n + k).to_string(),
                };
                text.push_str(&value);
                from = end;
            }
            text.push_str(&sql[from..]);
            let by_shape = shared.judge(&ctx, &text);
            // Lineage never reads a literal: the shape's lineage is the text's own.
            assert_eq!(
                by_shape.lineage.as_deref(),
                crate::analysis::lineage(&text, &reading).as_ref(),
                "{text:?} (a variant of {sql:?})"
            );
            let own = engine(RULES).explain(&id, target, &settings, &text);
            assert_eq!(
                (
                    by_shape.verdict.decision,
                    by_shape.verdict.rule.as_deref(),
                    by_shape.classification.as_deref()
                ),
                (
                    own.verdict.decision,
                    own.verdict.rule.as_deref(),
                    own.classification.as_deref()
                ),
                "{subject}@{target_name}: {text:?} (a variant of {sql:?})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} variants were checked");
}
