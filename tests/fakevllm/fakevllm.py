#!/usr/bin/env python3
"""A vLLM look-alike for hangwatch's tests, with injectable hangs: the entry point of
the `sim` package beside it (usage: `--help`; layout and contract: README.md)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sim.launcher import main, serve_main  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
