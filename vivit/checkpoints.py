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
from typing import Any, Dict, List, Optional, Sequence, Tuple

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


def write_atomically(path: epath.PathLike, text: str) -> None:
  path = epath.Path(path)
  partial = path.with_name(path.name + '.tmp')
  partial.write_text(text)
  partial.replace(path)


def save_class_names(path: epath.PathLike, class_names) -> None:
  """`path/class_names.json`: the names of the model's outputs in order, a list,
  or {head: names} for a model with several heads (their logits in that order)."""
  names = (dict(class_names) if isinstance(class_names, dict) else list(class_names))
  write_atomically(epath.Path(path) / 'class_names.json', json.dumps(names, indent=0))


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
  write_atomically(path / 'model_config.json', model_config_to_json(model_config))
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


# Where checkpoints go that training must not resume from (damaged, or best params
# newer than the step resumed), kept for inspection.
SET_ASIDE = 'set_aside'
# What reading a checkpoint gave, in the order hosts settle on the worst of theirs.
READ, DAMAGED, OTHER_CONFIG, FAILED = range(4)
# A read that fails for a reason other than damage is tried again after these pauses
# (network storage can fail once and succeed a second later).
RETRY_PAUSES_S = (2.0, 10.0)
# tensorstore's status codes for array data that is missing, truncated or undecodable.
_DAMAGE_CODES = ('DATA_LOSS', 'OUT_OF_RANGE', 'FAILED_PRECONDITION', 'NOT_FOUND')


def _agreed(outcome: int) -> int:
  """The worst of every host's `outcome`: hosts must resume from the same
  checkpoint, so one host's failure to read it counts for all."""
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


def _damage(error: Exception) -> Optional[str]:
  """Why `error` proves the checkpoint's files bad (missing or truncated array data,
  undecodable metadata), or None when it may be the storage, the credentials or
  the memory instead, which must not cost a checkpoint. Orbax wraps tensorstore's
  errors: the whole chain of causes is looked at."""
  while error is not None:
    text = str(error).strip()
    if isinstance(error, (json.JSONDecodeError, FileNotFoundError)):
      return f'{type(error).__name__}: {text}'
    if isinstance(error, ValueError) and text.startswith(_DAMAGE_CODES):
      return text
    error = error.__cause__ or error.__context__
  return None


def _read_once(manager, step: int, target):
  """(outcome, state or None, reason): one checkpoint read, retried after
  RETRY_PAUSES_S unless the error proves damage."""
  path = epath.Path(manager.directory) / str(step)
  for pause in RETRY_PAUSES_S + (None,):
    try:
      if not (path / 'default').is_dir():
        return DAMAGED, None, 'no default/ directory (the train state) in it'
      return READ, _read(manager, step, target), ''
    except Exception as error:  # pylint: disable=broad-except  (sorted out below)
      if 'structures do not match' in str(error):
        return OTHER_CONFIG, None, str(error)
      damage = _damage(error)
      if damage is not None:
        return DAMAGED, None, damage
      reason = f'{type(error).__name__}: {str(error).strip()}'
    if pause is not None:
      print(f'warning: reading checkpoint {path} failed ({_first_line(reason)}); '
            f'trying again in {pause:g}s', flush=True)
      time.sleep(pause)
  return FAILED, None, reason


def _first_line(text: str) -> str:
  lines = text.strip().splitlines()
  return lines[0][:300] if lines else ''


def _set_aside(path: epath.Path, name: str) -> None:
  """Moves checkpoint `path` to WORKDIR/set_aside/NAME-<time> (host 0; the hosts
  share the workdir): kept, but out of the way of the steps training saves again."""
  if jax.process_index() == 0:
    aside = path.parent.parent / SET_ASIDE
    aside.mkdir(parents=True, exist_ok=True)
    path.rename(aside / f'{name}-{int(time.time())}')


def restore_latest(manager: ocp.CheckpointManager, target):
  """(step, state) of the newest checkpoint of `manager` that reads back on every
  host, or (None, None) when there is none.

  A checkpoint whose files are provably bad (missing or truncated array data,
  undecodable metadata) is moved to WORKDIR/set_aside/ with a warning and the one
  before it is tried. Any other failure (I/O, permissions, credentials, memory),
  after RETRY_PAUSES_S, raises CheckpointError naming the checkpoint and the cause,
  every checkpoint untouched."""
  for step in sorted(manager.all_steps(), reverse=True):
    path = epath.Path(manager.directory) / str(step)
    outcome, state, reason = _read_once(manager, step, target)
    agreed = _agreed(outcome)
    if agreed == READ:
      return step, state
    if agreed == FAILED:
      raise CheckpointError(
          f'cannot read checkpoint {path} (' + (_first_line(reason) if outcome == FAILED
                                                else 'another host cannot read it') +
          '); every checkpoint is left as it was. Fix the cause and start again; if '
          'this checkpoint is damaged, move it out of the workdir to resume from the '
          'one before it')
    if agreed == OTHER_CONFIG:
      raise CheckpointError(
          f'checkpoint {path} holds a train state of a different shape than this '
          f'config builds (was training.optimizer, training.nonfinite or gradient '
          f'clipping changed since it was written?); resume with the config it was '
          f'written with (WORKDIR/config.json), or use a new --workdir')
    print(f'warning: checkpoint {path} is damaged ('
          f'{_first_line(reason) if outcome == DAMAGED else "another host cannot read it"}'
          f'); moved to {path.parent.parent / SET_ASIDE}/; trying the one before it',
          flush=True)
    _set_aside(path, f'checkpoints-{step}')
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'damaged checkpoint {step}')
    manager.reload()
  return None, None


def damaged_steps(workdir: epath.PathLike) -> List[int]:
  """The steps of the train states `restore_latest` set aside as damaged."""
  aside = as_path(workdir) / SET_ASIDE
  names = [p.name for p in aside.iterdir()] if aside.is_dir() else []
  return sorted({int(n.split('-')[1]) for n in names if n.startswith('checkpoints-')})


def set_aside_best_after(best: ocp.CheckpointManager, step: int) -> None:
  """Sets aside the best params saved after `step`, the step a run resumes from
  (or 0): it saves those steps again, and the best must be one of this run's."""
  newer = [s for s in best.all_steps() if s > step]
  for s in newer:
    _set_aside(epath.Path(best.directory) / str(s), f'best-{s}')
  if newer:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('best set aside')
    best.reload()


# Model fields that only change how the params are trained or computed, not the
# function they define: a run may resume with other values of these.
TRAINING_ONLY_FIELDS = ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth',
                        'fsa_stochastic_depth', 'remat', 'dtype', 'attention',
                        'tubelet_init')


def _flat(config: ml_collections.ConfigDict, prefix: str = '') -> Dict[str, Any]:
  flat = {}
  for key, value in json.loads(model_config_to_json(config)).items():
    if isinstance(value, dict):
      flat.update(_flat(ml_collections.ConfigDict(value), f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def check_workdir_model(workdir: epath.PathLike,
                        model_config: ml_collections.ConfigDict) -> List[str]:
  """Raises CheckpointError naming every field (with both values) in which
  `model_config` differs from the model `workdir` was trained with, except the
  TRAINING_ONLY_FIELDS; returns the changes in those, as `field old -> new`. Writes
  nothing: `record_workdir_model` does, once the run has resumed."""
  stored = load_model_config(workdir)
  if stored is None:
    return []
  old, new = _flat(stored), _flat(model_config)
  changed = [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
  refused = [c for c in changed if c[0] not in TRAINING_ONLY_FIELDS]
  if refused:
    fields = '; '.join(f'model.{k}: {a!r} in the workdir, {b!r} now' for k, a, b in refused)
    raise CheckpointError(
        f'workdir {as_path(workdir)} holds checkpoints of a different model ({fields}); '
        f'resume with the config it was written with (WORKDIR/config.json), or use a '
        f'new --workdir')
  return [f'model.{k} {a!r} -> {b!r}' for k, a, b in changed]


def record_workdir_model(workdir: epath.PathLike,
                         model_config: ml_collections.ConfigDict) -> None:
  """WORKDIR/model_config.json: the model a run trains (host 0: hosts share the
  workdir)."""
  if jax.process_index() == 0:
    workdir = as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_atomically(workdir / 'model_config.json', model_config_to_json(model_config))


def restore_best_params(workdir: epath.PathLike, abstract_params) -> Tuple[int, Params]:
  """(step, params) of the best checkpoint in `workdir`."""
  best = best_manager(workdir)
  step = best.best_step()
  if step is None:
    raise MissingError(f'no best checkpoint under {as_path(workdir)}/best; '
                       f'train first or pass --checkpoint')
  params = best.restore(step, args=ocp.args.StandardRestore(abstract_params))
  return step, params
