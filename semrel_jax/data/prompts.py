"""Prompt formats: how a (question, answer) pair becomes prompt text and target text."""

from __future__ import annotations

FORMATS = ("qa",)


def vqa_prompt(question: str, fmt: str = "qa") -> str:
    """The text the model is conditioned on; the answer follows after one space."""
    if fmt == "qa":
        return f"question: {question} answer:"
    raise ValueError(f"Unknown prompt format {fmt!r}; expected one of {FORMATS}.")


def template_words(fmt: str = "qa") -> list[str]:
    """Words the prompt template itself adds (a closed-vocabulary tokenizer must know them)."""
    return vqa_prompt("", fmt).replace(":", " : ").split()
