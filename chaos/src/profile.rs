//! Run profiles: how many users and devices, how fast they send, how long faults rain, how dense.

use std::time::Duration;

use crate::schedule::ScheduleConfig;

/// The knobs of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// `short` or `soak`.
    pub name: &'static str,
    /// Users in the scenario.
    pub users: usize,
    /// Devices per user.
    pub devices_per_user: usize,
    /// Messages per second each device sends while faults run.
    pub rate: f64,
    /// Length of the fault phase.
    pub faults_for: Duration,
    /// Longest wait for the system to settle once faults stop (then what is missing is a violation).
    pub settle_timeout: Duration,
    /// Quiet time between faults of the server lane, in milliseconds.
    pub server_gap_ms: (u64, u64),
    /// Quiet time between faults of the client lane.
    pub client_gap_ms: (u64, u64),
    /// Quiet time between faults of the network lane.
    pub network_gap_ms: (u64, u64),
    /// Quiet time between faults of the Redis lane (cluster target only).
    pub redis_gap_ms: (u64, u64),
    /// Chance in percent that a Redis fault is a FLUSHALL (cluster target only).
    pub flushall_pct: u32,
}

/// Why a profile cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    /// Not `short`, `soak` or `ci`.
    #[error("unknown profile {0:?} (expected short, soak or ci)")]
    Unknown(String),
    /// `--minutes` out of range.
    #[error("--minutes must be within 1..=1440, got {0}")]
    Minutes(u64),
}

impl Profile {
    /// The CI profile: 3 users × 2 devices, 150 s of faults; about 3 minutes of wall time.
    pub fn short() -> Profile {
        Profile {
            name: "short",
            users: 3,
            devices_per_user: 2,
            rate: 4.0,
            faults_for: Duration::from_secs(150),
            settle_timeout: Duration::from_secs(60),
            server_gap_ms: (5_000, 10_000),
            client_gap_ms: (3_000, 7_000),
            network_gap_ms: (1_000, 4_000),
            redis_gap_ms: (10_000, 25_000),
            flushall_pct: 35,
        }
    }

    /// The bounded profile of the cluster test in CI: 3 users (the fewest the scenario takes) × 2
    /// devices, 20 s of faults, at most 20 s of settling (under a minute in all).
    pub fn ci() -> Profile {
        Profile {
            name: "ci",
            users: 3,
            devices_per_user: 2,
            rate: 2.0,
            faults_for: Duration::from_secs(20),
            settle_timeout: Duration::from_secs(20),
            server_gap_ms: (3_000, 6_000),
            client_gap_ms: (3_000, 6_000),
            network_gap_ms: (1_000, 3_000),
            redis_gap_ms: (4_000, 8_000),
            flushall_pct: 50,
        }
    }

    /// The soak profile: 4 users × 2 devices for `minutes` of faults.
    pub fn soak(minutes: u64) -> Result<Profile, ProfileError> {
        if !(1..=1440).contains(&minutes) {
            return Err(ProfileError::Minutes(minutes));
        }
        Ok(Profile {
            name: "soak",
            users: 4,
            devices_per_user: 2,
            rate: 5.0,
            faults_for: Duration::from_secs(minutes * 60),
            settle_timeout: Duration::from_secs(120),
            server_gap_ms: (8_000, 20_000),
            client_gap_ms: (4_000, 10_000),
            network_gap_ms: (1_000, 5_000),
            redis_gap_ms: (15_000, 40_000),
            flushall_pct: 10,
        })
    }

    /// The profile called `name`; `minutes` applies to `soak` only.
    pub fn named(name: &str, minutes: Option<u64>) -> Result<Profile, ProfileError> {
        match name {
            "short" => Ok(Profile::short()),
            "soak" => Profile::soak(minutes.unwrap_or(30)),
            "ci" => Ok(Profile::ci()),
            other => Err(ProfileError::Unknown(other.to_owned())),
        }
    }

    /// The fault schedule's configuration for this profile against `nodes` nodes (1: single node).
    pub fn schedule(&self, disk_full: bool, nodes: usize) -> ScheduleConfig {
        ScheduleConfig {
            duration: self.faults_for,
            devices: self.users * self.devices_per_user,
            disk_full,
            server_gap_ms: self.server_gap_ms,
            client_gap_ms: self.client_gap_ms,
            network_gap_ms: self.network_gap_ms,
            nodes,
            redis_gap_ms: self.redis_gap_ms,
            flushall_pct: self.flushall_pct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranges() {
        assert_eq!(Profile::named("short", None), Ok(Profile::short()));
        let soak = Profile::named("soak", Some(30)).expect("soak");
        assert_eq!(soak.faults_for, Duration::from_secs(1800));
        assert_eq!(
            Profile::named("long", None),
            Err(ProfileError::Unknown("long".into()))
        );
        assert_eq!(Profile::soak(0), Err(ProfileError::Minutes(0)));
    }
}
