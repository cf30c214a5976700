"""Orbax checkpoints of a model: params plus the model config that built them.

Layout of a params checkpoint directory:
  DIR/model_config.json   the model config (JSON)
  DIR/params/             orbax tree of float32 arrays, named as scenic names them
  DIR/class_names.json    the output classes' names, where known (optional)
A training workdir holds model_config.json and class_names.json too.
Orbax writes to a temporary directory and renames it when complete, so a crash
never leaves a half-written `params/`.

Every path here may be local or any URL `etils.epath` reads and writes
(`gs://bucket/run`): files are read and written through `epath`, local
paths are made absolute (orbax wants them so) and URLs are kept as given.
"""
import json
import os
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vivit.errors import CheckpointError, MissingError, WorkdirBusy
from vivit.models import check_params, default_model_config, param_shapes

Params = Dict[str, Any]


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on a local (or mounted) file system, not a URL such as
  `gs://bucket/run`."""
  return '://' not in os.fspath(path)


def as_path(path: epath.PathLike) -> epath.Path:
  """`path` as an `epath.Path`: a local path made absolute (as orbax wants), a URL
  (`gs://bucket/run`) as given."""
  return epath.Path(os.path.abspath(path) if is_local(path) else path)


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


def _write_atomically(path: epath.PathLike, text: str) -> None:
  path = epath.Path(path)
  partial = path.with_name(path.name + '.tmp')
  partial.write_text(text)
  partial.replace(path)


def save_class_names(path: epath.PathLike, class_names) -> None:
  """`path/class_names.json`: the names of the model's outputs in order, a list,
  or {head: names} for a model with several heads (their logits in that order)."""
  names = (dict(class_names) if isinstance(class_names, dict) else list(class_names))
  _write_atomically(epath.Path(path) / 'class_names.json', json.dumps(names, indent=0))


def load_class_names(path: epath.PathLike):
  """The class names saved with a checkpoint or workdir (`save_class_names`), or None."""
  name_file = epath.Path(path) / 'class_names.json'
  return json.loads(name_file.read_text()) if name_file.exists() else None


def save_params(path: epath.PathLike, model_config: ml_collections.ConfigDict,
                params: Params, class_names: Optional[Sequence[str]] = None) -> None:
  """Writes `params` (checked against `model_config`), the config and the class
  names (if given; as many as `num_classes`) to `path`."""
  check_params(model_config, params)
  count = (sum(map(len, class_names.values())) if isinstance(class_names, dict)
           else len(class_names or ()))
  if class_names is not None and count != model_config.num_classes:
    raise CheckpointError(f'{count} class names for {model_config.num_classes} classes')
  path = as_path(path)
  path.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / 'params', params, force=True)
    checkpointer.wait_until_finished()
  _write_atomically(path / 'model_config.json', model_config_to_json(model_config))
  if class_names is not None:
    save_class_names(path, class_names)


def load_model_config(path: epath.PathLike) -> Optional[ml_collections.ConfigDict]:
  """The model config saved in a checkpoint directory or workdir, or None."""
  config_file = epath.Path(path) / 'model_config.json'
  if not config_file.exists():
    return None
  try:
    return model_config_from_json(config_file.read_text())
  except ValueError as e:  # json's decode error
    raise CheckpointError(f'{config_file} is not a model config: {e}') from None


def load_params(path: epath.PathLike) -> Tuple[ml_collections.ConfigDict, Params]:
  """(model config, numpy params) of a params directory (`save_params`) or of a
  training workdir: its best params, else those of its latest checkpoint."""
  path = as_path(path)
  config = load_model_config(path)
  if config is None:
    raise MissingError(f'{path} is not a vivit-jax checkpoint (no model_config.json;'
                       f' expected a params directory or a training workdir)')
  if (path / 'params').is_dir():
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(path / 'params')
  elif (path / 'best').is_dir() and best_manager(path).best_step() is not None:
    params = restore_best_params(path, param_shapes(config))[1]
  else:
    if not (path / 'checkpoints').is_dir():
      raise MissingError(f'{path} holds neither params/ (a params directory) nor '
                         f'best/ or checkpoints/ (a training workdir)')
    last = ocp.CheckpointManager(path / 'checkpoints')
    step = last.latest_step()
    if step is None:
      raise MissingError(f'workdir {path} holds no checkpoint yet')
    params = last.restore(step, args=ocp.args.StandardRestore())['params']
  params = jax.tree_util.tree_map(np.asarray, params)
  check_params(config, params)
  return config, params


# Training checkpoints: WORKDIR/checkpoints/<step> (train state, the last N) and
# WORKDIR/best/<step> (params of the best validation top-1).


def best_manager(workdir: epath.PathLike) -> ocp.CheckpointManager:
  """Keeps the params with the best validation top-1."""
  return ocp.CheckpointManager(
      as_path(workdir) / 'best',
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda metrics: metrics['top1'], best_mode='max',
          create=True))


def train_managers(workdir: epath.PathLike, keep: int):
  """(last-N manager of train states, best-by-top1 manager of params)."""
  last = ocp.CheckpointManager(
      as_path(workdir) / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
  return last, best_manager(workdir)


class WorkdirLock:
  """An exclusive lock on a training workdir (`WORKDIR/.lock`, an OS file lock, so
  it dies with its process: a crashed run leaves nothing to clean up). Taken by
  process 0 only: the hosts of one run share the workdir. A workdir that is a URL
  (`gs://bucket/run`) is not locked, with a warning: an object store has no file
  locks, and a lock object would outlive a killed run."""

  def __init__(self, workdir: epath.PathLike):
    self._workdir = as_path(workdir)
    self._path = os.path.join(self._workdir, '.lock')
    self._file = None

  def __enter__(self):
    if jax.process_index():
      return self
    if not is_local(self._workdir):
      print(f'warning: workdir {self._workdir} is not on a local file system, so it is '
            f'not locked: make sure no other training uses it', flush=True)
      return self
    import fcntl
    try:
      os.makedirs(os.path.dirname(self._path), exist_ok=True)
      self._file = open(self._path, 'a+')
    except OSError as e:
      raise MissingError(f'workdir {self._workdir} cannot be written: {e}') from None
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


def _agreed(outcome: int) -> int:
  """The worst of every host's `outcome` (0 read, 1 unreadable, 2 another config's
  state): hosts must resume from the same checkpoint, so one host's failure to read
  it counts for all."""
  if jax.process_count() == 1:
    return outcome
  from jax.experimental import multihost_utils
  return int(np.max(multihost_utils.process_allgather(np.int32(outcome))))


def _read(manager: ocp.CheckpointManager, step: int, target):
  """The state saved at `step`. With several hosts it is read through the handler,
  not the manager: the manager's restore ends in a barrier that a host whose read
  failed would never reach, while the others wait in it."""
  if jax.process_count() == 1:
    return manager.restore(step, args=ocp.args.StandardRestore(target))
  return ocp.StandardCheckpointHandler().restore(
      epath.Path(manager.directory) / str(step) / 'default',
      args=ocp.args.StandardRestore(target))


def restore_latest(manager: ocp.CheckpointManager, target):
  """(step, state) of the newest checkpoint of `manager` that reads back (on every
  host), trying older ones with a warning naming each that does not (truncated,
  corrupted), or (None, None) when there is none. An unreadable checkpoint is moved
  to `<dir>/../unreadable_checkpoints/` so that training can save that step again."""
  for step in sorted(manager.all_steps(), reverse=True):
    path = epath.Path(manager.directory) / str(step)
    state, error = None, None
    try:
      state = _read(manager, step, target)
    except Exception as e:  # pylint: disable=broad-except  (any damage reads differently)
      error = e
    mismatch = error is not None and 'structures do not match' in str(error)
    outcome = _agreed(2 if mismatch else (1 if error is not None else 0))
    if outcome == 0:
      return step, state
    if outcome == 2:  # readable, but another config's state
      raise CheckpointError(
          f'checkpoint {path} holds a train state of a different shape than this '
          f'config builds (was training.optimizer, training.nonfinite or gradient '
          f'clipping changed since it was written?); resume with the config it was '
          f'written with (WORKDIR/config.json), or use a new --workdir') from error
    if error is None:
      reason = 'another host cannot read it'
    else:
      text = str(error).strip()
      reason = f'{type(error).__name__}: ' + (text.splitlines()[0][:200] if text else '')
    print(f'warning: checkpoint {path} cannot be read ({reason.rstrip(": ")}); '
          f'trying the one before it', flush=True)
    if jax.process_index() == 0:
      aside = epath.Path(manager.directory).parent / 'unreadable_checkpoints'
      aside.mkdir(parents=True, exist_ok=True)
      path.rename(aside / f'{step}-{int(time.time())}')
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'unreadable checkpoint {step}')
    manager.reload()
  return None, None


def check_workdir_model(workdir: epath.PathLike,
                        model_config: ml_collections.ConfigDict) -> None:
  """Records the model config in `workdir`, or raises ValueError naming the params
  that differ from the one a checkpoint there was written with."""
  workdir = as_path(workdir)
  path = workdir / 'model_config.json'
  stored = load_model_config(workdir)
  if stored is not None:
    try:
      check_params(model_config, param_shapes(stored))
    except ValueError as e:
      raise CheckpointError(f'workdir {workdir} holds checkpoints of a different model; '
                            f'use a new --workdir or the same model config. {e}') from None
  if jax.process_index() == 0:  # one writer: hosts share the workdir
    workdir.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, model_config_to_json(model_config))


def restore_best_params(workdir: epath.PathLike, abstract_params) -> Tuple[int, Params]:
  """(step, params) of the best checkpoint in `workdir`."""
  best = best_manager(workdir)
  step = best.best_step()
  if step is None:
    raise MissingError(f'no best checkpoint under {as_path(workdir)}/best; '
                       f'train first or pass --checkpoint')
  params = best.restore(step, args=ocp.args.StandardRestore(abstract_params))
  return step, params
