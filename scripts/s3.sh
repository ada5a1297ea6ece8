#!/usr/bin/env bash
# A real S3-compatible server on loopback, for tests of the S3 blob store.
#
#   scripts/s3.sh start   [--port N] [--dir DIR] [--impl s3s|moto]
#   scripts/s3.sh stop    [--dir DIR]
#   scripts/s3.sh status  [--dir DIR]
#   scripts/s3.sh install [--impl s3s|moto]     (what scripts/setup.sh runs; start does it too)
#
# --port  port on 127.0.0.1 (default 15900; 0 picks a free one)
# --dir   state directory (default ${TMPDIR:-/tmp}/tartarus-s3): data/ (the objects, with s3s),
#         s3.pid, s3.log, and env (the lines printed below)
# --impl  the server (default s3s, or $TARTARUS_S3_IMPL):
#   s3s   s3s-fs (crates.io, the file-system server of the s3s project, whose S3 layer RustFS
#         also uses), built once with `cargo install` into /opt/tartarus/s3s-fs (about 3-4
#         minutes on 2 cores). Chosen as the default because it checks every request's SigV4
#         signature against the one configured key pair, as S3 does: unsigned or wrongly signed
#         requests get 403 (AccessDenied / SignatureDoesNotMatch), a PUT without a length 411.
#         Signing bugs (say, in how `sha256:` keys are encoded) fail here as they would on S3.
#         Objects are files under DIR/data/BUCKET, kept across restarts.
#   moto  moto's standalone server (PyPI `moto[server]`, in a venv at /opt/tartarus/venv-s3,
#         about 25 s to install). Broader S3 API, but it accepts any credentials and does not
#         check signatures, and it keeps objects in memory only (lost on stop).
#   Also looked at: Debian 12 packages no S3 server but Ceph's radosgw, which needs a Ceph
#   cluster; npm's s3rver is unmaintained since 2021 and accepted a wrong secret.
#
# `start` is idempotent (same settings: left alone; others: restarted), creates the bucket
# `tartarus` with a signed request, and returns once the server answers, within about a second
# once installed. It prints on stdout, as KEY=VALUE lines (also written to DIR/env):
#
#   S3_ENDPOINT=http://127.0.0.1:15900
#   S3_BUCKET=tartarus
#   AWS_ACCESS_KEY_ID=tartarus
#   AWS_SECRET_ACCESS_KEY=tartarus-secret
#   AWS_REGION=us-east-1
#   AWS_ENDPOINT_URL=http://127.0.0.1:15900     (the same, under the SDKs' and object_store's
#   AWS_ALLOW_HTTP=true                          names: AmazonS3Builder::from_env reads these)
#
# Requests must use path-style addressing (http://127.0.0.1:PORT/BUCKET/KEY).
# `status` prints `running pid N (IMPL)` and the same lines (exit 0), or `stopped` (exit 3).
# `stop` ends it (SIGTERM, then SIGKILL after 10 s); stopping a stopped server is not an error.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
default_port=15900
bucket=tartarus
access_key=tartarus
secret_key=tartarus-secret
region=us-east-1
s3s_version=0.14.1
s3s_root=/opt/tartarus/s3s-fs
s3s_bin=$s3s_root/bin/s3s-fs
venv=/opt/tartarus/venv-s3
moto_bin=$venv/bin/moto_server

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
log() { echo "s3: $*" >&2; }
die() {
    log "$*"
    exit 1
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
port=$default_port
dir="${TMPDIR:-/tmp}/tartarus-s3"
impl="${TARTARUS_S3_IMPL:-s3s}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) port="${2:?--port needs a value}"; shift 2 ;;
        --port=*) port="${1#*=}"; shift ;;
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        --dir=*) dir="${1#*=}"; shift ;;
        --impl) impl="${2:?--impl needs s3s or moto}"; shift 2 ;;
        --impl=*) impl="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ "$port" =~ ^[0-9]+$ && "$port" -le 65535 ]] || die "bad --port: $port"
case "$impl" in
    s3s | moto) ;;
    *) die "bad --impl: $impl (s3s or moto)" ;;
esac

# --- installing ---------------------------------------------------------------------------

install_s3s() {
    if [[ -x "$s3s_bin" ]] && [[ "$("$s3s_bin" --version 2>/dev/null)" == "s3s-fs $s3s_version" ]]; then
        return 0
    fi
    find_cargo || die "cargo not found: s3s-fs is built with cargo (or use --impl moto)"
    local target
    target="$(mktemp -d)"
    log "building s3s-fs $s3s_version into $s3s_root (cargo install; a few minutes, once)"
    # Its own target dir: neither the project's target/ nor a build lock shared with it.
    if ! env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR cargo install --quiet --locked \
        --root "$s3s_root" --target-dir "$target" --features binary --version "$s3s_version" \
        s3s-fs >&2; then
        rm -rf "$target"
        die "cargo install s3s-fs@$s3s_version failed (it needs rustc 1.92 or newer; or use --impl moto)"
    fi
    rm -rf "$target" "$s3s_root/.crates.toml" "$s3s_root/.crates2.json"
    log "installed $("$s3s_bin" --version)"
}

install_moto() {
    if [[ -x "$moto_bin" ]] && "$venv/bin/python" -c 'import moto.server, flask_cors' 2>/dev/null; then
        return 0
    fi
    # Debian's python3 (not a pyenv one that may be first on PATH): the venv must outlive shims.
    local py=/usr/bin/python3
    [[ -x "$py" ]] || apt_install python3
    "$py" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    log "installing moto[server] into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6' >&2 ||
        die "pip install moto[server] failed"
    log "installed moto $("$venv/bin/python" -c 'import moto; print(moto.__version__)')"
}

install_server() {
    command -v curl >/dev/null || apt_install curl ca-certificates
    command -v python3 >/dev/null || apt_install python3
    command -v flock >/dev/null || apt_install util-linux
    mkdir -p /opt/tartarus
    # One installer at a time (tests may start servers in parallel).
    exec 8>/opt/tartarus/.s3-install.lock
    flock -w 900 8 || die "timed out waiting for another install (/opt/tartarus/.s3-install.lock)"
    case "$impl" in
        s3s) install_s3s ;;
        moto) install_moto ;;
    esac
    exec 8>&-
}

if [[ "$cmd" == install ]]; then
    install_server
    exit 0
fi

# --- running ------------------------------------------------------------------------------
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
pidfile="$dir/s3.pid"
logfile="$dir/s3.log"
envfile="$dir/env"
settingsfile="$dir/settings"

# Serializes start/stop on one DIR, so parallel tests asking for the same server get one.
exec 9>"$dir/.lock"
flock -w 300 9 || die "timed out waiting for another start/stop on $dir"

setting() { sed -n "s/^$1=//p" "$settingsfile" 2>/dev/null || true; }

# The pid in the pid file, if that process is alive and is the server we started.
running_pid() {
    local pid bin
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    bin="$(setting bin)"
    [[ -n "$bin" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$bin " || return 1
    ! grep -q "^State:.*zombie" "/proc/$pid/status" 2>/dev/null || return 1
    echo "$pid"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A SigV4-signed request (curl --aws-sigv4); prints the HTTP status.
signed() {
    local method=(-X "$1") url="$2"
    [[ "$1" == HEAD ]] && method=(--head) # with -X HEAD curl would wait for a body
    curl -s -o /dev/null -m 5 -w '%{http_code}' "${method[@]}" \
        --aws-sigv4 "aws:amz:$region:s3" --user "$access_key:$secret_key" \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
        "$url" 2>/dev/null || true
}

stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [[ -d "/proc/$pid" ]] || break
        sleep 0.1
    done
    if [[ -d "/proc/$pid" ]]; then
        log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$pidfile"
    log "stopped pid $pid"
}

print_env() {
    local url="http://127.0.0.1:$1"
    cat >"$envfile" <<EOF
S3_ENDPOINT=$url
S3_BUCKET=$bucket
AWS_ACCESS_KEY_ID=$access_key
AWS_SECRET_ACCESS_KEY=$secret_key
AWS_REGION=$region
AWS_ENDPOINT_URL=$url
AWS_ALLOW_HTTP=true
EOF
    cat "$envfile"
}

# Starts the server on $1; returns 2 when the port turned out to be taken.
launch() {
    local port="$1" pid code i url="http://127.0.0.1:$1"
    local argv
    case "$impl" in
        s3s)
            mkdir -p "$dir/data"
            argv=("$s3s_bin" --host 127.0.0.1 --port "$port" --access-key "$access_key"
                --secret-key "$secret_key" "$dir/data")
            ;;
        moto) argv=("$moto_bin" -H 127.0.0.1 -p "$port") ;;
    esac
    : >>"$logfile"
    echo "--- $(date -u +%FT%TZ) start $impl on 127.0.0.1:$port" >>"$logfile"
    # A subshell of a script without job control is no process group leader, so setsid execs in
    # place (no fork): $! is the server's pid, in a session of its own that outlives us.
    # (The lock's fd 9 is closed in it, so a running server does not hold the lock.)
    (exec 9>&- && RUST_LOG="${RUST_LOG:-info}" exec setsid "${argv[@]}" </dev/null >>"$logfile" 2>&1) &
    pid=$!
    echo "$pid" >"$pidfile"
    printf 'impl=%s\nport=%s\nbin=%s\n' "$impl" "$port" "${argv[0]}" >"$settingsfile"
    for ((i = 0; i < 300; i++)); do
        if ! [[ -d "/proc/$pid" ]] || grep -q "^State:.*zombie" "/proc/$pid/status" 2>/dev/null; then
            rm -f "$pidfile"
            if tail -n 20 "$logfile" | grep -qi "address already in use"; then return 2; fi
            tail -n 20 "$logfile" >&2
            die "$impl exited at start (log: $logfile)"
        fi
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url/" 2>/dev/null || true)"
        [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && break
        sleep 0.1
    done
    if ! [[ "$code" =~ ^[1-5][0-9][0-9]$ ]]; then
        stop
        tail -n 20 "$logfile" >&2
        die "$url did not answer within 30 s (log: $logfile)"
    fi
    code="$(signed HEAD "$url/$bucket")"
    if [[ "$code" != 200 ]]; then
        code="$(signed PUT "$url/$bucket")"
        [[ "$code" == 200 ]] || { stop; die "creating bucket $bucket: HTTP $code (log: $logfile)"; }
    fi
    log "running $impl pid $pid on 127.0.0.1:$port (log: $logfile)"
    print_env "$port"
}

start() {
    local pid cur_port try rc
    install_server
    if pid="$(running_pid)"; then
        cur_port="$(setting port)"
        if [[ "$(setting impl)" == "$impl" && ("$port" == 0 || "$port" == "$cur_port") ]] &&
            [[ "$(signed HEAD "http://127.0.0.1:$cur_port/$bucket")" == 200 ]]; then
            log "already running $impl pid $pid on 127.0.0.1:$cur_port"
            print_env "$cur_port"
            return 0
        fi
        log "running with other settings: restarting"
        stop
    fi
    if [[ "$port" != 0 ]]; then
        port_in_use "$port" && die "127.0.0.1:$port is already in use by another process"
        rc=0
        launch "$port" || rc=$?
        [[ $rc -eq 2 ]] && die "127.0.0.1:$port is already in use by another process"
        return $rc
    fi
    for try in 1 2 3 4 5; do
        rc=0
        launch "$(free_port)" || rc=$?
        [[ $rc -eq 2 ]] || return $rc
        log "picked port was taken meanwhile (try $try): picking another"
    done
    die "could not find a free port"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running pid $pid ($(setting impl))"
        cat "$envfile"
    else
        echo "stopped"
        return 3
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
