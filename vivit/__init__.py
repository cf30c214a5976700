"""vivit-jax: ViViT video transformers in JAX/Flax."""
import os
import sys

# TensorFlow only feeds data here: keep its C++ start-up lines (log level, the oneDNN
# notice, which its ops here do not need) out of the output unless asked for with
# --verbose or VIVIT_VERBOSE=1. Set before TensorFlow loads; explicit settings win.
if os.environ.get('VIVIT_VERBOSE', '') in ('', '0') and '--verbose' not in sys.argv:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
