"""A workdir given as a URL (`--workdir gs://bucket/run`): training, resuming,
evaluating and loading go through `etils.epath`, never the local file system.

No bucket is needed: `fakefs://` is registered with epath as an object store kept
in a local directory. Like GCS or S3 through epath it cannot append to a file and
has no file locks (`open(..., 'a')` raises). Two libraries the run uses bring their
own drivers for `gs://` and never ask epath: tensorstore (the array bytes of orbax
checkpoints) and TensorFlow (TensorBoard events). For them alone the fake URL is
mapped to its directory; everything else (orbax's step directories, metadata,
renames and deletions, and all of vivit's own files) goes through the fake backend.
"""
import json
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from etils.epath import backend as backend_lib
from etils.epath import gpath, register

from helpers import final_params, tiny_run_config
from vivit import checkpoints, errors, evaluate, train
from vivit.workdir import WorkdirLock, as_path

SCHEME = 'fakefs'
PREFIX = SCHEME + '://'


class ObjectStoreBackend(backend_lib.Backend):
  """epath backend of `fakefs://KEY`, kept at `root/KEY`; refuses appends."""

  def __init__(self, root: str):
    self.root = root
    self.opened = []  # (mode, url) of every open
    self._os = backend_lib.os_backend

  def local(self, url) -> str:
    url = os.fspath(url)
    assert url.startswith(PREFIX), f'{url} is not a {PREFIX} URL'
    return os.path.join(self.root, url[len(PREFIX):])

  def url(self, local) -> str:
    return PREFIX + os.path.relpath(local, self.root)

  def open(self, path, mode):
    self.opened.append((mode, os.fspath(path)))
    if 'a' in mode:
      raise NotImplementedError(f'{path}: an object store cannot append to a file')
    return self._os.open(self.local(path), mode)

  def exists(self, path):
    return self._os.exists(self.local(path))

  def isdir(self, path):
    return self._os.isdir(self.local(path))

  def listdir(self, path):
    return self._os.listdir(self.local(path))

  def glob(self, path):
    return [self.url(p) for p in self._os.glob(self.local(path))]

  def walk(self, top, **kwargs):
    for root, dirs, files in self._os.walk(self.local(top), **kwargs):
      yield self.url(root), dirs, files

  def makedirs(self, path, **kwargs):
    return self._os.makedirs(self.local(path), **kwargs)

  def mkdir(self, path, **kwargs):
    return self._os.mkdir(self.local(path), **kwargs)

  def rmtree(self, path):
    return self._os.rmtree(self.local(path))

  def remove(self, path):
    return self._os.remove(self.local(path))

  def rename(self, path, dst):
    return self._os.rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    return self._os.replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    return self._os.copy(self.local(path), self.local(dst), overwrite)

  def stat(self, path):
    return self._os.stat(self.local(path))


@pytest.fixture
def store(tmp_path, monkeypatch):
  """The fake object store (an `ObjectStoreBackend`), registered for the test; the
  working directory is an empty folder, so that a URL mistaken for a local path
  (`fakefs:/bucket/...`) shows up there."""
  backend = ObjectStoreBackend(str(tmp_path / 'store'))
  os.makedirs(backend.root)

  class FakeStorePath(gpath.PosixGPath):
    @property
    def _backend(self):
      return backend if self._uri_scheme == SCHEME else super()._backend

  monkeypatch.setattr(gpath, '_URI_PREFIXES', gpath._URI_PREFIXES + (PREFIX,))
  monkeypatch.setattr(gpath, '_URI_SCHEMES', gpath._URI_SCHEMES | {SCHEME})
  monkeypatch.setitem(gpath._URI_MAP_ROOT, PREFIX, f'/{SCHEME}/')
  monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, PREFIX, FakeStorePath)

  def local(path):
    return backend.local(path) if os.fspath(path).startswith(PREFIX) else path
  from orbax.checkpoint._src.serialization import tensorstore_utils
  if not hasattr(tensorstore_utils, '_normalize_path'):  # orbax < 0.12.6
    pytest.skip('this orbax has no tensorstore_utils._normalize_path to route the store')
  normalize = tensorstore_utils._normalize_path
  monkeypatch.setattr(tensorstore_utils, '_normalize_path', lambda p: normalize(local(p)))
  import tensorflow as tf
  create_file_writer = tf.summary.create_file_writer
  monkeypatch.setattr(tf.summary, 'create_file_writer',
                      lambda logdir, *a, **k: create_file_writer(local(logdir), *a, **k))
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield backend
  assert not os.listdir(cwd), 'a URL was written to as a local path'


def test_train_resume_and_evaluate_with_a_url_workdir(
    data_dir, store, capsys):  # noqa: F811
  workdir = 'fakefs://bucket/run'
  assert isinstance(as_path(workdir)._backend, ObjectStoreBackend)
  train.train_and_evaluate(tiny_run_config(data_dir, **{'training.num_steps': 4}), workdir)
  out = capsys.readouterr().out
  assert f'warning: workdir {workdir} is not on a local file system, so it is not locked' in out
  result = train.train_and_evaluate(tiny_run_config(data_dir, **{
      'training.num_steps': 6, 'training.allow_changes': True}), workdir)
  assert result['step'] == 6
  assert f'resumed from {workdir}/checkpoints/4' in capsys.readouterr().out

  run = os.path.join(store.root, 'bucket', 'run')
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3, 4, 5, 6]
  assert [r['step'] for r in records if r['split'] == 'validation'] == [4, 6]
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == ['4', '6']
  assert np.isfinite(np.asarray(
      jax.tree_util.tree_leaves(final_params(run, 6))[0])).all()
  for name in ('config.json', 'model_config.json', 'class_names.json'):
    assert os.path.exists(os.path.join(run, name))
  assert ('w', f'{workdir}/metrics.jsonl') in store.opened
  assert not os.path.exists(os.path.join(run, '.lock'))
  assert os.listdir(os.path.join(run, 'tensorboard'))

  # Evaluated and loaded from the URL, results written there.
  out = evaluate.run(tiny_run_config(data_dir), workdir)
  saved = json.loads((epath.Path(workdir) / 'eval_results.json').read_text())
  assert saved['top1'] == out['top1'] and saved['checkpoint'].startswith(f'{workdir}/best/')
  for image in ('training_curve.png', 'confusion_matrix.png'):
    assert os.path.getsize(os.path.join(run, image)) > 1000
  config, params = checkpoints.load_params(workdir)
  for a, b in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(evaluate_params(run))):
    np.testing.assert_array_equal(a, b)
  assert config.hidden_size == 16


def evaluate_params(run):
  """The params of the best checkpoint of the workdir at local path `run`."""
  step = checkpoints.best_manager(run).best_step()
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(run, 'best', str(step), 'default'))


def test_unreadable_checkpoint_in_a_url_workdir_is_set_aside(store, capsys):
  directory = epath.Path('fakefs://bucket/faulty/checkpoints')
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=True))
  weights = {step: np.random.RandomState(step).standard_normal(10_000).astype(np.float32)
             for step in (1, 2)}
  for step in (1, 2):
    manager.save(step, args=ocp.args.StandardSave({'w': weights[step]}))
    manager.wait_until_finished()
  local = store.local(directory / '2')
  files = [os.path.join(r, f) for r, _, names in os.walk(local) for f in names]
  with open(max(files, key=os.path.getsize), 'r+b') as f:
    f.truncate(os.path.getsize(f.name) // 2)
  step, state = checkpoints.restore_latest(manager, {'w': np.zeros(10_000, np.float32)})
  assert step == 1
  np.testing.assert_array_equal(state['w'], weights[1])
  assert f'warning: checkpoint {directory}/2 is damaged' in capsys.readouterr().out
  aside = os.listdir(store.local(directory.parent / 'set_aside'))
  assert len(aside) == 1 and aside[0].startswith('checkpoints-2-')
  assert manager.all_steps() == [1]


def test_workdir_lock_is_skipped_with_a_warning_for_a_url_only(tmp_path, store, capsys):
  with WorkdirLock('fakefs://bucket/locked'):
    with WorkdirLock('fakefs://bucket/locked'):
      pass
  out = capsys.readouterr().out
  assert out.count('warning: workdir fakefs://bucket/locked is not on a local') == 2
  assert not os.path.exists(store.local('fakefs://bucket/locked'))
  local = str(tmp_path / 'local')
  with WorkdirLock(local):
    with pytest.raises(errors.WorkdirBusy, match=re.escape(
        f'workdir {local} is in use by another training (pid {os.getpid()} on ')):
      with WorkdirLock(local):
        pass
  assert not capsys.readouterr().out
