"""The one training engine (nbs/04a_train.ipynb) and the drift it fixed: each test below failed before the callers
shared it (DreamBoothConfig's σ settings ignored, checkpoints resumed under other settings, dapter_lr_scale unread)."""
import shutil
import pytest
import torch
from peft.utils import get_peft_model_state_dict

from dreamvid_lib.core import ConfigError
from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
from dreamvid_lib.prompts import caption_vocabulary
from dreamvid_lib.adapters import add_lora
from dreamvid_lib.train import FlowMatchingLoss, TrainConfig, load_checkpoint
from dreamvid_lib.multiview import from_views
from dreamvid_lib.dreambooth import DreamBoothConfig, ViewBatches, train_lora, train_3dreambooth
from dreamvid_lib.dapter import JointConfig, train_joint
from dreamvid_lib.pretrain import PretrainConfig, pretrain
from dreamvid_lib import toyworld as tw


def _bb(): return ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0)


@pytest.fixture(scope='module')
def mv(): return from_views(tw.multiview_set(tw.heldout_subjects(1)[0], n_views=8, res=32, seed=0))


class SigmaSpy(FlowMatchingLoss):
    "The plain loss, recording the σ of every batch."
    def __init__(self, backbone): super().__init__(backbone); self.seen = []
    def forward(self, video, captions, sigmas, noise, *cond):
        self.seen.append(sigmas.clone()); return super().forward(video, captions, sigmas, noise, *cond)


def _sigmas(mv, tmp_path, **kw):
    bb = _bb(); add_lora(bb, '3db'); bb.transformer.set_adapter('3db')
    spy = SigmaSpy(bb)
    cfg = DreamBoothConfig(steps=6, batch_size=8, preview_prompt='', **kw)
    train_lora(bb, ViewBatches(mv, 8), cfg, tmp_path, loss_module=spy, progress=False)
    return torch.cat(spy.seen)


def test_dreambooth_honours_logit_normal_sigma(mv, tmp_path):
    uniform = _sigmas(mv, tmp_path/'u')
    low = _sigmas(mv, tmp_path/'lo', sigma_sampling='logit_normal', logit_mean=-1.5, logit_std=0.5)
    high = _sigmas(mv, tmp_path/'hi', sigma_sampling='logit_normal', logit_mean=1.5, logit_std=0.5)
    assert low.mean() > 0.7 and high.mean() < 0.3          # the σ table runs from 1 down: μ < 0 draws noisy inputs
    assert torch.equal(uniform, _sigmas(mv, tmp_path/'u2'))  # the default stream is unchanged (uniform)


def test_train_lora_refuses_a_checkpoint_made_with_other_settings(mv, tmp_path):
    for name, lr in (('a', 1e-3), ('b', 5e-4)):
        train_3dreambooth(_bb(), mv, DreamBoothConfig(steps=4, batch_size=2, checkpoint_every=2, preview_prompt='', lr=lr),
                          tmp_path/name, progress=False, stop_after=2)
    shutil.copy(tmp_path/'b'/'checkpoint.pt', tmp_path/'a'/'checkpoint.pt')      # a's record, b's checkpoint
    with pytest.raises(ConfigError, match=r'other settings.*lr: 0\.0005 -> 0\.001'):
        train_3dreambooth(_bb(), mv, DreamBoothConfig(steps=4, batch_size=2, checkpoint_every=2, preview_prompt=''),
                          tmp_path/'a', progress=False)
    st = load_checkpoint(tmp_path/'b'/'checkpoint.pt')
    assert st['config']['lr'] == 5e-4 and st['step'] == 2


def test_pretrain_refuses_to_resume_with_other_settings(tmp_path):
    rings = tw.load_ring_dataset(tw.build_ring_dataset(tmp_path/'rings', 2, res=32, workers=1))
    cfg = PretrainConfig(steps=4, checkpoint_every=2, warmup=2, batch_videos=2, batch_images=2)
    small = ToyModelConfig(num_layers=1)
    pretrain(ToyBackbone.create(caption_vocabulary(), small, seed=0), rings, cfg, tmp_path/'w', progress=False, stop_after=2)
    with pytest.raises(ConfigError, match='lr: 0.0008 -> 0.0005'):
        pretrain(ToyBackbone.create(caption_vocabulary(), small, seed=0), rings, PretrainConfig(**{**cfg.__dict__, 'lr': 5e-4}),
                 tmp_path/'w', progress=False)
    log = pretrain(ToyBackbone.create(caption_vocabulary(), small, seed=0), rings, PretrainConfig(**{**cfg.__dict__, 'steps': 5}),
                   tmp_path/'w', progress=False)                     # more steps: a resumable change
    assert log['resumed_from'] == 2 and log['trained_steps'] == 5


def test_joint_reads_dapter_lr_scale(mv, tmp_path):
    def run(scale):
        bb = _bb()
        train_joint(bb, mv, JointConfig(steps=2, batch_size=2, preview_every=0, k=3, dapter_lr_scale=scale), dapter='random',
                    work_dir=tmp_path/str(scale), progress=False)
        return {n: get_peft_model_state_dict(bb.transformer, adapter_name=n) for n in ('3db', '3dapter')}
    init = _bb()
    from dreamvid_lib.dreambooth import seeded_lora
    from dreamvid_lib.dapter import _random_dapter_init
    seeded_lora(init, '3dapter', None, 16, 32, 0, init=_random_dapter_init)
    d0 = get_peft_model_state_dict(init.transformer, adapter_name='3dapter')
    frozen, moved = run(0.0), run(1.0)
    assert all(torch.equal(frozen['3dapter'][k], d0[k]) for k in d0)              # lr × 0: the 3Dapter stays as drawn
    assert not all(torch.equal(moved['3dapter'][k], d0[k]) for k in d0)
    assert any(v.abs().sum() > 0 for k, v in frozen['3db'].items() if 'lora_B' in k)   # while 3db trains


def _one_cycle_lrs(cls, steps, pct_start):
    "Learning rate and Adam β1 of every step of a `steps`-step one-cycle run (and the value after it)."
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = cls(opt, 1e-3, total_steps=steps, pct_start=pct_start)
    out = [(sched.get_last_lr()[0], opt.param_groups[0]['betas'][0])]
    for _ in range(steps): opt.step(); sched.step(); out.append((sched.get_last_lr()[0], opt.param_groups[0]['betas'][0]))
    return out

def test_one_cycle_schedule_runs_any_step_count_and_equals_pytorch_where_pytorch_runs():
    from dreamvid_lib.train import OneCycleSchedule
    crashed = 0
    for steps in range(1, 60):
        for pct in (0.0, 0.05, 0.1, 0.25, 0.5, 1.0):
            ours = _one_cycle_lrs(OneCycleSchedule, steps, pct)                       # never raises
            try: ref = _one_cycle_lrs(torch.optim.lr_scheduler.OneCycleLR, steps, pct)
            except ZeroDivisionError: crashed += 1; continue                          # pct * steps = 1, or pct = 1
            assert ours == ref, (steps, pct)                                          # bit for bit, momentum included
    assert crashed > 0
    lrs = [lr for lr, _ in _one_cycle_lrs(OneCycleSchedule, 10, 0.1)]               # PyTorch: ZeroDivisionError
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-3 / 25 / 1e4)  # warm-up over at step 0
    assert all(a >= b for a, b in zip(lrs[:9], lrs[1:10]))
