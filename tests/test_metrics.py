"""Evaluation protocol (nbs/09a_features, 09b_motion, 09c_geometry, 09d_judge, through the `metrics` re-exports of nbs/10_metrics): feature metrics through the public loaders on tiny random CLIP / DINOv2
saved to disk, the shipped toy encoder, motion, 3D geometric fidelity and the LLM judge on recorded answers."""
import time, warnings
import numpy as np
import pytest
import torch

from dreamvid_lib.core import AssetError, DreamvidError, ConfigError
from dreamvid_lib import toyworld as tw
from dreamvid_lib import metrics as M

RES = 32


@pytest.fixture(scope='module')
def subjects():
    return tw.heldout_subjects(4, seed=0)


@pytest.fixture(scope='module')
def cond(subjects):
    return M._cond_set(subjects[0], RES)


@pytest.fixture(scope='module')
def orbit(subjects):
    return tw.render_views(subjects[0], np.arange(8) * 45 + 20, 25, res=RES, with_depth=False).rgb


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return M.make_tiny_hf_encoders(tmp_path_factory.mktemp('hf'))


# ---------------------------------------------------------------- feature metrics

def test_tiny_hf_encoders_load_through_public_loaders(tiny, orbit, cond):
    enc = M.load_encoders(clip=str(tiny['clip']), dino=tiny['dino'], toy=False)
    assert set(enc) == {'clip', 'dino'}
    e = enc['clip'].encode_images(orbit)
    assert e.shape == (8, 16) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert enc['clip'].encode_texts('a video of a sks mug').shape == (1, 16)
    assert enc['dino'].encode_images(orbit[:3]).shape == (3, 32)
    out = M.video_metrics(orbit, *cond, prompt='a video of a mug', encoders=enc)
    assert set(out) == {'clip_i', 'clip_t', 'dino_i', 't_cons', 'dynamic_degree', 'motion_smoothness'}
    assert all(np.isfinite(v) for v in out.values())
    assert -1 <= out['clip_i'] <= 1 and -1 <= out['t_cons'] <= 1


def test_missing_models_name_the_download(monkeypatch):
    monkeypatch.delenv('DREAMVID_CLIP', raising=False); monkeypatch.delenv('DREAMVID_DINO', raising=False)
    with pytest.raises(AssetError, match='huggingface-cli download openai/clip-vit-base-patch32 --local-dir'):
        M.load_clip()
    with pytest.raises(AssetError, match='facebook/dinov2-base'):
        M.load_encoders(dino=True)
    with pytest.raises(AssetError, match='DREAMVID_CLIP'):
        M.load_clip('/nowhere/clip-folder')


def test_env_var_names_the_folder(tiny, monkeypatch):
    monkeypatch.setenv('DREAMVID_DINO', str(tiny['dino']))
    assert M.load_dino().encode_images(np.ones((1, RES, RES, 3))).shape == (1, 32)


def test_definitions():
    f = np.array([[1., 0, 0], [0, 1, 0], [0, 0, 1]])
    assert M.subject_similarity(f, f[:1]) == pytest.approx(1 / 3)
    assert M.subject_similarity(f, f) == pytest.approx(1.0)
    assert M.temporal_consistency(f) == pytest.approx(0.0)
    assert M.text_similarity(f, [0, 1, 0]) == pytest.approx(1 / 3)


def test_toy_encoder_separates_subjects(subjects):
    enc = M.load_toy_features()
    conds = [M._cond_set(s, RES) for s in subjects]
    orbits = [tw.render_views(s, np.arange(8) * 45 + 20, 25, res=RES, with_depth=False).rgb for s in subjects]
    sim = np.array([[M.feature_metrics(o, *c, encoders=enc)['toy_i'] for c in conds] for o in orbits])
    assert (sim.argmax(1) == np.arange(len(subjects))).all(), sim


def test_bad_inputs(orbit, cond):
    v, m = cond
    with pytest.raises(M.MetricError, match='K = 0'): M.video_metrics(orbit, v[:0], m[:0])
    with pytest.raises(M.MetricError, match='empty mask'): M.video_metrics(orbit, v, np.zeros_like(m))
    with pytest.raises(M.MetricError, match='does not match'): M.video_metrics(orbit, v, m[:2])
    with pytest.raises(M.MetricError, match=r'\[F, H, W, 3\]'): M.video_metrics(orbit[..., :2], v, m)
    with pytest.raises(M.MetricError, match='NaN'): M.video_metrics(orbit * np.nan, v, m)
    with pytest.raises(M.MetricError, match='≥ 3 frames'): M.video_metrics(orbit[:2], v, m)
    with pytest.raises(DreamvidError, match='no word the toy encoder knows'): M.video_metrics(orbit, v, m, prompt='something else')
    with pytest.raises(M.MetricError, match='no text tower'):
        M.HFDinoEncoder.__new__(M.HFDinoEncoder).encode_texts(['a mug'])


def test_video_metrics_on_torch_input(orbit, cond):
    "A tensor video scores as its numpy array does (its speed is measured in benchmarks/, not asserted here)."
    first = M.video_metrics(orbit, *cond, prompt='a video of a sks lamp')
    out = M.video_metrics(torch.from_numpy(orbit), *cond, prompt='a video of a sks lamp')
    assert set(out) == {'toy_i', 'toy_t', 't_cons', 'dynamic_degree', 'motion_smoothness'}
    assert 0 <= out['motion_smoothness'] <= 1 and out['dynamic_degree'] in (0.0, 1.0)
    assert out == pytest.approx(first)


# ---------------------------------------------------------------- motion

def test_motion(orbit):
    still = np.repeat(orbit[:1], 8, 0)
    assert M.dynamic_degree(still) == 0.0 and M.motion_smoothness(still) == pytest.approx(1.0)
    yy, xx = np.mgrid[:RES, :RES]
    moving = np.stack([np.repeat((0.5 + 0.4 * np.sin((xx - 2 * i) / 2.5) * np.cos(yy / 3.0))[..., None], 3, -1) for i in range(8)])
    dd, info = M.dynamic_degree(moving, return_scores=True)
    assert dd == 1.0 and info['threshold'] == pytest.approx(0.75) and info['count'] == 2
    assert M.motion_smoothness(moving) > M.motion_smoothness(moving[[0, 4, 1, 6, 2, 7, 3, 5]])
    with pytest.raises(M.MetricError, match='≥ 2 frames'): M.flow_scores(orbit[:1])


# ---------------------------------------------------------------- geometry

def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3)); q, _ = np.linalg.qr(rng.normal(size=(3, 3))); R = q * np.sign(np.linalg.det(q))
    s, R2, t = M.umeyama(x, 0.6 * x @ R.T - 2)
    assert s == pytest.approx(0.6) and np.allclose(R2, R) and np.allclose(t, -2)
    with pytest.raises(M.MetricError): M.umeyama(x[:2], x[:2])


def test_registration_sanity(subjects):
    gt = M._geometry_truth(subjects[0], RES)[0]
    other = next(s for s in subjects if s.cls != subjects[0].cls)
    gt_b = M._geometry_truth(other, RES)[0]
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3))); S = M.similarity_matrix(1.6, q * np.sign(np.linalg.det(q)), [0.3, -1, 2])
    src = M.apply_transform(S, gt)
    same = M.chamfer_distances(M.apply_transform(M.register_similarity(src, gt), src), gt)
    src_b = M.apply_transform(S, gt_b)
    diff = M.chamfer_distances(M.apply_transform(M.register_similarity(src_b, gt), src_b), gt)
    assert same['chamfer'] < 1e-3 and diff['chamfer'] > 0.03, (same, diff)


def test_geometric_fidelity(subjects, orbit):
    own = M.geometric_fidelity(orbit, subjects[0])
    assert set(own) == {'accuracy', 'completeness', 'chamfer'}
    assert own['chamfer'] == pytest.approx((own['accuracy'] + own['completeness']) / 2)
    other = M.geometric_fidelity(orbit, next(s for s in subjects if s.cls != subjects[0].cls))
    assert own['chamfer'] < other['chamfer']
    from dreamvid_lib.geometry import _geometry_truth
    hits = _geometry_truth.cache_info().hits
    again = M.geometric_fidelity(torch.from_numpy(orbit), subjects[0])        # a tensor input, the ground truth from the cache
    assert _geometry_truth.cache_info().hits == hits + 1 and again == pytest.approx(own)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('always')
        assert np.isnan(M.geometric_fidelity(np.ones_like(orbit), subjects[0])['chamfer'])
    with pytest.raises(M.MetricError, match='no foreground'): M.geometric_fidelity(np.ones_like(orbit), subjects[0], empty='raise')
    with pytest.raises(ConfigError): M.geometric_fidelity(orbit, subjects[0], empty='zero')
    with pytest.raises(M.MetricError, match='Subject'): M.geometric_fidelity(orbit, 'mug')


# ---------------------------------------------------------------- LLM judge

RECORDED = [
    '{"shape": 4, "color": 5, "detail": 3, "overall": 4, "reason": "The mug keeps its colour; the star decal is blurred."}',
    '```json\n{\n  "Shape Preservation": 2,\n  "Color Preservation": 3,\n  "Detail Preservation": 1,\n  "Overall Identity": 2,\n'
    '  "reason": "From the back the subject turns into a generic box."\n}\n```',
    'Sure. {"shape": "5", "colour": 4, "details": 4, "overall_identity": 5, "reason": "Nearly perfect."}',
]


class _Replay:
    def __init__(self, answers): self.answers, self.calls = answers, []
    @property
    def chat(self): return self
    @property
    def completions(self): return self
    def create(self, **kw):
        self.calls.append(kw)
        msg = type('M', (), {'content': self.answers[(len(self.calls) - 1) % len(self.answers)]})
        return type('R', (), {'choices': [type('C', (), {'message': msg})]})


def test_judge_parser_on_recorded_answers():
    assert M.parse_judge_response(RECORDED[0]) == {'shape': 4, 'color': 5, 'detail': 3, 'overall': 4}
    assert M.parse_judge_response(RECORDED[1]) == {'shape': 2, 'color': 3, 'detail': 1, 'overall': 2}
    assert M.parse_judge_response(RECORDED[2]) == {'shape': 5, 'color': 4, 'detail': 4, 'overall': 5}
    for bad, why in [('', 'empty'), ('Overall I would give it a 4.', 'no JSON'), ('{"shape": 4, "color": 4, "detail": 4', 'no JSON'),
                     ('{"shape": 4, "color": 4, "detail": 4, "overall": }', 'not valid JSON'),
                     ('{"shape": 4, "color": 4, "overall": 4}', 'lacks'), ('{"shape": 0, "color": 4, "detail": 4, "overall": 4}', 'outside'),
                     ('{"shape": 3.5, "color": 4, "detail": 4, "overall": 4}', 'integer'), ('[4, 4, 4, 4]', 'JSON object')]:
        with pytest.raises(M.JudgeError, match=why): M.parse_judge_response(bad)


def test_judge_messages_and_client(orbit, cond):
    msgs = M.judge_messages(cond[0], np.repeat(orbit, 2, 0))
    content = msgs[1]['content']
    imgs = [c['image_url']['url'] for c in content if c['type'] == 'image_url']
    assert len(imgs) == 4 + 10 and all(u.startswith('data:image/png;base64,') for u in imgs)
    texts = [c['text'] for c in content if c['type'] == 'text']
    assert texts[0].startswith('Reference images') and any(t.startswith('Generated video frames') for t in texts)
    assert all(k in texts[-1] for k in ('Shape Preservation', 'Color Preservation', 'Detail Preservation', 'Overall Identity'))
    client = _Replay(RECORDED)
    r = M.llm_judge(cond[0], orbit, client=client)
    assert len(client.calls) == 5 and client.calls[0]['temperature'] == 0.1 and client.calls[0]['model'] == 'gpt-4o'
    shapes = [4, 2, 5, 4, 2]
    assert r['judge_trials'] == 5 and r['judge_shape'] == pytest.approx(np.mean(shapes))
    assert r['judge_shape_std'] == pytest.approx(np.std(shapes, ddof=1))
    with pytest.raises(M.JudgeError): M.llm_judge(cond[0], orbit, client=_Replay(['no idea']), trials=1)


def test_openai_is_optional(monkeypatch):
    import builtins
    real = builtins.__import__
    def fake(name, *a, **k):
        if name == 'openai': raise ImportError('No module named openai')
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', fake)
    with pytest.raises(M.JudgeError, match=r"dreamvid\[judge\]"): M.openai_client()
