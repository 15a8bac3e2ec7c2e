"""The injected hangs. Their function names are the contract: tests find them in stacks."""

import ctypes
import os
import signal
import time

from . import common
from . import gpu
from .collectives import all_reduce


# --------------------------------------------------------------------------- faults


def stuck_in_python_sleep():
    while True:
        time.sleep(1)


def stuck_in_python_spin():
    x = 0
    while True:
        x += 1


def stuck_in_native_call():
    libc = ctypes.CDLL(None, use_errno=True)
    while True:
        libc.pause()


def stop_self():
    """SIGSTOP to itself: the process is stopped right here until SIGCONT."""
    os.kill(os.getpid(), signal.SIGSTOP)


def mismatched_collective(coll):
    """An extra all-reduce on a second communicator that no other rank ever joins."""
    if gpu.GPU is not None:
        gpu.GPU.all_reduce(comm=1)
    all_reduce(coll, comm=1)


def parse_fault(text):
    """`[target=worker|core|api,]rank=R,mode=M[,after=S][,at=…]`: a worker's rank, or the
    engine core or the API server (no rank)."""
    if not text:
        return None
    f = {"at": "next_rpc", "target": "worker"}
    for part in text.split(","):
        k, _, v = part.partition("=")
        f[k.strip()] = v.strip()
    if f["target"] not in ("worker", "core", "api"):
        raise SystemExit(f"--fault target={f['target']!r} unknown (worker, core, api)")
    if f["target"] != "worker":
        f.setdefault("rank", "-1")
        if f.get("mode") == "collective":
            raise SystemExit("--fault mode=collective is a worker's")
        if f["target"] == "api" and f.get("mode") not in ("stop", "exit", "sleep"):
            raise SystemExit("--fault target=api: mode stop, exit or sleep (its event loop stuck)")
    if "rank" not in f or "mode" not in f:
        raise SystemExit("--fault needs rank=R,mode=M (or target=core|api,mode=M)")
    f["rank"] = int(f["rank"])
    f["replica"] = int(f.get("replica", 0))
    f["after"] = float(f.get("after", 0))
    if f["mode"] not in ("stop", "sleep", "spin", "native", "exit", "collective"):
        raise SystemExit(f"--fault mode {f['mode']!r} unknown")
    if f["at"] not in ("next_rpc", "in_step"):
        raise SystemExit(f"--fault at={f['at']!r} unknown (next_rpc, in_step)")
    if f["mode"] == "collective":
        f["at"] = "in_step"  # an extra collective only exists inside a step
    return f


def act(mode):
    """The hang itself, in the calling process (any role but a worker's collective)."""
    if mode == "stop":
        stop_self()
    elif mode == "sleep":
        stuck_in_python_sleep()
    elif mode == "spin":
        stuck_in_python_spin()
    elif mode == "native":
        stuck_in_native_call()
    elif mode == "exit":
        os._exit(1)
