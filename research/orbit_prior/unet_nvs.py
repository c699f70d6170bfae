"""Each frame from frame 0: a camera-conditioned U-Net as the multi-view engine (issue 12, row 55 of `nbs/05_toy_pretrain.ipynb`).

Row 43's orbit prior continues a video one hop at a time, and its errors compound: frame 1 lands on the true view 91-97%
of the time, frames 6-7 only 38-50%. Zero-1-to-3 and the multi-view engines of VFusion3D and Make-Your-3D draw a new view
from the input image and the camera change instead, so no frame inherits another frame's error. This script trains
diffusers' `UNet2DConditionModel` (the conv U-Net of row 54, whose convolutions drew clean single views where the
patch-4 transformer drew mosaics) to draw ring view i + k of a training subject from view i: the noisy target and the
clean source image are concatenated on the channels, the azimuth change Δ = 15° k enters as (sin Δ, cos Δ, sin 2Δ,
cos 2Δ) through the U-Net's projection class embedding (added to the timestep embedding) and, by default, as 4 constant
input channels too, and the subject's image caption through cross-attention on the shipped toy text encoder (frozen).
The objective is the library's flow matching (velocity noise - x0 at x_σ = (1 - σ) x0 + σ noise), with half of each
batch at σ = 1 by default (`--sigma-one 0.5`), where only the source image, the camera and the caption tell the target;
the library's `train_loop` runs it (warm-up and cosine decay, checkpoints and resume, EMA). Without the camera planes and
the σ = 1 share, the U-Net ignored the camera even on one subject (row 55's controls).

A video of n frames turning in direction d from frame 0 is then frames k = 1 .. n-1 drawn at Δ = 30° d k, all from
frame 0, in one batch; with `shared_noise` (the default) every frame starts from the same noise draw, so the frames
differ only by the camera.

    python research/orbit_prior/unet_nvs.py --steps 2000 --work nvs_run --save nvs.pt          # row 55, 1,000 subjects
    python research/orbit_prior/unet_nvs.py --subjects 1 --eval-split train --eval-subjects 1 --caption-dropout 0 \
        --steps 1000 --eval-every 300 --work r1 --save r1.pt                                     # row 55, one subject
    python research/orbit_prior/unet_nvs.py --init nvs.pt --steps 0 --first text                # score from text frames

Row 56's curriculum (one subject, then 16, then 1,000, each stage from the last one's EMA weights with a fresh optimizer)
is what makes the camera generalise; from random weights the 1,000-subject run stays at chance:

    U="python research/orbit_prior/unet_nvs.py"
    $U --subjects 1 --eval-split train --eval-subjects 1 --caption-dropout 0 --steps 700 --eval-every 350 --work r1 --save r1.pt
    $U --init r1.pt --subjects 16 --eval-split train --eval-subjects 4 --steps 800 --eval-every 400 --work c16 --save c16.pt
    $U --init c16.pt --subjects 1000 --steps 2000 --eval-every 500 --work c1000 --save c1000.pt
    $U --init c1000.pt --subjects 1000 --steps 1000 --eval-every 500 --work c1000b --save c1000b.pt
    $U --init c1000b.pt --subjects 1000 --steps 1000 --eval-every 500 --work c1000c --save c1000c.pt
    $U --init c1000c.pt --subjects 3000 --steps 2000 --eval-every 500 --sample-steps 10 --work c3000 --save c3000.pt   # row 57
    $U --init c3000.pt --steps 0 --sample-steps 1 --first text --eval-subjects 24   # one step per view, frame 0 from text

Row 57: one Euler step per view (the model's mean estimate, `--sample-steps 1`) puts more videos on the right pose than
10-60 steps; `--cam-guidance W` (guidance away from the mirrored turn, sampling only) did not help. The last save is the
view U-Net of `assets/toy_orbit_engine` (`dreamvid_lib.orbit_engine.engine_from_saves`).

`--reference` adds reference attention (Zero123++), written and tested but not yet measured (row 56 did not need it).

Every `--eval-every` steps it prints one JSON line: the loss, and the held-out rotation scores of `ar_rollout.py`
(8 held-out subjects, rendered frame 0 at azimuths 20° and 200°, elevation 15°, both directions: 32 videos). `--first
text` starts the videos from row 54's U-Net frames (CFG 1) instead, as `FIRST=text FIRSTUNET=... ar_rollout.py` does.
`--save` writes {'config', 'state' (EMA), 'step', 'args'} atomically at each evaluation.
"""
import argparse, json, os, sys, time
import numpy as np, torch
from torch import nn
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
HERE = os.path.dirname(os.path.abspath(__file__)); sys.path.insert(0, HERE)
from unet_t2i import load_unet_t2i, caption_embeddings
from dreamvid_lib.backbones import load_backbone
from dreamvid_lib.core import cache_dir
from dreamvid_lib import toyworld as tw
from dreamvid_lib.prompts import video_caption
from dreamvid_lib.train import TrainConfig, EMAHook, train_loop
from dreamvid_lib.evaluate import tracking_views, view_match, binding_matrix, text_binding_rate
from dreamvid_lib.orbit_engine import camera_features

ROW54 = os.path.join(HERE, 'weights', 'row54_unet_front.pt')


camera = camera_features   # the azimuth change as the U-Net sees it: (sin Δ, cos Δ, sin 2Δ, cos 2Δ), shape [B, 4]


def make_nvs_unet(width: int = 16, res: int = 32, text_dim: int = 64, seed: int = 0, camera_planes: bool = False) -> UNet2DConditionModel:
    """Row 54's U-Net with 6 input channels (noisy target, clean source) and the camera through a projection class embedding;
    `camera_planes`: also as 4 more input channels, each one camera value over the whole image."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=res, in_channels=10 if camera_planes else 6, out_channels=3, layers_per_block=1,
        block_out_channels=(width, 2 * width, 4 * width),
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'),
        cross_attention_dim=text_dim, attention_head_dim=8, norm_num_groups=8,
        class_embed_type='projection', projection_class_embeddings_input_dim=4)


class ReferenceAttention:
    """A self-attention processor for reference attention (Zero123++): in 'write' mode it keeps the layer's input tokens;
    in 'read' mode the layer's keys and values also come from the kept tokens, so the target attends to the source view
    wherever its content moved to, not only at the same pixel as the channel concatenation does."""
    def __init__(self):
        self.base, self.mode, self.bank = AttnProcessor2_0(), None, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if self.mode == 'write': self.bank = hidden_states
        elif self.mode == 'read': encoder_hidden_states = torch.cat([hidden_states, self.bank], 1)
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class NVS(nn.Module):
    """The U-Net with the frozen toy text encoder: `velocity(x, σ, source, Δ, text)`; called on a batch, the flow-matching loss.
    `reference`: reference attention; the U-Net first runs on the clean source at σ = 0 and Δ = 0 (the view that is the
    source), and every self-attention of the denoising pass then also attends to that pass's tokens."""
    def __init__(self, unet: UNet2DConditionModel, text_bb, reference: bool = False):
        super().__init__()
        self.unet, self.bb, self.reference = unet, text_bb, reference   # the text backbone is frozen and kept out of the optimizer
        self.refs, self.bank_fixed = [], False
        if reference:
            procs = {}
            for name in unet.attn_processors:
                procs[name] = ReferenceAttention() if name.endswith('attn1.processor') else AttnProcessor2_0()
                if isinstance(procs[name], ReferenceAttention): self.refs.append(procs[name])
            unet.set_attn_processor(procs)

    def text(self, captions): return caption_embeddings(self.bb, captions, allow_empty=True)   # '' for caption dropout

    def _unet(self, x, sigma, source, cam, emb, mask):
        inp = [x, source]
        if self.unet.config.in_channels == 10: inp.append(cam[:, :, None, None].expand(-1, -1, *x.shape[2:]))
        return self.unet(torch.cat(inp, 1), sigma * 1000, encoder_hidden_states=emb, encoder_attention_mask=mask,
                         class_labels=cam).sample

    def write_reference(self, source, emb, mask):
        "The reference pass: the clean source at σ = 0 and Δ = 0; its self-attention tokens are kept for the next passes."
        for r in self.refs: r.mode = 'write'
        self._unet(source, torch.zeros(len(source), device=source.device), source,
                   camera(torch.zeros(len(source))).to(source.device), emb, mask)
        for r in self.refs: r.mode = 'read'

    def velocity(self, x, sigma, source, cam, emb, mask):
        if self.reference and not self.bank_fixed: self.write_reference(source, emb, mask)
        try: return self._unet(x, sigma, source, cam, emb, mask)
        finally:
            if not self.bank_fixed:
                for r in self.refs: r.mode, r.bank = None, None

    def forward(self, x0, source, cam, emb, mask, sigma, noise):
        xt = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
        return nn.functional.mse_loss(self.velocity(xt, sigma, source, cam, emb, mask), noise - x0)

    @torch.no_grad()
    def video(self, first: torch.Tensor, caption: str, direction: int, seed: int, n: int = 8, steps: int = 30,
              step_deg: float = 30.0, shared_noise: bool = True, cam_guidance: float = 0.0, negative: str = 'mirror') -> torch.Tensor:
        """Frames [n, H, W, 3] in [0, 1]: frame 0 (`first`, [H, W, 3]) and frames k drawn from it at Δ = `step_deg` · direction · k.
        `cam_guidance` w > 0: camera guidance, v(Δ) + w (v(Δ) - v(Δ')), with Δ' = -Δ (`negative='mirror'`: away from the
        turn the other way) or Δ' = 0 (`'source'`: away from copying frame 0); it needs no training, only a second pass."""
        self.unet.eval()
        res, dev = first.shape[0], next(self.unet.parameters()).device
        g = torch.Generator().manual_seed(int(seed))
        x = (torch.randn(1, 3, res, res, generator=g).expand(n - 1, -1, -1, -1).clone() if shared_noise
             else torch.randn(n - 1, 3, res, res, generator=g)).to(dev)
        src = (first.permute(2, 0, 1)[None] * 2 - 1).expand(n - 1, -1, -1, -1).to(dev)
        deltas = step_deg * direction * np.arange(1, n)
        cam = camera(deltas).to(dev)
        if negative not in ('mirror', 'source'): raise ValueError(f"negative={negative!r}: 'mirror' or 'source'")
        neg = camera(-deltas if negative == 'mirror' else 0 * deltas).to(dev)
        emb, mask = self.text([caption] * (n - 1))
        sig = torch.linspace(1, 0, steps + 1, device=dev)
        if self.reference: self.write_reference(src, emb, mask); self.bank_fixed = True   # the same source at every step
        try:
            for i in range(steps):
                v = self.velocity(x, sig[i].expand(n - 1), src, cam, emb, mask)
                if cam_guidance: v = v + cam_guidance * (v - self.velocity(x, sig[i].expand(n - 1), src, neg, emb, mask))
                x = x + (sig[i + 1] - sig[i]) * v
        finally:
            self.bank_fixed = False
            for r in self.refs: r.mode, r.bank = None, None
        out = ((x.permute(0, 2, 3, 1).float().cpu() + 1) / 2).clamp(0, 1)
        return torch.cat([first[None].float().cpu(), out])


def load_nvs(path) -> NVS:
    "A `--save` of this script, ready to draw videos."
    ck = torch.load(path, map_location='cpu')
    unet = UNet2DConditionModel.from_config(ck['config']); unet.load_state_dict(ck['state'])
    return NVS(unet.eval(), load_backbone('toy').eval(), reference=ck.get('reference', False))


def ring_batches(rings, n_subjects: int, batch: int, model: NVS, caption_dropout: float, device='cpu', sigma_one: float = 0.0,
                 max_k: int | None = None):
    """`batches(step, generator)` for `train_loop`: source view i, target view i + k (k uniform over the ring, or over
    -max_k .. max_k), caption, σ (uniform; a share `sigma_one` of the batch at σ = 1, where only the source and the camera
    tell the target), noise."""
    caps = [video_caption(s, None) for s in rings['subjects'][:n_subjects]]
    n_ring = rings['rgba'].shape[1]

    def batches(step, g):
        s = torch.randint(n_subjects, (batch,), generator=g).numpy()
        i = torch.randint(n_ring, (batch,), generator=g).numpy()
        k = (torch.randint(n_ring, (batch,), generator=g) if max_k is None else
             torch.randint(-max_k, max_k + 1, (batch,), generator=g)).numpy()
        img = lambda v: (torch.from_numpy(rings['rgba'][s, v, ..., :3].astype(np.float32) / 255).permute(0, 3, 1, 2) * 2 - 1).to(device)
        drop = torch.rand(batch, generator=g) < caption_dropout
        emb, mask = model.text(['' if d else caps[j] for d, j in zip(drop.tolist(), s)])
        sigma = torch.where(torch.rand(batch, generator=g) < sigma_one, 1.0, torch.rand(batch, generator=g)).to(device)
        noise = torch.randn(batch, 3, *rings['rgba'].shape[2:4], generator=g).to(device)
        return img((i + k) % n_ring), img(i), camera(360.0 * k / n_ring).to(device), emb, mask, sigma, noise
    return batches


@torch.no_grad()
def rotation_scores(model: NVS, subjects, first: str = 'render', steps: int = 30, shared_noise: bool = True, res: int = 32,
                    **video_kw):
    """`ar_rollout.py`'s held-out rotation scores for videos drawn from frame 0: `first='render'` (azimuths 20° and 200°,
    elevation 15°) or `'text'` (row 54's U-Net frame 0 for seeds 0 and 1, CFG 1; the truth starts at its matched azimuth)."""
    from ar_rollout import score, summary, pose_contrast
    t2i = load_unet_t2i(ROW54, guidance=1.0) if first == 'text' else None
    rows, vids, owner = [], [], []
    grids = [tracking_views(s, res, with_depth=False) for s in subjects]
    for si, (s, grid) in enumerate(zip(subjects, grids)):
        starts = ([(t2i.draw(video_caption(s, None), sd).float(), None) for sd in (0, 1)] if t2i else
                  [(None, a) for a in (20.0, 200.0)])
        for f0, a in starts:
            if f0 is None: f0 = torch.from_numpy(tw.render_views(s, [a], 15.0, res=res, with_depth=False).rgb[0]).float()
            a0 = view_match(f0.numpy()[None], grid)[1][0] if a is None else a
            for d in (1, -1):
                want = (a0 + d * 30 * np.arange(8)) % 360
                gt = tw.render_views(s, want, 15.0, res=res, with_depth=False).rgb
                v = model.video(f0, video_caption(s, None), d, seed=len(rows), steps=steps, shared_noise=shared_noise, **video_kw)
                truth = view_match(gt, grid)[1] if a is not None else want
                rows.append({**score(v.numpy(), grid, truth, d), 'first_contrast': pose_contrast(f0.numpy(), grid)})
                vids.append((gt, v.numpy())); owner.append(si)
    out = summary(rows)
    if len(subjects) > 1:                                # the demo's text binding: closer to its own subject than to each other one
        out['text_binding_rate'] = text_binding_rate(binding_matrix([v for _, v in vids], grids), owner)
    return out, vids


@torch.no_grad()
def sigma1_diagnostic(model: NVS, subjects, deltas=(30, 60, 90), res: int = 32) -> dict:
    """The issue's σ = 1 check for a camera model: the one-step estimate x̂0 = x1 - v of the view at Δ from a rendered
    source (azimuths 20° and 200°, elevation 15°), closer to the true view (azimuth + Δ) than to the mirrored one (- Δ)?
    Returns the share that is ('sigma1_correct', chance 0.5) and x̂0's mean squared error to the truth ('sigma1_mse', in
    [-1, 1] pixel units as the orbit prior's diagnostic in the notebook)."""
    model.unet.eval()
    dev, hits, errs = next(model.unet.parameters()).device, [], []
    for j, s in enumerate(subjects):
        emb, mask = model.text([video_caption(s, None)])
        for a in (20.0, 200.0):
            dl = np.array([d * sgn for d in deltas for sgn in (1, -1)], dtype=float)
            views = tw.render_views(s, [a, *((a + dl) % 360)], 15.0, res=res, with_depth=False).rgb
            t = torch.from_numpy(views).float().permute(0, 3, 1, 2) * 2 - 1
            n = len(dl)
            x1 = torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(j * 1000 + int(a))).to(dev)
            x0 = x1 - model.velocity(x1, torch.ones(n, device=dev), t[:1].expand(n, -1, -1, -1).to(dev), camera(dl).to(dev),
                                     emb.expand(n, -1, -1), mask.expand(n, -1))
            err = ((x0.cpu() - t[1:]) ** 2).mean((1, 2, 3))
            mirror = ((x0.cpu() - t[1:].view(len(deltas), 2, 3, res, res).flip(1).reshape(n, 3, res, res)) ** 2).mean((1, 2, 3))
            hits += (err < mirror).tolist(); errs += err.tolist()
    return {'sigma1_correct': float(np.mean(hits)), 'sigma1_mse': float(np.mean(errs))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--subjects', type=int, default=1000, help='training subjects of the ring dataset (rendered and cached on first use)')
    p.add_argument('--width', type=int, default=16, help="channels at the top scale (2x and 4x below)")
    p.add_argument('--camera-planes', action=argparse.BooleanOptionalAction, default=True, help='the camera also as 4 constant input channels')
    p.add_argument('--steps', type=int, default=1500, help='total training steps of the run in --work (a resume trains on to it)')
    p.add_argument('--batch', type=int, default=32); p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--warmup', type=int, default=100); p.add_argument('--ema', type=float, default=0.999)
    p.add_argument('--caption-dropout', type=float, default=0.1)
    p.add_argument('--sigma-one', type=float, default=0.5, help='share of each batch at σ = 1')
    p.add_argument('--reference', action='store_true', help='reference attention: self-attention also reads a pass of the U-Net on the source (Zero123++)')
    p.add_argument('--max-k', type=int, default=None, help='ring steps of the camera change at most (default: any)')
    p.add_argument('--eval-every', type=int, default=500); p.add_argument('--eval-subjects', type=int, default=8)
    p.add_argument('--eval-split', choices=('heldout', 'train'), default='heldout', help='score held-out or the first training subjects')
    p.add_argument('--first', choices=('render', 'text'), default='render', help="frame 0 of the scored videos")
    p.add_argument('--independent-noise', action='store_true', help='each frame its own noise draw (default: one shared draw)')
    p.add_argument('--sample-steps', type=int, default=30)
    p.add_argument('--cam-guidance', type=float, default=0.0, help='camera guidance weight when drawing the scored videos (0: none)')
    p.add_argument('--cam-negative', choices=('mirror', 'source'), default='mirror', help="camera guidance's negative: -Δ or Δ = 0")
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)))
    p.add_argument('--workers', type=int, default=1, help='render processes when the ring set is not cached yet')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--mixed-precision', default='no', help="'bf16' on a GPU")
    p.add_argument('--work', default=None, help='checkpoint folder of the training run (resumed when it holds one)')
    p.add_argument('--init', default=None, help='a --save to score (--steps 0) or to train on from (its config and EMA weights; a fresh optimizer)')
    p.add_argument('--time-limit', type=float, default=None, help='stop at the last evaluation that keeps the run within this many seconds (resumable)')
    p.add_argument('--save', default=None); p.add_argument('--grid', default=None, help='a PNG of the last evaluation\'s videos')
    a = p.parse_args(argv)
    if a.steps > 0 and not a.work: raise SystemExit('--work: a folder for the training checkpoints (needed when --steps > 0)')
    if a.steps == 0 and not a.init: raise SystemExit('--steps 0 scores a save: give it with --init')
    os.environ['NT'] = str(a.threads)                    # ar_rollout.py's thread count, read when it is imported
    torch.set_num_threads(a.threads)
    rings = tw.load_ring_dataset(tw.build_ring_dataset(cache_dir(), a.subjects, workers=a.workers)) if a.steps or a.eval_split == 'train' else None
    held = tw.heldout_subjects(a.eval_subjects) if a.eval_split == 'heldout' else list(rings['subjects'][:a.eval_subjects])
    if a.init:
        model = load_nvs(a.init); model.unet.to(a.device); model.bb.requires_grad_(False).to(a.device)
        if a.reference and not model.reference: model = NVS(model.unet, model.bb, reference=True)   # reference attention added to a trained U-Net
    else:
        bb = load_backbone('toy').eval().requires_grad_(False).to(a.device)
        model = NVS(make_nvs_unet(a.width, 32, bb.text_encoder.config.hidden_size, a.seed, a.camera_planes).to(a.device), bb, a.reference)
    n_params = sum(q.numel() for q in model.unet.parameters())

    def report(step, loss, ema=None, seconds=0.0):
        if ema is not None: ema.store(model.unet.parameters()); ema.copy_to(model.unet.parameters())
        t = time.time()
        d, vids = rotation_scores(model, held, a.first, a.sample_steps, not a.independent_noise,
                                  cam_guidance=a.cam_guidance, negative=a.cam_negative)
        d = {**sigma1_diagnostic(model, held), **d}
        print(json.dumps({'step': step, 'params': n_params, 'loss': loss, 'first': a.first, 'train_seconds': round(seconds),
                          'eval_seconds': round(time.time() - t), **{k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}}), flush=True)
        if a.grid: from ar_rollout import save_grid; save_grid(vids, a.grid)
        if a.save and step > 0:
            torch.save({'config': dict(model.unet.config), 'state': {k: v.detach().cpu().clone() for k, v in model.unet.state_dict().items()},
                        'step': step, 'args': vars(a), 'reference': model.reference}, a.save + '.tmp')
            os.replace(a.save + '.tmp', a.save)
        if ema is not None: ema.restore(model.unet.parameters())

    if a.steps == 0: return report(0, None)
    t_start = time.time()
    cfg = TrainConfig(steps=a.steps, lr=a.lr, warmup=a.warmup, weight_decay=0.0, checkpoint_every=a.eval_every, seed=a.seed,
                      mixed_precision=a.mixed_precision)
    batches = ring_batches(rings, a.subjects, a.batch, model, a.caption_dropout, a.device, a.sigma_one, a.max_k)
    ck = os.path.join(a.work, 'checkpoint.pt')
    while True:                                          # chunks that end on a checkpoint (every eval_every steps); each resumes the last
        t_chunk = time.time()
        done = torch.load(ck, map_location='cpu', weights_only=False)['step'] if os.path.exists(ck) else 0
        ema = EMAHook(a.ema); model.unet.train()            # the evaluation left it in eval mode
        log = train_loop(list(model.unet.parameters()), batches, model, cfg, a.work, [ema], state=model.unet,
                         progress=False, stop_after=a.eval_every - done % a.eval_every)
        losses = [h['loss'] for h in log['history'][-a.eval_every:]]
        report(log['step'], round(float(np.mean(losses)), 4), ema.ema, log['seconds_total'])
        now = time.time()                                # another chunk (training and evaluation) as long as this one must fit
        if log['step'] >= a.steps or (a.time_limit is not None and now - t_start + (now - t_chunk) > a.time_limit): break


if __name__ == '__main__': main()
