//! The log on disk: segment files of checksummed, length-prefixed frames, one frame per group commit.
//!
//! Frame: `len: u32 LE | crc32: u32 LE | group: u64 LE | payload (len bytes)`; the CRC covers the group
//! number and the payload. Group numbers increase by one from frame to frame across segments.
//! A segment is `log/<first group, 20 digits>.seg`; the writer starts a new one at start-up and when
//! the current one exceeds the size limit, and the indexer deletes a segment once every group in it is
//! in the index (see `indexer`).
//!
//! A crash can leave a torn frame at the end of the segment being written: its length runs past the end
//! of the file or its checksum fails. [`scan`] stops at the first such frame; that group was never
//! acked (the ack waits for the fsync that covers the whole frame), so cutting it off loses nothing.
//! A frame that fails its checksum in the middle of a segment (media corruption, not a crash) also ends
//! the scan of that segment.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// Directory of the segments inside the data directory.
pub(crate) const LOG_DIR: &str = "log";
const HEADER: usize = 16;
/// Largest payload accepted when reading; anything longer is a corrupt length field.
const MAX_FRAME: usize = 256 << 20;

/// The path of the segment whose first group is `first_group`.
pub(crate) fn segment_path(dir: &Path, first_group: u64) -> PathBuf {
    dir.join(format!("{first_group:020}.seg"))
}

/// Segments in `dir`, by first group.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// The valid frames of one segment and where they end.
pub(crate) struct Scanned {
    /// `(group, payload)` in file order; payloads share the file's buffer.
    pub frames: Vec<(u64, Bytes)>,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// Bytes after the valid prefix (a torn or corrupt frame).
    pub torn_bytes: u64,
}

/// Reads every valid frame of `path` (see the module docs for where the scan stops).
pub(crate) fn scan(path: &Path) -> io::Result<Scanned> {
    let data = Bytes::from(std::fs::read(path)?);
    let mut frames = Vec::new();
    let mut at = 0usize;
    while data.len() - at >= HEADER {
        let word = |i: usize| u32::from_le_bytes(data[at + i..at + i + 4].try_into().expect("4"));
        let len = word(0) as usize;
        let crc = word(4);
        if len > MAX_FRAME || data.len() - at - HEADER < len {
            break;
        }
        let body = &data[at + 8..at + HEADER + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let group = u64::from_le_bytes(data[at + 8..at + HEADER].try_into().expect("8"));
        frames.push((group, data.slice(at + HEADER..at + HEADER + len)));
        at += HEADER + len;
    }
    Ok(Scanned {
        frames,
        valid_len: at as u64,
        torn_bytes: (data.len() - at) as u64,
    })
}

/// A switch that makes the log writer fail with `ENOSPC` (out of space) while it is on, after writing
/// the first half of the frame as a real full disk does: a test hook for the full-disk path, since a
/// real full disk cannot be arranged on every machine.
#[derive(Debug, Clone, Default)]
pub struct LogFault(Arc<AtomicBool>);

impl LogFault {
    /// Turns the fault on (`true`) or off.
    pub fn set_disk_full(&self, full: bool) {
        self.0.store(full, Ordering::SeqCst);
    }

    /// Whether the fault is on (the index's backend asks too, see `index_db`).
    pub(crate) fn is_disk_full(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn check(&self) -> io::Result<()> {
        if self.is_disk_full() {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

/// Appends frames to the current segment; owned by the writer thread.
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    file: File,
    len: u64,
    roll_at: u64,
    fault: Option<LogFault>,
    frame: Vec<u8>,
}

impl SegmentWriter {
    /// Starts a new segment whose first group will be `first_group`. A file of that name can only hold
    /// frames below `first_group` that were cut off as torn, so it is truncated.
    pub(crate) fn create(
        dir: &Path,
        first_group: u64,
        roll_at: u64,
        fault: Option<LogFault>,
    ) -> io::Result<SegmentWriter> {
        let file = new_segment(dir, first_group)?;
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            file,
            len: 0,
            roll_at: roll_at.max(1),
            fault,
            frame: Vec::new(),
        })
    }

    fn will_roll(&self) -> bool {
        self.len >= self.roll_at
    }

    /// Appends one frame and makes it durable (one `fdatasync`). On failure the segment is cut back to
    /// where it was, so a later append does not follow a half-written frame.
    pub(crate) fn append(&mut self, group: u64, payload: &[u8]) -> io::Result<()> {
        if self.will_roll() {
            self.file = new_segment(&self.dir, group)?;
            self.len = 0;
        }
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len as usize <= MAX_FRAME)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "log frame too large"))?;
        self.frame.clear();
        self.frame.extend_from_slice(&len.to_le_bytes());
        self.frame.extend_from_slice(&[0; 4]);
        self.frame.extend_from_slice(&group.to_le_bytes());
        self.frame.extend_from_slice(payload);
        let crc = crc32fast::hash(&self.frame[8..]);
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self.write_frame();
        if written.is_err() {
            // Shrinking needs no space. The write position moved with the part of the frame that was
            // written, so put it back too: otherwise the next append lands past the new end, the gap
            // reads as a torn frame at the next start, and every acked frame behind it is cut off.
            // If either fails, the torn frame is cut off by its checksum at the next start, and the
            // next append must not land behind it: start a new segment.
            let cut_back = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)));
            if cut_back.is_err() {
                self.len = self.roll_at;
            }
            self.frame = Vec::new();
        }
        written
    }

    fn write_frame(&mut self) -> io::Result<()> {
        if let Some(fault) = &self.fault {
            if let Err(full) = fault.check() {
                // A real full disk takes part of a write before refusing the rest.
                self.file.write_all(&self.frame[..self.frame.len() / 2])?;
                return Err(full);
            }
        }
        self.file.write_all(&self.frame)?;
        self.file.sync_data()?;
        self.len += self.frame.len() as u64;
        Ok(())
    }
}

fn new_segment(dir: &Path, first_group: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(segment_path(dir, first_group))?;
    // The new name must survive a crash, or the frames acked in it would be lost with it.
    File::open(dir)?.sync_all()?;
    Ok(file)
}
