//! What a node agent (Hecatoncheir) tells Hades about itself, and how its health is judged.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::ToSchema;

/// An amount of node resources: offered (capacity) or taken (usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Capacity {
    /// Cores.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Sandboxes.
    pub slots: u32,
}

impl Capacity {
    /// What is left of `self` once `used` is taken (never below zero).
    pub fn minus(self, used: Capacity) -> Capacity {
        Capacity {
            vcpus: self.vcpus.saturating_sub(used.vcpus),
            memory_mib: self.memory_mib.saturating_sub(used.memory_mib),
            slots: self.slots.saturating_sub(used.slots),
        }
    }

    /// `self` with `more` added.
    pub fn plus(self, more: Capacity) -> Capacity {
        Capacity {
            vcpus: self.vcpus.saturating_add(more.vcpus),
            memory_mib: self.memory_mib.saturating_add(more.memory_mib),
            slots: self.slots.saturating_add(more.slots),
        }
    }

    /// One sandbox with these resources.
    pub fn of_sandbox(vcpus: u32, memory_mib: u64) -> Capacity {
        Capacity { vcpus, memory_mib, slots: 1 }
    }
}

/// A node's health as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Heartbeating; takes new sandboxes.
    #[default]
    Alive,
    /// Heartbeating; takes no new sandboxes (`tartarus node drain`).
    Draining,
    /// Its heartbeat lapsed: its sandboxes are lost, its pending assignments go elsewhere.
    Dead,
}

impl NodeState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Draining => "draining",
            Self::Dead => "dead",
        }
    }
}

/// A node's registration and last heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// The node's id (host name by default).
    pub name: String,
    /// Base URL of the node agent's API (`http://10.0.0.5:7071`); absent for the agent inside `tartarus up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The runtimes it runs sandboxes with (`gvisor`).
    pub runtimes: Vec<String>,
    /// Runtime detail, e.g. `runsc 0.0~20240729.0 (systrap)`.
    pub runtime_version: String,
    /// What it offers to sandboxes.
    pub capacity: Capacity,
    /// What its sandboxes (running and starting) take now.
    pub used: Capacity,
    /// The sandboxes it holds now (running, paused, or being launched).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub holds: Vec<crate::id::SandboxId>,
    /// Labels used by Lachesis to filter nodes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the agent process started (a new value means it restarted).
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Set by `tartarus node drain`: no new placements.
    #[serde(default)]
    pub draining: bool,
    /// Its warm pools, by template name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolCount>,
}

/// One node's warm pool of one template.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolCount {
    /// Sandboxes ready to be handed over now.
    pub ready: u32,
    /// Sandboxes handed over to requests since the agent started.
    pub served: u64,
}

impl NodeInfo {
    /// Sandboxes of `template` it has ready to hand over.
    pub fn pool_ready(&self, template: &str) -> u32 {
        self.pools.get(template).map_or(0, |p| p.ready)
    }

    /// What is still free on it.
    pub fn free(&self) -> Capacity {
        self.capacity.minus(self.used)
    }

    /// Its health at `now`, when heartbeats older than `dead_after` mean death.
    pub fn state(&self, now: DateTime<Utc>, dead_after: Duration) -> NodeState {
        let age = (now - self.heartbeat_at).to_std().unwrap_or(Duration::ZERO);
        if age > dead_after {
            NodeState::Dead
        } else if self.draining {
            NodeState::Draining
        } else {
            NodeState::Alive
        }
    }

    /// How full it is, 0.0 to 1.0: the largest share of any resource in use.
    pub fn load(&self) -> f64 {
        let share = |u: f64, c: f64| if c <= 0.0 { 1.0 } else { u / c };
        share(f64::from(self.used.slots), f64::from(self.capacity.slots))
            .max(share(self.used.memory_mib as f64, self.capacity.memory_mib as f64))
            .max(share(f64::from(self.used.vcpus), f64::from(self.capacity.vcpus)))
    }

    /// Whether every `key=value` of `selector` is among its labels.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}
