"""Hugging Face checkpoints in and out (``hf``), per-family mapping tables (``families``), parity checks (``check``)."""
