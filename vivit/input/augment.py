"""Training augmentation ops: what runs on a training clip after its view is cut
(`vivit.input.crop.train_view`), one registered function each, named by
the config (as big_vision's `pp` ops).

`dataset.augment_ops` names the ops a run may use; each runs when the settings it
reads from the dataset config turn it on:

  randaugment  `dataset.randaugment = (num_layers, magnitude)` (None: off):
               RandAugment on the clip's pixels (`vivit.input.randaugment`)
  colour       `dataset.colour_augment` or `dataset.colour_drop` above 0: the clip's
               draws of scenic's colour augmentation, the example's `colour` [6],
               applied on the device by the train step (`vivit.colour`)

They run in the order they are registered here (scenic's), whatever the order the
config lists them in: the ops that change the pixels on float32 [0, 255], then the
clip is rounded to uint8, then the ops that write fields of their own. RandAugment
and colour are never both on: scenic runs only RandAugment when its config asks for
both, and a config here that does is refused. Colour drop alone (`colour_augment` 0,
`colour_drop` above 0) is scenic's `color_default_augm` with `prob_color_augment` 0:
the two coins are tossed apart there too.

An op is a function `(clip, settings, seed) -> result`:
  clip      `[time, height, width, 3]`: float32 in [0, 255] for an op that writes
            the pixels (field 'video'), the final uint8 pixels for any other;
  settings  what its `settings` function read from the dataset config (never None);
  seed      its own [2] stateless seed, derived from the example's;
  result    the new clip, or the value of its field (e.g. `colour`).

To add an op (one function and its test):
  1. Below, `@register('name', settings=..., field=...)` on its function. `settings`
     reads its config fields and returns None when they turn it off (default: on
     whenever named); a new field goes in `vivit.recipes.base_config`'s dataset
     section. `field` is 'video' (the default) for an op that changes the pixels,
     else the example field it writes, which the train step then reads. A long
     algorithm gets a module of its own, as RandAugment's.
  2. Its test in tests/test_augment.py: what it does to a clip, through
     `vivit.input.pipeline.train_example`.
  3. A run names it: `--config.dataset.augment_ops="('randaugment', 'colour',
     'name')"` (the default names the first two).
A new op draws from `named_seed` (the example's seed folded with its name), so
adding it changes no other op's draws; the ops that predate the registry keep the
seeds they had (`view_seed`).
"""
import dataclasses
import zlib
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import ml_collections
import tensorflow as tf

from vivit.errors import ConfigError
from vivit.input import randaugment as randaugment_lib
from vivit.input.sampling import split_seed, to_pixels

VIDEO = 'video'


@dataclasses.dataclass(frozen=True)
class Op:
  """A registered op: `apply(clip, settings, seed)` writes `field` of the example
  when `settings(dataset_config)` is not None; `seed(example_seed)` is its seed."""
  name: str
  apply: Callable[[tf.Tensor, Any, tf.Tensor], tf.Tensor]
  settings: Callable[[ml_collections.ConfigDict], Any]
  field: str
  seed: Callable[[tf.Tensor], tf.Tensor]


_OPS: Dict[str, Op] = {}


def named_seed(example_seed, name: str):
  """The [2] seed of op `name` for the example of `example_seed`: independent of
  every other op's and of which ops run."""
  return tf.random.experimental.stateless_fold_in(
      example_seed, zlib.crc32(name.encode()) & 0x7fffffff)


def register(name: str, *, settings: Callable[[ml_collections.ConfigDict], Any] =
             lambda dataset_config: (), field: str = VIDEO,
             seed: Optional[Callable[[tf.Tensor], tf.Tensor]] = None):
  """Registers the decorated function as the op `name` (see the module docstring);
  `settings` by default turns it on whenever the config names it, `seed` by
  default is `named_seed`."""
  def add(function):
    if name in _OPS:
      raise ValueError(f'augmentation op {name!r} is registered twice')
    _OPS[name] = Op(name, function, settings, field,
                    seed or (lambda example_seed: named_seed(example_seed, name)))
    return function
  return add


def names() -> Tuple[str, ...]:
  """The registered ops, in the order they run."""
  return tuple(_OPS)


def optional_tuple(value) -> Optional[tuple]:
  """A tuple config field that may be unset: None, `()` and `(None,)` (what
  `--config.x=None` makes of a tuple field) are all unset."""
  return None if not value or tuple(value) == (None,) else tuple(value)


def configured_ops(dataset_config: ml_collections.ConfigDict) -> Tuple[Tuple[Op, Any], ...]:
  """(op, settings) of each op `dataset_config.augment_ops` names that its settings
  turn on, in the order they run."""
  requested = dataset_config.augment_ops
  requested = (requested,) if isinstance(requested, str) else optional_tuple(requested) or ()
  for name in requested:
    if name not in _OPS:
      raise ConfigError(f'unknown augmentation op {name!r} in dataset.augment_ops; '
                        f'known: {", ".join(_OPS)}')
  chosen = []
  for op in _OPS.values():
    if op.name in requested:
      settings = op.settings(dataset_config)
      if settings is not None:
        chosen.append((op, settings))
  if {'randaugment', 'colour'} <= {op.name for op, _ in chosen}:
    # scenic's `additional_augmentations` runs one of them, RandAugment first.
    raise ConfigError(
        f'dataset.randaugment={tuple(dataset_config.randaugment)} and colour augmentation '
        f'(colour_augment={dataset_config.colour_augment}, colour_drop='
        f'{dataset_config.colour_drop}) are both on; scenic runs only RandAugment then: '
        'set dataset.colour_augment=0 and dataset.colour_drop=0, or dataset.randaugment=None')
  return tuple(chosen)


def changes_pixels(ops: Sequence[Tuple[Op, Any]]) -> bool:
  """Whether any of `ops` writes the clip (the view is then handed over as float32)."""
  return any(op.field == VIDEO for op, _ in ops)


def apply_ops(ops: Sequence[Tuple[Op, Any]], clip, example_seed) -> Dict[str, tf.Tensor]:
  """`ops` (`configured_ops`) on the training view, float32 in [0, 255]
  when they change the pixels, else uint8: {'video': uint8 `[time, height, width,
  3]`, and each other op's field}."""
  for op, settings in ops:
    if op.field == VIDEO:
      clip = op.apply(clip, settings, op.seed(example_seed))
  example = {VIDEO: to_pixels(clip) if changes_pixels(ops) else clip}
  for op, settings in ops:
    if op.field != VIDEO:
      example[op.field] = op.apply(example[VIDEO], settings, op.seed(example_seed))
  return example


# The seeds of the crop and of the ops that predate the registry, as they were:
#   example seed -> view seed, colour seed                      (split in two)
#   view seed -> the crop's start, crop and flip, RandAugment's  (split in four)
def view_seed(example_seed):
  """The training view's seed (`vivit.input.crop.train_view`)."""
  return split_seed(example_seed, 2)[0]


def _randaugment_seed(example_seed):
  return split_seed(view_seed(example_seed), 4)[3]


def _colour_seed(example_seed):
  return split_seed(example_seed, 2)[1]


def _randaugment_settings(dataset_config) -> Optional[tuple]:
  value = dataset_config.randaugment
  settings = optional_tuple(value) if isinstance(value, (tuple, list)) else value
  if settings is not None and (not isinstance(settings, tuple) or len(settings) != 2):
    raise ConfigError(f'randaugment must be None or (num_layers, magnitude), got {settings!r}')
  if settings is not None:
    randaugment_lib.check_arguments(*settings)
  return settings


@register('randaugment', settings=_randaugment_settings, seed=_randaugment_seed)
def randaugment(clip, settings, seed):
  """RandAugment with (num_layers, magnitude) `settings` on scenic's video ops."""
  num_layers, magnitude = settings
  return randaugment_lib.randaugment(clip, num_layers, magnitude, seed=seed)


# Scenic's colour augmentation (DMVR's `color_default_augm`): its ranges.
BRIGHTNESS_DELTA = 32 / 255
SATURATION_RANGE = (0.6, 1.4)
CONTRAST_RANGE = (0.6, 1.4)
HUE_DELTA = 0.2


def colour_draws(probability: float, drop_probability: float, seed):
  """One clip's draws of scenic's colour augmentation, float32 `[6]` (the columns of
  `vivit.colour.augment_colour`): jitter? (1 with `probability`), drop? (1 with
  `drop_probability`), brightness delta +-32/255, saturation and contrast factors
  U(0.6, 1.4), hue delta +-0.2 turns."""
  apply_seed, drop_seed, b_seed, s_seed, c_seed, h_seed = split_seed(seed, 6)
  return tf.stack([
      tf.cast(tf.random.stateless_uniform([], apply_seed) < probability, tf.float32),
      tf.cast(tf.random.stateless_uniform([], drop_seed) < drop_probability, tf.float32),
      tf.random.stateless_uniform([], b_seed, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
      tf.random.stateless_uniform([], s_seed, *SATURATION_RANGE),
      tf.random.stateless_uniform([], c_seed, *CONTRAST_RANGE),
      tf.random.stateless_uniform([], h_seed, -HUE_DELTA, HUE_DELTA)])


def _colour_settings(dataset_config) -> Optional[Tuple[float, float]]:
  if dataset_config.colour_augment > 0 or dataset_config.colour_drop > 0:
    return dataset_config.colour_augment, dataset_config.colour_drop
  return None


@register('colour', settings=_colour_settings, field='colour', seed=_colour_seed)
def colour(clip, settings, seed):
  """The draws (`colour_draws`) with (probability, drop probability) `settings`;
  the device applies them after every pixel op, so the clip is not read here."""
  del clip
  return colour_draws(*settings, seed)
