//! What a client sees through the gateway is what it sees directly: every column definition and
//! every value, byte for byte, compared with the real `mariadb` client's `--column-type-info`
//! (name, origin database, table and column, type, collation, length, decimals, flags) and its
//! raw batch output. Packets over 16 MiB both ways run against a throw-away MariaDB whose
//! max_allowed_packet allows them.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Client arguments for the server at `port` directly, or (with `through`) for the gateway.
fn args(port: u16, database: &str, through: bool, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--no-defaults".to_owned(),
        "-h127.0.0.1".to_owned(),
        format!("-P{port}"),
        "--batch".to_owned(),
        "--max-allowed-packet=64M".to_owned(),
        "--default-character-set=utf8mb4".to_owned(),
    ];
    if through {
        a.extend([
            "-ualice".to_owned(),
            "-psecret".to_owned(),
            "-Dshop".to_owned(),
        ]);
    } else {
        a.extend(["-uroot".to_owned(), format!("-D{database}")]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[tokio::test]
async fn column_definitions_and_values_are_identical_through_the_gateway() {
    let db = Database::create();
    direct(&format!(
        "CREATE TABLE {0}.types (
            id INT PRIMARY KEY,
            blob_col BLOB, varbin VARBINARY(16), dec_col DECIMAL(20,6), big BIGINT UNSIGNED,
            dt DATETIME(6), doc JSON, txt VARCHAR(40) CHARACTER SET utf8mb4, empty_col VARCHAR(5),
            t TIME(3), b BIT(8), e ENUM('a','b'), d DOUBLE, f FLOAT, nothing INT
        );
        INSERT INTO {0}.types VALUES
            (1, X'00FF80C3', X'DEADBEEF00', 12345678901234.123456, 18446744073709551615,
             '2024-02-29 23:59:59.999999', '{{\"k\": [1, null, \"v\"]}}', 'emoji \u{1F600} ok', '',
             '-838:59:59.000', b'10100101', 'b', 1.0e308, 3.5, NULL),
            (2, '', NULL, -0.000001, 0, '1000-01-01 00:00:00', 'null', '', NULL, '00:00:00.5',
             b'0', 'a', -0.0, -1.25, NULL)",
        db.0
    ));
    let (addr, _) = start(&db.0).await;
    let sql = b"SELECT * FROM types ORDER BY id;\nSELECT id, blob_col AS renamed, CONCAT(txt, '!') AS computed, 1 + 1 FROM types ORDER BY id;\n";
    for extra in [
        &["--column-type-info"][..],
        &["--raw", "--skip-column-names"][..],
    ] {
        let direct_out = mariadb(args(3306, &db.0, false, extra), sql.to_vec()).await;
        let through = mariadb(args(addr.port(), &db.0, true, extra), sql.to_vec()).await;
        assert!(
            direct_out.status.success(),
            "{}",
            String::from_utf8_lossy(&direct_out.stderr)
        );
        assert!(
            through.status.success(),
            "{}",
            String::from_utf8_lossy(&through.stderr)
        );
        assert!(!direct_out.stdout.is_empty());
        assert!(
            direct_out.stdout == through.stdout,
            "{extra:?} differs:\n--- direct\n{}\n--- through the gateway\n{}",
            String::from_utf8_lossy(&direct_out.stdout),
            String::from_utf8_lossy(&through.stdout)
        );
    }
}

/// A MariaDB of its own, with a max_allowed_packet that allows packets over 16 MiB; stopped and
/// removed when dropped.
struct Throwaway {
    dir: tempfile::TempDir,
    port: u16,
    server: std::process::Child,
}

impl Throwaway {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                &format!("--datadir={}", data.display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                &format!("--datadir={}", data.display()),
                &format!("--socket={}", dir.path().join("m.sock").display()),
                &format!("--port={port}"),
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--max-allowed-packet=64M",
                "--innodb-buffer-pool-size=32M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let throwaway = Throwaway { dir, port, server };
        for _ in 0..100 {
            let ping = Command::new("mariadb-admin")
                .args([
                    "--no-defaults",
                    "-h127.0.0.1",
                    &format!("-P{port}"),
                    "-uroot",
                    "ping",
                ])
                .output()
                .expect("run mariadb-admin");
            if ping.status.success() {
                return throwaway;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the throw-away MariaDB did not start");
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = &self.dir;
    }
}

#[tokio::test]
async fn packets_over_16_mib_pass_both_ways() {
    let server = Throwaway::start().await;
    let setup = mariadb(
        vec![
            "--no-defaults".into(),
            "-h127.0.0.1".into(),
            format!("-P{}", server.port),
            "-uroot".into(),
        ],
        b"CREATE DATABASE big; CREATE TABLE big.t (id INT PRIMARY KEY, v LONGBLOB);".to_vec(),
    )
    .await;
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let addr: SocketAddr = start_on(server.port, "big").await;

    // 20 MiB in one statement from the client: a packet the protocol splits in two.
    let value: Vec<u8> = (0..20 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let mut insert = b"INSERT INTO t VALUES (1, '".to_vec();
    insert.extend_from_slice(&value);
    insert.extend_from_slice(b"');\n");
    let through = args(addr.port(), "big", true, &["--skip-column-names", "--raw"]);
    let out = mariadb(through.clone(), insert).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And back, as a row over 16 MiB.
    let out = mariadb(through, b"SELECT v FROM t WHERE id = 1;\n".to_vec()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), value.len() + 1);
    assert!(
        out.stdout[..value.len()] == value[..],
        "the value came back changed"
    );
}
