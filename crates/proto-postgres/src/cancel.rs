//! CancelRequest routing: the gateway issues its own BackendKeyData to clients and maps it to the
//! upstream connection's keys, so clients never learn upstream process ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where a cancel for one client connection must go.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Upstream host.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Upstream process id.
    pub pid: i32,
    /// Upstream secret key.
    pub secret: i32,
    /// The session's wait for an approval: a cancel while a statement waits ends the wait (the
    /// statement never reached the upstream, so there is nothing to cancel there).
    pub holds: gateway_core::HoldHandle,
}

/// The live key map of one listener.
#[derive(Debug, Default, Clone)]
pub struct CancelRegistry {
    keys: Arc<Mutex<HashMap<(i32, i32), CancelTarget>>>,
}

/// Removes its keys from the registry when the connection ends.
pub struct Registration {
    registry: CancelRegistry,
    key: (i32, i32),
}

impl CancelRegistry {
    /// Issues fresh gateway keys for `target` and registers them.
    pub fn register(&self, target: CancelTarget) -> Registration {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let key = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(v) = keys.entry(key) {
                v.insert(target);
                return Registration {
                    registry: self.clone(),
                    key,
                };
            }
        }
    }

    /// Forwards a client's CancelRequest upstream when its keys are known. Unknown keys are
    /// ignored, as PostgreSQL does, so that keys cannot be probed.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.get(&(pid, secret)).cloned()
        };
        let Some(t) = target else {
            tracing::debug!("cancel request with unknown keys ignored");
            return;
        };
        if t.holds.cancel() {
            tracing::debug!("cancel request ended a wait for approval");
            return;
        }
        let packet = crate::startup::encode_cancel(t.pid, t.secret);
        match TcpStream::connect((t.host.as_str(), t.port)).await {
            Ok(mut s) => {
                if let Err(e) = s.write_all(&packet).await {
                    tracing::warn!(error = %e, "could not forward cancel request upstream");
                }
                let _ = s.shutdown().await;
            }
            Err(e) => tracing::warn!(error = %e, "could not connect upstream to cancel"),
        }
    }
}

impl Registration {
    /// The keys to send the client in BackendKeyData.
    pub fn keys(&self) -> (i32, i32) {
        self.key
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut keys = self.registry.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.key);
    }
}
