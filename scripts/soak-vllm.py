#!/usr/bin/env python3
"""A soak of the real engine: vLLM (CPU build, TP=2, the tiny model scripts/setup-vllm.sh
makes) under random idle and burst phases for MINUTES, hangwatch (release build) watching
it. A healthy engine must open no incident. Prints one summary line; with --out, appends
the run's record (markdown) to that file.

    python3 scripts/soak-vllm.py --python VLLM_PYTHON --model MODEL_DIR --minutes 30
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

from vllm_engine import ROOT, complete, free_port, get, start_engine, stop_engine, wait_healthy


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
    engine = start_engine(a.python, a.model, port, os.path.join(tmp, "serve.log"))
    agent = subprocess.Popen(
        [a.hangwatch, "run", "--listen", listen, "--bundle-dir", os.path.join(tmp, "bundles"),
         "--config", "/dev/null"],
        env=dict(os.environ, HANGWATCH_ENGINES=f"vllm-{port}"),
        stdout=open(os.path.join(tmp, "agent.log"), "w"), stderr=subprocess.STDOUT)
    try:
        if not wait_healthy(port, engine):
            sys.exit(f"vLLM did not start; see {tmp}/serve.log")
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
                f.write(f"\n## A real vLLM soak\n\n{line}\n\nphases (seed {a.seed}): {', '.join(f'{k} {v}s' for k, v in phases)}\n")
                if bundles:
                    f.write(f"incidents: {', '.join(bundles)} (kept in {tmp})\n")
        sys.exit(0 if not bundles and alive else 1)
    finally:
        agent.terminate()
        stop_engine(engine)

if __name__ == "__main__":
    main()
