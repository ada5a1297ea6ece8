//! Reconciliation: rebuilds Olympus's view of the realm from Hades and the agents, and the
//! watch that turns a lapsed heartbeat into lost sandboxes and rescheduled assignments.
//!
//! The record in the store is the truth for what *should* run; each agent is the truth for
//! what *does* run on its node. [`reconcile`] compares them and repairs the records: running
//! sandboxes their agent still holds are confirmed, those it no longer holds are lost with a
//! reason, sandboxes on dead nodes are lost (or, not started yet, queued again), queued
//! sandboxes Acheron lost (a Redis restart without its data) are queued again, and sandboxes an
//! agent runs without a record placing them there are killed. Every step is a compare-and-set on
//! one record, so running it twice, or from two Olympus processes at once, is harmless.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tartarus_core::{KillReason, NodeInfo, NodeState, SandboxId, SandboxRecord, SandboxState};
use tartarus_store::{SandboxFilter, StoreError};
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::moirai::Moirai;

/// What a reconciliation found and repaired.
#[derive(Debug, Default, Clone, Serialize, ToSchema)]
pub struct ReconcileReport {
    /// Nodes Hades knows.
    pub nodes: usize,
    /// Nodes asked for their sandboxes.
    pub nodes_asked: Vec<String>,
    /// Nodes alive in Hades that did not answer (their sandboxes were left as they are).
    pub nodes_unreachable: Vec<String>,
    /// Running sandboxes their node confirmed.
    pub confirmed: usize,
    /// Sandboxes recorded as lost now.
    #[schema(value_type = Vec<String>)]
    pub lost: Vec<SandboxId>,
    /// Sandboxes queued again (their node died before starting them, or Acheron lost them).
    #[schema(value_type = Vec<String>)]
    pub requeued: Vec<SandboxId>,
    /// Sandboxes running on a node without a record placing them there: killed.
    #[schema(value_type = Vec<String>)]
    pub orphans_killed: Vec<SandboxId>,
}

/// Queued records younger than this may not have reached Acheron yet (admission writes the
/// record, then the entry): they are not requeued.
const ADMISSION_GRACE: chrono::Duration = chrono::Duration::seconds(5);

/// Rebuilds the view of the realm and repairs records. Safe to call repeatedly.
pub async fn reconcile(moirai: &Moirai) -> Result<ReconcileReport, StoreError> {
    let now = Utc::now();
    let nodes = moirai.nodes().await?;
    let mut report = ReconcileReport { nodes: nodes.len(), ..Default::default() };
    // Records first, then the agents: a sandbox recorded as running before its agent was asked,
    // and not held by it, has ended (its record says so by now) or vanished.
    let filter = SandboxFilter {
        states: vec![SandboxState::Queued, SandboxState::Starting, SandboxState::Running, SandboxState::Paused],
        ..Default::default()
    };
    let records = moirai.state.sandboxes.list(&filter).await?;
    let by_name: HashMap<&str, &NodeInfo> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut held: HashMap<String, HashSet<SandboxId>> = HashMap::new();
    for n in &nodes {
        if n.state(now, moirai.cfg.dead_after) == NodeState::Dead {
            continue;
        }
        let Some(node) = moirai.nodes.get(n) else { continue };
        match node.held().await {
            Ok(ids) => {
                report.nodes_asked.push(n.name.clone());
                held.insert(n.name.clone(), ids.into_iter().collect());
            }
            Err(e) => {
                warn!(node = %n.name, error = %e, "node did not answer reconciliation");
                report.nodes_unreachable.push(n.name.clone());
            }
        }
    }
    let queue: HashSet<SandboxId> = moirai.state.acheron.entries().await?.into_iter().collect();
    for rec in &records {
        let node = rec.node.as_deref().unwrap_or_default();
        let info = by_name.get(node);
        let dead = info.is_none_or(|n| n.state(now, moirai.cfg.dead_after) == NodeState::Dead);
        match rec.state {
            SandboxState::Running | SandboxState::Paused => {
                if dead {
                    let why = match info {
                        Some(n) => {
                            format!("node {node} stopped heartbeating (last at {})", n.heartbeat_at.to_rfc3339())
                        }
                        None => format!("node {node} is not registered with Hades"),
                    };
                    if lose(moirai, rec, why).await? {
                        report.lost.push(rec.id.clone());
                    }
                } else if let Some(ids) = held.get(node) {
                    if ids.contains(&rec.id) {
                        report.confirmed += 1;
                    } else if lose(moirai, rec, format!("node {node} no longer runs it")).await? {
                        report.lost.push(rec.id.clone());
                    }
                }
            }
            SandboxState::Starting if dead => {
                let now = moirai.take_back(rec, &format!("node {node} is dead or unknown")).await?;
                if now.is_some_and(|r| r.state == SandboxState::Queued) {
                    if !queue.contains(&rec.id) {
                        moirai.state.acheron.push(&rec.id).await?;
                    }
                    report.requeued.push(rec.id.clone());
                }
            }
            SandboxState::Queued | SandboxState::Starting
                if !queue.contains(&rec.id) && now - rec.created_at > ADMISSION_GRACE =>
            {
                // Admitted (and maybe placed) but no longer in Acheron: nobody would carry it on.
                moirai.state.acheron.push(&rec.id).await?;
                info!(sandbox = %rec.id, "Acheron had lost its entry; queued again");
                report.requeued.push(rec.id.clone());
            }
            _ => {}
        }
    }
    // Sandboxes an agent runs that no record places there.
    for (name, ids) in &held {
        let Some(node) = by_name.get(name.as_str()).and_then(|n| moirai.nodes.get(n)) else { continue };
        for id in ids {
            let ours = match moirai.state.sandboxes.get(id).await? {
                Some(r) => !r.state.is_terminal() && r.node.as_deref() == Some(name),
                None => false,
            };
            if !ours && matches!(node.kill(id, KillReason::Requested.into()).await, Ok(true)) {
                warn!(sandbox = %id, node = %name, "running without a record placing it there; killed");
                report.orphans_killed.push(id.clone());
            }
        }
    }
    if report.lost.is_empty() && report.requeued.is_empty() && report.orphans_killed.is_empty() {
        tracing::debug!(nodes = report.nodes, confirmed = report.confirmed, "reconciled: nothing to repair");
        return Ok(report);
    }
    info!(
        nodes = report.nodes,
        confirmed = report.confirmed,
        lost = report.lost.len(),
        requeued = report.requeued.len(),
        orphans = report.orphans_killed.len(),
        "reconciled"
    );
    Ok(report)
}

/// Reconciles at once, then every `every`, until the process ends.
pub async fn every(moirai: Arc<Moirai>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match reconcile(&moirai).await {
            Ok(_) if failing => {
                info!("reconciliation works again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                warn!(error = %e, "reconciliation failed; trying again in {every:?} (or POST /v1/admin/reconcile)");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Records a running sandbox as lost (unless it ended or moved meanwhile); `true` if it was.
async fn lose(moirai: &Moirai, rec: &SandboxRecord, why: String) -> Result<bool, StoreError> {
    let node = rec.node.clone();
    let change = move |r: &mut SandboxRecord| {
        if r.node == node && matches!(r.state, SandboxState::Running | SandboxState::Paused) {
            r.state = SandboxState::Lost;
            r.error = Some(why.clone());
            r.ended_at = Some(Utc::now());
        }
    };
    Ok(match moirai.state.sandboxes.update(&rec.id, Box::new(change)).await? {
        Some(r) => {
            moirai.events.publish(&r);
            let lost = r.state == SandboxState::Lost && r.node == rec.node;
            if lost {
                warn!(sandbox = %r.id, node = ?r.node, reason = r.error.as_deref().unwrap_or_default(), "sandbox lost");
            }
            lost
        }
        None => false,
    })
}

/// Watches Hades: when a node's heartbeat lapses, its running sandboxes are recorded as lost
/// and those it had not started yet are queued again for other nodes. Runs until the process ends.
pub async fn watch_nodes(moirai: Arc<Moirai>, every: Duration) {
    // The heartbeat each dead node was last handled at, so a death is handled once (again only
    // if the node came back and died again).
    let mut handled: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Ok(nodes) = moirai.nodes().await else { continue };
        let now = Utc::now();
        for n in nodes.iter().filter(|n| n.state(now, moirai.cfg.dead_after) == NodeState::Dead) {
            if handled.get(&n.name) == Some(&n.heartbeat_at) {
                continue;
            }
            match bury(&moirai, n).await {
                Ok((lost, requeued)) => {
                    if lost + requeued > 0 {
                        warn!(node = %n.name, lost, requeued, "node declared dead");
                    }
                    handled.insert(n.name.clone(), n.heartbeat_at);
                }
                Err(e) => warn!(node = %n.name, error = %e, "handling a dead node failed; retrying"),
            }
        }
    }
}

/// Ends what a dead node held: running sandboxes lost, unstarted ones queued again.
async fn bury(moirai: &Moirai, n: &NodeInfo) -> Result<(usize, usize), StoreError> {
    let filter = SandboxFilter {
        states: vec![SandboxState::Starting, SandboxState::Running, SandboxState::Paused],
        node: Some(n.name.clone()),
        ..Default::default()
    };
    let (mut lost, mut requeued) = (0, 0);
    for rec in moirai.state.sandboxes.list(&filter).await? {
        if rec.state == SandboxState::Starting {
            let why = format!("node {} stopped heartbeating before starting it", n.name);
            let now = moirai.take_back(&rec, &why).await?;
            requeued += usize::from(now.is_some_and(|r| r.state == SandboxState::Queued));
        } else {
            let why = format!(
                "node {} stopped heartbeating (last at {}); the sandbox is presumed gone",
                n.name,
                n.heartbeat_at.to_rfc3339()
            );
            lost += usize::from(lose(moirai, &rec, why).await?);
        }
    }
    Ok((lost, requeued))
}
