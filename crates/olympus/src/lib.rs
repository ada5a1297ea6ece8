//! Olympus — the control plane: judges every soul, queues it in Acheron, and has the Moirai
//! place it on a node.
//!
//! Layout:
//! - [`api`] — the versioned REST API (axum), one file per resource, and its OpenAPI document.
//! - [`error`] — the one table from failures to HTTP status and stable error `code`.
//! - [`cerberus`] — who is calling: bearer API keys, compared in constant time.
//! - [`judges`] — Minos (quota), Rhadamanthus (policy) and Aeacus (audit) give the [`tartarus_core::Verdict`].
//! - [`moirai`] — the scheduler: Clotho pulls from Acheron, Lachesis filters nodes from Hades,
//!   Atropos picks one and hands the soul to it through the [`nodes::Node`] seam.
//! - [`nodes`] — the `Node` seam, the in-process agent behind it, and the directory of nodes.
//! - [`remote`] — a remote agent (`tartarus agent`) behind the `Node` seam, over its HTTP API.
//! - [`reconcile`] — rebuilding the realm's view from Hades and the agents; dead-node handling.
//! - [`metrics`] — Prometheus metrics.
//! - [`realm`] — assembles all of it around a [`tartarus_store::State`].
#![warn(missing_docs)]

pub mod api;
pub mod cerberus;
pub mod error;
pub mod hypnos;
pub mod judges;
pub mod metrics;
pub mod moirai;
pub mod nodes;
pub mod realm;
pub mod reconcile;
pub mod remote;

pub use realm::{Olympus, OlympusConfig};
