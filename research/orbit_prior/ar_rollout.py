"""Autoregressive image-to-video with a 2-frame model from `window_ladder.py` (the library's `pretrain.rollout_video`): each frame continues the previous one.

    python research/orbit_prior/ar_rollout.py w2.pt 4 rollout.png
    RING=1 python research/orbit_prior/ar_rollout.py w2.pt 4 rollout_ring.png   # frame 0 from the training views

Environment: STEPS (Euler steps per frame, 20), CSIG (noise level σ_c at which each generated frame is shown to the next
hop, 0), CSIG0 (the same for frame 0, 0), WINDOW=full (denoise all 8 frames jointly from frame 0 instead of rolling out), PARAM=x (x-prediction model),
HELDOUT=1 (held-out subjects, rendered at 20° and 200°, elevation 15°), INIT=shipped (the weights were trained from the shipped model and use its text encoder; default: a fresh model's),
FIRST=text (text -> image -> video: frame 0 is generated from the subject's image caption by the shipped model,
`generate(num_frames=1)` with CFG 4 and 30 steps, seeds 0 and 1 in place of the two start views; the truth is then the
view-matched azimuth of frame 0 plus 30° per frame in the asked direction; FIRSTMODEL=assets/toy_t2v_latent draws frame 0
with the latent model instead, FIRSTMODEL=self with the rollout's own model, trained on text-to-image batches too; FIRSTWEIGHTS=w.pt loads a transformer state dict
into that model first, e.g. one fine-tuned by view_t2i.py; FIRSTUNET=u.pt draws it with unet_t2i.py's U-Net instead (CFG FIRSTCFG, default 4);
RERANK=N: each frame 0 is the best of N drawings (seeds s*N .. s*N+N-1) by the toy feature encoder's image-text
similarity to the caption, as DALL-E reranks with CLIP; the encoder never saw held-out subjects), BEAM=N (each hop draws
N candidate frames and keeps the one whose toy-feature embedding is closest to frame 0's: a verifier for identity drift),
FIRST=blur (frame 0 is the mean of the renders at the start azimuth and BLUR degrees either side, default 30: a frame 0
whose pose is ambiguous but whose subject is right), FIRST=noise (the rendered frame 0 plus smooth blotches: Gaussian noise
on an 8x8 grid, upsampled, scaled to a mean squared error of NOISE per pixel in [0, 1] units, default 0.01: a frame 0 whose
pose is right but whose appearance is off). Every run also prints frame 0's pose contrast: the matched view's error over
the median error of all grid views at that elevation (0: one view fits and the others do not; 1: every view fits as well).

Prints the image-to-video rotation scores (monotone rate, direction agreement, view error, frames whose view-matched
azimuth is within 15° of the truth's, overall and by frame index, the ground truth's rate)
on the first N training subjects from a rendered first view at azimuths 20° and 200°, both directions; saves a grid.
"""
import sys, os, json, torch, numpy as np
from dreamvid_lib.pretrain import image_to_video, rollout_video   # the rollout: hop k of a video draws its noise from seed * 100 + k
from dreamvid_lib.prompts import video_caption
from dreamvid_lib.backbones import load_backbone, ToyBackbone
from dreamvid_lib import toyworld as tw
from dreamvid_lib.core import cache_dir
from dreamvid_lib.evaluate import tracking_views, view_match, view_errors, rotation_direction, wrap_deg
torch.set_num_threads(int(os.environ.get('NT', 1)))

@torch.no_grad()
def ar_video(bb, first, prompt, seed, steps=20, n=8):
    cs = float(os.environ.get('CSIG', 0))                # CSIG: noise level of the conditioning frame (noise augmentation)
    if os.environ.get('WINDOW') == 'full':               # WINDOW=full: all n frames denoised jointly from frame 0 (no rollout)
        return image_to_video(bb, first[None], [prompt], [seed], steps, num_frames=n)[0].clamp(0, 1)
    c0 = float(os.environ.get('CSIG0', 0))               # CSIG0: the same for frame 0 itself (e.g. a generated one)
    beam = int(os.environ.get('BEAM', 1))                # BEAM=N: each hop draws N candidates, keeps the one the toy
    if beam > 10: raise SystemExit(f"BEAM={beam}: at most 10 (hop k's candidate seeds are seed * 1000 + k * 10 + j)")
    if beam > 1:                                         # feature encoder finds most like frame 0 (the subject's identity)
        from dreamvid_lib.features import load_toy_features
        enc = load_toy_features(); ref = enc.encode_images(first[None].numpy())[0]
        frames = [first]
        for k in range(1, n):
            cands = torch.stack([rollout_video(bb, frames[-1][None], [prompt], [seed * 1000 + k * 10 + j], num_frames=2, steps=steps,
                                               cond_sigma=cs, first_cond_sigma=c0 if k == 1 else cs)[0, 1] for j in range(beam)])
            frames.append(cands[int(np.argmax(enc.encode_images(cands.numpy()) @ ref))])
        return torch.stack(frames)
    return rollout_video(bb, first[None], [prompt], [seed], num_frames=n, steps=steps, cond_sigma=cs, first_cond_sigma=c0)[0]

def score(video, grid, truth_az, d) -> dict:
    "One rollout's scores: monotone / right direction, view error and azimuth off `truth_az` (frames 1..), on track (≤ 15°)."
    _, az, err = view_match(video, grid)
    r = rotation_direction(az)
    off = np.abs(wrap_deg(az - truth_az))[1:]
    r1 = rotation_direction(az[1:])                      # frame 0 left out: a drawn frame 0 may be only the rollout's seed
    return {'monotone': r != 0, 'right_direction': r == d, 'right_direction_from1': r1 == d, 'view_error': float(err[1:].mean()),
            'az_off': float(off.mean()), 'on_track': float((off <= 15).mean()), 'per_frame': (off <= 15).tolist()}

def pose_contrast(frame, grid) -> float:
    "How clearly `frame` shows one pose against `grid` (view_t2i.py's `pose_contrast` of its view errors)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from view_t2i import pose_contrast as contrast
    return contrast(view_errors(frame[None], grid.rgb, grid.alpha)[0], np.asarray(grid.elevation))

def degrade_first(s, a, elevation, frame, res=32):
    "FIRST=blur / FIRST=noise: frame 0 as the rollout sees it (the truth stays the rendered orbit)."
    kind = os.environ.get('FIRST')
    if kind == 'blur':
        b = float(os.environ.get('BLUR', 30))
        return tw.render_views(s, [(a - b) % 360, a, (a + b) % 360], elevation, res=res, with_depth=False).rgb.mean(0)
    if kind == 'noise':
        g = torch.Generator().manual_seed(int(a * 1000) + 7)
        n = torch.nn.functional.interpolate(torch.randn(1, 3, 8, 8, generator=g), size=frame.shape[:2], mode='bilinear',
                                            align_corners=False)[0].permute(1, 2, 0).numpy()
        n *= np.sqrt(float(os.environ.get('NOISE', 0.01)) / (n ** 2).mean())
        return np.clip(frame + n, 0, 1)
    return frame

def summary(rows) -> dict:
    "The rates over rollouts, and on track by frame index."
    m = lambda k: float(np.mean([r[k] for r in rows]))
    return {'rotation_monotone_rate': m('monotone'), 'direction_agreement': m('right_direction'), 'view_error': m('view_error'),
            'direction_agreement_from1': m('right_direction_from1'), 'azimuth_off_deg': m('az_off'), 'frames_on_track': m('on_track'), 'first_pose_contrast': m('first_contrast'),
            'on_track_by_frame': np.mean([r['per_frame'] for r in rows], 0).round(2).tolist(), 'n': len(rows)}

import functools
@functools.lru_cache(1)
def _shipped():
    "The text-to-image model of FIRST=text: FIRSTMODEL (an asset folder, e.g. assets/toy_t2v_latent) or the shipped default."
    bb = load_backbone('toy', os.environ['FIRSTMODEL']) if os.environ.get('FIRSTMODEL') else load_backbone('toy')
    if os.environ.get('FIRSTWEIGHTS'): bb.transformer.load_state_dict(torch.load(os.environ['FIRSTWEIGHTS']))   # e.g. view_t2i.py's
    return bb.eval()

@functools.lru_cache(1)
def _unet():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from unet_t2i import load_unet_t2i
    return load_unet_t2i(os.environ['FIRSTUNET'], guidance=float(os.environ.get('FIRSTCFG', 4)))   # FIRSTCFG: its CFG scale

@torch.no_grad()
def text_first_frames(subject, seeds=(0, 1), steps=30, guidance=4.0, own=None):
    """Frame 0 from text: the shipped model's image [H,W,3] for the subject's image caption, one per seed; with `own` (the
    rollout's model, trained on text-to-image batches too: FIRSTMODEL=self) that model's, 20 Euler steps without guidance."""
    from dreamvid_lib.generate import generate
    if own is not None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from window_ladder import text_to_image
        z = own.encode_video(torch.zeros(1, 1, 32, 32, 3))
        return [text_to_image(own, torch.randn(z.shape, generator=torch.Generator().manual_seed(int(sd))), [video_caption(subject, None)])[0]
                for sd in seeds]
    cap, n = video_caption(subject, None), int(os.environ.get('RERANK', 1))
    if os.environ.get('FIRSTUNET'):                      # FIRSTUNET=u.pt: unet_t2i.py's U-Net draws frame 0 (30 steps, CFG FIRSTCFG)
        draw = lambda sd: _unet().draw(cap, int(sd)).float()
    else:
        shipped = _shipped()
        draw = lambda sd: generate(shipped, cap, int(sd), num_frames=1, steps=steps, guidance=guidance)[0, 0].float()
    if n == 1: return [draw(sd) for sd in seeds]
    from dreamvid_lib.features import load_toy_features   # RERANK=N: the best of N drawings by toy-CLIP text similarity
    enc, out = load_toy_features(), []
    t = enc.encode_texts([cap])[0]
    for sd in seeds:
        cands = [draw(sd * n + j) for j in range(n)]
        out.append(cands[int(np.argmax(enc.encode_images(torch.stack(cands).numpy()) @ t))])
    return out

def ar_rotation_text(bb, subjects, seeds=(0, 1), elevation=15.0, steps=20, seed=0, res=32):
    "As `ar_rotation` with frame 0 generated from text; the truth: frame 0's matched azimuth + 30° per frame."
    rows, vids = [], []
    for s in subjects:
        grid = tracking_views(s, res, with_depth=False)
        for f0 in text_first_frames(s, seeds, own=bb if os.environ.get('FIRSTMODEL') == 'self' else None):
            _, az0, _ = view_match(f0.numpy()[None], grid)
            for d in (1, -1):
                want = (az0[0] + d * 30 * np.arange(8)) % 360
                gt = tw.render_views(s, want, elevation, res=res, with_depth=False).rgb
                v = ar_video(bb, f0, video_caption(s, d), seed + len(rows), steps)
                rows.append({**score(v.numpy(), grid, want, d), 'first_contrast': pose_contrast(f0.numpy(), grid)}); vids.append((gt, v.numpy()))
    return {**summary(rows), 'first_frame': 'text'}, vids

def ar_rotation(bb, subjects, azimuths=(20.0, 200.0), elevation=15.0, steps=20, seed=0, res=32, rings=None):
    """With `rings` (the training ring dataset; `subjects` are then its indices): frame 0 and the truth are the ring's own views
    (the training distribution: the subject's ring elevation, azimuths on the 15° grid) instead of fresh renders."""
    rows, gt_ok, vids = [], [], []
    for s in subjects:
        if rings is not None: s, ring = rings['subjects'][s], rings['rgba'][s, ..., :3].astype(np.float32) / 255
        grid = tracking_views(s, res, with_depth=False)
        for a in azimuths:
            for d in (1, -1):
                if rings is None: gt = tw.render_views(s, (a + d * 30 * np.arange(8)) % 360, elevation, res=res, with_depth=False).rgb
                else: gt = ring[tw.orbit_indices(len(ring), 8, 2, int(round(a / 15)), d)]
                gt_ok.append(rotation_direction(view_match(gt, grid)[1]) == d)
                f0 = degrade_first(s, a, elevation, gt[0], res) if rings is None else gt[0]
                v = ar_video(bb, torch.from_numpy(np.ascontiguousarray(f0)).float(), video_caption(s, d), seed + len(rows), steps)
                rows.append({**score(v.numpy(), grid, view_match(gt, grid)[1], d), 'first_contrast': pose_contrast(f0, grid)})
                vids.append((gt, v.numpy()))
    return {**summary(rows), 'ground_truth_rate': float(np.mean(gt_ok))}, vids

def save_grid(vids, path, n: int = 8):
    "Pairs of rows (truth, drawn video) for the first `n` videos, scaled 3x, as a PNG."
    from PIL import Image
    rows = [np.concatenate(list(x), 1) for gt, v in vids[:n] for x in (gt, v)]
    img = (np.concatenate(rows, 0) * 255).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(path)


if __name__ == '__main__':
    if os.environ.get('INIT') == 'shipped':               # weights trained from the shipped model: its text encoder
        bb = load_backbone('toy'); bb.transformer.load_state_dict(torch.load(sys.argv[1])); bb.eval()
    else:                                                # window_ladder.py's fresh models own their seed-0 text encoder
        from dreamvid_lib.pretrain import load_orbit_prior
        bb = load_orbit_prior(sys.argv[1])
    if os.environ.get('PARAM') == 'x':                   # PARAM=x: a model trained with window_ladder.py --param x
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from window_ladder import use_x_prediction; use_x_prediction(bb)
    rings = tw.load_ring_dataset(tw.build_ring_dataset(cache_dir(), 16, workers=1))
    on_ring = os.environ.get('RING') == '1'      # RING=1: frame 0 from the training ring views (15° and 195°)
    held = os.environ.get('HELDOUT') == '1'      # HELDOUT=1: held-out subjects (attribute combinations never trained on), fresh renders
    subs = list(range(int(sys.argv[2]))) if on_ring else tw.heldout_subjects(int(sys.argv[2])) if held else [rings['subjects'][i] for i in range(int(sys.argv[2]))]
    if os.environ.get('FIRST') == 'text': res, vids = ar_rotation_text(bb, subs, steps=int(os.environ.get('STEPS', 20)))
    else: res, vids = ar_rotation(bb, subs, azimuths=(15.0, 195.0) if on_ring else (20.0, 200.0), steps=int(os.environ.get('STEPS', 20)),
                            rings=rings if on_ring else None)
    print(json.dumps(res), flush=True)
    save_grid(vids, sys.argv[3])
