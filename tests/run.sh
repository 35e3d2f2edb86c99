#!/usr/bin/env bash
# The test command (README.md; CI runs it through .ci/run).
# Installs what the tests need, then runs the suite twice: as the caller
# (root in CI) and, when the caller is root, as an ordinary user (uid 65534)
# from a throwaway virtualenv that user can read.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

if [ "$(id -u)" = 0 ]; then
    need=()
    for pkg in gcc libc6-dev python3-dev python3-venv procps iproute2 util-linux libseccomp2 musl-tools strace; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

python3 -m pip install -q -e '.[test,bench]'   # bench: matplotlib, for the chart's test

echo "=== tests as $(id -un) (uid $(id -u))"
python3 -m pytest tests -p no:cacheprovider "$@"
echo "=== benchmarks, smoke mode (no timing)"
python3 -m pytest benchmarks --benchmark-disable -q -p no:cacheprovider

if [ "$(id -u)" = 0 ]; then
    work=$(mktemp -d /tmp/psbx-unpriv.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    chmod 755 "$work"
    /usr/bin/python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q "$here[test]"
    cp -r tests "$work/tests"
    cp -r csrc "$work/csrc"   # tests/test_build.py builds the init from it
    cp pyproject.toml "$work/"
    mkdir "$work/tmp"
    chown -R 65534:65534 "$work"
    echo "=== tests as uid 65534 (setpriv --reuid=65534 --regid=65534 --clear-groups)"
    (cd "$work" && setpriv --reuid=65534 --regid=65534 --clear-groups \
        env HOME="$work" TMPDIR="$work/tmp" "$work/venv/bin/python" -m pytest tests \
        -p no:cacheprovider --basetemp="$work/tmp/pytest" "$@")
fi
