"""Property-based tests (hypothesis): over model configs, video shapes and dtypes, and
command-line-style overrides, every combination either works (logits of the right
shape, finite) or raises an error that names the field and the value; never a crash
inside XLA or a silent wrong shape. Fixed example budgets keep the suite's time."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import tiny_model_config
from vivit.models import build_model, init_params
from vivit.recipes import load_config

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

VARIANTS = ('spatio_temporal', 'factorised_encoder', 'factorised_self_attention',
            'factorised_dot_product')


@st.composite
def model_and_video(draw):
  """A model config and a video shape and dtype; each field valid with probability
  0.9 (so that most cases get through to the model), else one of its bad values."""
  rng = np.random.RandomState(draw(st.integers(0, 2 ** 31 - 1)))

  def pick(valid, invalid=()):
    options = invalid if invalid and rng.uniform() < 0.1 else valid
    return options[rng.randint(len(options))]
  config = tiny_model_config(pick(VARIANTS))
  config.embedding = pick(('tubelet', 'frame'), ('voxel',))
  config.classifier = pick(('gap', 'token', 'gmp', 'gsp'), ('mean',))
  config.num_heads = pick((1, 2, 4), (3,))
  config.hidden_size = pick((8, 16), (12,))
  config.temporal.num_heads = pick((1, 2, 4))
  rank = pick((3,), (2, 4))
  config.tubelet = tuple(pick((1, 2, 4, 8)) for _ in range(rank))
  config.num_sampled_frames = pick((2, 3), (None, 5))
  frames, height, width = pick((1, 2, 4, 6)), pick((8, 16, 12)), pick((8, 16, 20))
  if rng.uniform() < 0.8:  # mostly the clips the params are made for
    config.input_size = (frames, height, width)
  shape = (pick((1, 2), (0,)), frames, height, width, pick((3,), (1, 4)))
  return config, shape, pick((np.uint8, np.float32), (np.float16, np.int32))


def names_the_problem(message: str, config, shape, dtype) -> bool:
  """The message names a config field with its value, or the video's offending
  dimension or dtype."""
  fields = ['variant', 'embedding', 'classifier', 'num_heads', 'hidden_size', 'tubelet',
            'num_sampled_frames', 'dtype', 'channels', 'batch', 'frame', 'height', 'width',
            'input_size']
  named = [f for f in fields if f in message]
  values = [str(v) for v in (config.variant, config.embedding, config.classifier,
                             config.num_heads, config.hidden_size, config.temporal.num_heads,
                             tuple(config.tubelet), config.num_sampled_frames,
                             np.dtype(dtype).name, tuple(config.input_size), *shape)]
  return bool(named) and any(v in message for v in values)


@FAST
@given(model_and_video())
def test_model_runs_or_names_the_problem(case):
  config, shape, dtype = case
  video = jnp.zeros(shape, dtype)
  try:
    model = build_model(config)
    params = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    logits = jax.eval_shape(lambda p, v: model.apply({'params': p}, v), params, video)
  except ValueError as e:
    assert names_the_problem(str(e), config, shape, dtype), str(e)
    return
  assert logits.shape == (shape[0], config.num_classes), (logits.shape, shape)
  assert logits.dtype == jnp.float32


@settings(max_examples=12, deadline=None, derandomize=True)
@given(model_and_video())
def test_accepted_inputs_run_in_xla_to_finite_logits(case):
  """The cases shape inference accepts also compile and run."""
  config, shape, dtype = case
  try:
    model = build_model(config)
    params = init_params(config, jax.random.PRNGKey(0))
    video = jnp.asarray(np.random.RandomState(0).uniform(0, 1, shape), dtype)
    jax.eval_shape(lambda p, v: model.apply({'params': p}, v), params, video)
  except ValueError:
    return
  logits = jax.jit(lambda p, v: model.apply({'params': p}, v))(params, video)
  assert logits.shape == (shape[0], config.num_classes)
  assert np.isfinite(np.asarray(logits)).all()


CONFIG = 'configs/synthetic_motion.py'
SECTIONS = ('dataset', 'model', 'training', 'eval', 'mesh', 'seed')


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.sampled_from(SECTIONS), st.text('abcdefghijklmnopqrstuvwxyz_', min_size=1,
                                          max_size=12))
def test_misspelt_override_names_the_key(section, field):
  """A key the config does not have is refused with its name, as `--config.X=`
  overrides are (ml_collections' locked config)."""
  config = load_config(CONFIG)
  config.lock()
  target = config if section == 'seed' else config[section]
  if not hasattr(target, 'keys') or field in target:
    return
  with pytest.raises((AttributeError, KeyError), match=re.escape(field)):
    target[field] = 1
