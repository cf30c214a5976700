"""Train a ViViT: `vivit-train --config CONFIG --workdir DIR` (or `python -m vivit.train`).

  vivit-train --config configs/synthetic_motion.py --workdir runs/demo
  vivit-train --config configs/kinetics400/vivit_b_16x2.py --workdir /ckpt/k400 \\
      --config.dataset.data_dir=/data/tfds --config.init_from.path=ViT-B_16.npz

Resumes from the latest checkpoint in DIR (step, params, optimiser state; the RNG
and the data position are functions of the step). SIGTERM saves and exits. Any
config field can be set with --config.SECTION.FIELD=VALUE. DIR may be a local
directory or a URL that `etils.epath` reads and writes (`gs://bucket/run`).
"""
import json
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from vivit import checkpoints, errors, evaluate, initialise, loggers, sharding, task
from vivit import cli as cli_lib
from vivit.config_changes import check_resume
from vivit.input import pipeline
from vivit.models import build_model, init_params
from vivit.optim import all_finite, make_optimizer, skipped_steps
from vivit.profiling import ProfileWindow
from vivit.recipes import check_config
from vivit.run_record import append_run_record, run_record
from vivit.step import initial_state, train_step
from vivit.workdir import (MetricWriter, WorkdirLock, as_path, check_workdir_model,
                           read_record, record_workdir_model, save_class_names,
                           tensorboard_dir, write_atomically)

# With several hosts, how often (in steps) they agree on whether one got SIGTERM.
STOP_CHECK_EVERY = 10


class StopRequest:
  """SIGTERM, or a first Ctrl-C (SIGINT), while training: a context that catches
  them; a second Ctrl-C interrupts at once. Every host must stop at the same step,
  so with several hosts they agree every STOP_CHECK_EVERY steps and whenever
  something is due anyway (the collective waits for the step, which holds back
  dispatching ahead)."""
  caught = None  # the signal's number, once caught
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._catch) for s in self.SIGNALS}
    return self

  def _catch(self, signum, frame):
    if signum == signal.SIGINT and self.caught is not None:
      signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt
    self.caught = signum

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  @property
  def name(self) -> str:
    return signal.Signals(self.caught).name

  def agreed(self, step: int, due: bool) -> bool:
    """Whether any host got a stop signal (then `caught` names one on every host)."""
    if jax.process_count() == 1:
      return self.caught is not None
    if not due and step % STOP_CHECK_EVERY:
      return False
    # What the hosts sent, not `self.caught`: a signal arriving after the gather
    # would make this host stop a step before the others.
    caught = multihost_utils.process_allgather(np.int32(self.caught or 0))
    if not caught.any():
      return False
    self.caught = self.caught or int(caught.max())
    return True

  def during_validation(self) -> bool:
    """Whether any host got a stop signal: asked after every validation batch."""
    return self.agreed(0, due=True)


_all_finite = jax.jit(all_finite)


class DivergenceCheck:
  """`training.nonfinite='stop'`: the losses since the last check, and the check
  (run before anything is logged or saved) that raises TrainingDiverged at a
  non-finite loss or non-finite parameters."""

  def __init__(self, training: ml_collections.ConfigDict, last_checkpoint):
    self.enabled = training.nonfinite == 'stop'
    self._last_checkpoint = last_checkpoint
    self._losses: List[Tuple[int, Any]] = []

  def add(self, step: int, loss) -> None:
    if self.enabled:
      self._losses.append((step, loss))

  def check(self, step: int, params) -> None:
    if not self.enabled:
      return
    values = jax.device_get([loss for _, loss in self._losses])
    bad = [(s, float(v)) for (s, _), v in zip(self._losses, values) if not np.isfinite(v)]
    self._losses.clear()
    if bad or not bool(_all_finite(params)):
      what = (f'the loss is {bad[0][1]} at step {bad[0][0]}' if bad else
              f'the parameters are not finite after step {step}')
      raise errors.TrainingDiverged(
          f'{what}: training stopped (the last checkpoint, {self._last_checkpoint()}, is '
          f'finite). Lower training.learning_rate, or set training.nonfinite=skip to '
          f'skip such steps')


def _first_state(config, workdir, init_from, optimizer, mesh, last, best, labels):
  """(step, state, state sharding) to start from: the latest readable checkpoint of
  the workdir, else the `init_from` checkpoint at step 0, else a fresh one; a
  workdir whose every checkpoint is damaged only with
  `training.restart_from_scratch`. Best params saved after that step are set aside."""
  def init_state():
    return initial_state(init_params(config.model, jax.random.PRNGKey(config.seed)),
                         optimizer, config.training)
  abstract = jax.eval_shape(init_state)
  min_size = config.mesh.fsdp_min_size
  state_sharding = sharding.tree_shardings(mesh, abstract, min_size)
  start, state = checkpoints.restore_latest(
      last, sharding.sharded_shapes(mesh, abstract, min_size))
  damaged = checkpoints.damaged_steps(workdir) if start is None else []
  if damaged and not config.training.restart_from_scratch:
    raise errors.CheckpointError(
        f'every checkpoint of {workdir} is damaged (steps {", ".join(map(str, damaged))}, '
        f'now in {workdir}/{checkpoints.SET_ASIDE}/); set '
        f'--config.training.restart_from_scratch=True to train again from step 0')
  checkpoints.set_aside_best_after(best, start or 0)
  if start is not None:
    print(f'resumed from {workdir}/checkpoints/{start}', flush=True)
    return start, state, state_sharding
  if init_from is None:
    return 0, jax.jit(init_state, out_shardings=state_sharding)(), state_sharding
  params, report = initialise.initial_params(init_from, config.model, config.seed,
                                             labels.names_by_head, config.dataset.name)
  if jax.process_index() == 0:
    lines = [f'initialising from {init_from.path}:'] + [
        f'  {line}' for line in initialise.report_lines(report)]
    print('\n'.join(lines), flush=True)
    write_atomically(workdir / 'initialisation.txt', '\n'.join(lines) + '\n')
  params = jax.device_put(params, state_sharding.params)
  state = jax.jit(lambda p: initial_state(p, optimizer, config.training),
                  out_shardings=state_sharding)(params)
  return 0, state, state_sharding


class TrainLog:
  """The train metrics since the last log line; `write` logs their mean."""

  def __init__(self, writer: MetricWriter, total_steps: int):
    self._writer, self._total_steps = writer, total_steps
    self._window, self._start = [], time.time()

  def add(self, metrics) -> None:
    self._window.append(metrics)

  def write(self, step: int, learning_rate: float, skipped_steps=None) -> None:
    summary = {k: float(np.mean([m[k] for m in self._window])) for k in self._window[0]}
    summary['learning_rate'] = learning_rate
    summary['steps_per_second'] = len(self._window) / (time.time() - self._start)
    skipped = ''
    if skipped_steps is not None:
      summary['skipped_steps'] = skipped_steps
      skipped = f' | {skipped_steps} steps skipped'
    self._writer.write(step, 'train', summary)
    eta = (self._total_steps - step) / summary['steps_per_second']
    if self._writer.active:
      print(f"step {step}/{self._total_steps} | loss {summary['loss']:.4f} | "
            f"acc {summary['accuracy']:.3f} | lr {learning_rate:.2e} | "
            f"{summary['steps_per_second']:.1f} steps/s | ETA {cli_lib.duration(eta)}"
            f"{skipped}", flush=True)
    self._window, self._start = [], time.time()


def _validate(writer, logits_fn, state, config, labels, mesh, step, stop_request,
              best) -> Optional[float]:
  """One-view top-1 on the eval split of the params and, with `training.ema_decay`,
  of their EMA (logged as `ema_top1`...), written and printed; the better of the two
  saved in `best` (its metrics say which: 'params' 'raw' or 'ema'). The raw params'
  top-1; None when a stop signal cut the pass short."""
  candidates = {'raw': state.params}
  if state.ema_params is not None:
    candidates['ema'] = state.ema_params
  results = {}
  for name, params in candidates.items():
    results[name] = evaluate.evaluate_split(
        logits_fn, params, config.dataset, config.dataset.eval_split,
        config.eval.batch_size, labels, mesh, num_clips=1, num_crops=1,
        stop=stop_request.during_validation)
    if results[name] is None:
      return None
  result = results['raw']
  metrics = evaluate.scalar_metrics(result)
  if 'ema' in results:
    metrics.update({f'ema_{k}': v for k, v in evaluate.scalar_metrics(results['ema']).items()
                    if k != 'num_videos'})
  writer.write(step, 'validation', metrics)
  if writer.active:
    heads = ''.join(f" | {name} {result[name + '_top1']:.4f}"
                    for name, _ in labels.label_heads or ())
    ema = f" | EMA top-1 {results['ema']['top1']:.4f}" if 'ema' in results else ''
    print(f"step {step} | validation top-1 {result['top1']:.4f}{heads}{ema} "
          f"({result['num_videos']} videos)", flush=True)
  # The raw params on a tie: the EMA only when strictly better.
  chosen = max(results, key=lambda name: (results[name]['top1'], name == 'raw'))
  checkpoints.save(best, step, candidates[chosen],
                   metrics={'top1': results[chosen]['top1'], 'params': chosen})
  return result['top1']


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: epath.PathLike) -> Dict[str, Any]:
  """Trains until `total steps`, evaluating and checkpointing on the way; one
  training per workdir at a time (a second one refuses). `workdir`: a local
  directory or a URL `etils.epath` supports (`gs://bucket/run`).

  Returns {'step', 'params', 'val_top1'}."""
  check_config(config)
  loggers.require(config.training.loggers)
  workdir = as_path(workdir)
  with WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict,
                        workdir: epath.Path) -> Dict[str, Any]:
  # Setup: the run's model and data, its mesh, optimiser and first state.
  training = config.training
  init_from = initialise.resolve_init_from(config.init_from)
  if init_from is not None and init_from.model_from_checkpoint:
    task.resolve_model(config, workdir, lambda: initialise.model_config_from_checkpoint(
        init_from, config.model))
  labels, (train_examples, _) = task.open_dataset(
      config, config.dataset.train_split, config.dataset.eval_split)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(training.batch_size, mesh)
  micro_batch = training.batch_size // training.grad_accumulation
  if micro_batch % mesh.devices.size:
    raise errors.ConfigError(
        f'training.grad_accumulation={training.grad_accumulation} splits the batch of '
        f'{training.batch_size} into micro-batches of {micro_batch}, not divisible by the '
        f'{mesh.devices.size} devices of the mesh')
  steps_per_epoch = train_examples // training.batch_size
  total_steps = training.num_steps or int(training.num_epochs * steps_per_epoch)
  if total_steps < 1:
    raise errors.ConfigError(
        f'training.num_epochs={training.num_epochs:g} x {steps_per_epoch} steps an epoch '
        f'(training.batch_size={training.batch_size}, {train_examples} training examples) '
        f'is less than one step: train longer, with smaller batches, or set '
        f'training.num_steps')
  optimizer, schedule = make_optimizer(training, total_steps,
                                       int(training.warmup_epochs * steps_per_epoch))
  model = build_model(config.model)
  model_changes = check_workdir_model(workdir, config.model)
  last, best = checkpoints.train_managers(workdir, training.keep_checkpoints)
  start, state, state_sharding = _first_state(config, workdir, init_from, optimizer, mesh,
                                              last, best, labels)
  stored_config = workdir / 'config.json'
  changes = check_resume(read_record(stored_config, 'a config') if start and
                         stored_config.exists() else None, config, steps_per_epoch,
                         workdir, start)
  # Only now that the run has resumed (or begun) does it record its settings.
  record_workdir_model(workdir, config.model)
  record = None
  if jax.process_index() == 0:
    write_atomically(stored_config, config.to_json(indent=2))
    save_class_names(workdir, labels.names_by_head)
    if start and model_changes:
      print('resuming with other training-only model settings: '
            + ', '.join(model_changes), flush=True)
    if changes:
      print('resuming with changed settings: ' + ', '.join(changes), flush=True)
    record = run_record(start)
    append_run_record(workdir, record)
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = jax.jit(
      lambda s, b: train_step(s, b, model=model, optimizer=optimizer, training=training,
                              num_classes=labels.num_classes, seed=config.seed,
                              label_heads=labels.label_heads),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  logits_fn = evaluate.make_logits_fn(model, mesh)
  batches = sharding.prefetch(
      pipeline.train_batches(config.dataset, training.batch_size, config.seed, start),
      batch_sharding)
  writer = MetricWriter(workdir, start, config, record)
  if record is not None:
    writer.write_text(start, 'run', '    ' + json.dumps(record, indent=2).replace(
        '\n', '\n    '))  # a markdown code block
  divergence = DivergenceCheck(training, lambda: (
      'none yet' if last.latest_step() is None
      else f'{workdir}/checkpoints/{last.latest_step()}'))

  def is_eval_step(step):
    return step % training.eval_every == 0 or step == total_steps

  # Loop: a step, then the periodic actions due at it.
  step, val_top1, stopping, run_start = start, None, False, time.time()
  train_log = TrainLog(writer, total_steps)
  profile = ProfileWindow(training.profile_steps, start, tensorboard_dir(workdir))
  with StopRequest() as stop_request, writer, profile:
    # A stop during the validation of the step resumed from cut it short: redone.
    if start and is_eval_step(start) and multihost_utils.broadcast_one_to_all(
        np.int32(not writer.logged(start, 'validation'))):
      val_top1 = _validate(writer, logits_fn, state, config, labels, mesh, start,
                           stop_request, best)
      stopping = val_top1 is None
      if stopping:
        print(f'{stop_request.name}: validation of step {start} cut short again '
              f'(checkpoint {start} is on disk); exiting', flush=True)
    while step < total_steps and not stopping:
      state, metrics = profile.run(step + 1, step_fn, state, next(batches))
      step += 1
      train_log.add(metrics)
      divergence.add(step, metrics['loss'])
      last_step = step == total_steps
      logged = step % training.log_every == 0 or last_step
      evaluated = is_eval_step(step)
      saved = step % training.checkpoint_every == 0 or last_step
      stopping = stop_request.agreed(step, logged or evaluated or saved)
      if logged or evaluated or saved or stopping:
        divergence.check(step, state.params)
      if logged:
        train_log.write(step, float(schedule(step - 1)), None if divergence.enabled
                        else skipped_steps(state.opt_state))
      if evaluated:
        val_top1 = _validate(writer, logits_fn, state, config, labels, mesh, step,
                             stop_request, best)
        stopping = stopping or val_top1 is None
      if saved or stopping:
        checkpoints.save(last, step, state, force=stopping)
      if stopping:
        print(f'{stop_request.name}: saved checkpoint at step {step}'
              + (' (its validation was cut short; redone on resume)'
                 if evaluated and val_top1 is None else '') + '; exiting', flush=True)
        break
  if writer.active and not stopping:
    if step == start:
      print(f'{workdir} already holds the final checkpoint (step {step}); nothing to '
            f'train', flush=True)
    else:
      print(f'trained {step - start} steps in {cli_lib.duration(time.time() - run_start)}; '
            f'final validation top-1 {val_top1:.4f}', flush=True)
  return {'step': step, 'params': state.params, 'val_top1': val_top1}


def cli() -> None:
  """`vivit-train`."""
  cli_lib.run_config_command('vivit-train', __doc__, 'Directory for checkpoints and metrics.',
                             train_and_evaluate)


if __name__ == '__main__':
  cli()
