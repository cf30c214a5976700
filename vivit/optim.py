"""Optimiser and learning-rate schedule from `config.training`."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vivit.errors import ConfigError


def make_schedule(training: ml_collections.ConfigDict, total_steps: int, warmup_steps: int):
  """Linear warm-up from 0 to `training.learning_rate`, then cosine decay to 0 or
  constant."""
  lr = training.learning_rate
  if training.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps,
                                              max(total_steps, warmup_steps + 1))
  if training.schedule == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)],
        [warmup_steps])
  raise ConfigError(f"unknown training.schedule {training.schedule!r}; expected "
                    f"'cosine' or 'constant'")


def make_optimizer(training: ml_collections.ConfigDict, total_steps: int,
                   warmup_steps: int):
  """`optax` chain: global-norm clipping (of the batch's gradient; per group of
  examples the train step clips instead, see `training.grad_clip_group`), then
  momentum SGD (the paper's) or AdamW.

  Returns (optimizer, schedule).
  """
  schedule = make_schedule(training, total_steps, warmup_steps)
  parts = []
  if training.grad_clip and not training.grad_clip_group:
    parts.append(optax.clip_by_global_norm(training.grad_clip))
  if training.optimizer == 'sgd':
    if training.weight_decay:
      parts.append(optax.add_decayed_weights(training.weight_decay))
    parts.append(optax.sgd(schedule, momentum=training.momentum or None))
  elif training.optimizer == 'adamw':
    parts.append(optax.adamw(schedule, b1=training.b1, b2=training.b2,
                             weight_decay=training.weight_decay))
  else:
    raise ConfigError(f"unknown training.optimizer {training.optimizer!r}; expected "
                      f"'sgd' or 'adamw'")
  optimizer = optax.chain(*parts)
  nonfinite = training.nonfinite
  if nonfinite == 'skip':
    optimizer = skip_nonfinite(optimizer)
  elif nonfinite != 'stop':
    raise ConfigError(f"unknown training.nonfinite {nonfinite!r}; expected 'stop' (end "
                      f"training at a non-finite loss) or 'skip' (skip such steps)")
  return optimizer, schedule


def all_finite(tree) -> jax.Array:
  """Scalar bool: no NaN or inf anywhere in `tree`."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


class SkipState(NamedTuple):
  inner_state: Any
  skipped: jax.Array  # steps skipped so far


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner`, except that a step whose update is not finite (a NaN gradient, or a
  learning rate or statistic gone bad) leaves the params and `inner`'s state as they
  were, and is counted. (optax.apply_if_finite checks the gradient only.)"""
  def init(params):
    return SkipState(inner.init(params), jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    new_updates, inner_state = inner.update(updates, state.inner_state, params)
    finite = all_finite(new_updates)
    keep = lambda new, old: jnp.where(finite, new, old)
    return (jax.tree_util.tree_map(lambda u: keep(u, jnp.zeros_like(u)), new_updates),
            SkipState(jax.tree_util.tree_map(keep, inner_state, state.inner_state),
                      state.skipped + (~finite).astype(jnp.int32)))
  return optax.GradientTransformation(init, update)


def skipped_steps(opt_state) -> int:
  """Steps skipped for a non-finite update so far (`training.nonfinite='skip'`)."""
  return int(opt_state.skipped) if isinstance(opt_state, SkipState) else 0
