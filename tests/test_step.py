"""The train step (`vivit.step`): mixup, label smoothing, the pipeline's colour draws,
per-group gradient clipping and several label heads, each against a hand computation
on a linear model."""
import functools

import flax.linen
import jax
import numpy as np
import optax
import pytest

from helpers import training_config
from vivit.colour import augment_colour
from vivit.step import TrainState, mixup, train_step


def test_mixup_and_label_smoothing():
  video = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
  labels = np.eye(4, dtype=np.float32)
  mixed_video, mixed_labels = mixup(jax.random.PRNGKey(0), video, labels, 0.4)
  weight = float(mixed_labels[0, 0])
  assert 0 < weight < 1
  np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(mixed_labels[1], [1 - weight, weight, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(mixed_video[:, 0, 0], weight * np.arange(4) + (1 - weight) *
                             np.roll(np.arange(4), 1), rtol=1e-6)
  smoothed = optax.smooth_labels(labels, 0.2)
  np.testing.assert_allclose(smoothed[0], [0.85, 0.05, 0.05, 0.05], rtol=1e-6)


class LinearProbe(flax.linen.Module):
  """A model as small as a train step allows: one Dense layer on the flat clip."""
  num_classes: int

  @flax.linen.compact
  def __call__(self, video, train=False):
    return flax.linen.Dense(self.num_classes)(video.reshape(video.shape[0], -1))


def test_train_step_applies_mixup_and_label_smoothing():
  """The loss of `train_step` equals a hand computation of mixed, smoothed targets
  on the mixed clips (same RNG derivation), and differs from the plain loss."""
  Linear = functools.partial(LinearProbe, 4)
  model = Linear()
  rng = np.random.RandomState(0)
  batch = {'video': rng.normal(size=(6, 2, 3, 3, 3)).astype(np.float32),
           'label': np.array([0, 1, 2, 3, 0, 1])}
  params = model.init(jax.random.PRNGKey(0), batch['video'])['params']
  optimizer = optax.sgd(0.1)
  state = TrainState(jax.numpy.asarray(7), params, optimizer.init(params))

  def loss_of(mixup, smoothing):
    training = training_config(mixup=mixup, label_smoothing=smoothing, grad_clip_group=None)
    _, metrics = train_step(state, batch, model=model, optimizer=optimizer,
                            training=training, num_classes=4, seed=3)
    return float(metrics['loss'])

  weight = float(jax.random.beta(jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(3), 7))[0], 0.4, 0.4))
  targets = np.eye(4)[batch['label']] * (1 - 0.2) + 0.2 / 4
  targets = weight * targets + (1 - weight) * np.roll(targets, 1, axis=0)
  video = weight * batch['video'] + (1 - weight) * np.roll(batch['video'], 1, axis=0)
  logits = np.asarray(model.apply({'params': params}, video), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.mean(np.sum(targets * log_probs, -1))
  assert 0 < weight < 1
  assert loss_of(0.4, 0.2) == pytest.approx(expected, rel=1e-5)
  assert abs(loss_of(0.0, 0.0) - expected) > 1e-3


def test_train_step_applies_the_pipelines_colour_draws_before_mixup():
  """A batch with `colour` draws (one clip jittered, one greyed, one left): the loss
  is that of `augment_colour`'s clips, mixed; without the draws it differs."""
  model = LinearProbe(3)
  rng = np.random.RandomState(4)
  batch = {'video': rng.randint(0, 256, (3, 2, 3, 3, 3)).astype(np.uint8),
           'label': np.array([0, 1, 2]),
           'colour': np.array([[1, 0, 0.1, 1.3, 0.7, 0.15], [0, 1, 0, 1, 1, 0],
                               [0, 0, 0.1, 1.3, 0.7, 0.15]], np.float32)}
  video = np.asarray(augment_colour(batch['video'], batch['colour']))
  assert np.allclose(video[1, ..., 0], video[1, ..., 2])  # greyed
  np.testing.assert_allclose(video[2], batch['video'][2] / 127.5 - 1, atol=1e-6)  # left
  params = model.init(jax.random.PRNGKey(0), video)['params']
  optimizer = optax.sgd(0.1)
  state = TrainState(jax.numpy.asarray(2), params, optimizer.init(params))
  training = training_config(mixup=0.5, label_smoothing=0.0, grad_clip_group=None)
  loss = lambda b: float(train_step(state, b, model=model, optimizer=optimizer,
                                    training=training, num_classes=3, seed=0)[1]['loss'])
  weight = float(jax.random.beta(jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(0), 2))[0], 0.5, 0.5))
  mix = lambda x: weight * x + (1 - weight) * np.roll(x, 1, axis=0)
  logits = np.asarray(model.apply({'params': params}, mix(video)), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.mean(np.sum(mix(np.eye(3)[batch['label']]) * log_probs, -1))
  assert loss(batch) == pytest.approx(expected, rel=1e-5)
  assert abs(loss({k: v for k, v in batch.items() if k != 'colour'}) - expected) > 1e-3


def test_gradient_clipped_per_group_of_examples_as_scenic_per_device():
  """`grad_clip_group`: each group's gradient clipped to `grad_clip`, then averaged
  (scenic's per-device clipping), checked by hand; it differs from clipping the
  averaged gradient."""
  Linear = functools.partial(LinearProbe, 3)
  model = Linear()
  rng = np.random.RandomState(1)
  batch = {'video': rng.normal(size=(6, 2, 2, 2, 3)).astype(np.float32) * 3,
           'label': np.array([0, 1, 2, 0, 1, 2])}
  params = model.init(jax.random.PRNGKey(0), batch['video'])['params']
  optimizer = optax.sgd(1.0)

  def updated(group):
    training = training_config(mixup=0.0, label_smoothing=0.0, grad_clip=0.5,
                               grad_clip_group=group)
    sgd = optimizer if group else optax.chain(optax.clip_by_global_norm(0.5), optimizer)
    state = TrainState(jax.numpy.asarray(0), params, sgd.init(params))
    new, _ = train_step(state, batch, model=model, optimizer=sgd, training=training,
                        num_classes=3, seed=0)
    return new.params

  def group_gradient(rows):
    def loss(p):
      logits = model.apply({'params': p}, batch['video'][rows])
      return optax.softmax_cross_entropy(logits, np.eye(3)[batch['label'][rows]]).mean()
    grads = jax.grad(loss)(params)
    norm = float(optax.global_norm(grads))
    assert norm > 0.5  # clipping is active
    return jax.tree_util.tree_map(lambda g: g * 0.5 / norm, grads)
  clipped = [group_gradient(slice(i, i + 2)) for i in (0, 2, 4)]
  expected = jax.tree_util.tree_map(lambda p, *g: p - np.mean(g, axis=0), params, *clipped)
  for got, want in zip(jax.tree_util.tree_leaves(updated(2)),
                       jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  whole = updated(None)
  assert max(np.abs(a - b).max() for a, b in zip(
      jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(expected))) > 1e-3


def test_train_step_two_heads_with_mixup_and_label_smoothing():
  """Epic-Kitchens' heads: each head's targets smoothed over its own classes, mixed,
  and the loss the sum of the heads' cross-entropies (hand computation)."""
  Linear = functools.partial(LinearProbe, 5)
  model, label_heads = Linear(), (('noun', 3), ('verb', 2))
  rng = np.random.RandomState(2)
  batch = {'video': rng.normal(size=(4, 2, 2, 2, 3)).astype(np.float32),
           'label': np.array([[0, 1], [2, 0], [1, 1], [0, 0]])}
  params = model.init(jax.random.PRNGKey(0), batch['video'])['params']
  optimizer = optax.sgd(0.1)
  state = TrainState(jax.numpy.asarray(5), params, optimizer.init(params))
  training = training_config(mixup=0.3, label_smoothing=0.2, grad_clip_group=None)
  _, metrics = train_step(state, batch, model=model, optimizer=optimizer, training=training,
                          num_classes=5, seed=1, label_heads=label_heads)

  weight = float(jax.random.beta(jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(1), 5))[0], 0.3, 0.3))
  mix = lambda x: weight * x + (1 - weight) * np.roll(x, 1, axis=0)
  logits = np.asarray(model.apply({'params': params}, mix(batch['video'])), np.float64)
  expected = 0.0
  for i, (start, size) in enumerate(((0, 3), (3, 2))):
    targets = mix(np.eye(size)[batch['label'][:, i]] * 0.8 + 0.2 / size)
    part = logits[:, start:start + size]
    log_probs = part - np.log(np.exp(part).sum(-1, keepdims=True))
    expected += -np.mean(np.sum(targets * log_probs, -1))
  assert float(metrics['loss']) == pytest.approx(expected, rel=1e-5)
  assert set(metrics) >= {'noun_accuracy', 'verb_accuracy', 'accuracy'}
