//! A `redis-server` of a test's own, on a free port (never 6379), started from
//! PATH and killed on drop. Tests that need Redis fail without it; they never skip.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{HANG_GUARD, closed_port};

/// A `redis-server` child process on 127.0.0.1, nothing kept on disk. Killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

pub fn spawn_redis_server(port: u16) -> Child {
    let port_s = port.to_string();
    match Command::new("redis-server")
        .args([
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "redis-server is not on PATH: the Redis store tests need it \
             (e.g. `apt-get install redis-server`); they do not skip without it"
        ),
        Err(e) => panic!("could not start redis-server: {e}"),
    }
}

/// `PING` over raw TCP answers `+PONG`.
pub fn redis_pong(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.starts_with("+PONG")
}

impl Redis {
    /// A fresh server on a free port (never 6379), accepting connections.
    pub async fn start() -> Redis {
        tokio::task::block_in_place(|| {
            for _ in 0..5 {
                let port = closed_port();
                if port == 6379 {
                    continue;
                }
                let mut r = Redis {
                    port,
                    child: Some(spawn_redis_server(port)),
                };
                if r.wait_ready() {
                    return r;
                }
                // Most likely someone took the port in between: try another.
                r.kill();
            }
            panic!("redis-server did not come up on any of 5 free ports");
        })
    }

    /// Polls `PING` until `+PONG` (true), the child exits or the hang guard passes (false).
    pub fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + HANG_GUARD;
        while Instant::now() < deadline {
            if redis_pong(self.port) {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                eprintln!("redis-server on port {} exited: {status}", self.port);
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, then reap: when this returns, nothing listens on the port.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port.
    pub async fn restart(&mut self) {
        tokio::task::block_in_place(|| {
            self.kill();
            self.child = Some(spawn_redis_server(self.port));
            assert!(
                self.wait_ready(),
                "redis-server did not come back on port {}",
                self.port
            );
        })
    }

    /// Sends `sig` to the server process.
    pub fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// SIGSTOP: the server keeps its sockets open but answers nothing, as over a
    /// network that silently drops packets.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Starts a server on the same port after [`Redis::kill`].
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.restart().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
