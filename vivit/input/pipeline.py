"""tf.data input pipelines: training and evaluation batches of a dataset's `Source`.

Batches are host-local numpy dicts:
  train: video `[batch, time, height, width, 3]` uint8 pixels, label `[batch]`
         (`[batch, heads]` with several label keys), and the fields of the
         augmentation ops (`vivit.input.augment`): with colour augmentation on,
         colour `[batch, 6]`: each clip's draws, applied on the device by the train
         step (`vivit.colour.augment_colour`)
  eval:  video `[batch, views, time, height, width, 3]`, label, mask `[batch]`
         (mask 0 marks padding in the last batch).
"""
import functools
from typing import Dict, Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from vivit import datasets
from vivit.input import augment, crop, dmvr, sampling, sources


def open_source(dataset_config: ml_collections.ConfigDict, split: str) -> sources.Source:
  """The `Source` of `split`: DMVR tfrecords (`dataset.format=dmvr`) or a TFDS dataset."""
  keys = dataset_config.label_key  # one head per key
  keys = (keys,) if isinstance(keys, str) else tuple(keys)
  if dataset_config.format == 'dmvr':
    return dmvr.DmvrSource(dataset_config.data_dir, split, dataset_config.shuffle_buffer,
                           keys)
  builder = datasets.get_builder(dataset_config.name, dataset_config.data_dir)
  return sources.TfdsSource(builder, split, keys, dataset_config.num_threads)


def _shuffle_time(video, seed, axis: int):
  """Frames in a random order (`dataset.shuffle_frames`, for ablations): the same
  permutation for every view of a clip."""
  order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(video)[axis]), seed)
  return tf.gather(video, order, axis=axis)


def _batches(dataset_config, stream: sources.Stream, prepare, batch_size: int,
             drop_remainder: bool) -> Iterator[Dict[str, np.ndarray]]:
  """This host's rows of batches of `prepare(key, serialized)` over the stream, as numpy;
  the feeder runs from the first (a generator never advanced leaves no thread behind)."""
  num_threads = dataset_config.num_threads  # 0: one per core
  ds = stream.dataset.map(prepare, num_parallel_calls=num_threads or tf.data.AUTOTUNE,
                          deterministic=True)
  ds = ds.batch(sources.host_rows(batch_size)[1], drop_remainder=drop_remainder)
  options = tf.data.Options()
  options.deterministic = True
  if num_threads:
    options.threading.private_threadpool_size = num_threads
  ds = ds.prefetch(2).with_options(options)

  def numpy_batches():
    stream.start()
    try:
      yield from ds.as_numpy_iterator()
    finally:
      stream.stop()
  return numpy_batches()


def train_example(video, dataset_config: ml_collections.ConfigDict,
                  seed) -> Dict[str, tf.Tensor]:
  """One augmented training example of `video` (`[time, height, width, 3]` uint8 or
  `[time]` JPEG strings): the training view (`crop.train_view`), then the
  augmentation ops the config names (`augment`). `seed` is the example's [2] seed.

  Returns {'video': uint8 `[num_frames, crop, crop, 3]`, and each field of the ops
  that write one (colour: `[6]`)}.
  """
  ops = augment.configured_ops(dataset_config)
  clip = crop.train_view(
      video, num_frames=dataset_config.num_frames, stride=dataset_config.stride,
      min_resize=dataset_config.min_resize, crop_size=dataset_config.crop_size,
      scale_range=tuple(dataset_config.scale_jitter), flip=dataset_config.flip,
      seed=augment.view_seed(seed), resample=dataset_config.resample,
      rounded=not augment.changes_pixels(ops))
  return augment.apply_ops(ops, clip, seed)


def train_batches(dataset_config: ml_collections.ConfigDict, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless augmented training batches: this host's rows of global batches of
  `batch_size`, starting at global step `start_step`. Batch `s` is a pure function
  of (seed, s): nothing before `start_step` is read to resume, and the global batch
  is the same on any number of hosts (TFDS data; DMVR tfrecords are read in whole
  files per host)."""
  # ConfigErrors raised here, not in tf.data's tracing:
  augment.configured_ops(dataset_config)
  crop.check_resample(dataset_config.resample)
  source = open_source(dataset_config, dataset_config.train_split)

  def prepare(position, serialized):
    video, label = source.parse(serialized)
    example_seed = tf.stack([tf.constant(sources.stream_seed(seed), tf.int64), position])
    example = train_example(video, dataset_config, example_seed)
    example['label'] = tf.cast(label, tf.int32)
    if dataset_config.shuffle_frames:
      example['video'] = _shuffle_time(example['video'], example_seed, axis=0)
    return example

  return _batches(dataset_config, source.train_stream(seed, batch_size, start_step),
                  prepare, batch_size, drop_remainder=True)


def eval_batches(dataset_config: ml_collections.ConfigDict, split: str, batch_size: int,
                 num_clips: int = 1, num_crops: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """One pass over `split` with `num_clips x num_crops` views per video: this host's
  rows of global batches of `batch_size`; every host yields the same number of
  batches, padding rows with mask 0 (shapes stay static)."""
  source = open_source(dataset_config, split)
  views = functools.partial(
      sampling.eval_views, num_frames=dataset_config.num_frames,
      stride=dataset_config.stride, min_resize=dataset_config.min_resize,
      crop_size=dataset_config.crop_size, num_clips=num_clips, num_crops=num_crops)

  def prepare(index, serialized):
    video, label = source.parse(serialized)
    video = views(video)
    if dataset_config.shuffle_frames:
      video = _shuffle_time(video, tf.stack([tf.constant(-1, tf.int64), index]), axis=1)
    return {'video': video, 'label': tf.cast(label, tf.int32),
            'mask': tf.cast(index >= 0, tf.float32)}

  yield from _batches(dataset_config, source.eval_stream(batch_size), prepare, batch_size,
                      drop_remainder=False)
