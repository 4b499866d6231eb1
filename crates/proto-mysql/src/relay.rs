//! The command phase: one command from the client at a time (the protocol is half-duplex), judged
//! and announced through the core, forwarded as its original bytes, and its response relayed from
//! the upstream's read buffer as it arrives while the relay follows its structure (result sets,
//! multiple results, the status flags that end them).

use std::collections::HashMap;
use std::sync::Arc;

use gateway_core::serve::stream::{ReadSide, WriteSide};
use gateway_core::{
    ErrorKind, Execution, GatewayError, MaskPlanner, MaskedColumn, Outcome, RecordedError, Session,
    Side, SqlSettings, Statement, TextEncoding,
};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::handshake::{Established, Shared};
use crate::masking::{ActivePlan, Described, RowFormat};
use crate::packet::{
    self, header, lenenc_int, ok_fields, Packet, PacketReader, ReadError, HEADER_LEN, MAX_PIECE,
};

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_KILL: u8 = 0x0c;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_RESET_CONNECTION: u8 = 0x1f;

/// `CURSOR_TYPE_READ_ONLY` in COM_STMT_EXECUTE's flags.
const CURSOR_TYPE_READ_ONLY: u8 = 0x01;

/// Largest packet accepted from the upstream (the protocol's own maximum payload, 1 GiB).
const MAX_UPSTREAM_PACKET: usize = 1 << 30;

/// What the response to a command looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// OK, ERR or one or more result sets (COM_QUERY, COM_STMT_EXECUTE).
    Results,
    /// One packet (OK, ERR, EOF or a string).
    One,
    /// Column definitions up to an EOF, or ERR (COM_FIELD_LIST).
    Fields,
    /// COM_STMT_PREPARE's answer: ERR, or OK with parameter and column definitions.
    Prepared,
}

/// What the relay learned from a response.
#[derive(Debug, Default)]
struct Response {
    /// Rows of all result sets.
    rows: u64,
    /// Rows affected, summed over the results.
    affected: u64,
    /// The server's error, if the response ended with one.
    error: Option<RecordedError>,
    /// Status flags of the last OK or EOF.
    status: Option<u16>,
    /// Statement id of a prepared statement.
    prepared: Option<u32>,
    /// Whether a result set was seen.
    result_set: bool,
    /// What masking changed (masked sessions).
    masked: Vec<MaskedColumn>,
}

/// Where the relay is in a response.
#[derive(Clone, Copy, Debug)]
enum State {
    First,
    Columns(u64),
    ColumnsEof,
    Rows,
    Params { params: u16, columns: u16 },
    ParamsEof { columns: u16 },
    PreparedColumns(u16),
    PreparedColumnsEof,
    Fields,
}

struct Relay {
    session: Arc<Session>,
    caps: CapabilityFlags,
    settings: SqlSettings,
    /// Prepared statements by the server's statement id, as judged when prepared.
    statements: HashMap<u32, Arc<Statement>>,
    client_read: ReadSide,
    client_write: WriteSide,
    client_reader: PacketReader,
    up_read: ReadSide,
    up_write: WriteSide,
    up_reader: PacketReader,
    /// Whether the server reports ANSI_QUOTES in its status flags (MariaDB does).
    status_has_ansi_quotes: bool,
    /// The server status flags of the last response (for an OK the gateway answers itself).
    last_status: u16,
    /// Largest packet taken from the client (`max_message_bytes`).
    max_message: usize,
    /// The listener's sessions, for KILL.
    kills: Arc<crate::kill::Registry>,
    /// The database server of this session's target, for KILL.
    server: (String, u16),
    /// How the client's statement texts are read (its character_set_client).
    encoding: TextEncoding,
    /// Whether the session's results may be masked ([`Session::masking_active`]): responses are
    /// then read packet by packet (see [`Relay::response_masked`]).
    masked: bool,
}

/// Relays commands until the client quits, the connection fails, or the listener shuts down.
pub(crate) async fn relay(
    shared: &Shared,
    established: Established,
    mut stop: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    let Established {
        client,
        client_reader,
        session,
        upstream,
        database,
        registration: _registration,
        encoding,
    } = established;
    let server = (session.target().host.clone(), session.target().port);
    let (client_read, client_write) = client.split();
    let (up_read, up_write) = upstream.stream.split();
    let mariadb = upstream.server_version.contains("MariaDB");
    let masked = session.masking_active();
    if masked {
        session.set_catalog(shared.catalogs.get(session.target()));
    }
    let mut relay = Relay {
        session,
        caps: upstream.capabilities,
        settings: SqlSettings {
            default_schema: Some(Arc::from(database.as_str())),
            ..SqlSettings::default()
        },
        statements: HashMap::new(),
        client_read,
        client_write,
        client_reader,
        up_read,
        up_write,
        up_reader: upstream.reader,
        status_has_ansi_quotes: mariadb,
        last_status: 0,
        max_message: shared.config.max_message_bytes,
        kills: Arc::clone(&shared.kills),
        server,
        encoding,
        masked,
    };
    relay.track_status(upstream.status);
    // A shutdown ends a statement's wait for approval (the command loop sees the shutdown only
    // between commands).
    let holds = relay.session.holds().clone();
    let mut stopping = stop.clone();
    let _hold_watch = AbortOnDrop(tokio::spawn(async move {
        if stopping.wait_for(|s| *s).await.is_ok() {
            holds.shut_down();
        }
    }));
    if !mariadb {
        // MySQL reports NO_BACKSLASH_ESCAPES in its status flags but not ANSI_QUOTES: ask.
        relay.refresh_state().await?;
    }
    let max = shared.config.max_message_bytes;
    let partial = shared.config.handshake_timeout;
    loop {
        let read = tokio::select! {
            biased;
            read = relay.client_reader.read_bounded(&mut relay.client_read, max, partial) => read,
            () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                // Idle: nothing is owed to the client. Tell it why the connection ends.
                let e = GatewayError::new(
                    ErrorKind::ShuttingDown,
                    Side::Gateway,
                    "the gateway is shutting down; reconnect to continue",
                );
                let _ = relay.client_write.write_all(&packet::err(0, &e)).await;
                let _ = relay.client_write.shutdown().await;
                let _ = relay.up_write.write_all(&packet::packet(0, &[COM_QUIT])).await;
                return Err(e);
            }
            // An administrator ended the session (after its command in flight, if any).
            e = relay.session.terminated() => {
                let _ = relay.client_write.write_all(&packet::err(0, &e)).await;
                let _ = relay.client_write.shutdown().await;
                let _ = relay.up_write.write_all(&packet::packet(0, &[COM_QUIT])).await;
                return Err(e);
            }
        };
        let command = match read {
            Ok(p) => p,
            // A client that goes away without COM_QUIT ends its session like one that quits.
            Err(ReadError::Closed) => {
                let _ = relay
                    .up_write
                    .write_all(&packet::packet(0, &[COM_QUIT]))
                    .await;
                return Ok(());
            }
            Err(ReadError::TooLarge { max }) => {
                let e = GatewayError::protocol(
                    Side::Client,
                    format!("packet larger than max_message_bytes ({max} bytes) refused"),
                );
                // ER_NET_PACKET_TOO_LARGE, as the server answers.
                let reply = packet::err_with(1, 1153, *b"08S01", &e.message);
                gateway_core::serve::linger::lingering_close(
                    &mut relay.client_read,
                    &mut relay.client_write,
                    &reply,
                    shared.config.handshake_timeout,
                )
                .await;
                return Err(e);
            }
            Err(e) => return Err(e.into_gateway(Side::Client, "read command")),
        };
        match relay.command(command).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => return Ok(()),
            Err(e) => {
                // The session ends here: say why, if the client still listens. (After a lost
                // upstream the client sees what a dying server would show: a lost connection.)
                if e.side != Side::Upstream {
                    let _ = relay.client_write.write_all(&packet::err(0, &e)).await;
                }
                let _ = relay.client_write.shutdown().await;
                return Err(e);
            }
        }
    }
}

/// Aborts a helper task when the relay ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Flow {
    Continue,
    Quit,
}

impl Relay {
    /// Handles one command and its response.
    async fn command(&mut self, command: Packet) -> Result<Flow, GatewayError> {
        let reply_seq = command.last_seq.wrapping_add(1);
        let Some(code) = command.first() else {
            return Err(GatewayError::protocol(Side::Client, "empty command packet"));
        };
        match code {
            COM_QUIT => {
                let _ = self.up_write.write_all(&command.raw).await;
                Ok(Flow::Quit)
            }
            COM_QUERY => {
                let payload = command.payload();
                let Some(sql) = self.text(&payload[1..], reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                let Some(stmt) = self.judge(&sql, reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                drop(payload);
                if is_kill(&stmt) || crate::kill::is_plain_kill(&sql) {
                    return self.kill(&stmt, &sql, reply_seq).await;
                }
                self.run(&stmt, &command.raw, Expect::Results, reply_seq)
                    .await?;
                Ok(Flow::Continue)
            }
            COM_STMT_PREPARE => {
                let payload = command.payload();
                let Some(sql) = self.text(&payload[1..], reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                let Some(stmt) = self.judge(&sql, reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                drop(payload);
                self.forward(&command.raw).await?;
                let response = self
                    .respond(Expect::Prepared, None, RowFormat::Text)
                    .await?;
                if let Some(id) = response.prepared {
                    self.statements.insert(id, Arc::new(stmt));
                }
                Ok(Flow::Continue)
            }
            COM_STMT_EXECUTE => {
                let payload = command.payload();
                let Some(id) = payload
                    .get(1..5)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                else {
                    drop(payload);
                    return self
                        .refuse(
                            reply_seq,
                            GatewayError::protocol(Side::Client, "malformed COM_STMT_EXECUTE"),
                        )
                        .await;
                };
                if payload
                    .get(5)
                    .is_some_and(|f| f & CURSOR_TYPE_READ_ONLY != 0)
                {
                    drop(payload);
                    return self
                        .refuse(
                            reply_seq,
                            GatewayError::new(
                                ErrorKind::Unsupported,
                                Side::Client,
                                "server-side cursors are not supported through the gateway yet",
                            )
                            .with_hint(
                                "fetch without a cursor (for Connector/J: useCursorFetch=false)",
                            ),
                        )
                        .await;
                }
                drop(payload);
                let Some(stmt) = self.statements.get(&id).cloned() else {
                    // ER_UNKNOWN_STMT_HANDLER, as the server answers.
                    let reply = packet::err_with(
                        reply_seq,
                        1243,
                        *b"HY000",
                        &format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_execute"),
                    );
                    self.send_client(&reply).await?;
                    return Ok(Flow::Continue);
                };
                self.run(&stmt, &command.raw, Expect::Results, reply_seq)
                    .await?;
                Ok(Flow::Continue)
            }
            COM_STMT_SEND_LONG_DATA => {
                // No response. The data is bound to a statement judged when it was prepared, and
                // audited with the execution that uses it.
                self.forward(&command.raw).await?;
                Ok(Flow::Continue)
            }
            COM_STMT_CLOSE => {
                let payload = command.payload();
                if let Some(b) = payload.get(1..5) {
                    self.statements
                        .remove(&u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
                drop(payload);
                self.forward(&command.raw).await?;
                Ok(Flow::Continue)
            }
            COM_STMT_RESET | COM_PING | COM_STATISTICS | COM_SET_OPTION => {
                self.forward(&command.raw).await?;
                self.respond(Expect::One, None, RowFormat::Text).await?;
                Ok(Flow::Continue)
            }
            COM_RESET_CONNECTION => {
                self.forward(&command.raw).await?;
                let response = self.respond(Expect::One, None, RowFormat::Text).await?;
                if response.error.is_none() {
                    // The server forgot its prepared statements and reset its session variables.
                    self.statements.clear();
                    self.refresh_state().await?;
                }
                Ok(Flow::Continue)
            }
            COM_INIT_DB => {
                let payload = command.payload();
                let Some(db) = self.text(&payload[1..], reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                drop(payload);
                // Judged as the statement it is: USE of that database.
                let sql = format!("USE `{}`", db.replace('`', "``"));
                let Some(stmt) = self.judge(&sql, reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                let response = self
                    .run(&stmt, &command.raw, Expect::One, reply_seq)
                    .await?;
                if response.error.is_none() {
                    self.settings.default_schema = Some(Arc::from(db.as_str()));
                }
                Ok(Flow::Continue)
            }
            COM_FIELD_LIST => {
                let payload = command.payload();
                let table = payload[1..].split(|b| *b == 0).next().unwrap_or_default();
                let Some(table) = self.text(table, reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                drop(payload);
                // Judged as what it shows: the table's columns.
                let sql = format!("SHOW COLUMNS FROM `{}`", table.replace('`', "``"));
                let Some(stmt) = self.judge(&sql, reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                self.run(&stmt, &command.raw, Expect::Fields, reply_seq)
                    .await?;
                Ok(Flow::Continue)
            }
            COM_STMT_FETCH => {
                self.refuse(
                    reply_seq,
                    GatewayError::new(
                        ErrorKind::Unsupported,
                        Side::Client,
                        "server-side cursors are not supported through the gateway yet",
                    ),
                )
                .await
            }
            COM_CHANGE_USER => {
                self.refuse(
                    reply_seq,
                    GatewayError::new(
                        ErrorKind::Unsupported,
                        Side::Client,
                        "changing the user of a gateway session is not supported",
                    )
                    .with_hint("open a new connection as the other user"),
                )
                .await
            }
            COM_PROCESS_KILL => {
                // The old command form of KILL CONNECTION: judged and mapped as that statement.
                let payload = command.payload();
                let Some(b) = payload.get(1..5) else {
                    drop(payload);
                    return self
                        .refuse(
                            reply_seq,
                            GatewayError::protocol(Side::Client, "malformed COM_PROCESS_KILL"),
                        )
                        .await;
                };
                let sql = format!(
                    "KILL CONNECTION {}",
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                );
                drop(payload);
                let Some(stmt) = self.judge(&sql, reply_seq).await? else {
                    return Ok(Flow::Continue);
                };
                self.kill(&stmt, &sql, reply_seq).await
            }
            other => {
                // ER_UNKNOWN_COM_ERROR: never a silent OK.
                let reply = packet::err_with(
                    reply_seq,
                    1047,
                    *b"08S01",
                    &format!("Unknown command {other:#04x}"),
                );
                self.send_client(&reply).await?;
                Ok(Flow::Continue)
            }
        }
    }

    /// The statement text, when it is UTF-8; otherwise the command is refused (`None`).
    async fn text(&mut self, bytes: &[u8], reply_seq: u8) -> Result<Option<String>, GatewayError> {
        match gateway_core::text::decode(bytes, self.encoding) {
            Ok(s) => Ok(Some(s.into_owned())),
            Err(e) => {
                self.refuse(reply_seq, e).await?;
                Ok(None)
            }
        }
    }

    /// Judges `sql`; a denial is answered here (`None`).
    async fn judge(&mut self, sql: &str, reply_seq: u8) -> Result<Option<Statement>, GatewayError> {
        match self.session.prepare(sql, &self.settings).await {
            Ok(stmt) => Ok(Some(stmt)),
            Err(e) => {
                self.send_client(&packet::err(reply_seq, &e)).await?;
                Ok(None)
            }
        }
    }

    /// Announces an execution, forwards its command, relays the response and records the end.
    async fn run(
        &mut self,
        stmt: &Statement,
        command: &[u8],
        expect: Expect,
        reply_seq: u8,
    ) -> Result<Response, GatewayError> {
        // A held statement's approval covers its exact values: COM_STMT_EXECUTE's payload after
        // the statement id (which differs between prepares of the same text).
        let values: &[u8] =
            if stmt.needs_approval() && command.get(HEADER_LEN) == Some(&COM_STMT_EXECUTE) {
                command.get(HEADER_LEN + 5..).unwrap_or_default()
            } else {
                &[]
            };
        let executed = if stmt.needs_approval() {
            self.execute_watching(stmt, values).await
        } else {
            self.session.execute_bound(stmt, None, values).await
        };
        let exec: Execution = match executed {
            Ok(exec) => exec,
            Err(e) => {
                self.send_client(&packet::err(reply_seq, &e)).await?;
                return Ok(Response::default());
            }
        };
        if let Err(e) = self.forward(command).await {
            let outcome = Outcome {
                error: Some(RecordedError::from(&e)),
                ..Outcome::default()
            };
            let _ = self.session.finish(exec, outcome).await;
            return Err(e);
        }
        // The command as framed: its first payload byte is the command.
        let format = if command.get(HEADER_LEN) == Some(&COM_STMT_EXECUTE) {
            RowFormat::Binary
        } else {
            RowFormat::Text
        };
        let planner = exec.mask_planner().cloned();
        let relayed = self.respond(expect, planner.as_ref(), format).await;
        let response = match relayed {
            Ok(r) => r,
            Err(e) => {
                let outcome = Outcome {
                    error: Some(RecordedError::from(&e)),
                    ..Outcome::default()
                };
                let _ = self.session.finish(exec, outcome).await;
                return Err(e);
            }
        };
        let tag = if response.result_set {
            Some(format!("SELECT {}", response.rows))
        } else if response.error.is_none() {
            Some(format!("OK {}", response.affected))
        } else {
            None
        };
        let outcome = Outcome {
            rows: response.rows,
            affected: response.error.is_none().then_some(response.affected),
            tag,
            error: response.error.clone(),
            masked: response.masked.clone(),
            ..Outcome::default()
        };
        self.session.finish(exec, outcome).await?;
        if self.masked && response.error.is_none() && may_change_schema(stmt, &response) {
            // Relations may have been created, changed or dropped: the catalog masking reads
            // forgets what it cached.
            self.session.schema_changed();
        }
        if response.error.is_none() && may_change_reading(stmt) {
            // USE, SET sql_mode, SET NAMES, or a procedure that ran any of them: learn the
            // current database, sql_mode and character set from the server rather than from the
            // text.
            self.refresh_state().await?;
        }
        Ok(response)
    }

    /// Announces a statement held for approval, watching the client while it waits: the end of
    /// the client's stream (it went away) ends the wait and withdraws the request. What the
    /// client sends meanwhile stays buffered for the next command read (up to the message limit).
    async fn execute_watching(
        &mut self,
        stmt: &Statement,
        values: &[u8],
    ) -> Result<Execution, GatewayError> {
        let session = Arc::clone(&self.session);
        let exec = session.execute_bound(stmt, None, values);
        tokio::pin!(exec);
        let limit = self.max_message;
        let mut left = false;
        loop {
            tokio::select! {
                biased;
                done = &mut exec => return done,
                read = self.client_reader.fill(&mut self.client_read),
                    if !left && self.client_reader.buffered().len() < limit =>
                {
                    if matches!(read, Ok(0) | Err(_)) {
                        left = true;
                        session.holds().disconnected();
                    }
                }
            }
        }
    }

    /// Runs an allowed KILL against the upstream connection of the gateway session it names.
    async fn kill(
        &mut self,
        stmt: &Statement,
        sql: &str,
        reply_seq: u8,
    ) -> Result<Flow, GatewayError> {
        let rewritten = if stmt
            .judgement()
            .classification
            .as_deref()
            .is_some_and(|c| c.contains("; "))
        {
            Err((
                1235,
                *b"42000",
                "KILL must be sent as a statement of its own through the gateway".to_owned(),
            ))
        } else {
            self.kills
                .rewrite(sql, &self.session.identity().subject, &self.server)
        };
        match rewritten {
            Ok(None) => {
                // Ended a wait for approval: nothing ran upstream. Recorded like any KILL.
                let exec = self.session.execute(stmt).await;
                match exec {
                    Ok(exec) => {
                        let ok = packet::ok(reply_seq, self.last_status);
                        self.send_client(&ok).await?;
                        let _ = self.session.finish(exec, Outcome::default()).await;
                    }
                    Err(e) => self.send_client(&packet::err(reply_seq, &e)).await?,
                }
            }
            Ok(Some(upstream_sql)) => {
                let mut payload = Vec::with_capacity(upstream_sql.len() + 1);
                payload.push(COM_QUERY);
                payload.extend_from_slice(upstream_sql.as_bytes());
                let command = packet::packet(0, &payload);
                self.run(stmt, &command, Expect::Results, reply_seq).await?;
            }
            Err((code, state, message)) => {
                self.send_client(&packet::err_with(reply_seq, code, state, &message))
                    .await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Answers a command with an error without forwarding it.
    async fn refuse(&mut self, reply_seq: u8, e: GatewayError) -> Result<Flow, GatewayError> {
        self.send_client(&packet::err(reply_seq, &e)).await?;
        Ok(Flow::Continue)
    }

    async fn forward(&mut self, command: &[u8]) -> Result<(), GatewayError> {
        self.up_write
            .write_all(command)
            .await
            .map_err(|e| lost(format!("write to the database: {e}")))
    }

    async fn send_client(&mut self, bytes: &[u8]) -> Result<(), GatewayError> {
        self.client_write
            .write_all(bytes)
            .await
            .map_err(|e| GatewayError::protocol(Side::Client, format!("write: {e}")))
    }

    /// Relays one response: [`response_masked`](Self::response_masked) in masked sessions,
    /// [`response`](Self::response) otherwise. `planner` plans the masking of the results of an
    /// execution; `format` is the format of their rows.
    async fn respond(
        &mut self,
        expect: Expect,
        planner: Option<&MaskPlanner>,
        format: RowFormat,
    ) -> Result<Response, GatewayError> {
        if self.masked {
            self.response_masked(expect, planner, format).await
        } else {
            self.response(expect).await
        }
    }

    /// Relays one response to the client, from the upstream's read buffer, following its
    /// structure until it ends. Every complete packet read is forwarded as it came, in one write
    /// per read from the upstream.
    async fn response(&mut self, expect: Expect) -> Result<Response, GatewayError> {
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let mut response = Response::default();
        let mut state = State::First;
        let mut continuing = false;
        loop {
            let mut pos = 0;
            let mut done = false;
            {
                let buf = self.up_reader.buffered();
                while let Some((len, _)) = header(&buf[pos..]) {
                    if buf.len() < pos + HEADER_LEN + len {
                        if len > MAX_UPSTREAM_PACKET {
                            return Err(lost("packet larger than the protocol allows"));
                        }
                        buf.reserve(pos + HEADER_LEN + len - buf.len());
                        break;
                    }
                    let payload = &buf[pos + HEADER_LEN..pos + HEADER_LEN + len];
                    pos += HEADER_LEN + len;
                    let piece_of_previous = continuing;
                    continuing = len == MAX_PIECE;
                    if piece_of_previous {
                        continue;
                    }
                    if step(&mut state, expect, deprecate_eof, payload, &mut response)? {
                        done = !continuing;
                        if done {
                            break;
                        }
                    }
                }
            }
            if pos > 0 {
                let buf = self.up_reader.buffered();
                self.client_write
                    .write_all(&buf[..pos])
                    .await
                    .map_err(|e| GatewayError::protocol(Side::Client, format!("write: {e}")))?;
                self.up_reader.consume(pos);
            }
            if done {
                if let Some(status) = response.status {
                    self.track_status(status);
                }
                return Ok(response);
            }
            match self.up_reader.fill(&mut self.up_read).await {
                Ok(0) => return Err(lost("the database closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(lost(format!("read from the database: {e}"))),
            }
        }
    }

    /// [`response`](Self::response) for a masked session. Packets are taken whole (every piece
    /// of a split one), and what needs it is rewritten:
    /// - the column definitions of each result set are read into result columns and planned by
    ///   `planner`, with the index of the result within the response, which is the index of its
    ///   statement within a multi-statement text (a procedure's further result sets get indexes
    ///   past its own, which the masker knows no lineage for and masks accordingly);
    /// - when the plan masks a column, each row is rewritten on its own, under its sequence id,
    ///   and split again if it grew past a packet's maximum; when that changes the number of
    ///   pieces, the sequence ids of every later packet of the response follow;
    /// - ERR packets have their message scrubbed, or hidden whole when the statement reads masked
    ///   columns.
    ///
    /// Everything else, rows of a result set whose plan masks nothing included, goes out as the
    /// bytes that came, in one write per read from the upstream.
    async fn response_masked(
        &mut self,
        expect: Expect,
        planner: Option<&MaskPlanner>,
        format: RowFormat,
    ) -> Result<Response, GatewayError> {
        enum Pause {
            None,
            /// The column definitions of a result set are complete: plan before its rows.
            Plan,
            /// An ERR packet of `len` bytes starts where the scan stopped.
            Error {
                len: usize,
            },
        }
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let mut response = Response::default();
        let mut state = State::First;
        // Results completed so far: the statement the next result answers.
        let mut index = 0usize;
        let mut columns: Vec<Described> = Vec::new();
        let mut active: Option<ActivePlan> = None;
        // Added to the sequence id of every packet from here on.
        let mut shift: u8 = 0;
        let mut out: Vec<u8> = Vec::new();
        let mut row: Vec<u8> = Vec::new();
        loop {
            out.clear();
            let mut pos = 0;
            let mut pause = Pause::None;
            let mut done = false;
            {
                let buf = self.up_reader.buffered();
                // Bytes up to here are in `out` already (or need not be: nothing was replaced).
                let mut flushed = 0;
                while let Some((end, pieces)) = whole_packet(buf, pos)? {
                    let start = pos;
                    let first_len = header(&buf[start..]).map_or(0, |(len, _)| len);
                    let first = &buf[start + HEADER_LEN..start + HEADER_LEN + first_len];
                    if first.first() == Some(&0xff)
                        && matches!(state, State::First | State::Rows | State::Fields)
                    {
                        pause = Pause::Error { len: end - start };
                        break;
                    }
                    let before = state;
                    let is_row =
                        matches!(before, State::Rows) && !is_terminator(first, deprecate_eof);
                    if matches!(before, State::Columns(_)) {
                        columns.push(crate::masking::describe(first));
                    }
                    let finished = step(&mut state, expect, deprecate_eof, first, &mut response)?;
                    if matches!(state, State::First) && matches!(before, State::First | State::Rows)
                    {
                        // A result ended (an OK, or the end of a result set).
                        index += 1;
                        if let Some(plan) = active.take() {
                            MaskedColumn::merge(&mut response.masked, plan.report());
                        }
                        columns.clear();
                    }
                    let mut replaced = false;
                    if let (true, Some(plan)) = (is_row, active.as_mut().filter(|p| p.masks())) {
                        let payload = joined_payload(&buf[start..end]);
                        row.clear();
                        if plan.rewrite_row(&payload, &mut row) {
                            out.extend_from_slice(&buf[flushed..start]);
                            let seq = buf[start + 3].wrapping_add(shift);
                            let next = packet::frame(&mut out, seq, &row);
                            let grown = next.wrapping_sub(seq).wrapping_sub(pieces);
                            shift = shift.wrapping_add(grown);
                            flushed = end;
                            replaced = true;
                        }
                    }
                    if !replaced && shift != 0 {
                        patch_seq(&mut buf[start..end], shift);
                    }
                    pos = end;
                    if finished {
                        done = true;
                        break;
                    }
                    if matches!(before, State::Columns(_)) && !matches!(state, State::Columns(_)) {
                        pause = Pause::Plan;
                        break;
                    }
                }
                if !out.is_empty() {
                    out.extend_from_slice(&buf[flushed..pos]);
                }
            }
            if pos > 0 {
                let bytes: &[u8] = if out.is_empty() {
                    &self.up_reader.buffered()[..pos]
                } else {
                    &out
                };
                self.client_write
                    .write_all(bytes)
                    .await
                    .map_err(|e| GatewayError::protocol(Side::Client, format!("write: {e}")))?;
                self.up_reader.consume(pos);
            }
            match pause {
                Pause::None => {}
                Pause::Plan => {
                    let result_columns: Vec<_> = columns.iter().map(|d| d.column.clone()).collect();
                    let plan = match planner {
                        Some(planner) => ActivePlan::new(
                            planner.plan(index, &result_columns).await,
                            &columns,
                            format,
                        ),
                        // Rows no execution asked for, as far as the relay can tell: none of
                        // their values goes out.
                        None => ActivePlan::nulls(&columns, format),
                    };
                    active = Some(plan);
                    continue;
                }
                Pause::Error { len } => {
                    let mut raw = self.up_reader.buffered()[..len].to_vec();
                    self.up_reader.consume(len);
                    let payload = joined_payload(&raw).into_owned();
                    step(&mut state, expect, deprecate_eof, &payload, &mut response)?;
                    let reads_masked = match planner {
                        Some(planner) => planner.reads_masked(index).await,
                        None => false,
                    };
                    let seq = raw[3].wrapping_add(shift);
                    let reply =
                        match crate::masking::scrub_error(&self.session, &payload, reads_masked) {
                            Some(scrubbed) => packet::packet(seq, &scrubbed),
                            None => {
                                patch_seq(&mut raw, shift);
                                raw
                            }
                        };
                    self.send_client(&reply).await?;
                    done = true;
                }
            }
            if done {
                if let Some(plan) = active.take() {
                    MaskedColumn::merge(&mut response.masked, plan.report());
                }
                if let Some(status) = response.status {
                    self.track_status(status);
                }
                return Ok(response);
            }
            match self.up_reader.fill(&mut self.up_read).await {
                Ok(0) => return Err(lost("the database closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(lost(format!("read from the database: {e}"))),
            }
        }
    }

    /// Reads the SQL-reading settings the server reports in its status flags.
    fn track_status(&mut self, status: u16) {
        self.last_status = status;
        self.settings.no_backslash_escapes =
            status & StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES.bits() != 0;
        if self.status_has_ansi_quotes {
            self.settings.ansi_quotes = status & StatusFlags::SERVER_STATUS_ANSI_QUOTES.bits() != 0;
        }
    }

    /// Asks the server for the current database and sql_mode (after statements that may have
    /// changed them), on the gateway's own command: nothing of it reaches the client.
    async fn refresh_state(&mut self) -> Result<(), GatewayError> {
        self.up_write
            .write_all(&packet::packet(
                0,
                b"\x03SELECT DATABASE(), @@SESSION.sql_mode, @@SESSION.character_set_client",
            ))
            .await
            .map_err(|e| lost(format!("write to the database: {e}")))?;
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let mut state = State::First;
        let mut response = Response::default();
        let mut row: Option<Vec<Option<String>>> = None;
        loop {
            let p = self
                .up_reader
                .read(&mut self.up_read, MAX_UPSTREAM_PACKET)
                .await
                .map_err(|e| e.into_gateway(Side::Upstream, "read session state"))?;
            let payload = p.payload();
            let was_rows = matches!(state, State::Rows);
            let done = step(
                &mut state,
                Expect::Results,
                deprecate_eof,
                &payload,
                &mut response,
            )?;
            if was_rows && matches!(state, State::Rows) && row.is_none() {
                row = Some(text_row(&payload));
            }
            if done {
                break;
            }
        }
        if let Some(e) = response.error {
            return Err(lost(format!(
                "reading the session state failed: {}",
                e.message
            )));
        }
        if let Some(row) = row {
            let mut values = row.into_iter();
            if let Some(db) = values.next() {
                self.settings.default_schema = db.map(|d| Arc::from(d.as_str()));
            }
            if let Some(Some(mode)) = values.next() {
                let has = |m: &str| mode.split(',').any(|x| x.eq_ignore_ascii_case(m));
                self.settings.ansi_quotes = has("ANSI_QUOTES") || has("ANSI");
                self.settings.no_backslash_escapes = has("NO_BACKSLASH_ESCAPES");
            }
            if let Some(Some(charset)) = values.next() {
                if crate::handshake::unsafe_charset(&charset) {
                    return Err(crate::handshake::unsafe_charset_error(&charset));
                }
                self.encoding = crate::handshake::encoding(&charset);
            }
        }
        Ok(())
    }
}

/// Whether the policy read the text as a KILL (never forwarded as written: see [`crate::kill`]).
fn is_kill(stmt: &Statement) -> bool {
    stmt.judgement()
        .classification
        .as_deref()
        .is_some_and(|c| c.split("; ").any(|c| c == "utility:kill"))
}

/// Whether a statement may have changed what the relay tracks (the database, sql_mode, the
/// character set): session statements, and procedures (which may run them). Reading them back is
/// a statement of the gateway's own, which clears the server's warning list and ROW_COUNT(), so it
/// runs only after these. A statement the policy did not classify (no `[policy]`: nothing to
/// judge under the settings) is not followed by one.
fn may_change_reading(stmt: &Statement) -> bool {
    stmt.judgement()
        .classification
        .as_deref()
        .is_some_and(|classes| {
            classes.split("; ").any(|c| {
                let class = c.split(':').next().unwrap_or(c);
                class == "session" || class == "procedural"
            })
        })
}

/// Whether a statement may have created, changed or dropped relations, after which masking's
/// catalog must not trust what it cached: DDL, and procedures (which may run it). A statement the
/// policy did not classify may have, unless it returned rows.
fn may_change_schema(stmt: &Statement, response: &Response) -> bool {
    match stmt.judgement().classification.as_deref() {
        Some(classes) => classes.split("; ").any(|c| {
            let class = c.split(':').next().unwrap_or(c);
            class == "ddl" || class == "procedural"
        }),
        None => !response.result_set,
    }
}

/// The end (offset in `buf`) and number of pieces of the whole packet that starts at `at`, when
/// all of it is buffered; otherwise room is reserved for the piece that is missing.
fn whole_packet(buf: &mut bytes::BytesMut, at: usize) -> Result<Option<(usize, u8)>, GatewayError> {
    let mut end = at;
    let mut pieces: u8 = 0;
    let mut payload = 0usize;
    loop {
        let Some((len, _)) = header(&buf[end..]) else {
            return Ok(None);
        };
        payload += len;
        if payload > MAX_UPSTREAM_PACKET {
            return Err(lost("packet larger than the protocol allows"));
        }
        if buf.len() < end + HEADER_LEN + len {
            let missing = end + HEADER_LEN + len - buf.len();
            buf.reserve(missing);
            return Ok(None);
        }
        end += HEADER_LEN + len;
        pieces = pieces.wrapping_add(1);
        if len < MAX_PIECE {
            return Ok(Some((end, pieces)));
        }
    }
}

/// The payload of a whole packet's bytes: borrowed when it is one piece, joined otherwise.
fn joined_payload(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let Some((len, _)) = header(raw) else {
        return std::borrow::Cow::Borrowed(&[]);
    };
    if len < MAX_PIECE {
        return std::borrow::Cow::Borrowed(raw.get(HEADER_LEN..HEADER_LEN + len).unwrap_or(&[]));
    }
    let mut joined = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((len, _)) = header(rest) {
        let Some(piece) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
            break;
        };
        joined.extend_from_slice(piece);
        rest = &rest[HEADER_LEN + len..];
    }
    std::borrow::Cow::Owned(joined)
}

/// Adds `shift` to the sequence id of every piece of a whole packet's bytes.
fn patch_seq(raw: &mut [u8], shift: u8) {
    if shift == 0 {
        return;
    }
    let mut at = 0;
    while let Some((len, seq)) = header(&raw[at..]) {
        raw[at + 3] = seq.wrapping_add(shift);
        at += HEADER_LEN + len;
        if at >= raw.len() {
            break;
        }
    }
}

/// The values of a text-protocol row.
fn text_row(payload: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if rest[0] == 0xfb {
            out.push(None);
            rest = &rest[1..];
            continue;
        }
        let Some((len, used)) = lenenc_int(rest) else {
            break;
        };
        let end = used + len as usize;
        let Some(value) = rest.get(used..end) else {
            break;
        };
        out.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &rest[end..];
    }
    out
}

/// An error of the upstream connection.
fn lost(detail: impl Into<String>) -> GatewayError {
    GatewayError::upstream_unavailable("the connection to the database was lost")
        .with_detail(detail)
}

/// Status flags of an EOF packet (before CLIENT_DEPRECATE_EOF): header, warnings, status.
fn eof_status(payload: &[u8]) -> Option<u16> {
    let s = payload.get(3..5)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Whether `payload` ends a row stream: an EOF (or an OK with an EOF header), not a row whose
/// first value happens to start with 0xFE.
fn is_terminator(payload: &[u8], deprecate_eof: bool) -> bool {
    payload.first() == Some(&0xfe)
        && if deprecate_eof {
            payload.len() < MAX_PIECE
        } else {
            payload.len() < 9
        }
}

fn server_error(payload: &[u8]) -> RecordedError {
    let code = payload
        .get(1..3)
        .map(|c| u16::from_le_bytes([c[0], c[1]]).to_string());
    RecordedError {
        side: Side::Upstream,
        code,
        message: crate::upstream::server_error(payload),
    }
}

/// Follows one packet of a response; `true` when the response is complete.
fn step(
    state: &mut State,
    expect: Expect,
    deprecate_eof: bool,
    payload: &[u8],
    r: &mut Response,
) -> Result<bool, GatewayError> {
    let first = payload.first().copied();
    let more = |status: u16| status & StatusFlags::SERVER_MORE_RESULTS_EXISTS.bits() != 0;
    match *state {
        State::First => match (expect, first) {
            (_, Some(0xff)) => {
                r.error = Some(server_error(payload));
                Ok(true)
            }
            (Expect::One, _) => {
                if first == Some(0x00) || first == Some(0xfe) {
                    r.status = if first == Some(0x00) || deprecate_eof {
                        ok_fields(payload).map(|(_, s)| s)
                    } else {
                        eof_status(payload)
                    };
                }
                Ok(true)
            }
            (Expect::Fields, _) => {
                *state = State::Fields;
                step(state, expect, deprecate_eof, payload, r)
            }
            (Expect::Prepared, Some(0x00)) => {
                let b = payload
                    .get(1..9)
                    .ok_or_else(|| lost("malformed COM_STMT_PREPARE response"))?;
                r.prepared = Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let columns = u16::from_le_bytes([b[4], b[5]]);
                let params = u16::from_le_bytes([b[6], b[7]]);
                *state = State::Params { params, columns };
                if params == 0 {
                    return prepared_columns(state, columns);
                }
                Ok(false)
            }
            (Expect::Prepared, _) => Err(lost("unexpected COM_STMT_PREPARE response")),
            (Expect::Results, Some(0x00)) => {
                let (affected, status) =
                    ok_fields(payload).ok_or_else(|| lost("malformed OK packet"))?;
                r.affected += affected;
                r.status = Some(status);
                Ok(!more(status))
            }
            (Expect::Results, Some(0xfb)) => Err(lost(
                "the database asked for a local file (LOAD DATA LOCAL), which the gateway does not allow",
            )),
            (Expect::Results, _) => {
                let (columns, _) =
                    lenenc_int(payload).ok_or_else(|| lost("malformed result set header"))?;
                r.result_set = true;
                *state = State::Columns(columns);
                if columns == 0 {
                    return Err(lost("result set without columns"));
                }
                Ok(false)
            }
        },
        State::Columns(left) => {
            *state = if left > 1 {
                State::Columns(left - 1)
            } else if deprecate_eof {
                State::Rows
            } else {
                State::ColumnsEof
            };
            Ok(false)
        }
        State::ColumnsEof => {
            *state = State::Rows;
            Ok(false)
        }
        State::Rows => {
            if first == Some(0xff) {
                r.error = Some(server_error(payload));
                return Ok(true);
            }
            if is_terminator(payload, deprecate_eof) {
                let status = if deprecate_eof {
                    ok_fields(payload).map(|(_, s)| s)
                } else {
                    eof_status(payload)
                }
                .ok_or_else(|| lost("malformed end of result set"))?;
                r.status = Some(status);
                *state = State::First;
                return Ok(!more(status));
            }
            r.rows += 1;
            Ok(false)
        }
        State::Params { params, columns } => {
            if params > 1 {
                *state = State::Params {
                    params: params - 1,
                    columns,
                };
                return Ok(false);
            }
            if deprecate_eof {
                return prepared_columns(state, columns);
            }
            *state = State::ParamsEof { columns };
            Ok(false)
        }
        State::ParamsEof { columns } => prepared_columns(state, columns),
        State::PreparedColumns(left) => {
            if left > 1 {
                *state = State::PreparedColumns(left - 1);
                return Ok(false);
            }
            if deprecate_eof {
                return Ok(true);
            }
            *state = State::PreparedColumnsEof;
            Ok(false)
        }
        State::PreparedColumnsEof => Ok(true),
        State::Fields => {
            if first == Some(0xff) {
                r.error = Some(server_error(payload));
                return Ok(true);
            }
            Ok(is_terminator(payload, deprecate_eof))
        }
    }
}

fn prepared_columns(state: &mut State, columns: u16) -> Result<bool, GatewayError> {
    if columns == 0 {
        return Ok(true);
    }
    *state = State::PreparedColumns(columns);
    Ok(false)
}

/// Follows `payloads` as the response to each kind of command (for the fuzz targets).
pub(crate) fn follow(payloads: &[Vec<u8>], deprecate_eof: bool) {
    for expect in [
        Expect::Results,
        Expect::One,
        Expect::Fields,
        Expect::Prepared,
    ] {
        let mut state = State::First;
        let mut r = Response::default();
        for p in payloads {
            match step(&mut state, expect, deprecate_eof, p, &mut r) {
                Ok(false) => {}
                Ok(true) | Err(_) => break,
            }
        }
    }
}

/// Reads one payload as every field reader of the relay does (for the fuzz targets).
pub(crate) fn read_payload(payload: &[u8]) {
    let _ = ok_fields(payload);
    let _ = eof_status(payload);
    let _ = text_row(payload);
    let _ = server_error(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expect: Expect, deprecate_eof: bool, packets: &[&[u8]]) -> (Response, usize) {
        let mut state = State::First;
        let mut r = Response::default();
        for (i, p) in packets.iter().enumerate() {
            if step(&mut state, expect, deprecate_eof, p, &mut r).unwrap() {
                return (r, i + 1);
            }
        }
        (r, usize::MAX)
    }

    #[test]
    fn a_result_set_ends_at_its_eof_and_counts_rows() {
        let (r, used) = run(
            Expect::Results,
            false,
            &[
                b"\x01",
                b"coldef",
                b"\xfe\x00\x00\x02\x00",
                b"\x011",
                b"\x012",
                b"\xfe\x00\x00\x02\x00",
                b"never read",
            ],
        );
        assert_eq!((r.rows, used, r.status), (2, 6, Some(2)));
    }

    #[test]
    fn more_results_keep_the_response_open() {
        let (r, used) = run(
            Expect::Results,
            true,
            &[
                b"\x00\x01\x00\x0a\x00\x00\x00",
                b"\x01",
                b"coldef",
                b"\x011",
                b"\xfe\x00\x00\x02\x00\x00\x00",
            ],
        );
        assert_eq!((r.rows, r.affected, used), (1, 1, 5));
    }

    #[test]
    fn an_error_in_the_rows_ends_the_response() {
        let (r, used) = run(
            Expect::Results,
            true,
            &[b"\x01", b"coldef", b"\x011", b"\xff\x15\x04#HY000boom"],
        );
        assert_eq!(used, 4);
        assert_eq!(r.error.unwrap().code.as_deref(), Some("1045"));
    }

    #[test]
    fn prepare_responses_count_their_definitions() {
        // Two parameters, one column, with EOFs.
        let (r, used) = run(
            Expect::Prepared,
            false,
            &[
                b"\x00\x07\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00",
                b"p1",
                b"p2",
                b"\xfe\x00\x00\x02\x00",
                b"c1",
                b"\xfe\x00\x00\x02\x00",
            ],
        );
        assert_eq!((r.prepared, used), (Some(7), 6));
        // No parameters, no columns: the OK alone.
        let (r, used) = run(
            Expect::Prepared,
            true,
            &[b"\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"],
        );
        assert_eq!((r.prepared, used), (Some(8), 1));
    }

    #[test]
    fn a_row_starting_with_0xfe_is_not_an_eof() {
        let mut long_row = vec![0xfe];
        long_row.extend_from_slice(&[0; 8]);
        assert!(!is_terminator(&long_row, false));
        assert!(is_terminator(b"\xfe\x00\x00\x02\x00", false));
    }

    #[test]
    fn text_rows_decode_nulls_and_values() {
        assert_eq!(
            text_row(b"\x03app\xfb\x00"),
            vec![Some("app".into()), None, Some(String::new())]
        );
    }
}
