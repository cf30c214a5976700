"""Any checkpoint, read as a ViViT: (model config, params, class names). Formats:
  vit           a 2-D ViT (vision_transformer `.npz`, HF `ViTModel` directory): it only
                initialises a ViViT (`vivit.convert.vit`)
  scenic        a scenic ViViT checkpoint, with the scenic config it was trained with
  transformers  an HF `VivitForVideoClassification` / `VivitModel` directory
  vivit         ours: a params directory (`python -m vivit.convert`) or a training
                workdir (its best params, else its latest state)
Each path may also be a Hugging Face Hub id, `hf://org/name[@revision]` or, where it
cannot be a local path, `org/name[@revision]` (`vivit.hub`).
"""
import re
from typing import Any, Optional, Tuple

import ml_collections
from etils import epath

from vivit import checkpoints
from vivit.convert.scenic import from_scenic
from vivit.convert.transformers import from_transformers, hf_class_names, read_hf_config
from vivit.errors import CheckpointError, ConfigError, MissingError
from vivit.hub import resolve
from vivit.recipes import load_config
from vivit.workdir import load_class_names, load_model_config

FORMATS = ('vit', 'scenic', 'transformers', 'vivit')


def _existing(path: str) -> epath.Path:
  if not epath.Path(path).exists():
    raise MissingError(f'checkpoint path {path} does not exist')
  return epath.Path(path)


def guess_format(path: str) -> str:
  """The format that `path` looks like; CheckpointError if none."""
  path = resolve(path)
  directory = _existing(path)
  scenic_name = re.compile(r'checkpoint_\d+')
  if not directory.is_dir():
    if directory.name.endswith('.npz'):
      return 'vit'
    if scenic_name.fullmatch(directory.name):
      return 'scenic'
  elif (directory / 'model_config.json').exists():
    return 'vivit'
  elif (directory / 'config.json').exists():
    model_type = read_hf_config(str(directory)).get('model_type')
    if model_type in ('vivit', 'vit'):
      return {'vivit': 'transformers', 'vit': 'vit'}[model_type]
  elif any(scenic_name.fullmatch(child.name) for child in directory.iterdir()):
    return 'scenic'
  raise CheckpointError(f'cannot tell the format of the checkpoint {path}: expected a '
                        f'vision_transformer .npz, an HF ViT or ViViT directory, a scenic'
                        f' checkpoint_<step> file or directory of them, or a vivit-jax '
                        f'params directory or workdir; set init_from.format')


def checkpoint_format(path: str, fmt: Optional[str] = None) -> str:
  """`fmt` (checked), or when None the format guessed from `path`."""
  path = resolve(path)
  _existing(path)
  fmt = fmt or guess_format(path)
  if fmt not in FORMATS:
    raise ConfigError(f'unknown init_from.format {fmt!r}; expected one of '
                      f'{", ".join(FORMATS)}')
  return fmt


def read_checkpoint(path: str, fmt: Optional[str] = None,
                    scenic_config: Optional[str] = None
                    ) -> Tuple[ml_collections.ConfigDict, checkpoints.Params, Any]:
  """(model config, params, class names or None) of a ViViT checkpoint in format
  scenic (with its config file), transformers or vivit (`fmt` None: guessed). Class
  names are a list, or {head: names} for a multi-head model."""
  path = resolve(path)
  fmt = checkpoint_format(path, fmt)
  if fmt == 'transformers':
    config, params = from_transformers(path)
    return config, params, hf_class_names(path, config.num_classes)
  if fmt == 'scenic':
    if not scenic_config:
      raise ConfigError('init_from.format=scenic needs init_from.scenic_config: the '
                        'scenic config file the checkpoint was trained with')
    if not epath.Path(scenic_config).exists():
      raise MissingError(f'init_from.scenic_config {scenic_config} does not exist')
    return (*from_scenic(path, load_config(scenic_config)), None)
  if fmt == 'vit':
    raise CheckpointError(f'{path} is a 2-D ViT: it initialises a ViViT (init_from) but '
                          f'is not one')
  config, params = checkpoints.load_params(path)
  return config, params, load_class_names(path, config.num_classes)


def read_model_config(path: str, fmt: Optional[str] = None,
                      scenic_config: Optional[str] = None
                      ) -> Optional[ml_collections.ConfigDict]:
  """The model config of the checkpoint at `path` (a vivit checkpoint's without
  reading its params), or None for a 2-D ViT, which has none."""
  path = resolve(path)
  fmt = checkpoint_format(path, fmt)
  if fmt == 'vit':
    return None
  config = load_model_config(path) if fmt == 'vivit' else None
  return config if config is not None else read_checkpoint(path, fmt, scenic_config)[0]
