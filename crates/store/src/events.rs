//! Record changes as they happen, so waiters (`wait=true`, log followers) need not poll.

use tartarus_core::{SandboxId, SandboxRecord};
use tokio::sync::broadcast;

use crate::{SandboxStore, StoreError};

/// A broadcast of every sandbox record change in this process.
#[derive(Clone)]
pub struct Events(broadcast::Sender<SandboxRecord>);

impl Default for Events {
    fn default() -> Self {
        Self(broadcast::channel(4096).0)
    }
}

impl Events {
    /// Announces a changed record.
    pub fn publish(&self, rec: &SandboxRecord) {
        let _ = self.0.send(rec.clone());
    }

    /// Receives every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SandboxRecord> {
        self.0.subscribe()
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
            match rx.recv().await {
                Ok(r) if &r.id == id && r.state.is_terminal() => return Ok(Some(r)),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Some(r) = store.get(id).await?.filter(|r| r.state.is_terminal()) {
                        return Ok(Some(r));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return store.get(id).await,
            }
        }
    }
}
