//! The real `whosthat` binary: check-config, hash-password, and serving the
//! shipped gateway.toml end to end (log in, proxy, SIGTERM).

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::PasswordVerifier;
use http::Method;

const BIN: &str = env!("CARGO_BIN_EXE_whosthat");

/// The stefano hash of the shipped gateway.toml (password "foo").
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$aiB9LTb7d91afsJUqoRsXQ$saxYqdH8smM1zzJECLJkyUIrcfZ+nrynTSW9S4wJE4U";

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml")
}

/// The binary, with no config taken from the environment.
fn whosthat() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("WHOSTHAT_CONFIG").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    whosthat()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running whosthat")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A minimal valid config; each line numbered for the error checks below.
fn base_config() -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[[users]]
name = "alice"
password_hash = "{HASH}"
scopes = ["read"]

[[clients]]
id = "cli"
grants = ["password"]
scopes = ["read"]

[[routes]]
prefix = "/api/"
upstream = "http://127.0.0.1:9000"
"#
    )
}

/// The 1-based line of the last occurrence of `needle` in `text`.
fn line_of_last(text: &str, needle: &str) -> usize {
    let at = text
        .rfind(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the config"));
    text[..at].matches('\n').count() + 1
}

/// Writes `content` to a file in a fresh temporary directory.
fn write_config(content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

/// `check-config` refuses `content`: exit code 1, and stderr names the file,
/// the line and the key.
fn assert_check_config_refuses(content: &str, line: usize, key: &str) {
    let (_dir, path) = write_config(content);
    let out = run(&["check-config", "-c", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    let want = format!("{}:{line}: key `{key}`", path.display());
    assert!(stderr.contains(&want), "expected {want:?} in: {stderr}");
}

/// The line number `<file>:<n>` of a config error message.
fn reported_line(stderr: &str, file: &str) -> usize {
    let at = stderr
        .find(&format!("{file}:"))
        .unwrap_or_else(|| panic!("no file name in: {stderr}"));
    let digits: String = stderr[at + file.len() + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no line number in: {stderr}"))
}

// ------------------------------------------------------------- check-config

#[test]
fn check_config_accepts_the_shipped_file() {
    let path = shipped_config();
    let out = run(&["check-config", "-c", path.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("127.0.0.1:8080"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().map(str::trim_start).collect();
    for prefix in ["/api ", "/public "] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no route {prefix:?} in: {stdout}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("stefano ")),
        "no user stefano in: {stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("whosthat-cli ")),
        "no client whosthat-cli in: {stdout}"
    );
    // No route of the shipped file reaches another's upstream paths.
    assert_eq!(text(&out.stderr), "", "warnings for the shipped file");
    let out = run(&["check-config", "--strict", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn check_config_warns_of_routes_sharing_upstream_paths() {
    // The issue's shape: a public and a protected route both stripped to one upstream.
    let cfg = base_config().replace(
        "prefix = \"/api/\"\n",
        "prefix = \"/api/\"\nstrip_prefix = true\n",
    ) + "\n[[routes]]\nprefix = \"/public/\"\nupstream = \"http://127.0.0.1:9000\"\nstrip_prefix = true\nauth = false\n";
    let (_dir, path) = write_config(&cfg);
    let out = run(&["check-config", "-c", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        text(&out.stdout).contains("is valid"),
        "{}",
        text(&out.stdout)
    );
    let line = line_of_last(&cfg, "prefix = \"/public/\"");
    let want = format!(
        "warning: {}:{line}: key `routes[1].prefix`: routes `/api`",
        path.display()
    );
    assert!(stderr.starts_with(&want), "expected {want:?} in: {stderr}");
    assert!(
        stderr.contains("/api/x and /public/x both go to http://127.0.0.1:9000/x"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let out = run(&["check-config", "--strict", "-c", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: {}:{line}: key `routes[1].prefix`",
            path.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("refused by --strict"), "{stderr}");
    assert!(
        !text(&out.stdout).contains("is valid"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_config_accepts_the_base_config() {
    // The bad configs below are each this one with one mistake.
    let (_dir, path) = write_config(&base_config());
    let out = run(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn check_config_unknown_key() {
    let cfg = base_config().replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nlisten_port = 3\n",
    );
    assert_eq!(line_of_last(&cfg, "listen_port"), 3);
    assert_check_config_refuses(&cfg, 3, "server.listen_port");
}

#[test]
fn check_config_bad_duration() {
    let cfg = base_config().replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nheader_read_timeout = \"soon\"\n",
    );
    assert_check_config_refuses(&cfg, 3, "server.header_read_timeout");
}

#[test]
fn check_config_ftp_upstream() {
    let cfg = base_config().replace("http://127.0.0.1:9000", "ftp://x");
    let line = line_of_last(&cfg, "ftp://x");
    assert_eq!(line, 16);
    assert_check_config_refuses(&cfg, line, "routes[0].upstream");
}

#[test]
fn check_config_route_without_upstream() {
    let cfg = base_config() + "\n[[routes]]\nprefix = \"/b/\"\nstrip_prefix = true\n";
    let (_dir, path) = write_config(&cfg);
    let out = run(&["check-config", "-c", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = path.display().to_string();
    assert!(stderr.contains("key `routes[1].upstream`"), "{stderr}");
    // The line points into the route that lacks the upstream.
    let line = reported_line(&stderr, &file);
    let first = line_of_last(&cfg, "[[routes]]");
    let last = cfg.lines().count();
    assert!(
        (first..=last).contains(&line),
        "line {line} is outside the route (lines {first}-{last}): {stderr}"
    );
}

#[test]
fn check_config_duplicate_user() {
    let cfg =
        base_config() + &format!("\n[[users]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n");
    let line = line_of_last(&cfg, "name = \"alice\"");
    assert_eq!(line, 19);
    assert_check_config_refuses(&cfg, line, "users[1].name");
}

#[test]
fn check_config_duplicate_prefix() {
    // "/api" and "/api/" are the same prefix.
    let cfg =
        base_config() + "\n[[routes]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n";
    let line = line_of_last(&cfg, "prefix = \"/api\"");
    assert_check_config_refuses(&cfg, line, "routes[1].prefix");
}

#[test]
fn check_config_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let out = run(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&path.display().to_string()),
        "{}",
        text(&out.stderr)
    );
}

// ------------------------------------------------------------ hash-password

#[test]
fn hash_password_from_stdin() {
    let mut child = whosthat()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pw\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let h = stdout.trim_end_matches('\n');
    assert!(
        h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stdout:?}"
    );
    assert!(!h.contains('\n'), "{stdout:?}");
    whosthat::password::check_phc(h).unwrap();
    let parsed = argon2::PasswordHash::new(h).unwrap();
    // The trailing newline is not part of the password.
    argon2::Argon2::default()
        .verify_password(b"pw", &parsed)
        .unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"pw\n", &parsed)
            .is_err()
    );
}

#[test]
fn hash_password_refuses_an_empty_password() {
    let mut child = whosthat()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
}

// -------------------------------------------------------------------- serve

/// A running `whosthat` process, killed if the test ends early.
struct Running {
    child: Child,
    /// Everything it wrote to stdout and stderr so far.
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(config: &Path) -> Running {
        let mut child = whosthat()
            .args(["-c", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting whosthat");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![
            Self::reader(stdout, log.clone(), tx.clone()),
            Self::reader(stderr, log.clone(), tx),
        ];
        Running {
            child,
            log,
            lines,
            readers,
        }
    }

    fn reader(
        pipe: impl Read + Send + 'static,
        log: Arc<Mutex<String>>,
        tx: mpsc::Sender<String>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                let _ = tx.send(line);
            }
        })
    }

    /// The address from the "whosthat is serving" log line.
    fn wait_for_listen(&self, limit: Duration) -> std::net::SocketAddr {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no \"whosthat is serving\" line; log:\n{}", self.log())
            });
            if line.contains("whosthat is serving") {
                let at = line
                    .find("listen=")
                    .unwrap_or_else(|| panic!("no listen= in {line:?}"));
                let addr: String = line[at + "listen=".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
                    .collect();
                return addr
                    .parse()
                    .unwrap_or_else(|_| panic!("bad address {addr:?} in {line:?}"));
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: sends a signal to the child this test started.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits for the pipes to close, so that the log is complete.
    fn finish_log(&mut self) -> String {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.log()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The shipped gateway.toml, on port 0, its API in front of `api` and its public
/// pages in front of `public`.
fn shipped_config_for(
    api: std::net::SocketAddr,
    public: std::net::SocketAddr,
) -> (tempfile::TempDir, PathBuf) {
    let shipped = std::fs::read_to_string(shipped_config()).unwrap();
    assert!(shipped.contains("listen = \"127.0.0.1:8080\""));
    assert!(shipped.contains("\"http://127.0.0.1:9000\""));
    assert!(shipped.contains("\"http://127.0.0.1:9001\""));
    let copy = shipped
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("http://127.0.0.1:9000", &format!("http://{api}"))
        .replace("http://127.0.0.1:9001", &format!("http://{public}"));
    write_config(&copy)
}

/// Whether `word` appears in `log` as a whole token (between non-alphanumerics).
fn has_word(log: &str, word: &str) -> bool {
    log.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == word)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_the_shipped_config_end_to_end() {
    let up = spawn_upstream().await;
    let public = spawn_upstream().await;
    let (_dir, config) = shipped_config_for(up.addr, public.addr);
    let mut gw = Running::start(&config);
    let addr = tokio::task::block_in_place(|| gw.wait_for_listen(HANG_GUARD));
    let url = |p: &str| format!("http://{addr}{p}");

    // The seed's request, as written.
    let r = request(
        Method::POST,
        &url("/auth/access_token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=password&username=stefano&password=foo&scope",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tokens = r.json();
    let access = tokens["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let refresh = tokens["refresh_token"].as_str().map(str::to_string);
    assert!(!access.is_empty());

    let r = get_with_token(&url("/api/"), &access).await;
    let seen = r.seen();
    assert_eq!(seen.uri(), "/");
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("stefano"));

    let r = get(&url("/public/"), &[]).await;
    assert_eq!(r.seen().uri(), "/");

    let r = get(&url("/api/"), &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    // /api/ went to the API upstream, /public/ to its own.
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(public.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    gw.terminate();
    let status = gw.wait_exit(HANG_GUARD).await;
    let log = tokio::task::block_in_place(|| gw.finish_log());
    let status =
        status.unwrap_or_else(|| panic!("still running {HANG_GUARD:?} after SIGTERM; log:\n{log}"));
    assert_eq!(status.code(), Some(0), "exit status {status}; log:\n{log}");

    assert!(log.contains("whosthat is serving"), "{log}");
    assert!(!log.contains("config warning"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI codes in a piped log:\n{log}");
    assert!(
        !log.contains(&access),
        "the access token is in the log:\n{log}"
    );
    if let Some(refresh) = &refresh {
        assert!(
            !log.contains(refresh.as_str()),
            "the refresh token is in the log:\n{log}"
        );
    }
    assert!(!has_word(&log, "foo"), "the password is in the log:\n{log}");
}

#[test]
fn serve_refuses_a_bad_config() {
    let cfg = base_config().replace("http://127.0.0.1:9000", "ftp://x");
    let (_dir, path) = write_config(&cfg);
    let out = whosthat()
        .args(["serve", "-c", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    let want = format!("{}:16: key `routes[0].upstream`", path.display());
    assert!(stderr.contains(&want), "expected {want:?} in: {stderr}");
}
