"""tf.data input pipelines (vivit.input.pipeline): training batches that resume
anywhere, evaluation batches padded to whole batches, read from memory or by a
thread alike."""
import threading
import time

import numpy as np
import pytest

from vivit import datasets
from vivit.errors import ConfigError
from vivit.input import pipeline, sources
from vivit.recipes import base_config


def tiny_dataset_config(data_dir, **overrides):
  config = base_config().dataset
  config.update(name='synthetic_motion/tiny', data_dir=str(data_dir), num_frames=4,
                stride=2, min_resize=16, crop_size=16, scale_jitter=(1.0, 1.25),
                flip=False, colour_augment=0.8, colour_drop=0.1, num_threads=2)
  config.update(overrides)
  return config


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


def test_a_config_error_of_the_augmentation_is_raised_when_the_batches_are_made(data_dir):
  """Not wrapped in tf.data's tracing error: the one-line ConfigError itself."""
  config = tiny_dataset_config(data_dir, augment_ops=('randaugment', 'blur'))
  with pytest.raises(ConfigError, match=r"^unknown augmentation op 'blur' in "
                                        r"dataset\.augment_ops; known: randaugment, colour$"):
    pipeline.train_batches(config, 8, seed=0)
  config = tiny_dataset_config(data_dir, randaugment=(2, 31))
  with pytest.raises(ConfigError, match=r'^RandAugment magnitude must be in \[0, 30\], got 31\.0$'):
    pipeline.train_batches(config, 8, seed=0)


def test_train_batches_hold_the_augmentation_ops_fields(data_dir):
  """Colour on: each row's draws beside its clip; off: no colour field."""
  batch = next(pipeline.train_batches(tiny_dataset_config(data_dir), 8, seed=1))
  assert sorted(batch) == ['colour', 'label', 'video'] and batch['colour'].shape == (8, 6)
  assert batch['video'].dtype == np.uint8
  off = next(pipeline.train_batches(tiny_dataset_config(data_dir, colour_augment=0.0,
                                                        colour_drop=0.0), 8, seed=1))
  assert sorted(off) == ['label', 'video']
  np.testing.assert_array_equal(off['video'], batch['video'])
