"""Captioning configs: the built-in Sort-of-CLEVR images with scene descriptions, offline like the VQA demo.

    python -m semrel_jax.main --config=configs/caption.py --workdir=/tmp/caption          # = :demo
    python -m semrel_jax.main --config=configs/caption.py:tiny --workdir=/tmp/caption_tiny

Same model and training setup as configs/vqa.py (any of its model presets works after ':'), captions
scored with BLEU-1..4, METEOR, ROUGE-L and CIDEr (semrel_jax/evaluation/captioning.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vqa  # noqa: E402


def get_config(arg: str | None = None):
    c = vqa.get_config(arg)
    c.data.update(name="sort_of_clevr_captions", prompt_format="raw", max_text_len=40, caption_mix=0.0)
    c.eval.update(max_new_tokens=32, num_examples=c.eval.num_examples or 500)
    return c
