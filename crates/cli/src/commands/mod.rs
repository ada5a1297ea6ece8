//! One module per verb; each has `Args` (or `Command`) and `execute`, returning the exit code.

pub mod agent;
pub mod bench;
pub mod daemon;
pub mod doctor;
pub mod exec;
pub mod failures;
pub mod hypnos;
pub mod inspect;
pub mod kill;
pub mod logs;
pub mod node;
pub mod olympus;
pub mod ps;
pub mod reconcile;
pub mod run;
pub mod shim;
pub mod snapshot;
pub mod template;
pub mod up;

use std::path::PathBuf;

/// Options every verb understands.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// The realm's API address.
    #[arg(long, global = true, env = "TARTARUS_API", default_value = "http://127.0.0.1:7070")]
    pub api: String,
    /// API token; default: the local data dir's admin.token.
    #[arg(long, global = true, env = "TARTARUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of the local realm (state, templates, sandboxes, admin.token).
    #[arg(long, global = true, env = "TARTARUS_DATA_DIR", default_value = "/var/lib/tartarus")]
    pub data_dir: PathBuf,
}
