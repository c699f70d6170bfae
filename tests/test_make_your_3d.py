"""Make-Your-3D on the toy (nbs/12f_make_your_3d): the hidden-side score, the multi-view model's views from one image, the
personalized model's SDEdit views and the pairs the multi-view model learns from, co-evolution that resumes to the same
orbits and refuses other settings, and the single-view comparison's resumable cells."""
import numpy as np
import pytest
import torch

from dreamvid_lib import toyworld as tw
from dreamvid_lib.backbones import load_backbone
from dreamvid_lib.core import ConfigError, WorkFolderError
from dreamvid_lib.make_your_3d import (SingleView, hidden_side_fidelity, score_orbits, engine_orbits, orbits_view_set, OrbitPairs,
                                       personalized_refine, CoEvolutionConfig, co_evolve, SingleViewStudyConfig, run_single_view_study)
from dreamvid_lib.vfusion3d import OrbitSpec, render_orbit
from dreamvid_lib.pretrain import load_orbit_prior


@pytest.fixture(scope='module')
def view():
    torch.set_num_threads(1)
    return SingleView.render(tw.heldout_subjects(2, seed=0)[1], azimuth=100.0, elevation=15.0)


def test_hidden_side_scores(view):
    true = render_orbit(view.subject, OrbitSpec(view.azimuth, view.elevation, 1))
    r = hidden_side_fidelity(true, view)
    assert r['hidden_share'] == pytest.approx(5 / 8, abs=0.13) and r['hidden_psnr'] > 20
    copy = hidden_side_fidelity(np.repeat(view.image[None], 8, 0), view)
    assert copy['hidden_share'] == 0 and np.isnan(copy['hidden_psnr'])
    assert score_orbits(true[None], view, geometry=False)['rotates'] == 1.0


def test_engine_views_and_pairs(view):
    o = engine_orbits(load_orbit_prior(), view)
    assert o['videos'].shape == (2, 8, 32, 32, 3)
    np.testing.assert_allclose(o['videos'][:, 0], np.repeat(view.image[None], 2, 0), atol=1e-6)
    np.testing.assert_allclose(o['azimuth'][:, 1], [(view.azimuth + 30) % 360, (view.azimuth - 30) % 360])
    mv = orbits_view_set(o, view)
    assert len(mv) == 15 and mv.class_noun == view.subject.cls
    x, caps, flags = OrbitPairs(o['videos'], o['prompts'], batch_size=3)(0, torch.Generator().manual_seed(0))
    assert x.shape == (3, 2, 32, 32, 3) and flags.all() and len(caps) == 3
    with pytest.raises(ConfigError, match='F >= 2'): OrbitPairs(o['videos'][:, :1], o['prompts'])
    t2v = load_backbone('toy')
    a = personalized_refine(t2v, o['videos'][0, :2], 'a video of a sks mug', sigma=0.4, steps=3, seed=1)
    np.testing.assert_array_equal(a, personalized_refine(t2v, o['videos'][0, :2], 'a video of a sks mug', sigma=0.4, steps=3, seed=1))
    assert a.shape == (2, 32, 32, 3)


def test_co_evolution_resumes_and_refuses(view, tmp_path):
    cfg = CoEvolutionConfig(rounds=2, identity_steps=3, prior_steps=3, refine_steps=2)
    first = co_evolve(view, tmp_path/'co', cfg)
    assert len(first['orbits']) == 3
    assert '3db' in first['t2v'].transformer.peft_config and 'prior' in first['engine'].transformer.peft_config
    assert not np.allclose(first['orbits'][0]['videos'], first['orbits'][-1]['videos'])    # the prior LoRA changed the engine
    again = co_evolve(view, tmp_path/'co', cfg)                          # finished stages are read back: the same orbits
    np.testing.assert_allclose(again['orbits'][-1]['videos'], first['orbits'][-1]['videos'], atol=1e-5)
    with pytest.raises(WorkFolderError, match='config.rounds'): co_evolve(view, tmp_path/'co', CoEvolutionConfig(rounds=1, identity_steps=3, prior_steps=3, refine_steps=2))
    with pytest.raises(ConfigError, match='rounds'): co_evolve(view, tmp_path/'co0', CoEvolutionConfig(rounds=0))


def test_single_view_study_cells(tmp_path):
    cfg = SingleViewStudyConfig(n_subjects=1, db_steps=2, gen_steps=2)
    r = run_single_view_study(tmp_path/'s', cfg, methods=('engine', '3dapter'))
    assert set(r['cells']) == {(0, 'engine'), (0, '3dapter')}
    for row in r['cells'].values(): assert np.isfinite(row['psnr']) and row['cpu_seconds'] >= 0
    assert run_single_view_study(tmp_path/'s', cfg, methods=('engine', '3dapter'))['cells'] == r['cells']
    with pytest.raises(ConfigError, match='unknown method'): run_single_view_study(tmp_path/'s', cfg, methods=('nope',))
    more = run_single_view_study(tmp_path/'s', SingleViewStudyConfig(n_subjects=2, db_steps=2, gen_steps=2), methods=('engine', '3dapter'),
                                 subjects=[0])                          # a larger study extends this one; subject 1 left to another process
    assert more['cells'] == r['cells']
    with pytest.raises(WorkFolderError, match='config.db_steps'): run_single_view_study(tmp_path/'s', SingleViewStudyConfig(n_subjects=1, db_steps=3, gen_steps=2))


def test_cli_refuses_bad_input_before_work(tmp_path, capsys):
    from dreamvid_lib.cli import main
    assert main(['single-view-3d', '--out', str(tmp_path/'s'), '--methods', 'engine,nope']) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(['single-view-3d', '--out', str(tmp_path/'s'), '--only-subjects', 'x']) == 2
    assert '--only-subjects must be comma-separated integers' in capsys.readouterr().err
    assert main(['single-view-3d', '--out', str(tmp_path/'s'), '--rounds', '0']) == 2
    assert not (tmp_path/'s').exists()


def test_report_means_skip_missing_numbers(tmp_path):
    from dreamvid_lib.make_your_3d import single_view_means, write_single_view_report
    row = lambda psnr, hp: {'psnr': psnr, 'ssim': 0.5, 'hidden_share': 0.0 if hp is None else 0.5, 'hidden_psnr': hp, 'hidden_ssim': hp,
                            'rotates': 0.0, 'chamfer': 0.1, 'cpu_seconds': 1.0}
    study = {'config': {}, 'coevolution': {}, 'cells': {(0, 'engine'): row(10.0, 8.0), (1, 'engine'): row(12.0, None),
                                                        (0, '3db_1view'): row(9.0, None)}}
    m = single_view_means(study)
    eng = m['1 view + multi-view model (engine only)']
    assert eng['subjects'] == 2 and eng['psnr'] == 11.0 and eng['hidden_psnr'] == 8.0   # over the subjects that have it
    assert m['3DreamBooth on the 1 view']['hidden_psnr'] is None
    table = write_single_view_report(study, tmp_path).read_text()
    assert '| 3DreamBooth on the 1 view | 1 | 9.000 | 0.500 | 0.000 | - |' in table
