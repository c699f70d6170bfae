"""Benchmark of the toy foundation on this machine: pre-training step time, samples per second,
generation seconds per video, rendering throughput and peak memory. Prints figures; asserts nothing.

    python benchmarks/bench_pretrain.py [--steps 20] [--threads N] [--codec shipped|pixel]

`--codec shipped` (default) times the shipped model's architecture (transformer on the toy VAE's latents, the
VAE encoding every batch); `--codec pixel` the earlier pixel-space toy of the same width.
"""
import argparse, json, platform, tempfile, time
from pathlib import Path
import numpy as np
import torch

from dreamvid_lib.core import Timer, peak_memory_mb
from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig, load_backbone
from dreamvid_lib.pretrain import PretrainConfig, FlowMatchingLoss, OrbitStream, sample_sigmas, caption_vocabulary
from dreamvid_lib.generate import generate
from dreamvid_lib import toyworld as tw


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--subjects', type=int, default=24)
    ap.add_argument('--workers', type=int, default=1, help='render processes (start-up dominates below ~100 subjects)')
    ap.add_argument('--codec', default='shipped', choices=['shipped', 'pixel'], help='architecture to time (see above)')
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    res = {'machine': f'{platform.machine()} {platform.processor()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}'}

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
            t0 = time.perf_counter()
            loss = loss_mod(vid, caps, sig, noise); loss.backward(); opt.step(); opt.zero_grad()
            if i >= 2: times.append(time.perf_counter() - t0)
        res[f'{kind}_step_s'] = round(float(np.median(times)), 4)
        res[f'{kind}_samples_per_s'] = round(vid.shape[0] / float(np.median(times)), 1)
        res[f'{kind}_batch'] = f'{vid.shape[0]} x {vid.shape[1]} frames'
    mix = (cfg.image_every - 1) * res['video_step_s'] + res['image_step_s']
    res['mixed_steps_per_hour'] = int(3600 * cfg.image_every / mix)

    bb = load_backbone('toy') if args.codec == 'shipped' else bb.eval()
    prompt = 'a video of a matte red mug with a star rotating clockwise'
    for b in (1, 8):
        with Timer() as t: generate(bb, [prompt] * b, seeds=list(range(b)), steps=30)
        res[f'generate_s_per_video_batch{b}'] = round(t.seconds / b, 3)
    res['peak_memory_mb'] = round(peak_memory_mb(), 1)
    print(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
