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
    if not text:
        return None
    f = {"at": "next_rpc"}
    for part in text.split(","):
        k, _, v = part.partition("=")
        f[k.strip()] = v.strip()
    if "rank" not in f or "mode" not in f:
        raise SystemExit("--fault needs rank=R,mode=M")
    f["rank"] = int(f["rank"])
    f["after"] = float(f.get("after", 0))
    if f["mode"] not in ("stop", "sleep", "spin", "native", "exit", "collective"):
        raise SystemExit(f"--fault mode {f['mode']!r} unknown")
    if f["at"] not in ("next_rpc", "in_step"):
        raise SystemExit(f"--fault at={f['at']!r} unknown (next_rpc, in_step)")
    if f["mode"] == "collective":
        f["at"] = "in_step"  # an extra collective only exists inside a step
    return f
