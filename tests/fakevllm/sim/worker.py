"""A worker (`VLLM::Worker_TP<r>`): takes RPCs from the broadcast ring, steps, replies."""

import os
import random
import signal
import time

from . import common
from . import gpu
from . import nodes
from .common import MIB, emit_event, log, set_title
from .rings import Ring, dequeue, enqueue
from .collectives import Collectives, all_reduce, recv_tensor_dict
from .gpu import Gpu
from .faults import act, mismatched_collective


# --------------------------------------------------------------------------- worker


def worker_main(cfg, rank):
    tp, pp = cfg["tp"], cfg.get("pp", 1)
    stage, tp_rank = divmod(rank, tp)
    # vLLM 0.32 leaves the DP part out of a data-parallel replica's worker titles
    # (measured: `VLLM::Worker` at DP=2, TP=1); the replica is its engine core's.
    parts = (f"_PP{stage}" if pp > 1 else "") + (f"_TP{tp_rank}" if tp > 1 else "")
    set_title("VLLM::Worker" + parts)
    common.PROC_NAME = "Worker" + parts
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    chunk = cfg["chunk_mib"]
    remote = cfg.get("node_rank", 0) > 0
    across = cfg.get("nnodes", 1) > 1
    reply = tp_ring = rpc = None
    if remote:
        # A follower node: RPCs and replies over TCP, no ring on this node.
        rpc = nodes.RemoteReader(cfg, rank)
    else:
        reply = Ring(cfg["reply_rings"][rank], 1, (chunk or 24) * MIB, 10, create=True)
    if tp > 1 and stage == 0 and not across:
        tp_ring = Ring(cfg["tp_ring"], tp - 1, (chunk or 4) * MIB, 6, create=(rank == 0))
    if across:
        coll = nodes.TcpGroup(cfg, rank)
    else:
        coll = Collectives(cfg["coll_names"][stage], tp, tp_rank, create=(tp_rank == 0))
    cfg["pp_link"] = Collectives(cfg["pp_sync"], tp * pp, rank, create=False) if pp > 1 else None
    if not remote:
        readers = len(nodes.node_ranks(cfg))
        rpc = Ring(cfg["rpc_ring"], readers, (chunk or 16) * MIB, 10, create=False)
    if cfg.get("gpu"):
        gpu.GPU = Gpu(cfg, rank, coll)
    fault = cfg.get("fault")
    if fault and (fault["target"] != "worker" or fault["rank"] != rank or fault.get("replica", 0) != cfg.get("replica", 0)):
        fault = None
    parent = os.getppid()
    log("INFO", "parallel_state.py:1906", f"world_size={tp * pp} rank={rank} local_rank={rank - nodes.node_ranks(cfg)[0]} backend=fake")
    try:
        worker_busy_loop(cfg, rank, rpc, reply, coll, fault, parent)
    finally:
        for r in (reply, tp_ring, rpc):
            if r:
                r.close()
        coll.close()


def maybe_fault(cfg, fault, position, rank, coll):
    if not fault or fault["at"] != position or time.time() < cfg["fault_at"]:
        return
    emit_event(cfg.get("events"), event="fault", target="worker", rank=rank, replica=cfg.get("replica", 0), mode=fault["mode"], at=time.time(), position=position)
    mode = fault["mode"]
    if mode == "collective":
        mismatched_collective(coll)
        return
    act(mode)
    if mode == "stop":
        fault["at"] = "done"  # resumed by SIGCONT: carry on normally


def worker_busy_loop(cfg, rank, rpc, reply, coll, fault, parent):
    while True:
        maybe_fault(cfg, fault, "next_rpc", rank, coll)

        def check_parent(_waited):
            if os.getppid() != parent:
                log("INFO", "multiproc_executor.py:843", "Parent process exited, terminating worker queues")
                os._exit(0)

        if reply is None:
            method, args, kwargs, output_rank = nodes.dequeue(rpc, rank)
        else:
            method, args, kwargs, output_rank = dequeue(rpc, rank, on_wait=check_parent)
        if method == "shutdown":
            return
        if method == "execute_model":
            maybe_fault(cfg, fault, "in_step", rank, coll)
            result = execute_model(cfg, rank, coll, *args)
        elif method == "sample_tokens":
            result = {"sampled_token_ids": [[random.randint(0, 511)]]}
        else:
            time.sleep(0.01)
            result = {"method": method, "ok": True}
        if output_rank is None or output_rank == rank:
            message = ("vllm.v1.executor.multiproc_executor", "SUCCESS", result)
            if reply is None:
                rpc.reply(message)
            else:
                enqueue(reply, message)


def execute_model(cfg, rank, coll, step, step_ms, kind="step"):
    link = cfg.get("pp_link")
    stage = rank // cfg["tp"]
    if link is not None and stage > 0:
        # The previous stage's activations for this step.
        done = link.count(0, rank) + 1
        recv_tensor_dict(link, range((stage - 1) * cfg["tp"], stage * cfg["tp"]), done)
    if kind == "compile":
        compile_fx_inner(step_ms)
    else:
        if rank == cfg.get("imbalance_rank", -1):
            step_ms += cfg.get("imbalance_ms", 0)
        model_forward(step_ms)
    if gpu.GPU is not None:
        gpu.GPU.all_reduce()
    else:
        all_reduce(coll)
    if link is not None:
        link.arrive(0)  # handed on to the next stage (send_tensor_dict)
    return {"step": step}


# A step this long computes on the CPU like a real rank's forward pass; shorter ones
# sleep, so that TP=8 at full load still fits on two cores.
COMPUTE_FROM_MS = 500


def model_forward(step_ms):
    if gpu.GPU is not None:
        gpu.GPU.compute(step_ms / 1000.0)
    elif step_ms >= COMPUTE_FROM_MS:
        run_layers(step_ms / 1000.0)
    else:
        time.sleep(step_ms / 1000.0)


def run_layers(seconds):
    """A forward pass on the CPU: Python arithmetic until the step's time is up."""
    end = time.time() + seconds
    acc = 0
    while time.time() < end:
        for i in range(2000):
            acc += i * i
    return acc


def compile_fx_inner(ms):
    """A torch.compile pause: every rank in a compiler frame, CPU busy, GPU idle."""
    return run_layers(ms / 1000.0)
