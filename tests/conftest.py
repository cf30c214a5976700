"""Shared helpers: tiny model configs and random (non-zero) parameters."""
import atexit
import os
import shutil
import sys
import tempfile

# One XLA compilation cache for the test session, inherited by the subprocess runs
# (which compile the same tiny train and eval steps again and again); removed at exit.
# (A user's own JAX_COMPILATION_CACHE_DIR is left alone, with its own settings.)
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _COMPILATION_CACHE = tempfile.mkdtemp(prefix='vivit-tests-xla-cache-')
  atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _COMPILATION_CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'

import jax  # noqa: E402  (after the cache settings, which jax reads at import)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

from vivit.models import get_model_config, init_params, variants  # noqa: E402

INPUT_SIZE = (4, 16, 16)  # time, height, width


def tiny_config(variant=variants.SPATIO_TEMPORAL, embedding='tubelet', classifier=None,
                **overrides):
  """A 2-layer, hidden-16, 4-head model on 4x16x16 clips (tubelet 2x8x8)."""
  config = get_model_config('Ti/8x2' + variants.get(variant).suffix, hidden_size=16,
                            num_heads=4, num_layers=2, mlp_dim=24, num_classes=5,
                            input_size=INPUT_SIZE, embedding=embedding)
  config.temporal.update(num_layers=2, num_heads=2, mlp_dim=20)
  if embedding == 'frame':
    config.num_sampled_frames = 3  # scenic samples frames 1, 2, 3 of 4
  if classifier:
    config.classifier = classifier
  config.update(overrides)
  return config


def random_params(config, seed=0, scale=0.3):
  """Params with every entry random, zero-initialised ones (head, CLS) included."""
  params = init_params(config, jax.random.PRNGKey(seed))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.RandomState(seed)
  leaves = [np.asarray(l) + scale * rng.standard_normal(l.shape).astype(np.float32)
            for l in leaves]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def random_video(batch=2, size=INPUT_SIZE, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (batch, *size, 3)).astype(np.float32)


VIT_CLASSES = 5


@pytest.fixture(scope='module')
def vit(tmp_path_factory):
  """A random HF ViT (hidden 16, 2 layers, 16x16 images, patch 8; tanh GELU and
  LayerNorm eps 1e-6, as the JAX ViTs), saved as an HF directory and as a
  vision_transformer-layout .npz: (model, HF directory, .npz path)."""
  import re
  import torch
  import transformers
  from vivit.convert.vit import read_vit
  torch.manual_seed(0)
  config = transformers.ViTConfig(
      hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
      image_size=16, patch_size=8, hidden_act='gelu_pytorch_tanh', layer_norm_eps=1e-6,
      num_labels=VIT_CLASSES)
  model = transformers.ViTForImageClassification(config).eval()
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.normal_(0, 0.3)
  root = tmp_path_factory.mktemp('vit')
  hf_dir = str(root / 'hf')
  model.save_pretrained(hf_dir)
  # The .npz names of google-research/vision_transformer.
  flat = {}

  def flatten(tree, prefix=''):
    for key, value in tree.items():
      if isinstance(value, dict):
        flatten(value, f'{prefix}{key}/')
      else:
        flat[prefix + key] = value
  flatten(read_vit(hf_dir))
  renames = [(r'MultiHeadDotProductAttention_0', 'MultiHeadDotProductAttention_1'),
             (r'/LayerNorm_1/', '/LayerNorm_2/'), (r'/MlpBlock_0/', '/MlpBlock_3/'),
             (r'^output_projection/', 'head/')]
  npz = {}
  for name, value in flat.items():
    for pattern, replacement in renames:
      name = re.sub(pattern, replacement, name)
    npz[name] = value
  npz_path = str(root / 'ViT-Ti_8.npz')
  np.savez(npz_path, **npz)
  return model, hf_dir, npz_path


# (variant, embedding, classifier) that the paper defines.
VARIANT_CASES = [
    (variant.name, embedding, classifier)
    for variant in variants.VARIANTS
    for embedding in ('tubelet', 'frame')
    for classifier in (('token', 'gap') if variant.has_cls else ('gap',))
]


@pytest.fixture(params=VARIANT_CASES, ids=lambda c: '-'.join(c))
def variant_case(request):
  return request.param


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A TFDS directory holding `synthetic_motion/tiny`."""
  from vivit import datasets
  path = str(tmp_path_factory.mktemp('tfds'))
  datasets.get_builder('synthetic_motion/tiny', path)
  return path
