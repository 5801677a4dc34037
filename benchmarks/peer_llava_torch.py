"""Our LLaVA-style train step against transformers' PyTorch ``LlavaForConditionalGeneration``, same shapes, same CPU.

    python benchmarks/peer_llava_torch.py                       # ablation_llava (demo size) and a medium size
    python benchmarks/peer_llava_torch.py --sizes=demo --threads=2 --rounds=6 --steps=5

What is compared (per size, both models built in this one process, then stepped in interleaved rounds):

  ours  ``configs/vqa.py:ablation_llava`` (the demo's ViT and Llama from random init, visual tokens as an LLM
        prefix), with the release LLaVA recipe (``presets._llava_7b``): ``train.trainable = PROJECTOR_ONLY``
        (vision tower and LLM frozen), no modality embedding, memory_scale 1, projector hidden = LLM width
        (LLaVA-1.5's ``mlp2x``), no Λ; plus ``post_ln=False`` so the tap is HF's raw ``hidden_states[-1]``.
        The real train step (``recipe.build_step``: loss, gradients, global-norm clipping, AdamW, non-finite
        guard, metrics), compiled once.
  peer  ``LlavaForConditionalGeneration(LlavaConfig(vision_config=CLIPVisionConfig(...), text_config=
        LlamaConfig(...)))`` with the same sizes: CLIP width/depth/heads/MLP/patch/image size and exact GELU,
        Llama width/layers/heads/KV heads (GQA)/MLP/vocab/RoPE θ/RMS eps, ``vision_feature_layer=-1`` (= our tap,
        the last block, so both run every block), ``vision_feature_select_strategy='default'`` (CLS dropped, as
        ours), projector ``linear_1 → act → linear_2`` with ``projector_hidden_act='silu'`` (our SRProj's
        activation). Vision tower and language model ``requires_grad_(False)``, projector trainable; one step is
        forward (``use_cache=False``), the same answer-token cross entropy and token accuracy over the text
        positions, ``backward``, ``clip_grad_norm_``, ``torch.optim.AdamW`` (same lr, betas, weight decay),
        ``zero_grad(set_to_none=True)``. Eager PyTorch (``--torch_compile`` tries ``torch.compile``), fp32,
        SDPA attention (transformers' default).

Both see the identical batches (real Sort-of-CLEVR training batches from our pipeline; the image placeholder of
the peer's ``input_ids`` is the tokenizer's ``<unk>`` id, which never occurs in the text), the same batch size
and sequence (N_vis visual + T text positions; both compute the LM head over all of them). Parameter counts of
the two are printed and must be equal.

Threads: ``--threads=N`` pins this process to the first N CPUs of its affinity (``os.sched_setaffinity``, before
JAX or torch start); XLA's CPU client sizes its thread pool from the affinity mask, and ``torch.set_num_threads
(N)`` (interop threads 1) does the same for torch. Equivalent to running under ``taskset -c 0-(N-1)``.
``OMP_WAIT_POLICY=PASSIVE`` (default ``--omp_passive``; an explicit environment value wins) makes torch's OpenMP
threads sleep instead of spin at barriers. On a machine whose cores other processes also use, the default
(active spinning) collapses torch with N > 1: measured on the shared 2-vCPU dev machine at load ~5, the demo-size
peer step took 2.4 s with 2 spinning threads, 41 ms with PASSIVE, 45 ms with 1 thread. XLA's CPU thread pool is
not OpenMP and is unaffected.

Reported: median step time of each (each step timed to completion: ``block_until_ready`` / torch is
synchronous on CPU), examples/s, and ours/peer throughput. The issue's goal is ours >= 1.5x the peer.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_SIZES = flags.DEFINE_list("sizes", ["demo", "medium"], "demo: configs/vqa.py:ablation_llava sizes; medium: see SIZES.")
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads for both (0: every CPU of this process's affinity).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Batch size (0: the size's default).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps of each per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Interleaved rounds (the order alternates).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps of each after setup/compilation.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "Also wrap the peer's model in torch.compile.")
_OMP_PASSIVE = flags.DEFINE_bool(
    "omp_passive", True, "Set OMP_WAIT_POLICY=PASSIVE for torch's OpenMP pool unless already set (see the docstring).")

# Overrides of configs/vqa.py:ablation_llava per size ('' = as the preset is).
SIZES = {
    "demo": dict(batch_size=32),
    # A size where the matmuls, not per-op overheads, dominate a CPU step: ViT-S/16-like tower on 224 px
    # (196 patches), an 8-layer GQA Llama of width 512.
    "medium": dict(
        batch_size=8,
        vit=dict(image_size=224, patch_size=16, width=384, depth=6, heads=6, mlp_dim=1536, taps=(6,)),
        llm=dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, mlp_dim=1408, vocab_size=4096),
    ),
}


def our_config(size: str, batch_size: int = 0):
    import step_throughput

    from semrel_jax import presets

    c = step_throughput.get_config("ablation_llava")
    spec = SIZES[size]
    (enc,) = c.model.encoders.values()
    enc.update(spec.get("vit", {}))
    c.model.llm.update(spec.get("llm", {}))
    enc.update(post_ln=False, drop_cls=True, adapter_dim=0, taps=(enc.depth,))
    c.model.update(injection="prefix", modality_embedding=False)
    c.model.projector.update(hidden=c.model.llm.dim, learnable_diagonal=False, memory_scale=1.0)
    c.train.update(trainable=presets.PROJECTOR_ONLY, frozen=(), frozen_dtype="float32",
                   batch_size=batch_size or spec["batch_size"])
    return c


def peer_model(c, vocab_size: int, image_token_id: int):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    (enc,) = c.model.encoders.values()
    m = c.model.llm
    act = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh"}[enc.act]
    vision = CLIPVisionConfig(hidden_size=enc.width, intermediate_size=enc.mlp_dim, num_hidden_layers=enc.depth,
                              num_attention_heads=enc.heads, image_size=enc.image_size, patch_size=enc.patch_size,
                              num_channels=3, hidden_act=act, layer_norm_eps=1e-5, attention_dropout=0.0)
    text = LlamaConfig(vocab_size=m.vocab_size or vocab_size, hidden_size=m.dim, intermediate_size=m.mlp_dim,
                       num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                       rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta, tie_word_embeddings=m.tie_embeddings,
                       max_position_embeddings=4096, attention_bias=False, mlp_bias=False, attention_dropout=0.0)
    n_vis = (enc.image_size // enc.patch_size) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         image_seq_length=n_vis, projector_hidden_act="silu", vision_feature_layer=-1,
                         vision_feature_select_strategy="default", multimodal_projector_bias=True,
                         tie_word_embeddings=m.tie_embeddings)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).float()
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_("multi_modal_projector" in name)
    return model, n_vis


class Peer:
    """The PyTorch train step over the same host batches."""

    def __init__(self, c, host_batches, vocab_size, image_token_id, compile_model=False):
        import numpy as np
        import torch

        self.torch = torch
        self.model, n_vis = peer_model(c, vocab_size, image_token_id)
        self.n_vis = n_vis
        self.params_total = sum(p.numel() for p in self.model.parameters())
        self.params_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        t = c.train
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=t.learning_rate,
                                           betas=(t.b1, t.b2), weight_decay=t.weight_decay)
        self.clip = t.grad_clip
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.batches = []
        for b in host_batches:
            (images,) = b["images"].values()
            bsz = images.shape[0]
            ids = np.concatenate([np.full((bsz, n_vis), image_token_id, np.int64), b["tokens"].astype(np.int64)], 1)
            mask = np.concatenate([np.ones((bsz, n_vis), np.int64), b["valid"].astype(np.int64)], 1)
            self.batches.append(dict(
                pixel_values=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                targets=torch.from_numpy(b["targets"].astype(np.int64)), loss_mask=torch.from_numpy(b["loss_mask"])))
        self.times, self._i = [], 0

    def step(self, batch):
        torch = self.torch
        out = self.forward(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits[:, self.n_vis:].float()
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
        mask = batch["loss_mask"].flatten()
        weight = mask.sum().clamp(min=1.0)
        loss = (losses * mask).sum() / weight
        loss.backward()
        with torch.no_grad():
            accuracy = ((logits.argmax(-1).flatten() == batch["targets"].flatten()) * mask).sum() / weight
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), float(accuracy)

    def run(self, n, record=True):
        for _ in range(n):
            batch = self.batches[self._i % len(self.batches)]
            self._i += 1
            t0 = time.perf_counter()
            self.last_loss, _ = self.step(batch)
            if record:
                self.times.append(time.perf_counter() - t0)


def main(argv):
    del argv
    affinity = sorted(os.sched_getaffinity(0))
    threads = _THREADS.value or len(affinity)
    os.sched_setaffinity(0, affinity[:threads])  # before JAX / torch create their thread pools
    if _OMP_PASSIVE.value:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP runtime starts

    import jax
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    import step_throughput

    print(f"jax {jax.__version__}, torch {torch.__version__}; CPUs {sorted(os.sched_getaffinity(0))}, "
          f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
          f"{step_throughput.machine_load()}")
    results = []
    for size in _SIZES.value:
        c = our_config(size, _BATCH.value)
        ours = step_throughput.build(f"ours[{size}]", c)
        with tempfile.TemporaryDirectory() as tmp:
            host_batches, vocab = step_throughput.real_batches(c, tmp, 4)
            from semrel_jax import recipe

            tokenizer = recipe.build_tokenizer(c, tmp)
        peer = Peer(c, host_batches, vocab, tokenizer.unk_token_id, _TORCH_COMPILE.value)
        ours_total = sum(ours.params)
        print(f"[{size}] batch {c.train.batch_size}, sequence {peer.n_vis} visual + {c.data.max_text_len} text; "
              f"params ours {ours_total:,} ({ours.params[0]:,} trainable) vs peer {peer.params_total:,} "
              f"({peer.params_trainable:,} trainable); ours compiled in {ours.compile_s:.1f}s")
        if (ours_total, ours.params[0]) != (peer.params_total, peer.params_trainable):
            print("WARNING: parameter counts differ; the models are not the same size")
        ours.run(_WARMUP.value, record=False)
        peer.run(_WARMUP.value, record=False)
        for r in range(_ROUNDS.value):
            for side in ((ours, peer) if r % 2 == 0 else (peer, ours)):
                side.run(_STEPS.value)
        t_ours, t_peer = statistics.median(ours.times), statistics.median(peer.times)
        gflop = ours.count.training / 1e9
        results.append((size, c.train.batch_size, t_ours, t_peer, gflop, ours.last_loss, peer.last_loss))
        print(f"[{size}] step ms median ours {1e3 * t_ours:.2f} (min {1e3 * min(ours.times):.2f}) "
              f"peer {1e3 * t_peer:.2f}; ours/peer throughput {t_peer / t_ours:.2f}x")
        del ours, peer
    print(f"\n{'size':<8}{'batch':>6}{'ours ms':>10}{'peer ms':>10}{'ours ex/s':>11}{'peer ex/s':>11}"
          f"{'ours/peer':>11}{'GFLOP/ex':>10}{'ours TFLOP/s':>14}{'peer TFLOP/s':>14}")
    for size, b, to, tp, g, _, _ in results:
        print(f"{size:<8}{b:>6}{1e3 * to:>10.2f}{1e3 * tp:>10.2f}{b / to:>11.1f}{b / tp:>11.1f}{tp / to:>10.2f}x"
              f"{g:>10.4f}{g * b / to / 1e3:>14.4f}{g * b / tp / 1e3:>14.4f}")
    print(f"\n{step_throughput.machine_load()}")


if __name__ == "__main__":
    app.run(main)
