"""The real Wan 2.1 path, offline: a tiny random pipeline saved in the Wan-AI diffusers layout and loaded back through
`load_backbone('wan', dir)`; codec, text, GPU options on the CPU, LoRA interoperability, the whole pipeline, the CLI."""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from diffusers import WanPipeline
from dreamvid_lib.core import AssetError, ConfigError, PromptError
from dreamvid_lib.backbones import load_backbone
from dreamvid_lib.wan import (WanBackbone, make_tiny_wan, resolve_wan_weights, comfy_key, export_comfy_lora,
                              latent_frame_pixels, WAN_MODEL_ID)
from dreamvid_lib.adapters import add_lora, save_adapter, load_adapter
from dreamvid_lib.references import activate_branches, joint_velocity
from dreamvid_lib.generate import generate


@pytest.fixture(scope='module')
def wan_dir(tmp_path_factory):
    return make_tiny_wan(tmp_path_factory.mktemp('wan')/'tiny', seed=0)


@pytest.fixture
def bb(wan_dir):
    return load_backbone('wan', wan_dir)


def test_layout_and_loading(wan_dir, bb):
    for part in ('model_index.json', 'text_encoder', 'tokenizer', 'vae', 'transformer', 'scheduler'):
        assert (wan_dir/part).exists(), part
    assert json.loads((wan_dir/'model_index.json').read_text())['_class_name'] == 'WanPipeline'
    pipe = WanPipeline.from_pretrained(wan_dir)                       # the diffusers pipeline reads the same folder
    assert isinstance(bb, WanBackbone) and bb.name == 'wan'
    torch.testing.assert_close(pipe.transformer.state_dict()['proj_out.weight'], bb.transformer.state_dict()['proj_out.weight'])
    assert (bb.codec.spatial_factor, bb.codec.temporal_factor, bb.shift) == (8, 4, 3.0)
    assert type(bb.sampling_scheduler()).__name__ == 'UniPCMultistepScheduler'
    assert type(load_backbone('wan', wan_dir, sampler='euler').sampling_scheduler()).__name__ == 'FlowMatchEulerDiscreteScheduler'


def test_missing_weights_messages(tmp_path):
    with pytest.raises(AssetError) as e: load_backbone('wan', tmp_path/'absent')
    assert 'huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir' in str(e.value)
    assert 'text_encoder/' in str(e.value)
    with pytest.raises(AssetError, match='lack model_index.json'): resolve_wan_weights(tmp_path)
    with pytest.raises(AssetError, match='not in the local Hugging Face cache'): resolve_wan_weights(WAN_MODEL_ID)
    with pytest.raises(ConfigError, match="'toy', 'wan' and 'hunyuan'"): load_backbone('sora')


def test_codec_causal_frames(bb):
    R = bb.config.resolution
    v = torch.rand(2, 9, R, R, 3)
    lat = bb.encode_video(v)
    assert lat.shape == (2, 4, 3, R // 8, R // 8) and lat.dtype == torch.float32
    assert [bb.latent_frames(f) for f in (1, 5, 81)] == [1, 2, 21]
    with pytest.raises(ConfigError, match='use 5 or 9'): bb.latent_frames(8)
    one = bb.encode_video(v[:, :1])                                    # an image is one latent frame ...
    assert one.shape[2] == 1
    torch.testing.assert_close(one[:, :, 0], lat[:, :, 0], atol=1e-5, rtol=1e-4)   # ... and the causal VAE encodes frame 0 alone
    assert bb.decode_latents(lat).shape == (2, 9, R, R, 3)
    # normalisation with latents_mean / latents_std from the VAE config
    c = bb.codec.vae.config
    raw = bb.codec.vae.encode(v[:1].permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.mode()
    ref = (raw - torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1)) / torch.tensor(c.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(lat[:1], ref, atol=1e-5, rtol=1e-4)
    assert latent_frame_pixels(bb.codec, 9) == [0, 4, 8]


def test_81_frames_decode(bb):
    lat = torch.randn(1, 4, 21, 2, 2)                                  # 16x16 px, 81 frames: cheap but the real length
    assert bb.decode_latents(lat).shape == (1, 81, 16, 16, 3)


def test_latent_cache(bb):
    R = bb.config.resolution
    imgs = torch.rand(3, 1, R, R, 3)
    a = bb.encode_video(imgs)
    h = bb.codec.cache.hits
    b = bb.encode_video(imgs[[2, 0]])
    assert bb.codec.cache.hits == h + 2
    torch.testing.assert_close(b, a[[2, 0]])


def test_text(bb):
    e = bb.encode_prompt(['a video of a sks mug', ''], allow_empty=True)
    assert e.shape == (2, bb.config.max_text_length, 32)
    n = bb.check_prompt('a video of a sks mug')
    assert (e[0, n:] == 0).all() and (e[0, :n] != 0).any()             # zero past the prompt, as WanPipeline
    with pytest.raises(PromptError, match='empty prompt'): bb.encode_prompt('')
    with pytest.raises(PromptError, match='Wan reads at most 32'): bb.encode_prompt('a video ' * 20)
    bb.encode_prompt('a zebra of words the toy never saw')           # no vocabulary check (unknown words → <unk> here)
    h = bb.text_cache.hits
    torch.testing.assert_close(bb.encode_prompt('a video of a sks mug')[0], e[0])
    assert bb.text_cache.hits == h + 1
    bb.train()
    assert bb.transformer.training and not bb.text_encoder.training and not bb.codec.vae.training


def _joint_grads(backbone):
    backbone.train()
    for p in backbone.transformer.parameters(): p.grad = None
    g = torch.Generator().manual_seed(0)
    x, refs = torch.randn(1, 4, 1, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    v = joint_velocity(backbone, x, torch.tensor([0.7]), backbone.encode_prompt('a video of a sks mug'), refs)
    v.square().mean().backward()
    backbone.eval()
    return {n: p.grad.clone() for n, p in backbone.transformer.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_with_routing(bb):
    add_lora(bb, '3db'); add_lora(bb, '3dapter')
    with torch.no_grad():
        for n, p in bb.transformer.named_parameters():
            if 'lora_B' in n: p.normal_(0, 0.1)
    activate_branches(bb.transformer, ['3db', '3dapter'])
    plain = _joint_grads(bb)
    bb.enable_gradient_checkpointing()
    assert all(b.gradient_checkpointing for b in [bb.transformer])
    ck = _joint_grads(bb)
    assert sorted(plain) == sorted(ck) and any('3dapter' in n for n in plain)
    for n in plain: torch.testing.assert_close(ck[n], plain[n], atol=1e-5, rtol=1e-4)


def test_bf16(wan_dir, bb):
    bf = load_backbone('wan', wan_dir, dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and bf.text_encoder.dtype == torch.bfloat16
    assert next(bf.codec.vae.parameters()).dtype == torch.float32
    x = bb.encode_video(torch.rand(1, 5, 32, 32, 3))
    with torch.no_grad():
        v32 = bb.predict_velocity(x, torch.tensor([0.4]), bb.encode_prompt('a video of a red mug'))
        v16 = bf.predict_velocity(x, torch.tensor([0.4]), bf.encode_prompt('a video of a red mug'))
    assert v16.dtype == torch.float32 and ((v16 - v32).norm() / v32.norm()) < 0.05
    ps = add_lora(bf, '3db')
    assert {p.dtype for p in ps} == {torch.float32}
    with torch.no_grad():
        for p in ps: p.normal_(0, 0.05)
    bf.train()
    v = bf.predict_velocity(x, torch.tensor([0.4]), bf.encode_prompt('a video of a red mug'))
    v.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ps)


def test_vae_tiling_and_slicing(bb):
    lat = bb.encode_video(torch.rand(2, 5, 32, 32, 3))
    plain = bb.decode_latents(lat)
    bb.enable_vae_slicing()
    torch.testing.assert_close(bb.decode_latents(lat), plain, atol=1e-5, rtol=1e-4)
    bb.enable_vae_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8, tile_sample_stride_width=8)
    tiled = bb.decode_latents(lat)
    assert tiled.shape == plain.shape and not torch.equal(tiled, plain) and torch.isfinite(tiled).all()
    assert bb.encode_video(torch.rand(1, 5, 32, 32, 3)).shape == (1, 4, 2, 4, 4)


def test_cpu_offload_generation(bb):
    ref = generate(bb, 'a video of a red mug rotating clockwise', seeds=1, steps=3)
    bb.enable_model_cpu_offload('cpu')
    assert bb.device == torch.device('cpu') and bb._offload_hooks
    off = generate(bb, 'a video of a red mug rotating clockwise', seeds=1, steps=3)
    bb.disable_model_cpu_offload()
    assert ref.shape == (1, 5, 32, 32, 3)
    torch.testing.assert_close(off, ref)


def test_comfy_keys():
    assert comfy_key('transformer.blocks.12.attn2.to_v.lora_B.weight') == 'diffusion_model.blocks.12.cross_attn.v.lora_B.weight'
    assert comfy_key('transformer.blocks.0.ffn.net.0.proj.lora_A.weight') == 'diffusion_model.blocks.0.ffn.0.lora_A.weight'
    assert comfy_key('transformer.condition_embedder.text_embedder.linear_1.lora_A.weight') == 'diffusion_model.text_embedding.0.lora_A.weight'
    assert comfy_key('transformer.proj_out.lora_A.weight') == 'diffusion_model.head.head.lora_A.weight'
    with pytest.raises(ConfigError): comfy_key('transformer.blocks.0.norm2.lora_A.weight')


def _out(tr, x, s, text):
    with torch.no_grad(): return tr(x, s * 1000, text, return_dict=False)[0]


@pytest.mark.parametrize('branch', ['3db', '3dapter'])
def test_lora_roundtrip_diffusers_and_comfy(wan_dir, bb, tmp_path, branch):
    add_lora(bb, branch)
    with torch.no_grad():
        for n, p in bb.transformer.named_parameters():
            if f'.{branch}.' in n and 'lora_' in n: p.normal_(0, 0.2)
    adir = save_adapter(bb, branch, tmp_path/f'adapter_{branch}')
    comfy = export_comfy_lora(adir, tmp_path/f'{branch}.safetensors', include_patch_embedding=False)
    keys = list(load_file(comfy))
    assert all(k.startswith('diffusion_model.') for k in keys) and not any('alpha' in k for k in keys)
    full = load_file(export_comfy_lora(adir, tmp_path/f'{branch}_full.safetensors'))
    assert ('diffusion_model.patch_embedding.lora_A.weight' in full) == (branch == '3dapter')   # ComfyUI-only key
    x, s = torch.randn(1, 4, 2, 4, 4), torch.tensor([0.6])
    text = bb.encode_prompt('a video of a sks mug')
    ours = load_backbone('wan', wan_dir); load_adapter(ours, adir)
    assert getattr(ours.transformer, '_dreamvid_router', None) is None  # no routing: the branch acts on every token, as in a pipeline
    if branch == '3dapter':                                            # the ComfyUI file for diffusers drops the patch-embedding LoRA
        for n, p in ours.transformer.named_parameters():
            if 'patch_embedding' in n and 'lora_B' in n: p.data.zero_()
    expect = _out(ours.transformer, x, s, text)
    base = _out(WanPipeline.from_pretrained(wan_dir).transformer, x, s, text)
    assert (expect - base).abs().max() > 1e-3
    for src, kw in ((adir, {'weight_name': 'pytorch_lora_weights.safetensors'}), (comfy, {})):
        if branch == '3dapter' and src == adir: continue              # the diffusers file holds the patch-embedding LoRA too
        pipe = WanPipeline.from_pretrained(wan_dir)
        pipe.load_lora_weights(str(src), **kw)
        torch.testing.assert_close(_out(pipe.transformer, x, s, text), expect, atol=1e-5, rtol=1e-4)


def test_diffusers_file_keeps_alpha(wan_dir, bb, tmp_path):
    add_lora(bb, '3db', rank=4, alpha=16)                                # scale 4: wrong outputs if alpha were lost
    with torch.no_grad():
        for n, p in bb.transformer.named_parameters():
            if 'lora_' in n: p.normal_(0, 0.2)
    adir = save_adapter(bb, '3db', tmp_path/'a')
    pipe = WanPipeline.from_pretrained(wan_dir); pipe.load_lora_weights(str(adir), weight_name='pytorch_lora_weights.safetensors')
    x, s, text = torch.randn(1, 4, 1, 4, 4), torch.tensor([0.3]), bb.encode_prompt('a video of a sks mug')
    bb.eval()
    with torch.no_grad(): ours = bb.predict_velocity(x, s, text)
    torch.testing.assert_close(_out(pipe.transformer, x, s, text), ours, atol=1e-5, rtol=1e-4)


def test_pipeline_end_to_end(wan_dir, tmp_path):
    from dreamvid_lib import toyworld as tw
    from dreamvid_lib.multiview import from_views
    from dreamvid_lib.dreambooth import DreamBoothConfig, train_3dreambooth
    from dreamvid_lib.dapter import train_joint, JointConfig
    from dreamvid_lib.router import probe_of, mass_array
    bb = load_backbone('wan', wan_dir)
    R = bb.config.resolution
    mv = from_views(tw.multiview_set(tw.heldout_subjects(1, seed=0)[0], n_views=8, res=R, seed=0))
    log = train_3dreambooth(bb, mv, DreamBoothConfig(steps=3, batch_size=2, checkpoint_every=3, preview_every=0),
                            work_dir=tmp_path/'w3', out_dir=tmp_path/'a3', progress=False)
    assert len(log['history']) == 3 and np.isfinite(log['history'][-1]['loss'])
    jl = train_joint(bb, mv, JointConfig(steps=3, batch_size=2, k=4, checkpoint_every=3, preview_every=3),
                     dapter='random', work_dir=tmp_path/'wj', out_dir=tmp_path/'aj', progress=False)
    assert len(jl['previews']) == 1 and jl['previews'][0]['frames'].shape == (5, R, R, 3)   # the preview is a 4k+1 video
    refs = mv.images[jl['conditioning_views']]
    vids = generate(bb, [f'{mv.prompt()} rotating clockwise'] * 2, seeds=[0, 1], steps=2, references=refs, capture=True)
    assert vids.shape == (2, 5, R, R, 3)
    mass = mass_array(probe_of(bb).records)
    assert mass.shape == (2, 2, 2, 2, 2, 4)                            # [steps, layers, B, heads, latent frames, K]
    np.testing.assert_allclose(mass.sum(-1) <= 1 + 1e-5, True)
    # the saved adapters load into a fresh backbone and into WanPipeline
    fresh = load_backbone('wan', wan_dir); load_adapter(fresh, tmp_path/'aj'/'3db'); load_adapter(fresh, tmp_path/'aj'/'3dapter')
    pipe = WanPipeline.from_pretrained(wan_dir); pipe.load_lora_weights(str(tmp_path/'a3'), weight_name='pytorch_lora_weights.safetensors')
    out = pipe('a video of a sks mug', num_frames=5, height=R, width=R, num_inference_steps=2, output_type='pt').frames
    assert out.shape == (1, 5, 3, R, R)


def test_cli_demo_wan(wan_dir, tmp_path, capsys):
    from dreamvid_lib.cli import main
    assert main(['demo', '--backbone', 'wan', '--weights', str(wan_dir), '--fast', '--out', str(tmp_path/'demo')]) == 0
    r = json.loads((tmp_path/'demo'/'report.json').read_text())
    assert r['backbone'] == 'wan' and 0 <= r['router']['routing_accuracy'] <= 1
    assert len(r['router']['frame_azimuths'][0]) == 2                   # per latent frame (5 frames → 2)
    assert (tmp_path/'demo'/'adapter_joint'/'3dapter'/'pytorch_lora_weights.safetensors').exists()
    assert main(['demo', '--backbone', 'wan', '--weights', str(tmp_path/'nope'), '--fast', '--out', str(tmp_path/'d2')]) == 2
    assert 'huggingface-cli download' in capsys.readouterr().err


def test_bench_tiny(tmp_path):
    import subprocess, sys
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root/'benchmarks'/'bench_wan_gpu.py'), '--tiny', '--json', str(tmp_path/'b.json')],
                       capture_output=True, text=True, timeout=600, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path/'b.json').read_text())
    assert {'3db_step_s', 'joint_step_s', 'gen_step_s'} <= set(res['results'])
