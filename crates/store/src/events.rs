//! Record changes as they happen, so waiters (`wait=true`, log followers) need not poll.
//!
//! In a single-node realm every change is made in this process and announced here directly.
//! In a fleet changes are made by many processes: the Redis store publishes each one and a
//! relay delivers them here ([`Events::relayed`]), so a local announcement would be a duplicate.

use std::time::Duration;

use tartarus_core::{SandboxId, SandboxRecord};
use tokio::sync::broadcast;

use crate::{SandboxStore, StoreError};

/// How often a waiter looks at the record itself, in case an announcement was missed.
const RECHECK: Duration = Duration::from_secs(2);

/// A broadcast of every sandbox record change this process learns of.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<SandboxRecord>,
    relayed: bool,
}

impl Default for Events {
    fn default() -> Self {
        Self { tx: broadcast::channel(4096).0, relayed: false }
    }
}

impl Events {
    /// Events fed only by the store's change feed: [`Events::publish`] does nothing.
    pub fn relayed() -> Self {
        Self { relayed: true, ..Self::default() }
    }

    /// Announces a changed record made in this process (ignored when the store relays changes).
    pub fn publish(&self, rec: &SandboxRecord) {
        if !self.relayed {
            let _ = self.tx.send(rec.clone());
        }
    }

    /// Delivers a change learned from the store's change feed.
    pub fn deliver(&self, rec: SandboxRecord) {
        let _ = self.tx.send(rec);
    }

    /// Receives every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SandboxRecord> {
        self.tx.subscribe()
    }

    /// Waits until sandbox `id` is in a terminal state and returns its record
    /// (`None`: no such sandbox).
    pub async fn wait_terminal(
        &self,
        store: &dyn SandboxStore,
        id: &SandboxId,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        let mut rx = self.subscribe();
        // Subscribe first, then look: a change between the two is not missed.
        match store.get(id).await? {
            None => return Ok(None),
            Some(r) if r.state.is_terminal() => return Ok(Some(r)),
            Some(_) => {}
        }
        loop {
            // A change feed can drop messages (a Redis restart): look again now and then.
            match tokio::time::timeout(RECHECK, rx.recv()).await {
                Ok(Ok(r)) if &r.id == id && r.state.is_terminal() => return Ok(Some(r)),
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => return store.get(id).await,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                    if let Some(r) = store.get(id).await?.filter(|r| r.state.is_terminal()) {
                        return Ok(Some(r));
                    }
                }
            }
        }
    }
}
