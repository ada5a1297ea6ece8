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
        }
    }
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
        for s in ["queued", "starting", "running", "paused", "exited", "killed", "failed", "lost"] {
            let st = SandboxState::parse(s).unwrap();
            assert_eq!(st.as_str(), s);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{s}\""));
        }
        assert!(SandboxState::parse("zombie").is_none());
        assert!(SandboxState::Lost.is_terminal() && !SandboxState::Running.is_terminal());
    }
}
