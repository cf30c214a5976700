"""The same ViViT weights for another frame count or resolution."""
import jax
import numpy as np
import pytest

from helpers import (DEFAULT_VARIANT_CASES, VARIANT_CASES, default_or_slow, random_params,
                     tiny_model_config)
from vivit.convert.resize import resize_params
from vivit.models import build_model


def resized_config(config, frames, size):
  new = config.copy_and_resolve_references()
  new.input_size = (frames, size, size)
  if new.embedding == 'frame':
    new.num_sampled_frames = frames // 2
  return new


@pytest.mark.parametrize('case', default_or_slow(VARIANT_CASES, DEFAULT_VARIANT_CASES))
def test_every_variant_resizes_and_the_same_size_is_the_identity(case):
  variant, embedding, classifier = case
  config = tiny_model_config(variant, embedding, classifier)
  params = random_params(config)
  same = resize_params(params, config, config)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(same)):
    np.testing.assert_array_equal(a, b)
  bigger = resized_config(config, 8, 24)
  logits = build_model(bigger).apply({'params': resize_params(params, config, bigger)},
                                     np.zeros((1, 8, 24, 24, 3), np.float32))
  assert logits.shape == (1, config.num_classes) and np.isfinite(logits).all()


def test_model_1_resized_keeps_its_logits_on_a_static_video():
  """8 -> 16 frames and 32 -> 48 px: on a static clip (one image, upsampled with the
  clip) the resized model's logits stay close to the original's, much closer than
  another model's."""
  config = tiny_model_config(input_size=(8, 32, 32))
  params = random_params(config, scale=0.1)
  bigger = resized_config(config, 16, 48)
  image = np.random.RandomState(0).uniform(-1, 1, (1, 1, 4, 4, 3)).astype(np.float32)
  small = np.repeat(np.repeat(np.repeat(image, 8, 1), 8, 2), 8, 3)
  large = np.repeat(np.repeat(np.repeat(image, 16, 1), 12, 2), 12, 3)
  original = build_model(config).apply({'params': params}, small)
  resized = build_model(bigger).apply({'params': resize_params(params, config, bigger)},
                                      large)
  other = build_model(config).apply({'params': random_params(config, seed=1, scale=0.1)},
                                    small)
  error = np.abs(resized - original).max()
  assert error < 0.2 * np.abs(other - original).max()


def test_only_the_clip_size_may_change():
  config = tiny_model_config()
  other = config.copy_and_resolve_references()
  other.update(hidden_size=32, input_size=(8, 16, 16))
  with pytest.raises(ValueError, match='also differ in model.hidden_size'):
    resize_params(random_params(config), config, other)
