#!/usr/bin/env bash
# Two H200: (a) rank 1 sleeps in step while rank 0 waits in a real NCCL all-reduce;
# (b) rank 1 calls an all-reduce on a second communicator (a wedge). hangwatch (release)
# watches both; busy and idle phases around them.
set -u
OUT="${OUT:-/tmp/hw-out}"; mkdir -p "$OUT"
ROOT="$(pwd)"; HW="$ROOT/device-carry/hangwatch"
exec > >(tee "$OUT/run.log") 2>&1
mark() { echo "PHASE $(date +%s.%N) $*" | tee -a "$OUT/phases.txt"; }
export NCCL_NVLS_ENABLE=0
date -u; nvidia-smi -L
python3 -m pip install --no-index --find-links device-carry/wheels --target /tmp/pylib setproctitle -q && export PYTHONPATH=/tmp/pylib
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,power.draw --format=csv,noheader -lms 500 > "$OUT/nvidia-smi.csv" &
SMI=$!
: > /tmp/empty.toml
HANGWATCH_LOG=info "$HW" run --config /tmp/empty.toml --listen 127.0.0.1:9477 --bundle-dir "$OUT/bundles" --record "$OUT/record.jsonl" > "$OUT/agent.log" 2>&1 &
AGENT=$!
sleep 8
scenario() {  # name fault port
  mark "$1: simulator starting"
  python3 tests/fakevllm/fakevllm.py --gpu --tp 2 --load steady --warmup 8 --step-ms 40 \
    --fault "$2" --events "$OUT/$1-events.jsonl" --log "$OUT/$1-vllm.log" --port "$3" &
  local sim=$!
  for i in $(seq 1 150); do grep -q '"fault"' "$OUT/$1-events.jsonl" 2>/dev/null && break; sleep 1; done
  mark "$1: fault seen"
  sleep 28
  curl -s 127.0.0.1:9477/metrics | grep -E "^hangwatch_(gpu|engine_state|rank_suspect|incident)" > "$OUT/$1-metrics.txt"
  mark "$1: stopping the simulator"
  kill -TERM $sim; sleep 8; pkill -9 -f fakevllm.py; pkill -9 -f 'VLLM::'
  mark "$1: stopped; gpus should go idle"
  sleep 10
}
[ "${ONLY:-}" != b ] && scenario a "rank=1,after=45,mode=sleep,at=in_step" 8000
scenario b "rank=1,after=45,mode=collective" 8001
kill $AGENT; sleep 1; kill $SMI
mark "done"
grep -E "GPU [0-9] is|incident .* (opened|ended)|engine vllm-800[01] (stalled|busy|idle|dead)|stacks dumped|NCCL RAS" "$OUT/agent.log" | cut -c1-420
for b in "$OUT"/bundles/*/; do echo "==== $b"; ls "$b"; sed -n '1,16p' "$b/summary.txt"; grep -A4 "^stacks" "$b/summary.txt"; head -c 1500 "$b/nccl_ras.txt"; echo; python3 -c "import json; d=json.load(open('$b/nccl_ras.json')); s=d['status'] or {}; print('ras', [(c['hash'], [(r['rank'], r['pid'], r['collective_counts'].get('AllReduce')) for r in c['ranks']]) for c in s.get('communicators', [])], d.get('error'))" 2>&1; done
grep -E "Error|Traceback" "$OUT"/*-vllm.log | head -10
cd "$OUT" && tar czf /tmp/all.tgz --exclude=run.log . && mv /tmp/all.tgz "$OUT/all.tgz"
find "$OUT" -mindepth 1 -maxdepth 1 ! -name all.tgz ! -name run.log ! -name agent.log -exec rm -rf {} +
