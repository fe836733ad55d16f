//! Start-up: replay the log tail past the index's high-water mark.
//!
//! The index (redb) holds every group up to `META_LOG_APPLIED`. Every segment is scanned; frames of
//! groups at or below that mark are skipped (they may still be on disk because deletion runs after the
//! index commit), later ones are decoded and taken into the cache, the dedupe index and the unindexed
//! tail exactly as the writer does after an fsync, so reads see them at once and the indexer writes
//! them to redb in the background. Replay does no redb writes, so start-up costs one sequential read of the tail.
//!
//! A torn or corrupt end of a segment (see `segment`) is cut off: from the last segment by truncating
//! the file (it was never acked), from an older one only by ignoring it. Group numbers must follow each
//! other without a gap; a gap means acked data is missing and opening fails rather than serve history
//! with a hole.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use super::cache::Cache;
use super::dedupe::DedupeIndex;
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

/// Decoded frames handed from the reading thread to the applying one; bounds the memory the replay
/// holds beyond the tail itself.
const DECODED_QUEUE: usize = 256;

/// Replays `log_dir` into `cache`, `tail` (whose `indexed` is the index's high-water mark) and the
/// dedupe index.
///
/// Two threads share the work, about evenly: one reads, checks and decodes frames (decoding slices
/// the frame's buffer, see `record`) and takes their ids into the dedupe index, which nothing else
/// touches during the replay; the calling one takes the records into the cache and the tail, in order.
/// A million messages replay within the two seconds the start-up goal allows only if these overlap.
pub(crate) fn replay(
    log_dir: &Path,
    cache: &mut Cache,
    tail: &mut Tail,
    dedupe: &mut DedupeIndex,
) -> Result<Replayed, StoreError> {
    let indexed = tail.indexed;
    let (tx, rx) = std::sync::mpsc::sync_channel(DECODED_QUEUE);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("ferry-store-replay".into())
            .spawn_scoped(scope, move || read_frames(log_dir, indexed, dedupe, &tx))
            .map_err(|e| StoreError::Backend(format!("log: {e}")))?;
        let mut last_group = indexed;
        let mut groups = 0;
        // Ends when the reader is done or failed (it drops the sender either way).
        for (group, record, size) in rx {
            cache.apply(&record);
            tail.push(group, record, size);
            last_group = group;
            groups += 1;
        }
        match reader.join() {
            Ok(result) => result?,
            Err(_) => return Err(StoreError::Backend("log: replay reader panicked".into())),
        }
        Ok(Replayed {
            next_group: last_group + 1,
            groups,
        })
    })
}

/// The groups after `after` through `through`, from the log: what the indexer puts back into the tail
/// when a reopened index lost them (see `indexer`). Fails unless every one of them is there.
pub(crate) fn read_groups(
    log_dir: &Path,
    after: u64,
    through: u64,
) -> Result<Vec<(u64, Arc<GroupRecord>, usize)>, StoreError> {
    let corrupt = |what: String| StoreError::Backend(format!("log: {what}"));
    let io = |err: std::io::Error| StoreError::Backend(format!("log: {err}"));
    let mut groups = Vec::new();
    let mut expected = after + 1;
    for (_, path) in segment::list(log_dir).map_err(io)? {
        // A frame being appended right now reads as torn and is simply not taken: it is above
        // `through`, which the indexer had already seen.
        for (group, payload) in segment::scan(&path).map_err(io)?.frames {
            if group <= after || group > through {
                continue;
            }
            if group != expected {
                return Err(corrupt(format!(
                    "group {group} where {expected} was expected"
                )));
            }
            let size = payload.len();
            let record = GroupRecord::decode_checked(payload)
                .map_err(|e| corrupt(format!("group {group}: {e}")))?;
            groups.push((group, Arc::new(record), size));
            expected += 1;
        }
    }
    if expected != through + 1 {
        return Err(corrupt(format!(
            "groups {expected}..={through} are no longer in the log"
        )));
    }
    Ok(groups)
}

/// Reads every segment, cuts off a torn end, checks that groups follow each other from `indexed + 1`,
/// takes the dedupe rows of the records past `indexed` into `dedupe` and sends the records to `out`,
/// in order. Stops at the first error, after the frames before it were sent.
fn read_frames(
    log_dir: &Path,
    indexed: u64,
    dedupe: &mut DedupeIndex,
    out: &std::sync::mpsc::SyncSender<(u64, Arc<GroupRecord>, usize)>,
) -> Result<(), StoreError> {
    let corrupt = |what: String| StoreError::Backend(format!("log: {what}"));
    let io = |err: std::io::Error| StoreError::Backend(format!("log: {err}"));
    let segments = segment::list(log_dir).map_err(io)?;
    let mut last_group = indexed;
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
            if group <= indexed {
                continue;
            }
            if group != last_group + 1 {
                return Err(corrupt(format!(
                    "group {group} follows {last_group}: acked groups are missing"
                )));
            }
            let size = payload.len();
            let record = GroupRecord::decode_checked(payload)
                .map_err(|e| corrupt(format!("group {group}: {e}")))?;
            dedupe.insert(&record.dedupe);
            if out.send((group, Arc::new(record), size)).is_err() {
                // The applying side is gone; it reports its own failure.
                return Ok(());
            }
            last_group = group;
        }
    }
    Ok(())
}
