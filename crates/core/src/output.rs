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

/// One output event as a line of JSON, for streams between processes (agent → Olympus):
/// `{"stdout":"<base64>"}`, `{"stderr":"<base64>"}`, or `{"exit":{…}}`. Bytes stay bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireEvent {
    Stdout(String),
    Stderr(String),
    Exit(ExitInfo),
}

impl OutputEvent {
    /// The event as one line of JSON (no trailing newline).
    pub fn to_wire(&self) -> String {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let w = match self {
            OutputEvent::Output(Stream::Stdout, b) => WireEvent::Stdout(b64(b)),
            OutputEvent::Output(Stream::Stderr, b) => WireEvent::Stderr(b64(b)),
            OutputEvent::Exit(e) => WireEvent::Exit(e.clone()),
        };
        serde_json::to_string(&w).expect("wire events serialize")
    }

    /// Parses one line written by [`OutputEvent::to_wire`].
    pub fn from_wire(line: &str) -> Result<Self, String> {
        use base64::Engine;
        let w: WireEvent = serde_json::from_str(line).map_err(|e| format!("bad output event: {e}"))?;
        let bytes =
            |s: &str| base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("bad output bytes: {e}"));
        Ok(match w {
            WireEvent::Stdout(s) => OutputEvent::Output(Stream::Stdout, bytes(&s)?),
            WireEvent::Stderr(s) => OutputEvent::Output(Stream::Stderr, bytes(&s)?),
            WireEvent::Exit(e) => OutputEvent::Exit(e),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_events_round_trip_bytes_and_exits() {
        let events = [
            OutputEvent::Output(Stream::Stdout, vec![0, 0xff, b'\n', b'a']),
            OutputEvent::Output(Stream::Stderr, b"oops".to_vec()),
            OutputEvent::Exit(ExitInfo {
                state: SandboxState::Exited,
                exit_code: Some(3),
                kill_reason: None,
                error: None,
            }),
        ];
        for e in events {
            let line = e.to_wire();
            assert!(!line.contains('\n'));
            assert_eq!(OutputEvent::from_wire(&line).unwrap(), e);
        }
        assert!(OutputEvent::from_wire("{\"stdout\":\"***\"}").is_err());
    }
}
