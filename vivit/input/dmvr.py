"""DMVR-style tfrecords, the format scenic's video datasets use.

Each record is a `tf.train.SequenceExample` with the class index in the context
feature `clip/label/index` (int64) and one JPEG per frame in the feature list
`image/encoded`. Train on such files with
  --config.dataset.format=dmvr --config.dataset.data_dir='/data/k400/{split}.tfrecord@1024'
where `{split}` becomes the split name and `NAME@N` means scenic's shards
`NAME-00000-of-0000N` (a glob such as `/data/k400/{split}*` also works).
Tfrecords cannot be read by index: every split is counted once per process, and
resuming reads (without decoding) the records of the current epoch already seen.
"""
import functools
import glob
import os
import re
from typing import List, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf

from vivit.errors import ConfigError, DataError, MissingError
from vivit.input.sources import Source, Stream, host_rows, stream_seed

LABEL = 'clip/label/index'
FRAMES = 'image/encoded'


def files(pattern: str, split: str) -> List[str]:
  """The tfrecord files of `split` for a `{split}` pattern (sharded `@N` or glob)."""
  if not pattern or '{split}' not in pattern:
    raise ConfigError(f'dataset.data_dir for format dmvr must contain {{split}}, e.g. '
                      f'/data/k400/{{split}}.tfrecord@1024; got {pattern!r}')
  path = pattern.format(split=split)
  sharded = re.fullmatch(r'(.*)@(\d+)(\.[^/]*)?', path)
  if sharded:
    base, count, extension = sharded.group(1), int(sharded.group(2)), sharded.group(3) or ''
    width = max(5, len(str(count)))
    found = [f'{base}-{i:0{width}d}-of-{count:0{width}d}{extension}' for i in range(count)]
    missing = [f for f in found if not os.path.exists(f)]
    if missing:
      raise MissingError(f'{len(missing)} of the {count} shards of {path} are '
                         f'missing, e.g. {missing[0]}')
    return found
  found = sorted(glob.glob(path))
  if not found:
    raise MissingError(f'no tfrecord files match {path}')
  return found


@functools.lru_cache(maxsize=None)
def _count(paths: Tuple[str, ...]) -> int:
  return int(tf.data.TFRecordDataset(list(paths)).reduce(
      tf.constant(0, tf.int64), lambda count, _: count + 1))


def num_examples(pattern: str, split: str) -> int:
  """Records in `split`: counted (tfrecords have no index), once per process."""
  return _count(tuple(files(pattern, split)))


class DmvrSource(Source):
  """One split of DMVR tfrecords; each host reads whole files (no random access: unlike
  TFDS data, the batches depend on the number of hosts)."""

  def __init__(self, pattern: str, split: str, shuffle_buffer: int,
               label_keys: Tuple[str, ...]):
    self._every = files(pattern, split)
    hosts = jax.process_count()
    self._shares = [tuple(self._every[h::hosts]) for h in range(hosts)]
    self._own = self._shares[jax.process_index()]
    if not self._own:
      raise DataError(f'{len(self._every)} files of split {split} cannot be shared '
                      f'between {hosts} hosts')
    self.split, self._shuffle_buffer, self.label_keys = split, shuffle_buffer, label_keys

  @property
  def num_examples(self) -> int:
    return _count(tuple(self._every))

  def class_names(self, num_classes: Optional[int]) -> Tuple[Tuple[str, ...], ...]:
    if len(self.label_keys) > 1:
      raise ConfigError(f'dataset.format=dmvr reads one label (clip/label/index), not '
                        f'dataset.label_key={self.label_keys}')
    if num_classes is None:
      raise ConfigError('dataset.format=dmvr files do not say how many classes there '
                        'are: set model.num_classes')
    return (tuple(str(i) for i in range(num_classes)),)

  @staticmethod
  def parse(serialized):
    """(video `[time]` JPEG strings, label)."""
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={LABEL: tf.io.FixedLenFeature([], tf.int64)},
        sequence_features={FRAMES: tf.io.FixedLenSequenceFeature([], tf.string)})
    return sequence[FRAMES], context[LABEL]

  def train_stream(self, seed: int, global_batch: int, start_step: int) -> Stream:
    """Epoch `e` is the first `steps_per_epoch * host batch` records of this host's
    files, interleaved and shuffled through the buffer with a seed of (seed, host,
    e); a resumed run skips the records of the current epoch before `start_step`."""
    first_row, batch_size = host_rows(global_batch)
    steps_per_epoch = _count(self._own) // batch_size
    counts = [_count(share) for share in self._shares]  # every host refuses alike
    if min(counts) < batch_size:
      host = int(np.argmin(counts))
      raise DataError(
          f'host {host} has {counts[host]} records of split {self.split} in its '
          f'{len(self._shares[host])} of the {len(self._every)} files, fewer than its '
          f'{batch_size} rows of a batch: rewrite the split in more, evenly filled files')
    first_epoch, skip = divmod(start_step, steps_per_epoch)
    files = tf.data.Dataset.from_tensor_slices(list(self._own))
    seed = stream_seed(seed) + jax.process_index()

    def epoch_records(epoch):
      records = files.interleave(tf.data.TFRecordDataset,
                                 cycle_length=min(len(self._own), 16),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return (records.shuffle(self._shuffle_buffer, seed=seed * 100_003 + epoch)
              .take(steps_per_epoch * batch_size))

    records = (tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch_records)
               .skip(skip * batch_size))
    # Global stream positions (the augmentation seeds): distinct across hosts.
    positions = tf.data.Dataset.range(2 ** 62).map(
        lambda local: ((start_step + local // batch_size) * global_batch + first_row
                       + local % batch_size))
    return Stream(tf.data.Dataset.zip(positions, records))

  def eval_stream(self, global_batch: int) -> Stream:
    """File after file, then padding (the split's first record; a host whose files
    are empty pads only) up to the number of batches the largest host share needs."""
    rows = host_rows(global_batch)[1]
    largest_share = max(_count(share) for share in self._shares)  # counted once, cached
    total = -(-largest_share // rows) * rows
    records = tf.data.TFRecordDataset(list(self._own))
    indices = tf.data.Dataset.range(_count(self._own)).concatenate(
        tf.data.Dataset.from_tensors(tf.constant(-1, tf.int64)).repeat())
    padded = records.concatenate(tf.data.TFRecordDataset(self._every).take(1).repeat())
    return Stream(tf.data.Dataset.zip(indices, padded).take(total))
