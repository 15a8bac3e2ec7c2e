#!/usr/bin/env bash
# The two real-engine tests, N times back to back (default 10), side by side as the
# suite runs them (one test binary, --test-threads 4). Prints one line a run and a
# summary; a failing run's output is kept in target/repeat-real-vllm/run-K.log and any
# unexpected incident's bundle in target/kept-bundles/. Needs what scripts/test.sh
# installs (it sets the engine up through scripts/setup-vllm.sh itself).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-10}"
VLLM_PYTHON="$(bash scripts/setup-vllm.sh | tail -n 1)"
export HANGWATCH_VLLM_PYTHON="$VLLM_PYTHON"
export HANGWATCH_VLLM_MODEL="${HANGWATCH_TEST_CACHE:-$HOME/.cache/hangwatch-test}/tiny-llama"
out=target/repeat-real-vllm
mkdir -p "$out"
cargo test -p hangwatch-tests --test real_vllm --no-run --quiet 2>/dev/null
passed=0 failed=0
for k in $(seq 1 "$runs"); do
  start=$(date +%s)
  if cargo test -q -p hangwatch-tests --test real_vllm -- --test-threads 4 --nocapture >"$out/run-$k.log" 2>&1; then
    passed=$((passed + 1)); verdict=passed
  else
    failed=$((failed + 1)); verdict=FAILED
  fi
  opened=$(grep -o 'opened [0-9.]* s after SIGSTOP' "$out/run-$k.log" | awk '{print $2}' | paste -sd' ' -)
  echo "run $k: $verdict in $(( $(date +%s) - start )) s; incidents opened after SIGSTOP (s): ${opened:-none}"
done
left=$(ls /dev/shm 2>/dev/null | grep -c '^vllm_dist_' || true)
# The last engine's processes may still be exiting: give them 10 s.
for _ in $(seq 10); do
  procs=$(pgrep -c -f '^VLLM::|bin/vllm serve' || true)
  [ "$procs" -eq 0 ] && break
  sleep 1
done
echo "$passed passed, $failed failed"
echo "left behind: $left vllm_dist_* segments in /dev/shm, $procs vLLM processes"
[ "$failed" -eq 0 ]
