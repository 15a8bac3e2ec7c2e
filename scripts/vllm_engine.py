"""The real vLLM engine for the scripts that measure against it (soak-vllm.py,
vllm-alone.py): start `vllm serve` (CPU build, TP=2, the tiny model setup-vllm.sh makes)
with the settings docs/vllm.md lists, wait for it, send it completions, stop it."""
import json
import os
import signal
import socket
import subprocess
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


def complete(port, timeout=120):
    body = json.dumps({"model": "tiny", "prompt": "the quick brown fox", "max_tokens": 48}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def start_engine(python, model, port, log, extra_env=None):
    """`vllm serve` from the venv of `python`, its output in `log`, in its own session
    (so that stopping it takes its workers too)."""
    vllm = os.path.join(os.path.dirname(python), "vllm")
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_HOST_IP="127.0.0.1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", **(extra_env or {}))
    return subprocess.Popen(
        [vllm, "serve", model, "--served-model-name", "tiny", "--tensor-parallel-size", "2",
         "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "256",
         "--host", "127.0.0.1", "--port", str(port), "--distributed-executor-backend", "mp"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)


def wait_healthy(port, engine, within=600):
    deadline = time.time() + within
    while get(f"http://127.0.0.1:{port}/health")[0] != 200:
        if time.time() > deadline or engine.poll() is not None:
            return False
        time.sleep(2)
    return True


def stop_engine(engine):
    try:
        os.killpg(engine.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        engine.wait(timeout=30)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(engine.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        engine.wait()
