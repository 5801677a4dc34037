"""Hugging Face checkpoints in and out (``hf``), per-family mapping tables (``families``), parity checks (``check``),
and the LSRM authors' release state dict (``release.load_release``)."""
