//! `tartarus template`: builds templates from OCI images, imports directories, lists, inspects
//! and removes them, and frees blobs no template uses.

use anyhow::Context;
use chrono::Utc;
use std::path::PathBuf;
use tartarus_core::{TemplateName, TemplateRecord};

use super::Global;
use crate::client::Client;
use crate::output::{self, Format};

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
#[command(after_help = "Examples:
  tartarus template build python --image localhost:5000/python:3 --insecure
  tartarus template build mine --image oci:./image-layout:latest
  tartarus template build python-ds                 # the built-in recipe
  tartarus template import /var/lib/tartarus-templates/busybox --name busybox
  tartarus template ls
  tartarus template inspect python
  tartarus template rm python && tartarus template prune
  tartarus template warm python-ds --command python3 -c 'import pandas'
  tartarus template pool python-ds 3")]
pub enum Command {
    /// Build a template from an OCI image (registry, oci: layout, docker-archive:) or a recipe.
    Build(BuildArgs),
    /// Show a template's record: source, digests, image defaults, ext4 image.
    Inspect(NameArgs),
    /// Remove a template (its image blobs stay until `prune`).
    Rm(NameArgs),
    /// Free the stored image blobs that no template uses.
    Prune,
    /// Register a directory (on the realm's machine) as a template; the realm copies it.
    Import(ImportArgs),
    /// List templates.
    Ls(LsArgs),
    /// Warm a template (Nyx): run a sandbox of it, checkpoint it, and restore later sandboxes
    /// from that snapshot instead of booting them.
    Warm(WarmArgs),
    /// Keep sandboxes of a template ready on every node (a warm pool), so a request only runs
    /// its command.
    Pool(PoolArgs),
}

/// Arguments of `template pool`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus template pool busybox 3      # every node keeps 3 ready
  tartarus template pool busybox 0      # no pool; ready sandboxes are released
  tartarus template ls                  # POOL: ready/size on the nodes alive, and served

Each node keeps SIZE sandboxes of the template running idle — restored from the template's
snapshot when it has a usable one (`tartarus template warm`), booted otherwise — within its
free slots and memory. A request for the template takes one: the sandbox's limits become the
request's and the command runs in it (its record says `launched_from: pool …`). A pooled sandbox
serves one request only and ends with it; the node starts another in the background. Olympus
prefers nodes with one ready. Replacing or re-warming the template replaces the pooled sandboxes.")]
pub struct PoolArgs {
    /// The template.
    #[arg(value_name = "NAME", value_parser = template_name)]
    pub name: TemplateName,
    /// Sandboxes each node keeps ready (0 to 64).
    #[arg(value_name = "SIZE")]
    pub size: u32,
}

/// Arguments of `template warm`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus template warm busybox
  tartarus template warm python-ds --preload pandas --preload numpy
  tartarus template warm python-ds --command python3 -c 'import pandas, numpy'
  tartarus template warm app --pool 4 --command sh -c 'app --prepare-cache'

Nyx starts a sandbox of the template whose first process is the hatch, a tiny static program
waiting for a command at the sandbox's door; runs the warm-up command in it to its end (it must
exit 0; the files it writes, in the root filesystem and in /tmp, are in the snapshot; processes
it leaves in the background are not); with --preload, replaces the hatch with a resident python3
that has imported those modules; then pauses the sandbox and checkpoints it. The checkpoint is
stored, compressed, in the realm's blob store. Later sandboxes of the template are restored from
it (their record says `launched_from: snapshot …`), each with a writable layer of its own, and
given their command at the door: the hatch becomes the command, so it runs as the sandbox's
first process exactly as in a booted sandbox. With --preload, a request `python3 -c CODE` is run
by the resident interpreter itself, its imports already done (the point: `import pandas` costs
nothing); any other command runs as usual. Warming again replaces the snapshot; `tartarus
snapshot rm` drops it. With --pool N every node then keeps N sandboxes restored from it ready
(`tartarus template pool`). Put --command last: everything after it is the warm-up command.")]
pub struct WarmArgs {
    /// The template.
    #[arg(value_name = "NAME", value_parser = template_name)]
    pub name: TemplateName,
    /// Keep a resident python3 in the snapshot that has imported MODULE (repeatable, or
    /// comma-separated); `python3 -c CODE` requests run in it.
    #[arg(long, value_name = "MODULE", value_delimiter = ',')]
    pub preload: Vec<String>,
    /// The warm-up command and its arguments (everything after --command).
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARGV")]
    pub command: Option<Vec<String>>,
    /// Then keep N sandboxes of it ready on every node (a warm pool).
    #[arg(long, value_name = "N")]
    pub pool: Option<u32>,
}

/// Arguments of `template import`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:
  tartarus template import /var/lib/tartarus-templates/busybox --name busybox")]
pub struct ImportArgs {
    /// The root filesystem directory (it must be on the realm's machine).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The template's name (a-z 0-9 . _ -), as given to `run --template`.
    #[arg(long, value_name = "NAME", value_parser = template_name)]
    pub name: TemplateName,
    /// Replace the template of that name (refused while live sandboxes use it); its snapshot,
    /// if any, becomes stale and is rebuilt at the next launch.
    #[arg(long)]
    pub replace: bool,
}

/// Arguments of `template build`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus template build python --image localhost:5000/python:3 --insecure
  TARTARUS_REGISTRY_USERNAME=me TARTARUS_REGISTRY_PASSWORD=secret \\
    tartarus template build app --image registry.example.com/team/app:1.2
  tartarus template build mine --image oci:/srv/layouts/mine:latest
  tartarus template build saved --image docker-archive:/srv/saved.tar
  tartarus template build python-ds     # built-in recipe: Debian python3 + numpy + pandas

Image references:
  HOST[:PORT]/REPO[:TAG][@DIGEST]   an OCI distribution registry (HTTPS; --insecure for HTTP)
  oci:DIR[:TAG]                     an OCI image layout directory on the realm's machine
  docker-archive:FILE               a `docker save` archive on the realm's machine

Every blob is verified against its digest; layers are unpacked without ever writing outside
the template. The image's Entrypoint, Cmd, Env, WorkingDir and User become the template's
defaults; a sandbox request overrides them.")]
pub struct BuildArgs {
    /// The template's name (or a recipe's name, without --image).
    #[arg(value_name = "NAME", value_parser = template_name)]
    pub name: TemplateName,
    /// The image to build from.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Allow plain HTTP to the registry (never for registries you do not run).
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name.
    #[arg(long, env = "TARTARUS_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Registry password (prefer the environment variable).
    #[arg(long, env = "TARTARUS_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Registry bearer token.
    #[arg(long, env = "TARTARUS_REGISTRY_TOKEN", hide_env_values = true, conflicts_with_all = ["username", "password"])]
    pub registry_token: Option<String>,
    /// A Docker-style credentials file (`{"auths": {"HOST": {"auth": base64("user:pass")}}}`),
    /// used when no credentials are given otherwise; default ~/.docker/config.json if present.
    #[arg(long, env = "TARTARUS_REGISTRY_AUTH_FILE", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Skip the ext4 image (only gVisor can then run the template).
    #[arg(long)]
    pub no_ext4: bool,
    /// Largest unpacked image, e.g. 8GiB.
    #[arg(long, value_name = "BYTES")]
    pub max_image_size: Option<u64>,
    /// Most files in the unpacked image.
    #[arg(long, value_name = "N")]
    pub max_image_entries: Option<u64>,
}

/// A template's name.
#[derive(clap::Args, Debug)]
pub struct NameArgs {
    /// The template.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Arguments of `template ls`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus template ls
  tartarus template ls -o json")]
pub struct LsArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

fn template_name(s: &str) -> Result<TemplateName, String> {
    TemplateName::parse(s).map_err(|e| e.to_string())
}

/// Runs the verb.
pub async fn execute(c: Command, g: &Global) -> anyhow::Result<i32> {
    match c {
        Command::Build(a) => build(a, g).await,
        Command::Inspect(a) => {
            output::print_json(&Client::new(g)?.template(&a.name).await?)?;
            Ok(0)
        }
        Command::Rm(a) => {
            let t = Client::new(g)?.remove_template(&a.name).await?;
            println!("removed template {} (run `tartarus template prune` to free its blobs)", t.name);
            Ok(0)
        }
        Command::Prune => {
            let (blobs, images, bytes) = Client::new(g)?.prune_templates().await?;
            println!("removed {blobs} unused blobs and {images} unused images, freed {}", output::bytes(bytes));
            Ok(0)
        }
        Command::Import(a) => import(a, g).await,
        Command::Ls(a) => ls(a, g).await,
        Command::Warm(a) => warm(a, g).await,
        Command::Pool(a) => {
            let t = Client::new(g)?.set_pool(a.name.as_str(), a.size).await?;
            say_pool(&t.name, t.pool_size);
            Ok(0)
        }
    }
}

fn say_pool(name: &TemplateName, size: u32) {
    match size {
        0 => println!("template {name}: no warm pool (pooled sandboxes are released)"),
        n => println!(
            "template {name}: every node keeps {n} ready (filling in the background; see `tartarus template ls`)"
        ),
    }
}

async fn warm(a: WarmArgs, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    eprintln!(
        "warming template {} (start, warm-up, {}pause, checkpoint)…",
        a.name,
        if a.preload.is_empty() { "" } else { "resident python3 importing its modules, " }
    );
    let warming = tartarus_core::Warming { command: a.command.clone(), preload: a.preload.clone() };
    let s = client
        .warm_template(a.name.as_str(), &warming)
        .await
        .with_context(|| format!("cannot warm template {}", a.name))?;
    println!(
        "snapshot {} of template {}: {} checkpoint, {} stored, made in {:.1} s",
        s.id,
        a.name,
        output::bytes(s.size_bytes),
        output::bytes(s.compressed_bytes),
        s.took_ms as f64 / 1000.0
    );
    if let Some(size) = a.pool {
        let t = client.set_pool(a.name.as_str(), size).await?;
        say_pool(&t.name, t.pool_size);
    }
    Ok(0)
}

async fn import(a: ImportArgs, g: &Global) -> anyhow::Result<i32> {
    let meta = std::fs::metadata(&a.dir).with_context(|| format!("cannot read {}", a.dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", a.dir.display());
    let dir = std::fs::canonicalize(&a.dir).with_context(|| format!("cannot resolve {}", a.dir.display()))?;
    let client = Client::new(g)?;
    let t = client
        .import_template_as(a.name.as_str(), &dir, a.replace)
        .await
        .with_context(|| format!("cannot import {} as template {}", dir.display(), a.name))?;
    println!("imported template {} ({}, from {})", t.name, output::bytes(t.size_bytes), t.source);
    Ok(0)
}

async fn build(a: BuildArgs, g: &Global) -> anyhow::Result<i32> {
    let credentials = match (&a.username, &a.password, &a.registry_token) {
        (_, _, Some(t)) => serde_json::json!({"kind": "bearer", "token": t}),
        (Some(u), Some(p), None) => serde_json::json!({"kind": "basic", "username": u, "password": p}),
        (Some(_), None, None) => anyhow::bail!("--username needs a password (TARTARUS_REGISTRY_PASSWORD)"),
        _ => match a.image.as_deref().and_then(|i| auth_file_credentials(i, a.auth_file.as_deref()).transpose()) {
            Some(c) => c?,
            None => serde_json::json!({"kind": "anonymous"}),
        },
    };
    let mut body = serde_json::json!({
        "name": a.name.as_str(),
        "insecure": a.insecure,
        "credentials": credentials,
        "ext4": !a.no_ext4,
        "max_image_bytes": a.max_image_size,
        "max_image_entries": a.max_image_entries,
    });
    match &a.image {
        Some(image) => body["image"] = serde_json::Value::String(absolute_local(image)?),
        None => body["recipe"] = serde_json::Value::String(a.name.to_string()),
    }
    let client = Client::new(g)?;
    let mut events = client.build_template(&body).await.with_context(|| format!("cannot build template {}", a.name))?;
    let mut progress = crate::progress::BuildProgress::new();
    while let Some(ev) = events.next().await {
        let ev = ev?;
        match ev.event.as_str() {
            "progress" => progress.show(&serde_json::from_str(&ev.data).unwrap_or_default()),
            "template" => {
                progress.finish();
                let t: TemplateRecord =
                    serde_json::from_str(&ev.data).context("the realm sent an unreadable template")?;
                let digest = t.image.as_ref().map_or("", |i| i.manifest_digest.as_str());
                println!("built template {} ({}, {digest})", t.name, output::bytes(t.size_bytes));
                return Ok(0);
            }
            "error" => {
                progress.finish();
                let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
                anyhow::bail!(
                    "cannot build template {}: {}: {}",
                    a.name,
                    v["code"].as_str().unwrap_or("error"),
                    v["message"].as_str().unwrap_or(&ev.data)
                );
            }
            _ => {}
        }
    }
    progress.finish();
    anyhow::bail!("the build of template {} stopped without an outcome; see `tartarus template ls`", a.name)
}

/// Credentials for `image`'s registry from a Docker-style config file, if it has some.
fn auth_file_credentials(image: &str, file: Option<&std::path::Path>) -> anyhow::Result<Option<serde_json::Value>> {
    use base64::Engine;
    if image.starts_with("oci:") || image.starts_with("docker-archive:") {
        return Ok(None);
    }
    let default = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"));
    let path = match (file, default) {
        (Some(f), _) => f.to_owned(),
        (None, Some(d)) if d.is_file() => d,
        _ => return Ok(None),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let host = image.split('/').next().unwrap_or_default();
    let Some(entry) = doc["auths"].as_object().and_then(|a| {
        a.iter()
            .find(|(k, _)| k.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/') == host)
    }) else {
        return Ok(None);
    };
    let entry = entry.1;
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok(Some(serde_json::json!({"kind": "basic", "username": u, "password": p})));
    }
    if let Some(token) = entry["registrytoken"].as_str().or(entry["identitytoken"].as_str()) {
        return Ok(Some(serde_json::json!({"kind": "bearer", "token": token})));
    }
    let Some(auth) = entry["auth"].as_str() else { return Ok(None) };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .with_context(|| format!("{}: the auth of {host} is not base64", path.display()))?;
    let decoded =
        String::from_utf8(decoded).with_context(|| format!("{}: the auth of {host} is not text", path.display()))?;
    let (u, p) = decoded
        .split_once(':')
        .with_context(|| format!("{}: the auth of {host} is not user:password", path.display()))?;
    Ok(Some(serde_json::json!({"kind": "basic", "username": u, "password": p})))
}

/// `oci:` and `docker-archive:` paths made absolute, since the realm resolves them, not us.
fn absolute_local(image: &str) -> anyhow::Result<String> {
    for prefix in ["oci:", "docker-archive:"] {
        if let Some(rest) = image.strip_prefix(prefix) {
            if !rest.starts_with('/') {
                let cwd = std::env::current_dir().context("cannot read the current directory")?;
                return Ok(format!("{prefix}{}", cwd.join(rest).display()));
            }
        }
    }
    Ok(image.to_owned())
}

async fn ls(a: LsArgs, g: &Global) -> anyhow::Result<i32> {
    let (templates, pools) = Client::new(g)?.templates_and_pools().await?;
    match a.output {
        Format::Json => output::print_json(&serde_json::json!({ "templates": templates, "pools": pools }))?,
        Format::Table => print!("{}", render(&templates, &pools, Utc::now())),
    }
    Ok(0)
}

fn render(
    templates: &[TemplateRecord],
    pools: &std::collections::BTreeMap<String, crate::client::PoolView>,
    now: chrono::DateTime<Utc>,
) -> String {
    let rows: Vec<Vec<String>> = templates
        .iter()
        .map(|t| {
            let digest = t
                .image
                .as_ref()
                .map_or("-".to_owned(), |i| i.manifest_digest.trim_start_matches("sha256:").chars().take(12).collect());
            vec![
                t.name.to_string(),
                output::bytes(t.size_bytes),
                digest,
                output::ago(t.created_at, now),
                match &t.snapshot {
                    None => "-".to_owned(),
                    Some(s) if s.template_content != t.content_id() => format!("{} (stale)", s.id),
                    Some(s) => s.id.clone(),
                },
                match pools.get(t.name.as_str()) {
                    None => "-".to_owned(),
                    Some(p) => format!("{}/{} ({} served)", p.ready, p.size * p.nodes, p.served),
                },
                t.source.clone(),
            ]
        })
        .collect();
    output::table(&["NAME", "SIZE", "DIGEST", "CREATED", "SNAPSHOT", "POOL", "SOURCE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_an_auth_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        // base64("alice:s3cret")
        std::fs::write(&file, r#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcmV0"},"other":{"auth":"eA=="}}}"#)
            .unwrap();
        let c = auth_file_credentials("127.0.0.1:5000/app:1", Some(&file)).unwrap().unwrap();
        assert_eq!(c, serde_json::json!({"kind": "basic", "username": "alice", "password": "s3cret"}));
        assert_eq!(auth_file_credentials("elsewhere:5000/app:1", Some(&file)).unwrap(), None);
        assert_eq!(auth_file_credentials("oci:/x:1", Some(&file)).unwrap(), None);
        assert!(auth_file_credentials("other/app:1", Some(&file)).is_err(), "not user:password");
    }

    #[test]
    fn lists_templates() {
        let now: chrono::DateTime<Utc> = "2025-01-01T01:00:00Z".parse().unwrap();
        let t: TemplateRecord = serde_json::from_value(serde_json::json!({
            "name": "busybox", "rootfs": "/var/lib/tartarus/templates/busybox/rootfs",
            "source": "/srv/busybox", "size_bytes": 1982256, "created_at": "2025-01-01T00:00:00Z"
        }))
        .unwrap();
        assert_eq!(
            render(std::slice::from_ref(&t), &Default::default(), now),
            "NAME     SIZE     DIGEST  CREATED  SNAPSHOT  POOL  SOURCE\nbusybox  1.9 MiB  -       1h ago   -         -     /srv/busybox\n"
        );
        let pools = [("busybox".to_owned(), crate::client::PoolView { size: 3, ready: 2, served: 7, nodes: 1 })];
        assert!(render(&[t], &pools.into_iter().collect(), now).contains("  2/3 (7 served)  "));
    }
}
