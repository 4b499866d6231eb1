//! The admin listener: a small HTTP server for operators and orchestrators.
//!
//! - `GET /metrics`: the gateway's [`Metrics`](gateway_core::Metrics) in the OpenMetrics text
//!   format, for Prometheus to scrape;
//! - `GET /healthz`: `200 ok` while the process serves at all (liveness);
//! - `GET /readyz`: `200 ready` while the gateway takes connections, `503 not ready` before its
//!   listeners are bound and once it is shutting down (readiness: a load balancer stops sending
//!   new clients while sessions drain).
//!
//! With `[approvals]` configured it also serves the admin API under `/api/v1` (see
//! [`api`](crate::admin_api)): every call there carries `Authorization: Bearer <JWT>`, checked
//! by the gateway's own identity rules, and the actor's groups decide what it may do.
//!
//! Configured as `[admin] listen = "127.0.0.1:9090"`; without `[admin]` no admin listener runs.
//! The three endpoints above have no authentication: bind the listener to loopback or a
//! management network.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use gateway_core::{Gateway, Metrics};
use tokio::net::TcpListener;

/// What the handlers read.
#[derive(Clone)]
struct AdminState {
    gateway: Gateway,
    ready: Arc<AtomicBool>,
}

/// A bound admin listener; [`run`](Self::run) serves it.
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    /// HTTPS when set.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Binds the admin listener for `gateway`. `/readyz` answers 200 exactly while `ready` is true:
/// the server sets it once every listener is bound and clears it when shutting down.
pub async fn bind(
    addr: SocketAddr,
    gateway: Gateway,
    ready: Arc<AtomicBool>,
    api: Option<crate::admin_api::ApiParts>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<AdminServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            gateway: gateway.clone(),
            ready,
        });
    if let Some(api) = api {
        let scheme = if tls.is_some() { "https" } else { "http" };
        api.approvals
            .set_admin_url(format!("{scheme}://{local_addr}"));
        router = router.merge(crate::admin_api::router(gateway, api));
    }
    Ok(AdminServer {
        listener,
        local_addr,
        router,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
    })
}

impl AdminServer {
    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves requests until the task is aborted. Failed accepts are retried, so this does not
    /// return on its own in practice; if it does, the reason is logged.
    pub async fn run(self) {
        if let Some(acceptor) = self.tls {
            serve_tls(self.listener, self.local_addr, self.router, acceptor).await;
            return;
        }
        let app = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(self.listener, app).await {
            tracing::error!(addr = %self.local_addr, error = %e, "the admin listener stopped");
        }
    }
}

/// HTTPS: axum's `serve` speaks plain HTTP only, so each connection is accepted here, its TLS
/// handshake bounded, and HTTP/1.1 served on it by hyper with the router (the peer's address as
/// axum's `ConnectInfo`, as `serve` provides it).
async fn serve_tls(
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(addr = %local_addr, error = %e, "admin listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin listener: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = router.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let service = hyper_util::service::TowerToHyperService::new(service);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin listener: connection ended with an error");
            }
        });
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, Metrics::CONTENT_TYPE)],
        state.gateway.metrics().encode(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
