//! A realm of many nodes on a real Redis: placement by labels, capacity and load; agents and
//! Olympus killed mid-stream; a node whose heartbeat stops; Redis restarted or emptied; two
//! Olympus processes sharing the queue. Every sandbox is a real gVisor sandbox.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::fleet::{freeze, require_redis, AgentSpec, Fleet};
use common::{id_of, is_terminal, pids_matching, require_prereqs, Api, TEMPLATE};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn ready() -> bool {
    require_prereqs() && require_redis()
}

fn spec(name: &'static str, labels: &'static str, memory_mib: u64, slots: u32) -> AgentSpec {
    AgentSpec { name, labels, memory_mib, slots }
}

/// A sandbox that runs until killed.
fn sleeper(memory_mib: u64, selector: Value) -> Value {
    json!({"template": TEMPLATE, "command": ["sleep", "600"], "resources": {"memory_mib": memory_mib},
           "node_selector": selector})
}

/// Waits until every sandbox in `ids` is running or ended; returns their records.
async fn settle(api: &Api, ids: &[String], timeout: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(api.wait_for(id, "running or ended", timeout, |r| r["state"] == "running" || is_terminal(r)).await);
    }
    out
}

/// How many times each sandbox was started, from the agents' logs ("sandbox running" lines).
fn starts(fleet: &Fleet, ids: &[String]) -> HashMap<String, usize> {
    let logs: String = fleet.agents.iter().map(|a| a.daemon.log()).collect();
    ids.iter()
        .map(|id| {
            (id.clone(), logs.lines().filter(|l| l.contains(id.as_str()) && l.contains("sandbox running")).count())
        })
        .collect()
}

/// Shim processes per sandbox id on this machine.
fn shims(ids: &[String]) -> HashMap<String, usize> {
    ids.iter()
        .map(|id| (id.clone(), pids_matching(|c| c.contains(" shim ") && c.contains(id.as_str())).len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_follows_labels_capacity_and_load() {
    if !ready() {
        return;
    }
    let fleet = Fleet::start(&[
        spec("a1", "zone=a", 8192, 25),
        spec("a2", "zone=b", 8192, 25),
        spec("a3", "zone=b,disk=small", 4000, 25),
    ])
    .await;

    // Labels: zone=a has one node.
    let rec = fleet.create(sleeper(128, json!({"zone": "a"}))).await;
    let rec = fleet.wait_running(&id_of(&rec), Duration::from_secs(60)).await;
    assert_eq!(rec["node"], "a1", "{rec}");
    // exec reaches it through Olympus, which proxies to the agent.
    let (status, out) = fleet
        .post(
            &format!("/v1/sandboxes/{}/exec?stream=false", id_of(&rec)),
            json!({"command": ["sh", "-c", "echo via-olympus; echo err >&2; exit 3"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!((out["stdout"].as_str(), out["stderr"].as_str()), (Some("via-olympus\n"), Some("err\n")), "{out}");
    assert_eq!(out["exit"]["exit_code"], 3, "{out}");
    // The CLI takes node selectors too.
    let run = fleet.cli(&["run", "--template", TEMPLATE, "--node-selector", "disk=small", "--", "echo", "small"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "small\n"), "{run}");
    // Capacity: zone=b with 6000 MiB fits a2 (8192) but not a3 (4000).
    let big = fleet.create(sleeper(6000, json!({"zone": "b"}))).await;
    let big = fleet.wait_running(&id_of(&big), Duration::from_secs(60)).await;
    assert_eq!(big["node"], "a2", "{big}");
    // Nothing fits: the request waits and says why.
    let huge = id_of(&fleet.create(sleeper(16000, json!({}))).await);
    let pending = fleet
        .wait_for(&huge, "pending with a reason", Duration::from_secs(20), |r| r["pending_reason"].is_string())
        .await;
    assert_eq!(pending["state"], "queued", "{pending}");
    assert_eq!(pending["pending_reason"], "no node with 16000 MiB free; 3 nodes checked", "{pending}");
    let unknown = id_of(&fleet.create(sleeper(64, json!({"zone": "c"}))).await);
    let pending = fleet
        .wait_for(&unknown, "pending with a reason", Duration::from_secs(20), |r| r["pending_reason"].is_string())
        .await;
    assert_eq!(pending["pending_reason"], "no node with labels zone=c; 3 nodes checked", "{pending}");
    for id in [id_of(&rec), id_of(&big), huge, unknown] {
        let (status, body) = fleet.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK, "DELETE {id}: {body}");
        assert!(is_terminal(&body), "{body}");
    }

    // Load: once the nodes report the kills, 60 sandboxes over three nodes of 25 slots each
    // spread evenly (least-loaded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.nodes().await.iter().any(|n| n["used"]["slots"] != 0) {
        assert!(Instant::now() < deadline, "nodes still report sandboxes: {:?}", fleet.nodes().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(id_of(&fleet.create(sleeper(128, json!({}))).await));
    }
    let recs = settle(&fleet, &ids, Duration::from_secs(240)).await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for r in &recs {
        assert_eq!(r["state"], "running", "{r}");
        *per_node.entry(r["node"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    let counts: Vec<usize> = per_node.values().copied().collect();
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 3, "uneven spread: {per_node:?}");
    // Hades sees the load the agents report, once each has heartbeated after its last launch.
    let deadline = Instant::now() + Duration::from_secs(15);
    let nodes = loop {
        let nodes = fleet.nodes().await;
        let used: u64 = nodes.iter().map(|n| n["used"]["slots"].as_u64().unwrap_or(0)).sum();
        if used == 60 {
            break nodes;
        }
        assert!(Instant::now() < deadline, "nodes report {used} sandboxes, not 60: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // `tartarus node ls` and `ps` show the same.
    let out = fleet.cli(&["node", "ls", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let listed: Value = serde_json::from_str(&out.stdout).expect("node ls json");
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    let out = fleet.cli(&["ps", "--state", "running", "--output", "json", "--all"]).await;
    assert_eq!(out.code, 0, "{out}");
    let ps: Value = serde_json::from_str(&out.stdout).expect("ps json");
    let ps = ps.as_array().expect("ps lists records");
    assert_eq!(ps.len(), 60, "{ps:?}");
    for r in ps {
        let id = id_of(r);
        let node = r["node"].as_str().unwrap_or_else(|| panic!("no node in ps for {id}: {r}"));
        let held = nodes.iter().find(|n| n["name"] == node).map(|n| n["holds"].clone()).unwrap_or_default();
        assert!(held.as_array().is_some_and(|h| h.contains(&json!(id))), "{id} not held by its node {node}: {nodes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_killed_mid_launch_leaves_no_sandbox_lost_silently_or_twice() {
    if !ready() {
        return;
    }
    let mut fleet = Fleet::start(&[spec("a1", "", 8192, 50)]).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(id_of(&fleet.create(sleeper(128, json!({}))).await));
    }
    // Some run, some are still starting.
    fleet.wait_running(&ids[0], Duration::from_secs(60)).await;
    fleet.agent("a1").daemon.kill();
    let mut unstarted = 0;
    for id in &ids {
        let state = fleet.record(id).await["state"].clone();
        unstarted += usize::from(state == "queued" || state == "starting");
    }
    assert!(unstarted > 0, "every sandbox was already running when the agent was killed: nothing tested");
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.agent("a1").daemon.start().await;
    let recs = settle(&fleet, &ids, Duration::from_secs(120)).await;
    // Give a restarted agent's sweep a moment to end what is no longer its own.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = shims(&ids);
    for r in &recs {
        let id = id_of(r);
        match r["state"].as_str() {
            Some("running") => assert_eq!(running[&id], 1, "{id} running with {} shims: {r}", running[&id]),
            Some("lost" | "failed") => {
                assert!(r["error"].is_string(), "{r}");
                assert_eq!(running[&id], 0, "{id} recorded {} but still has a shim", r["state"]);
            }
            _ => panic!("unexpected outcome after the agent's restart: {r}"),
        }
    }
    let started = starts(&fleet, &ids);
    assert!(started.values().all(|&n| n <= 1), "a sandbox started twice: {started:?}");
    // Reconciliation agrees with what it sees, and changes nothing more.
    let (status, report) = fleet.post("/v1/admin/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["lost"], json!([]), "{report}");
    assert_eq!(report["orphans_killed"], json!([]), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn olympus_killed_mid_stream_launches_every_queued_request_once() {
    if !ready() {
        return;
    }
    let mut fleet = Fleet::start(&[spec("a1", "", 8192, 50), spec("a2", "", 8192, 50)]).await;
    // Three long-running sandboxes, then twenty quick jobs, and Olympus dies at once.
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        let id = id_of(&fleet.create(sleeper(64, json!({}))).await);
        fleet.wait_running(&id, Duration::from_secs(60)).await;
        sleepers.push(id);
    }
    let mut ids = Vec::new();
    for i in 0..20 {
        let soul = json!({"template": TEMPLATE, "command": ["sh", "-c", format!("echo job {i}")]});
        ids.push(id_of(&fleet.create(soul).await));
    }
    let (_, list) = fleet.get("/v1/sandboxes?limit=1000").await;
    fleet.olympus[0].kill();
    let unfinished =
        list["sandboxes"].as_array().unwrap().iter().filter(|r| ids.contains(&id_of(r)) && !is_terminal(r)).count();
    assert!(unfinished > 0, "every job had ended before Olympus was killed: nothing tested");
    let url = fleet.olympus[0].start().await;
    fleet.api.url = url;
    for (i, id) in ids.iter().enumerate() {
        let r = fleet.wait_ended(id, Duration::from_secs(120)).await;
        assert_eq!((r["state"].as_str(), r["exit_code"].as_i64()), (Some("exited"), Some(0)), "{r}");
        assert_eq!(r["attempts"], 1, "placed more than once: {r}");
        // Its output, kept on its node, comes back through Olympus.
        let out = fleet.logs(id).await;
        assert_eq!(out.stdout, format!("job {i}\n"), "{r}");
        assert_eq!(out.exit.as_ref().map(|e| e["state"].clone()), Some(json!("exited")));
    }
    let started = starts(&fleet, &ids);
    assert!(started.values().all(|&n| n == 1), "not launched exactly once: {started:?}");
    // The restarted Olympus's view agrees with what the agents run: the three sleepers, confirmed
    // by their nodes; nothing lost, nothing requeued — however often it is asked.
    for _ in 0..2 {
        let (status, report) = fleet.post("/v1/admin/reconcile", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["nodes_asked"].as_array().map(Vec::len), Some(2), "{report}");
        assert_eq!(report["confirmed"], 3, "{report}");
        assert_eq!((&report["lost"], &report["requeued"]), (&json!([]), &json!([])), "{report}");
    }
    let out = fleet.cli(&["ps", "--state", "running", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let ps: Value = serde_json::from_str(&out.stdout).expect("ps json");
    let mut running: Vec<String> = ps.as_array().expect("ps lists records").iter().map(id_of).collect();
    running.sort();
    sleepers.sort();
    assert_eq!(running, sleepers, "{ps}");
    let (_, list) = fleet.get("/v1/sandboxes?limit=1000").await;
    let listed: Vec<String> = list["sandboxes"].as_array().unwrap().iter().map(id_of).collect();
    assert!(ids.iter().all(|id| listed.contains(id)), "the list lost sandboxes: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refusing_launches_sends_the_sandbox_to_cocytus_after_max_attempts() {
    if !ready() {
        return;
    }
    let mut fleet = Fleet::start_with(&[spec("a1", "good=yes", 8192, 50)], &["--max-attempts", "2"]).await;
    // An agent given another secret than the realm's: it heartbeats through Redis, so Hades
    // counts it alive, but it refuses every call from Olympus (and Olympus refuses its hello).
    let wrong = fleet.dir().join("wrong.secret");
    std::fs::write(&wrong, "ta_not_the_realms_secret").expect("write secret");
    fleet.add_agent_with_secret(&spec("bad", "", 8192, 50), &wrong).await;
    fleet.wait_alive(vec!["bad"]).await;
    let out = fleet.cli(&["node", "drain", "a1"]).await;
    assert_eq!(out.code, 0, "{out}");
    let id = id_of(&fleet.create(sleeper(64, json!({}))).await);
    let r = fleet.wait_ended(&id, Duration::from_secs(60)).await;
    assert_eq!((r["state"].as_str(), r["attempts"].as_u64()), (Some("failed"), Some(2)), "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("gave up after 2 placements"), "{r}");
    assert!(error.contains("refused the realm's agent secret"), "{r}");
    // Cocytus: the first attempt as a retry, the last as the failure, both naming the node.
    let out = fleet.cli(&["failures", "--sandbox", &id, "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let failures: Value = serde_json::from_str(&out.stdout).expect("failures json");
    let mut kinds: Vec<(String, String)> = failures
        .as_array()
        .expect("a list")
        .iter()
        .map(|f| (f["kind"].as_str().unwrap_or("?").to_owned(), f["node"].as_str().unwrap_or("?").to_owned()))
        .collect();
    kinds.sort();
    assert_eq!(kinds, [("failed".into(), "bad".into()), ("retry".into(), "bad".into())], "{failures}");
    let agent_log = fleet.agent("bad").daemon.log();
    assert!(agent_log.contains("Olympus refused the agent secret"), "{agent_log}");
    // The well-configured node takes work again once undrained.
    let out = fleet.cli(&["node", "undrain", "a1"]).await;
    assert_eq!(out.code, 0, "{out}");
    let ok = id_of(&fleet.create(sleeper(64, json!({"good": "yes"}))).await);
    assert_eq!(fleet.wait_running(&ok, Duration::from_secs(60)).await["node"], "a1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_node_is_declared_dead_its_work_moved_or_lost() {
    if !ready() {
        return;
    }
    let mut fleet =
        Fleet::start_with(&[spec("a1", "", 8192, 50), spec("a2", "", 8192, 50)], &["--dead-after", "3s"]).await;
    // Two sandboxes run on a1 (a2 drained meanwhile).
    let (status, body) = fleet.post("/v1/nodes/a2/drain", json!({})).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("draining")), "{body}");
    let mut running = Vec::new();
    for _ in 0..2 {
        let id = id_of(&fleet.create(sleeper(128, json!({}))).await);
        assert_eq!(fleet.wait_running(&id, Duration::from_secs(60)).await["node"], "a1");
        running.push(id);
    }
    // a1 freezes: no heartbeats, no answers. Two more are placed on it before it is declared dead.
    freeze(&fleet.agent("a1").daemon, true);
    let frozen_at = Instant::now();
    let mut pending = Vec::new();
    for _ in 0..2 {
        let id = id_of(&fleet.create(sleeper(128, json!({}))).await);
        fleet.wait_for(&id, "placed on a1", Duration::from_secs(10), |r| r["state"] == "starting").await;
        pending.push(id);
    }
    let (status, _) = fleet.post("/v1/nodes/a2/undrain", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Declared dead within its dead_after (3 s) and the watch's period.
    loop {
        let nodes = fleet.nodes().await;
        if nodes.iter().any(|n| n["name"] == "a1" && n["state"] == "dead") {
            break;
        }
        assert!(frozen_at.elapsed() < Duration::from_secs(8), "a1 not dead 8 s after freezing: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &running {
        let r = fleet.wait_ended(id, Duration::from_secs(10)).await;
        assert_eq!(r["state"], "lost", "{r}");
        assert!(r["error"].as_str().unwrap_or_default().contains("a1"), "{r}");
    }
    for id in &pending {
        let r = fleet.wait_running(id, Duration::from_secs(60)).await;
        assert_eq!(r["node"], "a2", "{r}");
        assert_eq!(r["attempts"], 2, "{r}");
    }
    // Cocytus has the losses and the retries.
    let (_, failures) = fleet.get("/v1/failures?node=a1").await;
    let kinds: Vec<(String, String)> = failures["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["sandbox"].as_str().unwrap().to_string(), f["kind"].as_str().unwrap().to_string()))
        .collect();
    for id in &running {
        assert!(kinds.contains(&(id.clone(), "lost".into())), "{failures}");
    }
    for id in &pending {
        assert!(kinds.contains(&(id.clone(), "retry".into())), "{failures}");
    }
    let out = fleet.cli(&["failures", "--node", "a1", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out}");
    // a1 wakes: what it still runs is no longer its own, so it ends it; nothing runs twice.
    freeze(&fleet.agent("a1").daemon, false);
    let all: Vec<String> = running.iter().chain(&pending).cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts = shims(&all);
        let lost_gone = running.iter().all(|id| counts[id] == 0);
        let moved_once = pending.iter().all(|id| counts[id] == 1);
        if lost_gone && moved_once {
            break;
        }
        assert!(Instant::now() < deadline, "after a1 woke: shims {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends one command to Redis over RESP and returns its reply line.
fn redis_cmd(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect redis");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `POST /v1/sandboxes?wait=true` until it succeeds (a realm reconnecting to Redis may refuse
/// a few); panics after `timeout`.
async fn run_eventually(api: &Api, soul: Value, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let req = api.request(reqwest::Method::POST, "/v1/sandboxes?wait=true").json(&soul);
        let (status, body) = api.send(req).await;
        if status == StatusCode::CREATED {
            return body;
        }
        assert!(Instant::now() < deadline, "no sandbox ran within {timeout:?}; last answer {status}: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_realm_recovers_from_redis_restarts_and_lost_queues() {
    if !ready() {
        return;
    }
    let mut fleet = Fleet::start_with(&[spec("a1", "", 8192, 50)], &["--reconcile-every", "2s"]).await;
    let before =
        run_eventually(&fleet, json!({"template": TEMPLATE, "command": ["echo", "before"]}), Duration::from_secs(60))
            .await;
    assert_eq!(before["state"], "exited", "{before}");

    // Redis killed and started again (AOF, fsynced every second): records survive, the realm
    // carries on unaided.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet.redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.redis.start_again();
    let after =
        run_eventually(&fleet, json!({"template": TEMPLATE, "command": ["echo", "after"]}), Duration::from_secs(60))
            .await;
    assert_eq!((after["state"].as_str(), after["exit_code"].as_i64()), (Some("exited"), Some(0)), "{after}");
    assert_eq!(fleet.record(&id_of(&before)).await["state"], "exited");
    fleet.wait_alive(vec!["a1"]).await;

    // The stream and its group vanish (a Redis that lost them): recreated, admissions go on.
    assert!(redis_cmd(fleet.redis.port, &["DEL", "tartarus:acheron"]).starts_with(":1"));
    let again =
        run_eventually(&fleet, json!({"template": TEMPLATE, "command": ["echo", "again"]}), Duration::from_secs(60))
            .await;
    assert_eq!(again["state"], "exited", "{again}");

    // A queued request whose entry is lost while no Olympus runs: reconciliation queues it again.
    let (status, _) = fleet.post("/v1/nodes/a1/drain", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let orphan = id_of(&fleet.create(json!({"template": TEMPLATE, "command": ["echo", "orphan"]})).await);
    fleet.wait_for(&orphan, "pending", Duration::from_secs(10), |r| r["pending_reason"].is_string()).await;
    fleet.olympus[0].kill();
    assert!(redis_cmd(fleet.redis.port, &["DEL", "tartarus:acheron"]).starts_with(":1"));
    // Restarted at once, while the record is younger than the admission grace (it might still be
    // in transit to Acheron): the start-up pass leaves it, a periodic one queues it again.
    let url = fleet.olympus[0].start().await;
    fleet.api.url = url;
    let (status, _) = fleet.post("/v1/nodes/a1/undrain", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let r = fleet.wait_ended(&orphan, Duration::from_secs(60)).await;
    assert_eq!((r["state"].as_str(), r["exit_code"].as_i64()), (Some("exited"), Some(0)), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_olympus_share_the_queue_and_launch_each_sandbox_once() {
    if !ready() {
        return;
    }
    let mut fleet =
        Fleet::start(&[spec("a1", "", 16384, 200), spec("a2", "", 16384, 200), spec("a3", "", 16384, 200)]).await;
    let o2 = fleet.add_olympus("o2").await;
    let creates = (0..200).map(|i| {
        let api: &Api = if i % 2 == 0 { &fleet.api } else { &o2 };
        let soul = json!({"template": TEMPLATE, "command": ["true"], "resources": {"memory_mib": 64}});
        async move {
            let (status, body) = api.post("/v1/sandboxes", soul).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            id_of(&body)
        }
    });
    let ids: Vec<String> = futures::future::join_all(creates).await;
    for id in &ids {
        let r = fleet.wait_ended(id, Duration::from_secs(300)).await;
        assert_eq!((r["state"].as_str(), r["exit_code"].as_i64()), (Some("exited"), Some(0)), "{r}");
    }
    let started = starts(&fleet, &ids);
    let twice: Vec<_> = started.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "not launched exactly once: {twice:?}");
    // Both Olympus processes placed some.
    for api in [&fleet.api, &o2] {
        let metrics = api.send(api.request(reqwest::Method::GET, "/metrics")).await.1;
        let text = metrics.as_str().unwrap_or_default().to_string();
        let placed = text
            .lines()
            .find_map(|l| l.strip_prefix("tartarus_moirai_placements_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(placed > 0.0, "an Olympus placed nothing:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_draining_on_shutdown_ends_its_sandboxes_gracefully() {
    if !ready() {
        return;
    }
    let mut fleet = Fleet::start(&[]).await;
    let secret = fleet.secret_file();
    fleet.add_agent_with(&spec("a1", "", 8192, 50), &secret, &["--drain-on-shutdown", "5s"]).await;
    fleet.wait_alive(vec!["a1"]).await;
    let soul = json!({"template": TEMPLATE, "command": ["sh", "-c", "trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done"]});
    let id = id_of(&fleet.create(soul).await);
    fleet.wait_running(&id, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.agent("a1").daemon.stop().await;
    let r = fleet.wait_ended(&id, Duration::from_secs(30)).await;
    assert_eq!((r["state"].as_str(), r["kill_reason"].as_str()), (Some("killed"), Some("system_shutdown")), "{r}");
    let t = &r["termination"];
    assert_eq!((t["reason"].as_str(), t["graceful"].as_bool()), (Some("system_shutdown"), Some(true)), "{r}");
    assert_eq!(shims(std::slice::from_ref(&id))[&id], 0, "still running after the agent stopped");
    let log = fleet.agent("a1").daemon.log();
    assert!(log.contains("after ending its 1 sandboxes"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sandbox_asleep_on_one_node_wakes_on_another() {
    if !ready() {
        return;
    }
    // Olympus with Hypnos on; two agents sharing one blob store (as a bucket would be shared).
    let mut fleet = Fleet::start_full(&[], &[], &[("ENABLE_HYPNOS", "1")]).await;
    let store = fleet.dir().join("shared-store").display().to_string();
    let secret = fleet.secret_file();
    for name in ["h1", "h2"] {
        fleet.add_agent_with(&spec(name, "", 4096, 10), &secret, &["--store", &store]).await;
    }
    fleet.wait_alive(vec!["h1", "h2"]).await;
    let counter = "echo kept > /kept.txt; i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done";
    let id = id_of(&fleet.create(json!({"template": TEMPLATE, "command": ["sh", "-c", counter]})).await);
    let rec = fleet.wait_running(&id, Duration::from_secs(60)).await;
    let first = rec["node"].as_str().expect("placed").to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = fleet.cli(&["sleep", &id]).await;
    assert_eq!(out.code, 0, "{out}");
    // Its node takes nothing new: the wake must go to the other one.
    let out = fleet.cli(&["node", "drain", &first]).await;
    assert_eq!(out.code, 0, "{out}");
    let out = fleet.cli(&["wake", &id]).await;
    assert_eq!(out.code, 0, "{out}");
    let rec = fleet.record(&id).await;
    assert_eq!(rec["state"], "running", "{rec}");
    let second = rec["node"].as_str().unwrap_or_default().to_owned();
    assert!(!second.is_empty() && second != first, "woke on {second:?}, slept on {first}: {rec}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Output from both nodes, one count without restart or gap; files came along.
    let logs = fleet.logs(&id).await;
    let counted: Vec<u64> = logs.stdout.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(counted.len() > 8, "{logs:?}");
    assert_eq!(counted, (1..=counted.len() as u64).collect::<Vec<_>>(), "the count restarted or skipped: {logs:?}");
    let out = fleet.cli(&["exec", &id, "--", "cat", "/kept.txt"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "kept\n"), "{out}");
    let (status, body) = fleet.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exposed_port_answers_through_olympus_from_a_remote_agent() {
    if !ready() {
        return;
    }
    let fleet = Fleet::start(&[spec("p1", "", 4096, 10)]).await;
    let serve = "mkdir -p /tmp/www && echo from-the-fleet > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www";
    let soul = json!({"template": TEMPLATE, "command": ["sh", "-c", serve], "network": {"ingress": [8080]}});
    let id = id_of(&fleet.create(soul).await);
    let rec = fleet.wait_running(&id, Duration::from_secs(60)).await;
    assert!(rec["network"]["address"].is_string(), "{rec}");
    // Olympus → the agent's API → the sandbox, and back.
    let mut answer = (StatusCode::NOT_FOUND, json!(null));
    for _ in 0..50 {
        answer = fleet.get(&format!("/v1/sandboxes/{id}/ports/8080/index.html")).await;
        if answer.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, (StatusCode::OK, json!("from-the-fleet\n")), "the exposed port did not answer");
    // The agent's own refusal comes back as the realm's error, not as the sandbox's answer.
    let (status, body) = fleet.get(&format!("/v1/sandboxes/{id}/ports/9000/")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("port_not_exposed")), "{body}");
    let (status, body) = fleet.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
