//! A real full disk: the store's directory on a small tmpfs that the test mounts (needs root, as in
//! the project's test runs and CI). Without the privilege the test fails: it never passes unchecked.
//! `log.rs` covers the same path with an injected fault.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use ferry_store::{EmbeddedStore, EmbeddedStoreOptions, NewMessage, Store, StoreError};

const DIRECT: &str = "d:alice:bob";

fn msg(id: &str) -> NewMessage {
    NewMessage {
        conversation: DIRECT.into(),
        sender: "alice".into(),
        sender_device: "dev".into(),
        client_msg_id: id.into(),
        body: Bytes::from(vec![9; 2048]),
        server_time_ms: 1,
    }
}

/// Unmounts the tmpfs when the test ends, also when it fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` on `dir`. The suite runs as root (scripts/test.sh, CI): a mount that fails
/// fails the test rather than letting it pass without checking anything.
fn mount_tmpfs(dir: &Path, size: &str) -> Mount {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status();
    match status {
        Ok(status) if status.success() => Mount(dir.to_owned()),
        other => panic!(
            "log_enospc: cannot mount a tmpfs ({other:?}); this test needs root (as the suite runs)"
        ),
    }
}

/// Fills the file system with one file until it is full (bounded by its size).
fn fill(path: &Path) -> std::fs::File {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    for _ in 0..10_000 {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    file
}

#[tokio::test]
async fn a_really_full_disk_refuses_appends_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let _mount = mount_tmpfs(root.path(), "16m");
    let dir = root.path().join("store");
    let filler = root.path().join("filler");
    let mut acked = Vec::new();
    {
        let store = EmbeddedStore::open(&dir, EmbeddedStoreOptions::default()).unwrap();
        store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
        for i in 0..5 {
            acked.push(store.append(msg(&format!("m{i}"))).await.unwrap().seq);
        }
        let file = fill(&filler);
        let mut refused = 0;
        for i in 5..40 {
            match store.append(msg(&format!("m{i}"))).await {
                Ok(appended) => acked.push(appended.seq), // the last free pages
                Err(StoreError::Unavailable(_)) => refused += 1,
                Err(other) => panic!("a full disk must be retryable: {other:?}"),
            }
        }
        assert!(refused > 0, "the disk never filled up");
        // Space returns: the retry of a refused message is stored after the acked ones, no hole.
        drop(file);
        std::fs::remove_file(&filler).unwrap();
        let retried = store.append(msg("m39")).await.unwrap();
        assert!(!retried.duplicate);
        acked.push(retried.seq);
        let read = store.read(DIRECT, 0, u64::MAX, u32::MAX).await.unwrap();
        assert_eq!(read.iter().map(|m| m.seq).collect::<Vec<_>>(), acked);
    }
    let store = EmbeddedStore::open(&dir, EmbeddedStoreOptions::default()).unwrap();
    let read = store.read(DIRECT, 0, u64::MAX, u32::MAX).await.unwrap();
    assert_eq!(read.iter().map(|m| m.seq).collect::<Vec<_>>(), acked);
    assert!(read.iter().zip(1..).all(|(m, seq)| m.seq == seq));
}
