//! Closing a client connection after a fatal error so that the client reads the error.
//!
//! A socket closed with unread bytes in its receive buffer makes the kernel answer with a reset
//! instead of a FIN, and a reset that reaches the client before its application has read our
//! ErrorResponse destroys it: the client sees "connection reset" where it should have seen the
//! reason (an oversized password message, an oversized query, malformed input). So the gateway
//! writes the error and then closes in three steps, as web servers have long done ("lingering
//! close"):
//!
//! 1. Discard the client's input until it pauses (it has finished sending and is reading the
//!    answer) or ends. The FIN is held back until then because libpq treats an end of stream
//!    that arrives while it is still writing as a lost connection, before reading the error.
//! 2. Shut down the write side: TLS close_notify, then TCP FIN.
//! 3. Discard input again until the client closes its side too, or stays quiet for a while, so
//!    that what the client sends after reading the error (a Terminate, its own close_notify)
//!    finds an open socket rather than a closed one that would answer with a reset.
//!
//! Every step is bounded in time and in bytes; the whole close never takes longer than the budget
//! given, whatever the client does.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// A pause in the client's sending that means it has sent everything and is reading.
const PAUSE: Duration = Duration::from_millis(250);

/// After the FIN, how long the client may stay silent before the socket is closed anyway.
const AFTER_FIN_QUIET: Duration = Duration::from_secs(1);

/// Most bytes discarded in one lingering close. A client that sent a message larger than the
/// limit keeps sending the rest of it; 64 MiB covers a message several times the default limit
/// of the same size, and the time budget bounds the rest.
pub const MAX_DISCARD: u64 = 64 * 1024 * 1024;

/// Writes `last` (the fatal ErrorResponse) and flushes, then closes as described in the module
/// documentation, all within `budget`. Errors end the close early (the connection is gone
/// anyway).
pub async fn lingering_close<R, W>(read: &mut R, write: &mut W, last: &[u8], budget: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = Instant::now() + budget;
    let sent = tokio::time::timeout_at(deadline, async {
        write.write_all(last).await?;
        write.flush().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        // The client is gone or does not read: there is nothing to protect.
        return;
    }
    let mut sink = vec![0u8; 16 * 1024];
    let mut left = MAX_DISCARD;
    let ended = discard(read, &mut sink, &mut left, PAUSE, deadline).await;
    let _ = tokio::time::timeout_at(deadline, write.shutdown()).await;
    if !ended {
        discard(read, &mut sink, &mut left, AFTER_FIN_QUIET, deadline).await;
    }
}

/// Reads and drops input until `quiet` passes without any, the stream ends or fails, `left`
/// bytes are used up, or `deadline` passes. Returns whether the stream ended (or failed).
async fn discard<R: AsyncRead + Unpin>(
    read: &mut R,
    sink: &mut [u8],
    left: &mut u64,
    quiet: Duration,
    deadline: Instant,
) -> bool {
    while *left > 0 {
        let until = (Instant::now() + quiet).min(deadline);
        match tokio::time::timeout_at(until, read.read(sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => *left = left.saturating_sub(n as u64),
            Err(_) => return false,
        }
    }
    false
}
