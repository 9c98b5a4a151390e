//! What one idle client connection holds in the gateway, by allocation size.
//!
//! The gateway runs in this process (`whosthat::serve`, plain and TLS listeners
//! with ECDSA P-256, before a small upstream) behind a counting allocator over
//! the gateway's own (`whosthat::alloc`); `bench/idle_conns.py` (another
//! process, so its memory is not counted) opens CONNS connections of each kind,
//! makes one request on each and leaves them idle. What is still allocated
//! then, minus what was before, per connection, is printed with its breakdown
//! by allocation size, and the process's RSS growth per connection beside it.
//! Heap bytes are exact and do not depend on what else the machine runs; RSS
//! also counts the pages the allocator keeps.
//!
//! cargo bench --bench conn_memory               # 2,000 connections of each kind
//! CONNS=500 cargo bench --bench conn_memory     # fewer
//! KINDS=http1,tls-http1 SETTLE=5 cargo bench --bench conn_memory
//!                                               # some kinds; idle 5 s, not 3
//!
//! Needs python3 (the client).

use std::alloc::{GlobalAlloc, Layout};
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Live allocations by size class: class `k` holds sizes in (2^(k-1), 2^k].
const CLASSES: usize = 40;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
/// Live allocations by exact size, below [`EXACT`] bytes (SIZES=1 prints them).
const EXACT: usize = 1 << 16;
static BY_SIZE: [AtomicI64; EXACT] = [const { AtomicI64::new(0) }; EXACT];

fn class(size: usize) -> usize {
    (usize::BITS - size.saturating_sub(1).leading_zeros()) as usize % CLASSES
}

fn count(size: usize, sign: i64) {
    LIVE_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed);
    LIVE[class(size)].fetch_add(sign, Ordering::Relaxed);
    if size < EXACT {
        BY_SIZE[size].fetch_add(sign, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the gateway's allocator unchanged; the
// counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { whosthat::alloc::Allocator.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { whosthat::alloc::Allocator.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        unsafe { whosthat::alloc::Allocator.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        unsafe { whosthat::alloc::Allocator.realloc(ptr, layout, new_size) }
    }
}

// The gateway's allocator (src/main.rs), counted.
#[global_allocator]
static GLOBAL: Counting = Counting;

struct Snapshot {
    bytes: i64,
    sizes: Vec<i64>,
    classes: [i64; CLASSES],
    rss_kib: i64,
}

fn snapshot() -> Snapshot {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    Snapshot {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        classes: std::array::from_fn(|k| LIVE[k].load(Ordering::Relaxed)),
        sizes: BY_SIZE.iter().map(|n| n.load(Ordering::Relaxed)).collect(),
        rss_kib,
    }
}

/// The upstream, on a thread and runtime of its own: `client` blocks this
/// runtime while it waits for bench/idle_conns.py.
fn spawn_upstream() -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"hello from upstream\n",
                        ))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// Starts the gateway on a free port: cleartext, or TLS with a fresh ECDSA P-256
/// certificate written into `dir`.
async fn spawn_gateway(upstream: SocketAddr, tls: bool, dir: &Path) -> SocketAddr {
    let mut server = String::from(
        "listen = \"127.0.0.1:0\"\nheader_read_timeout = \"120s\"\nmax_connections_per_ip = 1000000\n",
    );
    if tls {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        server.push_str("tls = { cert = \"cert.pem\", key = \"key.pem\" }\n");
    }
    let text = format!(
        "[server]\n{server}\n[[routes]]\nprefix = \"/api/\"\nupstream = \"http://{upstream}\"\nstrip_prefix = true\nauth = false\n"
    );
    let path = dir.join(if tls { "tls.toml" } else { "plain.toml" });
    std::fs::write(&path, text).unwrap();
    let config = whosthat::Config::load(&path).expect("bench config is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(whosthat::serve(
        Arc::new(config),
        listener,
        std::future::pending(),
    ));
    addr
}

/// Runs bench/idle_conns.py; with `hold`, returns once its connections are
/// ready (the child holds them until killed).
fn client(port: u16, count: usize, flags: &[&str], hold: bool) -> std::process::Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/idle_conns.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--count", &count.to_string()])
        .args(["--path", "/api/", "--timeout", "120"])
        .args(["--hold", if hold { "300" } else { "0" }])
        .args(flags)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs bench/idle_conns.py");
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ready ") {
            let open: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
            assert_eq!(
                open, count,
                "the client opened {open} of {count} connections"
            );
            break;
        }
    }
    child
}

fn range(k: usize) -> String {
    if k == 0 {
        return "0 B".into();
    }
    let hi = 1u64 << k;
    format!("{}-{} B", hi / 2 + 1, hi)
}

async fn measure(name: &str, port: u16, count: usize, flags: &[&str]) {
    // Warm-up: the connection machinery's one-off allocations happen here.
    let mut warm = client(port, 300, flags, false);
    let _ = warm.wait();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = snapshot();
    let mut held = client(port, count, flags, true);
    // Quiet HTTP/1 connections park a fraction of a second after their last
    // byte (`server::park`): what is measured is what an idle connection holds
    // once settled.
    tokio::time::sleep(settle()).await;
    let after = snapshot();
    let _ = held.kill();
    let _ = held.wait();
    let n = count as f64;
    let per = (after.bytes - before.bytes) as f64 / n;
    let rss = (after.rss_kib - before.rss_kib) as f64 * 1024.0 / n;
    let allocs: i64 = (0..CLASSES)
        .map(|k| after.classes[k] - before.classes[k])
        .sum();
    println!(
        "conn_memory: kind={name} conns={count} heap_bytes_per_conn={per:.0} ({:.2} KiB) allocations_per_conn={:.1} rss_bytes_per_conn={rss:.0}",
        per / 1024.0,
        allocs as f64 / n
    );
    for k in (0..CLASSES).rev() {
        let d = (after.classes[k] - before.classes[k]) as f64 / n;
        if d.abs() >= 0.05 {
            println!("  {:>13}: {d:>5.2} per connection", range(k));
        }
    }
    if std::env::var_os("SIZES").is_some() {
        // The exact sizes that account for the most bytes per connection.
        let mut by: Vec<(usize, f64)> = (0..EXACT)
            .map(|z| (z, (after.sizes[z] - before.sizes[z]) as f64 / n))
            .filter(|(_, d)| d.abs() >= 0.05)
            .collect();
        by.sort_by(|a, b| (b.1 * b.0 as f64).total_cmp(&(a.1 * a.0 as f64)));
        for (z, d) in by.iter().take(30) {
            println!("  {z:>7} B: {d:>5.2} per connection");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// How long the connections are left idle before they are counted: SETTLE
/// seconds, 3 by default.
fn settle() -> Duration {
    let secs = std::env::var("SETTLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// Whether KINDS (comma-separated, e.g. `http1,tls-http1`; all by default)
/// names `kind`.
fn wanted(kind: &str) -> bool {
    std::env::var("KINDS").map_or(true, |k| k.split(',').any(|w| w.trim() == kind))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported.
    let count: usize = std::env::var("CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let upstream = spawn_upstream();
    let plain = spawn_gateway(upstream, false, dir.path()).await;
    let tls = spawn_gateway(upstream, true, dir.path()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kinds: [(&str, u16, &[&str]); 4] = [
        ("http1", plain.port(), &[]),
        ("h2c", plain.port(), &["--h2"]),
        ("tls-http1", tls.port(), &["--tls"]),
        ("tls-h2", tls.port(), &["--tls", "--h2"]),
    ];
    for (kind, port, flags) in kinds {
        if wanted(kind) {
            measure(kind, port, count, flags).await;
        }
    }
}
