"""Faults during training: a non-finite loss, a damaged checkpoint, a failed save, two
trainings on one workdir. Each test checks that nothing earlier is lost and that the
message says what happened."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import final_params, read_metrics, tiny_run_config
from vivit import checkpoints, errors, optim, train


def nan_from_step(monkeypatch, first_bad_step: int):
  """A learning rate that turns NaN from update `first_bad_step` (1-based) on."""
  make_schedule = optim.make_schedule

  def poisoned(*args):
    schedule = make_schedule(*args)
    return lambda count: jnp.where(count >= first_bad_step - 1, jnp.nan, schedule(count))
  monkeypatch.setattr(optim, 'make_schedule', poisoned)


def all_finite(tree):
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(tree))


def test_nonfinite_loss_stops_and_keeps_the_last_finite_checkpoint(
    data_dir, tmp_path, monkeypatch):  # noqa: F811
  nan_from_step(monkeypatch, 3)
  workdir = str(tmp_path / 'nan')
  with pytest.raises(errors.TrainingDiverged,
                     match=r'not finite after step 3.*checkpoints/2, is finite'):
    train.train_and_evaluate(tiny_run_config(data_dir, **{'training.num_steps': 6}), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  assert all_finite(final_params(workdir, 2))
  # The step after names the loss.
  monkeypatch.undo()
  nan_from_step(monkeypatch, 3)
  workdir = str(tmp_path / 'nan_logged')
  config = tiny_run_config(data_dir, **{'training.num_steps': 6, 'training.log_every': 4,
                                    'training.checkpoint_every': 4})
  with pytest.raises(errors.TrainingDiverged, match=r'the loss is nan at step 4'):
    train.train_and_evaluate(config, workdir)
  assert not os.listdir(os.path.join(workdir, 'checkpoints'))


def test_nonfinite_steps_skipped_and_counted_when_configured(
    data_dir, tmp_path, monkeypatch):  # noqa: F811
  nan_from_step(monkeypatch, 3)
  workdir = str(tmp_path / 'skip')
  config = tiny_run_config(data_dir, **{'training.num_steps': 5, 'training.nonfinite': 'skip'})
  result = train.train_and_evaluate(config, workdir)
  assert result['step'] == 5 and all_finite(result['params'])
  assert [r['skipped_steps'] for r in read_metrics(workdir)] == [0, 0, 1, 2, 3]
  with pytest.raises(ValueError, match="unknown training.nonfinite 'ignore'"):
    train.train_and_evaluate(tiny_run_config(data_dir, **{'training.nonfinite': 'ignore'}),
                             str(tmp_path / 'typo'))


def test_truncated_latest_checkpoint_falls_back_to_the_previous(
    data_dir, tmp_path, capsys):  # noqa: F811
  workdir = str(tmp_path / 'truncated')
  train.train_and_evaluate(tiny_run_config(data_dir, **{'training.num_steps': 4}), workdir)
  latest = os.path.join(workdir, 'checkpoints', '4')
  files = [os.path.join(root, f) for root, _, names in os.walk(latest) for f in names]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 2)
  capsys.readouterr()
  result = train.train_and_evaluate(tiny_run_config(data_dir, **{'training.num_steps': 6}),
                                    workdir)
  out = capsys.readouterr().out
  assert f'warning: checkpoint {latest} cannot be read' in out
  assert f'resumed from {workdir}/checkpoints/2' in out
  assert result['step'] == 6
  assert os.listdir(os.path.join(workdir, 'unreadable_checkpoints'))
  # A readable checkpoint of another config's train state is not "damaged": refused,
  # and kept where it is.
  kept = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  with pytest.raises(ValueError, match=r'checkpoints/6 holds a train state of a different'):
    train.train_and_evaluate(tiny_run_config(data_dir, **{'training.num_steps': 8,
                                                      'training.nonfinite': 'skip'}), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == kept


def test_hosts_agree_on_the_checkpoint_to_resume_from(tmp_path, monkeypatch, capsys):
  """Two hosts (the second simulated through `process_allgather`): when the other
  host cannot read the newest checkpoint, this one falls back with it instead of
  resuming from a different step; when both read it, both resume there."""
  from jax.experimental import multihost_utils
  manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'),
                                  options=ocp.CheckpointManagerOptions(create=True))
  weights = {step: np.full(8, step, np.float32) for step in (1, 2)}
  for step in (1, 2):
    manager.save(step, args=ocp.args.StandardSave({'w': weights[step]}))
  manager.wait_until_finished()
  target = {'w': np.zeros(8, np.float32)}
  other_host = []  # the other host's outcome at each attempt
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda x: np.array([x, other_host.pop(0)]))
  monkeypatch.setattr(multihost_utils, 'sync_global_devices', lambda name: None)
  other_host[:] = [0]
  assert checkpoints.restore_latest(manager, target)[0] == 2
  other_host[:] = [1, 0]
  step, state = checkpoints.restore_latest(manager, target)
  assert step == 1 and (state['w'] == 1).all() and not other_host
  assert (f'warning: checkpoint {tmp_path}/checkpoints/2 cannot be read (another host '
          f'cannot read it)') in capsys.readouterr().out
  assert os.listdir(tmp_path / 'unreadable_checkpoints')[0].startswith('2-')


def test_failed_save_is_reported_and_keeps_earlier_checkpoints(
    data_dir, tmp_path, monkeypatch):  # noqa: F811
  save = ocp.CheckpointManager.save

  def disk_full_at_step_4(self, step, *args, **kwargs):
    if step == 4 and 'checkpoints' in str(self.directory):
      raise OSError(28, 'No space left on device')
    return save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full_at_step_4)
  workdir = str(tmp_path / 'full')
  with pytest.raises(errors.CheckpointSaveError,
                     match=r'saving checkpoint 4 .*No space left on device.*latest: 2'):
    train.train_and_evaluate(tiny_run_config(data_dir, **{'training.num_steps': 6}), workdir)
  assert all_finite(final_params(workdir, 2))


def test_second_training_on_a_workdir_refuses(data_dir, tmp_path):  # noqa: F811
  workdir = str(tmp_path / 'busy')
  with checkpoints.WorkdirLock(workdir):
    with pytest.raises(errors.WorkdirBusy, match=r'workdir .*busy is in use by another training '
                                           r'\(pid \d+'):
      train.train_and_evaluate(tiny_run_config(data_dir), workdir)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
