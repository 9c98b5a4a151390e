//! Three gateway instances as one fleet on real Redis topologies started here
//! (see `redis_topology`): a primary + replica under three sentinels, failed
//! over twice (`SENTINEL FAILOVER`, then the primary killed), and a
//! three-primary Cluster whose slots move under the fleet. A load loop on
//! every instance checks, the whole time, that:
//!
//! - no request with a revoked token is served (once the revoking instance
//!   has answered, it refuses the token; once every instance has, none ever
//!   accepts it again, across failovers and slot moves);
//! - every 5xx is a 503 with `Retry-After`, and only within a failover's
//!   window (from the failover to the moment every instance serves again);
//! - public routes answer throughout;
//!
//! and a sign-in starts on one instance and finishes on others. Nothing here
//! depends on how fast the machine is: every wait polls, within the hang guard.
//! The failover windows observed are printed.
//!
//! `redis-server` and `redis-cli` must be on PATH: without them these tests
//! fail (they never skip).

mod common;
mod oauth_helpers;
mod redis_topology;

use common::*;
use oauth_helpers::*;
use redis_topology::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------- the fleet

struct Fleet {
    gws: Vec<Gateway>,
    _up: Upstream,
}

impl Fleet {
    /// Three instances with `store` (the topology's keys) under `[store]`,
    /// each once its `/readyz` says 200.
    async fn start(store: &str) -> Fleet {
        let up = spawn_upstream().await;
        let mut gws = Vec::new();
        for _ in 0..3 {
            let admin = SocketAddr::from(([127, 0, 0, 1], closed_port()));
            let listen = "listen = \"127.0.0.1:0\"\n";
            let text = config_text(up.addr).replacen(
                listen,
                &format!("{listen}admin_listen = \"{admin}\"\n"),
                1,
            ) + &format!("\n[store]\nbackend = \"redis\"\n{store}");
            gws.push(spawn_gateway_with(&text).await);
            until("an instance to be ready", || ready(admin)).await;
        }
        Fleet { gws, _up: up }
    }

    fn bases(&self) -> Vec<String> {
        self.gws.iter().map(|g| g.url("")).collect()
    }
}

/// Whether `/readyz` on `admin` says 200 (false while nothing listens yet).
async fn ready(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    s.write_all(req.as_bytes()).await.is_ok()
        && tokio::time::timeout(HANG_GUARD, s.read_to_end(&mut out))
            .await
            .is_ok_and(|r| r.is_ok())
        && out.starts_with(b"HTTP/1.1 200")
}

fn quoted(urls: &[String]) -> String {
    urls.iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `f()` until it answers something other than 503 (what a client does
/// during a failover); panics naming `what` after the hang guard.
async fn retrying<F, Fut>(what: &str, mut f: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let r = f().await;
        if r.status != 503 {
            return r;
        }
        assert!(
            r.header("retry-after").is_some(),
            "{what}: a 503 without Retry-After"
        );
        assert!(Instant::now() < deadline, "{what}: still 503: {}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A password-grant token response from instance `i`.
async fn tokens(f: &Fleet, i: usize) -> serde_json::Value {
    let body = "grant_type=password&username=alice&password=alice-pw&scope=read";
    let r = retrying("a login", || token_request(&f.gws[i], body, &[])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn access(j: &serde_json::Value) -> String {
    j["access_token"].as_str().unwrap().to_string()
}

/// Instance `i` answers `token` on `/api/` with `want`, polling until it does.
async fn until_answers(f: &Fleet, i: usize, token: &str, want: u16) {
    let url = f.gws[i].url("/api/probe");
    until("an instance to answer as expected", || async {
        get_with_token(&url, token).await.status == want
    })
    .await;
}

/// When a revocation was acknowledged (by instance `gw`), and when every
/// instance had been seen to refuse the token.
#[derive(Clone, Copy)]
struct Revoked {
    gw: usize,
    acked: Instant,
    settled: Instant,
}

/// Revokes `token` on instance `i` (retrying a 503, as a client would), then
/// waits until every instance refuses it.
async fn revoke(f: &Fleet, i: usize, token: &str) -> Revoked {
    let url = f.gws[i].url("/auth/revoke");
    let body = form(&[("token", token), ("client_id", "cli")]);
    let h = [("content-type", "application/x-www-form-urlencoded")];
    let r = retrying("a revocation", || request(Method::POST, &url, &h, &body)).await;
    assert_eq!(r.status, 200, "revocation: {}", r.text());
    let acked = Instant::now();
    for n in 0..f.gws.len() {
        until_answers(f, n, token, 401).await;
    }
    Revoked {
        gw: i,
        acked,
        settled: Instant::now(),
    }
}

/// A refresh token used on `first`, then replayed on `second`: the replay is
/// refused and the family revoked (acknowledged only once durable).
async fn replay_refresh(f: &Fleet, rt: &str, first: usize, second: usize) -> Instant {
    let body = form(&[("grant_type", "refresh_token"), ("refresh_token", rt)]);
    let r = retrying("a refresh", || token_request(&f.gws[first], &body, &[])).await;
    assert_eq!(r.status, 200, "refresh: {}", r.text());
    let r = retrying("a replay", || token_request(&f.gws[second], &body, &[])).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    Instant::now()
}

// ---------------------------------------------------------------- the load

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// A token that stays valid.
    Keep,
    /// A public route (no token).
    Public,
    /// The nth token that is revoked during the test.
    Revoked(usize),
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    start: Instant,
    end: Instant,
    gw: usize,
    probe: Probe,
    status: u16,
    retry_after: bool,
}

/// A loop per instance: each round asks for every probe once.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(bases: Vec<String>, keep: String, revoked: Vec<String>) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut probes = vec![(Probe::Keep, Some(keep)), (Probe::Public, None)];
        for (n, t) in revoked.into_iter().enumerate() {
            probes.push((Probe::Revoked(n), Some(t)));
        }
        let tasks = bases
            .into_iter()
            .enumerate()
            .map(|(gw, base)| {
                let (samples, stop, probes) = (samples.clone(), stop.clone(), probes.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        for (probe, token) in &probes {
                            let start = Instant::now();
                            let r = match token {
                                Some(t) => get_with_token(&format!("{base}/api/load"), t).await,
                                None => get(&format!("{base}/public/load"), &[]).await,
                            };
                            samples.lock().unwrap().push(Sample {
                                start,
                                end: Instant::now(),
                                gw,
                                probe: *probe,
                                status: r.status.as_u16(),
                                retry_after: r.header("retry-after").is_some(),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Load {
            samples,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load loop panicked");
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// From a failover's start to the moment the fleet serves again.
#[derive(Clone, Copy, Debug)]
struct Window {
    trigger: Instant,
    settled: Instant,
}

impl Window {
    fn overlaps(&self, s: &Sample) -> bool {
        s.end >= self.trigger && s.start <= self.settled
    }
}

/// Until every instance serves `keep` three rounds in a row.
async fn serving_again(f: &Fleet, keep: &str) {
    let in_a_row = std::cell::Cell::new(0);
    until("every instance to serve again", || async {
        for g in &f.gws {
            if get_with_token(&g.url("/api/probe"), keep).await.status != 200 {
                in_a_row.set(0);
                return false;
            }
        }
        in_a_row.set(in_a_row.get() + 1);
        in_a_row.get() >= 3
    })
    .await;
}

/// Every assertion over the load's samples; prints what was observed.
fn check(samples: &[Sample], revoked: &[Revoked], windows: &[Window]) {
    assert!(
        samples.len() > 100,
        "the load loop barely ran: {}",
        samples.len()
    );
    let mut served_revoked = Vec::new();
    let mut outside = Vec::new();
    for s in samples {
        if s.probe == Probe::Public {
            assert_eq!(s.status, 200, "a public route failed: {s:?}");
        }
        if s.status >= 500 {
            assert!(
                s.status == 503 && s.retry_after,
                "every 5xx is a 503 with Retry-After: {s:?}"
            );
            if !windows.iter().any(|w| w.overlaps(s)) {
                outside.push(*s);
            }
        }
        if let Probe::Revoked(n) = s.probe
            && let Some(r) = revoked.get(n)
            && s.status == 200
            && (s.start > r.settled || (s.gw == r.gw && s.start > r.acked))
        {
            served_revoked.push(*s);
        }
    }
    for (k, w) in windows.iter().enumerate() {
        for gw in 0..3 {
            let first_503 = samples
                .iter()
                .filter(|s| s.gw == gw && s.status == 503 && w.overlaps(s))
                .map(|s| s.start)
                .min();
            let back = first_503.and_then(|t| {
                samples
                    .iter()
                    .filter(|s| s.gw == gw && s.probe == Probe::Keep && s.status == 200)
                    .filter(|s| s.start > t)
                    .map(|s| s.end)
                    .min()
            });
            match (first_503, back) {
                (Some(a), Some(b)) => eprintln!(
                    "failover {k}, instance {gw}: first 503 to first success {:?}",
                    b - a
                ),
                _ => eprintln!("failover {k}, instance {gw}: no 503 seen"),
            }
        }
        eprintln!(
            "failover {k}: from the failover to every instance serving {:?}",
            w.settled - w.trigger
        );
    }
    eprintln!(
        "{} requests; {} with a revoked token served; {} 5xx outside failovers",
        samples.len(),
        served_revoked.len(),
        outside.len()
    );
    assert!(
        served_revoked.is_empty(),
        "revoked tokens served: {served_revoked:?}"
    );
    assert!(outside.is_empty(), "5xx outside a failover: {outside:?}");
}

// ------------------------------------------------------------- the sign-in

/// The code flow begun on instance 0, signed in on 1, consent shown by 2,
/// approved on 0, the code exchanged on 1 and its token used on 2.
async fn sign_in_across(f: &Fleet) {
    let (verifier, challenge) = pkce_pair();
    let pairs = [
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_CB),
        ("scope", "read"),
        ("state", "fleet"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let (mut b, page) = start(&f.gws[0], &pairs).await;
    let r = post_login(&f.gws[1], &mut b, &page, "alice", ALICE_PW).await;
    assert_eq!(see_other(&r).base, AUTHORIZE, "{}", r.text());
    let consent = b.page(&f.gws[2]).await;
    assert!(
        consent.text().contains("Allow access?"),
        "{}",
        consent.text()
    );
    let after = b.cookie.clone();
    let r = decide(&f.gws[0], &mut b, &consent, "approve").await;
    let loc = see_other(&r);
    assert_eq!(loc.get("state"), Some("fleet"));
    let code = loc.get("code").expect("a code").to_string();
    // The ended sign-in is ended on every instance: its cookie mints nothing more.
    b.cookie = after;
    let again = decide(&f.gws[1], &mut b, &consent, "approve").await;
    assert_error_page(&again, 400, "expired or was already used");
    let j = assert_tokens(&spa_exchange(&f.gws[1], &code, &verifier).await);
    let r = get_with_token(&f.gws[2].url("/api/signed-in"), &access(&j)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ------------------------------------------------------------------- tests

/// Sentinel: a forced failover and a killed primary while three instances
/// serve a load; no restart, no revocation lost.
///
/// It found a real defect (issue 13), in about one run in three on a busy
/// machine: a revocation whose first attempt got 503 (the replica did not
/// confirm the `WAIT` in time) was retried, the retry found nothing live
/// (the first attempt's `DEL` had reached the primary) and answered 200; the
/// primary was killed before the replica had it, and the token came back.
/// Revocations now write a marker and a retry confirms it again, see
/// `tests/redis_store.rs a_retried_revocation_is_acknowledged_only_once_a_replica_has_it`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failovers_lose_no_revocation_and_need_no_restart() {
    let mut set = SentinelSet::start().await;
    let store = format!(
        "redis_sentinel = {{ master_name = \"{MASTER_NAME}\", nodes = [{}] }}\n",
        quoted(&set.sentinel_urls())
    );
    let f = Fleet::start(&store).await;
    let keep = access(&tokens(&f, 0).await);
    let family = tokens(&f, 1).await;
    let revs: Vec<String> = vec![
        access(&tokens(&f, 2).await),
        access(&tokens(&f, 0).await),
        access(&tokens(&f, 1).await),
        access(&family),
    ];
    let load = Load::start(f.bases(), keep.clone(), revs.clone());
    let mut revoked = vec![revoke(&f, 0, &revs[0]).await];
    // A refresh token replayed: its family (revs[3]) is revoked everywhere.
    let replayed = replay_refresh(&f, family["refresh_token"].as_str().unwrap(), 1, 2).await;
    for i in 0..3 {
        until_answers(&f, i, &revs[3], 401).await;
    }
    let family_revoked = Revoked {
        gw: 2,
        acked: replayed,
        settled: Instant::now(),
    };
    let mut windows = Vec::new();

    // 1. A forced failover: the primary steps down, the replica takes over.
    let old = set.agreed_primary().await.expect("a primary");
    let trigger = Instant::now();
    set.force_failover().await;
    windows.push(settle(&set, &f, &keep, old, trigger).await);
    set.wait_healthy().await;
    revoked.push(revoke(&f, 1, &revs[1]).await);

    // 2. The new primary is killed; the old one is promoted back.
    let new = set.agreed_primary().await.expect("a primary");
    let trigger = Instant::now();
    set.node_mut(new).kill();
    windows.push(settle(&set, &f, &keep, new, trigger).await);
    // No replica now: a revocation cannot be made durable, and says so.
    let url = f.gws[2].url("/auth/revoke");
    let body = form(&[("token", revs[2].as_str()), ("client_id", "cli")]);
    let h = [("content-type", "application/x-www-form-urlencoded")];
    let r = request(Method::POST, &url, &h, &body).await;
    assert_eq!(r.status, 503, "no replica, yet: {}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["error"], "temporarily_unavailable", "{}", r.text());
    // It comes back empty; the sentinels make it a replica: revocations are
    // confirmed again.
    set.node_mut(new).restart();
    set.wait_healthy().await;
    revoked.push(revoke(&f, 2, &revs[2]).await);
    revoked.push(family_revoked);

    sign_in_across(&f).await;
    let samples = load.finish().await;
    check(&samples, &revoked, &windows);
}

/// After a failover away from `old`: until the sentinels name another primary,
/// every instance has subscribed there, and every instance serves again.
async fn settle(set: &SentinelSet, f: &Fleet, keep: &str, old: u16, trigger: Instant) -> Window {
    until("the sentinels to name a new primary", || async {
        set.agreed_primary().await.is_some_and(|p| p != old)
    })
    .await;
    let new = set.agreed_primary().await.expect("a primary");
    until("the instances to subscribe on the new primary", || async {
        gateway_subscribers(set.node(new)).await >= 3
    })
    .await;
    serving_again(f, keep).await;
    Window {
        trigger,
        settled: Instant::now(),
    }
}

/// Subscribers on `node` that are not sentinels (they name their connections).
async fn gateway_subscribers(node: &Node) -> usize {
    let list: String = node.cmd(&["CLIENT", "LIST"]).await.unwrap_or_default();
    list.lines()
        .filter(|l| !l.contains("name=sentinel-"))
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("sub=").is_some_and(|n| n != "0"))
        })
        .count()
}

fn sha_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Cluster: revocations broadcast to every instance whichever node each
/// subscribed to, and slots (a live token's, a refresh token's, the
/// brute-force counters') moved under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_reshards_under_the_fleet_and_revocations_reach_every_instance() {
    let cluster = ClusterSet::start().await;
    let f = Fleet::start(&format!("redis_cluster = [{}]\n", quoted(&cluster.urls()))).await;
    let keep = access(&tokens(&f, 0).await);
    let family = tokens(&f, 1).await;
    let later = tokens(&f, 2).await;
    let revs: Vec<String> = vec![
        access(&tokens(&f, 0).await),
        access(&tokens(&f, 1).await),
        access(&family),
    ];
    let load = Load::start(f.bases(), keep.clone(), revs.clone());
    let mut revoked = vec![revoke(&f, 0, &revs[0]).await];
    let replayed = replay_refresh(&f, family["refresh_token"].as_str().unwrap(), 2, 1).await;
    for i in 0..3 {
        until_answers(&f, i, &revs[2], 401).await;
    }
    let family_revoked = Revoked {
        gw: 1,
        acked: replayed,
        settled: Instant::now(),
    };

    let later_rt = later["refresh_token"].as_str().unwrap().to_string();
    for key in [
        format!("whosthat:at:{}", sha_hex(&keep)),
        format!("whosthat:at:{}", sha_hex(&revs[1])),
        format!("whosthat:rt:{{{}}}", sha_hex(&later_rt)),
        "whosthat:{lim}:x".to_string(),
    ] {
        let slot = cluster.slot_of(&key).await;
        let to = (cluster.owner(slot).await + 1) % 3;
        cluster.move_slot(slot, to).await;
    }
    // Still served everywhere once its slot moved.
    for (i, g) in f.gws.iter().enumerate() {
        let r = get_with_token(&g.url("/api/after-move"), &keep).await;
        assert_eq!(r.status, 200, "instance {i}: {}", r.text());
    }
    revoked.push(revoke(&f, 2, &revs[1]).await);
    revoked.push(family_revoked);
    // The moved refresh token: used once, its replay caught.
    replay_refresh(&f, &later_rt, 0, 1).await;
    sign_in_across(&f).await;

    let samples = load.finish().await;
    check(&samples, &revoked, &[]);
}
