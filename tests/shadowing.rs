//! Routes whose upstream paths overlap with different checks (issue 9 item 5):
//! the config carries a warning for each, `check-config --strict` refuses them,
//! and the real binary logs them at warn level when it starts and on SIGHUP.
//! The usual layouts that do not overlap carry none.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use whosthat::Config;

const BIN: &str = env!("CARGO_BIN_EXE_whosthat");

/// A config with `routes` (TOML `[[routes]]` tables) and nothing else.
fn with_routes(routes: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{routes}")
}

fn route(prefix: &str, upstream: &str, extra: &str) -> String {
    format!("\n[[routes]]\nprefix = \"{prefix}\"\nupstream = {upstream}\n{extra}\n")
}

fn warnings(routes: &str) -> Vec<String> {
    Config::parse(&with_routes(routes), Path::new("gw.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .warnings
        .iter()
        .map(|w| w.to_string())
        .collect()
}

const UP: &str = "\"http://127.0.0.1:9000\"";
const STRIP: &str = "strip_prefix = true";

/// Each shadowing case: routes, and what its single warning must say.
fn shadowing_cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "public and protected stripped to one upstream",
            route("/api/", UP, &format!("{STRIP}\nscopes = [\"read\"]"))
                + &route("/public/", UP, &format!("{STRIP}\nauth = false")),
            vec![
                "key `routes[1].prefix`",
                "`/api` (scopes [read]) and `/public` (public)",
                "/api/x and /public/x both go to http://127.0.0.1:9000/x",
                "`/api`'s checks can be skipped through `/public`",
            ],
        ),
        (
            "a stripped route reaching a longer route's upstream path",
            route("/api", UP, &format!("{STRIP}\nscopes = [\"read\"]"))
                + &route("/api/admin", UP, "scopes = [\"read\", \"admin\"]"),
            vec![
                "key `routes[0].prefix`",
                "/api/api/admin/x and /api/admin/x both go to http://127.0.0.1:9000/api/admin/x",
                "`/api/admin`'s checks can be skipped through `/api`",
            ],
        ),
        (
            "a public route with a base path inside a protected route's space",
            route("/api/", UP, &format!("{STRIP}\nscopes = [\"read\"]"))
                + &route(
                    "/docs/",
                    "\"http://127.0.0.1:9000/internal\"",
                    &format!("{STRIP}\nauth = false"),
                ),
            vec![
                "key `routes[1].prefix`",
                "/api/internal/x and /docs/x both go to http://127.0.0.1:9000/internal/x",
            ],
        ),
        (
            "a route limited to GET next to one that is not",
            route("/ro/", UP, &format!("{STRIP}\nmethods = [\"GET\"]")) + &route("/rw/", UP, STRIP),
            vec!["`/ro` (any token, GET only)", "`/rw` (any token)"],
        ),
        (
            "the second target of a route, host in another case and the default port",
            route(
                "/api/",
                "\"http://backend.test/v1\"",
                &format!("{STRIP}\nscopes = [\"read\"]"),
            ) + &route(
                "/open/",
                "[\"http://other.test\", \"http://BACKEND.test:80/v1\"]",
                &format!("{STRIP}\nauth = false"),
            ),
            vec!["/api/x and /open/x both go to http://BACKEND.test:80/v1/x"],
        ),
        (
            "scopes that do not contain each other",
            route("/a/", UP, &format!("{STRIP}\nscopes = [\"read\"]"))
                + &route("/b/", UP, &format!("{STRIP}\nscopes = [\"write\"]")),
            vec!["(and the other way round)"],
        ),
    ]
}

#[test]
fn each_shadowing_case_warns_once() {
    for (name, routes, wants) in shadowing_cases() {
        let w = warnings(&routes);
        assert_eq!(w.len(), 1, "{name}: {w:?}");
        for want in wants {
            assert!(w[0].contains(want), "{name}: {want:?} not in {}", w[0]);
        }
        assert!(w[0].starts_with("gw.toml:"), "{name}: {}", w[0]);
    }
}

#[test]
fn layouts_without_overlap_do_not_warn() {
    let cases = [
        // A public root and a protected subtree, neither stripped.
        route("/", UP, "auth = false") + &route("/admin", UP, "scopes = [\"admin\"]"),
        // A protected root and a public subtree.
        route("/", UP, "") + &route("/public", UP, "auth = false"),
        // Nested prefixes, neither stripped.
        route("/api", UP, "scopes = [\"read\"]") + &route("/api/admin", UP, "scopes = [\"admin\"]"),
        // A stripped route whose way into the other's space is captured by it.
        route("/", UP, &format!("{STRIP}\nscopes = [\"read\"]"))
            + &route("/admin", UP, "scopes = [\"admin\"]"),
        // Different upstreams: other port, other scheme, other host.
        route("/api/", UP, &format!("{STRIP}\nscopes = [\"read\"]"))
            + &route(
                "/public/",
                "\"http://127.0.0.1:9001\"",
                &format!("{STRIP}\nauth = false"),
            ),
        route(
            "/api/",
            "\"https://b.test\"",
            &format!("{STRIP}\nscopes = [\"read\"]"),
        ) + &route(
            "/public/",
            "\"http://b.test\"",
            &format!("{STRIP}\nauth = false"),
        ),
        route(
            "/api/",
            "\"http://a.test\"",
            &format!("{STRIP}\nscopes = [\"read\"]"),
        ) + &route(
            "/public/",
            "\"http://b.test\"",
            &format!("{STRIP}\nauth = false"),
        ),
        // Different upstream paths on one upstream.
        route(
            "/api/",
            "\"http://127.0.0.1:9000/v1\"",
            &format!("{STRIP}\nscopes = [\"read\"]"),
        ) + &route(
            "/public/",
            "\"http://127.0.0.1:9000/pub\"",
            &format!("{STRIP}\nauth = false"),
        ),
        // The same checks: nothing to skip.
        route("/a/", UP, &format!("{STRIP}\nscopes = [\"read\"]"))
            + &route("/b/", UP, &format!("{STRIP}\nscopes = [\"read\"]")),
        // A stricter scope set reaching a laxer route's paths through a captured request.
        route("/", UP, &format!("{STRIP}\nscopes = [\"read\", \"write\"]"))
            + &route("/w", UP, "scopes = [\"write\"]"),
    ];
    for routes in cases {
        assert_eq!(warnings(&routes), Vec::<String>::new(), "{routes}");
    }
}

#[test]
fn the_shipped_file_has_no_warning() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let c = Config::load(&path).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

// ------------------------------------------------------- the real binary

fn whosthat() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("WHOSTHAT_CONFIG").env_remove("RUST_LOG");
    c
}

#[test]
fn check_config_strict_refuses_every_shadowing_case() {
    for (name, routes, _) in shadowing_cases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, with_routes(&routes)).unwrap();
        let path = path.to_str().unwrap();
        let out = whosthat()
            .args(["check-config", "-c", path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!("warning: {path}:")),
            "{name}: {stderr}"
        );
        let out = whosthat()
            .args(["check-config", "--strict", "-c", path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {path}:")),
            "{name}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name}");
    }
}

/// The gateway process, killed if the test ends early.
struct Gateway {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Gateway {
    fn start(config: &Path) -> Gateway {
        let mut child = whosthat()
            .args(["serve", "-c", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Gateway { child, lines }
    }

    /// The lines logged up to and including the first that contains `marker`
    /// (a hang guard of 60 s only).
    fn lines_until(&self, marker: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(marker);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no {marker:?} line; log:\n{}", seen.join("\n")),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signals the child this test started.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }
}

#[test]
fn serve_logs_warnings_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let cases = shadowing_cases();
    std::fs::write(&path, with_routes(&cases[0].1)).unwrap();
    let gw = Gateway::start(&path);
    let start = gw.lines_until("whosthat is serving");
    let warned: Vec<&String> = start
        .iter()
        .filter(|l| l.contains("config warning"))
        .collect();
    assert_eq!(warned.len(), 1, "{start:#?}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    assert!(
        warned[0].contains("/api/x and /public/x both go to"),
        "{}",
        warned[0]
    );

    // The /api/api/admin case, on SIGHUP: logged after the reload.
    std::fs::write(&path, with_routes(&cases[1].1)).unwrap();
    gw.signal(libc::SIGHUP);
    gw.lines_until("config reloaded");
    let line = gw.lines_until("config warning").pop().unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("/api/api/admin/x"), "{line}");

    // A file without overlap reloads with no warning before the next reload's.
    std::fs::write(&path, with_routes(&route("/api/", UP, STRIP))).unwrap();
    gw.signal(libc::SIGHUP);
    gw.lines_until("config reloaded");
    std::fs::write(&path, with_routes(&cases[0].1)).unwrap();
    gw.signal(libc::SIGHUP);
    let between = gw.lines_until("config reloaded");
    assert!(
        !between.iter().any(|l| l.contains("config warning")),
        "{between:#?}"
    );
    let line = gw.lines_until("config warning").pop().unwrap();
    assert!(line.contains("/public/x"), "{line}");
    gw.signal(libc::SIGTERM);
}
