"""Every config key and its one default: the schema of a run.

``configs/*.py`` start from ``base_config()`` and change what their presets need; nothing else in the
package supplies a default: code reads ``c.train.keep_every`` directly, never through ``.get`` with a fallback.
The method's keys default to the release's values (as the typed configs of ``models/`` and ``method/`` do);
the rest to the built-in demo's (``configs/vqa.py``, LSRM from random init on Sort-of-CLEVR), whose preset
sets what training from random init changes.
Dataset-specific ``data`` keys and their defaults belong to their dataset module
(``semrel_jax.data.registry.all_defaults``).

A value of ``None`` (a typed ``placeholder``) means "not set": ``semrel_jax.config.resolve`` fills it
(from an ``hf_dir``'s checkpoint, or the from-scratch default) and says what it filled.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from semrel_jax.data import registry


DTYPES = ("float32", "bfloat16", "float16")

# data keys every dataset shares; dataset-specific ones come from the registry
_DATA = dict(
    name="sort_of_clevr",  # semrel_jax/data/registry.py lists the names
    max_text_len=34,  # text tokens per row (the demo's scene descriptions need 33 in the qa format)
    prompt_format="qa",  # 'qa' (built-in data) | 'raw' (datasets that format their own prompts) | 'chat'
    tokenizer="",  # a HF tokenizer directory; '' -> train one over the data, cached in <workdir>/tokenizer
    root="",  # the dataset's release directory (scienceqa, vqa_v2)
    image_root="",  # image folder (coco_captions, llava_json; vqa_v2 default: root/<split>)
    train_file="",  # coco_captions: Karpathy dataset_coco.json; llava_json: the instruction JSON
    eval_file="",  # llava_json: held-out JSON ('' = train_file)
    train_split="",  # '' = the dataset's usual training split
    eval_split="",  # '' = the dataset's usual evaluation split
    on_bad_data="error",  # 'error' names the bad record | 'skip' drops/replaces it and counts it (logged)
    prepared_dir="",  # read the TFDS array_record copy made by `python -m semrel_jax.data.prepare --out=<dir>`
    examples_per_image=1,  # > 1: training batches hold that many questions per image; the ViT runs once per image
    # stages 'kind[+kind]:examples:steps[:loss]' first, each from the first examples of those question kinds
    # (semrel_jax/data/curriculum.py), then the full stream; ':loss' ends a stage early once the loss on held-out
    # examples of its kinds is below it. On the command line a tuple: "--config.data.curriculum=('left_of:3000:2500','above:3000:6000:0.03')"
    curriculum=(),
    num_workers=0,  # grain worker processes (0: in the main process)
    # images whose object tokens the training pipeline keeps, tokenized once on the host (data/object_cache.py);
    # 0: every step tokenizes its images
    object_token_cache=100_000,
    # decoded images of a training split read from its raw files kept in memory, in MB (data/records.py; not
    # prepared copies; generated sets keep their own): a 128 px PNG decodes in ~0.9 ms, as long as a small model's
    # step takes for ~15 examples. 0: every image is decoded each time it comes
    image_cache_mb=2048,
    prefetch=2,
)


def encoder_defaults() -> dict:
    """One vision tower (``model.encoders.<name>``): the demo's from-scratch ViT."""
    return dict(
        hf_dir="",  # a HF CLIP/SigLIP/DINOv2 directory: its architecture and weights (adapters stay ours)
        family="vit",  # the tower's layout: 'vit' (from scratch) | 'clip' | 'siglip' | 'siglip2' | 'dinov2'; hf_dir's wins
        image_size=75,
        patch_size=15,
        width=64,
        depth=2,
        heads=4,
        mlp_dim=192,
        act="quick_gelu",  # CLIP's; the demo's from-scratch tower uses 'gelu' 
        posemb="learned",  # object tokens: none; 'sincos2d' embeds each centre (in patch_size units)
        relative_position_bias=False,  # learned per-head bias by patch offset (from-scratch towers only)
        distance_bias=False,  # learned per-head linear function of the patch offset and distance (from-scratch only)
        distance_bias_scale=1.0,  # multiplies that bias: its learning-rate multiplier under Adam (needs distance_bias)
        distance_bias_init=0.0,  # s > 0: the heads start with slopes on the distance spread from -s to +s (ALiBi-like)
        # 'all' | 'others': each token reads only the other tokens (not itself or the class token), so that a head
        # that prefers near tokens reads the nearest other one (from-scratch only)
        attend="all",
        # None: the family's blocks (DINOv2's have LayerScale, the others none); a number >= 0: every block's two
        # residual branches get a learned per-channel scale starting there (from-scratch only). 0: each block
        # starts as the identity, so a tap after it starts as the tap before it (a relational block that grows)
        layer_scale_init=placeholder(float),
        # 'patches' | 'objects': one token per object found by background subtraction (scenes of flat objects on a
        # background; from-scratch only, pixels 'unit' or 'background', no pooling or reconstruction)
        tokens="patches",
        max_objects=8,  # object slots (tokens='objects'); the largest objects are kept
        taps=(1, 2),  # HF hidden_states indices: an intermediate and the final block
        post_ln=True,
        drop_cls=True,
        pool=1,  # k x k average pooling of the patch grid into the memory (fine patches, fewer slots)
        adapter_dim=0,
        adapter_scale=0.1,
        adapter_dropout=0.0,  # after the adapter's GELU, in training (release: 0.1; the demo's tower has none)
        # Image preprocessing; None: the checkpoint family's HF processor with hf_dir, else the from-scratch
        # defaults of semrel_jax.config.resolve (x/255, bicubic, centre crop).
        normalization=placeholder(str),  # 'unit' | 'background' | 'clip' | 'siglip' | 'imagenet'
        resample=placeholder(str),  # 'bicubic' | 'bilinear' | ...
        crop=placeholder(bool),  # True: resize the shortest side to `resize` (0: image_size), centre-crop; False: squash
        resize=placeholder(int),
    )


def llm_defaults() -> dict:
    return dict(
        hf_dir="",  # a Hugging Face LLM directory (or `convert --out` dir): its architecture and weights
        vocab_size=0,  # 0 = size of the tokenizer
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        mlp_dim=192,
        rope_theta=10_000.0,
        rope_scaling="none",  # 'none' | 'linear' | 'llama3' (Llama 3.1/3.2), with the four fields below
        rope_scaling_factor=1.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position=8192,
        norm_eps=1e-6,
        tie_embeddings=False,
        lora_rank=0,  # > 0: LoRA on lora_targets (train them with train.trainable=(..., "/lora_[ab]$"))
        lora_alpha=16.0,
        lora_targets=("q_proj", "v_proj"),
        dtype="float32",
        param_dtype="float32",
    )


def semvlp_defaults() -> dict:
    """SemVLP (``model.method='semvlp'``, ``training/semvlp_train.py``): the shared BERT, the schedule, the
    objectives. Its visual tokens are the scenes' object regions, or ``model.encoders.vit``'s patch features."""
    return dict(
        # the shared BERT: a HF BERT-family directory (weights + WordPiece tokenizer), or these sizes from scratch;
        # pretrained=False: hf_dir's architecture and tokenizer with random weights (the BERT-init ablation)
        text=dict(hf_dir="", pretrained=True, dim=64, n_layers=4, n_heads=4, mlp_dim=128, max_positions=64),
        # 'regions': one token per object (crop + box, as a detector gives them); 'patches': the ViT's patches
        visual="regions",
        # 'pretrain': scene rows, the weighted objectives (also VQA / retrieval fine-tuning, by weights);
        # 'nlvr2': NLVR2-style rows (a statement about two scenes, true or false) and the pair classifier
        task="pretrain",
        # the pooled output the ITM / VQA / pair heads read: 'mean' of the valid text + visual tokens, or 'cls'
        # (BERT's [CLS]; from scratch it stays near-constant across rows and those heads do not learn: model.py)
        pool="mean",
        cross_layers=2,  # K: cross-attention in the top K layers of each stream (two-stream steps)
        cross=True,  # False: two-stream steps run without the cross-attention (the streams never meet)
        schedule="s,t",  # modes by step, repeating: 's' single-stream, 't' two-stream ("s,s,t", "s", "t", ...)
        init_from="",  # a SemVLP workdir: start from its latest checkpoint's parameters (heads included)
        eval_mode="single",  # the mode evaluation encodes in
        # each objective's weight (0: off); fine-tuning presets keep only theirs (configs/pretrain.py)
        weights=dict(mlm=1.0, visual_regression=1.0, visual_classification=1.0, itm=1.0, vqa=1.0),
        text_mask_rate=0.15,
        visual_mask_rate=0.15,
        question_rate=0.5,  # rows that pair an image with a question (VQA) instead of a description
        negative_rate=0.5,  # description rows whose description is another scene's (image-text matching)
        eval_images=50,  # held-out scenes: VQA and ITM rows, and retrieval over all image x description pairs
        # the rows: 'scenes' (built-in Sort-of-CLEVR) | 'records' (data.name's reader: captions -> ITM + MLM,
        # questions -> VQA over the answer vocabulary, nlvr2 -> the pair task; data/semvlp_records.py)
        data="scenes",
        region_features="",  # records: a directory of <image_id>.npz or an LXMERT .tsv (else: images, visual=patches)
        num_answers=3129,  # records: the VQA vocabulary, the most frequent answers of the training questions
    )


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = "demo"
    c.seed = 0
    c.data = dict(_DATA, **registry.all_defaults())
    c.model = dict(
        method="lsrm",  # 'lsrm' (the VLM of method/vlm.py) | 'semvlp' (method/semvlp, its own keys below)
        semvlp=semvlp_defaults(),
        injection="ica",  # 'ica' (LSRM/MemVP memory in every block) | 'prefix' (LLaVA)
        # 'causal' | 'bidirectional': the prompt (and a prefix injection's image tokens) read both ways, the
        # answer causally (PaliGemma's prefix-LM); the converted LLMs were trained causal
        prompt_attention="causal",
        # prefix injection: every LLM block's attention between two image tokens gets a learned per-head bias of
        # their centres' offset (dx, dy, |d|, |d|^2; object centres or patch centres), zero-initialised
        prefix_distance_bias=False,
        prefix_distance_bias_init=0.0,  # s > 0: its heads start with slopes on |d| spread from -s to +s (ALiBi-like)
        # a fifth pair feature, 1 for an image token with itself, so that a head can read the other tokens only;
        # with prefix_distance_bias_init it starts scoring itself below the farthest token in every head
        prefix_distance_bias_self=False,
        remat="none",  # activation rematerialisation per block: none | full | dots | dots_no_batch
        scan_layers=False,  # True: the LLM's and vision towers' blocks run as lax.scans (compile once)
        attention="xla",  # the LLM's attention kernel: xla (anywhere) | cudnn (NVIDIA GPU) | splash (TPU, Pallas)
        num_memory_slots=0,  # N_mem; 0 = exactly the number of fused visual tokens
        modality_embedding=True,  # a learned [2, d] embedding indexed by has_image (counted as trainable)
        add_modality_embedding=True,  # False: created but never added to the visual tokens, as in the release
        slot_key_init_std=0.02,  # P_k ~ N(0, 0.02²) as in the release
        slot_value_init_std=0.0,  # P_v = 0 as in the release
        llm=llm_defaults(),
        encoders=dict(vit=encoder_defaults()),
        # the release's scales, tuned for a pretrained, frozen LLM whose residual stream is large
        projector=dict(hidden=64, learnable_diagonal=True, zero_init_output=False, fusion="sum", memory_scale=0.01),
        # release_noop_mask=True reproduces the published release, whose setup never hands delta/lam to the
        # LLM blocks (the mask is then a no-op: delta=0, lam=1); False applies them (the paper's method)
        # read: 'silu' (the paper's unnormalised SiLU(q Kᵀ)) | 'softmax' (normalised over the slots; method/ica.py)
        ica=dict(scale=0.1, delta=0.3, lam=0.85, dropout=0.1, start="always", release_noop_mask=False, read="silu"),
    )
    c.train = dict(
        batch_size=32,  # global batch
        grad_accum_steps=1,  # > 1: the batch runs as that many micro-batches, one optimizer update
        loss_chunk=0,  # > 0: cross-entropy over that many text positions at a time, no whole-batch fp32 logits
        # > 0: add this times the token-image alignment loss (each prompt word picks its own image among the
        # batch's by its best-matching memory key; method/alignment.py); needs model.injection='ica'
        alignment_weight=0.0,
        # > 0: add this times the slot-reconstruction loss (a linear decoder from every patch slot's visual token
        # to its region's pixels; method/reconstruction.py): keeps what the patches show in the memory
        reconstruction_weight=0.0,
        num_steps=4_000,
        learning_rate=2e-3,
        warmup_steps=100,
        # < 1: hold the peak rate after warm-up, then the half cosine over this last fraction of the steps after
        # warm-up only (warmup-stable-decay); 1: the release's cosine over all of them (training/optimizer.py)
        decay_fraction=1.0,
        # The release's units (training/optimizer.py derive_schedule; the run logs what it derived):
        epochs=0.0,  # > 0: num_steps = epochs x full batches of the training split per epoch (overrides num_steps)
        warmup_epochs=0.0,  # with epochs > 0: warmup_steps = warmup_epochs x steps per epoch (overrides warmup_steps)
        base_learning_rate=0.0,  # > 0: learning_rate = base_learning_rate x batch_size / 256 (overrides learning_rate)
        weight_decay=0.02,
        b1=0.9,
        b2=0.95,
        grad_clip=1.0,  # clip gradients to this global norm; 0: no clipping (the release)
        trainable=(".*",),  # regexes over parameter paths like 'llm/layers/0/mlp/up_proj/kernel'
        frozen=(),  # regexes removed from the trainable set
        frozen_dtype="float32",
        nonfinite="stop",  # 'stop' | 'skip' the update when loss or gradients are NaN/Inf
        log_every=100,
        eval_every=0,  # > 0: evaluate every this many steps too (0: only at the end)
        eval_examples=500,  # examples of each evaluation during training (0: eval.num_examples)
        eval_samples=4,  # examples shown with their heatmaps (TensorBoard, <workdir>/evals/) at every evaluation
        peak_tflops_per_device=0.0,  # > 0: log MFU against it (e.g. 989 for an H100's dense bf16)
        # > 0: XLA's CPU thread pool on that many cores, the rest left to Python and the input pipeline: less CPU
        # time, longer steps for a small model, whose pool spins on a second core (training/cpu_cores.py). 0: all
        xla_cpu_cores=0,
        checkpoint_every=1_000,
        keep_checkpoints=2,  # the newest N checkpoints ...
        keep_every=0,  # ... plus every one whose step is a multiple of this (0: none); those are always saved
        checkpoint_frozen=False,  # True: also save the frozen parameters (self-contained checkpoints)
        force_restart=False,  # True: move an existing run's checkpoints/logs to <workdir>/replaced-<time>/, start over
    )
    c.mesh = dict(
        data=-1,  # -1: all remaining devices
        fsdp=1,
        tensor=1,
        # logical axis -> mesh axis ('' = replicated), for parameters and activations (training/sharding.py)
        rules=dict(embed="fsdp", heads="tensor", mlp="tensor", vocab="tensor"),
    )
    c.eval = dict(
        batch_size=250,
        num_examples=0,  # 0: the whole eval split
        max_new_tokens=3,
        temperature=0.0,  # 0: greedy; > 0: sampling (with top_p)
        top_p=1.0,
        num_beams=1,  # > 1: beam search (needs temperature=0)
        length_penalty=1.0,  # beam score = sum logprob / length**length_penalty (0: raw sum; > 0 favours longer)
        stop_strings=(),  # generated text is cut at the first of these (and at EOS)
        # text put after every evaluation prompt, as the start of the answer (ScienceQA's release: "The answer
        # is" + 1 greedy token); the prediction scored is this prefix followed by the generated text
        answer_prefix="",
        # True: answer every question a second time with another example's image (the one half the split away)
        # and report those scores as image_control/<metric>: a model that reads the image scores lower there
        image_control=False,
    )
    return c


def schema_keys(tree, prefix: str = "") -> set[str]:
    """Dotted leaf keys of a config (a dict or ConfigDict); encoders are checked per encoder."""
    keys = set()
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)) and name != "mesh.rules":
            keys |= schema_keys(value, name + ".")
        else:
            keys.add(name)
    return keys


def from_saved(saved: dict, where: str) -> ml_collections.ConfigDict:
    """A run's saved config (``config.json`` / a checkpoint's), checked against today's schema.

    Runs saved by an older semrel_jax lack keys added since; they are refused with the keys named (no
    silent guesses of what the old run meant).
    """
    from semrel_jax.errors import ConfigError

    expected = _encoderless(schema_keys(base_config()))
    present = _encoderless(schema_keys(saved))
    missing, unknown = sorted(expected - present), sorted(present - expected)
    for name, encoder in (saved.get("model", {}).get("encoders") or {}).items():
        missing += sorted(f"model.encoders.{name}.{k}" for k in set(encoder_defaults()) - set(encoder))
    if missing or unknown:
        raise ConfigError(
            f"{where}: the saved config does not match this version of semrel_jax (missing keys {missing}, "
            f"unknown keys {unknown}); it was written by another version. Evaluate or resume it with that "
            "version, or retrain."
        )
    return ml_collections.ConfigDict(saved)


def _encoderless(keys: set[str]) -> set[str]:
    return {k for k in keys if not k.startswith("model.encoders.")}
