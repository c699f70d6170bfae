"""Each view drawn from the previous one instead of from frame 0 (issue 12, row 63 of `nbs/05_toy_pretrain.ipynb`).

The shipped engine draws frame k from frame 0 at Δ = 30° k in one step (row 57). Its misses on near-symmetric subjects put
frame 2 or 3 on the far side (row 59): at large Δ the one-step mean blurs the decal that alone tells ±Δ apart, while at
Δ = 30° it is on track about 0.9 of the time. Variants, scored with `demo_misses.py`'s protocol (held-out draws, 2 seeds,
one video per direction, frame 0 from the caption or rendered):

- `anchor`: the shipped sampler (each frame from frame 0);
- `chain`: frame k from frame k − 1 at Δ = ±30° (a rollout of small hops);
- `mix:W`: frame k's one-step estimate as (1 − W) × the anchor's + W × the chain's (both estimate the same view).

    python research/orbit_prior/chain_views.py --draws 0 1 2 3 4 5 --variants anchor chain mix:0.5
    python research/orbit_prior/chain_views.py --split train --draws 0 1 2 3 4 5 --variants anchor   # the generalisation gap
"""
import argparse, json
import numpy as np, torch
from dreamvid_lib import toyworld as tw
from dreamvid_lib.orbit_engine import load_orbit_engine, split_prompt
from dreamvid_lib.cli import base_prompts
from dreamvid_lib.metrics import tracking_views
from demo_misses import front_views, score


@torch.no_grad()
def one_step(engine, src, deltas, emb, mask, noise):
    "One-step estimates [N, 3, H, W] in [-1, 1] of the views at `deltas` [N] from sources `src` [N, 3, H, W] in [-1, 1]."
    s = torch.ones(len(src))
    return noise - engine.view_velocity(noise, s, src, torch.as_tensor(deltas, dtype=torch.float32), emb, mask)


@torch.no_grad()
def videos(engine, prompts, seeds, variant, first=None):
    "Videos [B, F, H, W, 3] in [0, 1] of `prompts` drawn with the one-step sampler `variant`; `first` [B, H, W, 3]: given frames 0."
    kind, _, w = variant.partition(':')
    if kind not in ('anchor', 'chain', 'mix') or (kind == 'mix') != bool(w):
        raise SystemExit(f"variant {variant!r}: use anchor, chain or mix:W (W in [0, 1], e.g. mix:0.5)")
    w = float(w or 1)
    cfg = engine.config
    parts = [split_prompt(p) for p in prompts]
    caps, dirs = [c for c, _ in parts], np.array([d for _, d in parts], dtype=np.float32)
    noise = engine.noise(seeds, 2)
    f0 = engine.draw_first(caps, seeds, noise[:, 0]) if first is None else first
    x0 = f0.permute(0, 3, 1, 2) * 2 - 1
    emb, mask = engine.text(caps)
    frames, prev = [x0], x0
    for k in range(1, cfg.num_frames):
        est_a = one_step(engine, x0, cfg.step_deg * dirs * k, emb, mask, noise[:, 1])
        est_c = one_step(engine, prev, cfg.step_deg * dirs, emb, mask, noise[:, 1])
        est = est_a if kind == 'anchor' else est_c if kind == 'chain' else (1 - w) * est_a + w * est_c
        est = est.clamp(-1, 1); frames.append(est); prev = est
    return ((torch.stack(frames, 1).permute(0, 1, 3, 4, 2) + 1) / 2).clamp(0, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--engine', default=None); p.add_argument('--draws', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--subjects', type=int, default=8); p.add_argument('--variants', nargs='+', default=['anchor', 'chain'])
    p.add_argument('--split', choices=('heldout', 'train'), default='heldout',
                   help="train: draw d scores training subjects d*N … d*N + N − 1 (seen in every curriculum stage from 1,000 subjects)")
    p.add_argument('--misses', action='store_true'); p.add_argument('--threads', type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    engine = load_orbit_engine(a.engine)
    if engine.config.view_steps != 1: raise SystemExit('chain_views.py compares one-step samplers; the engine has view_steps != 1')
    for draw in a.draws:
        subjects = (tw.heldout_subjects(a.subjects, seed=draw) if a.split == 'heldout' else
                    [tw.subject_from_seed(draw * a.subjects + i) for i in range(a.subjects)])
        grids = [tracking_views(s, engine.config.resolution, verbose=False) for s in subjects]
        prompts, seeds, owner = base_prompts(subjects, 2)
        front = front_views(subjects, owner, engine.config.resolution)
        for v in a.variants:
            row = {'draw': draw, 'split': a.split, 'variant': v}
            for name, first in (('text', None), ('render', front)):
                row[name], row[f'{name}_view_error'] = score(videos(engine, prompts, seeds, v, first), prompts, owner, subjects, grids, a.misses)
            print(json.dumps(row), flush=True)


if __name__ == '__main__': main()
