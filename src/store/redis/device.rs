//! The Redis store's one-time values (`jti`s) and device authorizations
//! (RFC 8628), shared by every instance.
//!
//! - A one-time value is `SET NX PX`: of instances racing on one `jti`, one
//!   sets it; the key expires when the JWT could no longer be accepted.
//! - A device authorization is a hash at `whosthat:dev:{device code hash}`;
//!   its user code is a string key naming it, `whosthat:uc:{user code hash}`.
//!   Each script touches only the key it is given, so the layout also holds
//!   under Redis Cluster. A decision and a poll are each one script: racing
//!   approvals, or a poll racing the approval, see one order.

use std::sync::Arc;

use redis::AsyncCommands;

use super::{Inner, px_until};
use crate::scope::ScopeSet;
use crate::store::{
    DEVICE_GRACE_SECS, DeviceDecision, DevicePoll, DeviceRecord, StoreError, TokenHash, hex,
    now_secs,
};

const ONCE_PREFIX: &str = "whosthat:once:";
const DEVICE_PREFIX: &str = "whosthat:dev:";
const USER_CODE_PREFIX: &str = "whosthat:uc:";

/// Records the user's decision on a pending, live authorization.
/// ARGV: now (s), status ('a' approved, 'd' denied), user, scope. Answers 1 if
/// this call decided.
pub(super) const DECIDE: &str = r"
local h = redis.call('HMGET', KEYS[1], 'exp', 'status')
if not h[1] or h[2] ~= 'p' or tonumber(ARGV[1]) >= tonumber(h[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'user', ARGV[3], 'scope', ARGV[4])
return 1
";

/// One poll at ARGV[1] (unix ms) by client ARGV[2], by the rules of the memory store's
/// `poll_step`: expiry, the interval (counted, +5 s, `slow_down`), then the
/// state (a used code is a replay); an approved authorization is used up by the poll that
/// finds it.
pub(super) const POLL: &str = r"
local h = redis.call('HMGET', KEYS[1], 'exp', 'status', 'last', 'interval', 'family', 'user', 'scope', 'client')
if not h[1] or h[8] ~= ARGV[2] then return {'unknown'} end
local now = tonumber(ARGV[1])
if math.floor(now / 1000) >= tonumber(h[1]) then return {'expired'} end
local last = tonumber(h[3]) or 0
local interval = tonumber(h[4])
redis.call('HSET', KEYS[1], 'last', ARGV[1])
if last ~= 0 and now < last + interval * 1000 then
  interval = interval + 5
  redis.call('HSET', KEYS[1], 'interval', interval)
  local fast = redis.call('HINCRBY', KEYS[1], 'fast', 1)
  return {'slow', tostring(interval), tostring(fast)}
end
if h[2] == 's' then return {'spent', h[5]} end
if h[2] == 'a' then
  redis.call('HSET', KEYS[1], 'status', 's')
  return {'approved', h[5], h[6], h[7], h[8]}
end
if h[2] == 'd' then return {'denied'} end
return {'pending'}
";

impl Inner {
    pub(super) async fn first_use(&self, key: TokenHash, until: u64) -> Result<bool, StoreError> {
        self.check()?;
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{ONCE_PREFIX}{}", hex(&key)))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(px_until(until))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(set.is_some())
    }

    pub(super) async fn put_device(
        &self,
        device: TokenHash,
        user_code: TokenHash,
        rec: DeviceRecord,
    ) -> Result<bool, StoreError> {
        self.check()?;
        let dev = hex(&device);
        let mut conn = self.conn.clone();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(format!("{USER_CODE_PREFIX}{}", hex(&user_code)))
            .arg(&dev)
            .arg("NX")
            .arg("PX")
            .arg(px_until(rec.expires_at))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        if claimed.is_none() {
            return Ok(false);
        }
        let key = format!("{DEVICE_PREFIX}{dev}");
        let mut fields: Vec<(&str, String)> = vec![
            ("client", rec.client.to_string()),
            ("family", rec.family.to_string()),
            ("exp", rec.expires_at.to_string()),
            ("interval", rec.interval.to_string()),
            ("last", "0".into()),
            ("fast", "0".into()),
            ("status", "p".into()),
        ];
        if let Some(scope) = &rec.scope {
            fields.push(("rscope", scope.to_string()));
        }
        let keep = px_until(rec.expires_at.saturating_add(DEVICE_GRACE_SECS));
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(&key, &fields)
            .ignore()
            .pexpire(&key, keep as i64)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(true)
    }

    /// The device code hash (hex) a user code names, if any.
    async fn device_of(&self, user_code: &TokenHash) -> Result<Option<String>, StoreError> {
        self.check()?;
        let mut conn = self.conn.clone();
        conn.get(format!("{USER_CODE_PREFIX}{}", hex(user_code)))
            .await
            .map_err(|e| self.failed(e))
    }

    pub(super) async fn device_by_user_code(
        &self,
        user_code: TokenHash,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let Some(dev) = self.device_of(&user_code).await? else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        let h: std::collections::HashMap<String, String> = conn
            .hgetall(format!("{DEVICE_PREFIX}{dev}"))
            .await
            .map_err(|e| self.failed(e))?;
        let field = |k: &str| h.get(k).map(String::as_str);
        let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
        let (Some(client), Some(family), Some(exp), Some(interval)) =
            (field("client"), num("family"), num("exp"), num("interval"))
        else {
            return Ok(None);
        };
        if field("status") != Some("p") || exp <= now_secs() {
            return Ok(None);
        }
        let scope = match field("rscope") {
            Some(s) => Some(match ScopeSet::parse(s) {
                Some(set) => set,
                None => return Ok(None),
            }),
            None => None,
        };
        Ok(Some(DeviceRecord {
            client: Arc::from(client),
            scope,
            family,
            expires_at: exp,
            interval,
        }))
    }

    pub(super) async fn decide_device(
        &self,
        user_code: TokenHash,
        decision: DeviceDecision,
    ) -> Result<bool, StoreError> {
        let Some(dev) = self.device_of(&user_code).await? else {
            return Ok(false);
        };
        let (status, user, scope) = match &decision {
            DeviceDecision::Approved(g) => (
                "a",
                g.user.as_deref().unwrap_or("").to_string(),
                g.scope.to_string(),
            ),
            DeviceDecision::Denied => ("d", String::new(), String::new()),
        };
        let decided: i64 = self
            .decide
            .key(format!("{DEVICE_PREFIX}{dev}"))
            .arg(now_secs())
            .arg(status)
            .arg(user)
            .arg(scope)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        // Used up either way (the decision, not this delete, is what counts).
        let mut conn = self.conn.clone();
        let _: Result<i64, _> = conn
            .del(format!("{USER_CODE_PREFIX}{}", hex(&user_code)))
            .await;
        Ok(decided == 1)
    }

    pub(super) async fn poll_device(
        &self,
        device: TokenHash,
        client: &str,
        now_ms: u64,
    ) -> Result<DevicePoll, StoreError> {
        self.check()?;
        let answer: Vec<String> = self
            .poll
            .key(format!("{DEVICE_PREFIX}{}", hex(&device)))
            .arg(now_ms)
            .arg(client)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        let num = |i: usize| answer.get(i).and_then(|v| v.parse::<u64>().ok());
        Ok(match answer.first().map(String::as_str) {
            Some("expired") => DevicePoll::Expired,
            Some("pending") => DevicePoll::Pending,
            Some("denied") => DevicePoll::Denied,
            Some("spent") => match num(1) {
                Some(family) => DevicePoll::Spent { family },
                None => DevicePoll::Unknown,
            },
            Some("slow") => match (num(1), num(2)) {
                (Some(interval), Some(fast_polls)) => DevicePoll::SlowDown {
                    interval,
                    fast_polls,
                },
                _ => DevicePoll::Unknown,
            },
            Some("approved") => {
                let field = |i: usize| answer.get(i).map(String::as_str).unwrap_or("");
                match (num(1), ScopeSet::parse(field(3))) {
                    (Some(family), Some(scope)) => {
                        let user = Some(field(2)).filter(|u| !u.is_empty()).map(Arc::from);
                        let grant = self.grants.intern(user, Arc::from(field(4)), scope);
                        DevicePoll::Approved { grant, family }
                    }
                    _ => DevicePoll::Unknown,
                }
            }
            _ => DevicePoll::Unknown,
        })
    }
}
