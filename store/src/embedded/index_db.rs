//! The redb handle of the index, and reopening it after an I/O error.
//!
//! Why reopening: once a redb write fails with an I/O error (a full disk in the middle of an index
//! transaction), that `Database` answers every later transaction with "Previous I/O error occurred"
//! until it is closed — the index would stay broken after space returns, the tail would fill up and
//! every Send would be refused until a restart. The indexer therefore drops the handle and opens the
//! file again ([`IndexDb::reopen`]); redb's open repairs the file back to its last durable commit,
//! and the indexer re-indexes from the log what that commit lacks (see `indexer`).
//!
//! Every user takes the handle through [`IndexDb::get`] (a clone of an `Arc`, taken under a short
//! lock, so nobody blocks on a reopen); while the handle is being reopened, or the open failed because
//! the disk is still full, `get` answers an error and the indexer tries again later.
//!
//! The test hook [`LogFault`] also reaches here: with it, the database runs on [`FaultyBackend`],
//! whose writes fail with `ENOSPC` while the switch is on, as a real full disk does.

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, Database, StorageBackend};

use super::LogFault;

/// How long a reopen waits for the last users of the old handle (short read transactions) to finish.
const REOPEN_WAIT: Duration = Duration::from_secs(5);
const REOPEN_POLL: Duration = Duration::from_millis(10);

/// The index database, replaceable after an I/O error.
pub(crate) struct IndexDb {
    path: PathBuf,
    fault: Option<LogFault>,
    cache_bytes: usize,
    current: RwLock<Option<Arc<Database>>>,
}

impl IndexDb {
    /// Opens (creating if needed) the database at `path`, with a page cache of `cache_bytes`.
    pub(crate) fn open(
        path: &Path,
        fault: Option<LogFault>,
        cache_bytes: usize,
    ) -> Result<IndexDb, redb::Error> {
        let db = open_database(path, fault.as_ref(), cache_bytes)?;
        Ok(IndexDb {
            path: path.to_owned(),
            fault,
            cache_bytes,
            current: RwLock::new(Some(Arc::new(db))),
        })
    }

    /// The current handle; an error while it is being reopened or could not be reopened.
    pub(crate) fn get(&self) -> Result<Arc<Database>, redb::Error> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                redb::Error::Io(io::Error::other(
                    "index database closed after an I/O error; reopening",
                ))
            })
    }

    /// Closes the handle (waiting, bounded, for its last users) and opens the file again. On error
    /// the store has no index handle until a later call succeeds.
    pub(crate) fn reopen(&self) -> Result<(), redb::Error> {
        let old = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut old) = old {
            // redb refuses to open a file that an open handle still holds: wait until ours is the
            // last reference, then drop it.
            let mut waited = Duration::ZERO;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if waited < REOPEN_WAIT => {
                        old = still_shared;
                        std::thread::sleep(REOPEN_POLL);
                        waited += REOPEN_POLL;
                    }
                    Err(still_shared) => {
                        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(still_shared);
                        return Err(redb::Error::Io(io::Error::other(
                            "index database still in use; not reopened",
                        )));
                    }
                }
            }
        }
        let db = open_database(&self.path, self.fault.as_ref(), self.cache_bytes)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
        Ok(())
    }
}

fn open_database(
    path: &Path,
    fault: Option<&LogFault>,
    cache_bytes: usize,
) -> Result<Database, redb::Error> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    let Some(fault) = fault else {
        return Ok(builder.create(path)?);
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let backend = FaultyBackend {
        inner: FileBackend::new(file)?,
        fault: fault.clone(),
    };
    Ok(builder.create_with_backend(backend)?)
}

/// A file backend whose writes and growth fail with `ENOSPC` while its [`LogFault`] is on.
#[derive(Debug)]
struct FaultyBackend {
    inner: FileBackend,
    fault: LogFault,
}

impl FaultyBackend {
    fn check(&self) -> Result<(), io::Error> {
        if self.fault.is_disk_full() {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if len > self.inner.len()? {
            self.check()?;
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
