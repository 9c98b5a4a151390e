//! The gateway's per-request hot paths, measured with criterion:
//!
//! - `token/*`: a bearer token's lookup in a `MemoryStore` holding 100,000 live access
//!   tokens (hash + `get_access`, hit and miss), and `TokenHash::of` alone;
//! - `route/*`: `normalize_path` + `RouteTable::find` with 1, 100 and 10,000 routes,
//!   for a path that hits a route, the same in upper case, and one that hits none;
//! - `headers/*`: `upstream_request_headers` on a realistic request head;
//! - `argon2/verify_default_params`: one argon2id verification of a hash made by
//!   `whosthat::password::hash_password` (what one password login costs in CPU).
//!   `bench/run.sh` reads its median from
//!   `target/criterion/argon2/verify_default_params/new/estimates.json`;
//! - `ratelimit/*`: what a route's `rate_limit` adds to a request: one allowed
//!   `check_local` (memory store) on one hot key and walking 100,000 distinct keys, one
//!   `check` against a shared bucket while a lease is held (the common case with Redis:
//!   no round trip; the bucket here is in memory and answers batches at once), and
//!   rendering the `RateLimit-Policy` / `RateLimit` fields every allowed answer carries;
//! - `audit/new_request_id`: the `X-Request-Id` made for every request;
//! - `metrics/*`: what every answer costs in metrics: a route's request count and
//!   latency (on the counters the route carries, 100 routes configured), a refusal
//!   counted by its side (an auth failure), and a token issued by grant.
//!
//! cargo bench --bench hot_paths                 # everything
//! cargo bench --bench hot_paths -- --quick      # a fast, rougher pass
//! cargo bench --bench hot_paths -- route/       # one group
//! cargo bench --bench hot_paths -- 'ratelimit/|audit/'  # one filter: a regex

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordVerifier};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

use whosthat::audit::new_request_id;
use whosthat::config::GrantType;
use whosthat::error::GatewayError;
use whosthat::metrics::Metrics;
use whosthat::password::hash_password;
use whosthat::proxy::{ForwardInfo, upstream_request_headers};
use whosthat::ratelimit::{
    BucketTake, RateKey, RateKeyKind, RateLimitSpec, RateLimiter, SharedBuckets,
};
use whosthat::routes::{Route, RouteTable, Upstream, normalize_path, normalize_prefix};
use whosthat::scope::ScopeSet;
use whosthat::store::{
    Grant, MemoryStore, TokenHash, TokenRecord, TokenStore, new_token, now_secs,
};

// The gateway's allocator (src/main.rs), so allocation costs and RSS are the ones it has.
#[global_allocator]
static GLOBAL: whosthat::alloc::Allocator = whosthat::alloc::Allocator;

/// Resolves a future that is ready on its first poll (the memory store's are:
/// `std::future::ready` behind a box). Panics otherwise, so a store that starts
/// doing real I/O is noticed instead of silently measured wrong.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the store's future was not ready on its first poll"),
    }
}

fn grant(user: &str) -> Arc<Grant> {
    Arc::new(Grant::new(
        Some(Arc::from(user)),
        Arc::from("bench-cli"),
        ScopeSet::parse("read write").expect("valid scope"),
    ))
}

const LIVE_TOKENS: usize = 100_000;

fn token_lookup(c: &mut Criterion) {
    let store = MemoryStore::new();
    let now = now_secs();
    let users: Vec<Arc<Grant>> = (0..100).map(|i| grant(&format!("user{i}"))).collect();
    let tokens: Vec<String> = (0..LIVE_TOKENS).map(|_| new_token()).collect();
    for (i, t) in tokens.iter().enumerate() {
        let rec = TokenRecord {
            grant: users[i % users.len()].clone(),
            family: i as u64,
            issued_at: now,
            expires_at: now + 3600,
            cnf: None,
        };
        ready(store.put_access(TokenHash::of(t), rec)).expect("memory store put");
    }
    // Tokens that were never issued, same shape as real ones.
    let unknown: Vec<String> = (0..4096).map(|_| new_token()).collect();

    let mut g = c.benchmark_group("token");
    g.bench_function("hash_of", |b| {
        let t = &tokens[0];
        b.iter(|| TokenHash::of(black_box(t)))
    });
    // Walk the whole set, so the map's memory is touched as live traffic would.
    g.bench_function("lookup_hit_100k", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % tokens.len();
            let rec = ready(store.get_access(TokenHash::of(black_box(&tokens[i]))))
                .expect("memory store get");
            assert!(rec.is_some());
            rec
        })
    });
    g.bench_function("lookup_miss_100k", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % unknown.len();
            let rec = ready(store.get_access(TokenHash::of(black_box(&unknown[i]))))
                .expect("memory store get");
            assert!(rec.is_none());
            rec
        })
    });
    g.finish();
}

fn route(prefix: &str) -> Route {
    Route {
        prefix: normalize_prefix(prefix).expect("valid prefix"),
        upstreams: vec![Upstream::parse("http://127.0.0.1:9000").expect("valid upstream")],
        strip_prefix: true,
        scopes: ScopeSet::parse("read").expect("valid scope"),
        methods: vec![Method::GET, Method::POST],
        auth: true,
        timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

fn route_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [1usize, 100, 10_000] {
        let table = RouteTable::new((0..n).map(|i| route(&format!("/svc{i}/v1/"))).collect());
        // Several segments deeper than the prefix: find() walks back one segment at a time.
        let hit = format!("/svc{}/v1/orders/12345/items/7", n / 2);
        let miss = "/nosuch/v1/orders/12345/items/7".to_string();
        assert!(table.find(&normalize_path(&hit).unwrap()).is_some());
        assert!(table.find(&normalize_path(&miss).unwrap()).is_none());
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, p| {
            b.iter(|| {
                let path = normalize_path(black_box(p)).expect("plain path");
                table.find(&path).map(|r| r.prefix.len())
            })
        });
        // Upper-case letters: the lookup lower-cases the path on the stack first.
        let upper = hit.to_ascii_uppercase();
        assert!(table.find(&normalize_path(&upper).unwrap()).is_some());
        g.bench_with_input(BenchmarkId::new("hit_upper_case", n), &upper, |b, p| {
            b.iter(|| {
                let path = normalize_path(black_box(p)).expect("plain path");
                table.find(&path).map(|r| r.prefix.len())
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, p| {
            b.iter(|| {
                let path = normalize_path(black_box(p)).expect("plain path");
                table.find(&path).map(|r| r.prefix.len())
            })
        });
    }
    g.finish();
}

fn header_rewrite(c: &mut Criterion) {
    // What a browser-ish or SDK client sends through a gateway: 11 headers, among them a
    // bearer token, a Connection list naming an extra hop header, and spoof attempts.
    let mut template = HeaderMap::new();
    let mut add = |name: &'static str, value: &'static str| {
        template.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    };
    add("host", "api.example.com");
    add("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench/1.0");
    add("accept", "application/json, text/plain, */*");
    add("accept-encoding", "gzip, deflate, br");
    add("accept-language", "en-GB,en;q=0.9");
    add(
        "authorization",
        "Bearer R0ayJ7n1Hc2l1lq9yFJ0l9ZbC8m3f6Xk2sWq8tPz0aE",
    );
    add("connection", "keep-alive, x-hop");
    add("x-hop", "1");
    add("x-forwarded-for", "10.0.0.1");
    add("x-auth-user", "mallory");
    add("x-request-id", "4f9c2a6e-8d7b-4e1a-9c3f-2b5d6e7f8a9b");
    let grant = grant("stefano");
    let peer = HeaderValue::from_static("127.0.0.1");
    let info = ForwardInfo {
        tls: false,
        forwarded_for: &peer,
        host: Some(HeaderValue::from_static("api.example.com")),
        identity: Some(&grant),
        assertion: None,
    };
    let mut g = c.benchmark_group("headers");
    g.bench_function("upstream_request_headers", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| upstream_request_headers(h, Version::HTTP_11, black_box(&info)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn argon2_verify(c: &mut Criterion) {
    // As src/password.rs does it: hash with the default parameters, verify the PHC string.
    let phc = hash_password(b"bench-password");
    let mut g = c.benchmark_group("argon2");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("verify_default_params", |b| {
        b.iter(|| {
            Argon2::default()
                .verify_password(black_box(b"bench-password"), phc.as_str())
                .is_ok()
        })
    });
    g.finish();
}

/// A limit that never refuses, as bench/run.sh configures it: what is measured is the
/// check. `burst` defaults to `requests` in the config, so it is 100,000,000 here too,
/// and a lease (a tenth of the quota) is 10,000,000 units.
fn never_refusing() -> RateLimitSpec {
    RateLimitSpec {
        requests: 100_000_000,
        per: Duration::from_secs(1),
        burst: 100_000_000,
        key: RateKeyKind::Client,
    }
}

/// A shared bucket that grants every batch in full at once: what is left to measure is
/// the instance's side (spending a leased unit), not Redis.
struct InstantBuckets;

impl SharedBuckets for InstantBuckets {
    fn take(
        &self,
        take: BucketTake,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(u32, u64), String>> + Send + '_>> {
        Box::pin(std::future::ready(Ok((take.want, 0))))
    }
}

fn rate_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    // The gateway builds the key from the grant's client id (an Arc clone) per request.
    let client: Arc<str> = Arc::from("bench-cli");

    let limiter = RateLimiter::new(never_refusing(), "/api");
    g.bench_function("check_local_hot_key", |b| {
        b.iter(|| {
            let d = limiter.check_local(&RateKey::Client(black_box(&client).clone()));
            assert!(d.allowed);
            d
        })
    });

    // Many callers: 100,000 keys, each seen before (an entry exists), walked with a
    // stride so that the map's memory is touched as live traffic would.
    const KEYS: usize = 100_000;
    let many = RateLimiter::new(never_refusing(), "/api");
    let keys: Vec<RateKey> = (0..KEYS)
        .map(|i| RateKey::Client(Arc::from(format!("client-{i}"))))
        .collect();
    for k in &keys {
        many.check_local(k);
    }
    g.bench_function("check_local_100k_keys", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let d = many.check_local(black_box(&keys[i]));
            assert!(d.allowed);
            d
        })
    });

    // With Redis: units are spent from a local lease; a refill is spawned in the
    // background when half of it is gone. A current-thread runtime, as one of the
    // gateway's workers; the loop yields every 1,024 checks so a spawned refill runs
    // (a worker yields between requests), which adds well under 1 ns per check.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let shared_limiter = Arc::new(RateLimiter::new(never_refusing(), "/api"));
    let shared: Arc<dyn SharedBuckets> = Arc::new(InstantBuckets);
    // The first lease: taken before measuring.
    rt.block_on(shared_limiter.check(&RateKey::Client(client.clone()), Some(&shared)));
    g.bench_function("check_shared_lease_held", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters {
                    let key = RateKey::Client(black_box(&client).clone());
                    let d = shared_limiter.check(&key, Some(&shared)).await;
                    assert!(d.allowed);
                    black_box(d);
                    if n % 1024 == 1023 {
                        tokio::task::yield_now().await;
                    }
                }
                start.elapsed()
            })
        })
    });

    // Every allowed answer under a limit carries both fields (src/gateway.rs).
    let spec = never_refusing();
    let d = limiter.check_local(&RateKey::Client(client.clone()));
    g.bench_function("header_fields", |b| {
        b.iter(|| {
            let s = black_box(&spec);
            (s.policy_header(), black_box(&d).header(s))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("audit");
    g.bench_function("new_request_id", |b| b.iter(new_request_id));
    g.finish();
}

fn metrics_recording(c: &mut Criterion) {
    let m = Metrics::new();
    // 100 routes, as in a mid-sized config; each carries its counters.
    let table = RouteTable::new((0..100).map(|i| route(&format!("/svc{i}/v1/"))).collect());
    let hit = &table.routes()[50];
    let mut g = c.benchmark_group("metrics");
    g.bench_function("request_100_routes", |b| {
        b.iter(|| {
            black_box(hit)
                .stats
                .record(black_box(200), black_box(Duration::from_micros(700)))
        })
    });
    let refused = GatewayError::NoToken;
    g.bench_function("rejected_auth_failure", |b| {
        b.iter(|| m.rejected(black_box(&refused)))
    });
    g.bench_function("token_issued", |b| {
        b.iter(|| m.token_issued(black_box(GrantType::Password)))
    });
    g.finish();
}

criterion_group!(
    benches,
    token_lookup,
    route_match,
    header_rewrite,
    argon2_verify,
    rate_limit,
    metrics_recording
);
criterion_main!(benches);
