"""`synthetic_motion`: an embedded video dataset whose labels need time.

Each clip shows one textured object of random colour, shape and size over a
cluttered, noisy background. The label is what the object *does* over time, and the
ten classes form five time-reversal pairs (right/left, down/up, down-right/up-left,
grow/shrink, fade in/fade out): a clip played backwards is a clip of its partner,
so no single frame, and no set of frames without their order, tells the class. Never flip it horizontally:
that swaps left and right.

Generated locally in seconds, deterministically from a seed:
`tfds.builder('synthetic_motion', data_dir=...).download_and_prepare()` (the data
pipeline does this on first use).
"""
from typing import Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds

# Five time-reversal pairs: each class played backwards is its partner.
CLASS_NAMES = ('move_right', 'move_left', 'move_down', 'move_up', 'move_down_right',
               'move_up_left', 'grow', 'shrink', 'appear', 'vanish')
NUM_FRAMES = 16
SIZE = 32
# Examples per split; `tiny` is for tests.
SPLIT_SIZES = {'default': {'train': 4000, 'validation': 300, 'test': 300},
               'tiny': {'train': 64, 'validation': 24, 'test': 20}}
SPLIT_SEEDS = {'train': 0, 'validation': 1, 'test': 2}
SEED = 1234
NOISE_STD = 0.02  # per-pixel, per-frame sensor noise (fraction of full scale)


def _background(rng):
  """Flat colour with a weak gradient and a few static clutter dots:
  `[SIZE, SIZE, 3]` in [0, 1]."""
  ys, xs = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  slope = rng.uniform(-0.15, 0.15, (2, 3))
  bg = rng.uniform(0.15, 0.85, 3) + ys[..., None] * slope[0] + xs[..., None] * slope[1]
  for _ in range(rng.integers(0, 3)):
    cy, cx = rng.uniform(0, SIZE, 2)
    dot = ((ys * SIZE - cy) ** 2 + (xs * SIZE - cx) ** 2) < rng.uniform(1.5, 2.5) ** 2
    bg[dot] = rng.uniform(0, 1, 3)
  return bg


def _trajectory(label, rng):
  """Per-frame centre `(y, x)` `[T, 2]`, radius `[T]` and opacity `[T]` in [0, 1]."""
  t = np.arange(NUM_FRAMES, dtype=np.float64)
  radius = np.full(NUM_FRAMES, rng.uniform(5, 8))
  opacity = np.ones(NUM_FRAMES)
  name = CLASS_NAMES[label]
  centre = np.tile(rng.uniform(10, SIZE - 10, 2), (NUM_FRAMES, 1))
  if name.startswith('move'):  # right or left, down or up, down-right or up-left
    radius = np.full(NUM_FRAMES, rng.uniform(4, 5.5))
    direction = ((0, 1), (1, 0), (0.7, 0.7))[label // 2]
    travel = rng.uniform(1.0, 1.3) * (NUM_FRAMES - 1)
    # Start anywhere that keeps the whole path inside the frame.
    start = rng.uniform(np.full(2, radius[0]),
                        SIZE - radius[0] - travel * np.array(direction))
    centre = start + np.outer(t / (NUM_FRAMES - 1) * travel, direction)
  elif name in ('grow', 'shrink'):
    radius = np.linspace(rng.uniform(2.5, 4), rng.uniform(9, 10), NUM_FRAMES)
  else:  # appear: fades in over a random window; vanish: the reverse
    start = rng.uniform(0, 5)
    opacity = np.clip((t - start) / rng.uniform(6, 10), 0, 1)
  if label % 2:  # the partner of the class before, played backwards
    centre, radius, opacity = centre[::-1], radius[::-1], opacity[::-1]
  return centre, radius, opacity


def render_clip(label: int, rng: np.random.Generator) -> np.ndarray:
  """One clip `[NUM_FRAMES, SIZE, SIZE, 3]` uint8 of class `label`."""
  return render_clip_and_object(label, rng)[0]


def render_clip_and_object(label: int, rng: np.random.Generator
                           ) -> Tuple[np.ndarray, np.ndarray]:
  """`render_clip`'s clip (the same for the same `rng` state) and where its object
  is: `[NUM_FRAMES, SIZE, SIZE]`, True on the pixels the object colours at all."""
  centre, radius, opacity = _trajectory(label, rng)
  ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  dy = ys[None] - centre[:, 0, None, None]
  dx = xs[None] - centre[:, 1, None, None]
  r = radius[:, None, None]
  if rng.uniform() < 0.5:
    inside = dy ** 2 + dx ** 2 < r ** 2                      # disc
  else:
    inside = np.maximum(np.abs(dy), np.abs(dx)) < r * 0.85   # square
  colour = rng.uniform(0, 1, 3)
  stripes = 0.5 + 0.5 * np.sin(rng.uniform(0.8, 2.0) * (dx * np.cos(rng.uniform(0, np.pi))
                                                          + dy))
  texture = colour * (0.6 + 0.4 * stripes[..., None])
  alpha = (inside * opacity[:, None, None])[..., None]
  frames = alpha * texture + (1 - alpha) * _background(rng)[None]
  frames = frames + rng.normal(0, NOISE_STD, frames.shape)
  return np.clip(frames * 255, 0, 255).astype(np.uint8), alpha[..., 0] > 0


class SyntheticMotion(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of `synthetic_motion` (10 motion classes, 16x32x32 clips).

  Configs: `synthetic_motion` (4000 / 300 / 300 clips) and `synthetic_motion/tiny`.
  """

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': 'ArrayRecord files (read by index), same examples.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in SPLIT_SIZES]

  def __init__(self, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(shape=(NUM_FRAMES, SIZE, SIZE, 3),
                                          dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('video', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, size)
            for split, size in SPLIT_SIZES[self.builder_config.name].items()}

  def _generate_examples(self, split: str, size: int):
    for index, (clip, _, label) in enumerate(examples(split, size)):
      yield index, {'video': clip, 'label': label}


def examples(split: str, count: int) -> Iterator[Tuple[np.ndarray, np.ndarray, int]]:
  """The first `count` examples of `split` as the builder generates them (classes in
  turn, so balanced): (clip, where its object is, label), as `render_clip_and_object`
  gives them."""
  rng = np.random.default_rng([SEED, SPLIT_SEEDS[split]])
  for index in range(count):
    label = index % len(CLASS_NAMES)
    clip, where = render_clip_and_object(label, rng)
    yield clip, where, label

