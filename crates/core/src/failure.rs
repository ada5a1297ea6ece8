//! Cocytus entries: one record per failure (launch errors, lost sandboxes, enforcement kills).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::SandboxId;
use crate::sandbox::{KillReason, SandboxRecord, SandboxState};

/// One failure, as kept in Cocytus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    /// The sandbox it happened to.
    #[schema(value_type = String, example = "sb-0123456789abcdef")]
    pub sandbox: SandboxId,
    /// The tenant owning it.
    pub tenant: String,
    /// The node it happened on, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What kind: `failed` (could not start or run), `lost` (vanished with its node or agent),
    /// `killed` (ended by enforcement: timeout, out_of_memory, disk_limit), `retry` (a launch
    /// attempt that will be tried again).
    pub kind: String,
    /// What happened, for a human.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl Failure {
    /// The failure a terminal record stands for, if it is one (`exited`, and kills asked for
    /// by a tenant or an idle session's end, are not failures).
    pub fn of(r: &SandboxRecord) -> Option<Failure> {
        let (kind, reason) = match (r.state, r.kill_reason) {
            (SandboxState::Failed, _) => ("failed", r.error.clone().unwrap_or_else(|| "unknown error".into())),
            (SandboxState::Lost, _) => ("lost", r.error.clone().unwrap_or_else(|| "vanished".into())),
            (
                SandboxState::Killed,
                Some(k @ (KillReason::Timeout | KillReason::OutOfMemory | KillReason::DiskLimit)),
            ) => ("killed", format!("{}: {}", k.as_str(), k.describe())),
            _ => return None,
        };
        Some(Failure {
            sandbox: r.id.clone(),
            tenant: r.spec.tenant.clone(),
            node: r.node.clone(),
            kind: kind.into(),
            reason,
            at: r.ended_at.unwrap_or_else(Utc::now),
        })
    }
}
