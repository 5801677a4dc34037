"""Generic networks (vision encoders, decoder LLMs) as Flax NNX modules."""
