//! The Redis store: records, templates, Hades, Acheron (a Redis Stream) and Cocytus on one Redis.
//! (Being written: placeholder so the workspace builds.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tartarus_core::{Failure, NodeInfo, SandboxId, SandboxRecord, TemplateName, TemplateRecord};

use crate::{
    Acheron, Cocytus, Delivery, Events, FailureFilter, Hades, Mutation, SandboxFilter, SandboxStore, StoreError,
    TemplateStore,
};

/// How to reach Redis and who this process is in the Acheron consumer group.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key (default `tartarus`), so realms can share one Redis.
    pub prefix: String,
    /// This process's consumer name in Acheron's group (stable across restarts).
    pub consumer: String,
    /// Entries a consumer holds without renewing for this long are reclaimed by others.
    pub claim_after: Duration,
}

/// What `tartarus doctor` checks of a Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis_version`.
    pub version: String,
    /// `appendonly yes`.
    pub appendonly: bool,
    /// `maxmemory-policy`.
    pub maxmemory_policy: String,
}

/// Every seam on one Redis.
pub struct RedisStore {
    cfg: RedisConfig,
}

impl RedisStore {
    /// Connects (retrying briefly) and makes sure Acheron's stream and group exist.
    pub async fn connect(cfg: RedisConfig) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(Self { cfg }))
    }

    /// Delivers every record change published by any process of the realm into `events`.
    pub fn relay(self: &Arc<Self>, events: Events) {
        let _ = (events, &self.cfg);
    }

    /// The server settings the realm depends on.
    pub async fn settings(&self) -> Result<RedisSettings, StoreError> {
        unimplemented!()
    }
}

#[async_trait]
impl SandboxStore for RedisStore {
    async fn insert(&self, _rec: &SandboxRecord, _max_live: Option<usize>) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn get(&self, _id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
        unimplemented!()
    }
    async fn list(&self, _filter: &SandboxFilter) -> Result<Vec<SandboxRecord>, StoreError> {
        unimplemented!()
    }
    async fn count_live(&self, _tenant: &str) -> Result<usize, StoreError> {
        unimplemented!()
    }
    async fn update(&self, _id: &SandboxId, _change: Mutation) -> Result<Option<SandboxRecord>, StoreError> {
        unimplemented!()
    }
}

#[async_trait]
impl TemplateStore for RedisStore {
    async fn put_template(&self, _t: &TemplateRecord) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn template(&self, _name: &TemplateName) -> Result<Option<TemplateRecord>, StoreError> {
        unimplemented!()
    }
    async fn templates(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        unimplemented!()
    }
    async fn remove_template(&self, _name: &TemplateName) -> Result<bool, StoreError> {
        unimplemented!()
    }
}

#[async_trait]
impl Acheron for RedisStore {
    async fn push(&self, _id: &SandboxId) -> Result<String, StoreError> {
        unimplemented!()
    }
    async fn pull(&self) -> Result<Delivery, StoreError> {
        unimplemented!()
    }
    async fn ack(&self, _receipt: &str) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn nack(&self, _receipt: &str) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn depth(&self) -> Result<u64, StoreError> {
        unimplemented!()
    }
    async fn entries(&self) -> Result<Vec<SandboxId>, StoreError> {
        unimplemented!()
    }
}

#[async_trait]
impl Hades for RedisStore {
    async fn heartbeat(&self, _node: &NodeInfo) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        unimplemented!()
    }
    async fn set_draining(&self, _name: &str, _draining: bool) -> Result<bool, StoreError> {
        unimplemented!()
    }
}

#[async_trait]
impl Cocytus for RedisStore {
    async fn report(&self, _failure: &Failure) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn failures(&self, _filter: &FailureFilter) -> Result<Vec<Failure>, StoreError> {
        unimplemented!()
    }
}
