//! tokio-postgres through the gateway with a JWT identity: the protocol features a
//! message-level proxy must keep intact (simple and extended queries, binary parameters,
//! pipelining, COPY both ways, cancel, LISTEN/NOTIFY, notices, transactions, large results and
//! large values).

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{sqlstate, TestGateway};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

/// FNV-1a over a byte stream: a cheap, order-sensitive checksum for comparing large results.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;

    // Simple protocol: several statements in one Query, each with its own result.
    let msgs = client
        .simple_query(
            "create table t (id int primary key, name text); \
             insert into t values (1, 'one'), (2, 'two'); \
             select id, name from t order by id; select count(*) from t",
        )
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&msgs),
        vec![
            vec![Some("1".into()), Some("one".into())],
            vec![Some("2".into()), Some("two".into())],
            vec![Some("2".into())]
        ]
    );
    let completions: Vec<u64> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(completions, vec![0, 2, 2, 1]);

    // Extended protocol, unnamed and named statements, reused many times.
    let rows = client
        .query("select name from t where id = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "two");
    let insert = client
        .prepare("insert into t values ($1, $2)")
        .await
        .unwrap();
    for i in 3..50 {
        assert_eq!(
            client
                .execute(&insert, &[&i, &format!("n{i}")])
                .await
                .unwrap(),
            1
        );
    }
    let n: i64 = client
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 49);

    // Errors from the database come through with their SQLSTATE and leave the session usable.
    let e = client
        .query("select * from no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    let e = client
        .simple_query("insert into t values (1, 'dup')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    let e = client
        .query_one("select 1/$1::int4", &[&0i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let v: i32 = client.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);

    // The identity travels upstream in application_name.
    let app: String = client
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "portcullis:alice");
    // An empty query string gets EmptyQueryResponse and nothing else.
    let msgs = client.simple_query("").await.unwrap();
    assert!(simple_rows(&msgs).is_empty());
    // The client's own application_name is kept beside the identity.
    let mut config = gw.pg_config("alice", &gw.token("alice"));
    config.application_name("reporting");
    let (named, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let app: String = named
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "reporting (portcullis:alice)");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_parameters_and_results_round_trip() {
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    client
        .batch_execute(
            "create table v (id int, b bytea, i int8, f float8, n numeric, ts timestamptz, \
             ints int4[], texts text[], maybe int8)",
        )
        .await
        .unwrap();

    let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    let ts = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let ints: Vec<i32> = vec![i32::MIN, -1, 0, 1, i32::MAX];
    let texts: Vec<Option<String>> = vec![
        Some("a".into()),
        None,
        Some("".into()),
        Some("ünï\u{1F600}".into()),
    ];
    let numeric = "123456789012345678901234567890.000000000000000000001";
    let none: Option<i64> = None;
    client
        .execute(
            "insert into v values (1, $1, $2, $3, $4::text::numeric, $5, $6, $7, $8)",
            &[
                &bytes,
                &i64::MIN,
                &std::f64::consts::PI,
                &numeric,
                &ts,
                &ints,
                &texts,
                &none,
            ],
        )
        .await
        .unwrap();

    let row = client
        .query_one(
            "select b, i, f, n::text, ts, ints, texts, maybe from v where id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<u8>>(0), bytes);
    assert_eq!(row.get::<_, i64>(1), i64::MIN);
    assert_eq!(row.get::<_, f64>(2), std::f64::consts::PI);
    assert_eq!(row.get::<_, String>(3), numeric);
    assert_eq!(row.get::<_, SystemTime>(4), ts);
    assert_eq!(row.get::<_, Vec<i32>>(5), ints);
    assert_eq!(row.get::<_, Vec<Option<String>>>(6), texts);
    assert_eq!(row.get::<_, Option<i64>>(7), None);

    // Special floats and NULL parameters in binary format.
    let row = client
        .query_one(
            "select $1::float8, $2::float8, $3::float8 is null, $4::bytea is null",
            &[&f64::INFINITY, &f64::NAN, &None::<f64>, &None::<Vec<u8>>],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), f64::INFINITY);
    assert!(row.get::<_, f64>(1).is_nan());
    assert!(row.get::<_, bool>(2));
    assert!(row.get::<_, bool>(3));

    // The same values in the text format (simple protocol).
    let msgs = client
        .simple_query("select encode(b, 'hex'), i, ints, texts from v")
        .await
        .unwrap();
    let rows = simple_rows(&msgs);
    assert_eq!(
        rows[0][0].as_deref().map(|h| h.len()),
        Some(bytes.len() * 2)
    );
    assert_eq!(rows[0][1].as_deref(), Some("-9223372036854775808"));
    assert_eq!(
        rows[0][2].as_deref(),
        Some("{-2147483648,-1,0,1,2147483647}")
    );
    assert_eq!(rows[0][3].as_deref(), Some("{a,NULL,\"\",ünï\u{1F600}}"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_on_one_connection() {
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    let statement = client
        .prepare("select $1::int8 * 2, repeat('x', ($1 % 100)::int4)")
        .await
        .unwrap();
    // tokio-postgres writes all of these before reading any answer: one pipeline, in order.
    let queries = (0..500i64).map(|i| {
        let client = &client;
        let statement = &statement;
        async move { (i, client.query_one(statement, &[&i]).await) }
    });
    let results = futures_util::future::join_all(queries).await;
    for (i, r) in results {
        let row = r.unwrap_or_else(|e| panic!("query {i}: {e}"));
        assert_eq!(row.get::<_, i64>(0), i * 2);
        assert_eq!(row.get::<_, &str>(1).len() as i64, i % 100);
    }

    // A failing query in the middle of a pipeline fails alone.
    let (a, b, c) = tokio::join!(
        client.query_one("select 1::int4", &[]),
        client.query_one("select 1/0", &[]),
        client.query_one("select 3::int4", &[])
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(sqlstate(&b.unwrap_err()), "22012");
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_and_to_stdout() {
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    client
        .batch_execute("create table c (id int primary key, label text, amount numeric)")
        .await
        .unwrap();

    const ROWS: usize = 50_000;
    let mut data = String::with_capacity(ROWS * 40);
    for i in 0..ROWS {
        let label = if i % 97 == 0 {
            "\\N".to_owned()
        } else {
            format!("label {i} with\\ttab")
        };
        data.push_str(&format!("{i}\t{label}\t{}.{:02}\n", i * 3, i % 100));
    }
    let sink = client.copy_in("copy c from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    // Mixed chunk sizes: small frames, and frames far larger than the gateway's read buffer.
    let bytes = data.as_bytes();
    let mut at = 0;
    let mut sizes = [1usize, 17, 4096, 300_000, 65_536, 2_000_000]
        .iter()
        .cycle();
    while at < bytes.len() {
        let n = (*sizes.next().unwrap()).min(bytes.len() - at);
        sink.send(Bytes::copy_from_slice(&bytes[at..at + n]))
            .await
            .unwrap();
        at += n;
    }
    assert_eq!(sink.finish().await.unwrap(), ROWS as u64);

    let stream = client
        .copy_out("copy (select * from c order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(out.len(), data.len());
    assert!(
        out == data.as_bytes(),
        "COPY TO STDOUT returned different content than COPY FROM STDIN took"
    );

    // A COPY that fails upstream (bad data) reports the database's error and the session goes on.
    let sink = client.copy_in("copy c from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\t1\n"))
        .await
        .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&e), "22P02");
    let n: i64 = client
        .query_one("select count(*) from c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, ROWS as i64);

    // A COPY the client abandons (CopyFail) loads nothing, and the session goes on.
    {
        let sink = client
            .copy_in::<_, Bytes>("copy c from stdin")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"999999\tabandoned\t1\n"))
            .await
            .unwrap();
    }
    let n: i64 = client
        .query_one("select count(*) from c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, ROWS as i64);

    // Binary COPY out streams as well.
    let stream = client
        .copy_out("copy c to stdout (format binary)")
        .await
        .unwrap();
    let binary: Vec<Bytes> = stream.try_collect().await.unwrap();
    let binary = binary.concat();
    assert!(
        binary.starts_with(b"PGCOPY\n\xff\r\n\0"),
        "binary COPY header"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_query() {
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query("select pg_sleep(60)").await;
        (client, r)
    });
    // Cancel until the query reports it: a cancel that arrives before the query starts is lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sleeper = sleeper;
    let (client, result) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(1), &mut sleeper).await {
            Ok(done) => break done.unwrap(),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the cancel never reached the query"
            ),
        }
    };
    assert_eq!(sqlstate(&result.unwrap_err()), "57014");
    // The connection survives its cancelled query.
    let v: i32 = client.query_one("select 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);

    // A cancel request with keys the gateway never issued is ignored, and harms nobody.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        &proto_postgres::startup::encode_cancel(12345, 67890),
    )
    .await
    .unwrap();
    drop(raw);
    let v: i32 = client.query_one("select 6", &[]).await.unwrap().get(0);
    assert_eq!(v, 6);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_across_two_gateway_connections() {
    let gw = TestGateway::start().await;
    let (listener, mut messages) = gw.connect_with_messages(&gw.token("listener")).await;
    let notifier = gw.connect_tokio_postgres(&gw.token("notifier")).await;
    listener
        .batch_execute("listen portcullis_events")
        .await
        .unwrap();
    notifier
        .batch_execute("notify portcullis_events, 'first'")
        .await
        .unwrap();
    notifier
        .query(
            "select pg_notify('portcullis_events', $1)",
            &[&"second: ünï"],
        )
        .await
        .unwrap();

    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => {
                assert_eq!(n.channel(), "portcullis_events");
                payloads.push(n.payload().to_owned());
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("listener connection closed"),
            Err(_) => panic!("notifications did not arrive; got {payloads:?}"),
        }
    }
    assert_eq!(payloads, vec!["first".to_owned(), "second: ünï".to_owned()]);
    drop(listener);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_arrive() {
    let gw = TestGateway::start().await;
    let (client, mut messages) = gw.connect_with_messages(&gw.token("alice")).await;
    client
        .batch_execute("do $$ begin raise notice 'hello %', 42; raise warning 'careful'; end $$")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), messages.recv()).await {
            Ok(Some(AsyncMessage::Notice(n))) => {
                seen.push((n.severity().to_owned(), n.message().to_owned()))
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("connection closed"),
            Err(_) => panic!("notices did not arrive; got {seen:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            ("NOTICE".into(), "hello 42".into()),
            ("WARNING".into(), "careful".into())
        ]
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_roll_back() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    client
        .batch_execute("create table tx (id int)")
        .await
        .unwrap();

    let t = client.transaction().await.unwrap();
    t.execute("insert into tx values (1)", &[]).await.unwrap();
    t.rollback().await.unwrap();
    let t = client.transaction().await.unwrap();
    t.execute("insert into tx values (2)", &[]).await.unwrap();
    // A savepoint rolled back inside a committed transaction.
    let mut t = t;
    let sp = t.savepoint("sp").await.unwrap();
    sp.execute("insert into tx values (3)", &[]).await.unwrap();
    sp.rollback().await.unwrap();
    t.commit().await.unwrap();
    let ids: Vec<i32> = client
        .query("select id from tx", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![2]);

    // An error aborts the transaction exactly as PostgreSQL does, and ROLLBACK recovers.
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute("insert into tx values (4)")
        .await
        .unwrap();
    assert_eq!(
        sqlstate(&client.batch_execute("select 1/0").await.unwrap_err()),
        "22012"
    );
    assert_eq!(
        sqlstate(&client.simple_query("select 1").await.unwrap_err()),
        "25P02"
    );
    client.batch_execute("rollback").await.unwrap();
    let n: i64 = client
        .query_one("select count(*) from tx", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    // Dropping a connection mid-transaction rolls it back upstream.
    let other = gw.connect_tokio_postgres(&gw.token("bob")).await;
    other
        .batch_execute("begin; insert into tx values (5)")
        .await
        .unwrap();
    drop(other);
    let direct = gw.db.connect_direct().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream transaction stayed open after the client left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n: i64 = direct
        .query_one("select count(*) from tx", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_result_streams_intact() {
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    const N: i64 = 200_000;
    let sql = "select g, md5(g::text) || repeat('.', (g % 50)::int4) as t from generate_series(1, $1::int8) g";

    async fn digest(client: &tokio_postgres::Client, sql: &str, n: i64) -> (i64, i64, u64) {
        let rows = client.query_raw(sql, [n]).await.unwrap();
        futures_util::pin_mut!(rows);
        let (mut count, mut sum, mut fnv) = (0i64, 0i64, Fnv::new());
        while let Some(row) = rows.next().await {
            let row = row.unwrap();
            let g: i64 = row.get(0);
            let t: &str = row.get(1);
            count += 1;
            sum += g;
            fnv.update(&g.to_le_bytes());
            fnv.update(t.as_bytes());
        }
        (count, sum, fnv.0)
    }

    let through_gateway = digest(&client, sql, N).await;
    assert_eq!(through_gateway.0, N);
    assert_eq!(through_gateway.1, N * (N + 1) / 2);
    let direct = gw.db.connect_direct().await;
    let reference = digest(&direct, sql, N).await;
    assert_eq!(
        through_gateway, reference,
        "the result differs from the same query run directly"
    );

    // The same amount of data in the text format of the simple protocol.
    let msgs = client
        .simple_query(&format!("select g from generate_series(1, {N}) g"))
        .await
        .unwrap();
    assert_eq!(simple_rows(&msgs).len() as i64, N);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabyte_bytea_round_trips() {
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    client
        .batch_execute("create table blobs (id int, b bytea)")
        .await
        .unwrap();
    let mut blob = vec![0u8; 5 * 1024 * 1024];
    for (i, b) in blob.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    client
        .execute("insert into blobs values (1, $1)", &[&blob])
        .await
        .unwrap();
    let row = client
        .query_one("select b, length(b), md5(b) from blobs where id = 1", &[])
        .await
        .unwrap();
    let back: Vec<u8> = row.get(0);
    assert_eq!(row.get::<_, i32>(1), blob.len() as i32);
    assert!(back == blob, "the 5 MB value came back different");
    let direct = gw.db.connect_direct().await;
    let md5: String = direct
        .query_one("select md5(b) from blobs where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.get::<_, String>(2), md5);
    // And as hex text in the simple protocol (about 10 MB in one DataRow).
    let msgs = client.simple_query("select b from blobs").await.unwrap();
    let text = simple_rows(&msgs)[0][0].clone().unwrap();
    assert_eq!(text.len(), 2 + blob.len() * 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sessions() {
    let gw = TestGateway::start().await;
    let sessions = (0..20i32).map(|n| {
        let gw = &gw;
        async move {
            let client = gw
                .connect_tokio_postgres(&gw.token(&format!("user{n}")))
                .await;
            let app: String = client
                .query_one("select current_setting('application_name')", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(app, format!("portcullis:user{n}"));
            for i in 0..20i32 {
                let v: i32 = client
                    .query_one("select $1::int4 * $2::int4", &[&n, &i])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(v, n * i);
            }
        }
    });
    futures_util::future::join_all(sessions).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_termination_ends_the_client_session_cleanly() {
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    let upstream_pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let direct = gw.db.connect_direct().await;
    let terminated: bool = direct
        .query_one("select pg_terminate_backend($1)", &[&upstream_pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    // The client learns that its session is gone: the next query fails and the connection closes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.simple_query("select 1").await {
            Err(e) => {
                if let Some(db) = e.as_db_error() {
                    assert!(
                        ["57P01", "08001", "08006"].contains(&db.code().code()),
                        "{db:?}"
                    );
                }
                break;
            }
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "queries still succeed after the upstream was terminated"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway kept the client connection open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_in_keeps_each_result_with_its_statement() {
    // tokio-postgres sends Bind, Execute and Sync before the data, then CopyDone and another
    // Sync: PostgreSQL ignores the first Sync (it arrives in copy-in mode) and answers only the
    // second. The gateway must count them the same way, or every later statement's end would be
    // recorded one ReadyForQuery late, against the wrong statement.
    let gw = TestGateway::start().await;
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    client
        .batch_execute("create table copied (id int)")
        .await
        .unwrap();
    for round in 0..2 {
        let sink = client.copy_in("copy copied from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"1\n2\n3\n")).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 3, "round {round}");
    }
    let rows = client
        .simple_query("select 'after the copy'")
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        3,
        "RowDescription, a row and CommandComplete: {rows:?}"
    );

    // A statement's end is written right after its result is relayed: wait for the last one.
    let records = gw
        .trail_until("the end of the last statement", |records| {
            let last = records.iter().find(|p| {
                p["event"] == "statement_started" && p["sql"] == "select 'after the copy'"
            });
            last.is_some_and(|start| {
                records.iter().any(|p| {
                    p["event"] == "statement_finished"
                        && p["session_id"] == start["session_id"]
                        && p["statement_id"] == start["statement_id"]
                })
            })
        })
        .await;
    let started_id = |sql: &str| -> Vec<u64> {
        records
            .iter()
            .filter(|p| p["event"] == "statement_started" && p["sql"] == sql)
            .filter_map(|p| p["statement_id"].as_u64())
            .collect()
    };
    let end_of = |id: u64| {
        records
            .iter()
            .find(|p| p["event"] == "statement_finished" && p["statement_id"] == id)
            .unwrap_or_else(|| panic!("no statement_finished for statement {id}: {records:#?}"))
    };
    let copies = started_id("copy copied from stdin");
    assert_eq!(copies.len(), 2, "{records:#?}");
    for id in copies {
        assert_eq!(end_of(id)["tag"], "COPY 3", "{records:#?}");
    }
    let after = started_id("select 'after the copy'");
    assert_eq!(after.len(), 1, "{records:#?}");
    let end = end_of(after[0]);
    assert_eq!(
        (&end["tag"], &end["rows"]),
        (&serde_json::json!("SELECT 1"), &serde_json::json!(1)),
        "{records:#?}"
    );
    gw.shutdown().await;
}
