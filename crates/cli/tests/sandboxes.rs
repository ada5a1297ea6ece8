//! Sandboxes end to end: a real `tartarus up`, real gVisor, the CLI and the API.

mod common;

use std::time::{Duration, Instant};

use common::{id_of, sh, soul, tree_listing, Realm};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn run_passes_exit_codes_through() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;

    let ok = realm.cli(&["run", "--template", "busybox", "--", "sh", "-c", "exit 0"]).await;
    assert_eq!(ok.code, 0, "{ok}");

    let three = realm.cli(&["run", "--template", "busybox", "--", "sh", "-c", "exit 3"]).await;
    assert_eq!(three.code, 3, "{three}");

    let echo = realm.cli(&["run", "--template", "busybox", "--", "echo", "hello", "underworld"]).await;
    assert_eq!(echo.code, 0, "{echo}");
    assert_eq!(echo.stdout, "hello underworld\n", "{echo}");

    // The API agrees: the record says exited with the code.
    let rec = realm.run(sh("exit 7")).await;
    assert_eq!(rec["state"], "exited", "{rec}");
    assert_eq!(rec["exit_code"], 7, "{rec}");
}

#[tokio::test]
async fn stdout_and_stderr_are_kept_apart_and_in_order() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2";

    let out = realm.cli(&["run", "--template", "busybox", "--", "sh", "-c", script]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "out1\nout2\n", "{out}");
    assert_eq!(out.stderr, "err1\nerr2\n", "{out}");

    // The same through the API's logs.
    let rec = realm.run(sh(script)).await;
    assert_eq!(rec["state"], "exited", "{rec}");
    let logs = realm.logs(&id_of(&rec)).await;
    assert_eq!(logs.stdout, "out1\nout2\n", "{logs:?}");
    assert_eq!(logs.stderr, "err1\nerr2\n", "{logs:?}");
    let exit = logs.exit.clone().expect("logs of an ended sandbox end with an exit event");
    assert_eq!(exit["state"], "exited", "{exit}");
    assert_eq!(exit["exit_code"], 0, "{exit}");
    assert_eq!(logs.after_exit, 0, "events after exit: {logs:?}");
}

#[tokio::test]
async fn env_and_workdir_reach_the_process() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let rec = realm
        .run(json!({"template": "busybox", "command": ["sh", "-c", "echo \"$GREETING\"; pwd"],
                    "env": {"GREETING": "ave"}, "workdir": "/tmp"}))
        .await;
    assert_eq!(rec["state"], "exited", "{rec}");
    assert_eq!(rec["exit_code"], 0, "{rec}");
    let logs = realm.logs(&id_of(&rec)).await;
    assert_eq!(logs.stdout, "ave\n/tmp\n", "{logs:?}");
}

#[tokio::test]
async fn a_missing_command_fails_the_sandbox() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;

    let rec = realm.run(soul(&["no-such-command", "arg"])).await;
    assert_eq!(rec["state"], "failed", "{rec}");
    let error = rec["error"].as_str().unwrap_or_else(|| panic!("failed record without error: {rec}"));
    assert!(error.to_lowercase().contains("command not found"), "error {error:?} does not say command not found");
    assert!(error.contains("no-such-command"), "error {error:?} does not name the command");

    let cli = realm.cli(&["run", "--template", "busybox", "--", "no-such-command"]).await;
    assert_eq!(cli.code, 125, "{cli}");
    assert!(cli.stderr.to_lowercase().contains("not found"), "{cli}");
}

#[tokio::test]
async fn writes_do_not_leak_into_the_template_or_the_next_sandbox() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let template_copy = realm.template_rootfs().await;
    let before_copy = tree_listing(&template_copy);
    let before_source = tree_listing(&realm.rootfs);
    assert!(before_copy.contains_key(std::path::Path::new("bin/busybox")), "template copy lacks bin/busybox");

    let first = realm.run(sh("echo x > /etc/marker && cat /etc/marker && rm /bin/ls && echo gone")).await;
    assert_eq!(first["state"], "exited", "{first}");
    assert_eq!(first["exit_code"], 0, "{first}");
    assert_eq!(realm.logs(&id_of(&first)).await.stdout, "x\ngone\n");

    let second = realm.run(sh("test -e /etc/marker")).await;
    assert_eq!(second["state"], "exited", "{second}");
    assert_eq!(second["exit_code"], 1, "/etc/marker is visible in the next sandbox: {second}");
    let third = realm.run(soul(&["ls", "/bin/ls"])).await;
    assert_eq!(third["exit_code"], 0, "/bin/ls deleted in one sandbox is gone in the next: {third}");

    assert_eq!(tree_listing(&template_copy), before_copy, "the template's copy changed on the host");
    assert_eq!(tree_listing(&realm.rootfs), before_source, "the imported directory changed on the host");
    assert!(!template_copy.join("etc/marker").exists());
}

#[tokio::test]
async fn max_duration_kills_with_reason_timeout() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let t0 = Instant::now();
    let rec = realm.run(json!({"template": "busybox", "command": ["sleep", "30"], "max_duration": "2s"})).await;
    let took = t0.elapsed();
    assert_eq!(rec["state"], "killed", "{rec}");
    assert_eq!(rec["kill_reason"], "timeout", "{rec}");
    assert!(took < Duration::from_secs(12), "sleep 30 with max_duration 2s took {took:?}");
    assert!(took >= Duration::from_millis(1900), "killed after {took:?}, before its max_duration");
}

#[tokio::test]
async fn memory_limit_kills_with_reason_out_of_memory() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    // A shell variable of ~300 MB, in a sandbox allowed 64 MiB.
    let rec = realm
        .run(json!({"template": "busybox",
                    "command": ["sh", "-c", "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived ${#x}"],
                    "resources": {"memory_mib": 64}, "max_duration": "60s"}))
        .await;
    let logs = realm.logs(&id_of(&rec)).await;
    assert_eq!(rec["state"], "killed", "{rec}\n{logs:?}");
    assert_eq!(rec["kill_reason"], "out_of_memory", "{rec}");
    assert!(!logs.stdout.contains("survived"), "the allocation succeeded under a 64 MiB limit: {logs:?}");
}

#[tokio::test]
async fn delete_kills_a_running_sandbox() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let rec = realm.create(soul(&["sleep", "60"])).await;
    let id = id_of(&rec);
    assert!(["queued", "starting", "running"].contains(&rec["state"].as_str().unwrap_or("")), "fresh record: {rec}");
    realm.wait_running(&id, Duration::from_secs(30)).await;

    let t0 = Instant::now();
    let (status, fin) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    let took = t0.elapsed();
    assert_eq!(status, StatusCode::OK, "DELETE: {fin}");
    assert_eq!(fin["state"], "killed", "{fin}");
    assert_eq!(fin["kill_reason"], "requested", "{fin}");
    assert!(fin["ended_at"].is_string(), "{fin}");
    assert!(took < Duration::from_secs(5), "DELETE of a running sandbox took {took:?}");

    // It stays that way, and a second DELETE returns it as it is.
    assert_eq!(realm.record(&id).await["state"], "killed");
    let (status, again) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["kill_reason"], "requested", "{again}");

    // The CLI's kill does the same.
    let rec = realm.create(soul(&["sleep", "60"])).await;
    let id = id_of(&rec);
    realm.wait_running(&id, Duration::from_secs(30)).await;
    let out = realm.cli(&["kill", &id]).await;
    assert_eq!(out.code, 0, "{out}");
    let fin = realm.wait_ended(&id, Duration::from_secs(10)).await;
    assert_eq!(fin["state"], "killed", "{fin}");
    assert_eq!(fin["kill_reason"], "requested", "{fin}");
}

#[tokio::test]
async fn twenty_sandboxes_at_once() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let runs = (0..20).map(|n| {
        let realm = &realm;
        async move {
            let rec = realm
                .run(json!({"template": "busybox", "command": ["sh", "-c", "echo $N"], "env": {"N": n.to_string()}}))
                .await;
            (n, rec)
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(180), futures::future::join_all(runs))
        .await
        .expect("20 concurrent sandboxes did not all finish within 180 s");

    let mut ids = std::collections::HashSet::new();
    for (n, rec) in &results {
        assert_eq!(rec["state"], "exited", "sandbox {n}: {rec}");
        assert_eq!(rec["exit_code"], 0, "sandbox {n}: {rec}");
        let id = id_of(rec);
        assert!(ids.insert(id.clone()), "id {id} given twice");
        let logs = realm.logs(&id).await;
        assert_eq!(logs.stdout, format!("{n}\n"), "sandbox {n} ({id}): {logs:?}");
    }

    // The listing has them all, newest first.
    let (status, list) = realm.get("/v1/sandboxes?limit=100").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed: Vec<&str> =
        list["sandboxes"].as_array().expect("sandboxes array").iter().filter_map(|r| r["id"].as_str()).collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} missing from the listing");
    }
    let created: Vec<chrono::DateTime<chrono::FixedOffset>> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap_or("")).expect("created_at"))
        .collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "GET /v1/sandboxes is not newest first");

    // And the CLI's ps shows them.
    let ps = realm.cli(&["ps"]).await;
    assert_eq!(ps.code, 0, "{ps}");
    for id in &ids {
        assert!(ps.stdout.contains(id.as_str()), "{id} missing from tartarus ps:\n{ps}");
    }
}

#[tokio::test]
async fn logs_follow_streams_until_the_end() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let script = "echo a; sleep 1; echo b";

    // CLI: logs -f from right after creation prints everything, then returns.
    let rec = realm.create(sh(script)).await;
    let out = realm.cli(&["logs", "-f", &id_of(&rec)]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "a\nb\n", "{out}");

    // API: the events come as they happen, not all at the end.
    let rec = realm.create(sh(script)).await;
    let id = id_of(&rec);
    let req = realm.request(reqwest::Method::GET, &format!("/v1/sandboxes/{id}/logs?follow=true"));
    let events = realm.stream(req, Duration::from_secs(60)).await;
    let at = |text: &str| {
        events
            .iter()
            .find(|(_, e)| e.event == "stdout" && e.json().as_str().is_some_and(|s| s.contains(text)))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no stdout event with {text:?}: {events:?}"))
    };
    let (a, b) = (at("a"), at("b"));
    assert!(b >= a + Duration::from_millis(700), "a at {a:?} and b at {b:?}: not streamed as it happened");
    let (_, last) = events.last().expect("events");
    assert_eq!(last.event, "exit", "{events:?}");
    assert_eq!(last.json()["state"], "exited", "{events:?}");
    let evs: Vec<_> = events.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(common::Output::from_events(&evs).stdout, "a\nb\n");
}
