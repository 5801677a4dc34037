"""The faithful preset computes the LSRM authors' release function (GitHub simonmonmonn/LSRM).

``release_logits`` below is an independent PyTorch re-implementation of the release's forward, written
from reading ``lsrm/model.py`` (``Transformer.forward`` up to the logits), ``lsrm/adapter.py`` (the LLaMA
blocks' ICA side branch and the CLIP adapters) and ``clip/model.py`` (``forward_ll_half``), over a state
dict with the release's tensor names. The same random tensors, saved as safetensors, go through the public
import path (``semrel_jax.convert.release.load_release``) into the ``lsrm_7b`` preset shrunk to toy sizes
(only sizes change), and the two must agree to 1e-4 in float32.

The release keeps its mask ``M`` in float16 under autocast (``.half()``); the reference keeps it in float32,
as our model does: at full precision both compute the rule of lsrm/adapter.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from configs import vqa
from semrel_jax import config as config_lib
from semrel_jax.convert import release as release_lib
from semrel_jax.convert.safetensors_io import save_file
from semrel_jax.method.vlm import VisionLanguageModel

VOCAB, DIM, HEADS, LAYERS, MLP, NORM_EPS = 61, 32, 4, 3, 48, 1e-6
WIDTH, VIT_HEADS, DEPTH, PATCH, IMAGE, ADAPTER = 24, 2, 6, 4, 16, 4
N_MEM, D_H, SCALE = 20, 8, 0.1  # 16 patch tokens padded to 20 slots; d_h per projector (release hidden_proj // 2)
MIDDLE, FINAL = DEPTH // 2 + 1, DEPTH - 1  # forward_ll_half's maps in HF hidden_states numbering
BATCH, T = 2, 7


# --------------------------------------------------------------------------- the release, in PyTorch


def release_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the release's names and shapes; its zero/one-initialised ones made non-trivial."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2):
        return std * torch.randn(*shape, generator=g)

    sd = {"tok_embeddings.weight": rnd(VOCAB, DIM, std=1.0), "norm.weight": 1 + rnd(DIM), "output.weight": rnd(VOCAB, DIM)}
    for i in range(LAYERS):
        p = f"layers.{i}."
        for w in ("wq", "wk", "wv", "wo"):
            sd[p + f"attention.{w}.weight"] = rnd(DIM, DIM)
        sd[p + "feed_forward.w1.weight"], sd[p + "feed_forward.w3.weight"] = rnd(MLP, DIM), rnd(MLP, DIM)
        sd[p + "feed_forward.w2.weight"] = rnd(DIM, MLP)
        sd[p + "attention_norm.weight"], sd[p + "ffn_norm.weight"] = 1 + rnd(DIM), 1 + rnd(DIM)
    v = "backbone.visual."
    sd[v + "conv1.weight"] = rnd(WIDTH, 3, PATCH, PATCH)
    sd[v + "class_embedding"] = rnd(WIDTH, std=1.0)
    sd[v + "positional_embedding"] = rnd((IMAGE // PATCH) ** 2 + 1, WIDTH, std=1.0)
    sd[v + "proj"] = rnd(WIDTH, 8)  # unused by the release
    for name in ("ln_pre", "ln_post"):
        sd[v + f"{name}.weight"], sd[v + f"{name}.bias"] = 1 + rnd(WIDTH), rnd(WIDTH)
    for i in range(DEPTH):
        p = f"{v}transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = rnd(3 * WIDTH, WIDTH), rnd(3 * WIDTH)
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = rnd(WIDTH, WIDTH), rnd(WIDTH)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = rnd(4 * WIDTH, WIDTH), rnd(4 * WIDTH)
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = rnd(WIDTH, 4 * WIDTH), rnd(WIDTH)
        for name in ("ln_1", "ln_2"):
            sd[p + f"{name}.weight"], sd[p + f"{name}.bias"] = 1 + rnd(WIDTH), rnd(WIDTH)
        sd[p + "adapter_mlp.fc1.weight"] = rnd(ADAPTER, WIDTH, std=1.0)
        sd[p + "adapter_mlp.fc2.weight"] = rnd(WIDTH, ADAPTER, std=1.0)  # zero-initialised in the release
    # P_k, P_v (P_v zero-initialised in the release); the visual scale 0.01 is offset by large projectors
    sd["adapter_emb1"], sd["adapter_emb2"] = rnd(1, N_MEM, DIM, std=0.5), rnd(1, N_MEM, DIM, std=0.5)
    for proj in ("adapter_proj", "adapter_proj_ll"):
        sd[f"{proj}.fc1.weight"], sd[f"{proj}.fc1.bias"] = rnd(D_H, WIDTH, std=1.0), rnd(D_H)
        sd[f"{proj}.fc2.weight"], sd[f"{proj}.fc2.bias"] = rnd(DIM, D_H, std=30.0), rnd(DIM, std=5.0)
        sd[f"{proj}.SVDvalue"] = 1 + rnd(D_H, std=0.5)  # Λ, ones in the release
    # created by the release and never used: a large value would show if it were added
    sd["adapter_modality_embedding.weight"] = rnd(2, DIM, std=10.0)
    return sd


def _layer_norm(x, sd, name, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _clip_block(x, sd, p):
    """OpenAI CLIP's ResidualAttentionBlock with the release's forward_clip adapter (evaluation: no dropout)."""
    b, n, w = x.shape
    y = _layer_norm(x, sd, p + "ln_1")
    q, k, v = (y @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, n, VIT_HEADS, w // VIT_HEADS).transpose(1, 2) for z in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) / (w // VIT_HEADS) ** 0.5, dim=-1) @ v
    x = x + attn.transpose(1, 2).reshape(b, n, w) @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    y = _layer_norm(x, sd, p + "ln_2")
    h = y @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    mlp = (h * torch.sigmoid(1.702 * h)) @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    adapter = F.gelu(y @ sd[p + "adapter_mlp.fc1.weight"].T) @ sd[p + "adapter_mlp.fc2.weight"].T
    return x + mlp + 0.1 * adapter


def _forward_ll_half(images, sd):
    """clip/model.py forward_ll_half: (final map, intermediate map), both ln_post'ed, CLS dropped."""
    v = "backbone.visual."
    x = F.conv2d(images, sd[v + "conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd[v + "class_embedding"].expand(x.shape[0], 1, WIDTH)
    x = _layer_norm(torch.cat([cls, x], 1) + sd[v + "positional_embedding"], sd, v + "ln_pre")
    for i in range(DEPTH - 1):  # resblocks[:-1]
        x = _clip_block(x, sd, f"{v}transformer.resblocks.{i}.")
        if i == DEPTH // 2:
            intermediate = _layer_norm(x[:, 1:], sd, v + "ln_post")
    return _layer_norm(x[:, 1:], sd, v + "ln_post"), intermediate


def _svd_projector(x, sd, p):
    return (sd[p + ".SVDvalue"] * F.silu(x @ sd[p + ".fc1.weight"].T + sd[p + ".fc1.bias"])) @ sd[p + ".fc2.weight"].T + sd[p + ".fc2.bias"]


def _rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * weight


def _meta_rope(x, positions):
    """Meta LLaMA's rotary embedding: interleaved (2j, 2j+1) pairs as complex numbers."""
    hd = x.shape[-1]
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    angles = torch.polar(torch.ones(len(positions), hd // 2), torch.outer(positions.float(), freqs))
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * angles[None, :, None, :]).flatten(3)


def release_logits(sd, tokens, images, indicators, delta: float, lam: float) -> torch.Tensor:
    """``Transformer.forward`` of lsrm/model.py up to the logits ``[B, T, vocab]`` (mode 1, masktype 1),
    with the blocks' ICA adapters built with ``Delta=delta, Lambda=lam`` (the release passes 0 and 1)."""
    final, middle = _forward_ll_half(images, sd)
    ind = indicators.float().view(-1, 1, 1)
    pad = lambda x: torch.cat([x, torch.zeros(x.shape[0], N_MEM - x.shape[1], DIM)], 1)  # noqa: E731
    memory = (pad(_svd_projector(final, sd, "adapter_proj") * ind) + pad(_svd_projector(middle, sd, "adapter_proj_ll") * ind)) * 0.01
    keys, values = memory + sd["adapter_emb1"], memory + sd["adapter_emb2"]
    b, t = tokens.shape
    h = sd["tok_embeddings.weight"][tokens]
    causal = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
    positions = torch.arange(t)
    vis_mask = torch.ones(b, t, N_MEM)
    hd = DIM // HEADS
    for i in range(LAYERS):
        p = f"layers.{i}."
        x = _rms(h, sd[p + "attention_norm.weight"])
        q, k, v = (x @ sd[p + f"attention.{w}.weight"].T for w in ("wq", "wk", "wv"))
        q, k = (_meta_rope(z.view(b, t, HEADS, hd), positions) for z in (q, k))
        q, k, v = (z.view(b, t, HEADS, hd).transpose(1, 2) for z in (q, k, v))
        scores = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5 + causal, dim=-1)
        h = h + (scores @ v).transpose(1, 2).reshape(b, t, DIM) @ sd[p + "attention.wo.weight"].T
        x = _rms(h, sd[p + "ffn_norm.weight"])
        ffn = (F.silu(x @ sd[p + "feed_forward.w1.weight"].T) * (x @ sd[p + "feed_forward.w3.weight"].T)) @ sd[p + "feed_forward.w2.weight"].T
        # lsrm/adapter.py Adapter.forward, masktype 1 (evaluation: dropout off)
        alpha = F.silu(x @ keys.transpose(1, 2))
        threshold = alpha.sort(dim=2).values[:, :, int(delta * N_MEM)].unsqueeze(2)
        vis_mask = vis_mask * torch.where(alpha < threshold, torch.tensor(lam), torch.tensor(1.0))
        h = h + ffn + SCALE * ((alpha * vis_mask) @ values)
    return _rms(h, sd["norm.weight"]) @ sd["output.weight"].T


# --------------------------------------------------------------------------------------- semrel_jax


def toy_release_config(release_noop_mask: bool):
    """configs/vqa.py:lsrm_7b with only the sizes changed (float32 compute for the comparison)."""
    c = vqa.get_config("lsrm_7b")
    c.model.llm.update(vocab_size=VOCAB, dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=HEADS, mlp_dim=MLP,
                       norm_eps=NORM_EPS, dtype="float32")
    c.model.encoders.clip.update(image_size=IMAGE, patch_size=PATCH, width=WIDTH, depth=DEPTH, heads=VIT_HEADS,
                                 mlp_dim=4 * WIDTH, adapter_dim=ADAPTER, taps=(MIDDLE, FINAL))
    c.model.update(num_memory_slots=N_MEM)
    c.model.projector.hidden = D_H
    c.model.ica.release_noop_mask = release_noop_mask
    config_lib.resolve(c)
    config_lib.validate(c)
    return c


@pytest.fixture(scope="module")
def release_checkpoint(tmp_path_factory):
    sd = release_state_dict()
    directory = tmp_path_factory.mktemp("release")
    save_file({k: v.numpy() for k, v in sd.items()}, str(directory / "model.safetensors"), {"format": "pt"})
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, 3, IMAGE, IMAGE)).astype(np.float32)  # already normalised
    tokens = rng.integers(1, VOCAB, size=(BATCH, T))
    return sd, str(directory), images, tokens


def _ours(release_checkpoint, release_noop_mask: bool, mask_enabled: bool, has_image=(1, 1)) -> np.ndarray:
    _, directory, images, tokens = release_checkpoint
    c = toy_release_config(release_noop_mask)
    model = VisionLanguageModel(config_lib.model_config(c, VOCAB), rngs=nnx.Rngs(1))
    assert release_lib.load_release(model, directory) == ["llm", "clip", "adapters"]
    logits = model(
        {"clip": images.transpose(0, 2, 3, 1)}, np.asarray(has_image), tokens, np.ones(tokens.shape, bool),
        mask_enabled=mask_enabled,
    )
    return np.asarray(logits)


def _release(release_checkpoint, delta, lam, has_image=(1, 1)) -> np.ndarray:
    sd, _, images, tokens = release_checkpoint
    with torch.no_grad():
        out = release_logits(sd, torch.as_tensor(tokens), torch.as_tensor(images), torch.as_tensor(has_image), delta, lam)
    return out.numpy()


def test_release_as_published_equals_the_noop_mode(release_checkpoint):
    """The published release (its blocks get delta=0, lam=1) = ours with model.ica.release_noop_mask=True,
    mask on and off; and every pathway matters at these weights (vision, text-only rows)."""
    reference = _release(release_checkpoint, 0.0, 1.0)
    for mask_enabled in (False, True):
        ours = _ours(release_checkpoint, release_noop_mask=True, mask_enabled=mask_enabled)
        assert np.abs(ours - reference).max() <= 1e-4
    no_image = _release(release_checkpoint, 0.0, 1.0, has_image=(1, 0))
    assert np.abs(no_image - reference)[1].max() > 0.1  # the image changes the logits
    ours_no_image = _ours(release_checkpoint, release_noop_mask=True, mask_enabled=True, has_image=(1, 0))
    assert np.abs(ours_no_image - no_image).max() <= 1e-4  # the modality embedding is not added


def test_the_mask_with_delta_lambda_applied_equals_the_rule_of_the_release(release_checkpoint):
    """delta=0.3, lam=0.85 really applied (our fix): the release's Adapter built with those values, mask on;
    mask off equals the release's no-op; the fix changes the logits."""
    masked = _release(release_checkpoint, 0.3, 0.85)
    unmasked = _release(release_checkpoint, 0.0, 1.0)
    assert np.abs(masked - unmasked).max() > 0.05  # the mask matters at these weights
    assert np.abs(_ours(release_checkpoint, False, mask_enabled=True) - masked).max() <= 1e-4
    assert np.abs(_ours(release_checkpoint, False, mask_enabled=False) - unmasked).max() <= 1e-4


def test_a_trained_release_checkpoint_loads_its_adapters_only(release_checkpoint, tmp_path):
    """The release's training checkpoints hold only the 'adapter' tensors; a part missing a tensor is named."""
    sd = release_checkpoint[0]
    adapters = {k: v.numpy() for k, v in sd.items() if "adapter" in k}
    save_file(adapters, str(tmp_path / "model.safetensors"), {"format": "pt"})
    model = VisionLanguageModel(config_lib.model_config(toy_release_config(False), VOCAB), rngs=nnx.Rngs(1))
    assert release_lib.load_release(model, str(tmp_path)) == ["adapters"]
    np.testing.assert_array_equal(np.asarray(model.memory_value_embedding[...]), sd["adapter_emb2"].numpy()[0])
    del adapters["adapter_proj_ll.SVDvalue"]
    save_file(adapters, str(tmp_path / "model.safetensors"), {"format": "pt"})
    with pytest.raises(release_lib.CheckpointError, match="adapter_proj_ll.SVDvalue"):
        release_lib.load_release(model, str(tmp_path))


def test_clip_adapter_dropout_acts_in_training_only():
    """lsrm/adapter.py: dropout 0.1 after the adapter's GELU, in training; the preset carries it to the tower."""
    import jax

    c = toy_release_config(False)
    vit = VisionLanguageModel(config_lib.model_config(c, VOCAB), rngs=nnx.Rngs(1)).vision.encoders["clip"]
    assert vit.config.adapter_dropout == 0.1
    for layer in vit.layers:  # the zero-initialised up-projection would hide the dropout
        layer.adapter.fc2.kernel[...] = jnp.ones_like(layer.adapter.fc2.kernel[...])
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, IMAGE, IMAGE, 3)), jnp.float32)
    evaluation = vit(images, (FINAL,))[0]
    np.testing.assert_array_equal(np.asarray(evaluation), np.asarray(vit(images, (FINAL,))[0]))
    train_a, train_b = (vit(images, (FINAL,), jax.random.key(k))[0] for k in (0, 1))
    assert np.abs(np.asarray(train_a) - np.asarray(evaluation)).max() > 1e-3
    assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-3
