"""Unit tests of the foundation: errors on bad input, save/load round trips, resumable pre-training, the CLI."""
import json, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

from dreamvid_lib.core import AssetError, ConfigError, PromptError, DreamvidError, save_json, load_json
from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig, load_backbone, default_toy_weights, IDENTIFIER_TOKENS
from dreamvid_lib.pretrain import PretrainConfig, pretrain, caption_vocabulary, video_caption
from dreamvid_lib.generate import generate
from dreamvid_lib import toyworld as tw


def test_prompt_errors(toy):
    with pytest.raises(PromptError, match="'sparkly'"): toy.encode_prompt('a video of a sparkly mug')
    with pytest.raises(PromptError, match='empty prompt'): toy.encode_prompt('')
    with pytest.raises(PromptError, match='at most'): toy.encode_prompt(' '.join(['red'] * 40))
    assert toy.encode_prompt(f'a video of a {IDENTIFIER_TOKENS[0]} mug rotating clockwise').shape[0] == 1


def test_shipped_assets_load_and_are_described():
    p = default_toy_weights()
    for part in ('backbone.json', 'transformer', 'text_encoder', 'tokenizer', 'scheduler', 'README.md', 'training_log.json', 'loss_curve.png'):
        assert (p/part).exists(), f'assets/toy_t2v/{part} missing'
    card = (p/'README.md').read_text()
    assert 'steps' in card and 'min training' in card
    vocab = set(load_backbone('toy').vocabulary)
    assert set(caption_vocabulary()) <= vocab


def test_missing_and_malformed_assets(tmp_path):
    with pytest.raises(AssetError, match='not found'): load_backbone('toy', tmp_path/'nope')
    d = tmp_path/'m'; shutil.copytree(default_toy_weights(), d)
    shutil.rmtree(d/'transformer')
    with pytest.raises(AssetError, match='transformer'): load_backbone('toy', d)
    d2 = tmp_path/'m2'; shutil.copytree(default_toy_weights(), d2)
    (d2/'backbone.json').write_text('{"backbone": "toy", "config": {"num_layers": -1}}')
    with pytest.raises(ConfigError, match='num_layers'): load_backbone('toy', d2)
    (d2/'backbone.json').write_text('not json')
    with pytest.raises(ConfigError, match='not valid JSON'): load_backbone('toy', d2)
    with pytest.raises(ConfigError, match="unknown backbone"): load_backbone('sora')


def test_generation_deterministic(toy):
    p = video_caption(tw.heldout_subjects(1)[0], 1)
    a = generate(toy, p, seeds=3, steps=3); b = generate(toy, p, seeds=3, steps=3)
    assert torch.equal(a, b) and a.shape == (1, 8, 32, 32, 3)
    with pytest.raises(ConfigError, match='seeds'): generate(toy, [p, p], seeds=[1], steps=2)


@pytest.fixture(scope='module')
def rings(tmp_path_factory):
    d = tmp_path_factory.mktemp('rings')
    return tw.load_ring_dataset(tw.build_ring_dataset(d, 4, res=32, workers=1))


def test_pretrain_kill_and_resume_matches_uninterrupted(rings, tmp_path):
    cfg = PretrainConfig(steps=6, checkpoint_every=2, warmup=2, batch_videos=2, batch_images=4)
    small = ToyModelConfig(num_layers=1)
    a = ToyBackbone.create(caption_vocabulary(), small, seed=0); pretrain(a, rings, cfg, tmp_path/'a', progress=False)
    b = ToyBackbone.create(caption_vocabulary(), small, seed=0); pretrain(b, rings, cfg, tmp_path/'b', progress=False, stop_after=3)
    b = ToyBackbone.create(caption_vocabulary(), small, seed=0); log = pretrain(b, rings, cfg, tmp_path/'b', progress=False)
    assert log['steps_this_call'] == 4
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()): assert torch.allclose(x, y, atol=1e-6), k


def test_latent_route_trains_resumes_saves_and_generates(rings, tmp_path):
    "Stage 1 (toy VAE) and stage 2 (transformer on its latents): kill/resume, save/load, generation through the VAE."
    from dreamvid_lib.pretrain import VAEConfig, train_toy_vae, set_latent_normalisation
    vcfg = VAEConfig(steps=4, batch=4, checkpoint_every=2)
    full = train_toy_vae(rings, vcfg, tmp_path/'v', progress=False)
    train_toy_vae(rings, vcfg, tmp_path/'vk', progress=False, stop_after=3)
    resumed = train_toy_vae(rings, vcfg, tmp_path/'vk', progress=False)
    for x, y in zip(full['vae'].parameters(), resumed['vae'].parameters()): assert torch.allclose(x, y, atol=1e-6)
    vae = set_latent_normalisation(full['vae'], rings, n=64)
    assert vae.config.scaling_factor > 0 and all(not p.requires_grad for p in vae.parameters())
    bb = ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1, patch=1, codec='vae'), seed=0, vae=vae)
    cfg = PretrainConfig(steps=2, checkpoint_every=1, warmup=1, batch_videos=2, batch_images=4)
    vae_before = [p.clone() for p in bb.codec.vae.parameters()]
    log = pretrain(bb, rings, cfg, tmp_path/'t', progress=False)
    assert all(np.isfinite(h['loss']) for h in log['history'])
    assert all(torch.equal(a, b) for a, b in zip(vae_before, bb.codec.vae.parameters()))    # the codec stays frozen
    bb.eval().save_pretrained(tmp_path/'m')
    bb2 = load_backbone('toy', tmp_path/'m')
    p = video_caption(tw.heldout_subjects(1)[0], 1)
    a, b = generate(bb, p, seeds=0, steps=2), generate(bb2, p, seeds=0, steps=2)
    assert a.shape == (1, 8, 32, 32, 3) and torch.allclose(a, b, atol=1e-5) and 0 <= a.min() and a.max() <= 1


def test_shipped_latent_model_loads():
    p = default_toy_weights().with_name('toy_t2v_latent')
    bb = load_backbone('toy', p)
    assert bb.config.codec == 'vae' and bb.codec.latent_channels == 8 and bb.layout(8, 32, 32).tokens_per_frame == 64
    assert 'AutoencoderKL' in (p/'README.md').read_text()
    x = torch.rand(1, 2, 32, 32, 3)
    rec = bb.decode_latents(bb.encode_video(x))
    assert rec.shape == x.shape


def test_cli_demo_fast(tmp_path):
    exe = Path(sys.executable).with_name('dreamvid')
    r = subprocess.run([str(exe), 'demo', '--out', str(tmp_path/'d'), '--fast', '--subject-seed', '1'], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path/'d'/'report.json').read_text())
    assert {'rotation_monotone_rate', 'text_binding_rate'} <= set(rep['base']) and rep['seconds'] > 0
    assert (tmp_path/'d'/'frames_grid.png').exists()
    assert len(list((tmp_path/'d'/'videos').glob('base_*.mp4'))) == rep['base']['n_videos']
    assert {'psnr', 'ssim', 'rotation_monotone_rate'} <= set(rep['dreambooth']) and {'psnr', 'ssim'} <= set(rep['base_class_prompt'])
    assert (tmp_path/'d'/'adapter_3db'/'adapter_config.json').exists()
    assert {'psnr', 'ssim', 'rotation_monotone_rate'} <= set(rep['joint']) and {'routing_accuracy', 'chance'} <= set(rep['router'])
    assert (tmp_path/'d'/'joint_grid.png').exists() and len(list((tmp_path/'d'/'videos').glob('joint_*.gif'))) == 2


def test_cli_reports_bad_weights(tmp_path):
    exe = Path(sys.executable).with_name('dreamvid')
    r = subprocess.run([str(exe), 'demo', '--out', str(tmp_path), '--weights', str(tmp_path/'missing')], capture_output=True, text=True)
    assert r.returncode == 2 and 'not found' in r.stderr
