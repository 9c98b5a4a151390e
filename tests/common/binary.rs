//! The real `whosthat` binary, serving a config file with JSON logs; its
//! stdout collected line by line. Killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::HANG_GUARD;

pub struct Running {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Reads stdout until the child closes it.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// `whosthat --log-format json -c config` with `RUST_LOG=info`.
    pub fn start(config: &Path) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_whosthat"))
            .args(["--log-format", "json", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Running {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Every line the child wrote, once it has closed its stdout (it has exited).
    pub fn all_lines(&mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.lines.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// The first log line containing `needle`, as JSON (a hang guard only).
    pub async fn wait_for_line(&self, needle: &str) -> serde_json::Value {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// SIGTERM, then waits for a graceful stop (exit 0).
    pub async fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + HANG_GUARD;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "did not stop after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
