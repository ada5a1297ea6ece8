//! Output of a sandbox or of an `exec`: stdout and stderr chunks, then how it ended.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::sandbox::{KillReason, SandboxRecord, SandboxState};
use crate::soul::{validate_command, validate_env, validate_workdir, HumanDuration, SpecError};

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a sandbox or an exec ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExitInfo {
    /// Final state (`exited` for an exec that ran to its end).
    pub state: SandboxState,
    /// Exit code, when the process reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why Tartarus ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_reason: Option<KillReason>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&SandboxRecord> for ExitInfo {
    fn from(r: &SandboxRecord) -> Self {
        Self { state: r.state, exit_code: r.exit_code, kill_reason: r.kill_reason, error: r.error.clone() }
    }
}

/// One event of an output stream.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    /// Bytes written by the process.
    Output(Stream, Vec<u8>),
    /// The end; nothing follows.
    Exit(ExitInfo),
}

/// A further command to run in a running sandbox. Untrusted until validated.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// argv of the command.
    pub command: Vec<String>,
    /// Extra environment (over the sandbox's own).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; default the sandbox's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Kill the command after this long ("30s" or seconds). Default: the sandbox's own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "30s")]
    pub timeout: Option<HumanDuration>,
}

impl ExecRequest {
    /// Checks the request's fields.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_command("command", &self.command)?;
        validate_env("env", &self.env)?;
        if let Some(w) = &self.workdir {
            validate_workdir("workdir", w)?;
        }
        Ok(())
    }
}
