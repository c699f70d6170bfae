"""3Dapter: per-token routing of the two LoRA branches, the dual-branch forward, joint training (kill and resume),
the router processor, TAB / ERAE, and the bad-input errors."""
import numpy as np
import pytest
import torch
from peft.utils import get_peft_model_state_dict

from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
from dreamvid_lib.pretrain import caption_vocabulary
from dreamvid_lib.adapters import add_lora, adapter_parameters, save_adapter, load_adapter
from dreamvid_lib.references import activate_branches, joint_velocity, references, ReferenceLayout
from dreamvid_lib.dapter import (JointConfig, train_joint, conditioning_views, ConditionedViewBatches, JointFlowLoss,
                                 iterations_to_match)
from dreamvid_lib.generate import generate, tab_bias
from dreamvid_lib.router import install_probe, mass_array, routing_accuracy, entity_token_index, entity_region
from dreamvid_lib.multiview import from_views
from dreamvid_lib.core import ConfigError
from dreamvid_lib import toyworld as tw


def _bb(layers=1, seed=0): return ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=layers), seed=seed)


def _two(layers=2, scale=0.05):
    bb = _bb(layers); add_lora(bb, '3db'); add_lora(bb, '3dapter'); activate_branches(bb.transformer)
    with torch.no_grad():
        for n, p in bb.transformer.named_parameters():
            if 'lora_B' in n: p.add_(scale * torch.randn_like(p))
    return bb


@pytest.fixture(scope='module')
def mv(): return from_views(tw.multiview_set(tw.heldout_subjects(1)[0], n_views=8, res=32, seed=0))


def test_zero_adapters_equal_base():
    bb = _bb(2); add_lora(bb, '3db'); add_lora(bb, '3dapter'); activate_branches(bb.transformer)
    lat, refs, e = torch.randn(1, 3, 2, 32, 32), torch.randn(1, 3, 2, 32, 32), bb.encode_prompt('a video of a red mug')
    with torch.no_grad():
        a = joint_velocity(bb, lat, torch.tensor([.6]), e, refs)
        bb.transformer.disable_adapters(); b = joint_velocity(bb, lat, torch.tensor([.6]), e, refs); bb.transformer.enable_adapters()
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('module', ['blocks.0.attn1.to_q', 'blocks.0.ffn.net.2', 'blocks.1.attn1.to_out.0'])
def test_each_adapter_gets_gradients_only_from_its_own_tokens(module):
    bb = _two()
    layer = bb.transformer.get_submodule(module)
    d_in = layer.in_features
    h = torch.randn(1, 5 * 64, d_in)
    for part, own, other in (('target', '3db', '3dapter'), ('reference', '3dapter', '3db')):
        bb.transformer.zero_grad()
        for p in adapter_parameters(bb, '3db') + adapter_parameters(bb, '3dapter'): p.requires_grad_(True)
        with references(bb.transformer, ReferenceLayout(2, 3)):
            out = layer(h)
        sel = slice(0, 128) if part == 'target' else slice(128, None)
        out[:, sel].pow(2).sum().backward()
        assert layer.lora_A[own].weight.grad.abs().sum() > 0
        g = layer.lora_A[other].weight.grad
        assert g is None or g.abs().sum() == 0, f'{other} got gradient from {part} tokens in {module}'


def test_whole_model_routing_reference_branch_only_through_references():
    "With the loss on target outputs, 3dapter still learns (through joint attention on reference keys/values); without references it is silent."
    bb = _two()
    lat, refs, e = torch.randn(1, 3, 2, 32, 32), torch.randn(1, 3, 2, 32, 32), bb.encode_prompt('a video of a red mug')
    for p in adapter_parameters(bb, '3dapter'): p.requires_grad_(True)
    joint_velocity(bb, lat, torch.tensor([.6]), e, refs).pow(2).mean().backward()
    assert sum(p.grad.abs().sum() for p in adapter_parameters(bb, '3dapter') if p.grad is not None) > 0
    bb.transformer.zero_grad()
    joint_velocity(bb, lat, torch.tensor([.6]), e, None).pow(2).mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in adapter_parameters(bb, '3dapter'))


def test_reference_timesteps_are_zero_and_outputs_dropped():
    bb = _two()
    seen = {}
    orig = bb.predict_velocity
    def spy(x, s, t, attention_kwargs=None):
        seen['x'], seen['s'] = x.shape, s.clone(); return orig(x, s, t, attention_kwargs)
    bb.predict_velocity = spy
    with torch.no_grad(): v = joint_velocity(bb, torch.randn(2, 3, 3, 32, 32), torch.tensor([.5, .9]), bb.encode_prompt(['a video'] * 2), torch.randn(2, 3, 2, 32, 32))
    assert v.shape == (2, 3, 3, 32, 32) and seen['x'] == (2, 3, 5, 32, 32)
    assert torch.all(seen['s'][:, 3 * 64:] == 0) and torch.allclose(seen['s'][0, :192], torch.tensor(.5))


def test_layouts_and_rope_indices():
    assert ReferenceLayout(8, 4, 'official').temporal_index()[8:] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match='unknown reference layout'): ReferenceLayout(8, 4, 'other')
    bb = _two()
    x = (torch.randn(1, 3, 2, 32, 32), torch.tensor([.5]), bb.encode_prompt('a video'), torch.randn(1, 3, 2, 32, 32))
    with torch.no_grad():
        a = joint_velocity(bb, *x, mode='sequential'); b = joint_velocity(bb, *x, mode='official')
    assert not torch.allclose(a, b)                                    # the temporal index matters


def test_bad_inputs(mv):
    bb = _two()
    with pytest.raises(ConfigError, match="video's size"):
        joint_velocity(bb, torch.randn(1, 3, 2, 32, 32), torch.tensor([.5]), bb.encode_prompt('a video'), torch.randn(1, 3, 2, 16, 16))
    with pytest.raises(ConfigError, match='K=9'): conditioning_views(mv, 9)
    with pytest.raises(ConfigError, match='square RGB'): ConditionedViewBatches(mv, np.zeros((4, 16, 12, 3), np.float32))
    with pytest.raises(ConfigError, match='references'): generate(bb, 'a video of a mug', 0, steps=1, tab=True)
    with pytest.raises(ConfigError, match='resize the references'):
        generate(bb, 'a video of a mug', 0, steps=1, references=np.zeros((2, 16, 16, 3), np.float32))


def test_3dapter_from_another_backbone_is_refused(tmp_path):
    bb = _bb(1); add_lora(bb, '3dapter'); save_adapter(bb, '3dapter', tmp_path/'d')
    other = _bb(2)
    with pytest.raises(ConfigError, match='trained on backbone'): load_adapter(other, tmp_path/'d')
    with pytest.raises(ConfigError, match='trained on backbone'): train_joint(other, None, JointConfig(steps=1), dapter=tmp_path/'d')


def test_joint_kill_and_resume(mv, tmp_path):
    cfg = JointConfig(steps=6, batch_size=2, checkpoint_every=2, preview_every=0, k=3)
    a = _bb(); train_joint(a, mv, cfg, dapter='random', work_dir=tmp_path/'full', progress=False)
    b = _bb(); train_joint(b, mv, cfg, dapter='random', work_dir=tmp_path/'cut', progress=False, stop_after=4)
    b = _bb(); log = train_joint(b, mv, cfg, dapter='random', work_dir=tmp_path/'cut', progress=False)
    assert log['steps_this_call'] == 2
    for n in ('3db', '3dapter'):
        sa, sb = get_peft_model_state_dict(a.transformer, adapter_name=n), get_peft_model_state_dict(b.transformer, adapter_name=n)
        for k in sa: assert torch.allclose(sa[k], sb[k], atol=1e-6), (n, k)


def test_router_capture_is_exact_and_sums_to_at_most_one():
    bb = _two()
    lat, refs, e = torch.randn(2, 3, 3, 32, 32), torch.randn(2, 3, 2, 32, 32), bb.encode_prompt(['a video of a red mug'] * 2)
    with torch.no_grad(): plain = joint_velocity(bb, lat, torch.tensor([.7, .3]), e, refs)
    probe = install_probe(bb.transformer)
    probe.reset(ReferenceLayout(3, 2), 64, capture=True)
    with torch.no_grad(): cap = joint_velocity(bb, lat, torch.tensor([.7, .3]), e, refs)
    assert torch.allclose(plain, cap, atol=1e-5)
    m = mass_array(probe.records, cond_only=False)
    assert m.shape == (1, 2, 2, 4, 3, 2) and (m >= 0).all() and (m.sum(-1) <= 1 + 1e-5).all()
    probe.finish()


def test_router_mass_equals_dense_softmax_with_biases():
    import math
    import torch.nn.functional as F
    from dreamvid_lib.router import rotary
    from dreamvid_lib.references import references
    bb = _two(); probe = install_probe(bb.transformer)
    blk = bb.transformer.blocks[1].attn1
    h, rot = torch.randn(1, 5 * 64, 128), bb.transformer.rope(torch.zeros(1, 3, 5, 32, 32))
    probe.reset(ReferenceLayout(3, 2), 64, capture=True)
    probe.ref_bias = 0.3
    with torch.no_grad(), references(bb.transformer, ReferenceLayout(3, 2)):
        blk(h, None, None, rot)
        q = rotary(blk.norm_q(blk.to_q(h)).unflatten(2, (4, -1)), *rot).transpose(1, 2)
        k = rotary(blk.norm_k(blk.to_k(h)).unflatten(2, (4, -1)), *rot).transpose(1, 2)
    bias = torch.zeros(320, 320); bias[:192, 192:] = 0.3
    pr = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias, -1)[:, :, :192, 192:]
    want = pr.unflatten(-1, (2, 64)).sum(-1)                                   # [1, H, 192, K]
    rec = probe.records[-1]
    assert torch.allclose(rec['frames'], want.unflatten(2, (3, 64)).mean(3), atol=1e-5)
    assert torch.allclose(rec['tokens'], want.mean(1), atol=1e-5)
    probe.finish()


def test_generation_with_references_tab_erae_and_capture():
    bb = _two()
    refs = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    a = generate(bb, 'a video of a red mug rotating clockwise', 0, steps=3, references=refs)
    b = generate(bb, 'a video of a red mug rotating clockwise', 0, steps=3, references=refs, tab=True, erae=True, capture=True)
    assert a.shape == b.shape == (1, 8, 32, 32, 3) and not torch.allclose(a, b)
    probe = install_probe(bb.transformer)
    assert mass_array(probe.records).shape[:2] == (3, 2) and probe.layout is None   # finished: biases off
    c = generate(bb, 'a video of a red mug rotating clockwise', 0, steps=3, references=refs)
    assert torch.allclose(a, c)                                        # nothing left switched on


def test_tab_and_erae_formulas():
    assert tab_bias(500) == pytest.approx(np.tanh(0.1)) and tab_bias(0) == pytest.approx(np.tanh(-9.9))
    assert tab_bias(1000) == pytest.approx(tab_bias(0)) and tab_bias(250) > tab_bias(100)
    bb = _bb()
    assert entity_token_index(bb.tokenizer, 'a video of a red mug rotating clockwise') == 5
    with pytest.raises(ConfigError, match='not in the prompt'): entity_token_index(bb.tokenizer, 'a video of a mug', 'lamp')
    m = torch.tensor([[0.0, 0.05, 1.0, 0.5, 2.0, 0.1, 0.3, 0.0]])
    assert entity_region(m, 2, 0.1).tolist() == [[False, False, True, True, True, False, True, False]]


def test_routing_accuracy_and_iterations_to_match():
    m = np.zeros((1, 1, 1, 1, 3, 3))
    for f, v in enumerate([2, 0, 1]): m[..., f, v] = 1
    assert routing_accuracy(m, [[240, 10, 100]], [0, 120, 240]) == 1.0
    assert routing_accuracy(m, [[0, 120, 240]], [0, 120, 240]) == 0.0
    import pandas as pd
    conv = pd.DataFrame([{'method': m, 'subject': 's', 'step': st, 'psnr': p} for m, st, p in
                         [('3db', 100, 8), ('3db', 200, 10), ('joint', 100, 9), ('joint', 200, 11)]])
    t = iterations_to_match(conv).set_index('method')
    assert t.loc['joint', 'iterations_to_match'] == 200 and t.loc['3db', 'iterations_to_match'] == 200


def test_views_of_another_size_train_joint_as_they_train_3dreambooth(tmp_path):
    # issue 14: ViewBatches resized a 64-px set to the model's 32 px but ConditionedViewBatches refused it
    big = from_views(tw.multiview_set(tw.heldout_subjects(1)[0], n_views=6, res=64, seed=0))
    b = ConditionedViewBatches(big, big.images[:3], batch_size=2, resolution=32)
    video, caps, refs = b(0, torch.Generator().manual_seed(0))
    assert video.shape[2:] == refs.shape[2:] == (32, 32, 3)
    log = train_joint(_bb(), big, JointConfig(steps=2, batch_size=2, preview_every=0, k=3), dapter='random',
                      work_dir=tmp_path/'w', progress=False)
    assert log['trained_steps'] == 2


def test_joint_work_folder_refuses_another_subject_or_dapter(mv, tmp_path):
    from dreamvid_lib.core import WorkFolderError
    cfg = JointConfig(steps=2, batch_size=2, preview_every=0, k=3)
    train_joint(_bb(), mv, cfg, dapter='random', work_dir=tmp_path/'w', progress=False)
    other = from_views(tw.multiview_set(tw.heldout_subjects(2)[1], n_views=8, res=32, seed=0))
    with pytest.raises(WorkFolderError, match='inputs.views'):
        train_joint(_bb(), other, cfg, dapter='random', work_dir=tmp_path/'w', progress=False)
    d = _bb(); add_lora(d, '3dapter'); save_adapter(d, '3dapter', tmp_path/'d')
    with pytest.raises(WorkFolderError, match='adapter_init.3dapter'):
        train_joint(_bb(), mv, cfg, dapter=tmp_path/'d', work_dir=tmp_path/'w', progress=False)   # a pre-trained one, not random
    a = _bb(); train_joint(a, mv, cfg, dapter='random', work_dir=tmp_path/'a', progress=False)
    b = _bb(); train_joint(b, mv, cfg, dapter='random', work_dir=tmp_path/'b', progress=False)
    for n in ('3db', '3dapter'):
        sa, sb = get_peft_model_state_dict(a.transformer, adapter_name=n), get_peft_model_state_dict(b.transformer, adapter_name=n)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)                                # seeded initialisation


def test_corrupt_or_missing_dapter_is_refused_before_training(mv, tmp_path):
    import shutil
    from dreamvid_lib.dapter import check_dapter
    from dreamvid_lib.core import AssetError
    d = tmp_path/'d'; shutil.copytree(check_dapter(), d)
    w = d/'pytorch_lora_weights.safetensors'; w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r'pytorch_lora_weights.safetensors is not a valid .safetensors file.*truncated or corrupt'):
        train_joint(_bb(), mv, JointConfig(steps=2), dapter=d, work_dir=tmp_path/'w', progress=False)
    assert not (tmp_path/'w').exists()                                    # refused before any work folder was made
    with pytest.raises(AssetError, match='not found'): check_dapter(tmp_path/'missing')
    with pytest.raises(AssetError, match='not an adapter folder'): check_dapter(tmp_path)
