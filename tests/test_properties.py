"""Property-based tests (hypothesis): over model configs, video shapes and dtypes, and
command-line-style overrides, every combination either works (logits of the right
shape, finite) or raises the error `expected_problems` predicts, which names the
field or dimension and its value; never a crash inside XLA or a silent wrong shape.
Each kind of problem also has a fixed case (`KINDS`), and each random search counts
that its examples reached what it checks. Fixed example budgets keep the suite's time."""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st

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


# The variants' traits that decide what the model refuses (`vivit.models.variants`).
PER_FRAME = ('factorised_encoder',)
WITHOUT_CLS = ('factorised_self_attention', 'factorised_dot_product')
SPLIT_HEADS = ('factorised_dot_product',)


def config_problems(config):
  """What `build_model` must refuse in `config`: [(kind, message regex)]."""
  problems = []
  for field, valid in (('embedding', ('tubelet', 'frame')),
                       ('classifier', ('gap', 'token', 'gmp', 'gsp'))):
    if config[field] not in valid:
      problems.append((f'unknown {field}',
                       re.escape(f'unknown model.{field} {config[field]!r}; ')))
  if config.classifier == 'token' and config.variant in WITHOUT_CLS:
    problems.append(('token without CLS', re.escape(
        f"model.classifier='token' is not defined for variant {config.variant!r} ")))
  if config.variant in SPLIT_HEADS and config.num_heads % 2:
    problems.append(('odd split heads', re.escape(
        f'{config.variant} splits heads between time and space and needs an even '
        f'num_heads, got {config.num_heads}')))
  if len(config.tubelet) != 3:
    problems.append(('tubelet rank', re.escape(
        f'model.tubelet must be (time, height, width), got {tuple(config.tubelet)}')))
  if config.embedding == 'frame' and not config.num_sampled_frames:
    problems.append(('no sampled frames', re.escape(
        'embedding=frame needs model.num_sampled_frames')))
  heads = [('num_heads', config.num_heads)]
  if config.variant in PER_FRAME:
    heads.append(('temporal.num_heads', config.temporal.num_heads))
  for name, num in heads:
    if config.hidden_size % num:
      kind = 'temporal heads' if name.startswith('temporal') else 'heads'
      problems.append((f'hidden not divisible by {kind}', re.escape(
          f'model.hidden_size {config.hidden_size} is not divisible by model.{name} {num}')))
  return problems


def clip_problems(config, shape):
  """(what tokenising a clip of `shape` must refuse, what it may refuse: scenic's
  frame sampling can give one frame too many in float32)."""
  _, frames, height, width, _ = shape
  t, h, w = config.tubelet
  frame = config.embedding == 'frame'
  problems, possible = [], []
  for name, size, patch in (('frame count', frames, 1 if frame else t),
                            ('height', height, h), ('width', width, w)):
    if size % patch:
      problems.append((f'{name} not divisible', re.escape(
          f'video {name} {size} is not divisible by the tubelet size {patch} (video '
          f'shape {tuple(shape)}, tubelet {tuple(config.tubelet)})')))
  num = config.num_sampled_frames
  if frame and num > frames:
    problems.append(('too few frames to sample', re.escape(
        f'frame embedding samples num_sampled_frames={num} frames; it must be between 1 '
        f'and the clip length {frames}')))
  if frame and num < frames:
    possible.append(('scenic sampling', re.escape('scenic samples ') + r'\d+' + re.escape(
        f' frames, not num_sampled_frames={num}, from a {frames}-frame clip')))
  return problems, possible


def token_counts(config, shape):
  """The position embeddings' lengths for clips of `shape`: one per encoder."""
  _, frames, height, width, _ = shape
  t, h, w = config.tubelet
  time = config.num_sampled_frames if config.embedding == 'frame' else frames // t
  space = (height // h) * (width // w)
  cls = int(config.classifier == 'token')
  if config.variant in PER_FRAME:
    return [space + cls, time + cls]
  return [time * space + cls]


def expected_problems(config, shape, dtype):
  """(kinds and message regexes of which the model must raise one, those it may
  raise) for `config` applied to a video of `shape` and `dtype`, in the order the
  model meets them: the config, the params' clips (`input_size`), the video."""
  problems = config_problems(config)
  if problems:
    return problems, []
  params_clip = (1, *config.input_size, 3)
  problems, possible = clip_problems(config, params_clip)
  if problems:
    return problems, possible
  if shape[-1] != 3:
    problems.append(('channels', re.escape(
        f'video must have 3 (RGB) channels, got {shape[-1]} channels (shape {shape})')))
  name = np.dtype(dtype).name
  if not (name == 'uint8' or np.issubdtype(dtype, np.floating)):
    problems.append(('dtype', re.escape(
        f'video dtype {name} is neither uint8 pixels nor floats in [-1, 1]')))
  if problems:
    return problems, possible
  problems, video_possible = clip_problems(config, shape)
  possible += video_possible
  if problems:
    return problems, possible
  for given, made in zip(token_counts(config, shape), token_counts(config, params_clip)):
    if given != made:
      return [('position embedding', re.escape(
          f'the video gives {given} tokens (position embedding (1, {given}, ') + r'\d+' +
          re.escape(f')) but the params were made for {made} ('))], possible
  return [], possible


def outcome(config, shape, dtype) -> str:
  """'runs' when the model gives logits of the right shape for a video of `shape` and
  `dtype` (shape inference only), else the kind of problem its error names; fails
  unless that is what `expected_problems` predicts, with the field or dimension and
  its value."""
  required, possible = expected_problems(config, shape, dtype)
  video = jnp.zeros(shape, dtype)
  try:
    model = build_model(config)
    params = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    logits = jax.eval_shape(lambda p, v: model.apply({'params': p}, v), params, video)
  except ValueError as e:
    named = [kind for kind, pattern in required + possible if re.search(pattern, str(e))]
    assert named, f'{e}\nexpected one of: {[p for _, p in required + possible]}'
    return named[0]
  assert not required, f'ran, but expected one of: {[p for _, p in required]}'
  assert logits.shape == (shape[0], config.num_classes), (logits.shape, shape)
  assert logits.dtype == jnp.float32
  return 'runs'


def case(variant='spatio_temporal', shape=(2, 4, 16, 16, 3), dtype=np.uint8, **fields):
  """A model that runs on `shape` videos (tubelet 2x8x8, clips 4x16x16), `fields`
  changed (`temporal_num_heads` is `temporal.num_heads`)."""
  config = tiny_model_config(variant, fields.pop('embedding', 'tubelet'))
  if 'temporal_num_heads' in fields:
    config.temporal.num_heads = fields.pop('temporal_num_heads')
  config.update(fields)
  return config, shape, dtype


# One case of each kind of problem, so that every one is checked on every run.
KINDS = {
    'runs': case(),
    'unknown embedding': case(embedding='voxel'),
    'unknown classifier': case(classifier='mean'),
    'token without CLS': case('factorised_self_attention', classifier='token'),
    'odd split heads': case('factorised_dot_product', num_heads=1),
    'tubelet rank': case(tubelet=(2, 8)),
    'no sampled frames': case(embedding='frame', num_sampled_frames=None),
    'hidden not divisible by heads': case(num_heads=3),
    'hidden not divisible by temporal heads': case('factorised_encoder',
                                                   temporal_num_heads=3),
    'frame count not divisible': case(shape=(2, 3, 16, 16, 3)),
    'height not divisible': case(shape=(2, 4, 12, 16, 3)),
    'width not divisible': case(input_size=(4, 16, 20)),
    'too few frames to sample': case(embedding='frame', shape=(2, 2, 16, 16, 3)),
    'scenic sampling': case(embedding='frame', num_sampled_frames=2),
    'channels': case(shape=(2, 4, 16, 16, 4)),
    'dtype': case(dtype=np.int32),
    'position embedding': case(shape=(2, 4, 8, 16, 3)),
}


@pytest.mark.parametrize('kind', KINDS)
def test_each_kind_of_problem_is_named(kind):
  assert outcome(*KINDS[kind]) == kind


def test_model_runs_or_names_the_problem():
  """Random combinations of the mistakes above: each case runs or raises an error
  `expected_problems` predicts; both happen, over many kinds of mistake."""
  outcomes = collections.Counter()

  @FAST
  @given(model_and_video())
  def run_or_name_the_problem(case):
    kind = outcome(*case)
    outcomes[kind] += 1
    event(kind)
  run_or_name_the_problem()
  assert outcomes['runs'] >= 5, outcomes
  assert sum(outcomes.values()) - outcomes['runs'] >= 30, outcomes
  assert len(outcomes) >= 10, outcomes  # runs, and at least 9 kinds of problem


def test_accepted_inputs_run_in_xla_to_finite_logits():
  """The cases without a problem (`expected_problems`) also compile and run (a few:
  each compiles a model)."""
  ran = []

  @settings(max_examples=4, deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
  @given(model_and_video())
  def runs_in_xla(case):
    config, shape, dtype = case
    assume(expected_problems(config, shape, dtype) == ([], []))
    model = build_model(config)
    params = jax.jit(lambda rng: init_params(config, rng))(jax.random.PRNGKey(0))
    video = jnp.asarray(np.random.RandomState(0).uniform(0, 1, shape), dtype)
    logits = jax.jit(lambda p, v: model.apply({'params': p}, v))(params, video)
    assert logits.shape == (shape[0], config.num_classes)
    assert np.isfinite(np.asarray(logits)).all()
    ran.append((config.variant, config.embedding, shape))
  runs_in_xla()
  assert len(ran) >= 4, ran


CONFIG = 'configs/synthetic_motion.py'
SECTIONS = ('dataset', 'model', 'training', 'eval', 'mesh', 'seed')


def test_misspelt_override_names_the_key():
  """A key the config does not have is refused with its name, as `--config.X=`
  overrides are (ml_collections' locked config)."""
  refused = []

  @settings(max_examples=40, deadline=None, derandomize=True)
  @given(st.sampled_from(SECTIONS), st.text('abcdefghijklmnopqrstuvwxyz_', min_size=1,
                                            max_size=12))
  def refused_by_name(section, field):
    config = load_config(CONFIG)
    config.lock()
    target = config if section == 'seed' else config[section]
    assume(field not in target)
    with pytest.raises(KeyError, match=re.escape(
        f'Key "{field}" does not exist and cannot be added since the config is locked')):
      target[field] = 1
    refused.append(field)
  refused_by_name()
  assert len(refused) >= 40, refused
