//! Listeners and connections: HTTP/1.1 and HTTP/2 cleartext, header timeouts and
//! size limits, connection limits (in all and per client address), graceful
//! shutdown.

mod admin;
mod drain;
mod park;

pub use admin::ADMIN_MAX_CONNECTIONS;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::config::{Config, ServerConfig};
use crate::gateway::{AppState, ConnInfo};
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

/// A reload request for every SIGHUP; call it within a tokio runtime with IO
/// enabled (an error otherwise).
pub fn sighup_reloads() -> io::Result<mpsc::UnboundedReceiver<()>> {
    let mut hup = install(tokio::signal::unix::SignalKind::hangup(), "SIGHUP")?;
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
    let mut new = Config::load(path).map_err(|e| e.to_string())?;
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
    // A route still there keeps its counters (and so its metrics series). The
    // table was made by this load, so nothing else holds it yet.
    if let Some(routes) = Arc::get_mut(&mut new.routes) {
        routes.keep_stats_of(&old.routes);
    }
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
    restore_tokens(&state, &config);
    let housekeeping = spawn_housekeeping(&state, reload_from);
    // Every listener serves until this turns true, then drains.
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = match admin {
        Some(admin) => {
            tracing::info!(listen = %admin.local_addr()?, "admin endpoints (/healthz, /readyz, /metrics)");
            Some(tokio::spawn(admin::serve_admin(
                admin,
                state.clone(),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let workers = config.server.workers;
    tracing::info!(listen = %listener.local_addr()?, workers, "whosthat is serving");
    let finished = start_workers(listener, &state, &stop_rx)?;
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
    if let Some(admin) = admin
        && admin.await.is_err()
    {
        tracing::error!("the admin listener's task failed");
    }
    for task in housekeeping {
        task.abort();
    }
    save_tokens(&state);
    result
}

/// Starts `server.workers` threads serving `listener` until `stop`; each
/// reports its end on the receiver returned for it.
fn start_workers(
    listener: TcpListener,
    state: &Arc<AppState>,
    stop: &watch::Receiver<bool>,
) -> io::Result<Vec<oneshot::Receiver<io::Result<()>>>> {
    let config = state.config();
    let listener = listener.into_std()?;
    let mut finished = Vec::with_capacity(config.server.workers);
    // One budget of connections for every worker, in all and per address.
    let slots = Arc::new(Semaphore::new(config.server.max_connections));
    let per_ip = Arc::new(PerIp::default());
    for n in 0..config.server.workers {
        let listener = listener.try_clone()?;
        let (state, stop, slots) = (state.clone(), stop.clone(), slots.clone());
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
    Ok(finished)
}

/// The store's background work, the expiry sweeps and the reload loop, on the
/// caller's runtime; aborted once every listener has drained.
fn spawn_housekeeping(
    state: &Arc<AppState>,
    reload_from: Option<Reload>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut housekeeping = state.store.spawn_background();
    housekeeping.extend(state.authorizer.spawn_background());
    housekeeping.push(tokio::spawn(sweep_loop(
        state.clone(),
        state.config().store.sweep_interval,
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
    housekeeping
}

/// Takes in the tokens saved at the last graceful stop (memory store with a
/// `store.state_file`).
fn restore_tokens(state: &AppState, config: &Config) {
    let (Some(memory), Some(file)) = (&state.memory, &config.store.state_file) else {
        return;
    };
    match memory.load(file, &state.grants, config) {
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

/// Drained: saves the live tokens so that a planned restart logs no one out.
fn save_tokens(state: &AppState) {
    if let (Some(memory), Some(file)) = (&state.memory, &state.config().store.state_file) {
        match memory.save(file) {
            Ok(n) => tracing::info!(tokens = n, file = %file.display(), "live tokens saved"),
            Err(e) => {
                tracing::error!(error = %e, file = %file.display(), "live tokens could not be saved")
            }
        }
    }
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
async fn check_redis(topology: &crate::config::RedisTopology) {
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

/// One worker: accepts and serves public connections (plain or TLS) until
/// told to stop, then drains them (see [`drain::serve_listener`]).
async fn worker(
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    stop: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let grace_state = state.clone();
    drain::serve_listener(
        listener,
        "public",
        stop,
        move || grace_state.config().server.shutdown_timeout,
        |peer| admit(&state, &slots, &per_ip, peer),
        |stream, peer, stop| {
            let _ = stream.set_nodelay(true);
            serve_connection(stream, peer, state.clone(), stop)
        },
    )
    .await;
    Ok(())
}

/// The slots a new public connection from `peer` takes (in all, and of its
/// address), or `None` when a limit is reached (logged).
fn admit(
    state: &AppState,
    slots: &Arc<Semaphore>,
    per_ip: &Arc<PerIp>,
    peer: SocketAddr,
) -> Option<(OwnedSemaphorePermit, Option<PerIpSlot>)> {
    let Ok(ip_slot) = per_ip_slot(state, per_ip, peer.ip()) else {
        tracing::warn!(
            peer = %peer.ip(),
            "server.max_connections_per_ip reached; closing a new connection"
        );
        return None;
    };
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        tracing::warn!("server.max_connections reached; closing a new connection");
        return None;
    };
    Some((slot, ip_slot))
}

/// A future that completes on SIGTERM or SIGINT; the handlers are installed
/// by this call, which must run within a tokio runtime with IO enabled.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::SignalKind;
    // Installed now, not when first polled: a SIGTERM that comes right after
    // start must stop the gateway gracefully, not kill it.
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// `tokio::signal::unix::signal`, its panics turned into errors: it panics
/// outside a runtime, in one without IO, and when no descriptor is left for
/// its self-pipe (EMFILE), where a caller wants an error it can report.
fn install(
    kind: tokio::signal::unix::SignalKind,
    name: &str,
) -> io::Result<tokio::signal::unix::Signal> {
    let failed = |why: &dyn std::fmt::Display| {
        io::Error::other(format!("cannot install the {name} handler: {why}"))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(failed(&"not within a tokio runtime"));
    }
    match std::panic::catch_unwind(|| tokio::signal::unix::signal(kind)) {
        Ok(Ok(signal)) => Ok(signal),
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("cannot install the {name} handler: {e}"),
        )),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the runtime cannot deliver signals".into());
            Err(failed(&why))
        }
    }
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
            if let Some(assertion) = &route.assertion {
                assertion.sweep(now_secs());
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
    // This future is what the connection's task holds for as long as the
    // connection lives: what is only needed to set it up (the TLS stream as
    // the handshake returns it, builders) lives in blocks that end before the
    // connection is served, so that it takes no room in the task meanwhile.
    match server.tls.clone() {
        None => {
            // Boxed, for as long as the probe runs: its two timers would
            // otherwise take room in the task for the connection's whole life.
            let h2 = drain::unless_stopped!(Box::pin(is_http2(&stream, limit)), stop);
            if let Some(Some(h2)) = h2 {
                serve_http(stream, h2, ConnInfo::new(peer, false), state, server, stop).await;
            }
        }
        Some(tls) => {
            let serve = {
                // The handshake must finish within the header timeout too.
                let handshake = Box::pin(tokio::time::timeout(
                    limit,
                    tokio_rustls::TlsAcceptor::from(tls).accept(stream),
                ));
                let accepted = drain::unless_stopped!(handshake, stop);
                let Some(Ok(Ok(tls_stream))) = accepted else {
                    return;
                };
                let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                serve_http(
                    tls_stream,
                    h2,
                    ConnInfo::new(peer, true),
                    state,
                    server,
                    stop,
                )
            };
            serve.await;
        }
    }
}

/// Serves HTTP/1.1 (with upgrades, parking while quiet: see [`park`]) or
/// HTTP/2 on an established connection.
///
/// Not an `async fn`: its arguments (the transport, the builders) would stay
/// in the future for the connection's whole life. The connection is built
/// here and moved into a box; the future returned holds that box, the stop
/// flag and what the connection's next states are made from.
fn serve_http<I: park::Transport>(
    io: I,
    h2: bool,
    conn: ConnInfo,
    state: Arc<AppState>,
    server: &ServerConfig,
    mut stop: watch::Receiver<bool>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let peer = conn.peer;
    let conn = Arc::new(conn);
    if h2 {
        let service = park::Public {
            state,
            conn,
            notes: None,
        };
        let served = Box::pin(http2_builder(server).serve_connection(TokioIo::new(io), service));
        // On stop: finish the requests in flight, then close (GOAWAY).
        Box::pin(async move {
            if let Err(e) = drain::until_stopped!(served, stop) {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        })
    } else {
        // The byte stream is read along to catch what hyper hides (see
        // `framing`) and to tell when the connection may park.
        let setup = park::H1Setup {
            state,
            conn,
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes,
        };
        let (served, notes) = setup.connection(io);
        Box::pin(park::serve_h1(setup, served, notes, stop))
    }
}

/// What the public listener advertises over HTTP/2.
fn http2_builder(server: &ServerConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(server.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_set_up_fails_with_an_error_not_a_panic() {
        // No runtime at all.
        let e = shutdown_signal().err().expect("an error");
        assert!(e.to_string().contains("SIGTERM"), "{e}");
        assert!(e.to_string().contains("runtime"), "{e}");
        assert!(sighup_reloads().is_err());
        // A runtime without IO, where tokio's own call panics.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let e = shutdown_signal().err().expect("an error");
            assert!(
                e.to_string()
                    .starts_with("cannot install the SIGTERM handler: "),
                "{e}"
            );
            let e = sighup_reloads().expect_err("an error");
            assert!(
                e.to_string()
                    .starts_with("cannot install the SIGHUP handler: "),
                "{e}"
            );
        });
        // And where it can work, it does.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(shutdown_signal().is_ok());
            assert!(sighup_reloads().is_ok());
        });
    }

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
