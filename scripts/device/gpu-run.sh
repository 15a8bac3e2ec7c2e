#!/usr/bin/env bash
# One full run on a GPU machine: hangwatch (release) beside `fakevllm --gpu --tp 2`
# under load, rank 1 hangs in step; then the NCCL RAS client against a real NCCL process.
set -u
OUT="${OUT:-/tmp/hw-out}"; mkdir -p "$OUT"
ROOT="$(pwd)"; HW="$ROOT/device-carry/hangwatch"
exec > >(tee "$OUT/run.log") 2>&1
mark() { echo "PHASE $(date +%s.%N) $*" | tee -a "$OUT/phases.txt"; }
date -u; uname -r; id -u
nvidia-smi -L; nvidia-smi --query-gpu=index,name,driver_version,power.draw,utilization.gpu --format=csv
python3 -V
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
python3 -c "import cupy; print('cupy', cupy.__version__)" || echo "no cupy"
python3 - <<'PY'
import ctypes, mmap, os
try:
    import cupy as cp
    fd = os.open("/dev/shm/hw-probe", os.O_CREAT | os.O_RDWR, 0o600); os.ftruncate(fd, 32)
    m = mmap.mmap(fd, 32); addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    cp.cuda.runtime.hostRegister(addr, 32, 3); print("probe: hostRegister ok", hex(cp.cuda.runtime.hostGetDevicePointer(addr, 0)))
except Exception as e:
    print("probe: hostRegister failed:", repr(e))
PY
python3 -m pip install --no-index --find-links device-carry/wheels --target /tmp/pylib setproctitle -q && export PYTHONPATH=/tmp/pylib
python3 -c "import setproctitle; print('setproctitle ok')"
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,power.draw --format=csv,noheader -lms 500 > "$OUT/nvidia-smi.csv" &
SMI=$!
: > /tmp/empty.toml
HANGWATCH_LOG=info "$HW" run --config /tmp/empty.toml --listen 127.0.0.1:9477 --bundle-dir "$OUT/bundles" --record "$OUT/record.jsonl" > "$OUT/agent.log" 2>&1 &
AGENT=$!
sleep 3
mark "agent started; gpu idle"
sleep 10
mark "simulator starting"
python3 tests/fakevllm/fakevllm.py --gpu --tp 2 --load steady --warmup 8 --step-ms 40 \
  --fault rank=1,after=55,mode=sleep,at=in_step --events "$OUT/events.jsonl" --log "$OUT/vllm.log" --port 8000 &
SIM=$!
for i in $(seq 1 120); do grep -q '"fault"' "$OUT/events.jsonl" 2>/dev/null && break; sleep 1; done
mark "fault seen in events file"
sleep 30
curl -s 127.0.0.1:9477/metrics | grep -E "^hangwatch_(gpu|engine_state|rank_suspect|incident)" > "$OUT/metrics-during-hang.txt"
"$HW" status --json > "$OUT/status-during-hang.json" 2>&1
"$HW" stacks > "$OUT/stacks-during-hang.txt" 2>&1
mark "stopping the simulator"
kill -TERM $SIM; sleep 8; pkill -9 -f fakevllm.py; pkill -9 -f 'VLLM::'
mark "simulator stopped; gpu should go idle"
sleep 15
curl -s 127.0.0.1:9477/metrics | grep -E "^hangwatch_gpu" > "$OUT/metrics-after.txt"
mark "ras test"
cat > /tmp/nccl_one.py <<'PY'
import os, time, torch, torch.distributed as dist
os.environ.setdefault("MASTER_ADDR", "127.0.0.1"); os.environ.setdefault("MASTER_PORT", "29555")
dist.init_process_group("nccl", rank=0, world_size=1)
t = torch.ones(1 << 20, device="cuda")
for _ in range(25):
    dist.all_reduce(t)
torch.cuda.synchronize()
print("nccl one-process communicator ready, 25 all_reduce launched", flush=True)
time.sleep(25)
PY
NCCL_NVLS_ENABLE=0 python3 /tmp/nccl_one.py > "$OUT/nccl_one.log" 2>&1 &
NC=$!
for i in $(seq 1 30); do grep -q ready "$OUT/nccl_one.log" && break; sleep 1; done
"$HW" ras > "$OUT/ras.txt" 2>&1; echo "ras rc=$?" >> "$OUT/ras.txt"
"$HW" ras --json > "$OUT/ras.json" 2>&1; echo "ras --json rc=$?"
kill $NC 2>/dev/null; wait $NC 2>/dev/null
kill $AGENT; sleep 1; kill $SMI
mark "done"
echo "---- vllm.log (errors)"; grep -E "Error|error|Traceback|WARNING|spin" "$OUT/vllm.log" | head -30
echo "---- vllm.log tail"; tail -20 "$OUT/vllm.log"
ls -R "$OUT/bundles" | head -40
for b in "$OUT"/bundles/*/; do echo "==== $b/summary.txt"; cat "$b/summary.txt"; python3 -c "import json,sys; d=json.load(open('$b/gpu.json')); print('gpu.json classes', d['classes'], 'readings', len(d['readings']), 'rank pids', d['rank_pids']); print('last reading', json.dumps(d['readings'][-1])[:600])" 2>&1; done
grep -E "GPU [0-9] is|incident|stalled|NVML|stacks dumped" "$OUT/agent.log" | cut -c1-400
cat "$OUT/ras.txt" | tail -15
cd "$OUT" && tar czf /tmp/all.tgz --exclude=run.log . && mv /tmp/all.tgz "$OUT/all.tgz"
find "$OUT" -mindepth 1 -maxdepth 1 ! -name all.tgz ! -name run.log ! -name agent.log -exec rm -rf {} +
