//! Templates: named root filesystems that sandboxes start from.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A template name: 1–64 characters of `a-z0-9._-`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TemplateName(String);

/// A string that cannot name a template.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid template name (1-64 of a-z 0-9 . _ -, starting with a letter or digit)")]
pub struct InvalidTemplateName(pub String);

impl TemplateName {
    /// Checks a name that came from outside.
    pub fn parse(s: &str) -> Result<Self, InvalidTemplateName> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidTemplateName(s.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TemplateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TemplateName {
    type Error = InvalidTemplateName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TemplateName> for String {
    fn from(n: TemplateName) -> String {
        n.0
    }
}

/// What an image's config says a container should run with; the template's defaults, which a
/// sandbox request overrides.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct ImageDefaults {
    /// Prefixed to the command (Docker's semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The default command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User (`name`, `uid`, `uid:gid` or `name:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Where a template built from an image came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    /// The reference it was built from.
    pub reference: String,
    /// The manifest's digest (the image id for `docker save` archives).
    pub manifest_digest: String,
    /// Layer digests, bottom first (blobs in the store this template uses).
    pub layers: Vec<String>,
    /// The config blob's digest.
    pub config_digest: String,
    /// The image's defaults.
    pub defaults: ImageDefaults,
}

/// A registered template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateRecord {
    /// The template's name, as given to `--template`.
    #[schema(value_type = String)]
    pub name: TemplateName,
    /// The read-only root filesystem directory sandboxes start from.
    #[schema(value_type = String)]
    pub rootfs: PathBuf,
    /// Where it came from (the imported directory, later an image reference).
    pub source: String,
    /// Total size of the files in the root filesystem.
    pub size_bytes: u64,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// The image it was built from (absent for imported directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    /// The ext4 image of the root filesystem, for microVM runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ext4: Option<PathBuf>,
    /// Nyx's snapshot of a sandbox warmed on this template (kept when the template is replaced,
    /// so a snapshot of older content is recognised as stale and rebuilt, never used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
    /// Sandboxes of this template every node keeps ready (a warm pool), so a request is served
    /// by handing one over instead of booting or restoring; 0 keeps none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pool_size: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Most sandboxes a node keeps ready per template.
pub const MAX_POOL_SIZE: u32 = 64;

impl TemplateRecord {
    /// What identifies this template's content: its image's manifest digest, or for an imported
    /// directory, the import (a re-import is new content).
    pub fn content_id(&self) -> String {
        match &self.image {
            Some(i) => i.manifest_digest.clone(),
            None => format!("import:{}:{}", self.created_at.timestamp_micros(), self.size_bytes),
        }
    }

    /// The snapshot, if there is one made of this very content with `runtime_version`; otherwise
    /// why the snapshot cannot be used (`Ok(None)`: there is none).
    pub fn usable_snapshot(&self, runtime_version: &str) -> Result<Option<&SnapshotInfo>, String> {
        let Some(s) = &self.snapshot else { return Ok(None) };
        if s.template_content != self.content_id() {
            return Err(format!(
                "snapshot {} was made of older content of template {} ({}, now {})",
                s.id,
                self.name,
                s.template_content,
                self.content_id()
            ));
        }
        if s.runtime_version != runtime_version {
            return Err(format!(
                "snapshot {} was made by {}, not by this node's {runtime_version}",
                s.id, s.runtime_version
            ));
        }
        Ok(Some(s))
    }
}

/// Nyx's snapshot of a warmed sandbox: a checkpoint of its memory and processes, stored as one
/// compressed, content-addressed artifact in the blob store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// Its id (`snap-…`).
    pub id: String,
    /// [`TemplateRecord::content_id`] of the template it was made from.
    pub template_content: String,
    /// The runtime that made it (`gvisor`).
    pub runtime: String,
    /// That runtime's version and mode; another version never restores it.
    pub runtime_version: String,
    /// Digest of the compressed artifact (`sha256:…`).
    pub artifact: String,
    /// Size of the checkpoint, uncompressed.
    pub size_bytes: u64,
    /// Size of the compressed artifact.
    pub compressed_bytes: u64,
    /// The command run in the sandbox before the checkpoint, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_command: Option<Vec<String>>,
    /// Python modules imported by the resident interpreter the snapshot holds (none: no resident).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preload: Vec<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// How long making it took, milliseconds.
    pub took_ms: u64,
}

/// How Nyx warms a template before taking its snapshot (`POST /v1/templates/{name}/warm`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Warming {
    /// A warm-up command run in the sandbox to its end before the checkpoint; the files it writes
    /// are part of the snapshot (processes it leaves are not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Python modules (e.g. `pandas`) imported by a resident `python3` kept in the snapshot:
    /// a request `python3 -c CODE` on a sandbox restored from it is run by that interpreter, its
    /// imports done already. Other commands run as usual.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preload: Vec<String>,
}

impl Warming {
    /// The warming a snapshot was made with (to rebuild it alike).
    pub fn of(snapshot: &SnapshotInfo) -> Self {
        Self { command: snapshot.warm_command.clone(), preload: snapshot.preload.clone() }
    }

    /// Checks it: a command that names a program, and a preload list of at most 64 dotted
    /// Python module names.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(argv) = &self.command {
            crate::soul::validate_command("command", argv).map_err(|e| e.to_string())?;
        }
        if self.preload.len() > 64 {
            return Err(format!("preload: at most 64 modules, not {}", self.preload.len()));
        }
        for m in &self.preload {
            let ok = !m.is_empty()
                && m.len() <= 200
                && m.split('.').all(|part| {
                    part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !ok {
                return Err(format!("preload: {m:?} is not a Python module name (like pandas or os.path)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_names_are_python_module_names() {
        let w = |m: &[&str]| Warming { command: None, preload: m.iter().map(|s| s.to_string()).collect() };
        assert!(w(&["pandas", "os.path", "_x1"]).validate().is_ok());
        let empty = Warming { command: Some(vec![" ".into()]), preload: Vec::new() };
        assert!(empty.validate().unwrap_err().contains("command"), "an empty warm-up command");
        for bad in ["", "a-b", "1x", "a..b", "x;import os", "a b"] {
            assert!(w(&[bad]).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(TemplateName::parse("busybox").is_ok());
        assert!(TemplateName::parse("python-3.12_slim").is_ok());
        for bad in ["", "-x", "Busybox", "a/b", "..", &"x".repeat(65)] {
            assert!(TemplateName::parse(bad).is_err(), "{bad}");
        }
    }
}
