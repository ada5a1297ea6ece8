//! The durable record of a sandbox and the states it moves through.
//!
//! Every sandbox ends in a terminal state that says why: `exited` with a code, `killed`
//! with a [`KillReason`], `failed` with an error, or `lost` with what was found after a restart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::SandboxId;
use crate::soul::SandboxSpec;
use crate::verdict::Verdict;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Admitted and waiting in Acheron.
    Queued,
    /// Placed on a node; the runtime is preparing it.
    Starting,
    /// Its processes run.
    Running,
    /// Frozen by the runtime.
    Paused,
    /// Put to sleep by Hypnos: checkpointed to the blob store, holding no node (see `sleep`);
    /// `wake` restores it, on any node of its runtime.
    Sleeping,
    /// The main process exited by itself (see `exit_code`).
    Exited,
    /// Ended by Tartarus (see `kill_reason`).
    Killed,
    /// Could not be started or run (see `error`).
    Failed,
    /// Its runtime vanished while Tartarus was not watching (see `error`).
    Lost,
}

impl SandboxState {
    /// True once the sandbox has ended; the record will not change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Exited | Self::Killed | Self::Failed | Self::Lost)
    }

    /// The state's name as used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Sleeping => "sleeping",
            Self::Exited => "exited",
            Self::Killed => "killed",
            Self::Failed => "failed",
            Self::Lost => "lost",
        }
    }

    /// Parses a state name (for filters).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Starting,
            Self::Running,
            Self::Paused,
            Self::Sleeping,
            Self::Exited,
            Self::Killed,
            Self::Failed,
            Self::Lost,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Why Tartarus ended a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// Alecto: it ran past `max_duration`.
    Timeout,
    /// Tisiphone: it went over its memory limit.
    OutOfMemory,
    /// A session sandbox saw no `exec` for its idle timeout.
    Idle,
    /// Its writable layer and logs grew past `disk_mib`.
    DiskLimit,
    /// Someone asked (`DELETE`, `tartarus kill`).
    Requested,
    /// Its node was drained with eviction (`tartarus node drain --evict`).
    NodeDrain,
    /// Its node's agent shut down with `--drain-on-shutdown`.
    #[serde(rename = "system_shutdown")]
    Shutdown,
    /// Hypnos: it slept longer than its `max_sleep`.
    SleptTooLong,
}

impl KillReason {
    /// The reason's name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::Idle => "idle",
            Self::DiskLimit => "disk_limit",
            Self::Requested => "requested",
            Self::NodeDrain => "node_drain",
            Self::Shutdown => "system_shutdown",
            Self::SleptTooLong => "slept_too_long",
        }
    }

    /// A sentence for humans.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Timeout => "ran past its max_duration",
            Self::OutOfMemory => "exceeded its memory limit",
            Self::Idle => "idle for longer than its idle_timeout",
            Self::DiskLimit => "wrote more than its disk_mib (filesystem and logs)",
            Self::Requested => "killed on request",
            Self::NodeDrain => "evicted from a drained node",
            Self::Shutdown => "ended as its node shut down",
            Self::SleptTooLong => "slept longer than its max_sleep",
        }
    }
}

/// What Thanatos is asked to do to a running sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillOrder {
    /// Why (recorded as the kill reason).
    pub reason: KillReason,
    /// The signal sent first to the main process (9, SIGKILL, ends it at once).
    #[serde(default = "sigkill")]
    pub signal: i32,
    /// How long it may take to end after the signal before it is SIGKILLed, milliseconds.
    #[serde(default)]
    pub grace_ms: u64,
}

fn sigkill() -> i32 {
    9
}

impl From<KillReason> for KillOrder {
    fn from(reason: KillReason) -> Self {
        Self { reason, signal: 9, grace_ms: 0 }
    }
}

/// The name of a signal Thanatos sends (`SIGTERM`), or its number.
pub fn signal_name(signal: i32) -> String {
    match signal {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        3 => "SIGQUIT".into(),
        9 => "SIGKILL".into(),
        10 => "SIGUSR1".into(),
        12 => "SIGUSR2".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// Parses `SIGTERM`, `TERM`, `term` or `15` into a signal Thanatos may send.
pub fn parse_signal(s: &str) -> Option<i32> {
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        other => other.parse().ok()?,
    };
    [1, 2, 3, 9, 10, 12, 15].contains(&n).then_some(n)
}

/// Why a sandbox ended, as Thanatos records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// Its main process exited by itself.
    Completed,
    /// It ran past `max_duration` (or, a session, past its idle timeout).
    Timeout,
    /// Someone asked (`DELETE`, `tartarus kill`).
    UserRequest,
    /// It went over its memory or disk limit (Tisiphone).
    ResourceLimit,
    /// A policy ended it.
    PolicyViolation,
    /// Its node is being drained.
    NodeDrain,
    /// Its node is shutting down.
    SystemShutdown,
}

impl TerminationReason {
    /// The reason of a kill.
    pub fn of(k: KillReason) -> Self {
        match k {
            KillReason::Timeout | KillReason::Idle | KillReason::SleptTooLong => Self::Timeout,
            KillReason::OutOfMemory | KillReason::DiskLimit => Self::ResourceLimit,
            KillReason::Requested => Self::UserRequest,
            KillReason::NodeDrain => Self::NodeDrain,
            KillReason::Shutdown => Self::SystemShutdown,
        }
    }
}

/// A step of a termination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationPhase {
    /// A termination was asked for (pre-mortem hooks ran).
    Initiated,
    /// The signal was sent to the main process.
    Signaled,
    /// Waiting, at most the grace period, for the sandbox to end by itself.
    Draining,
    /// Ending what is left (SIGKILL if still alive) and releasing its resources.
    Terminating,
    /// Over: recorded and released (post-mortem hooks run next).
    Completed,
}

/// One phase and when it began.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PhaseAt {
    /// The phase.
    pub phase: TerminationPhase,
    /// When.
    pub at: DateTime<Utc>,
}

/// How a sandbox died (Thanatos).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Termination {
    /// Why.
    pub reason: TerminationReason,
    /// The signal sent first (`SIGTERM`, `SIGKILL`, …), if any was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The grace period given after the signal, milliseconds.
    #[serde(default)]
    pub grace_ms: u64,
    /// Whether it ended without being SIGKILLed (always for `completed`).
    pub graceful: bool,
    /// The phases it went through, in order.
    pub phases: Vec<PhaseAt>,
}

/// Something noticed about a running sandbox (a memory warning from Tisiphone, say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// What kind (`memory_warning`).
    pub kind: String,
    /// For people.
    pub message: String,
}

/// A sleeping sandbox's checkpoint (Hypnos).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SleepInfo {
    /// When it fell asleep.
    pub slept_at: DateTime<Utc>,
    /// The node it slept on.
    pub node: String,
    /// Digest of the compressed checkpoint in the blob store.
    pub artifact: String,
    /// Bytes of the checkpoint (its memory and state) before compression.
    pub memory_bytes: u64,
    /// Bytes stored (zstd).
    pub compressed_bytes: u64,
    /// The runtime and version that took it (only the same one can restore it).
    pub runtime_version: String,
    /// Pause, checkpoint, compress and store, milliseconds.
    pub took_ms: u64,
}

/// Resource use measured by the node (Hermes).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct SandboxStats {
    /// Peak memory of the whole sandbox (runtime included), bytes.
    pub memory_peak_bytes: u64,
    /// Memory now (or at the end), bytes.
    pub memory_bytes: u64,
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    /// Times the memory limit was hit.
    pub oom_kills: u64,
    /// Bytes its writable layer holds on the host's disk.
    #[serde(default)]
    pub disk_bytes: u64,
}

/// Everything known about one sandbox. Persisted; survives restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxRecord {
    /// Its id.
    #[schema(value_type = String, example = "sb-0123456789abcdef")]
    pub id: SandboxId,
    /// What was asked, validated.
    pub spec: SandboxSpec,
    /// The judges' verdict.
    pub verdict: Verdict,
    /// Current state.
    pub state: SandboxState,
    /// The node it was placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Creation (admission) time.
    pub created_at: DateTime<Utc>,
    /// When its process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Exit code of the main process (state `exited`; also set when a killed process reported one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why Tartarus ended it (state `killed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_reason: Option<KillReason>,
    /// What went wrong (states `failed` and `lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Resource use, last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SandboxStats>,
    /// Times the Moirai placed it on a node (more than one: a node failed before it started).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// While queued: why no node has taken it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// How its node started it: `cold` (booted), or `snapshot snap-…` (restored by Nyx);
    /// `cold (…)` says why a snapshot was not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_from: Option<String>,
    /// How it died (Thanatos), once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<Termination>,
    /// What was noticed while it ran (Tisiphone's memory warnings, Hypnos's sleeps and wakes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SandboxEvent>,
    /// While it sleeps (and while it is being woken): its checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepInfo>,
    /// Time spent asleep, all sleeps together, milliseconds (not counted against `max_duration`).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub slept_ms: u64,
    /// Its network (Styx), when its contract is not `none`: address, mode and rules in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkInfo>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SandboxRecord {
    /// A freshly admitted, queued sandbox.
    pub fn admitted(id: SandboxId, spec: SandboxSpec, verdict: Verdict) -> Self {
        Self {
            id,
            spec,
            verdict,
            state: SandboxState::Queued,
            node: None,
            created_at: Utc::now(),
            started_at: None,
            ended_at: None,
            exit_code: None,
            kill_reason: None,
            error: None,
            stats: None,
            attempts: 0,
            pending_reason: None,
            launched_from: None,
            termination: None,
            events: Vec::new(),
            sleep: None,
            slept_ms: 0,
            network: None,
        }
    }

    /// One line saying how it ended (or that it has not).
    pub fn outcome(&self) -> String {
        match self.state {
            SandboxState::Exited => format!("exited with code {}", self.exit_code.unwrap_or(-1)),
            SandboxState::Killed => match self.kill_reason {
                Some(r) => format!("killed: {}", r.describe()),
                None => "killed".into(),
            },
            SandboxState::Failed | SandboxState::Lost => {
                format!("{}: {}", self.state.as_str(), self.error.as_deref().unwrap_or("unknown error"))
            }
            s => s.as_str().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in ["queued", "starting", "running", "paused", "sleeping", "exited", "killed", "failed", "lost"] {
            let st = SandboxState::parse(s).unwrap();
            assert_eq!(st.as_str(), s);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{s}\""));
        }
        assert!(SandboxState::parse("zombie").is_none());
        assert!(SandboxState::Lost.is_terminal() && !SandboxState::Running.is_terminal());
    }
}
