"""Parameter creation and checking against a model config."""
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import ml_collections

from vivit.errors import CheckpointError
from vivit.models.vivit import build_model

Params = Dict[str, Any]


def init_params(config: ml_collections.ConfigDict, rng: jax.Array) -> Params:
  """Fresh float32 params for `config.input_size` videos."""
  video = jnp.zeros((1, *config.input_size, 3), jnp.float32)
  return build_model(config).init(rng, video, train=False)['params']


def param_shapes(config: ml_collections.ConfigDict) -> Params:
  """`{path: ShapeDtypeStruct}` tree of the params, without computing them."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def check_params(config: ml_collections.ConfigDict, params: Params) -> None:
  """Raises CheckpointError naming every parameter that is missing, unexpected or whose
  shape does not fit `config`."""
  expected = flax.traverse_util.flatten_dict(param_shapes(config), sep='/')
  given = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  problems = []
  for name in sorted(expected.keys() - given.keys()):
    problems.append(f'missing parameter {name} (expected shape {expected[name].shape})')
  for name in sorted(given.keys() - expected.keys()):
    problems.append(f'unexpected parameter {name} (shape {tuple(given[name].shape)})')
  for name in sorted(expected.keys() & given.keys()):
    if tuple(given[name].shape) != tuple(expected[name].shape):
      problems.append(f'parameter {name} has shape {tuple(given[name].shape)} but the '
                      f'model config needs {tuple(expected[name].shape)}')
  if problems:
    shown = '\n  '.join(problems[:20])
    more = f'\n  ... and {len(problems) - 20} more' if len(problems) > 20 else ''
    raise CheckpointError(
        f'checkpoint does not fit the model config (variant={config.variant}, '
        f'hidden_size={config.hidden_size}, input_size={tuple(config.input_size)}):'
        f'\n  {shown}{more}')
