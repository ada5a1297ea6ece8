#!/usr/bin/env bash
# The whole check, as CI runs it: prepares the machine (scripts/setup.sh), then formatting,
# clippy and every test, the integration tests against real gVisor sandboxes (as root).
# Exits non-zero on the first failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

step() { echo; echo "==> $*"; }

# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
find_cargo || {
    echo "test: cargo not found: install a Rust toolchain (1.80 or newer), e.g. with rustup" >&2
    exit 1
}

if [[ "$(id -u)" -eq 0 ]]; then
    step "setup (scripts/setup.sh --no-build: the tests build their own binary)"
    bash scripts/setup.sh --no-build
else
    echo "test: not root: skipping scripts/setup.sh; the sandbox tests will be skipped" >&2
fi

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test --workspace --locked"
cargo test --workspace --locked

step "all checks passed"
