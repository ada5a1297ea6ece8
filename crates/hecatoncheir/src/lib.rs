//! Hecatoncheir — the node agent: runs admitted sandboxes on this machine and watches them to the end.
//!
//! Layout:
//! - [`agent`] — the supervisor: launch, watch, enforce, record; exec, kill, re-adoption after restart.
//! - [`api`] — the agent's HTTP API, through which Olympus drives it from another machine.
//! - [`runtime`] — the runtime trait ("Tartarus") every isolation backend implements, and
//!   [`runtime::gvisor`], the `runsc` backend.
//! - [`shim`] — the small detached process that holds a sandbox's main process and records
//!   its exit status, so sandboxes outlive a restart of the agent.
//! - [`lethe`] — each sandbox's directory: bundle, writable layer, logs; wiped when it ends.
//! - [`erinyes`] — enforcement: cgroup limits and accounting (Tisiphone), deadlines (Alecto).
//! - [`hermes`] — reading and following a sandbox's logs.
//! - [`thanatos`] — graceful death: termination phases, mortem hooks, the callback.
//! - [`hatch`] — giving a sandbox started ahead (snapshot, pool) its request's command.
//! - [`nyx`] — template snapshots: the stored artifact of a warmed sandbox, restored from.
//! - [`rootfs`] — looking things up inside a template's root filesystem without escaping it.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod charon;
pub mod erinyes;
pub mod hatch;
pub mod hermes;
pub mod hypnos;
pub mod lethe;
pub mod nyx;
pub mod pool;
pub mod rootfs;
pub mod runtime;
pub mod shim;
pub mod styx;
pub mod thanatos;

pub use agent::{AgentConfig, AgentError, ExecStream, Hecatoncheir};
