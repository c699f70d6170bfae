"""The orbit-prior ladder (nbs/05_toy_pretrain.ipynb): first-frame conditioning in the stream, the loss and the
sampler, and the checks that a recipe must pass before a long run."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dreamvid_lib.core import ConfigError
from dreamvid_lib.backbones import load_backbone
from dreamvid_lib.pretrain import (PretrainConfig, OrbitStream, FlowMatchingLoss, frame_token_sigmas, check_first_frame_path,
                                   continuation_diagnostic, image_to_video, learnability_check, ladder_config, video_caption)
from dreamvid_lib import toyworld as tw


@pytest.fixture(scope='module')
def rings(tmp_path_factory):
    return tw.load_ring_dataset(tw.build_ring_dataset(tmp_path_factory.mktemp('rings'), 3, res=32, workers=1))


def test_default_stream_unchanged_by_first_frame_option(rings):
    "With first_frame_prob = 0 the stream draws exactly what it drew before the option existed (no extra random draws)."
    cfg = PretrainConfig(batch_videos=3, batch_images=4)
    a = OrbitStream(rings, cfg, torch.Generator().manual_seed(5)); b = OrbitStream(rings, cfg, torch.Generator().manual_seed(5))
    for step in range(5):
        va, ca = a.batch(step); vb, cb, fb = b.batch(step, flags=True)
        assert torch.equal(va, vb) and ca == cb and not fb.any()


def test_stream_restrictions_and_flags(rings):
    cfg = PretrainConfig(batch_videos=6, image_every=0, context_prob=0.0, caption_dropout=0.0, first_frame_prob=1.0)
    s = OrbitStream(rings, cfg, torch.Generator().manual_seed(0), subjects=[1], starts=[3], directions=(-1,))
    v, caps, flags = s.batch(3, flags=True)           # image_every=0: every step is a video step
    assert v.shape == (6, 8, 32, 32, 3) and flags.all()
    assert set(caps) == {video_caption(rings['subjects'][1], -1)}
    truth = torch.from_numpy(rings['rgba'][1, tw.orbit_indices(24, 8, 2, 3, -1), ..., :3].astype(np.float32) / 255)
    assert torch.equal(v[0], truth)
    with pytest.raises(ConfigError, match='subjects'): OrbitStream(rings, cfg, torch.Generator(), subjects=[7])
    with pytest.raises(ConfigError, match='directions'): OrbitStream(rings, cfg, torch.Generator(), directions=(2,))


def test_first_frame_loss_ignores_frame0_and_matches_plain_loss(toy):
    torch.manual_seed(0)
    video = torch.rand(2, 8, 32, 32, 3); caps = ['', '']; sig = torch.tensor([0.3, 0.9]); noise = torch.randn(2, 3, 8, 32, 32)
    loss = FlowMatchingLoss(toy)
    with torch.no_grad():
        plain = loss(video, caps, sig, noise)
        assert torch.allclose(plain, loss(video, caps, sig, noise, torch.zeros(2, dtype=torch.bool)))   # no flag = plain Eq. 1
        cf = torch.tensor([True, False])
        a = loss(video, caps, sig, noise, cf)
        noise2 = noise.clone(); noise2[0, :, 0] += 5.0                     # frame 0 of the conditioned video: not noised, not scored
        assert torch.allclose(a, loss(video, caps, sig, noise2, cf))
        noise3 = noise.clone(); noise3[1, :, 0] += 5.0                     # the other video's frame 0 still counts
        assert not torch.allclose(a, loss(video, caps, sig, noise3, cf))


def test_frame_token_sigmas_layout(toy):
    lat = torch.zeros(2, 3, 8, 32, 32)
    s = frame_token_sigmas(toy, lat, torch.tensor([0.5, 0.25]), torch.tensor([True, False]))
    assert s.shape == (2, 8 * 64)
    assert (s[0, :64] == 0).all() and (s[0, 64:] == 0.5).all() and (s[1] == 0.25).all()


def test_check_first_frame_path(toy):
    chk = check_first_frame_path(toy)
    assert chk['per_token_vs_scalar_max_abs'] < 1e-4 and chk['frame0_influence'] > 1e-3 and chk['token_order_ok']


def test_image_to_video_keeps_frame0_and_is_deterministic(toy):
    first = torch.rand(2, 32, 32, 3)
    caps = [video_caption(tw.heldout_subjects(1)[0], d) for d in (1, -1)]
    a = image_to_video(toy, first, caps, [0, 1], steps=2, guidance=2.0); b = image_to_video(toy, first, caps, [0, 1], steps=2, guidance=2.0)
    assert a.shape == (2, 8, 32, 32, 3) and torch.equal(a, b)
    assert torch.allclose(a[:, 0], first, atol=1 / 255 + 1e-6)
    with pytest.raises(ConfigError, match='one first frame'): image_to_video(toy, first, caps[:1], [0], steps=1)


def test_learnability_check_runs_and_diagnostic_is_bounded(rings, tmp_path):
    bb = load_backbone('toy')
    d = continuation_diagnostic(bb, rings, [0], starts=(3,))
    assert d['n'] == 2 and 0 <= d['correct_vs_mirrored'] <= 1
    assert d['baseline_direction_blind'] < d['baseline_mean_view']
    rows = learnability_check(bb, rings, ladder_config(4), tmp_path/'w', subjects=[0], starts=[3], eval_every=2)
    assert [r['step'] for r in rows] == [2, 4] and all(np.isfinite(r['mse_true']) for r in rows)


def test_noise_augmented_first_frame_trains_deterministically_and_resumes(rings, tmp_path):
    "cond_sigma > 0: frame 0 noised to its own σ_c; the same run twice, and a run killed and resumed, give the same weights."
    from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
    from dreamvid_lib.prompts import caption_vocabulary
    from dreamvid_lib.pretrain import pretrain
    cfg = ladder_config(4, frames=2, batch_videos=2, checkpoint_every=2, cond_sigma=0.3, sigma_sampling='high_mix')
    def run(work, stop=None):
        bb = ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0)
        log = pretrain(bb, rings, cfg, work, progress=False, stop_after=stop)
        return bb, log
    a, la = run(tmp_path/'a')
    b, _ = run(tmp_path/'b', stop=3); b, lb = run(tmp_path/'b')
    assert lb['resumed_from'] == 2 and [h['loss'] for h in la['history']] == [h['loss'] for h in lb['history']]
    for (k, p), q in zip(a.transformer.state_dict().items(), b.transformer.state_dict().values()): assert torch.equal(p, q), k
    plain = ladder_config(4, frames=2, batch_videos=2, checkpoint_every=2, sigma_sampling='high_mix')
    c = ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0)
    lc = pretrain(c, rings, plain, tmp_path/'c', progress=False)
    assert lc['history'][0]['loss'] != la['history'][0]['loss']       # the augmentation reaches the loss


def _tiny():
    from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
    from dreamvid_lib.prompts import caption_vocabulary
    return ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0).eval()


def test_rollout_video_frames_seeds_and_errors():
    from dreamvid_lib.pretrain import rollout_video
    bb, first = _tiny(), torch.rand(2, 32, 32, 3)
    caps = [video_caption(tw.heldout_subjects(1)[0], d) for d in (1, -1)]
    a = rollout_video(bb, first, caps, [0, 1], num_frames=4, steps=2)
    assert a.shape == (2, 4, 32, 32, 3) and torch.equal(a[:, 0], first)          # frame 0: the input, bit for bit
    assert torch.equal(a, rollout_video(bb, first, caps, [0, 1], num_frames=4, steps=2))
    c = rollout_video(bb, first, caps, [0, 2], num_frames=4, steps=2)
    assert torch.equal(a[0], c[0]) and not torch.allclose(a[1, 1:], c[1, 1:])      # per-sample seeds: only sample 1 changes
    assert not torch.allclose(a[:, 1:], rollout_video(bb, first, caps, [0, 1], num_frames=4, steps=2, cond_sigma=0.5)[:, 1:])
    w3 = rollout_video(bb, first, caps, [0, 1], num_frames=4, window=3, steps=2)    # two new frames per hop, cut to num_frames
    assert w3.shape == (2, 4, 32, 32, 3) and torch.equal(w3[:, 0], first)
    for kw, match in [(dict(first_frames=first[0]), 'first_frames'), (dict(first_frames=first[:1]), 'one first frame per prompt'),
                      (dict(window=1), 'window'), (dict(num_frames=1), 'num_frames'), (dict(cond_sigma=1.0), 'cond_sigma'),
                      (dict(cond_sigma=-0.1), 'cond_sigma'), (dict(first_cond_sigma=1.5), 'first_cond_sigma'),
                      (dict(seeds=[0]), 'seed'), (dict(num_frames=102), 'hops')]:
        args = dict(first_frames=first, prompts=caps, seeds=[0, 1], num_frames=3, steps=1) | kw
        with pytest.raises(ConfigError, match=match): rollout_video(bb, **args)


def test_rollout_video_one_denoise_of_steps_calls_per_hop():
    "window = 2, steps = N: N model calls per hop at σ = 1, 1 - 1/N, ..., 1/N (the toy scheduler's shift 1 keeps them); CFG doubles the batch, not the calls."
    from dreamvid_lib.pretrain import rollout_video
    bb = _tiny(); calls = []
    orig = bb.predict_velocity
    def spy(x, sigma, text):
        calls.append((x.shape[0], x.shape[2], float(sigma.max()))); return orig(x, sigma, text)
    bb.predict_velocity = spy
    rollout_video(bb, torch.rand(1, 32, 32, 3), ['a red mug'], [3], num_frames=4, steps=3)
    assert len(calls) == 3 * 3 and all(c[:2] == (1, 2) for c in calls)
    assert np.allclose([c[2] for c in calls], [1, 2 / 3, 1 / 3] * 3)
    calls.clear(); rollout_video(bb, torch.rand(1, 32, 32, 3), ['a red mug'], [3], num_frames=3, steps=2, guidance=2.0)
    assert len(calls) == 2 * 2 and all(c[0] == 2 for c in calls)


def test_rollout_video_matches_the_hand_written_euler_loop():
    "Hop by hop, the rollout is the Euler loop ar_rollout.py had (seed * 100 + k; ε drawn after the clip's noise), bit for bit."
    from dreamvid_lib.pretrain import rollout_video
    bb, first, cap = _tiny(), torch.rand(32, 32, 3), video_caption(tw.heldout_subjects(1)[0], 1)
    @torch.no_grad()
    def hop(x, seed, steps, cs):
        text = bb.encode_prompt([cap]); f = bb.encode_video(x[None, None])[:, :, 0]
        g = torch.Generator().manual_seed(seed)
        lat = torch.randn((1, f.shape[1], 2, *f.shape[2:]), generator=g)
        f = (1 - cs) * f + cs * torch.randn(f.shape, generator=g)
        sig = torch.linspace(1, 0, steps + 1)
        for i in range(steps):
            lat[:, :, 0] = f
            ts = frame_token_sigmas(bb, lat, sig[i].expand(1), torch.ones(1, dtype=torch.bool)); ts.view(1, 2, -1)[:, 0] = cs
            lat = lat + (sig[i + 1] - sig[i]) * bb.predict_velocity(lat, ts, text)
        return bb.decode_latents(lat)[0, 1].float().clamp(0, 1)
    for cs in (0.0, 0.3):
        frames = [first]
        for k in (1, 2): frames.append(hop(frames[-1], 5 * 100 + k, 3, cs if k > 1 else 0.0))
        assert torch.equal(rollout_video(bb, first[None], [cap], [5], num_frames=3, steps=3, cond_sigma=cs)[0], torch.stack(frames))
