//! The judges' verdict: who approved a soul, and why, kept with its record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One judge's ruling on a soul.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ruling {
    /// The judge: `minos` (quota), `rhadamanthus` (policy) or `aeacus` (audit).
    pub judge: String,
    /// Whether this judge let the soul pass.
    pub approved: bool,
    /// Why, in words a tenant can act on.
    pub reason: String,
}

/// The verdict stamped on every admitted soul.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    /// The identity Cerberus recognised (the API key's principal).
    pub principal: String,
    /// Every judge's ruling, in the order they sat.
    pub rulings: Vec<Ruling>,
    /// When the verdict was given.
    pub judged_at: DateTime<Utc>,
}

impl Verdict {
    /// True when every judge approved.
    pub fn approved(&self) -> bool {
        self.rulings.iter().all(|r| r.approved)
    }

    /// The first refusal, if any.
    pub fn refusal(&self) -> Option<&Ruling> {
        self.rulings.iter().find(|r| !r.approved)
    }
}
