//! The catalog of a MySQL target, as masking reads it: relations by name (what a column
//! definition's `org_table` and a statement name), with their kind (table or view), their columns
//! in order and, for views, their definition, from `information_schema`.
//!
//! Masking needs it to tell a table's column from a view's: MySQL and MariaDB report a view's
//! column with the view as its `org_table`, under the view's own column name, so a view that
//! renames a masked column (`CREATE VIEW v AS SELECT email AS contact FROM customers`) would pass
//! as an unmasked column without it. With it, a view's columns are traced through the view's
//! definition, and masked whole when that cannot be read.
//!
//! Each target has one [`MysqlCatalog`] per listener ([`Catalogs`] hands them out to its masked
//! sessions), which opens a metadata connection of its own on the first lookup (logged in like a
//! session's upstream connection, with the target's service credentials) and keeps it for later
//! ones. Answers are cached; entries expire after [`REFRESH`] (names that match nothing after
//! [`NEGATIVE_TTL`]), and [`Catalog::invalidate`] drops them all: a session that ran DDL through
//! the gateway invalidates the catalog every session of the target shares. DDL run around the
//! gateway is seen when the entries expire. Any failure drops the connection and fails the lookup,
//! which the masker then treats as unresolvable (the column is masked whole); no new connection
//! is attempted within [`RECONNECT_BACKOFF`] of a failed one. Every lookup is bounded by
//! [`LOOKUP_TIMEOUT`].
//!
//! Names reach the server as hex literals, never inside quotes, so a name taken from a client's
//! statement cannot change what the query does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gateway_core::serve::stream::UpstreamStream;
use gateway_core::serve::tls::TlsConfigs;
use gateway_core::{Catalog, CatalogRelation, ErrorKind, GatewayError, RelationKind, Side, Target};
use mysql_common::constants::CapabilityFlags;
use tokio::io::AsyncWriteExt;

use crate::packet::{self, lenenc_int, PacketReader};

/// How long a lookup's answer is kept.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long "no such relation" is kept: a relation created meanwhile is found soon even without
/// an invalidation.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// The bound on one lookup, from the call to the answer (connecting and logging in included).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// No new connection is attempted within this long of a failed one.
pub const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// The bound on one packet of a lookup's answer.
const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Entries beyond which the cache is cleared: names come from client statements.
const MAX_ENTRIES: usize = 10_000;
/// `utf8mb4_general_ci`.
const COLLATION: u8 = 45;

/// One row per column of each matching relation (one row with a NULL column for a relation
/// without columns), in column order.
const SELECT: &str =
    "SELECT t.TABLE_SCHEMA, t.TABLE_NAME, t.TABLE_TYPE, v.VIEW_DEFINITION, c.COLUMN_NAME \
     FROM information_schema.TABLES t \
     LEFT JOIN information_schema.VIEWS v \
       ON v.TABLE_SCHEMA = t.TABLE_SCHEMA AND v.TABLE_NAME = t.TABLE_NAME \
     LEFT JOIN information_schema.COLUMNS c \
       ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME";

type Key = (Option<String>, String);

/// Answers by name, with when they were read.
type Cache = HashMap<Key, (Instant, Vec<Arc<CatalogRelation>>)>;

/// The metadata connection.
struct Connection {
    stream: UpstreamStream,
    reader: PacketReader,
    deprecate_eof: bool,
}

/// The catalogs of a listener's targets, one per target, made on first use.
pub(crate) struct Catalogs {
    tls: Arc<TlsConfigs>,
    /// The runtime the registry was made on (the listener's): sessions may run on other
    /// runtimes (workers), and the metadata connections live here whichever of them asks.
    runtime: Option<tokio::runtime::Handle>,
    by_target: Mutex<HashMap<String, Arc<MysqlCatalog>>>,
}

impl Catalogs {
    /// An empty registry; the catalogs' connections live on the runtime this is called on.
    pub(crate) fn new() -> Self {
        Self {
            tls: Arc::new(TlsConfigs::default()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            by_target: Mutex::new(HashMap::new()),
        }
    }

    /// The catalog of `target`. A target replaced by another of the same name (a new
    /// configuration) gets a new catalog.
    pub(crate) fn get(&self, target: &Arc<Target>) -> Arc<MysqlCatalog> {
        let mut map = self
            .by_target
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(&target.name) {
            if Arc::ptr_eq(&c.inner.target, target) {
                return Arc::clone(c);
            }
        }
        let catalog = Arc::new(MysqlCatalog {
            inner: Arc::new(Inner {
                target: Arc::clone(target),
                tls: Arc::clone(&self.tls),
                connection: tokio::sync::Mutex::new(None),
                failed_at: Mutex::new(None),
            }),
            runtime: self.runtime.clone(),
            cache: Mutex::new(HashMap::new()),
        });
        map.insert(target.name.clone(), Arc::clone(&catalog));
        catalog
    }
}

/// The catalog of one target (see the module documentation).
pub(crate) struct MysqlCatalog {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Handle>,
    cache: Mutex<Cache>,
}

/// What a lookup on the metadata connection needs (moved to the registry's runtime).
struct Inner {
    target: Arc<Target>,
    tls: Arc<TlsConfigs>,
    connection: tokio::sync::Mutex<Option<Connection>>,
    failed_at: Mutex<Option<Instant>>,
}

impl Inner {
    fn unavailable(&self, detail: impl Into<String>) -> GatewayError {
        unavailable(&self.target, detail)
    }

    async fn connect(&self) -> Result<Connection, GatewayError> {
        if let Some(at) = *self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(self.unavailable("the last connection attempt failed moments ago"));
            }
        }
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_TRANSACTIONS;
        let mut attributes = HashMap::new();
        attributes.insert("program_name".to_owned(), "portcullis catalog".to_owned());
        match crate::upstream::connect(&self.target, caps, COLLATION, attributes, &self.tls).await {
            Ok(up) => Ok(Connection {
                deprecate_eof: up
                    .capabilities
                    .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF),
                stream: up.stream,
                reader: up.reader,
            }),
            Err(e) => {
                *self
                    .failed_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Runs `sql` on the metadata connection (opened when there is none) and returns its rows.
    async fn query(&self, sql: &str) -> Result<Vec<Vec<Option<Vec<u8>>>>, GatewayError> {
        let mut slot = self.connection.lock().await;
        let mut connection = match slot.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        match run(&mut connection, sql).await {
            Ok(rows) => {
                *slot = Some(connection);
                Ok(rows)
            }
            // The connection is dropped: the next lookup opens a new one.
            Err(detail) => Err(self.unavailable(detail)),
        }
    }
}

fn unavailable(target: &Target, detail: impl Into<String>) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamUnavailable,
        Side::Upstream,
        format!("the catalog of target \"{}\" cannot be read", target.name),
    )
    .with_detail(detail)
}

impl MysqlCatalog {
    /// Runs a miss: on the registry's runtime when there is one, bounded by [`LOOKUP_TIMEOUT`].
    async fn fetch(&self, sql: String) -> Result<Vec<Vec<Option<Vec<u8>>>>, GatewayError> {
        let inner = Arc::clone(&self.inner);
        let query = async move { inner.query(&sql).await };
        let timed_out = || self.inner.unavailable("the lookup timed out");
        match &self.runtime {
            Some(runtime) => tokio::time::timeout(LOOKUP_TIMEOUT, runtime.spawn(query))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| self.inner.unavailable(format!("the lookup failed: {e}")))?,
            None => tokio::time::timeout(LOOKUP_TIMEOUT, query)
                .await
                .map_err(|_| timed_out())?,
        }
    }

    async fn lookup(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<Arc<CatalogRelation>>, GatewayError> {
        let key: Key = (schema.map(str::to_owned), name.to_owned());
        if let Some((at, hit)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            let ttl = if hit.is_empty() {
                NEGATIVE_TTL
            } else {
                REFRESH
            };
            if at.elapsed() < ttl {
                return Ok(hit.clone());
            }
        }
        let relations = match by_name_sql(schema, name) {
            Some(sql) => relations(self.fetch(sql).await?),
            // A name MySQL cannot store (outside utf8mb3) names nothing.
            None => Vec::new(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), relations.clone()));
        Ok(relations)
    }
}

#[async_trait::async_trait]
impl Catalog for MysqlCatalog {
    async fn relation_by_oid(&self, _: u32) -> Result<Option<Arc<CatalogRelation>>, GatewayError> {
        // MySQL names relations; it has no ids for them.
        Ok(None)
    }

    async fn relations_named(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<Arc<CatalogRelation>>, GatewayError> {
        self.lookup(schema, name).await
    }

    fn invalidate(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The lookup of `name` (in `schema` when given). `None` when a name is not in utf8mb3, the only
/// character set MySQL identifiers are stored in (information_schema refuses to compare others).
fn by_name_sql(schema: Option<&str>, name: &str) -> Option<String> {
    let literal = |s: &str| -> Option<String> {
        if s.chars().any(|c| u32::from(c) > 0xFFFF) {
            return None;
        }
        Some(if s.is_empty() {
            "''".to_owned()
        } else {
            format!("_utf8 X'{}'", hex::encode(s))
        })
    };
    let mut sql = format!("{SELECT} WHERE t.TABLE_NAME = {}", literal(name)?);
    if let Some(schema) = schema {
        sql.push_str(&format!(" AND t.TABLE_SCHEMA = {}", literal(schema)?));
    }
    sql.push_str(" ORDER BY t.TABLE_SCHEMA, t.TABLE_NAME, c.ORDINAL_POSITION");
    Some(sql)
}

/// Groups the lookup's rows (schema, name, type, definition, column) into relations.
fn relations(rows: Vec<Vec<Option<Vec<u8>>>>) -> Vec<Arc<CatalogRelation>> {
    let text = |v: &Option<Vec<u8>>| {
        v.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let mut out: Vec<CatalogRelation> = Vec::new();
    for row in rows {
        let [schema, name, kind, definition, column] = row.as_slice() else {
            continue;
        };
        let (Some(schema), Some(name)) = (text(schema), text(name)) else {
            continue;
        };
        let same = out
            .last()
            .is_some_and(|r| *r.schema == *schema && *r.name == *name);
        if !same {
            let kind = match text(kind).as_deref() {
                Some("VIEW") => RelationKind::View,
                Some("SEQUENCE") => RelationKind::Other,
                // BASE TABLE, SYSTEM VIEW (information_schema's own), TEMPORARY.
                _ => RelationKind::Table,
            };
            out.push(CatalogRelation {
                oid: 0,
                schema: Arc::from(schema.as_str()),
                name: Arc::from(name.as_str()),
                kind,
                columns: Vec::new(),
                definition: text(definition)
                    .filter(|d| !d.is_empty())
                    .map(|d| Arc::from(d.as_str())),
            });
        }
        if let (Some(relation), Some(column)) = (out.last_mut(), text(column)) {
            relation.columns.push(Some(Arc::from(column.as_str())));
        }
    }
    out.into_iter().map(Arc::new).collect()
}

/// Sends one COM_QUERY and reads its result set. `Err` carries what went wrong; the connection
/// must not be used again after one.
async fn run(c: &mut Connection, sql: &str) -> Result<Vec<Vec<Option<Vec<u8>>>>, String> {
    let mut command = Vec::with_capacity(sql.len() + 1);
    command.push(0x03);
    command.extend_from_slice(sql.as_bytes());
    c.stream
        .write_all(&packet::packet(0, &command))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let header = read(c).await?;
    let (columns, _) = lenenc_int(&header).ok_or("malformed result set header")?;
    for _ in 0..columns {
        read(c).await?;
    }
    if !c.deprecate_eof {
        read(c).await?;
    }
    let mut rows = Vec::new();
    loop {
        let p = read(c).await?;
        let end = p.first() == Some(&0xfe) && p.len() < 0xff_ffff;
        if end {
            return Ok(rows);
        }
        rows.push(text_row(&p, columns).ok_or("malformed row")?);
    }
}

/// The next packet's payload; an ERR packet is an `Err` with the server's message.
async fn read(c: &mut Connection) -> Result<Vec<u8>, String> {
    let p = c
        .reader
        .read(&mut c.stream, MAX_PACKET)
        .await
        .map_err(|e| e.into_gateway(Side::Upstream, "read").message)?;
    let payload = p.payload().into_owned();
    if payload.first() == Some(&0xff) {
        return Err(crate::upstream::server_error(&payload));
    }
    Ok(payload)
}

/// The values of a text row of `columns` columns.
fn text_row(payload: &[u8], columns: u64) -> Option<Vec<Option<Vec<u8>>>> {
    let mut out = Vec::new();
    let mut rest = payload;
    for _ in 0..columns {
        if *rest.first()? == 0xfb {
            out.push(None);
            rest = &rest[1..];
            continue;
        }
        let (len, used) = lenenc_int(rest)?;
        let end = used.checked_add(usize::try_from(len).ok()?)?;
        out.push(Some(rest.get(used..end)?.to_vec()));
        rest = &rest[end..];
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hex_literals() {
        let sql = by_name_sql(Some("sh'op"), "cu`st").unwrap();
        assert!(sql.contains("t.TABLE_NAME = _utf8 X'637560737"), "{sql}");
        assert!(
            sql.contains("t.TABLE_SCHEMA = _utf8 X'7368276f70'"),
            "{sql}"
        );
        assert!(!sql.contains("sh'op"));
        assert!(by_name_sql(None, "\u{1F600}").is_none());
        assert!(by_name_sql(None, "").unwrap().contains("TABLE_NAME = ''"));
    }

    #[test]
    fn rows_group_into_relations_in_column_order() {
        let v = |s: &str| Some(s.as_bytes().to_vec());
        let rows = vec![
            vec![v("shop"), v("customers"), v("BASE TABLE"), None, v("id")],
            vec![v("shop"), v("customers"), v("BASE TABLE"), None, v("email")],
            vec![v("shop"), v("v"), v("VIEW"), v("select 1 AS `x`"), v("x")],
            vec![v("shop"), v("empty"), v("VIEW"), v(""), None],
        ];
        let r = relations(rows);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].kind, RelationKind::Table);
        assert_eq!(
            r[0].live_columns().map(|c| &**c).collect::<Vec<_>>(),
            ["id", "email"]
        );
        assert_eq!(r[1].kind, RelationKind::View);
        assert_eq!(r[1].definition.as_deref(), Some("select 1 AS `x`"));
        // A view whose definition the account may not read has none.
        assert_eq!(r[2].definition, None);
        assert!(r[2].columns.is_empty());
    }
}
