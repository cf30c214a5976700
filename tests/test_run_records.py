"""What a training keeps on record and how it fails to: a full disk on any workdir
write (one line naming the path; what was written before stays readable), a resume
with changed settings (printed, refused where they break the run), WORKDIR/run.json
and `training.keep_checkpoints`."""
import errno
import json
import os
import re
import subprocess
import sys

from etils import epath

import jax
import numpy as np

from helpers import (ROOT, assert_quiet, cli_args, final_params, read_metrics, run_env,
                     tiny_run_config)
from vivit import cli, train, workdir as workdir_lib

# A training whose orbax save of checkpoint 4 fails in one of orbax's writer threads
# (the tree's _METADATA file), as on a full disk.
CHECKPOINT_4_DISK_FULL = '''
import sys
from etils import epath
write_text = epath.Path.write_text
def full(path, *args, **kwargs):
  if '/checkpoints/4' in str(path) and str(path).endswith('/_METADATA'):
    raise OSError(28, 'No space left on device', str(path))
  return write_text(path, *args, **kwargs)
epath.Path.write_text = full
from vivit.train import cli
sys.argv[0] = 'vivit-train'
cli()
'''


def test_disk_full_during_a_checkpoint_save_is_one_line(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  args = cli_args(data_dir, workdir, **{'training.num_steps': 6})
  result = subprocess.run([sys.executable, '-c', CHECKPOINT_4_DISK_FULL] + args[3:],
                          env=run_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr == (
      f'error: saving checkpoint 4 failed: {workdir}/checkpoints/4 cannot be written (No '
      f'space left on device); the checkpoints before it are intact (latest: 2)\n'
  ), result.stderr[-3000:]
  assert_quiet(result.stdout)
  assert [r['step'] for r in read_metrics(workdir)] == [1, 2, 3, 4]
  assert all_finite(final_params(workdir, 2))
  # The start is on record, in run.json and as TensorBoard text.
  [run] = json.loads((workdir / 'run.json').read_text())
  assert run['start_step'] == 0 and run['command'][0] == 'vivit-train'
  assert f'--workdir={workdir}' in run['command']
  events = b''.join(path.read_bytes() for path in (workdir / 'tensorboard').iterdir())
  assert b'start_step' in events and b'tensorflow-datasets' in events


def all_finite(tree):
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(tree))


class FullAfter:
  """A file whose writes fail as on a full disk after `lines` of them."""

  def __init__(self, file, lines):
    self._file, self._lines = file, lines

  def write(self, text):
    if self._lines == 0:
      raise OSError(errno.ENOSPC, 'No space left on device')
    self._lines -= 1
    return self._file.write(text)

  def __getattr__(self, name):
    return getattr(self._file, name)


def test_disk_full_on_metrics_events_or_records_then_resume_with_changes(
    data_dir, tmp_path, monkeypatch, capfd):
  """A full disk while writing metrics.jsonl, TensorBoard events or config.json: one
  line naming it, the lines and checkpoints written before kept; then resumes with
  changed settings, refused where they change the run, printed; run.json."""
  workdir = str(tmp_path / 'run')
  config = lambda **kw: tiny_run_config(data_dir, **{'training.num_steps': 4,
                                                     'training.eval_every': 4, **kw})
  init = workdir_lib.MetricWriter.__init__

  def metrics_full_at_step_3(self, *args):
    init(self, *args)
    self._jsonl = FullAfter(self._jsonl, 2)
  monkeypatch.setattr(workdir_lib.MetricWriter, '__init__', metrics_full_at_step_3)
  status = cli.run(lambda _: train.train_and_evaluate(config(), workdir))
  out, err = capfd.readouterr()
  assert status == 2
  assert err == f'error: {workdir}/metrics.jsonl cannot be written: No space left on device\n'
  assert [r['step'] for r in read_metrics(workdir)] == [1, 2]

  # TensorBoard's events, resuming from checkpoint 2.
  import tensorflow as tf

  def events_full(self, *args):
    init(self, *args)

    def flush():
      raise tf.errors.ResourceExhaustedError(None, None, f'{workdir}/tensorboard/events; '
                                             f'No space left on device')
    self._tb.flush = flush
  monkeypatch.setattr(workdir_lib.MetricWriter, '__init__', events_full)
  status = cli.run(lambda _: train.train_and_evaluate(config(), workdir))
  out, err = capfd.readouterr()
  assert status == 2 and f'resumed from {workdir}/checkpoints/2' in out
  assert err == (f'error: {workdir}/tensorboard cannot be written: {workdir}/tensorboard/'
                 f'events; No space left on device\n'), err
  assert [r['step'] for r in read_metrics(workdir)] == [1, 2]

  # A record (config.json): its earlier version stays whole.
  monkeypatch.undo()
  write_text = epath.Path.write_text

  def records_full(path, *args, **kwargs):
    if path.name == 'config.json.tmp':
      raise OSError(errno.ENOSPC, 'No space left on device')
    return write_text(path, *args, **kwargs)
  monkeypatch.setattr(type(epath.Path(workdir)), 'write_text', records_full)
  recorded = (tmp_path / 'run' / 'config.json').read_text()
  assert cli.run(lambda _: train.train_and_evaluate(config(), workdir)) == 2
  assert capfd.readouterr().err == (f'error: {workdir}/config.json cannot be written: No '
                                    f'space left on device\n')
  assert (tmp_path / 'run' / 'config.json').read_text() == recorded
  assert not os.path.exists(os.path.join(workdir, 'config.json.tmp'))
  monkeypatch.undo()

  # Changes that alter the run to come: refused, every one named with both values.
  changed = {'training.learning_rate': 0.002, 'training.num_steps': 6, 'training.log_every': 2}
  assert cli.run(lambda _: train.train_and_evaluate(config(**changed), workdir)) == 2
  assert capfd.readouterr().err == (
      f'error: workdir {workdir} (step 2) was trained with other settings that change the '
      f'batches, randomness or schedule to come: training.learning_rate 0.001 -> 0.002; '
      f'training.num_steps 4 -> 6 (the cosine schedule decays over the total steps, 4 -> '
      f'6); resume with the config it was written with (WORKDIR/config.json), pass '
      f'--config.training.allow_changes=True to resume with them anyway, or use a new '
      f'--workdir\n')
  assert (tmp_path / 'run' / 'config.json').read_text() == recorded
  # Unless asked: printed, and trained with.
  result = train.train_and_evaluate(config(**changed, **{'training.allow_changes': True}),
                                    workdir)
  assert result['step'] == 6
  assert ('resuming with changed settings: training.allow_changes False -> True, '
          'training.learning_rate 0.001 -> 0.002, training.log_every 1 -> 2, '
          'training.num_steps 4 -> 6') in capfd.readouterr().out
  assert [r['step'] for r in read_metrics(workdir)] == [1, 2, 4, 6]
  # Harmless changes: printed, accepted.
  harmless = {**changed, 'training.checkpoint_every': 4, 'training.keep_checkpoints': 5,
              'dataset.num_threads': 1}
  assert train.train_and_evaluate(config(**harmless), workdir)['step'] == 6
  assert ('resuming with changed settings: dataset.num_threads 0 -> 1, '
          'training.allow_changes True -> False, training.checkpoint_every 2 -> 4, '
          'training.keep_checkpoints 2 -> 5') in capfd.readouterr().out

  # run.json: a record per start that got past the records (not the refused ones).
  runs = json.loads((tmp_path / 'run' / 'run.json').read_text())
  assert [r['start_step'] for r in runs] == [0, 2, 2, 6]
  for run in runs:
    assert set(run['versions']) == {'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint',
                                    'tensorflow', 'tensorflow-datasets', 'numpy',
                                    'vivit-jax'}
    assert all(run['versions'][name] for name in ('jax', 'numpy', 'tensorflow'))
    assert run['devices'] == {'platform': 'cpu', 'kind': 'cpu', 'count': 1}
    assert run['process_count'] == 1 and run['command'] == sys.argv
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00', run['start_time'])
  if os.path.isdir(os.path.join(ROOT, '.git')) or os.path.isfile(os.path.join(ROOT, '.git')):
    assert re.fullmatch(r'[0-9a-f]{40}', runs[0]['git']['commit'])
    assert isinstance(runs[0]['git']['dirty'], bool)


def test_keep_checkpoints_below_one_is_refused(data_dir, tmp_path, capsys):
  config = tiny_run_config(data_dir, **{'training.keep_checkpoints': 0})
  assert cli.run(lambda _: train.train_and_evaluate(config, str(tmp_path / 'run'))) == 2
  assert capsys.readouterr().err == ('error: training.keep_checkpoints=0 is not a whole '
                                     'number from 1 to 2147483647, or None\n')
  assert not os.path.exists(tmp_path / 'run')
