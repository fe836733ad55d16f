//! Token revocation stamps in the Redis store: one hash per user, `<prefix>{u:<user>}:revoked`,
//! device → Unix seconds, the empty field for every device of the user. Every node reads the same hash, so a
//! revocation holds cluster-wide; with `appendfsync always` it is durable when the script returns.

use super::{redis_failure, RedisStore};
use crate::revoke::{device_key, ALL_DEVICES};
use crate::StoreError;

/// Raises the field to ARGV[2] unless it is already later, in one atomic step; returns the stored
/// value.
const RAISE: &str = r"
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local at = tonumber(ARGV[2])
if at > before then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return at
end
return before
";

fn key(prefix: &str, user: &str) -> String {
    format!("{prefix}{{u:{user}}}:revoked")
}

impl RedisStore {
    pub(super) async fn raise_revocation(
        &self,
        user: &str,
        device: Option<&str>,
        at_s: u64,
    ) -> Result<u64, StoreError> {
        let stored: u64 = redis::Script::new(RAISE)
            .key(key(&self.prefix, user))
            .arg(device_key(device))
            .arg(at_s)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failure("revoke", e))?;
        Ok(stored)
    }

    pub(super) async fn revocation_stamp(
        &self,
        user: &str,
        device: &str,
    ) -> Result<u64, StoreError> {
        let stamps: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(key(&self.prefix, user))
            .arg(ALL_DEVICES)
            .arg(device)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failure("revocation stamp", e))?;
        Ok(stamps.into_iter().flatten().max().unwrap_or(0))
    }
}
