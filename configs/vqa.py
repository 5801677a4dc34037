"""VQA fine-tuning configs. Presets by string argument, big_vision style:

    python -m semrel_jax.main --config=configs/vqa.py --workdir=/tmp/run          # = :demo
    python -m semrel_jax.main --config=configs/vqa.py:tiny --workdir=/tmp/run
    python -m semrel_jax.main --config=configs/vqa.py --config.train.num_steps=100 --workdir=/tmp/run

Presets:
  demo  LSRM from random init on the built-in Sort-of-CLEVR; a few minutes on a 2-core CPU.
  tiny  the same structure at toy size, for tests and smoke runs (seconds).
  long  the demo trained ~7x longer: about 30 minutes on a 2-core CPU.
  relational  the relational-accuracy target (issue "LSRM", Santoro et al.'s 94 %): the demo with a 3-block ViT
        whose attention has a learned relative position bias, relations descriptions mixed in besides the
        object descriptions, 18,000 steps: about 30 minutes on a 2-core CPU (benchmarks/RESULTS.md).
  semrel_jax.presets.MODEL_PRESETS: the release's full-size models (lsrm_7b, lsrm_13b, memvp_7b,
        llava_7b) and the demo-size ablation steps (ablation_memvp ... ablation_lsrm, ablation_llava).
"""

import ml_collections

from semrel_jax import presets as model_presets

PRESETS = ("demo", "tiny", "long", "relational") + model_presets.MODEL_PRESETS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "demo"
    if preset in model_presets.MODEL_PRESETS:
        return model_presets.apply(get_config("demo"), preset)
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r} for configs/vqa.py; choose one of {PRESETS}.")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.seed = 0

    c.data = dict(
        name="sort_of_clevr",  # | scienceqa | vqa_v2 | coco_captions | llava_json (semrel_jax/data/sources.py)
        train_images=10_000,  # x questions_per_image questions
        eval_images=500,
        questions_per_image=20,
        # sort_of_clevr: this fraction of the training examples are scene descriptions of the same images
        # ("red square top left green circle ..."): they teach every object's attributes densely (RESULTS.md)
        caption_mix=0.6,
        caption_kinds=("objects",),  # and/or 'relations': every object's closest/furthest/count answers in one row
        examples_per_image=1,  # > 1: training batches hold that many questions per image; the ViT runs once per image
        object_size=5,
        max_text_len=34,  # the scene descriptions (qa format: 33 tokens); the questions need 20
        prompt_format="qa",  # 'qa' | 'chat' (the tokenizer's chat template; for instruct checkpoints)
        tokenizer="",  # '' -> train once from the dataset vocabulary, cached in <workdir>/tokenizer
        # real datasets (data.name != sort_of_clevr); set prompt_format='raw' (they format their own prompts) or 'chat'
        root="",  # scienceqa: the release dir (problems.json, pid_splits.json, images/); vqa_v2: the JSON dir
        image_root="",  # coco_captions / llava_json images (vqa_v2: default root/<split>)
        train_file="",  # coco_captions: Karpathy dataset_coco.json; llava_json: the instruction JSON
        eval_file="",  # llava_json: held-out JSON ('' = train_file)
        train_split="",  # '' = the dataset's usual one (train / train2014)
        eval_split="",  # '' = test / val2014; sort_of_clevr 'train': score the first eval_images training images
        scienceqa_format="QCM-A",  # LaVIN/MemVP formats: QCM-A, CQM-A, QCM-LEA, QCM-EA, ...
        captions="",  # scienceqa: optional captions.json for the context
        vqa_prompt="plain",  # vqa_v2: 'plain' | 'llava' (adds "Answer the question using a single word or phrase.")
        on_bad_data="error",  # 'error' names the bad record | 'skip' drops/replaces it and counts it (logged)
        prepared_dir="",  # set: read the TFDS array_record copy made by `python -m semrel_jax.data.prepare --out=<dir>`
        num_workers=0,  # grain worker processes (0: in the main process)
        prefetch=2,
    )

    c.model = dict(
        injection="ica",
        remat="none",  # activation rematerialisation per block: none | full | dots | dots_no_batch  # 'ica' (LSRM/MemVP memory in every block) | 'prefix' (LLaVA)
        num_memory_slots=0,  # N_mem; 0 = exactly the number of fused visual tokens
        modality_embedding=True,
        slot_key_init_std=0.02,  # P_k ~ N(0, 0.02²) as in the release
        slot_value_init_std=0.0,  # P_v = 0 as in the release
        llm=dict(
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
        ),
        encoders=dict(
            vit=dict(
                hf_dir="",  # a HF CLIP/SigLIP/DINOv2 directory: its architecture and weights (adapters stay ours)
                image_size=75,
                patch_size=15,
                width=64,
                depth=2,
                heads=4,
                mlp_dim=192,
                act="gelu",
                posemb="learned",
                relative_position_bias=False,  # learned per-head bias by patch offset (from-scratch towers only)
                taps=(1, 2),  # HF hidden_states indices: an intermediate and the final block
                post_ln=True,
                drop_cls=True,
                pool=1,  # k x k average pooling of the patch grid into the memory (fine patches, fewer slots)
                adapter_dim=0,
                adapter_scale=0.1,
                normalization="unit",  # x/255: see data/preprocess.py (CLIP stats drown position on black)
                resample="bicubic",
                crop=True,  # resize the shortest side to `resize` (0: image_size) and centre-crop; False: squash
                resize=0,
            ),
        ),
        projector=dict(hidden=64, learnable_diagonal=True, zero_init_output=False, fusion="sum", memory_scale=0.1),
        # Release values are scale=0.1 and memory_scale=0.01, tuned for a pretrained, frozen LLM whose
        # residual stream is large; from random init those scales only slow learning down.
        ica=dict(scale=1.0, delta=0.3, lam=0.85, dropout=0.1, start="always"),
    )

    c.train = dict(
        batch_size=32,  # global batch
        grad_accum_steps=1,  # > 1: the batch runs as that many micro-batches, one optimizer update
        num_steps=4_000,
        learning_rate=2e-3,
        warmup_steps=100,
        weight_decay=0.02,
        b1=0.9,
        b2=0.95,
        grad_clip=1.0,
        trainable=(".*",),  # regexes over parameter paths like 'llm/layers/0/mlp/up_proj/kernel'
        frozen=(),  # regexes removed from the trainable set
        frozen_dtype="float32",
        nonfinite="stop",  # 'stop' | 'skip' the update when loss or gradients are NaN/Inf
        log_every=100,
        peak_tflops_per_device=0.0,  # > 0: log MFU against it (e.g. 989 for an H100's dense bf16)
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
        # logical parameter axis -> mesh axis ('' = replicated); see semrel_jax/training/sharding.py
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
    )

    if preset == "long":
        c.train.num_steps = 27_000
    if preset == "relational":
        c.data.caption_kinds = ("objects", "relations")
        c.model.encoders.vit.update(depth=3, taps=(2, 3), relative_position_bias=True)
        c.train.num_steps = 18_000
    if preset == "tiny":
        c.data.update(caption_mix=0.0, max_text_len=20)
        c.data.train_images = 200
        c.data.eval_images = 10
        c.model.llm.update(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64)
        c.model.encoders.vit.update(width=32, depth=2, heads=2, mlp_dim=64, taps=(1, 2), adapter_dim=4)
        c.model.projector.hidden = 16
        c.train.update(batch_size=8, num_steps=6, warmup_steps=2, log_every=2, checkpoint_every=3)
        c.eval.update(batch_size=16, num_examples=40)
    return c
