"""OpenLRM loader (nbs/12c_openlrm.ipynb): the release's parameter names, strict loading of a tiny random model saved in
the release's format, shapes and determinism through the LRM interface, and the errors for missing, corrupt, foreign
or renamed files. No released weights are needed (none can be downloaded here); runs in seconds on one CPU thread."""
import json, shutil
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from dreamvid_lib import lrm, openlrm as ol
from dreamvid_lib.core import AssetError, ConfigError

torch.set_num_threads(1)

def tiny(feat=24, **kw):
    "A tiny OpenLRM v1.1 configuration; `feat` = the encoder width (equal to the transformer's 32: packed attention weights)."
    return ol.OpenLRMConfig(**{**dict(camera_embed_dim=16, rendering_samples_per_ray=8, transformer_dim=32, transformer_layers=2,
                                      transformer_heads=2, triplane_low_res=2, triplane_high_res=4, triplane_dim=4, encoder_feat_dim=feat,
                                      image_res=28, encoder_arch={'embed_dim': feat, 'depth': 1, 'num_heads': 2, 'img_size': 42}), **kw})

def release_keys(enc_layers: int, layers: int, packed_cross: bool) -> set:
    """The tensor names of OpenLRM v1.1's `ModelLRM` state dict, written out from its source (modeling_lrm.py, block.py,
    modulate.py, embedder.py, synthesizer.py, dinov2/models/vision_transformer.py with the mask token removed)."""
    k = {'pos_embed', 'upsampler.weight', 'upsampler.bias', 'transformer.norm.weight', 'transformer.norm.bias',
         'camera_embedder.mlp.0.weight', 'camera_embedder.mlp.0.bias', 'camera_embedder.mlp.2.weight', 'camera_embedder.mlp.2.bias',
         'encoder.model.cls_token', 'encoder.model.pos_embed', 'encoder.model.register_tokens',
         'encoder.model.patch_embed.proj.weight', 'encoder.model.patch_embed.proj.bias', 'encoder.model.norm.weight', 'encoder.model.norm.bias'}
    k |= {f'synthesizer.decoder.net.{i}.{p}' for i in (0, 2, 4, 6) for p in ('weight', 'bias')}
    for b in range(enc_layers):
        k |= {f'encoder.model.blocks.{b}.{n}' for n in ('norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight',
              'attn.proj.bias', 'ls1.gamma', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight',
              'mlp.fc2.bias', 'ls2.gamma')}
    for i in range(layers):
        p = f'transformer.layers.{i}.'
        k |= {p + f'norm{j}.{n}' for j in (1, 2, 3) for n in ('norm.weight', 'norm.bias', 'mlp.1.weight', 'mlp.1.bias')}
        k |= {p + n for n in ('self_attn.in_proj_weight', 'self_attn.out_proj.weight', 'cross_attn.out_proj.weight',
                              'mlp.0.weight', 'mlp.0.bias', 'mlp.3.weight', 'mlp.3.bias')}
        k |= {p + 'cross_attn.in_proj_weight'} if packed_cross else {p + f'cross_attn.{q}_proj_weight' for q in 'qkv'}
    return k

@pytest.mark.parametrize('feat', [24, 32])
def test_parameter_names_are_the_releases(feat):
    sd = ol.build_openlrm(tiny(feat)).state_dict()
    assert set(sd) == release_keys(1, 2, packed_cross=feat == 32)
    assert sd['encoder.model.pos_embed'].shape == (1, 1 + 9, feat) and sd['encoder.model.register_tokens'].shape == (1, 4, feat)
    assert sd['upsampler.weight'].shape == (32, 4, 2, 2) and sd['synthesizer.decoder.net.0.weight'].shape == (64, 12)
    assert sd['pos_embed'].shape == (1, 3 * 2 * 2, 32) and sd['transformer.layers.0.norm1.mlp.1.weight'].shape == (64, 16)

def test_released_sizes():
    "The small release's parameter count matches its 446 MB float32 file; base's encoder is ViT-B (768)."
    with torch.device('meta'): small = ol.OpenLRM(ol.OpenLRMConfig())
    n = sum(p.numel() for p in small.parameters())
    assert 440e6 < n * 4 < 452e6, n
    base = ol.OpenLRMConfig(transformer_dim=768, transformer_heads=12, triplane_dim=48, encoder_model_name='dinov2_vitb14_reg',
                            encoder_feat_dim=768).check()
    assert base.image_res == 336 and base.dinov2()['embed_dim'] == 768 and base.dinov2()['num_register_tokens'] == 4

def test_save_load_strict_shapes_determinism(tmp_path):
    m = ol.build_openlrm(tiny(), seed=1)
    ol.save_openlrm(m, tmp_path/'rel')
    cfg = json.loads((tmp_path/'rel'/'config.json').read_text())
    assert cfg['encoder_model_name'] == 'dinov2_vits14_reg' and cfg['transformer_dim'] == 32 and 'encoder_arch' in cfg
    back = ol.load_openlrm(tmp_path/'rel')
    for k, v in m.state_dict().items(): assert torch.equal(v, back.state_dict()[k]), k
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    cam = back.source_camera().expand(2, -1)
    with torch.no_grad():
        planes = back.triplanes(x, cam)
        assert planes.shape == (2, 3, 4, 4, 4)
        assert torch.equal(planes, m.triplanes(x, cam)) and torch.equal(planes, back.triplanes(x, cam))
        c2w = back.view_c2w([0, 90, 180], 20.0)[None].expand(2, -1, -1, -1).float()
        a, b = back.render(planes, c2w, 10), back.render(planes, c2w, 10, chunk=37)
        assert a['rgb'].shape == (2, 3, 10, 10, 3) and a['opacity'].shape == (2, 3, 10, 10) and a['depth'].shape == (2, 3, 10, 10)
        assert torch.allclose(a['rgb'], b['rgb'], atol=1e-6)            # chunking changes nothing
        assert torch.equal(a['rgb'], back.render(planes, c2w, 10)['rgb'])   # deterministic without a generator
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.equal(back.render(planes, c2w, 6, generator=g1)['rgb'], back.render(planes, c2w, 6, generator=g2)['rgb'])
        assert 0 <= float(a['opacity'].min()) and float(a['opacity'].max()) <= 1 + 1e-5
    assert isinstance(ol.load_any_lrm(tmp_path/'rel'), ol.OpenLRM)

def test_missing_and_incomplete_folder_names_the_download(tmp_path):
    with pytest.raises(ol.OpenLRMError, match=r'huggingface-cli download zxhezexin/openlrm-mix-base-1\.1'):
        ol.load_openlrm(tmp_path/'absent')
    ol.save_openlrm(ol.build_openlrm(tiny()), tmp_path/'rel')
    (tmp_path/'rel'/'model.safetensors').unlink()
    with pytest.raises(AssetError, match=r'lacks model\.safetensors.*zxhezexin/openlrm'):
        ol.load_openlrm(tmp_path/'rel')
    with pytest.raises(AssetError, match='--model'):                     # the CLI's loader: neither format there
        ol.load_any_lrm(tmp_path/'absent')

def test_corrupt_foreign_and_renamed_files_fail_loudly(tmp_path):
    ol.save_openlrm(ol.build_openlrm(tiny()), tmp_path/'rel')
    shutil.copytree(tmp_path/'rel', tmp_path/'cut')
    w = tmp_path/'cut'/'model.safetensors'
    w.write_bytes(w.read_bytes()[:-100])                                # truncated download
    with pytest.raises(ConfigError, match=r'not a valid \.safetensors.*huggingface-cli download'): ol.load_openlrm(tmp_path/'cut')
    shutil.copytree(tmp_path/'rel', tmp_path/'badjson')
    (tmp_path/'badjson'/'config.json').write_text('{"transformer_dim": 32,')
    with pytest.raises(ConfigError, match='not readable JSON'): ol.load_openlrm(tmp_path/'badjson')
    shutil.copytree(tmp_path/'rel', tmp_path/'v10')
    c = json.loads((tmp_path/'v10'/'config.json').read_text()); c['encoder_type'] = 'dino'
    (tmp_path/'v10'/'config.json').write_text(json.dumps(c))
    with pytest.raises(ConfigError, match="encoder_type 'dino'"): ol.load_openlrm(tmp_path/'v10')
    shutil.copytree(tmp_path/'rel', tmp_path/'renamed')
    f = tmp_path/'renamed'/'model.safetensors'
    sd = load_file(str(f)); sd['transformer.layers.1.self_attn.in_proj'] = sd.pop('transformer.layers.1.self_attn.in_proj_weight')
    save_file(sd, str(f))
    with pytest.raises(ConfigError, match=r'missing 1 \(transformer\.layers\.1\.self_attn\.in_proj_weight\), unexpected 1'):
        ol.load_openlrm(tmp_path/'renamed')
    shutil.copytree(tmp_path/'rel', tmp_path/'shape')
    f = tmp_path/'shape'/'model.safetensors'
    sd = load_file(str(f)); sd['upsampler.bias'] = torch.zeros(5)
    save_file(sd, str(f))
    with pytest.raises(ConfigError, match=r'wrong shape 1 \(upsampler\.bias\)'): ol.load_openlrm(tmp_path/'shape')
    toy = lrm.LRMConfig(image_res=16, patch=4, dim=32, heads=2, encoder_layers=1, transformer_layers=1, plane_tokens=4,
                        plane_res=8, plane_channels=8, mlp_hidden=16, mlp_layers=1, samples=8)
    lrm.save_lrm(lrm.build_lrm(toy), tmp_path/'toy')                       # a toy folder still goes to lrm.load_lrm
    assert isinstance(ol.load_any_lrm(tmp_path/'toy'), lrm.TinyLRM) and not ol.is_openlrm_folder(tmp_path/'toy')

def test_dinov2_positions_and_registers():
    enc = ol.DinoV2(embed_dim=8, depth=1, num_heads=2, patch_size=14, img_size=56, num_register_tokens=4)
    assert enc.positions(4, 4) is enc.pos_embed
    p = enc.positions(2, 2)
    assert p.shape == (1, 5, 8) and torch.equal(p[:, 0], enc.pos_embed[:, 0])
    with torch.no_grad():                                                  # a constant table stays constant when resized
        enc.pos_embed.fill_(0.5); assert torch.allclose(enc.positions(3, 3), torch.full((1, 10, 8), 0.5), atol=1e-5)
    assert enc(torch.rand(1, 3, 28, 28)).shape == (1, 5, 8)               # [CLS] + 4 patches; registers dropped
    with pytest.raises(lrm.LRMError, match='multiple of the patch'): enc(torch.rand(1, 3, 30, 30))

def test_renderer_closed_forms():
    t = torch.linspace(1, 3, 400)[None]
    out = ol.march_midpoints(torch.full_like(t, 3.0), torch.zeros(1, 400, 3), t)
    assert torch.allclose(out['opacity'], 1 - torch.exp(-torch.nn.functional.softplus(torch.tensor(2.0)) * 2), atol=1e-4)
    o = torch.tensor([[[0., -2, 0], [0., -2, 0], [3., -2, 0]]]); d = torch.nn.functional.normalize(torch.tensor([[[0., 1, 0], [0.3, 1, 0.2], [0., 1, 0]]]), dim=-1)
    ball = lambda p: ((p.norm(dim=-1) < 0.5).float() * 500, torch.full((*p.shape[:-1], 3), 0.2))
    r = ol.render_openlrm_rays(ball, o, d, 64)
    assert r['opacity'][0, 0] > 0.999 and abs(float(r['depth'][0, 0]) - 1.5) < 0.05
    assert float(r['opacity'][0, 2]) == 0 and torch.allclose(r['rgb'][0, 2], torch.ones(3))   # misses the box: background
    miss = torch.linalg.cross(o[0, 1], d[0, 1]).norm()
    assert (r['opacity'][0, 1] > 0.5) == (miss < 0.5)

def test_frames_agree():
    "The interface's input camera, rotated into OpenLRM's frame, is OpenLRM's canonical source camera."
    m = ol.build_openlrm(tiny())
    A = torch.eye(4); A[:3, :3] = ol.YUP_TO_ZUP
    E = ol.openlrm_source_camera()[0, :12].reshape(3, 4)
    assert torch.allclose((A @ m.view_c2w([0.0], 0.0)[0].float())[:3], E, atol=1e-6)
    c = m.view_c2w([30.0, 200.0], [10.0, -20.0]).float()               # OpenLRM's rays = the interface's rays, rotated
    o, d = ol.openlrm_rays(A @ c, 6)
    o2, d2 = lrm.camera_rays(c, 6, ol.openlrm_intrinsics(6))
    assert torch.allclose(d, d2 @ ol.YUP_TO_ZUP.T, atol=1e-6) and torch.allclose(o, o2 @ ol.YUP_TO_ZUP.T, atol=1e-6)
    planes = torch.zeros(1, 3, 4, 4, 4)
    planes[0, 1] = torch.linspace(-1, 1, 4)[None, :, None]                   # only the (x, z) plane, varying along OpenLRM's z
    p = torch.tensor([[[0.1, 0.2, 0.3]]])
    with torch.no_grad():
        f = lambda q: m.field(planes, q)[0]
        assert torch.equal(f(p), f(p + torch.tensor([0.0, 0.0, 0.4])))       # interface z is OpenLRM -y: not on that plane
        assert not torch.equal(f(p), f(p + torch.tensor([0.0, 0.4, 0.0])))   # interface y is OpenLRM z

def test_image_to_3d_with_an_openlrm_folder(tmp_path):
    from PIL import Image
    from dreamvid_lib.cli import main
    ol.save_openlrm(ol.build_openlrm(tiny()), tmp_path/'rel')
    Image.fromarray(np.full((30, 30, 3), 180, np.uint8)).save(tmp_path/'in.png')
    args = ['--res', '8', '--views', '2', '--frames', '2', '--mesh-resolution', '10', '--elevation', '0']
    assert main(['image-to-3d', str(tmp_path/'in.png'), '--out', str(tmp_path/'o'), '--model', str(tmp_path/'rel'), *args]) == 0
    s = json.loads((tmp_path/'o'/'summary.json').read_text())
    assert s['views'] == ['views/view_000.png', 'views/view_180.png'] and (tmp_path/'o'/'orbit.mp4').stat().st_size > 0
    assert main(['image-to-3d', str(tmp_path/'in.png'), '--out', str(tmp_path/'x'), '--model', str(tmp_path/'nothing'), *args]) == 2
    with pytest.raises(lrm.LRMError, match='--subject'):
        lrm.image_to_3d(tmp_path/'in.png', ol.load_openlrm(tmp_path/'rel'), tmp_path/'y', res=8, views=1, frames=1,
                        subject=lrm.tw.subject_from_seed(0, 'heldout'))
