//! TLS termination: a test CA made here (rcgen), the gateway serving HTTPS with
//! ALPN h2 and http/1.1, TLS 1.3 and 1.2, and a reload re-reading the files.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

struct Ca {
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "whosthat test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert_der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes `cert.pem` and `key.pem` for localhost / 127.0.0.1 signed by `ca`.
fn write_server_cert(ca: &Ca, dir: &Path, cn: &str) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

struct TlsGateway {
    addr: SocketAddr,
    reload: mpsc::UnboundedSender<()>,
    _stop: oneshot::Sender<()>,
    dir: tempfile::TempDir,
}

async fn start_tls(ca: &Ca, upstream: SocketAddr) -> TlsGateway {
    start_tls_with(ca, upstream, "").await
}

/// [`start_tls`] with `extra` lines in `[server]`.
async fn start_tls_with(ca: &Ca, upstream: SocketAddr, extra: &str) -> TlsGateway {
    let dir = tempfile::tempdir().unwrap();
    write_server_cert(ca, dir.path(), "first");
    // The handshake must finish within the header timeout: a long one here, as a
    // busy machine can take long over it (these tests are not about the timeout).
    let text = config_text(upstream)
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!(
                "listen = \"127.0.0.1:0\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n{extra}"
            ),
        )
        .replace(
            "header_read_timeout = \"2s\"",
            "header_read_timeout = \"10m\"",
        );
    assert!(text.contains("header_read_timeout = \"10m\""));
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = whosthat::Config::load(&path).expect("a TLS config loads");
    assert!(config.summary().contains("https 127.0.0.1:0"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reload, requests) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(whosthat::serve_with(
        Arc::new(config),
        listener,
        async move {
            let _ = stopped.await;
        },
        Some(whosthat::Reload { path, requests }),
    ));
    TlsGateway {
        addr,
        reload,
        _stop: stop,
        dir,
    }
}

fn client_config(
    ca: &Ca,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

/// Connects over TLS; returns the stream, the negotiated ALPN and the server's leaf certificate.
async fn tls_connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Option<Vec<u8>>,
    CertificateDer<'static>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
    (stream, alpn, leaf)
}

fn get(path: &str, token: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(format!("https://localhost{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap()
}

async fn token_over_http1(g: &TlsGateway, ca: &Ca) -> String {
    let (stream, _, _) = tls_connect(
        g.addr,
        client_config(ca, &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("/auth/access_token")
        .header("host", "localhost")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(Bytes::from(format!(
            "grant_type=password&username=alice&password={ALICE_PW}"
        ))))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn https_with_http2_over_alpn() {
    let ca = new_ca();
    let up = spawn_upstream().await;
    let g = start_tls(&ca, up.addr).await;
    let token = token_over_http1(&g, &ca).await;

    let (stream, alpn, _) = tls_connect(
        g.addr,
        client_config(&ca, &[b"h2", b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(get("/api/x", &token)).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen = Seen(serde_json::from_slice(&body).unwrap());
    assert_eq!(seen.uri(), "/x");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    // Without a token, the same RFC 6750 answer as over plain HTTP.
    let req = Request::builder()
        .uri("https://localhost/api/x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 401);
}

#[tokio::test]
async fn https_with_http1_and_tls12() {
    let ca = new_ca();
    let up = spawn_upstream().await;
    let g = start_tls(&ca, up.addr).await;
    let token = token_over_http1(&g, &ca).await;
    let (stream, alpn, _) = tls_connect(
        g.addr,
        client_config(&ca, &[b"http/1.1"], &[&rustls::version::TLS12]),
    )
    .await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = get("/api/x", &token);
    req.headers_mut()
        .insert("host", "localhost".parse().unwrap());
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_nothing() {
    let ca = new_ca();
    let up = spawn_upstream().await;
    let g = start_tls(&ca, up.addr).await;
    let answer = raw(g.addr, b"GET /public/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn reload_rereads_the_certificate() {
    let ca = new_ca();
    let up = spawn_upstream().await;
    let g = start_tls(&ca, up.addr).await;
    let (_, _, first) = tls_connect(
        g.addr,
        client_config(&ca, &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await;
    write_server_cert(&ca, g.dir.path(), "second");
    g.reload.send(()).unwrap();
    // The reload runs in the background: new connections get the new certificate
    // once it is done, however long that takes on a busy machine.
    let deadline = std::time::Instant::now() + HANG_GUARD;
    loop {
        let (_, _, second) = tls_connect(
            g.addr,
            client_config(&ca, &[b"http/1.1"], &[&rustls::version::TLS13]),
        )
        .await;
        if second != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new connections still get the old certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn missing_certificate_file_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let text =
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"nope.pem\", key = \"nope.key\" }\n";
    std::fs::write(&path, text).unwrap();
    let e = whosthat::Config::load(&path).unwrap_err();
    assert_eq!(e.line, Some(3));
    assert_eq!(e.key.as_deref(), Some("server.tls.cert"));
    assert!(e.to_string().contains("nope.pem"), "{e}");
}

/// A keep-alive HTTP/1.1 connection over TLS parks while quiet (its buffers
/// given back, the TLS session kept) and serves what comes next: one request,
/// then a pipelined pair.
#[tokio::test]
async fn a_parked_tls_connection_serves_what_comes_next() {
    let ca = new_ca();
    let up = spawn_upstream().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let g = start_tls_with(&ca, up.addr, &format!("admin_listen = \"{admin}\"")).await;
    wait_for_admin(admin).await;
    let (mut s, alpn, _) = tls_connect(
        g.addr,
        client_config(&ca, &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let mut buf = Vec::new();
    let req = |p: &str| format!("GET /public{p} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let uri = |r: RawResponse| {
        assert_eq!(r.status, 200, "{}", r.head);
        Seen(serde_json::from_slice(&r.body).unwrap())
            .uri()
            .to_string()
    };
    s.write_all(req("/one").as_bytes()).await.unwrap();
    assert_eq!(uri(read_response(&mut s, &mut buf).await), "/one");
    wait_parked(admin, 1).await;
    s.write_all(req("/two").as_bytes()).await.unwrap();
    assert_eq!(uri(read_response(&mut s, &mut buf).await), "/two");
    wait_parked(admin, 2).await;
    s.write_all((req("/three") + &req("/four")).as_bytes())
        .await
        .unwrap();
    assert_eq!(uri(read_response(&mut s, &mut buf).await), "/three");
    assert_eq!(uri(read_response(&mut s, &mut buf).await), "/four");
}
