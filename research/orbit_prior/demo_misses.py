"""Where `dreamvid demo`'s base-model misses come from (issue 12, row 59 of `nbs/05_toy_pretrain.ipynb`).

The demo's protocol (held-out subjects × 2 seeds, one video per direction, frame 0 the front view) scored three ways on
several draws of held-out subjects: frame 0 drawn from the caption (the engine as shipped), frame 0 rendered (the
subject's true front), and real orbits (the metric's ceiling). `--refine S:N` adds variants in which each one-step view is
noised back to σ = S and refined with N Euler steps of the view U-Net.

    python research/orbit_prior/demo_misses.py --draws 0 1 2 --refine 0.3:3 0.5:5 0.7:7     # row 59 (about 8 min)
    python research/orbit_prior/demo_misses.py --engine ENGINE_DIR --draws 0                 # another engine, the demo's draw

Prints one JSON line per (draw, variant): the share of videos turning monotonically the asked way and the mean
view-matched error, per frame-0 source; with `--misses`, the matched azimuths of each miss.
"""
import argparse, json
import numpy as np, torch
from dreamvid_lib import toyworld as tw
from dreamvid_lib.orbit_engine import load_orbit_engine
from dreamvid_lib.cli import base_prompts
from dreamvid_lib.metrics import tracking_views, view_match, rotation_direction, rotation_monotone_rate
from dreamvid_lib.prompts import parse_direction


def refined_views(engine, plain, sigma: float, steps: int, seed: int = 123):
    "`engine.draw_views` whose one-step views are noised back to `sigma` and refined with `steps` Euler steps."
    @torch.no_grad()
    def draw(first, captions, deltas, seeds, noise=None):
        B, K = np.asarray(deltas).shape
        v1 = plain(first, captions, deltas, seeds, noise)                          # [B, K, H, W, 3] in [0, 1]
        x0 = v1.reshape(B * K, *v1.shape[2:]).permute(0, 3, 1, 2) * 2 - 1
        src = (torch.as_tensor(first, dtype=torch.float32).permute(0, 3, 1, 2) * 2 - 1).repeat_interleave(K, 0)
        x = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        emb, mask = engine.text([c for c in captions for _ in range(K)])
        d = torch.as_tensor(np.asarray(deltas, dtype=np.float32)).reshape(-1)
        sig = torch.linspace(sigma, 0, steps + 1)
        for i in range(steps):
            x = x + (sig[i + 1] - sig[i]) * engine.view_velocity(x, sig[i].expand(len(x)), src, d, emb, mask)
        return ((x.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1).reshape(v1.shape)
    return draw


def front_views(subjects, owner, res: int) -> torch.Tensor:
    "Each video's rendered front view (azimuth 0°, the ring's elevation) [B, H, W, 3] in [0, 1]; `owner[b]`: its subject."
    front = torch.stack([torch.from_numpy(tw.render_views(subjects[i], np.zeros(1), np.array([tw.ring_elevation(subjects[i])]),
                                                          res=res).rgb[0]) for i in owner]).float()
    return front / 255 if front.max() > 1.5 else front


def score(videos, prompts, owner, subjects, grids, misses=False):
    ok, err = [], []
    for v, p, i in zip(videos, prompts, owner):
        v = v.numpy() if torch.is_tensor(v) else v
        _, az, e = view_match(v, grids[i])
        good = rotation_monotone_rate([az]) == 1 and rotation_direction(az) == parse_direction(p)
        ok.append(good); err.append(float(e.mean()))
        if misses and not good: print('  miss:', subjects[i].description(), parse_direction(p), np.round(az).astype(int).tolist())
    return round(float(np.mean(ok)), 4), round(float(np.mean(err)), 4)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--engine', default=None, help='an orbit engine folder (default: the shipped assets/toy_orbit_engine)')
    p.add_argument('--draws', type=int, nargs='+', default=[0, 1, 2], help='seeds of heldout_subjects (0: the demo\'s)')
    p.add_argument('--subjects', type=int, default=8); p.add_argument('--refine', nargs='*', default=[])
    p.add_argument('--misses', action='store_true'); p.add_argument('--threads', type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    variants = [(0.0, 0)] + [tuple(float(x) if k == 0 else int(x) for k, x in enumerate(v.split(':'))) for v in a.refine]
    engine = load_orbit_engine(a.engine)
    plain = engine.draw_views
    for draw in a.draws:
        subjects = tw.heldout_subjects(a.subjects, seed=draw)
        grids = [tracking_views(s, engine.config.resolution, verbose=False) for s in subjects]
        prompts, seeds, owner = base_prompts(subjects, 2)
        front = front_views(subjects, owner, engine.config.resolution)
        real = []
        for pr, i in zip(prompts, owner):
            az = (parse_direction(pr) * engine.config.step_deg * np.arange(engine.config.num_frames)) % 360
            real.append(tw.render_views(subjects[i], az, np.full(len(az), tw.ring_elevation(subjects[i])), res=engine.config.resolution).rgb)
        real = [torch.from_numpy(r).float() / (255 if r.max() > 1.5 else 1) for r in real]
        line = {'draw': draw, 'real': score(real, prompts, owner, subjects, grids)[0]}
        for sigma, steps in variants:
            engine.draw_views = plain if sigma == 0 else refined_views(engine, plain, sigma, steps)
            row = dict(line, refine=f'{sigma:g}:{steps}' if sigma else None)
            for name, first in (('text', None), ('render', front)):
                row[name], row[f'{name}_view_error'] = score(engine.generate(prompts, seeds, first=first), prompts, owner, subjects, grids, a.misses)
            print(json.dumps(row), flush=True)
        engine.draw_views = plain


if __name__ == '__main__': main()
