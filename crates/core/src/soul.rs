//! The soul: what a tenant asks for, and its validation into a [`SandboxSpec`].
//!
//! A [`SoulRequest`] is untrusted (it is an API body); [`SoulRequest::validate`] is the only
//! way to turn it into a [`SandboxSpec`], so everything downstream can rely on the limits here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::template::TemplateName;

/// Resources asked for by a soul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs (CPU quota in whole cores), 1–64.
    #[serde(default = "Resources::default_vcpus")]
    pub vcpus: u32,
    /// Memory limit in MiB, 16–65536. Exceeding it kills the sandbox.
    #[serde(default = "Resources::default_memory")]
    pub memory_mib: u64,
    /// Writable layer size in MiB, 1–1048576.
    #[serde(default = "Resources::default_disk")]
    pub disk_mib: u64,
}

impl Resources {
    fn default_vcpus() -> u32 {
        1
    }
    fn default_memory() -> u64 {
        256
    }
    fn default_disk() -> u64 {
        1024
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self { vcpus: Self::default_vcpus(), memory_mib: Self::default_memory(), disk_mib: Self::default_disk() }
    }
}

pub use crate::network::NetworkContract;

/// Phlegethon's heat classes: how hot (frequent, latency-sensitive) a workload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeatLevel {
    /// Rare, latency-tolerant.
    #[default]
    Cold,
    /// Regular.
    Warm,
    /// Frequent and latency-sensitive.
    Hot,
    /// Bursty and heavy.
    Inferno,
}

/// Size classes derived from resources, used for placement and profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceClass {
    /// At most 1 vCPU and 512 MiB.
    Ember,
    /// At most 4 vCPUs and 4 GiB.
    Flame,
    /// Anything larger.
    Blaze,
}

impl ResourceClass {
    /// The class of a set of resources.
    pub fn of(r: &Resources) -> Self {
        if r.vcpus <= 1 && r.memory_mib <= 512 {
            Self::Ember
        } else if r.vcpus <= 4 && r.memory_mib <= 4096 {
            Self::Flame
        } else {
            Self::Blaze
        }
    }
}

/// A duration given as `"30s"`, `"5m"`, `"1h 30m"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) if s.is_finite() && (0.0..1e12).contains(&s) => Ok(Self(Duration::from_secs_f64(s))),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!("{s} is not a duration in seconds"))),
            Raw::Text(t) => humantime::parse_duration(t.trim()).map(Self).map_err(|e| {
                serde::de::Error::custom(format!("{t:?} is not a duration ({e}); use e.g. \"30s\" or \"5m\""))
            }),
        }
    }
}

/// A request for a sandbox, exactly as a tenant sent it. Untrusted until validated.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SoulRequest {
    /// The template to start from, e.g. `busybox`.
    pub template: String,
    /// The main process, argv style. Absent: a session sandbox that stays up for `exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Environment variables for the main process and for `exec`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute). Default: the template's, else `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Resources; each field has a default.
    #[serde(default)]
    pub resources: Resources,
    /// Wall-clock limit ("30s", "5m" or seconds). Default 15 minutes, at most 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "30s")]
    pub max_duration: Option<HumanDuration>,
    /// Session sandboxes only: end after this long without an `exec`. Default 5 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "5m")]
    pub idle_timeout: Option<HumanDuration>,
    /// Session sandboxes only, with Hypnos enabled: put it to sleep after this long without an
    /// `exec` (instead of ending it at its idle timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10m")]
    pub sleep_after: Option<HumanDuration>,
    /// How long it may sleep before it is ended (reason `slept_too_long`). Default 24 hours, at
    /// most 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "24h")]
    pub max_sleep: Option<HumanDuration>,
    /// What it may reach: `"none"` (no interface, the default) or `{"egress": [rules], "hosts": [names]}` (Styx).
    #[serde(default)]
    pub network: NetworkContract,
    /// Free-form labels, filterable in listings.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Heat hint for Phlegethon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat: Option<HeatLevel>,
    /// Node labels the sandbox must run on (all of them), e.g. `{"zone": "a"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The isolation runtime: `gvisor` (the default), `qemu` or `firecracker`; only nodes
    /// offering it are considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Thanatos's post-mortem callback: an `http://` or `https://` URL POSTed the final record
    /// (JSON) once the sandbox has ended and its resources are released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// A validated soul: every field within limits. Built only by [`SoulRequest::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxSpec {
    /// Template name.
    #[schema(value_type = String)]
    pub template: TemplateName,
    /// Main process argv; `None` for a session sandbox.
    pub command: Option<Vec<String>>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Working directory; `None` uses the template's (its image's), else `/`.
    pub workdir: Option<String>,
    /// Resources.
    pub resources: Resources,
    /// Wall-clock limit in milliseconds.
    pub max_duration_ms: u64,
    /// Idle limit in milliseconds (session sandboxes).
    pub idle_timeout_ms: Option<u64>,
    /// Idle time after which Hypnos puts a session to sleep, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_after_ms: Option<u64>,
    /// Longest sleep, milliseconds.
    #[serde(default = "default_max_sleep_ms")]
    pub max_sleep_ms: u64,
    /// Network contract.
    pub network: NetworkContract,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The tenant who asked (from Cerberus, never from the body).
    pub tenant: String,
    /// Heat class.
    pub heat: HeatLevel,
    /// Node labels required of the node it runs on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The isolation runtime.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Where Thanatos POSTs the final record (see [`SoulRequest::callback_url`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// The runtimes a request may name.
pub const RUNTIMES: [&str; 3] = ["gvisor", "qemu", "firecracker"];

fn default_max_sleep_ms() -> u64 {
    limits::DEFAULT_MAX_SLEEP.as_millis() as u64
}

fn default_runtime() -> String {
    RUNTIMES[0].into()
}

impl SandboxSpec {
    /// The wall-clock limit.
    pub fn max_duration(&self) -> Duration {
        Duration::from_millis(self.max_duration_ms)
    }

    /// The idle limit, for session sandboxes.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout_ms.map(Duration::from_millis)
    }

    /// Idle time after which a session is put to sleep (Hypnos).
    pub fn sleep_after(&self) -> Option<Duration> {
        self.sleep_after_ms.map(Duration::from_millis)
    }

    /// Longest sleep.
    pub fn max_sleep(&self) -> Duration {
        Duration::from_millis(self.max_sleep_ms)
    }

    /// True for sandboxes without a main command (they wait for `exec`).
    pub fn is_session(&self) -> bool {
        self.command.is_none()
    }

    /// The size class.
    pub fn class(&self) -> ResourceClass {
        ResourceClass::of(&self.resources)
    }
}

/// Why a soul was refused before judgment: a field out of bounds. Always the tenant's to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// The offending field, dotted (`resources.memory_mib`).
    pub field: String,
    /// What is wrong and what is allowed.
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), problem: problem.into() }
}

/// Limits a soul must keep within.
pub mod limits {
    use std::time::Duration;
    /// vCPUs.
    pub const VCPUS: std::ops::RangeInclusive<u32> = 1..=64;
    /// Memory, MiB.
    pub const MEMORY_MIB: std::ops::RangeInclusive<u64> = 16..=65536;
    /// Writable layer, MiB.
    pub const DISK_MIB: std::ops::RangeInclusive<u64> = 1..=1_048_576;
    /// Longest `max_duration`.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
    /// Default `max_duration`.
    pub const DEFAULT_DURATION: Duration = Duration::from_secs(15 * 60);
    /// Default idle timeout of session sandboxes.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(5 * 60);
    /// Default `max_sleep`.
    pub const DEFAULT_MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);
    /// Longest `max_sleep`.
    pub const MAX_SLEEP: Duration = Duration::from_secs(30 * 24 * 3600);
    /// Most arguments in a command.
    pub const ARGS: usize = 4096;
    /// Most bytes in all arguments (or all environment) together.
    pub const ARG_BYTES: usize = 128 * 1024;
    /// Most environment variables.
    pub const ENV_VARS: usize = 512;
    /// Most labels.
    pub const LABELS: usize = 64;
}

/// Checks an argv (main command or `exec`).
pub fn validate_command(field: &str, argv: &[String]) -> Result<(), SpecError> {
    if argv.is_empty() || argv[0].trim().is_empty() {
        return Err(bad(field, "the command is empty; give a program to run, e.g. [\"echo\", \"hi\"]"));
    }
    if argv.len() > limits::ARGS {
        return Err(bad(field, format!("{} arguments; at most {}", argv.len(), limits::ARGS)));
    }
    if argv.iter().map(String::len).sum::<usize>() > limits::ARG_BYTES {
        return Err(bad(field, format!("arguments exceed {} bytes", limits::ARG_BYTES)));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(bad(field, "arguments may not contain NUL bytes"));
    }
    Ok(())
}

/// Checks environment variables (names are POSIX-portable, nothing contains NUL).
pub fn validate_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if env.len() > limits::ENV_VARS {
        return Err(bad(field, format!("{} variables; at most {}", env.len(), limits::ENV_VARS)));
    }
    if env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > limits::ARG_BYTES {
        return Err(bad(field, format!("environment exceeds {} bytes", limits::ARG_BYTES)));
    }
    for (k, v) in env {
        let name_ok = k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(bad(
                format!("{field}.{k}"),
                "variable names are letters, digits and _, not starting with a digit",
            ));
        }
        if v.contains('\0') {
            return Err(bad(format!("{field}.{k}"), "values may not contain NUL bytes"));
        }
    }
    Ok(())
}

/// Checks a working directory: absolute, no `..`, no NUL.
pub fn validate_workdir(field: &str, dir: &str) -> Result<(), SpecError> {
    if !dir.starts_with('/') || dir.contains('\0') || dir.split('/').any(|c| c == "..") || dir.len() > 4096 {
        return Err(bad(field, format!("{dir:?} must be an absolute path without `..`")));
    }
    Ok(())
}

/// Checks a label map: bounded count, keys of `[A-Za-z0-9._/-]{1,63}`, values without NUL.
pub fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if labels.len() > limits::LABELS {
        return Err(bad(field, format!("at most {} labels", limits::LABELS)));
    }
    for (k, v) in labels {
        let key_ok =
            (1..=63).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !key_ok {
            return Err(bad(format!("{field}.{k}"), "keys are 1-63 of letters, digits, . _ - /"));
        }
        if v.len() > 253 || v.contains('\0') {
            return Err(bad(format!("{field}.{k}"), "values are at most 253 bytes without NUL"));
        }
    }
    Ok(())
}

impl SoulRequest {
    /// Validates the request for `tenant`, filling defaults.
    pub fn validate(self, tenant: &str) -> Result<SandboxSpec, SpecError> {
        let template = TemplateName::parse(self.template.trim()).map_err(|e| bad("template", e.to_string()))?;
        if let Some(argv) = &self.command {
            validate_command("command", argv)?;
        }
        validate_env("env", &self.env)?;
        if let Some(w) = &self.workdir {
            validate_workdir("workdir", w)?;
        }
        let workdir = self.workdir;
        let r = self.resources;
        if !limits::VCPUS.contains(&r.vcpus) {
            return Err(bad("resources.vcpus", format!("{} is outside {:?}", r.vcpus, limits::VCPUS)));
        }
        if !limits::MEMORY_MIB.contains(&r.memory_mib) {
            return Err(bad(
                "resources.memory_mib",
                format!("{} MiB is outside {:?} MiB", r.memory_mib, limits::MEMORY_MIB),
            ));
        }
        if !limits::DISK_MIB.contains(&r.disk_mib) {
            return Err(bad("resources.disk_mib", format!("{} MiB is outside {:?} MiB", r.disk_mib, limits::DISK_MIB)));
        }
        let max = self.max_duration.map_or(limits::DEFAULT_DURATION, |d| d.0);
        if max.is_zero() || max > limits::MAX_DURATION {
            return Err(bad(
                "max_duration",
                format!("{} must be more than 0 and at most 24h", humantime::format_duration(max)),
            ));
        }
        let idle = match (&self.command, self.idle_timeout) {
            (Some(_), Some(_)) => {
                return Err(bad("idle_timeout", "only session sandboxes (without a command) have an idle timeout"))
            }
            (Some(_), None) => None,
            (None, Some(d)) if d.0.is_zero() => return Err(bad("idle_timeout", "must be more than 0")),
            (None, d) => Some(d.map_or(limits::DEFAULT_IDLE, |d| d.0)),
        };
        let sleep_after = match (&self.command, self.sleep_after) {
            (_, None) => None,
            (Some(_), Some(_)) => {
                return Err(bad("sleep_after", "only session sandboxes (without a command) sleep when idle"))
            }
            (None, Some(d)) if d.0.is_zero() => return Err(bad("sleep_after", "must be more than 0")),
            (None, Some(d)) => Some(d.0),
        };
        let max_sleep = self.max_sleep.map_or(limits::DEFAULT_MAX_SLEEP, |d| d.0);
        if max_sleep.is_zero() || max_sleep > limits::MAX_SLEEP {
            return Err(bad(
                "max_sleep",
                format!("{} must be more than 0 and at most 30 days", humantime::format_duration(max_sleep)),
            ));
        }
        self.network.validate().map_err(|e| bad("network", e))?;
        validate_labels("labels", &self.labels)?;
        validate_labels("node_selector", &self.node_selector)?;
        let runtime = match self.runtime.as_deref().map(str::trim) {
            None | Some("") => default_runtime(),
            Some(r) if RUNTIMES.contains(&r) => r.to_owned(),
            Some(r) => return Err(bad("runtime", format!("unknown runtime {r:?} (one of {})", RUNTIMES.join(", ")))),
        };
        Ok(SandboxSpec {
            template,
            command: self.command,
            env: self.env,
            workdir,
            resources: r,
            max_duration_ms: max.as_millis() as u64,
            // A session that sleeps when idle is not ended for idleness.
            idle_timeout_ms: idle.filter(|_| sleep_after.is_none()).map(|d| d.as_millis() as u64),
            sleep_after_ms: sleep_after.map(|d| d.as_millis() as u64),
            max_sleep_ms: max_sleep.as_millis() as u64,
            network: self.network,
            labels: self.labels,
            tenant: tenant.to_owned(),
            heat: self.heat.unwrap_or_default(),
            node_selector: self.node_selector,
            runtime,
            callback_url: match self.callback_url {
                None => None,
                Some(u) => Some(validate_callback("callback_url", &u)?),
            },
        })
    }
}

/// Checks a callback URL: `http://` or `https://`, a host, at most 2048 bytes, no whitespace.
pub fn validate_callback(field: &str, url: &str) -> Result<String, SpecError> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) || host.is_none_or(str::is_empty) {
        return Err(bad(field, format!("{url:?} is not an http:// or https:// URL with a host")));
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> SoulRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_fill_in() {
        let spec = req(r#"{"template":"busybox","command":["echo","hi"]}"#).validate("t").unwrap();
        assert_eq!(spec.resources, Resources::default());
        assert_eq!(spec.max_duration(), limits::DEFAULT_DURATION);
        assert_eq!(spec.idle_timeout(), None);
        assert_eq!(spec.workdir, None);
        let session = req(r#"{"template":"busybox","max_duration":"90s"}"#).validate("t").unwrap();
        assert!(session.is_session());
        assert_eq!(session.max_duration(), Duration::from_secs(90));
        assert_eq!(session.idle_timeout(), Some(limits::DEFAULT_IDLE));
    }

    #[test]
    fn durations_as_text_or_seconds() {
        assert_eq!(req(r#"{"template":"a","max_duration":2.5}"#).max_duration.unwrap().0, Duration::from_millis(2500));
        assert!(serde_json::from_str::<SoulRequest>(r#"{"template":"a","max_duration":"soon"}"#).is_err());
        assert!(serde_json::from_str::<SoulRequest>(r#"{"template":"a","max_duration":-1}"#).is_err());
    }

    #[test]
    fn refuses_what_is_out_of_bounds() {
        let cases = [
            (r#"{"template":"busybox","command":[]}"#, "command"),
            (r#"{"template":"busybox","command":[""]}"#, "command"),
            (r#"{"template":"Bad/Name"}"#, "template"),
            (r#"{"template":"busybox","resources":{"memory_mib":0}}"#, "resources.memory_mib"),
            (r#"{"template":"busybox","resources":{"memory_mib":99999999}}"#, "resources.memory_mib"),
            (r#"{"template":"busybox","resources":{"vcpus":1000}}"#, "resources.vcpus"),
            (r#"{"template":"busybox","max_duration":"48h"}"#, "max_duration"),
            (r#"{"template":"busybox","max_duration":0}"#, "max_duration"),
            (r#"{"template":"busybox","workdir":"tmp"}"#, "workdir"),
            (r#"{"template":"busybox","workdir":"/a/../b"}"#, "workdir"),
            (r#"{"template":"busybox","env":{"1X":"v"}}"#, "env.1X"),
            (r#"{"template":"busybox","command":["x"],"idle_timeout":"1m"}"#, "idle_timeout"),
        ];
        for (json, field) in cases {
            let err = req(json).validate("t").unwrap_err();
            assert_eq!(err.field, field, "{json}");
        }
    }

    #[test]
    fn negative_resources_do_not_parse() {
        assert!(serde_json::from_str::<SoulRequest>(r#"{"template":"a","resources":{"memory_mib":-5}}"#).is_err());
    }

    #[test]
    fn classes() {
        assert_eq!(ResourceClass::of(&Resources::default()), ResourceClass::Ember);
        assert_eq!(ResourceClass::of(&Resources { vcpus: 2, memory_mib: 2048, disk_mib: 1 }), ResourceClass::Flame);
        assert_eq!(ResourceClass::of(&Resources { vcpus: 8, memory_mib: 2048, disk_mib: 1 }), ResourceClass::Blaze);
    }
}
