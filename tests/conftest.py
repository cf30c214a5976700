"""Shared helpers: tiny model configs and random (non-zero) parameters."""
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from vivit.models import get_model_config, init_params  # noqa: E402

INPUT_SIZE = (4, 16, 16)  # time, height, width


def tiny_config(variant='spatio_temporal', embedding='tubelet', classifier=None, **overrides):
  """A 2-layer, hidden-16, 4-head model on 4x16x16 clips (tubelet 2x8x8)."""
  suffix = {'spatio_temporal': '', 'factorised_encoder': '-FE',
            'factorised_self_attention': '-FSA', 'factorised_dot_product': '-FDP'}[variant]
  config = get_model_config('Ti/8x2' + suffix, hidden_size=16, num_heads=4,
                            num_layers=2, mlp_dim=24, num_classes=5,
                            input_size=INPUT_SIZE, embedding=embedding)
  config.temporal.update(num_layers=2, num_heads=2, mlp_dim=20)
  if embedding == 'frame':
    config.num_sampled_frames = 2
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


# (variant, embedding, classifier) that the paper defines.
VARIANT_CASES = [
    (variant, embedding, classifier)
    for variant in ('spatio_temporal', 'factorised_encoder', 'factorised_self_attention',
                    'factorised_dot_product')
    for embedding in ('tubelet', 'frame')
    for classifier in (('token', 'gap') if variant in ('spatio_temporal',
                                                      'factorised_encoder') else ('gap',))
]


@pytest.fixture(params=VARIANT_CASES, ids=lambda c: '-'.join(c))
def variant_case(request):
  return request.param
