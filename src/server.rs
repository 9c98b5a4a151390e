//! Listeners and connections: HTTP/1.1 and HTTP/2 cleartext, header timeouts and
//! size limits, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

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
    serve_with(config, listener, shutdown, None).await
}

/// Where reloads come from: each message on `requests` re-reads `path`.
pub struct Reload {
    pub path: PathBuf,
    pub requests: mpsc::UnboundedReceiver<()>,
}

/// A reload request for every SIGHUP.
pub fn sighup_reloads() -> io::Result<mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Re-reads the config file. A valid one replaces the one in force at once:
/// requests in flight finish on the old one, live tokens stay valid, and a user
/// or client no longer in the file loses its tokens (they are checked against
/// the config on every use). An invalid file is logged and changes nothing.
pub fn reload(state: &AppState, path: &Path) -> Result<(), String> {
    let new = Config::load(path).map_err(|e| e.to_string())?;
    let old = state.config();
    if new.store.backend != old.store.backend {
        return Err("store.backend changed: that needs a restart".into());
    }
    let (o, n) = (&old.server, &new.server);
    if o.listen != n.listen || o.workers != n.workers || o.admin_listen != n.admin_listen {
        tracing::warn!(
            "server.listen, server.workers and server.admin_listen take effect at the next restart"
        );
    }
    if old.oauth.password_workers != new.oauth.password_workers
        || old.oauth.password_queue != new.oauth.password_queue
    {
        tracing::warn!(
            "oauth.password_workers and oauth.password_queue take effect at the next restart"
        );
    }
    tracing::info!(
        routes = new.routes.routes().len(),
        users = new.users.len(),
        clients = new.clients.len(),
        "config reloaded"
    );
    new.log_warnings();
    state.config.store(Arc::new(new));
    Ok(())
}

/// [`serve`], and reloads the config on every request from `reload`.
pub async fn serve_with(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    reload_from: Option<Reload>,
) -> io::Result<()> {
    let state = Arc::new(AppState::new(config.clone()).map_err(io::Error::other)?);
    if let (Some(memory), Some(file)) = (&state.memory, &config.store.state_file) {
        match memory.load(file, &state.grants) {
            Ok(n) => {
                tracing::info!(tokens = n, file = %file.display(), "tokens saved at the last shutdown loaded")
            }
            Err(e) => {
                tracing::warn!(error = %e, file = %file.display(), "saved tokens could not be loaded")
            }
        }
    }
    let mut housekeeping = state.store.spawn_background();
    housekeeping.push(tokio::spawn(sweep_loop(
        state.clone(),
        config.store.sweep_interval,
    )));
    if let Some(Reload { path, mut requests }) = reload_from {
        let state = state.clone();
        housekeeping.push(tokio::spawn(async move {
            while requests.recv().await.is_some() {
                if let Err(e) = reload(&state, &path) {
                    tracing::error!(error = %e, "reload refused; the config in force stays");
                }
            }
        }));
    }
    if let Some(addr) = config.server.admin_listen {
        let admin = TcpListener::bind(addr).await?;
        tracing::info!(listen = %addr, "admin endpoints (/healthz, /readyz, /metrics)");
        housekeeping.push(tokio::spawn(admin_loop(admin, state.clone())));
    }
    let workers = config.server.workers;
    tracing::info!(listen = %listener.local_addr()?, workers, "whosthat is serving");
    let listener = listener.into_std()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut finished = Vec::with_capacity(workers);
    // One budget of connections for every worker.
    let slots = Arc::new(Semaphore::new(config.server.max_connections));
    for n in 0..workers {
        let listener = listener.try_clone()?;
        let (state, stop, slots) = (state.clone(), stop_rx.clone(), slots.clone());
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("whosthat-worker-{n}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(worker(listener, state, stop, slots)));
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
    // Drained: save the live tokens so that a planned restart logs no one out.
    if let (Some(memory), Some(file)) = (&state.memory, &state.config().store.state_file) {
        match memory.save(file) {
            Ok(n) => tracing::info!(tokens = n, file = %file.display(), "live tokens saved"),
            Err(e) => {
                tracing::error!(error = %e, file = %file.display(), "live tokens could not be saved")
            }
        }
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
                let metrics = (req.uri().path() == "/metrics").then(|| {
                    let (access, refresh) = state.store.token_counts();
                    state.metrics.render(access, refresh)
                });
                async move {
                    if let Some(text) = metrics {
                        let mut resp = hyper::Response::new(crate::error::full(text));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                        );
                        return Ok::<_, Infallible>(resp);
                    }
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
    slots: Arc<Semaphore>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    // Each connection gets its own receiver, to finish gracefully on shutdown.
    let for_connections = stop.clone();
    let mut connections = JoinSet::new();
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
                // Over the limit: closed at once, before any byte is read.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!("server.max_connections reached; closing a new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = serve_connection(stream, peer, state.clone(), for_connections.clone());
                connections.spawn(async move {
                    conn.await;
                    drop(slot);
                });
            }
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "shutting down: no new connections, finishing requests in flight"
    );
    let grace = state.config().server.shutdown_timeout;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(after = ?grace, "shutdown grace period over; dropping remaining connections");
        connections.abort_all();
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
    mut stop: watch::Receiver<bool>,
) {
    let config = state.config();
    let server: &ServerConfig = &config.server;
    let limit = server.header_read_timeout;
    match server.tls.clone() {
        None => {
            let h2 = tokio::select! {
                h2 = is_http2(&stream, limit) => h2,
                _ = stop.wait_for(|stop| *stop) => None,
            };
            if let Some(h2) = h2 {
                // Boxed, here and below: a connection's task then holds only the
                // protocol and transport it uses, not room for every variant.
                Box::pin(serve_http(
                    TokioIo::new(stream),
                    h2,
                    ConnInfo::new(peer, false),
                    state,
                    server,
                    stop,
                ))
                .await;
            }
        }
        Some(tls) => {
            // The handshake must finish within the header timeout too.
            let handshake = Box::pin(tokio::time::timeout(
                limit,
                tokio_rustls::TlsAcceptor::from(tls).accept(stream),
            ));
            let accepted = tokio::select! {
                r = handshake => r.ok().and_then(Result::ok),
                _ = stop.wait_for(|stop| *stop) => None,
            };
            let Some(tls_stream) = accepted else {
                return;
            };
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Box::pin(serve_http(
                TokioIo::new(tls_stream),
                h2,
                ConnInfo::new(peer, true),
                state,
                server,
                stop,
            ))
            .await;
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on an established connection.
async fn serve_http<I>(
    io: TokioIo<I>,
    h2: bool,
    conn: ConnInfo,
    state: Arc<AppState>,
    server: &ServerConfig,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let conn = Arc::new(conn);
    let service = service_fn(move |req| {
        let state = state.clone();
        let conn = conn.clone();
        // Boxed: the connection holds a slot for this future even while idle, and
        // the request pipeline's future is several KiB; boxed, an idle
        // keep-alive connection holds a pointer instead.
        let fut = Box::pin(handle(state, req, conn));
        async move { Ok::<_, Infallible>(fut.await) }
    });
    // On shutdown: finish the request in flight, then close (graceful_shutdown).
    let result = if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_header_list_size(server.max_header_bytes as u32)
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let mut conn = Box::pin(b.serve_connection(io, service));
        let finished = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = stop.wait_for(|stop| *stop) => None,
        };
        match finished {
            Some(r) => r,
            None => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            .max_buf_size(server.max_header_bytes.max(8192))
            .max_headers(100);
        // with_upgrades: WebSocket and other upgraded connections are tunnelled.
        let mut conn = Box::pin(b.serve_connection(io, service).with_upgrades());
        let finished = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = stop.wait_for(|stop| *stop) => None,
        };
        match finished {
            Some(r) => r,
            None => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}
