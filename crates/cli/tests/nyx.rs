//! Nyx end to end: a template warmed once (start, warm-up, pause, checkpoint), sandboxes restored
//! from its snapshot with real gVisor, and a snapshot of replaced template content refused and
//! rebuilt.

mod common;

use std::time::{Duration, Instant};

use common::{id_of, Realm, TEMPLATE};
use serde_json::{json, Value};

/// The warm-up: a file in the root filesystem (the writable layer) and one in /tmp (memory).
const WARM_UP: &str = "echo warmed > /warm.txt; echo in-memory > /tmp/warm-tmp";

/// `tartarus snapshot ls --output json`.
async fn snapshots(realm: &Realm) -> Vec<Value> {
    let out = realm.cli(&["snapshot", "ls", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out}");
    serde_json::from_str::<Value>(&out.stdout).expect("snapshot ls json").as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn sandboxes_restored_from_a_snapshot_see_the_warmed_state_and_not_each_other() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let warm = realm.cli(&["template", "warm", TEMPLATE, "--command", "sh", "-c", WARM_UP]).await;
    assert_eq!(warm.code, 0, "{warm}");
    assert!(warm.stdout.starts_with("snapshot snap-"), "{warm}");
    let listed = snapshots(&realm).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let snap = &listed[0]["snapshot"];
    assert!(listed[0]["stale"].is_null(), "{listed:?}");
    assert!(snap["compressed_bytes"].as_u64().unwrap_or(0) > 0, "{snap}");
    assert!(snap["compressed_bytes"].as_u64() < snap["size_bytes"].as_u64(), "stored uncompressed: {snap}");
    let snap_id = snap["id"].as_str().unwrap().to_owned();

    // Ten sandboxes at once, each writing a file of its own before looking for the others'.
    let script = "cat /warm.txt /tmp/warm-tmp; echo mine > /mine-$ME; sleep 1; ls / | grep -c '^mine-'";
    let creates = (0..10).map(|i| {
        let soul = json!({"template": TEMPLATE, "command": ["sh", "-c", script], "env": {"ME": i.to_string()}});
        let realm = &realm;
        async move { id_of(&realm.create(soul).await) }
    });
    let ids: Vec<String> = futures::future::join_all(creates).await;
    for id in &ids {
        let r = realm.wait_ended(id, Duration::from_secs(120)).await;
        assert_eq!((r["state"].as_str(), r["exit_code"].as_i64()), (Some("exited"), Some(0)), "{r}");
        assert_eq!(r["launched_from"], format!("snapshot {snap_id}"), "{r}");
        let out = realm.logs(id).await;
        assert_eq!(out.stdout, "warmed\nin-memory\n1\n", "{id}: {out:?}");
    }
    // The template itself never saw any of it.
    let rootfs = realm.template_rootfs().await;
    assert!(!rootfs.join("warm.txt").exists() && !rootfs.join("mine-0").exists());
    // A session restored from the snapshot takes execs like any other.
    let session = id_of(&realm.create(json!({"template": TEMPLATE})).await);
    realm.wait_running(&session, Duration::from_secs(60)).await;
    let out = realm.cli(&["exec", &session, "--", "cat", "/warm.txt"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "warmed\n"), "{out}");
    assert_eq!(realm.record(&session).await["launched_from"], format!("snapshot {snap_id}"));
    // Dropped, the snapshot is no longer used: sandboxes boot cold again.
    let out = realm.cli(&["snapshot", "rm", TEMPLATE]).await;
    assert_eq!(out.code, 0, "{out}");
    let cold = realm.run(json!({"template": TEMPLATE, "command": ["sh", "-c", "ls /warm.txt || echo none"]})).await;
    assert_eq!(cold["launched_from"], "cold", "{cold}");
    assert_eq!(realm.logs(&id_of(&cold)).await.stdout, "none\n");
}

#[tokio::test]
async fn a_snapshot_of_replaced_template_content_is_refused_and_rebuilt() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let warm = realm.cli(&["template", "warm", TEMPLATE, "--command", "sh", "-c", "echo v1 > /version"]).await;
    assert_eq!(warm.code, 0, "{warm}");
    let first = snapshots(&realm).await[0]["snapshot"]["id"].as_str().unwrap().to_owned();
    let probe =
        json!({"template": TEMPLATE, "command": ["sh", "-c", "cat /version 2>/dev/null || echo none; ls /etc/v2"]});

    // The template is replaced by new content: the snapshot, made of the old, is stale.
    let v2 = realm.data_dir.parent().unwrap().join("busybox-v2");
    let cp = std::process::Command::new("cp").arg("-a").arg(&realm.rootfs).arg(&v2).status().expect("cp");
    assert!(cp.success());
    std::fs::write(v2.join("etc/v2"), "2").unwrap();
    let out = realm.cli(&["template", "import", v2.to_str().unwrap(), "--name", TEMPLATE, "--replace"]).await;
    assert_eq!(out.code, 0, "{out}");
    let listed = snapshots(&realm).await;
    assert!(listed[0]["stale"].as_str().is_some_and(|s| s.contains("older content")), "{listed:?}");

    // Refused: the next sandbox boots the new content cold, and says why.
    let r = realm.run(probe.clone()).await;
    let from = r["launched_from"].as_str().unwrap_or_default();
    assert!(from.starts_with("cold (") && from.contains(&first) && from.contains("older content"), "{r}");
    assert_eq!(realm.logs(&id_of(&r)).await.stdout, "none\n/etc/v2\n");

    // Rebuilt in the background with the same warm-up, of the new content.
    let deadline = Instant::now() + Duration::from_secs(120);
    let second = loop {
        let listed = snapshots(&realm).await;
        let s = &listed[0];
        if s["stale"].is_null() && s["snapshot"]["id"] != first.as_str() {
            break s["snapshot"]["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the stale snapshot was not rebuilt: {listed:?}\n{}", realm.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let r = realm.run(probe).await;
    assert_eq!(r["launched_from"], format!("snapshot {second}"), "{r}");
    assert_eq!(realm.logs(&id_of(&r)).await.stdout, "v1\n/etc/v2\n");
}

#[tokio::test]
async fn a_failing_warm_up_says_why_and_records_nothing() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let out = realm.cli(&["template", "warm", TEMPLATE, "--command", "sh", "-c", "echo broken >&2; exit 3"]).await;
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("exited with") && out.stderr.contains("broken"), "{out}");
    assert!(snapshots(&realm).await.is_empty());
    let (status, body) = realm.post("/v1/templates/nope/warm", json!({})).await;
    assert_eq!((status.as_u16(), body["code"].as_str()), (404, Some("template_not_found")), "{body}");
    let (status, body) = realm.post(&format!("/v1/templates/{TEMPLATE}/warm"), json!({"command": []})).await;
    assert_eq!((status.as_u16(), body["code"].as_str()), (422, Some("invalid_request")), "{body}");
    let r = realm.run(json!({"template": TEMPLATE, "command": ["true"]})).await;
    assert_eq!(r["launched_from"], "cold", "{r}");
}

#[tokio::test]
async fn a_restored_sandbox_gets_its_termination_signal_in_its_command() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let warm = realm.cli(&["template", "warm", TEMPLATE]).await;
    assert_eq!(warm.code, 0, "{warm}");
    // Restored, the command runs beside the sandbox's init: SIGTERM must reach the command.
    let soul = json!({"template": TEMPLATE,
                      "command": ["sh", "-c", "trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done"]});
    let id = id_of(&realm.create(soul).await);
    let r = realm.wait_running(&id, Duration::from_secs(60)).await;
    assert!(r["launched_from"].as_str().unwrap_or_default().starts_with("snapshot "), "{r}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, rec) = realm.delete(&format!("/v1/sandboxes/{id}?grace=20s")).await;
    assert_eq!(status.as_u16(), 200, "{rec}");
    assert_eq!(rec["termination"]["graceful"], true, "{rec}");
    assert_eq!(rec["exit_code"], 0, "{rec}");
    assert_eq!(realm.logs(&id).await.stdout, "bye\n");
}
