"""vivit-jax: ViViT video transformers in JAX/Flax."""
import os

# TensorFlow only feeds data here; keep its C++ start-up chatter out of the logs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
