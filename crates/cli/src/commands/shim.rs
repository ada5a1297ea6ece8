//! `tartarus shim DIR` (internal): holds one sandbox's main process and records its exit.

use std::path::PathBuf;

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The sandbox directory (with shim.json).
    pub dir: PathBuf,
}

/// Runs the shim; its own exit code is 0 once the sandbox's exit is recorded.
pub fn execute(args: Args) -> i32 {
    // Stay alive through the hang-ups and interrupts meant for the agent.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    match tartarus_hecatoncheir::shim::run(&args.dir) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("tartarus shim: {e}");
            1
        }
    }
}
