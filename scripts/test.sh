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
WORKERS="${DREAMVID_TEST_WORKERS:-2}"
# Worker processes share the cores with one torch thread each: with torch's default (all cores) per process, OpenMP
# threads oversubscribe the cores and the notebooks ran 4-8x slower (measured 2026-12-01 on the 2-core machine).
if [ "$WORKERS" != 0 ] && [ "$WORKERS" != 1 ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
python -m pytest tests -n "$WORKERS" --dist loadgroup -ra --durations=15 "$@"
