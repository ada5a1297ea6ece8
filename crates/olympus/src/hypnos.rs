//! Hypnos in the control plane: wakes sleeping sandboxes by queueing them for placement, ends
//! those that slept past their `max_sleep`, and frees the checkpoints of sandboxes that ended.
//!
//! Sleeping is the node's work ([`tartarus_hecatoncheir::hypnos`]); a sleeping sandbox holds
//! no node, so waking it is scheduling it again: its record goes back to `queued` with its
//! checkpoint, Moirai places it on a node with room (any node of its runtime), and that node
//! restores it instead of booting it. Hypnos is off unless the realm runs with `ENABLE_HYPNOS=1`.

use std::time::Duration;

use chrono::Utc;
use tartarus_core::{
    KillReason, PhaseAt, SandboxId, SandboxRecord, SandboxState, Termination, TerminationPhase, TerminationReason,
};
use tartarus_erebus::blobs::BlobStore;
use tartarus_store::{Events, SandboxFilter, State, StoreError};
use tracing::{info, warn};

/// How often sleeping sandboxes are checked against their `max_sleep`.
const EXPIRY_CHECK: Duration = Duration::from_secs(2);

/// Whether `ENABLE_HYPNOS` turns Hypnos on (`1`, `true`, `yes`, `on`).
pub fn enabled_by_env() -> bool {
    std::env::var("ENABLE_HYPNOS")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Queues sleeping sandbox `id` to be woken; `None` when it is not sleeping (any more).
pub async fn wake(state: &State, events: &Events, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
    let rec = state
        .sandboxes
        .update(
            id,
            Box::new(|r| {
                if r.state == SandboxState::Sleeping {
                    r.state = SandboxState::Queued;
                    r.node = None;
                    r.pending_reason = None;
                    r.attempts = 0;
                }
            }),
        )
        .await?;
    let Some(rec) = rec.filter(|r| r.state == SandboxState::Queued && r.sleep.is_some()) else { return Ok(None) };
    events.publish(&rec);
    if let Err(e) = state.acheron.push(id).await {
        // Not queued: back to sleep rather than queued forever.
        let _ = state
            .sandboxes
            .update(
                id,
                Box::new(|r| {
                    if r.state == SandboxState::Queued && r.sleep.is_some() {
                        r.state = SandboxState::Sleeping;
                    }
                }),
            )
            .await;
        return Err(e);
    }
    info!(sandbox = %id, "waking: queued for placement");
    Ok(Some(rec))
}

/// Ends sleeping sandbox `id` for `reason` without waking it (its checkpoint is freed when the
/// end is seen); `None` when it is not sleeping.
pub async fn end(
    state: &State,
    events: &Events,
    id: &SandboxId,
    reason: KillReason,
) -> Result<Option<SandboxRecord>, StoreError> {
    let rec = state
        .sandboxes
        .update(
            id,
            Box::new(move |r| {
                if r.state == SandboxState::Sleeping {
                    let now = Utc::now();
                    r.state = SandboxState::Killed;
                    r.kill_reason = Some(reason);
                    r.ended_at = Some(now);
                    r.termination = Some(Termination {
                        reason: TerminationReason::of(reason),
                        signal: None,
                        grace_ms: 0,
                        graceful: true,
                        phases: [
                            TerminationPhase::Initiated,
                            TerminationPhase::Terminating,
                            TerminationPhase::Completed,
                        ]
                        .into_iter()
                        .map(|phase| PhaseAt { phase, at: now })
                        .collect(),
                    });
                }
            }),
        )
        .await?;
    let Some(rec) = rec.filter(|r| r.state == SandboxState::Killed && r.kill_reason == Some(reason)) else {
        return Ok(None);
    };
    events.publish(&rec);
    Ok(Some(rec))
}

/// Ends, every few seconds, the sleeping sandboxes that slept past their `max_sleep`.
pub async fn expire(state: State, events: Events) {
    let filter = SandboxFilter { states: vec![SandboxState::Sleeping], ..Default::default() };
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tick.tick().await;
        let Ok(sleeping) = state.sandboxes.list(&filter).await else { continue };
        let now = Utc::now();
        for r in sleeping {
            let Some(sleep) = &r.sleep else { continue };
            let asleep = (now - sleep.slept_at).to_std().unwrap_or_default();
            if asleep > r.spec.max_sleep() {
                match end(&state, &events, &r.id, KillReason::SleptTooLong).await {
                    Ok(Some(_)) => info!(sandbox = %r.id, "slept past its max_sleep: ended"),
                    Ok(None) => {}
                    Err(e) => warn!(sandbox = %r.id, error = %e, "ending a sandbox that slept too long failed"),
                }
            }
        }
    }
}

/// Frees the checkpoint of `rec` if it ended while it still had one (killed asleep, expired,
/// or failed to wake).
pub async fn free_checkpoint(blobs: &BlobStore, rec: &SandboxRecord) {
    let Some(sleep) = rec.sleep.as_ref().filter(|_| rec.state.is_terminal()) else { return };
    match tartarus_erebus::digest::Digest::parse(&sleep.artifact) {
        Ok(d) => {
            if let Err(e) = blobs.delete(&d).await {
                warn!(sandbox = %rec.id, error = %e, "freeing an ended sandbox's checkpoint failed");
            }
        }
        Err(_) => {
            warn!(sandbox = %rec.id, artifact = %sleep.artifact, "an ended sandbox's checkpoint has no valid digest")
        }
    }
}
