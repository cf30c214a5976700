"""Training and evaluation views (vivit.input.crop, vivit.input.sampling) against a
replica of DMVR's ops on whole frames: bit for bit, for many draws.

The replica is DMVR's preprocessing as scenic's ViViT runs it
(google-deepmind/dmvr, dmvr/processors.py and dmvr/modalities.py `add_image`;
scenic/dataset_lib/video_ops.py), written again here with the same `tf.image` calls:
- `resize_smallest`: output `max(min_resize, h * min_resize // w)` by `max(min_resize,
  w * min_resize // h)`, `tf.image.resize` (bilinear, default: half-pixel centres, no
  antialias) then `tf.cast` to the input's dtype (uint8: truncation); skipped when the
  size is already that;
- `scale_jitter_augm` (scenic's `do_jitter_scale`, `prob_scale_jitter` 1): height and
  width factors drawn apart, size `tf.cast(factor * tf.cast(size, tf.float32),
  tf.int32)`, `tf.image.resize`, `tf.cast` back to uint8;
- `crop_image(random=True)`: `tf.slice` at the drawn offset;
- `random_flip_left_right`: `tf.image.flip_left_right`;
- test: `sample_linspace_sequence` / `sample_sequence(random=False)` for the clips
  (vivit.input.sampling's own tests cover them), `resize_smallest`, then
  `crop_image(random=False)` (`tf.image.resize_with_crop_or_pad`, one crop) or scenic's
  `three_spatial_crops` (`deterministic_crop`: offsets `ceil((size - crop) / 2)`,
  0 and the far end along the long side).
"""
import numpy as np
import pytest
import tensorflow as tf

from vivit.datasets import synthetic
from vivit.errors import ConfigError
from vivit.input import crop, sampling


def dmvr_resize_smallest(frames, min_resize):
  height, width = frames.shape[1:3]
  size = (max(min_resize, height * min_resize // width),
          max(min_resize, width * min_resize // height))
  if size == (height, width):
    return frames
  return tf.cast(tf.image.resize(frames, size), frames.dtype)


def dmvr_jitter_size(resized_size, factors):
  return [int(tf.cast(factor * tf.cast(side, tf.float32), tf.int32))
          for factor, side in zip(factors, resized_size)]


def dmvr_train_view(frames, *, min_resize, crop_size, size, offset, flip):
  """resize_smallest -> scale_jitter_augm's resize to `size` -> crop_image -> flip."""
  frames = dmvr_resize_smallest(frames, min_resize)
  frames = tf.cast(tf.image.resize(frames, size), frames.dtype)
  frames = tf.slice(frames, [0, offset[0], offset[1], 0], [-1, crop_size, crop_size, -1])
  return (tf.image.flip_left_right(frames) if flip else frames).numpy()


def dmvr_test_views(frames, *, min_resize, crop_size, num_crops):
  """resize_smallest, then the central crop or the three spatial crops."""
  frames = dmvr_resize_smallest(frames, min_resize)
  if num_crops == 1:
    return tf.image.resize_with_crop_or_pad(frames, crop_size, crop_size).numpy()[None]
  height, width = frames.shape[1:3]
  views = []
  for index in range(3):
    y, x = -(-(height - crop_size) // 2), -(-(width - crop_size) // 2)
    if height > width:
      y = {0: 0, 1: y, 2: height - crop_size}[index]
    else:
      x = {0: 0, 1: x, 2: width - crop_size}[index]
    views.append(frames[:, y:y + crop_size, x:x + crop_size].numpy())
  return np.stack(views)


def _noise(frames, height, width, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3),
                                                          dtype=np.uint8))


def _kwargs(min_resize, crop_size, **overrides):
  return dict(dict(num_frames=2, stride=1, min_resize=min_resize, crop_size=crop_size,
                   scale_range=(0.9, 1.33), flip=True), **overrides)


def _draws(video, seed, **kwargs):
  indices, draws = crop.train_draws(video, seed=seed, **kwargs)
  return indices, draws.size.numpy(), draws.offset.numpy(), bool(draws.flip)


# (stored height, width, min_resize, crop): landscape, portrait and square frames
# downscaled, upscaled and stored at min_resize (the first resize skipped); the
# Kinetics (256/224) and SSv2 (288/256) recipes on 340x256 frames.
TRAIN_CASES = [(60, 80, 48, 40), (80, 60, 48, 40), (50, 50, 40, 36), (30, 40, 48, 40),
               (44, 33, 48, 40), (48, 64, 48, 40), (256, 340, 256, 224),
               (256, 340, 288, 256)]


@pytest.mark.parametrize('height,width,min_resize,crop_size', TRAIN_CASES)
def test_train_views_are_dmvrs_bit_for_bit(height, width, min_resize, crop_size):
  """Many draws (jittered size, offset, flip) per case, from both ends of the
  jitter's range: the view is DMVR's ops on whole frames with the same draws."""
  video = _noise(4, height, width, seed=height + width)
  kwargs = _kwargs(min_resize, crop_size)
  flips, sizes = set(), set()
  for s in range(16 if height > 100 else 40):
    seed = tf.constant([s, height], tf.int64)
    indices, size, offset, flip = _draws(video, seed, **kwargs)
    flips.add(flip)
    sizes.update(size)
    expected = dmvr_train_view(tf.gather(video, indices), min_resize=min_resize,
                               crop_size=crop_size, size=size, offset=offset, flip=flip)
    np.testing.assert_array_equal(crop.train_view(video, seed=seed, **kwargs), expected,
                                  err_msg=f'draw {s}: size {size}, offset {offset}')
  assert flips == {False, True}
  resized = min(min_resize, crop_size * 256 // 224)
  assert max(sizes) - min(sizes) > 0.3 * resized  # the jitter's range is covered


def test_the_jittered_size_is_dmvrs_for_the_factors_drawn():
  for s in range(50):
    seed = tf.constant([s, 1], tf.int64)
    factors = tf.random.stateless_uniform([2], seed, 0.9, 1.33).numpy()
    for resized in ((256, 340), (288, 384), (48, 64)):
      np.testing.assert_array_equal(crop.jittered_size(tf.constant(resized), 16, (0.9, 1.33),
                                                       seed),
                                    dmvr_jitter_size(resized, factors))


def test_scale_jitter_draws_height_and_width_apart():
  shapes = {tuple(crop.jittered_size(tf.constant([100, 100]), 16, (0.9, 1.33),
                                     tf.constant([s, 1])).numpy()) for s in range(20)}
  assert all(90 <= h < 133 and 90 <= w < 133 for h, w in shapes)
  assert sum(h != w for h, w in shapes) >= 15  # the aspect ratio changes


def test_a_jitter_below_the_crop_is_clamped_where_dmvr_would_fail():
  video = _noise(2, 40, 40)
  kwargs = _kwargs(40, 40, scale_range=(0.5, 0.6))
  for s in range(4):
    seed = tf.constant([s, 2], tf.int64)
    _, size, offset, flip = _draws(video, seed, **kwargs)
    assert size.tolist() == [40, 40] and offset.tolist() == [0, 0]
    expected = tf.image.flip_left_right(video[:2]) if flip else video[:2]
    np.testing.assert_array_equal(crop.train_view(video, seed=seed, **kwargs), expected)


def _jpeg_clip(frames=6, height=60, width=80):
  rng = np.random.RandomState(0)
  texture = rng.randint(0, 256, (frames, height // 4, width // 4, 3)).astype(np.float32)
  pixels = tf.cast(tf.image.resize(texture, [height, width]), tf.uint8)
  jpegs = tf.stack([tf.io.encode_jpeg(frame, quality=90) for frame in pixels])
  return jpegs, tf.stack([tf.io.decode_jpeg(jpeg, channels=3) for jpeg in jpegs])


def test_a_jpeg_clip_decoded_in_windows_gives_dmvrs_view_of_whole_frames():
  """Only the window is decoded (`decode_and_crop_jpeg`, with columns either side for
  libjpeg's chroma upsampling), pixel for pixel as whole frames; in a tf.data map
  (graph mode, grappler) the views are the same."""
  jpegs, decoded = _jpeg_clip()
  for min_resize, crop_size in ((60, 56), (48, 40)):  # the first resize skipped, or not
    kwargs = _kwargs(min_resize, crop_size, num_frames=3, stride=2)
    seeds = [tf.constant([s, 2], tf.int64) for s in range(6)]
    mapped = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
        lambda seed: crop.train_view(jpegs, seed=seed, **kwargs))
    for seed, in_graph in zip(seeds, mapped.as_numpy_iterator()):
      indices, size, offset, flip = _draws(jpegs, seed, **kwargs)
      expected = dmvr_train_view(tf.gather(decoded, indices), min_resize=min_resize,
                                 crop_size=crop_size, size=size, offset=offset, flip=flip)
      np.testing.assert_array_equal(crop.train_view(jpegs, seed=seed, **kwargs), expected)
      np.testing.assert_array_equal(in_graph, expected)


def test_decode_window_reads_the_window_and_its_margin():
  jpegs, decoded = _jpeg_clip()
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


def test_one_pass_is_one_rounded_resize_of_the_stored_frames():
  """`dataset.resample='one_pass'`: the same draws, the stored frames resized once
  to the jittered size (in stored-frame scale the two resizes compose), rounded; it
  differs from scenic's by the second pass's blur and the truncation."""
  video = _noise(4, 60, 80, seed=5)
  kwargs = _kwargs(48, 40)
  differences = []
  for s in range(8):
    seed = tf.constant([s, 3], tf.int64)
    indices, size, offset, flip = _draws(video, seed, **kwargs)
    resized = tf.image.resize(tf.gather(video, indices), size)
    expected = sampling.to_pixels(resized)[:, offset[0]:offset[0] + 40, offset[1]:offset[1] + 40]
    expected = tf.image.flip_left_right(expected) if flip else expected
    one_pass = crop.train_view(video, seed=seed, resample='one_pass', **kwargs)
    np.testing.assert_array_equal(one_pass, expected)
    unrounded = crop.train_view(video, seed=seed, resample='one_pass', rounded=False, **kwargs)
    assert unrounded.dtype == tf.float32 and np.any(unrounded.numpy() % 1 != 0)
    np.testing.assert_array_equal(sampling.to_pixels(unrounded), one_pass)
    scenic = crop.train_view(video, seed=seed, **kwargs).numpy()
    np.testing.assert_array_equal(crop.train_view(video, seed=seed, rounded=False, **kwargs),
                                  scenic.astype(np.float32))
    differences.append(np.abs(scenic.astype(int) - one_pass.numpy()).mean())
  assert 2 < np.mean(differences) < 40


def test_an_unknown_resample_is_a_config_error():
  with pytest.raises(ConfigError, match=r"^dataset\.resample must be one of scenic, "
                                        r"one_pass, got 'bicubic'$"):
    crop.train_view(_noise(2, 20, 20), seed=tf.constant([0, 0], tf.int64),
                    resample='bicubic', **_kwargs(16, 16))


@pytest.mark.parametrize('height,width,min_resize,crop_size',
                         [(60, 80, 48, 40), (80, 60, 48, 40), (50, 50, 56, 48),
                          (48, 64, 48, 40), (31, 45, 36, 32)])
def test_eval_views_are_dmvrs_bit_for_bit(height, width, min_resize, crop_size):
  video = _noise(20, height, width, seed=3)
  for num_clips, num_crops in ((1, 1), (1, 3), (4, 3)):
    indices = sampling.eval_clip_indices(20, 4, 2, num_clips)
    expected = np.concatenate([
        dmvr_test_views(tf.gather(video, indices[i]), min_resize=min_resize,
                        crop_size=crop_size, num_crops=num_crops)
        for i in range(num_clips)], axis=0)
    views = sampling.eval_views(video, num_frames=4, stride=2, min_resize=min_resize,
                                crop_size=crop_size, num_clips=num_clips,
                                num_crops=num_crops)
    np.testing.assert_array_equal(views, expected)


def test_padded_sizes_are_powers_of_two():
  sizes = tf.constant([1, 16, 17, 100, 128, 129, 251, 256, 257, 1080])
  np.testing.assert_array_equal(crop.padded_size(sizes),
                                [16, 16, 32, 128, 128, 256, 256, 256, 512, 2048])


def test_train_view_shapes_range_and_determinism():
  video = tf.constant(synthetic.render_clip(0, np.random.default_rng(0)))
  kwargs = _kwargs(16, 16, num_frames=4, stride=2, scale_range=(1.0, 1.3))
  view = crop.train_view(video, seed=tf.constant([3, 7], tf.int64), **kwargs).numpy()
  assert view.shape == (4, 16, 16, 3) and view.dtype == np.uint8 and view.std() > 10
  np.testing.assert_array_equal(view, crop.train_view(video, seed=tf.constant([3, 7], tf.int64),
                                                      **kwargs))
  other = crop.train_view(video, seed=tf.constant([4, 8], tf.int64), **kwargs).numpy()
  assert np.abs(view.astype(int) - other).max() > 2


def test_flip_only_where_configured():
  # Left half black, right half white: a flip puts white on the left.
  half = np.zeros((8, 16, 16, 3), np.uint8)
  half[:, :, 8:] = 255
  video = tf.constant(half)
  seeds = [tf.constant([i, 0], tf.int64) for i in range(16)]

  def left_mean(seed, flip):
    kwargs = _kwargs(16, 16, num_frames=4, stride=2, scale_range=(1.0, 1.3), flip=flip)
    return crop.train_view(video, seed=seed, **kwargs).numpy()[:, :, :2].mean()
  unflipped = [left_mean(s, False) for s in seeds]
  flipped = [left_mean(s, True) for s in seeds]
  assert max(unflipped) < 13
  assert sum(f > 242 for f in flipped) >= 3 and sum(f < 13 for f in flipped) >= 3
