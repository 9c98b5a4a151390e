//! The real `whosthat` binary's administration commands: `user`, `client` and
//! `route test`, on temporary copies of the shipped gateway.toml.

mod common;
use common::*;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use argon2::PasswordVerifier;

const BIN: &str = env!("CARGO_BIN_EXE_whosthat");

fn shipped_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml")).unwrap()
}

/// Comment lines of the shipped file that no user or client edit may lose (the
/// comments just above an entry go with it when it is removed).
const KEPT_COMMENTS: [&str; 5] = [
    "# whosthat demo configuration.",
    "# workers = 2                      # threads serving connections (default: one per core)",
    "# redis_url = \"redis://127.0.0.1:6379/0\"   # with backend = \"redis\" (rediss:// for TLS)",
    "# A public client (no secret_hash): what curl and scripts use.",
    "# Protected: a token with scope \"read\" is needed. /api/x goes upstream as /x.",
];

/// A copy of the shipped gateway.toml in a fresh temporary directory.
fn shipped_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, shipped_text()).unwrap();
    (dir, path)
}

/// Runs the binary on `config` with `stdin` (none: /dev/null).
fn run(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.env_remove("WHOSTHAT_CONFIG")
        .env_remove("RUST_LOG")
        .arg("-c")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        None => c.stdin(Stdio::null()).output().unwrap(),
        Some(input) => {
            c.stdin(Stdio::piped());
            let mut child = c.spawn().unwrap();
            // A refusal may come before the password is read: a broken pipe then.
            let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
            child.wait_with_output().unwrap()
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[track_caller]
fn ok(out: Output) -> Output {
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    out
}

/// Exit 1 and stderr containing `why`.
#[track_caller]
fn refused(out: Output, why: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains(why),
        "{why:?} not in:\n{}",
        show(&out)
    );
}

#[track_caller]
fn check_config_passes(config: &Path) {
    ok(run(config, &["check-config"], None));
}

#[track_caller]
fn comments_kept(config: &Path) {
    let now = std::fs::read_to_string(config).unwrap();
    for c in KEPT_COMMENTS {
        assert!(now.lines().any(|l| l == c), "comment {c:?} lost:\n{now}");
    }
}

/// No temporary file left beside the config.
#[track_caller]
fn no_leftovers(config: &Path) {
    let names: Vec<String> = std::fs::read_dir(config.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["gateway.toml"], "leftovers: {names:?}");
}

/// The entry of `[[clients]]` with `id`, as the file has it.
fn client_entry(config: &Path, id: &str) -> toml::Table {
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    doc["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"].as_str() == Some(id))
        .unwrap_or_else(|| panic!("no client {id}"))
        .as_table()
        .unwrap()
        .clone()
}

// ---------------------------------------------------------------------- user

#[test]
fn user_add_list_remove_in_place() {
    let (_dir, config) = shipped_copy();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = ok(run(
        &config,
        &["user", "add", "bob", "--scopes", "read,write"],
        Some("bob-pw\n"),
    ));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bob"), "{stderr}");
    assert!(stderr.contains("SIGHUP"), "no reload hint: {stderr}");
    assert!(!text(&out.stdout).contains("$argon2"), "{}", show(&out));
    check_config_passes(&config);
    comments_kept(&config);
    no_leftovers(&config);
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the file's permissions changed");

    // The new entry: scopes as given, a hash that verifies, the old user intact.
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let users = doc["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["name"].as_str(), Some("stefano"));
    let bob = &users[1];
    assert_eq!(bob["name"].as_str(), Some("bob"));
    assert_eq!(
        bob["scopes"].as_array().unwrap(),
        &vec![toml::Value::from("read"), toml::Value::from("write")]
    );
    let hash = argon2::PasswordHash::new(bob["password_hash"].as_str().unwrap()).unwrap();
    argon2::Argon2::default()
        .verify_password(b"bob-pw", &hash)
        .unwrap();

    // list: names and scopes, never a hash.
    let out = ok(run(&config, &["user", "list"], None));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("bob ") && l.contains("read write")),
        "{stdout}"
    );
    assert!(lines.iter().any(|l| l.starts_with("stefano ")), "{stdout}");
    assert!(!stdout.contains("argon2"), "a hash in the list: {stdout}");

    // remove: back to the shipped file, byte for byte.
    let out = ok(run(&config, &["user", "remove", "bob"], None));
    assert!(text(&out.stderr).contains("SIGHUP"), "{}", show(&out));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), shipped_text());
    check_config_passes(&config);
    no_leftovers(&config);

    // Removing the demo user takes its own comment along, and nothing else.
    ok(run(&config, &["user", "remove", "stefano"], None));
    check_config_passes(&config);
    comments_kept(&config);
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(!now.contains("stefano"), "{now}");
    let out = ok(run(&config, &["user", "list"], None));
    assert!(text(&out.stdout).trim().is_empty(), "{}", show(&out));
}

#[test]
fn user_add_refusals_leave_the_file_alone() {
    let (_dir, config) = shipped_copy();
    let before = shipped_text();
    refused(
        run(
            &config,
            &["user", "add", "stefano", "--scopes", "read"],
            Some("pw\n"),
        ),
        "already has a user \"stefano\"",
    );
    refused(
        run(&config, &["user", "remove", "nobody"], None),
        "has no user \"nobody\"",
    );
    refused(
        run(
            &config,
            &["user", "add", "x", "--scopes", "read,a\"b"],
            Some("pw\n"),
        ),
        "is not a valid scope",
    );
    refused(
        run(
            &config,
            &["user", "add", "x", "--scopes", "read"],
            Some("\n"),
        ),
        "the password is empty",
    );
    refused(
        run(
            &config,
            &["user", "add", "", "--scopes", "read"],
            Some("pw\n"),
        ),
        "not a valid user name",
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
    no_leftovers(&config);

    // A file that is not valid TOML is refused, not rewritten.
    let broken = before.replace("[[routes]]", "[[routes]");
    std::fs::write(&config, &broken).unwrap();
    refused(
        run(
            &config,
            &["user", "add", "x", "--scopes", "read"],
            Some("pw\n"),
        ),
        "not valid TOML",
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), broken);

    let missing = config.with_file_name("nope.toml");
    refused(
        run(
            &missing,
            &["user", "add", "x", "--scopes", "read"],
            Some("pw\n"),
        ),
        "nope.toml",
    );
    assert!(!missing.exists());
}

#[test]
fn concurrent_edits_all_land() {
    let (_dir, config) = shipped_copy();
    let names: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            let (config, n) = (config.clone(), n.clone());
            std::thread::spawn(move || {
                run(
                    &config,
                    &["user", "add", &n, "--scopes", "read"],
                    Some("pw\n"),
                )
            })
        })
        .collect();
    for h in handles {
        ok(h.join().unwrap());
    }
    let out = ok(run(&config, &["user", "list"], None));
    let stdout = text(&out.stdout);
    for n in &names {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{n} "))),
            "{n} lost: {stdout}"
        );
    }
    check_config_passes(&config);
    comments_kept(&config);
    no_leftovers(&config);
}

#[test]
fn a_symlinked_config_stays_a_symlink() {
    let (dir, real) = shipped_copy();
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("gw.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    ok(run(
        &link,
        &["user", "add", "bob", "--scopes", "read"],
        Some("pw\n"),
    ));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(&real)
            .unwrap()
            .contains("name = \"bob\"")
    );
    no_leftovers(&real);
    drop(dir);
}

// -------------------------------------------------------------------- client

#[test]
fn confidential_client_gets_a_secret_once() {
    let (_dir, config) = shipped_copy();
    let out = ok(run(
        &config,
        &[
            "client",
            "add",
            "svc",
            "--grants",
            "client_credentials,refresh_token",
            "--scopes",
            "read",
        ],
        None,
    ));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    // stdout: the secret alone; the warning beside it.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", show(&out));
    let secret = lines[0];
    assert!(secret.len() >= 40, "{secret:?}");
    assert!(stderr.contains("will not be shown again"), "{}", show(&out));
    assert!(!stderr.contains(secret), "the secret printed twice");
    assert!(stderr.contains("SIGHUP"), "{stderr}");

    // Only the secret's hash is stored, and it verifies.
    let file = std::fs::read_to_string(&config).unwrap();
    assert!(!file.contains(secret), "the secret is in the file");
    let svc = client_entry(&config, "svc");
    let hash = argon2::PasswordHash::new(svc["secret_hash"].as_str().unwrap()).unwrap();
    argon2::Argon2::default()
        .verify_password(secret.as_bytes(), &hash)
        .unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"not the secret", &hash)
            .is_err()
    );
    check_config_passes(&config);
    comments_kept(&config);
    no_leftovers(&config);

    // A second client gets another secret.
    let out = ok(run(
        &config,
        &["client", "add", "svc2", "--grants", "client_credentials"],
        None,
    ));
    let other = text(&out.stdout);
    assert_ne!(other.trim(), secret);

    // list: kind, grants, scopes; never a hash or a secret.
    let out = ok(run(&config, &["client", "list"], None));
    let list = text(&out.stdout);
    let line = list
        .lines()
        .find(|l| l.starts_with("svc "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("confidential"), "{line}");
    assert!(line.contains("client_credentials"), "{line}");
    assert!(line.contains("refresh_token"), "{line}");
    assert!(line.contains("read"), "{line}");
    let cli_line = list
        .lines()
        .find(|l| l.starts_with("whosthat-cli "))
        .unwrap();
    assert!(cli_line.contains("public"), "{cli_line}");
    let demo = list.lines().find(|l| l.starts_with("demo-app ")).unwrap();
    assert!(demo.contains("http://127.0.0.1:8765/callback"), "{demo}");
    assert!(!list.contains("argon2"), "{list}");
    assert!(!list.contains(secret), "{list}");

    ok(run(&config, &["client", "remove", "svc2"], None));
    ok(run(&config, &["client", "remove", "svc"], None));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), shipped_text());
}

#[test]
fn public_client_with_redirect_uris() {
    let (_dir, config) = shipped_copy();
    let out = ok(run(
        &config,
        &[
            "client",
            "add",
            "spa",
            "--public",
            "--grants",
            "authorization_code,refresh_token",
            "--scopes",
            "read",
            "--redirect-uri",
            "http://127.0.0.1:8765/a",
            "--redirect-uri",
            "http://127.0.0.1:8765/b?x=1",
        ],
        None,
    ));
    assert!(text(&out.stdout).trim().is_empty(), "{}", show(&out));
    check_config_passes(&config);
    comments_kept(&config);
    let spa = client_entry(&config, "spa");
    assert!(!spa.contains_key("secret_hash"));
    assert_eq!(
        spa["redirect_uris"].as_array().unwrap(),
        &vec![
            toml::Value::from("http://127.0.0.1:8765/a"),
            toml::Value::from("http://127.0.0.1:8765/b?x=1")
        ]
    );
    let out = ok(run(&config, &["client", "list"], None));
    let list = text(&out.stdout);
    let line = list.lines().find(|l| l.starts_with("spa ")).unwrap();
    assert!(line.contains("public"), "{line}");
    assert!(line.contains("http://127.0.0.1:8765/b?x=1"), "{line}");
}

#[test]
fn client_refusals_leave_the_file_alone() {
    let (_dir, config) = shipped_copy();
    let cases: [(&[&str], &str); 9] = [
        (
            &[
                "client",
                "add",
                "whosthat-cli",
                "--grants",
                "password",
                "--public",
            ],
            "already has a client \"whosthat-cli\"",
        ),
        (
            &["client", "add", "x", "--grants", "password,magic"],
            "\"magic\" is not a grant",
        ),
        (
            &[
                "client", "add", "x", "--grants", "password", "--scopes", "a b",
            ],
            "is not a valid scope",
        ),
        (
            &[
                "client",
                "add",
                "x",
                "--public",
                "--grants",
                "client_credentials",
            ],
            "client_credentials needs a confidential client",
        ),
        (
            &[
                "client",
                "add",
                "x",
                "--public",
                "--grants",
                "authorization_code",
            ],
            "authorization_code needs at least one --redirect-uri",
        ),
        (
            &[
                "client",
                "add",
                "x",
                "--grants",
                "authorization_code",
                "--redirect-uri",
                "/relative",
            ],
            "is not a redirect URI",
        ),
        (&["client", "remove", "nobody"], "has no client \"nobody\""),
        // The default client cannot go: the result would not be a valid config.
        (
            &["client", "remove", "whosthat-cli"],
            "oauth.default_client",
        ),
        (
            &["client", "add", "x", "--grants", ""],
            "at least one grant",
        ),
    ];
    for (args, why) in cases {
        let out = run(&config, args, None);
        refused(out, why);
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            shipped_text(),
            "{args:?} changed the file"
        );
    }
    no_leftovers(&config);
    // --grants is required.
    let out = run(&config, &["client", "add", "x"], None);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
}

// ------------------------------------------------------ a gateway on the result

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_config_serves_the_new_user_and_client() {
    let (_dir, config) = shipped_copy();
    let out = tokio::task::block_in_place(|| {
        ok(run(
            &config,
            &["user", "add", "carol", "--scopes", "read"],
            Some("carol-pw\n"),
        ));
        ok(run(
            &config,
            &[
                "client",
                "add",
                "robot",
                "--grants",
                "client_credentials",
                "--scopes",
                "read",
            ],
            None,
        ))
    });
    let secret = text(&out.stdout).trim().to_string();

    let up = spawn_upstream().await;
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("http://127.0.0.1:9000", &format!("http://{}", up.addr));
    let gw = spawn_gateway_with(&edited).await;

    // The user added by the CLI logs in, and the token opens /api/.
    let token = access_token(&gw, "carol", "carol-pw").await;
    let r = get_with_token(&gw.url("/api/orders"), &token).await;
    let seen = r.seen();
    assert_eq!(seen.uri(), "/orders");
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("carol"));
    let r = token_request_patient(
        &gw,
        "grant_type=password&username=carol&password=wrong",
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // The client added by the CLI authenticates with the printed secret.
    let auth = basic("robot", &secret);
    let r = token_request_patient(
        &gw,
        "grant_type=client_credentials",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let bad = basic("robot", "guess");
    let r = token_request_patient(
        &gw,
        "grant_type=client_credentials",
        &[("authorization", &bad)],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());

    // The shipped demo user still works.
    access_token(&gw, "stefano", "foo").await;
}

// ---------------------------------------------------------------- route test

#[test]
fn route_test_protected_route_with_stripped_prefix() {
    let (_dir, config) = shipped_copy();
    let out = ok(run(
        &config,
        &["route", "test", "GET", "/api/orders/7?full=1"],
        None,
    ));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("route     /api (prefix stripped)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bearer token with scopes [read]"),
        "{stdout}"
    );
    assert!(stdout.contains("methods   any"), "{stdout}");
    assert!(
        stdout.contains("upstream  http://127.0.0.1:9000/orders/7?full=1"),
        "{stdout}"
    );
    // The prefix itself goes upstream as the root.
    let out = ok(run(&config, &["route", "test", "DELETE", "/api"], None));
    assert!(
        text(&out.stdout).contains("upstream  http://127.0.0.1:9000/\n"),
        "{}",
        show(&out)
    );
}

#[test]
fn route_test_public_route() {
    let (_dir, config) = shipped_copy();
    let out = ok(run(
        &config,
        &["route", "test", "POST", "/public/a/b"],
        None,
    ));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("route     /public (prefix stripped)"),
        "{stdout}"
    );
    assert!(stdout.contains("public route, no token needed"), "{stdout}");
    assert!(
        stdout.contains("upstream  http://127.0.0.1:9001/a/b"),
        "{stdout}"
    );
}

#[test]
fn route_test_without_a_match() {
    let (_dir, config) = shipped_copy();
    let cases: [(&str, &str, &str); 5] = [
        ("GET", "/api/../x", "the path has a '.' or '..' segment"),
        ("GET", "/api/a%2fb", "encoded '/'"),
        ("GET", "/nowhere", "no route's prefix matches /nowhere"),
        ("POST", "/auth/access_token", "own token endpoint"),
        (
            "GET",
            "/.well-known/oauth-authorization-server",
            "own server metadata endpoint",
        ),
    ];
    for (method, path, why) in cases {
        let out = run(&config, &["route", "test", method, path], None);
        assert_eq!(out.status.code(), Some(1), "{path}: {}", show(&out));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("no route"), "{path}: {stdout}");
        assert!(stdout.contains(why), "{path}: {why:?} not in {stdout}");
        assert!(!stdout.contains("upstream  "), "{path}: {stdout}");
    }
}

#[test]
fn route_test_methods_and_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        r#"[server]
listen = "127.0.0.1:0"

[[routes]]
prefix = "/orders/"
upstream = ["http://127.0.0.1:9000/v1", "http://127.0.0.1:9001"]
methods = ["GET", "HEAD"]
scopes = ["orders"]
"#,
    )
    .unwrap();
    let out = run(&config, &["route", "test", "POST", "/orders/1"], None);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("route     /orders\n"), "{stdout}");
    assert!(stdout.contains("does not allow POST"), "{stdout}");
    assert!(stdout.contains("methods   GET, HEAD"), "{stdout}");

    // Both upstreams, the prefix kept, the path as the gateway normalises it.
    let out = ok(run(
        &config,
        &["route", "test", "GET", "/%6Frders/%7e1"],
        None,
    ));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("/orders/~1 (normalised)"), "{stdout}");
    assert!(
        stdout.contains("http://127.0.0.1:9000/v1/orders/~1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("http://127.0.0.1:9001/orders/~1"),
        "{stdout}"
    );
    assert!(stdout.contains("scopes [orders]"), "{stdout}");
}

/// One decision, two callers: each (method, path) goes through the binary's
/// `route test` and, as a real request with a token holding every scope,
/// through a gateway serving the same config. A match is forwarded; an
/// endpoint is answered without the upstream; 400, 404 and 405 are the
/// gateway's status too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_test_and_the_gateway_decide_alike() {
    let up = spawn_upstream().await;
    let toml = config_text(up.addr);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, &toml).unwrap();
    let gw = spawn_gateway_with(&toml).await;
    let bearer = format!("Bearer {}", access_token(&gw, "alice", ALICE_PW).await);
    let cases = [
        ("GET", "/api/orders/7?full=1"),
        ("GET", "/API/orders"),
        ("GET", "/%61pi/x"),
        ("DELETE", "/admin/x"),
        ("POST", "/public/a/b"),
        ("GET", "/based/x"),
        ("GET", "/get-only/x"),
        ("POST", "/get-only/x"),
        ("GET", "/nowhere"),
        ("GET", "/Auth/Revoke"),
        ("GET", "/api/../x"),
        ("GET", "/api/a%2fb"),
        ("POST", "/auth/access_token"),
        ("POST", "/auth/revoke"),
        ("GET", "/auth/userinfo"),
        ("GET", "/auth/authorize"),
        ("GET", "/.well-known/oauth-authorization-server"),
    ];
    for (method, path) in cases {
        let out =
            tokio::task::block_in_place(|| run(&config, &["route", "test", method, path], None));
        let report = text(&out.stdout);
        let before = up.hits.load(std::sync::atomic::Ordering::SeqCst);
        let r = request(
            http::Method::from_bytes(method.as_bytes()).unwrap(),
            &gw.url(path),
            &[("authorization", &bearer)],
            "",
        )
        .await;
        let proxied = up.hits.load(std::sync::atomic::Ordering::SeqCst) > before;
        let at = format!(
            "{method} {path}: gateway {} {}; {report}",
            r.status,
            r.text()
        );
        match out.status.code() {
            Some(0) => assert!(proxied && r.status == 200, "{at}"),
            Some(1) => {
                assert!(!proxied, "{at}");
                let code = [400, 404, 405]
                    .into_iter()
                    .find(|c| report.contains(&format!("({c} ")));
                match code {
                    Some(c) => assert_eq!(r.status, c, "{at}"),
                    // Answered by the endpoint itself, whatever it says.
                    None => {
                        assert!(report.contains("the gateway's own"), "{at}");
                        assert_ne!(r.status, 404, "{at}");
                    }
                }
            }
            _ => panic!("{}", show(&out)),
        }
    }
}

#[test]
fn route_test_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[server]\nlisten = \"nope\"\n").unwrap();
    refused(
        run(&config, &["route", "test", "GET", "/"], None),
        "server.listen",
    );
}

// ---------------------------------------------------------------------- help

#[test]
fn every_command_has_help() {
    let (_dir, config) = shipped_copy();
    for args in [
        &["user", "--help"][..],
        &["user", "add", "--help"],
        &["user", "remove", "--help"],
        &["user", "list", "--help"],
        &["client", "--help"],
        &["client", "add", "--help"],
        &["client", "remove", "--help"],
        &["client", "list", "--help"],
        &["route", "--help"],
        &["route", "test", "--help"],
    ] {
        let out = ok(run(&config, args, None));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
        assert!(stdout.contains("--config"), "{args:?}: {stdout}");
    }
    let out = ok(run(&config, &["client", "add", "--help"], None));
    let stdout = text(&out.stdout);
    for flag in ["--grants", "--scopes", "--public", "--redirect-uri"] {
        assert!(stdout.contains(flag), "{flag} not in {stdout}");
    }
}

// ------------------------------------------------------------ user passwd

#[test]
fn user_passwd_changes_only_the_hash() {
    let (_dir, config) = shipped_copy();
    let out = ok(run(
        &config,
        &["user", "passwd", "stefano"],
        Some("new-pw\n"),
    ));
    assert!(text(&out.stderr).contains("SIGHUP"), "{}", show(&out));
    check_config_passes(&config);
    comments_kept(&config);
    no_leftovers(&config);
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let users = doc["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    let hash = argon2::PasswordHash::new(users[0]["password_hash"].as_str().unwrap()).unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"new-pw", &hash)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"foo", &hash)
            .is_err()
    );
    // Only that line changed.
    let before: Vec<String> = shipped_text().lines().map(str::to_string).collect();
    let after: Vec<String> = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(before.len(), after.len());
    let changed: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].1.starts_with("password_hash = \"$argon2id$"));
    // An unknown user: refused before any password is read, file untouched.
    let now = std::fs::read_to_string(&config).unwrap();
    refused(
        run(&config, &["user", "passwd", "nobody"], Some("pw\n")),
        "has no user \"nobody\"",
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), now);
}

#[test]
fn user_add_needs_scopes_and_only_serve_takes_a_log_format() {
    let (_dir, config) = shipped_copy();
    let out = run(&config, &["user", "add", "x"], Some("pw\n"));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(text(&out.stderr).contains("--scopes"), "{}", show(&out));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), shipped_text());
    let out = run(&config, &["check-config", "--log-format", "json"], None);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let help = text(&ok(run(&config, &["serve", "--help"], None)).stdout);
    assert!(help.contains("--log-format"), "{help}");
    let help = text(&ok(run(&config, &["check-config", "--help"], None)).stdout);
    assert!(!help.contains("--log-format"), "{help}");
}

#[test]
fn client_add_introspect_only_for_confidential_clients() {
    let (_dir, config) = shipped_copy();
    let out = ok(run(
        &config,
        &[
            "client",
            "add",
            "rs",
            "--grants",
            "client_credentials",
            "--scopes",
            "read",
            "--introspect",
        ],
        None,
    ));
    assert!(!text(&out.stdout).trim().is_empty(), "no secret printed");
    check_config_passes(&config);
    assert_eq!(
        client_entry(&config, "rs")["introspect"].as_bool(),
        Some(true)
    );
    let before = std::fs::read_to_string(&config).unwrap();
    refused(
        run(
            &config,
            &[
                "client",
                "add",
                "web2",
                "--grants",
                "password",
                "--public",
                "--introspect",
            ],
            None,
        ),
        "--introspect needs a confidential client",
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}
