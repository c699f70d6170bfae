"""Unit tests of the foundation: errors on bad input, save/load round trips, resumable pre-training, the CLI."""
import dataclasses, json, re, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

from dreamvid_lib.core import AssetError, ConfigError, PromptError, DreamvidError, save_json, load_json
from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig, load_backbone, default_toy_weights, IDENTIFIER_TOKENS
from dreamvid_lib.pretrain import PretrainConfig, pretrain, caption_vocabulary, video_caption
from dreamvid_lib.train import load_checkpoint
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
    "Stage 1 (toy VAE, on train.train_loop) and stage 2 (transformer on its latents): save/load, generation through the VAE."
    from dreamvid_lib.pretrain import VAEConfig, train_toy_vae, set_latent_normalisation
    vcfg = VAEConfig(steps=4, batch=4, checkpoint_every=2)
    full = train_toy_vae(rings, vcfg, tmp_path/'v', progress=False)
    assert sorted(p.name for p in (tmp_path/'v').iterdir()) == ['checkpoint.pt']         # the engine's one checkpoint format
    assert load_checkpoint(tmp_path/'v'/'checkpoint.pt', dataclasses.asdict(vcfg), vcfg.resumable)['step'] == 4
    assert [h['step'] for h in full['history']] == [1, 2, 3, 4] and all(h['l1'] > 0 for h in full['history'])
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


def test_vae_kill_and_resume_is_bit_identical(rings, tmp_path):
    "A toy-VAE run killed after 3 steps (last checkpoint at 2) and started again ends with the unbroken run's weights, bit for bit."
    from dreamvid_lib.pretrain import VAEConfig, train_toy_vae
    vcfg = VAEConfig(steps=5, batch=4, checkpoint_every=2)
    full = train_toy_vae(rings, vcfg, tmp_path/'v', progress=False)
    killed = train_toy_vae(rings, vcfg, tmp_path/'vk', progress=False, stop_after=3)
    assert killed['step'] == 3 and load_checkpoint(tmp_path/'vk'/'checkpoint.pt')['step'] == 2
    resumed = train_toy_vae(rings, vcfg, tmp_path/'vk', progress=False)
    assert resumed['resumed_from'] == 2 and resumed['steps_this_call'] == 3 and resumed['step'] == 5
    assert [h['l1'] for h in resumed['history']] == [h['l1'] for h in full['history']]
    for (k, x), (_, y) in zip(full['vae'].state_dict().items(), resumed['vae'].state_dict().items()): assert torch.equal(x, y), k
    # stage 2 continues stage 1's VAE (init=): killed and resumed, it matches its unbroken run too
    s2 = VAEConfig(steps=3, batch=4, checkpoint_every=1, lr=1e-3)
    a = train_toy_vae(rings, s2, tmp_path/'s2', init=full['vae'], progress=False)
    train_toy_vae(rings, s2, tmp_path/'s2k', init=full['vae'], progress=False, stop_after=2)
    b = train_toy_vae(rings, s2, tmp_path/'s2k', init=full['vae'], progress=False)
    assert b['resumed_from'] == 2 and all(torch.equal(x, y) for x, y in zip(a['vae'].state_dict().values(), b['vae'].state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a['vae'].state_dict().values(), full['vae'].state_dict().values()))


def test_vae_other_settings_refused_by_name(rings, tmp_path):
    from dreamvid_lib.pretrain import VAEConfig, train_toy_vae
    vcfg = VAEConfig(steps=4, batch=4, checkpoint_every=2)
    train_toy_vae(rings, vcfg, tmp_path/'v', progress=False, stop_after=2)
    for change, named in (({'kl_weight': 1e-5}, 'kl_weight: 1e-06 -> 1e-05'), ({'lr': 1e-3}, 'lr: 0.002 -> 0.001'),
                          ({'steps': 8}, 'steps: 4 -> 8'), ({'batch': 8}, 'batch: 4 -> 8')):
        with pytest.raises(ConfigError, match=re.escape(named)):
            train_toy_vae(rings, dataclasses.replace(vcfg, **change), tmp_path/'v', progress=False)
    log = train_toy_vae(rings, dataclasses.replace(vcfg, checkpoint_every=1), tmp_path/'v', progress=False)   # may change
    assert log['resumed_from'] == 2 and log['step'] == 4


def _former_vae_checkpoint(path):
    "What train_toy_vae's loop wrote before it ran on train_loop: no format, no settings."
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'step': 2, 'model': {}, 'opt': {}, 'sched': {}, 'rng': np.random.default_rng(0).bit_generator.state,
                'torch_rng': torch.get_rng_state(), 'history': [{'step': 1, 'l1': 0.8}, {'step': 2, 'l1': 0.7}]}, path)
    return path


def test_vae_former_checkpoint_is_refused_not_ignored(rings, tmp_path):
    from dreamvid_lib.pretrain import VAEConfig, train_toy_vae
    old = _former_vae_checkpoint(tmp_path/'v'/'vae_checkpoint.pt'); before = old.read_bytes()
    with pytest.raises(ConfigError, match=re.escape(str(old))) as e:
        train_toy_vae(rings, VAEConfig(steps=2, batch=4), tmp_path/'v', progress=False)
    assert 'delete it' in str(e.value) and 'new work folder' in str(e.value)
    assert old.read_bytes() == before and sorted(p.name for p in old.parent.iterdir()) == ['vae_checkpoint.pt']   # nothing trained over it
    old.unlink()                                                                     # the fix the message names
    assert train_toy_vae(rings, VAEConfig(steps=2, batch=4), tmp_path/'v', progress=False)['step'] == 2


def test_cli_pretrain_vae_refuses_former_checkpoints_before_work(tmp_path, monkeypatch, capsys):
    "`dreamvid pretrain --codec vae` names every stage's former checkpoint before rendering or training anything."
    from dreamvid_lib.cli import main
    monkeypatch.setenv('DREAMVID_CACHE', str(tmp_path/'cache'))
    work = tmp_path/'w'
    old = [_former_vae_checkpoint(work/f'vae_stage{k}'/'vae_checkpoint.pt') for k in (0, 1)]
    rc = main(['pretrain', '--out', str(tmp_path/'m'), '--work', str(work), '--subjects', '2', '--steps', '2',
               '--workers', '1', '--codec', 'vae'])
    err = capsys.readouterr().err
    assert rc == 2 and all(str(p) in err for p in old) and 'delete them' in err, err
    assert all(p.exists() for p in old) and not (tmp_path/'m').exists() and not (tmp_path/'cache'/'rings').exists()
    assert sorted(p.name for p in work.rglob('*') if p.is_file()) == ['vae_checkpoint.pt'] * 2


def test_shipped_latent_model_loads():
    p = default_toy_weights().with_name('toy_t2v_latent')
    bb = load_backbone('toy', p)
    assert bb.config.codec == 'vae' and bb.codec.latent_channels == 8 and bb.layout(8, 32, 32).tokens_per_frame == 64
    assert 'AutoencoderKL' in (p/'README.md').read_text()
    x = torch.rand(1, 2, 32, 32, 3)
    rec = bb.decode_latents(bb.encode_video(x))
    assert rec.shape == x.shape


# `dreamvid demo --fast` end to end: 13_cli's demo cell (papermill runs it at fast=True) checks the report, the videos and the adapters.

def test_cli_reports_bad_weights(tmp_path):
    exe = Path(sys.executable).with_name('dreamvid')
    r = subprocess.run([str(exe), 'demo', '--out', str(tmp_path), '--weights', str(tmp_path/'missing')], capture_output=True, text=True)
    assert r.returncode == 2 and 'not found' in r.stderr

def test_vae_config_schedules_a_twenty_step_run():
    "VAEConfig's one-cycle warm-up of 5% is exactly one step at 20 steps: PyTorch's OneCycleLR divided by zero there."
    import torch
    from dreamvid_lib.pretrain import VAEConfig
    from dreamvid_lib.train import OneCycleConfig
    cfg = VAEConfig(steps=20)
    assert isinstance(cfg, OneCycleConfig) and cfg.resumable == ('checkpoint_every',)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = cfg.make_scheduler(opt)
    lrs = []
    for _ in range(cfg.steps): opt.step(); sched.step(); lrs.append(opt.param_groups[0]['lr'])
    assert max(lrs) <= cfg.lr + 1e-12 and lrs[-1] < cfg.lr / 100


def test_cli_pretrain_orbit_prior_recipe_runs_every_stage_and_resumes(tmp_path, monkeypatch, capsys):
    "`dreamvid pretrain --recipe orbit-prior` at a tiny scale: every stage trains once, the model card names the stages, a rerun trains nothing."
    from dreamvid_lib.cli import main
    from dreamvid_lib.pretrain import orbit_prior_recipe
    monkeypatch.setenv('DREAMVID_CACHE', str(tmp_path/'cache'))
    args = ['pretrain', '--out', str(tmp_path/'m'), '--subjects', '16', '--steps', '2', '--workers', '1', '--recipe', 'orbit-prior',
            '--recipe-scale', '1e-4']
    assert main(args[:4] + ['4'] + args[5:]) == 2 and '--subjects 16' in capsys.readouterr().err      # before any rendering
    assert not (tmp_path/'cache'/'rings').exists()
    assert main(args) == 0
    work = tmp_path/'m.work'
    stages = sorted(p.name for p in work.iterdir() if p.is_dir())
    assert stages == [f'{k:02d}_{s.name}' for k, s in enumerate(orbit_prior_recipe())]
    card = (tmp_path/'m'/'README.md').read_text()
    assert '--recipe orbit-prior --window 8' in card and 'window8' in card
    before = (tmp_path/'m'/'transformer'/'diffusion_pytorch_model.safetensors').read_bytes()
    assert main(args) == 0                                                                         # resumed: nothing left to train
    assert (tmp_path/'m'/'transformer'/'diffusion_pytorch_model.safetensors').read_bytes() == before
    assert load_backbone('toy', tmp_path/'m').config.num_layers == 4
