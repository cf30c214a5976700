"""The training augmentation ops (vivit.input.augment): the registry, the ops the
config names, their order and seeds, and the two ops it holds (RandAugment, the
colour draws)."""
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from vivit.errors import ConfigError
from vivit.input import augment, crop, pipeline, randaugment, sampling
from vivit.recipes import base_config

SEED = tf.constant([3, 7], tf.int64)
SEEDS = [tf.constant([11, s], tf.int64) for s in range(16)]


def _dataset_config(**overrides):
  config = base_config().dataset
  config.update(num_frames=4, stride=2, min_resize=16, crop_size=16,
                scale_jitter=(1.0, 1.25), flip=True, colour_augment=0.0, colour_drop=0.0)
  config.update(overrides)
  return config


def _train_example(video, seed, **overrides):
  example = pipeline.train_example(tf.constant(video), _dataset_config(**overrides), seed)
  return {key: value.numpy() for key, value in example.items()}


def _uint8_video(seed, frames=10, height=24, width=30):
  return np.random.RandomState(seed).randint(0, 256, (frames, height, width, 3)).astype(np.uint8)


def _by_hand(video, example_seed, randaugment_settings=None, after=None):
  """`_train_example` from its parts and the seed tree: the view (the crop's start,
  crop and flip), then RandAugment (then `after`, on float pixels), then rounding."""
  view_seed, _ = sampling.split_seed(example_seed, 2)
  randaugment_seed = sampling.split_seed(view_seed, 4)[3]
  video = crop.train_view(tf.constant(video), num_frames=4, stride=2, min_resize=16,
                          crop_size=16, scale_range=(1.0, 1.25), flip=True, seed=view_seed,
                          rounded=False)
  if randaugment_settings:
    video = randaugment.randaugment(video, *randaugment_settings, seed=randaugment_seed)
  if after:
    video = after(video)
  return sampling.to_pixels(video).numpy()


def test_randaugment_runs_on_the_crop_after_the_flip():
  for i, seed in enumerate(SEEDS[:4]):
    video = _uint8_video(i)
    plain = _train_example(video, seed)
    assert set(plain) == {'video'}
    np.testing.assert_array_equal(plain['video'], _by_hand(video, seed))
    augmented = _train_example(video, seed, randaugment=(2, 20))
    np.testing.assert_array_equal(augmented['video'], _by_hand(video, seed, (2, 20)))


def test_randaugment_in_a_tf_data_map():
  videos = [_uint8_video(i, height=24 + 2 * i, width=30 - i) for i in range(6)]
  spec = tf.TensorSpec([None, None, None, 3], tf.uint8)

  def views(randaugment_settings):
    config = _dataset_config(randaugment=randaugment_settings)
    ds = tf.data.Dataset.from_generator(lambda: iter(videos), output_signature=spec)
    ds = ds.enumerate().map(lambda i, video: pipeline.train_example(
        video, config, tf.stack([tf.constant(5, tf.int64), i]))['video'])
    return list(ds.as_numpy_iterator())

  augmented, plain = views((2, 20)), views(None)
  for view in augmented:
    assert view.shape == (4, 16, 16, 3) and view.dtype == np.uint8
  assert sum(np.abs(a.astype(int) - p).mean() > 2.5 for a, p in zip(augmented, plain)) >= 4


@pytest.mark.parametrize('settings, message', [
    ((2,), r'randaugment must be None or \(num_layers, magnitude\), got \(2,\)'),
    ((2, 20, 1), r'randaugment must be None or \(num_layers, magnitude\), got \(2, 20, 1\)'),
    ((2, 31), r'RandAugment magnitude must be in \[0, 30\], got 31\.0'),
    ((-1, 10), r'RandAugment num_layers must be an integer >= 0, got -1')])
def test_bad_randaugment_settings_are_refused(settings, message):
  with pytest.raises(ConfigError, match=message):
    _train_example(_uint8_video(0), SEED, randaugment=settings)
  with pytest.raises(ConfigError, match=message):
    augment.configured_ops(_dataset_config(randaugment=settings))


@pytest.mark.parametrize('settings', [20, '2,20'])
def test_randaugment_settings_that_are_not_a_pair_are_refused(settings):
  """The base config's field holds tuples only; a config without that type (made by
  hand) is refused by the op."""
  with pytest.raises(TypeError, match=r"cannot be casted to type <class 'tuple'>"):
    _dataset_config(randaugment=settings)
  untyped = ml_collections.ConfigDict(dict(augment_ops=('randaugment',), randaugment=None))
  untyped.randaugment = settings
  with pytest.raises(ConfigError, match=f'randaugment must be None or '
                                        fr'\(num_layers, magnitude\), got {settings!r}'):
    augment.configured_ops(untyped)


def test_colour_draws_follow_scenics_ranges_and_probabilities():
  """Brightness +-32/255, saturation and contrast x 0.6..1.4, hue +-0.2; jitter with
  probability 0.8, grey with 0.1."""
  draws = np.stack([augment.colour_draws(0.8, 0.1, tf.constant([s, 5])).numpy()
                    for s in range(400)])
  jitter, drop, brightness, saturation, contrast, hue = draws.T
  assert set(np.unique(jitter)) == {0, 1} and set(np.unique(drop)) == {0, 1}
  assert 0.75 < jitter.mean() < 0.85 and 0.06 < drop.mean() < 0.14
  for values, low, high in ((brightness, -32 / 255, 32 / 255), (saturation, 0.6, 1.4),
                            (contrast, 0.6, 1.4), (hue, -0.2, 0.2)):
    assert low <= values.min() < low + 0.05 * (high - low)
    assert high - 0.05 * (high - low) < values.max() <= high


def test_colour_writes_the_draws_of_the_colour_seed_and_leaves_the_pixels():
  """Either probability above 0 turns the op on; its draws come from the second
  half of the example's seed, and the clip is the one without colour."""
  video = _uint8_video(1)
  for seed in SEEDS[:3]:
    plain = _train_example(video, seed)
    colour_seed = sampling.split_seed(seed, 2)[1]
    for probability, drop in ((0.8, 0.1), (0.0, 0.3), (0.5, 0.0)):
      example = _train_example(video, seed, colour_augment=probability, colour_drop=drop)
      assert example['colour'].shape == (6,) and example['colour'].dtype == np.float32
      np.testing.assert_array_equal(example['colour'],
                                    augment.colour_draws(probability, drop, colour_seed))
      np.testing.assert_array_equal(example['video'], plain['video'])


def test_only_the_ops_the_config_names_run():
  video = _uint8_video(2)
  on = dict(randaugment=(2, 20), colour_augment=0.8, colour_drop=0.1)
  plain = _train_example(video, SEED)
  for unset in ((), None, (None,)):
    example = _train_example(video, SEED, augment_ops=unset, **on)
    assert set(example) == {'video'}
    np.testing.assert_array_equal(example['video'], plain['video'])
  colour_only = _train_example(video, SEED, augment_ops=('colour',), **on)
  np.testing.assert_array_equal(colour_only['video'], plain['video'])
  np.testing.assert_array_equal(colour_only['colour'], augment.colour_draws(
      0.8, 0.1, sampling.split_seed(SEED, 2)[1]))
  randaugment_only = _train_example(video, SEED, augment_ops=('randaugment',), **on)
  assert set(randaugment_only) == {'video'}
  np.testing.assert_array_equal(randaugment_only['video'], _by_hand(video, SEED, (2, 20)))
  # A config made by hand may name one op by a string.
  untyped = ml_collections.ConfigDict(dict(augment_ops='colour', **on))
  assert [op.name for op, _ in augment.configured_ops(untyped)] == ['colour']


@pytest.mark.parametrize('colour', [dict(colour_augment=0.8, colour_drop=0.1),
                                    dict(colour_augment=0.0, colour_drop=0.2)])
def test_randaugment_with_colour_is_refused_as_scenic_runs_only_one(colour):
  """scenic's `additional_augmentations` runs RandAugment and drops colour (jitter and
  drop) when a config asks for both; here such a config is a one-line error."""
  config = _dataset_config(randaugment=(2, 20), **colour)
  with pytest.raises(ConfigError, match=(
      rf"^dataset\.randaugment=\(2, 20\) and colour augmentation \(colour_augment="
      rf"{colour['colour_augment']}, colour_drop={colour['colour_drop']}\) are both on; "
      r"scenic runs only RandAugment then: set dataset\.colour_augment=0 and "
      r"dataset\.colour_drop=0, or dataset\.randaugment=None$")):
    augment.configured_ops(config)
  with pytest.raises(ConfigError, match='are both on'):
    next(pipeline.train_batches(config, 2, seed=0))


def test_an_unknown_op_is_a_one_line_config_error_naming_the_known_ones():
  with pytest.raises(ConfigError, match=r"^unknown augmentation op 'blur' in "
                                        r"dataset\.augment_ops; known: randaugment, colour$"):
    augment.configured_ops(_dataset_config(augment_ops=('randaugment', 'blur')))


def test_the_default_ops_are_the_registered_ones_in_the_order_they_run():
  assert base_config().dataset.augment_ops == augment.names() == ('randaugment', 'colour')
  for settings, names in ((dict(randaugment=(2, 15)), ['randaugment']),
                          (dict(colour_augment=0.8), ['colour'])):
    assert [op.name for op, _ in augment.configured_ops(_dataset_config(**settings))] == names


def test_a_new_op_is_one_registered_function(monkeypatch):
  """What the module docstring promises: a pixel op gets float pixels after the
  ops registered before it, a field op the final uint8 clip; each draws from its
  `named_seed`, and adding them changes no other op's draws."""
  monkeypatch.setattr(augment, '_OPS', dict(augment._OPS))

  @augment.register('invert')
  def invert(clip, settings, seed):
    assert clip.dtype == tf.float32 and settings == ()
    return 255.0 - clip

  @augment.register('probe', settings=lambda config: config.crop_size, field='probe')
  def probe(clip, settings, seed):
    assert clip.dtype == tf.uint8
    return tf.concat([seed, [tf.cast(tf.reduce_max(clip), tf.int64), settings]], 0)

  assert augment.names() == ('randaugment', 'colour', 'invert', 'probe')
  video = _uint8_video(3)
  after = _train_example(video, SEED, augment_ops=('probe', 'invert', 'randaugment'),
                         randaugment=(2, 20))
  np.testing.assert_array_equal(
      after['video'], _by_hand(video, SEED, (2, 20), after=lambda clip: 255.0 - clip))
  coloured = _train_example(video, SEED, augment_ops=('probe', 'invert', 'colour'),
                            colour_augment=0.8, colour_drop=0.1)
  np.testing.assert_array_equal(coloured['colour'], _train_example(
      video, SEED, colour_augment=0.8, colour_drop=0.1)['colour'])
  np.testing.assert_array_equal(coloured['video'],
                                _by_hand(video, SEED, after=lambda clip: 255.0 - clip))
  np.testing.assert_array_equal(after['probe'][:2], augment.named_seed(SEED, 'probe'))
  assert after['probe'][2:].tolist() == [after['video'].max(), 16]
  assert not np.array_equal(augment.named_seed(SEED, 'probe'),
                            augment.named_seed(SEED, 'invert'))
  with pytest.raises(ValueError, match="augmentation op 'invert' is registered twice"):
    augment.register('invert')(invert)
