"""The ranks' all-reduce over a shared file: every rank waits until all arrived."""

import struct
import time

from . import common
from .rings import SharedFile


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

    def count(self, comm, rank):
        return struct.unpack_from("<Q", self.buf, self._slot(comm, rank))[0]

    def done(self, comm, n):
        return all(
            struct.unpack_from("<Q", self.buf, self._slot(comm, r))[0] >= n
            for r in range(self.world)
        )

def recv_tensor_dict(link, ranks, n):
    """Pipeline parallelism: waits until every rank of the previous stage handed on step
    `n` (vLLM's `recv_tensor_dict` between stages)."""
    while not all(link.count(0, r) >= n for r in ranks):
        time.sleep(0.001)


def all_reduce(coll, comm=0):
    """Waits until every rank of the communicator arrived (cheap sleeps: TP=8 fits on
    2 cores)."""
    n = coll.arrive(comm)
    while not coll.done(comm, n):
        time.sleep(0.001)
