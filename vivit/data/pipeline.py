"""tf.data input pipelines over TFDS video datasets, one shard per host.

Training batches are a pure function of (seed, step): epoch `e` shuffles with seed
`seed + e` and every example's augmentation seed is (seed, e, example id), so a
resumed run sees exactly the batches the uninterrupted run would have.

Batches are host-local numpy dicts:
  train: video `[batch, time, height, width, 3]` float32 in [-1, 1], label `[batch]`
  eval:  video `[batch, views, time, height, width, 3]`, label, mask `[batch]`
         (mask 0 marks padding in the last batch).
"""
import functools
from typing import Dict, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vivit.data import transforms
from vivit.data.synthetic import SyntheticMotion

# Datasets generated locally on first use (no download).
LOCAL_BUILDERS = {'synthetic_motion': SyntheticMotion}


def get_builder(dataset_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder, generating embedded datasets on first use."""
  name, data_dir = dataset_config.name, dataset_config.get('data_dir')
  base_name, _, builder_config = name.partition('/')
  if base_name in LOCAL_BUILDERS:
    builder = LOCAL_BUILDERS[base_name](data_dir=data_dir, config=builder_config or None)
    if not builder.is_prepared():
      if jax.process_index() == 0:
        print(f'generating {name} in {builder.data_dir} ...', flush=True)
      builder.download_and_prepare()
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


def sync_model_config(config: ml_collections.ConfigDict, num_classes: int) -> None:
  """The model is built for the clips the data pipeline produces."""
  ds = config.dataset
  config.model.input_size = (ds.num_frames, ds.crop_size, ds.crop_size)
  if config.model.num_classes != num_classes:
    raise ValueError(f'model.num_classes={config.model.num_classes} but dataset '
                     f'{ds.name} has {num_classes} classes')


def open_dataset(config: ml_collections.ConfigDict, *splits: str):
  """Checks that `splits` exist and fits `config.model` to the data.

  Returns (label feature, number of examples per split)."""
  builder = get_builder(config.dataset)
  label = builder.info.features['label']
  sizes = [check_split(builder, split) for split in splits]
  sync_model_config(config, label.num_classes)
  return label, sizes


def _read(builder, split: str):
  """This host's shard of `split`, in a fixed order, as (id, video, label); and its
  number of examples."""
  check_split(builder, split)
  host_split = tfds.split_for_jax_process(split)
  ds = builder.as_dataset(split=host_split, shuffle_files=False,
                          read_config=tfds.ReadConfig(interleave_cycle_length=1))
  ds = ds.enumerate().map(lambda i, ex: (i, ex['video'], ex['label']))
  return ds, builder.info.splits[host_split].num_examples


def _shuffle_time(video, seed, axis: int):
  """Frames in a random order (`dataset.shuffle_frames`, for ablations): the same
  permutation for every view of a clip."""
  order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(video)[axis]), seed)
  return tf.gather(video, order, axis=axis)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 2
  return options


def train_batches(dataset_config: ml_collections.ConfigDict, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless augmented training batches of `batch_size` (this host's share),
  starting at global step `start_step`."""
  builder = get_builder(dataset_config)
  base, examples = _read(builder, dataset_config.train_split)
  if dataset_config.get('cache', True):
    base = base.cache()
  steps_per_epoch = examples // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'split {dataset_config.train_split} has {examples} examples on this '
                     f'host, fewer than one batch of {batch_size}')
  view = functools.partial(
      transforms.train_view, num_frames=dataset_config.num_frames,
      stride=dataset_config.stride, min_resize=dataset_config.min_resize,
      crop_size=dataset_config.crop_size, scale_range=tuple(dataset_config.scale_jitter),
      flip=dataset_config.flip, colour_strength=dataset_config.colour_jitter)
  shuffle_frames = dataset_config.get('shuffle_frames', False)
  epoch, skip = divmod(start_step, steps_per_epoch)
  while True:
    def augment(index, video, label, epoch=epoch):
      example_seed = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + epoch,
                               tf.cast(index, tf.int64)])
      video = view(video, seed=example_seed)
      if shuffle_frames:
        video = _shuffle_time(video, example_seed, axis=0)
      return {'video': video, 'label': tf.cast(label, tf.int32)}
    ds = base.shuffle(min(examples, dataset_config.shuffle_buffer), seed=seed + epoch,
                      reshuffle_each_iteration=False)
    ds = ds.skip(skip * batch_size)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2).with_options(_options())
    yield from ds.as_numpy_iterator()
    epoch, skip = epoch + 1, 0


def eval_batches(dataset_config: ml_collections.ConfigDict, split: str, batch_size: int,
                 num_clips: int = 1, num_crops: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """One pass over `split` with `num_clips x num_crops` views per video; the last
  batch is padded (mask 0) to keep shapes static."""
  builder = get_builder(dataset_config)
  views = functools.partial(
      transforms.test_views, num_frames=dataset_config.num_frames,
      stride=dataset_config.stride, min_resize=dataset_config.min_resize,
      crop_size=dataset_config.crop_size, num_clips=num_clips, num_crops=num_crops)
  shuffle_frames = dataset_config.get('shuffle_frames', False)

  def prepare(index, video, label):
    video = views(video)
    if shuffle_frames:
      video = _shuffle_time(video, tf.stack([tf.constant(-1, tf.int64), index]), axis=1)
    return {'video': video, 'label': tf.cast(label, tf.int32), 'mask': tf.constant(1.0)}

  ds = _read(builder, split)[0].map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size).prefetch(2).with_options(_options())
  for batch in ds.as_numpy_iterator():
    missing = batch_size - len(batch['label'])
    if missing:
      batch = {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch
