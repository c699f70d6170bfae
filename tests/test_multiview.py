"""Multi-view prep: real photos, odd formats, corrupt files, too few views, empty masks, captures with poses."""
import json, shutil, warnings
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

from dreamvid_lib.core import assets_dir, AssetError
from dreamvid_lib.multiview import (MultiViewError, MultiViewSet, load_image, remove_background, from_folder,
                                    from_transforms_json, from_views, select_conditioning_views, contact_sheet,
                                    crop_to_subject)
from dreamvid_lib import toyworld as tw

REAL = assets_dir()/'dreambooth_subset'


@pytest.mark.parametrize('name,noun', [('bear_plushie', 'stuffed animal'), ('can', 'can'), ('robot_toy', 'toy')])
def test_prep_on_real_photos(name, noun):
    mv = from_folder(REAL/name, noun, size=64)
    assert len(mv) >= 5 and mv.images.shape[1:] == (64, 64, 3) and mv.prompt() == f'a video of a sks {noun}'
    fg = (mv.masks > 0.5).mean((1, 2))
    assert (fg > 0.05).all() and (fg < 0.95).all()              # a subject, not the whole frame
    assert np.allclose(mv.images[:, 0, 0], 1.0, atol=1e-3)       # composited on white
    sel = select_conditioning_views(mv, 4)
    assert len(set(sel.tolist())) == 4


def test_formats(tmp_path):
    rgb = (np.random.default_rng(1).random((12, 18, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert('CMYK').save(tmp_path/'a.jpg')
    Image.fromarray((np.arange(216).reshape(12, 18) * 300).astype(np.uint16)).save(tmp_path/'b.png')
    Image.fromarray(rgb[..., 1]).save(tmp_path/'c.webp')
    rgba = np.concatenate([rgb, np.full((12, 18, 1), 128, np.uint8)], -1); Image.fromarray(rgba).save(tmp_path/'d.png')
    ex = Image.fromarray(rgb).getexif(); ex[0x0112] = 8; Image.fromarray(rgb).save(tmp_path/'e.jpg', exif=ex)
    for n in 'abcde':
        f = next(tmp_path.glob(n + '.*')); img, alpha = load_image(f)
        assert img.ndim == 3 and img.shape[-1] == 3 and 0 <= img.min() and img.max() <= 1, f
    assert load_image(tmp_path/'d.png')[1] is not None and load_image(tmp_path/'e.jpg')[0].shape == (18, 12, 3)


def test_corrupt_and_non_image_files(tmp_path):
    for n in ('00.jpg', '01.jpg', '02.jpg'): shutil.copy(REAL/'can'/n, tmp_path/n)
    (tmp_path/'notes.txt').write_text('hello')
    with pytest.raises(MultiViewError, match='notes.txt'): from_folder(tmp_path, 'can', size=32)
    with pytest.warns(UserWarning, match='skipping notes.txt'): mv = from_folder(tmp_path, 'can', size=32, skip_bad=True)
    assert len(mv) == 3
    with pytest.raises(MultiViewError, match='too few'): select_conditioning_views(mv, 4)
    with pytest.raises(MultiViewError, match='not a folder'): from_folder(tmp_path/'nope', 'can')


def test_empty_mask_view_is_dropped_with_its_name(tmp_path):
    Image.new('RGB', (30, 30), (255, 255, 255)).save(tmp_path/'blank.png')
    with pytest.warns(UserWarning, match='blank.png: dropped.*empty mask.*all-white'):
        with pytest.raises(MultiViewError, match='no usable images'): from_folder(tmp_path, 'can', size=16, remover='uniform')
    im = Image.new('RGB', (30, 30), (255, 255, 255)); im.paste((20, 20, 200), (8, 8, 22, 22)); im.save(tmp_path/'blue.png')
    with pytest.warns(UserWarning, match='blank.png'): got = from_folder(tmp_path, 'can', size=16, remover='uniform')
    assert got.names == ['blue.png']


def test_birefnet_absent_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv('DREAMVID_BIREFNET', str(tmp_path))
    with pytest.raises(AssetError, match='ZhengPeng7/BiRefNet'): remove_background(np.ones((8, 8, 3), np.float32), 'birefnet')


def test_transforms_json_and_pose_coverage(tmp_path):
    s = tw.heldout_subjects(1, seed=2)[0]
    v = tw.multiview_set(s, n_views=12, res=48, seed=3)
    frames = []
    for i in range(len(v)):
        rgba = np.concatenate([v.rgb[i], v.alpha[i][..., None]], -1)
        Image.fromarray((rgba * 255).astype(np.uint8)).save(tmp_path/f'{i}.png')
        frames.append({'file_path': f'{i}.png', 'transform_matrix': v.c2w[i].tolist()})
    (tmp_path/'transforms.json').write_text(json.dumps({'camera_angle_x': 0.5, 'frames': frames}))
    mv = from_transforms_json(tmp_path, s.cls, size=32)
    assert np.allclose(mv.azimuth, v.azimuth, atol=0.5)
    az = np.sort(mv.azimuth[select_conditioning_views(mv, 4)])
    assert np.diff(np.r_[az, az[0] + 360]).min() >= 45
    p = mv.save(tmp_path/'mv.npz'); back = MultiViewSet.load(p)
    assert back.prompt() == mv.prompt() and np.allclose(back.images, mv.images)
    fig = contact_sheet(mv, [0, 1]); assert fig is not None


def test_birefnet_error_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv('DREAMVID_BIREFNET', str(tmp_path/'birefnet'))
    with pytest.raises(AssetError, match='birefnet'): remove_background(np.ones((8, 8, 3), np.float32), 'birefnet')
    with pytest.raises(AssetError, match='ZhengPeng7/BiRefNet'): from_folder(REAL/'can', 'can', size=16, remover='birefnet')


def test_removers_on_a_toy_render_with_a_backdrop():
    s = tw.heldout_subjects(1, seed=0)[0]
    v = tw.render_views(s, [30], [10], res=64)
    img = tw.composite(v.rgb, v.alpha, tw.backdrop('blue background', 64))[0]
    iou = lambda a: ((a > .5) & (v.alpha[0] > .5)).sum() / ((a > .5) | (v.alpha[0] > .5)).sum()
    assert iou(remove_background(img, 'uniform')) > 0.85 and iou(remove_background(img, 'grabcut')) > 0.85
    assert remove_background(img, lambda im: v.alpha[0]).shape == (64, 64)          # a callable remover
    with pytest.raises(Exception, match='unknown background remover'): remove_background(img, 'sam')


def test_alpha_drives_auto_mask_and_crop(tmp_path):
    a = np.zeros((40, 60), np.uint8); a[5:15, 40:55] = 255                            # subject in the top right corner
    rgba = np.dstack([np.full((40, 60, 3), 60, np.uint8), a]); Image.fromarray(rgba).save(tmp_path/'x.png')
    Image.fromarray(rgba[..., :3]).save(tmp_path/'y.png')
    img, alpha = load_image(tmp_path/'x.png')
    m = remove_background(img, 'auto', alpha=alpha)
    assert np.array_equal(m > .5, a > 0)
    ci, cm = crop_to_subject(img, m, 24, margin=0.1)
    ys, xs = np.nonzero(cm > .5)
    assert abs((ys.min() + ys.max()) / 2 - 11.5) <= 1.5 and abs((xs.min() + xs.max()) / 2 - 11.5) <= 1.5
    assert np.allclose(ci[0, 0], 1) and np.allclose(ci[12, 12], 60 / 255, atol=0.02)   # white outside, subject inside
    opaque = np.dstack([rgba[..., :3], np.full((40, 60), 255, np.uint8)]); Image.fromarray(opaque).save(tmp_path/'o.png')
    assert load_image(tmp_path/'o.png')[1] is None                                     # opaque alpha carries no mask


def test_natural_order_and_hidden_files(tmp_path):
    for n in ('10.jpg', '2.jpg', '1.jpg'): shutil.copy(REAL/'can'/'00.jpg', tmp_path/n)
    (tmp_path/'.DS_Store').write_bytes(b'junk')
    assert from_folder(tmp_path, 'can', size=16).names == ['1.jpg', '2.jpg', '10.jpg']


def test_multiviewset_validation_subset_and_roundtrip(tmp_path):
    c2w = np.stack([tw.camera_to_world(a, e) for a, e in ((0, 0), (90, 30), (180, 10), (270, 45))])
    mv = MultiViewSet(np.ones((4, 8, 8, 3)), np.zeros((4, 8, 8)), 'shoe', 'xyz', c2w=c2w, K=np.eye(3))
    assert np.allclose(mv.azimuth, [0, 90, 180, 270], atol=1e-3) and np.allclose(mv.elevation, [0, 30, 10, 45], atol=1e-3)
    assert mv.prompt() == 'a video of a xyz shoe' and mv.prompt('{identifier}-{class_noun}') == 'xyz-shoe'
    one = mv.subset(2); assert len(one) == 1 and one.images.shape == (1, 8, 8, 3) and one.K.shape == (3, 3)
    assert mv.subset(slice(1, 3)).names == ['view_01', 'view_02']
    assert mv.subset(np.array([True, False, True, False])).names == ['view_00', 'view_02']
    back = MultiViewSet.load(mv.save(tmp_path/'a'/'s.npz'))
    assert back.identifier == 'xyz' and np.allclose(back.c2w, c2w) and back.depth is None
    with pytest.raises(MultiViewError, match='do not match'): MultiViewSet(np.ones((2, 8, 8, 3)), np.zeros((3, 8, 8)), 'x')
    with pytest.raises(MultiViewError, match='names'): MultiViewSet(np.ones((2, 8, 8, 3)), np.zeros((2, 8, 8)), 'x', names=['a'])


def test_from_views_keeps_resolution_and_noun():
    s = tw.heldout_subjects(2, seed=1)[1]
    mv = from_views(tw.multiview_set(s, n_views=6, res=24, seed=0))
    assert mv.images.shape == (6, 24, 24, 3) and mv.class_noun == s.cls and mv.depth.shape == (6, 24, 24)
    assert from_views(tw.multiview_set(s, n_views=6, res=24, seed=0), 'thing', 'zzq').prompt() == 'a video of a zzq thing'


def test_selection_by_pose_and_by_features():
    s = tw.heldout_subjects(1, seed=4)[0]
    mv = from_views(tw.multiview_set(s, n_views=24, res=24, seed=5))
    for k in (2, 3, 4, 6):
        sel = select_conditioning_views(mv, k)
        az = np.sort(mv.azimuth[sel]); gap = np.diff(np.r_[az, az[0] + 360]).min()
        assert len(set(sel.tolist())) == k and gap >= 0.6 * 360 / k, (k, az)
    assert np.array_equal(select_conditioning_views(mv, 4, seed=3), select_conditioning_views(mv, 4, seed=3))
    nopose = MultiViewSet(mv.images, mv.masks, mv.class_noun)
    sel = select_conditioning_views(nopose, 4)
    assert len(set(sel.tolist())) == 4 and sel.min() >= 0 and sel.max() < len(mv)
    with pytest.raises(MultiViewError, match='too few'): select_conditioning_views(mv.subset(range(4)), 4)


def test_transforms_json_intrinsics_follow_the_crop(tmp_path):
    s = tw.heldout_subjects(1, seed=6)[0]
    v = tw.multiview_set(s, n_views=5, res=64, seed=1)
    K = tw.intrinsics(64)
    frames = []
    for i in range(len(v)):
        Image.fromarray((np.dstack([v.rgb[i], v.alpha[i]]) * 255 + .5).astype(np.uint8)).save(tmp_path/f'f{i}.png')
        frames.append({'file_path': f'f{i}', 'transform_matrix': v.c2w[i].tolist(), 'fl_x': float(K[0, 0])})
    (tmp_path/'transforms.json').write_text(json.dumps({'fl_y': float(K[1, 1]), 'cx': 32.0, 'cy': 32.0, 'w': 64, 'h': 64, 'frames': frames}))
    mv = from_transforms_json(tmp_path/'transforms.json', s.cls, size=40)
    assert mv.K.shape == (5, 3, 3)
    for i in range(len(mv)):                                                           # the origin lands on the subject's centre
        uv = tw.project(np.zeros((1, 3)), mv.K[i], mv.c2w[i])[0]
        assert np.abs(uv - (np.argwhere(mv.masks[i] > .5).mean(0)[::-1] + .5)).max() < 4
    frames[2]['file_path'] = 'missing.png'
    (tmp_path/'transforms.json').write_text(json.dumps({'camera_angle_x': 0.5, 'frames': frames}))
    with pytest.raises(MultiViewError, match='missing.png'): from_transforms_json(tmp_path, s.cls, size=16, strict=True)
    with pytest.warns(UserWarning, match=r'skipped 1 of \d+ listed files.*missing.png'): got = from_transforms_json(tmp_path, s.cls, size=16)
    assert 'missing.png' not in got.names
    (tmp_path/'transforms.json').write_text(json.dumps({'camera_angle_x': 0.5}))
    with pytest.raises(MultiViewError, match='frames'): from_transforms_json(tmp_path, s.cls, size=16)


def test_contact_sheet_caps_views_but_keeps_chosen():
    import matplotlib.pyplot as plt
    mv = MultiViewSet(np.ones((40, 8, 8, 3)), np.zeros((40, 8, 8)), 'mug')
    fig = contact_sheet(mv, [3, 39], max_views=10)
    assert sum(bool(a.get_images()) for a in fig.axes) == 20
    assert sorted(a.get_title() for a in fig.axes if a.title.get_color() == 'red') == ['view_03', 'view_39']
    plt.close(fig)


# --- issue 14: captures that load, masks that hold, bad input ---
import json as _json, shutil as _shutil, warnings as _warnings
from dreamvid_lib.multiview import (read_capture, detect_up_axis, look_at_point, angles_about, capture_masks, score_masks,
                                    prepare_capture, render_cluttered_capture, mask_iou_against_truth, MultiViewSet,
                                    select_conditioning_views, MultiViewError)


@pytest.fixture(scope='module')
def cluttered(tmp_path_factory):
    # 12 views at 96 px: with the walls beyond the camera path, 10 views at 64 px leave 7 tiny views where even the first
    # pass finds the subject in only 2, and no method can agree on it (grabcut 0.18, geometry 0.31, multiview 0.05)
    return render_cluttered_capture(tw.heldout_subjects(1)[0], tmp_path_factory.mktemp('cap')/'c', n_views=12, res=96, missing=0.2)


def test_capture_skips_missing_files_counts_them_and_detects_z_up(cluttered):
    with pytest.warns(UserWarning) as rec:
        cap = read_capture(cluttered['folder'])
    msgs = ' '.join(str(w.message) for w in rec)
    assert f"skipped {len(cluttered['missing']) + 1} of 12" in msgs and 'world up axis +z detected' in msgs
    assert cap.up_axis == '+z' and len(cap) == 12 - len(cluttered['missing']) - 1
    az, el = angles_about(cap.c2w, cap.centre)
    idx = [int(n[-8:-4]) for n in cap.names]
    assert np.abs((az - cluttered['azimuth'][idx] + 180) % 360 - 180).max() < 10
    assert np.abs(el - cluttered['elevation'][idx]).max() < 10
    with pytest.raises(MultiViewError, match='missing or unreadable.*leave out strict'): read_capture(cluttered['folder'], strict=True)
    with pytest.warns(UserWarning) as rec:                              # the skipped files are reported again, beside the axis
        read_capture(cluttered['folder'], up='y')
    assert any('up axis +y as given' in str(w.message) for w in rec)


def test_look_at_point_and_up_axis():
    c2w = np.stack([tw.camera_to_world(a, 20) for a in range(0, 360, 45)]).astype(np.float64)
    c2w[:, :3, 3] += [1.0, 2.0, 3.0]
    assert np.allclose(look_at_point(c2w), [1, 2, 3], atol=1e-6)
    assert detect_up_axis(c2w)[0] == '+y'


def test_bad_pose_matrices_are_named(tmp_path):
    from PIL import Image
    Image.new('RGB', (16, 16), 'white').save(tmp_path/'a.png')
    for val, msg in (('abc', 'non-number'), (float('nan'), 'NaN or infinite')):
        T = np.eye(4).tolist(); T[1][3] = val
        (tmp_path/'transforms.json').write_text(_json.dumps({'camera_angle_x': .5, 'frames': [{'file_path': 'a.png', 'transform_matrix': T}]}))
        with pytest.raises(MultiViewError, match=f'frame 0 .a.png.: transform_matrix holds a {msg}' if msg == 'non-number' else msg):
            read_capture(tmp_path)


def test_truncated_npz_is_named(tmp_path):
    mv = MultiViewSet(np.ones((3, 8, 8, 3)), np.ones((3, 8, 8)), 'mug')
    p = mv.save(tmp_path/'v.npz'); p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(MultiViewError, match='v.npz is not a readable multi-view set.*truncated'): MultiViewSet.load(p)


def test_3dreambooth_layout(tmp_path):
    from PIL import Image
    v = tw.multiview_set(tw.heldout_subjects(1)[0], n_views=6, res=32, seed=0)
    (tmp_path/'images').mkdir(); (tmp_path/'references').mkdir()
    for i, im in enumerate(v.rgb): Image.fromarray((im * 255).astype(np.uint8)).save(tmp_path/'images'/f'{i:03d}.png')
    for i in (1, 4): _shutil.copy(tmp_path/'images'/f'{i:03d}.png', tmp_path/'references'/f'{i:03d}.png')
    (tmp_path/'prompt.txt').write_text('a video of a sks lamp')
    mv, rep = prepare_capture(tmp_path, size=32, remover='uniform', k=2)
    assert rep['class_noun'] == 'lamp' and rep['prompt'] == 'a video of a sks lamp'
    assert rep['conditioning_views'] == ['001.png', '004.png'] and rep['conditioning_source'] == 'references/'


def test_scores_drop_empty_and_disagreeing_masks_and_selection_avoids_them():
    rng = np.random.default_rng(0)
    imgs = [np.full((40, 40, 3), .9, np.float32) for _ in range(6)]
    masks = []
    for i, im in enumerate(imgs):
        m = np.zeros((40, 40), np.float32); m[12:28, 12:28] = 1
        im[m > 0] = (0.8, 0.1, 0.1)
        masks.append(m)
    masks[2] = np.zeros((40, 40), np.float32)                                  # empty
    imgs[4][2:10, 2:10] = (0.1, 0.2, 0.9); masks[4] = np.zeros((40, 40), np.float32); masks[4][2:10, 2:10] = 1   # the wrong object
    sc = score_masks(imgs, masks)
    assert not sc[2]['keep'] and 'empty' in sc[2]['reason']
    assert not sc[4]['keep'] and 'disagrees' in sc[4]['reason']
    assert all(sc[i]['keep'] for i in (0, 1, 3, 5))
    mv = MultiViewSet(np.stack(imgs), np.stack(masks), 'mug', quality=np.array([s['score'] for s in sc]))
    for seed in range(4): assert not {2, 4} & set(select_conditioning_views(mv, 3, seed).tolist())


def test_multiview_masks_beat_grabcut_on_the_rendered_capture(cluttered):
    with _warnings.catch_warnings():
        _warnings.simplefilter('ignore'); cap = read_capture(cluttered['folder'])
    got = {m: mask_iou_against_truth(cap, capture_masks(cap, m), cluttered['folder']/'gt').mean() for m in ('grabcut', 'geometry', 'multiview', 'hull')}
    assert got['geometry'] > got['grabcut'] and got['multiview'] > got['grabcut'] and got['hull'] > got['grabcut'], got
    with pytest.raises(MultiViewError, match='needs poses'):
        capture_masks(read_capture(REAL/'can'), 'multiview')


def test_a_strong_first_pass_carries_through_the_posed_methods(cluttered):
    # stands in for BiRefNet (no weights here): a single-image remover that returns the truth, plus clutter in one view
    from PIL import Image as _Image
    with _warnings.catch_warnings():
        _warnings.simplefilter('ignore'); cap = read_capture(cluttered['folder'])
    truth = {id(im): np.asarray(_Image.open(cluttered['folder']/'gt'/(n[:-4] + '.png')), np.float32) / 255 for im, n in zip(cap.images, cap.names)}
    oracle = lambda im: truth[id(im)]
    masks, info = capture_masks(cap, 'multiview', first_pass=oracle, return_info=True)
    assert info['first_pass'] == 'callable'
    assert mask_iou_against_truth(cap, masks, cluttered['folder']/'gt').mean() > 0.6
