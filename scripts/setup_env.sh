#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install dreamvid into it.
# torch: a GPU machine (nvidia-smi works) gets PyPI's Linux wheel of torch 2.13.0, which is the CUDA build;
# a CPU machine gets the CPU build: set TORCH_CPU_INDEX to a CPU wheel index if your pip would otherwise
# fetch the CUDA wheel (on the reference machines `pip install torch==2.13.0` already resolves to a local
# CPU wheel). Every other dependency is pinned in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DREAMVID_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "== installing torch 2.13.0 (CUDA build: a GPU was found)"
    "$PY" -m pip install -q "torch==2.13.0"
  else
    echo "== installing torch 2.13.0 (CPU build)"
    "$PY" -m pip install -q ${TORCH_CPU_INDEX:+--index-url "$TORCH_CPU_INDEX"} "torch==2.13.0"
  fi
fi
echo "== installing dreamvid and its pinned dependencies"
"$PY" -m pip install -q -e ".[dev]"
# open3d (3D geometric fidelity) links against the system's libusb-1.0; Debian/Ubuntu images often lack it.
if ! "$PY" -c "import open3d" >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing libusb-1.0-0 (needed by open3d)"
    (apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1)) \
      || echo "!! could not install libusb-1.0-0; run: sudo apt-get install libusb-1.0-0 (open3d needs it)"
  else
    echo "!! open3d cannot load; on Debian/Ubuntu run: sudo apt-get install libusb-1.0-0"
  fi
fi
"$PY" -c "import dreamvid_lib, torch, diffusers, peft, nbdev, papermill; print('dreamvid', dreamvid_lib.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
