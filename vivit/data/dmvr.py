"""Reading DMVR-style tfrecords, the format scenic's video datasets use.

Each record is a `tf.train.SequenceExample` with the class index in the context
feature `clip/label/index` (int64) and one JPEG per frame in the feature list
`image/encoded`. Train on such files with
  --config.dataset.format=dmvr --config.dataset.data_dir='/data/k400/{split}.tfrecord@1024'
where `{split}` becomes the split name and `NAME@N` means scenic's shards
`NAME-00000-of-0000N` (a glob such as `/data/k400/{split}*` also works).

Tfrecords cannot be read by index: training streams them through a shuffle buffer
of `dataset.shuffle_buffer` serialized examples (files are split between hosts), and
resuming skips the records already seen, which reads but does not decode them.
"""
import glob
import os
import re
from typing import List

import jax
import tensorflow as tf

LABEL = 'clip/label/index'
FRAMES = 'image/encoded'


def files(pattern: str, split: str) -> List[str]:
  """The tfrecord files of `split` for a `{split}` pattern (sharded `@N` or glob)."""
  if not pattern or '{split}' not in pattern:
    raise ValueError(f'dataset.data_dir for format dmvr must contain {{split}}, e.g. '
                     f'/data/k400/{{split}}.tfrecord@1024; got {pattern!r}')
  path = pattern.format(split=split)
  sharded = re.fullmatch(r'(.*)@(\d+)(\.[^/]*)?', path)
  if sharded:
    base, count, extension = sharded.group(1), int(sharded.group(2)), sharded.group(3) or ''
    width = max(5, len(str(count)))
    found = [f'{base}-{i:0{width}d}-of-{count:0{width}d}{extension}' for i in range(count)]
    missing = [f for f in found if not os.path.exists(f)]
    if missing:
      raise FileNotFoundError(f'{len(missing)} of the {count} shards of {path} are '
                              f'missing, e.g. {missing[0]}')
    return found
  found = sorted(glob.glob(path))
  if not found:
    raise FileNotFoundError(f'no tfrecord files match {path}')
  return found


def _count(paths: List[str]) -> int:
  return int(tf.data.TFRecordDataset(paths).reduce(
      tf.constant(0, tf.int64), lambda count, _: count + 1))


def num_examples(pattern: str, split: str) -> int:
  """Records in `split` (counted: tfrecords have no index)."""
  return _count(files(pattern, split))


class Records:
  """This host's share of one split's records (whole files per host)."""

  def __init__(self, pattern: str, split: str, shuffle_buffer: int):
    every = files(pattern, split)
    self._files = every[jax.process_index()::jax.process_count()]
    if not self._files:
      raise ValueError(f'{len(every)} files of split {split} cannot be shared between '
                       f'{jax.process_count()} hosts')
    self.num_examples = _count(self._files)
    self._shuffle_buffer = shuffle_buffer

  @staticmethod
  def parse(serialized):
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={LABEL: tf.io.FixedLenFeature([], tf.int64)},
        sequence_features={FRAMES: tf.io.FixedLenSequenceFeature([], tf.string)})
    return sequence[FRAMES], context[LABEL]

  def train_stream(self, seed: int, batch_size: int, start_step: int,
                   num_threads: int) -> tf.data.Dataset:
    host_seed = seed * 1_000_003 + jax.process_index()
    files = tf.data.Dataset.from_tensor_slices(self._files)
    records = (files.interleave(tf.data.TFRecordDataset,
                                cycle_length=min(len(self._files), 16),
                                num_parallel_calls=num_threads, deterministic=True)
               .shuffle(self._shuffle_buffer, seed=host_seed, reshuffle_each_iteration=True)
               .repeat().skip(start_step * batch_size))
    positions = tf.data.Dataset.range(start_step * batch_size, 2 ** 62)
    return tf.data.Dataset.zip(positions, records)

  def in_order(self, num_threads: int) -> tf.data.Dataset:
    """(index, serialized) file after file."""
    del num_threads
    records = tf.data.TFRecordDataset(self._files)
    return tf.data.Dataset.zip(tf.data.Dataset.range(2 ** 62), records)
