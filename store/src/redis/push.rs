//! Push registrations in the Redis store: one hash per user, `<prefix>{u:<user>}:push`, device →
//! prost-encoded [`PushRecord`]. With `appendfsync always` a write is durable when HSET returns.

use prost::Message as _;
use redis::AsyncCommands;

use super::{backend, redis_failure, RedisStore};
use crate::{PushRecord, StoreError, MAX_PUSH_DEVICES_PER_USER};

/// Sets the field only if the hash has room for a new device (or the device is already there), in one
/// atomic step, so concurrent registrations cannot exceed the cap.
const PUT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

fn key(prefix: &str, user: &str) -> String {
    format!("{prefix}{{u:{user}}}:push")
}

impl RedisStore {
    pub(super) async fn put_push_record(
        &self,
        user: &str,
        device: &str,
        record: &PushRecord,
    ) -> Result<(), StoreError> {
        let stored: i64 = redis::Script::new(PUT)
            .key(key(&self.prefix, user))
            .arg(device)
            .arg(record.encode_to_vec())
            .arg(MAX_PUSH_DEVICES_PER_USER)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failure("push register", e))?;
        if stored == 0 {
            return Err(crate::push::too_many_devices());
        }
        Ok(())
    }

    pub(super) async fn delete_push_record(
        &self,
        user: &str,
        device: &str,
    ) -> Result<bool, StoreError> {
        let removed: i64 = self
            .conn
            .clone()
            .hdel(key(&self.prefix, user), device)
            .await
            .map_err(|e| redis_failure("push unregister", e))?;
        Ok(removed > 0)
    }

    pub(super) async fn push_records(
        &self,
        user: &str,
    ) -> Result<Vec<(String, PushRecord)>, StoreError> {
        let raw: Vec<(String, Vec<u8>)> = self
            .conn
            .clone()
            .hgetall(key(&self.prefix, user))
            .await
            .map_err(|e| redis_failure("push list", e))?;
        let mut out = Vec::with_capacity(raw.len());
        for (device, bytes) in raw {
            let record =
                PushRecord::decode(bytes.as_slice()).map_err(|e| backend("push record", e))?;
            out.push((device, record));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
