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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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

/// Most segments decoded ahead of the one being applied: bounds what the decoders hold beyond the
/// tail (a segment is at most `segment_bytes` of log, and its records end up in the tail anyway).
const LOOKAHEAD: usize = 4;
/// Most decoding threads. Beyond the machine's cores they only compete with the applying thread.
const MAX_DECODERS: usize = 4;
/// Log bytes per message assumed when sizing the dedupe index up front (a 256-byte message with its
/// dedupe row and its share of the group's rows takes about 420 bytes). Too low reserves slots no
/// message fills (memory only); too high leaves one more growth of the map.
const LOG_BYTES_PER_MESSAGE: u64 = 400;

/// Replays `log_dir` into `cache`, `tail` (whose `indexed` is the index's high-water mark) and the
/// dedupe index.
///
/// Segments are read, checked and decoded in parallel (decoding slices the frame's buffer, see
/// `record`), each by one of up to [`MAX_DECODERS`] threads, at most [`LOOKAHEAD`] segments ahead;
/// the calling thread takes the decoded records in log order into the dedupe index, the cache and the
/// tail. Decoding was most of the replay's cost and is independent per segment; what must follow the
/// log's order (seqs, heads, the dedupe index's newest entry per id) stays on one thread.
pub(crate) fn replay(
    log_dir: &Path,
    cache: &mut Cache,
    tail: &mut Tail,
    dedupe: &mut DedupeIndex,
) -> Result<Replayed, StoreError> {
    let io = |err: std::io::Error| StoreError::Backend(format!("log: {err}"));
    let indexed = tail.indexed;
    let segments = segment::list(log_dir).map_err(io)?;
    let log_bytes: u64 = segments
        .iter()
        .filter_map(|(_, path)| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    dedupe.reserve(usize::try_from(log_bytes / LOG_BYTES_PER_MESSAGE).unwrap_or(0));
    let decoders = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_DECODERS)
        .min(segments.len())
        .max(1);
    let slots = Slots::new(segments.len());
    std::thread::scope(|scope| {
        for _ in 0..decoders {
            let (slots, segments) = (&slots, &segments);
            let spawned = std::thread::Builder::new()
                .name("ferry-store-replay".into())
                .spawn_scoped(scope, move || decode_segments(segments, indexed, slots));
            if let Err(e) = spawned {
                // The decoders already running must not wait for a consumer that never comes.
                slots.stop();
                return Err(StoreError::Backend(format!("log: {e}")));
            }
        }
        let applied = apply_in_order(&segments, indexed, &slots, cache, tail, dedupe);
        // Whatever happened, the decoders must not wait for a consumer that is gone.
        slots.stop();
        applied
    })
}

/// One segment, decoded: its records past the index, in file order.
struct DecodedSegment {
    /// `(group, record, payload size)` of the frames past `indexed`.
    records: Vec<(u64, Arc<GroupRecord>, usize)>,
    valid_len: u64,
    torn_bytes: u64,
    /// What stopped the decoding part way (after `records`), if anything.
    error: Option<StoreError>,
}

/// Decoded segments by index, handed from the decoders to the applying thread in log order.
struct Slots {
    state: Mutex<SlotState>,
    changed: Condvar,
}

struct SlotState {
    /// Next segment a decoder takes.
    next_to_decode: usize,
    /// Next segment the applying thread takes.
    next_to_apply: usize,
    decoded: Vec<Option<Result<DecodedSegment, StoreError>>>,
    /// The applying thread stopped (done or failed): decoders stop too.
    stopped: bool,
}

impl Slots {
    fn new(segments: usize) -> Slots {
        Slots {
            state: Mutex::new(SlotState {
                next_to_decode: 0,
                next_to_apply: 0,
                decoded: (0..segments).map(|_| None).collect(),
                stopped: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next segment to decode, once it is within [`LOOKAHEAD`] of the one being applied; `None`
    /// when every segment is taken or the replay stopped.
    fn claim(&self) -> Option<usize> {
        let mut state = self.lock();
        loop {
            if state.stopped || state.next_to_decode >= state.decoded.len() {
                return None;
            }
            if state.next_to_decode < state.next_to_apply + LOOKAHEAD {
                state.next_to_decode += 1;
                return Some(state.next_to_decode - 1);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put(&self, index: usize, segment: Result<DecodedSegment, StoreError>) {
        self.lock().decoded[index] = Some(segment);
        self.changed.notify_all();
    }

    /// Waits for segment `index` (the next in log order) and takes it. The wait ends: every claimed
    /// segment is put by its decoder, also when decoding it panicked (see [`decode_segments`]).
    fn take(&self, index: usize) -> Result<DecodedSegment, StoreError> {
        let mut state = self.lock();
        loop {
            if let Some(segment) = state.decoded[index].take() {
                state.next_to_apply = index + 1;
                self.changed.notify_all();
                return segment;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }
}

/// A decoder thread: claims segments until none is left and decodes each. A panic while decoding
/// one is put in its place as an error, so the applying thread never waits for a segment that will
/// not come.
fn decode_segments(segments: &[(u64, PathBuf)], indexed: u64, slots: &Slots) {
    while let Some(index) = slots.claim() {
        let (first, path) = &segments[index];
        let decoded = std::panic::catch_unwind(|| decode_segment(*first, path, indexed))
            .unwrap_or_else(|_| Err(StoreError::Backend("log: replay decoder panicked".into())));
        slots.put(index, decoded);
    }
}

/// Reads, checks and decodes one segment; frames of groups at or below `indexed` are skipped
/// undecoded.
fn decode_segment(first: u64, path: &Path, indexed: u64) -> Result<DecodedSegment, StoreError> {
    let corrupt = |what: String| StoreError::Backend(format!("log: {what}"));
    let scanned = segment::scan(path).map_err(|e| StoreError::Backend(format!("log: {e}")))?;
    let mut records = Vec::with_capacity(scanned.frames.len());
    let mut error = None;
    for (group, payload) in scanned.frames {
        if group < first {
            error = Some(corrupt(format!("group {group} in segment {first}")));
            break;
        }
        if group <= indexed {
            continue;
        }
        let size = payload.len();
        match GroupRecord::decode_checked(payload) {
            Ok(record) => records.push((group, Arc::new(record), size)),
            Err(e) => {
                error = Some(corrupt(format!("group {group}: {e}")));
                break;
            }
        }
    }
    Ok(DecodedSegment {
        records,
        valid_len: scanned.valid_len,
        torn_bytes: scanned.torn_bytes,
        error,
    })
}

/// Takes the decoded segments in log order: cuts off a torn end, checks that groups follow each other
/// from `indexed + 1`, and takes each record into the dedupe index, the cache and the tail. Stops at
/// the first error, after the records before it were taken.
fn apply_in_order(
    segments: &[(u64, PathBuf)],
    indexed: u64,
    slots: &Slots,
    cache: &mut Cache,
    tail: &mut Tail,
    dedupe: &mut DedupeIndex,
) -> Result<Replayed, StoreError> {
    let corrupt = |what: String| StoreError::Backend(format!("log: {what}"));
    let io = |err: std::io::Error| StoreError::Backend(format!("log: {err}"));
    let mut last_group = indexed;
    let mut groups = 0;
    for (i, (_, path)) in segments.iter().enumerate() {
        let decoded = slots.take(i)?;
        if decoded.torn_bytes > 0 {
            tracing::warn!(
                segment = %path.display(),
                bytes = decoded.torn_bytes,
                "cutting off a torn log frame"
            );
            if i + 1 == segments.len() {
                let file = OpenOptions::new().write(true).open(path).map_err(io)?;
                file.set_len(decoded.valid_len).map_err(io)?;
                file.sync_all().map_err(io)?;
            }
        }
        for (group, record, size) in decoded.records {
            if group != last_group + 1 {
                return Err(corrupt(format!(
                    "group {group} follows {last_group}: acked groups are missing"
                )));
            }
            dedupe.insert(&record.dedupe);
            cache.apply(&record);
            tail.push(group, record, size);
            last_group = group;
            groups += 1;
        }
        if let Some(error) = decoded.error {
            return Err(error);
        }
    }
    Ok(Replayed {
        next_group: last_group + 1,
        groups,
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
