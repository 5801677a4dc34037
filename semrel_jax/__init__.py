"""semrel_jax: fine-tuning vision-language models in JAX/Flax NNX.

Layout: ``models`` (generic networks: ViT, Llama), ``method`` (LSRM: SRProj,
inheritable cross-attention, the VLM that wires them), ``data`` (datasets,
tokenizers, preprocessing, grain pipelines), ``training`` (mesh, optimizer,
train step, checkpoints, metric writers), ``evaluation`` (generation, metrics).
"""

__version__ = "0.1.0"
