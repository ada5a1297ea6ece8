#!/usr/bin/env bash
# Shell helpers shared by the project's scripts (sourced, not run).

# cargo is often not on root's PATH (rustup installs to ~/.cargo/bin; sudo resets PATH): look
# in root's home, then in the home of the user who ran sudo.
find_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    local home
    for home in "${HOME:-/root}" /root ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)"}; do
        if [[ -n "$home" && -x "$home/.cargo/bin/cargo" ]]; then
            export PATH="$home/.cargo/bin:$PATH"
            [[ -n "${RUSTUP_HOME:-}" || ! -d "$home/.rustup" ]] || export RUSTUP_HOME="$home/.rustup"
            return 0
        fi
    done
    return 1
}

# Installs Debian packages (as root), refreshing the package lists once if the first try fails.
# Expects the caller's `log` and `die`.
apt_install() {
    [[ "$(id -u)" -eq 0 ]] || die "missing $*; install as root: apt-get install $*"
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "$@" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q -o DPkg::Lock::Timeout=300 \
            --no-install-recommends "$@" >&2; } ||
        die "could not install $*"
}
