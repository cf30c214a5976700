"""Gradient accumulation (`training.grad_accumulation`) and the params' EMA
(`training.ema_decay`): the same updates as one pass, the EMA's closed form, the
best params chosen between raw and EMA, and the config errors."""
import os

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from helpers import read_metrics, tiny_run_config, training_config
from vivit import checkpoints, cli, errors, train
from vivit.input import pipeline
from vivit.models import build_model, init_params
from vivit.optim import make_optimizer
from vivit.step import TrainState, initial_state, micro_batches, train_step
from vivit.workdir import MetricWriter, as_path


def _leaves(tree):
  return jax.tree_util.tree_leaves(jax.device_get(tree))


def _assert_close(a, b, atol):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.mark.slow  # ~30 s: a run and its replay. The default run trains with both
# fields in test_train.py's test_train_in_process_then_evaluate.
def test_the_loop_with_accumulation_and_ema(data_dir, tmp_path):
  """Through the training loop (float32, 3 steps of 8 clips, SGD; dropout and mixup
  on, clipping groups of 2 keeping the dropout draws): 4 micro-batches give the
  params and EMA that one pass per batch gives (the train step on the pipeline's
  same batches) within 1e-5; validation logs the EMA beside the raw params, and
  best/ holds whichever scored better, saying which."""
  workdir = str(tmp_path / 'run')
  config = tiny_run_config(data_dir, **{
      'training.num_steps': 3, 'training.eval_every': 3, 'training.checkpoint_every': 3,
      'training.log_every': 3, 'training.grad_clip_group': 2, 'training.optimizer': 'sgd',
      'training.learning_rate': 0.5, 'training.warmup_epochs': 0.0,
      'training.grad_accumulation': 4, 'training.ema_decay': 0.5,
      'model.dropout_rate': 0.1, 'training.mixup': 0.2})
  train.train_and_evaluate(config, workdir)  # fits config.model to the data
  path = os.path.join(workdir, 'checkpoints', '3', 'default')
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.restore(path)

  training = config.training.copy_and_resolve_references()
  training.grad_accumulation = 1
  optimizer, _ = make_optimizer(training, 3, 0)
  model = build_model(config.model)
  state = initial_state(init_params(config.model, jax.random.PRNGKey(config.seed)),
                        optimizer, training)
  step = jax.jit(lambda s, b: train_step(s, b, model=model, optimizer=optimizer,
                                         training=training, num_classes=config.model.num_classes,
                                         seed=config.seed))
  batches = pipeline.train_batches(config.dataset, 8, config.seed, 0)
  losses = []
  for _ in range(3):
    state, metrics = step(state, next(batches))
    losses.append(float(metrics['loss']))
  logged, = read_metrics(workdir)  # the mean of the 3 steps
  assert np.mean(losses) == pytest.approx(logged['loss'], rel=1e-5)
  _assert_close(saved['params'], state.params, 1e-5)
  _assert_close(saved['ema_params'], state.ema_params, 1e-5)
  assert max(np.abs(x - y).max() for x, y in zip(_leaves(state.params),
                                                 _leaves(state.ema_params))) > 1e-2

  record, = read_metrics(workdir, 'validation')
  assert {'top1', 'ema_top1', 'ema_top5'} <= record.keys()
  with checkpoints.best_manager(workdir) as best:
    assert best.best_step() == 3
    chosen = 'ema' if record['ema_top1'] > record['top1'] else 'raw'
    assert best.metrics(3) == {'params': chosen, 'top1': max(record['top1'],
                                                               record['ema_top1'])}


class DropoutProbe(flax.linen.Module):
  """A model as small as a train step with dropout allows: dropout, then one Dense
  layer on the flat clip."""
  num_classes: int = 5
  dropout_rate: float = 0.0

  @flax.linen.compact
  def __call__(self, video, train=False):
    x = video.reshape(video.shape[0], -1)
    x = flax.linen.Dropout(self.dropout_rate, deterministic=not train)(x)
    return flax.linen.Dense(self.num_classes)(x)


def _probe_setup(dropout_rate=0.0, seed=0):
  """(model, params, batch of 8 clips)."""
  rng = np.random.RandomState(seed)
  batch = {'video': rng.uniform(-1, 1, (8, 2, 4, 4, 3)).astype(np.float32),
           'label': rng.randint(0, 5, 8)}
  model = DropoutProbe(dropout_rate=dropout_rate)
  return model, model.init(jax.random.PRNGKey(0), batch['video'])['params'], batch


def test_accumulation_with_dropout_and_clipping_groups_equals_one_pass():
  """With clipping groups each group keeps its dropout key in any micro-batch: 2 and 4
  micro-batches give one pass's update over 3 steps, dropout and mixup on; the groups
  clipped are the batch's (a clip that binds). Without groups, 2 micro-batches give
  the same update with dropout off."""
  model, params, batch = _probe_setup(dropout_rate=0.3, seed=1)
  optimizer = optax.sgd(0.5, momentum=0.9)

  def train(model, accumulation, **fields):
    training = training_config(grad_accumulation=accumulation, **fields)
    step = jax.jit(lambda s: train_step(s, batch, model=model, optimizer=optimizer,
                                        training=training, num_classes=5, seed=2))
    state = initial_state(params, optimizer, training)
    for _ in range(3):
      state, metrics = step(state)
    return state.params, metrics

  grouped = dict(grad_clip=0.05, grad_clip_group=2, mixup=0.3)
  (one, metrics), *split = [train(model, a, **grouped) for a in (1, 2, 4)]
  for params_split, metrics_split in split:
    _assert_close(one, params_split, 1e-5)
    for key in ('loss', 'accuracy', 'grad_norm'):
      assert float(metrics[key]) == pytest.approx(float(metrics_split[key]), rel=1e-5)
  assert float(metrics['grad_norm']) > 0.05  # the clip binds

  whole = dict(grad_clip=1.0, grad_clip_group=None)
  _assert_close(train(DropoutProbe(), 1, **whole)[0], train(DropoutProbe(), 2, **whole)[0],
                1e-5)


def test_micro_batches_are_strided_by_group():
  x = np.arange(8)
  np.testing.assert_array_equal(micro_batches(x, 2, 2), [[0, 1, 4, 5], [2, 3, 6, 7]])
  np.testing.assert_array_equal(micro_batches(x, 4), [[0, 4], [1, 5], [2, 6], [3, 7]])


def test_ema_is_its_closed_form_after_k_steps():
  """After k updates the EMA is sum_i (1-d) d^(k-i) p_i + d^k p_0 over the params
  p_i after step i (p_0 the initial ones)."""
  model, params, batch = _probe_setup()
  optimizer = optax.sgd(0.3)
  decay, k = 0.7, 4
  training = training_config(ema_decay=decay, grad_clip_group=None)
  state = initial_state(params, optimizer, training)
  step = jax.jit(lambda s: train_step(s, batch, model=model, optimizer=optimizer,
                                      training=training, num_classes=5, seed=0))
  history = [jax.device_get(state.params)]
  for _ in range(k):
    state, _ = step(state)
    history.append(jax.device_get(state.params))
  expected = jax.tree_util.tree_map(
      lambda *ps: sum((1 - decay) * decay ** (k - i) * p for i, p in enumerate(ps) if i)
      + decay ** k * ps[0], *history)
  _assert_close(state.ema_params, expected, 1e-6)
  assert max(np.abs(x - y).max() for x, y in zip(_leaves(state.ema_params),
                                                 _leaves(state.params))) > 1e-4


def test_best_holds_the_ema_when_it_scores_better(tmp_path, monkeypatch, capsys):
  """A validation where the EMA scores 0.75 and the raw params 0.5: best/ holds the
  EMA's params, its metrics say 'ema'; metrics.jsonl and the line show both."""
  raw = {'w': jnp.zeros(3)}
  ema = {'w': jnp.ones(3)}
  state = TrainState(jnp.asarray(2), raw, (), ema)

  def fake_evaluate_split(logits_fn, params, *args, **kwargs):
    top1 = 0.75 if params is ema else 0.5
    return {'top1': top1, 'top5': 1.0, 'num_videos': 4}
  monkeypatch.setattr(train.evaluate, 'evaluate_split', fake_evaluate_split)
  config = tiny_run_config('')
  stop = type('Stop', (), {'during_validation': lambda self: False})()
  with checkpoints.best_manager(tmp_path) as best, MetricWriter(as_path(tmp_path), 0) as writer:
    assert train._validate(writer, None, state, config, type('L', (), {'label_heads': None})(),
                           None, 2, stop, best) == 0.5
    assert best.metrics(2) == {'top1': 0.75, 'params': 'ema'}
  _, restored = checkpoints.restore_best_params(tmp_path, jax.eval_shape(lambda: raw))
  np.testing.assert_array_equal(restored['w'], np.ones(3))
  record, = read_metrics(str(tmp_path), 'validation')
  assert record['top1'] == 0.5 and record['ema_top1'] == 0.75
  assert 'validation top-1 0.5000 | EMA top-1 0.7500' in capsys.readouterr().out


@pytest.mark.parametrize('fields, message', [
    ({'training.grad_accumulation': 3},
     'error: training.grad_accumulation=3 does not divide training.batch_size=8'),
    ({'training.grad_accumulation': 2, 'training.grad_clip_group': 8},
     'error: training.grad_accumulation=2 splits the batch of 8 into micro-batches of 4, '
     'not whole groups of training.grad_clip_group=8'),
    ({'training.grad_accumulation': 0},
     'error: training.grad_accumulation=0 is not a whole number from 1'),
    ({'training.ema_decay': 1.0}, 'error: training.ema_decay=1.0 is not a finite number > 0 '
                                  'and < 1, or None'),
])
def test_bad_accumulation_or_decay_is_one_line(tmp_path, capsys, fields, message):
  config = tiny_run_config(str(tmp_path / 'tfds'), **fields)  # refused before any data
  assert cli.run(lambda _: train.train_and_evaluate(config, str(tmp_path / 'run')) and None,
                 []) == 2
  err = capsys.readouterr().err
  assert err.startswith(message) and err.count('\n') == 1, err
  assert not os.path.exists(tmp_path / 'run')


def test_a_checkpoint_without_ema_resumes_without_it_and_is_refused_with_it(tmp_path):
  """A train state saved without an EMA (ema_decay None, or a version before it)
  reads back as it was; resuming it with ema_decay set is refused in one error naming
  the field (no EMA to resume exactly)."""
  params = {'w': jnp.arange(3.0)}
  optimizer = optax.sgd(0.1)
  plain = initial_state(params, optimizer, training_config())
  with_ema = initial_state(params, optimizer, training_config(ema_decay=0.9))
  assert plain.ema_params is None
  np.testing.assert_array_equal(with_ema.ema_params['w'], params['w'])
  last, _ = checkpoints.train_managers(tmp_path, 3)
  checkpoints.save(last, 4, plain)
  step, state = checkpoints.restore_latest(last, jax.eval_shape(lambda: plain))
  assert step == 4 and state.ema_params is None
  np.testing.assert_array_equal(state.params['w'], params['w'])
  with pytest.raises(errors.CheckpointError, match=r'checkpoints/4 holds a train state of a '
                     r'different shape .*training.ema_decay \(on/off\) changed'):
    checkpoints.restore_latest(last, jax.eval_shape(lambda: with_ema))
  assert last.all_steps() == [4]  # not set aside


def test_a_micro_batch_the_devices_do_not_divide_is_one_line(data_dir, tmp_path, capsys,
                                                               monkeypatch):
  """Each micro-batch is split over the devices: 8 clips in 4 micro-batches of 2 on a
  mesh of 4 devices (a stand-in for the mesh: the check comes before any use) is
  refused."""
  mesh = type('Mesh', (), {'devices': np.zeros((4, 1))})()
  monkeypatch.setattr(train.sharding, 'make_mesh', lambda _: mesh)
  config = tiny_run_config(data_dir, **{'training.grad_accumulation': 4,
                                        'training.grad_clip_group': 2})
  assert cli.run(lambda _: train.train_and_evaluate(config, str(tmp_path / 'run')) and None,
                 []) == 2
  err = capsys.readouterr().err
  assert err == ('error: training.grad_accumulation=4 splits the batch of 8 into '
                 'micro-batches of 2, not divisible by the 4 devices of the mesh\n'), err
