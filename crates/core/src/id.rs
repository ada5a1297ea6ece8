//! Sandbox identifiers: `sb-` followed by 16 lowercase hex digits, random.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identifier of one sandbox, unique within a realm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

/// A string that is not a sandbox id.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a sandbox id (expected `sb-` and 16 hex digits)")]
pub struct InvalidId(pub String);

impl SandboxId {
    const PREFIX: &'static str = "sb-";

    /// A fresh random id.
    pub fn generate() -> Self {
        Self(format!("{}{:016x}", Self::PREFIX, rand::random::<u64>()))
    }

    /// Parses an id that came from outside (a URL path, a CLI argument).
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let hex = s
            .strip_prefix(Self::PREFIX)
            .filter(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        match hex {
            Some(_) => Ok(Self(s.to_owned())),
            None => Err(InvalidId(s.to_owned())),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SandboxId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        Self::parse(&s)
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let id = SandboxId::generate();
        assert_eq!(SandboxId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn rejects_foreign_strings() {
        for bad in ["", "sb-", "sb-123", "sb-ZZZZZZZZZZZZZZZZ", "../../etc/passwd", "xx-0123456789abcdef"] {
            assert!(SandboxId::parse(bad).is_err(), "{bad}");
        }
    }
}
