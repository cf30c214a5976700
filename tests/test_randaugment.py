"""RandAugment on clips: one op per layer for the whole clip, on scenic's magnitude scale."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from vivit.input import transforms

SEED = tf.constant([3, 7], tf.int64)
SEEDS = [tf.constant([11, s], tf.int64) for s in range(16)]
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout')
# Ops whose mapping comes from statistics of the whole clip; the rest act frame by frame.
CLIP_STATISTICS = ('AutoContrast', 'Equalize', 'Contrast')


def _clip(frames=4, size=32, seed=0):
  """Integer-valued float frames in [40, 190), each a little brighter than the last."""
  rng = np.random.RandomState(seed)
  video = rng.randint(40, 160, (frames, size, size, 3)) + 10 * np.arange(frames)[:, None, None, None]
  return video.astype(np.float32)


def _op(video, name, magnitude, seed=SEED):
  return transforms.apply_op(video, name, magnitude, seed).numpy()


def _shift(video, pixels, axis):
  """`out[..., i, ...] = video[..., i + pixels, ...]`, grey 128 past the edge."""
  out = np.roll(video, -pixels, axis=axis)
  edge = [slice(None)] * video.ndim
  edge[axis] = slice(video.shape[axis] - pixels, None) if pixels > 0 else slice(None, -pixels)
  out[tuple(edge)] = 128
  return out


def test_pixel_ops_follow_the_scenic_magnitude_formulas():
  x = _clip()
  np.testing.assert_array_equal(_op(x, 'Invert', 20), 255 - x)
  # Solarize threshold int(m / 10 * 256): 3 -> 76, 5 -> 128; 20 -> 512, nothing inverted.
  np.testing.assert_array_equal(_op(x, 'Solarize', 3), np.where(x < 76, x, 255 - x))
  np.testing.assert_array_equal(_op(x, 'Solarize', 5), np.where(x < 128, x, 255 - x))
  np.testing.assert_array_equal(_op(x, 'Solarize', 20), x)
  # Posterize keeps int(m / 10 * 4) bits: 7 -> 2, 15 -> 6, 20 -> 8 (unchanged).
  np.testing.assert_array_equal(_op(x, 'Posterize', 7), x // 64 * 64)
  np.testing.assert_array_equal(_op(x, 'Posterize', 15), x // 4 * 4)
  np.testing.assert_array_equal(_op(x, 'Posterize', 20), x)
  # SolarizeAdd adds int(m / 10 * 110) below 128: 3 -> 33, 20 -> 220.
  np.testing.assert_array_equal(_op(x, 'SolarizeAdd', 3), np.where(x < 128, x + 33, x))
  np.testing.assert_array_equal(_op(x, 'SolarizeAdd', 20),
                                np.where(x < 128, np.minimum(x + 220, 255), x))
  # Enhance factor m / 10 * 1.8 + 0.1: 5 -> 1 (unchanged), 15 -> 2.8, 20 -> 3.7.
  np.testing.assert_allclose(_op(x, 'Brightness', 5), x)
  np.testing.assert_allclose(_op(x, 'Brightness', 20), np.clip(3.7 * x, 0, 255), rtol=1e-6)
  grey = (x @ np.float32([0.2989, 0.587, 0.114]))[..., None]
  np.testing.assert_allclose(_op(x, 'Color', 15), np.clip(grey + 2.8 * (x - grey), 0, 255),
                             atol=1e-3)
  mean = grey.mean()  # of the whole clip
  np.testing.assert_allclose(_op(x, 'Contrast', 20), np.clip(mean + 3.7 * (x - mean), 0, 255),
                             atol=1e-3)
  smooth = sum(np.roll(x, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
  smooth = (smooth + 4 * x) / 13
  smooth[:, [0, -1]], smooth[:, :, [0, -1]] = x[:, [0, -1]], x[:, :, [0, -1]]
  np.testing.assert_allclose(_op(x, 'Sharpness', 15), np.clip(smooth + 2.8 * (x - smooth), 0, 255),
                             atol=1e-3)


def test_equalize_and_autocontrast_use_the_whole_clip_like_pil_on_stacked_frames():
  x = _clip()
  tall = Image.fromarray(x.reshape(-1, x.shape[2], 3).astype(np.uint8))
  equalized = np.asarray(ImageOps.equalize(tall)).reshape(x.shape)
  np.testing.assert_array_equal(_op(x, 'Equalize', 20), equalized)
  # PIL truncates to integers, the float version does not.
  contrasted = np.asarray(ImageOps.autocontrast(tall)).reshape(x.shape)
  assert np.abs(_op(x, 'AutoContrast', 20) - contrasted).max() < 1
  # Frame by frame, the mapping would differ.
  alone = np.asarray(ImageOps.equalize(Image.fromarray(x[0].astype(np.uint8))))
  assert np.abs(alone - equalized[0]).mean() > 5


def test_geometric_ops_rotate_and_translate_every_frame_with_grey_fill():
  x = _clip()
  # Rotate by m / 10 * 30 degrees, either way: 30 -> a quarter turn.
  rotated = _op(x, 'Rotate', 30)
  assert any(np.array_equal(rotated, np.rot90(x, k, axes=(1, 2))) for k in (1, -1))
  # Translate by m / 10 * 100 pixels, either way: 1 -> 10.
  for name, axis in (('TranslateX', 2), ('TranslateY', 1)):
    moved = _op(x, name, 1)
    assert any(np.array_equal(moved, _shift(x, pixels, axis)) for pixels in (10, -10)), name


def test_cutout_zeroes_the_same_square_in_every_frame():
  x = _clip()
  for seed in SEEDS[:6]:
    # A square of side 2 * int(m / 10 * 40) = 16 at m = 2, cut where it leaves the frame.
    holes = _op(x, 'Cutout', 2, seed) == 0
    assert (holes == holes[:1]).all()
    rows, cols = (np.flatnonzero(holes[0, :, :, 0].any(axis)) for axis in (1, 0))
    assert holes.sum() == x.shape[0] * len(rows) * len(cols) * 3
    assert holes[0, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    for side in (rows, cols):
      assert len(side) == 16 or (8 <= len(side) < 16 and (side[0] == 0 or side[-1] == 31))


@pytest.mark.parametrize('name', transforms.RANDAUGMENT_OPS)
def test_every_frame_gets_the_same_op_and_parameters(name):
  still = np.repeat(_clip(frames=1), 4, axis=0)
  video = _clip()
  for seed in SEEDS[:3]:
    out = _op(still, name, 3, seed)
    np.testing.assert_array_equal(out, np.repeat(out[:1], 4, axis=0))
    if name not in CLIP_STATISTICS:
      per_frame = np.concatenate([_op(video[i:i + 1], name, 3, seed) for i in range(4)])
      np.testing.assert_array_equal(_op(video, name, 3, seed), per_frame)


def test_op_index_tensor_selects_the_named_op():
  x = _clip()
  for index, name in enumerate(transforms.RANDAUGMENT_OPS):
    np.testing.assert_array_equal(_op(x, tf.constant(index), 15), _op(x, name, 15))


def test_randaugment_is_the_same_on_every_frame_of_a_still_clip():
  still = np.repeat(_clip(frames=1), 4, axis=0)
  for seed in SEEDS[:8]:
    out = transforms.randaugment(still, 2, 20, seed, ops=transforms.RANDAUGMENT_OPS).numpy()
    np.testing.assert_array_equal(out, np.repeat(out[:1], 4, axis=0))


def test_randaugment_is_deterministic_per_seed():
  x = _clip()
  out = transforms.randaugment(x, 2, 20, SEED).numpy()
  np.testing.assert_array_equal(out, transforms.randaugment(x, 2, 20, SEED).numpy())
  others = {transforms.randaugment(x, 2, 20, seed).numpy().tobytes() for seed in SEEDS}
  assert len(others) >= 8


def test_magnitude_20_changes_most_clips_and_geometric_ops_keep_them_at_0():
  x = _clip()
  changes = [np.abs(transforms.randaugment(x, 2, 20, seed).numpy() - x).mean() for seed in SEEDS]
  assert sum(change > 2 for change in changes) >= 12, changes
  for name in GEOMETRIC:
    np.testing.assert_array_equal(_op(x, name, 0), x)
    assert np.abs(_op(x, name, 20) - x).mean() > 5, name


def test_randaugment_shape_dtype_and_range():
  x = _clip()
  x[0, :2] = -20.0
  x[1, :2] = 300.0
  for magnitude in (0, 15, 20, 30):
    for seed in SEEDS[:6]:
      out = transforms.randaugment(x, 3, magnitude, seed, ops=transforms.RANDAUGMENT_OPS)
      assert out.shape == x.shape and out.dtype == tf.float32
      assert 0 <= out.numpy().min() and out.numpy().max() <= 255
  np.testing.assert_array_equal(transforms.randaugment(x, 0, 20, SEED), np.clip(x, 0, 255))


def test_randaugment_runs_in_graph_mode_with_unknown_frame_size():
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)
  graph = tf.function(lambda video: transforms.randaugment(
      video, 2, 15, SEED, ops=transforms.RANDAUGMENT_OPS), input_signature=[spec])
  x = _clip(frames=3, size=20)
  np.testing.assert_array_equal(
      graph(x), transforms.randaugment(x, 2, 15, SEED, ops=transforms.RANDAUGMENT_OPS))


@pytest.mark.parametrize('num_layers, magnitude', [
    (-1, 10), (1.5, 10), (2, -1), (2, 30.5), (2, float('nan'))])
def test_bad_arguments_are_refused(num_layers, magnitude):
  with pytest.raises(ValueError):
    transforms.randaugment(_clip(), num_layers, magnitude, SEED)


def test_bad_ops_are_refused():
  for ops in ((), ('Rotate', 'Blur')):
    with pytest.raises(ValueError, match='ops'):
      transforms.randaugment(_clip(), 2, 10, SEED, ops=ops)
  with pytest.raises(ValueError, match='Blur'):
    transforms.apply_op(_clip(), 'Blur', 10, SEED)
  with pytest.raises(ValueError, match='magnitude'):
    transforms.apply_op(_clip(), 'Invert', 31, SEED)


def _train_view(video, seed, **kwargs):
  return transforms.train_view(video, num_frames=4, stride=2, min_resize=16, crop_size=16,
                               scale_range=(1.0, 1.25), flip=True, seed=seed, **kwargs)


def _train_view_by_hand(video, seed, randaugment):
  """`_train_view` from its parts: RandAugment after the flip (the colour, after it,
  is the device's)."""
  offset_seed, crop_seed, flip_seed, randaugment_seed = transforms.split_seed(seed, 4)
  count = tf.shape(video)[0]
  offset = transforms.random_offset(count, 4, 2, offset_seed)
  stored = tf.shape(video)[1:3]
  y, x = transforms.train_crop_positions(stored, min_resize=16, crop_size=16,
                                         scale_range=(1.0, 1.25), seed=crop_seed)
  x = transforms.flip_positions(x, flip_seed)
  top, size = transforms.crop_window(stored, y, x)
  window = tf.gather(video, transforms.clip_indices(count, 4, 2, offset))
  window = window[:, top[0]:top[0] + size[0], top[1]:top[1] + size[1]]
  top = tf.cast(top, tf.float32)
  video = transforms.resample(window, y - top[0], x - top[1])
  if randaugment:
    video = transforms.randaugment(video, *randaugment, seed=randaugment_seed)
  return transforms.to_pixels(video)


def _uint8_video(seed, frames=10, height=24, width=30):
  return np.random.RandomState(seed).randint(0, 256, (frames, height, width, 3)).astype(np.uint8)


def test_train_view_applies_randaugment_after_the_flip():
  for i, seed in enumerate(SEEDS[:4]):
    video = _uint8_video(i)
    plain = _train_view(video, seed)
    np.testing.assert_array_equal(plain, _train_view_by_hand(video, seed, None))
    augmented = _train_view(video, seed, randaugment=(2, 20))
    np.testing.assert_array_equal(augmented, _train_view_by_hand(video, seed, (2, 20)))


def test_train_view_with_randaugment_in_a_tf_data_map():
  videos = [_uint8_video(i, height=24 + 2 * i, width=30 - i) for i in range(6)]
  spec = tf.TensorSpec([None, None, None, 3], tf.uint8)

  def views(randaugment):
    ds = tf.data.Dataset.from_generator(lambda: iter(videos), output_signature=spec)
    ds = ds.enumerate().map(lambda i, video: _train_view(
        video, tf.stack([tf.constant(5, tf.int64), i]), randaugment=randaugment))
    return list(ds.as_numpy_iterator())

  augmented, plain = views((2, 20)), views(None)
  for view in augmented:
    assert view.shape == (4, 16, 16, 3) and view.dtype == np.uint8
  assert sum(np.abs(a.astype(int) - p).mean() > 2.5 for a, p in zip(augmented, plain)) >= 4


@pytest.mark.parametrize('randaugment', [(2,), 20, '2,20', (2, 31), (-1, 10)])
def test_train_view_refuses_bad_randaugment(randaugment):
  with pytest.raises(ValueError):
    _train_view(_uint8_video(0), SEED, randaugment=randaugment)
