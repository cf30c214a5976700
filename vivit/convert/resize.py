"""The same ViViT weights for another frame count or resolution.

Only the position embeddings depend on the clip size: their token grid
`[time slots, height / patch, width / patch]` (time-major) is resized, linearly in
time and bilinearly in space; the CLS entry is kept. Model 2's spatial embeddings
change with the resolution, its temporal ones with the frame count.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from vivit.errors import CheckpointError, ConfigError
from vivit.models import check_params, token_grid, variants

Params = Dict[str, Any]
# Model config fields that may differ between the two configs.
SIZE_FIELDS = ('input_size', 'num_sampled_frames')


def resize_position_embedding(posemb: np.ndarray, grid: Tuple[int, ...],
                              new_grid: Tuple[int, ...]) -> np.ndarray:
  """`[1, (1 +) prod(grid), D]` -> `[1, (1 +) prod(new_grid), D]`, CLS entry kept."""
  tokens = int(np.prod(grid))
  extra = posemb.shape[1] - tokens
  if extra not in (0, 1):
    raise CheckpointError(f'position embedding {posemb.shape} does not fit a token grid '
                          f'{grid}')
  cls, body = posemb[:, :extra], posemb[0, extra:].reshape(tuple(grid) + posemb.shape[-1:])
  if tuple(grid) != tuple(new_grid):
    body = np.asarray(jax.image.resize(body, tuple(new_grid) + body.shape[-1:], 'linear',
                                       antialias=False))
  return np.concatenate([cls, body.reshape(1, -1, posemb.shape[-1])], axis=1)


def resized(params: Params, config: ml_collections.ConfigDict,
            input_size: Optional[Sequence[int]]) -> Tuple[ml_collections.ConfigDict, Params]:
  """(config, params) of the same model on clips of `input_size` (None: as they are)."""
  if input_size is None or tuple(input_size) == tuple(config.input_size):
    return config, params
  target = config.copy_and_resolve_references()
  target.input_size = tuple(input_size)
  return target, resize_params(params, config, target)


def resize_params(params: Params, from_config: ml_collections.ConfigDict,
                  to_config: ml_collections.ConfigDict) -> Params:
  """`params` of a `from_config` model, for `to_config`: the same model on clips of
  another frame count and/or resolution."""
  differing = sorted(k for k in set(from_config.keys()) | set(to_config.keys())
                     if k not in SIZE_FIELDS and from_config.get(k) != to_config.get(k))
  if differing:
    raise ConfigError('resize_params changes only the clip size; the configs also '
                      'differ in ' + ', '.join(f'model.{k}' for k in differing))
  check_params(from_config, params)
  params = jax.tree_util.tree_map(np.array, params)
  grid, new_grid = token_grid(from_config), token_grid(to_config)
  # Each encoder's axes of the (time, height, width) token grid.
  axes = {'Transformer': slice(0, 3)}
  if variants.get(from_config.variant).per_frame:
    axes = {'SpatialTransformer': slice(1, 3), 'TemporalTransformer': slice(0, 1)}
  for encoder, axis in axes.items():
    posemb = params[encoder]['posembed_input']
    posemb['pos_embedding'] = resize_position_embedding(
        posemb['pos_embedding'], grid[axis], new_grid[axis])
  check_params(to_config, params)
  return params
