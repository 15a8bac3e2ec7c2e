#!/usr/bin/env bash
# What the test suite and the benchmarks need on a fresh Debian machine: system
# packages and the simulator's Python packages. Idempotent: installs only what is
# missing. Used by scripts/test.sh and scripts/bench.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# systemd-journald and systemd-cat: the journald test runs a real journal.
[ -x /lib/systemd/systemd-journald ] && command -v systemd-cat >/dev/null 2>&1 || need+=(systemd)
# setpriv: the stacks test runs hangwatch without ptrace rights, the hostile-input
# test runs look-alike engines as nobody (with Debian's python3 and its setproctitle).
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
/usr/bin/python3 -c 'import setproctitle' 2>/dev/null || need+=(python3-setproctitle)
# promtool: the alert rules' unit tests; prometheus and alertmanager: the alerting
# path end to end (tests/tests/alerting_e2e.rs).
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# openssl and curl: the HTTPS listener's test makes a certificate and speaks TLS.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
# gdb: the real-engine test makes the engine core's main thread loop in Python.
command -v gdb >/dev/null 2>&1 || need+=(gdb)
# haproxy: the load-balancer recipe's test (tests/tests/haproxy_ready.rs).
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
# mmdebstrap and systemd-nspawn: the shipped unit under a real systemd, in a minimal
# Debian booted in a container (tests/tests/systemd_nspawn.rs, scripts/debian-root.sh).
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
# The package and the image (scripts/package.sh, tests/tests/package.rs): podman with
# runc (crun fails on this kind of machine's hybrid cgroups), lintian, strip.
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v strip >/dev/null 2>&1 || need+=(binutils)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# cargo-deb: the Debian package (scripts/package.sh).
cargo deb --version >/dev/null 2>&1 || cargo install --quiet --locked cargo-deb
python3 -c 'import setproctitle' 2>/dev/null || python3 -m pip install --quiet setproctitle
# kubernetes-validate: the manifests' check (tests/tests/k8s_manifests.rs).
python3 -c 'import kubernetes_validate' 2>/dev/null || python3 -m pip install --quiet kubernetes-validate
# py-spy's command line: the benchmarks poll with it the way a user without hangwatch would.
# matplotlib (Debian's): the plot of how the agent's cost grows (scripts/plot-bench.py).
if [ "${1:-}" = "--bench" ]; then
  command -v py-spy >/dev/null 2>&1 || python3 -m pip install --quiet py-spy
  /usr/bin/python3 -c 'import matplotlib' 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null
  } || echo "install-deps: python3-matplotlib not installed; the bench makes no plot" >&2
fi
