"""Reading DMVR-style tfrecords, the format scenic's video datasets use.

Each record is a `tf.train.SequenceExample` with the class index in the context
feature `clip/label/index` (int64) and one JPEG per frame in the feature list
`image/encoded`. Train on such files with
  --config.dataset.format=dmvr --config.dataset.data_dir='/data/k400/{split}.tfrecord@1024'
where `{split}` becomes the split name and `NAME@N` means scenic's shards
`NAME-00000-of-0000N` (a glob such as `/data/k400/{split}*` also works).

Tfrecords cannot be read by index: every split is counted once per process (a read
of all its records), training streams them through a shuffle buffer of
`dataset.shuffle_buffer` serialized examples (whole files per host), and resuming
skips the records of the current epoch already seen: it reads but does not decode
them.
"""
import functools
import glob
import os
import re
from typing import List, Tuple

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


@functools.lru_cache(maxsize=None)
def _count(paths: Tuple[str, ...]) -> int:
  return int(tf.data.TFRecordDataset(list(paths)).reduce(
      tf.constant(0, tf.int64), lambda count, _: count + 1))


def num_examples(pattern: str, split: str) -> int:
  """Records in `split`: counted (tfrecords have no index), once per process."""
  return _count(tuple(files(pattern, split)))


class Records:
  """This host's share of one split's records (whole files per host)."""

  def __init__(self, pattern: str, split: str, shuffle_buffer: int):
    every = files(pattern, split)
    self._files = every[jax.process_index()::jax.process_count()]
    if not self._files:
      raise ValueError(f'{len(every)} files of split {split} cannot be shared between '
                       f'{jax.process_count()} hosts')
    self.num_examples = _count(tuple(self._files))
    self._shuffle_buffer = shuffle_buffer

  @staticmethod
  def parse(serialized):
    """(video `[time]` JPEG strings, label)."""
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={LABEL: tf.io.FixedLenFeature([], tf.int64)},
        sequence_features={FRAMES: tf.io.FixedLenSequenceFeature([], tf.string)})
    return sequence[FRAMES], context[LABEL]

  def train_stream(self, seed: int, batch_size: int, start_step: int):
    """(stream position, serialized) from step `start_step` on. Epoch `e` is the
    first `steps_per_epoch * batch_size` records of this host's files, interleaved
    and shuffled through the buffer with a seed of (seed, host, e); a resumed run
    skips the records of the current epoch before `start_step`."""
    from vivit.data.pipeline import Stream, host_seed
    steps_per_epoch = self.num_examples // batch_size
    first_epoch, skip = divmod(start_step, steps_per_epoch)
    files = tf.data.Dataset.from_tensor_slices(self._files)
    seed = host_seed(seed)

    def epoch_records(epoch):
      records = files.interleave(tf.data.TFRecordDataset,
                                 cycle_length=min(len(self._files), 16),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return (records.shuffle(self._shuffle_buffer, seed=seed * 100_003 + epoch)
              .take(steps_per_epoch * batch_size))

    records = (tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch_records)
               .skip(skip * batch_size))
    positions = tf.data.Dataset.range(start_step * batch_size, 2 ** 62)
    return Stream(tf.data.Dataset.zip(positions, records))

  def in_order(self):
    """(index, serialized) file after file."""
    from vivit.data.pipeline import Stream
    records = tf.data.TFRecordDataset(self._files)
    return Stream(tf.data.Dataset.zip(tf.data.Dataset.range(2 ** 62), records))
