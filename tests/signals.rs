//! The real binary: SIGHUP reloads the config while serving, `--log-format json`
//! writes one JSON object per line with no credential in any of them, SIGTERM
//! stops it with exit 0.

mod common;
use common::binary::Running;
use common::*;

use std::time::{Duration, Instant};

#[tokio::test]
async fn sighup_reloads_json_logs_sigterm_stops() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let base = config_text(up.addr);
    std::fs::write(&path, &base).unwrap();
    let mut gw = Running::start(&path);

    let serving = gw.wait_for_line("whosthat is serving").await;
    let addr = serving["listen"].as_str().unwrap().to_string();
    let url = |p: &str| format!("http://{addr}{p}");
    let login = request(
        http::Method::POST,
        &url("/auth/access_token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("grant_type=password&username=alice&password={ALICE_PW}"),
    )
    .await;
    assert_eq!(login.status, 200);
    let token = login.json()["access_token"].as_str().unwrap().to_string();
    let refresh = login.json()["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(get_with_token(&url("/new/x"), &token).await.status, 404);

    // Add a route and reload with SIGHUP.
    let new_route = format!(
        "\n[[routes]]\nprefix = \"/new/\"\nupstream = \"http://{}\"\nstrip_prefix = true\n",
        up.addr
    );
    std::fs::write(&path, format!("{base}{new_route}")).unwrap();
    gw.signal(libc::SIGHUP);
    gw.wait_for_line("config reloaded").await;
    let r = get_with_token(&url("/new/x"), &token).await;
    assert_eq!(r.seen().uri(), "/x");

    // A broken file on SIGHUP is refused and logged; the gateway goes on.
    std::fs::write(&path, "[server]\nlisten = 7\n").unwrap();
    gw.signal(libc::SIGHUP);
    gw.wait_for_line("reload refused").await;
    assert_eq!(get_with_token(&url("/new/x"), &token).await.status, 200);

    gw.signal(libc::SIGTERM);
    let deadline = Instant::now() + HANG_GUARD;
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");

    // The child has exited: the reader ends at its stdout's end, at once.
    let lines = gw.all_lines();
    let access: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .filter(|v| v["target"] == "whosthat::access")
        .collect();
    assert!(access.len() >= 4, "an access line per request");
    let first = &access[0];
    for field in ["method", "path", "route", "status", "user", "latency_us"] {
        assert!(!first[field].is_null(), "{field} in {first}");
    }
    let all = lines.join("\n");
    for secret in [token.as_str(), refresh.as_str(), ALICE_PW] {
        assert!(!all.contains(secret), "a credential reached the log");
    }
}
