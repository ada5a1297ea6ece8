//! `tartarus bench`: measures a realm against raw `runsc run` on the same machine and prints
//! latency percentiles as JSON.
//!
//! The two are timed alternately, run by run, so both see the same machine load; the raw run
//! uses the bundle the gVisor runtime writes, over the same template rootfs, with the same
//! platform and overlay choices, so the difference is what Tartarus adds (API, judges, queue,
//! scheduling, cgroups, shim, recording).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tartarus_core::{HumanDuration, SandboxState, SoulRequest};
use tartarus_hecatoncheir::runtime::gvisor::{Platform, RunscInfo};

use super::Global;
use crate::client::Client;
use crate::output::{self, Format};
use crate::raw::{self, RawRun};

/// Untimed rounds of each before measuring.
const WARM_UP: u32 = 2;
/// The longest one run may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// The cgroup parent of the raw runs.
const CGROUP_PARENT: &str = "/tartarus-bench";

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
#[command(after_help = "Examples:
  tartarus up &
  sudo tartarus bench start --template busybox -n 50 > bench.json")]
pub enum Command {
    /// Time `echo hi` through the realm (POST /v1/sandboxes?wait=true) against raw `runsc run`
    /// of the same bundle, alternating; prints p50/p95/p99 as JSON.
    Start(StartArgs),
}

/// Arguments of `bench start`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  sudo tartarus bench start --template busybox -n 50
  sudo tartarus bench start --template busybox -n 20 --platform ptrace -o table

Progress goes to stderr, the result to stdout. Exit code 1 when any measured run failed.")]
pub struct StartArgs {
    /// Template to run `echo hi` in (its rootfs must be on this machine).
    #[arg(long, short = 't', value_name = "TEMPLATE")]
    pub template: String,
    /// Measured runs of each.
    #[arg(short = 'n', long = "runs", value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// Platform of the raw runs; `auto` makes the runtime's choice (systrap, else ptrace).
    #[arg(long, value_name = "PLATFORM", default_value = "auto",
          value_parser = ["auto", "systrap", "ptrace", "kvm"])]
    pub platform: String,
    /// The runsc of the raw runs (default: the one the runtime finds).
    #[arg(long, value_name = "PATH")]
    pub runsc: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub output: Format,
}

/// Runs the verb.
pub async fn execute(c: Command, g: &Global) -> anyhow::Result<i32> {
    match c {
        Command::Start(a) => start(a, g).await,
    }
}

/// Latencies of one contender.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Summary {
    name: &'static str,
    n: u32,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    mean_ms: Option<f64>,
    failures: u32,
}

#[derive(Debug, Serialize)]
struct Report {
    results: Vec<Summary>,
    ratio_p50: Option<f64>,
    overhead_p50_ms: Option<f64>,
}

/// What the raw runs share.
struct RawSetup {
    info: RunscInfo,
    platform: Platform,
    rootfs: PathBuf,
    tmp: tempfile::TempDir,
}

impl RawSetup {
    /// One raw `runsc run` of `echo hi`; its time, or why it failed.
    async fn once(&self, label: &str) -> Result<Duration, String> {
        let id = format!("tartarus-bench-{}-{label}", std::process::id());
        let bundle = self.tmp.path().join("bundles").join(&id);
        let upper = self.tmp.path().join("upper").join(&id);
        let cgroup = format!("{CGROUP_PARENT}/{id}");
        raw::write_bundle(&bundle, &self.rootfs, &["echo", "hi"], &cgroup)
            .map_err(|e| format!("cannot write the bundle {}: {e}", bundle.display()))?;
        std::fs::create_dir_all(&upper).map_err(|e| format!("cannot make {}: {e}", upper.display()))?;
        let overlay = tartarus_hecatoncheir::runtime::gvisor::overlay_flag(&self.info, &upper);
        let state = self.tmp.path().join("state");
        let run = RawRun {
            runsc: &self.info.path,
            root: &state,
            platform: self.platform,
            overlay: Some(overlay),
            bundle: &bundle,
            id: &id,
            limit: RUN_LIMIT,
        };
        let outcome = run.run().await;
        let _ = std::fs::remove_dir_all(&bundle);
        let _ = std::fs::remove_dir_all(&upper);
        raw::remove_cgroup(&cgroup);
        match outcome.failure {
            Some(f) => Err(f),
            None if outcome.stdout.trim() != "hi" => Err(format!("printed {:?} instead of \"hi\"", outcome.stdout)),
            None => Ok(outcome.elapsed),
        }
    }
}

/// One sandbox through the realm, waiting for its end; its time, or why it failed.
async fn tartarus_once(client: &Client, soul: &SoulRequest) -> Result<Duration, String> {
    let start = Instant::now();
    let rec = client.create(soul, true).await.map_err(|e| format!("{e:#}"))?;
    let elapsed = start.elapsed();
    match (rec.state, rec.exit_code) {
        (SandboxState::Exited, Some(0)) => Ok(elapsed),
        _ => Err(format!("sandbox {} {}", rec.id, rec.outcome())),
    }
}

async fn start(a: StartArgs, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let templates = client.templates().await.context("cannot list the realm's templates")?;
    let template = templates
        .into_iter()
        .find(|t| t.name.as_str() == a.template)
        .with_context(|| format!("the realm has no template {:?} (see `tartarus template ls`)", a.template))?;
    anyhow::ensure!(
        template.rootfs.is_dir(),
        "the rootfs of template {} ({}) is not on this machine: run bench on the realm's host",
        template.name,
        template.rootfs.display()
    );
    let explicit = a.runsc.clone();
    let info = tokio::task::spawn_blocking(move || RunscInfo::probe(explicit.as_deref()))
        .await?
        .map_err(anyhow::Error::msg)?;
    let platform = match Platform::parse(&a.platform).map_err(anyhow::Error::msg)? {
        Some(p) => p,
        None => raw::default_platform(&info),
    };
    let tmp =
        tempfile::Builder::new().prefix("tartarus-bench-").tempdir().context("cannot make a temporary directory")?;
    let setup = RawSetup { info, platform, rootfs: template.rootfs.clone(), tmp };
    let soul = SoulRequest {
        template: a.template.clone(),
        command: Some(vec!["echo".into(), "hi".into()]),
        max_duration: Some(HumanDuration(RUN_LIMIT)),
        ..SoulRequest::default()
    };
    eprintln!(
        "bench: `echo hi` in template {}: realm at {} vs runsc {} ({}), platform {}, {} runs each after {WARM_UP} warm-up rounds",
        template.name,
        client.base(),
        setup.info.version,
        setup.info.path.display(),
        platform.as_str(),
        a.n
    );

    for w in 1..=WARM_UP {
        if let Err(e) = tartarus_once(&client, &soul).await {
            eprintln!("bench: warm-up {w}: tartarus failed: {e}");
        }
        if let Err(e) = setup.once(&format!("w{w}")).await {
            eprintln!("bench: warm-up {w}: runsc-run failed: {e}");
        }
    }

    let (mut t_ms, mut r_ms) = (Vec::new(), Vec::new());
    let (mut t_fail, mut r_fail) = (0u32, 0u32);
    for i in 1..=a.n {
        let t = tartarus_once(&client, &soul).await;
        let r = setup.once(&i.to_string()).await;
        let show = |res: &Result<Duration, String>| match res {
            Ok(d) => format!("{:.1} ms", ms(*d)),
            Err(e) => format!("FAILED ({e})"),
        };
        eprintln!("bench: {i}/{}: tartarus {}, runsc-run {}", a.n, show(&t), show(&r));
        match t {
            Ok(d) => t_ms.push(ms(d)),
            Err(_) => t_fail += 1,
        }
        match r {
            Ok(d) => r_ms.push(ms(d)),
            Err(_) => r_fail += 1,
        }
    }
    raw::remove_cgroup(CGROUP_PARENT);

    let report = report(summarize("tartarus", a.n, t_ms, t_fail), summarize("runsc-run", a.n, r_ms, r_fail));
    match a.output {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => print!("{}", render(&report)),
    }
    Ok(if t_fail + r_fail > 0 { 1 } else { 0 })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The `p`th percentile (nearest rank) of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Percentiles and mean of the successful runs' latencies (ms).
fn summarize(name: &'static str, n: u32, mut samples: Vec<f64>, failures: u32) -> Summary {
    samples.sort_by(f64::total_cmp);
    let mean = (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64);
    let p = |q| percentile(&samples, q).map(round3);
    Summary { name, n, p50_ms: p(50.0), p95_ms: p(95.0), p99_ms: p(99.0), mean_ms: mean.map(round3), failures }
}

fn report(tartarus: Summary, runsc: Summary) -> Report {
    let (ratio, overhead) = match (tartarus.p50_ms, runsc.p50_ms) {
        (Some(t), Some(r)) if r > 0.0 => (Some(round3(t / r)), Some(round3(t - r))),
        (Some(t), Some(r)) => (None, Some(round3(t - r))),
        _ => (None, None),
    };
    Report { results: vec![tartarus, runsc], ratio_p50: ratio, overhead_p50_ms: overhead }
}

fn render(r: &Report) -> String {
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|s| {
            vec![
                s.name.to_owned(),
                s.n.to_string(),
                cell(s.p50_ms),
                cell(s.p95_ms),
                cell(s.p99_ms),
                cell(s.mean_ms),
                s.failures.to_string(),
            ]
        })
        .collect();
    let mut out = output::table(&["NAME", "N", "P50 ms", "P95 ms", "P99 ms", "MEAN ms", "FAILURES"], &rows);
    out.push_str(&format!(
        "p50 ratio {}, overhead {} ms\n",
        r.ratio_p50.map_or("-".to_owned(), |v| format!("{v:.2}")),
        cell(r.overhead_p50_ms)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summaries_and_report_shape() {
        let t = summarize("tartarus", 4, vec![40.0, 10.0, 30.0, 20.0], 0);
        assert_eq!((t.p50_ms, t.p99_ms, t.mean_ms), (Some(20.0), Some(40.0), Some(25.0)));
        let r = summarize("runsc-run", 4, vec![8.0, 8.0, 8.0], 1);
        let json = serde_json::to_string(&report(t, r)).unwrap();
        assert_eq!(
            json,
            r#"{"results":[{"name":"tartarus","n":4,"p50_ms":20.0,"p95_ms":40.0,"p99_ms":40.0,"mean_ms":25.0,"failures":0},{"name":"runsc-run","n":4,"p50_ms":8.0,"p95_ms":8.0,"p99_ms":8.0,"mean_ms":8.0,"failures":1}],"ratio_p50":2.5,"overhead_p50_ms":12.0}"#
        );
        let empty = report(summarize("tartarus", 1, vec![], 1), summarize("runsc-run", 1, vec![1.0], 0));
        assert_eq!((empty.ratio_p50, empty.overhead_p50_ms), (None, None));
    }
}
