"""Analytic model FLOPs of a ``VLMConfig`` per training example, and XLA's own count for comparison.

Convention
----------
* **2 FLOPs per multiply-accumulate**: a ``[m, k] @ [k, n]`` matmul is ``2·m·k·n`` FLOPs (the usual MFU
  convention, and what XLA's ``cost_analysis()['flops']`` reports for a dot).
* **Matmuls only**: every projection, patch embedding, attention ``QKᵀ`` and ``A·V``, MLP, adapter, projector,
  ICA ``q·Kᵀ`` and ``α·V`` and the LM head. Norms, activations, softmax, RoPE, residual adds, dropout, the loss
  and the optimizer update are left out (they are O(width) per token against O(width²) for the matmuls; on
  the tiny test configs they are what separates this count from XLA's, see ``tests/test_flops.py``).
* **Counted as executed**: attention is dense (the causal/padding mask is applied to a full ``S×S`` score
  matrix, so its FLOPs are not halved); the LM head of the prefix (LLaVA) preset runs over the whole
  ``N_vis + T`` sequence, because the model slices the text logits after the head; ViT blocks past the
  deepest tap are not counted because they are never run (``models/vit.py``).
* **Per example**: one image per encoder and ``text_len`` text tokens (the padded ``data.max_text_len``,
  since padding is computed like any other token).

Training FLOPs
--------------
Every matmul ``Y = A @ B`` costs its forward ``F`` plus ``F`` for each operand whose gradient the backward
pass computes: ``dA`` when ``A`` depends on a trainable parameter (or is one), ``dB`` likewise. For a layer
``x @ W`` that is

* ``3F`` when ``W`` trains and something upstream of ``x`` trains (forward + dX + dW; the usual "6·N·tokens");
* ``2F`` when ``W`` is frozen but something upstream trains (forward + activation gradient dX only), or when
  ``W`` trains but nothing upstream does (forward + dW: the first trainable layer, e.g. the projector over
  a frozen vision tower, never needs dX);
* ``1F`` when neither: a frozen vision tower with no trainable adapters and nothing trainable before it runs
  forward only.

This is exactly what reverse-mode autodiff in JAX does with the frozen state closed over (``train_step``):
an op none of whose inputs depends on the differentiated parameters gets no cotangent at all. Which
parameters train is the set of parameter paths ``train.trainable`` minus ``train.frozen`` selects
(``trainable_paths``), so PEFT recipes (adapters, projector only, LoRA) are counted as they run.

These are *model* FLOPs (the MFU convention): the forward recomputed in the backward pass by rematerialisation
(``model.remat``) is hardware work the model does not need and is not counted; XLA's count of a remat step is
higher by that much.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Sequence

import jax

from semrel_jax.method import reconstruction
from semrel_jax.method.ensemble import projector_name
from semrel_jax.method.vlm import VLMConfig, slot_layout
from semrel_jax.models import abstract as abstract_init
from semrel_jax.models.objects import ObjectTokenizer

PARTS = ("vision", "projector", "llm", "ica", "lm_head")


@dataclasses.dataclass(frozen=True)
class Op:
    """One matmul of the forward pass (per example)."""

    name: str  # e.g. 'llm/layers/3/self_attn/q_proj' or 'llm/layers/3/self_attn/scores'
    part: str  # one of PARTS
    forward: float  # FLOPs of the forward matmul
    operand_grads: int  # 0, 1 or 2: operands whose gradient the backward computes

    @property
    def training(self) -> float:
        return self.forward * (1 + self.operand_grads)


@dataclasses.dataclass
class FlopsCount:
    """Per-example FLOPs of one model at one text length, op by op."""

    ops: list[Op]
    text_len: int
    sequence_len: int  # the LLM's sequence: text_len, plus the visual tokens for the prefix preset

    @property
    def forward(self) -> float:
        return sum(op.forward for op in self.ops)

    @property
    def training(self) -> float:
        """Forward + backward FLOPs of one training example (see the module docstring)."""
        return sum(op.training for op in self.ops)

    def by_part(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = collections.OrderedDict()
        for part in PARTS:
            ops = [op for op in self.ops if op.part == part]
            if ops:
                out[part] = {"forward": sum(o.forward for o in ops), "training": sum(o.training for o in ops)}
        return out

    def summary(self) -> str:
        lines = [f"{'part':<10}{'forward GFLOP':>15}{'training GFLOP':>16}{'train/fwd':>10}"]
        for part, v in self.by_part().items():
            lines.append(f"{part:<10}{v['forward'] / 1e9:>15.4f}{v['training'] / 1e9:>16.4f}"
                         f"{v['training'] / max(v['forward'], 1e-30):>10.2f}")
        lines.append(f"{'total':<10}{self.forward / 1e9:>15.4f}{self.training / 1e9:>16.4f}"
                     f"{self.training / max(self.forward, 1e-30):>10.2f}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ trainable set


def trainable_paths(config: VLMConfig, trainable: Sequence[str] = (".*",), frozen: Sequence[str] = ()) -> frozenset[str]:
    """The '/'-joined parameter paths that train under ``train.trainable`` / ``train.frozen`` regexes.

    Uses an abstract model (``nnx.eval_shape``): nothing is allocated, so release-size configs are fine.
    """
    from flax import nnx

    from semrel_jax.method.vlm import VisionLanguageModel
    from semrel_jax.training import partition

    model = abstract_init.eval_shape(lambda: VisionLanguageModel(config, rngs=nnx.Rngs(params=0)))
    is_trainable = partition.trainable_filter(trainable, frozen)
    paths = set()
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if is_trainable(path, value):
            paths.add(partition.path_string(path))
    return frozenset(paths)


class _Trainable:
    """``self(prefix)``: does any trainable parameter live at or under ``prefix``? (None: everything trains.)"""

    def __init__(self, paths: Iterable[str] | None):
        self.all = paths is None
        self.paths = frozenset(paths or ())
        prefixes = set()
        for p in self.paths:
            parts = p.split("/")
            prefixes.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        self.prefixes = frozenset(prefixes)

    def __call__(self, *prefixes: str) -> bool:
        return self.all or any(p in self.prefixes for p in prefixes)


# ----------------------------------------------------------------------------------------------- counting


class _Ledger:
    def __init__(self, trained: _Trainable):
        self.ops: list[Op] = []
        self.trained = trained

    def matmul(self, name: str, part: str, flops: float, *operand_grads: bool) -> None:
        self.ops.append(Op(name, part, float(flops), sum(bool(g) for g in operand_grads)))

    def linear(self, path: str, part: str, rows: int, n_in: int, n_out: int, x_grad: bool, *,
               lora_rank: int = 0) -> bool:
        """``x @ W (+ b)`` (plus ``(x A) B`` with LoRA); returns whether the output depends on trainable params."""
        w_train = self.trained(f"{path}/kernel")
        self.matmul(path, part, 2 * rows * n_in * n_out, x_grad, w_train)
        out_grad = x_grad or w_train or self.trained(f"{path}/bias")
        if lora_rank:
            a_train, b_train = self.trained(f"{path}/lora_a"), self.trained(f"{path}/lora_b")
            self.matmul(f"{path}/lora_a", part, 2 * rows * n_in * lora_rank, x_grad, a_train)
            self.matmul(f"{path}/lora_b", part, 2 * rows * lora_rank * n_out, x_grad or a_train, b_train)
            out_grad = out_grad or a_train or b_train
        return out_grad


def _vision(ledger: _Ledger, config: VLMConfig) -> bool:
    """Encoders (up to the deepest tap) and projectors; returns whether the visual tokens need gradients."""
    t = ledger.trained
    vis = config.vision
    tokens_grad = False
    for spec in vis.encoders:
        v = spec.vit
        root = f"vision/encoders/{spec.name}"
        n = v.num_patches + int(v.class_token)
        # object tokens: their features (the tokenizer itself is not matmul work and is not counted)
        if v.tokens == "objects":
            patch_dim = ObjectTokenizer(v.max_objects).feature_dim(v.channels)
        else:
            patch_dim = v.channels * v.patch_size**2
        # pixels never need gradients; the embedding output does if any embedding parameter trains
        x_grad = ledger.linear(f"{root}/patch_embedding", "vision", v.num_patches, patch_dim, v.width, False)
        x_grad = x_grad or t(f"{root}/class_embedding", f"{root}/position_embedding", f"{root}/pre_layrnorm")
        hidden_grad = {0: x_grad}
        w, hd = v.width, v.width // v.heads
        for i in range(max(spec.taps)):
            p = f"{root}/layers/{i}"
            a_grad = x_grad or t(f"{p}/layer_norm1")
            q = ledger.linear(f"{p}/q_proj", "vision", n, w, w, a_grad)
            k = ledger.linear(f"{p}/k_proj", "vision", n, w, w, a_grad)
            val = ledger.linear(f"{p}/v_proj", "vision", n, w, w, a_grad)
            ledger.matmul(f"{p}/scores", "vision", 2 * n * n * v.heads * hd, q, k)
            ledger.matmul(f"{p}/attend", "vision", 2 * n * n * v.heads * hd, q or k, val)
            o = ledger.linear(f"{p}/out_proj", "vision", n, w, w, q or k or val)
            x_grad = x_grad or o or t(f"{p}/layer_scale1")
            y_grad = x_grad or t(f"{p}/layer_norm2")
            h = ledger.linear(f"{p}/fc1", "vision", n, w, v.mlp_dim, y_grad)
            m = ledger.linear(f"{p}/fc2", "vision", n, v.mlp_dim, w, h)
            x_grad = x_grad or m or t(f"{p}/layer_scale2")
            if v.adapter_dim:
                h = ledger.linear(f"{p}/adapter/fc1", "vision", n, w, v.adapter_dim, y_grad)
                x_grad = x_grad or ledger.linear(f"{p}/adapter/fc2", "vision", n, v.adapter_dim, w, h)
            hidden_grad[i + 1] = x_grad
        n_out = spec.num_tokens
        for tap in spec.taps:
            p = f"vision/projectors/{projector_name(spec.name, tap)}"
            in_grad = hidden_grad[tap] or (spec.post_ln and t(f"{root}/post_layernorm"))
            h = ledger.linear(f"{p}/fc1", "projector", n_out, v.width, vis.projector_hidden, in_grad)
            h = h or t(f"{p}/diagonal")
            tokens_grad = ledger.linear(f"{p}/fc2", "projector", n_out, vis.projector_hidden, vis.out_dim, h) or tokens_grad
    return tokens_grad or (config.modality_embedding and t("modality_embedding"))


def count(config: VLMConfig, text_len: int, trainable: Iterable[str] | None = None) -> FlopsCount:
    """Per-example FLOPs of ``config`` with ``text_len`` text tokens.

    ``trainable``: the trainable parameter paths (``trainable_paths``); None means every parameter trains.
    """
    ledger = _Ledger(_Trainable(trainable))
    t = ledger.trained
    visual_grad = _vision(ledger, config)
    llm = config.llm
    d, hd = llm.dim, llm.resolved_head_dim
    prefix = config.injection == "prefix"
    s = text_len + (config.vision.num_tokens if prefix else 0)
    n_mem = config.memory_slots
    keys_grad = visual_grad or t("memory_key_embedding")
    values_grad = visual_grad or t("memory_value_embedding")

    def lora(name: str) -> int:
        return llm.lora_rank if llm.lora_rank and name in llm.lora_targets else 0

    x_grad = t("llm/embed_tokens") or (prefix and visual_grad)
    for i in range(llm.n_layers):
        p = f"llm/layers/{i}"
        a_grad = x_grad or t(f"{p}/input_layernorm")
        q = ledger.linear(f"{p}/self_attn/q_proj", "llm", s, d, llm.n_heads * hd, a_grad, lora_rank=lora("q_proj"))
        k = ledger.linear(f"{p}/self_attn/k_proj", "llm", s, d, llm.n_kv_heads * hd, a_grad, lora_rank=lora("k_proj"))
        v = ledger.linear(f"{p}/self_attn/v_proj", "llm", s, d, llm.n_kv_heads * hd, a_grad, lora_rank=lora("v_proj"))
        q = q or t(f"{p}/self_attn/q_norm")
        k = k or t(f"{p}/self_attn/k_norm")
        # GQA: every query head attends over its group's shared key/value head; the FLOPs follow the query heads.
        ledger.matmul(f"{p}/self_attn/scores", "llm", 2 * s * s * llm.n_heads * hd, q, k)
        ledger.matmul(f"{p}/self_attn/attend", "llm", 2 * s * s * llm.n_heads * hd, q or k, v)
        o = ledger.linear(f"{p}/self_attn/o_proj", "llm", s, llm.n_heads * hd, d, q or k or v, lora_rank=lora("o_proj"))
        h_grad = x_grad or o
        u_grad = h_grad or t(f"{p}/post_attention_layernorm")
        g = ledger.linear(f"{p}/mlp/gate_proj", "llm", s, d, llm.mlp_dim, u_grad, lora_rank=lora("gate_proj"))
        up = ledger.linear(f"{p}/mlp/up_proj", "llm", s, d, llm.mlp_dim, u_grad, lora_rank=lora("up_proj"))
        m = ledger.linear(f"{p}/mlp/down_proj", "llm", s, llm.mlp_dim, d, g or up, lora_rank=lora("down_proj"))
        x_grad = h_grad or m
        if not prefix:
            ledger.matmul(f"{p}/ica/scores", "ica", 2 * text_len * n_mem * d, u_grad, keys_grad)
            ledger.matmul(f"{p}/ica/attend", "ica", 2 * text_len * n_mem * d, u_grad or keys_grad, values_grad)
            x_grad = x_grad or u_grad or keys_grad or values_grad
    x_grad = x_grad or t("llm/norm")
    if llm.tie_embeddings:
        ledger.matmul("llm/embed_tokens/attend", "lm_head", 2 * s * d * llm.vocab_size, x_grad, t("llm/embed_tokens"))
    else:
        ledger.linear("llm/lm_head", "lm_head", s, d, llm.vocab_size, x_grad)
    return FlopsCount(ledger.ops, text_len, s)


def forward_flops(config: VLMConfig, text_len: int) -> float:
    """Forward FLOPs per example."""
    return count(config, text_len).forward


def training_flops(config: VLMConfig, text_len: int, trainable: Iterable[str] | None = None) -> float:
    """Forward + backward FLOPs per training example (``trainable``: see ``count``)."""
    return count(config, text_len, trainable).training


def count_for_run(c, model_config: VLMConfig, text_len: int | None = None) -> FlopsCount:
    """``count`` for a run config and its typed model config: ``train.trainable/frozen``, ``data.max_text_len``
    and ``data.examples_per_image`` (vision FLOPs shared by that many examples)."""
    paths = trainable_paths(model_config, tuple(c.train.trainable), tuple(c.train.frozen))
    flops = count(model_config, text_len or c.data.max_text_len, paths)
    flops.ops += _auxiliary_ops(c, model_config, text_len or c.data.max_text_len, paths)
    shared = c.data.examples_per_image  # the vision tower and projectors run once per G examples
    if shared > 1:
        flops.ops = [
            dataclasses.replace(op, forward=op.forward / shared) if op.part in ("vision", "projector") else op
            for op in flops.ops
        ]
    return flops


def _auxiliary_ops(c, config: VLMConfig, text_len: int, trainable) -> list[Op]:
    """The auxiliary objectives' own matmuls (``training/train_step.py``; they read the visual tokens the answers
    read, so the towers run once): the slot decoder (reconstruction) and the micro-batch's token-image scores
    (alignment)."""
    ledger = _Ledger(_Trainable(trainable))
    tokens_grad = ledger.trained("vision", "modality_embedding")  # do the visual tokens need gradients?
    d = config.llm.dim
    if c.train.reconstruction_weight:
        outputs = reconstruction.CELLS**2 * config.vision.encoders[0].vit.channels
        for group in slot_layout(config.vision):
            ledger.linear("slot_decoder/proj", "projector", group.grid**2, d, outputs, tokens_grad)
    if c.train.alignment_weight:
        images = max(c.train.batch_size // (c.train.grad_accum_steps * c.data.examples_per_image), 1)
        ledger.matmul("alignment/scores", "ica", 2 * text_len * images * config.memory_slots * d,
                      ledger.trained("llm/embed_tokens/embedding"), tokens_grad)
    return [dataclasses.replace(op, name=f"auxiliary/{op.name}") for op in ledger.ops]


# -------------------------------------------------------------------------------------------- XLA's count


def cost_analysis(compiled) -> dict[str, float]:
    """``compiled.cost_analysis()`` as one dict (older JAX returned a list with one dict per program)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        merged: dict[str, float] = collections.defaultdict(float)
        for part in analysis:
            for key, value in part.items():
                merged[key] += value
        return dict(merged)
    return dict(analysis or {})


def xla_flops(fn: Callable, *args, **kwargs) -> float:
    """XLA's FLOP count of ``fn(*args, **kwargs)``: ``jax.jit(fn).lower(...).compile().cost_analysis()['flops']``.

    XLA counts every HLO op of the optimised program: 2 FLOPs per multiply-add in dots and convolutions (as
    here) plus one per element for elementwise ops and reductions, so it sits a little above the analytic
    matmul-only count. On CPU the count is for the whole program (the whole batch).
    """
    compiled = jax.jit(fn).lower(*args, **kwargs).compile()
    return float(cost_analysis(compiled).get("flops", float("nan")))


def compiled_flops(compiled) -> float:
    """XLA's FLOP count of an already compiled function (``jit(f).lower(...).compile()``)."""
    return float(cost_analysis(compiled).get("flops", float("nan")))
