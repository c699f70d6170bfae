"""The toy feature encoder's training on the shared engine (nbs/09a_features, `train.train_loop`): a killed run resumes
to the weights of an unbroken one, a checkpoint made with other settings is refused by name, and the engine reproduces
the encoder's own former loop step for step (so `assets/toy_features` is reproducible bit for bit)."""
import numpy as np, torch, pytest
from dreamvid_lib import toyworld as tw
from dreamvid_lib.core import ConfigError
from dreamvid_lib.features import train_toy_features, ToyFeatureNet, _augment, _multi_positive_nce
from dreamvid_lib.metrics import train_toy_features as reexported

@pytest.fixture(scope='module')
def rings():
    subjects = [tw.subject_from_seed(i) for i in range(8)]
    rgba = np.stack([np.concatenate([np.round(v.rgb * 255), np.round(v.alpha[..., None] * 255)], -1).astype(np.uint8)
                     for v in (tw.render_ring(s, n=4, res=16) for s in subjects)])
    return rgba, subjects

def _same(a, b): return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

def test_kill_and_resume_gives_the_same_weights(rings, tmp_path):
    kw = dict(steps=8, batch=4, lr=3e-3, checkpoint_every=3, progress=False)
    full, flog = train_toy_features(*rings, work_dir=tmp_path/'full', **kw)
    _, part = train_toy_features(*rings, work_dir=tmp_path/'killed', stop_after=5, **kw)     # last checkpoint: step 3
    resumed, rlog = train_toy_features(*rings, work_dir=tmp_path/'killed', **kw)
    assert (part['steps_this_call'], rlog['resumed_from'], rlog['trained_steps']) == (5, 3, 8)
    assert _same(full, resumed)
    assert rlog['loss_image'] == flog['loss_image'] and rlog['loss_text'] == flog['loss_text']
    torch.manual_seed(0)
    assert not _same(full, ToyFeatureNet(16, 64, res=16))                                       # it did train

def test_a_checkpoint_made_with_other_settings_is_refused_by_name(rings, tmp_path):
    kw = dict(steps=3, batch=4, progress=False)
    train_toy_features(*rings, work_dir=tmp_path, **kw)
    with pytest.raises(ConfigError, match=r'keep_word: 0\.6 -> 0\.5'): train_toy_features(*rings, work_dir=tmp_path, **{**kw, 'keep_word': 0.5})
    with pytest.raises(ConfigError, match=r'temperature: 0\.1 -> 0\.2'): train_toy_features(*rings, work_dir=tmp_path, **{**kw, 'temperature': 0.2})
    with pytest.raises(ConfigError, match=r'steps: 3 -> 5'):                                   # one-cycle: fixed length
        train_toy_features(*rings, work_dir=tmp_path, **{**kw, 'steps': 5})
    _, log = train_toy_features(*rings, work_dir=tmp_path, **{**kw, 'checkpoint_every': 1})    # a resumable setting
    assert (log['resumed_from'], log['steps_this_call']) == (3, 0)

def _former_loop(rgba, subjects, steps, batch, lr, width=16, dim=64, temperature=0.1, seed=0):
    "The encoder's own loop before it moved onto `train_loop` (the one that trained assets/toy_features), verbatim."
    torch.manual_seed(seed); g = torch.Generator().manual_seed(seed); rng = np.random.default_rng(seed)
    net = ToyFeatureNet(width, dim, res=rgba.shape[2]).train()
    words = np.array([[net.vocab[s.cls], net.vocab[s.colour], net.vocab[s.material], net.vocab[s.detail]] for s in subjects])
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    B = min(batch, len(rgba)); losses = []
    for _ in range(steps):
        s = rng.choice(len(rgba), B, replace=False)
        v = np.stack([rng.choice(rgba.shape[1], 2, replace=False) for _ in range(B)])
        x = rgba[s[None], v.T][..., :3]
        x = torch.from_numpy(x.reshape(2 * B, *x.shape[2:])).permute(0, 3, 1, 2).float() / 255
        e = net.encode_image(_augment(x, g))
        lab = torch.from_numpy(np.r_[s, s]); eye = torch.eye(2 * B, dtype=torch.bool)
        pos = (lab[:, None] == lab[None]) & ~eye
        l_img = _multi_positive_nce((e @ e.T / temperature).masked_fill(eye, -1e9), pos, 1)
        keep = rng.random((B, 4)) < 0.6; keep[np.arange(B), rng.integers(0, 4, B)] = True
        ids = torch.from_numpy(np.concatenate([w[k] for w, k in zip(words[s], keep)]))
        offsets = torch.from_numpy(np.r_[0, np.cumsum(keep.sum(1))[:-1]])
        t = net.encode_text(ids, offsets)
        A = words[s]; match = torch.from_numpy(((A[:, None] == A[None]) | ~keep[None]).all(-1))
        lg = net.logit_scale.exp().clamp(max=100) * e[:B] @ t.T
        l_txt = (_multi_positive_nce(lg, match, 0) + _multi_positive_nce(lg, match, 1)) / 2
        loss = l_img + l_txt
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        losses.append((l_img.item(), l_txt.item()))
    return net.eval(), losses

def test_the_engine_reproduces_the_former_loop_bit_for_bit(rings):
    kw = dict(steps=12, batch=6, lr=3e-3)
    ref, ref_losses = _former_loop(*rings, **kw)
    net, log = reexported(*rings, progress=False, **kw)                                       # through the metrics re-export
    assert list(zip(log['loss_image'], log['loss_text'])) == ref_losses
    assert _same(ref, net)


def test_a_run_whose_warm_up_is_one_step_trains(rings, tmp_path):
    "10 steps at pct_start 0.1 (and 20 at 0.05): PyTorch's OneCycleLR divided by zero; any step count trains now."
    for steps, pct in ((10, 0.1), (20, 0.05), (1, 0.1), (2, 1.0)):
        _, log = train_toy_features(*rings, steps=steps, pct_start=pct, batch=4, progress=False)
        assert log['trained_steps'] == steps and all(np.isfinite(log['loss_image']))

def test_the_config_is_the_shared_one_cycle_config_with_the_former_settings():
    "ToyFeaturesConfig extends train.OneCycleConfig; its stored settings (what a checkpoint is checked against) are the former ones."
    from dataclasses import asdict
    from dreamvid_lib.features import ToyFeaturesConfig
    from dreamvid_lib.train import OneCycleConfig, OneCycleSchedule
    assert asdict(ToyFeaturesConfig()) == {
        'steps': 1200, 'lr': 1e-3, 'warmup': 0, 'weight_decay': 1e-4, 'grad_clip': 0.0, 'sigma_sampling': 'uniform',
        'logit_mean': 0.0, 'logit_std': 1.0, 'checkpoint_every': 200, 'seed': 0, 'mixed_precision': 'no', 'pct_start': 0.1,
        'batch': 128, 'width': 16, 'dim': 64, 'temperature': 0.1, 'keep_word': 0.6}
    assert issubclass(ToyFeaturesConfig, OneCycleConfig) and ToyFeaturesConfig.resumable == ('checkpoint_every',)
    assert isinstance(ToyFeaturesConfig().make_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])), OneCycleSchedule)
