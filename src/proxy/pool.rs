//! Keep-alive connections to upstreams, one pool per worker thread.
//!
//! Each worker runs its own single-threaded runtime (see `server::serve`), so a
//! pool lives in a thread-local and is reached without a lock or an atomic: a
//! connection is checked out by the request that uses it and put back, on the
//! same thread, once the upstream's response body has been read to its end.
//! The connections are hyper's HTTP/1.1 client connections, each driven by a
//! task of the worker that opened it. What the legacy pooled client did per
//! request and this does not: a mutex per checkout and return, hashing the
//! target's authority byte by byte (SipHash), a task spawned per response to
//! put the connection back, and a Host header formatted per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{ClientKey, client_key, tls_for};
use crate::error::{Body, BoxError};
use crate::routes::{Route, Upstream};

/// Settings groups kept per thread at most: reloads leave groups for configs
/// no longer in force.
pub(super) const MAX_CLIENTS: usize = 64;
/// Idle connections kept per target and thread (the rest are closed).
const MAX_IDLE_PER_HOST: usize = 1024;
/// How often idle connections are looked at: one idle through
/// [`IDLE_SWEEPS`] sweeps is closed, so after 40 to 60 s without use.
const SWEEP_EVERY: Duration = Duration::from_secs(20);
const IDLE_SWEEPS: u64 = 3;

type Hasher = foldhash::fast::RandomState;

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::new(Pools::default());
}

#[derive(Default)]
struct Pools {
    /// Per connect settings: timeout, TLS config, scheme.
    clients: HashMap<ClientKey, Client, Hasher>,
    /// Sweeps done on this thread; an idle connection records the one it was put back in.
    generation: u64,
    /// Whether this thread's runtime runs the sweep task.
    sweeping: bool,
}

/// The targets reached with one set of connect settings.
struct Client {
    connect_timeout: Duration,
    /// `None` for plain HTTP.
    tls: Option<TlsConnector>,
    /// For a route's own TLS config: once no route holds it, the group goes.
    owner: Option<Weak<rustls::ClientConfig>>,
    /// Keyed by the target's authority as written in the config.
    hosts: HashMap<Arc<str>, Host, Hasher>,
}

struct Host {
    /// The key it is under, for leases to come back to.
    name: Arc<str>,
    /// `Host` for every request to the target (RFC 9110 section 7.2): its
    /// authority, without the scheme's default port.
    header: HeaderValue,
    /// Most recently used last: checked out from the back, so the warmest first.
    idle: Vec<Idle>,
}

struct Idle {
    sender: SendRequest<Body>,
    generation: u64,
}

/// Why an exchange failed.
pub(super) enum SendError {
    /// No connection could be made: the request never reached the upstream.
    Connect(BoxError),
    /// The exchange on an established connection failed.
    Request(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Request(e) => write!(f, "{e}"),
        }
    }
}

impl Pools {
    /// The group for `key`, made on first use (bounded by [`MAX_CLIENTS`]).
    fn client(&mut self, key: ClientKey, route: &Route, upstream: &Upstream) -> &mut Client {
        if !self.clients.contains_key(&key) && self.clients.len() >= MAX_CLIENTS {
            // Groups of TLS configs no route holds any more first; then all.
            self.clients
                .retain(|_, c| c.owner.as_ref().is_none_or(|w| w.strong_count() > 0));
            if self.clients.len() >= MAX_CLIENTS {
                self.clients.clear();
            }
        }
        self.clients.entry(key).or_insert_with(|| {
            let tls = tls_for(route, upstream);
            Client {
                connect_timeout: route.connect_timeout,
                tls: tls.map(|t| {
                    // HTTP/1.1 is what is spoken upstream: say so in ALPN.
                    let mut config = (*t.config).clone();
                    config.alpn_protocols = vec![b"http/1.1".to_vec()];
                    TlsConnector::from(Arc::new(config))
                }),
                owner: route
                    .tls
                    .as_ref()
                    .filter(|_| tls.is_some())
                    .map(|t| Arc::downgrade(&t.config)),
                hosts: HashMap::default(),
            }
        })
    }

    /// Closes connections idle through [`IDLE_SWEEPS`] sweeps or closed by the
    /// upstream, and forgets targets and groups left with none.
    fn sweep(&mut self) {
        self.generation += 1;
        let now = self.generation;
        for client in self.clients.values_mut() {
            for host in client.hosts.values_mut() {
                host.idle
                    .retain(|i| now - i.generation < IDLE_SWEEPS && !i.sender.is_closed());
            }
            client.hosts.retain(|_, h| !h.idle.is_empty());
        }
        self.clients.retain(|_, c| {
            !c.hosts.is_empty() || c.owner.as_ref().is_some_and(|w| w.strong_count() > 0)
        });
    }
}

impl Client {
    fn host(&mut self, upstream: &Upstream) -> &mut Host {
        let authority = upstream.authority.as_str();
        if !self.hosts.contains_key(authority) {
            let name: Arc<str> = Arc::from(authority);
            let host = Host {
                name: name.clone(),
                header: host_header(upstream),
                idle: Vec::new(),
            };
            self.hosts.insert(name, host);
        }
        self.hosts.get_mut(authority).expect("inserted above")
    }
}

fn host_header(upstream: &Upstream) -> HeaderValue {
    let a = &upstream.authority;
    let default = if upstream.scheme == Scheme::HTTPS {
        443
    } else {
        80
    };
    let value = match a.port_u16() {
        Some(p) if p != default => a.as_str(),
        _ => a.host(),
    };
    HeaderValue::from_str(value).expect("an authority is a valid header value")
}

/// A checked-out connection and where it goes back.
struct Lease {
    sender: SendRequest<Body>,
    key: ClientKey,
    host: Arc<str>,
    /// Opened for this request (not taken from the pool).
    fresh: bool,
}

/// What opening a connection needs, taken out of the pool before awaiting.
struct Dial {
    connect_timeout: Duration,
    tls: Option<TlsConnector>,
    key: ClientKey,
    host: Arc<str>,
}

/// A connection to `upstream` from this thread's pool, or what is needed to
/// open one; and the `Host` value for the request.
fn checkout(route: &Route, upstream: &Upstream) -> (Result<Lease, Dial>, HeaderValue) {
    let key = client_key(route, upstream);
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        if !pools.sweeping {
            pools.sweeping = true;
            tokio::spawn(sweep_loop());
        }
        let client = pools.client(key, route, upstream);
        let (connect_timeout, tls) = (client.connect_timeout, client.tls.clone());
        let host = client.host(upstream);
        while let Some(idle) = host.idle.pop() {
            if !idle.sender.is_closed() {
                let lease = Lease {
                    sender: idle.sender,
                    key,
                    host: host.name.clone(),
                    fresh: false,
                };
                return (Ok(lease), host.header.clone());
            }
        }
        let dial = Dial {
            connect_timeout,
            tls,
            key,
            host: host.name.clone(),
        };
        (Err(dial), host.header.clone())
    })
}

/// Puts a connection whose exchange is over back into this thread's pool.
fn give_back(key: ClientKey, host: &str, sender: SendRequest<Body>) {
    // `try_with`: a body may be dropped while the thread exits.
    let _ = POOLS.try_with(|pools| {
        let Ok(mut pools) = pools.try_borrow_mut() else {
            return;
        };
        let generation = pools.generation;
        let Some(host) = pools
            .clients
            .get_mut(&key)
            .and_then(|c| c.hosts.get_mut(host))
        else {
            return;
        };
        if host.idle.len() < MAX_IDLE_PER_HOST {
            host.idle.push(Idle { sender, generation });
        }
    });
}

/// Sweeps this thread's pool until its runtime stops.
async fn sweep_loop() {
    /// Lets the next runtime on this thread start its own sweep.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = POOLS.try_with(|p| {
                if let Ok(mut p) = p.try_borrow_mut() {
                    p.sweeping = false;
                }
            });
        }
    }
    let _running = Running;
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        POOLS.with(|p| p.borrow_mut().sweep());
    }
}

/// Opens a connection (TCP, TLS for https) and starts its hyper task.
async fn dial(upstream: &Upstream, how: Dial) -> Result<SendRequest<Body>, BoxError> {
    let host = upstream.authority.host();
    let port = upstream
        .authority
        .port_u16()
        .unwrap_or(if upstream.scheme == Scheme::HTTPS {
            443
        } else {
            80
        });
    // An IPv6 literal comes bracketed in an authority.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::time::timeout(how.connect_timeout, async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port)).await?.collect();
        connect_any(&addrs, how.connect_timeout).await
    })
    .await
    .map_err(|_| format!("no connection within {:?}", how.connect_timeout))??;
    stream.set_nodelay(true)?;
    let builder = hyper::client::conn::http1::Builder::new();
    match how.tls {
        None => {
            let (sender, conn) = builder.handshake(TokioIo::new(stream)).await?;
            tokio::spawn(drive(conn.with_upgrades()));
            Ok(sender)
        }
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(bare.to_string())?;
            let stream = tokio::time::timeout(how.connect_timeout, tls.connect(name, stream))
                .await
                .map_err(|_| "no TLS handshake within the connect timeout")??;
            let (sender, conn) = builder.handshake(TokioIo::new(stream)).await?;
            tokio::spawn(drive(conn.with_upgrades()));
            Ok(sender)
        }
    }
}

/// Each address in turn, each given an equal share of `timeout` (as a
/// resolver's several answers are tried).
async fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> std::io::Result<TcpStream> {
    let share = timeout / addrs.len().max(1) as u32;
    let mut last =
        std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolved to nothing");
    for addr in addrs {
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(last)
}

async fn drive<F: std::future::Future<Output = hyper::Result<()>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "upstream connection ended with an error");
    }
}

/// A ready connection to `upstream`: an idle one of this thread, or a new one.
async fn lease(route: &Route, upstream: &Upstream) -> Result<(Lease, HeaderValue), SendError> {
    loop {
        let (taken, host_header) = checkout(route, upstream);
        match taken {
            Ok(mut lease) => {
                // Put back as its last response ended: the connection's task
                // may not have seen that end yet.
                if lease.sender.is_ready() || lease.sender.ready().await.is_ok() {
                    return Ok((lease, host_header));
                }
            }
            Err(how) => {
                let (key, host) = (how.key, how.host.clone());
                // Boxed: a connect (TCP, TLS handshake) is rare next to reuse,
                // and its future would otherwise make every request's bigger.
                let sender = Box::pin(dial(upstream, how))
                    .await
                    .map_err(SendError::Connect)?;
                let lease = Lease {
                    sender,
                    key,
                    host,
                    fresh: true,
                };
                return Ok((lease, host_header));
            }
        }
    }
}

/// Sends `req` (origin-form target, RFC 9112 section 3.2.1) to `upstream` on a
/// kept-alive connection of this thread, or a new one. A request a pooled
/// connection could not take (the upstream had closed it) goes on the next.
pub(super) async fn send(
    route: &Route,
    upstream: &Upstream,
    mut req: Request<Body>,
) -> Result<Response<Body>, SendError> {
    loop {
        let (mut lease, host) = lease(route, upstream).await?;
        req.headers_mut().insert(HOST, host);
        match lease.sender.try_send_request(req).await {
            Ok(resp) => return Ok(with_lease(resp, lease)),
            Err(mut e) => match e.take_message() {
                Some(back) if !lease.fresh => req = back,
                _ => return Err(SendError::Request(e.into_error())),
            },
        }
    }
}

fn with_lease(resp: Response<Incoming>, lease: Lease) -> Response<Body> {
    use http_body_util::BodyExt;
    // A 101's connection becomes the tunnel: never pooled again.
    let lease = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(lease);
    resp.map(|inner| PooledBody { inner, lease }.boxed())
}

/// An upstream response body that gives its connection back to the pool once
/// read to the end. Dropped before that, the connection is dropped too (hyper
/// then closes it: the rest of the body is still on the way).
struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    fn release_if_done(&mut self) {
        if hyper::body::Body::is_end_stream(&self.inner)
            && let Some(lease) = self.lease.take()
        {
            give_back(lease.key, &lease.host, lease.sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release_if_done(),
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            // A broken exchange: the connection is not reused.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            Poll::Pending => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, Content-Length: 0) is never polled.
        self.release_if_done();
    }
}

#[cfg(test)]
pub(super) fn groups_on_this_thread() -> usize {
    POOLS.with(|p| p.borrow().clients.len())
}

#[cfg(test)]
pub(super) fn has_group(key: ClientKey) -> bool {
    POOLS.with(|p| p.borrow().clients.contains_key(&key))
}

#[cfg(test)]
pub(super) fn make_group(route: &Route, upstream: &Upstream) {
    let key = client_key(route, upstream);
    POOLS.with(|p| {
        p.borrow_mut().client(key, route, upstream);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_idle(key: ClientKey, authority: &str) -> Option<usize> {
        POOLS.with(|p| {
            let p = p.borrow();
            p.clients
                .get(&key)
                .map(|c| c.hosts.get(authority).map_or(0, |h| h.idle.len()))
        })
    }

    /// A real client connection to `upstream` over an in-memory pipe, given
    /// back to this thread's pool: its route, target, key, and the
    /// connection's task with the pipe's other end (dropping them closes it).
    async fn pooled(upstream: &str) -> (Route, Upstream, ClientKey, impl Drop) {
        let route = Route {
            prefix: "/".into(),
            connect_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let up = Upstream::parse(upstream).unwrap();
        let key = client_key(&route, &up);
        let (near, far) = tokio::io::duplex(64);
        let (sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(near))
            .await
            .unwrap();
        let host = POOLS.with(|p| {
            p.borrow_mut()
                .client(key, &route, &up)
                .host(&up)
                .name
                .clone()
        });
        give_back(key, &host, sender);
        (route, up, key, Box::new((conn, far)))
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_three_sweeps() {
        let (_route, _up, key, conn) = pooled("http://127.0.0.1:9").await;
        assert_eq!(count_idle(key, "127.0.0.1:9"), Some(1));
        POOLS.with(|p| p.borrow_mut().sweep());
        POOLS.with(|p| p.borrow_mut().sweep());
        assert_eq!(
            count_idle(key, "127.0.0.1:9"),
            Some(1),
            "idle 20-40 s: kept"
        );
        POOLS.with(|p| p.borrow_mut().sweep());
        // Closed, and the target and its settings group forgotten.
        assert_eq!(count_idle(key, "127.0.0.1:9"), None);
        drop(conn);
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_checked_out() {
        let (route, up, key, conn) = pooled("http://127.0.0.1:10").await;
        // The connection's task is gone: its sender is closed.
        drop(conn);
        let (taken, host) = checkout(&route, &up);
        assert!(taken.is_err(), "a closed connection was checked out");
        assert_eq!(host, "127.0.0.1:10");
        assert_eq!(count_idle(key, "127.0.0.1:10"), Some(0));
    }

    #[test]
    fn host_header_leaves_out_the_default_port() {
        let h = |u: &str| host_header(&Upstream::parse(u).unwrap());
        assert_eq!(h("http://api.internal"), "api.internal");
        assert_eq!(h("http://api.internal:80"), "api.internal");
        assert_eq!(h("http://api.internal:8080"), "api.internal:8080");
        assert_eq!(h("https://api.internal:443/base"), "api.internal");
        assert_eq!(h("https://[::1]:8443"), "[::1]:8443");
    }
}
