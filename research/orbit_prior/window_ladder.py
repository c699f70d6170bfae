"""Orbit-prior research (issue 12): the continuation diagnostic for short clean-frame windows and σ emphasis.

Trains the toy Wan transformer on orbits of the first `--subjects` ring-dataset subjects with frame 0 given clean
(image-to-video), every start azimuth and both directions, and prints the σ = 1 continuation diagnostic (true vs
mirrored continuation, with the mean-view and direction-blind baselines) every `--eval-every` steps.

    python research/orbit_prior/window_ladder.py --frames 2 --sigma one --subjects 16 --steps 2000 --save w2.pt
    python research/orbit_prior/window_ladder.py --frames 2 --sigma one --subjects 16 --steps 2000 --init w2.pt --save w2b.pt

    # noise-augmented frame 0, EMA, and self-forcing (half the steps continue the model's own 4-step frame 1):
    python research/orbit_prior/window_ladder.py --frames 2 --sigma uniform --steps 1500 --lr 5e-4 --batch 16 --init w2b.pt \
        --cond-sigma 0.3 --ema 0.999 --self-forcing 0.5 --save wsf.pt
    # grow the window: 2 -> 3 -> 8 frames
    python research/orbit_prior/window_ladder.py --frames 3 --sigma mix --steps 1000 --lr 5e-4 --init wsf.pt --save w3.pt

Models trained from 'fresh' own the text encoder of `ToyBackbone.create(caption_vocabulary(), seed=0)`; `--save` writes
the transformer only, so load it into such a backbone (as `ar_rollout.py` does), not into the shipped one.
Results of the runs are recorded in `nbs/05_toy_pretrain.ipynb` (table "Every recipe tried").
"""
import argparse, json, os, time
import numpy as np, torch
from dreamvid_lib.backbones import ToyBackbone, load_backbone
from dreamvid_lib.core import cache_dir
from dreamvid_lib import toyworld as tw
from dreamvid_lib.prompts import caption_vocabulary, video_caption
from dreamvid_lib.train import FirstFrame
from dreamvid_lib.sample import denoise, make_scheduler
from dreamvid_lib.pretrain import OrbitStream, FlowMatchingLoss, ladder_config, continuation_diagnostic, sample_sigmas

SCHEMES = {'one': 'one', 'uniform': 'uniform', 'mix': 'high_mix'}   # --sigma -> train.sample_sigmas' scheme (same draws)

def use_x_prediction(bb, min_sigma: float = 0.05):
    "JiT-style x-prediction: the transformer outputs x̂0 and the velocity is (x_σ − x̂0)/σ (σ clipped at `min_sigma`)."
    def pv(latents, sigmas, text, attention_kwargs=None):
        t = sigmas.to(latents.device, torch.float32) * bb.scheduler.config.num_train_timesteps
        x0 = bb.transformer(latents, t, text, attention_kwargs=attention_kwargs, return_dict=False)[0]
        s = sigmas.to(latents.device, torch.float32)
        if s.ndim == 2:                                    # per-token σ [B, seq] -> per-frame [B, 1, F, 1, 1]
            B, _, T = latents.shape[:3]
            s = s.view(B, T, -1)[..., 0].view(B, 1, T, 1, 1)
        else: s = s.view(-1, 1, 1, 1, 1)
        return (latents - x0) / s.clamp_min(min_sigma)
    bb.predict_velocity = pv
    return bb

@torch.no_grad()
def own_hop(bb, first, caps, steps, g):
    "The model's own frame 1 `[B,H,W,3]` from frames 0 `first` (`steps` Euler steps): the input of a self-forced step."
    text = bb.encode_prompt(caps); f = bb.encode_video(first[:, None].float())[:, :, 0]
    lat = torch.randn((len(caps), f.shape[1], 2, *f.shape[2:]), generator=g).to(f.device)
    lat = denoise(bb, lat, text, steps=steps, scheduler=make_scheduler(bb, euler=True), sigmas=torch.linspace(1, 0, steps + 1)[:-1],
                  first_latent=f)                                          # frame 0 held clean, its tokens at σ = 0
    return bb.decode_latents(lat)[:, 1].float().clamp(0, 1).cpu()

@torch.no_grad()
def text_to_image(bb, noise, captions, steps: int = 20):
    "Images `[N,H,W,3]` from latent `noise` `[N,C,1,h,w]` and captions: `sample.denoise`, Euler on σ = 1, 1 − 1/steps, …, no guidance."
    lat = denoise(bb, noise, bb.encode_prompt(captions), steps=steps, scheduler=make_scheduler(bb, euler=True),
                  sigmas=torch.linspace(1, 0, steps + 1)[:-1])
    return bb.decode_latents(lat)[:, 0].float().clamp(0, 1).cpu()

@torch.no_grad()
def t2i_diagnostic(bb, rings, subjects, steps: int = 20, seeds=(0, 1)) -> dict:
    """Text to image from the image caption (`steps` Euler steps, no guidance) for each subject and seed, scored against
    the ring views: `t2i_mse`, the MSE to the subject's nearest ring view; `t2i_binding`, the rate at which the nearest
    view among all `subjects`' rings is the prompted subject's own."""
    subjects = list(subjects)
    views = torch.from_numpy(rings['rgba'][subjects, ..., :3].astype(np.float32) / 255)           # [S, V, H, W, 3]
    caps = [video_caption(rings['subjects'][s], None) for s in subjects for _ in seeds]
    z = bb.encode_video(views[:1, :1])                                                          # latent shape of one image
    lat = torch.cat([torch.randn(z.shape, generator=torch.Generator().manual_seed(1000 * int(sd) + int(s)))
                     for s in subjects for sd in seeds]).to(z.device)
    img = text_to_image(bb, lat, caps, steps)                                                   # [N, H, W, 3]
    d = ((img[:, None, None] - views[None]) ** 2).mean((-1, -2, -3))                            # [N, S, V]
    own = torch.tensor([j for j in range(len(subjects)) for _ in seeds])
    near = d.min(-1).values                                                                     # [N, S]
    return {'t2i_mse': float(near[torch.arange(len(own)), own].mean()), 't2i_binding': float((near.argmin(1) == own).float().mean())}

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--frames', type=int, default=2); p.add_argument('--stride', type=int, default=2)
    p.add_argument('--sigma', choices=('one', 'mix', 'uniform'), default='one')
    p.add_argument('--subjects', type=int, default=16); p.add_argument('--steps', type=int, default=2000)
    p.add_argument('--lr', type=float, default=1e-3); p.add_argument('--batch', type=int, default=8)
    p.add_argument('--init', default='fresh', help="'fresh' (random weights), 'shipped' (assets/toy_t2v) or a transformer state-dict .pt")
    p.add_argument('--param', choices=('v', 'x'), default='v', help="the network's output: velocity (Wan) or x̂0 (JiT)")
    p.add_argument('--cond-sigma', type=float, default=0.0, help='noise augmentation of frame 0: σ_c ~ U(0, this) per sample')
    p.add_argument('--ema', type=float, default=0.0, help='EMA decay of the weights (evaluated and saved when > 0)')
    p.add_argument('--self-forcing', type=float, default=0.0,
                   help="share of steps (2-frame window) whose frame 0 is the model's own prediction of the previous view, the target the true next view")
    p.add_argument('--sf-steps', type=int, default=4, help='Euler steps of that prediction')
    p.add_argument('--save', default=None, help='EMA (or live) transformer state dict, rewritten atomically at every evaluation')
    p.add_argument('--eval-every', type=int, default=100)
    p.add_argument('--eval-subjects', type=int, default=16, help='training subjects (the first ones) in the diagnostic')
    p.add_argument('--eval-heldout', type=int, default=0, help='also the diagnostic on this many held-out ring subjects (attribute combinations never trained on)')
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 1)))
    p.add_argument('--device', default='cpu', help="'cuda' on a GPU (the diagnostic runs there too)")
    p.add_argument('--image-every', type=int, default=0, help='every N-th step a text-to-image batch (frame 0 from text alone); 0: none')
    p.add_argument('--batch-images', type=int, default=32, help='images per text-to-image batch')
    p.add_argument('--first-frame-prob', type=float, default=1.0, help='share of orbit videos whose frame 0 is given (the rest: text to video)')
    p.add_argument('--eval-only', action='store_true', help='evaluate --init once and exit (with --init shipped: the shipped model and its text encoder)')
    p.add_argument('--time-limit', type=float, default=0, help='stop after the step that passes this many seconds (then evaluate and save); 0: none')
    p.add_argument('--workers', type=int, default=1, help='render processes when the ring set is not cached yet')
    p.add_argument('--bf16', action='store_true', help='bf16 autocast of the forward pass (GPU; weights, optimizer and EMA stay float32)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rings = tw.load_ring_dataset(tw.build_ring_dataset(cache_dir(), max(a.subjects, 16), workers=a.workers))
    held = tw.load_ring_dataset(tw.build_ring_dataset(cache_dir(), 16, split='heldout', workers=a.workers)) if a.eval_heldout else None
    bb = load_backbone('toy')
    if a.init != 'shipped':
        bb = ToyBackbone.create(caption_vocabulary(), bb.config, seed=0)
        if a.init != 'fresh': bb.transformer.load_state_dict(torch.load(a.init, map_location='cpu'))
    if a.param == 'x': use_x_prediction(bb)
    bb.to(a.device)
    autocast = torch.autocast(torch.device(a.device).type, dtype=torch.bfloat16, enabled=a.bf16)
    cfg = ladder_config(a.steps, lr=a.lr, stride=a.stride, frames=a.frames, batch_videos=a.batch, image_every=a.image_every,
                        batch_images=a.batch_images, first_frame_prob=a.first_frame_prob)
    g = torch.Generator().manual_seed(0)
    stream = OrbitStream(rings, cfg, g, subjects=range(a.subjects))
    stream3 = OrbitStream(rings, ladder_config(a.steps, lr=a.lr, stride=a.stride, frames=3, batch_videos=a.batch), g,
                          subjects=range(a.subjects)) if a.self_forcing > 0 else None
    loss_fn = FlowMatchingLoss(bb)
    ema = {k: v.detach().clone() for k, v in bb.transformer.state_dict().items()} if a.ema > 0 else None
    params = [q for q in bb.transformer.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    t0, hist = time.time(), []
    def evaluate(step):
        "Print the diagnostics of the EMA (or live) weights as one JSON line; save them with --save."
        bb.transformer.eval()
        if ema is not None: live = {k: v.clone() for k, v in bb.transformer.state_dict().items()}; bb.transformer.load_state_dict(ema)
        starts = (0, 3, 6, 9, 12, 15, 18, 21)
        d = continuation_diagnostic(bb, rings, range(min(a.subjects, a.eval_subjects)), starts=starts, stride=a.stride, frames=a.frames)
        if held is not None:
            h = continuation_diagnostic(bb, held, range(a.eval_heldout), starts=starts, stride=a.stride, frames=a.frames)
            d.update({'heldout_correct': h['correct_vs_mirrored'], 'heldout_mse_true': h['mse_true'], 'heldout_mse_mirrored': h['mse_mirrored'],
                      'heldout_mean_view': h['baseline_mean_view']})
            d.update({'heldout_' + k: v for k, v in t2i_diagnostic(bb, held, range(a.eval_heldout)).items()})
        print(json.dumps({'step': step, 'loss': round(float(np.mean(hist[-a.eval_every:])), 4) if hist else None,
                          **{k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}, 'seconds': round(time.time() - t0), 'device': a.device, 'batch': a.batch}), flush=True)
        if a.save:
            torch.save({k: v.cpu() for k, v in (ema if ema is not None else bb.transformer.state_dict()).items()}, a.save + '.tmp'); os.replace(a.save + '.tmp', a.save)
        if ema is not None: bb.transformer.load_state_dict(live)
    if a.eval_only: return evaluate(0)
    for step in range(1, a.steps + 1):
        if stream3 is not None and float(torch.rand(1, generator=g)) < a.self_forcing:
            v3, caps, cf = stream3.batch(step, flags=True)
            bb.transformer.eval()
            video = torch.stack([own_hop(bb, v3[:, 0], caps, a.sf_steps, g), v3[:, 2]], 1)
        else: video, caps, cf = stream.batch(step, flags=True)
        sig = sample_sigmas(bb, len(caps), g, scheme=SCHEMES[a.sigma])
        noise = torch.randn(bb.encode_video(video).shape, generator=g)
        bb.transformer.train()
        with autocast:
            if a.cond_sigma > 0:
                sc = a.cond_sigma * torch.rand(len(caps), generator=g)
                eps0 = torch.randn(noise[:, :, 0].shape, generator=g)
                loss = loss_fn(video, caps, sig, noise, FirstFrame(cf, sc, eps0))
            else: loss = loss_fn(video, caps, sig, noise, clean_first=cf)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        if ema is not None:
            with torch.no_grad():
                for k, v in bb.transformer.state_dict().items():
                    if v.dtype.is_floating_point: ema[k].lerp_(v, 1 - a.ema)
        hist.append(loss.item())
        out_of_time = a.time_limit > 0 and time.time() - t0 > a.time_limit
        if step % a.eval_every == 0 or step == a.steps or out_of_time: evaluate(step)
        if out_of_time: print(f'stopped by --time-limit {a.time_limit:g} s after step {step}', flush=True); break

if __name__ == '__main__': main()
