//! Start-up: replay the log tail past the index's high-water mark.
//!
//! The index (redb) holds every group up to `META_LOG_APPLIED`. Every segment is scanned; frames of
//! groups at or below that mark are skipped (they may still be on disk because deletion runs after the
//! index commit), later ones are decoded and taken into the cache and the unindexed tail exactly as the
//! writer does after an fsync, so reads see them at once and the indexer writes them to redb in the
//! background. Replay does no redb writes, so start-up costs one sequential read of the tail.
//!
//! A torn or corrupt end of a segment (see `segment`) is cut off: from the last segment by truncating
//! the file (it was never acked), from an older one only by ignoring it. Group numbers must follow each
//! other without a gap; a gap means acked data is missing and opening fails rather than serve history
//! with a hole.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use prost::Message as _;

use super::cache::Cache;
use super::record::GroupRecord;
use super::segment;
use super::tail::Tail;
use crate::StoreError;

/// What the replay rebuilt.
pub(crate) struct Replayed {
    /// The number of the next frame to write.
    pub next_group: u64,
    /// Frames taken into the tail.
    pub groups: u64,
}

/// Replays `log_dir` into `cache` and `tail` (whose `indexed` is the index's high-water mark).
pub(crate) fn replay(
    log_dir: &Path,
    cache: &mut Cache,
    tail: &mut Tail,
) -> Result<Replayed, StoreError> {
    let corrupt = |what: String| StoreError::Backend(format!("log: {what}"));
    let io = |err: std::io::Error| StoreError::Backend(format!("log: {err}"));
    let segments = segment::list(log_dir).map_err(io)?;
    let mut last_group = tail.indexed;
    let mut groups = 0;
    for (i, (first, path)) in segments.iter().enumerate() {
        let scanned = segment::scan(path).map_err(io)?;
        if scanned.torn_bytes > 0 {
            tracing::warn!(
                segment = %path.display(),
                bytes = scanned.torn_bytes,
                "cutting off a torn log frame"
            );
            if i + 1 == segments.len() {
                let file = OpenOptions::new().write(true).open(path).map_err(io)?;
                file.set_len(scanned.valid_len).map_err(io)?;
                file.sync_all().map_err(io)?;
            }
        }
        for (group, payload) in scanned.frames {
            if group < *first {
                return Err(corrupt(format!("group {group} in segment {first}")));
            }
            if group <= tail.indexed {
                continue;
            }
            if group != last_group + 1 {
                return Err(corrupt(format!(
                    "group {group} follows {last_group}: acked groups are missing"
                )));
            }
            let size = payload.len();
            let record =
                GroupRecord::decode(payload).map_err(|e| corrupt(format!("group {group}: {e}")))?;
            cache.apply(&record);
            tail.push(group, Arc::new(record), size);
            last_group = group;
            groups += 1;
        }
    }
    Ok(Replayed {
        next_group: last_group + 1,
        groups,
    })
}
