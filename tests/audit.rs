//! The audit trail through the real binary (`--log-format json`): a request id
//! per request (made here, or taken from a trusted proxy), returned to the
//! client and sent upstream, on the access line and on every security event of
//! the request; events for tokens issued, refreshed, refused and revoked,
//! sign-ins and lockouts; never a password, secret or token in any line.

mod common;
mod oauth_helpers;
use common::*;
use oauth_helpers::*;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::Method;
use serde_json::Value;

struct Binary {
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Every line read so far, for the no-secret check.
    seen: Vec<String>,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    async fn start(text: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_whosthat"))
            .args(["--log-format", "json", "-c"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel::<Value>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut b = Binary {
            child,
            lines,
            seen: Vec::new(),
            gw: Gateway::detached("127.0.0.1:1".parse().unwrap()),
            _dir: dir,
        };
        let serving = b.next(|v| v.to_string().contains("whosthat is serving"));
        let addr = serving["listen"].as_str().unwrap().parse().unwrap();
        b.gw = Gateway::detached(addr);
        b
    }

    /// The next log line for which `want` holds (a hang guard of 60 s).
    fn next(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("the expected log line");
            self.seen.push(v.to_string());
            if want(&v) {
                return v;
            }
        }
    }

    /// Every line of `request_id`, up to and including its access line.
    fn lines_of(&mut self, request_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.next(|v| v["request_id"] == request_id);
            let done = v["target"] == "whosthat::access";
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

fn event<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|v| v["target"] == "whosthat::audit" && v["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {lines:#?}"))
}

fn id_of(r: &Reply) -> String {
    r.header("x-request-id")
        .expect("every answer carries X-Request-Id")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_requests_leave_an_audit_trail() {
    let up = spawn_upstream().await;
    let mut b = Binary::start(&config_text(up.addr)).await;
    let gw = &b.gw;

    // A password login: issued, with who and from where.
    let ok = token(
        gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
        ],
        &[],
    )
    .await;
    assert_eq!(ok.status, 200);
    let tokens = ok.json();
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let lines = b.lines_of(&id_of(&ok));
    let issued = event(&lines, "token_issued");
    assert_eq!(issued["user"], "alice");
    assert_eq!(issued["client"], "cli");
    assert_eq!(issued["grant"], "password");
    assert_eq!(issued["address"], "127.0.0.1");

    // A wrong password: refused, naming the name being guessed at.
    let bad = token(
        &b.gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "not-her-password"),
        ],
        &[],
    )
    .await;
    assert_eq!(bad.status, 400);
    let lines = b.lines_of(&id_of(&bad));
    let refused = event(&lines, "token_refused");
    assert_eq!(refused["user"], "alice");
    assert_eq!(refused["client"], "cli");
    assert_eq!(refused["reason"], "invalid_grant");

    // A refresh.
    let r = token(
        &b.gw,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let lines = b.lines_of(&id_of(&r));
    let refreshed = event(&lines, "token_refreshed");
    assert_eq!(refreshed["user"], "alice");
    assert_eq!(refreshed["grant"], "refresh_token");

    // A proxied request: the access line names address, client, user and the
    // id, which the upstream gets too; the client's own X-Request-Id is not trusted.
    let p = request(
        Method::GET,
        &b.gw.url("/api/orders"),
        &[
            ("authorization", &format!("Bearer {access}")),
            ("x-request-id", "forged-by-client"),
        ],
        "",
    )
    .await;
    assert_eq!(p.status, 200);
    let id = id_of(&p);
    assert_ne!(id, "forged-by-client");
    assert_eq!(p.seen().header_all("x-request-id"), vec![id.clone()]);
    let lines = b.lines_of(&id);
    let access_line = lines.last().unwrap();
    assert_eq!(access_line["address"], "127.0.0.1");
    assert_eq!(access_line["client"], "cli");
    assert_eq!(access_line["user"], "alice");
    assert_eq!(access_line["status"], 200);

    // A revocation.
    let rv = request(
        Method::POST,
        &b.gw.url("/auth/revoke"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic("svc", SVC_SECRET)),
        ],
        "token=unknown-token",
    )
    .await;
    assert_eq!(rv.status, 200);
    let own = token(
        &b.gw,
        &[("grant_type", "client_credentials")],
        &[("authorization", &basic("svc", SVC_SECRET))],
    )
    .await;
    let svc_token = own.json()["access_token"].as_str().unwrap().to_string();
    let rv = request(
        Method::POST,
        &b.gw.url("/auth/revoke"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic("svc", SVC_SECRET)),
        ],
        &format!("token={svc_token}"),
    )
    .await;
    assert_eq!(rv.status, 200);
    let lines = b.lines_of(&id_of(&rv));
    let revoked = event(&lines, "token_revoked");
    assert_eq!(revoked["client"], "svc");
    assert_eq!(revoked["reason"], "access_token");

    // Nothing secret in anything written so far.
    let _ = b.child.kill();
    let mut all = b.seen.clone();
    all.extend(b.lines.try_iter().map(|v| v.to_string()));
    assert!(all.len() > 10, "{} log lines", all.len());
    for secret in [ALICE_PW, SVC_SECRET, &access, &refresh, &svc_token] {
        assert!(
            !all.iter().any(|l| l.contains(secret)),
            "a credential reached the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_and_lockouts_are_audited() {
    let up = spawn_upstream().await;
    let mut b = Binary::start(&config_text(up.addr)).await;
    let (_verifier, challenge) = pkce_pair();
    let pairs = [
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", "http://127.0.0.1:8765/callback"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let (mut browser, page) = start(&b.gw, &pairs).await;
    let csrf = csrf_of(&page);
    let failed = browser
        .post(
            &b.gw,
            &[
                ("csrf", &csrf),
                ("action", "login"),
                ("username", "alice"),
                ("password", "wrong"),
            ],
        )
        .await;
    let lines = b.lines_of(&id_of(&failed));
    let e = event(&lines, "signin_failed");
    assert_eq!(e["user"], "alice");
    assert_eq!(e["client"], "spa");
    let page = browser.page(&b.gw).await;
    let csrf = csrf_of(&page);
    let ok = browser
        .post(
            &b.gw,
            &[
                ("csrf", &csrf),
                ("action", "login"),
                ("username", "alice"),
                ("password", ALICE_PW),
            ],
        )
        .await;
    let lines = b.lines_of(&id_of(&ok));
    assert_eq!(event(&lines, "signin_succeeded")["user"], "alice");

    // Guesses at once from one address: those past the limits are refused
    // without a check, and each refusal is a lockout line naming the account.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let gw = Gateway::detached(b.gw.addr);
        tasks.push(tokio::spawn(async move {
            token(
                &gw,
                &[
                    ("grant_type", "password"),
                    ("username", "bob"),
                    ("password", "guess"),
                ],
                &[],
            )
            .await
        }));
    }
    let mut locked = None;
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 429 {
            locked = Some(id_of(&r));
        }
    }
    let id = locked.expect("12 guesses at once: some are refused");
    let lines = b.lines_of(&id);
    let e = event(&lines, "lockout");
    assert_eq!(e["user"], "bob");
    assert_eq!(e["reason"], "too_many_attempts");
}

#[tokio::test]
async fn a_trusted_proxy_names_the_request_id() {
    let up = spawn_upstream().await;
    let text = config_text(up.addr).replacen(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let gw = spawn_gateway_with(&text).await;
    let r = get(&gw.url("/public/x"), &[("x-request-id", "lb-7f3a")]).await;
    assert_eq!(r.header("x-request-id"), Some("lb-7f3a"));
    assert_eq!(r.seen().header_all("x-request-id"), vec!["lb-7f3a"]);
    // One that is not a plain token is replaced.
    let r = get(&gw.url("/public/x"), &[("x-request-id", "two words")]).await;
    assert_ne!(r.header("x-request-id"), Some("two words"));
    assert_eq!(r.header("x-request-id").unwrap().len(), 32);
}
