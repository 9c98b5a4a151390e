//! argon2id password and client-secret hashing.
//!
//! Verifications run on a few dedicated threads at the lowest CPU priority
//! (`SCHED_IDLE`), fed by a bounded queue: a flood of logins waits for spare CPU
//! instead of stealing it from proxied traffic, and past the queue's bound it is
//! answered 503 at once instead of piling up.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(test)]
use argon2::PasswordVerifier;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// Checks that `s` is an argon2 PHC string this build can verify.
pub fn check_phc(s: &str) -> Result<(), String> {
    let h = PasswordHash::new(s).map_err(|e| e.to_string())?;
    match h.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => {}
        other => return Err(format!("algorithm `{other}` is not argon2")),
    }
    argon2::Params::try_from(&h).map_err(|e| e.to_string())?;
    if h.salt.is_none() || h.hash.is_none() {
        return Err("salt or hash missing".into());
    }
    Ok(())
}

/// Hashes a password with argon2id and the library's recommended parameters
/// (m=19456 KiB, t=2, p=1), as a PHC string.
pub fn hash_password(password: &[u8]) -> String {
    Argon2::default()
        .hash_password(password)
        .expect("argon2 with default parameters and an OS salt cannot fail")
        .to_string()
}

#[cfg(test)]
fn verify_now(password: &[u8], phc: &str) -> bool {
    Argon2::default().verify_password(password, phc).is_ok()
}

/// Verifies `password` against a PHC string, computing in `memory` (resized
/// only when the parameters change). A worker keeps one such buffer for good:
/// allocating and freeing argon2's 19 MiB per check costs page faults and,
/// when the freed pages go back to the OS, TLB shoot-downs that stall the
/// proxy's threads too.
fn verify_in(password: &[u8], phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::new(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    if memory.len() != params.block_count() {
        *memory = vec![Block::default(); params.block_count()];
    }
    let mut out = vec![0u8; expected.as_bytes().len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, memory.as_mut_slice())
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
}

/// Memory × passes × lanes of an argon2 PHC string (0 when unreadable): what
/// one check of it costs, for comparing hashes.
pub fn cost_of(phc: &str) -> u64 {
    PasswordHash::new(phc)
        .ok()
        .and_then(|h| Params::try_from(&h).ok())
        .map_or(0, |p| {
            u64::from(p.m_cost()) * u64::from(p.t_cost()) * u64::from(p.p_cost())
        })
}

/// A hash of a fixed decoy password with the algorithm and parameters of `like`
/// (the library's recommended ones when `like` is absent or unreadable).
fn decoy_like(like: Option<&str>) -> String {
    let same = like.and_then(|phc| {
        let h = PasswordHash::new(phc).ok()?;
        let algorithm = Algorithm::new(h.algorithm.as_str()).ok()?;
        let version = match h.version.map(Version::try_from) {
            None => Version::V0x13,
            Some(v) => v.ok()?,
        };
        Some(Argon2::new(algorithm, version, Params::try_from(&h).ok()?))
    });
    same.unwrap_or_default()
        .hash_password(b"whosthat-dummy-password")
        .expect("argon2 with valid parameters and an OS salt cannot fail")
        .to_string()
}

/// The pool is full or the check waited too long: answer 503, try later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

struct Job {
    password: Vec<u8>,
    /// `None`: check against the dummy hash and fail, so that an unknown name
    /// costs what a wrong password costs.
    hash: Option<Arc<str>>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<bool, Busy>>,
}

pub struct PasswordPool {
    tx: SyncSender<Job>,
    max_wait: Duration,
}

impl PasswordPool {
    pub fn new(workers: usize, queue: usize, max_wait: Duration) -> PasswordPool {
        PasswordPool::with_decoy_like(workers, queue, max_wait, None)
    }

    /// A pool whose decoy (checked for unknown names) has the parameters of
    /// `like` (a configured hash): an unknown name then costs what a known one
    /// does, so timing does not tell which names exist.
    pub fn with_decoy_like(
        workers: usize,
        queue: usize,
        max_wait: Duration,
        like: Option<&str>,
    ) -> PasswordPool {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let dummy: Arc<str> = Arc::from(decoy_like(like));
        for n in 0..workers.max(1) {
            let rx = rx.clone();
            let dummy = dummy.clone();
            std::thread::Builder::new()
                .name(format!("whosthat-argon2-{n}"))
                .spawn(move || worker(rx, dummy, max_wait))
                .expect("spawning a password worker thread");
        }
        PasswordPool { tx, max_wait }
    }

    /// Verifies `password` against `hash` (`None`: an unknown account, always false).
    pub async fn verify(&self, password: &[u8], hash: Option<Arc<str>>) -> Result<bool, Busy> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            password: password.to_vec(),
            hash,
            enqueued: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => return Err(Busy),
        }
        match tokio::time::timeout(self.max_wait * 2, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(Busy),
        }
    }
}

fn lower_own_priority() {
    // SAFETY: plain syscalls on the calling thread with a valid, initialised argument.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            // Not permitted (e.g. a seccomp filter): fall back to the lowest nice value.
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Job>>>, dummy: Arc<str>, max_wait: Duration) {
    lower_own_priority();
    let mut memory = Vec::new();
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if job.enqueued.elapsed() > max_wait || job.reply.is_closed() {
            let _ = job.reply.send(Err(Busy));
            continue;
        }
        let ok = match &job.hash {
            Some(h) => verify_in(&job.password, h, &mut memory),
            None => {
                verify_in(&job.password, &dummy, &mut memory);
                false
            }
        };
        let _ = job.reply.send(Ok(ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_memory_verifies_like_the_library() {
        let mut memory = Vec::new();
        let h = hash_password(b"foo");
        assert!(verify_in(b"foo", &h, &mut memory));
        assert!(!verify_in(b"fo0", &h, &mut memory));
        assert!(verify_in(b"foo", &h, &mut memory));
        // Other parameters and algorithms resize the buffer and still agree.
        let params = Params::new(4096, 3, 2, Some(24)).unwrap();
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params)
            .hash_password(b"password")
            .unwrap()
            .to_string();
        assert!(argon2i.starts_with("$argon2i$v=19$m=4096,t=3,p=2$"));
        assert!(verify_in(b"password", &argon2i, &mut memory));
        assert!(!verify_in(b"passwore", &argon2i, &mut memory));
        assert!(verify_in(b"foo", &h, &mut memory));
        assert!(!verify_in(b"foo", "not a hash", &mut memory));
    }

    #[test]
    fn the_decoy_has_the_configured_parameters() {
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(decoy_like(Some(&cheap)).starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert!(decoy_like(None).starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(decoy_like(Some("garbage")).starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(cost_of(&cheap), 8);
        assert_eq!(cost_of(&hash_password(b"x")), 19456 * 2);
        assert_eq!(cost_of("garbage"), 0);
    }

    #[test]
    fn hash_then_check() {
        let h = hash_password(b"foo");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(check_phc(&h).is_ok());
        assert!(verify_now(b"foo", &h));
        assert!(!verify_now(b"bar", &h));
        assert!(check_phc("foo").is_err());
        assert!(check_phc("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
    }

    /// The pool's workers run at the lowest CPU priority: on a busy machine a check
    /// at the recommended cost (the unknown account's dummy hash) can wait tens of
    /// seconds for CPU. These tests are not about the wait limit: it is long here.
    const PATIENT: Duration = Duration::from_secs(600);

    /// A PHC string at argon2's smallest cost: microseconds of CPU per check.
    fn cheap_hash(password: &[u8]) -> Arc<str> {
        let params = Params::new(Params::MIN_M_COST, 1, 1, None).unwrap();
        let h = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password)
            .unwrap()
            .to_string();
        Arc::from(h)
    }

    #[tokio::test]
    async fn pool_verifies_and_fails_unknown_accounts() {
        let pool = PasswordPool::new(1, 4, PATIENT);
        let h = cheap_hash(b"pw");
        assert_eq!(pool.verify(b"pw", Some(h.clone())).await, Ok(true));
        assert_eq!(pool.verify(b"nope", Some(h)).await, Ok(false));
        assert_eq!(pool.verify(b"pw", None).await, Ok(false));
    }

    #[tokio::test]
    async fn pool_answers_busy_when_full() {
        // Refusals do not depend on the machine's speed: the worker is still on its
        // first (recommended-cost) check when the eight are queued.
        let pool = Arc::new(PasswordPool::new(1, 1, Duration::from_secs(10)));
        let h: Arc<str> = Arc::from(hash_password(b"pw"));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pool, h) = (pool.clone(), h.clone());
            tasks.push(tokio::spawn(
                async move { pool.verify(b"pw", Some(h)).await },
            ));
        }
        let mut busy = 0;
        for t in tasks {
            if t.await.unwrap() == Err(Busy) {
                busy += 1;
            }
        }
        assert!(busy >= 1, "a queue of one must refuse some of eight checks");
    }
}
