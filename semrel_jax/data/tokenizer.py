"""Tokenizers: HF tokenizers from local directories, and small ones trained offline for built-in data.

The built-in Sort-of-CLEVR task has a closed vocabulary, so a word-level tokenizer trained from it
in milliseconds is exact (no ``<unk>`` ever appears). It is saved with ``save_pretrained`` next to
the run, so evaluation and export reload the very same ids with ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from semrel_jax import errors

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_word_level(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (split on whitespace and punctuation)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def load(path: str) -> PreTrainedTokenizerBase:
    """Loads a tokenizer saved with ``save_pretrained`` (never reaches the network)."""
    if not os.path.isdir(path):
        raise errors.MissingFileError(f"Tokenizer directory {path!r} does not exist.")
    try:
        if _saved_class(path) == PreTrainedTokenizerFast.__name__:
            # Our own word-level tokenizer: loaded by its class, without importing transformers' auto classes
            # (which import PyTorch when it is installed: seconds per process).
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers/tokenizers raise many types for a damaged file
        names = ", ".join(sorted(os.listdir(path))) or "nothing"
        raise errors.DataError(
            f"Tokenizer directory {path!r} cannot be loaded ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
            f"it holds {names}. A file is damaged or missing: restore it, or delete the directory when it is a "
            "run's own <workdir>/tokenizer (it is trained again from the same data, with the same ids)."
        ) from e
    if tokenizer.eos_token_id is None and tokenizer.sep_token_id is not None:
        tokenizer.eos_token = tokenizer.sep_token  # WordPiece (BERT): [SEP] is what ends a sequence
    if tokenizer.eos_token_id is None:
        raise ValueError(f"Tokenizer at {path!r} has no eos_token; answers must end with one.")
    if tokenizer.pad_token_id is None:
        # Llama tokenizers ship without a pad token; padding positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _saved_class(path: str) -> str | None:
    """The ``tokenizer_class`` a saved tokenizer names in its ``tokenizer_config.json`` (None when unreadable)."""
    try:
        with open(os.path.join(path, "tokenizer_config.json")) as f:
            return json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None  # AutoTokenizer then reports what is wrong with the directory


def unknown_words(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> list[str]:
    """Words the tokenizer cannot represent (they would encode to ``<unk>``); byte-level BPEs have none."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    return sorted({w for w in words if unk in tokenizer(w, add_special_tokens=False)["input_ids"]})


def load_or_train(path: str, words: list[str]) -> PreTrainedTokenizerBase:
    """Reuses the tokenizer cached at ``path``, or trains one over ``words`` and saves it there."""
    if os.path.isdir(path) and os.listdir(path):
        tokenizer = load(path)
        unknown = unknown_words(tokenizer, words)
        if unknown:
            raise ValueError(
                f"Cached tokenizer at {path!r} lacks words of this dataset ({unknown[:5]}...); "
                "it was built for other data. Delete it or point data.tokenizer elsewhere."
            )
        return tokenizer
    tokenizer = train_word_level(words)
    # written next to the target and renamed into place, so nobody ever reads a half-written tokenizer
    tmp = f"{path.rstrip('/')}.tmp-{os.getpid()}"
    tokenizer.save_pretrained(tmp)
    if os.path.isdir(path):  # an empty directory left behind
        os.rmdir(path)
    os.replace(tmp, path)
    return tokenizer
