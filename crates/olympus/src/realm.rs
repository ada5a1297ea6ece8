//! The realm's control plane assembled: state, judges, scheduler, API, and its serving loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tartarus_store::{Events, State};
use tokio::net::TcpListener;
use tracing::info;

use crate::api::{self, Ctx};
use crate::cerberus::Cerberus;
use crate::judges::{Aeacus, Minos, Policy, Rhadamanthus, Tribunal};
use crate::metrics::Metrics;
use crate::moirai::{Moirai, SchedulerConfig};
use crate::nodes::Directory;
use crate::reconcile;

/// How long open streams may keep the server up after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often Hades is checked for nodes whose heartbeat lapsed.
const DEATH_WATCH: Duration = Duration::from_secs(1);

/// How Olympus is set up.
#[derive(Debug, Clone)]
pub struct OlympusConfig {
    /// The admin API key.
    pub admin_token: String,
    /// The data directory (audit log, templates).
    pub data_dir: PathBuf,
    /// Most live sandboxes per tenant.
    pub max_live_per_tenant: usize,
    /// The policy.
    pub policy: Policy,
    /// Where image blobs and template artifacts are stored.
    pub blobs: tartarus_erebus::blobs::BlobStore,
    /// The scheduler's settings.
    pub scheduler: SchedulerConfig,
    /// The secret shared with remote agents (`None`: the realm's only node is in process).
    pub agent_secret: Option<String>,
    /// Hypnos: sandboxes may sleep and wake (`ENABLE_HYPNOS=1`; off by default).
    pub hypnos: bool,
}

/// The control plane.
pub struct Olympus {
    ctx: Ctx,
    cerberus: Cerberus,
}

impl Olympus {
    /// Assembles the control plane over `state` and the nodes it can reach, starts the
    /// scheduler and the watch over nodes, and reconciles the realm at once and then periodically.
    pub async fn start(cfg: OlympusConfig, state: State, events: Events, nodes: Directory) -> std::io::Result<Self> {
        let templates_dir = cfg.data_dir.join("templates");
        std::fs::create_dir_all(&templates_dir)?;
        let metrics = Metrics::default();
        let tribunal = Tribunal {
            judges: vec![
                Arc::new(Minos { store: state.sandboxes.clone(), max_live_per_tenant: cfg.max_live_per_tenant }),
                Arc::new(Rhadamanthus { policy: cfg.policy.clone() }),
            ],
            aeacus: Aeacus::open(cfg.data_dir.join("audit.log"))?,
        };
        let moirai =
            Arc::new(Moirai::new(state.clone(), events.clone(), nodes, metrics.clone(), cfg.scheduler.clone()));
        tokio::spawn(moirai.clone().run());
        tokio::spawn(moirai.clone().forget_ended());
        tokio::spawn(reconcile::watch_nodes(moirai.clone(), DEATH_WATCH));
        tokio::spawn(count_endings(events.clone(), metrics.clone(), cfg.blobs.clone()));
        if cfg.hypnos {
            tokio::spawn(crate::hypnos::expire(state.clone(), events.clone()));
        }
        tokio::spawn(reconcile::every(moirai.clone(), cfg.scheduler.reconcile_every));
        let ctx = Ctx {
            state,
            events,
            tribunal: Arc::new(tribunal),
            moirai,
            metrics,
            templates_dir,
            max_live_per_tenant: cfg.max_live_per_tenant,
            agent_secret: cfg.agent_secret.clone(),
            hypnos: cfg.hypnos,
            imports: Default::default(),
            blobs: cfg.blobs.clone(),
            recipes_dir: cfg.data_dir.join("erebus").join("recipes"),
            images_dir: cfg.data_dir.join("erebus").join("images"),
        };
        Ok(Self { ctx, cerberus: Cerberus::with_admin_key(cfg.admin_token) })
    }

    /// The HTTP application.
    pub fn router(&self) -> axum::Router {
        api::router(self.ctx.clone(), self.cerberus.clone())
    }

    /// Serves the API on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr: SocketAddr = listener.local_addr()?;
        info!(%addr, "Olympus serving");
        // Streams (logs -f, exec, wait=true) may stay open indefinitely: after the signal they
        // get a short grace, then the server stops regardless.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let signalled = async move {
            shutdown.await;
            let _ = stop_tx.send(());
        };
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(signalled);
        tokio::select! {
            r = server => r,
            _ = async {
                let _ = stop_rx.await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                info!("open streams did not finish within the shutdown grace; stopping");
                Ok(())
            }
        }
    }
}

/// Counts sandboxes as they end, and how long they took to start; frees the checkpoint of one
/// that ended asleep (Hypnos).
async fn count_endings(events: Events, metrics: Metrics, blobs: tartarus_erebus::blobs::BlobStore) {
    let mut rx = events.subscribe();
    loop {
        match rx.recv().await {
            Ok(r) if r.state.is_terminal() => {
                metrics.ended.with_label_values(&[r.state.as_str()]).inc();
                if r.sleep.is_some() {
                    let blobs = blobs.clone();
                    tokio::spawn(async move { crate::hypnos::free_checkpoint(&blobs, &r).await });
                }
            }
            Ok(r) if r.state == tartarus_core::SandboxState::Running => {
                if let Some(started) = r.started_at {
                    let secs = (started - r.created_at).to_std().unwrap_or(Duration::ZERO).as_secs_f64();
                    metrics.start_seconds.observe(secs);
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}
