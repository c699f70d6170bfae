"""GPU benchmark of dreamvid on the full-size HunyuanVideo-1.5 (8.3 B) architecture (random weights, bf16).

Through dreamvid's own code path (`HunyuanBackbone.predict_velocity`, `add_lora`, `activate_branches`, `joint_velocity`
with per-token timesteps and routed LoRA branches) it measures:

- the 1-frame training step (forward, backward, AdamW on the LoRA weights; rank 16, alpha 32) and its peak memory, for
  3DreamBooth alone (`3db`) and for the joint method (`3db` + `3dapter`, K = 4 clean reference frames at t = 0), at the
  paper's resolution (720p transformer, 16:9: 720 x 1280 → 45 x 80 latent tokens per frame);
- generation: seconds per video (`--gen-steps` denoising steps with classifier-free guidance, K = 4 references,
  `--frames` frames; the paper validates 49 frames, 50 steps), and seconds per step.

Not measured: the text encoders (Qwen2.5-VL 7B, byT5) and the VAE; text embeddings are random tensors of the packed
shape, latents random tensors of the VAE's latent shape (both are frozen and cached during training).
The paper: 400 joint iterations ≈ 13 min per subject on one RTX PRO 6000 (≈ 1.95 s per iteration).
Measured on one NVIDIA H200 (2026-11-30, `--steps 3 --gen-steps 2 --frames 9 --gradient-checkpointing`,
benchmarks/results/bench_hunyuan_gpu.json) with the stock attention's dense [B, 1, L, L] mask: 3db step 1.27 s, joint step
7.39 s, 9-frame generation 7.2 s per step (49 frames: out of memory); dreamvid's mask-free attention awaits a GPU re-run.

    python benchmarks/bench_hunyuan_gpu.py --out results.json [--steps 5] [--gradient-checkpointing]
    python benchmarks/bench_hunyuan_gpu.py --tiny --out tiny.json    # the same code, tiny config, on the CPU
"""
import argparse, json, platform, sys, time
from pathlib import Path
import numpy as np
import torch

from dreamvid_lib.core import peak_memory_mb
from dreamvid_lib.hunyuan import HunyuanBackbone, HunyuanSettings, tiny_hunyuan_parts
from dreamvid_lib.adapters import add_lora, adapter_parameters
from dreamvid_lib.references import activate_branches, joint_velocity
from diffusers import HunyuanVideo15Transformer3DModel

HY15 = dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54, num_refiner_layers=2,
            mlp_ratio=4.0, patch_size=1, patch_size_t=1, text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152,
            rope_axes_dim=(16, 56, 56), task_type='t2v')
TINY = dict(HY15, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0,
            text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=8, rope_axes_dim=(4, 6, 6), in_channels=9, out_channels=4)


def build(tiny: bool, device, dtype) -> HunyuanBackbone:
    """A HunyuanBackbone with a randomly initialised transformer of the chosen config (tiny text encoders and VAE, never run:
    the text is random embeddings of the transformer's widths)."""
    parts = tiny_hunyuan_parts(seed=0)
    torch.manual_seed(0)
    from diffusers.utils import logging as df_logging
    level = df_logging.get_verbosity(); df_logging.set_verbosity_error()      # (no module of this model is kept in float32)
    try:
        with torch.device(device): tr = HunyuanVideo15Transformer3DModel(**(TINY if tiny else HY15)).to(dtype)   # built where it runs
    finally: df_logging.set_verbosity(level)
    s = HunyuanSettings(resolution=32, height=32, width=32, num_frames=5, max_text_length=32, crop_start=0, byt5_max_length=16,
                        image_tokens=4) if tiny else HunyuanSettings(resolution=720, height=720, width=1280, num_frames=49)
    bb = HunyuanBackbone(tr, parts['text_encoder'], parts['tokenizer'], parts['text_encoder_2'], parts['tokenizer_2'], parts['vae'],
                         {'shift': 5.0, 'num_train_timesteps': 1000}, s)
    return bb.to(device)


def fake_text(bb, n, device, generator):
    "Random packed text embeddings of the backbone's shape (half of the Qwen tokens valid, byT5 masked as without quotes)."
    L1, D1, L2, D2 = bb.text_dims
    t = torch.zeros(n, L1 + L2, max(D1, D2) + 1)
    t[:, :L1, :D1] = torch.randn(n, L1, D1, generator=generator)
    t[:, :L1 // 2, -1] = 1
    return t.to(device)


def sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()


def reset_peak(device):
    if torch.device(device).type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()


def train_step_time(bb, branches, k, shape, text, steps, device):
    "Median seconds and peak MiB of a 1-frame training step with LoRA `branches` and `k` references at t = 0."
    activate_branches(bb.transformer, branches)
    params = [p for b in branches for p in adapter_parameters(bb, b)]
    for p in params: p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    C, h, w = shape
    g = torch.Generator().manual_seed(0)
    bb.train(); reset_peak(device)
    ts = []
    for i in range(steps + 2):
        x0, noise = torch.randn(1, C, 1, h, w, generator=g).to(device), torch.randn(1, C, 1, h, w, generator=g).to(device)
        refs = torch.randn(1, C, k, h, w, generator=g).to(device) if k else None
        sigma = torch.rand(1, generator=g).to(device)
        sync(device); t0 = time.perf_counter()
        xs = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
        loss = torch.nn.functional.mse_loss(joint_velocity(bb, xs, sigma, text, refs), noise - x0)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2: ts.append(time.perf_counter() - t0)
    bb.eval()
    for p in params: p.requires_grad_(False)
    return float(np.median(ts)), peak_memory_mb(device)


@torch.no_grad()
def generation_time(bb, k, shape, latent_frames, text, gen_steps, guidance, device):
    "Seconds for one video: `gen_steps` CFG steps (batch 2) with the sampler, K references; and the median per step."
    C, h, w = shape
    lat = torch.randn(1, C, latent_frames, h, w, device=device)
    refs = torch.randn(2, C, k, h, w, device=device) if k else None
    tt = torch.cat([torch.zeros_like(text), text])
    activate_branches(bb.transformer, ['3db', '3dapter'] if k else ['3db'])
    sch = bb.sampling_scheduler(); sch.set_timesteps(gen_steps, device=device)
    reset_peak(device); per = []
    sync(device); t0 = time.perf_counter()
    for t in sch.timesteps:
        s0 = time.perf_counter()
        sigma = (t / sch.config.num_train_timesteps).expand(2).to(device)
        v_u, v_c = joint_velocity(bb, torch.cat([lat, lat]), sigma, tt, refs).chunk(2)
        lat = sch.step(v_u + guidance * (v_c - v_u), t, lat, return_dict=False)[0]
        sync(device); per.append(time.perf_counter() - s0)
    return time.perf_counter() - t0, float(np.median(per)), peak_memory_mb(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='tiny config on the CPU: checks the code, numbers mean nothing')
    ap.add_argument('--steps', type=int, default=5, help='timed training steps (after 2 warm-up steps)')
    ap.add_argument('--k', type=int, default=4, help='reference views (the paper: 4)')
    ap.add_argument('--rank', type=int, default=16, help='LoRA rank (the paper: 16, alpha 32)')
    ap.add_argument('--frames', type=int, default=49, help='generated frames (the paper validates 49)')
    ap.add_argument('--gen-steps', type=int, default=50, help='denoising steps per video (the paper: 50)')
    ap.add_argument('--gradient-checkpointing', action='store_true')
    ap.add_argument('--out', default=None, help='write the JSON results here (default: benchmarks/results/bench_hunyuan_gpu[_tiny].json)')
    a = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not a.tiny
    device = 'cuda' if gpu else 'cpu'
    if not gpu and not a.tiny:
        print('no GPU found: the full-size benchmark needs one (8.3 B parameters in bf16: ~17 GB of weights, more for '
              'activations); run with --tiny for a CPU smoke test', file=sys.stderr)
        return 1
    dtype = torch.bfloat16
    steps, gen_steps = (2, 2) if a.tiny else (a.steps, a.gen_steps)
    bb = build(a.tiny, device, dtype)
    if a.gradient_checkpointing: bb.enable_gradient_checkpointing()
    H, W, F = (32, 32, 5) if a.tiny else (720, 1280, a.frames)
    s = bb.codec.spatial_factor if a.tiny else 16
    C = bb.transformer.config.out_channels
    shape = (C, H // s, W // s)
    T = 1 + (F - 1) // 4
    text = fake_text(bb, 1, device, torch.Generator().manual_seed(1))
    add_lora(bb, '3db', rank=a.rank, alpha=2 * a.rank); add_lora(bb, '3dapter', rank=a.rank, alpha=2 * a.rank)
    n_params = sum(p.numel() for n, p in bb.transformer.named_parameters() if 'lora_' not in n)
    n_lora = {b: sum(p.numel() for p in adapter_parameters(bb, b)) for b in ('3db', '3dapter')}
    res = {}
    res['3db_step_s'], res['3db_peak_mib'] = train_step_time(bb, ['3db'], 0, shape, text, steps, device)
    res['joint_step_s'], res['joint_peak_mib'] = train_step_time(bb, ['3db', '3dapter'], a.k, shape, text, steps, device)
    res['gen_s_per_video'], res['gen_step_s'], res['gen_peak_mib'] = generation_time(bb, a.k, shape, T, text, gen_steps, 6.0, device)
    res['joint_400_iterations_min'] = round(400 * res['joint_step_s'] / 60, 2)
    tpf = shape[1] * shape[2]
    info = {'gpu': torch.cuda.get_device_name() if gpu else None, 'device': device if gpu else (platform.processor() or platform.machine()),
            'torch': torch.__version__, 'tiny': a.tiny, 'dtype': str(dtype), 'transformer_parameters': n_params, 'lora_parameters': n_lora,
            'resolution': [H, W], 'frames': F, 'latent_frames': T, 'k': a.k, 'rank': a.rank, 'tokens_per_frame': tpf,
            'gradient_checkpointing': a.gradient_checkpointing, 'timed_steps': steps, 'gen_steps': gen_steps,
            'paper': '400 joint iterations ≈ 13 min per subject on one RTX PRO 6000; LoRA 95.62 M parameters',
            'text': 'random packed embeddings %s instead of Qwen2.5-VL + byT5' % (list(text.shape),), 'results': res}
    print(f"HunyuanVideo-1.5 architecture{' (TINY config)' if a.tiny else ''}: {n_params / 1e9:.3f} B transformer parameters, {dtype}, "
          f"{H}x{W}, device {info['gpu'] or info['device']}; LoRA rank {a.rank}: 3db {n_lora['3db'] / 1e6:.2f} M, 3dapter {n_lora['3dapter'] / 1e6:.2f} M")
    print(f"3DreamBooth 1-frame step:        {res['3db_step_s']:.4f} s, peak {res['3db_peak_mib']:.0f} MiB ({tpf} tokens)")
    print(f"joint 1-frame step (K={a.k}):       {res['joint_step_s']:.4f} s, peak {res['joint_peak_mib']:.0f} MiB ({tpf * (1 + a.k)} tokens); "
          f"400 iterations ≈ {res['joint_400_iterations_min']} min (paper: ≈ 13 min on an RTX PRO 6000)")
    print(f"generation, {F} frames, {gen_steps} CFG steps, K={a.k}: {res['gen_s_per_video']:.2f} s/video ({res['gen_step_s']:.3f} s/step), "
          f"peak {res['gen_peak_mib']:.0f} MiB")
    out = Path(a.out) if a.out else Path(__file__).resolve().parent/'results'/f"bench_hunyuan_gpu{'_tiny' if a.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2))
    print(f'-> {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
