//! End to end in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, signs alice in on the gateway's login page, approves on the
//! consent page and lands on the application's callback with a code; the test then
//! redeems the code (PKCE, S256) and the token opens the guarded API. A second
//! test does the device flow (RFC 8628): the browser opens the verification
//! link, confirms the code, signs in and approves; the polling device gets tokens.
//!
//! Ignored by default; run with `cargo test --test browser -- --ignored`. It needs
//! Debian's `chromium` and `chromium-driver` (`chromedriver` on the PATH) and fails,
//! rather than skipping, when they are missing. With `WHOSTHAT_SCREENSHOT_DIR` set it
//! writes `login.png` (1280x800) and `login-phone.png` (390x844) of the login page there.

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const REGISTERED_CALLBACK: &str = "http://127.0.0.1:8765/callback";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest wait for any one step in the browser: a hang guard, as Chromium on a busy
/// CI machine can take long over a page.
const STEP: Duration = HANG_GUARD;
/// Longest wait for the whole flow (a hang guard too).
const FLOW: Duration = Duration::from_secs(600);

// -------------------------------------------------------------- chromedriver

/// A chromedriver process on 127.0.0.1, killed on drop; its log and Chromium's
/// profile live in a temporary directory removed after it.
struct Driver {
    child: Child,
    url: String,
    log: PathBuf,
    profile: PathBuf,
    _dir: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chromedriver.log");
        let profile = dir.path().join("profile");
        let port = closed_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}). This test needs Chromium and ChromeDriver: \
                     apt-get install chromium chromium-driver (.ci/run installs them)"
                )
            });
        let mut driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            profile,
            _dir: dir,
        };
        let deadline = Instant::now() + STEP;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited ({status}):\n{}", driver.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port}:\n{}",
                driver.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A new headless Chromium session.
    async fn session(&self) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            &format!("--user-data-dir={}", self.profile.display()),
        ];
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session from chromedriver ({e}); is {CHROMIUM} installed \
                     (apt-get install chromium)?\n{}",
                    self.log_text()
                )
            })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----------------------------------------------------------- the application

/// The application's redirect endpoint: answers a small page and reports each
/// query string it receives.
async fn spawn_callback() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    if req.uri().path() == "/callback" {
                        let _ = tx.send(req.uri().query().unwrap_or("").to_string());
                    }
                    async {
                        let mut resp = Response::new(Full::new(Bytes::from_static(
                            b"<!doctype html><title>callback</title><p>Signed in.</p>",
                        )));
                        resp.headers_mut()
                            .insert("content-type", "text/html".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).unwrap();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of `name` in `query`.
fn param(query: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------------- test

#[tokio::test]
#[ignore = "needs chromium"]
async fn sign_in_and_consent_in_chromium() {
    let up = spawn_upstream().await;
    let (cb_addr, callback_hits) = spawn_callback().await;
    let callback = format!("http://{cb_addr}/callback");
    let text = config_text(up.addr).replace(REGISTERED_CALLBACK, &callback);
    assert!(text.contains(&callback));
    let gw = spawn_gateway_with(&text).await;
    in_chromium(move |c| flow(c, gw, up, callback, callback_hits)).await;
}

/// Runs `f` with a fresh headless Chromium session, within [`FLOW`]; the
/// session is always closed, and chromedriver's log shown on a failure.
async fn in_chromium<F, Fut>(f: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let driver = Driver::start();
    let browser = driver.session().await;
    let flow = tokio::spawn(f(browser.clone()));
    let outcome = tokio::time::timeout(FLOW, flow).await;
    // Always end the session: chromedriver then stops Chromium.
    let _ = browser.close().await;
    match outcome {
        Err(_) => panic!("the browser flow took over {FLOW:?}"),
        Ok(Err(e)) if e.is_panic() => {
            eprintln!("chromedriver log:\n{}", tail(&driver.log_text(), 40));
            std::panic::resume_unwind(e.into_panic())
        }
        Ok(Err(e)) => panic!("{e}"),
        Ok(Ok(())) => {}
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

async fn flow(
    c: Client,
    gw: Gateway,
    _up: Upstream,
    callback: String,
    mut callback_hits: mpsc::UnboundedReceiver<String>,
) {
    let verifier = random_b64(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_b64(16);
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", callback.as_str()),
        ("scope", "read write"),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    let authorize = gw.url(&format!("/auth/authorize?{query}"));

    // The login page.
    c.set_window_size(1280, 800).await.unwrap();
    c.goto(&authorize).await.unwrap();
    let login = c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("login"))
        .await
        .expect("the login page");
    assert_eq!(c.title().await.unwrap(), "Sign in · whosthat");
    screenshots(&c).await;

    sign_in(&c, login, "alice", ALICE_PW).await;

    // The consent page, after the 303.
    let approve = match c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("approve"))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!("no consent page ({e}): {}", page_text(&c).await),
    };
    assert_eq!(c.title().await.unwrap(), "Allow access · whosthat");
    let main = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(main.contains("spa"), "{main}");
    assert!(main.contains("Signed in as alice"), "{main}");
    assert!(main.contains("read") && main.contains("write"), "{main}");
    assert_eq!(approve.text().await.unwrap(), "Allow");
    approve.click().await.unwrap();

    // Back at the application.
    let deadline = Instant::now() + STEP;
    let landed = loop {
        let url = c.current_url().await.unwrap();
        if url.as_str().starts_with(&format!("{callback}?")) {
            break url;
        }
        assert!(Instant::now() < deadline, "the browser stayed at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let q = landed.query().unwrap();
    assert_eq!(param(q, "error"), None, "{landed}");
    assert_eq!(param(q, "state").as_deref(), Some(state.as_str()));
    let code = param(q, "code").expect("a code in the callback URL");
    let seen_by_app = tokio::time::timeout(STEP, callback_hits.recv())
        .await
        .expect("the callback server was reached")
        .unwrap();
    assert_eq!(
        param(&seen_by_app, "code").as_deref(),
        Some(code.as_str()),
        "the application got the same code"
    );

    // The application redeems the code with its verifier.
    let form = serde_urlencoded::to_string([
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", callback.as_str()),
        ("client_id", "spa"),
        ("code_verifier", verifier.as_str()),
    ])
    .unwrap();
    let r = token_request(&gw, &form, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["scope"], "read write");
    let access = token["access_token"].as_str().unwrap();

    let seen = get_with_token(&gw.url("/api/whoami"), access).await.seen();
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-client"), ["spa"]);

    let r = request(Method::GET, &gw.url("/api/whoami"), &[], "").await;
    assert_eq!(r.status, 401, "no token, no API");
}

/// Types `user` and `pw` into the login page and submits it with `login`.
async fn sign_in(c: &Client, login: fantoccini::elements::Element, user: &str, pw: &str) {
    for (field, text) in [("username", user), ("password", pw)] {
        let input = c.find(Locator::Id(field)).await.unwrap();
        input.send_keys(text).await.unwrap();
    }
    login.click().await.unwrap();
}

/// The current page's address and source, for failure messages.
async fn page_text(c: &Client) -> String {
    let url = c.current_url().await.map(|u| u.to_string());
    let src = c.source().await.unwrap_or_default();
    format!("{url:?}\n{src}")
}

/// Screenshots of the login page, desktop and phone sized; written to
/// `$WHOSTHAT_SCREENSHOT_DIR` when it is set. The window ends at 1280x800.
async fn screenshots(c: &Client) {
    let dir = std::env::var_os("WHOSTHAT_SCREENSHOT_DIR").map(PathBuf::from);
    for (name, w, h) in [("login.png", 1280, 800), ("login-phone.png", 390, 844)] {
        set_viewport(c, w, h).await;
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
        let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!(
            (size(16), size(20)),
            (w, h),
            "{name}: the screenshot's size"
        );
        if let Some(dir) = &dir {
            save(dir, name, &png);
        }
    }
    c.set_window_size(1280, 800).await.unwrap();
}

/// Sizes the window so that the page itself gets `w` x `h` CSS pixels.
async fn set_viewport(c: &Client, w: u32, h: u32) {
    c.set_window_size(w, h).await.unwrap();
    let inner = c
        .execute("return [window.innerWidth, window.innerHeight]", vec![])
        .await
        .unwrap();
    let (iw, ih) = (
        inner[0].as_u64().unwrap() as u32,
        inner[1].as_u64().unwrap() as u32,
    );
    c.set_window_size(2 * w - iw, 2 * h - ih).await.unwrap();
}

fn save(dir: &Path, name: &str, png: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn device_flow_in_chromium() {
    let up = spawn_upstream().await;
    let text = config_text(up.addr)
        + "\n[[clients]]\nid = \"tv\"\ngrants = [\"device_code\"]\nscopes = [\"read\"]\n";
    let gw = spawn_gateway_with(&text).await;
    in_chromium(move |c| device_flow(c, gw, up)).await;
}

async fn device_flow(c: Client, gw: Gateway, _up: Upstream) {
    let r = request(
        Method::POST,
        &gw.url("/auth/device_authorization"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "client_id=tv&scope=read",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let start = r.json();
    let user_code = start["user_code"].as_str().unwrap().to_string();
    let device_code = start["device_code"].as_str().unwrap().to_string();
    // The verification link, on the gateway's real address (the config's issuer
    // names another port).
    let link = gw.url(&format!("/auth/device?user_code={user_code}"));

    c.set_window_size(1280, 800).await.unwrap();
    c.goto(&link).await.unwrap();
    let next = c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("continue"))
        .await
        .expect("the code page");
    assert_eq!(c.title().await.unwrap(), "Connect a device · whosthat");
    let field = c.find(Locator::Id("user_code")).await.unwrap();
    assert_eq!(
        field.prop("value").await.unwrap().as_deref(),
        Some(user_code.as_str())
    );
    if let Some(dir) = std::env::var_os("WHOSTHAT_SCREENSHOT_DIR").map(PathBuf::from) {
        save(&dir, "device.png", &c.screenshot().await.unwrap());
    }
    next.click().await.unwrap();

    let login = match c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("login"))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!("no sign-in page ({e}): {}", page_text(&c).await),
    };
    sign_in(&c, login, "alice", ALICE_PW).await;

    let approve = match c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("approve"))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!("no consent page ({e}): {}", page_text(&c).await),
    };
    let main = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(main.contains("tv") && main.contains(&user_code), "{main}");
    assert!(main.contains("Signed in as alice"), "{main}");
    approve.click().await.unwrap();
    let result = match c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("result"))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!("no result page ({e}): {}", page_text(&c).await),
    };
    assert!(
        result
            .text()
            .await
            .unwrap()
            .contains("Your device is connected")
    );

    // The device's poll gets the tokens (its first poll: never too soon).
    let form = serde_urlencoded::to_string([
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code.as_str()),
        ("client_id", "tv"),
    ])
    .unwrap();
    let r = token_request(&gw, &form, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let seen = get_with_token(&gw.url("/api/whoami"), &access).await.seen();
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-client"), ["tv"]);
}
