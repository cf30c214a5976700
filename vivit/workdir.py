"""A run's directory and the records kept beside checkpoints: paths, atomic writes,
the workdir lock, the model record, class names, the metric writer.

A training workdir holds:
  WORKDIR/.lock               the lock of the training that uses it (`WorkdirLock`)
  WORKDIR/config.json         the run's config
  WORKDIR/run.json            a record per start of training (`vivit.run_record`)
  WORKDIR/model_config.json   the model it trains (`record_workdir_model`)
  WORKDIR/class_names.json    the output classes' names (`save_class_names`)
  WORKDIR/metrics.jsonl       a JSON record per log line (`MetricWriter`)
  WORKDIR/tensorboard/        the same metrics as TensorBoard events (`tensorboard_dir`);
                              plugins/profile/: profiles (`vivit.profiling`)
  WORKDIR/trackers.json       the W&B and MLflow run ids of `training.loggers`
                              (`MetricWriter`); wandb/, mlruns/: their local files
  WORKDIR/checkpoints/, best/, set_aside/   orbax checkpoints (`vivit.checkpoints`)
A params directory (`checkpoints.save_params`) holds model_config.json and
class_names.json too.

Every path here may be local or any URL `etils.epath` reads and writes
(`gs://bucket/run`): files are read and written through `epath`, local paths are
made absolute (orbax wants them so) and URLs are kept as given.
"""
import contextlib
import functools
import json
import os
from typing import Any, Dict, Iterator, List, Optional

import jax
import ml_collections
from etils import epath

from vivit import locks, loggers, ranges
from vivit.config_changes import flatten
from vivit.errors import (CheckpointError, MissingError, OutputError, UserError, WorkdirBusy,
                          summary)
from vivit.models import default_model_config


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on a local (or mounted) file system, not a URL such as
  `gs://bucket/run`."""
  return '://' not in os.fspath(path)


def as_path(path: epath.PathLike) -> epath.Path:
  """`path` as an `epath.Path`: a local path made absolute (as orbax wants), a URL
  (`gs://bucket/run`) as given."""
  return epath.Path(os.path.abspath(path) if is_local(path) else path)


@contextlib.contextmanager
def atomic_path(path: epath.PathLike) -> Iterator[epath.Path]:
  """The name to write `path` under (`path.tmp`, beside it): renamed to `path` when
  the block ends, removed if it raises, so `path` is whole or as it was."""
  path = epath.Path(path)
  partial = path.with_name(path.name + '.tmp')
  try:
    yield partial
    partial.replace(path)
  except BaseException:
    try:
      if partial.exists():
        partial.unlink()
    except OSError:
      pass  # the error that brought us here says more
    raise


def cannot_write(path: epath.PathLike, error: Exception) -> OutputError:
  """The error for a failed write of `path` (a full disk, a read-only file system):
  an OSError's reason, or the first line of another library's (TensorFlow's)."""
  reason = getattr(error, 'strerror', None) or getattr(error, 'message', None) or str(error)
  lines = str(reason).strip().splitlines() or [type(error).__name__]
  return OutputError(f'{path} cannot be written: {lines[0][:300]}')


@contextlib.contextmanager
def writing(path: epath.PathLike, *errors: type) -> Iterator[None]:
  """A block that writes `path`: an OSError (or one of `errors`) raised in it is an
  OutputError naming `path` (`cannot_write`); the project's own errors pass."""
  try:
    yield
  except (OSError,) + errors as e:
    if isinstance(e, UserError):
      raise
    raise cannot_write(path, e) from None


def write_atomically(path: epath.PathLike, text: str) -> None:
  """`path` holds `text`, or what it held before; a failed write is an OutputError
  naming `path`."""
  with writing(path), atomic_path(path) as partial:
    partial.write_text(text)


class WorkdirLock:
  """An exclusive lock on a training workdir (`WORKDIR/.lock`, `vivit.locks`: it dies
  with its process, so a crashed run leaves nothing to clean up); a second training
  is refused. Taken by process 0 only: the hosts of one run share the workdir. A
  workdir that is a URL (`gs://bucket/run`) is not locked, with a warning: an object
  store has no file locks, and a lock object would outlive a killed run."""

  def __init__(self, workdir: epath.PathLike):
    self._workdir = as_path(workdir)
    self._path = os.path.join(self._workdir, '.lock')
    self._held = contextlib.ExitStack()

  def __enter__(self):
    if jax.process_index():
      return self
    if not is_local(self._workdir):
      print(f'warning: workdir {self._workdir} is not on a local file system, so it is '
            f'not locked: make sure no other training uses it', flush=True)
      return self
    workdir = os.path.dirname(self._path)

    def refuse(holder: str) -> None:
      raise WorkdirBusy(f'workdir {workdir} is in use by another training ({holder}); '
                        f'wait for it to finish or use another --workdir')
    self._held.enter_context(
        locks.held(self._path, refuse, functools.partial(cannot_write, self._path)))
    return self

  def __exit__(self, *exc):
    self._held.close()  # releases the lock


# The model record: DIR/model_config.json.


def model_config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json(indent=2, sort_keys=True)


def model_config_from_json(text: str, where: str = 'the model config'
                           ) -> ml_collections.ConfigDict:
  """Inverse of `model_config_to_json`, keeping the defaults' field types.
  CheckpointError naming `where` and the field for a value no model has."""
  return model_config_from_values(json.loads(text), where)


def model_config_from_values(values, where: str) -> ml_collections.ConfigDict:
  """The model config of the JSON value `values` over the defaults (a record read
  from a checkpoint, untrusted): every known field of its default's type (ints >= 0,
  sizes >= 1, floats finite), else CheckpointError naming `where` and the field.
  Unknown fields are kept (a newer version's)."""
  config = default_model_config()
  config.update(_checked_fields(config, values, where))
  return config


def _checked_fields(defaults: ml_collections.ConfigDict, values, where: str,
                    prefix: str = '') -> Dict[str, Any]:
  """`values` (a JSON object) with lists as tuples, each known field checked against
  the type of its default in `defaults`."""
  if not isinstance(values, dict):
    raise CheckpointError(f'{where}: {f"model.{prefix[:-1]}" if prefix else "the model config"}'
                          f' is a JSON {type(values).__name__}, not an object of fields')
  checked = {}
  for key, value in values.items():
    if key not in defaults:
      checked[key] = tuple(value) if isinstance(value, list) else value
      continue
    default, kind = defaults[key], defaults.get_type(key)
    if isinstance(default, ml_collections.ConfigDict):
      checked[key] = _checked_fields(default, value, where, f'{prefix}{key}.')
      continue
    expected = _field_problem(value, default, kind)
    if expected:
      shown = json.dumps(value)
      shown = shown if len(shown) <= 60 else shown[:57] + '...'
      raise CheckpointError(f'{where}: model.{prefix}{key} is {shown}; expected {expected}')
    checked[key] = tuple(value) if isinstance(value, list) else value
  return checked


def _field_problem(value, default, kind) -> Optional[str]:
  """What a model field of `default`'s type `kind` must be, if `value` is not that."""
  if value is None and default is None:  # a placeholder left unset
    return None
  if kind is tuple:
    fits = (isinstance(value, list) and len(value) == len(default) and
            all(ranges.whole(1).admits(v) for v in value))
    return None if fits else f'{len(default)} integers from 1 to {ranges.MAX_WHOLE}'
  if kind is bool:
    return None if isinstance(value, bool) else 'true or false'
  if kind is int:
    return None if ranges.whole(0).admits(value) else f'an integer from 0 to {ranges.MAX_WHOLE}'
  if kind is float:
    return None if ranges.finite().admits(value) else 'a finite number'
  if kind is str:
    return None if isinstance(value, str) else 'a string'
  return None


def load_model_config(path: epath.PathLike) -> Optional[ml_collections.ConfigDict]:
  """The model config saved in a checkpoint directory or workdir, or None.
  CheckpointError naming the file when it is not one (`model_config_from_values`)."""
  config_file = epath.Path(path) / 'model_config.json'
  if not config_file.exists():
    return None
  return model_config_from_values(read_record(config_file, 'a model config'),
                                  str(config_file))


# Records read from a checkpoint are untrusted input (a downloaded checkpoint may
# hold anything): a file larger than any record, or not JSON, is refused unread.
MAX_RECORD_BYTES = 64 << 20


def read_record(path: epath.PathLike, what: str) -> Any:
  """The JSON value in the file at `path`; CheckpointError naming the file and
  `what` it should be when it is too large, undecodable or not JSON."""
  path = epath.Path(path)
  size = os.path.getsize(path) if is_local(path) and path.is_file() else 0
  if size > MAX_RECORD_BYTES:
    raise CheckpointError(f'{path} is not {what}: {size} bytes, more than any '
                          f'({MAX_RECORD_BYTES >> 20} MiB)')
  try:
    return json.loads(path.read_bytes())
  except (ValueError, RecursionError, IsADirectoryError) as e:  # ValueError: JSON's
    raise CheckpointError(f'{path} is not {what}: {" ".join(str(e).split())}'
                          ) from None


# Model fields that only change how the params are trained or computed, not the
# function they define: a run may resume with other values of these.
TRAINING_ONLY_FIELDS = ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth',
                        'fsa_stochastic_depth', 'remat', 'dtype', 'attention',
                        'tubelet_init')


def check_workdir_model(workdir: epath.PathLike,
                        model_config: ml_collections.ConfigDict) -> List[str]:
  """Raises CheckpointError naming every field (with both values) in which
  `model_config` differs from the model `workdir` was trained with, except the
  TRAINING_ONLY_FIELDS; returns the changes in those, as `field old -> new`. Writes
  nothing: `record_workdir_model` does, once the run has resumed."""
  stored = load_model_config(workdir)
  if stored is None:
    return []
  old, new = (flatten(json.loads(model_config_to_json(config)))
              for config in (stored, model_config))
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
    with writing(workdir):
      workdir.mkdir(parents=True, exist_ok=True)
    write_atomically(workdir / 'model_config.json', model_config_to_json(model_config))


# Class names: DIR/class_names.json.


def save_class_names(path: epath.PathLike, class_names) -> None:
  """`path/class_names.json`: the names of the model's outputs in order, a list,
  or {head: names} for a model with several heads (their logits in that order)."""
  names = (dict(class_names) if isinstance(class_names, dict) else list(class_names))
  write_atomically(epath.Path(path) / 'class_names.json', json.dumps(names, indent=0))


def load_class_names(path: epath.PathLike, num_classes: Optional[int] = None):
  """The class names saved with a checkpoint or workdir (`save_class_names`), or None.
  CheckpointError naming the file unless it holds a list of names or {head: names}
  (`check_class_names`), `num_classes` of them if given."""
  name_file = epath.Path(path) / 'class_names.json'
  if not name_file.exists():
    return None
  names = read_record(name_file, 'a list of class names')
  check_class_names(names, str(name_file), num_classes)
  return names


def check_class_names(names, where: str, num_classes: Optional[int] = None) -> None:
  """CheckpointError naming `where` unless `names` is a list of class names or
  {head: list of names}, each a printable string (names reach terminals and file
  names), `num_classes` in all if given."""
  heads = names if isinstance(names, dict) else {None: names}
  for head, head_names in heads.items():
    if not (isinstance(head_names, list) and
            all(isinstance(name, str) and name.isprintable() for name in head_names)):
      raise CheckpointError(
          f'{where} is not a list of class names (printable strings)'
          + (' nor an object of {head: [names]}' if head is None else
             f': head {head!r} is not one'))
  count = sum(map(len, heads.values()))
  if num_classes is not None and count != num_classes:
    raise CheckpointError(f'{where} names {count} classes, but the model has '
                          f'{num_classes}')


def _outputs(names) -> List[str]:
  """The name of each output of class names as `save_class_names` keeps them:
  `head:name` where there are several heads."""
  if isinstance(names, dict):
    return [f'{head}:{name}' for head, head_names in names.items() for name in head_names]
  return list(names)


def _some(names: List[str], most: int = 4) -> str:
  return ', '.join(map(repr, names[:most])) + (f' and {len(names) - most} more'
                                                if len(names) > most else '')


def class_order(stored, wanted, checkpoint: str, dataset: str, hint: str = ''
                ) -> Optional[List[int]]:
  """How the outputs of a checkpoint meet a dataset's classes (evaluation, a
  fine-tuning that keeps the head). `stored`: the checkpoint's class names as
  `save_class_names` keeps them (a list, or {head: names}), None where it names none;
  `wanted`: the dataset's, in the same form.

  Returns None where the outputs are the dataset's classes in its order (or are
  unnamed: taken by position), else the checkpoint output of each of the dataset's
  classes, matched by name, in the dataset's order (`logits[..., order]`, a head
  kernel's columns). CheckpointError naming `checkpoint`, `dataset` and a few of the
  differences where the names differ, or the number of them; `hint` ends it."""
  if stored is None:
    return None
  have, need = _outputs(stored), _outputs(wanted)
  if have == need:
    return None
  hint = f'; {hint}' if hint else ''
  have_set, need_set = set(have), set(need)
  missing = [name for name in need if name not in have_set]
  extra = [name for name in have if name not in need_set]
  if missing or extra or len(have) != len(need):
    differences = ([f'not in the checkpoint: {_some(missing)}'] * bool(missing) +
                   [f'not in the dataset: {_some(extra)}'] * bool(extra))
    raise CheckpointError(
        f'{checkpoint} has other classes than dataset {dataset} ({len(have)} named, the '
        f'dataset {len(need)}' + ''.join(f'; {d}' for d in differences) + ')' + hint)
  repeated = sorted({name for name in have if have.count(name) > 1})
  if repeated:
    raise CheckpointError(f'{checkpoint} repeats class names ({_some(repeated)}), so its '
                          f'outputs cannot be matched to the classes of dataset '
                          f'{dataset} by name{hint}')
  index = {name: i for i, name in enumerate(have)}
  return [index[name] for name in need]


# Metrics: WORKDIR/metrics.jsonl and WORKDIR/tensorboard/.


def tensorboard_dir(workdir: epath.PathLike) -> epath.Path:
  """WORKDIR/tensorboard: the metrics' TensorBoard events (`MetricWriter`) and the
  profiles of training steps (`vivit.profiling`)."""
  return as_path(workdir) / 'tensorboard'


class MetricWriter:
  """Metrics to WORKDIR/metrics.jsonl and to the loggers of `config.training.loggers`:
  TensorBoard events and the trackers of `vivit.loggers` (W&B, MLflow), on host 0; a
  context that closes them. The trackers start with the config and the run record
  (`vivit.run_record`) as hyperparameters; `write_text` puts the record in TensorBoard.

  A run resuming at step `start` first drops the records of later steps (written
  before a kill, after the checkpoint it resumes from: they are logged again) and
  a partly written last line. A local metrics.jsonl is then appended to line by
  line. Object stores (a `gs://` workdir) cannot append: there the file is rewritten
  whole at every write, so that a crash keeps every line written either way. A
  failed write (a full disk) is an OutputError naming the file; the lines written
  before it stay. A tracker that fails (a network, a server) is warned about once
  and dropped: training goes on. Their run ids are kept in WORKDIR/trackers.json,
  so that a resumed training continues the same tracker runs."""

  def __init__(self, workdir: epath.Path, start: int,
               config: Optional[ml_collections.ConfigDict] = None,
               record: Optional[Dict[str, Any]] = None):
    self.active = jax.process_index() == 0
    self._logged, self._trackers, self._tb = set(), {}, None
    if self.active:
      names = config.training.loggers if config is not None else ('tensorboard',)
      self._events = tensorboard_dir(workdir)
      if 'tensorboard' in names:
        import tensorflow as tf
        with writing(self._events, tf.errors.OpError):
          self._tb = tf.summary.create_file_writer(os.fspath(self._events))
      self._path = workdir / 'metrics.jsonl'
      written = self._path.read_text() if self._path.exists() else ''
      lines = _records_until(written, start)
      if ''.join(lines) != written:
        write_atomically(self._path, ''.join(lines))
      self._logged = {(r['step'], r['split']) for r in map(json.loads, lines)}
      local = is_local(self._path)
      # Only a store that cannot append keeps the lines, to rewrite them whole.
      with writing(self._path):
        self._jsonl, self._lines = (self._path.open('a'), None) if local else (None, lines)
      if config is not None:
        try:
          self._start_trackers(workdir, names, config, record)
        except BaseException:
          self.close(failed=True)
          raise

  def _start_trackers(self, workdir: epath.Path, names, config: ml_collections.ConfigDict,
                      record: Optional[Dict[str, Any]]) -> None:
    ids_path = workdir / 'trackers.json'
    ids = read_record(ids_path, 'a record of tracker runs') if ids_path.exists() else {}
    ids = ids if isinstance(ids, dict) else {}
    name = os.path.basename(os.fspath(workdir).rstrip('/'))
    project = config.training.logger_project or name
    params = loggers.hyperparameters(json.loads(config.to_json()), record)
    for logger in names:
      if logger not in loggers.TRACKERS:
        continue
      try:
        tracker = loggers.TRACKERS[logger](name, project, os.fspath(workdir) if
                                           is_local(workdir) else None,
                                           ids.get(logger), params)
      except Exception as error:  # pylint: disable=broad-except
        self._drop(logger, error)
        continue
      self._trackers[logger] = tracker
      if ids.get(logger) != tracker.run_id:
        ids[logger] = tracker.run_id
        write_atomically(ids_path, json.dumps(ids, indent=2) + '\n')

  def _drop(self, logger: str, error: Exception) -> None:
    """Warns once of a failed tracker, which logs nothing more in this run."""
    self._trackers.pop(logger, None)
    print(f'warning: logger {logger} failed ({summary(error)}); training goes on '
          f'without it', flush=True)

  def _each_tracker(self, action) -> None:
    for logger, tracker in list(self._trackers.items()):
      try:
        action(tracker)
      except Exception as error:  # pylint: disable=broad-except
        self._drop(logger, error)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *exc):
    try:
      self.close(failed=exc_type is not None)
    except OutputError:
      if exc_type is None:
        raise  # else the error that brought us here says more

  def logged(self, step: int, split: str) -> bool:
    """Whether metrics.jsonl holds `split`'s record of `step` (host 0; False elsewhere)."""
    return (step, split) in self._logged

  def write(self, step: int, split: str, metrics: Dict[str, float]) -> None:
    if not self.active:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    line = json.dumps({'step': step, 'split': split, **metrics}) + '\n'
    self._logged.add((step, split))
    with writing(self._path):
      if self._jsonl is not None:
        self._jsonl.write(line)
        self._jsonl.flush()
      else:
        self._lines.append(line)
        self._path.write_text(''.join(self._lines))
    if self._tb is not None:
      import tensorflow as tf
      with writing(self._events, tf.errors.OpError):
        with self._tb.as_default(step=step):
          for name, value in metrics.items():
            tf.summary.scalar(f'{split}/{name}', value)
        self._tb.flush()
    self._each_tracker(lambda tracker: tracker.write(step, split, metrics))

  def write_text(self, step: int, tag: str, text: str) -> None:
    """`text` (markdown) as TensorBoard text under `tag` (host 0, with TensorBoard)."""
    if self._tb is None:
      return
    import tensorflow as tf
    with writing(self._events, tf.errors.OpError):
      with self._tb.as_default(step=step):
        tf.summary.text(tag, text)
      self._tb.flush()

  def close(self, failed: bool = False) -> None:
    """Closes each output; `failed`: the run ended on an error (the trackers' runs
    are marked failed)."""
    if self.active:
      jsonl, self._jsonl = self._jsonl, None
      try:
        if jsonl is not None:
          with writing(self._path):
            jsonl.close()
      finally:
        try:
          if self._tb is not None:
            import tensorflow as tf
            with writing(self._events, tf.errors.OpError):
              self._tb.close()
        finally:
          self._each_tracker(lambda tracker: tracker.close(failed))
          self._trackers = {}


def _records_until(text: str, step: int) -> List[str]:
  """The complete, parseable lines of a metrics.jsonl `text` up to `step`."""
  kept = []
  for line in text.splitlines(keepends=True):
    try:
      record = json.loads(line) if line.endswith('\n') else None
    except ValueError:
      record = None
    if isinstance(record, dict) and record.get('step', step + 1) <= step:
      kept.append(line)
  return kept
