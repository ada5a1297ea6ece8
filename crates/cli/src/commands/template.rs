//! `tartarus template`: registers directories as templates and lists them.

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
  scripts/busybox-rootfs.sh /var/lib/tartarus-templates/busybox
  tartarus template import /var/lib/tartarus-templates/busybox --name busybox
  tartarus template ls")]
pub enum Command {
    /// Register a directory (on the realm's machine) as a template; the realm copies it.
    Import(ImportArgs),
    /// List templates.
    Ls(LsArgs),
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
        Command::Import(a) => import(a, g).await,
        Command::Ls(a) => ls(a, g).await,
    }
}

async fn import(a: ImportArgs, g: &Global) -> anyhow::Result<i32> {
    let meta = std::fs::metadata(&a.dir).with_context(|| format!("cannot read {}", a.dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", a.dir.display());
    let dir = std::fs::canonicalize(&a.dir).with_context(|| format!("cannot resolve {}", a.dir.display()))?;
    let client = Client::new(g)?;
    let t = client
        .import_template(a.name.as_str(), &dir)
        .await
        .with_context(|| format!("cannot import {} as template {}", dir.display(), a.name))?;
    println!("imported template {} ({}, from {})", t.name, output::bytes(t.size_bytes), t.source);
    Ok(0)
}

async fn ls(a: LsArgs, g: &Global) -> anyhow::Result<i32> {
    let templates = Client::new(g)?.templates().await?;
    match a.output {
        Format::Json => output::print_json(&templates)?,
        Format::Table => print!("{}", render(&templates, Utc::now())),
    }
    Ok(0)
}

fn render(templates: &[TemplateRecord], now: chrono::DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = templates
        .iter()
        .map(|t| {
            vec![t.name.to_string(), output::bytes(t.size_bytes), output::ago(t.created_at, now), t.source.clone()]
        })
        .collect();
    output::table(&["NAME", "SIZE", "CREATED", "SOURCE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_templates() {
        let now: chrono::DateTime<Utc> = "2025-01-01T01:00:00Z".parse().unwrap();
        let t: TemplateRecord = serde_json::from_value(serde_json::json!({
            "name": "busybox", "rootfs": "/var/lib/tartarus/templates/busybox/rootfs",
            "source": "/srv/busybox", "size_bytes": 1982256, "created_at": "2025-01-01T00:00:00Z"
        }))
        .unwrap();
        assert_eq!(render(&[t], now), "NAME     SIZE     CREATED  SOURCE\nbusybox  1.9 MiB  1h ago   /srv/busybox\n");
    }
}
