"""VFusion3D's comparison (nbs/12e_synthetic3d): orbits become LRM training data with the asked camera path and a
foreground mask; per-orbit azimuths reach the LRM's batches; the study runs every arm, reads finished arms back, resumes a
lost result to the same numbers and refuses other settings."""
import json
import numpy as np
import pytest
import torch

from dreamvid_lib import toyworld as tw
from dreamvid_lib.core import ConfigError, WorkFolderError
from dreamvid_lib.lrm import LRMTrainConfig, ring_batch
from dreamvid_lib.vfusion3d import orbit_plan, render_orbit, orbit_azimuths
from dreamvid_lib.synthetic3d import Synthetic3DConfig, arm_slug, orbit_rings, run_synthetic_3d, true_orbits


def _orbits(n=3, seed=0):
    subs = [tw.subject_from_seed(9_000 + i) for i in range(n)]
    plan = orbit_plan(subs, seed)
    return {'videos': np.stack([render_orbit(s, sp, 8) for s, (sp, _) in zip(subs, plan)]),
            'azimuth': np.array([sp.azimuth for sp, _ in plan], np.float32),
            'elevation': np.array([sp.elevation for sp, _ in plan], np.float32),
            'direction': np.array([sp.direction for sp, _ in plan], np.int8), 'subjects': subs}, plan


def test_orbit_rings_camera_path_mask_and_keep():
    orbits, plan = _orbits()
    r = orbit_rings(orbits)
    assert r['rgba'].shape == (3, 8, 32, 32, 4) and r['rgba'].dtype == np.uint8
    for i, (sp, _) in enumerate(plan):
        np.testing.assert_allclose(r['azimuth'][i], orbit_azimuths(sp) % 360, atol=1e-3)
        alpha = tw.render_views(orbits['subjects'][i], orbit_azimuths(sp), sp.elevation, res=32, with_depth=False).alpha
        mask = r['rgba'][i, ..., 3] > 127
        assert (mask & (alpha > 0.1)).sum() / (mask | (alpha > 0.1)).sum() > 0.95     # the pixels the subject covers at least 10% of
        assert np.abs(mask - alpha).mean() < 0.05
    k = orbit_rings(orbits, elevation=[1.0, 2.0, 3.0], keep=[False, True, True])
    assert k['rgba'].shape[0] == 2 and k['elevation'].tolist() == [2.0, 3.0] and k['subjects'] == orbits['subjects'][1:]
    with pytest.raises(ConfigError, match='one value per orbit'): orbit_rings(orbits, elevation=[1.0])
    with pytest.raises(ConfigError, match=r'\[N, F, H, W, 3\]'): orbit_rings({**orbits, 'videos': orbits['videos'][0]})
    np.testing.assert_allclose(true_orbits(orbits)['videos'], orbits['videos'], atol=1e-3)   # poses kept as float32


def test_ring_batch_per_subject_azimuths():
    "A [S,V] azimuth table broadcast from a ring's [V] gives the very same batch; per-subject offsets change only the cameras."
    orbits, _ = _orbits()
    r = orbit_rings(orbits)
    cfg = LRMTrainConfig(batch=4, views=2)
    shared = {**r, 'azimuth': r['azimuth'][0]}
    per = {**r, 'azimuth': np.broadcast_to(r['azimuth'][0], r['azimuth'].shape).copy()}
    a = ring_batch(shared, cfg, torch.Generator().manual_seed(0), 16)
    b = ring_batch(per, cfg, torch.Generator().manual_seed(0), 16)
    for key in ('image', 'camera', 'c2w', 'rgb', 'alpha'): torch.testing.assert_close(a[key], b[key])
    shifted = {**per, 'azimuth': per['azimuth'] + np.array([[10.0], [20.0], [30.0]], np.float32)}
    c = ring_batch(shifted, cfg, torch.Generator().manual_seed(0), 16)      # the same offset for all views of a subject: relative cameras unchanged
    torch.testing.assert_close(a['c2w'], c['c2w'], atol=1e-4, rtol=0)


def test_config_checks_and_arms():
    cfg = Synthetic3DConfig(n_real=4, synthetic_factor=5, scales=(1, 2, 5))
    names = [a['name'] for a in cfg.arms()]
    assert len(names) == 5 + 4 and len(set(map(arm_slug, names))) == len(names)
    assert [a['init'] for a in cfg.arms()][2] == names[1]                  # (c) starts from (b)
    assert cfg.arms()[0]['steps'] == cfg.lrm_steps + cfg.finetune_steps
    with pytest.raises(ConfigError, match='scales'): Synthetic3DConfig(scales=(0,)).check()
    with pytest.raises(ConfigError, match='n_real'): Synthetic3DConfig(n_real=0).check()
    seeds = {k: {s.seed for s in cfg.subjects(k, 30)} for k in ('real', 'synthetic', 'filter')}
    assert not (seeds['real'] & seeds['synthetic']) and not (seeds['synthetic'] & seeds['filter'])


def _frozen_engine(first_frames, prompts, seeds):
    "A cheap engine that never turns: frame 0 repeated."
    return np.repeat(np.asarray(first_frames, np.float32)[:, None], 8, axis=1)


def test_study_runs_reads_back_resumes_and_refuses(tmp_path):
    torch.set_num_threads(1)
    cfg = Synthetic3DConfig(n_real=2, synthetic_factor=2, scales=(1,), n_heldout=2, filter_subjects=3, lrm_steps=4, finetune_steps=2)
    out = tmp_path/'study'
    first = run_synthetic_3d(_frozen_engine, out, cfg, progress=False)
    assert set(first['arms']) == {a['name'] for a in cfg.arms()}
    for name, r in first['arms'].items():
        assert r['trained'] or r['why'], name
        if r['trained']: assert np.isfinite(r['psnr']) and r['train_subjects'] > 0, name
    true_arm = first['arms'][f'true orbits {2 * 2}']
    assert true_arm['trained'] and true_arm['views_per_subject'] == 8
    assert first['curation']['orbits'] == 4 and first['curation']['good_by_rule'] == 0     # a frozen orbit never passes the rule
    again = run_synthetic_3d(_frozen_engine, out, cfg, progress=False)
    assert again['arms'] == first['arms']
    # a lost result is recomputed from the arm's finished training work: the same numbers
    lost = out/'arms'/arm_slug(cfg.arms()[0]['name'])/'result.json'
    before = json.loads(lost.read_text()); lost.unlink()
    after = run_synthetic_3d(_frozen_engine, out, cfg, progress=False)['arms'][cfg.arms()[0]['name']]
    for key in ('psnr', 'ssim', 'psnr_full', 'train_subjects', 'steps'): assert after[key] == pytest.approx(before[key]), key
    with pytest.raises(WorkFolderError, match='config.lrm_steps'):
        run_synthetic_3d(_frozen_engine, out, Synthetic3DConfig(**{**cfg.__dict__, 'lrm_steps': 5}), progress=False)
    with pytest.raises(WorkFolderError, match='inputs.engine'):
        run_synthetic_3d(lambda x, p, s: _frozen_engine(x, p, s), out, cfg, progress=False)
    with pytest.raises(ConfigError, match='no arm named'):
        run_synthetic_3d(_frozen_engine, out, cfg, only=['(z) nothing'], progress=False)


def test_cli_refuses_bad_settings_before_work(tmp_path, capsys):
    from dreamvid_lib.cli import main
    assert main(['synthetic-3d', '--out', str(tmp_path/'s'), '--scales', 'x']) == 2
    assert '--scales must be comma-separated integers' in capsys.readouterr().err
    assert main(['synthetic-3d', '--out', str(tmp_path/'s'), '--n-real', '0']) == 2
    assert 'Synthetic3DConfig.n_real' in capsys.readouterr().err
    assert not (tmp_path/'s').exists()                                  # nothing left behind
