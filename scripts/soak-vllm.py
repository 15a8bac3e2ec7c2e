#!/usr/bin/env python3
"""A soak of the real engine: vLLM (CPU build, TP=2, the tiny model scripts/setup-vllm.sh
makes) under random idle and burst phases for MINUTES, hangwatch (release build) watching
it. A healthy engine must open no incident. Prints one summary line; with --out, appends
the run's record (markdown) to that file.

    python3 scripts/soak-vllm.py --python VLLM_PYTHON --model MODEL_DIR --minutes 30
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except Exception:
        return None, ""


def complete(port):
    body = json.dumps({"model": "tiny", "prompt": "the quick brown fox", "max_tokens": 48}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status == 200
    except Exception:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--hangwatch", default=os.path.join(ROOT, "target/release/hangwatch"))
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    tmp = tempfile.mkdtemp(prefix="hangwatch-soak-")
    port, listen = free_port(), f"127.0.0.1:{free_port()}"
    vllm = os.path.join(os.path.dirname(a.python), "vllm")
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_HOST_IP="127.0.0.1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    engine = subprocess.Popen(
        [vllm, "serve", a.model, "--served-model-name", "tiny", "--tensor-parallel-size", "2",
         "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "256",
         "--host", "127.0.0.1", "--port", str(port), "--distributed-executor-backend", "mp"],
        env=env, stdout=open(os.path.join(tmp, "serve.log"), "w"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    agent = subprocess.Popen(
        [a.hangwatch, "run", "--listen", listen, "--bundle-dir", os.path.join(tmp, "bundles"),
         "--config", "/dev/null"],
        env=dict(os.environ, HANGWATCH_ENGINES=f"vllm-{port}"),
        stdout=open(os.path.join(tmp, "agent.log"), "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while get(f"http://127.0.0.1:{port}/health")[0] != 200:
            if time.time() > deadline or engine.poll() is not None:
                sys.exit(f"vLLM did not start; see {tmp}/serve.log")
            time.sleep(2)
        started = time.time()
        end = started + a.minutes * 60
        done = [0]
        phases = []
        while time.time() < end:
            idle = rnd.uniform(10, 90)
            phases.append(("idle", round(idle)))
            time.sleep(min(idle, max(0, end - time.time())))
            if time.time() >= end:
                break
            burst, clients = rnd.uniform(10, 60), rnd.randint(1, 4)
            phases.append((f"burst x{clients}", round(burst)))
            stop = time.time() + burst

            def client():
                while time.time() < stop:
                    if complete(port):
                        done[0] += 1

            ts = [threading.Thread(target=client) for _ in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        time.sleep(5)
        bundles = [d for d in os.listdir(os.path.join(tmp, "bundles"))] if os.path.isdir(os.path.join(tmp, "bundles")) else []
        _, metrics = get(f"http://{listen}/metrics")
        alive = engine.poll() is None and agent.poll() is None
        line = (f"soak: real vLLM (CPU, TP=2) {a.minutes:g} min of random idle/burst load "
                f"({len(phases)} phases, {done[0]} completions): {len(bundles)} incidents; "
                f"engine and agent {'alive' if alive else 'NOT alive'}")
        print(line)
        if a.out:
            with open(a.out, "a") as f:
                f.write(f"\n{line}\n\nphases (seed {a.seed}): {', '.join(f'{k} {v}s' for k, v in phases)}\n")
                if bundles:
                    f.write(f"incidents: {', '.join(bundles)} (kept in {tmp})\n")
        sys.exit(0 if not bundles and alive else 1)
    finally:
        agent.terminate()
        try:
            os.killpg(engine.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            engine.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(engine.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
