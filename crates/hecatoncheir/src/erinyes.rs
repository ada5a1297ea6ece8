//! Erinyes — enforcement: Tisiphone's cgroups (memory, CPU, pids limits and accounting) and
//! Alecto's deadlines.
//!
//! The agent creates each sandbox's cgroup itself, before the runtime starts, so the limits
//! are in place from the first instruction and the accounting (peak memory, OOM kills, CPU
//! time) is still readable after the runtime has gone. `runsc` joins a cgroup that already
//! exists instead of making its own, and leaves it for us to remove.
//!
//! Both cgroup layouts are handled: v1 (one hierarchy per controller, as on this project's
//! CI machines) and the unified v2 hierarchy.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tartarus_core::{Resources, SandboxStats};

/// Memory added to a sandbox's limit for the runtime itself (gVisor's Sentry and Gofer).
pub const RUNTIME_OVERHEAD_MIB: u64 = 32;

/// Most host tasks (threads) one sandbox's runtime may have.
pub const PIDS_MAX: u64 = 16_384;

/// The memory limit of a sandbox's cgroup, in bytes: what was asked plus the runtime's share.
pub fn memory_limit_bytes(res: &Resources) -> u64 {
    (res.memory_mib + RUNTIME_OVERHEAD_MIB) * 1024 * 1024
}

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {action}")]
pub struct CgroupError {
    /// What was being done.
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller under `/sys/fs/cgroup/<controller>`.
    V1,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

impl CgroupVersion {
    /// Detects the layout the same way container runtimes do: v2 when `/sys/fs/cgroup` itself
    /// is a cgroup2 filesystem, v1 otherwise.
    pub fn detect(mount: &Path) -> io::Result<Self> {
        let st = nix::sys::statfs::statfs(mount).map_err(io::Error::from)?;
        Ok(if st.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC { Self::V2 } else { Self::V1 })
    }
}

/// The v1 controllers Tartarus creates and accounts with.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// One sandbox's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    mount: PathBuf,
    version: CgroupVersion,
    /// Path relative to each hierarchy's root, e.g. `/tartarus/sb-…`.
    rel: String,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError { action: "write", path: path.to_owned(), source })
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Cgroup {
    /// The cgroup at `rel` (e.g. `/tartarus/sb-…`) under the hierarchy mounted at `mount`.
    pub fn new(mount: &Path, version: CgroupVersion, rel: &str) -> Self {
        Self { mount: mount.to_owned(), version, rel: rel.to_owned() }
    }

    /// The path runtimes are given (`linux.cgroupsPath`).
    pub fn rel(&self) -> &str {
        &self.rel
    }

    fn dir(&self, controller: &str) -> PathBuf {
        let rel = self.rel.trim_start_matches('/');
        match self.version {
            CgroupVersion::V1 => self.mount.join(controller).join(rel),
            CgroupVersion::V2 => self.mount.join(rel),
        }
    }

    /// Creates the cgroup with the limits of `res` (memory as [`memory_limit_bytes`]), or sets
    /// them on the cgroup if it exists.
    pub fn create(&self, res: &Resources, pids_max: u64) -> Result<(), CgroupError> {
        let mem = memory_limit_bytes(res);
        let period = 100_000u64;
        let quota = u64::from(res.vcpus) * period;
        let mkdir = |p: PathBuf| {
            std::fs::create_dir_all(&p).map_err(|source| CgroupError { action: "create", path: p, source })
        };
        match self.version {
            CgroupVersion::V1 => {
                for c in V1_CONTROLLERS {
                    mkdir(self.dir(c))?;
                }
                // Without swap accounting memsw is absent; where present, forbid swap too. The
                // memory+swap limit may never be below the memory limit: when an existing cgroup's
                // limit is raised (a pooled sandbox handed over), it goes first.
                let memsw = self.dir("memory").join("memory.memsw.limit_in_bytes");
                let has_memsw = memsw.exists();
                if has_memsw && read_u64(&memsw).is_some_and(|now| now < mem) {
                    write(&memsw, &mem.to_string())?;
                }
                write(&self.dir("memory").join("memory.limit_in_bytes"), &mem.to_string())?;
                if has_memsw {
                    write(&memsw, &mem.to_string())?;
                }
                write(&self.dir("cpu").join("cpu.cfs_period_us"), &period.to_string())?;
                write(&self.dir("cpu").join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&self.dir("pids").join("pids.max"), &pids_max.to_string())?;
            }
            CgroupVersion::V2 => {
                // Every ancestor must delegate the controllers to its children.
                let mut parent = self.mount.clone();
                for part in self.rel.trim_start_matches('/').split('/') {
                    let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids");
                    parent = parent.join(part);
                    mkdir(parent.clone())?;
                }
                let d = self.dir("");
                write(&d.join("memory.max"), &mem.to_string())?;
                let _ = std::fs::write(d.join("memory.swap.max"), "0");
                write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
                write(&d.join("pids.max"), &pids_max.to_string())?;
            }
        }
        Ok(())
    }

    /// Resource use so far (zeros for whatever cannot be read).
    pub fn stats(&self) -> SandboxStats {
        match self.version {
            CgroupVersion::V1 => {
                let m = self.dir("memory");
                SandboxStats {
                    memory_bytes: read_u64(&m.join("memory.usage_in_bytes")).unwrap_or(0),
                    memory_peak_bytes: read_u64(&m.join("memory.max_usage_in_bytes")).unwrap_or(0),
                    oom_kills: read_key(&m.join("memory.oom_control"), "oom_kill").unwrap_or(0),
                    cpu_ns: read_u64(&self.dir("cpuacct").join("cpuacct.usage")).unwrap_or(0),
                    disk_bytes: 0,
                }
            }
            CgroupVersion::V2 => {
                let d = self.dir("");
                SandboxStats {
                    memory_bytes: read_u64(&d.join("memory.current")).unwrap_or(0),
                    memory_peak_bytes: read_u64(&d.join("memory.peak")).unwrap_or(0),
                    oom_kills: read_key(&d.join("memory.events"), "oom_kill").unwrap_or(0),
                    cpu_ns: read_key(&d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
                    disk_bytes: 0,
                }
            }
        }
    }

    /// The host pids in the cgroup.
    pub fn procs(&self) -> Vec<u32> {
        let file = self.dir("memory").join("cgroup.procs");
        std::fs::read_to_string(file)
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Removes the cgroup (its processes must be gone); returns the last stats. Idempotent.
    pub fn remove(&self) -> Result<SandboxStats, CgroupError> {
        let stats = self.stats();
        let dirs: Vec<PathBuf> = match self.version {
            CgroupVersion::V1 => V1_CONTROLLERS.iter().map(|c| self.dir(c)).collect(),
            CgroupVersion::V2 => vec![self.dir("")],
        };
        for d in dirs {
            // rmdir fails with EBUSY while the last processes are being reaped: retry briefly.
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if tries < 50 && e.raw_os_error() == Some(libc::EBUSY) => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(source) => return Err(CgroupError { action: "remove", path: d, source }),
                }
            }
        }
        Ok(stats)
    }
}
