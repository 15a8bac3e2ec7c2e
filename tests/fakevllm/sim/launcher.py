"""The simulator's command line: the launcher, and the role a re-executed process plays."""

import argparse
import json
import os
import random
import socket
import sys
import time

from . import common
from .common import HERE
from .faults import parse_fault
from .worker import worker_main
from .core import core_main
from .api import api_main, coordinator_main
from .nodes import headless_main


USAGE = """A vLLM look-alike for hangwatch's tests: `vllm serve --tensor-parallel-size N` as seen
from outside, with injectable hangs.

Written from the measured facts in docs/vllm.md: the process tree and titles
(`vllm serve ...` -> `VLLM::EngineCore` -> `VLLM::Worker_TP<r>`), the shared-memory rings
in /dev/shm/psm_<8 hex> with vLLM's byte layout and protocol, vLLM's log lines and
timeouts. Standard library plus `setproctitle`.

    python3 tests/fakevllm/fakevllm.py --tp 4 --load steady \
        --fault rank=2,after=15,mode=sleep --log /tmp/vllm.log --events /tmp/ev.jsonl

Roles: run directly, this file re-executes itself as `<python> .../bin/vllm serve ...`
(the API server, whose command line then reads like vLLM's); the API server starts the
engine core (`--role core`), which starts the workers (`--role worker`).
"""


# --------------------------------------------------------------------------- launcher


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def launcher(argv):
    ap = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--load", choices=("idle", "steady", "bursty"), default="steady")
    ap.add_argument("--step-ms", type=float, default=20.0, help="mean step duration")
    ap.add_argument("--long-step-every", type=float, default=0, help="seconds between long steps (0: none)")
    ap.add_argument("--long-step-ms", default="8000", help="length of a long step in ms, or a comma-separated list cycled through")
    ap.add_argument("--compile-every", type=float, default=0, help="seconds between compile pauses (0: none): every rank in a compile frame, CPU busy")
    ap.add_argument("--compile-ms", type=float, default=10000)
    ap.add_argument("--first-step-ms", type=float, default=0, help="the first request's step takes this long (0: like the others)")
    ap.add_argument("--imbalance-rank", type=int, default=-1, help="this rank's every step takes --imbalance-ms longer")
    ap.add_argument("--imbalance-ms", type=float, default=1000)
    ap.add_argument("--tokens-per-request", type=int, default=32)
    ap.add_argument("--fault", default=None, help="[target=worker|core|api,]rank=R,after=S,mode=stop|sleep|spin|native|exit|collective[,at=next_rpc|in_step] (rank only for a worker)")
    ap.add_argument("--pp", type=int, default=1, help="pipeline stages: TP x PP workers (VLLM::Worker_PP<p>_TP<t>), each stage waits for the one before it; the engine waits for the last stage's first rank")
    ap.add_argument("--api-busy-every", type=float, default=0, help="seconds between spells of the API server's event loop busy in Python (tokenising a huge prompt: CPU busy, nothing answered meanwhile); 0: none")
    ap.add_argument("--api-busy-ms", type=float, default=3000)
    ap.add_argument("--dp", type=int, default=1, help="data-parallel replicas: one engine core (VLLM::EngineCore_DP<i>) with its own workers each, and a VLLM::DPCoordinator")
    ap.add_argument("--dp-lockstep", action="store_true", help="the replicas step in lockstep (expert parallelism: a collective across replicas every step, dummy steps when a replica has nothing to do)")
    ap.add_argument("--executor", choices=("mp", "uni"), default="mp", help="uni: no worker process, the engine core runs the model (vLLM's executor at world size 1 on a GPU); TP 1 only")
    ap.add_argument("--log", default=None, help="stdout and stderr of every process go here")
    ap.add_argument("--events", default=None)
    ap.add_argument("--chunk-mib", type=int, default=0, help="chunk size of every ring in MiB (0: vLLM's defaults)")
    ap.add_argument("--duration", type=float, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--warmup", type=float, default=2.0, help="idle seconds between ready and load")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hostile-metrics", action="store_true", help="/metrics answers with an endless body (a hostile look-alike)")
    ap.add_argument("--silent-metrics", action="store_true", help="/metrics takes the request and never answers")
    ap.add_argument("--nnodes", type=int, default=1, help="nodes the world (TP) spans: node k runs ranks k*L..k*L+L-1, L = TP/nnodes")
    ap.add_argument("--node-rank", type=int, default=0)
    ap.add_argument("--master-addr", default="127.0.0.1")
    ap.add_argument("--master-port", type=int, default=0, help="rank 0's store listens here, the leader's engine core on the next port")
    ap.add_argument("--headless", action="store_true", help="a follower node: the headless launcher and this node's workers only")
    ap.add_argument("--gpu", action="store_true", help="real GPU work and collectives (torch; CuPy with one GPU)")
    a = ap.parse_args(argv)
    if a.tp < 1 or a.tp > 64:
        raise SystemExit("--tp must be 1..64")
    if a.pp < 1 or a.pp * a.tp > 64:
        raise SystemExit("--pp must be 1.. with TP x PP <= 64")
    if a.dp < 1 or a.dp > 8:
        raise SystemExit("--dp must be 1..8")
    if a.nnodes > 1:
        if a.pp != 1 or a.dp != 1 or a.executor != "mp" or a.gpu:
            raise SystemExit("--nnodes: TP across nodes with the mp executor only (no --pp, --dp, --gpu)")
        if a.tp % a.nnodes or not 0 <= a.node_rank < a.nnodes or not a.master_port:
            raise SystemExit("--nnodes must divide --tp; --node-rank 0..nnodes-1; --master-port is needed")
        if a.headless != (a.node_rank > 0):
            raise SystemExit("node rank 0 serves; every other node is --headless")
    fault = parse_fault(a.fault)
    if fault and fault["target"] == "worker" and fault["rank"] >= a.tp * a.pp:
        raise SystemExit("--fault rank is outside the world (TP x PP)")
    if fault and not 0 <= fault["replica"] < a.dp:
        raise SystemExit("--fault replica is outside the DP group")
    if a.executor == "uni":
        if a.tp != 1:
            raise SystemExit("--executor uni runs one rank: --tp 1")
        if fault and fault["target"] == "worker":
            fault["target"] = "core"  # the engine core is rank 0
            if fault["mode"] == "collective":
                raise SystemExit("--executor uni has no collectives")
    port = a.port or free_port()
    now = time.time()
    cfg = {
        "tp": a.tp,
        "pp": a.pp,
        "dp": a.dp,
        "dp_lockstep": a.dp_lockstep,
        "dp_sync": "/dev/shm/fakevllm-dp-%d-%d" % (os.getpid(), port),
        "api_wedged": "/dev/shm/fakevllm-api-wedged-%d-%d" % (os.getpid(), port),
        "replica": 0,
        "executor": a.executor,
        "api_busy_every": a.api_busy_every,
        "api_busy_ms": a.api_busy_ms,
        "load": a.load,
        "step_ms": a.step_ms,
        "long_step_every": a.long_step_every,
        "long_step_ms": [float(x) for x in str(a.long_step_ms).split(",") if x.strip()],
        "compile_every": a.compile_every,
        "compile_ms": a.compile_ms,
        "first_step_ms": a.first_step_ms,
        "imbalance_rank": a.imbalance_rank,
        "imbalance_ms": a.imbalance_ms,
        "tokens_per_request": a.tokens_per_request,
        "fault": fault,
        "fault_at": now + (fault["after"] if fault else 0),
        "events": os.path.abspath(a.events) if a.events else None,
        "chunk_mib": a.chunk_mib,
        "duration": a.duration,
        "port": port,
        "model": a.model,
        "warmup": a.warmup,
        "seed": a.seed,
        "output_rank": a.tp * a.pp - a.tp,
        "gpu": a.gpu,
        "hostile_metrics": a.hostile_metrics,
        "silent_metrics": a.silent_metrics,
        "nnodes": a.nnodes,
        "node_rank": a.node_rank,
        "master_addr": a.master_addr,
        "master_port": a.master_port,
        "gpu_rendezvous": "/tmp/fakevllm-nccl-%d-%d" % (os.getpid(), port),
    }
    if a.log:
        fd = os.open(a.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    # The configuration travels in the environment so that the command line reads like
    # vLLM's: `<python> .../bin/vllm serve <model> --tensor-parallel-size N --port P`.
    os.environ["FAKEVLLM_CONFIG"] = json.dumps(cfg)
    serve = [sys.executable, os.path.join(HERE, "bin", "vllm"), "serve", a.model, "--tensor-parallel-size", str(a.tp), "--port", str(port)]
    if a.pp > 1:
        serve += ["--pipeline-parallel-size", str(a.pp)]
    if a.dp > 1:
        serve += ["--data-parallel-size", str(a.dp)]
    if a.dp_lockstep:
        serve += ["--enable-expert-parallel"]
    if a.nnodes > 1:
        serve += ["--distributed-executor-backend", "mp", "--nnodes", str(a.nnodes), "--node-rank", str(a.node_rank),
                  "--master-addr", a.master_addr, "--master-port", str(a.master_port)]
    if a.headless:
        # No API server on a follower: its command line names no port.
        serve = [x for i, x in enumerate(serve) if x != "--port" and (i == 0 or serve[i - 1] != "--port")] + ["--headless"]
    os.execv(sys.executable, serve)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--role":
        ap = argparse.ArgumentParser()
        ap.add_argument("--role")
        ap.add_argument("--rank", type=int, default=0)
        ap.add_argument("--config")
        ap.add_argument("--status-fd", type=int, default=-1)
        a = ap.parse_args(argv)
        cfg = json.loads(a.config)
        random.seed()
        if a.role == "core":
            return core_main(cfg, a.status_fd)
        if a.role == "worker":
            return worker_main(cfg, a.rank)
        if a.role == "coordinator":
            return coordinator_main()
        raise SystemExit(f"unknown role {a.role}")
    return launcher(argv)


def serve_main(argv):
    """Entry of bin/vllm: `vllm serve <model> --tensor-parallel-size N --port P --config J`."""
    ap = argparse.ArgumentParser(prog="vllm")
    ap.add_argument("cmd")
    ap.add_argument("model")
    ap.add_argument("--tensor-parallel-size", type=int)
    ap.add_argument("--port", type=int)
    a, rest = ap.parse_known_args(argv)
    if "--headless" in rest:
        sys.exit(headless_main(json.loads(os.environ["FAKEVLLM_CONFIG"])))
    sys.exit(api_main(a, rest))
