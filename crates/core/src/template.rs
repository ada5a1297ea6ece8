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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(TemplateName::parse("busybox").is_ok());
        assert!(TemplateName::parse("python-3.12_slim").is_ok());
        for bad in ["", "-x", "Busybox", "a/b", "..", &"x".repeat(65)] {
            assert!(TemplateName::parse(bad).is_err(), "{bad}");
        }
    }
}
