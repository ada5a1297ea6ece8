//! Warm pools end to end with real gVisor: a pool of 3 serves quick requests by handing ready
//! sandboxes over (each once), refills in the background, serves sessions, applies each
//! request's limits, follows a re-warmed snapshot, and leaves nothing behind when emptied.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{id_of, Realm, TEMPLATE};
use serde_json::{json, Value};

/// The pool of [`TEMPLATE`] as `tartarus template ls --output json` reports it.
async fn pool(realm: &Realm) -> Value {
    let out = realm.cli(&["template", "ls", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let listed: Value = serde_json::from_str(&out.stdout).expect("template ls json");
    listed["pools"][TEMPLATE].clone()
}

/// Waits until the pool has `ready` sandboxes ready.
async fn until_ready(realm: &Realm, ready: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = pool(realm).await;
        if p["ready"].as_u64() == Some(ready) {
            return p;
        }
        assert!(Instant::now() < deadline, "the pool did not reach {ready} ready: {p}\n{}", realm.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pooled sandbox a record was served by, if it was.
fn pooled_id(rec: &Value) -> Option<String> {
    let from = rec["launched_from"].as_str()?;
    from.strip_prefix("pool ").map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_warm_pool_serves_each_request_once_and_refills() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let out = realm.cli(&["template", "pool", TEMPLATE, "3"]).await;
    assert_eq!(out.code, 0, "{out}");
    until_ready(&realm, 3, Duration::from_secs(60)).await;

    // Five quick requests: each marks its sandbox, and says if it found a mark already.
    let script = "test -e /used && echo reused; echo $ME > /used; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; echo ok";
    let creates = (0..5).map(|i| {
        let soul = json!({"template": TEMPLATE, "command": ["sh", "-c", script], "env": {"ME": i.to_string()},
                          "resources": {"memory_mib": 300}});
        let realm = &realm;
        async move { id_of(&realm.create(soul).await) }
    });
    let ids: Vec<String> = futures::future::join_all(creates).await;
    let mut served = BTreeSet::new();
    for id in &ids {
        let r = realm.wait_ended(id, Duration::from_secs(120)).await;
        assert_eq!((r["state"].as_str(), r["exit_code"].as_i64()), (Some("exited"), Some(0)), "{r}");
        let out = realm.logs(id).await;
        assert!(!out.stdout.contains("reused"), "{id} was given a used sandbox: {out:?}");
        assert!(out.stdout.ends_with("ok\n"), "{id}: {out:?}");
        if let Some(p) = pooled_id(&r) {
            assert!(served.insert(p.clone()), "pooled sandbox {p} served twice");
            assert_ne!(p, *id);
        }
    }
    assert!(served.len() >= 3, "only {} of 5 served from a pool of 3: {served:?}", served.len());
    // The pool refills, with sandboxes never served before.
    let p = until_ready(&realm, 3, Duration::from_secs(60)).await;
    assert_eq!(p["served"].as_u64(), Some(served.len() as u64), "{p}");

    // A session is served too, and takes execs; its limits are its request's, not the pool's.
    let session =
        id_of(&realm.create(json!({"template": TEMPLATE, "resources": {"memory_mib": 300, "vcpus": 2}})).await);
    let rec = realm.wait_running(&session, Duration::from_secs(60)).await;
    let pooled = pooled_id(&rec).unwrap_or_else(|| panic!("session not served from the pool: {rec}"));
    assert!(!served.contains(&pooled), "{pooled} served twice");
    let out = realm.cli(&["exec", &session, "--", "sh", "-c", "test -e /used && echo reused; echo fresh"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "fresh\n"), "{out}");
    let limit = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/tartarus/{pooled}/memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/tartarus/{pooled}/memory.max")))
        .expect("the handed-over sandbox's cgroup");
    // 300 MiB asked, plus the runtime's 32 MiB.
    assert_eq!(limit.trim(), ((300 + 32) * 1024 * 1024).to_string(), "pool limits kept");
    let (status, body) = realm.delete(&format!("/v1/sandboxes/{session}")).await;
    assert!(status.is_success(), "{body}");
    let ended = realm.wait_ended(&session, Duration::from_secs(30)).await;
    assert_eq!(ended["state"], "killed", "{ended}");
    // Released just after its end is recorded.
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::path::Path::new(&format!("/sys/fs/cgroup/memory/tartarus/{pooled}")).exists() {
        assert!(Instant::now() < deadline, "the handed-over sandbox's cgroup outlived it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Emptied, the pool releases everything: no runtime state, cgroup or directory without a record.
    let out = realm.cli(&["template", "pool", TEMPLATE, "0"]).await;
    assert_eq!(out.code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = pool(&realm).await;
        if p.is_null() || p["ready"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "pool not emptied: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runsc = std::process::Command::new("runsc")
            .args(["--root", &realm.data_dir.join("runsc").display().to_string(), "list", "-q"])
            .output()
            .expect("runsc list");
        let mut left = String::from_utf8_lossy(&runsc.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        for entry in std::fs::read_dir(realm.data_dir.join("sandboxes")).expect("sandboxes dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !realm.get(&format!("/v1/sandboxes/{name}")).await.0.is_success() {
                left.push(format!("directory {name} of no sandbox"));
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind by the emptied pool: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_pool_follows_its_template_snapshot() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let out = realm.cli(&["template", "pool", TEMPLATE, "2"]).await;
    assert_eq!(out.code, 0, "{out}");
    until_ready(&realm, 2, Duration::from_secs(60)).await;
    // Warming replaces the booted pooled sandboxes with ones restored from the snapshot.
    let warm = realm.cli(&["template", "warm", TEMPLATE, "--command", "sh", "-c", "echo warmed > /warm.txt"]).await;
    assert_eq!(warm.code, 0, "{warm}");
    let snap = warm.stdout.split_whitespace().nth(1).expect("snapshot id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = realm.run(json!({"template": TEMPLATE, "command": ["cat", "/warm.txt"]})).await;
        assert_eq!(r["exit_code"], 0, "{r}");
        let from = r["launched_from"].as_str().unwrap_or_default().to_owned();
        if from.starts_with("pool ") && from.ends_with(&format!("(snapshot {snap})")) {
            assert_eq!(realm.logs(&id_of(&r)).await.stdout, "warmed\n");
            break;
        }
        assert!(Instant::now() < deadline, "never served from a pooled sandbox of {snap}: last {from}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
