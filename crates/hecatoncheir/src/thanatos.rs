//! Thanatos — graceful death: the phases a termination goes through, the hooks run before and
//! after it, and the callback that tells the requester how its sandbox ended.
//!
//! A kill order may carry a signal and a grace period (`DELETE /v1/sandboxes/{id}?grace=10s`):
//! the supervisor records `initiated` (pre-mortem hooks run), sends the signal (`signaled`) and
//! waits (`draining`); a sandbox still alive when the grace ends is SIGKILLed (`terminating`).
//! Enforcement kills (deadline, idle, disk) and plain kills go straight to SIGKILL. Every end —
//! a main process that simply exited included — is recorded with its reason and phases, and
//! the post-mortem hooks and the request's `callback_url` see the final record.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tartarus_core::{PhaseAt, SandboxId, SandboxRecord, TerminationPhase, TerminationReason};
use tracing::{info, warn};

/// Code run around every termination on a node.
#[async_trait]
pub trait MortemHook: Send + Sync {
    /// Pre-mortem: a termination of `id` for `reason` is beginning (not for a main process that
    /// simply exited).
    async fn before(&self, _id: &SandboxId, _reason: TerminationReason) {}
    /// Post-mortem: the sandbox has ended, its final record is written and its resources released.
    async fn after(&self, _rec: &SandboxRecord) {}
}

/// A termination under way, as the supervisor tracks it.
#[derive(Debug, Default, Clone)]
pub struct Dying {
    /// Phases so far.
    pub phases: Vec<PhaseAt>,
    /// The signal sent first.
    pub signal: Option<i32>,
    /// The grace period given, milliseconds.
    pub grace_ms: u64,
    /// Whether SIGKILL was sent.
    pub killed: bool,
}

impl Dying {
    /// Enters `phase` now.
    pub fn phase(&mut self, phase: TerminationPhase) {
        self.phases.push(PhaseAt { phase, at: Utc::now() });
    }
}

/// How often, and how patiently, a callback is tried.
const CALLBACK_ATTEMPTS: u32 = 3;
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// POSTs the final record to the request's callback URL (a few attempts; failures are logged).
pub async fn call_back(url: String, rec: SandboxRecord) {
    let http = match reqwest::Client::builder().timeout(CALLBACK_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            warn!(sandbox = %rec.id, error = %e, "cannot make an HTTP client for the callback");
            return;
        }
    };
    for attempt in 1..=CALLBACK_ATTEMPTS {
        match http.post(&url).json(&rec).send().await {
            Ok(r) if r.status().is_success() => {
                info!(sandbox = %rec.id, %url, "callback delivered");
                return;
            }
            Ok(r) => warn!(sandbox = %rec.id, %url, status = %r.status(), attempt, "callback refused"),
            Err(e) => warn!(sandbox = %rec.id, %url, error = %e, attempt, "callback failed"),
        }
        tokio::time::sleep(Duration::from_millis(500) * attempt).await;
    }
}
