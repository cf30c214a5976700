"""Synthetic dataset, transforms and the tf.data pipeline."""
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from vivit import datasets
from vivit.datasets import synthetic
from vivit.input import pipeline, sources, transforms
from vivit.recipes import base_config

SEED = tf.constant([3, 7], tf.int64)


def tiny_dataset_config(data_dir, **overrides):
  config = base_config().dataset
  config.update(name='synthetic_motion/tiny', data_dir=str(data_dir), num_frames=4,
                stride=2, min_resize=16, crop_size=16, scale_jitter=(1.0, 1.25),
                flip=False, colour_augment=0.8, colour_drop=0.1, num_threads=2)
  config.update(overrides)
  return config


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  datasets.get_builder('synthetic_motion/tiny', str(path))
  return path


def test_synthetic_clips_are_deterministic_and_pairs_are_time_reversals():
  a = synthetic.render_clip(4, np.random.default_rng(0))
  assert a.shape == (synthetic.NUM_FRAMES, synthetic.SIZE, synthetic.SIZE, 3)
  assert a.dtype == np.uint8
  np.testing.assert_array_equal(a, synthetic.render_clip(4, np.random.default_rng(0)))
  # Class 2k+1 is class 2k played backwards: the same frames, only their order differs.
  for forward in range(0, len(synthetic.CLASS_NAMES), 2):
    for seed in range(5):
      ahead = synthetic._trajectory(forward, np.random.default_rng(seed))
      back = synthetic._trajectory(forward + 1, np.random.default_rng(seed))
      for x, y in zip(ahead, back):
        np.testing.assert_allclose(x[::-1], y)
      assert max(np.abs(x[0] - x[-1]).max() for x in ahead) >= 1  # it does change


def test_clip_indices_offsets_and_crops_as_scenic():
  """Reference values from scenic's (DMVR's) formulas: test clip starts
  `int(linspace(0, max(0, N - F * s), K))`, one clip `max(0, N - F * s) // 2`;
  three crops at both ends and `ceil((long - crop) / 2)` of the long side, one crop
  at `floor`."""
  np.testing.assert_array_equal(transforms.clip_indices(10, 4, 3, 2), [2, 5, 8, 1])
  for (frames, clips), starts in {(250, 4): [0, 62, 124, 186], (75, 4): [0, 3, 7, 11],
                                  (40, 4): [0, 0, 0, 0], (250, 1): [93], (70, 1): [3],
                                  (40, 1): [0]}.items():
    np.testing.assert_array_equal(transforms.test_offsets(frames, 32, 2, clips), starts)
  # A short video's clip loops from its start.
  np.testing.assert_array_equal(transforms.clip_indices(40, 32, 2, 0)[18:22], [36, 38, 0, 2])
  wide = tf.reshape(tf.range(2 * 4 * 11 * 1), (2, 4, 11, 1))
  wide = tf.tile(wide, [1, 1, 1, 3])
  crops = transforms.spatial_crops(wide, 4, 3)
  assert crops.shape == (3, 2, 4, 4, 3)
  np.testing.assert_array_equal(crops[0], wide[:, :, 0:4])
  np.testing.assert_array_equal(crops[1], wide[:, :, 4:8])  # ceil(7 / 2)
  np.testing.assert_array_equal(crops[2], wide[:, :, 7:11])
  np.testing.assert_array_equal(transforms.spatial_crops(wide, 4, 1)[0], wide[:, :, 3:7])
  tall = tf.transpose(wide, [0, 2, 1, 3])
  np.testing.assert_array_equal(transforms.spatial_crops(tall, 4, 3)[2], tall[:, 7:11])
  with pytest.raises(ValueError, match='num_crops must be 1 or 3'):
    transforms.spatial_crops(wide, 4, 2)
  # Short side to 8, long side `11 * 8 // 4`.
  assert transforms.resize_short_side(tf.cast(wide, tf.float32), 8).shape == (2, 8, 22, 3)


def test_scale_jitter_draws_height_and_width_apart():
  shapes = {tuple(transforms.jittered_size(tf.constant([100, 100]), 100, 16, (0.9, 1.33),
                                           tf.constant([s, 1])).numpy()) for s in range(20)}
  assert all(90 <= h < 133 and 90 <= w < 133 for h, w in shapes)
  assert sum(h != w for h, w in shapes) >= 15  # the aspect ratio changes


def _tf_image_colour(video, draws):
  """Scenic's colour augmentation of float `[time, h, w, 3]` in [0, 1] with the
  `tf.image` ops it calls, given one clip's `[6]` draws: the reference."""
  jitter, drop, brightness, saturation, contrast, hue = (float(d) for d in draws)
  if jitter:
    video = tf.image.adjust_brightness(video, brightness)
    video = tf.image.adjust_saturation(video, saturation)
    video = tf.image.adjust_contrast(video, contrast)
    video = tf.clip_by_value(tf.image.adjust_hue(video, hue), 0.0, 1.0)
  if drop:
    video = tf.tile(tf.image.rgb_to_grayscale(video), [1, 1, 1, 3])
  return video


def test_colour_draws_follow_scenics_ranges_and_probabilities():
  """Brightness +-32/255, saturation and contrast x 0.6..1.4, hue +-0.2; jitter with
  probability 0.8, grey with 0.1."""
  draws = np.stack([transforms.colour_draws(0.8, 0.1, tf.constant([s, 5])).numpy()
                    for s in range(400)])
  jitter, drop, brightness, saturation, contrast, hue = draws.T
  assert set(np.unique(jitter)) == {0, 1} and set(np.unique(drop)) == {0, 1}
  assert 0.75 < jitter.mean() < 0.85 and 0.06 < drop.mean() < 0.14
  for values, low, high in ((brightness, -32 / 255, 32 / 255), (saturation, 0.6, 1.4),
                            (contrast, 0.6, 1.4), (hue, -0.2, 0.2)):
    assert low <= values.min() < low + 0.05 * (high - low)
    assert high - 0.05 * (high - low) < values.max() <= high


def test_colour_on_the_device_is_tf_images_and_the_same_for_every_frame():
  """`vivit.colour.augment_colour` (jax, on the batch) against the tf.image ops scenic
  runs, with black, white and grey pixels among random ones; a still clip stays still."""
  from vivit.colour import augment_colour
  rng = np.random.RandomState(0)
  pixels = rng.randint(0, 256, (5, 3, 6, 6, 3)).astype(np.uint8)
  pixels[0, :, :2] = 0
  pixels[1, :, :2] = 255
  pixels[2, :, :2] = pixels[2, :, :2, :, :1]
  pixels[4] = pixels[4, :1]
  for s in range(8):
    draws = np.stack([transforms.colour_draws(0.8, 0.3, tf.constant([s, i])).numpy()
                      for i in range(5)])
    out = np.asarray(augment_colour(pixels, draws))
    for clip, clip_draws, new in zip(pixels, draws, out):
      reference = _tf_image_colour(tf.constant(clip / 255.0, tf.float32), clip_draws)
      np.testing.assert_allclose(new, reference.numpy() * 2 - 1, atol=2e-5)
    np.testing.assert_allclose(out[4, 0], out[4, 2], atol=1e-6)
  assert np.abs(augment_colour(pixels, np.zeros((5, 6))) * 127.5 + 127.5 - pixels).max() < 1e-3


def _train_view(video, seed, flip=False):
  return transforms.train_view(video, num_frames=4, stride=2, min_resize=16, crop_size=16,
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
  jitter_seed, crop_seed = transforms.split_seed(seed, 2)
  video = transforms.resize_short_side(tf.cast(video, tf.float32), min_resize)
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


@pytest.mark.parametrize('height,width,min_resize,crop,scale_range', WINDOW_CASES)
def test_crop_window_is_the_window_the_old_path_cropped(height, width, min_resize, crop,
                                                       scale_range):
  """The stored-frame positions the crop samples are those of resize, jitter and crop
  (exactly, away from the frame's edge pixels, where the old path's first resize
  clamped: there within half a pixel), and the decoded window is the pixels around
  them: from floor(first) to ceil(last), inside the frame."""
  video, stored = _ramps(height, width), tf.constant([height, width])
  for s in range(6):
    seed = tf.constant([s, 11], tf.int64)
    old = _old_crop(video, seed, min_resize, crop, scale_range).numpy()
    jitter_seed = transforms.split_seed(seed, 2)[0]
    size = transforms.jittered_size(stored, min_resize, crop, scale_range, jitter_seed)
    resized = transforms.resize_short_side(video, min_resize)
    np.testing.assert_array_equal(
        size, _scale_jitter(resized, scale_range, crop, jitter_seed).shape[1:3])
    y, x = (p.numpy() for p in transforms.train_crop_positions(
        stored, min_resize=min_resize, crop_size=crop, scale_range=scale_range, seed=seed))
    for positions, sampled, extent in ((y, old[0, :, crop // 2, 0], height),
                                       (x, old[0, crop // 2, :, 1], width)):
      clamped = np.clip(positions, 0, extent - 1)
      inside = (positions >= 1) & (positions <= extent - 2)
      np.testing.assert_allclose(sampled[inside], positions[inside], atol=2e-3)
      np.testing.assert_allclose(sampled, clamped, atol=0.5)
    top, size = (t.numpy() for t in transforms.crop_window(stored, tf.constant(y),
                                                           tf.constant(x)))
    for axis, positions in enumerate((y, x)):
      extent = (height, width)[axis]
      assert top[axis] == np.floor(np.clip(positions.min(), 0, extent - 1))
      assert top[axis] + size[axis] - 1 == np.ceil(np.clip(positions.max(), 0, extent - 1))
    # The window resampled is the old crop, but at the frame's edges.
    window = video[:, top[0]:top[0] + size[0], top[1]:top[1] + size[1]]
    new = transforms.resample(window, y - top[0], x - top[1]).numpy()
    inner = np.ix_((y >= 1) & (y <= height - 2), (x >= 1) & (x <= width - 2))
    np.testing.assert_allclose(new[0][inner], old[0][inner], atol=2e-3)
    np.testing.assert_allclose(new, old, atol=0.5)


def test_crop_window_extremes_of_the_jitter_reach_both_ends_of_the_frame():
  """With many draws the window starts at the frame's first pixel and ends at its
  last (the crop's offsets reach both ends), and shrinks and grows with the jitter."""
  stored = tf.constant([256, 340])
  tops, bottoms, heights = [], [], []
  for s in range(300):
    y, x = transforms.train_crop_positions(stored, min_resize=256, crop_size=224,
                                           scale_range=(0.9, 1.33),
                                           seed=tf.constant([s, 3], tf.int64))
    top, size = transforms.crop_window(stored, y, x)
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
    padded, origin, got = transforms.decode_window(jpegs, indices, top, size)
    assert origin[0] == top[0] and top[1] - 2 <= origin[1] <= top[1] and got[0] == size[0]
    assert origin[1] + got[1] == min(top[1] + size[1] + 2, 80)
    np.testing.assert_array_equal(padded.shape[1:3], transforms.padded_size(got))
    np.testing.assert_array_equal(padded[:, :got[0], :got[1]],
                                  tf.gather(decoded, indices)[:, origin[0]:origin[0] + got[0],
                                                              origin[1]:origin[1] + got[1]])
    assert not np.any(padded[:, got[0]:]) and not np.any(padded[:, :, got[1]:])
  for s in range(4):
    kwargs = dict(num_frames=4, stride=2, min_resize=48, crop_size=40,
                  scale_range=(0.9, 1.33), flip=True, seed=tf.constant([s, 2], tf.int64))
    np.testing.assert_array_equal(transforms.train_view(jpegs, **kwargs),
                                  transforms.train_view(decoded, **kwargs))


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
    offset_seed, crop_seed, flip_seed, _ = transforms.split_seed(seed, 4)
    draws = transforms.colour_draws(0.8, 0.1, seed + 1).numpy()
    indices = transforms.clip_indices(12, 4, 2, transforms.random_offset(12, 4, 2,
                                                                         offset_seed))
    old = _old_crop(tf.gather(video, indices), crop_seed, 48, 40, (0.9, 1.33))
    if tf.random.stateless_uniform([], flip_seed) < 0.5:  # the whole clip's flip
      old = tf.reverse(old, axis=[2])
    old = transforms.to_pixels(_tf_image_colour(old / 255.0, draws) * 255.0).numpy()
    new = transforms.train_view(video, num_frames=4, stride=2, min_resize=48, crop_size=40,
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
  np.testing.assert_array_equal(transforms.padded_size(sizes),
                                [16, 16, 32, 128, 128, 256, 256, 256, 512, 2048])


def test_test_views_shape_and_pixels():
  video = tf.constant(np.full((16, 32, 24, 3), 255, np.uint8))
  views = transforms.test_views(video, num_frames=4, stride=2, min_resize=16, crop_size=16,
                                num_clips=2, num_crops=3).numpy()
  assert views.shape == (6, 4, 16, 16, 3) and views.dtype == np.uint8
  np.testing.assert_array_equal(views, 255)


def test_train_batches_resume_mid_epoch_and_across_epochs(data_dir):
  config = tiny_dataset_config(data_dir)
  fresh = pipeline.train_batches(config, 16, seed=5)
  first = [next(fresh) for _ in range(7)]  # 4 steps per epoch: crosses into epoch 1
  assert first[0]['video'].shape == (16, 4, 16, 16, 3)
  assert first[0]['label'].dtype == np.int32
  for start in (2, 5):
    resumed = next(pipeline.train_batches(config, 16, seed=5, start_step=start))
    np.testing.assert_array_equal(resumed['video'], first[start]['video'])
    np.testing.assert_array_equal(resumed['label'], first[start]['label'])
  # Epochs are shuffled differently.
  assert not np.array_equal(first[0]['label'], first[4]['label'])


def feeders():
  return [t for t in threading.enumerate() if t.name == 'vivit-records-feeder']


def test_read_by_a_thread_or_from_memory_the_batches_are_the_same(data_dir, monkeypatch):
  config = tiny_dataset_config(data_dir)
  from_memory = pipeline.train_batches(config, 16, seed=5, start_step=3)
  expected = [next(from_memory) for _ in range(3)]
  expected_eval = list(pipeline.eval_batches(config, 'test', 8))
  assert not feeders()
  monkeypatch.setattr(sources, 'IN_MEMORY_BYTES', 0)  # every split is "large"
  unused = pipeline.train_batches(config, 16, seed=5)
  del unused  # never advanced: its reader never started
  fed = pipeline.train_batches(config, 16, seed=5, start_step=3)
  assert not feeders()
  for batch in expected:
    np.testing.assert_array_equal(next(fed)['video'], batch['video'])
  assert len(feeders()) == 1
  for got, batch in zip(pipeline.eval_batches(config, 'test', 8), expected_eval,
                        strict=True):
    np.testing.assert_array_equal(got['video'], batch['video'])
  # Stopping mid-stream (end of training) stops the reader thread and cannot hang.
  fed.close()
  deadline = time.time() + 10
  while feeders() and time.time() < deadline:
    time.sleep(0.05)
  assert not feeders()


def test_eval_batches_pad_the_last_batch(data_dir):
  config = tiny_dataset_config(data_dir)
  batches = list(pipeline.eval_batches(config, 'test', 8, num_clips=2, num_crops=3))
  assert [b['video'].shape for b in batches] == [(8, 6, 4, 16, 16, 3)] * 3
  assert sum(b['mask'].sum() for b in batches) == 20
  assert batches[-1]['mask'].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_missing_split_and_dataset_errors(data_dir, tmp_path):
  config = tiny_dataset_config(data_dir, train_split='training')
  with pytest.raises(ValueError, match="no split 'training'; available: test, train, "
                                       "validation"):
    next(pipeline.train_batches(config, 8, seed=0))
  with pytest.raises(FileNotFoundError, match='kinetics400 is not prepared'):
    datasets.get_builder('kinetics400', str(tmp_path))
