#!/usr/bin/env python3
"""A vLLM look-alike for hangwatch's tests: `vllm serve --tensor-parallel-size N` as seen
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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sim.launcher import main, serve_main  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
