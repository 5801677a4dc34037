"""Assets for a dry run of configs/scienceqa.py on a CPU: a ScienceQA release whose answers need the image,
and tiny Hugging Face LLaMA + CLIP directories, all written locally (nothing downloaded).

The recipe fine-tunes a *pretrained* LLM, so the tiny LLaMA is first trained (PyTorch, all weights, a few
seconds) on the training problems' text alone: it learns the prompt format and to answer with a letter,
but cannot know the colour questions' letters without the image (it stays near chance on them). The
recipe's PEFT run then has to bring the image in.

    python tests/scienceqa_dry_run.py /tmp/sqa_dry        # writes ScienceQA/, llama/, clip/ and prints the command
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import transformers

import dataset_fixtures
import hf_fixtures
from semrel_jax.data import scienceqa

# Sizes the dry run overrides (the model sizes come from the directories' config.json).
SIZES = {
    "model.encoders.clip.taps": (1, 3),  # a 3-block tower: the middle and the last block
    "model.num_memory_slots": 16,  # the 4x4 patch grid of a 32 px image (the release pads 256 tokens to 320)
    "data.max_text_len": 128,
    "model.llm.dtype": "float32",  # XLA:CPU emulates bfloat16 matmuls slowly; accelerators keep the recipe's
    "train.frozen_dtype": "float32",
}


def _lm_texts(root: str, split: str) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of a split, formatted as the recipe formats them (QCM-A, no captions)."""
    import json

    with open(os.path.join(root, "problems.json")) as f:
        problems = json.load(f)
    with open(os.path.join(root, "pid_splits.json")) as f:
        pids = json.load(f)[split]
    return [scienceqa.build_prompt(problems[pid], "QCM-A") for pid in pids]


def pretrain_llm(directory: str, pairs: list[tuple[str, str]], steps: int = 150, seed: int = 0) -> None:
    """Trains the tiny LLaMA in ``directory`` on ``prompt + ' ' + answer`` (the featurizer's tokens) in place."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    rows = []
    for prompt, answer in pairs:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] + tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        rows.append([tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id])
    width = max(map(len, rows))
    tokens = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a 64-wide model: threads only contend
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = generator.choice(len(rows), 32)
        loss = model(input_ids=tokens[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(directory)


def write_assets(root: str, num_train: int = 320, num_test: int = 96, pretrain_steps: int = 150) -> dict:
    """``root/ScienceQA`` (dataset_fixtures.write_scienceqa_colours), ``root/llama`` (tokenizer + tiny LLaMA,
    pretrained for ``pretrain_steps``), ``root/clip`` (tiny random CLIP vision tower, 32 px); returns their paths."""
    data = dataset_fixtures.write_scienceqa_colours(os.path.join(root, "ScienceQA"), num_train, num_test)
    llm = os.path.join(root, "llama")
    pairs = _lm_texts(data["root"], "train")
    words = [w for prompt, answer in pairs for w in (prompt + " " + answer).split()] + "A picture of a square.".split()
    # 400 entries: enough merges that " A", " B", " C" are single tokens, as in LLaMA's vocabulary; the
    # release's protocol decodes exactly one token after "The answer is"
    hf_fixtures.save_bpe_tokenizer(llm, words, vocab_size=400)
    vocab = len(transformers.AutoTokenizer.from_pretrained(llm))
    hf_fixtures.save_llm(llm, "llama2", vocab_size=vocab)
    if pretrain_steps:
        pretrain_llm(llm, pairs, pretrain_steps)
    clip = hf_fixtures.save_vision(os.path.join(root, "clip"), "clip")
    return {"root": data["root"], "llm": llm, "clip": clip}


def overrides(assets: dict) -> dict:
    """Every config key the dry run sets (``ConfigDict.update_from_flattened_dict``): the paths, then the sizes."""
    paths = {
        "data.root": assets["root"],
        "data.tokenizer": assets["llm"],
        "model.llm.hf_dir": assets["llm"],
        "model.encoders.clip.hf_dir": assets["clip"],
    }
    return paths | SIZES


def command_line(assets: dict, workdir: str) -> str:
    """The ``python -m semrel_jax.main`` command of the dry run."""
    def flag(value):
        return "'(" + ",".join(map(str, value)) + ")'" if isinstance(value, tuple) else value

    flags = " ".join(f"--config.{k}={flag(v)}" for k, v in overrides(assets).items())
    return f"python -m semrel_jax.main --config=configs/scienceqa.py:lsrm_7b --workdir={workdir} {flags}"


if __name__ == "__main__":
    target = sys.argv[1]
    print(command_line(write_assets(target), os.path.join(target, "run")))
