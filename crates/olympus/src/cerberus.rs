//! Cerberus — who is calling: bearer API keys, compared in constant time.
//!
//! Only one key exists so far, the realm's admin key; each key maps to a principal and a tenant.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who (recorded in verdicts and the audit log).
    pub name: String,
    /// Whose quota and sandboxes.
    pub tenant: String,
}

/// The keys Cerberus knows.
#[derive(Clone)]
pub struct Cerberus {
    keys: Vec<(String, Principal)>,
}

impl Cerberus {
    /// Cerberus knowing only the admin key.
    pub fn with_admin_key(key: String) -> Self {
        Self { keys: vec![(key, Principal { name: "admin".into(), tenant: "default".into() })] }
    }

    /// The principal holding `presented`, checking every key in constant time.
    pub fn identify(&self, presented: &str) -> Option<Principal> {
        let mut found = None;
        for (key, who) in &self.keys {
            if bool::from(key.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(who.clone());
            }
        }
        found
    }
}

/// Middleware: rejects calls without a known bearer key; stores the [`Principal`] for handlers.
pub async fn guard(State(cerberus): State<Cerberus>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return Err(ApiError::Unauthorized(
            "missing `Authorization: Bearer <token>`; the admin token is in <data-dir>/admin.token".into(),
        ));
    };
    let Some(principal) = cerberus.identify(token.trim()) else {
        return Err(ApiError::Unauthorized("unknown API token".into()));
    };
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_only_the_exact_key() {
        let c = Cerberus::with_admin_key("s3cret".into());
        assert_eq!(c.identify("s3cret").unwrap().name, "admin");
        for wrong in ["", "s3cre", "s3cret2", "S3CRET"] {
            assert!(c.identify(wrong).is_none(), "{wrong}");
        }
    }
}
