"""GPU benchmark of dreamvid on the full-size Wan2.1-T2V-1.3B architecture (random weights, bf16).

Measures, through dreamvid's own code path (`add_lora`, `activate_branches`, `joint_velocity`, `WanBackbone.predict_velocity`):

- the 1-frame training step (forward, backward, AdamW on the LoRA weights) and its peak memory for 3DreamBooth alone
  (one `3db` LoRA, rank 16) and for the joint method (`3db` + `3dapter`, rank 16, K = 4 clean reference frames);
- the seconds per denoising step of an 81-frame generation (21 latent frames) with classifier-free guidance
  (batch 2), without and with K = 4 references.

Not measured: UMT5-XXL and the VAE. The text encoder is replaced by random text embeddings of shape [1, 512, 4096]
(what UMT5-XXL returns) to save ~11 GB of memory, and latents are random tensors of the VAE's latent shape
(16 channels, 60 x 104 at 480 x 832); both are frozen and cached in training (`WanBackbone.text_cache`,
`WanCodec.cache`), so they do not enter the step time.

    python benchmarks/bench_wan_gpu.py [--json OUT.json] [--steps 5] [--gradient-checkpointing]
    python benchmarks/bench_wan_gpu.py --tiny      # the same code, tiny config, on the CPU (a smoke test)
"""
import argparse, json, platform, sys, time
from pathlib import Path
import numpy as np
import torch

from dreamvid_lib.core import peak_memory_mb
from dreamvid_lib.wan import WanBackbone, WanSettings, tiny_wan_parts
from dreamvid_lib.adapters import add_lora, adapter_parameters
from dreamvid_lib.references import activate_branches, joint_velocity, references
from diffusers import WanTransformer3DModel

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm='rms_norm_across_heads', eps=1e-6, rope_max_seq_len=1024)
TINY = dict(WAN_1_3B, attention_head_dim=16, num_attention_heads=2, in_channels=16, out_channels=16, text_dim=32,
            freq_dim=32, ffn_dim=64, num_layers=2)


def build(tiny: bool, device, dtype) -> WanBackbone:
    "A WanBackbone with a randomly initialised transformer of the chosen config (tiny text encoder and VAE, never run)."
    parts = tiny_wan_parts(seed=0, z_dim=16)
    torch.manual_seed(0)
    from diffusers.utils import logging as df_logging
    with torch.device(device): tr = WanTransformer3DModel(**(TINY if tiny else WAN_1_3B))     # built where it runs
    level = df_logging.get_verbosity(); df_logging.set_verbosity_error()
    try: tr = tr.to(dtype)
    finally: df_logging.set_verbosity(level)
    keep = tr._keep_in_fp32_modules or []                      # as from_pretrained(torch_dtype=bf16) does
    for name, mod in tr.named_modules():
        if any(k in name.split('.') for k in keep): mod.float()
    bb = WanBackbone(tr, parts['text_encoder'], parts['tokenizer'], parts['vae'], {'flow_shift': 3.0, 'num_train_timesteps': 1000},
                     WanSettings(resolution=32 if tiny else 480, height=32 if tiny else 480, width=48 if tiny else 832,
                                 num_frames=9 if tiny else 81))
    return bb.to(device)


def sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()


def reset_peak(device):
    if torch.device(device).type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()


def train_step_time(bb, branches, k, shape, text, steps, device):
    "Median seconds and peak MiB of a 1-frame training step with LoRA `branches` and `k` references."
    activate_branches(bb.transformer, branches)
    params = [p for b in branches for p in adapter_parameters(bb, b)]
    for p in params: p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    C, h, w = shape
    g = torch.Generator(device='cpu').manual_seed(0)
    bb.train(); reset_peak(device)
    ts = []
    for i in range(steps + 2):
        x0 = torch.randn(1, C, 1, h, w, generator=g).to(device)
        noise = torch.randn(1, C, 1, h, w, generator=g).to(device)
        refs = torch.randn(1, C, k, h, w, generator=g).to(device) if k else None
        sigma = torch.rand(1, generator=g).to(device)
        sync(device); t0 = time.perf_counter()
        xs = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
        v = joint_velocity(bb, xs, sigma, text, refs)
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2: ts.append(time.perf_counter() - t0)
    bb.eval()
    for p in params: p.requires_grad_(False)
    return float(np.median(ts)), peak_memory_mb(device)


@torch.no_grad()
def gen_step_time(bb, k, shape, latent_frames, text, steps, device):
    "Median seconds of one CFG denoising step (batch 2: unconditional + conditional) over `latent_frames` frames."
    C, h, w = shape
    x = torch.randn(2, C, latent_frames, h, w, device=device)
    refs = torch.randn(2, C, k, h, w, device=device) if k else None
    tt = torch.cat([torch.zeros_like(text), text])
    sigma = torch.full((2,), 0.5, device=device)
    activate_branches(bb.transformer, ['3db', '3dapter'] if k else ['3db'])
    reset_peak(device)
    ts = []
    for i in range(steps + 1):
        sync(device); t0 = time.perf_counter()
        v = joint_velocity(bb, x, sigma, tt, refs)
        v_u, v_c = v.chunk(2); _ = v_u + 5.0 * (v_c - v_u)
        sync(device)
        if i >= 1: ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), peak_memory_mb(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='tiny config on the CPU: checks the code, numbers mean nothing')
    ap.add_argument('--steps', type=int, default=5, help='timed steps (after warm-up)')
    ap.add_argument('--k', type=int, default=4, help='reference views (the paper: 4)')
    ap.add_argument('--rank', type=int, default=16)
    ap.add_argument('--gradient-checkpointing', action='store_true')
    ap.add_argument('--json', default=None, help='write the results here (default: benchmarks/results/bench_wan_gpu[_tiny].json)')
    a = ap.parse_args(argv)
    device = 'cpu' if a.tiny or not torch.cuda.is_available() else 'cuda'
    if device == 'cpu' and not a.tiny:
        print('no GPU found: the full-size benchmark needs one (about 20 GB); run with --tiny for a CPU smoke test', file=sys.stderr)
        return 1
    dtype = torch.bfloat16
    steps = 2 if a.tiny else a.steps
    bb = build(a.tiny, device, dtype)
    if a.gradient_checkpointing: bb.enable_gradient_checkpointing()
    H, W = (32, 48) if a.tiny else (480, 832)
    F = 9 if a.tiny else 81
    s = bb.codec.spatial_factor
    shape = (bb.transformer.config.in_channels, H // s, W // s)
    T = 1 + (F - 1) // bb.codec.temporal_factor
    text = torch.randn(1, 32 if a.tiny else 512, bb.transformer.config.text_dim, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    add_lora(bb, '3db', rank=a.rank, alpha=2 * a.rank); add_lora(bb, '3dapter', rank=a.rank, alpha=2 * a.rank)
    n_params = sum(p.numel() for n, p in bb.transformer.named_parameters() if 'lora_' not in n)
    n_lora = {b: sum(p.numel() for p in adapter_parameters(bb, b)) for b in ('3db', '3dapter')}
    res = {}
    res['3db_step_s'], res['3db_peak_mib'] = train_step_time(bb, ['3db'], 0, shape, text, steps, device)
    res['joint_step_s'], res['joint_peak_mib'] = train_step_time(bb, ['3db', '3dapter'], a.k, shape, text, steps, device)
    res['gen_step_s'], res['gen_peak_mib'] = gen_step_time(bb, 0, shape, T, text, max(1, steps - 2), device)
    res['gen_refs_step_s'], res['gen_refs_peak_mib'] = gen_step_time(bb, a.k, shape, T, text, max(1, steps - 2), device)
    tpf = (shape[1] // 2) * (shape[2] // 2)
    info = {'device': torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or platform.machine(),
            'torch': torch.__version__, 'tiny': a.tiny, 'dtype': str(dtype), 'transformer_parameters': n_params,
            'lora_parameters': n_lora, 'resolution': [H, W], 'frames': F, 'latent_frames': T, 'k': a.k, 'rank': a.rank,
            'tokens_per_frame': tpf, 'gradient_checkpointing': a.gradient_checkpointing, 'timed_steps': steps,
            'text': 'random embeddings [1, %d, %d] instead of UMT5-XXL' % (text.shape[1], text.shape[2]),
            'results': res}
    rows = [('3DreamBooth 1-frame step (3db LoRA)', res['3db_step_s'], res['3db_peak_mib'], f'{tpf} tokens'),
            (f'joint 1-frame step (3db + 3dapter, K={a.k})', res['joint_step_s'], res['joint_peak_mib'], f'{tpf * (1 + a.k)} tokens'),
            (f'generation step, {F} frames, CFG', res['gen_step_s'], res['gen_peak_mib'], f'{2 * tpf * T} tokens'),
            (f'generation step, {F} frames, CFG, K={a.k} refs', res['gen_refs_step_s'], res['gen_refs_peak_mib'], f'{2 * tpf * (T + a.k)} tokens')]
    print(f"Wan2.1-1.3B architecture{' (TINY config)' if a.tiny else ''}: {n_params / 1e6:.3f} M transformer parameters, "
          f"{info['dtype']}, {H}x{W}, device {info['device']}; LoRA rank {a.rank}: 3db {n_lora['3db'] / 1e6:.3f} M, 3dapter {n_lora['3dapter'] / 1e6:.3f} M")
    print(f"{'':48s} {'s/step':>9s} {'peak MiB':>10s}  sequence")
    for name, t, m, seq in rows: print(f"{name:48s} {t:9.4f} {m:10.0f}  {seq}")
    out = Path(a.json) if a.json else Path(__file__).resolve().parent/'results'/f"bench_wan_gpu{'_tiny' if a.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2))
    print(f'-> {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
