#!/usr/bin/env bash
# Set up a fresh machine and run the main job: the full pipeline on built-in toy subjects.
# Usage: bash scripts/demo.sh [OUT_DIR] [extra `dreamvid demo` options, e.g. --fast --subject-seed 3]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
OUT="${1:-runs/demo}"; shift || true
"${DREAMVID_VENV:-.venv}/bin/dreamvid" demo --out "$OUT" "$@"
