//! KILL through the gateway. Clients know the gateway's connection ids (from the greeting), and
//! every upstream connection belongs to the same service user, so a KILL forwarded as written
//! would name the wrong connection, or anyone's. The gateway keeps a registry of its sessions:
//! `KILL [QUERY | CONNECTION] <id>` is rewritten to the upstream id of the named gateway session,
//! and only for the identity that owns it on the same database server. Nothing else that the
//! policy reads as a KILL is forwarded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A refused KILL: the server's error code, SQLSTATE and message.
pub(crate) type Refusal = (u16, [u8; 5], String);

/// What the registry knows of one session.
#[derive(Debug, Clone)]
struct Entry {
    subject: Arc<str>,
    server: (String, u16),
    upstream_id: u32,
    /// The session's wait for an approval, which a KILL ends (the waiting statement never
    /// reached the server).
    holds: gateway_core::HoldHandle,
}

/// The listener's sessions by gateway connection id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<u32, Entry>>,
}

/// Removes its session from the registry when dropped.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    id: u32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut s) = self.registry.sessions.lock() {
            s.remove(&self.id);
        }
    }
}

impl Registry {
    /// Registers gateway connection `id` until the returned guard is dropped.
    pub fn register(
        self: &Arc<Self>,
        id: u32,
        subject: &str,
        server: (String, u16),
        upstream_id: u32,
        holds: gateway_core::HoldHandle,
    ) -> Registration {
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(
                id,
                Entry {
                    subject: Arc::from(subject),
                    server,
                    upstream_id,
                    holds,
                },
            );
        }
        Registration {
            registry: Arc::clone(self),
            id,
        }
    }

    /// The statement to send upstream for the client's KILL `sql`, asked by `subject` whose
    /// session is on `server`; or the error to answer with. `Ok(None)`: a KILL QUERY that ended
    /// the named session's wait for an approval, with nothing running upstream to stop (answer
    /// OK). A KILL CONNECTION also ends such a wait, and is forwarded.
    pub fn rewrite(
        &self,
        sql: &str,
        subject: &str,
        server: &(String, u16),
    ) -> Result<Option<String>, Refusal> {
        let (what, id) = parse(sql).ok_or_else(|| {
            // ER_NOT_SUPPORTED_YET
            (
                1235,
                *b"42000",
                "only KILL [QUERY | CONNECTION] <connection id>, alone and without comments, is supported through the gateway".to_owned(),
            )
        })?;
        let entry = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&id).cloned())
            .ok_or_else(|| no_such_thread(id))?;
        if &*entry.subject != subject || &entry.server != server {
            // ER_KILL_DENIED_ERROR, as the server answers a KILL of someone else's connection.
            return Err((1095, *b"HY000", format!("You are not owner of thread {id}")));
        }
        if entry.holds.cancel() && what == "QUERY" {
            return Ok(None);
        }
        Ok(Some(format!("KILL {what} {}", entry.upstream_id)))
    }
}

/// ER_NO_SUCH_THREAD, for a connection id the gateway does not know.
fn no_such_thread(id: u32) -> Refusal {
    (1094, *b"HY000", format!("Unknown thread id: {id}"))
}

/// Whether `sql` is a KILL the gateway maps, whatever the policy read it as (with no policy, texts
/// are not classified, and a client's Ctrl-C must still stop its own query, not another).
pub(crate) fn is_plain_kill(sql: &str) -> bool {
    parse(sql).is_some()
}

/// `KILL [QUERY | CONNECTION] <digits>` with any case and spacing and an optional `;`, nothing
/// else: `("QUERY" | "CONNECTION", id)`.
fn parse(sql: &str) -> Option<(&'static str, u32)> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let mut words = sql.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("kill") {
        return None;
    }
    let mut next = words.next()?;
    let what = if next.eq_ignore_ascii_case("query") {
        next = words.next()?;
        "QUERY"
    } else if next.eq_ignore_ascii_case("connection") {
        next = words.next()?;
        "CONNECTION"
    } else {
        "CONNECTION"
    };
    if words.next().is_some() || !next.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((what, next.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_plain_forms_are_read() {
        assert_eq!(parse("KILL 5"), Some(("CONNECTION", 5)));
        assert_eq!(parse("  kill  query 12 ; "), Some(("QUERY", 12)));
        assert_eq!(parse("KILL CONNECTION 7"), Some(("CONNECTION", 7)));
        for refused in [
            "KILL HARD 5",
            "KILL QUERY ID 5",
            "KILL USER root",
            "KILL /*!50000 5 */",
            "KILL 5 /* 6 */",
            "KILL -1",
            "KILL 99999999999",
            "KILL",
            "KILL QUERY",
        ] {
            assert_eq!(parse(refused), None, "{refused}");
        }
    }

    #[test]
    fn a_kill_reaches_only_the_owners_session_on_the_same_server() {
        let registry = Arc::new(Registry::default());
        let server = ("db1".to_owned(), 3306);
        let guard = registry.register(
            10,
            "alice",
            server.clone(),
            4242,
            gateway_core::HoldHandle::default(),
        );
        assert_eq!(
            registry
                .rewrite("KILL QUERY 10", "alice", &server)
                .unwrap()
                .as_deref(),
            Some("KILL QUERY 4242")
        );
        let e = registry.rewrite("KILL 10", "bob", &server).unwrap_err();
        assert_eq!(e.0, 1095, "{e:?}");
        let other = ("db2".to_owned(), 3306);
        assert!(registry.rewrite("KILL 10", "alice", &other).is_err());
        assert!(registry
            .rewrite("KILL 11", "alice", &server)
            .unwrap_err()
            .2
            .contains("Unknown thread id: 11"));
        drop(guard);
        assert!(registry.rewrite("KILL 10", "alice", &server).is_err());
    }
}
