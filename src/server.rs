//! Listeners and connections: HTTP/1.1 and HTTP/2 cleartext, header timeouts and
//! size limits, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::config::{Config, ServerConfig};
use crate::gateway::{AppState, ConnInfo, handle};
use crate::store::now_secs;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs the gateway on `listener` until `shutdown` completes, then lets requests
/// in flight finish for at most `server.shutdown_timeout`.
///
/// Connections are served by `server.workers` threads, each with its own
/// single-threaded runtime and its own upstream connection pool, all accepting
/// from the same socket (as nginx's workers do): a request and its upstream
/// exchange stay on one thread, with no cross-thread wake-ups on the hot path.
/// The caller's runtime keeps the housekeeping (expiry sweeps).
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let state = Arc::new(AppState::new(config.clone()).map_err(io::Error::other)?);
    let mut housekeeping = state.store.spawn_background();
    housekeeping.push(tokio::spawn(sweep_loop(
        state.clone(),
        config.store.sweep_interval,
    )));
    if let Some(addr) = config.server.admin_listen {
        let admin = TcpListener::bind(addr).await?;
        tracing::info!(listen = %addr, "admin endpoints (/healthz, /readyz)");
        housekeeping.push(tokio::spawn(admin_loop(admin, state.clone())));
    }
    let workers = config.server.workers;
    tracing::info!(listen = %listener.local_addr()?, workers, "whosthat is serving");
    let listener = listener.into_std()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut finished = Vec::with_capacity(workers);
    for n in 0..workers {
        let listener = listener.try_clone()?;
        let (state, stop) = (state.clone(), stop_rx.clone());
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("whosthat-worker-{n}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(worker(listener, state, stop)));
                let _ = done_tx.send(result);
            })?;
        finished.push(done_rx);
    }
    drop(listener);
    shutdown.await;
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for done in finished {
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(io::Error::other("a worker thread died")),
        }
    }
    for task in housekeeping {
        task.abort();
    }
    result
}

/// The admin listener: `/healthz` (the process runs) and `/readyz` (the token
/// store answers). Never served on the public listener.
async fn admin_loop(listener: TcpListener, state: Arc<AppState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let ready = state.store.is_ready();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/healthz" => (200, "ok\n"),
                        "/readyz" if ready => (200, "ready\n"),
                        "/readyz" => (503, "token store unavailable\n"),
                        _ => (404, "not found\n"),
                    };
                    let mut resp = hyper::Response::new(crate::error::full(body));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = b.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// One worker: accepts and serves connections until told to stop, then drains.
async fn worker(
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let watcher = graceful.watcher();
                tokio::spawn(serve_connection(stream, peer, state, watcher));
            }
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: no new connections, finishing requests in flight"
    );
    let grace = state.config.server.shutdown_timeout;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(after = ?grace, "shutdown grace period over; dropping remaining connections");
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn sweep_loop(state: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.limiter.sweep();
        state.authorizer.sweep();
        match state.store.sweep_expired(now_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(swept = n, "expired tokens removed"),
            Err(e) => tracing::warn!(error = %e, "token sweep failed"),
        }
        // After the tokens: grants only they held go too.
        state.grants.sweep();
    }
}

/// Peeks at the first bytes to tell HTTP/2 prior knowledge from HTTP/1, within
/// the header timeout. `None`: the peer went away or was too slow.
async fn is_http2(stream: &TcpStream, limit: Duration) -> Option<bool> {
    let detect = async {
        let mut buf = [0u8; 24];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if !H2_PREFACE.starts_with(&buf[..n]) {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // A prefix of the preface: wait for the rest to arrive.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(limit, detect).await.ok().flatten()
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    watcher: Watcher,
) {
    let server: &ServerConfig = &state.config.server;
    let Some(h2) = is_http2(&stream, server.header_read_timeout).await else {
        return;
    };
    let svc_state = state.clone();
    let conn = Arc::new(ConnInfo::new(peer));
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        let conn = conn.clone();
        // Boxed: the connection holds a slot for this future even while idle, and
        // the request pipeline's future is several KiB; boxed, an idle
        // keep-alive connection holds a pointer instead.
        let fut = Box::pin(handle(state, req, conn));
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let io = TokioIo::new(stream);
    let result = if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_header_list_size(server.max_header_bytes as u32)
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        watcher.watch(b.serve_connection(io, service)).await
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            .max_buf_size(server.max_header_bytes.max(8192))
            .max_headers(100);
        watcher.watch(b.serve_connection(io, service)).await
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}
