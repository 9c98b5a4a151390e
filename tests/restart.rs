//! The memory store across restarts: a graceful stop saves live tokens and the next
//! start loads them (no one is logged out); the file is deleted once loaded, so a
//! crash can never bring back a token revoked after that start.

mod common;
use common::*;

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Instance {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Instance {
    fn url(&self, p: &str) -> String {
        format!("http://{}{}", self.addr, p)
    }

    async fn stop_gracefully(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }

    /// Like a crash: no drain, no save.
    fn kill(self) {
        self.task.abort();
    }
}

async fn start(config_path: &Path) -> Instance {
    let config = whosthat::Config::load(config_path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(whosthat::serve(Arc::new(config), listener, async move {
        let _ = rx.await;
    }));
    Instance {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn login_at(i: &Instance) -> serde_json::Value {
    let r = request(
        http::Method::POST,
        &i.url("/auth/access_token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("grant_type=password&username=alice&password={ALICE_PW}"),
    )
    .await;
    assert_eq!(r.status, 200);
    r.json()
}

async fn revoke_at(i: &Instance, token: &str) {
    let r = request(
        http::Method::POST,
        &i.url("/auth/revoke"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={token}&client_id=cli"),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_planned_restart_logs_no_one_out_and_a_crash_revives_nothing() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let state = dir.path().join("tokens.json");
    std::fs::write(
        &path,
        format!(
            "{}\n[store]\nstate_file = \"tokens.json\"\n",
            config_text(up.addr)
        ),
    )
    .unwrap();

    let first = start(&path).await;
    let kept = login_at(&first).await;
    let revoked = login_at(&first).await;
    let kept_at = kept["access_token"].as_str().unwrap().to_string();
    let revoked_at = revoked["access_token"].as_str().unwrap().to_string();
    revoke_at(&first, &revoked_at).await;
    first.stop_gracefully().await;
    let saved = std::fs::read_to_string(&state).expect("saved on a graceful stop");
    assert!(
        !saved.contains(&kept_at),
        "the file holds hashes, not tokens"
    );

    // Planned restart: the live token and its refresh token still work; the
    // revoked one stays revoked.
    let second = start(&path).await;
    // Loaded (then deleted) when the gateway's task starts, whenever that is.
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while state.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the file is deleted once loaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        get_with_token(&second.url("/api/x"), &kept_at).await.status,
        200
    );
    assert_eq!(
        get_with_token(&second.url("/api/x"), &revoked_at)
            .await
            .status,
        401
    );
    let refreshed = request(
        http::Method::POST,
        &second.url("/auth/access_token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!(
            "grant_type=refresh_token&refresh_token={}",
            kept["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());

    // Revoke it, then crash: nothing is saved, and nothing old can come back.
    revoke_at(&second, &kept_at).await;
    second.kill();
    let third = start(&path).await;
    assert_eq!(
        get_with_token(&third.url("/api/x"), &kept_at).await.status,
        401
    );
    third.stop_gracefully().await;
}

#[test]
fn state_file_is_refused_with_redis() {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1/0\"\nstate_file = \"x.json\"\n";
    let e = whosthat::Config::parse(text, Path::new("t.toml")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("store.state_file"));
}
