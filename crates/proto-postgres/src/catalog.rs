//! The catalog of a PostgreSQL target, as masking reads it: relations by OID (what a
//! RowDescription names) and by name (what a statement names), with their columns by attribute
//! number and, for views, their definition.
//!
//! Each target has one [`PgCatalog`] ([`Catalogs`] hands them out), which keeps one metadata
//! connection of its own, logged in like a session's upstream connection
//! ([`crate::upstream::connect`], the target's service credentials) with `application_name`
//! [`APPLICATION_NAME`], read-only. Lookups are cached: a hit reads a map under a shared lock and
//! never touches the connection; entries expire after the refresh interval (names that match
//! nothing sooner), and [`Catalog::invalidate`] drops them all.
//!
//! Values reach the server only as bound parameters of fixed statements (extended protocol,
//! text format), never inside SQL text, so a relation name taken from a client's statement cannot
//! change what the query does.
//!
//! The connection opens on the first miss. Any I/O or protocol failure drops it and the lookup
//! fails with [`gateway_core::ErrorKind::UpstreamUnavailable`] (the masker then treats the column as
//! unresolvable); the next miss reconnects, but not within [`RECONNECT_BACKOFF`] of a failed
//! attempt, so a database that is down is not asked again for every result. A connection that
//! breaks after being idle (the server closed it) is replaced at once, once. Every lookup is
//! bounded by a timeout, waiting for the connection included.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gateway_core::{Catalog, CatalogRelation, GatewayError, RelationKind, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::TlsConfigs;
use crate::wire::{error_fields, typed, typed_header, Reader, HEADER_LEN};
use gateway_core::serve::stream::UpstreamStream;

/// The `application_name` of the metadata connections (it shows in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "portcullis catalog";
/// How long a lookup's answer is kept by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// The default bound on one lookup, from the call to the answer (waiting for the connection,
/// connecting and logging in included).
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// No new connection is attempted within this long of a failed one.
pub const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// The default bound on one message from the server, and on one lookup's rows together.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long "no such relation" is kept at most (the refresh interval when that is shorter):
/// a relation created meanwhile is found soon even without an invalidation.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Entries per map beyond which expired ones are dropped (and, if that is not enough, all of
/// them): names come from client statements, so their number is not the schema's to bound.
const MAX_ENTRIES: usize = 50_000;

/// Type OIDs of the bound parameters.
const OID_TYPE: u32 = 26;
const NAME_TYPE: u32 = 19;

/// What every query returns, one row per relation: its OID, schema, name, `relkind`, the view
/// definition (views and materialized views) and its columns as a JSON array of
/// `[attnum, name or null when dropped]` in `attnum` order (NULL when it has none).
/// `pg_get_viewdef` qualifies every relation it names, since the connection's search path is
/// `pg_catalog` alone.
const SELECT: &str = "SELECT c.oid, n.nspname, c.relname, c.relkind, \
     CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END, \
     (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(a.attnum, \
             CASE WHEN a.attisdropped THEN NULL ELSE a.attname END) ORDER BY a.attnum) \
        FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";
const SELECT_COLUMNS: usize = 6;

fn by_oid_sql() -> String {
    format!("{SELECT} WHERE c.oid = $1")
}

fn by_name_sql() -> String {
    format!("{SELECT} WHERE c.relname = $1 ORDER BY n.nspname")
}

fn by_schema_and_name_sql() -> String {
    format!("{SELECT} WHERE c.relname = $1 AND n.nspname = $2")
}

/// The catalog of one PostgreSQL target: a cache in front of a metadata connection of its own.
pub struct PgCatalog {
    inner: Arc<Inner>,
    lookup_timeout: Duration,
    max_message_bytes: usize,
    /// Where the metadata connection lives (the runtime that made the catalog, or the one given
    /// to [`with_runtime`](Self::with_runtime)), so that its socket stays with one runtime
    /// whichever session's worker asks. `None` outside a runtime (misses
    /// then run on the caller's).
    runtime: Option<tokio::runtime::Handle>,
}

struct Inner {
    target: Arc<Target>,
    tls: Arc<TlsConfigs>,
    refresh: Duration,
    negative_ttl: Duration,
    cache: RwLock<Cache>,
    link: tokio::sync::Mutex<Link>,
}

#[derive(Default)]
struct Cache {
    /// Bumped by every invalidation: an answer read before one is not kept.
    generation: u64,
    by_oid: HashMap<u32, Entry<Option<Arc<CatalogRelation>>>, foldhash::fast::RandomState>,
    /// Keyed by [`name_key`].
    by_name: HashMap<String, Entry<Vec<Arc<CatalogRelation>>>, foldhash::fast::RandomState>,
}

struct Entry<T> {
    value: T,
    expires: Instant,
}

/// The metadata connection and when connecting last failed.
#[derive(Default)]
struct Link {
    conn: Option<Conn>,
    failed_at: Option<Instant>,
}

/// What a miss asks the server.
#[derive(Debug, Clone)]
enum Lookup {
    Oid(u32),
    Named {
        schema: Option<Box<str>>,
        name: Box<str>,
    },
}

impl std::fmt::Debug for PgCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCatalog")
            .field("target", &self.inner.target.name)
            .field("refresh", &self.inner.refresh)
            .field("lookup_timeout", &self.lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl PgCatalog {
    /// The catalog of `target`, keeping answers for `refresh`. Nothing connects until the first
    /// lookup that misses the cache. `tls` is shared with the sessions' upstream connections.
    pub fn new(target: Arc<Target>, tls: Arc<TlsConfigs>, refresh: Duration) -> Self {
        PgCatalog {
            inner: Arc::new(Inner {
                target,
                tls,
                refresh,
                negative_ttl: refresh.min(NEGATIVE_TTL),
                cache: RwLock::default(),
                link: tokio::sync::Mutex::default(),
            }),
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Sets the bound on one lookup (default [`DEFAULT_LOOKUP_TIMEOUT`]).
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// Runs the metadata connection on `runtime` (default: the runtime [`new`](Self::new) was
    /// called on).
    pub fn with_runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Sets the largest message accepted from the server, which also bounds one lookup's rows
    /// together (default [`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn with_max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// The target this catalog reads.
    pub fn target(&self) -> &Arc<Target> {
        &self.inner.target
    }

    /// Runs a miss: on the catalog's runtime when it has one, bounded by the lookup timeout.
    async fn load(&self, lookup: Lookup) -> Result<Vec<Arc<CatalogRelation>>, GatewayError> {
        let inner = Arc::clone(&self.inner);
        let limits = Limits {
            deadline: tokio::time::Instant::now() + self.lookup_timeout,
            timeout: self.lookup_timeout,
            max_message_bytes: self.max_message_bytes,
        };
        let Some(runtime) = &self.runtime else {
            return inner.load(lookup, limits).await;
        };
        // As a task of its own, a miss also finishes (and fills the cache for the lookups waiting
        // behind it) when the session that asked goes away meanwhile.
        match runtime
            .spawn(async move { inner.load(lookup, limits).await })
            .await
        {
            Ok(result) => result,
            Err(e) => Err(GatewayError::internal(format!(
                "the catalog lookup for target \"{}\" did not finish: {e}",
                self.inner.target.name
            ))),
        }
    }
}

#[gateway_core::async_trait]
impl Catalog for PgCatalog {
    async fn relation_by_oid(
        &self,
        oid: u32,
    ) -> Result<Option<Arc<CatalogRelation>>, GatewayError> {
        if let Some(hit) = self.inner.cached_oid(oid) {
            return Ok(hit);
        }
        let found = self.load(Lookup::Oid(oid)).await?;
        Ok(found.into_iter().find(|r| r.oid == oid))
    }

    async fn relations_named(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<Arc<CatalogRelation>>, GatewayError> {
        // No relation's name holds a NUL, and the server would refuse one in a parameter.
        if name.contains('\0') || schema.is_some_and(|s| s.contains('\0')) {
            return Ok(Vec::new());
        }
        if let Some(hit) = self.inner.cached_named(schema, name) {
            return Ok(hit);
        }
        self.load(Lookup::Named {
            schema: schema.map(Box::from),
            name: Box::from(name),
        })
        .await
    }

    fn invalidate(&self) {
        let mut cache = self
            .inner
            .cache
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        cache.generation = cache.generation.wrapping_add(1);
        cache.by_oid.clear();
        cache.by_name.clear();
    }
}

/// What bounds one miss.
#[derive(Debug, Clone, Copy)]
struct Limits {
    deadline: tokio::time::Instant,
    timeout: Duration,
    max_message_bytes: usize,
}

/// The cache key of a lookup by name: which kind, the schema, then the name (neither holds a
/// NUL).
fn name_key(schema: Option<&str>, name: &str) -> String {
    let mut key = String::with_capacity(2 + schema.map_or(0, str::len) + name.len());
    match schema {
        Some(s) => {
            key.push('+');
            key.push_str(s);
        }
        None => key.push('*'),
    }
    key.push('\0');
    key.push_str(name);
    key
}

impl Inner {
    fn cached_oid(&self, oid: u32) -> Option<Option<Arc<CatalogRelation>>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let entry = cache.by_oid.get(&oid)?;
        (entry.expires > Instant::now()).then(|| entry.value.clone())
    }

    fn cached_named(&self, schema: Option<&str>, name: &str) -> Option<Vec<Arc<CatalogRelation>>> {
        let key = name_key(schema, name);
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let entry = cache.by_name.get(&key)?;
        (entry.expires > Instant::now()).then(|| entry.value.clone())
    }

    fn cached(&self, lookup: &Lookup) -> Option<Vec<Arc<CatalogRelation>>> {
        match lookup {
            Lookup::Oid(oid) => self.cached_oid(*oid).map(|r| r.into_iter().collect()),
            Lookup::Named { schema, name } => self.cached_named(schema.as_deref(), name),
        }
    }

    fn generation(&self) -> u64 {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Keeps an answer, unless the cache was invalidated since the query started. Every relation
    /// found is also kept by its OID and by its schema and name.
    fn store(&self, generation: u64, lookup: &Lookup, found: &[Arc<CatalogRelation>]) {
        let now = Instant::now();
        let ttl = |found: bool| {
            now + if found {
                self.refresh
            } else {
                self.negative_ttl
            }
        };
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.generation != generation {
            return;
        }
        let cache = &mut *cache;
        make_room(&mut cache.by_oid, now);
        make_room(&mut cache.by_name, now);
        match lookup {
            Lookup::Oid(oid) => {
                let value = found.iter().find(|r| r.oid == *oid).cloned();
                let expires = ttl(value.is_some());
                cache.by_oid.insert(*oid, Entry { value, expires });
            }
            Lookup::Named { schema, name } => {
                let expires = ttl(!found.is_empty());
                let value = found.to_vec();
                cache
                    .by_name
                    .insert(name_key(schema.as_deref(), name), Entry { value, expires });
            }
        }
        for r in found {
            let expires = ttl(true);
            let value = Some(Arc::clone(r));
            cache.by_oid.insert(r.oid, Entry { value, expires });
            let value = vec![Arc::clone(r)];
            cache
                .by_name
                .insert(name_key(Some(&r.schema), &r.name), Entry { value, expires });
        }
    }

    async fn load(
        &self,
        lookup: Lookup,
        limits: Limits,
    ) -> Result<Vec<Arc<CatalogRelation>>, GatewayError> {
        let Ok(mut link) = tokio::time::timeout_at(limits.deadline, self.link.lock()).await else {
            return Err(self.timed_out(limits));
        };
        // Lookups of the same key queue here: the first one's answer serves the others.
        if let Some(hit) = self.cached(&lookup) {
            return Ok(hit);
        }
        let generation = self.generation();
        let found = self.query(&mut link, &lookup, limits).await?;
        self.store(generation, &lookup, &found);
        Ok(found)
    }

    /// Asks the server, over the kept connection or a new one.
    async fn query(
        &self,
        link: &mut Link,
        lookup: &Lookup,
        limits: Limits,
    ) -> Result<Vec<Arc<CatalogRelation>>, GatewayError> {
        // The connection is taken out while in use: should this future be dropped halfway (the
        // timeout, a cancelled caller), the half-read connection goes with it.
        if let Some(mut conn) = link.conn.take() {
            match tokio::time::timeout_at(limits.deadline, conn.lookup(lookup)).await {
                Ok(Ok(found)) => {
                    link.conn = Some(conn);
                    return Ok(found);
                }
                Ok(Err(Failure::Refused(e))) => {
                    // The server answered with an error and is ready again: keep the connection.
                    link.conn = Some(conn);
                    return Err(e);
                }
                Ok(Err(Failure::Broken(e))) => {
                    // Typically the server closed the idle connection (restart, terminated
                    // backend): try a new one right away.
                    tracing::debug!(target = %self.target.name, error = %e, detail = ?e.detail,
                        "catalog connection lost; reconnecting");
                }
                Err(_) => {
                    link.failed_at = Some(Instant::now());
                    return Err(self.timed_out(limits));
                }
            }
        } else if let Some(at) = link.failed_at {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(self.unavailable("connecting failed moments ago"));
            }
        }
        let attempt = tokio::time::timeout_at(limits.deadline, async {
            let mut conn = Conn::open(&self.target, &self.tls, limits).await?;
            match conn.lookup(lookup).await {
                Ok(found) => Ok((conn, found)),
                Err(Failure::Refused(e)) => {
                    link.conn = Some(conn);
                    Err(e)
                }
                Err(Failure::Broken(e)) => Err(e),
            }
        })
        .await;
        match attempt {
            Ok(Ok((conn, found))) => {
                link.conn = Some(conn);
                link.failed_at = None;
                Ok(found)
            }
            Ok(Err(e)) => {
                if link.conn.is_none() {
                    link.failed_at = Some(Instant::now());
                    tracing::warn!(target = %self.target.name, error = %e, detail = ?e.detail,
                        "cannot read the target's catalog");
                }
                Err(e)
            }
            Err(_) => {
                link.failed_at = Some(Instant::now());
                Err(self.timed_out(limits))
            }
        }
    }

    fn unavailable(&self, detail: impl Into<String>) -> GatewayError {
        GatewayError::upstream_unavailable(format!(
            "the gateway could not read the catalog of target \"{}\"",
            self.target.name
        ))
        .with_detail(detail)
    }

    fn timed_out(&self, limits: Limits) -> GatewayError {
        tracing::warn!(target = %self.target.name, timeout = ?limits.timeout,
            "catalog lookup timed out");
        self.unavailable(format!("the lookup took longer than {:?}", limits.timeout))
    }
}

/// Bounds a cache map: drops expired entries when it is full, everything when that is not
/// enough.
fn make_room<K, T, S>(map: &mut HashMap<K, Entry<T>, S>, now: Instant) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, e| e.expires > now);
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// The metadata connection
// ---------------------------------------------------------------------------------------------

/// Why a query failed.
enum Failure {
    /// The server answered with an error and is ready for the next query.
    Refused(GatewayError),
    /// The connection cannot be used any more (I/O error, closed, a message that breaks the
    /// protocol).
    Broken(GatewayError),
}

/// A logged-in metadata connection, idle between queries.
struct Conn {
    stream: UpstreamStream,
    buf: BytesMut,
    target: Arc<Target>,
    max_message_bytes: usize,
}

impl Conn {
    async fn open(
        target: &Arc<Target>,
        tls: &TlsConfigs,
        limits: Limits,
    ) -> Result<Conn, GatewayError> {
        let statement_timeout = limits.timeout.as_millis().clamp(1, i32::MAX as u128);
        let params = [
            ("application_name", APPLICATION_NAME.to_owned()),
            ("client_encoding", "UTF8".to_owned()),
            ("search_path", "pg_catalog".to_owned()),
            ("default_transaction_read_only", "on".to_owned()),
            ("statement_timeout", statement_timeout.to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let upstream = crate::upstream::connect(target, &params, tls).await?;
        Ok(Conn {
            stream: upstream.stream,
            buf: upstream.leftover,
            target: Arc::clone(target),
            max_message_bytes: limits.max_message_bytes,
        })
    }

    fn broken(&self, detail: impl Into<String>) -> Failure {
        Failure::Broken(
            GatewayError::upstream_unavailable(format!(
                "the gateway could not read the catalog of target \"{}\"",
                self.target.name
            ))
            .with_detail(detail),
        )
    }

    async fn lookup(&mut self, lookup: &Lookup) -> Result<Vec<Arc<CatalogRelation>>, Failure> {
        let oid;
        let rows = match lookup {
            Lookup::Oid(o) => {
                oid = o.to_string();
                self.query(&by_oid_sql(), &[OID_TYPE], &[&oid]).await?
            }
            Lookup::Named { schema: None, name } => {
                self.query(&by_name_sql(), &[NAME_TYPE], &[name]).await?
            }
            Lookup::Named {
                schema: Some(schema),
                name,
            } => {
                self.query(
                    &by_schema_and_name_sql(),
                    &[NAME_TYPE, NAME_TYPE],
                    &[name, schema],
                )
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                relation(row)
                    .map(Arc::new)
                    .ok_or_else(|| self.broken("a catalog row the gateway cannot read"))
            })
            .collect()
    }

    /// Runs one statement with text parameters (unnamed statement and portal, text results) and
    /// returns its rows, each as its column values.
    async fn query(
        &mut self,
        sql: &str,
        types: &[u32],
        params: &[&str],
    ) -> Result<Vec<Vec<Option<Bytes>>>, Failure> {
        self.query_rows(sql, types, params, SELECT_COLUMNS).await
    }

    /// [`query`](Self::query) for a statement of `width` result columns.
    async fn query_rows(
        &mut self,
        sql: &str,
        types: &[u32],
        params: &[&str],
        width: usize,
    ) -> Result<Vec<Vec<Option<Bytes>>>, Failure> {
        let mut out = BytesMut::with_capacity(sql.len() + 128);
        out.extend_from_slice(&parse_message(sql, types));
        out.extend_from_slice(&bind_message(params));
        out.extend_from_slice(&typed(b'E', b"\0\0\0\0\0"));
        out.extend_from_slice(&typed(b'S', b""));
        if let Err(e) = self.stream.write_all(&out).await {
            return Err(self.broken(format!("send: {e}")));
        }
        if let Err(e) = self.stream.flush().await {
            return Err(self.broken(format!("send: {e}")));
        }

        let mut rows = Vec::new();
        let mut total = 0usize;
        let mut refused: Option<GatewayError> = None;
        loop {
            let (ty, body) = self.read().await?;
            match ty {
                // ParseComplete, BindComplete, CommandComplete; notices, parameter changes and
                // notifications may come at any time.
                b'1' | b'2' | b'C' | b'N' | b'S' | b'A' => {}
                b'D' if refused.is_none() => {
                    total = total.saturating_add(body.len());
                    if total > self.max_message_bytes {
                        return Err(self.broken(format!(
                            "the answer exceeds {} bytes",
                            self.max_message_bytes
                        )));
                    }
                    let row =
                        data_row(&body, width).ok_or_else(|| self.broken("malformed DataRow"))?;
                    rows.push(row);
                }
                b'E' => {
                    let fields = error_fields(&body);
                    let get = |c: u8| {
                        fields
                            .iter()
                            .find(|(k, _)| *k == c)
                            .map_or("", |(_, v)| v.as_str())
                    };
                    tracing::warn!(target = %self.target.name, code = get(b'C'), message = get(b'M'),
                        "the database refused a catalog query");
                    refused.get_or_insert_with(|| {
                        GatewayError::upstream_unavailable(format!(
                            "the gateway could not read the catalog of target \"{}\"",
                            self.target.name
                        ))
                        .with_detail(format!(
                            "the database refused the catalog query (SQLSTATE {})",
                            get(b'C')
                        ))
                    });
                }
                b'Z' => break,
                other => {
                    return Err(self.broken(format!(
                        "unexpected message {:?} in a catalog query",
                        other as char
                    )))
                }
            }
        }
        match refused {
            Some(e) => Err(Failure::Refused(e)),
            None => Ok(rows),
        }
    }

    /// One message: its type and body.
    async fn read(&mut self) -> Result<(u8, Bytes), Failure> {
        loop {
            match typed_header(&self.buf, self.max_message_bytes) {
                Err(e) => return Err(self.broken(format!("invalid message: {e}"))),
                Ok(Some((ty, len))) if self.buf.len() >= len => {
                    let frame = self.buf.split_to(len).freeze();
                    return Ok((ty, frame.slice(HEADER_LEN..)));
                }
                Ok(Some((_, len))) => self.buf.reserve(len - self.buf.len()),
                Ok(None) => {}
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err(self.broken("the database closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(self.broken(format!("read: {e}"))),
            }
        }
    }
}

/// Parse of the unnamed statement with the parameters' type OIDs.
fn parse_message(sql: &str, types: &[u32]) -> Bytes {
    let mut body = Vec::with_capacity(sql.len() + 4 + 4 * types.len());
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    body.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    typed(b'P', &body)
}

/// Bind of the unnamed portal to the unnamed statement: text parameters, text results.
fn bind_message(params: &[&str]) -> Bytes {
    let mut body = Vec::with_capacity(8 + params.iter().map(|p| p.len() + 4).sum::<usize>());
    body.extend_from_slice(b"\0\0");
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    typed(b'B', &body)
}

/// The values of a DataRow body, which must have `columns` columns; `None` when malformed.
fn data_row(body: &Bytes, columns: usize) -> Option<Vec<Option<Bytes>>> {
    let mut r = Reader::new(body);
    if usize::try_from(r.i16()?).ok()? != columns {
        return None;
    }
    let mut values = Vec::with_capacity(columns);
    for _ in 0..columns {
        let value = match r.i32()? {
            -1 => None,
            len => {
                let len = usize::try_from(len).ok()?;
                let start = body.len() - r.rest().len();
                r.bytes(len)?;
                Some(body.slice(start..start + len))
            }
        };
        values.push(value);
    }
    r.rest().is_empty().then_some(values)
}

/// A relation from a row of [`SELECT`]; `None` when a value is not what the query returns.
fn relation(row: &[Option<Bytes>]) -> Option<CatalogRelation> {
    let text = |i: usize| -> Option<&str> { std::str::from_utf8(row.get(i)?.as_deref()?).ok() };
    let oid = text(0)?.parse::<u32>().ok()?;
    let schema = Arc::from(text(1)?);
    let name = Arc::from(text(2)?);
    let kind = match text(3)?.as_bytes() {
        b"r" | b"p" | b"f" => RelationKind::Table,
        b"v" => RelationKind::View,
        b"m" => RelationKind::MaterializedView,
        [_] => RelationKind::Other,
        _ => return None,
    };
    let definition = match row.get(4)? {
        Some(_) => Some(Arc::from(text(4)?)),
        None => None,
    };
    let columns = match row.get(5)? {
        Some(json) => columns(json)?,
        None => Vec::new(),
    };
    Some(CatalogRelation {
        oid,
        schema,
        name,
        kind,
        columns,
        definition,
    })
}

/// The columns by position from the JSON array of `[attnum, name or null]`.
fn columns(json: &[u8]) -> Option<Vec<Option<Arc<str>>>> {
    let attributes: Vec<(i16, Option<String>)> = serde_json::from_slice(json).ok()?;
    let len = attributes.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut columns = vec![None; usize::try_from(len).ok()?];
    for (attnum, name) in attributes {
        let index = usize::try_from(attnum).ok()?.checked_sub(1)?;
        columns[index] = name.map(Arc::from);
    }
    Some(columns)
}

// ---------------------------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------------------------

/// One [`PgCatalog`] per target, made on first use and shared by every session of the target.
pub struct Catalogs {
    tls: Arc<TlsConfigs>,
    refresh: Duration,
    lookup_timeout: Duration,
    max_message_bytes: usize,
    /// The runtime the registry was made on (the listener's): catalogs are made on first use, on
    /// whichever worker runs that session, but their connections live here.
    runtime: Option<tokio::runtime::Handle>,
    by_target: std::sync::Mutex<HashMap<String, Arc<PgCatalog>>>,
}

impl std::fmt::Debug for Catalogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogs")
            .field("refresh", &self.refresh)
            .field("lookup_timeout", &self.lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl Catalogs {
    /// An empty registry whose catalogs connect with `tls` and keep answers for `refresh`. Their
    /// connections live on the runtime this is called on.
    pub fn new(tls: Arc<TlsConfigs>, refresh: Duration) -> Self {
        Catalogs {
            tls,
            refresh,
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            runtime: tokio::runtime::Handle::try_current().ok(),
            by_target: std::sync::Mutex::default(),
        }
    }

    /// Sets the bound on one lookup of every catalog made from now on.
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// Sets the largest message every catalog made from now on accepts.
    pub fn with_max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// The catalog of `target`. A target replaced by another of the same name (a new
    /// configuration) gets a new catalog.
    pub fn get(&self, target: &Arc<Target>) -> Arc<PgCatalog> {
        let mut map = self
            .by_target
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(&target.name) {
            if Arc::ptr_eq(c.target(), target) {
                return Arc::clone(c);
            }
        }
        let mut catalog = PgCatalog::new(Arc::clone(target), Arc::clone(&self.tls), self.refresh)
            .with_lookup_timeout(self.lookup_timeout)
            .with_max_message_bytes(self.max_message_bytes);
        if let Some(runtime) = &self.runtime {
            catalog = catalog.with_runtime(runtime.clone());
        }
        let catalog = Arc::new(catalog);
        map.insert(target.name.clone(), Arc::clone(&catalog));
        catalog
    }
}

/// A metadata connection for one-off reads of a target (`portcullis discover`): the catalog's
/// own login and wire handling, without its cache.
pub struct MetadataConnection {
    conn: Conn,
}

impl MetadataConnection {
    /// Connects and logs in as the catalog does (read-only session, `search_path = pg_catalog`,
    /// statements bounded by `timeout`).
    pub async fn open(
        target: &Arc<Target>,
        tls: &TlsConfigs,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Result<Self, GatewayError> {
        let limits = Limits {
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
            max_message_bytes,
        };
        Ok(Self {
            conn: Conn::open(target, tls, limits).await?,
        })
    }

    /// Runs `sql` with text parameters and returns its rows of `width` text values each.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&str],
        width: usize,
    ) -> Result<Vec<Vec<Option<String>>>, GatewayError> {
        // Parameter types left to the server (0: unspecified).
        let types = vec![0u32; params.len()];
        let rows = self
            .conn
            .query_rows(sql, &types, params, width)
            .await
            .map_err(|f| match f {
                Failure::Refused(e) | Failure::Broken(e) => e,
            })?;
        Ok(rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> Vec<Option<Bytes>> {
        values
            .iter()
            .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
            .collect()
    }

    #[test]
    fn rows_become_relations() {
        let r = relation(&row(&[
            Some("16384"),
            Some("s"),
            Some("t"),
            Some("r"),
            None,
            Some(r#"[[1, "id"], [2, null], [3, "a,\"b\""]]"#),
        ]))
        .unwrap();
        assert_eq!(r.oid, 16384);
        assert_eq!(r.kind, RelationKind::Table);
        assert_eq!(
            r.columns,
            vec![Some(Arc::from("id")), None, Some(Arc::from("a,\"b\""))]
        );
        assert_eq!(r.column(3).map(|c| &**c), Some("a,\"b\""));
        assert_eq!(r.definition, None);

        let kinds = [
            ("p", RelationKind::Table),
            ("f", RelationKind::Table),
            ("v", RelationKind::View),
            ("m", RelationKind::MaterializedView),
            ("S", RelationKind::Other),
            ("c", RelationKind::Other),
        ];
        for (relkind, kind) in kinds {
            let r = relation(&row(&[
                Some("1"),
                Some("s"),
                Some("v"),
                Some(relkind),
                Some(" SELECT 1;"),
                None,
            ]))
            .unwrap();
            assert_eq!(r.kind, kind, "{relkind}");
            assert!(r.columns.is_empty());
            assert_eq!(r.definition.as_deref(), Some(" SELECT 1;"));
        }
    }

    #[test]
    fn malformed_rows_are_refused() {
        let good = [
            Some("1"),
            Some("s"),
            Some("t"),
            Some("r"),
            None,
            Some("[[1,\"a\"]]"),
        ];
        let bad: &[(usize, Option<&str>)] = &[
            (0, Some("-1")),
            (0, Some("x")),
            (0, None),
            (1, None),
            (3, Some("")),
            (3, Some("rr")),
            (5, Some("{")),
            (5, Some("[[0,\"a\"]]")),
            (5, Some("[[-3,\"a\"]]")),
            (5, Some("[[1,2]]")),
        ];
        assert!(relation(&row(&good)).is_some());
        for (i, value) in bad {
            let mut r = good;
            r[*i] = *value;
            assert!(relation(&row(&r)).is_none(), "{i}: {value:?}");
        }
        assert!(relation(&row(&good[..5])).is_none());
        let mut invalid = row(&good);
        invalid[2] = Some(Bytes::from_static(b"\xff"));
        assert!(relation(&invalid).is_none());
    }

    #[test]
    fn data_rows_are_read_within_bounds() {
        let body = Bytes::from_static(b"\0\x02\0\0\0\x02ab\xff\xff\xff\xff");
        assert_eq!(
            data_row(&body, 2),
            Some(vec![Some(Bytes::from_static(b"ab")), None])
        );
        assert_eq!(data_row(&body, 3), None);
        let bad: &[&[u8]] = &[
            b"",
            b"\0",
            b"\0\x02\0\0\0\x05ab",
            b"\0\x02\0\0\0\x02ab",
            b"\0\x02\0\0\0\x02ab\xff\xff\xff\xfe",
            b"\0\x02\0\0\0\x02ab\xff\xff\xff\xffextra",
            b"\xff\xff",
        ];
        for b in bad {
            assert_eq!(data_row(&Bytes::from_static(b), 2), None, "{b:?}");
        }
    }

    #[test]
    fn messages_carry_values_as_parameters() {
        let p = parse_message("SELECT $1", &[NAME_TYPE]);
        assert_eq!(&p[..], b"P\0\0\0\x15\0SELECT $1\0\0\x01\0\0\0\x13");
        let b = bind_message(&["x'; --"]);
        assert_eq!(&b[..], b"B\0\0\0\x16\0\0\0\0\0\x01\0\0\0\x06x'; --\0\0");
    }

    #[test]
    fn name_keys_do_not_collide() {
        assert_ne!(name_key(None, "t"), name_key(Some(""), "t"));
        assert_ne!(name_key(Some("ab"), "c"), name_key(Some("a"), "bc"));
        assert_eq!(name_key(Some("s"), "t"), "+s\0t");
    }

    #[test]
    fn the_registry_hands_out_one_catalog_per_target() {
        let target = |name: &str| {
            Arc::new(Target {
                name: name.into(),
                protocol: gateway_core::Protocol::Postgres,
                host: "127.0.0.1".into(),
                port: 1,
                database: "d".into(),
                user: "u".into(),
                password: None,
                tls: gateway_core::UpstreamTls::Disable,
                labels: Default::default(),
            })
        };
        let catalogs = Catalogs::new(Arc::default(), DEFAULT_REFRESH);
        let (a, b) = (target("a"), target("b"));
        let first = catalogs.get(&a);
        assert!(Arc::ptr_eq(&first, &catalogs.get(&a)));
        assert!(!Arc::ptr_eq(&first, &catalogs.get(&b)));
        let replaced = target("a");
        assert!(!Arc::ptr_eq(&first, &catalogs.get(&replaced)));
        assert!(Arc::ptr_eq(first.target(), &a));
    }
}
