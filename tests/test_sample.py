"""The sampler (`04b_sample`): `generate`, `image_to_video` and the partial-noise diagnostic are `check_inputs` →
`prepare_latents` → `denoise` → decode; the Euler update, the hooks, the conditioning frame and partial noise."""
import numpy as np
import pytest
import torch
from dreamvid_lib.core import ConfigError
from dreamvid_lib.sample import (check_inputs, prepare_latents, prepare_references, make_scheduler, denoise, SamplerHook,
                                 DenoiseState, conditioning_sigmas)
from dreamvid_lib.attention import TimeAwareBias, EntityRegionBias, RouterCapture, probe_of, tab_bias
from dreamvid_lib.generate import generate
from dreamvid_lib.pretrain import image_to_video, rotation_after_partial_noise
from dreamvid_lib.prompts import video_caption
from dreamvid_lib import toyworld as tw

STEPS = 3


@pytest.fixture(scope='module')
def prompts():
    return [video_caption(s, d) for s, d in zip(tw.heldout_subjects(2, seed=0), (1, -1))]


@pytest.fixture(scope='module')
def views():
    return torch.from_numpy(np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32))


@torch.no_grad()                                  # as generate (the text encoder's kernels differ with autograd on)
def by_hand(bb, prompts, seeds, guidance, refs=None, hooks=(), **kw):
    "generate() written out with the sampler's pieces."
    ps, sds, nf, H, W = check_inputs(bb, prompts, seeds, hooks=hooks, references=refs)
    lat = prepare_latents(bb, sds, nf, H, W)
    neg = bb.encode_prompt([''] * len(ps), allow_empty=True) if guidance > 1 else None
    r = None if refs is None else prepare_references(bb, refs, lat)
    out = denoise(bb, lat, bb.encode_prompt(ps), neg, guidance, STEPS, references=r, callbacks=hooks, **kw)
    return bb.decode_latents(out)[:, :nf].float().cpu()


@pytest.mark.parametrize('guidance', [1.0, 4.0])
def test_generate_is_the_sampler_pipeline(toy, prompts, guidance):
    a = generate(toy, prompts, [0, 1], steps=STEPS, guidance=guidance)
    assert torch.equal(a, by_hand(toy, prompts, [0, 1], guidance))
    assert torch.equal(a, generate(toy, prompts, [0, 1], steps=STEPS, guidance=guidance))       # deterministic
    assert not torch.allclose(a[0], generate(toy, prompts[:1], 5, steps=STEPS, guidance=guidance)[0])   # the seed matters


def test_generate_with_hooks_is_the_sampler_pipeline(toy, prompts, views):
    a = generate(toy, prompts, [0, 1], steps=STEPS, references=views, tab=True, erae=True, capture=True)
    rec_a = [(r['layer'], r['step']) for r in probe_of(toy).records]
    b = by_hand(toy, prompts, [0, 1], 4.0, views, [TimeAwareBias(), EntityRegionBias(prompts), RouterCapture()])
    assert torch.equal(a, b) and [(r['layer'], r['step']) for r in probe_of(toy).records] == rec_a
    layers = len(toy.transformer.blocks)
    assert rec_a == [(l, s) for s in range(STEPS) for l in range(layers)]      # every layer at every step


def test_hook_effects_and_cleanup(toy, prompts, views):
    refs_only = generate(toy, prompts, [0, 1], steps=STEPS, references=views)
    tab = generate(toy, prompts, [0, 1], steps=STEPS, references=views, tab=True)
    erae = generate(toy, prompts, [0, 1], steps=STEPS, references=views, erae=True)
    cap = generate(toy, prompts, [0, 1], steps=STEPS, references=views, capture=True)
    assert (tab - refs_only).abs().max() > 1e-3 and (erae - refs_only).abs().max() > 1e-4 and not torch.equal(tab, erae)
    assert torch.allclose(cap, refs_only, atol=1e-5)                  # capture measures, it does not steer
    assert probe_of(toy).layout is None and not probe_of(toy).active()
    def boom(state):
        if state.step == 1: raise RuntimeError('stop here')
    with pytest.raises(RuntimeError, match='stop here'):
        generate(toy, prompts, [0, 1], steps=STEPS, references=views, tab=True, callbacks=[boom])
    assert probe_of(toy).layout is None                               # the hooks' `end` ran although the loop failed
    assert torch.equal(generate(toy, prompts, [0, 1], steps=STEPS, references=views), refs_only)


def test_tab_hook_sets_tab_bias_per_step(toy, prompts, views):
    seen = []
    class Peek(SamplerHook):
        def step_begin(self, state): seen.append((float(state.timestep), state.shared['attention_probe'].ref_bias))
    generate(toy, prompts[:1], 0, steps=STEPS, references=views, tab=True, tab_gamma=4.0, callbacks=[Peek()])
    assert len(seen) == STEPS and all(b == tab_bias(t, 1000, 4.0, 0.1) for t, b in seen)


def test_hook_moments_and_latent_replacement(toy, prompts):
    log = []
    class Log(SamplerHook):
        def begin(self, s): log.append('begin')
        def step_begin(self, s): log.append(('in', s.step, s.sample.abs().max().item()))
        def step_end(self, s):
            log.append(('out', s.step)); s.latents = s.latents.clamp(-0.25, 0.25)
        def end(self, s): log.append('end')
    text = toy.encode_prompt(prompts)
    lat = prepare_latents(toy, [0, 1], 8, 32, 32)
    out = denoise(toy, lat, text, steps=STEPS, callbacks=[Log()])
    assert log[0] == 'begin' and log[-1] == 'end' and [e[:2] for e in log[1:-1]] == [(k, i) for i in range(STEPS) for k in ('in', 'out')]
    assert log[1][2] > 1 and all(e[2] <= 0.25 for e in log[3:-1:2])   # later steps start from the replaced latents
    assert out.abs().max() <= 0.25
    assert torch.equal(lat, prepare_latents(toy, [0, 1], 8, 32, 32))  # the caller's latents are not modified


def test_euler_update(toy, prompts):
    text = toy.encode_prompt(prompts)
    lat = prepare_latents(toy, [0, 1], 8, 32, 32)
    sch = make_scheduler(toy); sch.set_timesteps(2)
    s0, s1 = sch.sigmas[:2].tolist()
    x1 = lat + (s1 - s0) * toy.predict_velocity(lat, torch.full((2,), s0), text)
    x2 = x1 + (0 - s1) * toy.predict_velocity(x1, torch.full((2,), s1), text)
    assert torch.allclose(denoise(toy, lat, text, steps=2), x2, atol=1e-5)


def test_classifier_free_guidance_step(toy, prompts):
    text, neg = toy.encode_prompt(prompts), toy.encode_prompt(['', ''], allow_empty=True)
    lat = prepare_latents(toy, [0, 1], 8, 32, 32)
    one = torch.ones(2)
    v_u, v_c = toy.predict_velocity(lat, one, neg), toy.predict_velocity(lat, one, text)
    want = lat - (v_u + 3.0 * (v_c - v_u))                          # one Euler step from σ = 1 with v̂ = v_∅ + w (v_c − v_∅)
    assert torch.allclose(denoise(toy, lat, text, neg, guidance=3.0, steps=1), want, atol=1e-5)
    assert not torch.allclose(denoise(toy, lat, text, neg, guidance=1.0, steps=1), want, atol=1e-3)   # w ≤ 1: no guidance


def test_image_to_video_is_denoise_with_a_first_frame(toy, prompts):
    first = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    a = image_to_video(toy, first, prompts, [0, 1], steps=STEPS, guidance=2.0)
    with torch.no_grad(): x0, text, neg = toy.encode_video(first[:, None])[:, :, 0], toy.encode_prompt(prompts), toy.encode_prompt(['', ''], allow_empty=True)
    lat = denoise(toy, prepare_latents(toy, [0, 1], 8, 32, 32), text, neg, 2.0, STEPS, scheduler=make_scheduler(toy, euler=True), first_latent=x0)
    assert torch.equal(a, toy.decode_latents(lat).float())
    assert torch.equal(lat[:, :, 0], x0)
    assert torch.equal(a, image_to_video(toy, first, prompts, [0, 1], steps=STEPS, guidance=2.0, cond_sigma=0.0))


def test_noise_augmented_conditioning_frame(toy, prompts, monkeypatch):
    text = toy.encode_prompt(prompts)
    lat = prepare_latents(toy, [0, 1], 8, 32, 32)
    x0 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    calls, orig = [], toy.predict_velocity
    def spy(x, s, t, *a): calls.append((x.clone(), s.clone())); return orig(x, s, t, *a)
    monkeypatch.setattr(toy, 'predict_velocity', spy)
    out = denoise(toy, lat, text, steps=STEPS, first_latent=x0, cond_sigma=0.2)
    monkeypatch.undo()
    assert len(calls) == STEPS and torch.equal(out[:, :, 0], x0)      # the result's frame 0 is the clean frame
    want0 = 0.8 * x0 + 0.2 * lat[:, :, 0]                             # ε: the sample's own initial frame-0 noise
    sch = make_scheduler(toy); sch.set_timesteps(STEPS)
    for (x, s), sig in zip(calls, sch.sigmas):
        assert torch.allclose(x[:, :, 0], want0, atol=1e-6)
        assert torch.allclose(s[:, :64], torch.tensor(0.2)) and torch.allclose(s[:, 64:], sig.float(), atol=1e-6)
    plain = denoise(toy, lat, text, steps=STEPS, first_latent=x0)
    assert (out[:, :, 1:] - plain[:, :, 1:]).abs().max() > 1e-4
    assert torch.equal(conditioning_sigmas(toy, lat, torch.tensor([0.5, 0.5]))[:, :64], torch.zeros(2, 64))


def test_partial_noise_start(toy, prompts):
    text = toy.encode_prompt(prompts[:1])
    x0 = torch.rand(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    eps = prepare_latents(toy, [9], 8, 32, 32)
    xs = 0.5 * x0 + 0.5 * eps
    a = denoise(toy, xs, text, sigmas=[1.0, 0.75, 0.5, 0.25], start_sigma=0.5)
    assert torch.equal(a, denoise(toy, xs, text, sigmas=[0.5, 0.25]))  # the same two steps, started from σ = 0.5
    assert torch.equal(denoise(toy, x0, text, steps=4, start_sigma=0.0), x0)


def test_partial_noise_diagnostic_at_zero_noise_scores_the_ground_truth(toy):
    rows = rotation_after_partial_noise(toy, tw.heldout_subjects(1, seed=0), sigma0s=(0.0,), steps=2)
    assert rows == [{'sigma0': 0.0, 'rotation_monotone_rate': 1.0, 'right_direction_rate': 1.0}]


def test_bad_inputs(toy, prompts, views):
    p = prompts[0]
    with pytest.raises(ConfigError, match='no prompts'): check_inputs(toy, [])
    with pytest.raises(ConfigError, match='one seed per prompt'): check_inputs(toy, [p, p], [0])
    with pytest.raises(ConfigError, match='multiples of 4'): check_inputs(toy, p, width=34)
    with pytest.raises(ConfigError, match='tab, capture act on reference views'):
        check_inputs(toy, p, hooks=[TimeAwareBias(), RouterCapture()])
    lat, text = prepare_latents(toy, [0], 8, 32, 32), toy.encode_prompt(p)
    with pytest.raises(ConfigError, match='needs negative_text'): denoise(toy, lat, text, guidance=3.0)
    with pytest.raises(ConfigError, match='one per sample'): denoise(toy, lat, toy.encode_prompt([p, p]))
    with pytest.raises(ConfigError, match='first_latent'): denoise(toy, lat, text, first_latent=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ConfigError, match=r'in \[0, 1\)'): denoise(toy, lat, text, first_latent=lat[:, :, 0], cond_sigma=1.0)
    with pytest.raises(ConfigError, match='pass first_latent'): denoise(toy, lat, text, cond_sigma=0.1)
    with pytest.raises(ConfigError, match='prepare_references'): denoise(toy, lat, text, references=torch.zeros(1, 3, 2, 16, 16))
    with pytest.raises(ConfigError, match='SamplerHook objects or functions'): denoise(toy, lat, text, steps=1, callbacks=['x'])
    with pytest.raises(ConfigError, match='pass references'): denoise(toy, lat, text, steps=1, callbacks=[EntityRegionBias(p)])
    class NoSigmas:
        config = make_scheduler(toy).config
        def set_timesteps(self, n, device=None): pass
    with pytest.raises(ConfigError, match='takes no custom sigmas'): denoise(toy, lat, text, scheduler=NoSigmas(), sigmas=[1.0, 0.5])
