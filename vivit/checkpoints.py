"""Orbax checkpoints: a model's params directory, a run's train states and best
params, and the recovery from damaged ones.

A params directory (`save_params`, what `python -m vivit.convert` writes):
  DIR/model_config.json   the model config (JSON; `vivit.workdir.load_model_config`)
  DIR/params/             orbax tree of float32 arrays, named as scenic names them
  DIR/class_names.json    the output classes' names, where known (optional)
A training workdir (`vivit.workdir`) holds model_config.json and class_names.json
too, and its checkpoints: WORKDIR/checkpoints/<step> (train states, the last N),
WORKDIR/best/<step> (the params of the best validation top-1) and WORKDIR/set_aside/
(checkpoints training must not resume from, kept for inspection).
Orbax writes to a temporary directory and renames it when complete, so a crash
never leaves a half-written `params/`.

Every path may be local or a URL that `etils.epath` reads and writes
(`gs://bucket/run`); see `vivit.workdir.as_path`.
"""
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vivit.errors import (CheckpointError, CheckpointSaveError, ConfigError, MissingError,
                          UserError)
from vivit.models import check_params, param_shapes
from vivit.workdir import (as_path, is_local, load_model_config, model_config_to_json,
                           save_class_names, write_atomically)

Params = Dict[str, Any]


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


def load_params(path: epath.PathLike) -> Tuple[ml_collections.ConfigDict, Params]:
  """(model config, numpy params) of a params directory (`save_params`) or of a
  training workdir: its best params, else those of its latest checkpoint. The
  checkpoint is untrusted input (`read_params`)."""
  path = as_path(path)
  config = load_model_config(path)
  if config is None:
    raise MissingError(f'{path} is not a vivit-jax checkpoint (no model_config.json;'
                       f' expected a params directory or a training workdir)')
  if (path / 'params').is_dir():
    return config, read_params(path / 'params', config)
  best = (_untrusted(path / 'best', lambda: _step(best_manager(path), best=True))
          if (path / 'best').is_dir() else None)
  if best is not None:
    return config, read_params(path / 'best' / str(best) / 'default', config)
  if not (path / 'checkpoints').is_dir():
    raise MissingError(f'{path} holds neither params/ (a params directory) nor '
                       f'best/ or checkpoints/ (a training workdir)')
  step = _untrusted(path / 'checkpoints',
                    lambda: _step(ocp.CheckpointManager(path / 'checkpoints'), best=False))
  if step is None:
    raise MissingError(f'workdir {path} holds no checkpoint yet')
  return config, read_params(path / 'checkpoints' / str(step) / 'default', config,
                             within='params')


def _step(manager: ocp.CheckpointManager, best: bool) -> Optional[int]:
  """The best (else the latest) step of `manager`, which is then closed."""
  with manager:
    return manager.best_step() if best else manager.latest_step()


def read_params(directory: epath.Path, config: ml_collections.ConfigDict,
                within: Optional[str] = None) -> Params:
  """The numpy params in the orbax tree `directory` (`within`: the key that holds
  them in a larger tree, 'params' in a train state), read as untrusted input: the
  names, shapes, dtypes and chunks its metadata declares are checked against
  `config` before any array is read, so that whatever its files say, reading takes
  no more memory than the model's params (`check_stored_params`). CheckpointError,
  naming `directory`, for one that does not fit or whose files are damaged."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    stored = _untrusted(directory, lambda: handler.metadata(directory).tree)
    if within is not None:
      stored = stored.get(within) if isinstance(stored, dict) else None
      if stored is None:
        raise CheckpointError(f'checkpoint {directory} holds no {within}')
    expected = check_stored_params(config, stored, directory)
    target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, np.float32),
                                    expected)
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.float32), target)
    if within is not None:
      target, restore_args = {within: target}, {within: restore_args}
    params = _untrusted(directory, lambda: handler.restore(
        directory, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                               partial_restore=within is not None)))
  finally:
    handler.close()
  params = params[within] if within is not None else params
  return jax.tree_util.tree_map(np.asarray, params)


def check_stored_params(config: ml_collections.ConfigDict, stored: Any,
                        directory: epath.PathLike) -> Params:
  """The params' shapes (`param_shapes(config)`); CheckpointError naming
  `directory` unless the orbax metadata tree `stored` declares exactly these
  arrays: floating dtypes, the shapes the config gives, chunks no larger than their
  arrays. The model's own size is bounded too: no more layers than stored arrays
  (building a model's shapes takes time in its depth), params that fit in this
  machine's memory and in MAX_EXPANSION times the bytes of the files."""
  flat = (flax.traverse_util.flatten_dict(stored, sep='/')
          if isinstance(stored, dict) else {})
  if not flat:
    raise CheckpointError(f'checkpoint {directory} holds no arrays')
  for name, leaf in flat.items():
    shape, dtype = getattr(leaf, 'shape', None), getattr(leaf, 'dtype', None)
    if not (isinstance(shape, tuple) and dtype is not None):
      raise CheckpointError(f'checkpoint {directory}: {name} is not an array')
    if np.dtype(dtype).kind != 'f':
      raise CheckpointError(f'checkpoint {directory}: parameter {name} is stored as '
                            f'{np.dtype(dtype).name}; parameters are floating point')
    chunk = getattr(getattr(leaf, 'storage', None), 'chunk_shape', None)
    if chunk is not None and (len(chunk) != len(shape) or
                              any(c > max(s, 1) for c, s in zip(chunk, shape))):
      raise CheckpointError(f'checkpoint {directory}: parameter {name} of shape '
                            f'{tuple(shape)} is stored in chunks of {tuple(chunk)}, '
                            f'larger than the array')
  for field, layers in (('num_layers', config.num_layers),
                        ('temporal.num_layers', config.temporal.num_layers)):
    if layers > len(flat):
      raise CheckpointError(f'checkpoint {directory} holds {len(flat)} arrays, but its '
                            f'model_config.json has {field}={layers}')
  try:
    expected = param_shapes(config)
  except ConfigError as e:
    raise CheckpointError(f'checkpoint {directory}: its model_config.json describes '
                          f'no model ({e})') from None
  try:
    check_params(config, stored)
  except CheckpointError as e:
    raise CheckpointError(f'{directory}: {e}') from None
  needed = sum(math.prod(a.shape) * 4 for a in jax.tree_util.tree_leaves(expected))
  memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  if needed > memory:
    raise CheckpointError(f'checkpoint {directory}: its model_config.json describes '
                          f'{needed / 2**30:.1f} GiB of params, more than this '
                          f'machine\'s memory ({memory / 2**30:.1f} GiB)')
  stored_bytes = _local_size(directory)
  if stored_bytes is not None and needed > MAX_EXPANSION * stored_bytes + 2**20:
    raise CheckpointError(f'checkpoint {directory}: its arrays declare '
                          f'{needed / 2**20:.0f} MiB of params in {stored_bytes} bytes of '
                          f'files (missing or all-zero data); refused unread')
  return expected


# How many times the bytes of its files a checkpoint's params may take in memory:
# trained weights barely compress, so more is missing data (read as zeros) or
# zeros compressed, a declared size the files do not hold.
MAX_EXPANSION = 100


def _local_size(directory: epath.PathLike) -> Optional[int]:
  """The bytes of the files under `directory` on a local file system (symbolic
  links followed: a Hub snapshot links to its blobs), None for a URL."""
  if not is_local(directory):
    return None
  size = 0
  for root, _, names in os.walk(directory):
    for name in names:
      try:
        size += os.path.getsize(os.path.join(root, name))
      except OSError:  # a broken link: no bytes
        pass
  return size


def _untrusted(path: epath.PathLike, read: Callable[[], Any]) -> Any:
  """`read()`, reading files of the checkpoint at `path`: any error of orbax,
  tensorstore or json (damaged, truncated or foreign files raise many kinds) as
  CheckpointError naming `path` and the cause."""
  try:
    return read()
  except UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (see above)
    reason = _damage(error) or f'{type(error).__name__}: {error}'
    raise CheckpointError(f'checkpoint {path} cannot be read (damaged or not an orbax '
                          f'checkpoint?): {first_line(reason)}') from None


# Training checkpoints: WORKDIR/checkpoints/<step> (train state, the last N: step,
# params, optimiser state and, with training.ema_decay, the params' EMA) and
# WORKDIR/best/<step> (params of the best validation top-1: the raw params or their
# EMA, whichever scored better; its metrics say which, 'params': 'raw' or 'ema').


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


def save(manager: ocp.CheckpointManager, step: int, item, **kwargs) -> None:
  """`manager.save`, with a failure (disk full, no permission) reported as what it is:
  a CheckpointSaveError naming the checkpoint and the cause. Orbax writes in threads,
  each of which logs its own traceback of the failure: those are kept off the
  terminal (shown with --verbose)."""
  try:
    with _stderr_held_back():
      try:
        manager.save(step, args=ocp.args.StandardSave(item), **kwargs)
      except Exception:  # pylint: disable=broad-except
        with contextlib.suppress(Exception):  # the save's threads end, quietly, first
          manager.wait_until_finished()
        raise
      manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  (OSError, or orbax's wrapping)
    manager.reload()
    kept = manager.latest_step()
    raise CheckpointSaveError(
        f'saving checkpoint {step} failed: {manager.directory}/{step} cannot be written '
        f'({_write_failure(e)}); the checkpoints before it are intact (latest: '
        f'{"none" if kept is None else kept})') from e


@contextlib.contextmanager
def _stderr_held_back() -> Iterator[None]:
  """A block whose output on stderr (file descriptor 2: Python's, absl's and C++'s
  alike, from every thread) is held in a temporary file, and written out when the
  block ends without an error; dropped when it raises (the error says what
  happened). Nothing is held back with --verbose, or where no temporary file can
  be made."""
  from vivit import verbose
  try:
    held = None if verbose() else tempfile.TemporaryFile()
  except OSError:
    held = None
  if held is None:
    yield
    return
  with held:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
    held.seek(0)
    text = held.read()  # reached only without an error
    if text:
      sys.stderr.write(text.decode(errors='replace'))
      sys.stderr.flush()


def _write_failure(error: Exception) -> str:
  """Why a checkpoint write failed: the OS error at the bottom of orbax's and
  tensorstore's wrapping (`No space left on device`), else the first line."""
  cause = error
  while cause is not None:
    code = re.search(r"os_error_code='(\d+)'", str(cause))
    if code:
      return os.strerror(int(code.group(1)))
    if isinstance(cause, OSError) and cause.strerror:
      return cause.strerror
    cause = cause.__cause__ or cause.__context__
  return first_line(f'{type(error).__name__}: {error}')


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
      # (Orbax's words for a target tree unlike the saved one: other leaves, or other
      # keys, e.g. an EMA that one side has.)
      if any(words in str(error) for words in ('structures do not match',
                                               'Structure mismatch')):
        return OTHER_CONFIG, None, str(error)
      damage = _damage(error)
      if damage is not None:
        return DAMAGED, None, damage
      reason = f'{type(error).__name__}: {str(error).strip()}'
    if pause is not None:
      print(f'warning: reading checkpoint {path} failed ({first_line(reason)}); '
            f'trying again in {pause:g}s', flush=True)
      time.sleep(pause)
  return FAILED, None, reason


def first_line(text: str) -> str:
  """The first line of `text`, at most 300 characters."""
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
          f'cannot read checkpoint {path} (' + (first_line(reason) if outcome == FAILED
                                                else 'another host cannot read it') +
          '); every checkpoint is left as it was. Fix the cause and start again; if '
          'this checkpoint is damaged, move it out of the workdir to resume from the '
          'one before it')
    if agreed == OTHER_CONFIG:
      raise CheckpointError(
          f'checkpoint {path} holds a train state of a different shape than this '
          f'config builds (was training.optimizer, training.nonfinite, gradient '
          f'clipping or training.ema_decay (on/off) changed since it was written?); '
          f'resume with the config it was '
          f'written with (WORKDIR/config.json), or use a new --workdir')
    print(f'warning: checkpoint {path} is damaged ('
          f'{first_line(reason) if outcome == DAMAGED else "another host cannot read it"}'
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


def restore_best_params(workdir: epath.PathLike, abstract_params) -> Tuple[int, Params]:
  """(step, params) of the best checkpoint in `workdir`."""
  best = best_manager(workdir)
  step = best.best_step()
  if step is None:
    raise MissingError(f'no best checkpoint under {as_path(workdir)}/best; '
                       f'train first or pass --checkpoint')
  params = best.restore(step, args=ocp.args.StandardRestore(abstract_params))
  return step, params
