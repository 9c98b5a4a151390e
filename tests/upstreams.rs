//! Upstream pools: requests spread over targets, a refusing target cools down, an
//! idempotent request whose connection failed is retried once on another target
//! (a POST is not), a body over the route's limit gets 413, and https upstreams
//! with a private CA.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::net::TcpListener;

fn route(prefix: &str, upstreams: &[String], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "\n[[routes]]\nprefix = \"{prefix}\"\nupstream = [{}]\nstrip_prefix = true\nauth = false\n{extra}\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn requests_spread_over_targets() {
    let (a, b) = (spawn_upstream().await, spawn_upstream().await);
    let text = config_text(a.addr)
        + &route(
            "/pool/",
            &[format!("http://{}", a.addr), format!("http://{}", b.addr)],
            "",
        );
    let gw = spawn_gateway_with(&text).await;
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/pool/x"), &[]).await.status, 200);
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 5);
    assert_eq!(b.hits.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_refusing_target_is_retried_elsewhere_then_skipped() {
    let live = spawn_upstream().await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    // The dead target first: the first request goes there.
    let text = config_text(live.addr)
        + &route(
            "/pool/",
            &[dead, format!("http://{}", live.addr)],
            "cooldown = \"30s\"",
        );
    let gw = spawn_gateway_with(&text).await;
    // GET is idempotent: its failed connection is retried on the live target.
    for _ in 0..6 {
        assert_eq!(get(&gw.url("/pool/x"), &[]).await.status, 200);
    }
    assert_eq!(live.hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn a_post_is_not_retried() {
    let live = spawn_upstream().await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let text = config_text(live.addr)
        + &route(
            "/pool/",
            &[dead, format!("http://{}", live.addr)],
            "cooldown = \"30s\"",
        );
    let gw = spawn_gateway_with(&text).await;
    let r = request(Method::POST, &gw.url("/pool/x"), &[], "payload").await;
    assert_eq!(
        r.status, 502,
        "a POST whose connection failed is answered, not replayed"
    );
    assert_eq!(live.hits.load(Ordering::SeqCst), 0);
    // The dead target now cools down: the next POST goes to the live one.
    let r = request(Method::POST, &gw.url("/pool/x"), &[], "payload").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413() {
    let up = spawn_upstream().await;
    let text = config_text(up.addr)
        + &route(
            "/small/",
            &[format!("http://{}", up.addr)],
            "max_body_bytes = 1024",
        );
    let gw = spawn_gateway_with(&text).await;
    // Declared too large: refused before anything goes upstream.
    let r = request(Method::POST, &gw.url("/small/x"), &[], &"x".repeat(2000)).await;
    assert_eq!(r.status, 413);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    // Within the limit: forwarded.
    let r = request(Method::POST, &gw.url("/small/x"), &[], &"x".repeat(1000)).await;
    assert_eq!(r.seen().0["body_len"], 1000);
    // Chunked (no declared length) and too large: cut off, 413.
    let body = "x".repeat(5000);
    let req = format!(
        "POST /small/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let answer = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
}

/// An HTTPS upstream with a certificate from a private CA; returns its address and
/// the CA's PEM.
async fn spawn_https_upstream() -> (SocketAddr, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!("secure {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca_cert.pem())
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let (addr, ca_pem) = spawn_https_upstream().await;
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    let text = config_text(up.addr)
        + &route(
            "/secure/",
            &[format!("https://{addr}")],
            "ca_file = \"ca.pem\"",
        )
        + &route("/untrusted/", &[format!("https://{addr}")], "");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    let config = whosthat::Config::load(&path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(whosthat::serve(Arc::new(config), listener, async move {
        let _ = stopped.await;
    }));
    let r = get(&format!("http://{gw_addr}/secure/hello"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "secure /hello");
    // The same upstream without its CA is not trusted: 502.
    assert_eq!(
        get(&format!("http://{gw_addr}/untrusted/hello"), &[])
            .await
            .status,
        502
    );
}

#[test]
fn a_missing_ca_file_is_refused_with_file_line_and_key() {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nprefix = \"/s/\"\nupstream = \"https://127.0.0.1:1\"\nca_file = \"missing.pem\"\n";
    let e = whosthat::Config::parse(text, std::path::Path::new("t.toml")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("routes[0].ca_file"));
    assert_eq!(e.line, Some(7));
}
