//! Facts about the machine a run was made on: cores, kernel, CPU model, and how many 4 KiB appends +
//! fdatasync the results disk does per second (the ceiling of any fsync-per-ack design, and the
//! reason durable systems need group commit).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// Most appends of the fsync probe (it also stops after its duration).
const PROBE_MAX_APPENDS: u32 = 1_000_000;

/// The machine facts printed in the report.
#[derive(Serialize, Clone, Debug)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// "model name" of /proc/cpuinfo.
    pub cpu_model: String,
    /// 4 KiB append + fdatasync per second, measured in the results dir.
    pub fsyncs_per_sec: f64,
}

impl Machine {
    /// Reads the facts and measures fdatasync in `dir` for about `probe`.
    pub fn probe(dir: &Path, probe: Duration) -> anyhow::Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        Ok(Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            cpu_model,
            fsyncs_per_sec: fsync_rate(dir, probe)?,
        })
    }
}

/// Appends 4 KiB blocks to a fresh file, fdatasync after each, for `probe`; returns appends/s.
fn fsync_rate(dir: &Path, probe: Duration) -> anyhow::Result<f64> {
    let path = dir.join(".fsync-probe");
    let mut file = std::fs::File::create(&path).context("creating the fsync probe file")?;
    let block = [0x5au8; 4096];
    let started = Instant::now();
    let mut appends = 0u32;
    while started.elapsed() < probe && appends < PROBE_MAX_APPENDS {
        file.write_all(&block)?;
        file.sync_data().context("fdatasync")?;
        appends += 1;
    }
    let rate = appends as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}
