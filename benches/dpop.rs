//! What DPoP (RFC 9449) costs per request, measured with criterion:
//!
//! - `dpop/proof_check/{ES256,RS256}`: `check_dpop_proof` alone: parse the JWS,
//!   check `htm`, `htu`, `iat`, `ath`, verify the signature with the proof's
//!   own JWK, and compute the key's thumbprint (one signature verification);
//! - `dpop/guard/{bearer,dpop_es256,dpop_rs256}`: the whole token check of a
//!   proxied request (the bearer guard, `whosthat::oauth::bearer::require_token`) against a `MemoryStore`
//!   holding 10,000 live tokens: for a bearer token (the path every bearer
//!   request takes, to compare with `token/lookup_hit` of `hot_paths`), and for
//!   a DPoP-bound token with a fresh proof (lookup + proof check + the `jti`
//!   recorded in the store).
//!
//! Every iteration needs a proof never seen (a replay is refused), so proofs
//! are signed in criterion's untimed setup (`iter_batched`).
//!
//! cargo bench --bench dpop
//! cargo bench --bench dpop -- --quick

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use whosthat::Config;
use whosthat::jose::verify::{DpopRequest, PublicJwk, check_dpop_proof, normalize_url};
use whosthat::oauth::bearer::{RequestHead, require_token};
use whosthat::scope::ScopeSet;
use whosthat::store::{
    Grant, MemoryStore, TokenHash, TokenRecord, TokenStore, new_token, now_secs,
};

#[global_allocator]
static GLOBAL: whosthat::alloc::Allocator = whosthat::alloc::Allocator;

/// Resolves a future that is ready on its first poll (the memory store's are).
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the future was not ready on its first poll"),
    }
}

const HOST: &str = "gw.example";
const PATH: &str = "/api/orders";

struct Key {
    alg: Algorithm,
    signer: EncodingKey,
    jwk: Value,
}

fn es256() -> Key {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
    let raw = kp.public_key_raw();
    Key {
        alg: Algorithm::ES256,
        signer: EncodingKey::from_ec_der(&kp.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..])}),
    }
}

fn rs256() -> Key {
    let jwks: Value = serde_json::from_str(include_str!("../tests/fixtures/rsa-client.jwks.json"))
        .expect("the fixture parses");
    Key {
        alg: Algorithm::RS256,
        signer: EncodingKey::from_rsa_der(include_bytes!("../tests/fixtures/rsa-client.der")),
        jwk: jwks["keys"][0].clone(),
    }
}

impl Key {
    fn proof(&self, token: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut h = Header::new(self.alg);
        h.typ = Some("dpop+jwt".into());
        h.jwk = Some(serde_json::from_value(self.jwk.clone()).expect("a JWK"));
        let claims = json!({
            "jti": format!("bench-{}", N.fetch_add(1, Ordering::Relaxed)),
            "htm": "GET",
            "htu": format!("https://{HOST}{PATH}"),
            "iat": now_secs(),
            "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
        });
        encode(&h, &claims, &self.signer).expect("signing works")
    }

    fn thumbprint(&self) -> String {
        PublicJwk::from_json(&self.jwk)
            .expect("a valid JWK")
            .thumbprint()
    }
}

fn proof_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("dpop/proof_check");
    let url = normalize_url("https", HOST, PATH);
    for (name, key) in [("ES256", es256()), ("RS256", rs256())] {
        let token = new_token();
        g.bench_function(name, |b| {
            b.iter_batched(
                || key.proof(&token),
                |proof| {
                    let req = DpopRequest {
                        method: "GET",
                        url: &url,
                        access_token: Some(&token),
                        now: now_secs(),
                    };
                    black_box(check_dpop_proof(black_box(&proof), &req).expect("valid"))
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn config() -> Config {
    let hash = whosthat::password::hash_password(b"bench");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[users]]\nname = \"u0\"\npassword_hash = \"{hash}\"\nscopes = [\"read\"]\n\
         [[clients]]\nid = \"bench-cli\"\ngrants = [\"password\"]\nscopes = [\"read\"]\n"
    );
    Config::parse(&text, Path::new("bench.toml")).expect("the bench config is valid")
}

fn guard(c: &mut Criterion) {
    let config = config();
    let store = MemoryStore::new();
    let grant = Arc::new(Grant::new(
        Some(Arc::from("u0")),
        Arc::from("bench-cli"),
        ScopeSet::parse("read").expect("a scope"),
    ));
    let now = now_secs();
    let put = |cnf: Option<String>| {
        let t = new_token();
        let rec = TokenRecord {
            grant: grant.clone(),
            family: 1,
            issued_at: now,
            expires_at: now + 3600,
            cnf: cnf.map(Arc::from),
        };
        ready(store.put_access(TokenHash::of(&t), rec)).expect("memory store put");
        t
    };
    for _ in 0..10_000 {
        put(None);
    }
    let (es, rs) = (es256(), rs256());
    let bearer = put(None);
    let bound_es = put(Some(es.thumbprint()));
    let bound_rs = put(Some(rs.thumbprint()));
    let uri: Uri = PATH.parse().expect("a path");
    let head_with = |auth: String, proof: Option<String>| {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static(HOST));
        h.insert(
            http::header::AUTHORIZATION,
            auth.parse().expect("a header value"),
        );
        if let Some(p) = proof {
            h.insert("dpop", p.parse().expect("a header value"));
        }
        h
    };
    let run = |headers: &HeaderMap| {
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            headers,
            scheme: "https",
        };
        ready(require_token(&store, &config, &head)).expect("accepted")
    };
    let mut g = c.benchmark_group("dpop/guard");
    let bearer_headers = head_with(format!("Bearer {bearer}"), None);
    g.bench_function("bearer", |b| {
        b.iter(|| black_box(run(black_box(&bearer_headers))))
    });
    for (name, key, token) in [
        ("dpop_es256", &es, &bound_es),
        ("dpop_rs256", &rs, &bound_rs),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || head_with(format!("DPoP {token}"), Some(key.proof(token))),
                |headers| black_box(run(&headers)),
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, proof_check, guard);
criterion_main!(benches);
