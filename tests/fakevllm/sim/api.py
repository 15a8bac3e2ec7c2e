"""The API server (`vllm serve …`): starts the engine core, serves /metrics and /health, logs like vLLM."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from . import common
from .common import HERE, STATS_INTERVAL, emit_event, log, log_lines, set_title
from .faults import act


# --------------------------------------------------------------------------- API server

# The event loop is stuck (`--fault target=api,mode=sleep`): nothing is answered.
WEDGED = [False]
# Held while the event loop is busy (`--api-busy-every`): answers wait for it.
HTTP_LOCK = threading.Lock()


def api_main(args, rest):
    """The API server: keeps the environment, starts the engine core(s) (one per
    data-parallel replica, and a DP coordinator), logs stats, serves /health and
    /metrics, dies when an engine dies."""
    common.PROC_NAME = "APIServer"
    cfg = json.loads(os.environ["FAKEVLLM_CONFIG"])
    events = cfg.get("events")
    dp = cfg.get("dp", 1)
    if cfg.get("dp_lockstep"):
        with open(cfg["dp_sync"], "wb") as f:
            f.write(b"\0" * 8 * dp)
    cores, pipes = [], []
    for i in range(dp):
        r_fd, w_fd = os.pipe()
        core = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fakevllm.py"), "--role", "core", "--status-fd", str(w_fd), "--config", json.dumps(dict(cfg, replica=i))],
            pass_fds=(w_fd,),
        )
        os.close(w_fd)
        cores.append(core)
        pipes.append(r_fd)
    if dp > 1:
        cores.append(subprocess.Popen([sys.executable, os.path.join(HERE, "fakevllm.py"), "--role", "coordinator"]))
    stats = [{"running": 0, "waiting": 0, "gen": 0, "prompt": 0} for _ in range(dp)]
    stopping = {"now": False}

    def on_term(*_):
        stopping["now"] = True
        for core in cores:
            if core.poll() is None:
                core.terminate()
        for core in cores:
            try:
                core.wait(timeout=10)
            except subprocess.TimeoutExpired:
                core.kill()
        for path in (cfg["dp_sync"], cfg.get("api_wedged", "")):
            try:
                os.unlink(path)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if cfg["duration"]:
        def stop_later():
            time.sleep(cfg["duration"])
            on_term()
        threading.Thread(target=stop_later, daemon=True).start()

    serve_http(cfg["port"], stats, cfg.get("hostile_metrics", False), cfg.get("silent_metrics", False))
    fault = cfg.get("fault")
    if fault and fault["target"] == "api":
        def api_fault():
            time.sleep(max(0.0, cfg["fault_at"] - time.time()))
            emit_event(events, event="fault", target="api", rank=-1, mode=fault["mode"], at=time.time(), position="api")
            if fault["mode"] == "sleep":
                # The event loop stuck: the main thread hangs in Python, nothing is
                # answered, no request reaches the engine core any more.
                WEDGED[0] = True
                open(cfg["api_wedged"], "w").close()
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return
            act(fault["mode"])  # SIGSTOP from any thread stops the whole process

        signal.signal(signal.SIGUSR1, lambda *_: act("sleep"))
        threading.Thread(target=api_fault, daemon=True).start()
    if cfg.get("api_busy_every"):
        # A slow front end, not a hung one: the main thread tokenises for a while.
        signal.signal(signal.SIGUSR2, lambda *_: tokenize_huge_prompt(cfg["api_busy_ms"]))

        def busy_spells():
            while True:
                time.sleep(cfg["api_busy_every"])
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR2)

        threading.Thread(target=busy_spells, daemon=True).start()

    def stats_logger():
        last = [(0, 0)] * dp
        while True:
            time.sleep(STATS_INTERVAL)
            for i, st in enumerate(stats):
                g, p = st["gen"], st["prompt"]
                log("INFO", "loggers.py:335", f"Engine {i:03d}: Avg prompt throughput: {(p - last[i][1]) / STATS_INTERVAL:.1f} tokens/s, Avg generation throughput: {(g - last[i][0]) / STATS_INTERVAL:.1f} tokens/s, Running: {st['running']} reqs, Waiting: {st['waiting']} reqs, CPU KV cache usage: 0.0%, Prefix cache hit rate: 0.0%")
                last[i] = (g, p)

    threading.Thread(target=stats_logger, daemon=True).start()
    result = {"reason": "engine core exited", "ready": [None] * dp}
    done = threading.Event()

    def follow(i, fd):
        with os.fdopen(fd) as status:
            for line in status:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                ev = msg.get("event")
                if ev == "ready":
                    result["ready"][i] = msg
                    if all(result["ready"]):
                        started(result["ready"])
                elif ev == "stats":
                    stats[i].update({k: msg[k] for k in ("running", "waiting", "gen", "prompt")})
                elif ev == "dead":
                    result["reason"] = msg.get("reason", result["reason"])
        done.set()

    def started(ready):
        first = ready[0]
        replicas = [{"core_pid": m["core_pid"], "worker_pids": m["worker_pids"], "rings": m["rings"]} for m in ready]
        emit_event(events, event="started", api_pid=os.getpid(), core_pid=first["core_pid"], worker_pids=first["worker_pids"], rings=first["rings"], port=cfg["port"], replicas=replicas)
        log("INFO", "entry.py:140", f"Starting vLLM server on http://127.0.0.1:{cfg['port']}")

    for i, fd in enumerate(pipes):
        threading.Thread(target=follow, args=(i, fd), daemon=True).start()
    # Any engine core gone ends the server, as vLLM's does; one that went without being
    # asked is said first (vLLM 0.32's process monitor, measured on a SIGKILLed core).
    done.wait()
    if not stopping["now"]:
        log("WARNING", "core_client.py:817", "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup")
    for core in cores[:dp]:
        core.wait()
    if stopping["now"]:
        return 0
    log_lines("ERROR", "async_llm.py:906", "AsyncLLM output_handler failed.\nTraceback (most recent call last):\n  File \"fakevllm.py\", in output_handler\nvllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.")
    emit_event(events, event="dead", at=time.time(), reason=result["reason"])
    return 1


def tokenize_huge_prompt(ms):
    """The event loop busy in Python (CPU bound): HTTP answers wait until it is done."""
    with HTTP_LOCK:
        end = time.time() + ms / 1000.0
        n = 0
        while time.time() < end:
            n += sum(i * i for i in range(500))
    return n


def coordinator_main():
    """`VLLM::DPCoordinator`: balances requests over replicas; here it only lives as long
    as its API server."""
    set_title("VLLM::DPCoordinator")
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    return 0


def serve_http(port, stats, hostile=False, silent=False):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            while WEDGED[0]:
                time.sleep(1)
            with HTTP_LOCK:
                pass
            if self.path == "/metrics" and silent:
                # Takes the request and never answers (a wedged API server's event loop).
                time.sleep(3600)
                return
            if self.path == "/metrics" and hostile:
                # A look-alike's answer that never ends, with label values that would
                # break an exposition that copied them.
                self.send_response(200)
                self.end_headers()
                line = 'vllm:num_requests_running{model_name="x\\"} 1\nhangwatch_injected 1\n'.encode()
                try:
                    while True:
                        self.wfile.write(line * 1000)
                except OSError:
                    return
            if self.path == "/health":
                body = b""
            elif self.path == "/metrics":
                # One series per replica, labelled `engine` like vLLM's.
                names = [("running", "num_requests_running", "gauge"), ("waiting", "num_requests_waiting", "gauge"), ("gen", "generation_tokens_total", "counter"), ("prompt", "prompt_tokens_total", "counter")]
                text = ""
                for key, name, kind in names:
                    text += f"# TYPE vllm:{name} {kind}\n"
                    for i, st in enumerate(stats):
                        text += f'vllm:{name}{{engine="{i}",model_name="fake-model"}} {st[key]}\n'
                body = text.encode()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            """`/v1/completions`: answered once the engine has generated a few more
            tokens — so a request to a hung engine hangs, as with vLLM, until the
            client gives up or vLLM's timeout kills the engine (then a 500)."""
            if self.path != "/v1/completions":
                self.send_response(404)
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(min(length, 1 << 20))
            start = sum(st["gen"] for st in stats)
            deadline = time.time() + 600
            while sum(st["gen"] for st in stats) < start + 8 and time.time() < deadline:
                time.sleep(0.01)
            ok = time.time() < deadline
            body = b'{"object": "text_completion", "choices": [{"index": 0, "text": " ok"}]}' if ok else b'{"error": "engine dead"}'
            self.send_response(200 if ok else 500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    try:
        srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as e:
        log("WARNING", "api_server.py:1", f"cannot listen on port {port}: {e}")
        return
    threading.Thread(target=srv.serve_forever, daemon=True).start()
