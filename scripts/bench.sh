#!/usr/bin/env bash
# The side-by-side benchmarks (tests/src/bin/bench.rs): hangwatch against vLLM alone,
# a Prometheus-only alert and naive py-spy polling, on the same simulated engines at the
# same time; hangwatch's own costs with 1, 4 and 8 engines of TP=8; false alarms.
#   scripts/bench.sh --quick   about 15 minutes on 2 cores; writes docs/results/benchmarks-quick.md
#   scripts/bench.sh           the full run (about 85 minutes): more trials, longer runs, the
#                              fault matrix, vLLM alone against hangwatch on the real engine
#                              (scripts/vllm-alone.py) and a 30-minute soak of it
#                              (scripts/soak-vllm.py), the release package and image proven
#                              (scripts/package.sh --check); writes docs/results/benchmarks.md
# Installs what it needs (like scripts/test.sh) and prints one summary line at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=""
out="docs/results/benchmarks.md"
if [ "${1:-}" = "--quick" ]; then
  quick="--quick"
  out="docs/results/benchmarks-quick.md"
fi

printf '\n== packages\n'
bash scripts/install-deps.sh --bench

printf '\n== build (release)\n'
cargo build --release --quiet -p hangwatch -p hangwatch-tests --bins

printf '\n== run\n'
summary="$(HANGWATCH_BIN="$PWD/target/release/hangwatch" target/release/hangwatch-bench $quick --out "$out" 2>&1 | tee /dev/stderr | tail -n 1)"
real=""
if [ -z "$quick" ]; then
  VLLM_PYTHON="$(bash scripts/setup-vllm.sh | tail -n 1)"
  MODEL="${HANGWATCH_TEST_CACHE:-$HOME/.cache/hangwatch-test}/tiny-llama"
  printf '\n== vLLM alone on the real engine (3 trials)\n' >&2
  real="; $(python3 scripts/vllm-alone.py --python "$VLLM_PYTHON" --model "$MODEL" \
    --trials 3 --out "$out" | tail -n 1 || true)"
  printf '\n== real vLLM soak (30 minutes)\n' >&2
  real="$real; $(python3 scripts/soak-vllm.py --python "$VLLM_PYTHON" \
    --model "$MODEL" --minutes 30 --out "$out" | tail -n 1 || true)"
fi
if [ -z "$quick" ]; then
  printf '\n== the release package and image, built and proven (scripts/package.sh --check)\n' >&2
  real="$real; $(bash scripts/package.sh --check | tail -n 2 | tr '\n' ' ')"
fi
csv="${out%.md}.csv"
if [ -f "$csv" ] && /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
  /usr/bin/python3 scripts/plot-bench.py "$csv" >&2 || echo "bench: no plot" >&2
fi
echo "bench: results in $out" >&2
echo "$summary$real"
