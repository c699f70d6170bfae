"""Defects found by reading the code (issue 13, item 6): each test failed before its fix."""
import numpy as np
import pytest
import torch


def test_plot_token_maps_imports_matplotlib():
    "router.plot_token_maps used `plt` without importing it (NameError)."
    from dreamvid_lib import router
    K, hw = 3, (2, 2)
    records = [{'tokens': torch.rand(1, 2 * 4, K), 'layer': 0, 'step': 0}]
    fig = router.plot_token_maps(records, np.random.rand(1, 2, 8, 8, 3), np.random.rand(K, 8, 8, 3), hw, video=0, frame=1)
    assert len(fig.axes) == 2 * (K + 1)


def test_convergence_study_trains_with_the_asked_k(monkeypatch):
    "convergence_study(k=...) trained the joint method with K = 4 whatever k was (then in dapter, now in experiments)."
    from dreamvid_lib import experiments, toyworld as tw
    seen = {}
    class Stop(Exception): pass
    def fake_train_joint(bb, mv, cfg, **kw):
        seen['k'] = cfg.k; raise Stop
    monkeypatch.setattr(experiments, 'train_joint', fake_train_joint)
    with pytest.raises(Stop):
        experiments.convergence_study('toy', None, tw.heldout_subjects(1), max_steps=2, eval_every=1, methods=('joint',), k=2, progress=False)
    assert seen['k'] == 2
