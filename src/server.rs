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

use crate::config::{Config, ServerConfig};
use crate::gateway::{AppState, ConnInfo, handle};
use crate::store::now_secs;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs the gateway on `listener` until `shutdown` completes, then lets requests
/// in flight finish for at most `server.shutdown_timeout`.
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let state = Arc::new(AppState::new(config.clone()));
    let sweeper = tokio::spawn(sweep_loop(state.clone(), config.store.sweep_interval));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    tracing::info!(listen = %listener.local_addr()?, "whosthat is serving");
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
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: no new connections, finishing requests in flight"
    );
    let grace = config.server.shutdown_timeout;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(after = ?grace, "shutdown grace period over; dropping remaining connections");
    }
    sweeper.abort();
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
        async move { Ok::<_, Infallible>(handle(state, req, conn).await) }
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
