//! Parsers for command-line values the verbs share: `KEY=VALUE`, durations, ids and states.

use std::collections::BTreeMap;

use tartarus_core::{HumanDuration, SandboxId, SandboxState};

/// Parses `KEY=VALUE` (the value may itself contain `=`).
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Parses a duration: `30s`, `5m`, `1h 30m`, or a number of seconds.
pub fn duration(s: &str) -> Result<HumanDuration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if (0.0..1e12).contains(&secs) {
            return Ok(HumanDuration(std::time::Duration::from_secs_f64(secs)));
        }
    }
    humantime::parse_duration(s)
        .map(HumanDuration)
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 30s or 5m"))
}

/// Parses a sandbox id (`sb-` and 16 hex digits).
pub fn sandbox_id(s: &str) -> Result<SandboxId, String> {
    SandboxId::parse(s.trim()).map_err(|e| e.to_string())
}

/// Parses a state name (`running`, `exited`, …).
pub fn state(s: &str) -> Result<SandboxState, String> {
    SandboxState::parse(s.trim()).ok_or_else(|| {
        format!("{s:?} is not a state (queued, starting, running, paused, exited, killed, failed, lost)")
    })
}

/// `KEY=VALUE` pairs as a map; a later pair wins over an earlier one with the same key.
pub fn to_map(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn key_values() {
        assert_eq!(key_value("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(key_value("A=").unwrap(), ("A".into(), "".into()));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(duration("1m 30s").unwrap().0, Duration::from_secs(90));
        assert_eq!(duration("2.5").unwrap().0, Duration::from_millis(2500));
        assert!(duration("soon").is_err());
        assert!(duration("-1").is_err());
    }

    #[test]
    fn ids_and_states() {
        assert!(sandbox_id("sb-0123456789abcdef").is_ok());
        assert!(sandbox_id("../etc").is_err());
        assert_eq!(state("exited").unwrap(), SandboxState::Exited);
        assert!(state("zombie").is_err());
    }
}
