"""A deployment across nodes (`--nnodes N --node-rank K --master-addr A --master-port P
[--headless]`), over TCP like vLLM's multiprocessing executor across nodes
(docs/multi-node.md):

- the leader's engine core publishes every RPC to the remote workers over TCP (vLLM:
  ZMQ from the broadcast ring's writer) and reads their replies over TCP; its local
  workers keep the shared-memory rings;
- a follower node runs only the headless launcher and its workers: no engine core, no
  API server, no ring;
- every rank's all-reduce meets at a store that rank 0's worker serves on the master
  port (torch's TCP store on rank 0); a rank that does not arrive makes every other rank,
  on every node, wait.

Messages are a 4-byte length and a pickle. Peers are the simulator's own processes.
"""

import json
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from . import common
from .common import HERE, log


def node_ranks(cfg):
    """The global ranks this node runs: node k has ranks k·L … k·L + L − 1."""
    per = cfg["tp"] * cfg.get("pp", 1) // cfg.get("nnodes", 1)
    first = cfg.get("node_rank", 0) * per
    return list(range(first, first + per))


def send_msg(sock, obj):
    data = pickle.dumps(obj, protocol=5)
    sock.sendall(struct.pack("<I", len(data)) + data)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise EOFError
        buf += part
    return buf


def recv_msg(sock):
    (n,) = struct.unpack("<I", recv_exact(sock, 4))
    return pickle.loads(recv_exact(sock, n))


def connect(addr, port, deadline=600.0):
    """Dials a peer until it listens (the other node may start later)."""
    end = time.time() + deadline
    while True:
        try:
            s = socket.create_connection((addr, port), timeout=5)
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.2)


def listener(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    return s


# --------------------------------------------------------------------------- RPCs


class RpcHub:
    """The leader's engine core side: remote workers dial in and say their rank; each
    RPC is published to all of them, their replies queue per rank."""

    def __init__(self, cfg):
        self.sock = listener(cfg["master_addr"], cfg["master_port"] + 1)
        self.conns = {}
        self.replies = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            conn, _ = self.sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                rank = recv_msg(conn)["rank"]
            except (EOFError, OSError, KeyError, TypeError, pickle.UnpicklingError):
                conn.close()
                continue
            with self.lock:
                self.replies.setdefault(rank, queue.Queue())
                self.conns[rank] = conn
            threading.Thread(target=self.read_replies, args=(rank, conn), daemon=True).start()

    def read_replies(self, rank, conn):
        try:
            while True:
                self.replies[rank].put(recv_msg(conn))
        except (EOFError, OSError, pickle.UnpicklingError):
            pass

    def wait_for(self, ranks):
        while True:
            with self.lock:
                if all(r in self.conns for r in ranks):
                    return
            time.sleep(0.05)

    def publish(self, obj):
        with self.lock:
            conns = list(self.conns.values())
        for c in conns:
            try:
                send_msg(c, obj)
            except OSError:
                pass

    def get_response(self, rank, on_wait):
        q = self.replies.setdefault(rank, queue.Queue())
        waited = 0
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                waited += 1
                on_wait(waited)


class RemoteReader:
    """A follower's worker: its RPCs come over TCP from the leader's engine core."""

    def __init__(self, cfg, rank):
        self.sock = connect(cfg["master_addr"], cfg["master_port"] + 1)
        send_msg(self.sock, {"rank": rank})

    def reply(self, obj):
        try:
            send_msg(self.sock, obj)
        except OSError:
            pass

    def close(self):
        self.sock.close()


def dequeue(reader, rank, on_wait=None):
    """The next RPC. When the leader is gone the worker waits on, like vLLM's remote
    reader on its closed socket: forever, holding what it holds."""
    try:
        return recv_msg(reader.sock)
    except (EOFError, OSError, pickle.UnpicklingError):
        reader.sock.close()
        while True:
            time.sleep(1.0)


# --------------------------------------------------------------------------- all-reduce


class Store:
    """Rank 0's store on the master port: each rank says how many all-reduces it arrived
    at; when every rank of the world has reached a count, all of them hear it."""

    def __init__(self, cfg):
        self.world = cfg["tp"] * cfg.get("pp", 1)
        self.counts = {}
        self.conns = []
        self.told = 0
        self.lock = threading.Lock()
        self.sock = listener(cfg["master_addr"], cfg["master_port"])
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            conn, _ = self.sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        try:
            while True:
                rank, n = recv_msg(conn)
                with self.lock:
                    self.counts[rank] = n
                    if len(self.counts) < self.world:
                        continue
                    low = min(self.counts.values())
                    if low <= self.told:
                        continue
                    self.told = low
                    for c in self.conns:
                        try:
                            send_msg(c, low)
                        except OSError:
                            pass
        except (EOFError, OSError, ValueError, TypeError, pickle.UnpicklingError):
            pass


class TcpGroup:
    """One rank's side of the store: the same `arrive`/`done` as the shared-memory
    all-reduce, so the worker's `all_reduce` frame reads the same."""

    def __init__(self, cfg, rank):
        self.rank = rank
        self.store = Store(cfg) if rank == 0 else None
        self.sock = connect(cfg["master_addr"], cfg["master_port"])
        self.n = 0
        self.reached = 0

    def arrive(self, comm=0):
        self.n += 1
        try:
            send_msg(self.sock, (self.rank, self.n))
        except OSError:
            pass
        return self.n

    def done(self, comm, n):
        while self.reached < n:
            try:
                self.reached = recv_msg(self.sock)
            except (EOFError, OSError, pickle.UnpicklingError):
                # The store is gone (rank 0's node died): wait on, as gloo does.
                time.sleep(1.0)
                return False
        return True

    def count(self, comm, rank):
        return self.n if rank == self.rank else self.reached

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------- follower


def headless_main(cfg):
    """A follower node's `vllm serve … --headless`: starts this node's workers and waits;
    its title stays its command line."""
    common.PROC_NAME = "Headless"
    ranks = node_ranks(cfg)
    log("INFO", "launcher.py:86", f"Launching {len(ranks)} data parallel engine(s) in headless mode, node rank {cfg['node_rank']} ranks {ranks}")
    workers = []
    for r in ranks:
        workers.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fakevllm.py"), "--role", "worker", "--rank", str(r), "--config", json.dumps(cfg)],
            close_fds=True,
        ))

    def on_term(*_):
        for p in workers:
            if p.poll() is None:
                p.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    common.emit_event(cfg.get("events"), event="started", node_rank=cfg["node_rank"], launcher_pid=os.getpid(), worker_pids=[p.pid for p in workers], ranks=ranks)
    while True:
        for r, p in zip(ranks, workers):
            if p.poll() is not None:
                log("ERROR", "multiproc_executor.py:390", f"Worker proc VLLM::Worker_TP{r} died unexpectedly, shutting down executor.")
                on_term()
        time.sleep(0.2)

