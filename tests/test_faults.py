"""Faults during training: a non-finite loss, a damaged or unreadable checkpoint, a
resume with another model, a failed save, two trainings on one workdir, signals.
Each test checks that nothing earlier is lost and that the message says what
happened."""
import errno
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from etils import epath

from helpers import final_params, read_metrics, tiny_run_config
from vivit import checkpoints, cli, errors, optim, train
from vivit.input import pipeline
from vivit.workdir import WorkdirLock, load_model_config


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


def listing(directory):
  """{relative path: size} of every file under `directory`."""
  return {os.path.relpath(os.path.join(root, f), directory):
          os.path.getsize(os.path.join(root, f))
          for root, _, names in os.walk(directory) for f in names}


def test_resume_checks_before_touching_the_workdir(data_dir, tmp_path, monkeypatch, capsys):
  """An I/O error while restoring, or another model: the command stops with one line,
  and every checkpoint, best/ and the recorded configs stay as they were. A changed
  dropout rate (training-only) resumes."""
  workdir = str(tmp_path / 'run')
  config = lambda **kw: tiny_run_config(data_dir, **{'training.num_steps': 4,
                                                     'training.eval_every': 2, **kw})
  train.train_and_evaluate(config(), workdir)
  before = listing(workdir)
  assert 'checkpoints/4/default/_METADATA' in before
  assert any(name.startswith('best/') for name in before)
  read_text = epath.Path.read_text

  def failing_read(path, *args, **kwargs):
    if str(path).endswith('/default/_METADATA'):
      raise OSError(errno.EIO, 'Input/output error', str(path))
    return read_text(path, *args, **kwargs)
  monkeypatch.setattr(type(epath.Path(workdir)), 'read_text', failing_read)
  monkeypatch.setattr(checkpoints, 'RETRY_PAUSES_S', (0.0,))
  capsys.readouterr()
  longer = {'training.num_steps': 6, 'training.allow_changes': True}  # the schedule changes
  status = cli.run(lambda _: train.train_and_evaluate(config(**longer), workdir))
  out, err = capsys.readouterr()
  assert status == 2
  assert err.count('\n') == 1 and err.startswith(
      f'error: cannot read checkpoint {workdir}/checkpoints/4 (OSError: [Errno 5] '
      f'Input/output error'), err
  assert 'every checkpoint is left as it was' in err
  assert 'reading checkpoint' in out and 'trying again' in out  # retried first
  assert listing(workdir) == before
  monkeypatch.undo()

  # Another model: refused, naming each field with both values.
  recorded = {name: (tmp_path / 'run' / name).read_text()
              for name in ('config.json', 'model_config.json')}
  for field, value, shown in [('attention_order', 'space_time', "'time_space' in the "
                               "workdir, 'space_time' now"),
                              ('classifier', 'gap', "'token' in the workdir, 'gap' now"),
                              ('num_layers', 2, '1 in the workdir, 2 now')]:
    with pytest.raises(errors.CheckpointError, match=f'model.{field}: {shown}'):
      train.train_and_evaluate(config(**{f'model.{field}': value}), workdir)
    assert {name: (tmp_path / 'run' / name).read_text() for name in recorded} == recorded
  assert listing(workdir) == before

  # The fault gone, a training-only change: resumes at the latest step.
  result = train.train_and_evaluate(config(**longer, **{'model.dropout_rate': 0.1}), workdir)
  out = capsys.readouterr().out
  assert f'resumed from {workdir}/checkpoints/4' in out
  assert 'model.dropout_rate 0.0 -> 0.1' in out
  assert result['step'] == 6
  assert load_model_config(workdir).dropout_rate == 0.1


def test_damaged_latest_checkpoint_falls_back_to_the_previous(
    data_dir, tmp_path, capsys):  # noqa: F811
  workdir = str(tmp_path / 'truncated')
  config = lambda steps, **kw: tiny_run_config(
      data_dir, **{'training.num_steps': steps, 'training.eval_every': 2,
                   'training.allow_changes': True, **kw})  # resumed for more steps
  train.train_and_evaluate(config(4), workdir)
  latest = os.path.join(workdir, 'checkpoints', '4')
  files = [os.path.join(root, f) for root, _, names in os.walk(latest) for f in names]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 2)
  assert checkpoints.best_manager(workdir).best_step() in (2, 4)
  capsys.readouterr()
  result = train.train_and_evaluate(config(6), workdir)
  out = capsys.readouterr().out
  assert f'warning: checkpoint {latest} is damaged (OUT_OF_RANGE: ' in out
  assert f'resumed from {workdir}/checkpoints/2' in out
  assert result['step'] == 6
  # Kept, out of the way: the damaged state and the best params newer than step 2,
  # which this run saved again.
  aside = sorted(n.rsplit('-', 1)[0] for n in os.listdir(os.path.join(workdir, 'set_aside')))
  assert aside == ['best-4', 'checkpoints-4'] or aside == ['checkpoints-4']
  best = checkpoints.best_manager(workdir)
  validation = {r['step']: r['top1'] for r in read_metrics(workdir, 'validation')}
  assert list(validation) == [2, 4, 6]
  # The best of this history (step 2's, or a better one this run saved), and only it.
  assert best.all_steps() == [best.best_step()]
  assert validation[best.best_step()] == max(validation.values())
  # A readable checkpoint of another config's train state is not "damaged": refused,
  # and kept where it is.
  kept = listing(workdir)
  with pytest.raises(ValueError, match=r'checkpoints/6 holds a train state of a different'):
    train.train_and_evaluate(config(8, **{'training.nonfinite': 'skip'}), workdir)
  assert listing(workdir) == kept
  # Every checkpoint damaged: no silent restart from step 0, unless asked.
  for step in os.listdir(os.path.join(workdir, 'checkpoints')):
    (tmp_path / 'truncated' / 'checkpoints' / step / 'default' / '_METADATA').write_text('{')
  with pytest.raises(errors.CheckpointError, match=r'every checkpoint of .* is damaged '
                     r'\(steps 4, 6, now in .*restart_from_scratch=True'):
    train.train_and_evaluate(config(8), workdir)
  result = train.train_and_evaluate(config(2, **{'training.restart_from_scratch': True}),
                                    workdir)
  assert result['step'] == 2 and checkpoints.best_manager(workdir).all_steps() == [2]


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
  other_host[:] = [checkpoints.READ]
  assert checkpoints.restore_latest(manager, target)[0] == 2
  # The other host cannot read step 2 for a reason other than damage: all stop.
  other_host[:] = [checkpoints.FAILED]
  with pytest.raises(errors.CheckpointError, match=r'cannot read checkpoint .*/2 \(another '
                     r'host cannot read it\)'):
    checkpoints.restore_latest(manager, target)
  other_host[:] = [checkpoints.DAMAGED, checkpoints.READ]
  step, state = checkpoints.restore_latest(manager, target)
  assert step == 1 and (state['w'] == 1).all() and not other_host
  assert (f'warning: checkpoint {tmp_path}/checkpoints/2 is damaged (another host '
          f'cannot read it)') in capsys.readouterr().out
  assert os.listdir(tmp_path / 'set_aside')[0].startswith('checkpoints-2-')


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
  with WorkdirLock(workdir):
    with pytest.raises(errors.WorkdirBusy, match=r'workdir .*busy is in use by another training '
                                           r'\(pid \d+'):
      train.train_and_evaluate(tiny_run_config(data_dir), workdir)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


def test_stop_signal_during_validation_saves_and_validates_again_on_resume(
    data_dir, tmp_path, monkeypatch, capsys):
  """Ctrl-C (as SIGTERM) in the middle of a long validation: the pass stops within a
  batch, the step is saved, and the resumed run validates that step first."""
  eval_batches = pipeline.eval_batches
  signalled, read = [], []

  def slow_batches(*args, **kwargs):
    for batch in eval_batches(*args, **kwargs):
      if not signalled:
        signalled.append(True)
        os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)  # ten batches: a 5 s validation
      read.append(1)
      yield batch
  monkeypatch.setattr(pipeline, 'eval_batches', slow_batches)
  workdir = str(tmp_path / 'run')
  config = lambda: tiny_run_config(data_dir, **{'training.num_steps': 8,
                                                'training.checkpoint_every': 100,
                                                'eval.batch_size': 2})
  result = train.train_and_evaluate(config(), workdir)
  assert len(read) <= 4  # of 10: the batch asked after, and those prefetched
  assert result['step'] == 6
  assert 'SIGINT: saved checkpoint at step 6 (its validation was cut short' in (
      capsys.readouterr().out)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['6']
  assert not read_metrics(workdir, 'validation')
  monkeypatch.undo()
  result = train.train_and_evaluate(config(), workdir)
  assert result['step'] == 8
  assert [r['step'] for r in read_metrics(workdir, 'validation')] == [6, 8]
  assert [r['step'] for r in read_metrics(workdir)] == list(range(1, 9))


def test_second_ctrl_c_interrupts_at_once():
  previous = signal.getsignal(signal.SIGINT)
  with train.StopRequest() as stop_request:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert stop_request.caught == signal.SIGINT and stop_request.agreed(1, due=False)
    with pytest.raises(KeyboardInterrupt, match=r'^$'):  # Python's own, without a message
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
  assert signal.getsignal(signal.SIGINT) == previous
