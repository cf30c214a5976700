"""Optimiser and learning-rate schedule from `config.training`."""
import ml_collections
import optax


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
  raise ValueError(f"unknown training.schedule {training.schedule!r}; expected "
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
  if training.grad_clip and not training.get('grad_clip_group'):
    parts.append(optax.clip_by_global_norm(training.grad_clip))
  if training.optimizer == 'sgd':
    if training.weight_decay:
      parts.append(optax.add_decayed_weights(training.weight_decay))
    parts.append(optax.sgd(schedule, momentum=training.momentum or None))
  elif training.optimizer == 'adamw':
    parts.append(optax.adamw(schedule, b1=training.get('b1', 0.9),
                             b2=training.get('b2', 0.999),
                             weight_decay=training.weight_decay))
  else:
    raise ValueError(f"unknown training.optimizer {training.optimizer!r}; expected "
                     f"'sgd' or 'adamw'")
  return optax.chain(*parts), schedule
