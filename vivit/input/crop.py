"""The training view of a clip (`train_view`): random clip, short side resize, scale
jitter, random crop and flip, computed over only the pixels the crop reads, of which
only the JPEG window is decoded.

Two ways to resample the stored frames (`dataset.resample`):
  'scenic'    (default) DMVR's ops as scenic runs them: `resize_smallest` to
              `min_resize`, cast to uint8 (truncation), `scale_jitter_augm`'s resize,
              cast again, crop, flip. Bit-exact with those ops on whole frames: the
              second resize's taps say which rows and columns of the first it reads,
              the first's taps which stored pixels those read, and only those are
              decoded and resampled. When the frames are stored at `min_resize` (the
              usual preparation), the first resize is skipped, as DMVR skips it.
  'one_pass'  the same draws, but resizes and crop composed into one bilinear
              sampling of the stored frames (half-pixel resizes compose to one scale),
              rounded once: no blur from a second pass, no truncation.

Frames are `[time, height, width, 3]` uint8, or `[time]` JPEG strings; sizes and
offsets are (height, width) pairs `[2]` int32.
"""
import math
from typing import NamedTuple, Sequence, Tuple

import tensorflow as tf

from vivit.errors import ConfigError
from vivit.input.sampling import (clip_indices, random_offset, short_side_size,
                                  split_seed, to_pixels)

RESAMPLE = ('scenic', 'one_pass')


def check_resample(resample: str) -> str:
  if resample not in RESAMPLE:
    raise ConfigError(f'dataset.resample must be one of {", ".join(RESAMPLE)}, '
                      f'got {resample!r}')
  return resample


def jittered_size(resized_size, crop_size: int, scale_range: Tuple[float, float], seed):
  """The `[2]` (height, width) scenic's scale jitter (DMVR `scale_jitter_augm`,
  `prob_scale_jitter=1`) resizes frames of `resized_size` `[2]` to: height and width
  scaled by independent factors `U(scale_range)` (the aspect ratio jitters too),
  truncated; here at least `crop_size` (where DMVR's crop would fail)."""
  factors = tf.random.stateless_uniform([2], seed, *scale_range)
  size = tf.cast(tf.cast(resized_size, tf.float32) * factors, tf.int32)
  return tf.maximum(size, crop_size)


def crop_offset(size, crop_size: int, seed):
  """The `[2]` top-left corner of a random `crop_size` square of frames of `size`
  `[2]`: DMVR `crop_image`'s draw (a uniform int32 modulo the room left)."""
  limit = tf.concat([[1], size - crop_size + 1, [1]], axis=0)
  draw = tf.random.stateless_uniform([4], seed, maxval=tf.int32.max, dtype=tf.int32)
  return (draw % limit)[1:3]


class Draws(NamedTuple):
  """A training view's random choices: the jittered `size` `[2]`, the crop's
  `offset` `[2]` in it, and whether it is flipped (bool)."""
  size: tf.Tensor
  offset: tf.Tensor
  flip: tf.Tensor


class Taps(NamedTuple):
  """Bilinear taps along one axis, `[n]` each: the `lower` and `upper` input pixels
  (int32) of each output pixel and the upper's `weight` (float32)."""
  lower: tf.Tensor
  upper: tf.Tensor
  weight: tf.Tensor


def resize_taps(in_size, out_size, first, count) -> Taps:
  """The taps of output pixels `first .. first + count - 1` of a `tf.image.resize`
  (bilinear, half-pixel centres, no antialias) of `in_size` pixels to `out_size`,
  computed as its kernel does: position `(i + 0.5) * (in / out) - 0.5` in float32,
  taps floor and floor + 1 clamped to the line."""
  scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
  positions = (tf.cast(first + tf.range(count), tf.float32) + 0.5) * scale - 0.5
  floor = tf.floor(positions)
  index = tf.cast(floor, tf.int32)
  return Taps(tf.clip_by_value(index, 0, in_size - 1),
              tf.clip_by_value(index + 1, 0, in_size - 1), positions - floor)


def _span(taps: Taps):
  """(first, count) of the input pixels `taps` read."""
  first = tf.reduce_min(taps.lower)
  return first, tf.reduce_max(taps.upper) - first + 1


def _shifted(taps: Taps, origin) -> Taps:
  return Taps(taps.lower - origin, taps.upper - origin, taps.weight)


def _reversed(taps: Taps, flip) -> Taps:
  """`taps` in reverse order when `flip`: resampling with them flips left-right."""
  return Taps(*(tf.cond(flip, lambda t=t: tf.reverse(t, [0]), lambda t=t: t) for t in taps))


def _padded_taps(taps: Taps, multiple: int = 64) -> Taps:
  """`taps` padded to a multiple of `multiple` with taps of pixel 0: the compiled
  resampling sees few shapes; the output pixels they add are never read."""
  count = tf.shape(taps.lower)[0]
  extra = -count % multiple
  return Taps(*(tf.pad(t, [[0, extra]]) for t in taps))


def _interpolate(window, rows: Taps, cols: Taps, zero):
  """`window` `[time, h, w, 3]` at the taps `rows` and `cols`: float32 `[time, n, m,
  3]`, computed as tf.image.resize's kernel does (along x, then y; `_lerp`), each
  line along x once."""
  def along_x(lines):
    left = tf.gather(lines, cols.lower, axis=2)
    return _lerp(left, tf.gather(lines, cols.upper, axis=2), cols.weight[:, None], zero)
  lines = along_x(tf.cast(window, tf.float32))
  return _lerp(tf.gather(lines, rows.lower, axis=1), tf.gather(lines, rows.upper, axis=1),
               rows.weight[:, None, None], zero)


def _lerp(a, b, weight, zero):
  """`a + (b - a) * weight` in float32 with the product rounded on its own, as
  TensorFlow's kernels compute it. XLA's CPU backend fuses a multiply and an add
  into one FMA (one rounding), and the truncation that follows turns that last bit
  into a level now and then. An OR of the product's bits with `zero`, an int32 0
  that XLA only sees at run time, keeps them apart (XLA folds away a float64
  product, and the select of `multiply_no_nan` in larger kernels)."""
  product = tf.bitcast(tf.bitwise.bitwise_or(tf.bitcast((b - a) * weight, tf.int32), zero),
                       tf.float32)
  return a + product


# Each pass is one XLA computation: the interpolation along x of the window's lines,
# then along y, and the cast. `tf.cast` of float to uint8 truncates, as DMVR's casts
# after each resize do. Two passes are two computations: fused into one, XLA would
# recompute the first pass's pixels for every tap of the second.
@tf.function(jit_compile=True)
def _resize_truncated(window, rows: Taps, cols: Taps, zero):
  return tf.cast(_interpolate(window, rows, cols, zero), tf.uint8)


@tf.function(jit_compile=True)
def _resize_rounded(window, rows: Taps, cols: Taps, zero, rounded: bool):
  video = _interpolate(window, rows, cols, zero)
  return to_pixels(video) if rounded else video


def _run_time_zero():
  """`_lerp`'s run-time zero."""
  return tf.zeros([], tf.int32)


def padded_size(size):
  """`size` rounded up to a power of two (at least 16): the few shapes the compiled
  resampling sees (each is compiled once per process, in about a second)."""
  exponent = tf.math.ceil(tf.math.log(tf.cast(size, tf.float32)) / math.log(2.0) - 1e-4)
  return tf.maximum(tf.bitwise.left_shift(1, tf.cast(exponent, tf.int32)), 16)


def pad_window(window):
  """`window` `[time, h, w, 3]` zero-padded at the bottom and right to `padded_size`."""
  shape = tf.shape(window)
  extra = padded_size(shape[1:3]) - shape[1:3]
  return tf.pad(window, [[0, 0], [0, extra[0]], [0, extra[1]], [0, 0]])


# Columns decoded either side of a window (and left in, unsampled): libjpeg's fancy
# chroma upsampling needs its neighbours to give a window's edge columns the pixels of
# the whole frame (without them, edge pixels can be tens of levels off).
JPEG_MARGIN = 2


def decode_window(video, indices, top, size):
  """The frames `indices` of `video` over the window (`top` `[2]`, `size` `[2]`) and
  at most `JPEG_MARGIN` columns either side, zero-padded (`pad_window`): (uint8
  `[len(indices), H, W, 3]`, the top-left `[2]` and size `[2]` of the pixels in it).
  JPEG frames are decoded there only, pixel for pixel as whole frames, and padded
  one by one: one copy of the clip fewer than padding it whole."""
  if video.dtype != tf.string:
    window = tf.gather(video, indices)[:, top[0]:top[0] + size[0], top[1]:top[1] + size[1]]
    return pad_window(window), top, size
  width = tf.io.extract_jpeg_shape(video[0])[1]
  left = tf.maximum(top[1] - JPEG_MARGIN, 0)
  right = tf.minimum(top[1] + size[1] + JPEG_MARGIN, width)
  origin, size = tf.stack([top[0], left]), tf.stack([size[0], right - left])
  extra = padded_size(size) - size

  def decode(index):
    frame = tf.io.decode_and_crop_jpeg(video[index], tf.concat([origin, size], 0),
                                       channels=3)
    return tf.pad(frame, [[0, extra[0]], [0, extra[1]], [0, 0]])
  return tf.map_fn(decode, indices, fn_output_signature=tf.uint8), origin, size


def stored_size(video):
  """(height, width) `[2]` int32 of the frames, read from the first JPEG's header
  for JPEG strings."""
  if video.dtype != tf.string:
    return tf.shape(video)[1:3]
  return tf.io.extract_jpeg_shape(video[0])[:2]


def _decoded(video, indices, rows: Taps, cols: Taps):
  """The stored pixels `rows` and `cols` read, decoded and padded, and the taps
  shifted into that window."""
  (top, height), (left, width) = _span(rows), _span(cols)
  padded, origin, _ = decode_window(video, indices, tf.stack([top, left]),
                                    tf.stack([height, width]))
  return padded, _shifted(rows, origin[0]), _shifted(cols, origin[1])


def scenic_view(video, indices, draws: Draws, *, min_resize: int, crop_size: int):
  """Frames `indices` of `video` resized, jittered, cropped and flipped as DMVR's ops
  (`resize_smallest`, `scale_jitter_augm`, `crop_image`, `random_flip_left_right`)
  with `draws`: uint8 `[len(indices), crop, crop, 3]`."""
  stored = stored_size(video)
  resized = short_side_size(stored, min_resize)
  rows = resize_taps(resized[0], draws.size[0], draws.offset[0], crop_size)
  cols = _reversed(resize_taps(resized[1], draws.size[1], draws.offset[1], crop_size),
                   draws.flip)

  def jitter_only():  # resize_smallest does nothing to frames stored at min_resize
    return _resize_truncated(*_decoded(video, indices, rows, cols), _run_time_zero())

  def both():
    (row, height), (col, width) = _span(rows), _span(cols)
    padded, rows1, cols1 = _decoded(video, indices,
                                    resize_taps(stored[0], resized[0], row, height),
                                    resize_taps(stored[1], resized[1], col, width))
    first = _resize_truncated(padded, _padded_taps(rows1), _padded_taps(cols1),
                              _run_time_zero())
    return _resize_truncated(first, _shifted(rows, row), _shifted(cols, col),
                             _run_time_zero())
  return tf.cond(tf.reduce_all(tf.equal(stored, resized)), jitter_only, both)


def one_pass_view(video, indices, draws: Draws, *, crop_size: int, rounded: bool = True):
  """`scenic_view`'s draws as one bilinear sampling of the stored frames, rounded to
  uint8, or with `rounded` False float32 in [0, 255]."""
  stored = stored_size(video)
  rows = resize_taps(stored[0], draws.size[0], draws.offset[0], crop_size)
  cols = _reversed(resize_taps(stored[1], draws.size[1], draws.offset[1], crop_size),
                   draws.flip)
  return _resize_rounded(*_decoded(video, indices, rows, cols), _run_time_zero(), rounded)


def train_draws(video, *, num_frames: int, stride: int, min_resize: int, crop_size: int,
                scale_range: Sequence[float], flip: bool, seed):
  """The random choices of one training view of `video`: its frame indices
  `[num_frames]` and `Draws`. `seed` is the view seed
  (`vivit.input.augment.view_seed`); of its four splits the first three draw the
  clip's start, crop and flip, the fourth RandAugment's (`augment`)."""
  offset_seed, crop_seed, flip_seed, _ = split_seed(seed, 4)
  count = tf.shape(video)[0]
  indices = clip_indices(count, num_frames, stride,
                         random_offset(count, num_frames, stride, offset_seed))
  jitter_seed, crop_seed = split_seed(crop_seed, 2)
  size = jittered_size(short_side_size(stored_size(video), min_resize), crop_size,
                       tuple(scale_range), jitter_seed)
  flipped = tf.logical_and(flip, tf.random.stateless_uniform([], flip_seed) < 0.5)
  return indices, Draws(size, crop_offset(size, crop_size, crop_seed), flipped)


def train_view(video, *, num_frames: int, stride: int, min_resize: int, crop_size: int,
               scale_range: Sequence[float], flip: bool, seed, resample: str = 'scenic',
               rounded: bool = True):
  """One training clip `[num_frames, crop, crop, 3]` in scenic's order: random clip,
  short side to `min_resize`, scale jitter, random crop, flip (`train_draws`),
  resampled as `resample` says (`scenic_view` or `one_pass_view`). Returns uint8
  pixels, or with `rounded` False float32 in [0, 255] for the pixel ops that follow
  (`augment`): for 'scenic', the same truncated pixels, as DMVR hands them on."""
  indices, draws = train_draws(video, num_frames=num_frames, stride=stride,
                               min_resize=min_resize, crop_size=crop_size,
                               scale_range=scale_range, flip=flip, seed=seed)
  if check_resample(resample) == 'one_pass':
    return one_pass_view(video, indices, draws, crop_size=crop_size, rounded=rounded)
  view = scenic_view(video, indices, draws, min_resize=min_resize, crop_size=crop_size)
  return view if rounded else tf.cast(view, tf.float32)
