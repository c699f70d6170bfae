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
