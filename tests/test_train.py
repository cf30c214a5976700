"""The training loop end to end: devices, kill/resume, SIGTERM, evaluation, errors."""
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import time

import flax.linen
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from helpers import (REGULARISED, ROOT, cli_args, final_params, read_metrics, run_env,
                     tiny_run_config, training_config)
from vivit import evaluate, optim, sharding, task
from vivit.recipes import base_config, load_config
from vivit.models import init_params
from vivit.train import train_and_evaluate

def test_schedule_and_optimizer():
  training = training_config(learning_rate=0.1, schedule='cosine', optimizer='sgd',
                             momentum=0.9, weight_decay=0.0, grad_clip=1.0,
                             grad_clip_group=None)
  _, schedule = optim.make_optimizer(training, total_steps=100, warmup_steps=10)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(100)],
                             [0.0, 0.05, 0.1, 0.0], atol=1e-7)
  assert 0.04 < schedule(55) < 0.06
  training.schedule = 'constant'
  _, schedule = optim.make_optimizer(training, 100, 10)
  np.testing.assert_allclose([schedule(5), schedule(50)], [0.05, 0.1], atol=1e-7)
  training.optimizer = 'lamb'
  with pytest.raises(ValueError, match="unknown training.optimizer 'lamb'"):
    optim.make_optimizer(training, 100, 10)
  # Clipping: a huge gradient moves SGD by at most lr * 1.
  training.update(optimizer='sgd', momentum=0.0, schedule='constant')
  optimizer, _ = optim.make_optimizer(training, 100, 0)
  params = {'w': np.zeros(4, np.float32)}
  updates, _ = optimizer.update({'w': np.full(4, 1e6, np.float32)}, optimizer.init(params),
                                params)
  np.testing.assert_allclose(optax.global_norm(updates), 0.1, rtol=1e-5)


def test_view_averaging_against_hand_computation():
  logits = np.array([[[1.0, 0.0, 3.0], [3.0, 2.0, -1.0]],     # mean [2, 1, 1]   -> 0
                     [[0.0, 4.0, 0.0], [0.0, -2.0, 2.0]]])    # mean [0, 1, 1]   -> 1 (first max)
  averaged = np.asarray(evaluate.average_views(logits))
  np.testing.assert_allclose(averaged, [[2, 1, 1], [0, 1, 1]])
  metrics = evaluate.classification_metrics(averaged, np.array([0, 2]), num_classes=3)
  assert metrics['top1'] == 0.5
  assert metrics['top5'] == 1.0
  assert metrics['per_class_accuracy'] == [1.0, 0.0, 0.0]
  assert metrics['confusion_matrix'] == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_evaluation_progress_bar_on_a_terminal_and_durations(capsys):
  progress = evaluate.Progress('test', 20, 6, every=1, terminal=True)
  progress.update(8)
  progress.update(12)
  progress.close()
  out, err = capsys.readouterr()
  assert not out and 'test: evaluating' in err and '20/20' in err and 'views/s' in err
  from vivit.cli import duration
  assert [duration(s) for s in (42, 187, 3725)] == ['42s', '3m07s', '1h02m']


def test_fsdp_splits_the_largest_divisible_axis_of_large_enough_params():
  assert sharding.fsdp_axis((16, 32), 2, min_size=0) == 1
  assert sharding.fsdp_axis((16, 32), 8, min_size=0) == 1
  assert sharding.fsdp_axis((3, 16, 5), 4, min_size=0) == 1
  assert sharding.fsdp_axis((3, 5), 2, min_size=0) is None  # nothing divisible
  assert sharding.fsdp_axis((768,), 8, min_size=2 ** 12) is None  # LayerNorm scale: replicated
  assert sharding.fsdp_axis((768, 3072), 8, min_size=2 ** 12) == 1
  assert sharding.fsdp_axis((16, 32), 1, min_size=0) is None


def test_sigkill_then_resume_equals_uninterrupted_run(data_dir, tmp_path):
  """With dropout, stochastic depth and mixup on: their RNG is a function of the step."""
  straight = tmp_path / 'straight'
  result = subprocess.run(cli_args(data_dir, straight, **REGULARISED), env=run_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  # Quiet by default: the project's own lines, no library start-up banners.
  output = result.stdout + result.stderr
  for banner in ('oneDNN', 'TensorFlow', 'absl::InitializeLog', 'I0000',
                 'Downloading and preparing'):
    assert banner not in output, output[-3000:]
  assert 'step 12/12 | loss' in result.stdout and 'validation top-1' in result.stdout

  killed = tmp_path / 'killed'
  process = subprocess.Popen(cli_args(data_dir, killed, **REGULARISED), env=run_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoint_dir = killed / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    done = [int(d) for d in os.listdir(checkpoint_dir)] if checkpoint_dir.exists() and all(
        d.isdigit() for d in os.listdir(checkpoint_dir)) else []
    if any(4 <= s < 12 for s in done):
      break
    time.sleep(0.05)
  assert process.poll() is None, 'the run finished before it could be killed'
  process.send_signal(signal.SIGKILL)
  process.wait()
  steps_before = sorted(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit())
  assert max(steps_before) < 12
  with open(killed / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 13, "split": "tr')  # a line the kill cut short

  result = subprocess.run(cli_args(data_dir, killed, **REGULARISED), env=run_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resumed from' in result.stdout
  a, b = final_params(straight, 12), final_params(killed, 12)
  diffs = [np.abs(np.asarray(x) - np.asarray(y)).max()
           for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
  assert max(diffs) < 1e-6
  # Each step's records once, as the uninterrupted run wrote them: the lines logged
  # after the checkpoint resumed from, and the cut line, are gone.
  records = [json.loads(line) for line in (killed / 'metrics.jsonl').read_text().splitlines()]
  straight_records = [json.loads(line)
                      for line in (straight / 'metrics.jsonl').read_text().splitlines()]
  without_speed = lambda rs: [{k: v for k, v in r.items() if k != 'steps_per_second'}
                              for r in rs]
  assert without_speed(records) == without_speed(straight_records)
  # And training changed them.
  config = tiny_run_config(data_dir, **REGULARISED)
  task.open_dataset(config, 'train')
  initial = init_params(config.model, jax.random.PRNGKey(config.seed))
  assert max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(initial))) > 1e-4


def test_train_in_process_then_evaluate(data_dir, tmp_path, capsys):
  config = tiny_run_config(data_dir, **{'training.mixup': 0.2, 'training.label_smoothing': 0.1})
  result = train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 12 and 0 <= result['val_top1'] <= 1
  validation = read_metrics(tmp_path, 'validation')
  assert [r['step'] for r in validation] == [6, 12]

  out = evaluate.run(tiny_run_config(data_dir, **{'training.mixup': 0.2,
                                              'training.label_smoothing': 0.1}), str(tmp_path))
  # Not on a terminal: a progress line every `log_every` (1) batches of 8 but the last.
  progress = [line for line in capsys.readouterr().out.splitlines() if 'views/s' in line]
  assert [line.split(' | ')[0] for line in progress] == ['test: 8/20 videos',
                                                         'test: 16/20 videos']
  assert all(re.fullmatch(r'test: \d+/20 videos \| [\d.]+ views/s \| ETA \d+s', line)
             for line in progress), progress
  saved = json.loads((tmp_path / 'eval_results.json').read_text())
  for key in ('top1', 'top5', 'num_videos', 'views', 'per_class_accuracy'):
    assert saved[key] == out[key]
  assert saved['num_videos'] == 20 and saved['views'] == 2
  assert len(saved['per_class_accuracy']) == 10
  assert np.sum(saved['confusion_matrix']) == 20
  assert (tmp_path / 'confusion_matrix.png').stat().st_size > 1000
  assert (tmp_path / 'training_curve.png').stat().st_size > 1000

  # A workdir is a checkpoint for init_from and predict: its best params, else its
  # latest state's, with the dataset's class names.
  from vivit import checkpoints
  _, best = checkpoints.load_params(str(tmp_path))
  assert checkpoints.load_class_names(str(tmp_path))[0] == 'move_right'
  shutil.copytree(tmp_path / 'checkpoints', tmp_path / 'no_best' / 'checkpoints')
  shutil.copy(tmp_path / 'model_config.json', tmp_path / 'no_best')
  _, latest = checkpoints.load_params(str(tmp_path / 'no_best'))
  for a, b in zip(jax.tree_util.tree_leaves(latest),
                  jax.tree_util.tree_leaves(final_params(tmp_path, 12))):
    np.testing.assert_array_equal(a, b)
  best_step = checkpoints.best_manager(str(tmp_path)).best_step()
  with ocp.StandardCheckpointer() as checkpointer:
    saved_best = checkpointer.restore(tmp_path / 'best' / str(best_step) / 'default')
  for a, b in zip(jax.tree_util.tree_leaves(best), jax.tree_util.tree_leaves(saved_best)):
    np.testing.assert_array_equal(a, b)
  assert best_step in (6, 12)

  # Restarting a finished run trains nothing and keeps its checkpoints.
  again = train_and_evaluate(tiny_run_config(data_dir, **{'training.mixup': 0.2,
                                                      'training.label_smoothing': 0.1}),
                             str(tmp_path))
  assert again['step'] == 12 and again['val_top1'] is None
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '12']

  # Same workdir, different model: refused, naming the field.
  other = tiny_run_config(data_dir, **{'model.mlp_dim': 48})
  with pytest.raises(ValueError, match=r'different model \(model.mlp_dim: 32 in the '
                     r'workdir, 48 now\)'):
    train_and_evaluate(other, str(tmp_path))


def test_bad_input_errors(data_dir, tmp_path):
  # (A misspelt key: tests/test_cli.py.)
  result = subprocess.run(cli_args(data_dir, tmp_path / 'odd', **{'training.batch_size': 12}),
                          env=run_env(8), capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'batch size 12 is not divisible by the 8 devices' in result.stderr
  with pytest.raises(ValueError, match="no split 'valid'"):
    train_and_evaluate(tiny_run_config(data_dir, **{'dataset.eval_split': 'valid'}),
                       str(tmp_path / 'split'))


@pytest.mark.parametrize('name', ['kinetics400/vivit_b_16x2', 'kinetics400/vivit_b_16x2_fe',
                                  'kinetics400/vivit_l_16x2_fe', 'kinetics600/vivit_l_16x2_fe',
                                  'ssv2/vivit_l_16x2_fe', 'epic_kitchens/vivit_l_16x2_fe'])
def test_paper_configs_load_and_build(name, tmp_path):
  from vivit.models import param_shapes
  config = load_config(os.path.join(ROOT, 'configs', name + '.py'))
  assert config.dataset.num_frames == 32 and tuple(config.model.tubelet) == (2, 16, 16)
  assert config.training.optimizer == 'sgd' and config.training.warmup_epochs == 2.5
  if name.startswith('epic'):  # two heads, their sizes read from the dataset
    assert config.dataset.label_key == ('noun', 'verb') and config.model.num_classes is None
    config.model.num_classes = 300 + 97
  shapes = param_shapes(config.model)
  assert shapes['output_projection']['kernel'].shape[-1] == config.model.num_classes
  if name.startswith('ssv2'):  # scenic's SSv2 recipe: RandAugment, no colour
    assert config.dataset.randaugment == (2, 20) and config.dataset.colour_augment == 0
    assert config.training.mixup == 0.3 and config.training.grad_clip_group == 8
  # A fine-tuning recipe without a checkpoint: refused unless asked for on purpose.
  with pytest.raises(ValueError, match='init_from.from_scratch=True to start from random'):
    train_and_evaluate(config, str(tmp_path))


def test_mixup_and_label_smoothing():
  from vivit.step import mixup
  video = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
  labels = np.eye(4, dtype=np.float32)
  mixed_video, mixed_labels = mixup(jax.random.PRNGKey(0), video, labels, 0.4)
  weight = float(mixed_labels[0, 0])
  assert 0 < weight < 1
  np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(mixed_labels[1], [1 - weight, weight, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(mixed_video[:, 0, 0], weight * np.arange(4) + (1 - weight) *
                             np.roll(np.arange(4), 1), rtol=1e-6)
  smoothed = optax.smooth_labels(labels, 0.2)
  np.testing.assert_allclose(smoothed[0], [0.85, 0.05, 0.05, 0.05], rtol=1e-6)


class LinearProbe(flax.linen.Module):
  """A model as small as a train step allows: one Dense layer on the flat clip."""
  num_classes: int

  @flax.linen.compact
  def __call__(self, video, train=False):
    return flax.linen.Dense(self.num_classes)(video.reshape(video.shape[0], -1))


def test_train_step_applies_mixup_and_label_smoothing():
  """The loss of `train_step` equals a hand computation of mixed, smoothed targets
  on the mixed clips (same RNG derivation), and differs from the plain loss."""
  from vivit.step import TrainState, train_step
  Linear = functools.partial(LinearProbe, 4)
  model = Linear()
  rng = np.random.RandomState(0)
  batch = {'video': rng.normal(size=(6, 2, 3, 3, 3)).astype(np.float32),
           'label': np.array([0, 1, 2, 3, 0, 1])}
  params = model.init(jax.random.PRNGKey(0), batch['video'])['params']
  optimizer = optax.sgd(0.1)
  state = TrainState(jax.numpy.asarray(7), params, optimizer.init(params))

  def loss_of(mixup, smoothing):
    training = training_config(mixup=mixup, label_smoothing=smoothing, grad_clip_group=None)
    _, metrics = train_step(state, batch, model=model, optimizer=optimizer,
                            training=training, num_classes=4, seed=3)
    return float(metrics['loss'])

  weight = float(jax.random.beta(jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(3), 7))[0], 0.4, 0.4))
  targets = np.eye(4)[batch['label']] * (1 - 0.2) + 0.2 / 4
  targets = weight * targets + (1 - weight) * np.roll(targets, 1, axis=0)
  video = weight * batch['video'] + (1 - weight) * np.roll(batch['video'], 1, axis=0)
  logits = np.asarray(model.apply({'params': params}, video), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.mean(np.sum(targets * log_probs, -1))
  assert 0 < weight < 1
  assert loss_of(0.4, 0.2) == pytest.approx(expected, rel=1e-5)
  assert abs(loss_of(0.0, 0.0) - expected) > 1e-3


def test_train_step_applies_the_pipelines_colour_draws_before_mixup():
  """A batch with `colour` draws (one clip jittered, one greyed, one left): the loss
  is that of `augment_colour`'s clips, mixed; without the draws it differs."""
  from vivit.colour import augment_colour
  from vivit.step import TrainState, train_step
  model = LinearProbe(3)
  rng = np.random.RandomState(4)
  batch = {'video': rng.randint(0, 256, (3, 2, 3, 3, 3)).astype(np.uint8),
           'label': np.array([0, 1, 2]),
           'colour': np.array([[1, 0, 0.1, 1.3, 0.7, 0.15], [0, 1, 0, 1, 1, 0],
                               [0, 0, 0.1, 1.3, 0.7, 0.15]], np.float32)}
  video = np.asarray(augment_colour(batch['video'], batch['colour']))
  assert np.allclose(video[1, ..., 0], video[1, ..., 2])  # greyed
  np.testing.assert_allclose(video[2], batch['video'][2] / 127.5 - 1, atol=1e-6)  # left
  params = model.init(jax.random.PRNGKey(0), video)['params']
  optimizer = optax.sgd(0.1)
  state = TrainState(jax.numpy.asarray(2), params, optimizer.init(params))
  training = training_config(mixup=0.5, label_smoothing=0.0, grad_clip_group=None)
  loss = lambda b: float(train_step(state, b, model=model, optimizer=optimizer,
                                    training=training, num_classes=3, seed=0)[1]['loss'])
  weight = float(jax.random.beta(jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(0), 2))[0], 0.5, 0.5))
  mix = lambda x: weight * x + (1 - weight) * np.roll(x, 1, axis=0)
  logits = np.asarray(model.apply({'params': params}, mix(video)), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.mean(np.sum(mix(np.eye(3)[batch['label']]) * log_probs, -1))
  assert loss(batch) == pytest.approx(expected, rel=1e-5)
  assert abs(loss({k: v for k, v in batch.items() if k != 'colour'}) - expected) > 1e-3


def test_gradient_clipped_per_group_of_examples_as_scenic_per_device():
  """`grad_clip_group`: each group's gradient clipped to `grad_clip`, then averaged
  (scenic's per-device clipping), checked by hand; it differs from clipping the
  averaged gradient."""
  from vivit.step import TrainState, train_step
  Linear = functools.partial(LinearProbe, 3)
  model = Linear()
  rng = np.random.RandomState(1)
  batch = {'video': rng.normal(size=(6, 2, 2, 2, 3)).astype(np.float32) * 3,
           'label': np.array([0, 1, 2, 0, 1, 2])}
  params = model.init(jax.random.PRNGKey(0), batch['video'])['params']
  optimizer = optax.sgd(1.0)

  def updated(group):
    training = training_config(mixup=0.0, label_smoothing=0.0, grad_clip=0.5,
                               grad_clip_group=group)
    sgd = optimizer if group else optax.chain(optax.clip_by_global_norm(0.5), optimizer)
    state = TrainState(jax.numpy.asarray(0), params, sgd.init(params))
    new, _ = train_step(state, batch, model=model, optimizer=sgd, training=training,
                        num_classes=3, seed=0)
    return new.params

  def group_gradient(rows):
    def loss(p):
      logits = model.apply({'params': p}, batch['video'][rows])
      return optax.softmax_cross_entropy(logits, np.eye(3)[batch['label'][rows]]).mean()
    grads = jax.grad(loss)(params)
    norm = float(optax.global_norm(grads))
    assert norm > 0.5  # clipping is active
    return jax.tree_util.tree_map(lambda g: g * 0.5 / norm, grads)
  clipped = [group_gradient(slice(i, i + 2)) for i in (0, 2, 4)]
  expected = jax.tree_util.tree_map(lambda p, *g: p - np.mean(g, axis=0), params, *clipped)
  for got, want in zip(jax.tree_util.tree_leaves(updated(2)),
                       jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  whole = updated(None)
  assert max(np.abs(a - b).max() for a, b in zip(
      jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(expected))) > 1e-3


def test_train_step_two_heads_with_mixup_and_label_smoothing():
  """Epic-Kitchens' heads: each head's targets smoothed over its own classes, mixed,
  and the loss the sum of the heads' cross-entropies (hand computation)."""
  from vivit.step import TrainState, train_step
  Linear = functools.partial(LinearProbe, 5)
  model, label_heads = Linear(), (('noun', 3), ('verb', 2))
  rng = np.random.RandomState(2)
  batch = {'video': rng.normal(size=(4, 2, 2, 2, 3)).astype(np.float32),
           'label': np.array([[0, 1], [2, 0], [1, 1], [0, 0]])}
  params = model.init(jax.random.PRNGKey(0), batch['video'])['params']
  optimizer = optax.sgd(0.1)
  state = TrainState(jax.numpy.asarray(5), params, optimizer.init(params))
  training = training_config(mixup=0.3, label_smoothing=0.2, grad_clip_group=None)
  _, metrics = train_step(state, batch, model=model, optimizer=optimizer, training=training,
                          num_classes=5, seed=1, label_heads=label_heads)

  weight = float(jax.random.beta(jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(1), 5))[0], 0.3, 0.3))
  mix = lambda x: weight * x + (1 - weight) * np.roll(x, 1, axis=0)
  logits = np.asarray(model.apply({'params': params}, mix(batch['video'])), np.float64)
  expected = 0.0
  for i, (start, size) in enumerate(((0, 3), (3, 2))):
    targets = mix(np.eye(size)[batch['label'][:, i]] * 0.8 + 0.2 / size)
    part = logits[:, start:start + size]
    log_probs = part - np.log(np.exp(part).sum(-1, keepdims=True))
    expected += -np.mean(np.sum(targets * log_probs, -1))
  assert float(metrics['loss']) == pytest.approx(expected, rel=1e-5)
  assert set(metrics) >= {'noun_accuracy', 'verb_accuracy', 'accuracy'}


def test_prefetch_keeps_order_and_reads_a_bounded_number_ahead():
  pulled = []

  def host_batches():
    for i in range(5):
      pulled.append(i)
      yield {'video': np.full((2, 3), i, np.uint8), 'label': np.array([i, i])}
  mesh = sharding.make_mesh(base_config().mesh)
  batches = sharding.prefetch(host_batches(), sharding.batch_sharding(mesh), size=2,
                              keys=('video',))
  first = next(batches)
  assert pulled == [0, 1, 2]  # the one handed out and two in flight
  assert isinstance(first['video'], jax.Array) and first['video'].dtype == np.uint8
  assert isinstance(first['label'], np.ndarray)
  rest = list(batches)
  assert [int(b['video'][0, 0]) for b in [first] + rest] == [0, 1, 2, 3, 4]
