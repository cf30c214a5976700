"""Clip indices, offsets and the evaluation's views (vivit.input.sampling), as scenic's."""
import numpy as np
import pytest
import tensorflow as tf

from vivit.input import sampling


def test_clip_indices_offsets_and_crops_as_scenic():
  """Reference values from scenic's (DMVR's) formulas: test clip starts
  `int(linspace(0, max(0, N - F * s), K))`, one clip `max(0, N - F * s) // 2`;
  three crops at both ends and `ceil((long - crop) / 2)` of the long side, one crop
  at `floor`."""
  np.testing.assert_array_equal(sampling.clip_indices(10, 4, 3, 2), [2, 5, 8, 1])
  for (frames, clips), starts in {(250, 4): [0, 62, 124, 186], (75, 4): [0, 3, 7, 11],
                                  (40, 4): [0, 0, 0, 0], (250, 1): [93], (70, 1): [3],
                                  (40, 1): [0]}.items():
    np.testing.assert_array_equal(sampling.eval_offsets(frames, 32, 2, clips), starts)
  # A short video's clip loops from its start.
  np.testing.assert_array_equal(sampling.clip_indices(40, 32, 2, 0)[18:22], [36, 38, 0, 2])
  wide = tf.reshape(tf.range(2 * 4 * 11 * 1), (2, 4, 11, 1))
  wide = tf.tile(wide, [1, 1, 1, 3])
  crops = sampling.spatial_crops(wide, 4, 3)
  assert crops.shape == (3, 2, 4, 4, 3)
  np.testing.assert_array_equal(crops[0], wide[:, :, 0:4])
  np.testing.assert_array_equal(crops[1], wide[:, :, 4:8])  # ceil(7 / 2)
  np.testing.assert_array_equal(crops[2], wide[:, :, 7:11])
  np.testing.assert_array_equal(sampling.spatial_crops(wide, 4, 1)[0], wide[:, :, 3:7])
  tall = tf.transpose(wide, [0, 2, 1, 3])
  np.testing.assert_array_equal(sampling.spatial_crops(tall, 4, 3)[2], tall[:, 7:11])
  with pytest.raises(ValueError, match='num_crops must be 1 or 3'):
    sampling.spatial_crops(wide, 4, 2)
  # Short side to 8, long side `11 * 8 // 4`.
  assert sampling.resize_short_side(tf.cast(wide, tf.float32), 8).shape == (2, 8, 22, 3)


def test_eval_clip_indices_are_the_clips_from_each_offset():
  indices = sampling.eval_clip_indices(75, 4, 3, 4).numpy()
  assert indices.shape == (4, 4) and indices.dtype == np.int32
  for row, offset in zip(indices, sampling.eval_offsets(75, 4, 3, 4).numpy()):
    np.testing.assert_array_equal(row, offset + 3 * np.arange(4))


def test_eval_views_shape_and_pixels():
  video = tf.constant(np.full((16, 32, 24, 3), 255, np.uint8))
  views = sampling.eval_views(video, num_frames=4, stride=2, min_resize=16, crop_size=16,
                              num_clips=2, num_crops=3).numpy()
  assert views.shape == (6, 4, 16, 16, 3) and views.dtype == np.uint8
  np.testing.assert_array_equal(views, 255)


def test_eval_views_are_clip_major_crops_of_each_clip():
  """View `clip * crops + crop` is crop `crop` of clip `clip`: frames whose value is
  their index say which clip a view holds."""
  frames = np.arange(16, dtype=np.uint8)[:, None, None, None] * 10
  video = tf.constant(np.broadcast_to(frames, (16, 16, 24, 3)))
  views = sampling.eval_views(video, num_frames=4, stride=2, min_resize=16, crop_size=16,
                              num_clips=2, num_crops=3).numpy()
  for clip, indices in enumerate(sampling.eval_clip_indices(16, 4, 2, 2).numpy()):
    for crop in range(3):
      np.testing.assert_array_equal(views[clip * 3 + crop, :, 0, 0, 0], indices * 10)
