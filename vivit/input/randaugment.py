"""RandAugment (Cubuk et al., 2020) on clips, as the ViViT recipes use it through
scenic (dataset_lib/video_ops.py): one op per layer, drawn per clip and applied
alike to every frame, in TensorFlow for tf.data. The training pipeline runs it as
the `randaugment` op of `vivit.input.augment`.

Clips are float32 `[time, height, width, 3]` in [0, 255]. Randomness is stateless:
`seed` is a [2] tensor.
"""
import math
import numbers
from typing import Sequence

import tensorflow as tf

from vivit.errors import ConfigError
from vivit.input.sampling import split_seed

# Arguments follow the TF Model Garden / TF-TPU autoaugment that scenic calls:
# `magnitude / 10` of each op's range, so the recipes' 15 and 20 reach past the image
# recipes' 0..10 (Posterize and Solarize become no-ops there).
RANDAUGMENT_OPS = ('Identity', 'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize',
                   'Solarize', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX',
                   'ShearY', 'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd')
# scenic's video choice: no geometric ops, and one draw in twelve leaves the clip as is.
SCENIC_VIDEO_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Posterize', 'Solarize', 'Color',
                    'Contrast', 'Brightness', 'Sharpness', 'Cutout', 'SolarizeAdd', 'Identity')
MAX_MAGNITUDE = 30.0


def _check_magnitude(magnitude) -> float:
  magnitude = float(magnitude)
  if not 0.0 <= magnitude <= MAX_MAGNITUDE:
    raise ConfigError(f'RandAugment magnitude must be in [0, {MAX_MAGNITUDE:g}], got {magnitude}')
  return magnitude


def _blend(degenerate, video, factor: float):
  """PIL ImageEnhance: `factor` 0 gives `degenerate`, 1 `video`, above 1 extrapolates."""
  return tf.clip_by_value(degenerate + factor * (video - degenerate), 0.0, 255.0)


def _autocontrast(video):
  """Each channel stretched to [0, 255] from its min and max over the whole clip."""
  lo = tf.reduce_min(video, axis=[0, 1, 2])
  hi = tf.reduce_max(video, axis=[0, 1, 2])
  stretched = tf.clip_by_value((video - lo) * tf.math.divide_no_nan(255.0, hi - lo), 0.0, 255.0)
  return tf.where(hi > lo, stretched, video)


def _equalize(video):
  """PIL Equalize per channel, from the histogram of the whole clip."""
  levels = tf.cast(tf.clip_by_value(tf.floor(video), 0.0, 255.0), tf.int32)
  bins = levels + tf.range(3) * 256
  hist = tf.reshape(tf.math.bincount(tf.reshape(bins, [-1]), minlength=768, maxlength=768),
                    [3, 256])
  top_count = tf.gather(hist, tf.reduce_max(levels, axis=[0, 1, 2]), batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - top_count) // 255
  safe_step = tf.maximum(step, 1)[:, None]
  lut = (tf.cumsum(hist, axis=1, exclusive=True) + safe_step // 2) // safe_step
  lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.float32)
  # PIL leaves a channel alone when all but its brightest level hold under 255 pixels.
  return tf.where(step > 0, tf.gather(tf.reshape(lut, [-1]), bins), video)


def _sharpness(video, factor: float):
  """PIL Sharpness: blend with the SMOOTH-filtered frames (border pixels kept)."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(video, kernel, [1, 1, 1, 1], 'VALID')
  border = [[0, 0], [1, 1], [1, 1], [0, 0]]
  interior = tf.pad(tf.ones_like(smooth), border) > 0
  return _blend(tf.where(interior, tf.pad(smooth, border), video), video, factor)


def _posterize(video, bits: int):
  """Keeps the top `bits` bits of each (truncated) 8-bit value."""
  shift = min(max(8 - bits, 0), 8)
  if shift == 0:
    return video
  return tf.floor(video / 2.0**shift) * 2.0**shift


def _cutout(video, pad_size: int, seed):
  """Zeroes one `2 * pad_size` square (clipped to the frame) centred uniformly at random,
  the same square in every frame."""
  shape = tf.shape(video)
  height, width = shape[1], shape[2]
  y_seed, x_seed = split_seed(seed, 2)
  cy = tf.random.stateless_uniform([], y_seed, 0, height, dtype=tf.int32)
  cx = tf.random.stateless_uniform([], x_seed, 0, width, dtype=tf.int32)
  rows, cols = tf.range(height), tf.range(width)
  inside = (((rows >= cy - pad_size) & (rows < cy + pad_size))[:, None]
            & ((cols >= cx - pad_size) & (cols < cx + pad_size))[None, :])
  return tf.where(inside[None, :, :, None], 0.0, video)


def _warp(video, transform):
  """Every frame through one projective map (the 8 numbers of `ImageProjectiveTransformV3`,
  output pixel -> input pixel): nearest pixel, grey 128 where nothing maps."""
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=video, transforms=tf.reshape(tf.stack(transform), [1, 8]),
      output_shape=tf.shape(video)[1:3], fill_value=128.0, interpolation='NEAREST',
      fill_mode='CONSTANT')


def _rotate(video, degrees):
  """Rotation by `degrees` about the frame centre."""
  shape = tf.cast(tf.shape(video), tf.float32)
  cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
  radians = degrees * (math.pi / 180)
  cos, sin = tf.cos(radians), tf.sin(radians)
  return _warp(video, [cos, -sin, cx - cos * cx + sin * cy,
                       sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def _op_branches(video, magnitude: float, seed):
  """Op name -> function of no arguments applying it to `video` at `magnitude`."""
  level = magnitude / 10.0
  enhance = level * 1.8 + 0.1
  sign_seed, cutout_seed = split_seed(seed, 2)
  # Geometric ops go either way with equal odds.
  sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
  shear, pixels = sign * level * 0.3, sign * level * 100.0
  return {
      'Identity': lambda: video,
      'AutoContrast': lambda: _autocontrast(video),
      'Equalize': lambda: _equalize(video),
      'Invert': lambda: 255.0 - video,
      'Rotate': lambda: _rotate(video, sign * level * 30.0),
      'Posterize': lambda: _posterize(video, int(level * 4)),
      'Solarize': lambda: tf.where(video < float(int(level * 256)), video, 255.0 - video),
      'Color': lambda: _blend(tf.image.rgb_to_grayscale(video), video, enhance),
      'Contrast': lambda: _blend(tf.reduce_mean(tf.image.rgb_to_grayscale(video)), video,
                                 enhance),
      'Brightness': lambda: _blend(0.0, video, enhance),
      'Sharpness': lambda: _sharpness(video, enhance),
      'ShearX': lambda: _warp(video, [1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
      'ShearY': lambda: _warp(video, [1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0]),
      'TranslateX': lambda: _warp(video, [1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]),
      'TranslateY': lambda: _warp(video, [1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]),
      'Cutout': lambda: _cutout(video, int(level * 40), cutout_seed),
      'SolarizeAdd': lambda: tf.where(
          video < 128.0, tf.minimum(video + float(int(level * 110)), 255.0), video),
  }


def apply_op(video, op, magnitude: float, seed):
  """One RandAugment op at `magnitude` (0..30), the same on every frame.

  `video` is float `[time, height, width, 3]` in [0, 255]; so is the result. `op` is
  a name from `RANDAUGMENT_OPS` or an int32 index into it (a tensor is fine). `seed`
  draws the sign of geometric ops and the Cutout square. Ops that need statistics
  (AutoContrast, Equalize, Contrast) take them over the whole clip.
  """
  magnitude = _check_magnitude(magnitude)
  video = tf.convert_to_tensor(video, tf.float32)
  branches = _op_branches(video, magnitude, seed)
  if isinstance(op, str):
    if op not in branches:
      raise ConfigError(f'unknown RandAugment op {op!r}; expected one of {RANDAUGMENT_OPS}')
    return branches[op]()
  out = tf.switch_case(tf.convert_to_tensor(op, tf.int32),
                       [branches[name] for name in RANDAUGMENT_OPS])
  return tf.ensure_shape(out, video.shape)


def check_arguments(num_layers: int, magnitude: float,
                    ops: Sequence[str] = SCENIC_VIDEO_OPS) -> float:
  """`magnitude` as a float, or a ConfigError naming what `randaugment` refuses."""
  if not isinstance(num_layers, numbers.Integral) or num_layers < 0:
    raise ConfigError(f'RandAugment num_layers must be an integer >= 0, got {num_layers!r}')
  magnitude = _check_magnitude(magnitude)
  unknown = [name for name in ops if name not in RANDAUGMENT_OPS]
  if not ops or unknown:
    raise ConfigError(f'RandAugment ops must be a non-empty selection of {RANDAUGMENT_OPS}, '
                      f'got {tuple(ops)}')
  return magnitude


def randaugment(video, num_layers: int, magnitude: float, seed,
                ops: Sequence[str] = SCENIC_VIDEO_OPS):
  """RandAugment on a clip: `num_layers` ops, each drawn uniformly from `ops` and
  applied at `magnitude` (0..30) to every frame alike.

  `video` is float `[time, height, width, 3]` in [0, 255]; so is the result. The
  default `ops` are scenic's video ones; `RANDAUGMENT_OPS[1:]` is TF-TPU's image set.
  """
  magnitude = check_arguments(num_layers, magnitude, ops)
  video = tf.clip_by_value(tf.cast(video, tf.float32), 0.0, 255.0)
  indices = tf.constant([RANDAUGMENT_OPS.index(name) for name in ops], tf.int32)
  for layer_seed in split_seed(seed, num_layers) if num_layers else []:
    choice_seed, op_seed = split_seed(layer_seed, 2)
    choice = tf.random.stateless_uniform([], choice_seed, 0, len(ops), dtype=tf.int32)
    video = apply_op(video, tf.gather(indices, choice), magnitude, op_seed)
  return video
