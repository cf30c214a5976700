"""The train step, one pure function: `(state, batch) -> (state, metrics)`.

Apart from `vivit.train` so that benchmarks can run it where the data stack
(TensorFlow, TFDS) is not installed.
"""
from typing import Any, Dict, List

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vivit.colour import augment_colour
from vivit.errors import ConfigError
from vivit.models import pixels_to_unit_range


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def mixup(rng, video, labels, alpha: float):
  """Mixes each example with its neighbour in the batch, one Beta(alpha, alpha)
  weight per batch: `video [batch, ...]`, `labels [batch, classes]`."""
  weight = jax.random.beta(rng, alpha, alpha)
  mix = lambda x: weight * x + (1 - weight) * jnp.roll(x, 1, axis=0)
  return mix(video), mix(labels)


def one_hot_labels(labels, num_classes: int, label_heads=None):
  """`[batch]` labels -> `[batch, num_classes]`; with `label_heads` ((name, classes),
  ...), `[batch, len(label_heads)]` labels -> the heads' one-hot blocks side by side."""
  if label_heads is None:
    return jax.nn.one_hot(labels, num_classes)
  return jnp.concatenate([jax.nn.one_hot(labels[:, i], size)
                          for i, (_, size) in enumerate(label_heads)], axis=-1)


def head_slices(label_heads):
  """(name, slice of the logits) per head."""
  starts = np.cumsum([0] + [size for _, size in label_heads])
  return [(name, slice(start, start + size))
          for (name, size), start in zip(label_heads, starts)]


def average_views(logits):
  """`[batch, views, classes]` -> `[batch, classes]`: the mean logit over views."""
  return jnp.mean(logits, axis=1)


def head_probabilities(logits, names: Dict[str, List[str]]) -> Dict[str, np.ndarray]:
  """{head: softmax of its slice of `logits` `[..., classes]`, `[..., head classes]`}
  for `names` {head: [class names]} in the logits' order."""
  label_heads = [(head, len(head_names)) for head, head_names in names.items()]
  return {head: np.asarray(jax.nn.softmax(logits[..., part], axis=-1))
          for head, part in head_slices(label_heads)}


def loss_and_metrics(logits, targets, labels, label_heads=None):
  """Softmax cross-entropy (summed over label heads) and accuracy: `logits, targets
  [batch, classes]`, `labels` as `one_hot_labels` takes them. With several label heads,
  `accuracy` counts a clip right when every head is (Epic-Kitchens' action
  accuracy), and each head's accuracy is `<name>_accuracy`."""
  if label_heads is None:
    return (optax.softmax_cross_entropy(logits, targets).mean(),
            {'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)})
  loss, metrics, all_right = 0.0, {}, True
  for i, (name, part) in enumerate(head_slices(label_heads)):
    loss += optax.softmax_cross_entropy(logits[:, part], targets[:, part]).mean()
    right = jnp.argmax(logits[:, part], -1) == labels[:, i]
    metrics[f'{name}_accuracy'] = jnp.mean(right)
    all_right = right & all_right
  metrics['accuracy'] = jnp.mean(all_right)
  return loss, metrics


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, model, optimizer,
               training: ml_collections.ConfigDict, num_classes: int, seed: int,
               label_heads=None):
  """One SGD step: `(state, batch) -> (state, metrics)`. Pure; RNG from the step.
  `batch`: video, label and, with colour augmentation, each clip's `colour` draws
  (`vivit.input.pipeline`). `label_heads`: ((name, classes), ...) for a model with
  several label heads."""
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
  mix_rng, dropout_rng = jax.random.split(rng)
  video, targets = batch['video'], one_hot_labels(batch['label'], num_classes, label_heads)
  if 'colour' in batch:  # the pipeline's draws of colour augmentation
    video = augment_colour(video, batch['colour'])
  if training.label_smoothing:
    if label_heads is None:
      targets = optax.smooth_labels(targets, training.label_smoothing)
    else:  # each head's distribution smoothed over its own classes
      targets = jnp.concatenate(
          [optax.smooth_labels(targets[:, part], training.label_smoothing)
           for _, part in head_slices(label_heads)], axis=-1)
  if training.mixup:  # on pixel values, not on uint8 codes
    video = pixels_to_unit_range(video)
    video, targets = mixup(mix_rng, video, targets, training.mixup)

  def loss_fn(params, video, targets, labels, rng):
    logits = model.apply({'params': params}, video, train=True, rngs={'dropout': rng})
    return loss_and_metrics(logits, targets, labels, label_heads)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  group = training.grad_clip_group if training.grad_clip else None
  if group:
    # Scenic clips each device's gradient before averaging over devices; here each
    # group of `group` examples is one such device, whatever the devices are.
    batch_size = video.shape[0]
    if batch_size % group:
      raise ConfigError(f'training.grad_clip_group={group} does not divide the batch '
                        f'of {batch_size}')
    split = lambda x: x.reshape((batch_size // group, group) + x.shape[1:])

    def group_grads(video, targets, labels, rng):
      (loss, metrics), grads = grad_fn(state.params, video, targets, labels, rng)
      norm = optax.global_norm(grads)
      scale = jnp.minimum(1.0, training.grad_clip / jnp.maximum(norm, 1e-12))
      return loss, metrics, jax.tree_util.tree_map(lambda g: g * scale, grads), norm
    loss, metrics, grads, norms = jax.vmap(group_grads)(
        split(video), split(targets), split(batch['label']),
        jax.random.split(dropout_rng, batch_size // group))
    loss, metrics, grads = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0),
                                                  (loss, metrics, grads))
    grad_norm = jnp.mean(norms)  # before clipping, as below
  else:
    (loss, metrics), grads = grad_fn(state.params, video, targets, batch['label'],
                                     dropout_rng)
    grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, **metrics, 'grad_norm': grad_norm}
  return TrainState(state.step + 1, params, opt_state), metrics
