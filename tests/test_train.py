"""The training loop end to end (`vivit.train`): kill and resume, a workdir evaluated
and loaded as a checkpoint, input errors, the paper's configs. (Its parts: test_step,
test_optim, test_sharding, test_workdir; faults and signals: test_faults.)"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import (REGULARISED, ROOT, assert_quiet, cli_args, final_params, read_metrics,
                     run_env, tiny_run_config)
from vivit import checkpoints, evaluate, task
from vivit.models import init_params, param_shapes
from vivit.recipes import load_config
from vivit.train import train_and_evaluate
from vivit.workdir import load_class_names


@pytest.mark.slow  # ~100 s: three runs. The default run resumes exactly in
# test_multiprocess.py (a 2-process checkpoint on 1 device) and test_faults.py.
def test_sigkill_then_resume_equals_uninterrupted_run(data_dir, tmp_path):
  """With dropout, stochastic depth and mixup on: their RNG is a function of the step."""
  straight = tmp_path / 'straight'
  result = subprocess.run(cli_args(data_dir, straight, **REGULARISED), env=run_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_quiet(result.stdout + result.stderr)
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
  modern = {'training.grad_accumulation': 2, 'training.ema_decay': 0.9}
  config = tiny_run_config(data_dir, **{'training.mixup': 0.2, 'training.label_smoothing': 0.1,
                                        'training.profile_steps': 2, **modern})
  result = train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 12 and 0 <= result['val_top1'] <= 1
  validation = read_metrics(tmp_path, 'validation')
  assert [r['step'] for r in validation] == [6, 12]
  assert all(0 <= r['ema_top1'] <= 1 for r in validation)  # the EMA validated beside
  # training.profile_steps: steps 2-3 traced into WORKDIR/tensorboard, for TensorBoard.
  [trace] = glob.glob(str(tmp_path / 'tensorboard' / 'plugins' / 'profile' / '*' /
                          '*.xplane.pb'))
  out = capsys.readouterr().out
  assert (f'profiling steps 2-3 (training.profile_steps) into {tmp_path}/tensorboard/'
          f'plugins/profile/\n') in out
  assert (f'profile of steps 2-3 written to {os.path.dirname(trace)}; view it with '
          f'`tensorboard --logdir {tmp_path}/tensorboard`') in out

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
  _, best = checkpoints.load_params(str(tmp_path))
  assert load_class_names(str(tmp_path))[0] == 'move_right'
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
  record, = [r for r in validation if r['step'] == best_step]
  kept = checkpoints.best_manager(str(tmp_path)).metrics(best_step)
  assert kept['params'] == ('ema' if record['ema_top1'] > record['top1'] else 'raw')

  # Restarting a finished run trains nothing and keeps its checkpoints.
  again = train_and_evaluate(tiny_run_config(data_dir, **{'training.mixup': 0.2,
                                                      'training.label_smoothing': 0.1,
                                                      **modern}),
                             str(tmp_path))
  assert again['step'] == 12 and again['val_top1'] is None
  assert 'training.profile_steps 2 -> 0' in capsys.readouterr().out  # accepted
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
