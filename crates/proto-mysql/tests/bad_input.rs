//! Bad input on raw sockets: malformed and truncated logins, packets that stall half-sent,
//! oversized and empty packets, unknown commands. Each gets a clear error or a bounded close, only
//! its own connection ends, and a good client keeps working beside it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mysql_common::constants::CapabilityFlags;
use mysql_common::packets::{AuthPlugin, HandshakeResponse};
use mysql_common::proto::MySerialize;
use proto_mysql::packet::{self, PacketReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(1);

/// Connects and reads the greeting.
async fn greeted(addr: std::net::SocketAddr) -> (TcpStream, PacketReader) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut reader = PacketReader::new();
    let greeting = reader.read(&mut tcp, 1 << 20).await.unwrap();
    assert_eq!(greeting.first(), Some(10), "protocol 10 greeting");
    (tcp, reader)
}

/// Logs in as alice with the clear-text plugin named in the handshake response itself.
async fn logged_in(addr: std::net::SocketAddr) -> (TcpStream, PacketReader) {
    let (mut tcp, mut reader) = greeted(addr).await;
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_DEPRECATE_EOF;
    let mut hello = Vec::new();
    HandshakeResponse::new(
        Some(&b"secret\0"[..]),
        (10, 11, 0),
        Some(&b"alice"[..]),
        Some(&b"shop"[..]),
        Some(AuthPlugin::Other(b"mysql_clear_password".as_slice().into())),
        caps,
        None,
        1 << 24,
    )
    .serialize(&mut hello);
    tcp.write_all(&packet::packet(1, &hello)).await.unwrap();
    let ok = reader.read(&mut tcp, 1 << 20).await.unwrap();
    assert_eq!(ok.first(), Some(0), "login OK: {:?}", ok.payload());
    (tcp, reader)
}

/// Reads until the gateway closes; returns what came and how long it took.
async fn until_closed(tcp: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (all, started.elapsed()),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the gateway kept the connection open for 10 s"),
        }
    }
}

/// The error code of the ERR packet at the start of `bytes`.
fn err_code(bytes: &[u8]) -> Option<u16> {
    (bytes.get(4) == Some(&0xff)).then(|| u16::from_le_bytes([bytes[5], bytes[6]]))
}

#[tokio::test]
async fn malformed_and_stalled_logins_end_only_their_connection() {
    let db = Database::create();
    let (addr, _) = start_configured(&db.0, |c| {
        c.handshake_timeout = TIMEOUT;
        c.max_message_bytes = 4096;
    })
    .await;

    // Garbage instead of a handshake response: an error, then the close.
    let (mut garbage, _) = greeted(addr).await;
    garbage
        .write_all(&packet::packet(1, b"\x01\x02not a handshake response"))
        .await
        .unwrap();
    let (reply, _) = until_closed(&mut garbage).await;
    assert!(err_code(&reply).is_some(), "{reply:?}");

    // Half a packet, then silence: closed at the handshake deadline.
    let (mut stalled, _) = greeted(addr).await;
    stalled
        .write_all(&[0x40, 0x00, 0x00, 0x01, 0x0d])
        .await
        .unwrap();
    let (_, waited) = until_closed(&mut stalled).await;
    assert!(waited < TIMEOUT * 5, "{waited:?}");

    // A login packet far over the bound: refused without reading it all.
    let (mut huge, _) = greeted(addr).await;
    huge.write_all(&[0xff, 0xff, 0x0f, 0x01]).await.unwrap();
    let (reply, _) = until_closed(&mut huge).await;
    assert_eq!(err_code(&reply), Some(1045), "{reply:?}");

    // Beside all of them, a good client logs in and queries.
    let (ok, out, err) = client(addr, "secret", "shop", "SELECT 41 + 1").await;
    assert!(ok, "{err}");
    assert_eq!(out, "42\n");
}

#[tokio::test]
async fn bad_commands_after_login() {
    let db = Database::create();
    let (addr, _) = start_configured(&db.0, |c| {
        c.handshake_timeout = TIMEOUT;
        c.max_message_bytes = 4096;
    })
    .await;

    // An unknown command gets an error, never an OK, and the session goes on.
    let (mut tcp, mut reader) = logged_in(addr).await;
    tcp.write_all(&packet::packet(0, &[0x7f])).await.unwrap();
    let reply = reader.read(&mut tcp, 1 << 20).await.unwrap();
    assert_eq!(err_code(&reply.raw), Some(1047));
    tcp.write_all(&packet::packet(0, &[0x0e])).await.unwrap(); // COM_PING
    let reply = reader.read(&mut tcp, 1 << 20).await.unwrap();
    assert_eq!(reply.first(), Some(0x00), "ping answered");

    // A command larger than max_message_bytes: ER_NET_PACKET_TOO_LARGE, then the close.
    let mut big = vec![0x03];
    big.extend_from_slice(b"SELECT '");
    big.extend(std::iter::repeat_n(b'x', 8000));
    big.push(b'\'');
    tcp.write_all(&packet::packet(0, &big)).await.unwrap();
    let (reply, _) = until_closed(&mut tcp).await;
    assert_eq!(err_code(&reply), Some(1153), "{reply:?}");

    // Half a command, then silence: closed after the bound on the rest of a message.
    let (mut tcp, _) = logged_in(addr).await;
    tcp.write_all(&[0x20, 0x00, 0x00, 0x00, 0x03, b'S'])
        .await
        .unwrap();
    let (_, waited) = until_closed(&mut tcp).await;
    assert!(waited < TIMEOUT * 5, "{waited:?}");

    // An empty command packet is a protocol error: said, then closed.
    let (mut tcp, _) = logged_in(addr).await;
    tcp.write_all(&packet::packet(0, &[])).await.unwrap();
    let (reply, _) = until_closed(&mut tcp).await;
    assert!(err_code(&reply).is_some(), "{reply:?}");

    // An idle session is not a stalled one.
    let (mut tcp, mut reader) = logged_in(addr).await;
    tokio::time::sleep(TIMEOUT * 2).await;
    tcp.write_all(&packet::packet(0, &[0x0e])).await.unwrap();
    let reply = reader.read(&mut tcp, 1 << 20).await.unwrap();
    assert_eq!(reply.first(), Some(0x00), "ping after idling");
}

#[tokio::test]
async fn the_first_greeting_names_the_servers_version() {
    let db = Database::create();
    let (addr, _) = start(&db.0).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let greeting = PacketReader::new().read(&mut tcp, 1 << 20).await.unwrap();
    let payload = greeting.payload();
    let version = payload[1..]
        .split(|b| *b == 0)
        .next()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap();
    // The local server is MariaDB; the gateway says it is in front of it.
    assert!(
        version.contains("MariaDB") && version.ends_with("-portcullis"),
        "{version}"
    );
}
