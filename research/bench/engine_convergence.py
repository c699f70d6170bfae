"""The paper's convergence claims on the orbit engine (`11_bench`, `bench.engine_convergence`), for the command line.

Pre-trains the reference branch once (Eq. 2, `09e_engine_3dapter`'s recipe: 200 steps on 1,000 ring subjects, lr 5e-4,
batch 16), then for each held-out subject runs 3DreamBooth for 400 iterations, 3DreamBooth for 1,600 scored at 400, 800,
1,200 and 1,600, and the joint method (Eq. 4) for 400 scored every 100; 8 videos per checkpoint. Everything is resumable:
rerun the same command after an interruption. Each subject's scores are copied to `--results`.

    python research/bench/engine_convergence.py --subjects 0 --work ~/.cache/dreamvid/engine_convergence

About 50 minutes per subject on 2 CPU threads (3DreamBooth 0.6 s per step, the joint method 3.4 s per step), plus 7 for the
branch and 2 for rendering the rings on first use.
"""
import argparse, shutil
from pathlib import Path
import torch
from dreamvid_lib import toyworld as tw
from dreamvid_lib.core import cache_dir, save_json
from dreamvid_lib.orbit_engine import load_orbit_engine
from dreamvid_lib.engine_dapter import add_dapter_branch, pretrain_engine_dapter, DapterPretrainConfig
from dreamvid_lib.bench import engine_convergence

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--subjects', type=int, nargs='+', default=[0], help='indices into heldout_subjects(8, seed=0)')
    ap.add_argument('--work', default=str(cache_dir()/'engine_convergence'))
    ap.add_argument('--results', default='results/engine_convergence')
    ap.add_argument('--pretrain-steps', type=int, default=200)
    ap.add_argument('--ring-subjects', type=int, default=1000)
    ap.add_argument('--n-videos', type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(a.work).expanduser()
    branch = work/f'branch_{a.ring_subjects}_{a.pretrain_steps}'
    if not (branch/'dapter.json').exists():
        engine = load_orbit_engine(); add_dapter_branch(engine)
        rings = tw.load_ring_dataset(tw.build_ring_dataset(cache_dir(), a.ring_subjects))
        log = pretrain_engine_dapter(engine, rings, DapterPretrainConfig(steps=a.pretrain_steps), work/'branch_work', branch)
        print(f"branch: {a.pretrain_steps} steps in {log['seconds_total']:.0f} s", flush=True)
    for i in a.subjects:
        res = engine_convergence(i, work/f'subject_{i}', branch, n_videos=a.n_videos)
        out = Path(a.results); out.mkdir(parents=True, exist_ok=True)
        save_json(out/f'subject_{i}.json', {**res, 'branch': {'pretrain_steps': a.pretrain_steps, 'ring_subjects': a.ring_subjects},
                                            'command': f'python research/bench/engine_convergence.py --subjects {i}'})
        for k, s in res['scores'].items():
            print(f"subject {i} {k:14s} PSNR {s['psnr']:.2f} SSIM {s['ssim']:.3f} rotation {s['rotation_monotone_rate']:.2f}"
                  + (f" routing {s['routing_accuracy']:.2f}" if 'routing_accuracy' in s else ''), flush=True)


if __name__ == '__main__':      # the ring renderer spawns worker processes
    main()
