"""ddjax: dataset distillation for self-supervised learning in JAX/Flax (MKDT, LGM)."""

__version__ = "0.1.0"
