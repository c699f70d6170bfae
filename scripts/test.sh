#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite; ends with pytest's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
source "${DREAMVID_VENV:-.venv}/bin/activate"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
inside_git() { git rev-parse --is-inside-work-tree >/dev/null 2>&1; }
echo "== nbdev-clean must leave no diff"
nbdev-clean
if inside_git && ! git diff --quiet -- nbs; then git --no-pager diff --stat -- nbs; echo "nbdev-clean changed notebooks: run nbdev-clean and commit"; exit 1; fi
echo "== nbdev-export must leave no diff"
nbdev-export
if inside_git && ! git diff --quiet -- dreamvid_lib; then git --no-pager diff --stat -- dreamvid_lib; echo "the library disagrees with the notebooks: run nbdev-export and commit"; exit 1; fi
echo "== nbdev-proc-nbs (the docs processing step, without Quarto; it tries to install Quarto and says \"sudo: not found\" where it cannot)"
nbdev-proc-nbs >/dev/null
echo "== pytest (unit tests, every notebook through papermill, nbdev-test)"
python -m pytest tests -ra --durations=15 "$@"
