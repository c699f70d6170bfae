"""Text to image for one view (issue 12, row 53 of `nbs/05_toy_pretrain.ipynb`): fine-tune the shipped toy model's
single-frame (text-to-image) path on one ring view per subject, so that its target is one pose instead of the turn's mean.

Row 52 found that rollouts turn only from a frame 0 that shows one pose, and that the shipped model's text-to-image frames
show none (pose contrast 0.72). Its image batches were every view of the subject under one caption, whose flow-matching
optimum is their blend. Here every training image of a subject is its ring view `--view` (0: azimuth 0°, the front), so
the caption names one image. `--view -1` trains on random views instead: the control, with the same steps and batches.

    python research/orbit_prior/view_t2i.py --view 0 --steps 600 --save front.pt
    python research/orbit_prior/view_t2i.py --view -1 --steps 600 --save anyview.pt       # the control
    FIRST=text FIRSTWEIGHTS=front.pt HELDOUT=1 STEPS=4 python research/orbit_prior/ar_rollout.py \\
        research/orbit_prior/weights/row43_window2_h200.pt 8 out.png

`--save` writes the transformer's state dict (the shipped model's text encoder stays as it is: load it into
`load_backbone('toy')`, as `ar_rollout.py` does with FIRSTWEIGHTS). Every `--eval-every` steps it prints one JSON line:
the training loss, and for `--eval-subjects` held-out (or, `--eval-split train`, training) subjects x 2 seeds
(30 Euler steps, CFG 4, as `generate` draws frame 0 in `ar_rollout.py`): the pose contrast of the frames, their matched view's error, and how often the matched azimuth lies
within 30° of `--view`'s.
"""
import argparse, json, os, time
import numpy as np, torch
from dreamvid_lib.backbones import load_backbone
from dreamvid_lib.core import cache_dir
from dreamvid_lib import toyworld as tw
from dreamvid_lib.prompts import video_caption
from dreamvid_lib.pretrain import FlowMatchingLoss, sample_sigmas
from dreamvid_lib.generate import generate
from dreamvid_lib.evaluate import tracking_views, view_errors, wrap_deg


def pose_contrast(errors: np.ndarray, elevation: np.ndarray) -> float:
    "The best view's error over the median error of the views at its elevation (0: one pose fits; 1: any pose fits as well)."
    same = elevation == elevation[errors.argmin()]
    return float(errors.min() / np.median(errors[same]))


@torch.no_grad()
def evaluate(bb, subjects, view_az: float | None, seeds=(0, 1), steps: int = 30, guidance: float = 4.0, draw=None, res: int = 32) -> dict:
    """Frames drawn from each subject's image caption, scored against its tracking grid; `draw(caption, seed)` (an image
    [H, W, 3], e.g. `unet_t2i.py`'s) in place of `bb`'s `generate(num_frames=1)`."""
    if draw is None:
        bb.transformer.eval()
        draw = lambda cap, sd: generate(bb, cap, int(sd), num_frames=1, steps=steps, guidance=guidance)[0, 0]
    rows = []
    for s in subjects:
        grid = tracking_views(s, res if bb is None else bb.config.resolution, with_depth=False)
        el = np.asarray(grid.elevation)
        for sd in seeds:
            f = draw(video_caption(s, None), sd).float().numpy()
            e = view_errors(f[None], grid.rgb, grid.alpha)[0]
            az = float(np.asarray(grid.azimuth)[e.argmin()])
            rows.append((pose_contrast(e, el), float(e.min()), np.nan if view_az is None else float(abs(wrap_deg(az - view_az)) <= 30)))
    r = np.array(rows)
    return {'pose_contrast': float(r[:, 0].mean()), 'view_error': float(r[:, 1].mean()),
            'near_view': None if view_az is None else float(r[:, 2].mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--view', type=int, default=0, help='ring view index of every training image (0: azimuth 0); -1: a random view (the control)')
    p.add_argument('--subjects', type=int, default=1000, help='training subjects of the ring dataset (rendered and cached on first use)')
    p.add_argument('--steps', type=int, default=600); p.add_argument('--batch', type=int, default=32)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--eval-every', type=int, default=200); p.add_argument('--eval-subjects', type=int, default=8)
    p.add_argument('--eval-split', choices=('heldout', 'train'), default='heldout',
                   help="score held-out subjects (attribute combinations never trained on) or the first training subjects")
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)))
    p.add_argument('--workers', type=int, default=1, help='render processes when the ring set is not cached yet')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu', help="'cuda' on a GPU (the scoring too)")
    p.add_argument('--guidance', type=float, default=4.0, help='CFG scale of the scored frames (ar_rollout.py draws frame 0 at 4)')
    p.add_argument('--init', default=None, help="a transformer state dict (this script's --save) to start from; with --steps 0: score it only")
    p.add_argument('--save', default=None, help='transformer state dict, rewritten atomically at every evaluation')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rings = tw.load_ring_dataset(tw.build_ring_dataset(cache_dir(), a.subjects, workers=a.workers))
    n_ring = rings['rgba'].shape[1]
    if not -1 <= a.view < n_ring: raise SystemExit(f'--view {a.view}: a ring index in [0, {n_ring}) or -1')
    view_az = None if a.view < 0 else 360.0 * a.view / n_ring
    held = tw.heldout_subjects(a.eval_subjects) if a.eval_split == 'heldout' else list(rings['subjects'][:a.eval_subjects])
    bb = load_backbone('toy')
    if a.init: bb.transformer.load_state_dict(torch.load(a.init, map_location='cpu'))
    bb.to(a.device)
    loss_fn = FlowMatchingLoss(bb)
    params = [q for q in bb.transformer.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed)
    t0, hist = time.time(), []

    def report(step):
        d = evaluate(bb, held, view_az, guidance=a.guidance)
        print(json.dumps({'step': step, 'view': a.view, 'guidance': a.guidance, 'loss': round(float(np.mean(hist[-a.eval_every:])), 4) if hist else None,
                          **{k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}, 'seconds': round(time.time() - t0)}), flush=True)
        if a.save and step > 0:
            torch.save({k: v.cpu() for k, v in bb.transformer.state_dict().items()}, a.save + '.tmp'); os.replace(a.save + '.tmp', a.save)

    report(0)
    for step in range(1, a.steps + 1):
        s = torch.randint(a.subjects, (a.batch,), generator=g).numpy()
        v = torch.randint(n_ring, (a.batch,), generator=g).numpy() if a.view < 0 else np.full(a.batch, a.view)
        images = torch.from_numpy(rings['rgba'][s, v, ..., :3].astype(np.float32) / 255)[:, None]     # [B, 1, H, W, 3] on white
        caps = [video_caption(rings['subjects'][i], None) for i in s]
        sig = sample_sigmas(bb, a.batch, g)
        noise = torch.randn(bb.encode_video(images).shape, generator=g).to(a.device)
        bb.transformer.train()
        loss = loss_fn(images, caps, sig, noise)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        hist.append(loss.item())
        if step % a.eval_every == 0 or step == a.steps: report(step)


if __name__ == '__main__': main()
