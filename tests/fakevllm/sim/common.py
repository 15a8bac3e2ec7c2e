"""Settings from vLLM's environment variables, vLLM-style log lines, the events file, process titles."""

import json
import os
import sys
import time


# The simulator's folder (tests/fakevllm): its entry points live there.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20

# --------------------------------------------------------------------------- settings


def env_float(name, default):
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return float(default)


EXECUTE_TIMEOUT = env_float("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", 300)
WARNING_INTERVAL = env_float("VLLM_RINGBUFFER_WARNING_INTERVAL", 60)
STATS_INTERVAL = env_float("VLLM_LOG_STATS_INTERVAL", 10)

# --------------------------------------------------------------------------- logging

PROC_NAME = "APIServer"


def log(level, where, msg):
    """One line in vLLM's format: `(Proc pid=N) LEVEL MM-DD HH:MM:SS [file.py:line] msg`."""
    ts = time.strftime("%m-%d %H:%M:%S", time.localtime())
    line = f"({PROC_NAME} pid={os.getpid()}) {level} {ts} [{where}] {msg}\n"
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def log_lines(level, where, text):
    for ln in text.rstrip("\n").split("\n"):
        log(level, where, ln)


def emit_event(path, **fields):
    if not path:
        return
    data = (json.dumps(fields) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        pass


def set_title(title):
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        sys.stderr.write("fakevllm: setproctitle is not installed; titles stay plain\n")
