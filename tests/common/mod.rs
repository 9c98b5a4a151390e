//! Test helpers: a real upstream and a real gateway, each on 127.0.0.1 port 0,
//! and small HTTP clients (pooled hyper, HTTP/2 prior knowledge, raw TCP).
#![allow(dead_code)]

pub mod binary;
pub mod redis_server;
pub mod reloading;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Passwords and secrets of the test config.
pub const ALICE_PW: &str = "alice-pw";
pub const BOB_PW: &str = "bob-pw";
pub const SVC_SECRET: &str = "svc-secret";

/// An argon2id PHC string for `pw` at the smallest cost argon2 allows (8 KiB, one
/// pass): a check takes microseconds. The gateway verifies passwords on threads at
/// the lowest CPU priority, where a check at the recommended cost (19 MiB, two
/// passes) can wait tens of seconds for spare CPU on a busy machine. These tests
/// are about the protocol, not argon2's cost; the few that are use
/// [`expensive_hash`].
pub fn hash(pw: &str) -> String {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
    let params = Params::new(Params::MIN_M_COST, 1, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(pw.as_bytes())
        .expect("argon2 with an OS salt")
        .to_string()
}

/// A PHC string at the gateway's own (recommended) cost, as `whosthat hash-password`
/// makes it: for tests about what argon2's cost does to the gateway.
pub fn expensive_hash(pw: &str) -> String {
    whosthat::password::hash_password(pw.as_bytes())
}

struct Hashes {
    alice: String,
    bob: String,
    svc: String,
}

fn hashes() -> &'static Hashes {
    static H: OnceLock<Hashes> = OnceLock::new();
    H.get_or_init(|| Hashes {
        alice: hash(ALICE_PW),
        bob: hash(BOB_PW),
        svc: hash(SVC_SECRET),
    })
}

/// The standard test config, with every route pointing at `upstream`.
///
/// - users: alice (read, write, admin), bob (read)
/// - clients: `cli` public (password, refresh_token; read write admin),
///   `svc` confidential (client_credentials, password, refresh_token; read write; may introspect),
///   `a:b` confidential with the svc secret (password), `cc-only` public (refresh_token only),
///   `spa` public (authorization_code, refresh_token; read write admin; redirect URIs
///   `http://127.0.0.1:8765/callback` and `http://127.0.0.1:8765/other?x=1`),
///   `web` confidential with the svc secret (authorization_code, refresh_token; read;
///   redirect URI `http://127.0.0.1:8765/web`)
/// - routes: `/api/` read (strip), `/admin/` admin (no strip), `/public/` no auth (strip),
///   `/slow/` 1s timeout, `/down/` to a closed port, `/get-only/` GET only,
///   `/based/` to `{upstream}/v1`
pub fn config_text(upstream: SocketAddr) -> String {
    let h = hashes();
    let down = closed_port();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
header_read_timeout = "2s"
shutdown_timeout = "5s"

[oauth]
issuer = "http://127.0.0.1:8080"
access_token_ttl = "1h"
refresh_token_ttl = "1d"
default_client = "cli"

[[users]]
name = "alice"
password_hash = "{alice}"
scopes = ["read", "write", "admin"]

[[users]]
name = "bob"
password_hash = "{bob}"
scopes = ["read"]

[[clients]]
id = "cli"
grants = ["password", "refresh_token"]
scopes = ["read", "write", "admin"]

[[clients]]
id = "svc"
secret_hash = "{svc}"
grants = ["client_credentials", "password", "refresh_token"]
scopes = ["read", "write"]
introspect = true

[[clients]]
id = "a:b"
secret_hash = "{svc}"
grants = ["password"]
scopes = ["read"]

[[clients]]
id = "cc-only"
grants = ["refresh_token"]
scopes = ["read"]

[[clients]]
id = "spa"
grants = ["authorization_code", "refresh_token"]
scopes = ["read", "write", "admin"]
redirect_uris = ["http://127.0.0.1:8765/callback", "http://127.0.0.1:8765/other?x=1"]

[[clients]]
id = "web"
secret_hash = "{svc}"
grants = ["authorization_code", "refresh_token"]
scopes = ["read"]
redirect_uris = ["http://127.0.0.1:8765/web"]

[[routes]]
prefix = "/api/"
upstream = "http://{upstream}"
strip_prefix = true
scopes = ["read"]

[[routes]]
prefix = "/admin/"
upstream = "http://{upstream}"
scopes = ["admin"]

[[routes]]
prefix = "/public/"
upstream = "http://{upstream}"
strip_prefix = true
auth = false

[[routes]]
prefix = "/slow/"
upstream = "http://{upstream}"
timeout = "1s"

[[routes]]
prefix = "/down/"
upstream = "http://127.0.0.1:{down}"

[[routes]]
prefix = "/get-only/"
upstream = "http://{upstream}"
methods = ["GET"]

[[routes]]
prefix = "/based/"
upstream = "http://{upstream}/v1"
strip_prefix = true
"#,
        alice = h.alice,
        bob = h.bob,
        svc = h.svc,
    )
}

/// `text` (the standard config) with `user`'s password hash replaced by `phc`.
pub fn with_password_hash(text: &str, user: &str, phc: &str) -> String {
    let start = format!("name = \"{user}\"\npassword_hash = \"");
    let at = text.find(&start).expect("the user is in the config") + start.len();
    let end = at + text[at..].find('"').expect("a closing quote");
    format!("{}{phc}{}", &text[..at], &text[end..])
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ------------------------------------------------------------------ upstream

/// A real HTTP upstream. It answers:
/// - a path ending in `/slow`: after 10 minutes, i.e. never within a test (the
///   gateway's route timeout answers first);
/// - a path ending in `/echo`: the request body, streamed back;
/// - a path ending in `/big`: 8 MiB in 64 KiB chunks;
/// - anything else: JSON `{method, uri, version, headers: [[name, value]...], body_len}`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

pub async fn spawn_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    upstream_answer(req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, hits }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn upstream_answer(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    if path.ends_with("/echo") {
        return Ok(Response::new(req.into_body().boxed()));
    }
    if path.ends_with("/big") {
        return Ok(Response::new(BodyExt::boxed(Chunks(BIG_CHUNKS))));
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "method": method, "uri": uri, "version": version, "headers": headers, "body_len": body.len(),
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(json.to_string()))
            .map_err(|n| match n {})
            .boxed(),
    );
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // Hop-by-hop headers the gateway must not pass back.
    resp.headers_mut()
        .insert("connection", "x-upstream-hop".parse().unwrap());
    resp.headers_mut()
        .insert("x-upstream-hop", "1".parse().unwrap());
    Ok(resp)
}

pub const BIG_CHUNKS: usize = 128;
pub const CHUNK: usize = 64 * 1024;

/// A body of `n` chunks of `CHUNK` bytes, produced as it is read.
struct Chunks(usize);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(vec![
            b'x';
            CHUNK
        ])))))
    }
}

/// The upstream's JSON description of what it received.
pub struct Seen(pub Value);

impl Seen {
    pub fn uri(&self) -> &str {
        self.0["uri"].as_str().unwrap()
    }
    pub fn method(&self) -> &str {
        self.0["method"].as_str().unwrap()
    }
    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|p| p[1].as_str().unwrap().to_string())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
    pub fn header_names(&self) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_str().unwrap().to_string())
            .collect()
    }
}

// ------------------------------------------------------------------- gateway

pub struct Gateway {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Gateway {
    /// A gateway running elsewhere (e.g. the real binary): nothing to stop.
    pub fn detached(addr: SocketAddr) -> Gateway {
        Gateway {
            addr,
            shutdown: None,
            task: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Asks the gateway to stop (as SIGTERM would) and returns its task.
    pub fn stop(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("gateway already stopped")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn spawn_gateway_with(text: &str) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn_gateway_on(listener, text)
}

/// A gateway whose `oauth.issuer` is its own address (the test config's
/// `http://127.0.0.1:8080` replaced), for clients that fetch metadata from the
/// issuer's URL (OpenID Connect discovery).
pub async fn spawn_gateway_as_issuer(text: &str) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("issuer = \"http://{}\"", listener.local_addr().unwrap());
    let text = text.replacen("issuer = \"http://127.0.0.1:8080\"", &issuer, 1);
    spawn_gateway_on(listener, &text)
}

fn spawn_gateway_on(listener: TcpListener, text: &str) -> Gateway {
    let config =
        whosthat::Config::parse(text, Path::new("test.toml")).expect("test config is valid");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(whosthat::serve(Arc::new(config), listener, async move {
        let _ = rx.await;
    }));
    Gateway {
        addr,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// The HTTP client third-party OAuth / OpenID Connect libraries send with here:
/// redirects never followed (their documentation: SSRF), no proxy, so only
/// 127.0.0.1 is reached. `oauth2` and `openidconnect` share this reqwest.
pub fn library_http_client() -> oauth2::reqwest::Client {
    oauth2::reqwest::ClientBuilder::new()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// An upstream and a gateway with the standard test config.
pub async fn setup() -> (Gateway, Upstream) {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config_text(up.addr)).await;
    (gw, up)
}

// -------------------------------------------------------------------- client

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn seen(&self) -> Seen {
        assert_eq!(
            self.status,
            200,
            "upstream reply expected: {}",
            String::from_utf8_lossy(&self.body)
        );
        Seen(self.json())
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static C: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    C.get_or_init(|| {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http()
    })
}

/// A hang guard, never a performance limit: on a busy machine a request that
/// includes a password check can wait many seconds for CPU.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(HANG_GUARD, client().request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A request with extra headers.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers, "").await
}

pub async fn get_with_token(url: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    get(url, &[("authorization", &auth)]).await
}

/// POST a form body to the token endpoint with extra headers.
pub async fn token_request(gw: &Gateway, form: &str, headers: &[(&str, &str)]) -> Reply {
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    request(Method::POST, &gw.url("/auth/access_token"), &h, form).await
}

pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// [`token_request`], retried as a client would while the gateway answers 503
/// `temporarily_unavailable` with `Retry-After` (its password checks run at idle
/// priority, and on a busy machine one can wait past the pool's bound); up to
/// the hang guard. For tests of what a login yields, not of the pool's bound.
pub async fn token_request_patient(gw: &Gateway, form: &str, headers: &[(&str, &str)]) -> Reply {
    let start = Instant::now();
    loop {
        let r = token_request(gw, form, headers).await;
        let busy = r.status == 503
            && r.header("retry-after").is_some()
            && r.text().contains("temporarily_unavailable");
        if !busy || start.elapsed() > HANG_GUARD {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A password-grant token response for `user`, asserting success (a 503 from a
/// busy password pool is retried, see [`token_request_patient`]).
pub async fn login(gw: &Gateway, user: &str, password: &str, scope: &str) -> Value {
    let form = format!("grant_type=password&username={user}&password={password}&scope={scope}");
    let r = token_request_patient(gw, &form, &[]).await;
    assert_eq!(r.status, 200, "login failed: {}", r.text());
    r.json()
}

pub async fn access_token(gw: &Gateway, user: &str, password: &str) -> String {
    login(gw, user, password, "").await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An HTTP/2 (prior knowledge, cleartext) GET.
pub async fn get_h2(url: &str, headers: &[(&str, &str)]) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut b = Request::builder().uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("h2 request");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Writes `bytes` on a fresh TCP connection and reads until the peer closes.
/// Returns what came back. Every caller's request ends the connection (it says
/// `Connection: close` or is refused), so the guard only stops a hang.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(HANG_GUARD, s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the connection was still open after {HANG_GUARD:?}; got {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in a raw HTTP/1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"))
}

/// One HTTP/1.1 response read off a raw connection: status, head, body.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads exactly one response (Content-Length, chunked, or none for a 101),
/// leaving anything after it in `buf`.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> RawResponse {
    tokio::time::timeout(HANG_GUARD, async {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            fill(s, buf).await;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let status = raw_status(&head);
        let mut r = RawResponse {
            status,
            head,
            body: Vec::new(),
        };
        if status == 101 {
            return r;
        }
        if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().unwrap();
            while buf.len() < n {
                fill(s, buf).await;
            }
            r.body = buf.drain(..n).collect();
        } else if r
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    fill(s, buf).await;
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                        .unwrap();
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    fill(s, buf).await;
                }
                r.body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        r
    })
    .await
    .expect("a response within the hang guard")
}

pub async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await.unwrap();
    assert!(
        n > 0,
        "connection closed mid-response: {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

// ------------------------------------------------------------ admin listener

/// A gateway with `text` plus an admin listener, and the admin listener's
/// address once it accepts connections (however long that takes).
pub async fn spawn_gateway_with_admin(text: &str) -> (Gateway, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let listen = "listen = \"127.0.0.1:0\"";
    assert!(text.contains(listen), "no public listener to add to");
    let text = text.replacen(listen, &format!("{listen}\nadmin_listen = \"{admin}\""), 1);
    let gw = spawn_gateway_with(&text).await;
    wait_for_admin(admin).await;
    (gw, admin)
}

/// Waits until the admin listener at `admin` answers `/readyz`.
pub async fn wait_for_admin(admin: SocketAddr) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if TcpStream::connect(admin).await.is_ok()
            && get(&format!("http://{admin}/readyz"), &[]).await.status == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the admin listener never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `whosthat_connections_parked_total` on the admin listener at `admin`.
pub async fn connections_parked(admin: SocketAddr) -> u64 {
    let m = get(&format!("http://{admin}/metrics"), &[]).await.text();
    m.lines()
        .find_map(|l| l.strip_prefix("whosthat_connections_parked_total "))
        .unwrap_or_else(|| panic!("no parked-connection counter in:\n{m}"))
        .parse()
        .unwrap()
}

/// Waits (up to the hang guard) until at least `n` connections have parked:
/// a quiet HTTP/1 connection parks a fraction of a second after its last
/// byte, or much later on a busy machine.
pub async fn wait_parked(admin: SocketAddr, n: u64) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let parked = connections_parked(admin).await;
        if parked >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{parked} connections parked within {HANG_GUARD:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
