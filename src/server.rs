//! Listeners and connections: HTTP/1.1 and HTTP/2 cleartext, header timeouts and
//! size limits, connection limits (in all and per client address), graceful
//! shutdown.

pub mod framing;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::{Config, ServerConfig};
use crate::gateway::{AppState, ConnInfo, handle};
use crate::store::now_secs;
use framing::{FramingNotes, HeadScan, LengthWithTransferEncoding};

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
    // Everything that can fail at start comes before the saved tokens are taken
    // in (and their file removed): a start that fails loses nothing.
    let admin = match config.server.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (server.admin_listen): {e}"),
            )
        })?),
        None => None,
    };
    if let Some(file) = &config.store.state_file {
        check_state_dir(file);
    }
    if let crate::config::StoreBackend::Redis(topology) = &config.store.backend {
        check_redis(topology).await;
    }
    if let (Some(memory), Some(file)) = (&state.memory, &config.store.state_file) {
        match memory.load(file, &state.grants, &config) {
            // No file (a first start, or after a crash): nothing to say.
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(tokens = n, file = %file.display(), "tokens saved at the last shutdown loaded")
            }
            Err(e) => {
                tracing::warn!(error = %e, file = %file.display(), "saved tokens could not be loaded")
            }
        }
    }
    let mut housekeeping = state.store.spawn_background();
    housekeeping.extend(state.authorizer.spawn_background());
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
    if let Some(admin) = admin {
        tracing::info!(listen = %admin.local_addr()?, "admin endpoints (/healthz, /readyz, /metrics)");
        housekeeping.push(tokio::spawn(admin_loop(admin, state.clone())));
    }
    let workers = config.server.workers;
    tracing::info!(listen = %listener.local_addr()?, workers, "whosthat is serving");
    let listener = listener.into_std()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut finished = Vec::with_capacity(workers);
    // One budget of connections for every worker, in all and per address.
    let slots = Arc::new(Semaphore::new(config.server.max_connections));
    let per_ip = Arc::new(PerIp::default());
    for n in 0..workers {
        let listener = listener.try_clone()?;
        let (state, stop, slots) = (state.clone(), stop_rx.clone(), slots.clone());
        let per_ip = per_ip.clone();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("whosthat-worker-{n}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(worker(listener, state, stop, slots, per_ip)));
                let _ = done_tx.send(result);
            })?;
        finished.push(done_rx);
    }
    drop(listener);
    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing requests in flight");
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

/// Says at start, not at the first shutdown, that the state file cannot be
/// written where it is configured (its directory is missing or not writable).
fn check_state_dir(file: &Path) {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let writable = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map(|c| {
            // SAFETY: access(2) with a valid NUL-terminated path; no memory is written.
            unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
        })
        .unwrap_or(false);
    if !dir.is_dir() || !writable {
        tracing::error!(
            dir = %dir.display(),
            "store.state_file: the directory is missing or not writable; live tokens cannot be saved at shutdown"
        );
    }
}

/// Says at start when Redis does not answer (URLs without their passwords):
/// until it does, requests that need the store get 503. A Sentinel primary is
/// found by the store's own follower; here the sentinels are asked.
async fn check_redis(topology: &crate::store::RedisTopology) {
    let ping = async {
        let client = redis::Client::open(topology.urls()[0].as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => tracing::info!(store = %topology, "Redis answers"),
        Ok(Err(e)) => {
            tracing::warn!(store = %topology, error = %e, "Redis is unreachable at start: requests that need the token store get 503 until it answers")
        }
        Err(_) => {
            tracing::warn!(store = %topology, "Redis did not answer within 2 s at start: requests that need the token store get 503 until it answers")
        }
    }
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

/// Open connections per client address (`server.max_connections_per_ip`), so
/// that one address cannot take every slot of `server.max_connections`.
#[derive(Default)]
struct PerIp(DashMap<IpAddr, usize>);

/// One open connection of an address; the count goes down when it is dropped.
struct PerIpSlot {
    map: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    /// What counts as one client address ([`crate::proxy::client_block`]).
    fn key(ip: IpAddr) -> IpAddr {
        crate::proxy::client_block(ip)
    }

    /// A slot for one more connection from `ip`, if it holds fewer than `max`.
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpSlot> {
        let key = PerIp::key(ip);
        let mut open = self.0.entry(key).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        drop(open);
        Some(PerIpSlot {
            map: self.clone(),
            key,
        })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        if let Some(mut open) = self.map.0.get_mut(&self.key) {
            *open = open.saturating_sub(1);
        }
        // Only addresses with open connections stay in the map.
        self.map.0.remove_if(&self.key, |_, open| *open == 0);
    }
}

/// Whether `ip` is one of `server.trusted_proxies`: a load balancer carries
/// many clients, so it is not held to the per-address cap.
fn is_trusted_proxy(config: &Config, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    config
        .server
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&ip))
}

/// An address at `server.max_connections_per_ip`.
struct AtCap;

/// The per-address slot for a new connection from `ip`; `Ok(None)` for a
/// trusted proxy, which has none.
fn per_ip_slot(
    state: &AppState,
    per_ip: &Arc<PerIp>,
    ip: IpAddr,
) -> Result<Option<PerIpSlot>, AtCap> {
    let config = state.config();
    if is_trusted_proxy(&config, ip) {
        return Ok(None);
    }
    per_ip
        .try_acquire(ip, config.server.max_connections_per_ip)
        .map(Some)
        .ok_or(AtCap)
}

/// One worker: accepts and serves connections until told to stop, then drains.
async fn worker(
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
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
                // Over a limit: closed at once, before any byte is read.
                let Ok(ip_slot) = per_ip_slot(&state, &per_ip, peer.ip()) else {
                    tracing::warn!(
                        peer = %peer.ip(),
                        "server.max_connections_per_ip reached; closing a new connection"
                    );
                    drop(stream);
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!("server.max_connections reached; closing a new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = serve_connection(stream, peer, state.clone(), for_connections.clone());
                connections.spawn(async move {
                    conn.await;
                    drop((slot, ip_slot));
                });
            }
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    tracing::debug!(
        connections = connections.len(),
        "worker draining its connections"
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

/// A future that completes on SIGTERM or SIGINT; the handlers are installed
/// by this call.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed now, not when first polled: a SIGTERM that comes right after
    // start must stop the gateway gracefully, not kill it.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

async fn sweep_loop(state: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.limiter.sweep();
        state.authorizer.sweep();
        // Rate-limit buckets that are full again hold nothing worth keeping.
        for route in state.config().routes.routes() {
            if let Some(limit) = &route.rate_limit {
                limit.sweep();
            }
        }
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
                    stream,
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
                tls_stream,
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
    io: I,
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
    // HTTP/1: the byte stream is read along to catch what hyper hides (see
    // `framing`); requests are numbered to match what it found.
    let notes = (!h2).then(|| Arc::new(FramingNotes::default()));
    let scan_notes = notes.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let state = state.clone();
        let conn = conn.clone();
        if notes.as_ref().is_some_and(|n| n.next_request_conflicts()) {
            req.extensions_mut().insert(LengthWithTransferEncoding);
        }
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
        let mut conn = Box::pin(b.serve_connection(TokioIo::new(io), service));
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
            .max_headers(framing::MAX_HEADERS);
        // with_upgrades: WebSocket and other upgraded connections are tunnelled.
        let notes = scan_notes.unwrap_or_default();
        let io = TokioIo::new(HeadScan::new(io, server.max_header_bytes.max(8192), notes));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_counted_and_given_back() {
        let per_ip = Arc::new(PerIp::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| per_ip.try_acquire(a, 3).unwrap()).collect();
        assert!(per_ip.try_acquire(a, 3).is_none());
        // Another address is not affected.
        let other = per_ip.try_acquire(b, 3).unwrap();
        drop(held.into_iter().next());
        let again = per_ip.try_acquire(a, 3);
        assert!(again.is_some());
        drop((again, other));
        assert_eq!(per_ip.0.get(&b).map(|n| *n), None);
    }

    #[test]
    fn per_ip_map_empties_when_all_close() {
        let per_ip = Arc::new(PerIp::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..5).map(|_| per_ip.try_acquire(ip, 5).unwrap()).collect();
        drop(slots);
        assert!(per_ip.0.is_empty());
    }

    #[test]
    fn one_address_is_an_ipv4_address_or_an_ipv6_64() {
        let key = |s: &str| PerIp::key(s.parse().unwrap());
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }
}
