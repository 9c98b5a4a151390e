//! What `X-Auth-Assertion` costs a proxied request, measured with criterion:
//!
//! - `assertion/cached`: the request path on a warm cache (a map lookup and a
//!   reference-count increment), with 1 and 10,000 grants cached on the route;
//! - `assertion/fresh/{ES256,EdDSA,RS256}`: a fresh assertion, signed (what a
//!   grant's first request on a route pays, and once per four minutes after);
//! - `id_token/RS256`: an ID token as the token endpoint signs it (once per sign-in);
//! - `jwk/thumbprint`: the RFC 7638 thumbprint of a P-256 key.
//!
//! cargo bench --bench jose
//! cargo bench --bench jose -- assertion/   # one group

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use whosthat::assertion::RouteAssertion;
use whosthat::jose::keys::test_pem;
use whosthat::jose::{Alg, SigningKey};
use whosthat::scope::ScopeSet;
use whosthat::store::{Grant, now_secs};

// The gateway's allocator (src/main.rs).
#[global_allocator]
static GLOBAL: whosthat::alloc::Allocator = whosthat::alloc::Allocator;

const ISSUER: &str = "https://gw.example";

fn grant(user: &str) -> Arc<Grant> {
    Arc::new(Grant::new(
        Some(Arc::from(user)),
        Arc::from("cli"),
        ScopeSet::parse("read write").unwrap(),
    ))
}

fn key(alg: Alg) -> SigningKey {
    SigningKey::from_pem(&test_pem(alg)).expect("a key")
}

fn assertion(c: &mut Criterion) {
    let es = key(Alg::Es256);
    let now = now_secs();
    let mut g = c.benchmark_group("assertion");
    for cached in [1usize, 10_000] {
        let route = RouteAssertion::new(vec!["http://10.0.0.1:9000".into()]);
        let grants: Vec<Arc<Grant>> = (0..cached).map(|i| grant(&format!("user{i}"))).collect();
        for g in &grants {
            route.header(g, ISSUER, &es, now);
        }
        let hot = &grants[cached / 2];
        g.bench_with_input(BenchmarkId::new("cached", cached), &cached, |b, _| {
            b.iter(|| black_box(route.header(black_box(hot), ISSUER, &es, now)))
        });
    }
    for alg in [Alg::Es256, Alg::EdDsa, Alg::Rs256] {
        let k = key(alg);
        let user = grant("alice");
        // A new route each time would measure its allocation too: one route, and
        // a clock past every entry's renewal, so each call signs.
        let route = RouteAssertion::new(vec!["http://10.0.0.1:9000".into()]);
        let mut t = now;
        g.bench_function(BenchmarkId::new("fresh", alg.as_str()), |b| {
            b.iter(|| {
                t += 3600;
                black_box(route.header(&user, ISSUER, &k, t))
            })
        });
    }
    g.finish();
}

fn id_token_and_thumbprint(c: &mut Criterion) {
    let rs = key(Alg::Rs256);
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "alice", "aud": "rp", "azp": "rp", "iat": 1, "exp": 2,
        "auth_time": 1, "nonce": "n-0S6_WzA2Mj", "at_hash": "77QmUPtjPfzWtF2AnpK9RQ",
        "email": "alice@example.com", "email_verified": true,
    });
    c.bench_function("id_token/RS256", |b| {
        b.iter(|| {
            black_box(whosthat::jose::sign::compact(
                &rs,
                "JWT",
                black_box(&claims),
            ))
        })
    });
    let es = key(Alg::Es256);
    c.bench_function("jwk/thumbprint", |b| {
        b.iter(|| black_box(black_box(es.public_jwk()).thumbprint()))
    });
}

criterion_group!(benches, assertion, id_token_and_thumbprint);
criterion_main!(benches);
