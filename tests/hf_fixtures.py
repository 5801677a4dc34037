"""Tiny random Hugging Face models saved locally (no downloads), shared by the conversion tests."""

import torch
import transformers

LLM_COMMON = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

LLMS = {
    "llama2": (transformers.LlamaConfig, dict(rms_norm_eps=1e-5)),
    "llama1_mha": (transformers.LlamaConfig, dict(num_key_value_heads=4, rms_norm_eps=1e-6)),
    "llama3_rope_scaling": (
        transformers.LlamaConfig,
        dict(
            rope_theta=500_000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
    "llama32_tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True)),
    "qwen2_qkv_bias": (transformers.Qwen2Config, dict()),
    "qwen3_qk_norm": (transformers.Qwen3Config, dict(head_dim=24, tie_word_embeddings=True)),
    "mistral_sliding_window": (transformers.MistralConfig, dict(sliding_window=5)),
}

VISION_COMMON = dict(
    image_size=32, patch_size=8, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4
)
VISION = {
    "clip": (transformers.CLIPVisionConfig, transformers.CLIPVisionModel, dict()),
    "siglip": (transformers.SiglipVisionConfig, transformers.SiglipVisionModel, dict()),
    "dinov2": (transformers.Dinov2Config, transformers.Dinov2Model, dict(layerscale_value=0.5)),
    "siglip2": (transformers.Siglip2VisionConfig, transformers.Siglip2VisionModel, dict(image_size=None, num_patches=16)),
}


def save_llm(directory: str, name: str, max_shard_size=None, **overrides) -> str:
    config_cls, extra = LLMS[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**(LLM_COMMON | extra | overrides)))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norms and biases: away from their trivial init, so their mapping matters
                p.add_(0.02 * torch.randn_like(p))
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(directory, **kwargs)
    return directory


def save_vision(directory: str, name: str, **overrides) -> str:
    config_cls, model_cls, extra = VISION[name]
    torch.manual_seed(0)
    kwargs = {k: v for k, v in (VISION_COMMON | extra | overrides).items() if v is not None}
    model_cls(config_cls(**kwargs)).save_pretrained(directory)
    return directory


def save_clip_two_tower(directory: str) -> str:
    """A full CLIPModel checkpoint (what openai/clip-vit-large-patch14 is)."""
    torch.manual_seed(0)
    text = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    transformers.CLIPModel(transformers.CLIPConfig(vision_config=VISION_COMMON, text_config=text)).save_pretrained(directory)
    return directory


def save_bpe_tokenizer(directory: str, words: list[str], vocab_size: int = 300) -> None:
    """A byte-level BPE tokenizer with Llama-3-style special tokens, saved like a HF model's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([" ".join(words)] * 4, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=specials[0], eos_token=specials[1]
    )
    tokenizer.save_pretrained(directory)
