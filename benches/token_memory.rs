//! Memory per live access token at 1,000,000 tokens, and what a sweep of them costs.
//!
//! cargo bench --bench token_memory
//! TOKENS=200000 cargo bench --bench token_memory     # a smaller map
//!
//! Each scenario runs in a fresh child process (this binary re-run with
//! `--scenario NAME`), so one scenario's freed memory does not hide the next one's.
//! RSS comes from /proc/self/statm, read after the empty store exists and again
//! after the inserts: bytes per token = RSS delta / tokens. Tokens are created
//! (`new_token`, the OS random source), hashed and dropped one at a time, as the
//! token endpoint does: the store keeps only `TokenHash`, so the 43-byte strings are
//! not part of what is measured.
//!
//! Scenarios:
//! - `own-grant`: one `Arc<Grant>` per token, for a user from a set of 100 (user and
//!   client names are shared `Arc<str>`s, the scope set is built per login) -- what
//!   password logins produce. Also times `sweep_expired` with nothing expired and
//!   with half the tokens expired.
//! - `shared-grant`: every token points at one `Arc<Grant>` (the floor: key + record
//!   + map overhead).
//! - `login-with-refresh`: a password login of a client allowed `refresh_token`
//!   stores an access and a refresh token sharing one grant; bytes per login.
//!
//! Lines starting with `token_memory:` are machine-readable (bench/run.sh reads them).

use std::future::Future;
use std::pin::pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use whosthat::scope::ScopeSet;
use whosthat::store::{
    Grant, MemoryStore, TokenHash, TokenRecord, TokenStore, new_token, now_secs,
};

/// The memory store's futures are ready on their first poll; anything else is a bug here.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the store's future was not ready on its first poll"),
    }
}

/// Resident set size in bytes (second field of /proc/self/statm, in pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    pages * page_size()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

fn token_count() -> usize {
    std::env::var("TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1_000_000)
}

const SCENARIOS: [&str; 3] = ["own-grant", "shared-grant", "login-with-refresh"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench` (and any filter); only `--scenario NAME` matters here.
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        let name = args.get(i + 1).expect("--scenario needs a name");
        run_scenario(name);
        return;
    }
    let n = token_count();
    println!(
        "token_memory: {n} tokens per scenario; key {} B, record {} B, grant {} B (+16 B Arc counts)",
        size_of::<TokenHash>(),
        size_of::<TokenRecord>(),
        size_of::<Grant>(),
    );
    let exe = std::env::current_exe().expect("own executable path");
    for name in SCENARIOS {
        let out = Command::new(&exe)
            .args(["--scenario", name])
            .output()
            .expect("running a scenario in a child process");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "scenario {name} failed");
    }
}

fn users() -> Vec<Arc<str>> {
    (0..100).map(|i| Arc::from(format!("user{i:02}"))).collect()
}

/// A grant as a password login makes it: shared user and client names, a scope set
/// built for this login, a fresh family id.
fn login_grant(user: &Arc<str>, client: &Arc<str>, family: u64) -> Arc<Grant> {
    Arc::new(Grant {
        user: Some(user.clone()),
        client: client.clone(),
        scope: ScopeSet::parse("read write").expect("valid scope"),
        family,
    })
}

fn fresh_key() -> TokenHash {
    // The string lives only for this call, as in the token endpoint.
    TokenHash::of(&new_token())
}

fn run_scenario(name: &str) {
    let n = token_count();
    let users = users();
    let client: Arc<str> = Arc::from("bench-cli");
    let shared = login_grant(&users[0], &client, 1);
    let now = now_secs();
    let store = MemoryStore::new();
    let before = rss_bytes();
    let started = Instant::now();
    for i in 0..n {
        let grant = match name {
            "shared-grant" => shared.clone(),
            _ => login_grant(&users[i % users.len()], &client, i as u64),
        };
        // Half the tokens expire in 30 minutes, half in an hour: a sweep at +45 min
        // drops half of them.
        let expires_at = now + if i % 2 == 0 { 3600 } else { 1800 };
        if name == "login-with-refresh" {
            let rec = TokenRecord {
                grant: grant.clone(),
                issued_at: now,
                expires_at: now + 14 * 86400,
            };
            ready(store.put_refresh(fresh_key(), rec)).expect("memory store put");
        }
        let rec = TokenRecord {
            grant,
            issued_at: now,
            expires_at,
        };
        ready(store.put_access(fresh_key(), rec)).expect("memory store put");
    }
    let insert_time = started.elapsed();
    let after = rss_bytes();
    assert_eq!(store.token_counts().0, n);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    let unit = if name == "login-with-refresh" {
        "login (access + refresh)"
    } else {
        "token"
    };
    println!(
        "token_memory: scenario={name} tokens={n} rss_before_mib={:.1} rss_after_mib={:.1} bytes_per_{}={per:.0} insert_ns_per={:.0}",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        if unit == "token" { "token" } else { "login" },
        insert_time.as_nanos() as f64 / n as f64,
    );
    println!("  {name}: {per:.0} B per {unit}");

    if name == "own-grant" {
        // Nothing expired: the cost of a sweep that walks the map and drops nothing.
        let mut walks: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                let dropped = ready(store.sweep_expired(now)).expect("sweep");
                assert_eq!(dropped, 0);
                t.elapsed()
            })
            .collect();
        walks.sort();
        let t = Instant::now();
        let dropped = ready(store.sweep_expired(now + 2700)).expect("sweep");
        let half = t.elapsed();
        assert_eq!(dropped, n / 2);
        println!(
            "token_memory: sweep tokens={n} none_expired_ms={:.2} half_expired_ms={:.2}",
            walks[1].as_secs_f64() * 1e3,
            half.as_secs_f64() * 1e3,
        );
        println!(
            "  sweep_expired over {n}: nothing expired {:.1} ms (median of 3), half expired {:.1} ms; RSS after the half sweep {:.1} MiB",
            walks[1].as_secs_f64() * 1e3,
            half.as_secs_f64() * 1e3,
            rss_bytes() as f64 / 1048576.0,
        );
    }
}
