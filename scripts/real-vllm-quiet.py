#!/usr/bin/env python3
"""No false alarm on the real engine: hangwatch beside vLLM (CPU build, TP=2) through
loads that are not hangs — a burst of 500 requests at once, 1 MB prompts (tokenised by
the API server, then refused for length) mixed with normal requests, steady load — and
the incidents it opened, which must be none.

    HANGWATCH_VLLM_PYTHON=… HANGWATCH_VLLM_MODEL=… python3 scripts/real-vllm-quiet.py \
        [--minutes 3] [--bin target/debug/hangwatch]

Prints one line per phase and a closing `incidents: N`; exits 1 when N > 0.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def post(port, body, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        return c.getresponse().status
    except OSError:
        return 0
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--bin", default="target/debug/hangwatch")
    a = ap.parse_args()
    py = os.environ["HANGWATCH_VLLM_PYTHON"]
    model = os.environ["HANGWATCH_VLLM_MODEL"]
    work = tempfile.mkdtemp(prefix="hw-quiet-")
    port = free_port()
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1",
               GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    vllm = subprocess.Popen(
        [os.path.join(os.path.dirname(py), "vllm"), "serve", model, "--served-model-name", "tiny", "--tensor-parallel-size", "2",
         "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "256", "--host", "127.0.0.1", "--port", str(port),
         "--distributed-executor-backend", "mp"],
        env=env, stdout=open(os.path.join(work, "serve.log"), "w"), stderr=subprocess.STDOUT, start_new_session=True)
    open(os.path.join(work, "empty.toml"), "w").close()
    agent = subprocess.Popen([a.bin, "run", "--config", os.path.join(work, "empty.toml"), "--listen", "127.0.0.1:0",
                              "--bundle-dir", os.path.join(work, "bundles")],
                             stdout=open(os.path.join(work, "agent.log"), "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            sys.exit("vLLM did not start")
        base = {"model": "tiny", "prompt": "The capital of France is", "max_tokens": 8}
        t0 = time.time()
        with ThreadPoolExecutor(500) as ex:
            codes = list(ex.map(lambda _: post(port, base), range(500)))
        print(f"burst of 500 requests at once: {codes.count(200)} answered 200 in {time.time() - t0:.0f} s", flush=True)
        huge = dict(base, prompt="lorem ipsum " * ((1 << 20) // 12))
        t0 = time.time()
        with ThreadPoolExecutor(14) as ex:
            jobs = [ex.submit(post, port, huge) for _ in range(10)] + [ex.submit(post, port, base) for _ in range(40)]
            codes = [j.result() for j in jobs]
        print(f"10 prompts of 1 MB (refused for length after tokenising) among 40 normal ones: "
              f"{codes[:10].count(400)} refused, {codes[10:].count(200)} normal answered, in {time.time() - t0:.0f} s", flush=True)
        stop = time.time() + a.minutes * 60
        done = [0]

        def steady():
            while time.time() < stop:
                if post(port, dict(base, max_tokens=32)) == 200:
                    done[0] += 1

        threads = [threading.Thread(target=steady) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"steady load, 4 clients, {a.minutes:.0f} min: {done[0]} requests served", flush=True)
        time.sleep(5)
        bundles = os.path.join(work, "bundles")
        n = len([d for d in os.listdir(bundles) if not d.startswith(".")]) if os.path.isdir(bundles) else 0
        print(f"incidents: {n}")
        if n:
            print(open(os.path.join(work, "agent.log")).read()[-3000:])
        return 1 if n else 0
    finally:
        agent.send_signal(signal.SIGTERM)
        os.killpg(vllm.pid, signal.SIGTERM)
        try:
            vllm.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(vllm.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
