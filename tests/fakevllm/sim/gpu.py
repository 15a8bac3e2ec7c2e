"""Real GPU work and collectives for `--gpu` (torch; CuPy with one GPU)."""

import ctypes
import time

from . import common
from .common import log


# --------------------------------------------------------------------------- GPU


class Gpu:
    """Real GPU work for `--gpu`: each worker binds GPU `rank % count`; a step runs bf16
    matmuls for its duration; the all-reduce is a real NCCL all-reduce with two or more
    GPUs, and with one GPU the waiting ranks spin in a GPU kernel polling the arrival
    counts in host memory until every rank arrived — the signature of a NCCL wait
    (utilization ~100 % at idle power, docs/gpu.md)."""

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
