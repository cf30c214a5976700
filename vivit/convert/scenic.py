"""Scenic (google-research/scenic, projects/vivit) checkpoints -> vivit-jax.

Parameter names are identical, so only the model config needs translating from
scenic's fields (`attention_config.type`, `patches.size` as (h, w, t),
`temporal_encoding_config`, `spatial_transformer`, `temporal_transformer`, ...).
"""
import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import flax
import ml_collections
import numpy as np

from vivit.convert.resize import resized
from vivit.errors import CheckpointError, ConfigError, MissingError
from vivit.models import check_params, default_model_config, variants

Params = Dict[str, Any]

SCENIC_VARIANTS = {variant.scenic_name: variant.name for variant in variants.VARIANTS}
SCENIC_KERNEL_INITS = {
    'central_frame_initializer': 'central_frame',
    'average_frame_initializer': 'average_frame',
}
# Scenic's crop when a checkpoint's input size is neither given nor in its config.
DEFAULT_CROP = 224


def latest_checkpoint_file(path: str) -> str:
  """`path` itself, or the highest-step `checkpoint_<step>` file in a directory."""
  if not os.path.isdir(path):
    if not os.path.exists(path):
      raise MissingError(f'no scenic checkpoint at {path}')
    return path
  steps = [(int(m.group(1)), name) for name in os.listdir(path)
           if (m := re.fullmatch(r'checkpoint_(\d+)', name))]
  if not steps:
    raise MissingError(f'{path} holds no checkpoint_<step> file')
  return os.path.join(path, max(steps)[1])


def read_scenic_params(path: str) -> Params:
  """Params of a scenic train-state msgpack (under `optimizer/target` or `params`)."""
  with open(latest_checkpoint_file(path), 'rb') as f:
    state = flax.serialization.msgpack_restore(f.read())
  if 'optimizer' in state and 'target' in state['optimizer']:
    params = state['optimizer']['target']
  elif 'params' in state:
    params = state['params']
  else:
    raise CheckpointError(f'{path}: no params under optimizer/target or params '
                          f'(top-level keys: {sorted(state)})')
  return _to_numpy(params)


def _to_numpy(tree):
  """Nested dict of float32 numpy arrays."""
  return {k: _to_numpy(v) if isinstance(v, dict) else np.asarray(v, np.float32)
          for k, v in tree.items()}


# Scenic `config.model` fields and the values this project reproduces (None: any).
SCENIC_FIELDS = {
    'hidden_size': None, 'num_heads': None, 'num_layers': None, 'mlp_dim': None,
    'patches': None, 'representation_size': None, 'dropout_rate': None,
    'attention_dropout_rate': None, 'stochastic_droplayer_rate': None,
    'temporal_encoding_config': None, 'attention_config': None,
    'spatial_transformer': None, 'temporal_transformer': None,
    'classifier': ('token', 'gap', 'gmp', 'gsp'),
    'return_prelogits': (False,), 'return_preclassifier': (False,),
    # Read by scenic's Encoder but never passed to it by ViViT: always these.
    'positional_embedding': ('learned_1d',), 'normalise_output': (True,),
    'model_dtype_str': None,
}
SCENIC_ATTENTION_FIELDS = {'type': None, 'attention_order': None,
                           'attention_kernel_init_method': None,  # init only
                           'spatial_only_baseline': (False,)}


def check_scenic_fields(scenic_config: ml_collections.ConfigDict) -> None:
  """ValueError naming every scenic model field (or value) that the converted model
  would not honour."""
  problems = []
  for fields, section, prefix in (
      (SCENIC_FIELDS, scenic_config, 'model.'),
      (SCENIC_ATTENTION_FIELDS, scenic_config.get('attention_config') or {},
       'model.attention_config.')):
    for key, value in section.items():
      if key not in fields:
        problems.append(f'{prefix}{key} (not known to vivit-jax)')
      elif fields[key] is not None and value not in fields[key]:
        problems.append(f'{prefix}{key}={value!r} (supported: '
                        f'{", ".join(map(repr, fields[key]))})')
  if problems:
    raise ConfigError('the scenic config asks for what vivit-jax does not reproduce: ' +
                      '; '.join(problems))


def model_config_from_scenic(scenic_config: ml_collections.ConfigDict, num_classes: int,
                             input_size: Sequence[int]) -> ml_collections.ConfigDict:
  """Translates scenic's `config.model` into a vivit-jax model config."""
  check_scenic_fields(scenic_config)
  attention = scenic_config.get('attention_config', {})
  attention_type = attention.get('type',
                                 variants.get(variants.SPATIO_TEMPORAL).scenic_name)
  if attention_type not in SCENIC_VARIANTS:
    raise ConfigError(f'unknown scenic attention_config.type {attention_type!r}; '
                      f'expected one of {", ".join(SCENIC_VARIANTS)}')
  patch_h, patch_w, *patch_t = scenic_config.patches.size
  encoding = scenic_config.get('temporal_encoding_config',
                               ml_collections.ConfigDict({'method': '3d_conv'}))
  config = default_model_config()
  config.variant = SCENIC_VARIANTS[attention_type]
  if encoding.method == 'temporal_sampling':
    config.embedding = 'frame'
    config.num_sampled_frames = encoding.n_sampled_frames
    config.tubelet = (1, patch_h, patch_w)
  elif encoding.method == '3d_conv':
    if not patch_t:
      raise ConfigError('3d_conv encoding needs patches.size = (h, w, t)')
    config.tubelet = (patch_t[0], patch_h, patch_w)
    config.tubelet_init = SCENIC_KERNEL_INITS.get(encoding.get('kernel_init_method'),
                                                  'lecun_normal')
  else:
    raise ConfigError(f'unknown temporal_encoding_config.method {encoding.method!r}')
  config.hidden_size = scenic_config.hidden_size
  sizes, body = ('num_layers', 'num_heads', 'mlp_dim'), scenic_config
  if variants.get(config.variant).per_frame:
    body = scenic_config.spatial_transformer
    config.temporal.update({k: scenic_config.temporal_transformer[k] for k in sizes})
  config.update({k: body[k] for k in sizes})
  config.classifier = scenic_config.classifier
  config.representation_size = scenic_config.get('representation_size')
  config.attention_order = attention.get('attention_order', 'time_space')
  config.dropout_rate = scenic_config.get('dropout_rate', 0.0)
  config.attention_dropout_rate = scenic_config.get('attention_dropout_rate', 0.0)
  config.stochastic_depth = scenic_config.get('stochastic_droplayer_rate', 0.0)
  config.num_classes = num_classes
  config.input_size = tuple(input_size)
  return config


def _guess_input_size(params: Params, config: ml_collections.ConfigDict):
  """The (time, height, width) whose token grid fits the position embeddings, or
  None. Model 2 keeps space and time apart, which determines both (square crops);
  the others hold their product, which is split assuming DEFAULT_CROP crops."""
  t, h, w = config.tubelet
  cls = int(config.classifier == 'token')
  if variants.get(config.variant).per_frame:
    steps = params['TemporalTransformer']['posembed_input']['pos_embedding'].shape[1] - cls
    patches = params['SpatialTransformer']['posembed_input']['pos_embedding'].shape[1] - cls
    side = int(round(np.sqrt(patches)))
    if side * side != patches or h != w:
      return None
    crop = side * h
  else:
    crop = DEFAULT_CROP
    per_frame = (crop // h) * (crop // w)
    tokens = params['Transformer']['posembed_input']['pos_embedding'].shape[1] - cls
    if tokens % per_frame:
      return None
    steps = tokens // per_frame
  frames = steps if config.embedding == 'frame' else steps * t
  return (frames, crop, crop)


def from_scenic(path: str, scenic_model_config: ml_collections.ConfigDict,
                num_classes: Optional[int] = None,
                input_size: Optional[Sequence[int]] = None,
                trained_input_size: Optional[Sequence[int]] = None,
                ) -> Tuple[ml_collections.ConfigDict, Params]:
  """Loads a scenic ViViT checkpoint.

  Args:
    path: a flax msgpack train state, or a directory of `checkpoint_<step>` files
      (the latest is read).
    scenic_model_config: the `config.model` of the scenic config it was trained
      with; the whole scenic config also works, and then its
      `dataset_configs.num_frames` and `crop_size` give the trained input size.
    num_classes: defaults to the width of `output_projection`; another value gives
      a fresh zero-initialised `output_projection` (fine-tuning on new labels).
    input_size: (time, height, width) to use the model at: the position embeddings
      are resized to it (`vivit.convert.resize_params`). Default: as trained.
    trained_input_size: the clip size the checkpoint was trained on, where neither
      the scenic config nor the shapes tell it (model 2's shapes do; the other
      models' are read as 224x224 crops with as many frames as fit).

  Returns:
    (model config, params).
  """
  if 'model' in scenic_model_config:
    scenic_data = scenic_model_config.get('dataset_configs', {})
    if (trained_input_size is None and scenic_data.get('num_frames')
        and scenic_data.get('crop_size')):
      crop = scenic_data['crop_size']
      trained_input_size = (scenic_data['num_frames'], crop, crop)
    scenic_model_config = scenic_model_config.model
  params = read_scenic_params(path)
  head = params.get('output_projection')
  if num_classes is None:
    if head is None:
      raise CheckpointError(f'{path}: no output_projection; pass num_classes')
    num_classes = head['kernel'].shape[-1]
  if head is not None and num_classes != head['kernel'].shape[-1]:
    # A new label set: a fresh head, zero-initialised as scenic's.
    hidden = head['kernel'].shape[0]
    params['output_projection'] = {'kernel': np.zeros((hidden, num_classes), np.float32),
                                   'bias': np.zeros((num_classes,), np.float32)}
  config = model_config_from_scenic(scenic_model_config, num_classes,
                                    trained_input_size or (32, DEFAULT_CROP, DEFAULT_CROP))
  if trained_input_size is None:
    guessed = _guess_input_size(params, config)
    if guessed is None:
      raise CheckpointError(f'{path}: cannot infer the clip size the checkpoint was '
                            f'trained on from its position embeddings; pass '
                            f'trained_input_size=(time, height, width)')
    config.input_size = guessed
  check_params(config, params)
  return resized(params, config, input_size)
