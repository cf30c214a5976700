"""Orbax checkpoints of a model: params plus the model config that built them.

Layout of a params checkpoint directory:
  DIR/model_config.json   the model config (JSON)
  DIR/params/             orbax tree of float32 arrays, names as in DESIGN.md
Orbax writes to a temporary directory and renames it when complete, so a crash
never leaves a half-written `params/`.
"""
import json
import os
from typing import Any, Dict, Tuple

import ml_collections
import orbax.checkpoint as ocp

from vivit.models import check_params, default_model_config, param_shapes

Params = Dict[str, Any]


def model_config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json(indent=2, sort_keys=True)


def model_config_from_json(text: str) -> ml_collections.ConfigDict:
  """Inverse of `model_config_to_json`, keeping the defaults' field types."""
  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value
  config = default_model_config()
  config.update(tuples(json.loads(text)))
  return config


def save_params(path: str, model_config: ml_collections.ConfigDict, params: Params) -> None:
  """Writes `params` (checked against `model_config`) and the config to `path`."""
  check_params(model_config, params)
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(path, 'params'), params, force=True)
    checkpointer.wait_until_finished()
  tmp = os.path.join(path, 'model_config.json.tmp')
  with open(tmp, 'w') as f:
    f.write(model_config_to_json(model_config))
  os.replace(tmp, os.path.join(path, 'model_config.json'))


def load_params(path: str) -> Tuple[ml_collections.ConfigDict, Params]:
  """Reads what `save_params` wrote: (model config, params as numpy arrays)."""
  path = os.path.abspath(path)
  config_file = os.path.join(path, 'model_config.json')
  if not os.path.exists(config_file):
    raise FileNotFoundError(f'{path} is not a vivit-jax params checkpoint '
                            f'(no model_config.json)')
  with open(config_file) as f:
    config = model_config_from_json(f.read())
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.join(path, 'params'))
  check_params(config, params)
  return config, params


# Training checkpoints: WORKDIR/checkpoints/<step> (train state, the last N) and
# WORKDIR/best/<step> (params of the best validation top-1).


def best_manager(workdir: str) -> ocp.CheckpointManager:
  """Keeps the params with the best validation top-1."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'best'),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda metrics: metrics['top1'], best_mode='max',
          create=True))


def train_managers(workdir: str, keep: int):
  """(last-N manager of train states, best-by-top1 manager of params)."""
  last = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
  return last, best_manager(workdir)


def check_workdir_model(workdir: str, model_config: ml_collections.ConfigDict) -> None:
  """Records the model config in `workdir`, or raises ValueError naming the params
  that differ from the one a checkpoint there was written with."""
  path = os.path.join(workdir, 'model_config.json')
  if os.path.exists(path):
    with open(path) as f:
      stored = model_config_from_json(f.read())
    try:
      check_params(model_config, param_shapes(stored))
    except ValueError as e:
      raise ValueError(f'workdir {workdir} holds checkpoints of a different model; '
                       f'use a new --workdir or the same model config. {e}') from None
  os.makedirs(workdir, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(model_config_to_json(model_config))
  os.replace(tmp, path)


def restore_best_params(workdir: str, abstract_params) -> Tuple[int, Params]:
  """(step, params) of the best checkpoint in `workdir`."""
  best = best_manager(workdir)
  step = best.best_step()
  if step is None:
    raise FileNotFoundError(f'no best checkpoint under {os.path.abspath(workdir)}/best; '
                            f'train first or pass --checkpoint')
  params = best.restore(step, args=ocp.args.StandardRestore(abstract_params))
  return step, params
