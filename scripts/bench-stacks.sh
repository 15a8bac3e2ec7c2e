#!/usr/bin/env bash
# Time to dump the engine core and 8 ranks of the simulator (TP=8) with non-blocking
# stacks, 20 runs: prints each run's wall time of the parallel dump, then median and max.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${HANGWATCH_BIN:-target/release/hangwatch}"
RUNS="${RUNS:-20}"
dir="$(mktemp -d)"
python3 tests/fakevllm/fakevllm.py --tp 8 --load steady --events "$dir/ev.jsonl" --log "$dir/vllm.log" --duration 300 &
sim=$!
trap 'kill $sim 2>/dev/null; wait $sim 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q started "$dir/ev.jsonl" 2>/dev/null && break; sleep 0.2; done
port=$(python3 -c "import json,sys; print(json.loads(open('$dir/ev.jsonl').readline())['port'])")
sleep 3
for i in $(seq 1 "$RUNS"); do
  "$BIN" stacks --json --engine "vllm-$port" | python3 -c "
import json,sys
e=json.load(sys.stdin)['engines'][0]
bad=[d['pid'] for d in e['dumps'] if d.get('error')]
print(f\"{e['elapsed_seconds']:.4f} {len(e['dumps'])} {len(bad)}\")"
done > "$dir/times.txt"
python3 - "$dir/times.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
t = sorted(float(r[0]) for r in rows)
print("runs", len(t), "processes per run", rows[0][1], "failed dumps", sum(int(r[2]) for r in rows))
print("per run (s):", " ".join(f"{x:.3f}" for x in t))
print(f"median {statistics.median(t):.3f} s, max {max(t):.3f} s")
PY
