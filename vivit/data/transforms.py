"""Video transforms on one decoded clip, in TensorFlow for tf.data.

Videos are `[time, height, width, 3]` uint8, or `[time]` JPEG strings (prepared
datasets), of which only the frames a clip uses are decoded. Randomness is
stateless: every random op takes a `seed` tensor of shape [2], so a pipeline is
reproducible from its seeds and can resume mid-epoch.
"""
from typing import Sequence, Tuple

import tensorflow as tf


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
  """`num_clips` evenly spaced starts covering the video: `[num_clips]`."""
  span = (num_frames - 1) * stride + 1
  last = tf.cast(tf.maximum(num_video_frames - span, 0), tf.float32)
  if num_clips == 1:
    return tf.cast(tf.round(last / 2), tf.int32)[None]
  return tf.cast(tf.round(tf.linspace(0.0, last, num_clips)), tf.int32)


def resize_short_side(video, size):
  """Resizes so that min(height, width) == size, keeping the aspect ratio."""
  shape = tf.shape(video)
  height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
  scale = tf.cast(size, tf.float32) / tf.minimum(height, width)
  new = tf.cast(tf.round(tf.stack([height * scale, width * scale])), tf.int32)
  return tf.image.resize(video, new, method='bilinear', antialias=True)


def scale_jitter_crop(video, min_resize: int, crop_size: int,
                      scale_range: Tuple[float, float], seed):
  """Resize the short side to `min_resize * U(scale_range)` (at least `crop_size`),
  then take a random `crop_size` square."""
  scale_seed, crop_seed = split_seed(seed, 2)
  scale = tf.random.stateless_uniform([], scale_seed, *scale_range)
  size = tf.maximum(tf.cast(tf.round(min_resize * scale), tf.int32), crop_size)
  video = resize_short_side(video, size)
  return tf.image.stateless_random_crop(
      video, tf.stack([tf.shape(video)[0], crop_size, crop_size, 3]), crop_seed)


def spatial_crops(video, crop_size: int, num_crops: int):
  """`num_crops` (1 or 3) squares: centre, or start/centre/end of the long side.

  Returns `[num_crops, time, crop, crop, 3]`.
  """
  if num_crops not in (1, 3):
    raise ValueError(f'num_crops must be 1 or 3, got {num_crops}')
  shape = tf.shape(video)
  height, width = shape[1], shape[2]
  dy, dx = (height - crop_size) // 2, (width - crop_size) // 2
  if num_crops == 1:
    starts = [(dy, dx)]
  else:
    tall = height > width
    starts = [(tf.where(tall, 0, dy), tf.where(tall, dx, 0)), (dy, dx),
              (tf.where(tall, height - crop_size, dy), tf.where(tall, dx, width - crop_size))]
  return tf.stack([video[:, y:y + crop_size, x:x + crop_size] for y, x in starts])


def random_flip(video, seed):
  """Horizontal flip of the whole clip with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(video, axis=[2]), lambda: video)


def colour_jitter(video, strength: float, seed):
  """Brightness, contrast and saturation jitter, the same for every frame.

  `video` is float in [0, 1]; `strength` is the maximum relative change.
  """
  if strength <= 0:
    return video
  b_seed, c_seed, s_seed = split_seed(seed, 3)
  brightness = tf.random.stateless_uniform([], b_seed, -strength, strength)
  contrast = tf.random.stateless_uniform([], c_seed, 1 - strength, 1 + strength)
  saturation = tf.random.stateless_uniform([], s_seed, 1 - strength, 1 + strength)
  video = video + brightness
  mean = tf.reduce_mean(video, axis=[1, 2, 3], keepdims=True)
  video = (video - mean) * contrast + mean
  grey = tf.reduce_mean(video, axis=-1, keepdims=True)
  video = (video - grey) * saturation + grey
  return tf.clip_by_value(video, 0.0, 1.0)


def zero_centre(video):
  """uint8 or [0, 255] pixels -> float32 in [-1, 1] (scenic's convention)."""
  return tf.cast(video, tf.float32) / 127.5 - 1.0


def train_view(video, *, num_frames: int, stride: int, min_resize: int, crop_size: int,
               scale_range: Sequence[float], flip: bool, colour_strength: float, seed):
  """One augmented training clip `[num_frames, crop, crop, 3]` in [-1, 1]."""
  offset_seed, crop_seed, flip_seed, colour_seed = split_seed(seed, 4)
  count = tf.shape(video)[0]
  video = gather_frames(video, clip_indices(
      count, num_frames, stride, random_offset(count, num_frames, stride, offset_seed)))
  video = scale_jitter_crop(tf.cast(video, tf.float32), min_resize, crop_size,
                            tuple(scale_range), crop_seed)
  if flip:
    video = random_flip(video, flip_seed)
  video = colour_jitter(video / 255.0, colour_strength, colour_seed)
  return video * 2.0 - 1.0


def test_views(video, *, num_frames: int, stride: int, min_resize: int, crop_size: int,
               num_clips: int, num_crops: int):
  """Every view of the multi-view test: `[clips * crops, num_frames, crop, crop, 3]`,
  clip-major, in [-1, 1]."""
  count = tf.shape(video)[0]
  views = []
  offsets = test_offsets(count, num_frames, stride, num_clips)
  for i in range(num_clips):
    clip = gather_frames(video, clip_indices(count, num_frames, stride, offsets[i]))
    clip = resize_short_side(tf.cast(clip, tf.float32), min_resize)
    views.append(spatial_crops(clip, crop_size, num_crops))
  return zero_centre(tf.concat(views, axis=0))
