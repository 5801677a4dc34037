"""Vision Transformer with intermediate taps and optional bottleneck adapters.

CLIP-style layout (pre-LN before the encoder, pre-norm blocks, post-LN) with HF ``CLIPVisionModel``
parameter names, so that converted CLIP towers map one to one. ``hidden_states[0]`` is the
embedding output (after pre-LN) and ``hidden_states[i]`` the output of block ``i`` (1-based), as in
HF's ``output_hidden_states``; taps are given in that numbering, and blocks past the deepest tap
are never run (the LLaVA convention of skipping the last block costs nothing).

Adapters (LSRM/MemVP release): every block gets a bias-free bottleneck parallel to its MLP,
``x + MLP(ln_2 x) + s · up(dropout(GELU(down(ln_2 x))))``, with ``up`` zero-initialised so a pretrained
tower is unchanged at step 0; the dropout (release: 0.1) acts in training only, when a key is given.

``tokens='objects'``: the same transformer over object tokens instead of patches (``models/objects.py``: one
token per object found by background subtraction, for scenes of flat objects), embedded by a linear map (each
token holds its centre; ``posemb='sincos2d'`` adds the sine-cosine embedding of that centre in units of
``patch_size`` pixels, as a patch grid's, so that one dot product of two tokens compares their positions; its finest
wavelength is 2π patch sizes: 1 pixel gives sharp features that memorise, the image size smooth ones,
experiments/LOG.md session 25); ``distance_bias`` then uses the objects' centres, and the slots without an
object are masked as keys and come out as zeros (one constant "no object" token downstream).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.models import layers, scan
from semrel_jax.models.objects import ObjectTokenizer, ObjectTokens, pairwise_distance_features

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    act: str = "quick_gelu"
    norm_eps: float = 1e-5
    pre_ln: bool = True
    class_token: bool = True  # CLIP / DINOv2 prepend a CLS token; SigLIP has none
    patch_bias: bool = False  # SigLIP / DINOv2 patch embeddings have a bias, CLIP's has not
    layer_scale: bool = False  # DINOv2: per-channel scales on both residual branches
    # their initial value (None: 1; converted towers load theirs); 0 makes every block start as the identity
    # (CaiT's LayerScale taken to its limit), so a tower tapped after its blocks starts as its tokens
    layer_scale_init: float | None = None
    # 'learned' (CLIP, converted towers; object tokens: none) | 'sincos2d' (fixed; big_vision's from-scratch default;
    # object tokens: at their centres)
    posemb: str = "learned"
    # Learned per-head attention bias indexed by the 2-D offset between two patches (Swin / BEiT style),
    # zero-initialised; the class token gets none. Off for converted towers (CLIP/SigLIP/DINOv2 have none).
    relative_position_bias: bool = False
    # Learned per-head attention bias as a linear function of two patches' offset (dx, dy, distance, squared
    # distance; in image widths), zero-initialised: 4 x heads numbers per block where the table above has
    # (2·grid - 1)² x heads, and monotone in distance from the start, the form "attend to the nearest/farthest"
    # needs (experiments/LOG.md, session 12). Off for converted towers.
    distance_bias: bool = False
    # the bias is this x features @ weights: under Adam the weights move by about the learning rate per step whatever
    # their gradient's size, so this is the bias's own learning-rate multiplier (a sharp "nearest other" read needs
    # logit gaps of several units between objects a tenth of an image apart; experiments/LOG.md, session 26)
    distance_bias_scale: float = 1.0
    # s > 0: the heads' biases start with slopes on the distance spread evenly from -s (the first head: nearest
    # first) to +s (the last: farthest first), as ALiBi's fixed per-head slopes (Press et al., 2022), then learn;
    # learnt from zero they stay too small to pick one neighbour (|w| <= 0.35; experiments/LOG.md, session 26)
    distance_bias_init: float = 0.0
    # 'all' | 'others': each token after the class token attends only to the *other* such tokens (not itself, not
    # the class token; all where it has no other), so that a head whose distance bias or position embedding
    # prefers near tokens reads the nearest other one, which otherwise is the token itself or the class token (zero
    # bias); the residual keeps the token's own content; the class token attends to all. Off for converted towers.
    attend: str = "all"
    # 'patches' (a ViT) | 'objects': the image cut into its objects by background subtraction (models/objects.py),
    # one token each (centres are in the token; posemb='sincos2d' adds their embedding; distance_bias uses them)
    tokens: str = "patches"
    max_objects: int = 8
    adapter_dim: int = 0  # 0: no adapters
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.0  # after the adapter's GELU, training only (release: 0.1)
    remat: str = "none"  # rematerialisation policy per block (layers.REMAT_POLICIES)
    scan_layers: bool = False  # the blocks between two taps run as one lax.scan (models/scan.py): compiles once
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def num_patches(self) -> int:
        """Tokens before the class token: patches, or object slots."""
        return self.max_objects if self.tokens == "objects" else (self.image_size // self.patch_size) ** 2

    def __post_init__(self):
        if self.image_size % self.patch_size and self.tokens == "patches":
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}.")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}.")
        if self.posemb not in ("learned", "sincos2d"):
            raise ValueError(f"posemb must be 'learned' or 'sincos2d', got {self.posemb!r}.")
        if self.posemb == "sincos2d" and self.width % 4:
            raise ValueError(f"sincos2d position embeddings need width % 4 == 0, got {self.width}.")
        if self.distance_bias_scale <= 0 or (self.distance_bias_scale != 1.0 and not self.distance_bias):
            raise ValueError(f"distance_bias_scale must be > 0 and needs distance_bias, got {self.distance_bias_scale}.")
        if self.distance_bias_init < 0 or (self.distance_bias_init and not self.distance_bias):
            raise ValueError(f"distance_bias_init must be >= 0 and needs distance_bias, got {self.distance_bias_init}.")
        if self.attend not in ("all", "others"):
            raise ValueError(f"attend must be 'all' or 'others', got {self.attend!r}.")
        if self.tokens not in ("patches", "objects"):
            raise ValueError(f"tokens must be 'patches' or 'objects', got {self.tokens!r}.")
        if self.layer_scale_init is not None and not self.layer_scale:
            raise ValueError("layer_scale_init needs layer_scale=True.")
        if self.tokens == "objects" and self.relative_position_bias:
            raise ValueError("relative_position_bias indexes a patch grid; object tokens have none (use distance_bias).")


# The structural flags of each tower family (the rest of a ViTConfig is sizes): 'vit' is the from-scratch
# tower (CLIP's layout); convert/families.py builds converted towers from the same table.
FAMILY_LAYOUTS: dict[str, dict] = {
    "vit": dict(pre_ln=True, class_token=True, patch_bias=False, layer_scale=False, norm_eps=1e-5),
    "clip": dict(pre_ln=True, class_token=True, patch_bias=False, layer_scale=False, norm_eps=1e-5),
    "siglip": dict(pre_ln=False, class_token=False, patch_bias=True, layer_scale=False, norm_eps=1e-6),
    "siglip2": dict(pre_ln=False, class_token=False, patch_bias=True, layer_scale=False, norm_eps=1e-6),
    "dinov2": dict(pre_ln=False, class_token=True, patch_bias=True, layer_scale=True, norm_eps=1e-6),
}


def _linear(n_in, n_out, config: ViTConfig, rngs, bias=True, zero=False):
    init = nnx.initializers.zeros_init() if zero else nnx.initializers.lecun_normal()
    return nnx.Linear(
        n_in,
        n_out,
        use_bias=bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=init,
        rngs=rngs,
    )


def _layer_norm(config: ViTConfig, rngs):
    return nnx.LayerNorm(
        config.width,
        epsilon=config.norm_eps,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


class Adapter(nnx.Module):
    """Bias-free bottleneck ``up(dropout(GELU(down(x))))``; ``up`` starts at zero."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.rate = config.adapter_dropout
        self.fc1 = _linear(config.width, config.adapter_dim, config, rngs, bias=False)
        self.fc2 = _linear(config.adapter_dim, config.width, config, rngs, bias=False, zero=True)

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        """``[B, N, width]`` -> ``[B, N, width]``; ``dropout_key=None``: deterministic (evaluation)."""
        return self.fc2(layers.dropout(jax.nn.gelu(self.fc1(x), approximate=False), self.rate, dropout_key))


DISTANCE_FEATURES = 4  # dx, dy, |d|, |d|² of two patch centres
DISTANCE = 2  # the feature |d|


def distance_features(grid: int) -> np.ndarray:
    """``[grid², grid², 4]`` (dx, dy, |d|, |d|²) x 4 between patch centres i and j, offsets in image widths (the
    x 4 brings them to order one; the probe this comes from used the same scale)."""
    y, x = np.divmod(np.arange(grid * grid), grid)
    return pairwise_distance_features(np.stack([x / grid, y / grid], -1)).astype(np.float32)


def distance_slopes(slope: float, heads: int) -> np.ndarray:
    """``[4, heads]`` weights on (dx, dy, |d|, |d|²) whose heads' slopes on |d| are spread evenly from ``-slope``
    (the first head reads nearest first) to ``+slope`` (the last: farthest first), as ALiBi's per-head slopes."""
    weights = np.zeros((DISTANCE_FEATURES, heads), np.float32)
    weights[DISTANCE] = slope * np.linspace(-1.0, 1.0, heads)
    return weights


def relative_offset_index(grid: int) -> np.ndarray:
    """``[grid², grid²]`` index of the offset (dy, dx) between patches i and j into a ``(2·grid - 1)²`` table."""
    y, x = np.divmod(np.arange(grid * grid), grid)
    dy = y[:, None] - y[None, :] + grid - 1
    dx = x[:, None] - x[None, :] + grid - 1
    return dy * (2 * grid - 1) + dx


class EncoderLayer(nnx.Module):
    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        w = config.width
        if config.relative_position_bias:
            grid = config.image_size // config.patch_size
            pd = jnp.dtype(config.param_dtype)
            self.relative_bias = nnx.Param(jnp.zeros(((2 * grid - 1) ** 2, config.heads), pd))
        if config.distance_bias:
            weights = distance_slopes(config.distance_bias_init, config.heads) / config.distance_bias_scale
            self.distance_bias = nnx.Param(jnp.asarray(weights, jnp.dtype(config.param_dtype)))
        self.layer_norm1 = _layer_norm(config, rngs)
        self.q_proj = _linear(w, w, config, rngs)
        self.k_proj = _linear(w, w, config, rngs)
        self.v_proj = _linear(w, w, config, rngs)
        self.out_proj = _linear(w, w, config, rngs)
        self.layer_norm2 = _layer_norm(config, rngs)
        self.fc1 = _linear(w, config.mlp_dim, config, rngs)
        self.fc2 = _linear(config.mlp_dim, w, config, rngs)
        self.adapter = Adapter(config, rngs=rngs) if config.adapter_dim else None
        if config.layer_scale:
            pd = jnp.dtype(config.param_dtype)
            init = 1.0 if config.layer_scale_init is None else config.layer_scale_init
            self.layer_scale1 = nnx.Param(jnp.full((w,), init, pd))
            self.layer_scale2 = nnx.Param(jnp.full((w,), init, pd))

    def __call__(self, x: Array, dropout_key: Array | None = None, positions: Array | None = None,
                 valid: Array | None = None) -> Array:
        """``x [B, N, width]``; object tokens also give ``positions [B, P, 2]`` (the centres of the tokens after
        the class token, for distance_bias) and ``valid [B, N]`` (a slot without an object is attended by none)."""
        c = self.config
        b, n, w = x.shape
        hd = w // c.heads
        y = self.layer_norm1(x)
        q, k, v = (proj(y).reshape(b, n, c.heads, hd) for proj in (self.q_proj, self.k_proj, self.v_proj))
        mask = self._mask(n, valid)
        bias = self._bias(n, q.dtype, positions)
        attn = self.out_proj(jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask).reshape(b, n, w))
        if c.layer_scale:
            attn = attn * self.layer_scale1[...].astype(attn.dtype)
        x = x + attn
        y = self.layer_norm2(x)
        mlp = self.fc2(layers.activation(c.act)(self.fc1(y)))
        if c.layer_scale:
            mlp = mlp * self.layer_scale2[...].astype(mlp.dtype)
        out = x + mlp
        if self.adapter is not None:
            out = out + c.adapter_scale * self.adapter(y, dropout_key)
        return out

    def _mask(self, n: int, valid: Array | None) -> Array | None:
        """``[B or 1, 1, n, n]`` keys each token may attend: the valid ones; with ``attend='others'`` the tokens
        after the class token see only the other such tokens (all valid keys where there is no other); None: all."""
        mask = None if valid is None else valid[:, None, None, :]
        if self.config.attend == "all":
            return mask
        keys = jnp.ones((1, 1, n, n), bool) if mask is None else jnp.broadcast_to(mask, mask.shape[:2] + (n, n))
        extra = n - self.config.num_patches  # the class token
        row, column = np.arange(n)[:, None], np.arange(n)[None, :]
        others = keys & jnp.asarray((row < extra) | ((column >= extra) & (row != column)))
        return jnp.where(others.any(-1, keepdims=True), others, keys)

    def _bias(self, n: int, dtype, positions: Array | None = None) -> Array | None:
        """``[1 or B, heads, n, n]`` relative position and distance biases (zero rows/columns for a class token),
        or None; ``positions [B, P, 2]``: the tokens' own centres (object tokens) instead of the patch grid's."""
        c = self.config
        if not (c.relative_position_bias or c.distance_bias):
            return None
        grid = c.image_size // c.patch_size
        bias = 0.0
        if c.relative_position_bias:
            bias = bias + self.relative_bias[...][relative_offset_index(grid)]  # [P, P, heads]
        if c.distance_bias:
            features = jnp.asarray(distance_features(grid)) if positions is None else pairwise_distance_features(positions)
            bias = bias + c.distance_bias_scale * (features @ self.distance_bias[...])  # [(B,) P, P, heads]
        bias = jnp.moveaxis(bias, -1, -3)
        extra = n - bias.shape[-1]  # the class token
        bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 2) + [(extra, 0), (extra, 0)])
        return (bias if bias.ndim == 4 else bias[None]).astype(dtype)


def sincos2d_at(positions: Array, width: int) -> Array:
    """Fixed 2-D sine-cosine embeddings of ``positions [..., 2]`` (x, y in patch or pixel units) -> ``[..., width]``:
    ``[sin(x ω), cos(x ω), sin(y ω), cos(y ω)]`` with ``ω_k = 10000^(-k / (width/4))``. Continuous positions are
    fine: the dot product of two embeddings is a sum of ``cos(ω Δ)``, largest where two tokens coincide."""
    omega = 1.0 / (10_000.0 ** (jnp.arange(width // 4, dtype=jnp.float32) / (width // 4)))
    x = positions[..., 0:1].astype(jnp.float32) * omega
    y = positions[..., 1:2].astype(jnp.float32) * omega
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=-1)


def sincos2d_position_embedding(grid: int, width: int) -> Array:
    """Fixed 2-D sine-cosine embeddings ``[1 + grid², width]`` of a patch grid, row-major (zeros for the CLS slot)."""
    ys, xs = jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32), jnp.arange(grid, dtype=jnp.float32), indexing="ij")
    patches = sincos2d_at(jnp.stack([xs.reshape(-1), ys.reshape(-1)], -1), width)
    return jnp.concatenate([jnp.zeros((1, width)), patches], axis=0)


class ViT(nnx.Module):
    """Returns the requested hidden states, each ``[B, 1 + N_patches, width]`` (CLS first; ``[B, N_patches,
    width]`` without a class token)."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = jnp.dtype(config.param_dtype)
        if config.tokens == "objects":
            self.tokenizer = ObjectTokenizer(config.max_objects)
            self.patch_embedding = _linear(self.tokenizer.feature_dim(config.channels), config.width, config, rngs)
        else:
            patch_dim = config.channels * config.patch_size**2
            # Patch embedding as a linear map over flattened (C, p, p) patches: the same numbers as
            # CLIP's bias-free Conv2d with stride = kernel = patch size, and one big matmul.
            self.patch_embedding = _linear(patch_dim, config.width, config, rngs, bias=config.patch_bias)
        if config.class_token:
            self.class_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (config.width,), pd))
        if config.posemb == "learned" and config.tokens == "patches":
            n_pos = config.num_patches + int(config.class_token)
            self.position_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (n_pos, config.width), pd))
        self.pre_layrnorm = _layer_norm(config, rngs) if config.pre_ln else None
        self.layers = nnx.List([EncoderLayer(config, rngs=rngs) for _ in range(config.depth)])
        self.post_layernorm = _layer_norm(config, rngs)

    def patchify(self, images: Array) -> Array:
        """``[B, H, W, C]`` -> ``[B, N, C·p·p]`` in (C, p, p) order, row-major over patches."""
        b, h, w, ch = images.shape
        p = self.config.patch_size
        x = images.reshape(b, h // p, p, w // p, p, ch)
        x = x.transpose(0, 1, 3, 5, 2, 4)  # [B, gh, gw, C, p, p]
        return x.reshape(b, (h // p) * (w // p), ch * p * p)

    def objects(self, images: Array | ObjectTokens) -> ObjectTokens:
        """An object tower's tokens: found in ``images [B, H, W, C]``, or ``images`` itself when a batch carries
        them already (``data/object_cache.py``)."""
        if isinstance(images, ObjectTokens):
            expected = (self.config.max_objects, self.tokenizer.feature_dim(self.config.channels))
            if images.tokens.shape[1:] != expected:
                raise ValueError(f"ViT expects object tokens of shape [B, {expected[0]}, {expected[1]}], "
                                 f"got {images.tokens.shape}.")
            return images
        return self.tokenizer(images)

    def __call__(self, images: Array | ObjectTokens, taps: tuple[int, ...],
                 dropout_key: Array | None = None) -> list[Array]:
        """images: ``[B, H, W, C]`` float, already normalised (an object tower: or its ``ObjectTokens``); taps: HF
        ``hidden_states`` indices.

        ``dropout_key``: block ``i``'s adapter gets ``fold_in(dropout_key, i)`` (None: deterministic).
        """
        c = self.config
        if not isinstance(images, ObjectTokens) and images.shape[1:] != (c.image_size, c.image_size, c.channels):
            raise ValueError(
                f"ViT expects images of shape [B, {c.image_size}, {c.image_size}, {c.channels}], got {images.shape}."
            )
        if isinstance(images, ObjectTokens) and c.tokens != "objects":
            raise ValueError("Object tokens given to a tower that reads patches (tokens='patches').")
        bad = [t for t in taps if not 0 <= t <= c.depth]
        if bad:
            raise ValueError(f"Tap indices {bad} out of range 0..{c.depth} (hidden_states numbering).")
        positions = valid = None
        if c.tokens == "objects":
            objects, positions, valid = self.objects(images)
            x = self.patch_embedding(objects.astype(jnp.dtype(c.dtype)))
            posemb = jnp.zeros((), x.dtype)
            if c.posemb == "sincos2d":  # what a patch grid's table gives at each centre, in patch_size units
                at = (positions + 0.5) * (c.image_size / c.patch_size)
                posemb = jnp.where(valid[..., None], sincos2d_at(at, c.width), 0.0)
                if c.class_token:
                    posemb = jnp.concatenate([jnp.zeros_like(posemb[:, :1]), posemb], axis=1)
        else:
            x = self.patch_embedding(self.patchify(images.astype(jnp.dtype(c.dtype))))
            if c.posemb == "learned":
                posemb = self.position_embedding[...]
            else:
                posemb = sincos2d_position_embedding(c.image_size // c.patch_size, c.width)
                posemb = posemb if c.class_token else posemb[1:]
        if c.class_token:
            cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, c.width))
            x = jnp.concatenate([cls, x], axis=1)
            valid = None if valid is None else jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
        x = x + posemb.astype(x.dtype)
        if self.pre_layrnorm is not None:
            x = self.pre_layrnorm(x)
        hidden = {0: x}
        call = layers.remat(EncoderLayer.__call__, c.remat)

        def block(layer, x, index):
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
            return layers.constrain(call(layer, x, key, positions, valid), ("batch", None, None))

        deepest = max(taps)
        if c.scan_layers and deepest > 0:
            # one scan up to the deepest tap whose every block's output is kept: a tap reads its block's (one scan,
            # not one per stretch between taps, each of which the compiler would generate kernels for again)
            _, outputs = scan.scan_modules(list(self.layers[:deepest]), block, x, jnp.arange(deepest), every_carry=True)
            hidden.update({t: outputs[t - 1] for t in taps if t > 0})
        else:
            for i in range(max(taps)):
                x = block(self.layers[i], x, i)
                hidden[i + 1] = x
        if valid is not None:
            return [jnp.where(valid[..., None], hidden[t], 0.0) for t in taps]
        return [hidden[t] for t in taps]
