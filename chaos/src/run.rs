//! One chaos run: start the target and the proxy, build the scenario, start the devices, apply the
//! seeded schedule while they send, stop the faults, let the system settle, check, report.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proxy::Faults;

use crate::checker;
use crate::cluster_target::Cluster;
use crate::fleet::{Fleet, Recorder};
use crate::observe::Span;
use crate::profile::Profile;
use crate::proxies::Proxies;
use crate::report::{self, FaultRecord, Messages, Report};
use crate::scenario;
use crate::schedule::{self, Fault, Planned};
use crate::target::{SingleNode, Target};

/// What a run needs besides the profile.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The profile.
    pub profile: Profile,
    /// The seed of the schedule and the proxy.
    pub seed: u64,
    /// The `ferry-server` binary.
    pub server_binary: PathBuf,
    /// This binary (spawned as `ferry-chaos device`).
    pub self_binary: PathBuf,
    /// Where data dirs and stores go (a temp dir when `None`).
    pub work_dir: Option<PathBuf>,
    /// What to attack.
    pub target: TargetKind,
}

/// Which [`Target`] a run attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// One `ferry-server` on the embedded store.
    SingleNode,
    /// `nodes` cluster nodes on one `redis-server`.
    Cluster {
        /// How many nodes.
        nodes: usize,
    },
}

impl TargetKind {
    /// Nodes the schedule may pick from.
    pub fn nodes(self) -> usize {
        match self {
            TargetKind::SingleNode => 1,
            TargetKind::Cluster { nodes } => nodes,
        }
    }

    /// Starts the target under `work`.
    fn start(
        self,
        server_binary: PathBuf,
        work: &std::path::Path,
    ) -> anyhow::Result<Box<dyn Target>> {
        Ok(match self {
            TargetKind::SingleNode => {
                Box::new(SingleNode::start(server_binary, work.join("server-data"))?)
            }
            TargetKind::Cluster { nodes } => Box::new(Cluster::start(server_binary, work, nodes)?),
        })
    }
}

/// Longest wait for the admin's removal (it waits for a connection across server kills).
const GROUP_OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at the admin's removal.
const GROUP_OP_ATTEMPTS: u32 = 5;
/// How often the run looks for crashed processes and, while settling, for owed deliveries.
const POLL: Duration = Duration::from_millis(500);

/// Runs the scenario and returns the report (violations inside; the caller decides the exit code).
pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    let started = Instant::now();
    // Held to the end of the run: dropping it removes the temp dir.
    let mut temp = None;
    let work = match &config.work_dir {
        Some(dir) => dir.clone(),
        None => temp
            .insert(tempfile::Builder::new().prefix("ferry-chaos-").tempdir()?)
            .path()
            .to_path_buf(),
    };
    let stores = work.join("stores");
    std::fs::create_dir_all(&stores)?;
    let profile = &config.profile;

    let server_binary = config.server_binary.clone();
    let mut target = tokio::task::block_in_place(|| config.target.start(server_binary, &work))?;
    let disk_full_mode = target.disk_full_mode();
    let disk_full = !disk_full_mode.starts_with("not injected");

    let proxy = Proxies::start(&target.endpoints(), config.seed).await?;

    let scenario = scenario::build(
        target.as_ref(),
        profile.users,
        profile.devices_per_user,
        &stores,
    )
    .await?;
    let mut scenario_counts = std::collections::BTreeMap::new();
    scenario_counts.insert("users".to_owned(), profile.users as u64);
    scenario_counts.insert("devices".to_owned(), scenario.devices.len() as u64);
    scenario_counts.insert("direct_conversations".to_owned(), scenario.directs as u64);
    scenario_counts.insert("group_conversations".to_owned(), scenario.groups as u64);

    let (admin, removal) = (scenario.admin, scenario.removal);
    let recorder = Arc::new(Mutex::new(Recorder::new(started, scenario.obs)));
    let mut fleet = Fleet::new(
        config.self_binary.clone(),
        proxy.addrs(),
        target.ca().to_path_buf(),
        profile.rate,
        scenario.devices,
        recorder.clone(),
    );
    for i in 0..fleet.specs().len() {
        fleet.spawn(i).await?;
    }

    // Halfway through the faults the admin removes a member from the shrinking group.
    let removal_task = {
        let (admin, removal, half) = (admin.clone(), removal.clone(), profile.faults_for / 2);
        tokio::spawn(async move {
            tokio::time::sleep(half).await;
            let mut errors = Vec::new();
            // A server kill can take the answer with it: try again (a removal that did happen
            // then fails as "not a member", and its system message tells the seq).
            for _ in 0..GROUP_OP_ATTEMPTS {
                let call = admin.remove_member(&removal.conversation, &removal.user);
                match tokio::time::timeout(GROUP_OP_TIMEOUT, call).await {
                    Ok(Ok(change)) => return Ok(change.seq),
                    Ok(Err(e)) => errors.push(e.to_string()),
                    Err(_) => errors.push(format!("no answer in {GROUP_OP_TIMEOUT:?}")),
                }
                tokio::time::sleep(POLL).await;
            }
            Err(errors.join("; "))
        })
    };
    let plan = schedule::plan(
        config.seed,
        &profile.schedule(disk_full, config.target.nodes()),
    );
    let mut chaos = Chaos {
        target: target.as_mut(),
        proxy: &proxy,
        fleet: &mut fleet,
        recorder: &recorder,
        started,
        log: Vec::new(),
        unexpected: Vec::new(),
        kills_with_pending: 0,
    };
    chaos.apply(&plan).await?;
    chaos.calm().await?;
    let kills_with_pending = chaos.kills_with_pending;
    let (fault_log, mut unexpected) = (chaos.log, chaos.unexpected);

    let membership_change = record_removal(removal_task.await, &removal, &recorder);
    // Settle: no faults, no new sends; wait until nothing is owed and every receipt came back.
    fleet.stop_sending().await;
    let calm_at = Instant::now();
    let mut settled = false;
    let mut quiet_polls = 0;
    while calm_at.elapsed() < profile.settle_timeout {
        tokio::time::sleep(POLL).await;
        for status in tokio::task::block_in_place(|| target.restart_if_dead())? {
            unexpected.push(format!("{status} exited while settling"));
        }
        for (device, status) in fleet.restart_exited().await? {
            unexpected.push(format!("device {device} exited while settling: {status}"));
        }
        let done = {
            let rec = recorder.lock().expect("recorder lock");
            checker::pending(&rec.obs) == 0 && rec.in_flight.values().all(|&n| n <= 0)
        };
        // Two quiet polls in a row: a receipt printed between the two looks is not missed.
        quiet_polls = if done { quiet_polls + 1 } else { 0 };
        if quiet_polls >= 2 {
            settled = true;
            break;
        }
    }
    let settle_ms = calm_at.elapsed().as_millis() as u64;
    let target_name = target.name().to_owned();
    fleet.shutdown().await;
    admin.shutdown().await;
    proxy.shutdown().await;
    tokio::task::block_in_place(|| target.shutdown());

    let rec = recorder.lock().expect("recorder lock");
    let violations = checker::check(&rec.obs);
    if let Some(dir) = &config.work_dir {
        // Everything the checker saw, for looking into a failure with other tools.
        std::fs::write(dir.join("observations.json"), serde_json::to_vec(&rec.obs)?)?;
    }
    Ok(Report {
        seed: config.seed,
        profile: profile.name.to_owned(),
        target: target_name,
        nodes: config.target.nodes(),
        disk_full_mode,
        scenario: scenario_counts,
        wall_s: started.elapsed().as_secs_f64(),
        settled,
        settle_ms,
        messages: Messages::count(&rec.obs),
        faults: schedule::count_kinds(fault_log.iter().map(|f| &f.fault)),
        client_kills_with_pending: kills_with_pending,
        violations_by_kind: report::by_kind(&violations),
        lost_with_history: checker::lost_with_history(&rec.obs),
        violations: report::evidence(&violations, &fault_log),
        fault_log,
        unexpected_exits: unexpected,
        membership_changes: vec![membership_change],
        send_failures: rec.failures.clone(),
    })
}

/// Puts the removal's seq into the checker's membership and describes it for the report. The seq comes
/// from the admin's answer or, if that was lost (a server kill at the wrong moment), from the removal's
/// system message as devices saw it: the only system message of the group after its creation.
fn record_removal(
    outcome: Result<Result<u64, String>, tokio::task::JoinError>,
    removal: &scenario::Removal,
    recorder: &Mutex<Recorder>,
) -> String {
    let outcome = outcome.unwrap_or_else(|e| Err(e.to_string()));
    let mut rec = recorder.lock().expect("recorder lock");
    let seen = rec
        .obs
        .delivered
        .values()
        .flatten()
        .filter(|d| d.system && d.conversation == removal.conversation && d.seq > 1)
        .map(|d| d.seq)
        .min();
    let (user, conversation) = (&removal.user, &removal.conversation);
    let seq = match (outcome.as_ref().ok().copied(), seen) {
        (Some(seq), _) | (None, Some(seq)) => seq,
        (None, None) => {
            let e = outcome.err().unwrap_or_default();
            return format!(
                "removing {user} from {conversation} failed ({e}); membership unchanged"
            );
        }
    };
    let span = Span {
        joined_after: 0,
        removed_at: Some(seq),
    };
    rec.obs.membership.add(conversation, user, span);
    match outcome {
        Ok(_) => format!("{user} removed from {conversation} by seq {seq}"),
        Err(e) => format!("{user} removed from {conversation} by seq {seq} (seen by devices; the answer was lost: {e})"),
    }
}

/// Applies a schedule to the target, proxy and devices.
struct Chaos<'a> {
    target: &'a mut dyn Target,
    proxy: &'a Proxies,
    fleet: &'a mut Fleet,
    recorder: &'a Mutex<Recorder>,
    started: Instant,
    log: Vec<FaultRecord>,
    unexpected: Vec<String>,
    kills_with_pending: u64,
}

/// A fault starting or ending.
struct Step<'p> {
    at_ms: u64,
    start: bool,
    planned: &'p Planned,
}

impl Chaos<'_> {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs every step of `plan` at its time (offset by now), watching for crashes in between.
    async fn apply(&mut self, plan: &[Planned]) -> anyhow::Result<()> {
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(plan.len() * 2);
        for planned in plan {
            steps.push(Step {
                at_ms: planned.at_ms,
                start: true,
                planned,
            });
            if planned.duration_ms > 0 {
                steps.push(Step {
                    at_ms: planned.at_ms + planned.duration_ms,
                    start: false,
                    planned,
                });
            }
        }
        // Ends before starts at the same instant, so one lane's next fault never overlaps its last.
        steps.sort_by_key(|s| (s.at_ms, s.start));
        let base = Instant::now();
        for step in &steps {
            // Bounded: each wait ends at the step's time; the loop runs once per step.
            loop {
                let due = base + Duration::from_millis(step.at_ms);
                let now = Instant::now();
                if now >= due {
                    break;
                }
                tokio::time::sleep((due - now).min(POLL)).await;
                self.watch().await?;
            }
            self.step(step).await?;
        }
        Ok(())
    }

    /// Restarts processes that died on their own and notes them.
    async fn watch(&mut self) -> anyhow::Result<()> {
        for status in tokio::task::block_in_place(|| self.target.restart_if_dead())? {
            let at = self.now_ms();
            self.unexpected
                .push(format!("{at} ms: {status} exited on its own"));
        }
        for (device, status) in self.fleet.restart_exited().await? {
            let at = self.now_ms();
            self.unexpected.push(format!(
                "{at} ms: device {device} exited on its own: {status}"
            ));
        }
        Ok(())
    }

    async fn step(&mut self, step: &Step<'_>) -> anyhow::Result<()> {
        let planned = step.planned;
        let mut detail = String::new();
        match (&planned.fault, step.start) {
            (Fault::Weather(weather), true) => {
                self.proxy.set_faults(Faults::symmetric(weather.faults()))?
            }
            (Fault::Weather(_), false) => self.proxy.set_faults(Faults::none())?,
            (Fault::Blackhole, true) => self
                .proxy
                .blackhole(Duration::from_millis(planned.duration_ms)),
            (Fault::Blackhole, false) => self.proxy.clear_blackhole(),
            (Fault::Rebind, _) => self.proxy.rebind()?,
            (Fault::ServerKill, _) => tokio::task::block_in_place(|| self.target.kill_restart(0))?,
            (Fault::ServerPause, true) => self.target.pause(0)?,
            (Fault::ServerPause, false) => self.target.resume(0)?,
            (Fault::NodeKill { node }, _) => {
                tokio::task::block_in_place(|| self.target.kill_restart(*node))?
            }
            (Fault::NodePause { node }, true) => self.target.pause(*node)?,
            (Fault::NodePause { node }, false) => self.target.resume(*node)?,
            (Fault::RedisKill, true) => self.target.redis_kill()?,
            (Fault::RedisKill, false) => {
                tokio::task::block_in_place(|| self.target.redis_restart())?
            }
            (Fault::Flushall, _) => {
                self.recorder.lock().expect("recorder lock").history_loss();
                tokio::task::block_in_place(|| self.target.flushall())?
            }
            (Fault::DiskFull, true) => tokio::task::block_in_place(|| self.target.fill_disk())?,
            (Fault::DiskFull, false) => self.target.free_disk()?,
            (Fault::ClientKill { device }, true) => {
                let in_flight = self.fleet.kill(*device).await;
                self.kills_with_pending += u64::from(in_flight > 0);
                detail = format!(
                    "{}: {in_flight} send(s) in flight",
                    self.fleet.specs()[*device].key
                );
            }
            (Fault::ClientKill { device }, false) => self.fleet.spawn(*device).await?,
            (Fault::ClientPause { device }, pause) => self.fleet.signal(*device, pause),
        }
        if step.start {
            if let Fault::ClientPause { device } = planned.fault {
                detail = self.fleet.specs()[device].key.clone();
            }
            let at_ms = self.now_ms();
            self.log.push(FaultRecord {
                at_ms,
                duration_ms: planned.duration_ms,
                fault: planned.fault.clone(),
                detail,
            });
        }
        Ok(())
    }

    /// Ends whatever could still be active (every end step ran, but be sure before settling).
    async fn calm(&mut self) -> anyhow::Result<()> {
        self.proxy.set_faults(Faults::none())?;
        self.proxy.clear_blackhole();
        for node in 0..self.target.endpoints().len() {
            self.target.resume(node)?;
        }
        tokio::task::block_in_place(|| self.target.redis_restart())?;
        self.target.free_disk()?;
        self.watch().await
    }
}
