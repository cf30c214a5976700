"""Which frames and pixels a clip holds: stateless seeds, clip indices, and the
evaluation's views, in TensorFlow for tf.data.

Videos are `[time, height, width, 3]` uint8, or `[time]` JPEG strings (prepared
datasets), of which only the frames a clip uses are decoded. Randomness is
stateless: every random op takes a `seed` tensor of shape [2], so a pipeline is
reproducible from its seeds and can resume mid-epoch.
"""
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


def eval_offsets(num_video_frames, num_frames: int, stride: int, num_clips: int):
  """Starts of the evaluation's clips, `[num_clips]`, as scenic's (DMVR) test
  sampling: one clip: the middle, `(N - F * s) // 2`; several: `int(linspace(0, N -
  F * s))` (both at least 0: a short video's clips all start at 0 and loop)."""
  last = tf.maximum(num_video_frames - num_frames * stride, 0)
  if num_clips == 1:
    return (last // 2)[None]
  return tf.cast(tf.linspace(0.0, tf.cast(last, tf.float32), num_clips), tf.int32)


def eval_clip_indices(num_video_frames, num_frames: int, stride: int, num_clips: int):
  """The frame indices of the multi-view evaluation's clips: `[num_clips,
  num_frames]` int32 (what `eval_views` gathers; `vivit.inference.video_views`
  decodes only these)."""
  offsets = eval_offsets(num_video_frames, num_frames, stride, num_clips)
  return tf.stack([clip_indices(num_video_frames, num_frames, stride, offsets[i])
                   for i in range(num_clips)])


def short_side_size(height_width, size):
  """`[2]` (height, width) with the short side `size` and the long one `long * size //
  short` (at least `size`): scenic's `resize_smallest` of a frame of `height_width`."""
  height, width = height_width[0], height_width[1]
  return tf.stack([tf.maximum(size, height * size // width),
                   tf.maximum(size, width * size // height)])


def resize_short_side(video, size):
  """Resizes so that the short side is `size` and the long one `long * size // short`
  (DMVR's `resize_smallest`), bilinearly: float32."""
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


def to_pixels(video):
  """Float pixels in [0, 255] -> uint8, rounded: what crosses to the device, where
  `vivit.models.pixels_to_unit_range` maps it to scenic's [-1, 1]."""
  return tf.cast(tf.round(tf.clip_by_value(video, 0.0, 255.0)), tf.uint8)


def eval_views(video, *, num_frames: int, stride: int, min_resize: int, crop_size: int,
               num_clips: int, num_crops: int):
  """Every view of the multi-view evaluation: `[clips * crops, num_frames, crop,
  crop, 3]`, clip-major, uint8: as DMVR's test ops (`sample_linspace_sequence`,
  `resize_smallest`, then scenic's `three_spatial_crops` or DMVR's central crop)."""
  indices = eval_clip_indices(tf.shape(video)[0], num_frames, stride, num_clips)
  views = []
  for i in range(num_clips):
    clip = resize_short_side(gather_frames(video, indices[i]), min_resize)
    # DMVR's `resize_smallest` casts back to uint8, which truncates, before cropping.
    views.append(spatial_crops(tf.cast(clip, tf.uint8), crop_size, num_crops))
  return tf.concat(views, axis=0)
