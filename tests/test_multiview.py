"""Multi-view prep: real photos, odd formats, corrupt files, too few views, empty masks, captures with poses."""
import json, shutil, warnings
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

from dreamvid_lib.core import assets_dir, AssetError
from dreamvid_lib.multiview import (MultiViewError, MultiViewSet, load_image, remove_background, from_folder,
                                    from_transforms_json, from_views, select_conditioning_views, contact_sheet)
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


def test_empty_mask_warns_with_the_view_name(tmp_path):
    Image.new('RGB', (30, 30), (255, 255, 255)).save(tmp_path/'blank.png')
    with pytest.warns(UserWarning, match='blank.png'): from_folder(tmp_path, 'can', size=16, remover='uniform')


def test_birefnet_absent_is_a_clear_error():
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
