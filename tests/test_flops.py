"""Analytic FLOPs (semrel_jax.training.flops): hand-checkable cases, the training rule, and XLA's own count.

Tolerance against XLA: the analytic count is matmuls only, while XLA's ``cost_analysis()['flops']`` also
counts one FLOP per element of every elementwise op and reduction (norms, activations, softmax, RoPE,
residual adds, the ICA mask and its sort, the loss). On toy widths (16-64) those are a visible share:
measured XLA/analytic on this file's config = 1.10 (ICA forward), 1.09 (prefix forward), 1.07-1.11 (gradients
with every parameter, the projector only, the PEFT set, LoRA trainable); 1.13 for configs/vqa.py:tiny and 1.08
for the demo (forward). So the check is analytic <= XLA <= 1.2 ×
analytic: the lower bound catches double counting, the upper bound a missing block-level piece (one LLM MLP is
~20 % of the test config's forward); single ops are pinned by the hand-computed tests above the XLA ones.
At release widths (4096) the elementwise share is well under 1 %.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from semrel_jax import config as config_lib, presets
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig
from semrel_jax.models.llama import LlamaConfig
from semrel_jax.models.vit import ViTConfig
from semrel_jax.training import flops, partition

VOCAB = 40
XLA_TOLERANCE = 1.2


def _config(injection="ica", taps=(1, 2), adapter_dim=0, lora_rank=0, **llm_kw) -> VLMConfig:
    llm = LlamaConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64,
                      lora_rank=lora_rank, **llm_kw)
    vit = ViTConfig(image_size=30, patch_size=10, width=16, depth=3, heads=2, mlp_dim=32, adapter_dim=adapter_dim)
    vision = EnsembleConfig(encoders=(EncoderSpec("vit", vit, taps),), out_dim=32, projector_hidden=8)
    return VLMConfig(llm=llm, vision=vision, injection=injection, num_memory_slots=12 if injection == "ica" else 0)


def _ops(count, substring):
    return [op for op in count.ops if substring in op.name]


def test_one_llama_mlp_layer_is_2_3_d_m_per_token():
    c = _config()
    t = 7
    mlp = _ops(flops.count(c, t), "llm/layers/0/mlp/")
    assert sum(op.forward for op in mlp) == 2 * 3 * 32 * 64 * t


def test_gqa_attention_and_ica_hand_counts():
    c = _config()
    t, d, hd = 5, 32, 8
    count = flops.count(c, t)
    attn = {op.name.rsplit("/", 1)[1]: op.forward for op in _ops(count, "llm/layers/1/self_attn/")}
    assert attn["q_proj"] == 2 * t * d * 4 * hd
    assert attn["k_proj"] == attn["v_proj"] == 2 * t * d * 2 * hd  # 2 key/value heads
    assert attn["o_proj"] == 2 * t * 4 * hd * d
    assert attn["scores"] == attn["attend"] == 2 * t * t * 4 * hd  # follows the 4 query heads
    ica = _ops(count, "llm/layers/1/ica/")
    assert sum(op.forward for op in ica) == 2 * 2 * t * 12 * d  # q·Kᵀ and α·V over N_mem = 12 slots
    head = _ops(count, "lm_head")
    assert sum(op.forward for op in head) == 2 * t * d * VOCAB


def test_vision_tower_counts_blocks_up_to_the_deepest_tap_only():
    deep = flops.count(_config(taps=(3,)), 4)
    shallow = flops.count(_config(taps=(1,)), 4)
    n, w = 9 + 1, 16  # 3×3 patches + CLS
    block = 2 * n * w * w * 4 + 2 * 2 * n * n * w + 2 * 2 * n * w * 32
    vision = lambda count: sum(op.forward for op in count.ops if op.part == "vision")  # noqa: E731
    assert vision(deep) - vision(shallow) == 2 * block
    assert vision(shallow) == 2 * 9 * (3 * 10 * 10) * w + block  # patch embedding + one block
    # two taps -> two projectors over the 9 patch tokens (CLS dropped)
    proj = sum(op.forward for op in flops.count(_config(taps=(1, 2)), 4).ops if op.part == "projector")
    assert proj == 2 * 2 * 9 * (16 * 8 + 8 * 32)


def test_prefix_preset_runs_the_llm_over_visual_plus_text_tokens():
    t = 6
    ica, prefix = flops.count(_config("ica"), t), flops.count(_config("prefix", taps=(2,)), t)
    assert (ica.sequence_len, prefix.sequence_len) == (t, t + 9)
    mlp = lambda count: sum(op.forward for op in _ops(count, "/mlp/"))  # noqa: E731
    assert mlp(prefix) == mlp(ica) * (t + 9) / t
    assert not [op for op in prefix.ops if op.part == "ica"]


def test_training_multipliers():
    c = _config(adapter_dim=4)
    everything = flops.count(c, 5)
    by_name = {op.name: op for op in everything.ops}
    # pixels need no gradient: the patch embedding is forward + dW
    assert by_name["vision/encoders/vit/patch_embedding"].operand_grads == 1
    assert by_name["llm/layers/1/mlp/up_proj"].operand_grads == 2  # forward + dX + dW = 3×
    assert everything.training == pytest.approx(3 * everything.forward - sum(
        op.forward for op in everything.ops if op.operand_grads == 1), rel=1e-12)

    # projector only: the vision tower runs forward only, the first projector layer needs no dX,
    # the frozen LLM is forward + activation gradients
    projector_only = flops.count(c, 5, flops.trainable_paths(c, presets.PROJECTOR_ONLY))
    by_name = {op.name: op for op in projector_only.ops}
    assert all(op.operand_grads == 0 for op in projector_only.ops if op.part == "vision")
    assert by_name["vision/projectors/vit_layer1/fc1"].operand_grads == 1
    assert by_name["vision/projectors/vit_layer1/fc2"].operand_grads == 2
    # LLM block 0 reads only text embeddings (frozen) until its ICA branch: forward only
    assert by_name["llm/layers/0/mlp/up_proj"].operand_grads == 0
    assert by_name["llm/layers/0/ica/scores"].operand_grads == 1  # dK only
    assert by_name["llm/layers/1/mlp/up_proj"].operand_grads == 1  # dX only (frozen weight)
    assert by_name["llm/lm_head"].operand_grads == 1

    # trainable adapters make every block after the first adapter need dX
    peft = flops.count(c, 5, flops.trainable_paths(c, presets.PEFT_TRAINABLE))
    by_name = {op.name: op for op in peft.ops}
    assert by_name["vision/encoders/vit/layers/0/q_proj"].operand_grads == 0
    assert by_name["vision/encoders/vit/layers/0/adapter/fc1"].operand_grads == 1
    assert by_name["vision/encoders/vit/layers/0/adapter/fc2"].operand_grads == 2
    assert by_name["vision/encoders/vit/layers/1/q_proj"].operand_grads == 1


def _xla_ratio(c: VLMConfig, trainable, text_len=9, batch=2, grad=True) -> float:
    model = VisionLanguageModel(c, rngs=nnx.Rngs(params=0))
    graphdef, params, frozen = partition.split_trainable(model, trainable)
    size = c.vision.encoders[0].vit.image_size
    args = ({"vit": jnp.ones((batch, size, size, 3))}, jnp.ones(batch, jnp.int32),
            jnp.zeros((batch, text_len), jnp.int32), jnp.ones((batch, text_len), bool))

    def forward(params, frozen, *inputs):
        return nnx.merge(graphdef, params, frozen)(*inputs).sum()

    fn = jax.grad(forward) if grad else forward
    xla = flops.xla_flops(fn, params, frozen, *args) / batch
    paths = flops.trainable_paths(c, trainable)
    count = flops.count(c, text_len, paths)
    return xla / (count.training if grad else count.forward)


@pytest.mark.parametrize("injection", ["ica", "prefix"])
def test_forward_agrees_with_xla_cost_analysis(injection):
    ratio = _xla_ratio(_config(injection, adapter_dim=4), (".*",), grad=False)
    assert 1.0 <= ratio <= XLA_TOLERANCE, ratio


@pytest.mark.parametrize(
    "trainable,lora",
    [((".*",), 0), (presets.PROJECTOR_ONLY, 0), (presets.PEFT_TRAINABLE, 0), ((r"/lora_[ab]$",), 4)],
    ids=["all", "projector_only", "peft", "lora"],
)
def test_training_agrees_with_xla_cost_analysis_of_the_gradient(trainable, lora):
    ratio = _xla_ratio(_config(adapter_dim=4, lora_rank=lora), trainable, grad=True)
    assert 1.0 <= ratio <= XLA_TOLERANCE, ratio


def test_demo_config_forward_agrees_with_xla():
    import vqa

    c = vqa.get_config("demo")
    model_config = config_lib.model_config(c, VOCAB)
    ratio = _xla_ratio(model_config, (".*",), text_len=c.data.max_text_len, grad=False)
    assert 1.0 <= ratio <= XLA_TOLERANCE, ratio
    count = flops.count_for_run(c, model_config)
    assert count.text_len == c.data.max_text_len and count.training > 2.5 * count.forward


def test_auxiliary_objectives_add_their_own_matmuls_but_no_second_tower_pass():
    import vqa

    c = vqa.get_config("demo")
    c.train.update(reconstruction_weight=0.0, alignment_weight=0.0)
    plain = flops.count_for_run(c, config_lib.model_config(c, VOCAB))
    c.train.reconstruction_weight = 1.0
    model_config = config_lib.model_config(c, VOCAB)
    with_decoder = flops.count_for_run(c, model_config)
    # one [d -> 5·5·3] decoder over the 5 x 5 patch slots; the towers are not counted twice
    assert with_decoder.forward - plain.forward == 2 * 25 * c.model.llm.dim * 75
    assert [op.name for op in with_decoder.ops if op.name.startswith("auxiliary/")] == ["auxiliary/slot_decoder/proj"]
