//! Builds the hatch (`hatch/hatch.rs`) as a static binary, embedded in the agent, which mounts it
//! into warmed and pooled sandboxes as their first process (see `src/hatch.rs`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=hatch/hatch.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("tartarus-hatch");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(&rustc)
        .args(["--edition=2021", "-O", "-C", "panic=abort", "-C", "strip=symbols"])
        .args(["-C", "target-feature=+crt-static", "--target", &target, "--crate-name", "tartarus_hatch"])
        .arg("hatch/hatch.rs")
        .arg("-o")
        .arg(&out)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
    assert!(
        status.success(),
        "building the hatch failed ({status}); a static build needs the C library's static files (Debian: libc6-dev)"
    );
}
