"""Sampling settings of the orbit-prior engine (`vfusion3d.RolloutEngine` on row 43's two-frame model), measured on the 32
held-out orbits of 12d_vfusion3d's engine comparison (random first-frame pose, elevation in [0, 30] degrees, random direction):
the share turning the prompted way, the mean view-matched error of frames 1-7, the median of each orbit's worst frame, and
orbits passing `orbit_consistency`. Output of the committed run: logs/engine_settings.txt (one CPU thread, 2 busy cores).

    python research/orbit_prior/engine_settings.py
"""
import time
import numpy as np
import torch
from dreamvid_lib import toyworld as tw
from dreamvid_lib.evaluate import view_match
from dreamvid_lib.prompts import video_caption
from dreamvid_lib.pretrain import load_orbit_prior
from dreamvid_lib.vfusion3d import (RolloutEngine, orbit_plan, render_orbit, orbit_grid, orbit_consistency,
                                    run_engine)

SETTINGS = [(4, 0.0, 1.0), (8, 0.0, 1.0), (16, 0.0, 1.0), (4, 0.05, 1.0), (8, 0.05, 1.0), (4, 0.0, 2.0), (8, 0.0, 2.0)]

if __name__ == '__main__':
    torch.set_num_threads(1)
    bb = load_orbit_prior()
    subs = tw.heldout_subjects(32, seed=0)
    plan = orbit_plan(subs, 0)
    first = np.stack([render_orbit(s, sp, 1)[0] for s, (sp, _) in zip(subs, plan)])
    prompts = [video_caption(s, sp.direction) for s, (sp, _) in zip(subs, plan)]
    grids = [orbit_grid(s, sp) for s, (sp, _) in zip(subs, plan)]
    print('| Euler steps per hop | cond_sigma | guidance | turns the prompted way | mean view-matched error | median worst frame | good | seconds |')
    print('|---|---|---|---|---|---|---|---|')
    for steps, cs, g in SETTINGS:
        eng = RolloutEngine(bb, steps=steps, cond_sigma=cs, guidance=g)
        t0 = time.perf_counter(); vids = run_engine(eng, first, prompts, [e for _, e in plan]); dt = time.perf_counter() - t0
        labs = [orbit_consistency(v, gr, sp.direction) for v, gr, (sp, _) in zip(vids, grids, plan)]
        right = sum(l['measured_direction'] == sp.direction for l, (sp, _) in zip(labs, plan))
        err = np.mean([view_match(v, gr)[2][1:].mean() for v, gr in zip(vids, grids)])
        print(f"| {steps} | {cs:g} | {g:g} | {right}/32 | {err:.3f} | {np.median([l['max_error'] for l in labs]):.3f} | "
              f"{sum(l['good'] for l in labs)}/32 | {dt:.1f} |", flush=True)
