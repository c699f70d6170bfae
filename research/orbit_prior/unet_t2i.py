"""Text to image with a convolutional U-Net (issue 12, row 54 of `nbs/05_toy_pretrain.ipynb`): a frame 0 that shows one pose.

Rows 52-53 found that the autoregressive rollout turns only from a frame 0 that shows one pose, and that the toy
transformer's text-to-image frames show none: pose contrast 0.72 for the shipped model, 0.61 after a fine-tune on the front
view (`view_t2i.py`), whose frames are blocky mosaics of 4-pixel patches. A patch-4 transformer of 1 M parameters writes
each 4x4 patch from one token through a linear layer; a U-Net's convolutions share pixels across patches at every scale,
which is why small image diffusion models are U-Nets. This script trains diffusers' `UNet2DConditionModel` (cross-attention
on the shipped toy text encoder's embeddings, kept frozen) with the library's flow-matching objective on one ring view per
training subject (`--view 0`: the front, so that each caption names one image), then scores frames drawn for held-out
subjects exactly as `view_t2i.py` does (pose contrast, matched view error, share within 30° of the asked view).

    python research/orbit_prior/unet_t2i.py --view 0 --steps 3000 --save unet_front.pt      # row 54: 1,500 + 1,500 (--init)
    FIRST=text FIRSTUNET=unet_front.pt HELDOUT=1 STEPS=4 python research/orbit_prior/ar_rollout.py \\
        research/orbit_prior/weights/row43_window2_h200.pt 8 out.png

`--save` writes {'config': the U-Net's config, 'state': its EMA state dict, 'step', 'args'} atomically at every
evaluation; `--init` continues one from its EMA weights (its own config; a fresh optimizer and warm-up); `--steps 0` only
scores it.
"""
import argparse, json, os, sys, time
import numpy as np, torch
from diffusers import UNet2DConditionModel
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from view_t2i import evaluate
from dreamvid_lib.backbones import load_backbone
from dreamvid_lib.core import cache_dir
from dreamvid_lib import toyworld as tw
from dreamvid_lib.prompts import video_caption


def make_unet(width: int = 32, res: int = 32, text_dim: int = 64, seed: int = 0) -> UNet2DConditionModel:
    "A CPU-sized text-conditioned U-Net on [-1, 1] RGB: three scales (width, 2x, 4x channels), cross-attention at the two lower ones."
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=res, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(width, 2 * width, 4 * width),
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'),
        cross_attention_dim=text_dim, attention_head_dim=8, norm_num_groups=8)



@torch.no_grad()
def caption_embeddings(bb, captions, allow_empty: bool = False):
    "Embeddings [B, L, D] and attention mask [B, L] of `captions` from the frozen toy text encoder of backbone `bb`."
    enc = bb.tokenizer(list(captions), padding='max_length', truncation=True, return_tensors='pt')
    return bb.encode_prompt(list(captions), allow_empty=allow_empty), enc.attention_mask.to(bb.device)

class UNetT2I:
    "The U-Net with the shipped toy text encoder: `draw(caption, seed)` is one image [H, W, 3] in [0, 1]."
    def __init__(self, unet: UNet2DConditionModel, text_bb, guidance: float = 4.0, steps: int = 30):
        self.unet, self.bb, self.guidance, self.steps = unet, text_bb, guidance, steps
        self.res = unet.config.sample_size

    def text(self, captions, allow_empty=False): return caption_embeddings(self.bb, captions, allow_empty)

    def velocity(self, x, sigma, emb, mask):
        return self.unet(x, sigma * 1000, encoder_hidden_states=emb, encoder_attention_mask=mask).sample

    @torch.no_grad()
    def draw(self, caption: str, seed: int) -> torch.Tensor:
        "Euler on σ from 1 to 0 in `steps` equal steps, classifier-free guidance against the empty prompt."
        self.unet.eval()
        x = torch.randn(1, 3, self.res, self.res, generator=torch.Generator().manual_seed(int(seed))).to(self.unet.device)
        emb, mask = self.text([caption]); e0, m0 = self.text([''], allow_empty=True)
        sig = torch.linspace(1, 0, self.steps + 1, device=x.device)
        for i in range(self.steps):
            s = sig[i].expand(1)
            v = self.velocity(x, s, emb, mask)
            if self.guidance != 1:
                v0 = self.velocity(x, s, e0, m0); v = v0 + self.guidance * (v - v0)
            x = x + (sig[i + 1] - sig[i]) * v
        return ((x[0].permute(1, 2, 0).float().cpu() + 1) / 2).clamp(0, 1)


def load_unet_t2i(path, guidance: float = 4.0, steps: int = 30) -> UNetT2I:
    "A `--save` of this script, ready to draw."
    ck = torch.load(path, map_location='cpu')
    unet = UNet2DConditionModel.from_config(ck['config']); unet.load_state_dict(ck['state'])
    return UNetT2I(unet.eval(), load_backbone('toy').eval(), guidance, steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--view', type=int, default=0, help='ring view index of every training image (0: azimuth 0); -1: a random view')
    p.add_argument('--subjects', type=int, default=1000, help='training subjects of the ring dataset (rendered and cached on first use)')
    p.add_argument('--width', type=int, default=16, help="channels at the top scale (2x and 4x below); with --init, the save's own")
    p.add_argument('--steps', type=int, default=3000); p.add_argument('--batch', type=int, default=32)
    p.add_argument('--lr', type=float, default=1e-3); p.add_argument('--warmup', type=int, default=100)
    p.add_argument('--cosine', action='store_true', help='after the warm-up, decay the rate along a cosine to 0.1x over --steps (default: constant)')
    p.add_argument('--ema', type=float, default=0.999, help='EMA decay of the weights that are scored and saved')
    p.add_argument('--caption-dropout', type=float, default=0.1, help='share of training images with the empty prompt (for CFG)')
    p.add_argument('--eval-every', type=int, default=500); p.add_argument('--eval-subjects', type=int, default=8)
    p.add_argument('--eval-split', choices=('heldout', 'train'), default='heldout')
    p.add_argument('--guidance', type=float, default=4.0); p.add_argument('--sample-steps', type=int, default=30)
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)))
    p.add_argument('--workers', type=int, default=1, help='render processes when the ring set is not cached yet')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu', help="'cuda' on a GPU (the scoring too; the random draws stay on the CPU generator)")
    p.add_argument('--time-limit', type=float, default=None, help='stop (with a last evaluation and save) after this many seconds')
    p.add_argument('--init', default=None, help="a --save to start from; with --steps 0: score it only")
    p.add_argument('--save', default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rings = tw.load_ring_dataset(tw.build_ring_dataset(cache_dir(), a.subjects, workers=a.workers))
    n_ring, res = rings['rgba'].shape[1], rings['rgba'].shape[2]
    if not -1 <= a.view < n_ring: raise SystemExit(f'--view {a.view}: a ring index in [0, {n_ring}) or -1')
    view_az = None if a.view < 0 else 360.0 * a.view / n_ring
    held = tw.heldout_subjects(a.eval_subjects) if a.eval_split == 'heldout' else list(rings['subjects'][:a.eval_subjects])
    bb = load_backbone('toy').eval().requires_grad_(False).to(a.device)
    unet, step0 = make_unet(a.width, res, bb.text_encoder.config.hidden_size, a.seed), 0
    if a.init:                                           # its config (and width), its EMA weights; a fresh optimizer
        ck = torch.load(a.init, map_location='cpu'); step0 = ck['step']
        unet = UNet2DConditionModel.from_config(ck['config']); unet.load_state_dict(ck['state'])
    unet.to(a.device)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    model = UNetT2I(unet, bb, a.guidance, a.sample_steps)
    opt = torch.optim.AdamW(unet.parameters(), lr=a.lr, weight_decay=0.0)
    def rate(i):                                          # i: optimizer steps taken in this run
        if i < a.warmup: return (i + 1) / a.warmup
        if not a.cosine: return 1.0
        t = min(1.0, (i - a.warmup) / max(1, a.steps - a.warmup))
        return 0.1 + 0.45 * (1 + np.cos(np.pi * t))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    g = torch.Generator().manual_seed(a.seed + step0)
    caps_all = [video_caption(s, None) for s in rings['subjects'][:a.subjects]]
    t0, hist = time.time(), []
    n_params = sum(q.numel() for q in unet.parameters())

    def report(step):
        live = {k: v.clone() for k, v in unet.state_dict().items()}
        unet.load_state_dict(ema)
        d = evaluate(None, held, view_az, guidance=a.guidance, draw=model.draw, res=res)
        print(json.dumps({'step': step, 'view': a.view, 'params': n_params, 'loss': round(float(np.mean(hist[-a.eval_every:])), 4) if hist else None,
                          **{k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}, 'seconds': round(time.time() - t0)}), flush=True)
        if a.save and step > step0:
            torch.save({'config': dict(unet.config), 'state': {k: v.cpu() for k, v in ema.items()}, 'step': step, 'args': vars(a)}, a.save + '.tmp')
            os.replace(a.save + '.tmp', a.save)
        unet.load_state_dict(live)

    report(step0)
    for step in range(step0 + 1, step0 + a.steps + 1):
        s = torch.randint(a.subjects, (a.batch,), generator=g).numpy()
        v = torch.randint(n_ring, (a.batch,), generator=g).numpy() if a.view < 0 else np.full(a.batch, a.view)
        x0 = (torch.from_numpy(rings['rgba'][s, v, ..., :3].astype(np.float32) / 255).permute(0, 3, 1, 2) * 2 - 1).to(a.device)
        caps = ['' if torch.rand((), generator=g) < a.caption_dropout else caps_all[i] for i in s]
        emb, mask = model.text(caps, allow_empty=True)
        sig = torch.rand(a.batch, generator=g).to(a.device)
        noise = torch.randn(x0.shape, generator=g).to(a.device)
        xt = (1 - sig[:, None, None, None]) * x0 + sig[:, None, None, None] * noise
        unet.train()
        loss = torch.nn.functional.mse_loss(model.velocity(xt, sig, emb, mask), noise - x0)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0); opt.step(); sched.step()
        with torch.no_grad():
            for k, q in unet.state_dict().items():
                if q.dtype.is_floating_point: ema[k].lerp_(q, 1 - min(a.ema, (1 + step) / (10 + step)))   # EMA warm-up
                else: ema[k].copy_(q)
        hist.append(loss.item())
        out_of_time = a.time_limit is not None and time.time() - t0 > a.time_limit
        if step % a.eval_every == 0 or step == step0 + a.steps or out_of_time: report(step)
        if out_of_time: break


if __name__ == '__main__': main()
