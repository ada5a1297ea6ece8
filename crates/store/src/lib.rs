//! Tartarus state: sandbox records, templates, the Hades node registry and the Acheron queue.
//!
//! Layout:
//! - the four traits below are the seams: the control plane and the agent only speak to them.
//! - [`embedded`] implements all four on one on-disk `redb` database, so a single-node realm
//!   keeps everything across restarts.
//! - [`events`] broadcasts record changes to whoever waits on them. (A Redis implementation joins it for fleets.)
#![warn(missing_docs)]

pub mod embedded;
pub mod events;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tartarus_core::{NodeInfo, SandboxId, SandboxRecord, SandboxState, TemplateName, TemplateRecord};

pub use embedded::EmbeddedStore;
pub use events::Events;

/// A storage failure. Never the tenant's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("state database: {context}")]
    Database {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored value could not be decoded (written by an incompatible version?).
    #[error("corrupt record {key}")]
    Corrupt {
        /// Which record.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An insert found the key already taken.
    #[error("{0} already exists")]
    Exists(String),
}

/// Which sandboxes a listing wants.
#[derive(Debug, Clone, Default)]
pub struct SandboxFilter {
    /// Only these states (any of them); empty means all.
    pub states: Vec<SandboxState>,
    /// Only sandboxes carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

impl SandboxFilter {
    /// Whether a record passes the filter (the limit aside).
    pub fn matches(&self, r: &SandboxRecord) -> bool {
        (self.states.is_empty() || self.states.contains(&r.state))
            && self.labels.iter().all(|(k, v)| r.spec.labels.get(k) == Some(v))
            && self.tenant.as_ref().is_none_or(|t| &r.spec.tenant == t)
    }
}

/// A change applied atomically to one record.
pub type Mutation = Box<dyn FnOnce(&mut SandboxRecord) + Send>;

/// Sandbox records.
#[async_trait]
pub trait SandboxStore: Send + Sync {
    /// Stores a new record; fails if the id exists.
    async fn insert(&self, rec: &SandboxRecord) -> Result<(), StoreError>;
    /// One record.
    async fn get(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError>;
    /// Records passing `filter`, newest first.
    async fn list(&self, filter: &SandboxFilter) -> Result<Vec<SandboxRecord>, StoreError>;
    /// How many of `tenant`'s sandboxes have not ended (kept as an index, not counted by scanning).
    async fn count_live(&self, tenant: &str) -> Result<usize, StoreError>;
    /// Applies `change` atomically and returns the new record (`None`: no such id).
    /// A record in a terminal state is never changed again: `change` is not applied to it.
    async fn update(&self, id: &SandboxId, change: Mutation) -> Result<Option<SandboxRecord>, StoreError>;
}

/// Templates.
#[async_trait]
pub trait TemplateStore: Send + Sync {
    /// Registers or replaces a template.
    async fn put_template(&self, t: &TemplateRecord) -> Result<(), StoreError>;
    /// One template.
    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateRecord>, StoreError>;
    /// All templates, by name.
    async fn templates(&self) -> Result<Vec<TemplateRecord>, StoreError>;
    /// Removes a template's record; `false` when there was none.
    async fn remove_template(&self, name: &TemplateName) -> Result<bool, StoreError>;
}

/// One entry taken from Acheron, to be acknowledged once handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Position in the queue (acknowledge with this).
    pub seq: u64,
    /// The admitted sandbox.
    pub id: SandboxId,
}

/// Acheron — the durable queue of admitted souls waiting for the Moirai.
///
/// At-least-once: an entry taken but not acknowledged comes back after a restart.
#[async_trait]
pub trait Acheron: Send + Sync {
    /// Appends an admitted sandbox.
    async fn push(&self, id: &SandboxId) -> Result<u64, StoreError>;
    /// Waits for the next entry not yet taken.
    async fn pull(&self) -> Result<Delivery, StoreError>;
    /// Removes a handled entry.
    async fn ack(&self, seq: u64) -> Result<(), StoreError>;
    /// Gives a taken entry back, to be delivered again.
    async fn nack(&self, seq: u64) -> Result<(), StoreError>;
    /// Entries waiting or taken but not acknowledged.
    async fn depth(&self) -> Result<u64, StoreError>;
}

/// Hades — the registry of nodes and their heartbeats.
#[async_trait]
pub trait Hades: Send + Sync {
    /// Registers a node or refreshes its heartbeat.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), StoreError>;
    /// Every known node.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
}

/// All state a realm needs, behind its seams.
#[derive(Clone)]
pub struct State {
    /// Sandbox records.
    pub sandboxes: Arc<dyn SandboxStore>,
    /// Templates.
    pub templates: Arc<dyn TemplateStore>,
    /// The queue.
    pub acheron: Arc<dyn Acheron>,
    /// The node registry.
    pub hades: Arc<dyn Hades>,
}

impl State {
    /// Every seam served by one embedded database.
    pub fn embedded(db: Arc<EmbeddedStore>) -> Self {
        Self { sandboxes: db.clone(), templates: db.clone(), acheron: db.clone(), hades: db }
    }
}
