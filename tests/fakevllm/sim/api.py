"""The API server (`vllm serve …`): starts the engine core, serves /metrics and /health, logs like vLLM."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from . import common
from .common import HERE, STATS_INTERVAL, emit_event, log, log_lines
from .faults import act


# --------------------------------------------------------------------------- API server


def api_main(args, rest):
    """The API server: keeps the environment, starts the engine core, logs stats,
    serves /health and /metrics, dies when the engine dies."""
    common.PROC_NAME = "APIServer"
    cfg = json.loads(os.environ["FAKEVLLM_CONFIG"])
    events = cfg.get("events")
    r_fd, w_fd = os.pipe()
    core = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "fakevllm.py"), "--role", "core", "--status-fd", str(w_fd), "--config", json.dumps(cfg)],
        pass_fds=(w_fd,),
    )
    os.close(w_fd)
    stats = {"running": 0, "waiting": 0, "gen": 0, "prompt": 0}
    stopping = {"now": False}

    def on_term(*_):
        stopping["now"] = True
        if core.poll() is None:
            core.terminate()
            try:
                core.wait(timeout=10)
            except subprocess.TimeoutExpired:
                core.kill()
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
            act(fault["mode"])  # SIGSTOP from any thread stops the whole process

        threading.Thread(target=api_fault, daemon=True).start()

    def stats_logger():
        last_gen, last_prompt = 0, 0
        while True:
            time.sleep(STATS_INTERVAL)
            g, p = stats["gen"], stats["prompt"]
            log("INFO", "loggers.py:335", f"Engine 000: Avg prompt throughput: {(p - last_prompt) / STATS_INTERVAL:.1f} tokens/s, Avg generation throughput: {(g - last_gen) / STATS_INTERVAL:.1f} tokens/s, Running: {stats['running']} reqs, Waiting: {stats['waiting']} reqs, CPU KV cache usage: 0.0%, Prefix cache hit rate: 0.0%")
            last_gen, last_prompt = g, p

    threading.Thread(target=stats_logger, daemon=True).start()
    reason = "engine core exited"
    with os.fdopen(r_fd) as status:
        for line in status:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            ev = msg.get("event")
            if ev == "ready":
                emit_event(events, event="started", api_pid=os.getpid(), core_pid=msg["core_pid"], worker_pids=msg["worker_pids"], rings=msg["rings"], port=cfg["port"])
                log("INFO", "entry.py:140", f"Starting vLLM server on http://127.0.0.1:{cfg['port']}")
            elif ev == "stats":
                stats.update({k: msg[k] for k in ("running", "waiting", "gen", "prompt")})
            elif ev == "dead":
                reason = msg.get("reason", reason)
    core.wait()
    if stopping["now"]:
        return 0
    log_lines("ERROR", "async_llm.py:906", "AsyncLLM output_handler failed.\nTraceback (most recent call last):\n  File \"fakevllm.py\", in output_handler\nvllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.")
    emit_event(events, event="dead", at=time.time(), reason=reason)
    return 1


def serve_http(port, stats, hostile=False, silent=False):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
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
                body = (
                    "# TYPE vllm:num_requests_running gauge\n"
                    f'vllm:num_requests_running{{model_name="fake-model"}} {stats["running"]}\n'
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f'vllm:num_requests_waiting{{model_name="fake-model"}} {stats["waiting"]}\n'
                    "# TYPE vllm:generation_tokens_total counter\n"
                    f'vllm:generation_tokens_total{{model_name="fake-model"}} {stats["gen"]}\n'
                    "# TYPE vllm:prompt_tokens_total counter\n"
                    f'vllm:prompt_tokens_total{{model_name="fake-model"}} {stats["prompt"]}\n'
                ).encode()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
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
