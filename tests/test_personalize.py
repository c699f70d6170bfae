"""`dreamvid prep | personalize | generate` (issue 14): the researcher's path on a toy subject, and every bad input refused
before any long work with nothing lost."""
import json, shutil
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

from dreamvid_lib.cli import main, run_demo, demo_record, DEMO_OUTPUTS
from dreamvid_lib.core import assets_dir, check_work_folder, WorkFolderError, PromptError
from dreamvid_lib.personalize import run_prep, run_personalize, run_generate
from dreamvid_lib import toyworld as tw


@pytest.fixture(scope='module')
def lamp(tmp_path_factory):
    root = tmp_path_factory.mktemp('lamp')
    v = tw.multiview_set(tw.heldout_subjects(1)[0], n_views=8, res=32, seed=0)
    (root/'src'/'images').mkdir(parents=True)
    for i, im in enumerate(v.rgb): Image.fromarray((im * 255 + .5).astype(np.uint8)).save(root/'src'/'images'/f'{i:03d}.png')
    (root/'src'/'prompt.txt').write_text(f'a video of a sks {v.subject.cls}')
    assert main(['prep', str(root/'src'), '--out', str(root/'prep'), '--size', '32', '--remover', 'uniform', '--k', '3']) == 0
    assert main(['personalize', str(root/'prep'), '--out', str(root/'p'), '--steps', '3']) == 0
    return root, v.subject


def test_prep_json_records_every_file(lamp):
    root, subj = lamp
    rep = json.loads((root/'prep'/'prep.json').read_text())
    assert rep['listed'] == 8 and len(rep['records']) == 8 and rep['class_noun'] == subj.cls
    assert len(rep['conditioning_views']) == 3 and (root/'prep'/'contact_sheet.png').exists()
    assert all({'file', 'status', 'kept', 'mask_fraction', 'score'} <= set(r) for r in rep['records'])


def test_personalize_resumes_and_generate_reuses(lamp, tmp_path):
    root, subj = lamp
    info = run_personalize(root/'prep', root/'p', 'toy', steps=3, progress=False)
    assert info['trained_steps'] == 3 and info['resumed_from'] == 3
    p = f'a video of a sks {subj.cls}'
    g = run_generate(root/'p', p, tmp_path/'v', seeds=[0], steps=2)
    assert g['made_now'] == [0] and (tmp_path/'v'/'videos'/'seed0.mp4').exists()
    assert run_generate(root/'p', p, tmp_path/'v', seeds=[0], steps=2)['reused'] == [0]
    with pytest.raises(WorkFolderError, match='config.prompt'): run_generate(root/'p', p + ' rotating clockwise', tmp_path/'v', seeds=[0], steps=2)


def test_toy_refuses_real_class_nouns_with_the_wan_command(tmp_path):
    rep = run_prep(assets_dir()/'dreambooth_subset'/'can', tmp_path/'prep', 'fox', size=32, remover='grabcut', k=2)
    with pytest.raises(PromptError, match=r"only its own classes.*'fox'.*--backbone wan --weights"):
        run_personalize(tmp_path/'prep', tmp_path/'out', 'toy')
    assert not (tmp_path/'out').exists()


def test_bad_inputs_are_refused_and_nothing_is_lost(lamp, tmp_path, capsys):
    root, subj = lamp
    (tmp_path/'f.txt').write_text('keep')
    assert main(['prep', str(root/'src'), '--out', str(tmp_path/'f.txt')]) == 2 and (tmp_path/'f.txt').read_text() == 'keep'
    assert 'names a file' in capsys.readouterr().err
    shutil.copytree(root/'p', tmp_path/'cut'); w = tmp_path/'cut'/'adapter'/'pytorch_lora_weights.safetensors'
    w.write_bytes(w.read_bytes()[:500])
    assert main(['generate', str(tmp_path/'cut'), '--prompt', 'a video of a sks lamp', '--out', str(tmp_path/'g')]) == 2
    assert 'truncated or corrupt' in capsys.readouterr().err and not (tmp_path/'g').exists()
    shutil.copytree(root/'prep', tmp_path/'cutprep'); z = tmp_path/'cutprep'/'views.npz'; z.write_bytes(z.read_bytes()[:300])
    assert main(['personalize', str(tmp_path/'cutprep'), '--out', str(tmp_path/'q')]) == 2
    assert 'truncated' in capsys.readouterr().err and not (tmp_path/'q').exists()
    assert main(['personalize', str(root/'prep'), '--out', str(tmp_path/'j'), '--method', 'joint', '--dapter', str(tmp_path/'none')]) == 2
    assert 'not found' in capsys.readouterr().err and not (tmp_path/'j').exists()
    assert main(['prep', str(assets_dir()/'dreambooth_subset'/'can'), '--out', str(root/'prep'), '--class-noun', 'can']) == 2
    assert 'inputs.source' in capsys.readouterr().err


def test_demo_out_reused_for_another_subject_is_refused_before_any_work(tmp_path):
    d = tmp_path/'demo'
    check_work_folder(d, demo_record(0, True, 'toy', None, None), owned=DEMO_OUTPUTS, what='demo', flag='--overwrite')
    (d/'report.json').write_text('{"old": 1}')
    with pytest.raises(WorkFolderError, match=r'config.subject_seed: 0 -> 1.*--overwrite'): run_demo(d, subject_seed=1, fast=True)
    assert (d/'report.json').read_text() == '{"old": 1}'
    with pytest.raises(Exception, match='not found'): run_demo(tmp_path/'d2', dapter=str(tmp_path/'nope'))


def test_the_researchers_path_on_a_tiny_wan(tmp_path):
    from dreamvid_lib.wan import make_tiny_wan
    w = make_tiny_wan(tmp_path/'tiny', seed=0)
    assert main(['prep', str(assets_dir()/'dreambooth_subset'/'can'), '--out', str(tmp_path/'prep'), '--class-noun', 'can',
                 '--size', '32', '--remover', 'grabcut', '--k', '3']) == 0
    for m in ('3db', 'joint'):
        assert main(['personalize', str(tmp_path/'prep'), '--out', str(tmp_path/m), '--backbone', 'wan', '--weights', str(w),
                     '--steps', '2', '--method', m]) == 0
    assert main(['generate', str(tmp_path/'joint'), '--prompt', 'a video of a sks can', '--out', str(tmp_path/'v'), '--steps', '2']) == 0
    assert (tmp_path/'v'/'videos'/'seed0.mp4').exists()
    # another set of weights on the same --out: refused
    w2 = make_tiny_wan(tmp_path/'tiny2', seed=1)
    assert main(['personalize', str(tmp_path/'prep'), '--out', str(tmp_path/'3db'), '--backbone', 'wan', '--weights', str(w2), '--steps', '2']) == 2
