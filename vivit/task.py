"""What a run solves and with which model: the model config resolved from the
checkpoint, the workdir and the data; the dataset and eval settings an evaluation
takes from its workdir; the labels and their heads; the evaluation's resize rule."""
import json
from typing import Callable, Collection, List, NamedTuple, Optional, Tuple

import ml_collections
import tensorflow_datasets as tfds
from etils import epath

from vivit.errors import CheckpointError, ConfigError, DataError
from vivit.input.pipeline import open_source
from vivit.recipes import base_config
from vivit.workdir import load_model_config, read_record


class Labels(NamedTuple):
  """What a model predicts: one or several label features (Epic-Kitchens: noun and
  verb), each with its class names. The model's output concatenates one block of
  logits per feature, in this order (`label_heads`)."""
  keys: Tuple[str, ...]
  names: Tuple[Tuple[str, ...], ...]

  @property
  def num_classes(self) -> int:
    return sum(len(names) for names in self.names)

  @property
  def label_heads(self) -> Optional[Tuple[Tuple[str, int], ...]]:
    """((key, classes), ...) of a multi-head model; None for one label."""
    return (tuple((key, len(names)) for key, names in zip(self.keys, self.names))
            if len(self.keys) > 1 else None)

  @property
  def names_by_head(self):
    """The names as checkpoints keep them: a list, or {key: names} per head."""
    by_head = {key: list(names) for key, names in zip(self.keys, self.names)}
    return by_head if len(self.keys) > 1 else by_head[self.keys[0]]

  @property
  def class_names(self) -> List[str]:
    """A name per output: `key:name` where there are several heads."""
    several = len(self.keys) > 1
    return [f'{key}:{name}' if several else name
            for key, names in zip(self.keys, self.names) for name in names]


def min_resize(crop_size: int) -> int:
  """The short side clips are resized to for `crop_size` crops (ImageNet's 256/224)."""
  return int(round(crop_size * 256 / 224))


def resolve_model(config: ml_collections.ConfigDict, workdir: Optional[epath.PathLike],
                  checkpoint_model: Optional[Callable[[], ml_collections.ConfigDict]] = None
                  ) -> None:
  """Sets `config.model` to the model a run uses, the first of: the model `workdir`
  recorded when its training began (a run keeps its model), `checkpoint_model()` (the
  model of a checkpoint the run takes it from), the config's own. `open_dataset` then
  fits its clip size and classes to the data."""
  stored = load_model_config(workdir) if workdir is not None else None
  if stored is not None:
    config.model = stored
  elif checkpoint_model is not None:
    config.model = checkpoint_model().copy_and_resolve_references()


def workdir_dataset(path: epath.PathLike) -> Optional[ml_collections.ConfigDict]:
  """The dataset section a training workdir ran with (its config.json, over the base
  config's defaults); None for any other checkpoint."""
  path = epath.Path(path)
  if not ((path / 'model_config.json').exists() and (path / 'config.json').exists()):
    return None
  dataset = base_config().dataset
  dataset.update(json.loads((path / 'config.json').read_text()).get('dataset', {}))
  return dataset


# The sections of a training workdir's config.json that its evaluation takes, and
# the fields of them named first where they change.
EVAL_SECTIONS = ('dataset', 'eval')
NAMED_FIRST = ('dataset.name', 'dataset.data_dir', 'dataset.format', 'dataset.label_key',
               'dataset.test_split', 'eval.num_clips', 'eval.num_crops')


def take_workdir_settings(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                          overrides: Collection[str] = ()) -> List[str]:
  """Sets the dataset and eval sections of `config` to those `workdir`'s training ran
  with (its config.json), but for the fields named in `overrides` (`dataset.name`: the
  command line's `--config.dataset.name`); nothing where `workdir` is no training
  workdir. Returns the fields changed, as `field=value`, those in NAMED_FIRST first."""
  path = epath.Path(workdir)
  if not ((path / 'model_config.json').exists() and (path / 'config.json').exists()):
    return []
  config_file = path / 'config.json'
  stored = read_record(config_file, 'a run config')
  changed = []
  for section in EVAL_SECTIONS:
    values = stored.get(section) if isinstance(stored, dict) else None
    for field, value in (values.items() if isinstance(values, dict) else ()):
      name = f'{section}.{field}'
      if name in overrides or field not in config[section]:
        continue
      value = tuple(value) if isinstance(value, list) else value
      if value == config[section][field]:
        continue
      try:
        config[section][field] = value
      except TypeError:
        raise CheckpointError(f'{config_file}: {name} is {value!r}, not a value of that '
                              f'field') from None
      changed.append((name not in NAMED_FIRST, f'{name}={value!r}'))
  return [text for _, text in sorted(changed, key=lambda item: item[0])]


def check_dataset_named(dataset: ml_collections.ConfigDict) -> None:
  """ConfigError unless `dataset` says where its examples are: a TFDS dataset's
  name, DMVR tfrecords' `data_dir`."""
  if dataset.format == 'dmvr':
    if not dataset.data_dir:
      raise ConfigError('dataset.format=dmvr reads tfrecords: set --config.dataset.'
                        'data_dir to their pattern, e.g. /data/k400/{split}.tfrecord@1024')
  elif not dataset.name:
    raise ConfigError('no dataset named: set --config.dataset.name (a dataset vivit-'
                      'prepare made, e.g. video_folder or kinetics400) and --config.'
                      'dataset.data_dir (the directory that holds it)')


def prepared_fps(dataset: ml_collections.ConfigDict) -> Optional[float]:
  """The frame rate `dataset` was prepared at, if it can be read (the builders are
  registered by `vivit.datasets`, which the input pipeline imports)."""
  try:
    builder = tfds.builder(dataset.name, data_dir=dataset.data_dir)
    return float(builder.info.metadata['fps'])
  except Exception:  # pylint: disable=broad-except  (gone, moved, or not a video dataset)
    return None


def sync_model_config(config: ml_collections.ConfigDict, labels: Labels) -> None:
  """The model is built for the clips and labels the data pipeline produces.

  `dataset.num_frames` / `crop_size` None: the model's input size; `model.num_classes`
  None: the dataset's."""
  ds = config.dataset
  frames, height, _ = config.model.input_size
  ds.num_frames = ds.num_frames or frames
  ds.crop_size = ds.crop_size or height
  ds.min_resize = ds.min_resize or min_resize(ds.crop_size)
  config.model.input_size = (ds.num_frames, ds.crop_size, ds.crop_size)
  if config.model.num_classes is None:
    config.model.num_classes = labels.num_classes
  if config.model.num_classes != labels.num_classes:
    raise DataError(f'model.num_classes={config.model.num_classes} but dataset '
                    f'{ds.name} has {labels.num_classes} classes'
                    + (f' ({" + ".join(str(n) for _, n in labels.label_heads)})'
                       if labels.label_heads else ''))


def open_dataset(config: ml_collections.ConfigDict, *splits: str):
  """Checks that `splits` (one or more) exist and fits `config.model` to the data;
  returns (Labels, number of examples per split)."""
  check_dataset_named(config.dataset)
  opened = [open_source(config.dataset, split) for split in splits]
  labels = Labels(opened[0].label_keys, opened[0].class_names(config.model.num_classes))
  sizes = [source.num_examples for source in opened]
  sync_model_config(config, labels)
  return labels, sizes
