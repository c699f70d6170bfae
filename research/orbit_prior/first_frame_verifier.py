"""Row 61 of 05_toy_pretrain: pick frame 0 among N drawings by the view U-Net's round trip (a verifier without ground truth).

The orbit engine's misses from text come from frames 0 that show no single pose (rows 52, 57-59): the view U-Net then
turns a blend. Each prompt's frame 0 is drawn N times (seed s, then s + 100000 c); for each drawing the view U-Net draws
the views at Δ = ±90° and 180° in one step and then draws frame 0 back from each of them (-Δ); the drawing whose round
trips return closest to it (mean squared error) is kept and the video is drawn from it with the prompt's own seed. N = 1
is the shipped engine. Scored on `dreamvid demo`'s protocol (`heldout_subjects(8, seed=draw)`, 2 seeds per subject, one
video per direction): the monotone-rotation rate against ground truth.

    python research/orbit_prior/first_frame_verifier.py --draws 0 1 2 --candidates 1 4 8

About 1 minute per (draw, N) on 2 CPU threads, after each subject's ground truth is rendered once (cached).
"""
import argparse
import numpy as np
import torch
from dreamvid_lib import toyworld as tw
from dreamvid_lib.orbit_engine import load_orbit_engine, split_prompt
from dreamvid_lib.metrics import tracking_views, rotation_monotone_rate
from dreamvid_lib.cli import base_prompts, base_video_record

DELTAS = (90.0, -90.0, 180.0)


def round_trip_error(engine, f0, caption, seed):
    "Mean squared error of frame 0 drawn back from its views at DELTAS ([1, H, W, 3] in [0, 1])."
    views = engine.draw_views(f0, [caption], [list(DELTAS)], [seed])[0]                   # [3, H, W, 3]
    back = engine.draw_views(views, [caption] * len(DELTAS), [[-d] for d in DELTAS], [seed] * len(DELTAS))[:, 0]
    return float(((back - f0) ** 2).mean())


def videos_with_verifier(engine, prompts, seeds, n_candidates):
    out = []
    for p, s in zip(prompts, seeds):
        caption, _ = split_prompt(p)
        cands = [int(s) + 100000 * c for c in range(n_candidates)]
        firsts = [engine.draw_first([caption], [c]) for c in cands]
        errs = [round_trip_error(engine, f, caption, c) for f, c in zip(firsts, cands)] if n_candidates > 1 else [0.0]
        out.append(engine.generate([p], [s], first=firsts[int(np.argmin(errs))])[0])
    return torch.stack(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--draws', type=int, nargs='+', default=[0])
    ap.add_argument('--candidates', type=int, nargs='+', default=[1, 4])
    a = ap.parse_args()
    torch.set_num_threads(2)
    engine = load_orbit_engine()
    for draw in a.draws:
        subjects = tw.heldout_subjects(8, seed=draw)
        grids = [tracking_views(s, engine.config.resolution, verbose=False) for s in subjects]
        prompts, seeds, owner = base_prompts(subjects, 2)
        for n in a.candidates:
            videos = videos_with_verifier(engine, prompts, seeds, n)
            recs = [base_video_record(v, p, subjects[i], grids[i], '') for v, p, i in zip(videos, prompts, owner)]
            tracks = [t for _, t in recs]
            ok = [r['direction'] == r['asked_direction'] for r, _ in recs]
            print(f"draw {draw}, N = {n}: rotation {rotation_monotone_rate(tracks):.3f}, turning the asked way {np.mean(ok):.3f}, "
                  f"view error {np.mean([r['view_error'] for r, _ in recs]):.3f}", flush=True)


if __name__ == '__main__':
    main()
