//! Styx's TAP devices for microVMs, with real iproute2 and iptables: a TAP is an isolated port of
//! the bridge with the sandbox's rules, and goes with everything else at detach.
//!
//! Needs root, `ip` and `iptables`. Under `CI=true` a missing prerequisite fails the test naming
//! it; elsewhere the test is skipped.

mod common;

use std::process::Command;

use tartarus_core::network::EgressRule;
use tartarus_core::{NetworkContract, SandboxId};
use tartarus_hecatoncheir::styx::{Styx, StyxConfig};

fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for tool in ["ip", "iptables", "iptables-restore"] {
        if Command::new(tool).arg("-V").output().is_err() {
            missing.push(tool.to_owned());
        }
    }
    common::prerequisites_met(&missing)
}

fn text(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_tap_is_an_isolated_bridge_port_with_the_sandbox_rules_and_goes_with_detach() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let styx = Styx::start(StyxConfig::new(tmp.path())).await.expect("Styx starts");
    let id = SandboxId::generate();
    let hex = id.as_str().trim_start_matches("sb-").to_owned();
    let contract = NetworkContract {
        egress: vec![EgressRule::parse_cli("10.9.0.0/16:443").unwrap()],
        hosts: Vec::new(),
        ingress: vec![8080],
    };
    let tap = styx.attach_tap(&id, &contract).await.expect("a TAP");
    assert_eq!(tap.gateway.to_string(), "172.16.0.1");
    let link = text(&["ip", "-d", "link", "show", "dev", &tap.tap]);
    assert!(link.contains("master tartarus0") && link.contains("isolated on"), "{link}");
    assert!(link.contains("tun"), "not a TAP: {link}");
    let chain = text(&["iptables", "-w", "-S", &format!("TT-{hex}")]);
    assert!(chain.contains("-d 10.9.0.0/16 -p tcp -m multiport --dports 443 -j ACCEPT"), "{chain}");
    let jumps = text(&["iptables", "-w", "-S", "TARTARUS-SBX"]);
    assert!(jumps.contains(&format!("-s {}/32 -i tartarus0 -j TT-{hex}", tap.address)), "{jumps}");
    let exposed = text(&["iptables", "-w", "-S", &format!("TX-{hex}")]);
    assert!(exposed.contains("--dports 8080"), "{exposed}");
    assert!(styx.leases().contains(&(tap.address, id.clone())));
    assert!(tap.rules.iter().any(|r| r == "allow 10.9.0.0/16 tcp port 443"), "{:?}", tap.rules);

    styx.detach(&id).await;
    assert!(text(&["ip", "link", "show", "dev", &tap.tap]).is_empty(), "the TAP outlived detach");
    let all = text(&["iptables", "-w", "-S"]);
    assert!(!all.contains(&hex), "rules outlived detach: {all}");
    assert!(styx.leases().is_empty(), "the lease outlived detach");
}
