//! The shim — a small detached process that holds a sandbox's main process and records its exit.
//!
//! The agent starts `tartarus shim <dir>` in a session of its own. The shim runs the runtime's
//! main command with stdout/stderr going to the sandbox's log files, waits for it, and writes
//! `exit.json` atomically. Because the shim is not tied to the agent, a sandbox survives a
//! restart of `tartarus up`, and its exit status is not lost while nobody is watching.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lethe::{write_atomic, SandboxDir};

/// What the shim runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimSpec {
    /// The main command.
    pub argv: Vec<String>,
    /// File receiving stdout.
    pub stdout: PathBuf,
    /// File receiving stderr.
    pub stderr: PathBuf,
    /// Where to record the exit status; a relative path is taken in the sandbox's directory,
    /// which the shim works in, so the record follows the directory when a warm pool hands it
    /// over under another name.
    pub exit_file: PathBuf,
    /// The main command is `runsc wait` of a sandbox restored by Hypnos (whose processes write
    /// to the logs themselves): the exit status is the one it prints as JSON (`exitStatus`),
    /// not its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait_status: bool,
    /// A network namespace (Styx's, `/run/netns/…`) the shim enters before it starts the
    /// command, so the sandbox's runtime networks there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// A FIFO (the sandbox's door, [`crate::hatch`]) opened read-write and given to the command
    /// as stdin; stdin is null without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<PathBuf>,
}

/// How the main command ended, as recorded by the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimExit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when one killed it.
    pub signal: Option<i32>,
}

impl ShimExit {
    /// The conventional shell exit code (128 + signal for a signal).
    pub fn code_or_signal(&self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }

    /// Reads a recorded exit status, if the shim wrote one.
    pub fn read(path: &Path) -> Option<Self> {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }
}

/// A running shim.
#[derive(Debug)]
pub enum ShimHandle {
    /// Started by this agent: its exit is awaited directly.
    Child(tokio::process::Child),
    /// Found alive after a restart: its exit is noticed by polling.
    Adopted(u32),
}

impl ShimHandle {
    /// The shim's pid.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Child(c) => c.id(),
            Self::Adopted(p) => Some(*p),
        }
    }

    /// Whether the shim has gone already (without waiting).
    pub fn has_ended(&mut self) -> bool {
        match self {
            Self::Child(c) => !matches!(c.try_wait(), Ok(None)),
            Self::Adopted(pid) => !pid_alive(*pid),
        }
    }

    /// Waits until the shim has gone.
    pub async fn wait(&mut self) {
        match self {
            Self::Child(c) => {
                let _ = c.wait().await;
            }
            Self::Adopted(pid) => {
                while pid_alive(*pid) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name in parentheses.
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether `pid` is the shim of `dir` (pids are reused; the command line and the working
/// directory tell — the latter also for a shim started under a pooled sandbox's earlier name).
pub fn is_shim_of(pid: u32, dir: &SandboxDir) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let works_in_dir = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir.root());
    pid_alive(pid)
        && args.iter().any(|a| *a == b"shim")
        && (works_in_dir || args.iter().any(|a| *a == dir.root().as_os_str().as_encoded_bytes()))
}

impl ShimSpec {
    /// Writes the spec into `dir` and starts `shim_exe shim <dir>` in its own session.
    pub fn spawn(&self, shim_exe: &Path, dir: &SandboxDir) -> io::Result<ShimHandle> {
        write_atomic(&dir.shim_spec(), &serde_json::to_vec(self).expect("serializable"))?;
        let mut cmd = tokio::process::Command::new(shim_exe);
        cmd.arg("shim").arg(dir.root()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; it detaches the shim from our session so a
        // Ctrl-C or the end of the agent does not reach the sandbox.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        if let Some(pid) = child.id() {
            write_atomic(&dir.pid_file(), pid.to_string().as_bytes())?;
        }
        Ok(ShimHandle::Child(child))
    }
}

/// The exit status `runsc wait` printed (`{"id":…,"exitStatus":N}`, N being 128 + the signal
/// for a signal).
fn waited_status(stdout: &[u8]) -> Option<ShimExit> {
    let v: serde_json::Value = serde_json::from_slice(stdout).ok()?;
    let n = i32::try_from(v.get("exitStatus")?.as_i64()?).ok()?;
    Some(if n > 128 {
        ShimExit { code: None, signal: Some(n - 128) }
    } else {
        ShimExit { code: Some(n), signal: None }
    })
}

/// The shim's own main: runs the spec in `dir` and records how it ended. Blocking; no runtime.
pub fn run(dir: &Path) -> io::Result<ShimExit> {
    let spec: ShimSpec = serde_json::from_slice(&std::fs::read(dir.join("shim.json"))?).map_err(io::Error::other)?;
    std::env::set_current_dir(dir)?;
    let (program, args) = spec.argv.split_first().ok_or_else(|| io::Error::other("empty main command"))?;
    if let Some(ns) = &spec.netns {
        // The shim is single-threaded: entering the namespace here moves everything it starts.
        let f = std::fs::File::open(ns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    }
    let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p);
    let mut cmd = Command::new(program);
    cmd.args(args).stderr(open(&spec.stderr)?);
    match &spec.stdin {
        // Read-write: opening a FIFO so never waits for a writer, and it never reads as ended.
        Some(door) => cmd.stdin(std::fs::OpenOptions::new().read(true).write(true).open(door)?),
        None => cmd.stdin(Stdio::null()),
    };
    let status = if spec.wait_status {
        cmd.stdout(Stdio::piped()).output().map(|o| (o.status, waited_status(&o.stdout)))
    } else {
        cmd.stdout(open(&spec.stdout)?).status().map(|s| (s, None))
    };
    let exit = match status {
        Ok((_, Some(waited))) => waited,
        Ok((s, None)) if spec.wait_status => {
            let _ = std::io::Write::write_all(
                &mut open(&spec.stderr)?,
                format!("tartarus shim: the restored sandbox's exit status is unknown ({s})\n").as_bytes(),
            );
            ShimExit { code: None, signal: None }
        }
        Ok((s, None)) => ShimExit { code: s.code(), signal: s.signal() },
        Err(e) => {
            // Record the failure where the agent will look for it.
            let _ = std::io::Write::write_all(
                &mut open(&spec.stderr)?,
                format!("tartarus shim: cannot start {program}: {e}\n").as_bytes(),
            );
            ShimExit { code: Some(127), signal: None }
        }
    };
    write_atomic(&spec.exit_file, &serde_json::to_vec(&exit).expect("serializable"))?;
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_runsc_wait_prints() {
        let exit = |s: &str| waited_status(s.as_bytes());
        assert_eq!(exit(r#"{"id":"c1","exitStatus":3}"#), Some(ShimExit { code: Some(3), signal: None }));
        assert_eq!(exit(r#"{"id":"c1","exitStatus":143}"#), Some(ShimExit { code: None, signal: Some(15) }));
        assert_eq!(exit("waiting failed"), None);
    }
}
