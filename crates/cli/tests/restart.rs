//! Restarts of `tartarus up`: records survive, running sandboxes are re-adopted, and sandboxes
//! that vanished while nobody watched are marked `lost`.

mod common;

use std::time::Duration;

use common::{id_of, sh, soul, Realm};
use reqwest::StatusCode;

#[tokio::test]
async fn a_killed_realm_readopts_its_sandboxes() {
    if !common::require_prereqs() {
        return;
    }
    let mut realm = Realm::start().await;

    let finished = realm.run(sh("echo done; exit 0")).await;
    assert_eq!(finished["state"], "exited", "{finished}");
    let finished_id = id_of(&finished);

    let running = realm.create(sh("echo before; sleep 6; echo after")).await;
    let running_id = id_of(&running);
    realm.wait_running(&running_id, Duration::from_secs(30)).await;

    realm.restart().await; // SIGKILL, then up again on the same data dir

    let (status, list) = realm.get("/v1/sandboxes").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed: Vec<&str> =
        list["sandboxes"].as_array().expect("sandboxes").iter().filter_map(|r| r["id"].as_str()).collect();
    assert!(listed.contains(&finished_id.as_str()), "{finished_id} forgotten after restart: {list}");
    assert!(listed.contains(&running_id.as_str()), "{running_id} forgotten after restart: {list}");

    // The finished one is exactly as it was.
    let again = realm.record(&finished_id).await;
    for field in ["state", "exit_code", "started_at", "ended_at", "created_at"] {
        assert_eq!(again[field], finished[field], "{field} changed across the restart: {finished} -> {again}");
    }
    assert_eq!(realm.logs(&finished_id).await.stdout, "done\n");

    // The running one was adopted, not lost, and ends normally.
    let adopted = realm.record(&running_id).await;
    assert_eq!(adopted["state"], "running", "not re-adopted: {adopted}");
    let fin = realm.wait_ended(&running_id, Duration::from_secs(30)).await;
    assert_eq!(fin["state"], "exited", "{fin}");
    assert_eq!(fin["exit_code"], 0, "{fin}");
    let logs = realm.logs(&running_id).await;
    assert_eq!(logs.stdout, "before\nafter\n", "{logs:?}");

    // The realm still works.
    let rec = realm.run(soul(&["echo", "still here"])).await;
    assert_eq!(rec["exit_code"], 0, "{rec}");
}

#[tokio::test]
async fn a_session_survives_a_restart_and_still_execs() {
    if !common::require_prereqs() {
        return;
    }
    let mut realm = Realm::start().await;
    let rec = realm.run(serde_json::json!({"template": "busybox"})).await;
    let id = id_of(&rec);
    assert_eq!(rec["state"], "running", "{rec}");
    let (status, out) = realm
        .post(
            &format!("/v1/sandboxes/{id}/exec?stream=false"),
            serde_json::json!({"command": ["sh", "-c", "echo 1 > /tmp/n"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["exit"]["exit_code"], 0, "{out}");

    realm.restart().await;

    assert_eq!(realm.record(&id).await["state"], "running");
    let (status, out) = realm
        .post(&format!("/v1/sandboxes/{id}/exec?stream=false"), serde_json::json!({"command": ["cat", "/tmp/n"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "1\n", "{out}");
    let (status, fin) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{fin}");
    assert_eq!(fin["state"], "killed", "{fin}");
}

#[tokio::test]
async fn a_sandbox_that_vanished_while_down_is_lost() {
    if !common::require_prereqs() {
        return;
    }
    let mut realm = Realm::start().await;
    let rec = realm.create(soul(&["sleep", "60"])).await;
    let id = id_of(&rec);
    realm.wait_running(&id, Duration::from_secs(30)).await;

    realm.kill();
    let shim = realm.shim_pid(&id) as i32;
    assert!(common::alive(shim), "shim {shim} of {id} is not running");
    let killed = common::kill_tree(shim);
    assert!(killed.len() > 1, "the shim {shim} had no children: {killed:?}");
    for pid in &killed {
        assert!(!common::alive(*pid), "{pid} survived SIGKILL");
    }

    realm.start_again().await;
    let fin = realm.wait_ended(&id, Duration::from_secs(15)).await;
    assert_eq!(fin["state"], "lost", "{fin}");
    assert!(fin["error"].as_str().is_some_and(|e| !e.is_empty()), "lost without error: {fin}");
    assert!(fin["ended_at"].is_string(), "{fin}");

    // Still lost after another restart; DELETE returns it as it is.
    realm.restart().await;
    assert_eq!(realm.record(&id).await["state"], "lost");
    let (status, again) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["state"], "lost", "{again}");
}

#[tokio::test]
async fn sigterm_stops_the_realm_and_keeps_its_records() {
    if !common::require_prereqs() {
        return;
    }
    let mut realm = Realm::start().await;
    let rec = realm.run(soul(&["sh", "-c", "exit 9"])).await;
    let id = id_of(&rec);
    assert_eq!(rec["exit_code"], 9, "{rec}");

    realm.stop().await; // SIGTERM; panics unless it exits 0 within 20 s
    realm.start_again().await;

    let again = realm.record(&id).await;
    assert_eq!(again["state"], "exited", "{again}");
    assert_eq!(again["exit_code"], 9, "{again}");
    let (status, templates) = realm.get("/v1/templates").await;
    assert_eq!(status, StatusCode::OK, "{templates}");
    assert!(templates["templates"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == "busybox")), "{templates}");
    let rec = realm.run(soul(&["true"])).await;
    assert_eq!(rec["state"], "exited", "{rec}");
}

#[tokio::test]
async fn restart_releases_what_ended_sandboxes_still_held() {
    if !common::require_prereqs() {
        return;
    }
    let mut realm = Realm::start().await;
    let rec = realm.run(soul(&["true"])).await;
    let id = id_of(&rec);
    // As if the realm had stopped between recording the end and wiping the writable layer.
    let leftover = realm.sandbox_dir(&id).join("lethe");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("tenant-data"), "x").unwrap();
    realm.restart().await;
    assert!(!leftover.exists(), "the writable layer of an ended sandbox is wiped at start-up");
    assert_eq!(realm.record(&id).await["state"], "exited");
}
