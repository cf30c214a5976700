"""The task a run solves: its labels, and the model config fitted to the data."""
from typing import List, NamedTuple, Optional, Tuple

import ml_collections

from vivit.errors import DataError
from vivit.input.pipeline import open_source


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
                    + (f' ({" + ".join(str(n) for _, n in labels.heads)})'
                       if labels.heads else ''))


def open_dataset(config: ml_collections.ConfigDict, *splits: str):
  """Checks that `splits` (one or more) exist and fits `config.model` to the data;
  returns (Labels, number of examples per split)."""
  opened = [open_source(config.dataset, split) for split in splits]
  labels = Labels(opened[0].label_keys, opened[0].class_names(config.model.num_classes))
  sizes = [source.num_examples for source in opened]
  sync_model_config(config, labels)
  return labels, sizes
