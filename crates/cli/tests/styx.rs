//! Styx end to end: real namespaces, veths, a bridge and iptables, with real connections from
//! inside gVisor sandboxes. "The internet" is a network namespace of the test's own with servers
//! on its addresses (and on the metadata address); "the host" is a server of the test on the
//! host side of that link. Nothing outside the machine is ever contacted.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{id_of, Realm, TEMPLATE};
use reqwest::StatusCode;
use serde_json::json;

/// The test's "internet": a namespace linked to the host by a veth pair, with TCP servers that
/// answer `hello-<port>` on every address of the namespace.
struct Internet {
    ns: String,
    host_veth: String,
    /// 10.77.N.0/24: .1 on the host, .2 and .3 in the namespace.
    net: u8,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Answers `hello-<port>` to every connection, forever, on a thread inside `ns` (or the host).
fn serve(ns: Option<String>, addr: Ipv4Addr, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        }
        let listener = TcpListener::bind((addr, port)).unwrap_or_else(|e| panic!("bind {addr}:{port}: {e}"));
        tx.send(()).unwrap();
        for conn in listener.incoming().flatten() {
            let mut c = conn;
            let _ = c.write_all(format!("hello-{port}\n").as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

impl Internet {
    fn start() -> Internet {
        let net = 100 + (std::process::id() % 100) as u8;
        let ns = format!("ttest-inet-{}", std::process::id());
        let host_veth = format!("tti{}", std::process::id() % 100000);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_veth]).output();
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        sh(&["ip", "addr", "add", &format!("10.77.{net}.1/24"), "dev", &host_veth]);
        sh(&["ip", "link", "set", &host_veth, "up"]);
        for a in [format!("10.77.{net}.2/24"), format!("10.77.{net}.3/24"), "169.254.169.254/32".into()] {
            sh(&["ip", "-n", &ns, "addr", "add", &a, "dev", "eth0"]);
        }
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("10.77.{net}.1")]);
        // Without Styx's rules the metadata address would be reachable: it lives in "the internet".
        let _ = Command::new("ip").args(["route", "del", "169.254.169.254/32"]).output();
        sh(&["ip", "route", "add", "169.254.169.254/32", "via", &format!("10.77.{net}.2")]);
        let internet = Internet { ns, host_veth, net };
        for ip in [internet.ip(2), internet.ip(3), Ipv4Addr::new(169, 254, 169, 254)] {
            for port in [8080, 9090] {
                serve(Some(internet.ns.clone()), ip, port);
            }
        }
        // "The host": a service on the host's own address.
        serve(None, internet.ip(1), 7777);
        internet
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.net, last)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["route", "del", "169.254.169.254/32"]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// The tests share the host's bridge and chains, and check all of it for leftovers: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A shell line that tries each `addr:port` and prints `addr:port <answer or blocked>`.
fn probe(targets: &[String]) -> String {
    let list = targets.join(" ");
    format!("for t in {list}; do r=$(nc -w 2 ${{t%:*}} ${{t#*:}} </dev/null 2>/dev/null); echo \"$t ${{r:-blocked}}\"; done")
}

async fn run_probe(realm: &Realm, network: serde_json::Value, targets: &[String]) -> (serde_json::Value, String) {
    let soul = json!({"template": TEMPLATE, "command": ["sh", "-c", probe(targets)], "network": network});
    let rec = realm.run(soul).await;
    let out = realm.logs(&id_of(&rec)).await;
    (rec, out.stdout)
}

/// What Styx left on the host of this realm's sandboxes: namespaces, veths, chains and leases
/// (other realms on the machine, a quickstart's say, are not this test's business).
async fn leftovers(realm: &Realm) -> Vec<String> {
    let (_, listed) = realm.get("/v1/sandboxes?limit=100000").await;
    let hexes: Vec<String> = listed["sandboxes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(|id| id.trim_start_matches("sb-").to_owned()))
        .collect();
    let ours = |s: &str| hexes.iter().any(|h| s.contains(h.as_str()) || s.contains(&h[..12]));
    let text = |args: &[&str]| {
        String::from_utf8_lossy(&Command::new(args[0]).args(&args[1..]).output().unwrap().stdout).into_owned()
    };
    let mut left: Vec<String> = Vec::new();
    left.extend(
        text(&["ip", "netns", "list"])
            .lines()
            .filter(|l| l.starts_with("tt-") && ours(l))
            .map(|l| format!("netns {l}")),
    );
    left.extend(
        text(&["ip", "-o", "link", "show", "master", "tartarus0"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .filter(|n| ours(n))
            .map(|n| format!("veth {}", n.trim())),
    );
    left.extend(
        text(&["iptables", "-w", "-S"])
            .lines()
            .filter(|l| (l.contains("TT-") || l.contains("TX-")) && ours(l))
            .map(|l| format!("rule {l}")),
    );
    let owner = realm.data_dir.display().to_string();
    if let Ok(entries) = std::fs::read_dir("/run/tartarus/styx/tartarus0/leases") {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.trim().ends_with(&format!(" {owner}")) {
                left.push(format!("lease {} {text}", e.file_name().to_string_lossy()));
            }
        }
    }
    left
}

async fn until_clean(realm: &Realm) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = leftovers(realm).await;
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {left:?}\n{}", realm.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sandboxes_reach_what_their_contract_allows_and_nothing_else() {
    if !common::require_prereqs() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let realm = Realm::start().await;
    let inet = Internet::start();
    let (a2, a3, host) = (inet.ip(2), inet.ip(3), inet.ip(1));

    // `none`: no interface, nothing reachable.
    let targets = vec![format!("{a2}:8080")];
    let (rec, out) = run_probe(&realm, json!("none"), &targets).await;
    assert_eq!(out, format!("{a2}:8080 blocked\n"), "{rec}");
    assert!(rec["network"].is_null(), "{rec}");

    // An allowlist: that address and port only.
    let targets = vec![format!("{a2}:8080"), format!("{a2}:9090"), format!("{a3}:8080")];
    let contract = json!({"egress": [{"cidr": format!("{a2}/32"), "ports": [8080], "protocol": "tcp"}]});
    let (rec, out) = run_probe(&realm, contract, &targets).await;
    assert_eq!(out, format!("{a2}:8080 hello-8080\n{a2}:9090 blocked\n{a3}:8080 blocked\n"), "{rec}");
    let address = rec["network"]["address"].as_str().unwrap_or_else(|| panic!("no address recorded: {rec}")).to_owned();
    assert!(address.starts_with("172.16."), "{rec}");
    assert!(rec["network"]["rules"].as_array().is_some_and(|r| r.len() >= 2), "{rec}");

    // Another sandbox, serving HTTP on an exposed port (and on one it does not expose).
    let serve = "mkdir -p /tmp/www && echo from-b > /tmp/www/index.html && httpd -p 9000 -h /tmp/www && exec httpd -f -p 8080 -h /tmp/www";
    let server = json!({"template": TEMPLATE, "command": ["sh", "-c", serve],
                        "network": {"egress": [{"cidr": "0.0.0.0/0"}], "ingress": [8080]}});
    let b = realm.create(server).await;
    let b = realm.wait_running(&id_of(&b), Duration::from_secs(60)).await;
    let b_id = id_of(&b);
    let b_ip: Ipv4Addr = b["network"]["address"].as_str().expect("b's address").parse().unwrap();
    // `tartarus inspect` shows its address and the rules in force.
    let out = realm.cli(&["inspect", &b_id]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.lines().any(|l| l.starts_with("address") && l.ends_with(&format!(" {b_ip}"))), "{out}");
    assert!(out.stdout.contains("expose tcp port 8080"), "{out}");
    // Through Olympus's proxy (Charon), the exposed port answers.
    let mut answer = json!(null);
    for _ in 0..50 {
        let (status, body) = realm.get(&format!("/v1/sandboxes/{b_id}/ports/8080/index.html")).await;
        if status == StatusCode::OK {
            answer = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, json!("from-b\n"), "the exposed port did not answer through the proxy");
    let (status, body) = realm.get(&format!("/v1/sandboxes/{b_id}/ports/9000/index.html")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("port_not_exposed")), "{body}");
    // From the host, only the exposed port opens: the other is dropped.
    assert!(
        TcpStream::connect_timeout(&(b_ip, 8080).into(), Duration::from_secs(2)).is_ok(),
        "exposed port from the host"
    );
    assert!(
        TcpStream::connect_timeout(&(b_ip, 9000).into(), Duration::from_secs(1)).is_err(),
        "unexposed port reachable from the host"
    );
    // Exposed but nothing listening: the realm says so.
    let quiet = json!({"template": TEMPLATE, "command": ["sleep", "30"], "network": {"ingress": [8081]}});
    let quiet = id_of(&realm.wait_running(&id_of(&realm.create(quiet).await), Duration::from_secs(60)).await);
    let (status, body) = realm.get(&format!("/v1/sandboxes/{quiet}/ports/8081/")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_GATEWAY, Some("bad_gateway")), "{body}");
    let _ = realm.delete(&format!("/v1/sandboxes/{quiet}")).await;

    // 0.0.0.0/0 still does not reach the metadata address, the host or another sandbox.
    let targets =
        vec![format!("{a3}:9090"), "169.254.169.254:8080".into(), format!("{host}:7777"), format!("{b_ip}:8080")];
    let (rec, out) = run_probe(&realm, json!({"egress": [{"cidr": "0.0.0.0/0"}]}), &targets).await;
    assert_eq!(
        out,
        format!("{a3}:9090 hello-9090\n169.254.169.254:8080 blocked\n{host}:7777 blocked\n{b_ip}:8080 blocked\n"),
        "{rec}"
    );
    let (status, body) = realm.delete(&format!("/v1/sandboxes/{b_id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until_clean(&realm).await;

    // The CLI takes the same contract.
    let out = realm
        .cli(&[
            "run",
            "--template",
            TEMPLATE,
            "--allow-egress",
            &format!("{a2}:9090"),
            "--",
            "sh",
            "-c",
            &probe(&[format!("{a2}:9090"), format!("{a2}:8080")]),
        ])
        .await;
    assert_eq!((out.code, out.stdout.clone()), (0, format!("{a2}:9090 hello-9090\n{a2}:8080 blocked\n")), "{out}");

    // Host names are resolved by the node at launch into rules for their addresses.
    let named =
        realm.run(json!({"template": TEMPLATE, "command": ["true"], "network": {"hosts": ["localhost:9"]}})).await;
    let rules = named["network"]["rules"].as_array().cloned().unwrap_or_default();
    assert!(rules.contains(&json!("allow 127.0.0.1/32 tcp port 9")), "{named}");

    // Bad contracts: 4xx, nothing created.
    for bad in [
        json!({"egress": [{"cidr": "10.0.0.1/8"}]}),
        json!({"egress": [{"cidr": "10.0.0.0/8", "ports": [0]}]}),
        json!({"egress": [{"cidr": "10.0.0.0/33"}]}),
        json!({"hosts": ["not a host"]}),
        json!("open"),
    ] {
        let (status, body) =
            realm.post("/v1/sandboxes", json!({"template": TEMPLATE, "command": ["true"], "network": bad})).await;
        assert!(status.is_client_error(), "{bad}: {status} {body}");
    }
    let out = realm.cli(&["run", "--template", TEMPLATE, "--allow-egress", "1.2.3.4:70000", "--", "true"]).await;
    assert_ne!(out.code, 0, "{out}");
    until_clean(&realm).await;
}

#[tokio::test]
async fn thirty_networked_sandboxes_and_a_killed_agent_leave_nothing_behind() {
    if !common::require_prereqs() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut realm = Realm::start().await;
    let net = json!({"egress": [{"cidr": "10.0.0.0/8", "ports": [443]}]});
    let mut ids = Vec::new();
    for i in 0..30 {
        let cmd = if i % 3 == 0 { "sleep 30" } else { "true" };
        ids.push(id_of(
            &realm.create(json!({"template": TEMPLATE, "command": ["sh", "-c", cmd], "network": net})).await,
        ));
        if i == 14 {
            // The agent dies mid-way; its successor sweeps what ended meanwhile.
            realm.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            realm.start_again().await;
        }
    }
    for id in &ids {
        let r = realm
            .wait_for(id, "running or ended", Duration::from_secs(120), |r| {
                r["state"] == "running"
                    || r["state"].as_str().is_some_and(|s| ["exited", "killed", "failed", "lost"].contains(&s))
            })
            .await;
        assert_ne!(r["state"], "failed", "{r}");
    }
    // Addresses are never shared by two live sandboxes.
    let mut seen = std::collections::HashSet::new();
    for id in &ids {
        let r = realm.record(id).await;
        if r["state"] == "running" {
            let a = r["network"]["address"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
            assert!(seen.insert(a.clone()), "{a} given twice");
        }
    }
    for id in &ids {
        let _ = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    }
    for id in &ids {
        realm.wait_ended(id, Duration::from_secs(60)).await;
    }
    until_clean(&realm).await;
    // Killed with sandboxes running: the next start removes the networks of those that ended.
    let id = id_of(&realm.create(json!({"template": TEMPLATE, "command": ["sleep", "2"], "network": net})).await);
    realm.wait_running(&id, Duration::from_secs(60)).await;
    realm.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    realm.start_again().await;
    realm.wait_ended(&id, Duration::from_secs(60)).await;
    until_clean(&realm).await;
}

#[tokio::test]
async fn contracts_wider_than_the_realm_allows_are_refused() {
    if !common::require_prereqs() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let realm = Realm::start_with(&["--egress-within", "10.0.0.0/8"], &[]).await;
    for wide in [json!({"egress": [{"cidr": "0.0.0.0/0"}]}), json!({"hosts": ["example.org"]})] {
        let (status, body) =
            realm.post("/v1/sandboxes", json!({"template": TEMPLATE, "command": ["true"], "network": wide})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{wide}: {body}");
        assert!(body["message"].as_str().unwrap_or_default().contains("10.0.0.0/8"), "{body}");
    }
    let (status, body) = realm.get("/v1/sandboxes?limit=10").await;
    assert_eq!(
        (status, body["sandboxes"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "nothing created: {body}"
    );
    let ok = realm
        .run(json!({"template": TEMPLATE, "command": ["true"], "network": {"egress": [{"cidr": "10.1.0.0/16"}]}}))
        .await;
    assert_eq!(ok["state"], "exited", "{ok}");
    until_clean(&realm).await;
}
