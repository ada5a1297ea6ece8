#!/usr/bin/env bash
# Builds a minimal root filesystem from Debian's static busybox (package busybox-static).
#
#   scripts/busybox-rootfs.sh DIR
#
# DIR gets bin/busybox, a symlink bin/<applet> -> busybox for every applet, the usual empty
# directories and a passwd/group with root. The tree is built in DIR.tmp and renamed into
# place, so DIR is either the old tree or the whole new one. BUSYBOX overrides /bin/busybox.
set -euo pipefail

usage() {
    echo "usage: $0 DIR" >&2
    exit 2
}

[[ $# -eq 1 && -n "$1" ]] || usage
dir="${1%/}"
[[ -n "$dir" && "$dir" != "/" ]] || { echo "busybox-rootfs: refusing to build over '/'" >&2; exit 2; }
busybox="${BUSYBOX:-/bin/busybox}"

if [[ ! -x "$busybox" ]]; then
    echo "busybox-rootfs: $busybox missing: apt-get install busybox-static" >&2
    exit 1
fi
# The rootfs has no C library: a dynamically linked busybox would not start in it.
if ldd "$busybox" >/dev/null 2>&1; then
    echo "busybox-rootfs: $busybox is dynamically linked: apt-get install busybox-static" >&2
    exit 1
fi

tmp="$dir.tmp"
old="$dir.old"
rm -rf -- "$tmp" "$old"
mkdir -p -- "$tmp"

mkdir -p -- "$tmp"/{bin,etc,root,proc,sys,dev,tmp,var,home}
chmod 1777 "$tmp/tmp"
chmod 0700 "$tmp/root"
cp -- "$busybox" "$tmp/bin/busybox"
chmod 0755 "$tmp/bin/busybox"

# `busybox --list` prints bare applet names (e.g. "sh", "ls").
count=0
while IFS= read -r applet; do
    [[ -n "$applet" && "$applet" != "busybox" && "$applet" != */* ]] || continue
    ln -s busybox "$tmp/bin/$applet"
    count=$((count + 1))
done < <("$busybox" --list)
if [[ $count -eq 0 ]]; then
    echo "busybox-rootfs: '$busybox --list' named no applets" >&2
    exit 1
fi

cat >"$tmp/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$tmp/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo "tartarus" >"$tmp/etc/hostname"
chmod 0644 "$tmp/etc/passwd" "$tmp/etc/group" "$tmp/etc/hostname"
chmod 0755 "$tmp"

if [[ -e "$dir" || -L "$dir" ]]; then
    mv -- "$dir" "$old"
fi
mv -- "$tmp" "$dir"
rm -rf -- "$old"
echo "busybox-rootfs: $dir ($count applets)"
