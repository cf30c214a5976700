"""Fixtures that several test modules use, and the session's XLA compilation cache."""
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

# Below the cache settings: jax (which helpers imports) reads them at import.
import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

from helpers import (DEFAULT_VARIANT_CASES, VARIANT_CASES, VIT_CLASSES,  # noqa: E402
                     default_or_slow)


@pytest.fixture(scope='module')
def two_head_checkpoint(tmp_path_factory):
  """A params directory of a tiny random model with two heads, `helpers.HEADS` (4
  frames of 16x16)."""
  from helpers import HEADS, random_params, tiny_model_config
  from vivit import checkpoints
  config = tiny_model_config()
  path = str(tmp_path_factory.mktemp('checkpoint') / 'params')
  checkpoints.save_params(path, config, random_params(config), HEADS)
  return path


@pytest.fixture(scope='session')
def trained_synthetic(tmp_path_factory):
  """The workdir of a small ViViT trained on synthetic_motion (`train_small_synthetic`:
  8 frames, stride 2; 3000 steps: 93 % validation top-1, 8 min on 2 shared cores),
  for the slow tests of what a trained model does (timelines, explanations)."""
  from helpers import train_small_synthetic
  return train_small_synthetic(tmp_path_factory.mktemp('trained'), 3000)[0]


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


@pytest.fixture(params=default_or_slow(VARIANT_CASES, DEFAULT_VARIANT_CASES))
def variant_case(request):
  return request.param


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A TFDS directory holding `synthetic_motion/tiny`."""
  from vivit import datasets
  path = str(tmp_path_factory.mktemp('tfds'))
  datasets.get_builder('synthetic_motion/tiny', path)
  return path


# The default run's longest modules first (seconds on the 2-core machine), so that
# `--dist loadfile`, which hands whole modules to idle workers in collection order,
# does not leave one worker alone with a long module at the end.
LONGEST_FIRST = ('test_multiprocess', 'test_models', 'test_attention', 'test_prepare',
                 'test_train', 'test_initialise', 'test_faults', 'test_cli', 'test_resize',
                 'test_vit', 'test_convert', 'test_properties', 'test_step')


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(
      os.path.basename(item.nodeid.split('::')[0])[:-len('.py')], len(rank)))


def pytest_configure(config):
  """The default run compiles with LLVM at -O0: its tiny models wait on compilation,
  not arithmetic (25-30 % less time a compiled test), and XLA's own graph passes
  still run. The slow run, which trains for minutes, keeps -O2; so does a run with
  the user's own XLA_FLAGS. (Set before the first computation, when XLA reads it.)"""
  if 'XLA_FLAGS' not in os.environ and config.option.markexpr == 'not slow':
    os.environ['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
