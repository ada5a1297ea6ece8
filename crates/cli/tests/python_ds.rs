//! The built-in python-ds recipe end to end: debootstrap, the project's own OCI packer, the
//! image build, and the pandas example under gVisor. Slow (minutes): it is the user's example.

mod common;

use std::time::Duration;

use common::Realm;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// debootstrap is needed besides the realm's own prerequisites.
fn debootstrap_present() -> bool {
    let present = std::path::Path::new("/usr/sbin/debootstrap").exists();
    if !present {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("missing prerequisite: debootstrap (apt-get install debootstrap; scripts/setup.sh installs it)");
        }
        eprintln!("skipping: debootstrap missing");
    }
    present
}

#[tokio::test]
async fn python_ds_runs_the_pandas_example() {
    if !common::require_prereqs() || !debootstrap_present() {
        return;
    }
    let realm = Realm::start().await;
    let build = realm
        .request(Method::POST, "/v1/templates/build?stream=false")
        .json(&json!({"name": "python-ds", "recipe": "python-ds"}))
        .timeout(Duration::from_secs(900));
    let (status, template) = realm.send(build).await;
    assert_eq!(status, StatusCode::CREATED, "building python-ds: {template}\n{}", realm.log());
    assert!(template["image"]["layers"].as_array().is_some_and(|l| l.len() >= 2), "{template}");
    assert_eq!(template["image"]["defaults"]["cmd"], json!(["python3"]), "{template}");
    let ext4 = template["ext4"].as_str().expect("an ext4 image");
    let fsck = std::process::Command::new("e2fsck").args(["-fn", ext4]).output().expect("e2fsck");
    assert!(fsck.status.success(), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));

    let rec = realm
        .run(json!({
            "template": "python-ds",
            "command": ["python3", "-c", "import pandas; print('Hello from the Underworld')"],
            "resources": {"memory_mib": 512},
            "max_duration": "120s",
        }))
        .await;
    assert_eq!((rec["state"].as_str(), &rec["exit_code"]), (Some("exited"), &json!(0)), "{rec}");
    let out = realm.logs(rec["id"].as_str().unwrap()).await;
    assert_eq!(out.stdout, "Hello from the Underworld\n", "stderr: {}", out.stderr);

    // A snapshot with a resident Python that has imported pandas: `python3 -c` requests find it
    // imported already; their exit status and output are theirs; other commands run as usual.
    let out = realm.cli(&["template", "warm", "python-ds", "--preload", "pandas"]).await;
    assert_eq!(out.code, 0, "{out}");
    let (_, snaps) = realm.get("/v1/snapshots").await;
    assert!(snaps.to_string().contains("\"preload\":[\"pandas\"]"), "{snaps}");
    let code = "import sys; print('pandas' in sys.modules); import pandas; print(pandas.DataFrame({'a': [1, 2]}).a.sum()); sys.exit(3)";
    let rec = realm
        .run(json!({"template": "python-ds", "command": ["python3", "-c", code], "resources": {"memory_mib": 512}}))
        .await;
    assert!(rec["launched_from"].as_str().unwrap_or_default().starts_with("snapshot "), "{rec}");
    assert_eq!(rec["exit_code"], 3, "{rec}");
    let out = realm.logs(rec["id"].as_str().unwrap()).await;
    assert_eq!(out.stdout, "True\n3\n", "stderr: {}", out.stderr);
    let rec = realm
        .run(json!({"template": "python-ds", "command": ["sh", "-c", "echo $$"], "resources": {"memory_mib": 512}}))
        .await;
    assert_eq!(rec["exit_code"], 0, "{rec}");
    assert_eq!(
        realm.logs(rec["id"].as_str().unwrap()).await.stdout,
        "1\n",
        "the command is the sandbox's first process"
    );
}
