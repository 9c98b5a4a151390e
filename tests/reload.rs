//! Hot reload: a reload request re-reads the file; a valid one swaps routes, users
//! and clients at once with no failed request, an invalid one changes nothing, and
//! a user removed from the file loses its live tokens immediately.

mod common;
use common::reloading::*;
mod jose_helpers;
use common::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

async fn login_at(g: &Reloading, user: &str, pw: &str) -> String {
    let r = request(
        http::Method::POST,
        &g.url("/auth/access_token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("grant_type=password&username={user}&password={pw}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let up = spawn_upstream().await;
    let base = config_text(up.addr);
    let g = Arc::new(start(&base).await);
    let token = login_at(&g, "alice", ALICE_PW).await;

    // A load loop: 4 clients for as long as the reloads take (the hang guard aside).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (g, token, stop, ok, failed) = (
            g.clone(),
            token.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + HANG_GUARD;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = get_with_token(&g.url("/api/x"), &token).await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed during reload: {} {}", r.status, r.text());
                }
            }
        }));
    }
    // 20 reloads, each changing the file (a new route appears and disappears), with
    // at least 6 requests answered after each: requests and reloads interleave
    // however fast the machine is.
    let extra = "\n[[routes]]\nprefix = \"/extra/\"\nupstream = \"http://127.0.0.1:1\"\n";
    let answered = || ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
    for n in 0..20 {
        let text = if n % 2 == 0 {
            format!("{base}{extra}")
        } else {
            base.clone()
        };
        let before = answered();
        g.reload_with(&text).await;
        let deadline = Instant::now() + HANG_GUARD;
        while answered() < before + 6 {
            assert!(Instant::now() < deadline, "the load loop stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests during 20 reloads, {failed} failed");
    assert!(ok > 100, "the load loop ran ({ok} requests)");
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn a_valid_reload_swaps_routes_and_keeps_live_tokens() {
    let up = spawn_upstream().await;
    let base = config_text(up.addr);
    let g = start(&base).await;
    let token = login_at(&g, "alice", ALICE_PW).await;
    assert_eq!(get_with_token(&g.url("/new/x"), &token).await.status, 404);

    let with_route = format!(
        "{base}\n[[routes]]\nprefix = \"/new/\"\nupstream = \"http://{}\"\nstrip_prefix = true\n",
        up.addr
    );
    g.reload_with(&with_route).await;
    let r = get_with_token(&g.url("/new/x"), &token).await;
    assert_eq!(r.seen().uri(), "/x");
    // The token issued before the reload still opens the old routes.
    assert_eq!(get_with_token(&g.url("/api/x"), &token).await.status, 200);
}

#[tokio::test]
async fn an_invalid_file_is_ignored() {
    let up = spawn_upstream().await;
    let base = config_text(up.addr);
    let g = start(&base).await;
    let token = login_at(&g, "alice", ALICE_PW).await;
    g.refused_reload(&format!("{base}\n[[routes]]\nprefix = \"/broken/\"\n"))
        .await;
    g.refused_reload("this is not toml").await;
    // Still the old config: routes, users and tokens as before.
    assert_eq!(get_with_token(&g.url("/api/x"), &token).await.status, 200);
    assert_eq!(
        get_with_token(&g.url("/broken/x"), &token).await.status,
        404
    );
    login_at(&g, "bob", BOB_PW).await;
}

#[tokio::test]
async fn a_removed_user_or_client_loses_its_tokens_at_once() {
    let up = spawn_upstream().await;
    let base = config_text(up.addr);
    let g = start(&base).await;
    let alice = login_at(&g, "alice", ALICE_PW).await;
    let bob = login_at(&g, "bob", BOB_PW).await;
    let svc = {
        let r = request(
            http::Method::POST,
            &g.url("/auth/access_token"),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic("svc", SVC_SECRET)),
            ],
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(r.status, 200);
        r.json()["access_token"].as_str().unwrap().to_string()
    };

    // Remove bob's [[users]] entry and the svc client.
    let start_bob = base.find("[[users]]\nname = \"bob\"").unwrap();
    let end_bob = start_bob + base[start_bob..].find("\n\n").unwrap();
    let without_bob = format!("{}{}", &base[..start_bob], &base[end_bob..]);
    let start_svc = without_bob.find("[[clients]]\nid = \"svc\"").unwrap();
    let end_svc = start_svc + without_bob[start_svc..].find("\n\n").unwrap();
    let text = format!("{}{}", &without_bob[..start_svc], &without_bob[end_svc..]);
    g.reload_with(&text).await;

    let r = get_with_token(&g.url("/api/x"), &bob).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(get_with_token(&g.url("/api/x"), &svc).await.status, 401);
    assert_eq!(get_with_token(&g.url("/api/x"), &alice).await.status, 200);
}

/// A client_credentials request for `jwt-svc` with a client assertion by `key`.
async fn assertion_login(g: &Reloading, key: &jose_helpers::Key) -> u16 {
    let a = key.assertion("jwt-svc", "http://127.0.0.1:8080", None);
    let body = format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}"
    );
    request(
        http::Method::POST,
        &g.url("/auth/access_token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &body,
    )
    .await
    .status
    .as_u16()
}

#[tokio::test]
async fn a_reload_rereads_a_clients_jwks_file() {
    let up = spawn_upstream().await;
    let (old, new) = (jose_helpers::Key::es256(), jose_helpers::Key::es256());
    let keys_dir = tempfile::tempdir().unwrap();
    let jwks = keys_dir.path().join("jwt-svc.jwks.json");
    write_atomically(&jwks, &old.jwks("k1"));
    let text = format!(
        "{}\n[[clients]]\nid = \"jwt-svc\"\njwks = \"{}\"\ngrants = [\"client_credentials\"]\nscopes = [\"read\"]\n",
        config_text(up.addr),
        jwks.display()
    );
    let g = start(&text).await;
    assert_eq!(assertion_login(&g, &old).await, 200);
    assert_eq!(assertion_login(&g, &new).await, 401);
    // The key is rotated in the file: the config text itself is unchanged.
    write_atomically(&jwks, &new.jwks("k2"));
    g.reload_with(&text).await;
    assert_eq!(assertion_login(&g, &new).await, 200);
    assert_eq!(assertion_login(&g, &old).await, 401);
    // A broken file refuses the reload: the keys in force stay.
    write_atomically(&jwks, "{\"keys\": [{\"kty\": \"oct\", \"k\": \"AAAA\"}]}");
    g.refused_reload(&text).await;
    assert_eq!(assertion_login(&g, &new).await, 200);
}

#[tokio::test]
async fn require_dpop_set_by_a_reload_refuses_the_clients_bearer_tokens() {
    let up = spawn_upstream().await;
    let base = config_text(up.addr);
    let g = start(&base).await;
    let alice = login_at(&g, "alice", ALICE_PW).await;
    assert_eq!(get_with_token(&g.url("/api/x"), &alice).await.status, 200);
    let strict = base.replacen(
        "[[clients]]\nid = \"cli\"\n",
        "[[clients]]\nid = \"cli\"\nrequire_dpop = true\n",
        1,
    );
    assert_ne!(strict, base);
    g.reload_with(&strict).await;
    let r = get_with_token(&g.url("/api/x"), &alice).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains("invalid_token"),
        "{challenge}"
    );
}

/// The `/metrics` sample starting with `line_prefix` (0 when absent).
async fn sample(admin: std::net::SocketAddr, line_prefix: &str) -> f64 {
    let text = get(&format!("http://{admin}/metrics"), &[]).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_route_kept_across_a_reload_keeps_its_metrics_series() {
    let up = spawn_upstream().await;
    let admin_port = closed_port();
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    let base = config_text(up.addr).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"{admin}\""),
    );
    let g = start(&base).await;
    let deadline = Instant::now() + HANG_GUARD;
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(Instant::now() < deadline, "no admin listener");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(get(&g.url("/public/x"), &[]).await.status, 200);
    }
    let public = "whosthat_requests_total{route=\"/public\",status=\"200\"} ";
    assert_eq!(sample(admin, public).await, 3.0);
    // A reload that changes the table (a marker route is added): /public stays.
    g.reload_with(&base).await;
    assert_eq!(get(&g.url("/public/x"), &[]).await.status, 200);
    assert_eq!(sample(admin, public).await, 4.0);
    // The added route has its own series from the start.
    let marker = "whosthat_requests_total{route=\"/reload-0\",status=\"502\"} ";
    assert!(sample(admin, marker).await >= 1.0);
    // So does a route added later, while the kept ones go on counting.
    g.reload_with(&base).await;
    assert_eq!(get(&g.url("/public/x"), &[]).await.status, 200);
    assert_eq!(sample(admin, public).await, 5.0);
}
