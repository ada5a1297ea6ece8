//! What a node agent (Hecatoncheir) tells Hades about itself.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A node's registration and last heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// The node's name (host name by default).
    pub name: String,
    /// The runtime it runs sandboxes with (`gvisor`).
    pub runtime: String,
    /// Runtime detail, e.g. `runsc 0.0~20240729.0 (systrap)`.
    pub runtime_version: String,
    /// Cores offered to sandboxes.
    pub vcpus: u32,
    /// Memory offered to sandboxes, MiB.
    pub memory_mib: u64,
    /// Sandboxes currently running there.
    pub running: u32,
    /// Labels used by Lachesis to filter nodes.
    pub labels: BTreeMap<String, String>,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}
