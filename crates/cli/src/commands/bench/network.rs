//! `bench start --network egress`: a stand-in "internet" for networked sandboxes — a network
//! namespace of the bench's own, linked to the host, with a TCP sink that counts what it is sent.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes sent in the transfer measurement: 100 MiB.
pub const TRANSFER_BYTES: u64 = 100 * 1024 * 1024;

/// The sink's port.
pub const SINK_PORT: u16 = 9999;

/// One connection the sink received: bytes, and from accept to end of stream.
pub type Received = (u64, Duration);

/// The bench's namespace and its link, removed when dropped.
struct Plumbing {
    ns: String,
    veth: String,
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// The bench's namespace and sink; removed when dropped.
pub struct Sink {
    _plumbing: Plumbing,
    /// The sink's address (allowed to the networked sandboxes).
    pub address: Ipv4Addr,
    received: mpsc::Receiver<Received>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

impl Sink {
    /// Makes namespace `ttbench-<pid>` with 10.78.N.2 behind a veth from the host (10.78.N.1),
    /// and a sink listening there.
    pub fn start() -> anyhow::Result<Sink> {
        let pid = std::process::id();
        let net = (pid % 200) as u8;
        let (ns, veth) = (format!("ttbench-{pid}"), format!("ttb{}", pid % 100_000));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns])?;
        let plumbing = Plumbing { ns: ns.clone(), veth: veth.clone() };
        let address = Ipv4Addr::new(10, 78, net, 2);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        ip(&["addr", "add", &format!("10.78.{net}.1/24"), "dev", &veth])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("10.78.{net}.2/24"), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &format!("10.78.{net}.1")])?;
        let (tx, rx) = mpsc::channel();
        let (up_tx, up_rx) = mpsc::channel::<Result<(), String>>();
        let ns_path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let bound = std::fs::File::open(&ns_path)
                .map_err(|e| e.to_string())
                .and_then(|f| nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()))
                .and_then(|()| TcpListener::bind((address, SINK_PORT)).map_err(|e| e.to_string()));
            let listener = match bound {
                Ok(l) => {
                    let _ = up_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = up_tx.send(Err(e));
                    return;
                }
            };
            for mut conn in listener.incoming().flatten() {
                let started = Instant::now();
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0u64;
                while let Ok(k) = conn.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                let _ = tx.send((n, started.elapsed()));
            }
        });
        up_rx.recv_timeout(Duration::from_secs(5))?.map_err(anyhow::Error::msg)?;
        Ok(Sink { _plumbing: plumbing, address, received: rx })
    }

    /// What the sink received last, waiting up to `within` for it.
    pub fn last(&self, within: Duration) -> Option<Received> {
        let first = self.received.recv_timeout(within).ok()?;
        Some(self.received.try_iter().last().unwrap_or(first))
    }

    /// The shell line a sandbox runs to send [`TRANSFER_BYTES`] to the sink.
    pub fn transfer_script(&self) -> String {
        format!("head -c {TRANSFER_BYTES} /dev/zero | nc -w 10 {} {SINK_PORT}", self.address)
    }
}
