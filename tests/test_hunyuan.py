"""HunyuanVideo-1.5, offline: a tiny random pipeline saved in the Hub layout and loaded back through
`load_backbone('hunyuan', dir)`; per-token timesteps against the stock model, RoPE, routing under checkpointing, LoRA
interoperability (diffusers, ComfyUI, the authors' naming), the whole pipeline and the CLI."""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from diffusers import HunyuanVideo15Pipeline
from dreamvid_lib.core import AssetError, ConfigError, PromptError
from dreamvid_lib.backbones import load_backbone
from dreamvid_lib.hunyuan import (HunyuanBackbone, make_tiny_hunyuan, resolve_hunyuan_weights, token_timesteps, HunyuanFrameIndexRope,
                                  export_comfy_hunyuan_lora, import_authors_lora, original_module_name, diffusers_module_name,
                                  PAPER_PRESET, HUNYUAN_MODEL_ID, full_size_lora_parameters)
from dreamvid_lib.adapters import add_lora, save_adapter, load_adapter
from dreamvid_lib.references import activate_branches, joint_velocity, references, ReferenceLayout
from dreamvid_lib.generate import generate


@pytest.fixture(scope='module')
def hy_dir(tmp_path_factory):
    return make_tiny_hunyuan(tmp_path_factory.mktemp('hy')/'tiny', seed=0)


@pytest.fixture
def bb(hy_dir):
    return load_backbone('hunyuan', hy_dir)


def _stock(bb, lat, t, text, tr=None):
    "The stock transformer called as HunyuanVideo15Pipeline calls it (one timestep per sample)."
    B, C, T, h, w = lat.shape
    x = torch.cat([lat, lat.new_zeros(B, C + 1, T, h, w)], 1)
    img = torch.zeros(B, bb.config.image_tokens, bb.transformer.config.image_embed_dim)
    return (tr or bb.transformer)(hidden_states=x, timestep=t, image_embeds=img, return_dict=False, **bb.unpack_text(text, torch.float32))[0]


def test_layout_and_loading(hy_dir, bb):
    for part in ('model_index.json', 'text_encoder', 'tokenizer', 'text_encoder_2', 'tokenizer_2', 'vae', 'transformer', 'scheduler', 'guider'):
        assert (hy_dir/part).exists(), part
    assert json.loads((hy_dir/'model_index.json').read_text())['_class_name'] == 'HunyuanVideo15Pipeline'
    pipe = HunyuanVideo15Pipeline.from_pretrained(hy_dir)              # the diffusers pipeline reads the same folder
    assert isinstance(bb, HunyuanBackbone) and bb.name == 'hunyuan'
    torch.testing.assert_close(pipe.transformer.state_dict()['proj_out.weight'], bb.transformer.state_dict()['proj_out.weight'])
    assert (bb.codec.spatial_factor, bb.codec.temporal_factor, bb.shift, bb.patch_size) == (8, 4, 5.0, (1, 1, 1))
    sch = bb.sampling_scheduler(); sch.set_timesteps(4)
    ref = pipe.scheduler; ref.set_timesteps(sigmas=np.linspace(1.0, 0.0, 5)[:-1])   # the pipeline's own σ spacing
    torch.testing.assert_close(sch.sigmas, ref.sigmas)
    other = make_tiny_hunyuan(hy_dir.parent/'seed1', seed=1)            # the seed makes a checkpoint it has never seen
    assert not torch.equal(load_file(other/'transformer'/'diffusion_pytorch_model.safetensors')['proj_out.weight'],
                           load_file(hy_dir/'transformer'/'diffusion_pytorch_model.safetensors')['proj_out.weight'])


def test_missing_weights_messages(tmp_path):
    with pytest.raises(AssetError) as e: load_backbone('hunyuan', tmp_path/'absent')
    msg = str(e.value)
    assert f'huggingface-cli download {HUNYUAN_MODEL_ID} --local-dir' in msg and 'text_encoder_2/' in msg and '720p_t2v' in msg
    with pytest.raises(AssetError, match='lack model_index.json'): resolve_hunyuan_weights(tmp_path)
    with pytest.raises(AssetError, match='not in the local Hugging Face cache'): resolve_hunyuan_weights(HUNYUAN_MODEL_ID)


def test_codec_causal_frames(bb):
    R = bb.config.resolution
    v = torch.rand(2, 9, R, R, 3)
    lat = bb.encode_video(v)
    assert lat.shape == (2, 4, 3, R // 8, R // 8) and lat.dtype == torch.float32
    assert [bb.latent_frames(f) for f in (1, 5, 121)] == [1, 2, 31]
    with pytest.raises(ConfigError, match='use 5 or 9'): bb.latent_frames(8)
    one = bb.encode_video(v[:, :1])
    torch.testing.assert_close(one[:, :, 0], lat[:, :, 0], atol=1e-5, rtol=1e-4)   # the causal VAE encodes frame 0 alone
    raw = bb.codec.vae.encode(v[:1].permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(lat[:1], raw * bb.codec.vae.config.scaling_factor, atol=1e-5, rtol=1e-4)
    assert bb.decode_latents(lat).shape == (2, 9, R, R, 3)


def test_text_matches_pipeline(hy_dir, bb):
    pipe = HunyuanVideo15Pipeline.from_pretrained(hy_dir)
    prompts = ['a video of a red mug rotating clockwise', 'a video of a sks mug']
    text = bb.encode_prompt(prompts)
    e1, m1 = pipe._get_mllm_prompt_embeds(pipe.text_encoder, pipe.tokenizer, prompts, 'cpu', tokenizer_max_length=bb.config.max_text_length,
                                          crop_start=bb.config.crop_start)
    u = bb.unpack_text(text, torch.float32)
    torch.testing.assert_close(u['encoder_hidden_states'], e1); assert torch.equal(u['encoder_attention_mask'], m1)
    assert u['encoder_attention_mask_2'].sum() == 0                     # no quoted text: byT5 is masked out
    g = bb.unpack_text(bb.encode_prompt('a sign saying "hello"'), torch.float32)
    assert g['encoder_attention_mask_2'].sum() > 0                      # quoted text goes through byT5
    assert bb.encode_prompt('', allow_empty=True).shape == text[:1].shape
    with pytest.raises(PromptError, match='empty prompt'): bb.encode_prompt('  ')
    with pytest.raises(PromptError, match='at most'): bb.encode_prompt(' '.join(['mug'] * 40))


def test_per_token_timesteps_equal_stock_at_one_t(bb):
    "The wrapper with every token at the same t is the stock model."
    lat, text = torch.randn(2, 4, 2, 4, 4), bb.encode_prompt(['a video of a red mug', 'a video of a sks mug'])
    t = torch.tensor([400.0, 900.0])
    with torch.no_grad():
        stock = _stock(bb, lat, t, text)
        with token_timesteps(bb.transformer, t[:, None].expand(2, 32).contiguous()):
            wrapped = _stock(bb, lat, t, text)
    torch.testing.assert_close(wrapped, stock, atol=1e-6, rtol=1e-6)
    v = bb.predict_velocity(lat, torch.tensor([0.4, 0.9])[:, None].expand(2, 32), text)    # uniform per-token σ: same
    torch.testing.assert_close(v, stock, atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigError, match='per-token timesteps'), torch.no_grad():
        with token_timesteps(bb.transformer, t[:, None].expand(2, 31).contiguous()): _stock(bb, lat, t, text)


def test_reference_modulation_equals_stock_at_t0(bb):
    "Reference tokens are modulated exactly as the stock model modulates a clean (t = 0) input; target tokens as at t."
    tr = bb.transformer
    lat, text = torch.randn(1, 4, 3, 4, 4), bb.encode_prompt('a video of a red mug')
    seen = []
    hs = [tr.transformer_blocks[0].norm1.register_forward_hook(lambda m, a, o: seen.append(o[0].detach().clone())),
          tr.norm_out.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))]
    tpf, nt = 16, 2 * 16                                                # 2 target latent frames, 1 reference frame
    t_tok = torch.cat([torch.full((1, nt), 700.0), torch.zeros(1, tpf)], 1)
    try:
        with torch.no_grad():
            _stock(bb, lat, torch.tensor([0.0]), text); at0 = seen[:]; seen.clear()
            _stock(bb, lat, torch.tensor([700.0]), text); att = seen[:]; seen.clear()
            with token_timesteps(tr, t_tok): _stock(bb, lat, torch.tensor([700.0]), text); mixed = seen[:]
    finally:
        for h in hs: h.remove()
    torch.testing.assert_close(mixed[0][:, nt:], at0[0][:, nt:], atol=1e-6, rtol=1e-5)   # block 0's modulated input: references at t = 0
    torch.testing.assert_close(mixed[0][:, :nt], att[0][:, :nt], atol=1e-6, rtol=1e-5)   # targets at t
    assert not torch.allclose(at0[0][:, nt:], att[0][:, nt:], atol=1e-3)                 # (t matters)
    assert mixed[-1].shape == att[-1].shape


def test_frame_index_rope(bb):
    rope = bb.transformer.rope
    assert isinstance(rope, HunyuanFrameIndexRope)
    x = torch.zeros(1, 9, 5, 4, 4)
    stock = rope.inner(x)
    rope.temporal_index = list(range(5))
    try:
        seq = rope(x)
        for a, b in zip(seq, stock): torch.testing.assert_close(a, b)
        rope.temporal_index = ReferenceLayout(3, 2, 'official').temporal_index()   # [0, 1, 2, 0, 1]
        off = rope(x)
        torch.testing.assert_close(off[0][3 * 16:4 * 16], stock[0][:16])            # reference 0 sits at temporal index 0
    finally: rope.temporal_index = None
    lat, refs, text = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 4, 4), bb.encode_prompt('a video of a sks mug')
    with torch.no_grad():                                               # both layouts run through the joint velocity ...
        seq, off = (joint_velocity(bb, lat, torch.tensor([0.6]), text, refs, mode) for mode in ('sequential', 'official'))
    assert seq.shape == off.shape == lat.shape and not torch.allclose(seq, off)   # ... and the RoPE indices matter
    assert rope.temporal_index is None                                  # restored after the call


def _joint_loss_grads(bb):
    torch.manual_seed(0)
    lat, refs = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4)
    text = bb.encode_prompt(['a video of a sks mug', 'a video of a sks mug'])
    bb.transformer.zero_grad(set_to_none=True)
    v = joint_velocity(bb, lat, torch.tensor([0.3, 0.8]), text, refs)
    v.square().mean().backward()
    return {n: p.grad.clone() for n, p in bb.transformer.named_parameters() if p.grad is not None}


def test_entity_map_is_the_attention_on_the_word(bb):
    "ERAE's map on this model = softmax mass of each target query on the entity word's text key (checked against an explicit softmax)."
    from dreamvid_lib.router import probe_of
    attn, p = bb.transformer.transformer_blocks[0].attn, probe_of(bb)
    torch.manual_seed(0)
    B, Lv, Lt, D = 2, 32, 6, bb.transformer.config.num_attention_heads * bb.transformer.config.attention_head_dim
    hs, es = torch.randn(B, Lv, D), torch.randn(B, Lt, D)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    p.reset(ReferenceLayout(1, 1), 16)
    p.word_index, p.text_offset = torch.tensor([2, 1]), torch.tensor([0, 2])
    try:
        with torch.no_grad(): attn(hidden_states=hs, encoder_hidden_states=es, attention_mask=mask)
        got = p._map_sum.clone()
    finally: p.finish(); p.word_index = None
    with torch.no_grad():
        q = attn.norm_q(attn.to_q(hs).unflatten(2, (attn.heads, -1))); k = attn.norm_k(attn.to_k(hs).unflatten(2, (attn.heads, -1)))
        eq = attn.norm_added_k(attn.add_k_proj(es).unflatten(2, (attn.heads, -1)))
        keys = torch.cat([k, eq], 1)                                         # [B, L, H, d]
        logits = torch.einsum('bqhd,bkhd->bhqk', q, keys) / q.shape[-1] ** 0.5
        km = torch.cat([torch.ones(B, Lv, dtype=torch.bool), mask.bool()], 1)
        prob = logits.masked_fill(~km[:, None, None, :], float('-inf')).softmax(-1)
        want = torch.stack([prob[b, :, :16, Lv + [0, 2][b] + [2, 1][b]].mean(0) for b in range(B)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# -- joint attention without the dense [B, 1, L, L] mask ---------------------------------------------------------------
class _stock_processors:
    "Context: every block of `tr` runs diffusers' stock HunyuanVideo-1.5 processor (the one dreamvid's wraps)."
    def __init__(self, tr): self.tr = tr
    def __enter__(self):
        self.saved = [blk.attn.processor for blk in self.tr.transformer_blocks]
        for blk, p in zip(self.tr.transformer_blocks, self.saved): blk.attn.processor = p.fallback
        assert all(type(blk.attn.processor).__name__ == 'HunyuanVideo15AttnProcessor2_0' for blk in self.tr.transformer_blocks)
    def __exit__(self, *exc):
        for blk, p in zip(self.tr.transformer_blocks, self.saved): blk.attn.processor = p


class _mask_spy:
    "Context: records `(query length, attn_mask shape or None)` of every `F.scaled_dot_product_attention` call."
    def __init__(self, monkeypatch): self.mp, self.calls = monkeypatch, []
    def __enter__(self):
        sdpa = torch.nn.functional.scaled_dot_product_attention
        def spy(*args, **kw):                                           # (diffusers passes query=, key=, value=)
            q, m = args[0] if args else kw['query'], kw.get('attn_mask', args[3] if len(args) > 3 else None)
            self.calls.append((q.shape[-2], None if m is None else tuple(m.shape)))
            return sdpa(*args, **kw)
        self.mp.setattr(torch.nn.functional, 'scaled_dot_product_attention', spy)
        return self
    def __exit__(self, *exc): self.mp.undo()


_PROMPTS = {1: ['a video of a red mug rotating clockwise'], 2: ['a video of a red mug rotating clockwise', 'a mug']}


@pytest.mark.parametrize('probe', ['off', 'capture'])
@pytest.mark.parametrize('B', [1, 2])
def test_mask_free_attention_equals_stock(bb, B, probe):
    "The whole transformer's video-token output (velocity) with dreamvid's processor = with diffusers' stock one, to 1e-5."
    from dreamvid_lib.router import probe_of
    tr, p = bb.transformer, probe_of(bb)
    torch.manual_seed(0)
    lat, text = torch.randn(B, 4, 2, 4, 4), bb.encode_prompt(_PROMPTS[B])
    txt = bb.unpack_text(text, torch.float32)
    valid = txt['encoder_attention_mask'].sum(1) + txt['encoder_attention_mask_2'].sum(1)
    assert len(set(valid.tolist())) == B                                # B = 2: the rows have different valid text lengths
    assert not bool(txt['encoder_attention_mask'].all())               # and both have padding
    with torch.no_grad():
        with _stock_processors(tr): want = bb.predict_velocity(lat, torch.tensor([0.6] * B), text)
        if probe == 'capture': p.reset(ReferenceLayout(1, 1), 16, capture=True)   # 2 latent frames: target + 1 reference
        try:
            assert p.active() == (probe == 'capture')
            got = bb.predict_velocity(lat, torch.tensor([0.6] * B), text)
            recs = list(p.records)
        finally: p.finish()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert len(recs) == (len(tr.transformer_blocks) if probe == 'capture' else 0)
    if recs: assert recs[0]['frames'].shape == (B, tr.config.num_attention_heads, 1, 1)


@pytest.mark.parametrize('probe', ['off', 'capture'])
@pytest.mark.parametrize('mask', [[[1, 1, 1, 1, 1, 0, 0]],                                    # B = 1
                                  [[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0]],             # different lengths (CFG)
                                  [[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]],   # a group of 2 + 1
                                  [[0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]],             # no valid text / no padding
                                  [[1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0, 0]]])            # valid text not first
def test_processor_equals_stock(bb, mask, probe):
    """One block's attention: video and text outputs equal the stock processor's for any text mask; router capture = the
    explicit softmax mass of each target query on the reference keys with padded text keys masked."""
    from dreamvid_lib.router import probe_of
    attn, p = bb.transformer.transformer_blocks[0].attn, probe_of(bb)
    torch.manual_seed(0)
    mask = torch.tensor(mask)
    B, Lt, Lv, W = mask.shape[0], mask.shape[1], 32, bb.transformer.config.num_attention_heads * bb.transformer.config.attention_head_dim
    hs, es = torch.randn(B, Lv, W), torch.randn(B, Lt, W)
    with torch.no_grad():
        want = attn.processor.fallback(attn, hs, es, mask)
        if probe == 'capture': p.reset(ReferenceLayout(1, 1), 16, capture=True)
        try: got = attn(hidden_states=hs, encoder_hidden_states=es, attention_mask=mask); recs = list(p.records)
        finally: p.finish()
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)     # video tokens
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)     # text tokens too (padded ones: zero before to_add_out)
    if probe == 'capture':
        with torch.no_grad():
            q = attn.norm_q(attn.to_q(hs).unflatten(2, (attn.heads, -1)))
            keys = torch.cat([attn.norm_k(attn.to_k(hs).unflatten(2, (attn.heads, -1))),
                              attn.norm_added_k(attn.add_k_proj(es).unflatten(2, (attn.heads, -1)))], 1)
            prob = (torch.einsum('bqhd,bkhd->bhqk', q, keys) / q.shape[-1] ** 0.5).masked_fill(
                ~torch.cat([torch.ones(B, Lv, dtype=torch.bool), mask.bool()], 1)[:, None, None], float('-inf')).softmax(-1)
        torch.testing.assert_close(recs[0]['tokens'][..., 0], prob[:, :, :16, 16:Lv].sum(-1).mean(1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('probe', ['off', 'capture'])
def test_no_dense_mask(bb, monkeypatch, probe):
    """No SDPA call of the transformer gets an [.., L, L] mask (only the text-only token refiner keeps its small mask);
    the same spy sees the stock processor's dense [B, 1, L, L] one."""
    from dreamvid_lib.router import probe_of
    tr, p = bb.transformer, probe_of(bb)
    lat, text = torch.randn(2, 4, 2, 6, 6), bb.encode_prompt(_PROMPTS[2])   # 72 video tokens: more than any text length
    Lv, nb = 72, len(tr.transformer_blocks)
    txt = bb.unpack_text(text, torch.float32)
    L = Lv + txt['encoder_attention_mask'].shape[1] + txt['encoder_attention_mask_2'].shape[1] + bb.config.image_tokens
    with torch.no_grad():
        with _stock_processors(tr), _mask_spy(monkeypatch) as stock: bb.predict_velocity(lat, torch.tensor([0.5, 0.5]), text)
        if probe == 'capture': p.reset(ReferenceLayout(1, 1), 36, capture=True)
        try:
            with _mask_spy(monkeypatch) as ours: bb.predict_velocity(lat, torch.tensor([0.5, 0.5]), text)
        finally: p.finish()
    assert [c for c in stock.calls if c[0] >= Lv] == [(L, (2, 1, L, L))] * nb    # the spy sees the stock dense mask
    joint = [c for c in ours.calls if c[0] >= Lv]
    assert len(joint) == 2 * nb and all(s is None for _, s in joint)      # two rows of different lengths: one call each
    assert all(s is None or max(s) < Lv for _, s in ours.calls)             # no mask spans the video tokens anywhere

def test_routing_and_gradient_checkpointing(bb):
    p3, pa = add_lora(bb, '3db'), add_lora(bb, '3dapter')
    n3 = sum(p.numel() for p in p3)
    assert any('add_q_proj' in n for n, _ in bb.transformer.named_parameters() if '3db' in n)          # text stream in 3db
    assert any('x_embedder' in n for n, _ in bb.transformer.named_parameters() if '3dapter' in n)      # patch embedding in 3dapter
    with torch.no_grad():
        for n, p in bb.transformer.named_parameters():
            if 'lora_B' in n: p.normal_(0, 0.1)
    activate_branches(bb.transformer, ['3db', '3dapter'])
    for p in p3 + pa: p.requires_grad_(True)                            # (add_lora freezes all but the adapter it adds)
    bb.train()
    plain = _joint_loss_grads(bb)
    assert any('3dapter' in n for n in plain) and any('add_q_proj' in n and '.3db.' in n for n in plain)
    bb.enable_gradient_checkpointing()
    ck = _joint_loss_grads(bb)
    assert sorted(plain) == sorted(ck)
    for n in plain: torch.testing.assert_close(ck[n], plain[n], atol=1e-5, rtol=1e-4)
    # without references the 3Dapter branch is silent
    lat, text = torch.randn(1, 4, 2, 4, 4), bb.encode_prompt('a video of a sks mug')
    with torch.no_grad():
        with references(bb.transformer, None): a = bb.predict_velocity(lat, torch.tensor([0.5]), text)
        for p in pa: p.add_(1.0)
        with references(bb.transformer, None): b = bb.predict_velocity(lat, torch.tensor([0.5]), text)
    torch.testing.assert_close(a, b)
    assert n3 > 0


def test_bf16(hy_dir, bb):
    bf = load_backbone('hunyuan', hy_dir, dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and bf.text_encoder.dtype == torch.bfloat16
    x, s = bb.encode_video(torch.rand(1, 5, 32, 32, 3)), torch.tensor([0.4])
    with torch.no_grad():
        v32 = bb.predict_velocity(x, s, bb.encode_prompt('a video of a red mug'))
        v16 = bf.predict_velocity(x, s, bf.encode_prompt('a video of a red mug'))
    assert v16.dtype == torch.float32 and ((v16 - v32).norm() / v32.norm()) < 0.1
    ps = add_lora(bf, '3db')
    assert {p.dtype for p in ps} == {torch.float32}
    bf.train()
    with torch.no_grad():
        for p in ps: p.normal_(0, 0.05)
    v = joint_velocity(bf, x, s, bf.encode_prompt('a video of a red mug'), x[:, :, :1])
    v.square().mean().backward()
    g = [p.grad for p in ps if p.grad is not None]        # (the last block's text-stream outputs are discarded: no gradient there)
    assert len(g) >= len(ps) * 3 // 4 and all(torch.isfinite(x).all() for x in g)


def test_vae_tiling_and_offload(bb):
    lat = bb.encode_video(torch.rand(1, 5, 32, 32, 3))
    plain = bb.decode_latents(lat)
    bb.enable_vae_tiling(tile_sample_min_height=16, tile_sample_min_width=16)
    assert bb.codec.vae.use_tiling and bb.decode_latents(lat).shape == plain.shape
    bb.codec.disable_tiling()
    bb.enable_model_cpu_offload('cpu')
    v = generate(bb, 'a video of a red mug', seeds=0, steps=2)
    bb.disable_model_cpu_offload()
    assert v.shape == (1, 5, 32, 32, 3)


@pytest.mark.parametrize('branch', ['3db', '3dapter'])
def test_lora_roundtrip_diffusers_comfy_authors(hy_dir, bb, tmp_path, branch):
    add_lora(bb, branch)
    with torch.no_grad():
        for n, p in bb.transformer.named_parameters():
            if 'lora_B' in n: p.normal_(0, 0.1)
    adir = save_adapter(bb, branch, tmp_path/branch)
    lat, text, t = torch.randn(1, 4, 2, 4, 4), bb.encode_prompt('a video of a sks mug'), torch.tensor([500.0])
    with torch.no_grad(), references(bb.transformer, None): ours = _stock(bb, lat, t, text)
    # diffusers: HunyuanVideo15Pipeline (0.42.1 has no load_lora_weights on this pipeline) → its transformer's load_lora_adapter
    pipe = HunyuanVideo15Pipeline.from_pretrained(hy_dir)
    pipe.transformer.load_lora_adapter(str(adir), prefix='transformer', adapter_name='x', weight_name='pytorch_lora_weights.safetensors')
    if branch == '3db':                                                # (the 3Dapter branch only acts on reference tokens)
        with torch.no_grad(): theirs = _stock(bb, lat, t, text, tr=pipe.transformer)
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    sd = load_file(adir/'pytorch_lora_weights.safetensors')
    peft_sd = {k.removeprefix('transformer.'): v for k, v in sd.items()}
    loaded = {n.replace('.x.', '.'): p for n, p in pipe.transformer.named_parameters() if '.x.' in n}
    for k, v in peft_sd.items(): torch.testing.assert_close(loaded[k], v)
    # ComfyUI: original names under diffusion_model., alpha/r folded into lora_B
    cf = load_file(export_comfy_hunyuan_lora(adir, tmp_path/'comfy.safetensors'))
    assert len(cf) == len(sd) and all(k.startswith('diffusion_model.double_blocks.') or k.startswith('diffusion_model.img_in.') for k in cf)
    k0 = next(k for k in sd if '.lora_B.' in k and 'to_q' in k)
    ck = 'diffusion_model.' + original_module_name(k0.removeprefix('transformer.').rsplit('.lora_B', 1)[0]) + '.lora_B.weight'
    torch.testing.assert_close(cf[ck], sd[k0] * 2.0)                   # alpha 32 / rank 16
    # the authors' naming (their save_lora_adapter output, with peft's adapter-name infix): import → load → same weights
    theirs_sd = {f"transformer.{original_module_name(k.removeprefix('transformer.').rsplit('.lora_', 1)[0])}.lora_{k.rsplit('.lora_', 1)[1]}": v
                 for k, v in sd.items()}
    save_file(theirs_sd, str(tmp_path/'authors.safetensors'))
    imp = import_authors_lora(bb, tmp_path/'authors.safetensors', tmp_path/'imported')
    assert json.loads((imp/'adapter_config.json').read_text())['adapter'] == branch
    fresh2 = load_backbone('hunyuan', hy_dir); load_adapter(fresh2, imp, name=branch)
    got = {n: p for n, p in fresh2.transformer.named_parameters() if f'.{branch}.' in n}
    want = {n: p for n, p in bb.transformer.named_parameters() if f'.{branch}.' in n}
    assert sorted(got) == sorted(want)
    for n in want: torch.testing.assert_close(got[n], want[n])


def test_name_mapping():
    assert original_module_name('transformer_blocks.3.attn.to_q') == 'double_blocks.3.img_attn_q'
    assert original_module_name('transformer_blocks.0.ff_context.net.2') == 'double_blocks.0.txt_mlp.fc2'
    assert diffusers_module_name('double_blocks.7.txt_attn_proj') == 'transformer_blocks.7.attn.to_add_out'
    assert diffusers_module_name('img_in.proj') == 'x_embedder.proj'
    with pytest.raises(ConfigError, match='not a HunyuanVideo-1.5 module'): diffusers_module_name('single_blocks.0.linear1')


def test_lora_parameters_match_the_paper():
    n = full_size_lora_parameters(16)                                 # the 8.3 B architecture on the meta device
    assert round(n['transformer'] / 1e9, 2) == 8.33 and n['total'] == 95_619_104    # the paper: "trains only 95.62M parameters"


def test_paper_preset():
    p = PAPER_PRESET
    assert (p['rank'].value, p['alpha'].value, p['iterations'].value, p['k'].value) == (16, 32, 400, 4)
    assert all(v.source for v in p.values())


def test_pipeline_end_to_end(hy_dir, tmp_path):
    from dreamvid_lib import toyworld as tw
    from dreamvid_lib.multiview import from_views
    from dreamvid_lib.dreambooth import DreamBoothConfig, train_3dreambooth
    from dreamvid_lib.dapter import train_joint, JointConfig
    from dreamvid_lib.router import probe_of, mass_array
    bb = load_backbone('hunyuan', hy_dir)
    R = bb.config.resolution
    mv = from_views(tw.multiview_set(tw.heldout_subjects(1, seed=0)[0], n_views=8, res=R, seed=0))
    log = train_3dreambooth(bb, mv, DreamBoothConfig(steps=3, batch_size=2, checkpoint_every=3, preview_every=0),
                            work_dir=tmp_path/'w3', out_dir=tmp_path/'a3', progress=False)
    assert len(log['history']) == 3 and np.isfinite(log['history'][-1]['loss'])
    jl = train_joint(bb, mv, JointConfig(steps=3, batch_size=2, k=4, checkpoint_every=3, preview_every=0),
                     dapter='random', work_dir=tmp_path/'wj', out_dir=tmp_path/'aj', progress=False)
    refs = mv.images[jl['conditioning_views']]
    vids = generate(bb, [f'{mv.prompt()} rotating clockwise'] * 2, seeds=[0, 1], steps=2, references=refs, capture=True, tab=True)
    assert vids.shape == (2, 5, R, R, 3)
    mass = mass_array(probe_of(bb).records)
    assert mass.shape == (2, 2, 2, 2, 2, 4)                            # [steps, layers, B, heads, latent frames, K]
    assert ((mass.sum(-1) > 0) & (mass.sum(-1) <= 1 + 1e-5)).all()
    probe = probe_of(bb)
    v2 = generate(bb, [f'{mv.prompt()} rotating clockwise', 'a sign saying "hi" and a video of a red mug'], seeds=[0, 1], steps=2,
                  references=refs, erae=True, erae_word=['sks', 'mug'], tab=True)
    assert v2.shape == (2, 5, R, R, 3) and probe._map_n == 2 and probe._map_sum.shape == (4, 2 * 16)   # CFG batch x target tokens
    assert (probe._map_sum >= 0).all() and (probe._map_sum <= 2 + 1e-5).all()                         # masses (2 layers)
    fresh = load_backbone('hunyuan', hy_dir); load_adapter(fresh, tmp_path/'aj'/'3db'); load_adapter(fresh, tmp_path/'aj'/'3dapter')


def test_cli_demo_hunyuan(hy_dir, tmp_path, capsys):
    from dreamvid_lib.cli import main
    assert main(['demo', '--backbone', 'hunyuan', '--weights', str(hy_dir), '--fast', '--out', str(tmp_path/'demo')]) == 0
    r = json.loads((tmp_path/'demo'/'report.json').read_text())
    assert r['backbone'] == 'hunyuan' and 0 <= r['router']['routing_accuracy'] <= 1
    assert len(r['router']['frame_azimuths'][0]) == 2                   # per latent frame (5 frames → 2)
    assert main(['demo', '--backbone', 'hunyuan', '--weights', str(tmp_path/'nope'), '--fast', '--out', str(tmp_path/'d2')]) == 2
    assert 'huggingface-cli download' in capsys.readouterr().err


def test_eval_ground_truth_resolution(capsys):
    "Real backbones: tracking views at ≤ 64 px, larger frames averaged down to them, cached; the toy's 32 px unchanged."
    from dreamvid_lib import toyworld as tw
    from dreamvid_lib.metrics import tracking_views, view_match, fit_frames, eval_resolution, MetricError
    assert [eval_resolution(r) for r in (32, 64, 480, 832)] == [32, 64, 64, 64]
    s = tw.heldout_subjects(1, seed=0)[0]
    toy = tracking_views(s, 32, azimuth_step=90.0, elevations=(0.0,))
    np.testing.assert_array_equal(toy.rgb, tw.render_views(s, [0., 90., 180., 270.], [0.] * 4, res=32).rgb)   # as before
    g = tracking_views(s, 480, azimuth_step=90.0, elevations=(0.0,), verbose=True)
    assert g.rgb.shape == (4, 64, 64, 3) and 'at 64 px; the videos are 480 px' in capsys.readouterr().out
    assert tracking_views(s, 480, azimuth_step=90.0, elevations=(0.0,), verbose=True) is g and capsys.readouterr().out == ''
    big = np.repeat(np.repeat(g.rgb, 4, 1), 4, 2)                        # 256 px frames of the same views
    assert list(view_match(big, g)[0]) == [0, 1, 2, 3]
    with pytest.raises(MetricError, match='render or resize'): fit_frames(g.rgb[:, :32], (64, 64))


def test_cli_bench_accepts_hunyuan(hy_dir):
    from dreamvid_lib.cli import build_parser, bench_config
    cfg = bench_config(build_parser().parse_args(['bench', '--backbone', 'hunyuan', '--weights', str(hy_dir), '--out', 'x', '--dapter', 'random',
                                                        '--methods', 'base,3db,joint']))
    assert cfg.backbone == 'hunyuan' and cfg.num_frames is None          # the backbone's own 4k+1 length


def test_bench_tiny(tmp_path):
    import subprocess, sys, os
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root/'benchmarks'/'bench_hunyuan_gpu.py'), '--tiny', '--out', str(tmp_path/'b.json')],
                       capture_output=True, text=True, timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path/'b.json').read_text())
    assert {'3db_step_s', 'joint_step_s', 'gen_s_per_video'} <= set(res['results']) and res['gpu'] is None
