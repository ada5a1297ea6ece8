//! A runtime that refuses every operation: for testing the layers above the runtime (the
//! agent's API, the control plane's protocol) without running sandboxes. Running sandboxes is
//! tested end to end with gVisor; this never stands in for it.

use std::path::Path;

use async_trait::async_trait;
use tartarus_core::{SandboxId, SandboxStats};

use super::{ExecSpec, LaunchSpec, MainCommand, Runtime, RuntimeError, RuntimeStatus};
use crate::lethe::SandboxDir;

/// Refuses to create, exec, kill, pause, resume, checkpoint, restore or measure anything; knows
/// of no sandbox; destroys nothing successfully.
pub struct Refusing;

fn refused() -> RuntimeError {
    RuntimeError::Refused { operation: "test".into(), message: "this runtime refuses everything".into() }
}

#[async_trait]
impl Runtime for Refusing {
    fn name(&self) -> &'static str {
        "refusing"
    }
    fn describe(&self) -> String {
        "refuses everything".into()
    }
    async fn create(&self, _: &LaunchSpec, _: &SandboxDir) -> Result<MainCommand, RuntimeError> {
        Err(refused())
    }
    async fn exec(&self, _: &SandboxId, _: &ExecSpec) -> Result<tokio::process::Child, RuntimeError> {
        Err(refused())
    }
    async fn kill_exec(&self, _: &SandboxId, _: &ExecSpec) -> Result<(), RuntimeError> {
        Err(refused())
    }
    async fn kill(&self, _: &SandboxId, _: i32, _: bool) -> Result<(), RuntimeError> {
        Err(refused())
    }
    async fn pause(&self, _: &SandboxId) -> Result<(), RuntimeError> {
        Err(refused())
    }
    async fn resume(&self, _: &SandboxId) -> Result<(), RuntimeError> {
        Err(refused())
    }
    async fn checkpoint(&self, _: &SandboxId, _: &Path, _: bool) -> Result<(), RuntimeError> {
        Err(refused())
    }
    async fn restore(&self, _: &LaunchSpec, _: &SandboxDir, _: &Path) -> Result<MainCommand, RuntimeError> {
        Err(refused())
    }
    async fn status(&self, _: &SandboxId) -> Result<Option<RuntimeStatus>, RuntimeError> {
        Ok(None)
    }
    async fn stats(&self, _: &SandboxId, _: &SandboxDir) -> Result<SandboxStats, RuntimeError> {
        Err(refused())
    }
    async fn destroy(&self, _: &SandboxId) -> Result<SandboxStats, RuntimeError> {
        Ok(SandboxStats::default())
    }
}
