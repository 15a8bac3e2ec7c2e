"""The engine core (`VLLM::EngineCore`): starts the workers, schedules steps, logs stats and waits."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback

from . import common
from .common import (
    EXECUTE_TIMEOUT,
    HERE,
    MIB,
    WARNING_INTERVAL,
    emit_event,
    log,
    log_lines,
    set_title,
)
from .faults import act
from .collectives import Collectives
from .rings import Ring, dequeue, enqueue, new_ring_name
from . import nodes


# --------------------------------------------------------------------------- engine core


def core_main(cfg, status_fd):
    suffix = f"_DP{cfg['replica']}" if cfg.get("dp", 1) > 1 else ""
    set_title("VLLM::EngineCore" + suffix)
    common.PROC_NAME = "EngineCore" + suffix
    # Every worker of every pipeline stage; the names say `tp` for the world.
    tp = cfg["tp"] * cfg.get("pp", 1)
    chunk = cfg["chunk_mib"]
    status = os.fdopen(status_fd, "w", buffering=1)

    def tell(**kw):
        try:
            status.write(json.dumps(kw) + "\n")
        except (OSError, ValueError):
            pass

    if cfg.get("executor") == "uni":
        return uni_main(cfg, tell)

    # Across nodes this node's ranks read the ring; the others get each RPC over TCP.
    local = nodes.node_ranks(cfg)
    remote = [r for r in range(tp) if r not in local]
    hub = nodes.RpcHub(cfg) if remote else None
    cfg["rpc_ring"] = new_ring_name()
    cfg["reply_rings"] = [new_ring_name() for _ in local]
    cfg["tp_ring"] = new_ring_name() if not remote else None
    # One TP all-reduce buffer per pipeline stage, named like vLLM's; one hand-off
    # buffer between the stages.
    group = cfg["tp"]
    tag = random.getrandbits(128)
    cfg["coll_names"] = ["vllm_dist_%032x-tp:%d-[%d-%d]-cpushm_0" % (tag, s, s * group, s * group + group - 1) for s in range(cfg.get("pp", 1))]
    cfg["pp_sync"] = "vllm_dist_%032x-pp-cpushm_0" % tag
    log("INFO", "core.py:133", f"Initializing a V1 LLM engine (v0.32.0) with config: model='{cfg['model']}'")
    rpc = Ring(cfg["rpc_ring"], len(local), (chunk or 16) * MIB, 10, create=True)
    pp_link = Collectives(cfg["pp_sync"], tp, 0, create=True) if cfg.get("pp", 1) > 1 else None  # noqa: F841 (kept mapped)
    workers = []
    cfg_json = json.dumps(cfg)
    for r in local:
        p = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fakevllm.py"), "--role", "worker", "--rank", str(r), "--config", cfg_json],
            close_fds=True,
        )
        workers.append(p)
    replies = [Ring(cfg["reply_rings"][r], 1, (chunk or 24) * MIB, 10, create=False) for r in local]
    state = {"dying": False}

    def kill_workers(reason):
        for r, p in enumerate(workers):
            if p.poll() is None:
                log("WARNING", "system_utils.py:225", f"[shutdown] force killing sub process VLLM::Worker_TP{r} pid {p.pid}")
                try:
                    p.kill()
                except OSError:
                    pass
        for p in workers:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def cleanup():
        for r in replies:
            r.close()
        rpc.close()
        # Segments created by workers that were killed before they could clean up.
        for name in [n for n in cfg["reply_rings"] + [cfg["tp_ring"], cfg["pp_sync"]] + cfg["coll_names"] if n]:
            try:
                os.unlink("/dev/shm/" + name)
            except FileNotFoundError:
                pass

    def on_term(*_):
        state["dying"] = True
        kill_workers("sigterm")
        cleanup()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def monitor():
        while True:
            for r, p in enumerate(workers):
                code = p.poll()
                if code is not None and not state["dying"]:
                    state["dying"] = True
                    log("ERROR", "multiproc_executor.py:390", f"Worker proc VLLM::Worker_TP{r} died unexpectedly (exit code: {code}), shutting down executor.")
                    time.sleep(2.0)
                    tell(event="dead", reason=f"worker {r} died")
                    kill_workers("worker died")
                    cleanup()
                    os._exit(1)
            time.sleep(0.2)

    threading.Thread(target=monitor, daemon=True).start()

    def rpc_call(method, args, output_rank, expect):
        """Broadcasts one RPC and waits for the replies it expects."""
        enqueue(rpc, (method, args, {}, output_rank))
        if hub is not None:
            hub.publish((method, args, {}, output_rank))
        enqueued = time.time()
        got = []
        for r in expect:
            got.append(get_response(r, method, enqueued))
        return got

    def get_response(rank, method, enqueued):
        last_warn = [time.time()]

        def on_wait(_w):
            now = time.time()
            if now - last_warn[0] >= WARNING_INTERVAL:
                log("INFO", "shm_broadcast.py:871", f"No available shared memory broadcast block found in {int(WARNING_INTERVAL)} seconds. This typically happens when some processes are hanging or doing some time-consuming work (e.g. compilation, weight/kv cache quantization).")
                last_warn[0] = now
            if now - enqueued > EXECUTE_TIMEOUT:
                raise TimeoutError

        try:
            if rank not in local:
                return hub.get_response(rank, on_wait)
            return dequeue(replies[rank], 0, on_wait=on_wait)
        except TimeoutError:
            fatal(method)

    def fatal(method):
        state["dying"] = True
        tb = "".join(traceback.format_stack(limit=6))
        log_lines("ERROR", "core.py:1512", "EngineCore encountered a fatal error.\nTraceback (most recent call last):\n" + tb + f"TimeoutError: RPC call to {method} timed out.")
        log("INFO", "multiproc_executor.py:479", f"[shutdown] Executor: waiting for worker exit count={tp}")
        tell(event="dead", reason=f"RPC call to {method} timed out")
        kill_workers("timeout")
        cleanup()
        os._exit(1)

    if hub is not None:
        hub.wait_for(remote)  # the follower nodes' workers have dialled in
    # Start-up: collective RPCs every worker answers (their reply rings keep these).
    for m in ("init_device", "load_model", "determine_available_memory", "initialize_cache", "compile_or_warm_up_model"):
        rpc_call(m, (), None, range(tp))
    log("INFO", "core.py:402", "init engine (profile, create kv cache, warmup model) took 0.50 s")
    tell(event="ready", core_pid=os.getpid(), worker_pids=[p.pid for p in workers], rings={"rpc": cfg["rpc_ring"], "reply": cfg["reply_rings"], "tp": cfg["tp_ring"]})

    engine_busy_loop(cfg, rpc_call, tell)


def uni_main(cfg, tell):
    """The uni executor: no worker, no ring; the engine core steps the model itself."""
    log("INFO", "core.py:133", f"Initializing a V1 LLM engine (v0.32.0) with config: model='{cfg['model']}', distributed_executor_backend=uni")

    def on_term(*_):
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    gpu_step = uni_gpu() if cfg.get("gpu") else None

    def rpc_call(method, args, output_rank, expect):
        if method == "execute_model":
            step_ms = args[1]
            if gpu_step is not None:
                gpu_step(step_ms / 1000.0)
            elif step_ms >= 500:
                end = time.time() + step_ms / 1000.0
                while time.time() < end:
                    sum(i * i for i in range(2000))
            else:
                time.sleep(step_ms / 1000.0)
        return [{"method": method}]

    time.sleep(0.5)  # loading the model
    log("INFO", "core.py:402", "init engine (profile, create kv cache, warmup model) took 0.50 s")
    tell(event="ready", core_pid=os.getpid(), worker_pids=[], rings={"rpc": None, "reply": [], "tp": None})
    engine_busy_loop(cfg, rpc_call, tell)


def uni_gpu():
    """`--gpu` with the uni executor: the engine core itself runs bf16 matmuls on GPU 0
    for each step (no collective: one rank)."""
    import torch

    if torch.cuda.device_count() == 0:
        raise SystemExit("--gpu: no GPU visible")
    torch.cuda.set_device(0)
    state = {"a": torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)}

    def model_forward(seconds):
        end = time.time() + seconds
        while time.time() < end:
            state["a"] = (state["a"] @ state["a"]) * 0.01
            torch.cuda.synchronize()

    return model_forward


def core_fault(cfg):
    """The configured hang of the engine core, once its time has come."""
    fault = cfg.get("fault")
    if not fault or fault["target"] != "core" or fault.get("done") or time.time() < cfg["fault_at"]:
        return
    if fault.get("replica", 0) != cfg.get("replica", 0):
        return
    fault["done"] = True
    emit_event(cfg.get("events"), event="fault", target="core", rank=-1, replica=cfg.get("replica", 0), mode=fault["mode"], at=time.time(), position=fault["at"])
    act(fault["mode"])


def api_stopped(cfg=None):
    """Requests reach the engine core through the API server: none while it is stopped
    or its event loop is stuck."""
    if cfg and os.path.exists(cfg.get("api_wedged", "")):
        return True
    try:
        with open(f"/proc/{os.getppid()}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


class DpSync:
    """Replicas in lockstep: before each step every replica's engine core writes its step
    count and waits until every replica has reached it (vLLM's DP all-reduce)."""

    def __init__(self, cfg):
        import mmap

        self.n = cfg["dp"]
        self.me = cfg["replica"]
        fd = os.open(cfg["dp_sync"], os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, 8 * self.n)
        finally:
            os.close(fd)

    def counts(self):
        import struct

        return struct.unpack(f"<{self.n}q", self.map[: 8 * self.n])


def dp_all_reduce(sync, step):
    import struct

    sync.map[8 * sync.me : 8 * sync.me + 8] = struct.pack("<q", step)
    while min(sync.counts()) < step:
        time.sleep(0.002)


def engine_busy_loop(cfg, rpc_call, tell):
    """Requests arrive on a queue (an idle core blocks on it: futex wait, as vLLM's does);
    each step broadcasts execute_model, waits for the output rank's reply, then
    sample_tokens and its reply."""
    import queue

    arrivals = queue.Queue()
    rng = random.Random(cfg.get("seed", 1))
    load = cfg["load"]
    out = cfg["output_rank"]

    def generator():
        time.sleep(cfg["warmup"])
        if load == "idle":
            return
        while True:
            while api_stopped(cfg):
                time.sleep(0.1)
            if load == "steady":
                arrivals.put(cfg["tokens_per_request"])
                time.sleep(cfg["step_ms"] / 1000.0 * cfg["tokens_per_request"] / 4)
            elif load == "bursty":
                burst_end = time.time() + rng.uniform(2, 5)
                while time.time() < burst_end:
                    arrivals.put(cfg["tokens_per_request"])
                    time.sleep(rng.uniform(0.05, 0.3))
                time.sleep(rng.uniform(2, 6))

    threading.Thread(target=generator, daemon=True).start()
    running = []
    step = 0
    gen_tokens = 0
    prompt_tokens = 0
    last_long = time.time()
    last_compile = time.time()
    n_long = 0
    sync = DpSync(cfg) if cfg.get("dp_lockstep") and cfg.get("dp", 1) > 1 else None
    while True:
        if not running and sync is None:
            tell(event="stats", running=0, waiting=arrivals.qsize(), gen=gen_tokens, prompt=prompt_tokens)
            n = arrivals.get()  # idle: block here
            running.append(n)
            prompt_tokens += 8
        elif not running:
            # In lockstep a replica with nothing to do runs dummy steps with the others.
            try:
                running.append(arrivals.get(timeout=0.05))
                prompt_tokens += 8
            except queue.Empty:
                pass
        while True:
            try:
                running.append(arrivals.get_nowait())
                prompt_tokens += 8
            except queue.Empty:
                break
        running = running[:16]
        step_ms = max(1.0, rng.gauss(cfg["step_ms"], cfg["step_ms"] * 0.2))
        every = cfg["long_step_every"]
        if every and time.time() - last_long >= every:
            # A list of lengths is cycled through, one long step each.
            lengths = cfg["long_step_ms"]
            step_ms = lengths[n_long % len(lengths)]
            n_long += 1
            last_long = time.time()
        kind = "step"
        if step == 0 and cfg.get("first_step_ms"):
            step_ms = cfg["first_step_ms"]
        elif cfg.get("compile_every") and time.time() - last_compile >= cfg["compile_every"]:
            kind = "compile"
            step_ms = cfg["compile_ms"]
            last_compile = time.time()
        core_fault(cfg)
        if sync is not None:
            dp_all_reduce(sync, step + 1)
        rpc_call("execute_model", (step, step_ms, kind), out, [out])
        rpc_call("sample_tokens", (step,), out, [out])
        step += 1
        gen_tokens += len(running)
        running = [n - 1 for n in running if n > 1]
        tell(event="stats", running=len(running), waiting=arrivals.qsize(), gen=gen_tokens, prompt=prompt_tokens)
