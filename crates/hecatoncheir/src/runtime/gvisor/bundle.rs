//! The OCI runtime bundle (`config.json`) for one gVisor sandbox.

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::erinyes::{memory_limit_bytes, PIDS_MAX};
use crate::runtime::LaunchSpec;

/// Where the session keeper (a static busybox, run as `busybox sleep`) is mounted inside session sandboxes.
pub const SESSION_INIT: &str = "/.tartarus/busybox";

/// The process that keeps a session sandbox up: the host's static busybox, sleeping.
pub fn session_keeper() -> Vec<String> {
    vec![SESSION_INIT.into(), "sleep".into(), "2147483647".into()]
}

/// The bundle's `config.json` for `spec`: the template as root (its writes go to the
/// overlay), the request's process, limits, and a cgroup the agent has made already.
///
/// Sessions get the session keeper (`session_init`, a static busybox) mounted read-only under
/// `/.tartarus`; door sandboxes (Nyx, pools) get the hatch (`hatch`) instead, which is its own
/// session keeper (`hatch keep`). A sandbox with a command gets neither: runsc's gofer creates a
/// missing mount point in the template's own directory, which must stay untouched. (A restore
/// needs the mounts its checkpoint was taken with: Hypnos wakes a door sandbox with a door
/// bundle.)
pub fn config(spec: &LaunchSpec, session_init: &std::path::Path, hatch: &std::path::Path, cgroup: &str) -> String {
    let args = match &spec.command {
        _ if spec.door => vec![crate::hatch::IN_SANDBOX.to_owned()],
        Some(argv) => argv.clone(),
        // A session: keep the sandbox up with a static binary of the host's, mounted read-only.
        None => session_keeper(),
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(spec.user.0).gid(spec.user.1).build().expect("user"))
        .args(args)
        .env(spec.env.clone())
        .cwd(spec.workdir.clone())
        .no_new_privileges(true)
        .build()
        .expect("process");
    let root = RootBuilder::default().path(spec.rootfs.clone()).readonly(false).build().expect("root");
    let mem = memory_limit_bytes(&spec.resources) as i64;
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(mem).swap(mem).build().expect("memory"))
        .cpu(
            LinuxCpuBuilder::default()
                .period(100_000u64)
                .quota(i64::from(spec.resources.vcpus) * 100_000)
                .build()
                .expect("cpu"),
        )
        .pids(LinuxPidsBuilder::default().limit(PIDS_MAX as i64).build().expect("pids"))
        .build()
        .expect("resources");
    let mut spec_out = Spec::default();
    let mut mounts: Vec<Mount> = spec_out.mounts().clone().unwrap_or_default();
    let mounted = match (spec.door, &spec.command) {
        (true, _) => vec![(crate::hatch::IN_SANDBOX, hatch)],
        (false, None) => vec![(SESSION_INIT, session_init)],
        (false, Some(_)) => Vec::new(),
    };
    for (destination, source) in mounted {
        mounts.push(
            MountBuilder::default()
                .destination(destination)
                .typ("bind")
                .source(source)
                .options(vec!["rbind".into(), "ro".into()])
                .build()
                .expect("mount"),
        );
    }
    let linux = spec_out.linux().clone().unwrap_or_else(|| LinuxBuilder::default().build().expect("linux"));
    let mut linux = linux;
    linux.set_cgroups_path(Some(cgroup.into())).set_resources(Some(resources));
    if spec.netns.is_some() {
        // Styx: the sandbox uses the network of the namespace runsc is started in; a network
        // namespace of its own in the spec would leave it with loopback only.
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        linux.set_namespaces(Some(
            namespaces.into_iter().filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network).collect(),
        ));
    }
    spec_out
        .set_hostname(Some("tartarus".into()))
        .set_process(Some(process))
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux));
    serde_json::to_string_pretty(&spec_out).expect("spec serializes")
}

/// The OCI process file for `runsc exec --process`: argv, environment and cwd verbatim.
pub fn exec_process(spec: &crate::runtime::ExecSpec) -> String {
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(spec.user.0).gid(spec.user.1).build().expect("user"))
        .args(spec.command.clone())
        .env(spec.env.clone())
        .cwd(spec.workdir.clone())
        .no_new_privileges(true)
        .build()
        .expect("process");
    serde_json::to_string(&process).expect("process serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tartarus_core::{Resources, SandboxId};

    #[test]
    fn exec_process_keeps_values_whole() {
        let spec = crate::runtime::ExecSpec {
            command: vec!["sh".into(), "-c".into(), "echo $A".into()],
            env: vec!["A=x,B=injected".into()],
            workdir: "/tmp".into(),
            user: (0, 0),
            scratch: "/x".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&exec_process(&spec)).unwrap();
        assert_eq!(v["env"], serde_json::json!(["A=x,B=injected"]));
        assert_eq!(v["cwd"], "/tmp");
        assert_eq!(v["terminal"], false);
    }

    #[test]
    fn sessions_and_door_sandboxes_mount_the_keeper_and_the_hatch_commands_nothing() {
        let mut spec = LaunchSpec {
            id: SandboxId::generate(),
            rootfs: "/t/rootfs".into(),
            command: None,
            env: vec!["PATH=/bin".into()],
            workdir: "/".into(),
            user: (0, 0),
            resources: Resources { vcpus: 2, memory_mib: 64, disk_mib: 10 },
            netns: None,
            door: false,
        };
        let config_of = |spec: &LaunchSpec| -> serde_json::Value {
            serde_json::from_str(&config(spec, "/bin/busybox".as_ref(), "/h".as_ref(), "/tartarus/x")).unwrap()
        };
        let v = config_of(&spec);
        assert_eq!(v["process"]["args"][0], SESSION_INIT);
        assert_eq!(v["root"]["path"], "/t/rootfs");
        assert_eq!(v["linux"]["cgroupsPath"], "/tartarus/x");
        assert_eq!(
            v["linux"]["resources"]["memory"]["limit"],
            (64 + crate::erinyes::RUNTIME_OVERHEAD_MIB) * 1024 * 1024
        );
        assert!(v["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == SESSION_INIT));
        spec.command = Some(vec!["echo".into(), "hi".into()]);
        let v = config_of(&spec);
        assert_eq!(v["process"]["args"], serde_json::json!(["echo", "hi"]));
        let mounted =
            |v: &serde_json::Value, at: &str| v["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == at);
        assert!(!mounted(&v, SESSION_INIT) && !mounted(&v, crate::hatch::IN_SANDBOX), "nothing in a command's root");
        spec.door = true;
        let v = config_of(&spec);
        assert_eq!(v["process"]["args"], serde_json::json!([crate::hatch::IN_SANDBOX]));
        assert!(!mounted(&v, SESSION_INIT) && mounted(&v, crate::hatch::IN_SANDBOX));
    }
}
