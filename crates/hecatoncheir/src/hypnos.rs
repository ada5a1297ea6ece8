//! Hypnos — sleep and wake on the node: checkpoints a sandbox into the blob store and releases
//! everything it held here; later restores it, processes and files as they were, on whichever
//! node Olympus places the wake.
//!
//! Sleep: pause, checkpoint (the sandbox stops once saved), pack the image with zstd and store it
//! content-addressed like Nyx's snapshots, release the runtime state, cgroup and writable layer
//! (the logs stay), and record the sandbox as `sleeping` with no node. The supervisor sees the
//! sandbox's main process end and steps aside instead of recording an end. Wake is a launch of a
//! record that carries a checkpoint: the bundle it booted with is rebuilt, `runsc restore`
//! resumes its init, whose output goes on into the same logs, and a `runsc wait` under the shim
//! reports its exit status when it ends. A checkpoint serves one wake and is then discarded.
//!
//! Only sandboxes that booted can sleep: in the `runsc` in use here, processes started by
//! `runsc exec` (the main process of a sandbox launched from a snapshot or a warm pool, and any
//! process started with `tartarus exec`) come back from a restore as zombies; the init and its
//! children come back alive.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tartarus_core::{SandboxEvent, SandboxId, SandboxRecord, SandboxState, SleepInfo};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::agent::{error_chain, AgentError, Hecatoncheir};
use crate::lethe::SandboxDir;
use crate::runtime::{LaunchSpec, RuntimeStatus};
use crate::shim::ShimHandle;

impl Hecatoncheir {
    /// Puts running (or paused) sandbox `id` to sleep and returns its record, now `sleeping`.
    /// Refused, with the sandbox untouched, when it cannot sleep; once its state is saved it
    /// either sleeps or is recorded as failed with the reason, never left half-way.
    pub async fn sleep(self: &Arc<Self>, id: &SandboxId) -> Result<SandboxRecord, AgentError> {
        let hypnos = self.cfg.hypnos.as_ref().ok_or_else(|| {
            AgentError::CannotSleep("this node keeps no sleeping sandboxes (started without a blob store)".into())
        })?;
        let rec = self.get(id).await?;
        let (activity, _) = self.live_or_err(&rec, &[SandboxState::Running, SandboxState::Paused])?;
        if !rec.spec.network.is_none() {
            return Err(AgentError::CannotSleep(
                "it has a network (Styx): its namespace and address are not carried across a sleep yet".into(),
            ));
        }
        if activity.falling_asleep.swap(true, Ordering::SeqCst) {
            return Err(AgentError::CannotSleep("it is already falling asleep".into()));
        }
        let started = std::time::Instant::now();
        // Recorded running as soon as its main process starts: the runtime may not know it yet.
        let give_up = Instant::now() + Duration::from_secs(10);
        while !matches!(self.runtime.status(id).await, Ok(Some(RuntimeStatus::Running | RuntimeStatus::Paused))) {
            if Instant::now() > give_up {
                activity.falling_asleep.store(false, Ordering::SeqCst);
                return Err(AgentError::CannotSleep("the runtime does not have it running".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let key = id.to_string();
        let dir = self.dir(id);
        let image = hypnos.image_dir(&key);
        let saved = async {
            // `runsc checkpoint` pauses the sandbox itself while it saves it; one paused
            // beforehand would be left frozen and hard to release afterwards.
            if rec.state == SandboxState::Paused {
                self.runtime.resume(id).await?;
            }
            self.runtime.checkpoint(id, &image, false).await?;
            // The logs travel with the checkpoint, for a wake on another node.
            for (from, to) in [(dir.stdout(), LOG_OUT), (dir.stderr(), LOG_ERR)] {
                if from.exists() {
                    std::fs::copy(&from, image.join(to))
                        .map_err(|source| crate::runtime::RuntimeError::Prepare { path: from.clone(), source })?;
                }
            }
            Ok::<_, crate::runtime::RuntimeError>(())
        }
        .await;
        if let Err(e) = saved {
            hypnos.forget(&key).await;
            let running =
                matches!(self.runtime.status(id).await, Ok(Some(RuntimeStatus::Running | RuntimeStatus::Paused)));
            activity.falling_asleep.store(false, Ordering::SeqCst);
            if !running {
                // The checkpoint stopped it but failed: it cannot go on, and must not vanish.
                self.kill(id, tartarus_core::KillReason::Requested);
            }
            return Err(AgentError::CannotSleep(format!("checkpointing failed: {}", error_chain(&e))));
        }
        // Saved and stopped: from here it sleeps, or it has failed.
        let stats = self.runtime.stats(id, &dir).await.unwrap_or_default();
        let stored = hypnos.store(&key).await;
        if let Err(e) = self.runtime.destroy(id).await {
            warn!(sandbox = %id, error = %error_chain(&e), "releasing a sleeping sandbox's runtime state failed");
        }
        self.clear_run_traces(&dir).await;
        let _ = crate::lethe::forget(&dir).await;
        self.live.lock().expect("lock").remove(id);
        let stored = match stored.and_then(|s| hypnos.complete(&key).map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                hypnos.forget(&key).await;
                let error = format!("falling asleep failed after its state was saved: {}", error_chain(&e));
                self.record(id, move |r| {
                    r.state = SandboxState::Failed;
                    r.error = Some(error.clone());
                    r.ended_at = Some(Utc::now());
                })
                .await?;
                return Err(AgentError::CannotSleep(format!("storing the checkpoint: {}", error_chain(&e))));
            }
        };
        let info = SleepInfo {
            slept_at: Utc::now(),
            node: self.name().to_owned(),
            artifact: stored.artifact.to_string(),
            memory_bytes: stored.size_bytes,
            compressed_bytes: stored.compressed_bytes,
            runtime_version: self.runtime.describe(),
            took_ms: started.elapsed().as_millis() as u64,
        };
        let event = SandboxEvent {
            at: info.slept_at,
            kind: "slept".into(),
            message: format!(
                "fell asleep on {}: {} checkpoint stored as {} (zstd) in {} ms",
                info.node,
                human_bytes(info.memory_bytes),
                human_bytes(info.compressed_bytes),
                info.took_ms
            ),
        };
        info!(sandbox = %id, bytes = info.memory_bytes, compressed = info.compressed_bytes, took_ms = info.took_ms, "sandbox asleep");
        let rec = self
            .record(id, move |r| {
                r.state = SandboxState::Sleeping;
                r.node = None;
                r.stats = Some(stats);
                r.sleep = Some(info.clone());
                r.events.push(event.clone());
            })
            .await?
            .ok_or_else(|| AgentError::NotFound(id.clone()))?;
        Ok(rec)
    }

    /// Waits (briefly) for the shim of a sandbox whose main process has stopped, then removes
    /// its pid and exit files, so neither a restart nor the next run reads them as an end.
    async fn clear_run_traces(&self, dir: &SandboxDir) {
        let shim = std::fs::read_to_string(dir.pid_file()).ok().and_then(|p| p.trim().parse::<u32>().ok());
        let give_up = Instant::now() + Duration::from_secs(5);
        while shim.is_some_and(|pid| crate::shim::is_shim_of(pid, dir)) && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(dir.exit_file());
        let _ = std::fs::remove_file(dir.pid_file());
    }

    /// Wakes sleeping sandbox `rec` here (its launch): fetches its checkpoint, restores it with
    /// the bundle it booted with, and starts the shim that waits for its end.
    pub(crate) async fn wake_here(
        &self,
        rec: &SandboxRecord,
        sleep: &SleepInfo,
        launch: &LaunchSpec,
        dir: &SandboxDir,
    ) -> Result<ShimHandle, AgentError> {
        let hypnos = self.cfg.hypnos.as_ref().ok_or_else(|| {
            AgentError::CannotSleep("this node keeps no sleeping sandboxes (started without a blob store)".into())
        })?;
        let here = self.runtime.describe();
        if sleep.runtime_version != here {
            return Err(AgentError::CannotSleep(format!(
                "it slept under {} and node {} runs {here}; a checkpoint restores only under the runtime that took it",
                sleep.runtime_version,
                self.name()
            )));
        }
        let image = hypnos
            .image_of(rec.id.as_str(), &sleep.artifact)
            .await
            .map_err(|e| AgentError::CannotSleep(format!("fetching its checkpoint: {}", error_chain(&e))))?;
        // Woken on another node: its earlier output comes along.
        dir.create().map_err(|source| crate::runtime::RuntimeError::Prepare { path: dir.root().to_owned(), source })?;
        for (to, from) in [(dir.stdout(), LOG_OUT), (dir.stderr(), LOG_ERR)] {
            if !to.exists() && image.join(from).exists() {
                let _ = std::fs::copy(image.join(from), &to);
            }
        }
        let main = self.runtime.wake(launch, dir, &image).await?;
        Ok(self.runtime.start(dir, &main, &self.cfg.shim_exe).await?)
    }

    /// Discards a woken (or failed) sandbox's checkpoint: this node's copy and the stored artifact.
    pub(crate) async fn discard_checkpoint(&self, id: &SandboxId, sleep: &SleepInfo) {
        if let Some(hypnos) = &self.cfg.hypnos {
            if let Err(e) = hypnos.discard(id.as_str(), &sleep.artifact).await {
                warn!(sandbox = %id, error = %error_chain(&e), "discarding a used checkpoint failed");
            }
        }
    }
}

/// The sandbox's logs as packed beside its checkpoint.
const LOG_OUT: &str = "tartarus-stdout.log";
const LOG_ERR: &str = "tartarus-stderr.log";

fn human_bytes(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}
