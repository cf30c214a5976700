"""Orbax checkpoints of a model: params plus the model config that built them.

Layout of a params checkpoint directory:
  DIR/model_config.json   the model config (JSON)
  DIR/params/             orbax tree of float32 arrays, names as in DESIGN.md
  DIR/class_names.json    the output classes' names, where known (optional)
A training workdir holds model_config.json and class_names.json too.
Orbax writes to a temporary directory and renames it when complete, so a crash
never leaves a half-written `params/`.
"""
import json
import os
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
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


def _write_atomically(path: str, text: str) -> None:
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def save_class_names(path: str, class_names) -> None:
  """`path/class_names.json`: the names of the model's outputs in order, a list,
  or {head: names} for a model with several heads (their logits in that order)."""
  names = (dict(class_names) if isinstance(class_names, dict) else list(class_names))
  _write_atomically(os.path.join(path, 'class_names.json'), json.dumps(names, indent=0))


def load_class_names(path: str):
  """The class names saved with a checkpoint or workdir (see
  `save_class_names`), or None."""
  name_file = os.path.join(path, 'class_names.json')
  if not os.path.exists(name_file):
    return None
  with open(name_file) as f:
    return json.load(f)


def save_params(path: str, model_config: ml_collections.ConfigDict, params: Params,
                class_names: Optional[Sequence[str]] = None) -> None:
  """Writes `params` (checked against `model_config`), the config and the class
  names (if given; as many as `num_classes`) to `path`."""
  check_params(model_config, params)
  count = (sum(map(len, class_names.values())) if isinstance(class_names, dict)
           else len(class_names or ()))
  if class_names is not None and count != model_config.num_classes:
    raise ValueError(f'{count} class names for {model_config.num_classes} classes')
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(path, 'params'), params, force=True)
    checkpointer.wait_until_finished()
  _write_atomically(os.path.join(path, 'model_config.json'),
                    model_config_to_json(model_config))
  if class_names is not None:
    save_class_names(path, class_names)


def load_model_config(path: str) -> Optional[ml_collections.ConfigDict]:
  """The model config saved in a checkpoint directory or workdir, or None."""
  config_file = os.path.join(path, 'model_config.json')
  if not os.path.exists(config_file):
    return None
  with open(config_file) as f:
    return model_config_from_json(f.read())


def load_params(path: str) -> Tuple[ml_collections.ConfigDict, Params]:
  """(model config, numpy params) of a params directory (`save_params`) or of a
  training workdir: its best params, else those of its latest checkpoint."""
  path = os.path.abspath(path)
  config = load_model_config(path)
  if config is None:
    raise FileNotFoundError(f'{path} is not a vivit-jax checkpoint (no model_config.json;'
                            f' expected a params directory or a training workdir)')
  if os.path.isdir(os.path.join(path, 'params')):
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(os.path.join(path, 'params'))
  elif (os.path.isdir(os.path.join(path, 'best')) and
        best_manager(path).best_step() is not None):
    params = restore_best_params(path, param_shapes(config))[1]
  else:
    if not os.path.isdir(os.path.join(path, 'checkpoints')):
      raise FileNotFoundError(f'{path} holds neither params/ (a params directory) nor '
                              f'best/ or checkpoints/ (a training workdir)')
    last = ocp.CheckpointManager(os.path.join(path, 'checkpoints'))
    step = last.latest_step()
    if step is None:
      raise FileNotFoundError(f'workdir {path} holds no checkpoint yet')
    params = last.restore(step, args=ocp.args.StandardRestore())['params']
  params = jax.tree_util.tree_map(np.asarray, params)
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


class WorkdirBusy(RuntimeError):
  """Another training holds the workdir."""


class TrainingDiverged(RuntimeError):
  """A non-finite loss or state (`training.nonfinite='stop'`); nothing non-finite
  was saved."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written; the ones before it are intact."""


class WorkdirLock:
  """An exclusive lock on a training workdir (`WORKDIR/.lock`, an OS file lock, so
  it dies with its process: a crashed run leaves nothing to clean up). Taken by
  process 0 only: the hosts of one run share the workdir."""

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, '.lock')
    self._file = None

  def __enter__(self):
    if jax.process_index():
      return self
    import fcntl
    os.makedirs(os.path.dirname(self._path), exist_ok=True)
    self._file = open(self._path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or 'another process'
      self._file.close()
      raise WorkdirBusy(f'workdir {os.path.dirname(self._path)} is in use by another '
                         f'training ({holder}); wait for it to finish or use another '
                         f'--workdir') from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f'pid {os.getpid()} on {os.uname().nodename}, since '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")}')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.close()  # releases the lock


def restore_latest(manager: ocp.CheckpointManager, target):
  """(step, state) of the newest checkpoint of `manager` that reads back, trying
  older ones with a warning naming each that does not (truncated, corrupted), or
  (None, None) when there is none. An unreadable checkpoint is moved to
  `<dir>/../unreadable_checkpoints/` so that training can save that step again."""
  for step in sorted(manager.all_steps(), reverse=True):
    path = os.path.join(str(manager.directory), str(step))
    try:
      return step, manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except  (any damage reads differently)
      if 'structures do not match' in str(e):  # readable, but another config's state
        raise ValueError(
            f'checkpoint {path} holds a train state of a different shape than this '
            f'config builds (was training.optimizer, training.nonfinite or gradient '
            f'clipping changed since it was written?); resume with the config it was '
            f'written with (WORKDIR/config.json), or use a new --workdir') from e
      reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      print(f'warning: checkpoint {path} cannot be read ({type(e).__name__}: {reason}); '
            f'trying the one before it', flush=True)
      if jax.process_index() == 0:
        aside = os.path.join(os.path.dirname(str(manager.directory)), 'unreadable_checkpoints')
        os.makedirs(aside, exist_ok=True)
        os.replace(path, os.path.join(aside, f'{step}-{int(time.time())}'))
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f'unreadable checkpoint {step}')
      manager.reload()
  return None, None


def check_workdir_model(workdir: str, model_config: ml_collections.ConfigDict) -> None:
  """Records the model config in `workdir`, or raises ValueError naming the params
  that differ from the one a checkpoint there was written with."""
  path = os.path.join(workdir, 'model_config.json')
  stored = load_model_config(workdir)
  if stored is not None:
    try:
      check_params(model_config, param_shapes(stored))
    except ValueError as e:
      raise ValueError(f'workdir {workdir} holds checkpoints of a different model; '
                       f'use a new --workdir or the same model config. {e}') from None
  if jax.process_index() == 0:  # one writer: hosts share the workdir
    os.makedirs(workdir, exist_ok=True)
    _write_atomically(path, model_config_to_json(model_config))


def restore_best_params(workdir: str, abstract_params) -> Tuple[int, Params]:
  """(step, params) of the best checkpoint in `workdir`."""
  best = best_manager(workdir)
  step = best.best_step()
  if step is None:
    raise FileNotFoundError(f'no best checkpoint under {os.path.abspath(workdir)}/best; '
                            f'train first or pass --checkpoint')
  params = best.restore(step, args=ocp.args.StandardRestore(abstract_params))
  return step, params
