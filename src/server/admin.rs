//! The admin listener (`server.admin_listen`): `/healthz` (the process runs),
//! `/readyz` (the token store answers) and `/metrics` (Prometheus). Never
//! served on the public listener.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::drain::{serve_listener, until_stopped};
use crate::gateway::AppState;

/// Admin connections open at once: scrapers and probes need a handful, and a
/// flood of them must not take file descriptors from the public listener
/// without bound. Beyond it a new connection is closed at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 16;

/// A request head must arrive within this on the admin listener.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints on `listener` until `stop`, then drains like the
/// public listener (for at most `server.shutdown_timeout`).
pub async fn serve_admin(listener: TcpListener, state: Arc<AppState>, stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let grace_state = state.clone();
    serve_listener(
        listener,
        "admin",
        stop,
        move || grace_state.config().server.shutdown_timeout,
        |peer| {
            let slot = slots.clone().try_acquire_owned().ok();
            if slot.is_none() {
                tracing::warn!(
                    peer = %peer.ip(),
                    max = ADMIN_MAX_CONNECTIONS,
                    "admin connections at their cap; closing a new one"
                );
            }
            slot
        },
        |stream, _, stop| serve_admin_connection(stream, state.clone(), stop),
    )
    .await;
}

async fn serve_admin_connection(
    stream: TcpStream,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let resp = answer(&state, req.uri().path());
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT);
    let conn = b.serve_connection(TokioIo::new(stream), service);
    let _ = until_stopped!(Box::pin(conn), stop);
}

/// The answer to `GET path` on the admin listener.
fn answer(state: &AppState, path: &str) -> hyper::Response<crate::error::Body> {
    if path == "/metrics" {
        let (access, refresh) = state.store.token_counts();
        let config = state.config();
        let labels = config.routes.labels(&config.oauth.token_path);
        let text = state.metrics.render(labels, access, refresh);
        let mut resp = hyper::Response::new(crate::error::full(text));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        );
        return resp;
    }
    let (status, body) = match path {
        "/healthz" => (200, "ok\n"),
        "/readyz" if state.store.is_ready() => (200, "ready\n"),
        "/readyz" => (503, "token store unavailable\n"),
        _ => (404, "not found\n"),
    };
    let mut resp = hyper::Response::new(crate::error::full(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    resp
}
