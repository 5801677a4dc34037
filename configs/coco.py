"""COCO captioning (Karpathy split) with LSRM on LLaMA-13B: the paper's captioning result (BLEU-4 37.3, CIDEr 123.9).

    python -m semrel_jax.main --config=configs/coco.py --workdir=/runs/coco_lsrm_13b \\
        --config.data.train_file=/data/coco/dataset_coco.json --config.data.image_root=/data/coco \\
        --config.data.tokenizer=/models/llama-13b --config.model.llm.hf_dir=/models/llama-13b \\
        --config.model.encoders.clip.hf_dir=/models/clip-vit-large-patch14

Presets: lsrm_13b (default, the paper's), and every other preset of configs/scienceqa.py.

The release has no captioning code and the paper gives no captioning hyper-parameters, so this is
configs/scienceqa.py's recipe (model, optimizer, base lr, batch, no clipping, preprocessing) moved to
captions. Every value chosen here rather than read from the release is marked CHOICE.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scienceqa  # noqa: E402

PRESETS = scienceqa.PRESETS


def get_config(arg: str | None = None):
    c = scienceqa.get_config(arg or "lsrm_13b")
    c.data.update(
        name="coco_captions",
        root="",
        train_file="",  # set me: Karpathy's dataset_coco.json
        image_root="",  # set me: the folder holding train2014/ and val2014/
        train_split="train",  # Karpathy train + restval: 113,287 images, one example per caption (~567k)
        eval_split="test",  # the 5,000 Karpathy test images, every reference caption scored
        captions="",  # ScienceQA's caption file: not used here
        max_text_len=128,  # CHOICE: prompt + caption fit in < 80 tokens; 512 would only add padding
    )
    # CHOICE: 4 epochs (~70,800 steps of 32), warm-up 10 % of training as ScienceQA's 2 of 20, and the ICA mask
    # switched on for the last quarter as ScienceQA's 15 of 20.
    c.train.update(epochs=4.0, warmup_epochs=0.4, checkpoint_every=2_000)
    if c.model.ica.start != "never":
        c.model.ica.start = "epoch:3"
    c.eval.update(
        answer_prefix="",  # the caption is the whole answer
        max_new_tokens=32,  # CHOICE: COCO captions are 8-20 words
        temperature=0.0,  # CHOICE: greedy, as the release decodes ScienceQA
        num_beams=1,
        batch_size=64,
        num_examples=0,
    )
    return c
