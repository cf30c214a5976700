"""Sources: one split of a dataset as the serialized examples each host reads.

`TfdsSource` reads TFDS ArrayRecord files by index: every epoch is a stateless
permutation, so training batch `s` is a pure function of (seed, s) on any number of
hosts, and a resumed run reads nothing before it. `dmvr.DmvrSource` streams tfrecords.
"""
import abc
import os
import threading
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vivit.errors import DataError

READ_CHUNK = 4  # examples a feeder thread reads (in one batched read) and enqueues at once
IN_MEMORY_BYTES = 512 * 2 ** 20  # a host's share of a split up to this is kept in memory


def stream_seed(seed: int) -> int:
  """The seed of the training stream's shuffle and augmentation (the same on every
  host: batch `s` does not depend on how many hosts read it)."""
  return seed * 1_000_003


def host_rows(global_batch: int) -> Tuple[int, int]:
  """(first row, rows) of a global batch that this host reads: hosts read
  consecutive slices, in process order, which is the order of their devices in the
  mesh's batch axis."""
  rows = global_batch // jax.process_count()
  return jax.process_index() * rows, rows


class Stream(NamedTuple):
  """(key, serialized example) pairs as a tf.data dataset, and how to start and stop
  whatever feeds it."""
  dataset: tf.data.Dataset
  start: Callable[[], None] = lambda: None
  stop: Callable[[], None] = lambda: None


def _fed_by_thread(chunks: Iterator[Tuple[np.ndarray, List[bytes]]],
                   count: Optional[int], capacity: int) -> Stream:
  """A dataset of the (key, serialized) pairs of `chunks` (`count` of them, None:
  endless), read by a Python thread and handed over through a TF queue of
  `capacity` examples: no Python runs inside tf.data, so an iterator can be deleted
  at any time (a py_function waiting for the GIL would deadlock that)."""
  queue = tf.queue.FIFOQueue(capacity, [tf.int64, tf.string], shapes=[[], []])
  failure = []

  def feed():
    try:
      for keys, records in chunks:
        queue.enqueue_many((keys, tf.constant(records, tf.string)))
    except (tf.errors.CancelledError, tf.errors.AbortedError):
      return  # stopped
    except Exception as e:  # pylint: disable=broad-except
      failure.append(e)
    try:
      queue.close()
    except tf.errors.CancelledError:
      pass  # stopped meanwhile: already closed

  thread = threading.Thread(target=feed, name='vivit-records-feeder', daemon=True)
  items = tf.data.Dataset.range(2 ** 62 if count is None else count)
  dataset = items.map(lambda _: queue.dequeue(), num_parallel_calls=1)

  def stop():
    queue.close(cancel_pending_enqueues=True)
    if failure:
      raise failure[0]
  return Stream(dataset, thread.start, stop)


class Source(abc.ABC):
  """One split of a dataset as (key, serialized example) streams of this host's rows."""
  split: str
  num_examples: int  # in the split, on all hosts together
  label_keys: Tuple[str, ...]  # the features predicted: ('label',), or e.g. ('noun', 'verb')

  @abc.abstractmethod
  def class_names(self, num_classes: Optional[int]) -> Tuple[Tuple[str, ...], ...]:
    """The class names of each label key; `num_classes` (None: unset) where files have none."""

  @abc.abstractmethod
  def parse(self, serialized) -> Tuple[tf.Tensor, tf.Tensor]:
    """(video `[time]` JPEG strings or `[time, height, width, 3]` uint8, label:
    scalar, or `[heads]` for several label keys)."""

  @abc.abstractmethod
  def train_stream(self, seed: int, global_batch: int, start_step: int) -> Stream:
    """(global stream position, serialized) of every global batch from `start_step` on."""

  @abc.abstractmethod
  def eval_stream(self, global_batch: int) -> Stream:
    """(index, serialized) of this host's rows of one pass over the split; index -1
    marks padding, so that every host runs the same number of batches."""


class _JpegFrames(tfds.decode.SkipDecoding):
  """A Video feature's frames as their stored JPEG strings, `[time]`: SkipDecoding
  without the identity it maps over every frame (`tf.map_fn`, 250 steps of graph
  loop for a 10 s clip: 60 % of parsing a record)."""

  def decode_batch_example(self, serialized_example):
    return serialized_example


class TfdsSource(Source):
  """One split of a TFDS ArrayRecord dataset, read by index. A small split is held
  in memory; a large one is read by a thread as the pipeline goes."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str,
               label_keys: Tuple[str, ...], num_threads: int):
    splits, base = builder.info.splits, split.split('[')[0]
    if base not in splits:
      raise DataError(f'dataset {builder.name} has no split {base!r}; available: '
                      f'{", ".join(sorted(splits))}')
    self.split, self.num_examples = split, splits[split].num_examples
    self._builder, self.label_keys = builder, label_keys
    # Enough read-ahead to keep every decoding thread busy.
    self._queue_capacity = 2 * (num_threads or os.cpu_count())

  def class_names(self, num_classes: Optional[int]) -> Tuple[Tuple[str, ...], ...]:
    del num_classes  # the dataset names its classes
    features = self._builder.info.features
    available = [name for name, feature in features.items()
                 if isinstance(feature, tfds.features.ClassLabel)]
    for key in self.label_keys:
      if key not in available:
        raise DataError(f'dataset {self._builder.name} has no label {key!r}; set '
                        f'dataset.label_key to one (or a tuple) of: '
                        f'{", ".join(available)}')
    return tuple(tuple(features[key].names) for key in self.label_keys)

  def parse(self, serialized):
    features = self._builder.info.features
    decoders = ({'video': _JpegFrames()}
                if isinstance(features['video'], tfds.features.Video) else None)
    example = features.deserialize_example(serialized, decoders=decoders)
    labels = [example[key] for key in self.label_keys]
    return example['video'], labels[0] if len(labels) == 1 else tf.stack(labels)

  def _read(self, keyed_indices: tf.data.Dataset, count: Optional[int]) -> Stream:
    """(key, serialized example) for each (key, int64 index), in order."""
    records = self._builder.as_data_source(
        self.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    whole = self._builder.info.splits[self.split.split('[')[0]]  # a slice reports no bytes
    if whole.num_bytes * len(records) / max(whole.num_examples, 1) <= IN_MEMORY_BYTES:
      in_memory = tf.constant([records[i] for i in range(len(records))])
      return Stream(keyed_indices.map(lambda key, index: (key, tf.gather(in_memory, index))))
    # One batched read per chunk: ArrayRecord reads its records in parallel threads
    # without the GIL, where indexing one at a time reads them in turn.
    chunks = ((keys, records.__getitems__([int(i) for i in indices]))
              for keys, indices in keyed_indices.batch(READ_CHUNK).as_numpy_iterator())
    return _fed_by_thread(chunks, count, self._queue_capacity)

  def train_stream(self, seed: int, global_batch: int, start_step: int) -> Stream:
    """Every epoch is a fresh permutation of the split (seeded by `seed` and the
    epoch), of which the first `steps_per_epoch * global_batch` examples are used;
    global batch `s` is its slots `[s * B, (s+1) * B)`, whatever the number of hosts."""
    steps_per_epoch = self.num_examples // global_batch
    if not steps_per_epoch:
      raise DataError(f'split {self.split} has {self.num_examples} examples, fewer '
                      f'than one batch of {global_batch}')
    seed = stream_seed(seed)
    last = self.num_examples - 1
    first_row, rows = host_rows(global_batch)

    def example_index(local):
      step = start_step + local // rows
      row = first_row + local % rows
      epoch = step // steps_per_epoch
      slot = (step % steps_per_epoch) * global_batch + row
      return step * global_batch + row, tf.random.experimental.index_shuffle(
          slot, tf.stack([tf.constant(seed, tf.int64), epoch]), last)

    return self._read(tf.data.Dataset.range(2 ** 62).map(example_index), None)

  def eval_stream(self, global_batch: int) -> Stream:
    """`ceil(examples / global_batch)` global batches over the split in order; rows
    past the end repeat the last example (index -1)."""
    count = self.num_examples
    first_row, rows = host_rows(global_batch)
    total = -(-count // global_batch) * rows  # this host's rows of every batch

    def example_index(local):
      index = (local // rows) * global_batch + first_row + local % rows
      return tf.where(index < count, index, -1), tf.minimum(index, count - 1)

    return self._read(tf.data.Dataset.range(total).map(example_index), total)
