#!/usr/bin/env bash
# A real OCI distribution registry (Debian's docker-registry, distribution 2.8) on loopback,
# for tests that pull images. Runs as root; installs the package if it is missing.
#
#   scripts/registry.sh start  [--port N] [--auth USER:PASS] [--dir DIR]
#   scripts/registry.sh stop   [--dir DIR]
#   scripts/registry.sh status [--dir DIR]
#
# --port  port on 127.0.0.1 (default 15000; 0 picks a free one)
# --auth  require HTTP basic auth with this user and password (bcrypt htpasswd file)
# --dir   state directory (default ${TMPDIR:-/tmp}/tartarus-registry): config.yml, htpasswd,
#         data/ (the blobs), registry.pid, registry.log, and env (the lines printed below)
#
# `start` is idempotent: if the registry in DIR runs with the same settings it is left alone,
# with other settings it is restarted (its data/ is kept). It returns once `GET /v2/` answers
# (200, or 401 with --auth), usually in well under a second, and prints on stdout:
#
#   REGISTRY_URL=http://127.0.0.1:15000
#   REGISTRY_HOST=127.0.0.1:15000
#   REGISTRY_AUTH=USER:PASS          (only with --auth)
#
# `status` prints `running pid N` and the same lines (exit 0), or `stopped` (exit 3).
# `stop` ends it (SIGTERM, then SIGKILL after 10 s); stopping a stopped registry is not an error.
# It never uses the package's system service (/etc/docker/registry/config.yml, port 5000).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

bin=/usr/bin/docker-registry
default_port=15000

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
log() { echo "registry: $*" >&2; }
die() {
    log "$*"
    exit 1
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
port=$default_port
auth=""
dir="${TMPDIR:-/tmp}/tartarus-registry"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) port="${2:?--port needs a value}"; shift 2 ;;
        --port=*) port="${1#*=}"; shift ;;
        --auth) auth="${2:?--auth needs USER:PASS}"; shift 2 ;;
        --auth=*) auth="${1#*=}"; shift ;;
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        --dir=*) dir="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ "$port" =~ ^[0-9]+$ && "$port" -le 65535 ]] || die "bad --port: $port"
if [[ -n "$auth" && "$auth" != *:* ]]; then die "--auth wants USER:PASS"; fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
pidfile="$dir/registry.pid"
logfile="$dir/registry.log"
config="$dir/config.yml"
envfile="$dir/env"

# Serializes start/stop on one DIR, so parallel tests asking for the same registry get one.
exec 9>"$dir/.lock"
flock -w 300 9 || die "timed out waiting for another start/stop on $dir"

# The pid in the pid file, if that process is alive and is a docker-registry serving our config.
running_pid() {
    local pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$bin serve $config" || return 1
    echo "$pid"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

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

ensure_installed() {
    local need=()
    [[ -x "$bin" ]] || need+=(docker-registry)
    if [[ -n "$auth" ]] && ! command -v htpasswd >/dev/null; then need+=(apache2-utils); fi
    command -v curl >/dev/null || need+=(curl)
    command -v python3 >/dev/null || need+=(python3)
    [[ ${#need[@]} -eq 0 ]] && return 0
    apt_install "${need[@]}"
}

# The settings a running registry was started with, to tell whether `start` must restart it.
settings() { printf 'port=%s\nauth=%s\n' "$1" "$2"; }

write_config() {
    local port="$1" secret
    secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    mkdir -p "$dir/data"
    {
        cat <<EOF
# Written by scripts/registry.sh; rewritten on every start.
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  secret: $secret
  headers:
    X-Content-Type-Options: [nosniff]
EOF
        if [[ -n "$auth" ]]; then
            cat <<EOF
auth:
  htpasswd:
    realm: tartarus-test-registry
    path: $dir/htpasswd
EOF
        fi
    } >"$config.new"
    mv -f "$config.new" "$config"
    if [[ -n "$auth" ]]; then
        htpasswd -Bbn "${auth%%:*}" "${auth#*:}" >"$dir/htpasswd.new"
        mv -f "$dir/htpasswd.new" "$dir/htpasswd"
    else
        rm -f "$dir/htpasswd"
    fi
}

print_env() {
    local port="$1"
    {
        echo "REGISTRY_URL=http://127.0.0.1:$port"
        echo "REGISTRY_HOST=127.0.0.1:$port"
        if [[ -n "$auth" ]]; then echo "REGISTRY_AUTH=$auth"; fi
    } >"$envfile"
    cat "$envfile"
}

# Starts the registry on $1; returns 2 when the port turned out to be taken.
launch() {
    local port="$1" pid code want i
    write_config "$port"
    : >>"$logfile"
    echo "--- $(date -u +%FT%TZ) start on 127.0.0.1:$port" >>"$logfile"
    # A subshell of a script without job control is no process group leader, so setsid execs in
    # place (no fork): $! is the registry's pid, in a session of its own that outlives us.
    # (The lock's fd 9 is closed in it, so a running registry does not hold the lock.)
    (exec 9>&- && exec setsid "$bin" serve "$config" </dev/null >>"$logfile" 2>&1) &
    pid=$!
    echo "$pid" >"$pidfile"
    want=200
    [[ -n "$auth" ]] && want=401
    for ((i = 0; i < 300; i++)); do
        if ! [[ -d "/proc/$pid" ]] || grep -q "^State:.*zombie" "/proc/$pid/status" 2>/dev/null; then
            rm -f "$pidfile"
            if tail -n 20 "$logfile" | grep -q "address already in use"; then return 2; fi
            tail -n 20 "$logfile" >&2
            die "docker-registry exited at start (log: $logfile)"
        fi
        code="$(http_code "http://127.0.0.1:$port/v2/")"
        if [[ "$code" == "$want" ]]; then
            settings "$port" "$auth" >"$dir/settings"
            log "running pid $pid on 127.0.0.1:$port (log: $logfile)"
            print_env "$port"
            return 0
        fi
        sleep 0.1
    done
    stop
    tail -n 20 "$logfile" >&2
    die "GET http://127.0.0.1:$port/v2/ did not answer $want within 30 s (last: ${code:-none}; log: $logfile)"
}

start() {
    local pid cur_port try rc
    ensure_installed
    if pid="$(running_pid)"; then
        cur_port="$(sed -n 's/^port=//p' "$dir/settings" 2>/dev/null || true)"
        if [[ -n "$cur_port" && ("$port" == 0 || "$port" == "$cur_port") ]] &&
            [[ "$(settings "$cur_port" "$auth")" == "$(cat "$dir/settings")" ]]; then
            log "already running pid $pid on 127.0.0.1:$cur_port"
            print_env "$cur_port"
            return 0
        fi
        log "running with other settings: restarting"
        stop
    fi
    if [[ "$port" != 0 ]]; then
        port_in_use "$port" && die "127.0.0.1:$port is already in use by another process"
        launch "$port" || die "127.0.0.1:$port is already in use by another process"
        return 0
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
        echo "running pid $pid"
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
