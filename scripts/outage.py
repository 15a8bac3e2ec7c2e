#!/usr/bin/env python3
"""The outage a hang causes, fault -> serving again, with and without hangwatch's
`terminate` action (docs/actions.md). The engine runs under a supervisor that starts it
again whenever it exits (as systemd's Restart=always or Kubernetes would); under load,
rank 1's worker is stopped (SIGSTOP); the clock runs until the engine's generated-token
counter moves again after a restart.

- without hangwatch: vLLM's execute timeout ends the engine, then the restart;
- with hangwatch (--hangwatch BIN): the agent, with `[actions.terminate]` on, ends the
  engine's API server once the incident's bundle is complete.

    python3 scripts/outage.py --engine sim [--hangwatch target/release/hangwatch]
        [--execute-timeout 300] [--trials 1] [--out docs/results/actions.md]
    python3 scripts/outage.py --engine real --python VLLM_PYTHON --model MODEL_DIR ...

Prints one line per trial: the outage, the engine's start-up time, the mode.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vllm_engine  # noqa: E402  (beside this script)

ROOT = vllm_engine.ROOT
COUNTER = re.compile(r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)", re.M)


def tokens(port):
    code, body = vllm_engine.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    m = COUNTER.search(body) if code == 200 else None
    return float(m.group(1)) if m else None


class Supervisor:
    """Starts the engine, and again each time it exits."""

    def __init__(self, start):
        self.start, self.runs, self.proc = start, 0, None
        self.started_at, self.sessions, self.stop = [], [], False
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while not self.stop:
            self.proc = self.start()
            self.sessions.append(self.proc.pid)
            self.started_at.append(time.time())
            self.runs += 1
            self.proc.wait()
            time.sleep(0.5)

    def end(self):
        self.stop = True
        if self.proc:
            vllm_engine.stop_engine(self.proc)


def pid_titled(title, session):
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                first = f.read().split(b"\0")[0].decode(errors="replace").strip()
            if first == title and os.getsid(int(p)) == session:
                return int(p)
        except OSError:
            continue
    return None


def engine_start(a, port, d, timeout):
    env = {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": str(timeout)}
    if a.engine == "real":
        return lambda: vllm_engine.start_engine(a.python, a.model, port, os.path.join(d, "vllm.log"), env)
    sim = [sys.executable, os.path.join(ROOT, "tests/fakevllm/fakevllm.py"), "--tp", "2", "--port", str(port),
           "--log", os.path.join(d, "vllm.log")]
    return lambda: subprocess.Popen(sim, env=dict(os.environ, **env), stdin=subprocess.DEVNULL,
                                    start_new_session=True)


def agent(a, port, d):
    cfg = os.path.join(d, "hangwatch.toml")
    with open(cfg, "w") as f:
        f.write('[actions.terminate]\nenabled = true\ngrace = "10s"\n')
    env = dict(os.environ, HANGWATCH_ENGINES=f"vllm-{port}")
    listen = f"127.0.0.1:{vllm_engine.free_port()}"
    return subprocess.Popen([a.hangwatch, "run", "--config", cfg, "--listen", listen, "--bundle-dir",
                             os.path.join(d, "bundles")], env=env, stdout=open(os.path.join(d, "agent.log"), "w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def load(port, stop):
    """A client that retries: a refused or failed request waits a second (a client
    hammering a restarting server would slow its start-up on a small node)."""
    while not stop.is_set():
        if not vllm_engine.complete(port, timeout=30):
            time.sleep(1.0)


def trial(a, mode):
    d = tempfile.mkdtemp(prefix="outage-")
    port = vllm_engine.free_port()
    sup = Supervisor(engine_start(a, port, d, a.execute_timeout))
    hw = agent(a, port, d) if mode == "hangwatch" else None
    stop = threading.Event()
    try:
        while sup.proc is None:
            time.sleep(0.1)
        if not vllm_engine.wait_healthy(port, sup.proc, within=900):
            return None, "the engine did not start"
        startup = time.time() - sup.started_at[0]
        if a.engine == "real":
            for _ in range(2):
                threading.Thread(target=load, args=(port, stop), daemon=True).start()
        time.sleep(10)
        session = sup.proc.pid
        rank1 = pid_titled("VLLM::Worker_TP1", session)
        if rank1 is None:
            return None, "no VLLM::Worker_TP1"
        fault = time.time()
        os.kill(rank1, signal.SIGSTOP)
        deadline = fault + a.execute_timeout + 900
        while time.time() < deadline:
            if sup.runs >= 2:
                before = tokens(port)
                time.sleep(0.5)
                after = tokens(port)
                if before is not None and after is not None and after > before:
                    return (time.time() - fault, startup), None
            time.sleep(0.5)
        return None, "not serving again"
    finally:
        stop.set()
        sup.end()
        if hw:
            hw.terminate()
            hw.wait()
        for sid in sup.sessions:
            subprocess.run(["pkill", "-KILL", "-s", str(sid)], check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=("sim", "real"), default="sim")
    ap.add_argument("--python", help="the vLLM venv's python (--engine real)")
    ap.add_argument("--model", help="the model folder (--engine real)")
    ap.add_argument("--hangwatch", help="hangwatch binary: measure with its terminate action")
    ap.add_argument("--execute-timeout", type=float, default=300)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    mode = "hangwatch" if a.hangwatch else "vllm-alone"
    rows = []
    for i in range(a.trials):
        got, err = trial(a, mode)
        if got is None:
            print(f"trial {i + 1}: {mode}: FAILED: {err}")
            continue
        outage, startup = got
        print(f"trial {i + 1}: {a.engine} {mode} (execute timeout {a.execute_timeout:.0f} s): "
              f"outage {outage:.1f} s, engine start-up {startup:.1f} s")
        rows.append((outage, startup))
    if a.out and rows:
        with open(a.out, "a") as f:
            for outage, startup in rows:
                f.write(f"| {a.engine} | {mode} | {a.execute_timeout:.0f} s | {outage:.1f} s | {startup:.1f} s |\n")
    return 0 if len(rows) == a.trials else 1


if __name__ == "__main__":
    sys.exit(main())
