"""SemVLP: one shared BERT pre-trained iteratively in single-stream and two-stream mode.

``model.py`` (the shared encoder, its two modes, the pluggable cross-attention, the heads), ``objectives.py``
(MLM, masked visual regression/classification, ITM, VQA), ``schedule.py`` (the mode pattern by step). The
jitted step per mode is ``training/semvlp_step.py``, the run ``training/semvlp_train.py`` (entered from
``training/train.py`` when ``model.method='semvlp'``), the built-in scene batches ``data/semvlp_scenes.py``,
the presets ``configs/pretrain.py``.
"""
