//! End-to-end tests of the gVisor runtime through the `Runtime` trait, with real `runsc`.
//!
//! Needs root, runsc and a static /bin/busybox. Under `CI=true` a missing prerequisite fails
//! the test naming it; elsewhere the test is skipped.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use tartarus_core::{Resources, SandboxId};
use tartarus_hecatoncheir::lethe::SandboxDir;
use tartarus_hecatoncheir::runtime::gvisor::{Gvisor, GvisorConfig, RunscInfo};
use tartarus_hecatoncheir::runtime::{ExecSpec, LaunchSpec, Runtime, RuntimeStatus};

fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    if let Err(e) = RunscInfo::probe(None) {
        missing.push(e);
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt-get install busybox-static)".into());
    }
    common::prerequisites_met(&missing)
}

fn busybox_root(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "sleep", "ls", "head"] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
}

fn runtime(tmp: &Path) -> Gvisor {
    Gvisor::new(GvisorConfig {
        runsc: None,
        platform: None,
        state_root: tmp.join("runsc"),
        session_init: "/bin/busybox".into(),
        cgroup_mount: "/sys/fs/cgroup".into(),
    })
    .expect("gVisor runtime")
}

async fn exec_output(rt: &Gvisor, id: &SandboxId, scratch: &Path, cmd: &[&str]) -> (String, i32) {
    let spec = ExecSpec {
        command: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into(), "COMMA=a,b=c".into()],
        workdir: "/".into(),
        user: (0, 0),
        scratch: scratch.join("exec"),
    };
    let out = rt.exec(id, &spec).await.unwrap().wait_with_output().await.unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code().unwrap_or(-1))
}

async fn wait_for(rt: &Gvisor, id: &SandboxId, want: RuntimeStatus) {
    for _ in 0..100 {
        if rt.status(id).await.unwrap() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sandbox never reached {want:?}");
}

/// A runtime over a fresh busybox root, and one sandbox's id and directory.
struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: std::path::PathBuf,
    rt: Gvisor,
    id: SandboxId,
    dir: SandboxDir,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    busybox_root(&rootfs);
    let rt = runtime(tmp.path());
    let id = SandboxId::generate();
    let dir = SandboxDir::new(&tmp.path().join("sandboxes"), &id);
    Fixture { tmp, rootfs, rt, id, dir }
}

#[tokio::test]
async fn session_lifecycle_exec_pause_resume_checkpoint_destroy() {
    if !prerequisites() {
        return;
    }
    let Fixture { tmp, rootfs, rt, id, dir } = fixture();
    let spec = LaunchSpec {
        id: id.clone(),
        rootfs: rootfs.clone(),
        command: None,
        env: vec!["PATH=/bin".into()],
        workdir: "/".into(),
        user: (0, 0),
        resources: Resources::default(),
        netns: None,
        door: false,
    };
    let main = rt.create(&spec, &dir).await.unwrap();
    let mut child =
        tokio::process::Command::new(&main.argv[0]).args(&main.argv[1..]).kill_on_drop(true).spawn().unwrap();
    wait_for(&rt, &id, RuntimeStatus::Running).await;

    let (out, code) =
        exec_output(&rt, &id, tmp.path(), &["sh", "-c", "echo kept > /tmp/f; cat /tmp/f; echo $COMMA"]).await;
    assert_eq!((out.as_str(), code), ("kept\na,b=c\n", 0), "values with commas arrive whole");
    assert!(!rootfs.join("tmp/f").exists(), "the template must never be written");

    rt.pause(&id).await.unwrap();
    assert_eq!(rt.status(&id).await.unwrap(), Some(RuntimeStatus::Paused));
    rt.resume(&id).await.unwrap();
    assert_eq!(rt.status(&id).await.unwrap(), Some(RuntimeStatus::Running));
    let (out, _) = exec_output(&rt, &id, tmp.path(), &["cat", "/tmp/f"]).await;
    assert_eq!(out, "kept\n", "state survives pause/resume");

    let (_, code) = exec_output(&rt, &id, tmp.path(), &["sh", "-c", "head -c 5000000 /dev/zero > /big"]).await;
    assert_eq!(code, 0);
    let stats = rt.stats(&id, &dir).await.unwrap();
    assert!(stats.memory_bytes > 0, "the cgroup accounts the sandbox: {stats:?}");
    assert!(stats.disk_bytes >= 5_000_000, "the writable layer is measured: {stats:?}");

    let image = tmp.path().join("checkpoint");
    rt.checkpoint(&id, &image, true).await.unwrap();
    assert!(std::fs::read_dir(&image).unwrap().next().is_some(), "checkpoint wrote an image");

    rt.kill(&id, libc::SIGKILL, false).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGKILL));
    rt.destroy(&id).await.unwrap();
    assert_eq!(rt.status(&id).await.unwrap(), None);
    rt.destroy(&id).await.expect("destroy is idempotent");
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/tartarus/{id}")).exists());
}

#[tokio::test]
async fn main_command_exit_code_and_limits_in_the_bundle() {
    if !prerequisites() {
        return;
    }
    let Fixture { tmp: _tmp, rootfs, rt, id, dir } = fixture();
    let spec = LaunchSpec {
        id: id.clone(),
        rootfs,
        command: Some(vec!["sh".into(), "-c".into(), "echo out; exit 7".into()]),
        env: vec!["PATH=/bin".into()],
        workdir: "/".into(),
        user: (0, 0),
        resources: Resources { vcpus: 1, memory_mib: 64, disk_mib: 16 },
        netns: None,
        door: false,
    };
    let main = rt.create(&spec, &dir).await.unwrap();
    let out = tokio::process::Command::new(&main.argv[0]).args(&main.argv[1..]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let stats = rt.destroy(&id).await.unwrap();
    assert!(stats.memory_peak_bytes > 0 && stats.oom_kills == 0, "{stats:?}");
}

/// Runs a main command as the shim would: stdin its door (opened read-write) when it has one.
fn spawn_main(main: &tartarus_hecatoncheir::runtime::MainCommand) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(&main.argv[0]);
    cmd.args(&main.argv[1..]).stdout(std::process::Stdio::piped()).kill_on_drop(true);
    if let Some(door) = &main.stdin {
        cmd.stdin(std::fs::OpenOptions::new().read(true).write(true).open(door).unwrap());
    }
    cmd.spawn().unwrap()
}

#[tokio::test]
async fn a_hatch_checkpointed_while_waiting_becomes_each_restored_sandbox_command() {
    use tartarus_hecatoncheir::hatch::{door, give, Order};
    if !prerequisites() {
        return;
    }
    let Fixture { tmp, rootfs, rt, id, dir } = fixture();
    let spec = |id: &SandboxId, command: Option<Vec<String>>, env: &str| LaunchSpec {
        id: id.clone(),
        rootfs: rootfs.clone(),
        command,
        env: vec!["PATH=/bin".into(), env.into()],
        workdir: "/tmp".into(),
        user: (0, 0),
        resources: Resources::default(),
        netns: None,
        door: true,
    };
    let main = rt.create(&spec(&id, None, "A=0"), &dir).await.unwrap();
    assert!(main.stdin.is_some(), "a door sandbox's main command reads its door");
    let _warm = spawn_main(&main);
    wait_for(&rt, &id, RuntimeStatus::Running).await;
    let image = tmp.path().join("checkpoint");
    rt.checkpoint(&id, &image, true).await.unwrap();
    rt.kill(&id, libc::SIGKILL, true).await.unwrap();
    rt.destroy(&id).await.unwrap();

    // Each restore is a fresh sandbox whose first process becomes the command given at its door.
    for (n, code) in [(1, 3), (2, 4)] {
        let id = SandboxId::generate();
        let dir = SandboxDir::new(&tmp.path().join("sandboxes"), &id);
        let argv =
            vec!["sh".into(), "-c".into(), format!("echo \"$A $$ $(pwd)\" > /tmp/mine; cat /tmp/*; exit {code}")];
        let spec = spec(&id, Some(argv), &format!("A={n}"));
        let main = rt.restore(&spec, &dir, &image).await.unwrap();
        let child = spawn_main(&main);
        give(&door(&dir), &Order::of(&spec, Some("/bin/sh".into()))).await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
        assert_eq!(out.status.code(), Some(code), "the command's exit status is the sandbox's");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{n} 1 /tmp\n"), "pid 1, its env and cwd");
        rt.destroy(&id).await.unwrap();
    }
}
