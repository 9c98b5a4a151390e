//! A gateway whose config file the test rewrites and reloads (as SIGHUP would),
//! waiting until each reload has been applied or refused.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::{HANG_GUARD, get};

pub struct Reloading {
    pub gw_addr: std::net::SocketAddr,
    pub path: PathBuf,
    reload: mpsc::UnboundedSender<()>,
    /// Reloads asked for so far (names each one's marker route).
    reloads: AtomicUsize,
    _stop: oneshot::Sender<()>,
    pub dir: tempfile::TempDir,
}

impl Reloading {
    pub fn url(&self, p: &str) -> String {
        format!("http://{}{}", self.gw_addr, p)
    }

    /// Writes `text` (a valid config) and asks for a reload; waits until it has been
    /// applied. A route only this reload adds, `/reload-N/` to a closed port (502
    /// once it is there, 404 before), tells when, however long the reload waits
    /// for CPU.
    pub async fn reload_with(&self, text: &str) {
        let n = self.reloads.fetch_add(1, Ordering::SeqCst);
        let marker = format!("/reload-{n}/");
        write_atomically(
            &self.path,
            &format!(
                "{text}\n[[routes]]\nprefix = \"{marker}\"\nupstream = \"http://127.0.0.1:1\"\nauth = false\n"
            ),
        );
        self.reload.send(()).unwrap();
        let url = self.url(&format!("{marker}x"));
        let deadline = Instant::now() + HANG_GUARD;
        while get(&url, &[]).await.status == 404 {
            assert!(Instant::now() < deadline, "reload {n} not applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes `text` (an invalid config) and asks for a reload; waits until the
    /// gateway has logged that it refused it, which is all a refusal does.
    pub async fn refused_reload(&self, text: &str) {
        let before = refusals(&self.path);
        write_atomically(&self.path, text);
        self.reload.send(()).unwrap();
        let deadline = Instant::now() + HANG_GUARD;
        while refusals(&self.path) == before {
            assert!(Instant::now() < deadline, "reload not refused: {text:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Warnings and errors logged by the gateways of this test binary.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Sends this binary's warnings and errors to [`LOG`] (once).
fn capture_log() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        struct Sink;
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                LOG.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(|| Sink)
            .try_init();
    });
}

/// Refused reloads of the config file at `path` so far (the refusal names the file).
pub fn refusals(path: &Path) -> usize {
    let file = path.display().to_string();
    String::from_utf8_lossy(&LOG.lock().unwrap())
        .lines()
        .filter(|l| l.contains("reload refused") && l.contains(&file))
        .count()
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub async fn start(text: &str) -> Reloading {
    capture_log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = whosthat::Config::load(&path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let reload = whosthat::Reload {
        path: path.clone(),
        requests: rx,
    };
    tokio::spawn(whosthat::serve_with(
        Arc::new(config),
        listener,
        async move {
            let _ = stopped.await;
        },
        Some(reload),
    ));
    Reloading {
        gw_addr,
        path,
        reload: tx,
        reloads: AtomicUsize::new(0),
        _stop: stop,
        dir,
    }
}
