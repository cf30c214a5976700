"""`training.loggers`: Weights & Biases (offline) and MLflow (a file store) beside
metrics.jsonl and TensorBoard, read back with their own formats; a resumed run
continues the same tracker runs; a failing tracker is warned about once and
dropped; an unknown name and a missing package are one line (`vivit.loggers`)."""
import glob
import json
import os
import struct
import sys

import pytest

from helpers import read_metrics, tiny_run_config
from vivit import cli, loggers, train
from vivit.recipes import base_config
from vivit.workdir import MetricWriter

wandb = pytest.importorskip('wandb')
pytest.importorskip('mlflow')
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture
def offline(tmp_path, monkeypatch):
  """W&B offline, its settings and caches in `tmp_path`; MLflow's default store."""
  monkeypatch.setenv('WANDB_MODE', 'offline')
  for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR', 'WANDB_ARTIFACT_DIR'):
    monkeypatch.setenv(name, str(tmp_path / 'wandb-home'))
  # Set, then removed: undone at the end whatever the run sets.
  for name in ('MLFLOW_TRACKING_URI', 'MLFLOW_ALLOW_FILE_STORE'):
    monkeypatch.setenv(name, '')
    monkeypatch.delenv(name)
  yield
  wandb.teardown()  # its service process, else left until the test process exits


def wandb_records(path):
  """The records of a W&B run file (`run-ID.wandb`): wandb's protobuf `Record`s in
  LevelDB-log framing (32 KiB blocks; each chunk: CRC, length, kind) after a 7-byte
  header."""
  from wandb.proto import wandb_internal_pb2
  data = open(path, 'rb').read()
  assert data[:4] == b':W&B'
  records, pending, offset, block = [], b'', 7, 32768
  while offset + 7 <= len(data):
    if block - offset % block < 7:  # a block's tail too short for a chunk: padding
      offset += block - offset % block
      continue
    length, kind = struct.unpack('<HB', data[offset + 4:offset + 7])
    if kind == 0:
      break
    pending += data[offset + 7:offset + 7 + length]
    offset += 7 + length
    if kind in (1, 4):  # a whole record, or a record's last chunk
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b''
  return records


def item_key(item):
  return item.key or '.'.join(item.nested_key)


def wandb_run(workdir, run_id):
  """({'split/metric': {step: value}}, {config key: value}) of each offline run
  directory of `run_id` under WORKDIR/wandb, in order."""
  runs = []
  for path in sorted(glob.glob(f'{workdir}/wandb/offline-run-*-{run_id}/run-{run_id}.wandb')):
    history, config = {}, {}
    for record in wandb_records(path):
      kind = record.WhichOneof('record_type')
      if kind == 'history':
        items = {item_key(i): json.loads(i.value_json) for i in record.history.item}
        for key, value in items.items():
          if not key.startswith('_'):
            history.setdefault(key, {})[items['_step']] = value
      elif kind == 'config':
        config.update({item_key(i): json.loads(i.value_json) for i in record.config.update})
    runs.append((history, config))
  return runs


def jsonl_history(workdir):
  """metrics.jsonl as {'split/metric': {step: value}}."""
  history = {}
  for split in ('train', 'validation'):
    for record in read_metrics(workdir, split):
      for key, value in record.items():
        if key not in ('step', 'split'):
          history.setdefault(f'{split}/{key}', {})[record['step']] = value
  return history


def test_a_run_logs_to_wandb_offline_and_mlflow_files_and_resumes_them(
    data_dir, tmp_path, offline, monkeypatch, capsys):
  """Through the training loop, with MLflow's server gone at the validation: warned
  about once and dropped, training finishes; then a resumed run's trackers (the
  writer alone: the loop adds nothing)."""
  workdir = tmp_path / 'run'
  config = lambda steps: tiny_run_config(data_dir, **{
      'training.num_steps': steps, 'training.schedule': 'constant',
      'training.loggers': ('tensorboard', 'wandb', 'mlflow')})
  write = loggers.Mlflow.write

  def server_gone_at_validation(self, step, split, metrics):
    if split == 'validation':
      raise ConnectionError('Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch')
    write(self, step, split, metrics)
  monkeypatch.setattr(loggers.Mlflow, 'write', server_gone_at_validation)
  assert train.train_and_evaluate(config(1), str(workdir))['step'] == 1
  out, err = capsys.readouterr()
  assert 'wandb' not in err and 'mlflow' not in err.lower()  # their own lines held back
  ids = json.loads((workdir / 'trackers.json').read_text())
  assert (f'logging to W&B run {ids["wandb"]} of project run ({workdir}/wandb/offline-run-'
          in out) and ': upload it with wandb sync)' in out
  assert (f'logging to MLflow run {ids["mlflow"]} of experiment run '
          f'(file://{workdir}/mlruns)') in out
  assert [line for line in out.splitlines() if 'warning' in line] == [
      'warning: logger mlflow failed (ConnectionError: Max retries exceeded with url: '
      '/api/2.0/mlflow/runs/log-batch); training goes on without it']
  assert 'trained 1 steps' in out
  assert glob.glob(f'{workdir}/tensorboard/events.*')
  logged = jsonl_history(workdir)
  assert set(logged) >= {'train/loss', 'train/learning_rate', 'validation/top1'}

  [(history, hyperparameters)] = wandb_run(workdir, ids['wandb'])
  assert history == logged
  assert hyperparameters['training.batch_size'] == 8
  assert hyperparameters['training.loggers'] == ['tensorboard', 'wandb', 'mlflow']
  assert hyperparameters['run.start_step'] == 0 and hyperparameters['run.versions.jax']

  client = MlflowClient(f'file://{workdir}/mlruns')
  run = client.get_run(ids['mlflow'])
  train_keys = [key for key in logged if key.startswith('train/')]
  assert {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
          for key in train_keys} == {key: logged[key] for key in train_keys}
  assert not client.get_metric_history(run.info.run_id, 'validation/top1')
  assert run.data.params['training.batch_size'] == '8'
  assert run.data.params['run.start_step'] == '0'
  assert run.data.params['dataset.name'] == 'synthetic_motion/tiny'

  # Resumed at step 1 with more steps: the same tracker runs.
  monkeypatch.undo()
  with MetricWriter(workdir, 1, config(3), {'start_step': 1}) as writer:
    writer.write(2, 'train', {'loss': 0.5})
  assert 'warning' not in capsys.readouterr().out
  assert json.loads((workdir / 'trackers.json').read_text()) == ids
  first, resumed = wandb_run(workdir, ids['wandb'])
  assert first[0] == history and resumed[0] == {'train/loss': {2: 0.5}}
  assert resumed[1]['training.num_steps'] == 3 and resumed[1]['run.start_step'] == 1
  # MLflow: the params of the first start kept, the changed ones as tags.
  run = client.get_run(ids['mlflow'])
  assert run.info.status == 'FINISHED'
  assert run.data.params['training.num_steps'] == '1'
  assert run.data.tags['training.num_steps'] == '3' and run.data.tags['run.start_step'] == '1'
  assert [(m.step, m.value) for m in client.get_metric_history(ids['mlflow'], 'train/loss')
          ] == sorted(logged['train/loss'].items()) + [(2, 0.5)]


def test_a_failing_tracker_is_warned_about_once_and_dropped(tmp_path, monkeypatch, capsys):
  class Unreachable:
    def __init__(self, *args):
      raise RuntimeError('wandb.init() timed out\nafter 90 seconds')

  class ServerGone:
    run_id, writes = 'r1', []

    def __init__(self, *args):
      pass

    def write(self, step, split, metrics):
      ServerGone.writes.append(step)
      raise ConnectionError('Connection refused')

    def close(self, failed):
      raise AssertionError('a dropped tracker is not closed')
  monkeypatch.setitem(loggers.TRACKERS, 'wandb', Unreachable)
  monkeypatch.setitem(loggers.TRACKERS, 'mlflow', ServerGone)
  config = base_config()
  config.training.loggers = ('wandb', 'mlflow')
  with MetricWriter(tmp_path, 0, config, {'start_step': 0}) as writer:
    for step in (1, 2, 3):
      writer.write(step, 'train', {'loss': 1.5})
  assert capsys.readouterr().out == (
      'warning: logger wandb failed (RuntimeError: wandb.init() timed out after 90 '
      'seconds); training goes on without it\n'
      'warning: logger mlflow failed (ConnectionError: Connection refused); training goes '
      'on without it\n')
  assert ServerGone.writes == [1]
  assert [r['step'] for r in read_metrics(tmp_path)] == [1, 2, 3]
  assert not (tmp_path / 'tensorboard').exists()  # not asked for
  assert json.loads((tmp_path / 'trackers.json').read_text()) == {'mlflow': 'r1'}


def test_mlflow_params_are_cut_to_its_lengths(tmp_path, offline, capsys):
  params = {'a': 1, 'long': 'x' * 7000, 'k' * 300: None, **{f'p{i}': i for i in range(150)}}
  tracker = loggers.Mlflow('run', 'project', str(tmp_path), None, params)
  tracker.close(failed=True)
  run = MlflowClient(f'file://{tmp_path}/mlruns').get_run(tracker.run_id)
  assert run.info.status == 'FAILED'
  assert len(run.data.params) == 153
  assert run.data.params['long'] == 'x' * 6000 and run.data.params['k' * 250] == 'null'
  # Resumed: the same run, a changed param as a tag.
  tracker = loggers.Mlflow('run', 'project', str(tmp_path), tracker.run_id, {'a': 2})
  tracker.close(failed=False)
  run = MlflowClient(f'file://{tmp_path}/mlruns').get_run(tracker.run_id)
  assert run.data.params['a'] == '1' and run.data.tags['a'] == '2'
  assert run.info.status == 'FINISHED'
  tracker = loggers.Mlflow('run', 'project', str(tmp_path), tracker.run_id, {'a': 1})
  run = MlflowClient(f'file://{tmp_path}/mlruns').get_run(tracker.run_id)
  assert run.data.params['a'] == '1' and run.data.tags['a'] == '1'  # back again


@pytest.mark.parametrize('loggers_field,message', [
    (('tensorboard', 'neptune'), "training.loggers=('tensorboard', 'neptune') is not a "
     "tuple of distinct names from 'tensorboard', 'wandb', 'mlflow' (metrics.jsonl is "
     "always written)"),
    (('wandb',), 'this needs wandb, which comes with the \'wandb\' extra: pip install -e '
     '".[wandb]" in a clone, or pip install "vivit-jax[wandb]"'),
], ids=['unknown', 'missing'])
def test_an_unknown_logger_or_a_missing_package_is_one_line(
    loggers_field, message, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # not installed
  config = tiny_run_config(str(tmp_path / 'tfds'), **{'training.loggers': loggers_field})
  workdir = tmp_path / 'run'
  assert cli.run(lambda _: train.train_and_evaluate(config, str(workdir))) == 2
  assert capsys.readouterr().err == f'error: {message}\n'
  assert not os.path.exists(workdir)
