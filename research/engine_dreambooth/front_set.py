"""06a's recipe table, rows 7-8: how many front views frame 0's adapter learns from (`EngineDreamBoothConfig.front_deg`).

The default teaches frame 0's adapter the views within ±30° of the front (5 views of the demo's lamp), and the front is
3DreamBooth's weakest sector (13.7 dB against 15.9-16.3 on the other sides). This trains 3DreamBooth on the engine for
the demo's subject (or `--subject`) with narrower front sets and scores each like the demo (8 videos, seeds 0-7, directions alternating;
view-matched PSNR / SSIM over the turn and per 90° sector, monotone-rotation rate).

    python research/engine_dreambooth/front_set.py --front-deg 15 5                  # rows 7-8 (the lamp)
    python research/engine_dreambooth/front_set.py --subject 1 --front-deg --nearest 1 2   # the mug: the 1 and 2 most frontal views

`--nearest N` picks the N views nearest the front whatever their offsets (`front_deg=0` in the library is N = 1). Every toy
subject is captured at the same azimuths (offsets from the front 3.3°, 12.6°, 15.0°, 22.5°, 24.2°, ...), so ±15° keeps 2
views and ±5° one. About 3.5 minutes per value on 2 CPU threads.
"""
import argparse, tempfile
import numpy as np
import torch
from dreamvid_lib import toyworld as tw
from dreamvid_lib.experiments import SubjectTruth
from dreamvid_lib.orbit_engine import load_orbit_engine
from dreamvid_lib.engine_dreambooth import (EngineDreamBoothConfig, train_engine_dreambooth, engine_adapter, sector_fidelity,
                                            front_views)
from dreamvid_lib.prompts import orbit_prompt, alternating_directions


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--front-deg', type=float, nargs='*', default=[30.0, 15.0, 5.0])
    ap.add_argument('--nearest', type=int, nargs='*', default=[], help='also: the N views nearest the front, whatever their offsets')
    ap.add_argument('--steps', type=int, default=400)
    ap.add_argument('--videos', type=int, default=8)
    ap.add_argument('--subject', type=int, default=0, help='index into heldout_subjects(8, seed=0): 0 the lamp (the demo), 1 the mug')
    a = ap.parse_args()
    torch.set_num_threads(2)
    subject = tw.heldout_subjects(8, seed=0)[a.subject]
    truth = SubjectTruth(subject, 32)
    mv = truth.mv
    off = np.abs((np.asarray(mv.azimuth, float) + 180) % 360 - 180)
    print(f"{subject.description()}: the views' azimuth offsets from the front, nearest first: {np.round(np.sort(off)[:6], 1).tolist()}")
    dirs, seeds = alternating_directions(a.videos), list(range(a.videos))
    prompts = [orbit_prompt(mv.prompt(), d) for d in dirs]
    nearest = [float(np.sort(off)[n - 1]) + 1e-3 for n in a.nearest]
    for fd in list(a.front_deg) + nearest:
        idx = front_views(mv, fd)
        engine = load_orbit_engine()
        with tempfile.TemporaryDirectory() as d:
            log = train_engine_dreambooth(engine, mv, EngineDreamBoothConfig(steps=a.steps, front_deg=fd), d, progress=False)
        with engine_adapter(engine, '3db'): videos = engine.generate(prompts, seeds)
        s = sector_fidelity(videos, truth.grid)
        sec = ' / '.join(f"{s['per_sector'][k]['psnr']:.2f}" if s['per_sector'][k] else '-' for k in ('front', 'side_90', 'back', 'side_270'))
        print(f"front_deg {fd:.4g}: {len(idx)} views (offsets {np.round(off[idx], 1).tolist()}), {a.steps} steps in {log['seconds']:.0f} s: "
              f"PSNR {s['psnr']:.2f} / SSIM {s['ssim']:.3f}, rotation {s['rotation_monotone_rate']:.2f}; per sector {sec}", flush=True)


if __name__ == '__main__':
    main()
