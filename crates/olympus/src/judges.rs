//! The Judges — Minos (quota), Rhadamanthus (policy) and Aeacus (audit) give each soul its verdict.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tartarus_core::{Ruling, SandboxSpec, Verdict};
use tartarus_store::SandboxStore;

use crate::cerberus::Principal;
use crate::error::ApiError;

/// One judge of the tribunal.
#[async_trait]
pub trait Judge: Send + Sync {
    /// The judge's name, as recorded in verdicts.
    fn name(&self) -> &'static str;
    /// Rules on a soul. `Err` only when the judge could not rule (a store failure).
    async fn rule(&self, who: &Principal, spec: &SandboxSpec) -> Result<Ruling, ApiError>;
}

fn ruling(judge: &str, approved: bool, reason: impl Into<String>) -> Ruling {
    Ruling { judge: judge.into(), approved, reason: reason.into() }
}

/// Minos — quota: how many live sandboxes a tenant may have.
pub struct Minos {
    /// The store, to count live sandboxes.
    pub store: Arc<dyn SandboxStore>,
    /// Most sandboxes not yet ended, per tenant.
    pub max_live_per_tenant: usize,
}

#[async_trait]
impl Judge for Minos {
    fn name(&self) -> &'static str {
        "minos"
    }

    async fn rule(&self, who: &Principal, _spec: &SandboxSpec) -> Result<Ruling, ApiError> {
        let live = self.store.count_live(&who.tenant).await?;
        Ok(if live < self.max_live_per_tenant {
            ruling(self.name(), true, format!("{live} of {} live sandboxes in use", self.max_live_per_tenant))
        } else {
            ruling(
                self.name(),
                false,
                format!(
                    "tenant {} already has {live} live sandboxes (quota {}); wait for some to end or kill them",
                    who.tenant, self.max_live_per_tenant
                ),
            )
        })
    }
}

/// The policy Rhadamanthus applies (Themis's law).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Largest memory a sandbox may ask for, MiB.
    pub max_memory_mib: u64,
    /// Most vCPUs a sandbox may ask for.
    pub max_vcpus: u32,
    /// Longest `max_duration`.
    pub max_duration: Duration,
    /// Where sandboxes may be allowed to reach (Styx): every egress rule must lie inside one of
    /// these networks, and host names (resolved only later, by the node) need `0.0.0.0/0`.
    pub egress_within: Vec<tartarus_core::network::Cidr>,
}

impl Policy {
    /// Every egress allowed (`0.0.0.0/0`).
    pub fn any_egress() -> Vec<tartarus_core::network::Cidr> {
        vec![tartarus_core::network::Cidr { addr: std::net::Ipv4Addr::UNSPECIFIED, prefix: 0 }]
    }

    /// Why `spec`'s network contract is wider than this policy allows, if it is.
    fn network_too_wide(&self, spec: &SandboxSpec) -> Option<String> {
        let within = |c: &tartarus_core::network::Cidr| self.egress_within.iter().any(|w| w.covers(c));
        let allowed = || self.egress_within.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        if let Some(r) = spec.network.egress.iter().find(|r| !within(&r.cidr)) {
            return Some(format!("network: egress to {} is outside what this realm allows ({})", r.cidr, allowed()));
        }
        if !spec.network.hosts.is_empty() && !within(&Self::any_egress()[0]) {
            return Some(format!(
                "network: host names may resolve anywhere; this realm allows egress only within {}",
                allowed()
            ));
        }
        None
    }
}

/// Rhadamanthus — policy: what a single soul may ask for.
pub struct Rhadamanthus {
    /// The policy in force.
    pub policy: Policy,
}

#[async_trait]
impl Judge for Rhadamanthus {
    fn name(&self) -> &'static str {
        "rhadamanthus"
    }

    async fn rule(&self, _who: &Principal, spec: &SandboxSpec) -> Result<Ruling, ApiError> {
        let p = &self.policy;
        let r = &spec.resources;
        Ok(if r.memory_mib > p.max_memory_mib {
            ruling(
                self.name(),
                false,
                format!("memory {} MiB is above this realm's limit of {} MiB", r.memory_mib, p.max_memory_mib),
            )
        } else if r.vcpus > p.max_vcpus {
            ruling(self.name(), false, format!("{} vCPUs is above this realm's limit of {}", r.vcpus, p.max_vcpus))
        } else if spec.max_duration() > p.max_duration {
            ruling(
                self.name(),
                false,
                format!("max_duration is above this realm's limit of {}", humantime(p.max_duration)),
            )
        } else if let Some(why) = p.network_too_wide(spec) {
            ruling(self.name(), false, why)
        } else {
            ruling(self.name(), true, "within policy")
        })
    }
}

fn humantime(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Aeacus — audit: every verdict, approved or not, appended to a JSON-lines file.
pub struct Aeacus {
    log: Arc<Mutex<std::fs::File>>,
}

impl Aeacus {
    /// Appends to `path` (created if absent, readable by its owner only).
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(Self { log: Arc::new(Mutex::new(f)) })
    }

    /// Writes one line for `verdict`; an approval that cannot be audited is not an approval.
    async fn record(&self, verdict: &Verdict, spec: &SandboxSpec) -> Result<(), ApiError> {
        let line = serde_json::json!({
            "at": verdict.judged_at,
            "principal": verdict.principal,
            "tenant": spec.tenant,
            "template": spec.template,
            "command": spec.command,
            "resources": spec.resources,
            "approved": verdict.approved(),
            "rulings": verdict.rulings,
        });
        // One write per verdict: a whole line or nothing, and no per-token system calls.
        let mut bytes = serde_json::to_vec(&line).expect("verdicts serialize");
        bytes.push(b'\n');
        let log = self.log.clone();
        let written = tokio::task::spawn_blocking(move || log.lock().expect("lock").write_all(&bytes))
            .await
            .expect("audit task panicked");
        written.map_err(|e| ApiError::Internal(format!("the audit log cannot be written, so nothing is admitted: {e}")))
    }
}

/// The tribunal: the judges in order, then the audit.
pub struct Tribunal {
    /// Judges that may refuse, in order.
    pub judges: Vec<Arc<dyn Judge>>,
    /// The audit.
    pub aeacus: Aeacus,
}

impl Tribunal {
    /// Judges a soul: a verdict when all approve, else the first refusal as an error.
    pub async fn judge(&self, who: &Principal, spec: &SandboxSpec) -> Result<Verdict, ApiError> {
        let mut rulings = Vec::new();
        for j in &self.judges {
            let r = j.rule(who, spec).await?;
            let refused = !r.approved;
            rulings.push(r);
            if refused {
                break;
            }
        }
        rulings.push(ruling("aeacus", true, "recorded in the audit log"));
        let verdict = Verdict { principal: who.name.clone(), rulings, judged_at: Utc::now() };
        self.aeacus.record(&verdict, spec).await?;
        match verdict.refusal() {
            Some(r) if r.judge == "minos" => Err(ApiError::QuotaExceeded(r.reason.clone())),
            Some(r) => Err(ApiError::PolicyDenied(r.reason.clone())),
            None => Ok(verdict),
        }
    }
}
