"""vivit-jax: ViViT video transformers in JAX/Flax."""
