#!/usr/bin/env bash
# Issue 11 on one GPU: long steps, a compile pause and a slow first request must open
# nothing; a rank asleep or spinning inside a step (rank 0 and rank 1) must be named.
# hangwatch (release, default configuration) beside `fakevllm --gpu --tp 2`.
# Writes results.txt (one line per case) and the agent's log under $OUT.
set -u
OUT="${OUT:-/tmp/hw-out}"; mkdir -p "$OUT"
ROOT="$(pwd)"; HW="$ROOT/device-carry/hangwatch"
exec > >(tee "$OUT/run.log") 2>&1
date -u; nvidia-smi -L
python3 -m pip install --no-index --find-links device-carry/wheels --target /tmp/pylib setproctitle -q && export PYTHONPATH=/tmp/pylib
export NCCL_NVLS_ENABLE=0
: > /tmp/empty.toml
HANGWATCH_LOG=info "$HW" run --config /tmp/empty.toml --listen 127.0.0.1:9477 \
  --bundle-dir "$OUT/bundles" --record "$OUT/record.jsonl" > "$OUT/agent.log" 2>&1 &
AGENT=$!
sleep 5

sim() { # port, seconds, extra args...
  local port=$1 secs=$2; shift 2
  python3 tests/fakevllm/fakevllm.py --gpu --tp 2 --load steady --warmup 5 --step-ms 40 \
    --port "$port" --events "$OUT/events-$port.jsonl" --log "$OUT/vllm-$port.log" \
    --duration "$secs" "$@" &
  echo $!
}

# 1. Work that is not a hang: a 12 s first request, 20 s GPU steps every 30 s, a 10 s
#    compile pause every 70 s, for 150 s.
P=$(sim 8100 150 --first-step-ms 12000 --long-step-every 30 --long-step-ms 20000 \
  --compile-every 70 --compile-ms 10000)
sleep 158
kill -TERM "$P" 2>/dev/null; sleep 3; pkill -9 -f 'VLLM::' 2>/dev/null

# 2. Faults inside a step, each on a fresh engine.
port=8200
for spec in "0 sleep" "1 sleep" "0 spin" "1 spin"; do
  set -- $spec
  port=$((port + 1))
  P=$(sim "$port" 45 --fault "rank=$1,after=15,mode=$2,at=in_step")
  sleep 47
  kill -TERM "$P" 2>/dev/null; sleep 3; pkill -9 -f 'VLLM::' 2>/dev/null; pkill -9 -f fakevllm.py 2>/dev/null
done
kill "$AGENT"; sleep 1

python3 - "$OUT" <<'PY' | tee "$OUT/results.txt"
import datetime, glob, json, os, sys
out = sys.argv[1]
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
bundles = {}
for m in glob.glob(f"{out}/bundles/*/manifest.json"):
    d = json.load(open(m))
    summary = open(os.path.join(os.path.dirname(m), "summary.txt")).read()
    bundles.setdefault(d["engine"], []).append((d, summary))
for ev in sorted(glob.glob(f"{out}/events-*.jsonl")):
    port = ev.split("-")[-1].split(".")[0]
    engine = f"vllm-{port}"
    events = [json.loads(l) for l in open(ev) if l.strip()]
    fault = next((e for e in events if e.get("event") == "fault"), None)
    got = bundles.get(engine, [])
    if fault is None:
        print(f"{engine} no fault: {len(got)} incidents")
        continue
    if not got:
        print(f"{engine} rank {fault['rank']} {fault['mode']} in step: NO incident")
        continue
    d, summary = sorted(got, key=lambda x: x[0]["opened_at"])[0]
    stalled = [l.split()[0] for l in summary.splitlines() if f"engine {engine} stalled" in l]
    sus = f"{ts(stalled[0]) - fault['at']:.1f}" if stalled else "?"
    print(f"{engine} rank {fault['rank']} {fault['mode']} in step: named {[s['rank'] for s in d['suspects']]} "
          f"reasons {[s['reasons'] for s in d['suspects']]} suspect {sus} s, incident {ts(d['opened_at']) - fault['at']:.1f} s after the fault; {len(got)} incidents")
PY
grep -E "busy:|incident|GPU 0 is" "$OUT/agent.log" | cut -c1-330 | head -60
for b in "$OUT"/bundles/*/; do echo "==== $b"; sed -n 1,40p "$b/summary.txt"; done 2>/dev/null | head -150
