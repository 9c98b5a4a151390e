//! The wall clock, as Unix time: what token lifetimes, revocations and
//! upstream cool-downs are stored and compared in. (Durations measured within
//! the process use `Instant`, which never steps.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; zero for a clock set before it.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix seconds.
pub fn now_secs() -> u64 {
    unix_now().as_secs()
}

/// Unix milliseconds.
pub fn now_ms() -> u64 {
    u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX)
}

/// A configured lifetime in whole seconds, at least 1: what `expires_in`
/// says and records' expiry is computed from.
pub fn ttl_secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_are_one_clock() {
        let (s, ms) = (now_secs(), now_ms());
        // Read a moment apart: the same second, or the next.
        assert!(ms / 1000 == s || ms / 1000 == s + 1, "{s} {ms}");
        assert!(s > 1_700_000_000, "the clock reads {s}");
    }
}
