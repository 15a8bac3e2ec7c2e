#!/usr/bin/env bash
# The uni executor on a real GPU: hangwatch (release) beside `fakevllm --gpu --executor
# uni --tp 1` — no worker process, the engine core runs the model on GPU 0 — with long
# GPU-busy steps (must raise nothing), then (a) the core stuck in a native call, (b) in
# a second engine, the core stopped (SIGSTOP). Everything under $OUT, packed in all.tgz.
set -u
OUT="${OUT:-/tmp/hw-out}"; mkdir -p "$OUT"
ROOT="$(pwd)"; HW="$ROOT/device-carry/hangwatch"
exec > >(tee "$OUT/run.log") 2>&1
mark() { echo "PHASE $(date +%s.%N) $*" | tee -a "$OUT/phases.txt"; }
date -u; nvidia-smi -L
python3 -m pip install --no-index --find-links device-carry/wheels --target /tmp/pylib setproctitle -q && export PYTHONPATH=/tmp/pylib
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,power.draw --format=csv,noheader -lms 500 > "$OUT/nvidia-smi.csv" &
SMI=$!
: > /tmp/empty.toml
HANGWATCH_LOG=info "$HW" run --config /tmp/empty.toml --listen 127.0.0.1:9477 --bundle-dir "$OUT/bundles" > "$OUT/agent.log" 2>&1 &
AGENT=$!
sleep 3
mark "engine a: uni, long GPU steps, core stuck in a native call at +50 s"
python3 tests/fakevllm/fakevllm.py --gpu --executor uni --tp 1 --load steady --warmup 5 --step-ms 40 \
  --long-step-every 12 --long-step-ms 6000 \
  --fault target=core,after=50,mode=native --events "$OUT/events-a.jsonl" --log "$OUT/vllm-a.log" --port 8000 &
SIM=$!
for i in $(seq 1 120); do grep -q '"fault"' "$OUT/events-a.jsonl" 2>/dev/null && break; sleep 1; done
mark "engine a: fault seen"
sleep 20
"$HW" status --json > "$OUT/status-a.json" 2>&1
curl -s 127.0.0.1:9477/metrics | grep -E "^hangwatch_(gpu|engine_state|rank_suspect|incident|process_suspect)" > "$OUT/metrics-a.txt"
kill -TERM $SIM; sleep 5; pkill -9 -f fakevllm.py; pkill -9 -f 'VLLM::'
sleep 10
mark "engine b: uni, core SIGSTOP at +30 s"
python3 tests/fakevllm/fakevllm.py --gpu --executor uni --tp 1 --load steady --warmup 5 --step-ms 40 \
  --events "$OUT/events-b.jsonl" --log "$OUT/vllm-b.log" --port 8001 &
SIM=$!
sleep 30
CORE=$(python3 -c "import json;print([json.loads(l) for l in open('$OUT/events-b.jsonl')][0]['core_pid'])")
mark "engine b: SIGSTOP core $CORE"
kill -STOP "$CORE"
sleep 15
"$HW" status --json > "$OUT/status-b.json" 2>&1
curl -s 127.0.0.1:9477/metrics | grep -E "^hangwatch_(gpu|engine_state|rank_suspect|incident|process_suspect)" > "$OUT/metrics-b.txt"
kill -CONT "$CORE"; kill -TERM $SIM; sleep 5; pkill -9 -f fakevllm.py; pkill -9 -f 'VLLM::'
kill $AGENT; sleep 1; kill $SMI
mark "done"
for b in "$OUT"/bundles/*/; do echo "==== $b"; head -40 "$b/summary.txt"; done
grep -E "incident|stalled|appeared|GPU" "$OUT/agent.log" | cut -c1-300
cd "$OUT" && tar czf /tmp/all.tgz --exclude=run.log . && mv /tmp/all.tgz "$OUT/all.tgz"
