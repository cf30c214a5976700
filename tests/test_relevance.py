"""`vivit.relevance`: the observed attention is the model's, the relevance is the
product of the attention layers (checked against explicit [tokens, tokens] matrices
for every variant), pixels keep the mass, every block kind has its layers, and
(slow) a trained model's relevance on synthetic_motion's moving object."""
import dataclasses

import jax
import numpy as np
import pytest

from helpers import random_params, random_video, tiny_model_config
from vivit import relevance
from vivit.errors import ConfigError
from vivit.models import build_model, embedded_frames, token_grid, variants
from vivit.models.attention import factorised_attend
from vivit.models.vivit import sampled_frame_indices

from experiments.explanation_mass import (
    object_mass_ratio, object_mass_ratios, untrained_params)


def test_factorised_attention_exposes_probabilities_in_its_documented_layout():
  """Model 4's observed probabilities, laid out as `factorised_attend` says, rebuild
  its output head by head."""
  batch, time, space, heads, depth = 2, 3, 4, 4, 8
  q, k, v = np.random.RandomState(0).standard_normal((3, batch, time * space, heads, depth))
  seen = {}
  out = np.asarray(factorised_attend(
      q, k, v, (time, space), implementation='observed',
      observe=lambda w, part: seen.setdefault(part, w)))
  along_time, along_space = np.asarray(seen['time']), np.asarray(seen['space'])
  assert along_time.shape == (batch * space, heads // 2, time, time)
  assert along_space.shape == (batch * time, heads // 2, space, space)
  expected = np.zeros_like(out)
  for b in range(batch):
    for t in range(time):
      for s in range(space):
        for h in range(heads // 2):
          expected[b, t * space + s, h] = sum(
              along_time[b * space + s, h, t, u] * v[b, u * space + s, h]
              for u in range(time))
          expected[b, t * space + s, heads // 2 + h] = sum(
              along_space[b * time + t, h, s, r] * v[b, t * space + r, heads // 2 + h]
              for r in range(space))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def _matrix(weights, grads, method):
  """One example's head-mean mixing matrix: `[heads, q, k]` -> `[q, k]`."""
  if method == 'rollout':
    return weights.mean(0)
  return np.maximum(weights * grads, 0).mean(0)


def _full(kind, matrices, time, space):
  """`[time*space, time*space]` (time-major) from one clip's per-axis matrices: 'time'
  `[space, time, time]`, 'space' `[time, space, space]`, written out entry by entry."""
  full = np.zeros((time * space, time * space))
  for t in range(time):
    for s in range(space):
      for u in range(time if kind == 'time' else space):
        if kind == 'time':
          full[t * space + s, u * space + s] = matrices[s, t, u]
        else:
          full[t * space + s, t * space + u] = matrices[t, s, u]
  return full


def _pooled(layers, has_cls):
  """The CLS row, or the mean row less the identity, of prod (I + M) over `layers`."""
  size = layers[0].shape[0]
  product = np.eye(size)
  for matrix in layers:
    product = (np.eye(size) + matrix) @ product
  return product[0, 1:] if has_cls else (product - np.eye(size)).mean(0)


def reference_relevance(config, weights, grads, clip_shape, method, index):
  """Relevance `[t', h', w']` of clip `index` from explicit matrices and products."""
  variant = variants.get(config.variant)
  has_cls = config.classifier == 'token'
  time, height, width = token_grid(config, clip_shape)
  space = height * width

  def blocks(encoder, count):
    return [(weights[encoder][f'encoderblock_{i}'], grads[encoder][f'encoderblock_{i}'])
            for i in range(count)]
  if variant.per_frame:
    per_frame = []
    for t in range(time):
      layers = [_matrix(w['MultiHeadDotProductAttention_0']['all'][0][index, t],
                        g['MultiHeadDotProductAttention_0']['all'][index, t], method)
                for w, g in blocks('SpatialTransformer', config.num_layers)]
      per_frame.append(_pooled(layers, has_cls))
    layers = [_matrix(w['MultiHeadDotProductAttention_0']['all'][0][index],
                      g['MultiHeadDotProductAttention_0']['all'][index], method)
              for w, g in blocks('TemporalTransformer', config.temporal.num_layers)]
    over_time = _pooled(layers, has_cls)
    relevance = np.stack([over_time[t] * frame for t, frame in enumerate(per_frame)])
  else:
    # Model 3/4's per-axis probabilities: clip `index`'s sequences along `axis`.
    def per_axis(weights, grads, axis):
      count = space if axis == 'time' else time  # sequences per clip
      rows = range(index * count, (index + 1) * count)
      return _full(axis, np.stack([_matrix(weights[0][i], grads[i], method) for i in rows]),
                   time, space)
    layers = []
    for w, g in blocks('Transformer', config.num_layers):
      if variant.block == variants.JOINT_BLOCK:
        a = 'MultiHeadDotProductAttention_0'
        layers.append(_matrix(w[a]['all'][0][index], g[a]['all'][index], method))
      elif variant.block == variants.FACTORISED_SELF_ATTENTION_BLOCK:
        for axis in config.attention_order.split('_'):
          a = f'MultiHeadDotProductAttention_{axis}'
          layers.append(per_axis(w[a]['all'], g[a]['all'], axis))
      else:
        w, g = w['MultiHeadDotProductAttention_0'], g['MultiHeadDotProductAttention_0']
        layers.append((per_axis(w['time'], g['time'], 'time')
                       + per_axis(w['space'], g['space'], 'space')) / 2)
    relevance = _pooled(layers, has_cls)
  return (relevance / relevance.sum()).reshape(time, height, width)


@pytest.mark.parametrize('variant, classifier, method', [
    (variants.SPATIO_TEMPORAL, 'token', 'rollout'),
    (variants.FACTORISED_ENCODER, 'token', 'gradient'),
    (variants.FACTORISED_SELF_ATTENTION, 'gap', 'gradient'),
    (variants.FACTORISED_DOT_PRODUCT, 'gap', 'gradient'),
])
def test_relevance_is_the_product_of_the_attention_layers(variant, classifier, method):
  config = tiny_model_config(variant, classifier=classifier)
  if variant == variants.FACTORISED_SELF_ATTENTION:
    config.attention_order = 'space_time'
  params = random_params(config)
  clips = random_video(2)
  targets = np.array([3, 1])
  # Rollout needs no gradients: none are taken.
  weights, grads, logits = relevance.observed_attention(
      config, params, clips, None if method == 'rollout' else targets)
  assert (grads is None) == (method == 'rollout')
  # The observed attention is the model's.
  np.testing.assert_allclose(
      logits, jax.jit(build_model(config).apply)({'params': params}, clips),
      rtol=1e-5, atol=1e-5)
  tokens = relevance.relevance_from_attention(config, weights, grads, clips.shape[:4], method)
  assert tokens.shape == (2, 2, 2, 2)
  # The one-computation path the command runs gives the same.
  fused, fused_logits = relevance.token_relevance(config, params, clips, targets, method)
  np.testing.assert_allclose(fused, tokens, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(fused_logits, logits, rtol=1e-5, atol=1e-6)
  if grads is None:  # the reference's rollout reads no gradient: any tree of that shape
    grads = jax.tree_util.tree_map(lambda w: w[0], weights,
                                   is_leaf=lambda x: isinstance(x, tuple))
  weights, grads = jax.tree_util.tree_map(np.asarray, (weights, grads))
  for index, clip_relevance in enumerate(tokens):
    expected = reference_relevance(config, weights, grads, clips.shape[1:4], method, index)
    np.testing.assert_allclose(clip_relevance, expected, rtol=1e-4, atol=1e-6)


def test_model_2_chains_its_encoders_each_frame_keeping_its_magnitude():
  """One spatial and one temporal layer written by hand (rollout: the CLS row of each
  attention): the temporal CLS weighs both frames 0.4, frame 0's spatial CLS takes 0.6
  of its attention (its patches 0.1 each) and frame 1's none. A patch gets T[t] *
  S_t[p], so frame 0 holds 0.16 / 0.56 of the relevance; each frame's spatial
  relevance normalised on its own would give it half."""
  config = tiny_model_config(variants.FACTORISED_ENCODER, classifier='token',
                             num_layers=1)
  config.temporal.num_layers = 1
  spatial = np.full((1, 2, 5, 5), 0.2)  # [batch, time, q, k]: 2 frames, CLS + 4 patches
  spatial[0, :, 0] = [[0.6, 0.1, 0.1, 0.1, 0.1], [0.0, 0.4, 0.3, 0.2, 0.1]]
  temporal = np.full((1, 3, 3), 1 / 3)  # [batch, q, k]: CLS + 2 frames
  temporal[0, 0] = [0.2, 0.4, 0.4]

  def tree(encoder, matrices, heads):  # the sown layout: [..., heads, q, k], in 1-tuples
    per_head = np.repeat(np.expand_dims(matrices, -3), heads, -3).astype(np.float32)
    return {encoder: {'encoderblock_0': {'MultiHeadDotProductAttention_0': {
        'all': (per_head,)}}}}
  weights = {**tree('SpatialTransformer', spatial, config.num_heads),
             **tree('TemporalTransformer', temporal, config.temporal.num_heads)}
  tokens = relevance.relevance_from_attention(config, weights, None,
                                              (1,) + tuple(config.input_size), 'rollout')
  expected = np.array([[0.04, 0.04, 0.04, 0.04], [0.16, 0.12, 0.08, 0.04]]) / 0.56
  np.testing.assert_allclose(tokens, expected.reshape(1, 2, 2, 2), rtol=1e-5)


def test_a_max_pooling_model_is_refused():
  """'gmp' takes each feature from its own token: no attention row describes it."""
  message = r"^explaining a model is not supported for classifier 'gmp': max pooling "
  for variant in (variants.SPATIO_TEMPORAL, variants.FACTORISED_ENCODER):
    config = tiny_model_config(variant, classifier='gmp')
    shape = (1,) + tuple(config.input_size)
    with pytest.raises(ConfigError, match=message):
      relevance.relevance_from_attention(config, {}, None, shape, 'rollout')
    with pytest.raises(ConfigError, match=message):
      relevance.token_relevance(config, {}, np.zeros(shape + (3,), np.float32), [0],
                                'gradient')


def test_pixels_keep_the_mass_where_the_model_looks():
  tubelet = tiny_model_config()  # 4x16x16 clips, tubelet 2x8x8
  tokens = np.random.RandomState(0).uniform(size=(2, 2, 2, 2))
  tokens /= tokens.sum((1, 2, 3), keepdims=True)
  pixels = relevance.pixel_relevance(tokens, tubelet, (4, 16, 16))
  np.testing.assert_allclose(pixels.sum((1, 2, 3)), 1, rtol=1e-6)
  np.testing.assert_allclose(pixels[:, 2:, 8:, :8].sum((1, 2, 3)), tokens[:, 1, 1, 0])
  frame = tiny_model_config(embedding='frame')  # samples 3 of 4 frames
  tokens = np.full((1, 3, 2, 2), 1 / 12)
  pixels = relevance.pixel_relevance(tokens, frame, (4, 16, 16))
  seen = sampled_frame_indices(4, 3)
  assert embedded_frames(frame, 4) == seen
  assert pixels[0, seen].sum() == pytest.approx(1)
  assert not pixels[0, [i for i in range(4) if i not in seen]].any()
  # An object on a quarter of every frame seen: relevance spread evenly gives 1,
  # relevance only on it 4.
  mask = np.zeros((1, 4, 16, 16), bool)
  mask[:, :, :8, :8] = True
  assert object_mass_ratio(pixels, mask, seen)[0] == pytest.approx(1)
  on_object = np.where(mask, pixels, 0)
  assert object_mass_ratio(on_object, mask, seen)[0] == pytest.approx(4)


def test_an_unknown_block_kind_is_refused_not_guessed(monkeypatch):
  """Relevance follows `RELEVANCE_LAYERS` (every kind: tests/test_layout.py); a kind
  it lacks is refused by name, never treated as another kind."""
  config = tiny_model_config(variants.FACTORISED_DOT_PRODUCT)
  row = variants.get(config.variant)
  monkeypatch.setattr(variants, 'get', lambda name: dataclasses.replace(row, block='mixed'))
  with pytest.raises(ConfigError, match=r"^explaining a model is not supported for block "
                                        r"kind 'mixed'$"):
    relevance.relevance_from_attention(config, {}, {}, (1,) + tuple(config.input_size),
                                       'rollout')


# --- A trained model looks at the moving object (slow: trains on synthetic_motion) --

@pytest.mark.slow
@pytest.mark.parametrize('variant', variants.NAMES)
def test_a_trained_model_looks_at_the_moving_object(variant, request, tmp_path):
  """On 50 test clips whose object the generator knows, the relevance mass on the
  object against its area share: at least 2x for a trained model of each variant
  (model 1: the 3000-step model of the timeline test; the others small ones trained
  1500 steps here, ~1.5 min each: 26-64 % validation top-1, the direction not yet
  learnt but the object found), both methods; under 2x for the same model untrained.
  Measured: trained 2.6-3.5x, untrained 1.0-1.5x. (Fully trained by their configs:
  experiments/explanation_mass.py, 2.2-3.1x against 1.05-1.2x.)"""
  from helpers import train_small_synthetic
  from vivit import inference
  from vivit.datasets import synthetic
  if variant == variants.SPATIO_TEMPORAL:
    workdir = request.getfixturevalue('trained_synthetic')
  else:
    # Model 2 at 3e-3 stays at chance for some seeds (10 %, seeds 0 and 2 after
    # 2026-12-07's pixels); at 1e-3 it reaches 59-64 % in the same 1500 steps.
    rate = 1e-3 if variant == variants.FACTORISED_ENCODER else 3e-3
    workdir, _ = train_small_synthetic(tmp_path, 1500, variant, learning_rate=rate)
  clips, objects, labels = map(np.stack, zip(*synthetic.examples('test', 50)))
  clips, objects = clips[:, ::2], objects[:, ::2]  # the model's 8 frames, stride 2
  setup = inference.load(workdir)
  config = setup.model_config
  ratios = {(name, method): float(object_mass_ratios(
      config, params, clips, objects, labels, method).mean())
            for name, params in (('trained', setup.params),
                                 ('untrained', untrained_params(config)))
            for method in ('rollout', 'gradient')}
  print(variant, 'object mass / area share:', {k: round(v, 2) for k, v in ratios.items()})
  for method in ('rollout', 'gradient'):
    assert ratios['trained', method] >= 2
    assert ratios['untrained', method] < 2
