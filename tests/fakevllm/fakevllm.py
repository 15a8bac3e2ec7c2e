#!/usr/bin/env python3
"""A vLLM look-alike for hangwatch's tests: `vllm serve --tensor-parallel-size N` as seen
from outside, with injectable hangs.

Written from the measured facts in shared/design/VLLM.md: the process tree and titles
(`vllm serve ...` -> `VLLM::EngineCore` -> `VLLM::Worker_TP<r>`), the shared-memory rings
in /dev/shm/psm_<8 hex> with vLLM's byte layout and protocol, vLLM's log lines and
timeouts. Standard library plus `setproctitle`.

    python3 tests/fakevllm/fakevllm.py --tp 4 --load steady \
        --fault rank=2,after=15,mode=sleep --log /tmp/vllm.log --events /tmp/ev.jsonl

Roles: run directly, this file re-executes itself as `<python> .../bin/vllm serve ...`
(the API server, whose command line then reads like vLLM's); the API server starts the
engine core (`--role core`), which starts the workers (`--role worker`).
"""

import argparse
import ctypes
import json
import mmap
import os
import pickle
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
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


# --------------------------------------------------------------------------- rings


def new_ring_name():
    return "psm_%08x" % random.getrandbits(32)


class SharedFile:
    """A file in /dev/shm mapped read-write: created by its owner, waited for by the
    others (the owner may not have made it yet), unlinked by its owner on close."""

    def map_shared(self, name, size, create, what):
        path = "/dev/shm/" + name
        if create:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, size)
        else:
            deadline = time.time() + 60
            while True:
                try:
                    fd = os.open(path, os.O_RDWR)
                    if os.fstat(fd).st_size == size:
                        break
                    os.close(fd)
                except FileNotFoundError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"{what} {name} never appeared")
                time.sleep(0.02)
        self.buf = mmap.mmap(fd, size)
        os.close(fd)
        self.path = path
        self.owner = create

    def close(self):
        try:
            self.buf.close()
        except (BufferError, ValueError):
            pass
        if self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class Ring(SharedFile):
    """vLLM's ring: K chunks of C data bytes, then K flag groups [written, read_0..read_n-1].

    The writer waits for a chunk that is unwritten or read by all, clears `written`,
    writes the data, clears every reader flag, then sets `written`. A reader waits for
    `written and not read[r]`, takes the message, and only then sets `read[r]`.
    """

    def __init__(self, name, readers, chunk_bytes, chunks, create):
        self.name = name
        self.n = readers
        self.c = chunk_bytes
        self.k = chunks
        self.size = (chunk_bytes + 1 + readers) * chunks
        self.meta = chunk_bytes * chunks
        self.map_shared(name, self.size, create, "ring")
        self.pos = 0

    def flag_at(self, chunk):
        return self.meta + chunk * (1 + self.n)

    def write(self, payload_buffers, wait_cb=None):
        """Frames buffers as vLLM does: overflow byte, u16 count, (u32 len, bytes)..."""
        body = bytearray(b"\x00")
        body += struct.pack(">H", len(payload_buffers))
        for b in payload_buffers:
            body += struct.pack(">I", len(b)) + b
        if len(body) > self.c:
            raise RuntimeError("message larger than a chunk")
        f = self.flag_at(self.pos)
        waited = 0.0
        while True:
            written = self.buf[f]
            if not written or all(self.buf[f + 1 + r] for r in range(self.n)):
                break
            idle_sleep(0.001)
            waited += 0.001
            if wait_cb:
                wait_cb(waited)
        self.buf[f] = 0
        start = self.pos * self.c
        self.buf[start : start + len(body)] = bytes(body)
        for r in range(self.n):
            self.buf[f + 1 + r] = 0
        self.buf[f] = 1
        self.pos = (self.pos + 1) % self.k

    def ready(self, reader):
        f = self.flag_at(self.pos)
        return self.buf[f] == 1 and self.buf[f + 1 + reader] == 0

    def take(self, reader):
        """Reads the current chunk (caller checked `ready`) and marks it read."""
        f = self.flag_at(self.pos)
        start = self.pos * self.c
        count = struct.unpack(">H", self.buf[start + 1 : start + 3])[0]
        off = start + 3
        bufs = []
        for _ in range(count):
            ln = struct.unpack(">I", self.buf[off : off + 4])[0]
            bufs.append(bytes(self.buf[off + 4 : off + 4 + ln]))
            off += 4 + ln
        obj = pickle.loads(bufs[0])
        self.buf[f + 1 + reader] = 1
        self.pos = (self.pos + 1) % self.k
        return obj

def idle_sleep(seconds):
    """Waits in poll(2), as vLLM's readers do (wchan poll_schedule_timeout)."""
    select.select([], [], [], seconds)


def acquire_read(ring, reader, timeout=None, on_wait=None):
    """Waits for the next chunk for `reader` (vLLM's name for this wait)."""
    started = time.time()
    nap = 0.0005
    while not ring.ready(reader):
        idle_sleep(nap)
        waited = time.time() - started
        # Back off when nothing comes, so an idle TP=8 engine costs little CPU.
        nap = 0.0005 if waited < 0.05 else (0.002 if waited < 1.0 else 0.01)
        if on_wait:
            on_wait(waited)
        if timeout is not None and waited > timeout:
            raise TimeoutError
    return ring.take(reader)


def dequeue(ring, reader, timeout=None, on_wait=None):
    return acquire_read(ring, reader, timeout, on_wait)


def enqueue(ring, obj):
    ring.write([pickle.dumps(obj, protocol=5)])


# --------------------------------------------------------------------------- all-reduce


class Collectives(SharedFile):
    """A simulated TP all-reduce over shared memory: per communicator a u64 arrival
    count per rank. A rank that does not arrive makes the others wait, as in real TP.
    The file is named like vLLM's CPU all-reduce buffer, which hangwatch must ignore."""

    COMMS = 2

    def __init__(self, name, world, rank, create):
        self.world = world
        self.rank = rank
        self.map_shared(name, self.COMMS * world * 8, create, "collective buffer")

    def _slot(self, comm, rank):
        return (comm * self.world + rank) * 8

    def arrive(self, comm):
        o = self._slot(comm, self.rank)
        n = struct.unpack_from("<Q", self.buf, o)[0] + 1
        struct.pack_into("<Q", self.buf, o, n)
        return n

    def done(self, comm, n):
        return all(
            struct.unpack_from("<Q", self.buf, self._slot(comm, r))[0] >= n
            for r in range(self.world)
        )

def all_reduce(coll, comm=0):
    """Waits until every rank of the communicator arrived (cheap sleeps: TP=8 fits on
    2 cores)."""
    n = coll.arrive(comm)
    while not coll.done(comm, n):
        time.sleep(0.001)


# --------------------------------------------------------------------------- GPU


class Gpu:
    """Real GPU work for `--gpu`: each worker binds GPU `rank % count`; a step runs bf16
    matmuls for its duration; the all-reduce is a real NCCL all-reduce with two or more
    GPUs, and with one GPU the waiting ranks spin in a GPU kernel polling the arrival
    counts in host memory until every rank arrived — the signature of a NCCL wait
    (utilization ~100 % at idle power, GPU.md)."""

    def __init__(self, cfg, rank, coll):
        import torch

        self.torch = torch
        self.count = torch.cuda.device_count()
        if self.count == 0:
            raise SystemExit("--gpu: no GPU visible")
        self.dev = rank % self.count
        torch.cuda.set_device(self.dev)
        self.a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        self.tp = cfg["tp"]
        self.rank = rank
        self.coll = coll
        self.nccl = self.count >= 2
        if self.nccl:
            import torch.distributed as dist

            self.dist = dist
            dist.init_process_group(
                "nccl", init_method="file://" + cfg["gpu_rendezvous"], world_size=self.tp, rank=rank
            )
            self.groups = [dist.group.WORLD, dist.new_group(list(range(self.tp)))]
            self.t = torch.ones(1 << 20, device="cuda")
            # NCCL creates a communicator on its first collective: bring both up now, so
            # a mismatched collective later waits in a kernel, not in communicator set-up.
            for g in self.groups:
                dist.all_reduce(self.t, group=g)
            torch.cuda.synchronize()
        else:
            self.kernel = None
            try:
                self._map_counts_for_the_gpu(coll)
            except Exception as e:  # noqa: BLE001 - any CuPy/CUDA failure: fall back
                log("WARNING", "fakevllm.py:1", f"CuPy flag-polling kernel unavailable ({e!r}); waiting ranks spin in torch.cuda._sleep kernels instead")

    def _map_counts_for_the_gpu(self, coll):
        import cupy as cp

        self.cp = cp
        # Map the shared arrival counts into the GPU's address space.
        buf = coll.buf
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        self.size = len(buf)
        cp.cuda.runtime.hostRegister(addr, self.size, 3)  # portable | mapped
        self.dptr = cp.cuda.runtime.hostGetDevicePointer(addr, 0)
        self.kernel = cp.RawKernel(
            r"""
extern "C" __global__ void wait_for_peers(volatile unsigned long long* counts,
                                          int world, unsigned long long target) {
    while (true) {
        int all = 1;
        for (int r = 0; r < world; r++) if (counts[r] < target) all = 0;
        if (all) break;
    }
}
""",
            "wait_for_peers",
        )
        log("INFO", "fakevllm.py:1", "waiting ranks spin in a GPU kernel polling the arrival counts")

    def compute(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            self.a = (self.a @ self.a) * 0.01
            self.torch.cuda.synchronize()

    def all_reduce(self, comm=0):
        if self.nccl:
            self.dist.all_reduce(self.t, group=self.groups[comm])
            self.torch.cuda.synchronize()
            return
        n = self.coll.arrive(comm)
        if self.kernel is None:
            # One GPU thread busy for ~1 ms at a time until every rank arrived.
            while not self.coll.done(comm, n):
                self.torch.cuda._sleep(1_000_000)
                self.torch.cuda.synchronize()
            return
        cp = self.cp
        counts = cp.ndarray(
            (self.coll.world,),
            dtype=cp.uint64,
            memptr=cp.cuda.MemoryPointer(
                cp.cuda.UnownedMemory(self.dptr, self.size, self), comm * self.coll.world * 8
            ),
        )
        self.kernel((1,), (1,), (counts, cp.int32(self.coll.world), cp.uint64(n)))
        cp.cuda.Device().synchronize()


GPU = None


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
    if GPU is not None:
        GPU.all_reduce(comm=1)
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


# --------------------------------------------------------------------------- worker


def worker_main(cfg, rank):
    global PROC_NAME
    tp = cfg["tp"]
    title = f"VLLM::Worker_TP{rank}" if tp > 1 else "VLLM::Worker"
    set_title(title)
    PROC_NAME = f"Worker_TP{rank}" if tp > 1 else "Worker"
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    chunk = cfg["chunk_mib"]
    reply = Ring(cfg["reply_rings"][rank], 1, (chunk or 24) * MIB, 10, create=True)
    tp_ring = None
    if tp > 1:
        tp_ring = Ring(cfg["tp_ring"], tp - 1, (chunk or 4) * MIB, 6, create=(rank == 0))
    coll = Collectives(cfg["coll_name"], tp, rank, create=(rank == 0))
    rpc = Ring(cfg["rpc_ring"], tp, (chunk or 16) * MIB, 10, create=False)
    if cfg.get("gpu"):
        global GPU
        GPU = Gpu(cfg, rank, coll)
    fault = cfg.get("fault")
    if fault and fault["rank"] != rank:
        fault = None
    parent = os.getppid()
    log("INFO", "parallel_state.py:1906", f"world_size={tp} rank={rank} local_rank={rank} backend=fake")
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
    emit_event(cfg.get("events"), event="fault", rank=rank, mode=fault["mode"], at=time.time(), position=position)
    mode = fault["mode"]
    if mode == "stop":
        stop_self()
        fault["at"] = "done"  # resumed by SIGCONT: carry on normally
    elif mode == "sleep":
        stuck_in_python_sleep()
    elif mode == "spin":
        stuck_in_python_spin()
    elif mode == "native":
        stuck_in_native_call()
    elif mode == "exit":
        os._exit(1)
    elif mode == "collective":
        mismatched_collective(coll)


def worker_busy_loop(cfg, rank, rpc, reply, coll, fault, parent):
    while True:
        maybe_fault(cfg, fault, "next_rpc", rank, coll)

        def check_parent(_waited):
            if os.getppid() != parent:
                log("INFO", "multiproc_executor.py:843", "Parent process exited, terminating worker queues")
                os._exit(0)

        method, args, kwargs, output_rank = dequeue(rpc, rank, on_wait=check_parent)
        if method == "shutdown":
            return
        if method == "execute_model":
            maybe_fault(cfg, fault, "in_step", rank, coll)
            result = execute_model(coll, *args)
        elif method == "sample_tokens":
            result = {"sampled_token_ids": [[random.randint(0, 511)]]}
        else:
            time.sleep(0.01)
            result = {"method": method, "ok": True}
        if output_rank is None or output_rank == rank:
            enqueue(reply, ("vllm.v1.executor.multiproc_executor", "SUCCESS", result))


def execute_model(coll, step, step_ms):
    model_forward(step_ms)
    if GPU is not None:
        GPU.all_reduce()
    else:
        all_reduce(coll)
    return {"step": step}


def model_forward(step_ms):
    if GPU is not None:
        GPU.compute(step_ms / 1000.0)
    else:
        time.sleep(step_ms / 1000.0)


# --------------------------------------------------------------------------- engine core


def core_main(cfg, status_fd):
    global PROC_NAME
    set_title("VLLM::EngineCore")
    PROC_NAME = "EngineCore"
    tp = cfg["tp"]
    chunk = cfg["chunk_mib"]
    status = os.fdopen(status_fd, "w", buffering=1)

    def tell(**kw):
        try:
            status.write(json.dumps(kw) + "\n")
        except (OSError, ValueError):
            pass

    cfg["rpc_ring"] = new_ring_name()
    cfg["reply_rings"] = [new_ring_name() for _ in range(tp)]
    cfg["tp_ring"] = new_ring_name()
    cfg["coll_name"] = "vllm_dist_%032x-tp:0-[0-%d]-cpushm_0" % (random.getrandbits(128), tp - 1)
    log("INFO", "core.py:133", f"Initializing a V1 LLM engine (v0.32.0) with config: model='{cfg['model']}'")
    rpc = Ring(cfg["rpc_ring"], tp, (chunk or 16) * MIB, 10, create=True)
    workers = []
    cfg_json = json.dumps(cfg)
    for r in range(tp):
        p = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fakevllm.py"), "--role", "worker", "--rank", str(r), "--config", cfg_json],
            close_fds=True,
        )
        workers.append(p)
    replies = [Ring(cfg["reply_rings"][r], 1, (chunk or 24) * MIB, 10, create=False) for r in range(tp)]
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
        for name in cfg["reply_rings"] + [cfg["tp_ring"], cfg["coll_name"]]:
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
        enqueued = time.time()
        got = []
        for r in expect:
            got.append(get_response(replies[r], method, enqueued))
        return got

    def get_response(ring, method, enqueued):
        last_warn = [time.time()]

        def on_wait(_w):
            now = time.time()
            if now - last_warn[0] >= WARNING_INTERVAL:
                log("INFO", "shm_broadcast.py:871", f"No available shared memory broadcast block found in {int(WARNING_INTERVAL)} seconds. This typically happens when some processes are hanging or doing some time-consuming work (e.g. compilation, weight/kv cache quantization).")
                last_warn[0] = now
            if now - enqueued > EXECUTE_TIMEOUT:
                raise TimeoutError

        try:
            return dequeue(ring, 0, on_wait=on_wait)
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

    # Start-up: collective RPCs every worker answers (their reply rings keep these).
    for m in ("init_device", "load_model", "determine_available_memory", "initialize_cache", "compile_or_warm_up_model"):
        rpc_call(m, (), None, range(tp))
    log("INFO", "core.py:402", "init engine (profile, create kv cache, warmup model) took 0.50 s")
    tell(event="ready", core_pid=os.getpid(), worker_pids=[p.pid for p in workers], rings={"rpc": cfg["rpc_ring"], "reply": cfg["reply_rings"], "tp": cfg["tp_ring"]})

    engine_busy_loop(cfg, rpc_call, tell)


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
    while True:
        if not running:
            tell(event="stats", running=0, waiting=arrivals.qsize(), gen=gen_tokens, prompt=prompt_tokens)
            n = arrivals.get()  # idle: block here
            running.append(n)
            prompt_tokens += 8
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
            step_ms = cfg["long_step_ms"]
            last_long = time.time()
        rpc_call("execute_model", (step, step_ms), out, [out])
        rpc_call("sample_tokens", (step,), out, [out])
        step += 1
        gen_tokens += len(running)
        running = [n - 1 for n in running if n > 1]
        tell(event="stats", running=len(running), waiting=arrivals.qsize(), gen=gen_tokens, prompt=prompt_tokens)


# --------------------------------------------------------------------------- API server


def api_main(args, rest):
    """The API server: keeps the environment, starts the engine core, logs stats,
    serves /health and /metrics, dies when the engine dies."""
    global PROC_NAME
    PROC_NAME = "APIServer"
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

    serve_http(cfg["port"], stats)

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


def serve_http(port, stats):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
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


# --------------------------------------------------------------------------- launcher


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def launcher(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--load", choices=("idle", "steady", "bursty"), default="steady")
    ap.add_argument("--step-ms", type=float, default=20.0, help="mean step duration")
    ap.add_argument("--long-step-every", type=float, default=0, help="seconds between long steps (0: none)")
    ap.add_argument("--long-step-ms", type=float, default=8000)
    ap.add_argument("--tokens-per-request", type=int, default=32)
    ap.add_argument("--fault", default=None, help="rank=R,after=S,mode=stop|sleep|spin|native|exit|collective[,at=next_rpc|in_step]")
    ap.add_argument("--log", default=None, help="stdout and stderr of every process go here")
    ap.add_argument("--events", default=None)
    ap.add_argument("--chunk-mib", type=int, default=0, help="chunk size of every ring in MiB (0: vLLM's defaults)")
    ap.add_argument("--duration", type=float, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--warmup", type=float, default=2.0, help="idle seconds between ready and load")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gpu", action="store_true", help="real GPU work and collectives (torch; CuPy with one GPU)")
    a = ap.parse_args(argv)
    if a.tp < 1 or a.tp > 64:
        raise SystemExit("--tp must be 1..64")
    fault = parse_fault(a.fault)
    if fault and fault["rank"] >= a.tp:
        raise SystemExit("--fault rank is outside the TP group")
    port = a.port or free_port()
    now = time.time()
    cfg = {
        "tp": a.tp,
        "load": a.load,
        "step_ms": a.step_ms,
        "long_step_every": a.long_step_every,
        "long_step_ms": a.long_step_ms,
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
        "output_rank": 0,
        "gpu": a.gpu,
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
    sys.exit(api_main(a, rest))


if __name__ == "__main__":
    sys.exit(main())
