#!/usr/bin/env bash
# A minimal Debian root file system (bookworm, from Debian's packages) for the tests that
# boot a real systemd in systemd-nspawn: the shipped unit (tests/tests/systemd_nspawn.rs)
# and the Debian package (scripts/package-check.sh). Cached: built once (about 15 s),
# then only its path is printed. python3 is in it for the vLLM simulator.
set -euo pipefail
CACHE="${HANGWATCH_TEST_CACHE:-$HOME/.cache/hangwatch-test}"
ROOT="$CACHE/debian-root-bookworm"
if [ ! -x "$ROOT/usr/lib/systemd/systemd" ] || [ ! -x "$ROOT/usr/bin/python3" ]; then
  mkdir -p "$CACHE"
  tmp="$CACHE/debian-root.tmp.$$"
  rm -rf "$tmp"
  mmdebstrap --quiet --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-setproctitle \
    bookworm "$tmp" >&2
  rm -rf "$ROOT"
  mv "$tmp" "$ROOT"
fi
echo "$ROOT"
