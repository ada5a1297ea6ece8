//! Prometheus metrics of the realm, served at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The realm's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Souls admitted.
    pub admitted: IntCounter,
    /// Souls refused, by code.
    pub refused: IntCounterVec,
    /// Sandboxes ended, by final state.
    pub ended: IntCounterVec,
    /// Sandboxes running now.
    pub running: IntGauge,
    /// Entries in Acheron.
    pub queue_depth: IntGauge,
    /// Admission to running, seconds.
    pub start_seconds: Histogram,
    /// Placement decisions made by this process's Moirai.
    pub placed: IntCounter,
    /// Nodes alive (heartbeating), by Hades.
    pub nodes_alive: IntGauge,
    /// Pooled sandboxes ready on the nodes alive, by template.
    pub pool_ready: IntGaugeVec,
    /// Requests served from warm pools, by template (since the nodes' agents started).
    pub pool_served: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new_custom(Some("tartarus".into()), None).expect("registry");
        let admitted = IntCounter::new("sandboxes_admitted_total", "Souls admitted by the judges").expect("metric");
        let refused =
            IntCounterVec::new(Opts::new("sandboxes_refused_total", "Souls refused, by error code"), &["code"])
                .expect("metric");
        let ended =
            IntCounterVec::new(Opts::new("sandboxes_ended_total", "Sandboxes ended, by final state"), &["state"])
                .expect("metric");
        let running = IntGauge::new("sandboxes_running", "Sandboxes running on this realm's nodes").expect("metric");
        let queue_depth =
            IntGauge::new("acheron_depth", "Entries waiting or unacknowledged in Acheron").expect("metric");
        let start_seconds = Histogram::with_opts(
            HistogramOpts::new("sandbox_start_seconds", "From admission to running")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0]),
        )
        .expect("metric");
        let placed = IntCounter::new("moirai_placements_total", "Sandboxes placed on a node").expect("metric");
        let nodes_alive = IntGauge::new("hades_nodes_alive", "Nodes whose heartbeat is fresh").expect("metric");
        let pool_ready = IntGaugeVec::new(
            Opts::new("pool_ready", "Pooled sandboxes ready on the nodes alive, by template"),
            &["template"],
        )
        .expect("metric");
        let pool_served = IntGaugeVec::new(
            Opts::new("pool_served", "Requests served from warm pools since the nodes' agents started, by template"),
            &["template"],
        )
        .expect("metric");
        for m in [
            Box::new(placed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(nodes_alive.clone()),
            Box::new(pool_ready.clone()),
            Box::new(pool_served.clone()),
            Box::new(admitted.clone()),
            Box::new(refused.clone()),
            Box::new(ended.clone()),
            Box::new(running.clone()),
            Box::new(queue_depth.clone()),
            Box::new(start_seconds.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Self {
            registry,
            admitted,
            refused,
            ended,
            running,
            queue_depth,
            start_seconds,
            placed,
            nodes_alive,
            pool_ready,
            pool_served,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }
}
