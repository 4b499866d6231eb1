//! Real client programs through the gateway, each logging in with a JWT as its password: psql
//! (meta-commands, `\copy`, multi-statement `-c`), pgbench (initialisation and the three query
//! modes), psycopg 3 and asyncpg (scripts that print JSON the test checks).

mod common;

use common::{assert_success, stderr, stdout, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands_copy_and_multi_statements() {
    let gw = TestGateway::start().await;
    let out = gw
        .psql(
            &[
                "-q",
                "-c",
                "create table items (id int primary key, name text not null, price numeric(10,2))",
            ],
            &[],
        )
        .await;
    assert_success("psql create table", &out);

    // \dt and \d run psql's catalog queries through the gateway.
    let dt = assert_success("psql \\dt", &gw.psql(&["-c", "\\dt"], &[]).await);
    assert!(
        dt.contains("items") && dt.contains("table"),
        "\\dt output:\n{dt}"
    );
    let d = assert_success("psql \\d items", &gw.psql(&["-c", "\\d items"], &[]).await);
    for expected in [
        "Table \"public.items\"",
        "id",
        "integer",
        "name",
        "text",
        "not null",
        "price",
        "numeric(10,2)",
        "items_pkey",
    ] {
        assert!(d.contains(expected), "\\d items lacks {expected:?}:\n{d}");
    }

    // \copy in from a file and back out to another: the same bytes.
    let input = gw.scratch().join("in.csv");
    let output = gw.scratch().join("out.csv");
    let mut csv = String::new();
    for i in 1..=3000 {
        let name = if i % 10 == 0 {
            format!("\"name, with comma {i}\"")
        } else {
            format!("name {i}")
        };
        csv.push_str(&format!("{i},{name},{}.{:02}\n", i * 7, i % 100));
    }
    std::fs::write(&input, &csv).unwrap();
    let copy_in = format!("\\copy items from '{}' with (format csv)", input.display());
    let out = assert_success("psql \\copy from", &gw.psql(&["-c", &copy_in], &[]).await);
    assert!(out.contains("COPY 3000"), "\\copy from output: {out}");
    let copy_out = format!(
        "\\copy (select * from items order by id) to '{}' with (format csv)",
        output.display()
    );
    let out = assert_success("psql \\copy to", &gw.psql(&["-c", &copy_out], &[]).await);
    assert!(out.contains("COPY 3000"), "\\copy to output: {out}");
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        csv,
        "\\copy out differs from what \\copy in loaded"
    );

    // One -c with several statements is one simple Query; psql 15 prints every result.
    let out = gw
        .psql(
            &[
                "-At",
                "-c",
                "insert into items values (5000, 'x', 1); insert into items values (5001, 'y', 2); select count(*) from items",
            ],
            &[],
        )
        .await;
    assert_eq!(
        assert_success("psql multi-statement -c", &out),
        "INSERT 0 1\nINSERT 0 1\n3002\n"
    );
    // Several -c options run one after the other on one connection.
    let out = gw
        .psql(
            &[
                "-At",
                "-c",
                "select 1",
                "-c",
                "select current_setting('application_name')",
            ],
            &[],
        )
        .await;
    assert_eq!(
        assert_success("psql several -c", &out),
        "1\npsql (portcullis:alice)\n"
    );
    // A script from a file, with a transaction and a variable.
    let script = gw.scratch().join("script.sql");
    std::fs::write(
        &script,
        "\\set n 5\nbegin;\ndelete from items where id > :n;\nselect count(*) from items;\nrollback;\nselect count(*) from items;\n",
    )
    .unwrap();
    let out = gw
        .psql(&["-q", "-At", "-f", &script.display().to_string()], &[])
        .await;
    assert_eq!(assert_success("psql -f", &out), "5\n3002\n");

    // Large objects: libpq's lo_* functions use the function-call sub-protocol, which the gateway
    // refuses with a clear error (0A000); the connection stays usable.
    let blob = gw.scratch().join("blob.bin");
    std::fs::write(&blob, vec![7u8; 10_000]).unwrap();
    let lo_import = format!("\\lo_import '{}'", blob.display());
    let out = gw
        .psql(
            &[
                "-v",
                "ON_ERROR_STOP=0",
                "-At",
                "-c",
                &lo_import,
                "-c",
                "select 'after'",
            ],
            &[],
        )
        .await;
    assert!(
        stderr(&out).contains("function-call sub-protocol"),
        "\\lo_import: {}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&out),
        "after\n",
        "the session did not survive the refused function call"
    );
    let out = gw
        .psql(
            &["-At", "-c", "select lo_from_bytea(0, '\\x0102')::int > 0"],
            &[],
        )
        .await;
    assert_eq!(assert_success("server-side large object", &out), "t\n");

    // An error reaches psql with the database's message and a failing exit status.
    let out = gw.psql(&["-c", "select 1/0"], &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("division by zero"),
        "stderr: {}",
        stderr(&out)
    );
    gw.shutdown().await;
}

/// Runs pgbench against the gateway and checks it processed `expected` transactions.
async fn pgbench_run(gw: &TestGateway, args: &[&str], expected: u64) -> String {
    let out = gw.pgbench(args).await;
    let text = assert_success(&format!("pgbench {}", args.join(" ")), &out);
    let line = format!("number of transactions actually processed: {expected}/{expected}");
    assert!(
        text.contains(&line),
        "pgbench {args:?} did not report {line:?}:\n{text}\n{}",
        stderr(&out)
    );
    if text.contains("number of failed transactions") {
        assert!(
            text.contains("number of failed transactions: 0 "),
            "pgbench {args:?} reports failures:\n{text}"
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initialises_and_runs_in_every_query_mode() {
    let gw = TestGateway::start().await;
    // -i: DROP/CREATE, a 100,000-row COPY, VACUUM and primary keys, all through the gateway.
    let out = gw.pgbench(&["-i", "-s", "1", "-q"]).await;
    assert_success("pgbench -i -s 1", &out);
    assert!(
        stderr(&out).contains("done in"),
        "pgbench -i output:\n{}",
        stderr(&out)
    );
    let direct = gw.db.connect_direct().await;
    let n: i64 = direct
        .query_one("select count(*) from pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_000);

    for mode in ["simple", "extended", "prepared"] {
        pgbench_run(
            &gw,
            &["-n", "-S", "-t", "200", "-c", "4", "-j", "2", "-M", mode],
            800,
        )
        .await;
    }
    // The default TPC-B-like script writes: 4 clients x 50 transactions.
    pgbench_run(
        &gw,
        &["-n", "-t", "50", "-c", "4", "-j", "2", "-M", "prepared"],
        200,
    )
    .await;
    let n: i64 = direct
        .query_one("select count(*) from pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200);
    gw.shutdown().await;
}

/// The JSON object a driver script printed on its last line.
fn script_result(what: &str, out: &std::process::Output) -> serde_json::Value {
    let text = assert_success(what, out);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON result ({e}):\n{text}\n{}",
            stderr(out)
        )
    })
}

const PSYCOPG_SCRIPT: &str = r#"
import json, os
import psycopg

out = {}
conninfo = psycopg.conninfo.make_conninfo(
    host=os.environ["PGHOST"], port=os.environ["PGPORT"], dbname=os.environ["PGDATABASE"],
    user="carol", sslmode="disable",
)
with psycopg.connect(conninfo, password=os.environ["PGPASSWORD"]) as conn:
    out["application_name"] = conn.execute("select current_setting('application_name')").fetchone()[0]
    with conn.cursor() as cur:
        cur.execute("create table people (id int primary key, name text, score float8, tags text[])")
        # Parameterized query (psycopg 3 binds server-side, extended protocol).
        cur.execute("select %s::int + %s::int, %s::text, %s::text is null", (40, 2, "ünï", None))
        out["params"] = list(cur.fetchone())
        # executemany: psycopg 3 pipelines it.
        cur.executemany(
            "insert into people values (%s, %s, %s, %s)",
            [(i, f"p{i}", i / 2, [f"t{i}", None]) for i in range(1000)],
        )
        out["executemany_count"] = cur.execute("select count(*) from people").fetchone()[0]
        # COPY FROM STDIN with rows, then COPY TO STDOUT read back as rows.
        with cur.copy("copy people (id, name, score, tags) from stdin") as copy:
            for i in range(1000, 21000):
                copy.write_row((i, f"c{i}", i * 1.5, ["a", "b"]))
        total, id_sum = 0, 0
        with cur.copy("copy (select id, name from people order by id) to stdout") as copy:
            for row in copy.rows():
                total += 1
                id_sum += int(row[0])
        out["copy_out_rows"] = total
        out["copy_out_id_sum"] = id_sum
        # Binary results.
        with conn.cursor(binary=True) as bcur:
            bcur.execute("select %s::bytea, 3.25::float8", (bytes(range(256)),))
            b, f = bcur.fetchone()
            out["binary_ok"] = (bytes(b) == bytes(range(256)) and f == 3.25)
    # Server-side (named) cursor, fetched in batches inside a transaction.
    with conn.transaction():
        with conn.cursor(name="big_cursor") as scur:
            scur.itersize = 700
            scur.execute("select g, md5(g::text) from generate_series(1, 30000) g")
            n, s = 0, 0
            for g, _ in scur:
                n += 1
                s += g
            out["server_cursor_rows"] = n
            out["server_cursor_sum"] = s
    # A database error leaves the connection usable.
    try:
        conn.execute("select 1/0")
    except psycopg.errors.DivisionByZero as e:
        out["error_sqlstate"] = e.sqlstate
    conn.rollback()
    out["after_error"] = conn.execute("select 'ok'").fetchone()[0]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_parameters_executemany_copy_and_server_cursor() {
    let gw = TestGateway::start().await;
    let out = gw.python(PSYCOPG_SCRIPT).await;
    let r = script_result("psycopg script", &out);
    // The identity is the token's subject (alice), whatever user name the client sends (carol).
    assert_eq!(r["application_name"], "portcullis:alice", "{r}");
    assert_eq!(r["params"], serde_json::json!([42, "ünï", true]), "{r}");
    assert_eq!(r["executemany_count"], 1000, "{r}");
    assert_eq!(r["copy_out_rows"], 21000, "{r}");
    assert_eq!(r["copy_out_id_sum"], (0..21000u64).sum::<u64>(), "{r}");
    assert_eq!(r["binary_ok"], true, "{r}");
    assert_eq!(r["server_cursor_rows"], 30000, "{r}");
    assert_eq!(r["server_cursor_sum"], 30000u64 * 30001 / 2, "{r}");
    assert_eq!(r["error_sqlstate"], "22012", "{r}");
    assert_eq!(r["after_error"], "ok", "{r}");
    gw.shutdown().await;
}

const ASYNCPG_SCRIPT: &str = r#"
import asyncio, datetime, decimal, json, os
import asyncpg

async def main():
    out = {}
    conn = await asyncpg.connect(
        host=os.environ["PGHOST"], port=int(os.environ["PGPORT"]), user="dave",
        password=os.environ["PGPASSWORD"], database=os.environ["PGDATABASE"],
    )
    try:
        out["application_name"] = await conn.fetchval("select current_setting('application_name')")
        await conn.execute("create table m (id int primary key, name text, amount numeric, at timestamptz, data bytea)")
        # Prepared statements (named, binary format), executed many times.
        stmt = await conn.prepare("select $1::int8 * 2 as x, $2::text as t")
        vals = [await stmt.fetchrow(i, f"s{i}") for i in range(100)]
        out["prepared_ok"] = all(r["x"] == i * 2 and r["t"] == f"s{i}" for i, r in enumerate(vals))
        # Binary COPY of records.
        base = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)
        records = [
            (i, f"n{i}", decimal.Decimal(i) / 4, base + datetime.timedelta(seconds=i), bytes([i % 256]) * (i % 7))
            for i in range(20000)
        ]
        res = await conn.copy_records_to_table("m", records=records, columns=["id", "name", "amount", "at", "data"])
        out["copy_status"] = res
        rows = await conn.fetch("select id, name, amount, at, data from m where id = any($1::int[]) order by id", [0, 5, 19999])
        out["fetched"] = [[r["id"], r["name"], str(r["amount"]), r["at"].isoformat(), r["data"].hex()] for r in rows]
        out["count"] = await conn.fetchval("select count(*) from m")
        await conn.executemany("insert into m (id, name) values ($1, $2)", [(i, f"e{i}") for i in range(20000, 20500)])
        out["count_after_executemany"] = await conn.fetchval("select count(*) from m")
        # A cursor inside a transaction.
        total = 0
        async with conn.transaction():
            async for r in conn.cursor("select g from generate_series(1, 10000) g", prefetch=333):
                total += r["g"]
        out["cursor_sum"] = total
        try:
            await conn.fetch("select * from missing_table")
        except asyncpg.exceptions.UndefinedTableError as e:
            out["error_sqlstate"] = e.sqlstate
        out["after_error"] = await conn.fetchval("select 'ok'")
    finally:
        await conn.close()
    print(json.dumps(out))

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared_copy_records_and_fetch() {
    let gw = TestGateway::start().await;
    let out = gw.python(ASYNCPG_SCRIPT).await;
    let r = script_result("asyncpg script", &out);
    // The identity is the token's subject (alice), not the user name the client sends (dave).
    assert_eq!(r["application_name"], "portcullis:alice", "{r}");
    assert_eq!(r["prepared_ok"], true, "{r}");
    assert_eq!(r["copy_status"], "COPY 20000", "{r}");
    assert_eq!(
        r["fetched"],
        serde_json::json!([
            [0, "n0", "0", "2024-01-02T03:04:05.678901+00:00", ""],
            [
                5,
                "n5",
                "1.25",
                "2024-01-02T03:04:10.678901+00:00",
                "0505050505"
            ],
            [
                19999,
                "n19999",
                "4999.75",
                "2024-01-02T08:37:24.678901+00:00",
                ""
            ]
        ]),
        "{r}"
    );
    assert_eq!(r["count"], 20000, "{r}");
    assert_eq!(r["count_after_executemany"], 20500, "{r}");
    assert_eq!(r["cursor_sum"], 10000u64 * 10001 / 2, "{r}");
    assert_eq!(r["error_sqlstate"], "42P01", "{r}");
    assert_eq!(r["after_error"], "ok", "{r}");
    gw.shutdown().await;
}
