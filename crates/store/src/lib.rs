//! Tartarus state: sandbox records, templates, the Hades node registry and the Acheron queue.
//!
//! Layout:
//! - the four traits below are the seams: the control plane and the agent only speak to them.
//! - [`embedded`] implements all four on one on-disk `redb` database, so a single-node realm
//!   keeps everything across restarts.
//! - [`redis`] implements them on Redis for a realm of many nodes: records as keys, the
//!   queue as a Redis Stream read through a consumer group, nodes as heartbeated keys, and
//!   Cocytus as a stream.
//! - [`events`] broadcasts record changes to whoever waits on them.
#![warn(missing_docs)]

pub mod embedded;
pub mod events;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tartarus_core::{Failure, NodeInfo, SandboxId, SandboxRecord, SandboxState, TemplateName, TemplateRecord};

pub use embedded::EmbeddedStore;
pub use events::Events;
pub use redis::{RedisConfig, RedisStore};

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
    /// An insert would take the tenant past its quota of live sandboxes.
    #[error("tenant {tenant} already has {live} live sandboxes (quota {max})")]
    QuotaExceeded {
        /// The tenant.
        tenant: String,
        /// Its live sandboxes now.
        live: usize,
        /// Its quota.
        max: usize,
    },
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
    /// Only sandboxes placed on this node.
    pub node: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

impl SandboxFilter {
    /// Whether a record passes the filter (the limit aside).
    pub fn matches(&self, r: &SandboxRecord) -> bool {
        (self.states.is_empty() || self.states.contains(&r.state))
            && self.labels.iter().all(|(k, v)| r.spec.labels.get(k) == Some(v))
            && self.tenant.as_ref().is_none_or(|t| &r.spec.tenant == t)
            && self.node.as_ref().is_none_or(|n| r.node.as_ref() == Some(n))
    }
}

/// A change applied atomically to one record. It may be applied more than once (a store that
/// detects a concurrent write applies it again to the newer record), so it must not consume
/// what it captures.
pub type Mutation = Box<dyn FnMut(&mut SandboxRecord) + Send>;

/// Sandbox records.
#[async_trait]
pub trait SandboxStore: Send + Sync {
    /// Stores a new record; fails if the id exists, or (with `max_live`) if the tenant already
    /// has that many live sandboxes — checked and stored in one atomic step.
    async fn insert(&self, rec: &SandboxRecord, max_live: Option<usize>) -> Result<(), StoreError>;
    /// One record.
    async fn get(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError>;
    /// Records passing `filter`, newest first.
    async fn list(&self, filter: &SandboxFilter) -> Result<Vec<SandboxRecord>, StoreError>;
    /// How many of `tenant`'s sandboxes have not ended (kept as an index, not counted by scanning).
    async fn count_live(&self, tenant: &str) -> Result<usize, StoreError>;
    /// Applies `change` atomically and returns the new record (`None`: no such id).
    /// A record in a terminal state is never changed again: `change` is not applied to it.
    /// The change that makes a record a failure (see [`Failure::of`]) also appends it to
    /// Cocytus, in the same atomic step.
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
    /// The entry's position in the queue (acknowledge with this).
    pub receipt: String,
    /// The admitted sandbox.
    pub id: SandboxId,
}

/// Acheron — the durable queue of admitted souls waiting for the Moirai.
///
/// At-least-once: an entry taken but not acknowledged comes back — after a restart of the
/// consumer, or (in a fleet) to another consumer once its holder stopped renewing it.
#[async_trait]
pub trait Acheron: Send + Sync {
    /// Appends an admitted sandbox; returns the entry's receipt.
    async fn push(&self, id: &SandboxId) -> Result<String, StoreError>;
    /// Waits for the next entry not yet taken.
    async fn pull(&self) -> Result<Delivery, StoreError>;
    /// Removes a handled entry.
    async fn ack(&self, receipt: &str) -> Result<(), StoreError>;
    /// Gives a taken entry back, to be delivered again.
    async fn nack(&self, receipt: &str) -> Result<(), StoreError>;
    /// Entries waiting or taken but not acknowledged.
    async fn depth(&self) -> Result<u64, StoreError>;
    /// The sandboxes of every entry waiting or taken (for reconciliation).
    async fn entries(&self) -> Result<Vec<SandboxId>, StoreError>;
}

/// Hades — the registry of nodes and their heartbeats.
#[async_trait]
pub trait Hades: Send + Sync {
    /// Registers a node or refreshes its heartbeat (its `draining` flag is kept by Hades, not
    /// taken from the heartbeat).
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), StoreError>;
    /// Every known node, with its `draining` flag.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
    /// Stops (or resumes) new placements on a node; `false` when no such node is known.
    async fn set_draining(&self, name: &str, draining: bool) -> Result<bool, StoreError>;
}

/// Which failures a Cocytus query wants.
#[derive(Debug, Clone, Default)]
pub struct FailureFilter {
    /// Only failures at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this node's.
    pub node: Option<String>,
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this sandbox's.
    pub sandbox: Option<SandboxId>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

impl FailureFilter {
    /// Whether a failure passes the filter (the limit aside).
    pub fn matches(&self, f: &Failure) -> bool {
        self.since.is_none_or(|s| f.at >= s)
            && self.node.as_ref().is_none_or(|n| f.node.as_ref() == Some(n))
            && self.tenant.as_ref().is_none_or(|t| &f.tenant == t)
            && self.sandbox.as_ref().is_none_or(|s| &f.sandbox == s)
    }
}

/// Cocytus — the stream of failures. Records turning into failures are appended by the store
/// itself (see [`SandboxStore::update`]); other failures (a launch attempt that will be retried)
/// are reported here.
#[async_trait]
pub trait Cocytus: Send + Sync {
    /// Appends a failure.
    async fn report(&self, failure: &Failure) -> Result<(), StoreError>;
    /// Failures passing `filter`, newest first.
    async fn failures(&self, filter: &FailureFilter) -> Result<Vec<Failure>, StoreError>;
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
    /// The failure stream.
    pub cocytus: Arc<dyn Cocytus>,
}

impl State {
    /// Every seam served by one embedded database.
    pub fn embedded(db: Arc<EmbeddedStore>) -> Self {
        Self { sandboxes: db.clone(), templates: db.clone(), acheron: db.clone(), hades: db.clone(), cocytus: db }
    }

    /// Every seam served by one Redis.
    pub fn redis(r: Arc<RedisStore>) -> Self {
        Self { sandboxes: r.clone(), templates: r.clone(), acheron: r.clone(), hades: r.clone(), cocytus: r }
    }
}
