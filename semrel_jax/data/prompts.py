"""Prompt formats: how a (question, answer) pair becomes prompt text and target text.

  qa    ``question: <q> answer:`` then `` <answer></s>`` (plain LMs and from-scratch models; BOS first)
  raw   the question text as the dataset formatted it (ScienceQA's ``... Response:``), then `` <answer></s>``
  chat  the tokenizer's own chat template (``apply_chat_template``) with the question as the user turn and
        the generation prompt appended; the answer follows, ended by the tokenizer's EOS (for instruct
        checkpoints that is the end-of-turn token, e.g. ``<|eot_id|>``, ``<|im_end|>``). BOS comes from the
        template itself, so it is not added twice.
"""

from __future__ import annotations

FORMATS = ("qa", "raw", "chat")


def vqa_prompt(question: str, fmt: str = "qa", tokenizer=None) -> str:
    """The text the model is conditioned on; the answer follows after one space (``qa``) or directly (``chat``)."""
    if fmt == "qa":
        return f"question: {question} answer:"
    if fmt == "raw":
        return question
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_format='chat' needs a tokenizer with a chat template (instruct checkpoints have one).")
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"Unknown prompt format {fmt!r}; expected one of {FORMATS}.")


def answer_text(answer: str, fmt: str = "qa") -> str:
    return answer if fmt == "chat" else " " + answer


def template_words(fmt: str = "qa") -> list[str]:
    """Words the prompt template itself adds (a closed-vocabulary tokenizer must know them)."""
    if fmt in ("chat", "raw"):
        return []  # raw adds nothing; chat templates come with (and are covered by) the model's own tokenizer
    return vqa_prompt("", fmt).replace(":", " : ").split()
