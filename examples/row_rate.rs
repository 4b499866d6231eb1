//! Reads one query's whole result as fast as a client can and prints rows per second: the client
//! side of `bench/masking.sh`. Rows are streamed (extended protocol, binary format, nothing
//! buffered), so the figure is the path's, not the client's.
//!
//! ```text
//! cargo run --release --example row_rate -- "host=127.0.0.1 port=6432 user=u password=... dbname=d" \
//!     "SELECT * FROM wide LIMIT 1000000"
//! ```
//! Prints `rows=N bytes=B seconds=S rows_per_second=R`.

use std::time::Instant;

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::NoTls;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(conninfo), Some(sql)) = (args.next(), args.next()) else {
        eprintln!("usage: row_rate CONNINFO SQL");
        std::process::exit(2);
    };
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection: {e}");
        }
    });
    let started = Instant::now();
    let rows = client
        .query_raw(sql.as_str(), std::iter::empty::<i32>())
        .await?;
    pin_mut!(rows);
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(row) = rows.try_next().await? {
        n += 1;
        for i in 0..row.len() {
            // The raw value's length: every value is touched without decoding it.
            let v: Option<RawLen> = row.get(i);
            bytes += v.map_or(0, |v| v.0 as u64);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "rows={n} bytes={bytes} seconds={seconds:.3} rows_per_second={:.0}",
        n as f64 / seconds
    );
    Ok(())
}

/// The length of a value of any type, without decoding it.
struct RawLen(usize);

impl<'a> tokio_postgres::types::FromSql<'a> for RawLen {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawLen(raw.len()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}
