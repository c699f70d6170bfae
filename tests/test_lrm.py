"""The tiny LRM (nbs/12b_lrm.ipynb): rendering against closed forms, shapes, resumable training, config refusal,
bad inputs, image-to-3d outputs. Runs in well under a minute on one CPU thread."""
import json, math
import numpy as np
import pytest
import torch
from dreamvid_lib import lrm
from dreamvid_lib import toyworld as tw
from dreamvid_lib.core import AssetError, ConfigError, WorkFolderError

torch.set_num_threads(1)
TINY = lrm.LRMConfig(image_res=16, patch=4, dim=32, heads=2, encoder_layers=1, transformer_layers=1, plane_tokens=4,
                     plane_res=8, plane_channels=8, mlp_hidden=16, mlp_layers=1, samples=8)

def _rings(S=3, V=6, res=16, seed=0):
    "A fake ring set: random coloured discs with their alpha (no renderer needed)."
    rng = np.random.default_rng(seed)
    j, k = np.mgrid[:res, :res] + 0.5
    rgba = np.zeros((S, V, res, res, 4), np.uint8)
    for s in range(S):
        for v in range(V):
            a = ((j - res / 2) ** 2 + (k - res / 2 - v % 3) ** 2 < (res / 3) ** 2).astype(np.float32)
            c = rng.uniform(0, 1, 3)
            rgba[s, v, ..., :3] = np.round((a[..., None] * c + 1 - a[..., None]) * 255)
            rgba[s, v, ..., 3] = np.round(a * 255)
    return {'rgba': rgba, 'azimuth': (np.arange(V) * 360 / V).astype(np.float32),
            'elevation': rng.uniform(0, 30, S).astype(np.float32), 'subjects': [tw.subject_from_seed(i) for i in range(S)]}

TRAIN = lrm.LRMTrainConfig(steps=6, batch=2, views=2, patch=8, warmup=2, stages=((8, 0.5), (16, 0.5)), perceptual_weight=0.0,
                           checkpoint_every=2)

def test_volume_render_closed_forms():
    S = 16
    deltas = torch.full((5, S), 0.1)
    empty = lrm.volume_render(torch.zeros(5, S), torch.rand(5, S, 3), deltas)
    assert torch.allclose(empty['opacity'], torch.zeros(5)) and torch.allclose(empty['rgb'], torch.ones(5, 3))
    sig = torch.tensor([0.5, 1.0, 2.0, 5.0, 50.0])[:, None].expand(5, S)
    red = torch.tensor([1.0, 0, 0]).expand(5, S, 3)
    out = lrm.volume_render(sig, red, deltas)
    want = 1 - torch.exp(-sig[:, 0] * 0.1 * S)                        # Beer-Lambert over the whole ray
    assert torch.allclose(out['opacity'], want, atol=1e-6)
    assert torch.allclose(out['rgb'], torch.stack([torch.ones(5), 1 - want, 1 - want], -1), atol=1e-6)

def test_render_rays_sphere_silhouette():
    "An opaque sphere of radius 0.5 at the origin: opaque exactly where the pixel ray passes within 0.5 of the centre."
    res = 24
    c2w = lrm.canonical_c2w(20.0, 40.0)
    o, d = lrm.camera_rays(c2w, res)
    field = lambda p: ((p.norm(dim=-1) < 0.5).float() * 1e3, torch.ones(*p.shape[:-1], 3) * 0.2)
    out = lrm.render_rays(field, o, d, bound=1.1, samples=256)
    miss = torch.linalg.cross(o, d).norm(dim=-1)                       # distance of each ray from the origin
    sure = (miss < 0.47) | (miss > 0.53)
    assert torch.equal(out['opacity'][sure] > 0.5, miss[sure] < 0.5)
    assert torch.allclose(out['depth'][miss < 0.4], (tw.CAMERA_DISTANCE - torch.sqrt(0.25 - miss ** 2))[miss < 0.4], atol=0.03)

def test_camera_frame_and_rays():
    c = lrm.canonical_c2w([10.0, 10.0], [0.0, 90.0]).numpy()
    np.testing.assert_allclose(c[0], tw.camera_to_world(0, 10), atol=1e-6)
    p = np.array([[0.3, 0.2, -0.4]])                                   # canonical point of a view at azimuth 90 ...
    uv_c = tw.project(p, tw.intrinsics(32), tw.camera_to_world(30, 10))
    uv_w = tw.project(lrm.rotate_y(p, 90), tw.intrinsics(32), tw.camera_to_world(120, 10))  # ... seen in the world
    np.testing.assert_allclose(uv_c, uv_w, atol=1e-4)
    assert lrm.camera_features(c, tw.intrinsics(32), 32).shape == (2, 16)

def test_shapes_and_empty_triplane():
    m = lrm.build_lrm(TINY, seed=0)
    planes = m.triplanes(torch.rand(2, 3, 16, 16), torch.randn(2, 16))
    assert planes.shape == (2, 3, 8, 8, 8)
    out = m.render(planes, lrm.canonical_c2w(15.0, [0, 90, 180])[None].expand(2, -1, -1, -1), 10)
    assert out['rgb'].shape == (2, 3, 10, 10, 3) and out['opacity'].shape == (2, 3, 10, 10)
    assert lrm.sample_triplane(planes, torch.zeros(2, 7, 3), 1.1).shape == (2, 7, 24)
    with torch.no_grad():                                              # a decoder that sees no density: transparent, white
        m.nerf.net[-1].weight.zero_(); m.nerf.net[-1].bias.fill_(-30.0)
        out = m.render(planes, lrm.canonical_c2w(15.0, [0, 90])[None].expand(2, -1, -1, -1), 10)
    assert out['opacity'].max() < 1e-6 and torch.allclose(out['rgb'], torch.ones_like(out['rgb']), atol=1e-5)

def test_bad_inputs():
    m = lrm.build_lrm(TINY)
    with pytest.raises(lrm.LRMError, match='images must be'): m.triplanes(torch.rand(1, 3, 20, 20), torch.randn(1, 16))
    with pytest.raises(lrm.LRMError, match='camera features'): m.triplanes(torch.rand(1, 3, 16, 16), torch.randn(1, 12))
    with pytest.raises(lrm.LRMError, match=r'\[H,W,3\]'): lrm.as_image(np.zeros((16, 16)), 16)
    with pytest.raises(lrm.LRMError, match='finite values'): lrm.as_image(np.full((16, 16, 3), 2.0), 16)
    with pytest.raises(lrm.LRMError, match='not found'): lrm.as_image('/nonexistent/x.png', 16)
    with pytest.raises(ConfigError, match='plane_res'): lrm.LRMConfig(plane_res=24, plane_tokens=8).check()
    with pytest.raises(ConfigError, match='image_skip'): lrm.LRMConfig(plane_tokens=4, plane_res=32).check()
    lrm.LRMConfig(plane_tokens=4, plane_res=32, image_skip=False).check()            # LRM's own token path has no such constraint
    assert lrm.as_image(np.zeros((40, 30, 4), np.uint8), 16).shape == (1, 3, 16, 16)   # transparent → white
    assert float(lrm.as_image(np.zeros((40, 30, 4), np.uint8), 16).min()) == 1.0

def test_stages_and_schedule():
    cfg = lrm.LRMTrainConfig(steps=100, warmup=10, stages=((16, 0.3), (24, 0.3), (32, 0.4)), restart_stage=1)
    assert [cfg.stage(s)[1] for s in (0, 29, 30, 59, 60, 99)] == [16, 16, 24, 24, 32, 32]
    assert lrm.lrm_lr_factor(cfg, 0) == pytest.approx(0.1) and lrm.lrm_lr_factor(cfg, 30) == pytest.approx(1.0)
    assert lrm.lrm_lr_factor(cfg, 29) < 0.1                            # decayed before the restart

def test_kill_and_resume_matches_uninterrupted(tmp_path):
    rings = _rings()
    full = lrm.build_lrm(TINY, seed=1)
    lrm.train_lrm(full, rings, TRAIN, tmp_path/'a', progress=False)
    part = lrm.build_lrm(TINY, seed=1)
    log = lrm.train_lrm(part, rings, TRAIN, tmp_path/'b', progress=False, stop_after=3)   # killed after step 3 ...
    assert log['step'] == 3
    resumed = lrm.build_lrm(TINY, seed=99)                             # ... a new process, other initial weights
    log = lrm.train_lrm(resumed, rings, TRAIN, tmp_path/'b', progress=False)
    assert log['steps_this_call'] == 4 and log['step'] == 6            # resumed from the step-2 checkpoint
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(p.name.startswith('.') for p in (tmp_path/'b').iterdir())   # no temporary files left

def test_config_mismatch_refused_by_name(tmp_path):
    rings = _rings()
    lrm.train_lrm(lrm.build_lrm(TINY), rings, TRAIN, tmp_path, progress=False, stop_after=2)
    import dataclasses
    with pytest.raises(WorkFolderError, match=r'config\.opacity_weight'):
        lrm.train_lrm(lrm.build_lrm(TINY), rings, dataclasses.replace(TRAIN, opacity_weight=0.0), tmp_path, progress=False)
    with pytest.raises(WorkFolderError, match=r'model\.dim'):
        lrm.train_lrm(lrm.build_lrm(dataclasses.replace(TINY, dim=16)), rings, TRAIN, tmp_path, progress=False)
    with pytest.raises(WorkFolderError, match=r'inputs\.rings'):
        lrm.train_lrm(lrm.build_lrm(TINY), _rings(seed=5), TRAIN, tmp_path, progress=False)

def test_trains_on_the_one_engine(tmp_path):
    "train_lrm runs on train.train_loop: the engine's checkpoint format, the LRM schedule, each step's render size kept as an int."
    from dreamvid_lib.train import CHECKPOINT_FORMAT, load_checkpoint
    log = lrm.train_lrm(lrm.build_lrm(TINY), _rings(), TRAIN, tmp_path, progress=False)
    st = load_checkpoint(tmp_path/'checkpoint.pt')
    assert st['format'] == CHECKPOINT_FORMAT and st['step'] == TRAIN.steps and st['gen'] is not None
    assert [h['res'] for h in log['history']] == [8, 8, 8, 16, 16, 16] and all(type(h['res']) is int for h in log['history'])
    assert [h['lr'] for h in log['history']] == pytest.approx([TRAIN.lr * lrm.lrm_lr_factor(TRAIN, s + 1) for s in range(TRAIN.steps)])
    assert {'loss', 'mse', 'opacity'} <= set(log['history'][0]) and 'perceptual' not in log['history'][0]   # perceptual_weight 0

def test_save_load_and_missing_model(tmp_path):
    m = lrm.build_lrm(TINY, seed=3)
    lrm.save_lrm(m, tmp_path/'m', meta={'note': 'test'})
    back = lrm.load_lrm(tmp_path/'m')
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()): assert torch.equal(a, b), k
    with pytest.raises(AssetError, match='--model'): lrm.load_lrm(tmp_path/'nothing')

def test_image_to_3d_writes_files(tmp_path):
    m = lrm.build_lrm(TINY, seed=0)
    lrm.save_lrm(m, tmp_path/'model')
    img = (np.random.default_rng(0).uniform(0, 1, (20, 20, 3)) * 255).astype(np.uint8)
    from PIL import Image
    Image.fromarray(img).save(tmp_path/'in.png')
    # a model whose density is a ball: a mesh must come out of marching cubes
    ball = lrm.build_lrm(TINY, seed=0)
    ball.field = lambda planes, p: ((p.norm(dim=-1) < 0.6).float() * 100, torch.full((*p.shape[:-1], 3), 0.5))
    r = lrm.image_to_3d(tmp_path/'in.png', ball, tmp_path/'out', res=12, views=4, frames=6, mesh_resolution=24)
    for name in ('input.png', 'orbit.mp4', 'mesh.ply', 'points.ply', 'summary.json'):
        assert (tmp_path/'out'/name).stat().st_size > 0, name
    assert len(list((tmp_path/'out'/'views').glob('view_*.png'))) == 4
    v = r['mesh']['vertices']
    assert abs(np.linalg.norm(v, axis=1).mean() - 0.6) < 0.05          # the ball's surface
    assert lrm.image_to_3d_cli([str(tmp_path/'in.png'), '--out', str(tmp_path/'cli'), '--model', str(tmp_path/'model'),
                                '--res', '8', '--views', '2', '--frames', '4', '--mesh-resolution', '16']) == 0
    assert json.loads((tmp_path/'cli'/'summary.json').read_text())['views'] == ['views/view_000.png', 'views/view_180.png']
    with pytest.raises(AssetError, match='--model'):
        lrm.image_to_3d_cli([str(tmp_path/'in.png'), '--out', str(tmp_path/'x'), '--model', str(tmp_path/'missing')])
    sub = tw.subject_from_seed(0, 'heldout')                            # toy ground truth beside the renders
    r = lrm.image_to_3d(tmp_path/'in.png', ball, tmp_path/'gt', elevation=10.0, res=12, views=4, frames=2, mesh_resolution=24,
                        subject=sub, azimuth=30.0)
    t = r['summary']['truth']
    assert len(t['psnr_per_view']) == 4 and np.isfinite(t['chamfer']) and (tmp_path/'gt'/'truth_vs_lrm.png').exists()
    with pytest.raises(lrm.LRMError, match='--subject'):
        lrm.image_to_3d_cli([str(tmp_path/'in.png'), '--out', str(tmp_path/'y'), '--model', str(tmp_path/'model'), '--subject', '{"cls": 1'])
    (tmp_path/'afile').write_text('x')
    with pytest.raises(ConfigError, match='names a file'): lrm.image_to_3d(tmp_path/'in.png', ball, tmp_path/'afile')

def test_dreamvid_cli_dispatches_image_to_3d(tmp_path, capsys):
    "`dreamvid image-to-3d` reaches lrm.image_to_3d_cli; its errors come back as the CLI's exit code 2, not a traceback."
    from dreamvid_lib.cli import main, build_parser
    lrm.save_lrm(lrm.build_lrm(TINY, seed=0), tmp_path/'model')
    from PIL import Image
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path/'in.png')
    assert main(['image-to-3d', str(tmp_path/'in.png'), '--out', str(tmp_path/'o'), '--model', str(tmp_path/'model'),
                 '--res', '8', '--views', '2', '--frames', '2', '--mesh-resolution', '12']) == 0
    assert (tmp_path/'o'/'summary.json').exists()
    assert main(['image-to-3d', str(tmp_path/'in.png'), '--out', str(tmp_path/'x'), '--model', str(tmp_path/'missing')]) == 2
    assert '--model' in capsys.readouterr().err
    assert 'image-to-3d' in build_parser().format_help()

def test_window_rays_are_the_patch_of_the_full_rays():
    import torch
    from dreamvid_lib.lrm import window_rays
    res, p = 8, 3
    o, d = torch.randn(2, res * res, 3), torch.randn(2, res * res, 3)
    corner = torch.tensor([[1, 4], [5, 0]])
    wo, wd, side = window_rays(o, d, res, (corner, p))
    assert side == p and wo.shape == (2, p * p, 3)
    for n, (y, x) in enumerate(corner.tolist()):
        assert torch.equal(wo[n].reshape(p, p, 3), o[n].reshape(res, res, 3)[y:y + p, x:x + p])
        assert torch.equal(wd[n].reshape(p, p, 3), d[n].reshape(res, res, 3)[y:y + p, x:x + p])
    assert window_rays(o, d, res)[2] == res
