//! The PostgreSQL catalog cache against the real local PostgreSQL (127.0.0.1:5432, user postgres,
//! trust). Each test works in a database of its own, dropped at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_core::*;
use proto_postgres::catalog::{APPLICATION_NAME, RECONNECT_BACKOFF};
use proto_postgres::upstream::TlsConfigs;
use proto_postgres::{ListenerConfig, PgCatalog, PostgresListener};
use tokio_postgres::NoTls;

const HOST: &str = "127.0.0.1";
const PORT: u16 = 5432;

async fn connect(database: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host={HOST} port={PORT} user=postgres dbname={database}"),
        NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {database}: {e}"));
    tokio::spawn(conn);
    client
}

/// A database for one test, dropped (with whatever is still connected to it) when this is.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("pc_{now}_{:08x}", rand::random::<u32>());
        let admin = connect("postgres").await;
        // CREATE DATABASE fails while another session happens to be connected to template1.
        for attempt in 0.. {
            match admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 10 => {
                    eprintln!("CREATE DATABASE {name}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("CREATE DATABASE {name}: {e}"),
            }
        }
        TestDb { name }
    }

    fn target(&self) -> Arc<Target> {
        Arc::new(target(&self.name, &self.name, PORT))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-w", "-h", HOST, "-p", &PORT.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "dropping {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("dropping {}: {e}", self.name),
        }
    }
}

fn target(name: &str, database: &str, port: u16) -> Target {
    Target {
        name: name.into(),
        protocol: Protocol::Postgres,
        host: HOST.into(),
        port,
        database: database.into(),
        user: "postgres".into(),
        password: None,
        tls: UpstreamTls::Disable,
        labels: BTreeMap::new(),
    }
}

fn catalog(db: &TestDb) -> PgCatalog {
    PgCatalog::new(db.target(), Arc::default(), Duration::from_secs(30))
}

async fn oid(client: &tokio_postgres::Client, relation: &str) -> u32 {
    client
        .query_one("select $1::text::regclass::oid", &[&relation])
        .await
        .unwrap()
        .get(0)
}

fn names(r: &CatalogRelation) -> Vec<Option<&str>> {
    r.columns.iter().map(|c| c.as_deref()).collect()
}

/// Backends of the catalog connected to `database`.
async fn catalog_backends(admin: &tokio_postgres::Client, database: &str) -> i64 {
    admin
        .query_one(
            "select count(*) from pg_stat_activity where application_name = $1 and datname = $2",
            &[&APPLICATION_NAME, &database],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_table_resolves_by_oid() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute(r#"create schema s; create table s.t (id int, "Email" text, note text);"#)
        .await
        .unwrap();
    let oid = oid(&client, "s.t").await;
    let catalog = catalog(&db);
    let t = catalog.relation_by_oid(oid).await.unwrap().unwrap();
    assert_eq!(t.oid, oid);
    assert_eq!((&*t.schema, &*t.name), ("s", "t"));
    assert_eq!(t.kind, RelationKind::Table);
    assert_eq!(names(&t), [Some("id"), Some("Email"), Some("note")]);
    assert_eq!(t.column(2).map(|c| &**c), Some("Email"));
    assert_eq!(t.definition, None);
    // The same relation, now kept by its name too.
    let named = catalog.relations_named(Some("s"), "t").await.unwrap();
    assert_eq!(named.len(), 1);
    assert!(Arc::ptr_eq(&named[0], &t));
}

#[tokio::test]
async fn a_dropped_column_is_none_at_its_attnum() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute("create table t (a int, b int, c int, d int); alter table t drop column b; alter table t drop column d")
        .await
        .unwrap();
    let catalog = catalog(&db);
    let t = catalog
        .relation_by_oid(oid(&client, "t").await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&t), [Some("a"), None, Some("c"), None]);
    assert_eq!(t.column(2), None);
    assert_eq!(t.column(3).map(|c| &**c), Some("c"));
    assert_eq!(t.live_columns().count(), 2);
}

#[tokio::test]
async fn views_have_their_kind_and_definition() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute(
            "create schema s; create table s.t (id int, secret text);
             create view s.v as select id, upper(secret) as shout from s.t;
             create materialized view s.m as select id from s.t;
             create table s.p (k int) partition by range (k);
             create sequence s.q;
             create table s.empty ();",
        )
        .await
        .unwrap();
    let catalog = catalog(&db);
    let v = catalog
        .relation_by_oid(oid(&client, "s.v").await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.kind, RelationKind::View);
    assert_eq!(names(&v), [Some("id"), Some("shout")]);
    let definition = v.definition.as_deref().unwrap();
    // Qualified: the catalog connection's search path holds no user schema.
    assert!(definition.contains("s.t"), "{definition}");
    assert!(definition.contains("upper"), "{definition}");

    let m = catalog.relations_named(Some("s"), "m").await.unwrap();
    assert_eq!(m[0].kind, RelationKind::MaterializedView);
    assert!(m[0].definition.as_deref().unwrap().contains("s.t"));
    let p = catalog.relations_named(Some("s"), "p").await.unwrap();
    assert_eq!(
        (p[0].kind, p[0].definition.clone()),
        (RelationKind::Table, None)
    );
    let q = catalog.relations_named(Some("s"), "q").await.unwrap();
    assert_eq!(q[0].kind, RelationKind::Other);
    let empty = catalog.relations_named(Some("s"), "empty").await.unwrap();
    assert_eq!(empty[0].kind, RelationKind::Table);
    assert!(empty[0].columns.is_empty());
}

#[tokio::test]
async fn a_name_in_two_schemas_returns_both() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute(
            "create schema b; create schema a;
             create table b.dup (x int); create table a.dup (y int, z int);",
        )
        .await
        .unwrap();
    let catalog = catalog(&db);
    let both = catalog.relations_named(None, "dup").await.unwrap();
    let found: Vec<(&str, Vec<Option<&str>>)> =
        both.iter().map(|r| (&*r.schema, names(r))).collect();
    assert_eq!(
        found,
        [("a", vec![Some("y"), Some("z")]), ("b", vec![Some("x")])]
    );
    let b = catalog.relations_named(Some("b"), "dup").await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].oid, oid(&client, "b.dup").await);
    assert!(catalog
        .relations_named(Some("c"), "dup")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn awkward_names_and_injection_attempts_are_only_values() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute(
            r#"create schema "sch'ema, ü";
               create table "sch'ema, ü"."we""ird, n'ame ü" ("co,l""1" int, "ß'" text);
               create table t (x int);"#,
        )
        .await
        .unwrap();
    let catalog = catalog(&db);
    let found = catalog
        .relations_named(Some("sch'ema, ü"), "we\"ird, n'ame ü")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(names(&found[0]), [Some("co,l\"1"), Some("ß'")]);
    let any = catalog
        .relations_named(None, "we\"ird, n'ame ü")
        .await
        .unwrap();
    assert_eq!(any.len(), 1);
    assert_eq!(&*any[0].schema, "sch'ema, ü");

    let attacks = [
        "x'; drop table t; --",
        "t' or '1'='1",
        "t\"; drop table t; --",
        "$1",
        "t\\",
    ];
    for attack in attacks {
        assert!(
            catalog
                .relations_named(None, attack)
                .await
                .unwrap()
                .is_empty(),
            "{attack}"
        );
        assert!(
            catalog
                .relations_named(Some(attack), "t")
                .await
                .unwrap()
                .is_empty(),
            "{attack}"
        );
    }
    // A NUL cannot be part of a name: nothing, without asking.
    assert!(catalog
        .relations_named(None, "t\0x")
        .await
        .unwrap()
        .is_empty());
    // The table is still there, and the catalog connection still works.
    client
        .query_one("select count(*) from t", &[])
        .await
        .unwrap();
    assert_eq!(
        catalog
            .relations_named(Some("public"), "t")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn an_unknown_oid_is_none() {
    let db = TestDb::create().await;
    let catalog = catalog(&db);
    assert_eq!(catalog.relation_by_oid(4_000_000_000).await.unwrap(), None);
    assert_eq!(catalog.relation_by_oid(0).await.unwrap(), None);
    // And a second time, from the cache.
    assert_eq!(catalog.relation_by_oid(4_000_000_000).await.unwrap(), None);
}

#[tokio::test]
async fn answers_are_kept_until_invalidated() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute("create table t (old_name int)")
        .await
        .unwrap();
    let oid = oid(&client, "t").await;
    let catalog = catalog(&db);
    let before = catalog.relation_by_oid(oid).await.unwrap().unwrap();
    assert_eq!(names(&before), [Some("old_name")]);
    assert!(catalog
        .relations_named(None, "later")
        .await
        .unwrap()
        .is_empty());

    client
        .batch_execute("alter table t rename column old_name to new_name; create table later ()")
        .await
        .unwrap();
    let cached = catalog.relation_by_oid(oid).await.unwrap().unwrap();
    assert_eq!(names(&cached), [Some("old_name")]);
    assert!(catalog
        .relations_named(None, "later")
        .await
        .unwrap()
        .is_empty());

    catalog.invalidate();
    let after = catalog.relation_by_oid(oid).await.unwrap().unwrap();
    assert_eq!(names(&after), [Some("new_name")]);
    assert_eq!(
        catalog.relations_named(None, "later").await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn answers_expire_after_the_refresh_interval() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute("create table t (a int)")
        .await
        .unwrap();
    let catalog = PgCatalog::new(db.target(), Arc::default(), Duration::from_millis(300));
    let t = catalog.relations_named(None, "t").await.unwrap();
    assert_eq!(names(&t[0]), [Some("a")]);
    client
        .batch_execute("alter table t rename column a to b")
        .await
        .unwrap();
    assert_eq!(
        names(&catalog.relations_named(None, "t").await.unwrap()[0]),
        [Some("a")]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        names(&catalog.relations_named(None, "t").await.unwrap()[0]),
        [Some("b")]
    );
}

#[tokio::test]
async fn a_hit_does_not_touch_the_connection_and_a_miss_reconnects() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute("create table t1 (a int); create table t2 (b int)")
        .await
        .unwrap();
    let (t1, t2) = (oid(&client, "t1").await, oid(&client, "t2").await);
    let catalog = catalog(&db);
    let first = catalog.relation_by_oid(t1).await.unwrap().unwrap();

    let admin = connect("postgres").await;
    assert_eq!(catalog_backends(&admin, &db.name).await, 1);
    admin
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
              where application_name = $1 and datname = $2",
            &[&APPLICATION_NAME, &db.name],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while catalog_backends(&admin, &db.name).await > 0 {
        assert!(Instant::now() < deadline, "the backend did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let hit = catalog.relation_by_oid(t1).await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&first, &hit));
    assert_eq!(catalog_backends(&admin, &db.name).await, 0);

    // The kept connection is dead; the miss notices, reconnects at once and answers.
    let miss = catalog.relation_by_oid(t2).await.unwrap().unwrap();
    assert_eq!(names(&miss), [Some("b")]);
    assert_eq!(catalog_backends(&admin, &db.name).await, 1);
}

#[tokio::test]
async fn concurrent_misses_share_one_connection() {
    let db = TestDb::create().await;
    let client = connect(&db.name).await;
    client
        .batch_execute("create table t (a int)")
        .await
        .unwrap();
    let oid = oid(&client, "t").await;
    let catalog = Arc::new(catalog(&db));
    let lookups: Vec<_> = (0..32)
        .map(|i| {
            let catalog = Arc::clone(&catalog);
            tokio::spawn(async move {
                if i % 2 == 0 {
                    catalog.relation_by_oid(oid).await.unwrap().unwrap()
                } else {
                    catalog.relations_named(None, "t").await.unwrap().remove(0)
                }
            })
        })
        .collect();
    for l in lookups {
        assert_eq!(names(&l.await.unwrap()), [Some("a")]);
    }
    let admin = connect("postgres").await;
    assert_eq!(catalog_backends(&admin, &db.name).await, 1);
}

#[tokio::test]
async fn a_closed_port_fails_fast_and_is_retried_after_the_backoff() {
    // A port nothing listens on (bound, then released).
    let port = {
        let l = std::net::TcpListener::bind((HOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let catalog = PgCatalog::new(
        Arc::new(target("down", "postgres", port)),
        Arc::new(TlsConfigs::default()),
        Duration::from_secs(30),
    );
    let started = Instant::now();
    let e = catalog.relation_by_oid(1259).await.unwrap_err();
    assert_eq!(
        (e.kind, e.side),
        (ErrorKind::UpstreamUnavailable, Side::Upstream)
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // Something listens there now, forwarding to the database.
    let listener = tokio::net::TcpListener::bind((HOST, port)).await.unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect((HOST, PORT)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });

    // Within the backoff: refused without an attempt.
    let e = catalog.relation_by_oid(1259).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamUnavailable);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);

    tokio::time::sleep(RECONNECT_BACKOFF + Duration::from_millis(100)).await;
    let pg_class = catalog.relation_by_oid(1259).await.unwrap().unwrap();
    assert_eq!(
        (&*pg_class.schema, &*pg_class.name),
        ("pg_catalog", "pg_class")
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_lookup_is_bounded_by_its_timeout() {
    // A server that accepts and then says nothing.
    let listener = tokio::net::TcpListener::bind((HOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let catalog = PgCatalog::new(
        Arc::new(target("silent", "postgres", port)),
        Arc::default(),
        Duration::from_secs(30),
    )
    .with_lookup_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e = catalog.relations_named(None, "t").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamUnavailable);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions get their target's catalog
// ---------------------------------------------------------------------------------------------

struct FixedPassword;

#[async_trait::async_trait]
impl Authenticator for FixedPassword {
    async fn authenticate(
        &self,
        c: &Credentials,
        _: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        match c {
            Credentials::Password { user, password } if password == "secret" => Ok(Identity {
                subject: user.clone(),
                groups: vec![],
                auth_method: AuthMethod::Password,
                claims: BTreeMap::new(),
            }),
            _ => Err(GatewayError::auth("wrong password")),
        }
    }
}

/// Masks every session, and before each statement looks up the relation `watched` through the
/// session's catalog, noting its columns.
struct Watching {
    seen: Mutex<Vec<Vec<String>>>,
}

#[async_trait::async_trait]
impl Masker for Watching {
    fn is_active(&self, _: &SessionContext) -> bool {
        true
    }

    async fn check(&self, request: CheckRequest<'_>) -> Result<Option<Arc<Lineage>>, GatewayError> {
        let found = request.catalog.relations_named(None, "watched").await?;
        let columns = found
            .iter()
            .flat_map(|r| r.live_columns().map(|c| c.to_string()))
            .collect();
        self.seen.lock().unwrap().push(columns);
        Ok(None)
    }

    async fn plan(&self, _: PlanRequest<'_>) -> MaskPlan {
        MaskPlan::default()
    }
}

/// Sessions run on two workers; their catalog (one for the target, one connection) lives on the
/// listener's runtime.
#[tokio::test]
async fn masked_sessions_resolve_through_their_targets_catalog() {
    let db = TestDb::create().await;
    connect(&db.name)
        .await
        .batch_execute("create table watched (k int, v text)")
        .await
        .unwrap();
    let masker = Arc::new(Watching {
        seen: Mutex::default(),
    });
    let gateway = Gateway::builder()
        .authenticator(Arc::new(FixedPassword))
        .masker(Arc::clone(&masker) as Arc<dyn Masker>)
        .targets(Targets::new([target(&db.name, &db.name, PORT)]))
        .build();
    let mut config = ListenerConfig::new("127.0.0.1:0".parse().unwrap());
    config.handshake_timeout = Duration::from_secs(5);
    let workers = Workers::start(2, "catalog-test-worker").unwrap();
    let listener = PostgresListener::bind(config, gateway)
        .await
        .unwrap()
        .with_workers(Arc::clone(&workers));
    let addr = listener.local_addr();
    tokio::spawn(listener.run());

    let mut clients = Vec::new();
    for _ in 0..2 {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=alice password=secret dbname={}",
                addr.port(),
                db.name
            ),
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        clients.push(client);
    }
    assert_eq!(workers.sessions(), [1, 1]);
    for client in &clients {
        client.simple_query("select 1").await.unwrap();
    }
    let kv = vec!["k".to_owned(), "v".to_owned()];
    assert_eq!(*masker.seen.lock().unwrap(), [kv.clone(), kv]);
    let admin = connect("postgres").await;
    assert_eq!(catalog_backends(&admin, &db.name).await, 1);
}
