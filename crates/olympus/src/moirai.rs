//! The Moirai — the scheduler: Clotho pulls admitted souls from Acheron, Lachesis filters the
//! nodes Hades knows, Atropos picks one and hands the soul to it.
//!
//! Every delivery is handled by its own task that loops on the sandbox's record until the
//! record says the outcome is durable, and only then acknowledges the entry:
//! - `queued`: place it (Lachesis, Atropos), or wait — bounded by `pending_timeout` — with the
//!   reason in the record's `pending_reason`;
//! - `starting` on a node: hand it over (`launch`, idempotent on the agent), then look at the
//!   record again; a node that refuses the launch, dies, or cannot be reached for
//!   `3 × dead_after` gets the sandbox taken back to the queue, each attempt a `retry` in Cocytus
//!   — after `max_attempts` placements the sandbox fails into Cocytus with the last error;
//! - anything else (running, ended): nothing left to do.
//!
//! Two Olympus processes may share one Acheron: the record's compare-and-set transitions decide
//! who places a sandbox, and agents launch each sandbox at most once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tartarus_core::{Capacity, Failure, NodeInfo, NodeState, SandboxId, SandboxRecord, SandboxSpec, SandboxState};
use tartarus_store::{Delivery, Events, State, StoreError};
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::nodes::{Directory, Node, NodeError};

/// How Atropos chooses among the nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The emptiest node: spreads sandboxes out.
    #[default]
    LeastLoaded,
    /// The fullest node that still fits: packs sandboxes together, leaving whole nodes free.
    BinPack,
}

impl Strategy {
    /// Parses `least-loaded` or `bin-pack`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "least-loaded" => Ok(Self::LeastLoaded),
            "bin-pack" | "binpack" => Ok(Self::BinPack),
            _ => Err(format!("unknown placement strategy {s:?} (least-loaded or bin-pack)")),
        }
    }
}

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A node whose last heartbeat is older than this is dead.
    pub dead_after: Duration,
    /// Longest a sandbox waits for a node that fits before it fails.
    pub pending_timeout: Duration,
    /// Placements tried before a sandbox whose nodes keep failing goes to Cocytus.
    pub max_attempts: u32,
    /// Atropos's choice.
    pub strategy: Strategy,
    /// How often the realm is reconciled in the background (besides at start-up and on demand):
    /// repairs what no other path notices, such as queue entries a Redis restart lost.
    pub reconcile_every: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            dead_after: Duration::from_secs(10),
            pending_timeout: Duration::from_secs(300),
            max_attempts: 3,
            strategy: Strategy::LeastLoaded,
            reconcile_every: Duration::from_secs(30),
        }
    }
}

/// What a sandbox asks of a node.
#[derive(Debug, Clone)]
pub struct Demand<'a> {
    /// Resources it takes.
    pub takes: Capacity,
    /// The runtime it needs.
    pub runtime: &'a str,
    /// Labels the node must carry.
    pub selector: &'a std::collections::BTreeMap<String, String>,
}

impl<'a> Demand<'a> {
    /// The demand of a validated spec.
    pub fn of(spec: &'a SandboxSpec) -> Self {
        Self {
            takes: Capacity::of_sandbox(spec.resources.vcpus, spec.resources.memory_mib),
            runtime: &spec.runtime,
            selector: &spec.node_selector,
        }
    }
}

/// Lachesis — the nodes able to take `demand` now, or why there is none.
///
/// `nodes` carry their usage as last reported plus what this process placed since.
pub fn lachesis<'n>(
    nodes: &'n [NodeInfo],
    demand: &Demand<'_>,
    now: DateTime<Utc>,
    dead_after: Duration,
    reachable: impl Fn(&NodeInfo) -> bool,
) -> Result<Vec<&'n NodeInfo>, String> {
    let mut fit = Vec::new();
    // Why nodes were passed over: how to say it of no node, of some, and how many.
    let mut why: Vec<(String, String, usize)> = Vec::new();
    let mut count = |none: String, some: String| match why.iter_mut().find(|(n, _, _)| *n == none) {
        Some((_, _, k)) => *k += 1,
        None => why.push((none, some, 1)),
    };
    let (mem, cpus) = (demand.takes.memory_mib, demand.takes.vcpus);
    for n in nodes {
        let free = n.free();
        match n.state(now, dead_after) {
            NodeState::Dead => count("no node alive".into(), "dead".into()),
            NodeState::Draining => count("no node that is not draining".into(), "draining".into()),
            NodeState::Alive if !reachable(n) => {
                count("no node reachable from this Olympus".into(), "unreachable".into())
            }
            NodeState::Alive if !n.runtimes.iter().any(|r| r == demand.runtime) => {
                count(format!("no node with runtime {}", demand.runtime), format!("without runtime {}", demand.runtime))
            }
            NodeState::Alive if !n.matches(demand.selector) => {
                let labels: Vec<String> = demand.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let labels = labels.join(",");
                count(format!("no node with labels {labels}"), format!("without labels {labels}"))
            }
            NodeState::Alive if free.memory_mib < mem => {
                count(format!("no node with {mem} MiB free"), format!("with less than {mem} MiB free"))
            }
            NodeState::Alive if free.vcpus < cpus => {
                count(format!("no node with {cpus} vCPUs free"), format!("with fewer than {cpus} vCPUs free"))
            }
            NodeState::Alive if free.slots < 1 => count("no node with a free slot".into(), "full".into()),
            NodeState::Alive => fit.push(n),
        }
    }
    if !fit.is_empty() {
        return Ok(fit);
    }
    if nodes.is_empty() {
        return Err("no node has registered with Hades yet".into());
    }
    let checked = format!("{} node{} checked", nodes.len(), if nodes.len() == 1 { "" } else { "s" });
    // The commonest reason first.
    why.sort_by_key(|w| std::cmp::Reverse(w.2));
    Err(match why.as_slice() {
        [(none, _, _)] => format!("{none}; {checked}"),
        _ => {
            let parts: Vec<String> = why.iter().map(|(_, some, k)| format!("{k} {some}")).collect();
            format!("no node fits ({}); {checked}", parts.join(", "))
        }
    })
}

/// Atropos — of the nodes that fit, the one `strategy` prefers (ties: by name).
pub fn atropos<'n>(fit: &[&'n NodeInfo], strategy: Strategy) -> Option<&'n NodeInfo> {
    let key = |n: &&&NodeInfo| ((n.load() * 1e6) as u64, n.used.slots, n.name.clone());
    match strategy {
        Strategy::LeastLoaded => fit.iter().min_by_key(key).copied(),
        Strategy::BinPack => fit
            .iter()
            .max_by(|a, b| {
                a.load()
                    .total_cmp(&b.load())
                    .then_with(|| a.used.slots.cmp(&b.used.slots))
                    .then_with(|| b.name.cmp(&a.name))
            })
            .copied(),
    }
}

/// Hades's nodes as this process sees them: refreshed now and then, with placements made since
/// each node's last heartbeat counted on top of what it reported.
#[derive(Default)]
struct View {
    nodes: Vec<NodeInfo>,
    fetched: Option<Instant>,
    /// Placements by node not yet in the node's report: when, which, and what they take.
    placed: HashMap<String, Vec<Reservation>>,
}

/// A placement made by this process: when, which sandbox, what it takes.
type Reservation = (DateTime<Utc>, SandboxId, Capacity);

/// How often the view of Hades is refreshed while placing.
const VIEW_TTL: Duration = Duration::from_millis(250);

/// A placement counts on top of a node's report until the report lists it, or until a report
/// made this long after the placement (by then the launch reached the node, so the report
/// counts it — or it already ended there). Generous: a node busy booting dozens of sandboxes can
/// take many seconds to hold a launch placed on it (60 placed at once over three 2-core nodes
/// were seen spread 18/18/24 with 5 s), and a reservation dropped too early makes the node look
/// emptier than it is; one kept too long only makes it look fuller for a while (ended
/// sandboxes drop theirs at once, see [`Moirai::forget_ended`]).
const REPORT_LAG: chrono::Duration = chrono::Duration::seconds(30);

/// How long a handler waits before looking at a sandbox again (no node fits, node unreachable).
const RETRY: Duration = Duration::from_millis(500);

/// Most deliveries handled at once by one process.
const IN_FLIGHT: usize = 4096;

/// The scheduler.
pub struct Moirai {
    /// State: records, queue, registry.
    pub state: State,
    /// Record change announcements.
    pub events: Events,
    /// The nodes it can reach.
    pub nodes: Directory,
    /// Metrics.
    pub metrics: Metrics,
    /// Its settings.
    pub cfg: SchedulerConfig,
    view: Mutex<View>,
}

/// What became of one hand-over to a node.
enum HandOver {
    /// The record changed (launched, ended, or queued again): look at it again now.
    Changed,
    /// Nothing changed yet: look again after [`RETRY`].
    Later,
}

/// What became of one placement attempt.
enum Placement {
    /// Recorded as starting on a node (by this process or a concurrent one).
    Placed,
    /// No node fits now, for this reason.
    Waiting(String),
}

impl Moirai {
    /// A scheduler over `state` reaching `nodes`.
    pub fn new(state: State, events: Events, nodes: Directory, metrics: Metrics, cfg: SchedulerConfig) -> Self {
        Self { state, events, nodes, metrics, cfg, view: Mutex::default() }
    }

    /// The nodes Hades knows (in-process ones as they are now).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        Ok(self.nodes.freshen(self.state.hades.nodes().await?))
    }

    /// The node a record is placed on, if Hades knows it and it is reachable from here.
    pub async fn node_of(&self, name: &str) -> Result<Option<(NodeInfo, Arc<dyn Node>)>, StoreError> {
        let info = self.nodes().await?.into_iter().find(|n| n.name == name);
        Ok(info.and_then(|i| self.nodes.get(&i).map(|n| (i, n))))
    }

    /// Drops the placements of sandboxes that ended from what is counted on top of nodes'
    /// reports (a sandbox that ended before its node reported it would otherwise weigh on the
    /// node until its next report). Runs until the process ends.
    pub async fn forget_ended(self: Arc<Self>) {
        let mut rx = self.events.subscribe();
        loop {
            match rx.recv().await {
                Ok(r) if r.state.is_terminal() => {
                    let mut v = self.view.lock().expect("lock");
                    for placed in v.placed.values_mut() {
                        placed.retain(|(_, id, _)| *id != r.id);
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    }

    /// Clotho's loop: pull, and hand each delivery to its own task. Runs until the process ends.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut failing = false;
        loop {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let delivery = match self.state.acheron.pull().await {
                Ok(d) => d,
                Err(e) => {
                    if !failing {
                        error!(error = %e, "Acheron pull failed; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if failing {
                info!("Acheron reachable again");
                failing = false;
            }
            let this = self.clone();
            tokio::spawn(async move {
                this.handle(delivery).await;
                drop(permit);
            });
        }
    }

    /// Carries one delivery to a durable outcome, then acknowledges it.
    async fn handle(&self, d: Delivery) {
        let waiting_since = Instant::now();
        // Since when the node the sandbox is placed on has not answered, and which node that is.
        let mut unanswered: Option<(String, Instant)> = None;
        loop {
            let rec = match self.state.sandboxes.get(&d.id).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(sandbox = %d.id, error = %e, "reading the record failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let settled = match &rec {
                None => {
                    warn!(sandbox = %d.id, "Acheron entry without a record; dropping it");
                    true
                }
                Some(r) => match r.state {
                    SandboxState::Queued => match self.place(r).await {
                        Ok(Placement::Placed) => continue,
                        Ok(Placement::Waiting(why)) => self.wait(r, why, waiting_since).await,
                        Err(e) => {
                            warn!(sandbox = %d.id, error = %e, "placement failed; retrying");
                            false
                        }
                    },
                    SandboxState::Starting => match self.hand_over(r, &mut unanswered).await {
                        HandOver::Changed => continue,
                        HandOver::Later => false,
                    },
                    _ => true,
                },
            };
            if settled {
                if let Err(e) = self.state.acheron.ack(&d.receipt).await {
                    // Delivered again later: handling it again finds nothing to do.
                    warn!(sandbox = %d.id, error = %e, "Acheron acknowledgement failed");
                }
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// No node fits `rec` now: says why in its record; past the pending timeout, fails it.
    /// `true` once there is nothing more to do.
    async fn wait(&self, rec: &SandboxRecord, why: String, since: Instant) -> bool {
        let expired = since.elapsed() >= self.cfg.pending_timeout;
        if !expired && rec.pending_reason.as_deref() == Some(why.as_str()) {
            return false;
        }
        let timeout = humantime::format_duration(self.cfg.pending_timeout).to_string();
        let change = move |r: &mut SandboxRecord| {
            if r.state != SandboxState::Queued {
                return;
            }
            if expired {
                r.state = SandboxState::Failed;
                r.error = Some(format!("could not be scheduled within {timeout}: {why}"));
                r.ended_at = Some(Utc::now());
            } else {
                r.pending_reason = Some(why.clone());
            }
        };
        match self.state.sandboxes.update(&rec.id, Box::new(change)).await {
            Ok(Some(r)) => {
                self.events.publish(&r);
                r.state.is_terminal()
            }
            Ok(None) => true,
            Err(e) => {
                warn!(sandbox = %rec.id, error = %e, "recording why a sandbox waits failed");
                false
            }
        }
    }

    /// Makes the next placement read Hades afresh (after a drain, say).
    pub fn invalidate_view(&self) {
        self.view.lock().expect("lock").fetched = None;
    }

    /// Refreshes the view of Hades if it is older than [`VIEW_TTL`] (or `force`).
    async fn refresh(&self, force: bool) -> Result<(), StoreError> {
        let stale = self.view.lock().expect("lock").fetched.is_none_or(|t| force || t.elapsed() >= VIEW_TTL);
        if stale {
            let nodes = self.nodes().await?;
            let mut v = self.view.lock().expect("lock");
            let now = Utc::now();
            let alive = nodes.iter().filter(|n| n.state(now, self.cfg.dead_after) != NodeState::Dead).count();
            self.metrics.nodes_alive.set(alive as i64);
            self.metrics.running.set(nodes.iter().map(|n| i64::from(n.used.slots)).sum());
            // Placements already in a node's report no longer need counting on top of it.
            for n in &nodes {
                if let Some(p) = v.placed.get_mut(&n.name) {
                    let holds: std::collections::HashSet<&SandboxId> = n.holds.iter().collect();
                    p.retain(|(at, id, _)| *at + REPORT_LAG > n.heartbeat_at && !holds.contains(id));
                }
            }
            v.nodes = nodes;
            v.fetched = Some(Instant::now());
        }
        Ok(())
    }

    /// Chooses a node for queued `rec` and records the choice.
    async fn place(&self, rec: &SandboxRecord) -> Result<Placement, StoreError> {
        self.refresh(false).await?;
        let demand = Demand::of(&rec.spec);
        let chosen = {
            let mut v = self.view.lock().expect("lock");
            let nodes: Vec<NodeInfo> = v
                .nodes
                .iter()
                .map(|n| {
                    let mut n = n.clone();
                    for (_, _, takes) in v.placed.get(&n.name).into_iter().flatten() {
                        n.used = n.used.plus(*takes);
                    }
                    n
                })
                .collect();
            match lachesis(&nodes, &demand, Utc::now(), self.cfg.dead_after, |n| self.nodes.reachable(n)) {
                Err(why) => return Ok(Placement::Waiting(why)),
                Ok(fit) => {
                    // A node with a pooled sandbox of the template serves it fastest.
                    let pooled: Vec<&NodeInfo> =
                        fit.iter().copied().filter(|n| n.pool_ready(rec.spec.template.as_str()) > 0).collect();
                    let fit = if pooled.is_empty() { fit } else { pooled };
                    let name = atropos(&fit, self.cfg.strategy).expect("fit is not empty").name.clone();
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        let loads: Vec<String> =
                            fit.iter().map(|n| format!("{}={:.3}/{}", n.name, n.load(), n.used.slots)).collect();
                        tracing::debug!(sandbox = %rec.id, chosen = %name, candidates = %loads.join(" "), "Atropos chose");
                    }
                    // Counted at once, so concurrent placements see it.
                    v.placed.entry(name.clone()).or_default().push((Utc::now(), rec.id.clone(), demand.takes));
                    name
                }
            }
        };
        let node = chosen.clone();
        let placed = self
            .state
            .sandboxes
            .update(
                &rec.id,
                Box::new(move |r| {
                    if r.state == SandboxState::Queued {
                        r.state = SandboxState::Starting;
                        r.node = Some(node.clone());
                        r.attempts += 1;
                        r.pending_reason = None;
                    }
                }),
            )
            .await?;
        if let Some(r) = placed {
            if r.node.as_deref() == Some(chosen.as_str()) && r.state == SandboxState::Starting {
                self.metrics.placed.inc();
                info!(sandbox = %r.id, node = %chosen, attempt = r.attempts, "placed");
            }
            self.events.publish(&r);
        }
        Ok(Placement::Placed)
    }

    /// Hands a sandbox placed on a node to that node. The agent answers once the sandbox runs or
    /// its failure is recorded, so after a successful hand-over the record is read again (and
    /// acknowledged only when it says so). A node that refuses the launch, is declared dead, or
    /// does not answer for `3 × dead_after` while still heartbeating gets the sandbox taken back.
    async fn hand_over(&self, rec: &SandboxRecord, unanswered: &mut Option<(String, Instant)>) -> HandOver {
        let name = rec.node.clone().unwrap_or_default();
        let found = match self.viewed(&name).await {
            Ok(f) => f,
            Err(e) => {
                warn!(sandbox = %rec.id, error = %e, "reading Hades failed; retrying");
                return HandOver::Later;
            }
        };
        let (info, node) = match found {
            Some((info, node)) if info.state(Utc::now(), self.cfg.dead_after) != NodeState::Dead => (info, node),
            Some(_) => return self.requeue(rec, &format!("node {name} died before starting it")).await,
            None => {
                return self.requeue(rec, &format!("node {name} is not registered or not reachable from here")).await
            }
        };
        // Launching may hang on a node that stops answering: watch for its death meanwhile.
        let launched = tokio::select! {
            r = node.launch(&rec.id) => Some(r),
            _ = self.until_dead(&info.name) => None,
        };
        match launched {
            Some(Ok(())) => {
                *unanswered = None;
                HandOver::Changed
            }
            Some(Err(e @ NodeError::Unreachable { .. })) => {
                let since = match unanswered {
                    Some((n, since)) if *n == name => *since,
                    _ => {
                        *unanswered = Some((name.clone(), Instant::now()));
                        Instant::now()
                    }
                };
                let patience = self.cfg.dead_after * 3;
                if since.elapsed() >= patience {
                    *unanswered = None;
                    let why = format!("node {name} did not answer for {}: {e}", humantime::format_duration(patience));
                    return self.requeue(rec, &why).await;
                }
                warn!(sandbox = %rec.id, node = %name, error = %e, "node unreachable; will retry until it answers, is declared dead, or runs out of patience");
                HandOver::Later
            }
            Some(Err(e)) => {
                warn!(sandbox = %rec.id, node = %name, error = %e, "node refused the launch");
                let changed = self.requeue(rec, &format!("node {name} refused the launch: {e}")).await;
                // A refusal comes back at once: give a passing cause (a store blip) a moment.
                tokio::time::sleep(RETRY).await;
                changed
            }
            None => self.requeue(rec, &format!("node {name} died while starting it")).await,
        }
    }

    /// Node `name` and how to reach it, from the cached view of Hades (refreshed if stale).
    async fn viewed(&self, name: &str) -> Result<Option<(NodeInfo, Arc<dyn Node>)>, StoreError> {
        self.refresh(false).await?;
        let info = self.view.lock().expect("lock").nodes.iter().find(|n| n.name == name).cloned();
        Ok(info.and_then(|i| self.nodes.get(&i).map(|n| (i, n))))
    }

    /// Resolves once node `name` is dead (or gone) in Hades.
    async fn until_dead(&self, name: &str) {
        loop {
            tokio::time::sleep(RETRY).await;
            match self.viewed(name).await {
                Ok(Some((n, _))) if n.state(Utc::now(), self.cfg.dead_after) != NodeState::Dead => {}
                Ok(_) => return,
                Err(_) => {}
            }
        }
    }

    /// Takes a sandbox that was placed on a failed node back to the queue (or, after
    /// `max_attempts` placements, fails it), recording the attempt in Cocytus.
    /// [`HandOver::Later`] when the record could not be changed.
    async fn requeue(&self, rec: &SandboxRecord, why: &str) -> HandOver {
        match self.take_back(rec, why).await {
            Ok(_) => HandOver::Changed,
            Err(e) => {
                warn!(sandbox = %rec.id, error = %e, "requeueing failed");
                HandOver::Later
            }
        }
    }

    /// Takes sandbox `rec`, placed on a node that failed it, back to the queue — or, after
    /// `max_attempts` placements, fails it — recording the attempt in Cocytus. Returns the record
    /// as it is now (`None`: it has none); a record that moved on meanwhile is left as it is.
    pub async fn take_back(&self, rec: &SandboxRecord, why: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let (node, max, why_owned) = (rec.node.clone(), self.cfg.max_attempts, why.to_owned());
        let change = move |r: &mut SandboxRecord| {
            if r.state != SandboxState::Starting || r.node != node {
                return;
            }
            if r.attempts >= max {
                r.state = SandboxState::Failed;
                r.error = Some(format!(
                    "gave up after {} placements (each in `tartarus failures --sandbox {}`); last: {why_owned}",
                    r.attempts, r.id
                ));
                r.ended_at = Some(Utc::now());
            } else {
                r.state = SandboxState::Queued;
                r.node = None;
                r.pending_reason = Some(format!("queued again: {why_owned}"));
            }
        };
        let now = self.state.sandboxes.update(&rec.id, Box::new(change)).await?;
        if let Some(r) = &now {
            if r.state == SandboxState::Queued {
                info!(sandbox = %r.id, reason = why, "queued again");
                let retry = Failure {
                    sandbox: r.id.clone(),
                    tenant: r.spec.tenant.clone(),
                    node: rec.node.clone(),
                    kind: "retry".into(),
                    reason: why.to_owned(),
                    at: Utc::now(),
                };
                if let Err(e) = self.state.cocytus.report(&retry).await {
                    warn!(error = %e, "Cocytus report failed");
                }
            }
            self.events.publish(r);
        }
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(name: &str, mem: u64, used_slots: u32, age_s: i64, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: Some(format!("http://{name}")),
            runtimes: vec!["gvisor".into()],
            runtime_version: String::new(),
            capacity: Capacity { vcpus: 4, memory_mib: mem, slots: 10 },
            used: Capacity { vcpus: 0, memory_mib: 0, slots: used_slots },
            holds: Vec::new(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            started_at: Utc::now(),
            heartbeat_at: Utc::now() - chrono::Duration::seconds(age_s),
            draining: false,
            pools: BTreeMap::new(),
        }
    }

    fn demand(mem: u64, vcpus: u32, selector: &BTreeMap<String, String>) -> Demand<'_> {
        Demand { takes: Capacity::of_sandbox(vcpus, mem), runtime: "gvisor", selector }
    }

    fn pick(nodes: &[NodeInfo], d: &Demand<'_>, s: Strategy) -> Result<String, String> {
        let fit = lachesis(nodes, d, Utc::now(), Duration::from_secs(10), |_| true)?;
        Ok(atropos(&fit, s).unwrap().name.clone())
    }

    #[test]
    fn picks_the_least_loaded_live_node_that_fits() {
        let none = BTreeMap::new();
        let nodes = vec![
            node("a", 1024, 1, 0, &[]),
            node("b", 8192, 5, 0, &[]),
            node("c", 8192, 2, 0, &[]),
            node("d", 8192, 0, 600, &[]),
        ];
        assert_eq!(pick(&nodes, &demand(512, 1, &none), Strategy::LeastLoaded).unwrap(), "a");
        assert_eq!(pick(&nodes, &demand(2048, 1, &none), Strategy::LeastLoaded).unwrap(), "c");
        assert_eq!(pick(&nodes, &demand(2048, 1, &none), Strategy::BinPack).unwrap(), "b");
        assert_eq!(
            pick(&nodes, &demand(100_000, 1, &none), Strategy::LeastLoaded).unwrap_err(),
            "no node fits (3 with less than 100000 MiB free, 1 dead); 4 nodes checked"
        );
        assert_eq!(
            pick(&nodes[1..3], &demand(10_000, 1, &none), Strategy::LeastLoaded).unwrap_err(),
            "no node with 10000 MiB free; 2 nodes checked"
        );
        assert!(pick(&nodes, &demand(512, 8, &none), Strategy::LeastLoaded).is_err());
        assert_eq!(
            pick(&[], &demand(1, 1, &none), Strategy::LeastLoaded).unwrap_err(),
            "no node has registered with Hades yet"
        );
    }

    #[test]
    fn selectors_draining_and_slots_filter_nodes() {
        let zone_b: BTreeMap<String, String> = [("zone".to_string(), "b".to_string())].into();
        let mut nodes = vec![node("a", 4096, 0, 0, &[("zone", "a")]), node("b", 4096, 3, 0, &[("zone", "b")])];
        assert_eq!(pick(&nodes, &demand(64, 1, &zone_b), Strategy::LeastLoaded).unwrap(), "b");
        nodes[1].draining = true;
        assert_eq!(
            pick(&nodes, &demand(64, 1, &zone_b), Strategy::LeastLoaded).unwrap_err(),
            "no node fits (1 without labels zone=b, 1 draining); 2 nodes checked"
        );
        nodes[1].draining = false;
        nodes[1].used.slots = 10;
        assert_eq!(
            pick(&nodes, &demand(64, 1, &zone_b), Strategy::LeastLoaded).unwrap_err(),
            "no node fits (1 without labels zone=b, 1 full); 2 nodes checked"
        );
    }
}
