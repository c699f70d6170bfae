"""experiments.run_method: the one per-subject runner (ground truth, adapters, generation, scores) that the demo, the
benchmark, the sweeps and the studies call. A tiny 1-layer toy backbone and a few steps keep each test to seconds."""
import numpy as np
import pytest
import torch

from dreamvid_lib import experiments as ex, toyworld as tw
from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
from dreamvid_lib.core import ConfigError
from dreamvid_lib.dapter import JointConfig, train_joint
from dreamvid_lib.dreambooth import DreamBoothConfig, train_3dreambooth, video_fidelity, evaluate_videos
from dreamvid_lib.generate import generate
from dreamvid_lib.pretrain import caption_vocabulary
from dreamvid_lib.prompts import orbit_prompts, class_caption


def _bb(): return ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0)

SUBJ = tw.heldout_subjects(1, seed=0)[0]


@pytest.fixture(scope='module')
def truth(): return ex.SubjectTruth(SUBJ, 32, k=2)


def test_subject_views_and_truth(truth):
    mv = ex.subject_views(SUBJ, 32)
    assert len(mv) == ex.TRAINING_VIEWS == 30 and mv.prompt() == f'a video of a sks {SUBJ.cls}'
    np.testing.assert_array_equal(mv.images, tw.multiview_set(SUBJ, n_views=30, res=32, seed=0).rgb)
    assert truth.cond_views.shape == (2, 32, 32, 3) and truth.cond_masks.shape == (2, 32, 32)
    np.testing.assert_array_equal(truth.cond_views, truth.mv.images[truth.cond_idx])
    assert ex.subject_views(SUBJ, 32, identifier='zzq').prompt() == f'a video of a zzq {SUBJ.cls}'


def test_methods_and_prompts():
    with pytest.raises(ConfigError, match="unknown method 'vace'"): ex.method_of('vace')
    assert ex.method_of(ex.METHODS['joint']) is ex.METHODS['joint']
    assert ex.method_prompts(SUBJ, '3db', 2) == orbit_prompts(SUBJ, 2, 'sks')
    assert ex.method_prompts(SUBJ, 'base', 2) == orbit_prompts(SUBJ, 2)
    assert ex.method_prompts(SUBJ, 'base', 1, 'class') == [class_caption(SUBJ.cls, 1)]
    with pytest.raises(ConfigError, match="prompt kind 'nope'"): ex.method_prompts(SUBJ, 'base', 1, 'nope')


def test_score_video_true_orbit_and_shuffled(truth):
    orbit = torch.from_numpy(tw.render_views(SUBJ, np.arange(8) * 30.0, [15.0] * 8, res=32).rgb)
    row = ex.score_video(orbit, truth, 'a video of a sks mug', geometry=False)
    assert row['psnr'] == pytest.approx(60.0) and row['rotates'] == 1.0
    assert {'toy_i', 't_cons', 'dynamic_degree', 'motion_smoothness'} <= set(row)
    shuffled = ex.score_video(orbit[[0, 5, 2, 7, 1, 4, 3, 6]], truth, geometry=False, features=False)
    assert set(shuffled) == {'psnr', 'ssim', 'rotates'} and shuffled['rotates'] == 0.0


def test_run_method_base_is_generate_plus_scorer(truth):
    "The base method: the class-noun orbit prompts, the given seeds, and the one scorer; nothing trained."
    bb = _bb()
    r = ex.run_method(SUBJ, 'base', bb=bb, truth=truth, seeds=[3, 4], gen_steps=2)
    assert r.log is None and r.prompts == orbit_prompts(SUBJ, 2) and r.seeds == [3, 4]
    want = generate(bb, orbit_prompts(SUBJ, 2), [3, 4], steps=2)
    assert torch.equal(r.videos, want)
    assert r.scores == [video_fidelity(v, truth.grid) for v in want]
    assert r.fidelity == evaluate_videos(want, SUBJ, 32)
    with pytest.raises(ConfigError, match='1 prompts for 2 seeds'):
        ex.run_method(SUBJ, 'base', bb=bb, truth=truth, seeds=[0, 1], prompts=['only one'], gen_steps=2)


def test_run_method_3db_is_train_then_generate(truth, tmp_path):
    "3DreamBooth through run_method equals training and generating by hand, bit for bit; train=False only generates."
    cfg = dict(steps=2, batch_size=2, preview_every=0)
    r = ex.run_method(SUBJ, '3db', bb=_bb(), truth=truth, cfg=DreamBoothConfig(**cfg), work_dir=tmp_path/'a', seeds=[0], gen_steps=2)
    assert r.log['trained_steps'] == 2 and 'sks' in r.prompts[0] and np.isfinite(r.final_loss)
    bb = _bb(); train_3dreambooth(bb, truth.mv, DreamBoothConfig(**cfg), work_dir=tmp_path/'b', progress=False)
    assert torch.equal(r.videos, generate(bb, orbit_prompts(SUBJ, 1, 'sks'), [0], steps=2))
    again = ex.run_method(SUBJ, '3db', bb=r.backbone, truth=truth, train=False, seeds=[0], gen_steps=2)
    assert again.log is None and torch.equal(again.videos, r.videos) and again.scores == r.scores


def test_run_method_joint_reads_the_conditioning_views(truth, monkeypatch, tmp_path):
    seen = {}
    real = ex.generate
    def spy(bb, prompts, seeds, **kw):
        seen.update(kw); return real(bb, prompts, seeds, **kw)
    monkeypatch.setattr(ex, 'generate', spy)
    cfg = JointConfig(steps=1, batch_size=1, k=2, preview_every=0)
    r = ex.run_method(SUBJ, 'joint_tab', bb=_bb(), truth=truth, cfg=cfg, dapter='random', work_dir=tmp_path/'j', seeds=[0], gen_steps=2)
    assert seen['tab'] is True and seen['erae'] is False
    np.testing.assert_array_equal(seen['references'], truth.cond_views)
    assert r.log['conditioning_views'] == truth.cond_idx.tolist()
    bb = _bb(); train_joint(bb, truth.mv, JointConfig(steps=1, batch_size=1, k=2, preview_every=0), dapter='random',
                           work_dir=tmp_path/'h', progress=False)
    assert torch.equal(r.videos, real(bb, orbit_prompts(SUBJ, 1, 'sks'), [0], steps=2, references=truth.cond_views, tab=True))


def test_callers_go_through_run_method(monkeypatch, tmp_path):
    "The sweeps map their knobs to a method of the table; the demo and the studies call run_method."
    from dreamvid_lib import sweeps, cli
    calls = []
    class Stop(Exception): pass
    def fake(subject, method, *a, **kw):
        calls.append((ex.method_of(method).key, kw.get('prompts', 'orbit'))); raise Stop
    monkeypatch.setattr(sweeps, 'run_method', fake)
    with pytest.raises(Stop): sweeps.run_experiment(method='joint', tab=True, erae=True, steps=1, k=2)
    monkeypatch.setattr(ex, "run_method", fake); monkeypatch.setattr(cli, "run_method", fake)
    with pytest.raises(Stop): ex.compare_on_subject('toy', None, SUBJ, DreamBoothConfig(steps=1))
    with pytest.raises(Stop): cli.demo_dreambooth('toy', None, SUBJ, tmp_path/'d', steps=1)
    with pytest.raises(Stop): cli.demo_joint('toy', None, SUBJ, tmp_path/'j', steps=1)
    with pytest.raises(Stop): ex.convergence_study('toy', None, [SUBJ], max_steps=1, eval_every=1, methods=('joint_random',), progress=False)
    assert calls == [('joint_tab_erae', 'orbit'), ('base', 'class'), ('base', 'class'), ('joint', 'orbit'), ('joint', 'orbit')]
