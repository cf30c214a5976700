"""The fused decode-crop of training clips (vivit.input.crop): the window it decodes
and samples is the one that resizing, scale jitter, cropping and flipping whole
frames would have used."""
import numpy as np
import pytest
import tensorflow as tf

from test_colour import tf_image_colour
from vivit.datasets import synthetic
from vivit.input import augment, crop, sampling

SEED = tf.constant([3, 7], tf.int64)


def test_scale_jitter_draws_height_and_width_apart():
  shapes = {tuple(crop.jittered_size(tf.constant([100, 100]), 100, 16, (0.9, 1.33),
                                     tf.constant([s, 1])).numpy()) for s in range(20)}
  assert all(90 <= h < 133 and 90 <= w < 133 for h, w in shapes)
  assert sum(h != w for h, w in shapes) >= 15  # the aspect ratio changes


def _train_view(video, seed, flip=False):
  return crop.train_view(video, num_frames=4, stride=2, min_resize=16, crop_size=16,
                         scale_range=(1.0, 1.3), flip=flip, seed=seed).numpy()


def test_train_view_shapes_range_and_determinism():
  video = tf.constant(synthetic.render_clip(0, np.random.default_rng(0)))
  view = _train_view(video, SEED)
  assert view.shape == (4, 16, 16, 3) and view.dtype == np.uint8 and view.std() > 10
  np.testing.assert_array_equal(view, _train_view(video, SEED))
  other = _train_view(video, SEED + 1).astype(int)
  assert np.abs(view.astype(int) - other).max() > 2


def test_flip_only_where_configured():
  # Left half black, right half white: a flip puts white on the left.
  half = np.zeros((8, 16, 16, 3), np.uint8)
  half[:, :, 8:] = 255
  video = tf.constant(half)
  seeds = [tf.constant([i, 0], tf.int64) for i in range(16)]
  unflipped = [_train_view(video, s, flip=False)[:, :, :2].mean() for s in seeds]
  flipped = [_train_view(video, s, flip=True)[:, :, :2].mean() for s in seeds]
  assert max(unflipped) < 13
  assert sum(f > 242 for f in flipped) >= 3 and sum(f < 13 for f in flipped) >= 3


def _scale_jitter(video, scale_range, min_size, seed):
  """Scenic's scale jitter of whole frames: height and width x U(scale_range)."""
  factors = tf.random.stateless_uniform([2], seed, *scale_range)
  size = tf.cast(tf.cast(tf.shape(video)[1:3], tf.float32) * factors, tf.int32)
  return tf.image.resize(video, tf.maximum(size, min_size), method='bilinear')


def _old_crop(video, seed, min_resize, crop_size, scale_range):
  """The three steps the crop window replaces: whole frames resized twice, cropped."""
  jitter_seed, crop_seed = sampling.split_seed(seed, 2)
  video = sampling.resize_short_side(tf.cast(video, tf.float32), min_resize)
  video = _scale_jitter(video, scale_range, crop_size, jitter_seed)
  return tf.image.stateless_random_crop(
      video, tf.stack([tf.shape(video)[0], crop_size, crop_size, 3]), crop_seed)


def _ramps(height, width):
  """Two frames whose red is the row and green the column index: bilinear resizes
  keep that, so a crop's pixels say where it sampled the stored frame."""
  rows, cols = np.mgrid[:height, :width].astype(np.float32)
  return tf.constant(np.stack([rows, cols, rows + cols], -1)[None].repeat(2, 0))


# (stored height, width, min_resize, crop, scale range): portrait, landscape, square,
# upsampled; both ends of the jitter; 224 short sides jittered under 224 (clamped).
WINDOW_CASES = [(340, 256, 256, 224, (0.9, 0.9)), (340, 256, 256, 224, (1.33, 1.33)),
                (256, 340, 256, 224, (0.9, 0.9)), (256, 340, 256, 224, (1.33, 1.33)),
                (256, 256, 256, 224, (0.9, 1.33)), (256, 340, 224, 224, (0.9, 0.9)),
                (340, 256, 224, 224, (0.9, 1.33)), (20, 30, 32, 28, (0.9, 1.33)),
                (300, 300, 224, 224, (1.33, 1.33))]


@pytest.mark.parametrize('height,width,min_resize,crop_size,scale_range', WINDOW_CASES)
def test_crop_window_is_the_window_the_old_path_cropped(height, width, min_resize, crop_size,
                                                       scale_range):
  """The stored-frame positions the crop samples are those of resize, jitter and crop
  (exactly, away from the frame's edge pixels, where the old path's first resize
  clamped: there within half a pixel), and the decoded window is the pixels around
  them: from floor(first) to ceil(last), inside the frame."""
  video, stored = _ramps(height, width), tf.constant([height, width])
  for s in range(6):
    seed = tf.constant([s, 11], tf.int64)
    old = _old_crop(video, seed, min_resize, crop_size, scale_range).numpy()
    jitter_seed = sampling.split_seed(seed, 2)[0]
    size = crop.jittered_size(stored, min_resize, crop_size, scale_range, jitter_seed)
    resized = sampling.resize_short_side(video, min_resize)
    np.testing.assert_array_equal(
        size, _scale_jitter(resized, scale_range, crop_size, jitter_seed).shape[1:3])
    y, x = (p.numpy() for p in crop.train_crop_positions(
        stored, min_resize=min_resize, crop_size=crop_size, scale_range=scale_range,
        seed=seed))
    for positions, sampled, extent in ((y, old[0, :, crop_size // 2, 0], height),
                                       (x, old[0, crop_size // 2, :, 1], width)):
      clamped = np.clip(positions, 0, extent - 1)
      inside = (positions >= 1) & (positions <= extent - 2)
      np.testing.assert_allclose(sampled[inside], positions[inside], atol=2e-3)
      np.testing.assert_allclose(sampled, clamped, atol=0.5)
    top, size = (t.numpy() for t in crop.crop_window(stored, tf.constant(y),
                                                     tf.constant(x)))
    for axis, positions in enumerate((y, x)):
      extent = (height, width)[axis]
      assert top[axis] == np.floor(np.clip(positions.min(), 0, extent - 1))
      assert top[axis] + size[axis] - 1 == np.ceil(np.clip(positions.max(), 0, extent - 1))
    # The window resampled is the old crop, but at the frame's edges.
    window = video[:, top[0]:top[0] + size[0], top[1]:top[1] + size[1]]
    new = crop.resample(window, y - top[0], x - top[1]).numpy()
    inner = np.ix_((y >= 1) & (y <= height - 2), (x >= 1) & (x <= width - 2))
    np.testing.assert_allclose(new[0][inner], old[0][inner], atol=2e-3)
    np.testing.assert_allclose(new, old, atol=0.5)


def test_crop_window_extremes_of_the_jitter_reach_both_ends_of_the_frame():
  """With many draws the window starts at the frame's first pixel and ends at its
  last (the crop's offsets reach both ends), and shrinks and grows with the jitter."""
  stored = tf.constant([256, 340])
  tops, bottoms, heights = [], [], []
  for s in range(300):
    y, x = crop.train_crop_positions(stored, min_resize=256, crop_size=224,
                                     scale_range=(0.9, 1.33),
                                     seed=tf.constant([s, 3], tf.int64))
    top, size = crop.crop_window(stored, y, x)
    tops.append(top.numpy())
    bottoms.append((top + size).numpy())
    heights.append(size[0].numpy())
  assert np.min(tops, axis=0).tolist() == [0, 0]
  assert np.max(bottoms, axis=0).tolist() == [256, 340]
  # 224 / 1.33 * (256 / 256) + 2 .. 224 / 0.9 + 2 stored rows
  assert 169 <= min(heights) < 180 and 240 < max(heights) <= 251


def _jpeg_clip(frames=10, height=60, width=80):
  rng = np.random.RandomState(0)
  texture = rng.randint(0, 256, (frames, height // 4, width // 4, 3)).astype(np.float32)
  pixels = tf.cast(tf.image.resize(texture, [height, width]), tf.uint8)
  return tf.stack([tf.io.encode_jpeg(frame, quality=90) for frame in pixels]), pixels


def test_decoding_only_the_window_gives_the_pixels_of_whole_frames():
  """decode_and_crop_jpeg is pixel-identical to decoding whole frames and cropping,
  so a clip of JPEG strings and the same clip decoded give the same training view."""
  jpegs, _ = _jpeg_clip()
  decoded = tf.stack([tf.io.decode_jpeg(jpeg, channels=3) for jpeg in jpegs])
  indices = tf.constant([1, 3, 5])
  for top, size in (([0, 0], [60, 80]), ([7, 13], [41, 50]), ([59, 79], [1, 1])):
    top, size = tf.constant(top), tf.constant(size)
    padded, origin, got = crop.decode_window(jpegs, indices, top, size)
    assert origin[0] == top[0] and top[1] - 2 <= origin[1] <= top[1] and got[0] == size[0]
    assert origin[1] + got[1] == min(top[1] + size[1] + 2, 80)
    np.testing.assert_array_equal(padded.shape[1:3], crop.padded_size(got))
    np.testing.assert_array_equal(padded[:, :got[0], :got[1]],
                                  tf.gather(decoded, indices)[:, origin[0]:origin[0] + got[0],
                                                              origin[1]:origin[1] + got[1]])
    assert not np.any(padded[:, got[0]:]) and not np.any(padded[:, :, got[1]:])
  for s in range(4):
    kwargs = dict(num_frames=4, stride=2, min_resize=48, crop_size=40,
                  scale_range=(0.9, 1.33), flip=True, seed=tf.constant([s, 2], tf.int64))
    np.testing.assert_array_equal(crop.train_view(jpegs, **kwargs),
                                  crop.train_view(decoded, **kwargs))


def test_train_view_is_the_old_path_up_to_resize_rounding():
  """Same draws, same sampled positions; one bilinear resize of the window instead
  of two of whole frames, and the colour after rounding to uint8 (on the device)
  instead of before: the pixels differ a little (the old path blurred once more),
  the statistics hardly."""
  from vivit.colour import augment_colour
  _, video = _jpeg_clip(frames=12)
  differences, old_moments, new_moments = [], [], []
  for s in range(24):
    seed = tf.constant([s, 9], tf.int64)
    offset_seed, crop_seed, flip_seed, _ = sampling.split_seed(seed, 4)
    draws = augment.colour_draws(0.8, 0.1, seed + 1).numpy()
    indices = sampling.clip_indices(12, 4, 2, sampling.random_offset(12, 4, 2,
                                                                     offset_seed))
    old = _old_crop(tf.gather(video, indices), crop_seed, 48, 40, (0.9, 1.33))
    if tf.random.stateless_uniform([], flip_seed) < 0.5:  # the whole clip's flip
      old = tf.reverse(old, axis=[2])
    old = sampling.to_pixels(tf_image_colour(old / 255.0, draws) * 255.0).numpy()
    new = crop.train_view(video, num_frames=4, stride=2, min_resize=48, crop_size=40,
                          scale_range=(0.9, 1.33), flip=True, seed=seed)
    new = np.asarray(augment_colour(new.numpy()[None], draws[None])[0]) * 127.5 + 127.5
    differences.append(np.abs(old - new).mean())
    old_moments.append((old.mean(), old.std()))
    new_moments.append((new.mean(), new.std()))
  assert np.median(differences) < 4 and max(differences) < 8
  (old_mean, old_std), (new_mean, new_std) = np.mean(old_moments, 0), np.mean(new_moments, 0)
  assert abs(new_mean - old_mean) < 0.01 * old_mean
  # The old path's second resize blurred: on this fine texture, 3 % less contrast.
  assert old_std <= new_std < 1.06 * old_std


def test_padded_sizes_are_powers_of_two():
  sizes = tf.constant([1, 16, 17, 100, 128, 129, 251, 256, 257, 1080])
  np.testing.assert_array_equal(crop.padded_size(sizes),
                                [16, 16, 32, 128, 128, 256, 256, 256, 512, 2048])


def test_train_view_unrounded_is_the_same_sampling_before_rounding():
  """With `rounded` False the view is float32 in [0, 255] (for the pixel ops of
  `vivit.input.augment`), and rounding it gives the uint8 view."""
  video = tf.constant(synthetic.render_clip(1, np.random.default_rng(2)))
  for s in range(4):
    kwargs = dict(num_frames=4, stride=2, min_resize=20, crop_size=16,
                  scale_range=(0.9, 1.33), flip=True, seed=tf.constant([s, 4], tf.int64))
    exact = crop.train_view(video, rounded=False, **kwargs)
    assert exact.dtype == tf.float32 and 0 <= np.min(exact) and np.max(exact) <= 255
    assert np.any(exact.numpy() != np.round(exact.numpy()))  # not rounded yet
    np.testing.assert_array_equal(sampling.to_pixels(exact), crop.train_view(video, **kwargs))
