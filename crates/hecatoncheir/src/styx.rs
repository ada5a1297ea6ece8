//! Styx on the node: the bridge, a network namespace and veth pair per sandbox, addresses that
//! survive restarts, and the iptables rules that hold each sandbox to its network contract.
//!
//! Layout: a bridge (`tartarus0`, 172.16.0.1/16 by default) owned by the agent; per sandbox a
//! namespace `tt-<id hex>` whose `eth0` is one end of a veth pair, the other end (`tt<12 hex>`)
//! an *isolated* bridge port (isolated ports cannot talk to each other, so sandboxes never see
//! each other at layer 2). The sandbox's runtime runs inside that namespace (gVisor with
//! `--network=host` where its netstack is unavailable), so whatever it sends leaves through the
//! veth, and the host's iptables decide:
//!
//! - `TARTARUS-IN` (from `INPUT -i tartarus0`): replies only; nothing of the host is reachable
//!   from a sandbox, the bridge's own address included.
//! - `TARTARUS-FWD` (from `FORWARD` for the bridge): replies to sandboxes pass; traffic between
//!   sandboxes and to the metadata address 169.254.169.254 is dropped; then each sandbox's own
//!   chain `TT-<id hex>` (through `TARTARUS-SBX`) accepts what its contract allows; the rest is
//!   dropped. Nothing from outside may open a connection to a sandbox.
//! - `TARTARUS-OUT` (from `OUTPUT -o tartarus0`): the host itself may open connections only to
//!   a sandbox's exposed (`ingress`) ports, through the sandbox's chain `TX-<id hex>` (via
//!   `TARTARUS-EXP`) — that is how the agent proxies them for Olympus.
//! - `TARTARUS-NAT` (from `nat POSTROUTING`): masquerade for allowed egress.
//!
//! Addresses are leases, one file per address under `/run/tartarus/styx/<bridge>/leases`,
//! created exclusively and naming the sandbox and the agent (its data directory) that holds it:
//! agents sharing a bridge on one machine never hand out one address twice, a restarted agent
//! knows what it holds, and a reboot (which takes every namespace with it) starts afresh.
//! [`Styx::sweep`] removes every namespace, interface, chain and lease this agent holds for
//! sandboxes that no longer run, and nothing of other agents'. Only the agent's own chains are
//! written; the operator's rules are never touched beyond the jumps into them.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use tartarus_core::network::{Cidr, EgressRule, Protocol};
use tartarus_core::{NetworkContract, SandboxId};
use tokio::process::Command;
use tracing::info;

/// The cloud metadata address, never reachable.
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// How Styx is set up on this node.
#[derive(Debug, Clone)]
pub struct StyxConfig {
    /// The bridge (`tartarus0`).
    pub bridge: String,
    /// The sandboxes' subnet; its first address is the bridge's (172.16.0.0/16).
    pub subnet: Cidr,
    /// The interface allowed egress leaves through (`None`: any but the bridge).
    pub uplink: Option<String>,
    /// Where leases are kept (`/run/tartarus/styx/<bridge>`).
    pub state_dir: PathBuf,
    /// Who this agent is in its leases (its data directory).
    pub owner: String,
}

impl StyxConfig {
    /// The defaults under `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            bridge: "tartarus0".into(),
            subnet: Cidr { addr: Ipv4Addr::new(172, 16, 0, 0), prefix: 16 },
            uplink: None,
            state_dir: PathBuf::from("/run/tartarus/styx/tartarus0"),
            owner: data_dir.display().to_string(),
        }
    }
}

/// A networking step that failed.
#[derive(Debug, thiserror::Error)]
pub enum StyxError {
    /// A tool (`ip`, `iptables`, `bridge`) refused.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        message: String,
    },
    /// Reading or writing state failed.
    #[error("{0}")]
    Io(String),
    /// Every address of the subnet is leased.
    #[error("no free address left in {0}")]
    Exhausted(Cidr),
    /// A host name of the contract did not resolve.
    #[error("{0}")]
    Resolve(String),
}

/// A sandbox's network, as set up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attached {
    /// Its namespace (`/run/netns/tt-…`), which its runtime runs in.
    pub netns: PathBuf,
    /// Its address.
    pub address: Ipv4Addr,
    /// The rules in force, in words.
    pub rules: Vec<String>,
}

/// A microVM's network, as set up ([`Styx::attach_tap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedTap {
    /// The TAP device (give it to the VMM).
    pub tap: String,
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The rules in force, in words.
    pub rules: Vec<String>,
}

/// Names of one sandbox's network objects.
struct Names {
    netns: String,
    veth: String,
    chain: String,
    exposed: String,
    tap: String,
}

fn names(id: &SandboxId) -> Names {
    let hex = id.as_str().trim_start_matches("sb-");
    Names {
        netns: format!("tt-{hex}"),
        veth: format!("tt{}", &hex[..12]),
        chain: format!("TT-{hex}"),
        exposed: format!("TX-{hex}"),
        tap: format!("tp{}", &hex[..12]),
    }
}

/// Runs a command; its stderr is the error.
async fn run(program: &str, args: &[&str]) -> Result<String, StyxError> {
    let out = Command::new(program).args(args).output().await.map_err(|e| StyxError::Command {
        command: format!("{program} {}", args.join(" ")),
        message: format!("cannot run {program}: {e}"),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(StyxError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs a command with `input` on its stdin (a batch); its stderr is the error.
async fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), StyxError> {
    use tokio::io::AsyncWriteExt;
    let failed = |message: String| StyxError::Command { command: format!("{program} {}", args.join(" ")), message };
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(input.as_bytes()).await.map_err(|e| failed(format!("writing its input: {e}")))?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

async fn ipt(args: &[&str]) -> Result<String, StyxError> {
    let mut a = vec!["-w"];
    a.extend_from_slice(args);
    run("iptables", &a).await
}

/// Adds rule `rule` to `chain` of `table` unless it is there.
async fn ensure_rule(table: &str, chain: &str, rule: &[&str], insert: bool) -> Result<(), StyxError> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if ipt(&check).await.is_ok() {
        return Ok(());
    }
    let mut add = vec!["-t", table, if insert { "-I" } else { "-A" }, chain];
    add.extend_from_slice(rule);
    ipt(&add).await.map(drop)
}

/// Makes `chain` in `table` hold exactly `rules`, in order; left alone when it already does, so
/// another agent on the same bridge (or this one, restarting) never opens a gap in it.
async fn ensure_chain(table: &str, chain: &str, rules: &[Vec<&str>]) -> Result<(), StyxError> {
    if ipt(&["-t", table, "-N", chain]).await.is_err() {
        let listed = ipt(&["-t", table, "-S", chain]).await.unwrap_or_default();
        let count = listed.lines().filter(|l| l.starts_with("-A ")).count();
        let mut all_there = count == rules.len();
        for r in rules {
            if !all_there {
                break;
            }
            let mut check = vec!["-t", table, "-C", chain];
            check.extend_from_slice(r);
            all_there = ipt(&check).await.is_ok();
        }
        if all_there {
            return Ok(());
        }
        ipt(&["-t", table, "-F", chain]).await?;
    }
    for r in rules {
        let mut add = vec!["-t", table, "-A", chain];
        add.extend_from_slice(r);
        ipt(&add).await?;
    }
    Ok(())
}

/// Node networking.
#[derive(Debug)]
pub struct Styx {
    cfg: StyxConfig,
    gateway: Ipv4Addr,
}

impl Styx {
    /// Sets up the bridge, forwarding and the agent's chains (idempotent; existing sandboxes'
    /// chains and jumps are kept).
    pub async fn start(cfg: StyxConfig) -> Result<Self, StyxError> {
        let gateway = Ipv4Addr::from(u32::from(cfg.subnet.addr) + 1);
        let leases = cfg.state_dir.join("leases");
        std::fs::create_dir_all(&leases).map_err(|e| StyxError::Io(format!("creating {}: {e}", leases.display())))?;
        let br = cfg.bridge.as_str();
        if run("ip", &["link", "show", br]).await.is_err() {
            run("ip", &["link", "add", br, "type", "bridge"]).await?;
        }
        let cidr = format!("{gateway}/{}", cfg.subnet.prefix);
        run("ip", &["addr", "replace", &cidr, "dev", br]).await?;
        run("ip", &["link", "set", br, "up"]).await?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| StyxError::Io(format!("enabling IP forwarding: {e}")))?;
        let subnet = cfg.subnet.to_string();
        let metadata = METADATA.to_string();
        let established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"];
        // The host: replies only.
        let mut input = vec![established.to_vec()];
        input.push(vec!["-j", "DROP"]);
        ensure_chain("filter", "TARTARUS-IN", &input).await?;
        ensure_rule("filter", "INPUT", &["-i", br, "-j", "TARTARUS-IN"], true).await?;
        // Forwarding: replies in; no sandbox to sandbox, no metadata; each sandbox's own chain; else drop.
        let _ = ipt(&["-N", "TARTARUS-SBX"]).await;
        let mut replies = vec!["-o", br];
        replies.extend(established);
        let forward = vec![
            replies,
            vec!["-o", br, "-j", "DROP"],
            vec!["-d", subnet.as_str(), "-j", "DROP"],
            vec!["-d", metadata.as_str(), "-j", "DROP"],
            vec!["-i", br, "-j", "TARTARUS-SBX"],
            vec!["-j", "DROP"],
        ];
        ensure_chain("filter", "TARTARUS-FWD", &forward).await?;
        ensure_rule("filter", "FORWARD", &["-i", br, "-j", "TARTARUS-FWD"], true).await?;
        ensure_rule("filter", "FORWARD", &["-o", br, "-j", "TARTARUS-FWD"], true).await?;
        // The host towards sandboxes: replies, and exposed ports only.
        let _ = ipt(&["-N", "TARTARUS-EXP"]).await;
        let output = vec![established.to_vec(), vec!["-j", "TARTARUS-EXP"], vec!["-j", "DROP"]];
        ensure_chain("filter", "TARTARUS-OUT", &output).await?;
        ensure_rule("filter", "OUTPUT", &["-o", br, "-j", "TARTARUS-OUT"], true).await?;
        // Masquerade what leaves.
        let mut masq = vec!["-s", subnet.as_str()];
        match &cfg.uplink {
            Some(up) => masq.extend(["-o", up.as_str()]),
            None => masq.extend(["!", "-o", br]),
        }
        masq.extend(["-j", "MASQUERADE"]);
        ensure_chain("nat", "TARTARUS-NAT", &[masq]).await?;
        ensure_rule("nat", "POSTROUTING", &["-j", "TARTARUS-NAT"], true).await?;
        info!(bridge = %br, address = %cidr, "Styx: bridge and chains ready");
        Ok(Self { cfg, gateway })
    }

    /// The bridge's name and address.
    pub fn describe(&self) -> String {
        format!("bridge {} {}/{}", self.cfg.bridge, self.gateway, self.cfg.subnet.prefix)
    }

    fn lease_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("leases")
    }

    /// Takes a free address for `id` (an exclusive lease file).
    fn lease(&self, id: &SandboxId) -> Result<Ipv4Addr, StyxError> {
        let dir = self.lease_dir();
        let first = u32::from(self.gateway) + 1;
        let size = 1u32 << (32 - u32::from(self.cfg.subnet.prefix));
        let last = u32::from(self.cfg.subnet.addr) + size - 2;
        // Start after the highest address in use, so a just-released one is not reused at once.
        let taken: Vec<u32> = self.all_leases().into_iter().map(|(ip, _, _)| u32::from(ip)).collect();
        let start = taken.iter().max().map_or(first, |m| if *m >= last { first } else { m + 1 });
        for n in (start..=last).chain(first..start) {
            let ip = Ipv4Addr::from(n);
            let path = dir.join(ip.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    std::io::Write::write_all(&mut f, format!("{id} {}", self.cfg.owner).as_bytes())
                        .map_err(|e| StyxError::Io(format!("writing {}: {e}", path.display())))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StyxError::Io(format!("creating {}: {e}", path.display()))),
            }
        }
        Err(StyxError::Exhausted(self.cfg.subnet))
    }

    /// Every lease on the bridge: address, sandbox, holder.
    fn all_leases(&self) -> Vec<(Ipv4Addr, SandboxId, String)> {
        let Ok(entries) = std::fs::read_dir(self.lease_dir()) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let text = std::fs::read_to_string(e.path()).ok()?;
                let (id, owner) = text.trim().split_once(' ')?;
                Some((ip, SandboxId::parse(id).ok()?, owner.to_owned()))
            })
            .collect()
    }

    /// This agent's leases: address → sandbox.
    pub fn leases(&self) -> Vec<(Ipv4Addr, SandboxId)> {
        self.all_leases().into_iter().filter(|(_, _, o)| *o == self.cfg.owner).map(|(ip, id, _)| (ip, id)).collect()
    }

    /// The rules a contract turns into, each as iptables arguments, with `hosts` resolved now.
    async fn rules_of(contract: &NetworkContract) -> Result<Vec<EgressRule>, StyxError> {
        let mut rules = contract.egress.clone();
        for h in &contract.hosts {
            let addrs = tokio::net::lookup_host((h.name.as_str(), h.port.unwrap_or(0)))
                .await
                .map_err(|e| StyxError::Resolve(format!("host {}: {e}", h.name)))?;
            let v4: HashSet<Ipv4Addr> = addrs
                .filter_map(|a| match a.ip() {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    _ => None,
                })
                .collect();
            if v4.is_empty() {
                return Err(StyxError::Resolve(format!("host {} has no IPv4 address", h.name)));
            }
            let mut v4: Vec<Ipv4Addr> = v4.into_iter().collect();
            v4.sort();
            for ip in v4 {
                let (ports, protocol) = match h.port {
                    Some(p) => (vec![p], Some(Protocol::Tcp)),
                    None => (Vec::new(), None),
                };
                rules.push(EgressRule { cidr: Cidr::host(ip), ports, protocol });
            }
        }
        Ok(rules)
    }

    /// Gives sandbox `id` its namespace, interface, address and rules.
    pub async fn attach(&self, id: &SandboxId, contract: &NetworkContract) -> Result<Attached, StyxError> {
        let rules = Self::rules_of(contract).await?;
        let address = self.lease(id)?;
        let n = names(id);
        let done = async {
            self.plumb_namespace(&n, address).await?;
            self.install_rules(&n, address, &rules, &contract.ingress).await
        }
        .await;
        match done {
            Ok(rules) => Ok(Attached { netns: PathBuf::from("/run/netns").join(n.netns), address, rules }),
            Err(e) => {
                self.detach(id).await;
                Err(e)
            }
        }
    }

    /// For a microVM: a TAP device as an isolated port of the bridge, an address for its guest
    /// (which configures it itself, with the bridge's address as its gateway), and the same
    /// rules as a sandbox namespace's — keyed by the leased source address, so a guest that
    /// uses another address reaches nothing.
    pub async fn attach_tap(&self, id: &SandboxId, contract: &NetworkContract) -> Result<AttachedTap, StyxError> {
        let rules = Self::rules_of(contract).await?;
        let address = self.lease(id)?;
        let n = names(id);
        let (tap, br) = (n.tap.as_str(), self.cfg.bridge.as_str());
        let done = async {
            let batch = format!(
                "tuntap add dev {tap} mode tap\nlink set dev {tap} master {br}\n\
                 link set dev {tap} type bridge_slave isolated on\nlink set dev {tap} up\n"
            );
            run_with_input("ip", &["-batch", "-"], &batch).await?;
            self.install_rules(&n, address, &rules, &contract.ingress).await
        }
        .await;
        match done {
            Ok(rules) => Ok(AttachedTap {
                tap: n.tap.clone(),
                address,
                gateway: self.gateway,
                prefix: self.cfg.subnet.prefix,
                rules,
            }),
            Err(e) => {
                self.detach(id).await;
                Err(e)
            }
        }
    }

    /// A namespace whose `eth0` is one end of a veth pair, the other an isolated bridge port.
    async fn plumb_namespace(&self, n: &Names, address: Ipv4Addr) -> Result<(), StyxError> {
        let (ns, veth) = (n.netns.as_str(), n.veth.as_str());
        let br = self.cfg.bridge.as_str();
        // Two tool runs, each a batch (a launch waits for them).
        let host = format!(
            "netns add {ns}\nlink add {veth} type veth peer name eth0 netns {ns}\n\
             link set dev {veth} master {br}\nlink set dev {veth} type bridge_slave isolated on\nlink set dev {veth} up\n"
        );
        run_with_input("ip", &["-batch", "-"], &host).await?;
        let inside = format!(
            "addr add {address}/{} dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {}\n",
            self.cfg.subnet.prefix, self.gateway
        );
        run_with_input("ip", &["-n", ns, "-batch", "-"], &inside).await
    }

    /// The sandbox's chains (what it may reach, what it exposes) and their jumps, in one
    /// `iptables-restore`; returns the rules in words.
    async fn install_rules(
        &self,
        n: &Names,
        address: Ipv4Addr,
        rules: &[EgressRule],
        exposed: &[u16],
    ) -> Result<Vec<String>, StyxError> {
        let chain = n.chain.as_str();
        let br = self.cfg.bridge.as_str();
        let mut said = Vec::new();
        let mut table = format!("*filter\n:{chain} - [0:0]\n");
        for r in rules {
            let dest = r.cidr.to_string();
            let ports = r.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            let protocols = r.protocols();
            if protocols.is_empty() {
                table.push_str(&format!("-A {chain} -d {dest} -j ACCEPT\n"));
                said.push(format!("allow {dest} (all ports)"));
            }
            for p in protocols {
                let dports = if ports.is_empty() { String::new() } else { format!(" -m multiport --dports {ports}") };
                table.push_str(&format!("-A {chain} -d {dest} -p {}{dports} -j ACCEPT\n", p.as_str()));
                let what = if ports.is_empty() { "all ports".to_owned() } else { format!("port {ports}") };
                said.push(format!("allow {dest} {} {what}", p.as_str()));
            }
        }
        said.push("deny everything else (the host, other sandboxes, 169.254.169.254 always)".into());
        table.push_str(&format!("-A TARTARUS-SBX -s {address}/32 -i {br} -j {chain}\n"));
        if !exposed.is_empty() {
            let ports = exposed.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            let x = n.exposed.as_str();
            table.push_str(&format!(":{x} - [0:0]\n-A {x} -p tcp -m multiport --dports {ports} -j ACCEPT\n"));
            table.push_str(&format!("-A TARTARUS-EXP -d {address}/32 -j {x}\n"));
            said.push(format!("expose tcp port {ports} through Olympus's proxy"));
        }
        table.push_str("COMMIT\n");
        run_with_input("iptables-restore", &["-w", "--noflush"], &table).await?;
        Ok(said)
    }

    /// Removes everything of sandbox `id`'s network (idempotent; what is already gone is skipped).
    pub async fn detach(&self, id: &SandboxId) {
        let n = names(id);
        let addresses: Vec<Ipv4Addr> =
            self.leases().into_iter().filter(|(_, owner)| owner == id).map(|(ip, _)| ip).collect();
        for ip in &addresses {
            let _ = ipt(&["-D", "TARTARUS-SBX", "-s", &ip.to_string(), "-i", &self.cfg.bridge, "-j", &n.chain]).await;
        }
        for ip in &addresses {
            let _ = ipt(&["-D", "TARTARUS-EXP", "-d", &ip.to_string(), "-j", &n.exposed]).await;
        }
        for chain in [&n.chain, &n.exposed] {
            let _ = ipt(&["-F", chain]).await;
            let _ = ipt(&["-X", chain]).await;
        }
        let _ = run("ip", &["netns", "del", &n.netns]).await;
        let _ = run("ip", &["link", "del", &n.veth]).await;
        let _ = run("ip", &["link", "del", &n.tap]).await;
        for ip in addresses {
            let _ = std::fs::remove_file(self.lease_dir().join(ip.to_string()));
        }
    }

    /// Removes the networks this agent holds for sandboxes not in `keep` (ended, or never
    /// started, while it was away): namespaces, interfaces, chains, jumps and leases. Other
    /// agents' sandboxes on the same bridge are left alone.
    pub async fn sweep(&self, keep: &HashSet<SandboxId>) {
        let gone: HashSet<SandboxId> =
            self.leases().into_iter().map(|(_, id)| id).filter(|id| !keep.contains(id)).collect();
        for id in &gone {
            info!(sandbox = %id, "Styx: removing the network of a sandbox that no longer runs here");
            self.detach(id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let id = SandboxId::parse("sb-0123456789abcdef").unwrap();
        let n = names(&id);
        assert_eq!(
            (n.netns.as_str(), n.veth.as_str(), n.chain.as_str()),
            ("tt-0123456789abcdef", "tt0123456789ab", "TT-0123456789abcdef")
        );
        assert!(n.veth.len() <= 15 && n.chain.len() <= 28);
    }
}
