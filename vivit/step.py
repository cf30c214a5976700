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
from vivit.optim import without_frozen
from vivit.recipes import check_accumulation


@flax.struct.dataclass
class TrainState:
  """`ema_params`: the exponential moving average of `params` (`training.ema_decay`),
  None when off."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None


def initial_state(params, optimizer, training: ml_collections.ConfigDict) -> TrainState:
  """The train state at step 0 from `params`; its EMA, if any, starts at `params`."""
  ema = (jax.tree_util.tree_map(jnp.copy, params)
         if training.ema_decay is not None else None)
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), ema)


def update_ema(ema, params, decay: float):
  """`decay * ema + (1 - decay) * params`, leaf by leaf (no warm-up, no debiasing)."""
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def micro_batches(x, accumulation: int, unit: int = 1):
  """`[batch, ...]` -> `[accumulation, batch // accumulation, ...]`: micro-batch k
  holds the runs of `unit` examples (clipping groups) k, k + accumulation, ...:
  strided, so that each micro-batch stays spread over the devices holding the batch."""
  units = x.shape[0] // unit
  x = x.reshape((units // accumulation, accumulation, unit) + x.shape[1:])
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape((accumulation, (units // accumulation) * unit) + x.shape[3:])


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

  def grad_fn(*args):  # frozen parameters' gradients are zero: never in a clipping norm
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(*args)
    return (loss, metrics), without_frozen(grads, training)

  group = training.grad_clip_group if training.grad_clip else None
  batch_size = video.shape[0]
  accumulation = training.grad_accumulation
  if group and batch_size % group:
    raise ConfigError(f'training.grad_clip_group={group} does not divide the batch '
                      f'of {batch_size}')
  check_accumulation(batch_size, accumulation, group)

  def batch_grads(video, targets, labels, rngs):
    """(loss, metrics, grads, grad norm) of a (micro-)batch; `rngs`: one dropout key
    per clipping group, or one key."""
    if not group:
      (loss, metrics), grads = grad_fn(state.params, video, targets, labels, rngs)
      return loss, metrics, grads, optax.global_norm(grads)
    # Scenic clips each device's gradient before averaging over devices; here each
    # group of `group` examples is one such device, whatever the devices are.
    split = lambda x: x.reshape((x.shape[0] // group, group) + x.shape[1:])

    def group_grads(video, targets, labels, rng):
      (loss, metrics), grads = grad_fn(state.params, video, targets, labels, rng)
      norm = optax.global_norm(grads)
      scale = jnp.minimum(1.0, training.grad_clip / jnp.maximum(norm, 1e-12))
      return loss, metrics, jax.tree_util.tree_map(lambda g: g * scale, grads), norm
    loss, metrics, grads, norms = jax.vmap(group_grads)(
        split(video), split(targets), split(labels), rngs)
    loss, metrics, grads, norm = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0),
                                                        (loss, metrics, grads, norms))
    return loss, metrics, grads, norm  # the mean norm before clipping, as below

  # With clipping groups each group has its own dropout key, whichever micro-batch
  # holds it: accumulation then draws the same dropout masks as one pass.
  rngs = jax.random.split(dropout_rng, batch_size // group) if group else dropout_rng
  if accumulation == 1:
    loss, metrics, grads, grad_norm = batch_grads(video, targets, batch['label'], rngs)
  else:
    # One micro-batch's activations at a time; the gradients summed, then averaged
    # (micro-batches are equal in size: the mean over the batch).
    unit = group or 1
    micro = lambda x: micro_batches(x, accumulation, unit)
    if group:
      micro_rngs = micro_batches(rngs, accumulation)
    else:  # one pass's dropout masks cannot be split: each micro-batch draws its own
      micro_rngs = jax.random.split(dropout_rng, accumulation)

    def add_micro_batch(total, inputs):
      return jax.tree_util.tree_map(jnp.add, total, batch_grads(*inputs)), None
    inputs = (micro(video), micro(targets), micro(batch['label']), micro_rngs)
    zeros = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(batch_grads, *jax.tree_util.tree_map(lambda x: x[0], inputs)))
    total, _ = jax.lax.scan(add_micro_batch, zeros, inputs)
    loss, metrics, grads, grad_norm = jax.tree_util.tree_map(lambda x: x / accumulation,
                                                             total)
    if not group:  # the norm of the batch's gradient, not the micro-batches' mean norm
      grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = (None if state.ema_params is None
                else update_ema(state.ema_params, params, training.ema_decay))
  metrics = {'loss': loss, **metrics, 'grad_norm': grad_norm}
  return TrainState(state.step + 1, params, opt_state, ema_params), metrics
