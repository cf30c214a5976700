"""A run's directory (`vivit.workdir`): paths, atomic writes, the lock, the model
record, class names and the metric writer. (The same through a URL workdir:
tests/test_url_workdir.py; a training refused by a held lock: tests/test_faults.py.)"""
import json
import os
import re

import pytest

from helpers import tiny_model_config
from vivit import errors, workdir


def test_local_paths_are_made_absolute_and_urls_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert workdir.is_local('runs/demo') and workdir.is_local('/abs/run')
  assert not workdir.is_local('gs://bucket/run')
  assert os.fspath(workdir.as_path('runs/demo')) == str(tmp_path / 'runs' / 'demo')
  assert os.fspath(workdir.as_path('gs://bucket/run')) == 'gs://bucket/run'


def test_write_atomically_replaces_the_file_and_leaves_no_partial_one(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text('old')
  workdir.write_atomically(path, 'new')
  assert path.read_text() == 'new'
  assert os.listdir(tmp_path) == ['config.json']


def test_a_held_workdir_refuses_a_second_lock_until_released(tmp_path):
  run = str(tmp_path / 'run')
  with workdir.WorkdirLock(run):
    holder = (tmp_path / 'run' / '.lock').read_text()
    assert re.fullmatch(rf'pid {os.getpid()} on \S+, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d',
                        holder), holder
    with pytest.raises(errors.WorkdirBusy, match=re.escape(
        f'workdir {run} is in use by another training ({holder}); wait for it to finish '
        f'or use another --workdir')):
      with workdir.WorkdirLock(run):
        pass
  with workdir.WorkdirLock(run):  # released at exit
    pass


def test_a_workdir_that_cannot_be_written_is_named(tmp_path):
  (tmp_path / 'file').write_text('')
  run = str(tmp_path / 'file' / 'run')
  with pytest.raises(errors.OutputError,
                     match=re.escape(f'{run}/.lock cannot be written: Not a directory')):
    with workdir.WorkdirLock(run):
      pass


def test_model_config_json_round_trip_keeps_tuples():
  config = tiny_model_config(tubelet=(2, 4, 4))
  text = workdir.model_config_to_json(config)
  back = workdir.model_config_from_json(text)
  assert back.tubelet == (2, 4, 4) and back.input_size == (4, 16, 16)
  assert workdir.model_config_to_json(back) == text


def test_load_model_config_reads_the_record_or_names_a_bad_one(tmp_path):
  assert workdir.load_model_config(tmp_path) is None
  workdir.record_workdir_model(tmp_path, tiny_model_config(num_layers=3))
  assert workdir.load_model_config(tmp_path).num_layers == 3
  (tmp_path / 'model_config.json').write_text('{"num_layers": ')
  with pytest.raises(errors.CheckpointError,
                     match=re.escape(f'{tmp_path}/model_config.json is not a model config:')):
    workdir.load_model_config(tmp_path)


def test_workdir_model_check_refuses_another_model_and_reports_training_only_changes(
    tmp_path):
  config = tiny_model_config()
  assert workdir.check_workdir_model(tmp_path, config) == []  # nothing recorded yet
  workdir.record_workdir_model(tmp_path, config)
  assert workdir.check_workdir_model(tmp_path, config) == []
  assert workdir.check_workdir_model(
      tmp_path, tiny_model_config(dropout_rate=0.1, remat=True)) == [
          'model.dropout_rate 0.0 -> 0.1', 'model.remat False -> True']
  other = tiny_model_config(num_layers=3, dropout_rate=0.1)
  other.temporal.num_heads = 4
  with pytest.raises(errors.CheckpointError, match=re.escape(
      f'workdir {tmp_path} holds checkpoints of a different model (model.num_layers: 2 in '
      f'the workdir, 3 now; model.temporal.num_heads: 2 in the workdir, 4 now); resume '
      f'with the config it was written with (WORKDIR/config.json), or use a new '
      f'--workdir')):
    workdir.check_workdir_model(tmp_path, other)


def test_class_names_of_one_head_or_several(tmp_path):
  assert workdir.load_class_names(tmp_path) is None
  workdir.save_class_names(tmp_path, ('walk', 'run'))
  assert workdir.load_class_names(tmp_path) == ['walk', 'run']
  heads = {'verb': ['take', 'put'], 'noun': ['cup', 'knife', 'tap']}
  workdir.save_class_names(tmp_path, heads)
  assert workdir.load_class_names(tmp_path) == heads
  assert list(workdir.load_class_names(tmp_path)) == ['verb', 'noun']  # the logits' order


def test_metric_writer_resuming_drops_later_records_and_a_cut_line(tmp_path):
  written = [{'step': 1, 'split': 'train', 'loss': 2.0},
             {'step': 2, 'split': 'train', 'loss': 1.5},
             {'step': 2, 'split': 'validation', 'top1': 0.25},
             {'step': 3, 'split': 'train', 'loss': 1.25}]
  metrics = tmp_path / 'metrics.jsonl'
  metrics.write_text(''.join(json.dumps(r) + '\n' for r in written) + '{"step": 4, "spl')
  writer = workdir.MetricWriter(workdir.as_path(tmp_path), start=2)
  assert writer.active
  assert writer.logged(2, 'validation') and writer.logged(1, 'train')
  assert not writer.logged(3, 'train')
  writer.write(3, 'train', {'loss': 1.0, 'accuracy': 0.5})
  writer.close()
  records = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert records == written[:3] + [{'step': 3, 'split': 'train', 'loss': 1.0,
                                    'accuracy': 0.5}]
  assert os.listdir(tmp_path / 'tensorboard')
