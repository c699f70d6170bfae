"""3DreamBooth: prep on real photos is covered in test_multiview.py; here the trainer: kill-and-resume, LoRA
save→load, and a 2-process CPU `accelerate` run."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from peft.utils import get_peft_model_state_dict

from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
from dreamvid_lib.pretrain import caption_vocabulary
from dreamvid_lib.adapters import add_lora, save_adapter, load_adapter
from dreamvid_lib.dreambooth import DreamBoothConfig, train_3dreambooth
from dreamvid_lib.generate import generate
from dreamvid_lib.multiview import from_views
from dreamvid_lib.core import ConfigError, AssetError
from dreamvid_lib import toyworld as tw

ROOT = Path(__file__).resolve().parent.parent


def _bb(): return ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0)


@pytest.fixture(scope='module')
def mv(): return from_views(tw.multiview_set(tw.heldout_subjects(1)[0], n_views=8, res=32, seed=0))


def test_kill_and_resume_gives_the_same_adapter(mv, tmp_path):
    cfg = DreamBoothConfig(steps=8, batch_size=2, checkpoint_every=3, preview_prompt='')
    a = _bb(); train_3dreambooth(a, mv, cfg, tmp_path/'full', progress=False)
    b = _bb(); train_3dreambooth(b, mv, cfg, tmp_path/'killed', progress=False, stop_after=5)
    b = _bb(); log = train_3dreambooth(b, mv, cfg, tmp_path/'killed', progress=False)
    assert log['steps_this_call'] == 5          # resumed at the step-3 checkpoint
    sa, sb = get_peft_model_state_dict(a.transformer, adapter_name='3db'), get_peft_model_state_dict(b.transformer, adapter_name='3db')
    assert sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert any(v.abs().sum() > 0 for k, v in sa.items() if 'lora_B' in k)   # the adapter did train


def test_lora_save_load_identical_outputs(mv, tmp_path):
    cfg = DreamBoothConfig(steps=3, batch_size=2, preview_prompt='')
    a = _bb(); train_3dreambooth(a, mv, cfg, tmp_path/'w', out_dir=tmp_path/'adapter', progress=False)
    assert (tmp_path/'adapter'/'pytorch_lora_weights.safetensors').exists()
    cfgj = json.loads((tmp_path/'adapter'/'adapter_config.json').read_text())
    assert cfgj['rank'] == 16 and cfgj['alpha'] == 32 and cfgj['train_config']['prompt'] == mv.prompt()
    b = _bb(); load_adapter(b, tmp_path/'adapter')
    p = mv.prompt() + ' rotating clockwise'
    assert torch.allclose(generate(a, p, seeds=1, steps=3), generate(b, p, seeds=1, steps=3), atol=1e-6)
    with pytest.raises(ConfigError, match='trained on backbone'):
        load_adapter(ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=2)), tmp_path/'adapter')
    with pytest.raises(AssetError, match='not an adapter folder'): load_adapter(_bb(), tmp_path)


@pytest.mark.xdist_group('torchrun')   # accelerate's multi-GPU launcher binds torchrun's default port: one at a time
def test_two_process_accelerate_run(tmp_path):
    exe = Path(sys.executable).with_name('accelerate')
    # accelerate's `--cpu` picks its single-process launcher; `--multi_gpu` is its torchrun launcher, which runs
    # data-parallel on the CPU (gloo) when the script's state is created with cpu=True, as train_lora does on a CPU.
    cmd = [str(exe), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', str(ROOT/'tests'/'scripts'/'ddp_lora.py'), str(tmp_path)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = [json.loads((tmp_path/f'rank{i}.json').read_text()) for i in range(2)]
    assert all(i['world'] == 2 and len(i['losses']) == 4 for i in info)
    assert info[0]['losses'] != info[1]['losses']          # different batches on each rank
    s0, s1 = torch.load(tmp_path/'rank0.pt'), torch.load(tmp_path/'rank1.pt')
    assert all(torch.allclose(s0[k], s1[k], atol=1e-6) for k in s0)   # gradients were all-reduced


# --- work folders that know what they hold (issue 14) ---
from dreamvid_lib.core import WorkFolderError

_SEEDED = '''
import sys, torch
from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
from dreamvid_lib.pretrain import caption_vocabulary
from dreamvid_lib.dreambooth import DreamBoothConfig, train_3dreambooth
from dreamvid_lib.multiview import from_views
from dreamvid_lib import toyworld as tw
torch.randn(int(sys.argv[3]))                      # unrelated randomness before: must not matter
mv = from_views(tw.multiview_set(tw.heldout_subjects(1)[0], n_views=6, res=32, seed=0))
bb = ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0)
train_3dreambooth(bb, mv, DreamBoothConfig(steps=3, batch_size=2, preview_prompt='', seed=int(sys.argv[2])), sys.argv[1] + '/w',
                  out_dir=sys.argv[1] + '/a', progress=False)
'''


def _train_in_fresh_process(d, seed, noise=1):
    r = subprocess.run([sys.executable, '-c', _SEEDED, str(d), str(seed), str(noise)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file
    return load_file(Path(d)/'a'/'pytorch_lora_weights.safetensors')


def test_same_seed_same_adapter_in_a_fresh_process(tmp_path):
    a = _train_in_fresh_process(tmp_path/'a', 0, 1)
    b = _train_in_fresh_process(tmp_path/'b', 0, 7)
    c = _train_in_fresh_process(tmp_path/'c', 1, 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)     # bitwise identical tensors
    assert not all(torch.equal(a[k], c[k]) for k in a)                           # another seed, another adapter


def test_work_folder_refuses_other_views_and_rank(mv, tmp_path):
    cfg = DreamBoothConfig(steps=3, batch_size=2, preview_prompt='')
    train_3dreambooth(_bb(), mv, cfg, tmp_path/'w', progress=False)
    other = mv.subset(slice(0, 6))
    with pytest.raises(WorkFolderError, match=r'inputs.views.*new folder.*overwrite=True'):
        train_3dreambooth(_bb(), other, cfg, tmp_path/'w', progress=False)
    with pytest.raises(WorkFolderError, match='config.rank'):
        train_3dreambooth(_bb(), mv, DreamBoothConfig(steps=3, batch_size=2, preview_prompt='', rank=4), tmp_path/'w', progress=False)
    with pytest.raises(WorkFolderError, match='config.seed'):
        train_3dreambooth(_bb(), mv, DreamBoothConfig(steps=3, batch_size=2, preview_prompt='', seed=5), tmp_path/'w', progress=False)
    other_bb = ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=1)
    with pytest.raises(WorkFolderError, match='inputs.backbone'):
        train_3dreambooth(other_bb, mv, cfg, tmp_path/'w', progress=False)
    log = train_3dreambooth(_bb(), other, cfg, tmp_path/'w', progress=False, overwrite=True)
    assert log['steps_this_call'] == 3 and log['resumed_from'] == 0


def test_legacy_checkpoint_rank_mismatch_is_a_clear_error(mv, tmp_path):
    cfg = DreamBoothConfig(steps=3, batch_size=2, preview_prompt='')
    train_3dreambooth(_bb(), mv, cfg, tmp_path/'w', progress=False)
    (tmp_path/'w'/'work.json').unlink()                          # a folder made before records existed
    with pytest.raises(WorkFolderError, match='no record'):
        train_3dreambooth(_bb(), mv, cfg, tmp_path/'w', progress=False)
    from dreamvid_lib.train import AdapterState, load_checkpoint
    b = _bb(); add_lora(b, '3db', rank=4)
    with pytest.raises(ConfigError, match='another shape.*rank'):
        AdapterState(b, ['3db']).load_state_dict(load_checkpoint(tmp_path/'w'/'checkpoint.pt')['model'])


def test_fewer_steps_than_the_checkpoint_warns_and_saves(mv, tmp_path):
    train_3dreambooth(_bb(), mv, DreamBoothConfig(steps=5, batch_size=2, preview_prompt=''), tmp_path/'w', progress=False)
    with pytest.warns(UserWarning, match='already holds 5 steps'):
        log = train_3dreambooth(_bb(), mv, DreamBoothConfig(steps=3, batch_size=2, preview_prompt=''), tmp_path/'w',
                                out_dir=tmp_path/'a', progress=False)
    assert log['steps_this_call'] == 0 and log['trained_steps'] == 5
    meta = json.loads((tmp_path/'a'/'adapter_config.json').read_text())['train_config']
    assert meta['trained_steps'] == 5 and (tmp_path/'a'/'pytorch_lora_weights.safetensors').exists()


def test_timings_after_resume_and_strict_json(mv, tmp_path):
    cfg = DreamBoothConfig(steps=6, batch_size=2, checkpoint_every=2, preview_prompt='')
    first = train_3dreambooth(_bb(), mv, cfg, tmp_path/'w', progress=False, stop_after=4)
    second = train_3dreambooth(_bb(), mv, cfg, tmp_path/'w', progress=False)
    assert second['resumed_from'] == 4 and second['seconds_total'] > second['seconds'] > 0
    assert second['seconds_total'] >= first['seconds'] * 0.5
    third = train_3dreambooth(_bb(), mv, cfg, tmp_path/'w', progress=False)       # nothing left: no NaN anywhere
    assert third['steps_this_call'] == 0 and third['step_seconds'] > 0
    from dreamvid_lib.core import save_json
    p = save_json(tmp_path/'r.json', {**{k: v for k, v in third.items() if k != 'previews'}, 'x': float('nan')})
    json.loads(p.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
