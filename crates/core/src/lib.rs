//! Tartarus domain types: what a soul asks for, what the judges decide, and what became of it.
//!
//! This crate does no I/O. Every other crate speaks in these types.
//!
//! Layout:
//! - [`id`] — sandbox identifiers, checked when they arrive from outside.
//! - [`soul`] — the request for a sandbox ("soul") and its validation into a [`soul::SandboxSpec`].
//! - [`verdict`] — the judges' decision recorded with every admitted soul.
//! - [`sandbox`] — the durable record of a sandbox and the states it moves through.
//! - [`template`] — templates: root filesystems souls start from.
//! - [`output`] — stdout/stderr chunks and exit information, for logs and `exec`.
//! - [`node`] — what a node (Hecatoncheir) reports about itself to Hades.
//! - [`failure`] — Cocytus's entries: failures with sandbox, node, reason and time.
#![warn(missing_docs)]

pub mod failure;
pub mod id;
pub mod network;
pub mod node;
pub mod output;
pub mod sandbox;
pub mod soul;
pub mod template;
pub mod verdict;

pub use failure::Failure;
pub use id::{InvalidId, SandboxId};
pub use node::{Capacity, NodeInfo, NodeState, PoolCount};
pub use output::{ExecRequest, ExitInfo, OutputEvent, Stream};
pub use sandbox::{
    parse_signal, signal_name, KillOrder, KillReason, PhaseAt, SandboxEvent, SandboxRecord, SandboxState, SandboxStats,
    SleepInfo, Termination, TerminationPhase, TerminationReason,
};
pub use soul::{
    HeatLevel, HumanDuration, NetworkContract, ResourceClass, Resources, SandboxSpec, SoulRequest, SpecError,
};
pub use template::{ImageDefaults, ImageInfo, SnapshotInfo, TemplateName, TemplateRecord, Warming, MAX_POOL_SIZE};
pub use verdict::{Ruling, Verdict};
