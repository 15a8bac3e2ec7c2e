#!/usr/bin/env python3
"""vLLM alone against hangwatch, on the real engine: vLLM (CPU build, TP=2, the tiny model
scripts/setup-vllm.sh makes) serves a steady load, rank 1 is stopped (SIGSTOP), and three
clocks run from that moment: hangwatch's incident (release build, default
configuration), vLLM's first "No available shared memory broadcast block" warning, and
vLLM's death (its RPC timeout, then EngineDeadError).

vLLM's timers are shortened so that a trial takes a minute and a half, not six:
VLLM_RINGBUFFER_WARNING_INTERVAL=10 (default 60) and VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=30
(default 300). Both timers run from the call that got stuck, so the times at the
defaults are the measured ones plus 50 s and plus 270 s; the table gives both, named.
Prints one summary line; with --out, appends the table (markdown) to that file.

    python3 scripts/vllm-alone.py --python VLLM_PYTHON --model MODEL_DIR [--trials 3]
"""
import argparse
import datetime
import json
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

WARN_S, TIMEOUT_S = 10, 30
DEFAULT_WARN_S, DEFAULT_TIMEOUT_S = 60, 300
WARNING = "No available shared memory broadcast block"
DEATH = re.compile(r"RPC call to \w+ timed out|EngineDeadError")


def rank_pid(hangwatch, engine_id, rank, within=120):
    """The pid of `rank` as hangwatch's one-shot status sees it."""
    deadline = time.time() + within
    while time.time() < deadline:
        out = subprocess.run([hangwatch, "status", "--json"],
                             capture_output=True, text=True).stdout
        try:
            for e in json.loads(out).get("engines", []):
                if e.get("id") == engine_id:
                    for r in e.get("ranks", []):
                        if r.get("rank") == rank:
                            return r["pid"]
        except (ValueError, KeyError):
            pass
        time.sleep(1)
    return None


def first_manifest(bundles):
    if not os.path.isdir(bundles):
        return None
    for d in sorted(os.listdir(bundles)):
        try:
            with open(os.path.join(bundles, d, "manifest.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            continue
    return None


def trial(a, n):
    tmp = tempfile.mkdtemp(prefix=f"hangwatch-alone-{n}-")
    port, listen = vllm_engine.free_port(), f"127.0.0.1:{vllm_engine.free_port()}"
    engine_id = f"vllm-{port}"
    log = os.path.join(tmp, "serve.log")
    engine = vllm_engine.start_engine(a.python, a.model, port, log,
                               {"VLLM_RINGBUFFER_WARNING_INTERVAL": str(WARN_S),
                                "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": str(TIMEOUT_S)})
    bundles = os.path.join(tmp, "bundles")
    agent = subprocess.Popen(
        [a.hangwatch, "run", "--listen", listen, "--bundle-dir", bundles, "--config", "/dev/null"],
        env=dict(os.environ, HANGWATCH_ENGINES=engine_id),
        stdout=open(os.path.join(tmp, "agent.log"), "w"), stderr=subprocess.STDOUT)
    stop_load = threading.Event()
    try:
        if not vllm_engine.wait_healthy(port, engine):
            return {"error": f"vLLM did not start; see {log}"}
        done = [0]

        def client():
            while not stop_load.is_set():
                if vllm_engine.complete(port, timeout=TIMEOUT_S + 30):
                    done[0] += 1

        clients = [threading.Thread(target=client, daemon=True) for _ in range(2)]
        for c in clients:
            c.start()
        deadline = time.time() + 120
        while done[0] < 3 and time.time() < deadline:
            time.sleep(0.5)
        pid = rank_pid(a.hangwatch, engine_id, 1)
        if pid is None or done[0] < 3:
            return {"error": f"no rank 1 or no load ({done[0]} completions); see {tmp}"}
        time.sleep(2)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.time()
        got = {"warning": None, "death": None, "incident": None, "suspects": None}
        end = t0 + TIMEOUT_S + 60
        text = ""
        with open(log, errors="replace") as serve_log:
            serve_log.seek(0, os.SEEK_END)  # what vLLM writes from the stop on
            while time.time() < end and (got["death"] is None or got["incident"] is None):
                now = time.time() - t0
                text += serve_log.read()
                if got["warning"] is None and WARNING in text:
                    got["warning"] = now
                if got["death"] is None and DEATH.search(text):
                    got["death"] = now
                if got["incident"] is None:
                    m = first_manifest(bundles)
                    if m and m.get("opened_at"):
                        opened = datetime.datetime.fromisoformat(m["opened_at"].replace("Z", "+00:00"))
                        got["incident"] = opened.timestamp() - t0
                        got["suspects"] = [s.get("rank") for s in m.get("suspects", [])]
                time.sleep(0.25)
        os.kill(pid, signal.SIGCONT)
        got["tmp"] = tmp
        return got
    finally:
        stop_load.set()
        agent.terminate()
        vllm_engine.stop_engine(engine)


def fmt(v):
    return "—" if v is None else f"{v:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--hangwatch", default=os.path.join(vllm_engine.ROOT, "target/release/hangwatch"))
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = []
    for n in range(a.trials):
        r = trial(a, n)
        print(f"vllm-alone: trial {n + 1}: {r}", file=sys.stderr)
        rows.append(r)
    ok = [r for r in rows if "error" not in r]
    md = ["", "## vLLM alone against hangwatch on the real engine", "",
          f"vLLM CPU build, TP=2, tiny model, two clients; rank 1 SIGSTOPped under load; times "
          f"after the stop. vLLM ran with VLLM_RINGBUFFER_WARNING_INTERVAL={WARN_S} and "
          f"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS={TIMEOUT_S}; the columns \"at the defaults\" add "
          f"{DEFAULT_WARN_S - WARN_S} s and {DEFAULT_TIMEOUT_S - TIMEOUT_S} s (both timers run from "
          f"the stuck call). hangwatch: release build, default configuration.", "",
          "| trial | hangwatch incident (s) | named | vLLM first ring warning (s), measured / at the default | vLLM dead (s), measured / at the default |",
          "|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        if "error" in r:
            md.append(f"| {i} | {r['error']} | | | |")
            continue
        w, d = r["warning"], r["death"]
        md.append(f"| {i} | {fmt(r['incident'])} | {r['suspects']} | {fmt(w)} / "
                  f"{fmt(None if w is None else w + DEFAULT_WARN_S - WARN_S)} | {fmt(d)} / "
                  f"{fmt(None if d is None else d + DEFAULT_TIMEOUT_S - TIMEOUT_S)} |")

    def med(k):
        v = sorted(r[k] for r in ok if r.get(k) is not None)
        return v[len(v) // 2] if v else None

    right = sum(1 for r in ok if r.get("suspects") == [1])
    warn, dead = med("warning"), med("death")
    warn_default = None if warn is None else warn + DEFAULT_WARN_S - WARN_S
    dead_default = None if dead is None else dead + DEFAULT_TIMEOUT_S - TIMEOUT_S
    line = (f"vllm-alone: real vLLM TP=2, rank 1 stopped, median of {len(ok)}: hangwatch "
            f"{fmt(med('incident'))} s ({right}/{len(rows)} named rank 1), vLLM warning "
            f"{fmt(warn)} s (at the default {fmt(warn_default)} s), "
            f"dead {fmt(dead)} s (at the default {fmt(dead_default)} s)")
    md += ["", line, ""]
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n".join(md))
    good = len(ok) == len(rows) and right == len(rows) and all(
        r.get("warning") is not None and r.get("death") is not None for r in ok)
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
