//! Start-up through the real binary: nothing is lost when a start fails (the
//! saved tokens stay on disk until every listener is bound), every bind error
//! names its address and key, a Redis that does not answer and a state file
//! that cannot be written are said at start, and a stop says "shutting down"
//! once.

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_whosthat");

fn write_config(dir: &std::path::Path, extra_server: &str, extra: &str) -> std::path::PathBuf {
    let up = "127.0.0.1:9".parse().unwrap();
    let text = config_text(up).replacen(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\n{extra_server}"),
        1,
    ) + extra;
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_taken_admin_port_fails_the_start_and_keeps_the_saved_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let state = dir.path().join("tokens.json");
    let saved = b"{\"version\":1,\"access\":[],\"refresh\":[]}";
    std::fs::write(&state, saved).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = write_config(
        dir.path(),
        &format!("admin_listen = \"{addr}\"\n"),
        "\n[store]\nbackend = \"memory\"\nstate_file = \"tokens.json\"\n",
    );
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (server.admin_listen)")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&state).expect("the saved tokens are still there"),
        saved
    );
}

#[test]
fn a_taken_listen_port_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = dir.path().join("gateway.toml");
    let text = config_text("127.0.0.1:9".parse().unwrap()).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{addr}\""),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN).arg("-c").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (server.listen)")),
        "{stderr}"
    );
}

/// Runs the binary until `needle` shows in its log, then SIGTERM; returns
/// every line it wrote.
fn run_until(path: &std::path::Path, needle: &str) -> Vec<String> {
    let mut child = Command::new(BIN)
        .args(["-c"])
        .arg(path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(HANG_GUARD)
            .unwrap_or_else(|_| panic!("no line with {needle:?} in {lines:#?}"));
        let done = line.contains(needle);
        lines.push(line);
        if done {
            break;
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

#[test]
fn an_unreachable_redis_is_said_at_start_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let path = write_config(
        dir.path(),
        "",
        &format!(
            "\n[store]\nbackend = \"redis\"\nredis_url = \"redis://:hunter2-secret@127.0.0.1:{port}/0\"\n"
        ),
    );
    let lines = run_until(&path, "whosthat is serving");
    let warn = lines
        .iter()
        .find(|l| l.contains("Redis is unreachable at start") || l.contains("did not answer"))
        .unwrap_or_else(|| panic!("no start-up warning in {lines:#?}"));
    assert!(warn.contains("WARN"), "{warn}");
    assert!(warn.contains(&format!("***@127.0.0.1:{port}")), "{warn}");
    assert!(
        !lines.iter().any(|l| l.contains("hunter2-secret")),
        "the Redis password reached the log"
    );
}

#[test]
fn a_state_file_in_a_missing_directory_is_said_at_start_and_one_stop_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "workers = 2\n",
        "\n[store]\nbackend = \"memory\"\nstate_file = \"no/such/dir/tokens.json\"\n",
    );
    let lines = run_until(&path, "whosthat is serving");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("store.state_file")),
        "{lines:#?}"
    );
    let stops = lines.iter().filter(|l| l.contains("shutting down")).count();
    assert_eq!(stops, 1, "{lines:#?}");
}
