#!/usr/bin/env bash
# A Redis set up for a Tartarus fleet (Olympus and agents), on loopback: it keeps what it
# acknowledges. Installs Debian's redis-server if it is missing (as root).
#
#   scripts/redis.sh start  [--port N] [--dir DIR]
#   scripts/redis.sh stop   [--port N] [--dir DIR]
#   scripts/redis.sh status [--port N] [--dir DIR]
#
# --port  port on 127.0.0.1 (default 6379; 0 picks a free one)
# --dir   state directory (default /var/lib/tartarus/redis): redis.conf, the append-only file
#         (appendonlydir/), redis.pid, redis.log, and env (the line printed below)
#
# The server runs daemonized with `appendonly yes`, `appendfsync everysec` (at most a second of
# acknowledged writes lost if the machine dies), `maxmemory-policy noeviction` (writes fail
# rather than records and queue entries vanish) and no RDB snapshots (`save ""`); that is what
# `tartarus doctor --redis URL` checks.
#
# `start` is idempotent: if the Redis of DIR runs on the same port it is left alone, on another
# port it is restarted (its data is kept). It returns once PING answers, and prints on stdout:
#
#   REDIS_URL=redis://127.0.0.1:6379
#
# `status` prints `running pid N` and the same line (exit 0), or `stopped` (exit 3).
# `stop` sends SHUTDOWN, which flushes and fsyncs the append-only file before Redis exits;
# stopping a stopped Redis is not an error. --port is optional for both: the Redis is the one of
# DIR. It never uses the package's system service (/etc/redis/redis.conf).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

bin=/usr/bin/redis-server
cli=/usr/bin/redis-cli
default_port=6379
# How long `start` waits for PING (a large append-only file takes a while to load).
start_wait_s=120
# How long `stop` waits for SHUTDOWN before it resorts to SIGKILL.
stop_wait_s=60

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
log() { echo "redis: $*" >&2; }
die() {
    log "$*"
    exit 1
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
port=""
dir=/var/lib/tartarus/redis
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) port="${2:?--port needs a value}"; shift 2 ;;
        --port=*) port="${1#*=}"; shift ;;
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        --dir=*) dir="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
case "$cmd" in
    start | stop | status) ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac
[[ -z "$port" || ("$port" =~ ^[0-9]+$ && "$port" -le 65535) ]] || die "bad --port: $port"
mkdir -p "$dir"
# Physical, as Redis reports it (CONFIG GET dir), so that serves_dir can compare.
dir="$(cd "$dir" && pwd -P)"
pidfile="$dir/redis.pid"
logfile="$dir/redis.log"
config="$dir/redis.conf"
envfile="$dir/env"

# Serializes start/stop on one DIR, so parallel tests asking for the same Redis get one.
exec 9>"$dir/.lock"
flock -w 300 9 || die "timed out waiting for another start/stop on $dir"

# The pid in the pid file, if that process is alive and is a redis-server.
running_pid() {
    local pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server ]] || return 1
    grep -q "^State:.*zombie" "/proc/$pid/status" 2>/dev/null && return 1
    echo "$pid"
}

# The port DIR's redis.conf says (the one its Redis listens on, if it runs).
config_port() { sed -n 's/^port //p' "$config" 2>/dev/null || true; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ping() { [[ "$("$cli" -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == PONG ]]; }

# Whether the Redis answering on $1 is the one of DIR.
serves_dir() { [[ "$("$cli" -h 127.0.0.1 -p "$1" --raw config get dir 2>/dev/null | sed -n 2p)" == "$dir" ]]; }

stop() {
    local pid cur i
    if ! pid="$(running_pid)"; then
        rm -f "$pidfile"
        return 0
    fi
    cur="$(config_port)"
    # SHUTDOWN (like SIGTERM, the fallback) writes out and fsyncs the append-only file first.
    if [[ -z "$cur" ]] || ! "$cli" -h 127.0.0.1 -p "$cur" shutdown >/dev/null 2>&1; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
    for ((i = 0; i < stop_wait_s * 10; i++)); do
        [[ -d "/proc/$pid" ]] || break
        sleep 0.1
    done
    if [[ -d "/proc/$pid" ]]; then
        log "pid $pid did not shut down in $stop_wait_s s: SIGKILL (the last second of writes may be lost)"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$pidfile"
    log "stopped pid $pid"
}

ensure_installed() {
    local need=()
    [[ -x "$bin" ]] || need+=(redis-server)
    [[ -x "$cli" ]] || need+=(redis-tools)
    command -v python3 >/dev/null || need+=(python3)
    [[ ${#need[@]} -eq 0 ]] && return 0
    apt_install "${need[@]}"
}

write_config() {
    cat >"$config.new" <<EOF
# Written by scripts/redis.sh; rewritten on every start.
bind 127.0.0.1
protected-mode yes
port $1
daemonize yes
supervised no
pidfile $pidfile
logfile $logfile
dir $dir
# What Redis acknowledged must survive its restart (tartarus doctor --redis checks these).
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
save ""
EOF
    mv -f "$config.new" "$config"
}

print_env() {
    echo "REDIS_URL=redis://127.0.0.1:$1" >"$envfile"
    cat "$envfile"
}

# Starts Redis on $1; returns 2 when the port turned out to be taken.
launch() {
    local port="$1" pid="" i from
    write_config "$port"
    rm -f "$pidfile"
    : >>"$logfile"
    from=$(($(wc -l <"$logfile") + 1))
    echo "--- $(date -u +%FT%TZ) start on 127.0.0.1:$port" >>"$logfile"
    # It daemonizes (a session of its own that outlives us) and writes the pid file itself. The
    # lock's fd 9 is closed in it, so a running Redis does not hold the lock.
    "$bin" "$config" 9>&- </dev/null >>"$logfile" 2>&1 || {
        tail -n 20 "$logfile" >&2
        die "redis-server failed to start (log: $logfile)"
    }
    for ((i = 0; i < start_wait_s * 10; i++)); do
        if [[ -z "$pid" ]]; then
            pid="$(running_pid)" || pid=""
        elif ! [[ -d "/proc/$pid" ]]; then
            pid=""
        fi
        if [[ -n "$pid" ]] && ping "$port" && serves_dir "$port"; then
            log "running pid $pid on 127.0.0.1:$port (log: $logfile)"
            print_env "$port"
            return 0
        fi
        # The daemon writes its pid file once it listens, and removes it when it exits.
        if [[ -z "$pid" ]] && tail -n "+$from" "$logfile" | grep -q "Address already in use"; then return 2; fi
        if [[ -z "$pid" && $i -ge 100 ]]; then
            tail -n "+$from" "$logfile" | tail -n 20 >&2
            die "redis-server is not running 10 s after its start (log: $logfile)"
        fi
        sleep 0.1
    done
    stop
    tail -n 20 "$logfile" >&2
    die "redis on 127.0.0.1:$port did not answer PING within $start_wait_s s (log: $logfile)"
}

start() {
    local pid cur try rc want="${port:-$default_port}"
    ensure_installed
    if pid="$(running_pid)"; then
        cur="$(config_port)"
        if [[ -n "$cur" && ("$want" == 0 || "$want" == "$cur") ]] && ping "$cur" && serves_dir "$cur"; then
            log "already running pid $pid on 127.0.0.1:$cur"
            print_env "$cur"
            return 0
        fi
        log "running on port ${cur:-?}, wanted $want: restarting"
        stop
    fi
    if [[ "$want" != 0 ]]; then
        port_in_use "$want" && die "127.0.0.1:$want is already in use by another process"
        launch "$want" || die "127.0.0.1:$want is already in use by another process"
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

# --port, if given to stop or status, must be the port of DIR's Redis.
check_port() {
    local cur
    cur="$(config_port)"
    if [[ -n "$port" && -n "$cur" && "$port" != "$cur" ]] && running_pid >/dev/null; then
        die "the Redis of $dir listens on port $cur, not $port"
    fi
}

status() {
    local pid
    check_port
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
    stop) check_port && stop ;;
    status) status ;;
esac
