#!/usr/bin/env bash
# Test images without the internet: build an OCI image from a directory, push an OCI layout to
# the local test registry (scripts/registry.sh), or turn it into a `docker save`-style archive.
# Uses skopeo and umoci (installed with apt-get if missing, as root).
#
#   scripts/test-images.sh make-oci ROOTFS_DIR oci:DIR:TAG [--cmd 'ARG ...']
#       A one-layer image whose root filesystem is ROOTFS_DIR's content, tagged TAG in the OCI
#       layout DIR (created if needed; other tags in it are kept). --cmd sets the config's Cmd
#       (split on spaces). Prints `OCI=oci:DIR:TAG`.
#   scripts/test-images.sh push oci:DIR:TAG NAME:TAG [--registry HOST:PORT] [--creds USER:PASS]
#                               [--dir REGISTRY_DIR] [--format oci|v2s2] [-- SKOPEO_ARGS...]
#       skopeo copy oci:DIR:TAG docker://HOST:PORT/NAME:TAG (plain HTTP). The registry and its
#       credentials come from --registry/--creds, else from REGISTRY_DIR/env as written by
#       `scripts/registry.sh start --dir REGISTRY_DIR` (default ${TMPDIR:-/tmp}/tartarus-registry),
#       else 127.0.0.1:15000 without credentials. --format v2s2 converts to Docker schema 2
#       manifests (default: as in the layout, OCI). Prints `IMAGE=HOST:PORT/NAME:TAG` and
#       `DIGEST=sha256:...` (the manifest's digest in the registry).
#   scripts/test-images.sh oci:DIR:TAG NAME:TAG [...]     the same as `push`
#   scripts/test-images.sh docker-archive oci:DIR:TAG OUT.tar [NAME:TAG]
#       skopeo copy oci:DIR:TAG docker-archive:OUT.tar:NAME:TAG, a `docker save`-style tar
#       (manifest.json, config, layer tars). NAME:TAG defaults to tartarus-test/BASENAME:TAG.
#       Prints `ARCHIVE=OUT.tar`.
#
# `oci:` may be left off SRC (DIR:TAG). Messages go to stderr, the KEY=VALUE lines to stdout.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
log() { echo "test-images: $*" >&2; }
die() {
    log "$*"
    exit 1
}

ensure() {
    local need=() tool
    for tool in "$@"; do command -v "$tool" >/dev/null || need+=("$tool"); done
    [[ ${#need[@]} -eq 0 ]] && return 0
    apt_install "${need[@]}"
}

# Splits oci:DIR:TAG (or DIR:TAG) into $src_dir and $src_tag.
parse_oci() {
    local ref="${1#oci:}"
    [[ "$ref" == *:* ]] || die "want oci:DIR:TAG, got $1"
    src_dir="${ref%:*}"
    src_tag="${ref##*:}"
    [[ -n "$src_dir" && -n "$src_tag" ]] || die "want oci:DIR:TAG, got $1"
}

make_oci() {
    local rootfs="${1:?make-oci needs ROOTFS_DIR}" dst="${2:?make-oci needs oci:DIR:TAG}" cmd=""
    shift 2
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --cmd) cmd="${2:?--cmd needs a value}"; shift 2 ;;
            *) die "make-oci: unknown argument $1" ;;
        esac
    done
    [[ -d "$rootfs" ]] || die "no such directory: $rootfs"
    parse_oci "$dst"
    ensure umoci
    local rootless=()
    [[ "$(id -u)" -eq 0 ]] || rootless=(--rootless)
    if [[ ! -f "$src_dir/oci-layout" ]]; then
        mkdir -p "$(dirname "$src_dir")"
        umoci init --layout "$src_dir"
    fi
    # Replace the tag if it exists, so the image is exactly ROOTFS_DIR.
    umoci rm --image "$src_dir:$src_tag" 2>/dev/null || true
    umoci new --image "$src_dir:$src_tag"
    local bundle
    bundle="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$bundle'" EXIT
    umoci unpack "${rootless[@]}" --image "$src_dir:$src_tag" "$bundle/b" >/dev/null
    cp -a "$rootfs/." "$bundle/b/rootfs/"
    umoci repack --image "$src_dir:$src_tag" "$bundle/b" >/dev/null
    if [[ -n "$cmd" ]]; then
        local args=() word
        for word in $cmd; do args+=(--config.cmd "$word"); done
        umoci config --image "$src_dir:$src_tag" --clear=config.cmd "${args[@]}"
    fi
    umoci gc --layout "$src_dir"
    echo "OCI=oci:$src_dir:$src_tag"
}

push() {
    local src="${1:?push needs oci:DIR:TAG}" dest="${2:?push needs NAME:TAG}"
    shift 2
    local registry="" creds="" regdir="${TMPDIR:-/tmp}/tartarus-registry" format="" extra=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --registry) registry="${2:?--registry needs HOST:PORT}"; shift 2 ;;
            --port) registry="127.0.0.1:${2:?--port needs a value}"; shift 2 ;;
            --creds) creds="${2:?--creds needs USER:PASS}"; shift 2 ;;
            --dir) regdir="${2:?--dir needs a value}"; shift 2 ;;
            --format) format="${2:?--format needs oci or v2s2}"; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            *) die "push: unknown argument $1" ;;
        esac
    done
    parse_oci "$src"
    [[ -f "$src_dir/index.json" ]] || die "not an OCI layout: $src_dir"
    [[ "${dest##*/}" == *:* ]] || dest="$dest:$src_tag"
    if [[ -z "$registry" && -f "$regdir/env" ]]; then
        registry="$(sed -n 's/^REGISTRY_HOST=//p' "$regdir/env")"
        [[ -n "$creds" ]] || creds="$(sed -n 's/^REGISTRY_AUTH=//p' "$regdir/env")"
    fi
    [[ -n "$registry" ]] || registry=127.0.0.1:15000
    ensure skopeo
    local args=(copy --dest-tls-verify=false)
    [[ -n "$creds" ]] && args+=(--dest-creds "$creds")
    [[ -n "$format" ]] && args+=(--format "$format")
    local digestfile
    digestfile="$(mktemp)"
    # shellcheck disable=SC2064
    trap "rm -f '$digestfile'" EXIT
    # --insecure-policy: a local test image, no signature policy to consult.
    skopeo --insecure-policy "${args[@]}" --digestfile "$digestfile" "${extra[@]}" \
        "oci:$src_dir:$src_tag" "docker://$registry/$dest" >&2
    echo "IMAGE=$registry/$dest"
    echo "DIGEST=$(cat "$digestfile")"
}

docker_archive() {
    local src="${1:?docker-archive needs oci:DIR:TAG}" out="${2:?docker-archive needs OUT.tar}"
    parse_oci "$src"
    [[ -f "$src_dir/index.json" ]] || die "not an OCI layout: $src_dir"
    local name="${3:-tartarus-test/$(basename "$src_dir"):$src_tag}"
    ensure skopeo
    # skopeo appends to an existing archive; start afresh so OUT.tar holds this image only.
    rm -f "$out"
    skopeo --insecure-policy copy "oci:$src_dir:$src_tag" "docker-archive:$out:$name" >&2
    echo "ARCHIVE=$out"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
    make-oci) make_oci "$@" ;;
    push) push "$@" ;;
    oci:*) push "$cmd" "$@" ;;
    docker-archive) docker_archive "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
