#!/usr/bin/env bash
# From a fresh Debian 12 machine to a first sandbox: sets the machine up, starts a realm in
# the background (or reuses the one answering on 127.0.0.1:7070), registers the busybox
# template, builds the python-ds template (Debian python3 + numpy + pandas, packed as an OCI
# image and imported like any other; a few minutes the first time), and runs the pandas example
# in a gVisor sandbox. Run as root.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_dir=/var/lib/tartarus
template_dir=/var/lib/tartarus-templates/busybox
log=/var/log/tartarus-up.log
pidfile=/run/tartarus-up.pid
health=http://127.0.0.1:7070/healthz
tartarus=/usr/local/bin/tartarus

step() { echo "==> $*"; }
die() {
    echo "quickstart: $*" >&2
    exit 1
}

[[ "$(id -u)" -eq 0 ]] || die "run as root (sandboxes need root for gVisor and cgroups)"

bash "$repo/scripts/setup.sh" "$template_dir"

export TARTARUS_DATA_DIR="$data_dir"
export TARTARUS_API=http://127.0.0.1:7070
healthy() { curl -fsS --max-time 2 "$health" >/dev/null 2>&1; }

if healthy; then
    step "a realm already answers on $health: using it"
else
    step "starting the realm: tartarus up (log: $log, pid: $pidfile)"
    mkdir -p "$data_dir" "$(dirname "$log")"
    NO_COLOR=1 nohup "$tartarus" --data-dir "$data_dir" up >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 60); do
        healthy && break
        if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            tail -n 30 "$log" >&2 || true
            die "tartarus up exited; see $log"
        fi
        sleep 0.5
    done
    healthy || {
        tail -n 30 "$log" >&2 || true
        die "tartarus up did not answer on $health within 30 s; see $log"
    }
    step "realm up (pid $(cat "$pidfile"))"
fi

templates="$("$tartarus" template ls)"
if grep -qw busybox <<<"$templates"; then
    step "template busybox registered"
else
    step "registering the busybox template from $template_dir"
    "$tartarus" template import "$template_dir" --name busybox
fi

if grep -qw python-ds <<<"$templates"; then
    step "template python-ds built"
else
    step "building the python-ds template (debootstrap + OCI image; a few minutes the first time)"
    "$tartarus" template build python-ds
fi

step "running a sandbox: tartarus run --template python-ds -- python3 -c \"import pandas; ...\""
"$tartarus" run --template python-ds -- python3 -c "import pandas; print('Hello from the Underworld')"

echo
echo "==> done. The realm keeps running in the background:"
next_steps=(
    "tartarus ps" "list sandboxes"
    "tartarus run --template busybox -- ls /" "run another command"
    "tartarus run --template python-ds -- python3" "a Python sandbox (add -c '...')"
    "tartarus logs -f SANDBOX_ID" "show (and follow) a sandbox's output"
    "tartarus template ls" "list templates"
    "tail -f $log" "the realm's log"
    "kill \$(cat $pidfile)" "stop the realm"
)
for ((i = 0; i < ${#next_steps[@]}; i += 2)); do
    printf '    %-42s # %s\n' "${next_steps[i]}" "${next_steps[i + 1]}"
done
