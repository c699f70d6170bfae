"""Benchmark of personalization on this machine: 3DreamBooth 1-frame vs F-frame step time (the paper's argument),
joint 3Dapter+3DB vs 3DB-only step time, the cost of per-token routing of two adapters against one adapter,
and the router-capture overhead per sampling step. Prints figures as JSON; asserts nothing.

    python benchmarks/bench_personalize.py [--steps 15] [--threads N] [--demo]

`--demo` also times the main job (`dreamvid demo --fast` and the full one) end to end.
"""
import argparse, json, platform, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

from dreamvid_lib.core import Timer, peak_memory_mb
from dreamvid_lib.backbones import load_backbone
from dreamvid_lib.adapters import add_lora, adapter_parameters
from dreamvid_lib.references import activate_branches, joint_velocity, references, encode_references
from dreamvid_lib.pretrain import FlowMatchingLoss
from dreamvid_lib.dapter import JointFlowLoss
from dreamvid_lib.generate import generate
from dreamvid_lib.router import install_probe
from dreamvid_lib import toyworld as tw


def time_steps(bb, loss_mod, make_batch, params, steps):
    "Median seconds of a full training step (forward, backward, AdamW)."
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ts = []
    for i in range(steps + 2):
        video, caps, *refs = make_batch(g)
        noise = torch.randn(bb.encode_video(video).shape, generator=g)
        t0 = time.perf_counter()
        loss = loss_mod(video, caps, torch.rand(video.shape[0], generator=g), noise, *refs)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if i >= 2: ts.append(time.perf_counter() - t0)       # two warm-up steps
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=15)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--frames', type=int, default=8)
    ap.add_argument('--k', type=int, default=4)
    ap.add_argument('--demo', action='store_true')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    res = {'machine': f'{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}',
           'batch': a.batch, 'frames': a.frames, 'k': a.k}
    subj = tw.heldout_subjects(1)[0]
    views = torch.from_numpy(tw.multiview_set(subj, n_views=30, res=32).rgb).float()
    prompt = 'a video of a sks lamp'
    def image_batch(g):
        idx = torch.randint(len(views), (a.batch,), generator=g)
        return views[idx][:, None], [prompt] * a.batch
    def video_batch(g):
        s = int(torch.randint(30, (1,), generator=g)); idx = [(s + i) % 30 for i in range(a.frames)]
        return views[idx][None].expand(a.batch, -1, -1, -1, -1).contiguous(), [prompt] * a.batch
    refs = views[[0, 8, 15, 23]][:a.k]
    def joint_batch(g):
        v, c = image_batch(g); return v, c, refs[None].expand(a.batch, -1, -1, -1, -1)

    # 3DB: 1-frame vs F-frame
    bb = load_backbone('toy').train(); ps = add_lora(bb, '3db')
    lm = FlowMatchingLoss(bb)
    torch.manual_seed(0)
    t1 = time_steps(bb, lm, image_batch, ps, a.steps)
    tF = time_steps(bb, lm, video_batch, ps, a.steps)
    res['3db_1frame_step_ms'] = round(t1 * 1e3, 1); res[f'3db_{a.frames}frame_step_ms'] = round(tF * 1e3, 1)
    res['video_over_1frame_ratio'] = round(tF / t1, 2); res['3db_1frame_steps_per_s'] = round(1 / t1, 1)

    # joint (routed two adapters) vs 3DB only vs one adapter on the same joint sequence
    jb = load_backbone('toy').train()
    add_lora(jb, '3db'); add_lora(jb, '3dapter'); activate_branches(jb.transformer, ['3db', '3dapter'])
    jps = adapter_parameters(jb, '3db') + adapter_parameters(jb, '3dapter')
    for p in jps: p.requires_grad_(True)
    tj = time_steps(jb, JointFlowLoss(jb), joint_batch, jps, a.steps)
    res['joint_step_ms'] = round(tj * 1e3, 1); res['joint_over_3db_ratio'] = round(tj / t1, 2)
    sb = load_backbone('toy').train(); sps = add_lora(sb, '3db')       # same sequence, one unrouted adapter
    class OneAdapter(torch.nn.Module):
        def __init__(s, bb): super().__init__(); s.bb = bb
        def forward(s, video, caps, sig, noise, refs):
            x0 = s.bb.encode_video(video); xs = (1 - sig.view(-1, 1, 1, 1, 1)) * x0 + sig.view(-1, 1, 1, 1, 1) * noise
            r = encode_references(s.bb, refs, refs.shape[0])
            v = s.bb.predict_velocity(torch.cat([xs, r], 2), sig, s.bb.encode_prompt(caps))[:, :, :1]
            return torch.nn.functional.mse_loss(v, noise - x0)
    to = time_steps(sb, OneAdapter(sb), joint_batch, sps, a.steps)
    res['one_adapter_same_sequence_step_ms'] = round(to * 1e3, 1); res['routing_cost_ratio'] = round(tj / to, 2)

    # capture overhead per sampling step (CFG batch of 2 videos, K references)
    jb.eval()
    probe = install_probe(jb.transformer)
    gen_refs = views[[0, 8, 15, 23]][:a.k].numpy()
    kw = dict(prompts=[prompt + ' rotating clockwise'] * 2, seeds=[0, 1], steps=10, references=gen_refs)
    generate(jb, **{**kw, 'steps': 2})
    with Timer() as tp: generate(jb, **kw)
    with Timer() as tc: generate(jb, **kw, capture=True)
    with Timer() as tb_: generate(jb, **kw, tab=True, erae=True)
    res['sampling_step_ms'] = round(tp.seconds / 10 * 1e3, 1); res['sampling_step_capture_ms'] = round(tc.seconds / 10 * 1e3, 1)
    res['capture_overhead_pct'] = round(100 * (tc.seconds / tp.seconds - 1), 1)
    res['tab_erae_overhead_pct'] = round(100 * (tb_.seconds / tp.seconds - 1), 1)
    res['peak_memory_mb'] = round(peak_memory_mb(), 0)

    if a.demo:
        for name, extra in (('demo_fast_seconds', ['--fast']), ('demo_seconds', [])):
            with tempfile.TemporaryDirectory() as d, Timer() as t:
                subprocess.run([str(Path(sys.executable).parent/'dreamvid'), 'demo', '--out', d, *extra], check=True, capture_output=True)
            res[name] = round(t.seconds, 1)
    print(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
