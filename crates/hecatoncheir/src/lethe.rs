//! Lethe — each sandbox's directory on the node, and forgetting it when the sandbox ends.
//!
//! `<data-dir>/sandboxes/<id>/` holds `bundle/` (the runtime bundle), `lethe/` (the writable
//! layer over the read-only template), `stdout.log`, `stderr.log`, and the shim's `shim.json`,
//! `shim.pid` and `exit.json`. When the sandbox ends, [`SandboxDir::forget`] wipes everything
//! but the logs and the exit status, which stay for `tartarus logs`.

use std::io;
use std::path::{Path, PathBuf};

use tartarus_core::SandboxId;

/// The directory of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    root: PathBuf,
}

impl SandboxDir {
    /// The directory of `id` under the agent's `sandboxes` directory.
    pub fn new(sandboxes: &Path, id: &SandboxId) -> Self {
        Self { root: sandboxes.join(id.as_str()) }
    }

    /// Creates the directory and its writable layer.
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.writable())?;
        std::fs::create_dir_all(self.bundle())
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The runtime bundle directory.
    pub fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }
    /// The writable layer (wiped at the end).
    pub fn writable(&self) -> PathBuf {
        self.root.join("lethe")
    }
    /// Standard output of the main process.
    pub fn stdout(&self) -> PathBuf {
        self.root.join("stdout.log")
    }
    /// Standard error of the main process.
    pub fn stderr(&self) -> PathBuf {
        self.root.join("stderr.log")
    }
    /// Where the shim writes the main process's exit status.
    pub fn exit_file(&self) -> PathBuf {
        self.root.join("exit.json")
    }
    /// Where the shim's pid is kept.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("shim.pid")
    }
    /// The shim's instructions.
    pub fn shim_spec(&self) -> PathBuf {
        self.root.join("shim.json")
    }

    /// Wipes the bundle and the writable layer; keeps logs and exit status.
    pub fn forget(&self) -> io::Result<()> {
        for dir in [self.writable(), self.bundle()] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_keeps_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = SandboxDir::new(tmp.path(), &SandboxId::generate());
        d.create().unwrap();
        std::fs::write(d.writable().join("secret"), "x").unwrap();
        std::fs::write(d.stdout(), "out").unwrap();
        d.forget().unwrap();
        d.forget().unwrap(); // idempotent
        assert!(!d.writable().exists() && !d.bundle().exists());
        assert_eq!(std::fs::read_to_string(d.stdout()).unwrap(), "out");
    }
}
