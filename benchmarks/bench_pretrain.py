"""Benchmark of the toy foundation on this machine: pre-training step time, samples per second, achieved GFLOP/s,
generation seconds per video, rendering throughput and peak memory, for the old recipe (the text-to-video transformer,
`assets/toy_t2v`) and the new one (the orbit engine's two U-Nets, `assets/toy_orbit_engine`: text -> image and
image -> views at batch 32, as in rows 54 and 57-64 of `05_toy_pretrain`), beside the machine's measured fp32 matmul
peak on the same threads (the physical limit of CPU training here). Prints figures; asserts nothing.

    python benchmarks/bench_pretrain.py [--steps 20] [--threads N] [--codec shipped|pixel] [--no-engine]

`--codec shipped` (default) times the shipped transformer's architecture (on the toy VAE's latents, the VAE encoding
every batch); `--codec pixel` the earlier pixel-space toy of the same width. FLOPs are counted by
`torch.utils.flop_counter` on one training step (forward and backward; matmuls and convolutions, not the element-wise
work), so achieved GFLOP/s is a lower bound on the arithmetic the step does.
"""
import argparse, json, platform, tempfile, time
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dreamvid_lib.core import Timer, peak_memory_mb
from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig, load_backbone
from dreamvid_lib.pretrain import PretrainConfig, FlowMatchingLoss, OrbitStream, sample_sigmas, caption_vocabulary
from dreamvid_lib.generate import generate
from dreamvid_lib import toyworld as tw
from dreamvid_lib.orbit_engine import load_orbit_engine


def matmul_peak_gflops(n: int = 1024, reps: int = 20) -> float:
    "The machine's fp32 matmul throughput on torch's current threads: the best of 3 timings of `reps` n x n products."
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): a @ b
    best = min(_timed(lambda: [a @ b for _ in range(reps)]) for _ in range(3))
    return 2 * n ** 3 * reps / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter(); fn(); return time.perf_counter() - t0


def step_flops(step) -> int:
    "FLOPs of one call of `step()` (forward and backward), counted by torch's FLOP counter."
    with FlopCounterMode(display=False) as fc: step()
    return fc.get_total_flops()


def time_steps(step, steps: int) -> float:
    "Median seconds of `step()` over `steps` calls after 2 warm-up calls."
    for _ in range(2): step()
    return float(np.median([_timed(step) for _ in range(steps)]))


def engine_steps(batch: int = 32, lr: float = 1e-3, seed: int = 0) -> dict:
    """One training step of each U-Net of the shipped orbit engine, as its recipes train them: flow matching on 32 px
    images, text frozen; the view U-Net reads the clean source and the camera change, half of each batch at σ = 1."""
    e = load_orbit_engine().train()
    g = torch.Generator().manual_seed(seed)
    r = e.config.resolution
    with torch.no_grad(): emb, mask = e.text(['a matte red mug with a star'] * batch)
    x0, src = torch.rand(batch, 3, r, r, generator=g) * 2 - 1, torch.rand(batch, 3, r, r, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    sig = torch.where(torch.rand(batch, generator=g) < 0.5, torch.ones(batch), torch.rand(batch, generator=g))
    delta = 30.0 * torch.randint(-11, 12, (batch,), generator=g).float()
    s = sig.view(-1, 1, 1, 1); xs = (1 - s) * x0 + s * eps
    out = {}
    for name, unet, vel in (('image_unet', e.image_unet, lambda: e.image_velocity(xs, sig, emb, mask)),
                            ('view_unet', e.view_unet, lambda: e.view_velocity(xs, sig, src, delta, emb, mask))):
        opt = torch.optim.AdamW(unet.parameters(), lr=lr)
        def step():
            loss = F.mse_loss(vel(), eps - x0); loss.backward(); opt.step(); opt.zero_grad()
        out[name] = (step, sum(p.numel() for p in unet.parameters()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--subjects', type=int, default=24)
    ap.add_argument('--workers', type=int, default=1, help='render processes (start-up dominates below ~100 subjects)')
    ap.add_argument('--codec', default='shipped', choices=['shipped', 'pixel'], help='architecture to time (see above)')
    ap.add_argument('--no-engine', action='store_true', help="skip the orbit engine's U-Nets (the new recipe)")
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    res = {'machine': f'{platform.machine()} {platform.processor()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}'}
    res['fp32_matmul_peak_gflops'] = round(matmul_peak_gflops(), 1)

    with tempfile.TemporaryDirectory() as d:
        with Timer() as t: p = tw.build_ring_dataset(Path(d), args.subjects, res=32, workers=args.workers)
        rings = tw.load_ring_dataset(p)
        n_r = rings['rgba'].shape[0] * rings['rgba'].shape[1]
        res['render_views_per_s'] = round(n_r / t.seconds, 1)

    cfg = PretrainConfig()
    if args.codec == 'pixel': bb = ToyBackbone.create(caption_vocabulary(), ToyModelConfig(), seed=0).train()
    else: bb = load_backbone('toy').train()                   # trained in memory only; the files are not touched
    res['architecture'] = f"{bb.config.codec} codec, patch {bb.config.patch}, {bb.layout(8, 32, 32).seq_len} tokens per 8-frame video"
    loss_mod = FlowMatchingLoss(bb)
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    stream = OrbitStream(rings, cfg, g)
    for kind, step_ids in (('video', [0]), ('image', [cfg.image_every - 1])):
        times = []
        for i in range(args.steps + 2):
            vid, caps = stream.batch(step_ids[i % len(step_ids)])
            sig = sample_sigmas(bb, vid.shape[0], g)
            noise = torch.randn(bb.encode_video(vid).shape, generator=g)
            def step():
                loss = loss_mod(vid, caps, sig, noise); loss.backward(); opt.step(); opt.zero_grad()
            sec = _timed(step)
            if i >= 2: times.append(sec)
        flops = step_flops(step)
        res[f'{kind}_step_s'] = round(float(np.median(times)), 4)
        res[f'{kind}_samples_per_s'] = round(vid.shape[0] / float(np.median(times)), 1)
        res[f'{kind}_batch'] = f'{vid.shape[0]} x {vid.shape[1]} frames'
        res[f'{kind}_step_gflop'] = round(flops / 1e9, 2)
        res[f'{kind}_achieved_gflops'] = round(flops / 1e9 / float(np.median(times)), 1)
    mix = (cfg.image_every - 1) * res['video_step_s'] + res['image_step_s']
    res['mixed_steps_per_hour'] = int(3600 * cfg.image_every / mix)

    bb = load_backbone('toy') if args.codec == 'shipped' else bb.eval()
    prompt = 'a video of a matte red mug with a star rotating clockwise'
    for b in (1, 8):
        with Timer() as t: generate(bb, [prompt] * b, seeds=list(range(b)), steps=30)
        res[f'generate_s_per_video_batch{b}'] = round(t.seconds / b, 3)
    if not args.no_engine:                     # the new recipe: the orbit engine's U-Nets at their training batch
        for name, (step, n_params) in engine_steps().items():
            sec, flops = time_steps(step, args.steps), step_flops(step)
            res[f'engine_{name}'] = {'params': n_params, 'batch': '32 images at 32 px', 'step_s': round(sec, 4),
                                     'samples_per_s': round(32 / sec, 1), 'step_gflop': round(flops / 1e9, 2),
                                     'achieved_gflops': round(flops / 1e9 / sec, 1),
                                     'share_of_matmul_peak': round(flops / 1e9 / sec / res['fp32_matmul_peak_gflops'], 3)}
    for kind in ('video', 'image'):
        res[f'{kind}_share_of_matmul_peak'] = round(res[f'{kind}_achieved_gflops'] / res['fp32_matmul_peak_gflops'], 3)
    res['peak_memory_mb'] = round(peak_memory_mb(), 1)
    print(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
