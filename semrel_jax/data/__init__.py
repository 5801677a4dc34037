"""Data: datasets (Sort-of-CLEVR, ...), tokenizers, image preprocessing, grain pipelines."""
