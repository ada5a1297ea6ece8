//! Warm pools: keeps sandboxes of pooled templates ready on this node and hands one over to each
//! request, so the request only pays for running its command.
//!
//! A template with `pool_size` N has up to N sandboxes ready on every node: restored from its
//! Nyx snapshot when it has a usable one, booted otherwise, their hatch waiting at their door
//! ([`crate::hatch`]) under a running shim. A launch of the template takes one
//! ([`Hecatoncheir::serve_from_pool`]): its directory becomes the sandbox's, the runtime names it
//! by the sandbox's id from then on and its limits become the request's
//! ([`crate::runtime::Runtime::hand_over`]), and the request's command is given at its door: the
//! hatch becomes it, and the shim that was waiting records its end. A pooled sandbox serves one request only and ends
//! with it; it is never put back, so nothing passes from one tenant to the next. The keeper
//! ([`Hecatoncheir::keep_pools`]) refills pools in the background while the node has room
//! (pooled sandboxes count against its slots and memory), and releases pooled sandboxes whose
//! template or snapshot changed. Pooled sandboxes have no records: after a restart the agent's
//! sweep releases any that were left.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tartarus_core::{PoolCount, Resources, SandboxId, TemplateName, TemplateRecord};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::agent::{error_chain, session_of, AgentError, Hecatoncheir};
use crate::lethe::SandboxDir;
use crate::runtime::LaunchSpec;
use crate::shim::ShimHandle;

/// How often pools are looked at when nothing wakes the keeper.
const TEND_EVERY: Duration = Duration::from_secs(1);

/// How long a template whose pooled sandbox failed to start waits before the next try.
const FILL_BACKOFF: Duration = Duration::from_secs(10);

/// One sandbox waiting in a pool.
#[derive(Debug, Clone)]
pub(crate) struct Pooled {
    id: SandboxId,
    /// The template content it was started from.
    content: String,
    /// The snapshot it was restored from (`None`: booted).
    snapshot: Option<String>,
}

impl Pooled {
    fn from(&self) -> String {
        match &self.snapshot {
            Some(s) => format!("snapshot {s}"),
            None => "cold".into(),
        }
    }
}

/// The pools of one node.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    ready: HashMap<TemplateName, Vec<Pooled>>,
    served: HashMap<TemplateName, u64>,
    failed: HashMap<TemplateName, Instant>,
    /// The shims of the ready sandboxes, handed over with them.
    shims: HashMap<SandboxId, ShimHandle>,
    /// The agent is stopping: nothing more is pooled.
    closed: bool,
}

impl Pools {
    /// A ready sandbox of `template`'s current content and snapshot, taken out of the pool.
    fn take(&mut self, template: &TemplateRecord, snapshot: Option<&str>) -> Option<Pooled> {
        let ready = self.ready.get_mut(&template.name)?;
        let content = template.content_id();
        let at = ready.iter().position(|p| p.content == content && p.snapshot.as_deref() == snapshot)?;
        *self.served.entry(template.name.clone()).or_default() += 1;
        Some(ready.remove(at))
    }

    /// Takes out the sandboxes no longer wanted: of templates gone or unpooled, of older
    /// content or another snapshot, and beyond each pool's size.
    fn unwanted(&mut self, wanted: &HashMap<TemplateName, (u32, String, Option<String>)>) -> Vec<Pooled> {
        let mut out = Vec::new();
        for (name, ready) in self.ready.iter_mut() {
            match wanted.get(name) {
                None => out.append(ready),
                Some((size, content, snapshot)) => {
                    let (keep, stale): (Vec<Pooled>, Vec<Pooled>) = std::mem::take(ready)
                        .into_iter()
                        .partition(|p| &p.content == content && &p.snapshot == snapshot);
                    *ready = keep;
                    out.extend(stale);
                    if ready.len() > *size as usize {
                        out.extend(ready.drain(*size as usize..));
                    }
                }
            }
        }
        out
    }

    /// Every pooled sandbox, taken out.
    fn drain(&mut self) -> Vec<Pooled> {
        self.ready.values_mut().flat_map(std::mem::take).collect()
    }

    /// Sandboxes ready, all templates together.
    pub(crate) fn total(&self) -> usize {
        self.ready.values().map(Vec::len).sum()
    }

    fn count(&self, name: &TemplateName) -> usize {
        self.ready.get(name).map_or(0, Vec::len)
    }

    /// What Hades is told: ready and served, by template.
    pub(crate) fn counts(&self) -> BTreeMap<String, PoolCount> {
        let mut out: BTreeMap<String, PoolCount> = BTreeMap::new();
        for (name, ready) in &self.ready {
            out.entry(name.to_string()).or_default().ready = ready.len() as u32;
        }
        for (name, served) in &self.served {
            out.entry(name.to_string()).or_default().served = *served;
        }
        out
    }
}

/// What a pooled sandbox is started with: a request's defaults (its own request's limits are
/// applied at handover).
fn pooled_resources() -> Resources {
    Resources::default()
}

impl Hecatoncheir {
    /// Keeps every pooled template's pool full, for as long as the agent runs.
    pub async fn keep_pools(self: Arc<Self>) {
        loop {
            self.tend_pools().await;
            tokio::select! {
                _ = self.pool_wake.notified() => {}
                _ = tokio::time::sleep(TEND_EVERY) => {}
            }
        }
    }

    /// One round of the keeper: releases unwanted pooled sandboxes, then starts missing ones
    /// (one at a time, while the node has room).
    pub(crate) async fn tend_pools(self: &Arc<Self>) {
        if self.pools.lock().expect("lock").closed {
            return;
        }
        let templates = match self.state.templates.templates().await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %error_chain(&e), "warm pools: cannot list templates");
                return;
            }
        };
        let describe = self.runtime.describe();
        let wanted: HashMap<TemplateName, (u32, String, Option<String>)> = templates
            .iter()
            .filter(|t| t.pool_size > 0)
            .map(|t| {
                let snap = t.usable_snapshot(&describe).ok().flatten().map(|s| s.id.clone());
                (t.name.clone(), (t.pool_size, t.content_id(), snap))
            })
            .collect();
        let unwanted = self.pools.lock().expect("lock").unwanted(&wanted);
        for p in unwanted {
            info!(sandbox = %p.id, "releasing a pooled sandbox no longer wanted (template changed or pool shrunk)");
            self.release_pooled(&p).await;
        }
        for t in templates.iter().filter(|t| t.pool_size > 0) {
            loop {
                let (count, backoff) = {
                    let pools = self.pools.lock().expect("lock");
                    (pools.count(&t.name), pools.failed.get(&t.name).is_some_and(|at| at.elapsed() < FILL_BACKOFF))
                };
                if count >= t.pool_size as usize || backoff || !self.pool_has_room() {
                    break;
                }
                match self.fill_one(t).await {
                    Ok(p) => {
                        let closed = {
                            let mut pools = self.pools.lock().expect("lock");
                            if !pools.closed {
                                pools.ready.entry(t.name.clone()).or_default().push(p.clone());
                            }
                            pools.closed
                        };
                        if closed {
                            // Started while the agent began to stop: nobody will take it.
                            self.release_pooled(&p).await;
                            return;
                        }
                        info!(template = %t.name, sandbox = %p.id, from = %p.from(), "pooled sandbox ready");
                    }
                    Err(e) => {
                        warn!(template = %t.name, error = %error_chain(&e), "warm pool: starting a sandbox failed; retrying later");
                        self.pools.lock().expect("lock").failed.insert(t.name.clone(), Instant::now());
                        break;
                    }
                }
            }
        }
    }

    /// Whether one more pooled sandbox fits beside what runs here and what is pooled already.
    fn pool_has_room(&self) -> bool {
        let used = self.node_info().used;
        let pooled = self.pools.lock().expect("lock").total() as u64;
        let each = pooled_resources().memory_mib;
        u64::from(used.slots) + pooled < u64::from(self.cfg.slots)
            && used.memory_mib + (pooled + 1) * each <= self.cfg.memory_mib
    }

    /// Starts one sandbox of `template` for its pool: restored from its usable snapshot, else booted.
    async fn fill_one(self: &Arc<Self>, template: &TemplateRecord) -> Result<Pooled, AgentError> {
        let (_, launch) = session_of(template, "pool")?;
        let id = launch.id.clone();
        let dir = self.dir(&id);
        let (image, from) = self.snapshot_for(template).await;
        let usable = template.usable_snapshot(&self.runtime.describe()).ok().flatten();
        if usable.is_some() && image.is_none() {
            // Booting instead would give a sandbox the keeper releases at once as stale.
            return Err(AgentError::Pool(format!("not filling the pool: {from}")));
        }
        let snapshot = image.as_ref().and(usable).map(|s| s.id.clone());
        let started = async {
            // Its shim writes to the directory's logs, which become the request's: the hatch
            // prints nothing until it becomes the request's command.
            let main = match &image {
                Some(image) => self.runtime.restore(&launch, &dir, image).await?,
                None => self.runtime.create(&launch, &dir).await?,
            };
            let mut shim = self.runtime.start(&dir, &main, &self.cfg.shim_exe).await?;
            self.until_running(&id, &mut shim).await;
            match self.runtime.status(&id).await? {
                Some(crate::runtime::RuntimeStatus::Running) => Ok(shim),
                other => Err(AgentError::Pool(format!("the pooled sandbox is {other:?}, not running"))),
            }
        }
        .await;
        let pooled = Pooled { id, content: template.content_id(), snapshot };
        match started {
            Ok(shim) => {
                self.pools.lock().expect("lock").shims.insert(pooled.id.clone(), shim);
                Ok(pooled)
            }
            Err(e) => {
                self.release_pooled(&pooled).await;
                Err(e)
            }
        }
    }

    /// Ends a pooled sandbox that was never handed over and removes its directory.
    async fn release_pooled(&self, p: &Pooled) {
        // Its shim handle, if this agent has it, is let go: the wait below covers every shim.
        drop(self.pools.lock().expect("lock").shims.remove(&p.id));
        if let Err(e) = self.stop_and_destroy(&p.id).await {
            warn!(sandbox = %p.id, error = %error_chain(&e), "releasing a pooled sandbox failed");
        }
        // Its shim records its exit in the directory as it goes: let it finish first.
        let dir = self.dir(&p.id);
        let shim = std::fs::read_to_string(dir.pid_file()).ok().and_then(|p| p.trim().parse::<u32>().ok());
        let give_up = Instant::now() + Duration::from_secs(2);
        while shim.is_some_and(|pid| crate::shim::is_shim_of(pid, &dir)) && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = tokio::fs::remove_dir_all(dir.root()).await {
            warn!(sandbox = %p.id, error = %e, "removing a pooled sandbox's directory failed");
        }
    }

    /// Serves the launch of `launch.id` from `template`'s pool on this node, if it has a sandbox
    /// ready: gives it `order` and returns its shim and how the launch is described in the
    /// record. `None` (nothing ready, or the handover failed and was undone): boot or restore.
    pub(crate) async fn serve_from_pool(
        &self,
        template: &TemplateRecord,
        launch: &LaunchSpec,
        order: &crate::hatch::Order,
        dir: &SandboxDir,
    ) -> Option<(ShimHandle, String)> {
        if template.pool_size == 0 {
            return None;
        }
        let snapshot = template.usable_snapshot(&self.runtime.describe()).ok().flatten().map(|s| s.id.clone());
        let p = self.pools.lock().expect("lock").take(template, snapshot.as_deref())?;
        self.pool_wake.notify_one();
        let handed = async {
            tokio::fs::rename(self.dir(&p.id).root(), dir.root())
                .await
                .map_err(|source| crate::runtime::RuntimeError::Prepare { path: dir.root().to_owned(), source })?;
            self.runtime.hand_over(&p.id, launch, dir).await?;
            crate::hatch::give(&crate::hatch::door(dir), order).await.map_err(AgentError::Door)?;
            self.pools
                .lock()
                .expect("lock")
                .shims
                .remove(&p.id)
                .ok_or_else(|| AgentError::Pool(format!("the shim of pooled sandbox {} is not this agent's", p.id)))
        }
        .await;
        match handed {
            Ok(shim) => Some((shim, format!("pool {} ({})", p.id, p.from()))),
            Err(e) => {
                warn!(sandbox = %launch.id, pooled = %p.id, error = %error_chain(&e), "handing a pooled sandbox over failed; starting one instead");
                let _ = self.runtime.destroy(&launch.id).await;
                self.release_pooled(&p).await;
                let _ = crate::lethe::forget(dir).await;
                None
            }
        }
    }

    /// Releases every pooled sandbox and pools no more (the agent is stopping); a sandbox being
    /// pooled right now is released as soon as it is ready.
    pub async fn empty_pools(&self) {
        let all = {
            let mut pools = self.pools.lock().expect("lock");
            pools.closed = true;
            pools.drain()
        };
        for p in all {
            self.release_pooled(&p).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::path::PathBuf;

    fn template(name: &str, pool: u32) -> TemplateRecord {
        TemplateRecord {
            name: TemplateName::parse(name).unwrap(),
            rootfs: PathBuf::from("/nowhere"),
            source: "dir".into(),
            size_bytes: 1,
            created_at: Utc::now(),
            image: None,
            ext4: None,
            snapshot: None,
            pool_size: pool,
        }
    }

    fn pooled(t: &TemplateRecord, snapshot: Option<&str>) -> Pooled {
        Pooled { id: SandboxId::generate(), content: t.content_id(), snapshot: snapshot.map(str::to_owned) }
    }

    #[test]
    fn a_pooled_sandbox_is_taken_once_and_only_for_its_content_and_snapshot() {
        let t = template("py", 2);
        let mut pools = Pools::default();
        let (a, b) = (pooled(&t, None), pooled(&t, Some("snap-1")));
        pools.ready.insert(t.name.clone(), vec![a.clone(), b.clone()]);
        assert_eq!(pools.take(&t, Some("snap-1")).map(|p| p.id), Some(b.id));
        assert!(pools.take(&t, Some("snap-1")).is_none(), "served twice");
        assert!(pools.take(&t, Some("snap-2")).is_none(), "another snapshot");
        let mut replaced = t.clone();
        replaced.created_at = Utc::now() + chrono::Duration::seconds(1);
        assert!(pools.take(&replaced, None).is_none(), "older content");
        assert_eq!(pools.take(&t, None).map(|p| p.id), Some(a.id));
        assert_eq!(pools.counts()["py"], PoolCount { ready: 0, served: 2 });
    }

    #[test]
    fn unwanted_sandboxes_are_the_stale_the_excess_and_the_unpooled() {
        let (t, gone) = (template("py", 1), template("old", 1));
        let mut pools = Pools::default();
        let stale = Pooled { content: "other".into(), ..pooled(&t, None) };
        let (keep, extra) = (pooled(&t, None), pooled(&t, None));
        pools.ready.insert(t.name.clone(), vec![stale.clone(), keep.clone(), extra.clone()]);
        pools.ready.insert(gone.name.clone(), vec![pooled(&gone, None)]);
        let wanted = HashMap::from([(t.name.clone(), (1, t.content_id(), None))]);
        let out = pools.unwanted(&wanted);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out.iter().any(|p| p.id == stale.id) && out.iter().any(|p| p.id == extra.id));
        assert_eq!(pools.total(), 1);
        assert_eq!(pools.take(&t, None).map(|p| p.id), Some(keep.id));
    }
}
