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
//! Scenarios (logins by users from a set of 100, one client, scope "read write"):
//! - `interned`: what the token endpoint does: each login builds its scope set and
//!   asks the `Grants` interner for the `Arc<Grant>` of (user, client, scope), so the
//!   million tokens share 100 grants. Also times `sweep_expired` with nothing expired
//!   and with half the tokens expired.
//! - `grant-per-token`: every token its own `Arc<Grant>` (`Grant::new`): the cost when
//!   every token has a different identity, or without the interner.
//! - `shared-grant`: every token points at one `Arc<Grant>` (the floor: key + record
//!   + map overhead).
//! - `login-with-refresh`: as `interned`, for a client allowed `refresh_token`: each
//!   login stores an access and a refresh token; bytes per login.
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
    Grant, Grants, MemoryStore, TokenHash, TokenRecord, TokenStore, new_token, now_secs,
};

// The gateway's allocator (src/main.rs), so allocation costs and RSS are the ones it has.
#[global_allocator]
static GLOBAL: whosthat::alloc::Allocator = whosthat::alloc::Allocator;

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

const SCENARIOS: [&str; 4] = [
    "interned",
    "grant-per-token",
    "shared-grant",
    "login-with-refresh",
];

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
        "token_memory: {n} tokens per scenario; key {} B + record {} B = {} B per map bucket \
         (+1 control byte; buckets are a power of two per shard, at most 7/8 full); \
         grant {} B (+16 B Arc counts)",
        size_of::<TokenHash>(),
        size_of::<TokenRecord>(),
        size_of::<(TokenHash, TokenRecord)>(),
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

/// The scope set a login computes (a fresh one each time, as the endpoint builds it).
fn login_scope() -> ScopeSet {
    ScopeSet::parse("read write").expect("valid scope")
}

fn fresh_key() -> TokenHash {
    // The string lives only for this call, as in the token endpoint.
    TokenHash::of(&new_token())
}

fn run_scenario(name: &str) {
    let n = token_count();
    let users = users();
    let client: Arc<str> = Arc::from("bench-cli");
    let shared = Arc::new(Grant::new(
        Some(users[0].clone()),
        client.clone(),
        login_scope(),
    ));
    let now = now_secs();
    let store = MemoryStore::new();
    let grants = Grants::default();
    let before = rss_bytes();
    let started = Instant::now();
    for i in 0..n {
        let user = Some(users[i % users.len()].clone());
        let grant = match name {
            "shared-grant" => shared.clone(),
            "grant-per-token" => Arc::new(Grant::new(user, client.clone(), login_scope())),
            _ => grants.intern(user, client.clone(), login_scope()),
        };
        // One family per login, as the endpoint draws one (random there; the value
        // does not change the memory).
        let family = i as u64;
        // Half the tokens expire in 30 minutes, half in an hour: a sweep at +45 min
        // drops half of them.
        let expires_at = now + if i % 2 == 0 { 3600 } else { 1800 };
        if name == "login-with-refresh" {
            let rec = TokenRecord {
                grant: grant.clone(),
                family,
                issued_at: now,
                expires_at: now + 14 * 86400,
                cnf: None,
            };
            ready(store.put_refresh(fresh_key(), rec)).expect("memory store put");
        }
        let rec = TokenRecord {
            grant,
            family,
            issued_at: now,
            expires_at,
            cnf: None,
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
    println!(
        "  {name}: {per:.0} B per {unit} ({} grants held)",
        if name == "interned" || name == "login-with-refresh" {
            grants.len()
        } else if name == "shared-grant" {
            1
        } else {
            n
        }
    );

    if name == "interned" {
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
