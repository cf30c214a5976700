"""Datasets made offline, and the one registry of their TFDS builders (importing this
package registers them with TFDS: `tfds.builder('kinetics400', data_dir=...)`; your
own videos by name: `tfds.builder('video_folder/birds', data_dir=...)`)."""
import contextlib
import io
from typing import Dict, Optional

import tensorflow_datasets as tfds

from vivit import verbose
from vivit.datasets import epic_kitchens, kinetics, moments_in_time, ssv2, synthetic, \
    video_folder
from vivit.errors import ConfigError, MissingError

# Name -> TFDS builder class: the releases `vivit-prepare` makes from their files,
# and the embedded datasets (GENERATED), made on first use.
BUILDERS = {builder.name: builder for builder in (
    kinetics.Kinetics400, kinetics.Kinetics600, kinetics.Kinetics700, ssv2.Ssv2,
    epic_kitchens.EpicKitchens100, moments_in_time.MomentsInTime,
    video_folder.VideoFolder, synthetic.SyntheticMotion)}
GENERATED = frozenset({synthetic.SyntheticMotion.name})


def releases() -> Dict[str, type]:
  """Name -> builder class of every dataset `vivit-prepare` makes, by name."""
  return {name: BUILDERS[name] for name in sorted(BUILDERS) if name not in GENERATED}


def get_builder(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """The TFDS builder of dataset `name` in `data_dir` (None: TFDS's default), made at
  first use if embedded; `video_folder/NAME` is read from its files (the builder
  config of a name is made when it is prepared)."""
  import jax  # here, not above: the decoding workers import this package
  from jax.experimental import multihost_utils
  base_name, _, builder_config = name.partition('/')
  if base_name in GENERATED:
    builder = BUILDERS[base_name](data_dir=data_dir, config=builder_config or None)
    if not builder.is_prepared():
      if jax.process_index() == 0:  # one writer; the other hosts wait for it
        print(f'generating {name} in {builder.data_dir} ...', flush=True)
        with (contextlib.nullcontext() if verbose() else  # TFDS's lines say it at length
              contextlib.redirect_stdout(io.StringIO())):
          builder.download_and_prepare()
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f'generated {name}')
        builder = BUILDERS[base_name](data_dir=data_dir, config=builder_config or None)
    return builder
  if base_name in BUILDERS and builder_config:
    if not BUILDERS[base_name].NAMED:
      raise ConfigError(f'dataset {name}: {base_name} has no named datasets (only '
                        f'video_folder/NAME has): set dataset.name={base_name}')
    try:
      BUILDERS[base_name].get_builder_config(builder_config)  # checks the name
    except ConfigError as e:
      raise ConfigError(f'dataset {name}: {e}') from None
  hint = ('prepare it in TFDS format first, or point --config.dataset.data_dir at the '
          'directory that holds it')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise MissingError(f'dataset {name} is not prepared under {data_dir}; {hint}') from None
  if not builder.is_prepared():
    raise MissingError(f'dataset {name} is not prepared under {builder.data_dir}; {hint}')
  return builder
