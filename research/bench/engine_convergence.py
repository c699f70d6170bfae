"""The paper's convergence claims on the orbit engine (`11_bench`: `bench.convergence_study`), from the command line.

Uses the shipped reference branch (`assets/toy_engine_3dapter`: Eq. 2 with `09e_engine_3dapter`'s recipe, 200 steps on
1,000 ring subjects, lr 5e-4, batch 16), then for each held-out subject runs 3DreamBooth for 400 iterations, 3DreamBooth for 1,600 scored at 400, 800,
1,200 and 1,600, and the joint method (Eq. 4) for 400 scored every 100, with the demo's reference attention (`ROUTER_ATTENTION`: one
spatial grid and centred reference keys, in training and generation); 8 videos per checkpoint. Everything is resumable
and cached under ~/.cache/dreamvid/engine_convergence (the notebook reuses it): rerun the same command after an
interruption. Each subject's scores and claims are written to `--results`.

    python research/bench/engine_convergence.py --subjects 0

About 30 minutes per subject on 2 CPU threads (3DreamBooth 0.35 s per step, the joint method 2.3 s per step).
"""
import argparse
from pathlib import Path
import torch
from dreamvid_lib.core import save_json
from dreamvid_lib.bench import convergence_study, convergence_report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--subjects', type=int, nargs='+', default=[0], help='indices into heldout_subjects(8, seed=0)')
    ap.add_argument('--results', default='results/engine_convergence')
    a = ap.parse_args()
    torch.set_num_threads(2)
    for i in a.subjects:                       # one at a time, so that each finished subject is written at once
        res = convergence_study([i])[i]
        out = Path(a.results); out.mkdir(parents=True, exist_ok=True)
        save_json(out/f'subject_{i}.json', {**res, 'command': f'python research/bench/engine_convergence.py --subjects {i}'})
        table, lines = convergence_report({i: res})
        print(table.to_string(), *lines, sep='\n', flush=True)


if __name__ == '__main__':      # the ring renderer spawns worker processes
    main()
