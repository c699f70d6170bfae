"""The orbit-prior research script (research/orbit_prior/window_ladder.py) runs end to end on toy sizes: training with
image batches mixed in, the diagnostics (continuation and text-to-image), the atomic checkpoint, --eval-only and
--time-limit. The GPU settings (--device cuda --bf16) are the same code on another device."""
import json, sys, pathlib
import torch
from PIL import Image
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'research'/'orbit_prior'))
import window_ladder as wl


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('DREAMVID_CACHE', str(tmp_path/'cache'))
    return tmp_path


def _lines(out): return [json.loads(l) for l in out.splitlines() if l.startswith('{')]


def test_window_ladder_trains_evaluates_and_saves(cache, capsys):
    ck = cache/'w.pt'
    common = ['--frames', '2', '--subjects', '16', '--batch', '2', '--eval-subjects', '1', '--eval-heldout', '2',
              '--workers', '2', '--ema', '0.9', '--cond-sigma', '0.3']
    wl.main(common + ['--steps', '4', '--eval-every', '2', '--image-every', '2', '--batch-images', '3', '--save', str(ck)])
    rows = _lines(capsys.readouterr().out)
    assert [r['step'] for r in rows] == [2, 4]
    for r in rows:
        assert 0 <= r['heldout_t2i_binding'] <= 1 and r['heldout_t2i_mse'] > 0 and r['heldout_mse_true'] > 0
    saved = torch.load(ck)
    assert saved and all(v.device.type == 'cpu' for v in saved.values())
    wl.main(common + ['--init', str(ck), '--eval-only'])                  # the saved weights, evaluated without training
    again = _lines(capsys.readouterr().out)
    assert len(again) == 1 and again[0]['step'] == 0 and again[0]['loss'] is None
    assert abs(again[0]['heldout_mse_true'] - rows[-1]['heldout_mse_true']) < 1e-6   # what was saved is what was scored


def test_window_ladder_time_limit_stops_early(cache, capsys):
    wl.main(['--frames', '2', '--subjects', '16', '--batch', '2', '--eval-subjects', '1', '--steps', '1000',
             '--eval-every', '1000', '--time-limit', '0.001', '--workers', '2'])
    out = capsys.readouterr().out
    assert 'stopped by --time-limit' in out and _lines(out)[0]['step'] == 1


def test_rollout_first_frame_degradations(tmp_path):
    """ar_rollout.py's FIRST=blur / FIRST=noise frames and the pose contrast that separates them (row 52 of 05_toy_pretrain):
    a rendered grid view has contrast 0, blotches at the asked error keep the pose clear, a blend of views blurs it."""
    import subprocess, os
    code = '''
import os, json, numpy as np
import ar_rollout as ar
from dreamvid_lib import toyworld as tw
from dreamvid_lib.evaluate import tracking_views
s = tw.heldout_subjects(1)[0]
grid = tracking_views(s, 32, with_depth=False)
f = tw.render_views(s, [20.0], 15.0, res=32, with_depth=False).rgb[0]
out = {'render': ar.pose_contrast(f, grid)}
for kind, extra in (('noise', {'NOISE': '0.01'}), ('blur', {'BLUR': '90'})):
    os.environ.update(FIRST=kind, **extra)
    g = ar.degrade_first(s, 20.0, 15.0, f)
    out[kind] = ar.pose_contrast(g, grid); out[kind + '_mse'] = float(((g - f) ** 2).mean())
os.environ['FIRST'] = 'text'
out['same'] = bool((ar.degrade_first(s, 20.0, 15.0, f) == f).all())
print(json.dumps(out))
'''
    env = {**os.environ, 'PYTHONPATH': str(ROOT/'research'/'orbit_prior') + os.pathsep + os.environ.get('PYTHONPATH', ''),
           'DREAMVID_CACHE': str(tmp_path)}
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['render'] < 1e-6 and out['same']
    assert 0.005 < out['noise_mse'] <= 0.0101                     # clipping to [0, 1] only lowers it
    assert out['noise'] < out['blur'] and out['blur'] > 0.3


def test_view_t2i_trains_scores_and_saves(cache, capsys):
    "view_t2i.py (row 53): one-view text-to-image fine-tuning prints its scores, saves atomically, and --steps 0 rescores the save."
    import view_t2i
    ck = cache/'v.pt'
    common = ['--subjects', '16', '--eval-subjects', '1', '--threads', str(torch.get_num_threads())]
    view_t2i.main(common + ['--view', '0', '--steps', '2', '--eval-every', '2', '--save', str(ck)])
    rows = _lines(capsys.readouterr().out)
    assert [r['step'] for r in rows] == [0, 2] and rows[0]['loss'] is None and rows[-1]['loss'] > 0
    assert all(0 < r['pose_contrast'] <= 1.5 and r['view_error'] > 0 and 0 <= r['near_view'] <= 1 for r in rows)
    view_t2i.main(common + ['--init', str(ck), '--steps', '0'])
    again = _lines(capsys.readouterr().out)
    assert len(again) == 1 and abs(again[0]['pose_contrast'] - rows[-1]['pose_contrast']) < 1e-6
    with pytest.raises(SystemExit, match='--view 24'): view_t2i.main(common + ['--view', '24', '--steps', '0'])


def test_unet_t2i_trains_scores_saves_and_draws(cache, capsys):
    "unet_t2i.py (row 54): the U-Net text-to-image model trains, scores, saves its EMA atomically, rescores and draws the same frame."
    import unet_t2i
    ck = cache/'u.pt'
    common = ['--subjects', '16', '--eval-subjects', '1', '--width', '8', '--sample-steps', '2', '--threads', str(torch.get_num_threads())]
    unet_t2i.main(common + ['--steps', '3', '--eval-every', '3', '--batch', '4', '--save', str(ck)])
    rows = _lines(capsys.readouterr().out)
    assert [r['step'] for r in rows] == [0, 3] and rows[0]['loss'] is None and rows[-1]['loss'] > 0
    assert all(0 < r['pose_contrast'] <= 1.5 and r['view_error'] > 0 and 0 <= r['near_view'] <= 1 for r in rows)
    saved = torch.load(ck)
    assert saved['step'] == 3 and tuple(saved['config']['block_out_channels']) == (8, 16, 32) and not (cache/'u.pt.tmp').exists()
    unet_t2i.main(common + ['--init', str(ck), '--steps', '0'])
    again = _lines(capsys.readouterr().out)
    assert len(again) == 1 and abs(again[0]['pose_contrast'] - rows[-1]['pose_contrast']) < 1e-6
    m = unet_t2i.load_unet_t2i(ck, steps=2)
    a, b = m.draw('a video of a matte red mug with a dot', 5), m.draw('a video of a matte red mug with a dot', 5)
    assert a.shape == (32, 32, 3) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    with pytest.raises(SystemExit, match='--view 24'): unet_t2i.main(common + ['--view', '24', '--steps', '0'])


def test_unet_nvs_trains_resumes_scores_and_draws(cache, capsys):
    "unet_nvs.py (row 55): trains through train_loop in chunks that resume to the same weights, scores, saves, rescores, draws."
    import unet_nvs
    common = ['--subjects', '16', '--eval-subjects', '1', '--width', '8', '--sample-steps', '2', '--batch', '4',
              '--threads', str(torch.get_num_threads())]
    unet_nvs.main(common + ['--steps', '4', '--eval-every', '2', '--work', str(cache/'a'), '--save', str(cache/'a.pt')])
    rows = _lines(capsys.readouterr().out)
    assert [r['step'] for r in rows] == [2, 4] and all(r['loss'] > 0 and r['n'] == 4 for r in rows)
    assert all(0 <= r['frames_on_track'] <= 1 and r['first_pose_contrast'] == 0 for r in rows)   # rendered frames 0
    unet_nvs.main(common + ['--steps', '4', '--eval-every', '4', '--work', str(cache/'b'), '--save', str(cache/'b.pt'), '--grid', str(cache/'b.png')])
    one = _lines(capsys.readouterr().out)
    a, b = torch.load(cache/'a.pt'), torch.load(cache/'b.pt')
    assert a['step'] == b['step'] == 4 and not (cache/'a.pt.tmp').exists()
    assert Image.open(cache/'b.png').size == (8 * 32 * 3, 2 * 4 * 32 * 3)          # truth and video rows of 4 videos, 3x
    assert all(torch.equal(a['state'][k], b['state'][k]) for k in a['state'])       # two resumed chunks = one run
    assert one[-1]['frames_on_track'] == rows[-1]['frames_on_track']
    unet_nvs.main(common + ['--init', str(cache/'a.pt'), '--steps', '0'])
    again = _lines(capsys.readouterr().out)
    assert len(again) == 1 and again[0]['view_error'] == rows[-1]['view_error']
    m = unet_nvs.load_nvs(cache/'a.pt')
    first = torch.rand(32, 32, 3)
    v1, v2 = (m.video(first, 'a video of a matte red mug with a dot', -1, seed=3, steps=2) for _ in range(2))
    assert v1.shape == (8, 32, 32, 3) and torch.equal(v1, v2) and torch.equal(v1[0], first) and 0 <= v1.min() and v1.max() <= 1
    cap = 'a video of a matte red mug with a dot'                                 # camera guidance (row 57): w = 0 is the plain draw
    assert torch.equal(m.video(first, cap, -1, seed=3, steps=2, cam_guidance=0.0, negative='source'), v1)
    gm, gs = (m.video(first, cap, -1, seed=3, steps=2, cam_guidance=2.0, negative=n) for n in ('mirror', 'source'))
    assert not torch.allclose(gm, v1) and not torch.allclose(gm, gs) and torch.equal(gm[0], first)
    d, vids = unet_nvs.rotation_scores(m, unet_nvs.tw.heldout_subjects(2), steps=1)        # two subjects: the demo's text binding too
    assert d['n'] == len(vids) == 8 and 0 <= d['text_binding_rate'] <= 1
    with pytest.raises(ValueError, match='negative'): m.video(first, cap, 1, seed=3, steps=2, cam_guidance=1.0, negative='left')
    assert torch.allclose(unet_nvs.camera([0, 90])[:, :2], torch.tensor([[0., 1.], [1., 0.]]), atol=1e-6)
    with pytest.raises(SystemExit, match='--work'): unet_nvs.main(common + ['--steps', '2'])
    with pytest.raises(SystemExit, match='--init'): unet_nvs.main(common + ['--steps', '0'])


def test_unet_nvs_reference_attention(cache, capsys):
    "unet_nvs.py --reference (row 56): the denoising pass reads a reference pass on the source; saved, reloaded, added to a trained U-Net."
    import unet_nvs
    common = ['--subjects', '16', '--eval-subjects', '1', '--width', '8', '--sample-steps', '2', '--batch', '4',
              '--threads', str(torch.get_num_threads())]
    unet_nvs.main(common + ['--steps', '2', '--eval-every', '2', '--reference', '--work', str(cache/'r'), '--save', str(cache/'r.pt')])
    assert _lines(capsys.readouterr().out)[-1]['step'] == 2
    m = unet_nvs.load_nvs(cache/'r.pt')
    assert m.reference and len(m.refs) == 7                  # one per self-attention (2 down, 1 middle, 4 up)
    g = torch.Generator().manual_seed(0)
    x, src = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    cam, (emb, mask) = unet_nvs.camera([30, -60]), m.text(['a red mug'] * 2)
    with torch.no_grad():
        v = m.velocity(x, torch.full((2,), .5), src, cam, emb, mask)
        assert all(r.mode is None and r.bank is None for r in m.refs)              # nothing kept between calls
        plain = unet_nvs.NVS(m.unet, m.bb)._unet(x, torch.full((2,), .5), src, cam, emb, mask)
        m.write_reference(src.flip(0), emb, mask); other = m._unet(x, torch.full((2,), .5), src, cam, emb, mask)
        for r in m.refs: r.mode, r.bank = None, None
    assert not torch.allclose(v, plain, atol=1e-4) and not torch.allclose(v, other, atol=1e-4)   # the reference is read
    first = torch.rand(32, 32, 3)
    v1, v2 = (m.video(first, 'a video of a matte red mug with a dot', 1, seed=3, steps=2) for _ in range(2))
    assert torch.equal(v1, v2) and torch.equal(v1[0], first) and not m.bank_fixed
    unet_nvs.main(common + ['--init', str(cache/'r.pt'), '--steps', '0'])        # rescoring a reference save needs no flag
    assert len(_lines(capsys.readouterr().out)) == 1


def test_orbit_engine_matches_the_research_sampler():
    "The library's orbit engine (05c) built from the research saves draws what unet_nvs.py's sampler draws, at 1 and at 3 steps."
    import unet_nvs
    from dreamvid_lib.orbit_engine import engine_from_saves, OrbitEngineConfig
    w = pathlib.Path(unet_nvs.HERE)/'weights'
    first, cap = torch.rand(32, 32, 3), 'a video of a matte red mug with a dot'
    research = unet_nvs.load_nvs(w/'row57_unet_nvs_3000.pt')
    for steps in (1, 3):
        engine = engine_from_saves(w/'row54_unet_front.pt', w/'row57_unet_nvs_3000.pt', config=OrbitEngineConfig(view_steps=steps))
        ours = engine.draw_views(first[None], [cap], [[-30.0 * k for k in range(1, 8)]], [5])[0]
        theirs = research.video(first, cap, -1, seed=5, steps=steps)[1:]
        assert torch.allclose(ours, theirs, atol=1e-5), (steps, (ours - theirs).abs().max())


def test_chain_views_anchor_is_the_engine_and_chain_differs():
    "chain_views.py (row 63): its `anchor` variant draws exactly what the shipped engine draws; `chain` and `mix` draw other frames 1–7 from the same frame 0."
    import chain_views
    from dreamvid_lib.orbit_engine import load_orbit_engine
    engine = load_orbit_engine()
    prompts, seeds = ['a video of a matte red mug with a dot rotating clockwise', 'a video of a glossy blue lamp with a star rotating counterclockwise'], [3, 4]
    shipped = engine.generate(prompts, seeds)
    anchor = chain_views.videos(engine, prompts, seeds, 'anchor')
    assert torch.allclose(anchor, shipped, atol=1e-5), (anchor - shipped).abs().max()
    chain, mix = (chain_views.videos(engine, prompts, seeds, v, first=shipped[:, 0]) for v in ('chain', 'mix:0.5'))
    for v in (chain, mix):
        assert torch.equal(v[:, 0], shipped[:, 0]) and torch.allclose(v[:, 1], shipped[:, 1], atol=1e-4)   # frame 1: one 30° hop either way
        assert (v[:, 2:] - shipped[:, 2:]).abs().max() > 1e-3
