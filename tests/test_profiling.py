"""The profile of a training run's steps (`vivit.profiling`, `training.profile_steps`):
off by default, cut short cleanly, a warning when the profiler is taken. (Written by
a tiny training run: tests/test_train.py; the field's range: test_hostile_arguments.)"""
import glob
import os
import re

import jax
import jax.numpy as jnp
import pytest

from vivit.profiling import ProfileWindow

_double = jax.jit(lambda x: 2 * x)


def run_steps(window, steps):
  """Steps 1..`steps` of a toy 'training' through `window`: the last value."""
  x = jnp.ones(4)
  for step in range(1, steps + 1):
    x = window.run(step, _double, x)
  return x


def traces(log_dir):
  return glob.glob(os.path.join(log_dir, 'plugins', 'profile', '*', '*.xplane.pb'))


def test_no_profile_by_default(tmp_path, capsys):
  with ProfileWindow(0, 0, tmp_path / 'tensorboard') as window:
    assert run_steps(window, 4).tolist() == [16.0] * 4
  assert not (tmp_path / 'tensorboard').exists()
  assert capsys.readouterr().out == ''


def test_a_run_stopped_inside_the_window_writes_what_was_traced(tmp_path, capsys):
  """Steps 6-8 of a run resumed at step 4: stopped (an error) after step 6, the trace
  ends cleanly and holds the step, annotated; the error goes on."""
  log_dir = str(tmp_path / 'tensorboard')
  with pytest.raises(KeyboardInterrupt, match='stop'):
    with ProfileWindow(3, 4, log_dir) as window:
      x = jnp.ones(4)
      for step in (5, 6):
        x = window.run(step, _double, x)
      raise KeyboardInterrupt('stop')
  [trace] = traces(log_dir)
  run = os.path.dirname(trace)
  with open(trace, 'rb') as f:
    xplane = f.read()
  assert b'train' in xplane and b'step_num' in xplane  # the StepTraceAnnotation
  assert capsys.readouterr().out.splitlines() == [
      f'profiling steps 6-8 (training.profile_steps) into {log_dir}/plugins/profile/',
      f'profile of step 6 written to {run}; view it with `tensorboard --logdir '
      f'{log_dir}` (Profile tab; pip install xprof)']
  jax.profiler.start_trace(str(tmp_path / 'again'))  # no trace is left running
  jax.profiler.stop_trace()


def test_a_profiler_already_running_is_a_warning(tmp_path, capsys):
  jax.profiler.start_trace(str(tmp_path / 'theirs'))
  try:
    with ProfileWindow(2, 0, tmp_path / 'tensorboard') as window:
      assert run_steps(window, 4).tolist() == [16.0] * 4
  finally:
    jax.profiler.stop_trace()  # the one started here, still running
  out = capsys.readouterr().out
  assert re.fullmatch(r'warning: the profile of steps 2-3 \(training.profile_steps\) did '
                      r'not start \(RuntimeError: Profile has already been started\. '
                      r'.*\); training goes on without it\n', out), out
  assert not traces(tmp_path / 'tensorboard') and traces(tmp_path / 'theirs')


def test_a_trace_that_cannot_be_written_is_a_warning(tmp_path, capsys, monkeypatch):
  stop_trace = jax.profiler.stop_trace

  def failing_stop_trace():
    stop_trace()
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(jax.profiler, 'stop_trace', failing_stop_trace)
  log_dir = tmp_path / 'tensorboard'
  with ProfileWindow(2, 0, log_dir) as window:
    assert run_steps(window, 4).tolist() == [16.0] * 4
  assert capsys.readouterr().out.splitlines()[1:] == [
      f'warning: the profile of steps 2-3 could not be written to {log_dir}/plugins/'
      f'profile/ (OSError: [Errno 28] No space left on device)']
