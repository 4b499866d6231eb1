//! The relay: after login, client frames go upstream and server frames go to the client, each
//! direction inspected in place and forwarded as the original bytes.
//!
//! Client -> upstream: Query, Parse, Bind, Execute and Close are read (a few fields, no copy) so
//! that every statement is judged and every execution audited before it is forwarded. A denied
//! statement is not forwarded: in its place the gateway sends a *sentinel* statement that
//! PostgreSQL rejects with a syntax error, and the upstream -> client direction swaps that error
//! for the gateway's own. Because the upstream produces the error at the exact place of the denied
//! message, pipelining order, skip-until-Sync, and the transaction's failed state all behave as if
//! PostgreSQL itself had refused the statement, while nothing of the statement reaches it.
//!
//! Upstream -> client: only message headers are read, plus the bodies of CommandComplete,
//! ErrorResponse and ReadyForQuery (to finish executions for the audit trail). DataRow and
//! CopyData bodies stream through without being buffered whole.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use gateway_core::{
    ErrorKind, Execution, GatewayError, MaskedColumn, Outcome, RecordedError, RecordedParameters,
    Session, Side, SqlSettings, Statement,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connection::Shared;
use crate::masking::ActivePlan;
use crate::upstream::Upstream;
use crate::wire::{
    bind_values, error_fields, error_response, frontend, typed, typed_header, FrameError, Frontend,
    Reader, HEADER_LEN,
};
use gateway_core::serve::stream::{ClientStream, ReadSide, WriteSide};

/// Upstream frames are trusted for size up to PostgreSQL's own limit (1 GB).
const MAX_UPSTREAM_MESSAGE: usize = 0x3fff_ffff;
const READ_CHUNK: usize = 64 * 1024;
/// A read buffer that grew past this to hold one large message is replaced by a fresh one of
/// [`READ_CHUNK`] once the message has gone through: otherwise each session keeps, until it ends,
/// a buffer the size of the largest message it ever carried (up to `max_message_bytes` from a
/// client), and a few sessions that once sent a large statement hold hundreds of MiB.
const SHRINK_ABOVE: usize = 1024 * 1024;

/// Makes room for the next read, handing back a grown buffer's memory when what is left in it
/// (an incomplete message, at most [`READ_CHUNK`]) fits a fresh one. One comparison per read on
/// the common path.
fn reserve_read(buf: &mut BytesMut) {
    buf.reserve(READ_CHUNK);
    if buf.capacity() > SHRINK_ABOVE && buf.len() <= READ_CHUNK {
        let mut fresh = BytesMut::with_capacity(READ_CHUNK + buf.len());
        fresh.extend_from_slice(buf);
        *buf = fresh;
    }
}

/// What the upstream owes the client, in order. The client direction pushes, the upstream
/// direction pops as responses arrive.
enum Pending {
    /// A simple Query (ends at ReadyForQuery).
    Query(Option<Execution>),
    /// An extended-protocol Execute (ends at CommandComplete, EmptyQueryResponse, PortalSuspended
    /// or ErrorResponse; skipped when the segment failed earlier).
    Execute(Option<Execution>),
    /// A denied message replaced by a sentinel; the sentinel's error is replaced by this one.
    Denied(u64, GatewayError),
    /// A Sync (ends at ReadyForQuery).
    Sync,
    /// A Describe in a masked session (ends at its RowDescription or NoData). The client's own
    /// (`None`) is answered to the client; one the gateway adds before an Execute (`Some`)
    /// describes that execution's result for its mask plan, and its answer goes no further.
    Describe(Option<Added>),
    /// A Bind in a masked session (ends at BindComplete, or is dropped with its segment when the
    /// database refuses it): the portal's name and the Bind's number.
    Bind(Vec<u8>, u64),
}

/// The Describe the gateway adds before an Execute in a masked session: the execution's mask
/// planner, and the portal and Bind the gateway believes it runs. The plan is made only if the
/// database confirmed that very Bind (see [`UpstreamDirection::confirmed`]).
struct Added {
    planner: gateway_core::MaskPlanner,
    portal: Vec<u8>,
    bind: u64,
}

type Queue = Arc<Mutex<VecDeque<Pending>>>;

fn push(queue: &Queue, p: Pending) {
    queue.lock().unwrap_or_else(|e| e.into_inner()).push_back(p);
}

/// Runs the relay until either side ends. Executions still open at the end are finished in the
/// audit trail as interrupted.
pub(crate) async fn relay(
    shared: &Shared,
    client: ClientStream,
    session: Arc<Session>,
    upstream: Upstream,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    let (mut client_read, mut client_write) = client.split();
    let (mut up_read, mut up_write) = upstream.stream.split();
    let queue: Queue = Arc::default();
    // Set once the client's stream ended (a half-close, or a close) without Terminate.
    let client_eof = AtomicBool::new(false);
    // CopyInResponses seen from the upstream: see `ClientDirection::copy_in_ended`.
    let copy_ins = AtomicU64::new(0);
    let nonce = format!("{:016x}", rand::random::<u64>());
    let scs = AtomicBool::new(
        upstream
            .parameter_status
            .iter()
            .find(|(k, _)| k == "standard_conforming_strings")
            .is_none_or(|(_, v)| v == "on"),
    );

    let iso_dates = upstream
        .parameter_status
        .iter()
        .find(|(k, _)| k == "DateStyle")
        .is_none_or(|(_, v)| v.starts_with("ISO"));

    let mut to_upstream = ClientDirection {
        session: &session,
        queue: &queue,
        statements: NameMap::default(),
        portals: NameMap::default(),
        skipping: false,
        marker: format!("PORTCULLIS_DENIED_{nonce}"),
        denials: 0,
        settings: SqlSettings::default(),
        scs: &scs,
        max_message: shared.config.max_message_bytes,
        partial_timeout: shared.config.handshake_timeout,
        client_eof: &client_eof,
        copy_ins: &copy_ins,
        copy_ins_ended: 0,
        masked: session.masking_active(),
        binds: 0,
        held_input: BytesMut::new(),
        left_while_held: false,
    };
    let mut to_client = UpstreamDirection {
        session: &session,
        queue: &queue,
        marker: format!("PORTCULLIS_DENIED_{nonce}"),
        scs: &scs,
        rows: 0,
        tags: Vec::new(),
        query_error: None,
        // Asked once per session: when nobody traces statements, the upstream direction does no
        // trace bookkeeping at all.
        trace: gateway_core::trace::statement_spans_enabled(),
        responded: false,
        ready_buf: Vec::new(),
        finished: VecDeque::new(),
        finish_before_result: session.finish_before_result(),
        client_eof: &client_eof,
        copy_ins: &copy_ins,
        masked: session.masking_active(),
        plan: None,
        confirmed: HashMap::default(),
        iso_dates,
        statement_index: 0,
        query_masked: Vec::new(),
        out: BytesMut::new(),
        notices: None,
    };
    let notices = Arc::new(Notices::default());
    session.set_notices(Arc::clone(&notices) as Arc<dyn gateway_core::NoticeSink>);
    to_client.notices = Some(notices);
    let leftover = upstream.leftover;
    let stop = StopSignal::watch(shutdown);
    let result = tokio::select! {
        // In order, not at random: each branch runs as long as the session does, so there is
        // nothing to be fair about, and the random start would cost a draw on every wake.
        biased;
        r = to_upstream.run(&mut client_read, &mut up_write) => r,
        r = to_client.run(leftover, &mut up_read, &mut client_write) => r,
        () = idle_after_shutdown(&stop, &queue, &session) => Err(GatewayError::new(
            ErrorKind::ShuttingDown,
            Side::Gateway,
            "the gateway is shutting down; reconnect to continue",
        )),
        e = session.terminated() => Err(e),
    };
    let result = match result {
        // After the client's end of stream, a failed write to it means it closed both directions
        // and went away (not just its sending side): an ordinary departure, as before the wait
        // for what the upstream owed.
        Err(e)
            if client_eof.load(Ordering::Acquire)
                && e.side == Side::Client
                && e.kind == ErrorKind::Protocol =>
        {
            Ok(())
        }
        other => other,
    };
    let _ = up_write.shutdown().await;
    match &result {
        Err(e) => {
            let reply = if e.side != Side::Upstream || e.kind != ErrorKind::UpstreamUnavailable {
                error_response(e, true)
            } else {
                error_response(
                    &GatewayError::upstream_unavailable("the connection to the database was lost"),
                    true,
                )
            };
            // The client may still be sending (the rest of an oversized message): close so that
            // the error reaches it rather than a reset.
            gateway_core::serve::linger::lingering_close(
                &mut client_read,
                &mut client_write,
                &reply,
                shared.config.handshake_timeout,
            )
            .await;
        }
        Ok(()) => {
            let _ = client_write.shutdown().await;
        }
    }

    // Executions that ended upstream but whose end was not yet recorded (the relay stopped
    // between reading their results and recording them).
    to_client.flush_finished().await;
    // Whatever is still owed was interrupted: record it.
    let leftovers: Vec<Pending> = queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    for p in leftovers {
        if let Pending::Query(Some(exec)) | Pending::Execute(Some(exec)) = p {
            let outcome = Outcome {
                error: Some(RecordedError {
                    side: result
                        .as_ref()
                        .err()
                        .map(|e| e.side)
                        .unwrap_or(Side::Client),
                    code: None,
                    message: "the connection ended before the result completed".into(),
                }),
                ..Outcome::default()
            };
            let _ = session.finish(exec, outcome).await;
        }
    }
    result
}

/// Announces an execution ([`Session::execute_bound`]). When the statement is held for approval,
/// the client is watched while it waits: what it sends meanwhile (pipelined messages) is kept in
/// `held_input`, up to `limit` bytes, and the end of its stream (it went away) ends the wait, so
/// that a request is not approved for a client that is no longer there.
async fn execute_held(
    session: &Session,
    client: &mut ReadSide,
    held_input: &mut BytesMut,
    left: &mut bool,
    (stmt, parameters, values): (&Statement, Option<Arc<RecordedParameters>>, &[u8]),
    limit: usize,
) -> Result<Execution, GatewayError> {
    let exec = session.execute_bound(stmt, parameters, values);
    if !stmt.needs_approval() {
        return exec.await;
    }
    tokio::pin!(exec);
    loop {
        tokio::select! {
            biased;
            done = &mut exec => return done,
            read = client.read_buf(held_input), if !*left && held_input.len() < limit => {
                if matches!(read, Ok(0) | Err(_)) {
                    *left = true;
                    session.holds().disconnected();
                }
            }
        }
    }
}

/// The listener's shutdown as one session's relay sees it: a flag and a waker, set by a small
/// watcher task. The relay polls every branch of its `select!` on each wake (each message), and
/// polling the watch channel itself takes its notifier's mutex every time: about 2% of the
/// relay's CPU under pgbench. This costs a load and a compare-and-swap instead.
struct StopSignal {
    state: Arc<StopState>,
    watcher: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct StopState {
    stopping: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl StopSignal {
    fn watch(mut shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        let state = Arc::new(StopState::default());
        let set = Arc::clone(&state);
        let watcher = tokio::spawn(async move {
            // An error means the listener is gone without a shutdown: nothing will ever ask this
            // session to stop, so the flag stays down.
            if shutdown.wait_for(|stopping| *stopping).await.is_ok() {
                set.stopping.store(true, Ordering::Release);
                set.waker.wake();
            }
        });
        Self { state, watcher }
    }

    /// Resolves once a shutdown was requested.
    async fn requested(&self) {
        std::future::poll_fn(|cx| {
            if self.state.stopping.load(Ordering::Acquire) {
                return std::task::Poll::Ready(());
            }
            self.state.waker.register(cx.waker());
            // Checked again: the flag may have been set between the load and the register.
            if self.state.stopping.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Resolves once a shutdown was requested and the upstream owes this session nothing more. A
/// statement waiting for approval is ended first (its error, naming the request, then goes to the
/// client like any other result).
async fn idle_after_shutdown(stop: &StopSignal, queue: &Queue, session: &Session) {
    stop.requested().await;
    session.holds().shut_down();
    while session.holds().is_waiting()
        || !queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Notices for the client that come from outside the relay's two directions: the session tells
/// its client that a statement waits for approval while the client direction is held. The
/// upstream direction writes them between whole frames (never inside a row it streams).
#[derive(Default)]
struct Notices {
    frames: Mutex<BytesMut>,
    queued: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl gateway_core::NoticeSink for Notices {
    fn notice(&self, text: &str) {
        let frame = crate::wire::notice_response(text);
        self.frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&frame);
        self.queued.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Notices {
    /// Resolves when a notice is queued. One atomic load per poll when none is.
    async fn queued(&self) {
        std::future::poll_fn(|cx| {
            if self.queued.load(Ordering::Acquire) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.queued.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// The queued frames, in order.
    fn take(&self) -> BytesMut {
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        self.queued.store(false, Ordering::Release);
        frames.split()
    }
}

/// Wire bytes as text (a statement as the policy reads it, a command tag as the trail records
/// it). `from_utf8` checks ASCII a word at a time, several times faster than `from_utf8_lossy`'s
/// byte loop, which is kept for the rare invalid text.
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Statements or portals by the name the client gave them. Looked up three times per execution
/// of a prepared statement, so hashed with foldhash rather than SipHash (about a sixth of the
/// instructions for these short keys); it is seeded per process, and a client can only ever
/// slow down its own session's map.
type NameMap<V> = HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

/// What to do with one client frame.
enum Action {
    Forward,
    Drop,
    Replace(Bytes),
    /// Send this frame, then the client's.
    Precede(Bytes),
    Terminate,
}

/// A bound portal: its statement and, when the audit trail keeps them, its parameters; in masked
/// sessions also the number of the Bind that made it.
#[derive(Clone)]
struct Portal {
    stmt: Statement,
    parameters: Option<Arc<RecordedParameters>>,
    bind: u64,
    /// The Bind's parameter formats and values as sent, kept only for a statement held for
    /// approval: its approval covers exactly these values.
    values: Option<Bytes>,
}

/// Whether a statement may open or close SQL cursors (DECLARE, CLOSE, a function the analysis
/// cannot see into, dynamic SQL, EXECUTE or CALL), whose names share one namespace with the
/// protocol's portals: after it, a named portal may no longer be the one the gateway bound.
fn may_touch_cursors(stmt: &Statement) -> bool {
    use gateway_core::{Hazard, SourceColumn};
    let Some(lineage) = &stmt.judgement().lineage else {
        return true;
    };
    lineage.statements.iter().any(|s| {
        s.hazards.iter().any(|h| {
            matches!(
                h,
                Hazard::Cursor { .. } | Hazard::Dynamic | Hazard::UntracedOutput
            )
        }) || s
            .reads
            .iter()
            .any(|r| matches!(r, SourceColumn::Opaque { .. }))
    })
}

/// The names of prepared statements a statement makes or drops with SQL (PREPARE, DEALLOCATE;
/// an empty name for DEALLOCATE ALL), which are the protocol's names too: the gateway's entry
/// for such a name no longer says what the database holds under it.
fn prepared_names(stmt: &Statement) -> Vec<Arc<str>> {
    let Some(lineage) = &stmt.judgement().lineage else {
        return Vec::new();
    };
    lineage
        .statements
        .iter()
        .flat_map(|s| &s.hazards)
        .filter_map(|h| match h {
            gateway_core::Hazard::Prepared { name } => Some(Arc::clone(name)),
            _ => None,
        })
        .collect()
}

/// The refusal of a portal or statement name the gateway did not see made by the protocol.
fn unknown_name(what: &str, name: &[u8]) -> GatewayError {
    GatewayError::new(
        ErrorKind::PolicyDenied,
        Side::Client,
        format!(
            "masking: {what} {:?} was not made through the protocol in this session (SQL PREPARE and DECLARE share its names), so the gateway cannot tell what its rows hold",
            String::from_utf8_lossy(name)
        ),
    )
    .with_hint("bind and execute statements parsed through the protocol, or use EXECUTE and FETCH in SQL")
    .with_rule("masking")
}

struct ClientDirection<'a> {
    session: &'a Session,
    queue: &'a Queue,
    /// Judged statements by name ("" is the unnamed statement). Keyed by the raw name bytes so
    /// that the per-execution lookups allocate nothing.
    statements: NameMap<Statement>,
    /// Portals by name, with the statement they were bound to (`None` when unknown).
    portals: NameMap<Option<Portal>>,
    /// After a denial in the extended protocol: drop messages until Sync, as PostgreSQL skips them.
    skipping: bool,
    marker: String,
    denials: u64,
    /// How statement texts are read.
    settings: SqlSettings,
    /// `standard_conforming_strings` as the upstream last reported it.
    scs: &'a AtomicBool,
    max_message: usize,
    partial_timeout: Duration,
    /// Set when the client's stream ends: see [`ClientDirection::on_client_eof`].
    client_eof: &'a AtomicBool,
    /// CopyInResponses the upstream sent, and how many of those copies the client has ended.
    copy_ins: &'a AtomicU64,
    copy_ins_ended: u64,
    /// The session's results may be masked: each Execute gets a Describe of its portal ahead of
    /// it, so that its result's columns are known (a driver that described the statement once
    /// sends none), and the client's own Describes are tracked to tell the answers apart.
    masked: bool,
    /// Binds seen (masked sessions), numbering them for [`Pending::Bind`].
    binds: u64,
    /// What the client sent while a statement waited for approval (see [`execute_held`]),
    /// taken up before the next read.
    held_input: BytesMut,
    /// The client's stream ended while a statement waited for approval.
    left_while_held: bool,
}

impl ClientDirection<'_> {
    async fn run(
        &mut self,
        client: &mut ReadSide,
        upstream: &mut WriteSide,
    ) -> Result<(), GatewayError> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        // Bytes of a CopyData frame still to pass through without inspection.
        let mut streaming = 0usize;
        // When the (still incomplete) message at the head of `buf` began to arrive.
        let mut partial_since: Option<tokio::time::Instant> = None;
        loop {
            let before = buf.len();
            let mut pos = 0usize;
            loop {
                if streaming > 0 {
                    let n = streaming.min(buf.len() - pos);
                    pos += n;
                    streaming -= n;
                    if streaming > 0 {
                        break;
                    }
                }
                let header = typed_header(&buf[pos..], self.max_message).map_err(|e| match e {
                    FrameError::TooLarge { len, max } => GatewayError::protocol(
                        Side::Client,
                        format!(
                            "message of {len} bytes exceeds this gateway's limit of {max} bytes"
                        ),
                    )
                    .with_hint("raise gateway.max_message_bytes, or send smaller statements"),
                    other => GatewayError::protocol(
                        Side::Client,
                        format!("invalid message from client: {other}"),
                    ),
                })?;
                let Some((ty, len)) = header else { break };
                let available = buf.len() - pos;
                if available < len {
                    if ty == b'd' {
                        // CopyData can be large; forward it as it arrives.
                        streaming = len - available;
                        pos = buf.len();
                    }
                    break;
                }
                let body = &buf[pos + HEADER_LEN..pos + len];
                match self.inspect(ty, body, client).await? {
                    Action::Forward => pos += len,
                    Action::Drop => {
                        write(upstream, buf.split_to(pos)).await?;
                        buf.advance(len);
                        pos = 0;
                    }
                    Action::Replace(frame) => {
                        write(upstream, buf.split_to(pos)).await?;
                        buf.advance(len);
                        pos = 0;
                        write_bytes(upstream, &frame).await?;
                    }
                    Action::Precede(frame) => {
                        write(upstream, buf.split_to(pos)).await?;
                        write_bytes(upstream, &frame).await?;
                        pos = len;
                    }
                    Action::Terminate => {
                        write(upstream, buf.split_to(pos + len)).await?;
                        return Ok(());
                    }
                }
            }
            if pos > 0 {
                write(upstream, buf.split_to(pos)).await?;
            }
            if buf.is_empty() || buf.len() < before {
                // A message completed or streamed on: the next partial one gets a fresh bound.
                partial_since = None;
            }
            reserve_read(&mut buf);
            if !self.held_input.is_empty() {
                // Sent while a statement waited for approval: handle it before reading more.
                buf.extend_from_slice(&self.held_input);
                self.held_input = BytesMut::new();
                continue;
            }
            if self.left_while_held {
                return self.on_client_eof(upstream, streaming > 0).await;
            }
            // A CopyData frame being streamed is half a message too.
            let idle = buf.is_empty() && streaming == 0;
            let read = client.read_buf(&mut buf);
            let n = if idle {
                read.await
            } else {
                // Half a message is pending: bound how long the rest may take, in total (a client
                // trickling one byte a second must not reset the clock with every byte).
                let since = *partial_since.get_or_insert_with(tokio::time::Instant::now);
                tokio::time::timeout_at(since + self.partial_timeout, read)
                    .await
                    .map_err(|_| {
                        GatewayError::new(
                            ErrorKind::Timeout,
                            Side::Client,
                            "the client sent half a message and stalled",
                        )
                    })?
            }
            .map_err(|e| GatewayError::protocol(Side::Client, format!("read from client: {e}")))?;
            if n == 0 {
                return self.on_client_eof(upstream, streaming > 0).await;
            }
        }
    }

    /// The client's stream ended without Terminate: it closed, or only shut down its sending
    /// side (a TCP half-close) and still reads. PostgreSQL itself finishes what it was asked and
    /// sends the results before it notices the end, so the gateway does the same: it ends the
    /// upstream session after everything already forwarded (Terminate, then the end of the
    /// upstream stream; the Terminate is left out in the middle of a CopyData frame, where it
    /// would be read as data), and the upstream direction relays the results until the database
    /// closes. This direction then has nothing more to do and waits for the relay to end.
    async fn on_client_eof(
        &mut self,
        upstream: &mut WriteSide,
        mid_frame: bool,
    ) -> Result<(), GatewayError> {
        self.client_eof.store(true, Ordering::Release);
        if !mid_frame {
            write_bytes(upstream, &typed(b'X', &[])).await?;
        }
        upstream
            .shutdown()
            .await
            .map_err(|e| GatewayError::upstream_unavailable(format!("write to database: {e}")))?;
        std::future::pending().await
    }

    /// CopyDone or CopyFail: the client ends a COPY FROM STDIN. PostgreSQL ignores Sync while it
    /// is in copy-in mode, and drivers send one in copy-in all the same (tokio-postgres pipelines
    /// Bind, Execute and Sync, then the data, then CopyDone and another Sync: two Syncs, one
    /// ReadyForQuery). Every Sync queued after the COPY's Execute was received in copy-in mode,
    /// so it is taken off the queue here; left there, it would take the next ReadyForQuery, every
    /// later one would close the entry before its own, results would be recorded against the
    /// wrong statements, and the session would never look idle to a graceful shutdown. Counted
    /// against the CopyInResponses the upstream really sent, so that a CopyDone outside a COPY
    /// (which PostgreSQL ignores) changes nothing.
    fn copy_in_ended(&mut self) {
        if self.copy_ins.load(Ordering::Acquire) <= self.copy_ins_ended {
            return;
        }
        self.copy_ins_ended += 1;
        // Entries ahead of the COPY's own (or all of them, once it has been answered and popped)
        // were queued before it; the Syncs at the back were queued after it.
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(q.back(), Some(Pending::Sync)) {
            q.pop_back();
        }
    }

    /// The reading settings, refreshed from what the upstream last reported.
    fn settings(&mut self) -> &SqlSettings {
        self.settings.standard_conforming_strings = self.scs.load(Ordering::Relaxed);
        &self.settings
    }

    /// Forgets the named portals (but `keep`): a statement may have closed them or declared SQL
    /// cursors under their names. Executing one afterwards is refused in masked sessions.
    fn forget_named_portals(&mut self, keep: Option<&[u8]>) {
        self.portals
            .retain(|name, _| name.is_empty() || Some(name.as_slice()) == keep);
    }

    /// Forgets the named statements SQL made or dropped (`""`: every named one): binding one
    /// afterwards is refused in masked sessions until the protocol parses it again.
    fn forget_statements(&mut self, names: &[Arc<str>]) {
        for name in names {
            if name.is_empty() {
                self.statements.retain(|n, _| n.is_empty());
            } else {
                self.statements.remove(name.as_bytes());
            }
        }
    }

    fn sentinel(&mut self, err: GatewayError) -> String {
        self.denials += 1;
        push(self.queue, Pending::Denied(self.denials, err));
        format!("{}_{}", self.marker, self.denials)
    }

    /// A denial in the simple protocol: the sentinel runs as a Query, which ends at ReadyForQuery.
    fn deny_simple(&mut self, err: GatewayError) -> Action {
        let marker = self.sentinel(err);
        push(self.queue, Pending::Sync);
        let mut body = marker.into_bytes();
        body.push(0);
        Action::Replace(typed(b'Q', &body))
    }

    /// A denial in the extended protocol: the sentinel is a Parse that fails, and the rest of the
    /// segment is dropped until Sync.
    fn deny_extended(&mut self, err: GatewayError) -> Action {
        let marker = self.sentinel(err);
        self.skipping = true;
        let mut body = b"portcullis_denied\0".to_vec();
        body.extend_from_slice(marker.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        Action::Replace(typed(b'P', &body))
    }

    async fn inspect(
        &mut self,
        ty: u8,
        body: &[u8],
        client: &mut ReadSide,
    ) -> Result<Action, GatewayError> {
        if self.skipping && ty != b'S' && ty != b'X' {
            return Ok(Action::Drop);
        }
        let message =
            frontend(ty, body).map_err(|e| GatewayError::protocol(Side::Client, e.to_string()))?;
        match message {
            Frontend::Query { sql } => {
                let stmt = match self.session.prepare(&text(sql), self.settings()).await {
                    Ok(s) => s,
                    Err(e) => return Ok(self.deny_simple(e)),
                };
                if self.masked {
                    if may_touch_cursors(&stmt) {
                        self.forget_named_portals(None);
                    }
                    self.forget_statements(&prepared_names(&stmt));
                }
                let executed = execute_held(
                    self.session,
                    client,
                    &mut self.held_input,
                    &mut self.left_while_held,
                    (&stmt, None, &[]),
                    self.max_message,
                )
                .await;
                match executed {
                    Ok(exec) => {
                        push(self.queue, Pending::Query(Some(exec)));
                        Ok(Action::Forward)
                    }
                    Err(e) => Ok(self.deny_simple(e)),
                }
            }
            Frontend::Parse { name, sql } => match self.session.prepare(&text(sql), self.settings()).await {
                Ok(stmt) => {
                    // A named statement that already exists is refused by the upstream; keep the
                    // one it really has.
                    if name.is_empty() || !self.statements.contains_key(name) {
                        self.statements.insert(name.to_vec(), stmt);
                    }
                    Ok(Action::Forward)
                }
                Err(e) => Ok(self.deny_extended(e)),
            },
            Frontend::Bind {
                portal,
                statement,
                rest,
            } => {
                if self.masked && !self.statements.contains_key(statement) {
                    return Ok(self.deny_extended(unknown_name("prepared statement", statement)));
                }
                let bind = if self.masked {
                    self.binds += 1;
                    push(self.queue, Pending::Bind(portal.to_vec(), self.binds));
                    self.binds
                } else {
                    0
                };
                let stmt = self.statements.get(statement).cloned().map(|stmt| {
                    let audit = self.session.parameter_audit();
                    let parameters = if audit.is_off() {
                        None
                    } else {
                        bind_values(rest).and_then(|values| audit.capture(values))
                    };
                    let values = stmt.needs_approval().then(|| Bytes::copy_from_slice(rest));
                    Portal {
                        stmt,
                        parameters,
                        bind,
                        values,
                    }
                });
                match self.portals.get_mut(portal) {
                    Some(slot) => *slot = stmt,
                    None => {
                        self.portals.insert(portal.to_vec(), stmt);
                    }
                }
                Ok(Action::Forward)
            }
            Frontend::Execute { portal } => {
                let mut bind = 0;
                let exec = match self.portals.get(portal) {
                    Some(Some(Portal {
                        stmt,
                        parameters,
                        bind: number,
                        values,
                    })) => {
                        bind = *number;
                        let touches = self.masked && may_touch_cursors(stmt);
                        let prepared = if self.masked {
                            prepared_names(stmt)
                        } else {
                            Vec::new()
                        };
                        let values = values.as_deref().unwrap_or_default();
                        let exec = match execute_held(
                            self.session,
                            client,
                            &mut self.held_input,
                            &mut self.left_while_held,
                            (stmt, parameters.clone(), values),
                            self.max_message,
                        )
                        .await
                        {
                            Ok(exec) => Some(exec),
                            Err(e) => return Ok(self.deny_extended(e)),
                        };
                        if touches {
                            self.forget_named_portals(Some(portal));
                        }
                        self.forget_statements(&prepared);
                        exec
                    }
                    // A portal the gateway did not bind: in a masked session a cursor that SQL
                    // declared under that name, whose rows the gateway cannot place.
                    _ if self.masked => {
                        return Ok(self.deny_extended(unknown_name("portal", portal)));
                    }
                    // Unknown portal: the upstream reports the error itself.
                    _ => None,
                };
                let planner = exec.as_ref().and_then(|e| e.mask_planner()).cloned();
                match planner {
                    Some(planner) => {
                        push(
                            self.queue,
                            Pending::Describe(Some(Added {
                                planner,
                                portal: portal.to_vec(),
                                bind,
                            })),
                        );
                        push(self.queue, Pending::Execute(exec));
                        let mut body = Vec::with_capacity(portal.len() + 2);
                        body.push(b'P');
                        body.extend_from_slice(portal);
                        body.push(0);
                        Ok(Action::Precede(typed(b'D', &body)))
                    }
                    None => {
                        push(self.queue, Pending::Execute(exec));
                        Ok(Action::Forward)
                    }
                }
            }
            Frontend::Describe { .. } => {
                if self.masked {
                    push(self.queue, Pending::Describe(None));
                }
                Ok(Action::Forward)
            }
            Frontend::Close { kind, name } => {
                if kind == b'S' {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
                Ok(Action::Forward)
            }
            Frontend::Sync => {
                self.skipping = false;
                push(self.queue, Pending::Sync);
                Ok(Action::Forward)
            }
            Frontend::FunctionCall => Ok(self.deny_simple(
                GatewayError::new(
                    ErrorKind::Unsupported,
                    Side::Client,
                    "the function-call sub-protocol (fastpath) is not available through the gateway",
                )
                .with_hint("call the function in a SQL statement instead"),
            )),
            Frontend::Terminate => Ok(Action::Terminate),
            Frontend::Other => {
                if ty == b'c' || ty == b'f' {
                    self.copy_in_ended();
                }
                Ok(Action::Forward)
            }
        }
    }
}

async fn write(w: &mut WriteSide, bytes: BytesMut) -> Result<(), GatewayError> {
    if bytes.is_empty() {
        return Ok(());
    }
    write_bytes(w, &bytes).await
}

async fn write_bytes(w: &mut WriteSide, bytes: &[u8]) -> Result<(), GatewayError> {
    w.write_all(bytes)
        .await
        .map_err(|e| GatewayError::upstream_unavailable(format!("write to database: {e}")))
}

/// What happens to one upstream frame.
enum Reply {
    /// Relayed as it is.
    Pass,
    /// Already written into `out` (with the bytes before it).
    Staged,
    /// Replaced by this frame.
    Replace(Bytes),
    /// Not relayed: the answer to a message the gateway added.
    Swallow,
}

struct UpstreamDirection<'a> {
    session: &'a Session,
    queue: &'a Queue,
    marker: String,
    /// `standard_conforming_strings` as reported by ParameterStatus.
    scs: &'a AtomicBool,
    /// Rows seen since the current execution began.
    rows: u64,
    /// Command tags of the current simple Query.
    tags: Vec<String>,
    /// First error of the current simple Query.
    query_error: Option<RecordedError>,
    /// Statements are traced: report the first response of each execution to its `upstream` span.
    trace: bool,
    /// The entry at the head of the queue has had its first response frame.
    responded: bool,
    /// Scratch list of the entries a ReadyForQuery completes.
    ready_buf: Vec<Pending>,
    /// Executions that ended in the bytes read so far, not yet recorded.
    finished: VecDeque<(Execution, Outcome)>,
    /// Record ends before relaying the bytes that carry them (the audit sink promises that every
    /// result a client saw is in the trail); otherwise right after.
    finish_before_result: bool,
    /// Set when the client's stream ended and the upstream was asked to end after what it owes:
    /// the database closing is then the relay's ordinary end.
    client_eof: &'a AtomicBool,
    /// Counts CopyInResponses, for [`ClientDirection::copy_in_ended`].
    copy_ins: &'a AtomicU64,
    /// The session's results may be masked: RowDescriptions are read and DataRows of masked
    /// result sets rewritten.
    masked: bool,
    /// The mask plan of the result set being relayed (masked sessions only).
    plan: Option<ActivePlan>,
    /// Masked sessions: the Bind the database last confirmed (BindComplete) for each portal name,
    /// since the transaction began (portals of the protocol end with it). A Bind the database
    /// refused (the name belongs to a SQL cursor) is never here, so an Execute of that name is
    /// not planned with the refused Bind's statement.
    confirmed: HashMap<Vec<u8>, u64>,
    /// The session's DateStyle writes ISO dates (as the masks' redacted dates are written).
    iso_dates: bool,
    /// Which statement of the current simple Query the next result set belongs to.
    statement_index: usize,
    /// What the current simple Query masked so far.
    query_masked: Vec<MaskedColumn>,
    /// Frames the gateway rewrote, with the unchanged bytes before them, waiting to be written
    /// to the client in one piece with the rest of the chunk.
    out: BytesMut,
    /// Notices the session queued for the client (see [`Notices`]).
    notices: Option<Arc<Notices>>,
}

impl UpstreamDirection<'_> {
    async fn run(
        &mut self,
        leftover: BytesMut,
        upstream: &mut ReadSide,
        client: &mut WriteSide,
    ) -> Result<(), GatewayError> {
        let mut buf = leftover;
        let mut streaming = 0usize;
        loop {
            let mut pos = 0usize;
            loop {
                if streaming > 0 {
                    let n = streaming.min(buf.len() - pos);
                    pos += n;
                    streaming -= n;
                    if streaming > 0 {
                        break;
                    }
                }
                let header = typed_header(&buf[pos..], MAX_UPSTREAM_MESSAGE).map_err(|e| {
                    GatewayError::new(
                        ErrorKind::UpstreamUnavailable,
                        Side::Upstream,
                        format!("invalid message from the database: {e}"),
                    )
                })?;
                let Some((ty, len)) = header else { break };
                if self.trace && !self.responded {
                    self.first_response();
                }
                let available = buf.len() - pos;
                if available < len {
                    // A row of a masked result set is rewritten whole: wait for all of it (one
                    // row, never the result set).
                    let masking = ty == b'D'
                        && (self.plan.as_ref().is_some_and(ActivePlan::masks)
                            || (self.masked && self.plan.is_none()));
                    if (ty == b'D' && !masking) || ty == b'd' {
                        if ty == b'D' {
                            self.rows += 1;
                        }
                        streaming = len - available;
                        pos = buf.len();
                    }
                    break;
                }
                let body = &buf[pos + HEADER_LEN..pos + len];
                let reply = match ty {
                    b'D' => {
                        self.rows += 1;
                        match &mut self.plan {
                            Some(plan) if plan.masks() => {
                                // Every frame of a masked result set goes through `out`, in
                                // order: the bytes before this row, then the row, rewritten
                                // when a value changed.
                                self.out.extend_from_slice(&buf[..pos]);
                                if !plan.rewrite_row(body, &mut self.out) {
                                    self.out.extend_from_slice(&buf[pos..pos + len]);
                                }
                                Reply::Staged
                            }
                            // A row no RowDescription announced (a portal the gateway did not
                            // describe): none of its values goes out.
                            None if self.masked => {
                                self.out.extend_from_slice(&buf[..pos]);
                                crate::masking::null_row(body, &mut self.out);
                                Reply::Staged
                            }
                            _ => Reply::Pass,
                        }
                    }
                    b'T' if self.masked => self.row_description(body).await?,
                    b'n' if self.masked => self.no_data(),
                    b'2' if self.masked => {
                        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                        if matches!(q.front(), Some(Pending::Bind(..))) {
                            if let Some(Pending::Bind(portal, number)) = q.pop_front() {
                                self.confirmed.insert(portal, number);
                            }
                        }
                        Reply::Pass
                    }
                    b'C' => {
                        let tag = Reader::new(body).cstr();
                        if tag.is_some_and(crate::masking::is_schema_change) {
                            self.session.schema_changed();
                        }
                        let tag = tag.map(|t| text(t).into_owned());
                        self.complete(tag, None);
                        Reply::Pass
                    }
                    b'I' => {
                        self.complete(None, None);
                        Reply::Pass
                    }
                    b's' => {
                        self.complete(Some("(portal suspended)".into()), None);
                        Reply::Pass
                    }
                    b'E' => self.error(body).await,
                    b'N' if self.masked => {
                        let reads_masked = self.head_reads_masked().await;
                        match crate::masking::scrub_fields(self.session, b'N', body, reads_masked) {
                            Some(frame) => Reply::Replace(frame.freeze()),
                            None => Reply::Pass,
                        }
                    }
                    b'A' if self.masked => {
                        match crate::masking::scrub_notification(self.session, body) {
                            Some(frame) => Reply::Replace(frame.freeze()),
                            None => Reply::Pass,
                        }
                    }
                    b'Z' => {
                        self.ready();
                        if self.masked && body.first() == Some(&b'I') {
                            // Out of any transaction: every portal of the protocol is gone.
                            self.confirmed.clear();
                        }
                        Reply::Pass
                    }
                    b'G' => {
                        self.copy_ins.fetch_add(1, Ordering::AcqRel);
                        Reply::Pass
                    }
                    b'S' => {
                        let mut r = Reader::new(body);
                        match r.cstr() {
                            Some(b"standard_conforming_strings") => {
                                self.scs.store(r.cstr() == Some(b"on"), Ordering::Relaxed);
                            }
                            Some(b"DateStyle") => {
                                self.iso_dates = r.cstr().is_some_and(|v| v.starts_with(b"ISO"));
                            }
                            Some(b"client_encoding") => {
                                // The policy refuses SET client_encoding; this is the fence behind
                                // it, for any other way the server's encoding could change.
                                let name = String::from_utf8_lossy(r.cstr().unwrap_or_default());
                                if crate::connection::unsafe_client_encoding(&name) {
                                    return Err(crate::connection::unsafe_encoding_error(&name));
                                }
                            }
                            _ => {}
                        }
                        Reply::Pass
                    }
                    _ => Reply::Pass,
                };
                match reply {
                    Reply::Pass => pos += len,
                    Reply::Staged => {
                        buf.advance(pos + len);
                        pos = 0;
                    }
                    Reply::Replace(frame) => {
                        self.out.extend_from_slice(&buf[..pos]);
                        self.out.extend_from_slice(&frame);
                        buf.advance(pos + len);
                        pos = 0;
                    }
                    Reply::Swallow => {
                        self.out.extend_from_slice(&buf[..pos]);
                        buf.advance(pos + len);
                        pos = 0;
                    }
                }
            }
            if self.finish_before_result {
                self.flush_finished().await;
            }
            if !self.out.is_empty() {
                self.out.extend_from_slice(&buf[..pos]);
                buf.advance(pos);
                write_client(client, &self.out).await?;
                self.out.clear();
                if self.out.capacity() > SHRINK_ABOVE {
                    self.out = BytesMut::new();
                }
            } else if pos > 0 {
                let chunk = buf.split_to(pos);
                write_client(client, &chunk).await?;
            }
            self.flush_finished().await;
            reserve_read(&mut buf);
            let n = loop {
                // Notices go out only between whole frames: not while a row streams through.
                let notices = self.notices.as_deref().filter(|_| streaming == 0);
                let read = tokio::select! {
                    biased;
                    read = upstream.read_buf(&mut buf) => read,
                    () = async {
                        match notices {
                            Some(n) => n.queued().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Some(n) = notices {
                            write_client(client, &n.take()).await?;
                        }
                        continue;
                    }
                };
                break read.map_err(|e| {
                    GatewayError::upstream_unavailable(format!("read from database: {e}"))
                })?;
            };
            if n == 0 {
                if self.client_eof.load(Ordering::Acquire) {
                    return Ok(());
                }
                return Err(GatewayError::upstream_unavailable(
                    "the database closed the connection",
                ));
            }
        }
    }

    /// The first response frame to the entry at the head of the queue arrived: that ends the
    /// `upstream` span of its execution. Only called when statements are traced.
    fn first_response(&mut self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        match q.front_mut() {
            Some(Pending::Query(Some(exec)) | Pending::Execute(Some(exec))) => {
                exec.upstream_responded()
            }
            Some(_) => {}
            // Nothing is owed (an asynchronous notice or notification): wait for a real response.
            None => return,
        }
        self.responded = true;
    }

    fn head_is_query(&self) -> bool {
        matches!(
            self.queue.lock().unwrap_or_else(|e| e.into_inner()).front(),
            Some(Pending::Query(_))
        )
    }

    /// A result completed (CommandComplete, EmptyQueryResponse, PortalSuspended) or failed.
    fn complete(&mut self, tag: Option<String>, error: Option<RecordedError>) {
        // One lock: `None` when the head is a simple Query (it ends at ReadyForQuery), otherwise
        // the Execute it completes, if any.
        let popped = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            match q.front() {
                Some(Pending::Query(_)) => None,
                Some(Pending::Execute(_)) => Some(q.pop_front()),
                _ => Some(None),
            }
        };
        let Some(popped) = popped else {
            // A simple Query stays at the head until ReadyForQuery.
            if let Some(plan) = self.plan.take() {
                MaskedColumn::merge(&mut self.query_masked, plan.report());
            }
            self.statement_index += 1;
            if let Some(t) = tag {
                self.tags.push(t);
            }
            if self.query_error.is_none() {
                self.query_error = error;
            }
            return;
        };
        self.responded = false;
        let rows = std::mem::take(&mut self.rows);
        let masked = self.plan.take().map(|p| p.report()).unwrap_or_default();
        if let Some(Pending::Execute(Some(exec))) = popped {
            let outcome = Outcome {
                rows,
                affected: tag.as_deref().and_then(affected_rows),
                tag,
                error,
                masked,
                ..Outcome::default()
            };
            self.finish(exec, outcome);
        }
    }

    /// A RowDescription in a masked session: the columns of the result set that follows, which
    /// its mask plan is made from. The answer to a Describe the gateway added goes no further.
    async fn row_description(&mut self, body: &[u8]) -> Result<Reply, GatewayError> {
        enum Head {
            Added(Added),
            Client,
            Query(gateway_core::MaskPlanner),
            Unknown,
        }
        let head = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            match q.front() {
                Some(Pending::Describe(_)) => match q.pop_front() {
                    Some(Pending::Describe(Some(added))) => Head::Added(added),
                    _ => Head::Client,
                },
                Some(Pending::Query(Some(exec))) => match exec.mask_planner() {
                    Some(planner) => Head::Query(planner.clone()),
                    None => Head::Unknown,
                },
                _ => Head::Unknown,
            }
        };
        let (planner, statement, reply) = match head {
            Head::Client => return Ok(Reply::Pass),
            Head::Added(added) => {
                if self.confirmed.get(&added.portal) != Some(&added.bind) {
                    // The database did not confirm the Bind the gateway planned for: the
                    // portal of that name is something else (a SQL cursor).
                    let columns = crate::masking::result_columns(body).unwrap_or_default();
                    self.plan = Some(ActivePlan::nulls(&columns));
                    return Ok(Reply::Swallow);
                }
                (added.planner, 0, Reply::Swallow)
            }
            Head::Query(planner) => (planner, self.statement_index, Reply::Pass),
            Head::Unknown => {
                // Rows nobody asked for, as far as the gateway can tell: none of their values
                // goes out.
                let columns = crate::masking::result_columns(body).unwrap_or_default();
                self.plan = Some(ActivePlan::nulls(&columns));
                return Ok(Reply::Pass);
            }
        };
        let columns = crate::masking::result_columns(body).ok_or_else(|| {
            GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                Side::Upstream,
                "invalid RowDescription from the database",
            )
        })?;
        let mut plan = planner.plan(statement, &columns).await;
        if !self.iso_dates {
            plan = crate::masking::for_date_style(plan, &columns);
        }
        self.plan = Some(ActivePlan::new(plan, &columns));
        Ok(reply)
    }

    /// NoData in a masked session: the answer to a Describe of a statement or portal that
    /// returns no rows.
    fn no_data(&mut self) -> Reply {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(q.front(), Some(Pending::Describe(_))) {
            return Reply::Pass;
        }
        match q.pop_front() {
            Some(Pending::Describe(Some(_))) => {
                drop(q);
                self.plan = None;
                Reply::Swallow
            }
            _ => Reply::Pass,
        }
    }

    /// Whether an ErrorResponse is the syntax error of the next pending sentinel: SQLSTATE 42601
    /// naming exactly that sentinel's token. Anything else (even text that mentions the marker,
    /// such as a RAISE a client wrote after reading its own sentinel in pg_stat_activity) is an
    /// ordinary upstream error, so a client cannot make its own statements look skipped.
    fn is_sentinel_error(&self, fields: &[(u8, String)], message: &str) -> bool {
        let code = fields
            .iter()
            .find(|(c, _)| *c == b'C')
            .map(|(_, v)| v.as_str());
        if code != Some("42601") {
            return false;
        }
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let next = q.iter().find_map(|p| match p {
            Pending::Denied(n, _) => Some(*n),
            _ => None,
        });
        // Match the token, not PostgreSQL's wording or quotes around it: both follow the upstream's
        // lc_messages. `_1` must not match `_10`.
        next.is_some_and(|n| {
            let token = format!("{}_{n}", self.marker);
            message.match_indices(&token).any(|(at, _)| {
                !message[at + token.len()..].starts_with(|c: char| c.is_ascii_digit())
            })
        })
    }

    /// In a masked session: whether the statement the upstream is answering reads masked
    /// columns, so that its messages are hidden ([`gateway_core::MaskPlanner::reads_masked`]).
    /// `false` when no execution is being answered (a message about a Parse or Bind, or an
    /// asynchronous notice), whose text is scrubbed as usual.
    async fn head_reads_masked(&self) -> bool {
        let head = {
            let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.iter().find_map(|p| match p {
                Pending::Query(Some(exec)) => Some(
                    exec.mask_planner()
                        .cloned()
                        .map(|planner| (planner, self.statement_index)),
                ),
                Pending::Execute(Some(exec)) => {
                    Some(exec.mask_planner().cloned().map(|planner| (planner, 0)))
                }
                Pending::Describe(Some(added)) => Some(Some((added.planner.clone(), 0))),
                Pending::Query(None) | Pending::Execute(None) | Pending::Sync => Some(None),
                Pending::Denied(..) | Pending::Describe(None) | Pending::Bind(..) => None,
            })
        };
        match head.flatten() {
            Some((planner, statement)) => planner.reads_masked(statement).await,
            None => false,
        }
    }

    async fn error(&mut self, body: &[u8]) -> Reply {
        let fields = error_fields(body);
        let message = fields
            .iter()
            .find(|(c, _)| *c == b'M')
            .map(|(_, m)| m.as_str())
            .unwrap_or("");
        if self.is_sentinel_error(&fields, message) {
            // The sentinel of a denied message: swap in the gateway's error. Entries ahead of it
            // cannot have run, since the upstream processes messages in order.
            let mut skipped = Vec::new();
            let mut denial = None;
            {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(p) = q.pop_front() {
                    match p {
                        Pending::Denied(_, e) => {
                            denial = Some(e);
                            break;
                        }
                        other => skipped.push(other),
                    }
                }
            }
            for p in skipped {
                if let Pending::Execute(Some(exec)) | Pending::Query(Some(exec)) = p {
                    self.finish(
                        exec,
                        Outcome {
                            skipped: true,
                            ..Outcome::default()
                        },
                    );
                }
            }
            self.responded = false;
            let denial = denial
                .unwrap_or_else(|| GatewayError::internal("statement refused by the gateway"));
            if self.head_is_query() && self.query_error.is_none() {
                self.query_error = Some(RecordedError::from(&denial));
            }
            return Reply::Replace(error_response(&denial, false));
        }
        let code = fields
            .iter()
            .find(|(c, _)| *c == b'C')
            .map(|(_, m)| m.clone());
        let recorded = RecordedError {
            side: Side::Upstream,
            code,
            message: message.to_owned(),
        };
        // Asked before `complete` takes the execution off the queue.
        let reads_masked = self.masked && self.head_reads_masked().await;
        self.complete(None, Some(recorded));
        if self.masked {
            if let Some(frame) =
                crate::masking::scrub_fields(self.session, b'E', body, reads_masked)
            {
                return Reply::Replace(frame.freeze());
            }
        }
        Reply::Pass
    }

    /// ReadyForQuery: everything up to the first Query or Sync is over.
    fn ready(&mut self) {
        self.responded = false;
        // Reused across ReadyForQuery messages: one per transaction, so no allocation each.
        let mut done = std::mem::take(&mut self.ready_buf);
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(p) = q.pop_front() {
                let boundary = matches!(p, Pending::Query(_) | Pending::Sync);
                done.push(p);
                if boundary {
                    break;
                }
            }
        }
        let rows = std::mem::take(&mut self.rows);
        for p in done.drain(..) {
            match p {
                Pending::Query(Some(exec)) => {
                    let tags = std::mem::take(&mut self.tags);
                    let affected = tags
                        .iter()
                        .filter_map(|t| affected_rows(t))
                        .reduce(|a, b| a + b);
                    let outcome = Outcome {
                        rows,
                        affected,
                        tag: (!tags.is_empty()).then(|| tags.join("; ")),
                        error: self.query_error.take(),
                        masked: std::mem::take(&mut self.query_masked),
                        ..Outcome::default()
                    };
                    self.finish(exec, outcome);
                }
                Pending::Execute(Some(exec)) => {
                    // Never answered: the segment failed before it.
                    self.finish(
                        exec,
                        Outcome {
                            skipped: true,
                            ..Outcome::default()
                        },
                    );
                }
                _ => {}
            }
        }
        self.tags.clear();
        self.query_error = None;
        self.ready_buf = done;
        self.statement_index = 0;
        self.plan = None;
        self.query_masked.clear();
    }

    /// Queues the end of an execution, recorded by [`flush_finished`](Self::flush_finished): once
    /// the bytes read so far have gone to the client, so that the result does not wait for the
    /// audit trail ("started" was recorded before the statement was forwarded; this record only
    /// says how it ended), or before, when the sink promises that every result a client saw is in
    /// the trail (sync durability).
    fn finish(&mut self, exec: Execution, outcome: Outcome) {
        self.finished.push_back((exec, outcome));
    }

    /// Records the ends queued by [`finish`](Self::finish). One at a time off the front: if the
    /// relay stops while a record is being written, the rest stay queued for the relay's exit.
    async fn flush_finished(&mut self) {
        while let Some((exec, outcome)) = self.finished.pop_front() {
            if let Err(e) = self.session.finish(exec, outcome).await {
                // The statement already ran; a sink failure here is logged loudly, and the next
                // statement's "started" record will fail closed if the sink stays down.
                tracing::error!(error = %e, "could not record the end of a statement");
            }
        }
    }
}

async fn write_client(w: &mut WriteSide, bytes: &[u8]) -> Result<(), GatewayError> {
    if bytes.is_empty() {
        return Ok(());
    }
    w.write_all(bytes)
        .await
        .map_err(|e| GatewayError::protocol(Side::Client, format!("write to client: {e}")))
}

/// Rows changed, from a command tag: `INSERT 0 n`, `UPDATE n`, `DELETE n`, `MERGE n`. Tags that
/// report rows returned (`SELECT n`, `FETCH n`) give none, and so does `COPY n`, which is the same
/// for COPY FROM (rows written) and COPY TO (rows sent); its tag is in the record.
fn affected_rows(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    match words.next()? {
        "INSERT" => words.nth(1)?.parse().ok(),
        "UPDATE" | "DELETE" | "MERGE" => words.next()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod affected_tests {
    use super::affected_rows;

    #[test]
    fn command_tags_give_changed_rows() {
        assert_eq!(affected_rows("INSERT 0 5"), Some(5));
        assert_eq!(affected_rows("UPDATE 3"), Some(3));
        assert_eq!(affected_rows("DELETE 0"), Some(0));
        assert_eq!(affected_rows("MERGE 2"), Some(2));
        assert_eq!(affected_rows("SELECT 7"), None);
        assert_eq!(affected_rows("CREATE TABLE"), None);
        assert_eq!(affected_rows("UPDATE"), None);
    }
}
