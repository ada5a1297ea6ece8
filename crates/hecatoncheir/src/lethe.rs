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

/// Bytes on disk held by the files under `writable` that `pids` have open (deleted or not).
///
/// gVisor keeps a sandbox's writes in a sparse file store that it unlinks right after creating
/// it, so the only way to it is through the open descriptors of the sandbox's processes.
pub fn usage(pids: &[u32], writable: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let prefix = writable.as_os_str().as_encoded_bytes();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if !target.as_os_str().as_encoded_bytes().starts_with(prefix) {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(fd.path()) {
                if seen.insert((meta.dev(), meta.ino())) {
                    total += meta.blocks() * 512;
                }
            }
        }
    }
    total
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the whole new one.
///
/// Not fsynced: these files (bundles, process files, pids, exit statuses) must survive the
/// agent's death, which the page cache does, not the machine's, which the sandboxes they
/// describe do not survive either. An fsync per file on the launch path would stall the agent's
/// threads (and its heartbeats) under a burst of launches.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// [`SandboxDir::forget`] on the blocking pool (a writable layer can hold many files).
pub async fn forget(dir: &SandboxDir) -> io::Result<()> {
    let dir = dir.clone();
    tokio::task::spawn_blocking(move || dir.forget()).await.unwrap_or_else(|e| Err(io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_open_files_under_the_layer_once() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![1u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let _again = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap(); // unlinked, as gVisor's file store is
        let me = std::process::id();
        let used = usage(&[me, me], tmp.path());
        assert!((1 << 20..=(1 << 20) + 65536).contains(&used), "{used}");
        assert_eq!(usage(&[me], &tmp.path().join("elsewhere")), 0);
    }

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
