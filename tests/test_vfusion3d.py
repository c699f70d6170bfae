"""VFusion3D's data engine and curation models (nbs/12d_vfusion3d): the synthetic-orbit generator resumes to the same shards
and refuses other settings by name, the measured label rule, the filter pool, and the elevation estimator."""
import numpy as np
import pytest
import torch

from dreamvid_lib import toyworld as tw
from dreamvid_lib.core import WorkFolderError
from dreamvid_lib import vfusion3d as vf
from dreamvid_lib.pretrain import load_orbit_prior

torch.set_num_threads(1)


class TurntableEngine:
    "A cheap deterministic engine for the generator's bookkeeping: frame f is frame 0 rolled by f*seed-dependent pixels plus seeded noise."
    name = 'turntable-test-engine'
    def __init__(self, fail_on_call=None): self.calls, self.fail_on_call = 0, fail_on_call
    def __call__(self, first_frames, prompts, seeds):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call: raise KeyboardInterrupt('killed')
        out = []
        for x, s in zip(first_frames, seeds):
            rng = np.random.default_rng(s)
            shift = int(rng.integers(1, 4))
            out.append(np.stack([np.roll(x, f * shift, axis=1) for f in range(8)]) * 0.9 + 0.1 * rng.random((8, *x.shape)))
        return np.stack(out).astype(np.float32)


@pytest.fixture(scope='module')
def subjects():
    return [tw.subject_from_seed(500 + i) for i in range(5)]


def _shards(folder):
    out = {}
    for p in sorted(folder.glob('shard_*.npz')):
        with np.load(p) as z: out[p.name] = {k: z[k] for k in z.files}
    return out


def test_generator_kill_and_resume_gives_the_same_shards(tmp_path, subjects):
    whole = tmp_path/'whole'
    vf.make_synthetic_orbits(TurntableEngine(), subjects, whole, shard_size=2, seed=3, progress=False)
    killed = tmp_path/'killed'
    with pytest.raises(KeyboardInterrupt):      # killed while making the second shard
        vf.make_synthetic_orbits(TurntableEngine(fail_on_call=2), subjects, killed, shard_size=2, seed=3, progress=False)
    assert [p.name for p in killed.glob('shard_*.npz')] == ['shard_00000.npz']
    assert not [p for p in killed.iterdir() if p.name.startswith('.')], 'a partial shard was left behind'
    eng = TurntableEngine()
    vf.make_synthetic_orbits(eng, subjects, killed, shard_size=2, seed=3, progress=False)
    assert eng.calls == 2                        # shards 1 and 2 only: shard 0 was skipped
    a, b = _shards(whole), _shards(killed)
    assert list(a) == ['shard_00000.npz', 'shard_00001.npz', 'shard_00002.npz'] == list(b)
    for name in a:
        for k in a[name]: np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f'{name}:{k}')
    loaded = vf.load_synthetic_orbits(killed)
    assert loaded['videos'].shape == (5, 8, 32, 32, 3) and len(loaded['subjects']) == 5
    assert loaded['subjects'] == subjects
    plan = vf.orbit_plan(subjects, 3)
    np.testing.assert_allclose(loaded['elevation'], [sp.elevation for sp, _ in plan], rtol=1e-6)
    np.testing.assert_array_equal(loaded['direction'], [sp.direction for sp, _ in plan])
    np.testing.assert_array_equal(loaded['engine_seed'], [sd for _, sd in plan])


def test_generator_refuses_other_settings_by_name(tmp_path, subjects):
    out = tmp_path/'orbits'
    vf.make_synthetic_orbits(TurntableEngine(), subjects[:2], out, shard_size=2, seed=0, progress=False)
    with pytest.raises(WorkFolderError, match='config.seed'):
        vf.make_synthetic_orbits(TurntableEngine(), subjects[:2], out, shard_size=2, seed=1, progress=False)
    with pytest.raises(WorkFolderError, match='config.shard_size'):
        vf.make_synthetic_orbits(TurntableEngine(), subjects[:2], out, shard_size=1, seed=0, progress=False)
    with pytest.raises(WorkFolderError, match='inputs.subjects'):
        vf.make_synthetic_orbits(TurntableEngine(), subjects[1:3], out, shard_size=2, seed=0, progress=False)
    class Other(TurntableEngine): name = 'another-engine'
    with pytest.raises(WorkFolderError, match='config.engine'):
        vf.make_synthetic_orbits(Other(), subjects[:2], out, shard_size=2, seed=0, progress=False)
    vf.make_synthetic_orbits(Other(), subjects[:2], out, shard_size=2, seed=0, progress=False, overwrite=True)


def test_generator_seed_determines_the_plan(subjects):
    assert vf.orbit_plan(subjects, 7) == vf.orbit_plan(subjects, 7)
    assert vf.orbit_plan(subjects, 7) != vf.orbit_plan(subjects, 8)
    assert vf.orbit_plan(subjects[:3], 7) == vf.orbit_plan(subjects, 7)[:3]     # one generator per subject index


def test_engine_output_is_checked():
    x = np.zeros((2, 32, 32, 3), np.float32)
    with pytest.raises(vf.EngineError, match='bad-engine'):
        bad = lambda f, p, s: np.zeros((2, 4, 32, 32, 3))
        bad.name = 'bad-engine'
        vf.run_engine(bad, x, ['a', 'b'], [0, 1])
    assert vf.run_engine(TurntableEngine(), x, ['a', 'b'], [0, 1]).shape == (2, 8, 32, 32, 3)


def test_label_rule_on_clear_cases():
    s = tw.subject_from_seed(11)
    spec = vf.OrbitSpec(40.0, 12.0, 1)
    grid = vf.orbit_grid(s, spec)
    real = vf.render_orbit(s, spec)
    good = vf.orbit_consistency(real, grid, 1)
    assert good['good'] and good['measured_direction'] == 1 and good['max_error'] < vf.GOOD_MAX_ERROR / 2
    reversed_ = vf.render_orbit(s, vf.OrbitSpec(40.0, 12.0, -1))
    bad = vf.orbit_consistency(reversed_, grid, 1)
    assert not bad['good'] and bad['measured_direction'] == -1
    assert vf.orbit_consistency(reversed_, grid, -1)['good']            # the same frames are good for the other prompt
    rng = np.random.default_rng(0)
    assert not vf.orbit_consistency(vf.corrupt_orbit('frozen', real, rng), grid, 1)['good']
    other = vf.render_orbit(tw.subject_from_seed(12), spec)
    spliced = vf.orbit_consistency(vf.corrupt_orbit('spliced', real, rng, other), grid, 1)
    assert not spliced['good'] and spliced['max_error'] > vf.GOOD_MAX_ERROR
    assert not vf.orbit_consistency(np.clip(real + rng.normal(0, 0.3, real.shape), 0, 1), grid, 1)['good']


def test_pool_labels_by_measurement_and_filter_trains():
    subs = [tw.subject_from_seed(20 + i) for i in range(3)]
    pool = vf.build_filter_pool(subs, engine=None, seed=0, progress=False)
    kinds = list(pool['kind'])
    assert kinds.count('real') == 6 and kinds.count('reversed') == 3 and 'engine' not in kinds
    assert pool['good'][pool['kind'] == 'real'].all()
    for k in ('reversed', 'frozen', 'shuffled', 'spliced'): assert not pool['good'][pool['kind'] == k].any(), k
    X = vf.orbit_features(pool['videos'], n_frames=8)
    assert X.shape == (len(kinds), 64)
    f1, f2 = vf.train_quality_filter(X, pool['good'], seed=0), vf.train_quality_filter(X, pool['good'], seed=0)
    np.testing.assert_array_equal(f1.predict(X), f2.predict(X))
    pr = vf.precision_recall(pool['good'], f1.predict(X))
    assert pr['positive_share'] == pytest.approx(pool['good'].mean())
    with pytest.raises(Exception, match='good and bad'):
        vf.train_quality_filter(X, np.ones(len(X), bool))


def test_precision_recall_and_single_feature_baseline():
    pr = vf.precision_recall([1, 1, 0, 0], [1, 0, 1, 0])
    assert (pr['precision'], pr['recall'], pr['positive_share'], pr['accuracy']) == (0.5, 0.5, 0.5, 0.5)
    assert np.isnan(vf.precision_recall([1, 0], [0, 0])['precision'])
    X = np.array([[0., 5.], [1., 4.], [2., 1.], [3., 0.]]); y = np.array([0, 0, 1, 1], bool)
    b = vf.SingleFeatureThreshold().fit(X, y)
    assert b.balanced_accuracy_ == 1.0
    np.testing.assert_array_equal(b.predict(X), y)


def test_elevation_mlp_beats_the_mean_on_a_tiny_set():
    "6 subjects, new orbits of the same subjects (held-out subjects need more training subjects: the notebook measures those)."
    train = [tw.subject_from_seed(40 + i) for i in range(6)]
    a = vf.elevation_set(train, 5, seed=0, progress=False)
    b = vf.elevation_set(train, 2, seed=1, progress=False)
    assert a['frames'].shape == (30, 4, 32, 32, 3)
    np.testing.assert_array_equal(a['elevation'][:5], vf.elevation_set(train[:1], 5, seed=0, progress=False)['elevation'])   # seed-determined
    Xa, Xb = vf.orbit_features(a['frames'], n_frames=4), vf.orbit_features(b['frames'], n_frames=4)
    m = vf.train_elevation_mlp(Xa, a['elevation'], seed=0)
    r = vf.elevation_errors(m, Xb, b['elevation'], float(a['elevation'].mean()))
    assert r['mae'] < 0.6 * r['mean_baseline_mae'], r
    np.testing.assert_array_equal(m.predict(Xb), vf.train_elevation_mlp(Xa, a['elevation'], seed=0).predict(Xb))


def test_mean_features_are_blind_to_order():
    s = tw.subject_from_seed(5)
    real = vf.render_orbit(s, vf.OrbitSpec(0.0, 10.0, 1))
    shuffled = vf.corrupt_orbit('shuffled', real, np.random.default_rng(0))
    m = vf.orbit_features(np.stack([real, shuffled]))
    c = vf.orbit_features(np.stack([real, shuffled]), pool='concat')
    np.testing.assert_allclose(m[0], m[1], atol=1e-5)
    assert np.abs(c[0] - c[1]).max() > 1e-2
    with pytest.raises(Exception, match='pool'): vf.orbit_features(np.stack([real]), pool='max')


def _tiny_backbone():
    from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
    from dreamvid_lib.prompts import caption_vocabulary
    return ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0).eval()


def test_orbit_prior_loader_names_a_missing_file_and_where_to_get_it(tmp_path):
    from dreamvid_lib.core import AssetError
    missing = tmp_path/'row43_window2_h200.pt'
    with pytest.raises(AssetError, match='row43_window2_h200.pt') as e: load_orbit_prior(missing)
    assert 'research/orbit_prior/weights' in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_orbit_prior_loader_refuses_a_state_dict_that_does_not_fit(tmp_path):
    from dreamvid_lib.core import AssetError
    bogus = tmp_path/'bogus.pt'
    torch.save({'not_a_layer.weight': torch.zeros(3)}, bogus)
    with pytest.raises(AssetError, match='bogus.pt.*not an orbit-prior') as e: load_orbit_prior(bogus)
    assert 'research/orbit_prior/weights' in str(e.value) and '1 unexpected keys' in str(e.value)
    small = tmp_path/'one_layer.pt'                # right key names for a 1-layer model, too few layers for the 4-layer config
    torch.save(_tiny_backbone().transformer.state_dict(), small)
    with pytest.raises(AssetError, match='one_layer.pt.*missing keys'): load_orbit_prior(small)


def test_orbit_prior_loader_round_trips_a_fitting_state_dict(tmp_path):
    from dreamvid_lib.backbones import ToyBackbone, load_backbone
    from dreamvid_lib.prompts import caption_vocabulary
    src = ToyBackbone.create(caption_vocabulary(), load_backbone('toy').config, seed=3)
    torch.save(src.transformer.state_dict(), tmp_path/'w.pt')
    bb = load_orbit_prior(tmp_path/'w.pt')
    for k, v in src.transformer.state_dict().items(): assert torch.equal(bb.transformer.state_dict()[k], v), k
    assert not bb.transformer.training


def test_rollout_engine_through_run_engine():
    eng = vf.RolloutEngine(_tiny_backbone(), steps=2)
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    subs = [tw.subject_from_seed(1), tw.subject_from_seed(2)]
    from dreamvid_lib.prompts import video_caption
    out = vf.run_engine(eng, x, [video_caption(s, d) for s, d in zip(subs, (1, -1))], [0, 1])
    assert out.shape == (2, 8, 32, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], x, atol=1e-6)                 # frame 0 is the given image
    assert np.abs(out[:, 1:] - x[:, None]).mean() > 1e-3                # and the engine made the other frames
    again = vf.run_engine(eng, x, [video_caption(s, d) for s, d in zip(subs, (1, -1))], [0, 1])
    np.testing.assert_array_equal(out, again)                           # seed-determined


def test_rollout_engine_name_reflects_its_settings():
    bb = _tiny_backbone()
    a, b = vf.RolloutEngine(bb), vf.RolloutEngine(bb, steps=8, window=3, cond_sigma=0.3)
    assert 'steps=4' in a.name and 'window=2' in a.name and 'cond_sigma=0.0' in a.name
    assert 'steps=8' in b.name and 'window=3' in b.name and 'cond_sigma=0.3' in b.name
    assert vf.engine_name(a) == a.name != vf.engine_name(b) != vf.engine_name(vf.ToyEngine())
