"""`training.profile_steps=N`: a jax profiler trace of N training steps, written where
TensorBoard's profile plugin reads it.

Each start of training (a resume too) traces steps START+2 to START+N+1: the first
step after a start compiles the train step and is left out. Process 0 traces, into
WORKDIR/tensorboard/plugins/profile/<time>/<host>.xplane.pb, every step marked
(`jax.profiler.StepTraceAnnotation`) so that the trace viewer shows where each
begins; `tensorboard --logdir WORKDIR/tensorboard` shows it under Profile (with
`pip install xprof`). A trace that cannot start (another one running in the process)
or be written is a warning: training goes on without it.
"""
import os
from typing import Any, Callable, Set

import jax
from etils import epath

from vivit.errors import summary

# Steps after a start (or resume) left out of the trace: the first compiles.
STEPS_BEFORE_TRACE = 1


def _steps(first: int, last: int) -> str:
  return f'steps {first}-{last}' if last > first else f'step {first}'


class ProfileWindow:
  """The training steps to trace, a context over the training loop: `run(step, fn,
  *args)` runs step `step`'s computation, traced inside the window. Leaving the
  context (training ended or stopped inside the window, or failed) ends the trace
  and writes what it holds."""

  def __init__(self, num_steps: int, start: int, log_dir: epath.PathLike):
    """`num_steps` (0: none) from the second step after `start`, into `log_dir`."""
    self.first = start + STEPS_BEFORE_TRACE + 1
    self.last = self.first + num_steps - 1
    self._log_dir = epath.Path(log_dir)
    self._pending = num_steps > 0 and jax.process_index() == 0  # not started yet
    self._tracing = False
    self._runs_before: Set[str] = set()  # the trace directories before this one
    self._last_traced = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._stop()

  def run(self, step: int, fn: Callable[..., Any], *args) -> Any:
    """`fn(*args)`, the computation of training step `step`, traced when `step` is in
    the window."""
    if self._pending and step == self.first:
      jax.block_until_ready(args)  # the steps before are done, not in the trace
      self._start()
    if not self._tracing:
      return fn(*args)
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      outputs = fn(*args)
    self._last_traced = step
    if step == self.last:
      jax.block_until_ready(outputs)  # the devices' work on it is in the trace
      self._stop()
    return outputs

  def _profile_dir(self) -> epath.Path:
    return self._log_dir / 'plugins' / 'profile'

  def _runs(self) -> Set[str]:
    """The trace directories under `_profile_dir`."""
    try:
      return {path.name for path in self._profile_dir().iterdir()}
    except Exception:  # pylint: disable=broad-except  (none yet; a store's own errors)
      return set()

  def _start(self) -> None:
    self._pending = False
    self._runs_before = self._runs()
    try:
      jax.profiler.start_trace(os.fspath(self._log_dir))
    except Exception as e:  # pylint: disable=broad-except  (a profile never stops training)
      print(f'warning: the profile of {_steps(self.first, self.last)} '
            f'(training.profile_steps) did not start ({summary(e)}); training goes on '
            f'without it', flush=True)
      return
    self._tracing = True
    print(f'profiling {_steps(self.first, self.last)} (training.profile_steps) into '
          f'{self._profile_dir()}/', flush=True)

  def _stop(self) -> None:
    if not self._tracing:
      return
    self._tracing = False
    steps = _steps(self.first, self._last_traced or self.first)
    try:
      jax.profiler.stop_trace()
    except Exception as e:  # pylint: disable=broad-except  (nor does its export)
      print(f'warning: the profile of {steps} could not be written to '
            f'{self._profile_dir()}/ ({summary(e)})', flush=True)
      return
    new = sorted(self._runs() - self._runs_before)
    where = self._profile_dir() / new[-1] if new else self._profile_dir()
    print(f'profile of {steps} written to {where}; view it with `tensorboard '
          f'--logdir {self._log_dir}` (Profile tab; pip install xprof)', flush=True)
