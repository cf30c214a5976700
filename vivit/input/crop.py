"""The fused decode-crop of a training clip: random clip, short side resize, scale
jitter, random crop and flip as one bilinear sampling of the stored frames, of which
only the crop's window is decoded (`train_view`).

Frames are `[time, height, width, 3]` uint8, or `[time]` JPEG strings; sizes and
positions are (height, width) pairs `[2]` in stored-frame pixels.
"""
import math
from typing import Sequence, Tuple

import tensorflow as tf

from vivit.input.sampling import (clip_indices, random_offset, short_side_size,
                                  split_seed, to_pixels)


def jittered_size(stored_size, min_resize: int, crop_size: int,
                  scale_range: Tuple[float, float], seed):
  """The `[2]` (height, width) a stored frame of `stored_size` `[2]` reaches through
  `resize_short_side(min_resize)` then scenic's scale jitter (`scale_jitter_augm`):
  height and width scaled by independent factors `U(scale_range)` (so the aspect
  ratio jitters too), truncated, each at least `crop_size`."""
  resized = short_side_size(stored_size, min_resize)
  factors = tf.random.stateless_uniform([2], seed, *scale_range)
  size = tf.cast(tf.cast(resized, tf.float32) * factors, tf.int32)
  return tf.maximum(size, crop_size)


def crop_offset(size, crop_size: int, seed):
  """The `[2]` top-left corner of a random `crop_size` square of frames of `size`
  `[2]`: the draw `tf.image.stateless_random_crop(seed)` makes on a clip."""
  limit = tf.concat([[1], size - crop_size + 1, [1]], axis=0)
  draw = tf.random.stateless_uniform([4], seed, maxval=tf.int32.max, dtype=tf.int32)
  return (draw % limit)[1:3]


def crop_positions(stored_size, size, offset, crop_size: int):
  """Where, in stored-frame pixels, the rows and columns of a `crop_size` crop at
  `offset` of the frame resized to `size` sample: `[crop]` y and `[crop]` x,
  float32. Bilinear resizes with half-pixel centres compose to one scale, `stored /
  size`, however many there are."""
  scale = tf.cast(stored_size, tf.float32) / tf.cast(size, tf.float32)
  steps = tf.range(crop_size, dtype=tf.float32)
  offset = tf.cast(offset, tf.float32)
  return ((offset[0] + steps + 0.5) * scale[0] - 0.5,
          (offset[1] + steps + 0.5) * scale[1] - 0.5)


def flip_positions(x, seed):
  """`x` reversed with probability 1/2: sampling that way flips the clip
  horizontally."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(x, axis=[0]), lambda: x)


def crop_window(stored_size, y, x):
  """The stored pixels that samples at `y` and `x` interpolate from: (top-left
  `[2]`, size `[2]`) int32, inside the frame."""
  first = tf.stack([tf.reduce_min(y), tf.reduce_min(x)])
  last = tf.stack([tf.reduce_max(y), tf.reduce_max(x)])
  top = tf.clip_by_value(tf.cast(tf.floor(first), tf.int32), 0, stored_size - 1)
  bottom = tf.clip_by_value(tf.cast(tf.math.ceil(last), tf.int32), 0, stored_size - 1)
  return top, bottom - top + 1


def bilinear_taps(positions, size):
  """Bilinear taps of `[n]` float positions in a line of `size` pixels: lower and
  upper `[n]` int32 indices and the upper's `[n]` weight; outside the edge pixels'
  centres both are the edge, as in tf.image.resize."""
  lower = tf.floor(positions)
  index = tf.cast(lower, tf.int32)
  return (tf.clip_by_value(index, 0, size - 1), tf.clip_by_value(index + 1, 0, size - 1),
          positions - lower)


def _interpolate(window, rows, cols):
  """`window` `[time, h, w, 3]` at the taps `rows` and `cols` (`bilinear_taps`):
  float32 `[time, n, m, 3]`."""
  (y_low, y_high, y_weight), (x_low, x_high, x_weight) = rows, cols
  x_weight = x_weight[:, None]

  def along_x(lines):
    left = tf.gather(lines, x_low, axis=2)
    return left + (tf.gather(lines, x_high, axis=2) - left) * x_weight
  window = tf.cast(window, tf.float32)
  top = along_x(tf.gather(window, y_low, axis=1))
  bottom = along_x(tf.gather(window, y_high, axis=1))
  return top + (bottom - top) * y_weight[:, None, None]


# The gathers, the interpolation and the rounding fuse into a pass or two.
@tf.function(jit_compile=True)
def _resample(window, rows, cols, rounded: bool):
  video = _interpolate(window, rows, cols)
  return to_pixels(video) if rounded else video


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


def resample_padded(padded, size, y, x, rounded: bool = False):
  """`resample` of a window of `size` `[2]` held zero-padded (`pad_window`) in
  `padded`."""
  return _resample(padded, bilinear_taps(tf.cast(y, tf.float32), size[0]),
                   bilinear_taps(tf.cast(x, tf.float32), size[1]), rounded)


def resample(window, y, x, rounded: bool = False):
  """`window` `[time, h, w, 3]` (uint8 or float) sampled bilinearly at rows `y`
  `[n]` and columns `x` `[m]` (window pixels): float32 `[time, n, m, 3]`, or uint8
  pixels when `rounded` (`to_pixels`)."""
  return resample_padded(pad_window(window), tf.shape(window)[1:3], y, x, rounded)


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


def train_crop_positions(stored_size, *, min_resize: int, crop_size: int,
                         scale_range: Tuple[float, float], seed):
  """The stored-frame rows `[crop]` and columns `[crop]` (float32) that
  short side to `min_resize`, scale jitter and a random crop sample (`jittered_size`,
  `crop_offset`), with their draws."""
  jitter_seed, crop_seed = split_seed(seed, 2)
  size = jittered_size(stored_size, min_resize, crop_size, scale_range, jitter_seed)
  return crop_positions(stored_size, size, crop_offset(size, crop_size, crop_seed),
                        crop_size)


def train_view(video, *, num_frames: int, stride: int, min_resize: int, crop_size: int,
               scale_range: Sequence[float], flip: bool, seed, rounded: bool = True):
  """One training clip `[num_frames, crop, crop, 3]` in scenic's order: random clip,
  short side to `min_resize`, scale jitter, random crop, flip (these four as one
  bilinear sampling of the crop's window of the stored frames, the only pixels
  decoded: `train_crop_positions`).

  `seed` is the view seed (`vivit.input.augment.view_seed`); of its four splits the
  first three draw the clip's start, crop and flip, the fourth RandAugment's
  (`augment`). Returns uint8 pixels, rounded in the same compiled pass, or with
  `rounded` False float32 in [0, 255] for the pixel ops that follow (`augment`).
  """
  offset_seed, crop_seed, flip_seed, _ = split_seed(seed, 4)
  count = tf.shape(video)[0]
  indices = clip_indices(count, num_frames, stride,
                         random_offset(count, num_frames, stride, offset_seed))
  stored = stored_size(video)
  y, x = train_crop_positions(stored, min_resize=min_resize, crop_size=crop_size,
                              scale_range=tuple(scale_range), seed=crop_seed)
  if flip:
    x = flip_positions(x, flip_seed)
  padded, origin, size = decode_window(video, indices, *crop_window(stored, y, x))
  origin = tf.cast(origin, tf.float32)
  return resample_padded(padded, size, y - origin[0], x - origin[1], rounded=rounded)
