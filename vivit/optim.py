"""Optimiser and learning-rate schedule from `config.training`.

Parameters are named by their path in the params tree, joined with '/'
(`Transformer/encoderblock_0/LayerNorm_0/scale`, `output_projection/kernel`). The
pattern fields `training.weight_decay_exclude` and `training.freeze` hold regular
expressions searched (`re.search`) in those names: `bias$` matches every bias,
`^output_projection/` the head, `^(?!output_projection/)` everything but the head.
"""
import re
from typing import Any, Callable, Dict, Iterable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vivit.errors import ConfigError
from vivit.recipes import PATTERN_FIELDS

# The encoders of a model, from input to output (model 2: spatial, then temporal).
ENCODERS = ('Transformer', 'SpatialTransformer', 'TemporalTransformer')
_BLOCK = re.compile(r'^(\w+)/encoderblock_(\d+)/')  # (encoder, block index)


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
  momentum SGD (the paper's) or AdamW, weight decay on the parameters
  `training.weight_decay_exclude` leaves; `training.freeze`: those parameters left
  out of all of it (no update, no decay, no optimiser state, not in the clipped
  norm); `training.layer_decay`: each update scaled by its layer's learning-rate
  factor (`layer_scales`). With the three at their defaults, the paper's chain.

  Returns (optimizer, schedule).
  """
  schedule = make_schedule(training, total_steps, warmup_steps)
  parts = []
  if training.grad_clip and not training.grad_clip_group:
    parts.append(optax.clip_by_global_norm(training.grad_clip))
  decay_mask = None  # every parameter decays
  if training.weight_decay_exclude:
    decay_mask = lambda tree: _map_named(
        lambda name, _: not _matches(training.weight_decay_exclude, name), tree)
  if training.optimizer == 'sgd':
    if training.weight_decay:
      parts.append(optax.add_decayed_weights(training.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=training.momentum or None))
  elif training.optimizer == 'adamw':
    parts.append(optax.adamw(schedule, b1=training.b1, b2=training.b2,
                             weight_decay=training.weight_decay, mask=decay_mask))
  else:
    raise ConfigError(f"unknown training.optimizer {training.optimizer!r}; expected "
                      f"'sgd' or 'adamw'")
  optimizer = optax.chain(*parts)
  if training.freeze:
    optimizer = optax.multi_transform(
        {'trained': optimizer, 'frozen': optax.set_to_zero()},
        lambda tree: _map_named(lambda name, _: 'frozen' if _matches(training.freeze, name)
                                else 'trained', tree))
  if training.layer_decay != 1.0:
    optimizer = scale_by_layer(optimizer, training.layer_decay)
  if training.weight_decay_exclude or training.freeze:
    optimizer = _checking_patterns(optimizer, training)
  nonfinite = training.nonfinite
  if nonfinite == 'skip':
    optimizer = skip_nonfinite(optimizer)
  elif nonfinite != 'stop':
    raise ConfigError(f"unknown training.nonfinite {nonfinite!r}; expected 'stop' (end "
                      f"training at a non-finite loss) or 'skip' (skip such steps)")
  return optimizer, schedule


def param_name(path) -> str:
  """A parameter's name: its path in the params tree, joined with '/'."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def param_names(tree) -> list:
  """The names of `tree`'s leaves, in its leaves' order."""
  return [param_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _map_named(fn: Callable[[str, Any], Any], tree):
  """`tree` with each leaf `x` replaced by `fn(its name, x)`."""
  return jax.tree_util.tree_map_with_path(lambda path, x: fn(param_name(path), x), tree)


def without_frozen(grads, training: ml_collections.ConfigDict):
  """`grads` with the leaves of the parameters `training.freeze` names set to zero:
  what the train step clips by (a frozen backbone's gradient must not shrink the
  trained head's clipping scale)."""
  if not training.freeze:
    return grads
  return _map_named(lambda name, g: jnp.zeros_like(g) if _matches(training.freeze, name)
                    else g, grads)


def _matches(patterns: Iterable[str], name: str) -> bool:
  return any(re.search(pattern, name) for pattern in patterns)


def check_patterns(training: ml_collections.ConfigDict, names: Iterable[str]) -> None:
  """ConfigError naming the first pattern of `training.weight_decay_exclude` or
  `training.freeze` that matches none of the parameter `names` (a misspelt name
  would otherwise decay or train what it meant to spare)."""
  names = list(names)
  for field in PATTERN_FIELDS:
    for pattern in training[field]:
      if not any(re.search(pattern, name) for name in names):
        blocks = [n for n in names if _BLOCK.match(n)]
        examples = ', '.join(repr(n) for n in [n for n in names if not _BLOCK.match(n)]
                             + blocks[:1])
        raise ConfigError(
            f'training.{field} pattern {pattern!r} matches no parameter of the model; '
            f'patterns are regular expressions searched in names such as {examples}')


def _checking_patterns(inner: optax.GradientTransformation,
                       training: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """`inner`, whose `init` first checks the pattern fields against the params'
  names (`check_patterns`): before the first step, where the model is known."""
  def init(params):
    check_patterns(training, param_names(params))
    return inner.init(params)
  return optax.GradientTransformation(init, inner.update)


def layer_numbers(names: Iterable[str]) -> Tuple[Dict[str, int], int]:
  """({name: its layer}, depth) for layer-wise learning-rate decay, BEiT's numbering
  (unilm/beit/optim_factory.py, as MAE's util/lr_decay.py and VideoMAE use it):
  the patch embedding, CLS token and position embedding 0; encoder block k (from 1)
  k; everything after the last block (final LayerNorm, pre-logits, head) depth + 1,
  where depth is the number of blocks.

  Model 2's encoders are numbered as one stack in the order the video passes
  through them: spatial blocks 1..Ls, then temporal blocks Ls+1..Ls+Lt (depth Ls +
  Lt), as multi-stage backbones count their stages' blocks as one depth (timm's
  TinyViT, ConvNeXt's and Swin's layer decay). What feeds the temporal encoder (the
  spatial encoder's final LayerNorm, the temporal CLS token and position
  embedding) is layer Ls, below temporal block 1 as model 1's embeddings are below
  block 1. A name none of this covers counts as the head (BEiT's rule)."""
  names = list(names)
  blocks = {}
  for name in names:
    match = _BLOCK.match(name)
    if match and match[1] in ENCODERS:
      blocks[match[1]] = max(blocks.get(match[1], 0), int(match[2]) + 1)
  offsets, depth = {}, 0
  for encoder in ENCODERS:
    if encoder in blocks:
      offsets[encoder], depth = depth, depth + blocks[encoder]
  last = max(offsets, key=offsets.get, default=None)

  def layer(name: str) -> int:
    if name.startswith('embedding/'):
      return 0
    if name == 'cls' or name.startswith('cls_'):
      return offsets.get(name[4:] or 'Transformer', depth + 1)
    encoder, _, rest = name.partition('/')
    if encoder not in offsets:
      return depth + 1
    match = _BLOCK.match(name)
    if match:
      return offsets[encoder] + int(match[2]) + 1
    if rest.startswith('posembed_input/'):
      return offsets[encoder]
    if rest.startswith('encoder_norm/') and encoder != last:
      return offsets[encoder] + blocks[encoder]
    return depth + 1
  return {name: layer(name) for name in names}, depth


def layer_scales(layer_decay: float, names: Iterable[str]) -> Dict[str, float]:
  """{name: learning-rate factor}: `layer_decay ** (depth + 1 - layer)` with
  `layer_numbers`' layers and depth (ViT-B, 0.75: the embeddings 0.75 ** 13, block
  k 0.75 ** (13 - k), the head 1)."""
  layers, depth = layer_numbers(names)
  return {name: layer_decay ** (depth + 1 - layer) for name, layer in layers.items()}


def scale_by_layer(inner: optax.GradientTransformation,
                   layer_decay: float) -> optax.GradientTransformation:
  """`inner`, its updates scaled per parameter by `layer_scales`: the whole update,
  weight decay included, as a learning rate scaled per parameter group (BEiT's
  `lr_scale`) does. `inner`'s state as it is."""
  def update(updates, state, params=None):
    updates, state = inner.update(updates, state, params)
    scales = layer_scales(layer_decay, param_names(updates))
    return _map_named(lambda name, u: u if scales[name] == 1.0 else u * scales[name],
                      updates), state
  return optax.GradientTransformation(inner.init, update)


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
