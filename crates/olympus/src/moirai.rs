//! The Moirai — the scheduler: Clotho pulls admitted souls from Acheron, Lachesis filters the
//! nodes Hades knows, Atropos picks one and hands the soul to it.
//!
//! Nodes are reached through the [`Node`] seam: in a single-node realm the node is the agent
//! in this process; a fleet reaches remote agents through the same trait.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tartarus_core::{ExecRequest, KillReason, NodeInfo, OutputEvent, SandboxId, SandboxRecord, SandboxState};
use tartarus_hecatoncheir::{AgentError, ExecStream, Hecatoncheir};
use tartarus_store::{Events, State};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::metrics::Metrics;

/// What the control plane asks of a node.
#[async_trait]
pub trait Node: Send + Sync {
    /// The node's registration.
    fn info(&self) -> NodeInfo;
    /// Starts a sandbox placed on this node (record in state `starting`).
    async fn launch(&self, id: &SandboxId) -> Result<(), AgentError>;
    /// Asks the node to kill a sandbox; `false` when it is not running there.
    fn kill(&self, id: &SandboxId, reason: KillReason) -> bool;
    /// Runs a command in a running sandbox.
    async fn exec(&self, id: &SandboxId, req: ExecRequest) -> Result<ExecStream, AgentError>;
    /// Streams a sandbox's logs.
    fn logs(&self, id: &SandboxId, follow: bool) -> mpsc::Receiver<OutputEvent>;
    /// Freezes a sandbox.
    async fn pause(&self, id: &SandboxId) -> Result<SandboxRecord, AgentError>;
    /// Thaws a sandbox.
    async fn resume(&self, id: &SandboxId) -> Result<SandboxRecord, AgentError>;
}

#[async_trait]
impl Node for Arc<Hecatoncheir> {
    fn info(&self) -> NodeInfo {
        self.node_info()
    }
    async fn launch(&self, id: &SandboxId) -> Result<(), AgentError> {
        Hecatoncheir::launch(self, id).await
    }
    fn kill(&self, id: &SandboxId, reason: KillReason) -> bool {
        Hecatoncheir::kill(self, id, reason)
    }
    async fn exec(&self, id: &SandboxId, req: ExecRequest) -> Result<ExecStream, AgentError> {
        Hecatoncheir::exec(self, id, req).await
    }
    fn logs(&self, id: &SandboxId, follow: bool) -> mpsc::Receiver<OutputEvent> {
        tartarus_hecatoncheir::hermes::logs(
            self.state().sandboxes.clone(),
            self.events().clone(),
            self.dir(id),
            id.clone(),
            follow,
        )
    }
    async fn pause(&self, id: &SandboxId) -> Result<SandboxRecord, AgentError> {
        Hecatoncheir::pause(self, id).await
    }
    async fn resume(&self, id: &SandboxId) -> Result<SandboxRecord, AgentError> {
        Hecatoncheir::resume(self, id).await
    }
}

/// Heartbeats older than this take a node out of Lachesis's choice.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(30);

/// Lachesis — the nodes able to take a soul asking for `memory_mib` and `vcpus`.
pub fn lachesis(nodes: &[NodeInfo], memory_mib: u64, vcpus: u32) -> impl Iterator<Item = &NodeInfo> {
    let fresh_since = Utc::now() - chrono::Duration::from_std(HEARTBEAT_TTL).expect("small");
    nodes.iter().filter(move |n| n.heartbeat_at >= fresh_since && n.memory_mib >= memory_mib && n.vcpus >= vcpus)
}

/// Atropos — of the able nodes, the one running the fewest sandboxes.
pub fn atropos<'a>(able: impl Iterator<Item = &'a NodeInfo>) -> Option<&'a NodeInfo> {
    able.min_by_key(|n| (n.running, n.name.clone()))
}

/// The scheduler.
pub struct Moirai {
    /// State: records, queue, registry.
    pub state: State,
    /// Record change announcements.
    pub events: Events,
    /// Nodes by name.
    pub nodes: HashMap<String, Arc<dyn Node>>,
    /// Metrics.
    pub metrics: Metrics,
}

impl Moirai {
    /// Keeps every node's heartbeat fresh in Hades (for in-process nodes).
    pub async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            for node in self.nodes.values() {
                let info = node.info();
                self.metrics.running.set(i64::from(info.running));
                if let Err(e) = self.state.hades.heartbeat(&info).await {
                    warn!(node = %info.name, error = %e, "heartbeat failed");
                }
            }
        }
    }

    /// Clotho's loop: pull, place, hand over, acknowledge. Runs until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            let delivery = match self.state.acheron.pull().await {
                Ok(d) => d,
                Err(e) => {
                    error!(error = %e, "Acheron pull failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let this = self.clone();
            // Place in order; start concurrently.
            match this.place(&delivery.id).await {
                Ok(Some(node)) => {
                    tokio::spawn(async move {
                        let handled = match node.launch(&delivery.id).await {
                            Ok(()) => this.state.acheron.ack(delivery.seq).await,
                            Err(e) => {
                                // Its outcome is not recorded: leave it to be delivered again.
                                error!(sandbox = %delivery.id, error = %e, "launch could not be recorded; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                this.state.acheron.nack(delivery.seq).await
                            }
                        };
                        if let Err(e) = handled {
                            error!(error = %e, "Acheron acknowledgement failed");
                        }
                    });
                }
                Ok(None) => {
                    if let Err(e) = self.state.acheron.ack(delivery.seq).await {
                        error!(error = %e, "Acheron ack failed");
                    }
                }
                Err(e) => {
                    error!(sandbox = %delivery.id, error = %e, "placement failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Err(e) = self.state.acheron.nack(delivery.seq).await {
                        error!(error = %e, "Acheron nack failed");
                    }
                }
            }
        }
    }

    /// Chooses a node for sandbox `id` and records the choice. `None`: nothing to start
    /// (killed while queued, already handled, or impossible to place — recorded as failed).
    async fn place(&self, id: &SandboxId) -> Result<Option<Arc<dyn Node>>, tartarus_store::StoreError> {
        let Some(rec) = self.state.sandboxes.get(id).await? else { return Ok(None) };
        if rec.state != SandboxState::Queued {
            return Ok(None);
        }
        let (mem, cpus) = (rec.spec.resources.memory_mib, rec.spec.resources.vcpus);
        loop {
            let known = self.state.hades.nodes().await?;
            let live: Vec<NodeInfo> = known.into_iter().filter(|n| self.nodes.contains_key(&n.name)).collect();
            if let Some(chosen) = atropos(lachesis(&live, mem, cpus)) {
                let name = chosen.name.clone();
                let node = self.nodes[&name].clone();
                let placed = self
                    .state
                    .sandboxes
                    .update(
                        id,
                        Box::new({
                            let name = name.clone();
                            move |r| {
                                if r.state == SandboxState::Queued {
                                    r.state = SandboxState::Starting;
                                    r.node = Some(name);
                                }
                            }
                        }),
                    )
                    .await?;
                return Ok(match placed {
                    Some(r) if r.state == SandboxState::Starting => {
                        self.events.publish(&r);
                        info!(sandbox = %id, node = %name, "placed");
                        Some(node)
                    }
                    _ => None,
                });
            }
            if live.iter().all(|n| n.memory_mib < mem || n.vcpus < cpus) && !live.is_empty() {
                let error = format!("no node can hold {mem} MiB and {cpus} vCPUs");
                let r = self
                    .state
                    .sandboxes
                    .update(
                        id,
                        Box::new(move |r| {
                            r.state = SandboxState::Failed;
                            r.error = Some(error);
                            r.ended_at = Some(Utc::now());
                        }),
                    )
                    .await?;
                if let Some(r) = r {
                    self.events.publish(&r);
                }
                return Ok(None);
            }
            // No fresh node yet (starting up): wait for a heartbeat.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, mem: u64, running: u32, age_s: i64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            runtime: "gvisor".into(),
            runtime_version: String::new(),
            vcpus: 4,
            memory_mib: mem,
            running,
            labels: Default::default(),
            heartbeat_at: Utc::now() - chrono::Duration::seconds(age_s),
        }
    }

    #[test]
    fn picks_the_least_loaded_fresh_node_that_fits() {
        let nodes = vec![node("a", 1024, 1, 0), node("b", 8192, 5, 0), node("c", 8192, 2, 0), node("d", 8192, 0, 600)];
        assert_eq!(atropos(lachesis(&nodes, 512, 1)).unwrap().name, "a");
        assert_eq!(atropos(lachesis(&nodes, 2048, 1)).unwrap().name, "c");
        assert!(atropos(lachesis(&nodes, 100_000, 1)).is_none());
        assert!(atropos(lachesis(&nodes, 512, 8)).is_none());
    }
}
