//! Templates from OCI images end to end: a real `tartarus up`, a real registry
//! (`scripts/registry.sh`), a real S3-compatible server (`scripts/s3.sh`), real gVisor.
//!
//! Images are made here with the project's own packer (`tartarus_erebus::layout`): from the
//! harness's busybox root filesystem plus small directories, and from hand-made tar streams for
//! whiteouts and hostile layers (paths a normal tar writer refuses to produce). Each test starts
//! its own realm and servers, on port 0 and in its own temporary directory, and stops them when
//! it ends, also when it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{id_of, Realm};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tartarus_erebus::digest::Digest;
use tartarus_erebus::layout::{write_layout, ImageConfig, ImageDigests, LayerCompression, LayerSource};

/// How long one build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(120);
/// Where `scripts/s3.sh` installs s3s-fs.
const S3S_FS: &str = "/opt/tartarus/s3s-fs/bin/s3s-fs";

// --- prerequisites -----------------------------------------------------------------------

/// `name` as an executable: an absolute path, or a file in PATH or the usual sbin directories.
fn program(name: &str) -> Option<PathBuf> {
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if name.starts_with('/') {
        return executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// The harness's prerequisites plus `tools` (installed by `scripts/setup.sh`): true when all
/// are there; otherwise skips the test, or with `CI=true` fails it naming what is missing.
fn require(tools: &[&str]) -> bool {
    if !common::require_prereqs() {
        return false;
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| program(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    let what = format!("{} (run scripts/setup.sh)", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisites missing: {what}");
    }
    eprintln!("skipping: {what} missing");
    false
}

// --- servers -----------------------------------------------------------------------------

/// A server run by one of the repository's scripts (`start --port 0 --dir DIR`), stopped with
/// `stop --dir DIR` when dropped, also when the test panics.
struct ScriptServer {
    script: PathBuf,
    dir: PathBuf,
    /// The `KEY=VALUE` lines `start` printed.
    env: BTreeMap<String, String>,
}

impl ScriptServer {
    fn start(script: &str, dir: &Path, extra: &[&str]) -> ScriptServer {
        let script = common::scripts_dir().join(script);
        let out = Command::new("bash")
            .arg(&script)
            .args(["start", "--port", "0", "--dir"])
            .arg(dir)
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} start failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        ScriptServer { script, dir: dir.to_owned(), env }
    }

    fn var(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("{} printed no {key}: {:?}", self.script.display(), self.env))
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        let stopped = Command::new("bash").arg(&self.script).arg("stop").arg("--dir").arg(&self.dir).output();
        if !stopped.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("{} stop --dir {}: {stopped:?}", self.script.display(), self.dir.display());
        }
    }
}

/// A registry (`scripts/registry.sh`) in `dir`, with basic auth when `auth` is `USER:PASS`.
fn registry(dir: &Path, auth: Option<&str>) -> ScriptServer {
    match auth {
        Some(a) => ScriptServer::start("registry.sh", dir, &["--auth", a]),
        None => ScriptServer::start("registry.sh", dir, &[]),
    }
}

/// Runs `scripts/test-images.sh ARGS`; its `KEY=VALUE` output.
fn test_images(args: &[&str]) -> BTreeMap<String, String> {
    let script = common::scripts_dir().join("test-images.sh");
    let out = Command::new("bash").arg(&script).args(args).output().expect("run test-images.sh");
    assert!(
        out.status.success(),
        "test-images.sh {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Pushes `oci:DIR:TAG` to the registry as `name` (`REPO:TAG`); the pulled reference.
fn push(oci: &str, name: &str, registry: &ScriptServer, creds: Option<&str>, extra: &[&str]) -> String {
    let mut args = vec!["push", oci, name, "--registry", registry.var("REGISTRY_HOST")];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.extend(extra);
    test_images(&args)["IMAGE"].clone()
}

// --- images ------------------------------------------------------------------------------

/// Writes image `tag` into the OCI layout `dir` (gzip layers); returns `oci:DIR:TAG` and its digests.
fn image(dir: &Path, tag: &str, layers: &[LayerSource], config: &ImageConfig) -> (String, ImageDigests) {
    let digests = write_layout(dir, tag, layers, config, LayerCompression::Gzip)
        .unwrap_or_else(|e| panic!("write_layout {} {tag}: {e:?}", dir.display()));
    (format!("oci:{}:{tag}", dir.display()), digests)
}

/// One entry of a hand-made tar layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Symlink(&'a str, &'a str),
}

/// Writes a tar stream of `entries` at `path`, names exactly as given (`..` and all: what a
/// hostile image would hold), as a layer source.
fn tar_layer(path: &Path, entries: &[Entry]) -> LayerSource {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(946_684_800);
        let (name, data): (&str, &[u8]) = match entry {
            Entry::Dir(name) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                (name, b"")
            }
            Entry::File(name, content) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                (name, content.as_bytes())
            }
            Entry::Symlink(name, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                // By hand too: `set_link_name` rewrites some targets ("/" becomes "//").
                let slot = &mut header.as_old_mut().linkname;
                assert!(target.len() < slot.len(), "symlink target too long: {target}");
                slot[..target.len()].copy_from_slice(target.as_bytes());
                (name, b"")
            }
        };
        // Set by hand: `Header::set_path` refuses `..`, which is the point of some of these.
        let slot = &mut header.as_old_mut().name;
        assert!(name.len() < slot.len(), "tar name too long: {name}");
        slot[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).expect("append tar entry");
    }
    std::fs::write(path, builder.into_inner().expect("finish tar")).expect("write tar layer");
    LayerSource::Tar(path.to_owned())
}

/// A small tree with what images carry: odd modes (setuid, sticky), owners, hard and symbolic
/// An image of the realm's busybox root plus the extras tree, as an `oci:` reference to a layout
/// under `dir` (tag `v1`).
fn base_image(realm: &Realm, dir: &Path) -> String {
    let extras = dir.join("extras");
    extras_tree(&extras);
    let (oci, _) = image(
        &dir.join("layout"),
        "v1",
        &[LayerSource::Dir(realm.rootfs.clone()), LayerSource::Dir(extras)],
        &ImageConfig::default(),
    );
    oci
}

/// links, an empty file.
fn extras_tree(root: &Path) {
    let dir = |p: &str, mode: u32| {
        std::fs::create_dir_all(root.join(p)).unwrap();
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let file = |p: &str, content: &str, mode: u32| {
        std::fs::write(root.join(p), content).unwrap();
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    dir("srv", 0o755);
    dir("var/lib/app", 0o750);
    dir("opt/sticky", 0o1777);
    file("srv/hello.txt", "hello from the image\n", 0o644);
    file("srv/secret", "only for uid 1000\n", 0o600);
    file("srv/suid", "#!/bin/sh\necho suid\n", 0o4755);
    file("srv/empty", "", 0o644);
    file("var/lib/app/state", "42\n", 0o640);
    std::fs::hard_link(root.join("srv/hello.txt"), root.join("srv/hard")).unwrap();
    symlink("hello.txt", root.join("srv/rel-link")).unwrap();
    symlink("/bin/busybox", root.join("srv/abs-link")).unwrap();
    std::os::unix::fs::chown(root.join("srv/secret"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(root.join("var/lib/app"), Some(33), Some(33)).unwrap();
    std::os::unix::fs::chown(root.join("var/lib/app/state"), Some(33), Some(33)).unwrap();
    lchown(root.join("srv/rel-link"), Some(1000), Some(1000)).unwrap();
}

/// Every entry below `root`: relative path → type, mode, owner, size, symlink target and
/// content hash (not times: they are not what this compares).
fn listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let owner = format!("{}:{}", meta.uid(), meta.gid());
            let line = if meta.file_type().is_symlink() {
                format!("link {owner} -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                format!("dir {:o} {owner}", meta.mode() & 0o7777)
            } else if meta.is_file() {
                let hash = Digest::of(&std::fs::read(&path).unwrap());
                format!("file {:o} {owner} {} {}", meta.mode() & 0o7777, meta.len(), hash.short())
            } else {
                format!("other {:o} {owner}", meta.mode())
            };
            out.insert(rel, line);
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The differences between two listings, for failure messages.
fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("  {k}: {:?} vs {:?}\n", a.get(k), b.get(k)))
        .collect()
}

// --- the API -----------------------------------------------------------------------------

/// `POST /v1/templates/build?stream=false`.
async fn build(realm: &Realm, body: Value) -> (StatusCode, Value) {
    let req = realm.request(Method::POST, "/v1/templates/build?stream=false").json(&body).timeout(BUILD_TIMEOUT);
    realm.send(req).await
}

/// Builds `name` from `image` (no ext4 image unless `ext4`), expecting `201`; the record.
async fn built(realm: &Realm, name: &str, image: &str, ext4: bool) -> Value {
    let (status, body) = build(realm, json!({"name": name, "image": image, "ext4": ext4})).await;
    assert_eq!(status, StatusCode::CREATED, "building {name} from {image}: {body}");
    assert_eq!(body["name"], name, "{body}");
    let rootfs = rootfs_of(&body);
    assert!(rootfs.is_dir(), "the rootfs of {name} is not on this machine: {body}");
    body
}

fn rootfs_of(rec: &Value) -> PathBuf {
    PathBuf::from(rec["rootfs"].as_str().unwrap_or_else(|| panic!("record without rootfs: {rec}")))
}

/// Runs `command` in `template` (`POST /v1/sandboxes?wait=true`, extra soul fields merged in),
/// expecting exit 0; its stdout.
async fn run_in(realm: &Realm, template: &str, command: &[&str], extra: Value) -> String {
    let mut soul = json!({"template": template, "command": command});
    if let (Some(s), Some(e)) = (soul.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let rec = realm.run(soul.clone()).await;
    let logs = realm.logs(&id_of(&rec)).await;
    assert_eq!((rec["state"].as_str(), rec["exit_code"].as_i64()), (Some("exited"), Some(0)), "{soul}: {rec} {logs:?}");
    logs.stdout
}

/// The blob file of `digest` in the realm's local store.
fn store_blob(realm: &Realm, digest: &str) -> PathBuf {
    realm.data_dir.join("erebus/store/blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn images_dir(realm: &Realm) -> PathBuf {
    realm.data_dir.join("erebus/images")
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The digests an image record says its template uses: config and layers.
fn blobs_of(rec: &Value) -> Vec<String> {
    let image = &rec["image"];
    let mut blobs: Vec<String> = image["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no layers: {rec}"))
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    blobs.push(image["config_digest"].as_str().unwrap_or_else(|| panic!("no config digest: {rec}")).to_owned());
    blobs
}

// --- tests -------------------------------------------------------------------------------

#[tokio::test]
async fn registry_pulls_over_http_anonymous_and_with_basic_auth() {
    if !require(&["skopeo", "/usr/bin/docker-registry", "htpasswd"]) {
        return;
    }
    let realm = Realm::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let open = registry(&tmp.path().join("open"), None);
    let locked = registry(&tmp.path().join("locked"), Some("hades:obol-1234"));

    let oci = base_image(&realm, tmp.path());
    let marker = tmp.path().join("marker");
    std::fs::create_dir_all(marker.join("etc")).unwrap();
    std::fs::write(marker.join("etc/locked"), "behind basic auth\n").unwrap();
    let (oci_locked, _) = image(
        &tmp.path().join("layout"),
        "locked",
        &[LayerSource::Dir(realm.rootfs.clone()), LayerSource::Dir(marker)],
        &ImageConfig::default(),
    );

    // Anonymous, over plain HTTP: allowed with `insecure`.
    let anon = push(&oci, "tartarus-test/app:1", &open, None, &[]);
    let (status, body) = build(
        &realm,
        json!({"name": "anon", "image": anon, "insecure": true, "credentials": {"kind": "anonymous"}, "ext4": false}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["image"]["reference"], anon.as_str(), "{body}");
    assert!(rootfs_of(&body).join("srv/hello.txt").is_file(), "{body}");

    // Without `insecure`, plain HTTP is refused, and the message says what to add.
    let (status, body) = build(&realm, json!({"name": "tls", "image": anon, "ext4": false})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "registry_error", "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("--insecure"), "{body}");

    // Basic auth: refused without credentials or with wrong ones, pulled with the right ones.
    let image_ref = push(&oci_locked, "tartarus-test/locked:1", &locked, Some("hades:obol-1234"), &[]);
    for (creds, what) in [
        (json!({"kind": "anonymous"}), "no credentials"),
        (json!({"kind": "basic", "username": "hades", "password": "wrong"}), "a wrong password"),
    ] {
        let (status, body) = build(
            &realm,
            json!({"name": "locked", "image": image_ref, "insecure": true, "credentials": creds, "ext4": false}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{what}: {body}");
        assert_eq!(body["code"], "registry_error", "{what}: {body}");
        assert!(body["message"].as_str().unwrap_or_default().contains("credentials"), "{what}: {body}");
    }
    let (status, body) = build(
        &realm,
        json!({"name": "locked", "image": image_ref, "insecure": true,
               "credentials": {"kind": "basic", "username": "hades", "password": "obol-1234"}, "ext4": false}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(std::fs::read_to_string(rootfs_of(&body).join("etc/locked")).unwrap(), "behind basic auth\n");
    drop((open, locked));
}

#[tokio::test]
async fn every_source_kind_unpacks_to_the_same_tree() {
    if !require(&["skopeo", "/usr/bin/docker-registry"]) {
        return;
    }
    let realm = Realm::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(&tmp.path().join("registry"), None);
    let extras = tmp.path().join("extras");
    extras_tree(&extras);
    let layout = tmp.path().join("layout");
    let (oci, _) = image(
        &layout,
        "v1",
        &[LayerSource::Dir(realm.rootfs.clone()), LayerSource::Dir(extras.clone())],
        &ImageConfig::default(),
    );
    let archive = tmp.path().join("saved.tar");
    test_images(&["docker-archive", &oci, archive.to_str().unwrap()]);
    let sources = [
        ("registry", push(&oci, "tartarus-test/same:1", &reg, None, &[])),
        ("registry-v2s2", push(&oci, "tartarus-test/same-v2s2:1", &reg, None, &["--format", "v2s2"])),
        ("layout", oci.clone()),
        ("archive", format!("docker-archive:{}", archive.display())),
    ];

    let mut listings = Vec::new();
    for (name, reference) in &sources {
        let rec = if *name == "layout" {
            // Through the CLI once, which follows the progress stream.
            let out = realm.cli(&["template", "build", name, "--image", reference, "--no-ext4"]).await;
            assert_eq!(out.code, 0, "{out}");
            assert!(out.stdout.contains(&format!("built template {name}")), "{out}");
            let (status, rec) = realm.get(&format!("/v1/templates/{name}")).await;
            assert_eq!(status, StatusCode::OK, "{rec}");
            rec
        } else {
            let (status, rec) =
                build(&realm, json!({"name": name, "image": reference, "insecure": true, "ext4": false})).await;
            assert_eq!(status, StatusCode::CREATED, "{name} {reference}: {rec}");
            rec
        };
        let rootfs = rootfs_of(&rec);
        assert!(rootfs.is_dir(), "{name}: the rootfs is not on this machine: {rec}");
        listings.push((name, listing(&rootfs)));
        // Removed and pruned, so the next source is unpacked afresh rather than reused.
        let (status, body) = realm.delete(&format!("/v1/templates/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = realm.post("/v1/templates/prune", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(names_in(&images_dir(&realm)).is_empty(), "{name}: prune left {:?}", names_in(&images_dir(&realm)));
    }

    // And the tree is the one packed: the busybox rootfs with the extras on top.
    let (first_name, first) = &listings[0];
    for (name, other) in &listings[1..] {
        assert!(first == other, "{first_name} and {name} differ:\n{}", diff(first, other));
    }
    // A directory in both layers (var) takes the upper layer's metadata, as `extend` does.
    let mut expected = listing(&realm.rootfs);
    expected.extend(listing(&extras));
    assert!(first == &expected, "the unpacked tree differs from the packed one:\n{}", diff(first, &expected));
    drop(reg);
}

#[tokio::test]
async fn image_defaults_apply_and_requests_override_them() {
    if !require(&[]) {
        return;
    }
    let realm = Realm::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv-layer");
    std::fs::create_dir_all(srv.join("srv")).unwrap();
    let layout = tmp.path().join("layout");
    let base = [LayerSource::Dir(realm.rootfs.clone()), LayerSource::Dir(srv)];
    let env_config =
        ImageConfig { env: vec!["GREETING=hello".into()], working_dir: Some("/srv".into()), ..ImageConfig::default() };
    let (with_env, _) = image(&layout, "env", &base, &env_config);
    let entry_config = ImageConfig {
        entrypoint: Some(vec!["/bin/echo".into(), "from-entrypoint".into()]),
        cmd: Some(vec!["ignored".into()]),
        ..ImageConfig::default()
    };
    let (with_entry, _) = image(&layout, "entry", &base, &entry_config);

    let rec = built(&realm, "withenv", &with_env, false).await;
    assert_eq!(rec["image"]["defaults"]["env"], json!(["GREETING=hello"]), "{rec}");
    assert_eq!(rec["image"]["defaults"]["working_dir"], "/srv", "{rec}");
    built(&realm, "withentry", &with_entry, false).await;

    let script = ["sh", "-c", "echo $GREETING; pwd"];
    assert_eq!(run_in(&realm, "withenv", &script, json!({})).await, "hello\n/srv\n");
    let overridden = json!({"env": {"GREETING": "salve"}, "workdir": "/tmp"});
    assert_eq!(run_in(&realm, "withenv", &script, overridden).await, "salve\n/tmp\n");

    assert_eq!(run_in(&realm, "withentry", &["x"], json!({})).await, "from-entrypoint x\n");
    let out = realm.cli(&["run", "--template", "withentry", "--", "x", "y"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "from-entrypoint x y\n", "{out}");
}

#[tokio::test]
async fn hostile_layers_are_refused_and_leave_nothing_behind() {
    if !require(&[]) {
        return;
    }
    let realm = Realm::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let outside = t.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let outside_s = outside.to_str().unwrap().to_owned();
    let realm_tmp = realm.data_dir.parent().unwrap().to_owned();
    let evil = format!("tartarus-evil-{}", std::process::id());
    let base = || LayerSource::Dir(realm.rootfs.clone());
    let layout = t.join("layout");

    struct Case {
        name: &'static str,
        layers: Vec<LayerSource>,
        body: Value,
        says: Vec<&'static str>,
        /// Must not exist afterwards.
        outside: Vec<PathBuf>,
    }
    let cases = vec![
        Case {
            name: "traversal",
            layers: vec![base(), tar_layer(&t.join("dotdot.tar"), &[Entry::File("../escape", "out")])],
            body: json!({}),
            says: vec!["escape", "`..`"],
            outside: vec![],
        },
        Case {
            name: "deep-traversal",
            layers: vec![base(), tar_layer(&t.join("deep.tar"), &[Entry::File("srv/../../../../../../escape", "out")])],
            body: json!({}),
            says: vec!["escape", "`..`"],
            outside: vec![realm_tmp.join("escape"), realm.data_dir.join("escape")],
        },
        Case {
            name: "symlink-escape",
            layers: vec![
                base(),
                tar_layer(
                    &t.join("link.tar"),
                    &[Entry::Symlink("link", "/"), Entry::File(&format!("link/etc/{evil}"), "pwned")],
                ),
            ],
            body: json!({}),
            says: vec!["escape", "symlink", "link"],
            outside: vec![PathBuf::from("/etc").join(&evil)],
        },
        Case {
            name: "planted-symlink",
            layers: vec![
                base(),
                tar_layer(&t.join("plant.tar"), &[Entry::Symlink("planted", &outside_s)]),
                tar_layer(&t.join("through.tar"), &[Entry::File("planted/pwned", "pwned")]),
            ],
            body: json!({}),
            says: vec!["escape", "symlink", "planted"],
            outside: vec![outside.join("pwned")],
        },
        Case {
            name: "oversized",
            layers: vec![base()],
            body: json!({"max_image_bytes": 100_000}),
            says: vec!["100000 bytes"],
            outside: vec![],
        },
        Case {
            name: "too-many-entries",
            layers: vec![base()],
            body: json!({"max_image_entries": 20}),
            says: vec!["20 entries"],
            outside: vec![],
        },
    ];
    for case in cases {
        for p in &case.outside {
            assert!(!p.exists(), "{}: {} exists before the test", case.name, p.display());
        }
        let (oci, _) = image(&layout, case.name, &case.layers, &ImageConfig::default());
        let mut body = json!({"name": case.name, "image": oci, "ext4": false});
        body.as_object_mut().unwrap().extend(case.body.as_object().unwrap().clone());
        let (status, err) = build(&realm, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}: {err}", case.name);
        assert_eq!(err["code"], "image_rejected", "{}: {err}", case.name);
        let message = err["message"].as_str().unwrap_or_default();
        for word in &case.says {
            assert!(message.contains(word), "{}: the message does not say {word:?}: {message}", case.name);
        }
        for p in &case.outside {
            assert!(!p.exists(), "{}: {} was written outside the template", case.name, p.display());
        }
        assert_nothing_left(&realm, case.name).await;
    }

    // A blob whose bytes do not match its digest (one byte changed, name kept).
    let (oci, digests) = image(
        &layout,
        "tampered",
        &[base(), tar_layer(&t.join("unique.tar"), &[Entry::File("unique", "only in this image")])],
        &ImageConfig::default(),
    );
    let layer = &digests.layers[1].digest;
    let blob = layout.join("blobs/sha256").join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let (status, err) = build(&realm, json!({"name": "tampered", "image": oci, "ext4": false})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["code"], "image_rejected", "{err}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains(layer.as_str()), "the message does not name the digest {layer}: {message}");
    assert!(message.contains("corrupt"), "{message}");
    assert!(!store_blob(&realm, layer).exists(), "the corrupt blob is in the store");
    assert_nothing_left(&realm, "tampered").await;
}

/// After a refused build of `name`: no template, no scratch or unpacked image, no partial blob.
async fn assert_nothing_left(realm: &Realm, name: &str) {
    let (status, body) = realm.get(&format!("/v1/templates/{name}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{name}: a template was registered: {body}");
    let left = names_in(&images_dir(realm));
    assert!(left.is_empty(), "{name}: left in {}: {left:?}", images_dir(realm).display());
    let partial: Vec<String> = names_in(&realm.data_dir.join("erebus/store/blobs/sha256"))
        .into_iter()
        .filter(|n| Digest::parse(&format!("sha256:{n}")).is_err())
        .collect();
    assert!(partial.is_empty(), "{name}: partial blobs left: {partial:?}");
}

#[tokio::test]
async fn whiteouts_and_opaque_directories_across_three_layers() {
    if !require(&[]) {
        return;
    }
    let realm = Realm::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    use Entry::{Dir, File};
    let l1 = tar_layer(
        &t.join("l1.tar"),
        &[
            Dir("a"),
            File("a/1", "a1"),
            File("a/2", "a2"),
            Dir("b"),
            File("b/x", "bx"),
            File("b/y", "by"),
            Dir("c"),
            File("c/f", "cf"),
            Dir("d"),
            File("d/keep", "dk"),
            File("d/gone", "dg"),
            Dir("e"),
            Dir("e/sub"),
            File("e/sub/deep", "deep"),
            File("top", "top"),
        ],
    );
    let l2 = tar_layer(
        &t.join("l2.tar"),
        &[
            File("a/.wh.1", ""),
            File("b/.wh..wh..opq", ""),
            File("b/new", "bnew"),
            File(".wh.c", ""),
            File("d/.wh.gone", ""),
            File("e/.wh..wh..opq", ""),
            Dir("e/sub2"),
            File("e/sub2/z", "z"),
            File(".wh.top", ""),
            Dir("top"),
            File("top/inside", "inside"),
        ],
    );
    let l3 = tar_layer(
        &t.join("l3.tar"),
        &[
            File("a/1", "a1-again"),
            File(".wh.b", ""),
            Dir("c"),
            File("c/back", "cback"),
            Dir("d"),
            // After its sibling in the same layer: it hides only what lower layers wrote.
            File("d/fresh", "fresh"),
            File("d/.wh..wh..opq", ""),
            File("e/sub2/.wh.z", ""),
            File(".wh.never-existed", ""),
        ],
    );
    let (oci, _) = image(&t.join("layout"), "wh", &[l1, l2, l3], &ImageConfig::default());
    let rec = built(&realm, "whiteouts", &oci, false).await;
    let rootfs = rootfs_of(&rec);
    let got: BTreeMap<String, String> = listing(&rootfs)
        .into_iter()
        .map(|(path, line)| {
            let kind = line.split(' ').next().unwrap().to_owned();
            let content = if kind == "file" { std::fs::read_to_string(rootfs.join(&path)).unwrap() } else { kind };
            (path, content)
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        ("a", "dir"),
        ("a/1", "a1-again"),
        ("a/2", "a2"),
        ("c", "dir"),
        ("c/back", "cback"),
        ("d", "dir"),
        ("d/fresh", "fresh"),
        ("e", "dir"),
        ("e/sub2", "dir"),
        ("top", "dir"),
        ("top/inside", "inside"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert!(got == expected, "whiteouts gave the wrong tree:\n{}", diff(&got, &expected));
}

#[tokio::test]
async fn the_ext4_image_is_clean_and_holds_the_rootfs() {
    if !require(&["mkfs.ext4", "e2fsck", "debugfs"]) {
        return;
    }
    let realm = Realm::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let oci = base_image(&realm, tmp.path());
    let rec = built(&realm, "withext4", &oci, true).await;
    let ext4 = PathBuf::from(rec["ext4"].as_str().unwrap_or_else(|| panic!("no ext4 image in the record: {rec}")));
    assert!(ext4.is_file(), "{}: {rec}", ext4.display());

    let fsck = Command::new(program("e2fsck").unwrap()).arg("-fn").arg(&ext4).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn {}: {}\n{}{}",
        ext4.display(),
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let ls = Command::new(program("debugfs").unwrap()).args(["-R", "ls -l /bin"]).arg(&ext4).output().unwrap();
    assert!(ls.status.success(), "debugfs: {}", String::from_utf8_lossy(&ls.stderr));
    let in_ext4: BTreeSet<String> = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|n| *n != "." && *n != "..")
        .map(str::to_owned)
        .collect();
    let in_rootfs: BTreeSet<String> = names_in(&rootfs_of(&rec).join("bin")).into_iter().collect();
    assert!(in_rootfs.len() > 100, "busybox's applets: {in_rootfs:?}");
    assert_eq!(in_ext4, in_rootfs, "debugfs ls -l /bin:\n{}", String::from_utf8_lossy(&ls.stdout));
}

#[tokio::test]
async fn rm_and_prune_free_what_no_template_uses() {
    if !require(&["mkfs.ext4"]) {
        return;
    }
    let realm = Realm::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    use Entry::File;
    let layout = t.join("layout");
    let base = LayerSource::Dir(realm.rootfs.clone());
    let (oci_a, _) = image(
        &layout,
        "a",
        &[base.clone(), tar_layer(&t.join("a.tar"), &[File("a.txt", "only in a")])],
        &ImageConfig::default(),
    );
    let (oci_b, _) = image(
        &layout,
        "b",
        &[base, tar_layer(&t.join("b.tar"), &[File("b.txt", "only in b")])],
        &ImageConfig::default(),
    );
    let a = built(&realm, "ta", &oci_a, true).await;
    let b = built(&realm, "tb", &oci_b, true).await;
    let (blobs_a, blobs_b) = (blobs_of(&a), blobs_of(&b));
    let shared: Vec<&String> = blobs_a.iter().filter(|d| blobs_b.contains(d)).collect();
    let only_a: Vec<&String> = blobs_a.iter().filter(|d| !blobs_b.contains(d)).collect();
    assert_eq!(shared.len(), 1, "the busybox layer is shared: {blobs_a:?} {blobs_b:?}");
    assert_eq!(only_a.len(), 2, "a's own layer and config: {blobs_a:?} {blobs_b:?}");
    for d in blobs_a.iter().chain(&blobs_b) {
        assert!(store_blob(&realm, d).is_file(), "{d} is not in the store");
    }
    let image_dir = |rec: &Value| {
        images_dir(&realm).join(rec["image"]["manifest_digest"].as_str().unwrap().trim_start_matches("sha256:"))
    };
    let (dir_a, dir_b) = (image_dir(&a), image_dir(&b));
    assert!(dir_a.join("rootfs").is_dir() && rootfs_of(&a).starts_with(&dir_a), "{a}");
    let ext4_b = PathBuf::from(b["ext4"].as_str().unwrap());

    // rm keeps the blobs (prune frees them).
    let (status, body) = realm.delete("/v1/templates/ta").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = realm.get("/v1/templates/ta").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for d in &blobs_a {
        assert!(store_blob(&realm, d).is_file(), "{d} went with rm, before prune");
    }

    let (status, pruned) = realm.post("/v1/templates/prune", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{pruned}");
    assert_eq!(pruned["blobs_removed"], 2, "{pruned}");
    assert_eq!(pruned["images_removed"], 1, "{pruned}");
    for d in &only_a {
        assert!(!store_blob(&realm, d).exists(), "{d} (only ta's) survived prune");
    }
    assert!(!dir_a.exists(), "ta's unpacked image survived prune: {}", dir_a.display());
    for d in &blobs_b {
        assert!(store_blob(&realm, d).is_file(), "{d} (tb's) was pruned");
    }
    assert!(dir_b.join("rootfs").is_dir() && ext4_b.is_file(), "tb's image was pruned");
    assert_eq!(run_in(&realm, "tb", &["cat", "/b.txt"], json!({})).await, "only in b");

    // A second prune has nothing to do.
    let (_, again) = realm.post("/v1/templates/prune", json!({})).await;
    assert_eq!((again["blobs_removed"].as_u64(), again["images_removed"].as_u64()), (Some(0), Some(0)), "{again}");
}

#[tokio::test]
async fn an_s3_store_holds_the_blobs_and_templates_still_run() {
    if !require(&[S3S_FS, "mkfs.ext4"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s3_dir = tmp.path().join("s3");
    let s3 = ScriptServer::start("s3.sh", &s3_dir, &[]);
    let keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"];
    let env: Vec<(&str, &str)> = keys.iter().map(|k| (*k, s3.var(k))).collect();
    let realm = Realm::start_with(&["--store", "s3://tartarus/tartarus-test"], &env).await;

    let oci = base_image(&realm, tmp.path());
    let rec = built(&realm, "ins3", &oci, true).await;
    let bucket = s3_dir.join("data/tartarus/tartarus-test");
    for d in blobs_of(&rec) {
        let object = bucket.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&object).unwrap_or_else(|e| {
            panic!("{d} is not in the bucket ({}: {e}); bucket has {:?}", object.display(), names_in(&bucket))
        });
        assert_eq!(Digest::of(&bytes).as_str(), d, "the object of {d} holds other bytes");
    }
    let manifest_hex = rec["image"]["manifest_digest"].as_str().unwrap().trim_start_matches("sha256:");
    let artifact = bucket.join(format!("artifacts/images/{manifest_hex}.ext4"));
    assert!(artifact.is_file(), "no ext4 artifact at {}", artifact.display());
    assert!(
        !realm.data_dir.join("erebus/store").exists()
            || names_in(&realm.data_dir.join("erebus/store/blobs/sha256")).is_empty(),
        "with an S3 store, the local store directory stays empty"
    );

    assert_eq!(run_in(&realm, "ins3", &["cat", "/srv/hello.txt"], json!({})).await, "hello from the image\n");

    // Removing the template and pruning frees everything it had in the bucket.
    let (status, body) = realm.delete("/v1/templates/ins3").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = realm.post("/v1/templates/prune", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!artifact.exists(), "the ext4 artifact outlived prune");
    for d in blobs_of(&rec) {
        assert!(!bucket.join("blobs/sha256").join(d.trim_start_matches("sha256:")).exists(), "{d} outlived prune");
    }
    drop(realm);
    drop(s3);
}

#[tokio::test]
async fn a_second_build_of_an_image_reuses_it() {
    if !require(&[]) {
        return;
    }
    let realm = Realm::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let oci = base_image(&realm, tmp.path());
    let first = built(&realm, "first", &oci, false).await;

    let req = realm
        .request(Method::POST, "/v1/templates/build")
        .json(&json!({"name": "second", "image": oci, "ext4": false}));
    let events: Vec<_> = realm.stream(req, BUILD_TIMEOUT).await.into_iter().map(|(_, ev)| ev).collect();
    let steps: Vec<String> = events
        .iter()
        .filter(|ev| ev.event == "progress")
        .map(|ev| ev.json()["step"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(steps.contains(&"reused".to_owned()), "no `reused` step: {steps:?}");
    assert!(!steps.contains(&"unpacking".to_owned()), "unpacked again: {steps:?}");
    let last = events.last().unwrap_or_else(|| panic!("no events"));
    assert_eq!(last.event, "template", "{events:?}");
    let second = last.json();
    assert_eq!(second["name"], "second", "{second}");
    assert_eq!(second["rootfs"], first["rootfs"], "the same unpacked image");
    assert_eq!(second["image"]["manifest_digest"], first["image"]["manifest_digest"]);

    // Both are registered; building a name twice is a conflict.
    let (status, body) = build(&realm, json!({"name": "second", "image": oci, "ext4": false})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(run_in(&realm, "second", &["cat", "/srv/hello.txt"], json!({})).await, "hello from the image\n");
}
