"""SemVLP: one shared BERT pre-trained iteratively in single-stream and two-stream mode.

``model.py`` (the shared encoder, its two modes, the pluggable cross-attention, the heads), ``objectives.py``
(MLM, masked visual regression/classification, ITM, VQA), ``schedule.py`` (the mode pattern by step); the
jitted step per mode is ``training/semvlp_step.py``, the built-in scene batches ``data/semvlp_scenes.py``.
Not yet wired into ``recipe.py`` / ``main`` (no ``configs/pretrain.py``): see issue 17.
"""
