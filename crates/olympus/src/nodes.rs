//! The nodes Olympus talks to: the [`Node`] seam, the agent in this process, and the directory
//! that finds a node by name (in-process, or a remote agent reached over its API).
//!
//! In a single-node realm (`tartarus up`) the only node is the agent in this process. In a
//! fleet every node is a `tartarus agent` daemon whose address Hades knows; Olympus reaches it
//! through [`crate::remote::RemoteNode`], authenticated with the realm's agent secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tartarus_core::{ExecRequest, NodeInfo, OutputEvent, SandboxId, SandboxRecord, SnapshotInfo, TemplateName};
use tartarus_hecatoncheir::charon::{Crossing, Landing};
use tartarus_hecatoncheir::{AgentError, ExecStream, Hecatoncheir};
use tokio::sync::mpsc;

use crate::remote::RemoteNode;

/// What a node could not do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The node does not know the sandbox.
    #[error("{0}")]
    NotFound(String),
    /// The sandbox is not in a state that allows this.
    #[error("{0}")]
    NotRunning(String),
    /// The node failed (its runtime or its store).
    #[error("{0}")]
    Failed(String),
    /// Hypnos refused to put the sandbox to sleep (it is left as it was).
    #[error("{0}")]
    CannotSleep(String),
    /// The sandbox does not expose the port.
    #[error("{0}")]
    NotExposed(String),
    /// The sandbox's exposed port did not answer properly.
    #[error("{0}")]
    BadGateway(String),
    /// The node could not be reached, or answered with something that is not its protocol.
    #[error("node {node} is unreachable: {reason}")]
    Unreachable {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

impl From<AgentError> for NodeError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::NotFound(id) => Self::NotFound(format!("no sandbox {id}")),
            e @ AgentError::NotRunning { .. } => Self::NotRunning(e.to_string()),
            AgentError::CannotSleep(m) => Self::CannotSleep(m),
            AgentError::NotExposed(m) => Self::NotExposed(m),
            AgentError::Ferry(m) => Self::BadGateway(m),
            e => Self::Failed(tartarus_hecatoncheir::agent::error_chain(&e)),
        }
    }
}

/// What the control plane asks of a node.
#[async_trait]
pub trait Node: Send + Sync {
    /// The node's name in Hades.
    fn name(&self) -> &str;
    /// Starts a sandbox placed on this node (record in state `starting`, `node` this one).
    /// Returns once it runs or its failure is recorded; idempotent (a second call for a
    /// sandbox already launched, or being launched, waits for that one and returns `Ok`).
    async fn launch(&self, id: &SandboxId) -> Result<(), NodeError>;
    /// Asks the node to kill a sandbox; `false` when it is not running there.
    async fn kill(&self, id: &SandboxId, order: tartarus_core::KillOrder) -> Result<bool, NodeError>;
    /// Runs a command in a running sandbox.
    async fn exec(&self, id: &SandboxId, req: ExecRequest) -> Result<ExecStream, NodeError>;
    /// Streams a sandbox's logs (kept on the node).
    async fn logs(&self, id: &SandboxId, follow: bool) -> Result<mpsc::Receiver<OutputEvent>, NodeError>;
    /// Freezes a sandbox.
    async fn pause(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError>;
    /// Thaws a sandbox.
    async fn resume(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError>;
    /// Hypnos: checkpoints a sandbox to the blob store and releases it; its record says `sleeping`.
    async fn sleep(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError>;
    /// Charon: carries an HTTP request to a port the sandbox exposes, and its answer back.
    async fn ferry(&self, id: &SandboxId, port: u16, c: Crossing) -> Result<Landing, NodeError>;
    /// The sandboxes it runs now (for reconciliation).
    async fn held(&self) -> Result<Vec<SandboxId>, NodeError>;
    /// Nyx.Prepare: warms a sandbox of `template`, checkpoints it and records the snapshot.
    async fn warm(&self, template: &TemplateName, warming: &tartarus_core::Warming) -> Result<SnapshotInfo, NodeError>;
}

#[async_trait]
impl Node for Arc<Hecatoncheir> {
    fn name(&self) -> &str {
        Hecatoncheir::name(self)
    }
    async fn launch(&self, id: &SandboxId) -> Result<(), NodeError> {
        Ok(Hecatoncheir::launch(self, id).await?)
    }
    async fn warm(&self, template: &TemplateName, warming: &tartarus_core::Warming) -> Result<SnapshotInfo, NodeError> {
        Ok(Hecatoncheir::warm(self, template, warming.clone()).await?)
    }
    async fn kill(&self, id: &SandboxId, order: tartarus_core::KillOrder) -> Result<bool, NodeError> {
        Ok(Hecatoncheir::kill(self, id, order))
    }
    async fn exec(&self, id: &SandboxId, req: ExecRequest) -> Result<ExecStream, NodeError> {
        Ok(Hecatoncheir::exec(self, id, req).await?)
    }
    async fn logs(&self, id: &SandboxId, follow: bool) -> Result<mpsc::Receiver<OutputEvent>, NodeError> {
        Ok(Hecatoncheir::logs(self, id, follow))
    }
    async fn pause(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError> {
        Ok(Hecatoncheir::pause(self, id).await?)
    }
    async fn resume(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError> {
        Ok(Hecatoncheir::resume(self, id).await?)
    }
    async fn sleep(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError> {
        Ok(Hecatoncheir::sleep(self, id).await?)
    }
    async fn ferry(&self, id: &SandboxId, port: u16, c: Crossing) -> Result<Landing, NodeError> {
        Ok(Hecatoncheir::ferry(self, id, port, c).await?)
    }
    async fn held(&self) -> Result<Vec<SandboxId>, NodeError> {
        Ok(Hecatoncheir::held(self))
    }
}

/// A remote node and the address it was made for.
type Addressed = (String, Arc<dyn Node>);

/// Finds nodes by name: in-process agents first, then remote agents at the address Hades holds.
pub struct Directory {
    local: HashMap<String, Arc<dyn Node>>,
    /// The in-process agents themselves: they answer for their own state, fresher than Hades.
    agents: Vec<Arc<Hecatoncheir>>,
    /// The secret remote agents require.
    secret: Option<String>,
    /// Remote agents by name, with the address each was reached at.
    remote: Mutex<HashMap<String, Addressed>>,
}

impl Directory {
    /// A directory of in-process agents only (`tartarus up`).
    pub fn local(agents: Vec<Arc<Hecatoncheir>>) -> Self {
        let local = agents.iter().map(|a| (a.name().to_owned(), Arc::new(a.clone()) as Arc<dyn Node>)).collect();
        Self { local, agents, secret: None, remote: Mutex::default() }
    }

    /// A directory of remote agents, reached with `secret`.
    pub fn remote(secret: String) -> Self {
        Self { local: HashMap::new(), agents: Vec::new(), secret: Some(secret), remote: Mutex::default() }
    }

    /// `nodes` (from Hades) with the in-process agents' entries replaced by what they say of
    /// themselves now: an agent in this very process is alive whenever this code runs, even if
    /// its last heartbeat is late.
    pub fn freshen(&self, mut nodes: Vec<NodeInfo>) -> Vec<NodeInfo> {
        for agent in &self.agents {
            let now = agent.node_info();
            match nodes.iter_mut().find(|n| n.name == now.name) {
                Some(n) => *n = NodeInfo { draining: n.draining, ..now },
                None => nodes.push(now),
            }
        }
        nodes
    }

    /// Whether a node with this registration can be reached from here.
    pub fn reachable(&self, info: &NodeInfo) -> bool {
        self.local.contains_key(&info.name) || (self.secret.is_some() && info.address.is_some())
    }

    /// The node `info` describes, if it can be reached from here.
    pub fn get(&self, info: &NodeInfo) -> Option<Arc<dyn Node>> {
        if let Some(n) = self.local.get(&info.name) {
            return Some(n.clone());
        }
        let (secret, address) = (self.secret.as_ref()?, info.address.as_ref()?);
        let mut remote = self.remote.lock().expect("lock");
        match remote.get(&info.name) {
            // The same agent at the same address: reuse its connection pool.
            Some((addr, node)) if addr == address => Some(node.clone()),
            _ => {
                let node: Arc<dyn Node> = Arc::new(RemoteNode::new(&info.name, address, secret));
                remote.insert(info.name.clone(), (address.clone(), node.clone()));
                Some(node)
            }
        }
    }
}
