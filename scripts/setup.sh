#!/usr/bin/env bash
# Prepares a Debian 12 (bookworm) machine for Tartarus. Idempotent; run as root.
#
#   scripts/setup.sh [--no-build] [TEMPLATE_DIR]
#
# 1. Debian packages: runsc (gVisor), busybox-static, iptables, iproute2, ca-certificates, curl;
#    for OCI images and their tests: docker-registry, skopeo, umoci, e2fsprogs, debootstrap,
#    apache2-utils (htpasswd), python3; redis-server for fleets (Olympus and agents) and their
#    tests. The package's own service is stopped and disabled when this installs it: a fleet's
#    Redis is started with scripts/redis.sh (AOF on, no eviction), tests start their own.
# 2. A newer runsc from Debian trixie, unpacked to /usr/local/lib/tartarus/runsc without adding
#    trixie to the system's apt sources (best effort: without it Tartarus uses bookworm's runsc,
#    which has no systrap platform, with ptrace).
# 3. `cargo build --release --locked -p tartarus`, installed as /usr/local/bin/tartarus
#    (skipped with --no-build).
# 4. The busybox template's root filesystem in TEMPLATE_DIR
#    (default /var/lib/tartarus-templates/busybox).
# 5. The S3 server the tests use (scripts/s3.sh install: s3s-fs, built once with cargo into
#    /opt/tartarus/s3s-fs; best effort).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build=1
template_dir=/var/lib/tartarus-templates/busybox
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        -h | --help)
            sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "setup: unknown option $arg" >&2
            exit 2
            ;;
        *) template_dir="$arg" ;;
    esac
done

step() { echo "==> $*"; }
warn() { echo "warning: $*" >&2; }
die() {
    echo "setup: $*" >&2
    exit 1
}

# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

[[ "$(id -u)" -eq 0 ]] || die "run as root (it installs packages and writes /usr/local)"
export DEBIAN_FRONTEND=noninteractive

# --- 1. Debian packages ---------------------------------------------------------------
packages=(runsc busybox-static iptables iproute2 ca-certificates curl
    docker-registry skopeo umoci e2fsprogs debootstrap apache2-utils python3 redis-server)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    step "debian packages present: ${packages[*]}"
else
    step "installing debian packages: ${missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The distro's redis-server service (/etc/redis/redis.conf: no AOF, port 6379) must not pass for
# the realm's Redis, nor take port 6379 at the next boot: stop and disable it. One that was
# already installed and runs is somebody's: leave it, and say that it is not set up for Tartarus.
distro_redis_running() {
    if [[ -d /run/systemd/system ]]; then
        systemctl is-active --quiet redis-server.service 2>/dev/null
    else
        [[ -f /run/redis/redis-server.pid ]] && kill -0 "$(cat /run/redis/redis-server.pid)" 2>/dev/null
    fi
}
distro_redis_enabled() {
    local links=(/etc/rc[2-5].d/S[0-9][0-9]redis-server)
    # `systemctl is-enabled` and `disable` work without a running systemd (containers, CI).
    { command -v systemctl >/dev/null && systemctl is-enabled --quiet redis-server.service 2>/dev/null; } ||
        [[ -e "${links[0]}" ]]
}
disable_distro_redis() {
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now --quiet redis-server.service || warn "could not disable redis-server.service"
        return 0
    fi
    # Without systemd the package's postinst may have started it through its init script.
    if [[ -x /etc/init.d/redis-server ]]; then /etc/init.d/redis-server stop >/dev/null 2>&1 || true; fi
    if command -v systemctl >/dev/null; then systemctl disable --quiet redis-server.service 2>/dev/null || true; fi
    update-rc.d redis-server disable >/dev/null 2>&1 || true
    ! distro_redis_enabled || warn "could not disable the redis-server service"
}
if [[ " ${missing[*]} " != *" redis-server "* ]] && distro_redis_running; then
    warn "the distro's redis-server service runs (/etc/redis/redis.conf, port 6379) and is not set up for" \
        "Tartarus (see tartarus doctor --redis redis://127.0.0.1:6379): start a fleet's Redis with" \
        "scripts/redis.sh start --port N, or stop that service (systemctl disable --now redis-server)"
elif distro_redis_running || distro_redis_enabled; then
    step "disabling the distro's redis-server service (a fleet's Redis: scripts/redis.sh start)"
    disable_distro_redis
fi

# --- 2. a newer runsc from trixie ---------------------------------------------------------
bundled=/usr/local/lib/tartarus/runsc
install_trixie_runsc() {
    local tmp deb
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/x"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        >"$tmp/sources.list"
    # A private apt: its own sources, lists and cache, so the system's sources stay bookworm only.
    local apt=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Get::List-Cleanup=0"
        -o "APT::Sandbox::User=root")
    apt-get "${apt[@]}" update -q || return 1
    (cd "$tmp" && apt-get "${apt[@]}" download runsc) || return 1
    local debs=("$tmp"/runsc_*.deb)
    deb="${debs[0]}"
    [[ -f "$deb" ]] || return 1
    dpkg-deb -x "$deb" "$tmp/x" || return 1
    [[ -x "$tmp/x/usr/bin/runsc" ]] || return 1
    "$tmp/x/usr/bin/runsc" --version >/dev/null 2>&1 || return 1
    mkdir -p "$(dirname "$bundled")"
    install -m 0755 "$tmp/x/usr/bin/runsc" "$bundled.new" || return 1
    mv -f "$bundled.new" "$bundled"
}
if [[ -x "$bundled" ]] && "$bundled" --version >/dev/null 2>&1; then
    step "newer runsc present: $bundled ($("$bundled" --version | head -n1))"
else
    step "installing runsc from debian trixie into $bundled"
    if install_trixie_runsc; then
        step "installed $bundled ($("$bundled" --version | head -n1))"
    else
        rm -f "$bundled.new"
        warn "could not install runsc from trixie; Tartarus will use $(command -v runsc || echo runsc) with --platform ptrace"
    fi
fi

# --- 3. the tartarus binary -------------------------------------------------------------
if [[ $build -eq 1 ]]; then
    find_cargo || die "cargo not found: install a Rust toolchain (1.80 or newer), e.g. with rustup"
    step "building tartarus (cargo build --release --locked -p tartarus)"
    (cd "$repo" && cargo build --release --locked -p tartarus)
    # Copy and rename, so a running `tartarus up` keeps its (old) binary intact.
    install -m 0755 "$repo/target/release/tartarus" /usr/local/bin/tartarus.new
    mv -f /usr/local/bin/tartarus.new /usr/local/bin/tartarus
    step "installed /usr/local/bin/tartarus ($(/usr/local/bin/tartarus --version))"
else
    step "skipping the tartarus build (--no-build)"
fi

# --- 4. the busybox template ----------------------------------------------------------------
if [[ -x "$template_dir/bin/busybox" ]] && cmp -s /bin/busybox "$template_dir/bin/busybox"; then
    step "busybox template present: $template_dir"
else
    step "building the busybox template in $template_dir"
    mkdir -p "$(dirname "$template_dir")"
    bash "$repo/scripts/busybox-rootfs.sh" "$template_dir"
fi

# --- 5. the tests' S3 server ---------------------------------------------------------------
# Fast when installed; the first time it builds s3s-fs (a few minutes). The tests' own
# `scripts/s3.sh start` would install it too, but once here keeps that out of test timeouts.
step "s3 server for the tests (scripts/s3.sh install)"
bash "$repo/scripts/s3.sh" install || warn "could not install the tests' S3 server; S3 tests will fail"

step "setup done"
