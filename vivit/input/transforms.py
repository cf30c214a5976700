"""Video transforms on one decoded clip, in TensorFlow for tf.data.

Videos are `[time, height, width, 3]` uint8, or `[time]` JPEG strings (prepared
datasets), of which only the frames a clip uses are decoded. Randomness is
stateless: every random op takes a `seed` tensor of shape [2], so a pipeline is
reproducible from its seeds and can resume mid-epoch.
"""
import math
import numbers
from typing import Optional, Sequence, Tuple

import tensorflow as tf

from vivit.errors import ConfigError


def split_seed(seed, num: int):
  """`num` independent [2] seeds from one."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def gather_frames(video, indices):
  """`video[indices]` as uint8 `[len(indices), height, width, 3]`, decoding only
  those frames when `video` holds JPEG strings."""
  frames = tf.gather(video, indices)
  if video.dtype != tf.string:
    return frames
  return tf.map_fn(lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3), frames,
                   fn_output_signature=tf.uint8)


def clip_indices(num_video_frames, num_frames: int, stride: int, offset):
  """Frame indices `offset + i * stride`, looping short videos: `[num_frames]`."""
  return (offset + tf.range(num_frames) * stride) % num_video_frames


def random_offset(num_video_frames, num_frames: int, stride: int, seed):
  """A uniformly random start so the clip fits (0 when the video is too short)."""
  span = (num_frames - 1) * stride + 1
  high = tf.maximum(num_video_frames - span, 0) + 1
  return tf.random.stateless_uniform([], seed, 0, high, dtype=tf.int32)


def test_offsets(num_video_frames, num_frames: int, stride: int, num_clips: int):
  """Starts of the test clips, `[num_clips]`, as scenic's (DMVR) sampling: one
  clip: the middle, `(N - F * s) // 2`; several: `int(linspace(0, N - F * s))`
  (both at least 0: a short video's clips all start at 0 and loop)."""
  last = tf.maximum(num_video_frames - num_frames * stride, 0)
  if num_clips == 1:
    return (last // 2)[None]
  return tf.cast(tf.linspace(0.0, tf.cast(last, tf.float32), num_clips), tf.int32)


def short_side_size(height_width, size):
  """`[2]` (height, width) with the short side `size` and the long one `long * size //
  short` (at least `size`): scenic's `resize_smallest` of a frame of `height_width`."""
  height, width = height_width[0], height_width[1]
  return tf.stack([tf.maximum(size, height * size // width),
                   tf.maximum(size, width * size // height)])


def resize_short_side(video, size):
  """Resizes so that the short side is `size` and the long one `long * size // short`
  (scenic's `resize_smallest`), bilinearly."""
  return tf.image.resize(video, short_side_size(tf.shape(video)[1:3], size),
                         method='bilinear')


def spatial_crops(video, crop_size: int, num_crops: int):
  """`num_crops` squares as scenic's test: 1, the centre (offsets rounded down); 3,
  both ends and the centre (rounded up) of the long side (width if square).

  Returns `[num_crops, time, crop, crop, 3]`.
  """
  if num_crops not in (1, 3):
    raise ConfigError(f'num_crops must be 1 or 3, got {num_crops}')
  shape = tf.shape(video)
  height, width = shape[1], shape[2]
  if num_crops == 1:
    starts = [((height - crop_size) // 2, (width - crop_size) // 2)]
  else:
    dy, dx = (height - crop_size + 1) // 2, (width - crop_size + 1) // 2
    tall = height > width
    starts = [(tf.where(tall, 0, dy), tf.where(tall, dx, 0)), (dy, dx),
              (tf.where(tall, height - crop_size, dy), tf.where(tall, dx, width - crop_size))]
  return tf.stack([video[:, y:y + crop_size, x:x + crop_size] for y, x in starts])


# Scenic's colour augmentation (DMVR's `color_default_augm`): its ranges. The pipeline
# draws; `vivit.colour.augment_colour` applies the draws on the device.
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


def to_pixels(video):
  """Float pixels in [0, 255] -> uint8, rounded: what crosses to the device, where
  `vivit.models.pixels_to_unit_range` maps it to scenic's [-1, 1]."""
  return tf.cast(tf.round(tf.clip_by_value(video, 0.0, 255.0)), tf.uint8)


# RandAugment (Cubuk et al., 2020) as the ViViT recipes use it through scenic
# (dataset_lib/video_ops.py). Arguments follow the TF Model Garden / TF-TPU autoaugment
# that scenic calls: `magnitude / 10` of each op's range, so the recipes' 15 and 20
# reach past the image recipes' 0..10 (Posterize and Solarize become no-ops there).
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


def randaugment(video, num_layers: int, magnitude: float, seed,
                ops: Sequence[str] = SCENIC_VIDEO_OPS):
  """RandAugment on a clip: `num_layers` ops, each drawn uniformly from `ops` and
  applied at `magnitude` (0..30) to every frame alike.

  `video` is float `[time, height, width, 3]` in [0, 255]; so is the result. The
  default `ops` are scenic's video ones; `RANDAUGMENT_OPS[1:]` is TF-TPU's image set.
  """
  if not isinstance(num_layers, numbers.Integral) or num_layers < 0:
    raise ConfigError(f'RandAugment num_layers must be an integer >= 0, got {num_layers!r}')
  magnitude = _check_magnitude(magnitude)
  unknown = [name for name in ops if name not in RANDAUGMENT_OPS]
  if not ops or unknown:
    raise ConfigError(f'RandAugment ops must be a non-empty selection of {RANDAUGMENT_OPS}, '
                      f'got {tuple(ops)}')
  video = tf.clip_by_value(tf.cast(video, tf.float32), 0.0, 255.0)
  indices = tf.constant([RANDAUGMENT_OPS.index(name) for name in ops], tf.int32)
  for layer_seed in split_seed(seed, num_layers) if num_layers else []:
    choice_seed, op_seed = split_seed(layer_seed, 2)
    choice = tf.random.stateless_uniform([], choice_seed, 0, len(ops), dtype=tf.int32)
    video = apply_op(video, tf.gather(indices, choice), magnitude, op_seed)
  return video


_randaugment = randaugment  # train_view's keyword of the same name hides it


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
               scale_range: Sequence[float], flip: bool, seed,
               randaugment: Optional[Tuple[int, float]] = None):
  """One augmented training clip `[num_frames, crop, crop, 3]`, uint8, in
  scenic's order: random clip, short side to `min_resize`, scale jitter, random
  crop, flip (these four as one bilinear sampling of the crop's window of the
  stored frames, the only pixels decoded: `train_crop_positions`), RandAugment
  (`(num_layers, magnitude)`, on [0, 255]). Colour augmentation, which comes after,
  runs on the device (`colour_draws`)."""
  if randaugment is not None and (not isinstance(randaugment, Sequence)
                                  or isinstance(randaugment, str) or len(randaugment) != 2):
    raise ConfigError(f'randaugment must be None or (num_layers, magnitude), got {randaugment!r}')
  offset_seed, crop_seed, flip_seed, randaugment_seed = split_seed(seed, 4)
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
  y, x = y - origin[0], x - origin[1]
  if randaugment is None:
    return resample_padded(padded, size, y, x, rounded=True)
  return to_pixels(_randaugment(resample_padded(padded, size, y, x), *randaugment,
                                seed=randaugment_seed))


def test_clip_indices(num_video_frames, num_frames: int, stride: int, num_clips: int):
  """The frame indices of the multi-view test's clips: `[num_clips, num_frames]`
  int32 (what `test_views` gathers; `vivit.predict` decodes only these)."""
  offsets = test_offsets(num_video_frames, num_frames, stride, num_clips)
  return tf.stack([clip_indices(num_video_frames, num_frames, stride, offsets[i])
                   for i in range(num_clips)])


def test_views(video, *, num_frames: int, stride: int, min_resize: int, crop_size: int,
               num_clips: int, num_crops: int):
  """Every view of the multi-view test: `[clips * crops, num_frames, crop, crop, 3]`,
  clip-major, uint8."""
  indices = test_clip_indices(tf.shape(video)[0], num_frames, stride, num_clips)
  views = []
  for i in range(num_clips):
    clip = gather_frames(video, indices[i])
    clip = resize_short_side(tf.cast(clip, tf.float32), min_resize)
    views.append(spatial_crops(clip, crop_size, num_crops))
  return to_pixels(tf.concat(views, axis=0))
