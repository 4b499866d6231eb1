//! Hostile and broken clients on raw TCP sockets: garbage and malformed startup packets, stalled
//! handshakes, oversized, unknown and truncated messages after login, an oversized password
//! message. Each must end only its own connection, promptly and with the right SQLSTATE where the
//! protocol allows an answer, and the same gateway must go on serving normal clients. Also the
//! ends of a connection a raw socket can make and a driver cannot: the error of an oversized
//! password must arrive every time (plain and TLS), and a client that shuts down its sending side
//! mid-result (a TCP half-close) still receives the whole result.

mod common;

use std::time::Duration;

use common::{Options, TestGateway};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_MESSAGE: usize = 1_048_576;
/// How much later than the configured timeout a stalled connection may be closed, at most.
const MARGIN: Duration = Duration::from_secs(6);

async fn gateway() -> TestGateway {
    TestGateway::start_with(Options {
        handshake_timeout: "2s".into(),
        max_message_bytes: MAX_MESSAGE as u64,
        ..Options::default()
    })
    .await
}

/// What the gateway sent before closing, and how long it took to close.
struct Closed {
    bytes: Vec<u8>,
    after: Duration,
}

/// Reads until the gateway closes the connection (EOF or reset). Panics if it is still open after
/// `limit`.
async fn read_until_closed<R: AsyncRead + Unpin>(s: &mut R, limit: Duration, what: &str) -> Closed {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: the gateway kept the connection open for more than {limit:?}; it sent {bytes:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Closed { bytes, after: start.elapsed() },
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// The typed messages in `bytes` (type, body); stops at anything incomplete.
fn messages(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 5 {
        let len = i32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        if len < 4 || bytes.len() < at + 1 + len as usize {
            break;
        }
        out.push((bytes[at], bytes[at + 5..at + 1 + len as usize].to_vec()));
        at += 1 + len as usize;
    }
    out
}

/// The fields of the first ErrorResponse in `bytes`: (severity, SQLSTATE, message).
fn error_in(bytes: &[u8]) -> Option<(String, String, String)> {
    let (_, body) = messages(bytes).into_iter().find(|(t, _)| *t == b'E')?;
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    Some((severity, code, message))
}

fn assert_error(what: &str, closed: &Closed, code: &str, message_contains: &str) {
    let Some((severity, got, message)) = error_in(&closed.bytes) else {
        panic!(
            "{what}: no ErrorResponse before the close; got {:?}",
            closed.bytes
        );
    };
    assert_eq!(
        (severity.as_str(), got.as_str()),
        ("FATAL", code),
        "{what}: {message}"
    );
    assert!(
        message
            .to_lowercase()
            .contains(&message_contains.to_lowercase()),
        "{what}: message {message:?} lacks {message_contains:?}"
    );
}

fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    proto_postgres::startup::encode_startup(&[("user", user), ("database", database)])
}

fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![ty];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads complete messages until one of type `until` arrives; returns everything read.
async fn read_until<S: AsyncRead + Unpin>(s: &mut S, until: u8, what: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if messages(&bytes).iter().any(|(t, _)| *t == until) {
            return bytes;
        }
        if let Some((_, code, message)) = error_in(&bytes) {
            panic!("{what}: the gateway answered with an error {code}: {message}");
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: no {:?} message within 10s; got {bytes:?}",
                    until as char
                )
            })
            .unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
        assert!(
            n > 0,
            "{what}: the gateway closed the connection; got {bytes:?}"
        );
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// A raw connection logged in with a token, positioned after the first ReadyForQuery.
async fn raw_login(gw: &TestGateway) -> TcpStream {
    raw_login_with(gw, &startup_packet("alice", gw.database()))
        .await
        .0
}

/// Sends `startup`, answers the password request with a token, and returns the stream after the
/// first ReadyForQuery with everything the gateway sent (from the password request on).
async fn raw_login_with(gw: &TestGateway, startup: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let got = login_on(&mut s, gw, startup).await;
    (s, got)
}

/// A raw TLS connection to a gateway started with `tls`: SSLRequest, 'S', the TLS handshake
/// (verifying the gateway against the test CA).
async fn raw_tls(gw: &TestGateway) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&proto_postgres::startup::encode_ssl_request())
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S", "SSLRequest on a TLS listener");
    let pki = gw.pki.as_ref().expect("a gateway with TLS");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(pki.rustls_client(None))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Logs in on `s` as [`raw_login_with`] does, and returns everything the gateway sent.
async fn login_on<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    gw: &TestGateway,
    startup: &[u8],
) -> Vec<u8> {
    s.write_all(startup).await.unwrap();
    let mut got = read_until(s, b'R', "startup").await;
    let (_, body) = messages(&got)
        .into_iter()
        .find(|(t, _)| *t == b'R')
        .unwrap();
    assert_eq!(
        body,
        3i32.to_be_bytes(),
        "the gateway should ask for a cleartext password"
    );
    let mut password = gw.token("alice").into_bytes();
    password.push(0);
    s.write_all(&frame(b'p', &password)).await.unwrap();
    got.extend(read_until(s, b'Z', "login").await);
    got
}

/// Runs one simple query on a raw connection and returns the first column of the first row.
async fn raw_query_value(s: &mut TcpStream, sql: &str) -> String {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    s.write_all(&frame(b'Q', &body)).await.unwrap();
    let got = read_until(s, b'Z', sql).await;
    let (_, row) = messages(&got)
        .into_iter()
        .find(|(t, _)| *t == b'D')
        .expect("a DataRow");
    // DataRow: int16 column count, then int32 length + bytes per column.
    let len = i32::from_be_bytes([row[2], row[3], row[4], row[5]]) as usize;
    String::from_utf8(row[6..6 + len].to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_negotiation_and_cancel_keys() {
    let gw = gateway().await;
    // GSSENCRequest and SSLRequest are both declined on a listener without TLS, and the client
    // goes on in plain text on the same connection, as libpq does.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut gssenc = 8i32.to_be_bytes().to_vec();
    gssenc.extend_from_slice(&80_877_104i32.to_be_bytes());
    s.write_all(&gssenc).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N", "GSSENCRequest");
    s.write_all(&proto_postgres::startup::encode_ssl_request())
        .await
        .unwrap();
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N", "SSLRequest without TLS configured");
    s.write_all(&startup_packet("alice", gw.database()))
        .await
        .unwrap();
    read_until(&mut s, b'R', "startup after the declined requests").await;
    drop(s);

    // Protocol 3.2 with an unknown `_pq_.` option: NegotiateProtocolVersion (newest minor 0, the
    // option listed), then the session goes on in 3.0.
    let mut body = 0x0003_0002i32.to_be_bytes().to_vec();
    for kv in [
        "user",
        "alice",
        "database",
        gw.database(),
        "_pq_.fancy_feature",
        "1",
    ] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&packet).await.unwrap();
    let got = read_until(&mut s, b'R', "protocol 3.2 startup").await;
    let msgs = messages(&got);
    let (_, v) = msgs
        .iter()
        .find(|(t, _)| *t == b'v')
        .expect("NegotiateProtocolVersion");
    let mut expected = 0i32.to_be_bytes().to_vec();
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.extend_from_slice(b"_pq_.fancy_feature\0");
    assert_eq!(v, &expected, "NegotiateProtocolVersion body");
    drop(s);
    let (mut s, got) = raw_login_with(&gw, &packet).await;
    assert_eq!(
        raw_query_value(&mut s, "select 'negotiated'").await,
        "negotiated"
    );

    // The BackendKeyData a client sees is the gateway's, never the upstream's process id.
    let (_, key) = messages(&got)
        .into_iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData");
    let client_pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let upstream_pid: i32 = raw_query_value(&mut s, "select pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    assert_ne!(
        client_pid, upstream_pid,
        "the client learned the upstream's process id"
    );
    // The server's parameters are relayed; session_authorization names the client's user, not the
    // service account.
    let params: Vec<(String, String)> = messages(&got)
        .into_iter()
        .filter(|(t, _)| *t == b'S')
        .map(|(_, b)| {
            let mut parts = b
                .split(|c| *c == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned());
            (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            )
        })
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("server_encoding").as_deref(), Some("UTF8"));
    assert!(
        get("server_version").is_some_and(|v| v.starts_with("15")),
        "{params:?}"
    );
    assert_eq!(get("session_authorization").as_deref(), Some("alice"));
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_are_closed_after_the_timeout() {
    let gw = TestGateway::start_with(Options {
        tls: true,
        handshake_timeout: "2s".into(),
        ..Options::default()
    })
    .await;
    let limit = HANDSHAKE_TIMEOUT + MARGIN;
    // SSLRequest accepted ('S'), then: nothing; half a ClientHello; plain text instead of TLS.
    for (what, after) in [
        ("no ClientHello", Vec::new()),
        (
            "half a ClientHello",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00],
        ),
        (
            "plain text after 'S'",
            startup_packet("alice", gw.database()),
        ),
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&proto_postgres::startup::encode_ssl_request())
            .await
            .unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"S", "{what}");
        s.write_all(&after).await.unwrap();
        read_until_closed(&mut s, limit, what).await;
    }
    // A TLS client still gets in.
    let client = gw
        .try_connect_tls("alice", Some(&gw.token("alice")), None)
        .await
        .expect("TLS login");
    let v: i32 = client.query_one("select 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_startup_packet() {
    let gw = gateway().await;
    let mut random = vec![0u8; 60];
    for b in random.iter_mut() {
        *b = rand::random();
    }
    // A plausible length (8..=10000) followed by a random "protocol version" and body.
    let mut random_with_length = 64i32.to_be_bytes().to_vec();
    random_with_length.extend_from_slice(&random);
    let mut random_raw = vec![0xffu8];
    random_raw.extend_from_slice(&random);
    let probes: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        (
            "TLS ClientHello without SSLRequest",
            vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
        ),
        ("random bytes", random_raw),
        ("random body with a valid length", random_with_length),
        ("protocol 2.0", {
            let mut p = 8i32.to_be_bytes().to_vec();
            p.extend_from_slice(&0x0002_0000i32.to_be_bytes());
            p
        }),
        ("parameter without terminator", {
            let mut p = 13i32.to_be_bytes().to_vec();
            p.extend_from_slice(&0x0003_0000i32.to_be_bytes());
            p.extend_from_slice(b"user\0");
            p
        }),
    ];
    for (what, bytes) in &probes {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, what).await;
        if !closed.bytes.is_empty() {
            assert_error(what, &closed, "08P01", "");
        }
    }
    // A startup without a user name.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&proto_postgres::startup::encode_startup(&[(
        "database",
        gw.database(),
    )]))
    .await
    .unwrap();
    let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, "no user").await;
    assert_error("no user", &closed, "28P01", "user");
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_lengths_out_of_range() {
    let gw = gateway().await;
    let cases: [(&str, i32); 5] = [
        ("huge", i32::MAX),
        ("negative", -1),
        ("most negative", i32::MIN),
        ("shorter than itself", 4),
        ("over the limit", 10_001),
    ];
    for (what, len) in cases {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&0x0003_0000i32.to_be_bytes());
        s.write_all(&bytes).await.unwrap();
        let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, what).await;
        assert_error(what, &closed, "08P01", "length");
        // The answer comes at once, not after the handshake timeout.
        assert!(
            closed.after < HANDSHAKE_TIMEOUT + MARGIN,
            "{what}: closed after {:?}",
            closed.after
        );
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_startup_then_close() {
    let gw = gateway().await;
    for cut in [1usize, 3, 4, 9, 20] {
        let packet = startup_packet("alice", gw.database());
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&packet[..cut.min(packet.len() - 1)])
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let what = format!("startup cut after {cut} bytes");
        read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, &what).await;
    }
    // A client that connects and leaves at once (health checks, port scanners).
    for _ in 0..10 {
        drop(TcpStream::connect(gw.addr).await.unwrap());
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_after_the_timeout() {
    let gw = gateway().await;
    let limit = HANDSHAKE_TIMEOUT + MARGIN;
    let stalls = [
        ("nothing sent", Vec::new(), false),
        (
            "half a startup packet",
            startup_packet("alice", gw.database())[..12].to_vec(),
            false,
        ),
        (
            "startup but no password",
            startup_packet("alice", gw.database()),
            false,
        ),
        (
            "half a password message",
            startup_packet("alice", gw.database()),
            true,
        ),
        (
            "SSLRequest then nothing",
            proto_postgres::startup::encode_ssl_request().to_vec(),
            false,
        ),
    ];
    let mut tasks = Vec::new();
    for (what, bytes, half_password) in stalls {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            if half_password {
                read_until(&mut s, b'R', what).await;
                s.write_all(&frame(b'p', b"eyJhbGciOiJIUzI1NiJ9.partial\0")[..20])
                    .await
                    .unwrap();
            }
            // Stay connected and silent: the gateway must hang up by itself.
            read_until_closed(&mut s, limit, what).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_the_limit_after_login() {
    let gw = gateway().await;
    let mut s = raw_login(&gw).await;
    // A Query claiming 2 MiB, and the first few bytes of it.
    let mut bytes = vec![b'Q'];
    bytes.extend_from_slice(&((2 * MAX_MESSAGE) as i32).to_be_bytes());
    bytes.extend_from_slice(b"select '");
    bytes.extend_from_slice(&[b'x'; 1000]);
    s.write_all(&bytes).await.unwrap();
    let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, "oversized Query").await;
    assert_error(
        "oversized Query",
        &closed,
        "08P01",
        &MAX_MESSAGE.to_string(),
    );

    // The same for a CopyData frame in the middle of a COPY.
    let mut s = raw_login(&gw).await;
    s.write_all(&frame(
        b'Q',
        b"create temp table t (a text); copy t from stdin\0",
    ))
    .await
    .unwrap();
    read_until(&mut s, b'G', "COPY FROM STDIN").await;
    let mut bytes = frame(b'd', b"ok\n");
    bytes.push(b'd');
    bytes.extend_from_slice(&((MAX_MESSAGE + 100) as i32).to_be_bytes());
    bytes.extend_from_slice(&[b'y'; 100]);
    s.write_all(&bytes).await.unwrap();
    let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, "oversized CopyData").await;
    assert_error(
        "oversized CopyData",
        &closed,
        "08P01",
        &MAX_MESSAGE.to_string(),
    );

    // A message just under the limit is fine.
    let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
    let text = "y".repeat(MAX_MESSAGE - 1000);
    let n: i32 = client
        .query_one(&format!("select length('{text}')"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, text.len());
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_query_from_a_real_client_gets_the_limit_error() {
    // Unlike the raw test above, tokio-postgres sends the whole message before reading: the
    // gateway's answer must still reach it, not a connection reset. Whether a reset wins is a
    // race, so try several times.
    let gw = gateway().await;
    let sql = format!("select '{}'", "z".repeat(16 * MAX_MESSAGE));
    for attempt in 1..=5 {
        let client = gw.connect_tokio_postgres(&gw.token("alice")).await;
        let e = client.simple_query(&sql).await.unwrap_err();
        let db = e.as_db_error().unwrap_or_else(|| {
            panic!("attempt {attempt}: the client saw no error from the gateway, only: {e:?}")
        });
        assert_eq!(db.code().code(), "08P01");
        assert!(
            db.message().contains(&MAX_MESSAGE.to_string()),
            "{}",
            db.message()
        );
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_after_login() {
    let gw = gateway().await;
    for ty in [b'y', 0u8, 0xff, b'R'] {
        let mut s = raw_login(&gw).await;
        s.write_all(&frame(ty, b"whatever\0")).await.unwrap();
        let what = format!("message type {ty}");
        let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, &what).await;
        assert_error(&what, &closed, "08P01", "message type");
    }
    // A length field smaller than itself.
    let mut s = raw_login(&gw).await;
    s.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, "length 2").await;
    assert_error("length 2", &closed, "08P01", "length");
    // Malformed bodies of messages the gateway reads.
    for (what, bytes) in [
        ("Query without NUL", frame(b'Q', b"select 1")),
        ("Parse without a query", frame(b'P', b"name\0")),
        ("Bind without a statement name", frame(b'B', b"portal")),
        ("Close of an unknown kind", frame(b'C', b"Xname\0")),
    ] {
        let mut s = raw_login(&gw).await;
        s.write_all(&bytes).await.unwrap();
        let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, what).await;
        assert_error(what, &closed, "08P01", "malformed");
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_silence_after_login() {
    let gw = gateway().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("half a header", vec![b'Q', 0, 0]),
        ("half a Query", {
            let mut b = vec![b'Q'];
            b.extend_from_slice(&100i32.to_be_bytes());
            b.extend_from_slice(b"select");
            b
        }),
    ];
    for (what, bytes) in cases {
        let mut s = raw_login(&gw).await;
        s.write_all(&bytes).await.unwrap();
        let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, what).await;
        assert_error(what, &closed, "08P01", "half a message");
    }
    // An idle logged-in connection (no partial message) is left alone past the timeout.
    let mut idle = raw_login(&gw).await;
    tokio::time::sleep(HANDSHAKE_TIMEOUT + Duration::from_millis(500)).await;
    idle.write_all(&frame(b'Q', b"select 1\0")).await.unwrap();
    read_until(&mut idle, b'Z', "idle connection after the timeout").await;
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_copydata_frame_then_silence() {
    // Large CopyData frames are streamed upstream as they arrive, but a client that stops halfway
    // through one holds the connection (and the upstream's COPY) just like any other half message.
    let gw = gateway().await;
    let mut s = raw_login(&gw).await;
    s.write_all(&frame(
        b'Q',
        b"create temp table t (a text); copy t from stdin\0",
    ))
    .await
    .unwrap();
    read_until(&mut s, b'G', "COPY FROM STDIN").await;
    let mut bytes = frame(b'd', b"complete row\n");
    bytes.push(b'd');
    bytes.extend_from_slice(&100_004i32.to_be_bytes());
    bytes.extend_from_slice(&[b'x'; 100]);
    s.write_all(&bytes).await.unwrap();
    let closed =
        read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, "half a CopyData frame").await;
    assert_error("half a CopyData frame", &closed, "08P01", "half a message");
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_trickled_byte_by_byte_is_bounded_by_the_timeout() {
    // The timeout bounds how long the rest of a half-sent message may take, not the pause between
    // two bytes of it: otherwise one byte every second holds a connection forever.
    let gw = gateway().await;
    let s = raw_login(&gw).await;
    let (mut read, mut write) = s.into_split();
    let mut head = vec![b'Q'];
    head.extend_from_slice(&1000i32.to_be_bytes());
    head.extend_from_slice(b"select 1");
    write.write_all(&head).await.unwrap();
    let trickle = tokio::spawn(async move {
        // At most 40 bytes over 20 s, far short of the 992 still owed.
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if write.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let closed = read_until_closed(&mut read, HANDSHAKE_TIMEOUT + MARGIN, "trickled message").await;
    trickle.abort();
    assert_error("trickled message", &closed, "08P01", "");
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_message_of_100_kb() {
    let gw = gateway().await;
    // Raw: the whole 100 KB message is sent before reading the answer.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&startup_packet("alice", gw.database()))
        .await
        .unwrap();
    read_until(&mut s, b'R', "startup").await;
    let mut password = vec![b'a'; 100 * 1024];
    password.push(0);
    s.write_all(&frame(b'p', &password)).await.unwrap();
    let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, "100 KB password").await;
    assert_error("100 KB password", &closed, "28P01", "password");

    // The same through tokio-postgres.
    let long = "b".repeat(100 * 1024);
    let Err(e) = gw.try_connect(&long).await else {
        panic!("a 100 KB password was admitted")
    };
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("the client saw no 28P01, only: {e:?}"));
    assert_eq!(db.code().code(), "28P01");
    assert!(
        !db.message().contains("bbbbbbbbbbbbbbbb"),
        "the error repeats the password"
    );
    // Just over the identity layer's token limit but within the message limit: still a clean 28P01.
    let long = "c".repeat(20 * 1024);
    let Err(e) = gw.try_connect(&long).await else {
        panic!("a 20 KB password was admitted")
    };
    assert_eq!(common::sqlstate(&e), "28P01");
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_broken_clients_does_not_disturb_a_good_one() {
    let gw = gateway().await;
    let good = gw.connect_tokio_postgres(&gw.token("steady")).await;
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let addr = gw.addr;
        let db = gw.database().to_owned();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let bytes = match i % 4 {
                0 => b"\x00\x00\x00\x05\x00garbage".to_vec(),
                1 => startup_packet("alice", &db)[..10].to_vec(),
                2 => (-5i32).to_be_bytes().to_vec(),
                _ => {
                    let mut b = startup_packet("alice", &db);
                    b.extend_from_slice(&frame(b'p', b"not-a-token\0"));
                    b
                }
            };
            let _ = s.write_all(&bytes).await;
            if i % 8 == 1 {
                // Some leave at once, the others wait for the gateway to hang up.
                return;
            }
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT + MARGIN, async {
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }));
    }
    // Meanwhile the established session keeps working.
    for i in 0..20i32 {
        let v: i32 = good
            .query_one("select $1::int4 + 1", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, i + 1);
    }
    for t in tasks {
        t.await.unwrap();
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_statement_from_psql_gets_the_limit_error() {
    // What a psql user sees when a script holds a statement over the limit.
    let gw = gateway().await;
    let script = gw.scratch().join("huge.sql");
    std::fs::write(
        &script,
        format!("select length('{}');\n", "w".repeat(16 * MAX_MESSAGE)),
    )
    .unwrap();
    // Whether a connection reset destroys the answer is a race: try a few times.
    for attempt in 1..=3 {
        let out = gw
            .psql(&["-At", "-f", &script.display().to_string()], &[])
            .await;
        assert!(
            !out.status.success(),
            "psql ran an over-limit statement: {}",
            common::stdout(&out)
        );
        let err = common::stderr(&out);
        assert!(
            err.contains(&MAX_MESSAGE.to_string()) && err.contains("max_message_bytes"),
            "attempt {attempt}: psql was not told about the limit: {err}"
        );
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

/// In SJIS (and BIG5, GBK, ...) the second byte of a character can be a backslash or quote, so the
/// gateway and the server would read the same bytes as different statements. Such sessions are
/// refused at startup; the statement below, which smuggles a DROP past a UTF-8 reader, never runs.
#[tokio::test]
async fn unsafe_client_encodings_are_refused_at_startup() {
    use common::{stderr, stdout};
    let gw = TestGateway::start().await;
    let direct = gw.db.connect_direct().await;
    direct
        .batch_execute("create table victim (id int)")
        .await
        .unwrap();
    // 0x95 0x5c is one SJIS character whose second byte is a backslash. The bytes are not UTF-8,
    // so they go to psql in a file.
    let file = gw.scratch().join("smuggle.sql");
    std::fs::write(&file, b"SELECT E'\x95\\'; DROP TABLE victim; --';\n").unwrap();
    let out = gw
        .psql(
            &["-f", file.to_str().unwrap()],
            &[("PGCLIENTENCODING", "SJIS")],
        )
        .await;
    assert!(!out.status.success(), "psql should be refused");
    let err = stderr(&out);
    assert!(
        err.contains("client_encoding SJIS is not accepted"),
        "{err}"
    );
    let exists: bool = direct
        .query_one(
            "select exists (select 1 from pg_class where relname = 'victim')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exists, "the table must survive");
    // UTF8 and other ASCII-safe encodings still work.
    let out = gw
        .psql(
            &["-At", "-c", "select 1"],
            &[("PGCLIENTENCODING", "LATIN1")],
        )
        .await;
    assert_eq!(stdout(&out).trim(), "1", "{}", stderr(&out));
}

/// Sends a 100 KB password message the way drivers do (all of it, then read) and requires the
/// 28P01 before the close.
async fn oversized_password_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    gw: &TestGateway,
    what: &str,
) {
    s.write_all(&startup_packet("alice", gw.database()))
        .await
        .unwrap();
    read_until(&mut s, b'R', what).await;
    let mut password = vec![b'a'; 100 * 1024];
    password.push(0);
    // A failed write (the gateway reset the connection) shows as a missing error below.
    if s.write_all(&frame(b'p', &password)).await.is_ok() {
        let _ = s.flush().await;
    }
    let closed = read_until_closed(&mut s, HANDSHAKE_TIMEOUT + MARGIN, what).await;
    assert_error(what, &closed, "28P01", "password message longer than");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_password_gets_its_error_every_time_plain_and_tls() {
    // Closing with the rest of the message unread makes the kernel send a reset, which destroys
    // the error at the client if it comes first: a race, so many tries, over plain TCP, raw TLS
    // and a TLS driver at once.
    const TRIES: usize = 30;
    let gw = std::sync::Arc::new(
        TestGateway::start_with(Options {
            tls: true,
            handshake_timeout: "2s".into(),
            max_message_bytes: MAX_MESSAGE as u64,
            ..Options::default()
        })
        .await,
    );
    let plain = {
        let gw = gw.clone();
        tokio::spawn(async move {
            for attempt in 1..=TRIES {
                let s = TcpStream::connect(gw.addr).await.unwrap();
                oversized_password_on(s, &gw, &format!("plain, try {attempt}")).await;
            }
        })
    };
    let tls = {
        let gw = gw.clone();
        tokio::spawn(async move {
            for attempt in 1..=TRIES {
                let s = raw_tls(&gw).await;
                oversized_password_on(s, &gw, &format!("TLS, try {attempt}")).await;
            }
        })
    };
    let driver = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let long = "b".repeat(100 * 1024);
            for attempt in 1..=TRIES {
                let Err(e) = gw.try_connect_tls("alice", Some(&long), None).await else {
                    panic!("try {attempt}: a 100 KB password was admitted");
                };
                let db = e.as_db_error().unwrap_or_else(|| {
                    panic!("TLS driver, try {attempt}: no 28P01 from the gateway, only: {e:?}")
                });
                assert_eq!(db.code().code(), "28P01", "try {attempt}");
            }
        })
    };
    for task in [plain, tls, driver] {
        task.await.unwrap();
    }
    let gw = std::sync::Arc::into_inner(gw).expect("the tasks are done");
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_query_over_tls_gets_the_limit_error_every_time() {
    // The same race after login: the driver sends the whole statement before reading, and over
    // TLS a reset would destroy the error record unread.
    let gw = TestGateway::start_with(Options {
        tls: true,
        handshake_timeout: "2s".into(),
        max_message_bytes: MAX_MESSAGE as u64,
        ..Options::default()
    })
    .await;
    let sql = format!("select '{}'", "z".repeat(4 * MAX_MESSAGE));
    for attempt in 1..=10 {
        let client = gw
            .try_connect_tls("alice", Some(&gw.token("alice")), None)
            .await
            .expect("TLS login");
        let e = client.simple_query(&sql).await.unwrap_err();
        let db = e.as_db_error().unwrap_or_else(|| {
            panic!("try {attempt}: the client saw no error from the gateway, only: {e:?}")
        });
        assert_eq!(db.code().code(), "08P01", "try {attempt}");
        assert!(
            db.message().contains(&MAX_MESSAGE.to_string()),
            "{}",
            db.message()
        );
    }
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

/// Sends two queries (the first with 200,000 rows), shuts down the sending side at once, and
/// reads to the end: every row, both CommandCompletes and both ReadyForQuery must arrive before
/// the gateway closes, as they do from PostgreSQL itself.
async fn half_close_after_queries<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, what: &str) {
    let mut bytes = frame(b'Q', b"select generate_series(1, 200000)\0");
    bytes.extend(frame(b'Q', b"select 'after'\0"));
    s.write_all(&bytes).await.unwrap();
    s.shutdown().await.unwrap();
    let closed = read_until_closed(&mut s, Duration::from_secs(60), what).await;
    let msgs = messages(&closed.bytes);
    let count = |ty: u8| msgs.iter().filter(|(t, _)| *t == ty).count();
    assert_eq!(error_in(&closed.bytes), None, "{what}");
    assert_eq!(count(b'D'), 200_001, "{what}: DataRows");
    let tags: Vec<String> = msgs
        .iter()
        .filter(|(t, _)| *t == b'C')
        .map(|(_, b)| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
        .collect();
    assert_eq!(tags, ["SELECT 200000", "SELECT 1"], "{what}");
    assert_eq!(count(b'Z'), 2, "{what}: ReadyForQuery");
    assert_eq!(
        msgs.last().map(|(t, _)| *t),
        Some(b'Z'),
        "{what}: the last message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_the_whole_result_plain_and_tls() {
    let gw = TestGateway::start_with(Options {
        tls: true,
        handshake_timeout: "2s".into(),
        ..Options::default()
    })
    .await;
    let s = raw_login(&gw).await;
    half_close_after_queries(s, "plain TCP").await;
    let mut s = raw_tls(&gw).await;
    login_on(&mut s, &gw, &startup_packet("alice", gw.database())).await;
    half_close_after_queries(s, "TLS").await;

    // Each statement is in the trail with its real end, not as interrupted.
    let records = gw
        .trail_until("four statement ends", |records| {
            records
                .iter()
                .filter(|p| {
                    p["event"] == "statement_finished" || p["event"] == "statement_executed"
                })
                .count()
                >= 4
        })
        .await;
    let ends: Vec<&serde_json::Value> = records
        .iter()
        .filter(|p| p["event"] == "statement_finished" || p["event"] == "statement_executed")
        .collect();
    let rows: Vec<u64> = ends.iter().filter_map(|p| p["rows"].as_u64()).collect();
    assert_eq!(
        rows.iter().filter(|r| **r == 200_000).count(),
        2,
        "{ends:#?}"
    );
    assert!(
        ends.iter().all(|p| p["error"].is_null()),
        "no statement may be recorded as interrupted: {ends:#?}"
    );
    assert_eq!(ends.len(), 4, "{ends:#?}");
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}
