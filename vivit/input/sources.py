"""tf.data input pipelines over video datasets, one shard per host.

Examples are read by index from TFDS ArrayRecord files, still serialized (a
prepared video is a list of JPEG frames): every epoch is a stateless random
permutation of this host's examples, and only the frames a clip uses are decoded.
Training batch `s` is a pure function of (seed, host, s), so a resumed run sees
exactly the batches the uninterrupted run would have without reading the ones
before. Host memory is bounded by the batches in flight, not by the dataset.
DMVR-style tfrecords (scenic's format) stream through `vivit.data.dmvr` instead.

Batches are host-local numpy dicts:
  train: video `[batch, time, height, width, 3]` uint8 pixels, label `[batch]`
         (`[batch, heads]` with several label keys)
  eval:  video `[batch, views, time, height, width, 3]`, label, mask `[batch]`
         (mask 0 marks padding in the last batch).
"""
import contextlib
import functools
import io
import os
import threading
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vivit import cli
from vivit.data import transforms
from vivit.data.synthetic import SyntheticMotion  # importing vivit.data registers the rest

# Datasets generated locally on first use (no download).
LOCAL_BUILDERS = {'synthetic_motion': SyntheticMotion}


def get_builder(dataset_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder, generating embedded datasets on first use."""
  name, data_dir = dataset_config.name, dataset_config.get('data_dir')
  base_name, _, builder_config = name.partition('/')
  if base_name in LOCAL_BUILDERS:
    builder = LOCAL_BUILDERS[base_name](data_dir=data_dir, config=builder_config or None)
    if not builder.is_prepared():
      if jax.process_index() == 0:  # one writer; the other hosts wait for it
        print(f'generating {name} in {builder.data_dir} ...', flush=True)
        with contextlib.ExitStack() as stack:
          if not cli.verbose():  # TFDS's own lines say the same at more length
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
          builder.download_and_prepare()
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f'generated {name}')
        builder = LOCAL_BUILDERS[base_name](data_dir=data_dir,
                                            config=builder_config or None)
    return builder
  hint = ('prepare it in TFDS format first, or point --config.dataset.data_dir at the '
          'directory that holds it')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise FileNotFoundError(f'dataset {name} is not prepared under {data_dir}; {hint}'
                            ) from None
  if not builder.is_prepared():
    raise FileNotFoundError(f'dataset {name} is not prepared under {builder.data_dir}; '
                            f'{hint}')
  return builder


def check_split(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Number of examples in `split`; ValueError naming the available splits."""
  splits = builder.info.splits
  base = split.split('[')[0]
  if base not in splits:
    raise ValueError(f'dataset {builder.name} has no split {base!r}; available: '
                     f'{", ".join(sorted(splits))}')
  return splits[split].num_examples


class Labels(NamedTuple):
  """What a model predicts: one or several label features (Epic-Kitchens: noun and
  verb), each with its class names. The model's output concatenates one block of
  logits per feature, in this order (`heads`)."""
  keys: Tuple[str, ...]
  names: Tuple[Tuple[str, ...], ...]

  @property
  def num_classes(self) -> int:
    return sum(len(names) for names in self.names)

  @property
  def heads(self) -> Optional[Tuple[Tuple[str, int], ...]]:
    """((key, classes), ...) of a multi-head model; None for one label."""
    if len(self.keys) == 1:
      return None
    return tuple((key, len(names)) for key, names in zip(self.keys, self.names))

  @property
  def names_by_head(self):
    """The names as checkpoints keep them: a list, or {key: names} per head."""
    if len(self.keys) == 1:
      return list(self.names[0])
    return {key: list(names) for key, names in zip(self.keys, self.names)}

  @property
  def class_names(self) -> List[str]:
    """A name per output: `key:name` where there are several heads."""
    if len(self.keys) == 1:
      return list(self.names[0])
    return [f'{key}:{name}' for key, names in zip(self.keys, self.names) for name in names]


def sync_model_config(config: ml_collections.ConfigDict, labels: Labels) -> None:
  """The model is built for the clips and labels the data pipeline produces.

  `dataset.num_frames` / `crop_size` None: the model's input size; `model.num_classes`
  None: the dataset's."""
  ds = config.dataset
  frames, height, _ = config.model.input_size
  ds.num_frames = ds.num_frames or frames
  ds.crop_size = ds.crop_size or height
  ds.min_resize = ds.min_resize or int(round(ds.crop_size * 256 / 224))
  config.model.input_size = (ds.num_frames, ds.crop_size, ds.crop_size)
  if config.model.num_classes is None:
    config.model.num_classes = labels.num_classes
  if config.model.num_classes != labels.num_classes:
    raise ValueError(f'model.num_classes={config.model.num_classes} but dataset '
                     f'{ds.name} has {labels.num_classes} classes'
                     + (f' ({" + ".join(str(n) for _, n in labels.heads)})'
                        if labels.heads else ''))
  splits = optional_tuple(ds.get('class_splits'))
  if splits and splits != tuple(n for _, n in labels.heads or ()):
    raise ValueError(f'dataset.class_splits={tuple(splits)} but the label features '
                     f'{labels.keys} have {tuple(len(n) for n in labels.names)} classes')


def optional_tuple(value) -> Optional[tuple]:
  """A tuple config field that may be unset: None, `()` and `(None,)` (what
  `--config.x=None` makes of a tuple field) are all unset."""
  if not value or tuple(value) == (None,):
    return None
  return tuple(value)


def label_keys(dataset_config: ml_collections.ConfigDict) -> Tuple[str, ...]:
  """The features that training predicts: ('label',), or e.g. Epic-Kitchens'
  ('noun', 'verb') (one classification head each)."""
  keys = dataset_config.get('label_key') or 'label'
  return (keys,) if isinstance(keys, str) else tuple(keys)


def open_dataset(config: ml_collections.ConfigDict, *splits: str):
  """Checks that `splits` exist and fits `config.model` to the data.

  Returns (Labels, number of examples per split)."""
  keys = label_keys(config.dataset)
  if config.dataset.get('format', 'tfds') == 'dmvr':
    from vivit.data import dmvr
    if len(keys) > 1:
      raise ValueError(f'dataset.format=dmvr reads one label (clip/label/index), not '
                       f'dataset.label_key={keys}')
    if config.model.num_classes is None:
      raise ValueError('dataset.format=dmvr files do not say how many classes there '
                       'are: set model.num_classes')
    labels = Labels(keys, (tuple(str(i) for i in range(config.model.num_classes)),))
    sizes = [dmvr.num_examples(config.dataset.data_dir, split) for split in splits]
  else:
    builder = get_builder(config.dataset)
    available = [name for name, feature in builder.info.features.items()
                 if isinstance(feature, tfds.features.ClassLabel)]
    for key in keys:
      if key not in available:
        raise ValueError(f'dataset {builder.name} has no label {key!r}; set '
                         f'dataset.label_key to one (or a tuple) of: '
                         f'{", ".join(available)}')
    labels = Labels(keys, tuple(tuple(builder.info.features[key].names) for key in keys))
    sizes = [check_split(builder, split) for split in splits]
  sync_model_config(config, labels)
  return labels, sizes


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


READ_CHUNK = 4  # examples a feeder thread reads and enqueues at once
IN_MEMORY_BYTES = 512 * 2 ** 20  # a host's share of a split up to this is kept in memory


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


class Records:
  """One split as serialized examples, read by index from a TFDS ArrayRecord
  dataset (random access: a shuffle needs no buffer, a resumed run reads nothing it
  has already seen, and every host reads just its rows of each global batch). A
  small split is held in memory; a large one is read by a thread as the pipeline
  goes."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str,
               label_keys: Tuple[str, ...], num_threads: int):
    check_split(builder, split)
    # Enough read-ahead to keep every decoding thread busy.
    self._queue_capacity = 2 * (num_threads or os.cpu_count())
    self._source = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    self.num_examples = len(self._source)
    self.split = split
    self._in_memory = None
    whole = builder.info.splits[split.split('[')[0]]  # a slice reports no bytes
    split_bytes = whole.num_bytes * self.num_examples / max(whole.num_examples, 1)
    if split_bytes <= IN_MEMORY_BYTES:
      self._in_memory = tf.constant([self._source[i] for i in range(self.num_examples)])
    features = builder.info.features
    decoders = ({'video': tfds.decode.SkipDecoding()}
                if isinstance(features['video'], tfds.features.Video) else None)
    self._parse = lambda serialized: features.deserialize_example(
        serialized, decoders=decoders)
    self._label_keys = label_keys

  def parse(self, serialized):
    """(video `[time]` JPEG strings or `[time, height, width, 3]` uint8, label:
    scalar, or `[heads]` for several label keys)."""
    example = self._parse(serialized)
    labels = [example[key] for key in self._label_keys]
    return example['video'], labels[0] if len(labels) == 1 else tf.stack(labels)

  def _read(self, keyed_indices: tf.data.Dataset, count: Optional[int]) -> Stream:
    """(key, serialized example) for each (key, int64 index), in order."""
    if self._in_memory is not None:
      return Stream(keyed_indices.map(
          lambda key, index: (key, tf.gather(self._in_memory, index))))
    chunks = ((keys, [self._source[int(i)] for i in indices])
              for keys, indices in keyed_indices.batch(READ_CHUNK).as_numpy_iterator())
    return _fed_by_thread(chunks, count, self._queue_capacity)

  def train_stream(self, seed: int, global_batch: int, start_step: int) -> Stream:
    """(global stream position, serialized) of this host's rows of every global
    batch from step `start_step` on. Every epoch is a fresh permutation of the
    split (seeded by `seed` and the epoch), of which the first `steps_per_epoch *
    global_batch` examples are used; global batch `s` is its slots `[s * B, (s+1) *
    B)`, whatever the number of hosts."""
    steps_per_epoch = self.num_examples // global_batch
    if not steps_per_epoch:
      raise ValueError(f'split {self.split} has {self.num_examples} examples, fewer '
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
    """(index, serialized) of this host's rows of `ceil(examples / global_batch)`
    global batches over the split in order; rows past the end repeat the last
    example with index -1 (padding), so every host runs the same number of steps."""
    count = self.num_examples
    first_row, rows = host_rows(global_batch)
    batches = -(-count // global_batch)

    def example_index(local):
      index = (local // rows) * global_batch + first_row + local % rows
      return tf.where(index < count, index, -1), tf.minimum(index, count - 1)

    positions = tf.data.Dataset.range(batches * rows).map(example_index)
    return self._read(positions, batches * rows)


def _numpy_batches(dataset: tf.data.Dataset, stream: Stream) -> Iterator[Dict[str, np.ndarray]]:
  """The batches of `dataset`; the stream's feeder runs while they are taken (it
  starts with the first, so a generator never advanced leaves no thread behind)."""
  stream.start()
  try:
    yield from dataset.as_numpy_iterator()
  finally:
    stream.stop()


def open_records(dataset_config: ml_collections.ConfigDict, split: str):
  """`Records` (or `dmvr.Records`) of this host's share of `split`."""
  if dataset_config.get('format', 'tfds') == 'dmvr':
    from vivit.data import dmvr
    return dmvr.Records(dataset_config.data_dir, split, dataset_config.shuffle_buffer)
  return Records(get_builder(dataset_config), split, label_keys(dataset_config),
                 dataset_config.get('num_threads') or 0)


def _shuffle_time(video, seed, axis: int):
  """Frames in a random order (`dataset.shuffle_frames`, for ablations): the same
  permutation for every view of a clip."""
  order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(video)[axis]), seed)
  return tf.gather(video, order, axis=axis)


def _options(num_threads: int) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  if num_threads:
    options.threading.private_threadpool_size = num_threads
  return options


def _threads(dataset_config) -> int:
  """`dataset.num_threads` (0: one per core) as a parallelism for tf.data maps."""
  return dataset_config.get('num_threads') or tf.data.AUTOTUNE


def train_batches(dataset_config: ml_collections.ConfigDict, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless augmented training batches: this host's rows of global batches of
  `batch_size`, starting at global step `start_step`. Batch `s` is a pure function
  of (seed, s): nothing before `start_step` is read to resume, and the global batch
  is the same on any number of hosts (TFDS data; DMVR tfrecords are read in whole
  files per host)."""
  records = open_records(dataset_config, dataset_config.train_split)
  view = functools.partial(
      transforms.train_view, num_frames=dataset_config.num_frames,
      stride=dataset_config.stride, min_resize=dataset_config.min_resize,
      crop_size=dataset_config.crop_size, scale_range=tuple(dataset_config.scale_jitter),
      flip=dataset_config.flip, colour_probability=dataset_config.colour_augment,
      colour_drop=dataset_config.colour_drop,
      randaugment=optional_tuple(dataset_config.get('randaugment')))
  shuffle_frames = dataset_config.get('shuffle_frames', False)
  augment_seed = stream_seed(seed)

  def augment(position, serialized):
    video, label = records.parse(serialized)
    example_seed = tf.stack([tf.constant(augment_seed, tf.int64), position])
    video = view(video, seed=example_seed)
    if shuffle_frames:
      video = _shuffle_time(video, example_seed, axis=0)
    return {'video': video, 'label': tf.cast(label, tf.int32)}

  threads = _threads(dataset_config)
  stream = records.train_stream(seed, batch_size, start_step)
  ds = stream.dataset.map(augment, num_parallel_calls=threads, deterministic=True)
  ds = ds.batch(host_rows(batch_size)[1], drop_remainder=True).prefetch(2)
  return _numpy_batches(ds.with_options(_options(dataset_config.get('num_threads'))),
                        stream)


def eval_batches(dataset_config: ml_collections.ConfigDict, split: str, batch_size: int,
                 num_clips: int = 1, num_crops: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """One pass over `split` with `num_clips x num_crops` views per video: this host's
  rows of global batches of `batch_size`; every host yields the same number of
  batches, padding rows with mask 0 (shapes stay static)."""
  records = open_records(dataset_config, split)
  views = functools.partial(
      transforms.test_views, num_frames=dataset_config.num_frames,
      stride=dataset_config.stride, min_resize=dataset_config.min_resize,
      crop_size=dataset_config.crop_size, num_clips=num_clips, num_crops=num_crops)
  shuffle_frames = dataset_config.get('shuffle_frames', False)

  def prepare(index, serialized):
    video, label = records.parse(serialized)
    video = views(video)
    if shuffle_frames:
      video = _shuffle_time(video, tf.stack([tf.constant(-1, tf.int64), index]), axis=1)
    return {'video': video, 'label': tf.cast(label, tf.int32),
            'mask': tf.cast(index >= 0, tf.float32)}

  threads = _threads(dataset_config)
  stream = records.eval_stream(batch_size)
  ds = stream.dataset.map(prepare, num_parallel_calls=threads, deterministic=True)
  ds = ds.batch(host_rows(batch_size)[1]).prefetch(2)
  ds = ds.with_options(_options(dataset_config.get('num_threads')))
  yield from _numpy_batches(ds, stream)
