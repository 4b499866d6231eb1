//! The gateway's live sessions, as an administrator sees them: listed, and ended one at a time.
//!
//! Every admitted [`Session`](crate::Session) is registered here until it is dropped. Ending a
//! session raises its end signal: a statement waiting for approval stops waiting, and the
//! protocol crate, which watches [`Session::terminated`](crate::Session::terminated), closes
//! the connection with an error naming the reason (PostgreSQL's 57P01, as
//! `pg_terminate_backend` does), after the statement in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::approval::HoldHandle;
use crate::session::SessionContext;

/// One live session, for listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSession {
    /// Session id (as in audit records).
    pub id: String,
    /// Who.
    pub subject: String,
    /// Groups at login.
    pub groups: Vec<String>,
    /// The target.
    pub target: String,
    /// `postgres` or `mysql`.
    pub protocol: &'static str,
    /// The client's address.
    pub client: String,
    /// The application the client announced.
    pub application: Option<String>,
    /// `read-only` or `read-write`.
    pub access: &'static str,
    /// When it was admitted (RFC 3339).
    pub opened: String,
    /// Statements judged so far.
    pub statements: u64,
    /// Whether a statement of it waits for an approval now.
    pub waiting_for_approval: bool,
    /// Whether an administrator ended it (it closes after its statement in flight).
    pub ending: bool,
}

/// Raised when an administrator ends a session. Its one waiter is the session's relay, which
/// polls it on every wake: a flag and an [`atomic_waker::AtomicWaker`] cost a load and a
/// compare-and-swap there, where a `Notify` would take its mutex each time.
#[derive(Default)]
pub(crate) struct EndSignal {
    ended: AtomicBool,
    reason: Mutex<Option<String>>,
    waker: atomic_waker::AtomicWaker,
}

impl EndSignal {
    pub(crate) fn raise(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.ended.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(crate) fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves once raised (one waiter at a time).
    pub(crate) async fn raised(&self) {
        std::future::poll_fn(|cx| {
            if self.is_raised() {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.is_raised() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

struct Entry {
    ctx: Arc<SessionContext>,
    opened: SystemTime,
    statements: Arc<AtomicU64>,
    holds: HoldHandle,
    end: Arc<EndSignal>,
}

impl Entry {
    fn view(&self) -> LiveSession {
        LiveSession {
            id: self.ctx.id.to_string(),
            subject: self.ctx.identity.subject.clone(),
            groups: self.ctx.identity.groups.clone(),
            target: self.ctx.target.name.clone(),
            protocol: self.ctx.client.protocol,
            client: self.ctx.client.addr.to_string(),
            application: self.ctx.client.application.clone(),
            access: crate::session::access_name(self.ctx.access),
            opened: crate::audit::Rfc3339Micros::new(self.opened)
                .as_str()
                .to_owned(),
            statements: self.statements.load(Ordering::Relaxed),
            waiting_for_approval: self.holds.is_waiting(),
            ending: self.end.is_raised(),
        }
    }
}

/// The registry of one gateway.
#[derive(Default)]
pub(crate) struct LiveSessions {
    map: Mutex<HashMap<Arc<str>, Entry>>,
}

impl LiveSessions {
    pub(crate) fn register(
        self: &Arc<Self>,
        ctx: &Arc<SessionContext>,
        statements: &Arc<AtomicU64>,
        holds: &HoldHandle,
        end: &Arc<EndSignal>,
    ) -> LiveGuard {
        self.lock().insert(
            Arc::clone(&ctx.id),
            Entry {
                ctx: Arc::clone(ctx),
                opened: SystemTime::now(),
                statements: Arc::clone(statements),
                holds: holds.clone(),
                end: Arc::clone(end),
            },
        );
        LiveGuard {
            registry: Arc::clone(self),
            id: Arc::clone(&ctx.id),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn list(&self) -> Vec<LiveSession> {
        let mut list: Vec<LiveSession> = self.lock().values().map(Entry::view).collect();
        list.sort_by(|a, b| a.opened.cmp(&b.opened).then(a.id.cmp(&b.id)));
        list
    }

    /// Ends session `id`; `None` when there is no such session.
    pub(crate) fn end(&self, id: &str, reason: String) -> Option<LiveSession> {
        let map = self.lock();
        let e = map.get(id)?;
        e.end.raise(reason);
        // A statement waiting for approval stops waiting (its request stays open).
        e.holds.shut_down();
        Some(e.view())
    }
}

/// Removes its session from the registry when the session is dropped.
pub(crate) struct LiveGuard {
    registry: Arc<LiveSessions>,
    id: Arc<str>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}
