#!/usr/bin/env bash
# Install the anchor runtimes the benchmarks compare pysandbox with, and
# build the shared busybox rootfs they all run /bin/true from.
#
#   sudo bash benchmarks/setup-anchors.sh        # Debian / Ubuntu
#   python3 -m pytest benchmarks -q -p no:cacheprovider
#   pysandbox bench
#
# Anchors: bubblewrap (bwrap --unshare-all), crun and runc (`run` of a
# minimal OCI bundle made by the benchmarks), util-linux (unshare).
# The rootfs: a static busybox with its applets as symlinks, in
# $PYSANDBOX_BENCH_ROOTFS (default /var/tmp/pysandbox-bench-rootfs); the
# benchmarks and `pysandbox bench` find it there (same variable).
# Re-running the script is harmless: it rebuilds the rootfs atomically.
set -euo pipefail

ROOTFS=${PYSANDBOX_BENCH_ROOTFS:-/var/tmp/pysandbox-bench-rootfs}
PACKAGES=(bubblewrap crun runc busybox-static util-linux)

if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then
        exec sudo PYSANDBOX_BENCH_ROOTFS="$ROOTFS" bash "$0" "$@"
    fi
    echo "setup-anchors.sh: run as root (apt-get install)" >&2
    exit 1
fi

need=()
for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
    busybox=/bin/busybox   # busybox-static's path
fi

# Build next to the target, then swap it in (never a half-built rootfs).
parent=$(dirname "$ROOTFS")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.pysandbox-bench-rootfs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for d in bin sbin usr/bin usr/sbin etc root tmp proc dev sys run var/tmp; do
    mkdir -p "$tmp/$d"
done
cp "$busybox" "$tmp/bin/busybox"
for applet in $("$tmp/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$tmp/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$tmp/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/etc/group"
echo sandbox >"$tmp/etc/hostname"
chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
chmod 755 "$tmp"
"$tmp/bin/busybox" --help 2>&1 | head -1 >"$tmp/.pysandbox-bench-rootfs"
rm -rf "$ROOTFS.old"
[ -e "$ROOTFS" ] && mv "$ROOTFS" "$ROOTFS.old"
mv "$tmp" "$ROOTFS"
rm -rf "$ROOTFS.old"
trap - EXIT

# One smoke run of each anchor, the way the benchmarks run them.  bench.py
# is run as a file: its anchors need only the standard library, and root's
# python3 may not import pysandbox (installed in a user's venv, or this
# checkout not built).
echo "rootfs: $ROOTFS ($(cat "$ROOTFS/.pysandbox-bench-rootfs"))" >&2
PYSANDBOX_BENCH_ROOTFS="$ROOTFS" \
    python3 "$(cd "$(dirname "$0")/.." && pwd)/pysandbox/bench.py" --check-anchors >&2 || {
    echo "setup-anchors.sh: an anchor failed its smoke run (see above)" >&2
    exit 1
}
echo "$ROOTFS"
