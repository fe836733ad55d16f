//! The durability check at open.
//!
//! Ferry acknowledges a Send only once it is durable. On Redis that holds only with `appendonly yes`
//! and `appendfsync always`: Redis then fsyncs the AOF before it replies, so a reply means the write is
//! on disk. With `everysec` up to a second of acknowledged messages vanishes on a crash of the machine;
//! with the AOF off, everything since the last snapshot. (Replication to replicas is asynchronous in any
//! case: a failover can still lose acknowledged writes — the conversation epoch tells clients when.)

use std::collections::HashMap;

use redis::Value;

use super::conn::Conn;
use crate::StoreError;

/// What the masters' configuration promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// Every master runs `appendonly yes` + `appendfsync always`.
    Durable,
    /// At least one master does not; the text says which settings were found.
    NotDurable(String),
}

/// Reads `appendonly` and `appendfsync` from every master.
pub(crate) async fn check(conn: &mut Conn) -> Result<Durability, StoreError> {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("append*");
    let replies = conn
        .on_every_master(cmd)
        .await
        .map_err(|e| StoreError::Backend(format!("CONFIG GET on redis: {e}")))?;
    let mut problems = Vec::new();
    for reply in replies {
        problems.extend(judge(reply)?);
    }
    Ok(if problems.is_empty() {
        Durability::Durable
    } else {
        problems.sort();
        problems.dedup();
        Durability::NotDurable(problems.join(", "))
    })
}

/// The settings of one master that fall short (empty when it is durable).
fn judge(reply: Value) -> Result<Vec<String>, StoreError> {
    if let Value::ServerError(err) = &reply {
        return Err(StoreError::Backend(format!("CONFIG GET refused: {err:?}")));
    }
    let config: HashMap<String, String> = redis::from_redis_value(reply)
        .map_err(|e| StoreError::Backend(format!("unexpected CONFIG GET reply: {e}")))?;
    let mut problems = Vec::new();
    for (name, wanted) in [("appendonly", "yes"), ("appendfsync", "always")] {
        let found = config.get(name).map_or("<unset>", String::as_str);
        if found != wanted {
            problems.push(format!("{name} {found} (need {wanted})"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(pairs: &[(&str, &str)]) -> Value {
        Value::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [k, v])
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn only_aof_with_fsync_always_is_durable() {
        let durable = reply(&[("appendonly", "yes"), ("appendfsync", "always")]);
        assert!(judge(durable).unwrap().is_empty());
        let lazy = reply(&[("appendonly", "yes"), ("appendfsync", "everysec")]);
        assert_eq!(judge(lazy).unwrap(), ["appendfsync everysec (need always)"]);
        let off = reply(&[("appendonly", "no"), ("appendfsync", "always")]);
        assert_eq!(judge(off).unwrap(), ["appendonly no (need yes)"]);
    }
}
