"""Shared-memory rings with vLLM's byte layout and protocol (docs/vllm.md), and the file they share with the collective buffer."""

import mmap
import os
import pickle
import random
import select
import struct
import time

from . import common


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
