"""RandAugment on clips: one op per layer for the whole clip, on scenic's magnitude scale."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from vivit.input import randaugment

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
  return randaugment.apply_op(video, name, magnitude, seed).numpy()


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


@pytest.mark.parametrize('name', randaugment.RANDAUGMENT_OPS)
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
  for index, name in enumerate(randaugment.RANDAUGMENT_OPS):
    np.testing.assert_array_equal(_op(x, tf.constant(index), 15), _op(x, name, 15))


def test_randaugment_is_the_same_on_every_frame_of_a_still_clip():
  still = np.repeat(_clip(frames=1), 4, axis=0)
  for seed in SEEDS[:8]:
    out = randaugment.randaugment(still, 2, 20, seed, ops=randaugment.RANDAUGMENT_OPS).numpy()
    np.testing.assert_array_equal(out, np.repeat(out[:1], 4, axis=0))


def test_randaugment_is_deterministic_per_seed():
  x = _clip()
  out = randaugment.randaugment(x, 2, 20, SEED).numpy()
  np.testing.assert_array_equal(out, randaugment.randaugment(x, 2, 20, SEED).numpy())
  others = {randaugment.randaugment(x, 2, 20, seed).numpy().tobytes() for seed in SEEDS}
  assert len(others) >= 8


def test_magnitude_20_changes_most_clips_and_geometric_ops_keep_them_at_0():
  x = _clip()
  changes = [np.abs(randaugment.randaugment(x, 2, 20, seed).numpy() - x).mean() for seed in SEEDS]
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
      out = randaugment.randaugment(x, 3, magnitude, seed, ops=randaugment.RANDAUGMENT_OPS)
      assert out.shape == x.shape and out.dtype == tf.float32
      assert 0 <= out.numpy().min() and out.numpy().max() <= 255
  np.testing.assert_array_equal(randaugment.randaugment(x, 0, 20, SEED), np.clip(x, 0, 255))


def test_randaugment_runs_in_graph_mode_with_unknown_frame_size():
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)
  graph = tf.function(lambda video: randaugment.randaugment(
      video, 2, 15, SEED, ops=randaugment.RANDAUGMENT_OPS), input_signature=[spec])
  x = _clip(frames=3, size=20)
  np.testing.assert_array_equal(
      graph(x), randaugment.randaugment(x, 2, 15, SEED, ops=randaugment.RANDAUGMENT_OPS))


@pytest.mark.parametrize('num_layers, magnitude, message', [
    (-1, 10, r'num_layers must be an integer >= 0, got -1'),
    (1.5, 10, r'num_layers must be an integer >= 0, got 1\.5'),
    (2, -1, r'magnitude must be in \[0, 30\], got -1\.0'),
    (2, 30.5, r'magnitude must be in \[0, 30\], got 30\.5'),
    (2, float('nan'), r'magnitude must be in \[0, 30\], got nan')])
def test_bad_arguments_are_refused(num_layers, magnitude, message):
  with pytest.raises(ValueError, match=message):
    randaugment.randaugment(_clip(), num_layers, magnitude, SEED)
  with pytest.raises(ValueError, match=message):
    randaugment.check_arguments(num_layers, magnitude)


def test_bad_ops_are_refused():
  for ops in ((), ('Rotate', 'Blur')):
    with pytest.raises(ValueError, match='ops'):
      randaugment.randaugment(_clip(), 2, 10, SEED, ops=ops)
  with pytest.raises(ValueError, match='Blur'):
    randaugment.apply_op(_clip(), 'Blur', 10, SEED)
  with pytest.raises(ValueError, match='magnitude'):
    randaugment.apply_op(_clip(), 'Invert', 31, SEED)
