"""vivit-jax: ViViT video transformers in JAX/Flax."""
import os
import sys


def verbose() -> bool:
  """Whether tracebacks and library logs were asked for (`--verbose` or VIVIT_VERBOSE=1)."""
  return os.environ.get('VIVIT_VERBOSE', '') not in ('', '0') or '--verbose' in sys.argv


# TensorFlow only feeds data here: keep its C++ start-up lines (log level, the oneDNN
# notice, which its ops here do not need) out of the output unless verbose. Set
# before TensorFlow loads; explicit settings win.
if not verbose():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
